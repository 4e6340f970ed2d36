"""What each plan budget actually cost, per role: ``metrics/cost.parquet`` (the analysis writes it, the
report reads it, so the report reads no sample table).

For WC the first ``wc_samples`` samples of each problem, for SE the first ``se_samples``. Nominal FLOPs
are 2·P·(generated tokens), P from ``roles.json``; seconds are the measured wall time attributed to those
samples; planned FLOPs are the plan's.
"""

from __future__ import annotations

import os
from typing import Any

import pandas as pd
import pyarrow as pa

from flopmatch.store import RunDir, write_table
from flopmatch.store.queries import below_budget, read_roles, sample_costs
from flopmatch.store.schemas import COST_SCHEMA


def cost_by_budget(run: RunDir, roles: dict[str, Any], plan: Any) -> pd.DataFrame | None:
    """One row per (plan budget, role) with the samples, tokens, nominal FLOPs and seconds spent; None when
    neither role has samples (or the run has no roles). ``plan`` is a BudgetPlan or its JSON dict."""
    tables: dict[str, pa.Table] = {}
    for role in ("wc", "se"):
        key = (roles.get(role) or {}).get("key")
        if not key:
            continue
        table = sample_costs(run, key)
        if table.num_rows:
            tables[role] = table
    if not tables:
        return None
    rows = []
    for budget in _budgets(plan):
        for role in ("wc", "se"):
            table = tables.get(role)
            if table is None:
                continue
            per_problem = int(budget[f"{role}_samples"])
            used = below_budget(table, per_problem).to_pandas()
            params = float((roles.get(role) or {}).get("params") or float("nan"))
            tokens = float(used["completion_tokens"].sum()) if "completion_tokens" in used else float("nan")
            rows.append(
                {
                    "budget_se_samples": int(budget["se_samples"]),
                    "role": role,
                    "samples_per_problem": per_problem,
                    "samples": len(used),
                    "completion_tokens": tokens,
                    "mean_tokens": tokens / len(used) if len(used) else float("nan"),
                    "nominal_flops": 2.0 * params * tokens,
                    "planned_flops": float(budget.get(f"{role}_flops") or float("nan")),
                    "seconds": float(used["seconds"].sum()) if "seconds" in used else float("nan"),
                }
            )
    return pd.DataFrame(rows, columns=COST_SCHEMA.names) if rows else None


def _budgets(plan: Any) -> list[dict[str, Any]]:
    """The plan's budgets as dicts, lowest SE count first."""
    if not plan:
        return []
    points = plan.model_dump()["budgets"] if hasattr(plan, "model_dump") else plan.get("budgets", [])
    return sorted(points, key=lambda b: b["se_samples"])


def write_cost(run: RunDir, plan: Any) -> dict[str, Any]:
    """Write ``metrics/cost.parquet`` for the run's WC and SE roles; remove a stale one when there is
    nothing to write. Returns ``{"cost": path}`` when written."""
    frame = cost_by_budget(run, read_roles(run), plan)
    if frame is None:
        if run.cost_path.exists():
            os.unlink(run.cost_path)
        return {}
    return {"cost": write_table(frame, run.cost_path)}
