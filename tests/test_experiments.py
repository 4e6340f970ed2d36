"""The experiment scripts' pure parts: the phase map's per-cell study configs and its verdicts."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import yaml

from flopmatch.study import StudyConfig

ROOT = Path(__file__).resolve().parents[1]


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "experiments" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def test_phase_map_cells_change_only_their_axes_and_reuse_the_demo_models(tmp_path):
    pm = _load("phase_map")
    demo = yaml.safe_load((ROOT / "examples" / "toyworld.yaml").read_text())
    default = StudyConfig.model_validate(pm.cell_config(demo, pm.Cell(3000, 1.0), sample=50, test=80, run_dir=tmp_path))
    # the demo's own toy world: the registry's models, the demo's student, weak-to-strong off
    assert (default.models.wc.model, default.models.se.model) == ("toyworld-wc", "toyworld-se")
    assert default.paradigms.student.model == demo["paradigms"]["student"]["model"]
    assert not default.paradigms.weak_to_strong and default.problems.test.limit == 80
    cell = pm.cell_config(demo, pm.Cell(1000, 2.5), sample=50, test=80, run_dir=tmp_path,
                          paradigms=("self_improvement",), steps_per_budget={1: 8, 4: 24})
    config = StudyConfig.model_validate(cell)
    assert config.models.wc.toyworld_spec["train_steps"] == 1000
    assert config.models.wc.toyworld_spec["noise"] == {"false_positive_scale": 2.5}
    assert config.models.se.toyworld_spec["noise"] == {"false_positive_scale": 2.5}
    assert "train_steps" not in config.models.se.toyworld_spec  # SE keeps its pretraining
    assert config.budget.se_samples == [1, 4] and config.training.steps_per_budget == {1: 8, 4: 24}
    assert not config.paradigms.knowledge_distillation and config.paradigms.student is None
    assert config.training.seeds is None  # the script runs the seeds itself
    assert demo["training"]["seeds"]  # (and did not edit the demo's config in place)


def test_phase_map_verdicts_are_holm_adjusted_and_need_two_seeds():
    pm = _load("phase_map")
    row = dict(diff=0.05, ci_low=0.02, ci_high=0.08, mde=0.03)
    rows = [dict(row, p_value=0.001, seeds=2), dict(row, p_value=0.03, seeds=2), dict(row, p_value=0.001, seeds=1)]
    pm.significance(rows)
    assert [r["p_adjusted"] for r in rows] == [0.003, 0.03, 0.003]  # Holm: 3x, then 1x the largest
    assert [r["significant"] for r in rows] == [True, True, False]  # one seed is never a verdict
    assert rows[2]["verdict"] == "one seed: not a verdict"
