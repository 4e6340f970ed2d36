"""Who reads the sample shards: a spy on pyarrow's Parquet readers, and a small planned, graded run of two
models on which every stage after grading can run (judge, analysis, SFT, report).

Issue 11's rule for the run data layer: each stage reads sample text at most once (each shard of a
model read with its ``text`` column at most once per stage), and the report reads no sample shard at
all. Every table read in flopmatch ends in ``pyarrow.parquet.read_table`` (the store's readers, and
pandas' ``read_parquet``) or ``read_schema``, so counting their calls on ``samples/**/*.parquet`` counts
the stage's reads, whichever module makes them.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow.parquet as pq

from flopmatch import store
from flopmatch.budget import plan_budgets
from flopmatch.judge.core import JudgeItem, Judgment
from flopmatch.problems import save_problems
from flopmatch.store import RunDir, read_table, write_json, write_table
from flopmatch.toyworld import load_problems
from graded_runs import add_graded_model

WC, SE = "org/weak-1b", "org/strong-3b"


@dataclass
class SampleReads:
    """Reads of the run's sample shards since :func:`spy_sample_reads` (by shard path)."""

    root: Path
    text: Counter = field(default_factory=Counter)  # reads that included the text column
    other: Counter = field(default_factory=Counter)  # reads of other columns, or of the schema only

    def shard(self, source) -> Path | None:
        try:
            path = Path(source).resolve()
        except TypeError:  # a file object or a buffer: not a path of this run
            return None
        return path if path.suffix == ".parquet" and self.root in path.parents else None

    def clear(self) -> None:
        self.text.clear()
        self.other.clear()

    @property
    def most_text_reads_of_a_shard(self) -> int:
        return max(self.text.values(), default=0)


def spy_sample_reads(monkeypatch, run: RunDir) -> SampleReads:
    """Count every ``pq.read_table`` / ``pq.read_schema`` of a shard under ``run``'s ``samples/``."""
    reads = SampleReads((run.root / "samples").resolve())
    real_read_table, real_read_schema = pq.read_table, pq.read_schema

    def read_table(source, *args, **kwargs):
        path = reads.shard(source)
        if path is not None:
            columns = kwargs.get("columns", args[0] if args else None)
            (reads.text if columns is None or "text" in columns else reads.other)[path] += 1
        return real_read_table(source, *args, **kwargs)

    def read_schema(where, *args, **kwargs):
        path = reads.shard(where)
        if path is not None:
            reads.other[path] += 1
        return real_read_schema(where, *args, **kwargs)

    monkeypatch.setattr(pq, "read_table", read_table)
    monkeypatch.setattr(pq, "read_schema", read_schema)
    return reads


def planned_run(root: Path, n_problems: int = 4) -> RunDir:
    """Toy problems; WC with 3 samples per problem and SE with 1 (each in two shards, as a resumed
    sampler leaves them), graded (sample 1 of WC wrong, the rest correct), a plan with one budget
    (se_samples=1: WC 3) and roles.json — what judge, analyze, build-sft and report read. Sample idx of a
    problem reads "solution {idx} of {problem_id}" and took 10 + idx tokens; its gold is the answer."""
    run = RunDir(root).ensure()
    problems = load_problems("test", limit=n_problems)
    save_problems(run, problems)
    for model, outcomes in ((WC, [True, False, True]), (SE, [True])):
        add_graded_model(run, problems, model, [outcomes] * len(problems), shards=2, token_step=1,
                         text="solution {idx} of {problem_id}", gold=None)  # fmt: skip
    plan_budgets(mode="flops", se_samples=[1], wc_params=1e9, se_params=3e9, wc_name=WC, se_name=SE).save(run)
    write_json({"wc": {"model": WC, "key": store.model_key(WC), "params": 1e9},
                "se": {"model": SE, "key": store.model_key(SE), "params": 3e9}}, run.roles_path)  # fmt: skip
    return run


def advised_run(root: Path, objective: str = "coverage") -> RunDir:
    """:func:`planned_run` as a ``budget.mode: advised`` study leaves it: its problems are also the sample
    split, and ``pilot/advice.json`` (as the study's pilot stage writes it, the models named by their pilot
    labels) advises WC alone at the one budget, ranked before SE alone and a mixture (WC 2 + SE 1)."""
    run = planned_run(root)
    write_table(read_table(run.problems_path("test")), run.problems_path("sample"))
    names = {"wc": "WC pilot", "se": "SE pilot"}

    def candidate(samples: dict[str, int], forecast: float) -> dict:
        kind = "model" if sum(k > 0 for k in samples.values()) == 1 else "mixture"
        label = " + ".join(f"{name} x{k}" for name, k in samples.items() if k)
        return {"label": label, "kind": kind, "samples": samples, "forecast": forecast, "low": forecast - 0.2,
                "high": forecast + 0.2}  # fmt: skip

    wc, se = names["wc"], names["se"]
    candidates = [candidate({wc: 3, se: 0}, 0.9), candidate({wc: 0, se: 1}, 0.8), candidate({wc: 2, se: 1}, 1.6)]
    advice = {"candidates": candidates, "decided": True, "models": {wc: {"fpr": 0.25}, se: {"fpr": None}}}
    budget = {"se_samples": 1, "wc_samples": 3, "advice": advice}
    write_json({"objective": objective, "roles": names, "budgets": [budget]}, run.advice_path)
    return run


class AllValidJudge:
    """A judge that calls every solution valid (what it reads, not what it says, is under test)."""

    name = "all-valid"

    def judge(self, items: Sequence[JudgeItem]) -> list[Judgment]:
        return [Judgment("valid", None, "ok") for _ in items]

    def close(self) -> None:
        pass
