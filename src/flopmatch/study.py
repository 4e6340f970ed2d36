"""One YAML file drives a whole study: the typed config and the stage orchestrator.

A study is the paper's experiment end to end::

    problems -> plan -> sample -> grade -> judge -> analyze -> sft -> train -> eval -> report

Each stage reads what earlier stages wrote into the run directory (``flopmatch.store.RunDir``) and
writes its own outputs there. A stage is skipped when its *digest* is unchanged: the hash of the config
sections it reads plus the fingerprints of its upstream stages' outputs. Editing ``sampling.temperature``
therefore reruns sampling and everything after it, and nothing before; forcing a stage that rewrites
its outputs reruns what depends on them. Stages that are long (sampling, training) are resumable inside
too, so a killed study picks up where it stopped and never redoes finished work.

This module is the library; ``flopmatch study`` / ``status`` / ``demo`` only wrap it.
"""

from __future__ import annotations

import difflib
import hashlib
import os
import re
import time
import types
import typing
from collections.abc import Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from flopmatch.store import (
    RunDir,
    config_hash,
    model_key,
    read_json,
    read_table,
    write_json,
    write_table,
    write_text,
)

# --------------------------------------------------------------------------- config

#: Problem sources a split may name (see ``flopmatch.problems.load``).
KNOWN_SOURCES: tuple[str, ...] = ("gsm8k", "math", "math500", "math-offline", "toyworld")
#: Generation engines (see ``flopmatch.backends.create_backend``).
BACKENDS: tuple[str, ...] = ("vllm", "hf", "openai")
PARADIGMS: tuple[str, ...] = ("knowledge_distillation", "self_improvement", "weak_to_strong")

PositiveInt = Annotated[int, Field(ge=1)]


class _Section(BaseModel):
    """Base of every config section: unknown keys are errors (a typo must not be silently ignored)."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class SplitConfig(_Section):
    """Where one split's problems come from."""

    source: str = Field(description=f"a problem source: one of {', '.join(KNOWN_SOURCES)}")
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

    @field_validator("source")
    @classmethod
    def _known_source(cls, value: str) -> str:
        if value not in KNOWN_SOURCES:
            raise ValueError(f"unknown problem source {value!r}; expected one of {', '.join(KNOWN_SOURCES)}")
        return value


class ValidationSplitConfig(_Section):
    """Problems for checkpoint selection: either their own source, or ``holdout: N`` problems carved off
    the sample split (they are then never sampled from, so validation stays held out)."""

    holdout: PositiveInt | None = Field(
        None, description="a positive number of sample-split problems to hold out for validation"
    )
    source: str | None = Field(None, description=f"a problem source: one of {', '.join(KNOWN_SOURCES)}")
    split: str | None = None
    data_file: str | None = None
    limit: PositiveInt | None = None
    seed: int | None = None

    @model_validator(mode="after")
    def _one_origin(self) -> ValidationSplitConfig:
        if (self.holdout is None) == (self.source is None):
            raise ValueError(
                "give either `holdout: N` (carve N sample problems off) or `source:` (its own problems)"
            )
        if self.holdout is not None and any(v is not None for v in (self.split, self.data_file, self.limit)):
            raise ValueError("`holdout` takes its problems from the sample split; drop split/data_file/limit")
        if self.source is not None and self.source not in KNOWN_SOURCES:
            raise ValueError(
                f"unknown problem source {self.source!r}; expected one of {', '.join(KNOWN_SOURCES)}"
            )
        return self

    def as_split(self) -> SplitConfig:
        assert self.source is not None
        return SplitConfig(
            source=self.source, split=self.split, data_file=self.data_file, limit=self.limit, seed=self.seed
        )


class ProblemsConfig(_Section):
    sample: SplitConfig = Field(description="the split the WC and SE models write solutions for")
    validation: ValidationSplitConfig | None = Field(
        None, description="checkpoint-selection problems: `holdout: N` or a split of their own"
    )
    test: SplitConfig | None = Field(
        None, description="held-out problems the fine-tuned models are evaluated on"
    )


class ModelSpec(_Section):
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
        "locally and cached (`model` is then only its name), e.g. a third, smaller student",
    )

    @property
    def display(self) -> str:
        return self.label or self.model

    @field_validator("toyworld_spec")
    @classmethod
    def _toy_spec(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is None:
            return value
        from dataclasses import fields

        from flopmatch.toyworld.models import ToyModelSpec

        known = {f.name for f in fields(ToyModelSpec)} - {"knobs", "noise"}
        unknown = sorted(set(value) - known)
        if unknown:
            raise ValueError(f"unknown ToyModelSpec field(s) {unknown}; expected some of {sorted(known)}")
        try:
            ToyModelSpec(**value)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"not a valid toy model: {exc}") from None
        return value


class ModelsConfig(_Section):
    wc: ModelSpec = Field(description="the weak-cheap model")
    se: ModelSpec = Field(description="the strong-expensive model")


class BudgetConfig(_Section):
    mode: Literal["flops", "price", "number", "measured"] = Field(
        "flops", description="how budgets are matched: flops, price, number or measured"
    )
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


class SamplingConfig(_Section):
    temperature: float = Field(0.7, ge=0, description="a temperature >= 0")
    top_p: float = Field(0.95, gt=0, le=1, description="top_p in (0, 1]")
    max_tokens: PositiveInt = Field(512, description="a positive token limit per solution")
    stop: list[str] = Field(default_factory=list)
    prompt: dict[str, Any] = Field(
        default_factory=dict,
        description="overrides of the dataset's default PromptConfig (few-shot count, ...)",
    )
    replicas: PositiveInt = Field(1, description="engine replicas (Ray actors) per model")
    ray_address: str | None = Field(
        None, description="an existing Ray cluster's address; local Ray when omitted"
    )
    budget_seconds: float | None = Field(
        None, gt=0, description="stop sampling a model cleanly after this many seconds"
    )


class GradingConfig(_Section):
    workers: PositiveInt | None = Field(None, description="grading processes; all cores when omitted")
    timeout: float = Field(5.0, gt=0, description="seconds allowed per equivalence check")


class JudgeConfig(_Section):
    enabled: bool = True
    spec: str | dict[str, Any] = Field(
        "toyworld-checker",
        description="a judge spec for flopmatch.judge.make_judge: `toyworld-checker` or a backend/model mapping",
    )
    per_model: PositiveInt = Field(500, description="answer-correct solutions judged per model (paper: 500)")

    @field_validator("spec")
    @classmethod
    def _known_spec(cls, value: str | dict[str, Any]) -> str | dict[str, Any]:
        """The fields of flopmatch.judge.JudgeSpec; engine settings (base_url, dtype, ...) go in ``options``."""
        if isinstance(value, dict):
            from dataclasses import fields

            from flopmatch.judge import JudgeSpec

            known = [f.name for f in fields(JudgeSpec)]
            unknown = sorted(set(value) - set(known))
            if unknown:
                raise ValueError(
                    f"unknown judge setting(s) {unknown}; expected some of {known} (engine settings such as "
                    "base_url or dtype go under `options:`)"
                )
            if "backend" not in value:
                raise ValueError("a judge spec needs `backend:` (vllm, hf, openai or toyworld-checker)")
        return value


class AnalysisConfig(_Section):
    ks: list[PositiveInt] | None = Field(
        None, description="k values for coverage@k/diversity@k; all budgets when omitted"
    )
    n_boot: PositiveInt = Field(1000, description="bootstrap resamples for the confidence intervals")


class ParadigmsConfig(_Section):
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

    def enabled(self) -> list[str]:
        return [p for p in PARADIGMS if getattr(self, p)]


class TrainingConfig(_Section):
    enabled: bool = Field(True, description="run build-sft, train and eval (off: dataset metrics only)")
    preset: Literal["default", "tiny-cpu"] = Field(
        "default", description="starting hyperparameters: default (the paper's) or tiny-cpu"
    )
    options: dict[str, Any] = Field(
        default_factory=dict, description="flopmatch.training.TrainConfig fields overriding the preset"
    )
    steps_per_budget: dict[int, PositiveInt] | None = Field(
        None,
        description="optimizer steps per budget (SE samples per problem -> steps), the paper's protocol, e.g. "
        "{1: 600, 10: 6000}; overrides options.max_steps",
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


class EvaluationConfig(_Section):
    backend: Literal["vllm", "hf"] = Field(
        "vllm", description="the engine that evaluates trained models: vllm or hf"
    )
    backend_options: dict[str, Any] = Field(default_factory=dict)
    n: PositiveInt = Field(4, description="samples per problem at temperature for maj@k and pass@k")
    temperature: float = Field(0.7, ge=0)
    max_tokens: PositiveInt | None = Field(None, description="defaults to sampling.max_tokens")
    baselines: bool = Field(True, description="also evaluate each student before fine-tuning")


class StudyConfig(_Section):
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
        return self


class StudyConfigError(ValueError):
    """A study file that cannot be used; the message names the file, line, key and what is expected."""


# --------------------------------------------------------------------------- loading


_ENV_PATTERN = re.compile(
    r"\$(?:\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?::-(?P<default>[^}]*))?\}|(?P<bare>[A-Za-z_][A-Za-z0-9_]*))"
)


def expand_env(text: str, environ: Mapping[str, str] | None = None) -> str:
    """Expand ``$VAR``, ``${VAR}`` and ``${VAR:-default}``; an unset variable without default is an error
    (a silently empty path would point a study at the wrong data)."""
    env = os.environ if environ is None else environ

    def replace(match: re.Match[str]) -> str:
        name = match.group("braced") or match.group("bare")
        if name in env and env[name] != "":
            return env[name]
        if match.group("default") is not None:
            return match.group("default")
        raise StudyConfigError(
            f"environment variable ${name} is not set (use ${{{name}:-default}} for a default)"
        )

    return _ENV_PATTERN.sub(replace, text)


def _resolve_path(value: str | None, base: Path) -> str | None:
    if value is None:
        return None
    expanded = Path(os.path.expanduser(expand_env(value)))
    return str(expanded if expanded.is_absolute() else (base / expanded).resolve())


def _looks_like_path(ref: str) -> bool:
    return ref.startswith((".", "/", "~", "$"))


def apply_overrides(data: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Apply ``key.sub=value`` overrides (values parsed as YAML) to a raw config mapping, e.g.
    ``training.enabled=true`` or ``problems.sample.limit=100``."""
    data = _deep_copy(data)
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise StudyConfigError(f"override {item!r} is not of the form key.path=value")
        parts = key.strip().split(".")
        node: Any = data
        for part in parts[:-1]:
            if not isinstance(node, dict):
                raise StudyConfigError(f"override {item!r}: {part!r} is not inside a mapping")
            node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise StudyConfigError(f"override {item!r}: {parts[-2]!r} is not a mapping")
        node[parts[-1]] = yaml.safe_load(raw) if raw.strip() else None
    return data


def _deep_copy(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _deep_copy(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_deep_copy(v) for v in obj]
    return obj


def load_study_config(path: str | Path, overrides: Sequence[str] = ()) -> StudyConfig:
    """Read, validate and resolve a study file.

    Relative ``data_file``/``run_dir`` paths (and model references that start with ``./``, ``../``, ``~``
    or ``$``) are resolved against the file's directory, so a study runs the same from any working
    directory. Errors raise ``StudyConfigError`` naming the file, line, key and what is expected.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise StudyConfigError(f"{path}: cannot read the study file ({exc.strerror or exc})") from exc
    try:
        root_node = yaml.compose(text)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        raise StudyConfigError(f"{where}: not valid YAML: {getattr(exc, 'problem', None) or exc}") from exc
    if not isinstance(data, dict):
        raise StudyConfigError(f"{path}: a study file is a mapping of sections (name, problems, models, ...)")
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


def resolve_paths(config: StudyConfig, base: Path) -> StudyConfig:
    """Make every file reference absolute, so the frozen copy in the run directory is self-sufficient."""

    def split(s: SplitConfig | None) -> SplitConfig | None:
        return None if s is None else s.model_copy(update={"data_file": _resolve_path(s.data_file, base)})

    def model(m: ModelSpec | None) -> ModelSpec | None:
        if m is None or not _looks_like_path(m.model):
            return m
        return m.model_copy(update={"model": _resolve_path(m.model, base)})

    training = config.training
    if training.accelerate_config:
        training = training.model_copy(
            update={"accelerate_config": _resolve_path(training.accelerate_config, base)}
        )
    problems = config.problems
    validation = problems.validation
    if validation is not None and validation.data_file is not None:
        validation = validation.model_copy(update={"data_file": _resolve_path(validation.data_file, base)})
    return config.model_copy(
        update={
            "run_dir": _resolve_path(config.run_dir, base) if config.run_dir else None,
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


# --------------------------------------------------------------------------- error messages


def format_validation_error(exc: ValidationError, *, source: str = "<config>", node: Any = None) -> str:
    """One line per problem: ``file:line: dotted.key: what is wrong; expected ...``."""
    lines = [f"{source}: invalid study config ({exc.error_count()} problem{'s' * (exc.error_count() != 1)})"]
    for error in exc.errors():
        loc = tuple(error["loc"])
        key = ".".join(str(p) for p in loc) or "(top level)"
        line = _yaml_line(node, loc)
        where = f"{source}:{line}" if line else source
        lines.append(f"  {where}: {key}: {_explain(error, loc)}")
    return "\n".join(lines)


def _explain(error: Mapping[str, Any], loc: tuple) -> str:
    kind = error["type"]
    field = _field_info(StudyConfig, loc)
    expected = field.description if field is not None and field.description else None
    if kind == "missing":
        return f"required key is missing; expected {expected}" if expected else "required key is missing"
    if kind == "extra_forbidden":
        parent = _section_model(StudyConfig, loc[:-1])
        if parent is None:
            return "unknown key"
        close = difflib.get_close_matches(str(loc[-1]), list(parent.model_fields), n=1)
        hint = f"did you mean `{close[0]}`? " if close else ""
        return f"unknown key; {hint}expected one of: {', '.join(parent.model_fields)}"
    message = str(error["msg"]).removeprefix("Value error, ")
    if kind == "value_error":  # our own validators already say what they got and what they expect
        return message
    got = error.get("input")
    shown = f" (got {got!r})" if not isinstance(got, dict | list) and got is not None else ""
    return f"{message}{shown}; expected {expected}" if expected else f"{message}{shown}"


def _unwrap(annotation: Any) -> list[Any]:
    """The member types of an annotation (Optional/Union unwrapped, Annotated stripped)."""
    origin = typing.get_origin(annotation)
    if origin is Annotated:
        return _unwrap(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        return [t for a in typing.get_args(annotation) for t in _unwrap(a)]
    return [annotation]


def _section_model(model: type[BaseModel], loc: tuple) -> type[BaseModel] | None:
    current: type[BaseModel] | None = model
    for part in loc:
        if current is None or not isinstance(part, str) or part not in current.model_fields:
            return None if current is None or isinstance(part, str) else current
        members = [
            t
            for t in _unwrap(current.model_fields[part].annotation)
            if isinstance(t, type) and issubclass(t, BaseModel)
        ]
        current = members[0] if members else None
    return current


def _field_info(model: type[BaseModel], loc: tuple) -> Any:
    parts = [p for p in loc if isinstance(p, str)]
    if not parts:
        return None
    parent = _section_model(model, tuple(parts[:-1]))
    if parent is None:
        return None
    return parent.model_fields.get(parts[-1])


def _yaml_line(node: Any, loc: tuple) -> int | None:
    """The 1-based line of ``loc`` in a composed YAML tree (the deepest existing ancestor's line)."""
    if node is None:
        return None
    line = node.start_mark.line + 1
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            match = next((v for k, v in node.value if getattr(k, "value", None) == str(part)), None)
            if match is None:
                key_node = next((k for k, _ in node.value if getattr(k, "value", None) == str(part)), None)
                return key_node.start_mark.line + 1 if key_node is not None else line
            node = match
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = node.value[part]
        else:
            return line
        line = node.start_mark.line + 1
    return line


# =========================================================================== the orchestrator

STAGES: tuple[str, ...] = (
    "problems",
    "plan",
    "sample",
    "grade",
    "judge",
    "analyze",
    "sft",
    "train",
    "eval",
    "report",
)
ROLES_FILE = "roles.json"
PROBLEM_ROLES: tuple[str, ...] = ("sample", "validation", "test")
PARADIGM_SHORT = {"knowledge_distillation": "kd", "self_improvement": "si", "weak_to_strong": "w2s"}
#: Which model each paradigm fine-tunes (paper.md: a separate student; WC itself; SE itself).
PARADIGM_STUDENT = {"knowledge_distillation": "student", "self_improvement": "wc", "weak_to_strong": "se"}


class StudyError(RuntimeError):
    """A study cannot go on (a stage's inputs are missing, a stage failed); the message says what to do."""


class StageFailed(StudyError):
    """A stage raised; what it finished is kept and the next run of the study retries it."""

    def __init__(self, stage: str, error: str):
        super().__init__(
            f"stage {stage} failed: {error}\n(finished work is kept; fix the cause and rerun the study)"
        )
        self.stage = stage
        self.error = error


def _mark_failed(run: RunDir, stage: str, digest: str, error: str) -> None:
    state = run.stage_state()
    state[stage] = {"hash": digest, "status": "failed", "error": error[:2000], "failed_at": time.time()}
    write_json(state, run.state_path)


@dataclass(frozen=True)
class SFTSet:
    """One training set: a model's correct solutions at one budget (``kind`` wc, se or wc_number_matched)."""

    name: str
    kind: str
    role: str  # whose samples: wc | se
    budget: int  # SE samples per problem of the budget
    samples_per_problem: int


@dataclass(frozen=True)
class TrainJob:
    """One fine-tuning run: a paradigm's student trained on one SFT set."""

    name: str
    paradigm: str
    student_role: str  # student | wc | se
    data: SFTSet


def sft_sets(config: StudyConfig, budgets: Sequence[tuple[int, int]]) -> list[SFTSet]:
    """Every SFT set the enabled paradigms need, given the plan's (se_samples, wc_samples) budgets."""
    out: list[SFTSet] = []
    for se_n, wc_n in budgets:
        out.append(SFTSet(f"wc-b{se_n}", "wc", "wc", se_n, wc_n))
        out.append(SFTSet(f"se-b{se_n}", "se", "se", se_n, se_n))
        if config.paradigms.number_matched:
            out.append(SFTSet(f"wc-nm-b{se_n}", "wc_number_matched", "wc", se_n, se_n))
    return out


def train_jobs(config: StudyConfig, budgets: Sequence[tuple[int, int]]) -> list[TrainJob]:
    """All three paradigms at every budget (each: WC data vs SE data), plus the number-matched control
    for the paradigms listed in ``paradigms.number_matched``."""
    sets = {s.name: s for s in sft_sets(config, budgets)}
    jobs: list[TrainJob] = []
    for paradigm in config.paradigms.enabled():
        short = PARADIGM_SHORT[paradigm]
        for se_n, _ in budgets:
            kinds = ["se", "wc"] + (["wc-nm"] if paradigm in config.paradigms.number_matched else [])
            for kind in kinds:
                data = sets[f"{kind}-b{se_n}"]
                jobs.append(TrainJob(f"{short}-{data.name}", paradigm, PARADIGM_STUDENT[paradigm], data))
    return jobs


# --------------------------------------------------------------------------- stage bookkeeping


@dataclass
class StageStatus:
    name: str
    state: str  # done | stale | pending | running | interrupted | failed | off
    digest: str | None
    info: dict[str, Any] = field(default_factory=dict)
    reason: str = ""


@dataclass
class StudyContext:
    """What every stage gets: the config, the run directory and a logger."""

    config: StudyConfig
    run: RunDir
    log: Any  # Callable[[str], None]
    progress: bool = True

    def problems(self, role: str) -> list[Any]:
        from flopmatch.problems import problems_from_table

        path = self.run.problems_path(role)
        if not path.exists():
            return []
        return problems_from_table(read_table(path))

    def roles(self) -> dict[str, Any]:
        path = self.run.root / ROLES_FILE
        if not path.exists():
            raise StudyError(f"{path}: missing; the plan stage writes it (run the study without --only)")
        return read_json(path)

    def plan(self) -> Any:
        from flopmatch.budget import BudgetPlan

        if not self.run.plan_path.exists():
            raise StudyError(f"{self.run.plan_path}: no plan; run the plan stage first")
        return BudgetPlan.load(self.run)

    def budgets(self) -> list[tuple[int, int]]:
        return [(int(b.se_samples), int(b.wc_samples)) for b in self.plan().budgets]


def _enabled(config: StudyConfig, stage: str) -> tuple[bool, str]:
    if stage == "judge" and not config.judge.enabled:
        return False, "judge.enabled is false"
    if stage in ("sft", "train", "eval") and not config.training.enabled:
        return False, "training.enabled is false"
    if stage in ("sft", "train", "eval") and not config.paradigms.enabled():
        return False, "no paradigm is enabled"
    return True, ""


def _needs(config: StudyConfig, stage: str) -> tuple[str, ...]:
    judge = ("judge",) if config.judge.enabled else ()
    return {
        "problems": (),
        "plan": ("problems",),
        "sample": ("problems", "plan"),
        "grade": ("sample",),
        "judge": ("grade",),
        "analyze": ("plan", "grade", *judge),
        "sft": ("plan", "grade", *judge),
        "train": ("problems", "sft"),
        "eval": ("problems", "train"),
        "report": ("plan", "sample", "analyze") + (("eval",) if _enabled(config, "eval")[0] else ()),
    }[stage]


def _stage_config(config: StudyConfig, stage: str) -> Any:
    """The config a stage reads: what goes into its digest besides its upstream outputs."""
    models = config.models
    model_refs = {"wc": models.wc.model, "se": models.se.model}
    match stage:
        case "problems":
            return {"problems": config.problems, "seed": config.seed}
        case "plan":
            return {
                "budget": config.budget,
                "models": {
                    r: {"model": m.model, "params": m.params, "price": m.price_per_token, "label": m.label}
                    for r, m in (("wc", models.wc), ("se", models.se))
                },
                "student": config.paradigms.student.model if config.paradigms.student else None,
            }
        case "sample":
            return {"models": models, "sampling": config.sampling, "seed": config.seed}
        case "grade":
            return {"grading": config.grading}
        case "judge":
            return {"judge": config.judge, "seed": config.seed}
        case "analyze":
            return {"analysis": config.analysis, "seed": config.seed}
        case "sft":
            return {"paradigms": config.paradigms, "models": model_refs, "seed": config.seed}
        case "train":
            return {
                "training": config.training,
                "paradigms": config.paradigms,
                "models": model_refs,
                "evaluation": {
                    "backend": config.evaluation.backend,
                    "max_tokens": config.evaluation.max_tokens or config.sampling.max_tokens,
                },
                "seed": config.seed,
            }
        case "eval":
            return {
                "evaluation": config.evaluation,
                "max_tokens": config.sampling.max_tokens,
                "seed": config.seed,
            }
        case "report":
            return {"report": 1}
    raise KeyError(stage)


#: Files up to this size are fingerprinted by content, bigger ones (model weights) by size and mtime.
CONTENT_HASH_LIMIT = 16 << 20


def fingerprint(paths: Sequence[Path], root: Path) -> str:
    """Identity of a stage's outputs: every file under ``paths`` by its name relative to ``root`` (so a
    run directory can be moved) and its content (size and modification time when large). Rewriting
    identical tables does not make later stages rerun; any real change does."""
    entries: list[tuple[str, str]] = []
    for path in paths:
        if path.is_file():
            files = [path]
        elif path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))
        else:
            continue
        for file in files:
            entries.append((os.path.relpath(file, root), _file_identity(file)))
    return config_hash(entries)


def _file_identity(path: Path) -> str:
    stat = path.stat()
    if stat.st_size > CONTENT_HASH_LIMIT:
        return f"{stat.st_size}:{stat.st_mtime_ns}"
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _outputs(ctx: StudyContext, stage: str) -> list[Path]:
    run = ctx.run
    roles = {}
    if (run.root / ROLES_FILE).exists():
        roles = read_json(run.root / ROLES_FILE)
    keys = [roles[r]["key"] for r in ("wc", "se") if r in roles]
    match stage:
        case "problems":
            return [run.problems_path(r) for r in PROBLEM_ROLES]
        case "plan":
            return [run.plan_path, run.root / ROLES_FILE]
        case "sample":
            return [run.root / "samples" / k for k in keys]
        case "grade":
            return [run.root / "grades" / f"{k}.parquet" for k in keys]
        case "judge":
            return [run.root / "judgments" / f"{k}.parquet" for k in keys]
        case "analyze":
            return [
                run.metrics_dir / "summary.parquet",
                run.metrics_dir / "compute_matched.parquet",
                run.metrics_dir / "coverage_curve.parquet",
            ]
        case "sft":
            return [run.root / "sft"]
        case "train":
            # each run's result record changes whenever it is retrained (even into the same directory)
            return [
                run.root / "models" / "trained.json",
                *sorted((run.root / "models").glob("*/train_result.json")),
            ]
        case "eval":
            return [run.metrics_dir / "paradigms.parquet"]
        case "report":
            return [run.report_dir / "index.html"]
    raise KeyError(stage)


def stage_digest(ctx: StudyContext, stage: str, state: Mapping[str, Any] | None = None) -> str | None:
    """The hash a finished ``stage`` must carry to be skipped: its config and its upstream outputs.
    ``None`` while an upstream stage has not finished (the stage cannot be judged yet)."""
    state = ctx.run.stage_state() if state is None else state
    upstream = {}
    for need in _needs(ctx.config, stage):
        entry = state.get(need)
        if not entry or entry.get("status") != "done" or "outputs" not in entry:
            return None
        upstream[need] = entry["outputs"]
    return config_hash(
        {
            "stage": stage,
            "version": STAGE_VERSIONS.get(stage, 1),
            "config": _stage_config(ctx.config, stage),
            "upstream": upstream,
        }
    )


#: Bump a stage's number when its behaviour changes, so finished runs redo it (and what depends on it).
STAGE_VERSIONS: dict[str, int] = {"plan": 2}


def study_status(ctx: StudyContext) -> list[StageStatus]:
    """Each stage's state, as ``flopmatch status`` shows it. ``stale``: finished with another config or
    other inputs (it will rerun); ``interrupted``: started and not finished, and no study holds the run."""
    state = ctx.run.stage_state()
    running = _lock_held(ctx.run)
    out: list[StageStatus] = []
    for stage in STAGES:
        enabled, why = _enabled(ctx.config, stage)
        entry = state.get(stage) or {}
        if not enabled:
            out.append(StageStatus(stage, "off", None, entry, why))
            continue
        digest = stage_digest(ctx, stage, state)
        status = entry.get("status")
        info = {k: v for k, v in entry.items() if k not in ("hash", "status")}
        if status == "done":
            if digest is not None and entry.get("hash") == digest and _outputs_intact(ctx, stage, entry):
                out.append(StageStatus(stage, "done", digest, info))
            else:
                reason = (
                    "outputs changed on disk"
                    if digest is not None and entry.get("hash") == digest
                    else ("config or inputs changed")
                )
                out.append(StageStatus(stage, "stale", digest, info, reason))
        elif status == "failed":
            out.append(StageStatus(stage, "failed", digest, info, str(entry.get("error", ""))[:300]))
        elif status == "running":
            out.append(
                StageStatus(
                    stage,
                    "running" if running else "interrupted",
                    digest,
                    info,
                    "" if running else "started and not finished; the next run resumes it",
                )
            )
        else:
            out.append(StageStatus(stage, "pending", digest, info))
    return out


def _outputs_intact(ctx: StudyContext, stage: str, entry: Mapping[str, Any]) -> bool:
    return entry.get("outputs") == fingerprint(_outputs(ctx, stage), ctx.run.root)


# --------------------------------------------------------------------------- the run lock


def _lock_path(run: RunDir) -> Path:
    return run.root / ".study.lock"


def _lock_held(run: RunDir) -> bool:
    import fcntl

    path = _lock_path(run)
    if not path.exists():
        return False
    with open(path, "a+") as handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return True
        fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
        return False


@contextmanager
def _run_lock(run: RunDir):
    """One study per run directory at a time (a second one would race the first's stages)."""
    import fcntl

    run.ensure()
    with open(_lock_path(run), "a+") as handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise StudyError(f"{run.root}: another study is running in this run directory") from None
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


# --------------------------------------------------------------------------- running a study


@dataclass
class StudyResult:
    run_dir: Path
    ran: list[str]
    skipped: list[str]
    report: Path | None
    seconds: float


def run_dir_for(config: StudyConfig, run_dir: str | Path | None = None) -> Path:
    """``run_dir`` argument, else the config's ``run_dir``, else ``runs/<name>`` under the working directory."""
    if run_dir is not None:
        return Path(run_dir)
    if config.run_dir:
        return Path(config.run_dir)
    return Path("runs") / config.name


def freeze_config(config: StudyConfig, run: RunDir) -> Path:
    """Write the resolved config to ``study.yaml`` (what ``status``/``report`` read later)."""
    text = yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False, allow_unicode=True)
    return write_text(f"# resolved by flopmatch study; the config this run used last\n{text}", run.study_path)


def load_run_config(run_dir: str | Path) -> StudyConfig:
    """The config frozen in a run directory by ``flopmatch study``."""
    run = RunDir(run_dir)
    if not run.study_path.exists():
        raise StudyConfigError(
            f"{run.root}: no study.yaml; is this a run directory made by `flopmatch study`?"
        )
    return load_study_config(run.study_path)


def check_components(config: StudyConfig) -> None:
    """Validate the sections other modules interpret (TrainConfig fields, prompt overrides) before any
    stage runs, so a typo fails in a second rather than after hours of sampling."""
    from pydantic import ValidationError as PydanticError

    if config.training.enabled:
        try:
            _train_config(config)
        except PydanticError as exc:
            problems = "; ".join(
                f"training.options.{'.'.join(str(p) for p in e['loc'])}: "
                + ("unknown TrainConfig field" if e["type"] == "extra_forbidden" else e["msg"])
                for e in exc.errors()
            )
            raise StudyConfigError(f"{problems} (see flopmatch.training.TrainConfig)") from None
    if config.sampling.prompt:
        from flopmatch.prompts import PromptConfig

        unknown = sorted(set(config.sampling.prompt) - set(PromptConfig.model_fields))
        if unknown:
            raise StudyConfigError(
                f"sampling.prompt: unknown PromptConfig field(s) {unknown}; expected some of "
                f"{sorted(PromptConfig.model_fields)}"
            )


def run_study(
    config: StudyConfig,
    run_dir: str | Path | None = None,
    *,
    only: Sequence[str] = (),
    force: Sequence[str] = (),
    log: Any = print,
    progress: bool = True,
) -> StudyResult:
    """Run the stages of ``config`` in order, skipping those already done with the same digest.

    ``only``: run just these stages (their upstream stages must be done). ``force``: rerun these even
    when done; their outputs change, so the stages that read them rerun too. A study killed at any point
    is resumed by running it again.
    """
    for name in (*only, *force):
        if name not in STAGES:
            raise StudyError(f"unknown stage {name!r}; stages are: {', '.join(STAGES)}")
    check_components(config)
    run = RunDir(run_dir_for(config, run_dir)).ensure()
    ctx = StudyContext(config=config, run=run, log=log, progress=progress)
    started = time.perf_counter()
    ran: list[str] = []
    skipped: list[str] = []
    with _run_lock(run):
        freeze_config(config, run)
        for number, stage in enumerate(STAGES, 1):
            head = f"[{number}/{len(STAGES)}] {stage}"
            enabled, why = _enabled(config, stage)
            if not enabled:
                log(f"{head}: off ({why})")
                skipped.append(stage)
                continue
            if only and stage not in only:
                skipped.append(stage)
                continue
            state = run.stage_state()
            digest = stage_digest(ctx, stage, state)
            if digest is None:
                missing = [n for n in _needs(config, stage) if (state.get(n) or {}).get("status") != "done"]
                raise StudyError(
                    f"stage {stage} needs {', '.join(missing)} to be done first; run the study without --only"
                )
            entry = state.get(stage) or {}
            if (
                stage not in force
                and entry.get("status") == "done"
                and entry.get("hash") == digest
                and _outputs_intact(ctx, stage, entry)
            ):
                log(f"{head}: done earlier, inputs unchanged — skipped")
                skipped.append(stage)
                continue
            log(f"{head}: running")
            run.mark_started(stage, digest)
            t0 = time.perf_counter()
            try:
                info = STAGE_RUNNERS[stage](ctx) or {}
            except Exception as exc:
                error = f"{type(exc).__name__}: {exc}" if not isinstance(exc, StudyError) else str(exc)
                _mark_failed(run, stage, digest, error)
                raise StageFailed(stage, error) from exc
            seconds = time.perf_counter() - t0
            run.mark_done(
                stage, digest, outputs=fingerprint(_outputs(ctx, stage), run.root), seconds=seconds, **info
            )
            log(
                f"{head}: done in {_fmt_seconds(seconds)}"
                + (f" — {info['summary']}" if info.get("summary") else "")
            )
            ran.append(stage)
    report = run.report_dir / "index.html"
    return StudyResult(
        run.root, ran, skipped, report if report.exists() else None, time.perf_counter() - started
    )


def _fmt_seconds(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(round(seconds)), 60)
    return f"{minutes}m {secs:02d}s"


# --------------------------------------------------------------------------- stages


def _load_split(spec: SplitConfig, seed: int) -> list[Any]:
    from flopmatch.problems import load

    return load(
        spec.source,
        split=spec.split,
        data_file=spec.data_file,
        limit=spec.limit,
        seed=spec.seed if spec.seed is not None else seed,
    )


def _holdout_rank(seed: int, problem_id: str) -> bytes:
    return hashlib.sha256(f"holdout\x00{seed}\x00{problem_id}".encode()).digest()


def _question_key(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip().lower()


def split_problems(config: StudyConfig) -> dict[str, list[Any]]:
    """Load the sample / validation / test problems, relabel their ``split`` with the role (so the run
    holds ``problems/<role>.parquet``) and refuse overlaps (a test problem seen in training data would
    inflate every fine-tuned score)."""
    from dataclasses import replace

    problems_cfg = config.problems
    sample_spec = problems_cfg.sample
    validation = problems_cfg.validation
    holdout = validation.holdout if validation is not None else None
    if holdout and sample_spec.limit is not None:
        sample_spec = sample_spec.model_copy(update={"limit": sample_spec.limit + holdout})
    sample = _load_split(sample_spec, config.seed)
    out: dict[str, list[Any]] = {}
    if holdout:
        if holdout >= len(sample):
            raise StudyError(
                f"problems.validation.holdout is {holdout} but the sample split has only {len(sample)} problems"
            )
        ranked = sorted(sample, key=lambda p: _holdout_rank(config.seed, p.problem_id))
        held = {p.problem_id for p in ranked[:holdout]}
        out["validation"] = [p for p in sample if p.problem_id in held]
        sample = [p for p in sample if p.problem_id not in held]
    elif validation is not None:
        out["validation"] = _load_split(validation.as_split(), config.seed)
    out["sample"] = sample
    if problems_cfg.test is not None:
        out["test"] = _load_split(problems_cfg.test, config.seed)
    for role, items in out.items():
        if not items:
            raise StudyError(f"problems.{role}: the source returned no problems")
    roles = list(out)
    for i, a in enumerate(roles):
        for b in roles[i + 1 :]:
            ids = {p.problem_id for p in out[a]} & {p.problem_id for p in out[b]}
            texts = {_question_key(p.question) for p in out[a]} & {_question_key(p.question) for p in out[b]}
            if ids or texts:
                raise StudyError(
                    f"problems.{a} and problems.{b} share {max(len(ids), len(texts))} problem(s); "
                    "they must be disjoint (pick other splits, or a validation holdout)"
                )
    return {role: [replace(p, split=role) for p in items] for role, items in out.items()}


def _stage_problems(ctx: StudyContext) -> dict[str, Any]:
    from flopmatch.problems import problems_to_table

    split = split_problems(ctx.config)
    for role in PROBLEM_ROLES:
        path = ctx.run.problems_path(role)
        if role in split:
            write_table(problems_to_table(split[role]), path)
        elif path.exists():
            path.unlink()
    counts = {role: len(items) for role, items in split.items()}
    return {"counts": counts, "summary": ", ".join(f"{n} {r}" for r, n in counts.items())}


def _model_entry(spec: ModelSpec, *, resolve: bool, log: Any) -> dict[str, Any]:
    """Role record: the reference, its run-directory key, where it loads from, and its parameter count."""
    from flopmatch.modelinfo import count_parameters
    from flopmatch.models import resolve_model

    path = spec.model
    if resolve:
        log(f"    preparing {spec.model} …")
        path = str(_toy_model(spec)) if spec.toyworld_spec is not None else resolve_model(spec.model)
    # The name samples are filed under: the reference itself, except for a toy model built from a spec,
    # which nothing else could resolve, so its (cached) directory stands in.
    name = path if spec.toyworld_spec is not None else spec.model
    params, source = _params_offline(spec)
    if params is None:
        count = count_parameters(path)
        params, source = float(count.total), str(count.source)
    return {
        "ref": spec.model,
        "model": name,
        "key": model_key(name),
        "label": spec.display,
        "path": str(path),
        "params": params,
        "params_source": source,
        "backend": spec.backend,
    }


def _toy_model(spec: ModelSpec) -> Path:
    """A toy-world model built from ``spec.toyworld_spec``: pretrained on first use, then cached."""
    from flopmatch.toyworld import ToyModelSpec, ensure_model

    return ensure_model(model_key(spec.model), spec=ToyModelSpec(**(spec.toyworld_spec or {})))  # type: ignore[arg-type]


def _stage_plan(ctx: StudyContext) -> dict[str, Any]:
    from flopmatch.budget import plan_budgets, plan_for_models

    config = ctx.config
    roles = {
        "wc": _model_entry(config.models.wc, resolve=True, log=ctx.log),
        "se": _model_entry(config.models.se, resolve=True, log=ctx.log),
    }
    student = config.paradigms.student
    if student is not None and config.training.enabled and config.paradigms.knowledge_distillation:
        roles["student"] = _model_entry(student, resolve=True, log=ctx.log)
    n_problems = len(ctx.problems("sample"))
    options = dict(config.budget.options)
    if config.budget.mode == "price":
        options.setdefault("wc_price", config.models.wc.price_per_token)
        options.setdefault("se_price", config.models.se.price_per_token)
    common = dict(
        mode=config.budget.mode, wc_params=roles["wc"]["params"], se_params=roles["se"]["params"],
        rounding=config.budget.rounding, n_problems=n_problems,
    )  # fmt: skip
    if "ledger" in options:  # measured mode from a calibration run's ledger
        plan = plan_for_models(roles["wc"]["model"], roles["se"]["model"], config.budget.se_samples, **common,
                               **options)  # fmt: skip
    else:
        plan = plan_budgets(
            se_samples=config.budget.se_samples, wc_name=roles["wc"]["model"], se_name=roles["se"]["model"],
            wc_param_source=roles["wc"]["params_source"], se_param_source=roles["se"]["params_source"],
            **common, **options,
        )  # fmt: skip
    plan.save(ctx.run)
    write_json(roles, ctx.run.root / ROLES_FILE)
    pairs = ", ".join(f"SE {b.se_samples} vs WC {b.wc_samples}" for b in plan.budgets)
    return {"summary": f"ratio {plan.ratio:.2f}: {pairs} per problem"}


def _stage_sample(ctx: StudyContext) -> dict[str, Any]:
    from flopmatch.backends.base import SamplingParams
    from flopmatch.sampling import SamplingConfigMismatch, sample

    config = ctx.config
    problems = ctx.problems("sample")
    counts = {"wc": max(w for _, w in ctx.budgets()), "se": max(s for s, _ in ctx.budgets())}
    roles = ctx.roles()
    prompt = (
        _prompt_config(config, problems[0].dataset) if config.sampling.prompt else None
    )  # None: per dataset
    params = SamplingParams(
        temperature=config.sampling.temperature,
        top_p=config.sampling.top_p,
        max_tokens=config.sampling.max_tokens,
        stop=tuple(config.sampling.stop),
    )
    done: dict[str, Any] = {}
    for role in ("wc", "se"):
        spec: ModelSpec = getattr(config.models, role)
        ctx.log(
            f"    {role.upper()} {spec.display}: {len(problems)} problems × {counts[role]} samples ({spec.backend})"
        )
        try:
            summary = sample(
                ctx.run.root,
                model=roles[role]["model"],
                problems=problems,
                samples_per_problem=counts[role],
                backend=spec.backend,
                backend_options=dict(spec.backend_options),
                params=params,
                prompt=prompt,
                budget_seconds=config.sampling.budget_seconds,
                replicas=config.sampling.replicas,
                ray_address=config.sampling.ray_address,
                params_count=int(roles[role]["params"]),
                progress=ctx.progress,
            )
        except SamplingConfigMismatch as exc:
            raise StudyError(
                f"{exc}\nThe samples already in {ctx.run.samples_dir(roles[role]['model'])} were drawn with other "
                "sampling settings; study them in a new run directory (--run), or delete that folder to redraw"
            ) from exc
        if summary.status != "done":
            raise StudyError(
                f"sampling {roles[role]['model']} ended with status {summary.status!r}: {summary.message}; "
                "rerun the study to continue"
            )
        done[role] = {
            "generated": summary.generated,
            "on_disk": summary.on_disk,
            "seconds": summary.seconds,
            "tokens_per_second": summary.tokens_per_second,
        }
    return {
        "models": done,
        "summary": ", ".join(f"{r.upper()} {d['on_disk']} samples" for r, d in done.items()),
    }


def _prompt_config(config: StudyConfig, dataset: str) -> Any:
    """The dataset's default prompt, with the study's ``sampling.prompt`` overrides."""
    from flopmatch.prompts import PromptConfig, default_prompt_config

    base = default_prompt_config(dataset)
    if not config.sampling.prompt:
        return base
    return PromptConfig.model_validate({**base.model_dump(), **config.sampling.prompt})


def _stage_grade(ctx: StudyContext) -> dict[str, Any]:
    from flopmatch.grading import grade_run

    written = grade_run(
        ctx.run.root,
        workers=ctx.config.grading.workers,
        timeout=ctx.config.grading.timeout,
        progress=ctx.progress,
    )
    parts = []
    for key, path in sorted(written.items()):
        status = read_table(path, columns=["status"]).column("status").to_pylist()
        parts.append(f"{_role_label(ctx, key)} {status.count('correct')}/{len(status)} correct")
    return {"summary": ", ".join(parts)}


def _role_label(ctx: StudyContext, model: str) -> str:
    """ "WC"/"SE" for a model name or key of this run (the name itself for anything else)."""
    roles = read_json(ctx.run.root / ROLES_FILE) if (ctx.run.root / ROLES_FILE).exists() else {}
    for role in ("wc", "se"):
        info = roles.get(role) or {}
        if model in (info.get("model"), info.get("key")) or model_key(model) == info.get("key"):
            return role.upper()
    return model_key(model)


def _stage_judge(ctx: StudyContext) -> dict[str, Any]:
    from flopmatch.judge import judge_run, make_judge

    judge = make_judge(ctx.config.judge.spec)
    try:
        stats = judge_run(ctx.run.root, judge, per_model=ctx.config.judge.per_model, seed=ctx.config.seed)
    finally:
        judge.close()
    parts = [
        f"{_role_label(ctx, m)} FPR {s.fpr.fpr * 100:.1f}% of {s.fpr.n} judged"
        if s.fpr.n
        else f"{_role_label(ctx, m)}: no answer-correct solution to judge"
        for m, s in stats.items()
    ]
    return {"summary": ", ".join(parts)}


def _stage_analyze(ctx: StudyContext) -> dict[str, Any]:
    from flopmatch.analysis import analyze

    analyze(ctx.run.root, ks=ctx.config.analysis.ks, n_boot=ctx.config.analysis.n_boot, seed=ctx.config.seed)
    return {}


def _stage_sft(ctx: StudyContext) -> dict[str, Any]:
    from flopmatch.sft import build_sft

    config = ctx.config
    roles = ctx.roles()
    built: dict[str, Any] = {}
    for item in sft_sets(config, ctx.budgets()):
        # Budgets resolve through plan.json; the control takes SE's samples per problem from WC.
        control = roles["se"]["model"] if item.kind == "wc_number_matched" else None
        result = build_sft(
            ctx.run,
            source_model=roles[item.role]["model"],
            budget=item.budget,
            number_matched_to=control,
            max_per_problem=config.paradigms.max_per_problem,
            name=item.name,
            seed=config.seed,
        )
        if result.samples_per_problem != item.samples_per_problem:
            raise StudyError(
                f"SFT set {item.name}: built from {result.samples_per_problem} samples per problem, the plan says "
                f"{item.samples_per_problem}"
            )
        built[item.name] = {"examples": result.examples, "problems": result.problems_covered}
        ctx.log(f"    {item.name}: {result.examples} examples over {result.problems_covered} problems")
    return {"sets": built, "summary": f"{len(built)} SFT sets"}


def _train_config(config: StudyConfig) -> Any:
    from flopmatch.training import TrainConfig

    options = dict(config.training.options)
    options.setdefault("seed", config.seed)
    if config.training.preset == "tiny-cpu":
        return TrainConfig.tiny_cpu(**options)
    return TrainConfig(**options)


def _stage_train(ctx: StudyContext) -> dict[str, Any]:
    from flopmatch.training import train

    config = ctx.config
    roles = ctx.roles()
    base_cfg = _train_config(config)
    validation = ctx.problems("validation") or None
    results: dict[str, Any] = {}
    jobs = train_jobs(config, ctx.budgets())
    sets = (ctx.run.stage_state().get("sft") or {}).get("sets", {})
    for number, job in enumerate(jobs, 1):
        student = roles[job.student_role]
        train_cfg = base_cfg
        if config.training.steps_per_budget and job.data.budget in config.training.steps_per_budget:
            train_cfg = base_cfg.model_copy(
                update={"max_steps": config.training.steps_per_budget[job.data.budget]}
            )
        if sets.get(job.data.name, {}).get("examples", 1) == 0:
            ctx.log(
                f"    [{number}/{len(jobs)}] {job.name}: skipped, {job.data.name} has no correct solutions"
            )
            results[job.name] = None
            continue
        sub = f"train:{job.name}"
        digest = config_hash(
            {
                "job": job,
                "config": train_cfg,
                "base": student["path"],
                "data": fingerprint([ctx.run.sft_dir(job.data.name)], ctx.run.root),
            }
        )
        out_dir = ctx.run.model_dir(job.name)
        if ctx.run.is_done(sub, digest) and (out_dir / "train_result.json").exists():
            results[job.name] = read_json(ctx.run.root / "state.json")[sub].get("best")
            continue
        ctx.log(f"    [{number}/{len(jobs)}] {job.name}: {student['label']} on {job.data.name}")
        if config.training.launcher == "accelerate":
            _accelerate_train(ctx, ctx.run.sft_dir(job.data.name), student["path"], out_dir, train_cfg)
        # In-process: trains (or, after an accelerate run, finds the finished run) and selects the checkpoint.
        result = train(
            ctx.run.sft_dir(job.data.name),
            base_model=student["path"],
            out_dir=out_dir,
            config=train_cfg,
            validation=validation,
            select_backend=config.evaluation.backend,
            select_max_tokens=config.evaluation.max_tokens or config.sampling.max_tokens,
            select_options=dict(config.evaluation.backend_options),
            overwrite=True,
        )
        best = os.path.relpath(result.best or out_dir, ctx.run.root)  # relative: the run can move
        ctx.run.mark_done(sub, digest, best=best, seconds=result.seconds, loss=result.train_loss)
        results[job.name] = best
    write_json({"jobs": results}, ctx.run.root / "models" / "trained.json")
    trained = sum(1 for v in results.values() if v is not None)
    return {
        "summary": f"{trained} of {len(jobs)} models trained"
        + (" (the rest had no data)" if trained < len(jobs) else "")
    }


def _accelerate_train(
    ctx: StudyContext, data_dir: Path, base_model: str, out_dir: Path, train_cfg: Any
) -> None:
    """One fine-tuning run under ``accelerate launch`` (multi-GPU / DeepSpeed / FSDP). The run's exact
    TrainConfig goes in a file, so the in-process ``train`` call that follows recognises the finished run
    (same config hash) and only selects the checkpoint on the validation problems."""
    import shutil
    import subprocess
    import sys

    config = ctx.config.training
    cfg_path = write_json(train_cfg.model_dump(mode="json"), out_dir.parent / f".{out_dir.name}.train.json")
    launcher = shutil.which("accelerate") or str(Path(sys.executable).with_name("accelerate"))
    command = [launcher, "launch"]
    if config.accelerate_config:
        command += ["--config_file", config.accelerate_config]
    command += [*config.accelerate_args, "-m", "flopmatch.training", "--data", str(data_dir), "--model", base_model,
                "--out", str(out_dir), "--config", str(cfg_path)]  # fmt: skip
    ctx.log("    $ " + " ".join(command))
    completed = subprocess.run(command, check=False)
    if completed.returncode != 0:
        raise StudyError(f"`accelerate launch` exited with {completed.returncode} training {out_dir.name}")


def _stage_eval(ctx: StudyContext) -> dict[str, Any]:
    from flopmatch.evaluation import evaluate

    config = ctx.config
    ev = config.evaluation
    roles = ctx.roles()
    test = ctx.problems("test")
    trained = read_json(ctx.run.root / "models" / "trained.json")["jobs"]
    budgets = dict(ctx.budgets())
    jobs = train_jobs(config, ctx.budgets())
    max_tokens = ev.max_tokens or config.sampling.max_tokens

    def run_eval(name: str, model: str) -> Any:
        # evaluate() reuses a saved result with the same settings and model *path*; a model retrained in
        # place must not reuse it, so each evaluation is keyed here by the model's training record too.
        records = [Path(model) / "train_result.json", Path(model).parent / "train_result.json"]
        record = next((r for r in records if r.exists()), None)
        inside = Path(model).is_relative_to(ctx.run.root)
        sub = f"eval:{name}"
        digest = config_hash(
            {"eval": ev, "max_tokens": max_tokens, "seed": config.seed,
             "model": os.path.relpath(model, ctx.run.root) if inside else model,
             "trained": _file_identity(record) if record else None}
        )  # fmt: skip
        if not ctx.run.is_done(sub, digest):
            for stale in (ctx.run.eval_path(name), ctx.run.eval_path(name).with_suffix(".json")):
                stale.unlink(missing_ok=True)
        result = evaluate(
            model,
            test,
            backend=ev.backend,
            n=ev.n,
            temperature=ev.temperature,
            max_tokens=max_tokens,
            seed=config.seed,
            out_path=ctx.run.eval_path(name),
            backend_options=dict(ev.backend_options),
            progress_desc=f"eval {name}",
        )
        ctx.run.mark_done(sub, digest, metrics=result.metrics)
        return result

    rows: list[dict[str, Any]] = []
    baselines: dict[str, Any] = {}
    if ev.baselines:
        for student_role in dict.fromkeys(j.student_role for j in jobs):
            ctx.log(f"    base {roles[student_role]['label']} (before fine-tuning)")
            baselines[student_role] = run_eval(f"base-{student_role}", roles[student_role]["path"])
    for number, job in enumerate(jobs, 1):
        if trained.get(job.name) is None:
            ctx.log(f"    [{number}/{len(jobs)}] {job.name}: not trained (no data), not evaluated")
            continue
        ctx.log(f"    [{number}/{len(jobs)}] {job.name}")
        result = run_eval(job.name, str(ctx.run.root / trained[job.name]))
        rows += _eval_rows(
            job.paradigm,
            job.data.budget,
            budgets[job.data.budget],
            roles[job.student_role]["label"],
            job.data.kind,
            job.name,
            result,
        )
    done_pairs = {(j.paradigm, j.data.budget, j.student_role) for j in jobs}
    for paradigm, budget, student_role in sorted(done_pairs):
        if student_role in baselines:
            rows += _eval_rows(
                paradigm,
                budget,
                budgets[budget],
                roles[student_role]["label"],
                "base",
                f"base-{student_role}",
                baselines[student_role],
            )
    write_table(rows, ctx.run.metrics_dir / "paradigms.parquet")
    evaluated = sum(1 for j in jobs if trained.get(j.name) is not None)
    return {"summary": f"{evaluated} fine-tuned + {len(baselines)} base models on {len(test)} test problems"}


def _eval_rows(
    paradigm: str, budget: int, wc_samples: int, student: str, data: str, name: str, result: Any
) -> list[dict[str, Any]]:
    out = []
    for metric, value in sorted(result.metrics.items()):
        low, high = result.intervals.get(metric, (float("nan"), float("nan")))
        out.append(
            {
                "paradigm": paradigm,
                "budget_se_samples": int(budget),
                "wc_samples": int(wc_samples),
                "student": student,
                "data": data,
                "model_name": name,
                "metric": metric,
                "value": float(value),
                "ci_low": float(low),
                "ci_high": float(high),
                "n_problems": int(result.problems),
            }
        )
    return out


def _stage_report(ctx: StudyContext) -> dict[str, Any]:
    from flopmatch.report import build_report

    paths = build_report(ctx.run.root)
    return {"summary": str(paths.html)}


STAGE_RUNNERS = {
    "problems": _stage_problems,
    "plan": _stage_plan,
    "sample": _stage_sample,
    "grade": _stage_grade,
    "judge": _stage_judge,
    "analyze": _stage_analyze,
    "sft": _stage_sft,
    "train": _stage_train,
    "eval": _stage_eval,
    "report": _stage_report,
}


# --------------------------------------------------------------------------- dry run

#: Problems per source split, for cost estimates when a source cannot be read offline.
KNOWN_SIZES: dict[tuple[str, str], int] = {
    ("gsm8k", "train"): 7473,
    ("gsm8k", "test"): 1319,
    ("math", "train"): 7500,
    ("math", "test"): 5000,
    ("math500", "test"): 500,
    ("math-offline", "train"): 4500,
    ("math-offline", "test"): 500,
}


@dataclass
class DryRun:
    """What ``--dry-run`` prints: the plan and what the study would cost, with where each number came from."""

    config: StudyConfig
    run_dir: Path
    problems: dict[str, tuple[int | None, str]]  # role -> (count, how it was found)
    params: dict[str, tuple[float | None, str]]  # role -> (count, source)
    plan: Any | None
    plan_error: str | None
    costs: list[dict[str, Any]]
    jobs: list[TrainJob]
    evals: int
    stages: list[StageStatus] | None
    warnings: list[str] = field(default_factory=list)


def _count_split(spec: SplitConfig, seed: int) -> tuple[int | None, str]:
    """Problems in a split: loaded when that is cheap and offline (local files, the toy world), else
    the source's known size, capped by ``limit``."""
    if spec.data_file is not None or spec.source == "toyworld":
        try:
            return len(_load_split(spec, seed)), "counted"
        except Exception as exc:  # noqa: BLE001 - a dry run reports, the real run fails loudly
            return None, f"cannot load: {exc}"
    size = KNOWN_SIZES.get((spec.source, spec.split or "test"))
    if size is None:
        return spec.limit, "limit" if spec.limit else "unknown size"
    return (min(size, spec.limit) if spec.limit else size), "known dataset size"


def _params_offline(spec: ModelSpec) -> tuple[float | None, str]:
    """A parameter count without downloading or training anything: the override, the registry's
    nominal count (for the offline Qwen pair the upstream models' count, tied embeddings once — their
    GGUFs store an untied copy of the head, which would inflate P by a quarter), or a local config/GGUF.
    The plan stage uses the same rule, so ``--dry-run`` shows the plan the study will run."""
    if spec.params:
        return spec.params, "given in the study config"
    if spec.toyworld_spec is not None:
        from flopmatch.toyworld import ToyModelSpec

        return float(ToyModelSpec(**spec.toyworld_spec).n_params), "toy model spec"
    try:
        from flopmatch.models import REGISTRY

        entry = REGISTRY.get(spec.model)
    except ImportError:
        entry = None
    if entry is not None and entry.parameters:
        return float(entry.parameters), f"registry ({entry.upstream})"
    if entry is not None and entry.toyworld_kind is not None:
        from flopmatch.toyworld import PARAMS

        return float(PARAMS[entry.toyworld_kind]), "toy model spec"
    if entry is not None:
        return None, "read from the model after it is prepared (not known before)"
    if Path(spec.model).expanduser().exists():
        from flopmatch.modelinfo import count_parameters

        count = count_parameters(spec.model)
        return float(count.total), str(count.source)
    return None, f"hub id: read at run time (offline: set models.<role>.params for {spec.model})"


def dry_run(config: StudyConfig, run_dir: str | Path | None = None) -> DryRun:
    """Validate what can be validated without running anything, plan the budgets and estimate cost.

    Sampling cost is an upper bound: every solution at ``sampling.max_tokens`` generated tokens (the
    ledger of an earlier run of this study, when there is one, gives measured mean lengths instead).
    """
    from flopmatch.budget import BudgetError, plan_budgets

    check_components(config)
    root = run_dir_for(config, run_dir)
    problems: dict[str, tuple[int | None, str]] = {}
    sample_count = _count_split(config.problems.sample, config.seed)
    validation = config.problems.validation
    if validation is not None and validation.holdout:
        problems["sample"] = sample_count
        problems["validation"] = (validation.holdout, "held out from the sample split")
    else:
        problems["sample"] = sample_count
        if validation is not None:
            problems["validation"] = _count_split(validation.as_split(), config.seed)
    if config.problems.test is not None:
        problems["test"] = _count_split(config.problems.test, config.seed)
    params = {"wc": _params_offline(config.models.wc), "se": _params_offline(config.models.se)}
    if config.paradigms.student is not None and config.training.enabled:
        params["student"] = _params_offline(config.paradigms.student)
    plan, plan_error = None, None
    try:
        options = dict(config.budget.options)
        options.pop("ledger", None)
        if config.budget.mode == "price":
            options.setdefault("wc_price", config.models.wc.price_per_token)
            options.setdefault("se_price", config.models.se.price_per_token)
        plan = plan_budgets(
            mode=config.budget.mode, se_samples=config.budget.se_samples, wc_params=params["wc"][0],
            se_params=params["se"][0], rounding=config.budget.rounding, n_problems=problems["sample"][0],
            wc_name=config.models.wc.model, se_name=config.models.se.model, **options,
        )  # fmt: skip
    except (BudgetError, TypeError, ValueError) as exc:
        plan_error = str(exc)
    costs = []
    n = problems["sample"][0]
    if plan is not None and n:
        mean_tokens = _ledger_mean_tokens(RunDir(root), config)
        for role in ("wc", "se"):
            spec: ModelSpec = getattr(config.models, role)
            per_problem = max(int(getattr(b, f"{role}_samples")) for b in plan.budgets)
            tokens, basis = mean_tokens.get(
                role, (config.sampling.max_tokens, "upper bound: max_tokens each")
            )
            samples = n * per_problem
            p = params[role][0]
            costs.append({"role": role, "model": spec.display, "samples": samples, "tokens": samples * tokens,
                          "flops": 2 * p * samples * tokens if p else None, "basis": basis})  # fmt: skip
    jobs = train_jobs(config, [(b.se_samples, b.wc_samples) for b in plan.budgets]) if plan else []
    jobs = jobs if config.training.enabled else []
    students = {j.student_role for j in jobs}
    evals = len(jobs) + (len(students) if config.evaluation.baselines else 0)
    stages = None
    if RunDir(root).study_path.exists():
        stages = study_status(StudyContext(config=config, run=RunDir(root), log=lambda _: None))
    warnings = []
    accelerate_config = config.training.accelerate_config
    if config.training.enabled and accelerate_config and not Path(accelerate_config).exists():
        warnings.append(f"training.accelerate_config {accelerate_config} does not exist (yet)")
    for role, spec in (("sample", config.problems.sample), ("test", config.problems.test)):
        if spec is not None and spec.data_file and not Path(spec.data_file).exists():
            warnings.append(f"problems.{role}.data_file {spec.data_file} does not exist")
    return DryRun(config, root, problems, params, plan, plan_error, costs, jobs, evals, stages, warnings)


def _ledger_mean_tokens(run: RunDir, config: StudyConfig) -> dict[str, tuple[float, str]]:
    if not run.ledger_path.exists():
        return {}
    try:
        from flopmatch.ledger import summarize_ledger

        frame = summarize_ledger(run.root)
    except Exception:  # noqa: BLE001 - an unreadable ledger only loses the refinement
        return {}
    out = {}
    for role in ("wc", "se"):
        key = model_key(getattr(config.models, role).model)
        rows = (
            frame[frame["model"].map(lambda m: model_key(str(m))) == key] if "model" in frame else frame[:0]
        )
        if len(rows) and float(rows["samples"].sum()) > 0:
            mean = float(rows["completion_tokens"].sum()) / float(rows["samples"].sum())
            out[role] = (mean, "measured mean length (this run's ledger)")
    return out


def demo_config(overrides: Sequence[str] = ()) -> StudyConfig:
    """The packaged copy of ``examples/toyworld.yaml`` (works from an installed wheel), with
    ``KEY=VALUE`` overrides applied as ``flopmatch study --set`` does."""
    from importlib.resources import as_file, files

    with as_file(files("flopmatch").joinpath("configs/toyworld.yaml")) as path:
        return load_study_config(path, overrides)
