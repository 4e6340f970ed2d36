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

from flopmatch.fingerprints import fingerprint
from flopmatch.formatting import fmt_seconds
from flopmatch.stage_names import STAGE_NAMES
from flopmatch.store import RunDir, config_hash, write_text
from flopmatch.study.config import StudyConfig, StudyConfigError, load_study_config
from flopmatch.study.context import StudyContext, StudyError
from flopmatch.study.registry import REGISTRY, Stage, get_stage

#: The stages' names in the order they run (each one's record: ``flopmatch.study.registry``).
STAGES: tuple[str, ...] = STAGE_NAMES


class StageFailed(StudyError):
    """A stage raised; what it finished is kept and the next run of the study retries it."""

    def __init__(self, stage: str, error: str):
        super().__init__(
            f"stage {stage} failed: {error}\n(finished work is kept; fix the cause and rerun the study)"
        )
        self.stage = stage
        self.error = error


# --------------------------------------------------------------------------- stage bookkeeping


@dataclass
class StageStatus:
    name: str
    state: str  # done | stale | pending | running | interrupted | failed | off
    digest: str | None
    info: dict[str, Any] = field(default_factory=dict)
    reason: str = ""


def stage_digest(ctx: StudyContext, name: str, state: Mapping[str, Any] | None = None) -> str | None:
    """The hash a finished stage ``name`` must carry to be skipped: its config and its upstream outputs.
    ``None`` while an upstream stage has not finished (the stage cannot be judged yet)."""
    state = ctx.run.stage_state() if state is None else state
    record = get_stage(name)
    upstream = {}
    for need in record.needs(ctx.config):
        entry = state.get(need)
        if not entry or entry.get("status") != "done" or "outputs" not in entry:
            return None
        upstream[need] = entry["outputs"]
    return config_hash(record.digest_input(ctx.config, upstream))


def study_status(ctx: StudyContext) -> list[StageStatus]:
    """Each stage's state, as ``flopmatch status`` shows it. ``stale``: finished with another config or
    other inputs (it will rerun); ``interrupted``: started and not finished, and no study holds the run."""
    state = ctx.run.stage_state()
    running = _lock_held(ctx.run)
    out: list[StageStatus] = []
    for record in REGISTRY:
        name = record.name
        enabled, why = record.enabled(ctx.config)
        entry = state.get(name) or {}
        if not enabled:
            out.append(StageStatus(name, "off", None, entry, why))
            continue
        digest = stage_digest(ctx, name, state)
        status = entry.get("status")
        info = {k: v for k, v in entry.items() if k not in ("hash", "status")}
        if status == "done":
            if digest is not None and entry.get("hash") == digest and _outputs_intact(ctx, record, entry):
                out.append(StageStatus(name, "done", digest, info))
            else:
                reason = (
                    "outputs changed on disk"
                    if digest is not None and entry.get("hash") == digest
                    else ("config or inputs changed")
                )
                out.append(StageStatus(name, "stale", digest, info, reason))
        elif status == "failed":
            out.append(StageStatus(name, "failed", digest, info, str(entry.get("error", ""))[:300]))
        elif status == "running":
            out.append(
                StageStatus(
                    name,
                    "running" if running else "interrupted",
                    digest,
                    info,
                    "" if running else "started and not finished; the next run resumes it",
                )
            )
        else:
            out.append(StageStatus(name, "pending", digest, info))
    return out


def _outputs_fingerprint(ctx: StudyContext, record: Stage) -> str:
    return fingerprint(record.outputs(ctx), ctx.run.root)


def _outputs_intact(ctx: StudyContext, record: Stage, entry: Mapping[str, Any]) -> bool:
    return entry.get("outputs") == _outputs_fingerprint(ctx, record)


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
    run = RunDir(run_dir_for(config, run_dir)).ensure()
    ctx = StudyContext(config=config, run=run, log=log, progress=progress)
    started = time.perf_counter()
    ran: list[str] = []
    skipped: list[str] = []
    with _run_lock(run):
        freeze_config(config, run)
        for number, record in enumerate(REGISTRY, 1):
            name = record.name
            head = f"[{number}/{len(REGISTRY)}] {name}"
            enabled, why = record.enabled(config)
            if not enabled:
                log(f"{head}: off ({why})")
                skipped.append(name)
                continue
            if only and name not in only:
                skipped.append(name)
                continue
            state = run.stage_state()
            digest = stage_digest(ctx, name, state)
            if digest is None:
                missing = [n for n in record.needs(config) if (state.get(n) or {}).get("status") != "done"]
                raise StudyError(
                    f"stage {name} needs {', '.join(missing)} to be done first; run the study without --only"
                )
            entry = state.get(name) or {}
            if (
                name not in force
                and entry.get("status") == "done"
                and entry.get("hash") == digest
                and _outputs_intact(ctx, record, entry)
            ):
                log(f"{head}: done earlier, inputs unchanged — skipped")
                skipped.append(name)
                continue
            log(f"{head}: running")
            run.mark_started(name, digest)
            t0 = time.perf_counter()
            try:
                info = record.run(ctx) or {}
            except Exception as exc:
                error = f"{type(exc).__name__}: {exc}" if not isinstance(exc, StudyError) else str(exc)
                run.mark_failed(name, digest, error)
                raise StageFailed(name, error) from exc
            seconds = time.perf_counter() - t0
            run.mark_done(name, digest, outputs=_outputs_fingerprint(ctx, record), seconds=seconds, **info)
            log(
                f"{head}: done in {fmt_seconds(seconds)}"
                + (f" — {info['summary']}" if info.get("summary") else "")
            )
            ran.append(name)
    report = run.report_dir / "index.html"
    return StudyResult(
        run.root, ran, skipped, report if report.exists() else None, time.perf_counter() - started
    )
