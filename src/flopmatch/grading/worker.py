"""The grading worker process: parses a gold answer once, then checks answers against it.

Imported by the fork server before any worker starts (see :mod:`.server`), so that starting or
replacing a worker costs a ``fork()``, not a fresh import of sympy and math-verify.

Each check runs under a soft alarm (``setitimer``), which interrupts the pure-Python parts of
sympy; the parent's watchdog kills the process when a check is stuck where signals cannot reach
(inside a big-integer C routine, for instance). Memory is capped with ``RLIMIT_AS`` so that a
runaway ``(10^{10})!`` fails with ``MemoryError`` instead of starving the machine.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from multiprocessing.connection import Connection

import math_verify  # noqa: F401 - imported here so the fork server holds it warm

from flopmatch.grading.equivalence import check, parse_answer, quiet_math_verify

# Messages from a worker to the parent.
READY = "ready"
FAILED = "failed"  # the worker could not start; carries its traceback
GOLD = "gold"
ITEM = "item"


class SoftTimeout(BaseException):
    """Raised by the worker's alarm. A BaseException, so that math-verify's and sympy's
    ``except Exception`` blocks cannot swallow it."""


def _on_alarm(signum: int, frame: object) -> None:
    raise SoftTimeout


@contextmanager
def _alarm(seconds: float) -> Iterator[None]:
    if seconds <= 0:  # no soft limit: the parent's watchdog alone bounds the work
        yield
        return
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)


def _limit_memory(max_bytes: int | None) -> None:
    if not max_bytes:
        return
    try:
        import resource

        _, hard = resource.getrlimit(resource.RLIMIT_AS)
        limit = max_bytes if hard == resource.RLIM_INFINITY else min(max_bytes, hard)
        resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    except (ImportError, ValueError, OSError):  # pragma: no cover - platform without RLIMIT_AS
        pass


def _die_with_parent() -> None:
    """Linux: get SIGKILL when the fork server (our parent) exits, which it does when the grading
    process dies (its control socket closes) — so a check stuck in C code never outlives a killed run."""
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGKILL)
    except OSError:  # pragma: no cover - no libc
        pass


def _failure(exc: BaseException) -> tuple[str, str]:
    """Status and note for an exception raised by a check. Resource exhaustion is a timeout (no
    verdict within the limits); anything else is an error. Only the type is reported: rendering a
    sympy exception's message can itself take unbounded time."""
    if isinstance(exc, SoftTimeout):
        return "timeout", "no verdict within the time limit"
    if isinstance(exc, (MemoryError, RecursionError, OverflowError)):
        return "timeout", f"resource limit: {type(exc).__name__}"
    return "error", f"checker raised {type(exc).__name__}"


def warm_up() -> None:
    """Parse and compare once, so sympy's and the LaTeX parser's lazy set-up (about a second, more
    on a busy machine) is not charged to the first real answer's time limit."""
    quiet_math_verify()
    check(parse_answer("\\frac{1}{2}"), "\\sqrt{x}+0.5")


def main(conn: Connection, memory_limit: int | None) -> None:
    """Serve tasks ``(gold, [(key, answer), ...], seconds)`` until ``None`` or the parent goes away.

    Announces itself with ``(READY, pid)``; a worker that cannot start sends ``(FAILED, traceback)``
    first, so the grading process reports the real cause."""
    try:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
        signal.signal(signal.SIGALRM, _on_alarm)
        _die_with_parent()
        _limit_memory(memory_limit)
        warm_up()
    except BaseException:
        try:
            conn.send((FAILED, traceback.format_exc()))
        except (OSError, ValueError):
            pass
        raise
    conn.send((READY, os.getpid()))
    while True:
        try:
            task = conn.recv()
        except (EOFError, OSError):
            return
        if task is None:
            return
        gold, items, soft_timeout = task
        try:
            with _alarm(soft_timeout):
                gold_parsed = parse_answer(gold)
            note = "" if gold_parsed else "gold answer could not be parsed"
        except BaseException as exc:  # noqa: BLE001 - every failure becomes a status
            gold_parsed, note = [], f"gold answer: {_failure(exc)[1]}"
        conn.send((GOLD, bool(gold_parsed), note))
        if not gold_parsed:
            continue
        for key, answer in items:
            try:
                with _alarm(soft_timeout):
                    status, note = check(gold_parsed, answer)
            except BaseException as exc:  # noqa: BLE001
                status, note = _failure(exc)
            conn.send((ITEM, key, status, note))
