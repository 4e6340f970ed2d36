"""Session-wide set-up for every test: a private flopmatch cache, and the skip allow-list gate.

The cache: tests never read or write the user's ``~/.cache/flopmatch``. ``$FLOPMATCH_CACHE`` points at
one folder in the session's pytest temporary directory (toy models are pretrained into it on first use,
a few minutes, once per session); it is removed at the end, and pytest's rotation of old temporary
directories removes what a killed session left. ``FLOPMATCH_TEST_CACHE=/some/dir`` keeps a test cache
between sessions instead (it is never the default cache unless you name it).

The gate: see ``skip_gate.py``. The default toy models pretrain in the background while other tests
run: see ``toy_prefetch.py``. Tests marked ``extended`` are left out unless ``--extended`` is given: see
``extended_tests.py``. Studies several modules check run once per session: ``shared_studies.py``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

from extended_tests import add_option, deselect_extended, register_marker
from shared_studies import seeds_study  # noqa: F401 - a session fixture for every module
from skip_gate import SkipGate
from toy_prefetch import ToyPrefetch

CACHE_ENV = "FLOPMATCH_CACHE"
KEEP_ENV = "FLOPMATCH_TEST_CACHE"
_SAVED = pytest.StashKey[tuple[Path, bool, "str | None"]]()
_PREFETCH = "flopmatch-toy-prefetch"


def pytest_addoption(parser: pytest.Parser) -> None:
    add_option(parser)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    deselect_extended(config, items)  # before the prefetch plugin (trylast) looks at what will run


@pytest.hookimpl(trylast=True)  # after pytest's tmp_path plugin has set up the session's directory
def pytest_configure(config: pytest.Config) -> None:
    register_marker(config)
    config.pluginmanager.register(SkipGate(), "flopmatch-skip-gate")
    kept = os.environ.get(KEEP_ENV)
    if kept:
        root = Path(kept)
    elif hasattr(config, "_tmp_path_factory"):  # pytest's own (rotated) temporary directories
        root = config._tmp_path_factory.getbasetemp() / "flopmatch-cache"
    else:  # tmp_path disabled (-p no:tmpdir)
        root = Path(tempfile.mkdtemp(prefix="flopmatch-test-cache-"))
    root.mkdir(parents=True, exist_ok=True)
    config.stash[_SAVED] = (root, not kept, os.environ.get(CACHE_ENV))
    os.environ[CACHE_ENV] = str(root)  # subprocesses (CLI, Ray, vLLM workers) inherit it
    config.pluginmanager.register(ToyPrefetch(root), _PREFETCH)


def pytest_unconfigure(config: pytest.Config) -> None:
    saved = config.stash.get(_SAVED, None)
    if saved is None:
        return
    root, temporary, before = saved
    prefetch = config.pluginmanager.get_plugin(_PREFETCH)
    if prefetch is not None:  # normally stopped at session finish already
        prefetch.stop()
    if before is None:
        os.environ.pop(CACHE_ENV, None)
    else:
        os.environ[CACHE_ENV] = before
    if temporary:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(autouse=True)
def _progress_switches_stay_in_their_test(monkeypatch: pytest.MonkeyPatch) -> None:
    """``--quiet`` switches bars off for the whole process (on purpose: workers inherit it); a test that
    runs a quiet command in-process must not silence the tests after it."""
    from flopmatch.progress import LIBRARY_SWITCHES, QUIET_ENV

    for name in (QUIET_ENV, *LIBRARY_SWITCHES):
        present = name in os.environ
        monkeypatch.setenv(name, os.environ.get(name, ""))  # recorded, so undone after the test
        if not present:
            monkeypatch.delenv(name)
