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
def test_a_study_on_two_workers_trains_and_evaluates_each_job_once_with_the_sequential_results(
    tmp_path, seeds_study
):
    """training.workers: 2 runs the fine-tuning runs and evaluations on worker processes: same metrics as one
    after another (one torch thread either way), every job marked done, and a rerun redoes nothing. The study
    one after another is shared_studies.py's (four runs: two seeds of SE and WC data), checked in test_study."""
    import json
    import os

    import pandas as pd

    from flopmatch.study import run_study, validate_study_dict
    from shared_studies import seeds_study_dict

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    sequential, sequential_dir = seeds_study
    assert sequential.training.workers == 1
    config = validate_study_dict(seeds_study_dict("workers2", workers=2))
    assert config.model_copy(update={"name": sequential.name, "training": sequential.training}) == sequential
    tables = {}
    for workers, run_dir in ((1, sequential_dir), (2, tmp_path / "run2")):
        if workers == 2:
            run_study(config, run_dir, log=lambda _: None, progress=False)
        state = json.loads((run_dir / "state.json").read_text())["jobs"]  # each run and evaluation is a job
        jobs = json.loads((run_dir / "models" / "trained.json").read_text())["jobs"]
        assert len(jobs) == 4 and all(jobs.values())
        assert all(state[f"train:{name}"]["status"] == "done" for name in jobs)
        assert all(state[f"eval:{name}"]["status"] == "done" for name in jobs)
        stamps = {name: (run_dir / "models" / name / "train_result.json").stat().st_mtime_ns for name in jobs}
        again = config if workers == 2 else sequential
        assert run_study(again, run_dir, log=lambda _: None, progress=False).ran == []
        assert stamps == {n: (run_dir / "models" / n / "train_result.json").stat().st_mtime_ns for n in jobs}
        tables[workers] = pd.read_parquet(run_dir / "metrics" / "paradigms.parquet").sort_values(
            ["model_name", "metric"], ignore_index=True
        )
    pd.testing.assert_series_equal(tables[1]["value"], tables[2]["value"])
