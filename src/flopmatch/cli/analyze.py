"""`flopmatch analyze`: coverage@k, diversity@k and FPR tables and plots for a run (into RUN/metrics)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from flopmatch.cli._app import app, console, warn
from flopmatch.cli.inputs import QuietOption, parse_ks


@app.command("analyze")
def analyze_command(
    run: Annotated[Path, typer.Argument(help="the run directory", exists=True, file_okay=False)],
    k: Annotated[str | None, typer.Option("--k", help="k values, e.g. 1,4,16 (default: powers of 2 and S)")] = None,
    n_boot: Annotated[int, typer.Option("--n-boot", min=1, help="bootstrap resamples of problems")] = 1000,
    seed: Annotated[int, typer.Option(help="bootstrap seed")] = 0,
    judge: Annotated[str | None, typer.Option(help="use this judge's verdicts when several judged the run")] = None,
    plots: Annotated[bool, typer.Option(help="draw figures")] = True,
    quiet: QuietOption = False,
) -> None:
    """Write metrics/summary.parquet|md, coverage/diversity curves, compute_matched.parquet|md and
    figures/*.png for a graded run."""
    from flopmatch.analysis import analyze

    result = analyze(run, ks=None if k is None else parse_ks(k), n_boot=n_boot, seed=seed, judge=judge, plots=plots)
    for line in result.headline:
        console.print(f"[bold]{line}[/]")
    for warning in result.warnings:
        warn(warning)
    for name, path in result.files.items():
        console.print(f"{name}: {path}")
    for path in result.figures:
        console.print(f"figure: {path}")
