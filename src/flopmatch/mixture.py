"""Forecasts for allocations of a budget over several models, from their pilots (pure maths, no I/O).

An allocation is a number of samples per problem for each model. :class:`Forecaster` evaluates many
allocations at once (the point forecast and a paired bootstrap over pilot problems); the formulas and
their reasons are in the docstring of :mod:`flopmatch.advise`, which ranks the allocations.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import special

from flopmatch.errors import FlopmatchError
from flopmatch.pilot import PilotModel

OBJECTIVES = ("coverage", "unique", "valid-unique")
DEFAULT_STEP = 0.1


class AllocationError(FlopmatchError, ValueError):
    """An allocation cannot be evaluated (bad step, pilots on different problems, a missing FPR)."""


# --------------------------------------------------------------------------- allocations (pure)


def share_grid(n_models: int, step: float = DEFAULT_STEP) -> list[tuple[float, ...]]:
    """Every split of the budget over ``n_models`` in multiples of ``step`` (shares sum to 1)."""
    if not 0 < step <= 1:
        raise AllocationError(f"the share step must be in (0, 1], got {step}")
    units = round(1 / step)
    if abs(units * step - 1) > 1e-9:
        raise AllocationError(f"the share step must divide 100%, got {step}")
    out = []
    for parts in itertools.product(range(units + 1), repeat=n_models - 1):
        if sum(parts) <= units:
            out.append(tuple(p / units for p in (*parts, units - sum(parts))))
    return out


def samples_for(
    shares: Sequence[float], amount: float, n_problems: int, costs: Sequence[float]
) -> tuple[int, ...]:
    """Samples per problem each share of ``amount`` buys over ``n_problems`` (rounded down)."""
    return tuple(
        int(math.floor(s * amount / (n_problems * c) + 1e-9)) for s, c in zip(shares, costs, strict=True)
    )


# --------------------------------------------------------------------------- the forecaster (pure)


def prefix_miss(n: np.ndarray, c: np.ndarray, k: int, fit: Any) -> np.ndarray:
    """Per pilot problem: P(the first k samples all fail | n pilot samples, c correct), pilot included."""
    return miss_tables(n, c, [k], fit)[0][:, 0]


def miss_tables(n: np.ndarray, c: np.ndarray, ks: Sequence[int], fit: Any) -> tuple[np.ndarray, np.ndarray]:
    """Per pilot problem (rows) and k (columns): the prefix miss and the fresh miss.

    prefix: P(the first k samples all fail | n pilot samples, c correct), the pilot's own included —
    C(n−c, k)/C(n, k) for k ≤ n, else 1[c = 0] · E[(1 − p)^(k−n) | n, c];
    fresh: E[(1 − p)^k | n, c], for a problem like this one that the pilot did not sample.

    Both depend on a problem only through (n, c), and a pilot of n samples has at most n + 1 distinct
    pairs, so the posterior is evaluated once per distinct pair and k, in one call for all of them.
    """
    n, c = np.asarray(n, dtype=np.int64), np.asarray(c, dtype=np.int64)
    pairs, where = np.unique(np.stack([n, c], axis=1), axis=0, return_inverse=True)
    un, uc = (pairs[:, i].astype(float)[:, None] for i in (0, 1))  # (pairs, 1)
    k = np.asarray(ks, dtype=float)[None, :]  # (1, ks)
    shape = np.broadcast_shapes(un.shape, k.shape)
    rep_n, rep_c, rep_k = (np.broadcast_to(x, shape).ravel() for x in (un, uc, k))
    both = fit.posterior_miss(
        np.concatenate([rep_n, rep_n]),
        np.concatenate([rep_c, rep_c]),
        np.concatenate([rep_k, np.maximum(rep_k - rep_n, 0)]),
    )
    fresh, beyond = both[: rep_n.size].reshape(shape), both[rep_n.size :].reshape(shape)
    fits_k = un - uc >= k  # C(n-c, k)/C(n, k), and 0 where fewer than k pilot samples failed
    safe_rest, safe_n = np.where(fits_k, un - uc - k + 1, 1.0), np.where(k <= un, un - k + 1, 1.0)
    log_ratio = (
        special.gammaln(un - uc + 1)
        - special.gammaln(safe_rest)
        - special.gammaln(un + 1)
        + special.gammaln(safe_n)
    )
    within = np.where(fits_k, np.exp(log_ratio), 0.0)
    prefix = np.where(k <= un, within, np.where(uc == 0, beyond, 0.0))
    prefix, fresh = np.where(k == 0, 1.0, prefix), np.where(k == 0, 1.0, fresh)
    where = where.reshape(-1)
    return prefix[where], fresh[where]


@dataclass
class _ModelData:
    n: np.ndarray
    c: np.ndarray
    u: np.ndarray
    fit: Any
    fpr: float
    fits: dict[str, Any]  # the families the intervals span, the chosen one (``fit``) first


@dataclass(frozen=True)
class AllocationForecast:
    """The objective of C allocations: the point forecast (C,) and the paired bootstrap (S, B, C) of each of
    S family scenarios (one family per model; scenario 0 is every model's chosen family)."""

    point: np.ndarray
    boot: np.ndarray
    scenarios: list[tuple[str, ...]]

    def interval(self) -> tuple[np.ndarray, np.ndarray]:
        """Per allocation: the union over scenarios of the 95% percentile intervals."""
        lo = np.percentile(self.boot, 2.5, axis=1).min(axis=0)
        hi = np.percentile(self.boot, 97.5, axis=1).max(axis=0)
        return lo, hi

    def difference(self, a: int, b: int) -> tuple[float, float]:
        """The union over scenarios of the 95% interval of allocation a's objective minus b's (paired)."""
        diffs = self.boot[:, :, a] - self.boot[:, :, b]
        return float(np.percentile(diffs, 2.5, axis=1).min()), float(np.percentile(diffs, 97.5, axis=1).max())


class Forecaster:
    """Forecasts the objective of allocations (samples per problem per model) from the pilots, with a
    paired bootstrap over pilot problems (see the module docstring).

    ``intervals`` (as in :func:`flopmatch.forecast.forecast_counts`): "refit" bootstraps each model's chosen
    family; "families" (the default) also every family its pilot cannot rule out
    (:func:`flopmatch.forecast.plausible_fits`), in every combination over the models, and the intervals
    are the union over those scenarios, so a pick that hinges on a family's tail is not called decided.
    :meth:`chosen_families` gives the "refit" forecaster of the same pilots from this one's bootstrap.
    """

    def __init__(
        self,
        pilots: Sequence[PilotModel],
        *,
        n_problems: int,
        objective: str = "coverage",
        n_boot: int = 200,
        seed: int = 0,
        intervals: str = "families",
    ):
        from flopmatch.forecast import INTERVALS, fit_success, plausible_fits

        if objective not in OBJECTIVES:
            raise AllocationError(f"unknown objective {objective!r}; expected one of {', '.join(OBJECTIVES)}")
        if intervals not in INTERVALS:
            raise AllocationError(f"unknown intervals {intervals!r}; expected one of {', '.join(INTERVALS)}")
        ids = list(pilots[0].counts["problem_id"])
        self.models: list[_ModelData] = []
        for p in pilots:
            counts = p.counts.set_index("problem_id")
            missing = [i for i in ids if i not in counts.index]
            if missing or len(counts) != len(ids):
                raise AllocationError(
                    f"{p.name}: the pilot covers other problems than {pilots[0].name}'s ({missing[:3]})"
                )
            counts = counts.loc[ids]
            if objective == "valid-unique" and p.fpr is None:
                raise AllocationError(
                    f"objective valid-unique needs an FPR for {p.name}: --fpr {p.name}=x or judge the pilot"
                )
            n, c = counts["n"].to_numpy(np.int64), counts["c"].to_numpy(np.int64)
            fit = fit_success(n, c, seed=seed)
            fits = plausible_fits(fit, n, c, seed, intervals)
            u = counts["unique_correct"].to_numpy(np.int64)
            self.models.append(_ModelData(n, c, u, fit, float(p.fpr or 0.0), fits))
        if n_problems < len(ids):
            raise AllocationError(
                f"the problem set ({n_problems}) is smaller than the pilot ({len(ids)} problems)"
            )
        self.n_problems, self.n_pilot, self.objective = n_problems, len(ids), objective
        self.n_boot, self.seed = n_boot, seed
        self.scenarios = list(itertools.product(*(list(m.fits) for m in self.models)))
        rng = np.random.default_rng(seed)
        self._resamples = [rng.integers(0, len(ids), len(ids)) for _ in range(n_boot)]
        self._boot_fits: list[list[dict[str, Any]]] | None = None
        self._last: tuple[bytes, AllocationForecast] | None = None  # the latest evaluation, by allocations
        self._source: Forecaster | None = None  # chosen_families: the forecaster whose scenario 0 this is

    def chosen_families(self) -> Forecaster:
        """This forecaster with intervals="refit": each model's chosen family alone. Scenario 0 of this one's
        bootstrap is every model's chosen family on the same resamples, so the "refit" forecaster's numbers
        are that scenario's; its :meth:`evaluate` takes them from this one's evaluation of the same
        allocations (one bootstrap for both; equal to a ``Forecaster(..., intervals="refit")``)."""
        view = copy.copy(self)
        view.models = [dataclasses.replace(m, fits={m.fit.family: m.fit}) for m in self.models]
        view.scenarios, view._source = self.scenarios[:1], self
        return view

    def evaluate(self, allocations: Sequence[Sequence[int]]) -> AllocationForecast:
        """The objective of each allocation: the point forecast and its bootstrap in every family scenario
        (the same allocations evaluated again in a row: the same result, not recomputed)."""
        from flopmatch.forecast import refit

        if self._source is not None:
            whole = self._source.evaluate(allocations)
            return AllocationForecast(whole.point, whole.boot[:1], self.scenarios)
        alloc = np.asarray(allocations, dtype=np.int64).reshape(len(allocations), len(self.models))
        if self._last is not None and self._last[0] == alloc.tobytes():
            return self._last[1]
        if self._boot_fits is None:  # refitted once per resample and family, shared by every later evaluation
            self._boot_fits = [
                [{family: refit(fit, m.n[idx], m.c[idx]) for family, fit in m.fits.items()} for m in self.models]
                for idx in self._resamples
            ]
        full = np.arange(self.n_pilot)
        chosen = [{m.fit.family: m.fit} for m in self.models]
        point = self._values(alloc, full, chosen, [tuple(m.fit.family for m in self.models)])[0]
        boot = np.empty((len(self.scenarios), self.n_boot, len(alloc)))
        for b, (idx, fits) in enumerate(zip(self._resamples, self._boot_fits, strict=True)):
            boot[:, b] = self._values(alloc, idx, fits, self.scenarios)
        result = AllocationForecast(point, boot, self.scenarios)
        self._last = (alloc.tobytes(), result)
        return result

    def _values(
        self,
        alloc: np.ndarray,
        idx: np.ndarray,
        fits: Sequence[dict[str, Any]],
        scenarios: Sequence[tuple[str, ...]],
    ) -> np.ndarray:
        """The objective (S, C) of each scenario, from each model's part under each of its families."""
        from flopmatch.forecast import fit_unique

        parts = []
        for j, m in enumerate(self.models):
            c, u = m.c[idx], m.u[idx]
            # the saturation of unique solutions does not depend on the family: fitted once per model
            ufit = fit_unique(c, u) if self.objective != "coverage" and (c > 0).any() else None
            parts.append({family: self._part(alloc[:, j], idx, m, fit, ufit) for family, fit in fits[j].items()})
        return np.stack([self._combine([parts[j][f] for j, f in enumerate(sc)]) for sc in scenarios])

    def _part(self, ks_of: np.ndarray, idx: np.ndarray, m: _ModelData, fit: Any, ufit: Any) -> Any:
        """One model's part of the objective: its miss tables (coverage) or its yield (unique)."""
        ks, where = np.unique(ks_of, return_inverse=True)
        if self.objective == "coverage":
            prefix, fresh = miss_tables(m.n[idx], m.c[idx], ks, fit)
            return prefix[:, where], fresh[:, where]
        # with no correct pilot sample there is no pool to fit: each correct sample counts as new
        yields = np.array(
            [
                0.0
                if k == 0
                else ufit.unique_at_k(fit, int(k))
                if ufit
                else float(fit.expected_correct(int(k)))
                for k in ks
            ]
        )
        weight = 1.0 - m.fpr if self.objective == "valid-unique" else 1.0
        return weight * yields[where]

    def _combine(self, parts: Sequence[Any]) -> np.ndarray:
        if self.objective != "coverage":  # unique correct solutions add up over models
            return np.sum(parts, axis=0)
        prod_prefix = np.prod([prefix for prefix, _ in parts], axis=0)
        prod_fresh = np.prod([fresh for _, fresh in parts], axis=0)
        missed = prod_prefix.sum(axis=0) + (self.n_problems - self.n_pilot) * prod_fresh.mean(axis=0)
        return 1.0 - missed / self.n_problems


def frontier_curves(
    pilots: Sequence[PilotModel],
    forecaster: Forecaster,
    costs: Sequence[float],
    budget_amount: float,
    n_problems: int,
    points: int = 16,
) -> dict[str, list[dict[str, float]]]:
    """Each model alone: the objective against total cost, up to twice the budget (for the frontier plot).

    Every model's points go through one :meth:`Forecaster.evaluate` (one pass over the bootstrap)."""
    curves = []
    for j in range(len(pilots)):
        k_max = max(2, int(2 * budget_amount / (n_problems * costs[j])))
        curves.append(sorted({int(round(x)) for x in np.geomspace(1, k_max, points)}))
    allocs = [
        tuple(k if i == j else 0 for i in range(len(pilots))) for j, ks in enumerate(curves) for k in ks
    ]
    result = forecaster.evaluate(allocs)
    point, (lo, hi) = result.point, result.interval()
    out: dict[str, list[dict[str, float]]] = {}
    start = 0
    for j, (p, ks) in enumerate(zip(pilots, curves, strict=True)):
        out[p.name] = [
            {
                "samples_per_problem": k,
                "cost": n_problems * k * costs[j],
                "forecast": float(point[start + i]),
                "low": float(lo[start + i]),
                "high": float(hi[start + i]),
            }
            for i, k in enumerate(ks)
        ]
        start += len(ks)
    return out
