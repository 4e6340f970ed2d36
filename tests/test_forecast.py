"""flopmatch.forecast: fits recover known parameters, forecasts equal exact expectations computed
independently (numeric integration / Monte Carlo), k <= n forecasts agree with the unbiased estimator,
and the CLI (counts files with bad rows, a run directory)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import integrate, special, stats
from typer.testing import CliRunner

from flopmatch.cli import app
from flopmatch.forecast import (
    ENVELOPE_FAMILIES,
    ENVELOPE_NATS,
    SuccessFit,
    UniqueFit,
    fit_power_law,
    fit_success,
    fit_unique,
    forecast_counts,
    heldout_log_likelihood,
    pilot_coverage,
    plausible_fits,
    unbiased_coverage,
)
from flopmatch.store import RunDir, append_shard, write_table


def simulate(rng, problems: int, n: int, a: float, b: float, pi: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    p = np.where(rng.random(problems) < pi, 0.0, rng.beta(a, b, problems))
    return np.full(problems, n), rng.binomial(n, p)


def crp_unique(rng, draws: int, theta: float, discount: float = 0.0) -> int:
    """Distinct tables after ``draws`` customers of a (Pitman-Yor) Chinese restaurant (direct simulation)."""
    return py_path(rng, draws, theta, discount)[-1] if draws else 0


def py_path(rng, draws: int, theta: float, discount: float) -> list[int]:
    """Distinct tables after each of ``draws`` customers: new with probability (theta + K d) / (theta + j)."""
    tables, path = 0, []
    for j in range(draws):
        if j == 0 or rng.random() < (theta + tables * discount) / (theta + j):
            tables += 1
        path.append(tables)
    return path


# --------------------------------------------------------------------------- fits


def test_beta_binomial_fit_recovers_known_parameters():
    rng = np.random.default_rng(1)
    n, c = simulate(rng, 3000, 10, a=0.5, b=2.0)
    fit = fit_success(n, c, family="beta-binomial")
    assert fit.family == "beta-binomial"
    assert fit.a == pytest.approx(0.5, rel=0.15)
    assert fit.b == pytest.approx(2.0, rel=0.15)


def test_zero_inflated_fit_recovers_pi_and_is_chosen_by_heldout_likelihood():
    rng = np.random.default_rng(2)
    n, c = simulate(rng, 3000, 16, a=2.0, b=3.0, pi=0.4)
    fit = fit_success(n, c)  # auto
    assert fit.family == "zero-inflated-beta"
    assert set(fit.candidates) == {"beta-binomial", "zero-inflated-beta", "logit-normal", "skew-logit-normal"}
    assert fit.candidates["zero-inflated-beta"] > max(fit.candidates["beta-binomial"], fit.candidates["logit-normal"])
    assert fit.pi == pytest.approx(0.4, abs=0.04)
    assert fit.a / (fit.a + fit.b) == pytest.approx(0.4, abs=0.04)


def test_beta_mixture_fit_recovers_two_groups_of_problems():
    rng = np.random.default_rng(12)
    n1, c1 = simulate(rng, 1500, 16, a=1.0, b=12.0)
    n2, c2 = simulate(rng, 1500, 16, a=8.0, b=2.0)
    fit = fit_success(np.r_[n1, n2], np.r_[c1, c2], family="beta-mixture")
    low, high = sorted([(fit.params["a1"] / (fit.params["a1"] + fit.params["b1"]), fit.params["w"]),
                        (fit.params["a2"] / (fit.params["a2"] + fit.params["b2"]), 1 - fit.params["w"])])
    assert low[0] == pytest.approx(1 / 13, abs=0.02) and high[0] == pytest.approx(0.8, abs=0.03)
    assert low[1] == pytest.approx(0.5, abs=0.05)


def test_logit_normal_fit_recovers_known_parameters_and_is_chosen_by_auto():
    rng = np.random.default_rng(13)
    n = np.full(3000, 12)
    c = rng.binomial(n, special.expit(rng.normal(-1.5, 2.0, len(n))))
    fit = fit_success(n, c)  # auto
    assert fit.family == "logit-normal"
    assert fit.candidates["logit-normal"] > fit.candidates["beta-binomial"]
    assert fit.params["mu"] == pytest.approx(-1.5, abs=0.15)
    assert fit.params["sigma"] == pytest.approx(2.0, rel=0.1)


def test_skew_logit_normal_recovers_a_one_sided_left_tail():
    """logit p ~ SkewNormal(alpha > 0): a thin left tail. The skew family recovers the shape, beats the
    symmetric logit-normal on held-out likelihood, and forecasts large-k coverage where the symmetric one
    under-forecasts it (its left tail holds problems that do not exist)."""
    rng = np.random.default_rng(17)
    mu, sigma, alpha = -5.0, 2.5, 6.0
    n = np.full(3000, 10)
    c = rng.binomial(n, special.expit(stats.skewnorm.rvs(alpha, mu, sigma, len(n), random_state=rng)))
    skew = fit_success(n, c, family="skew-logit-normal")
    assert skew.params["mu"] == pytest.approx(mu, abs=0.5)
    assert skew.params["sigma"] == pytest.approx(sigma, rel=0.2)
    assert skew.params["alpha"] > 1.0  # its size is poorly identified from 10 samples a problem, its sign is not
    truth = SuccessFit("skew-logit-normal", {"mu": mu, "sigma": sigma, "alpha": alpha}, 0.0, None)
    symmetric = fit_success(n, c, family="logit-normal")
    for k in (100, 1000):
        assert symmetric.coverage(k) < skew.coverage(k) < truth.coverage(k) + 0.01
        assert abs(skew.coverage(k) - truth.coverage(k)) < abs(symmetric.coverage(k) - truth.coverage(k)) - 0.02
    assert heldout_log_likelihood("skew-logit-normal", n, c) > heldout_log_likelihood("logit-normal", n, c) + 1
    assert fit_success(n, c).family == "skew-logit-normal"  # one of auto's candidates, and its pick here
    # the optimiser lands on the maximum of the module's own likelihood: every small step lowers it
    best = float(np.sum(skew.prior.log_marginal(n.astype(float), c.astype(float))))
    assert skew.log_likelihood == pytest.approx(best, abs=1e-6)
    for key in skew.params:
        for step in (-0.02, 0.02):
            moved = SuccessFit("skew-logit-normal", dict(skew.params, **{key: skew.params[key] + step}), 0.0, None)
            assert float(np.sum(moved.prior.log_marginal(n.astype(float), c.astype(float)))) <= best + 1e-7


def test_alpha_zero_skew_logit_normal_is_the_logit_normal():
    plain = SuccessFit("logit-normal", {"mu": -1.0, "sigma": 2.0}, 0.0, None)
    skew = SuccessFit("skew-logit-normal", {"mu": -1.0, "sigma": 2.0, "alpha": 0.0}, 0.0, None)
    assert skew.coverage(np.array([1, 10, 1000])) == pytest.approx(plain.coverage(np.array([1, 10, 1000])), abs=1e-12)


def test_plain_beta_data_does_not_need_zero_inflation():
    rng = np.random.default_rng(3)
    n, c = simulate(rng, 3000, 10, a=1.0, b=1.0)
    fit = fit_success(n, c, family="zero-inflated-beta")
    assert fit.pi < 0.05


def test_fits_accept_unequal_samples_per_problem():
    rng = np.random.default_rng(4)
    n = rng.integers(2, 30, 3000)
    c = rng.binomial(n, rng.beta(0.7, 1.4, len(n)))
    fit = fit_success(n, c, family="beta-binomial")
    assert fit.a == pytest.approx(0.7, rel=0.15)
    assert fit.b == pytest.approx(1.4, rel=0.15)


def independent_log_likelihood(family: str, params: dict, n: np.ndarray, c: np.ndarray) -> float:
    """log P(counts) from scipy.stats.betabinom, written apart from the module's closed-form likelihood."""
    if family == "beta-mixture":
        parts = [params["w"] * stats.betabinom.pmf(c, n, params["a1"], params["b1"]),
                 (1 - params["w"]) * stats.betabinom.pmf(c, n, params["a2"], params["b2"])]
        return float(np.sum(np.log(parts[0] + parts[1])))
    pi = params.get("pi", 0.0)
    return float(np.sum(np.log((1 - pi) * stats.betabinom.pmf(c, n, params["a"], params["b"]) + pi * (c == 0))))


@pytest.mark.parametrize("family", ["beta-binomial", "zero-inflated-beta", "beta-mixture"])
def test_fit_is_the_maximum_of_the_independently_computed_likelihood(family):
    """The gradient-based optimiser lands on the maximum: every small step in any parameter lowers it."""
    rng = np.random.default_rng(21)
    n = rng.integers(4, 17, 400)
    p = np.where(rng.random(400) < 0.3, 0.0, np.where(rng.random(400) < 0.5, rng.beta(0.5, 6, 400),
                                                       rng.beta(4, 1.5, 400)))
    c = rng.binomial(n, p)
    fit = fit_success(n, c, family=family)
    best = independent_log_likelihood(family, fit.params, n, c)
    assert fit.log_likelihood == pytest.approx(best, abs=1e-6)
    for key in fit.params:
        for step in (0.99, 1.01):
            moved = dict(fit.params, **{key: fit.params[key] * step})
            if key in ("w", "pi") and not 0 < moved[key] < 1:
                continue
            assert independent_log_likelihood(family, moved, n, c) <= best + 1e-7, (key, step)


def test_fit_unique_recovers_crp_concentration():
    rng = np.random.default_rng(5)
    c = rng.integers(1, 40, 1500)
    u = np.array([crp_unique(rng, int(ci), 1.7) for ci in c])
    fit = fit_unique(c, u)
    assert fit.theta == pytest.approx(1.7, rel=0.12)
    assert fit.discount < 0.05


def test_fit_unique_recovers_pitman_yor_discount():
    rng = np.random.default_rng(15)
    c = rng.integers(1, 17, 1500)
    u = np.array([crp_unique(rng, int(ci), 0.8, 0.4) for ci in c])
    fit = fit_unique(c, u)
    assert fit.discount == pytest.approx(0.4, abs=0.05)
    assert fit.theta == pytest.approx(0.8, rel=0.25)
    assert fit_unique(c, u, start=fit).discount == pytest.approx(fit.discount, abs=1e-3)


def test_pitman_yor_expectations_equal_simulation():
    """E[K_m] and the growth from an observed (c, u) match direct simulation of the process."""
    rng = np.random.default_rng(16)
    model = UniqueFit(theta=0.8, log_likelihood=0.0, problems=0, discount=0.4)
    paths = np.array([py_path(rng, 30, 0.8, 0.4) for _ in range(4000)])
    final = paths[:, -1]
    assert abs(model.unique_given_correct(30) - final.mean()) < 4 * final.std() / math.sqrt(len(final))
    for u in (2, 3, 4):  # after 10 correct with u distinct, 20 more
        rows = final[paths[:, 9] == u]
        expected = u + model.growth(10, 20, u)
        assert abs(expected - rows.mean()) < 4 * rows.std() / math.sqrt(len(rows))


def test_bad_counts_name_the_problem():
    with pytest.raises(ValueError, match=r"problem 1: .*n=3, c=4"):
        fit_success([3, 3], [1, 4])
    with pytest.raises(ValueError, match=r"problem 0: unique_correct=0"):
        fit_unique([2], [0])


# --------------------------------------------------------------------------- exact expectations


FITS = [
    SuccessFit("beta-binomial", {"a": 0.3, "b": 2.5}, 0.0, None),
    SuccessFit("zero-inflated-beta", {"a": 1.2, "b": 0.8, "pi": 0.25}, 0.0, None),
    SuccessFit("beta-mixture", {"w": 0.4, "a1": 0.5, "b1": 6.0, "a2": 3.0, "b2": 1.0}, 0.0, None),
    SuccessFit("logit-normal", {"mu": -2.0, "sigma": 1.7}, 0.0, None),
    SuccessFit("skew-logit-normal", {"mu": -3.0, "sigma": 2.2, "alpha": 4.0}, 0.0, None),
]


def _expect(fit: SuccessFit, g) -> float:
    """E[g(p)] under the fit by numeric integration of the Beta densities (plus the mass at 0)."""
    params = fit.params
    if fit.family in ("logit-normal", "skew-logit-normal"):  # the continuous density: the grid must match it
        pdf = stats.skewnorm(params.get("alpha", 0.0), params["mu"], params["sigma"]).pdf
        return integrate.quad(lambda z: g(special.expit(z)) * pdf(z), -40, 40, limit=400)[0]
    parts = ([(params["w"], params["a1"], params["b1"]), (1 - params["w"], params["a2"], params["b2"])]
             if fit.family == "beta-mixture" else [(1.0, params["a"], params["b"])])
    pi = params.get("pi", 0.0)
    value = 0.0
    for weight, a, b in parts:
        pdf = stats.beta(a, b).pdf
        value += weight * integrate.quad(lambda p, pdf=pdf: g(p) * pdf(p), 0, 1, limit=400, points=[1e-6, 1e-3, 0.5])[0]
    return pi * g(0.0) + (1 - pi) * value


@pytest.mark.parametrize("fit", FITS, ids=lambda f: f.family)
@pytest.mark.parametrize("k", [1, 7, 100, 1000])
def test_coverage_and_correct_equal_numeric_integration(fit, k):
    assert fit.coverage(k) == pytest.approx(_expect(fit, lambda p: 1 - (1 - p) ** k), abs=1e-6)
    assert fit.expected_correct(k) == pytest.approx(k * _expect(fit, lambda p: p), rel=1e-6)


@pytest.mark.parametrize("fit", FITS, ids=lambda f: f.family)
@pytest.mark.parametrize(("n", "c", "m"), [(8, 0, 50), (8, 3, 10), (4, 4, 1000), (16, 0, 1)])
def test_posterior_functions_equal_bayes_rule(fit, n, c, m):
    def like(p: float) -> float:
        return p**c * (1 - p) ** (n - c)

    evidence = _expect(fit, like)
    miss = _expect(fit, lambda p: like(p) * (1 - p) ** m) / evidence
    mean = _expect(fit, lambda p: like(p) * p) / evidence
    assert fit.posterior_miss(np.array([n]), np.array([c]), m)[0] == pytest.approx(miss, rel=1e-5, abs=1e-9)
    assert fit.posterior_mean(np.array([n]), np.array([c]))[0] == pytest.approx(mean, rel=1e-5, abs=1e-9)


@pytest.mark.parametrize("fit", FITS, ids=lambda f: f.family)
def test_unique_at_k_equals_monte_carlo(fit):
    rng = np.random.default_rng(6)
    model, k, draws = UniqueFit(theta=1.3, log_likelihood=0.0, problems=0), 30, 6000
    if fit.family in ("logit-normal", "skew-logit-normal"):
        params = fit.params
        p = special.expit(stats.skewnorm.rvs(params.get("alpha", 0.0), params["mu"], params["sigma"], draws,
                                             random_state=rng))
    elif fit.family == "beta-mixture":
        first = rng.random(draws) < fit.params["w"]
        p = np.where(first, rng.beta(fit.params["a1"], fit.params["b1"], draws),
                     rng.beta(fit.params["a2"], fit.params["b2"], draws))
    else:
        p = np.where(rng.random(draws) < fit.pi, 0.0, rng.beta(fit.a, fit.b, draws))
    values = np.array([crp_unique(rng, int(ci), model.theta) for ci in rng.binomial(k, p)])
    se = values.std() / math.sqrt(draws)
    assert abs(model.unique_at_k(fit, k) - values.mean()) < 4 * se


def test_pilot_coverage_counts_solved_problems_and_extends_the_rest():
    fit = FITS[0]
    n, c = np.array([4, 4, 4, 4]), np.array([0, 1, 0, 2])
    assert pilot_coverage(n, c, 4, fit=fit) == pytest.approx(0.5)
    expected = (2 + 2 * (1 - fit.posterior_miss(np.array([4]), np.array([0]), 96)[0])) / 4
    assert pilot_coverage(n, c, 100, fit=fit) == pytest.approx(expected)


# --------------------------------------------------------------------------- forecasts and baselines


def test_forecast_at_k_le_n_agrees_with_the_unbiased_estimator():
    rng = np.random.default_rng(7)
    n, c = simulate(rng, 300, 16, a=0.4, b=1.5)
    counts = pd.DataFrame({"problem_id": range(len(n)), "n": n, "c": c})
    fc = forecast_counts(counts, [1, 4, 16], n_boot=150, seed=1)
    for point in fc.points:
        truth = unbiased_coverage(n, c, point.k)
        assert point.coverage_low <= truth <= point.coverage_high, (point, truth)
        assert point.coverage_high - point.coverage_low < 0.15
    assert fc.points[0].unique_correct is None  # no unique_correct column


def test_forecast_intervals_and_unique_follow_the_data():
    rng = np.random.default_rng(8)
    n, c = simulate(rng, 200, 8, a=0.5, b=1.0)
    u = np.array([crp_unique(rng, int(ci), 0.8) for ci in c])
    counts = pd.DataFrame({"problem_id": range(len(n)), "n": n, "c": c, "unique_correct": u})
    fc = forecast_counts(counts, [8, 100], n_boot=60, seed=0)
    at8, at100 = fc.points
    assert at8.unique_correct == pytest.approx(u.mean(), abs=0.15)  # k = n: close to what was seen
    assert at8.unique_correct_low <= at8.unique_correct <= at8.unique_correct_high
    assert at100.unique_correct > at8.unique_correct and at100.coverage > at8.coverage
    assert fc.to_dict()["forecast"][1]["k"] == 100


def test_family_intervals_span_every_family_the_pilot_cannot_rule_out():
    """intervals="families": the union of the refit intervals of every family whose held-out likelihood is
    within ENVELOPE_NATS of the best; it holds the chosen family's own interval, which it also reports."""
    rng = np.random.default_rng(9)
    n = np.full(100, 8)
    c = rng.binomial(n, special.expit(rng.normal(-1.0, 1.5, len(n))))
    counts = pd.DataFrame({"problem_id": range(len(n)), "n": n, "c": c})
    plain = forecast_counts(counts, [10, 100], n_boot=40, seed=0, intervals="refit")
    wide = forecast_counts(counts, [10, 100], n_boot=40, seed=0)  # intervals="families", the default
    assert plain.interval_families == [plain.fit.family] and plain.points[0].refit_coverage_low is None
    assert wide.interval_families[0] == wide.fit.family == plain.fit.family and len(wide.interval_families) > 1
    fits = plausible_fits(wide.fit, n, c)
    assert list(fits) == wide.interval_families
    scores = {f: heldout_log_likelihood(f, n, c) for f in ENVELOPE_FAMILIES}
    assert {f for f, s in scores.items() if s >= max(scores.values()) - ENVELOPE_NATS} | {wide.fit.family} == set(fits)
    for a, b in zip(plain.points, wide.points, strict=True):
        assert a.coverage == b.coverage  # the point forecast does not change
        assert (b.refit_coverage_low, b.refit_coverage_high) == (a.coverage_low, a.coverage_high)
        assert b.coverage_low <= a.coverage_low and b.coverage_high >= a.coverage_high
        for family, fit in fits.items():  # each plausible family's own forecast lies inside the union
            assert b.coverage_low <= fit.coverage(b.k) <= b.coverage_high, family
    assert wide.to_dict()["interval_families"] == wide.interval_families
    with pytest.raises(ValueError, match="intervals"):
        forecast_counts(counts, [10], intervals="bayes")


def test_power_law_fit_recovers_its_own_curve():
    ks = np.arange(1, 17)
    fit = fit_power_law(ks, np.exp(-0.9 * ks**-0.4))
    assert (fit.a, fit.b) == pytest.approx((0.9, 0.4), rel=1e-9)
    with pytest.raises(ValueError, match="two or more k"):
        fit_power_law([1, 2], [1.0, 1.0])


# --------------------------------------------------------------------------- CLI: counts files

runner = CliRunner()


@pytest.mark.parametrize(
    ("content", "where"),
    [
        ("problem_id,n,c\na,8,3\nb,8,9\n", "line 3: field 'c': 9 is more than n=8"),
        ("problem_id,n,c\na,0,0\n", "line 2: field 'n': must be >= 1"),
        ("problem_id,n,c\na,8,-1\n", "line 2: field 'c': must be >= 0"),
        ("problem_id,n,c\na,8,3\nb,2.5,1\n", "line 3: field 'n': must be an integer"),
        ("problem_id,n,c\na,8,\n", "line 2: field 'c': must be an integer"),
        ("problem_id,n\na,8\n", "line 1: the header lacks column(s) ['c']"),
        ("problem_id,n,c,unique_correct\na,8,3,4\n", "line 2: field 'unique_correct': got 4"),
        ("problem_id,n,c\na,8,3\na,8,2\n", "line 3: field 'problem_id': 'a' appears twice"),
    ],
)
def test_counts_errors_name_file_line_and_field(tmp_path, content, where):
    path = tmp_path / "pilot.csv"
    path.write_text(content)
    result = runner.invoke(app, ["forecast", "--counts", str(path)])
    assert result.exit_code == 2
    assert f"{path}, {where}" in " ".join(result.output.split()) or f"{path}, {where}" in result.output


def test_counts_parquet_errors_name_the_row(tmp_path):
    path = tmp_path / "pilot.parquet"
    pd.DataFrame({"problem_id": ["a", "b"], "n": [4, 4], "c": [1, 5]}).to_parquet(path)
    result = runner.invoke(app, ["forecast", "--counts", str(path)])
    assert result.exit_code == 2
    assert f"{path}, row 2: field 'c': 5 is more than n=4" in result.output  # rows counted from 1


def test_a_malformed_counts_file_raises_an_error_that_carries_file_row_and_field(tmp_path):
    from flopmatch.errors import FlopmatchError
    from flopmatch.forecast_run import ForecastInputError, ForecastInputMissing, read_counts

    def error_of(path: Path) -> ForecastInputError:
        with pytest.raises(ForecastInputError) as info:
            read_counts(path)
        return info.value

    csv = tmp_path / "pilot.csv"
    csv.write_text("problem_id,n,c\na,8,3\nb,two,1\n")
    error = error_of(csv)
    assert (error.file, error.row, error.unit, error.field) == (str(csv), 3, "line", "n")
    assert error.message == "must be an integer, got 'two'"
    assert isinstance(error, FlopmatchError) and isinstance(error, ValueError)  # `except ValueError` still works
    parquet = tmp_path / "pilot.parquet"
    pd.DataFrame({"problem_id": ["a", "b", "c"], "n": [4, 4, 4], "c": [1, 2, 1],
                  "tokens": [10.0, -1.0, 3.0]}).to_parquet(parquet)  # fmt: skip
    error = error_of(parquet)
    assert (error.file, error.row, error.unit, error.field) == (str(parquet), 2, "row", "tokens")
    csv.write_text("problem_id,n\na,8\n")  # the header: line 1, no field (a column is missing, not a value)
    error = error_of(csv)
    assert (error.file, error.row, error.field) == (str(csv), 1, None) and "lacks column(s) ['c']" in error.message
    with pytest.raises(ForecastInputMissing) as missing:
        read_counts(tmp_path / "none.csv")
    assert missing.value.file == str(tmp_path / "none.csv") and isinstance(missing.value, FileNotFoundError)


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_cli_forecast_reports_a_malformed_counts_file_on_one_error_line_with_exit_2(tmp_path, suffix):
    import os
    import subprocess
    import sys

    path = tmp_path / f"pilot{suffix}"
    frame = pd.DataFrame({"problem_id": ["a", "b"], "n": [4, 4], "c": [1, 5]})
    frame.to_csv(path, index=False) if suffix == ".csv" else frame.to_parquet(path)
    flopmatch = Path(sys.executable).with_name("flopmatch")
    run = subprocess.run([str(flopmatch), "forecast", "--counts", str(path)], capture_output=True, text=True,
                         env={**os.environ, "COLUMNS": "300"})  # fmt: skip
    assert run.returncode == 2 and "Traceback" not in run.stderr + run.stdout
    lines = [line for line in run.stderr.splitlines() if line.strip()]
    where = "line 3" if suffix == ".csv" else "row 2"
    assert lines == [f"error: {path}, {where}: field 'c': 5 is more than n=4"], run.stderr


def test_counts_json_shape_per_model(tmp_path):
    rng = np.random.default_rng(9)
    rows = []
    for model, (a, b) in {"wc": (0.5, 1.5), "se": (1.5, 1.0)}.items():
        n, c = simulate(rng, 60, 6, a=a, b=b)
        rows += [{"model": model, "problem_id": f"p{i}", "n": int(ni), "c": int(ci), "tokens": 100}
                 for i, (ni, ci) in enumerate(zip(n, c, strict=True))]
    path = tmp_path / "counts.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    result = runner.invoke(app, ["forecast", "--counts", str(path), "--k", "1,50", "--n-boot", "20", "--json"])
    assert result.exit_code == 0, result.output
    models = json.loads(result.output)["models"]
    assert [m["model"] for m in models] == ["wc", "se"]
    for m in models:
        assert {"model", "problems", "pilot_samples", "fit", "forecast"} <= set(m)
        assert m["problems"] == 60 and m["pilot_samples"] == 6
        for point in m["forecast"]:
            assert {"k", "coverage", "coverage_low", "coverage_high", "unique_correct", "unique_correct_low",
                    "unique_correct_high"} <= set(point)
            assert point["coverage_low"] <= point["coverage"] <= point["coverage_high"]
    wc = pd.DataFrame(rows).query("model == 'wc'")
    assert models[0]["forecast"][0]["coverage"] == pytest.approx((wc.c / wc.n).mean(), abs=0.03)


# --------------------------------------------------------------------------- CLI: a run directory


def make_run(root: Path, problems: int = 40, samples: int = 12) -> tuple[RunDir, dict[str, list[tuple[bool, str]]]]:
    """One model's graded samples; correct texts come from a per-problem pool of two solutions."""
    rng = np.random.default_rng(10)
    run = RunDir(root).ensure()
    truth: dict[str, list[tuple[bool, str]]] = {}
    sample_rows, grade_rows = [], []
    for i in range(problems):
        pid, p = f"toy-{i:03d}", rng.beta(0.6, 1.2)
        truth[pid] = []
        for idx in range(samples):
            ok = bool(rng.random() < p)
            text = f"solution {int(rng.integers(0, 2))} of {pid}\nAnswer: 1" if ok else "Answer: 0"
            truth[pid].append((ok, text))
            sample_rows.append({"model": "toy-wc", "problem_id": pid, "sample_idx": idx, "seed": idx, "text": text})
            grade_rows.append({"model": "toy-wc", "problem_id": pid, "sample_idx": idx,
                               "status": "correct" if ok else "wrong", "extracted": "", "gold": "1"})
    append_shard(run.samples_dir("toy-wc"), sample_rows)
    write_table(grade_rows, run.grades_path("toy-wc"))
    return run, truth


def test_cli_forecast_run_uses_the_pilot_prefix_and_reports_measured_values(tmp_path):
    run, truth = make_run(tmp_path / "run")
    result = runner.invoke(app, ["forecast", str(run.root), "--pilot-samples", "4", "--k", "1,4,12,100",
                                 "--n-boot", "30", "--json"])
    assert result.exit_code == 0, result.output
    (model,) = json.loads(result.output)["models"]
    assert model["model"] == "toy-wc" and model["problems"] == 40 and model["pilot_samples"] == 4
    pilot_share = np.mean([ok for draws in truth.values() for ok, _ in draws[:4]])
    assert model["forecast"][0]["coverage"] == pytest.approx(pilot_share, abs=0.03)  # k = 1: E[p]
    full = {p["k"]: p for p in model["forecast"]}
    assert full[12]["measured_coverage"] == pytest.approx(np.mean([any(ok for ok, _ in d) for d in truth.values()]))
    unique12 = np.mean([len({t for ok, t in d if ok}) for d in truth.values()])
    assert full[12]["measured_unique_correct"] == pytest.approx(unique12)
    assert full[100]["measured_coverage"] is None  # beyond the run's 12 samples
    table = runner.invoke(app, ["forecast", str(run.root), "--pilot-samples", "4", "--n-boot", "10",
                                "--pilot-problems", "20"])
    assert table.exit_code == 0, table.output
    assert "20 problems × 4 pilot samples" in table.output and "measured" in table.output


def test_cli_forecast_run_errors(tmp_path):
    run, _ = make_run(tmp_path / "run", problems=5, samples=3)
    result = runner.invoke(app, ["forecast", str(run.root), "--pilot-samples", "5"])
    assert result.exit_code == 2 and "no problem has all of samples 0..4 graded" in result.output
    result = runner.invoke(app, ["forecast", str(run.root), "--model", "nope"])
    assert result.exit_code == 2 and "model 'nope' has no grades" in result.output
    result = runner.invoke(app, ["forecast"])
    assert result.exit_code == 2 and "either a RUN directory or --counts FILE" in result.output


def test_forecast_run_errors_carry_the_file(tmp_path):
    from flopmatch.forecast_run import ForecastInputError, ForecastInputMissing, forecast_run

    run, _ = make_run(tmp_path / "run", problems=5, samples=3)
    with pytest.raises(ForecastInputError, match="no problem has all of samples 0..4 graded") as info:
        forecast_run(run, pilot_samples=5)
    assert info.value.file == str(run.grades_path("toy-wc")) and info.value.row is None
    with pytest.raises(ForecastInputError, match="pilot_samples must be >= 1"):
        forecast_run(run, pilot_samples=0)
    with pytest.raises(ForecastInputMissing, match="no grades") as missing:
        forecast_run(RunDir(tmp_path / "empty").ensure())
    assert missing.value.file == str(RunDir(tmp_path / "empty").grades_dir)
    result = runner.invoke(app, ["forecast", str(tmp_path / "empty")])
    assert result.exit_code == 2 and "grades: no grades (run `flopmatch grade` first)" in " ".join(result.output.split())


def test_pilot_target_extends_the_pilot_problems_themselves():
    from flopmatch.forecast import forecast_pilot

    rng = np.random.default_rng(11)
    p = rng.beta(0.4, 1.2, 300)
    n = np.full(300, 8)
    c = rng.binomial(n, p)
    u = np.array([crp_unique(rng, int(ci), 1.0) for ci in c])
    counts = pd.DataFrame({"problem_id": range(300), "n": n, "c": c, "unique_correct": u})
    fc = forecast_pilot(counts, [1, 8, 100], n_boot=100, seed=0)
    assert fc.target == "pilot" and [q.k for q in fc.points] == [8, 100]  # k < n is dropped
    at8, at100 = fc.points
    assert at8.coverage == pytest.approx(np.mean(c > 0)) and at8.unique_correct == pytest.approx(u.mean())
    # the truth for these problems: solved ones stay solved, the others are solved in 92 more with 1-(1-p)^92
    truth = np.mean(np.where(c > 0, 1.0, 1 - (1 - p) ** 92))
    assert at100.coverage_low <= truth <= at100.coverage_high
    assert at100.coverage == pytest.approx(pilot_coverage(n, c, 100, fit=fc.fit))


def pilot_counts() -> pd.DataFrame:
    """80 problems x 6 samples from Beta(0.5, 1.5): every family of ENVELOPE_FAMILIES stays plausible."""
    rng = np.random.default_rng(21)
    p = rng.beta(0.5, 1.5, 80)
    n = np.full(80, 6)
    c = rng.binomial(n, p)
    return pd.DataFrame({"problem_id": range(80), "n": n, "c": c, "unique_correct": np.minimum(c, 1 + c // 2)})


# forecast_pilot(pilot_counts(), [6, 20, 200], n_boot=25, seed=3) computed before forecast_pilot took
# ``intervals`` (it then used the chosen family only): k, coverage [low, high], unique [low, high], correct.
PILOT_TARGET_BEFORE = [
    (6, 0.6124999999999996, 0.6125, 0.6125, 1.3125, 1.3125, 1.3125, 1.725),
    (20, 0.7963605639244685, 0.72, 0.875, 2.9087009984047767, 2.7214957356381686, 3.0956350024332484,
     5.75000000028839),
    (200, 0.9677507687470073, 0.895, 1.0, 8.142782999108453, 7.369834249931191, 8.9578543094651,
     57.500000003996256),
]


def test_pilot_target_refit_intervals_are_the_ones_before_family_unions():
    from flopmatch.forecast import forecast_pilot

    fc = forecast_pilot(pilot_counts(), [6, 20, 200], n_boot=25, seed=3, intervals="refit")
    assert fc.interval_families == [fc.fit.family] == ["logit-normal"]
    for q, before in zip(fc.points, PILOT_TARGET_BEFORE, strict=True):
        got = (q.k, q.coverage, q.coverage_low, q.coverage_high, q.unique_correct, q.unique_correct_low,
               q.unique_correct_high, q.correct)
        assert got == pytest.approx(before, rel=1e-9, abs=1e-12)  # a changed random stream moves them by ~1e-2
        assert q.refit_coverage_low is None and q.refit_coverage_high is None


def test_counts_without_unique_correct_forecast_coverage_alone_for_both_targets():
    """unique_correct is optional: without it both targets forecast coverage (the same as with it) and no
    diversity."""
    from flopmatch.forecast import forecast_counts, forecast_pilot

    full = pilot_counts()
    bare = full.drop(columns=["unique_correct"])
    for forecast in (forecast_counts, forecast_pilot):
        with_u, without = (forecast(frame, [6, 20], n_boot=10, seed=3) for frame in (full, bare))
        for a, b in zip(with_u.points, without.points, strict=True):
            assert b.unique_correct is None and b.unique_correct_low is None
            assert (b.coverage, b.coverage_low, b.coverage_high) == (a.coverage, a.coverage_low, a.coverage_high)


def test_pilot_target_family_intervals_span_every_plausible_family():
    """intervals="families" (the default), as forecast_counts: the union of every plausible family's interval
    (bootstrap refit + posterior draws); the point forecast and refit_* are the chosen family's own."""
    from flopmatch.forecast import forecast_pilot

    counts = pilot_counts()
    plain = forecast_pilot(counts, [20, 200], n_boot=25, seed=3, intervals="refit")
    wide = forecast_pilot(counts, [20, 200], n_boot=25, seed=3)
    fits = plausible_fits(wide.fit, counts["n"].to_numpy(), counts["c"].to_numpy(), seed=3)
    assert wide.interval_families == list(fits) and len(fits) > 1 and wide.fit.family == plain.fit.family
    assert wide.to_dict()["interval_families"] == wide.interval_families
    for a, b in zip(plain.points, wide.points, strict=True):
        assert (a.coverage, a.unique_correct, a.correct) == (b.coverage, b.unique_correct, b.correct)
        assert (b.refit_coverage_low, b.refit_coverage_high) == (a.coverage_low, a.coverage_high)
        assert b.coverage_low <= a.coverage_low <= a.coverage_high <= b.coverage_high
        assert b.unique_correct_low <= a.unique_correct_low <= a.unique_correct_high <= b.unique_correct_high
    widths = [(b.coverage_high - b.coverage_low) - (a.coverage_high - a.coverage_low)
              for a, b in zip(plain.points, wide.points, strict=True)]
    assert max(widths) > 0.05  # the families disagree about the left tail: k = 200 gets much wider
    with pytest.raises(ValueError, match="intervals"):
        forecast_pilot(counts, [20], intervals="bayes")


def test_cli_table_says_which_families_the_intervals_span_whole_in_a_pipe(tmp_path, monkeypatch):
    """Piped (not a terminal) with COLUMNS unset: 80 columns. Every family name of the span line prints whole."""
    monkeypatch.delenv("COLUMNS", raising=False)
    path = tmp_path / "pilot.csv"
    pilot_counts().to_csv(path, index=False)
    args = ["forecast", "--counts", str(path), "--k", "20,200", "--n-boot", "5", "--seed", "3"]
    for target in ("population", "pilot"):
        result = runner.invoke(app, [*args, "--target", target])
        assert result.exit_code == 0, result.output
        assert "…" not in result.output and max(map(len, result.output.splitlines())) <= 80
        text = " ".join(result.output.split())
        assert "intervals span: logit-normal, beta-binomial, zero-inflated-beta, skew-logit-normal (held-out " \
               f"log-likelihood within {ENVELOPE_NATS:g} nats of the best; --intervals refit: logit-normal alone)" in text
        lines = result.output.splitlines()
        for family in ENVELOPE_FAMILIES:
            assert any(family in line for line in lines), (family, result.output)
    refit = runner.invoke(app, [*args, "--intervals", "refit"])
    assert refit.exit_code == 0, refit.output
    assert "intervals: logit-normal alone (--intervals refit)" in " ".join(refit.output.split())
    as_json = json.loads(runner.invoke(app, [*args, "--intervals", "refit", "--target", "pilot", "--json"]).output)
    assert as_json["models"][0]["interval_families"] == ["logit-normal"]
    bad = runner.invoke(app, [*args, "--intervals", "bayes"])
    assert bad.exit_code == 2 and "--intervals must be families or refit" in bad.output
    helptext = " ".join(runner.invoke(app, ["forecast", "--help"], env={"COLUMNS": "200"}).output.split())
    assert "--intervals" in helptext and "families (default): the 95% interval is the union" in helptext
    assert "refit: the chosen family's bootstrap alone" in helptext


# --------------------------------------------------------------------------- unique@k intervals: profile of d


def py_counts(rng, c: np.ndarray, theta: float = 0.5, discount: float = 0.5) -> np.ndarray:
    return np.array([crp_unique(rng, int(ci), theta, discount) for ci in c])


def test_discount_profile_set_contains_the_mle_and_narrows_as_correct_samples_grow():
    """{d: profile log-likelihood >= max - 2 nats}: its ends are 2 nats down (or the boundary), the MLE
    inside; 3 correct per problem pin d down far less than 48."""
    from flopmatch.forecast_unique import discount_range, fit_unique_at

    widths = []
    for c_each in (3, 12, 48):
        c = np.full(100, c_each)
        u = py_counts(np.random.default_rng(5), c)
        fit = fit_unique(c, u)
        low, high = discount_range(c, u, fit, nats=ENVELOPE_NATS)
        assert low <= fit.discount <= high
        assert fit_unique_at(c, u, fit.discount).log_likelihood == pytest.approx(fit.log_likelihood, abs=1e-4)
        for end in (low, high):
            gap = fit.log_likelihood - fit_unique_at(c, u, end).log_likelihood
            assert gap == pytest.approx(ENVELOPE_NATS, abs=1e-2) or (end == 0.0 and gap < ENVELOPE_NATS)
        widths.append(high - low)
    assert widths[0] > widths[1] > widths[2] and widths[0] > 0.4 and widths[2] < 0.15


def test_the_uniqueness_models_share_one_correct_pmf_and_the_likelihood_one_formula():
    """unique_at_ks is every model's unique_at_k with each k's correct_pmf computed once (profile intervals:
    three models per success fit); the likelihood with the S_d(c, u) terms given is the one without, up to
    the order of one sum (what fit_unique_at's profile over theta evaluates)."""
    from flopmatch.forecast_unique import log_generalised_factorial, unique_at_ks, unique_log_likelihood

    fit, models = FITS[0], [UniqueFit(theta=t, log_likelihood=0.0, problems=0, discount=d)
                            for t, d in ((1.3, 0.0), (0.7, 0.4), (2.0, 0.8))]  # fmt: skip
    calls = []

    class Counting:
        def correct_pmf(self, k):
            calls.append(k)
            return fit.correct_pmf(k)

    table = unique_at_ks(models, Counting(), [1, 5, 30])
    assert calls == [1, 5, 30]
    assert table.tolist() == [[m.unique_at_k(fit, k) for k in (1, 5, 30)] for m in models]
    c, u = np.array([1, 3, 5, 8]), np.array([1, 2, 5, 3])
    for d in (0.0, 0.4):
        terms = float(np.sum(log_generalised_factorial(8, d)[c, u]))
        with_terms = unique_log_likelihood(1.3, d, c, u, terms)
        assert with_terms == pytest.approx(unique_log_likelihood(1.3, d, c, u), rel=1e-12)


def unique_pilot(n_each: int) -> pd.DataFrame:
    rng = np.random.default_rng(6)
    n = np.full(120, n_each)
    c = rng.binomial(n, rng.beta(2, 2, 120))
    return pd.DataFrame({"problem_id": range(120), "n": n, "c": c, "unique_correct": py_counts(rng, c)})


def test_profile_unique_intervals_widen_where_d_is_weakly_identified_and_keep_the_point():
    """unique_intervals="profile": the union of the MLE's and both profile ends' bootstrap intervals. Much wider
    than the MLE's own from 4 samples per problem, hardly from 32; every point forecast and coverage interval,
    and the MLE's own unique interval, are the bootstrap mode's."""
    ratios = []
    for n_each in (4, 32):
        counts = unique_pilot(n_each)
        old = forecast_counts(counts, [10, 100], n_boot=20, seed=1, intervals="refit")
        new = forecast_counts(counts, [10, 100], n_boot=20, seed=1, intervals="refit", unique_intervals="profile")
        assert old.unique_discounts == [] and new.unique_discounts[0] <= new.unique_fit.discount <= new.unique_discounts[1]
        assert new.to_dict()["unique_discounts"] == new.unique_discounts
        for a, b in zip(old.points, new.points, strict=True):
            assert (a.coverage, a.coverage_low, a.coverage_high, a.unique_correct, a.correct) == (
                b.coverage, b.coverage_low, b.coverage_high, b.unique_correct, b.correct)
            assert (b.mle_unique_correct_low, b.mle_unique_correct_high) == (a.unique_correct_low, a.unique_correct_high)
            assert a.mle_unique_correct_low is None
            assert b.unique_correct_low <= a.unique_correct_low <= b.unique_correct <= a.unique_correct_high <= b.unique_correct_high
        a, b = old.points[-1], new.points[-1]
        ratios.append((b.unique_correct_high - b.unique_correct_low) / (a.unique_correct_high - a.unique_correct_low))
    assert ratios[0] > 1.4 and ratios[1] < 1.3 and ratios[0] > ratios[1]
    with pytest.raises(ValueError, match="unique_intervals"):
        forecast_counts(unique_pilot(4), [10], n_boot=2, unique_intervals="bayes")


# forecast_counts(pilot_counts(), [6, 20, 200], n_boot=25, seed=3) computed before unique_intervals existed:
# k, coverage [low, high], unique [low, high]. unique_intervals="bootstrap" (the default) gives them still.
POPULATION_BEFORE = [
    (6, 0.6163357878949935, 0.4875352894351651, 0.684884130432171, 1.3095318658762474, 1.0109813774040621,
     1.5336892687601482),
    (20, 0.7983763514956737, 0.595591575338187, 0.8722849970721166, 2.90339072327647, 2.267766691464962,
     3.3045413046914005),
    (200, 0.9680699976782668, 0.6637193457839736, 0.992500670403675, 8.136772471436469, 6.3654421547295765,
     9.575199195161673),
]


def test_bootstrap_unique_intervals_are_the_ones_before_the_profile_option():
    fc = forecast_counts(pilot_counts(), [6, 20, 200], n_boot=25, seed=3)
    for q, before in zip(fc.points, POPULATION_BEFORE, strict=True):
        got = (q.k, q.coverage, q.coverage_low, q.coverage_high, q.unique_correct, q.unique_correct_low,
               q.unique_correct_high)
        assert got == pytest.approx(before, rel=1e-9, abs=1e-12)


def test_seating_draws_average_to_the_expected_growth():
    from flopmatch.forecast_unique import sample_growth

    model = UniqueFit(theta=0.7, log_likelihood=0.0, problems=1, discount=0.45)
    c, u, extra = np.array([1, 5, 20, 3]), np.array([1, 2, 9, 3]), np.array([60, 0, 40, 7])
    draws = np.array([sample_growth(model, c, extra, u, np.random.default_rng(i)) for i in range(3000)])
    assert (draws[:, 1] == 0).all() and (draws >= 0).all() and (draws <= extra).all()
    se = draws.std(axis=0) / math.sqrt(len(draws))
    assert np.all(np.abs(draws.mean(axis=0) - model.growth(c, extra, u)) <= 4 * se + 1e-12)


def test_pilot_target_profile_draws_unique_solutions_and_keeps_coverage():
    """--target pilot with unique_intervals="profile": coverage (points and intervals) and the unique point
    are the bootstrap mode's; the unique interval spans the MLE's own (drawn by seating) and is wider."""
    from flopmatch.forecast import forecast_pilot

    counts = unique_pilot(4)
    old = forecast_pilot(counts, [10, 100], n_boot=20, seed=2, intervals="refit")
    new = forecast_pilot(counts, [10, 100], n_boot=20, seed=2, intervals="refit", unique_intervals="profile")
    for a, b in zip(old.points, new.points, strict=True):
        assert (a.coverage, a.coverage_low, a.coverage_high, a.unique_correct) == (
            b.coverage, b.coverage_low, b.coverage_high, b.unique_correct)
        assert b.unique_correct_low <= b.mle_unique_correct_low <= b.mle_unique_correct_high <= b.unique_correct_high
    a, b = old.points[-1], new.points[-1]
    assert b.unique_correct_high - b.unique_correct_low > 1.4 * (a.unique_correct_high - a.unique_correct_low)
