"""flopmatch.workers: jobs in spawned worker processes, one torch thread each."""

from __future__ import annotations

import math

import pytest

from flopmatch.workers import run_parallel


def test_results_come_back_in_call_order_from_spawned_single_thread_workers():
    seen: list[int] = []
    calls = [{"x": float(x)} for x in (4, 9, 16, 25)]
    results = run_parallel(_square_root, calls, workers=2, on_done=lambda index, _: seen.append(index))
    assert results == [2.0, 3.0, 4.0, 5.0]
    assert sorted(seen) == [0, 1, 2, 3]
    assert run_parallel(_torch_threads, [{}], workers=2) == [1]


def test_a_failing_call_raises_here_and_bad_worker_counts_are_refused():
    with pytest.raises(ValueError, match="math domain error"):
        run_parallel(_square_root, [{"x": 1.0}, {"x": -1.0}], workers=2)
    with pytest.raises(ValueError, match="workers must be >= 1"):
        run_parallel(_square_root, [{"x": 1.0}], workers=0)
    assert run_parallel(_square_root, [], workers=2) == []


def _square_root(x: float) -> float:
    return math.sqrt(x)


def _torch_threads() -> int:
    import torch

    return torch.get_num_threads()


@pytest.mark.train
def test_a_study_on_two_workers_trains_and_evaluates_each_job_once_with_the_sequential_results(tmp_path):
    """training.workers: 2 runs the fine-tuning runs and evaluations on worker processes: same metrics as one
    after another (one torch thread either way), every job marked done, and a rerun redoes nothing."""
    import json
    import os

    import pandas as pd

    from flopmatch.study import run_study, validate_study_dict

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    tiny_student = {"hidden_size": 32, "num_layers": 1, "num_heads": 1, "intermediate_size": 32,
                    "train_steps": 20, "tokenizer_corpus": 300}  # fmt: skip

    def study(workers: int) -> dict:
        return {
            "name": f"workers{workers}",
            "problems": {"sample": {"source": "toyworld", "split": "train", "limit": 8}, "validation": {"holdout": 4},
                         "test": {"source": "toyworld", "split": "test", "limit": 6}},
            "models": {"wc": {"model": "toyworld-wc", "backend": "hf"}, "se": {"model": "toyworld-se", "backend": "hf"}},
            "budget": {"se_samples": [1]},
            "sampling": {"max_tokens": 96},
            "judge": {"spec": "toyworld-checker", "per_model": 100},
            "analysis": {"n_boot": 50},
            "paradigms": {"student": {"model": "tiny-student", "backend": "hf", "toyworld_spec": tiny_student},
                          "weak_to_strong": False, "number_matched": []},
            "training": {"preset": "tiny-cpu", "seeds": [0, 1], "options": {"max_steps": 2, "n_checkpoints": 1},
                         "workers": workers},
            "evaluation": {"backend": "hf", "n": 1},
        }  # fmt: skip

    tables = {}
    for workers in (1, 2):
        config = validate_study_dict(study(workers))
        run_dir = tmp_path / f"run{workers}"
        run_study(config, run_dir, log=lambda _: None, progress=False)
        state = json.loads((run_dir / "state.json").read_text())["jobs"]  # each run and evaluation is a job
        jobs = json.loads((run_dir / "models" / "trained.json").read_text())["jobs"]
        assert len(jobs) == 8 and all(jobs.values())
        assert all(state[f"train:{name}"]["status"] == "done" for name in jobs)
        assert all(state[f"eval:{name}"]["status"] == "done" for name in jobs)
        stamps = {name: (run_dir / "models" / name / "train_result.json").stat().st_mtime_ns for name in jobs}
        assert run_study(config, run_dir, log=lambda _: None, progress=False).ran == []
        assert stamps == {n: (run_dir / "models" / n / "train_result.json").stat().st_mtime_ns for n in jobs}
        tables[workers] = pd.read_parquet(run_dir / "metrics" / "paradigms.parquet").sort_values(
            ["model_name", "metric"], ignore_index=True
        )
    pd.testing.assert_series_equal(tables[1]["value"], tables[2]["value"])
