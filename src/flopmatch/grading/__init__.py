"""Grading: final-answer extraction and equivalence checking that is right, never hangs, and scales.

Public API::

    from flopmatch.grading import Grade, extract_answer, grade, grade_many, grade_run

* :func:`extract_answer` — the final answer of a response (pure, fast).
* :func:`grade` / :func:`grade_many` — verdicts (``correct | wrong | no_answer | timeout | error``),
  with math-verify in watched worker processes.
* :func:`grade_run` — grade every model's samples of a run directory into ``grades/<model>.parquet``.
"""

from flopmatch.grading.core import STATUSES, Grade, grade, grade_many
from flopmatch.grading.extract import answer_mode, extract_answer, last_boxed, normalize_answer
from flopmatch.grading.pool import WatchdogPool
from flopmatch.grading.run import GRADE_SCHEMA, GRADER_VERSION, grade_run

__all__ = [
    "GRADE_SCHEMA",
    "GRADER_VERSION",
    "STATUSES",
    "Grade",
    "WatchdogPool",
    "answer_mode",
    "extract_answer",
    "grade",
    "grade_many",
    "grade_run",
    "last_boxed",
    "normalize_answer",
]
