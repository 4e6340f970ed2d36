"""The exact step checker of the toy world: ground truth for "right answer, wrong reasoning".

A solution is one step per line (``16 - 3 - 4 = 9``) and a final line ``Answer: N``. A step is valid
when

1. it parses in a tiny grammar (non-negative integers, ``+ - * /``, parentheses, unary minus),
2. its arithmetic is exactly right (rationals, so ``7 / 2 = 3`` is wrong), and
3. every number it uses is a quantity the problem needs or the result of an earlier step.

The solution's reasoning is valid when every step is valid, there is at least one step, and the answer
is the result of the last step (an answer that no step produced is a guess). "Quantities the problem
needs" are the numbers of the reference solution (which are exactly the numbers the question states and
the constants its words imply, such as 2 for "twice"), so using a distractor fact is a wrong step; when a
problem has no reference solution in the step language, every number in the question counts.

Model output is untrusted: it is never evaluated, only parsed by the recursive-descent parser below,
and every input is bounded (characters, lines, nesting depth, digits per number), so a check takes
microseconds and needs no timer.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from fractions import Fraction

from flopmatch.errors import FlopmatchError
from flopmatch.record import Problem

MAX_TEXT_CHARS = 4_000
MAX_LINES = 64
MAX_LINE_CHARS = 200
MAX_DEPTH = 16
MAX_DIGITS = 12

_ANSWER_RE = re.compile(r"^\s*answer\s*:\s*(.*?)\s*$", re.IGNORECASE)
_INT_RE = re.compile(rf"^[+-]?\d{{1,{MAX_DIGITS}}}\.?$")
_TOKEN_RE = re.compile(r"\s*(?:(\d+)|(.))")
_ALIASES = str.maketrans({"×": "*", "÷": "/", "−": "-", "–": "-"})

# Words that state a number without digits, for problems without a reference solution.
_NUMBER_WORDS = {"twice": 2, "double": 2, "doubles": 2, "half": 2, "triple": 3, "third": 3, "dozen": 12}


@dataclass(frozen=True)
class StepCheck:
    """The verdict on one solution.

    ``first_wrong_step`` is the 0-based index of the first invalid step; it equals the number of steps
    when every step is valid but the answer is not the last step's result (or there are no steps), and
    is ``None`` when the reasoning is valid.
    """

    answer_correct: bool
    steps_valid: bool
    first_wrong_step: int | None
    reason: str

    @property
    def false_positive(self) -> bool:
        """Right final answer reached through invalid reasoning."""
        return self.answer_correct and not self.steps_valid


class StepSyntaxError(FlopmatchError, ValueError):
    """A line that is not a step of the step language."""


@dataclass(frozen=True)
class ParsedStep:
    value: Fraction  # the exact value of the left-hand side
    result: Fraction  # the number after "="
    literals: tuple[int, ...]  # absolute values of the numbers the left-hand side uses


# --------------------------------------------------------------------------- the grammar


class _Parser:
    """expr := term (('+'|'-') term)* ; term := unary (('*'|'/') unary)* ;
    unary := '-' unary | atom ; atom := INT | '(' expr ')'."""

    def __init__(self, text: str):
        self.tokens: list[str] = []
        for match in _TOKEN_RE.finditer(text):
            number, char = match.groups()
            if number is not None:
                if len(number) > MAX_DIGITS:
                    raise StepSyntaxError(f"number {number[:20]}... has more than {MAX_DIGITS} digits")
                self.tokens.append(number)
            elif char is not None and not char.isspace():
                if char not in "+-*/()":
                    raise StepSyntaxError(f"unexpected character {char!r}")
                self.tokens.append(char)
        self.pos = 0
        self.literals: list[int] = []

    def parse(self) -> Fraction:
        if not self.tokens:
            raise StepSyntaxError("empty expression")
        value = self._expr(0)
        if self.pos != len(self.tokens):
            raise StepSyntaxError(f"unexpected {self.tokens[self.pos]!r}")
        return value

    def _peek(self) -> str | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def _next(self) -> str:
        token = self._peek()
        if token is None:
            raise StepSyntaxError("expression ends too early")
        self.pos += 1
        return token

    def _expr(self, depth: int) -> Fraction:
        value = self._term(depth)
        while self._peek() in ("+", "-"):
            op = self._next()
            right = self._term(depth)
            value = value + right if op == "+" else value - right
        return value

    def _term(self, depth: int) -> Fraction:
        value = self._unary(depth)
        while self._peek() in ("*", "/"):
            op = self._next()
            right = self._unary(depth)
            if op == "*":
                value = value * right
            elif right == 0:
                raise StepSyntaxError("division by zero")
            else:
                value = value / right
        return value

    def _unary(self, depth: int) -> Fraction:
        if depth > MAX_DEPTH:
            raise StepSyntaxError(f"nested deeper than {MAX_DEPTH}")
        if self._peek() == "-":
            self._next()
            return -self._unary(depth + 1)
        return self._atom(depth)

    def _atom(self, depth: int) -> Fraction:
        token = self._next()
        if token == "(":
            value = self._expr(depth + 1)
            if self._next() != ")":
                raise StepSyntaxError("missing ')'")
            return value
        if token.isdigit():
            self.literals.append(int(token))
            return Fraction(int(token))
        raise StepSyntaxError(f"unexpected {token!r}")


def parse_number(text: str) -> int | None:
    """An integer written as a final answer (``9``, ``-3``, ``9.``, ``1,000``), else ``None``."""
    text = text.replace(",", "").strip()
    if not _INT_RE.match(text):
        return None
    return int(text.rstrip("."))


def parse_step(line: str) -> ParsedStep:
    """Parse ``expression = integer``; raise ``StepSyntaxError`` on anything else."""
    if len(line) > MAX_LINE_CHARS:
        raise StepSyntaxError(f"line longer than {MAX_LINE_CHARS} characters")
    line = line.translate(_ALIASES)
    if line.count("=") != 1:
        raise StepSyntaxError("a step needs exactly one '='")
    left, right = line.split("=")
    result = parse_number(right)
    if result is None:
        raise StepSyntaxError(f"the result {right.strip()[:20]!r} is not an integer")
    parser = _Parser(left)
    value = parser.parse()
    return ParsedStep(value=value, result=Fraction(result), literals=tuple(parser.literals))


# --------------------------------------------------------------------------- solutions


@dataclass(frozen=True)
class ParsedSolution:
    steps: tuple[str, ...]  # the step lines, stripped, in order
    answer_text: str | None  # what follows "Answer:" on the first answer line
    truncated: bool


def split_solution(text: str) -> ParsedSolution:
    """Split a solution into its step lines and the first ``Answer:`` line (later lines are ignored)."""
    truncated = len(text) > MAX_TEXT_CHARS
    lines = [ln.strip() for ln in text[:MAX_TEXT_CHARS].splitlines()]
    steps: list[str] = []
    for line in lines:
        if not line:
            continue
        match = _ANSWER_RE.match(line)
        if match:
            return ParsedSolution(tuple(steps), match.group(1), truncated)
        steps.append(line)
        if len(steps) > MAX_LINES:
            break
    return ParsedSolution(tuple(steps), None, truncated)


def extract_answer(text: str) -> str | None:
    """The text after the first ``Answer:`` line, or ``None``."""
    return split_solution(text).answer_text


def problem_quantities(problem: Problem) -> frozenset[int]:
    """The numbers a correct solution may start from (see the module docstring)."""
    if problem.solution:
        try:
            parsed = split_solution(problem.solution)
            literals = {lit for line in parsed.steps for lit in parse_step(line).literals}
            results = {int(parse_step(line).result) for line in parsed.steps}
            # Literals of the reference that are not results of its own earlier steps are the givens.
            givens = literals - results | (literals & _question_numbers(problem.question))
            if givens:
                return frozenset(givens)
        except StepSyntaxError:
            pass
    return frozenset(_question_numbers(problem.question))


def _question_numbers(question: str) -> set[int]:
    numbers = {int(n) for n in re.findall(r"\d+", question.replace(",", ""))}
    words = set(re.findall(r"[a-z]+", question.lower()))
    numbers |= {v for w, v in _NUMBER_WORDS.items() if w in words}
    return numbers


def check_solution(problem: Problem, text: str) -> StepCheck:
    """Check a solution exactly: the final answer against the gold, and every step (module docstring)."""
    gold = parse_number(problem.answer)
    if gold is None:
        raise ValueError(f"problem {problem.problem_id}: gold answer {problem.answer!r} is not an integer")
    parsed = split_solution(text)
    answer = parse_number(parsed.answer_text) if parsed.answer_text is not None else None
    answer_correct = answer is not None and answer == gold

    givens = problem_quantities(problem)
    available = set(givens)
    last_result: Fraction | None = None
    for index, line in enumerate(parsed.steps):
        if index >= MAX_LINES:
            return StepCheck(answer_correct, False, index, f"more than {MAX_LINES} steps")
        try:
            step = parse_step(line)
        except StepSyntaxError as exc:
            return StepCheck(answer_correct, False, index, f"step {index + 1} {line[:60]!r}: {exc}")
        if step.value != step.result:
            return StepCheck(
                answer_correct, False, index,
                f"step {index + 1} {line[:60]!r}: arithmetic is wrong (the left side is {_fmt(step.value)})",
            )
        for literal in step.literals:
            if literal not in available:
                return StepCheck(
                    answer_correct, False, index,
                    f"step {index + 1} {line[:60]!r}: uses {literal}, which is neither a quantity the "
                    "problem needs nor an earlier result",
                )
        available.add(abs(int(step.result)))
        last_result = step.result
    n = len(parsed.steps)
    if parsed.answer_text is None:
        if parsed.truncated:
            return StepCheck(False, False, n, f"no 'Answer:' line in the first {MAX_TEXT_CHARS} characters")
        return StepCheck(False, n > 0, None if n > 0 else 0, "no 'Answer:' line")
    if answer is None:
        return StepCheck(False, False, n, f"the answer {parsed.answer_text[:30]!r} is not an integer")
    if last_result is None:
        return StepCheck(answer_correct, False, 0, "an answer with no steps")
    if Fraction(answer) != last_result:
        return StepCheck(
            answer_correct, False, n,
            f"the answer {answer} is not the result of the last step ({_fmt(last_result)})",
        )
    verdict = "right answer" if answer_correct else f"wrong answer (gold {gold})"
    return StepCheck(answer_correct, True, None, f"{verdict}; all {n} steps valid")


def _fmt(value: Fraction) -> str:
    return str(value.numerator) if value.denominator == 1 else f"{value.numerator}/{value.denominator}"
