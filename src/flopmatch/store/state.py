"""Stage state of a run: ``state.json`` records, per pipeline stage, the hash of the inputs it ran on and
whether it finished; sub-stage jobs (``grade:<model>``, ``train:<job>``, ``eval:<model>``) have their own
section, ``jobs``, so the stage map holds stages only.

    {"sample": {"hash": ..., "status": "done", "finished_at": ...},
     "jobs": {"grade:toyworld-wc": {"hash": ..., "status": "done", ...}}}

Runs written before the ``jobs`` section kept jobs as top-level keys with a ``:`` in the name; they are
read as jobs, and each moves into the section when that job is next recorded.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from flopmatch.store.io import read_json, write_json

JOBS = "jobs"


def _is_job_name(name: str) -> bool:
    return ":" in name


def read_state(path: Path) -> dict[str, Any]:
    """The raw contents of ``state.json`` (empty when the file does not exist)."""
    return read_json(path) if path.exists() else {}


def stages_of(raw: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The stage entries of a raw state: neither the jobs section nor an old run's top-level job keys."""
    return {name: entry for name, entry in raw.items() if name != JOBS and not _is_job_name(name)}


def jobs_of(raw: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The job entries of a raw state: the jobs section over an old run's top-level ``a:b`` keys."""
    legacy = {name: entry for name, entry in raw.items() if _is_job_name(name)}
    return {**legacy, **(raw.get(JOBS) or {})}


def _entry_done(entry: dict[str, Any] | None, digest: str) -> bool:
    return bool(entry and entry.get("hash") == digest and entry.get("status") == "done")


class RunState:
    """Stage and job state of a run directory (mixed into :class:`~flopmatch.store.RunDir`)."""

    state_path: Path

    # stages
    def stage_state(self) -> dict[str, dict[str, Any]]:
        """Each pipeline stage's entry (hash, status, times, what the stage reported); no jobs."""
        return stages_of(read_state(self.state_path))

    def is_done(self, stage: str, config_digest: str) -> bool:
        if _is_job_name(stage):  # a job name from code written before the jobs section
            return self.is_job_done(stage, config_digest)
        return _entry_done(self.stage_state().get(stage), config_digest)

    def mark_done(self, stage: str, config_digest: str, **info: Any) -> None:
        self._set_stage(stage, {"hash": config_digest, "status": "done", "finished_at": time.time(), **info})

    def mark_started(self, stage: str, config_digest: str) -> None:
        self._set_stage(stage, {"hash": config_digest, "status": "running", "started_at": time.time()})

    def mark_failed(self, stage: str, config_digest: str, error: str) -> None:
        """Record that a stage failed (the first 2000 characters of the error are kept)."""
        self._set_stage(stage, {"hash": config_digest, "status": "failed", "error": error[:2000],
                                "failed_at": time.time()})  # fmt: skip

    def clear_stage(self, stage: str) -> None:
        raw = read_state(self.state_path)
        if raw.pop(stage, None) is not None:
            write_json(raw, self.state_path)

    def _set_stage(self, stage: str, entry: dict[str, Any]) -> None:
        raw = read_state(self.state_path)
        raw[stage] = entry
        write_json(raw, self.state_path)

    # sub-stage jobs
    def job_state(self) -> dict[str, dict[str, Any]]:
        """Each sub-stage job's entry (``grade:<model>``, ``train:<job>``, ``eval:<model>``)."""
        return jobs_of(read_state(self.state_path))

    def is_job_done(self, job: str, config_digest: str) -> bool:
        return _entry_done(self.job_state().get(job), config_digest)

    def mark_job_started(self, job: str, config_digest: str) -> None:
        self._set_job(job, {"hash": config_digest, "status": "running", "started_at": time.time()})

    def mark_job_done(self, job: str, config_digest: str, **info: Any) -> None:
        self._set_job(job, {"hash": config_digest, "status": "done", "finished_at": time.time(), **info})

    def clear_job(self, job: str) -> None:
        raw = read_state(self.state_path)
        found = raw.pop(job, None) is not None
        found = (raw.get(JOBS) or {}).pop(job, None) is not None or found
        if found:
            write_json(raw, self.state_path)

    def _set_job(self, job: str, entry: dict[str, Any]) -> None:
        raw = read_state(self.state_path)
        raw.pop(job, None)  # an old run's top-level entry of this job moves into the section
        raw.setdefault(JOBS, {})[job] = entry
        write_json(raw, self.state_path)
