"""Dataset-quality metrics: coverage@k, diversity@k, false-positive rate, and their uncertainty.

Everything here is a pure function of counts, texts or per-problem values, so it can be tested
against brute-force enumeration and reused by `analysis` (run directories) and `report`.

Definitions (paper §"Metrics of a synthetic dataset"):

- **coverage@k** — the share of problems solved by at least one of k samples. Per problem with n
  samples of which c are correct, the unbiased estimator is ``1 - C(n-c, k) / C(n, k)``
  (:func:`pass_at_k`); coverage@k is its mean over problems (:func:`coverage_at_k`).
- **diversity@k** — the number of *unique* correct solutions among k samples of a problem, averaged
  over problems. At k = n it is the observed count of unique correct solutions; for k < n it is the
  exact expectation over draws of k of the n samples without replacement
  (:func:`expected_unique_at_k`). "Unique" means distinct after :func:`normalize_solution`
  (whitespace and LaTeX formatting); :func:`near_duplicate_groups` is a separate, looser mode
  (word n-gram Jaccard ≥ a stated threshold) reported beside it, never instead of it.
- **FPR** — the share of answer-correct solutions whose reasoning is wrong, with a Wilson interval
  (:func:`wilson_interval`).

Uncertainty over problems comes from :func:`bootstrap_ci` (percentile bootstrap resampling problems,
the unit that was sampled). :func:`relative_change` formats WC-vs-SE differences the way the paper
reports them: "+11% coverage, +86% diversity, +7 pts FPR".
"""

from __future__ import annotations

import functools
import math
import re
import unicodedata
import zlib
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from flopmatch.errors import FlopmatchError
from flopmatch.formatting import paper_round


class MetricsError(FlopmatchError, ValueError):
    """Counts or settings a metric cannot be computed from: k above the samples, c above n, no problems,
    a threshold, alpha or bootstrap size out of range (``--k`` and a study's metric settings reach these)."""

# --------------------------------------------------------------------------- coverage


def _check_counts(n: int, c: int, k: int) -> None:
    for name, value in (("n", n), ("c", c), ("k", k)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise TypeError(f"{name} must be an integer, got {value!r}")
    if n < 1:
        raise MetricsError(f"n (samples) must be >= 1, got {n}")
    if not 0 <= c <= n:
        raise MetricsError(f"c (correct samples) must be in [0, n={n}], got {c}")
    if not 1 <= k <= n:
        raise MetricsError(f"k must be in [1, n={n}], got {k} (cannot estimate pass@k from fewer than k samples)")


def _log_miss_ratio(n: int, c: int, k: int) -> float:
    """log(C(n-c, k) / C(n, k)) for n - c >= k, as a sum of log1p terms.

    C(n-c, k)/C(n, k) = prod_{i=0}^{k-1} (n-c-i)/(n-i) = prod (1 - c/(n-i)). Summing log1p(-c/(n-i))
    with fsum never forms a binomial, so it stays exact to rounding for n in the tens of thousands.
    """
    return math.fsum(math.log1p(-c / (n - i)) for i in range(k))


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k for one problem: ``1 - C(n-c, k) / C(n, k)``.

    The probability that a uniformly random k-subset of the n samples holds at least one of the c
    correct ones. Computed as ``-expm1(sum log1p(-c/(n-i)))`` so the result keeps full relative
    precision both when it is tiny (c small, k small) and when it is close to 1.
    """
    _check_counts(n, c, k)
    if c == 0:
        return 0.0
    if n - c < k:
        return 1.0
    return -math.expm1(_log_miss_ratio(n, c, k))


def coverage_at_k(counts: Iterable[tuple[int, int]], k: int) -> float:
    """coverage@k: the mean of :func:`pass_at_k` over problems given ``(n, c)`` per problem.

    Every problem needs n >= k; a problem with fewer samples cannot be scored at k and is an error
    (drop it explicitly upstream and report how many were dropped).
    """
    values = [pass_at_k(int(n), int(c), k) for n, c in counts]
    if not values:
        raise MetricsError("coverage_at_k needs at least one problem")
    return math.fsum(values) / len(values)


# --------------------------------------------------------------------------- diversity


def expected_unique_at_k(n: int, multiplicities: Sequence[int], k: int) -> float:
    """Expected number of distinct correct solutions among k of n samples drawn without replacement.

    ``multiplicities`` holds, for each distinct correct solution j, how many of the n samples are
    copies of it (m_j >= 1, sum m_j = c <= n). By linearity of expectation

        E[#distinct seen] = sum_j P(at least one copy of j drawn) = sum_j (1 - C(n - m_j, k) / C(n, k))
                          = sum_j pass_at_k(n, m_j, k),

    exact, and equal to the observed count len(multiplicities) at k = n.
    """
    total = 0
    for m in multiplicities:
        if isinstance(m, bool) or not isinstance(m, (int, np.integer)) or m < 1:
            raise MetricsError(f"multiplicities must be positive integers, got {m!r}")
        total += int(m)
    if total > n:
        raise MetricsError(f"multiplicities sum to {total} > n={n}")
    if k < 1 or k > n:
        raise MetricsError(f"k must be in [1, n={n}], got {k}")
    return math.fsum(pass_at_k(n, int(m), k) for m in multiplicities)


def diversity_at_k(problems: Iterable[tuple[int, Sequence[int]]], k: int) -> float:
    """diversity@k: the mean over problems of :func:`expected_unique_at_k` given ``(n, multiplicities)``."""
    values = [expected_unique_at_k(int(n), mults, k) for n, mults in problems]
    if not values:
        raise MetricsError("diversity_at_k needs at least one problem")
    return math.fsum(values) / len(values)


def multiplicities(keys: Iterable[Hashable]) -> list[int]:
    """Group sizes of equal keys (e.g. normalised texts or near-duplicate group ids), first-seen order."""
    counts: dict[Hashable, int] = {}
    for key in keys:
        counts[key] = counts.get(key, 0) + 1
    return list(counts.values())


# --------------------------------------------------------------------------- normalisation

# LaTeX that changes how a solution looks, not what it says.
_LATEX_DROP = re.compile(
    r"\\(?:left|right|big|Big|bigg|Bigg|displaystyle|textstyle|limits|nolimits)(?![A-Za-z])"
    r"|\\[,;:! ]"
    r"|\\(?:q?quad)(?![A-Za-z])"
)
_LATEX_RENAME = (
    (re.compile(r"\\[dt]frac(?![A-Za-z])"), r"\\frac"),
    (re.compile(r"\\(?:le|leqslant)(?![A-Za-z])"), r"\\leq"),
    (re.compile(r"\\(?:ge|geqslant)(?![A-Za-z])"), r"\\geq"),
    (re.compile(r"\\ne(?![A-Za-z])"), r"\\neq"),
    (re.compile(r"\\fbox(?![A-Za-z])"), r"\\boxed"),
)
# Math delimiters: \[ \] \( \) $$ all become $.
_MATH_DELIMS = re.compile(r"\$\$|\\\[|\\\]|\\\(|\\\)")
# Braces around a single character argument: ^{2} == ^2, _{n} == _n.
_SINGLE_BRACE = re.compile(r"([\^_])\{(\w)\}")
_SPACE = re.compile(r"\s+")
# A space next to anything that is not a letter or digit carries no meaning: "2 + 3" == "2+3".
_SPACE_NEAR_SYMBOL = re.compile(r" (?=[^\w\\ ])|(?<=[^\w ]) ")


def normalize_solution(text: str) -> str:
    """Canonical form of a solution for exact-uniqueness counting.

    Removes differences of whitespace and LaTeX *formatting* only: Unicode NFKC; ``~`` and
    ``\\,``-style spacing commands; ``\\left``/``\\right``/``\\big``, ``\\displaystyle``;
    ``\\dfrac``/``\\tfrac`` → ``\\frac``; ``\\le`` → ``\\leq`` (and friends); every math delimiter
    (``$$``, ``\\[``, ``\\(``) → ``$``; ``^{2}`` → ``^2``; runs of whitespace → one space, and no space
    next to a symbol (``2 + 3 = 5`` ≡ ``2+3=5``). Wording, case and numbers are kept: two solutions
    that say different things stay different.
    """
    if not isinstance(text, str):
        raise TypeError(f"solution text must be a str, got {type(text).__name__}")
    text = unicodedata.normalize("NFKC", text)
    text = text.replace("~", " ")
    text = _LATEX_DROP.sub(" ", text)
    for pattern, replacement in _LATEX_RENAME:
        text = pattern.sub(replacement, text)
    text = _MATH_DELIMS.sub("$", text)
    text = _SINGLE_BRACE.sub(r"\1\2", text)
    text = _SPACE.sub(" ", text).strip()
    text = _SPACE_NEAR_SYMBOL.sub("", text)
    return text


# --------------------------------------------------------------------------- near duplicates

NEAR_DUP_THRESHOLD = 0.8
NEAR_DUP_NGRAM = 3
NEAR_DUP_NUM_PERM = 128
NEAR_DUP_MISS = 1e-6  # LSH may miss a pair AT the threshold with at most this probability

_WORD = re.compile(r"\S+")


@functools.lru_cache(maxsize=65_536)
def shingles(text: str, ngram: int = NEAR_DUP_NGRAM) -> frozenset[int]:
    """The set of hashed word n-grams of the normalised text (a text shorter than n is one shingle).

    Hashes are CRC-32 of the UTF-8 n-gram, so they are the same in every process and Python version
    (unlike ``hash()``, which is salted per process); a rare collision can only merge two shingles,
    and every merge of solutions is confirmed on these sets, never on signatures alone. Cached, since
    one solution is compared at several budgets.
    """
    words = _WORD.findall(normalize_solution(text))
    if not words:
        return frozenset()
    return frozenset(
        zlib.crc32(" ".join(words[i : i + ngram]).encode()) for i in range(max(1, len(words) - ngram + 1))
    )


def jaccard(a: frozenset[int], b: frozenset[int]) -> float:
    """|a ∩ b| / |a ∪ b|, with two empty sets counted as identical (1.0)."""
    if not a and not b:
        return 1.0
    return len(a & b) / len(a | b)


@functools.lru_cache(maxsize=8)
def _minhash_seeds(num_perm: int) -> np.ndarray:
    # Fixed: signatures must not depend on any caller's seed.
    return np.random.default_rng(0x5EED).integers(0, 2**63, size=num_perm, dtype=np.uint64)


def _mix64(z: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser: a bijective 64-bit mixer (uint64 arithmetic wraps, as intended)."""
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def minhash_signature(shingle_set: frozenset[int], num_perm: int = NEAR_DUP_NUM_PERM) -> np.ndarray:
    """MinHash signature: for each of ``num_perm`` seeded 64-bit hashes mix64(x XOR seed_i), the minimum.

    A strong mixer matters: a linear a·x + b with small a barely wraps and is nearly monotone in x,
    so every signature would pick the smallest shingle and estimate nothing. P(signatures agree at a
    position) = Jaccard, which the tests check.
    """
    seeds = _minhash_seeds(num_perm)
    if not shingle_set:
        return np.full(num_perm, np.iinfo(np.uint64).max, dtype=np.uint64)
    x = np.fromiter(shingle_set, dtype=np.uint64, count=len(shingle_set))
    return _mix64(x[:, None] ^ seeds[None, :]).min(axis=0)


def lsh_rows(threshold: float, num_perm: int = NEAR_DUP_NUM_PERM, miss: float = NEAR_DUP_MISS) -> int:
    """Rows per LSH band: the largest divisor r of ``num_perm`` with P(miss | J = threshold) <= ``miss``.

    A pair with Jaccard J shares at least one band of r rows with probability 1 - (1 - J^r)^(num_perm/r).
    Fewer rows means more candidates (slower, never less exact); r = 1 compares nearly every pair.
    """
    best = 1
    for r in range(1, num_perm + 1):
        if num_perm % r == 0 and (1 - threshold**r) ** (num_perm // r) <= miss:
            best = r
    return best


def near_duplicate_groups(
    texts: Sequence[str],
    *,
    threshold: float = NEAR_DUP_THRESHOLD,
    ngram: int = NEAR_DUP_NGRAM,
    num_perm: int = NEAR_DUP_NUM_PERM,
) -> list[int]:
    """Group ids for near-duplicate texts: connected components of "Jaccard ≥ threshold".

    Two solutions are near-duplicates when the exact Jaccard similarity of their word ``ngram``-gram
    sets (after :func:`normalize_solution`) is at least ``threshold`` (default 0.8 over 3-grams).
    MinHash + LSH banding only proposes candidate pairs, so the cost stays near-linear for thousands
    of samples; every candidate is confirmed with the exact Jaccard, so there are no false merges. The
    band shape is chosen for the threshold (:func:`lsh_rows`) so that a pair exactly at the threshold
    is missed with probability below 1e-6 (0.8 → 32 bands of 4 rows; more similar pairs are missed
    even less often). Groups are the transitive closure (single linkage),
    numbered by first member in input order: the result is deterministic and independent of hashing
    seeds. Exact duplicates after normalisation always share a group.
    """
    if not 0 < threshold <= 1:
        raise MetricsError(f"threshold must be in (0, 1], got {threshold}")
    rows = lsh_rows(threshold, num_perm)
    bands = num_perm // rows
    n = len(texts)
    parent = list(range(n))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    def union(i: int, j: int) -> None:
        ri, rj = find(i), find(j)
        if ri != rj:
            parent[max(ri, rj)] = min(ri, rj)

    sets = [shingles(t, ngram) for t in texts]
    # Exact duplicates (same shingle set) merge without LSH.
    first_of: dict[frozenset[int], int] = {}
    reps: list[int] = []
    for i, s in enumerate(sets):
        if s in first_of:
            union(first_of[s], i)
        else:
            first_of[s] = i
            reps.append(i)
    buckets: dict[tuple[int, bytes], list[int]] = {}
    for i in reps:
        sig = minhash_signature(sets[i], num_perm)
        for band in range(bands):
            key = (band, sig[band * rows : (band + 1) * rows].tobytes())
            buckets.setdefault(key, []).append(i)
    checked: set[tuple[int, int]] = set()
    for members in buckets.values():
        for x in range(len(members)):
            for y in range(x + 1, len(members)):
                pair = (members[x], members[y])
                if pair in checked:
                    continue
                checked.add(pair)
                if find(pair[0]) != find(pair[1]) and jaccard(sets[pair[0]], sets[pair[1]]) >= threshold:
                    union(*pair)
    roots: dict[int, int] = {}
    return [roots.setdefault(find(i), len(roots)) for i in range(n)]


# --------------------------------------------------------------------------- intervals


def wilson_interval(x: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion x/n (good at small n and at 0 or n successes)."""
    if n < 1:
        raise MetricsError(f"n must be >= 1 for a Wilson interval, got {n}")
    if not 0 <= x <= n:
        raise MetricsError(f"x must be in [0, n={n}], got {x}")
    if z <= 0:
        raise MetricsError(f"z must be > 0, got {z}")
    p = x / n
    z2 = z * z
    denom = 1 + z2 / n
    center = (p + z2 / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / denom
    return max(0.0, center - half), min(1.0, center + half)


Stat = Callable[[np.ndarray], float] | Literal["mean"]

_BOOT_CHUNK_CELLS = 4_000_000  # resample weights are built this many cells at a time (bounded memory)


def _check_boot(n_values: int, n_boot: int, alpha: float) -> None:
    if n_values == 0:
        raise MetricsError("a bootstrap needs at least one problem")
    if n_boot < 1:
        raise MetricsError(f"n_boot must be >= 1, got {n_boot}")
    if not 0 < alpha < 1:
        raise MetricsError(f"alpha must be in (0, 1), got {alpha}")


def bootstrap_mean_cis(
    per_problem_values: np.ndarray, *, n_boot: int = 1000, seed: int = 0, alpha: float = 0.05
) -> tuple[np.ndarray, np.ndarray]:
    """Percentile bootstrap intervals of the column means of a (problems × metrics) matrix.

    All columns share the same resamples of problems (paired), which is both faster (one matrix
    product per chunk of resamples) and what a comparison between columns wants. Returns (lo, hi),
    one entry per column. Deterministic for a given ``seed``.
    """
    values = np.asarray(per_problem_values, dtype=float)
    if values.ndim != 2:
        raise MetricsError(f"expected a (problems x metrics) matrix, got shape {values.shape}")
    n = values.shape[0]
    _check_boot(n, n_boot, alpha)
    rng = np.random.default_rng(seed)
    chunk = max(1, _BOOT_CHUNK_CELLS // n)
    stats = np.empty((n_boot, values.shape[1]))
    for start in range(0, n_boot, chunk):
        rows = min(chunk, n_boot - start)
        idx = rng.integers(0, n, size=(rows, n))
        # weights[r, i] = how often problem i was drawn in resample r
        weights = np.bincount((idx + np.arange(rows)[:, None] * n).ravel(), minlength=rows * n).reshape(rows, n)
        stats[start : start + rows] = weights @ values / n
    lo, hi = np.quantile(stats, [alpha / 2, 1 - alpha / 2], axis=0)
    return lo, hi


def bootstrap_ci(
    per_problem_values: Sequence[float] | np.ndarray,
    stat: Stat = "mean",
    *,
    n_boot: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
) -> tuple[float, float]:
    """Percentile bootstrap interval of ``stat`` over problems.

    Problems are resampled with replacement (the problem is the unit the dataset was drawn in; samples
    of one problem are correlated, so resampling samples would understate the uncertainty).
    ``per_problem_values`` is 1-D (one value per problem) or 2-D (one row per problem, e.g. numerator
    and denominator of a ratio); ``stat`` maps a resampled array to a number ("mean" is vectorised and
    gives exactly :func:`bootstrap_mean_cis` of that one column). Deterministic for a given ``seed``.
    """
    values = np.asarray(per_problem_values, dtype=float)
    if values.ndim not in (1, 2):
        raise MetricsError(f"per_problem_values must be 1-D or 2-D, got shape {values.shape}")
    _check_boot(len(values), n_boot, alpha)
    if stat == "mean":
        if values.ndim != 1:
            raise MetricsError("stat='mean' needs 1-D values; pass a function for 2-D rows")
        lo, hi = bootstrap_mean_cis(values[:, None], n_boot=n_boot, seed=seed, alpha=alpha)
        return float(lo[0]), float(hi[0])
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(values), size=(n_boot, len(values)))
    stats = np.array([float(stat(values[row])) for row in idx])
    lo, hi = np.quantile(stats, [alpha / 2, 1 - alpha / 2])
    return float(lo), float(hi)


# --------------------------------------------------------------------------- groups


def problem_groups(
    problems: Iterable[tuple[str, str | None, str | None]],
) -> dict[str, list[str]]:
    """Problem ids per breakdown group from ``(problem_id, level, subject)`` triples.

    Always has "all"; adds "level=<level>" and "subject=<subject>" for every non-empty value, in sorted
    order, so tables list groups the same way on every run.
    """
    groups: dict[str, list[str]] = {"all": []}
    by_level: dict[str, list[str]] = {}
    by_subject: dict[str, list[str]] = {}
    for pid, level, subject in problems:
        groups["all"].append(pid)
        if level not in (None, ""):
            by_level.setdefault(f"level={level}", []).append(pid)
        if subject not in (None, ""):
            by_subject.setdefault(f"subject={subject}", []).append(pid)
    for part in (by_level, by_subject):
        for name in sorted(part):
            groups[name] = part[name]
    return groups


# --------------------------------------------------------------------------- relative change

METRIC_LABELS: Mapping[str, str] = {
    "coverage": "coverage",
    "diversity": "diversity",
    "diversity_near_dup": "near-dup diversity",
    "fpr": "FPR",
    "fpr_judge": "FPR (judge)",
    "fpr_human": "FPR (human)",
    "accuracy": "accuracy",
}
# Rates the paper compares by their difference in percentage points, not by their ratio.
POINT_METRICS = frozenset({"fpr", "fpr_judge", "fpr_human"})


@dataclass(frozen=True)
class RelativeChange:
    """WC vs SE on one metric: ``value`` in % (relative) or percentage points, and its paper-style text."""

    value: float
    unit: Literal["%", "pts"]
    text: str


def _fmt_number(value: float) -> str:
    """Signed, rounded as the paper prints gains (:func:`flopmatch.formatting.paper_round`), ASCII sign."""
    rounded = paper_round(value)
    if rounded == int(rounded):
        rounded = int(rounded)
    return f"{rounded:+}" if rounded != 0 else "+0"


def relative_gain(wc: Any, se: Any) -> float:
    """The paper's relative gain of WC over SE, in percent: (WC − SE) / |SE| · 100; NaN when either is
    missing (None, NaN, not a number) or SE is 0."""
    try:
        wc, se = float(wc), float(se)
    except (TypeError, ValueError):
        return float("nan")
    if se == 0 or math.isnan(se) or math.isnan(wc):
        return float("nan")
    return (wc - se) / abs(se) * 100.0


def relative_change(wc: float, se: float, metric: str) -> RelativeChange:
    """The paper's WC-vs-SE comparison: relative % for coverage/diversity, points for FPR.

    ``relative_change(0.61*1.11, 0.61, "coverage").text == "+11% coverage"``;
    ``relative_change(0.24, 0.17, "fpr").text == "+7 pts FPR"``. A relative change against an SE value
    of 0 is undefined and says so ("n/a") instead of printing inf.
    """
    label = METRIC_LABELS.get(metric, metric)
    if metric in POINT_METRICS:
        value = (wc - se) * 100.0
        return RelativeChange(value, "pts", f"{_fmt_number(value)} pts {label}")
    value = relative_gain(wc, se)
    if math.isnan(value):
        return RelativeChange(value, "%", f"n/a {label} (SE {se:g})")
    return RelativeChange(value, "%", f"{_fmt_number(value)}% {label}")


def format_changes(changes: Iterable[RelativeChange]) -> str:
    """Join changes as the paper does: "+11% coverage, +86% diversity, +7 pts FPR"."""
    return ", ".join(c.text for c in changes)
