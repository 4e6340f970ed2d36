"""Datasets declare themselves: a dataset registered by a user is loaded, prompted, graded and judged
through its declaration, exactly as the toy world is, with no name checks anywhere else."""

from __future__ import annotations

import json
import os
import sys
import types
from dataclasses import dataclass

import pytest

from flopmatch import datasets, models, problems, prompts
from flopmatch.grading import answer_mode, extract_answer
from flopmatch.judge import JudgeItem, ToyworldCheckerJudge
from flopmatch.record import Problem


@dataclass
class _Check:
    steps_valid: bool
    first_wrong_step: int | None
    reason: str


def _plugin_module() -> types.ModuleType:
    """A dataset package a user might write: a generator, a prompt format and an exact checker."""
    module = types.ModuleType("countdown_plugin")

    def load_problems(split=None, limit=None, seed=None):
        made = [Problem(f"countdown/{split or 'test'}/{i}", "countdown", split or "test", f"{i} + {i}?", str(2 * i))
                for i in range(5)]
        return problems.select_subset(made, limit=limit, seed=seed)

    module.load_problems = load_problems
    module.format_prompt = lambda question: f"Q: {question}\n"
    module.check = lambda problem, solution: _Check(solution.strip().endswith(problem.answer), None, "checked")
    return module


@pytest.fixture
def countdown(monkeypatch):
    monkeypatch.setitem(sys.modules, "countdown_plugin", _plugin_module())
    declared = datasets.Dataset(
        "countdown", ("test",), "first-answer-line", prompt_format="countdown_plugin:format_prompt",
        loader="countdown_plugin:load_problems", checker="countdown_plugin:check",
    )
    monkeypatch.setitem(datasets._REGISTRY, "countdown", declared)
    return declared


def test_a_registered_dataset_is_loaded_prompted_graded_and_judged_through_its_declaration(countdown):
    loaded = problems.load("countdown", limit=3)
    assert [p.problem_id for p in loaded] == ["countdown/test/0", "countdown/test/1", "countdown/test/2"]
    assert prompts.build_prompt(loaded[1]) == "Q: 1 + 1?\n"
    assert prompts.default_prompt_config("countdown").style == "dataset"  # the dataset's own format
    assert answer_mode("countdown") == "numeric"
    # The first "Answer:" line counts, nothing after it (the rule the toy world declares too).
    assert extract_answer("2 + 2 = 4\nAnswer: 4\nAnswer: 5", "countdown") == "4"
    judgments = ToyworldCheckerJudge().judge([JudgeItem(loaded[2], "so 4")])
    assert judgments[0].status == "valid"
    assert ToyworldCheckerJudge().judge([JudgeItem(loaded[2], "so 5")])[0].status == "invalid"


def test_the_toy_world_is_declared_like_any_other_dataset():
    toy = datasets.get_dataset("toyworld")
    assert toy.loader and toy.prompt_format and toy.checker and toy.answers == "first-answer-line"
    assert problems.load("toyworld", limit=2)[0].problem_id == "toyworld/test/0"
    assert set(datasets.dataset_names()) >= {"gsm8k", "math", "math500", "math-offline", "toyworld"}
    # its registry models come from its declaration, as any dataset's do
    assert [m.name for m in toy.models] == ["toyworld-wc", "toyworld-se"]
    assert [m.name for m in datasets.declared_models()] == ["toyworld-wc", "toyworld-se"]
    for declared in toy.models:
        entry = models.get_entry(declared.name)
        assert (entry.builder, entry.upstream, entry.gguf) == (declared.builder, "flopmatch.toyworld", None)


def test_a_dataset_declared_later_brings_its_models_to_the_registry(monkeypatch, tmp_path):
    built = tmp_path / "tiny"

    class Tiny:
        parameters = 42
        parameters_source = "plugin spec"

        def path(self):
            return built

        def is_prepared(self):
            return (built / "done").is_file()

        def prepare(self, *, progress=True):
            built.mkdir(exist_ok=True)
            (built / "done").write_text("")
            return built

    module = types.ModuleType("tiny_plugin")
    module.TINY = Tiny()
    monkeypatch.setitem(sys.modules, "tiny_plugin", module)
    monkeypatch.setattr(models, "REGISTRY", dict(models.REGISTRY))
    model = datasets.DatasetModel("plugin-tiny", "a plugin's model", "tiny_plugin", builder="tiny_plugin:TINY")
    monkeypatch.setitem(datasets._REGISTRY, "plugin", datasets.Dataset("plugin", ("test",), "numeric", models=(model,)))
    info = models.model_info("plugin-tiny")
    assert (info.parameters, info.installed, info.prepared, info.path) == (42, True, False, None)
    assert models.resolve_model("plugin-tiny", progress=False) == str(built)
    assert models.model_info("plugin-tiny").path == built
    assert [m.name for m in models.list_models()][-1] == "plugin-tiny"
    with pytest.raises(models.ModelError, match="not a GGUF model .it is built by tiny_plugin"):
        models.gguf_path("plugin-tiny")
    broken = datasets.DatasetModel("plugin-broken", "no builder", "tiny_plugin", builder="tiny_plugin:NOPE")
    monkeypatch.setitem(datasets._REGISTRY, "plugin", datasets.Dataset("plugin", ("test",), "numeric", models=(broken,)))
    with pytest.raises(models.ModelError, match="model 'plugin-broken': its builder tiny_plugin:NOPE cannot be"):
        models.prepare("plugin-broken")


def test_undeclared_datasets_and_missing_parts_fail_clearly(countdown, monkeypatch):
    with pytest.raises(ValueError, match="unknown dataset 'nope'"):
        answer_mode("nope")
    assert prompts.default_prompt_config("nope").shots == 0  # an undeclared dataset: zero-shot chat
    monkeypatch.setitem(datasets._REGISTRY, "countdown", datasets.Dataset("countdown", ("test",), "numeric",
                                                                          loader="no_such_module:load"))
    with pytest.raises(problems.ProblemSourceError, match="its loader no_such_module:load cannot be imported"):
        problems.load("countdown")
    gsm = Problem("gsm8k/test/0", "gsm8k", "test", "1+1?", "2")
    with pytest.raises(ValueError, match="'gsm8k' has none"):
        ToyworldCheckerJudge().judge([JudgeItem(gsm, "2")])


def test_the_cli_help_lists_the_declared_datasets_a_registered_one_included():
    """`problems`, `grade --dataset` and `eval --problems` name the sources from the declarations, so a
    dataset registered before the CLI is built shows up with its description."""
    import subprocess

    script = (
        "from flopmatch.datasets import Dataset, register_dataset\n"
        "register_dataset(Dataset('countdown', ('test',), 'numeric', description='countdown puzzles, made up'))\n"
        "from typer.testing import CliRunner\n"
        "from flopmatch.cli import app\n"
        "for command in ('problems', 'grade', 'eval'):\n"
        "    print(CliRunner().invoke(app, [command, '--help'], terminal_width=400).output)\n"
    )
    env = {**os.environ, "COLUMNS": "400", "NO_COLOR": "1"}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, check=True).stdout
    out = " ".join(out.split())  # help paragraphs wrap
    names = " | ".join(datasets.dataset_names()) + " | countdown"
    assert out.count(names) == 3, out  # problems' source, grade --dataset, eval --problems
    assert "countdown: countdown puzzles, made up" in out
    for name in datasets.dataset_names():
        assert f"{name}: {datasets.get_dataset(name).description}" in out


# --------------------------------------------------------------------------- where the problems come from


@pytest.fixture
def registry(monkeypatch):
    """The dataset registry, restored after the test: register_dataset writes into a copy."""
    monkeypatch.setattr(datasets, "_REGISTRY", dict(datasets._REGISTRY))
    return datasets


def _rows(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


WORD = [{"question": f"Ann has {i} pens and buys 2. How many now?", "answer": f"{i}+2={i + 2}\n#### {i + 2}"}
        for i in range(4)]  # fmt: skip


def test_a_registered_dataset_declaring_its_files_loads_from_a_data_directory(registry, tmp_path):
    """A new dataset says where its files are and how its rows parse; problems.load needs nothing else."""
    registry.register_dataset(datasets.Dataset(
        "wordy", ("train", "test"), "numeric", shots=0,
        data=datasets.DataFiles("gsm8k", {"train": "wordy/train.jsonl", "test": "wordy/held_out.jsonl"}),
    ))  # fmt: skip
    _rows(tmp_path / "wordy" / "train.jsonl", WORD[:3])
    _rows(tmp_path / "wordy" / "held_out.jsonl", WORD[3:])
    train = problems.load("wordy", split="train", data_file=tmp_path)
    assert [p.problem_id for p in train] == ["wordy/train/0", "wordy/train/1", "wordy/train/2"]
    assert {p.dataset for p in train} == {"wordy"}  # its own name, so its own declaration grades it
    assert [p.answer for p in train] == ["2", "3", "4"] and train[1].question == WORD[1]["question"]
    test = problems.load("wordy", data_file=tmp_path / "wordy")  # the dataset's own folder works too
    assert [(p.problem_id, p.split, p.answer) for p in test] == [("wordy/test/0", "test", "5")]
    assert problems.load("wordy", split="train", data_file=tmp_path, limit=2, seed=1) == problems.select_subset(
        train, limit=2, seed=1
    )
    (tmp_path / "elsewhere").mkdir()
    with pytest.raises(problems.ProblemSourceError, match=r"elsewhere has no wordy/train.jsonl \(is it"):
        problems.load("wordy", split="train", data_file=tmp_path / "elsewhere")
    with pytest.raises(problems.ProblemRequestError, match=r"wordy has splits train, test; got 'dev'"):
        problems.load("wordy", split="dev", data_file=tmp_path)
    _rows(tmp_path / "math_test.jsonl", [{"problem": "1+1?", "solution": "$\\boxed{2}$"}])
    with pytest.raises(problems.ProblemFileError, match="this file is in math format .* not gsm8k"):
        problems.load("wordy", data_file=tmp_path / "math_test.jsonl")
    with pytest.raises(problems.ProblemSourceError, match="wordy is not on the hub: pass data_file="):
        problems.load("wordy")


def test_a_registered_dataset_declaring_a_hub_repo_reads_its_configs_in_order(registry, monkeypatch):
    import datasets as hf_datasets

    registry.register_dataset(datasets.Dataset(
        "wordy", ("test",), "numeric",
        data=datasets.DataFiles("gsm8k", hub="someone/wordy", hub_configs=("a", "b")),
    ))  # fmt: skip
    calls = []

    def hub(repo, config=None, split=None, **kwargs):
        calls.append((repo, config, split))
        return WORD[:2] if config == "a" else WORD[2:] + [{"question": "q"}]

    monkeypatch.setattr(hf_datasets, "load_dataset", hub)
    with pytest.raises(problems.ProblemFileError, match=r"hub:someone/wordy \(b\)/test, row 3: field 'answer'"):
        problems.load("wordy")
    assert calls == [("someone/wordy", "a", "test"), ("someone/wordy", "b", "test")]
    calls.clear()
    monkeypatch.setattr(hf_datasets, "load_dataset", lambda repo, config, split: hub(repo, config, split)[:2])
    loaded = problems.load("wordy")
    assert [p.problem_id for p in loaded] == [f"wordy/test/{i}" for i in range(4)]  # indices run across configs
    assert [p.answer for p in loaded] == ["2", "3", "4", "5"]


def test_a_dataset_derived_from_other_datasets_files_holds_one_split_out(registry, tmp_path, monkeypatch):
    """DerivedSplits (as math-offline): each split reads another declaration's file, minus the held-out one."""
    registry.register_dataset(datasets.Dataset(
        "wordy", ("train", "test"), "numeric",
        data=datasets.DataFiles("gsm8k", {"train": "wordy/train.jsonl", "test": "wordy/test.jsonl"}),
    ))  # fmt: skip
    registry.register_dataset(datasets.Dataset(
        "wordy-clean", ("train", "test"), "numeric",
        data=datasets.DerivedSplits({"train": ("wordy", "train"), "test": ("wordy", "test")},
                                    held_out=("wordy", "test")),
    ))  # fmt: skip
    _rows(tmp_path / "wordy" / "train.jsonl", WORD)
    _rows(tmp_path / "wordy" / "test.jsonl", [{**WORD[1], "question": "  " + WORD[1]["question"]}, WORD[3]])
    train = problems.load("wordy-clean", split="train", data_file=tmp_path)
    assert [p.problem_id for p in train] == ["wordy/train/0", "wordy/train/2"]  # text matched whitespace-blind
    test = problems.load("wordy-clean", data_file=tmp_path)
    assert [p.problem_id for p in test] == ["wordy/test/0", "wordy/test/1"]
    monkeypatch.delenv(problems.DATA_DIR_ENV, raising=False)
    with pytest.raises(problems.ProblemSourceError) as info:
        problems.load("wordy-clean")
    assert str(info.value) == (
        "wordy-clean reads local files: pass data_file=<data dir> (CLI: --data-file) or set "
        "$FLOPMATCH_DATA_DIR to a directory holding wordy/train.jsonl and wordy/test.jsonl"
    )
    registry.register_dataset(datasets.Dataset(
        "wordy-unseen", ("test",), "numeric",
        data=datasets.DerivedSplits({"test": ("wordy", "test")}, held_out=("wordy", "train")),
    ))  # fmt: skip
    with pytest.raises(problems.ProblemSourceError, match="holding wordy/test.jsonl and wordy/train.jsonl$"):
        problems.load("wordy-unseen")  # the held-out file is read too, so it is named too
    with pytest.raises(ValueError, match=r"'wordy-half': its derived splits \['test'\] are not its splits"):
        datasets.Dataset("wordy-half", ("train", "test"), "numeric",
                         data=datasets.DerivedSplits({"test": ("wordy", "test")}))  # fmt: skip
    monkeypatch.setenv(problems.DATA_DIR_ENV, str(tmp_path))
    assert problems.load("wordy-clean", split="train") == train


def test_a_declaration_that_cannot_be_read_says_why(registry, tmp_path):
    registry.register_dataset(datasets.Dataset("bare", ("test",), "numeric"))
    with pytest.raises(problems.ProblemRequestError, match="'bare' declares no data files"):
        problems.load("bare", data_file=tmp_path)
    registry.register_dataset(datasets.Dataset("odd", ("test",), "numeric", data=datasets.DataFiles("csv-ish")))
    with pytest.raises(problems.ProblemRequestError, match="row format 'csv-ish': expected one of gsm8k, math"):
        problems.load("odd")
    registry.register_dataset(datasets.Dataset(
        "orphan", ("test",), "numeric", data=datasets.DerivedSplits({"test": ("nowhere", "test")}),
    ))  # fmt: skip
    with pytest.raises(problems.ProblemRequestError, match="'orphan' reads 'nowhere', which is not declared"):
        problems.load("orphan", data_file=tmp_path)


def test_the_shared_data_sources_declare_where_their_files_are():
    gsm8k, math, math500 = (datasets.get_dataset(n).data for n in ("gsm8k", "math", "math500"))
    assert (gsm8k.row_format, gsm8k.hub, gsm8k.hub_configs) == ("gsm8k", "openai/gsm8k", ("main",))
    assert dict(gsm8k.files) == {"train": "gsm8k/train.jsonl", "test": "gsm8k/test.jsonl"}
    assert (math.hub, math.hub_configs, dict(math.files)) == (
        problems.MATH_HUB_REPO, problems.MATH_HUB_CONFIGS, {"test": "math/math_test_5000.jsonl"})  # fmt: skip
    assert (math500.hub, math500.hub_configs) == ("HuggingFaceH4/MATH-500", (None,))
    offline = datasets.get_dataset("math-offline").data
    assert dict(offline.splits) == {"train": ("math", "test"), "test": ("math500", "test")}
    assert offline.held_out == ("math500", "test")
    with pytest.raises(TypeError):
        gsm8k.files["dev"] = "x"  # a declaration is frozen, its files too
    assert hash(datasets.get_dataset("gsm8k")) == hash(datasets.get_dataset("gsm8k"))


def test_a_study_names_a_dataset_registered_later_and_its_dry_run_counts_the_declared_size(registry, tmp_path):
    """A study may name a dataset declared after flopmatch.study was imported; a dry run counts its hub
    splits from the declaration's sizes (it reads nothing), capped by the split's limit."""
    from flopmatch.study import dry_run
    from flopmatch.study.config import StudyConfigError, validate_study_dict

    registry.register_dataset(datasets.Dataset(
        "wordy", ("train", "test"), "numeric", data=datasets.DataFiles("gsm8k", hub="org/wordy"),
        sizes={"train": 900, "test": 100},
    ))  # fmt: skip
    study = {
        "name": "w",
        "problems": {"sample": {"source": "wordy", "split": "train"}, "validation": {"source": "wordy", "limit": 40}},
        "models": {"wc": {"model": "toyworld-wc", "backend": "hf"}, "se": {"model": "toyworld-se", "backend": "hf"}},
        "training": {"enabled": False},
    }
    plan = dry_run(validate_study_dict(study), tmp_path / "run")
    assert plan.problems == {"sample": (900, "known dataset size"), "validation": (40, "known dataset size")}
    study["problems"]["sample"]["source"] = "wordie"
    with pytest.raises(StudyConfigError, match="unknown problem source 'wordie'; expected one of .*wordy"):
        validate_study_dict(study)


def test_a_declaration_pickles_and_copies_as_a_whole():
    """Declarations may travel to worker processes: each built-in one survives pickle, deepcopy and asdict."""
    import copy
    import dataclasses
    import pickle

    for name in datasets.dataset_names():
        declared = datasets.get_dataset(name)
        assert pickle.loads(pickle.dumps(declared)) == declared == copy.deepcopy(declared)
        assert dataclasses.asdict(declared)["name"] == name and hash(declared) == hash(copy.deepcopy(declared))
