"""The ``\\boxed{}`` answer marker, parsed one way for gold answers (:mod:`flopmatch.problems`) and for
model answers (:mod:`flopmatch.grading`). Imports no other flopmatch module."""

from __future__ import annotations

import re

BOX_RE = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])")  # \boxedx is another macro
_TOKEN_RE = re.compile(r"[^\s$]+")


def box_span(text: str, start: int) -> tuple[str, int] | None:
    """``(argument, end)`` of a ``\\boxed`` whose name ends at ``start``: ``{...}`` with nested
    braces (escaped ``\\{``/``\\}`` do not nest), or the next token for ``\\boxed 5``. ``None`` when
    the braces never close: a truncated response has no answer."""
    i = start
    n = len(text)
    while i < n and text[i] in " \t":
        i += 1
    if i >= n:
        return None
    if text[i] != "{":
        match = _TOKEN_RE.match(text, i)
        return (match.group(0), match.end()) if match else None
    depth = 0
    j = i
    while j < n:
        ch = text[j]
        if ch == "\\":
            j += 2
            continue
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return text[i + 1 : j], j + 1
        j += 1
    return None


def last_boxed(text: str) -> str | None:
    """The content of the last complete ``\\boxed{}``/``\\fbox{}`` in ``text`` (MATH's gold rule)."""
    for match in reversed(list(BOX_RE.finditer(text))):
        span = box_span(text, match.end())
        if span is not None and span[0].strip():
            return span[0]
    return None
