"""Metrics of unequal sample counts: what a model's data holds at the FLOPs it spent, not at k.

Under an allocation policy (``flopmatch.allocation``) problems have different numbers of samples, so
"coverage at k samples per problem" is undefined for most k. What is defined, and what these tables
report for every graded model of a run (uniform ones too, for comparison):

* ``metrics/allocation.parquet`` / ``.md`` — per model: the policy, samples per problem (min, quartiles,
  max), coverage (a problem with at least one correct sample) and unique correct solutions per problem
  over *all* its samples, with percentile-bootstrap intervals over problems, and the nominal FLOPs
  spent (2·P·completion tokens, P from the ledger) — coverage and unique correct per FLOP;
* ``metrics/allocation_curve.parquet`` — coverage and unique correct against FLOPs spent: round by
  round for a policy run (its journal records them as rounds finish), sample index by sample index
  (every problem's i-th sample, in breadth-first order) for a uniform run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from flopmatch.store import RunDir, as_run, model_key, read_json, write_table, write_text
from flopmatch.store.queries import sample_tokens
from flopmatch.store.schemas import ALLOCATION_COLUMNS, ALLOCATION_COUNT_COLUMNS, ALLOCATION_CURVE_COLUMNS


def journal_of(run: RunDir, model: str) -> dict[str, Any] | None:
    """The allocation journal of a model sampled by a policy, or None (plain S-per-problem sampling)."""
    path = run.allocation_journal_path(model)
    return read_json(path) if path.exists() else None


def _params(run: RunDir, model: str) -> float | None:
    from flopmatch.ledger import read_ledger

    table = read_ledger(run.root)
    if table.num_rows == 0:
        return None
    rows = [r for r in table.select(["model_key", "params"]).to_pylist() if r["model_key"] == model_key(model)]
    values = [r["params"] for r in rows if r["params"]]
    return float(values[0]) if values else None


def allocation_tables(run_dir: str | Path | RunDir, data: dict[str, Any], *, n_boot: int = 1000,
                      seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:  # fmt: skip
    """Per-model summary and coverage-vs-FLOPs curve; ``data``: ``analysis.ModelSamples`` by model."""
    from flopmatch.metrics import bootstrap_mean_cis

    run = as_run(run_dir)
    rows, curve = [], []
    for model, samples in data.items():
        journal = journal_of(run, model)
        config = (journal or {}).get("config", {})
        pids = sorted(samples.problems)
        counts = np.array([len(samples.problems[p].idx) for p in pids], float)
        covered = np.array([samples.problems[p].correct.any() for p in pids], float)
        unique = np.array([len({x for x in samples.problems[p].norms if x is not None}) for p in pids], float)
        lo, hi = bootstrap_mean_cis(np.column_stack([covered, unique]), n_boot=n_boot, seed=seed)
        tokens = sample_tokens(run, model)
        p_total = _params(run, model)
        flops = 2.0 * p_total * sum(tokens.values()) if p_total and tokens else None
        q = np.percentile(counts, [0, 25, 50, 75, 100]) if len(counts) else [0] * 5
        rows.append({
            "model": model, "allocation": config.get("allocation", "uniform"),
            "objective": config.get("objective") if journal else None, "rounds": (journal or {}).get("rounds"),
            "problems": len(pids), "samples": int(counts.sum()), "samples_min": q[0], "samples_q25": q[1],
            "samples_median": q[2], "samples_q75": q[3], "samples_max": q[4],
            "coverage": covered.mean(), "coverage_low": lo[0], "coverage_high": hi[0],
            "unique_per_problem": unique.mean(), "unique_low": lo[1], "unique_high": hi[1], "flops": flops,
            "coverage_per_pflop": covered.mean() / (flops / 1e15) if flops else None,
            "unique_per_pflop": unique.mean() / (flops / 1e15) if flops else None,
        })  # fmt: skip
        curve += _curve(model, samples, journal, tokens, p_total)
    return pd.DataFrame(rows, columns=ALLOCATION_COLUMNS), pd.DataFrame(curve, columns=ALLOCATION_CURVE_COLUMNS)


def per_problem_counts(model: str, allocation: str, samples: Any) -> pd.DataFrame:
    """One row per problem: its samples, correct ones and distinct correct ones (``samples``: an
    ``analysis.ModelSamples``) — the distribution a policy's samples per problem take."""
    rows = [{"model": model, "allocation": allocation, "problem_id": pid, "samples": len(p.idx),
             "correct": int(p.correct.sum()), "unique_correct": len({x for x in p.norms if x is not None})}
            for pid, p in sorted(samples.problems.items())]  # fmt: skip
    return pd.DataFrame(rows, columns=ALLOCATION_COUNT_COLUMNS)


def _curve(model, samples, journal, tokens, p_total) -> list[dict[str, Any]]:
    n_problems = max(len(samples.problems), 1)
    if journal is not None:
        return [{"model": model, "allocation": journal["config"]["allocation"], "point": h["round"],
                 "flops": h.get("flops"), "samples": h["samples_on_disk"], "coverage": h.get("covered", 0) / n_problems,
                 "unique_per_problem": h.get("unique_correct", 0) / n_problems} for h in journal.get("history", [])]  # fmt: skip
    out, spent, n = [], 0, 0
    depth = max((len(p.idx) for p in samples.problems.values()), default=0)
    for i in range(depth):  # breadth-first: every problem's i-th sample, then the (i+1)-th
        covered = unique = 0
        for pid, p in samples.problems.items():
            keep = p.idx <= i
            spent += tokens.get((pid, i), 0) if (p.idx == i).any() else 0
            n += int((p.idx == i).any())
            covered += bool((p.correct & keep).any())
            unique += len({x for x, k in zip(p.norms, keep, strict=True) if k and x is not None})
        out.append({"model": model, "allocation": "uniform", "point": i + 1, "flops": 2.0 * p_total * spent if p_total and tokens else None,
                    "samples": n, "coverage": covered / n_problems, "unique_per_problem": unique / n_problems})  # fmt: skip
    return out


def allocation_markdown(table: pd.DataFrame) -> str:
    """The summary as a markdown table (what the report embeds)."""
    lines = [
        "| model | policy | samples per problem (min / q25 / median / q75 / max) | coverage [95% CI] | "
        "unique correct per problem [95% CI] | FLOPs |",
        "|---|---|---|---|---|---|",
    ]
    for r in table.to_dict("records"):
        policy = r["allocation"] + (f" ({r['objective']})" if r["allocation"] == "adaptive" and r["objective"] else "")
        dist = " / ".join(f"{r[c]:g}" for c in ("samples_min", "samples_q25", "samples_median", "samples_q75", "samples_max"))
        flops = f"{r['flops']:.3g}" if r["flops"] == r["flops"] and r["flops"] is not None else "-"
        lines.append(f"| {r['model']} | {policy} | {dist} | {r['coverage']:.3f} [{r['coverage_low']:.3f}, "
                     f"{r['coverage_high']:.3f}] | {r['unique_per_problem']:.2f} [{r['unique_low']:.2f}, "
                     f"{r['unique_high']:.2f}] | {flops} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def write_allocation_metrics(run: RunDir, data: dict[str, Any], *, n_boot: int = 1000, seed: int = 0,
                             plots: bool = True) -> dict[str, Path]:  # fmt: skip
    """Write the tables (and a coverage-vs-FLOPs figure) into ``metrics/``; returns the paths."""
    table, curve = allocation_tables(run, data, n_boot=n_boot, seed=seed)
    counts = [per_problem_counts(m, ((journal_of(run, m) or {}).get("config") or {}).get("allocation", "uniform"), s)
              for m, s in data.items()]  # fmt: skip
    counts_table = pd.concat(counts, ignore_index=True) if counts else pd.DataFrame(columns=ALLOCATION_COUNT_COLUMNS)
    return write_allocation_outputs(run, table, curve, counts_table, plots=plots)


def write_allocation_outputs(run: RunDir, table: pd.DataFrame, curve: pd.DataFrame,
                             counts: pd.DataFrame | None = None, *, plots: bool = True) -> dict[str, Path]:  # fmt: skip
    """``metrics/allocation.parquet|md``, ``allocation_curve.parquet``, ``allocation_counts.parquet`` (samples
    per problem), the coverage- and unique-vs-FLOPs figure and, when some policy is not uniform, the
    distribution of samples per problem."""
    files = {
        "allocation": write_table(table, run.metrics_path("allocation")),
        "allocation_curve": write_table(curve, run.metrics_path("allocation_curve")),
        "allocation_md": write_text(allocation_markdown(table), run.metrics_path("allocation", ".md")),
    }
    if counts is not None:
        files["allocation_counts"] = write_table(counts, run.metrics_path("allocation_counts"))
    if plots and not curve.empty and curve["flops"].notna().any():
        files["allocation_figure"] = _figure(curve, run.figures_dir / "coverage_vs_flops.png")
    if plots and counts is not None and not counts.empty and (counts["allocation"] != "uniform").any():
        files["samples_figure"] = _counts_figure(counts, run.figures_dir / "samples_per_problem.png")
    return files


def _counts_figure(counts: pd.DataFrame, path: Path) -> Path:
    """Per model and policy: the share of problems with at most x samples (uniform: a step at S)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for (model, allocation), group in counts.groupby(["model", "allocation"], sort=True):
        x = np.sort(group["samples"].to_numpy())
        ax.step(x, np.arange(1, len(x) + 1) / len(x), where="post", label=f"{model} — {allocation}")
    ax.set_xscale("symlog", linthresh=1)
    ax.set_xlabel("samples of a problem")
    ax.set_ylabel("share of problems with at most that many")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _figure(curve: pd.DataFrame, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    curve = curve.assign(flops=pd.to_numeric(curve["flops"], errors="coerce"))
    for (model, allocation), group in curve.groupby(["model", "allocation"], sort=True):
        for ax, column in zip(axes, ("coverage", "unique_per_problem"), strict=True):
            ax.plot(group["flops"], group[column], marker=".", label=f"{model} — {allocation}")
    for ax, label in zip(axes, ("coverage (problems with a correct sample)", "unique correct solutions per problem"),
                         strict=True):  # fmt: skip
        ax.set_xscale("log")
        ax.set_xlabel("nominal FLOPs spent (2·P·tokens)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
