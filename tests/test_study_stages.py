"""flopmatch.study.stages_training pieces that the full-study tests (test_study.py) do not reach on CPU."""

from __future__ import annotations

import subprocess
import sys
from types import SimpleNamespace

from flopmatch.study import demo_config
from flopmatch.study.stages_training import _accelerate_train


def test_accelerate_launch_runs_the_cli_train_command(tmp_path, monkeypatch):
    """training.launcher accelerate: the launched module is the `flopmatch train` command (what
    `accelerate launch ... -m flopmatch train` in the README runs), with the run's exact TrainConfig in a file."""
    config = demo_config(["training.launcher=accelerate", "training.accelerate_args=[--num_processes, '2']"])
    calls = []
    monkeypatch.setattr(
        subprocess, "run", lambda command, check: calls.append(command) or SimpleNamespace(returncode=0)
    )
    ctx = SimpleNamespace(config=config, log=lambda _: None)
    out_dir = tmp_path / "models" / "kd-wc-b1"
    train_cfg = config.training.train_config(config.seed)
    _accelerate_train(ctx, tmp_path / "sft" / "wc-b1", "base-model", out_dir, train_cfg)
    [command] = calls
    assert command[1:4] == ["launch", "--num_processes", "2"]
    module_args = command[command.index("-m") + 1 :]
    assert module_args[:2] == ["flopmatch", "train"]
    config_file = module_args[module_args.index("--config") + 1]
    assert module_args[module_args.index("--out") + 1] == str(out_dir)
    assert type(train_cfg).model_validate_json(open(config_file).read()) == train_cfg
    monkeypatch.undo()
    # the module and command exist and take these options (python -m of a module without a main prints nothing)
    shown = subprocess.run(
        [sys.executable, "-m", *module_args, "--help"], capture_output=True, text=True, check=False
    )
    assert shown.returncode == 0 and "Usage" in shown.stdout, shown.stderr
    for option in ("--data", "--model", "--out", "--config"):
        assert option in shown.stdout


def test_the_eval_stage_passes_every_evaluation_setting_to_evaluate(tmp_path):
    """ks, top_p, greedy and seed set in the study's evaluation section reach evaluate(); unset, the
    stage calls it exactly as before (the library's defaults and the study seed)."""
    import inspect

    from flopmatch.evaluation import evaluate
    from flopmatch.store import RunDir
    from flopmatch.study import StudyContext, demo_config
    from flopmatch.study.stages_training import _eval_job

    def job_kwargs(*overrides):
        ctx = StudyContext(config=demo_config(list(overrides)), run=RunDir(tmp_path), log=lambda _: None)
        return _eval_job(ctx, "student", str(tmp_path / "model"), [])[2]

    kwargs = job_kwargs(
        "evaluation.ks=[1,4]", "evaluation.top_p=0.9", "evaluation.greedy=false", "evaluation.seed=5"
    )
    assert (kwargs["ks"], kwargs["top_p"], kwargs["greedy"], kwargs["seed"]) == ((1, 4), 0.9, False, 5)
    assert set(kwargs) <= set(inspect.signature(evaluate).parameters)
    defaults = job_kwargs()
    signature = inspect.signature(evaluate).parameters
    assert [defaults[k] for k in ("ks", "top_p", "greedy")] == [
        signature[k].default for k in ("ks", "top_p", "greedy")
    ]
    assert defaults["seed"] == demo_config().seed


def test_a_model_from_a_spec_is_built_by_its_datasets_declared_builder(monkeypatch, tmp_path):
    """`toyworld_spec` goes to the `spec_model` the toy world declares (flopmatch.datasets), not to toy-world
    code named in the study: swap the declaration and the study builds through the new one."""
    import types
    from dataclasses import replace

    import pytest
    from pydantic import ValidationError

    from flopmatch import datasets
    from flopmatch.store import model_key
    from flopmatch.study.config import ModelSpec
    from flopmatch.study.stages import _model_entry, params_offline

    class Built:
        parameters_source = "plugin spec"

        def __init__(self, name, values):
            self.name, self.parameters = name, 10 * values["width"]

        def prepare(self, *, progress=True):
            return tmp_path / self.name

    def build(name, values):
        if values["width"] > 5:
            raise ValueError("too wide for this plugin")
        return Built(name, values)

    module = types.ModuleType("spec_plugin")
    module.build = build
    monkeypatch.setitem(sys.modules, "spec_plugin", module)
    toy = datasets.get_dataset("toyworld")
    monkeypatch.setitem(datasets._REGISTRY, "toyworld", replace(toy, spec_model="spec_plugin:build"))

    spec = ModelSpec(model="my student", backend="hf", toyworld_spec={"width": 3})
    assert spec.dataset_spec() == ("toyworld", {"width": 3})
    assert params_offline(spec) == (30.0, "plugin spec")
    entry = _model_entry(spec, resolve=True, log=lambda line: None, progress=False)
    # filed under its built directory, as a toy model from a spec always was
    assert entry["path"] == entry["model"] == str(tmp_path / model_key("my student"))
    assert (entry["ref"], entry["params"], entry["params_source"]) == ("my student", 30.0, "plugin spec")
    with pytest.raises(ValidationError, match="too wide for this plugin"):
        ModelSpec(model="m", toyworld_spec={"width": 9})
    assert ModelSpec(model="toyworld-wc").dataset_spec() is None
    monkeypatch.setitem(datasets._REGISTRY, "toyworld", replace(toy, spec_model=None))
    with pytest.raises(ValidationError, match="dataset 'toyworld' declares no model that can be built from a spec"):
        ModelSpec(model="m", toyworld_spec={"width": 3})


def test_the_sft_stage_reads_each_models_sample_text_once_for_all_its_sets(tmp_path, monkeypatch):
    """The demo's paradigms build WC's data twice per budget (its own set and the number-matched control):
    both come from one read of WC's shards, SE's from one of SE's."""
    from flopmatch.store import RunDir
    from flopmatch.study import StudyContext, demo_config
    from flopmatch.study.stages_training import stage_sft
    from sample_reads import planned_run, spy_sample_reads

    run = planned_run(tmp_path / "run")  # one budget: SE 1, WC 3 samples per problem; two shards each
    ctx = StudyContext(config=demo_config(), run=RunDir(run.root), log=lambda _: None)
    reads = spy_sample_reads(monkeypatch, run)
    sets = stage_sft(ctx)["sets"]
    assert list(sets) == ["wc-b1", "se-b1", "wc-nm-b1"]
    assert [sets[name]["examples"] for name in sets] == [8, 4, 4]  # WC: samples 0 and 2 correct
    assert len(reads.text) == 4 and reads.most_text_reads_of_a_shard == 1
