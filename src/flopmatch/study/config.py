"""The typed study config: the sections of one study file, and loading it (paths resolved against the file).

The sections are the library's configs where the library has one (:mod:`flopmatch.study.config_library`:
``sampling``, ``judge``, ``training`` and ``evaluation``). Reading the YAML (``$VAR``
expansion, ``--set`` overrides) and error messages that name the file, line and key are in
:mod:`flopmatch.study.config_yaml`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field, ValidationError, ValidationInfo, field_validator, model_validator

from flopmatch.datasets import dataset_names, get_dataset
from flopmatch.study.config_library import (
    EvaluationConfig,
    JudgeConfig,
    PositiveInt,
    SamplingConfig,
    Section,
    TrainingConfig,
)
from flopmatch.study.config_yaml import (  # `X as X`: re-exported, part of this module's API
    StudyConfigError,
    describe_validation_error,
    looks_like_path,
    read_yaml_mapping,
    resolve_path,
)
from flopmatch.study.config_yaml import apply_overrides as apply_overrides
from flopmatch.study.config_yaml import expand_env as expand_env
from flopmatch.study.spec_models import spec_model as spec_model

# --------------------------------------------------------------------------- config

#: Generation engines (see ``flopmatch.backends.create_backend``).
BACKENDS: tuple[str, ...] = ("vllm", "hf", "openai")
PARADIGMS: tuple[str, ...] = ("knowledge_distillation", "self_improvement", "weak_to_strong")


def _declared_source(value: str | None) -> str | None:
    """A split's ``source``: a dataset declared by now (one registered after this module was imported too)."""
    if value is not None and get_dataset(value) is None:
        raise ValueError(f"unknown problem source {value!r}; expected one of {', '.join(dataset_names())}")
    return value


class SplitConfig(Section):
    """Where one split's problems come from."""

    source: str = Field(description="a declared dataset (`flopmatch problems --help` lists them)")
    split: str | None = Field(
        None, description="the source's split name (e.g. train, test); the source's default when omitted"
    )
    data_file: str | None = Field(
        None,
        description="a local JSONL/Parquet file in the format of ../shared/data (relative paths are "
        "relative to the config file; $VAR and ${VAR:-default} are expanded)",
    )
    limit: PositiveInt | None = Field(None, description="a positive number of problems (a seeded subset)")
    seed: int | None = Field(None, description="an integer seed for the subset; the study seed when omitted")

    _known_source = field_validator("source")(_declared_source)


class ValidationSplitConfig(Section):
    """Problems for checkpoint selection: either their own source, or ``holdout: N`` problems carved off
    the sample split (they are then never sampled from, so validation stays held out)."""

    holdout: PositiveInt | None = Field(
        None, description="a positive number of sample-split problems to hold out for validation"
    )
    source: str | None = Field(None, description="a declared dataset (`flopmatch problems --help` lists them)")
    split: str | None = None
    data_file: str | None = None
    limit: PositiveInt | None = None
    seed: int | None = None

    _known_source = field_validator("source")(_declared_source)

    @model_validator(mode="after")
    def _one_origin(self) -> ValidationSplitConfig:
        if (self.holdout is None) == (self.source is None):
            raise ValueError(
                "give either `holdout: N` (carve N sample problems off) or `source:` (its own problems)"
            )
        if self.holdout is not None and any(v is not None for v in (self.split, self.data_file, self.limit)):
            raise ValueError("`holdout` takes its problems from the sample split; drop split/data_file/limit")
        return self

    def as_split(self) -> SplitConfig:
        assert self.source is not None
        return SplitConfig(
            source=self.source, split=self.split, data_file=self.data_file, limit=self.limit, seed=self.seed
        )


class ProblemsConfig(Section):
    sample: SplitConfig = Field(description="the split the WC and SE models write solutions for")
    validation: ValidationSplitConfig | None = Field(
        None, description="checkpoint-selection problems: `holdout: N` or a split of their own"
    )
    test: SplitConfig | None = Field(
        None, description="held-out problems the fine-tuned models are evaluated on"
    )


class ModelSpec(Section):
    """One model: what to load, how to serve it, and (optionally) facts the planner would otherwise read."""

    model: str = Field(
        description="a Hugging Face id, a local directory, or a registry name (`flopmatch models list`)"
    )
    backend: Literal["vllm", "hf", "openai"] = Field(
        "vllm", description="the generation engine: vllm, hf or openai"
    )
    backend_options: dict[str, Any] = Field(
        default_factory=dict, description="engine options passed to the backend (dtype, max_model_len, ...)"
    )
    params: float | None = Field(
        None,
        gt=0,
        description="parameter count override (e.g. 9.24e9); read from the model's config/GGUF when omitted",
    )
    price_per_token: float | None = Field(
        None, gt=0, description="price per output token (budget mode `price`)"
    )
    label: str | None = Field(None, description="a short display name for tables (defaults to the model)")
    toyworld_spec: dict[str, Any] | None = Field(
        None,
        description="fields of flopmatch.toyworld.ToyModelSpec: a toy-world model of this shape, pretrained "
        "locally and cached (`model` is then only its name), e.g. a third, smaller student; `noise` takes "
        "fields of flopmatch.toyworld.NoiseConfig (e.g. {false_positive_scale: 2})",
    )

    @property
    def display(self) -> str:
        return self.label or self.model

    #: Keys naming a model that a dataset's own code builds from a spec, each ``<dataset>_spec`` (the mapping
    #: goes to :func:`spec_model`); the toy world's is the one there is.
    dataset_spec_keys: ClassVar[tuple[str, ...]] = ("toyworld_spec",)

    @field_validator(*dataset_spec_keys)
    @classmethod
    def _buildable_spec(cls, value: dict[str, Any] | None, info: ValidationInfo) -> dict[str, Any] | None:
        if value is None:
            return value
        assert info.field_name is not None
        try:
            spec_model(info.field_name.removesuffix("_spec"), "check", value)  # builds nothing
        except (ImportError, ValueError) as exc:
            raise ValueError(str(exc)) from None
        return value

    def dataset_spec(self) -> tuple[str, dict[str, Any]] | None:
        """``(dataset, mapping)`` when a dataset's own code builds this model from a spec (a
        ``<dataset>_spec`` key, e.g. ``toyworld_spec``); None for a model loaded by reference."""
        for key in self.dataset_spec_keys:
            value = getattr(self, key)
            if value is not None:
                return key.removesuffix("_spec"), value
        return None


class ModelsConfig(Section):
    wc: ModelSpec = Field(description="the weak-cheap model")
    se: ModelSpec = Field(description="the strong-expensive model")


class PilotConfig(Section):
    """budget.mode `advised`: the pilot `flopmatch advise` decides from (see flopmatch.advise)."""

    samples: PositiveInt = Field(4, description="pilot samples per problem from each model")
    problems: PositiveInt | None = Field(
        None, description="pilot problems (a seeded subset); default: a tenth of the largest budget or less"
    )
    objective: Literal["coverage", "unique", "valid-unique"] = Field(
        "coverage", description="what the advice maximises: coverage, unique or valid-unique"
    )
    n_boot: PositiveInt = Field(200, description="bootstrap resamples of the pilot problems")


class BudgetConfig(Section):
    mode: Literal["flops", "price", "number", "measured", "advised"] = Field(
        "flops",
        description="how budgets are matched: flops, price, number, measured, or advised (flops-matched, "
        "plus a pilot stage whose advice is sampled and reported)",
    )
    pilot: PilotConfig = Field(default_factory=PilotConfig, description="the pilot of budget.mode `advised`")
    se_samples: list[PositiveInt] = Field(
        default_factory=lambda: [1, 10], description="SE samples per problem at each budget, e.g. [1, 10]"
    )
    rounding: Literal["floor", "round", "ceil"] = Field(
        "floor", description="how a fractional WC count is rounded"
    )
    options: dict[str, Any] = Field(
        default_factory=dict,
        description="extra keyword arguments for flopmatch.budget.plan_budgets (e.g. mean solution lengths)",
    )

    @field_validator("se_samples")
    @classmethod
    def _sorted_unique(cls, value: list[int]) -> list[int]:
        if not value:
            raise ValueError("give at least one budget, e.g. [1, 10]")
        if len(set(value)) != len(value):
            raise ValueError(f"budgets must be distinct, got {value}")
        return sorted(value)

    @property
    def matching(self) -> str:
        """The plan's matching mode: an advised study compares WC and SE at matched FLOPs."""
        return "flops" if self.mode == "advised" else self.mode


class GradingConfig(Section):
    workers: PositiveInt | None = Field(None, description="grading processes; all cores when omitted")
    timeout: float = Field(5.0, gt=0, description="seconds allowed per equivalence check")


class AnalysisConfig(Section):
    ks: list[PositiveInt] | None = Field(
        None, description="k values for coverage@k/diversity@k; all budgets when omitted"
    )
    n_boot: PositiveInt = Field(1000, description="bootstrap resamples for the confidence intervals")


class ParadigmsConfig(Section):
    knowledge_distillation: bool = Field(True, description="train a separate student on WC data vs SE data")
    self_improvement: bool = Field(True, description="train WC on its own data vs on SE data")
    weak_to_strong: bool = Field(True, description="train SE on WC data vs on its own data")
    student: ModelSpec | None = Field(
        None, description="the knowledge-distillation student (required when knowledge_distillation is on)"
    )
    number_matched: list[Literal["knowledge_distillation", "self_improvement", "weak_to_strong"]] = Field(
        default_factory=lambda: ["knowledge_distillation"],
        description="paradigms that also get the number-matched control (WC data with SE's sample count)",
    )
    max_per_problem: PositiveInt | None = Field(None, description="cap on correct solutions kept per problem")
    allocations: list[Literal["uniform", "until-correct", "adaptive"]] = Field(
        default_factory=lambda: ["uniform"],
        description="whose data the students train on: uniform (S per problem) and/or sampling.allocation's policy",
    )

    @field_validator("allocations")
    @classmethod
    def _distinct_allocations(cls, value: list[str]) -> list[str]:
        if not value or len(set(value)) != len(value):
            raise ValueError(
                f"paradigms.allocations must be a non-empty list of distinct policies, got {value}"
            )
        return value

    def enabled(self) -> list[str]:
        return [p for p in PARADIGMS if getattr(self, p)]

    def digest_view(self) -> dict[str, Any]:
        """What the sft and train digests hash (a uniform-only study hashes as before allocations existed)."""
        return self.model_dump(
            mode="json", exclude={"allocations"} if self.allocations == ["uniform"] else None
        )


class StudyConfig(Section):
    """The whole study. ``flopmatch study CONFIG.yaml --dry-run`` validates a file against this."""

    name: str = Field(description="a short study name (letters, digits, . _ -); the run goes to runs/<name>")
    description: str = ""
    run_dir: str | None = Field(None, description="where the run lives; runs/<name> when omitted")
    seed: int = 0
    problems: ProblemsConfig
    models: ModelsConfig
    budget: BudgetConfig = Field(default_factory=BudgetConfig)
    sampling: SamplingConfig = Field(default_factory=SamplingConfig)
    grading: GradingConfig = Field(default_factory=GradingConfig)
    judge: JudgeConfig = Field(default_factory=JudgeConfig)
    analysis: AnalysisConfig = Field(default_factory=AnalysisConfig)
    paradigms: ParadigmsConfig = Field(default_factory=ParadigmsConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    evaluation: EvaluationConfig = Field(default_factory=EvaluationConfig)

    @field_validator("name")
    @classmethod
    def _safe_name(cls, value: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", value):
            raise ValueError(
                f"{value!r} is not a usable directory name; use letters, digits, '.', '_' or '-'"
            )
        return value

    @model_validator(mode="after")
    def _consistent(self) -> StudyConfig:
        if self.budget.mode == "price":
            missing = [r for r in ("wc", "se") if getattr(self.models, r).price_per_token is None]
            if missing:
                raise ValueError(
                    f"budget.mode is `price` but models.{missing[0]}.price_per_token is not set; "
                    "give both models a price per output token"
                )
        if self.training.enabled:
            if self.paradigms.knowledge_distillation and self.paradigms.student is None:
                raise ValueError(
                    "paradigms.knowledge_distillation is on but paradigms.student is not set; name a student "
                    "model or set knowledge_distillation: false"
                )
            if self.problems.test is None:
                raise ValueError(
                    "training is enabled but problems.test is not set; fine-tuned models need a test split"
                )
            unknown = sorted(set(self.training.steps_per_budget or {}) - set(self.budget.se_samples))
            if unknown:
                raise ValueError(
                    f"training.steps_per_budget names budget(s) {unknown} that budget.se_samples "
                    f"{self.budget.se_samples} does not have"
                )
            for paradigm in self.paradigms.number_matched:
                if not getattr(self.paradigms, paradigm):
                    raise ValueError(f"paradigms.number_matched lists {paradigm} but that paradigm is off")
        policy = self.sampling.allocation.policy
        for allocation in self.paradigms.allocations:
            if allocation not in ("uniform", policy):
                raise ValueError(
                    f"paradigms.allocations lists {allocation} but sampling.allocation is {policy}; "
                    f"set `sampling.allocation: {allocation}` (one policy per study)"
                )
        return self


# --------------------------------------------------------------------------- loading


def load_study_config(path: str | Path, overrides: Sequence[str] = ()) -> StudyConfig:
    """Read, validate and resolve a study file.

    Relative ``data_file``/``run_dir`` paths (and model references that start with ``./``, ``../``, ``~``
    or ``$``) are resolved against the file's directory, so a study runs the same from any working
    directory. Errors raise ``StudyConfigError`` naming the file, line, key and what is expected.
    """
    path = Path(path)
    data, root_node = read_yaml_mapping(path)
    data = apply_overrides(data, overrides)
    return validate_study_dict(data, base_dir=path.resolve().parent, source=str(path), node=root_node)


def validate_study_dict(
    data: Mapping[str, Any], *, base_dir: Path | None = None, source: str = "<config>", node: Any = None
) -> StudyConfig:
    """Validate a raw mapping (as read from YAML) into a resolved ``StudyConfig``."""
    try:
        config = StudyConfig.model_validate(dict(data))
    except ValidationError as exc:
        raise StudyConfigError(format_validation_error(exc, source=source, node=node)) from None
    return resolve_paths(config, base_dir or Path.cwd())


def format_validation_error(exc: ValidationError, *, source: str = "<config>", node: Any = None) -> str:
    """One line per problem of a ``StudyConfig``: ``file:line: dotted.key: what is wrong; expected ...``."""
    return describe_validation_error(exc, StudyConfig, source=source, node=node)


def resolve_paths(config: StudyConfig, base: Path) -> StudyConfig:
    """Make every file reference absolute, so the frozen copy in the run directory is self-sufficient."""

    def split(s: SplitConfig | None) -> SplitConfig | None:
        return None if s is None else s.model_copy(update={"data_file": resolve_path(s.data_file, base)})

    def model(m: ModelSpec | None) -> ModelSpec | None:
        if m is None or not looks_like_path(m.model):
            return m
        return m.model_copy(update={"model": resolve_path(m.model, base)})

    training = config.training
    if training.accelerate_config:
        training = training.model_copy(
            update={"accelerate_config": resolve_path(training.accelerate_config, base)}
        )
    problems = config.problems
    validation = problems.validation
    if validation is not None and validation.data_file is not None:
        validation = validation.model_copy(update={"data_file": resolve_path(validation.data_file, base)})
    return config.model_copy(
        update={
            "run_dir": resolve_path(config.run_dir, base) if config.run_dir else None,
            "problems": problems.model_copy(
                update={
                    "sample": split(problems.sample),
                    "validation": validation,
                    "test": split(problems.test),
                }
            ),
            "models": config.models.model_copy(
                update={"wc": model(config.models.wc), "se": model(config.models.se)}
            ),
            "paradigms": config.paradigms.model_copy(update={"student": model(config.paradigms.student)}),
            "training": training,
        }
    )


def demo_config(overrides: Sequence[str] = ()) -> StudyConfig:
    """The packaged copy of ``examples/toyworld.yaml`` (works from an installed wheel), with
    ``KEY=VALUE`` overrides applied as ``flopmatch study --set`` does."""
    from importlib.resources import as_file, files

    with as_file(files("flopmatch").joinpath("configs/toyworld.yaml")) as path:
        return load_study_config(path, overrides)
