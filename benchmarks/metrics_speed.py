"""Time the metric paths `analyze` leans on against their obvious baselines, in one run, and print ratios.

1. Near-duplicate grouping: MinHash-LSH candidates + exact confirmation (flopmatch) vs exact Jaccard over
   all pairs (the baseline), on N solutions of one problem. Both must give the same groups.
2. Bootstrap CIs of M metric columns over P problems: one paired resampling as matrix products
   (flopmatch.metrics.bootstrap_mean_cis) vs a Python loop of per-column bootstraps.

    .venv/bin/python benchmarks/metrics_speed.py [--n 1500] [--problems 7500] [--metrics 30]
"""

from __future__ import annotations

import argparse
import itertools
import time

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
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=1500, help="solutions of one problem (near-dup benchmark)")
    parser.add_argument("--problems", type=int, default=7500)
    parser.add_argument("--metrics", type=int, default=30)
    parser.add_argument("--n-boot", type=int, default=1000)
    args = parser.parse_args()

    texts = solutions(args.n)
    t = time.perf_counter()
    fast = near_duplicate_groups(texts)
    t_fast = time.perf_counter() - t
    t = time.perf_counter()
    slow = all_pairs_groups(texts, NEAR_DUP_THRESHOLD)
    t_slow = time.perf_counter() - t
    assert fast == slow, "LSH grouping disagrees with exact all-pairs grouping"
    print(f"near-dup groups, n={args.n}: flopmatch {t_fast:.2f}s, all-pairs {t_slow:.2f}s, "
          f"speed-up {t_slow / t_fast:.1f}x ({len(set(fast))} groups, identical)")

    rng = np.random.default_rng(1)
    values = rng.random((args.problems, args.metrics))
    t = time.perf_counter()
    lo, hi = bootstrap_mean_cis(values, n_boot=args.n_boot, seed=0)
    t_fast = time.perf_counter() - t
    t = time.perf_counter()
    for m in range(args.metrics):
        idx = np.random.default_rng(m).integers(0, args.problems, size=(args.n_boot, args.problems))
        stats = [values[row, m].mean() for row in idx]
        np.quantile(stats, [0.025, 0.975])
    t_slow = time.perf_counter() - t
    print(f"bootstrap, {args.problems} problems x {args.metrics} metrics x {args.n_boot} resamples: "
          f"flopmatch {t_fast:.2f}s, per-column loop {t_slow:.2f}s, speed-up {t_slow / t_fast:.1f}x")


if __name__ == "__main__":
    main()
