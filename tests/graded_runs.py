"""Runs made in a test: toy problems with graded samples laid out exactly as a test needs them."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa

from flopmatch import store
from flopmatch.problems import save_problems
from flopmatch.sampling import SAMPLE_SCHEMA
from flopmatch.store import RunDir, write_table
from flopmatch.toyworld import load_problems


def graded_run(root: Path, outcomes: list[list[bool]], model: str = "m") -> tuple[RunDir, list]:
    """A run whose ``model`` has, for toy test problem i, one graded sample per entry of ``outcomes[i]``
    (True: correct), so counts may differ per problem as an allocation policy leaves them."""
    run = RunDir(root).ensure()
    problems = load_problems("test", limit=len(outcomes))
    save_problems(run, problems)
    rows, grades = [], []
    for problem, oks in zip(problems, outcomes, strict=True):
        for idx, ok in enumerate(oks):
            rows.append({"model": model, "problem_id": problem.problem_id, "sample_idx": idx, "seed": idx,
                         "text": f"solution {idx}", "prompt_tokens": 1, "completion_tokens": 10,
                         "finish_reason": "stop", "backend": "hf", "seeding": "per-request", "seconds": 0.1,
                         "session_id": "s"})  # fmt: skip
            grades.append({"model": model, "problem_id": problem.problem_id, "sample_idx": idx,
                           "status": "correct" if ok else "wrong", "extracted": None, "gold": "0", "detail": ""})
    store.append_shard(run.samples_dir(model), pa.Table.from_pylist(rows, schema=SAMPLE_SCHEMA))
    write_table(pa.Table.from_pylist(grades), run.grades_path(model))
    return run, problems
