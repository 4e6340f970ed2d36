"""transformers ``generate``: no serving engine needed, any causal LM, CPU or GPU.

Batching: every (request, sample) is a row; rows are ordered by prompt length and cut into batches of
``batch_size`` rows, left-padded, so a batch wastes little on padding and a request's samples share a
batch. A prompt is repeated once per sample row, which is what ``num_return_sequences`` does inside
``generate``; doing it here lets one batch mix prompts with different sample counts.

Seeding (``seeding == "per-request"``): sampling is done by :class:`SeededSampler`, a logits processor
that draws each row's token by inverse-CDF sampling with a uniform number computed from that row's
seed and the step index (a counter-based hash, no shared RNG state), and hands ``generate`` a one-hot
distribution that its greedy step then picks. So a sample is a function of (seed, prompt, sampling
parameters, weights) and of the logits it sees:

* Exactly reproducible: the same requests in the same batches (same ``batch_size``, same order) on
  the same hardware, dtype and library versions give bit-identical text.
* Across different batchings (a sample generated alone vs next to others, a low budget vs a high one),
  the draw for a given seed is the same; only the logits can differ, by float rounding from padding
  and batch shape. A token flips only where that rounding moves a CDF boundary across the seed's
  uniform draw: rare in float32, more frequent in bfloat16.

The temperature and top-p used are the request's ``SamplingParams`` only; the model's
``generation_config`` sampling defaults (top_k, repetition penalty...) are not applied, as in vLLM.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from flopmatch.backends._common import no_chat_template
from flopmatch.backends.base import BackendConfigError, Completion, Message, Request, SamplingParams, Seeding

log = logging.getLogger(__name__)

_MASK64 = (1 << 64) - 1


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64 finaliser on a uint64 array (wrapping arithmetic): a fast, well-mixed hash."""
    x = x + np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def seeded_uniforms(seeds: Sequence[int], step: int) -> np.ndarray:
    """One uniform number in [0, 1) per seed for generation step ``step``; a pure function of both."""
    keys = _splitmix64(np.array([s & _MASK64 for s in seeds], dtype=np.uint64))
    mixed = _splitmix64(keys ^ _splitmix64(np.array([step], dtype=np.uint64)))
    return (mixed >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


class SeededSampler:
    """A ``LogitsProcessor`` that samples each row with its own seed (temperature, then top-p).

    It returns scores that are 0 at the drawn token and -inf elsewhere, so greedy decoding selects
    exactly the drawn token. ``prompt_len`` is the padded prompt length, so the step index is
    ``input_ids.shape[1] - prompt_len``.
    """

    def __init__(self, seeds: Sequence[int], temperature: float, top_p: float, prompt_len: int):
        if temperature <= 0:
            raise BackendConfigError("SeededSampler needs temperature > 0 (temperature 0 is greedy decoding)")
        self.seeds, self.temperature, self.top_p, self.prompt_len = (
            list(seeds),
            temperature,
            top_p,
            prompt_len,
        )

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        import torch

        step = input_ids.shape[1] - self.prompt_len
        u = torch.from_numpy(seeded_uniforms(self.seeds, step)).to(scores.device, torch.float32)[:, None]
        probs = torch.softmax(scores.float() / self.temperature, dim=-1)
        if self.top_p < 1.0:
            probs, order = probs.sort(dim=-1, descending=True, stable=True)
            # keep the smallest head of the distribution whose mass reaches top_p (always the first)
            probs = probs * ((probs.cumsum(dim=-1) - probs) < self.top_p)
        else:
            order = None
        cdf = probs.cumsum(dim=-1)
        pick = torch.searchsorted(cdf, u * cdf[:, -1:], right=True).clamp_(max=cdf.shape[-1] - 1)
        tokens = order.gather(-1, pick) if order is not None else pick
        out = torch.full_like(scores, float("-inf"))
        return out.scatter_(-1, tokens, 0.0)


def auto_dtype(device: str) -> Any:
    """bf16 on GPUs that support it and on CPUs with native bf16 (AVX512-BF16 / AMX), else fp16 / fp32.

    Emulated bf16 on older CPUs is slower than fp32, hence the check.
    """
    import torch

    if device.startswith("cuda"):
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    native_bf16 = any(
        getattr(torch.cpu, probe, lambda: False)()
        for probe in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    )
    return torch.bfloat16 if native_bf16 else torch.float32


class HFBackend:
    """``create_backend("hf", model, ...)``.

    Options: ``dtype`` ("auto" → :func:`auto_dtype`, or "bfloat16" / "float32" / ...), ``device``
    (default cuda when available, else cpu), ``batch_size`` (rows per ``generate`` call; one row per
    sample), ``lora_path`` (a PEFT adapter, merged into the weights), ``ignore_eos`` (always generate
    ``max_tokens``: benchmarks), ``attn_implementation``, ``trust_remote_code``.
    """

    name = "hf"
    seeding: Seeding = "per-request"

    def __init__(
        self,
        model: str,
        *,
        dtype: str = "auto",
        device: str | None = None,
        batch_size: int = 64,
        lora_path: str | None = None,
        ignore_eos: bool = False,
        attn_implementation: str | None = None,
        trust_remote_code: bool = False,
    ):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from flopmatch.models import resolve_model

        if batch_size < 1:
            raise BackendConfigError(f"batch_size must be >= 1, got {batch_size}")
        self.model = model
        self.path = resolve_model(model)
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.dtype = auto_dtype(self.device) if dtype == "auto" else getattr(torch, dtype)
        self.batch_size = batch_size
        self.ignore_eos = ignore_eos
        self.tokenizer = AutoTokenizer.from_pretrained(self.path, trust_remote_code=trust_remote_code)
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        kwargs: dict[str, Any] = {"dtype": self.dtype, "trust_remote_code": trust_remote_code}
        if attn_implementation:
            kwargs["attn_implementation"] = attn_implementation
        hf_model = AutoModelForCausalLM.from_pretrained(self.path, **kwargs)
        if lora_path is not None:
            from peft import PeftModel

            hf_model = PeftModel.from_pretrained(hf_model, str(lora_path)).merge_and_unload()
        self.hf_model = hf_model.to(self.device).eval()
        eos = self.hf_model.generation_config.eos_token_id
        if eos is None:
            eos = self.tokenizer.eos_token_id
        self.eos_ids: set[int] = set(eos if isinstance(eos, list) else [eos])

    def __repr__(self) -> str:
        return f"HFBackend(model={self.model!r}, device={self.device!r}, dtype={self.dtype})"

    def encode(self, prompt: str | list[Message]) -> list[int]:
        """Token ids of a prompt: raw text with the tokenizer's special tokens (BOS), chat messages
        through the chat template (which writes its own special tokens)."""
        if isinstance(prompt, str):
            return self.tokenizer(prompt, add_special_tokens=True)["input_ids"]
        if not self.tokenizer.chat_template:
            raise no_chat_template(self.model)
        text = self.tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def _generation_config(self, params: SamplingParams) -> Any:
        from transformers import GenerationConfig

        return GenerationConfig(
            do_sample=False,  # SeededSampler draws the token; greedy then selects it
            num_beams=1,
            temperature=1.0,
            top_p=1.0,
            repetition_penalty=1.0,
            max_new_tokens=params.max_tokens,
            min_new_tokens=params.max_tokens if self.ignore_eos else None,
            stop_strings=list(params.stop) or None,
            eos_token_id=sorted(self.eos_ids),
            pad_token_id=self.tokenizer.pad_token_id,
        )

    def generate(self, requests: Sequence[Request], params: SamplingParams) -> Iterator[list[Completion]]:
        """One batch of completions per ``generate`` call (``batch_size`` rows)."""
        import torch
        from transformers import LogitsProcessorList

        prompt_ids = [self.encode(r.prompt) for r in requests]
        rows = [(i, j) for i, r in enumerate(requests) for j in range(len(r.sample_indices))]
        rows.sort(key=lambda row: len(prompt_ids[row[0]]))  # stable: a request's samples stay together
        config = self._generation_config(params)
        pad = self.tokenizer.pad_token_id
        for start in range(0, len(rows), self.batch_size):
            batch = rows[start : start + self.batch_size]
            started = time.perf_counter()
            width = max(len(prompt_ids[i]) for i, _ in batch)
            padding = [width - len(prompt_ids[i]) for i, _ in batch]
            input_ids = torch.tensor(
                [[pad] * p + prompt_ids[i] for p, (i, _) in zip(padding, batch, strict=True)]
            )
            attention_mask = torch.tensor([[0] * p + [1] * (width - p) for p in padding])
            processors = LogitsProcessorList()
            if params.temperature > 0:
                seeds = [requests[i].seeds[j] for i, j in batch]
                processors.append(SeededSampler(seeds, params.temperature, params.top_p, width))
            with torch.inference_mode():
                out = self.hf_model.generate(
                    input_ids=input_ids.to(self.device),
                    attention_mask=attention_mask.to(self.device),
                    generation_config=config,
                    logits_processor=processors,
                    tokenizer=self.tokenizer if params.stop else None,
                )
            generated = out[:, width:].tolist()
            share = (time.perf_counter() - started) / len(batch)
            yield [
                self._completion(requests[i], j, len(prompt_ids[i]), tokens, params, share)
                for (i, j), tokens in zip(batch, generated, strict=True)
            ]

    def _completion(
        self,
        request: Request,
        j: int,
        prompt_tokens: int,
        tokens: list[int],
        params: SamplingParams,
        seconds: float,
    ) -> Completion:
        """Count the tokens a row really generated (up to and including EOS; finished rows are padded)
        and cut the text at the first stop string, as vLLM does."""
        eos_at = next((k for k, t in enumerate(tokens) if t in self.eos_ids), None)
        if eos_at is not None:
            count, reason = eos_at + 1, "stop"
        else:
            count = len(tokens)
            # A row that a stop string ended is padded to the batch's length; without stop strings a
            # trailing pad token was sampled (a model may emit it) and counts.
            while params.stop and count and tokens[count - 1] == self.tokenizer.pad_token_id:
                count -= 1
            reason = "length" if count >= params.max_tokens else "stop"
        text = self.tokenizer.decode(tokens[:count], skip_special_tokens=True)
        cuts = [k for k in (text.find(s) for s in params.stop) if k >= 0]
        if cuts:
            text, reason = text[: min(cuts)], "stop"
        return Completion(
            request_id=request.request_id,
            sample_idx=request.sample_indices[j],
            seed=request.seeds[j],
            text=text,
            prompt_tokens=prompt_tokens,
            completion_tokens=count,
            finish_reason=reason,
            seconds=seconds,
        )

    def close(self) -> None:
        """Drop the model so its memory can be reclaimed."""
        self.hf_model = None
        import gc

        gc.collect()
