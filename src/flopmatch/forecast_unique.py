"""Unique correct solutions per problem: a Chinese-restaurant-process model (see :mod:`flopmatch.forecast`).

Within a problem, correct solutions are draws from a CRP with one concentration theta shared by all
problems: the j-th correct sample is a new distinct solution with probability theta / (theta + j - 1).
Pure maths; :mod:`flopmatch.forecast` re-exports :class:`UniqueFit` and :func:`fit_unique`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy import optimize, special

_THETA_LOG_BOUND = 14.0


# --------------------------------------------------------------------------- unique correct solutions


@dataclass(frozen=True)
class UniqueFit:
    """Chinese-restaurant-process model of distinct correct solutions within a problem (module docstring)."""

    theta: float
    log_likelihood: float
    problems: int
    model: str = "crp"

    def unique_given_correct(self, m: int | np.ndarray) -> np.ndarray:
        """Expected distinct solutions among m correct ones: theta * (digamma(theta + m) - digamma(theta))."""
        m = np.asarray(m, dtype=float)
        return self.theta * (special.digamma(self.theta + m) - special.digamma(self.theta))

    def growth(self, c: np.ndarray, extra: np.ndarray) -> np.ndarray:
        """Expected new distinct solutions when a problem with c correct gets ``extra`` more correct ones."""
        c, extra = np.asarray(c, dtype=float), np.asarray(extra, dtype=float)
        return self.theta * (special.digamma(self.theta + c + extra) - special.digamma(self.theta + c))

    def unique_at_k(self, success: Any, k: int) -> float:
        """E[unique correct among k samples] for a random problem, summing exactly over C = 0..k.

        ``success`` is a :class:`flopmatch.forecast.SuccessFit` (anything with ``correct_pmf(k)``)."""
        pmf = success.correct_pmf(int(k))
        return float(np.dot(pmf, self.unique_given_correct(np.arange(int(k) + 1))))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def fit_unique(c: Any, u: Any) -> UniqueFit:
    """Maximum-likelihood CRP concentration from per-problem (correct, unique) counts; c = 0 rows carry none."""
    c_arr, u_arr = np.asarray(c, dtype=np.int64), np.asarray(u, dtype=np.int64)
    bad = np.flatnonzero((u_arr < 0) | (u_arr > c_arr) | ((c_arr > 0) & (u_arr < 1)))
    if bad.size:
        i = int(bad[0])
        raise ValueError(f"problem {i}: unique_correct={u_arr[i]} must be between 1 and c={c_arr[i]} (0 when c=0)")
    keep = c_arr > 0
    cs, us = c_arr[keep].astype(float), u_arr[keep].astype(float)
    if cs.size == 0:
        raise ValueError("fit_unique needs at least one problem with a correct sample")

    def nll(log_theta: float) -> float:
        t = math.exp(log_theta)
        return -float(np.sum(us * log_theta + special.gammaln(t) - special.gammaln(t + cs)))

    res = optimize.minimize_scalar(nll, bounds=(-_THETA_LOG_BOUND, _THETA_LOG_BOUND), method="bounded")
    return UniqueFit(theta=math.exp(res.x), log_likelihood=-float(res.fun), problems=int(cs.size))
