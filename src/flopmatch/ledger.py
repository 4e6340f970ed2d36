"""The cost ledger: what sampling actually cost, per model, in tokens, wall seconds and nominal FLOPs.

The paper matches budgets on *nominal* FLOPs: generating W tokens with a P-parameter model costs
2·P·W (section "Compute-matched sampling"). The ledger records that number next to what the run
measured (wall seconds, tokens/s), so the report can show where nominal and measured cost disagree
and the planner's ``measured`` mode can price a model by seconds per sample instead.

Storage: ``RunDir.ledger_path`` (``ledger.parquet``) is a *directory* of Parquet shards, one shard
per sampling session (``part-<start ns>-<session id>.parquet``, one row). pandas, pyarrow, polars,
DuckDB and ``datasets`` all read a directory of Parquet files as one table. A session rewrites its
own shard atomically after every persisted batch of samples, so the ledger is append-only across
sessions (no session ever touches another's file) and a killed session leaves its last state with
``status == "running"``. The next session of the same model repairs such a row from the samples
on disk (each sample row carries its ``session_id``), so token counts are exact even after SIGKILL;
only the wall time since the last persisted batch is lost.

Conventions:

- ``nominal_flops = 2 · params · completion_tokens`` (the paper's 2·P·W; generated tokens only).
- ``prompt_flops  = 2 · params · prompt_tokens`` (reported separately; prefill is cheaper per token
  and prefix caching shares it across the samples of one prompt, so the paper leaves it out).
- ``seconds`` is the wall time spent generating (first request sent → last batch persisted);
  ``startup_seconds`` is the engine start-up before that (loading, compiling), kept apart so that
  small runs do not look slow per sample.
- ``truncated`` counts samples with ``finish_reason == "length"``; ``errors`` counts samples an
  engine failed to produce (not persisted; a rerun retries them).
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from flopmatch.errors import FlopmatchError
from flopmatch.store import RunDir, model_key, shard_paths, write_table
from flopmatch.store.schemas import LEDGER_SCHEMA

FLOPS_CONVENTION = "nominal_flops = 2 * params * completion_tokens (paper: 2·P·W, generated tokens)"

STATUSES = ("running", "done", "budget", "incomplete", "interrupted", "failed", "killed")


def nominal_flops(params: int | None, tokens: int) -> float | None:
    """2·P·tokens, or None when the parameter count is unknown."""
    if params is None:
        return None
    return 2.0 * float(params) * float(tokens)


class LedgerError(FlopmatchError, ValueError):
    """A ledger row with a status the ledger does not know."""


class LedgerInTheWay(FlopmatchError, FileExistsError):
    """A file sits where the run keeps its ledger directory."""


@dataclass
class LedgerSession:
    """The running account of one sampling session; ``flush`` writes it as its ledger shard."""

    run_dir: Path
    model: str
    backend: str
    seeding: str
    replicas: int = 1
    params: int | None = None
    session_id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    status: str = "running"
    samples: int = 0
    errors: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    truncated: int = 0
    seconds: float = 0.0
    startup_seconds: float = 0.0
    started_at: float = field(default_factory=time.time)

    @property
    def path(self) -> Path:
        start_ns = int(self.started_at * 1e9)
        return RunDir(self.run_dir).ledger_path / f"part-{start_ns:020d}-{self.session_id}.parquet"

    def add(self, *, prompt_tokens: int, completion_tokens: int, truncated: bool) -> None:
        """Account for one persisted sample."""
        self.samples += 1
        self.prompt_tokens += int(prompt_tokens)
        self.completion_tokens += int(completion_tokens)
        self.truncated += int(bool(truncated))

    def row(self) -> dict[str, Any]:
        return ledger_row(
            session_id=self.session_id,
            model=self.model,
            backend=self.backend,
            seeding=self.seeding,
            replicas=self.replicas,
            status=self.status,
            samples=self.samples,
            errors=self.errors,
            prompt_tokens=self.prompt_tokens,
            completion_tokens=self.completion_tokens,
            truncated=self.truncated,
            seconds=self.seconds,
            startup_seconds=self.startup_seconds,
            params=self.params,
            started_at=self.started_at,
        )

    def flush(self, status: str | None = None) -> Path:
        """Write this session's shard (atomically replacing its previous version)."""
        if status is not None:
            if status not in STATUSES:
                raise LedgerError(f"unknown ledger status {status!r}; expected one of {STATUSES}")
            self.status = status
        ledger_dir = RunDir(self.run_dir).ledger_path
        if ledger_dir.exists() and not ledger_dir.is_dir():
            raise LedgerInTheWay(
                f"{ledger_dir} is a file; flopmatch keeps the ledger as a directory of per-session "
                "shards. Move that file away and rerun."
            )
        return write_table(pa.Table.from_pylist([self.row()], schema=LEDGER_SCHEMA), self.path)


def ledger_row(
    *,
    session_id: str,
    model: str,
    backend: str,
    seeding: str,
    replicas: int,
    status: str,
    samples: int,
    errors: int,
    prompt_tokens: int,
    completion_tokens: int,
    truncated: int,
    seconds: float,
    startup_seconds: float,
    params: int | None,
    started_at: float,
    updated_at: float | None = None,
) -> dict[str, Any]:
    """One ledger row (pure: FLOPs are derived here so the convention lives in one place)."""
    return {
        "session_id": session_id,
        "model": model,
        "model_key": model_key(model),
        "backend": backend,
        "seeding": seeding,
        "replicas": int(replicas),
        "status": status,
        "samples": int(samples),
        "errors": int(errors),
        "prompt_tokens": int(prompt_tokens),
        "completion_tokens": int(completion_tokens),
        "truncated": int(truncated),
        "seconds": float(seconds),
        "startup_seconds": float(startup_seconds),
        "params": None if params is None else int(params),
        "nominal_flops": nominal_flops(params, completion_tokens),
        "prompt_flops": nominal_flops(params, prompt_tokens),
        "started_at": datetime.fromtimestamp(started_at, tz=UTC),
        "updated_at": datetime.fromtimestamp(time.time() if updated_at is None else updated_at, tz=UTC),
    }


# --------------------------------------------------------------------------- reading


def read_ledger(run_dir: str | Path) -> pa.Table:
    """Every session row of a run (empty table with the ledger schema when nothing was sampled)."""
    path = RunDir(run_dir).ledger_path
    if path.is_file():  # a single-file ledger written by hand or by another tool
        tables = [pq.read_table(path)]
    else:
        tables = [pq.read_table(p) for p in shard_paths(path)]
    if not tables:
        return LEDGER_SCHEMA.empty_table()
    table = pa.concat_tables(tables, promote_options="default")
    missing = [f.name for f in LEDGER_SCHEMA if f.name not in table.column_names]
    for name in missing:
        table = table.append_column(
            LEDGER_SCHEMA.field(name), pa.nulls(table.num_rows, LEDGER_SCHEMA.field(name).type)
        )
    return table.select(LEDGER_SCHEMA.names)


def model_spend(run_dir: str | Path, model: str) -> dict[str, float]:
    """Totals already recorded for one model (all sessions): samples, tokens, seconds."""
    table = read_ledger(run_dir)
    table = table.filter(pc.equal(table.column("model_key"), model_key(model)))
    out: dict[str, float] = {}
    for name in ("samples", "prompt_tokens", "completion_tokens", "seconds", "startup_seconds"):
        total = pc.sum(table.column(name)).as_py() if table.num_rows else 0
        out[name] = total or 0
    return out


def summarize_ledger(run_dir: str | Path):
    """Per-model totals over all sessions, with measured throughput.

    Columns: model, backend, seeding, sessions, samples, errors, prompt_tokens, completion_tokens,
    truncated, truncated_frac, seconds, startup_seconds, params, nominal_flops, prompt_flops,
    tokens_per_second (completion tokens per generation second), samples_per_second,
    seconds_per_sample, flops_per_sample. Rows are sorted by model; an empty run gives an empty frame
    with these columns. ``backend``/``seeding`` join distinct values with "+" when sessions differed.
    """
    import pandas as pd

    columns = [
        "model", "backend", "seeding", "sessions", "samples", "errors", "prompt_tokens",
        "completion_tokens", "truncated", "truncated_frac", "seconds", "startup_seconds", "params",
        "nominal_flops", "prompt_flops", "tokens_per_second", "samples_per_second",
        "seconds_per_sample", "flops_per_sample",
    ]  # fmt: skip
    frame = read_ledger(run_dir).to_pandas()
    if frame.empty:
        return pd.DataFrame(columns=columns)

    def joined(values: pd.Series) -> str:
        return "+".join(sorted({str(v) for v in values.dropna()}))

    def params_of(values: pd.Series):
        known = values.dropna()
        return int(known.iloc[-1]) if len(known) else None

    grouped = frame.sort_values("started_at").groupby("model_key", sort=True)
    summary = grouped.agg(
        model=("model", "last"),
        backend=("backend", joined),
        seeding=("seeding", joined),
        sessions=("session_id", "count"),
        samples=("samples", "sum"),
        errors=("errors", "sum"),
        prompt_tokens=("prompt_tokens", "sum"),
        completion_tokens=("completion_tokens", "sum"),
        truncated=("truncated", "sum"),
        seconds=("seconds", "sum"),
        startup_seconds=("startup_seconds", "sum"),
        params=("params", params_of),
        nominal_flops=("nominal_flops", lambda s: s.sum(min_count=1)),
        prompt_flops=("prompt_flops", lambda s: s.sum(min_count=1)),
    ).reset_index(drop=True)
    samples = summary["samples"].where(summary["samples"] > 0)
    seconds = summary["seconds"].where(summary["seconds"] > 0)
    summary["truncated_frac"] = summary["truncated"] / samples
    summary["tokens_per_second"] = summary["completion_tokens"] / seconds
    summary["samples_per_second"] = summary["samples"] / seconds
    summary["seconds_per_sample"] = summary["seconds"] / samples
    summary["flops_per_sample"] = summary["nominal_flops"] / samples
    return summary[columns]


# --------------------------------------------------------------------------- repair after a kill


def reconcile(
    run_dir: str | Path, model: str, samples: pa.Table, *, exclude_session: str | None = None
) -> int:
    """Repair the ledger rows of killed sessions of ``model`` from the samples they persisted.

    A session that died (SIGKILL, power loss) left its shard with ``status == "running"`` and the
    counts of its last flush; its sample rows (``session_id`` column) are the truth. Rewrites those
    shards with exact samples/tokens/truncated counts and ``status = "killed"``; wall seconds become
    the larger of the recorded value and the sum of the samples' attributed seconds. Call only while
    holding the model's sampling lock (no live session of this model). Returns the rows repaired.
    """
    run = RunDir(run_dir)
    paths = shard_paths(run.ledger_path) if run.ledger_path.is_dir() else []
    if not paths:
        return 0
    per_session: dict[str, dict[str, float]] = {}
    if samples.num_rows and "session_id" in samples.column_names:
        for row in samples.select(
            [c for c in ("session_id", "prompt_tokens", "completion_tokens", "finish_reason", "seconds")]
        ).to_pylist():
            acc = per_session.setdefault(
                row["session_id"],
                {"samples": 0, "prompt_tokens": 0, "completion_tokens": 0, "truncated": 0, "seconds": 0.0},
            )
            acc["samples"] += 1
            acc["prompt_tokens"] += row["prompt_tokens"] or 0
            acc["completion_tokens"] += row["completion_tokens"] or 0
            acc["truncated"] += int(row["finish_reason"] == "length")
            acc["seconds"] += row["seconds"] or 0.0
    key = model_key(model)
    repaired = 0
    for path in paths:
        table = pq.read_table(path)
        rows = table.to_pylist()
        if len(rows) != 1:
            continue
        row = rows[0]
        if (
            row.get("model_key") != key
            or row.get("status") != "running"
            or row.get("session_id") == exclude_session
        ):
            continue
        acc = per_session.get(row["session_id"], {})
        fixed = ledger_row(
            session_id=row["session_id"],
            model=row["model"],
            backend=row["backend"],
            seeding=row["seeding"],
            replicas=row["replicas"],
            status="killed",
            samples=int(acc.get("samples", 0)),
            errors=row.get("errors") or 0,
            prompt_tokens=int(acc.get("prompt_tokens", 0)),
            completion_tokens=int(acc.get("completion_tokens", 0)),
            truncated=int(acc.get("truncated", 0)),
            seconds=max(float(row.get("seconds") or 0.0), float(acc.get("seconds", 0.0))),
            startup_seconds=row.get("startup_seconds") or 0.0,
            params=row.get("params"),
            started_at=row["started_at"].timestamp(),
        )
        write_table(pa.Table.from_pylist([fixed], schema=LEDGER_SCHEMA), path)
        repaired += 1
    return repaired
