"""Paradigms: each trains its student on WC and on SE data of one budget and evaluates both.

A run on the tiny addition task of ``test_training``: the "WC" model wrote 3 solutions per problem
(a third of them wrong), the "SE" model 1 (all right) — the compute-matched budget 1 vs 3 of a plan
with a 3x parameter ratio. Samples are graded by the real grader; students are tiny Llamas.
"""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest

from flopmatch.budget import plan_budgets
from flopmatch.evaluation import EvalConfig
from flopmatch.paradigms import (
    ParadigmResult,
    knowledge_distillation,
    relative_gain,
    self_improvement,
    weak_to_strong,
)
from flopmatch.problems import save_problems
from flopmatch.prompts import PromptConfig
from flopmatch.store import RunDir, append_shard, model_key

PROMPT = PromptConfig(style="plain", shots=0, instruction="Add.")  # the tiny models have no chat template
EVAL = EvalConfig(backend="hf", n=2, ks=(1, 2), max_tokens=24, backend_options={"dtype": "float32", "batch_size": 64})


def _wrong(solution: str, answer: str) -> str:
    wrong = str(int(answer) + 1)
    return solution.replace(f"={answer}.", f"={wrong}.").replace(f"{{{answer}}}", f"{{{wrong}}}")


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    import torch

    from flopmatch.grading import grade_run
    from test_training import addition_problem, addition_solution, byte_tokenizer, tiny_llama

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("paradigms")
    tokenizer = byte_tokenizer()
    models = {}
    for name in ("wc", "se", "student"):
        path = root / name
        tiny_llama(tokenizer).save_pretrained(path)
        tokenizer.save_pretrained(path)
        models[name] = str(path)
    run = RunDir(root / "run").ensure()
    problems = [addition_problem(i, "train") for i in range(120)]
    save_problems(run, problems)
    plan_budgets(mode="flops", se_samples=[1], wc_params=1e5, se_params=3e5, wc_name=models["wc"],
                 se_name=models["se"]).save(run)
    for role, per_problem in (("wc", 3), ("se", 1)):
        rows = []
        for p in problems:
            for idx in range(per_problem):
                text = addition_solution(p)
                if role == "wc" and idx == 1:
                    text = _wrong(text, p.answer)
                rows.append({"model": models[role], "problem_id": p.problem_id, "sample_idx": idx, "seed": idx,
                             "text": text})
        append_shard(run.samples_dir(models[role]), rows)
    grade_run(run.root, workers=1, progress=False)
    return {
        "run": run, **models,
        "validation": [addition_problem(i, "validation") for i in range(1000, 1016)],
        "test": [addition_problem(i, "test") for i in range(2000, 2024)],
    }


def _config(**overrides):
    from test_training import tiny_config

    return tiny_config(**{"max_steps": 40, "n_checkpoints": 2, **overrides})


@pytest.mark.train
def test_knowledge_distillation_compares_wc_and_se_data_and_resumes(study):
    from flopmatch.report import paradigm_comparisons

    run = study["run"]
    kwargs = dict(student=study["student"], wc_model=study["wc"], se_model=study["se"], budget=1,
                  test=study["test"], validation=study["validation"], train_config=_config(),
                  eval_config=EVAL, number_matched=True, baseline=True, prompt=PROMPT)
    result = knowledge_distillation(run, **kwargs)
    assert isinstance(result, ParadigmResult)
    assert (result.paradigm, result.budget_se_samples, result.student) == (
        "knowledge_distillation", 1, study["student"])
    # the data: WC keeps its 2 correct of 3 per problem, SE 1 of 1, number-matched WC 1 of 1
    assert result.data["wc"]["examples"] == 240 and result.data["se"]["examples"] == 120
    assert result.data["wc_number_matched"]["examples"] == 120
    assert result.data["wc_number_matched"]["samples_per_problem"] == 1
    for kind in ("wc", "se", "wc_number_matched"):
        metrics = getattr(result, "wc_data" if kind == "wc" else "se_data" if kind == "se" else kind)
        assert set(metrics) >= {"pass@1", "maj@2", "pass@2", "sample_accuracy"}
        model_dir = run.model_dir(f"knowledge_distillation-{model_key(study['student'])}-on-"
                                  f"{result.data[kind]['path'].split('/')[-1]}")
        assert result.artifacts[kind]["model"] == str(model_dir / "best")
        assert json.loads((model_dir / "selection.json").read_text())["metric"] == "pass@1"
    # (that training teaches the task is test_training's job; here a few steps prove the wiring)
    assert result.base is not None and set(result.base) == set(result.se_data)
    def papers_gain(wc: float, se: float) -> float:  # (WC - SE) / SE in percent, as the paper defines it
        return (wc - se) / se * 100.0 if se else float("nan")

    for metric, gain in result.relative_gain.items():
        assert gain == pytest.approx(papers_gain(result.wc_data[metric], result.se_data[metric]), nan_ok=True)
    # the report reads these rows and computes the same gain
    rows = pd.DataFrame(result.to_rows())
    assert set(rows["data"]) == {"wc", "se", "wc_number_matched", "base"}
    assert {"paradigm", "budget_se_samples", "student", "data", "metric", "value", "ci_low", "ci_high"} <= set(rows)
    comparison = paradigm_comparisons(rows)
    headline = comparison[comparison["metric"] == "pass@1"].iloc[0]
    pass1 = rows[rows["metric"] == "pass@1"].set_index("data")["value"]
    assert headline["gain"] == pytest.approx(papers_gain(pass1["wc"], pass1["se"]), nan_ok=True)
    assert (rows["ci_low"] <= rows["value"] + 1e-12).all() and (rows["value"] <= rows["ci_high"] + 1e-12).all()

    # a second call finds everything done: same numbers, no retraining
    record = run.model_dir(result.artifacts["wc"]["model"].split("/")[-2]) / "train_result.json"
    stamp = record.stat().st_mtime_ns
    again = knowledge_distillation(run, **kwargs)
    assert again.wc_data == result.wc_data and again.se_data == result.se_data
    assert record.stat().st_mtime_ns == stamp


@pytest.mark.train
def test_self_improvement_and_weak_to_strong_train_the_wc_and_se_models(study):
    run = study["run"]
    common = dict(wc_model=study["wc"], se_model=study["se"], budget=1, test=study["test"][:8],
                  train_config=_config(max_steps=10, n_checkpoints=1), eval_config=EVAL.model_copy(update={"n": 0}),
                  prompt=PROMPT)
    si = self_improvement(run, **common)
    w2s = weak_to_strong(run, **common)
    assert si.student == study["wc"] and w2s.student == study["se"]
    assert si.artifacts["wc"]["model"].split("/")[-2].startswith(f"self_improvement-{model_key(study['wc'])}-on-")
    assert w2s.artifacts["se"]["model"].split("/")[-2].startswith(f"weak_to_strong-{model_key(study['se'])}-on-")
    assert si.wc_number_matched is None and si.base is None
    assert set(si.wc_data) == set(si.se_data) == set(si.relative_gain) == {"pass@1"}


def test_relative_gain_is_the_papers_formula():
    assert relative_gain(0.53, 0.5) == pytest.approx(6.0)
    assert relative_gain(0.5, 0.5) == 0.0
    assert math.isnan(relative_gain(0.2, 0.0))
