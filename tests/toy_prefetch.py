"""Pretrain the default toy models in the background while the tests that do not need them run.

The default toy models (``toyworld-wc`` and ``toyworld-se``) take minutes to pretrain on one core, once
per session (into the session's private cache). Pretraining uses one torch thread, and most tests do too, so on a 2-core machine the second core sits idle while the suite runs.
When a session selects tests of :data:`TOY_MODEL_MODULES`, :class:`ToyPrefetch` therefore

- starts the pretraining of the models they use at once, one child process per model, and
- moves those modules to the end of the run (their order otherwise unchanged),

so the models are ready, or nearly, when the first test asks for them. The small toy models that modules
pretrain for themselves (:data:`OWN_TOY_MODELS`) go first in those children (on the core the main process
leaves idle most of the time) and their modules to the end too. Nothing is skipped or trusted:
``toyworld.ensure_model`` takes the same lock file, so a test that asks while a child trains waits for it
and then finds the finished model, and one whose child failed trains the model itself (and fails as it
would have). A module missing from the list only loses the head start. Children still running at the end
of the session are killed (only they: their own process groups).
"""

from __future__ import annotations

import json
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
    "test_workers.py": ("wc", "se"),  # through shared_studies.seeds_study, which test_study uses too
}

#: Test modules that pretrain small toy models of their own: model name -> the name of the module's
#: attribute that holds its ``toyworld_spec`` mapping (read from the collected module, so never out of date).
OWN_TOY_MODELS: dict[str, dict[str, str]] = {
    "test_advise.py": {"advise-wc": "TINY_WC", "advise-se": "TINY_SE"},
}

#: Pretrains the models named in argv[1], a JSON list of [name, spec or null (a default model)], in order.
_CHILD = """
import json, sys
from flopmatch.toyworld import ensure_model
from flopmatch.toyworld.models import toy_model_spec
for name, spec in json.loads(sys.argv[1]):
    ensure_model(name, spec=None if spec is None else toy_model_spec(spec), progress=False)
"""


def uses_toy_models(item: pytest.Item) -> bool:
    return item.path.name in TOY_MODEL_MODULES or item.path.name in OWN_TOY_MODELS


def toy_models_last(items: list[pytest.Item]) -> list[pytest.Item]:
    """``items`` with those of :data:`TOY_MODEL_MODULES` moved to the end, both groups in their order."""
    return [i for i in items if not uses_toy_models(i)] + [i for i in items if uses_toy_models(i)]


def models_needed(items: list[pytest.Item]) -> list[str]:
    """The default toy models the selected tests use, WC first (the one the most tests need)."""
    needed = {size for item in items for size in TOY_MODEL_MODULES.get(item.path.name, ())}
    return [size for size in ("wc", "se") if size in needed]


def own_models_needed(items: list[pytest.Item]) -> list[tuple[str, dict]]:
    """(name, spec) of the :data:`OWN_TOY_MODELS` of the selected tests' modules, in the order listed there;
    a spec the module no longer defines is left out (that model only loses the head start)."""
    found: dict[str, dict] = {}
    for item in items:
        for name, attribute in OWN_TOY_MODELS.get(item.path.name, {}).items():
            spec = getattr(getattr(item, "module", None), attribute, None)
            if isinstance(spec, dict):
                found.setdefault(name, spec)
    return list(found.items())


def chains(sizes: list[str], own: list[tuple[str, dict]]) -> list[list[tuple[str, dict | None]]]:
    """What each child pretrains, in order: one child per default model (one per core on two cores), the
    modules' own small models shared out among them, first (their modules run first of the moved ones)."""
    if not sizes:
        return [[model] for model in own]
    out: list[list[tuple[str, dict | None]]] = [[] for _ in sizes]
    for i, model in enumerate(own):
        out[i % len(out)].append(model)
    for chain, size in zip(out, sizes, strict=True):
        chain.append((size, None))
    return out


class ToyPrefetch:
    """The pytest plugin (registered in conftest): reorders the selected tests and starts the children."""

    def __init__(self, cache_root: Path):
        self.cache_root = cache_root
        self.children: list[subprocess.Popen] = []

    @pytest.hookimpl(trylast=True)  # after -k/-m/--deselect have removed what will not run
    def pytest_collection_modifyitems(self, config: pytest.Config, items: list[pytest.Item]) -> None:
        work = chains(models_needed(items), own_models_needed(items))
        if not work:
            return
        items[:] = toy_models_last(items)
        if not config.option.collectonly:
            self.start(work)

    def start(self, work: list[list[tuple[str, dict | None]]]) -> None:
        """One child per chain of models (each trains on one thread): on two cores WC and SE side by side."""
        log_dir = self.cache_root / "prefetch-logs"
        log_dir.mkdir(parents=True, exist_ok=True)
        env = os.environ | {"OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
        for chain in work:
            names = "+".join(name for name, _ in chain)
            with open(log_dir / f"{names}.log", "wb") as log:
                self.children.append(subprocess.Popen([sys.executable, "-c", _CHILD, json.dumps(chain)], env=env,
                                                      stdout=log, stderr=subprocess.STDOUT,
                                                      start_new_session=True))  # fmt: skip

    def stop(self) -> None:
        for child in self.children:
            if child.poll() is None:
                os.killpg(child.pid, signal.SIGKILL)
            child.wait()
        self.children.clear()

    def pytest_sessionfinish(self) -> None:
        self.stop()
