"""Grading API: one answer (:func:`grade`) or many (:func:`grade_many`).

:func:`grade_many` is built for sampling runs, where ~30 solutions per problem share a handful of
distinct final answers:

1. extract and normalise every response's answer in this process (pure string work);
2. settle identical text and plain numbers exactly, without sympy (:func:`.fast_verdict`);
3. send each distinct ``(gold, answer)`` pair left — once, however many responses share it — to a
   :class:`.WatchdogPool`, grouped by gold so each gold answer is parsed once per task;
4. give every response the verdict of its pair.

Verdicts depend only on the pair, never on scheduling, so they are the same for any ``workers``
(up to wall-clock timeouts of checks that take about ``timeout`` seconds).
"""

from __future__ import annotations

import atexit
import os
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

from flopmatch.grading.equivalence import fast_verdict
from flopmatch.grading.extract import GradingInputError, answer_mode, extract_answer, normalize_answer
from flopmatch.grading.pool import Task, WatchdogPool, default_workers

Status = Literal["correct", "wrong", "no_answer", "timeout", "error"]
STATUSES: tuple[str, ...] = ("correct", "wrong", "no_answer", "timeout", "error")

# Distinct answers per task: small enough to spread one gold's answers over the workers, large
# enough that parsing the gold once per task is negligible.
TASK_SIZE = 64


@dataclass(frozen=True)
class Grade:
    """The verdict on one response.

    ``status``: ``correct`` / ``wrong`` (final answer equal / not equal to the gold), ``no_answer``
    (no final answer found), ``timeout`` (no verdict within the time or memory limit), ``error``
    (the gold answer is unusable, or the checker failed). ``extracted``: the normalised final answer,
    or ``None``. ``detail``: why, when it is not obvious.
    """

    status: Status
    extracted: str | None
    detail: str = ""

    @property
    def correct(self) -> bool:
        return self.status == "correct"


def grade(response: str | None, gold: str, *, dataset: str, timeout: float = 5.0) -> Grade:
    """Grade one response against its gold answer.

    Reuses one background worker across calls (started on first need), so grading in a loop does
    not start a process per call; use :func:`grade_many` for batches.
    """
    with _shared_lock:
        pool = _shared_pool()
        pool.timeout = timeout
        return grade_many([(response, gold)], dataset=dataset, timeout=timeout, progress=False, pool=pool)[0]


def grade_many(
    pairs: Iterable[tuple[str | None, str]],
    *,
    dataset: str | Sequence[str],
    workers: int | None = None,
    timeout: float = 5.0,
    progress: bool = True,
    pool: WatchdogPool | None = None,
    dedupe: bool = True,
    fast_path: bool = True,
) -> list[Grade]:
    """Grade ``(response, gold)`` pairs; one :class:`Grade` per pair, in order.

    ``dataset``: one name for all pairs or one per pair (``gsm8k``, ``math``, ``math500``,
    ``toyworld``); it selects the extraction rules. ``workers``: checker processes (default: the
    usable CPUs), started only if some pair needs sympy. ``timeout``: the hard limit in seconds on
    checking one distinct answer (and on parsing one gold answer), enforced by killing the worker.
    ``pool``: an open :class:`WatchdogPool` to use instead of starting one (its own worker count and
    timeout apply). ``dedupe=False`` checks every pair, not each distinct pair once; ``fast_path=False``
    sends plain numbers to the checker too: both are slower, for measuring what each step saves
    (benchmarks/grading.py); verdicts stay the same.
    """
    pairs = list(pairs)
    datasets = _datasets_per_pair(dataset, len(pairs))
    grades: list[Grade | None] = [None] * len(pairs)
    key_ids: dict[object, int] = {}  # a distinct check (its pair, or the pair's index without dedupe) → id
    checks: list[tuple[str, str]] = []  # (gold, answer) of each check, by id
    members: list[list[int]] = []
    gold_cache: dict[tuple[str, str], str] = {}
    verdict_cache: dict[tuple[str, str], bool | None] = {}
    for i, ((response, gold), name) in enumerate(zip(pairs, datasets, strict=True)):
        mode = answer_mode(name)
        gold_text = _gold_text(gold, i)
        if response is not None and not isinstance(response, str):
            raise TypeError(f"pair {i}: response must be a string or None, got {type(response).__name__}")
        extracted = extract_answer(response, name)
        if extracted is None:
            grades[i] = Grade("no_answer", None, "no final answer found")
            continue
        gold_key = (mode, gold_text)
        if gold_key not in gold_cache:
            gold_cache[gold_key] = normalize_answer(gold_text, mode)
        gold_norm = gold_cache[gold_key]
        if not gold_norm:
            grades[i] = Grade("error", extracted, "empty gold answer")
            continue
        pair_key = (gold_norm, extracted)
        if fast_path and pair_key not in verdict_cache:
            verdict_cache[pair_key] = fast_verdict(gold_norm, extracted)
        verdict = verdict_cache.get(pair_key)
        if verdict is not None:
            grades[i] = Grade("correct" if verdict else "wrong", extracted)
            continue
        check_key = pair_key if dedupe else i
        if check_key not in key_ids:
            key_ids[check_key] = len(checks)
            checks.append(pair_key)
            members.append([])
        members[key_ids[check_key]].append(i)

    answers = [answer for _gold, answer in checks]
    bar = _progress_bar(len(pairs), progress)
    bar.update(len(pairs) - sum(len(m) for m in members))

    def record(key: int, status: str, detail: str) -> None:
        for i in members[key]:
            grades[i] = Grade(status, answers[key], detail)  # type: ignore[arg-type]
        bar.update(len(members[key]))

    try:
        if members:
            tasks = _tasks(checks)
            if pool is not None:
                pool.run(tasks, record)
            else:
                size = min(workers or default_workers(), len(tasks))
                with WatchdogPool(workers=size, timeout=timeout) as own:
                    own.run(tasks, record)
    finally:
        bar.close()
    missing = [i for i, g in enumerate(grades) if g is None]
    if missing:  # pragma: no cover - every key is reported by the pool
        raise RuntimeError(f"grading lost {len(missing)} results (first: pair {missing[0]})")
    return grades  # type: ignore[return-value]


def _datasets_per_pair(dataset: str | Sequence[str], n: int) -> list[str]:
    if isinstance(dataset, str):
        answer_mode(dataset)
        return [dataset] * n
    names = list(dataset)
    if len(names) != n:
        raise GradingInputError(f"got {len(names)} dataset names for {n} pairs")
    return names


def _gold_text(gold: object, index: int) -> str:
    if isinstance(gold, str):
        return gold
    if isinstance(gold, (int, float)) and not isinstance(gold, bool):
        return str(gold)
    raise TypeError(f"pair {index}: gold answer must be a string or a number, got {type(gold).__name__}")


def _tasks(checks: list[tuple[str, str]]) -> list[Task]:
    """Group checks (``(gold, answer)`` by id) by gold answer, in first-seen order, at most TASK_SIZE per task."""
    by_gold: dict[str, list[tuple[int, str]]] = {}
    for kid, (gold, answer) in enumerate(checks):
        by_gold.setdefault(gold, []).append((kid, answer))
    tasks = []
    for gold, items in by_gold.items():
        for start in range(0, len(items), TASK_SIZE):
            tasks.append(Task(gold, items[start : start + TASK_SIZE]))
    return tasks


def _progress_bar(total: int, enabled: bool):
    from flopmatch.progress import progress_bar

    return progress_bar(total, "grading", unit="ans", enabled=enabled and total > 0, leave=False)


# --------------------------------------------------------------------------- shared pool for grade()

_shared_lock = threading.Lock()
_shared: list[WatchdogPool] = []
_shared_pid: list[int] = []


def _shared_pool() -> WatchdogPool:
    """One worker kept for :func:`grade` calls; a forked child starts its own (its parent's
    workers are not its children)."""
    if _shared and _shared_pid[0] != os.getpid():
        _shared.clear()
        _shared_pid.clear()
    if not _shared:
        if not _shared_pid:
            atexit.register(_close_shared_pool)
        _shared.append(WatchdogPool(workers=1))
        _shared_pid[:] = [os.getpid()]
    return _shared[0]


def _close_shared_pool() -> None:
    while _shared:
        _shared.pop().close()
