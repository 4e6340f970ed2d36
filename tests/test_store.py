"""The run-directory store: atomic writes, shards, config hashes, stage state."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pyarrow as pa
import pytest

from flopmatch import store
from flopmatch.store import RunDir
from flopmatch.store.io import ModelNameError


def test_write_table_is_atomic_and_roundtrips(tmp_path):
    path = tmp_path / "sub" / "t.parquet"
    store.write_table([{"a": 1, "b": "x"}, {"a": 2, "b": "y"}], path)
    assert store.read_table(path).to_pylist() == [{"a": 1, "b": "x"}, {"a": 2, "b": "y"}]
    # No temporary files are left beside it.
    assert [p.name for p in path.parent.iterdir()] == ["t.parquet"]


def test_failed_write_leaves_previous_version(tmp_path):
    path = tmp_path / "t.parquet"
    store.write_table([{"a": 1}], path)
    with pytest.raises(TypeError):
        store.write_table(object(), path)
    assert store.read_table(path).to_pylist() == [{"a": 1}]
    assert [p.name for p in tmp_path.iterdir()] == ["t.parquet"]


def test_shards_read_back_as_one_table(tmp_path):
    d = tmp_path / "samples" / "m"
    assert store.read_shards(d).num_rows == 0
    assert store.append_shard(d, []) is None
    store.append_shard(d, [{"problem_id": "p1", "sample_idx": 0}])
    store.append_shard(d, [{"problem_id": "p1", "sample_idx": 1}, {"problem_id": "p2", "sample_idx": 0}])
    table = store.read_shards(d)
    assert table.num_rows == 3
    assert store.done_keys(d) == {("p1", 0), ("p1", 1), ("p2", 0)}


def test_read_shards_with_schema_when_empty(tmp_path):
    schema = pa.schema([("x", pa.int64())])
    assert store.read_shards(tmp_path / "none", schema=schema).schema == schema


def test_config_hash_is_stable_and_order_independent():
    a = store.config_hash({"b": 1, "a": [1, 2], "p": Path("/x")})
    b = store.config_hash({"a": [1, 2], "p": "/x", "b": 1})
    assert a == b
    assert store.config_hash({"a": [2, 1]}) != store.config_hash({"a": [1, 2]})


def test_model_key():
    assert store.model_key("Qwen/Qwen2.5-0.5B-Instruct") == "Qwen--Qwen2.5-0.5B-Instruct"
    assert store.model_key("toyworld-se") == "toyworld-se"
    with pytest.raises(ModelNameError, match="cannot make a directory name from model '///'") as info:
        store.model_key("///")
    assert isinstance(info.value, ValueError)


def test_stage_state(tmp_path):
    run = RunDir(tmp_path / "run").ensure()
    assert not run.is_done("grade", "h1")
    run.mark_started("grade", "h1")
    assert not run.is_done("grade", "h1")
    run.mark_done("grade", "h1", rows=3)
    assert run.is_done("grade", "h1")
    assert not run.is_done("grade", "h2")
    assert run.stage_state()["grade"]["rows"] == 3
    run.clear_stage("grade")
    assert not run.is_done("grade", "h1")


WRITER = textwrap.dedent(
    """
    import sys, pyarrow as pa
    from flopmatch import store
    directory = sys.argv[1]
    rows_per_shard = 20000
    for shard in range(10_000):
        rows = [{"problem_id": f"p{shard}", "sample_idx": i, "text": "x" * 200} for i in range(rows_per_shard)]
        store.append_shard(directory, rows)
        print(shard, flush=True)
    """
)


def test_sigkill_mid_shard_leaves_only_whole_shards(tmp_path):
    """A writer killed with SIGKILL while writing a shard leaves every finished shard and no partial rows."""
    directory = tmp_path / "samples" / "model"
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(directory)], stdout=subprocess.PIPE, text=True
    )
    try:
        # Wait until a few shards are complete, then kill at an arbitrary point of the next write.
        finished = 0
        while finished < 3:
            line = proc.stdout.readline()
            assert line, "writer died before finishing three shards"
            finished += 1
        time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL

    table = store.read_shards(directory)
    shards = store.shard_paths(directory)
    assert len(shards) >= 3
    # Only whole shards: every shard holds exactly the 20,000 rows of one problem id.
    counts = table.group_by("problem_id").aggregate([("sample_idx", "count")]).to_pylist()
    assert all(c["sample_idx_count"] == 20000 for c in counts)
    assert table.num_rows == 20000 * len(shards)
    # The interrupted temporary file, if any, is not read as a shard.
    leftovers = [p.name for p in directory.iterdir() if p not in shards]
    assert all(name.startswith(".") and name.endswith(".tmp") for name in leftovers)


def test_run_dir_is_path_like(tmp_path):
    run = RunDir(tmp_path / "run")
    assert RunDir(run).root == run.root
    assert Path(run) == tmp_path / "run"


def test_the_allocation_journal_lives_beside_the_models_samples(tmp_path):
    run = RunDir(tmp_path / "run")  # where allocation_run has always written it, so old runs read back
    assert run.allocation_journal_path("org/m-1b") == tmp_path / "run" / "samples" / "org--m-1b" / "allocation.json"


@pytest.mark.parametrize("mask", [0o022, 0o027, 0o077])
def test_written_files_follow_the_umask_not_the_private_temp_file(tmp_path, mask):
    """Files are written through a private temporary file; the result gets the mode any file created
    under the user's umask gets (0644 under 022, 0640 under 027, 0600 under 077), whatever it is."""
    before = os.umask(mask)
    try:
        written = [
            store.write_json({"a": 1}, tmp_path / "x.json"),
            store.write_text("hello", tmp_path / "x.txt"),
            store.write_table(pa.table({"a": [1]}), tmp_path / "x.parquet"),
            store.append_shard(tmp_path / "shards", pa.table({"a": [1]})),
        ]
    finally:
        os.umask(before)
    assert {oct(path.stat().st_mode & 0o777) for path in written} == {oct(0o666 & ~mask)}



def test_jobs_have_their_own_section(tmp_path):
    """Sub-stage jobs are recorded apart from the stages: stage_state() holds stages only."""
    run = RunDir(tmp_path / "run").ensure()
    run.mark_done("grade", "s1")
    run.mark_job_started("grade:m", "j1")
    assert not run.is_job_done("grade:m", "j1")
    run.mark_job_done("grade:m", "j1", rows=4)
    assert run.is_job_done("grade:m", "j1") and not run.is_job_done("grade:m", "j2")
    assert set(run.stage_state()) == {"grade"}
    assert run.job_state()["grade:m"]["rows"] == 4
    raw = store.read_json(run.state_path)
    assert set(raw) == {"grade", "jobs"} and set(raw["jobs"]) == {"grade:m"}
    run.mark_done("sample", "s2")  # writing a stage keeps the jobs
    assert run.is_job_done("grade:m", "j1")
    run.mark_failed("judge", "s3", "boom")
    assert run.stage_state()["judge"]["status"] == "failed" and run.is_job_done("grade:m", "j1")
    run.clear_job("grade:m")
    assert run.job_state() == {} and set(run.stage_state()) == {"grade", "sample", "judge"}


def test_an_old_runs_top_level_job_keys_read_as_jobs(tmp_path):
    """state.json written before the jobs section kept "grade:x" / "train:x" at the top level."""
    run = RunDir(tmp_path / "run").ensure()
    old = {
        "grade": {"hash": "s", "status": "done"},
        "grade:m": {"hash": "g", "status": "done", "grader": "x"},
        "train:job": {"hash": "t", "status": "done", "best": "b"},
    }
    store.write_json(old, run.state_path)
    assert set(run.stage_state()) == {"grade"}
    assert set(run.job_state()) == {"grade:m", "train:job"}
    assert run.is_job_done("grade:m", "g") and run.is_done("train:job", "t")  # old call sites still work
    run.mark_job_done("grade:m", "g2")  # the entry moves into the section
    raw = store.read_json(run.state_path)
    assert "grade:m" not in raw and raw["jobs"]["grade:m"]["hash"] == "g2"
    assert raw["train:job"]["best"] == "b"  # untouched until recorded again
    assert run.job_state()["train:job"]["best"] == "b"


def test_old_int32_sample_shards_read_as_int64(tmp_path):
    """sample_idx was int32 in sample shards; read with the schema, old and new shards make one table."""
    from flopmatch.store.schemas import SAMPLE_SCHEMA

    assert SAMPLE_SCHEMA.field("sample_idx").type == pa.int64()
    d = tmp_path / "samples" / "m"
    store.append_shard(d, pa.table({"problem_id": ["p1"], "sample_idx": pa.array([0], pa.int32())}))
    store.append_shard(d, pa.table({"problem_id": ["p1"], "sample_idx": pa.array([1], pa.int64())}))
    table = store.read_shards(d, columns=["problem_id", "sample_idx"], schema=SAMPLE_SCHEMA)
    assert table.schema.field("sample_idx").type == pa.int64()
    assert table.column("sample_idx").to_pylist() == [0, 1]
    assert store.read_shards(d).num_rows == 2  # no schema: the integers are widened
    assert store.done_keys(d) == {("p1", 0), ("p1", 1)}


def test_metrics_tables_and_indexes_are_named_by_the_layout_and_read_by_the_store(tmp_path):
    """Every metrics table is a RunDir path (an unknown name is an error, not a new file) and read_metrics
    returns it, or None before its stage ran; study.yaml and allocated/summary.json likewise."""
    from flopmatch.store.layout import METRICS_TABLES
    from flopmatch.store.queries import (
        read_allocated_index,
        read_metrics,
        read_study_mapping,
        read_study_text,
    )

    run = RunDir(tmp_path / "run").ensure()
    assert run.metrics_path("comparisons") == run.root / "metrics" / "comparisons.parquet"
    assert run.metrics_path("allocation", ".md") == run.root / "metrics" / "allocation.md"
    assert run.metrics_path("cost") == run.cost_path and "paradigms" in METRICS_TABLES
    with pytest.raises(ValueError, match="no metrics table 'comparison'"):
        run.metrics_path("comparison")
    assert (run.advice_path, run.allocated_index_path, run.trained_index_path) == (
        run.root / "pilot" / "advice.json", run.root / "allocated" / "summary.json", run.root / "models" / "trained.json")
    assert read_metrics(run, "summary") is None and read_study_text(run) is None and read_study_mapping(run) is None
    assert read_allocated_index(run) is None
    store.write_table(pa.table({"metric": ["pass@1"], "value": [0.5]}), run.metrics_path("summary"))
    assert read_metrics(run, "summary").to_pylist() == [{"metric": "pass@1", "value": 0.5}]
    store.write_text("name: demo  # frozen\n", run.study_path)
    assert read_study_text(run) == "name: demo  # frozen\n" and read_study_mapping(run) == {"name": "demo"}
    store.write_json({"sets": [{"policy": "adaptive"}]}, run.allocated_index_path)
    assert read_allocated_index(run) == {"sets": [{"policy": "adaptive"}]}
