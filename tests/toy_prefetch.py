"""Pretrain the default toy models in the background while the tests that do not need them run.

The default toy models (``toyworld-wc`` and ``toyworld-se``) take minutes to pretrain on one core, once
per session (into the session's private cache). Pretraining uses one torch thread, and most tests do too, so on a 2-core machine the second core sits idle while the suite runs.
When a session selects tests of :data:`TOY_MODEL_MODULES`, :class:`ToyPrefetch` therefore

- starts the pretraining of the models they use at once, one child process per model, and
- moves those modules to the end of the run (their order otherwise unchanged),

so the models are ready, or nearly, when the first test asks for them. Nothing is skipped or trusted:
``toyworld.ensure_model`` takes the same lock file, so a test that asks while a child trains waits for it
and then finds the finished model, and one whose child failed trains the model itself (and fails as it
would have). A module missing from the list only loses the head start. Children still running at the end
of the session are killed (only they: their own process groups).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

#: The test modules that use default pretrained toy models (by name, through the CLI or a study), and which.
TOY_MODEL_MODULES: dict[str, tuple[str, ...]] = {
    "test_allocation.py": ("wc",),
    "test_allocation_study.py": ("wc", "se"),
    "test_report.py": ("wc", "se"),
    "test_study.py": ("wc", "se"),
    "test_toyworld.py": ("wc", "se"),
}

_CHILD = """
import sys
from flopmatch.toyworld import ensure_model
ensure_model(sys.argv[1], progress=False)
"""


def uses_toy_models(item: pytest.Item) -> bool:
    return item.path.name in TOY_MODEL_MODULES


def toy_models_last(items: list[pytest.Item]) -> list[pytest.Item]:
    """``items`` with those of :data:`TOY_MODEL_MODULES` moved to the end, both groups in their order."""
    return [i for i in items if not uses_toy_models(i)] + [i for i in items if uses_toy_models(i)]


def models_needed(items: list[pytest.Item]) -> list[str]:
    """The default toy models the selected tests use, WC first (the one the most tests need)."""
    needed = {size for item in items for size in TOY_MODEL_MODULES.get(item.path.name, ())}
    return [size for size in ("wc", "se") if size in needed]


class ToyPrefetch:
    """The pytest plugin (registered in conftest): reorders the selected tests and starts the children."""

    def __init__(self, cache_root: Path):
        self.cache_root = cache_root
        self.children: list[subprocess.Popen] = []

    @pytest.hookimpl(trylast=True)  # after -k/-m/--deselect have removed what will not run
    def pytest_collection_modifyitems(self, config: pytest.Config, items: list[pytest.Item]) -> None:
        sizes = models_needed(items)
        if not sizes:
            return
        items[:] = toy_models_last(items)
        if not config.option.collectonly:
            self.start(sizes)

    def start(self, sizes: list[str]) -> None:
        """One child per model (each trains on one thread): on two cores WC and SE train side by side."""
        log_dir = self.cache_root / "prefetch-logs"
        log_dir.mkdir(parents=True, exist_ok=True)
        env = os.environ | {"OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
        for size in sizes:
            with open(log_dir / f"{size}.log", "wb") as log:
                self.children.append(subprocess.Popen([sys.executable, "-c", _CHILD, size], env=env, stdout=log,
                                                      stderr=subprocess.STDOUT, start_new_session=True))  # fmt: skip

    def stop(self) -> None:
        for child in self.children:
            if child.poll() is None:
                os.killpg(child.pid, signal.SIGKILL)
            child.wait()
        self.children.clear()

    def pytest_sessionfinish(self) -> None:
        self.stop()
