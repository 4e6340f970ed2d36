"""Supervised fine-tuning on SFT data with TRL, and the paper's checkpoint-selection protocol.

``train`` runs TRL's ``SFTTrainer`` on a dataset written by :func:`flopmatch.sft.build_sft`, with the
loss on the completion only (the data is in TRL's prompt-completion format; see ``flopmatch.sft``).
Every hyperparameter is a field of :class:`TrainConfig`; nothing is left to TRL's or transformers'
defaults (TRL's differ from transformers' in ways that matter: gradient checkpointing and bf16 on,
lr 2e-5, max_length 1024).

The paper's protocol: save N evenly spaced checkpoints (:func:`checkpoint_steps`), evaluate each on a
held-out validation slice with flopmatch's own grader, keep the best (:func:`select_checkpoint`).

The output directory::

    out_dir/
      checkpoint-<step>/    N evenly spaced checkpoints (model weights + tokenizer; LoRA: the adapter)
      best/                 the selected checkpoint's model files (hard links), loadable by hf and vllm
      train_result.json     config, data, loss history, throughput, checkpoints
      selection.json        validation accuracy of every checkpoint and the choice

Optimizer/scheduler state is kept only in the newest checkpoint, so a killed run resumes where it
stopped (``train`` called again with the same arguments) while finished runs do not carry N copies
of the optimizer.

Multi-GPU: the same code under ``accelerate launch`` (DeepSpeed ZeRO or FSDP configs in
``examples/accelerate/``)::

    accelerate launch --config_file examples/accelerate/deepspeed_zero3.yaml \\
        -m flopmatch train --data runs/x/sft/wc-b1 --model google/gemma-2-9b --out runs/x/models/wc-b1

In a multi-process launch, checkpoint selection is skipped (an inference engine inside a training
process group is asking for trouble); run it afterwards on one process with
``flopmatch train --out DIR --select-only --val-problems ...``.

This module is the training API and runs a training; the parts live by what they are:
:mod:`flopmatch.training_config` (the settings and the schedule they imply),
:mod:`flopmatch.training_trainer` (TRL's trainer, its callbacks, resume state),
:mod:`flopmatch.training_selection` (checkpoint selection, publishing ``best/``) and
:mod:`flopmatch.trained` (the output directory's layout, which evaluation reads too).
"""

from __future__ import annotations

import gc
import logging
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from flopmatch.fingerprints import dataset_fingerprint
from flopmatch.store import config_hash, read_json, write_json
from flopmatch.trained import (
    CHECKPOINT_PREFIX,
    HASH_MARKER,
    MODEL_META_FILE,
    RESUME_STATE_PATTERNS,
    SELECTION_FILE,
    TRAIN_RESULT_FILE,
    checkpoint_step,
    is_adapter_dir,
    list_checkpoints,
    model_meta,
    resolve_trained_model,
    write_model_meta,
)
from flopmatch.training_config import (
    LoraSettings,
    OutDirInUse,
    TrainConfig,
    TrainingError,
    TrainingInputMissing,
    checkpoint_steps,
    total_steps,
    warmup_steps,
)
from flopmatch.training_selection import CheckpointSelection, best_checkpoint, publish_best, select_checkpoint
from flopmatch.training_trainer import (
    drop_incomplete_checkpoints,
    is_main_process,
    make_trainer,
    prune_resume_state,
    resume_checkpoint,
    tokens_seen,
    world_size,
)

log = logging.getLogger(__name__)

__all__ = [  # the training API, wherever each part lives
    "CHECKPOINT_PREFIX",
    "HASH_MARKER",
    "MODEL_META_FILE",
    "OutDirInUse",
    "RESUME_STATE_PATTERNS",
    "SELECTION_FILE",
    "TRAIN_RESULT_FILE",
    "CheckpointSelection",
    "LoraSettings",
    "TrainConfig",
    "TrainResult",
    "TrainingError",
    "TrainingInputMissing",
    "best_checkpoint",
    "checkpoint_steps",
    "is_adapter_dir",
    "is_main_process",
    "list_checkpoints",
    "load_training_data",
    "merge_lora",
    "model_meta",
    "resolve_trained_model",
    "run_digest",
    "select_checkpoint",
    "total_steps",
    "train",
    "warmup_steps",
]


# --------------------------------------------------------------------------- results


@dataclass
class TrainResult:
    """What a training run produced. ``best`` is None until a checkpoint has been selected."""

    out_dir: Path
    base_model: str
    lora: bool
    checkpoints: list[Path]
    best: Path | None
    global_step: int
    train_loss: float | None
    loss_history: list[tuple[int, float]]
    seconds: float
    tokens: int
    steps_per_second: float
    tokens_per_second: float
    config_hash: str
    validation_scores: dict[int, float] = field(default_factory=dict)
    resumed_from: int | None = None  # the checkpoint step a killed run was resumed from

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["out_dir"] = str(self.out_dir)
        out["checkpoints"] = [str(p) for p in self.checkpoints]
        out["best"] = str(self.best) if self.best else None
        out["loss_history"] = [list(x) for x in self.loss_history]
        out["validation_scores"] = {str(k): v for k, v in self.validation_scores.items()}
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainResult:
        return cls(
            out_dir=Path(data["out_dir"]),
            base_model=data["base_model"],
            lora=bool(data["lora"]),
            checkpoints=[Path(p) for p in data["checkpoints"]],
            best=Path(data["best"]) if data.get("best") else None,
            global_step=int(data["global_step"]),
            train_loss=data.get("train_loss"),
            loss_history=[(int(s), float(v)) for s, v in data.get("loss_history", [])],
            seconds=float(data["seconds"]),
            tokens=int(data["tokens"]),
            steps_per_second=float(data["steps_per_second"]),
            tokens_per_second=float(data["tokens_per_second"]),
            config_hash=data["config_hash"],
            validation_scores={int(k): float(v) for k, v in data.get("validation_scores", {}).items()},
            resumed_from=data.get("resumed_from"),
        )


# --------------------------------------------------------------------------- data


def load_training_data(data_dir: str | Path):
    """The SFT dataset as TRL prompt-completion rows (other columns dropped).

    Datasets with only ``messages`` (built elsewhere) are split into prompt = every message before
    the last, completion = the last (which must be the assistant's).
    """
    from datasets import load_from_disk

    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise TrainingInputMissing(
            "no SFT dataset directory (build one with `flopmatch build-sft`)", file=data_dir
        )
    # In memory: SFT sets are small, and TRL's `map` calls would otherwise write cache files into the
    # dataset directory (changing it, and leaving debris next to the data).
    dataset = load_from_disk(str(data_dir), keep_in_memory=True)
    columns = dataset.column_names
    if "prompt" in columns and "completion" in columns:
        dataset = dataset.select_columns(["prompt", "completion"])
    elif "messages" in columns:

        def split(example: dict[str, Any], idx: int) -> dict[str, Any]:
            messages = example["messages"]
            if not messages or messages[-1]["role"] != "assistant":
                raise TrainingError(
                    "the last message must be the assistant's solution",
                    file=data_dir,
                    row=idx + 1,
                    field="messages",
                )
            return {"prompt": messages[:-1], "completion": messages[-1:]}

        dataset = dataset.map(split, with_indices=True, remove_columns=columns)
    else:
        raise TrainingError(f"needs prompt/completion or messages columns (has {columns})", file=data_dir)
    if len(dataset) == 0:
        raise TrainingError("the SFT dataset is empty (no correct solutions at this budget?)", file=data_dir)
    return dataset


# --------------------------------------------------------------------------- training


def run_digest(config: TrainConfig, base_model: str, data_dir: Path) -> str:
    """The identity of a training run (``config_hash`` in ``train_result.json``, the output directory's
    hash marker): its settings, base model and data. A finished run with the same digest is not redone."""
    data = dataset_fingerprint(data_dir) if data_dir.is_dir() else ""
    return config_hash({"config": config, "base_model": base_model, "data": data})


def train(
    data_dir: str | Path,
    *,
    base_model: str,
    out_dir: str | Path,
    config: TrainConfig | None = None,
    validation: list[Any] | None = None,
    select_backend: str = "hf",
    select_max_tokens: int = 512,
    select_options: dict[str, Any] | None = None,
    overwrite: bool = False,
) -> TrainResult:
    """Fine-tune ``base_model`` on the SFT dataset at ``data_dir``; save checkpoints to ``out_dir``.

    ``validation`` (a list of :class:`flopmatch.problems.Problem`) triggers checkpoint selection by
    greedy pass@1 (:func:`select_checkpoint`); without it ``best/`` is the last checkpoint.
    Re-running with the same arguments returns the finished result, or resumes a killed run from
    its newest checkpoint. ``overwrite`` discards a previous run with different arguments.
    """
    config = config or TrainConfig()
    data_dir, out_dir = Path(data_dir), Path(out_dir)
    base_model = _absolute_if_local(base_model)
    digest = run_digest(config, base_model, data_dir)
    select = dict(backend=select_backend, max_tokens=select_max_tokens, backend_options=select_options)
    done = _finished_run(out_dir, digest, overwrite=overwrite, validation=validation, select=select)
    if done is not None:
        return done
    _claim_out_dir(out_dir, digest, overwrite=overwrite)
    dataset = load_training_data(data_dir)
    if validation is not None:
        _check_held_out(data_dir, validation)
    out_dir.mkdir(parents=True, exist_ok=True)
    if is_main_process():
        (out_dir / HASH_MARKER).write_text(digest + "\n")
        drop_incomplete_checkpoints(out_dir)  # half-written by a killed run
    result = _fit(dataset, base_model=base_model, out_dir=out_dir, config=config, digest=digest)
    gc.collect()  # free the training copy of the model before selection loads checkpoints
    if not is_main_process():
        return result

    prune_resume_state(out_dir, keep_latest=False)
    prompt_configs = _sft_prompt_configs(data_dir)
    result.best, result.validation_scores = _publish(out_dir, validation, select, prompt_configs)
    write_model_meta(
        result.best, base_model=base_model, lora=result.lora, data_dir=data_dir, prompt_configs=prompt_configs
    )
    write_json(
        {**result.to_dict(), "config": config.model_dump(mode="json"), "data_dir": str(data_dir),
         "prompt_configs": prompt_configs},
        out_dir / TRAIN_RESULT_FILE,
    )  # fmt: skip
    return result


def _publish(
    out_dir: Path, validation: list[Any] | None, select: dict[str, Any], prompt_configs: Any
) -> tuple[Path, dict[int, float]]:
    """Publish ``best/``: the checkpoint :func:`select_checkpoint` picks on the validation problems, or
    the last one (without validation problems, or in a multi-process launch); its path and the scores."""
    if validation is not None and world_size() == 1:
        selection = select_checkpoint(out_dir, validation, prompt=prompt_configs, **select)
        return selection.best, selection.scores
    if validation is not None:
        log.warning(
            "multi-process launch: checkpoint selection skipped; run "
            "`flopmatch train --out %s --select-only --val-problems ...` on one process",
            out_dir,
        )
    step, last = list_checkpoints(out_dir)[-1]
    return publish_best(out_dir, last, step, metric="last", scores={}), {}


def _finished_run(
    out_dir: Path, digest: str, *, overwrite: bool, validation: list[Any] | None, select: dict[str, Any]
) -> TrainResult | None:
    """The result of the finished run with this identity in ``out_dir`` (its checkpoint selected now if it
    was trained without validation problems and these are given), or None."""
    previous = out_dir / TRAIN_RESULT_FILE
    if overwrite or not previous.exists():
        return None
    done = TrainResult.from_dict(read_json(previous))
    if done.config_hash != digest:
        return None
    if validation is not None and not done.validation_scores and world_size() == 1:
        selection = select_checkpoint(out_dir, validation, **select)  # records itself in train_result.json
        done.validation_scores, done.best = selection.scores, selection.best
    return done


def _claim_out_dir(out_dir: Path, digest: str, *, overwrite: bool) -> None:
    """Refuse (or, with ``overwrite``, clear) an ``out_dir`` that holds checkpoints of another run."""
    if list_checkpoints(out_dir, complete_only=False):
        marker = out_dir / HASH_MARKER
        same = marker.exists() and marker.read_text().strip() == digest
        if not same and not overwrite:
            raise OutDirInUse(
                "holds checkpoints of a different training run (other config, model or data); "
                "choose another output directory or pass overwrite=True (--overwrite)",
                file=out_dir,
            )
        if not same:
            shutil.rmtree(out_dir)


def _fit(dataset: Any, *, base_model: str, out_dir: Path, config: TrainConfig, digest: str) -> TrainResult:
    """Run the trainer (from the newest resumable checkpoint, if any) and record what it did."""
    trainer = make_trainer(dataset, base_model=base_model, out_dir=out_dir, config=config)
    resume = resume_checkpoint(out_dir)
    started = time.perf_counter()
    output = trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    seconds = time.perf_counter() - started
    trainer.accelerator.wait_for_everyone()
    state = trainer.state
    tokens = int(getattr(state, "num_input_tokens_seen", 0) or 0)
    # throughput of this session only: a resumed run restores the counters of the checkpoint it resumed
    steps_done = state.global_step - (checkpoint_step(resume) if resume else 0)
    tokens_done = tokens - (tokens_seen(resume) if resume else 0)
    return TrainResult(
        out_dir=out_dir,
        base_model=base_model,
        lora=config.lora is not None,
        checkpoints=[p for _, p in list_checkpoints(out_dir)],
        best=None,
        global_step=state.global_step,
        train_loss=float(output.training_loss) if output.training_loss is not None else None,
        loss_history=[
            (int(e["step"]), float(e["loss"])) for e in state.log_history if "loss" in e and "step" in e
        ],
        seconds=seconds,
        tokens=tokens,
        steps_per_second=steps_done / seconds if seconds > 0 else 0.0,
        tokens_per_second=tokens_done / seconds if seconds > 0 else 0.0,
        config_hash=digest,
        resumed_from=checkpoint_step(resume) if resume else None,
    )


def _check_held_out(data_dir: Path, validation: list[Any]) -> None:
    """Refuse validation problems that are also training problems (selection would reward memorising)."""
    from datasets import load_from_disk

    dataset = load_from_disk(str(data_dir), keep_in_memory=True)
    if "problem_id" not in dataset.column_names:
        return
    overlap = {p.problem_id for p in validation} & set(dataset["problem_id"])
    if overlap:
        raise TrainingError(
            f"{len(overlap)} validation problem(s) are in the training data {data_dir} "
            f"(e.g. {sorted(overlap)[0]!r}); checkpoint selection needs held-out problems"
        )


def _absolute_if_local(model: str) -> str:
    path = Path(model).expanduser()
    return str(path.resolve()) if path.exists() else model


def _sft_prompt_configs(data_dir: Path) -> Any:
    from flopmatch.sft import sft_meta

    return sft_meta(data_dir).get("prompt_configs")


# --------------------------------------------------------------------------- LoRA merge


def merge_lora(adapter_dir: str | Path, out_dir: str | Path) -> Path:
    """Merge a LoRA adapter into its base model and save a plain HF model (for engines without LoRA)."""
    from peft import AutoPeftModelForCausalLM
    from transformers import AutoTokenizer

    adapter_dir, out_dir = Path(adapter_dir), Path(out_dir)
    base, _ = resolve_trained_model(adapter_dir)
    model = AutoPeftModelForCausalLM.from_pretrained(str(adapter_dir))
    merged = model.merge_and_unload()
    merged.save_pretrained(str(out_dir))
    AutoTokenizer.from_pretrained(
        str(adapter_dir) if (adapter_dir / "tokenizer_config.json").exists() else base
    ).save_pretrained(str(out_dir))
    return out_dir
