"""The training stages of a study: the SFT sets (sft), the fine-tuning runs (train) and their evaluation on
the test problems (eval). Each run is a job of its stage with its own digest, so a killed study resumes
at the first unfinished run and a changed setting redoes only the runs it touches.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from flopmatch.fingerprints import file_identity, fingerprint
from flopmatch.store import config_hash, read_json, write_json, write_table
from flopmatch.study.context import StudyContext, StudyError
from flopmatch.study.jobs import sft_sets, train_jobs
from flopmatch.trained import TRAIN_RESULT_FILE, train_record


def stage_sft(ctx: StudyContext) -> dict[str, Any]:
    """Every SFT set of the enabled paradigms. Each model's graded samples (their text) are read once, for
    all of its sets, and dropped after its last one."""
    from flopmatch.sft import build_sft, graded_samples

    config = ctx.config
    roles = ctx.roles()
    built: dict[str, Any] = {}
    items = sft_sets(config, ctx.budgets())
    last_set = {item.role: i for i, item in enumerate(items) if item.allocation == "uniform"}
    graded: dict[str, Any] = {}
    for i, item in enumerate(items):
        if item.allocation != "uniform":  # every correct solution the policy found within the budget
            from flopmatch.allocation_study import build_allocated_sft

            result = build_allocated_sft(ctx.run, policy=item.allocation, se_samples=item.budget,
                                         model=roles[item.role]["model"], name=item.name,
                                         max_per_problem=config.paradigms.max_per_problem, seed=config.seed)  # fmt: skip
            built[item.name] = {"examples": result.examples, "problems": result.problems_covered}
            ctx.log(f"    {item.name}: {result.examples} examples over {result.problems_covered} problems")
            continue
        # Budgets resolve through plan.json; the control takes SE's samples per problem from WC.
        control = roles["se"]["model"] if item.kind == "wc_number_matched" else None
        source = roles[item.role]["model"]
        if item.role not in graded:
            graded[item.role] = graded_samples(ctx.run, source)
        result = build_sft(
            ctx.run,
            source_model=source,
            budget=item.budget,
            number_matched_to=control,
            max_per_problem=config.paradigms.max_per_problem,
            name=item.name,
            seed=config.seed,
            graded=graded[item.role] if last_set[item.role] > i else graded.pop(item.role),
        )
        if result.samples_per_problem != item.samples_per_problem:
            raise StudyError(
                f"SFT set {item.name}: built from {result.samples_per_problem} samples per problem, the plan says "
                f"{item.samples_per_problem}"
            )
        built[item.name] = {"examples": result.examples, "problems": result.problems_covered}
        ctx.log(f"    {item.name}: {result.examples} examples over {result.problems_covered} problems")
    return {"sets": built, "summary": f"{len(built)} SFT sets"}


def stage_train(ctx: StudyContext) -> dict[str, Any]:
    from flopmatch.training import train
    from flopmatch.workers import run_parallel

    config = ctx.config
    roles = ctx.roles()
    base_cfg = config.training.train_config(config.seed)
    validation = ctx.problems("validation") or None
    results: dict[str, Any] = {}
    jobs = train_jobs(config, ctx.budgets())
    sets = (ctx.run.stage_state().get("sft") or {}).get("sets", {})
    planned: list[tuple[int, Any, str, str, Path, dict[str, Any]]] = []
    for number, job in enumerate(jobs, 1):
        student = roles[job.student_role]
        train_cfg = base_cfg.model_copy(update={"seed": job.seed})  # TRL's seed and data_seed
        if config.training.steps_per_budget and job.data.budget in config.training.steps_per_budget:
            train_cfg = train_cfg.model_copy(
                update={"max_steps": config.training.steps_per_budget[job.data.budget]}
            )
        if sets.get(job.data.name, {}).get("examples", 1) == 0:
            ctx.log(
                f"    [{number}/{len(jobs)}] {job.name}: skipped, {job.data.name} has no correct solutions"
            )
            results[job.name] = None
            continue
        sub = f"train:{job.name}"
        digest = config_hash(
            {
                "job": job.identity(),  # the seed is in train_cfg; runs from before seeds keep their hash
                "config": train_cfg,
                "base": student["path"],
                "data": fingerprint([ctx.run.sft_dir(job.data.name)], ctx.run.root),
            }
        )
        out_dir = ctx.run.model_dir(job.name)
        if ctx.run.is_job_done(sub, digest) and (out_dir / TRAIN_RESULT_FILE).exists():
            results[job.name] = ctx.run.job_state()[sub].get("best")
            continue
        kwargs = dict(
            data_dir=ctx.run.sft_dir(job.data.name),
            base_model=student["path"],
            out_dir=out_dir,
            config=train_cfg,
            validation=validation,
            select_backend=config.evaluation.backend,
            select_max_tokens=config.evaluation.max_tokens or config.sampling.max_tokens,
            select_options=dict(config.evaluation.backend_options),
            overwrite=True,
        )
        planned.append((number, job, sub, digest, out_dir, kwargs))
    trained_by_workers: dict[str, Any] = {}
    if config.training.workers > 1 and config.training.launcher == "inprocess" and len(planned) > 1:
        # every run at once on the workers, the longest first so that they finish together
        ctx.log(f"    {len(planned)} runs on {config.training.workers} worker processes")
        longest_first = sorted(planned, key=lambda plan: -(plan[5]["config"].max_steps or 0))
        done = run_parallel(train, [kwargs for *_, kwargs in longest_first], config.training.workers)
        trained_by_workers = {plan[1].name: result for plan, result in zip(longest_first, done, strict=True)}
    for number, job, sub, digest, out_dir, kwargs in planned:
        student = roles[job.student_role]
        ctx.log(f"    [{number}/{len(jobs)}] {job.name}: {student['label']} on {job.data.name}")
        if config.training.launcher == "accelerate":
            _accelerate_train(ctx, kwargs["data_dir"], student["path"], out_dir, kwargs["config"])
        # In-process: trains (or, after an accelerate run, finds the finished run) and selects the checkpoint.
        result = trained_by_workers.get(job.name) or train(**kwargs)
        best = os.path.relpath(result.best or out_dir, ctx.run.root)  # relative: the run can move
        ctx.run.mark_job_done(sub, digest, best=best, seconds=result.seconds, loss=result.train_loss)
        results[job.name] = best
    write_json({"jobs": results}, ctx.run.trained_index_path)
    trained = sum(1 for v in results.values() if v is not None)
    return {
        "summary": f"{trained} of {len(jobs)} models trained"
        + (" (the rest had no data)" if trained < len(jobs) else "")
    }


def _accelerate_train(
    ctx: StudyContext, data_dir: Path, base_model: str, out_dir: Path, train_cfg: Any
) -> None:
    """One fine-tuning run under ``accelerate launch`` (multi-GPU / DeepSpeed / FSDP). The run's exact
    TrainConfig goes in a file, so the in-process ``train`` call that follows recognises the finished run
    (same config hash) and only selects the checkpoint on the validation problems."""
    import shutil
    import subprocess
    import sys

    config = ctx.config.training
    cfg_path = write_json(train_cfg.model_dump(mode="json"), out_dir.parent / f".{out_dir.name}.train.json")
    launcher = shutil.which("accelerate") or str(Path(sys.executable).with_name("accelerate"))
    command = [launcher, "launch"]
    if config.accelerate_config:
        command += ["--config_file", config.accelerate_config]
    command += [*config.accelerate_args, "-m", "flopmatch", "train", "--data", str(data_dir), "--model", base_model,
                "--out", str(out_dir), "--config", str(cfg_path)]  # fmt: skip
    ctx.log("    $ " + " ".join(command))
    completed = subprocess.run(command, check=False)
    if completed.returncode != 0:
        raise StudyError(f"`accelerate launch` exited with {completed.returncode} training {out_dir.name}")


def _eval_job(ctx: StudyContext, name: str, model: str, test: list[Any]) -> tuple[str, str, dict[str, Any]]:
    """(job, digest, ``evaluate`` arguments) of evaluating ``model`` as ``evals/<name>`` on ``test``.

    evaluate() reuses a saved result with the same settings and model *path*; a model retrained in place
    must not reuse it, so each evaluation is keyed here by the model's training record too."""
    config, ev = ctx.config, ctx.config.evaluation
    max_tokens = ev.max_tokens or config.sampling.max_tokens
    record = train_record(model)
    inside = Path(model).is_relative_to(ctx.run.root)
    digest = config_hash(
        {"eval": ev, "max_tokens": max_tokens, "seed": config.seed,
         "model": os.path.relpath(model, ctx.run.root) if inside else model,
         "trained": file_identity(record) if record else None}
    )  # fmt: skip
    kwargs = dict(
        model=model, problems=test, out_path=ctx.run.eval_path(name), progress_desc=f"eval {name}",
        **ev.evaluate_kwargs(seed=config.seed, max_tokens=max_tokens),
    )  # fmt: skip
    return f"eval:{name}", digest, kwargs


def _drop_stale_eval(ctx: StudyContext, name: str) -> None:
    for stale in (ctx.run.eval_path(name), ctx.run.eval_path(name).with_suffix(".json")):
        stale.unlink(missing_ok=True)


def _evaluate_on_workers(ctx: StudyContext, wanted: list[tuple[str, str]], test: list[Any]) -> set[str]:
    """With several training workers, every evaluation of ``wanted`` (name, model) not done yet runs at
    once on them; the names returned are then found saved by :func:`_run_eval`."""
    from flopmatch.evaluation import evaluate
    from flopmatch.workers import run_parallel

    workers = ctx.config.training.workers
    pending = [(name, _eval_job(ctx, name, model, test)) for name, model in wanted]
    pending = [(name, call) for name, (job, digest, call) in pending if not ctx.run.is_job_done(job, digest)]
    if workers <= 1 or len(pending) <= 1:
        return set()
    ctx.log(f"    {len(pending)} evaluations on {workers} worker processes")
    for name, _ in pending:
        _drop_stale_eval(ctx, name)
    run_parallel(evaluate, [kwargs for _, kwargs in pending], workers)
    return {name for name, _ in pending}


def _run_eval(ctx: StudyContext, name: str, model: str, test: list[Any], prefetched: set[str]) -> Any:
    """Evaluate ``model`` as ``evals/<name>`` (a result saved with the same settings is reused)."""
    from flopmatch.evaluation import evaluate

    job, digest, kwargs = _eval_job(ctx, name, model, test)
    if not ctx.run.is_job_done(job, digest) and name not in prefetched:
        _drop_stale_eval(ctx, name)
    result = evaluate(**kwargs)
    ctx.run.mark_job_done(job, digest, metrics=result.metrics)
    return result


def stage_eval(ctx: StudyContext) -> dict[str, Any]:
    config = ctx.config
    roles = ctx.roles()
    test = ctx.problems("test")
    trained = read_json(ctx.run.trained_index_path)["jobs"]
    budgets = dict(ctx.budgets())
    jobs = train_jobs(config, ctx.budgets())
    students = list(dict.fromkeys(j.student_role for j in jobs)) if config.evaluation.baselines else []
    wanted = [(f"base-{role}", roles[role]["path"]) for role in students] + [
        (j.name, str(ctx.run.root / trained[j.name])) for j in jobs if trained.get(j.name) is not None
    ]
    prefetched = _evaluate_on_workers(ctx, wanted, test)
    rows: list[dict[str, Any]] = []
    baselines: dict[str, Any] = {}
    for student_role in students:
        ctx.log(f"    base {roles[student_role]['label']} (before fine-tuning)")
        baselines[student_role] = _run_eval(ctx, f"base-{student_role}", roles[student_role]["path"], test,
                                            prefetched)  # fmt: skip
    for number, job in enumerate(jobs, 1):
        if trained.get(job.name) is None:
            ctx.log(f"    [{number}/{len(jobs)}] {job.name}: not trained (no data), not evaluated")
            continue
        ctx.log(f"    [{number}/{len(jobs)}] {job.name}")
        result = _run_eval(ctx, job.name, str(ctx.run.root / trained[job.name]), test, prefetched)
        rows += _eval_rows(job.paradigm, job.data.budget, budgets[job.data.budget], roles[job.student_role]["label"],
                           job.data.kind, job.name, result, seed=job.seed)  # fmt: skip
    for paradigm, budget, student_role in sorted({(j.paradigm, j.data.budget, j.student_role) for j in jobs}):
        if student_role in baselines:
            rows += _eval_rows(paradigm, budget, budgets[budget], roles[student_role]["label"], "base",
                               f"base-{student_role}", baselines[student_role])  # fmt: skip
    write_table(rows, ctx.run.metrics_path("paradigms"))
    evaluated = sum(1 for j in jobs if trained.get(j.name) is not None)
    summary = f"{evaluated} fine-tuned + {len(baselines)} base models on {len(test)} test problems"
    return {"summary": summary + _compare(ctx)}


def _compare(ctx: StudyContext) -> str:
    """metrics/comparisons.parquet|md: the paired comparisons (flopmatch.comparisons), and their count."""
    from flopmatch.comparisons import CompareSettings, compare_run

    table = compare_run(ctx.run.root, CompareSettings(n_boot=ctx.config.analysis.n_boot, seed=ctx.config.seed))
    head = table[(table["comparison"] == "wc_vs_se") & (table["metric"] == "pass@1")]
    decided = head["verdict"].isin(["WC data better", "SE data better"]).sum()
    return f"; {len(table)} paired comparisons, {decided} of {len(head)} WC-vs-SE pass@1 verdicts"


def _eval_rows(
    paradigm: str, budget: int, wc_samples: int, student: str, data: str, name: str, result: Any,
    seed: int | None = None,
) -> list[dict[str, Any]]:
    """Rows of ``metrics/paradigms.parquet``: one per metric; ``seed`` is the training seed (None for a
    model before fine-tuning), ``model_name`` names the evaluation file (``evals/<model_name>.parquet``)."""
    out = []
    for metric, value in sorted(result.metrics.items()):
        low, high = result.intervals.get(metric, (float("nan"), float("nan")))
        out.append(
            {
                "paradigm": paradigm,
                "budget_se_samples": int(budget),
                "wc_samples": int(wc_samples),
                "student": student,
                "data": data,
                "model_name": name,
                "seed": seed,
                "metric": metric,
                "value": float(value),
                "ci_low": float(low),
                "ci_high": float(high),
                "n_problems": int(result.problems),
            }
        )
    return out
