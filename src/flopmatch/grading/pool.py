"""A process pool whose watchdog kills and replaces a worker stuck on one answer.

math-verify bounds its work with ``signal.alarm``, which only works in a main thread and cannot
interrupt C code: ``\\boxed{9^{9^{9^{9}}}}`` can hold a worker forever. Here each worker reports
after every answer; the parent gives each report ``timeout`` seconds, and a worker that misses
its deadline is killed (SIGKILL), its current answer recorded as ``timeout``, the rest of its task
handed to a fresh worker. Workers fork from a fork server that has math-verify imported
(:mod:`.server`), so a replacement costs milliseconds; they never import the caller's ``__main__``.

A task is one gold answer with the distinct answers to check against it, so the gold is parsed
once per task, not once per answer.
"""

from __future__ import annotations

import os
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait

from flopmatch.grading.extract import GradingInputError
from flopmatch.grading.server import STARTUP_LIMIT, ForkServer, WorkerProcess, WorkerStartError, shared_server

DEFAULT_MEMORY_LIMIT = 4 * 1024**3  # bytes of address space per worker
_MAX_START_FAILURES = 3

OnResult = Callable[[int, str, str], None]


@dataclass
class Task:
    """One gold answer and the distinct normalised answers ``(key, answer)`` to check against it."""

    gold: str
    items: list[tuple[int, str]]


@dataclass
class _Worker:
    process: WorkerProcess
    conn: Connection
    started: float
    ready: bool = False
    failure: str = ""  # the traceback of a worker that could not start
    task: Task | None = None
    gold_done: bool = False
    done: int = 0  # items of the current task already reported
    deadline: float = float("inf")


def default_workers() -> int:
    """The CPUs this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


class WatchdogPool:
    """Run :class:`Task` s on ``workers`` processes with a hard per-answer time limit.

    ``timeout`` is the most wall time between two reports of a worker (the gold parse, then each
    answer); the worker's own alarm fires a little earlier (``soft_fraction`` of it), so a slow but
    interruptible check comes back as ``timeout`` without killing anything. ``memory_limit`` caps
    each worker's address space. Workers start lazily and are reused across :meth:`run` calls
    until :meth:`close`.
    """

    def __init__(
        self,
        workers: int | None = None,
        timeout: float = 5.0,
        memory_limit: int | None = DEFAULT_MEMORY_LIMIT,
        soft_fraction: float | None = 0.8,
    ):
        self.workers = max(1, workers or default_workers())
        self.timeout = float(timeout)
        self.soft_fraction = soft_fraction
        self.memory_limit = memory_limit
        self.kills = 0  # workers killed by the watchdog, for reports and tests
        self._pool: list[_Worker] = []
        self._server: ForkServer | None = None
        self._start_failures = 0

    @property
    def timeout(self) -> float:
        return self._timeout

    @timeout.setter
    def timeout(self, value: float) -> None:
        if value <= 0:
            raise GradingInputError(f"timeout must be positive, got {value}")
        self._timeout = float(value)

    @property
    def soft_timeout(self) -> float:
        """The worker's own alarm, ``soft_fraction`` of the hard limit: interruptible work then comes
        back as ``timeout`` without a kill. ``0`` (``soft_fraction=None``): no alarm, the watchdog
        alone bounds each check."""
        if self.soft_fraction is None:
            return 0.0
        return max(0.05, self.soft_fraction * self._timeout)

    # ------------------------------------------------------------------ lifecycle

    def __enter__(self) -> WatchdogPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop every worker (politely, then by force)."""
        for worker in self._pool:
            try:
                worker.conn.send(None)
            except (OSError, ValueError):
                pass
        deadline = time.monotonic() + 1.0
        for worker in self._pool:
            worker.process.join(max(0.0, deadline - time.monotonic()))
            if worker.process.is_alive():
                worker.process.kill()
                worker.process.join()
            worker.process.close()
        self._pool.clear()

    def _start_worker(self) -> None:
        """Fork a worker from the process's fork server (restarted if it died since the last one)."""
        self._server = shared_server()
        process = self._server.start_worker(self.memory_limit)
        self._pool.append(_Worker(process=process, conn=process.conn, started=time.monotonic()))

    def _retire(self, worker: _Worker, kill: bool) -> None:
        if kill:
            worker.process.kill()
        worker.process.join(5.0)
        worker.process.close()
        self._pool.remove(worker)

    # ------------------------------------------------------------------ running

    def run(self, tasks: Sequence[Task], on_result: OnResult) -> None:
        """Check every item of every task; ``on_result(key, status, detail)`` once per item."""
        queue: deque[Task] = deque(t for t in tasks if t.items)
        try:
            while queue or any(w.task is not None for w in self._pool):
                self._top_up(len(queue))
                for worker in self._pool:
                    if queue and worker.ready and worker.task is None:
                        self._assign(worker, queue.popleft())
                self._wait_and_handle(queue, on_result)
        except BaseException:
            self.close()  # a worker may be mid-task: never reuse it after an interruption
            raise

    def _top_up(self, queued: int) -> None:
        busy = sum(1 for w in self._pool if w.task is not None)
        wanted = min(self.workers, busy + queued)
        while len(self._pool) < wanted:
            self._start_worker()

    def _assign(self, worker: _Worker, task: Task) -> None:
        worker.task, worker.gold_done, worker.done = task, False, 0
        worker.deadline = time.monotonic() + self.timeout
        worker.conn.send((task.gold, task.items, self.soft_timeout))

    def _wait_and_handle(self, queue: deque[Task], on_result: OnResult) -> None:
        now = time.monotonic()
        deadlines = [w.deadline for w in self._pool if w.task is not None]
        deadlines += [w.started + STARTUP_LIMIT for w in self._pool if not w.ready]
        wait_for = max(0.0, min(deadlines) - now) if deadlines else 0.5
        ready = wait([w.conn for w in self._pool], timeout=min(wait_for, 0.5))
        for worker in [w for w in self._pool if w.conn in ready]:
            try:
                while worker.conn.poll():
                    self._handle(worker, worker.conn.recv(), on_result)
            except (EOFError, OSError):
                self._lost(worker, queue, on_result, killed=False)
        now = time.monotonic()
        for worker in list(self._pool):
            if worker.task is not None and now > worker.deadline:
                self.kills += 1
                self._lost(worker, queue, on_result, killed=True)
            elif not worker.ready and now > worker.started + STARTUP_LIMIT:
                self._lost(worker, queue, on_result, killed=True)

    def _handle(self, worker: _Worker, message: tuple, on_result: OnResult) -> None:
        from flopmatch.grading.worker import FAILED, GOLD, ITEM, READY

        kind = message[0]
        if kind == READY:
            worker.ready = True
            self._start_failures = 0
            return
        if kind == FAILED:
            worker.failure = message[1]
            return
        task = worker.task
        assert task is not None, "a worker reported without a task"
        worker.deadline = time.monotonic() + self.timeout
        if kind == GOLD:
            _, ok, detail = message
            worker.gold_done = True
            if not ok:
                for key, _answer in task.items:
                    on_result(key, "error", detail)
                worker.task = None
        elif kind == ITEM:
            _, key, status, detail = message
            on_result(key, status, detail)
            worker.done += 1
            if worker.done == len(task.items):
                worker.task = None

    def _last_words(self) -> str:
        tail = self._server.log_tail() if self._server is not None else ""
        return tail or "(nothing: no traceback, no output)"

    def _lost(self, worker: _Worker, queue: deque[Task], on_result: OnResult, *, killed: bool) -> None:
        """A worker died or was killed: settle what it was doing and requeue the rest."""
        was_ready = worker.ready
        self._retire(worker, kill=killed)
        code = worker.process.exitcode
        task = worker.task
        if task is None:
            if not was_ready:
                self._start_failures += 1
                if self._start_failures >= _MAX_START_FAILURES:
                    raise WorkerStartError(
                        f"grading workers keep failing to start (last exit code {code}); the last one said:\n"
                        + (worker.failure or self._last_words())
                    )
            return
        limit = f"{self.timeout:g}s"
        if not worker.gold_done:
            why = f"no verdict within {limit}" if killed else f"worker died (exit code {code})"
            for key, _answer in task.items:
                on_result(key, "error", f"gold answer: {why}")
            return
        key, _answer = task.items[worker.done]
        if killed:
            on_result(key, "timeout", f"killed after {limit} without a verdict")
        else:
            on_result(key, "error", f"worker died (exit code {code})")
        rest = task.items[worker.done + 1 :]
        if rest:
            queue.appendleft(Task(task.gold, rest))
