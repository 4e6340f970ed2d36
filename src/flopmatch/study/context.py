"""What every stage gets: the ``StudyContext`` (config, run directory, logger) and the error a stage
raises when the study cannot go on. The fingerprints that identify a stage's outputs are in
:mod:`flopmatch.fingerprints`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from flopmatch.errors import FlopmatchError
from flopmatch.store import RunDir, queries
from flopmatch.study.config import StudyConfig

PROBLEM_ROLES: tuple[str, ...] = ("sample", "validation", "test")


class StudyError(FlopmatchError, RuntimeError):
    """A study cannot go on (a stage's inputs are missing, a stage failed); the message says what to do.
    The CLI exits with 1 for it (2 is bad input, such as a config error)."""

    exit_code = 1


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
    return PromptConfig.model_validate({**base.model_dump(), **config.sampling.prompt.model_dump(exclude_unset=True)})
