"""What one fine-tuning run is configured with (:class:`TrainConfig`, :class:`LoraSettings`), the
schedule those settings imply (its optimizer steps, its checkpoint steps and its warmup steps) and the
errors a run raises for bad input. Pure: imports no flopmatch module but :mod:`flopmatch.errors`."""

from __future__ import annotations

import math
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from flopmatch.errors import FlopmatchError


class TrainingError(FlopmatchError, ValueError):
    """Input a training run cannot use: SFT data of the wrong shape or empty, validation problems that
    are also training problems, chat data for a model without a chat template, no validation problems."""


class TrainingInputMissing(FlopmatchError, FileNotFoundError):
    """A directory a run needs is not there: the SFT dataset, or checkpoints to select from."""


class OutDirInUse(FlopmatchError, FileExistsError):
    """The output directory holds checkpoints of another training run."""


class LoraSettings(BaseModel):
    """LoRA adapter (peft). Defaults are the common choice for instruction tuning of 0.5-30B models."""

    model_config = ConfigDict(extra="forbid", frozen=True)

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

    ``warmup_ratio`` is a fraction of the run's optimizer steps; the trainer gets the whole number of
    steps it stands for (:func:`warmup_steps`).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    learning_rate: float = Field(1e-6, gt=0, description="peak learning rate (paper grid: 1e-7, 5e-7, 1e-6)")
    lr_scheduler_type: str = Field("cosine", description="transformers scheduler name after the warmup")
    warmup_ratio: float = Field(
        0.03,
        ge=0.0,
        lt=1.0,
        description="fraction of the optimizer steps with linear warmup (rounded up to steps)",
    )
    weight_decay: float = Field(0.0, ge=0.0)
    max_grad_norm: float = Field(1.0, gt=0)
    per_device_batch_size: int = Field(8, ge=1)
    gradient_accumulation_steps: int = Field(4, ge=1, description="effective batch = this x batch x devices")
    num_train_epochs: float = Field(3.0, gt=0, description="used when max_steps is None")
    max_steps: int | None = Field(
        None, ge=1, description="optimizer steps; overrides epochs (paper: 600 low budget)"
    )
    max_length: int = Field(
        2048, ge=8, description="tokens per example (prompt + completion); longer are cut"
    )
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
        return cls.from_preset("tiny-cpu", **overrides)

    @classmethod
    def from_preset(cls, preset: str, **overrides: Any) -> TrainConfig:
        """The settings of ``preset`` (a :data:`PRESETS` name) with ``overrides`` on top."""
        if preset not in PRESETS:
            raise TrainingError(f"unknown training preset {preset!r}; expected one of {', '.join(PRESETS)}")
        return cls(**{**PRESETS[preset], **overrides})


#: Named starting points for :class:`TrainConfig` (the study's ``training.preset``): ``default`` is the
#: paper's setup (the field defaults); ``tiny-cpu`` fits models of a few million parameters on CPU.
PRESETS: dict[str, dict[str, Any]] = {
    "default": {},
    "tiny-cpu": dict(
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
    ),
}


def total_steps(n_examples: int, config: TrainConfig, world_size: int = 1) -> int:
    """Optimizer steps a run will take, as transformers computes them: ``max_steps``, or the epochs times
    the optimizer steps of one epoch (batches of ``per_device_batch_size x world_size`` examples, the last
    one partial, ``gradient_accumulation_steps`` batches a step, the last step partial)."""
    if config.max_steps is not None:
        return config.max_steps
    batches = math.ceil(n_examples / (config.per_device_batch_size * world_size))
    per_epoch = max(1, math.ceil(batches / config.gradient_accumulation_steps))
    return max(1, math.ceil(per_epoch * config.num_train_epochs))


def warmup_steps(n_steps: int, warmup_ratio: float) -> int:
    """Optimizer steps of linear warmup in a run of ``n_steps``: ``warmup_ratio`` of them, rounded up
    (the rounding transformers applies to a fractional warmup)."""
    if not 0.0 <= warmup_ratio < 1.0:
        raise ValueError(f"warmup_ratio must be in [0, 1), got {warmup_ratio}")
    return math.ceil(n_steps * warmup_ratio)


def checkpoint_steps(total_steps: int, n: int) -> list[int]:
    """The N evenly spaced optimizer steps at which to save: round(i * T / N) for i = 1..N.

    The last is always T (the end of training). With fewer steps than checkpoints every step is saved.
    """
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1, got {total_steps}")
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    return sorted({max(1, round(i * total_steps / n)) for i in range(1, n + 1)})
