"""The paired statistics against exact small cases and simulations (flopmatch.paired)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from flopmatch import paired

# --------------------------------------------------------------------------- McNemar


def _mcnemar_by_enumeration(b: int, c: int) -> float:
    """Independent computation: enumerate every assignment of the b + c discordant problems to a side
    (each equally likely under the null) and count those at least as extreme as |b − c|."""
    n = b + c
    observed = abs(b - c)
    extreme = sum(1 for signs in itertools.product((0, 1), repeat=n) if abs(2 * sum(signs) - n) >= observed)
    return extreme / 2**n


@pytest.mark.parametrize("b,c", [(b, c) for b in range(0, 8) for c in range(0, 8)])
def test_mcnemar_exact_matches_enumeration(b, c):
    assert paired.mcnemar_exact(b, c) == pytest.approx(_mcnemar_by_enumeration(b, c), abs=1e-12)


def test_mcnemar_from_outcomes_counts_only_discordant_problems():
    wc = [1, 1, 1, 0, 0, 1, 1, 1]
    se = [1, 0, 0, 0, 1, 0, 0, 1]
    assert paired.discordant_counts(wc, se) == (4, 1)
    assert paired.mcnemar_exact(4, 1) == pytest.approx(_mcnemar_by_enumeration(4, 1))
    with pytest.raises(paired.PairedError, match="0/1") as info:
        paired.discordant_counts([0.5, 1], [0, 1])
    assert isinstance(info.value, ValueError)  # what Python callers caught before
    with pytest.raises(ValueError, match="same length"):
        paired.discordant_counts([1, 0], [1])


def test_mcnemar_large_n_agrees_with_scipy_binomtest():
    from scipy.stats import binomtest

    assert paired.mcnemar_exact(60, 35) == pytest.approx(binomtest(35, 95, 0.5).pvalue, rel=1e-9)


# --------------------------------------------------------------------------- bootstrap


def _simulated_pairs(rng, n, p_se, delta, discordance):
    """0/1 outcomes of two students on n problems with a known difference and discordance rate."""
    u = rng.random(n)
    wc_only, se_only = (discordance + delta) / 2, (discordance - delta) / 2
    both = p_se - se_only
    wc = (u < wc_only).astype(float)
    se = ((u >= wc_only) & (u < wc_only + se_only)).astype(float)
    shared = (u >= wc_only + se_only) & (u < wc_only + se_only + both)
    return wc + shared, se + shared


def test_paired_bootstrap_interval_covers_the_true_difference_about_95_percent():
    rng = np.random.default_rng(1)
    delta, hits, sims = 0.05, 0, 200
    for i in range(sims):
        wc, se = _simulated_pairs(rng, 300, 0.4, delta, 0.2)
        ci = paired.paired_bootstrap(wc, se, n_boot=400, seed=i)
        hits += ci.low <= delta <= ci.high
    assert 0.89 <= hits / sims <= 0.99


def test_hierarchical_bootstrap_covers_a_seed_level_shift_that_a_problem_bootstrap_misses():
    """Each training seed shifts the whole score (sd 4 pts): resampling seeds as well keeps coverage
    near nominal, resampling only problems of the seed means does not."""
    rng = np.random.default_rng(2)
    n, seeds, tau, delta, sims = 300, 4, 0.04, 0.0, 150
    hier = flat = 0
    for i in range(sims):
        base = rng.random(n) < 0.4
        sides = []
        for _ in range(2):
            shift = rng.normal(0, tau, size=seeds)
            flips = rng.random((seeds, n)) < 0.04 + np.abs(shift)[:, None]
            target = (shift > 0)[:, None]  # a positive shift flips wrong answers right, a negative one the reverse
            sides.append(np.where(flips, target, base[None, :]).astype(float))
        ci = paired.paired_bootstrap(sides[0], sides[1], n_boot=300, seed=i)
        hier += ci.low <= delta <= ci.high
        flat_ci = paired.paired_bootstrap(sides[0].mean(0), sides[1].mean(0), n_boot=300, seed=i)
        flat += flat_ci.low <= delta <= flat_ci.high
    assert hier / sims >= 0.85
    assert flat / sims < hier / sims - 0.1


def test_bootstrap_rejects_mismatched_or_missing_values():
    with pytest.raises(ValueError, match="same"):
        paired.bootstrap_differences(np.ones((2, 5)), np.ones(4))
    with pytest.raises(ValueError, match="NaN"):
        paired.paired_bootstrap([1, np.nan], [1, 0])


def test_bootstrap_is_reproducible_for_a_seed():
    rng = np.random.default_rng(3)
    wc, se = rng.random((2, 50)), rng.random((3, 50))
    a = paired.bootstrap_differences(wc, se, n_boot=300, seed=7)
    b = paired.bootstrap_differences(wc, se, n_boot=300, seed=7)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, paired.bootstrap_differences(wc, se, n_boot=300, seed=8))


# --------------------------------------------------------------------------- permutation


def test_sign_flip_test_matches_exhaustive_enumeration_on_a_small_case():
    d = np.array([0.5, 1.0, 0.25, -0.25, 0.75, 1.0, 0.0, 0.5])
    nonzero = d[d != 0]
    observed = abs(nonzero.sum())
    exact = np.mean([abs(np.dot(s, nonzero)) >= observed - 1e-12
                     for s in itertools.product((-1, 1), repeat=nonzero.size)])  # fmt: skip
    assert paired.sign_flip_test(d, n_perm=40000, seed=0) == pytest.approx(exact, abs=0.01)


def test_sign_flip_test_is_uniform_under_the_null():
    rng = np.random.default_rng(4)
    ps = [paired.sign_flip_test(rng.normal(size=40), n_perm=400, seed=i) for i in range(300)]
    assert 0.02 <= np.mean(np.array(ps) < 0.05) <= 0.09
    assert paired.sign_flip_test(np.zeros(10)) == 1.0


# --------------------------------------------------------------------------- Holm


def test_holm_against_a_hand_computed_case():
    # sorted p: 0.01 (x4 = 0.04), 0.02 (x3 = 0.06), 0.03 (x2 = 0.06), 0.04 (x1 = 0.04 -> running max 0.06)
    adjusted = paired.holm([0.03, 0.01, 0.04, 0.02])
    assert adjusted == pytest.approx([0.06, 0.04, 0.06, 0.06])
    adjusted = paired.holm([0.5, float("nan"), 0.001])
    assert adjusted[0] == pytest.approx(0.5) and math.isnan(adjusted[1]) and adjusted[2] == pytest.approx(0.002)
    assert paired.holm([0.9, 0.8]).max() <= 1.0


# --------------------------------------------------------------------------- power


def test_mde_formula_and_the_deciding_md_figures():
    assert paired.mde_paired(200, 0.15) == pytest.approx(2.8016 * math.sqrt(0.15 / 200), rel=1e-3)
    assert paired.mde_paired(200, 0.15) == pytest.approx(0.077, abs=0.001)
    assert paired.mde_paired(1000, 0.15) == pytest.approx(0.034, abs=0.001)
    assert paired.problems_for_mde(paired.mde_paired(500, 0.2), 0.2) == 500
    seedy = {"seeds": 2, "seed_discordance": 0.08, "seed_sd": 0.01}
    assert paired.problems_for_mde(paired.mde_paired(700, 0.16, **seedy), 0.16, **seedy) == 700
    assert paired.problems_for_mde(0.02, 0.16, **seedy) == math.inf  # 2τ²/S alone is above the target
    # seeds: less problem-level variance, plus the seed-level term
    assert paired.mde_paired(200, 0.15, seeds=3, seed_discordance=0.08) < paired.mde_paired(200, 0.15)
    assert paired.mde_paired(200, 0.15, seed_sd=0.02) > paired.mde_paired(200, 0.15)
    with pytest.raises(ValueError, match="seed_discordance"):
        paired.mde_paired(200, 0.1, seed_discordance=0.2)


def test_one_seed_mde_gives_80_percent_power_to_mcnemar():
    """Simulated pairs whose true difference is the MDE: McNemar's exact test rejects about 80% of the time
    (a little less: the exact test is conservative), and about 5% at no difference."""
    rng = np.random.default_rng(5)
    n, d = 400, 0.2
    mde = paired.mde_paired(n, d)
    powers = []
    for delta in (mde, 0.0):
        rejected = 0
        for _ in range(400):
            wc, se = _simulated_pairs(rng, n, 0.4, delta, d)
            rejected += paired.mcnemar_exact(*paired.discordant_counts(wc, se)) < 0.05
        powers.append(rejected / 400)
    assert 0.70 <= powers[0] <= 0.88
    assert powers[1] <= 0.08


def test_seed_aware_mde_matches_a_simulation_of_its_model():
    """Simulate the documented model (stable per-problem outcomes, per-seed flips at rate d_s/2 per side,
    a global seed shift of sd τ): the spread of the seed-averaged difference matches paired_se, and a
    test at that standard error has ≈80% power at the MDE."""
    rng = np.random.default_rng(6)
    n, seeds, d, d_s, tau = 400, 3, 0.2, 0.08, 0.015
    se_formula = paired.paired_se(n, d, seeds=seeds, seed_discordance=d_s, seed_sd=tau)
    mde = paired.mde_paired(n, d, seeds=seeds, seed_discordance=d_s, seed_sd=tau)

    def one_study(delta):
        # stable part: the two recipes' answers differ on d - d_s of the problems; the seed noise below
        # shrinks every difference by (1 - d_s), so the stable difference is scaled up to keep delta
        stable_wc, stable_se = _simulated_pairs(rng, n, 0.4, delta / (1 - d_s), d - d_s)
        means = []
        for stable in (stable_wc, stable_se):
            # each seed re-draws a fraction d_s of its answers at random (flipping about d_s/2): two seeds of
            # one recipe then disagree on ≈ d_s of the problems, a per-seed variance of ≈ d_s/2 per side
            redraw = rng.random((seeds, n)) < d_s
            noise = np.where(redraw, rng.integers(0, 2, (seeds, n)) - stable[None, :], 0.0)
            means.append((stable[None, :] + noise).mean() + rng.normal(0, tau, size=seeds).mean())
        return means[0] - means[1]

    null = np.array([one_study(0.0) for _ in range(1500)])
    assert null.std() == pytest.approx(se_formula, rel=0.12)
    alt = np.array([one_study(mde) for _ in range(800)])
    power = np.mean(np.abs(alt) > 1.96 * se_formula)
    assert 0.72 <= power <= 0.88


# --------------------------------------------------------------------------- comparisons and verdicts


def test_compare_paired_uses_mcnemar_for_one_seed_and_sign_flip_for_several():
    rng = np.random.default_rng(7)
    wc, se = _simulated_pairs(rng, 200, 0.3, 0.1, 0.2)
    one = paired.compare_paired(wc, se, n_boot=300)
    assert one.test == "McNemar exact" and one.seeds == 1 and one.problems == 200
    assert one.p_value == paired.mcnemar_exact(*paired.discordant_counts(wc, se))
    assert one.diff == pytest.approx(wc.mean() - se.mean())
    assert one.ci_low < one.diff < one.ci_high
    assert one.discordance == pytest.approx(np.mean(wc != se))
    # MDE from the bootstrap se is close to the closed form at the observed discordance
    assert one.mde == pytest.approx(paired.mde_paired(200, one.discordance), rel=0.2)
    two = paired.compare_paired(np.vstack([wc, wc]), np.vstack([se, 1 - se]), n_boot=300, n_perm=500)
    assert two.test == "sign-flip permutation" and two.seeds == 2


def test_verdict_words():
    assert paired.verdict(0.06, 0.02, 0.1, 0.01, 3, 0.04) == "WC data better"
    assert paired.verdict(-0.06, -0.1, -0.02, 0.01, 2, 0.04) == "SE data better"
    assert paired.verdict(-0.06, -0.1, -0.02, 0.01, 1, 0.04) == "one seed: not a verdict"
    assert paired.verdict(0.02, -0.01, 0.05, 0.2, 3, 0.04) == "no detectable difference (MDE 4.0 pts)"
    # significant p but an interval through 0 (seed noise): no verdict
    assert paired.verdict(0.03, -0.01, 0.07, 0.01, 3, 0.05).startswith("no detectable difference")


# --------------------------------------------------------------------------- the study's comparison table


def _synthetic_run(seeds=(0, 1), n=120, effect=0.15):
    """paradigms.parquet-like rows and per-problem values: WC data better by ``effect`` at budget 10 only."""
    import pandas as pd

    rng = np.random.default_rng(11)
    ids = [f"toy-{i:04d}" for i in range(n)]
    base_skill = rng.random(n)
    values, rows = {}, []
    for budget in (1, 10):
        for data in ("se", "wc", "base"):
            for seed in (seeds if data != "base" else (None,)):
                name = f"kd-{data}-b{budget}" + (f"-s{seed}" if seed else "") if data != "base" else "base-student"
                lift = effect if (data == "wc" and budget == 10) else 0.0
                greedy = (rng.random(n) < np.clip(base_skill * 0.5 + lift + 0.05 * rng.random(), 0, 1)).astype(float)
                values[name] = pd.DataFrame({"pass@1": greedy, "maj@2": rng.integers(0, 3, n) / 2,
                                             "sample_accuracy": rng.random(n)}, index=ids)  # fmt: skip
                for metric in ("pass@1", "maj@2", "sample_accuracy"):
                    rows.append({"paradigm": "knowledge_distillation", "budget_se_samples": budget, "wc_samples": 3 * budget,
                                 "student": "toy student", "data": data, "model_name": name, "seed": seed,
                                 "metric": metric, "value": float(values[name][metric].mean()),
                                 "ci_low": float("nan"), "ci_high": float("nan")})  # fmt: skip
    return pd.DataFrame(rows), values


def test_comparison_table_averages_seeds_corrects_and_decides():
    from flopmatch.comparisons import CompareSettings, comparison_table
    from flopmatch.store.schemas import COMPARISON_COLUMNS

    paradigms, values = _synthetic_run()
    loads = []
    table = comparison_table(paradigms, lambda name: loads.append(name) or values[name],
                             CompareSettings(n_boot=400, n_perm=2000))  # fmt: skip
    assert list(table.columns) == COMPARISON_COLUMNS
    assert len(loads) == len(set(loads))  # each evaluation read once
    assert set(table["comparison"]) == {"wc_vs_se", "wc_vs_base", "se_vs_base"}  # no number-matched rows here
    assert "sample_accuracy" not in set(table["metric"])
    row = table[(table.comparison == "wc_vs_se") & (table.metric == "pass@1") & (table.budget_se_samples == 10)].iloc[0]
    wc = np.mean([values["kd-wc-b10"]["pass@1"].mean(), values["kd-wc-b10-s1"]["pass@1"].mean()])
    se = np.mean([values["kd-se-b10"]["pass@1"].mean(), values["kd-se-b10-s1"]["pass@1"].mean()])
    assert row.wc == pytest.approx(wc) and row.se == pytest.approx(se) and row["diff"] == pytest.approx(wc - se)
    assert row.seeds == 2 and row.test_problems == 120 and row.test == "sign-flip permutation"
    assert row.ci_low > 0 and row.verdict == "WC data better"
    # Holm within (comparison, metric): two budgets in the family
    family = table[(table.comparison == "wc_vs_se") & (table.metric == "pass@1")]
    assert family["p_adjusted"].to_numpy() == pytest.approx(paired.holm(family["p_value"].to_numpy()))
    low = family[family.budget_se_samples == 1].iloc[0]
    assert low.verdict.startswith("no detectable difference (MDE ")
    assert row.mde_relative == pytest.approx(row.mde / row.se * 100)
    # seed noise: two seeds of one recipe disagree on part of the problems (each side drew its own answers)
    expected = np.mean([np.mean(values[f"kd-{k}-b10"]["pass@1"] != values[f"kd-{k}-b10-s1"]["pass@1"])
                        for k in ("wc", "se")])  # fmt: skip
    assert row.seed_discordance == pytest.approx(expected) and row.seed_sd >= 0


def test_comparison_table_with_one_seed_is_never_a_verdict():
    from flopmatch.comparisons import CompareSettings, comparison_table

    paradigms, values = _synthetic_run(seeds=(0,), effect=0.3)
    table = comparison_table(paradigms, values.__getitem__, CompareSettings(n_boot=300, n_perm=1000))
    row = table[(table.comparison == "wc_vs_se") & (table.metric == "pass@1") & (table.budget_se_samples == 10)].iloc[0]
    assert row.test == "McNemar exact" and row.p_adjusted < 0.05
    assert row.verdict == "one seed: not a verdict"
    assert math.isnan(row.seed_discordance) and math.isnan(row.seed_sd)


def test_comparison_table_refuses_models_evaluated_on_other_problems():
    from flopmatch.comparisons import CompareSettings, ComparisonError, comparison_table

    paradigms, values = _synthetic_run(seeds=(0,))
    values["kd-wc-b1"] = values["kd-wc-b1"].iloc[:-3]
    with pytest.raises(ComparisonError, match="different test problems"):
        comparison_table(paradigms, values.__getitem__, CompareSettings(n_boot=50, n_perm=50))


# --------------------------------------------------------------------------- the report


def test_report_verdict_table_and_forest_plot_come_from_the_comparisons(tmp_path):
    from flopmatch.budget import plan_budgets
    from flopmatch.comparisons import CompareSettings, comparison_table
    from flopmatch.report import RunData, build_document, compute_verdict, iter_blocks
    from flopmatch.store import RunDir

    paradigms, values = _synthetic_run()
    table = comparison_table(paradigms, values.__getitem__, CompareSettings(n_boot=300, n_perm=1000))
    plan = plan_budgets(mode="flops", se_samples=[1, 10], wc_params=1e9, se_params=3e9)  # SE 1 vs WC 3, 10 vs 30
    data = RunData(run=RunDir(tmp_path), config=None, roles={}, plan=plan, ledger=None, cost=None, summary=None,
                   coverage=None, matched=None, paradigms=paradigms, problems={}, figures=[], stages={},
                   comparisons=table)  # fmt: skip
    lines = compute_verdict(data)
    high = next(line for line in lines if "high budget" in line)
    row = table[(table.comparison == "wc_vs_se") & (table.metric == "pass@1") & (table.budget_se_samples == 10)].iloc[0]
    assert high.startswith("Paired, WC data vs SE data: knowledge distillation at the high budget (SE 10 vs WC 30): "
                           "**WC data better**")  # fmt: skip
    assert f"{row['diff'] * 100:+.1f} pts" in high and "2 seeds, 120 problems" in high
    low = next(line for line in lines if "low budget" in line)
    assert "**no detectable difference (MDE" in low
    assert not any(line.startswith("WC data beat SE data") for line in lines)  # the unpaired count is replaced
    report = build_document(data, figures_dir=tmp_path / "figures")
    blocks = list(iter_blocks(report))
    paired_tables = [b for b in blocks if getattr(b, "columns", None) and "difference [95% CI]" in b.columns]
    assert len(paired_tables) == 1 and any("**WC data better**" in r for r in paired_tables[0].rows)
    forest = tmp_path / "figures" / "paired_forest.png"
    assert forest.exists() and forest.read_bytes()[:4] == b"\x89PNG"


def test_compare_cli_errors_name_the_problem(tmp_path):
    from typer.testing import CliRunner

    from flopmatch.cli import app

    (tmp_path / "run").mkdir()
    res = CliRunner().invoke(app, ["compare", str(tmp_path / "run")])
    assert res.exit_code == 2 and "paradigms.parquet" in res.output and "eval stage" in res.output
    res = CliRunner().invoke(app, ["compare", str(tmp_path / "run"), "--comparison", "wc_vs_sE"])
    assert res.exit_code == 2 and "wc_vs_sE" in res.output and "wc_vs_se" in res.output


def test_compare_run_reads_evaluation_files(tmp_path):
    """compare_run on a run directory: per-problem values recomputed from evals/*.parquet (greedy pass@1 and
    maj@k from the sampled rows), written to comparisons.parquet and .md."""
    import pandas as pd

    from flopmatch.comparisons import ComparisonError, EvaluationMissing, compare_run, per_problem_values
    from flopmatch.store import RunDir, write_json, write_table

    run = RunDir(tmp_path / "run")
    rng = np.random.default_rng(12)
    ids = [f"p{i:03d}" for i in range(40)]
    rows = []
    for data in ("se", "wc"):
        name = f"kd-{data}-b1"
        eval_rows = []
        for pid in ids:
            eval_rows.append({"problem_id": pid, "mode": "greedy", "sample_idx": 0,
                              "status": "correct" if rng.random() < (0.3 if data == "se" else 0.6) else "wrong",
                              "extracted": "1"})  # fmt: skip
            for idx in range(2):
                eval_rows.append({"problem_id": pid, "mode": "sample", "sample_idx": idx,
                                  "status": "correct" if rng.random() < 0.5 else "wrong", "extracted": str(idx)})  # fmt: skip
        write_table(eval_rows, run.eval_path(name))
        write_json({"config": {"ks": [1, 2]}}, run.eval_path(name).with_suffix(".json"))
        for metric in ("pass@1", "maj@2"):
            rows.append({"paradigm": "knowledge_distillation", "budget_se_samples": 1, "wc_samples": 3, "student": "s",
                         "data": data, "model_name": name, "seed": 0, "metric": metric, "value": 0.0})  # fmt: skip
    write_table(rows, run.metrics_dir / "paradigms.parquet")
    values = per_problem_values(run.eval_path("kd-wc-b1"))
    assert list(values.index) == ids and {"pass@1", "maj@1", "maj@2", "pass@2"} <= set(values.columns)
    table = compare_run(run.root)
    saved = pd.read_parquet(run.metrics_dir / "comparisons.parquet")
    assert len(saved) == len(table) and set(saved["metric"]) == {"pass@1", "maj@1", "maj@2", "pass@2"}
    row = saved[saved["metric"] == "pass@1"].iloc[0]
    assert row["wc"] == pytest.approx(values["pass@1"].mean()) and row["test"] == "McNemar exact"
    assert "| knowledge distillation | 1 | pass@1 | wc_vs_se |" in (run.metrics_dir / "comparisons.md").read_text()
    # a subset of training seeds is what fewer seeds would conclude; it never replaces the written table
    (run.metrics_dir / "comparisons.parquet").unlink()
    assert compare_run(run.root, training_seeds=[0])["diff"].tolist() == table["diff"].tolist()
    assert not (run.metrics_dir / "comparisons.parquet").exists()
    with pytest.raises(ComparisonError, match=r"paradigms.parquet: no training seed \[5\]; the run has \[0\]"):
        compare_run(run.root, training_seeds=[5])
    with pytest.raises(EvaluationMissing, match=r"paradigms.parquet: no paradigm results yet") as info:
        compare_run(tmp_path / "no-run")
    assert isinstance(info.value, FileNotFoundError)


@pytest.mark.parametrize("seeds,tau", [(2, 0.0), (3, 0.0), (3, 0.02), (2, 0.03)])
def test_two_level_bootstrap_standard_error_matches_the_spread_of_the_estimate(seeds, tau):
    """Simulate the module's model (stable answers, per-seed flips, a global seed shift τ): the bootstrap
    standard error matches the true spread of the seed-averaged difference across simulated studies,
    neither missing the seed shift nor counting the per-problem flips twice."""
    rng = np.random.default_rng(13 + seeds)
    n, d, d_s = 300, 0.2, 0.08
    estimates, ses = [], []
    for k in range(250):
        stable_wc, stable_se = _simulated_pairs(rng, n, 0.4, 0.0, d - d_s)
        sides = []
        for stable in (stable_wc, stable_se):
            redraw = rng.random((seeds, n)) < d_s
            noise = np.where(redraw, rng.integers(0, 2, (seeds, n)) - stable[None, :], 0.0)
            sides.append(stable[None, :] + noise + rng.normal(0, tau, size=(seeds, 1)))
        estimates.append(sides[0].mean() - sides[1].mean())
        ses.append(paired.bootstrap_differences(sides[0], sides[1], n_boot=300, seed=k).std())
    assert np.mean(ses) == pytest.approx(np.std(estimates), rel=0.2)
    assert paired.seed_shift_variance(np.ones((1, 5))) == 0.0


def test_compare_settings_are_a_checked_frozen_config():
    from flopmatch.comparisons import CompareSettings

    with pytest.raises(ValueError, match="n_boot"):
        CompareSettings(n_boot=0)
    with pytest.raises(ValueError, match="alpha"):
        CompareSettings(alpha=1.5)
    with pytest.raises(ValueError, match="frozen"):
        CompareSettings().seed = 3  # type: ignore[misc]
