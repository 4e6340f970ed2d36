"""Difficulty-aware allocation: spend a model's compute budget where one more sample buys the most.

The paper gives every problem the same S samples, so most of the budget goes to easy problems that
have several correct solutions after a few samples while hard problems stay uncovered. Here samples
are drawn in *rounds*; after each round is graded a policy decides how far each problem goes next:

* ``uniform`` — breadth-first: every problem gets sample i before any gets sample i+1 (today's
  S-per-problem sampling, stopped by the budget instead of by S);
* ``until-correct`` — DART-Math's "uniform" policy (Tong et al. 2024): round-robin over the problems
  with fewer than ``target_correct`` distinct correct solutions; a problem stops once it has them;
* ``adaptive`` — each round's samples go, one at a time, to the problem where one more sample is
  expected to add the most under an empirical-Bayes posterior of its success rate p (the prior is a
  Beta fit to every problem's (n, c) so far — ``flopmatch.forecast.fit_success`` when installed):
  for the ``coverage`` objective the probability that the next sample is the problem's first correct
  one (1{uncovered}·E[(1−p)^j·p | n, c] for its j-th extra sample this round); for ``unique`` the
  expected gain in Σ log(1 + unique correct) (diminishing returns: spread distinct solutions across
  problems; a correct sample counts as new with the smoothed share of distinct ones so far).
  Covered problems are ranked by the ``unique`` gain once no uncovered problem can take a sample.

Promises (see ``flopmatch.allocation_run`` for the driver):

* A problem's samples are always the prefix 0..n_p−1 of its seeded sequence (``sampling.sample_seed``),
  so a policy only decides each n_p; the same (problem, index) is the same sample under every policy.
* Decisions depend only on graded data (ties broken by a hash of the problem id), so they are
  deterministic and a rerun continues from what is on disk.
* The budget is never exceeded: a round is sized from the mean tokens per sample so far, and every
  backend call is trimmed so that its *worst case* (samples × max_tokens) fits what is left.

This module is pure (no I/O): the policies, the round sizing, the budget guard, and ``simulate``,
which replays a policy over a pool of already-drawn samples (what the benchmark uses).
"""

from __future__ import annotations

import hashlib
import heapq
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from flopmatch.errors import FlopmatchError

ALLOCATIONS = ("uniform", "until-correct", "adaptive")
OBJECTIVES = ("coverage", "unique")
Allocation = Literal["uniform", "until-correct", "adaptive"]
Objective = Literal["coverage", "unique"]


class AllocationConfigError(FlopmatchError, ValueError):
    """Allocation options that do not fit together, or problem states no policy can rank (more correct
    samples than samples). The configs' own validators raise plain ValueError: pydantic turns those
    into its ValidationError (a ValueError), which the study reports as a StudyConfigError."""


class AllocationConfig(BaseModel):
    """How a model's samples are allocated to problems (``flopmatch sample --allocation``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    allocation: Allocation = Field("uniform", description="uniform | until-correct | adaptive")
    objective: Objective = Field("coverage", description="adaptive: coverage | unique")
    target_correct: int = Field(1, ge=1, description="until-correct: distinct correct solutions to stop at")
    max_per_problem: int | None = Field(None, ge=1, description="at most this many samples of one problem")
    round_samples: int | None = Field(
        None, ge=1, description="samples per round (default: one per active problem, at least min_round)"
    )
    min_round: int = Field(16, ge=1, description="the smallest round (engine calls are batched)")

    @model_validator(mode="after")
    def _consistent(self) -> AllocationConfig:
        if self.allocation != "until-correct" and self.target_correct != 1:
            raise ValueError(f"target_correct applies to until-correct only, not to {self.allocation!r}")
        if self.allocation != "adaptive" and self.objective != "coverage":
            raise ValueError(f"objective applies to adaptive only, not to {self.allocation!r}")
        return self


class StudyAllocation(BaseModel):
    """A study's ``sampling.allocation``: the policy that draws each model's *allocated* sample sets.

    Written as a policy name (``sampling.allocation: adaptive``) or a mapping of the policy and its
    options. With a non-uniform policy the study samples each model a second time, once per budget,
    under that budget's FLOPs for the model (never above them; see ``flopmatch.allocation_study``).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    policy: Allocation = Field("uniform", description="uniform (only S samples per problem) | until-correct | adaptive")
    objective: Objective = Field("coverage", description="adaptive: coverage | unique")
    target_correct: int = Field(1, ge=1, description="until-correct: distinct correct solutions to stop at")
    max_per_problem: int | None = Field(None, ge=1, description="at most this many samples of one problem")
    round_samples: int | None = Field(None, ge=1, description="samples per round (default: one per active problem)")
    min_round: int = Field(16, ge=1, description="the smallest round (engine calls are batched)")

    @model_validator(mode="before")
    @classmethod
    def _policy_name(cls, value: object) -> object:
        return {"policy": value} if isinstance(value, str) else value

    @model_validator(mode="after")
    def _options_fit(self) -> StudyAllocation:
        options = self.model_dump(exclude={"policy"}, exclude_defaults=True)
        if self.policy == "uniform" and options:
            raise ValueError(f"{sorted(options)} apply to a non-uniform policy (policy is uniform)")
        if self.policy != "until-correct" and self.target_correct != 1:
            raise ValueError(f"target_correct applies to until-correct only, not to {self.policy!r}")
        if self.policy != "adaptive" and self.objective != "coverage":
            raise ValueError(f"objective applies to adaptive only, not to {self.policy!r}")
        return self

    def policy_config(self) -> AllocationConfig:
        """The driver's settings (``flopmatch.allocation_run.sample_allocated``)."""
        return AllocationConfig(allocation=self.policy, **self.model_dump(exclude={"policy"}))


@dataclass(frozen=True)
class ProblemState:
    """What the policies know of one problem: samples on disk, correct ones, distinct correct ones."""

    problem_id: str
    n: int
    correct: int = 0
    unique_correct: int = 0

    def __post_init__(self) -> None:
        if not 0 <= self.unique_correct <= self.correct <= self.n:
            raise AllocationConfigError(
                f"problem {self.problem_id!r}: need 0 <= unique_correct <= correct <= n, got "
                f"n={self.n} correct={self.correct} unique_correct={self.unique_correct}"
            )


def tie_key(problem_id: str) -> int:
    """A stable pseudo-random order of problems for ties (never the input order or Python's ``hash``)."""
    return int.from_bytes(hashlib.sha256(problem_id.encode()).digest()[:8], "big")


# --------------------------------------------------------------------------- the posterior


class Posterior(Protocol):
    """What ``adaptive`` needs of a fitted success-rate distribution (``forecast.SuccessFit`` fits)."""

    def posterior_mean(self, n: np.ndarray, c: np.ndarray) -> np.ndarray: ...

    def posterior_miss(self, n: np.ndarray, c: np.ndarray, m: int | np.ndarray) -> np.ndarray: ...


@dataclass(frozen=True)
class BetaPrior:
    """p ~ Beta(a, b): closed-form posteriors (the fallback prior, Beta(1, 1), is uniform)."""

    a: float = 1.0
    b: float = 1.0

    def posterior_mean(self, n, c):
        n, c = np.asarray(n, float), np.asarray(c, float)
        return (self.a + c) / (self.a + self.b + n)

    def posterior_miss(self, n, c, m):
        """E[(1−p)^m | n, c] = B(a+c, b+n−c+m) / B(a+c, b+n−c)."""
        from scipy.special import betaln

        n, c, m = np.asarray(n, float), np.asarray(c, float), np.asarray(m, float)
        return np.exp(betaln(self.a + c, self.b + n - c + m) - betaln(self.a + c, self.b + n - c))


def fit_prior(states: Sequence[ProblemState]) -> tuple[BetaPrior, str]:
    """The prior for ``adaptive``: a beta-binomial maximum-likelihood fit (``flopmatch.forecast``) to
    every sampled problem's (n, c), or Beta(1, 1) before two problems are sampled.

    Fitting on adaptively allocated data is sound: the beta-binomial likelihood ignores how the sample
    counts were chosen (adaptive stopping is ignorable for likelihood inference), so later fits only
    sharpen the first round's. Returns the prior and a label saying which it is.
    """
    observed = [s for s in states if s.n > 0]
    if len(observed) < 2:
        return BetaPrior(), "beta(1,1): fewer than 2 problems sampled"
    from flopmatch.forecast import fit_success

    n = np.array([s.n for s in observed])
    c = np.array([s.correct for s in observed])
    fit = fit_success(n, c, family="beta-binomial", seed=0)
    a, b = float(fit.params["a"]), float(fit.params["b"])
    return BetaPrior(a, b), f"beta-binomial fit a={a:.3g}, b={b:.3g} on {int(n.sum())} samples"


REFIT_GROWTH = 1.2  # refit the prior once the samples have grown by 20% since the last fit


@dataclass
class PriorCache:
    """The prior in use and when it was fitted; the driver keeps it in its journal, so a rerun uses the
    prior the interrupted run used (a refit on other data would change the decisions)."""

    a: float | None = None
    b: float | None = None
    fitted_at: int = 0  # samples on disk when it was fitted
    label: str = ""

    def prior(self, states: Sequence[ProblemState], samples: int) -> BetaPrior:
        if self.a is None or self.b is None or samples >= REFIT_GROWTH * self.fitted_at:
            fitted, self.label = fit_prior(states)
            self.a, self.b, self.fitted_at = fitted.a, fitted.b, samples
        return BetaPrior(self.a, self.b)

    def to_dict(self) -> dict[str, float | int | str | None]:
        return {"a": self.a, "b": self.b, "fitted_at": self.fitted_at, "label": self.label}


# --------------------------------------------------------------------------- policies (pure)


def is_active(state: ProblemState, config: AllocationConfig, *, objective_only: bool = False) -> bool:
    """May this problem get another sample under ``config``? (``objective_only``: and does the
    adaptive coverage objective still value it, i.e. is it uncovered?)"""
    if config.max_per_problem is not None and state.n >= config.max_per_problem:
        return False
    if config.allocation == "until-correct":
        return state.unique_correct < config.target_correct
    if objective_only and config.allocation == "adaptive" and config.objective == "coverage":
        return state.correct == 0
    return True


def round_size(states: Sequence[ProblemState], config: AllocationConfig) -> int:
    """Samples the policy wants in its next round: one per active problem, at least ``min_round``
    (a tiny round wastes the engine's batching); 0 when no problem can take a sample."""
    active = sum(is_active(s, config) for s in states)
    if active == 0:
        return 0
    if config.round_samples is not None:
        return config.round_samples
    valued = sum(is_active(s, config, objective_only=True) for s in states)
    return max(config.min_round, valued or active)


def _unique_gain(mean: float, state: ProblemState, j: int) -> float:
    """Expected gain in log(1 + unique correct) of the j-th extra sample this round.

    A correct sample is new with probability ≈ (u + 1) / (c + 1) (the smoothed share of distinct ones
    among the correct so far: a problem whose correct solutions all read the same stops paying), so a
    sample adds a distinct correct one with probability q = E[p]·novelty, and u grows by about j·q.
    """
    q = mean * (state.unique_correct + 1) / (state.correct + 1)
    u = state.unique_correct + j * q
    return q * (math.log(2.0 + u) - math.log(1.0 + u))


def _keys(states: Sequence[ProblemState], config: AllocationConfig, prior: Posterior | None):
    """A function (problem index, j) -> sort key (smaller first) of the j-th extra sample this round."""
    ties = [tie_key(s.problem_id) for s in states]
    if config.allocation in ("uniform", "until-correct"):
        return lambda i, j: (states[i].n + j, ties[i])  # water-filling: fewest samples first
    prior = prior or BetaPrior()
    n = np.array([s.n for s in states])
    c = np.array([s.correct for s in states])
    mean = np.asarray(prior.posterior_mean(n, c), float)
    misses: dict[tuple[int, int], float] = {}

    def miss(i: int, m: int) -> float:
        if m == 0:
            return 1.0
        if (i, m) not in misses:
            misses[(i, m)] = float(prior.posterior_miss(n[i : i + 1], c[i : i + 1], m)[0])
        return misses[(i, m)]

    def key(i: int, j: int):
        unique = _unique_gain(float(mean[i]), states[i], j)
        if config.objective == "unique":
            return (-unique, ties[i])
        first = miss(i, j) - miss(i, j + 1) if states[i].correct == 0 else 0.0
        return (-first, -unique, ties[i])

    return key


def plan_round(
    states: Sequence[ProblemState], config: AllocationConfig, samples: int, *, prior: Posterior | None = None
) -> list[tuple[str, int]]:
    """The next round: ``samples`` picks ``(problem_id, j)`` (the j-th extra sample of that problem
    this round, j = 0, 1, ...) in priority order, greedily by each policy's marginal value.

    Fewer picks when every problem is capped or finished. Pure and deterministic.
    """
    key = _keys(states, config, prior)
    heap = [(key(i, 0), i, 0) for i, s in enumerate(states) if is_active(s, config)]
    heapq.heapify(heap)
    cap = config.max_per_problem
    picks: list[tuple[str, int]] = []
    while heap and len(picks) < samples:
        _, i, j = heapq.heappop(heap)
        picks.append((states[i].problem_id, j))
        if cap is None or states[i].n + j + 1 < cap:
            heapq.heappush(heap, (key(i, j + 1), i, j + 1))
    return picks


# --------------------------------------------------------------------------- the budget (pure)


@dataclass
class TokenBudget:
    """A FLOP budget in completion tokens (2·P·tokens = nominal FLOPs), and what is spent of it."""

    limit_tokens: float | None  # None: no FLOP budget
    spent_tokens: int = 0

    def remaining(self) -> float:
        return math.inf if self.limit_tokens is None else self.limit_tokens - self.spent_tokens


def affordable(remaining_tokens: float, mean_tokens: float | None, max_tokens: int) -> int:
    """Samples a round may plan: remaining / mean tokens per sample so far (max_tokens before any)."""
    if math.isinf(remaining_tokens):
        return 1 << 62
    per_sample = mean_tokens if mean_tokens and mean_tokens > 0 else max_tokens
    return max(0, int(remaining_tokens // per_sample))


def admit(requested: int, remaining_tokens: float, max_tokens: int) -> int:
    """Samples of a backend call that fit the budget even if each runs to ``max_tokens``."""
    if math.isinf(remaining_tokens):
        return requested
    return max(0, min(requested, int(remaining_tokens // max_tokens)))


def guarded_calls(items: Sequence, chunk_samples: int) -> list[Sequence]:
    """A round's items (priority order) cut into backend calls at fixed positions (so a rerun cuts
    the same calls and the budget guard decides the same)."""
    if chunk_samples < 1:
        raise AllocationConfigError(f"chunk_samples must be >= 1, got {chunk_samples}")
    return [items[i : i + chunk_samples] for i in range(0, len(items), chunk_samples)]


def next_indices(on_disk: set[int], extra: int) -> list[int]:
    """The first ``extra`` sample indices not on disk (a prefix grows; holes left by engine errors
    are filled first)."""
    out, idx = [], 0
    while len(out) < extra:
        if idx not in on_disk:
            out.append(idx)
        idx += 1
    return out


def picks_to_items(picks: Iterable[tuple[str, int]], on_disk: Mapping[str, set[int]]) -> list[tuple[str, int]]:
    """(problem_id, j) picks -> (problem_id, sample_idx) items, in the same priority order."""
    picks = list(picks)
    extra: dict[str, int] = {}
    for pid, _ in picks:
        extra[pid] = extra.get(pid, 0) + 1
    indices = {pid: next_indices(on_disk.get(pid, set()), k) for pid, k in extra.items()}
    return [(pid, indices[pid][j]) for pid, j in picks]


# --------------------------------------------------------------------------- simulation (pure)


@dataclass(frozen=True)
class PooledSample:
    """One already-drawn sample: what a policy sees of it, and what it cost."""

    tokens: int
    correct: bool
    norm: str | None = None  # normalised text (flopmatch.metrics.normalize_solution) of a correct one


@dataclass
class SimulationResult:
    """The sample counts a policy reached, round by round."""

    counts: dict[str, int]
    spent_tokens: int
    rounds: int
    stop: str
    trace: list[dict[str, float]] = field(default_factory=list)  # per round: tokens, covered, unique
    exhausted: set[str] = field(default_factory=set)  # problems the policy wanted deeper than the pool


def states_from(pool_seen: Mapping[str, list[PooledSample]]) -> list[ProblemState]:
    out = []
    for pid, seen in pool_seen.items():
        norms = {s.norm for s in seen if s.correct}
        out.append(ProblemState(pid, len(seen), sum(s.correct for s in seen), len(norms)))
    return out


def simulate(
    pool: Mapping[str, Sequence[PooledSample]],
    config: AllocationConfig,
    *,
    budget_tokens: float | None,
    max_tokens: int,
    chunk_samples: int = 64,
) -> SimulationResult:
    """Run a policy over a pool of seeded samples (sample i of a problem is the same whichever policy
    asks for it), exactly as the driver would: same rounds, same budget guard. A problem whose pool
    runs out is left out of later rounds and listed in ``exhausted``: the result is then not the
    policy's (extend those problems' pools and replay)."""
    seen: dict[str, list[PooledSample]] = {pid: [] for pid in pool}
    exhausted: set[str] = set()
    budget = TokenBudget(budget_tokens)
    trace: list[dict[str, float]] = []
    rounds, stop = 0, "policy finished"
    prior = PriorCache()
    while True:
        states = [s for s in states_from(seen) if s.problem_id not in exhausted]
        plan = plan_next(states, config, budget, max_tokens, spent_samples=sum(map(len, seen.values())), prior=prior)
        if isinstance(plan, str):
            stop = plan
            break
        items = picks_to_items(plan, {pid: set(range(len(v))) for pid, v in seen.items()})
        rounds += 1
        for call in guarded_calls(items, chunk_samples):
            ok = admit(len(call), budget.remaining(), max_tokens)
            for pid, idx in call[:ok]:
                if idx >= len(pool[pid]):
                    exhausted.add(pid)
                    continue
                sample = pool[pid][idx]
                seen[pid].append(sample)
                budget.spent_tokens += sample.tokens
            if ok < len(call):  # the rest of the round waits for a re-plan on what is left
                break
        final = states_from(seen)
        trace.append({"round": rounds, "tokens": budget.spent_tokens,
                      "covered": sum(s.correct > 0 for s in final), "unique": sum(s.unique_correct for s in final)})  # fmt: skip
    counts = {pid: len(v) for pid, v in seen.items()}
    return SimulationResult(counts, budget.spent_tokens, rounds, stop, trace, exhausted)


def plan_next(
    states: Sequence[ProblemState],
    config: AllocationConfig,
    budget: TokenBudget,
    max_tokens: int,
    *,
    spent_samples: int,
    prior: PriorCache | None = None,
) -> list[tuple[str, int]] | str:
    """The next round's picks, or why there is none ("policy finished" / "budget")."""
    wanted = round_size(states, config)
    if wanted == 0:
        return "policy finished"
    if admit(1, budget.remaining(), max_tokens) == 0:
        return "budget"
    mean = budget.spent_tokens / spent_samples if spent_samples else None
    size = max(1, min(wanted, affordable(budget.remaining(), mean, max_tokens)))
    posterior = (prior or PriorCache()).prior(states, spent_samples) if config.allocation == "adaptive" else None
    picks = plan_round(states, config, size, prior=posterior)
    return picks or "policy finished"
