"""What is special about each dataset, declared in one place.

A :class:`Dataset` says how its problems are loaded, how a prompt is written for it (packaged
exemplars and shots, or the dataset's own prompt format), which answer-extraction rules grade it,
which exact checker (if any) can judge a solution's steps, and which models it brings to the model
registry (:class:`DatasetModel`). Prompts, grading, problem loading, the judge and
:mod:`flopmatch.models` look these up by name instead of testing names themselves.

Where a dataset's problems come from is declared too: a generated dataset names its ``loader``; a
dataset read from files declares :class:`DataFiles` (the row format its rows parse with, the file of
each split in a data directory laid out like the shared data, its hub repo and configs); a dataset cut
from other datasets' files declares :class:`DerivedSplits` (``math-offline``).
:func:`flopmatch.problems.load` reads only these declarations.

Code that lives in a dataset's own package (the toy world's generator, prompt format, step checker
and model builders) is named by an import path, ``"module:attribute"``, and imported on first use,
like a plugin entry point: this module imports no other flopmatch module, and a dataset package never
has to be imported to read its declaration. Add your own with :func:`register_dataset`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

AnswerRules = Literal["numeric", "latex", "first-answer-line"]


def load_reference(target: str, what: str = "reference") -> Any:
    """The object an import path ``"module:attribute"`` names, imported now (``what`` names it in errors)."""
    module, _, name = target.partition(":")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as exc:
        raise ImportError(f"{what} {target} cannot be imported: {exc}") from exc


class ReadOnlyMap(dict):
    """A declaration's mapping (a copy of the one given): reads as a dict, refuses changes, and pickles and
    copies like one, so a declaration can travel to a worker process."""

    def _frozen(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError("a dataset declaration is frozen; register a new one instead")

    __setitem__ = __delitem__ = __ior__ = clear = pop = popitem = setdefault = update = _frozen

    def __reduce__(self) -> tuple[Any, ...]:
        return (ReadOnlyMap, (dict(self),))


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
class DataFiles:
    """Where a dataset read from files finds its problems.

    ``row_format``: the row parser its rows go through, one of :data:`flopmatch.problems.ROW_FORMATS`
    (``gsm8k``: ``question`` + ``answer`` with the gold after ``####``; ``math``: ``problem`` +
    ``solution``, gold in the last ``\\boxed{}``; ``math500``: ``problem`` + ``answer``, id from
    ``unique_id``); a local file in another format is refused. ``files``: split -> the file's path
    inside a data directory laid out like the shared data (``gsm8k/test.jsonl``); the file is also
    found by its bare name in the folder given (the dataset's own folder). A split without a file is
    hub-only. ``hub``: the Hugging Face hub repo read when no ``data_file`` is given (None: local files
    only); ``hub_configs``: its configs, read in this order and concatenated (``(None,)``: the repo's
    default config).
    """

    row_format: str
    files: Mapping[str, str] = field(default_factory=dict, hash=False)
    hub: str | None = None
    hub_configs: tuple[str | None, ...] = (None,)

    def __post_init__(self) -> None:
        object.__setattr__(self, "files", ReadOnlyMap(self.files))


@dataclass(frozen=True)
class DerivedSplits:
    """A dataset whose splits are cut from other declared datasets' local files (no hub, no files of its
    own): ``splits`` maps each of its splits to the ``(dataset, split)`` whose data-directory file it
    reads (both declared with :class:`DataFiles`); the problems of ``held_out`` (a ``(dataset, split)``)
    are removed from every split that is not ``held_out`` itself, matched on whitespace-normalised text.

    The problems keep the ids and dataset of the file they come from, labelled with the derived split
    (``math-offline`` train = ``math/train/<hash>``, test = ``math500/test/...``): the split is the
    problem's role in the study (sample on train, evaluate on test), as the run directory uses it.
    Loading one needs a data directory (``data_file=`` or ``$FLOPMATCH_DATA_DIR``).
    """

    splits: Mapping[str, tuple[str, str]] = field(hash=False)
    held_out: tuple[str, str] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "splits", ReadOnlyMap(self.splits))


@dataclass(frozen=True)
class Dataset:
    """One dataset's declaration.

    ``answers``: ``numeric`` (GSM8K: numbers, the last number counts when nothing is marked),
    ``latex`` (MATH: boxed LaTeX, math-verify equivalence) or ``first-answer-line`` (the toy world:
    the first ``Answer:`` line, numeric). ``exemplars``/``shots``: the packaged exemplar set and the
    paper's number of shots (``None``: zero-shot). ``prompt_format``: a ``question -> text`` function
    that replaces the chat prompt altogether. Where the problems come from, one of two: ``loader``, a
    function ``(split, limit, seed) -> problems`` for generated datasets (it takes no data file), or
    ``data``, for datasets read from files: :class:`DataFiles` (row format, data-directory files, hub
    repo) or :class:`DerivedSplits` (splits cut from other datasets' files). ``checker``: ``(problem,
    solution) -> check`` with ``steps_valid``, ``first_wrong_step`` and ``reason``, the exact judge of
    the dataset's solutions. ``models``: the registry models the dataset brings (:class:`DatasetModel`).
    ``sizes``: problems per split, what ``flopmatch study --dry-run`` counts for a split it does not read
    (hub data). ``spec_model``: a function ``(name, values) -> model`` (a model as a :class:`DatasetModel`'s
    builder gives) that builds a model of the shape a study describes in ``models.<role>.<dataset>_spec``
    (the toy world's ``toyworld_spec``); a ValueError when ``values`` describe no model it can build.
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
    data: DataFiles | DerivedSplits | None = None
    sizes: Mapping[str, int] = field(default_factory=dict, hash=False)
    spec_model: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "sizes", ReadOnlyMap(self.sizes))
        if isinstance(self.data, DerivedSplits) and set(self.data.splits) != set(self.splits):
            raise ValueError(f"dataset {self.name!r}: its derived splits {sorted(self.data.splits)} are not "
                             f"its splits {sorted(self.splits)}")  # fmt: skip

    def load_function(self, attribute: str) -> Callable[..., Any]:
        """The function named by ``attribute`` (``"prompt_format"``, ``"loader"``, ``"checker"``,
        ``"spec_model"``)."""
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


MATH_HUB_REPO = "EleutherAI/hendrycks_math"
"""The hub mirror of Hendrycks MATH: one config per subject (:data:`MATH_HUB_CONFIGS`)."""
MATH_HUB_CONFIGS = (
    "algebra",
    "counting_and_probability",
    "geometry",
    "intermediate_algebra",
    "number_theory",
    "prealgebra",
    "precalculus",
)

for _dataset in (
    Dataset("gsm8k", ("train", "test"), "numeric", exemplars="gsm8k", shots=8,
            description="GSM8K grade-school word problems (hub openai/gsm8k, or local files)",
            data=DataFiles("gsm8k", {"train": "gsm8k/train.jsonl", "test": "gsm8k/test.jsonl"},
                           hub="openai/gsm8k", hub_configs=("main",)),
            sizes={"train": 7473, "test": 1319}),
    Dataset("math", ("train", "test"), "latex", exemplars="math", shots=4,
            description="Hendrycks MATH (hub EleutherAI/hendrycks_math, or local files)",
            data=DataFiles("math", {"test": "math/math_test_5000.jsonl"}, hub=MATH_HUB_REPO,
                           hub_configs=MATH_HUB_CONFIGS),
            sizes={"train": 7500, "test": 5000}),
    Dataset("math500", ("test",), "latex", exemplars="math", shots=4,
            description="MATH500, the 500-problem MATH test subset (hub HuggingFaceH4/MATH-500, or local files)",
            data=DataFiles("math500", {"test": "math/math500_test.jsonl"}, hub="HuggingFaceH4/MATH-500"),
            sizes={"test": 500}),
    Dataset("math-offline", ("train", "test"), "latex", exemplars="math", shots=4,
            description="MATH from the shared data: train = MATH test minus MATH500, test = MATH500",
            data=DerivedSplits({"train": ("math", "test"), "test": ("math500", "test")},
                               held_out=("math500", "test")),
            sizes={"train": 4500, "test": 500}),
    Dataset("toyworld", ("train", "test"), "first-answer-line",
            prompt_format="flopmatch.toyworld:format_prompt", loader="flopmatch.toyworld:load_problems",
            checker="flopmatch.toyworld:check_solution", spec_model="flopmatch.toyworld.registry:spec_model",
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
