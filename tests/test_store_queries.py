"""The run's typed readers (flopmatch.store.queries): one answer to each question a stage asks of a run."""

from __future__ import annotations

import pyarrow as pa
import pytest

from flopmatch import store
from flopmatch.analysis_cost import cost_by_budget, write_cost
from flopmatch.budget import BudgetPlan, plan_budgets
from flopmatch.store import RunDir
from flopmatch.store.queries import (
    budget_samples,
    graded_models,
    load_problems,
    plan_models,
    problems_by_role,
    read_cost,
    read_grades,
    read_plan,
    read_roles,
    read_samples,
    sample_costs,
    sample_texts,
    samples_at_budget,
)
from graded_runs import graded_run

WC, SE = "org/weak-1b", "org/strong-3b"


def _planned(run: RunDir) -> BudgetPlan:
    plan = plan_budgets(mode="flops", se_samples=[1, 2], wc_params=1e9, se_params=3e9, wc_name=WC, se_name=SE)
    plan.save(run)
    return plan


def test_problems_by_role_and_all_problems(tmp_path):
    run, problems = graded_run(tmp_path / "run", [[True], [False]])
    assert [p.problem_id for p in problems_by_role(run, "test")] == [p.problem_id for p in problems]
    assert problems_by_role(run, "sample") == []
    assert set(load_problems(run)) == {p.problem_id for p in problems}


def test_the_plan_is_read_once_typed(tmp_path):
    run = RunDir(tmp_path / "run").ensure()
    assert read_plan(run, required=False) is None
    with pytest.raises(FileNotFoundError, match="no plan"):
        read_plan(run)
    _planned(run)
    plan = read_plan(run)
    assert isinstance(plan, BudgetPlan) and plan_models(plan) == (WC, SE)
    # WC gets three times SE's samples (P_SE / P_WC = 3), by budget index or by SE count
    assert [budget_samples(run, WC, i) for i in (0, 1)] == [3, 6]
    assert budget_samples(run, SE, 1) == 2
    assert samples_at_budget(run, WC, 2) == 6 and samples_at_budget(run, "org--strong-3b", 1) == 1
    with pytest.raises(ValueError, match="out of range"):
        budget_samples(run, WC, 2)
    with pytest.raises(ValueError, match="no budget with se_samples=5"):
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
