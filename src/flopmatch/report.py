"""The study report: one self-contained HTML page and a markdown twin, built from a run directory alone.

``build_report(run_dir)`` reads only what the stages wrote (``study.yaml``, ``plan.json``, ``roles.json``,
``samples/``, ``ledger.parquet``, ``metrics/*.parquet``, ``metrics/figures/*.png``), so a report can be
rebuilt at any time (``flopmatch report RUN``), and a section whose stage has not run says so instead of
disappearing. The page is made of a few block types (text, table, figure) rendered twice: to HTML with
figures embedded as base64 PNG (one file to mail or attach), and to markdown with figures copied next
to it.

The verdict is computed from the numbers, never written by hand: wins are counted per budget, and a
win whose 95% intervals overlap the loser's is reported as such.
"""

from __future__ import annotations

import base64
import html
import math
import re
import shutil
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from flopmatch.store import RunDir, read_json, read_shards, write_text

# --------------------------------------------------------------------------- blocks


@dataclass
class Text:
    """A paragraph; ``**bold**`` and `` `code` `` are honoured in both renderings."""

    text: str
    kind: str = "p"  # "p" | "note" | "verdict"


@dataclass
class Bullets:
    items: list[str]
    kind: str = "ul"  # "ul" | "verdict"


@dataclass
class Table:
    columns: list[str]
    rows: list[list[str]]
    caption: str = ""
    numeric: set[int] = field(default_factory=set)  # column indices right-aligned


@dataclass
class Figure:
    path: Path
    caption: str


@dataclass
class Section:
    title: str
    blocks: list[Any]
    anchor: str = ""

    def __post_init__(self) -> None:
        self.anchor = self.anchor or re.sub(r"[^a-z0-9]+", "-", self.title.lower()).strip("-")


@dataclass
class Report:
    title: str
    subtitle: str
    sections: list[Section]
    verdict: list[str]
    generated: str


# --------------------------------------------------------------------------- number formatting


def fmt_pct(value: Any, digits: int = 1) -> str:
    """A rate in [0, 1] as a percentage ("34.5%"); missing values as an en dash."""
    if _missing(value):
        return "–"
    return f"{float(value) * 100:.{digits}f}%"


def fmt_num(value: Any, digits: int = 2) -> str:
    if _missing(value):
        return "–"
    value = float(value)
    if value == int(value) and abs(value) < 1e6:
        return f"{int(value):,}"
    if abs(value) >= 1e5 or (0 < abs(value) < 1e-2):
        return f"{value:.{digits}e}"
    return f"{value:,.{digits}f}"


def fmt_ci(low: Any, high: Any, pct: bool = True) -> str:
    if _missing(low) or _missing(high):
        return "–"
    if pct:
        return f"[{float(low) * 100:.1f}, {float(high) * 100:.1f}]"
    return f"[{float(low):.2f}, {float(high):.2f}]"


def fmt_seconds(value: Any) -> str:
    if _missing(value):
        return "–"
    value = float(value)
    if value < 60:
        return f"{value:.1f} s"
    minutes, seconds = divmod(int(round(value)), 60)
    if minutes < 60:
        return f"{minutes}m {seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m"


def fmt_flops(value: Any) -> str:
    if _missing(value):
        return "–"
    value = float(value)
    for unit, scale in (("EFLOP", 1e18), ("PFLOP", 1e15), ("TFLOP", 1e12), ("GFLOP", 1e9), ("MFLOP", 1e6)):
        if abs(value) >= scale:
            return f"{value / scale:.2f} {unit}"
    return f"{value:.0f} FLOP"


def fmt_params(value: Any) -> str:
    if _missing(value):
        return "–"
    value = float(value)
    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if value >= scale:
            return f"{value / scale:.2f}{unit}"
    return f"{value:.0f}"


def relative_gain(wc: float, se: float) -> float:
    """The paper's relative gain of WC data over SE data, in percent: (WC − SE) / SE · 100."""
    if _missing(wc) or _missing(se) or se == 0:
        return float("nan")
    return (float(wc) - float(se)) / abs(float(se)) * 100.0


def fmt_gain(gain: float) -> str:
    """Signed percent as the paper prints it ("+6%", "+5.8%", "−1.2%")."""
    if _missing(gain):
        return "n/a"
    rounded = round(gain) if abs(gain) >= 10 else round(gain, 1)
    text = f"{abs(rounded):g}%"
    return ("+" if rounded >= 0 else "−") + text


def _missing(value: Any) -> bool:
    if value is None:
        return True
    try:
        return math.isnan(float(value))
    except (TypeError, ValueError):
        return True


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


def _read_parquet(path: Path) -> pd.DataFrame | None:
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
        summary=_read_parquet(metrics / "summary.parquet"),
        coverage=_read_parquet(metrics / "coverage_curve.parquet"),
        matched=_read_parquet(metrics / "compute_matched.parquet"),
        paradigms=_read_parquet(metrics / "paradigms.parquet"),
        problems=problems,
        figures=figures,
        stages=run.stage_state(),
        comparisons=_read_parquet(metrics / "comparisons.parquet"),
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
                    "samples": int(len(used)),
                    "completion_tokens": tokens,
                    "mean_tokens": tokens / len(used) if len(used) else float("nan"),
                    "nominal_flops": 2.0 * params * tokens,
                    "planned_flops": float(budget.get(f"{role}_flops") or float("nan")),
                    "seconds": float(used["seconds"].sum()) if "seconds" in used else float("nan"),
                }
            )
    return pd.DataFrame(rows) if rows else None


# --------------------------------------------------------------------------- the verdict


def _budget_name(budgets: Sequence[dict[str, Any]], se_samples: int) -> str:
    budget = next((b for b in budgets if int(b["se_samples"]) == int(se_samples)), None)
    ratio = f"SE {se_samples} vs WC {budget['wc_samples']}" if budget else f"SE {se_samples}"
    if len(budgets) == 2:
        which = "low" if int(se_samples) == int(budgets[0]["se_samples"]) else "high"
        return f"the {which} budget ({ratio})"
    return f"budget {ratio}"


def _budget_short(budgets: Sequence[dict[str, Any]], se_samples: int) -> str:
    """A compact budget label for table cells: "1 vs 3 (low)"."""
    budget = next((b for b in budgets if int(b["se_samples"]) == int(se_samples)), None)
    text = f"{se_samples} vs {budget['wc_samples']}" if budget else f"SE {se_samples}"
    if len(budgets) == 2:
        text += " (low)" if int(se_samples) == int(budgets[0]["se_samples"]) else " (high)"
    return text


PARADIGM_NAMES = {
    "knowledge_distillation": "knowledge distillation",
    "self_improvement": "WC self-improvement",
    "weak_to_strong": "weak-to-strong",
}


def headline_metric(paradigms: pd.DataFrame) -> str:
    metrics = list(dict.fromkeys(paradigms["metric"]))
    return "pass@1" if "pass@1" in metrics else metrics[0]


def paradigm_comparisons(paradigms: pd.DataFrame | None) -> pd.DataFrame | None:
    """One row per (paradigm, budget, metric): SE-data, WC-data and number-matched scores with intervals
    and the relative gain of WC data over SE data."""
    if paradigms is None or paradigms.empty:
        return None
    rows = []
    for (paradigm, budget, metric), group in paradigms.groupby(
        ["paradigm", "budget_se_samples", "metric"], sort=False
    ):
        if group["data"].duplicated().any():  # several training seeds: their mean (and mean interval)
            means = {c: (c, "mean") for c in ("value", "ci_low", "ci_high") if c in group.columns}
            group = group.groupby("data", as_index=False, sort=False).agg(**means, student=("student", "first"))
        by_data = {row["data"]: row for _, row in group.iterrows()}
        se, wc, nm = by_data.get("se"), by_data.get("wc"), by_data.get("wc_number_matched")

        def val(row: Any, col: str) -> float:
            return (
                float(row[col]) if row is not None and col in row and not _missing(row[col]) else float("nan")
            )

        rows.append(
            {
                "paradigm": paradigm,
                "budget_se_samples": int(budget),
                "metric": metric,
                "student": str(group["student"].iloc[0]),
                "se": val(se, "value"),
                "se_low": val(se, "ci_low"),
                "se_high": val(se, "ci_high"),
                "wc": val(wc, "value"),
                "wc_low": val(wc, "ci_low"),
                "wc_high": val(wc, "ci_high"),
                "nm": val(nm, "value"),
                "base": val(by_data.get("base"), "value"),
                "gain": relative_gain(val(wc, "value"), val(se, "value")),
                "nm_gain": relative_gain(val(nm, "value"), val(se, "value")),
            }
        )
    return pd.DataFrame(rows)


def compute_verdict(data: RunData) -> list[str]:
    """Short sentences that follow from the tables: dataset quality per budget, paradigm wins per
    budget, the number-matched control and the cost caveat. Empty when nothing has run."""
    lines: list[str] = []
    budgets = budgets_of(data.plan)
    if data.matched is not None and not data.matched.empty:
        for budget_se, group in data.matched.groupby("budget_se_samples", sort=True):
            texts = [str(t) for t in group["relative_text"] if isinstance(t, str) and t]
            if texts:
                lines.append(
                    f"Compute-matched at {_budget_name(budgets, int(budget_se))}, WC data vs SE data: "
                    + ", ".join(texts)
                    + "."
                )
    comparisons = paradigm_comparisons(data.paradigms)
    if data.comparisons is not None and not data.comparisons.empty:
        from flopmatch.comparisons import verdict_lines

        metric = headline_metric(data.paradigms) if data.paradigms is not None else "pass@1"
        lines += verdict_lines(data.comparisons, lambda b: _budget_name(budgets, b), metric=metric)
        comparisons = None  # the paired verdict replaces the unpaired win count below
    if comparisons is not None:
        metric = headline_metric(data.paradigms)
        head = comparisons[comparisons["metric"] == metric]
        for budget_se, group in head.groupby("budget_se_samples", sort=True):
            group = group.dropna(subset=["wc", "se"])
            if group.empty:
                continue
            wins = group[group["wc"] > group["se"]]
            clear = wins[wins["wc_low"] > wins["se_high"]]
            parts = ", ".join(
                f"{PARADIGM_NAMES.get(r.paradigm, r.paradigm)} {fmt_gain(r.gain)}" for r in group.itertuples()
            )
            sentence = (
                f"WC data beat SE data in {len(wins)} of {len(group)} paradigm{'s' * (len(group) != 1)} "
                f"at {_budget_name(budgets, int(budget_se))} ({metric}: {parts})"
            )
            if len(wins):
                sentence += (
                    f"; {len(clear)} of those win{'s' * (len(clear) == 1)} with non-overlapping 95% intervals"
                    if len(clear)
                    else "; every win is within the 95% intervals (not significant at this size)"
                )
            lines.append(sentence + ".")
        nm = head.dropna(subset=["nm", "wc", "se"])
        if not nm.empty:
            below = int((nm["nm"] < nm["wc"]).sum())
            lines.append(
                f"Number-matched control (WC data cut to SE's sample count): it scored below compute-matched "
                f"WC data in {below} of {len(nm)} comparison{'s' * (len(nm) != 1)} "
                f"({'the extra samples are what helps' if below * 2 > len(nm) else 'the extra samples did not clearly help'})."
            )
    if data.cost is not None and not data.cost.empty:
        for budget_se, group in data.cost.groupby("budget_se_samples", sort=True):
            by_role = {r["role"]: r for _, r in group.iterrows()}
            if "wc" in by_role and "se" in by_role:
                wc, se = by_role["wc"], by_role["se"]
                flops_ratio = (
                    wc["nominal_flops"] / se["nominal_flops"] if se["nominal_flops"] else float("nan")
                )
                secs_ratio = wc["seconds"] / se["seconds"] if se["seconds"] else float("nan")
                if not (_missing(flops_ratio) or _missing(secs_ratio)):
                    agree = abs(math.log(secs_ratio / flops_ratio)) < math.log(1.25)
                    lines.append(
                        f"Cost at {_budget_name(budgets, int(budget_se))}: WC/SE nominal FLOPs {flops_ratio:.2f}×, "
                        f"measured seconds {secs_ratio:.2f}× — "
                        + (
                            "nominal and measured cost agree within 25%."
                            if agree
                            else "nominal FLOPs and measured cost disagree."
                        )
                    )
                break  # one budget is enough to make the point; the table has all of them
    return lines


# --------------------------------------------------------------------------- sections


def _study_section(data: RunData) -> Section:
    blocks: list[Any] = []
    cfg = data.config or {}
    if cfg.get("description"):
        blocks.append(Text(str(cfg["description"])))
    rows = []
    for role, name in (("wc", "weak-cheap (WC)"), ("se", "strong-expensive (SE)"), ("student", "KD student")):
        info = data.roles.get(role)
        if not info:
            continue
        rows.append(
            [
                name,
                data.label(role),
                str(info.get("ref") or info.get("model", "")),
                fmt_params(info.get("params")),
                _short_source(info.get("params_source")),
            ]
        )
    if rows:
        blocks.append(
            Table(["role", "model", "reference", "parameters", "parameter count from"], rows, numeric={3})
        )
    if data.problems:
        problems = cfg.get("problems", {})
        rows = []
        for split, count in data.problems.items():
            spec = problems.get(split) or {}
            origin = spec.get("source") or ("held out from sample" if spec.get("holdout") else "")
            rows.append([split, origin, f"{count:,}"])
        blocks.append(Table(["split", "source", "problems"], rows, numeric={2}))
    return Section("Study", blocks)


def _plan_section(data: RunData) -> Section:
    budgets = budgets_of(data.plan)
    if not budgets:
        return Section("Budget plan", [Text("The plan stage has not run.", "note")])
    plan = data.plan or {}
    mode = plan.get("mode", "flops")
    rows = []
    for b in budgets:
        mismatch = b.get("flops_mismatch_pct", b.get("mismatch_pct"))
        rows.append(
            [
                str(b["se_samples"]),
                str(b["wc_samples"]),
                fmt_flops(b.get("se_flops")),
                fmt_flops(b.get("wc_flops")),
                fmt_flops(b.get("se_flops_total")),
                fmt_flops(b.get("wc_flops_total")),
                "–" if _missing(mismatch) else f"{float(mismatch):+.1f}%",
            ]
        )
    intro = {
        "flops": "Compute-matched: a generated token costs 2·P FLOPs, so WC gets P_SE/P_WC times SE's samples.",
        "price": "Price-matched: WC gets (SE price / WC price) times SE's samples.",
        "number": "Number-matched (the control): both models get the same number of samples.",
        "measured": "Matched on measured cost (seconds per sample).",
    }.get(str(mode), f"Mode: {mode}.")
    ratio = plan.get("ratio")
    if not _missing(ratio):
        intro += f" Cost ratio SE/WC = {float(ratio):.3f}"
        intro += f", rounded by `{plan['rounding']}`." if plan.get("rounding") else "."
    blocks: list[Any] = [Text(intro)]
    sides = [(role, plan.get(role) or {}) for role in ("wc", "se")]
    if any(side.get("params") for _, side in sides):
        blocks.append(
            Text(
                "; ".join(
                    f"{data.label(role)}: P = {fmt_params(side.get('params'))} "
                    f"({_short_source(side.get('param_source'))})"
                    for role, side in sides
                )
                + "."
            )
        )
    blocks.append(
        Table(
            [
                "SE samples / problem",
                "WC samples / problem",
                "SE FLOPs / problem",
                "WC FLOPs / problem",
                "SE FLOPs total",
                "WC FLOPs total",
                "WC − SE",
            ],
            rows,
            caption=f"Planned FLOPs in {plan.get('flops_unit') or 'FLOPs per problem'}; totals over "
            f"{plan.get('n_problems') or '?'} problems. The cost table below has what sampling actually spent.",
            numeric={0, 1, 2, 3, 4, 5, 6},
        )  # fmt: skip
    )
    for note in plan.get("notes") or []:
        blocks.append(Text(str(note), "note"))
    return Section("Budget plan", blocks)


def _short_source(source: Any) -> str:
    """ "config:/long/cache/path/wc-1ad8/config.json" -> "config: wc-1ad8/config.json"."""
    if not source:
        return "given"
    kind, sep, rest = str(source).partition(":")
    if sep and "/" in rest:
        parts = Path(rest).parts
        return f"{kind}: {'/'.join(parts[-2:])}"
    return str(source)


def _cost_section(data: RunData) -> Section:
    blocks: list[Any] = []
    if data.ledger is not None:
        ledger = data.ledger
        rows = []
        for _, r in ledger.iterrows():
            model = str(r.get("model", ""))
            role = data.role_of(model)
            name = data.label(role) if role else model
            rows.append(
                [
                    name,
                    fmt_num(r.get("samples")),
                    fmt_num(r.get("prompt_tokens")),
                    fmt_num(r.get("completion_tokens")),
                    fmt_seconds(r.get("seconds")),
                    fmt_num(r.get("tokens_per_second", r.get("tokens/s")), 1),
                    fmt_flops(r.get("nominal_flops")),
                ]
            )
        blocks.append(
            Table(
                [
                    "model",
                    "samples",
                    "prompt tokens",
                    "generated tokens",
                    "wall time",
                    "generated tok/s",
                    "nominal FLOPs",
                ],
                rows,
                caption="The sampling ledger: everything each model generated.",
                numeric={1, 2, 3, 4, 5, 6},
            )
        )
    if data.cost is not None:
        budgets = budgets_of(data.plan)
        rows = []
        for budget_se, group in data.cost.groupby("budget_se_samples", sort=True):
            by_role = {r["role"]: r for _, r in group.iterrows()}
            for role in ("se", "wc"):
                if role not in by_role:
                    continue
                r = by_role[role]
                rows.append(
                    [
                        _budget_short(budgets, int(budget_se)),
                        data.label(role),
                        str(r["samples_per_problem"]),
                        fmt_num(r["mean_tokens"], 1),
                        fmt_flops(r["nominal_flops"]),
                        fmt_seconds(r["seconds"]),
                    ]
                )
            if "wc" in by_role and "se" in by_role:
                wc, se = by_role["wc"], by_role["se"]
                rows.append(
                    [
                        "",
                        "**WC / SE**",
                        "",
                        _ratio(wc["mean_tokens"], se["mean_tokens"]),
                        _ratio(wc["nominal_flops"], se["nominal_flops"]),
                        _ratio(wc["seconds"], se["seconds"]),
                    ]
                )
        blocks.append(
            Table(
                [
                    "budget (SE vs WC)",
                    "model",
                    "samples / problem",
                    "mean tokens / solution",
                    "nominal FLOPs (2·P·tokens)",
                    "measured wall time",
                ],
                rows,
                caption="Nominal FLOPs count generated tokens at 2·P each; wall time is what the engine took. "
                "The paper matches the first; a WC/SE ratio far from 1 in the second means the match did "
                "not hold on this hardware.",
                numeric={2, 3, 4, 5},
            )
        )
    if not blocks:
        blocks.append(Text("Sampling has not run.", "note"))
    return Section("Cost: nominal FLOPs vs measured seconds", blocks)


def _ratio(a: Any, b: Any) -> str:
    if _missing(a) or _missing(b) or float(b) == 0:
        return "–"
    return f"**{float(a) / float(b):.2f}×**"


RATE_METRICS = {"coverage", "fpr", "fpr_judge", "fpr_exact", "fpr_human", "accuracy"}


def _metric_value(metric: str, value: Any) -> str:
    if metric in RATE_METRICS or metric.startswith("fpr"):
        return fmt_pct(value)
    return "–" if _missing(value) else f"{float(value):.2f}"


def _metric_ci(metric: str, low: Any, high: Any) -> str:
    return fmt_ci(low, high, pct=metric in RATE_METRICS or metric.startswith("fpr"))


def _metric_label(metric: str, k: Any = None) -> str:
    labels = {
        "coverage": "coverage",
        "diversity": "diversity",
        "diversity_near_dup": "near-dup diversity",
        "fpr": "FPR",
        "fpr_judge": "FPR (judge)",
        "fpr_exact": "FPR (exact)",
        "fpr_human": "FPR (human)",
    }
    label = labels.get(metric, metric)
    return f"{label}@{int(k)}" if not _missing(k) and metric.startswith(("coverage", "diversity")) else label


def _quality_section(data: RunData) -> Section:
    blocks: list[Any] = []
    budgets = budgets_of(data.plan)
    if data.matched is not None and not data.matched.empty:
        rows = []
        for _, r in data.matched.sort_values(["budget_se_samples"], kind="stable").iterrows():
            metric = str(r["metric"])
            k = None if metric.startswith("fpr") else r.get("wc_samples")
            se_k = None if metric.startswith("fpr") else int(r["budget_se_samples"])
            label = _metric_label(metric)
            if k is not None:
                label = f"{label}@k (SE k={se_k}, WC k={int(k)})"
            rows.append(
                [
                    _budget_short(budgets, int(r["budget_se_samples"])),
                    label,
                    _metric_value(metric, r["se_value"]),
                    _metric_ci(metric, r.get("se_ci_low"), r.get("se_ci_high")),
                    _metric_value(metric, r["wc_value"]),
                    _metric_ci(metric, r.get("wc_ci_low"), r.get("wc_ci_high")),
                    f"**{r['relative_text']}**",
                ]
            )
        blocks.append(
            Table(
                ["budget (SE vs WC)", "metric", "SE", "SE 95% CI", "WC", "WC 95% CI", "WC vs SE"],
                rows,
                caption="Each model's data at its compute-matched sample count, on the problems complete for both. "
                "Intervals: bootstrap over problems (Wilson over judged solutions for FPR). Changes in the paper's "
                "format: relative % for coverage and diversity, percentage points for FPR.",
                numeric={2, 3, 4, 5},
            )
        )
    else:
        blocks.append(Text("Metrics have not been computed (`analyze` stage).", "note"))
    blocks += _allocation_blocks(data)
    for fig in data.figures:
        blocks.append(Figure(fig, _figure_caption(fig)))
    return Section("Dataset quality: coverage, diversity, false positives", blocks)


def _allocation_blocks(data: RunData) -> list[Any]:
    """Per model and policy: samples per problem and what all its samples hold (flopmatch.allocation_metrics);
    shown when some model was sampled by a non-uniform allocation policy."""
    table = _read_parquet(data.run.metrics_dir / "allocation.parquet")
    if table is None or table.empty or (table["allocation"] == "uniform").all():
        return []
    quantiles = ("samples_min", "samples_q25", "samples_median", "samples_q75", "samples_max")
    rows = [[r["model"], r["allocation"], " / ".join(f"{r[c]:g}" for c in quantiles), fmt_pct(r["coverage"]),
             fmt_ci(r["coverage_low"], r["coverage_high"]), fmt_num(r["unique_per_problem"]), fmt_flops(r["flops"])]
            for r in table.to_dict("records")]  # fmt: skip
    return [Table(["model", "policy", "samples per problem (min / q25 / median / q75 / max)", "coverage", "95% CI",
                   "unique correct per problem", "FLOPs spent"], rows,
                  caption="Unequal sample counts: coverage and unique correct over all of a model's samples, at the "
                  "FLOPs it spent (bootstrap over problems); the coverage-vs-FLOPs figure shows the way there.",
                  numeric={3, 4, 5, 6})]  # fmt: skip


def _at_full_k(summary: pd.DataFrame) -> pd.DataFrame:
    """Rows at k = the setting's samples per problem (FPR rows have no k and are kept)."""
    if "k" not in summary or "samples_per_problem" not in summary:
        return summary
    k = summary["k"].astype("Float64")
    return summary[k.isna() | (k == summary["samples_per_problem"].astype("Float64"))]


def _figure_caption(path: Path) -> str:
    name = path.stem.replace("_", " ").replace("-", " ")
    captions = {
        "coverage_vs_flops": "coverage against nominal FLOPs spent, per model and allocation policy",
        "coverage": "coverage@k against k for each model, with 95% bands",
        "diversity": "diversity@k: unique correct solutions per problem among k samples",
        "fpr": "false-positive rate with 95% intervals",
    }
    for key, text in captions.items():
        if key in path.stem:
            return text[0].upper() + text[1:] + "."
    return name[0].upper() + name[1:] + "."


def _judge_label(data: RunData) -> str:
    spec = ((data.config or {}).get("judge") or {}).get("spec")
    if spec == "toyworld-checker" or (isinstance(spec, dict) and spec.get("backend") == "toyworld-checker"):
        return "exact step checker"
    if isinstance(spec, dict) and spec.get("model"):
        return f"LLM judge ({spec['model']})"
    return "judge"


def _fpr_section(data: RunData) -> Section:
    title = "False-positive rate"
    summary = data.summary
    if summary is None or summary.empty:
        return Section(title, [Text("Metrics have not been computed.", "note")])
    fpr = summary[summary["metric"].isin(["fpr_judge", "fpr_human"])]
    if "group" in fpr:
        fpr = fpr[fpr["group"].isna() | (fpr["group"] == "all")]
    if fpr.empty:
        return Section(title, [Text("No solutions were judged (the judge stage is off, or no solution had a "
                                    "right answer).", "note")])  # fmt: skip
    budgets = budgets_of(data.plan)
    judge = _judge_label(data)
    rows = []
    ordered = fpr.assign(_role=fpr["role"].map({"se": 0, "wc": 1}).fillna(2)).sort_values(
        ["budget_se_samples", "metric", "_role"], kind="stable"
    )
    for _, r in ordered.iterrows():
        budget = r.get("budget_se_samples")
        rows.append(
            [
                "–" if _missing(budget) else _budget_short(budgets, int(budget)),
                data.label(str(r["role"])) if isinstance(r["role"], str) else str(r["model"]),
                judge if r["metric"] == "fpr_judge" else "human labels",
                fmt_pct(r["value"]),
                fmt_ci(r["ci_low"], r["ci_high"]),
                fmt_num(r.get("n", r.get("n_problems"))),
            ]
        )
    return Section(
        title,
        [
            Text(
                "Share of answer-correct solutions whose reasoning is wrong (right answer, wrong steps), on a "
                "seeded random sample of each model's answer-correct solutions. An exact checker is ground truth; "
                "an LLM judge is an estimate (see `flopmatch judge-eval` for its agreement with human labels)."
            ),
            Table(
                ["budget (SE vs WC)", "model", "verdicts from", "FPR", "95% CI", "solutions judged"],
                rows,
                numeric={3, 4, 5},
            ),
        ],  # fmt: skip
    )


def _group_label(group: str) -> str:
    kind, sep, value = group.partition("=")
    return f"{kind}: {value}" if sep else group


def _levels_section(data: RunData) -> Section | None:
    """Coverage per level / subject, one row per group and a column block per budget."""
    summary = data.summary
    if summary is None or summary.empty or "group" not in summary:
        return None
    groups = _at_full_k(summary[summary["group"].notna() & (summary["group"] != "all")])
    groups = groups[groups["metric"] == "coverage"]
    if groups.empty:
        return None
    budgets = budgets_of(data.plan)
    budget_ids = sorted({int(b) for b in groups["budget_se_samples"].dropna()})
    columns = ["group", "problems"]
    for b in budget_ids:
        short = _budget_short(budgets, b)
        columns += [f"SE · {short}", f"WC · {short}", "WC vs SE"]
    rows = []
    order = list(dict.fromkeys(groups["group"]))
    for group_name in sorted(order, key=lambda g: (not str(g).startswith("level"), str(g))):
        g = groups[groups["group"] == group_name]
        row = [_group_label(str(group_name)), fmt_num(g["n_problems"].max())]
        for b in budget_ids:
            cell = {str(r["role"]): r for _, r in g[g["budget_se_samples"] == b].iterrows()}
            se, wc = cell.get("se"), cell.get("wc")
            row += [
                "–" if se is None else f"{fmt_pct(se['value'])} {fmt_ci(se['ci_low'], se['ci_high'])}",
                "–" if wc is None else f"{fmt_pct(wc['value'])} {fmt_ci(wc['ci_low'], wc['ci_high'])}",
                "–" if se is None or wc is None else fmt_gain(relative_gain(wc["value"], se["value"])),
            ]
        rows.append(row)
    return Section(
        "Coverage by level and subject",
        [
            Table(
                columns,
                rows,
                caption="coverage@k of each model's data at its compute-matched sample count, "
                "with 95% bootstrap intervals, per problem group.",
                numeric=set(range(1, len(columns))),
            ),
        ],  # fmt: skip
    )


def _paradigm_section(data: RunData, figures_dir: Path | None) -> Section:
    comparisons = paradigm_comparisons(data.paradigms)
    if comparisons is None:
        return Section(
            "Fine-tuning paradigms",
            [Text("Training is off for this study, or has not run yet (`training.enabled`).", "note")],
        )
    budgets = budgets_of(data.plan)
    metric = headline_metric(data.paradigms)
    blocks: list[Any] = [
        Text(
            f"Each student is fine-tuned once on SE data and once on WC data of the same budget and evaluated "
            f"on the test split. Gains are relative, as in the paper: (WC − SE) / SE. Headline metric: {metric}."
        )
    ]
    rows = []
    has_nm = comparisons["nm"].notna().any()
    has_base = comparisons["base"].notna().any()
    for r in comparisons[comparisons["metric"] == metric].itertuples():
        row = [
            PARADIGM_NAMES.get(r.paradigm, r.paradigm),
            _budget_short(budgets, r.budget_se_samples),
            r.student,
        ]
        if has_base:
            row.append(fmt_pct(r.base))
        row += [
            _value_ci(r.se, r.se_low, r.se_high),
            _value_ci(r.wc, r.wc_low, r.wc_high),
        ]
        if has_nm:
            row.append(fmt_pct(r.nm))
        row.append(f"**{fmt_gain(r.gain)}**")
        rows.append(row)
    columns = (
        ["paradigm", "budget (SE vs WC)", "student"]
        + (["before fine-tuning"] if has_base else [])
        + ["SE data [95% CI]", "WC data [95% CI]"]
        + (["WC number-matched"] if has_nm else [])
        + ["WC vs SE"]
    )
    blocks.append(Table(columns, rows, numeric=set(range(3, len(columns)))))
    other = comparisons[comparisons["metric"] != metric]
    if not other.empty:
        metrics = sorted(set(other["metric"]), key=_metric_order)
        rows = []
        for (paradigm, budget), group in other.groupby(["paradigm", "budget_se_samples"], sort=False):
            by_metric = {r.metric: r for r in group.itertuples()}
            row = [PARADIGM_NAMES.get(paradigm, paradigm), _budget_short(budgets, int(budget))]
            for m in metrics:
                r = by_metric.get(m)
                row.append("–" if r is None else f"{fmt_pct(r.se)} → {fmt_pct(r.wc)} ({fmt_gain(r.gain)})")
            rows.append(row)
        blocks.append(
            Table(
                ["paradigm", "budget (SE vs WC)", *(m.replace("_", " ") for m in metrics)],
                rows,
                caption="Other evaluation metrics, each as SE data → WC data (relative gain): maj@k and pass@k "
                "over samples at the evaluation temperature, and the mean accuracy of those samples.",
                numeric=set(range(2, 2 + len(metrics))),
            )
        )
    blocks += _paired_blocks(data, budgets, metric, figures_dir)
    if figures_dir is not None:
        fig = _paradigm_figure(comparisons[comparisons["metric"] == metric], budgets, metric, figures_dir)
        if fig is not None:
            blocks.append(
                Figure(fig, f"{metric} of each student fine-tuned on SE vs WC data, with 95% intervals.")
            )
    return Section("Fine-tuning paradigms", blocks)


def _paired_blocks(data: RunData, budgets: list[dict[str, Any]], metric: str, figures_dir: Path | None) -> list[Any]:
    """The paired-comparison table and forest plot (flopmatch.comparisons), when the run has them."""
    table = data.comparisons
    if table is None or table.empty:
        return [Text("No paired comparisons yet: `flopmatch compare RUN` writes metrics/comparisons.parquet.", "note")]
    from flopmatch.comparisons import CORRECTION, forest_plot, report_table

    columns, rows = report_table(table, lambda b: _budget_short(budgets, b), metric=metric)
    blocks: list[Any] = [Table(columns, rows, numeric={3, 4, 5, 6, 7, 8}, caption=(
        f"Paired comparisons ({metric}): treatment − baseline on the same test problems, in points, averaged over "
        "training seeds; 95% interval: bootstrap over problems (and seeds, with ≥ 2). p: McNemar's exact test "
        f"(one seed) or a sign-flip permutation test, adjusted by {CORRECTION}. MDE: the difference detectable "
        "with 80% power. One seed is never a verdict. All metrics: metrics/comparisons.md."))]  # fmt: skip
    if figures_dir is not None:
        path = forest_plot(table, figures_dir / "paired_forest.png", metric=metric,
                           label=lambda r: f"{PARADIGM_NAMES.get(r['paradigm'], r['paradigm'])}, "
                                           f"{_budget_short(budgets, int(r['budget_se_samples']))}")  # fmt: skip
        if path is not None:
            blocks.append(Figure(path, f"Paired {metric} differences with 95% intervals (filled: a verdict; grey band: "
                                       "± MDE): WC data vs SE data, the number-matched control vs SE data and, in a study with "
                                       "paradigms.allocations, allocated vs uniform data at the same FLOPs."))
    return blocks


def _value_ci(value: Any, low: Any, high: Any) -> str:
    """ "45.6% [40.6, 50.6]", or a dash when there is no value (e.g. no data to train on)."""
    return "–" if _missing(value) else f"{fmt_pct(value)} {fmt_ci(low, high)}"


def _metric_order(metric: str) -> tuple[int, int, str]:
    """maj@k before pass@k, each by k; anything else after."""
    name, _, k = metric.partition("@")
    return ({"maj": 0, "pass": 1}.get(name, 2), int(k) if k.isdigit() else 0, metric)


def _paradigm_figure(
    comparisons: pd.DataFrame, budgets: list[dict[str, Any]], metric: str, out_dir: Path
) -> Path | None:
    if comparisons.empty:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    labels = [
        f"{PARADIGM_NAMES.get(r.paradigm, r.paradigm)}\n{_budget_short(budgets, r.budget_se_samples)}"
        for r in comparisons.itertuples()
    ]
    x = np.arange(len(labels))
    fig, ax = plt.subplots(figsize=(max(6.0, 1.3 * len(labels) + 2), 3.6), dpi=120)
    for offset, (col, name, color) in enumerate((("se", "SE data", "#c0504d"), ("wc", "WC data", "#2f6fb0"))):
        values = comparisons[col].to_numpy(dtype=float)
        low = comparisons[f"{col}_low"].to_numpy(dtype=float)
        high = comparisons[f"{col}_high"].to_numpy(dtype=float)
        err = np.vstack([np.nan_to_num(values - low), np.nan_to_num(high - values)])
        ax.bar(
            x + (offset - 0.5) * 0.38, values * 100, 0.38, yerr=err * 100, capsize=3, label=name, color=color
        )
    if comparisons["nm"].notna().any():
        ax.scatter(
            x + 0.19,
            comparisons["nm"].to_numpy(dtype=float) * 100,
            marker="D",
            color="#333",
            zorder=3,
            label="WC number-matched",
        )
    ax.set_xticks(x, labels, fontsize=8)
    ax.set_ylabel(f"{metric} (%)")
    top = np.nanmax(comparisons[["se_high", "wc_high", "se", "wc", "nm"]].to_numpy(dtype=float), initial=0.0)
    ax.set_ylim(0, max(5.0, min(100.0, top * 100 * 1.15)))
    ax.legend(fontsize=8, frameon=False)
    ax.spines[["top", "right"]].set_visible(False)
    fig.tight_layout()
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "paradigms.png"
    fig.savefig(path)
    plt.close(fig)
    return path


def _stages_section(data: RunData) -> Section:
    rows = []
    order = ("problems", "plan", "pilot", "sample", "grade", "judge", "analyze", "sft", "train", "eval", "report")
    for name in sorted(data.stages, key=lambda n: order.index(n) if n in order else len(order)):
        entry = data.stages[name]
        if ":" in name:
            continue  # per-job sub-stages (one per training run) stay out of the overview
        seconds = entry.get("seconds")
        finished = entry.get("finished_at")
        rows.append(
            [
                name,
                str(entry.get("status", "")),
                fmt_seconds(seconds),
                time.strftime("%Y-%m-%d %H:%M", time.localtime(finished)) if finished else "–",
            ]
        )
    if not rows:
        return Section("Stages", [Text("No stage has run.", "note")])
    return Section("Stages", [Table(["stage", "status", "took", "finished"], rows, numeric={2})])


def _pilot_section(data: RunData) -> Section | None:
    """budget.mode advised: each budget's pilot forecasts next to what the full sample set measured."""
    from flopmatch.study.pilot import forecast_vs_measured

    frame = forecast_vs_measured(data.run.root)
    if frame is None or frame.empty:
        return None
    pct = frame["objective"].iloc[0] == "coverage"
    value = fmt_pct if pct else fmt_num
    rows = [
        [
            f"SE {r.budget_se_samples} vs WC {r.budget_wc_samples}",
            f"{r.allocation}{' (advised)' if r.role == 'advised' else ''}",
            value(r.forecast),
            fmt_ci(r.forecast_low, r.forecast_high, pct),
            value(r.measured),
            fmt_ci(r.measured_low, r.measured_high, pct),
            "yes" if r.forecast_low <= r.measured <= r.forecast_high else "no",
        ]
        for r in frame.itertuples()
    ]
    caption = (
        f"{frame['objective'].iloc[0]} forecast by `flopmatch advise` from the pilot stage's samples (intervals: "
        "bootstrap over pilot problems) and measured on the whole sample split (unbiased estimate at the same "
        "samples per problem; bootstrap over problems). Advice and frontier plots: pilot/advice.json, pilot/*.png."
    )
    columns = ["budget", "allocation", "forecast", "95% CI", "measured", "95% CI", "measured within forecast CI"]
    return Section("Pilot forecast vs measured", [Table(columns, rows, caption=caption, numeric={2, 3, 4, 5})])


def build_document(data: RunData, figures_dir: Path | None = None) -> Report:
    cfg = data.config or {}
    title = f"flopmatch study: {cfg.get('name', data.run.root.name)}"
    subtitle = f"{data.label('wc')} (WC) vs {data.label('se')} (SE)" if data.roles else ""
    sections = [
        _study_section(data),
        _plan_section(data),
        _cost_section(data),
        _quality_section(data),
        _fpr_section(data),
    ]
    levels = _levels_section(data)
    if levels is not None:
        sections.append(levels)
    pilot = _pilot_section(data)
    if pilot is not None:
        sections.append(pilot)
    sections.append(_paradigm_section(data, figures_dir))
    sections.append(_stages_section(data))
    return Report(
        title=title,
        subtitle=subtitle,
        sections=sections,
        verdict=compute_verdict(data),
        generated=time.strftime("%Y-%m-%d %H:%M"),
    )


# --------------------------------------------------------------------------- markdown


def _md_cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def render_markdown(report: Report, figure_href: dict[Path, str]) -> str:
    out = [f"# {report.title}", ""]
    if report.subtitle:
        out += [f"**{report.subtitle}** · generated {report.generated}", ""]
    out += ["## Verdict", ""]
    out += [f"- {line}" for line in report.verdict] or [
        "_Nothing to conclude yet: no metrics have been computed._"
    ]
    out.append("")
    for section in report.sections:
        out += [f"## {section.title}", ""]
        for block in section.blocks:
            if isinstance(block, Text):
                out += [f"_{block.text}_" if block.kind == "note" else block.text, ""]
            elif isinstance(block, Bullets):
                out += [f"- {item}" for item in block.items] + [""]
            elif isinstance(block, Table):
                out.append("| " + " | ".join(_md_cell(c) for c in block.columns) + " |")
                out.append(
                    "|"
                    + "|".join("---:" if i in block.numeric else "---" for i in range(len(block.columns)))
                    + "|"
                )
                out += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in block.rows]
                out += (["", f"_{block.caption}_"] if block.caption else []) + [""]
            elif isinstance(block, Figure):
                out += [f"![{block.caption}]({figure_href[block.path]})", "", f"_{block.caption}_", ""]
    return "\n".join(out).rstrip() + "\n"


# --------------------------------------------------------------------------- HTML

_CSS = """
:root { --ink:#1d2330; --muted:#5b6474; --line:#e3e6ec; --wc:#2f6fb0; --se:#c0504d; --bg:#fbfbfd; }
* { box-sizing: border-box; }
body { margin:0; font: 15px/1.55 -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif; color:var(--ink); background:var(--bg); }
main { max-width: 1120px; margin: 0 auto; padding: 32px 28px 64px; }
header { border-bottom: 1px solid var(--line); margin-bottom: 20px; padding-bottom: 14px; }
h1 { font-size: 26px; margin: 0 0 4px; }
.sub { color: var(--muted); }
nav { margin-top: 10px; font-size: 13px; }
nav a { color: var(--muted); margin-right: 14px; text-decoration: none; }
nav a:hover { color: var(--ink); }
h2 { font-size: 19px; margin: 34px 0 10px; padding-bottom: 4px; border-bottom: 1px solid var(--line); }
.verdict { background: #eef4fb; border-left: 4px solid var(--wc); padding: 12px 18px; border-radius: 6px; }
.verdict h2 { border: 0; margin: 0 0 6px; }
.verdict ul { margin: 0; padding-left: 20px; }
.verdict li { margin: 4px 0; }
.note { color: var(--muted); font-style: italic; }
table { border-collapse: collapse; width: 100%; margin: 8px 0 4px; font-size: 13.5px; background: #fff; }
th, td { padding: 6px 10px; border-bottom: 1px solid var(--line); text-align: left; vertical-align: top; }
th { background: #f3f5f8; font-weight: 600; font-size: 12.5px; color: #3a4252; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
tbody tr:hover { background: #f7f9fc; }
.caption { color: var(--muted); font-size: 12.5px; margin: 2px 0 14px; }
figure { margin: 14px 0; background:#fff; border:1px solid var(--line); border-radius: 6px; padding: 10px; }
figure img { max-width: min(100%, 860px); display: block; margin: 0 auto; }
figcaption { color: var(--muted); font-size: 12.5px; text-align: center; margin-top: 6px; }
.figs { display: grid; grid-template-columns: repeat(auto-fit, minmax(440px, 1fr)); gap: 14px; }
code { background: #f0f2f5; padding: 1px 4px; border-radius: 3px; font-size: 90%; }
details { margin-top: 8px; } pre { background:#f6f7f9; padding: 12px; overflow-x: auto; font-size: 12.5px; }
footer { color: var(--muted); font-size: 12px; margin-top: 40px; }
"""


def _inline(text: str) -> str:
    """Escape, then honour **bold** and `code`."""
    escaped = html.escape(str(text))
    escaped = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", escaped)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", escaped)


def _html_table(table: Table) -> str:
    def cls(i: int) -> str:
        return ' class="num"' if i in table.numeric else ""

    head = "".join(f"<th{cls(i)}>{_inline(c)}</th>" for i, c in enumerate(table.columns))
    body = "".join(
        "<tr>" + "".join(f"<td{cls(i)}>{_inline(c)}</td>" for i, c in enumerate(row)) + "</tr>"
        for row in table.rows
    )
    caption = f'<p class="caption">{_inline(table.caption)}</p>' if table.caption else ""
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>{caption}"


def _html_figure(figure: Figure) -> str:
    data = base64.b64encode(figure.path.read_bytes()).decode("ascii")
    return (
        f'<figure><img alt="{html.escape(figure.caption)}" src="data:image/png;base64,{data}">'
        f"<figcaption>{_inline(figure.caption)}</figcaption></figure>"
    )


def render_html(report: Report, config_text: str | None = None) -> str:
    parts = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
        "<meta name='viewport' content='width=device-width, initial-scale=1'>",
        f"<title>{html.escape(report.title)}</title><style>{_CSS}</style></head><body><main>",
        f"<header><h1>{html.escape(report.title)}</h1>",
        f"<div class='sub'>{html.escape(report.subtitle)} · generated {html.escape(report.generated)}</div>",
        "<nav>"
        + "".join(f"<a href='#{s.anchor}'>{html.escape(s.title.split(':')[0])}</a>" for s in report.sections)
        + "</nav></header>",
        "<section class='verdict'><h2>Verdict</h2>",
    ]
    if report.verdict:
        parts.append("<ul>" + "".join(f"<li>{_inline(line)}</li>" for line in report.verdict) + "</ul>")
    else:
        parts.append("<p class='note'>Nothing to conclude yet: no metrics have been computed.</p>")
    parts.append("</section>")
    for section in report.sections:
        parts.append(f"<section id='{section.anchor}'><h2>{html.escape(section.title)}</h2>")
        figures: list[Figure] = []
        for block in section.blocks:
            if isinstance(block, Figure):
                figures.append(block)
                continue
            if figures:
                parts.append("<div class='figs'>" + "".join(_html_figure(f) for f in figures) + "</div>")
                figures = []
            if isinstance(block, Text):
                parts.append(f"<p class='{block.kind}'>{_inline(block.text)}</p>")
            elif isinstance(block, Bullets):
                parts.append("<ul>" + "".join(f"<li>{_inline(i)}</li>" for i in block.items) + "</ul>")
            elif isinstance(block, Table):
                parts.append(_html_table(block))
        if figures:
            parts.append("<div class='figs'>" + "".join(_html_figure(f) for f in figures) + "</div>")
        parts.append("</section>")
    if config_text:
        parts.append(
            "<section id='config'><h2>Configuration</h2><details><summary>The resolved study.yaml</summary>"
            f"<pre>{html.escape(config_text)}</pre></details></section>"
        )
    parts.append(
        "<footer>Made by flopmatch from the run directory's tables; rebuild with "
        "<code>flopmatch report RUN</code>.</footer></main></body></html>"
    )
    return "\n".join(parts)


# --------------------------------------------------------------------------- entry point


@dataclass(frozen=True)
class ReportPaths:
    html: Path
    markdown: Path
    verdict: list[str]


def build_report(run_dir: str | Path) -> ReportPaths:
    """Write ``report/index.html`` (self-contained) and ``report/report.md`` (+ ``report/figures/``)."""
    data = load_run(run_dir)
    out = data.run.report_dir
    figures_dir = out / "figures"
    figures_dir.mkdir(parents=True, exist_ok=True)
    report = build_document(data, figures_dir=figures_dir)
    hrefs: dict[Path, str] = {}
    for section in report.sections:
        for block in section.blocks:
            if isinstance(block, Figure):
                target = figures_dir / block.path.name
                if block.path.resolve() != target.resolve():
                    shutil.copyfile(block.path, target)
                hrefs[block.path] = f"figures/{block.path.name}"
    config_text = data.run.study_path.read_text() if data.run.study_path.exists() else None
    html_path = write_text(render_html(report, config_text), out / "index.html")
    md_path = write_text(render_markdown(report, hrefs), out / "report.md")
    return ReportPaths(html=html_path, markdown=md_path, verdict=report.verdict)


def iter_blocks(report: Report) -> Iterable[Any]:
    for section in report.sections:
        yield from section.blocks
