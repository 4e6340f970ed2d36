"""Evaluation: the maths of pass@1 / maj@k / pass@k, and `evaluate` end to end on a trained tiny model.

The tiny addition task and its model come from ``test_training`` (same builders, one definition).
"""

from __future__ import annotations

import math

import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flopmatch.evaluation import (
    EVAL_SCHEMA,
    EvalConfig,
    EvaluationError,
    evaluate,
    maj_at_k,
    majority_correct,
    problem_metrics,
    summarize,
    vote_key,
)
from flopmatch.problems import Problem

GOLD = "\x00gold"


# --------------------------------------------------------------------------- pure maths


def test_votes_pool_correct_answers_and_skip_missing_ones():
    assert vote_key("correct", "1/2") == vote_key("correct", "0.5") == GOLD
    assert vote_key("wrong", " 1 2 ") == vote_key("wrong", "12") == "12"
    assert vote_key("wrong", "X") == "x"
    assert vote_key("no_answer", None) is None and vote_key("wrong", "  ") is None


def test_majority_vote_breaks_ties_uniformly():
    assert majority_correct([GOLD, GOLD, "3"]) == 1.0
    assert majority_correct(["3", "3", GOLD]) == 0.0
    assert majority_correct([GOLD, "3"]) == 0.5
    assert majority_correct([GOLD, "3", "4"]) == pytest.approx(1 / 3)
    assert majority_correct([None, None, GOLD]) == 1.0  # no-answers do not vote
    assert majority_correct([None, None]) == 0.0


def test_maj_at_k_averages_disjoint_groups():
    votes = [GOLD, "3", "3", "3", GOLD, GOLD, GOLD, "4"]
    assert maj_at_k(votes, 1) == pytest.approx(4 / 8)
    assert maj_at_k(votes, 4) == pytest.approx((0.0 + 1.0) / 2)
    assert maj_at_k(votes, 8) == 1.0  # 4 gold vs 3 "3" vs 1 "4"
    assert maj_at_k(votes[:7], 4) == 0.0  # one group of 4 (the 7th sample is left out)
    with pytest.raises(EvaluationError, match=r"maj@9 needs 1 <= k <= n = 8"):
        maj_at_k(votes, 9)


def test_problem_metrics_keep_greedy_pass_at_1_apart_from_samples():
    samples = [("correct", "5"), ("wrong", "6"), ("wrong", "6"), ("correct", "5")]
    values = problem_metrics("wrong", samples, ks=(1, 2, 4, 8))
    assert values["pass@1"] == 0.0  # greedy, not the 0.5 of the samples
    assert values["sample_accuracy"] == values["maj@1"] == 0.5
    assert values["pass@2"] == pytest.approx(1 - 1 / 6)  # 1 - C(2,2)/C(4,2)
    assert values["pass@4"] == 1.0 and values["maj@4"] == 0.5 and values["maj@2"] == 0.5
    assert "pass@8" not in values and "maj@8" not in values  # k > n is not reported
    assert problem_metrics(None, [], ks=(1,)) == {}


def test_summarize_gives_means_and_intervals_around_them():
    metrics, intervals = summarize([{"pass@1": 1.0}, {"pass@1": 0.0}, {"pass@1": 1.0}, {"pass@1": 1.0}])
    assert metrics["pass@1"] == 0.75
    low, high = intervals["pass@1"]
    assert 0.0 <= low <= 0.75 <= high <= 1.0


@settings(max_examples=80, deadline=None)
@given(st.lists(st.sampled_from([GOLD, "1", "2", None]), min_size=1, max_size=16), st.integers(1, 16))
def test_maj_at_k_is_a_probability_and_extremes_are_exact(votes, k):
    k = min(k, len(votes))
    value = maj_at_k(votes, k)
    assert 0.0 <= value <= 1.0
    assert maj_at_k([GOLD] * len(votes), k) == 1.0
    assert maj_at_k([v if v != GOLD else "1" for v in votes], k) == 0.0


def test_an_evaluation_that_cannot_run_is_an_evaluation_error_before_any_model_loads():
    problem = Problem(problem_id="p", dataset="gsm8k", split="test", question="q", answer="1")
    with pytest.raises(EvaluationError, match="no problems to evaluate") as info:
        evaluate("no/such-model", [], backend="hf")
    assert isinstance(info.value, ValueError)  # what Python callers caught before
    with pytest.raises(EvaluationError, match=r"validation error for EvalConfig\ntemperature"):
        evaluate("no/such-model", [problem], backend="hf", temperature=0)  # `flopmatch eval --temperature 0`
    with pytest.raises(EvaluationError, match="problem_id 'p' appears more than once"):
        evaluate("no/such-model", [problem, problem], backend="hf")


def test_eval_config_validates():
    assert EvalConfig(ks=(8, 1, 4, 4)).ks == (1, 4, 8)
    with pytest.raises(ValueError):
        EvalConfig(ks=(0,))
    with pytest.raises(ValueError):
        EvalConfig(temperature=0)
    with pytest.raises(ValueError):
        EvalConfig(backend_optons={})


# --------------------------------------------------------------------------- evaluate, for real


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    import torch

    from flopmatch.training import train
    from test_training import make_task, tiny_config

    torch.set_num_threads(1)
    task = make_task(tmp_path_factory.mktemp("evaltask"))
    train(task.sft, base_model=task.base, out_dir=task.root / "model", config=tiny_config(n_checkpoints=1))
    task.model = task.root / "model"
    return task


@pytest.mark.train
def _by_hand(greedy: str, samples: list[tuple[str, str | None]], k: int) -> dict[str, float]:
    """The metric definitions, enumerated: pass@k is the share of all k-subsets of the samples with a
    correct one (Chen et al. 2021); maj@k the mean, over the disjoint groups of k consecutive samples, of
    the chance that a vote (ties split evenly, unanswered samples abstain) picks the right answer."""
    from itertools import combinations

    right = [status == "correct" for status, _ in samples]
    subsets = list(combinations(range(len(samples)), k))
    out = {"pass@1": float(greedy == "correct"), "sample_accuracy": sum(right) / len(right)}
    out[f"pass@{k}"] = sum(any(right[i] for i in s) for s in subsets) / len(subsets)
    groups = []
    for start in range(0, len(samples) - k + 1, k):
        votes: dict[str, int] = {}
        for status, extracted in samples[start : start + k]:
            answer = "right" if status == "correct" else "".join((extracted or "").split()).lower()
            if answer:
                votes[answer] = votes.get(answer, 0) + 1
        winners = [a for a, c in votes.items() if votes and c == max(votes.values())]
        groups.append(1 / len(winners) if "right" in winners else 0.0)
    out[f"maj@{k}"] = sum(groups) / len(groups)
    return out


def test_metric_definitions_by_hand_on_a_small_case():
    """The enumeration above agrees with values worked out on paper (so it can judge evaluate's)."""
    samples = [("correct", "5"), ("wrong", "7"), ("wrong", "7"), ("no_answer", None)]
    got = _by_hand("wrong", samples, 2)
    # pairs: 6, of which 3 hold the correct sample -> 1/2; groups (5, 7): tie -> 1/2, (7, none) -> 0
    assert got == {"pass@1": 0.0, "sample_accuracy": 0.25, "pass@2": 0.5, "maj@2": 0.25}
    assert _by_hand("correct", samples, 4)["maj@4"] == 0.0  # 7 outvotes the right answer 2 to 1


@pytest.mark.train
def test_evaluate_writes_rows_whose_grades_give_the_reported_metrics(trained, monkeypatch):
    from test_training import HF

    out = trained.run.eval_path("tiny-test")
    result = evaluate(trained.model, trained.test, backend="hf", n=8, ks=(1, 4, 8, 16), max_tokens=24,
                      backend_options=HF, out_path=out)
    table = pq.read_table(out)
    assert table.schema.equals(EVAL_SCHEMA)
    rows = table.to_pylist()
    assert len(rows) == len(trained.test) * 9
    assert {r["mode"] for r in rows} == {"greedy", "sample"}
    assert {r["status"] for r in rows} <= {"correct", "wrong", "no_answer", "timeout", "error"}
    assert all(r["gold"] == p.answer for p in trained.test for r in rows if r["problem_id"] == p.problem_id)
    # every metric, worked out from the saved rows by enumeration (not by the code under test)
    per_problem = []
    for p in trained.test:
        mine = [r for r in rows if r["problem_id"] == p.problem_id]
        greedy = next(r["status"] for r in mine if r["mode"] == "greedy")
        samples = sorted((r["sample_idx"], r["status"], r["extracted"]) for r in mine if r["mode"] == "sample")
        assert [s[0] for s in samples] == list(range(8))
        pairs = [(s, e) for _, s, e in samples]
        per_problem.append(_by_hand(greedy, pairs, 1) | _by_hand(greedy, pairs, 4) | _by_hand(greedy, pairs, 8))
    for name in ("pass@1", "maj@1", "maj@4", "maj@8", "pass@4", "pass@8", "sample_accuracy"):
        assert result.metrics[name] == pytest.approx(sum(v[name] for v in per_problem) / len(per_problem))
    assert "maj@16" not in result.metrics
    assert result.metrics["pass@1"] >= 0.8  # the trained model solves held-out problems
    assert result.summary_path.exists() and result.completion_tokens > 0 and result.seeding == "per-request"

    # a repeated call is served from disk (no engine, no grading); a different setting is evaluated anew
    import flopmatch.backends
    import flopmatch.grading

    with monkeypatch.context() as patched:
        for module, name in ((flopmatch.backends, "create_backend"), (flopmatch.grading, "grade_many")):
            patched.setattr(module, name, lambda *a, **k: pytest.fail("a repeated evaluation ran again"))
        again = evaluate(trained.model, trained.test, backend="hf", n=8, ks=(1, 4, 8, 16), max_tokens=24,
                         backend_options=HF, out_path=out)  # fmt: skip
    assert again.metrics == result.metrics and again.key == result.key
    greedy_only = evaluate(trained.model, trained.test, backend="hf", n=0, max_tokens=24, backend_options=HF,
                           out_path=out)
    assert set(greedy_only.metrics) == {"pass@1"} and greedy_only.metrics["pass@1"] == result.metrics["pass@1"]
    assert pq.read_table(out).num_rows == len(trained.test)


@pytest.mark.train
def test_bad_evaluation_requests_fail_clearly(trained):
    with pytest.raises(ValueError, match="appears more than once"):
        evaluate(trained.model, trained.test[:2] * 2, backend="hf", n=0)
    with pytest.raises(ValueError, match="nothing to generate"):
        evaluate(trained.model, trained.test, backend="hf", n=0, greedy=False)
    with pytest.raises(ValueError, match="no problems"):
        evaluate(trained.model, [], backend="hf")


@pytest.mark.train
def test_cli_eval_prints_the_metrics(trained, tmp_path):
    import json

    from typer.testing import CliRunner

    from flopmatch.cli import app

    data = tmp_path / "problems.jsonl"
    data.write_text("".join(json.dumps({"question": p.question, "answer": f"x\n#### {p.answer}"}) + "\n"
                            for p in trained.test[:8]))
    out = tmp_path / "cli.parquet"
    res = CliRunner().invoke(app, ["eval", "--model", str(trained.model), "--problems", "gsm8k",
                                   "--data-file", str(data), "--backend", "hf", "--n", "2", "--k", "1,2",
                                   "--max-tokens", "24", "--option", "dtype=float32", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "pass@1" in res.output and "maj@2" in res.output and "pass@2" in res.output
    summary = json.loads(out.with_suffix(".json").read_text())
    assert summary["problems"] == 8 and not math.isnan(summary["metrics"]["pass@1"])
