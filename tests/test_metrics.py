"""Metrics against brute-force enumeration, known values and known distributions."""

from __future__ import annotations

import itertools
import math
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flopmatch.metrics import (
    MetricsError,
    bootstrap_ci,
    coverage_at_k,
    diversity_at_k,
    expected_unique_at_k,
    format_changes,
    jaccard,
    multiplicities,
    near_duplicate_groups,
    normalize_solution,
    pass_at_k,
    problem_groups,
    relative_change,
    shingles,
    wilson_interval,
)

# --------------------------------------------------------------------------- pass@k


def brute_pass_at_k(n: int, c: int, k: int) -> Fraction:
    """Share of all k-subsets of n samples (the first c correct) holding a correct one."""
    subsets = list(itertools.combinations(range(n), k))
    hits = sum(1 for s in subsets if any(i < c for i in s))
    return Fraction(hits, len(subsets))


@pytest.mark.parametrize("n", range(1, 9))
def test_pass_at_k_matches_enumeration(n):
    for c in range(n + 1):
        for k in range(1, n + 1):
            assert pass_at_k(n, c, k) == pytest.approx(float(brute_pass_at_k(n, c, k)), abs=1e-15)


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 10_000), st.data())
def test_pass_at_k_matches_exact_rational_up_to_10000(n, data):
    c = data.draw(st.integers(0, n))
    k = data.draw(st.integers(1, n))
    exact = 1 - Fraction(math.comb(n - c, k), math.comb(n, k))
    got = pass_at_k(n, c, k)
    assert 0.0 <= got <= 1.0
    # Relative precision close to machine epsilon even for results near 0 or 1.
    assert got == pytest.approx(float(exact), rel=1e-10, abs=1e-300)


def test_pass_at_k_extremes_are_stable():
    assert pass_at_k(10_000, 1, 1) == pytest.approx(1e-4, rel=1e-14)
    assert pass_at_k(10_000, 0, 10_000) == 0.0
    assert pass_at_k(10_000, 1, 10_000) == 1.0
    # 1 - C(9990, 5000)/C(10000, 5000): the miss ratio is ~(1/2)^10, not lost to cancellation.
    exact = 1 - Fraction(math.comb(9990, 5000), math.comb(10_000, 5000))
    assert pass_at_k(10_000, 10, 5000) == pytest.approx(float(exact), rel=1e-12)


@pytest.mark.parametrize("args", [(0, 0, 1), (5, 6, 1), (5, -1, 1), (5, 2, 0), (5, 2, 6), (5.0, 2, 1), (True, 1, 1)])
def test_pass_at_k_rejects_bad_counts(args):
    with pytest.raises((ValueError, TypeError)):
        pass_at_k(*args)


def test_coverage_is_mean_of_pass_at_k():
    counts = [(4, 0), (4, 1), (4, 4), (6, 2)]
    for k in range(1, 5):
        expected = sum(float(brute_pass_at_k(n, c, k)) for n, c in counts) / len(counts)
        assert coverage_at_k(counts, k) == pytest.approx(expected)
    with pytest.raises(MetricsError, match="fewer than k") as info:  # a FlopmatchError the CLI reports
        coverage_at_k([(3, 1)], 4)
    assert isinstance(info.value, ValueError)  # what Python callers caught before
    with pytest.raises(MetricsError, match="at least one problem"):
        coverage_at_k([], 1)


# --------------------------------------------------------------------------- diversity


def brute_unique_at_k(labels: list[str | None], k: int) -> Fraction:
    """Mean number of distinct non-None labels over all k-subsets (None = a wrong sample)."""
    subsets = list(itertools.combinations(range(len(labels)), k))
    total = sum(len({labels[i] for i in s} - {None}) for s in subsets)
    return Fraction(total, len(subsets))


@pytest.mark.parametrize(
    "labels",
    [
        ["a", "a", "b", None, "c", "a", None],
        ["a", None, None, None],
        [None, None, None],
        ["a", "b", "c", "d", "e"],
        ["x", "x", "x", "x", "y", None, None, "z"],
    ],
)
def test_expected_unique_matches_enumeration(labels):
    n = len(labels)
    mults = multiplicities(x for x in labels if x is not None)
    for k in range(1, n + 1):
        assert expected_unique_at_k(n, mults, k) == pytest.approx(float(brute_unique_at_k(labels, k)), abs=1e-12)
    # At k = n the expectation is the observed count.
    assert expected_unique_at_k(n, mults, n) == len(set(labels) - {None})


@settings(max_examples=60, deadline=None)
@given(st.lists(st.sampled_from(["a", "b", "c", "d", None]), min_size=1, max_size=9), st.data())
def test_expected_unique_matches_enumeration_random(labels, data):
    k = data.draw(st.integers(1, len(labels)))
    mults = multiplicities(x for x in labels if x is not None)
    got = expected_unique_at_k(len(labels), mults, k)
    assert got == pytest.approx(float(brute_unique_at_k(labels, k)), abs=1e-12)


def test_diversity_at_k_is_mean_and_validates():
    problems = [(4, [2, 1]), (4, []), (4, [4])]
    assert diversity_at_k(problems, 4) == pytest.approx((2 + 0 + 1) / 3)
    with pytest.raises(ValueError, match="sum to"):
        expected_unique_at_k(3, [2, 2], 1)
    with pytest.raises(ValueError, match="positive"):
        expected_unique_at_k(3, [0], 1)


# --------------------------------------------------------------------------- normalisation & near-dups


def test_normalize_solution_ignores_formatting_only():
    a = r"We get $\dfrac{1}{2} + x^{2} = 3$.  \\  So the answer is \boxed{5}."
    b = "We get \\(\\frac{1}{2}+x^2=3\\).\n\\\\ So the answer is \\boxed{5}."
    c = r"We get $$\left(\tfrac{1}{2}\right)\,+\;x^{2}~=~3$$. \\ So the answer is \boxed{5}."
    assert normalize_solution(a) == normalize_solution(b)
    assert normalize_solution(a.replace("(", "")) == normalize_solution(c.replace(r"\left(", "").replace(r"\right)", ""))
    # Content differences survive: a different number, different words, different case.
    assert normalize_solution(a) != normalize_solution(a.replace("3", "4"))
    assert normalize_solution("so the answer") != normalize_solution("thus the answer")
    assert normalize_solution("ab") != normalize_solution("a b")
    assert normalize_solution("  x\t\n y ") == "x y"


def test_near_duplicates_group_rewordings_but_not_different_solutions():
    base = (
        "First compute the total cost of the apples which is 3 times 4 equals 12 dollars. "
        "Then add the cost of the pears which is 2 times 5 equals 10 dollars. "
        "The total is 12 plus 10 equals 22 dollars so the answer is 22."
    )
    tweak = base.replace("so the answer is 22.", "hence the answer is 22.")
    other = (
        "Pears cost 10 dollars in all and apples cost 12, because 2*5=10 and 3*4=12; "
        "adding gives 22, which is the answer."
    )
    texts = [base, other, tweak, base.replace(" ", "  ")]
    assert jaccard(shingles(base), shingles(tweak)) >= 0.8
    groups = near_duplicate_groups(texts)
    assert groups == [0, 1, 0, 0]
    # Deterministic, and exact uniqueness still tells base and tweak apart.
    assert near_duplicate_groups(texts) == groups
    assert normalize_solution(base) != normalize_solution(tweak)
    # A threshold of 1.0 only merges identical shingle sets.
    assert near_duplicate_groups(texts, threshold=1.0) == [0, 1, 2, 0]


def _all_pairs_groups(texts: list[str], threshold: float) -> list[int]:
    """Reference grouping: union-find over ALL pairs with exact Jaccard (no LSH), numbered by first member."""
    sets = [shingles(t) for t in texts]
    parent = list(range(len(texts)))

    def find(i):
        while parent[i] != i:
            i = parent[i]
        return i

    for i, j in itertools.combinations(range(len(texts)), 2):
        if jaccard(sets[i], sets[j]) >= threshold:
            parent[max(find(i), find(j))] = min(find(i), find(j))
    ref: dict[int, int] = {}
    return [ref.setdefault(find(i), len(ref)) for i in range(len(texts))]


def test_near_duplicates_agree_with_exact_pairwise_jaccard():
    rng = np.random.default_rng(3)
    vocab = [f"w{i}" for i in range(12)]
    base = list(rng.choice(vocab, size=30))
    texts = []
    for _ in range(40):
        words = list(base)
        for _ in range(int(rng.integers(0, 6))):
            words[int(rng.integers(0, len(words)))] = str(rng.choice(vocab))
        texts.append(" ".join(words))
    groups = near_duplicate_groups(texts, threshold=0.6)
    assert groups == _all_pairs_groups(texts, threshold=0.6)
    assert len(set(groups)) > 1  # the check would be vacuous if everything merged


# --------------------------------------------------------------------------- intervals


@pytest.mark.parametrize(
    ("x", "n", "lo", "hi"),
    [
        (0, 10, 0.0, 0.27754),
        (5, 10, 0.23659, 0.76341),
        (10, 10, 0.72246, 1.0),
        # Newcombe (1998), Stat. Med. 17:857, Table I, method 3 (Wilson score, no continuity correction).
        (81, 263, 0.2553, 0.3662),
        (15, 148, 0.0624, 0.1605),
        (0, 20, 0.0, 0.1611),
        (1, 29, 0.0061, 0.1718),
    ],
)
def test_wilson_known_values(x, n, lo, hi):
    got = wilson_interval(x, n)
    assert got == pytest.approx((lo, hi), abs=6e-5)


def test_wilson_rejects_bad_input():
    with pytest.raises(ValueError):
        wilson_interval(0, 0)
    with pytest.raises(ValueError):
        wilson_interval(3, 2)


def test_bootstrap_normal_mean_width_matches_theory():
    rng = np.random.default_rng(1)
    values = rng.normal(0.0, 1.0, size=400)
    lo, hi = bootstrap_ci(values, n_boot=4000, seed=0)
    # Theory: mean ± 1.96·σ/√n = ± 0.098.
    assert lo < values.mean() < hi
    assert hi - lo == pytest.approx(2 * 1.96 / 20, rel=0.12)
    assert bootstrap_ci(values, n_boot=4000, seed=0) == (lo, hi)  # seeded = reproducible


def test_bootstrap_interval_covers_true_mean_about_95_percent():
    rng = np.random.default_rng(7)
    p, hits, reps = 0.3, 0, 300
    for rep in range(reps):
        values = rng.binomial(1, p, size=200).astype(float)
        lo, hi = bootstrap_ci(values, n_boot=400, seed=rep)
        hits += lo <= p <= hi
    assert 0.89 <= hits / reps <= 0.99


def test_bootstrap_ratio_stat_on_rows():
    rng = np.random.default_rng(2)
    denom = rng.integers(1, 5, size=300)
    numer = rng.binomial(denom, 0.25)
    rows = np.stack([numer, denom], axis=1)
    lo, hi = bootstrap_ci(rows, lambda r: r[:, 0].sum() / r[:, 1].sum(), n_boot=1000, seed=0)
    assert lo < 0.25 < hi
    assert hi - lo < 0.12
    with pytest.raises(ValueError, match="1-D"):
        bootstrap_ci(rows)


# --------------------------------------------------------------------------- groups & relative change


def test_problem_groups():
    groups = problem_groups([("a", "1", "Algebra"), ("b", "2", None), ("c", "1", "Geometry")])
    assert list(groups) == ["all", "level=1", "level=2", "subject=Algebra", "subject=Geometry"]
    assert groups["level=1"] == ["a", "c"]
    assert groups["all"] == ["a", "b", "c"]


def test_relative_change_paper_style():
    cov = relative_change(0.611 * 1.11, 0.611, "coverage")
    div = relative_change(1.86, 1.0, "diversity")
    fpr = relative_change(0.24, 0.17, "fpr")
    assert (cov.unit, fpr.unit) == ("%", "pts")
    assert format_changes([cov, div, fpr]) == "+11% coverage, +86% diversity, +7 pts FPR"
    assert relative_change(0.5, 0.53, "coverage").text == "-5.7% coverage"
    assert relative_change(0.17, 0.24, "fpr").value == pytest.approx(-7.0)
    assert relative_change(0.4, 0.0, "coverage").text.startswith("n/a")


def test_bootstrap_intervals_agree_with_the_textbook_interval_of_a_mean():
    """For a mean of n = 400 draws the 95% percentile bootstrap is close to mean ± 1.96·s/√n (normal
    theory, independent of how the bootstrap is coded): within 10% of that half-width (a 90% interval
    would be 16% short), for a normal column and a 0/1 column, bootstrapped together or alone."""
    from flopmatch.metrics import bootstrap_mean_cis

    rng = np.random.default_rng(5)
    n = 400
    matrix = np.stack([rng.normal(size=n), rng.binomial(1, 0.4, size=n)], axis=1).astype(float)
    lo, hi = bootstrap_mean_cis(matrix, n_boot=4000, seed=9)
    for j in range(2):
        column = matrix[:, j]
        half = 1.96 * column.std(ddof=1) / np.sqrt(n)
        assert lo[j] == pytest.approx(column.mean() - half, abs=0.1 * half), j
        assert hi[j] == pytest.approx(column.mean() + half, abs=0.1 * half), j
        alone = bootstrap_ci(column, n_boot=4000, seed=9)
        assert alone == pytest.approx((column.mean() - half, column.mean() + half), abs=0.1 * half), j


def test_minhash_agreement_estimates_jaccard():
    from flopmatch.metrics import minhash_signature

    rng = np.random.default_rng(11)
    errors = []
    for _ in range(60):
        universe = rng.choice(10_000, size=300, replace=False)
        cut = int(rng.integers(20, 280))
        a = frozenset(int(x) for x in universe[:cut + 20])
        b = frozenset(int(x) for x in universe[cut - 20 if cut >= 20 else 0 :])
        true = len(a & b) / len(a | b)
        est = float((minhash_signature(a, 256) == minhash_signature(b, 256)).mean())
        errors.append(est - true)
    # 256 permutations: standard error <= 0.031 per pair; the mean error must be near 0 (no bias).
    assert abs(np.mean(errors)) < 0.02 and np.max(np.abs(errors)) < 0.15
    # Small consecutive integers (a nearly monotone hash would always pick the smallest): J = 80/120.
    a, b = frozenset(range(100)), frozenset(range(20, 120))
    assert float((minhash_signature(a, 512) == minhash_signature(b, 512)).mean()) == pytest.approx(2 / 3, abs=0.08)


def test_near_duplicates_match_all_pairs_on_many_paraphrases():
    """300 solutions, 30 methods x light rewrites: LSH grouping equals exact all-pairs grouping."""
    rng = np.random.default_rng(4)
    vocab = [f"w{i}" for i in range(400)]
    bases = [list(rng.choice(vocab, size=120)) for _ in range(30)]
    texts = []
    for _ in range(300):
        words = list(bases[int(rng.integers(0, 30))])
        for _ in range(int(rng.integers(0, 5))):
            words[int(rng.integers(0, len(words)))] = str(rng.choice(vocab))
        texts.append(" ".join(words))
    expected = _all_pairs_groups(texts, threshold=0.8)
    assert near_duplicate_groups(texts) == expected
    assert 30 <= len(set(expected)) < 300


def test_relative_gain_is_the_papers_formula_with_missing_values_as_nan():
    from flopmatch.metrics import relative_gain

    assert relative_gain(0.53, 0.5) == pytest.approx(6.0)
    assert relative_gain(0.5, 0.5) == 0.0
    assert relative_gain(0.4, -0.5) == pytest.approx(180.0)  # against |SE|
    for wc, se in ((0.2, 0.0), (None, 0.5), (0.5, float("nan")), ("n/a", 0.5)):
        assert math.isnan(relative_gain(wc, se))
    assert relative_change(0.53, 0.5, "coverage").value == pytest.approx(relative_gain(0.53, 0.5))
