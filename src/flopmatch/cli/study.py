"""`flopmatch study`, `status`, `report` and `demo`: the commands that run a whole study."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from flopmatch.cli._app import app, console, fail, warn
from flopmatch.cli.inputs import QuietOption
from flopmatch.cli.tables import JsonOption, print_json, print_table
from flopmatch.formatting import fmt_seconds

STATE_STYLE = {
    "done": "green",
    "stale": "yellow",
    "pending": "dim",
    "running": "cyan",
    "interrupted": "red",
    "failed": "bold red",
    "off": "dim",
}


def _log(message: str) -> None:
    if message.startswith("["):
        head, _, rest = message.partition(":")
        console.print(f"[bold]{head}[/]:{rest}", highlight=False)
    else:
        console.print(message, highlight=False, style="dim")


@app.command("study")
def study_command(
    config: Annotated[Path, typer.Argument(help="A study file (YAML); see examples/.")],
    run: Annotated[
        Path | None,
        typer.Option("--run", help="Run directory (default: the config's run_dir, else runs/NAME)."),
    ] = None,
    only: Annotated[
        list[str] | None,
        typer.Option("--only", help="Run only this stage (repeatable); its inputs must be done."),
    ] = None,
    force: Annotated[
        list[str] | None,
        typer.Option(
            "--force",
            help="Rerun this stage even if done (repeatable); what reads its outputs reruns if they changed.",
        ),
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Validate, print the plan and its estimated cost; run nothing.")
    ] = False,
    overrides: Annotated[
        list[str] | None,
        typer.Option("--set", help="Override a config key, e.g. --set training.enabled=true (repeatable)."),
    ] = None,
    quiet: QuietOption = False,
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="Show the traceback when a stage fails.")
    ] = False,
    as_json: Annotated[
        bool, typer.Option("--json", help="With --dry-run: print the plan as JSON (nothing else on stdout).")
    ] = False,
) -> None:
    """Run a whole study from one YAML file: problems → plan → sample → grade → judge → analyze → sft →
    train → eval → report.

    Each stage is skipped when its config and inputs are unchanged since it last finished, so running
    the same command again resumes a killed study and redoes only what changed.
    """
    from flopmatch.study import StudyError, load_study_config, run_study

    if as_json and not dry_run:
        raise fail("--json goes with --dry-run (a study's results are in its run directory and report)")
    cfg = load_study_config(config, overrides or ())  # a StudyConfigError is reported by the app (exit 2)
    try:
        if dry_run:
            _print_dry_run(cfg, run, as_json)
            return
        result = run_study(cfg, run, only=only or (), force=force or (), log=_log, progress=not quiet)
    except StudyError as exc:  # the app prints the message (exit 1); a failed stage's traceback on request
        if exc.__cause__ is not None:
            if verbose:
                console.print_exception(show_locals=False)
            else:
                exc.add_note("(--verbose shows the traceback)")
        raise
    _print_finish(result)


@app.command("status")
def status_command(
    run: Annotated[Path, typer.Argument(help="A run directory made by `flopmatch study`.")],
    as_json: JsonOption = False,
) -> None:
    """Show each stage of a study run: done, stale (will rerun), pending, running, interrupted or off."""
    from flopmatch.store import RunDir
    from flopmatch.study import StudyContext, load_run_config, study_status

    cfg = load_run_config(run)
    statuses = study_status(StudyContext(config=cfg, run=RunDir(run), log=lambda _: None))
    jobs = RunDir(run).job_state()
    records = []
    for s in statuses:
        note = s.reason or str(s.info.get("summary", ""))
        done = [k for k, v in jobs.items() if k.split(":", 1)[0] == s.name and v.get("status") == "done"]
        if done and s.state != "done":  # a stage part way through: its finished jobs (state.json's job section)
            note = f"{note} ({len(done)} jobs done)" if note else f"{len(done)} jobs done"
        records.append({"stage": s.name, "state": s.state, "seconds": s.info.get("seconds"),
                        "finished_at": s.info.get("finished_at"), "note": note})  # fmt: skip
    report = RunDir(run).report_dir / "index.html"
    if as_json:
        print_json({"name": cfg.name, "run": str(run), "stages": records,
                    "report": str(report) if report.exists() else None})  # fmt: skip
        return
    rows = []
    for r in records:
        seconds, finished = r["seconds"], r["finished_at"]
        rows.append((
            r["stage"],
            f"[{STATE_STYLE.get(r['state'], '')}]{r['state']}[/]",
            fmt_seconds(seconds) if isinstance(seconds, int | float) else "",
            time.strftime("%Y-%m-%d %H:%M", time.localtime(finished)) if finished else "",
            r["note"],
        ))  # fmt: skip
    print_table(("stage", "state", "took", "finished", "note"), rows, keys={"stage"}, right={"took"},
                title=f"{cfg.name} — {run}")  # fmt: skip
    if report.exists():
        console.print(f"report: {report}")


@app.command("report")
def report_command(run: Annotated[Path, typer.Argument(help="A run directory.")]) -> None:
    """(Re)build a run's report: report/index.html (self-contained) and report/report.md."""
    from flopmatch.report import build_report

    paths = build_report(run)
    for line in paths.verdict:
        console.print(f"• {line}", highlight=False)
    console.print(f"report: [bold]{paths.html}[/]\nmarkdown: {paths.markdown}")


@app.command("demo")
def demo_command(
    run: Annotated[Path, typer.Option("--run", help="Run directory.")] = Path("runs/demo"),
    fresh: Annotated[
        bool, typer.Option("--fresh", help="Delete the run directory first (toy models stay cached).")
    ] = False,
    overrides: Annotated[
        list[str] | None,
        typer.Option("--set", help="Override a key of the demo config, e.g. --set problems.test.limit=500."),
    ] = None,
    quiet: QuietOption = False,
) -> None:
    """The whole study on the embedded toy world, on CPU: tiny WC, SE and student models pretrained
    locally (cached after the first run), SE 1 and 10 samples per problem against WC's compute-matched ~3x,
    grading, exact FPR, all three fine-tuning paradigms and the report. Minutes on 2 cores."""
    import shutil

    from flopmatch.study import demo_config, run_study

    cfg = demo_config(overrides or ())
    if fresh and run.exists():
        shutil.rmtree(run)
    console.print(f"[bold]flopmatch demo[/]: {cfg.description}\nrun directory: {run}")
    result = run_study(cfg, run, log=_log, progress=not quiet)
    _print_finish(result)


def _print_finish(result) -> None:
    console.print(
        f"\n[bold green]study finished[/] in {result.seconds:.0f} s "
        f"({len(result.ran)} stages ran, {len(result.skipped)} skipped or off)"
    )
    if result.report is not None:
        verdict = result.report.parent / "report.md"
        if verdict.exists():
            lines = verdict.read_text().split("## Verdict", 1)[-1].split("\n## ", 1)[0].strip().splitlines()
            for line in lines:
                console.print(line, highlight=False)
        console.print(f"\nreport: [bold]{result.report}[/]")


def _print_dry_run(cfg, run: Path | None, as_json: bool) -> None:
    from flopmatch.formatting import fmt_flops, fmt_params
    from flopmatch.study import dry_run

    plan = dry_run(cfg, run)
    if as_json:
        print_json(_dry_run_record(cfg, plan))
        return
    console.print(f"[bold green]config OK[/]: {cfg.name} → {plan.run_dir}")
    rows = [
        (role, "?" if count is None else f"{count:,}", how) for role, (count, how) in plan.problems.items()
    ]
    print_table(("split", "problems", "from"), rows, keys={"split"}, right={"problems"}, title="problems")
    specs = {"wc": cfg.models.wc, "se": cfg.models.se, "student": cfg.paradigms.student}
    rows = [
        (role, specs[role].model, specs[role].backend, fmt_params(count) if count else "?", how)
        for role, (count, how) in plan.params.items()
    ]
    columns = ("role", "model", "backend", "parameters", "from")
    print_table(columns, rows, keys={"role", "model"}, right={"parameters"}, title="models")
    if plan.plan is None:
        console.print(f"[yellow]budget plan not computable yet:[/] {plan.plan_error}")
    else:
        p = plan.plan
        columns = ("SE samples / problem", "WC samples / problem", "mismatch")
        rows = [(str(b.se_samples), str(b.wc_samples), f"{b.mismatch_pct:+.1f}%") for b in p.budgets]
        title = f"budget plan ({p.mode}, ratio {p.ratio:.3f}, rounding {p.rounding})"
        print_table(columns, rows, keys=(), right=set(columns), title=title)
    if plan.costs:
        columns = ("model", "samples", "generated tokens", "nominal FLOPs", "basis")
        rows = [
            (c["model"], f"{c['samples']:,}", f"{c['tokens']:,.0f}", fmt_flops(c["flops"]), c["basis"])
            for c in plan.costs
        ]
        title = "estimated sampling cost (largest budget; smaller budgets are its prefix)"
        print_table(columns, rows, keys={"model"}, right=set(columns[1:4]), title=title)
    for line in plan.allocation:
        console.print(line)
    if cfg.training.enabled:
        console.print(
            f"fine-tuning: {len(plan.jobs)} training runs ({', '.join(cfg.paradigms.enabled())}; number-matched "
            f"control for {', '.join(cfg.paradigms.number_matched) or 'none'}), {plan.evals} evaluations"
        )
    else:
        console.print("fine-tuning: off (training.enabled: false) — dataset metrics only")
    if plan.power is not None:
        pw = plan.power
        console.print(
            f"power: WC − SE pass@1 detectable from {pw['mde'] * 100:.1f} points ({pw['mde_relative']:.0f}% relative "
            f"at {pw['accuracy']:.0%}) with {pw['test_problems']:,} test problems, {pw['seeds']} training seed(s), "
            f"{pw['discordance']:.0%} discordance, seed noise d_s {pw['seed_discordance']:.0%} τ {pw['seed_sd'] * 100:.1f} pts "
            f"({pw['basis']}; 80% power, α = 0.05)"
        )
    if cfg.training.enabled and cfg.training.launcher == "accelerate":
        console.print(
            f"training launcher: accelerate launch {' '.join(cfg.training.accelerate_args)}"
            + (f" --config_file {cfg.training.accelerate_config}" if cfg.training.accelerate_config else "")
        )
    for warning in plan.warnings:
        warn(warning, console)  # part of the printed plan, so on stdout
    if plan.stages:
        console.print(
            "stages in " + str(plan.run_dir) + ": " + ", ".join(f"{s.name} {s.state}" for s in plan.stages)
        )


def _dry_run_record(cfg, plan) -> dict:
    """What --dry-run prints, as data (--json)."""
    import json

    specs = {"wc": cfg.models.wc, "se": cfg.models.se, "student": cfg.paradigms.student}
    return {
        "name": cfg.name,
        "run_dir": str(plan.run_dir),
        "problems": [{"split": k, "problems": n, "from": how} for k, (n, how) in plan.problems.items()],
        "models": [
            {"role": k, "model": specs[k].model, "backend": specs[k].backend, "parameters": n, "from": how}
            for k, (n, how) in plan.params.items()
        ],
        "budget_plan": json.loads(plan.plan.to_json()) if plan.plan is not None else None,
        "budget_plan_error": plan.plan_error,
        "costs": plan.costs,
        "training_runs": len(plan.jobs) if cfg.training.enabled else 0,
        "evaluations": plan.evals,
        "power": plan.power,
        "allocation": list(plan.allocation),
        "warnings": list(plan.warnings),
        "stages": [{"stage": s.name, "state": s.state} for s in plan.stages or []],
    }
