"""The budget planner: the paper's numbers, rounding, measured costs from a real ledger, the CLI, properties."""

from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from flopmatch.budget import (
    BudgetError,
    BudgetPlan,
    exact,
    measured_costs_from_ledger,
    plan_budgets,
    plan_for_models,
)
from flopmatch.store import RunDir
from flopmatch.store.queries import read_plan
from offline_models import SKIP_REASON, offline_pair_installed


def _plan_cli(*args: str) -> dict:
    from flopmatch.cli import app

    result = CliRunner().invoke(app, ["plan", *args, "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)  # the JSON alone: progress bars (a GGUF joined on first use) go to stderr


def _counts(plan: dict) -> list[tuple[int, int]]:
    return [(b["se_samples"], b["wc_samples"]) for b in plan["budgets"]]


# --------------------------------------------------------------------------- acceptance (the numbers)


def test_cli_flops_gemma2_9b_vs_27b():
    plan = _plan_cli("--wc-params", "9e9", "--se-params", "27e9", "--se-samples", "1,10")
    assert _counts(plan) == [(1, 3), (10, 30)]
    assert plan["mode"] == "flops" and plan["ratio"] == 3.0
    for budget in plan["budgets"]:  # each model's FLOPs, matched exactly
        assert budget["wc_flops"] == budget["se_flops"] == budget["se_samples"] * 2 * 27e9
        assert budget["mismatch_pct"] == 0.0


def test_cli_price_flash_vs_pro():
    plan = _plan_cli("--mode", "price", "--wc-price", "0.3", "--se-price", "10.5", "--se-samples", "1")
    assert _counts(plan) == [(1, 35)]
    assert plan["ratio_exact"] == "35"


def test_cli_number_mode_is_equal():
    plan = _plan_cli("--mode", "number", "--wc-params", "9e9", "--se-params", "27e9", "--se-samples", "1,10")
    assert _counts(plan) == [(1, 1), (10, 10)]
    assert [b["flops_mismatch_pct"] for b in plan["budgets"]] == pytest.approx([-66.667, -66.667], abs=1e-3)


def test_cli_out_writes_the_plan_and_table_renders(tmp_path):
    from flopmatch.cli import app

    out = tmp_path / "run" / "plan.json"
    result = CliRunner().invoke(
        app,
        ["plan", "--wc-params", "0.5B", "--se-params", "1.5B", "--se-samples", "1,10", "--problems", "500",
         "--out", str(out)],
        terminal_width=200,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "one SE sample costs as much as 3 WC samples" in result.output
    plan = BudgetPlan.from_json(out.read_text())
    assert plan.wc_samples_for(10) == 30 and plan.n_problems == 500
    assert plan.budgets[0].se_flops_total == 500 * 2 * 1.5e9


def test_cli_errors_are_clear():
    from flopmatch.cli import app

    runner = CliRunner()
    result = runner.invoke(app, ["plan", "--se-samples", "1,10"])
    assert result.exit_code == 2 and "--wc-params/--se-params" in result.output
    result = runner.invoke(app, ["plan", "--wc-params", "9e9", "--se-params", "27e9", "--se-samples", "1,x"])
    assert result.exit_code == 2 and "--se-samples" in result.output
    result = runner.invoke(app, ["plan", "--wc-params", "nine", "--se-params", "27e9", "--se-samples", "1"])
    assert result.exit_code == 2 and "--wc-params" in result.output


def test_help_teaches_the_counting_convention():
    from flopmatch.cli import app

    result = CliRunner().invoke(app, ["plan", "--help"], terminal_width=200)
    assert result.exit_code == 0
    for phrase in ("2·P FLOPs", "embeddings included", "tied", "not counted twice", "floor"):
        assert phrase in result.output


# --------------------------------------------------------------------------- the planner


def test_solution_lengths_enter_the_ratio():
    plan = plan_budgets(se_samples=[1, 10], wc_params=1e9, se_params=3e9, wc_tokens=300, se_tokens=200)
    assert plan.ratio == pytest.approx(2.0)  # (3e9·200)/(1e9·300)
    assert [b.wc_samples for b in plan.budgets] == [2, 20]
    assert plan.cost_unit == "FLOPs per problem"
    assert plan.budgets[0].wc_flops == 2 * 2 * 1e9 * 300


@pytest.mark.parametrize(
    ("rounding", "expected"), [("floor", [2, 7, 26]), ("round", [3, 8, 26]), ("ceil", [3, 8, 27])]
)
def test_rounding_rules_and_mismatch(rounding, expected):
    plan = plan_budgets(se_samples=[1, 3, 10], wc_params=494_032_768, se_params=1_543_714_304, wc_tokens=300,
                        se_tokens=250, rounding=rounding)  # fmt: skip
    assert [b.wc_samples for b in plan.budgets] == expected
    for b in plan.budgets:
        assert b.mismatch_pct == pytest.approx((b.wc_samples / b.wc_exact - 1) * 100)
        assert b.mismatch_pct == pytest.approx((b.wc_flops / b.se_flops - 1) * 100)
        if rounding == "floor":
            assert b.mismatch_pct <= 0


def test_decimal_inputs_are_exact():
    # 0.7 / 0.1 is 6.999... in binary floating point; the planner reads the decimals
    plan = plan_budgets(mode="price", se_samples=[1], wc_price=0.1, se_price=0.7)
    assert plan.budgets[0].wc_samples == 7 and plan.ratio_exact == "7"


def test_totals_and_round_trip(tmp_path):
    plan = plan_budgets(
        se_samples=[1, 10], wc_params=9e9, se_params=27e9, n_problems=7473, wc_name="g9", se_name="g27"
    )
    assert plan.budgets[1].wc_flops_total == 30 * 2 * 9e9 * 7473
    assert BudgetPlan.from_json(plan.to_json()) == plan
    path = plan.save(tmp_path)
    assert path == RunDir(tmp_path).plan_path
    assert read_plan(RunDir(tmp_path)) == plan  # the one reader of plan.json (flopmatch.store.queries)
    assert plan.wc.name == "g9"
    # one lookup: wc_samples_for is point's, and its unknown budget is still the KeyError it raised before
    with pytest.raises(KeyError, match=r"^no budget with se_samples=3 \(the plan has: 1, 10\)$") as missing:
        plan.wc_samples_for(3)
    assert isinstance(missing.value, BudgetError)


def test_a_budget_is_named_by_its_se_samples_per_problem():
    """``budget`` means one meaning everywhere: the plan's point named by SE's samples per problem."""
    plan = plan_budgets(se_samples=[10, 1], wc_params=9e9, se_params=27e9)
    assert plan.se_budgets == [10, 1]  # plan order
    assert plan.point(1).wc_samples == 3 and plan.point(10) is plan.budgets[0]
    with pytest.raises(BudgetError, match=r"no budget with se_samples=0 \(the plan has: 10, 1\)"):
        plan.point(0)


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"se_samples": [1]}, "wc_params/se_params"),
        ({"se_samples": [], "wc_params": 1, "se_params": 2}, "se_samples is empty"),
        ({"se_samples": [0], "wc_params": 1, "se_params": 2}, "positive integers"),
        ({"se_samples": [1], "wc_params": -1, "se_params": 2}, "wc_params must be > 0"),
        ({"se_samples": [1], "wc_params": 1, "se_params": 2, "wc_tokens": 100}, "both mean solution lengths"),
        ({"se_samples": [1], "mode": "price", "wc_price": 1}, "--wc-price/--se-price"),
        ({"se_samples": [1], "mode": "measured"}, "--ledger"),
        ({"se_samples": [1], "mode": "tokens"}, "mode must be one of"),
        ({"se_samples": [1], "wc_params": 1, "se_params": 2, "rounding": "up"}, "rounding must be one of"),
        ({"se_samples": [1], "wc_params": float("nan"), "se_params": 2}, "finite"),
    ],
)
def test_bad_inputs_raise_budget_errors(kwargs, needle):
    with pytest.raises(BudgetError, match=needle.replace("[", "\\[")):
        plan_budgets(**kwargs)


def test_a_more_expensive_wc_is_flagged():
    plan = plan_budgets(se_samples=[1, 4], wc_params=3e9, se_params=1e9)
    assert [b.wc_samples for b in plan.budgets] == [0, 1]
    assert any("not the cheaper model" in note for note in plan.notes)
    assert any("0 samples" in note for note in plan.notes)


# --------------------------------------------------------------------------- measured mode


def test_measured_mode_from_a_real_sampling_ledger(tmp_path):
    from flopmatch import ledger

    for model, samples, seconds, tokens in (("small", 30, 60.0, 30 * 200), ("large", 10, 31.5, 10 * 180)):
        session = ledger.LedgerSession(run_dir=tmp_path, model=model, backend="hf", seeding="engine")
        for _ in range(samples):
            session.add(prompt_tokens=50, completion_tokens=tokens // samples, truncated=False)
        session.seconds = seconds
        session.flush("done")
    path = RunDir(tmp_path).ledger_path
    wc, se = measured_costs_from_ledger(path, "small", "large")
    assert (wc.samples, wc.seconds, wc.completion_tokens) == (30, 60.0, 6000)
    assert se.seconds_per_sample == pytest.approx(3.15) and se.tokens_per_sample == 180
    plan = plan_for_models(
        "small", "large", [1, 10], mode="measured", ledger=path, wc_params=5e8, se_params=1.5e9
    )
    assert plan.ratio == pytest.approx(3.15 / 2.0)
    assert [b.wc_samples for b in plan.budgets] == [1, 15]  # floor(1.575), floor(15.75)
    assert plan.wc.tokens == 200 and plan.se.tokens == 180  # mean lengths from the ledger
    assert plan.wc.cost_source == f"ledger:{path}"
    assert plan.budgets[1].wc_flops == 15 * 2 * 5e8 * 200  # FLOPs reported next to measured cost


def test_a_ledger_gives_mean_lengths_to_flops_mode(tmp_path):
    path = tmp_path / "ledger.parquet"
    table = {"model": ["a", "b", "a"], "samples": [10, 5, 10], "seconds": [1.0, 2.0, 1.0],
             "completion_tokens": [3000, 1000, 3000]}  # fmt: skip
    pq.write_table(pa.table(table), path)
    plan = plan_for_models("a", "b", [1, 10], wc_params=1e9, se_params=3e9, ledger=path)
    assert (plan.wc.tokens, plan.se.tokens) == (300, 200)
    assert plan.ratio == pytest.approx(2.0) and [b.wc_samples for b in plan.budgets] == [2, 20]
    assert plan.wc.cost_source is None and plan.wc.tokens_source == f"ledger:{path}"


def test_ledger_errors_name_the_problem(tmp_path):
    path = tmp_path / "ledger.parquet"
    pq.write_table(pa.table({"model": ["a"], "samples": [3], "seconds": [1.0]}), path)
    with pytest.raises(BudgetError, match="missing column.*completion_tokens"):
        measured_costs_from_ledger(path, "a", "b")
    pq.write_table(
        pa.table({"model": ["a"], "samples": [3], "seconds": [1.0], "completion_tokens": [9]}), path
    )
    with pytest.raises(BudgetError, match="no rows for model 'b'.*\\['a'\\]"):
        measured_costs_from_ledger(path, "a", "b")


def test_measured_mode_from_tokens_per_second():
    plan = plan_budgets(mode="measured", se_samples=[10], wc_tokens=200, se_tokens=200, wc_tokens_per_second=161,
                        se_tokens_per_second=106)  # fmt: skip
    assert plan.ratio == pytest.approx(161 / 106)
    assert plan.budgets[0].wc_samples == 15


# --------------------------------------------------------------------------- from model files


def test_plan_for_models_reads_configs(tmp_path):
    base = dict(model_type="llama", vocab_size=1000, hidden_size=64, intermediate_size=128, num_attention_heads=4,
                num_key_value_heads=4, tie_word_embeddings=True)  # fmt: skip
    paths = []
    for name, layers in (("wc", 1), ("se", 9)):
        path = Path(tmp_path / name)
        path.mkdir()
        (path / "config.json").write_text(json.dumps({**base, "num_hidden_layers": layers}))
        paths.append(str(path))
    plan = plan_for_models(paths[0], paths[1], [1, 10])
    # By hand: a layer has 4·64² attention + 3·64·128 MLP + 2·64 norm = 41,088 weights; the tied
    # embedding 1000·64 = 64,000 and the final norm 64 come once (transformers builds the same counts).
    small, large = 64_000 + 1 * 41_088 + 64, 64_000 + 9 * 41_088 + 64
    assert (small, large) == (105_152, 433_856)
    assert plan.ratio == pytest.approx(433_856 / 105_152)  # 4.126
    assert plan.wc.params == small and plan.se.params == large and plan.wc.param_source.startswith("config:")
    assert [b.wc_samples for b in plan.budgets] == [4, 41]  # floor(4.126), floor(41.26)
    # an override wins over the model
    assert plan_for_models(paths[0], paths[1], [1], wc_params=large).budgets[0].wc_samples == 1


# --------------------------------------------------------------------------- properties

positive = st.floats(min_value=1e-3, max_value=1e13, allow_nan=False, allow_infinity=False)
budgets = st.lists(st.integers(min_value=1, max_value=10_000), min_size=1, max_size=6)


@settings(max_examples=300, deadline=None)
@given(wc=positive, se=positive, wc_tokens=positive, se_tokens=positive, se_samples=budgets)
def test_floor_never_exceeds_the_se_budget_and_is_the_largest_such(wc, se, wc_tokens, se_tokens, se_samples):
    plan = plan_budgets(
        se_samples=se_samples, wc_params=wc, se_params=se, wc_tokens=wc_tokens, se_tokens=se_tokens
    )
    c_wc, c_se = exact(wc) * exact(wc_tokens), exact(se) * exact(se_tokens)
    for b in plan.budgets:
        assert b.wc_samples * c_wc <= b.se_samples * c_se  # exact: WC never spends more than SE
        assert (b.wc_samples + 1) * c_wc > b.se_samples * c_se  # and floor leaves less than one sample
        assert b.mismatch_pct <= 0


@settings(max_examples=200, deadline=None)
@given(wc=positive, se=positive, se_samples=budgets, rounding=st.sampled_from(["floor", "round", "ceil"]))
def test_number_mode_is_the_identity(wc, se, se_samples, rounding):
    plan = plan_budgets(mode="number", se_samples=se_samples, wc_params=wc, se_params=se, rounding=rounding)
    assert [b.wc_samples for b in plan.budgets] == se_samples
    assert all(b.mismatch_pct == 0 for b in plan.budgets)


@settings(max_examples=200, deadline=None)
@given(wc=positive, se=positive, se_samples=budgets)
def test_ceil_never_spends_less_and_counts_grow_with_the_budget(wc, se, se_samples):
    ceil = plan_budgets(mode="price", se_samples=se_samples, wc_price=wc, se_price=se, rounding="ceil")
    floor = plan_budgets(mode="price", se_samples=se_samples, wc_price=wc, se_price=se)
    ratio = exact(se) / exact(wc)
    for lo, hi in zip(floor.budgets, ceil.budgets, strict=True):
        assert hi.wc_samples * exact(wc) >= hi.se_samples * exact(se)
        assert hi.wc_samples - lo.wc_samples == (0 if (ratio * lo.se_samples).denominator == 1 else 1)
    ordered = sorted(floor.budgets, key=lambda b: b.se_samples)
    assert all(a.wc_samples <= b.wc_samples for a, b in zip(ordered, ordered[1:], strict=False))
    assert Fraction(floor.ratio_exact) == ratio


@pytest.mark.slow
def test_cli_offline_qwen_pair_from_registry_names():
    if not offline_pair_installed():
        pytest.skip(SKIP_REASON)
    plan = _plan_cli(
        "--wc", "qwen2.5-coder-0.5b-instruct", "--se", "qwen2.5-coder-1.5b-instruct", "--se-samples", "1,10"
    )
    assert plan["ratio"] == pytest.approx(1_543_714_304 / 494_032_768)  # 3.12
    assert _counts(plan) == [(1, 3), (10, 31)]
    assert plan["wc"]["param_source"].startswith("gguf:")
