"""`analyze` on a real run directory (toy-world problems, real plan, real exact judge) against
brute-force enumeration of every k-subset of samples."""

from __future__ import annotations

import itertools
from fractions import Fraction
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from flopmatch.analysis import GradesError, NothingToAnalyze, analyze, curve_ks, default_ks
from flopmatch.judge import ToyworldCheckerJudge, import_human_labels, judge_run
from flopmatch.problems import problems_to_table
from flopmatch.store import RunDir, append_shard, write_table
from flopmatch.store.queries import RunDataError

WC, SE = "toy/wc", "toy/se"
# Per problem, the kind of each sample (by sample_idx). ref and ref_fmt are the same solution up to
# whitespace; fp reaches the right answer through a wrong first step; wrong has a wrong answer.
PATTERNS = {
    WC: [
        ["ref", "wrong", "ref_fmt", "fp", "wrong", "fp"],
        ["wrong", "wrong", "wrong", "wrong", "fp", "ref"],
        ["wrong"] * 6,
        ["fp", "ref", "wrong", "ref_fmt", "wrong", "wrong"],
    ],
    SE: [["ref", "ref_fmt"], ["wrong", "ref"], ["wrong", "wrong"], ["ref", "fp"]],
}
UNIQUE = {"ref": "ref", "ref_fmt": "ref", "fp": "fp", "wrong": None}


def _text(kind: str, solution: str, answer: str) -> str:
    if kind == "ref":
        return solution
    if kind == "ref_fmt":
        return "  " + solution.replace(" = ", "  =  ").replace("\n", " \n\n ")
    if kind == "fp":
        return "1 + 1 = 3\n" + solution
    return solution.rsplit("Answer:", 1)[0] + f"Answer: {int(answer) + 1}"


def make_run(root: Path, *, plan: bool = True, drop: tuple[str, int, int] | None = None) -> RunDir:
    from flopmatch.budget import plan_budgets
    from flopmatch.toyworld.generator import generate_problems

    run = RunDir(root).ensure()
    problems = generate_problems(4, seed=5)
    write_table(problems_to_table(problems), run.problems_path("train"))
    for model, patterns in PATTERNS.items():
        samples, grades = [], []
        for p_i, (p, kinds) in enumerate(zip(problems, patterns, strict=True)):
            for idx, kind in enumerate(kinds):
                if drop == (model, p_i, idx):
                    continue
                samples.append({"model": model, "problem_id": p.problem_id, "sample_idx": idx, "seed": idx,
                                "text": _text(kind, p.solution, p.answer)})
                grades.append({"model": model, "problem_id": p.problem_id, "sample_idx": idx,
                               "status": "wrong" if kind == "wrong" else "correct", "extracted": "", "gold": p.answer})
        append_shard(run.samples_dir(model), samples)
        write_table(grades, run.grades_path(model))
    if plan:
        plan_budgets(mode="flops", se_samples=[1, 2], wc_params=1e9, se_params=3e9, wc_name=WC,
                     se_name=SE).save(run)
    return run


def brute(patterns: list[list[str]], s: int, k: int, problems: list[int] | None = None) -> tuple[float, float]:
    """coverage@k and diversity@k by enumerating every k-subset of the first s samples."""
    cov, div = [], []
    for p_i, kinds in enumerate(patterns):
        if problems is not None and p_i not in problems:
            continue
        labels = [UNIQUE[kind] for kind in kinds[:s]]
        subsets = list(itertools.combinations(range(s), k))
        cov.append(Fraction(sum(any(labels[i] for i in sub) for sub in subsets), len(subsets)))
        div.append(Fraction(sum(len({labels[i] for i in sub} - {None}) for sub in subsets), len(subsets)))
    return float(sum(cov) / len(cov)), float(sum(div) / len(div))


def _value(summary: pd.DataFrame, **where) -> float:
    sel = summary
    for key, value in where.items():
        sel = sel[sel[key].isna()] if value is None else sel[sel[key] == value]
    assert len(sel) == 1, (where, sel)
    return float(sel["value"].iloc[0])


@pytest.fixture(scope="module")
def judged_run(tmp_path_factory) -> RunDir:
    run = make_run(tmp_path_factory.mktemp("analysis") / "run")
    judge_run(run, ToyworldCheckerJudge(), per_model=500)
    return run


def test_analyze_matches_enumeration(judged_run):
    result = analyze(judged_run, n_boot=200, seed=0)
    s = result.summary
    assert list(pq.read_table(judged_run.metrics_dir / "summary.parquet").schema.names)[:11] == [
        "model", "role", "budget_se_samples", "samples_per_problem", "metric", "k", "value", "ci_low", "ci_high",
        "n_problems", "n"]
    for model, role, budgets in ((WC, "wc", {1: 3, 2: 6}), (SE, "se", {1: 1, 2: 2})):
        for budget, samples in budgets.items():
            for k in default_ks(samples):
                cov, div = brute(PATTERNS[model], samples, k)
                where = dict(model=model, role=role, budget_se_samples=budget, k=k, group="all")
                assert _value(s, metric="coverage", **where) == pytest.approx(cov, abs=1e-12)
                assert _value(s, metric="diversity", **where) == pytest.approx(div, abs=1e-12)
                assert _value(s, metric="diversity_near_dup", **where) <= div + 1e-12
    # Intervals bracket the estimate and groups partition the problems.
    assert (s["ci_low"] <= s["value"] + 1e-12).all() and (s["value"] <= s["ci_high"] + 1e-12).all()
    level_rows = s[s["group"].str.startswith("level=") & (s["metric"] == "coverage") & (s["k"] == 1)
                   & (s["model"] == WC) & (s["budget_se_samples"] == 1)]
    assert level_rows["n_problems"].sum() == 4


def test_analyze_fpr_from_exact_judge_and_compute_matched(judged_run):
    result = analyze(judged_run, n_boot=200, seed=0)
    s = result.summary
    # Exact verdicts (see PATTERNS): WC budget 1 (3 samples) 1 fp of 4 correct; budget 2: 4 of 9.
    assert _value(s, model=WC, budget_se_samples=1, metric="fpr", group="all") == pytest.approx(1 / 4)
    assert _value(s, model=WC, budget_se_samples=2, metric="fpr", group="all") == pytest.approx(4 / 9)
    assert _value(s, model=SE, budget_se_samples=1, metric="fpr", group="all") == 0.0
    assert _value(s, model=SE, budget_se_samples=2, metric="fpr_judge", group="all") == pytest.approx(1 / 5)
    row = s[(s["model"] == WC) & (s["budget_se_samples"] == 2) & (s["metric"] == "fpr") & (s["group"] == "all")]
    assert int(row["n"].iloc[0]) == 9 and row["ci_low"].iloc[0] < 4 / 9 < row["ci_high"].iloc[0]

    cm = result.compute_matched
    assert list(cm.columns)[:7] == ["budget_se_samples", "wc_samples", "metric", "wc_value", "se_value", "relative",
                                    "relative_text"]
    cov = cm[(cm["budget_se_samples"] == 1) & (cm["metric"] == "coverage")].iloc[0]
    wc_cov, _ = brute(PATTERNS[WC], 3, 3)
    se_cov, _ = brute(PATTERNS[SE], 1, 1)
    assert (cov["wc_samples"], cov["wc_value"], cov["se_value"]) == (3, pytest.approx(wc_cov), pytest.approx(se_cov))
    assert cov["relative"] == pytest.approx((wc_cov - se_cov) / se_cov * 100)
    fpr = cm[(cm["budget_se_samples"] == 2) & (cm["metric"] == "fpr")].iloc[0]
    assert fpr["relative_text"] == f"+{round((4 / 9 - 1 / 5) * 100)} pts FPR"
    assert len(result.headline) == 2 and "pts FPR" in result.headline[1]

    for name in ("summary.parquet", "summary.md", "coverage_curve.parquet", "diversity_curve.parquet",
                 "compute_matched.parquet", "compute_matched.md"):
        assert (judged_run.metrics_dir / name).is_file(), name
    figures = {p.name for p in result.figures}
    assert figures == {"coverage_at_k.png", "diversity_at_k.png", "fpr.png"}
    for path in result.figures:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5_000
    curve = pd.read_parquet(judged_run.metrics_dir / "coverage_curve.parquet")
    assert list(curve.columns)[:5] == ["model", "k", "value", "ci_low", "ci_high"]
    assert curve[curve["model"] == WC]["k"].tolist() == list(range(1, 7))
    assert "| toy/wc | wc |" in (judged_run.metrics_dir / "summary.md").read_text()
    assert "pts FPR" in (judged_run.metrics_dir / "compute_matched.md").read_text()


def test_human_labels_take_precedence(tmp_path):
    run = make_run(tmp_path / "run")
    judge_run(run, ToyworldCheckerJudge(), per_model=500)
    problems = sorted(pq.read_table(run.problems_path("train")).column("problem_id").to_pylist(),
                      key=lambda pid: int(pid.rsplit("/", 1)[1]))
    ids = [p.problem_id for p in __import__("flopmatch.toyworld.generator", fromlist=["x"]).generate_problems(4, seed=5)]
    assert sorted(ids) == sorted(problems)
    labels = tmp_path / "h.csv"
    # People disagree with the checker on SE problem 3, sample 1 (the fp): they call it valid.
    labels.write_text(f"problem_id,sample_idx,valid\n{ids[0]},0,true\n{ids[3]},1,true\n")
    import_human_labels(run, labels, SE)
    s = analyze(run, n_boot=50, plots=False).summary
    where = dict(model=SE, budget_se_samples=2, group="all")
    assert _value(s, metric="fpr_human", **where) == 0.0
    assert _value(s, metric="fpr", **where) == 0.0  # human preferred
    assert _value(s, metric="fpr_judge", **where) == pytest.approx(1 / 5)


def test_incomplete_problems_are_left_out_of_both_sides(tmp_path):
    run = make_run(tmp_path / "run", drop=(WC, 1, 5))  # WC problem 1 lacks sample 5
    result = analyze(run, n_boot=50, plots=False)
    s = result.summary
    at2 = s[(s["budget_se_samples"] == 2) & (s["group"] == "all") & (s["metric"] == "coverage")]
    assert set(at2["n_problems"]) == {3}
    at1 = s[(s["budget_se_samples"] == 1) & (s["group"] == "all") & (s["metric"] == "coverage")]
    assert set(at1["n_problems"]) == {4}
    cov, _ = brute(PATTERNS[SE], 2, 2, problems=[0, 2, 3])
    assert _value(s, model=SE, budget_se_samples=2, metric="coverage", k=2, group="all") == pytest.approx(cov)
    assert any("fewer than 6" in w for w in result.warnings)
    assert any("no FPR" in w for w in result.warnings)  # nothing judged in this run


def test_without_plan_each_model_uses_all_its_samples(tmp_path):
    run = make_run(tmp_path / "run", plan=False)
    result = analyze(run, ks=[2], n_boot=50, plots=False)
    s = result.summary
    assert s["role"].isna().all() and s["budget_se_samples"].isna().all()
    assert sorted(s[(s["model"] == WC) & (s["metric"] == "coverage") & (s["group"] == "all")]["k"]) == [2, 6]
    assert _value(s, model=WC, metric="coverage", k=6, group="all") == pytest.approx(brute(PATTERNS[WC], 6, 6)[0])
    assert result.compute_matched.empty and result.headline == []


def test_bad_grades_name_the_file(tmp_path):
    run = make_run(tmp_path / "run")
    table = pq.read_table(run.grades_path(WC)).to_pylist()
    table[3]["status"] = "maybe"
    write_table(table, run.grades_path(WC))
    with pytest.raises(GradesError, match=r"grades/toy--wc.parquet, row 4: field 'status': is 'maybe'") as info:
        analyze(run, plots=False)  # the 4th row (rows count from 1, as in every flopmatch message)
    assert isinstance(info.value, ValueError) and (info.value.row, info.value.field) == (4, "status")
    table[3]["status"], table[5]["sample_idx"] = "correct", -1
    write_table(table, run.grades_path(WC))
    with pytest.raises(GradesError, match=r"row 6: field 'sample_idx': expected an index >= 0, got -1"):
        analyze(run, plots=False)
    # a sample graded twice is the run data layer's RunDataError, naming the file and the second row
    table[5]["sample_idx"] = table[0]["sample_idx"]
    table[5]["problem_id"] = table[0]["problem_id"]
    write_table(table, run.grades_path(WC))
    with pytest.raises(RunDataError, match=r"grades/toy--wc.parquet, row 6: sample .* is graded twice") as info:
        analyze(run, plots=False)
    assert info.value.file == str(run.grades_path(WC)) and info.value.row == 6


def test_model_samples_come_from_the_run_s_grades_file_of_the_model(tmp_path):
    from flopmatch.analysis import load_model_samples

    run = make_run(tmp_path / "run")
    def rows(data):
        return {pid: (p.idx.tolist(), p.correct.tolist(), p.texts) for pid, p in data.problems.items()}

    samples = rows(load_model_samples(run, WC))
    assert samples == rows(load_model_samples(run, WC, run.grades_path(WC)))  # the old call, same answer
    assert len(samples) == len(PATTERNS[WC]) and all(len(idx) == 6 for idx, _, _ in samples.values())
    with pytest.raises(ValueError, match=r"toy--se.parquet: not the grades file of 'toy/wc'"):
        load_model_samples(run, WC, run.grades_path(SE))  # never another model's grades, silently
    moved = run.grades_path(WC).rename(run.grades_dir / "renamed.parquet")  # keyed differently: found by name
    assert rows(load_model_samples(run, WC)) == samples
    with pytest.raises(FileNotFoundError, match="no grades for model 'toy/none'"):
        load_model_samples(run, "toy/none")
    assert moved.exists()


def test_a_run_without_grades_says_to_grade_first(tmp_path):
    with pytest.raises(NothingToAnalyze, match=r"grades: no grades to analyze \(run `flopmatch grade` first\)") as info:
        analyze(RunDir(tmp_path / "empty"), plots=False)
    assert isinstance(info.value, FileNotFoundError)


def test_cli_analyze(tmp_path):
    from flopmatch.cli import app

    run = make_run(tmp_path / "run")
    out = CliRunner().invoke(app, ["analyze", str(run.root), "--n-boot", "50", "--no-plots", "--k", "1,2"])
    assert out.exit_code == 0, out.output
    assert "coverage" in out.output and (run.metrics_dir / "summary.parquet").exists()
    bad = CliRunner().invoke(app, ["analyze", str(run.root), "--k", "x"])
    assert bad.exit_code != 0


def test_curve_ks():
    assert curve_ks(5) == [1, 2, 3, 4, 5]
    big = curve_ks(10_000)
    assert big[0] == 1 and big[-1] == 10_000 and len(big) <= 49 and big == sorted(set(big))
    assert default_ks(6) == [1, 2, 4, 6] and default_ks(1) == [1]


def test_solution_counts_of_loaded_samples_are_the_pilots_graded_solutions(tmp_path):
    """What the analysis measures an advised run's forecasts on is what the pilot reads from the run."""
    from flopmatch.analysis import load_model_samples, solution_counts
    from flopmatch.pilot import graded_solutions
    from flopmatch.store.queries import load_problems
    from sample_reads import WC as PLAN_WC
    from sample_reads import planned_run

    run = planned_run(tmp_path / "run")
    ids = [*sorted(load_problems(run)), "not-sampled"]
    expected = graded_solutions(run.root, PLAN_WC, ids)[["problem_id", "n", "c", "multiplicities"]]
    counts = solution_counts(load_model_samples(run, PLAN_WC), ids)
    assert counts.equals(expected) and list(counts["n"]) == [3, 3, 3, 3, 0]
