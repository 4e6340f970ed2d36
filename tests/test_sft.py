"""SFT data: budget prefix, correct-only, caps, dedupe, judge filter, number matching, lineage, formats."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flopmatch.budget import plan_budgets
from flopmatch.problems import load, save_problems
from flopmatch.prompts import PromptConfig, build_prompt
from flopmatch.sft import (
    SFT_META_FILE,
    apply_judge_filter,
    build_sft,
    load_sft,
    select_examples,
    sft_meta,
    sft_prompt_config,
)
from flopmatch.store import RunDir, append_shard, write_table

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
WC, SE = "org/weak-1b", "org/strong-3b"

# Per problem (4 problems), per sample: status of WC's 6 samples and SE's 2 samples.
WC_STATUS = [
    ["correct", "wrong", "correct", "correct", "wrong", "correct"],
    ["wrong", "wrong", "wrong", "correct", "correct", "correct"],
    ["wrong", "no_answer", "wrong", "wrong", "wrong", "wrong"],
    ["correct", "correct", "correct", "wrong", "wrong", "wrong"],
]
SE_STATUS = [["correct", "correct"], ["correct", "wrong"], ["wrong", "correct"], ["correct", "correct"]]


def _problems():
    path = DATA / "gsm8k" / "train.jsonl"
    if not path.exists():
        pytest.skip(f"shared data not found at {path}")
    return load("gsm8k", split="train", data_file=path, limit=4)


def _write_model(run: RunDir, model: str, problems, statuses, texts=None) -> None:
    samples, grades = [], []
    for p, row in zip(problems, statuses, strict=True):
        for idx, status in enumerate(row):
            text = texts(p, idx) if texts else f"Solution {idx} of {p.problem_id}. \\boxed{{{p.answer}}}"
            samples.append({"model": model, "problem_id": p.problem_id, "sample_idx": idx, "seed": 1000 + idx,
                            "text": text})
            grades.append({"model": model, "problem_id": p.problem_id, "sample_idx": idx, "status": status,
                           "extracted": p.answer if status == "correct" else "0", "gold": p.answer})
    # two shards, as a resumed sampler would leave them
    append_shard(run.samples_dir(model), samples[: len(samples) // 2])
    append_shard(run.samples_dir(model), samples[len(samples) // 2 :])
    write_table(grades, run.grades_path(model))


@pytest.fixture
def problems():
    return _problems()


@pytest.fixture
def run(tmp_path, problems):
    run = RunDir(tmp_path / "run").ensure()
    save_problems(run, problems)
    plan = plan_budgets(mode="flops", se_samples=[1, 2], wc_params=1e9, se_params=3e9, wc_name=WC, se_name=SE)
    plan.save(run)
    _write_model(run, WC, problems, WC_STATUS)
    _write_model(run, SE, problems, SE_STATUS)
    return run


def test_budget_resolves_each_models_samples_and_keeps_only_correct(run, problems):
    wc = build_sft(run, source_model=WC, budget=1)  # WC gets 3 samples per problem at SE budget 1
    se = build_sft(run, source_model=SE, budget=1)
    # WC, first 3 samples: 2 + 0 + 0 + 3 correct; SE first sample: 1 + 1 + 0 + 1.
    assert (wc.examples, wc.problems_covered, wc.samples_per_problem) == (5, 2, 3)
    assert (se.examples, se.problems_covered, se.samples_per_problem) == (3, 3, 1)
    assert wc.mean_per_problem == pytest.approx(2.5)
    assert wc.path == run.sft_dir("org--weak-1b-b1")
    data = load_sft(wc.path)
    assert sorted(zip(data["problem_id"], data["sample_idx"], strict=True)) == sorted(
        [(problems[0].problem_id, i) for i in (0, 2)] + [(problems[3].problem_id, i) for i in (0, 1, 2)]
    )
    assert set(data["budget"]) == {1} and set(data["source_model"]) == {WC} and set(data["seed"]) <= {1000, 1001, 1002}
    high = build_sft(run, source_model=WC, budget=2)  # 6 samples per problem
    assert high.examples == 4 + 3 + 0 + 3


def test_rows_hold_messages_and_prompt_completion_in_the_evaluation_format(run, problems):
    from flopmatch.evaluation import _prompt_function

    result = build_sft(run, source_model=SE, budget=1)
    data = load_sft(result.path)
    row = data[0]
    problem = next(p for p in problems if p.problem_id == row["problem_id"])
    expected_prompt = build_prompt(problem, sft_prompt_config("gsm8k"))
    assert row["prompt"] == expected_prompt  # zero-shot chat prompt
    assert len(expected_prompt) == 1 and expected_prompt[0]["role"] == "user"
    assert row["completion"] == [{"role": "assistant", "content": f"Solution 0 of {problem.problem_id}. "
                                                                  f"\\boxed{{{problem.answer}}}"}]
    assert row["messages"] == row["prompt"] + row["completion"]
    # A model trained on it is evaluated with the same prompt.
    meta = sft_meta(result.path)
    assert meta["prompt_format"] == "chat" and meta["counts"]["examples"] == 3
    prompt_for, _ = _prompt_function([problem], meta["prompt_configs"], trained=True)
    assert prompt_for(problem) == expected_prompt


def test_plain_prompts_give_string_prompt_completion(run):
    result = build_sft(run, source_model=SE, samples_per_problem=1, prompt=PromptConfig(style="plain", shots=0))
    data = load_sft(result.path)
    assert isinstance(data[0]["prompt"], str) and data[0]["prompt"].endswith("Solution:")
    assert isinstance(data[0]["completion"], str) and data[0]["completion"].startswith("Solution 0")
    assert data[0]["messages"][0] == {"role": "user", "content": data[0]["prompt"]}
    assert result.path.name == "org--strong-3b-s1"


def test_one_per_problem_and_dedupe(run, problems):
    one = build_sft(run, source_model=WC, budget=2, max_per_problem=1)
    assert (one.examples, one.problems_covered) == (3, 3)
    assert sorted(load_sft(one.path)["sample_idx"]) == [0, 0, 3]  # the first correct of each problem
    assert one.path.name.endswith("-k1")

    # Samples 0 and 2 of every problem say the same thing (spacing differs): dedupe keeps sample 0.
    run2 = RunDir(run.root.parent / "dup").ensure()
    save_problems(run2, problems)
    run.plan_path.rename(run2.plan_path)

    def texts(p, idx):
        return f"Same  steps.\n\\boxed{{{p.answer}}}" if idx in (0, 2) else f"Other {idx}. \\boxed{{{p.answer}}}"

    _write_model(run2, WC, problems, WC_STATUS, texts=texts)
    plain = build_sft(run2, source_model=WC, budget=1)
    deduped = build_sft(run2, source_model=WC, budget=1, dedupe=True)
    assert plain.examples - deduped.examples == 2  # problems 0 and 3 lose sample 2
    assert deduped.path != plain.path


def test_judge_filter_drops_invalid_keeps_unparseable_and_requires_every_verdict(run, problems):
    p = problems
    judged = [
        (p[0].problem_id, 0, "valid"), (p[0].problem_id, 2, "invalid"),
        (p[3].problem_id, 0, "unparseable"), (p[3].problem_id, 1, "invalid"), (p[3].problem_id, 2, "valid"),
    ]
    rows = [{"model": WC, "problem_id": pid, "sample_idx": idx, "status": st, "first_wrong_step": None,
             "explanation": "", "judge": "j", "raw": ""} for pid, idx, st in judged]
    write_table(pa.Table.from_pylist(rows), run.judgments_path(WC))
    result = build_sft(run, source_model=WC, budget=1, judge_filter=True)
    assert result.examples == 3 and result.path.name.endswith("-judged")
    assert sorted(load_sft(result.path)["sample_idx"]) == [0, 0, 2]

    write_table(pa.Table.from_pylist(rows[:-1]), run.judgments_path(WC))
    with pytest.raises(ValueError, match=r"1 of the 5 correct solutions .* no judgment"):
        build_sft(run, source_model=WC, budget=1, judge_filter=True)


def test_number_matched_control_uses_se_sample_count(run, problems):
    nm = build_sft(run, source_model=WC, budget=1, number_matched_to=SE)
    assert nm.samples_per_problem == 1 and nm.examples == 2  # WC's first sample: problems 0 and 3
    assert nm.path.name == "org--weak-1b-b1-nm1"
    counted = build_sft(run, source_model=WC, budget=2, number_matched_to=4)
    assert counted.examples == 4 and counted.path.name.endswith("-n4")
    se = build_sft(run, source_model=SE, budget=1)
    matched = build_sft(run, source_model=WC, budget=2, number_matched_to=se.path.name)
    assert matched.examples == se.examples
    with pytest.raises(ValueError, match="more examples than"):
        build_sft(run, source_model=WC, budget=1, number_matched_to=99)


def test_bad_inputs_are_named(run, tmp_path):
    with pytest.raises(ValueError, match="no budget with se_samples=5"):
        build_sft(run, source_model=WC, budget=5)
    with pytest.raises(ValueError, match="neither the plan's WC"):
        build_sft(run, source_model="someone/else", budget=1)
    with pytest.raises(ValueError, match="contradicts the plan"):
        build_sft(run, source_model=WC, budget=1, samples_per_problem=2)
    with pytest.raises(ValueError, match="fewer than 7 samples"):
        build_sft(run, source_model=WC, samples_per_problem=7)
    # a sample without a grade names the grades file
    grades = run.grades_path(SE)
    write_table(pq.read_table(grades).slice(1), grades)
    with pytest.raises(ValueError, match=r"grades/org--strong-3b\.parquet: no grade for sample"):
        build_sft(run, source_model=SE, budget=1)
    with pytest.raises(FileNotFoundError, match="no sample shards"):
        build_sft(run, source_model="nobody", samples_per_problem=1)


def test_rebuild_replaces_the_dataset_atomically(run):
    first = build_sft(run, source_model=SE, budget=1)
    again = build_sft(run, source_model=SE, budget=1)
    assert first == again
    assert (first.path / SFT_META_FILE).exists()
    assert [p.name for p in first.path.parent.iterdir() if p.name.startswith(".")] == []


def test_cli_build_sft_prints_counts(run):
    from typer.testing import CliRunner

    from flopmatch.cli import app

    out = CliRunner().invoke(app, ["build-sft", str(run.root), "--source", WC, "--budget", "1"])
    assert out.exit_code == 0, out.output
    assert "problems covered   2 of 4" in out.output
    assert "examples           5" in out.output
    assert "mean per problem   2.50" in out.output
    bad = CliRunner().invoke(app, ["build-sft", str(run.root), "--source", WC])
    assert bad.exit_code != 0 and "--budget" in bad.output


def test_build_sft_reads_sample_text_at_most_once(tmp_path, monkeypatch):
    """Every option that looks at the text (dedupe) or at other tables (judge filter, number matching)
    works from the one read of the source model's shards; the other model's samples are not read."""
    from flopmatch.judge import judge_run
    from sample_reads import SE as PLAN_SE
    from sample_reads import WC as PLAN_WC
    from sample_reads import AllValidJudge, planned_run, spy_sample_reads

    planned = planned_run(tmp_path / "run")
    judge_run(planned, AllValidJudge(), per_model=100)
    reads = spy_sample_reads(monkeypatch, planned)
    result = build_sft(planned, source_model=PLAN_WC, budget=1, dedupe=True, judge_filter=True,
                       number_matched_to=PLAN_SE)  # fmt: skip
    assert (result.samples_per_problem, result.examples) == (1, 4)  # SE's 1 sample per problem, all correct
    assert len(reads.text) == 2 and reads.most_text_reads_of_a_shard == 1  # WC's two shards, once each
    assert all(PLAN_WC.replace("/", "--") in str(path) for path in [*reads.text, *reads.other])


# --------------------------------------------------------------------------- the pure policy

_rows = st.lists(
    st.tuples(st.sampled_from("abcd"), st.integers(0, 7), st.sampled_from(["correct", "wrong"]), st.sampled_from("xyz")),
    max_size=40,
    unique_by=lambda r: (r[0], r[1]),
)


@settings(max_examples=60, deadline=None)
@given(_rows, st.integers(1, 8), st.one_of(st.none(), st.integers(1, 3)), st.booleans())
def test_select_examples_policy(rows, s, k, dedupe):
    dicts = [{"problem_id": p, "sample_idx": i, "status": status, "text": t} for p, i, status, t in rows]
    chosen = select_examples(dicts, samples_per_problem=s, max_per_problem=k, dedupe=dedupe)
    assert chosen == select_examples(list(reversed(dicts)), samples_per_problem=s, max_per_problem=k, dedupe=dedupe)
    assert all(r["status"] == "correct" and r["sample_idx"] < s for r in chosen)
    per_problem: dict[str, list] = {}
    for r in chosen:
        per_problem.setdefault(r["problem_id"], []).append(r)
    for pid, group in per_problem.items():
        if k is not None:
            assert len(group) <= k
        if dedupe:
            assert len({r["text"] for r in group}) == len(group)
        eligible = [r for r in dicts if r["problem_id"] == pid and r["status"] == "correct" and r["sample_idx"] < s]
        assert group[0]["sample_idx"] == min(r["sample_idx"] for r in eligible)  # the earliest is always kept
    covered = {r["problem_id"] for r in dicts if r["status"] == "correct" and r["sample_idx"] < s}
    assert set(per_problem) == covered  # caps and dedupe never drop a problem


def test_apply_judge_filter_rejects_unknown_status():
    rows = [{"problem_id": "p", "sample_idx": 0, "status": "correct"}]
    with pytest.raises(ValueError, match="unknown judgment status 'maybe'"):
        apply_judge_filter(rows, {("p", 0): "maybe"})


def test_graded_samples_read_once_serve_every_set_of_a_model(tmp_path, monkeypatch):
    """build_sft(graded=...) (the study's sft stage: one read per model) builds what it builds alone."""
    from flopmatch.sft import graded_samples, load_sft
    from sample_reads import SE as PLAN_SE
    from sample_reads import WC as PLAN_WC
    from sample_reads import planned_run, spy_sample_reads

    planned = planned_run(tmp_path / "run")
    graded = graded_samples(planned, PLAN_WC)
    reads = spy_sample_reads(monkeypatch, planned)
    for options in ({"budget": 1}, {"budget": 1, "number_matched_to": PLAN_SE}, {"samples_per_problem": 2, "dedupe": True}):
        given = build_sft(planned, source_model=PLAN_WC, graded=graded, name="given", **options)
        assert not reads.text
        alone = build_sft(planned, source_model=PLAN_WC, name="alone", **options)
        assert (given.examples, given.problems_covered, given.samples_per_problem) == (
            alone.examples, alone.problems_covered, alone.samples_per_problem)
        assert load_sft(given.path).to_list() == load_sft(alone.path).to_list()
        reads.clear()


def test_grades_that_disagree_with_the_samples(tmp_path):
    """A wrong grade whose sample row is gone selects nothing (as SFT always did); a sample graded twice is a
    RunDataError naming the grades file and row (it would otherwise be a training example twice)."""
    from flopmatch.store import read_table
    from flopmatch.store.queries import RunDataError
    from sample_reads import WC, planned_run

    plain = build_sft(planned_run(tmp_path / "plain"), source_model=WC, samples_per_problem=3)
    run = planned_run(tmp_path / "lost")
    grades = read_table(run.grades_path(WC)).to_pylist()
    write_table(pa.Table.from_pylist([*grades, {**grades[1], "sample_idx": 7, "status": "wrong"}]),
                run.grades_path(WC))  # fmt: skip
    lost = build_sft(run, source_model=WC, samples_per_problem=3)
    assert lost.examples == plain.examples
    run = planned_run(tmp_path / "twice")
    grades = read_table(run.grades_path(WC)).to_pylist()
    write_table(pa.Table.from_pylist([*grades, grades[0]]), run.grades_path(WC))
    with pytest.raises(RunDataError, match="is graded twice") as caught:
        build_sft(run, source_model=WC, samples_per_problem=3)
    assert caught.value.file == str(run.grades_path(WC)) and caught.value.row == len(grades) + 1
