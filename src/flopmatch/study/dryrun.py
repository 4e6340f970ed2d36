"""``flopmatch study --dry-run``: validate a study, plan its budgets and estimate what it would cost,
without running anything.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flopmatch.datasets import get_dataset
from flopmatch.store import RunDir, model_key
from flopmatch.store.queries import read_metrics
from flopmatch.study.config import ModelSpec, SplitConfig, StudyConfig
from flopmatch.study.context import StudyContext
from flopmatch.study.jobs import TrainJob, train_jobs
from flopmatch.study.orchestrator import StageStatus, run_dir_for, study_status
from flopmatch.study.registry import get_stage
from flopmatch.study.stages import load_split, params_offline

# --------------------------------------------------------------------------- dry run

@dataclass
class DryRun:
    """What ``--dry-run`` prints: the plan and what the study would cost, with where each number came from."""

    config: StudyConfig
    run_dir: Path
    problems: dict[str, tuple[int | None, str]]  # role -> (count, how it was found)
    params: dict[str, tuple[float | None, str]]  # role -> (count, source)
    plan: Any | None
    plan_error: str | None
    costs: list[dict[str, Any]]
    jobs: list[TrainJob]
    evals: int
    stages: list[StageStatus] | None
    warnings: list[str] = field(default_factory=list)
    power: dict[str, Any] | None = None  # the planned WC-vs-SE pass@1 comparison's MDE (see planned_power)
    allocation: list[str] = field(default_factory=list)  # what sampling.allocation adds (allocation_study)


def _count_split(spec: SplitConfig, seed: int) -> tuple[int | None, str]:
    """Problems in a split: loaded when that is cheap and offline (local files, a dataset that declares a
    generator, such as the toy world), else the size its declaration gives, capped by ``limit``."""
    declared = get_dataset(spec.source)
    if spec.data_file is not None or (declared is not None and declared.loader is not None):  # generated
        try:
            return len(load_split(spec, seed)), "counted"
        except Exception as exc:  # noqa: BLE001 - a dry run reports, the real run fails loudly
            return None, f"cannot load: {exc}"
    size = declared.sizes.get(spec.split or "test") if declared is not None else None
    if size is None:
        return spec.limit, "limit" if spec.limit else "unknown size"
    return (min(size, spec.limit) if spec.limit else size), "known dataset size"


def dry_run(config: StudyConfig, run_dir: str | Path | None = None) -> DryRun:
    """Validate what can be validated without running anything, plan the budgets and estimate cost.

    Sampling cost is an upper bound: every solution at ``sampling.max_tokens`` generated tokens (the
    ledger of an earlier run of this study, when there is one, gives measured mean lengths instead).
    """
    from flopmatch.budget import BudgetError, plan_budgets

    root = run_dir_for(config, run_dir)
    problems: dict[str, tuple[int | None, str]] = {}
    sample_count = _count_split(config.problems.sample, config.seed)
    validation = config.problems.validation
    if validation is not None and validation.holdout:
        problems["sample"] = sample_count
        problems["validation"] = (validation.holdout, "held out from the sample split")
    else:
        problems["sample"] = sample_count
        if validation is not None:
            problems["validation"] = _count_split(validation.as_split(), config.seed)
    if config.problems.test is not None:
        problems["test"] = _count_split(config.problems.test, config.seed)
    params = {"wc": params_offline(config.models.wc), "se": params_offline(config.models.se)}
    if config.paradigms.student is not None and config.training.enabled:
        params["student"] = params_offline(config.paradigms.student)
    plan, plan_error = None, None
    try:
        options = dict(config.budget.options)
        options.pop("ledger", None)
        if config.budget.mode == "price":
            options.setdefault("wc_price", config.models.wc.price_per_token)
            options.setdefault("se_price", config.models.se.price_per_token)
        plan = plan_budgets(
            mode=config.budget.matching, se_samples=config.budget.se_samples, wc_params=params["wc"][0],
            se_params=params["se"][0], rounding=config.budget.rounding, n_problems=problems["sample"][0],
            wc_name=config.models.wc.model, se_name=config.models.se.model, **options,
        )  # fmt: skip
    except (BudgetError, TypeError, ValueError) as exc:
        plan_error = str(exc)
    costs = []
    n = problems["sample"][0]
    if plan is not None and n:
        mean_tokens = _ledger_mean_tokens(RunDir(root), config)
        for role in ("wc", "se"):
            spec: ModelSpec = getattr(config.models, role)
            per_problem = max(int(getattr(b, f"{role}_samples")) for b in plan.budgets)
            tokens, basis = mean_tokens.get(
                role, (config.sampling.max_tokens, "upper bound: max_tokens each")
            )
            samples = n * per_problem
            p = params[role][0]
            costs.append({"role": role, "model": spec.display, "samples": samples, "tokens": samples * tokens,
                          "flops": 2 * p * samples * tokens if p else None, "basis": basis})  # fmt: skip
    from flopmatch.allocation_study import dry_run_lines

    allocation, allocated_costs = dry_run_lines(config.sampling.allocation, config.paradigms.allocations, plan, costs)
    costs += allocated_costs
    jobs = train_jobs(config, [(b.se_samples, b.wc_samples) for b in plan.budgets]) if plan else []
    jobs = jobs if get_stage("train").enabled(config)[0] else []
    students = {j.student_role for j in jobs}
    evals = len(jobs) + (len(students) if config.evaluation.baselines else 0)
    stages = None
    if RunDir(root).study_path.exists():
        stages = study_status(StudyContext(config=config, run=RunDir(root), log=lambda _: None))
    warnings = []
    accelerate_config = config.training.accelerate_config
    if config.training.enabled and accelerate_config and not Path(accelerate_config).exists():
        warnings.append(f"training.accelerate_config {accelerate_config} does not exist (yet)")
    for role, spec in (("sample", config.problems.sample), ("test", config.problems.test)):
        if spec is not None and spec.data_file and not Path(spec.data_file).exists():
            warnings.append(f"problems.{role}.data_file {spec.data_file} does not exist")
    power = planned_power(config, problems.get("test", (None, ""))[0], RunDir(root)) if jobs else None
    if power is not None:
        warnings += power["warnings"]
    return DryRun(config, root, problems, params, plan, plan_error, costs, jobs, evals, stages, warnings, power,
                  allocation)  # fmt: skip


#: Planning assumptions when no run has measured them: the share of test problems on which the WC-data
#: and SE-data students disagree (deciding.md), and the SE-data student's pass@1 (relative gains need it).
ASSUMED_DISCORDANCE = 0.15
ASSUMED_ACCURACY = 0.5
#: The smallest relative gain a study should be able to detect (the paper's gains are 1–6% relative).
TARGET_RELATIVE_GAIN = 0.05


def planned_power(config: StudyConfig, test_problems: int | None, run: RunDir) -> dict[str, Any] | None:
    """The minimum detectable WC − SE difference of greedy pass@1 (80% power, α = 0.05) for the planned test
    size and seeds: (1.96 + 0.84)·sqrt(d / N), with d and the SE-data accuracy measured by an earlier
    run of this study (its comparisons.parquet) or assumed. When that run had ≥ 2 seeds, its seed noise
    (seed discordance d_s, seed shift τ) enters the seed-aware :func:`flopmatch.paired.mde_paired`;
    otherwise seed-to-seed variance is unknown and left out (the MDE is then a floor). Warns when a 5%
    relative gain is out of reach."""
    from flopmatch.paired import mde_paired, problems_for_mde

    if not test_problems:
        return None
    seeds = len(config.training.seed_list(config.seed))
    discordance, accuracy, basis = ASSUMED_DISCORDANCE, ASSUMED_ACCURACY, "assumed"
    seed_discordance, seed_sd = 0.0, 0.0
    measured = _measured_discordance(run)
    if measured is not None:
        discordance, accuracy, seed_discordance, seed_sd = measured
        basis = "measured in this run's metrics/comparisons.parquet"
    mde = mde_paired(test_problems, discordance, seeds=seeds, seed_discordance=min(seed_discordance, discordance),
                     seed_sd=seed_sd)  # fmt: skip
    target = TARGET_RELATIVE_GAIN * accuracy
    warnings = []
    if mde > target:
        needed = problems_for_mde(target, discordance, seeds=seeds, seed_discordance=min(seed_discordance, discordance),
                                  seed_sd=seed_sd)  # fmt: skip
        remedy = (f"needs about {int(needed):,} test problems (problems.test.limit)" if needed != float("inf") else
                  f"is out of reach with {seeds} seed(s) at any test size (seed shift τ {seed_sd * 100:.1f} pts): add seeds")  # fmt: skip
        warnings.append(
            f"power: {test_problems} test problems detect a WC − SE pass@1 difference of {mde * 100:.1f} points "
            f"(80% power, {discordance:.0%} discordance, {basis}), {mde / accuracy:.0%} relative at "
            f"{accuracy:.0%} accuracy; a {TARGET_RELATIVE_GAIN:.0%} relative gain ({target * 100:.1f} pts) {remedy}"
        )
    if seeds < 2:
        warnings.append("power: one training seed; a difference it shows is never a verdict (set training.seeds: "
                        "[0, 1, 2])")  # fmt: skip
    return {"test_problems": test_problems, "seeds": seeds, "discordance": discordance, "accuracy": accuracy,
            "seed_discordance": seed_discordance, "seed_sd": seed_sd, "basis": basis, "mde": mde,
            "mde_relative": mde / accuracy * 100, "warnings": warnings}  # fmt: skip


def _measured_discordance(run: RunDir) -> tuple[float, float, float, float] | None:
    """(mean discordance, mean SE-data pass@1, seed discordance, seed shift sd; 0 for the last two
    without seeds) of the WC-vs-SE pass@1 comparisons of an earlier run."""
    comparisons = read_metrics(run, "comparisons")
    if comparisons is None:
        return None
    import numpy as np
    import pandas as pd

    table = comparisons.to_pandas()
    rows = table[(table["comparison"] == "wc_vs_se") & (table["metric"] == "pass@1")] if len(table) else table
    if rows.empty or rows["discordance"].isna().all() or not (rows["se"] > 0).any():
        return None
    seed_discordance = rows["seed_discordance"].mean() if "seed_discordance" in rows else float("nan")
    seed_sd = float(np.sqrt((rows["seed_sd"] ** 2).mean())) if "seed_sd" in rows else float("nan")
    return (float(rows["discordance"].mean()), float(rows["se"].mean()),
            0.0 if pd.isna(seed_discordance) else float(seed_discordance), 0.0 if np.isnan(seed_sd) else seed_sd)  # fmt: skip


def _ledger_mean_tokens(run: RunDir, config: StudyConfig) -> dict[str, tuple[float, str]]:
    if not run.ledger_path.exists():
        return {}
    try:
        from flopmatch.ledger import summarize_ledger

        frame = summarize_ledger(run.root)
    except Exception:  # noqa: BLE001 - an unreadable ledger only loses the refinement
        return {}
    out = {}
    for role in ("wc", "se"):
        key = model_key(getattr(config.models, role).model)
        rows = (
            frame[frame["model"].map(lambda m: model_key(str(m))) == key] if "model" in frame else frame[:0]
        )
        if len(rows) and float(rows["samples"].sum()) > 0:
            mean = float(rows["completion_tokens"].sum()) / float(rows["samples"].sum())
            out[role] = (mean, "measured mean length (this run's ledger)")
    return out
