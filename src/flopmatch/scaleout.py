"""Scale-out on Ray: N engine replicas as Ray actors, each working through chunks of problems.

The driver (``flopmatch.sampling``) stays the only writer: a replica generates a whole chunk and
returns its completions; the driver persists them as one shard. A chunk is therefore either fully
on disk or not at all, and exactly-once follows from the driver's bookkeeping alone:

- a chunk whose replica died (``ray.kill``, OOM, node loss) is put back at the front of the queue
  and a fresh replica takes the dead one's place (up to ``max_replacements`` times), so its work is
  redone and nothing finished is lost;
- an error *inside* the backend (bad model, bad request) is not retried: it would fail again; it
  propagates, and the run resumes from disk once fixed.

Resources: a replica asks for ``num_gpus`` GPUs (default: the backend's ``tensor_parallel_size``,
or 1) when the cluster has GPUs and the backend runs a model (``vllm``, ``hf``); otherwise a share
of the CPUs (``num_cpus``, default: the cluster's CPUs divided by the replicas) and that many torch
threads. ``address=None`` starts a local Ray (``ray.init(num_cpus=os.cpu_count())``) unless one is
already initialised in this process; ``address="auto"`` or ``"ray://host:10001"`` joins a cluster
(flopmatch and the model must be importable/reachable on its nodes; the model reference is resolved
on the replica's node by ``flopmatch.models.resolve_model``).
"""

from __future__ import annotations

import logging
import os
import time
from collections import deque
from collections.abc import Iterator, Sequence
from typing import Any

from flopmatch.backends.base import BackendConfigError, Completion, Request, SamplingParams

log = logging.getLogger(__name__)

MODEL_BACKENDS = ("vllm", "hf")


class ReplicaWorker:
    """The body of one replica actor: a backend built on the actor's node, generating whole chunks."""

    def __init__(self, kind: str, model: str, options: dict[str, Any], threads: int | None):
        if threads:
            os.environ["OMP_NUM_THREADS"] = str(threads)
            try:
                import torch

                torch.set_num_threads(threads)
            except ImportError:  # pragma: no cover - torch is a dependency of the model backends
                pass
        from flopmatch.backends import create_backend
        from flopmatch.models import resolve_model

        self.backend = create_backend(kind, resolve_model(model), **options)

    def info(self) -> dict[str, str]:
        return {"name": self.backend.name, "seeding": self.backend.seeding, "pid": str(os.getpid())}

    def generate(self, requests: Sequence[Request], params: SamplingParams) -> list[Completion]:
        """All completions of a chunk; per-sample seconds filled in when the backend leaves them 0."""
        start = time.perf_counter()
        out: list[Completion] = []
        for batch in self.backend.generate(list(requests), params):
            out.extend(batch)
        elapsed = time.perf_counter() - start
        if out and not any(c.seconds for c in out):
            for completion in out:
                completion.seconds = elapsed / len(out)
        return out

    def close(self) -> None:
        self.backend.close()


class ReplicaPool:
    """N replicas of one backend on Ray, and the work queue that feeds them chunks.

    ``run(chunks, params)`` yields ``(chunk_index, completions)`` once per chunk, in completion
    order, whatever replicas die on the way. ``close()`` ends the replicas (and the local Ray this
    pool started). ``actors`` and ``in_flight()`` are exposed for monitoring and tests.
    """

    def __init__(
        self,
        kind: str,
        model: str,
        options: dict[str, Any] | None = None,
        *,
        replicas: int = 2,
        address: str | None = None,
        num_cpus: float | None = None,
        num_gpus: float | None = None,
        max_replacements: int | None = None,
        local_cpus: int | None = None,
    ):
        import ray

        if replicas < 1:
            raise BackendConfigError(f"replicas must be >= 1, got {replicas}")
        self.kind, self.model, self.options = kind, model, dict(options or {})
        self.replicas = replicas
        self._started_ray = False
        if not ray.is_initialized():
            if address:
                ray.init(address=address, log_to_driver=False)
            else:
                ray.init(
                    num_cpus=local_cpus or os.cpu_count() or 1, include_dashboard=False, log_to_driver=False
                )
            self._started_ray = True
        resources = ray.cluster_resources()
        self.actor_options = replica_resources(
            kind, self.options, replicas, cluster_cpus=resources.get("CPU", 1.0),
            cluster_gpus=resources.get("GPU", 0.0), num_cpus=num_cpus, num_gpus=num_gpus,
        )  # fmt: skip
        self.max_replacements = 2 * replicas if max_replacements is None else max_replacements
        self.replacements = 0
        self.actors: list[Any] = [None] * replicas
        self._busy: dict[int, int] = {}  # replica slot -> chunk index
        self._actor_cls = None
        try:
            for slot in range(replicas):
                self.actors[slot] = self._spawn()
            infos = [self._ready(slot) for slot in range(replicas)]
        except BaseException:
            self.close()
            raise
        self.backend_name = infos[0]["name"]
        self.seeding = infos[0]["seeding"]

    # ------------------------------------------------------------------ actors

    def _spawn(self):
        import ray

        threads = None
        if not self.actor_options.get("num_gpus"):
            threads = max(1, int(self.actor_options.get("num_cpus", 1)))
        if self._actor_cls is None:
            # Restarts are the pool's job (it knows which chunk to redo), so Ray's own are off.
            self._actor_cls = ray.remote(ReplicaWorker).options(
                max_restarts=0, max_task_retries=0, **self.actor_options
            )
        return self._actor_cls.remote(self.kind, self.model, self.options, threads)

    def _ready(self, slot: int) -> dict[str, str]:
        """Wait for a replica's engine to start; a failing start is an error, not a retry."""
        import ray

        try:
            return ray.get(self.actors[slot].info.remote())
        except ray.exceptions.RayActorError as exc:
            raise RuntimeError(
                f"replica {slot} of {self.model!r} ({self.kind}) failed to start: {exc}"
            ) from exc

    def _replace(self, slot: int, reason: BaseException) -> None:
        import ray

        if self.replacements >= self.max_replacements:
            raise RuntimeError(
                f"replica {slot} of {self.model!r} died and the pool already replaced {self.replacements} "
                f"replicas (max_replacements={self.max_replacements}); last error: {reason}. Finished chunks "
                "are on disk: rerun to resume."
            ) from reason
        self.replacements += 1
        log.warning("replica %d died (%s); starting a replacement (%d/%d)", slot, reason, self.replacements,
                    self.max_replacements)  # fmt: skip
        try:
            ray.kill(self.actors[slot])
        except Exception:  # noqa: BLE001 - already dead
            pass
        self.actors[slot] = self._spawn()
        self._ready(slot)

    def in_flight(self) -> dict[int, int]:
        """Replica slot -> index of the chunk it is generating."""
        return dict(self._busy)

    # ------------------------------------------------------------------ work

    def run(
        self, chunks: Sequence[Sequence[Request]], params: SamplingParams
    ) -> Iterator[tuple[int, list[Completion]]]:
        import ray

        pending: deque[int] = deque(range(len(chunks)))
        refs: dict[Any, int] = {}  # object ref -> slot
        idle = list(range(self.replicas))
        try:
            while pending or refs:
                while idle and pending:
                    slot, index = idle.pop(0), pending.popleft()
                    refs[self.actors[slot].generate.remote(list(chunks[index]), params)] = slot
                    self._busy[slot] = index
                [ready], _ = ray.wait(list(refs), num_returns=1)
                slot = refs.pop(ready)
                index = self._busy.pop(slot)
                try:
                    completions = ray.get(ready)
                except ray.exceptions.RayActorError as exc:
                    pending.appendleft(index)  # its chunk is redone, by whichever replica is free first
                    self._replace(slot, exc)
                    idle.append(slot)
                    continue
                idle.append(slot)
                yield index, completions
        finally:
            self._busy.clear()

    def close(self) -> None:
        """Stop the replicas (their in-flight work is dropped: it was never persisted)."""
        import ray

        if not ray.is_initialized():
            return
        for actor in self.actors:
            if actor is None:
                continue
            try:
                ray.get(actor.close.remote(), timeout=30)
            except Exception:  # noqa: BLE001 - dead or busy: kill it anyway
                pass
            try:
                ray.kill(actor)
            except Exception:  # noqa: BLE001
                pass
        self.actors = [None] * self.replicas
        if self._started_ray:
            ray.shutdown()
            self._started_ray = False


def replica_resources(
    kind: str,
    options: dict[str, Any],
    replicas: int,
    *,
    cluster_cpus: float,
    cluster_gpus: float,
    num_cpus: float | None = None,
    num_gpus: float | None = None,
) -> dict[str, float]:
    """Ray resources for one replica (pure).

    GPU clusters: ``tensor_parallel_size`` GPUs (default 1) and one CPU per model replica. CPU only
    (or an API backend): an equal share of the CPUs, at most the whole cluster's.
    """
    if num_gpus is None:
        uses_gpu = (
            kind in MODEL_BACKENDS and cluster_gpus > 0 and str(options.get("device", "")).lower() != "cpu"
        )
        num_gpus = float(options.get("tensor_parallel_size", 1)) if uses_gpu else 0.0
    if num_gpus and num_gpus * replicas > cluster_gpus:
        log.warning("%d replicas × %g GPUs exceed the cluster's %g GPUs: some replicas will wait", replicas,
                    num_gpus, cluster_gpus)  # fmt: skip
    if num_cpus is None:
        if num_gpus:
            num_cpus = 1.0
        else:
            share = cluster_cpus / replicas
            num_cpus = float(int(share)) if share >= 1 else share
    out = {"num_cpus": float(num_cpus)}
    if num_gpus:
        out["num_gpus"] = float(num_gpus)
    return out
