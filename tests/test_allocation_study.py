"""Allocation policies inside a study (flopmatch.allocation_study): the config, the jobs and comparisons
they add, the budget each allocated set may spend, and one small study end to end on the toy world."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from flopmatch.allocation_study import AllocatedSetError, data_kind, measured_flops, plan_flops_per_problem
from flopmatch.store import RunDir, config_hash
from flopmatch.study import StudyConfigError, load_study_config, sft_sets, train_jobs, validate_study_dict

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "toyworld-allocation.yaml"
MINIMAL = {
    "name": "alloc",
    "problems": {"sample": {"source": "toyworld", "split": "train", "limit": 10}},
    "models": {"wc": {"model": "toyworld-wc"}, "se": {"model": "toyworld-se"}},
    "training": {"enabled": False},
}


def _config(**sections):
    return validate_study_dict({**MINIMAL, **sections})


# --------------------------------------------------------------------------- config


def test_sampling_allocation_takes_a_name_or_a_mapping_and_names_bad_keys():
    assert _config().sampling.allocation.policy == "uniform"
    assert _config(sampling={"allocation": "adaptive"}).sampling.allocation.policy_config().allocation == "adaptive"
    mapped = _config(sampling={"allocation": {"policy": "until-correct", "target_correct": 2}}).sampling.allocation
    assert (mapped.policy, mapped.policy_config().target_correct) == ("until-correct", 2)
    for bad, words in (({"policy": "adaptive", "target_correct": 2}, "target_correct applies to until-correct"),
                       ({"policy": "uniform", "max_per_problem": 5}, "apply to a non-uniform policy"),
                       ({"policy": "greedy"}, "sampling.allocation.policy"),
                       ({"policy": "adaptive", "objectiv": "unique"}, "did you mean `objective`")):  # fmt: skip
        with pytest.raises(StudyConfigError, match="sampling.allocation") as err:
            _config(sampling={"allocation": bad})
        assert words in str(err.value)


def test_paradigms_allocations_must_name_the_sampled_policy():
    with pytest.raises(StudyConfigError, match="set `sampling.allocation: adaptive`"):
        _config(paradigms={"allocations": ["uniform", "adaptive"]})
    with pytest.raises(StudyConfigError, match="distinct"):
        _config(sampling={"allocation": "adaptive"}, paradigms={"allocations": ["adaptive", "adaptive"]})
    ok = _config(sampling={"allocation": "adaptive"}, paradigms={"allocations": ["uniform", "adaptive"]})
    assert ok.paradigms.allocations == ["uniform", "adaptive"]


def test_a_uniform_study_hashes_as_before_allocation_existed():
    config = _config()
    before = config.sampling.model_dump(mode="json")
    before.pop("allocation")
    assert config_hash(config.sampling.digest_view()) == config_hash(before)
    assert "allocation" in _config(sampling={"allocation": "adaptive"}).sampling.digest_view()
    assert "allocations" not in config.paradigms.digest_view()


def test_example_validates_and_dry_run_says_what_allocation_does(tmp_path):
    config = load_study_config(EXAMPLE)
    assert config.sampling.allocation.policy == "adaptive" and config.paradigms.allocations == ["uniform", "adaptive"]
    assert config.training.seeds == [0, 1]
    from flopmatch.study import dry_run

    plan = dry_run(config, tmp_path / "run")
    assert any("adaptive" in line and "allocated/adaptive-b<SE>/" in line for line in plan.allocation)
    assert any(c["model"].endswith("(adaptive, every budget)") for c in plan.costs)
    assert len(plan.jobs) == 8  # KD: (SE, WC) x (uniform, adaptive) x 2 seeds


# --------------------------------------------------------------------------- jobs and budgets (pure)


def test_jobs_add_allocated_wc_and_se_sets_and_keep_uniform_identities():
    config = _config(sampling={"allocation": "adaptive"}, paradigms={"allocations": ["uniform", "adaptive"]},
                     training={"enabled": False})  # fmt: skip
    sets = {s.name: s for s in sft_sets(config, [(1, 3), (10, 33)])}
    assert sets["wc-adaptive-b10"].kind == "wc_adaptive" == data_kind("wc", "adaptive")
    assert (sets["se-adaptive-b1"].allocation, sets["se-adaptive-b1"].samples_per_problem) == ("adaptive", 1)
    assert sets["wc-b10"].identity() == {"name": "wc-b10", "kind": "wc", "role": "wc", "budget": 10,
                                         "samples_per_problem": 33}  # fmt: skip
    assert sets["wc-adaptive-b10"].identity()["allocation"] == "adaptive"
    jobs = train_jobs(config, [(10, 33)])
    si = sorted(j.name for j in jobs if j.paradigm == "self_improvement")
    assert si == ["si-se-adaptive-b10", "si-se-b10", "si-wc-adaptive-b10", "si-wc-b10"]
    only = _config(sampling={"allocation": "until-correct"}, paradigms={"allocations": ["until-correct"]})
    assert {s.kind for s in sft_sets(only, [(1, 3)])} == {"wc_until_correct", "se_until_correct"}


def test_budget_of_a_set_from_the_plan_or_from_the_uniform_spend():
    from flopmatch.budget import plan_budgets

    absolute = plan_budgets(mode="flops", se_samples=[1, 10], wc_params=1e9, se_params=3e9, wc_tokens=100,
                            se_tokens=100, n_problems=5)  # fmt: skip
    assert plan_flops_per_problem(absolute, "se", 10) == pytest.approx(2 * 3e9 * 100 * 10)
    assert plan_flops_per_problem(absolute, "wc", 7) is None
    ratio_only = plan_budgets(mode="flops", se_samples=[1], wc_params=1e9, se_params=3e9, n_problems=5)
    assert plan_flops_per_problem(ratio_only, "wc", 1) is None
    tokens = {("a", 0): 10, ("a", 1): 20, ("a", 2): 99, ("b", 0): 5, ("b", 1): 7}
    assert measured_flops(tokens, ["a", "b"], 2, 100.0, where="x") == 2 * 100.0 * (10 + 20 + 5 + 7)
    with pytest.raises(AllocatedSetError, match=r"x: 1 uniform sample\(s\).*\('b', 2\)") as info:
        measured_flops(tokens, ["a", "b"], 3, 100.0, where="x")
    assert isinstance(info.value, ValueError)  # what Python callers caught before


def test_a_measured_budget_reads_the_uniform_tokens_without_their_text(tmp_path, monkeypatch):
    from flopmatch.allocation_study import AllocatedModel, set_budget
    from flopmatch.budget import plan_budgets
    from flopmatch.store.queries import load_problems
    from sample_reads import WC, planned_run, spy_sample_reads

    run = planned_run(tmp_path / "run")  # WC: 4 problems x samples 0..2 of 10, 11, 12 tokens, in two shards
    ids = sorted(load_problems(run))
    reads = spy_sample_reads(monkeypatch, run)
    plan = plan_budgets(mode="flops", se_samples=[1], wc_params=1e9, se_params=3e9, n_problems=4)
    spec = AllocatedModel(role="wc", model=WC, backend="hf", backend_options={}, params=100.0)
    flops, where = set_budget(run, plan, spec, 1, 2, ids)
    assert flops == 2 * 100.0 * (10 + 11) * 4 and where.startswith("measured")
    assert not reads.text and sum(reads.other.values()) >= 2  # both shards, never their text
    with pytest.raises(AllocatedSetError, match="uniform sample"):
        set_budget(run, plan, spec, 1, 4, ids)


# --------------------------------------------------------------------------- comparisons


def test_adaptive_vs_uniform_rows_are_paired_multi_seed_comparisons():
    from flopmatch.comparisons import CompareSettings, comparison_table

    rng = np.random.default_rng(0)
    problems = [f"p{i}" for i in range(300)]
    base = rng.random(300) < 0.4
    frames = {}
    rows = []
    for kind, flip in (("wc", 0.0), ("wc_adaptive", 0.15), ("se", 0.0), ("se_adaptive", 0.0)):
        for seed in (0, 1):
            values = base | (rng.random(300) < flip)  # adaptive WC data: about 9 points more solved
            name = f"kd-{kind}-s{seed}"
            frames[name] = pd.DataFrame({"pass@1": values.astype(float)}, index=problems)
            rows.append({"paradigm": "knowledge_distillation", "budget_se_samples": 10, "wc_samples": 33,
                         "student": "s", "data": kind, "model_name": name, "seed": seed, "metric": "pass@1"})  # fmt: skip
    table = comparison_table(pd.DataFrame(rows), frames.__getitem__, CompareSettings(n_boot=300, n_perm=500))
    by = table.set_index("comparison")
    assert {"adaptive_vs_uniform", "se_adaptive_vs_uniform", "wc_vs_se_adaptive", "wc_vs_se"} <= set(by.index)
    row = by.loc["adaptive_vs_uniform"]
    assert (row["treatment"], row["baseline"], row["seeds"]) == ("wc_adaptive", "wc", 2)
    assert row["diff"] > 0 and row["ci_low"] > 0 and row["verdict"] == "adaptive WC data better"
    assert by.loc["se_adaptive_vs_uniform", "diff"] == pytest.approx(0.0)  # identical data: no difference
    assert np.isfinite(by.loc["se_adaptive_vs_uniform", "mde"])


# --------------------------------------------------------------------------- a small study, end to end


TINY_STUDENT = {"hidden_size": 32, "num_layers": 1, "num_heads": 1, "intermediate_size": 32, "train_steps": 20,
                "tokenizer_corpus": 300}  # fmt: skip


@pytest.mark.train
def test_study_samples_allocated_sets_under_the_uniform_spend_and_trains_on_them(tmp_path):
    from flopmatch.study import run_study

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    data = {
        "name": "alloc-e2e",
        "problems": {"sample": {"source": "toyworld", "split": "train", "limit": 8}, "validation": {"holdout": 2},
                     "test": {"source": "toyworld", "split": "test", "limit": 4}},
        "models": {"wc": {"model": "toyworld-wc", "backend": "hf"}, "se": {"model": "toyworld-se", "backend": "hf"}},
        "budget": {"se_samples": [2]},
        "sampling": {"max_tokens": 96, "allocation": {"policy": "adaptive", "max_per_problem": 12}},
        "judge": {"enabled": False},
        "analysis": {"n_boot": 50},
        "paradigms": {"self_improvement": False, "weak_to_strong": False, "number_matched": [],
                      "student": {"model": "tiny-student", "backend": "hf", "toyworld_spec": TINY_STUDENT},
                      "allocations": ["uniform", "adaptive"]},
        "training": {"preset": "tiny-cpu", "options": {"max_steps": 1, "n_checkpoints": 1}},
        "evaluation": {"backend": "hf", "n": 1, "baselines": False},
    }  # fmt: skip
    config = validate_study_dict(data)
    run = RunDir(tmp_path / "run")
    run_study(config, run.root, log=lambda _: None, progress=False)

    summary = json.loads((run.root / "allocated" / "summary.json").read_text())
    assert {(s["role"], s["se_samples"]) for s in summary["sets"]} == {("wc", 2), ("se", 2)}
    plan = json.loads(run.plan_path.read_text())
    for s in summary["sets"]:
        # the plan has no solution lengths: the budget is what the uniform set of this budget cost
        assert s["budget_source"].startswith("measured")
        count = plan["budgets"][0][f"{s['role']}_samples"]
        uniform = pd.concat(pd.read_parquet(p) for p in sorted(run.samples_dir(s["model"]).glob("*.parquet")))
        tokens = uniform[uniform["sample_idx"] < count]["completion_tokens"].sum()
        params = json.loads((run.root / "roles.json").read_text())[s["role"]]["params"]
        assert s["budget_flops"] == pytest.approx(2 * params * tokens)
        assert s["spent_flops"] <= s["budget_flops"] and s["unspent_flops"] == pytest.approx(
            s["budget_flops"] - s["spent_flops"])
        sub = RunDir(run.root / s["run_dir"])
        assert (sub.samples_dir(s["model"]) / "allocation.json").exists() and sub.grades_path(s["model"]).exists()
    # the sets, the students and their paired rows
    sets = run.stage_state()["sft"]["sets"]
    assert {"wc-b2", "se-b2", "wc-adaptive-b2", "se-adaptive-b2"} == set(sets)
    from flopmatch.sft import SFT_META_FILE

    meta = json.loads((run.sft_dir("wc-adaptive-b2") / SFT_META_FILE).read_text())
    assert meta["budget"] is None and meta["counts"]["examples"] == sets["wc-adaptive-b2"]["examples"]
    allocation = pd.read_parquet(run.metrics_dir / "allocation.parquet")
    assert {"uniform", "adaptive @ SE 2"} <= set(allocation["allocation"])
    curve = pd.read_parquet(run.metrics_dir / "allocation_curve.parquet")
    assert "adaptive @ SE 2" in set(curve["allocation"])
    counts = pd.read_parquet(run.metrics_dir / "allocation_counts.parquet")
    assert len(counts[counts["allocation"] == "adaptive @ SE 2"]) == 2 * 8  # WC and SE, every sample problem
    assert (run.metrics_dir / "figures" / "samples_per_problem.png").exists()
    paradigms = pd.read_parquet(run.metrics_dir / "paradigms.parquet")
    trained = json.loads((run.root / "models" / "trained.json").read_text())["jobs"]
    kinds = {k for k in ("wc_adaptive", "se_adaptive") if trained.get(f"kd-{k.replace('_', '-')}-b2")}
    assert kinds <= set(paradigms["data"])
    comparisons = pd.read_parquet(run.metrics_dir / "comparisons.parquet")
    if "wc_adaptive" in kinds and trained.get("kd-wc-b2"):
        assert "adaptive_vs_uniform" in set(comparisons["comparison"])
    assert "adaptive" in (run.report_dir / "index.html").read_text()
    # a rerun finds every set on disk and does nothing
    assert run_study(config, run.root, log=lambda _: None, progress=False).ran == []


def test_build_sft_cli_takes_an_allocated_model_without_a_budget(tmp_path):
    from typer.testing import CliRunner

    from flopmatch.cli import app
    from flopmatch.store import write_json
    from graded_runs import graded_run

    run, problems = graded_run(tmp_path / "run", [[False, True, True], [False]])  # unequal counts
    runner = CliRunner()
    refused = runner.invoke(app, ["build-sft", str(run.root), "--source", "m", "--json"])
    assert refused.exit_code != 0 and "--budget" in refused.output  # plain sampling still needs a budget
    write_json({"config": {"allocation": "adaptive"}, "rounds": 1, "pending": None, "history": []},
               run.samples_dir("m") / "allocation.json")  # fmt: skip
    result = runner.invoke(app, ["build-sft", str(run.root), "--source", "m", "--name", "alloc", "--json"])
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert json.loads(out[out.index("{"):])["examples"] == 2  # both correct solutions of the 3-sample problem
