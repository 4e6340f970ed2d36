"""A prior over per-problem success probability p as a finite mixture of parts (pure maths).

Every success family of :mod:`flopmatch.forecast` is one of these:

* Beta parts ``Beta(a_j, b_j)`` with weights (beta-binomial: one part; beta-mixture: two);
* atoms: point masses at ``p_g`` with weights (the zero-inflated family's mass at p = 0; the
  logit-normal family, discretised on a fine grid in logit space).

Everything a forecast needs is an expectation under the posterior of one problem that had c correct of
n samples, and the prior itself is that posterior with n = c = 0. So each quantity is written once, per
part, in closed form: a Beta part updates to Beta(a + c, b + n - c); an atom stays where it is and only
its weight changes (by the binomial likelihood p^c (1 - p)^(n - c)).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import special

# The logit-normal grid: wide enough that the tails beyond it carry no visible mass for any fitted
# (mu, sigma) within the bounds below, fine enough (0.05 in logit) that the discretisation changes
# coverage@k by < 1e-4 (checked against numeric integration in tests/test_forecast.py).
LOGIT_GRID = np.linspace(-18.0, 14.0, 641)
GRID_P = special.expit(LOGIT_GRID)
MU_BOUND = 10.0
LOG_SIGMA_BOUNDS = (np.log(0.1), np.log(8.0))


def as_counts(n: Any, c: Any) -> tuple[np.ndarray, np.ndarray]:
    """Validated int arrays (n_i >= 1, 0 <= c_i <= n_i); errors name the first bad problem's index."""
    n_arr, c_arr = np.asarray(n), np.asarray(c)
    if n_arr.shape != c_arr.shape or n_arr.ndim != 1:
        raise ValueError(f"n and c must be 1-d arrays of equal length, got shapes {n_arr.shape} and {c_arr.shape}")
    for name, arr in (("n", n_arr), ("c", c_arr)):
        if arr.size and not np.all(np.asarray(arr, dtype=float) == np.round(np.asarray(arr, dtype=float))):
            raise ValueError(f"{name} must hold integers; problem {int(np.argmax(arr != np.round(arr)))} does not")
    n_arr, c_arr = n_arr.astype(np.int64), c_arr.astype(np.int64)
    bad = np.flatnonzero((n_arr < 1) | (c_arr < 0) | (c_arr > n_arr))
    if bad.size:
        i = int(bad[0])
        raise ValueError(f"problem {i}: need n >= 1 and 0 <= c <= n, got n={n_arr[i]}, c={c_arr[i]}")
    return n_arr, c_arr


def log_binom(n, c):
    return special.gammaln(n + 1) - special.gammaln(c + 1) - special.gammaln(n - c + 1)


def logit_normal_log_weights(mu: float, sigma: float) -> np.ndarray:
    """Log weights of the grid atoms for logit(p) ~ Normal(mu, sigma^2), normalised over the grid."""
    z = -0.5 * ((LOGIT_GRID - mu) / sigma) ** 2
    return z - special.logsumexp(z)


def atom_log_likelihood(p: np.ndarray, n, c) -> np.ndarray:
    """c log p + (n - c) log(1 - p) for atoms (rows) and problems (columns); 0 log 0 = 0 at p = 0."""
    p = np.asarray(p, dtype=float)[:, None]
    return special.xlogy(c, p) + special.xlog1py(n - c, -p)


@dataclass(frozen=True)
class Prior:
    """Weights (log) and shapes of the Beta parts, weights (log) and locations of the atoms."""

    beta_log_w: np.ndarray
    a: np.ndarray
    b: np.ndarray
    atom_log_w: np.ndarray
    atom_p: np.ndarray

    @classmethod
    def betas(cls, w, a, b, pi: float = 0.0) -> Prior:
        """Beta parts with weights ``(1 - pi) * w`` and, when pi > 0, an atom at p = 0 of weight pi."""
        with np.errstate(divide="ignore"):
            beta_log_w = np.log(np.asarray(w, dtype=float)) + np.log1p(-pi)
        atoms = np.array([np.log(pi)]) if pi > 0 else np.empty(0)
        return cls(beta_log_w, np.asarray(a, dtype=float), np.asarray(b, dtype=float), atoms, np.zeros(atoms.size))

    @classmethod
    def logit_normal(cls, mu: float, sigma: float) -> Prior:
        empty = np.empty(0)
        return cls(empty, empty, empty, logit_normal_log_weights(mu, sigma), GRID_P)

    def log_joint(self, n: np.ndarray, c: np.ndarray) -> np.ndarray:
        """log(weight_j * P(c | n, part j)) for every part (rows: Beta parts, then atoms) and problem."""
        n, c = np.asarray(n, dtype=float), np.asarray(c, dtype=float)
        lb = log_binom(n, c)[None]
        a, b = self.a[:, None], self.b[:, None]
        beta = self.beta_log_w[:, None] + lb + special.betaln(c + a, n - c + b) - special.betaln(a, b)
        return np.vstack([beta, self.atom_log_w[:, None] + lb + atom_log_likelihood(self.atom_p, n, c)])

    def log_marginal(self, n: np.ndarray, c: np.ndarray) -> np.ndarray:
        """log P(c | n) per problem."""
        return special.logsumexp(self.log_joint(n, c), axis=0)

    def posterior(self, n: np.ndarray, c: np.ndarray) -> np.ndarray:
        """Posterior weight of every part (parts x problems)."""
        joint = self.log_joint(n, c)
        return np.exp(joint - special.logsumexp(joint, axis=0))

    def _beta_post(self, n, c) -> tuple[np.ndarray, np.ndarray]:
        return self.a[:, None] + c, self.b[:, None] + n - c

    def miss(self, n: np.ndarray, c: np.ndarray, m: np.ndarray | float) -> np.ndarray:
        """Per problem: E[(1 - p)^m | c of n correct], m broadcast against the problems."""
        n, c = np.asarray(n, dtype=float), np.asarray(c, dtype=float)
        m = np.broadcast_to(np.asarray(m, dtype=float), n.shape)
        a_post, b_post = self._beta_post(n, c)
        beta = np.exp(special.betaln(a_post, b_post + m) - special.betaln(a_post, b_post))
        atom = np.exp(special.xlog1py(m[None], -self.atom_p[:, None]))
        return np.sum(self.posterior(n, c) * np.vstack([beta, atom]), axis=0)

    def mean(self, n: np.ndarray, c: np.ndarray) -> np.ndarray:
        """Per problem: E[p | c of n correct]."""
        n, c = np.asarray(n, dtype=float), np.asarray(c, dtype=float)
        a_post, b_post = self._beta_post(n, c)
        parts = np.vstack([a_post / (a_post + b_post), np.broadcast_to(self.atom_p[:, None], (self.atom_p.size, n.size))])
        return np.sum(self.posterior(n, c) * parts, axis=0)

    def sample(self, n: np.ndarray, c: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """One draw of each problem's p from its posterior."""
        n, c = np.asarray(n, dtype=float), np.asarray(c, dtype=float)
        post = self.posterior(n, c)
        part = np.minimum((rng.random(n.size)[None] > np.cumsum(post, axis=0)).sum(axis=0), len(post) - 1)
        nb = self.a.size
        j = np.minimum(part, max(nb - 1, 0))
        beta_draw = rng.beta(self.a[j] + c, self.b[j] + n - c) if nb else np.zeros(n.size)
        atom_draw = self.atom_p[np.maximum(part - nb, 0)] if self.atom_p.size else np.zeros(n.size)
        return np.where(part < nb, beta_draw, atom_draw)

    def correct_pmf(self, n: float, c: float, m: int) -> np.ndarray:
        """P(C' = j), j = 0..m: correct samples among m more for a problem that had c of n correct."""
        post = self.posterior(np.array([float(n)]), np.array([float(c)]))[:, 0]
        j = np.arange(m + 1, dtype=float)[None]
        lb = log_binom(float(m), j)
        a_post, b_post = self.a[:, None] + c, self.b[:, None] + n - c
        beta = np.exp(lb + special.betaln(a_post + j, b_post + m - j) - special.betaln(a_post, b_post))
        atom = np.exp(lb + atom_log_likelihood(self.atom_p, float(m), j))
        return post @ np.vstack([beta, atom])
