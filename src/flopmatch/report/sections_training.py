"""The report's sections on fine-tuning (paradigms, paired verdicts), stages and the pilot; the whole document."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pandas as pd

from flopmatch.budget import BudgetPlan
from flopmatch.formatting import fmt_ci, fmt_gain, fmt_num, fmt_pct, fmt_seconds, is_missing
from flopmatch.report.blocks import Figure, Report, Section, Table, Text
from flopmatch.report.data import RunData
from flopmatch.report.sections_data import (
    cost_section,
    fpr_section,
    levels_section,
    plan_section,
    quality_section,
    study_section,
)
from flopmatch.report.verdict import (
    PARADIGM_NAMES,
    budget_short,
    compute_verdict,
    headline_metric,
    paradigm_comparisons,
)
from flopmatch.stage_names import STAGE_NAMES
from flopmatch.store.queries import read_metrics


def _paradigm_section(data: RunData, figures_dir: Path | None) -> Section:
    comparisons = paradigm_comparisons(data.paradigms)
    if comparisons is None:
        return Section(
            "Fine-tuning paradigms",
            [Text("Training is off for this study, or has not run yet (`training.enabled`).", "note")],
        )
    plan = data.plan
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
            budget_short(plan, r.budget_se_samples),
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
            row = [PARADIGM_NAMES.get(paradigm, paradigm), budget_short(plan, int(budget))]
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
    blocks += _paired_blocks(data, metric, figures_dir)
    if figures_dir is not None:
        fig = _paradigm_figure(comparisons[comparisons["metric"] == metric], plan, metric, figures_dir)
        if fig is not None:
            blocks.append(
                Figure(fig, f"{metric} of each student fine-tuned on SE vs WC data, with 95% intervals.")
            )
    return Section("Fine-tuning paradigms", blocks)


def _paired_blocks(data: RunData, metric: str, figures_dir: Path | None) -> list[Any]:
    """The paired-comparison table and forest plot (flopmatch.comparisons), when the run has them."""
    table = data.comparisons
    if table is None or table.empty:
        return [Text("No paired comparisons yet: `flopmatch compare RUN` writes metrics/comparisons.parquet.", "note")]
    from flopmatch.comparisons import CORRECTION, forest_plot, report_table

    columns, rows = report_table(table, lambda b: budget_short(data.plan, b), metric=metric)
    blocks: list[Any] = [Table(columns, rows, numeric={3, 4, 5, 6, 7, 8}, caption=(
        f"Paired comparisons ({metric}): treatment − baseline on the same test problems, in points, averaged over "
        "training seeds; 95% interval: bootstrap over problems (and seeds, with ≥ 2). p: McNemar's exact test "
        f"(one seed) or a sign-flip permutation test, adjusted by {CORRECTION}. MDE: the difference detectable "
        "with 80% power. One seed is never a verdict. All metrics: metrics/comparisons.md."))]  # fmt: skip
    if figures_dir is not None:
        path = forest_plot(table, figures_dir / "paired_forest.png", metric=metric,
                           label=lambda r: f"{PARADIGM_NAMES.get(r['paradigm'], r['paradigm'])}, "
                                           f"{budget_short(data.plan, int(r['budget_se_samples']))}")  # fmt: skip
        if path is not None:
            blocks.append(Figure(path, f"Paired {metric} differences with 95% intervals (filled: a verdict; grey band: "
                                       "± MDE): WC data vs SE data, the number-matched control vs SE data and, in a study with "
                                       "paradigms.allocations, allocated vs uniform data at the same FLOPs."))
    return blocks


def _value_ci(value: Any, low: Any, high: Any) -> str:
    """ "45.6% [40.6, 50.6]", or a dash when there is no value (e.g. no data to train on)."""
    return "–" if is_missing(value) else f"{fmt_pct(value)} {fmt_ci(low, high)}"


def _metric_order(metric: str) -> tuple[int, int, str]:
    """maj@k before pass@k, each by k; anything else after."""
    name, _, k = metric.partition("@")
    return ({"maj": 0, "pass": 1}.get(name, 2), int(k) if k.isdigit() else 0, metric)


def _paradigm_figure(
    comparisons: pd.DataFrame, plan: BudgetPlan | None, metric: str, out_dir: Path
) -> Path | None:
    if comparisons.empty:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    labels = [
        f"{PARADIGM_NAMES.get(r.paradigm, r.paradigm)}\n{budget_short(plan, r.budget_se_samples)}"
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
    order = STAGE_NAMES  # the study's stages in pipeline order (flopmatch.study.registry checks it)
    for name in sorted(data.stages, key=lambda n: order.index(n) if n in order else len(order)):
        entry = data.stages[name]  # stages only: per-job entries (one per training run) are RunDir.job_state()
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
    """budget.mode advised: each budget's pilot forecasts next to what the full sample set measured (the
    analysis's ``metrics/pilot_vs_measured.parquet``; the report reads no sample). A run analysed before
    the analysis wrote that table gets a note saying to analyse it again."""
    if not data.run.advice_path.exists():
        return None
    table = read_metrics(data.run, "pilot_vs_measured")
    if table is None:
        note = ("This run was analysed before the analysis measured the pilot's forecasts "
                "(metrics/pilot_vs_measured.parquet): rerun `flopmatch analyze RUN` (a study reruns its analyze "
                "stage by itself) to see them.")  # fmt: skip
        return Section("Pilot forecast vs measured", [Text(note, "note")])
    frame = table.to_pandas()
    if frame.empty:
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
        study_section(data),
        plan_section(data),
        cost_section(data),
        quality_section(data),
        fpr_section(data),
    ]
    levels = levels_section(data)
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


