"""The generation loop of :func:`flopmatch.sampling.sample` (and of allocation rounds): engines (one
backend here, or Ray replicas), the writer that turns batches into checked sample shards and keeps the
ledger, the spend budget, and the sample directory's bookkeeping (settings check, lock)."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import pyarrow as pa

from flopmatch import store
from flopmatch.backends.base import Completion, Request, SamplingParams
from flopmatch.errors import FlopmatchError
from flopmatch.ledger import LedgerSession
from flopmatch.problems import Problem
from flopmatch.store import model_key
from flopmatch.store.schemas import SAMPLE_SCHEMA

if TYPE_CHECKING:
    from flopmatch.prompts import PromptConfig

log = logging.getLogger("flopmatch.sampling")

CONFIG_FILE = "config.json"


class SamplingConfigMismatch(FlopmatchError, ValueError):
    """The samples on disk were drawn with other settings than this call asks for."""


class SamplingInputError(FlopmatchError, ValueError):
    """Arguments or inputs sampling cannot use: a count or budget out of range, no problems, a problem id
    given twice, a plan that asks for no samples, a model whose parameters cannot be counted when a FLOP
    budget needs them."""


class SamplerBusy(FlopmatchError, RuntimeError):
    """Another flopmatch process holds the model's sampling lock in this run."""

    exit_code = 1  # not bad input: the same command works once the other sampler is done


# --------------------------------------------------------------------------- the generation loop


class SampleWriter:
    """Turns backend batches into checked sample rows, one shard per batch, and keeps the ledger."""

    def __init__(self, samples_dir: Path, model: str, chunks, owner, ledger: LedgerSession, spend: SpendBudget):
        self.samples_dir, self.model, self.owner, self.ledger = samples_dir, model, owner, ledger
        self.spend = spend  # the FLOP or time cap of this call (--budget-flops / --budget-seconds)
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
        rows, errors = sample_rows(batch, model=self.model, owner=self.owner, expected=self.expected, seeds=self.seeds,
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
            self.spend.tokens += row["completion_tokens"]
        ledger.errors += errors
        return len(rows) + errors


def drive(engine: Engine, chunks, params: SamplingParams, writer: SampleWriter, *, progress: bool,
           spent_seconds: float) -> str:  # fmt: skip
    """Run the engine over the chunks, persisting each batch; returns the session's ledger status.

    The ledger shard is rewritten after every batch, and finally with the status; the engine is
    closed whatever happens (its in-flight work was never persisted, so nothing half-written stays).
    """
    ledger, spend = writer.ledger, writer.spend
    status = "failed"
    batches = None
    bar = sample_progress_bar(len(writer.expected), desc=model_key(writer.model), enabled=progress)
    gen_start = last = time.perf_counter()
    try:
        ledger.flush()
        batches = engine.batches(chunks, params)
        for batch in batches:
            now = time.perf_counter()
            done = writer.write(batch, batch_seconds=now - last)
            last = now
            ledger.seconds = time.perf_counter() - gen_start
            spend.seconds = spent_seconds + ledger.seconds
            ledger.flush()
            advance_progress(bar, done, ledger)
            if spend.spent():
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


def check_unique_ids(problems: Sequence[Problem]) -> None:
    seen: dict[str, int] = {}
    for position, problem in enumerate(problems):
        if problem.problem_id in seen:
            raise SamplingInputError(
                f"problem_id {problem.problem_id!r} appears twice (positions {seen[problem.problem_id]} and "
                f"{position}); samples are keyed by problem_id, so ids must be unique"
            )
        seen[problem.problem_id] = position


def sample_keys(table: pa.Table) -> set[tuple[str, int]]:
    if table.num_rows == 0:
        return set()
    return set(
        zip(table.column("problem_id").to_pylist(), table.column("sample_idx").to_pylist(), strict=True)
    )


def column_sum(table: pa.Table, column: str) -> int:
    if table.num_rows == 0:
        return 0
    import pyarrow.compute as pc

    return int(pc.sum(table.column(column)).as_py() or 0)


def prompt_builder(problems: Sequence[Problem], prompt: PromptConfig | None):
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


def check_config(samples_dir: Path, *, params: SamplingParams, prompt: Any) -> None:
    """Refuse to add samples drawn with other settings to a sample set; record them on first use.

    The settings are the sampling parameters and the prompt. The model reference string and the
    backend are not compared: the directory already names the model, and engines draw from the same
    distribution (each row records its backend and seeding).
    """
    config = _plain({"params": params, "prompt": prompt})
    path = samples_dir / CONFIG_FILE
    if path.exists() and store.shard_paths(samples_dir):
        recorded = store.read_json(path)
        recorded.pop("hash", None)
        if recorded != config:  # values, not text: a sample set recorded with temperature 1 is at 1.0
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
def sampling_lock(samples_dir: Path):
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
            raise SamplerBusy(
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


def parameter_count(model: str, override: int | None, *, required: bool) -> int | None:
    if override is not None:
        if override <= 0:
            raise SamplingInputError(f"params_count must be > 0, got {override}")
        return int(override)
    try:
        from flopmatch.modelinfo import count_parameters

        return int(count_parameters(model).total)
    except Exception as exc:  # noqa: BLE001 - any failure means "unknown", reported below
        if required:
            raise SamplingInputError(
                f"cannot count the parameters of {model!r} ({exc}); --budget-flops needs them: pass params_count"
            ) from exc
        log.warning("parameter count of %r unknown (%s): the ledger will have no nominal FLOPs", model, exc)
        return None


@dataclass
class SpendBudget:
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


def sample_rows(
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


class Engine(Protocol):
    name: str
    seeding: str

    def batches(self, chunks: list[list[Request]], params: SamplingParams) -> Iterator[list[Completion]]: ...

    def close(self) -> None: ...


@dataclass
class LocalEngine:
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
class RayEngine:
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


def start_engine(kind, model, options, *, replicas, ray_address, ray_options) -> Engine:
    if replicas > 1 or ray_address:
        from flopmatch.scaleout import ReplicaPool

        return RayEngine(
            ReplicaPool(kind, model, options, replicas=replicas, address=ray_address, **(ray_options or {}))
        )
    from flopmatch.backends import create_backend
    from flopmatch.models import resolve_model

    return LocalEngine(create_backend(kind, resolve_model(model), **options))


# --------------------------------------------------------------------------- progress


def sample_progress_bar(total: int, *, desc: str, enabled: bool):
    from flopmatch.progress import progress_bar

    return progress_bar(total, f"sample {desc}", unit="sample", enabled=enabled)


def advance_progress(bar, n: int, ledger: LedgerSession) -> None:
    bar.update(n)
    if ledger.seconds > 0:
        bar.set_postfix_str(f"{ledger.completion_tokens / ledger.seconds:.1f} tok/s", refresh=False)
