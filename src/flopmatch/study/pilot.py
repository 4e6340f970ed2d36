"""The study's ``pilot`` stage (``budget.mode: advised``) and the forecast-vs-measured check it enables.

Before the sample stage, the pilot stage runs ``flopmatch advise`` inside the study: a pilot of
``budget.pilot.samples`` samples per problem from WC and SE on a seeded subset of the sample split
(sampled with exactly the study's sampling settings, so the pilot's samples are the first ones of the
full run), graded, priced in nominal FLOPs from the pilot's own token counts. For every budget of the
plan — the FLOPs that the plan's SE samples per problem cost — it ranks WC alone, SE alone and their
mixtures, and writes ``pilot/advice.json`` (one advice per budget) and a frontier plot per budget.

The compute-matched WC-vs-SE comparison is untouched: the sample stage still draws the plan's WC and
SE counts, and additionally whatever the advice asked for beyond them (:func:`advised_samples`), so
every forecast can be set against what was then measured on the whole sample split
(:func:`forecast_vs_measured`, the report's "Pilot forecast vs measured" section).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from flopmatch.store import RunDir, read_json, write_json
from flopmatch.study.context import StudyContext

PILOT_DIR = "pilot"
ADVICE_FILE = "advice.json"


def advice_path(run: RunDir) -> Path:
    return run.root / PILOT_DIR / ADVICE_FILE


def stage_pilot(ctx: StudyContext) -> dict[str, Any]:
    """Run the pilot and advise at every budget of the plan (see the module docstring)."""
    from flopmatch.advise import BudgetOptions, advise_from_pilot, frontier_plot, run_pilot
    from flopmatch.mixture import Forecaster
    from flopmatch.pilot import Budget, PilotModelSpec
    from flopmatch.study.stages import sampling_settings

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
    (run.root / PILOT_DIR).mkdir(parents=True, exist_ok=True)
    for point in plan.budgets:
        se_k, wc_k = int(point.se_samples), int(point.wc_samples)
        budget = Budget(per_se_sample * se_k, "flops", f"SE {se_k} vs WC {wc_k} per problem (nominal FLOPs)")
        advice = advise_from_pilot(
            pilots, budget, n_problems=len(problems), objective=settings.objective, forecaster=forecaster
        )
        frontier_plot(advice, run.root / PILOT_DIR / f"frontier-se{se_k}.png")
        entries.append({"se_samples": se_k, "wc_samples": wc_k, "advice": advice.to_dict()})
        parts.append(f"SE {se_k}: {advice.best.label}" + ("" if advice.decision.decided else " (undecided)"))
    roles_out = {"wc": pilots[0].name, "se": pilots[1].name}
    write_json({"objective": settings.objective, "roles": roles_out, "budgets": entries}, advice_path(run))
    return {"summary": "; ".join(parts), "pilot_problems": forecaster.n_pilot}


def _allocations(entry: dict[str, Any]) -> list[tuple[str, dict[str, int], dict[str, Any]]]:
    """The advised allocation and each single model's, with their forecasts, for one budget."""
    candidates = entry["advice"]["candidates"]
    out = [("advised", candidates[0]["samples"], candidates[0])]
    for candidate in candidates[1:]:
        if candidate["kind"] == "model":
            out.append(("alone", candidate["samples"], candidate))
    if candidates[0]["kind"] == "model":
        out.append(("alone", candidates[0]["samples"], candidates[0]))
    return out


def advised_samples(run: RunDir, role: str) -> int:
    """The most samples per problem any advised or single-model allocation asks of ``role`` (0: none)."""
    path = advice_path(run)
    if not path.exists():
        return 0
    data = read_json(path)
    name = data["roles"][role]
    return max(
        (int(samples.get(name, 0)) for entry in data["budgets"] for _, samples, _ in _allocations(entry)),
        default=0,
    )


def forecast_vs_measured(run_dir: str | Path, n_boot: int = 200, seed: int = 0) -> pd.DataFrame | None:
    """Each budget's advised and single-model forecasts next to what the full sample set measured.

    Measured values are the unbiased estimates at the allocation's sample counts on every problem of
    the sample split with enough graded samples (coverage: 1 − mean_i Π_m C(n−c, k_m)/C(n, k_m);
    unique: Σ_m expected distinct correct among k_m of n), with a bootstrap interval over problems.
    ``None`` before the pilot or the grading has run.
    """
    from flopmatch.pilot import PilotError, graded_solutions

    run = RunDir(run_dir)
    if not advice_path(run).exists():
        return None
    data = read_json(advice_path(run))
    roles = read_json(run.root / "roles.json")
    ids = list(pd.read_parquet(run.problems_path("sample"), columns=["problem_id"])["problem_id"])
    try:
        solutions = {
            data["roles"][r]: graded_solutions(run.root, roles[r]["model"], ids) for r in ("wc", "se")
        }
    except PilotError:
        return None
    rows = []
    for entry in data["budgets"]:
        for kind, samples, candidate in _allocations(entry):
            weights = {name: 1.0 - float(info.get("fpr") or 0.0) if data["objective"] == "valid-unique" else 1.0
                       for name, info in entry["advice"]["models"].items()}  # fmt: skip
            value, lo, hi, used = _measured(solutions, samples, weights, data["objective"], n_boot, seed)
            rows.append({
                "budget_se_samples": entry["se_samples"], "budget_wc_samples": entry["wc_samples"], "role": kind,
                "allocation": candidate["label"], "forecast": candidate["forecast"],
                "forecast_low": candidate["low"], "forecast_high": candidate["high"], "measured": value,
                "measured_low": lo, "measured_high": hi, "problems": used, "objective": data["objective"],
                "decided": entry["advice"]["decided"],
            })  # fmt: skip
    return pd.DataFrame(rows).drop_duplicates(["budget_se_samples", "allocation"])


def _measured(
    solutions: dict[str, pd.DataFrame],
    samples: dict[str, int],
    weights: dict[str, float],
    objective: str,
    n_boot: int,
    seed: int,
) -> tuple[float, float, float, int]:
    from flopmatch.metrics import expected_unique_at_k, pass_at_k

    per_problem = None
    enough = None
    for name, k in samples.items():
        if k <= 0:
            continue
        table = solutions[name]
        ok = (table["n"] >= k).to_numpy()
        enough = ok if enough is None else enough & ok
        if objective == "coverage":
            values = np.array(
                [
                    1 - pass_at_k(n, c, k) if n >= k else np.nan
                    for n, c in zip(table["n"], table["c"], strict=True)
                ]
            )
            per_problem = values if per_problem is None else per_problem * values
        else:
            values = np.array([
                expected_unique_at_k(n, m, k) if n >= k and m else 0.0
                for n, m in zip(table["n"], table["multiplicities"], strict=True)
            ])  # fmt: skip
            values = weights.get(name, 1.0) * values
            per_problem = values if per_problem is None else per_problem + values
    if per_problem is None or enough is None or not enough.any():
        return float("nan"), float("nan"), float("nan"), 0
    chosen = per_problem[enough]
    if objective == "coverage":
        chosen = 1.0 - chosen
    rng = np.random.default_rng(seed)
    boot = np.array([chosen[rng.integers(0, len(chosen), len(chosen))].mean() for _ in range(n_boot)])
    return (
        float(chosen.mean()),
        float(np.percentile(boot, 2.5)),
        float(np.percentile(boot, 97.5)),
        int(len(chosen)),
    )
