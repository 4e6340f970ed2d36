"""`flopmatch advise`: run a small pilot, forecast, and say which model (or mix) to sample."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from flopmatch.cli._app import app, console, err_console, warn
from flopmatch.cli.inputs import DataFileOpt, ProblemsOpt, QuietOption, SplitOpt, load_problems, parse_options
from flopmatch.cli.tables import print_table, stdout_to_stderr


@app.command("advise")
def advise_command(
    model: Annotated[
        list[str],
        typer.Option("--model", "-m", help="a candidate model (repeat): registry name, directory or hub id"),
    ],
    run: Annotated[Path, typer.Option("--run", help="the run directory the pilot samples go to (resumable)")],
    problems: ProblemsOpt = None,
    split: SplitOpt = None,
    data_file: DataFileOpt = None,
    limit: Annotated[
        int | None, typer.Option(min=1, help="the problem set: at most this many problems")
    ] = None,
    pilot_samples: Annotated[
        int, typer.Option("--pilot-samples", "-n", min=1, help="pilot samples per problem")
    ] = 4,
    pilot_problems: Annotated[
        int | None,
        typer.Option(
            "--pilot-problems",
            min=2,
            help="pilot problems (a seeded subset); default: as many as keep the pilot within a tenth of the budget",
        ),
    ] = None,
    budget_flops: Annotated[
        float | None,
        typer.Option("--budget-flops", help="total budget in nominal FLOPs (2·P·generated tokens)"),
    ] = None,
    budget_dollars: Annotated[
        float | None,
        typer.Option("--budget-dollars", help="total budget in dollars (needs --price for every model)"),
    ] = None,
    budget_seconds: Annotated[
        float | None,
        typer.Option(
            "--budget-seconds", help="total budget in generation seconds, as measured by the pilot here"
        ),
    ] = None,
    match: Annotated[
        str | None,
        typer.Option(
            "--match", help="MODEL:S — the budget that S samples per problem of MODEL cost (FLOPs, or $)"
        ),
    ] = None,
    price: Annotated[
        list[str] | None, typer.Option("--price", help="MODEL=USD per million generated tokens (repeatable)")
    ] = None,
    fpr: Annotated[
        list[str] | None,
        typer.Option("--fpr", help="MODEL=false-positive rate in [0, 1], for valid-unique (repeatable)"),
    ] = None,
    objective: Annotated[
        str, typer.Option(help="what to maximise: coverage | unique | valid-unique (needs an FPR per model)")
    ] = "coverage",
    step: Annotated[
        float, typer.Option(help="the grid of budget shares for mixtures (0.1: 0, 10, ..., 100%)")
    ] = 0.1,
    n_boot: Annotated[
        int, typer.Option("--n-boot", min=20, help="bootstrap resamples of the pilot problems")
    ] = 200,
    seed: Annotated[int, typer.Option(help="seed of the pilot subset and of the bootstrap")] = 0,
    intervals: Annotated[
        str,
        typer.Option(
            help="families: the intervals span every prior family the pilot cannot rule out (held-out "
            "log-likelihood within 2 nats), and a pick is decided only if it wins under all of them; "
            "refit: the chosen families only (narrower; in the toy backtest 2 of its 52 decided calls were wrong, families: 1 of 40)"
        ),
    ] = "families",
    backend: Annotated[str, typer.Option(help="vllm | hf | openai")] = "vllm",
    option: Annotated[
        list[str] | None, typer.Option("--option", "-o", help="backend option KEY=VALUE (repeatable)")
    ] = None,
    temperature: Annotated[float, typer.Option(min=0.0)] = 0.7,
    top_p: Annotated[float, typer.Option("--top-p")] = 0.95,
    max_tokens: Annotated[int, typer.Option("--max-tokens", min=1)] = 512,
    as_json: Annotated[bool, typer.Option("--json", help="print advice.json")] = False,
    quiet: QuietOption = False,
) -> None:
    """Which model (or mix of models) should write your data for this budget? Decide from a pilot.

    Samples `--pilot-samples` solutions per problem from every `--model` on a seeded subset of the
    problems (the ordinary, resumable sampling: the pilot's samples are the first ones of any later run
    in the same `--run`), grades them, measures what a sample of each model costs, forecasts each
    allocation of the budget — single models and mixtures — and ranks them, with 95% intervals
    (bootstrap over pilot problems). Writes RUN/advice.json and RUN/advice_frontier.png.

    Example: `flopmatch advise -m toyworld-wc -m toyworld-se --backend hf --problems toyworld
    --limit 300 --run runs/advise --match toyworld-se:10`
    """
    from flopmatch.advise import advise
    from flopmatch.backends.base import SamplingParams
    from flopmatch.pilot import PilotModelSpec, parse_model_values

    prices = parse_model_values(price, "--price")
    fprs = parse_model_values(fpr, "--fpr", upper=1.0)
    params = SamplingParams(temperature=temperature, top_p=top_p, max_tokens=max_tokens)
    options = parse_options(option)
    problem_list = load_problems(run, problems, split, data_file, limit, None)
    specs = [PilotModelSpec(model=m, backend=backend, backend_options=dict(options)) for m in model]
    with stdout_to_stderr(as_json):
        advice = advise(
            run, specs, problem_list, pilot_samples=pilot_samples, pilot_problems=pilot_problems,
            budget_flops=budget_flops, budget_dollars=budget_dollars, budget_seconds=budget_seconds, match=match,
            prices=prices, fprs=fprs, objective=objective, step=step, n_boot=n_boot, seed=seed,
            intervals=intervals,
            sampling_params=params, progress=not quiet and not as_json,
            log=(lambda _m: None) if quiet or as_json else (lambda m: err_console.print(m, markup=False)),
        )  # fmt: skip
    if as_json:
        console.print_json(json.dumps(advice.to_dict(), default=str))
        return
    _print_advice(advice, run)


def _print_advice(advice: Any, run: Path) -> None:
    scale, unit = (100.0, "%") if advice.objective == "coverage" else (1.0, "")
    columns = ["rank", "allocation", "samples/problem", "cost", "forecast", "95% interval"]
    shown = [c for c in advice.candidates if c.is_single]
    shown += [c for c in advice.candidates if not c.is_single][:3]
    rows = [
        [str(advice.candidates.index(candidate) + 1), candidate.label,
         " + ".join(str(k) for k in candidate.samples.values()), f"{candidate.cost:.3g}",
         f"{scale * candidate.forecast:.1f}{unit}", f"[{scale * candidate.low:.1f}, {scale * candidate.high:.1f}]"]
        for candidate in sorted(shown, key=advice.candidates.index)
    ]  # fmt: skip
    print_table(columns, rows, keys={"rank", "allocation"}, right=set(columns) - {"allocation"},
                title=f"advice — {advice.objective} for {advice.budget.amount:.4g} {advice.budget.unit}")
    for message in advice.warnings:
        warn(message)
    spans = "; ".join(f"{name}: {', '.join(m['interval_families'])}" for name, m in advice.models.items())
    console.print(f"intervals span the prior families: {spans}", markup=False, highlight=False, soft_wrap=True)
    console.print(advice.sentence, markup=False, highlight=False, soft_wrap=True)
    console.print(
        f"advice: {run / 'advice.json'}  frontier plot: {run / 'advice_frontier.png'}", markup=False
    )
