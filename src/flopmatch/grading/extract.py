"""Final-answer extraction and answer normalisation: pure string functions, no sympy.

Everything here runs in the parent process on untrusted model output: nothing is evaluated, the
regular expressions have no nested quantifiers, and the ones that pair delimiters only run on a
marker's content (at most a couple of thousand characters). The expensive, possibly non-terminating
part — parsing and comparing mathematics — lives in :mod:`.equivalence` and runs in watched worker
processes.

Two answer *modes* cover the supported datasets:

* ``numeric`` (GSM8K, the toy world): gold answers are numbers; a response's answer is the number
  (or the expression) its final marker states, or failing that, for GSM8K, the last number in the
  text. The toy world reads its first ``Answer:`` line, exactly as its step checker does.
* ``latex`` (MATH, MATH500): gold answers are LaTeX (fractions, intervals, tuples, matrices,
  ``\\text{(C)}``...); a response's answer is the content of its final marker, and a response
  without one has no answer.
"""

from __future__ import annotations

import re
from fractions import Fraction

from flopmatch.boxed import BOX_RE, box_span, last_boxed
from flopmatch.datasets import dataset_names, get_dataset
from flopmatch.errors import FlopmatchError


class GradingInputError(FlopmatchError, ValueError):
    """Grading was asked for something it cannot do: a dataset it has no answer rules for, dataset names
    that do not match the pairs, a non-positive timeout."""


def answer_mode(dataset: str) -> str:
    """``"numeric"`` or ``"latex"``: which extraction and normalisation rules a dataset uses (as it
    declares them in :mod:`flopmatch.datasets`; the toy world's first-answer-line rule is numeric)."""
    declared = get_dataset(dataset)
    if declared is None:
        raise GradingInputError(f"unknown dataset {dataset!r}; grading supports {', '.join(dataset_names())}")
    return "latex" if declared.answers == "latex" else "numeric"


# --------------------------------------------------------------------------- extraction


_ANSWER_AT_RE = re.compile(r"answer(?:[ \t]*\*\*)?[ \t]*(?:(is)\b[ \t]*:?|:|=)")
# "Answer:" is a label only at the start of a line or after "final" ("check our answer: 17*44 …"
# is not one).
_LABEL_LEAD_RE = re.compile(r"[ \t*#>_-]*")
_A_LINE_RE = re.compile(r"^[ \t]*(?:\*\*)?A(?:\*\*)?[ \t]*:", re.MULTILINE)
_TOY_ANSWER_RE = re.compile(r"^[ \t]*answer[ \t]*:[ \t]*(.*?)[ \t]*$", re.IGNORECASE | re.MULTILINE)
# "... so our answer is correct": a verdict on the answer, not the answer.
_NOT_AN_ANSWER_RE = re.compile(
    r"(?:correct|incorrect|right|wrong|consistent|reasonable|confirmed|verified|valid|as follows|below|above)\b",
    re.IGNORECASE,
)
_BOLD_RE = re.compile(r"\*\*([^*\n]{1,120})\*\*")
# A number as people write it: thousands separators, decimals, a simple fraction a/b.
_NUMBER_RE = re.compile(
    r"(?<![\w.])-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:\s*/\s*\d+(?:\.\d+)?)?(?![\w])|(?<![\w.])-?\.\d+(?![\w])"
)
_FRAC_NUMBER_RE = re.compile(r"-?\\frac\s*\{\s*-?\d+\s*\}\s*\{\s*-?\d+\s*\}|-?\\frac\s*\d\s*\d")
_SENTENCE_END_RE = re.compile(r"\.(?=\s|$)|\bI hope\b")
_MATH_SPAN_RE = re.compile(
    r"\$\$(.+?)\$\$|\\\[(.+?)\\\]|\\\((.+?)\\\)|(?<!\\)\$((?:\\\$|[^$])+?)(?<!\\)\$", re.DOTALL
)


def extract_answer(text: str | None, dataset: str) -> str | None:
    """The final answer of a solution, normalised, or ``None`` when it states none.

    Explicit markers — ``\\boxed{...}``/``\\fbox{...}`` (nested braces, ``\\boxed 5``), ``#### N``,
    "The (final) answer is …", "Answer: …", a line opening "A: …" — are tried from the last one
    back, and the first whose content holds an answer wins, so a marker beats any number after it
    and a later restatement beats an earlier box. A phrase's content must be an answer: a verdict
    ("… so our answer is correct") is not, nor is prose ("is based on symmetry") in a response that
    boxes its answer; a short lead-in ("the answer is *therefore* 18") is allowed.

    Without a marker, the last bold span of the final paragraph counts ("… is **73**."), and for
    GSM8K the last number in the text. The toy world follows its step checker instead: the first
    ``Answer:`` line, nothing after it.
    """
    mode = answer_mode(dataset)
    if not text:
        return None
    text = text.replace("\r\n", "\n")
    if get_dataset(dataset).answers == "first-answer-line":
        return _first_answer_line(text)
    boxes = _boxed_candidates(text)
    candidates = sorted(boxes + _phrase_candidates(text), key=lambda c: c[0], reverse=True)
    for _, kind, raw in candidates:
        answer = _candidate_answer(raw, mode, kind, prose_ok=not boxes)
        if answer:
            return answer
    bold = _last_bold_answer(text, mode)
    if bold:
        return bold
    if mode == "numeric":
        return _last_number(text)
    return None


def _first_answer_line(text: str) -> str | None:
    """The toy world's rule, the same as its step checker's: the first ``Answer:`` line counts and
    everything after it is ignored (a tiny model may ramble on)."""
    match = _TOY_ANSWER_RE.search(text)
    if match is None:
        return None
    return _numeric_answer(normalize_answer(match.group(1), "numeric"), lead_words=0)


def _boxed_candidates(text: str) -> list[tuple[int, str, str]]:
    """``(position, "box", content)`` of every complete ``\\boxed{}``/``\\fbox{}`` and ``####``."""
    found: list[tuple[int, str, str]] = []
    for match in BOX_RE.finditer(text):
        span = box_span(text, match.end())
        if span is not None:
            found.append((match.start(), "box", span[0]))
    start = text.find("####")
    while start >= 0:
        found.append((start, "box", _line_after(text, start + 4)))
        start = text.find("####", start + 4)
    return found


def _phrase_candidates(text: str) -> list[tuple[int, str, str]]:
    """``(position, kind, content)`` of "the (final) answer is", the label "(Final) Answer:" (kind
    ``phrase``) and of lines opening "A:" (kind ``line``).

    Found with ``str.find`` on a lower-cased copy and a regex anchored at each hit, which is much
    faster than a case-insensitive scan of the whole text."""
    found: list[tuple[int, str, str]] = []
    lower = text.lower()
    start = lower.find("answer")
    while start >= 0:
        if start == 0 or not lower[start - 1].isalnum():
            match = _ANSWER_AT_RE.match(lower, start)
            if match and (match.group(1) or _is_label(lower, start)):
                found.append((start, "phrase", _phrase_content(text, match.end())))
        start = lower.find("answer", start + 6)
    for match in _A_LINE_RE.finditer(text):
        found.append((match.start(), "line", _phrase_content(text, match.end())))
    return found


def _is_label(lower: str, start: int) -> bool:
    """Whether the "answer" at ``start`` opens its line (after markdown) or follows "final"."""
    prefix = lower[lower.rfind("\n", 0, start) + 1 : start]
    return bool(_LABEL_LEAD_RE.fullmatch(prefix)) or prefix.rstrip(" \t*").endswith("final")


def _line_after(text: str, start: int) -> str:
    end = text.find("\n", start)
    return text[start : end if end >= 0 else len(text)]


def _phrase_content(text: str, start: int) -> str:
    """What follows "The answer is": the rest of the line, or the next non-empty line (or the
    display-math block) when the marker ends its line."""
    rest = text[start : start + 2000]
    stripped = rest.lstrip(" \t*")
    if not stripped.startswith("\n"):
        return _line_after(stripped, 0)
    body = stripped.lstrip()
    for opener, closer in (("$$", "$$"), ("\\[", "\\]")):
        if body.startswith(opener):
            end = body.find(closer, len(opener))
            if end >= 0:
                return body[: end + len(closer)]
    return _line_after(body, 0)


def _candidate_answer(raw: str, mode: str, kind: str, *, prose_ok: bool = True) -> str | None:
    """The answer inside one marker's raw content, or ``None`` if it holds none.

    ``kind`` is ``box`` (``\\boxed``, ``####``: the content is the answer), ``phrase`` ("the answer
    is …": a short lead-in is allowed) or ``line`` (a line opening "A:", which few-shot formats
    also use for whole solutions: the answer must come first). A phrase whose content is a verdict
    ("so our answer is correct") holds no answer; one whose content is words rather than math
    ("Evelyn") counts only when ``prose_ok`` — when the response boxes nothing.
    """
    raw = raw.strip()
    if not raw or (kind != "box" and _NOT_AN_ANSWER_RE.match(raw.lstrip("*$ "))):
        return None
    in_math = True
    inner = last_boxed(raw)
    if inner is not None:
        raw, kind = inner, "box"
    elif kind != "box":
        raw, in_math = _answer_span(raw, mode)
    answer = normalize_answer(raw, mode)
    if not answer:
        return None
    if mode == "numeric":
        lead_words = {"box": None, "phrase": 3, "line": 0}[kind]
        return _numeric_answer(answer, lead_words=lead_words)
    if kind == "box" or in_math or _MATHY_START_RE.match(answer):
        return answer
    if prose_ok and len(answer.split()) <= 4:
        return answer
    return None


def _answer_span(raw: str, mode: str) -> tuple[str, bool]:
    """The part of a marker's content that is the answer, and whether it is a math span: the first
    math span when it opens before the first sentence ends (LaTeX mode), else the first sentence."""
    end = _SENTENCE_END_RE.search(raw)
    cut = end.start() if end else len(raw)
    if mode == "latex":
        span = _MATH_SPAN_RE.search(raw)
        if span is not None and span.start() < cut:
            return next(g for g in span.groups() if g is not None), True
    return raw[:cut], False


def _last_bold_answer(text: str, mode: str) -> str | None:
    """The last bold span of the final paragraph that holds a digit or math ("… is **73**.")."""
    paragraph = text.rstrip().rsplit("\n\n", 1)[-1]
    for match in reversed(list(_BOLD_RE.finditer(paragraph))):
        content = match.group(1)
        if not re.search(r"[\d$\\]", content):
            continue
        answer = _candidate_answer(content, mode, "phrase")
        if answer:
            return answer
    return None


def _last_number(text: str) -> str | None:
    text = re.sub(r"<<[^<>\n]*>>", " ", text)  # GSM8K calculator annotations
    text = text.replace("$", " ")
    numbers = _NUMBER_RE.findall(text)
    if not numbers:
        return None
    return _canonical_number_text(numbers[-1])


# --------------------------------------------------------------------------- normalisation


_UNICODE = {
    "\u2212": "-",  # minus sign
    "\u2013": "-",  # en dash
    "\u00d7": "\\times ",
    "\u00f7": "\\div ",
    "\u00b7": "\\cdot ",
    "\u22c5": "\\cdot ",
    "\u221a": "\\sqrt",
    "\u03c0": "\\pi ",
    "\u221e": "\\infty ",
    "\u2264": "\\le ",
    "\u2265": "\\ge ",
    "\u2260": "\\ne ",
    "\u00b0": "^\\circ",
    "\u00a0": " ",
    "\u2009": " ",
    "\u202f": " ",
}
_UNICODE_RE = re.compile("|".join(map(re.escape, _UNICODE)))
_SPACING_RE = re.compile(r"\\[!,;:>]|\\q?quad\b|\\displaystyle\b|\\(?:hspace|vspace)\*?\{[^{}]*\}|~")
_THOUSANDS_LATEX_RE = re.compile(r"(?<=\d)(?:\{,\}|,\\!\s*|,\s*\\!)(?=\d{3}(?!\d))")
_WHOLE_THOUSANDS_RE = re.compile(r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?")
_TEXT_UNIT_RE = re.compile(
    r"^(?P<math>.*?[\w})\]])\s*\\(?:text|textrm|textnormal|mbox|mathrm)\s*\{\s*(?P<unit>[A-Za-z][A-Za-z .'/-]*)\}"
    r"(?:\s*\^\s*\{?\s*[23]\s*\}?)?$",
    re.DOTALL,
)
_MATHRM_CONST_RE = re.compile(r"\\(?:mathrm|operatorname|text|mathit)\s*\{\s*([ei])\s*\}")
_LEADING_ZEROS_RE = re.compile(r"(?<![\w.,\\])0+(?=\d)")
_THOUSANDS_RE = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")
_REPEATING_RE = re.compile(r"^(-?)(\d*)\.(\d*)\\overline\s*\{\s*(\d+)\s*\}$")
_CURRENCY_RE = re.compile(r"\\\$|[€£¥₹]|\b(?:USD|US\$)\b")
_CHOICES_RE = re.compile(
    r"\\(?:text|textbf|textrm|mathrm|mathbf)\s*\{\s*(\(?[A-Z]\)?(?:\s*(?:,\s*and|,|and)\s*\(?[A-Z]\)?)*)\s*\}"
)
_TRAILING_PUNCT_RE = re.compile(r"[.,;:]+$")
_LEADING_EQ_RE = re.compile(r"^[:=]\s*")
_WHITESPACE_RE = re.compile(r"\s+")
_PERCENT_RE = re.compile(r"\s*\\?%$")
_SIMPLE_NUMBER_RE = re.compile(r"-?\d+(?:\.\d+)?")
_HEDGE_RE = re.compile(r"^(?:about|approximately|approx\.?|around|\\approx|~)\s*", re.IGNORECASE)
_DIGIT_RE = re.compile(r"\d")
_OPERATOR_TAIL_RE = re.compile(r"[-+*/^(]\s*[\d(\\{]|[!^{]")
_EXPRESSION_LEAD_RE = re.compile(r"(?:[({^*/+\-]|\\[A-Za-z]+)\s*$")  # "\15" is a typo for "\$15"
_DANGLING_OPERATOR_RE = re.compile(r"[-+*/=^_]\s*$")
_NUMBER_DEGREES_RE = re.compile(r"\d\s*\\?(?:text\{\s*)?degrees?\}?$")
_MATHY_START_RE = re.compile(r"[\\\d\-+(\[{.|]")
_BASE_NUMERAL_RE = re.compile(r"([0-9A-Za-z]+)_\s*\{?\s*(\d{1,2})\s*\}?")
_DEGREE_RE = re.compile(r"\^\s*\{?\s*\\circ\s*\}?")
_DEGREE_WORDS_RE = re.compile(r"\s*\\?(?:text\{\s*)?degrees?\}?$")


def normalize_answer(answer: str, dataset_or_mode: str) -> str:
    """Canonical text of an answer, applied alike to gold answers and extracted ones.

    Removes what never changes the value: math delimiters, bold, ``\\boxed``, trailing punctuation,
    spacing commands, thousands separators, currency signs, ``\\text{}`` units after a value,
    leading zeros (``016`` → ``16``, as competition answers are written). Rewrites what math-verify
    mis-parses: unicode operators, ``\\mathrm{e}`` (parsed as a truncated string otherwise),
    repeating decimals ``0.\\overline{3}`` (→ ``\\frac{1}{3}``), numerals in another base
    (``204_5`` → ``54``), multiple-choice letters (``\\text{A, D}`` → ``A,D``).
    """
    mode = dataset_or_mode if dataset_or_mode in ("numeric", "latex") else answer_mode(dataset_or_mode)
    if _SIMPLE_NUMBER_RE.fullmatch(answer):  # the common case, and nothing below would change it but this
        return _LEADING_ZEROS_RE.sub("", answer)
    s = _UNICODE_RE.sub(lambda m: _UNICODE[m.group(0)], answer)
    s = _strip_wrappers(s)
    s = _THOUSANDS_LATEX_RE.sub("", s)
    s = _SPACING_RE.sub(" ", s)
    s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    s = _MATHRM_CONST_RE.sub(lambda m: m.group(1), s)
    s = _CURRENCY_RE.sub("", s)
    if mode == "numeric":
        s = s.replace("$", "")
        s = _THOUSANDS_RE.sub("", s)
    s = _WHITESPACE_RE.sub(" ", s).strip()
    s = _strip_units(s)
    s = _strip_wrappers(s)
    if _WHOLE_THOUSANDS_RE.fullmatch(s):
        s = s.replace(",", "")
    s = _LEADING_ZEROS_RE.sub("", s)
    s = _repeating_decimal(s)
    s = _base_numeral(s)
    s = _choices(s)
    if mode == "numeric":
        s = _PERCENT_RE.sub("", s)
        s = _DEGREE_RE.sub("", s)
    return s


def _strip_wrappers(s: str) -> str:
    """Peel delimiters that wrap the whole answer, repeatedly: ``$..$``, ``\\(..\\)``, ``\\[..\\]``,
    ``**..**``, ``\\boxed{..}``, a trailing full stop or comma, a leading "=" or ":"."""
    previous = None
    while s != previous:
        previous = s
        s = s.strip().strip("*").strip()
        s = _TRAILING_PUNCT_RE.sub("", s).strip()
        s = _LEADING_EQ_RE.sub("", s)
        for opener, closer in (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]")):
            if len(s) >= len(opener) + len(closer) and s.startswith(opener) and s.endswith(closer):
                inner = s[len(opener) : len(s) - len(closer)]
                bare = inner.replace("\\$", "")  # an escaped dollar is currency, not a delimiter
                if opener not in bare and closer not in bare and not inner.endswith("\\"):
                    s = inner.strip()
                    break
        match = BOX_RE.match(s)
        if match:
            span = box_span(s, match.end())
            if span is not None and span[1] == len(s):
                s = span[0]
    return s


def _strip_units(s: str) -> str:
    """Drop ``\\text{ cm}``-style units (and ``^2``) that follow a value, and a trailing "degrees"."""
    if len(s) > 500:  # not an answer anyone wrote by hand; keep the regex work bounded
        return s
    previous = None
    while s != previous:
        previous = s
        match = _TEXT_UNIT_RE.match(s)
        if match and not _DANGLING_OPERATOR_RE.search(match.group("math")):
            s = match.group("math").strip()
        s = _DEGREE_WORDS_RE.sub("", s) if _NUMBER_DEGREES_RE.search(s) else s
    return s


def _base_numeral(s: str) -> str:
    """``204_5`` → ``54``: a numeral in another base is that number. math-verify drops the
    subscript, so ``40_9`` (36) would "equal" ``40_7`` (28)."""
    match = _BASE_NUMERAL_RE.fullmatch(s)
    if match is None:
        return s
    digits, base = match.group(1), int(match.group(2))
    if not 2 <= base <= 36:
        return s
    try:
        return str(int(digits, base))
    except ValueError:  # "x_2": not a numeral
        return s


def _choices(s: str) -> str:
    """``\\text{(C)}`` → ``C``, ``\\text{A, D}`` → ``A,D``: multiple-choice letters, which math-verify
    otherwise reads as one symbol ``a,d`` that never equals the set ``{a, d}``."""
    match = _CHOICES_RE.fullmatch(s)
    if match is None:
        return s
    return ",".join(re.findall(r"[A-Z]", match.group(1)))


def _repeating_decimal(s: str) -> str:
    """``0.1\\overline{6}`` → ``\\frac{1}{6}``: math-verify cannot parse ``\\overline``."""
    match = _REPEATING_RE.match(s)
    if not match:
        return s
    sign, whole, fixed, repeat = match.groups()
    numerator = int(fixed + repeat) - int(fixed or "0")
    denominator = 10 ** len(fixed) * (10 ** len(repeat) - 1)
    value = int(whole or "0") + Fraction(numerator, denominator)
    if sign:
        value = -value
    if value.denominator == 1:
        return str(value.numerator)
    prefix = "-" if value < 0 else ""
    return f"{prefix}\\frac{{{abs(value.numerator)}}}{{{value.denominator}}}"


def _numeric_answer(s: str, *, lead_words: int | None) -> str | None:
    """Numeric mode: the number an answer states ("18 apples" → ``18``; "48 + 24 = 72" → ``72``).

    ``lead_words`` bounds the words allowed before the number ("the answer is *therefore* 18"), so
    an "A:" line that opens a whole solution is not mistaken for an answer; ``None``: no bound
    (``\\boxed``, ``####``). An unevaluated expression ("48 + 24", ``\\frac{3}{4}``) is kept whole for
    the symbolic checker.
    """
    s = s.strip()
    if "=" in s:
        s = s.rsplit("=", 1)[1].strip()
    s = _HEDGE_RE.sub("", s)
    frac = _FRAC_NUMBER_RE.match(s)
    if frac and not s[frac.end() :].strip(" .").startswith(("+", "-", "*", "/", "^", "\\")):
        return _WHITESPACE_RE.sub("", frac.group(0))
    match = _NUMBER_RE.search(s)
    if match is None:
        return s if (lead_words is None and s) else None
    lead = s[: match.start()]
    if lead_words is not None and (len(lead.split()) > lead_words or _DIGIT_RE.search(lead)):
        return None
    tail = s[match.end() :].strip()
    if _EXPRESSION_LEAD_RE.search(lead) or (tail and _OPERATOR_TAIL_RE.match(tail)):
        return s  # an expression such as "48 + 24" or "(10^{10})!": the symbolic checker decides
    return _canonical_number_text(match.group(0))


def _canonical_number_text(token: str) -> str:
    token = _WHITESPACE_RE.sub("", token).replace(",", "")
    return _LEADING_ZEROS_RE.sub("", token)


# --------------------------------------------------------------------------- exact numbers


_INT_OR_DECIMAL_RE = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)")
_SLASH_FRACTION_RE = re.compile(r"([-+]?\d+)\s*/\s*(\d+)")
_LATEX_FRACTION_RE = re.compile(r"(-?)\\frac\s*(?:\{\s*(-?\d+)\s*\}|(\d))\s*(?:\{\s*(-?\d+)\s*\}|(\d))")


def as_number(s: str) -> tuple[Fraction, bool] | None:
    """``(exact value, written as a decimal)`` when ``s`` is a plain number — an integer, a decimal,
    ``a/b`` or ``\\frac{a}{b}`` — else ``None``. Lets the grader settle most answers without sympy."""
    s = s.strip()
    if _INT_OR_DECIMAL_RE.fullmatch(s):
        return Fraction(s.rstrip(".") or "0"), "." in s
    match = _SLASH_FRACTION_RE.fullmatch(s)
    if match and int(match.group(2)) != 0:
        return Fraction(int(match.group(1)), int(match.group(2))), False
    match = _LATEX_FRACTION_RE.fullmatch(s)
    if match:
        sign, n1, n2, d1, d2 = match.groups()
        numerator, denominator = int(n1 or n2), int(d1 or d2)
        if denominator == 0:
            return None
        value = Fraction(numerator, denominator)
        return (-value if sign else value), False
    return None
