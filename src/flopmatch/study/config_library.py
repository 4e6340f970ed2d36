"""The study's sections that are the library's configs: ``sampling`` (the engine's
:class:`~flopmatch.backends.base.SamplingParams` defaults, and ``prompt``, a :class:`flopmatch.prompts.PromptConfig`),
``judge`` (``spec``, a :class:`flopmatch.judge.JudgeSpec`), ``training`` (``options``, a
:class:`flopmatch.training.TrainConfig` resolved against the preset) and ``evaluation`` (a
:class:`flopmatch.evaluation.EvalConfig`), with :class:`Section`, the base of every section.
:mod:`flopmatch.study.config` holds the others and the whole study.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ModelWrapValidatorHandler,
    PrivateAttr,
    SerializerFunctionWrapHandler,
    field_validator,
    model_serializer,
    model_validator,
)

from flopmatch.allocation import StudyAllocation
from flopmatch.backends.base import SamplingParams
from flopmatch.evaluation import EvalConfig
from flopmatch.judge.core import TOYWORLD_JUDGE, JudgeSpec
from flopmatch.prompts import PromptConfig
from flopmatch.training_config import PRESETS, TrainConfig

PositiveInt = Annotated[int, Field(ge=1)]


class Section(BaseModel):
    """Base of every config section: unknown keys are errors (a typo must not be silently ignored)."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class WrittenAsGiven(Section):
    """A section with fields typed as the library's configs (``judge.spec`` is a JudgeSpec,
    ``training.options`` a TrainConfig, ``sampling.prompt`` a PromptConfig) that dumps them as written.

    The dump is what study.yaml freezes and what the stage digests hash. Validation coerces
    (``learning_rate: 1e-4`` is a string to YAML and 0.0001 once typed, ``temperature: 0`` becomes 0.0, a
    preset fills in what the file leaves out), and digests of the coerced values would make the finished runs
    of such files stale; the mapping as written hashes as it always has.
    """

    #: each typed field, and what its dump shows when the file does not set it
    written_fields: ClassVar[dict[str, Any]] = {}
    #: other fields the typed ones are resolved against (training's preset)
    resolved_against: ClassVar[frozenset[str]] = frozenset()
    _written: dict[str, Any] = PrivateAttr(default_factory=dict)

    def model_copy(self, *, update: Mapping[str, Any] | None = None, deep: bool = False) -> Any:
        """A copy; one that changes a typed field, or what it is resolved against, is read again from the
        section as written with the update on top, so its value, its dump and its digest follow the update."""
        if update and set(update) & (set(self.written_fields) | self.resolved_against):
            return type(self).model_validate({**self.model_dump(), **update})
        return super().model_copy(update=update, deep=deep)

    @model_validator(mode="wrap")
    @classmethod
    def _keep_written(cls, data: Any, handler: ModelWrapValidatorHandler[Any]) -> Any:
        if not isinstance(data, Mapping):
            return handler(data)  # a section object (kept as it is), or input pydantic reports as wrong
        given = {name: _as_written(data[name]) for name in cls.written_fields if name in data}
        # a field written as its unset value is not written: it dumps the same either way
        written = {name: value for name, value in given.items() if value != cls.written_fields[name]}
        section = handler(cls._typed_input(dict(data), written))
        section._written = written
        return section

    @classmethod
    def _typed_input(cls, data: dict[str, Any], written: Mapping[str, Any]) -> dict[str, Any]:
        """The input the typed fields validate (a section that resolves them against others overrides this)."""
        return data

    @model_serializer(mode="wrap")
    def _dump_as_written(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        dumped = handler(self)
        for name, unset in self.written_fields.items():
            if name in dumped:
                dumped[name] = copy.deepcopy(self._written.get(name, unset))
        return dumped


def _as_written(value: Any) -> Any:
    """A field's value as a file would write it: a config object given in Python is the fields it sets."""
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json", exclude_unset=True)
    return copy.deepcopy(value)


class SamplingConfig(WrittenAsGiven, SamplingParams):
    """How both models sample: the engine's :class:`~flopmatch.backends.base.SamplingParams` (its fields,
    defaults and checks), the prompt, and how the sampling runs (replicas, time limit, allocation policy)."""

    written_fields: ClassVar[dict[str, Any]] = {"prompt": {}}

    prompt: PromptConfig | None = Field(
        None,
        description="flopmatch.prompts.PromptConfig fields overriding the dataset's default prompt (few-shot count, "
        "...); the dataset's default when omitted",
    )
    replicas: PositiveInt = Field(1, description="engine replicas (Ray actors) per model")
    ray_address: str | None = Field(
        None, description="an existing Ray cluster's address; local Ray when omitted"
    )
    budget_seconds: float | None = Field(
        None, gt=0, description="stop sampling a model cleanly after this many seconds"
    )
    allocation: StudyAllocation = Field(
        default_factory=StudyAllocation,
        description="a policy name (uniform, until-correct, adaptive) or {policy, objective, target_correct, "
        "max_per_problem}: a non-uniform policy also samples each model at each budget's FLOPs "
        "(flopmatch.allocation_study)",
    )

    @classmethod
    def _typed_input(cls, data: dict[str, Any], written: Mapping[str, Any]) -> dict[str, Any]:
        if "prompt" not in written:  # no overrides (`{}` is none): the field's default, the dataset's prompt
            data.pop("prompt", None)
        return data

    @field_validator("prompt", mode="before")
    @classmethod
    def _written_prompt_is_a_mapping(cls, value: Any) -> Any:
        # only a written value gets here (an unwritten prompt is the unvalidated default): null is not one
        if value is None:
            raise ValueError("null is not a prompt: omit `prompt` for the dataset's default, or give its fields")
        return value

    def digest_view(self) -> dict[str, Any]:
        """What the sample stage's digest hashes (a uniform study hashes as before allocation existed)."""
        return self.model_dump(
            mode="json", exclude={"allocation"} if self.allocation.policy == "uniform" else None
        )

    def params(self) -> SamplingParams:
        """The engine's sampling parameters of this section."""
        return SamplingParams(**{name: getattr(self, name) for name in SamplingParams.model_fields})


class JudgeConfig(WrittenAsGiven):
    written_fields: ClassVar[dict[str, Any]] = {"spec": TOYWORLD_JUDGE}

    enabled: bool = True
    spec: JudgeSpec = Field(
        default_factory=lambda: JudgeSpec(backend=TOYWORLD_JUDGE),  # the exact checker: its recorded name
        description="flopmatch.judge.JudgeSpec: `toyworld-checker` (the exact step checker of a dataset that "
        "declares one, e.g. the toy world), `kind:model`, or {backend, model, options, max_tokens, ...}",
    )
    per_model: PositiveInt = Field(500, description="answer-correct solutions judged per model (paper: 500)")


class TrainingConfig(WrittenAsGiven):
    written_fields: ClassVar[dict[str, Any]] = {"options": {}}
    resolved_against: ClassVar[frozenset[str]] = frozenset({"preset"})

    enabled: bool = Field(True, description="run build-sft, train and eval (off: dataset metrics only)")
    preset: Literal[tuple(PRESETS)] = Field(  # type: ignore[valid-type]  # the names of TrainConfig's presets
        "default", description="starting hyperparameters: default (the paper's) or tiny-cpu"
    )
    options: TrainConfig = Field(
        default_factory=TrainConfig,
        description="flopmatch.training.TrainConfig: the preset's settings, with the fields given here overriding them",
    )
    steps_per_budget: dict[int, PositiveInt] | None = Field(
        None,
        description="optimizer steps per budget (SE samples per problem -> steps), the paper's protocol, e.g. "
        "{1: 600, 10: 6000}; overrides options.max_steps",
    )
    seeds: list[int] | None = Field(
        None,
        description="training seeds: every fine-tuning job runs once per seed (data order, initialisation of new "
        "parameters) and comparisons resample seeds too, e.g. [0, 1, 2]; one seed (options.seed, else the "
        "study seed) when omitted",
    )
    launcher: Literal["inprocess", "accelerate"] = Field(
        "inprocess",
        description="inprocess (one process, CPU or one GPU) or accelerate (`accelerate launch` per run: multi-GPU, "
        "DeepSpeed/FSDP)",
    )
    accelerate_config: str | None = Field(
        None, description="an accelerate config file (relative to the study file), e.g. DeepSpeed ZeRO-3"
    )
    accelerate_args: list[str] = Field(
        default_factory=list, description="extra `accelerate launch` arguments, e.g. [--num_processes, '8']"
    )
    workers: PositiveInt = Field(
        1,
        description="processes that run the fine-tuning runs, and then the evaluations, in parallel, each with one "
        "torch thread (CPU studies: one per core; any number above 1 gives the same results); 1: one after another "
        "in this process, with torch's default threads",
    )

    @field_validator("seeds")
    @classmethod
    def _distinct_seeds(cls, value: list[int] | None) -> list[int] | None:
        if value is not None and (not value or len(set(value)) != len(value)):
            raise ValueError(f"training.seeds must be a non-empty list of distinct integers, got {value}")
        return value

    @classmethod
    def _typed_input(cls, data: dict[str, Any], written: Mapping[str, Any]) -> dict[str, Any]:
        overrides = written.get("options", {})
        if isinstance(overrides, Mapping):  # else pydantic says what options should be
            data["options"] = {**PRESETS.get(data.get("preset", "default"), {}), **overrides}
        return data

    @model_validator(mode="after")
    def _one_way_to_seed(self) -> TrainingConfig:
        if self.seeds is not None and self._sets_seed():
            raise ValueError("set the training seed in training.seeds or in training.options.seed, not both")
        return self

    def _sets_seed(self) -> bool:
        return "seed" in self.options.model_fields_set

    def default_seed(self, study_seed: int) -> int:
        """The seed of a one-seed study (options.seed, else the study seed): its runs keep the plain job names."""
        return self.options.seed if self._sets_seed() else study_seed

    def train_config(self, study_seed: int) -> TrainConfig:
        """What every fine-tuning run starts from (a job then sets its own seed and steps): ``options``, seeded
        with the study seed when it sets none."""
        return self.options.model_copy(update={"seed": self.default_seed(study_seed)})

    def seed_list(self, study_seed: int) -> list[int]:
        """The training seeds, in order (one, :meth:`default_seed`, when ``seeds`` is not given)."""
        return list(self.seeds) if self.seeds is not None else [self.default_seed(study_seed)]


#: EvalConfig fields the study's section gained when it became EvalConfig: dumped (and so hashed into the eval
#: stage's digest) only when not their default, so a finished run does not go stale.
_EVAL_FIELDS_ADDED = {"ks": EvalConfig.model_fields["ks"].default, "top_p": 1.0, "greedy": True, "seed": None}


class EvaluationConfig(EvalConfig):
    """The study's ``evaluation:`` section: :class:`flopmatch.evaluation.EvalConfig` (the settings of
    :func:`flopmatch.evaluation.evaluate`) with the study's defaults, plus ``baselines``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    backend: Literal["vllm", "hf"] = Field("vllm", description="the engine that evaluates trained models")
    n: PositiveInt = Field(4, description="samples per problem at temperature for maj@k and pass@k")
    max_tokens: PositiveInt | None = Field(None, description="defaults to sampling.max_tokens")
    seed: int | None = Field(None, description="the evaluations' sampling seed; the study seed when omitted")
    baselines: bool = Field(True, description="also evaluate each student before fine-tuning")

    @model_serializer(mode="wrap")
    def _dump(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        added = {k for k, default in _EVAL_FIELDS_ADDED.items() if getattr(self, k) == default}
        return {k: v for k, v in handler(self).items() if k not in added}

    def evaluate_kwargs(self, *, seed: int, max_tokens: int) -> dict[str, Any]:
        """The keyword arguments of :func:`flopmatch.evaluation.evaluate` this section sets (all but the model,
        problems and outputs); ``seed`` and ``max_tokens`` are the study's, used when the section has none."""
        return {
            "backend": self.backend,
            "n": self.n,
            "ks": self.ks,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "max_tokens": self.max_tokens or max_tokens,
            "greedy": self.greedy,
            "seed": seed if self.seed is None else self.seed,
            "backend_options": dict(self.backend_options),
        }
