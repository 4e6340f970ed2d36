"""Unique correct solutions per problem: a Pitman-Yor (two-parameter Chinese-restaurant) model.

Within a problem, correct solutions are draws from a Pitman-Yor process with concentration theta >= 0
and discount 0 <= d < 1 shared by all problems: after j correct samples with K distinct solutions, the
next correct sample is a new distinct solution with probability (theta + K d) / (theta + j). d = 0 is
the Chinese-restaurant process (distinct solutions grow like theta log m); d > 0 makes them grow like
m^d, which the toy world's solutions do (a CRP fitted to 8-16 samples per problem under-forecast unique@100
by half, its fitted theta growing with n; README "Forecasting from a pilot").

Fit: maximum likelihood on each pilot problem's (c correct, u unique) alone. P(K_c = u) =
prod_{i=1}^{u-1} (theta + i d) / (theta + 1)_{c-1} * S_d(c, u), with the generalised factorial
coefficients S_d(c + 1, u) = (c - u d) S_d(c, u) + S_d(c, u - 1) (Stirling numbers of the first kind at
d = 0). Forecasts: E[K_m] = (theta / d) ((theta + d)_m / (theta)_m - 1), and from a problem's observed
(c, u), E[K_{c+e}] = u + (theta / d + u) ((theta + c + d)_e / (theta + c)_e - 1), because
K_j + theta / d grows by the factor (theta + j + d) / (theta + j) in expectation at every step (the
CRP's digamma forms at d = 0). Pure maths; :mod:`flopmatch.forecast` re-exports :class:`UniqueFit` and
:func:`fit_unique`.

How weakly a pilot pins d down (:func:`plausible_unique_fits`): with few correct samples per problem the
likelihood is flat in d, and the MLE is often low (toy world, c <= 8 correct per problem: unique@100
under-forecast by ~2 of ~5). The profile log-likelihood of d (theta re-optimised at each d,
:func:`fit_unique_at`) gives the set {d: profile >= max - nats}, the same rule as the success families'
ENVELOPE_NATS; its two ends, each with its own re-optimised theta, are the uniqueness models the pilot
cannot rule out. :func:`flopmatch.forecast.forecast_counts` spans them in its unique@k intervals with
``unique_intervals="profile"`` (and :func:`flopmatch.forecast.forecast_pilot` also draws the solutions still
to come, :func:`sample_growth`). Opt-in: on the toy backtest (docs/results/forecast-backtest-toy/
unique_profile.md) it holds the population truth in 73 of 90 cells (the MLE's bootstrap alone: 61), 2.12 vs
1.74 unique solutions wide, and the pilot target's first-k truth in 51 of 80 (32), short of the 90% fixed
beforehand: unique@100 from n <= 8 stays low even at the high end of d (the model, one (theta, d) for
every problem, grows more slowly at large m than the toy world's solutions do).
"""

from __future__ import annotations

import functools
import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy import optimize, special

_THETA_LOG_BOUND = 14.0


# --------------------------------------------------------------------------- unique correct solutions


MAX_DISCOUNT = 0.95  # d -> 1 is a degenerate process (every solution new); keep clear of it
CRP_DISCOUNT = 1e-6  # below this the CRP's closed form is used (error O(d))


def _log_rising(x: np.ndarray | float, m: np.ndarray | float) -> np.ndarray:
    """log of the rising factorial (x)_m = Gamma(x + m) / Gamma(x)."""
    return special.gammaln(np.asarray(x, dtype=float) + m) - special.gammaln(x)


@dataclass(frozen=True)
class UniqueFit:
    """Pitman-Yor model of distinct correct solutions within a problem (module docstring)."""

    theta: float
    log_likelihood: float
    problems: int
    discount: float = 0.0
    model: str = "pitman-yor"

    def unique_given_correct(self, m: int | np.ndarray) -> np.ndarray:
        """Expected distinct solutions among m correct ones, E[K_m]."""
        return self.growth(np.zeros_like(np.asarray(m, dtype=float)), m, 0.0)

    def growth(self, c: np.ndarray, extra: np.ndarray, u: np.ndarray | float) -> np.ndarray:
        """Expected new distinct solutions when a problem with c correct, u of them distinct, gets ``extra``
        more correct ones."""
        c, extra, u = (np.asarray(x, dtype=float) for x in (c, extra, u))
        t, d = self.theta, self.discount
        if d < CRP_DISCOUNT:  # the d -> 0 limit; the general form loses every digit there
            return t * (special.digamma(t + c + extra) - special.digamma(t + c))
        return (t / d + u) * np.expm1(_log_rising(t + c + d, extra) - _log_rising(t + c, extra))

    def unique_at_k(self, success: Any, k: int) -> float:
        """E[unique correct among k samples] for a random problem, summing exactly over C = 0..k.

        ``success`` is a :class:`flopmatch.forecast.SuccessFit` (anything with ``correct_pmf(k)``)."""
        return self.unique_given_pmf(success.correct_pmf(int(k)))

    def unique_given_pmf(self, pmf: np.ndarray) -> float:
        """E[unique correct] when the number of correct samples C has ``pmf`` over 0..len(pmf) - 1."""
        return float(np.dot(pmf, self.unique_given_correct(np.arange(len(pmf)))))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def unique_at_ks(models: list[UniqueFit], success: Any, ks: list[int]) -> np.ndarray:
    """:meth:`UniqueFit.unique_at_k` of every model (rows) at every k (columns), each k's ``correct_pmf``
    computed once for all the models (the uniqueness models of one success fit share it)."""
    out = np.empty((len(models), len(ks)))
    for j, k in enumerate(ks):
        pmf = success.correct_pmf(int(k))
        out[:, j] = [m.unique_given_pmf(pmf) for m in models]
    return out


def log_generalised_factorial(c_max: int, d: float) -> np.ndarray:
    """log S_d(c, u) for 0 <= u <= c <= c_max (rows c, columns u; -inf where zero)."""
    table = np.full((c_max + 1, c_max + 1), -np.inf)
    table[0, 0] = 0.0
    u = np.arange(1, c_max + 1, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        for c in range(c_max):
            stay = table[c, 1:] + np.log(np.where(c - u * d > 0, c - u * d, 0.0))
            table[c + 1, 1:] = np.logaddexp(stay, table[c, :-1])
    return table


def unique_log_likelihood(
    theta: float, d: float, c: np.ndarray, u: np.ndarray, terms: float | None = None
) -> float:
    """sum over problems of log P(K_c = u) under Pitman-Yor(theta, d); c >= 1, 1 <= u <= c (ints).

    ``terms``: the sum over problems of log S_d(c, u), when the caller holds it (a profile fit evaluates
    one d at many theta); else from :func:`log_generalised_factorial`."""
    steps = np.log(theta + d * np.arange(1, int(u.max()), dtype=float)) if u.max() > 1 else np.empty(0)
    new_tables = np.concatenate([[0.0], np.cumsum(steps)])[u - 1]
    seating = new_tables - _log_rising(theta + 1, c - 1)
    if terms is not None:
        return float(np.sum(seating) + terms)
    return float(np.sum(seating + log_generalised_factorial(int(c.max()), d)[c, u]))


def fit_unique(c: Any, u: Any, start: UniqueFit | None = None) -> UniqueFit:
    """Maximum-likelihood Pitman-Yor (theta, d) from per-problem (correct, unique) counts; c = 0 rows carry none.

    ``start``: a fit to start from (one start instead of two: bootstrap refits)."""
    c_arr, u_arr = np.asarray(c, dtype=np.int64), np.asarray(u, dtype=np.int64)
    bad = np.flatnonzero((u_arr < 0) | (u_arr > c_arr) | ((c_arr > 0) & (u_arr < 1)))
    if bad.size:
        i = int(bad[0])
        raise ValueError(f"problem {i}: unique_correct={u_arr[i]} must be between 1 and c={c_arr[i]} (0 when c=0)")
    keep = c_arr > 0
    cs, us = c_arr[keep].astype(float), u_arr[keep].astype(float)
    if cs.size == 0:
        raise ValueError("fit_unique needs at least one problem with a correct sample")

    cs, us = cs.astype(np.int64), us.astype(np.int64)

    def nll(x: np.ndarray) -> float:
        log_theta = min(max(x[0], -_THETA_LOG_BOUND), _THETA_LOG_BOUND)
        return -unique_log_likelihood(math.exp(log_theta), MAX_DISCOUNT * special.expit(x[1]), cs, us)

    # Two parameters, a smooth surface: Nelder-Mead from a CRP-like and a discounted start, the best kept.
    starts = [np.array([0.0, -4.0]), np.array([-2.0, 0.0])]
    if start is not None:
        share = min(max(start.discount / MAX_DISCOUNT, 1e-6), 1 - 1e-6)
        starts = [np.array([math.log(start.theta), math.log(share / (1 - share))])]
    best = min((optimize.minimize(nll, x0, method="Nelder-Mead", options={"xatol": 1e-4, "fatol": 1e-6})
                for x0 in starts), key=lambda r: r.fun)
    log_theta = float(np.clip(best.x[0], -_THETA_LOG_BOUND, _THETA_LOG_BOUND))
    return UniqueFit(theta=math.exp(log_theta), log_likelihood=-float(best.fun), problems=int(cs.size),
                     discount=float(MAX_DISCOUNT * special.expit(best.x[1])))


@functools.lru_cache(maxsize=16)  # the bootstrap reuses the ends' two d; tables are c_max^2
def _cached_table(c_max: int, d: float) -> np.ndarray:
    """log_generalised_factorial for a fixed d (profile fits evaluate one d at many theta)."""
    return log_generalised_factorial(c_max, d)


def fit_unique_at(c: Any, u: Any, discount: float) -> UniqueFit:
    """Maximum-likelihood theta with the discount held at ``discount`` (the profile likelihood of d)."""
    c_arr, u_arr = np.asarray(c, dtype=np.int64), np.asarray(u, dtype=np.int64)
    keep = c_arr > 0
    cs, us = c_arr[keep], u_arr[keep]
    if cs.size == 0:
        raise ValueError("fit_unique_at needs at least one problem with a correct sample")
    d = float(min(max(discount, 0.0), MAX_DISCOUNT))
    terms = float(np.sum(_cached_table(int(cs.max()), d)[cs, us]))
    res = optimize.minimize_scalar(lambda x: -unique_log_likelihood(math.exp(x), d, cs, us, terms),
                                   bounds=(-_THETA_LOG_BOUND, _THETA_LOG_BOUND), method="bounded",
                                   options={"xatol": 1e-5})
    return UniqueFit(theta=math.exp(float(res.x)), log_likelihood=-float(res.fun), problems=int(cs.size), discount=d)


PROFILE_GRID = np.linspace(0.0, MAX_DISCOUNT, 39)


def discount_range(c: Any, u: Any, fit: UniqueFit, nats: float = 2.0) -> tuple[float, float]:
    """The ends of {d: profile log-likelihood >= fit's - nats} (theta re-optimised at every d), each end
    found by bisection between grid points of PROFILE_GRID; the set contains fit.discount."""
    c_arr, u_arr = np.asarray(c, dtype=np.int64), np.asarray(u, dtype=np.int64)
    floor = fit.log_likelihood - nats

    def gap(d: float) -> float:
        return fit_unique_at(c_arr, u_arr, d).log_likelihood - floor

    below = [d for d in PROFILE_GRID if d < fit.discount]
    above = [d for d in PROFILE_GRID if d > fit.discount]
    ends = []
    for side, inner in ((below[::-1], fit.discount), (above, fit.discount)):
        end = side[-1] if side else fit.discount  # the boundary when the whole side is plausible
        for d in side:
            if gap(d) < 0:
                end = optimize.brentq(gap, min(d, inner), max(d, inner), xtol=1e-4)
                break
            inner = d
        ends.append(float(end))
    return ends[0], ends[1]


def plausible_unique_fits(c: Any, u: Any, fit: UniqueFit, nats: float = 2.0) -> dict[str, UniqueFit]:
    """``fit`` ("mle") and the profile fits at both ends of :func:`discount_range` ("low", "high")."""
    low, high = discount_range(c, u, fit, nats)
    return {"mle": fit, "low": fit_unique_at(c, u, low), "high": fit_unique_at(c, u, high)}


def sample_growth(fit: UniqueFit, c: np.ndarray, extra: np.ndarray, u: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One draw of the new distinct solutions per problem when a problem with c correct (u distinct) gets
    ``extra`` more correct ones: sequential Pitman-Yor seating, new with probability (theta + K d) / (theta + j)."""
    c, extra = np.asarray(c, dtype=float), np.asarray(extra, dtype=np.int64)
    k = np.asarray(u, dtype=float).copy()
    start = k.copy()
    for step in range(int(extra.max(initial=0))):
        new = (rng.random(k.shape) * (fit.theta + c + step) < fit.theta + k * fit.discount) & (step < extra)
        k += new
    return k - start


def refit_unique(models: dict[str, UniqueFit], c: np.ndarray, u: np.ndarray | None, idx: np.ndarray) -> list[UniqueFit]:
    """The models of :func:`plausible_unique_fits` refitted on the resample ``idx`` of the problems: the MLE as
    :func:`fit_unique` from itself, the others' theta at their own d ([] without models, when ``u`` may be
    None, and when no problem of the resample has a correct sample)."""
    if not models:
        return []
    c, u = c[idx], u[idx]
    if not (np.asarray(c) > 0).any():
        return []
    return [fit_unique(c, u, start=m) if name == "mle" else fit_unique_at(c, u, m.discount) for name, m in models.items()]


def unique_models(c: np.ndarray, u: np.ndarray, profile: bool, nats: float = 2.0) -> dict[str, UniqueFit]:
    """{"mle": fit_unique(c, u)}, with ``profile`` :func:`plausible_unique_fits`; {} without a correct sample."""
    if not (np.asarray(c) > 0).any():
        return {}
    fit = fit_unique(c, u)
    return plausible_unique_fits(c, u, fit, nats) if profile else {"mle": fit}


def discounts(models: dict[str, UniqueFit]) -> list[float]:
    """The d range the models span ([] for the MLE alone)."""
    return [models["low"].discount, models["high"].discount] if "low" in models else []
