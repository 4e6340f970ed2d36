"""Datasets declare themselves: a dataset registered by a user is loaded, prompted, graded and judged
through its declaration, exactly as the toy world is, with no name checks anywhere else."""

from __future__ import annotations

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
