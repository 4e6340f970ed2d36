"""The paired comparisons of a study's fine-tuned students: ``metrics/comparisons.parquet`` and ``.md``.

For every paradigm × budget × metric this compares, on the same test problems, the student trained on
one data source with the student trained on another (:data:`COMPARISONS`): WC data against SE data
(the paper's question), the number-matched control against SE data and against compute-matched WC
data, and each fine-tuned student against itself before fine-tuning. With several training seeds
each side is a seeds × problems matrix; the difference is averaged over seeds and its interval
accounts for problems and seeds together (:mod:`flopmatch.paired`).

Tests: McNemar's exact test for greedy pass@1 with one seed per side; otherwise a sign-flip
permutation test on the per-problem differences of the seed means (it sees problem-level noise
only, so a verdict also needs the two-level interval to exclude 0). Holm's correction runs over the
paradigms × budgets of each (comparison, metric): one family per question the study asks. A verdict
needs ≥ 2 seeds: one seed's difference is "one seed: not a verdict", however small its p.

One implementation for the study's eval stage, ``flopmatch compare RUN`` and the Python API
(:func:`compare_run`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from flopmatch import paired
from flopmatch.errors import FlopmatchError
from flopmatch.store import RunDir, read_json, read_table, write_table, write_text
from flopmatch.store.queries import read_metrics
from flopmatch.store.schemas import COMPARISON_COLUMNS


class ComparisonError(FlopmatchError, ValueError):
    """The eval stage's results cannot be compared: a missing column, models evaluated on different
    problems, a training seed the run does not have."""


class EvaluationMissing(FlopmatchError, FileNotFoundError):
    """An evaluation file (or the paradigm table) the comparison reads is not there yet."""

#: comparison -> (treatment data kind, baseline data kind, words when treatment wins, when it loses)
COMPARISONS: dict[str, tuple[str, str, str, str]] = {
    "wc_vs_se": ("wc", "se", "WC data better", "SE data better"),
    "number_matched_vs_se": ("wc_number_matched", "se", "number-matched WC data better", "SE data better"),
    "wc_vs_number_matched": ("wc", "wc_number_matched", "compute-matched WC data better",
                             "number-matched WC data better"),
    "wc_vs_base": ("wc", "base", "fine-tuning on WC data helps", "fine-tuning on WC data hurts"),
    "se_vs_base": ("se", "base", "fine-tuning on SE data helps", "fine-tuning on SE data hurts"),
}  # fmt: skip
#: Allocated data (``paradigms.allocations``; kinds ``<role>_<policy>``, flopmatch.allocation_study): the
#: policy's data against uniform data of the same model at the same FLOPs, and WC against SE under the policy.
ALLOCATION_COMPARISONS: dict[str, tuple[str, str, str, str]] = {
    name: sides
    for policy, words in (("adaptive", "adaptive"), ("until_correct", "until-correct"))
    for name, sides in (
        (f"{policy}_vs_uniform", (f"wc_{policy}", "wc", f"{words} WC data better", "uniform WC data better")),
        (f"se_{policy}_vs_uniform", (f"se_{policy}", "se", f"{words} SE data better", "uniform SE data better")),
        (f"wc_vs_se_{policy}", (f"wc_{policy}", f"se_{policy}", f"WC data better ({words})",
                                f"SE data better ({words})")),
    )
}  # fmt: skip
COMPARISONS.update(ALLOCATION_COMPARISONS)
#: Metrics compared (``sample_accuracy`` is maj@1 under another name).
SKIP_METRICS = ("sample_accuracy",)
CORRECTION = "Holm over paradigms × budgets, per comparison and metric"

COLUMNS = COMPARISON_COLUMNS  # the table's columns (store.schemas); the old name stays importable


class CompareSettings(BaseModel):
    """Resampling settings of :func:`comparison_table`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    n_boot: int = Field(2000, ge=1, description="bootstrap resamples of the test problems")
    n_perm: int = Field(10000, ge=1, description="sign-flip permutations of the paired test")
    seed: int = 0
    alpha: float = Field(paired.ALPHA, gt=0, lt=1, description="the test's level (two-sided)")
    power: float = Field(paired.POWER, gt=0, lt=1, description="the power the minimum detectable effect is for")


# --------------------------------------------------------------------------- per-problem values


def per_problem_values(eval_path: str | Path) -> pd.DataFrame:
    """One row per test problem (index ``problem_id``), one column per metric, from a saved evaluation
    (``evals/<name>.parquet``; k values from its ``.json`` summary, as the evaluation computed them)."""
    from flopmatch.evaluation import DEFAULT_KS, problem_metrics

    path = Path(eval_path)
    if not path.exists():
        raise EvaluationMissing("no such evaluation file (the eval stage writes it)", file=path)
    columns = ["problem_id", "mode", "sample_idx", "status", "extracted"]
    frame = read_table(path, columns=columns).to_pandas()
    summary = path.with_suffix(".json")
    ks = DEFAULT_KS
    if summary.exists():
        ks = tuple((read_json(summary).get("config") or {}).get("ks") or DEFAULT_KS)
    rows = {}
    for problem_id, group in frame.groupby("problem_id", sort=True):
        greedy = group[group["mode"] == "greedy"]["status"]
        samples = group[group["mode"] == "sample"].sort_values("sample_idx")
        rows[problem_id] = problem_metrics(
            greedy.iloc[0] if len(greedy) else None,
            list(zip(samples["status"], samples["extracted"], strict=True)),
            ks,
        )
    return pd.DataFrame.from_dict(rows, orient="index").sort_index()


# --------------------------------------------------------------------------- the table


def comparison_table(
    paradigms: pd.DataFrame,
    load: Callable[[str], pd.DataFrame],
    settings: CompareSettings | None = None,
    *,
    comparisons: tuple[str, ...] = tuple(COMPARISONS),
) -> pd.DataFrame:
    """Every comparison of :data:`COMPARISONS` at every paradigm × budget × metric of ``paradigms`` (the
    rows of ``metrics/paradigms.parquet``: paradigm, budget_se_samples, data, model_name, seed, metric).

    ``load(model_name)`` returns that model's :func:`per_problem_values`. Returns :data:`COLUMNS`: ``wc``
    and ``se`` hold the treatment's and the baseline's means (WC and SE data in ``wc_vs_se``), ``diff``
    = wc − se, all as proportions; ``mde`` too, ``mde_relative`` in % of the baseline.
    """
    settings = settings or CompareSettings()
    _check_columns(paradigms)
    cache: dict[str, pd.DataFrame] = {}

    def values(name: str) -> pd.DataFrame:
        if name not in cache:
            cache[name] = load(name)
        return cache[name]

    rows: list[dict[str, Any]] = []
    for (paradigm, budget), group in paradigms.groupby(["paradigm", "budget_se_samples"], sort=True):
        models = _models_by_kind(group)
        for comparison in comparisons:
            treatment, baseline, better, worse = COMPARISONS[comparison]
            if treatment not in models or baseline not in models:
                continue
            sides = {kind: [values(name) for name in models[kind]] for kind in (treatment, baseline)}
            problems = _common_problems(sides, paradigm, int(budget))
            metrics = [m for m in sides[treatment][0].columns if m not in SKIP_METRICS
                       and all(m in v.columns for side in sides.values() for v in side)]  # fmt: skip
            for metric in metrics:
                a, b = (np.vstack([v.loc[problems, metric].to_numpy(float) for v in sides[kind]])
                        for kind in (treatment, baseline))  # fmt: skip
                result = paired.compare_paired(
                    a, b, n_boot=settings.n_boot, n_perm=settings.n_perm, seed=settings.seed,
                    alpha=settings.alpha, power=settings.power,
                )  # fmt: skip
                # a base model has no training seed: the trained side's seeds decide what can be claimed
                seeds = a.shape[0] if baseline == "base" else result.seeds
                row = _row(group, paradigm, int(budget), metric, comparison, result, seeds, better, worse)
                rows.append({**row, **seed_noise(a, b)})
    table = pd.DataFrame(rows, columns=[*COLUMNS, "better_words", "worse_words"])
    return _adjust_and_judge(table, settings.alpha)


def seed_noise(*sides: np.ndarray) -> dict[str, float]:
    """How much training seeds disagree, over the sides with ≥ 2 seeds (NaN without any): the share of
    problems two seeds of one recipe answer differently (0/1 metrics; mean absolute difference
    otherwise) and the sd of a seed's global score shift (:func:`flopmatch.paired.seed_shift_variance`).
    ``flopmatch study --dry-run`` plans the next study's MDE with them."""
    seeded = [m for m in sides if m.shape[0] > 1]
    if not seeded:
        return {"seed_discordance": float("nan"), "seed_sd": float("nan")}
    disagreement = [np.abs(m[:, None, :] - m[None, :, :]).sum(axis=(0, 1)).mean() / (m.shape[0] * (m.shape[0] - 1))
                    for m in seeded]  # fmt: skip
    shift = [paired.seed_shift_variance(m) for m in seeded]
    return {"seed_discordance": float(np.mean(disagreement)), "seed_sd": float(np.sqrt(np.mean(shift)))}


def _check_columns(paradigms: pd.DataFrame) -> None:
    missing = {"paradigm", "budget_se_samples", "data", "model_name", "metric"} - set(paradigms.columns)
    if missing:
        raise ComparisonError(f"missing column(s) {sorted(missing)} (rebuild it with the eval stage)",
                              file="paradigms.parquet")  # fmt: skip


def _models_by_kind(group: pd.DataFrame) -> dict[str, list[str]]:
    """data kind -> its evaluation names, one per training seed (seed order)."""
    out: dict[str, list[str]] = {}
    seeds = group["seed"] if "seed" in group.columns else pd.Series([None] * len(group), index=group.index)
    pairs = sorted({(str(d), -1 if pd.isna(s) else int(s), str(n))
                    for d, s, n in zip(group["data"], seeds, group["model_name"], strict=True)})  # fmt: skip
    for kind, _, name in pairs:
        out.setdefault(kind, []).append(name)
    return out


def _common_problems(sides: dict[str, list[pd.DataFrame]], paradigm: str, budget: int) -> list[Any]:
    """The problems every model of the comparison was evaluated on (they must be the same set)."""
    sets = [set(v.index) for side in sides.values() for v in side]
    common = set.intersection(*sets)
    if any(s != common for s in sets):
        raise ComparisonError(
            f"{paradigm} at budget {budget}: the models were evaluated on different test problems "
            f"({sorted(len(s) for s in sets)} problems); a paired comparison needs the same ones (rerun the eval stage)"
        )
    return sorted(common)


def _row(group: pd.DataFrame, paradigm: str, budget: int, metric: str, comparison: str,
         result: paired.PairedComparison, seeds: int, better: str, worse: str) -> dict[str, Any]:  # fmt: skip
    treatment, baseline = COMPARISONS[comparison][:2]
    return {
        "paradigm": paradigm,
        "budget_se_samples": budget,
        "wc_samples": int(group["wc_samples"].iloc[0]) if "wc_samples" in group else None,
        "student": str(group["student"].iloc[0]) if "student" in group else "",
        "metric": metric,
        "comparison": comparison,
        "treatment": treatment,
        "baseline": baseline,
        "se": result.baseline,
        "wc": result.treatment,
        "diff": result.diff,
        "ci_low": result.ci_low,
        "ci_high": result.ci_high,
        "test": result.test,
        "p_value": result.p_value,
        "seeds": int(seeds),
        "test_problems": result.problems,
        "discordance": result.discordance,
        "mde": result.mde,
        "mde_relative": result.mde / result.baseline * 100 if result.baseline > 0 else float("nan"),
        "better_words": better,
        "worse_words": worse,
    }


def _adjust_and_judge(table: pd.DataFrame, alpha: float) -> pd.DataFrame:
    table["p_adjusted"] = np.nan
    for _, index in table.groupby(["comparison", "metric"], sort=False).groups.items():
        table.loc[index, "p_adjusted"] = paired.holm(table.loc[index, "p_value"].to_numpy(float))
    table["verdict"] = [
        paired.verdict(r.diff, r.ci_low, r.ci_high, r.p_adjusted, r.seeds, r.mde, better=r.better_words,
                       worse=r.worse_words, alpha=alpha)  # fmt: skip
        for r in table.itertuples()
    ]
    return table.drop(columns=["better_words", "worse_words"])[COLUMNS].reset_index(drop=True)


# --------------------------------------------------------------------------- a run


def compare_run(run_dir: str | Path, settings: CompareSettings | None = None, *, write: bool = True,
                training_seeds: Sequence[int] | None = None) -> pd.DataFrame:  # fmt: skip
    """The comparison table of a run from ``metrics/paradigms.parquet`` and ``evals/*.parquet``; written
    to ``metrics/comparisons.parquet`` and ``.md`` unless ``write`` is false. ``training_seeds`` keeps only
    those seeds' students (what fewer seeds would have concluded); such a table is never written."""
    run = RunDir(run_dir)
    path = run.metrics_path("paradigms")
    paradigm_table = read_metrics(run, "paradigms")
    if paradigm_table is None:
        raise EvaluationMissing("no paradigm results yet (run the study's eval stage)", file=path)
    paradigms = paradigm_table.to_pandas()
    if training_seeds is not None:
        if "seed" not in paradigms.columns:
            raise ComparisonError("no seed column (a run from before training seeds: one seed only)", file=path)
        known = set(paradigms["seed"].dropna().astype(int))
        if set(training_seeds) - known:
            raise ComparisonError(f"no training seed {sorted(set(training_seeds) - known)}; the run has {sorted(known)}",
                                  file=path)  # fmt: skip
        paradigms = paradigms[paradigms["seed"].isna() | paradigms["seed"].isin(list(training_seeds))]
        write = False
    table = comparison_table(paradigms, lambda name: per_problem_values(run.eval_path(name)), settings)
    if write:
        write_comparisons(run, table)
    return table


def write_comparisons(run: RunDir, table: pd.DataFrame) -> tuple[Path, Path]:
    """``metrics/comparisons.parquet`` and ``metrics/comparisons.md`` (an empty table keeps its columns)."""
    import pyarrow as pa

    parquet = write_table(pa.Table.from_pandas(table, preserve_index=False), run.metrics_path("comparisons"))
    return parquet, write_text(comparisons_markdown(table), run.metrics_path("comparisons", ".md"))


# --------------------------------------------------------------------------- words


PARADIGM_NAMES = {
    "knowledge_distillation": "knowledge distillation",
    "self_improvement": "WC self-improvement",
    "weak_to_strong": "weak-to-strong",
}


def pts(value: float, signed: bool = True) -> str:
    """A proportion difference in points: "+3.5 pts"."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value * 100:+.1f}" if signed else f"{value * 100:.1f}"


def fmt_p(p: float) -> str:
    if p is None or math.isnan(p):
        return "–"
    return "< 0.001" if p < 0.001 else f"{p:.3f}" if p < 0.01 else f"{p:.2f}"


def comparisons_markdown(table: pd.DataFrame) -> str:
    """The table as markdown, with how it was computed."""
    lines = [
        "# Paired comparisons of the fine-tuned students",
        "",
        "Differences are treatment − baseline on the same test problems, in points, averaged over training "
        "seeds; 95% intervals are paired bootstraps over problems, plus the seed-level shift of the scores with ≥ 2 "
        "seeds (two-level). p: McNemar's exact test for greedy pass@1 with one seed, else a sign-flip permutation test on "
        f"the per-problem seed means. Adjusted p: {CORRECTION}. MDE: the difference detectable with 80% power "
        "at α = 0.05 (2.80 × the bootstrap standard error). A difference seen with one seed is never a verdict.",
        "",
        "| paradigm | budget (SE) | metric | comparison | baseline | treatment | difference [95% CI] | p | p (Holm) "
        "| seeds | problems | MDE (pts, rel.) | verdict |",
        "|---|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in table.itertuples():
        lines.append(
            f"| {PARADIGM_NAMES.get(r.paradigm, r.paradigm)} | {r.budget_se_samples} | {r.metric} | {r.comparison} "
            f"| {r.baseline} {pts(r.se, False)}% | {r.treatment} {pts(r.wc, False)}% "
            f"| {pts(r.diff)} [{pts(r.ci_low)}, {pts(r.ci_high)}] | {fmt_p(r.p_value)} | {fmt_p(r.p_adjusted)} "
            f"| {r.seeds} | {r.test_problems} | {pts(r.mde, False)} ({r.mde_relative:.0f}%) | {r.verdict} |"
        )
    if table.empty:
        lines.append("| (no fine-tuned pair to compare) |||||||||||||")
    return "\n".join(lines) + "\n"


def verdict_sentence(row: Any, budget_label: str) -> str:
    """One line of the report's verdict for a comparison row."""
    name = PARADIGM_NAMES.get(row.paradigm, row.paradigm)
    seeds = f"{row.seeds} seed{'s' * (row.seeds != 1)}"
    detail = (
        f"{row.metric} {pts(row.se, False)}% → {pts(row.wc, False)}%, {pts(row.diff)} pts "
        f"[{pts(row.ci_low)}, {pts(row.ci_high)}], Holm p {fmt_p(row.p_adjusted)}, {seeds}, {row.test_problems} problems"
    )
    return f"{name} at {budget_label}: **{row.verdict}** ({detail})."


def forest_plot(table: pd.DataFrame, path: Path, *, metric: str = "pass@1",
                comparisons: tuple[str, ...] = ("wc_vs_se", "number_matched_vs_se", *ALLOCATION_COMPARISONS),
                label: Callable[[Any], str] | None = None) -> Path | None:  # fmt: skip
    """Difference and 95% interval per paradigm × budget (one marker per comparison), in points, with
    the MDE as a shaded band around 0; filled markers are verdicts, hollow ones are not."""
    rows = table[(table["metric"] == metric) & table["comparison"].isin(comparisons)]
    if rows.empty:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = list(dict.fromkeys(zip(rows["paradigm"], rows["budget_se_samples"], strict=True)))
    fig, ax = plt.subplots(figsize=(8.0, 0.42 * len(rows) + 0.3 * len(groups) + 1.4), dpi=120)
    colors = {"wc_vs_se": "#2f6fb0", "number_matched_vs_se": "#7f7f7f", "wc_vs_number_matched": "#9467bd",
              "adaptive_vs_uniform": "#2ca02c", "se_adaptive_vs_uniform": "#d62728", "wc_vs_se_adaptive": "#17becf"}
    short = {"wc_vs_se": "WC vs SE", "number_matched_vs_se": "number-matched vs SE",
             "wc_vs_number_matched": "WC vs number-matched", "adaptive_vs_uniform": "adaptive vs uniform WC",
             "se_adaptive_vs_uniform": "adaptive vs uniform SE", "wc_vs_se_adaptive": "WC vs SE (adaptive)"}  # fmt: skip
    ticks, labels, y = [], [], 0.0
    for paradigm, budget in groups:
        for comparison in comparisons:
            match = rows[(rows["paradigm"] == paradigm) & (rows["budget_se_samples"] == budget)
                         & (rows["comparison"] == comparison)]  # fmt: skip
            if match.empty:
                continue
            r, color = match.iloc[0], colors.get(comparison, "#333")
            decided = r["verdict"] in (COMPARISONS[comparison][2], COMPARISONS[comparison][3])
            ax.fill_betweenx([y - 0.3, y + 0.3], -r["mde"] * 100, r["mde"] * 100, color="#e3e3e3", lw=0, zorder=0)
            ax.plot([r["ci_low"] * 100, r["ci_high"] * 100], [y, y], color=color, lw=2)
            ax.plot(r["diff"] * 100, y, "o", color=color, ms=7, mfc=color if decided else "white")
            name = label(r) if label else f"{PARADIGM_NAMES.get(paradigm, paradigm)}, SE {budget}"
            ticks.append(y)
            labels.append(f"{name} · {short.get(comparison, comparison)}")
            y -= 1.0
        y -= 0.5  # a gap between paradigm × budget groups
    ax.axvline(0, color="#333", lw=0.8)
    ax.set_yticks(ticks, labels, fontsize=8)
    ax.set_xlabel(f"{metric} difference, treatment − baseline (points)")
    ax.set_title("95% paired intervals; filled: a verdict, hollow: none; grey: ± MDE (80% power)", fontsize=8,
                 loc="left")  # fmt: skip
    ax.spines[["top", "right"]].set_visible(False)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


# --------------------------------------------------------------------------- the report's pieces


def verdict_lines(table: pd.DataFrame | None, budget_label: Callable[[int], str], *, metric: str = "pass@1") -> list[str]:
    """The report's verdict lines: WC data vs SE data per budget and paradigm, then the number-matched
    control the same way (``budget_label(se_samples)`` names a budget)."""
    if table is None or table.empty:
        return []
    metric = metric if metric in set(table["metric"]) else str(table["metric"].iloc[0])
    lines = []
    for comparison, lead in (("wc_vs_se", "Paired, WC data vs SE data"),
                             ("number_matched_vs_se", "Number-matched control vs SE data")):  # fmt: skip
        rows = table[(table["comparison"] == comparison) & (table["metric"] == metric)]
        for r in rows.sort_values(["budget_se_samples", "paradigm"]).itertuples():
            lines.append(f"{lead}: " + verdict_sentence(r, budget_label(int(r.budget_se_samples))))
    return lines


def report_table(table: pd.DataFrame, budget_label: Callable[[int], str], *, metric: str = "pass@1",
                 comparisons: tuple[str, ...] = ("wc_vs_se", "number_matched_vs_se", "wc_vs_number_matched",
                                                 *ALLOCATION_COMPARISONS, "wc_vs_base", "se_vs_base"),
                 ) -> tuple[list[str], list[list[str]]]:  # fmt: skip
    """(columns, rows) of the report's paired-comparison table for one metric."""
    columns = ["paradigm", "budget (SE vs WC)", "comparison", "baseline", "treatment", "difference [95% CI]",
               "p (Holm)", "seeds", "MDE (pts, rel.)", "verdict"]  # fmt: skip
    rows = []
    shown = table[(table["metric"] == metric) & table["comparison"].isin(comparisons)]
    order = {c: i for i, c in enumerate(comparisons)}
    shown = shown.assign(_order=shown["comparison"].map(order)).sort_values(["paradigm", "budget_se_samples", "_order"])
    for r in shown.itertuples():
        rows.append([
            PARADIGM_NAMES.get(r.paradigm, r.paradigm), budget_label(int(r.budget_se_samples)),
            r.comparison.replace("_", " "), f"{r.baseline.replace('_', ' ')} {pts(r.se, False)}%",
            f"{r.treatment.replace('_', ' ')} {pts(r.wc, False)}%", f"{pts(r.diff)} [{pts(r.ci_low)}, {pts(r.ci_high)}]",
            fmt_p(r.p_adjusted), str(r.seeds), f"{pts(r.mde, False)} ({r.mde_relative:.0f}%)", f"**{r.verdict}**",
        ])  # fmt: skip
    return columns, rows
