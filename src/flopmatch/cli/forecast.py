"""`flopmatch forecast`: coverage@k and unique correct solutions at large k, forecast from a pilot."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from flopmatch.cli._app import app, console, fail
from flopmatch.cli.inputs import parse_ks
from flopmatch.cli.tables import print_table

DEFAULT_K = "1,3,10,30,100,1000"


def _interval(value: float | None, low: float | None, high: float | None, digits: int, pct: bool) -> str:
    if value is None:
        return "—"
    scale = 100 if pct else 1
    text = f"{value * scale:.{digits}f}"
    if low is not None and high is not None:
        text += f" [{low * scale:.{digits}f}, {high * scale:.{digits}f}]"
    return text


def _plain(value: float | None, digits: int, pct: bool) -> str:
    return "—" if value is None else f"{value * (100 if pct else 1):.{digits}f}"


def _span_line(fc, intervals: str, nats: float) -> str | None:
    """Which families the 95% intervals span (None when the forecast does not say)."""
    families = list(fc.interval_families)
    if not families:
        return None
    if intervals == "refit":
        return f"intervals: {families[0]} alone (--intervals refit)"
    if len(families) == 1:
        return f"intervals: {families[0]} alone (no other family within {nats:g} nats of held-out log-likelihood)"
    return (f"intervals span: {', '.join(families)} (held-out log-likelihood within {nats:g} nats of the "
            f"best; --intervals refit: {families[0]} alone)")


def _print_table(forecasts, intervals: str = "families") -> None:
    from flopmatch.forecast import ENVELOPE_NATS

    for fc in forecasts:
        fit = fc.fit
        params = ", ".join(f"{k}={v:.3g}" for k, v in fit.params.items())
        title = (f"{fc.model or 'counts'}: {fc.problems} problems × {fc.pilot_samples:g} pilot samples"
                 + (" (forecast for these problems)" if fc.target == "pilot" else "") + " — "
                 f"{fit.family} ({params})")
        if fc.unique_fit is not None:
            title += f", unique: Pitman-Yor θ={fc.unique_fit.theta:.3g}, d={fc.unique_fit.discount:.3g}"
        if fc.measured_samples is not None:
            title += f"; measured: unbiased from S={fc.measured_samples} samples on {fc.measured_problems} problems"
        measured = fc.measured_samples is not None
        columns = ["k", "coverage % [95%]", *(["measured"] if measured else []), "power law",
                   "unique correct [95%]", *(["measured unique"] if measured else [])]
        rows = []
        for p in fc.points:
            row = [str(p.k), _interval(p.coverage, p.coverage_low, p.coverage_high, 1, True)]
            if measured:
                row.append(_plain(p.measured_coverage, 1, True))
            row += [_plain(p.power_law_coverage, 1, True),
                    _interval(p.unique_correct, p.unique_correct_low, p.unique_correct_high, 2, False)]
            if measured:
                row.append(_plain(p.measured_unique_correct, 2, False))
            rows.append(row)
        print_table(columns, rows, keys={"k"}, right=set(columns) - {"k"}, title=title)
        span = _span_line(fc, intervals, ENVELOPE_NATS)
        if span:
            console.print(span)
        if fit.candidates:
            scores = ", ".join(f"{k} {v:.1f}" for k, v in fit.candidates.items())
            console.print(f"held-out log-likelihood ({min(5, fc.problems)}-fold over problems): {scores}")
        console.print(f"expected correct samples per problem: {fc.fit.mean:.3g} × k (--json has every k)")


@app.command("forecast")
def forecast_command(
    run: Annotated[Path | None, typer.Argument(help="a graded run directory", file_okay=False)] = None,
    counts: Annotated[Path | None, typer.Option("--counts", help="CSV/Parquet of problem_id, n, c [, model, "
                                                "unique_correct, tokens] instead of a run", dir_okay=False)] = None,
    model: Annotated[str | None, typer.Option("--model", "-m", help="only this model")] = None,
    pilot_samples: Annotated[int, typer.Option("--pilot-samples", "-n", min=1,
                                               help="RUN: fit on samples with sample_idx < n")] = 8,
    pilot_problems: Annotated[int | None, typer.Option("--pilot-problems", min=2,
                                                       help="RUN: a seeded subset of this many problems")] = None,
    k: Annotated[str, typer.Option("--k", help="comma-separated k to forecast")] = DEFAULT_K,
    family: Annotated[str, typer.Option(help="auto | beta-binomial | zero-inflated-beta | logit-normal | skew-logit-normal | beta-mixture")] = "auto",
    n_boot: Annotated[int, typer.Option("--n-boot", min=1, help="bootstrap resamples of problems")] = 200,
    target: Annotated[str, typer.Option(help="population: problems like the pilot's (default); pilot: the pilot "
                                        "problems themselves, each given k samples in total")] = "population",
    intervals: Annotated[str, typer.Option(help="families (default): the 95% interval is the union of the "
                                           "bootstrap intervals of every family the pilot cannot rule out "
                                           "(held-out log-likelihood within 2 nats of the best); refit: the "
                                           "chosen family's bootstrap alone (narrower: which family is right "
                                           "is taken as known)")] = "families",
    seed: Annotated[int, typer.Option(help="seed of the bootstrap, the folds and --pilot-problems")] = 0,
    as_json: Annotated[bool, typer.Option("--json", help="print {\"models\": [...]} as JSON")] = False,
) -> None:
    """Forecast coverage@k (share of problems solved by at least one of k samples), expected correct and
    expected unique correct solutions per problem for any k — far beyond the pilot's n — with 95%
    bootstrap intervals.

    It fits the distribution of per-problem success probability (beta-binomial, a zero-inflated Beta
    when many problems are never solved, a logit-normal when hard-but-solvable problems are many, or a
    skew-logit-normal when their left tail is thinner still; the family with the best held-out
    likelihood is used and shown; the 95% interval also spans the families the pilot cannot rule out)
    and a Pitman-Yor (two-parameter Chinese
    restaurant) model of how distinct correct solutions accumulate. Power law: Brown
    et al.'s curve fitted to the same pilot, for comparison. When RUN holds more samples than the pilot,
    the measured unbiased values at k <= S are shown beside the forecast.

    Examples: `flopmatch forecast runs/toy --pilot-samples 4 --k 10,100,1000`;
    `flopmatch forecast --counts pilot.csv --json` (a row per problem: `problem_id,n,c`).
    """
    from flopmatch.forecast import FAMILIES, INTERVALS
    from flopmatch.forecast_run import forecast_counts_file, forecast_run

    if (run is None) == (counts is None):
        raise fail("give either a RUN directory or --counts FILE")
    if family != "auto" and family not in FAMILIES:
        raise fail(f"--family must be auto or one of {', '.join(FAMILIES)}, got {family!r}")
    if target not in ("population", "pilot"):
        raise fail(f"--target must be population or pilot, got {target!r}")
    if intervals not in INTERVALS:
        raise fail(f"--intervals must be families or refit, got {intervals!r}")
    ks = parse_ks(k)
    if counts is not None:
        forecasts = forecast_counts_file(counts, ks, model=model, n_boot=n_boot, seed=seed, family=family,
                                         target=target, intervals=intervals)
    else:
        if not run.is_dir():
            raise fail(f"{run}: not a directory")
        forecasts = forecast_run(run, model=model, pilot_samples=pilot_samples, ks=ks,
                                 pilot_problems=pilot_problems, n_boot=n_boot, seed=seed, family=family,
                                 target=target, intervals=intervals)
    if as_json:
        typer.echo(json.dumps({"models": [fc.to_dict() for fc in forecasts]}, indent=2))
        return
    _print_table(forecasts, intervals)
