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
"""

from __future__ import annotations

import gc
import hashlib
import math
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from flopmatch.store import config_hash, read_json, write_json
from flopmatch.trained import (  # noqa: F401 - the layout's names stay importable from here
    CHECKPOINT_PREFIX,
    HASH_MARKER,
    MODEL_META_FILE,
    SELECTION_FILE,
    TRAIN_RESULT_FILE,
    is_adapter_dir,
    list_checkpoints,
    model_meta,
    resolve_trained_model,
)

RESUME_STATE_PATTERNS = (
    "optimizer.pt",
    "optimizer.bin",
    "optimizer_*",
    "scheduler.pt",
    "scaler.pt",
    "rng_state*.pth",
    "global_step*",  # DeepSpeed ZeRO partitions
    "pytorch_model_fsdp*",  # FSDP sharded model state (the full state dict is saved separately)
    "latest",
    "zero_to_fp32.py",
)


# --------------------------------------------------------------------------- configuration


class LoraSettings(BaseModel):
    """LoRA adapter (peft). Defaults are the common choice for instruction tuning of 0.5-30B models."""

    model_config = ConfigDict(extra="forbid")

    r: int = Field(16, ge=1, description="adapter rank")
    alpha: int = Field(32, ge=1, description="scaling numerator (effective scale alpha / r)")
    dropout: float = Field(0.05, ge=0.0, lt=1.0)
    target_modules: list[str] | str = Field(
        "all-linear", description="module names, or 'all-linear' for every linear layer but the output head"
    )


class TrainConfig(BaseModel):
    """Every hyperparameter of one fine-tuning run.

    Defaults follow the paper's setup for 7-27B models (full fine-tuning, effective batch 32,
    10 evenly spaced checkpoints; the paper picks lr from {1e-7, 5e-7, 1e-6} on validation — sweep
    it by training once per value). bf16 mixed precision keeps fp32 master weights: at lr 1e-6 an
    update is below bf16's resolution, so the weights must not be bf16. Use :meth:`tiny_cpu` for
    the toy world and tests, and raise ``learning_rate`` to ~1e-4 with ``lora``.
    """

    model_config = ConfigDict(extra="forbid")

    learning_rate: float = Field(1e-6, gt=0, description="peak learning rate (paper grid: 1e-7, 5e-7, 1e-6)")
    lr_scheduler_type: str = Field("cosine", description="transformers scheduler name after the warmup")
    warmup_ratio: float = Field(0.03, ge=0.0, lt=1.0, description="fraction of steps with linear warmup")
    weight_decay: float = Field(0.0, ge=0.0)
    max_grad_norm: float = Field(1.0, gt=0)
    per_device_batch_size: int = Field(8, ge=1)
    gradient_accumulation_steps: int = Field(4, ge=1, description="effective batch = this x batch x devices")
    num_train_epochs: float = Field(3.0, gt=0, description="used when max_steps is None")
    max_steps: int | None = Field(None, ge=1, description="optimizer steps; overrides epochs (paper: 600 low budget)")
    max_length: int = Field(2048, ge=8, description="tokens per example (prompt + completion); longer are cut")
    seed: int = 0
    bf16: bool = Field(True, description="bf16 mixed precision (needs bf16-capable hardware)")
    gradient_checkpointing: bool = Field(True, description="trade compute for activation memory")
    lora: LoraSettings | None = Field(None, description="train a LoRA adapter instead of all weights")
    use_cpu: bool = Field(False, description="train on CPU even when an accelerator is present")
    n_checkpoints: int = Field(10, ge=1, description="evenly spaced checkpoints kept for selection")
    logging_steps: int = Field(10, ge=1)
    dataloader_num_workers: int = Field(0, ge=0)
    keep_resume_state: bool = Field(
        True, description="keep optimizer state in the newest checkpoint so a killed run resumes"
    )

    @classmethod
    def tiny_cpu(cls, **overrides: Any) -> TrainConfig:
        """Settings for models of a few million parameters trained on CPU (toy world, tests):
        fp32, no gradient checkpointing, a learning rate fit for small models, 3 checkpoints."""
        values: dict[str, Any] = dict(
            learning_rate=1e-3,
            lr_scheduler_type="linear",
            warmup_ratio=0.0,
            per_device_batch_size=16,
            gradient_accumulation_steps=1,
            num_train_epochs=3.0,
            max_length=512,
            bf16=False,
            gradient_checkpointing=False,
            use_cpu=True,
            n_checkpoints=3,
            logging_steps=5,
        )
        values.update(overrides)
        return cls(**values)


# --------------------------------------------------------------------------- pure helpers


def checkpoint_steps(total_steps: int, n: int) -> list[int]:
    """The N evenly spaced optimizer steps at which to save: round(i * T / N) for i = 1..N.

    The last is always T (the end of training). With fewer steps than checkpoints every step is saved.
    """
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1, got {total_steps}")
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    return sorted({max(1, round(i * total_steps / n)) for i in range(1, n + 1)})


def best_checkpoint(scores: dict[int, float]) -> int:
    """The step with the highest validation score; ties go to the earliest step (less training,
    same accuracy)."""
    if not scores:
        raise ValueError("no checkpoint scores to choose from")
    return max(sorted(scores), key=lambda step: (scores[step], -step))


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


@dataclass
class CheckpointSelection:
    best: Path
    best_step: int
    scores: dict[int, float]
    metric: str


# --------------------------------------------------------------------------- data


def load_training_data(data_dir: str | Path):
    """The SFT dataset as TRL prompt-completion rows (other columns dropped).

    Datasets with only ``messages`` (built elsewhere) are split into prompt = every message before
    the last, completion = the last (which must be the assistant's).
    """
    from datasets import load_from_disk

    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise FileNotFoundError(f"{data_dir}: no SFT dataset directory (build one with `flopmatch build-sft`)")
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
                raise ValueError(f"{data_dir}: row {idx}: the last message must be the assistant's solution")
            return {"prompt": messages[:-1], "completion": messages[-1:]}

        dataset = dataset.map(split, with_indices=True, remove_columns=columns)
    else:
        raise ValueError(f"{data_dir}: needs prompt/completion or messages columns (has {columns})")
    if len(dataset) == 0:
        raise ValueError(f"{data_dir}: the SFT dataset is empty (no correct solutions at this budget?)")
    return dataset


def _data_fingerprint(data_dir: Path) -> str:
    """Identity of the training data for resume decisions: a hash of the dataset's Arrow files.

    Content, not the ``datasets`` fingerprint or file times: rebuilding identical SFT data (a rerun
    of ``build-sft``) must not look like new data to a finished or half-finished training run.
    """
    digest = hashlib.sha256()
    files = sorted(data_dir.glob("data-*.arrow"))  # not cache-*.arrow that `datasets` may add beside them
    if not files:
        return str(data_dir.resolve())
    for path in files:
        digest.update(path.name.encode())
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


# --------------------------------------------------------------------------- training


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
    data_dir = Path(data_dir)
    out_dir = Path(out_dir)
    base_model = _absolute_if_local(base_model)
    digest = config_hash(
        {"config": config, "base_model": base_model, "data": _data_fingerprint(data_dir) if data_dir.is_dir() else ""}
    )

    previous = out_dir / TRAIN_RESULT_FILE
    if previous.exists():
        done = TrainResult.from_dict(read_json(previous))
        if done.config_hash == digest and not overwrite:
            if validation is not None and not done.validation_scores and _world_size() == 1:
                selection = select_checkpoint(
                    out_dir, validation, backend=select_backend, max_tokens=select_max_tokens,
                    backend_options=select_options,
                )
                done.validation_scores, done.best = selection.scores, selection.best
                write_json(done.to_dict(), previous)
            return done
    if list_checkpoints(out_dir, complete_only=False):
        marker = out_dir / HASH_MARKER
        same = marker.exists() and marker.read_text().strip() == digest
        if not same and not overwrite:
            raise FileExistsError(
                f"{out_dir}: holds checkpoints of a different training run (other config, model or data); "
                "choose another output directory or pass overwrite=True (--overwrite)"
            )
        if not same:
            shutil.rmtree(out_dir)

    dataset = load_training_data(data_dir)
    if validation is not None:
        _check_held_out(data_dir, validation)
    out_dir.mkdir(parents=True, exist_ok=True)
    if _is_main_process():
        (out_dir / HASH_MARKER).write_text(digest + "\n")
        _drop_incomplete_checkpoints(out_dir)
    trainer = _make_trainer(dataset, base_model=base_model, out_dir=out_dir, config=config)

    resume = _resume_checkpoint(out_dir)
    started = time.perf_counter()
    output = trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    seconds = time.perf_counter() - started
    trainer.accelerator.wait_for_everyone()

    state = trainer.state
    tokens = int(getattr(state, "num_input_tokens_seen", 0) or 0)
    # throughput of this session only: a resumed run restores the counters of the checkpoint it resumed
    steps_done = state.global_step - (_step_of(resume) if resume else 0)
    tokens_done = tokens - (_tokens_seen(resume) if resume else 0)
    result = TrainResult(
        out_dir=out_dir,
        base_model=base_model,
        lora=config.lora is not None,
        checkpoints=[p for _, p in list_checkpoints(out_dir)],
        best=None,
        global_step=state.global_step,
        train_loss=float(output.training_loss) if output.training_loss is not None else None,
        loss_history=[(int(e["step"]), float(e["loss"])) for e in state.log_history if "loss" in e and "step" in e],
        seconds=seconds,
        tokens=tokens,
        steps_per_second=steps_done / seconds if seconds > 0 else 0.0,
        tokens_per_second=tokens_done / seconds if seconds > 0 else 0.0,
        config_hash=digest,
        resumed_from=_step_of(resume) if resume else None,
    )
    del trainer
    gc.collect()  # free the training copy of the model before selection loads checkpoints
    if not _is_main_process():
        return result

    _prune_resume_state(out_dir, keep_latest=False)
    prompt_configs = _sft_prompt_configs(data_dir)
    if validation is not None and _world_size() == 1:
        selection = select_checkpoint(
            out_dir, validation, backend=select_backend, max_tokens=select_max_tokens,
            backend_options=select_options, prompt=prompt_configs,
        )
        result.best, result.validation_scores = selection.best, selection.scores
    else:
        if validation is not None:
            print(
                f"[flopmatch] multi-process launch: checkpoint selection skipped; run "
                f"`flopmatch train --out {out_dir} --select-only --val-problems ...` on one process",
                file=sys.stderr,
            )
        step, last = list_checkpoints(out_dir)[-1]
        result.best = _publish_best(out_dir, last, step, metric="last", scores={})
    _write_model_meta(
        result.best, base_model=base_model, lora=result.lora, data_dir=data_dir, prompt_configs=prompt_configs
    )
    write_json(
        {**result.to_dict(), "config": config.model_dump(mode="json"), "data_dir": str(data_dir),
         "prompt_configs": prompt_configs},
        out_dir / TRAIN_RESULT_FILE,
    )
    return result


def _check_held_out(data_dir: Path, validation: list[Any]) -> None:
    """Refuse validation problems that are also training problems (selection would reward memorising)."""
    from datasets import load_from_disk

    dataset = load_from_disk(str(data_dir), keep_in_memory=True)
    if "problem_id" not in dataset.column_names:
        return
    overlap = {p.problem_id for p in validation} & set(dataset["problem_id"])
    if overlap:
        raise ValueError(
            f"{len(overlap)} validation problem(s) are in the training data {data_dir} "
            f"(e.g. {sorted(overlap)[0]!r}); checkpoint selection needs held-out problems"
        )


def _make_trainer(dataset: Any, *, base_model: str, out_dir: Path, config: TrainConfig):
    """Build the ``SFTTrainer`` with every setting explicit."""
    import torch
    from transformers import AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    tokenizer = AutoTokenizer.from_pretrained(base_model)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if len(dataset) and isinstance(dataset[0]["prompt"], list) and not tokenizer.chat_template:
        raise ValueError(
            f"the SFT data is in chat format but {base_model} has no chat template; build the data with a "
            "plain-text prompt (build_sft(..., prompt=PromptConfig(style='plain')))"
        )
    # Full fine-tuning keeps fp32 master weights (see TrainConfig); a frozen LoRA base can be bf16.
    dtype = torch.bfloat16 if (config.lora is not None and config.bf16) else torch.float32
    args = SFTConfig(
        output_dir=str(out_dir),
        model_init_kwargs={"dtype": dtype},
        learning_rate=config.learning_rate,
        lr_scheduler_type=config.lr_scheduler_type,
        # transformers 5 reads a warmup_steps below 1 as a fraction of the steps (warmup_ratio is deprecated);
        # TrainConfig keeps warmup_ratio < 1, so this is the ratio, not 0 steps (checked in test_training)
        warmup_steps=config.warmup_ratio,
        weight_decay=config.weight_decay,
        max_grad_norm=config.max_grad_norm,
        per_device_train_batch_size=config.per_device_batch_size,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        num_train_epochs=config.num_train_epochs,
        max_steps=config.max_steps if config.max_steps is not None else -1,
        max_length=config.max_length,
        seed=config.seed,
        data_seed=config.seed,
        bf16=config.bf16,
        fp16=False,
        gradient_checkpointing=config.gradient_checkpointing,
        use_cpu=config.use_cpu,
        logging_steps=config.logging_steps,
        dataloader_num_workers=config.dataloader_num_workers,
        dataloader_pin_memory=not config.use_cpu,
        completion_only_loss=True,
        assistant_only_loss=False,
        packing=False,
        save_strategy="no",  # EvenCheckpoints decides when to save
        save_only_model=not config.keep_resume_state,
        eval_strategy="no",
        ddp_find_unused_parameters=False,  # every trainable parameter is used (full model, or LoRA)
        report_to="none",
        include_num_input_tokens_seen="non_padding",
        disable_tqdm=False,
    )
    peft_config = None
    if config.lora is not None:
        from peft import LoraConfig

        peft_config = LoraConfig(
            r=config.lora.r,
            lora_alpha=config.lora.alpha,
            lora_dropout=config.lora.dropout,
            target_modules=config.lora.target_modules,
            task_type="CAUSAL_LM",
        )
    return SFTTrainer(
        model=base_model,
        args=args,
        train_dataset=dataset,
        processing_class=tokenizer,
        peft_config=peft_config,
        callbacks=[_even_checkpoints_callback(config.n_checkpoints), _prune_callback(config.keep_resume_state)],
    )


def _even_checkpoints_callback(n: int):
    from transformers import TrainerCallback

    class EvenCheckpoints(TrainerCallback):
        """Save at :func:`checkpoint_steps` (max_steps is known once training begins)."""

        def __init__(self) -> None:
            self.steps: set[int] = set()

        def on_train_begin(self, args, state, control, **kwargs):
            self.steps = set(checkpoint_steps(state.max_steps, n))

        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step in self.steps:
                control.should_save = True
            return control

    return EvenCheckpoints()


def _prune_callback(keep_resume_state: bool):
    from transformers import TrainerCallback

    class PruneResumeState(TrainerCallback):
        """After each save, drop optimizer/scheduler/RNG state from all but the newest checkpoint."""

        def on_save(self, args, state, control, **kwargs):
            if state.is_world_process_zero:
                _prune_resume_state(Path(args.output_dir), keep_latest=keep_resume_state)
            return control

    return PruneResumeState()


def _prune_resume_state(out_dir: Path, *, keep_latest: bool) -> None:
    checkpoints = list_checkpoints(out_dir)
    if keep_latest:
        checkpoints = checkpoints[:-1]
    for _, path in checkpoints:
        for pattern in RESUME_STATE_PATTERNS:
            for item in path.glob(pattern):
                if item.is_dir():
                    shutil.rmtree(item, ignore_errors=True)
                else:
                    item.unlink(missing_ok=True)


def _resume_checkpoint(out_dir: Path) -> Path | None:
    """The newest complete checkpoint that still holds optimizer state, if any."""
    for _, path in reversed(list_checkpoints(out_dir)):
        if any(path.glob("optimizer*")) or any(path.glob("global_step*")):
            return path
    return None


def _drop_incomplete_checkpoints(out_dir: Path) -> None:
    complete = {p for _, p in list_checkpoints(out_dir)}
    for _, path in list_checkpoints(out_dir, complete_only=False):
        if path not in complete:
            shutil.rmtree(path, ignore_errors=True)


def _tokens_seen(checkpoint: Path) -> int:
    state = checkpoint / "trainer_state.json"
    return int(read_json(state).get("num_input_tokens_seen", 0) or 0) if state.exists() else 0


def _step_of(path: Path) -> int:
    return int(path.name[len(CHECKPOINT_PREFIX) :])


def _absolute_if_local(model: str) -> str:
    path = Path(model).expanduser()
    return str(path.resolve()) if path.exists() else model


def _world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main_process() -> bool:
    """True outside a multi-process launch, and on rank 0 inside one."""
    return _is_main_process()


def _is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def _sft_prompt_configs(data_dir: Path) -> Any:
    from flopmatch.sft import sft_meta

    return sft_meta(data_dir).get("prompt_configs")


def _write_model_meta(
    best: Path | None, *, base_model: str, lora: bool, data_dir: Path, prompt_configs: Any
) -> None:
    if best is None:
        return
    write_json(
        {"base_model": base_model, "lora": lora, "data_dir": str(data_dir), "prompt_configs": prompt_configs},
        best / MODEL_META_FILE,
    )


# --------------------------------------------------------------------------- checkpoint selection


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
        raise FileNotFoundError(f"{out_dir}: no complete checkpoints to select from")
    if not validation:
        raise ValueError("the validation set is empty")
    if prompt is None:
        prompt = _sft_prompt_configs_from_result(out_dir)
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
            str(path), validation, backend=backend, n=0, max_tokens=max_tokens, prompt=prompt,
            backend_options=backend_options, progress_desc=f"validate checkpoint-{step}",
        )
        scores[step] = float(result.metrics[metric])
        write_json({"key": key, "metric": metric, "scores": {str(k): v for k, v in scores.items()}}, cache_path)
    step = best_checkpoint(scores)
    best = _publish_best(out_dir, dict(checkpoints)[step], step, metric=metric, scores=scores, key=key)
    return CheckpointSelection(best=best, best_step=step, scores=scores, metric=metric)


def _sft_prompt_configs_from_result(out_dir: Path) -> Any:
    path = out_dir / TRAIN_RESULT_FILE
    if path.exists():
        return read_json(path).get("prompt_configs")
    marker = out_dir / "best" / MODEL_META_FILE
    return read_json(marker).get("prompt_configs") if marker.exists() else None


def _publish_best(
    out_dir: Path, checkpoint: Path, step: int, *, metric: str, scores: dict[int, float], key: str = ""
) -> Path:
    """Make ``out_dir/best`` a copy (hard links where possible) of the checkpoint's model files."""
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
    )
    train_result = out_dir / TRAIN_RESULT_FILE
    if train_result.exists():
        data = read_json(train_result)
        data["best"], data["validation_scores"] = str(best), {str(k): v for k, v in scores.items()}
        write_json(data, train_result)
        _write_model_meta(best, base_model=data["base_model"], lora=data["lora"], data_dir=Path(data["data_dir"]),
                          prompt_configs=data.get("prompt_configs"))
    return best


def _link_or_copy(src: str | Path, dst: str | Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


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
    AutoTokenizer.from_pretrained(str(adapter_dir) if (adapter_dir / "tokenizer_config.json").exists() else base).save_pretrained(
        str(out_dir)
    )
    return out_dir


def total_steps(n_examples: int, config: TrainConfig, world_size: int = 1) -> int:
    """Optimizer steps a run will take (as transformers computes them), for planning and logs."""
    if config.max_steps is not None:
        return config.max_steps
    batches = math.ceil(n_examples / (config.per_device_batch_size * world_size))
    per_epoch = max(1, math.ceil(batches / config.gradient_accumulation_steps))
    return max(1, math.ceil(per_epoch * config.num_train_epochs))
