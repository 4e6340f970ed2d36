"""The analysis's markdown tables and figures (:func:`flopmatch.analysis.analyze` writes them)."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from flopmatch.metrics import (
    NEAR_DUP_NGRAM,
    NEAR_DUP_THRESHOLD,
)

# --------------------------------------------------------------------------- markdown


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA:
        return "–"
    if isinstance(value, (float, np.floating)):
        return f"{value:.{digits}f}"
    return str(value)


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(_fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def _summary_rows(frame: pd.DataFrame, with_group: bool) -> list[list[Any]]:
    rows = []
    for r in frame.itertuples(index=False):
        ci = f"[{_fmt(r.ci_low)}, {_fmt(r.ci_high)}]"
        base = [r.model, r.role or "–", _fmt(r.budget_se_samples), r.samples_per_problem, r.metric, _fmt(r.k),
                _fmt(r.value), ci, r.n]
        rows.append([*base, r.group] if with_group else base)
    return rows


def summary_markdown(summary: pd.DataFrame, warnings: Sequence[str] = ()) -> str:
    """The headline rows (k = S and FPR) over all problems, then the same by level and subject."""
    header = ["model", "role", "SE budget", "samples/problem", "metric", "k", "value", "95% CI", "n"]
    at_s = summary[(summary["k"].isna()) | (summary["k"] == summary["samples_per_problem"])]
    parts = [
        "# Dataset quality",
        "",
        "coverage@k and diversity@k: mean over problems, 95% bootstrap CI over problems; diversity counts unique "
        f"correct solutions after normalising whitespace/LaTeX; near-dup diversity merges solutions whose word "
        f"{NEAR_DUP_NGRAM}-gram Jaccard ≥ {NEAR_DUP_THRESHOLD}. FPR: share of judged answer-correct solutions with "
        "invalid reasoning, 95% Wilson CI (n = verdicts). All k are in summary.parquet.",
        "",
        "## All problems",
        "",
        markdown_table(header, _summary_rows(at_s[at_s["group"] == "all"], False)),
    ]
    by_group = at_s[at_s["group"] != "all"]
    if len(by_group):
        parts += ["", "## By level and subject", "", markdown_table([*header, "group"], _summary_rows(by_group, True))]
    if warnings:
        parts += ["", "## Warnings", "", *[f"- {w}" for w in warnings]]
    return "\n".join(parts) + "\n"


def compute_matched_markdown(frame: pd.DataFrame, headline: Sequence[str] = ()) -> str:
    parts = ["# Compute-matched: WC vs SE at equal sampling budgets", ""]
    if frame.empty:
        parts.append("No plan with both models graded: nothing to compare.")
        return "\n".join(parts) + "\n"
    parts += [f"- {line}" for line in headline] + [""]
    rows = [
        [r.budget_se_samples, r.wc_samples, r.metric,
         f"{_fmt(r.wc_value)} [{_fmt(r.wc_ci_low)}, {_fmt(r.wc_ci_high)}]",
         f"{_fmt(r.se_value)} [{_fmt(r.se_ci_low)}, {_fmt(r.se_ci_high)}]", r.relative_text]
        for r in frame.itertuples(index=False)
    ]
    parts.append(markdown_table(["SE samples", "WC samples", "metric", "WC [95% CI]", "SE [95% CI]", "WC vs SE"], rows))
    return "\n".join(parts) + "\n"


# --------------------------------------------------------------------------- figures


def make_figures(coverage_curve: pd.DataFrame, diversity_curve: pd.DataFrame, summary: pd.DataFrame,
                 directory: Path) -> list[Path]:
    """coverage@k and diversity@k vs k per model with CI bands; FPR per model and budget with intervals."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    directory.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []

    def save(fig, name: str) -> None:
        path = directory / name
        tmp = directory / f".{name}.tmp.png"
        fig.savefig(tmp, dpi=120, bbox_inches="tight")
        plt.close(fig)
        tmp.replace(path)
        written.append(path)

    if not coverage_curve.empty:
        fig, ax = plt.subplots(figsize=(6, 4))
        for model, g in coverage_curve.groupby("model", sort=True):
            line = ax.plot(g["k"], g["value"], marker="o", ms=3, label=model)[0]
            ax.fill_between(g["k"], g["ci_low"], g["ci_high"], color=line.get_color(), alpha=0.2)
        _k_axis(ax, coverage_curve["k"].max())
        ax.set(xlabel="k (samples per problem)", ylabel="coverage@k", ylim=(0, 1.02),
               title="coverage@k (95% bootstrap CI over problems)")
        ax.legend(fontsize=8)
        save(fig, "coverage_at_k.png")
    if not diversity_curve.empty:
        fig, ax = plt.subplots(figsize=(6, 4))
        for model, g in diversity_curve.groupby("model", sort=True):
            exact = g[g["metric"] == "diversity"]
            near = g[g["metric"] == "diversity_near_dup"]
            line = ax.plot(exact["k"], exact["value"], marker="o", ms=3, label=f"{model} (unique)")[0]
            ax.fill_between(exact["k"], exact["ci_low"], exact["ci_high"], color=line.get_color(), alpha=0.2)
            ax.plot(near["k"], near["value"], ls="--", color=line.get_color(), label=f"{model} (near-dup merged)")
        _k_axis(ax, diversity_curve["k"].max())
        ax.set(xlabel="k (samples per problem)", ylabel="unique correct solutions per problem",
               title="diversity@k (95% bootstrap CI over problems)")
        ax.legend(fontsize=7)
        save(fig, "diversity_at_k.png")
    fpr = summary[(summary["group"] == "all") & summary["metric"].isin(["fpr_judge", "fpr_human"])]
    if not fpr.empty:
        fig, ax = plt.subplots(figsize=(6, 4))
        labels = []
        for i, r in enumerate(fpr.itertuples(index=False)):
            budget = f", SE budget {r.budget_se_samples}" if r.budget_se_samples is not pd.NA else ""
            labels.append(f"{r.model}{budget}\n{r.metric.removeprefix('fpr_')}, n={r.n}")
            ax.errorbar([i], [r.value], yerr=[[r.value - r.ci_low], [r.ci_high - r.value]], fmt="o", capsize=5,
                        color="C3" if r.metric == "fpr_human" else "C0")
        ax.set_xticks(range(len(labels)), labels, fontsize=7, rotation=20, ha="right")
        ax.set(ylabel="false-positive rate", ylim=(0, 1), title="FPR of answer-correct solutions (95% Wilson CI)")
        save(fig, "fpr.png")
    return written


def _k_axis(ax, k_max: int) -> None:
    if k_max > 8:
        ax.set_xscale("log", base=2)
    ax.grid(alpha=0.3)
