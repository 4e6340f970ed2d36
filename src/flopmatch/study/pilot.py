"""The study's ``pilot`` stage (``budget.mode: advised``) and the forecast-vs-measured check it enables.

Before the sample stage, the pilot stage runs ``flopmatch advise`` inside the study: a pilot of
``budget.pilot.samples`` samples per problem from WC and SE on a seeded subset of the sample split
(sampled with exactly the study's sampling settings, so the pilot's samples are the first ones of the
full run), graded, priced in nominal FLOPs from the pilot's own token counts. For every budget of the
plan — the FLOPs that the plan's SE samples per problem cost — it ranks WC alone, SE alone and their
mixtures, and writes ``pilot/advice.json`` (one advice per budget) and a frontier plot per budget.

The compute-matched WC-vs-SE comparison is untouched: the sample stage still draws the plan's WC and
SE counts, and additionally whatever the advice asked for beyond them (:func:`flopmatch.advice_run.advised_samples`), so
every forecast can be set against what was then measured on the whole sample split
(:func:`flopmatch.advice_run.forecast_vs_measured`, the report's "Pilot forecast vs measured" section).
"""

from __future__ import annotations

from typing import Any

from flopmatch.store import write_json
from flopmatch.study.context import StudyContext, sampling_settings


def stage_pilot(ctx: StudyContext) -> dict[str, Any]:
    """Run the pilot and advise at every budget of the plan (see the module docstring)."""
    from flopmatch.advise import BudgetOptions, advise_from_pilot, frontier_plot, run_pilot
    from flopmatch.mixture import Forecaster
    from flopmatch.pilot import Budget, PilotModelSpec

    config, run = ctx.config, ctx.run
    settings = config.budget.pilot
    problems = ctx.problems("sample")
    roles = ctx.roles()
    plan = ctx.plan()
    specs = [
        PilotModelSpec(
            model=roles[role]["model"],
            backend=spec.backend,
            backend_options=dict(spec.backend_options),
            params=roles[role]["params"],
            label=spec.display,
        )  # fmt: skip
        for role, spec in (("wc", config.models.wc), ("se", config.models.se))
    ]
    params, prompt = sampling_settings(config, problems)
    largest = max(int(b.se_samples) for b in plan.budgets)
    pilots, priced = run_pilot(
        run.root, specs, problems, budget=BudgetOptions(match=f"{roles['se']['model']}:{largest}"),
        pilot_samples=settings.samples, pilot_problems=settings.problems, seed=config.seed,
        sampling_params=params, prompt=prompt, grade_workers=config.grading.workers,
        grade_timeout=config.grading.timeout, progress=ctx.progress, log=lambda m: ctx.log(f"    {m}"),
    )  # fmt: skip
    forecaster = Forecaster(
        pilots,
        n_problems=len(problems),
        objective=settings.objective,
        n_boot=settings.n_boot,
        seed=config.seed,
    )
    per_se_sample = priced.amount / largest  # the FLOPs one SE sample per problem costs over the split
    entries, parts = [], []
    run.pilot_dir.mkdir(parents=True, exist_ok=True)
    for point in plan.budgets:
        se_k, wc_k = int(point.se_samples), int(point.wc_samples)
        budget = Budget(per_se_sample * se_k, "flops", f"SE {se_k} vs WC {wc_k} per problem (nominal FLOPs)")
        advice = advise_from_pilot(
            pilots, budget, n_problems=len(problems), objective=settings.objective, forecaster=forecaster
        )
        frontier_plot(advice, run.pilot_dir / f"frontier-se{se_k}.png")
        entries.append({"se_samples": se_k, "wc_samples": wc_k, "advice": advice.to_dict()})
        parts.append(f"SE {se_k}: {advice.best.label}" + ("" if advice.decision.decided else " (undecided)"))
    roles_out = {"wc": pilots[0].name, "se": pilots[1].name}
    write_json({"objective": settings.objective, "roles": roles_out, "budgets": entries}, run.advice_path)
    return {"summary": "; ".join(parts), "pilot_problems": forecaster.n_pilot}


