"""Problem sets: the real shared data files, the bad-input errors, seeded subsets, the run directory."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from flopmatch import problems as P
from flopmatch.problems import Problem, ProblemFileError, ProblemSourceError, last_boxed, load
from flopmatch.store import RunDir, queries

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
needs_data = pytest.mark.skipif(not (DATA / "INDEX.md").is_file(), reason=f"shared data not found at {DATA}")


# --------------------------------------------------------------------------- answers


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("so $x=\\boxed{5}$.", "5"),
        ("\\boxed{1} then \\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),
        ("\\fbox{\\text{(C)}}", "\\text{(C)}"),
        ("\\boxed{\\left\\{1,2\\right.}", "\\left\\{1,2\\right."),  # escaped braces do not nest
        ("\\boxed{a}{b}", "a"),
        ("the answer is \\boxed 5$.", "5"),
        ("\\boxed{x} and later \\boxedmacro{y}", "x"),
        ("no box here", None),
        ("\\boxed{unbalanced", None),
    ],
)
def test_last_boxed(text, expected):
    assert last_boxed(text) == expected


@pytest.mark.parametrize(
    ("raw", "gold"),
    [(" 1,000,000", "1000000"), ("-3", "-3"), ("12,5", "12,5"), ("0.5", "0.5"), ("2,125 ", "2125")],
)
def test_gsm8k_thousands_separators(raw, gold):
    assert P.normalize_gsm8k_answer(raw) == gold


# --------------------------------------------------------------------------- the real files


@needs_data
@pytest.mark.parametrize(("split", "count"), [("train", 7473), ("test", 1319)])
def test_gsm8k_files_load_every_row(split, count):
    problems = load("gsm8k", split=split, data_file=DATA)
    assert len(problems) == count
    assert len({p.problem_id for p in problems}) == count
    assert problems[0].problem_id == f"gsm8k/{split}/0"
    assert all(p.dataset == "gsm8k" and p.split == split for p in problems)
    # every gold is a plain number: the thousands separators are gone
    assert all(p.answer.lstrip("-").replace(".", "", 1).isdigit() for p in problems)
    raw = [json.loads(line) for line in (DATA / "gsm8k" / f"{split}.jsonl").open()]
    with_commas = [i for i, row in enumerate(raw) if "," in row["answer"].rsplit("####", 1)[1]]
    assert with_commas, "the real data has golds like 1,000"
    for i in with_commas:
        assert problems[i].answer == raw[i]["answer"].rsplit("####", 1)[1].strip().replace(",", "")
    if split == "test":
        assert problems[0].answer == "18"
        assert problems[0].solution.endswith("#### 18")


@needs_data
def test_math_offline_split():
    train = load("math-offline", split="train", data_file=DATA)
    test = load("math-offline", split="test", data_file=DATA)
    full = load("math", split="test", data_file=DATA)
    assert (len(train), len(test), len(full)) == (4500, 500, 5000)
    train_texts = {" ".join(p.question.split()) for p in train}
    test_texts = {" ".join(p.question.split()) for p in test}
    assert not train_texts & test_texts
    assert train_texts | test_texts == {" ".join(p.question.split()) for p in full}
    assert {p.split for p in train} == {"train"} and {p.dataset for p in train} == {"math"}
    assert {p.split for p in test} == {"test"} and {p.dataset for p in test} == {"math500"}
    assert test[0].problem_id == "math500/test/precalculus/807"
    assert len({p.problem_id for p in train + test}) == 5000
    assert set(Counter(p.level for p in train)) == {f"Level {n}" for n in range(1, 6)}
    assert set(Counter(p.level for p in test)) == {f"Level {n}" for n in range(1, 6)}
    assert len({p.subject for p in train}) == 7
    assert all(p.answer for p in train + test)
    # the same problem gets the same source id (a hash of its text) from the full file and the split
    assert {p.problem_id.split("/")[-1] for p in train} < {p.problem_id.split("/")[-1] for p in full}


@needs_data
def test_boxed_extraction_agrees_with_math500_answers():
    """MATH500 has both a solution and an answer field: our extraction must give the answer, all 500."""
    rows = [json.loads(line) for line in (DATA / "math" / "math500_test.jsonl").open()]
    assert sum(last_boxed(row["solution"]) == row["answer"] for row in rows) == 500


@needs_data
def test_math_offline_reads_the_data_dir_from_the_environment(monkeypatch):
    monkeypatch.delenv(P.DATA_DIR_ENV, raising=False)
    with pytest.raises(ProblemSourceError, match="FLOPMATCH_DATA_DIR"):
        load("math-offline", split="test")
    monkeypatch.setenv(P.DATA_DIR_ENV, str(DATA))
    assert len(load("math-offline", split="test")) == 500
    # the math/ folder itself works too
    assert len(load("math-offline", split="train", data_file=DATA / "math")) == 4500


def test_math_offline_names_the_files_it_needs(monkeypatch, tmp_path):
    """The message comes from the declarations (math-offline reads math's and math500's files)."""
    monkeypatch.delenv(P.DATA_DIR_ENV, raising=False)
    with pytest.raises(ProblemSourceError) as info:
        load("math-offline", split="train")
    assert str(info.value) == (
        "math-offline reads local files: pass data_file=<data dir> (CLI: --data-file) or set $FLOPMATCH_DATA_DIR "
        "to a directory holding math/math_test_5000.jsonl and math/math500_test.jsonl"
    )
    with pytest.raises(ProblemSourceError, match=r"has no math/math500_test.jsonl \(is it the data directory"):
        load("math-offline", split="train", data_file=tmp_path)


@needs_data
def test_file_path_sources_and_parquet_agree(tmp_path):
    by_dir = load("math500", data_file=DATA)
    by_file = load("math500", data_file=DATA / "math" / "math500_test.jsonl")
    by_path = load(str(DATA / "math" / "math500_test.jsonl"))  # format and split detected
    rows = [json.loads(line) for line in (DATA / "math" / "math500_test.jsonl").open()]
    parquet = tmp_path / "math500_test.parquet"
    pq.write_table(pa.Table.from_pylist(rows), parquet)
    by_parquet = load(str(parquet))
    assert by_dir == by_file == by_path == by_parquet


@needs_data
def test_a_file_in_another_format_is_refused():
    with pytest.raises(ProblemFileError, match="math500 format"):
        load("gsm8k", split="test", data_file=DATA / "math" / "math500_test.jsonl")


def test_the_split_of_a_bare_file_must_be_known(tmp_path):
    path = tmp_path / "problems.jsonl"
    path.write_text(json.dumps({"question": "1+1?", "answer": "1+1=2\n#### 2"}) + "\n")
    with pytest.raises(ProblemSourceError, match="split"):
        load(str(path))
    assert load(str(path), split="dev")[0] == Problem(
        "gsm8k/dev/0", "gsm8k", "dev", "1+1?", "2", "1+1=2\n#### 2"
    )


# --------------------------------------------------------------------------- bad input


def _jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((row if isinstance(row, str) else json.dumps(row)) + "\n" for row in rows))
    return path


GOOD = {"question": "Tom has 3 apples and eats 1. How many are left?", "answer": "3-1=2\n#### 2"}


@pytest.mark.parametrize(
    ("bad_row", "field", "needle"),
    [
        ({"question": "q"}, "answer", "missing"),
        ({"question": "q", "answer": "the answer is 4"}, "answer", "####"),
        ({"question": "q", "answer": "#### "}, "answer", "empty"),
        ({"question": 7, "answer": "#### 7"}, "question", "string"),
        ({"question": "", "answer": "#### 7"}, "question", "empty"),
    ],
)
def test_malformed_gsm8k_row_names_file_line_and_field(tmp_path, bad_row, field, needle):
    path = _jsonl(tmp_path / "test.jsonl", [GOOD, "", GOOD, bad_row])  # line 2 is blank: line 4 is bad
    with pytest.raises(ProblemFileError) as info:
        load("gsm8k", split="test", data_file=path)
    error = info.value
    assert (error.path, error.line, error.field) == (str(path), 4, field)
    message = str(error)
    assert str(path) in message and "line 4" in message and repr(field) in message and needle in message


def test_invalid_json_and_math_rows(tmp_path):
    path = _jsonl(tmp_path / "test.jsonl", [GOOD, '{"question": "q", "answer": '])
    with pytest.raises(ProblemFileError, match=r"line 2: invalid JSON"):
        load("gsm8k", data_file=path)
    math_row = {"problem": "What is 1+1?", "solution": "It is 2.", "level": "Level 1", "type": "Algebra"}
    path = _jsonl(tmp_path / "math_test.jsonl", [{**math_row, "solution": "$\\boxed{2}$"}, math_row])
    with pytest.raises(ProblemFileError, match=r"math_test.jsonl, line 2: field 'solution': no final answer"):
        load("math", data_file=path)
    path = _jsonl(tmp_path / "other_test.jsonl", [{"prompt": "x"}])
    with pytest.raises(ProblemFileError, match=r"line 1: field 'question': unknown format"):
        load(str(path))


def test_malformed_parquet_row_names_the_row(tmp_path):
    path = tmp_path / "train.parquet"
    pq.write_table(pa.Table.from_pylist([GOOD, {"question": "q", "answer": None}]), path)
    with pytest.raises(ProblemFileError, match=r"train.parquet, row 2: field 'answer': missing"):
        load("gsm8k", split="train", data_file=path)


def test_unknown_source_and_split():
    with pytest.raises(P.ProblemRequestError, match="unknown problem source"):
        load("gsm9k")
    with pytest.raises(P.ProblemRequestError, match="math500 has splits test"):
        load("math500", split="train")
    with pytest.raises(P.ProblemRequestError, match="limit must be >= 0"):
        load("gsm8k", limit=-1)
    assert issubclass(P.ProblemRequestError, ValueError)  # what Python callers caught before


def test_an_unreadable_file_is_a_flopmatch_error(tmp_path, monkeypatch):
    """Not UTF-8, or the OS refuses the read: one message naming the file, keeping the builtin base."""
    latin = tmp_path / "test.jsonl"
    latin.write_bytes(b'{"question": "caf\xe9", "answer": "#### 1"}\n')
    with pytest.raises(ProblemFileError, match=r"test.jsonl: not UTF-8 text"):
        load(str(latin))

    def refuse(path):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(P, "_read_rows", refuse)
    with pytest.raises(P.ProblemFileUnreadable, match=r"Permission denied: '.*test.jsonl'") as info:
        load(str(latin))
    assert isinstance(info.value, OSError) and isinstance(info.value, P.FlopmatchError)


def test_a_generator_that_gives_up_is_a_source_error(monkeypatch):
    """A generated source's RuntimeError reaches the CLI as a message (a ProblemSourceError), not a traceback."""

    def give_up(**_kwargs):
        raise RuntimeError("could not generate toyworld problem seed=0 index=3")

    generated = SimpleNamespace(loader="a generator", load_function=lambda _attribute: give_up)
    monkeypatch.setattr(P, "get_dataset", lambda _name: generated)
    with pytest.raises(ProblemSourceError, match="could not generate toyworld problem"):
        load("toyworld", limit=2)


def test_hub_failure_offline_says_to_pass_data_file(tmp_path):
    """The hub code path is real: with the hub unreachable it must fail with the advice, not a traceback."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    code = (
        "from flopmatch.problems import load, ProblemSourceError\n"
        "try:\n    load('gsm8k', split='test')\nexcept ProblemSourceError as e:\n    print('ERR', e)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    assert "ERR could not load openai/gsm8k (main) split 'test' from the Hugging Face hub" in result.stdout
    assert "data_file=" in result.stdout and "--data-file" in result.stdout


@needs_data
def test_hub_path_gives_the_same_problems_and_ids_as_the_local_files(tmp_path, monkeypatch):
    """The hub code path on real ``datasets`` tables: the hub repos are unreachable here, so each
    (repo, config, split) is served by datasets' own json loader over the matching shared-data file."""
    import datasets

    real_load = datasets.load_dataset
    math_types = {c: c.replace("_", " ").title().replace(" And ", " & ") for c in P.MATH_HUB_CONFIGS}
    calls = []

    def hub(repo, config=None, split=None, **kwargs):
        calls.append((repo, config, split))
        files = {"openai/gsm8k": DATA / "gsm8k" / f"{split}.jsonl", "HuggingFaceH4/MATH-500": DATA / "math" / "math500_test.jsonl",
                 P.MATH_HUB_REPO: DATA / "math" / "math_test_5000.jsonl"}  # fmt: skip
        table = real_load("json", data_files=str(files[repo]), split="train", cache_dir=str(tmp_path))
        if repo == P.MATH_HUB_REPO:  # the mirror has one config per subject
            table = table.filter(lambda row: row["type"] == math_types[config])
        return table

    monkeypatch.setattr(datasets, "load_dataset", hub)
    assert load("gsm8k", split="test") == load("gsm8k", split="test", data_file=DATA)
    assert load("math500") == load("math500", data_file=DATA)
    from_hub = load("math", split="test")
    assert sorted(from_hub, key=lambda p: p.problem_id) == sorted(
        load("math", data_file=DATA), key=lambda p: p.problem_id
    )
    assert calls[0] == ("openai/gsm8k", "main", "test") and calls[1] == (
        "HuggingFaceH4/MATH-500",
        None,
        "test",
    )
    assert [c[1] for c in calls[2:]] == list(P.MATH_HUB_CONFIGS)


# --------------------------------------------------------------------------- subsets and ids


@needs_data
def test_seeded_subsets_are_stable_nested_and_in_source_order():
    full = load("gsm8k", split="test", data_file=DATA)
    a = load("gsm8k", split="test", data_file=DATA, limit=50, seed=7)
    b = load("gsm8k", split="test", data_file=DATA, limit=50, seed=7)
    c = load("gsm8k", split="test", data_file=DATA, limit=50, seed=8)
    big = load("gsm8k", split="test", data_file=DATA, limit=200, seed=7)
    assert a == b and len(a) == 50 and a != c
    assert {p.problem_id for p in a} < {p.problem_id for p in big}
    order = {p.problem_id: i for i, p in enumerate(full)}
    assert [order[p.problem_id] for p in a] == sorted(order[p.problem_id] for p in a)
    assert load("gsm8k", split="test", data_file=DATA, limit=5) == full[:5]
    assert load("gsm8k", split="test", data_file=DATA, limit=0) == []
    assert load("gsm8k", split="test", data_file=DATA, limit=10**6, seed=1) == full


def test_repeated_problem_texts_get_distinct_ids(tmp_path):
    row = {"problem": "Same?", "solution": "$\\boxed{1}$"}
    problems = load("math", split="test", data_file=_jsonl(tmp_path / "test.jsonl", [row, row, row]))
    ids = [p.problem_id for p in problems]
    assert ids[1] == ids[0] + "-2" and ids[2] == ids[0] + "-3"


def test_toyworld_delegates_to_the_generator():
    from flopmatch import toyworld

    got = load("toyworld", split="test", limit=5, seed=3)
    assert got == toyworld.load_problems(split="test", limit=5, seed=3)
    assert len(got) == 5 and all(isinstance(p, Problem) for p in got)


# --------------------------------------------------------------------------- run directory


def test_save_and_load_run_problems_merge_by_id(tmp_path):
    first = [Problem(f"gsm8k/test/{i}", "gsm8k", "test", f"q{i}", str(i)) for i in range(3)]
    train = [Problem("gsm8k/train/0", "gsm8k", "train", "t", "1")]
    P.save_problems(tmp_path, first + train)
    changed = Problem("gsm8k/test/1", "gsm8k", "test", "q1 (fixed)", "1")
    new = Problem("gsm8k/test/9", "gsm8k", "test", "q9", "9")
    written = P.save_problems(tmp_path, [changed, new])
    assert written == {"test": tmp_path / "problems" / "test.parquet"}
    saved = queries.load_problems(RunDir(tmp_path))  # the run data layer reads what save_problems wrote
    assert list(saved) == ["gsm8k/test/0", "gsm8k/test/1", "gsm8k/test/2", "gsm8k/test/9", "gsm8k/train/0"]
    assert saved["gsm8k/test/1"].question == "q1 (fixed)"
    assert [p.problem_id for p in queries.problems_by_role(RunDir(tmp_path), "train")] == ["gsm8k/train/0"]
    assert sorted(p.name for p in (tmp_path / "problems").iterdir()) == ["test.parquet", "train.parquet"]


# --------------------------------------------------------------------------- CLI


@needs_data
def test_cli_problems_counts_levels_and_saves(tmp_path):
    from flopmatch.cli import app

    runner = CliRunner()
    result = runner.invoke(
        app, ["problems", "math-offline", "--split", "train", "--data-file", str(DATA), "--run", str(tmp_path)],
        terminal_width=200,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "4,500 problems" in result.output
    assert "Level 5" in result.output and "1,190" in result.output  # Level 5 problems in the 4,500
    assert "Counting & Probability" in result.output
    assert len(queries.problems_by_role(RunDir(tmp_path), "train")) == 4500


def test_cli_problems_bad_row_is_a_clear_error(tmp_path):
    from flopmatch.cli import app

    path = _jsonl(tmp_path / "test.jsonl", [GOOD, {"question": "q", "answer": "no marker"}])
    result = CliRunner().invoke(app, ["problems", str(path)], terminal_width=300)
    assert result.exit_code == 2
    assert "line 2" in result.output and "'answer'" in result.output
