"""Independent CPU jobs (fine-tuning runs, evaluations) in parallel worker processes.

A study's fine-tuning runs and evaluations do not depend on each other. On a CPU the toy models are so
small that torch's intra-op threads find almost nothing to split (the demo on 2 cores used one core's
worth of CPU time), so the way to use every core is one job per core, each with one torch thread.
Workers are spawned (a fresh interpreter, no forked torch state) and reused for many jobs.

A job's result depends only on its arguments and the torch thread count, never on which worker ran it
or in what order, so a study gives the same numbers for any ``workers`` > 1 (one thread per job).
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from typing import Any

from flopmatch.errors import FlopmatchError


class WorkerCountError(FlopmatchError, ValueError):
    """A worker count below 1 (a study's or command's ``workers`` setting)."""


def _single_thread_worker() -> None:
    """Worker initialiser: one torch (and BLAS/OpenMP) thread, so N workers use N cores and no more."""
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[name] = "1"
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import torch

    torch.set_num_threads(1)


def run_parallel(
    function: Callable[..., Any],
    calls: Sequence[dict[str, Any]],
    workers: int,
    *,
    on_done: Callable[[int, Any], None] | None = None,
) -> list[Any]:
    """``[function(**kwargs) for kwargs in calls]``, computed by ``workers`` spawned processes.

    ``function`` must be importable by name (a module-level function) and its arguments and result
    picklable. ``on_done(index, result)`` is called in this process as each call finishes (progress,
    bookkeeping). The first exception raised by a call is re-raised here once the running calls stop.
    """
    if workers < 1:
        raise WorkerCountError(f"workers must be >= 1, got {workers}")
    results: list[Any] = [None] * len(calls)
    if not calls:
        return results
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(
        max_workers=min(workers, len(calls)), mp_context=context, initializer=_single_thread_worker
    ) as pool:
        futures = {pool.submit(function, **kwargs): index for index, kwargs in enumerate(calls)}
        try:
            for future in as_completed(futures):
                index = futures[future]
                results[index] = future.result()
                if on_done is not None:
                    on_done(index, results[index])
        except BaseException:
            for future in futures:
                future.cancel()
            raise
    return results
