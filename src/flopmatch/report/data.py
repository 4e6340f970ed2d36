"""Reading a run directory into :class:`RunData`: everything the report shows, read once."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from flopmatch.analysis_cost import cost_by_budget  # noqa: F401 - part of flopmatch.report's API
from flopmatch.budget import BudgetPlan, BudgetPoint
from flopmatch.store import RunDir
from flopmatch.store.layout import RunNotFound
from flopmatch.store.queries import (
    problem_counts,
    read_cost,
    read_metrics,
    read_plan,
    read_roles,
    read_study_mapping,
)

# --------------------------------------------------------------------------- reading the run


@dataclass
class RunData:
    """Everything the report reads, each ``None`` when its stage has not produced it."""

    run: RunDir
    config: dict[str, Any] | None
    roles: dict[str, Any]
    plan: BudgetPlan | None
    ledger: pd.DataFrame | None
    cost: pd.DataFrame | None
    summary: pd.DataFrame | None
    coverage: pd.DataFrame | None
    matched: pd.DataFrame | None
    paradigms: pd.DataFrame | None
    problems: dict[str, int]
    figures: list[Path]
    stages: dict[str, Any]
    comparisons: pd.DataFrame | None = None  # metrics/comparisons.parquet (flopmatch.comparisons)
    allocation: pd.DataFrame | None = None  # metrics/allocation.parquet (flopmatch.allocation_metrics)

    def label(self, role: str) -> str:
        info = self.roles.get(role) or {}
        return str(info.get("label") or info.get("model") or role.upper())

    def role_of(self, model: str) -> str | None:
        for role, info in self.roles.items():
            if model in (info.get("key"), info.get("model"), info.get("path"), info.get("label")):
                return role
        return None


def read_metrics_frame(run: RunDir, name: str) -> pd.DataFrame | None:
    """The metrics table ``name`` (:func:`flopmatch.store.queries.read_metrics`) as a data frame; None
    before its stage ran."""
    table = read_metrics(run, name)
    return table.to_pandas() if table is not None else None


def load_run(run_dir: str | Path) -> RunData:
    run = RunDir(run_dir)
    if not run.root.is_dir():
        raise RunNotFound("no such run directory", file=run.root)
    order = {"sample": 0, "validation": 1, "test": 2}
    counts = problem_counts(run)
    problems = {split: counts[split] for split in sorted(counts, key=lambda s: (order.get(s, 3), s))}
    figures = sorted(run.figures_dir.glob("*.png")) if run.figures_dir.is_dir() else []
    return RunData(
        run=run,
        config=read_study_mapping(run),
        roles=read_roles(run),
        plan=read_plan(run, required=False),
        ledger=_load_ledger(run),
        cost=_load_cost(run),
        summary=read_metrics_frame(run, "summary"),
        coverage=read_metrics_frame(run, "coverage_curve"),
        matched=read_metrics_frame(run, "compute_matched"),
        paradigms=read_metrics_frame(run, "paradigms"),
        problems=problems,
        figures=figures,
        stages=run.stage_state(),
        comparisons=read_metrics_frame(run, "comparisons"),
        allocation=read_metrics_frame(run, "allocation"),
    )


def _load_ledger(run: RunDir) -> pd.DataFrame | None:
    if not run.ledger_path.exists() and not run.samples_root.is_dir():
        return None
    try:
        from flopmatch.ledger import summarize_ledger
    except ImportError:
        return None
    frame = summarize_ledger(run.root)
    return frame if frame is not None and len(frame) else None


def budgets_of(plan: BudgetPlan | None) -> list[BudgetPoint]:
    """The plan's budgets, lowest first; none without a plan."""
    return sorted(plan.budgets, key=lambda b: b.se_samples) if plan is not None else []


def _load_cost(run: RunDir) -> pd.DataFrame | None:
    """What each budget cost (``metrics/cost.parquet``, written by the analysis; see
    :mod:`flopmatch.analysis_cost`); None before the analysis ran, or when sampling has not."""
    table = read_cost(run)
    return table.to_pandas() if table is not None and table.num_rows else None
