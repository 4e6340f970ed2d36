"""The layout of a fine-tuning output directory (flopmatch.trained), on directories made here."""

from __future__ import annotations

import json

import pytest

from flopmatch.trained import (
    HASH_MARKER,
    AdapterConfigError,
    checkpoint_step,
    list_checkpoints,
    model_meta,
    resolve_trained_model,
    write_model_meta,
)


def test_checkpoints_are_listed_by_step_and_complete_once_their_state_is_written(tmp_path):
    for step in (10, 2, 100):
        (tmp_path / f"checkpoint-{step}").mkdir()
        (tmp_path / f"checkpoint-{step}" / "trainer_state.json").write_text("{}")
    (tmp_path / "checkpoint-200").mkdir()  # a save still in progress
    (tmp_path / "checkpoint-x").mkdir()
    assert [s for s, _ in list_checkpoints(tmp_path)] == [2, 10, 100]
    assert [s for s, _ in list_checkpoints(tmp_path, complete_only=False)] == [2, 10, 100, 200]
    assert [checkpoint_step(p) for _, p in list_checkpoints(tmp_path)] == [2, 10, 100]


def test_model_meta_reads_what_training_writes(tmp_path):
    best = tmp_path / "best"
    best.mkdir()
    write_model_meta(best, base_model="b", lora=False, data_dir=tmp_path / "sft", prompt_configs={"x": 1})
    expected = {"trained": True, "base_model": "b", "lora": False, "data_dir": str(tmp_path / "sft"),
                "prompt_configs": {"x": 1}}  # fmt: skip
    assert model_meta(best) == expected and model_meta(tmp_path) == expected
    write_model_meta(None, base_model="b", lora=False, data_dir=None, prompt_configs=None)  # nothing published
    # a checkpoint of a training output: the run's record
    (tmp_path / HASH_MARKER).write_text("h\n")
    (tmp_path / "train_result.json").write_text(json.dumps({"prompt_configs": {"y": 2}}))
    assert model_meta(tmp_path / "checkpoint-3") == {"trained": True, "prompt_configs": {"y": 2}}
    assert model_meta(tmp_path / "elsewhere") == {}


def test_a_training_output_resolves_to_its_best_and_an_adapter_to_its_base(tmp_path):
    (tmp_path / "best").mkdir()
    (tmp_path / "train_result.json").write_text("{}")
    assert resolve_trained_model(tmp_path) == (str(tmp_path / "best"), None)
    (tmp_path / "best" / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "base/m"}))
    assert resolve_trained_model(tmp_path) == ("base/m", str(tmp_path / "best"))
    assert resolve_trained_model("org/model") == ("org/model", None)
    (tmp_path / "best" / "adapter_config.json").write_text(json.dumps({"r": 8}))
    with pytest.raises(AdapterConfigError, match=r"best/adapter_config.json: no base_model_name_or_path") as info:
        resolve_trained_model(tmp_path)
    assert isinstance(info.value, ValueError)  # what Python callers caught before
