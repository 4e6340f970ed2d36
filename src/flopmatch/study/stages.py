"""The stages of a study: each reads what earlier stages wrote into the run directory and writes its
own outputs there. Stages that are long (sampling, training) are resumable inside too, so a killed study
picks up where it stopped and never redoes finished work.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path
from typing import Any

from flopmatch.store import config_hash, model_key, read_json, read_table, write_json, write_table
from flopmatch.study.config import ModelSpec, SplitConfig, StudyConfig
from flopmatch.study.context import (
    PROBLEM_ROLES,
    ROLES_FILE,
    StudyContext,
    StudyError,
    file_identity,
    fingerprint,
    sampling_settings,
)
from flopmatch.study.jobs import sft_sets, train_jobs
from flopmatch.study.pilot import stage_pilot

# --------------------------------------------------------------------------- stages


def load_split(spec: SplitConfig, seed: int) -> list[Any]:
    from flopmatch.problems import load

    return load(
        spec.source,
        split=spec.split,
        data_file=spec.data_file,
        limit=spec.limit,
        seed=spec.seed if spec.seed is not None else seed,
    )


def _holdout_rank(seed: int, problem_id: str) -> bytes:
    return hashlib.sha256(f"holdout\x00{seed}\x00{problem_id}".encode()).digest()


def _question_key(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip().lower()


def split_problems(config: StudyConfig) -> dict[str, list[Any]]:
    """Load the sample / validation / test problems, relabel their ``split`` with the role (so the run
    holds ``problems/<role>.parquet``) and refuse overlaps (a test problem seen in training data would
    inflate every fine-tuned score)."""
    from dataclasses import replace

    problems_cfg = config.problems
    sample_spec = problems_cfg.sample
    validation = problems_cfg.validation
    holdout = validation.holdout if validation is not None else None
    if holdout and sample_spec.limit is not None:
        sample_spec = sample_spec.model_copy(update={"limit": sample_spec.limit + holdout})
    sample = load_split(sample_spec, config.seed)
    out: dict[str, list[Any]] = {}
    if holdout:
        if holdout >= len(sample):
            raise StudyError(
                f"problems.validation.holdout is {holdout} but the sample split has only {len(sample)} problems"
            )
        ranked = sorted(sample, key=lambda p: _holdout_rank(config.seed, p.problem_id))
        held = {p.problem_id for p in ranked[:holdout]}
        out["validation"] = [p for p in sample if p.problem_id in held]
        sample = [p for p in sample if p.problem_id not in held]
    elif validation is not None:
        out["validation"] = load_split(validation.as_split(), config.seed)
    out["sample"] = sample
    if problems_cfg.test is not None:
        out["test"] = load_split(problems_cfg.test, config.seed)
    for role, items in out.items():
        if not items:
            raise StudyError(f"problems.{role}: the source returned no problems")
    roles = list(out)
    for i, a in enumerate(roles):
        for b in roles[i + 1 :]:
            ids = {p.problem_id for p in out[a]} & {p.problem_id for p in out[b]}
            texts = {_question_key(p.question) for p in out[a]} & {_question_key(p.question) for p in out[b]}
            if ids or texts:
                raise StudyError(
                    f"problems.{a} and problems.{b} share {max(len(ids), len(texts))} problem(s); "
                    "they must be disjoint (pick other splits, or a validation holdout)"
                )
    return {role: [replace(p, split=role) for p in items] for role, items in out.items()}


def _stage_problems(ctx: StudyContext) -> dict[str, Any]:
    from flopmatch.problems import problems_to_table

    split = split_problems(ctx.config)
    for role in PROBLEM_ROLES:
        path = ctx.run.problems_path(role)
        if role in split:
            write_table(problems_to_table(split[role]), path)
        elif path.exists():
            path.unlink()
    counts = {role: len(items) for role, items in split.items()}
    return {"counts": counts, "summary": ", ".join(f"{n} {r}" for r, n in counts.items())}


def _model_entry(spec: ModelSpec, *, resolve: bool, log: Any, progress: bool = True) -> dict[str, Any]:
    """Role record: the reference, its run-directory key, where it loads from, and its parameter count."""
    from flopmatch.modelinfo import count_parameters
    from flopmatch.models import resolve_model

    path = spec.model
    if resolve:
        log(f"    preparing {spec.model} …")
        if spec.toyworld_spec is not None:
            path = str(_toy_model(spec, progress=progress))
        else:
            path = resolve_model(spec.model, progress=progress)
    # The name samples are filed under: the reference itself, except for a toy model built from a spec,
    # which nothing else could resolve, so its (cached) directory stands in.
    name = path if spec.toyworld_spec is not None else spec.model
    params, source = params_offline(spec)
    if params is None:
        count = count_parameters(path)
        params, source = float(count.total), str(count.source)
    return {
        "ref": spec.model,
        "model": name,
        "key": model_key(name),
        "label": spec.display,
        "path": str(path),
        "params": params,
        "params_source": source,
        "backend": spec.backend,
    }


def _toy_model(spec: ModelSpec, *, progress: bool = True) -> Path:
    """A toy-world model built from ``spec.toyworld_spec``: pretrained on first use, then cached."""
    from flopmatch.toyworld import ensure_model
    from flopmatch.toyworld.models import toy_model_spec

    toy_spec = toy_model_spec(spec.toyworld_spec or {})
    return ensure_model(model_key(spec.model), spec=toy_spec, progress=progress)  # type: ignore[arg-type]


def params_offline(spec: ModelSpec) -> tuple[float | None, str]:
    """A parameter count without downloading or training anything: the override, the registry's
    nominal count (for the offline Qwen pair the upstream models' count, tied embeddings once — their
    GGUFs store an untied copy of the head, which would inflate P by a quarter), or a local config/GGUF.
    The plan stage uses the same rule, so ``--dry-run`` shows the plan the study will run."""
    if spec.params:
        return spec.params, "given in the study config"
    if spec.toyworld_spec is not None:
        from flopmatch.toyworld.models import toy_model_spec

        return float(toy_model_spec(spec.toyworld_spec).n_params), "toy model spec"
    try:
        from flopmatch.models import REGISTRY

        entry = REGISTRY.get(spec.model)
    except ImportError:
        entry = None
    if entry is not None and entry.parameters:
        return float(entry.parameters), f"registry ({entry.upstream})"
    if entry is not None and entry.toyworld_kind is not None:
        from flopmatch.toyworld import PARAMS

        return float(PARAMS[entry.toyworld_kind]), "toy model spec"
    if entry is not None:
        return None, "read from the model after it is prepared (not known before)"
    if Path(spec.model).expanduser().exists():
        from flopmatch.modelinfo import count_parameters

        count = count_parameters(spec.model)
        return float(count.total), str(count.source)
    return None, f"hub id: read at run time (offline: set models.<role>.params for {spec.model})"


def _stage_plan(ctx: StudyContext) -> dict[str, Any]:
    from flopmatch.budget import plan_budgets, plan_for_models

    config = ctx.config
    roles = {
        "wc": _model_entry(config.models.wc, resolve=True, log=ctx.log, progress=ctx.progress),
        "se": _model_entry(config.models.se, resolve=True, log=ctx.log, progress=ctx.progress),
    }
    student = config.paradigms.student
    if student is not None and config.training.enabled and config.paradigms.knowledge_distillation:
        roles["student"] = _model_entry(student, resolve=True, log=ctx.log, progress=ctx.progress)
    n_problems = len(ctx.problems("sample"))
    options = dict(config.budget.options)
    if config.budget.mode == "price":
        options.setdefault("wc_price", config.models.wc.price_per_token)
        options.setdefault("se_price", config.models.se.price_per_token)
    common = dict(
        mode=config.budget.matching, wc_params=roles["wc"]["params"], se_params=roles["se"]["params"],
        rounding=config.budget.rounding, n_problems=n_problems,
    )  # fmt: skip
    if "ledger" in options:  # measured mode from a calibration run's ledger
        plan = plan_for_models(roles["wc"]["model"], roles["se"]["model"], config.budget.se_samples, **common,
                               **options)  # fmt: skip
    else:
        plan = plan_budgets(
            se_samples=config.budget.se_samples, wc_name=roles["wc"]["model"], se_name=roles["se"]["model"],
            wc_param_source=roles["wc"]["params_source"], se_param_source=roles["se"]["params_source"],
            **common, **options,
        )  # fmt: skip
    plan.save(ctx.run)
    write_json(roles, ctx.run.root / ROLES_FILE)
    pairs = ", ".join(f"SE {b.se_samples} vs WC {b.wc_samples}" for b in plan.budgets)
    return {"summary": f"ratio {plan.ratio:.2f}: {pairs} per problem"}


def _stage_sample(ctx: StudyContext) -> dict[str, Any]:
    from flopmatch.sampling import SamplingConfigMismatch, sample

    config = ctx.config
    problems = ctx.problems("sample")
    counts = {"wc": max(w for _, w in ctx.budgets()), "se": max(s for s, _ in ctx.budgets())}
    if config.budget.mode == "advised":  # also what the pilot's advice asked for (flopmatch.study.pilot)
        from flopmatch.advice_run import advised_samples

        counts = {role: max(count, advised_samples(ctx.run, role)) for role, count in counts.items()}
    roles = ctx.roles()
    params, prompt = sampling_settings(config, problems)
    done: dict[str, Any] = {}
    for role in ("wc", "se"):
        spec: ModelSpec = getattr(config.models, role)
        ctx.log(
            f"    {role.upper()} {spec.display}: {len(problems)} problems × {counts[role]} samples ({spec.backend})"
        )
        try:
            summary = sample(
                ctx.run.root,
                model=roles[role]["model"],
                problems=problems,
                samples_per_problem=counts[role],
                backend=spec.backend,
                backend_options=dict(spec.backend_options),
                params=params,
                prompt=prompt,
                budget_seconds=config.sampling.budget_seconds,
                replicas=config.sampling.replicas,
                ray_address=config.sampling.ray_address,
                params_count=int(roles[role]["params"]),
                progress=ctx.progress,
            )
        except SamplingConfigMismatch as exc:
            raise StudyError(
                f"{exc}\nThe samples already in {ctx.run.samples_dir(roles[role]['model'])} were drawn with other "
                "sampling settings; study them in a new run directory (--run), or delete that folder to redraw"
            ) from exc
        if summary.status != "done":
            raise StudyError(
                f"sampling {roles[role]['model']} ended with status {summary.status!r}: {summary.message}; "
                "rerun the study to continue"
            )
        done[role] = {
            "generated": summary.generated,
            "on_disk": summary.on_disk,
            "seconds": summary.seconds,
            "tokens_per_second": summary.tokens_per_second,
        }
    line = ", ".join(f"{r.upper()} {d['on_disk']} samples" for r, d in done.items())
    if config.sampling.allocation.policy != "uniform":  # each budget again under the policy (allocation_study)
        from flopmatch.allocation_study import describe_sets, study_allocated_sets

        sets = study_allocated_sets(ctx, params, prompt)
        line += f"; allocated: {describe_sets(sets)}"
    return {"models": done, "summary": line}


def _stage_grade(ctx: StudyContext) -> dict[str, Any]:
    from flopmatch.grading import grade_run

    written = grade_run(
        ctx.run.root,
        workers=ctx.config.grading.workers,
        timeout=ctx.config.grading.timeout,
        progress=ctx.progress,
    )
    parts = []
    for key, path in sorted(written.items()):
        status = read_table(path, columns=["status"]).column("status").to_pylist()
        parts.append(f"{_role_label(ctx, key)} {status.count('correct')}/{len(status)} correct")
    return {"summary": ", ".join(parts)}


def _role_label(ctx: StudyContext, model: str) -> str:
    """ "WC"/"SE" for a model name or key of this run (the name itself for anything else)."""
    roles = read_json(ctx.run.root / ROLES_FILE) if (ctx.run.root / ROLES_FILE).exists() else {}
    for role in ("wc", "se"):
        info = roles.get(role) or {}
        if model in (info.get("model"), info.get("key")) or model_key(model) == info.get("key"):
            return role.upper()
    return model_key(model)


def _stage_judge(ctx: StudyContext) -> dict[str, Any]:
    from flopmatch.judge import judge_run, make_judge

    judge = make_judge(ctx.config.judge.spec)
    try:
        stats = judge_run(ctx.run.root, judge, per_model=ctx.config.judge.per_model, seed=ctx.config.seed)
    finally:
        judge.close()
    parts = [
        f"{_role_label(ctx, m)} FPR {s.fpr.fpr * 100:.1f}% of {s.fpr.n} judged"
        if s.fpr.n
        else f"{_role_label(ctx, m)}: no answer-correct solution to judge"
        for m, s in stats.items()
    ]
    return {"summary": ", ".join(parts)}


def _stage_analyze(ctx: StudyContext) -> dict[str, Any]:
    from flopmatch.analysis import analyze

    analyze(ctx.run.root, ks=ctx.config.analysis.ks, n_boot=ctx.config.analysis.n_boot, seed=ctx.config.seed)
    from flopmatch.allocation_study import write_study_allocation_metrics

    write_study_allocation_metrics(ctx.run, n_boot=ctx.config.analysis.n_boot, seed=ctx.config.seed)
    return {}


def _stage_sft(ctx: StudyContext) -> dict[str, Any]:
    from flopmatch.sft import build_sft

    config = ctx.config
    roles = ctx.roles()
    built: dict[str, Any] = {}
    for item in sft_sets(config, ctx.budgets()):
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
        result = build_sft(
            ctx.run,
            source_model=roles[item.role]["model"],
            budget=item.budget,
            number_matched_to=control,
            max_per_problem=config.paradigms.max_per_problem,
            name=item.name,
            seed=config.seed,
        )
        if result.samples_per_problem != item.samples_per_problem:
            raise StudyError(
                f"SFT set {item.name}: built from {result.samples_per_problem} samples per problem, the plan says "
                f"{item.samples_per_problem}"
            )
        built[item.name] = {"examples": result.examples, "problems": result.problems_covered}
        ctx.log(f"    {item.name}: {result.examples} examples over {result.problems_covered} problems")
    return {"sets": built, "summary": f"{len(built)} SFT sets"}


def study_train_config(config: StudyConfig) -> Any:
    from flopmatch.training import TrainConfig

    options = dict(config.training.options)
    options.setdefault("seed", config.seed)
    if config.training.preset == "tiny-cpu":
        return TrainConfig.tiny_cpu(**options)
    return TrainConfig(**options)


def _stage_train(ctx: StudyContext) -> dict[str, Any]:
    from flopmatch.training import train
    from flopmatch.workers import run_parallel

    config = ctx.config
    roles = ctx.roles()
    base_cfg = study_train_config(config)
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
        if ctx.run.is_done(sub, digest) and (out_dir / "train_result.json").exists():
            results[job.name] = read_json(ctx.run.root / "state.json")[sub].get("best")
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
        ctx.run.mark_done(sub, digest, best=best, seconds=result.seconds, loss=result.train_loss)
        results[job.name] = best
    write_json({"jobs": results}, ctx.run.root / "models" / "trained.json")
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
    command += [*config.accelerate_args, "-m", "flopmatch.training", "--data", str(data_dir), "--model", base_model,
                "--out", str(out_dir), "--config", str(cfg_path)]  # fmt: skip
    ctx.log("    $ " + " ".join(command))
    completed = subprocess.run(command, check=False)
    if completed.returncode != 0:
        raise StudyError(f"`accelerate launch` exited with {completed.returncode} training {out_dir.name}")


def _stage_eval(ctx: StudyContext) -> dict[str, Any]:
    from flopmatch.evaluation import evaluate
    from flopmatch.workers import run_parallel

    config = ctx.config
    ev = config.evaluation
    roles = ctx.roles()
    test = ctx.problems("test")
    trained = read_json(ctx.run.root / "models" / "trained.json")["jobs"]
    budgets = dict(ctx.budgets())
    jobs = train_jobs(config, ctx.budgets())
    max_tokens = ev.max_tokens or config.sampling.max_tokens

    def eval_call(name: str, model: str) -> tuple[str, str, dict[str, Any]]:
        # evaluate() reuses a saved result with the same settings and model *path*; a model retrained in
        # place must not reuse it, so each evaluation is keyed here by the model's training record too.
        records = [Path(model) / "train_result.json", Path(model).parent / "train_result.json"]
        record = next((r for r in records if r.exists()), None)
        inside = Path(model).is_relative_to(ctx.run.root)
        digest = config_hash(
            {"eval": ev, "max_tokens": max_tokens, "seed": config.seed,
             "model": os.path.relpath(model, ctx.run.root) if inside else model,
             "trained": file_identity(record) if record else None}
        )  # fmt: skip
        kwargs = dict(
            model=model, problems=test, backend=ev.backend, n=ev.n, temperature=ev.temperature,
            max_tokens=max_tokens, seed=config.seed, out_path=ctx.run.eval_path(name),
            backend_options=dict(ev.backend_options), progress_desc=f"eval {name}",
        )  # fmt: skip
        return f"eval:{name}", digest, kwargs

    def drop_stale(name: str) -> None:
        for stale in (ctx.run.eval_path(name), ctx.run.eval_path(name).with_suffix(".json")):
            stale.unlink(missing_ok=True)

    prefetched: set[str] = set()

    def run_eval(name: str, model: str) -> Any:
        sub, digest, kwargs = eval_call(name, model)
        if not ctx.run.is_done(sub, digest) and name not in prefetched:
            drop_stale(name)
        result = evaluate(**kwargs)
        ctx.run.mark_done(sub, digest, metrics=result.metrics)
        return result

    students = dict.fromkeys(j.student_role for j in jobs) if ev.baselines else {}
    wanted = [(f"base-{role}", roles[role]["path"]) for role in students] + [
        (j.name, str(ctx.run.root / trained[j.name])) for j in jobs if trained.get(j.name) is not None
    ]
    pending = [(name, eval_call(name, model)) for name, model in wanted]
    pending = [(name, kwargs) for name, (sub, digest, kwargs) in pending if not ctx.run.is_done(sub, digest)]
    if config.training.workers > 1 and len(pending) > 1:
        # every evaluation at once on the workers; run_eval below then finds each saved result
        ctx.log(f"    {len(pending)} evaluations on {config.training.workers} worker processes")
        for name, _ in pending:
            drop_stale(name)
        run_parallel(evaluate, [kwargs for _, kwargs in pending], config.training.workers)
        prefetched.update(name for name, _ in pending)

    rows: list[dict[str, Any]] = []
    baselines: dict[str, Any] = {}
    if ev.baselines:
        for student_role in dict.fromkeys(j.student_role for j in jobs):
            ctx.log(f"    base {roles[student_role]['label']} (before fine-tuning)")
            baselines[student_role] = run_eval(f"base-{student_role}", roles[student_role]["path"])
    for number, job in enumerate(jobs, 1):
        if trained.get(job.name) is None:
            ctx.log(f"    [{number}/{len(jobs)}] {job.name}: not trained (no data), not evaluated")
            continue
        ctx.log(f"    [{number}/{len(jobs)}] {job.name}")
        result = run_eval(job.name, str(ctx.run.root / trained[job.name]))
        rows += _eval_rows(
            job.paradigm,
            job.data.budget,
            budgets[job.data.budget],
            roles[job.student_role]["label"],
            job.data.kind,
            job.name,
            result,
            seed=job.seed,
        )
    done_pairs = {(j.paradigm, j.data.budget, j.student_role) for j in jobs}
    for paradigm, budget, student_role in sorted(done_pairs):
        if student_role in baselines:
            rows += _eval_rows(
                paradigm,
                budget,
                budgets[budget],
                roles[student_role]["label"],
                "base",
                f"base-{student_role}",
                baselines[student_role],
            )
    write_table(rows, ctx.run.metrics_dir / "paradigms.parquet")
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


def _stage_report(ctx: StudyContext) -> dict[str, Any]:
    from flopmatch.report import build_report

    paths = build_report(ctx.run.root)
    return {"summary": str(paths.html)}


STAGE_RUNNERS = {
    "problems": _stage_problems,
    "plan": _stage_plan,
    "pilot": stage_pilot,
    "sample": _stage_sample,
    "grade": _stage_grade,
    "judge": _stage_judge,
    "analyze": _stage_analyze,
    "sft": _stage_sft,
    "train": _stage_train,
    "eval": _stage_eval,
    "report": _stage_report,
}
