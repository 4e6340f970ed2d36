"""Difficulty-aware allocation: the policies (hand-computed), the budget guard, replay, and the driver.

The driver tests use the toy world's WC model on the ``hf`` backend with ``batch_size=1`` (each sample is
then bit-identical whatever else is generated, so sample sets can be compared exactly) and tiny sizes.
"""

from __future__ import annotations

import json
import math
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from flopmatch import store
from flopmatch.allocation import (
    AllocationConfig,
    BetaPrior,
    PooledSample,
    ProblemState,
    TokenBudget,
    admit,
    affordable,
    guarded_calls,
    next_indices,
    picks_to_items,
    plan_next,
    plan_round,
    round_size,
    simulate,
    tie_key,
)

FLOPMATCH = Path(sys.executable).with_name("flopmatch")


# --------------------------------------------------------------------------- pure policies


def test_uniform_fills_the_fewest_first_and_breaks_ties_by_hash():
    states = [ProblemState("a", 2), ProblemState("b", 0), ProblemState("c", 1)]
    picks = plan_round(states, AllocationConfig(), 3)
    # b (0 samples) first; then b's second and c's first both sit at 1 sample: the hash decides.
    first, second = sorted(["b", "c"], key=tie_key)
    assert picks[0] == ("b", 0)
    assert picks[1:] == [(first, 0 if first == "c" else 1), (second, 0 if second == "c" else 1)]
    assert plan_round(states, AllocationConfig(), 6).count(("a", 0)) == 1  # all level at 3 after 6
    assert sorted(p for p, _ in plan_round(states, AllocationConfig(), 6)) == ["a", "b", "b", "b", "c", "c"]


def test_until_correct_skips_finished_problems_and_respects_the_cap():
    config = AllocationConfig(allocation="until-correct", target_correct=2, max_per_problem=3)
    states = [
        ProblemState("done", 4, 3, 2),  # has 2 distinct correct: finished
        ProblemState("one", 1, 1, 1),  # needs one more
        ProblemState("none", 2, 0, 0),  # needs two, one short of the cap
    ]
    picks = plan_round(states, config, 10)
    assert [p for p, _ in picks] == ["one", "none", "one"]  # water-filling, capped at 3 samples each
    assert round_size(states, config) == 16  # two active problems, at least min_round
    assert round_size([ProblemState("done", 4, 3, 2)], config) == 0


def test_adaptive_coverage_gains_under_a_uniform_prior():
    # Beta(1,1), c = 0: P(the j-th extra sample is the first correct) = (n+1) / ((n+1+j)(n+2+j)).
    # A (n=1): 1/3, 1/6, 1/10; B (n=2): 1/4, 3/20, 1/10; C is covered: only after every uncovered one.
    states = [ProblemState("A", 1), ProblemState("B", 2), ProblemState("C", 3, 1, 1)]
    config = AllocationConfig(allocation="adaptive")
    assert plan_round(states, config, 4, prior=BetaPrior()) == [("A", 0), ("B", 0), ("A", 1), ("B", 1)]
    capped = AllocationConfig(allocation="adaptive", max_per_problem=3)
    # A can take two more, B one, C none: the round is short.
    assert plan_round(states, capped, 5, prior=BetaPrior()) == [("A", 0), ("B", 0), ("A", 1)]
    assert round_size(states, config) == 16 and round_size(states, config.model_copy(update={"min_round": 1})) == 2


def test_adaptive_unique_prefers_the_largest_log_gain():
    # Beta(1,1): E[p] = (c+1)/(n+2); novelty = (u+1)/(c+1); q = E[p]·novelty; gain_j = q·(log(2+u_j) − log(1+u_j)),
    # u_j = u + j·q.  X: n=2 c=2 u=1 -> q = 0.75·2/3 = 0.5, gains 0.5·log(3/2) = 0.203, 0.5·log(3.5/2.5) = 0.168;
    # Y: n=2 c=0 u=0 -> q = 0.25, gains 0.25·log 2 = 0.173, 0.25·log(2.25/1.25) = 0.147;
    # Z: n=4 c=2 u=2 -> q = 0.5, gain 0.5·log(4/3) = 0.144.
    states = [ProblemState("Z", 4, 2, 2), ProblemState("Y", 2, 0, 0), ProblemState("X", 2, 2, 1)]
    config = AllocationConfig(allocation="adaptive", objective="unique")
    assert plan_round(states, config, 4, prior=BetaPrior()) == [("X", 0), ("Y", 0), ("X", 1), ("Y", 1)]
    # Ten correct samples that all read the same: novelty 2/11, so it stops attracting samples.
    stale = [ProblemState("same", 12, 10, 1), ProblemState("Y", 2, 0, 0)]
    assert plan_round(stale, config, 1, prior=BetaPrior()) == [("Y", 0)]


def test_beta_prior_posteriors():
    prior = BetaPrior(2.0, 3.0)
    assert prior.posterior_mean([5], [1])[0] == pytest.approx(3 / 10)
    # E[(1-p)^2 | Beta(3, 7)] = 7·8 / (10·11)
    assert prior.posterior_miss([5], [1], 2)[0] == pytest.approx(56 / 110)


def test_config_validation():
    with pytest.raises(ValueError, match="target_correct applies to until-correct"):
        AllocationConfig(allocation="adaptive", target_correct=3)
    with pytest.raises(ValueError, match="objective applies to adaptive"):
        AllocationConfig(allocation="uniform", objective="unique")
    with pytest.raises(ValueError):
        AllocationConfig(allocation="greedy")
    with pytest.raises(ValueError, match="unique_correct <= correct <= n"):
        ProblemState("p", 1, 2, 0)


def test_budget_helpers():
    assert affordable(1000, 25.0, 100) == 40
    assert affordable(1000, None, 100) == 10  # before any sample: the worst case
    assert affordable(math.inf, 10, 100) > 10**9
    assert admit(8, 450, 100) == 4 and admit(3, 450, 100) == 3 and admit(5, 99, 100) == 0
    assert [list(c) for c in guarded_calls([1, 2, 3, 4, 5], 2)] == [[1, 2], [3, 4], [5]]
    assert next_indices({0, 2}, 3) == [1, 3, 4]
    assert picks_to_items([("a", 0), ("b", 0), ("a", 1)], {"a": {0, 1}}) == [("a", 2), ("b", 0), ("a", 3)]
    budget = TokenBudget(1000, 950)
    assert plan_next([ProblemState("a", 1)], AllocationConfig(), budget, 100, spent_samples=1) == "budget"


# --------------------------------------------------------------------------- replay over a pool


def _pool(seed: int, problems: int = 30, depth: int = 60, max_tokens: int = 50):
    rng = random.Random(seed)
    pool = {}
    for i in range(problems):
        p = rng.choice([0.0, 0.02, 0.1, 0.5, 0.9])
        pool[f"p{i:03d}"] = [
            PooledSample(rng.randint(1, max_tokens), ok := rng.random() < p, f"s{rng.randint(0, 3)}" if ok else None)
            for _ in range(depth)
        ]
    return pool


@pytest.mark.parametrize("allocation", ["uniform", "until-correct", "adaptive"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_replay_never_exceeds_the_budget_and_keeps_prefixes(allocation, seed):
    pool = _pool(seed)
    budget = 30 * 4 * 25  # about four samples per problem
    config = AllocationConfig(allocation=allocation, max_per_problem=40,
                              **({"target_correct": 2} if allocation == "until-correct" else {}))  # fmt: skip
    result = simulate(pool, config, budget_tokens=budget, max_tokens=50, chunk_samples=7)
    assert not result.exhausted
    spent = sum(s.tokens for pid, n in result.counts.items() for s in pool[pid][:n])
    assert spent == result.spent_tokens <= budget
    assert max(result.counts.values()) <= 40
    if result.stop == "budget":
        assert budget - spent < 50  # stopped only when even one worst-case sample no longer fits
    again = simulate(pool, config, budget_tokens=budget, max_tokens=50, chunk_samples=7)
    assert again.counts == result.counts  # deterministic


def test_adaptive_covers_more_than_uniform_at_equal_tokens():
    pool = _pool(3, problems=40, depth=200)
    budget = 40 * 6 * 25
    covered = {}
    for allocation in ("uniform", "adaptive"):
        result = simulate(pool, AllocationConfig(allocation=allocation), budget_tokens=budget, max_tokens=50)
        covered[allocation] = sum(any(s.correct for s in pool[p][:n]) for p, n in result.counts.items())
    assert covered["adaptive"] >= covered["uniform"]


# --------------------------------------------------------------------------- the driver on the toy model

PROBLEMS = 5
MAX_TOKENS = 48


def _command(run: Path, allocation: str, budget: float, *extra: str) -> list[str]:
    more = {"until-correct": ["--target-correct", "2", "--max-per-problem", "6"]}.get(allocation, [])
    return [
        str(FLOPMATCH), "sample", "--run", str(run), "--model", "toyworld-wc", "--problems", "toyworld",
        "--split", "test", "--limit", str(PROBLEMS), "--allocation", allocation, "--budget-flops", f"{budget:.6g}",
        "--backend", "hf", "-o", "batch_size=1", "-o", "device=cpu", "--max-tokens", str(MAX_TOKENS),
        "--chunk-samples", "3", "--no-progress", "--json", *more, *extra,
    ]  # fmt: skip


def _budget() -> float:
    from flopmatch.toyworld import PARAMS

    return float(f"{2.0 * PARAMS['wc'] * 25 * PROBLEMS * 3:.6g}")  # about three samples per problem, as the CLI reads it


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "COLUMNS": "200"}


_HELD_CHILD = """
import os, sys, time
from pathlib import Path
from flopmatch import store
marker, shards, after_round = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
state = {"shards": 0}
append_shard, write_json = store.append_shard, store.write_json

def hold():
    Path(marker).write_text(str(os.getpid()))
    while True:
        time.sleep(60)

def counted_shard(*args, **kwargs):
    out = append_shard(*args, **kwargs)
    state["shards"] += 1
    if state["shards"] == shards:
        hold()
    return out

def journal_write(obj, path):
    out = write_json(obj, path)
    if Path(path).name == "allocation.json" and obj.get("pending") is None and obj.get("rounds") == after_round:
        hold()
    return out

store.append_shard, store.write_json = counted_shard, journal_write
from flopmatch.cli import main
sys.argv = ["flopmatch", *sys.argv[4:]]
main()
"""


def _kill_at(command: list[str], work: Path, *, shards: int = 0, after_round: int = -1) -> None:
    """Run the CLI in a child that holds (forever) after its ``shards``-th shard or once the journal
    records round ``after_round`` finished; SIGKILL its process group there."""
    marker = work / f"held-{time.monotonic_ns()}"
    log = work / "child.log"
    with open(log, "wb") as out:
        child = subprocess.Popen([sys.executable, "-c", _HELD_CHILD, str(marker), str(shards), str(after_round),
                                  *command[1:]], env=_env(), start_new_session=True, stdout=out,
                                 stderr=subprocess.STDOUT)  # fmt: skip
    try:
        deadline = time.monotonic() + 600
        while not marker.exists():
            assert child.poll() is None, f"the child exited before its kill point:\n{log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, "the child never reached its kill point"
            time.sleep(0.05)
    finally:
        os.killpg(child.pid, signal.SIGKILL)
        child.wait()


def _sample_set(run: Path) -> set[tuple[str, int, str]]:
    table = store.read_shards(run / "samples" / "toyworld-wc", columns=["problem_id", "sample_idx", "text"])
    rows = list(zip(*(table.column(c).to_pylist() for c in table.column_names), strict=True))
    assert len(rows) == len(set(rows)), "a sample was stored twice"
    return set(rows)


def _in_process(run: Path, allocation: str, budget: float):
    """The uninterrupted run, through the Python API with the CLI's settings."""
    from flopmatch.allocation_run import sample_allocated
    from flopmatch.backends.base import SamplingParams
    from flopmatch.toyworld import load_problems

    config = AllocationConfig(allocation=allocation, **({"target_correct": 2, "max_per_problem": 6}
                                                        if allocation == "until-correct" else {}))  # fmt: skip
    return sample_allocated(run, model="toyworld-wc", problems=load_problems("test", limit=PROBLEMS), config=config,
                            backend="hf", backend_options={"batch_size": 1, "device": "cpu"},
                            params=SamplingParams(max_tokens=MAX_TOKENS), budget_flops=budget, chunk_samples=3,
                            progress=False)  # fmt: skip


def _run_cli(command: list[str]) -> dict:
    result = subprocess.run(command, env=_env(), capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    [summary] = json.loads(result.stdout)
    return summary


# The kill-and-resume path is the driver's, shared by every policy: the default run checks it on adaptive (the
# policy with the most state to rebuild: posteriors, rounds); `--extended` also runs the other two.
@pytest.mark.parametrize("allocation", [pytest.param("uniform", marks=pytest.mark.extended),
                                        pytest.param("until-correct", marks=pytest.mark.extended), "adaptive"])  # fmt: skip
def test_sigkill_inside_and_between_rounds_resumes_to_the_same_sample_set(tmp_path, allocation):
    from concurrent.futures import ThreadPoolExecutor

    import torch

    budget = _budget()
    run = tmp_path / "killed"
    # The uninterrupted run (in this process) and the killed one (in children) are independent: side by side,
    # one torch thread each, on two cores. The killed run's checks against the whole one's samples wait for it.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with ThreadPoolExecutor(max_workers=1) as pool:
            running = pool.submit(_in_process, tmp_path / "whole", allocation, budget)
            _kill_at(_command(run, allocation, budget), tmp_path, shards=2)  # inside round 1
            inside = len(_sample_set(run))
            _kill_at(_command(run, allocation, budget), tmp_path, after_round=1)  # between rounds 1 and 2
            between = len(_sample_set(run))
            whole = running.result()
    finally:
        torch.set_num_threads(threads)
    assert whole.status in ("budget", "done") and whole.spent_flops <= budget
    counts = {}
    for pid, _, _ in _sample_set(tmp_path / "whole"):
        counts[pid] = counts.get(pid, 0) + 1
    assert whole.per_problem["min"] == min(counts.get(f"toyworld/test/{i}", 0) for i in range(PROBLEMS))
    assert whole.per_problem["max"] == max(counts.values()) == whole.samples_per_problem
    if allocation != "until-correct":
        assert whole.status == "budget" and budget - whole.spent_flops < 2.0 * whole.params * MAX_TOKENS
    expected = _sample_set(tmp_path / "whole")
    per_problem = {}
    for pid, idx, _ in expected:
        per_problem.setdefault(pid, set()).add(idx)
    assert all(indices == set(range(len(indices))) for indices in per_problem.values())  # prefixes

    assert 0 < inside < len(expected)
    assert inside <= between < len(expected)
    resumed = _run_cli(_command(run, allocation, budget))
    assert _sample_set(run) == expected
    assert resumed["spent_flops"] == pytest.approx(whole.spent_flops) and resumed["spent_flops"] <= budget
    assert resumed["rounds"] == whole.rounds

    # The replay over the driver's own samples asks for exactly them: the benchmark's simulation is the driver.
    from flopmatch.backends.base import SamplingParams  # noqa: F401 - the same max_tokens as the CLI
    from flopmatch.grading import grade_many
    from flopmatch.metrics import normalize_solution
    from flopmatch.toyworld import PARAMS, load_problems

    problems = {p.problem_id: p for p in load_problems("test", limit=PROBLEMS)}
    table = store.read_shards(run / "samples" / "toyworld-wc", columns=["problem_id", "sample_idx", "text", "completion_tokens"])
    rows = sorted(zip(*(table.column(c).to_pylist() for c in table.column_names), strict=True))
    grades = grade_many([(r[2], problems[r[0]].answer) for r in rows], dataset="toyworld", progress=False)
    pool = {pid: [] for pid in problems}
    for (pid, _, text, tokens), grade in zip(rows, grades, strict=True):
        pool[pid].append(PooledSample(tokens, grade.correct, normalize_solution(text) if grade.correct else None))
    config = json.loads((run / "samples" / "toyworld-wc" / "allocation.json").read_text())["config"]
    replay = simulate(pool, AllocationConfig(**config), budget_tokens=budget / (2.0 * PARAMS["wc"]),
                      max_tokens=MAX_TOKENS, chunk_samples=3)  # fmt: skip
    assert not replay.exhausted and replay.counts == {pid: len(v) for pid, v in pool.items()}


def test_cli_refuses_bad_combinations(tmp_path):
    from typer.testing import CliRunner

    from flopmatch.cli import app

    base = ["sample", "--run", str(tmp_path / "r"), "--model", "toyworld-wc", "--problems", "toyworld",
            "--split", "test", "--limit", "2", "--backend", "hf"]  # fmt: skip
    runner = CliRunner()
    result = runner.invoke(app, [*base, "--allocation", "adaptive"])
    assert result.exit_code != 0 and "needs a budget" in result.output
    result = runner.invoke(app, [*base, "--allocation", "adaptive", "-S", "3", "--budget-flops", "1e9"])
    assert result.exit_code != 0 and "drop -S" in result.output
    result = runner.invoke(app, [*base, "--allocation", "uniform", "--target-correct", "2", "-S", "1"])
    assert result.exit_code != 0 and "apply to a non-uniform" in result.output
    result = runner.invoke(app, [*base, "--allocation", "adaptive", "--target-correct", "2", "--budget-flops", "1e9"])
    assert result.exit_code != 0 and "target_correct applies to until-correct" in result.output


# --------------------------------------------------------------------------- metrics of unequal counts


def test_allocation_tables_report_unequal_counts_over_all_samples(tmp_path):
    import pyarrow as pa

    from flopmatch.allocation_metrics import allocation_markdown, allocation_tables
    from flopmatch.analysis import load_model_samples
    from flopmatch.sampling import SAMPLE_SCHEMA
    from flopmatch.store import RunDir, write_json, write_table

    run = RunDir(tmp_path / "run").ensure()
    # p1: 1 sample, correct; p2: 4 samples, two correct with the same text; p3: 2 samples, none correct.
    layout = {"p1": [True], "p2": [False, True, False, True], "p3": [False, False]}
    rows, grades = [], []
    for pid, oks in layout.items():
        for idx, ok in enumerate(oks):
            rows.append({"model": "m", "problem_id": pid, "sample_idx": idx, "seed": 0, "text": f"{pid} answer",
                         "prompt_tokens": 1, "completion_tokens": 10, "finish_reason": "stop", "backend": "hf",
                         "seeding": "per-request", "seconds": 0.1, "session_id": "s"})  # fmt: skip
            grades.append({"problem_id": pid, "sample_idx": idx, "status": "correct" if ok else "wrong"})
    store.append_shard(run.samples_dir("m"), pa.Table.from_pylist(rows, schema=SAMPLE_SCHEMA))
    write_table(pa.Table.from_pylist(grades), run.grades_path("m"))
    write_json({"config": {"allocation": "adaptive", "objective": "coverage"}, "rounds": 2, "pending": None,
                "history": [{"round": 1, "samples_on_disk": 3, "flops": 60.0, "covered": 1, "unique_correct": 1},
                            {"round": 2, "samples_on_disk": 7, "flops": 140.0, "covered": 2, "unique_correct": 2}]},
               run.samples_dir("m") / "allocation.json")  # fmt: skip
    data = {"m": load_model_samples(run, "m", run.grades_path("m"))}
    table, curve = allocation_tables(run, data, n_boot=200)
    [row] = table.to_dict("records")
    assert (row["allocation"], row["samples"], row["samples_min"], row["samples_max"]) == ("adaptive", 7, 1, 4)
    assert row["coverage"] == pytest.approx(2 / 3) and row["unique_per_problem"] == pytest.approx(2 / 3)
    assert row["coverage_low"] <= row["coverage"] <= row["coverage_high"]
    assert row["flops"] is None or math.isnan(row["flops"])  # no ledger: P unknown
    assert curve["coverage"].tolist() == pytest.approx([1 / 3, 2 / 3]) and curve["flops"].tolist() == [60.0, 140.0]
    assert "| m | adaptive (coverage) | 1 / 1.5 / 2 / 3 / 4 |" in allocation_markdown(table)


def test_sft_takes_every_correct_solution_of_an_allocated_model(tmp_path):
    from flopmatch.sft import build_sft
    from flopmatch.store import write_json
    from graded_runs import graded_run

    # Unequal counts: 1, 5 and 2 samples; correct ones at (0, 0), (1, 3), (1, 4).
    run, problems = graded_run(tmp_path / "run", [[True], [False, False, False, True, True], [False, False]])
    with pytest.raises(ValueError, match="give budget="):
        build_sft(run, source_model="m")  # plain sampling still needs a budget
    write_json({"config": {"allocation": "adaptive"}, "rounds": 1, "pending": None, "history": []},
               run.samples_dir("m") / "allocation.json")  # fmt: skip
    result = build_sft(run, source_model="m")
    assert result.examples == 3  # every correct solution, though the counts per problem differ
