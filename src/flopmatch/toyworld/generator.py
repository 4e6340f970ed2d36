"""A seeded generator of multi-step arithmetic word problems with exact reference solutions.

Every problem is built forwards from a small story: an opening fact, then operations that each change
one running quantity (or introduce a new person), then a question. Each operation contributes one or
two *steps* of the solution language (``12 + 5 = 17``), so the reference solution is exact by
construction and the number of steps is a difficulty knob. Distractor facts (numbers the question does
not need) are a second knob and the size of the numbers a third.

Everything is a pure function of ``(seed, split, index, knobs)``: problem ``i`` of a split never changes
when more problems are asked for, so ids like ``toyworld/test/17`` are stable.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable
from dataclasses import dataclass, field

from flopmatch.record import Problem

DATASET = "toyworld"

# Seeds of the built-in splits. The splits are disjoint because each problem's random stream is derived
# from (split seed, index) and the three seeds differ; "pretrain" feeds the toy models only.
SPLIT_SEEDS: dict[str, int] = {"train": 1_000, "test": 2_000, "pretrain": 3_000}
# test: 2000, so that a paired comparison of two fine-tuned students can resolve a few points (the minimum
# detectable effect shrinks with the square root of the test size). Growing a split only appends problems:
# the first 500 test problems (the split's size before) kept their ids.
DEFAULT_SIZES: dict[str, int] = {"train": 2_000, "test": 2_000}

FAMILIES = ("collections", "money", "factory", "comparison", "sharing")


@dataclass(frozen=True)
class Knobs:
    """Difficulty knobs of the generator.

    ``min_steps``/``max_steps`` bound the number of reference steps; ``max_start`` bounds the amounts a
    story starts from, ``max_number`` the amounts added, removed or compared, ``max_factor`` the
    multipliers and divisors (the defaults keep most steps to a two-digit and a one-digit number, which
    is what a model trained for two CPU-minutes can learn to do most of the time);
    ``max_distractors`` is the most irrelevant numeric facts inserted; ``families`` restricts the story
    templates.
    """

    min_steps: int = 1
    max_steps: int = 4
    max_start: int = 30
    max_number: int = 9
    max_factor: int = 4
    max_distractors: int = 1
    families: tuple[str, ...] = FAMILIES

    def __post_init__(self) -> None:
        if not 1 <= self.min_steps <= self.max_steps <= 8:
            raise ValueError(f"need 1 <= min_steps <= max_steps <= 8, got {self.min_steps}..{self.max_steps}")
        if self.max_start < 10:
            raise ValueError(f"max_start must be >= 10, got {self.max_start}")
        if self.max_number < 3:
            raise ValueError(f"max_number must be >= 3, got {self.max_number}")
        if not 2 <= self.max_factor <= 12:
            raise ValueError(f"max_factor must be in 2..12, got {self.max_factor}")
        if self.max_distractors < 0:
            raise ValueError(f"max_distractors must be >= 0, got {self.max_distractors}")
        unknown = set(self.families) - set(FAMILIES)
        if unknown or not self.families:
            raise ValueError(f"families must be a non-empty subset of {FAMILIES}, got {self.families}")


@dataclass(frozen=True)
class Step:
    """One binary step ``left op right = result`` of a reference solution.

    ``left_ref``/``right_ref`` name the earlier step whose result an operand is (``None``: a number the
    problem states), so the noise model can carry a slip forward exactly.
    """

    left: int
    op: str
    right: int
    result: int
    left_ref: int | None = None
    right_ref: int | None = None

    def render(self) -> str:
        return f"{self.left} {self.op} {self.right} = {self.result}"


@dataclass
class Story:
    """A problem under construction: sentences, steps and the numbers each sentence states."""

    sentences: list[str] = field(default_factory=list)
    steps: list[Step] = field(default_factory=list)
    distractor_values: list[int] = field(default_factory=list)

    def step(self, left: int, op: str, right: int) -> _Val:
        result = apply_operation(left, op, right)
        self.steps.append(Step(int(left), op, int(right), result, _ref(left), _ref(right)))
        return _Val(result, len(self.steps) - 1)


class _Val(int):
    """An int that remembers which step produced it (arithmetic on it gives a plain int)."""

    ref: int

    def __new__(cls, value: int, ref: int) -> _Val:
        obj = super().__new__(cls, value)
        obj.ref = ref
        return obj


def _ref(value: int) -> int | None:
    return value.ref if isinstance(value, _Val) else None


@dataclass(frozen=True)
class ToyProblem:
    """A generated problem with its structure (the ``Problem`` record drops ``steps``)."""

    question: str
    steps: tuple[Step, ...]
    answer: int
    family: str
    distractor_values: tuple[int, ...]

    @property
    def solution(self) -> str:
        return render_solution(self.steps, self.answer)


def apply_operation(left: int, op: str, right: int) -> int:
    if op == "+":
        return left + right
    if op == "-":
        return left - right
    if op == "*":
        return left * right
    if op == "/":
        if right == 0 or left % right:
            raise ValueError(f"{left} / {right} is not an exact division")
        return left // right
    raise ValueError(f"unknown operator {op!r}")


def render_solution(steps: tuple[Step, ...] | list[Step], answer: int) -> str:
    """The step language: one step per line, then ``Answer: N``."""
    return "\n".join([s.render() for s in steps] + [f"Answer: {answer}"])


# --------------------------------------------------------------------------- vocabulary

NAMES = (
    ("Mia", "she", "her"), ("Leo", "he", "his"), ("Ava", "she", "her"), ("Sam", "he", "his"),
    ("Zoe", "she", "her"), ("Ben", "he", "his"), ("Ivy", "she", "her"), ("Max", "he", "his"),
    ("Nora", "she", "her"), ("Omar", "he", "his"), ("Lily", "she", "her"), ("Jack", "he", "his"),
    ("Emma", "she", "her"), ("Noah", "he", "his"), ("Ella", "she", "her"), ("Liam", "he", "his"),
)
ITEMS = (
    "apples", "marbles", "stickers", "shells", "cards", "books", "pencils", "stamps", "cookies",
    "coins", "beads", "eggs", "balloons", "toys", "flowers", "rocks",
)
CONTAINERS = ("bags", "boxes", "jars", "packs", "baskets")
THINGS = (
    ("pens", "pen"), ("cups", "cup"), ("hats", "hat"), ("kites", "kite"), ("games", "game"),
    ("plants", "plant"), ("maps", "map"), ("bowls", "bowl"),
)
MACHINES = (("bakery", "loaves"), ("factory", "chairs"), ("printer", "pages"), ("farm", "eggs"),
            ("workshop", "toys"), ("kitchen", "pies"))
GROUPS = ("friends", "children", "students", "teams", "tables")


class _Ctx:
    """Random choices shared by one story: the cast, the items, the number ranges."""

    def __init__(self, rng: random.Random, knobs: Knobs):
        self.rng = rng
        self.knobs = knobs
        self.cast = rng.sample(NAMES, 6)  # five who may act in a story, one for distractors
        self.items = rng.choice(ITEMS)

    def num(self, lo: int = 2, hi: int | None = None) -> int:
        hi = self.knobs.max_number if hi is None else hi
        return self.rng.randint(lo, max(lo, hi))

    def factor(self) -> int:
        return self.rng.randint(2, self.knobs.max_factor)


# --------------------------------------------------------------------------- families
# Each family appends sentences and steps to a Story until it has ``n_steps`` steps, and returns the
# question sentence. Operations are only chosen when they keep every quantity a positive integer.


def _collections(c: _Ctx, s: Story, n_steps: int) -> str:
    name, he, his = c.cast[0]
    friend = c.cast[1][0]
    it = c.items
    if n_steps >= 2 and c.rng.random() < 0.35:
        bags, per = c.factor(), c.factor() + c.rng.randint(0, 4)
        cont = c.rng.choice(CONTAINERS)
        s.sentences.append(f"{name} has {bags} {cont} of {it} with {per} {it} in each.")
        x = s.step(bags, "*", per)
    else:
        x = c.num(5, c.knobs.max_start)
        s.sentences.append(f"{name} has {x} {it}.")
    He = he.capitalize()
    while len(s.steps) < n_steps:
        room = n_steps - len(s.steps)
        options: list[str] = ["gain", "gift"]
        if x > 3:
            options += ["lose", "give"]
        if x % 2 == 0 and x >= 4:
            options.append("half")
        if x <= 200:
            options.append("double")
        if room >= 2:
            options.append("packs")
        kind = c.rng.choice(options)
        if kind == "gain":
            b = c.num()
            s.sentences.append(f"{He} finds {b} more {it}.")
            x = s.step(x, "+", b)
        elif kind == "gift":
            b = c.num()
            s.sentences.append(f"{friend} gives {name} {b} {it}.")
            x = s.step(x, "+", b)
        elif kind == "lose":
            b = c.num(2, min(x - 1, c.knobs.max_number))
            s.sentences.append(f"{He} loses {b} {it}.")
            x = s.step(x, "-", b)
        elif kind == "give":
            b = c.num(2, min(x - 1, c.knobs.max_number))
            s.sentences.append(f"{He} gives {b} {it} to {friend}.")
            x = s.step(x, "-", b)
        elif kind == "half":
            s.sentences.append(f"{He} gives half of {his} {it} to {friend}.")
            x = s.step(x, "/", 2)
        elif kind == "double":
            s.sentences.append(f"Then {his} number of {it} doubles.")
            x = s.step(x, "*", 2)
        else:
            packs, per = c.factor(), c.factor()
            s.sentences.append(f"{He} buys {packs} packs with {per} {it} in each pack.")
            t = s.step(packs, "*", per)
            x = s.step(x, "+", t)
    return f"How many {it} does {name} have now?"


def _money(c: _Ctx, s: Story, n_steps: int) -> str:
    name, he, his = c.cast[0]
    He = he.capitalize()
    if n_steps >= 2 and c.rng.random() < 0.3:
        days, pay = c.factor(), c.num(3, max(5, c.knobs.max_start // 3))
        s.sentences.append(f"{name} earns {pay} dollars a day for {days} days.")
        x = s.step(pay, "*", days)
    else:
        x = c.num(10, c.knobs.max_start)
        s.sentences.append(f"{name} has {x} dollars.")
    while len(s.steps) < n_steps:
        room = n_steps - len(s.steps)
        options = ["earn"]
        if x > 3:
            options.append("spend")
        if room >= 2:
            options.append("buy_many")
        kind = c.rng.choice(options)
        if kind == "earn":
            b = c.num()
            s.sentences.append(f"{He} earns {b} dollars.")
            x = s.step(x, "+", b)
        elif kind == "spend":
            thing = c.rng.choice(THINGS)[1]
            b = c.num(2, min(x - 1, c.knobs.max_number))
            s.sentences.append(f"{He} spends {b} dollars on a {thing}.")
            x = s.step(x, "-", b)
        else:
            things = c.rng.choice(THINGS)[0]
            count, price = c.factor(), c.factor()
            if count * price >= x:  # cannot afford: earn first, which keeps every quantity positive
                b = count * price - x + c.num(2, 10)
                s.sentences.append(f"{He} earns {b} dollars.")
                x = s.step(x, "+", b)
                continue
            s.sentences.append(f"{He} buys {count} {things} for {price} dollars each.")
            t = s.step(count, "*", price)
            x = s.step(x, "-", t)
    return f"How many dollars does {name} have now?"


def _factory(c: _Ctx, s: Story, n_steps: int) -> str:
    place, goods = c.rng.choice(MACHINES)
    rate, hours = c.num(3, max(5, c.knobs.max_start // 3)), c.factor()
    s.sentences.append(f"A {place} makes {rate} {goods} every hour. It works for {hours} hours.")
    x = s.step(rate, "*", hours)
    question = f"How many {goods} does the {place} have now?"
    while len(s.steps) < n_steps:
        room = n_steps - len(s.steps)
        options = ["more"]
        if x > 3:
            options += ["sold"]
        if room == 1:
            options.append("boxes")
        kind = c.rng.choice(options)
        if kind == "more":
            b = c.num()
            s.sentences.append(f"Then it makes {b} more {goods}.")
            x = s.step(x, "+", b)
        elif kind == "sold":
            b = c.num(2, min(x - 1, c.knobs.max_number))
            s.sentences.append(f"It sells {b} {goods}.")
            x = s.step(x, "-", b)
        else:
            divisors = [d for d in range(2, c.knobs.max_factor + 1) if x % d == 0]
            if not divisors:
                b = c.num(2, 5)
                s.sentences.append(f"Then it makes {b} more {goods}.")
                x = s.step(x, "+", b)
                continue
            d = c.rng.choice(divisors)
            s.sentences.append(f"It packs all the {goods} in boxes of {d}.")
            x = s.step(x, "/", d)
            question = "How many boxes does it fill?"
    return question


def _comparison(c: _Ctx, s: Story, n_steps: int) -> str:
    it = c.items
    people = [p[0] for p in c.cast[:5]]
    x = c.num(5, c.knobs.max_start)
    s.sentences.append(f"{people[0]} has {x} {it}.")
    values = [x]
    # With k people there are k - 1 comparison steps; "together" adds one more step per extra person.
    together = n_steps >= 2 and c.rng.random() < 0.4
    n_people = min(5, n_steps + 1) if not together else max(2, min(3, (n_steps + 2) // 2 + 1))
    while len(values) < n_people and len(s.steps) < n_steps:
        prev_name, cur = people[len(values) - 1], values[-1]
        name = people[len(values)]
        options = ["more"]
        if cur > 3:
            options.append("fewer")
        if cur <= 100:
            options.append("twice")
        if cur % 2 == 0 and cur >= 4:
            options.append("half")
        kind = c.rng.choice(options)
        if kind == "more":
            b = c.num()
            s.sentences.append(f"{name} has {b} more {it} than {prev_name}.")
            v = s.step(cur, "+", b)
        elif kind == "fewer":
            b = c.num(2, min(cur - 1, c.knobs.max_number))
            s.sentences.append(f"{name} has {b} fewer {it} than {prev_name}.")
            v = s.step(cur, "-", b)
        elif kind == "twice":
            s.sentences.append(f"{name} has twice as many {it} as {prev_name}.")
            v = s.step(cur, "*", 2)
        else:
            s.sentences.append(f"{name} has half as many {it} as {prev_name}.")
            v = s.step(cur, "/", 2)
        values.append(v)
    if together and len(s.steps) < n_steps:
        k = min(len(values), n_steps - len(s.steps) + 1)
        group = people[len(values) - k : len(values)]
        total = values[len(values) - k]
        for v in values[len(values) - k + 1 :]:
            total = s.step(total, "+", v)
        return f"How many {it} do {_join(group)} have together?"
    return f"How many {it} does {people[len(values) - 1]} have?"


def _sharing(c: _Ctx, s: Story, n_steps: int) -> str:
    it = c.items
    name, he, _ = c.cast[0]
    He = he.capitalize()
    groups = c.rng.choice(GROUPS)
    # Built backwards so the final division is exact: choose the share and the number of groups first,
    # then walk the additions/removals back from their product to the opening amount.
    share, parts = c.num(2, max(3, c.knobs.max_start // 4)), c.factor()
    target = share * parts
    pre = n_steps - 1
    use_product = pre >= 2 and c.rng.random() < 0.5
    x, backwards = target, []
    for _ in range(pre - (2 if use_product else 0)):
        if c.rng.random() < 0.5 and x > 3:
            b = c.num(2, min(x - 1, c.knobs.max_number))
            backwards.append(("+", b))
            x -= b
        else:
            b = c.num()
            backwards.append(("-", b))
            x += b
    if use_product:
        bags, per = c.factor(), c.factor() + c.rng.randint(0, 4)
        diff = x - bags * per
        if diff == 0 or abs(diff) > 2 * c.knobs.max_number:
            raise _Retry
        cont = c.rng.choice(CONTAINERS)
        s.sentences.append(f"{name} has {bags} {cont} with {per} {it} in each.")
        start = s.step(bags, "*", per)
        if diff > 0:
            s.sentences.append(f"{He} finds {diff} more {it}.")
            x = s.step(start, "+", diff)
        else:
            s.sentences.append(f"{He} loses {-diff} {it}.")
            x = s.step(start, "-", -diff)
    else:
        s.sentences.append(f"{name} has {x} {it}.")
    for op, b in reversed(backwards):
        s.sentences.append(f"{He} finds {b} more {it}." if op == "+" else f"{He} loses {b} {it}.")
        x = s.step(x, op, b)
    if x != target:
        raise AssertionError(f"sharing story reached {x}, not {target}")
    s.sentences.append(f"{name} shares the {it} equally among {parts} {groups}.")
    s.step(x, "/", parts)
    return f"How many {it} does each of the {groups} get?"


class _Retry(Exception):
    """A story could not meet its constraints with these random choices; draw again."""


_FAMILY_FUNCS: dict[str, Callable[[_Ctx, Story, int], str]] = {
    "collections": _collections,
    "money": _money,
    "factory": _factory,
    "comparison": _comparison,
    "sharing": _sharing,
}


def _join(names: list[str]) -> str:
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def _distractor(c: _Ctx, used: set[int]) -> tuple[str, int]:
    """An irrelevant numeric fact whose number is not one the solution uses."""
    for _ in range(50):
        v = c.num(2, c.knobs.max_start)
        if v not in used:
            break
    other, _, _ = c.cast[5]
    things = c.rng.choice(THINGS)[0]
    template = c.rng.choice(
        (
            f"{other} has {v} {things}.",
            f"{c.cast[0][0]} is {v} years old.",
            f"The shop is {v} blocks away.",
            f"{other} read {v} pages yesterday.",
        )
    )
    return template, v


# --------------------------------------------------------------------------- public API


def _rng_for(seed: int, index: int) -> random.Random:
    digest = hashlib.sha256(f"toyworld:{seed}:{index}".encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def make_toy_problem(seed: int, index: int, knobs: Knobs | None = None) -> ToyProblem:
    """Problem ``index`` of the stream ``seed``: a pure function of its arguments."""
    knobs = knobs or Knobs()
    rng = _rng_for(seed, index)
    for _attempt in range(100):
        c = _Ctx(rng, knobs)
        family = rng.choice(knobs.families)
        n_steps = rng.randint(knobs.min_steps, knobs.max_steps)
        story = Story()
        try:
            question = _FAMILY_FUNCS[family](c, story, n_steps)
        except _Retry:
            continue
        if len(story.steps) != n_steps or any(st.result < 0 or st.result > 9999 for st in story.steps):
            continue
        used = {v for st in story.steps for v in (st.left, st.right, st.result)}
        sentences = list(story.sentences)
        for _ in range(rng.randint(0, knobs.max_distractors)):
            text, value = _distractor(c, used)
            sentences.insert(rng.randint(1, len(sentences)), text)
            story.distractor_values.append(value)
        return ToyProblem(
            question=" ".join(sentences + [question]),
            steps=tuple(story.steps),
            answer=story.steps[-1].result,
            family=family,
            distractor_values=tuple(story.distractor_values),
        )
    raise RuntimeError(f"could not generate toyworld problem seed={seed} index={index} with {knobs}")


def to_problem(toy: ToyProblem, split: str, index: int) -> Problem:
    return Problem(
        problem_id=f"{DATASET}/{split}/{index}",
        dataset=DATASET,
        split=split,
        question=toy.question,
        answer=str(toy.answer),
        solution=toy.solution,
        level=f"steps={len(toy.steps)}",
        subject=toy.family,
    )



def generate_problems(
    n: int, *, seed: int, split: str = "train", knobs: Knobs | None = None, start: int = 0
) -> list[Problem]:
    """``n`` problems of the stream ``seed``, labelled with ``split``: problems ``start .. start+n-1``.

    Deterministic: the same arguments always give the same problems, and problem ``i`` does not depend
    on ``n``.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    return [to_problem(make_toy_problem(seed, i, knobs), split, i) for i in range(start, start + n)]


def _split_problems(split: str) -> list[Problem]:
    """A built-in split: the first ``DEFAULT_SIZES[split]`` problems of its stream whose question is new.

    Small numbers make a few short problems recur by chance, so a problem is skipped when its question
    already appeared earlier in the split or (for ``test``) anywhere in ``train``: the study never
    evaluates on a question it trained on. Ids keep the stream index, so they stay stable (with gaps).
    """
    seen: set[str] = set()
    if split == "test":
        seen = {p.question for p in _split_problems("train")}
    out: list[Problem] = []
    index = 0
    while len(out) < DEFAULT_SIZES[split]:
        problem = to_problem(make_toy_problem(SPLIT_SEEDS[split], index), split, index)
        index += 1
        if problem.question not in seen:
            seen.add(problem.question)
            out.append(problem)
    return out


def load_problems(split: str | None = "train", limit: int | None = None, seed: int | None = None) -> list[Problem]:
    """A built-in toy-world split: ``train`` (2000 problems) or ``test`` (2000), disjoint streams with no
    question in common.

    ``split=None`` means ``test``, as for every named source of ``flopmatch.problems.load``. ``limit``
    keeps at most that many problems the way every source does (``flopmatch.problems.select_subset``):
    the first ones when ``seed`` is None, otherwise a seeded choice that is nested (a larger limit is a
    superset) and returned in id order. ``seed`` never changes which problems make up the split.
    """
    from flopmatch.record import select_subset

    split = "test" if split is None else split
    if split not in DEFAULT_SIZES:
        raise ValueError(f"unknown toyworld split {split!r}; expected one of {sorted(DEFAULT_SIZES)}")
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")
    return select_subset(_split_problems(split), limit=limit, seed=seed)
