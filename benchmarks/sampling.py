"""Benchmark: flopmatch's sampling backends vs the engines they wrap, same model and workload, one run.

* vllm: ``create_backend("vllm", ...).generate(requests)`` vs raw ``LLM.generate(prompts,
  SamplingParams(n=S))`` on the same ``vllm.LLM`` instance (so engine start-up and caches are shared).
  The raw call gets its chat prompts already rendered to token ids; flopmatch's time includes
  rendering them (chat template + tokenization) and building one ``Completion`` per sample.
* hf: ``create_backend("hf", ...).generate(requests)`` (seeded per-row sampler, length-sorted left
  padding) vs raw ``model.generate(do_sample=True, num_return_sequences=S)`` on the same model object,
  every prompt in one ``generate`` call for both (``batch_size`` = all rows).

Both sides generate exactly ``--tokens`` tokens per sample (``ignore_eos`` / ``min_new_tokens``), so
the work is equal; the script checks the token counts. After ``--warmup`` untimed runs of each side,
runs alternate raw / flopmatch in A-B-B-A order (``--repeats`` runs per side) to cancel drift, and the
median time of each side is reported.

Prompts: the first ``--prompts`` GSM8K test questions (../shared/data, else synthetic) as zero-shot
chat prompts (``PromptConfig(shots=0)``), so decoding dominates as it does when sampling many
solutions. Model: the offline Qwen2.5-Coder-0.5B-Instruct by default (``flopmatch models prepare``);
``--model`` takes any registry name, local path or hub id.

Run: ``python benchmarks/sampling.py [--prompts 32 --samples 8 --tokens 128] [--engines vllm,hf]``.
Prints each side's seconds and tokens/s and the ratio flopmatch/raw throughput (goal >= 0.95).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "4")
os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
TEMPERATURE, TOP_P = 0.7, 0.95


def load_questions(n: int) -> list[str]:
    path = DATA / "gsm8k" / "test.jsonl"
    if path.is_file():
        with open(path) as handle:
            return [json.loads(line)["question"] for line, _ in zip(handle, range(n), strict=False)]
    return [
        f"A farmer has {7 + i} cows and buys {3 * i + 2} more. How many cows are there now?" for i in range(n)
    ]


def make_requests(questions: list[str], samples: int):
    from flopmatch.backends import Request
    from flopmatch.problems import Problem
    from flopmatch.prompts import PromptConfig, build_prompt

    config = PromptConfig(shots=0)
    return [
        Request(
            f"q{i}",
            build_prompt(Problem(f"q{i}", "gsm8k", "test", q, ""), config),
            tuple(range(samples)),
            tuple(1000 * i + s for s in range(samples)),
        )
        for i, q in enumerate(questions)
    ]


def abba(
    raw: Callable[[], int], ours: Callable[[], int], repeats: int, warmup: int
) -> dict[str, list[float]]:
    """Time both sides in A-B-B-A order after ``warmup`` untimed runs of each (the first full-size
    batch pays for allocations); each callable returns the tokens it generated."""
    times: dict[str, list[float]] = {"raw": [], "flopmatch": []}
    tokens: dict[str, set[int]] = {"raw": set(), "flopmatch": set()}
    for _ in range(warmup):
        tokens["raw"].add(raw())
        tokens["flopmatch"].add(ours())
    order = [("raw", raw), ("flopmatch", ours), ("flopmatch", ours), ("raw", raw)] * ((repeats + 1) // 2)
    for name, fn in order[: 2 * repeats]:
        started = time.perf_counter()
        tokens[name].add(fn())
        times[name].append(time.perf_counter() - started)
        print(f"  {name:<9} {times[name][-1]:8.2f} s", flush=True)
    if len(tokens["raw"] | tokens["flopmatch"]) != 1:
        raise SystemExit(f"unequal work: generated tokens {tokens}")
    return times | {"tokens": [tokens["raw"].pop()]}


def bench_vllm(model: str, requests, args) -> dict:
    from vllm import SamplingParams as VSamplingParams

    from flopmatch.backends import SamplingParams, create_backend

    backend = create_backend(
        "vllm", model, dtype=args.dtype, max_model_len=args.max_model_len, ignore_eos=True, flush_every=10**9
    )
    params = SamplingParams(temperature=TEMPERATURE, top_p=TOP_P, max_tokens=args.tokens)
    prompts = [backend.engine_prompt(r.prompt) for r in requests]  # the raw side gets rendered prompts
    raw_params = VSamplingParams(
        n=args.samples, temperature=TEMPERATURE, top_p=TOP_P, max_tokens=args.tokens, ignore_eos=True
    )

    def raw() -> int:
        outputs = backend.llm.generate(prompts, raw_params, use_tqdm=False)
        return sum(len(c.token_ids) for o in outputs for c in o.outputs)

    def ours() -> int:
        return sum(c.completion_tokens for batch in backend.generate(requests, params) for c in batch)

    try:
        return abba(raw, ours, args.repeats, args.warmup) | {"seeding": backend.seeding}
    finally:
        backend.close()


def bench_hf(model: str, requests, args) -> dict:
    import torch

    from flopmatch.backends import SamplingParams, create_backend

    rows = sum(len(r.sample_indices) for r in requests)
    backend = create_backend("hf", model, dtype=args.dtype, batch_size=rows, ignore_eos=True)
    params = SamplingParams(temperature=TEMPERATURE, top_p=TOP_P, max_tokens=args.tokens)
    tok, hf_model = backend.tokenizer, backend.hf_model
    encoded = [backend.encode(r.prompt) for r in requests]
    width = max(map(len, encoded))
    input_ids = torch.tensor([[tok.pad_token_id] * (width - len(e)) + e for e in encoded])
    attention_mask = torch.tensor([[0] * (width - len(e)) + [1] * len(e) for e in encoded])

    def raw() -> int:
        with torch.inference_mode():
            out = hf_model.generate(
                input_ids=input_ids,
                attention_mask=attention_mask,
                do_sample=True,
                temperature=TEMPERATURE,
                top_p=TOP_P,
                top_k=0,
                max_new_tokens=args.tokens,
                min_new_tokens=args.tokens,
                num_return_sequences=args.samples,
                pad_token_id=tok.pad_token_id,
            )
        return int(out[:, width:].numel())

    def ours() -> int:
        return sum(c.completion_tokens for batch in backend.generate(requests, params) for c in batch)

    try:
        return abba(raw, ours, args.repeats, args.warmup) | {
            "dtype": str(backend.dtype),
            "threads": torch.get_num_threads(),
        }
    finally:
        backend.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="qwen2.5-coder-0.5b-instruct")
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=2, help="timed runs per side (A-B-B-A order)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed full-size runs per side first")
    parser.add_argument("--engines", default="vllm,hf")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--max-model-len", type=int, default=2048)
    parser.add_argument("--out", type=Path, help="also write the results as JSON here")
    args = parser.parse_args()

    from flopmatch.models import resolve_model

    model = resolve_model(args.model)
    requests = make_requests(load_questions(args.prompts), args.samples)
    print(
        f"model {args.model}; {args.prompts} prompts x {args.samples} samples x {args.tokens} tokens; "
        f"{args.warmup} warm-up + {args.repeats} timed runs per side"
    )
    results = {}
    for engine in args.engines.split(","):
        print(f"[{engine}]", flush=True)
        results[engine] = {"vllm": bench_vllm, "hf": bench_hf}[engine](model, requests, args)

    print(f"\n{'engine':<6} {'raw s':>8} {'ours s':>8} {'raw tok/s':>10} {'ours tok/s':>11} {'ratio':>6}")
    for engine, r in results.items():
        raw_s, ours_s = statistics.median(r["raw"]), statistics.median(r["flopmatch"])
        tokens = r["tokens"][0]
        r["ratio"] = raw_s / ours_s
        verdict = "ok" if r["ratio"] >= 0.95 else "BELOW 0.95"
        print(
            f"{engine:<6} {raw_s:8.2f} {ours_s:8.2f} {tokens / raw_s:10.1f} {tokens / ours_s:11.1f} "
            f"{r['ratio']:6.3f}  {verdict}"
        )
    if args.out:
        args.out.write_text(
            json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "results": results}, indent=2)
        )


if __name__ == "__main__":
    main()
