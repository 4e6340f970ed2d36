"""Baselines beside the distributional forecast (pure maths): Chen et al.'s unbiased coverage@k
(k <= n only) and Brown et al. 2024's power law fitted to a pilot's unbiased coverage curve."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from flopmatch.forecast_prior import as_counts
from flopmatch.metrics import pass_at_k


def unbiased_coverage(n: Any, c: Any, k: int) -> float:
    """Chen et al.'s unbiased coverage@k: the mean of pass@k over problems with n_i >= k."""
    n, c = as_counts(n, c)
    keep = n >= k
    if not keep.any():
        raise ValueError(f"no problem has n >= k={k} samples")
    return math.fsum(pass_at_k(int(ni), int(ci), int(k)) for ni, ci in zip(n[keep], c[keep], strict=True)) / int(
        keep.sum())


@dataclass(frozen=True)
class PowerLawFit:
    """Brown et al. 2024: coverage@k = exp(-a * k^(-b)), fitted by least squares of log(-log coverage) on log k."""

    a: float
    b: float
    points: int

    def coverage(self, k: int | np.ndarray) -> float | np.ndarray:
        out = np.exp(-self.a * np.asarray(k, dtype=float) ** (-self.b))
        return float(out) if np.ndim(out) == 0 else out


def fit_power_law(ks: Sequence[int], coverage: Sequence[float]) -> PowerLawFit:
    """Fit on the points with 0 < coverage < 1 (log(-log) is undefined elsewhere); needs two distinct k."""
    k_arr, cov = np.asarray(ks, dtype=float), np.asarray(coverage, dtype=float)
    keep = (cov > 0) & (cov < 1)
    if len(np.unique(k_arr[keep])) < 2:
        raise ValueError("the power-law fit needs coverage strictly between 0 and 1 at two or more k")
    slope, intercept = np.polyfit(np.log(k_arr[keep]), np.log(-np.log(cov[keep])), 1)
    return PowerLawFit(a=float(math.exp(intercept)), b=float(-slope), points=int(keep.sum()))


def power_law_from_counts(n: Any, c: Any) -> PowerLawFit | None:
    """The baseline fitted to the pilot's unbiased coverage at k = 1..min(n); None when it cannot be fitted."""
    n, c = as_counts(n, c)
    ks = list(range(1, int(n.min()) + 1))
    try:
        return fit_power_law(ks, [unbiased_coverage(n, c, k) for k in ks])
    except ValueError:
        return None


