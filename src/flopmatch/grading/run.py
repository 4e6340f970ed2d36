"""Grade every model's samples in a run directory: ``samples/<model>/`` → ``grades/<model>.parquet``.

The grades table has one row per sample::

    model        str   the model id as sampled (the ``model`` column of the samples)
    problem_id   str
    sample_idx   int64
    status       str   correct | wrong | no_answer | timeout | error
    extracted    str   the normalised final answer (null when none)
    gold         str   the gold answer it was compared with
    detail       str   why, for timeouts, errors and overruled matches ("" otherwise)

A model is skipped when its sample shards, the gold answers and the grader configuration are all
unchanged since it was last graded (job ``grade:<model_key>`` in the run state). When only new
shards arrived, rows already graded by the same grader configuration against the same gold are
kept and only the new samples are graded.
"""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path
from typing import Any

import pyarrow as pa

from flopmatch.errors import FlopmatchError
from flopmatch.grading.core import STATUSES, grade_many
from flopmatch.store import RunDir, config_hash, read_table, shard_paths, write_table
from flopmatch.store.queries import problem_splits, problems_by_role, read_samples
from flopmatch.store.schemas import GRADE_SCHEMA

log = logging.getLogger(__name__)

# Bump when extraction or equivalence rules change: finished grades are then redone.
GRADER_VERSION = "1"

_SAMPLE_COLUMNS = ("problem_id", "sample_idx", "text")


class GoldError(FlopmatchError, ValueError):
    """The run's problems do not give one gold answer per problem (names the file and the row)."""


def grader_config(timeout: float) -> dict[str, Any]:
    """What, besides the inputs, decides a grade: the rules' version and the time limit."""
    return {"grader_version": GRADER_VERSION, "timeout": float(timeout)}


def grade_run(
    run_dir: str | Path, *, workers: int | None = None, timeout: float = 5.0, progress: bool = True
) -> dict[str, Path]:
    """Grade every sampled model of ``run_dir``; returns ``{model_key: grades path}``.

    Gold answers come from every ``problems/<split>.parquet`` of the run; each problem's ``dataset``
    picks the extraction rules. Models already graded with the same inputs and configuration are
    skipped; see the module docstring for incremental re-grading.
    """
    run = RunDir(run_dir)
    models = run.sampled_models()
    if not models:
        return {}
    golds = load_golds(run)
    config = grader_config(timeout)
    grader_hash = config_hash(config)
    golds_hash = config_hash(sorted((pid, list(v)) for pid, v in golds.items()))
    written: dict[str, Path] = {}
    for key in models:
        sample_dir = run.samples_dir(key)
        shards = [p.name for p in shard_paths(sample_dir)]
        digest = config_hash({"grader": config, "shards": shards, "golds": golds_hash})
        job = f"grade:{key}"
        path = run.grades_path(key)
        if run.is_job_done(job, digest) and path.exists():
            log.info("grades of %s are up to date", key)
            written[key] = path
            continue
        previous_grader = run.job_state().get(job, {}).get("grader")
        run.mark_job_started(job, digest)
        table, counts = _grade_model(
            run,
            key,
            sample_dir,
            golds,
            reuse=previous_grader == grader_hash,
            workers=workers,
            timeout=timeout,
            progress=progress,
        )
        write_table(table, path)
        run.mark_job_done(job, digest, grader=grader_hash, rows=table.num_rows, **counts)
        written[key] = path
    return written


def load_golds(run: RunDir) -> dict[str, tuple[str, str]]:
    """``{problem_id: (dataset, gold answer)}`` over every split of the run."""
    splits = problem_splits(run)
    if not splits:
        raise FileNotFoundError(f"{run.problems_dir}: no problem tables to take gold answers from")
    golds: dict[str, tuple[str, str]] = {}
    origin: dict[str, Path] = {}
    for split in splits:
        path = run.problems_path(split)
        try:
            problems = problems_by_role(run, split)
        except (TypeError, KeyError) as exc:
            raise GoldError(f"not a problems table ({exc})", file=path) from exc
        for row, problem in enumerate(problems, 1):
            if problem.answer is None or problem.dataset is None:
                raise GoldError(f"problem {problem.problem_id!r} has no answer or dataset", file=path, row=row)
            value = (problem.dataset, problem.answer)
            if problem.problem_id in golds and golds[problem.problem_id] != value:
                raise GoldError(
                    f"problem {problem.problem_id!r} also in {origin[problem.problem_id]} with a different gold "
                    "answer", file=path, row=row,
                )
            golds[problem.problem_id] = value
            origin[problem.problem_id] = path
    return golds


def _grade_model(
    run: RunDir,
    key: str,
    sample_dir: Path,
    golds: dict[str, tuple[str, str]],
    *,
    reuse: bool,
    workers: int | None,
    timeout: float,
    progress: bool,
) -> tuple[pa.Table, dict[str, int]]:
    samples = read_samples(run, key, None)  # the one read of sample text in grading
    missing = [c for c in _SAMPLE_COLUMNS if c not in samples.column_names]
    if missing:
        raise ValueError(f"{sample_dir}: samples lack column(s) {', '.join(missing)}")
    models = (
        samples.column("model").to_pylist() if "model" in samples.column_names else [key] * samples.num_rows
    )
    rows: dict[tuple[str, int], dict[str, Any]] = {}
    unknown: list[str] = []
    for model, pid, idx, text in zip(
        models, *(samples.column(c).to_pylist() for c in _SAMPLE_COLUMNS), strict=True
    ):
        if pid not in golds:
            unknown.append(pid)
            continue
        rows.setdefault(
            (pid, int(idx)), {"model": model or key, "problem_id": pid, "sample_idx": int(idx), "text": text}
        )
    if unknown:
        raise ValueError(
            f"{sample_dir}: {len(unknown)} sample(s) of problems missing from {run.problems_dir} "
            f"(first: {unknown[0]!r})"
        )
    kept = _reusable(run.grades_path(key), golds) if reuse else {}
    todo = [k for k in rows if k not in kept]
    grades = grade_many(
        [(rows[k]["text"], golds[k[0]][1]) for k in todo],
        dataset=[golds[k[0]][0] for k in todo],
        workers=workers,
        timeout=timeout,
        progress=progress,
    )
    out: list[dict[str, Any]] = []
    fresh = dict(zip(todo, grades, strict=True))
    for k in sorted(rows):
        if k in kept:
            out.append(kept[k])
            continue
        g = fresh[k]
        row = rows[k]
        out.append(
            {
                "model": row["model"],
                "problem_id": row["problem_id"],
                "sample_idx": row["sample_idx"],
                "status": g.status,
                "extracted": g.extracted,
                "gold": golds[k[0]][1],
                "detail": g.detail,
            }
        )
    counts = Counter(r["status"] for r in out)
    info = {
        "regraded": len(todo),
        "reused": len(kept),
        **{s: counts.get(s, 0) for s in STATUSES},
    }
    return pa.Table.from_pylist(out, schema=GRADE_SCHEMA), info


def _reusable(path: Path, golds: dict[str, tuple[str, str]]) -> dict[tuple[str, int], dict[str, Any]]:
    """Rows of an earlier grades table (same grader) whose gold answer is still the gold."""
    if not path.exists():
        return {}
    try:
        table = read_table(path)
    except Exception as exc:  # noqa: BLE001 - an unreadable old table is simply redone
        log.warning("%s: unreadable (%s); regrading everything", path, exc)
        return {}
    if set(GRADE_SCHEMA.names) - set(table.column_names):
        return {}
    kept = {}
    for row in table.select(GRADE_SCHEMA.names).to_pylist():
        gold = golds.get(row["problem_id"])
        if gold is not None and gold[1] == row["gold"]:
            kept[(row["problem_id"], int(row["sample_idx"]))] = row
    return kept
