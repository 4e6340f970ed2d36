"""The test suite's own guards: the skip allow-list gate (skip_gate.py), the private session cache, and CI's
data check (.ci/run)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

from offline_models import SKIP_REASON
from skip_gate import ALLOWLIST, read_allowlist, unexpected_skips

TESTS = Path(__file__).resolve().parent


def test_allowlist_entries_are_substrings_and_comments_are_ignored(tmp_path):
    path = tmp_path / "allow.txt"
    path.write_text("# a comment\n\n  offline parts not installed  \n#another\nno GPU here\n")
    assert read_allowlist(path) == ["offline parts not installed", "no GPU here"]
    reasons = [
        "offline parts not installed (make offline-models)",
        "shared data not found at /x",
        "no GPU here",
        "shared data not found at /x",  # reported once
        "ProcessBench data not found",
    ]
    assert unexpected_skips(reasons, read_allowlist(path)) == [
        "shared data not found at /x",
        "ProcessBench data not found",
    ]
    assert unexpected_skips(reasons, []) == [
        "offline parts not installed (make offline-models)",
        "shared data not found at /x",
        "no GPU here",
        "ProcessBench data not found",
    ]
    assert unexpected_skips([], ["anything"]) == []


def test_the_repository_allowlist_holds_only_the_offline_models_reason():
    allowed = read_allowlist(ALLOWLIST)
    assert len(allowed) == 1 and allowed[0] in SKIP_REASON
    assert unexpected_skips([f"shared data not found at {TESTS}"], allowed)  # data skips are not allowed


def _run_pytest(tmp_path: Path, test_source: str) -> subprocess.CompletedProcess:
    """A real pytest session in its own folder, with the gate registered as the repository's conftest does."""
    (tmp_path / "allow.txt").write_text("# test allow-list\nparts not installed\n")
    (tmp_path / "conftest.py").write_text(
        textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(TESTS)!r})
        from pathlib import Path
        from skip_gate import SkipGate

        def pytest_configure(config):
            config.pluginmanager.register(SkipGate(Path(__file__).with_name("allow.txt")), "gate")
    """)
    )
    (tmp_path / "test_case.py").write_text(textwrap.dedent(test_source))
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-ra", "-p", "no:cacheprovider", str(tmp_path)],
                          cwd=tmp_path, capture_output=True, text=True, env=env, timeout=300)  # fmt: skip


def test_a_run_with_only_allowed_skips_passes(tmp_path):
    done = _run_pytest(
        tmp_path,
        """
        import pytest

        def test_ok():
            pass

        @pytest.mark.skipif(True, reason="offline parts not installed (make offline-models)")
        def test_allowed():
            pass

        @pytest.mark.xfail(reason="an expected failure is not a skip", strict=True)
        def test_xfail():
            assert False
    """,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SKIPPED [1]" in done.stdout and "offline parts not installed" in done.stdout  # reasons printed
    assert "skips not in the allow-list" not in done.stdout


def test_a_skip_outside_the_allowlist_fails_the_run_and_says_why(tmp_path):
    done = _run_pytest(
        tmp_path,
        """
        import pytest

        def test_ok():
            pass

        def test_hidden_breakage():
            pytest.skip("shared data not found at /nowhere")
    """,
    )
    assert done.returncode == 1, done.stdout + done.stderr
    assert "skips not in the allow-list" in done.stdout and "shared data not found at /nowhere" in done.stdout
    assert "allow.txt" in done.stdout
    assert "1 passed, 1 skipped" in done.stdout


def test_a_module_level_skip_is_gated_too(tmp_path):
    done = _run_pytest(
        tmp_path,
        """
        import pytest

        pytest.skip("vllm not importable", allow_module_level=True)
    """,
    )
    assert done.returncode == 1, done.stdout + done.stderr
    assert "vllm not importable" in done.stdout


def test_a_failing_run_keeps_its_own_exit_code(tmp_path):
    done = _run_pytest(
        tmp_path,
        """
        import pytest

        def test_broken():
            pytest.fail("broken")

        def test_skipped():
            pytest.skip("no reason anyone agreed to")
    """,
    )
    assert done.returncode == 1 and "skips not in the allow-list" in done.stdout


def test_the_session_uses_a_private_cache():
    """Tests never touch the user's ~/.cache/flopmatch: both caches resolve under the session's folder."""
    from flopmatch import models
    from flopmatch.toyworld.models import cache_root

    root = Path(os.environ["FLOPMATCH_CACHE"]).resolve()
    user = (Path.home() / ".cache" / "flopmatch").resolve()
    assert root != user and user not in root.parents
    assert models.cache_dir().resolve().parent == root
    assert cache_root().resolve().parent == root


def test_make_test_fails_when_no_test_ran():
    """pytest exits 5 when it ran nothing; `make test` turns that into a failure (checked in its recipe)."""
    recipe = (TESTS.parent / "Makefile").read_text().split("\ntest:", 1)[1].split("\n\n", 1)[0]
    assert "-eq 5" in recipe and "exit 1" in recipe


def _ci_copy(tmp_path: Path) -> Path:
    """The CI script in a stand-in checkout whose `make test` only says it ran."""
    repo = tmp_path / "repo"
    (repo / ".ci").mkdir(parents=True)
    (repo / ".ci" / "run").write_text((TESTS.parent / ".ci" / "run").read_text())
    (repo / ".ci" / "run").chmod(0o755)
    (repo / "Makefile").write_text("test:\n\t@echo make-test-ran\n")
    return repo


def test_ci_refuses_to_run_without_the_shared_data(tmp_path):
    repo = _ci_copy(tmp_path)
    done = subprocess.run([str(repo / ".ci" / "run")], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "make-test-ran" not in done.stdout
    assert (
        "shared benchmark data is missing" in done.stderr and str(tmp_path / "shared" / "data") in done.stderr
    )


def test_ci_runs_make_test_when_the_shared_data_is_there(tmp_path):
    repo = _ci_copy(tmp_path)
    data = tmp_path / "shared" / "data"
    for folder in ("gsm8k", "math", "processbench"):
        (data / folder).mkdir(parents=True)
    (data / "gsm8k" / "test.jsonl").write_text("")
    done = subprocess.run([str(repo / ".ci" / "run")], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "gsm8k/train.jsonl" in done.stderr  # every part is checked
    (data / "gsm8k" / "train.jsonl").write_text("")
    done = subprocess.run([str(repo / ".ci" / "run")], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "make-test-ran" in done.stdout, done.stderr
