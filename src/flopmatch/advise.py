"""Decide before you spend: which model (or mix of models) to sample, from a small pilot.

``advise`` runs a pilot (``flopmatch.pilot``: n seeded samples per problem on a seeded subset of the
problems, from every candidate model, graded), measures what one sample of each model costs, and
forecasts — for every allocation of a total budget B over the models — the objective it maximises:

* ``coverage``: the share of the problem set with at least one correct sample;
* ``unique``: expected distinct correct solutions per problem (the diversity the paper's WC data has);
* ``valid-unique``: the same times (1 − FPR) of each model (false positives do not teach; Stroebl et
  al. 2024), with the FPR given per model or read from the run's judgments.

An allocation gives model m a share s_m of B, hence k_m = floor(s_m · B / (N · cost_m)) samples per
problem of the N problems (a seeded prefix: the pilot's samples are the first of them). Shares are
searched on a grid (0, 10, …, 100% by default), so single models and mixtures are ranked together.

Coverage keeps the correlation between models across problems (a problem hard for one model is often
hard for the other): with P(all k samples of m fail on problem i | pilot) computed per problem,

    coverage = 1 − [ Σ_{i ∈ pilot} Π_m miss_mi(k_m) + (N − N_p) · mean_{i ∈ pilot} Π_m fresh_mi(k_m) ] / N

where ``miss_mi(k)`` counts the pilot's own samples (the first k of the final run include them):
C(n−c, k)/C(n, k) for k ≤ n (the exact chance that the first k of the n pilot samples all failed) and,
for k > n, 1[c = 0] · E[(1 − p)^(k−n) | n, c] under the fitted Beta prior (``flopmatch.forecast``);
``fresh_mi(k)`` = E[(1 − p)^k | n, c] is the posterior predictive for a problem like pilot problem i,
so the problems outside the pilot are represented by the pilot's problems (whose posteriors average
to the fitted prior) with their cross-model correlation intact. Unique correct solutions add up over
models (distinct models rarely write the same text), so a mixture's yield is the sum of each model's
forecast (``UniqueFit.unique_at_k``).

Intervals are a paired percentile bootstrap over pilot problems: each resample refits every model's
prior, in the family chosen on the full pilot and (``intervals="families"``, the default) in every other
family the pilot cannot rule out (held-out log-likelihood within 2 nats, as ``flopmatch forecast``
does); the interval is the union over every combination of those families across the models. The
recommendation is the allocation with the best forecast; it is *decided* when the interval of its paired
difference to the runner-up (the best other single model, or for a mixture the best single model)
excludes 0 in every family combination. Otherwise the advice
says so and how many more pilot problems would separate a difference of the size seen: interval
widths shrink like 1/sqrt(pilot problems).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from flopmatch.advise_plot import frontier_plot
from flopmatch.grading import grade_run
from flopmatch.mixture import (
    DEFAULT_STEP,
    OBJECTIVES,
    AllocationError,
    AllocationForecast,
    Forecaster,
    frontier_curves,
    samples_for,
    share_grid,
)
from flopmatch.pilot import (
    Budget,
    ModelCost,
    PilotModel,
    PilotModelSpec,
    budget_unit,
    load_pilot,
    lookup,
    model_names,
    parse_match,
    parse_model_values,
    resolve_budget,
    sample_pilot,
)
from flopmatch.pilot import pilot_problems as pilot_subset
from flopmatch.problems import Problem
from flopmatch.store.layout import ADVICE_FILE  # the file name a pilot's advice is written under

TARGET_PILOT_FRACTION = 0.1  # the default pilot costs about a tenth of the budget or less
MIN_PILOT_PROBLEMS = 20  # fewer problems cannot fit a prior worth forecasting from


class AdviseError(AllocationError):
    """Advise cannot go on (a budget too small for one sample, an unknown model in --price/--fpr).

    Bad option values raise :class:`flopmatch.pilot.PilotError`; both are ValueErrors."""


# --------------------------------------------------------------------------- the advice


@dataclass(frozen=True)
class Candidate:
    """One allocation of the budget: shares, the samples per problem they buy, and the forecast."""

    shares: dict[str, float]
    samples: dict[str, int]
    cost: float
    forecast: float
    low: float
    high: float

    @property
    def models(self) -> list[str]:
        return [name for name, k in self.samples.items() if k > 0]

    @property
    def is_single(self) -> bool:
        return len(self.models) == 1

    @property
    def label(self) -> str:
        if self.is_single:
            return f"{self.models[0]} ×{self.samples[self.models[0]]}"
        return " + ".join(
            f"{name} ×{k} ({self.shares[name]:.0%})" for name, k in self.samples.items() if k > 0
        )

    def recommendation(self) -> dict[str, Any]:
        """The ``recommendation`` entry of advice.json."""
        out: dict[str, Any] = (
            {"model": self.models[0], "samples_per_problem": self.samples[self.models[0]]}
            if self.is_single
            else {
                "mixture": {m: self.shares[m] for m in self.models},
                "samples_per_problem": dict(self.samples),
            }
        )
        return out | {"forecast": self.forecast, "interval": [self.low, self.high], "cost": self.cost}

    def to_dict(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "kind": "model" if self.is_single else "mixture",
            **asdict(self),
            "interval": [self.low, self.high],
        }


@dataclass(frozen=True)
class Decision:
    """Whether the pilot separates the recommendation from the runner-up (paired bootstrap)."""

    decided: bool
    runner_up: Candidate | None
    difference: float | None = None
    difference_low: float | None = None
    difference_high: float | None = None
    more_pilot_problems: int | None = None  # None when decided, or when no pilot size would separate them
    more_pilot_samples: int | None = None  # the extra samples, all models together

    def to_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in asdict(self).items() if k != "runner_up"}
        out["runner_up"] = self.runner_up.label if self.runner_up else None
        return out


@dataclass
class Advice:
    objective: str
    budget: Budget
    n_problems: int
    pilot: dict[str, Any]
    models: dict[str, dict[str, Any]]
    candidates: list[Candidate]  # ranked, best first
    decision: Decision
    frontier: dict[str, list[dict[str, float]]] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    @property
    def best(self) -> Candidate:
        return self.candidates[0]

    @property
    def sentence(self) -> str:
        return advice_sentence(self)

    def to_dict(self) -> dict[str, Any]:
        return {
            "recommendation": self.best.recommendation(),
            "decided": self.decision.decided,
            "sentence": self.sentence,
            "objective": self.objective,
            "budget": asdict(self.budget),
            "problems": self.n_problems,
            "pilot": self.pilot,
            "models": self.models,
            "decision": self.decision.to_dict(),
            "candidates": [c.to_dict() | {"rank": i + 1} for i, c in enumerate(self.candidates)],
            "frontier": self.frontier,
            "warnings": self.warnings,
        }


def _fmt_value(value: float, objective: str, *, signed: bool = False) -> str:
    if objective == "coverage":
        return f"{100 * value:+.1f} points" if signed else f"{100 * value:.1f}%"
    return f"{value:+.2f}" if signed else f"{value:.2f}"


def _fmt_interval(lo: float, hi: float, objective: str) -> str:
    if objective == "coverage":
        return f"[{100 * lo:.1f}, {100 * hi:.1f}]"
    return f"[{lo:.2f}, {hi:.2f}]"


def advice_sentence(advice: Advice) -> str:
    """The advice in one plain sentence (what to sample, how sure, what the pilot cost)."""
    best, d, obj = advice.best, advice.decision, advice.objective
    what = {
        "coverage": "coverage",
        "unique": "unique correct per problem",
        "valid-unique": "valid unique correct per problem",
    }[obj]
    cost = (
        f"the pilot ({advice.pilot['problems']} problems × {advice.pilot['samples_per_problem']} samples per "
        f"model) cost {advice.pilot['fraction_of_budget']:.1%} of the budget"
    )
    head = f"{best.label}: forecast {what} {_fmt_value(best.forecast, obj)} {_fmt_interval(best.low, best.high, obj)}"
    if d.runner_up is None:
        return f"Sample {head}; {cost}."
    other = (
        f"{d.runner_up.label} ({_fmt_value(d.runner_up.forecast, obj)}), difference "
        f"{_fmt_value(d.difference, obj, signed=True)} {_fmt_interval(d.difference_low, d.difference_high, obj)}"
    )
    if d.decided:
        return f"Sample {head}; it beats {other}; {cost}."
    if d.more_pilot_problems is not None:
        more = (
            f"about {d.more_pilot_problems} more pilot problems ({d.more_pilot_samples} more samples) "
            "would separate a difference this large"
        )
    elif d.difference is not None and d.difference > 0:  # too wide even with every problem in the pilot
        more = f"even a pilot on all {advice.n_problems} problems would not separate a difference this large"
    else:
        more = "they forecast the same: they are about as good"
    return f"The pilot cannot decide between {head} and {other}; {more}; {cost}."


def _decide(
    candidates: list[Candidate],
    result: AllocationForecast,
    order: np.ndarray,
    *,
    n_pilot: int,
    n_problems: int,
    pilot_samples: int,
    n_models: int,
) -> Decision:
    best = int(order[0])
    singles = [int(i) for i in order[1:] if candidates[i].is_single]
    if candidates[best].is_single:
        singles = [i for i in singles if candidates[i].models != candidates[best].models]
    if not singles:
        return Decision(True, None)
    runner = singles[0]
    lo, hi = result.difference(best, runner)
    diff = float(result.point[best] - result.point[runner])
    decided = lo > 0
    more = more_samples = None
    if not decided and diff > 0:
        half = (hi - lo) / 2
        needed = math.ceil(n_pilot * (half / diff) ** 2)
        if needed <= n_problems:
            more = max(needed - n_pilot, 1)
            more_samples = more * pilot_samples * n_models
    return Decision(decided, candidates[runner], diff, lo, hi, more, more_samples)


def advise_from_pilot(
    pilots: Sequence[PilotModel],
    budget: Budget,
    *,
    n_problems: int,
    objective: str = "coverage",
    step: float = DEFAULT_STEP,
    n_boot: int = 200,
    seed: int = 0,
    forecaster: Forecaster | None = None,
    intervals: str = "families",
    frontier: bool = True,
) -> Advice:
    """Rank every allocation of ``budget`` over the pilots' models and decide (pure: no I/O).

    ``intervals``: see :class:`~flopmatch.mixture.Forecaster` (ignored when ``forecaster`` is given).
    ``frontier``: also forecast each model alone up to twice the budget (the frontier plot's curves; a
    backtest that only scores the pick skips them)."""
    names = [p.name for p in pilots]
    if len(set(names)) != len(names):
        raise AdviseError(f"two models share a name: {names}")
    costs = [p.cost.per_sample(budget.unit) for p in pilots]
    forecaster = forecaster or Forecaster(
        pilots, n_problems=n_problems, objective=objective, n_boot=n_boot, seed=seed, intervals=intervals
    )
    shares, allocs = _allocations(names, costs, budget, n_problems, step)
    result = forecaster.evaluate(allocs)
    point, (lo, hi) = result.point, result.interval()
    candidates = [
        Candidate(
            dict(zip(names, s, strict=True)),
            dict(zip(names, k, strict=True)),
            float(n_problems * np.dot(k, costs)),
            float(point[i]),
            float(lo[i]),
            float(hi[i]),
        )
        for i, (s, k) in enumerate(zip(shares, allocs, strict=True))
    ]
    # best first; among equal forecasts the simpler (fewer models), then the cheaper allocation
    order = np.array(
        sorted(
            range(len(candidates)),
            key=lambda i: (-round(point[i], 12), len(candidates[i].models), candidates[i].cost),
        )
    )
    n_pilot = forecaster.n_pilot
    pilot_samples = int(round(float(np.mean(pilots[0].counts["n"]))))
    decision = _decide(
        candidates,
        result,
        order,
        n_pilot=n_pilot,
        n_problems=n_problems,
        pilot_samples=pilot_samples,
        n_models=len(pilots),
    )
    pilot = _pilot_summary(pilots, costs, budget, n_pilot=n_pilot, pilot_samples=pilot_samples)
    advice = Advice(
        objective,
        budget,
        n_problems,
        pilot,
        _model_table(pilots, forecaster, costs),
        [candidates[i] for i in order],
        decision,
    )
    if pilot["fraction_of_budget"] > TARGET_PILOT_FRACTION:
        advice.warnings.append(
            f"the pilot cost {pilot['fraction_of_budget']:.0%} of the budget (target: "
            f"{TARGET_PILOT_FRACTION:.0%}); its samples are reused by the full run"
        )
    if frontier:
        advice.frontier = frontier_curves(pilots, forecaster, costs, budget.amount, n_problems)
    return advice


def _allocations(
    names: Sequence[str], costs: Sequence[float], budget: Budget, n_problems: int, step: float
) -> tuple[list[tuple[float, ...]], list[tuple[int, ...]]]:
    """The distinct allocations the share grid buys (shares, samples per problem per model)."""
    shares, allocs = [], []
    for s in share_grid(len(names), step):
        k = samples_for(s, budget.amount, n_problems, costs)
        # a share too small to buy one sample per problem wastes budget: the allocation is dominated
        if any(k) and all(ki > 0 for ki, si in zip(k, s, strict=True) if si > 0) and k not in allocs:
            shares.append(s)
            allocs.append(k)
    if not allocs:
        cheapest = min(range(len(names)), key=costs.__getitem__)
        raise AdviseError(
            f"the budget ({budget.amount:.4g} {budget.unit}) does not buy one sample per problem of any model "
            f"(the cheapest, {names[cheapest]}, needs {n_problems * costs[cheapest]:.4g} {budget.unit})"
        )
    return shares, allocs


def _pilot_summary(
    pilots: Sequence[PilotModel], costs: Sequence[float], budget: Budget, *, n_pilot: int, pilot_samples: int
) -> dict[str, Any]:
    """The ``pilot`` entry of advice.json: its size, its nominal FLOPs and its cost against the budget."""
    spend = sum(p.cost.samples * c for p, c in zip(pilots, costs, strict=True))
    flops = [p.cost.per_sample("flops") * p.cost.samples if p.cost.params else None for p in pilots]
    return {
        "problems": n_pilot,
        "samples_per_problem": pilot_samples,
        "flops": sum(flops) if all(f is not None for f in flops) else None,
        "cost": spend,
        "fraction_of_budget": spend / budget.amount,
    }


def _model_table(
    pilots: Sequence[PilotModel], forecaster: Forecaster, costs: Sequence[float]
) -> dict[str, Any]:
    out = {}
    for p, m, cost in zip(pilots, forecaster.models, costs, strict=True):
        out[p.name] = {
            "model": p.model,
            "cost_per_sample": cost,
            "fit": {"family": m.fit.family, "params": m.fit.params},
            "interval_families": list(m.fits),
            "pilot_correct": float(np.mean(m.c / np.maximum(m.n, 1))),
            "pilot_coverage": float(np.mean(m.c > 0)),
            "fpr": p.fpr,
            "fpr_source": p.fpr_source,
            **p.cost.to_dict(),
        }
    return out


__all__ = [
    "OBJECTIVES",
    "Advice",
    "AdviseError",
    "Budget",
    "Candidate",
    "Decision",
    "Forecaster",
    "ModelCost",
    "PilotModel",
    "advice_sentence",
    "advise_from_pilot",
    "parse_match",
    "parse_model_values",
    "resolve_budget",
    "samples_for",
    "share_grid",
]


# --------------------------------------------------------------------------- the side-effecting edge


FRONTIER_FILE = "advice_frontier.png"


@dataclass(frozen=True)
class BudgetOptions:
    """The budget as asked for: exactly one of these (see :func:`flopmatch.pilot.resolve_budget`)."""

    flops: float | None = None
    dollars: float | None = None
    seconds: float | None = None
    match: str | None = None


def advise(
    run_dir: str | Path,
    models: Sequence[str | PilotModelSpec],
    problems: Sequence[Problem],
    *,
    pilot_samples: int = 4,
    pilot_problems: int | None = None,
    budget_flops: float | None = None,
    budget_dollars: float | None = None,
    budget_seconds: float | None = None,
    match: str | None = None,
    objective: str = "coverage",
    step: float = DEFAULT_STEP,
    n_boot: int = 200,
    seed: int = 0,
    intervals: str = "families",
    **pilot_options: Any,
) -> Advice:
    """Run (or resume) the pilot in ``run_dir``, forecast, recommend; writes advice.json and the frontier plot.

    ``models``: references (registry name, directory, hub id) sampled with the vllm backend, or
    :class:`~flopmatch.pilot.PilotModelSpec` for another backend. ``pilot_options`` go to
    :func:`run_pilot` (prices, fprs, sampling_params, prompt, grade_workers, progress, log).
    """
    budget_options = BudgetOptions(budget_flops, budget_dollars, budget_seconds, match)
    pilots, budget = run_pilot(
        run_dir, models, problems, budget=budget_options, pilot_samples=pilot_samples,
        pilot_problems=pilot_problems, seed=seed, **pilot_options,
    )  # fmt: skip
    advice = advise_from_pilot(
        pilots, budget, n_problems=len(problems), objective=objective, step=step, n_boot=n_boot, seed=seed,
        intervals=intervals,
    )
    write_advice(advice, run_dir)
    return advice


def run_pilot(
    run_dir: str | Path,
    models: Sequence[str | PilotModelSpec],
    problems: Sequence[Problem],
    *,
    budget: BudgetOptions,
    pilot_samples: int = 4,
    pilot_problems: int | None = None,
    seed: int = 0,
    prices: dict[str, float] | None = None,
    fprs: dict[str, float] | None = None,
    sampling_params: Any = None,
    prompt: Any = None,
    grade_workers: int | None = None,
    grade_timeout: float = 5.0,
    progress: bool = True,
    log: Any = None,
) -> tuple[list[PilotModel], Budget]:
    """Sample and grade the pilot (resumable), then read each model's counts and costs and price the budget.

    Without ``pilot_problems`` the pilot starts on a seeded subset of ``MIN_PILOT_PROBLEMS`` problems,
    measures what a sample costs, and grows (nested) to the most problems that keep its cost within a
    tenth of the budget.
    """
    log = log or (lambda _msg: None)
    specs = [m if isinstance(m, PilotModelSpec) else PilotModelSpec(model=m) for m in models]
    problems = list(problems)
    if not specs or not problems:
        raise AdviseError("give at least one model and one problem")
    if pilot_samples < 1:
        raise AdviseError(f"--pilot-samples must be >= 1, got {pilot_samples}")
    _check_names(specs, prices or {}, "--price")
    _check_names(specs, fprs or {}, "--fpr")
    if budget.match is not None:  # a misspelt model fails before the pilot spends anything
        name, _ = parse_match(budget.match)
        if not any(name in model_names(s) for s in specs):
            raise AdviseError(f"--match {budget.match!r}: {name!r} is not one of the models "
                              f"({', '.join(s.model for s in specs)})")  # fmt: skip
    priced = all(lookup(prices or {}, s) is not None for s in specs)
    budget_unit(
        flops=budget.flops, dollars=budget.dollars, seconds=budget.seconds, match=budget.match, priced=priced
    )

    def measured(size: int) -> tuple[list[PilotModel], Budget]:
        subset = pilot_subset(problems, size, seed)
        log(f"pilot: {len(subset)} problems × {pilot_samples} samples per model")
        sample_pilot(run_dir, specs, subset, samples=pilot_samples, sampling_params=sampling_params, prompt=prompt,
                     progress=progress)  # fmt: skip
        grade_run(run_dir, workers=grade_workers, timeout=grade_timeout, progress=progress)
        ids = [p.problem_id for p in subset]
        pilots = load_pilot(run_dir, specs, ids, pilot_samples, prices=prices, fprs=fprs)
        priced_budget = resolve_budget(flops=budget.flops, dollars=budget.dollars, seconds=budget.seconds,
                                       match=budget.match, pilots=pilots, n_problems=len(problems))  # fmt: skip
        return pilots, priced_budget

    size = min(len(problems), pilot_problems or MIN_PILOT_PROBLEMS)
    pilots, priced_budget = measured(size)
    if pilot_problems is None:
        per_problem = pilot_samples * sum(p.cost.per_sample(priced_budget.unit) for p in pilots)
        target = min(
            len(problems), max(size, int(TARGET_PILOT_FRACTION * priced_budget.amount / per_problem))
        )
        if target > size:
            pilots, priced_budget = measured(target)
    return pilots, priced_budget


def _check_names(specs: Sequence[PilotModelSpec], table: dict[str, float], option: str) -> None:
    known = {name for s in specs for name in model_names(s)}
    unknown = sorted(set(table) - known)
    if unknown:
        raise AdviseError(
            f"{option} {unknown[0]}=...: not one of the models ({', '.join(s.model for s in specs)})"
        )


def write_advice(
    advice: Advice, run_dir: str | Path, *, name: str = ADVICE_FILE, plot_name: str = FRONTIER_FILE
) -> tuple[Path, Path]:
    """advice.json and the frontier plot into ``run_dir`` (atomic writes)."""
    from flopmatch.store import RunDir, write_json

    run = RunDir(run_dir).ensure()
    json_path = write_json(advice.to_dict(), run.root / name)
    return json_path, frontier_plot(advice, run.root / plot_name)
