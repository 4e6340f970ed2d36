"""Time the metric paths `analyze` leans on against their obvious baselines, in one run, and print ratios.

1. Near-duplicate grouping: MinHash-LSH candidates + exact confirmation (flopmatch) vs exact Jaccard over
   all pairs (the baseline), on N solutions of one problem. Both must give the same groups.
2. Bootstrap CIs of M metric columns over P problems: one paired resampling as matrix products
   (flopmatch.metrics.bootstrap_mean_cis: resample counts x values) vs the vectorised numpy way
   (gather ``values[idx]`` for a block of resamples and average it), drawing the same resamples from
   the same seed; both must give the same intervals.

    .venv/bin/python benchmarks/metrics_speed.py [--n 1500] [--problems 7500] [--metrics 30] [--json OUT]
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path

import numpy as np

from flopmatch.metrics import NEAR_DUP_THRESHOLD, bootstrap_mean_cis, jaccard, near_duplicate_groups, shingles


def all_pairs_groups(texts: list[str], threshold: float) -> list[int]:
    sets = [shingles(t) for t in texts]
    parent = list(range(len(texts)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, j in itertools.combinations(range(len(texts)), 2):
        if jaccard(sets[i], sets[j]) >= threshold:
            a, b = find(i), find(j)
            if a != b:
                parent[max(a, b)] = min(a, b)
    roots: dict[int, int] = {}
    return [roots.setdefault(find(i), len(roots)) for i in range(len(texts))]


def solutions(n: int, seed: int = 0) -> list[str]:
    """n solution-like texts: 50 distinct 'methods', each rewritten with a few word substitutions."""
    rng = np.random.default_rng(seed)
    vocab = [f"w{i}" for i in range(400)]
    bases = [list(rng.choice(vocab, size=120)) for _ in range(50)]
    out = []
    for _ in range(n):
        words = list(bases[int(rng.integers(0, len(bases)))])
        for _ in range(int(rng.integers(0, 4))):
            words[int(rng.integers(0, len(words)))] = str(rng.choice(vocab))
        out.append(" ".join(words))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=1500, help="solutions of one problem (near-dup benchmark)")
    parser.add_argument("--problems", type=int, default=7500)
    parser.add_argument("--metrics", type=int, default=30)
    parser.add_argument("--n-boot", type=int, default=1000)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    figures: dict[str, dict] = {}

    texts = solutions(args.n)
    t = time.perf_counter()
    fast = near_duplicate_groups(texts)
    t_fast = time.perf_counter() - t
    t = time.perf_counter()
    slow = all_pairs_groups(texts, NEAR_DUP_THRESHOLD)
    t_slow = time.perf_counter() - t
    assert fast == slow, "LSH grouping disagrees with exact all-pairs grouping"
    print(
        f"near-dup groups, n={args.n}: flopmatch {t_fast:.2f}s, all-pairs {t_slow:.2f}s, "
        f"speed-up {t_slow / t_fast:.1f}x ({len(set(fast))} groups, identical)"
    )
    figures["near_dup"] = {
        "n": args.n,
        "flopmatch_s": t_fast,
        "all_pairs_s": t_slow,
        "groups": len(set(fast)),
    }

    rng = np.random.default_rng(1)
    values = rng.random((args.problems, args.metrics))
    t = time.perf_counter()
    lo, hi = bootstrap_mean_cis(values, n_boot=args.n_boot, seed=0)
    t_fast = time.perf_counter() - t
    t = time.perf_counter()
    base_lo, base_hi = gather_bootstrap_mean_cis(values, n_boot=args.n_boot, seed=0)
    t_base = time.perf_counter() - t
    # same resamples (the draws do not depend on how they are blocked), summed in another order
    assert np.allclose(lo, base_lo, rtol=0, atol=1e-12) and np.allclose(hi, base_hi, rtol=0, atol=1e-12), (
        "bootstrap_mean_cis disagrees with the vectorised numpy bootstrap"
    )
    print(
        f"bootstrap, {args.problems} problems x {args.metrics} metrics x {args.n_boot} resamples: "
        f"flopmatch {t_fast:.2f}s, vectorised numpy gather {t_base:.2f}s, speed-up {t_base / t_fast:.1f}x "
        f"(intervals equal to 1e-12)"
    )
    figures["bootstrap"] = {"problems": args.problems, "metrics": args.metrics, "n_boot": args.n_boot,
                            "flopmatch_s": t_fast, "numpy_gather_s": t_base}  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))


def gather_bootstrap_mean_cis(
    values: np.ndarray, *, n_boot: int, seed: int, alpha: float = 0.05, block_cells: int = 1 << 24
) -> tuple[np.ndarray, np.ndarray]:
    """The usual vectorised percentile bootstrap of column means: index the rows of a block of
    resamples at once (``values[idx]``, resamples x problems x metrics) and average over problems.
    Blocks bound the memory (``block_cells`` floats)."""
    n, m = values.shape
    rng = np.random.default_rng(seed)
    rows = max(1, block_cells // (n * m))
    stats = np.empty((n_boot, m))
    for start in range(0, n_boot, rows):
        idx = rng.integers(0, n, size=(min(rows, n_boot - start), n))
        stats[start : start + len(idx)] = values[idx].mean(axis=1)
    lo, hi = np.quantile(stats, [alpha / 2, 1 - alpha / 2], axis=0)
    return lo, hi


if __name__ == "__main__":
    main()
