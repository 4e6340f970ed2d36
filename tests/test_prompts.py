"""Few-shot prompts: the paper's shot counts, exemplars that never leak evaluated problems, the three
renderings, and real chat templates."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from pydantic import ValidationError

from flopmatch.problems import Problem
from flopmatch.prompts import (
    DEFAULT_INSTRUCTION,
    Exemplar,
    PromptConfig,
    build_prompt,
    default_prompt_config,
    packaged_exemplars,
    resolve,
    stop_sequences,
)
from offline_models import needs_offline_pair

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"

GSM = Problem("gsm8k-test-1", "gsm8k", "test", "Ann has 5 pens and buys 7 more. How many pens?", "12")
MATH = Problem("math500-7", "math500", "test", "Compute $3 \\cdot 4$.", "12", level="1", subject="Algebra")


def _normalise(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip().lower()


def test_paper_shot_counts_per_dataset():
    assert default_prompt_config("gsm8k").shots == 8
    assert default_prompt_config("math").shots == 4 and default_prompt_config("MATH500").shots == 4
    assert default_prompt_config("toyworld").style == "dataset"  # the toy world writes its own prompts
    other = default_prompt_config("my-local-set")
    assert (other.style, other.shots, other.exemplars) == ("chat", 0, ())
    for dataset, family in (("gsm8k", "gsm8k"), ("math500", "math")):
        assert (
            default_prompt_config(dataset).exemplars
            == packaged_exemplars()[family][: default_prompt_config(dataset).shots]
        )


def test_chat_prompt_is_multi_turn_few_shot():
    messages = build_prompt(GSM)
    assert isinstance(messages, list) and len(messages) == 2 * 8 + 1
    assert [m["role"] for m in messages] == ["user", "assistant"] * 8 + ["user"]
    assert messages[-1]["content"] == f"{GSM.question}\n\n{DEFAULT_INSTRUCTION}"
    shots = packaged_exemplars()["gsm8k"]
    assert (
        messages[0]["content"].startswith(shots[0].question) and messages[1]["content"] == shots[0].solution
    )
    assert all("\\boxed{" in m["content"] for m in messages[1::2]), "every exemplar ends in \\boxed{}"
    with_system = build_prompt(MATH, PromptConfig(system="You are a careful mathematician."))
    assert with_system[0] == {"role": "system", "content": "You are a careful mathematician."}
    assert len(with_system) == 1 + 2 * 4 + 1


def test_plain_prompt_for_base_models():
    config = PromptConfig(style="plain", shots=2)
    text = build_prompt(GSM, config)
    assert isinstance(text, str) and text.startswith(DEFAULT_INSTRUCTION)
    assert text.count("Problem:") == 3 and text.endswith(f"Problem: {GSM.question}\nSolution:")
    assert stop_sequences(config) and all("Problem:" in s for s in stop_sequences(config))
    assert stop_sequences(PromptConfig()) == () and stop_sequences(None) == ()


def test_toyworld_style_uses_the_toy_worlds_format():
    from flopmatch.toyworld import format_prompt

    problem = Problem("toy-1", "toyworld", "test", "Mia has 3 boxes of 4 pens. How many pens?", "12")
    assert build_prompt(problem) == format_prompt(problem.question)
    assert build_prompt(problem, PromptConfig(style="dataset")) == format_prompt(problem.question)
    with pytest.raises(ValueError, match="style 'dataset' needs a dataset with its own prompt format; 'gsm8k'"):
        build_prompt(GSM, PromptConfig(style="dataset"))


def test_the_deprecated_style_name_toyworld_still_reads_and_is_what_runs_record():
    """``toyworld`` was the own-format style's name: configs that say it load as ``dataset``, and a dump
    still writes it, so a sample set's recorded config (compared on resume) and every digest and
    fingerprint over SFT or trained-model metadata stay byte-identical to those of earlier runs."""
    from flopmatch import store

    old = PromptConfig.model_validate({"style": "toyworld", "shots": 0})
    assert old.style == "dataset" and old == PromptConfig(style="dataset", shots=0)
    recorded = default_prompt_config("toyworld").model_dump(mode="json")
    assert recorded == {"style": "toyworld", "shots": 0, "system": None, "instruction": DEFAULT_INSTRUCTION,
                        "exemplars": []}  # fmt: skip
    assert PromptConfig.model_validate(recorded) == default_prompt_config("toyworld")
    # the record a toy-world sample set holds in samples/<model>/config.json, as written before the rename
    assert store.config_hash(default_prompt_config("toyworld")) == "a22fa0b402c4222b"
    assert PromptConfig(style="chat").model_dump()["style"] == "chat"


def test_config_overrides_and_validation():
    own = (Exemplar(question="1+1?", solution="\\boxed{2}"),)
    messages = build_prompt(GSM, PromptConfig(exemplars=own, instruction="Answer in \\boxed{}."))
    assert len(messages) == 3 and messages[0]["content"] == "1+1?\n\nAnswer in \\boxed{}."
    assert len(build_prompt(GSM, PromptConfig(shots=0))) == 1
    assert resolve(PromptConfig(shots=3), "gsm8k").exemplars == packaged_exemplars()["gsm8k"][:3]
    with pytest.raises(ValueError, match="asks for 5 shots but only 4 exemplars"):
        build_prompt(MATH, PromptConfig(shots=5))
    with pytest.raises(ValidationError, match="instruction"):
        PromptConfig(instruction="  ")
    with pytest.raises(ValidationError, match="style"):
        PromptConfig(style="fancy")
    with pytest.raises(ValidationError, match="shots"):
        PromptConfig(shots=-1)
    with pytest.raises(ValidationError, match="extra"):
        PromptConfig(shot=3)
    resolved = default_prompt_config("gsm8k")
    assert PromptConfig.model_validate(json.loads(resolved.model_dump_json())) == resolved, (
        "storable in a run"
    )


def test_exemplars_are_not_benchmark_problems():
    """The packaged exemplars were written for flopmatch: none is a GSM8K or MATH problem."""
    if not DATA.is_dir():
        pytest.skip(f"shared data not found at {DATA}")
    questions: set[str] = set()
    for path, field in (
        (DATA / "gsm8k" / "train.jsonl", "question"),
        (DATA / "gsm8k" / "test.jsonl", "question"),
        (DATA / "math" / "math_test_5000.jsonl", "problem"),
    ):
        with open(path) as handle:
            questions |= {_normalise(json.loads(line)[field]) for line in handle if line.strip()}
    assert len(questions) > 12_000
    for family, exemplars in packaged_exemplars().items():
        for ex in exemplars:
            assert _normalise(ex.question) not in questions, (family, ex.question)


def test_exemplar_answers_are_right():
    """The exemplars' boxed answers, recomputed (a wrong exemplar teaches wrong answers)."""
    from fractions import Fraction

    expected = {
        "gsm8k": [
            42 * 3 + 60 * 1.5,
            3 * (5 * 18 + 2 * 30),
            1200 * 3 / 4 - 480,
            27 + 42 + 84,
            80 * 2.5 + 60 * 1.5,
            14 * 24 / 8,
            80 * 0.75 * 1.1,
            (40 - 16) / 2,
        ],
        "math": [Fraction(7, 2), pow(7, 2024, 5), Fraction(6, 45), (9 + 12 - 15) / 2],
    }
    for family, values in expected.items():
        for ex, value in zip(packaged_exemplars()[family], values, strict=True):
            boxed = re.findall(r"\\boxed\{(.+)\}", ex.solution)[-1]
            frac = re.fullmatch(r"\\frac\{(\d+)\}\{(\d+)\}", boxed)
            got = Fraction(int(frac[1]), int(frac[2])) if frac else Fraction(boxed)
            assert got == Fraction(value).limit_denominator(1000), (family, ex.question)


@needs_offline_pair
def test_chat_prompt_renders_with_the_offline_qwen_template():
    """The messages render through a real chat template (Qwen's, from the offline model, prepared into
    the session's cache on first use)."""
    from transformers import AutoTokenizer

    from flopmatch import models

    tokenizer = AutoTokenizer.from_pretrained(models.prepare("qwen2.5-coder-0.5b-instruct"))
    text = tokenizer.apply_chat_template(build_prompt(MATH), tokenize=False, add_generation_prompt=True)
    assert text.count("<|im_start|>user") == 5 and text.count("<|im_start|>assistant") == 5
    assert text.endswith("<|im_start|>assistant\n") and MATH.question in text
