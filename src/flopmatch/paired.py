"""Paired statistics for comparing two fine-tuned students on the same test problems.

Both students answer the same problems, so every comparison here is *paired* by problem: the unit of
resampling is the problem, and a problem both students solve (or both miss) carries no information
about which is better. With several training seeds the seed is a second source of noise (two seeds
of the same recipe disagree on 5–12% of the toy world's test problems), so intervals account for
seeds as well as problems (a two-level bootstrap).

Everything here is a pure function of arrays; randomness comes from a seeded
``numpy.random.Generator``, so every result is reproducible.

- :func:`mcnemar_exact` — McNemar's exact test: under "no difference" each discordant problem (one
  side right, the other wrong) favours either side with probability 1/2, so the count of
  treatment-only wins is Binomial(discordant, 1/2); the two-sided p doubles the smaller tail.
- :func:`bootstrap_differences` / :func:`paired_bootstrap` — replicates of the mean difference over
  seeds. Seed noise has two parts (model below): per-problem flips, independent across problems, and
  a global shift of a seed's whole score. Resampling problems (shared by both sides: the pairing) of
  the per-problem seed means already carries the first; the second is each side's between-seed
  variance of the test score less what the per-problem flips explain, var_s(score_s) − mean_i
  var_s(x_si) / N (clipped at 0), added to every replicate as a normal shift of variance
  τ̂²_wc/S_wc + τ̂²_se/S_se. (Resampling seed rows as well would count the per-problem flips twice: a
  third too wide with two seeds in simulation; plain resampling of S seeds also sees only (S − 1)/S of
  their variance.) WC-data seed 1 and SE-data seed 1 are different runs on different data, not a pair.
- :func:`sign_flip_test` — a paired permutation test: under "no difference" the sign of each
  problem's difference is a fair coin.
- :func:`holm` — Holm's step-down adjustment (controls the family-wise error rate, any dependence).
- :func:`mde_paired` / :func:`mde_from_se` — the minimum detectable effect at 80% power, α = 0.05.

The minimum detectable effect (two-sided α, power 1 − β) of a mean difference whose estimate has
standard error σ is ``(z_{1−α/2} + z_{1−β})·σ`` = 2.80·σ at the defaults. For one seed and a 0/1
metric the per-problem difference is ±1 on discordant problems and 0 elsewhere, so its variance is
``d − δ² ≈ d`` (d: discordance rate) and σ = sqrt(d / N). With S seeds per side (deciding.md:
"seeds reduce the problem-level variance and add their own") we model a student's answer to a
problem as a stable part plus seed noise: two seeds of one recipe disagree on a fraction ``d_s`` of
problems (``seed_discordance``), and each seed also shifts the whole test score by a global amount
with standard deviation τ (``seed_sd``, in proportion units). Averaging S seeds divides the
seed-noise part of the per-problem variance by S, and the mean of S global shifts per side has
variance τ²/S, so

    σ² = (d − d_s·(1 − 1/S)) / N + 2·τ² / S

(``d`` is the discordance of one WC-data model against one SE-data model; with ``d_s = τ = 0`` this
is the one-seed formula; d_s ≤ d). ``tests/test_paired.py`` checks it against a simulation of
that model.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from statistics import NormalDist
from typing import Any

import numpy as np

from flopmatch.errors import FlopmatchError


class PairedError(FlopmatchError, ValueError):
    """Inputs a paired test or power calculation cannot use: vectors of different lengths, NaN, a level,
    alpha, power or bootstrap size out of range (a study's ``compare`` settings reach these checks)."""

ALPHA = 0.05
POWER = 0.80


def z_value(probability: float) -> float:
    """The standard normal quantile (1.96 for 0.975, 0.84 for 0.80)."""
    return NormalDist().inv_cdf(probability)


# --------------------------------------------------------------------------- McNemar


def discordant_counts(treatment: Sequence[float] | np.ndarray, baseline: Sequence[float] | np.ndarray) -> tuple[int, int]:
    """(problems only ``treatment`` solved, problems only ``baseline`` solved) of two 0/1 vectors."""
    a, b = _pair(treatment, baseline)
    if not (np.isin(a, (0.0, 1.0)).all() and np.isin(b, (0.0, 1.0)).all()):
        raise PairedError("McNemar's test needs 0/1 outcomes per problem (greedy pass@1)")
    return int(((a == 1) & (b == 0)).sum()), int(((a == 0) & (b == 1)).sum())


def mcnemar_exact(treatment_only: int, baseline_only: int) -> float:
    """Two-sided exact McNemar p-value from the discordant counts: 2·P(X ≤ min) for X ~ Binomial(n, 1/2),
    n = treatment_only + baseline_only, capped at 1 (1 when there is no discordant problem).

    Computed with exact integers (``math.comb``), so it is exact for any n."""
    if treatment_only < 0 or baseline_only < 0:
        raise PairedError(f"discordant counts must be >= 0, got {treatment_only}, {baseline_only}")
    n = treatment_only + baseline_only
    if n == 0:
        return 1.0
    k = min(treatment_only, baseline_only)
    tail = sum(math.comb(n, i) for i in range(k + 1))
    return min(1.0, 2 * tail / 2**n)


# --------------------------------------------------------------------------- bootstrap


@dataclass(frozen=True)
class Interval:
    """A mean difference (treatment − baseline) with its bootstrap interval and standard error."""

    diff: float
    low: float
    high: float
    se: float
    hierarchical: bool

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def as_seed_matrix(values: Sequence[float] | Sequence[Sequence[float]] | np.ndarray, name: str = "values") -> np.ndarray:
    """``values`` as a seeds × problems matrix (a 1-D vector is one seed)."""
    matrix = np.asarray(values, dtype=float)
    if matrix.ndim == 1:
        matrix = matrix[None, :]
    if matrix.ndim != 2 or matrix.shape[0] < 1 or matrix.shape[1] < 1:
        raise PairedError(f"{name}: expected a problems vector or a seeds × problems matrix, got shape {matrix.shape}")
    if np.isnan(matrix).any():
        raise PairedError(f"{name}: contains NaN (a seed or problem without a value)")
    return matrix


def bootstrap_differences(
    treatment: Any, baseline: Any, *, n_boot: int = 2000, seed: int = 0, chunk: int = 500
) -> np.ndarray:
    """``n_boot`` bootstrap replicates of mean(treatment) − mean(baseline).

    Each side is a problems vector or a seeds × problems matrix (same problems, same order). Every
    replicate draws one multiset of problems, used by both sides (the pairing), and averages the
    per-problem differences of the seed means; with several seeds it adds a normal draw of the
    seed-level shift (:func:`seed_shift_variance` of each side over its seed count). Vectorised as
    count-weighted means, ``chunk`` replicates at a time.
    """
    wc, se = as_seed_matrix(treatment, "treatment"), as_seed_matrix(baseline, "baseline")
    if wc.shape[1] != se.shape[1]:
        raise PairedError(f"treatment has {wc.shape[1]} problems but baseline has {se.shape[1]}; a paired test needs the same")
    if n_boot < 1:
        raise PairedError(f"n_boot must be >= 1, got {n_boot}")
    rng = np.random.default_rng(seed)
    n = wc.shape[1]
    per_problem = wc.mean(axis=0) - se.mean(axis=0)
    shift_sd = math.sqrt(seed_shift_variance(wc) / wc.shape[0] + seed_shift_variance(se) / se.shape[0])
    out = np.empty(n_boot)
    for start in range(0, n_boot, chunk):
        b = min(chunk, n_boot - start)
        problem_counts = rng.multinomial(n, np.full(n, 1.0 / n), size=b)  # b × n
        out[start : start + b] = problem_counts @ per_problem / n
    if shift_sd > 0:
        out += rng.standard_normal(n_boot) * shift_sd
    return out


def seed_shift_variance(matrix: np.ndarray) -> float:
    """The variance of a seed's global score shift (τ² of the model below) from a seeds × problems
    matrix: between-seed variance of the scores less the part per-problem flips explain,
    var_s(score_s) − mean_i var_s(x_si) / N, clipped at 0 (0 with one seed)."""
    seeds, n = matrix.shape
    if seeds < 2:
        return 0.0
    scores = matrix.mean(axis=1)
    return max(0.0, float(scores.var(ddof=1) - matrix.var(axis=0, ddof=1).mean() / n))


def paired_bootstrap(
    treatment: Any, baseline: Any, *, n_boot: int = 2000, level: float = 0.95, seed: int = 0
) -> Interval:
    """The mean difference (treatment − baseline, averaged over seeds) with a percentile interval and
    standard error from :func:`bootstrap_differences` (two-level when either side has ≥ 2 seeds)."""
    if not 0 < level < 1:
        raise PairedError(f"level must be in (0, 1), got {level}")
    wc, se = as_seed_matrix(treatment, "treatment"), as_seed_matrix(baseline, "baseline")
    reps = bootstrap_differences(wc, se, n_boot=n_boot, seed=seed)
    low, high = np.quantile(reps, [(1 - level) / 2, (1 + level) / 2])
    diff = float(wc.mean() - se.mean())
    return Interval(diff, float(low), float(high), float(reps.std(ddof=1)) if n_boot > 1 else 0.0,
                    hierarchical=max(wc.shape[0], se.shape[0]) > 1)  # fmt: skip


# --------------------------------------------------------------------------- permutation


def sign_flip_test(differences: Sequence[float] | np.ndarray, *, n_perm: int = 10000, seed: int = 0,
                   chunk: int = 1000) -> float:  # fmt: skip
    """Two-sided paired permutation p-value of mean(differences) = 0: each problem's difference keeps
    or flips its sign at random (exchangeable under the null). p = (1 + #{|mean*| ≥ |mean|}) / (1 + n_perm),
    never 0. Problems with difference 0 cannot move the mean and are dropped first (exact same p)."""
    d = np.asarray(differences, dtype=float)
    if d.ndim != 1 or np.isnan(d).any():
        raise PairedError("differences must be a 1-D vector without NaN")
    d = d[d != 0]
    if d.size == 0:
        return 1.0
    observed = abs(d.sum())
    rng = np.random.default_rng(seed)
    hits = 0
    for start in range(0, n_perm, chunk):
        b = min(chunk, n_perm - start)
        signs = rng.integers(0, 2, size=(b, d.size), dtype=np.int8) * 2 - 1
        # a relative tolerance: float sums of the same multiset in another order must count as ties
        hits += int((np.abs(signs @ d) >= observed * (1 - 1e-12)).sum())
    return (1 + hits) / (1 + n_perm)


# --------------------------------------------------------------------------- multiplicity


def holm(p_values: Sequence[float] | np.ndarray) -> np.ndarray:
    """Holm's step-down adjusted p-values (same order as given). NaN stays NaN and does not count
    towards the number of tests. Reject at level α where the adjusted p < α."""
    p = np.asarray(p_values, dtype=float)
    out = np.full(p.shape, np.nan)
    valid = np.flatnonzero(~np.isnan(p))
    m = valid.size
    if m == 0:
        return out
    order = valid[np.argsort(p[valid], kind="stable")]
    scaled = np.minimum(1.0, (m - np.arange(m)) * p[order])
    out[order] = np.maximum.accumulate(scaled)
    return out


# --------------------------------------------------------------------------- power


def mde_from_se(se: float, *, alpha: float = ALPHA, power: float = POWER) -> float:
    """Minimum detectable effect of an estimate with standard error ``se``: (z_{1−α/2} + z_power)·se."""
    return (z_value(1 - alpha / 2) + z_value(power)) * float(se)


def paired_se(n_problems: int, discordance: float, *, seeds: int = 1, seed_discordance: float = 0.0,
              seed_sd: float = 0.0) -> float:  # fmt: skip
    """Standard error of a seed-averaged paired difference (see the module docstring for the model):
    sqrt((d − d_s·(1 − 1/S)) / N + 2·τ²/S)."""
    if n_problems < 1 or seeds < 1:
        raise PairedError(f"need n_problems >= 1 and seeds >= 1, got {n_problems}, {seeds}")
    if not 0 <= discordance <= 1 or not 0 <= seed_discordance <= discordance:
        raise PairedError(
            f"need 0 <= seed_discordance ({seed_discordance}) <= discordance ({discordance}) <= 1: two seeds of one "
            "recipe cannot disagree more than the two recipes do in this model"
        )
    if seed_sd < 0:
        raise PairedError(f"seed_sd must be >= 0, got {seed_sd}")
    problem_var = (discordance - seed_discordance * (1 - 1 / seeds)) / n_problems
    return math.sqrt(problem_var + 2 * seed_sd**2 / seeds)


def mde_paired(n_problems: int, discordance: float, *, seeds: int = 1, seed_discordance: float = 0.0,
               seed_sd: float = 0.0, alpha: float = ALPHA, power: float = POWER) -> float:  # fmt: skip
    """Minimum detectable difference in proportion (0.07 = 7 points) of a paired 0/1 comparison on
    ``n_problems`` problems with discordance rate ``discordance``: (1.96 + 0.84)·sqrt(d/N) for one seed,
    and the seed-aware :func:`paired_se` otherwise. 200 problems at 15% discordance: 0.077."""
    se = paired_se(n_problems, discordance, seeds=seeds, seed_discordance=seed_discordance, seed_sd=seed_sd)
    return mde_from_se(se, alpha=alpha, power=power)


def problems_for_mde(mde: float, discordance: float, *, seeds: int = 1, seed_discordance: float = 0.0,
                     seed_sd: float = 0.0, alpha: float = ALPHA, power: float = POWER) -> float:  # fmt: skip
    """Test problems a paired comparison needs to detect ``mde`` (the inverse of :func:`mde_paired` in N).
    ``math.inf`` when the seed-level term 2τ²/S alone exceeds the target: then only more seeds help."""
    if mde <= 0:
        raise PairedError(f"mde must be > 0, got {mde}")
    z = z_value(1 - alpha / 2) + z_value(power)
    room = (mde / z) ** 2 - 2 * seed_sd**2 / seeds
    if room <= 0:
        return math.inf
    return float(math.ceil((discordance - seed_discordance * (1 - 1 / seeds)) / room))


# --------------------------------------------------------------------------- one comparison


@dataclass(frozen=True)
class PairedComparison:
    """treatment − baseline on the same problems: means, interval, test, power."""

    treatment: float
    baseline: float
    diff: float
    ci_low: float
    ci_high: float
    se: float
    p_value: float
    test: str
    seeds: int
    problems: int
    discordance: float
    mde: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def compare_paired(treatment: Any, baseline: Any, *, binary: bool | None = None, n_boot: int = 2000,
                   n_perm: int = 10000, seed: int = 0, alpha: float = ALPHA, power: float = POWER) -> PairedComparison:  # fmt: skip
    """Compare two students on the same problems. Each side: a problems vector, or seeds × problems.

    The interval is a paired bootstrap (two-level with seeds). The test is McNemar's exact test for a
    0/1 metric with one seed per side; otherwise a sign-flip test on the per-problem differences of
    the seed means (which sees problem-level noise only: seed-to-seed noise enters the interval and
    the MDE, and a verdict needs both, see :func:`verdict`). The MDE is :func:`mde_from_se` of the
    bootstrap standard error, so it carries the observed discordance and seed variance."""
    wc, se = as_seed_matrix(treatment, "treatment"), as_seed_matrix(baseline, "baseline")
    interval = paired_bootstrap(wc, se, n_boot=n_boot, seed=seed, level=1 - alpha)
    if binary is None:
        binary = bool(np.isin(wc, (0.0, 1.0)).all() and np.isin(se, (0.0, 1.0)).all())
    d = wc.mean(axis=0) - se.mean(axis=0)
    discordance = float((wc[:, None, :] != se[None, :, :]).mean()) if binary else float("nan")
    if binary and wc.shape[0] == 1 and se.shape[0] == 1:
        p, test = mcnemar_exact(*discordant_counts(wc[0], se[0])), "McNemar exact"
    else:
        p, test = sign_flip_test(d, n_perm=n_perm, seed=seed), "sign-flip permutation"
    return PairedComparison(
        treatment=float(wc.mean()), baseline=float(se.mean()), diff=interval.diff, ci_low=interval.low,
        ci_high=interval.high, se=interval.se, p_value=float(p), test=test, seeds=int(min(wc.shape[0], se.shape[0])),
        problems=int(wc.shape[1]), discordance=discordance, mde=mde_from_se(interval.se, alpha=alpha, power=power),
    )  # fmt: skip


def verdict(diff: float, ci_low: float, ci_high: float, p_adjusted: float, seeds: int, mde: float, *,
            better: str = "WC data better", worse: str = "SE data better", alpha: float = ALPHA) -> str:  # fmt: skip
    """The words for one comparison. Significant means Holm-adjusted p < α *and* an interval that excludes
    0 (the interval is the part that sees seed-to-seed noise); with one seed a significant difference
    is "one seed: not a verdict", since another seed can reverse it."""
    if any(math.isnan(x) for x in (diff, ci_low, ci_high, p_adjusted)):
        return "not compared"
    significant = p_adjusted < alpha and (ci_low > 0 or ci_high < 0)
    if significant and seeds < 2:
        return "one seed: not a verdict"
    if significant:
        return better if diff > 0 else worse
    return f"no detectable difference (MDE {mde * 100:.1f} pts)"


def _pair(a: Any, b: Any) -> tuple[np.ndarray, np.ndarray]:
    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if x.shape != y.shape or x.ndim != 1:
        raise PairedError(f"expected two problem vectors of the same length, got shapes {x.shape} and {y.shape}")
    return x, y
