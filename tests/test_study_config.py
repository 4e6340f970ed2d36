"""The study's config sections are the library's configs, and folding them in changed no digest.

The section hashes below were computed with ``config_hash`` at commit a364161, before the study's
``evaluation`` section became ``flopmatch.evaluation.EvalConfig`` and ``sampling`` took its defaults from
``SamplingParams``: the orchestrator hashes these sections into the stage digests, so a changed hash would
make every finished run stale. (Test of ``flopmatch.study.config`` and ``flopmatch.study.config_yaml``;
loading and error messages end to end are in tests/test_study.py.)
"""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest
import yaml

from flopmatch.backends.base import SamplingParams
from flopmatch.evaluation import EvalConfig, evaluate
from flopmatch.store import config_hash
from flopmatch.study.config import (
    EvaluationConfig,
    SamplingConfig,
    StudyConfig,
    StudyConfigError,
    apply_overrides,
    demo_config,
    expand_env,
    validate_study_dict,
)
from flopmatch.study.config_yaml import describe_validation_error, read_yaml_mapping, yaml_line

ROOT = Path(__file__).resolve().parents[1]
SECTIONS = (
    "problems",
    "models",
    "budget",
    "sampling",
    "grading",
    "judge",
    "analysis",
    "paradigms",
    "training",
)
TOYWORLD = {
    "problems": "7a70d78982741c9f",
    "models": "3fb375dab5ff25cd",
    "budget": "ae875a6d916d8edf",
    "sampling": "0fab4a19e0eba824",
    "grading": "b68d8ccdb8285390",
    "judge": "ceb275bba3dccea1",
    "analysis": "02cc7cbcf5c7032b",
    "paradigms": "498650b9a0f8f30c",
    "training": "5143f1d484bc5fb8",
    "evaluation": "ef8e499a4e6dfe64",
    "study": "a766694873a8b4e3",
}
#: Each file's section hashes (paths resolved against /pinned/examples, FLOPMATCH_DATA unset).
PINNED = {
    "examples/gemma2-math.yaml": {
        "problems": "7115485ab66bb696",
        "models": "bdabf84cc161534e",
        "budget": "49a9f70298921b6e",
        "sampling": "b1048047d8882428",
        "grading": "3b318441628febe2",
        "judge": "af65fbc6cc78a85b",
        "analysis": "cd77016ce41deeed",
        "paradigms": "44f0e3e10f571665",
        "training": "c27eb497e68b4ebe",
        "evaluation": "5959a8697818b081",
        "study": "87928af95c578721",
    },
    "examples/gsm8k-qwen-coder.yaml": {
        "problems": "f034c3dda1f2d46e",
        "models": "b8a59ec6a4d6c4ac",
        "budget": "0cbd1c69e08d7789",
        "sampling": "da67daa2a546d934",
        "grading": "b68d8ccdb8285390",
        "judge": "8bac3d3f55dda5e2",
        "analysis": "02cc7cbcf5c7032b",
        "paradigms": "65bd18cdaa67b98d",
        "training": "42790a8b0dbb9359",
        "evaluation": "ced4ab22270df10b",
        "study": "ecd284e96f39af94",
    },
    "examples/toyworld-allocation.yaml": {
        "problems": "42684bb81a693b75",
        "models": "3fb375dab5ff25cd",
        "budget": "b6000a1e4e1cd0a6",
        "sampling": "5e45159e3fbc1e86",
        "grading": "b68d8ccdb8285390",
        "judge": "ceb275bba3dccea1",
        "analysis": "02cc7cbcf5c7032b",
        "paradigms": "d23ab8dae01fc0c1",
        "training": "c900f1db8a63ccac",
        "evaluation": "ef8e499a4e6dfe64",
        "study": "17bb0ba2c8c9ce85",
    },
    "examples/toyworld.yaml": TOYWORLD,
    "src/flopmatch/configs/toyworld.yaml": TOYWORLD,
}


def _hashes(config: StudyConfig) -> dict[str, str]:
    out = {name: config_hash(getattr(config, name)) for name in (*SECTIONS, "evaluation")}
    return {**out, "study": config_hash(config)}


@pytest.mark.parametrize("name", sorted(PINNED))
def test_every_section_hashes_as_before_the_fold(name, monkeypatch):
    monkeypatch.delenv("FLOPMATCH_DATA", raising=False)
    data = yaml.safe_load((ROOT / name).read_text(encoding="utf-8"))
    config = validate_study_dict(data, base_dir=Path("/pinned/examples"))
    assert _hashes(config) == PINNED[name]


def test_the_demo_hashes_as_before_the_fold():
    assert _hashes(demo_config()) == TOYWORLD  # the toy world's study has no paths to resolve


def test_default_sections_hash_as_before_the_fold():
    assert config_hash(EvaluationConfig()) == "37d5856bc16b7834"
    assert EvaluationConfig().model_dump(mode="json") == {
        "backend": "vllm",
        "backend_options": {},
        "n": 4,
        "temperature": 0.7,
        "max_tokens": None,
        "baselines": True,
    }
    custom = EvaluationConfig(
        max_tokens=256, baselines=False, backend="hf", n=8, temperature=1.0, backend_options={"a": 1}
    )
    assert config_hash(custom) == "47d49e662a142653"
    assert config_hash(SamplingConfig()) == "da67daa2a546d934"
    assert config_hash(SamplingConfig().digest_view()) == "86a6a4d9e99de007"


# --------------------------------------------------------------------------- the sections are the library's


def test_the_evaluation_section_is_the_librarys_eval_config():
    section = EvaluationConfig()
    assert isinstance(section, EvalConfig)
    assert set(EvalConfig.model_fields) <= set(EvaluationConfig.model_fields)
    assert set(EvaluationConfig.model_fields) - set(EvalConfig.model_fields) == {"baselines"}
    # the library's validation holds in the study too
    with pytest.raises(ValueError, match="every k must be >= 1"):
        EvaluationConfig(ks=[0, 4])
    with pytest.raises(ValueError, match="greater than 0"):
        EvaluationConfig(temperature=0)


def test_a_default_section_evaluates_as_the_study_always_did():
    """evaluate()'s own defaults for what the study did not set before (ks, top_p, greedy); the study's
    seed and sampling.max_tokens where the section gives none."""
    kwargs = EvaluationConfig().evaluate_kwargs(seed=7, max_tokens=128)
    defaults = {
        name: p.default
        for name, p in inspect.signature(evaluate).parameters.items()
        if name in ("ks", "top_p", "greedy")
    }
    assert {k: kwargs[k] for k in defaults} == {"ks": tuple(defaults["ks"]), "top_p": 1.0, "greedy": True}
    assert kwargs["seed"] == 7 and kwargs["max_tokens"] == 128
    assert kwargs["backend"] == "vllm" and kwargs["n"] == 4 and kwargs["temperature"] == 0.7
    assert set(kwargs) <= set(inspect.signature(evaluate).parameters)
    # (built without validation: the study refuses these four until its eval stage passes them on)
    given = EvaluationConfig.model_construct(seed=3, max_tokens=64, ks=(1, 4), greedy=False)
    given = given.evaluate_kwargs(seed=7, max_tokens=128)
    assert (given["seed"], given["max_tokens"], given["ks"], given["greedy"]) == (3, 64, (1, 4), False)


def test_fields_the_section_gained_count_when_set():
    """ks, top_p, greedy and seed are dumped (so hashed into the eval digest) only when not the default."""
    base = config_hash(EvaluationConfig())
    for update in ({"ks": (1, 4)}, {"top_p": 0.9}, {"greedy": False}, {"seed": 1}):
        section = EvaluationConfig.model_construct(**update)
        assert set(update) <= set(section.model_dump())
        assert config_hash(section) != base
    assert config_hash(EvaluationConfig(ks=[16, 8, 4, 1])) == base  # the default, however written


def test_evaluation_settings_beyond_the_old_section_are_kept_and_default_to_nothing():
    """ks, top_p, greedy and seed load, reach evaluate_kwargs, and are dumped (so hashed) only when set."""
    config = demo_config(["evaluation.ks=[1,4]", "evaluation.top_p=0.9", "evaluation.greedy=false", "evaluation.seed=5"])
    assert {"ks", "top_p", "greedy", "seed"} <= set(config.evaluation.model_dump())
    assert config.evaluation.evaluate_kwargs(seed=0, max_tokens=64)["seed"] == 5
    assert not {"ks", "top_p", "greedy", "seed"} & set(demo_config().evaluation.model_dump())
    assert (
        demo_config(["evaluation.seed=null", "evaluation.top_p=1.0"]).evaluation == demo_config().evaluation
    )


def test_a_frozen_config_reloads_to_the_same_config():
    """What the orchestrator freezes in study.yaml (model_dump) loads back unchanged."""
    config = demo_config(["evaluation.max_tokens=64", "evaluation.baselines=false"])
    again = validate_study_dict(yaml.safe_load(yaml.safe_dump(config.model_dump(mode="json"))))
    assert again == config
    assert again.evaluation.max_tokens == 64 and not again.evaluation.baselines


def test_the_study_keeps_its_stricter_evaluation_settings():
    with pytest.raises(StudyConfigError, match="evaluation.backend"):
        demo_config(["evaluation.backend=openai"])
    with pytest.raises(StudyConfigError, match="evaluation.n"):
        demo_config(["evaluation.n=0"])
    with pytest.raises(StudyConfigError, match="evaluation.baseline: unknown key; did you mean `baselines`"):
        demo_config(["evaluation.baseline=false"])


def test_the_sampling_section_is_the_engines_sampling_params():
    section = SamplingConfig()
    assert section.params() == SamplingParams()
    custom = SamplingConfig(temperature=1.0, top_p=0.5, max_tokens=64, stop=["\n\n"])
    assert custom.params() == SamplingParams(temperature=1.0, top_p=0.5, max_tokens=64, stop=("\n\n",))


# --------------------------------------------------------------------------- config_yaml


def test_yaml_errors_name_the_line_of_any_model(tmp_path):
    from pydantic import BaseModel, ConfigDict, Field, ValidationError

    class Inner(BaseModel):
        model_config = ConfigDict(extra="forbid")
        size: int = Field(description="a whole number")

    class Outer(BaseModel):
        model_config = ConfigDict(extra="forbid")
        inner: Inner

    path = tmp_path / "c.yaml"
    path.write_text("# a comment\ninner:\n  sise: 3\n", encoding="utf-8")
    data, node = read_yaml_mapping(path)
    assert yaml_line(node, ("inner", "sise")) == 3
    with pytest.raises(ValidationError) as info:
        Outer.model_validate(data)
    message = describe_validation_error(info.value, Outer, source=str(path), node=node)
    assert f"{path}:3: inner.sise: unknown key; did you mean `size`?" in message
    # a missing key: the line of the mapping it belongs in
    assert f"{path}:3: inner.size: required key is missing; expected a whole number" in message


def test_read_yaml_mapping_refuses_what_is_not_a_mapping(tmp_path):
    path = tmp_path / "list.yaml"
    path.write_text("- a\n- b\n", encoding="utf-8")
    with pytest.raises(StudyConfigError, match="a study file is a mapping"):
        read_yaml_mapping(path)
    path.write_text("a: [1\n", encoding="utf-8")
    with pytest.raises(StudyConfigError, match="not valid YAML"):
        read_yaml_mapping(path)


def test_overrides_and_env_stay_importable_from_study_config():
    assert apply_overrides({"a": {"b": 1}}, ["a.c=[1, 2]"]) == {"a": {"b": 1, "c": [1, 2]}}
    assert expand_env("${X:-d}/$Y", {"Y": "y"}) == "d/y"


def test_a_toyworld_spec_is_the_toy_worlds_declared_variant_with_the_same_checks(tmp_path, monkeypatch):
    """The study builds `toyworld_spec` models through the toy world's declared builder: same size, same
    cache folder as ToyModelSpec gives directly, and the same messages for a spec that cannot be built."""
    from pydantic import ValidationError

    from flopmatch.store import model_key
    from flopmatch.study.config import ModelSpec
    from flopmatch.study.spec_models import spec_model
    from flopmatch.toyworld.models import model_path, toy_model_spec

    monkeypatch.setenv("FLOPMATCH_CACHE", str(tmp_path))
    values = {"hidden_size": 64, "num_layers": 2, "num_heads": 2, "intermediate_size": 256, "noise": {"false_positive_scale": 2}}
    built = spec_model("toyworld", model_key("tiny student"), values)
    assert built.parameters == toy_model_spec(values).n_params and built.parameters_source == "toy model spec"
    assert built.path() == model_path(model_key("tiny student"), spec=toy_model_spec(values))
    assert not built.is_prepared()  # nothing is trained by describing it
    with pytest.raises(ValidationError, match=r"unknown ToyModelSpec field\(s\) \['width'\]; expected some of"):
        ModelSpec(model="s", toyworld_spec={"width": 3})
    with pytest.raises(ValidationError, match="not a valid toy model: hidden_size 65 is not a multiple of num_heads 2"):
        ModelSpec(model="s", toyworld_spec={**values, "hidden_size": 65})
    assert ModelSpec(model="s", toyworld_spec=values).toyworld_spec == values  # kept as written (digests)

