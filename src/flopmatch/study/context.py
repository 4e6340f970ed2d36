"""What every stage gets: the ``StudyContext`` (config, run directory, logger), the error a stage
raises when the study cannot go on, and the fingerprints that identify a stage's outputs.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flopmatch.errors import FlopmatchError
from flopmatch.store import RunDir, config_hash, queries
from flopmatch.study.config import StudyConfig

PROBLEM_ROLES: tuple[str, ...] = ("sample", "validation", "test")


class StudyError(FlopmatchError, RuntimeError):
    """A study cannot go on (a stage's inputs are missing, a stage failed); the message says what to do."""


@dataclass
class StudyContext:
    """What every stage gets: the config, the run directory and a logger."""

    config: StudyConfig
    run: RunDir
    log: Any  # Callable[[str], None]
    progress: bool = True

    def problems(self, role: str) -> list[Any]:
        return queries.problems_by_role(self.run, role)

    def roles(self) -> dict[str, Any]:
        roles = queries.read_roles(self.run)
        if not roles:
            raise StudyError(f"{self.run.roles_path}: missing; the plan stage writes it (run the study without --only)")
        return roles

    def plan(self) -> Any:
        plan = queries.read_plan(self.run, required=False)
        if plan is None:
            raise StudyError(f"{self.run.plan_path}: no plan; run the plan stage first")
        return plan

    def budgets(self) -> list[tuple[int, int]]:
        return [(int(b.se_samples), int(b.wc_samples)) for b in self.plan().budgets]


#: Files up to this size are fingerprinted by content, bigger ones (model weights) by size and mtime.
CONTENT_HASH_LIMIT = 16 << 20


def fingerprint(paths: Sequence[Path], root: Path) -> str:
    """Identity of a stage's outputs: every file under ``paths`` by its name relative to ``root`` (so a
    run directory can be moved) and its content (size and modification time when large). Rewriting
    identical tables does not make later stages rerun; any real change does."""
    entries: list[tuple[str, str]] = []
    for path in paths:
        if path.is_file():
            files = [path]
        elif path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))
        else:
            continue
        for file in files:
            entries.append((os.path.relpath(file, root), file_identity(file)))
    return config_hash(entries)


def file_identity(path: Path) -> str:
    stat = path.stat()
    if stat.st_size > CONTENT_HASH_LIMIT:
        return f"{stat.st_size}:{stat.st_mtime_ns}"
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def sampling_settings(config: StudyConfig, problems: list[Any]) -> tuple[Any, Any]:
    """The study's SamplingParams and prompt (None: each dataset's default); the pilot stage uses the same."""
    prompt = (
        _prompt_config(config, problems[0].dataset) if config.sampling.prompt else None
    )  # None: per dataset
    return config.sampling.params(), prompt


def _prompt_config(config: StudyConfig, dataset: str) -> Any:
    """The dataset's default prompt, with the study's ``sampling.prompt`` overrides."""
    from flopmatch.prompts import PromptConfig, default_prompt_config

    base = default_prompt_config(dataset)
    if not config.sampling.prompt:
        return base
    return PromptConfig.model_validate({**base.model_dump(), **config.sampling.prompt})
