"""Reading a run directory into :class:`RunData`: everything the report shows, read once."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from flopmatch.analysis_cost import cost_by_budget  # noqa: F401 - part of flopmatch.report's API
from flopmatch.store import RunDir
from flopmatch.store.layout import RunNotFound
from flopmatch.store.queries import problem_counts, read_cost, read_plan, read_roles

# --------------------------------------------------------------------------- reading the run


@dataclass
class RunData:
    """Everything the report reads, each ``None`` when its stage has not produced it."""

    run: RunDir
    config: dict[str, Any] | None
    roles: dict[str, Any]
    plan: dict[str, Any] | None
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

    def label(self, role: str) -> str:
        info = self.roles.get(role) or {}
        return str(info.get("label") or info.get("model") or role.upper())

    def role_of(self, model: str) -> str | None:
        for role, info in self.roles.items():
            if model in (info.get("key"), info.get("model"), info.get("path"), info.get("label")):
                return role
        return None


def read_parquet_or_none(path: Path) -> pd.DataFrame | None:
    if not path.exists():
        return None
    return pd.read_parquet(path)


def load_run(run_dir: str | Path) -> RunData:
    run = RunDir(run_dir)
    if not run.root.is_dir():
        raise RunNotFound("no such run directory", file=run.root)
    config = yaml.safe_load(run.study_path.read_text()) if run.study_path.exists() else None
    roles = read_roles(run)
    typed_plan = read_plan(run, required=False)
    plan = typed_plan.model_dump(mode="json") if typed_plan is not None else None
    order = {"sample": 0, "validation": 1, "test": 2}
    counts = problem_counts(run)
    problems = {split: counts[split] for split in sorted(counts, key=lambda s: (order.get(s, 3), s))}
    metrics = run.metrics_dir
    figures = sorted((metrics / "figures").glob("*.png")) if (metrics / "figures").is_dir() else []
    return RunData(
        run=run,
        config=config,
        roles=roles,
        plan=plan,
        ledger=_load_ledger(run),
        cost=_load_cost(run),
        summary=read_parquet_or_none(metrics / "summary.parquet"),
        coverage=read_parquet_or_none(metrics / "coverage_curve.parquet"),
        matched=read_parquet_or_none(metrics / "compute_matched.parquet"),
        paradigms=read_parquet_or_none(metrics / "paradigms.parquet"),
        problems=problems,
        figures=figures,
        stages=run.stage_state(),
        comparisons=read_parquet_or_none(metrics / "comparisons.parquet"),
    )


def _load_ledger(run: RunDir) -> pd.DataFrame | None:
    if not run.ledger_path.exists() and not (run.root / "samples").is_dir():
        return None
    try:
        from flopmatch.ledger import summarize_ledger
    except ImportError:
        return None
    frame = summarize_ledger(run.root)
    return frame if frame is not None and len(frame) else None


def budgets_of(plan: dict[str, Any] | None) -> list[dict[str, Any]]:
    """The plan's budgets, lowest first (each with at least ``se_samples`` and ``wc_samples``)."""
    if not plan:
        return []
    return sorted(plan.get("budgets", []), key=lambda b: b["se_samples"])


def _load_cost(run: RunDir) -> pd.DataFrame | None:
    """What each budget cost (``metrics/cost.parquet``, written by the analysis; see
    :mod:`flopmatch.analysis_cost`); None before the analysis ran, or when sampling has not."""
    table = read_cost(run)
    return table.to_pandas() if table is not None and table.num_rows else None
