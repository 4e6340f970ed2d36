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
      models/<name>/                 checkpoints; models/trained.json: training job -> its model directory
      pilot/advice.json              the pilot stage's advice (and frontier plots)
      allocated/<policy>-b<S>/       an allocation policy's sample sets; allocated/summary.json lists them
      evals/<name>.parquet
      metrics/<table>.parquet        METRICS_TABLES: the analysis's (summary, curves, cost, ...), paradigms,
                                     comparisons; metrics/figures/*.png
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
ADVICE_FILE = "advice.json"  # the pilot stage's advice (flopmatch.advise), in pilot/
ALLOCATED_DIR = "allocated"  # allocated/<policy>-b<S>/: an allocation policy's sample sets (flopmatch.allocation_study)
#: The tables in metrics/, by name (``metrics/<name>.parquet``, some with a ``.md`` twin): the analysis's
#: (summary, curves, compute-matched gains, cost per budget, allocation tables), the eval stage's paradigm
#: results and the paired comparisons (flopmatch.comparisons); an advised run's pilot forecasts against what
#: was measured (pilot_vs_measured, the analysis's).
METRICS_TABLES = (
    "summary", "coverage_curve", "diversity_curve", "compute_matched", "cost", "allocation", "allocation_curve",
    "allocation_counts", "paradigms", "comparisons", "pilot_vs_measured",
)  # fmt: skip


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
        return self.samples_root / model_key(model)

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

    @property
    def sft_root(self) -> Path:
        """``sft/``: one directory per SFT set (:meth:`sft_dir`)."""
        return self.root / "sft"

    def sft_dir(self, name: str) -> Path:
        return self.sft_root / name

    @property
    def models_root(self) -> Path:
        """``models/``: one directory per fine-tuning run (:meth:`model_dir`) and the index of them."""
        return self.root / "models"

    def model_dir(self, name: str) -> Path:
        return self.models_root / name

    def eval_path(self, name: str) -> Path:
        return self.root / "evals" / f"{name}.parquet"

    @property
    def metrics_dir(self) -> Path:
        return self.root / "metrics"

    @property
    def cost_path(self) -> Path:
        """What each plan budget cost per role (written by the analysis, read by the report)."""
        return self.metrics_path("cost")

    def metrics_path(self, name: str, suffix: str = ".parquet") -> Path:
        """``metrics/<name>.parquet`` (``name`` one of :data:`METRICS_TABLES`; ``suffix=".md"``: its markdown
        twin)."""
        if name not in METRICS_TABLES:
            raise ValueError(f"no metrics table {name!r} (the run's tables: {', '.join(METRICS_TABLES)})")
        return self.metrics_dir / f"{name}{suffix}"

    @property
    def figures_dir(self) -> Path:
        """The analysis's figures (``metrics/figures/*.png``)."""
        return self.metrics_dir / "figures"

    @property
    def samples_root(self) -> Path:
        """``samples/``: one directory per sampled model (:meth:`samples_dir`)."""
        return self.root / "samples"

    @property
    def pilot_dir(self) -> Path:
        return self.root / "pilot"

    @property
    def advice_path(self) -> Path:
        """The pilot stage's advice (``pilot/advice.json``)."""
        return self.pilot_dir / ADVICE_FILE

    @property
    def allocated_dir(self) -> Path:
        return self.root / ALLOCATED_DIR

    @property
    def allocated_index_path(self) -> Path:
        """The allocated sets the sample stage drew (``allocated/summary.json``)."""
        return self.allocated_dir / "summary.json"

    @property
    def trained_index_path(self) -> Path:
        """Training job name → its trained model directory (``models/trained.json``, the train stage's)."""
        return self.models_root / "trained.json"

    @property
    def report_dir(self) -> Path:
        return self.root / "report"

    def sampled_models(self) -> list[str]:
        """Directory names under samples/ that hold at least one shard."""
        base = self.samples_root
        if not base.is_dir():
            return []
        return sorted(p.name for p in base.iterdir() if p.is_dir() and shard_paths(p))


class RunNotFound(FlopmatchError, FileNotFoundError):
    """A command or reader was pointed at a run directory that does not exist."""


def as_run(run_dir: str | os.PathLike | RunDir) -> RunDir:
    """``run_dir`` as a :class:`RunDir` (a path, or a RunDir passed through): what every reader and writer
    of a run accepts."""
    return run_dir if isinstance(run_dir, RunDir) else RunDir(run_dir)
