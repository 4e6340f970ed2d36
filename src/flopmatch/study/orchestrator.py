"""The stage orchestrator: runs the stages in order and skips the ones already done.

Each stage reads what earlier stages wrote into the run directory (``flopmatch.store.RunDir``) and
writes its own outputs there. A stage is skipped when its *digest* is unchanged: the hash of the config
sections it reads plus the fingerprints of its upstream stages' outputs. Editing ``sampling.temperature``
therefore reruns sampling and everything after it, and nothing before; forcing a stage that rewrites
its outputs reruns what depends on them. One study at a time holds a run directory (a file lock).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from flopmatch.formatting import fmt_seconds
from flopmatch.store import RunDir, config_hash, read_json, write_json, write_text
from flopmatch.study.config import StudyConfig, StudyConfigError, load_study_config
from flopmatch.study.context import (
    PROBLEM_ROLES,
    ROLES_FILE,
    StudyContext,
    StudyError,
    fingerprint,
)
from flopmatch.study.stages import STAGE_RUNNERS, study_train_config

STAGES: tuple[str, ...] = (
    "problems",
    "plan",
    "pilot",
    "sample",
    "grade",
    "judge",
    "analyze",
    "sft",
    "train",
    "eval",
    "report",
)


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


# --------------------------------------------------------------------------- stage bookkeeping


@dataclass
class StageStatus:
    name: str
    state: str  # done | stale | pending | running | interrupted | failed | off
    digest: str | None
    info: dict[str, Any] = field(default_factory=dict)
    reason: str = ""


def _enabled(config: StudyConfig, stage: str) -> tuple[bool, str]:
    if stage == "pilot" and config.budget.mode != "advised":
        return False, "budget.mode is not advised"
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
        "pilot": ("problems", "plan"),
        "sample": ("problems", "plan") + (("pilot",) if config.budget.mode == "advised" else ()),
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
                "budget": config.budget.model_dump(mode="json", exclude={"pilot"}),  # the pilot: its own stage
                "models": {
                    r: {"model": m.model, "params": m.params, "price": m.price_per_token, "label": m.label}
                    for r, m in (("wc", models.wc), ("se", models.se))
                },
                "student": config.paradigms.student.model if config.paradigms.student else None,
            }
        case "pilot":
            return {"budget": config.budget, "models": models, "sampling": config.sampling.digest_view(), "seed": config.seed}
        case "sample":
            return {"models": models, "sampling": config.sampling.digest_view(), "seed": config.seed}
        case "grade":
            return {"grading": config.grading}
        case "judge":
            return {"judge": config.judge, "seed": config.seed}
        case "analyze":
            return {"analysis": config.analysis, "seed": config.seed}
        case "sft":
            return {"paradigms": config.paradigms.digest_view(), "models": model_refs, "seed": config.seed}
        case "train":
            return {
                "training": config.training,
                "paradigms": config.paradigms.digest_view(),
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
        case "pilot":
            return [run.root / "pilot" / "advice.json"]
        case "sample":  # and the allocated sets (flopmatch.allocation_study), graded as they are drawn
            return [run.root / "samples" / k for k in keys] + [run.root / "allocated"]
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
            study_train_config(config)
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
                f"{head}: done in {fmt_seconds(seconds)}"
                + (f" — {info['summary']}" if info.get("summary") else "")
            )
            ran.append(stage)
    report = run.report_dir / "index.html"
    return StudyResult(
        run.root, ran, skipped, report if report.exists() else None, time.perf_counter() - started
    )
