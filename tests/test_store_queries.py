"""The run's typed readers (flopmatch.store.queries): one answer to each question a stage asks of a run."""

from __future__ import annotations

import logging

import pyarrow as pa
import pytest

from flopmatch import store
from flopmatch.analysis_cost import cost_by_budget, write_cost
from flopmatch.budget import BudgetPlan, plan_budgets
from flopmatch.store import RunDir
from flopmatch.store.queries import (
    budget_at_index,
    budget_samples,
    graded_models,
    grades_file,
    load_problems,
    plan_models,
    problem_counts,
    problem_splits,
    problems_by_role,
    read_cost,
    read_grades,
    read_plan,
    read_roles,
    read_samples,
    sample_costs,
    sample_texts,
    sample_tokens,
    samples_at_budget,
)
from graded_runs import graded_run
from sample_reads import AllValidJudge, advised_run, planned_run, spy_sample_reads

WC, SE = "org/weak-1b", "org/strong-3b"


def _planned(run: RunDir) -> BudgetPlan:
    plan = plan_budgets(mode="flops", se_samples=[1, 2], wc_params=1e9, se_params=3e9, wc_name=WC, se_name=SE)
    plan.save(run)
    return plan


def test_problems_by_role_and_all_problems(tmp_path):
    run, problems = graded_run(tmp_path / "run", [[True], [False]])
    assert [p.problem_id for p in problems_by_role(run, "test")] == [p.problem_id for p in problems]
    assert problems_by_role(run, "sample") == []
    assert problem_splits(run) == ["test"]
    assert set(load_problems(run)) == {p.problem_id for p in problems}


def test_problem_counts_read_no_problem(tmp_path, monkeypatch):
    import pyarrow.parquet as pq

    from flopmatch.problems import save_problems
    from flopmatch.toyworld import load_problems as toy_problems

    run, problems = graded_run(tmp_path / "run", [[True], [False], [True]])
    save_problems(run, toy_problems("train", limit=5))
    monkeypatch.setattr(pq, "read_table", lambda *a, **k: pytest.fail("problem_counts read a table"))
    assert problem_counts(run) == {"test": 3, "train": 5}
    assert problem_counts(RunDir(tmp_path / "empty")) == {}


def test_the_plan_is_read_once_typed(tmp_path):
    run = RunDir(tmp_path / "run").ensure()
    assert read_plan(run, required=False) is None
    with pytest.raises(FileNotFoundError, match="no plan"):
        read_plan(run)
    _planned(run)
    plan = read_plan(run)
    assert isinstance(plan, BudgetPlan) and plan_models(plan) == (WC, SE)
    # WC gets three times SE's samples (P_SE / P_WC = 3) at the budget named by SE's samples per problem
    assert samples_at_budget(run, WC, 1) == 3 and samples_at_budget(run, WC, 2) == 6
    assert samples_at_budget(run, "org--strong-3b", 1) == 1
    assert plan.se_budgets == [1, 2] and budget_at_index(run, 1) == 2
    with pytest.raises(ValueError, match=r"no budget with se_samples=5 \(the plan has: 1, 2\)"):
        samples_at_budget(run, WC, 5)
    with pytest.raises(ValueError, match="neither the plan's WC"):
        samples_at_budget(run, "other", 1)
    run.plan_path.write_text('{"mode": "flops"}')
    with pytest.raises(ValueError, match="not a valid budget plan"):
        read_plan(run)


def test_graded_samples_below_a_budget_and_text_only_when_asked(tmp_path):
    run, problems = graded_run(tmp_path / "run", [[True, False, True], [False, True]])
    assert graded_models(run) == {"m": run.grades_path("m")}
    below = read_grades(run, "m", samples=2)
    assert sorted(below.column("sample_idx").to_pylist()) == [0, 0, 1, 1]
    first = problems[0].problem_id
    assert sample_texts(run, "m", {(first, 2)}) == {(first, 2): "solution 2"}
    with pytest.raises(ValueError, match="have no text"):
        sample_texts(run, "m", {(first, 9)})
    costs = sample_costs(run, "m")
    assert "text" not in costs.column_names and costs.num_rows == 5
    assert read_samples(run, "m", ("problem_id", "sample_idx"), samples=1).num_rows == 2
    with pytest.raises(FileNotFoundError, match="no grades"):
        read_grades(run, "other")


def test_old_int32_sample_idx_reads_as_int64(tmp_path):
    run, problems = graded_run(tmp_path / "run", [[True]])
    old = pa.table({"problem_id": [problems[0].problem_id], "sample_idx": pa.array([1], pa.int32()),
                    "text": ["old"], "completion_tokens": pa.array([5], pa.int32())})  # fmt: skip
    store.append_shard(run.samples_dir("m"), old)
    table = read_samples(run, "m", ("problem_id", "sample_idx", "text"))
    assert table.schema.field("sample_idx").type == pa.int64()
    assert sorted(table.column("sample_idx").to_pylist()) == [0, 1]
    assert sample_costs(run, "m").schema.field("sample_idx").type == pa.int64()


def test_the_cost_table_is_written_by_the_analysis_side_and_read_back(tmp_path):
    """cost.parquet holds, per budget and role, the first samples_per_problem samples' tokens and FLOPs."""
    run, _ = graded_run(tmp_path / "run", [[True] * 6, [False] * 6], model=WC)
    plan = _planned(run)
    assert write_cost(run, plan) == {} and read_cost(run) is None  # no roles.json: nothing to cost
    store.write_json({"wc": {"key": "org--weak-1b", "params": 1e9, "model": WC}}, run.roles_path)
    assert read_roles(run)["wc"]["params"] == 1e9
    assert write_cost(run, plan) == {"cost": run.cost_path}
    cost = read_cost(run).to_pandas()
    assert list(cost["role"]) == ["wc", "wc"] and list(cost["budget_se_samples"]) == [1, 2]
    assert list(cost["samples"]) == [2 * 3, 2 * 6]  # two problems, 3 and 6 WC samples each
    assert list(cost["nominal_flops"]) == [2 * 1e9 * 10 * 6, 2 * 1e9 * 10 * 12]
    # the plan as its JSON dict (what the report used to pass) gives the same table
    assert cost_by_budget(run, read_roles(run), store.read_json(run.plan_path)).equals(cost)
    store.write_json({}, run.roles_path)
    assert write_cost(run, plan) == {} and not run.cost_path.exists()  # a stale table goes


def test_budget_samples_by_index_is_deprecated_and_says_what_the_budget_is_called(tmp_path, caplog):
    """The old reader took an index into plan.json's budgets; it still answers, with a warning naming the
    budget (SE samples per problem) that index is."""
    run = RunDir(tmp_path / "run").ensure()
    _planned(run)
    with caplog.at_level(logging.WARNING, logger="flopmatch"):
        assert [budget_samples(run, WC, i) for i in (0, 1)] == [3, 6] and budget_samples(run, SE, 1) == 2
    assert "deprecated" in caplog.text and "samples_at_budget(run, model, 2)" in caplog.text
    with pytest.raises(ValueError, match=r"budget index 2 out of range.*se_samples 1, 2"):
        budget_samples(run, WC, 2)


def test_sample_tokens_and_the_grades_of_a_model_named_otherwise(tmp_path):
    run, problems = graded_run(tmp_path / "run", [[True, False], [True]])
    first, second = problems[0].problem_id, problems[1].problem_id
    assert sample_tokens(run, "m") == {(first, 0): 10, (first, 1): 10, (second, 0): 10}
    assert sample_tokens(run, "nobody") == {}
    no_tokens, _ = graded_run(tmp_path / "plain", [[True]])
    table = read_samples(no_tokens, "m", ("model", "problem_id", "sample_idx", "text"))
    for path in store.shard_paths(no_tokens.samples_dir("m")):
        path.unlink()
    store.append_shard(no_tokens.samples_dir("m"), table)
    assert sample_tokens(no_tokens, "m") == {}  # no completion_tokens recorded: FLOPs unknown
    # a grades file is found by the model its rows name when the name keys to another file
    run.grades_path("m").rename(run.grades_dir / "elsewhere.parquet")
    assert grades_file(run, "m") == run.grades_dir / "elsewhere.parquet"
    assert read_grades(run, "m").num_rows == 3 and grades_file(run, "other") is None


def test_read_grades_takes_the_grades_file_a_caller_already_found(tmp_path, monkeypatch):
    from flopmatch.store import queries

    run, _ = graded_run(tmp_path / "run", [[True, False], [True]])
    found = grades_file(run, "m")
    moved = run.grades_dir / "elsewhere.parquet"
    found.rename(moved)
    monkeypatch.setattr(queries, "grades_file", lambda *a: pytest.fail("looked the grades file up again"))
    assert read_grades(run, "m", path=moved, samples=1).num_rows == 2


# --------------------------------------------------------------------------- who reads sample text


def test_analysis_reads_sample_text_at_most_once_and_the_report_reads_no_sample_shard(tmp_path, monkeypatch):
    from flopmatch.analysis import analyze
    from flopmatch.judge import judge_run
    from flopmatch.report import build_report

    run = planned_run(tmp_path / "run")
    judge_run(run, AllValidJudge(), per_model=100)
    reads = spy_sample_reads(monkeypatch, run)
    result = analyze(run, n_boot=20, plots=False)
    assert {"summary", "cost"} <= set(result.files)
    assert len(reads.text) == 4 and reads.most_text_reads_of_a_shard == 1  # every shard of both models, once
    reads.clear()
    build_report(run)
    assert (run.report_dir / "report.md").exists()
    assert not reads.text and not reads.other  # the report reads metrics/cost.parquet, no sample shard


def test_an_advised_runs_analysis_reads_sample_text_once_and_its_report_reads_no_sample_shard(tmp_path, monkeypatch):
    """budget.mode advised: the pilot's forecasts against what the samples measured are the analysis's
    (metrics/pilot_vs_measured.parquet, from the texts it reads anyway); the report reads that table."""
    from flopmatch.analysis import analyze
    from flopmatch.report import build_report

    run = advised_run(tmp_path / "run")
    reads = spy_sample_reads(monkeypatch, run)
    analyze(run, n_boot=20, plots=False)
    assert len(reads.text) == 4 and reads.most_text_reads_of_a_shard == 1  # every shard of both models, once
    reads.clear()
    build_report(run)
    assert not reads.text and not reads.other
    report = (run.report_dir / "report.md").read_text()
    assert "## Pilot forecast vs measured" in report and "(advised)" in report


def test_grading_reads_sample_text_once(tmp_path, monkeypatch):
    from flopmatch.grading.run import grade_run

    run = planned_run(tmp_path / "run")
    for path in run.grades_dir.glob("*.parquet"):
        path.unlink()
    reads = spy_sample_reads(monkeypatch, run)
    assert set(grade_run(run, workers=1, progress=False)) == {"org--weak-1b", "org--strong-3b"}
    assert len(reads.text) == 4 and reads.most_text_reads_of_a_shard == 1
    reads.clear()
    grade_run(run, workers=1, progress=False)  # up to date: no sample is read again
    assert not reads.text


def test_graded_samples_are_the_grades_with_the_sample_columns_asked_for(tmp_path, monkeypatch):
    """read_graded: the grades' rows in their order, joined with the sample columns asked for, within a
    budget's prefix; no sample shard read unless a sample column is asked for."""
    from flopmatch.store.queries import below_budget, read_graded

    run, problems = graded_run(tmp_path / "run", [[True, False, True], [False, True]])
    first, second = problems[0].problem_id, problems[1].problem_id
    reads = spy_sample_reads(monkeypatch, run)
    assert read_graded(run, "m").equals(read_grades(run, "m")) and not reads.text and not reads.other
    table = read_graded(run, "m", samples=2, text=True, columns=("completion_tokens",))
    assert table.column_names == ["problem_id", "sample_idx", "status", "completion_tokens", "text"]
    assert table.select(["problem_id", "sample_idx", "status"]).equals(read_grades(run, "m", samples=2))
    assert table.to_pylist()[-1] == {"problem_id": second, "sample_idx": 1, "status": "correct",
                                     "completion_tokens": 10, "text": "solution 1"}  # fmt: skip
    assert len(reads.text) == 1 and reads.most_text_reads_of_a_shard == 1
    assert below_budget(table, 1).column("sample_idx").to_pylist() == [0, 0]
    assert below_budget(table, None) is table
    # a sample without a grade: an error only where every sample must be graded (SFT)
    store.write_table(read_grades(run, "m", columns=None).slice(1), run.grades_path("m"))
    assert read_graded(run, "m", text=True).num_rows == 4
    with pytest.raises(ValueError, match=rf"m\.parquet: no grade for sample problem_id='{first}' sample_idx=0"):
        read_graded(run, "m", text=True, every_sample_graded=True)
    # a correct grade without its sample: its text is missing, always an error
    for path in store.shard_paths(run.samples_dir("m")):
        path.unlink()
    with pytest.raises(ValueError, match="2 correct graded samples have no sample row"):
        read_graded(run, "m", text=True)
