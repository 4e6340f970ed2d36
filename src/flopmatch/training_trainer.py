"""The TRL trainer a fine-tuning run drives: ``SFTTrainer`` built with every setting explicit, the
callbacks that save evenly spaced checkpoints and drop optimizer state from older ones, and the state
a killed run resumes from. :func:`flopmatch.training.train` is the one caller."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from flopmatch.progress import is_quiet
from flopmatch.store import read_json
from flopmatch.trained import RESUME_STATE_PATTERNS, list_checkpoints
from flopmatch.training_config import TrainConfig, TrainingError, checkpoint_steps, total_steps, warmup_steps


def world_size() -> int:
    """Processes in the launch (1 outside ``accelerate launch`` / ``torchrun``)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main_process() -> bool:
    """True outside a multi-process launch, and on rank 0 inside one."""
    return int(os.environ.get("RANK", "0")) == 0


def make_trainer(dataset: Any, *, base_model: str, out_dir: Path, config: TrainConfig):
    """Build the ``SFTTrainer`` with every setting explicit."""
    from transformers import AutoTokenizer
    from trl import SFTTrainer

    tokenizer = AutoTokenizer.from_pretrained(base_model)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if len(dataset) and isinstance(dataset[0]["prompt"], list) and not tokenizer.chat_template:
        raise TrainingError(
            f"the SFT data is in chat format but {base_model} has no chat template; build the data with a "
            "plain-text prompt (build_sft(..., prompt=PromptConfig(style='plain')))"
        )
    return SFTTrainer(
        model=base_model,
        args=_sft_config(config, out_dir, n_steps=total_steps(len(dataset), config, world_size())),
        train_dataset=dataset,
        processing_class=tokenizer,
        peft_config=_lora_config(config),
        callbacks=[
            _even_checkpoints_callback(config.n_checkpoints),
            _prune_callback(config.keep_resume_state),
        ],
    )


def _sft_config(config: TrainConfig, out_dir: Path, *, n_steps: int):
    import torch
    from trl import SFTConfig

    # Full fine-tuning keeps fp32 master weights (see TrainConfig); a frozen LoRA base can be bf16.
    dtype = torch.bfloat16 if (config.lora is not None and config.bf16) else torch.float32
    return SFTConfig(
        output_dir=str(out_dir),
        model_init_kwargs={"dtype": dtype},
        learning_rate=config.learning_rate,
        lr_scheduler_type=config.lr_scheduler_type,
        # whole steps (transformers would read a value below 1 as a fraction of the steps, rounding the same way)
        warmup_steps=warmup_steps(n_steps, config.warmup_ratio),
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
        disable_tqdm=is_quiet(),  # --quiet (TQDM_DISABLE, which set_quiet also sets, covers TRL's other bars)
    )


def _lora_config(config: TrainConfig):
    if config.lora is None:
        return None
    from peft import LoraConfig

    return LoraConfig(
        r=config.lora.r,
        lora_alpha=config.lora.alpha,
        lora_dropout=config.lora.dropout,
        target_modules=config.lora.target_modules,
        task_type="CAUSAL_LM",
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
                prune_resume_state(Path(args.output_dir), keep_latest=keep_resume_state)
            return control

    return PruneResumeState()


# --------------------------------------------------------------------------- resume state


def prune_resume_state(out_dir: Path, *, keep_latest: bool) -> None:
    """Delete the optimizer/scheduler/RNG state of every checkpoint (but the newest, with ``keep_latest``)."""
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


def resume_checkpoint(out_dir: Path) -> Path | None:
    """The newest complete checkpoint that still holds optimizer state, if any."""
    for _, path in reversed(list_checkpoints(out_dir)):
        if any(path.glob("optimizer*")) or any(path.glob("global_step*")):
            return path
    return None


def drop_incomplete_checkpoints(out_dir: Path) -> None:
    """Delete checkpoints a killed run left half-written (no ``trainer_state.json`` yet)."""
    complete = {p for _, p in list_checkpoints(out_dir)}
    for _, path in list_checkpoints(out_dir, complete_only=False):
        if path not in complete:
            shutil.rmtree(path, ignore_errors=True)


def tokens_seen(checkpoint: Path) -> int:
    """Training tokens (non-padding) the run had seen when it saved ``checkpoint``."""
    state = checkpoint / "trainer_state.json"
    return int(read_json(state).get("num_input_tokens_seen", 0) or 0) if state.exists() else 0
