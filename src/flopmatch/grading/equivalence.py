"""Answer equivalence: an exact fast path in plain Python, then math-verify with our corrections.

:func:`fast_verdict` settles what needs no computer algebra (identical text, two plain numbers) in
the parent process. Everything else goes to :func:`check` inside a watched worker process
(:mod:`.pool`): math-verify parses both answers (wrapped in ``\\boxed{}``, so its LaTeX parser sees
exactly the answer we extracted) and compares them — fractions vs decimals, symbolic equality,
sets vs tuples, intervals, ``x = 5`` vs ``5``, degrees, ``\\text{(C)}``.

Where math-verify is known to be wrong we correct it, never loosen it: its numeric comparison
chops tiny values to zero (``evalf(chop=True)``), so ``2^{-100}`` "equals" ``2^{-101}`` and
``1/2004!`` "equals" ``1/2006!`` (huggingface/Math-Verify#14). :func:`_same_number` re-checks every
numeric match with a relative tolerance — exact values must agree to 1e-10 relative, values
written as decimals to 1e-5 relative (math-verify's own rule is agreement to 6 decimal places,
which this keeps for ordinary magnitudes) — and can only turn a "correct" into a "wrong".
"""

from __future__ import annotations

import logging
from typing import Any

from flopmatch.grading.extract import as_number

# A value written as a decimal may be rounded; below this relative error it still counts.
DECIMAL_RELATIVE_TOLERANCE = 1e-5
EXACT_RELATIVE_TOLERANCE = 1e-10


def fast_verdict(gold: str, answer: str) -> bool | None:
    """``True``/``False`` when plain Python can decide, ``None`` when sympy must.

    Identical normalised text is equal. Two plain numbers (integers, decimals, ``a/b``,
    ``\\frac{a}{b}``) are compared exactly; unequal values that differ by more than ``1e-6`` are
    unequal under every rule math-verify or :func:`_same_number` applies, so they are settled here
    too, and only near-misses involving a decimal (``0.333333`` vs ``\\frac{1}{3}``) go to sympy.
    """
    if gold == answer:
        return True
    g = as_number(gold)
    a = as_number(answer)
    if g is None or a is None:
        return None
    (gv, g_decimal), (av, a_decimal) = g, a
    if gv == av:
        return True
    if not (g_decimal or a_decimal):
        return False
    if abs(gv - av) > 1e-6:
        return False
    return None


# --------------------------------------------------------------------------- worker side (sympy)


def quiet_math_verify() -> None:
    """math-verify warns once per process that its own timeouts are off: ours replace them."""
    logging.getLogger("math_verify").setLevel(logging.ERROR)


def parse_answer(answer: str) -> list[Any]:
    """math-verify's parse of one normalised answer: ``[sympy object, text]``, ``[text]`` when the
    LaTeX cannot be parsed (text is then compared as text), or ``[]``.

    The answer is wrapped in ``\\boxed{}`` so math-verify's LaTeX extraction takes all of it
    (its brace matching), instead of hunting for math in it with regexes. Its signal-based timeout is
    disabled (``parsing_timeout=None``): the worker's own alarm and the parent's watchdog bound it.
    """
    from math_verify import LatexExtractionConfig, parse

    return parse(
        "\\boxed{" + answer + "}",
        extraction_config=[LatexExtractionConfig(boxed_match_priority=0)],
        fallback_mode="first_match",
        parsing_timeout=None,  # type: ignore[arg-type]
    )


def check(gold_parsed: list[Any], answer: str) -> tuple[str, str]:
    """``("correct" | "wrong" | "timeout", note)`` for a normalised answer against the parsed gold.

    An answer whose value has more than :data:`MAX_DIGITS` digits (a power tower, the factorial of
    a huge number) is ``timeout`` at once: no gold answer is that large, and evaluating it would only
    burn the time limit (or memory) to say so.
    """
    from math_verify import verify

    parsed = parse_answer(answer)
    if not parsed:
        return "wrong", "answer could not be parsed"
    if any(too_large(p) for p in parsed):
        return "timeout", f"answer too large to evaluate (over {MAX_DIGITS:.0e} digits)"
    overruled = False
    for g in gold_parsed:
        for p in parsed:
            if not verify(g, p, timeout_seconds=None):  # type: ignore[arg-type]
                continue
            if _same_number(g, p):
                return "correct", ""
            overruled = True
    return "wrong", ("math-verify's match overruled: values differ" if overruled else "")


MAX_DIGITS = 1e5


def too_large(expr: Any) -> bool:
    """Whether some part of a parsed answer has a value beyond :data:`MAX_DIGITS` digits (or as
    many leading zeros), judged from the expression tree without evaluating anything large."""
    import sympy

    if not isinstance(expr, sympy.Basic):
        return False
    try:
        return _digits(expr) > MAX_DIGITS
    except (RecursionError, OverflowError, ValueError, TypeError):
        return True


def _digits(node: Any) -> float:
    """An over-estimate of ``|log10 |value||`` of a numeric subexpression: how many digits (or
    leading zeros) writing it takes. Symbols count 0; unknown functions take their largest argument."""
    import math

    import sympy

    if isinstance(node, sympy.Integer):
        value = abs(int(node))
        if value == 0:
            return 0.0
        return math.log10(value) if value.bit_length() < 1000 else value.bit_length() * 0.30103
    if isinstance(node, sympy.Rational):
        return _digits(sympy.Integer(node.p)) + _digits(sympy.Integer(node.q))
    if isinstance(node, sympy.Float):
        return 0.0 if node == 0 else abs(float(sympy.log(abs(node), 10)))
    if isinstance(node, sympy.Pow):
        base, exponent = node.args
        exponent_digits = _digits(exponent)
        base_digits = _digits(base)
        if base_digits == 0 and not base.is_number:
            return exponent_digits  # x^{10^{10}}: a symbol's power, not a number to evaluate
        if exponent_digits > 7:
            return math.inf
        size = abs(float(exponent)) if isinstance(exponent, sympy.Number) else 10**exponent_digits
        return size * max(base_digits, 0.30103)
    if isinstance(node, sympy.exp):
        power_digits = _digits(node.args[0])
        return math.inf if power_digits > 7 else 10**power_digits * 0.4343
    if isinstance(node, (sympy.factorial, sympy.factorial2, sympy.binomial, sympy.gamma, sympy.subfactorial)):
        n_digits = max((_digits(a) for a in node.args), default=0.0)
        if n_digits > 5.5:
            return math.inf
        n = 10**n_digits
        return n * max(math.log10(n), 1.0)
    if isinstance(node, sympy.Mul):
        return sum(_digits(a) for a in node.args)
    if isinstance(node, sympy.Basic) and node.args:
        return max(_digits(a) for a in node.args) + 1.0
    return 0.0


def _same_number(gold: Any, answer: Any) -> bool:
    """Our re-check of a match math-verify reported: ``False`` only when both sides are numbers
    (after unwrapping ``x = ...``) whose values differ beyond a relative tolerance. Anything else —
    symbols, sets, matrices, percentages (math-verify's rule ``50\\% == 50`` is kept), failures to
    evaluate — keeps math-verify's verdict."""
    import sympy

    g = _unwrap_assignment(gold)
    a = _unwrap_assignment(answer)
    if not (isinstance(g, sympy.Expr) and isinstance(a, sympy.Expr)):
        return True
    if g.has(sympy.UnevaluatedExpr) or a.has(sympy.UnevaluatedExpr):
        return True
    try:
        if not (g.is_number and a.is_number):
            return True
        gv = sympy.N(g, 50)
        av = sympy.N(a, 50)
        if not (gv.is_finite and av.is_finite):
            return True
        scale = max(abs(gv), abs(av))
        if scale == 0:
            return True
        has_float = g.has(sympy.Float) or a.has(sympy.Float)
        tolerance = DECIMAL_RELATIVE_TOLERANCE if has_float else EXACT_RELATIVE_TOLERANCE
        return bool(abs(gv - av) <= tolerance * scale)
    except Exception:  # noqa: BLE001 - an unevaluable value leaves math-verify's verdict standing
        return True


def _unwrap_assignment(expr: Any) -> Any:
    import sympy

    while isinstance(expr, sympy.Eq) and isinstance(expr.lhs, sympy.Symbol):
        expr = expr.rhs
    return expr
