"""One YAML file drives a whole study: the typed config and the stage orchestrator.

A study is the paper's experiment end to end::

    problems -> plan -> sample -> grade -> judge -> analyze -> sft -> train -> eval -> report

Each stage reads what earlier stages wrote into the run directory (``flopmatch.store.RunDir``) and
writes its own outputs there. A stage is skipped when its *digest* is unchanged: the hash of the config
sections it reads plus the fingerprints of its upstream stages' outputs. Editing ``sampling.temperature``
therefore reruns sampling and everything after it, and nothing before; forcing a stage that rewrites
its outputs reruns what depends on them. Stages that are long (sampling, training) are resumable inside
too, so a killed study picks up where it stopped and never redoes finished work.

This package is the library; ``flopmatch study`` / ``status`` / ``demo`` only wrap it:

- ``config``: the typed study config (``StudyConfig``), loading a study file and its error messages;
- ``jobs``: the SFT sets and fine-tuning runs the paradigms need;
- ``context``: what every stage gets (``StudyContext``) and ``StudyError`` (output fingerprints:
  ``flopmatch.fingerprints``);
- ``registry``: one record per stage (``Stage``: config view, inputs, outputs, version, when it is on,
  its run function), read by the orchestrator, the dry run and ``flopmatch status``;
- ``orchestrator``: stage bookkeeping (digests, status), the run lock and ``run_study``;
- ``stages``: the data stages' functions (problems to analyze, and the report); ``stages_training``: the
  training stages' (sft, train, eval);
- ``dryrun``: ``--dry-run``, the plan and cost of a study without running it.
"""

from __future__ import annotations

from flopmatch.fingerprints import CONTENT_HASH_LIMIT, fingerprint
from flopmatch.store.layout import ROLES_FILE
from flopmatch.study.config import (
    BACKENDS,
    PARADIGMS,
    AnalysisConfig,
    BudgetConfig,
    EvaluationConfig,
    GradingConfig,
    JudgeConfig,
    ModelsConfig,
    ModelSpec,
    ParadigmsConfig,
    PositiveInt,
    ProblemsConfig,
    SamplingConfig,
    SplitConfig,
    StudyConfig,
    StudyConfigError,
    TrainingConfig,
    ValidationSplitConfig,
    apply_overrides,
    demo_config,
    expand_env,
    format_validation_error,
    load_study_config,
    resolve_paths,
    validate_study_dict,
)
from flopmatch.study.context import PROBLEM_ROLES, StudyContext, StudyError
from flopmatch.study.dryrun import DryRun, dry_run
from flopmatch.study.jobs import PARADIGM_SHORT, PARADIGM_STUDENT, SFTSet, TrainJob, sft_sets, train_jobs
from flopmatch.study.orchestrator import (
    STAGES,
    StageFailed,
    StageStatus,
    StudyResult,
    freeze_config,
    load_run_config,
    run_dir_for,
    run_study,
    stage_digest,
    study_status,
)
from flopmatch.study.registry import REGISTRY, STAGE_RUNNERS, STAGE_VERSIONS, Stage, get_stage
from flopmatch.study.stages import split_problems

__all__ = [
    "BACKENDS",
    "CONTENT_HASH_LIMIT",
    "PARADIGMS",
    "PARADIGM_SHORT",
    "PARADIGM_STUDENT",
    "PROBLEM_ROLES",
    "REGISTRY",
    "ROLES_FILE",
    "STAGES",
    "STAGE_RUNNERS",
    "STAGE_VERSIONS",
    "AnalysisConfig",
    "BudgetConfig",
    "DryRun",
    "EvaluationConfig",
    "GradingConfig",
    "JudgeConfig",
    "ModelSpec",
    "ModelsConfig",
    "ParadigmsConfig",
    "PositiveInt",
    "ProblemsConfig",
    "SFTSet",
    "SamplingConfig",
    "SplitConfig",
    "Stage",
    "StageFailed",
    "StageStatus",
    "StudyConfig",
    "StudyConfigError",
    "StudyContext",
    "StudyError",
    "StudyResult",
    "TrainJob",
    "TrainingConfig",
    "ValidationSplitConfig",
    "apply_overrides",
    "demo_config",
    "dry_run",
    "expand_env",
    "fingerprint",
    "format_validation_error",
    "freeze_config",
    "get_stage",
    "load_run_config",
    "load_study_config",
    "resolve_paths",
    "run_dir_for",
    "run_study",
    "sft_sets",
    "split_problems",
    "stage_digest",
    "study_status",
    "train_jobs",
    "validate_study_dict",
]
