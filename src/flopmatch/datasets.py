"""What is special about each dataset, declared in one place.

A :class:`Dataset` says how its problems are loaded, how a prompt is written for it (packaged
exemplars and shots, or the dataset's own prompt format), which answer-extraction rules grade it,
which exact checker (if any) can judge a solution's steps, and which models it brings to the model
registry (:class:`DatasetModel`). Prompts, grading, problem loading, the judge and
:mod:`flopmatch.models` look these up by name instead of testing names themselves.

Code that lives in a dataset's own package (the toy world's generator, prompt format, step checker
and model builders) is named by an import path, ``"module:attribute"``, and imported on first use,
like a plugin entry point: this module imports no other flopmatch module, and a dataset package never
has to be imported to read its declaration. Add your own with :func:`register_dataset`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

AnswerRules = Literal["numeric", "latex", "first-answer-line"]


def load_reference(target: str, what: str = "reference") -> Any:
    """The object an import path ``"module:attribute"`` names, imported now (``what`` names it in errors)."""
    module, _, name = target.partition(":")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as exc:
        raise ImportError(f"{what} {target} cannot be imported: {exc}") from exc


@dataclass(frozen=True)
class DatasetModel:
    """A model a dataset brings to the model registry (``flopmatch models``), made by its own code.

    ``builder``: ``"module:attribute"`` of an object with ``parameters`` (the nominal count for
    2·P·tokens), ``parameters_source`` (how that count is known, as the study reports it), ``path()``
    (where the model is cached), ``is_prepared()`` and ``prepare(progress=...)`` (builds it on first
    use and returns the directory backends load). ``upstream``: what ``flopmatch models`` shows as its
    source.
    """

    name: str
    description: str
    upstream: str
    builder: str


@dataclass(frozen=True)
class Dataset:
    """One dataset's declaration.

    ``answers``: ``numeric`` (GSM8K: numbers, the last number counts when nothing is marked),
    ``latex`` (MATH: boxed LaTeX, math-verify equivalence) or ``first-answer-line`` (the toy world:
    the first ``Answer:`` line, numeric). ``exemplars``/``shots``: the packaged exemplar set and the
    paper's number of shots (``None``: zero-shot). ``prompt_format``: a ``question -> text`` function
    that replaces the chat prompt altogether. ``loader``: a function ``(split, limit, seed) ->
    problems`` for generated datasets (the shared-data sources are read by :mod:`flopmatch.problems`).
    ``checker``: ``(problem, solution) -> check`` with ``steps_valid``, ``first_wrong_step`` and
    ``reason``, the exact judge of the dataset's solutions. ``models``: the registry models the
    dataset brings (:class:`DatasetModel`).
    """

    name: str
    splits: tuple[str, ...]
    answers: AnswerRules
    exemplars: str | None = None
    shots: int = 0
    prompt_format: str | None = None
    loader: str | None = None
    checker: str | None = None
    description: str = ""
    models: tuple[DatasetModel, ...] = ()

    def load_function(self, attribute: str) -> Callable[..., Any]:
        """The function named by ``attribute`` (``"prompt_format"``, ``"loader"``, ``"checker"``)."""
        target = getattr(self, attribute)
        if target is None:
            raise ValueError(f"dataset {self.name!r} declares no {attribute}")
        return load_reference(target, f"dataset {self.name!r}: its {attribute}")


_REGISTRY: dict[str, Dataset] = {}


def register_dataset(dataset: Dataset) -> Dataset:
    """Declare a dataset (or replace the declaration of that name); returns it."""
    _REGISTRY[dataset.name.lower()] = dataset
    return dataset


def get_dataset(name: str) -> Dataset | None:
    """The declaration of ``name`` (case-insensitive), or None for an undeclared dataset."""
    return _REGISTRY.get(str(name).strip().lower())


def dataset_names() -> tuple[str, ...]:
    return tuple(_REGISTRY)


def declared_models() -> tuple[DatasetModel, ...]:
    """The registry models every declared dataset brings, in declaration order."""
    return tuple(model for dataset in _REGISTRY.values() for model in dataset.models)


for _dataset in (
    Dataset("gsm8k", ("train", "test"), "numeric", exemplars="gsm8k", shots=8,
            description="GSM8K grade-school word problems (hub openai/gsm8k, or local files)"),
    Dataset("math", ("train", "test"), "latex", exemplars="math", shots=4,
            description="Hendrycks MATH (hub EleutherAI/hendrycks_math, or local files)"),
    Dataset("math500", ("test",), "latex", exemplars="math", shots=4,
            description="MATH500, the 500-problem MATH test subset (hub HuggingFaceH4/MATH-500, or local files)"),
    Dataset("math-offline", ("train", "test"), "latex", exemplars="math", shots=4,
            description="MATH from the shared data: train = MATH test minus MATH500, test = MATH500"),
    Dataset("toyworld", ("train", "test"), "first-answer-line",
            prompt_format="flopmatch.toyworld:format_prompt", loader="flopmatch.toyworld:load_problems",
            checker="flopmatch.toyworld:check_solution",
            description="the embedded toy world: generated arithmetic word problems with an exact step checker",
            models=(
                DatasetModel("toyworld-wc", "Toy-world weak-cheap transformer (trained locally on first use)",
                             "flopmatch.toyworld", builder="flopmatch.toyworld.registry:WC"),
                DatasetModel("toyworld-se",
                             "Toy-world strong-expensive transformer, ~3x the weak one (trained locally on first use)",
                             "flopmatch.toyworld", builder="flopmatch.toyworld.registry:SE"),
            )),
):
    register_dataset(_dataset)
