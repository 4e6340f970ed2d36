"""A test run fails on a skip nobody agreed to.

A skip is how a test says "this cannot run here". Used for a broken install or missing data it turns a
failure into a green run, so every skip reason must contain one of the lines of ``skip_allowlist.txt``
(a plain substring; blank lines and ``#`` comments are ignored). Skip reasons are printed (``-ra``) and
any other reason sets the exit status to 1, with the reasons and the allow-list named in the summary.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import pytest

ALLOWLIST = Path(__file__).with_name("skip_allowlist.txt")


def read_allowlist(path: Path) -> list[str]:
    """The allow-list's entries: one per line, without blank lines and ``#`` comment lines."""
    lines = (line.strip() for line in Path(path).read_text().splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def unexpected_skips(reasons: Iterable[str], allowed: Iterable[str]) -> list[str]:
    """The distinct reasons (in first-seen order) that contain none of the allowed substrings."""
    allowed = list(allowed)
    out: list[str] = []
    for reason in reasons:
        if reason not in out and not any(entry in reason for entry in allowed):
            out.append(reason)
    return out


def skip_reason(report: pytest.TestReport | pytest.CollectReport) -> str | None:
    """The reason of a skipped test or module; None for anything else (an expected failure included)."""
    if not report.skipped or hasattr(report, "wasxfail"):
        return None
    longrepr = report.longrepr
    reason = longrepr[2] if isinstance(longrepr, tuple) and len(longrepr) == 3 else str(longrepr)
    return reason.removeprefix("Skipped: ")


class SkipGate:
    """The pytest plugin: records skip reasons, fails the session on an unexpected one."""

    def __init__(self, allowlist: Path = ALLOWLIST):
        self.allowlist = allowlist
        self.allowed = read_allowlist(allowlist)
        self.reasons: list[str] = []
        self.unexpected: list[str] = []

    def _record(self, report) -> None:
        reason = skip_reason(report)
        if reason is not None:
            self.reasons.append(reason)

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        self._record(report)

    def pytest_collectreport(self, report: pytest.CollectReport) -> None:
        self._record(report)

    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        self.unexpected = unexpected_skips(self.reasons, self.allowed)
        # a run that passed, or ran nothing because a whole module skipped, fails; a worse status stays
        if self.unexpected and session.exitstatus in (pytest.ExitCode.OK, pytest.ExitCode.NO_TESTS_COLLECTED):
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

    def pytest_terminal_summary(self, terminalreporter) -> None:
        if not self.unexpected:
            return
        terminalreporter.section("skips not in the allow-list", sep="=", red=True, bold=True)
        for reason in self.unexpected:
            terminalreporter.line(f"  {reason}")
        terminalreporter.line(
            f"A skip must not hide a broken install or missing data: fix the cause, or add the reason to "
            f"{self.allowlist} if skipping is right on every machine that runs this suite."
        )
