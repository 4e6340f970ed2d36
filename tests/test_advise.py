"""flopmatch advise: option parsing, the allocation maths, the decision, and the pilot end to end on two
small toy-world models pretrained in seconds (hf backend), from the CLI and inside a study
(budget.mode: advised). Nothing here needs the default toyworld-wc/-se models (minutes of pretraining)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from flopmatch.advise import (
    MIN_PILOT_PROBLEMS,
    Advice,
    AdviseError,
    Budget,
    Candidate,
    Decision,
    advise_from_pilot,
    parse_match,
    parse_model_values,
)
from flopmatch.forecast import fit_success
from flopmatch.metrics import pass_at_k
from flopmatch.mixture import AllocationError, Forecaster, miss_tables, prefix_miss, samples_for, share_grid
from flopmatch.pilot import ModelCost, PilotError, PilotModel, resolve_budget
from flopmatch.store import RunDir, read_shards

# --------------------------------------------------------------------------- options


def test_model_values_parse_and_bad_items_name_the_option():
    assert parse_model_values(["a=1.5", "org/m=2"], "--price") == {"a": 1.5, "org/m": 2.0}
    for item, fragment in (("a", "MODEL=NUMBER"), ("a=x", "'x' is not a number"), ("=3", "MODEL=NUMBER"),
                           ("a=-1", ">= 0"), ("a=nan", ">= 0")):  # fmt: skip
        with pytest.raises(PilotError, match=fragment) as info:
            parse_model_values([item], "--price")
        assert "--price" in str(info.value)
    with pytest.raises(PilotError, match="between 0 and 1"):
        parse_model_values(["a=1.5"], "--fpr", upper=1.0)


def test_match_parses_and_bad_values_fail_clearly():
    assert parse_match("toyworld-se:10") == ("toyworld-se", 10)
    assert parse_match("C:/models/x:3") == ("C:/models/x", 3)
    for text, fragment in (("se", "MODEL:SAMPLES"), ("se:x", "not a whole number"), ("se:0", ">= 1"),
                           (":3", "MODEL:SAMPLES")):  # fmt: skip
        with pytest.raises(PilotError, match=fragment):
            parse_match(text)


# --------------------------------------------------------------------------- allocation maths


def test_share_grid_and_samples_for():
    grid = share_grid(2, 0.25)
    assert grid == [(0.0, 1.0), (0.25, 0.75), (0.5, 0.5), (0.75, 0.25), (1.0, 0.0)]
    assert len(share_grid(3, 0.1)) == 66  # the simplex at 10% steps
    assert all(abs(sum(s) - 1) < 1e-12 for s in share_grid(3, 0.1))
    with pytest.raises(ValueError, match="divide 100%"):
        share_grid(2, 0.3)
    # 100 problems, budget 3000: 30 per problem; costs 1 and 3 per sample
    assert samples_for((0.5, 0.5), 3000, 100, (1.0, 3.0)) == (15, 5)
    assert samples_for((1.0, 0.0), 2999, 100, (1.0, 3.0)) == (29, 0)  # rounded down, never over budget


def test_prefix_miss_is_the_unbiased_miss_within_the_pilot_and_the_posterior_beyond():
    n = np.array([8, 8, 8, 8])
    c = np.array([0, 1, 5, 8])
    fit = fit_success(np.array([8] * 6), np.array([0, 1, 2, 5, 8, 3]), family="beta-binomial")
    for k in (1, 3, 8):
        expected = [1 - pass_at_k(8, int(ci), k) for ci in c]
        assert np.allclose(prefix_miss(n, c, k, fit), expected)
    beyond = prefix_miss(n, c, 20, fit)
    assert np.all(beyond[1:] == 0)  # a solved problem stays covered
    assert np.isclose(beyond[0], fit.posterior_miss(8, 0, 12))
    assert np.all(prefix_miss(n, c, 0, fit) == 1)


def test_miss_tables_evaluate_each_distinct_pilot_count_once_and_equal_the_per_problem_values():
    """Problems with equal (n, c) share one evaluation; unequal n per problem and k = 0 included."""
    n, c = np.array([3, 8, 8, 5, 8, 3]), np.array([0, 1, 1, 5, 0, 0])
    fit = fit_success(n, c, family="beta-binomial")
    calls = []

    class Counting:
        def posterior_miss(self, n_, c_, m_):
            calls.append(len(n_))
            return fit.posterior_miss(n_, c_, m_)

    ks = [0, 1, 3, 8, 20]
    prefix, fresh = miss_tables(n, c, ks, Counting())
    assert prefix.shape == fresh.shape == (6, 5) and calls == [2 * 4 * 5]  # one call, 4 distinct (n, c)
    for i, (ni, ci) in enumerate(zip(n, c, strict=True)):
        for j, k in enumerate(ks):
            want_fresh = 1.0 if k == 0 else fit.posterior_miss(np.array([ni]), np.array([ci]), k)[0]
            if k == 0:
                want_prefix = 1.0
            elif k <= ni:
                want_prefix = 1 - pass_at_k(int(ni), int(ci), k)
            else:  # beyond the pilot: only a never-solved problem can still miss
                want_prefix = fit.posterior_miss(np.array([ni]), np.array([0]), k - ni)[0] if ci == 0 else 0.0
            assert np.isclose(prefix[i, j], want_prefix) and np.isclose(fresh[i, j], want_fresh)


def _pilot(
    name: str, counts: np.ndarray, n: int, *, params: int = 1000, tokens: int = 10, uniques=None
) -> PilotModel:
    frame = pd.DataFrame({
        "problem_id": [f"p{i}" for i in range(len(counts))], "n": n, "c": counts,
        "unique_correct": counts if uniques is None else uniques, "tokens": tokens * n,
    })  # fmt: skip
    cost = ModelCost(name, samples=n * len(counts), completion_tokens=tokens * n * len(counts), seconds=1.0,
                     params=params)  # fmt: skip
    return PilotModel(name, frame, cost)


def _simulated(p: np.ndarray, n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).binomial(n, p)


def test_single_model_coverage_is_the_exact_expectation_under_the_fit():
    rng = np.random.default_rng(1)
    p = rng.beta(0.4, 1.5, 60)
    pilot = _pilot("m", _simulated(p, 6, 2), 6)
    forecaster = Forecaster([pilot], n_problems=200, n_boot=20)
    fit = forecaster.models[0].fit
    n, c = forecaster.models[0].n, forecaster.models[0].c
    for k in (3, 6, 40):
        result = forecaster.evaluate([(k,)])
        prefix = prefix_miss(n, c, k, fit).sum()
        fresh = fit.posterior_miss(n, c, k).mean()
        assert np.isclose(result.point[0], 1 - (prefix + 140 * fresh) / 200)
        assert result.boot.shape == (len(forecaster.scenarios), 20, 1)
    # all problems in the pilot and k <= n: exactly the unbiased estimate of coverage@k
    whole = Forecaster([pilot], n_problems=60, n_boot=5)
    expected = np.mean([pass_at_k(6, int(ci), 4) for ci in pilot.counts["c"]])
    assert np.isclose(whole.evaluate([(4,)]).point[0], expected)


def test_mixture_keeps_the_correlation_between_models():
    """Two models that fail on the same problems gain nothing from mixing; independent ones would."""
    rng = np.random.default_rng(3)
    p = np.where(
        rng.random(80) < 0.5, 0.0, rng.beta(3, 2, 80)
    )  # half the problems unsolvable by either model
    a, b = _pilot("a", _simulated(p, 8, 4), 8), _pilot("b", _simulated(p, 8, 5), 8)
    forecaster = Forecaster([a, b], n_problems=80, n_boot=10)
    alone_a, mixed = forecaster.evaluate([(16, 0), (8, 8)]).point
    assert mixed <= alone_a + 0.03  # an independence assumption would forecast about +25 points here


def test_advice_picks_the_clearly_better_model_and_says_so():
    rng = np.random.default_rng(7)
    weak = _pilot("weak", _simulated(rng.beta(0.3, 3.0, 100), 4, 8), 4)
    strong = _pilot("strong", _simulated(rng.beta(2.0, 1.0, 100), 4, 9), 4)
    budget = Budget(100 * 10 * strong.cost.per_sample("flops"), "flops", "test")
    advice = advise_from_pilot([weak, strong], budget, n_problems=1000, n_boot=100)
    assert advice.best.models == ["strong"]
    assert advice.decision.decided and advice.decision.difference_low > 0
    assert advice.sentence.startswith("Sample strong ×1")
    data = advice.to_dict()
    assert data["recommendation"]["model"] == "strong"
    assert data["pilot"]["problems"] == 100 and data["pilot"]["samples_per_problem"] == 4
    # the pilot (100 × 4 from each, same cost per sample) against a budget of 1000 problems × 1 of strong
    assert np.isclose(data["pilot"]["fraction_of_budget"], 800 / 1000)
    assert len(data["candidates"]) == len({tuple(c["samples"].values()) for c in data["candidates"]})
    # every share buys samples (a share too small for one sample per problem would waste it)
    assert all(
        c["samples"][m] > 0 for c in data["candidates"] for m, share in c["shares"].items() if share > 0
    )
    assert [c["shares"] for c in data["candidates"] if c["kind"] == "model"] == [
        {"weak": 0.0, "strong": 1.0},
        {"weak": 1.0, "strong": 0.0},
    ]


def test_advice_that_cannot_decide_says_how_much_more_pilot_would():
    rng = np.random.default_rng(11)
    p = rng.beta(0.5, 1.0, 40)
    a, b = _pilot("a", _simulated(p, 4, 1), 4), _pilot("b", _simulated(p * 0.97, 4, 2), 4)
    budget = Budget(1000 * 8 * a.cost.per_sample("flops"), "flops", "test")
    advice = advise_from_pilot([a, b], budget, n_problems=1000, n_boot=100, step=0.5)
    assert not advice.decision.decided
    assert advice.sentence.startswith("The pilot cannot decide between")
    more = advice.decision.more_pilot_problems
    if more is not None:  # a positive gap: the interval shrinks like 1/sqrt(problems)
        assert more >= 1 and f"about {more} more pilot problems" in advice.sentence
    elif advice.decision.difference > 0:  # even the whole problem set would leave the interval too wide
        assert "even a pilot on all 1000 problems would not separate" in advice.sentence
    else:
        assert "about as good" in advice.sentence


def test_the_sentence_tells_a_gap_no_pilot_here_can_separate_from_a_tie():
    def candidate(name: str, forecast: float) -> Candidate:
        return Candidate({name: 1.0}, {name: 5}, 100.0, forecast, forecast - 0.3, forecast + 0.3)

    best, other = candidate("a", 0.475), candidate("b", 0.225)
    pilot = {"problems": 20, "samples_per_problem": 4, "fraction_of_budget": 0.27}
    budget = Budget(200.0, "flops", "test")
    # 40 problems: the +25 point gap would need about 46 pilot problems (20 · (37.9 / 25)²), more than there are
    gap = Decision(False, other, 0.25, -0.069, 0.688)
    advice = Advice("coverage", budget, 40, pilot, {}, [best, other], gap)
    assert "even a pilot on all 40 problems would not separate a difference this large" in advice.sentence
    assert "about as good" not in advice.sentence
    tie = Decision(False, candidate("b", 0.475), 0.0, -0.1, 0.1)
    assert "about as good" in Advice("coverage", budget, 40, pilot, {}, [best, other], tie).sentence


def test_a_budget_that_buys_nothing_and_a_missing_fpr_are_errors():
    a = _pilot("a", np.array([1, 2, 0]), 4)
    with pytest.raises(AdviseError, match="does not buy one sample per problem"):
        advise_from_pilot([a], Budget(1.0, "flops", "test"), n_problems=3, n_boot=5)
    with pytest.raises(AllocationError, match="--fpr a=x"):
        Forecaster([a], n_problems=3, objective="valid-unique", n_boot=5)
    with pytest.raises(PilotError, match="exactly one budget"):
        resolve_budget(flops=1.0, dollars=None, seconds=None, match="a:1", pilots=[a], n_problems=3)
    with pytest.raises(PilotError, match="not one of the models"):
        resolve_budget(flops=None, dollars=None, seconds=None, match="b:1", pilots=[a], n_problems=3)


def test_valid_unique_discounts_each_model_by_its_fpr():
    counts = np.array([4, 3, 2, 1, 0, 4])
    a = _pilot("a", counts, 4)
    b = PilotModel("b", a.counts.copy(), ModelCost("b", 24, 240, 1.0, 1000), fpr=0.5)
    a = PilotModel("a", a.counts, a.cost, fpr=0.0)
    forecaster = Forecaster([a, b], n_problems=6, objective="valid-unique", n_boot=5)
    only_a, only_b = forecaster.evaluate([(8, 0), (0, 8)]).point
    assert np.isclose(only_b, 0.5 * only_a)


def _fake_graded_run(root: Path) -> Path:
    """Problem a: four correct samples, two texts equal after normalisation; b: two correct, distinct."""
    import pyarrow as pa

    from flopmatch.grading.run import GRADE_SCHEMA
    from flopmatch.sampling import SAMPLE_SCHEMA
    from flopmatch.store import append_shard, write_table

    run = RunDir(root).ensure()
    samples, grades = [], []
    for pid in ("a", "b"):
        for i in range(4):
            text = ("x = 1" if i % 2 else "x=1 ") if pid == "a" else f"step {i}"
            samples.append({"model": "m", "problem_id": pid, "sample_idx": i, "seed": 0, "text": text,
                            "prompt_tokens": 1, "completion_tokens": 10 + i, "finish_reason": "stop",
                            "backend": "hf", "seeding": "per-request", "seconds": 0.5, "session_id": "s"})  # fmt: skip
            status = "correct" if pid == "a" or i < 2 else "wrong"
            grades.append({"model": "m", "problem_id": pid, "sample_idx": i, "status": status, "extracted": "1",
                           "gold": "1", "detail": ""})  # fmt: skip
    run.samples_dir("m").mkdir(parents=True)
    append_shard(run.samples_dir("m"), pa.Table.from_pylist(samples, schema=SAMPLE_SCHEMA))
    write_table(pa.Table.from_pylist(grades, schema=GRADE_SCHEMA), run.grades_path("m"))
    return run.root


def test_pilot_counts_and_cost_come_from_the_prefix_of_the_graded_samples(tmp_path):
    from flopmatch.pilot import graded_solutions, pilot_cost, pilot_counts

    root = _fake_graded_run(tmp_path / "run")
    counts = pilot_counts(root, "m", ["a", "b"], 4).set_index("problem_id")
    assert counts.loc["a"].tolist() == [4, 4, 1, 46] and counts.loc["b"].tolist() == [4, 2, 2, 46]
    prefix = pilot_counts(root, "m", ["b"], 1).set_index("problem_id")
    assert prefix.loc["b", "n"] == 1 and prefix.loc["b", "tokens"] == 10
    assert graded_solutions(root, "m", ["a", "b"]).set_index("problem_id").loc["a", "multiplicities"] == [4]
    cost = pilot_cost(root, "m", ["a", "b"], 3, params=1000)
    assert (cost.samples, cost.completion_tokens, cost.seconds) == (6, 66, 3.0)
    assert cost.per_sample("flops") == 2 * 1000 * 11 and cost.per_sample("seconds") == 0.5
    with pytest.raises(PilotError, match="no price for m"):
        cost.per_sample("dollars")
    with pytest.raises(PilotError, match=r"m\.parquet: problem 'zz' has 0 graded samples"):
        pilot_counts(root, "m", ["a", "zz"], 4)


def test_the_pilot_reads_sample_text_once_for_its_counts_and_not_for_its_cost(tmp_path, monkeypatch):
    from flopmatch.pilot import graded_solutions, pilot_cost
    from flopmatch.store.queries import load_problems
    from sample_reads import WC, planned_run, spy_sample_reads

    run = planned_run(tmp_path / "run")  # WC: samples 0..2 of 10, 11, 12 tokens, sample 1 wrong, two shards
    ids = sorted(load_problems(run))
    reads = spy_sample_reads(monkeypatch, run)
    table = graded_solutions(run.root, WC, ids, 2)
    assert table["n"].tolist() == [2] * 4 and table["c"].tolist() == [1] * 4
    assert reads.most_text_reads_of_a_shard == 1 and len(reads.text) == 2
    reads.clear()
    cost = pilot_cost(run.root, WC, ids, 3, params=1000)
    assert (cost.samples, cost.completion_tokens) == (12, 4 * (10 + 11 + 12)) and not reads.text


# --------------------------------------------------------------------------- end to end on small toy models

REPO = Path(__file__).resolve().parents[1]
FLOPMATCH = [str(Path(sys.executable).with_name("flopmatch"))]

#: Two toy models that pretrain in seconds (the default toyworld-wc/-se take minutes): the default recipe
#: cut to 400 steps and a 500-problem tokenizer corpus. "se" is the wider one (2.7x the parameters). Each
#: solves a few toy problems (10-13% coverage at 4 samples on 40 test problems when measured), so the
#: pilot's fits are not degenerate. Cached in the session's toy-model cache and shared with the study test.
TINY_WC = {"hidden_size": 32, "num_layers": 2, "num_heads": 1, "intermediate_size": 128, "train_steps": 400,
           "warmup_steps": 40, "tokenizer_corpus": 500}  # fmt: skip
TINY_SE = {**TINY_WC, "hidden_size": 64, "num_heads": 2, "intermediate_size": 192}


@pytest.fixture(scope="module")
def toy_models() -> dict[str, str]:
    """role -> directory of the two small toy models (pretrained on first use into $FLOPMATCH_CACHE)."""
    from flopmatch.toyworld import ensure_model
    from flopmatch.toyworld.models import toy_model_spec

    return {
        role: str(ensure_model(f"advise-{role}", spec=toy_model_spec(spec), progress=False))
        for role, spec in (("wc", TINY_WC), ("se", TINY_SE))
    }


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "NO_COLOR": "1", "COLUMNS": "200"}
    return subprocess.run([*FLOPMATCH, *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=1800)


def _toy_args(models: dict[str, str]) -> tuple[str, ...]:
    # 40 problems; no --pilot-problems: the default pilot starts on MIN_PILOT_PROBLEMS (20) of them and
    # stays there, since a tenth of the SE 10 budget buys fewer pilot problems than that
    return ("advise", "-m", models["wc"], "-m", models["se"], "--backend", "hf", "-o", "batch_size=256",
            "--problems", "toyworld", "--split", "test", "--limit", "40", "--pilot-samples", "4",
            "--max-tokens", "96", "--n-boot", "50")  # fmt: skip


TOY_TIMEOUT = pytest.mark.timeout(2400)  # generous: at load 15-25 on 2 cores the file took 4-5 min


@pytest.fixture(scope="module")
def toy_advice(tmp_path_factory, toy_models):
    root = tmp_path_factory.mktemp("advise")
    match = f"{toy_models['se']}:10"
    result = _cli(*_toy_args(toy_models), "--match", match, "--run", str(root / "run"), "--json", cwd=root)
    assert result.returncode == 0, result.stderr[-3000:]
    return root, json.loads(result.stdout)


@TOY_TIMEOUT
def test_advise_end_to_end_on_the_toy_models(toy_advice, toy_models):
    root, data = toy_advice
    run = root / "run"
    wc, se = toy_models["wc"], toy_models["se"]
    rec = data["recommendation"]
    assert ("model" in rec) != ("mixture" in rec)
    assert rec["interval"][0] <= rec["forecast"] <= rec["interval"][1]
    assert set(data["pilot"]) >= {"problems", "samples_per_problem", "flops", "fraction_of_budget"}
    assert data["pilot"]["problems"] == MIN_PILOT_PROBLEMS and data["pilot"]["samples_per_problem"] == 4
    assert data["pilot"]["flops"] > 0 and 0 < data["pilot"]["fraction_of_budget"]
    # the forecasts rest on some solved problems, not on an all-zero pilot
    assert max(m["pilot_coverage"] for m in data["models"].values()) > 0
    kinds = {c["kind"] for c in data["candidates"]}
    assert kinds == {"model", "mixture"}
    singles = {c["label"].split(" ×")[0] for c in data["candidates"] if c["kind"] == "model"}
    assert singles == {wc, se}
    se_alone = next(c for c in data["candidates"] if c["kind"] == "model" and c["samples"][se])
    assert se_alone["samples"] == {wc: 0, se: 10}  # --match SE:10
    assert data["sentence"] and data["sentence"][0].isupper() and data["sentence"].endswith(".")
    assert json.loads((run / "advice.json").read_text())["recommendation"] == rec
    assert (run / "advice_frontier.png").stat().st_size > 1000
    # the pilot went through the ordinary sampling: 20 × 4 samples of each model, seeded and graded
    for model in (wc, se):
        samples = read_shards(RunDir(run).samples_dir(model), columns=["sample_idx"]).column("sample_idx")
        assert len(samples) == MIN_PILOT_PROBLEMS * 4 and max(samples.to_pylist()) == 3
        assert RunDir(run).grades_path(model).exists()


@TOY_TIMEOUT
def test_advise_resumes_without_generating_and_prints_one_sentence(toy_advice, toy_models):
    root, first = toy_advice
    run = root / "run"
    before = sorted(p.name for p in (run / "ledger.parquet").iterdir())
    match = f"{toy_models['se']}:10"
    result = _cli(*_toy_args(toy_models), "--match", match, "--run", str(run), cwd=root)
    assert result.returncode == 0, result.stderr[-3000:]
    assert sorted(p.name for p in (run / "ledger.parquet").iterdir()) == before  # no new sampling session
    out = " ".join(result.stdout.split())
    assert " ".join(first["sentence"].split()) in out
    assert "advice.json" in out and "rank" in out


@pytest.mark.parametrize(
    ("extra", "fragment"),
    [
        (("--match", "{se}:x"), "not a whole number"),
        (("--match", "nosuch:10"), "'nosuch' is not one of the models"),
        (("--match", "{se}:10", "--price", "{wc}=abc"), "'abc' is not a number"),
        (("--match", "{se}:10", "--price", "other=1"), "--price other=...: not one of the models"),
        (("--budget-dollars", "5", "--price", "{wc}=1"), "--price MODEL=USD_PER_MILLION_TOKENS for every"),
        (("--budget-flops", "1e12", "--match", "{se}:1"), "exactly one budget"),
        ((), "exactly one budget"),
    ],
)
def test_bad_budget_and_price_input_fails_before_sampling(tmp_path, toy_models, extra, fragment):
    """In process (the CLI's own code path, without a new interpreter per case); the models are real,
    so input that slipped past the checks would start sampling and leave samples behind."""
    from typer.testing import CliRunner

    from flopmatch.cli import app

    extra = tuple(item.format(**toy_models) for item in extra)
    result = CliRunner().invoke(app, [*_toy_args(toy_models), *extra, "--run", str(tmp_path / "run")],
                                env={"COLUMNS": "200", "NO_COLOR": "1"})  # fmt: skip
    assert result.exit_code == 2, result.output
    assert fragment in " ".join(result.stderr.split())
    assert not (tmp_path / "run" / "samples").exists()


# --------------------------------------------------------------------------- the study's advised mode


@pytest.fixture
def one_torch_thread(monkeypatch):
    """In-process sampling on one torch thread, whether or not torch was imported earlier (pretraining in
    ``toy_models`` imports it, before any OMP_NUM_THREADS here): on a busy 2-core box a second thread
    spin-waits, which tripled this test's CPU time in a cold session."""
    import torch

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@TOY_TIMEOUT
def test_study_in_advised_mode_runs_the_pilot_and_reports_forecast_vs_measured(
    tmp_path, toy_models, one_torch_thread
):
    from flopmatch.study import run_study, validate_study_dict

    hf = {"backend": "hf", "backend_options": {"batch_size": 256}}
    config = validate_study_dict({
        "name": "advised",
        "problems": {"sample": {"source": "toyworld", "split": "train", "limit": 30}},
        # the same small toy models as above (same names and specs: the same cached directories)
        "models": {"wc": {"model": "advise-wc", **hf, "toyworld_spec": TINY_WC},
                   "se": {"model": "advise-se", **hf, "toyworld_spec": TINY_SE}},
        "budget": {"mode": "advised", "se_samples": [1, 3],
                   "pilot": {"samples": 2, "problems": 12, "n_boot": 30}},
        "sampling": {"max_tokens": 96},
        "judge": {"enabled": False},
        "analysis": {"n_boot": 30},
        "training": {"enabled": False},
    })  # fmt: skip
    result = run_study(config, tmp_path / "run", log=lambda _: None, progress=False)
    assert "pilot" in result.ran and result.ran.index("pilot") < result.ran.index("sample")
    run = RunDir(tmp_path / "run")
    roles = json.loads((run.root / "roles.json").read_text())
    assert {roles[r]["path"] for r in ("wc", "se")} == set(toy_models.values())  # no second pretraining
    advice = json.loads((run.root / "pilot" / "advice.json").read_text())
    assert [b["se_samples"] for b in advice["budgets"]] == [1, 3]
    plan = json.loads(run.plan_path.read_text())
    assert [b["wc_samples"] for b in plan["budgets"]] == [b["wc_samples"] for b in advice["budgets"]]
    # every advised allocation was sampled in full (the pilot's samples are its first ones)
    for entry in advice["budgets"]:
        for model, k in entry["advice"]["candidates"][0]["samples"].items():
            role = next(r for r, name in advice["roles"].items() if name == model)
            ref = roles[role]["model"]
            counts = read_shards(run.samples_dir(ref), columns=["problem_id"]).to_pandas().value_counts()
            assert len(counts) == 30 and counts.min() >= k
    report = (run.report_dir / "report.md").read_text()
    assert "## Pilot forecast vs measured" in report
    assert "(advised)" in report
    second = run_study(config, tmp_path / "run", log=lambda _: None, progress=False)
    assert second.ran == []  # nothing redone, the pilot included
