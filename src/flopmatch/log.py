"""One logging path. Library modules log with ``log = logging.getLogger(__name__)``, so every record is
under the ``"flopmatch"`` logger; they never ``print``, ``warnings.warn`` or write to a console (the CLI
and benchmarks do). Bars are not logs: they go through :mod:`flopmatch.progress`. Nor is a study's
narration (a line per stage and job, what ``flopmatch study`` shows): it is the study's output, a
``log`` callable that :func:`flopmatch.study.run_study` is given (``print`` unless told otherwise), handed
down to its stages as ``StudyContext.log``.

The CLI calls :func:`configure` once per command (``flopmatch.cli._app``): records of ``WARNING`` and
up are written to stderr as their plain message (what Python printed for them before any handler
existed), and ``FLOPMATCH_LOG_LEVEL=info`` (or ``debug``) shows more. A program that uses the Python
API configures logging its own way; nothing here runs on import.
"""

from __future__ import annotations

import logging
import os
import sys

ROOT = "flopmatch"
LEVEL_ENV = "FLOPMATCH_LOG_LEVEL"


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is when a record comes (test runners swap it per command)."""

    def __init__(self) -> None:
        super().__init__()

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, _value) -> None:
        pass


def level_from_env(default: int = logging.WARNING) -> int:
    """The level ``$FLOPMATCH_LOG_LEVEL`` names (debug, info, warning, error), else ``default``."""
    name = os.environ.get(LEVEL_ENV, "").strip().upper()
    level = logging.getLevelName(name) if name else default
    return level if isinstance(level, int) else default


def configure(level: int | None = None) -> logging.Handler:
    """Send flopmatch's log records to stderr (once: a second call only sets the level again).

    ``level`` defaults to :func:`level_from_env`. The handler sits on the ``"flopmatch"`` logger, which
    still propagates, so a handler someone put on the root logger sees the records too.
    """
    level = level_from_env() if level is None else level
    logger = logging.getLogger(ROOT)
    handler = next((h for h in logger.handlers if isinstance(h, _StderrHandler)), None)
    if handler is None:
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
    handler.setLevel(level)
    if level < logging.WARNING:  # below the root's default, the records must be let through
        logger.setLevel(level)
    return handler


__all__ = ["LEVEL_ENV", "ROOT", "configure", "level_from_env"]
