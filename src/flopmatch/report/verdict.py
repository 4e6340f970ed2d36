"""The verdict, computed from the numbers: wins per budget and paradigm, with their intervals."""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

from flopmatch.budget import BudgetPlan, BudgetPoint, UnknownBudgetError
from flopmatch.formatting import fmt_gain, is_missing
from flopmatch.metrics import relative_gain
from flopmatch.report.data import RunData

# --------------------------------------------------------------------------- the verdict


def _named_budget(plan: BudgetPlan | None, se_samples: int) -> tuple[BudgetPoint | None, str | None]:
    """The plan's budget named ``se_samples`` (None when it has none) and, in a two-budget plan, "low" or
    "high" (None otherwise)."""
    if plan is None:
        return None, None
    try:
        point = plan.point(se_samples)
    except UnknownBudgetError:
        point = None
    which = ("low" if int(se_samples) == min(plan.se_budgets) else "high") if len(plan.budgets) == 2 else None
    return point, which


def _budget_name(plan: BudgetPlan | None, se_samples: int) -> str:
    """ "the low budget (SE 1 vs WC 3)" in a two-budget plan, else "budget SE 1 vs WC 3"."""
    point, which = _named_budget(plan, se_samples)
    ratio = f"SE {se_samples} vs WC {point.wc_samples}" if point else f"SE {se_samples}"
    return f"the {which} budget ({ratio})" if which else f"budget {ratio}"


def budget_short(plan: BudgetPlan | None, se_samples: int) -> str:
    """A compact budget label for table cells: "1 vs 3 (low)"."""
    point, which = _named_budget(plan, se_samples)
    text = f"{se_samples} vs {point.wc_samples}" if point else f"SE {se_samples}"
    return f"{text} ({which})" if which else text


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
                float(row[col]) if row is not None and col in row and not is_missing(row[col]) else float("nan")
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
    plan = data.plan
    if data.matched is not None and not data.matched.empty:
        for budget_se, group in data.matched.groupby("budget_se_samples", sort=True):
            texts = [str(t) for t in group["relative_text"] if isinstance(t, str) and t]
            if texts:
                lines.append(
                    f"Compute-matched at {_budget_name(plan, int(budget_se))}, WC data vs SE data: "
                    + ", ".join(texts)
                    + "."
                )
    comparisons = paradigm_comparisons(data.paradigms)
    if data.comparisons is not None and not data.comparisons.empty:
        from flopmatch.comparisons import verdict_lines

        metric = headline_metric(data.paradigms) if data.paradigms is not None else "pass@1"
        lines += verdict_lines(data.comparisons, lambda b: _budget_name(plan, b), metric=metric)
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
                f"at {_budget_name(plan, int(budget_se))} ({metric}: {parts})"
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
                if not (is_missing(flops_ratio) or is_missing(secs_ratio)):
                    agree = abs(math.log(secs_ratio / flops_ratio)) < math.log(1.25)
                    lines.append(
                        f"Cost at {_budget_name(plan, int(budget_se))}: WC/SE nominal FLOPs {flops_ratio:.2f}×, "
                        f"measured seconds {secs_ratio:.2f}× — "
                        + (
                            "nominal and measured cost agree within 25%."
                            if agree
                            else "nominal FLOPs and measured cost disagree."
                        )
                    )
                break  # one budget is enough to make the point; the table has all of them
    return lines


