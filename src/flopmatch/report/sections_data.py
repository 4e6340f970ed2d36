"""The report's sections on the data: the study, the plan, cost, quality, FPR, levels."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from flopmatch.formatting import (
    fmt_ci,
    fmt_flops,
    fmt_gain,
    fmt_num,
    fmt_params,
    fmt_pct,
    fmt_seconds,
    is_missing,
)

# --------------------------------------------------------------------------- sections
from flopmatch.judge.core import judge_label
from flopmatch.metrics import relative_gain
from flopmatch.report.blocks import Figure, Section, Table, Text
from flopmatch.report.data import RunData, budgets_of
from flopmatch.report.verdict import budget_short


def study_section(data: RunData) -> Section:
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


def plan_section(data: RunData) -> Section:
    plan = data.plan
    budgets = budgets_of(plan)
    if plan is None or not budgets:
        return Section("Budget plan", [Text("The plan stage has not run.", "note")])
    rows = []
    for b in budgets:
        rows.append(
            [
                str(b.se_samples),
                str(b.wc_samples),
                fmt_flops(b.se_flops),
                fmt_flops(b.wc_flops),
                fmt_flops(b.se_flops_total),
                fmt_flops(b.wc_flops_total),
                "–" if is_missing(b.flops_mismatch_pct) else f"{float(b.flops_mismatch_pct):+.1f}%",
            ]
        )
    intro = {
        "flops": "Compute-matched: a generated token costs 2·P FLOPs, so WC gets P_SE/P_WC times SE's samples.",
        "price": "Price-matched: WC gets (SE price / WC price) times SE's samples.",
        "number": "Number-matched (the control): both models get the same number of samples.",
        "measured": "Matched on measured cost (seconds per sample).",
    }.get(str(plan.mode), f"Mode: {plan.mode}.")
    if not is_missing(plan.ratio):
        intro += f" Cost ratio SE/WC = {float(plan.ratio):.3f}"
        intro += f", rounded by `{plan.rounding}`." if plan.rounding else "."
    blocks: list[Any] = [Text(intro)]
    sides = [("wc", plan.wc), ("se", plan.se)]
    if any(side.params for _, side in sides):
        blocks.append(Text("; ".join(f"{data.label(role)}: P = {fmt_params(side.params)} "
                                     f"({_short_source(side.param_source)})" for role, side in sides) + "."))  # fmt: skip
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
            caption=f"Planned FLOPs in {plan.flops_unit or 'FLOPs per problem'}; totals over "
            f"{plan.n_problems or '?'} problems. The cost table below has what sampling actually spent.",
            numeric={0, 1, 2, 3, 4, 5, 6},
        )  # fmt: skip
    )
    for note in plan.notes:
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


def cost_section(data: RunData) -> Section:
    blocks: list[Any] = []
    if data.ledger is not None:
        blocks.append(_ledger_table(data))
    if data.cost is not None:
        blocks.append(_cost_by_budget_table(data))
    elif data.ledger is not None and data.plan is not None:
        blocks.append(Text("The cost per budget is the analysis's table (metrics/cost.parquet), which this run "
                           "does not have yet: run `flopmatch analyze` on it, or the study again.", "note"))
    if not blocks:
        blocks.append(Text("Sampling has not run.", "note"))
    return Section("Cost: nominal FLOPs vs measured seconds", blocks)


def _ledger_table(data: RunData) -> Table:
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
    return (
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


def _cost_by_budget_table(data: RunData) -> Table:
    rows = []
    for budget_se, group in data.cost.groupby("budget_se_samples", sort=True):
        by_role = {r["role"]: r for _, r in group.iterrows()}
        for role in ("se", "wc"):
            if role not in by_role:
                continue
            r = by_role[role]
            rows.append(
                [
                    budget_short(data.plan, int(budget_se)),
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
    return (
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


def _ratio(a: Any, b: Any) -> str:
    if is_missing(a) or is_missing(b) or float(b) == 0:
        return "–"
    return f"**{float(a) / float(b):.2f}×**"


RATE_METRICS = {"coverage", "fpr", "fpr_judge", "fpr_exact", "fpr_human", "accuracy"}


def _metric_value(metric: str, value: Any) -> str:
    if metric in RATE_METRICS or metric.startswith("fpr"):
        return fmt_pct(value)
    return "–" if is_missing(value) else f"{float(value):.2f}"


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
    return f"{label}@{int(k)}" if not is_missing(k) and metric.startswith(("coverage", "diversity")) else label


def quality_section(data: RunData) -> Section:
    blocks: list[Any] = []
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
                    budget_short(data.plan, int(r["budget_se_samples"])),
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
    table = data.allocation
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
    return judge_label(((data.config or {}).get("judge") or {}).get("spec"))


def fpr_section(data: RunData) -> Section:
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
    judge = _judge_label(data)
    rows = []
    ordered = fpr.assign(_role=fpr["role"].map({"se": 0, "wc": 1}).fillna(2)).sort_values(
        ["budget_se_samples", "metric", "_role"], kind="stable"
    )
    for _, r in ordered.iterrows():
        budget = r.get("budget_se_samples")
        rows.append(
            [
                "–" if is_missing(budget) else budget_short(data.plan, int(budget)),
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


def levels_section(data: RunData) -> Section | None:
    """Coverage per level / subject, one row per group and a column block per budget."""
    summary = data.summary
    if summary is None or summary.empty or "group" not in summary:
        return None
    groups = _at_full_k(summary[summary["group"].notna() & (summary["group"] != "all")])
    groups = groups[groups["metric"] == "coverage"]
    if groups.empty:
        return None
    budget_ids = sorted({int(b) for b in groups["budget_se_samples"].dropna()})
    columns = ["group", "problems"]
    for b in budget_ids:
        short = budget_short(data.plan, b)
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


