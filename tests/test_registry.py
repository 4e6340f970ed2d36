"""flopmatch.study.registry: one record per study stage, read by the orchestrator, the dry run, status and
the report; digests of finished runs unchanged by the move to the registry."""

from __future__ import annotations

import dataclasses

import pytest

from flopmatch.stage_names import STAGE_NAMES
from flopmatch.store import RunDir, config_hash
from flopmatch.study import (
    REGISTRY,
    STAGE_RUNNERS,
    STAGE_VERSIONS,
    STAGES,
    StudyContext,
    demo_config,
    dry_run,
    freeze_config,
    get_stage,
    stage_digest,
    study_status,
)

#: Digests of the packaged demo config, computed at commit a364161 with the orchestrator's parallel
#: tables (``_needs``, ``_stage_config``, ``STAGE_VERSIONS``) before the registry replaced them, on the
#: upstream state of :func:`_every_stage_done`. A finished run whose stage digests changed would redo
#: those stages: these values must not change unless a stage's version is bumped on purpose (analyze was,
#: to version 2, when it began writing metrics/cost.parquet for the report). An advised run's analyze needs
#: the pilot since it writes metrics/pilot_vs_measured.parquet (the report had computed it from the sample
#: shards), which changed that digest alone: the others' analysis is unchanged and stays done.
DEMO_DIGESTS = {
    "problems": "f3a11930bd3df3a5",
    "plan": "1fae35737b5f0cfd",
    "pilot": "29c607d01528cdc6",
    "sample": "6b6f48ac7a6dcf3c",
    "grade": "79c511c900ace7be",
    "judge": "7bdf0ee7fbf965fb",
    "analyze": "df196a3a131e73c3",  # version 2 (cost.parquet); was 124f557c7aadaa02
    "sft": "da4459e1660f8f9e",
    "train": "7a92edf26390edba",
    "eval": "314e014b9260f739",
    "report": "9ea521cd59cb9bc6",
}
#: The same, computed the same way, for the demo with ``judge.enabled=false`` and ``budget.mode=advised``
#: (other upstream stages: sample and analyze also need the pilot; analyze and sft not the judge).
NO_JUDGE_ADVISED_DIGESTS = {
    "problems": "f3a11930bd3df3a5",
    "plan": "f98d2da52d2af189",
    "pilot": "cd6314be6d9a7b58",
    "sample": "43979bf33eba7bdc",
    "grade": "79c511c900ace7be",
    "judge": "60104e74aab4ace8",
    "analyze": "3bdffc95bf8992dd",  # needs the pilot (pilot_vs_measured); before: c98f2bb69d9b6d37
    "sft": "c46e3f743ed473f0",
    "train": "7a92edf26390edba",
    "eval": "314e014b9260f739",
    "report": "9ea521cd59cb9bc6",
}


def _every_stage_done() -> dict:
    """A state in which every stage finished, each with its own made-up output fingerprint."""
    return {s: {"status": "done", "outputs": {f"{s}/out": f"fp-{s}"}} for s in STAGE_NAMES}


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [((), DEMO_DIGESTS), (("judge.enabled=false", "budget.mode=advised"), NO_JUDGE_ADVISED_DIGESTS)],
    ids=["demo", "no-judge-advised"],
)
def test_digests_are_the_ones_computed_before_the_registry(tmp_path, overrides, expected):
    ctx = StudyContext(config=demo_config(list(overrides)), run=RunDir(tmp_path), log=lambda _: None)
    assert {s: stage_digest(ctx, s, _every_stage_done()) for s in STAGE_NAMES} == expected


def test_a_digest_hashes_the_records_view_version_and_needed_outputs(tmp_path):
    config = demo_config(["judge.enabled=false"])
    ctx = StudyContext(config=config, run=RunDir(tmp_path), log=lambda _: None)
    state = _every_stage_done()
    for record in REGISTRY:
        upstream = {n: state[n]["outputs"] for n in record.needs(config)}
        assert stage_digest(ctx, record.name, state) == config_hash(record.digest_input(config, upstream))
    bumped = dataclasses.replace(get_stage("sft"), version=2)
    assert config_hash(bumped.digest_input(config, {})) != config_hash(
        get_stage("sft").digest_input(config, {})
    )
    # a needed stage that has not finished: the stage cannot be judged yet
    del state["grade"]
    assert stage_digest(ctx, "analyze", state) is None and stage_digest(ctx, "plan", state) is not None


def test_one_record_per_stage_in_pipeline_order():
    names = [record.name for record in REGISTRY]
    assert len(set(names)) == len(names)
    assert tuple(names) == STAGE_NAMES == STAGES
    assert list(STAGE_RUNNERS) == names and list(STAGE_VERSIONS) == names
    assert all(get_stage(n).run is STAGE_RUNNERS[n] for n in names)
    bumped = {"plan": 2, "analyze": 2}
    assert {n: v for n, v in STAGE_VERSIONS.items() if v != 1} == bumped
    with pytest.raises(KeyError):
        get_stage("nope")


@pytest.mark.parametrize(
    "overrides", [(), ("judge.enabled=false", "budget.mode=advised", "training.enabled=false")]
)
def test_a_stage_needs_only_stages_before_it(overrides):
    config = demo_config(list(overrides))
    for position, record in enumerate(REGISTRY):
        assert set(record.needs(config)) <= set(STAGE_NAMES[:position]), record.name


def test_status_and_dry_run_show_each_record_and_why_it_is_off(tmp_path):
    config = demo_config(["training.enabled=false", "judge.enabled=false"])
    run = RunDir(tmp_path / "run").ensure()
    freeze_config(config, run)
    status = study_status(StudyContext(config=config, run=run, log=lambda _: None))
    assert [s.name for s in status] == list(STAGE_NAMES)
    off = {s.name: s.reason for s in status if s.state == "off"}
    assert off == {
        "pilot": "budget.mode is not advised",
        "judge": "judge.enabled is false",
        "sft": "training.enabled is false",
        "train": "training.enabled is false",
        "eval": "training.enabled is false",
    }
    assert {s.name: s.state for s in status if s.name not in off} == dict.fromkeys(
        ("problems", "plan", "sample", "grade", "analyze", "report"), "pending"
    )
    assert get_stage("report").needs(config) == ("plan", "sample", "analyze")  # no eval without training
    plan = dry_run(config, run.root)
    assert [(s.name, s.state) for s in plan.stages] == [(s.name, s.state) for s in status]
    assert plan.jobs == [] and plan.evals == 0


def test_the_report_lists_stages_in_pipeline_order():
    from types import SimpleNamespace

    from flopmatch.report.sections_training import _stages_section

    entry = {"status": "done", "seconds": 1.0, "finished_at": 0.0}
    data = SimpleNamespace(stages={name: entry for name in reversed(STAGE_NAMES)})
    section = _stages_section(data)
    assert [row[0] for row in section.blocks[0].rows] == list(STAGE_NAMES)
