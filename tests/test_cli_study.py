"""`flopmatch status` (flopmatch.cli.study): what it says of a run's stages."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from flopmatch.cli import app
from flopmatch.store import RunDir
from flopmatch.study import demo_config, freeze_config


def test_status_counts_the_finished_jobs_of_a_stage_still_running_and_writes_durations_as_the_report(tmp_path):
    run = RunDir(tmp_path / "run")
    freeze_config(demo_config(), run)
    run.mark_done("grade", "h-grade", seconds=125.0)
    run.mark_started("train", "h-train")
    for job in ("train:kd-wc-b1", "train:kd-se-b1"):
        run.mark_job_done(job, f"h-{job}")
    run.mark_job_started("train:kd-wc-b10", "h")
    run.mark_job_done("grade:toyworld-wc", "h")  # another stage's job is not the train stage's

    result = CliRunner().invoke(app, ["status", str(run.root), "--json"])
    assert result.exit_code == 0, result.output
    stages = {s["stage"]: s for s in json.loads(result.output)["stages"]}
    assert stages["train"]["note"] == "started and not finished; the next run resumes it (2 jobs done)"
    assert stages["sft"]["note"] == ""
    table = CliRunner().invoke(app, ["status", str(run.root)], terminal_width=200)
    assert "2m 05s" in table.output  # as the report's stage table writes 125 s
