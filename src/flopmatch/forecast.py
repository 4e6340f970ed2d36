"""Forecast coverage@k and diversity@k at large k from a small pilot (pure maths; no run I/O).

The unbiased estimator ``1 - C(n-c, k)/C(n, k)`` stops at k = n. Following Schaeffer et al. (ICML
2025), we instead fit the *distribution* of per-problem success probability p across problems from
pilot counts (n_i samples, c_i correct per problem) and take expectations under it, which works for
any k.

Success model (:func:`fit_success`), by maximum likelihood on the counts (log space, ``betaln``;
n_i may differ per problem):

* ``beta-binomial``: p ~ Beta(a, b), so c_i | n_i ~ BetaBinomial(n_i, a, b).
* ``zero-inflated-beta``: p = 0 with probability pi (problems the model can never solve), otherwise
  p ~ Beta(a, b). It exists for pilots with many never-solved problems, where a plain Beta has to
  stretch its left tail to explain them and then over-forecasts large k.
* ``logit-normal``: logit(p) ~ Normal(mu, sigma^2) — the Rasch / item-response view (success is
  sigmoid(ability - difficulty), difficulties normal across problems), discretised on a fine logit grid
  (:mod:`flopmatch.forecast_prior`). Its density vanishes at p = 0 where a Beta with a < 1 diverges:
  a Beta fitted to a pilot piles hard-but-solvable problems (p ~ 0.01-0.1) up near p = 0 and
  under-forecasts large k (toy world: -11 points at k = 100 from n = 8; README "Forecasting from a
  pilot"); the logit-normal's thinner left tail halves that error there.
* ``skew-logit-normal``: logit(p) ~ SkewNormal(mu, sigma, alpha) (density ∝ phi(z) Phi(alpha z)), on the
  same grid. alpha > 0 thins the left tail (|alpha| <= 10, all but a half-normal there): a pilot's
  easy problems no longer force a mirror-image tail of near-hopeless ones. One of ``auto``'s candidates
  (toy backtest, 8 pilots x n 4/8/16 x k 10/33/100: mean |error| 3.8 -> 2.9 points, WC k = 100 from
  n = 8 6.0 -> 2.8, SE 2.7 -> 2.7, but SE at n = 16 and k = 10 from n = 8 worse by 0.5-1 point, and the
  family-union intervals hold the truth in 133/144 cells, was 144/144).
* ``beta-mixture``: p ~ w Beta(a1, b1) + (1 - w) Beta(a2, b2). Opt-in: flexible, often the best held-out
  likelihood, but at n <= 8 one part collapses onto a spike and its large-k forecast swings by tens of
  points between pilots of the same population (README), so ``auto`` never picks it.

``family="auto"`` fits beta-binomial, zero-inflated-beta, logit-normal and skew-logit-normal and keeps the
one with the highest held-out log-likelihood (5-fold over problems, seeded); :attr:`SuccessFit.family`
records which, :attr:`SuccessFit.candidates` every score. Fits maximise the likelihood of the distinct
(n, c) pairs with their multiplicities by SLSQP with closed-form gradients (~0.1 s for ``auto``).

Forecasts under a fit: every family is a :class:`flopmatch.forecast_prior.Prior` (Beta parts and atoms),
and every quantity is an expectation under one problem's posterior (the prior is the posterior after
n = c = 0), in closed form per part:

* coverage@k = 1 - E[(1-p)^k] (a Beta part gives 1 - B(a, b+k) / B(a, b); an atom 1 - (1 - p)^k);
* expected correct samples per problem = k * E[p];
* per problem, after seeing c of n correct, a Beta part updates to Beta(a+c, b+n-c) and the parts
  reweight by their likelihoods: :meth:`SuccessFit.posterior_miss`, :meth:`SuccessFit.posterior_mean`.

Unique correct solutions (:func:`fit_unique`, :mod:`flopmatch.forecast_unique`): within a problem,
correct solutions are draws from a Pitman-Yor process (a two-parameter Chinese restaurant) with one
concentration theta and one discount d shared by all problems: after j correct samples with K distinct
ones, the next is new with probability (theta + K d) / (theta + j). Distinct solutions grow like m^d
(like theta log m when d = 0, the plain CRP); (theta, d) are fitted by maximum likelihood from each pilot
problem's (c_i correct, u_i unique) alone. Then unique@k = E over C ~ (number correct among k) of
E[K_C], summed exactly over C = 0..k (O(k) work).

Intervals (:func:`forecast_counts`): percentile bootstrap over problems, refitting the chosen family
and the unique-solution model on every resample. They describe a forecast for the population the pilot
problems were drawn from. ``intervals="refit"`` stops there: problem-sampling noise only. The default,
``"families"``, is the union of the refit intervals of every family of ENVELOPE_FAMILIES whose held-out
likelihood is within ENVELOPE_NATS of the best (:func:`plausible_fits`): the families the pilot cannot tell
apart but whose left tails, and so their large-k forecasts, differ. :func:`forecast_pilot` (THESE pilot
problems at k samples each) takes the same ``intervals``, with the same union over the same families of
its own interval (each resample refits the family, then draws every problem's p and its extra samples
from the posterior). unique@k intervals (``unique_intervals``): "bootstrap" refits the MLE Pitman-Yor
(theta, d) on every resample (problem sampling only); "profile" also spans the d the pilot cannot rule
out (profile likelihood within ENVELOPE_NATS: :func:`flopmatch.forecast_unique.plausible_unique_fits`) and,
for :func:`forecast_pilot`, draws the distinct solutions still to come by sequential seating.

Baselines beside it (:mod:`flopmatch.forecast_baselines`, re-exported here): :func:`unbiased_coverage`
(Chen et al. 2021, k <= n) and :func:`fit_power_law` (Brown et al. 2024: -log coverage@k = a * k^(-b),
fitted to the pilot's unbiased curve).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from scipy import optimize, special

from flopmatch import forecast_unique
from flopmatch.forecast_baselines import (
    PowerLawFit,
    fit_power_law,
    power_law_from_counts,
    unbiased_coverage,
)
from flopmatch.forecast_prior import (
    GRID_P,
    LOGIT_FAMILIES,
    Prior,
    as_counts,
    atom_log_likelihood,
    family_bounds,
    log_binom,
    logit_normal_log_weights,
    logit_normal_scores,
    pack_params,
    start_points,
    success_prior,
    unpack_params,
)
from flopmatch.forecast_unique import UniqueFit, fit_unique

FAMILIES = ("beta-binomial", "zero-inflated-beta", "logit-normal", "skew-logit-normal", "beta-mixture")
# What "auto" chooses between. The 5-parameter mixture is opt-in: at small n its large-k forecasts are
# unstable between pilots (module docstring).
AUTO_FAMILIES = ("beta-binomial", "zero-inflated-beta", "logit-normal", "skew-logit-normal")
__all__ = ["AUTO_FAMILIES", "FAMILIES", "ForecastPoint", "ModelForecast", "PowerLawFit", "SuccessFit", "UniqueFit", "fit_power_law",
           "fit_success", "fit_unique", "forecast_counts", "forecast_pilot", "pilot_coverage", "plausible_fits", "refit",
           "unbiased_coverage"]
DEFAULT_KS = (1, 3, 10, 30, 100, 1000)
CV_FOLDS = 5


# --------------------------------------------------------------------------- inputs


def _aggregate(n: np.ndarray, c: np.ndarray, weights: np.ndarray | None = None):
    """Distinct (n, c) pairs with multiplicities: the likelihood only depends on them (fast refits)."""
    pairs, inverse = np.unique(np.stack([n, c], axis=1), axis=0, return_inverse=True)
    w = np.bincount(inverse.ravel(), weights=weights, minlength=len(pairs)).astype(float)
    return pairs[:, 0].astype(float), pairs[:, 1].astype(float), w


# --------------------------------------------------------------------------- success model


def _pointwise_loglik(family: str, params: dict[str, float], n, c) -> np.ndarray:
    return success_prior(family, params).log_marginal(n, c)


class _Counts:
    """Aggregated counts with what every likelihood evaluation reuses (log C(n, c), the c = 0 mask)."""

    def __init__(self, n: np.ndarray, c: np.ndarray, w: np.ndarray):
        self.n, self.c, self.w = np.asarray(n, dtype=float), np.asarray(c, dtype=float), np.asarray(w, dtype=float)
        self.log_binom = log_binom(self.n, self.c)
        self.unsolved = self.c == 0

    @functools.cached_property
    def grid_log_likelihood(self) -> np.ndarray:
        """log P(c | n, p) at every logit-normal grid atom (rows) for every count pair (columns)."""
        return self.log_binom[None] + atom_log_likelihood(GRID_P, self.n, self.c)


def _split(logit: float) -> tuple[float, float, float]:
    """(share, log share, log(1 - share)) of a 2-way split from its logit, stable at both ends."""
    return float(special.expit(logit)), -float(np.logaddexp(0.0, -logit)), -float(np.logaddexp(0.0, logit))


def _logit_normal_nll_and_grad(theta: np.ndarray, data: _Counts) -> tuple[float, np.ndarray]:
    """The (skew-)logit-normal's likelihood on its grid. With r_g the posterior weight of atom g and
    s_g = d log w_g / d theta (the density's score, centred because the weights are normalised),
    d ll / d theta = sum_g r_g s_g."""
    mu, sigma, alpha = theta[0], math.exp(theta[1]), (theta[2] if len(theta) > 2 else None)
    log_w = logit_normal_log_weights(mu, sigma, alpha or 0.0)
    terms = log_w[:, None] + data.grid_log_likelihood
    top = terms.max(axis=0)
    ll = top + np.log(np.exp(terms - top).sum(axis=0))
    resp = np.exp(terms - ll)
    w = np.exp(log_w)
    scores = [s - np.dot(w, s) for s in logit_normal_scores(mu, sigma, alpha)]
    weighted = resp @ data.w
    return -float(np.dot(data.w, ll)), -np.array([np.dot(weighted, s) for s in scores])


def _nll_and_grad(theta: np.ndarray, family: str, data: _Counts) -> tuple[float, np.ndarray]:
    """Negative log-likelihood of the aggregated counts and its gradient in the unconstrained parameters.

    Every family is a mixture of Beta parts (log a_j, log b_j) with a logit split: between the two Betas
    (beta-mixture) or between the Beta and the mass at p = 0 (zero-inflated). With r_j the posterior
    responsibility of part j, d ll / d log a_j = r_j a_j (psi(c+a_j) - psi(n+a_j+b_j) - psi(a_j) + psi(a_j+b_j))
    (b alike), and d ll / d logit = r_first - share_first. Closed forms make one evaluation ~20 us.
    """
    if family in LOGIT_FAMILIES:
        return _logit_normal_nll_and_grad(theta, data)
    n, c = data.n, data.c
    if family == "beta-mixture":
        share, log_w1, log_w2 = _split(theta[0])
        a, b = np.exp(theta[[1, 3]]), np.exp(theta[[2, 4]])
        log_w = np.array([log_w1, log_w2])
    else:
        a, b = np.exp(theta[[0]]), np.exp(theta[[1]])
        share, log_pi, log_keep = _split(theta[2]) if family == "zero-inflated-beta" else (0.0, -np.inf, 0.0)
        log_w = np.array([log_keep])
    a_, b_ = a[:, None], b[:, None]
    terms = log_w[:, None] + data.log_binom + special.betaln(c + a_, n - c + b_) - special.betaln(a_, b_)
    if family == "zero-inflated-beta":
        terms = np.vstack([np.where(data.unsolved, log_pi, -np.inf)[None], terms])  # part 0: p = 0
    top = terms.max(axis=0)
    ll = top + np.log(np.exp(terms - top).sum(axis=0))
    resp = np.exp(terms - ll)
    beta_resp = resp[1:] if family == "zero-inflated-beta" else resp
    psi_ab = special.digamma(a_ + b_) - special.digamma(n + a_ + b_)
    d_log_a = beta_resp * a_ * (special.digamma(c + a_) - special.digamma(a_) + psi_ab)
    d_log_b = beta_resp * b_ * (special.digamma(n - c + b_) - special.digamma(b_) + psi_ab)
    if family == "beta-mixture":
        grads = [resp[0] - share, d_log_a[0], d_log_b[0], d_log_a[1], d_log_b[1]]
    else:
        grads = [d_log_a[0], d_log_b[0]] + ([resp[0] - share] if family == "zero-inflated-beta" else [])
    w = data.w
    return -float(np.dot(w, ll)), -np.array([float(np.dot(w, g)) for g in grads])


def _fit_family(family: str, n, c, w, starts: Sequence[np.ndarray] | None = None) -> tuple[dict[str, float], float]:
    """Maximum-likelihood parameters for aggregated counts; several starts, the best kept."""
    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; expected one of {FAMILIES}")
    low, high = family_bounds(family)
    data = _Counts(n, c, w)
    if starts is None:
        starts = start_points(family, float(np.clip(np.dot(data.w, data.c) / max(np.dot(data.w, data.n), 1e-12), 0.02, 0.98)))
    # SLSQP with the closed-form gradient: ~30 evaluations a fit instead of Nelder-Mead's ~300, the same
    # optimum. (L-BFGS-B is as accurate but its BLAS calls spin threads on a busy machine: 10x the CPU.)
    best = None
    for x0 in starts:
        x0 = np.clip(np.asarray(x0, dtype=float), low, high)
        res = optimize.minimize(_nll_and_grad, x0, args=(family, data), jac=True, method="SLSQP",
                                bounds=list(zip(low, high, strict=True)),
                                options={"ftol": 1e-13, "maxiter": 500})
        if best is None or res.fun < best.fun:
            best = res
    return unpack_params(family, np.clip(best.x, low, high)), -float(best.fun)


def _scalar_or_array(out: np.ndarray) -> float | np.ndarray:
    return float(out) if np.ndim(out) == 0 else out


@dataclass(frozen=True)
class SuccessFit:
    """A fitted distribution of per-problem success probability p (see the module docstring)."""

    family: str
    params: dict[str, float]
    log_likelihood: float
    heldout_log_likelihood: float | None
    problems: int = 0
    candidates: dict[str, float] = field(default_factory=dict)  # held-out log-likelihood of each family tried

    @property
    def prior(self) -> Prior:
        return success_prior(self.family, self.params)

    @property
    def a(self) -> float:
        """a of the (first) Beta component (nan for the logit-normal family)."""
        return float(self.params.get("a", self.params.get("a1", math.nan)))

    @property
    def b(self) -> float:
        return float(self.params.get("b", self.params.get("b1", math.nan)))

    @property
    def pi(self) -> float:
        """Mass at p = 0 (0 unless zero-inflated)."""
        return float(self.params.get("pi", 0.0))

    @property
    def mean(self) -> float:
        """E[p]: the expected share of correct samples."""
        return float(self.prior.mean(np.zeros(1), np.zeros(1))[0])

    def coverage(self, k: int | np.ndarray) -> float | np.ndarray:
        """coverage@k = 1 - E[(1-p)^k] (for Beta parts: 1 - B(a, b+k)/B(a, b), weighted over the parts)."""
        k_arr = np.asarray(k, dtype=float)
        zeros = np.zeros(k_arr.size)
        return _scalar_or_array((1 - self.prior.miss(zeros, zeros, k_arr.ravel())).reshape(k_arr.shape))

    def expected_correct(self, k: int | np.ndarray) -> float | np.ndarray:
        """Expected correct samples per problem among k: k * E[p]."""
        return _scalar_or_array(np.asarray(k, dtype=float) * self.mean)

    def posterior_miss(self, n: np.ndarray, c: np.ndarray, m: int | np.ndarray) -> np.ndarray:
        """Per problem: E[(1-p)^m | n samples, c correct] — the chance that m more samples all fail."""
        n, c = (np.atleast_1d(np.asarray(x, dtype=float)) for x in (n, c))
        return self.prior.miss(n, c, m)

    def posterior_mean(self, n: np.ndarray, c: np.ndarray) -> np.ndarray:
        """Per problem: E[p | n samples, c correct]."""
        return self.prior.mean(*(np.atleast_1d(np.asarray(x, dtype=float)) for x in (n, c)))

    def posterior_sample(self, n: np.ndarray, c: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """One draw of each problem's p from its posterior."""
        return self.prior.sample(*(np.atleast_1d(np.asarray(x, dtype=float)) for x in (n, c)), rng)

    def correct_pmf(self, k: int) -> np.ndarray:
        """P(C = j), j = 0..k: the number of correct samples among k for a random problem."""
        return self.prior.correct_pmf(0.0, 0.0, int(k))

    def posterior_correct_pmf(self, n: int, c: int, m: int) -> np.ndarray:
        """P(C' = j), j = 0..m: correct samples among m more for a problem that had c of n correct."""
        return self.prior.correct_pmf(float(n), float(c), int(m))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def heldout_log_likelihood(family: str, n: np.ndarray, c: np.ndarray, *, folds: int = CV_FOLDS, seed: int = 0) -> float:
    """Sum over problems of log P(c_i | n_i) under a fit on the other folds (k-fold over problems)."""
    n, c = as_counts(n, c)
    folds = min(folds, len(n))
    if folds < 2:
        raise ValueError("held-out likelihood needs at least 2 problems")
    order = np.random.default_rng(seed).permutation(len(n))
    total = 0.0
    for f in range(folds):
        test = order[f::folds]
        train = np.setdiff1d(order, test)
        params, _ = _fit_family(family, *_aggregate(n[train], c[train]))
        total += float(np.sum(_pointwise_loglik(family, params, n[test].astype(float), c[test].astype(float))))
    return total


def fit_success(n: Any, c: Any, family: str = "auto", seed: int = 0) -> SuccessFit:
    """Fit the distribution of p from per-problem counts; ``auto`` picks the family by held-out likelihood."""
    n, c = as_counts(n, c)
    if len(n) == 0:
        raise ValueError("fit_success needs at least one problem")
    families = AUTO_FAMILIES if family == "auto" else (family,)
    if any(f not in FAMILIES for f in families):
        raise ValueError(f"unknown family {family!r}; expected 'auto' or one of {FAMILIES}")
    scores: dict[str, float] = {}
    if len(n) >= 2:
        scores = {f: heldout_log_likelihood(f, n, c, seed=seed) for f in families}
    chosen = max(scores, key=scores.__getitem__) if scores else families[0]
    params, ll = _fit_family(chosen, *_aggregate(n, c))
    return SuccessFit(chosen, params, ll, scores.get(chosen), problems=len(n), candidates=scores)


def refit(fit: SuccessFit, n: np.ndarray, c: np.ndarray) -> SuccessFit:
    """The same family refitted on other counts (a bootstrap resample), started from ``fit``."""
    n, c = as_counts(n, c)
    start = pack_params(fit.family, fit.params)
    params, ll = _fit_family(fit.family, *_aggregate(n, c), starts=[start])
    return SuccessFit(fit.family, params, ll, None, problems=len(n))


def pilot_coverage(n: Any, c: Any, k_per_problem: int | np.ndarray, *, fit: SuccessFit | None = None) -> float:
    """Empirical-Bayes coverage of THESE problems if each gets k samples in total (pilot included).

    Solved problems count 1; an unsolved one counts 1 - posterior_miss(n_i, 0, k_i - n_i).
    """
    n, c = as_counts(n, c)
    fit = fit or fit_success(n, c)
    more = np.maximum(np.broadcast_to(np.asarray(k_per_problem), n.shape) - n, 0)
    covered = np.where(c > 0, 1.0, 1.0 - fit.posterior_miss(n, c, more))
    return float(np.mean(covered))


# --------------------------------------------------------------------------- forecasts with intervals


@dataclass(frozen=True)
class ForecastPoint:
    k: int
    coverage: float
    coverage_low: float
    coverage_high: float
    unique_correct: float | None
    unique_correct_low: float | None
    unique_correct_high: float | None
    correct: float | None = None  # expected correct samples per problem
    power_law_coverage: float | None = None  # Brown et al.'s baseline on the same pilot
    measured_coverage: float | None = None  # filled in by callers that have more samples than the pilot
    measured_unique_correct: float | None = None
    refit_coverage_low: float | None = None  # intervals="families": the chosen family's own interval
    refit_coverage_high: float | None = None
    mle_unique_correct_low: float | None = None  # unique_intervals="profile": the MLE (theta, d)'s own interval
    mle_unique_correct_high: float | None = None


@dataclass(frozen=True)
class ModelForecast:
    model: str
    problems: int
    pilot_samples: float
    fit: SuccessFit
    points: list[ForecastPoint]
    unique_fit: UniqueFit | None = None
    power_law: PowerLawFit | None = None
    n_boot: int = 0
    measured_samples: int | None = None  # S, when callers compare with what S samples per problem measured
    measured_problems: int | None = None
    target: str = "population"  # or "pilot": the pilot problems themselves (forecast_pilot)
    interval_families: list[str] = field(default_factory=list)  # the families the intervals span
    unique_discounts: list[float] = field(default_factory=list)  # unique_intervals="profile": the d range spanned

    def to_dict(self) -> dict[str, Any]:
        """The ``--json`` shape of issue 13 (extra keys: unique_fit, power_law, per-point baselines)."""
        fit = {"family": self.fit.family, "params": self.fit.params, "log_likelihood": self.fit.log_likelihood,
               "heldout_log_likelihood": self.fit.heldout_log_likelihood, "candidates": self.fit.candidates}
        return {
            "model": self.model, "problems": self.problems, "pilot_samples": self.pilot_samples, "fit": fit,
            "unique_fit": self.unique_fit.to_dict() if self.unique_fit else None,
            "power_law": asdict(self.power_law) if self.power_law else None, "n_boot": self.n_boot,
            "measured_samples": self.measured_samples, "measured_problems": self.measured_problems,
            "target": self.target, "interval_families": self.interval_families,
            "unique_discounts": self.unique_discounts,
            "forecast": [asdict(p) for p in self.points],
        }


COUNT_COLUMNS = ("problem_id", "n", "c")


def _count_arrays(counts: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    missing = [col for col in COUNT_COLUMNS if col not in counts.columns]
    if missing:
        raise ValueError(f"counts lack column(s) {missing}")
    n, c = as_counts(counts["n"].to_numpy(), counts["c"].to_numpy())
    u = None
    if "unique_correct" in counts.columns and counts["unique_correct"].notna().all():
        u = counts["unique_correct"].to_numpy().astype(np.int64)
    return n, c, u


# Interval modes of forecast_counts, forecast_pilot and mixture.Forecaster: "refit" resamples problems and
# refits the chosen family (problem-sampling noise only); "families" (the default) is the union of the refit
# intervals of every family plausible_fits keeps, so a forecast that hinges on a family's tail says so.
INTERVALS = ("refit", "families")
UNIQUE_INTERVALS = ("bootstrap", "profile")  # module docstring; "profile": forecast_unique's docstring
ENVELOPE_FAMILIES = ("beta-binomial", "zero-inflated-beta", "logit-normal", "skew-logit-normal")
ENVELOPE_NATS = 2.0


def plausible_fits(fit: SuccessFit, n: np.ndarray, c: np.ndarray, seed: int = 0, intervals: str = "families") -> dict[str, SuccessFit]:
    """The families an interval spans (INTERVALS), ``fit`` first: "refit" ``fit`` alone; "families" also every
    family of ENVELOPE_FAMILIES within ENVELOPE_NATS of the best held-out log-likelihood, fitted to all (n, c)."""
    if intervals != "families":
        return {fit.family: fit}
    scores = dict(fit.candidates)
    for family in ENVELOPE_FAMILIES:
        if family not in scores and len(n) >= 2:
            scores[family] = heldout_log_likelihood(family, n, c, seed=seed)
    best = max(scores.values(), default=0.0)
    out = {fit.family: fit}
    for family in ENVELOPE_FAMILIES:
        if family != fit.family and family in scores and scores[family] >= best - ENVELOPE_NATS:
            out[family] = fit_success(n, c, family=family, seed=seed)
    return out


def _bootstrap(fits: dict[str, SuccessFit], ufits: dict[str, UniqueFit], n, c, u, ks: list[int], n_boot: int,
               seed: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per family: coverage of every resample of problems (rows) at every k (columns), and unique@k per
    uniqueness model of ``ufits`` (models x resamples x k; nan where a resample has no correct sample)."""
    k_arr = np.array(ks, dtype=float)
    rng = np.random.default_rng(seed)
    out = {f: (np.empty((n_boot, len(ks))), np.full((len(ufits), n_boot, len(ks)), np.nan)) for f in fits}
    for i in range(n_boot):
        idx = rng.integers(0, len(n), len(n))
        ufs = forecast_unique.refit_unique(ufits, c, u, idx)
        for family, fit in fits.items():
            f = refit(fit, n[idx], c[idx])
            out[family][0][i] = f.coverage(k_arr)
            if ufs:  # every uniqueness model from one correct_pmf per k
                out[family][1][:, i] = forecast_unique.unique_at_ks(ufs, f, ks)
    return out


def _interval(boots: list[np.ndarray], j: int) -> tuple[float | None, float | None]:
    """The union of the families' 95% percentile intervals at column j (None without any finite value)."""
    cols = [b[:, j][~np.isnan(b[:, j])] for b in boots]
    cols = [col for col in cols if col.size]
    if not cols:
        return None, None
    return min(float(np.percentile(col, 2.5)) for col in cols), max(float(np.percentile(col, 97.5)) for col in cols)


def _check(ks: Sequence[int], n_boot: int, intervals: str, unique_intervals: str = "bootstrap") -> list[int]:
    ks = [int(k) for k in ks]
    if not ks or min(ks) < 1:
        raise ValueError(f"k values must be >= 1, got {ks}")
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    if intervals not in INTERVALS:
        raise ValueError(f"unknown intervals {intervals!r}; expected one of {INTERVALS}")
    if unique_intervals not in UNIQUE_INTERVALS:
        raise ValueError(f"unknown unique_intervals {unique_intervals!r}; expected one of {UNIQUE_INTERVALS}")
    return ks


def _fits(n, c, u, family: str, intervals: str, seed: int,
          unique_intervals: str) -> tuple[SuccessFit, dict[str, UniqueFit], dict[str, SuccessFit]]:
    """The chosen fit, the uniqueness models the intervals span ("mle" first) and the families (chosen first)."""
    fit = fit_success(n, c, family=family, seed=seed)
    ufits = forecast_unique.unique_models(c, u, unique_intervals == "profile", ENVELOPE_NATS) if u is not None else {}
    return fit, ufits, plausible_fits(fit, n, c, seed, intervals)


def _interval_fields(boot: dict[str, tuple[np.ndarray, np.ndarray]], chosen: str, j: int,
                     unique: bool) -> dict[str, float | None]:
    """A ForecastPoint's intervals at column j: the union over the families of ``boot`` (unique@k: and its
    uniqueness models); with more than one, the chosen family's (``refit_*``) and the MLE's (``mle_unique_*``)."""
    low, high = _interval([b[0] for b in boot.values()], j)
    out = {"coverage_low": low, "coverage_high": high, "unique_correct_low": None, "unique_correct_high": None}
    if unique:
        out["unique_correct_low"], out["unique_correct_high"] = _interval([m for b in boot.values() for m in b[1]], j)
        if len(next(iter(boot.values()))[1]) > 1:
            out["mle_unique_correct_low"], out["mle_unique_correct_high"] = _interval([b[1][0] for b in boot.values()], j)
    if len(boot) > 1:
        out["refit_coverage_low"], out["refit_coverage_high"] = _interval([boot[chosen][0]], j)
    return out


def forecast_counts(counts: pd.DataFrame, ks: Sequence[int] = DEFAULT_KS, *, model: str = "", n_boot: int = 200,
                    seed: int = 0, family: str = "auto", intervals: str = "families",
                    unique_intervals: str = "bootstrap") -> ModelForecast:
    """Forecast coverage, correct and unique-correct per problem at each k, with bootstrap intervals.

    ``counts`` has one row per problem: ``problem_id, n, c`` and optionally ``unique_correct`` (distinct
    correct solutions among the c; without it the diversity forecast is None). ``intervals``: see
    INTERVALS; with "families" each point also keeps the chosen family's own interval (``refit_*``).
    ``unique_intervals``: see UNIQUE_INTERVALS (the coverage forecasts and intervals do not depend on it).
    """
    ks = _check(ks, n_boot, intervals, unique_intervals)
    n, c, u = _count_arrays(counts)
    fit, ufits, fits = _fits(n, c, u, family, intervals, seed, unique_intervals)
    ufit = ufits.get("mle")
    boot = _bootstrap(fits, ufits, n, c, u, ks, n_boot, seed)
    power = power_law_from_counts(n, c)
    points = [ForecastPoint(
        k=k, coverage=float(fit.coverage(k)), unique_correct=ufit.unique_at_k(fit, k) if ufit is not None else None,
        correct=float(fit.expected_correct(k)), power_law_coverage=float(power.coverage(k)) if power else None,
        **_interval_fields(boot, fit.family, j, ufit is not None),
    ) for j, k in enumerate(ks)]
    return ModelForecast(model=model, problems=len(n), pilot_samples=float(np.mean(n)), fit=fit, points=points,
                         unique_fit=ufit, power_law=power, n_boot=n_boot, interval_families=list(fits),
                         unique_discounts=forecast_unique.discounts(ufits))


def _pilot_point(fit: SuccessFit, ufit: UniqueFit | None, n, c, u, k: int) -> tuple[float, float | None]:
    """Exact empirical-Bayes expectations for the pilot problems at k samples each (k >= every n_i)."""
    cov = pilot_coverage(n, c, k, fit=fit)
    if ufit is None:
        return cov, None
    values = [ui + float(np.dot(fit.posterior_correct_pmf(ni, ci, k - ni), ufit.growth(ci, np.arange(k - ni + 1), ui)))
              for ni, ci, ui in zip(n.tolist(), c.tolist(), u.tolist(), strict=True)]
    return cov, float(np.mean(values))


def _pilot_bootstrap(fit: SuccessFit, ufits: dict[str, UniqueFit], n, c, u, ks: list[int], n_boot: int,
                     seed: int, seating: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """One family: the pilot problems' coverage (resamples x k) and unique@k (models x resamples x k). Each
    resample of problems refits the prior, draws every pilot problem's p and extra correct samples from its
    posterior, and their new distinct solutions (expected; with ``seating`` drawn, from a second generator).
    Every family draws from generators seeded with ``seed``: the chosen family's interval is its own."""
    rng, seats = np.random.default_rng(seed), np.random.default_rng([seed, 1])
    cov_boot, uniq_boot = np.empty((n_boot, len(ks))), np.empty((len(ufits), n_boot, len(ks)))
    for i in range(n_boot):
        idx = rng.integers(0, len(n), len(n))
        f = refit(fit, n[idx], c[idx])
        ufs = forecast_unique.refit_unique(ufits, c, u, idx) or list(ufits.values())
        p = f.posterior_sample(n, c, rng)
        for j, k in enumerate(ks):
            extra = rng.binomial(k - n, p)
            cov_boot[i, j] = np.mean((c > 0) | (extra > 0))
            for m, uf in enumerate(ufs):
                grow = forecast_unique.sample_growth(uf, c, extra, u, seats) if seating else uf.growth(c, extra, u)
                uniq_boot[m, i, j] = np.mean(u + grow)
    return cov_boot, uniq_boot


def forecast_pilot(counts: pd.DataFrame, ks: Sequence[int] = DEFAULT_KS, *, model: str = "", n_boot: int = 200,
                   seed: int = 0, family: str = "auto", intervals: str = "families",
                   unique_intervals: str = "bootstrap") -> ModelForecast:
    """Forecast for THESE pilot problems if each got k samples in total (its pilot included).

    Solved problems stay solved; unsolved ones are solved with their posterior probability, and unique
    solutions grow from each problem's u_i by the Pitman-Yor model given its posterior extra correct samples
    (:func:`pilot_coverage`). Intervals: a bootstrap over problems refits the prior, then draws each
    problem's p and extra correct samples from its posterior (:func:`_pilot_bootstrap`). ``intervals``
    and ``unique_intervals`` as in :func:`forecast_counts` ("families": the union over :func:`plausible_fits`,
    each point keeping the chosen family's own, ``refit_*``). The point forecast is the chosen family's.
    Needs k >= every n_i (smaller k are dropped).
    Toy backtest (docs/results/forecast-backtest-toy/pilot_target_*.json): "families" holds what the first
    k samples solved in 80 of 80 cells ("refit": 76), 15.7 points wide on average ("refit": 12.1).
    """
    n, c, u = _count_arrays(counts)
    ks = [k for k in _check(ks, n_boot, intervals, unique_intervals) if k >= int(n.max())]
    if not ks:
        raise ValueError(f"the pilot target needs k >= the pilot's samples per problem ({int(n.max())})")
    fit, ufits, fits = _fits(n, c, u, family, intervals, seed, unique_intervals)
    ufit, seating = ufits.get("mle"), unique_intervals == "profile"
    boot = {f: _pilot_bootstrap(one, ufits, n, c, u, ks, n_boot, seed, seating) for f, one in fits.items()}
    points = []
    for j, k in enumerate(ks):
        cov, uniq = _pilot_point(fit, ufit, n, c, u, k)
        points.append(ForecastPoint(
            k=k, coverage=cov, unique_correct=uniq,
            correct=float(np.sum(c) / len(n) + np.mean((k - n) * fit.posterior_mean(n, c))),
            **_interval_fields(boot, fit.family, j, uniq is not None),
        ))
    return ModelForecast(model=model, problems=len(n), pilot_samples=float(np.mean(n)), fit=fit, points=points,
                         unique_fit=ufit, n_boot=n_boot, target="pilot", interval_families=list(fits),
                         unique_discounts=forecast_unique.discounts(ufits))
