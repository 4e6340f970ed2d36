"""A prior over per-problem success probability p as a finite mixture of parts (pure maths).

Every success family of :mod:`flopmatch.forecast` is one of these:

* Beta parts ``Beta(a_j, b_j)`` with weights (beta-binomial: one part; beta-mixture: two);
* atoms: point masses at ``p_g`` with weights (the zero-inflated family's mass at p = 0; the
  logit-normal and skew-logit-normal families, discretised on a fine grid in logit space).

Everything a forecast needs is an expectation under the posterior of one problem that had c correct of
n samples, and the prior itself is that posterior with n = c = 0. So each quantity is written once, per
part, in closed form: a Beta part updates to Beta(a + c, b + n - c); an atom stays where it is and only
its weight changes (by the binomial likelihood p^c (1 - p)^(n - c)).
"""

from __future__ import annotations

import math
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
ALPHA_BOUND = 10.0  # the skew-normal's shape; at |alpha| = 10 it is all but a half-normal
LOG_BOUND = 9.2  # a, b in [1e-4, 1e4]: wide enough for any pilot, finite so degenerate data stays finite
LOGIT_BOUND = 12.0
LOGIT_FAMILIES = ("logit-normal", "skew-logit-normal")


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


def logit_normal_log_weights(mu: float, sigma: float, alpha: float = 0.0) -> np.ndarray:
    """Log weights of the grid atoms for logit(p) ~ SkewNormal(mu, sigma, alpha) (alpha = 0: the normal),
    normalised over the grid. Density ∝ phi(z) Phi(alpha z), z = (logit p - mu) / sigma."""
    z = (LOGIT_GRID - mu) / sigma
    log_w = -0.5 * z**2 + (special.log_ndtr(alpha * z) if alpha else 0.0)
    return log_w - special.logsumexp(log_w)


def logit_normal_scores(mu: float, sigma: float, alpha: float | None = None) -> list[np.ndarray]:
    """d log w_g / d (mu, log sigma[, alpha]) of the unnormalised grid weights, at every atom g.
    With h = phi(alpha z) / Phi(alpha z): (z - alpha h) / sigma, z^2 - alpha z h and z h."""
    z = (LOGIT_GRID - mu) / sigma
    if alpha is None:
        return [z / sigma, z**2]
    h = np.exp(-0.5 * (alpha * z) ** 2 - 0.5 * np.log(2 * np.pi) - special.log_ndtr(alpha * z))
    return [(z - alpha * h) / sigma, z**2 - alpha * z * h, z * h]


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
    def logit_normal(cls, mu: float, sigma: float, alpha: float = 0.0) -> Prior:
        empty = np.empty(0)
        return cls(empty, empty, empty, logit_normal_log_weights(mu, sigma, alpha), GRID_P)

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


# --------------------------------------------------------------------------- the families' parameters


def success_prior(family: str, params: dict[str, float]) -> Prior:
    """Every family as a :class:`flopmatch.forecast_prior.Prior`: Beta parts and/or atoms."""
    if family in LOGIT_FAMILIES:
        return Prior.logit_normal(params["mu"], params["sigma"], params.get("alpha", 0.0))
    if family == "beta-mixture":
        w = params["w"]
        return Prior.betas([w, 1 - w], [params["a1"], params["a2"]], [params["b1"], params["b2"]])
    return Prior.betas([1.0], [params["a"]], [params["b"]], params.get("pi", 0.0))


N_PARAMS = {"beta-binomial": 2, "zero-inflated-beta": 3, "beta-mixture": 5, "logit-normal": 2, "skew-logit-normal": 3}


def family_bounds(family: str) -> tuple[np.ndarray, np.ndarray]:
    """Box bounds of the unconstrained parameters (log a/b, logit weights; mu, log sigma and alpha)."""
    if family in LOGIT_FAMILIES:
        low, high = [-MU_BOUND, LOG_SIGMA_BOUNDS[0], -ALPHA_BOUND], [MU_BOUND, LOG_SIGMA_BOUNDS[1], ALPHA_BOUND]
        size = N_PARAMS[family]
        return np.array(low[:size]), np.array(high[:size])
    high = np.full(N_PARAMS[family], LOG_BOUND)
    if family != "beta-binomial":
        high[0 if family == "beta-mixture" else 2] = LOGIT_BOUND
    return -high, high


def unpack_params(family: str, theta: np.ndarray) -> dict[str, float]:
    """A family's parameters from the unconstrained vector the optimiser works in (inverse: pack_params)."""
    if family in LOGIT_FAMILIES:
        skew = {"alpha": float(theta[2])} if len(theta) > 2 else {}
        return {"mu": float(theta[0]), "sigma": math.exp(theta[1]), **skew}
    if family == "beta-mixture":
        return {"w": float(special.expit(theta[0])), "a1": math.exp(theta[1]), "b1": math.exp(theta[2]),
                "a2": math.exp(theta[3]), "b2": math.exp(theta[4])}
    params = {"a": math.exp(theta[0]), "b": math.exp(theta[1])}
    if family == "zero-inflated-beta":
        params["pi"] = float(special.expit(theta[2]))
    return params


def logit(x: float) -> float:
    x = min(max(x, 1e-12), 1 - 1e-12)
    return math.log(x / (1 - x))


def pack_params(family: str, params: dict[str, float]) -> np.ndarray:
    if family in LOGIT_FAMILIES:
        return np.array([params["mu"], math.log(params["sigma"]), *([params["alpha"]] if "alpha" in params else [])])
    if family == "beta-mixture":
        return np.array([logit(params["w"]), *(math.log(params[k]) for k in ("a1", "b1", "a2", "b2"))])
    base = [math.log(params["a"]), math.log(params["b"])]
    if family == "zero-inflated-beta":
        base.append(logit(params["pi"]))
    return np.array(base)


def start_points(family: str, mean: float) -> list[np.ndarray]:
    """The optimiser's starting points for a family, given the pilot's mean success rate."""
    if family in LOGIT_FAMILIES:  # the skew family also from a left- and a right-skewed start
        skews = [()] if family == "logit-normal" else [(2.0,), (-2.0,)]
        return [np.array([logit(mean) + shift, math.log(sigma), *skew])
                for shift, sigma in ((0.0, 1.0), (-1.0, 2.5)) for skew in skews]
    if family == "beta-mixture":  # a low and a high component, diffuse and concentrated
        return [np.array([0.0, *np.log([lo * conc, (1 - lo) * conc, hi * conc, (1 - hi) * conc])])
                for lo, hi in ((0.1, 0.7), (0.03, 0.5), (0.2, 0.9)) for conc in (2.0, 10.0)]
    starts = []
    for conc in (0.5, 2.0, 10.0):
        base = [math.log(mean * conc), math.log((1 - mean) * conc)]
        starts += [np.array([*base, share]) for share in (-3.0, 0.0)] if family == "zero-inflated-beta" else [
            np.array(base)]
    return starts
