"""One exception base: every error class in the package is a FlopmatchError, its place in a file reads
the same way in every message, and the CLI reports it in one place, as a message with no traceback."""

from __future__ import annotations

import ast
import importlib
import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

import flopmatch
from flopmatch.errors import USER_ERRORS, FlopmatchError, where

PACKAGE = Path(flopmatch.__file__).resolve().parent
FLOPMATCH = Path(sys.executable).with_name("flopmatch")


class _TableError(FlopmatchError, ValueError):
    def __init__(self, table: str, row: int):
        super().__init__("expected a number", file=table, row=row, field="price")


def test_the_place_is_written_the_same_way_whatever_is_known():
    assert str(FlopmatchError("no plan: run `flopmatch plan` first")) == "no plan: run `flopmatch plan` first"
    assert str(FlopmatchError("missing", file="a.parquet")) == "a.parquet: missing"
    assert str(FlopmatchError("empty", file="a.jsonl", row=3, unit="line")) == "a.jsonl, line 3: empty"
    full = FlopmatchError("expected a number; fix the row", file=Path("t.csv"), row=2, field="price")
    assert str(full) == "t.csv, row 2: field 'price': expected a number; fix the row"
    assert (full.file, full.row, full.field, full.message) == ("t.csv", 2, "price", "expected a number; fix the row")
    assert str(FlopmatchError("missing", field="answer")) == "field 'answer': missing"
    assert where(row=4) == "row 4: " and where() == ""


def test_an_error_keeps_its_fields_across_processes():
    error = _TableError("prices.csv", 7)
    back = pickle.loads(pickle.dumps(error))  # how the grading pool and engines send it back
    assert type(back) is _TableError and str(back) == str(error) == "prices.csv, row 7: field 'price': expected a number"
    assert (back.file, back.row, back.field) == ("prices.csv", 7, "price")
    assert isinstance(back, ValueError)  # the builtin base callers caught before is kept


def _exception_classes() -> list[tuple[str, str]]:
    """(module, class) for every class defined at any depth in src/flopmatch, read from the source so
    that a new module is seen without being listed anywhere."""
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        module = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ClassDef) and node.bases:
                found.append((module, node.name))
    return found


def test_every_exception_class_in_the_package_is_a_flopmatch_error():
    checked, missing = [], []
    for module_name, class_name in _exception_classes():
        module = importlib.import_module(module_name)
        cls = getattr(module, class_name, None)
        if not isinstance(cls, type) or not issubclass(cls, Exception) or class_name.startswith("_"):
            continue  # not an exception; a BaseException-only signal that must get past `except
            # Exception` (grading's SoftTimeout); or a private control-flow signal caught in its own
            # module (the toy generator's _Retry), which no user ever sees
        checked.append(f"{module_name}.{class_name}")
        if not issubclass(cls, FlopmatchError):
            missing.append(f"{module_name}.{class_name}")
    assert len(checked) >= 18  # the walk finds them (20 public ones when this test was written)
    assert not missing, f"subclass flopmatch.errors.FlopmatchError (keeping the builtin base): {missing}"


def test_every_command_reports_user_errors_through_the_app():
    from flopmatch.cli import app
    from flopmatch.cli.models import models_app

    commands = [*app.registered_commands, *models_app.registered_commands]
    assert len(commands) > 15
    unwrapped = [c.name for c in commands if not hasattr(c.callback, "__wrapped__")]
    assert not unwrapped, f"register commands on flopmatch.cli._app.FlopmatchTyper: {unwrapped}"
    assert FlopmatchError in USER_ERRORS


def test_an_error_raised_deep_inside_a_command_is_one_message(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    import flopmatch.problems as problems_mod
    from flopmatch.cli import app

    class _Offline(FlopmatchError, RuntimeError):
        exit_code = 3

    def unreachable(*_args, **_kwargs):
        raise _Offline("cannot reach the hub [offline]; pass --data-file", file="hub:gsm8k/test")

    monkeypatch.setattr(problems_mod, "load", unreachable)
    result = CliRunner().invoke(app, ["problems", "gsm8k"], terminal_width=300)
    assert result.exit_code == 3 and isinstance(result.exception, SystemExit)
    assert "error: hub:gsm8k/test: cannot reach the hub [offline]; pass --data-file" in result.output
    monkeypatch.undo()

    bad = tmp_path / "test.jsonl"  # a real one: the row parser, three calls below the command
    bad.write_text(json.dumps({"question": "q", "answer": "#### 1"}) + "\n" + json.dumps({"question": "q"}) + "\n")
    run = subprocess.run([str(FLOPMATCH), "problems", str(bad)], capture_output=True, text=True,
                         env={**os.environ, "COLUMNS": "300"})  # fmt: skip
    assert run.returncode == 2, run.stderr
    assert "Traceback" not in run.stderr and "Traceback" not in run.stdout
    assert f"error: {bad}, line 2: field 'answer': missing" in run.stderr.replace("\n", "")


def test_a_failed_study_exits_1_and_its_traceback_is_one_flag_away(monkeypatch: pytest.MonkeyPatch):
    """`flopmatch study`: a config error exits 2, a failed stage 1, both as one message from the app's
    handler; the hint a command adds to the message (a PEP 678 note) follows it on the same line."""
    import flopmatch.study as study_mod
    from flopmatch.cli import app
    from flopmatch.study import StageFailed

    def failing(*_args, **_kwargs):
        try:
            raise ZeroDivisionError("in the stage")
        except ZeroDivisionError as exc:
            raise StageFailed("grade", "ZeroDivisionError: in the stage") from exc

    monkeypatch.setattr(study_mod, "run_study", failing)
    config = str(PACKAGE.parents[1] / "examples" / "toyworld.yaml")
    result = CliRunner().invoke(app, ["study", config], terminal_width=300)
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "error: stage grade failed: ZeroDivisionError: in the stage" in result.output
    assert "rerun the study) (--verbose shows the traceback)" in result.output
    verbose = CliRunner().invoke(app, ["study", config, "--verbose"], terminal_width=300)
    assert verbose.exit_code == 1 and "ZeroDivisionError" in verbose.output
    assert "--verbose shows" not in verbose.output and "Traceback" in verbose.output
    bad = CliRunner().invoke(app, ["study", config, "--set", "budget.mode=flopz"], terminal_width=300)
    assert bad.exit_code == 2 and "budget.mode" in bad.output


def test_a_missing_run_is_one_message_from_every_study_command(tmp_path: Path):
    from flopmatch.cli import app

    for command in ("status", "report"):
        result = CliRunner().invoke(app, [command, str(tmp_path / "nope")], terminal_width=300)
        assert result.exit_code == 2 and isinstance(result.exception, SystemExit), (command, result.output)
        assert "error: " in result.output and "nope" in result.output


def test_a_plain_bug_still_shows_its_traceback():
    from flopmatch.cli._app import FlopmatchTyper

    demo = FlopmatchTyper()

    @demo.command()
    def broken() -> None:
        raise KeyError("a bug, not bad input")

    result = CliRunner().invoke(demo, [])
    assert isinstance(result.exception, KeyError)  # not swallowed into a message


def test_gold_answers_that_disagree_name_the_file_and_row(tmp_path: Path):
    from flopmatch.grading.run import GoldError, load_golds
    from flopmatch.problems import Problem, save_problems
    from flopmatch.store import RunDir

    def problem(split: str, answer: str) -> Problem:
        return Problem(problem_id="gsm8k/x/1", dataset="gsm8k", split=split, question="q", answer=answer)

    run = RunDir(tmp_path)
    save_problems(run, [problem("test", "1"), problem("train", "2")])
    with pytest.raises(GoldError) as info:
        load_golds(run)
    assert info.value.row == 1 and info.value.file.endswith("train.parquet")
    assert str(info.value).startswith(f"{info.value.file}, row 1: problem 'gsm8k/x/1' also in ")
    assert isinstance(info.value, ValueError)  # what grade_run's callers caught before


def test_sample_reports_a_bad_plan_and_a_bad_allocation_through_the_app(tmp_path: Path):
    """`flopmatch sample`: a plan that does not parse and options no allocation policy takes are library
    errors (BudgetError, AllocationConfigError) with the messages the command printed itself before."""
    from flopmatch.allocation import AllocationConfigError
    from flopmatch.budget import BudgetError
    from flopmatch.cli import app

    plan = tmp_path / "plan.json"
    plan.write_text("{not json")
    common = ["sample", "--run", str(tmp_path / "run"), "--problems", "toyworld", "--limit", "2"]
    result = CliRunner().invoke(app, [*common, "--plan", str(plan)], terminal_width=300)
    assert result.exit_code == 2 and isinstance(result.exception, SystemExit), result.output
    assert isinstance(result.exception.__context__.__cause__, BudgetError)  # reported by the app's handler
    assert f"error: cannot read the budget plan {plan}: 1 validation error for BudgetPlan" in result.output  # read_plan's
    result = CliRunner().invoke(app, [*common, "--plan", str(tmp_path / "none.json")], terminal_width=300)
    assert result.exit_code == 2 and f"error: no budget plan at {tmp_path / 'none.json'}: run `flopmatch plan`" in result.output

    bad = [*common, "--model", "toy", "--allocation", "adaptive", "--target-correct", "2", "--budget-flops", "1e9"]
    result = CliRunner().invoke(app, bad, terminal_width=300)
    assert result.exit_code == 2 and isinstance(result.exception.__context__.__cause__, AllocationConfigError)
    assert "error: --allocation: 1 validation error for AllocationConfig" in result.output
    assert "target_correct applies to until-correct only" in result.output


def test_backend_settings_are_flopmatch_errors_before_any_engine_starts(tmp_path: Path):
    """An unknown backend, an option the backend has no keyword for and sampling parameters out of range
    are reported by the app as one message; Python callers keep catching ValueError / TypeError."""
    from flopmatch.backends import BackendConfigError, BackendOptionError, SamplingParams, create_backend
    from flopmatch.cli import app

    with pytest.raises(BackendConfigError, match="unknown backend 'tgi'; choose one of vllm, hf, openai"):
        create_backend("tgi", "m")
    with pytest.raises(BackendOptionError, match="backend 'openai': got an unexpected keyword argument 'max_concurency'") as info:
        create_backend("openai", "m", base_url="http://127.0.0.1:9/v1", max_concurency=4)
    assert isinstance(info.value, TypeError)
    with pytest.raises(ValueError, match=r"top_p\n  Value error, top_p must be in \(0, 1\], got 0.0"):
        SamplingParams(top_p=0)  # a pydantic config, as every library config is

    result = CliRunner().invoke(app, ["sample", "--run", str(tmp_path), "--model", "m", "-S", "1", "--top-p", "0"],
                                terminal_width=300)  # fmt: skip
    assert result.exit_code == 2 and "error: invalid SamplingParams: top_p: top_p must be in (0, 1], got 0.0" in result.output


def test_a_worker_count_below_one_is_a_flopmatch_error():
    from flopmatch.workers import WorkerCountError, run_parallel

    with pytest.raises(WorkerCountError, match="workers must be >= 1, got 0") as info:
        run_parallel(print, [{}], workers=0)
    assert isinstance(info.value, ValueError)  # tests/test_workers.py checks the ValueError callers catch


def test_a_library_config_the_command_builds_is_reported_on_one_line(tmp_path: Path):
    """`flopmatch judge` builds a JudgeSpec and `flopmatch train` a TrainConfig from their options: a value they
    refuse is one `error:` line naming the field (a pydantic ValidationError, summarised by the app), exit 2."""
    from pydantic import ValidationError

    from flopmatch.cli import app
    from flopmatch.cli._app import error_message
    from flopmatch.judge import JudgeSpec

    (tmp_path / "run").mkdir()
    missing = ["judge", str(tmp_path / "run"), "--judge-backend", "hf", "--judge-model", str(tmp_path / "no-model")]
    result = CliRunner().invoke(app, missing, terminal_width=300)  # the engine's OSError, said as one line
    assert result.exit_code == 2 and f"error: cannot build the judge (hf, {tmp_path / 'no-model'}): " in result.output
    result = CliRunner().invoke(app, ["judge", str(tmp_path / "run"), "--judge-backend", "vllm"], terminal_width=300)
    assert result.exit_code == 2 and isinstance(result.exception.__context__.__cause__, ValidationError)
    assert "error: invalid JudgeSpec: judge backend 'vllm' needs a model (judge.spec.model in a study, " in result.output
    with pytest.raises(ValidationError) as caught:
        JudgeSpec.model_validate({"backend": "hf", "model": "m", "max_tokens": 0, "modle": 1})
    assert error_message(caught.value) == (
        "invalid JudgeSpec: max_tokens: Input should be greater than or equal to 1; modle: Extra inputs are not permitted"
    )
    (tmp_path / "sft").mkdir()
    common = ["train", "--data", str(tmp_path / "sft"), "--model", "m", "--out", str(tmp_path / "out")]
    result = CliRunner().invoke(app, [*common, "--preset", "huge"], terminal_width=300)
    assert result.exit_code == 2 and "error: unknown training preset 'huge'; expected one of default, tiny-cpu" in result.output
    result = CliRunner().invoke(app, [*common, "--lr", "-1"], terminal_width=300)
    assert result.exit_code == 2 and "error: invalid TrainConfig: learning_rate: Input should be greater than 0" in result.output


def test_a_train_config_file_that_does_not_parse_is_one_error(tmp_path: Path):
    from flopmatch.cli import app

    (tmp_path / "sft").mkdir()
    for name, text in (("bad.yaml", "lr: [1, 2\n"), ("bad.json", '{"lr": \n')):
        (tmp_path / name).write_text(text)
        args = ["train", "--data", str(tmp_path / "sft"), "--model", "m", "--out", str(tmp_path / "out"),
                "--config", str(tmp_path / name)]  # fmt: skip
        result = CliRunner().invoke(app, args, terminal_width=300)
        assert result.exit_code == 2 and f"error: {tmp_path / name}: cannot parse: " in result.output, result.output
