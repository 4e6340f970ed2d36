"""Publishing a checkpoint as ``best/`` (flopmatch.training_selection), on checkpoint directories made
here: no training, no model."""

from __future__ import annotations

import json

from flopmatch.trained import MODEL_META_FILE, model_meta
from flopmatch.training_selection import best_checkpoint, publish_best


def fake_run(root, record: dict | None = None):
    """A training output directory with one checkpoint holding model files and resume state."""
    checkpoint = root / "checkpoint-6"
    (checkpoint / "global_step6").mkdir(parents=True)
    for name in ("model.safetensors", "config.json", "trainer_state.json", "optimizer.pt", "rng_state_0.pth"):
        (checkpoint / name).write_text(name)
    if record is not None:
        (root / "train_result.json").write_text(json.dumps(record))
    return checkpoint


def test_best_is_the_checkpoints_model_files_without_resume_state(tmp_path):
    checkpoint = fake_run(tmp_path)
    best = publish_best(tmp_path, checkpoint, 6, metric="pass@1", scores={3: 0.5, 6: 0.75}, key="k")
    assert sorted(p.name for p in best.iterdir()) == ["config.json", "model.safetensors"]
    assert (best / "model.safetensors").stat().st_ino == (checkpoint / "model.safetensors").stat().st_ino
    selection = json.loads((tmp_path / "selection.json").read_text())
    assert selection == {"key": "k", "metric": "pass@1", "scores": {"3": 0.5, "6": 0.75}, "best_step": 6,
                         "best_checkpoint": "checkpoint-6"}  # fmt: skip
    assert best_checkpoint({3: 0.75, 6: 0.75}) == 3  # a tie goes to the earlier checkpoint


def test_publishing_updates_the_runs_record_and_model_meta(tmp_path):
    record = {"base_model": "base", "lora": False, "data_dir": "/data/sft", "prompt_configs": {"gsm8k": {"a": 1}},
              "best": None, "validation_scores": {}, "config": {"seed": 0}}  # fmt: skip
    checkpoint = fake_run(tmp_path, record)
    publish_best(tmp_path, checkpoint, 6, metric="pass@1", scores={6: 1.0}, prompt_configs={"other": {}})
    updated = json.loads((tmp_path / "train_result.json").read_text())
    assert updated["best"] == str(tmp_path / "best") and updated["validation_scores"] == {"6": 1.0}
    assert updated["config"] == {"seed": 0}  # the rest of the record stays
    # the run's own prompt configs win over the ones selection was given
    assert model_meta(tmp_path) == {"trained": True, "base_model": "base", "lora": False, "data_dir": "/data/sft",
                                    "prompt_configs": {"gsm8k": {"a": 1}}}  # fmt: skip


def test_a_record_without_data_dir_and_prompts_still_publishes(tmp_path):
    """Records an older train() rewrote without data_dir and prompt_configs (a finished run selected later)."""
    record = {"base_model": "base", "lora": True, "best": None, "validation_scores": {}}
    checkpoint = fake_run(tmp_path, record)
    publish_best(tmp_path, checkpoint, 6, metric="pass@1", scores={6: 1.0}, prompt_configs={"gsm8k": {"b": 2}})
    meta = json.loads((tmp_path / "best" / MODEL_META_FILE).read_text())
    assert meta == {"base_model": "base", "lora": True, "data_dir": None, "prompt_configs": {"gsm8k": {"b": 2}}}
