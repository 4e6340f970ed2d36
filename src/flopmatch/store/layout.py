"""The run directory's layout: where each stage's files live (paths only; reading and writing them is
:mod:`flopmatch.store.io` and :mod:`flopmatch.store.queries`, stage state :mod:`flopmatch.store.state`).

    runs/<name>/
      study.yaml                     resolved config, frozen
      plan.json
      roles.json                     which model plays WC and SE (label, key, params)
      state.json                     per-stage config hash and completion time; sub-stage jobs
      problems/<split>.parquet
      samples/<model>/part-*.parquet one row per sample
      grades/<model>.parquet
      judgments/<model>.parquet      judgments/human/<model>.parquet: people's labels
      ledger.parquet
      sft/<name>/                    HF dataset on disk
      models/<name>/                 checkpoints
      evals/<name>.parquet
      metrics/                       the analysis's tables (summary, curves, cost, ...) and figures
      report/index.html, report.md, figures/
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from flopmatch.errors import FlopmatchError
from flopmatch.store.io import model_key, shard_paths
from flopmatch.store.state import RunState

ROLES_FILE = "roles.json"  # which model plays WC and SE (written by the plan stage)


@dataclass(frozen=True)
class RunDir(RunState):
    """Paths of one run, and (from :class:`RunState`) its per-stage and per-job completion state."""

    root: Path

    def __init__(self, root: str | os.PathLike):
        object.__setattr__(self, "root", Path(root))

    def __fspath__(self) -> str:
        # Lets a RunDir go wherever a path does, including RunDir(RunDir(...)) and Path(run).
        return str(self.root)

    def ensure(self) -> RunDir:
        self.root.mkdir(parents=True, exist_ok=True)
        return self

    # files
    @property
    def study_path(self) -> Path:
        return self.root / "study.yaml"

    @property
    def plan_path(self) -> Path:
        return self.root / "plan.json"

    @property
    def roles_path(self) -> Path:
        return self.root / ROLES_FILE

    @property
    def state_path(self) -> Path:
        return self.root / "state.json"

    @property
    def ledger_path(self) -> Path:
        return self.root / "ledger.parquet"

    @property
    def problems_dir(self) -> Path:
        return self.root / "problems"

    def problems_path(self, split: str) -> Path:
        return self.problems_dir / f"{split}.parquet"

    def samples_dir(self, model: str) -> Path:
        return self.root / "samples" / model_key(model)

    def allocation_journal_path(self, model: str) -> Path:
        """The round journal of a model sampled by an allocation policy (``flopmatch.allocation_run``),
        beside its samples; absent for plain S-per-problem sampling."""
        return self.samples_dir(model) / "allocation.json"

    @property
    def grades_dir(self) -> Path:
        return self.root / "grades"

    def grades_path(self, model: str) -> Path:
        return self.grades_dir / f"{model_key(model)}.parquet"

    def judgments_path(self, model: str) -> Path:
        return self.root / "judgments" / f"{model_key(model)}.parquet"

    def human_labels_path(self, model: str) -> Path:
        """Where imported human verdicts of a model live (beside, not inside, the judge's table)."""
        return self.root / "judgments" / "human" / f"{model_key(model)}.parquet"

    def sft_dir(self, name: str) -> Path:
        return self.root / "sft" / name

    def model_dir(self, name: str) -> Path:
        return self.root / "models" / name

    def eval_path(self, name: str) -> Path:
        return self.root / "evals" / f"{name}.parquet"

    @property
    def metrics_dir(self) -> Path:
        return self.root / "metrics"

    @property
    def cost_path(self) -> Path:
        """What each plan budget cost per role (written by the analysis, read by the report)."""
        return self.metrics_dir / "cost.parquet"

    @property
    def report_dir(self) -> Path:
        return self.root / "report"

    def sampled_models(self) -> list[str]:
        """Directory names under samples/ that hold at least one shard."""
        base = self.root / "samples"
        if not base.is_dir():
            return []
        return sorted(p.name for p in base.iterdir() if p.is_dir() and shard_paths(p))


class RunNotFound(FlopmatchError, FileNotFoundError):
    """A command or reader was pointed at a run directory that does not exist."""


def as_run(run_dir: str | os.PathLike | RunDir) -> RunDir:
    """``run_dir`` as a :class:`RunDir` (a path, or a RunDir passed through): what every reader and writer
    of a run accepts."""
    return run_dir if isinstance(run_dir, RunDir) else RunDir(run_dir)
