"""`flopmatch compare`: paired comparisons of a run's fine-tuned students (metrics/comparisons.parquet|md)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from flopmatch.cli._app import app, console, fail
from flopmatch.cli.inputs import QuietOption
from flopmatch.cli.tables import print_table


@app.command("compare")
def compare_command(
    run: Annotated[Path, typer.Argument(help="the run directory (after the study's eval stage)", exists=True,
                                        file_okay=False)],  # fmt: skip
    metric: Annotated[
        list[str] | None, typer.Option("--metric", help="show only this metric (repeatable); all are written")
    ] = None,
    comparison: Annotated[
        list[str] | None,
        typer.Option("--comparison", help="show only this comparison (repeatable): wc_vs_se, number_matched_vs_se, "
                     "wc_vs_number_matched, wc_vs_base, se_vs_base"),
    ] = None,
    n_boot: Annotated[int, typer.Option("--n-boot", min=100, help="bootstrap resamples (problems and seeds)")] = 2000,
    n_perm: Annotated[int, typer.Option("--n-perm", min=100, help="sign-flip permutations")] = 10000,
    seed: Annotated[int, typer.Option(help="resampling seed")] = 0,
    training_seed: Annotated[
        list[int] | None,
        typer.Option("--training-seed", help="use only this training seed's students (repeatable): what fewer "
                     "seeds would have concluded; never written"),
    ] = None,
    write: Annotated[bool, typer.Option("--write/--no-write", help="write metrics/comparisons.parquet|md")] = True,
    as_json: Annotated[bool, typer.Option("--json", help="print the rows as JSON")] = False,
    quiet: QuietOption = False,
) -> None:
    """Compare the students trained on WC data and on SE data (and the other pairs) problem by problem.

    Each row: the difference in points averaged over training seeds, its 95% paired interval (problems
    and seeds resampled together), McNemar's exact p for greedy pass@1 with one seed (else a sign-flip
    permutation test), Holm-adjusted p, the minimum detectable effect (80% power) and the verdict. A
    difference seen with one training seed is never a verdict: add `training.seeds: [0, 1, 2]`.

    Example: `flopmatch compare runs/toyworld --metric pass@1 --comparison wc_vs_se`
    """
    from flopmatch.comparisons import COMPARISONS, CompareSettings, compare_run, fmt_p, pts

    unknown = sorted(set(comparison or []) - set(COMPARISONS))
    if unknown:
        raise fail(f"--comparison {unknown[0]!r} is not one of {', '.join(COMPARISONS)}")
    table = compare_run(run, CompareSettings(n_boot=n_boot, n_perm=n_perm, seed=seed), write=write,
                        training_seeds=training_seed)  # fmt: skip
    shown = table
    if metric:
        missing = sorted(set(metric) - set(table["metric"]))
        if missing:
            raise fail(f"--metric {missing[0]!r}: the run has {', '.join(sorted(set(table['metric'])))}")
        shown = shown[shown["metric"].isin(metric)]
    if comparison:
        shown = shown[shown["comparison"].isin(comparison)]
    if as_json:
        records = shown.astype(object).where(shown.notna(), None).to_dict("records")  # NaN is not JSON: null
        console.print_json(json.dumps(records, default=str))
        return
    short = {"knowledge_distillation": "kd", "self_improvement": "si", "weak_to_strong": "w2s"}
    columns = ["paradigm", "budget", "metric", "comparison", "baseline → treatment", "diff [95% CI]", "p", "seeds",
               "MDE", "verdict"]
    rows = [
        [short.get(r.paradigm, r.paradigm), str(r.budget_se_samples), r.metric, r.comparison,
         f"{pts(r.se, False)} → {pts(r.wc, False)}", f"{pts(r.diff)} [{pts(r.ci_low)}, {pts(r.ci_high)}]",
         fmt_p(r.p_adjusted), str(r.seeds), pts(r.mde, False), r.verdict]
        for r in shown.itertuples()
    ]  # fmt: skip
    print_table(columns, rows, keys={"paradigm", "budget", "metric", "comparison"},
                right={"baseline → treatment", "diff [95% CI]", "p", "seeds", "MDE"},
                caption="kd: knowledge distillation, si: WC self-improvement, w2s: weak-to-strong; points; p: Holm")
    if write and not training_seed:
        console.print(f"written: {Path(run) / 'metrics' / 'comparisons.parquet'} (and .md)")
