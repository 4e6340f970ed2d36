"""A study's advice (``pilot/advice.json``, written by its pilot stage) read back: the sample counts it asks
for, and each forecast set against what the full sample set then measured
(``metrics/pilot_vs_measured.parquet``: the analysis computes it from the samples it reads anyway, the
report's "Pilot forecast vs measured" section reads it). Outside the study package so the analysis can
use it without importing the study."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from flopmatch.store import RunDir, as_run, read_json
from flopmatch.store.queries import problems_by_role


def advice_allocations(entry: dict[str, Any]) -> list[tuple[str, dict[str, int], dict[str, Any]]]:
    """The advised allocation and each single model's, with their forecasts, for one budget."""
    candidates = entry["advice"]["candidates"]
    out = [("advised", candidates[0]["samples"], candidates[0])]
    for candidate in candidates[1:]:
        if candidate["kind"] == "model":
            out.append(("alone", candidate["samples"], candidate))
    if candidates[0]["kind"] == "model":
        out.append(("alone", candidates[0]["samples"], candidates[0]))
    return out


def advised_samples(run: RunDir, role: str) -> int:
    """The most samples per problem any advised or single-model allocation asks of ``role`` (0: none)."""
    path = run.advice_path
    if not path.exists():
        return 0
    data = read_json(path)
    name = data["roles"][role]
    return max(
        (int(samples.get(name, 0)) for entry in data["budgets"] for _, samples, _ in advice_allocations(entry)),
        default=0,
    )


def sample_problem_ids(run: RunDir) -> list[str]:
    """The problems the measured values are taken on: the sample split's, in its file's order."""
    return list(dict.fromkeys(p.problem_id for p in problems_by_role(run, "sample")))


def forecast_vs_measured(
    run_dir: str | Path | RunDir,
    n_boot: int = 200,
    seed: int = 0,
    *,
    solutions: dict[str, pd.DataFrame],
) -> pd.DataFrame | None:
    """Each budget's advised and single-model forecasts next to what the full sample set measured.

    Measured values are the unbiased estimates at the allocation's sample counts on every problem of
    the sample split with enough graded samples (coverage: 1 − mean_i Π_m C(n−c, k_m)/C(n, k_m);
    unique: Σ_m expected distinct correct among k_m of n), with a bootstrap interval over problems.
    ``solutions``: role (``wc``, ``se``) → per problem of :func:`sample_problem_ids`, in that order, its
    ``n`` graded samples, ``c`` correct and the ``multiplicities`` of its distinct correct solutions (what
    :func:`flopmatch.pilot.graded_solutions` gives; the analysis passes those of the samples it loaded, so
    that no sample is read twice). ``None`` before the pilot has run. The report
    reads this table from ``metrics/pilot_vs_measured.parquet`` (the analysis writes it with the
    defaults).
    """
    run = as_run(run_dir)
    if not run.advice_path.exists():
        return None
    data = read_json(run.advice_path)
    solutions = {data["roles"][role]: table for role, table in solutions.items()}
    rows = []
    for entry in data["budgets"]:
        for kind, samples, candidate in advice_allocations(entry):
            weights = {name: 1.0 - float(info.get("fpr") or 0.0) if data["objective"] == "valid-unique" else 1.0
                       for name, info in entry["advice"]["models"].items()}  # fmt: skip
            value, lo, hi, used = _measured(solutions, samples, weights, data["objective"], n_boot, seed)
            rows.append({
                "budget_se_samples": entry["se_samples"], "budget_wc_samples": entry["wc_samples"], "role": kind,
                "allocation": candidate["label"], "forecast": candidate["forecast"],
                "forecast_low": candidate["low"], "forecast_high": candidate["high"], "measured": value,
                "measured_low": lo, "measured_high": hi, "problems": used, "objective": data["objective"],
                "decided": entry["advice"]["decided"],
            })  # fmt: skip
    return pd.DataFrame(rows).drop_duplicates(["budget_se_samples", "allocation"])


def _measured(
    solutions: dict[str, pd.DataFrame],
    samples: dict[str, int],
    weights: dict[str, float],
    objective: str,
    n_boot: int,
    seed: int,
) -> tuple[float, float, float, int]:
    from flopmatch.metrics import expected_unique_at_k, pass_at_k

    per_problem = None
    enough = None
    for name, k in samples.items():
        if k <= 0:
            continue
        table = solutions[name]
        ok = (table["n"] >= k).to_numpy()
        enough = ok if enough is None else enough & ok
        if objective == "coverage":
            values = np.array(
                [
                    1 - pass_at_k(n, c, k) if n >= k else np.nan
                    for n, c in zip(table["n"], table["c"], strict=True)
                ]
            )
            per_problem = values if per_problem is None else per_problem * values
        else:
            values = np.array([
                expected_unique_at_k(n, m, k) if n >= k and m else 0.0
                for n, m in zip(table["n"], table["multiplicities"], strict=True)
            ])  # fmt: skip
            values = weights.get(name, 1.0) * values
            per_problem = values if per_problem is None else per_problem + values
    if per_problem is None or enough is None or not enough.any():
        return float("nan"), float("nan"), float("nan"), 0
    chosen = per_problem[enough]
    if objective == "coverage":
        chosen = 1.0 - chosen
    rng = np.random.default_rng(seed)
    boot = np.array([chosen[rng.integers(0, len(chosen), len(chosen))].mean() for _ in range(n_boot)])
    return (
        float(chosen.mean()),
        float(np.percentile(boot, 2.5)),
        float(np.percentile(boot, 97.5)),
        int(len(chosen)),
    )
