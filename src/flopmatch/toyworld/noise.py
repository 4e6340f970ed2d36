"""Imperfect solutions for pretraining the toy models, so that they make realistic mistakes.

A real reasoner's sampled solutions are a mix of clean derivations, slips that derail the answer, and
slips that do *not* derail it (the model "knows" the right number and carries it on, or guesses the
answer): the false positives that answer-only filtering lets through. The noise model writes the same
mix, each kind with its own rate, and labels every solution with its kind so the rates are auditable.

Clean solutions also vary in surface form (operand order of ``+``/``*``, two steps merged into one
line) so that the models' correct samples are diverse, as a real model's are.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, fields, replace

from flopmatch.toyworld.generator import Step, ToyProblem, apply_operation

# Kinds whose final answer is still right although a step is wrong (the checker's false positives).
FALSE_POSITIVE_KINDS = frozenset({"slip_recover", "made_up", "guess"})


@dataclass(frozen=True)
class NoiseConfig:
    """Probability of each kind of flawed solution (the rest are clean)."""

    slip: float = 0.12  # an arithmetic slip, carried into every later step: wrong answer
    wrong_number: float = 0.06  # a wrong quantity (a distractor or another given): wrong answer
    wrong_op: float = 0.05  # the wrong operation: wrong answer
    skip_last: float = 0.04  # stops one step early: wrong answer
    slip_recover: float = 0.06  # a slip written down, then the right value carried on: right answer
    made_up: float = 0.03  # numbers that appear nowhere, with the right result: right answer
    guess: float = 0.02  # a derailed derivation, then the right answer anyway: right answer
    swap_operands: float = 0.3  # per step, in clean and flawed solutions alike: valid variety
    merge_steps: float = 0.15  # per solution: two +/- steps on one line: valid variety

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"NoiseConfig.{f.name} must be in [0, 1], got {value}")
        if self.flawed_total > 1.0:
            raise ValueError(f"the flawed-solution rates sum to {self.flawed_total:.3f} > 1")

    @property
    def kinds(self) -> dict[str, float]:
        return {
            "slip": self.slip, "wrong_number": self.wrong_number, "wrong_op": self.wrong_op,
            "skip_last": self.skip_last, "slip_recover": self.slip_recover, "made_up": self.made_up,
            "guess": self.guess,
        }

    @property
    def flawed_total(self) -> float:
        return sum(self.kinds.values())


def scale_false_positives(cfg: NoiseConfig, scale: float) -> NoiseConfig:
    """``cfg`` with every right-answer-wrong-reasoning rate (:data:`FALSE_POSITIVE_KINDS`) times ``scale``.

    The false-positive propensity knob of the toy world: 0 gives models that never write a flawed
    derivation with a right answer, 2 twice the default share. The other rates are unchanged, so the
    clean share absorbs the difference.
    """
    if scale < 0:
        raise ValueError(f"false_positive_scale must be >= 0, got {scale}")
    return replace(cfg, **{kind: getattr(cfg, kind) * scale for kind in sorted(FALSE_POSITIVE_KINDS)})


def noise_config(values: dict | None = None) -> NoiseConfig:
    """A :class:`NoiseConfig` from a mapping of its fields plus an optional ``false_positive_scale``
    (applied after the fields), as written in a study's ``toyworld_spec.noise``."""
    values = dict(values or {})
    scale = values.pop("false_positive_scale", None)
    known = {f.name for f in fields(NoiseConfig)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(
            f"unknown noise field(s) {unknown}; expected some of {sorted(known | {'false_positive_scale'})}"
        )
    cfg = NoiseConfig(**values)
    return cfg if scale is None else scale_false_positives(cfg, float(scale))


def _slipped(value: int, rng: random.Random) -> int:
    """A plausible wrong value near ``value``."""
    for _ in range(20):
        delta = rng.choice((-10, -2, -1, 1, 1, 2, 10))
        wrong = value + delta
        if wrong >= 0 and wrong != value:
            return wrong
    return value + 1


def _recompute(steps: list[Step], start: int, new: int) -> list[Step]:
    """Give step ``start`` the result ``new`` and redo every later step that depends on it, correctly,
    as a model that trusts its own earlier (wrong) result would."""
    values = {i: st.result for i, st in enumerate(steps)}
    values[start] = new
    out = steps[: start + 1]
    out[start] = replace(out[start], result=new)
    for i, st in enumerate(steps[start + 1 :], start=start + 1):
        left = values[st.left_ref] if st.left_ref is not None else st.left
        right = values[st.right_ref] if st.right_ref is not None else st.right
        try:
            result = apply_operation(left, st.op, right)
        except ValueError:  # an inexact division: the derailed model divides approximately
            result = left // right if right else left
        values[i] = result
        out.append(replace(st, left=left, right=right, result=result))
    return out


def _render(steps: list[Step], answer: int, rng: random.Random, cfg: NoiseConfig) -> str:
    lines: list[str] = []
    i = 0
    while i < len(steps):
        st = steps[i]
        nxt = steps[i + 1] if i + 1 < len(steps) else None
        if (
            nxt is not None
            and st.op in "+-" and nxt.op in "+-"
            and nxt.left_ref == i and nxt.right_ref != i
            and apply_operation(st.left, st.op, st.right) == st.result  # never hide a slip by merging it away
            and not any(i in (s.left_ref, s.right_ref) for s in steps[i + 2 :])
            and rng.random() < cfg.merge_steps
        ):
            lines.append(f"{st.left} {st.op} {st.right} {nxt.op} {nxt.right} = {nxt.result}")
            i += 2
            continue
        left, right = st.left, st.right
        if st.op in "+*" and rng.random() < cfg.swap_operands:
            left, right = right, left
        lines.append(f"{left} {st.op} {right} = {st.result}")
        i += 1
    lines.append(f"Answer: {answer}")
    return "\n".join(lines)


def noisy_solution(toy: ToyProblem, rng: random.Random, cfg: NoiseConfig | None = None) -> tuple[str, str]:
    """A solution to ``toy`` drawn from the noise model, and its kind ("clean" or a flaw's name)."""
    cfg = cfg or NoiseConfig()
    steps = list(toy.steps)
    gold = toy.answer
    draw, kind = rng.random(), "clean"
    for name, p in cfg.kinds.items():
        if draw < p:
            kind = name
            break
        draw -= p

    if kind in ("slip", "guess", "slip_recover"):
        i = rng.randrange(len(steps))
        st = steps[i]
        wrong = _slipped(st.result, rng)
        if kind == "slip_recover":
            steps[i] = replace(st, result=wrong)
            return _render(steps, gold, rng, cfg), kind
        steps = _recompute(steps, i, wrong)
        answer = steps[-1].result
        if kind == "guess":
            if answer == gold:
                return _render(steps, gold, rng, cfg), "slip"
            return _render(steps, gold, rng, cfg), kind
        return _render(steps, answer, rng, cfg), kind if answer != gold else "slip_recover"

    if kind == "wrong_number":
        givens = [(i, side) for i, st in enumerate(steps) for side in ("left", "right")
                  if getattr(st, f"{side}_ref") is None]
        if givens:
            i, side = rng.choice(givens)
            st = steps[i]
            old = getattr(st, side)
            pool = [v for v in toy.distractor_values if v != old]
            pool += [getattr(steps[j], sd) for j, sd in givens if getattr(steps[j], sd) != old]
            new = rng.choice(pool) if pool else old + 1
            left, right = (new, st.right) if side == "left" else (st.left, new)
            try:
                result = apply_operation(left, st.op, right)
            except ValueError:
                result = left // right if right else left
            if result >= 0:
                steps[i] = replace(st, left=left, right=right)
                steps = _recompute(steps, i, result)
                return _render(steps, steps[-1].result, rng, cfg), kind
        kind = "clean"

    if kind == "wrong_op":
        swaps = {"+": "-", "-": "+", "*": "+"}
        candidates = [i for i, st in enumerate(steps) if st.op in swaps]
        if candidates:
            i = rng.choice(candidates)
            st = steps[i]
            result = apply_operation(st.left, swaps[st.op], st.right)
            if result >= 0 and result != st.result:
                steps[i] = replace(st, op=swaps[st.op])
                steps = _recompute(steps, i, result)
                return _render(steps, steps[-1].result, rng, cfg), kind
        kind = "clean"

    if kind == "skip_last":
        if len(steps) >= 2:
            steps = steps[:-1]
            return _render(steps, steps[-1].result, rng, cfg), kind
        kind = "clean"

    if kind == "made_up":
        candidates = [i for i, st in enumerate(steps) if st.op in "+-" and st.right >= 3]
        if candidates:
            i = rng.choice(candidates)
            st = steps[i]
            d = rng.choice((1, 2))
            # (a + d) + (b - d) or (a + d) - (b + d): same result, two numbers nobody stated.
            right = st.right - d if st.op == "+" else st.right + d
            steps[i] = replace(st, left=st.left + d, right=right)
            return _render(steps, gold, rng, cfg), kind
        kind = "clean"

    return _render(steps, gold, rng, cfg), "clean"
