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


def check(gold_parsed: list[Any], answer: str) -> tuple[bool, str]:
    """Whether ``answer`` (normalised text) equals the parsed gold, and a note on why not."""
    from math_verify import verify

    parsed = parse_answer(answer)
    if not parsed:
        return False, "answer could not be parsed"
    overruled = False
    for g in gold_parsed:
        for p in parsed:
            if not verify(g, p, timeout_seconds=None):  # type: ignore[arg-type]
                continue
            if _same_number(g, p):
                return True, ""
            overruled = True
    return False, ("math-verify's match overruled: values differ" if overruled else "")


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
