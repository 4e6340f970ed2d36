"""The data stages of a study, from the problems to the analysis, and the report stage: each reads what
earlier stages wrote into the run directory and writes its own outputs there. Sampling is resumable
inside too, so a killed study picks up where it stopped and never redoes finished work. The training
stages (sft, train, eval) are in ``flopmatch.study.stages_training``; ``flopmatch.study.registry``
binds every stage to its config, inputs and outputs.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any

from flopmatch.store import model_key, queries, read_table, write_json, write_table
from flopmatch.study.config import ModelSpec, SplitConfig, StudyConfig
from flopmatch.study.context import (
    PROBLEM_ROLES,
    StudyContext,
    StudyError,
    sampling_settings,
)
from flopmatch.study.spec_models import spec_model


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


def stage_problems(ctx: StudyContext) -> dict[str, Any]:
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
    built = _spec_model(spec)
    if resolve:
        log(f"    preparing {spec.model} …")
        if built is not None:
            path = str(built.prepare(progress=progress))
        else:
            path = resolve_model(spec.model, progress=progress)
    # The name samples are filed under: the reference itself, except for a model built from a spec (the toy
    # world's `toyworld_spec`), which nothing else could resolve, so its (cached) directory stands in.
    name = path if built is not None else spec.model
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


def _spec_model(spec: ModelSpec):
    """The model a dataset's own code builds from ``spec``'s ``<dataset>_spec`` (cached under the model's
    key; nothing built yet), or None for a model loaded by reference."""
    found = spec.dataset_spec()
    return None if found is None else spec_model(found[0], model_key(spec.model), found[1])


def params_offline(spec: ModelSpec) -> tuple[float | None, str]:
    """A parameter count without downloading or training anything: the override, the registry's
    nominal count (for the offline Qwen pair the upstream models' count, tied embeddings once — their
    GGUFs store an untied copy of the head, which would inflate P by a quarter), or a local config/GGUF.
    The plan stage uses the same rule, so ``--dry-run`` shows the plan the study will run."""
    if spec.params:
        return spec.params, "given in the study config"
    built = _spec_model(spec)
    if built is not None:  # a model a dataset builds from the study's spec (the toy world's own shapes)
        return float(built.parameters), built.parameters_source
    try:
        from flopmatch.models import registry

        entry = registry().get(spec.model)  # with the models of datasets registered since import
    except ImportError:
        entry = None
    if entry is not None and entry.parameters:
        return float(entry.parameters), f"registry ({entry.upstream})"
    if entry is not None and entry.builder is not None:  # a model a dataset brings (the toy world's pair)
        built = entry.built_model()
        return float(built.parameters), built.parameters_source
    if entry is not None:
        return None, "read from the model after it is prepared (not known before)"
    if Path(spec.model).expanduser().exists():
        from flopmatch.modelinfo import count_parameters

        count = count_parameters(spec.model)
        return float(count.total), str(count.source)
    return None, f"hub id: read at run time (offline: set models.<role>.params for {spec.model})"


def stage_plan(ctx: StudyContext) -> dict[str, Any]:
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
    write_json(roles, ctx.run.roles_path)
    pairs = ", ".join(f"SE {b.se_samples} vs WC {b.wc_samples}" for b in plan.budgets)
    return {"summary": f"ratio {plan.ratio:.2f}: {pairs} per problem"}


def stage_sample(ctx: StudyContext) -> dict[str, Any]:
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


def stage_grade(ctx: StudyContext) -> dict[str, Any]:
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
    roles = queries.read_roles(ctx.run)
    for role in ("wc", "se"):
        info = roles.get(role) or {}
        if model in (info.get("model"), info.get("key")) or model_key(model) == info.get("key"):
            return role.upper()
    return model_key(model)


def stage_judge(ctx: StudyContext) -> dict[str, Any]:
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


def stage_analyze(ctx: StudyContext) -> dict[str, Any]:
    from flopmatch.analysis import analyze

    analyze(ctx.run.root, ks=ctx.config.analysis.ks, n_boot=ctx.config.analysis.n_boot, seed=ctx.config.seed)
    from flopmatch.allocation_study import write_study_allocation_metrics

    write_study_allocation_metrics(ctx.run, n_boot=ctx.config.analysis.n_boot, seed=ctx.config.seed)
    return {}


def stage_report(ctx: StudyContext) -> dict[str, Any]:
    from flopmatch.report import build_report

    paths = build_report(ctx.run.root)
    return {"summary": str(paths.html)}
