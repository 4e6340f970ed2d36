"""Few-shot prompts, one definition shared by sampling, SFT and evaluation.

The paper samples with few-shot prompts: MATH 4-shot, GSM8K 8-shot. flopmatch's exemplars were
written for the project (``flopmatch/data/exemplars.json``) so no evaluated problem ever leaks into a
prompt. Three renderings:

* ``chat`` (default): multi-turn messages — each exemplar is a user turn and an assistant turn — for
  the model's own chat template to render (backends apply it).
* ``plain``: one text block of ``Problem:``/``Solution:`` pairs for base models without a chat
  template; generation should stop at the next ``Problem:`` (see :func:`stop_sequences`).
* ``dataset``: the dataset's own prompt format, as it declares it in :mod:`flopmatch.datasets`
  (the toy world: ``flopmatch.toyworld.format_prompt``). ``toyworld`` is its deprecated name: configs
  that say it still load, and run records keep writing it (see :class:`PromptConfig`).

Every prompt asks for the final answer in ``\\boxed{}`` so one grader covers every dataset.
Training data built with :func:`build_prompt` and evaluation prompts agree by construction.
"""

from __future__ import annotations

import json
from functools import lru_cache
from importlib import resources
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_serializer, field_validator

from flopmatch.datasets import get_dataset
from flopmatch.problems import Problem

Message = dict[str, str]
PromptStyle = Literal["chat", "plain", "dataset"]
OWN_FORMAT: PromptStyle = "dataset"  # the dataset writes its own prompt (Dataset.prompt_format)
# The own-format style's first name. Accepted wherever a style is read, and still what a run records
# (samples/<model>/config.json, SFT and trained-model metadata), so every recorded config, digest and
# fingerprint stays byte-identical and sample sets drawn before the rename resume.
LEGACY_OWN_FORMAT = "toyworld"

DEFAULT_INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."
_EXEMPLAR_FILE = "data/exemplars.json"
PLAIN_QUESTION = "Problem:"
PLAIN_ANSWER = "Solution:"


class Exemplar(BaseModel):
    """One worked example: a question and a solution ending with the answer in ``\\boxed{}``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    question: str = Field(min_length=1)
    solution: str = Field(min_length=1)


class PromptConfig(BaseModel):
    """How to turn a problem into a prompt. ``shots=None`` / ``exemplars=None`` mean "the dataset's
    default" (GSM8K: the 8 packaged GSM8K exemplars; MATH/MATH500: the 4 MATH ones; other datasets:
    zero-shot). :func:`default_prompt_config` returns the resolved config to store with a run.

    ``style``: ``chat``, ``plain`` or ``dataset`` (the dataset's own format; ``toyworld``, its
    deprecated name, is read as ``dataset`` and is what a dump writes for it)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    style: PromptStyle = "chat"
    shots: int | None = Field(default=None, ge=0)
    system: str | None = None
    instruction: str = DEFAULT_INSTRUCTION
    exemplars: tuple[Exemplar, ...] | None = None

    @field_validator("style", mode="before")
    @classmethod
    def _deprecated_style_name(cls, value: object) -> object:
        return OWN_FORMAT if value == LEGACY_OWN_FORMAT else value

    @field_serializer("style")
    def _recorded_style_name(self, style: str) -> str:
        return LEGACY_OWN_FORMAT if style == OWN_FORMAT else style

    @field_validator("instruction")
    @classmethod
    def _instruction_not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("instruction must not be blank (it tells the model to answer in \\boxed{})")
        return value


@lru_cache(maxsize=1)
def packaged_exemplars() -> dict[str, tuple[Exemplar, ...]]:
    """The exemplar sets shipped with flopmatch, by family ("gsm8k", "math")."""
    source = resources.files("flopmatch").joinpath(_EXEMPLAR_FILE)
    raw = json.loads(source.read_text(encoding="utf-8"))
    out: dict[str, tuple[Exemplar, ...]] = {}
    for family, items in raw.items():
        if family.startswith("_"):
            continue
        try:
            out[family] = tuple(Exemplar.model_validate(item) for item in items)
        except ValidationError as exc:
            raise ValueError(f"{source}: bad exemplar in {family!r}: {exc}") from exc
    return out


def dataset_family(dataset: str) -> str | None:
    """The packaged exemplar set a dataset declares (``gsm8k`` or ``math``), or None (zero-shot)."""
    declared = get_dataset(dataset)
    return declared.exemplars if declared else None


def default_prompt_config(dataset: str) -> PromptConfig:
    """The paper's prompt for ``dataset``, fully resolved (exemplars included, so a run can store it).

    As the dataset declares it (:mod:`flopmatch.datasets`): GSM8K → 8-shot, MATH/MATH500 → 4-shot
    chat prompts; a dataset with its own prompt format (the toy world) → that format (style
    ``dataset``); an undeclared dataset → a zero-shot chat prompt with the ``\\boxed{}`` instruction.
    """
    declared = get_dataset(dataset)
    if declared is not None and declared.prompt_format is not None:
        return PromptConfig(style=OWN_FORMAT, shots=0, exemplars=())
    family = dataset_family(dataset)
    if family is None:
        return PromptConfig(style="chat", shots=0, exemplars=())
    return PromptConfig(style="chat", shots=declared.shots, exemplars=packaged_exemplars()[family][: declared.shots])


def resolve(config: PromptConfig | None, dataset: str) -> PromptConfig:
    """Fill the fields left to the dataset's defaults; check ``shots`` against the exemplars."""
    if config is None:
        return default_prompt_config(dataset)
    if config.exemplars is not None:  # the caller's own exemplars: all of them unless shots says less
        pool, default_shots = config.exemplars, len(config.exemplars)
    else:
        family = dataset_family(dataset)
        pool = packaged_exemplars()[family] if family else ()
        default_shots = default_prompt_config(dataset).shots or 0
    shots = default_shots if config.shots is None else config.shots
    if shots > len(pool):
        raise ValueError(
            f"prompt asks for {shots} shots but only {len(pool)} exemplars are available for "
            f"dataset {dataset!r}; pass more exemplars or fewer shots"
        )
    return config.model_copy(update={"shots": shots, "exemplars": tuple(pool[:shots])})


def _own_format(dataset: str):
    """The prompt function of a dataset that writes its own prompts (the ``dataset`` style)."""
    declared = get_dataset(dataset)
    if declared is None or declared.prompt_format is None:
        raise ValueError(
            f"prompt style {OWN_FORMAT!r} needs a dataset with its own prompt format; {dataset!r} has none"
        )
    return declared.load_function("prompt_format")


def _user_turn(question: str, instruction: str) -> str:
    return f"{question.strip()}\n\n{instruction}"


def build_prompt(problem: Problem, config: PromptConfig | None = None) -> str | list[Message]:
    """The prompt for ``problem``: chat messages (``style="chat"``) or text (``plain``, ``dataset``).

    Chat prompts are multi-turn few-shot conversations: an optional system turn, then per exemplar a
    user turn (question + instruction) and an assistant turn (its solution), then the problem.
    """
    cfg = resolve(config, problem.dataset)
    if cfg.style == OWN_FORMAT:
        return _own_format(problem.dataset)(problem.question)
    shots = cfg.exemplars or ()
    if cfg.style == "plain":
        blocks = [cfg.system.strip()] if cfg.system else []
        blocks.append(cfg.instruction)
        blocks += [
            f"{PLAIN_QUESTION} {ex.question.strip()}\n{PLAIN_ANSWER} {ex.solution.strip()}" for ex in shots
        ]
        blocks.append(f"{PLAIN_QUESTION} {problem.question.strip()}\n{PLAIN_ANSWER}")
        return "\n\n".join(blocks)
    messages: list[Message] = [{"role": "system", "content": cfg.system}] if cfg.system else []
    for ex in shots:
        messages.append({"role": "user", "content": _user_turn(ex.question, cfg.instruction)})
        messages.append({"role": "assistant", "content": ex.solution.strip()})
    messages.append({"role": "user", "content": _user_turn(problem.question, cfg.instruction)})
    return messages


def stop_sequences(config: PromptConfig | None = None) -> tuple[str, ...]:
    """Stop strings that go with a prompt style: a plain few-shot prompt invites the model to write
    the next ``Problem:`` itself; chat prompts end at the template's end-of-turn token instead."""
    if config is not None and config.style == "plain":
        return (f"\n\n{PLAIN_QUESTION}", f"\n{PLAIN_QUESTION}")
    return ()


__all__ = [
    "DEFAULT_INSTRUCTION",
    "LEGACY_OWN_FORMAT",
    "OWN_FORMAT",
    "Exemplar",
    "PromptConfig",
    "build_prompt",
    "dataset_family",
    "default_prompt_config",
    "packaged_exemplars",
    "resolve",
    "stop_sequences",
]
