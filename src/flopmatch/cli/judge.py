"""`flopmatch judge`, `flopmatch judge-labels` and `flopmatch judge-eval`: FPR of a run's answer-correct
solutions, from an LLM judge, the toy world's exact checker or people; and the judge's own accuracy
against ProcessBench's human step labels."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated

import typer

from flopmatch.cli._app import app, console, fail
from flopmatch.cli.inputs import QuietOption, parse_options
from flopmatch.cli.tables import JsonOption, print_json, print_table, stdout_to_stderr

BackendOpt = Annotated[
    str, typer.Option("--judge-backend", help="vllm | hf | openai | toyworld-checker (exact: datasets that declare a step checker)")
]
ModelOpt = Annotated[
    str | None, typer.Option("--judge-model", help="HF id, local directory or registry name of the judge model")
]
OptionOpt = Annotated[
    list[str] | None, typer.Option("--option", "-o", help="backend option KEY=VALUE (repeatable; JSON values)")
]


def _make(backend: str, model: str | None, options: list[str] | None, max_tokens: int, max_retries: int,
          include_reference: bool):
    from flopmatch.judge import make_judge

    return make_judge(dict(backend=backend, model=model, options=parse_options(options), max_tokens=max_tokens,
                           max_retries=max_retries, include_reference=include_reference))


def _pct(x: float) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.1f}%"


@app.command("judge")
def judge_command(
    run: Annotated[Path, typer.Argument(help="the run directory", exists=True, file_okay=False)],
    judge_backend: BackendOpt = "vllm",
    judge_model: ModelOpt = None,
    per_model: Annotated[int, typer.Option("--per-model", min=1, help="answer-correct solutions judged per model")] = 500,
    seed: Annotated[int, typer.Option(help="seed of the random sample of solutions")] = 0,
    budget: Annotated[
        int | None,
        typer.Option(help="only solutions within the plan's budget of this many SE samples per problem (one of "
                          "`flopmatch plan --se-samples`; each model's samples per problem there come from plan.json)"),
    ] = None,
    model: Annotated[list[str] | None, typer.Option("--model", "-m", help="only these models (repeatable)")] = None,
    max_tokens: Annotated[int, typer.Option(help="judge reply length limit in tokens")] = 384,
    max_retries: Annotated[int, typer.Option(help="retries after a malformed verdict")] = 2,
    reference: Annotated[bool, typer.Option(help="show the judge the reference solution")] = True,
    option: OptionOpt = None,
    as_json: JsonOption = False,
    quiet: QuietOption = False,
) -> None:
    """Judge a seeded random sample of answer-correct solutions per model → judgments/MODEL.parquet.

    Resumable: verdicts already written (same judge) are kept and not asked again. --budget S names the
    plan's budget by its SE samples per problem (as build-sft --budget does); it was an index into
    plan.json's budgets before, and an S the plan does not hold fails listing the budgets it does.
    """
    from flopmatch.judge import judge_run

    with stdout_to_stderr(as_json):
        judge = _make(judge_backend, judge_model, option, max_tokens, max_retries, reference)
    try:
        with stdout_to_stderr(as_json):
            stats = judge_run(run, judge, per_model=per_model, seed=seed, budget=budget, models=model)
    finally:
        judge.close()
    if as_json:
        print_json([{"model": s.model, "judge": judge.name, "budget": budget, "samples_per_problem": s.samples_per_problem,
                     "answer_correct": s.candidates, "judged": s.selected, "new": s.judged_now, "fpr": s.fpr._asdict()}
                    for s in stats.values()])  # fmt: skip
        return
    columns = ("model", "answer-correct", "judged", "new", "FPR", "95% Wilson CI", "n")
    rows = [(s.model, str(s.candidates), str(s.selected), str(s.judged_now), _pct(s.fpr.fpr),
             f"\\[{_pct(s.fpr.lo)}, {_pct(s.fpr.hi)}]", str(s.fpr.n)) for s in stats.values()]  # fmt: skip
    caption = None
    if budget is not None:
        counts = ", ".join(f"{s.model} {s.samples_per_problem}" for s in stats.values())
        caption = f"within budget {budget} (SE samples per problem); samples per problem: {counts}"
    print_table(columns, rows, keys={"model"}, right=set(columns[1:]), title=f"FPR by {judge.name}", caption=caption)


@app.command("judge-labels")
def judge_labels_command(
    run: Annotated[Path, typer.Argument(help="the run directory", exists=True, file_okay=False)],
    labels: Annotated[Path, typer.Argument(help="CSV or JSONL with problem_id, sample_idx, valid", exists=True)],
    model: Annotated[str, typer.Option("--model", "-m", help="the model whose solutions were labelled")],
) -> None:
    """Import people's verdicts on answer-correct solutions; `analyze` then reports them as the FPR."""
    from flopmatch.judge import fpr_estimate, import_human_labels, read_human_labels
    from flopmatch.store import RunDir

    path = import_human_labels(run, labels, model)
    est = fpr_estimate(read_human_labels(RunDir(run), model).column("valid").to_pylist())
    console.print(f"{path}: {est.n} human labels for {model}; FPR {_pct(est.fpr)} "
                  f"[{_pct(est.lo)}, {_pct(est.hi)}]")


@app.command("judge-eval")
def judge_eval_command(
    data_file: Annotated[Path, typer.Option("--data-file", help="ProcessBench JSON (e.g. processbench/gsm8k.json)")],
    labels: Annotated[str, typer.Option("--labels", help="label format; only 'processbench'")] = "processbench",
    limit: Annotated[int | None, typer.Option(help="a seeded random subset of this many items")] = None,
    seed: Annotated[int, typer.Option(help="seed of the --limit subset")] = 0,
    judge_backend: BackendOpt = "vllm",
    judge_model: ModelOpt = None,
    max_tokens: Annotated[int, typer.Option(help="judge reply length limit in tokens")] = 384,
    max_retries: Annotated[int, typer.Option(help="retries after a malformed verdict")] = 2,
    option: OptionOpt = None,
    out: Annotated[
        Path | None, typer.Option(help="write the scores (JSON) here; per-item verdicts and a figure beside it")
    ] = None,
    as_json: JsonOption = False,
    quiet: QuietOption = False,
) -> None:
    """Measure a judge against human step labels: precision/recall/F1 for flagging flawed solutions and,
    on answer-correct items, the judge's FPR against the humans'."""
    from flopmatch.judge import (
        evaluate_judge,
        judgments_table,
        load_processbench,
        plot_judge_eval,
    )
    from flopmatch.store import write_json, write_table

    if labels != "processbench":
        raise fail(f"--labels {labels!r} is not supported (only 'processbench')")
    items = load_processbench(data_file, limit=limit, seed=seed)
    with stdout_to_stderr(as_json):
        judge = _make(judge_backend, judge_model, option, max_tokens, max_retries, include_reference=False)
    try:
        with stdout_to_stderr(as_json):
            result, judgments = evaluate_judge(judge, items, split=data_file.stem)
    finally:
        judge.close()
    record = {**result.as_dict(), "judge": judge.name, "data_file": str(data_file), "limit": limit, "seed": seed}
    if out is not None:
        write_json(record, out)
        items_path = out.with_suffix(".items.parquet")
        write_table(judgments_table(items, judgments, judge.name), items_path)
        figure = plot_judge_eval(result, out.with_suffix(".png"),
                                 f"{judge.name} on {data_file.name}, {result.n} items: {result.seconds:.0f} s")
    if as_json:
        print_json(record)
        return
    rows = [
        ("precision (flagging flawed)", _pct(result.precision)),
        ("recall", _pct(result.recall)),
        ("F1", _pct(result.f1)),
        ("TP / FP / FN / TN", f"{result.tp} / {result.fp} / {result.fn} / {result.tn}"),
        ("first wrong step exact (flawed items)", _pct(result.step_accuracy_flawed)),
        ("called valid (sound items)", _pct(result.accuracy_correct)),
        ("ProcessBench F1", _pct(result.processbench_f1)),
        ("unparseable", str(result.unparseable)),
        (f"human FPR (answer-correct, n={result.human_fpr.n})",
         f"{_pct(result.human_fpr.fpr)} [{_pct(result.human_fpr.lo)}, {_pct(result.human_fpr.hi)}]"),
        (f"judge FPR (answer-correct, n={result.judge_fpr.n})",
         f"{_pct(result.judge_fpr.fpr)} [{_pct(result.judge_fpr.lo)}, {_pct(result.judge_fpr.hi)}]"),
        ("seconds", f"{result.seconds:.1f} ({result.seconds / max(result.n, 1):.2f}/item)"),
    ]
    title = f"{judge.name} on {data_file.name} ({result.n} items, {result.n_flawed} flawed)"
    print_table(("measure", "value"), rows, keys={"measure"}, title=title)
    if out is not None:
        console.print(f"wrote {out}, {items_path} and {figure}")
