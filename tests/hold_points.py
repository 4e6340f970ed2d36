"""Kill a child process at a known point, not after a race with its speed.

``hold_env(target, marker)`` gives a child the environment that makes it stop for good right after the
first call of ``target`` (``"module:function"``) returns, once it has written ``marker``
(``hold_site/sitecustomize.py`` does the wrapping). ``wait_for_hold`` waits for the marker; the test then
SIGKILLs the child, which is known to sit between two units of work.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

HOLD_SITE = Path(__file__).resolve().parent / "hold_site"


def hold_env(target: str, marker: Path, env: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ if env is None else env)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(HOLD_SITE), env.get("PYTHONPATH", "")) if p)
    env["FLOPMATCH_TEST_HOLD"] = f"{target}:{marker}"
    return env


def wait_for_hold(
    process: subprocess.Popen, marker: Path, *, timeout: float, log: Path | None = None
) -> None:
    """Return once the child holds at its kill point; fail if it exits first or never gets there.

    ``timeout`` is a generous bound for a child that hangs, not a speed requirement. ``log`` is the
    file the child's output goes to (a pipe could fill up and stall the child), quoted on failure."""
    deadline = time.monotonic() + timeout
    while not marker.exists():
        if process.poll() is not None:
            text = log.read_text(errors="replace")[-4000:] if log and log.exists() else ""
            raise AssertionError(
                f"the child exited (code {process.returncode}) before its kill point:\n{text}"
            )
        if time.monotonic() > deadline:
            raise AssertionError(f"the child did not reach its kill point within {timeout:.0f} s")
        time.sleep(0.05)
