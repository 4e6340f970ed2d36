"""The cost ledger: per-session shards, per-model summaries, repair after a kill, the `ledger` command."""

from __future__ import annotations

import json

import pandas as pd
import pyarrow as pa
import pytest
from typer.testing import CliRunner

from flopmatch import ledger
from flopmatch.cli import app
from flopmatch.ledger import LedgerSession, read_ledger, reconcile, summarize_ledger
from flopmatch.sampling import SAMPLE_SCHEMA
from flopmatch.store import RunDir, shard_paths


def _session(run, model="org/wc", **kw) -> LedgerSession:
    defaults = dict(backend="hf", seeding="per-request", params=1_000)
    return LedgerSession(run_dir=run, model=model, **{**defaults, **kw})


def test_session_rewrites_its_own_shard_and_keeps_others(tmp_path):
    first = _session(tmp_path)
    first.add(prompt_tokens=10, completion_tokens=5, truncated=False)
    first.flush()
    first.add(prompt_tokens=10, completion_tokens=7, truncated=True)
    first.seconds = 2.0
    first.flush("done")
    second = _session(tmp_path)
    second.flush()
    assert len(shard_paths(RunDir(tmp_path).ledger_path)) == 2  # one file per session, rewritten in place
    rows = {r["session_id"]: r for r in read_ledger(tmp_path).to_pylist()}
    row = rows[first.session_id]
    counts = (row["samples"], row["prompt_tokens"], row["completion_tokens"], row["truncated"])
    assert counts == (2, 20, 12, 1)
    assert row["status"] == "done"
    assert row["nominal_flops"] == 2 * 1_000 * 12  # 2·P·generated tokens
    assert row["prompt_flops"] == 2 * 1_000 * 20
    assert rows[second.session_id]["status"] == "running"


def test_ledger_directory_reads_as_one_parquet_table(tmp_path):
    for model in ("a", "b"):
        s = _session(tmp_path, model=model)
        s.add(prompt_tokens=1, completion_tokens=2, truncated=False)
        s.flush("done")
    frame = pd.read_parquet(RunDir(tmp_path).ledger_path)  # what other tools do with ledger.parquet
    assert sorted(frame["model"]) == ["a", "b"]


def test_unknown_status_and_params_are_explicit(tmp_path):
    s = _session(tmp_path, params=None)
    s.add(prompt_tokens=1, completion_tokens=2, truncated=False)
    with pytest.raises(ledger.LedgerError, match="unknown ledger status"):
        s.flush("finished")
    s.flush("done")
    assert read_ledger(tmp_path).to_pylist()[0]["nominal_flops"] is None


def test_summary_totals_and_throughput(tmp_path):
    a1 = _session(tmp_path, model="org/wc", backend="vllm", seeding="engine")
    for _ in range(3):
        a1.add(prompt_tokens=10, completion_tokens=100, truncated=False)
    a1.seconds = 3.0
    a1.flush("done")
    a2 = _session(tmp_path, model="org/wc")
    a2.add(prompt_tokens=10, completion_tokens=100, truncated=True)
    a2.seconds = 1.0
    a2.flush("budget")
    b = _session(tmp_path, model="org/se", params=3_000)
    b.add(prompt_tokens=10, completion_tokens=50, truncated=False)
    b.seconds = 5.0
    b.flush("done")

    summary = summarize_ledger(tmp_path).set_index("model")
    wc = summary.loc["org/wc"]
    assert wc["sessions"] == 2 and wc["samples"] == 4 and wc["completion_tokens"] == 400
    assert wc["truncated"] == 1 and wc["truncated_frac"] == pytest.approx(0.25)
    assert wc["seconds"] == pytest.approx(4.0)
    assert wc["tokens_per_second"] == pytest.approx(100.0)
    assert wc["seconds_per_sample"] == pytest.approx(1.0)
    assert wc["backend"] == "hf+vllm" and wc["seeding"] == "engine+per-request"
    assert wc["nominal_flops"] == pytest.approx(2 * 1_000 * 400)
    se = summary.loc["org/se"]
    assert se["nominal_flops"] == pytest.approx(2 * 3_000 * 50)
    assert se["flops_per_sample"] == pytest.approx(2 * 3_000 * 50)


def test_empty_run_summary_has_the_columns(tmp_path):
    summary = summarize_ledger(tmp_path)
    assert summary.empty
    assert {"model", "samples", "completion_tokens", "seconds", "tokens_per_second"} <= set(summary.columns)


def _sample_rows(session_id: str, n: int, *, tokens: int = 4, length_every: int = 0) -> list[dict]:
    common = dict(model="org/wc", sample_idx=0, text="x", prompt_tokens=3, completion_tokens=tokens,
                  backend="hf", seeding="per-request", seconds=0.5, session_id=session_id)  # fmt: skip
    return [
        {
            **common,
            "problem_id": f"p{i}",
            "seed": i,
            "finish_reason": "length" if length_every and i % length_every == 0 else "stop",
        }
        for i in range(n)
    ]


def test_reconcile_repairs_a_killed_session_from_its_samples(tmp_path):
    killed = _session(tmp_path)
    killed.add(prompt_tokens=3, completion_tokens=4, truncated=False)  # flushed after 1 sample...
    killed.seconds = 0.1
    killed.flush()  # ...then SIGKILL after 4 more samples were persisted
    finished = _session(tmp_path)
    finished.flush("done")
    other_model = _session(tmp_path, model="org/se")
    other_model.flush()
    samples = pa.Table.from_pylist(_sample_rows(killed.session_id, 5, length_every=2), schema=SAMPLE_SCHEMA)

    assert reconcile(tmp_path, "org/wc", samples) == 1
    rows = {r["session_id"]: r for r in read_ledger(tmp_path).to_pylist()}
    fixed = rows[killed.session_id]
    assert fixed["status"] == "killed"
    assert (fixed["samples"], fixed["prompt_tokens"], fixed["completion_tokens"]) == (5, 15, 20)
    assert fixed["truncated"] == 3  # p0, p2, p4
    assert fixed["seconds"] == pytest.approx(2.5)  # the samples' attributed time beats the stale 0.1 s
    assert fixed["nominal_flops"] == 2 * 1_000 * 20
    assert rows[finished.session_id]["status"] == "done"
    assert rows[other_model.session_id]["status"] == "running"  # another model's session is not ours
    assert reconcile(tmp_path, "org/wc", samples) == 0  # idempotent


def test_a_ledger_file_in_the_way_is_reported(tmp_path):
    path = RunDir(tmp_path).ledger_path
    pa.parquet.write_table(pa.Table.from_pylist([{"model": "m", "samples": 1}]), path)
    assert read_ledger(tmp_path).to_pylist()[0]["samples"] == 1  # read, missing columns as nulls
    with pytest.raises(ledger.LedgerInTheWay, match="directory of per-session") as info:
        _session(tmp_path).flush()
    assert isinstance(info.value, FileExistsError)  # what Python callers caught before


def test_ledger_command_prints_table_and_json(tmp_path):
    s = _session(tmp_path, model="org/wc")
    s.add(prompt_tokens=10, completion_tokens=100, truncated=False)
    s.seconds = 2.0
    s.flush("done")
    runner = CliRunner()
    result = runner.invoke(app, ["ledger", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "org/wc" in result.output and "2·P" in result.output
    result = runner.invoke(app, ["ledger", str(tmp_path), "--json"])
    assert result.exit_code == 0, result.output
    [record] = json.loads(result.output)
    assert record["model"] == "org/wc" and record["tokens_per_second"] == pytest.approx(50.0)
    result = runner.invoke(app, ["ledger", str(tmp_path), "--sessions", "--json"])
    assert json.loads(result.output)[0]["session_id"] == s.session_id
    result = runner.invoke(app, ["ledger", str(tmp_path / "nope")])
    assert result.exit_code != 0 and "no run directory" in result.output


def test_flops_convention_is_the_papers_and_is_what_the_ledger_charges(tmp_path):
    """The paper's 2·P·W counts generated tokens only: a 1.5B model writing 3 samples of 100 tokens
    after 500-token prompts is charged 2 x 1.5e9 x 300 = 9e11 FLOPs (prompts apart: 2 x 1.5e9 x 1,500)."""
    assert "2 * params * completion_tokens" in ledger.FLOPS_CONVENTION
    assert ledger.nominal_flops(10, 3) == 60.0 and ledger.nominal_flops(None, 3) is None
    session = _session(tmp_path, params=1_500_000_000)
    for _ in range(3):
        session.add(prompt_tokens=500, completion_tokens=100, truncated=False)
    session.seconds = 3.0
    session.flush("done")
    [row] = read_ledger(tmp_path).to_pylist()
    assert row["nominal_flops"] == 9e11 and row["prompt_flops"] == 4.5e12
    unknown = _session(tmp_path / "unknown", params=None)
    unknown.add(prompt_tokens=5, completion_tokens=7, truncated=False)
    unknown.flush("done")
    assert read_ledger(tmp_path / "unknown").to_pylist()[0]["nominal_flops"] is None  # never a guess
