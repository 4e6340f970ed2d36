"""The round loop of difficulty-aware allocation: sample a round, grade it, let the policy plan the next.

Reuses ``flopmatch.sampling``'s engine, shard writer, config check, lock and ledger unchanged, so the
samples are the same rows, seeded the same way, as ``flopmatch sample -S``'s. What it adds:

* **A round journal** (``samples/<model_key>/allocation.json``, ``RunDir.allocation_journal_path``): the
  policy's settings, and the round in flight as an ordered list of ``(problem_id, sample_idx)``, written
  atomically *before* the round is sampled. A rerun first finishes that round, then plans the next one
  from the graded data on disk, so a SIGKILL loses at most the backend batch in flight and the rerun
  ends with the same sample set as an uninterrupted run. Asking for another policy in the same directory is refused.
* **Grading as rounds finish** (``flopmatch.grading.grade_many``; the toy world's and GSM8K's answers
  are settled without sympy) and "distinct" by ``flopmatch.metrics.normalize_solution``.
* **A budget that is never exceeded**: rounds are sized from the mean tokens per sample so far, and each
  backend call is trimmed so that its worst case (samples × max_tokens) fits the rest of the FLOP
  budget. ``--budget-seconds`` is checked after each batch (wall time cannot be guaranteed ahead).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from flopmatch import store
from flopmatch.allocation import (
    AllocationConfig,
    PriorCache,
    ProblemState,
    TokenBudget,
    admit,
    guarded_calls,
    picks_to_items,
    plan_next,
)
from flopmatch.backends.base import SamplingParams
from flopmatch.errors import FlopmatchError
from flopmatch.ledger import LedgerSession, model_spend, reconcile
from flopmatch.problems import Problem
from flopmatch.sampling import BOOKKEEPING_COLUMNS, SampleSummary, build_chunks
from flopmatch.sampling_engine import (
    SAMPLE_SCHEMA,
    SampleWriter,
    SamplingInputError,
    SpendBudget,
    check_config,
    check_unique_ids,
    parameter_count,
    prompt_builder,
    sample_progress_bar,
    sampling_lock,
    start_engine,
)
from flopmatch.store import RunDir, model_key

if TYPE_CHECKING:
    from flopmatch.prompts import PromptConfig

log = logging.getLogger(__name__)

@dataclass
class AllocationSummary(SampleSummary):
    """A ``SampleSummary`` plus what the policy did: rounds, the spend and the samples per problem."""

    allocation: str = "uniform"
    objective: str = "coverage"
    rounds: int = 0
    prior: str = ""
    budget_flops: float | None = None
    spent_flops: float | None = None  # every sample of this model on disk, 2·P·completion tokens
    unspent_flops: float | None = None
    per_problem: dict[str, float] = dataclasses.field(default_factory=dict)  # min / median / mean / max
    covered: int = 0  # problems with a correct sample


class AllocationMismatch(FlopmatchError, ValueError):
    """The samples on disk were allocated by another policy than this call asks for."""


# --------------------------------------------------------------------------- bookkeeping


@dataclass
class _Book:
    """What is on disk for one model, graded: per problem the indices, correct count, distinct norms."""

    problems: dict[str, Problem]
    indices: dict[str, set[int]]
    correct: dict[str, int]
    norms: dict[str, set[str]]
    token_of: dict[tuple[str, int], int] = dataclasses.field(default_factory=dict)
    tokens: int = 0
    samples: int = 0

    @classmethod
    def empty(cls, problems: Sequence[Problem]) -> _Book:
        ids = [p.problem_id for p in problems]
        return cls({p.problem_id: p for p in problems}, {i: set() for i in ids}, dict.fromkeys(ids, 0),
                   {i: set() for i in ids})  # fmt: skip

    def add(self, rows: Sequence[tuple[str, int, str, int]], *, timeout: float) -> None:
        """Grade ``(problem_id, sample_idx, text, completion_tokens)`` rows and count them in."""
        from flopmatch.grading import grade_many
        from flopmatch.metrics import normalize_solution

        rows = [r for r in rows if r[0] in self.problems]
        if not rows:
            return
        golds = [(text, self.problems[pid].answer) for pid, _, text, _ in rows]
        grades = grade_many(golds, dataset=[self.problems[r[0]].dataset for r in rows], timeout=timeout,
                            progress=False)  # fmt: skip
        for (pid, idx, text, tokens), grade in zip(rows, grades, strict=True):
            self.indices[pid].add(int(idx))
            self.token_of[(pid, int(idx))] = int(tokens)
            self.tokens += int(tokens)
            self.samples += 1
            if grade.correct:
                self.correct[pid] += 1
                self.norms[pid].add(normalize_solution(text or ""))

    def states(self) -> list[ProblemState]:
        return [ProblemState(pid, len(self.indices[pid]), self.correct[pid], len(self.norms[pid]))
                for pid in self.problems]  # fmt: skip


def _journal(path: Path, config: AllocationConfig) -> dict[str, Any]:
    """The round journal at ``path``, created for ``config``, or refused when it records another policy."""
    wanted = config.model_dump(mode="json")
    if path.exists():
        journal = store.read_json(path)
        if journal.get("config") != wanted:
            raise AllocationMismatch(
                f"{path}: the samples here were allocated with {journal.get('config')}, not {wanted}; "
                "a policy's sample set is only reproducible under its own settings: sample into another "
                f"run directory, or delete {path.parent} to start this model over"
            )
        return journal
    return {"config": wanted, "rounds": 0, "pending": None, "history": []}


# --------------------------------------------------------------------------- the driver


def sample_allocated(
    run_dir: str | Path,
    *,
    model: str,
    problems: list[Problem],
    config: AllocationConfig,
    backend: str = "vllm",
    backend_options: dict[str, Any] | None = None,
    params: SamplingParams | None = None,
    prompt: PromptConfig | None = None,
    budget_flops: float | None = None,
    budget_seconds: float | None = None,
    params_count: int | None = None,
    progress: bool = True,
    chunk_samples: int = 64,
    grade_timeout: float = 5.0,
    **ignored: Any,
) -> AllocationSummary:
    """Sample ``model`` in rounds allocated by ``config`` until its budget or the policy is done.

    ``budget_flops`` / ``budget_seconds`` are the model's total spend in this run (as for
    ``sampling.sample``). Without a budget the policy must end by itself (``until-correct``, or a
    ``max_per_problem`` cap). ``chunk_samples``: samples per backend call, the unit the budget guard
    trims. Rerun the same call after a crash: it continues the policy from what is on disk.
    """
    _check_args(config, budget_flops, budget_seconds, problems, ignored)
    params = params or SamplingParams()
    run = RunDir(run_dir).ensure()
    from flopmatch.problems import save_problems

    save_problems(run, problems)
    samples_dir = run.samples_dir(model)
    samples_dir.mkdir(parents=True, exist_ok=True)
    with sampling_lock(samples_dir):
        prompt_of, prompt_record, stops = prompt_builder(problems, prompt)
        if stops and not params.stop:
            params = params.model_copy(update={"stop": stops})
        check_config(samples_dir, params=params, prompt=prompt_record)
        journal = _journal(run.allocation_journal_path(model), config)
        existing = store.read_shards(samples_dir, columns=[*BOOKKEEPING_COLUMNS, "text"], schema=SAMPLE_SCHEMA)
        reconcile(run.root, model, existing)
        book = _Book.empty(problems)
        book.add(list(zip(*(existing.column(c).to_pylist() for c in
                            ("problem_id", "sample_idx", "text", "completion_tokens")), strict=True)),
                 timeout=grade_timeout)  # fmt: skip
        p_total = parameter_count(model, params_count, required=budget_flops is not None)
        tokens = TokenBudget(budget_flops / (2.0 * p_total) if budget_flops else None, book.tokens)
        loop = _Loop(run, model, samples_dir, book, tokens, config, params, prompt_of, journal,
                     backend=backend, backend_options=dict(backend_options or {}), chunk_samples=chunk_samples,
                     budget_seconds=budget_seconds, grade_timeout=grade_timeout, p_total=p_total,
                     progress=progress)  # fmt: skip
        try:
            stop = loop.run()
        except KeyboardInterrupt:
            loop.close("interrupted")
            raise
        except BaseException:
            loop.close("failed")
            raise
        loop.close(_STATUS.get(stop, stop))
    return _summary(loop, stop, budget_flops, p_total)


_STATUS = {"policy finished": "done", "budget": "budget"}


def _check_args(config, budget_flops, budget_seconds, problems, ignored) -> None:
    unknown = set(ignored) - {"replicas", "ray_address", "ray_options"}
    if unknown:
        raise TypeError(f"sample_allocated got unexpected arguments: {', '.join(sorted(unknown))}")
    if ignored.get("replicas", 1) != 1 or ignored.get("ray_address"):
        raise SamplingInputError("allocation policies run one local engine (replicas=1, no Ray) for now")
    for name, value in (("budget_flops", budget_flops), ("budget_seconds", budget_seconds)):
        if value is not None and value <= 0:
            raise SamplingInputError(f"{name} must be > 0, got {value}")
    ends_itself = config.allocation == "until-correct" or config.max_per_problem is not None
    if budget_flops is None and budget_seconds is None and not ends_itself:
        raise SamplingInputError(
            f"--allocation {config.allocation} needs a budget (--budget-flops or --budget-seconds) or "
            "--max-per-problem: without one it would sample forever"
        )
    if not problems:
        raise SamplingInputError("no problems to sample")
    check_unique_ids(problems)


class _Loop:
    """One call's rounds: plan (or resume) a round, sample it call by call under the guard, grade."""

    def __init__(self, run, model, samples_dir, book, tokens, config, params, prompt_of, journal, *, backend,
                 backend_options, chunk_samples, budget_seconds, grade_timeout, p_total, progress):  # fmt: skip
        self.rundir, self.model, self.samples_dir, self.book, self.tokens = run, model, samples_dir, book, tokens
        self.config, self.params, self.prompt_of, self.journal = config, params, prompt_of, journal
        self.backend, self.backend_options, self.chunk_samples = backend, backend_options, chunk_samples
        self.budget_seconds, self.grade_timeout, self.p_total = budget_seconds, grade_timeout, p_total
        self.spent_seconds = float(model_spend(run.root, model)["seconds"]) if budget_seconds else 0.0
        self.engine = self.ledger = None
        self.prior_cache = PriorCache(**journal.get("prior", {}))
        self.rounds_here = 0
        self.bar = sample_progress_bar(0, desc=model_key(model), enabled=progress)

    def run(self) -> str:
        """Rounds until the policy or the budget ends them; returns why it stopped."""
        while True:
            if self._seconds_spent():
                return "budget"
            items = self.journal.get("pending")
            if items is None:
                plan = self._plan()
                if isinstance(plan, str):
                    return plan
                items = [list(item) for item in plan]
                self.journal["pending"] = items
                self._save_journal()
            outcome = self._sample_round([(pid, int(idx)) for pid, idx in items])
            if outcome != "done":
                return outcome
            self.journal["rounds"] += 1
            self.journal["pending"] = None
            self.journal["history"].append({
                "round": self.journal["rounds"], "planned": len(items), "samples_on_disk": self.book.samples,
                "tokens": self.book.tokens, "flops": 2.0 * self.p_total * self.book.tokens if self.p_total else None,
                "covered": sum(c > 0 for c in self.book.correct.values()),
                "unique_correct": sum(len(v) for v in self.book.norms.values()), "problems": len(self.book.problems),
            })  # fmt: skip
            self._save_journal()
            self.rounds_here += 1

    def _plan(self) -> list[tuple[str, int]] | str:
        plan = plan_next(self.book.states(), self.config, self.tokens, self.params.max_tokens,
                         spent_samples=self.book.samples, prior=self.prior_cache)  # fmt: skip
        self.journal["prior"] = self.prior_cache.to_dict()  # saved with the round it decided
        if isinstance(plan, str):
            return plan
        cap = self._seconds_cap()
        if cap is not None:
            plan = plan[: max(1, cap)]
        return picks_to_items(plan, self.book.indices)

    def _seconds_cap(self) -> int | None:
        """Samples the time budget is predicted to allow (mean seconds per sample of this call)."""
        if self.budget_seconds is None or self.ledger is None or self.ledger.samples == 0:
            return None
        per_sample = self.ledger.seconds / self.ledger.samples
        return int((self.budget_seconds - self.spent_seconds - self.ledger.seconds) // max(per_sample, 1e-9))

    def _seconds_spent(self) -> bool:
        used = self.spent_seconds + (self.ledger.seconds if self.ledger else 0.0)
        return self.budget_seconds is not None and used >= self.budget_seconds

    def _sample_round(self, items: list[tuple[str, int]]) -> str:
        """Sample a round's items call by call; each call is trimmed to its worst case under the budget.

        The guard for call b counts the tokens on disk *except* this round's calls b, b+1, ..., so a
        rerun that finds part of call b on disk decides exactly as the first run did.
        """
        calls = guarded_calls(items, self.chunk_samples)
        later = {key for call in calls for key in call}
        for call in calls:
            later_tokens = self._tokens_of(later)
            remaining = self.tokens.remaining() + later_tokens
            ok = admit(len(call), remaining, self.params.max_tokens)
            todo = [(pid, idx) for pid, idx in call[:ok] if idx not in self.book.indices[pid]]
            if todo:
                status = self._generate(todo)
                if status != "done":
                    return status
            later -= set(call)
            if ok < len(call):
                break  # the rest of the round is re-planned on what the budget has left
        return "done"

    def _tokens_of(self, keys: set[tuple[str, int]]) -> int:
        return sum(self.book.token_of.get(k, 0) for k in keys)

    def _generate(self, todo: list[tuple[str, int]]) -> str:
        """One backend call: persist its batches (one shard each), grade them, keep the ledger."""
        self._ensure_engine()
        work: dict[str, list[int]] = {}
        for pid, idx in todo:
            work.setdefault(pid, []).append(idx)
        chunks, owner = build_chunks(self.model, [(self.book.problems[p], i) for p, i in work.items()],
                                     self.prompt_of, len(todo))  # fmt: skip
        writer = SampleWriter(self.samples_dir, self.model, chunks, owner, self.ledger, self.spend)
        self.bar.total = (self.bar.total or 0) + len(todo)
        last = time.perf_counter()
        batches = self.engine.batches(chunks, self.params)
        try:
            for batch in batches:
                now = time.perf_counter()
                writer.write(batch, batch_seconds=now - last)
                self.ledger.seconds += now - last  # generation only: grading below is not counted
                self.ledger.flush()
                rows = [(owner[c.request_id], int(c.sample_idx), c.text, int(c.completion_tokens))
                        for c in batch if c.finish_reason != "error"]  # fmt: skip
                self.book.add(rows, timeout=self.grade_timeout)
                self.tokens.spent_tokens = self.book.tokens
                self.bar.update(len(batch))
                last = time.perf_counter()
                if self._seconds_spent():
                    return "budget"
        finally:
            with contextlib.suppress(Exception):
                batches.close()
        return "incomplete" if writer.expected else "done"

    def _ensure_engine(self) -> None:
        if self.engine is not None:
            return
        started = time.perf_counter()
        self.engine = start_engine(self.backend, self.model, self.backend_options, replicas=1, ray_address=None,
                                   ray_options=None)  # fmt: skip
        self.ledger = LedgerSession(run_dir=self.rundir.root, model=self.model, backend=self.engine.name,
                                    seeding=self.engine.seeding, params=self.p_total,
                                    startup_seconds=time.perf_counter() - started)  # fmt: skip
        self.spend = SpendBudget(None, None, self.p_total)
        self.ledger.flush()

    def _save_journal(self) -> None:
        store.write_json(self.journal, self.rundir.allocation_journal_path(self.model))

    def close(self, status: str) -> None:
        self.bar.close()
        if self.engine is None:
            return
        with contextlib.suppress(Exception):
            self.engine.close()
        self.ledger.flush(status)
        self.engine = None


def _summary(loop: _Loop, stop: str, budget_flops: float | None, p_total: int | None) -> AllocationSummary:
    book, ledger = loop.book, loop.ledger
    counts = np.array([len(v) for v in book.indices.values()], float)
    spent = 2.0 * p_total * book.tokens if p_total else None
    status = _STATUS.get(stop, stop)
    summary = AllocationSummary(
        run_dir=str(loop.rundir.root), model=loop.model, model_key=model_key(loop.model), backend=loop.backend,
        seeding=ledger.seeding if ledger else "", samples_per_problem=int(counts.max(initial=0)),
        problems=len(counts), requested=int(counts.sum()), already_done=int(counts.sum()) - (ledger.samples if ledger else 0),
        generated=ledger.samples if ledger else 0, errors=ledger.errors if ledger else 0, on_disk=int(counts.sum()),
        prompt_tokens=ledger.prompt_tokens if ledger else 0, completion_tokens=ledger.completion_tokens if ledger else 0,
        truncated=ledger.truncated if ledger else 0, seconds=ledger.seconds if ledger else 0.0,
        startup_seconds=ledger.startup_seconds if ledger else 0.0, params=p_total,
        nominal_flops=ledger.row()["nominal_flops"] if ledger else None, status=status,
        session_id=ledger.session_id if ledger else None, allocation=loop.config.allocation,
        objective=loop.config.objective, rounds=loop.journal["rounds"], prior=loop.prior_cache.label, budget_flops=budget_flops,
        spent_flops=spent, unspent_flops=(budget_flops - spent) if budget_flops and spent is not None else None,
        per_problem={"min": float(counts.min()) if len(counts) else 0.0, "median": float(np.median(counts)) if len(counts) else 0.0,
                     "mean": float(counts.mean()) if len(counts) else 0.0, "max": float(counts.max(initial=0))},
    )  # fmt: skip
    covered = sum(c > 0 for c in book.correct.values())
    summary.covered = int(covered)
    summary.message = (
        f"{loop.config.allocation}: {stop} after {summary.rounds} round(s); {int(counts.sum())} samples, "
        f"{covered}/{len(counts)} problems covered"
        + (f"; {summary.unspent_flops:.3g} of {budget_flops:.3g} FLOPs unspent" if summary.unspent_flops is not None else "")
    )  # fmt: skip
    return summary
