"""Reading a run directory into :class:`RunData`: everything the report shows, read once."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from flopmatch.store import RunDir, read_json, read_shards

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
        raise FileNotFoundError(f"{run.root}: no such run directory")
    config = yaml.safe_load(run.study_path.read_text()) if run.study_path.exists() else None
    roles_path = run.root / "roles.json"
    roles = read_json(roles_path) if roles_path.exists() else {}
    plan = read_json(run.plan_path) if run.plan_path.exists() else None
    problems = {}
    order = {"sample": 0, "validation": 1, "test": 2}
    files = sorted((run.root / "problems").glob("*.parquet"), key=lambda p: (order.get(p.stem, 3), p.stem))
    for split_file in files:
        problems[split_file.stem] = int(pd.read_parquet(split_file, columns=["problem_id"]).shape[0])
    metrics = run.metrics_dir
    figures = sorted((metrics / "figures").glob("*.png")) if (metrics / "figures").is_dir() else []
    return RunData(
        run=run,
        config=config,
        roles=roles,
        plan=plan,
        ledger=_load_ledger(run),
        cost=cost_by_budget(run, roles, plan),
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


def cost_by_budget(run: RunDir, roles: dict[str, Any], plan: dict[str, Any] | None) -> pd.DataFrame | None:
    """What each budget actually cost, from the sample tables: for WC the first ``wc_samples`` samples of
    each problem, for SE the first ``se_samples``. Nominal FLOPs are 2·P·(generated tokens); seconds are
    the measured wall time attributed to those samples."""
    rows = []
    tables: dict[str, pd.DataFrame] = {}
    for role in ("wc", "se"):
        info = roles.get(role) or {}
        key = info.get("key")
        if not key:
            continue
        directory = run.root / "samples" / key
        table = read_shards(directory, columns=None)
        if table.num_rows == 0:
            continue
        frame = table.to_pandas()
        keep = [
            c
            for c in ("problem_id", "sample_idx", "completion_tokens", "prompt_tokens", "seconds")
            if c in frame
        ]
        tables[role] = frame[keep]
    if not tables:
        return None
    for budget in budgets_of(plan):
        for role, count_key in (("wc", "wc_samples"), ("se", "se_samples")):
            frame = tables.get(role)
            if frame is None:
                continue
            used = frame[frame["sample_idx"] < int(budget[count_key])]
            params = float((roles.get(role) or {}).get("params") or float("nan"))
            tokens = float(used["completion_tokens"].sum()) if "completion_tokens" in used else float("nan")
            rows.append(
                {
                    "budget_se_samples": int(budget["se_samples"]),
                    "role": role,
                    "samples_per_problem": int(budget[count_key]),
                    "samples": len(used),
                    "completion_tokens": tokens,
                    "mean_tokens": tokens / len(used) if len(used) else float("nan"),
                    "nominal_flops": 2.0 * params * tokens,
                    "planned_flops": float(budget.get(f"{role}_flops") or float("nan")),
                    "seconds": float(used["seconds"].sum()) if "seconds" in used else float("nan"),
                }
            )
    return pd.DataFrame(rows) if rows else None


