"""`flopmatch sample` and `flopmatch ledger`: draw solutions into a run, and show what they cost."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from flopmatch.cli._app import app, console, fail
from flopmatch.cli.inputs import DataFileOpt, ProblemsOpt, QuietOption, SplitOpt, load_problems, parse_options
from flopmatch.cli.tables import print_json, print_table, stdout_to_stderr


@app.command("sample")
def sample_command(
    run: Annotated[Path, typer.Option("--run", help="the run directory")],
    model: Annotated[
        str | None, typer.Option("--model", "-m", help="HF id, local directory or registry name")
    ] = None,
    samples_per_problem: Annotated[
        int | None, typer.Option("--samples-per-problem", "-S", min=1, help="solutions per problem")
    ] = None,
    problems: ProblemsOpt = None,
    split: SplitOpt = None,
    data_file: DataFileOpt = None,
    limit: Annotated[int | None, typer.Option(min=0, help="at most this many problems")] = None,
    seed: Annotated[
        int | None, typer.Option(help="choose the --limit problems at random with this seed")
    ] = None,
    backend: Annotated[str, typer.Option(help="vllm | hf | openai")] = "vllm",
    base_url: Annotated[
        str | None, typer.Option("--base-url", help="openai backend: the server's /v1 URL")
    ] = None,
    option: Annotated[
        list[str] | None,
        typer.Option("--option", "-o", help="backend option KEY=VALUE (repeatable), e.g. dtype=bfloat16"),
    ] = None,
    temperature: Annotated[float, typer.Option(min=0.0)] = 0.7,
    top_p: Annotated[float, typer.Option("--top-p")] = 0.95,
    max_tokens: Annotated[int, typer.Option("--max-tokens", min=1)] = 512,
    stop: Annotated[list[str] | None, typer.Option(help="a stop string (repeatable)")] = None,
    budget_flops: Annotated[
        float | None,
        typer.Option(
            "--budget-flops",
            help="stop once this model has spent this many nominal FLOPs in the run (2·P·generated tokens)",
        ),
    ] = None,
    budget_seconds: Annotated[
        float | None,
        typer.Option(
            "--budget-seconds", help="stop once this model has spent this many generation seconds in the run"
        ),
    ] = None,
    replicas: Annotated[int, typer.Option(min=1, help="engine replicas as Ray actors")] = 1,
    ray_address: Annotated[str | None, typer.Option("--ray-address", help="join this Ray cluster")] = None,
    params: Annotated[
        float | None,
        typer.Option("--params", help="parameter count override, e.g. 4.94e8 (default: model config)"),
    ] = None,
    chunk_samples: Annotated[
        int | None,
        typer.Option("--chunk-samples", min=1, help="samples per engine call / Ray task (default: auto)"),
    ] = None,
    allocation: Annotated[
        str,
        typer.Option(
            "--allocation",
            help="uniform (S per problem, the default) | until-correct (stop a problem at --target-correct "
            "distinct correct) | adaptive (each round to where one more sample adds the most); "
            "non-uniform policies sample in graded rounds until the budget",
        ),
    ] = "uniform",
    target_correct: Annotated[
        int, typer.Option("--target-correct", min=1, help="until-correct: distinct correct solutions to stop at")
    ] = 1,
    objective: Annotated[
        str, typer.Option("--objective", help="adaptive: coverage (first correct) | unique (distinct correct)")
    ] = "coverage",
    max_per_problem: Annotated[
        int | None, typer.Option("--max-per-problem", min=1, help="allocation: at most this many samples of one problem")
    ] = None,
    plan: Annotated[
        Path | None, typer.Option("--plan", help="a budget plan (default with --wc/--se: RUN/plan.json)")
    ] = None,
    wc: Annotated[str | None, typer.Option("--wc", help="with a plan: the weak-cheap model")] = None,
    se: Annotated[str | None, typer.Option("--se", help="with a plan: the strong-expensive model")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the summary as JSON")] = False,
    progress: Annotated[bool, typer.Option(help="show a progress bar")] = True,
    quiet: QuietOption = False,
) -> None:
    """Sample solutions into RUN/samples/MODEL/ — resumable: rerun the same command after a crash.

    Only the (problem, sample) pairs not yet on disk are generated, each with a seed derived from
    (model, problem_id, sample_idx), so a smaller budget's samples are a prefix of a larger one's.
    With `--plan` (or `--wc`/`--se`: the plan in RUN/plan.json), both models are sampled for the
    plan's largest budget; the models default to the plan's.
    """
    from flopmatch.backends.base import SamplingParams

    options = parse_options(option)
    if base_url:
        options["base_url"] = base_url
    sampling_params = SamplingParams(
        temperature=temperature, top_p=top_p, max_tokens=max_tokens, stop=tuple(stop or ())
    )
    problem_list = load_problems(run, problems, split, data_file, limit, seed)
    allocation_config = _allocation(allocation, target_correct, objective, max_per_problem, samples_per_problem,
                                    budget_flops, budget_seconds)  # fmt: skip
    common = dict(
        backend=backend, backend_options=options, params=sampling_params, budget_flops=budget_flops,
        budget_seconds=budget_seconds, replicas=replicas, ray_address=ray_address, progress=progress,
        chunk_samples=chunk_samples,
    )  # fmt: skip
    with stdout_to_stderr(as_json):  # bad input (a SamplingConfigMismatch...) is reported by flopmatch.cli._app
        summaries = _run(run, model, samples_per_problem, plan, wc, se, problem_list, common, params,
                         allocation_config)  # fmt: skip
    _print_summaries(list(summaries.values()), as_json)
    if any(s.status == "incomplete" for s in summaries.values()):
        raise typer.Exit(1)


def _allocation(allocation, target_correct, objective, max_per_problem, samples_per_problem, budget_flops,
                budget_seconds):  # fmt: skip
    """The allocation policy, or None for today's S-per-problem sampling (uniform with -S)."""
    from flopmatch.allocation import AllocationConfig, AllocationConfigError

    if allocation == "uniform" and (samples_per_problem is not None or (budget_flops is None and budget_seconds is None)):
        if target_correct != 1 or objective != "coverage" or max_per_problem is not None:
            raise fail("--target-correct, --objective and --max-per-problem apply to a non-uniform --allocation "
                       "(or uniform with a budget and no -S)")
        return None
    if samples_per_problem is not None:
        raise fail(f"--allocation {allocation} sets the samples per problem itself: drop -S (cap one problem "
                   "with --max-per-problem)")
    try:
        return AllocationConfig(allocation=allocation, target_correct=target_correct, objective=objective,
                                max_per_problem=max_per_problem)  # fmt: skip
    except ValueError as exc:  # pydantic's ValidationError: reported by the app, named by the option
        raise AllocationConfigError(f"--allocation: {exc}") from exc


def _run(run, model, samples_per_problem, plan, wc, se, problem_list, common, params, allocation=None) -> dict:
    """One model (--model/-S) or both models of a plan; returns the summaries by model."""
    from flopmatch.sampling import sample

    if plan is not None or wc is not None or se is not None:
        if model is not None or samples_per_problem is not None:
            raise fail("give either --model/--samples-per-problem or a plan (--plan, --wc, --se), not both")
        if allocation is not None:
            return _allocate_with_plan(run, plan, wc, se, problem_list, common, allocation)
        return _sample_with_plan(run, plan, wc, se, problem_list, common, params)
    if allocation is not None:
        if model is None:
            raise fail("give --model (or a plan with --wc and --se)")
        from flopmatch.allocation_run import sample_allocated

        options = {k: v for k, v in common.items() if k not in ("chunk_samples",)}
        summary = sample_allocated(run, model=model, problems=problem_list, config=allocation,
                                   params_count=int(params) if params else None,
                                   chunk_samples=common.get("chunk_samples") or 64, **options)  # fmt: skip
        return {model: summary}
    if model is None or samples_per_problem is None:
        raise fail("give --model and --samples-per-problem (or a plan with --wc and --se)")
    summary = sample(
        run,
        model=model,
        problems=problem_list,
        samples_per_problem=samples_per_problem,
        params_count=int(params) if params else None,
        **common,
    )
    return {model: summary}


def _sample_with_plan(run, plan_path, wc, se, problem_list, common, params_override):
    """Both models of a plan, each for its largest budget; --wc/--se default to the plan's models."""
    from flopmatch.sampling import sample_plan

    if params_override:
        raise fail("--params applies to one --model; with a plan, parameter counts come from the plan")
    _path, budget_plan = _read_plan(run, plan_path)
    backend = common.pop("backend")
    options = common.pop("backend_options")
    specs = {
        role: _Spec(
            model=name or getattr(budget_plan, role).name, backend=backend, backend_options=dict(options)
        )
        for role, name in (("wc", wc), ("se", se))
    }
    out = sample_plan(run, budget_plan, wc=specs["wc"], se=specs["se"], problems=problem_list, **common)
    return {s.model: s for s in out.values()}


def _allocate_with_plan(run, plan_path, wc, se, problem_list, common, allocation):
    """Both models of a plan under an allocation policy, each spending the plan's largest budget
    (its FLOPs per problem × the problems) unless --budget-flops/--budget-seconds say otherwise."""
    from flopmatch.allocation_run import sample_allocated

    path, budget_plan = _read_plan(run, plan_path)
    out = {}
    for role, name in (("wc", wc), ("se", se)):
        side = getattr(budget_plan, role)
        options = {k: v for k, v in common.items() if k != "chunk_samples"}
        if options.get("budget_flops") is None and options.get("budget_seconds") is None:
            options["budget_flops"] = plan_budget_flops(budget_plan, role, len(problem_list), path)
        out[role] = sample_allocated(run, model=name or side.name, problems=problem_list, config=allocation,
                                     params_count=int(side.params) if side.params else None,
                                     chunk_samples=common.get("chunk_samples") or 64, **options)  # fmt: skip
    return {s.model: s for s in out.values()}


def _read_plan(run: Path, plan_path: Path | None):
    """(path, BudgetPlan) of --plan, or of RUN/plan.json; a missing or invalid plan is a BudgetError,
    which the app reports."""
    from flopmatch.budget import BudgetError
    from flopmatch.store import RunDir
    from flopmatch.store.queries import read_plan

    path = Path(plan_path or RunDir(run).plan_path)
    if not path.exists():
        raise BudgetError(f"no budget plan at {path}: run `flopmatch plan` first or pass --plan")
    try:
        return path, read_plan(RunDir(run), path=path)
    except ValueError as exc:  # read_plan's ValueError carries pydantic's ValidationError as its cause
        raise BudgetError(f"cannot read the budget plan {path}: {exc.__cause__ or exc}") from exc


def plan_budget_flops(budget_plan, role: str, n_problems: int, path) -> float:
    """A model's FLOP budget from a plan: its largest budget's FLOPs per problem × the problems."""
    unit = budget_plan.flops_unit or ""
    values = [getattr(b, f"{role}_flops") for b in budget_plan.budgets]
    if not unit.startswith("FLOPs per problem (") or any(v is None for v in values):
        raise fail(f"{path}: the plan has no absolute FLOPs per problem (it needs parameter counts and mean "
                   "solution lengths); pass --budget-flops")
    return float(max(values)) * n_problems


class _Spec:
    """A model spec for sample_plan (flopmatch.study.ModelSpec has the same fields)."""

    def __init__(self, *, model: str, backend: str, backend_options: dict, params: float | None = None):
        self.model, self.backend, self.backend_options, self.params = model, backend, backend_options, params


def _print_summaries(summaries, as_json: bool) -> None:
    if as_json:
        print_json([s.to_dict() for s in summaries])
        return
    # Transposed (a column per model), like `flopmatch ledger`: readable in a narrow terminal.
    fields = {
        "status": lambda s: s.status,
        "backend": lambda s: f"{s.backend} ×{s.replicas}" if s.replicas > 1 else s.backend,
        "seeding": lambda s: s.seeding or "-",
        "on disk": lambda s: f"{s.on_disk}/{s.requested}",
        "generated": lambda s: str(s.generated),
        "samples/s": lambda s: f"{s.samples_per_second:.2f}",
        "tokens/s": lambda s: f"{s.tokens_per_second:.1f}",
        "truncated": lambda s: str(s.truncated),
        "seconds": lambda s: f"{s.seconds:.1f} (+{s.startup_seconds:.1f} start-up)",
    }
    if any(hasattr(s, "allocation") for s in summaries):  # a round-based allocation policy
        fields.update({
            "allocation": lambda s: getattr(s, "allocation", "uniform"),
            "rounds": lambda s: str(getattr(s, "rounds", "-")),
            "samples per problem": lambda s: "min {min:.0f} / median {median:.0f} / max {max:.0f}".format(
                **s.per_problem) if getattr(s, "per_problem", None) else "-",
            "FLOPs spent / budget": lambda s: f"{s.spent_flops:.3g} / {s.budget_flops:.3g}"
            if getattr(s, "budget_flops", None) and s.spent_flops is not None else "-",
        })  # fmt: skip
    models = [s.model_key for s in summaries]
    rows = [(name, *(get(s) for s in summaries)) for name, get in fields.items()]
    print_table(["", *models], rows, keys={"", *models}, right=set(models), title="sampling")
    for s in summaries:
        if s.message:
            console.print(f"{s.model}: {s.message}")


@app.command("ledger")
def ledger_command(
    run: Annotated[Path, typer.Argument(help="the run directory")],
    sessions: Annotated[bool, typer.Option("--sessions", help="one row per sampling session")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON records")] = False,
) -> None:
    """The cost ledger: tokens, wall seconds and nominal FLOPs (2·P·generated tokens) per model."""
    from flopmatch.ledger import FLOPS_CONVENTION, read_ledger, summarize_ledger

    if not run.is_dir():
        raise fail(f"no run directory at {run}")
    frame = read_ledger(run).to_pandas() if sessions else summarize_ledger(run)
    if as_json:
        print_json(json.loads(frame.to_json(orient="records", date_format="iso")))
        return
    if frame.empty:
        console.print(f"no sampling recorded in {run}")
        return
    from pandas.api.types import is_numeric_dtype

    if sessions:
        # model_key (the samples/ directory name) is short enough for a narrow terminal.
        columns = [
            "model_key",
            "session_id",
            "status",
            "backend",
            "seeding",
            "samples",
            "completion_tokens",
            "seconds",
        ]
        records = frame.sort_values("started_at")[columns].to_dict("records")
        print_table(
            [c.replace("_", " ") for c in columns],
            [[_fmt(record[c]) for c in columns] for record in records],
            keys={"model key", "session id"},
            right={c.replace("_", " ") for c in columns if is_numeric_dtype(frame[c])},
            title=f"ledger sessions — {run}",
        )
    else:
        # Transposed (a column per model): a study has two or three models and many figures.
        records = frame.to_dict("records")
        models = [str(r["model"]) for r in records]
        fields = [c for c in frame.columns if c != "model"]
        rows = [[field.replace("_", " "), *(_fmt(r[field]) for r in records)] for field in fields]
        title = f"cost ledger — {run}"
        print_table(
            ["", *models], rows, keys={"", *models}, right=set(models), title=title, caption=FLOPS_CONVENTION
        )


def _fmt(value: Any) -> str:
    import numbers

    if value is None:
        return "-"
    if isinstance(value, numbers.Integral):
        return f"{int(value):,}"
    if isinstance(value, numbers.Real):
        value = float(value)
        if value != value:  # NaN
            return "-"
        return f"{value:.3g}" if abs(value) >= 1e6 else f"{value:,.2f}"
    return str(value)
