"""Allocation policies inside a study: allocated sample sets at each budget, their metrics and SFT sets.

A study with ``sampling.allocation: adaptive`` (or ``until-correct``) still draws today's uniform
samples (S per problem, ``samples/<model>/``): they are the baseline, the paper's protocol, and the
measured cost of each budget. Then, per budget and model, the policy samples the model again into its
own run directory, ``allocated/<policy>-b<SE samples>/`` (a ``RunDir``: samples, round journal, ledger,
grades), spending that budget's FLOPs for the model and never more:

* the plan's FLOPs for the model (per problem × problems) when the plan has absolute FLOPs (it knows
  the mean solution lengths, ``budget.options``), else
* what the model's uniform samples at that budget measurably cost (2·P·their completion tokens): an
  allocated set then spends at most what the uniform set it is compared with spent.

Each budget is its own policy run (not a prefix of the largest), so every set is exactly what the
policy does with that budget; sample i of a problem has the same seed in every set. Every run is
resumable (``flopmatch.allocation_run``): a killed study continues the policies from what is on disk.
``allocated/summary.json`` records per set the budget, where it came from, the FLOPs spent and the
unspent remainder. Pure helpers first, then the I/O the study's stages call.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from flopmatch.allocation import StudyAllocation
from flopmatch.budget import BudgetError
from flopmatch.errors import FlopmatchError
from flopmatch.store import RunDir, write_json
from flopmatch.store.queries import read_allocated_index, read_metrics, sample_tokens


class AllocatedSetError(FlopmatchError, ValueError):
    """An allocated set cannot be budgeted: the uniform samples its FLOPs are measured on are missing."""


class AllocatedSamplesMissing(FlopmatchError, FileNotFoundError):
    """The allocated samples an SFT set is built from are not there (the sample stage draws them)."""

#: The run layout relative to its root, for what the dry run prints (``allocated/summary.json``).
RELATIVE = RunDir(".")


def allocated_run(run: RunDir, policy: str, se_samples: int) -> RunDir:
    """The run directory of one policy's sample sets at one budget (SE samples per problem)."""
    return RunDir(run.allocated_dir / f"{policy}-b{int(se_samples)}")


def data_kind(role: str, policy: str) -> str:
    """The ``data`` label of a student trained on ``role``'s allocated set (``wc_adaptive``)."""
    return f"{role}_{policy.replace('-', '_')}"


def plan_flops_per_problem(plan: Any, role: str, se_samples: int) -> float | None:
    """The plan's absolute FLOPs per problem of ``role`` at a budget, or None when it has none (no mean
    solution lengths: the plan then only knows the ratio)."""
    if not (plan.flops_unit or "").startswith("FLOPs per problem ("):
        return None
    try:
        point = plan.point(se_samples)
    except BudgetError:  # not one of the plan's budgets
        return None
    value = getattr(point, f"{role}_flops", None)
    return float(value) if value is not None else None


def measured_flops(tokens: Mapping[tuple[str, int], int], problem_ids: Sequence[str], samples_per_problem: int,
                   params: float, *, where: str) -> float:  # fmt: skip
    """2·P·completion tokens of samples 0..S−1 of every problem (a uniform set's measured cost)."""
    total, missing = 0, []
    for pid in problem_ids:
        for idx in range(samples_per_problem):
            if (pid, idx) not in tokens:
                missing.append((pid, idx))
                continue
            total += tokens[(pid, idx)]
    if missing:
        raise AllocatedSetError(
            f"{where}: {len(missing)} uniform sample(s) the budget is measured on are missing, e.g. {missing[:3]}; "
            "finish the uniform sampling first"
        )
    return 2.0 * float(params) * total


# --------------------------------------------------------------------------- sampling (I/O)


@dataclass(frozen=True)
class AllocatedModel:
    """What sampling one role needs: the name its samples are filed under, its engine and P."""

    role: str
    model: str
    backend: str
    backend_options: dict[str, Any]
    params: float


@dataclass
class AllocatedSet:
    """One allocated sample set: its policy, budget, role and what it spent (``allocated/summary.json``)."""

    policy: str
    se_samples: int
    role: str
    model: str
    run_dir: str
    budget_flops: float
    budget_source: str
    spent_flops: float | None
    unspent_flops: float | None
    samples: int
    covered: int
    problems: int
    rounds: int
    status: str
    per_problem: dict[str, float]


def set_budget(run: RunDir, plan: Any, spec: AllocatedModel, se_samples: int, samples_per_problem: int,
               problem_ids: Sequence[str]) -> tuple[float, str]:  # fmt: skip
    """The FLOPs one allocated set may spend, and where the number comes from."""
    per_problem = plan_flops_per_problem(plan, spec.role, se_samples)
    if per_problem is not None:
        return per_problem * len(problem_ids), "the plan's FLOPs per problem × problems"
    flops = measured_flops(sample_tokens(run, spec.model), problem_ids, samples_per_problem, spec.params,
                           where=str(run.samples_dir(spec.model)))  # fmt: skip
    return flops, f"measured: the uniform set's {samples_per_problem} samples per problem (2·P·tokens)"


def sample_allocated_sets(
    run: RunDir,
    policy: StudyAllocation,
    models: Sequence[AllocatedModel],
    problems: list[Any],
    budgets: Sequence[tuple[int, Mapping[str, int]]],
    plan: Any,
    *,
    params: Any,
    prompt: Any,
    grading: tuple[int | None, float] = (None, 5.0),
    log: Callable[[str], None] = lambda _: None,
    progress: bool = True,
) -> list[AllocatedSet]:
    """Every (budget, role) set of ``policy``: sampled (or continued) under its FLOPs, then graded.

    ``budgets``: (SE samples per problem, {role: the uniform samples per problem at that budget}).
    Writes ``allocated/summary.json``. A set whose sampling did not end by the policy or the budget
    (an engine error left samples missing) raises: rerun to continue it.
    """
    from flopmatch.allocation_run import sample_allocated
    from flopmatch.grading import grade_run

    ids = [p.problem_id for p in problems]
    config = policy.policy_config()
    out: list[AllocatedSet] = []
    for se_samples, counts in budgets:
        sub = allocated_run(run, policy.policy, se_samples)
        for spec in models:
            flops, source = set_budget(run, plan, spec, se_samples, counts[spec.role], ids)
            log(f"    {spec.role.upper()} {policy.policy} at budget {se_samples}: ≤ {flops:.3g} FLOPs ({source})")
            summary = sample_allocated(
                sub.root, model=spec.model, problems=problems, config=config, backend=spec.backend,
                backend_options=dict(spec.backend_options), params=params, prompt=prompt, budget_flops=flops,
                params_count=int(spec.params), progress=progress,
            )  # fmt: skip
            if summary.status not in ("done", "budget"):
                raise RuntimeError(
                    f"{sub.samples_dir(spec.model)}: the {policy.policy} policy ended with status {summary.status!r} "
                    f"({summary.message}); rerun the study to continue it"
                )
            out.append(AllocatedSet(
                policy.policy, int(se_samples), spec.role, spec.model, str(sub.root.relative_to(run.root)), flops,
                source, summary.spent_flops, summary.unspent_flops, summary.on_disk, summary.covered, summary.problems,
                summary.rounds, summary.status, dict(summary.per_problem),
            ))  # fmt: skip
        workers, timeout = grading
        grade_run(sub.root, workers=workers, timeout=timeout, progress=progress)
    write_json({"policy": policy.model_dump(mode="json"), "sets": [asdict(s) for s in out]},
               run.allocated_index_path)  # fmt: skip
    return out


def read_allocated_sets(run: RunDir) -> list[dict[str, Any]]:
    """The sets ``sample_allocated_sets`` recorded (empty when the study allocates nothing)."""
    index = read_allocated_index(run)
    return list(index.get("sets", [])) if index is not None else []


# --------------------------------------------------------------------------- metrics and SFT (I/O)


def allocated_tables(run: RunDir, *, n_boot: int = 1000, seed: int = 0) -> list[pd.DataFrame]:
    """``allocation_metrics``' summary, curve and per-problem counts of every allocated set, labelled
    ``<policy> @ SE <budget>``: the rows the study adds to ``metrics/allocation*.parquet``."""
    from flopmatch.allocation_metrics import allocation_tables, per_problem_counts
    from flopmatch.analysis import load_model_samples

    parts: list[list[pd.DataFrame]] = [[], [], []]
    for item in read_allocated_sets(run):
        sub = RunDir(run.root / item["run_dir"])
        samples = load_model_samples(sub, item["model"])
        table, curve = allocation_tables(sub, {item["model"]: samples}, n_boot=n_boot, seed=seed)
        label = f"{item['policy']} @ SE {item['se_samples']}"
        for part, frame in zip(parts, (table, curve, per_problem_counts(item["model"], label, samples)), strict=True):
            part.append(frame.assign(allocation=label))
    return [pd.concat(part, ignore_index=True) if part else pd.DataFrame() for part in parts]


def write_study_allocation_metrics(run: RunDir, *, n_boot: int = 1000, seed: int = 0,
                                   plots: bool = True) -> dict[str, Path]:  # fmt: skip
    """Add the allocated sets' rows to the run's allocation tables and figure (analysis wrote the uniform
    ones); nothing when the study allocates nothing."""
    from flopmatch.allocation_metrics import write_allocation_outputs

    added = allocated_tables(run, n_boot=n_boot, seed=seed)
    if added[0].empty:
        return {}
    merged = []
    for name, frame in zip(("allocation", "allocation_curve", "allocation_counts"), added, strict=True):
        table = read_metrics(run, name)
        base = table.to_pandas() if table is not None else pd.DataFrame()
        if not base.empty:  # analyze wrote the run's own models; drop what an earlier pass added
            base = base[~base["allocation"].astype(str).str.contains(" @ SE ")]
        merged.append(pd.concat([base, frame], ignore_index=True) if not base.empty else frame)
    return write_allocation_outputs(run, *merged, plots=plots)


def build_allocated_sft(run: RunDir, *, policy: str, se_samples: int, model: str, name: str,
                        max_per_problem: int | None, seed: int) -> Any:  # fmt: skip
    """The SFT set of every correct solution ``model``'s allocated set at a budget found, written to the
    study's ``sft/<name>`` (``flopmatch.sft.build_sft`` on the set's run directory)."""
    from flopmatch.sft import build_sft

    sub = allocated_run(run, policy, se_samples)
    if not sub.samples_dir(model).exists():
        raise AllocatedSamplesMissing("no allocated samples (the sample stage draws them)", file=sub.samples_dir(model))
    return build_sft(sub, source_model=model, max_per_problem=max_per_problem, name=name, seed=seed,
                     out_dir=run.sft_dir(name))  # fmt: skip


# --------------------------------------------------------------------------- the study's stages


def study_allocated_sets(ctx: Any, params: Any, prompt: Any) -> list[AllocatedSet]:
    """The sample stage's part: ``ctx`` is a ``flopmatch.study.StudyContext`` of a study whose
    ``sampling.allocation`` is not uniform (its uniform samples are on disk)."""
    config, roles = ctx.config, ctx.roles()
    models = [
        AllocatedModel(role, roles[role]["model"], getattr(config.models, role).backend,
                       dict(getattr(config.models, role).backend_options), float(roles[role]["params"]))
        for role in ("wc", "se")
    ]  # fmt: skip
    budgets = [(se_n, {"wc": wc_n, "se": se_n}) for se_n, wc_n in ctx.budgets()]
    return sample_allocated_sets(
        ctx.run, config.sampling.allocation, models, ctx.problems("sample"), budgets, ctx.plan(), params=params,
        prompt=prompt, grading=(config.grading.workers, config.grading.timeout), log=ctx.log, progress=ctx.progress,
    )  # fmt: skip


def describe_sets(sets: Sequence[AllocatedSet]) -> str:
    """One line for the stage summary: samples, coverage and the unspent share per set."""
    parts = []
    for s in sets:
        unspent = f", {s.unspent_flops / s.budget_flops:.0%} unspent" if s.unspent_flops is not None else ""
        parts.append(f"{s.role.upper()} {s.policy}@{s.se_samples} {s.samples} samples, {s.covered}/{s.problems} "
                     f"covered{unspent}")  # fmt: skip
    return "; ".join(parts)


def dry_run_lines(policy: StudyAllocation, allocations: Sequence[str], plan: Any,
                  costs: Sequence[Mapping[str, Any]]) -> tuple[list[str], list[dict[str, Any]]]:  # fmt: skip
    """What ``flopmatch study --dry-run`` says of allocation: sentences, and cost rows of the allocated
    sets (at most the uniform sets' cost at every budget: each spends at most its budget's FLOPs)."""
    if policy.policy == "uniform" or plan is None:
        return [], []
    budgets = [(int(b.se_samples), {"wc": int(b.wc_samples), "se": int(b.se_samples)}) for b in plan.budgets]
    absolute = all(plan_flops_per_problem(plan, "wc", n) is not None for n, _ in budgets)
    source = ("the plan's FLOPs per problem × problems" if absolute
              else "what the uniform set at that budget measurably cost (known once it is sampled)")  # fmt: skip
    options = ", ".join(f"{k} {v}" for k, v in policy.model_dump(exclude={"policy"}, exclude_defaults=True).items())
    lines = [
        f"allocation: {policy.policy}{f' ({options})' if options else ''} samples WC and SE again at each budget "
        f"(SE {', '.join(str(n) for n, _ in budgets)}) into {RELATIVE.allocated_dir}/{policy.policy}-b<SE>/, each set "
        f"spending at most {source}; the unspent rest goes to {RELATIVE.allocated_index_path}",
        f"students train on: {', '.join(allocations)} data"
        + ("" if policy.policy in allocations else f" ({policy.policy} data: metrics only, not trained on)"),
    ]
    rows = []
    for c in costs:
        largest = max(counts[c["role"]] for _, counts in budgets)
        scale = sum(counts[c["role"]] for _, counts in budgets) / largest
        rows.append({**c, "model": f"{c['model']} ({policy.policy}, every budget)", "samples": int(c["samples"] * scale),
                     "tokens": c["tokens"] * scale, "flops": c["flops"] * scale if c["flops"] else None,
                     "basis": f"at most: {c['basis']}"})  # fmt: skip
    return lines, rows
