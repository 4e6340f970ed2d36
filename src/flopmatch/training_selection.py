"""The paper's checkpoint selection: evaluate every checkpoint of a fine-tuning run on held-out
validation problems (greedy pass@1, graded by flopmatch's grader), keep the best, and publish a
checkpoint as the run's ``best/`` model. A step of its own after training: :func:`flopmatch.training.train`
calls it when given validation problems, and ``flopmatch train --select-only`` runs it alone."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from flopmatch.store import config_hash, read_json, write_json
from flopmatch.trained import (
    MODEL_META_FILE,
    RESUME_STATE_PATTERNS,
    SELECTION_FILE,
    TRAIN_RESULT_FILE,
    list_checkpoints,
    write_model_meta,
)
from flopmatch.training_config import TrainingError, TrainingInputMissing


@dataclass
class CheckpointSelection:
    best: Path
    best_step: int
    scores: dict[int, float]
    metric: str


def best_checkpoint(scores: dict[int, float]) -> int:
    """The step with the highest validation score; ties go to the earliest step (less training,
    same accuracy)."""
    if not scores:
        raise ValueError("no checkpoint scores to choose from")
    return max(sorted(scores), key=lambda step: (scores[step], -step))


def select_checkpoint(
    out_dir: str | Path,
    validation: list[Any],
    *,
    backend: str = "hf",
    max_tokens: int = 512,
    prompt: Any = None,
    backend_options: dict[str, Any] | None = None,
    metric: Literal["pass@1"] = "pass@1",
) -> CheckpointSelection:
    """Evaluate every checkpoint in ``out_dir`` on the validation problems (greedy pass@1, graded by
    :mod:`flopmatch.grading`) and publish the best as ``out_dir/best``.

    Scores are cached in ``selection.json`` per checkpoint, so an interrupted selection resumes.
    """
    from flopmatch.evaluation import evaluate

    out_dir = Path(out_dir)
    checkpoints = list_checkpoints(out_dir)
    if not checkpoints:
        raise TrainingInputMissing("no complete checkpoints to select from", file=out_dir)
    if not validation:
        raise TrainingError("the validation set is empty")
    if prompt is None:
        prompt = _prompt_configs_of_run(out_dir)
    val_ids = sorted(p.problem_id for p in validation)
    key = config_hash({"problems": val_ids, "backend": backend, "max_tokens": max_tokens, "prompt": prompt})
    cache_path = out_dir / SELECTION_FILE
    cached = read_json(cache_path) if cache_path.exists() else {}
    scores: dict[int, float] = (
        {int(k): float(v) for k, v in cached.get("scores", {}).items()} if cached.get("key") == key else {}
    )
    for step, path in checkpoints:
        if step in scores:
            continue
        result = evaluate(
            str(path),
            validation,
            backend=backend,
            n=0,
            max_tokens=max_tokens,
            prompt=prompt,
            backend_options=backend_options,
            progress_desc=f"validate checkpoint-{step}",
        )
        scores[step] = float(result.metrics[metric])
        write_json(
            {"key": key, "metric": metric, "scores": {str(k): v for k, v in scores.items()}}, cache_path
        )
    step = best_checkpoint(scores)
    best = publish_best(
        out_dir, dict(checkpoints)[step], step, metric=metric, scores=scores, key=key, prompt_configs=prompt
    )
    return CheckpointSelection(best=best, best_step=step, scores=scores, metric=metric)


def _prompt_configs_of_run(out_dir: Path) -> Any:
    """The prompt configs of the run's training data: from its record, else from its published model's."""
    for path in (out_dir / TRAIN_RESULT_FILE, out_dir / "best" / MODEL_META_FILE):
        record = read_json(path) if path.exists() else {}
        if "prompt_configs" in record:
            return record["prompt_configs"]
    return None


def publish_best(
    out_dir: Path,
    checkpoint: Path,
    step: int,
    *,
    metric: str,
    scores: dict[int, float],
    key: str = "",
    prompt_configs: Any = None,
) -> Path:
    """Make ``out_dir/best`` a copy (hard links where possible) of the checkpoint's model files, and
    record the choice in ``selection.json`` (and in ``train_result.json`` when the run has one)."""
    best = out_dir / "best"
    staging = out_dir / ".best.staging"
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir()
    skip = {"trainer_state.json", "training_args.bin"}
    for item in checkpoint.iterdir():
        if item.name in skip or any(item.match(p) for p in RESUME_STATE_PATTERNS):
            continue
        target = staging / item.name
        if item.is_dir():
            shutil.copytree(item, target, copy_function=_link_or_copy)
        else:
            _link_or_copy(item, target)
    if best.exists():
        shutil.rmtree(best)
    staging.rename(best)
    write_json(
        {"key": key, "metric": metric, "scores": {str(k): v for k, v in scores.items()}, "best_step": step,
         "best_checkpoint": checkpoint.name},
        out_dir / SELECTION_FILE,
    )  # fmt: skip
    train_result = out_dir / TRAIN_RESULT_FILE
    if train_result.exists():
        data = read_json(train_result)
        data["best"], data["validation_scores"] = str(best), {str(k): v for k, v in scores.items()}
        write_json(data, train_result)
        # records damaged by an older train() (which rewrote them without data_dir and prompt_configs) still publish
        write_model_meta(best, base_model=data["base_model"], lora=data["lora"], data_dir=data.get("data_dir"),
                         prompt_configs=data.get("prompt_configs", prompt_configs))  # fmt: skip
    return best


def _link_or_copy(src: str | Path, dst: str | Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)
