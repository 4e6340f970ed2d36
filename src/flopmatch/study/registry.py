"""One record per study stage: what it reads of the config, which stages it needs, what it writes, its
version, when it is on, and the function that runs it.

The orchestrator (running a study, digests, ``flopmatch status``) and the dry run read these records;
the report orders its stage table by the same names (``flopmatch.stage_names``). A stage's *digest*,
which decides whether a finished stage is skipped, hashes :meth:`Stage.digest_input`: the stage's name
and version, its config view and the output fingerprints of the stages it needs. Changing what a view
returns, or the version, therefore reruns the stage (and what reads its outputs) in existing runs.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flopmatch.stage_names import STAGE_NAMES
from flopmatch.store import queries
from flopmatch.study.config import StudyConfig
from flopmatch.study.context import PROBLEM_ROLES, StudyContext
from flopmatch.study.pilot import stage_pilot
from flopmatch.study.stages import (
    stage_analyze,
    stage_grade,
    stage_judge,
    stage_plan,
    stage_problems,
    stage_report,
    stage_sample,
)
from flopmatch.study.stages_training import stage_eval, stage_sft, stage_train
from flopmatch.trained import TRAIN_RESULT_FILE


def _always(config: StudyConfig) -> tuple[bool, str]:
    return True, ""


def _nothing(config: StudyConfig) -> tuple[str, ...]:
    return ()


@dataclass(frozen=True)
class Stage:
    """A study stage. ``needs``: the stages whose outputs it reads (for a config); ``config_view``: the part
    of the config it reads (hashed into its digest); ``outputs``: the files and folders it writes
    (fingerprinted when it finishes, so a change on disk is noticed); ``version``: bump it when the stage's
    behaviour changes, so finished runs redo it; ``enabled``: (on?, why not); ``run``: does the work and
    returns what to record in the run's state (``summary`` is printed)."""

    name: str
    run: Callable[[StudyContext], dict[str, Any] | None]
    config_view: Callable[[StudyConfig], Any]
    outputs: Callable[[StudyContext], list[Path]]
    needs: Callable[[StudyConfig], tuple[str, ...]] = _nothing
    enabled: Callable[[StudyConfig], tuple[bool, str]] = _always
    version: int = 1

    def digest_input(self, config: StudyConfig, upstream: Mapping[str, Any]) -> dict[str, Any]:
        """What the stage's digest hashes (``upstream``: each needed stage's output fingerprint)."""
        return {"stage": self.name, "version": self.version, "config": self.config_view(config),
                "upstream": dict(upstream)}  # fmt: skip


# --------------------------------------------------------------------------- when a stage is on


def _advised(config: StudyConfig) -> bool:
    return config.budget.mode == "advised"


def _pilot_on(config: StudyConfig) -> tuple[bool, str]:
    return (True, "") if _advised(config) else (False, "budget.mode is not advised")


def _judge_on(config: StudyConfig) -> tuple[bool, str]:
    return (True, "") if config.judge.enabled else (False, "judge.enabled is false")


def _training_on(config: StudyConfig) -> tuple[bool, str]:
    if not config.training.enabled:
        return False, "training.enabled is false"
    if not config.paradigms.enabled():
        return False, "no paradigm is enabled"
    return True, ""


# --------------------------------------------------------------------------- what each stage reads


def _model_refs(config: StudyConfig) -> dict[str, str]:
    return {"wc": config.models.wc.model, "se": config.models.se.model}


def _problems_view(config: StudyConfig) -> Any:
    return {"problems": config.problems, "seed": config.seed}


def _plan_view(config: StudyConfig) -> Any:
    models = config.models
    return {
        "budget": config.budget.model_dump(mode="json", exclude={"pilot"}),  # the pilot: its own stage
        "models": {
            r: {"model": m.model, "params": m.params, "price": m.price_per_token, "label": m.label}
            for r, m in (("wc", models.wc), ("se", models.se))
        },
        "student": config.paradigms.student.model if config.paradigms.student else None,
    }


def _pilot_view(config: StudyConfig) -> Any:
    return {"budget": config.budget, "models": config.models, "sampling": config.sampling.digest_view(),
            "seed": config.seed}  # fmt: skip


def _sample_view(config: StudyConfig) -> Any:
    return {"models": config.models, "sampling": config.sampling.digest_view(), "seed": config.seed}


def _grade_view(config: StudyConfig) -> Any:
    return {"grading": config.grading}


def _judge_view(config: StudyConfig) -> Any:
    return {"judge": config.judge, "seed": config.seed}


def _analyze_view(config: StudyConfig) -> Any:
    return {"analysis": config.analysis, "seed": config.seed}


def _sft_view(config: StudyConfig) -> Any:
    return {"paradigms": config.paradigms.digest_view(), "models": _model_refs(config), "seed": config.seed}


def _train_view(config: StudyConfig) -> Any:
    return {
        "training": config.training,
        "paradigms": config.paradigms.digest_view(),
        "models": _model_refs(config),
        "evaluation": {
            "backend": config.evaluation.backend,
            "max_tokens": config.evaluation.max_tokens or config.sampling.max_tokens,
        },
        "seed": config.seed,
    }


def _eval_view(config: StudyConfig) -> Any:
    return {"evaluation": config.evaluation, "max_tokens": config.sampling.max_tokens, "seed": config.seed}


def _report_view(config: StudyConfig) -> Any:
    return {"report": 1}


# --------------------------------------------------------------------------- which stages each needs


def _sample_needs(config: StudyConfig) -> tuple[str, ...]:
    return ("problems", "plan") + (("pilot",) if _advised(config) else ())


def _graded_needs(config: StudyConfig) -> tuple[str, ...]:
    """analyze and sft: the plan, the grades and, when it runs, the judge's verdicts."""
    return ("plan", "grade") + (("judge",) if config.judge.enabled else ())


def _analyze_needs(config: StudyConfig) -> tuple[str, ...]:
    """:func:`_graded_needs` and, in advised mode, the pilot: the analysis measures its advice's forecasts."""
    return _graded_needs(config) + (("pilot",) if _advised(config) else ())


def _report_needs(config: StudyConfig) -> tuple[str, ...]:
    return ("plan", "sample", "analyze") + (("eval",) if _training_on(config)[0] else ())


# --------------------------------------------------------------------------- what each stage writes


def _model_keys(ctx: StudyContext) -> list[str]:
    """The run-directory keys of WC and SE (none before the plan stage wrote the roles)."""
    roles = queries.read_roles(ctx.run)
    return [roles[r]["key"] for r in ("wc", "se") if r in roles]


def _problems_outputs(ctx: StudyContext) -> list[Path]:
    return [ctx.run.problems_path(r) for r in PROBLEM_ROLES]


def _plan_outputs(ctx: StudyContext) -> list[Path]:
    return [ctx.run.plan_path, ctx.run.roles_path]


def _pilot_outputs(ctx: StudyContext) -> list[Path]:
    return [ctx.run.advice_path]


def _sample_outputs(ctx: StudyContext) -> list[Path]:
    # and the allocated sets (flopmatch.allocation_study), graded as they are drawn
    return [ctx.run.samples_dir(k) for k in _model_keys(ctx)] + [ctx.run.allocated_dir]


def _grade_outputs(ctx: StudyContext) -> list[Path]:
    return [ctx.run.grades_path(k) for k in _model_keys(ctx)]


def _judge_outputs(ctx: StudyContext) -> list[Path]:
    return [ctx.run.judgments_path(k) for k in _model_keys(ctx)]


def _analyze_outputs(ctx: StudyContext) -> list[Path]:
    return [
        *(ctx.run.metrics_path(name) for name in ("summary", "compute_matched", "coverage_curve")),
        ctx.run.cost_path,
        ctx.run.metrics_path("pilot_vs_measured"),  # advised runs only
    ]


def _sft_outputs(ctx: StudyContext) -> list[Path]:
    return [ctx.run.sft_root]


def _train_outputs(ctx: StudyContext) -> list[Path]:
    # each run's result record changes whenever it is retrained (even into the same directory)
    return [ctx.run.trained_index_path, *sorted(ctx.run.models_root.glob(f"*/{TRAIN_RESULT_FILE}"))]


def _eval_outputs(ctx: StudyContext) -> list[Path]:
    return [ctx.run.metrics_path("paradigms")]


def _report_outputs(ctx: StudyContext) -> list[Path]:
    return [ctx.run.report_dir / "index.html"]


# --------------------------------------------------------------------------- the stages, in order

REGISTRY: tuple[Stage, ...] = (
    Stage("problems", stage_problems, _problems_view, _problems_outputs),
    Stage("plan", stage_plan, _plan_view, _plan_outputs, needs=lambda c: ("problems",), version=2),
    Stage(
        "pilot",
        stage_pilot,
        _pilot_view,
        _pilot_outputs,
        needs=lambda c: ("problems", "plan"),
        enabled=_pilot_on,
    ),
    Stage("sample", stage_sample, _sample_view, _sample_outputs, needs=_sample_needs),
    Stage("grade", stage_grade, _grade_view, _grade_outputs, needs=lambda c: ("sample",)),
    Stage("judge", stage_judge, _judge_view, _judge_outputs, needs=lambda c: ("grade",), enabled=_judge_on),
    # version 2: analyze writes metrics/cost.parquet, which the report reads (runs analysed before redo it).
    # An advised run's analyze also writes metrics/pilot_vs_measured.parquet; it needs the pilot for that, so
    # such runs get a new digest and redo it, while the others' analysis, unchanged, stays done.
    Stage("analyze", stage_analyze, _analyze_view, _analyze_outputs, needs=_analyze_needs, version=2),
    Stage("sft", stage_sft, _sft_view, _sft_outputs, needs=_graded_needs, enabled=_training_on),
    Stage(
        "train",
        stage_train,
        _train_view,
        _train_outputs,
        needs=lambda c: ("problems", "sft"),
        enabled=_training_on,
    ),
    Stage(
        "eval",
        stage_eval,
        _eval_view,
        _eval_outputs,
        needs=lambda c: ("problems", "train"),
        enabled=_training_on,
    ),
    Stage("report", stage_report, _report_view, _report_outputs, needs=_report_needs),
)

if tuple(s.name for s in REGISTRY) != STAGE_NAMES:
    raise RuntimeError(
        f"the stage registry {[s.name for s in REGISTRY]} differs from STAGE_NAMES {STAGE_NAMES}"
    )

_BY_NAME: dict[str, Stage] = {s.name: s for s in REGISTRY}


def get_stage(name: str) -> Stage:
    """The record of stage ``name`` (KeyError for an unknown name)."""
    return _BY_NAME[name]


#: Views kept for the Python API from before the registry: each stage's version and run function.
STAGE_VERSIONS: dict[str, int] = {s.name: s.version for s in REGISTRY}
STAGE_RUNNERS: dict[str, Callable[[StudyContext], dict[str, Any] | None]] = {s.name: s.run for s in REGISTRY}
