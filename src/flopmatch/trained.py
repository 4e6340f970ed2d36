"""The layout of a fine-tuning output directory, which training writes and evaluation reads: its files,
its ``checkpoint-N`` folders, the selected ``best/`` model and the record left next to it. Imports no
training or evaluation code, so neither imports the other for it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from flopmatch.errors import FlopmatchError
from flopmatch.store import read_json, write_json


class AdapterConfigError(FlopmatchError, ValueError):
    """A LoRA adapter directory whose ``adapter_config.json`` does not name its base model."""

TRAIN_RESULT_FILE = "train_result.json"
SELECTION_FILE = "selection.json"
MODEL_META_FILE = "flopmatch_model.json"
"""Written into ``best/``: base model, LoRA or not, and the prompt configs (per dataset) of the training data."""

CHECKPOINT_PREFIX = "checkpoint-"
HASH_MARKER = ".flopmatch_train_hash"  # identity of the run that owns an output directory
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
"""Files and directories in a checkpoint that only serve to resume training (never needed to load a model)."""


def list_checkpoints(out_dir: str | Path, *, complete_only: bool = True) -> list[tuple[int, Path]]:
    """(step, path) of every checkpoint in ``out_dir``, by step. A checkpoint is complete once the
    trainer has written its ``trainer_state.json`` (the last file of a save)."""
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        return []
    found = []
    for path in out_dir.iterdir():
        if path.is_dir() and path.name.startswith(CHECKPOINT_PREFIX):
            suffix = path.name[len(CHECKPOINT_PREFIX) :]
            if suffix.isdigit() and (not complete_only or (path / "trainer_state.json").exists()):
                found.append((int(suffix), path))
    return sorted(found)


def checkpoint_step(path: str | Path) -> int:
    """The optimizer step of a ``checkpoint-<step>`` directory."""
    return int(Path(path).name[len(CHECKPOINT_PREFIX) :])


def is_adapter_dir(path: str | Path) -> bool:
    return (Path(path) / "adapter_config.json").exists()


def resolve_trained_model(path: str | Path) -> tuple[str, str | None]:
    """(model to load, LoRA adapter path or None) for a directory from :func:`train` or any HF model.

    A LoRA adapter directory names its base model in ``adapter_config.json``; an output directory of
    :func:`train` resolves to its ``best/``.
    """
    path = Path(path)
    if path.is_dir() and (path / "best").is_dir() and (path / TRAIN_RESULT_FILE).exists():
        path = path / "best"
    if path.is_dir() and is_adapter_dir(path):
        base = read_json(path / "adapter_config.json").get("base_model_name_or_path")
        if not base:
            raise AdapterConfigError("no base_model_name_or_path", file=path / "adapter_config.json")
        return str(base), str(path)
    return str(path), None


def train_record(path: str | Path) -> Path | None:
    """The ``train_result.json`` of a model :func:`train` made: in ``path`` (a training output directory) or
    beside it (``path`` is its ``best/``); None for a model it did not train."""
    path = Path(path)
    return next((r for r in (path / TRAIN_RESULT_FILE, path.parent / TRAIN_RESULT_FILE) if r.exists()), None)


def model_meta(path: str | Path) -> dict[str, Any]:
    """The record :func:`train` leaves next to a trained model; empty for models it did not train.

    Found in ``path`` itself, in ``path/best`` (a training output directory), or — for a
    ``checkpoint-N`` inside a training output — the run's record (at least ``{"trained": True}``).
    """
    path = Path(path)
    for candidate in (path / MODEL_META_FILE, path / "best" / MODEL_META_FILE):
        if candidate.exists():
            return {"trained": True, **read_json(candidate)}
    parent = path.parent
    if path.name.startswith(CHECKPOINT_PREFIX) and (parent / HASH_MARKER).exists():
        result = parent / TRAIN_RESULT_FILE
        record = read_json(result) if result.exists() else {}
        return {"trained": True, "prompt_configs": record.get("prompt_configs")}
    return {}


def write_model_meta(
    best: Path | None, *, base_model: str, lora: bool, data_dir: str | Path | None, prompt_configs: Any
) -> None:
    """Leave the record :func:`model_meta` reads in a published ``best/`` (nothing when there is none)."""
    if best is None:
        return
    write_json(
        {"base_model": base_model, "lora": lora, "data_dir": str(data_dir) if data_dir is not None else None,
         "prompt_configs": prompt_configs},
        best / MODEL_META_FILE,
    )  # fmt: skip
