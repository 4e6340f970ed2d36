"""Study config validation and the orchestrator (stage skipping, resume, --only/--force) on real parts."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from flopmatch.study import (
    StudyConfig,
    StudyConfigError,
    apply_overrides,
    expand_env,
    load_study_config,
    validate_study_dict,
)

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"

MINIMAL = {
    "name": "t",
    "problems": {"sample": {"source": "toyworld", "split": "train", "limit": 10}},
    "models": {"wc": {"model": "toyworld-wc"}, "se": {"model": "toyworld-se"}},
    "training": {"enabled": False},
}


def _write(tmp_path: Path, data: dict | str, name: str = "study.yaml") -> Path:
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data, sort_keys=False))
    return path


def _error(tmp_path: Path, data: dict | str) -> str:
    with pytest.raises(StudyConfigError) as info:
        load_study_config(_write(tmp_path, data))
    return str(info.value)


# --------------------------------------------------------------------------- validation messages


def test_minimal_config_gets_documented_defaults(tmp_path):
    config = load_study_config(_write(tmp_path, MINIMAL))
    assert config.budget.se_samples == [1, 10]
    assert config.budget.mode == "flops"
    assert config.sampling.temperature == 0.7
    assert config.models.wc.backend == "vllm"


def test_unknown_key_is_named_with_a_suggestion_and_its_line(tmp_path):
    text = yaml.safe_dump(MINIMAL, sort_keys=False) + "sampling:\n  temprature: 0.5\n"
    message = _error(tmp_path, text)
    assert "sampling.temprature: unknown key" in message
    assert "did you mean `temperature`" in message
    line = text.splitlines().index("  temprature: 0.5") + 1
    assert f"study.yaml:{line}: sampling.temprature" in message


def test_wrong_enum_names_key_value_and_choices(tmp_path):
    data = {**MINIMAL, "models": {"wc": {"model": "a", "backend": "vlm"}, "se": {"model": "b"}}}
    message = _error(tmp_path, data)
    assert "models.wc.backend" in message and "'vlm'" in message
    assert "vllm" in message and "hf" in message and "openai" in message


def test_missing_key_says_what_is_expected(tmp_path):
    data = {**MINIMAL, "models": {"wc": {"model": "a"}, "se": {"backend": "hf"}}}
    message = _error(tmp_path, data)
    assert "models.se.model: required key is missing" in message
    assert "Hugging Face id" in message


def test_bad_source_and_limit_and_budgets_are_all_reported_at_once(tmp_path):
    data = {
        **MINIMAL,
        "problems": {"sample": {"source": "gsm9k", "limit": 0}},
        "budget": {"se_samples": [3, 3]},
    }
    message = _error(tmp_path, data)
    assert "3 problems" in message
    assert "problems.sample.source: unknown problem source 'gsm9k'" in message
    assert "problems.sample.limit" in message and "positive" in message
    assert "budget.se_samples: budgets must be distinct" in message


def test_budgets_are_sorted(tmp_path):
    config = load_study_config(_write(tmp_path, {**MINIMAL, "budget": {"se_samples": [10, 1]}}))
    assert config.budget.se_samples == [1, 10]


def test_cross_field_rules(tmp_path):
    price = {**MINIMAL, "budget": {"mode": "price"}}
    assert "price_per_token" in _error(tmp_path, price)
    kd = {
        **MINIMAL,
        "problems": {**MINIMAL["problems"], "test": {"source": "toyworld", "split": "test"}},
        "training": {"enabled": True},
    }
    assert "paradigms.student is not set" in _error(tmp_path, kd)
    no_test = {**MINIMAL, "training": {"enabled": True}, "paradigms": {"knowledge_distillation": False}}
    assert "problems.test is not set" in _error(tmp_path, no_test)


def test_validation_split_is_holdout_or_source_not_both(tmp_path):
    both = {
        **MINIMAL,
        "problems": {**MINIMAL["problems"], "validation": {"holdout": 5, "source": "toyworld"}},
    }
    assert "either `holdout: N`" in _error(tmp_path, both)
    config = load_study_config(
        _write(tmp_path, {**MINIMAL, "problems": {**MINIMAL["problems"], "validation": {"holdout": 5}}})
    )
    assert config.problems.validation.holdout == 5


def test_yaml_syntax_error_names_the_line(tmp_path):
    message = _error(tmp_path, "name: x\nproblems: [unclosed\nmodels: {}\n")
    assert "not valid YAML" in message and "study.yaml:" in message


def test_not_a_mapping_and_unreadable(tmp_path):
    assert "mapping of sections" in _error(tmp_path, "- just\n- a list\n")
    with pytest.raises(StudyConfigError, match="cannot read"):
        load_study_config(tmp_path / "absent.yaml")


def test_bad_name_is_rejected(tmp_path):
    assert "not a usable directory name" in _error(tmp_path, {**MINIMAL, "name": "../escape"})


# --------------------------------------------------------------------------- paths, env, overrides


def test_relative_paths_resolve_against_the_config_file(tmp_path):
    sub = tmp_path / "cfg"
    sub.mkdir()
    data = {
        **MINIMAL,
        "run_dir": "../runs/x",
        "problems": {"sample": {"source": "gsm8k", "data_file": "../data/train.jsonl"}},
        "models": {"wc": {"model": "./models/wc"}, "se": {"model": "Qwen/Qwen2.5-1.5B"}},
    }
    config = load_study_config(_write(sub, data))
    assert config.problems.sample.data_file == str((tmp_path / "data" / "train.jsonl").resolve())
    assert config.run_dir == str((tmp_path / "runs" / "x").resolve())
    assert config.models.wc.model == str((sub / "models" / "wc").resolve())
    assert config.models.se.model == "Qwen/Qwen2.5-1.5B"  # a hub id is left alone


def test_env_expansion_with_defaults_and_missing():
    assert expand_env("${D:-/x}/a", {}) == "/x/a"
    assert expand_env("${D:-/x}/a", {"D": "/y"}) == "/y/a"
    assert expand_env("$D/a", {"D": "/y"}) == "/y/a"
    with pytest.raises(StudyConfigError, match=r"\$D is not set"):
        expand_env("$D/a", {})


def test_overrides_parse_yaml_values(tmp_path):
    data = apply_overrides(
        MINIMAL, ["training.enabled=true", "budget.se_samples=[1,3]", "sampling.top_p=0.9"]
    )
    assert data["training"]["enabled"] is True and data["budget"]["se_samples"] == [1, 3]
    assert MINIMAL["training"]["enabled"] is False  # the input is not mutated
    config = load_study_config(_write(tmp_path, MINIMAL), overrides=["problems.sample.limit=3"])
    assert config.problems.sample.limit == 3
    with pytest.raises(StudyConfigError, match="key.path=value"):
        apply_overrides(MINIMAL, ["nonsense"])


def test_resolved_config_round_trips_through_yaml(tmp_path):
    config = load_study_config(_write(tmp_path, MINIMAL))
    again = validate_study_dict(yaml.safe_load(yaml.safe_dump(config.model_dump(mode="json"))))
    assert again == config


# --------------------------------------------------------------------------- shipped examples


@pytest.mark.parametrize("name", ["toyworld.yaml", "gsm8k-qwen-coder.yaml", "gemma2-math.yaml"])
def test_examples_validate(name):
    config = load_study_config(EXAMPLES / name)
    assert isinstance(config, StudyConfig)


def test_gsm8k_example_reads_shared_data_and_keeps_training_behind_a_flag(monkeypatch):
    monkeypatch.delenv("FLOPMATCH_DATA", raising=False)
    config = load_study_config(EXAMPLES / "gsm8k-qwen-coder.yaml")
    assert config.training.enabled is False
    assert config.problems.sample.data_file == str(REPO.parent / "shared" / "data" / "gsm8k" / "train.jsonl")
    assert load_study_config(EXAMPLES / "gsm8k-qwen-coder.yaml", ["training.enabled=true"]).training.enabled


def test_packaged_demo_config_is_the_example():
    from importlib.resources import files

    packaged = files("flopmatch").joinpath("configs/toyworld.yaml").read_text()
    assert packaged == (EXAMPLES / "toyworld.yaml").read_text()
