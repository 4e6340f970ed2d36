"""flopmatch.study.config_library: the study's ``judge.spec``, ``training.options`` and ``sampling.prompt`` are the
library's JudgeSpec, TrainConfig and PromptConfig once read, and still hash and freeze as the file wrote them.

The digests below were computed with the code before these fields were typed (commit 670fb91, when they were
plain mappings): a typed dump would hash ``learning_rate: 1e-4`` (a string to YAML) as 0.0001, ``temperature: 0``
as 0.0 and every preset value the file leaves out, and so make the finished runs of such files stale.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from flopmatch.judge import JudgeSpec
from flopmatch.prompts import PromptConfig
from flopmatch.stage_names import STAGE_NAMES
from flopmatch.store import RunDir
from flopmatch.study import StudyContext, freeze_config, stage_digest
from flopmatch.study.config import StudyConfigError, load_study_config
from flopmatch.study.config_library import JudgeConfig, SamplingConfig, TrainingConfig
from flopmatch.training import LoraSettings, TrainConfig

STUDY = """\
name: edge
problems: {sample: {source: toyworld, split: train, limit: 12}, test: {source: toyworld, split: test, limit: 6}}
models: {wc: {model: toyworld-wc, backend: hf}, se: {model: toyworld-se, backend: hf}}
paradigms: {knowledge_distillation: false, number_matched: []}
"""
#: section text -> (the stage whose digest hashes it, its digest at 670fb91)
WRITTEN = {
    "training": (
        "training:\n  preset: tiny-cpu\n  seeds: [0, 1]\n"
        "  options: {learning_rate: 1e-4, num_train_epochs: 3, lora: {r: 8}}\n",
        "train",
        "c541639abc56832f",
    ),
    "judge": (
        "judge:\n  spec: {backend: vllm, model: qwen2.5-coder-1.5b-instruct, temperature: 0, "
        "options: {dtype: bfloat16}}\n",
        "judge",
        "4a5f076656f74f6b",
    ),
    "judge-text": ("judge:\n  spec: vllm:qwen2.5-coder-1.5b-instruct\n", "judge", "698335bfad182c06"),
    "prompt": ("sampling:\n  max_tokens: 96\n  prompt: {shots: 2, style: toyworld}\n", "sample", "18cae4947d6eaee4"),
}
DONE = {s: {"status": "done", "outputs": {f"{s}/out": f"fp-{s}"}} for s in STAGE_NAMES}


def _load(tmp_path: Path, section: str):
    path = tmp_path / "study.yaml"
    path.write_text(STUDY + section)
    return load_study_config(path)


@pytest.mark.parametrize("case", list(WRITTEN))
def test_typed_sections_hash_and_freeze_as_written(tmp_path, case):
    """The stage digest is the one of the untyped code, and so is the digest of the frozen study.yaml read back
    (what `flopmatch status` computes for a finished run)."""
    section, stage, expected = WRITTEN[case]
    config = _load(tmp_path, section)
    run = RunDir(tmp_path / "run")
    assert stage_digest(StudyContext(config=config, run=run, log=print), stage, DONE) == expected
    freeze_config(config, run)
    frozen = load_study_config(run.study_path)
    assert stage_digest(StudyContext(config=frozen, run=run, log=print), stage, DONE) == expected
    assert frozen == config


def test_the_sections_are_the_library_configs(tmp_path):
    training = _load(tmp_path, WRITTEN["training"][0]).training
    assert isinstance(training.options, TrainConfig)
    assert training.options.learning_rate == 1e-4 and training.options.num_train_epochs == 3.0
    assert training.options.lora == LoraSettings(r=8)
    # the preset's settings under the file's: what a run trains with, short of its seed and steps
    assert training.options == TrainConfig.tiny_cpu(learning_rate=1e-4, num_train_epochs=3, lora={"r": 8})
    assert training.train_config(study_seed=5) == training.options.model_copy(update={"seed": 5})
    assert "learning_rate: 1e-4" in yaml.safe_dump(training.model_dump(mode="json"))  # as written

    spec = _load(tmp_path, WRITTEN["judge"][0]).judge.spec
    assert spec == JudgeSpec(backend="vllm", model="qwen2.5-coder-1.5b-instruct", options={"dtype": "bfloat16"})
    assert _load(tmp_path, WRITTEN["judge-text"][0]).judge.spec == JudgeSpec(
        backend="vllm", model="qwen2.5-coder-1.5b-instruct"
    )
    assert JudgeConfig().spec == JudgeSpec(backend="toyworld-checker")

    prompt = _load(tmp_path, WRITTEN["prompt"][0]).sampling.prompt
    assert prompt == PromptConfig(shots=2, style="dataset") and prompt.model_fields_set == {"shots", "style"}
    assert SamplingConfig().prompt is None and SamplingConfig(prompt={}).prompt is None  # the dataset's own


def test_a_python_config_object_counts_as_the_fields_it_sets():
    """Given in Python, a TrainConfig overrides the preset with the fields it sets, and hashes as a file
    writing those fields would."""
    given = TrainingConfig(preset="tiny-cpu", options=TrainConfig(learning_rate=0.01, max_steps=4))
    written = TrainingConfig(preset="tiny-cpu", options={"learning_rate": 0.01, "max_steps": 4})
    assert given == written and given.options == TrainConfig.tiny_cpu(learning_rate=0.01, max_steps=4)
    assert given.model_dump(mode="json")["options"] == {"learning_rate": 0.01, "max_steps": 4}
    assert TrainingConfig().model_dump(mode="json")["options"] == {}


def test_the_seed_is_set_in_one_place():
    assert TrainingConfig(options={"seed": 7}).default_seed(study_seed=0) == 7
    assert TrainingConfig().default_seed(study_seed=3) == 3  # TrainConfig's own default is not a choice
    with pytest.raises(ValueError, match="training.seeds or in training.options.seed, not both"):
        TrainingConfig(seeds=[0, 1], options={"seed": 7})


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ("judge:\n  spec: {backend: openai, model: m, base_url: 'http://x'}\n",
         "judge.spec.base_url: unknown key; expected one of: backend, model"),
        ("judge:\n  spec: {backend: vlm, model: m}\n", "judge.spec.backend: Input should be 'vllm', 'hf'"),
        ("judge:\n  spec: {backend: hf}\n", "judge backend 'hf' needs a model (judge.spec.model in a study"),
        ("judge:\n  spec: {backend: hf, model: m, max_tokens: 0}\n", "judge.spec.max_tokens: Input should be greater"),
        ("training:\n  options: {learning_rate: fast}\n", "training.options.learning_rate: Input should be a valid number"),
        ("training:\n  options: 5\n", "training.options: Input should be a valid dictionary"),
        ("training:\n  options: {lora: {rank: 8}}\n", "training.options.lora.rank: unknown key; expected one of: r, alpha"),
        ("sampling:\n  prompt: null\n", "sampling.prompt: null is not a prompt: omit `prompt` for the dataset's default"),
    ],
    ids=["judge-unknown", "judge-backend", "judge-model", "judge-tokens", "train-value", "train-type", "lora-key",
         "prompt-null"],  # fmt: skip
)
def test_a_wrong_library_setting_is_named_with_its_file_line_and_key(tmp_path, section, message):
    with pytest.raises(StudyConfigError) as caught:
        _load(tmp_path, section)
    text = str(caught.value)
    assert message in text and "study.yaml:" in text


def test_the_sampling_section_is_the_engines_sampling_params(tmp_path):
    """Same fields, defaults and checks as flopmatch.backends.SamplingParams (the section adds how to run)."""
    from flopmatch.backends import SamplingParams

    section = SamplingConfig(temperature=1, stop=["\n\n"], replicas=2)
    assert isinstance(section, SamplingParams)
    assert section.params() == SamplingParams(temperature=1.0, stop=("\n\n",))
    assert type(section.params()) is SamplingParams  # what a sample set records: the engine's fields only
    with pytest.raises(StudyConfigError, match=r"sampling.top_p: top_p must be in \(0, 1\], got 0.0"):
        _load(tmp_path, "sampling:\n  top_p: 0\n")


def test_a_copy_that_changes_a_typed_field_is_read_again():
    """model_copy(update=...) of a typed field (or the preset it is resolved against) types, resolves and dumps
    the new value, so the run trains with what its digest hashes."""
    training = TrainingConfig(preset="tiny-cpu", options={"learning_rate": 1e-4})
    faster = training.model_copy(update={"options": {"learning_rate": 0.5}})
    assert faster.options == TrainConfig.tiny_cpu(learning_rate=0.5)
    assert faster.model_dump(mode="json")["options"] == {"learning_rate": 0.5}
    paper = training.model_copy(update={"preset": "default"})
    assert paper.options == TrainConfig(learning_rate=1e-4) and not paper.options.use_cpu
    assert training.model_copy(update={"enabled": False}).options == training.options  # untyped field: a copy
    judge = JudgeConfig().model_copy(update={"spec": "vllm:m"})
    assert judge.spec == JudgeSpec(backend="vllm", model="m") and judge.model_dump(mode="json")["spec"] == "vllm:m"
    assert SamplingConfig().model_copy(update={"prompt": {"shots": 2}}).prompt == PromptConfig(shots=2)
