"""Tables never cut the names users copy, and every command that prints a table offers --json.

Printed the way a pipe sees them (`flopmatch models list | cat`): not a terminal, 80 columns.
"""

from __future__ import annotations

import ast
import inspect
import io
import json
import re
from pathlib import Path

import pytest
from rich.console import Console
from typer.testing import CliRunner

from flopmatch.cli import app
from flopmatch.cli.tables import print_table

CLI_DIR = Path(__file__).resolve().parents[1] / "src" / "flopmatch" / "cli"


@pytest.fixture
def narrow(monkeypatch: pytest.MonkeyPatch) -> None:
    """80 columns, as rich assumes for a pipe; and a model cache of this test's own."""
    monkeypatch.setenv("COLUMNS", "80")


def _render(width: int, columns, rows, **kwargs) -> str:
    out = io.StringIO()
    target = Console(file=out, width=width, force_terminal=False, color_system=None)
    print_table(columns, rows, target=target, **kwargs)
    return out.getvalue()


LONG_PATH = "/data/runs/2026-12-01-gsm8k-compute-matched/models/knowledge_distillation-wc-s0/checkpoint-1200"
MODEL = "qwen2.5-coder-1.5b-instruct-with-a-long-suffix"
NOTE = "a long free-text note that can wrap over several lines without losing anything a user needs"


@pytest.mark.parametrize("width", [40, 60, 80, 100, 200])
def test_identifying_columns_print_whole_and_the_rest_wraps(width: int) -> None:
    rows = [(MODEL, "494,032,768", LONG_PATH, NOTE), ("toyworld-wc", "155,968", "/tmp/x", "short")]
    text = _render(
        width, ("model", "parameters", "path", "note"), rows, keys={"model", "path"}, right={"parameters"}
    )
    lines = text.splitlines()
    for name in (MODEL, LONG_PATH, "toyworld-wc", "/tmp/x", "494,032,768"):
        assert any(name in line for line in lines), f"{name!r} cut at width {width}:\n{text}"
    assert "…" not in text
    body = [line.split("│")[1:-1] for line in lines if line.startswith("│")]
    first_row = body[: next(i for i, cells in enumerate(body) if "toyworld-wc" in cells[0])]
    note = " ".join(cells[3].strip() for cells in first_row)
    assert note.split() == NOTE.split()  # wrapped over lines, every word kept, in order
    if width >= 200:
        assert max(len(line) for line in lines) <= width  # room enough: nothing gets wider than asked


def test_a_table_wider_than_the_terminal_only_when_the_names_need_it() -> None:
    rows = [("a", "b " * 30)]
    text = _render(40, ("key", "text"), rows, keys={"key"})
    assert max(len(line) for line in text.splitlines()) <= 40


def test_unknown_key_columns_are_a_clear_error() -> None:
    with pytest.raises(ValueError, match=re.escape("['modle'] are not among the columns")):
        _render(80, ("model",), [("m",)], keys={"modle"})


def test_models_list_piped_shows_every_full_name(narrow, tmp_path, monkeypatch) -> None:
    from flopmatch import models

    monkeypatch.setenv(models.CACHE_ENV, str(tmp_path / "cache"))
    registry = models.list_models()
    result = CliRunner().invoke(app, ["models", "list"])
    assert result.exit_code == 0, result.output
    assert "…" not in result.output
    for info in registry:
        assert info.name in result.output, result.output
        assert (str(info.path) if info.path else info.upstream) in result.output, result.output
    assert "qwen2.5-coder-0.5b-instruct" in result.output  # the name the issue found cut

    as_json = CliRunner().invoke(app, ["models", "list", "--json"])
    assert as_json.exit_code == 0, as_json.output
    rows = json.loads(as_json.stdout)
    assert [r["name"] for r in rows] == [m.name for m in registry]
    assert {r["parameters"] for r in rows} == {m.parameters for m in registry}


def test_problems_json_and_table(narrow) -> None:
    result = CliRunner().invoke(app, ["problems", "toyworld", "--limit", "20", "--show", "2", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["problems"] == 20 and data["datasets"] == ["toyworld"]
    assert sum(data["by_level"].values()) == 20
    assert [e["problem_id"] for e in data["examples"]] == ["toyworld/test/0", "toyworld/test/1"]
    table = CliRunner().invoke(app, ["problems", "toyworld", "--limit", "20"])
    for level, count in data["by_level"].items():
        assert re.search(rf"{re.escape(level)}\s*│\s*{count}\b", table.output), table.output


def test_grade_json_matches_the_table(narrow, tmp_path) -> None:
    source = tmp_path / "answers-with-a-rather-long-file-name-that-must-not-be-cut.jsonl"
    rows = [
        {"response": r"We get $\boxed{\frac{\sqrt{3}}{2}}$", "gold": r"\frac{\sqrt3}2"},
        {"response": "The answer is 7.", "gold": "8"},
    ]
    source.write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = CliRunner().invoke(
        app, ["grade", "--input", str(source), "--dataset", "math", "--workers", "1", "--json"]
    )
    assert result.exit_code == 0, result.output
    [summary] = json.loads(result.stdout)
    assert (summary["correct"], summary["wrong"], summary["total"], summary["accuracy"]) == (1, 1, 2, 0.5)
    assert summary["source"] == source.name
    table = CliRunner().invoke(app, ["grade", "--input", str(source), "--dataset", "math", "--workers", "1"])
    assert table.exit_code == 0, table.output
    assert source.name in table.output and summary["grades"] in table.output and "50.0%" in table.output


# --------------------------------------------------------------------------- every table command has --json


def _calls(module_source: str) -> dict[str, set[str]]:
    """Function name -> names it calls, for the functions of one module."""
    graph: dict[str, set[str]] = {}
    for node in ast.walk(ast.parse(module_source)):
        if isinstance(node, ast.FunctionDef):
            graph[node.name] = {
                c.func.id for c in ast.walk(node) if isinstance(c, ast.Call) and isinstance(c.func, ast.Name)
            }
    return graph


def _prints_a_table(callback, graph: dict[str, set[str]]) -> bool:
    seen, todo = set(), [callback.__name__]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        todo.extend(graph.get(name, ()))
    return bool({"print_table", "Table"} & seen)


def _commands():
    """(command name, callback) for every command of the app and its sub-apps."""
    from typer.main import get_command

    root = get_command(app)
    stack = [("", root)]
    while stack:
        prefix, group = stack.pop()
        for name, command in getattr(group, "commands", {}).items():
            full = f"{prefix} {name}".strip()
            if getattr(command, "commands", None):
                stack.append((full, command))
            else:
                yield full, command


def test_every_command_that_prints_a_table_offers_json() -> None:
    checked, missing = [], []
    for name, command in _commands():
        callback = inspect.unwrap(command.callback)
        graph = _calls(inspect.getsource(inspect.getmodule(callback)))
        if not _prints_a_table(callback, graph):
            continue
        checked.append(name)
        if not any("--json" in p.opts for p in command.params):
            missing.append(name)
    assert {"models list", "grade", "problems", "status", "plan", "ledger", "sample"} <= set(checked), checked
    assert not missing, f"commands that print a table without --json: {missing}"


def test_tables_are_printed_one_way() -> None:
    """rich tables are built only by flopmatch.cli.tables (so no command can cut a name again)."""
    builds_its_own = {
        path.name
        for path in sorted(CLI_DIR.glob("*.py"))
        if path.name != "tables.py" and re.search(r"rich\.table|\bTable\(", path.read_text(encoding="utf-8"))
    }
    assert not builds_its_own, f"{sorted(builds_its_own)}: build tables with flopmatch.cli.tables.print_table"
