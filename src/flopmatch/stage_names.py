"""The names of a study's stages in pipeline order (imports no flopmatch module).

``flopmatch.study.registry`` holds one record per stage and refuses records that differ from this list;
the report orders its stage table by it without importing the study (whose report stage imports the
report).
"""

from __future__ import annotations

STAGE_NAMES: tuple[str, ...] = (
    "problems",
    "plan",
    "pilot",
    "sample",
    "grade",
    "judge",
    "analyze",
    "sft",
    "train",
    "eval",
    "report",
)
