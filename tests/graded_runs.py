"""Runs made in a test: toy problems with graded samples laid out exactly as a test needs them."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa

from flopmatch import store
from flopmatch.problems import save_problems
from flopmatch.store import RunDir, write_table
from flopmatch.store.schemas import SAMPLE_SCHEMA
from flopmatch.toyworld import load_problems


def add_graded_model(
    run: RunDir,
    problems: list,
    model: str,
    outcomes: list[list[bool]],
    *,
    shards: int = 1,
    token_step: int = 0,
    text: str = "solution {idx}",
    gold: str | None = "0",
) -> None:
    """``model``'s samples and grades in ``run``: for ``problems[i]`` one sample per entry of
    ``outcomes[i]`` (True: correct), so counts may differ per problem as an allocation policy leaves them.
    Sample ``idx`` reads ``text`` (formatted with ``idx`` and ``problem_id``) and took 10 + ``token_step``
    · idx completion tokens; its grade's gold is ``gold`` (None: the problem's answer). The sample rows go
    into ``shards`` shards in order (several: as a resumed sampler leaves them)."""
    rows, grades = [], []
    for problem, oks in zip(problems, outcomes, strict=True):
        for idx, ok in enumerate(oks):
            rows.append({"model": model, "problem_id": problem.problem_id, "sample_idx": idx, "seed": idx,
                         "text": text.format(idx=idx, problem_id=problem.problem_id), "prompt_tokens": 1,
                         "completion_tokens": 10 + token_step * idx, "finish_reason": "stop", "backend": "hf",
                         "seeding": "per-request", "seconds": 0.1, "session_id": "s"})  # fmt: skip
            grades.append({"model": model, "problem_id": problem.problem_id, "sample_idx": idx,
                           "status": "correct" if ok else "wrong", "extracted": None,
                           "gold": problem.answer if gold is None else gold, "detail": ""})  # fmt: skip
    bounds = [len(rows) * i // shards for i in range(shards + 1)]
    for start, stop in zip(bounds[:-1], bounds[1:], strict=True):
        store.append_shard(
            run.samples_dir(model), pa.Table.from_pylist(rows[start:stop], schema=SAMPLE_SCHEMA)
        )
    write_table(pa.Table.from_pylist(grades), run.grades_path(model))


def graded_run(root: Path, outcomes: list[list[bool]], model: str = "m") -> tuple[RunDir, list]:
    """A run of the first ``len(outcomes)`` toy test problems whose ``model`` has, for problem i, one graded
    sample per entry of ``outcomes[i]`` (:func:`add_graded_model`: text "solution {idx}", 10 tokens each)."""
    run = RunDir(root).ensure()
    problems = load_problems("test", limit=len(outcomes))
    save_problems(run, problems)
    add_graded_model(run, problems, model, outcomes)
    return run, problems
