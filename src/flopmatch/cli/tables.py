"""Tables and JSON on stdout: the one way every command prints them.

A table's identifying columns (model names, paths, problem ids, stage names: what a user copies into
the next command) are never wrapped or cut, whatever the terminal's width or when stdout is a pipe;
the other columns wrap instead. If even that cannot fit, the table is printed wider than the
terminal rather than cutting a name. Every command that prints a table also takes ``--json``
(:data:`JsonOption`), which prints the same rows as JSON and nothing else.

Usage::

    print_table(["name", "parameters", "path"], rows, title="models", keys={"name", "path"},
                right={"parameters"})
    print_json([{"name": ..., "parameters": ...}])
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Collection, Iterable, Iterator, Sequence
from typing import Annotated, Any

import typer
from rich.console import Console, RenderableType
from rich.measure import Measurement
from rich.table import Table

from flopmatch.cli._app import console

JsonOption = Annotated[
    bool, typer.Option("--json", help="Print the table's data as JSON (nothing else on stdout), for scripts.")
]


def print_table(
    columns: Sequence[str],
    rows: Iterable[Sequence[RenderableType]],
    *,
    keys: Collection[str],
    right: Collection[str] = (),
    title: str | None = None,
    caption: str | None = None,
    target: Console | None = None,
) -> None:
    """Print ``rows`` under ``columns``. ``keys``: the identifying columns, printed whole;
    ``right``: right-justified (numeric) columns. Cells are strings (rich markup) or renderables."""
    target = target or console
    unknown = (set(keys) | set(right)) - set(columns)
    if unknown:
        raise ValueError(f"print_table: {sorted(unknown)} are not among the columns {list(columns)}")
    table = Table(title=title, caption=caption, title_justify="left")
    for header in columns:
        table.add_column(
            header,
            justify="right" if header in right else "left",
            no_wrap=header in keys,
            overflow="fold",  # never an ellipsis: _fit leaves every column at least its longest word
        )
    for row in rows:
        table.add_row(*row)
    _fit(table, target)
    target.print(table, crop=False)


def _fit(table: Table, target: Console) -> None:
    """Fix every column's width: identifying columns get their longest cell; the others share what
    is left of the terminal (the widest shrink first, never below their longest word, so they wrap
    between words). The table gets exactly the sum, even past the terminal's edge when the names
    need it, because rich would otherwise shrink every column, names included, to fit."""
    options = target.options.update_width(10**6)
    ranges = []
    for column in table.columns:
        cells = [Measurement.get(target, options, cell) for cell in (column.header, *column.cells)]
        ranges.append((max(m.minimum for m in cells), max(m.maximum for m in cells)))
    keys = [i for i, column in enumerate(table.columns) if column.no_wrap]
    others = [i for i in range(len(ranges)) if i not in keys]
    widths = {i: ranges[i][1] for i in range(len(ranges))}
    overhead = sum(_padding(table) for _ in ranges) + len(ranges) + 1  # cell padding, then the rules
    room = target.width - overhead - sum(widths[i] for i in keys)
    if sum(widths[i] for i in others) > room:
        cap = _cap([ranges[i] for i in others], room)
        widths.update({i: max(ranges[i][0], min(ranges[i][1], cap)) for i in others})
    for i, column in enumerate(table.columns):
        column.width = widths[i]
    table.width = sum(widths.values()) + overhead


def _padding(table: Table) -> int:
    _top, right, _bottom, left = table.padding
    return left + right


def _cap(ranges: list[tuple[int, int]], room: int) -> int:
    """The largest width cap that fits ``room`` when each (minimum, maximum) column is clamped to it."""
    low, high = 0, max((top for _, top in ranges), default=0)
    while low < high:
        mid = (low + high + 1) // 2
        if sum(max(bottom, min(top, mid)) for bottom, top in ranges) <= room:
            low = mid
        else:
            high = mid - 1
    return low


def print_json(data: Any, target: Console | None = None) -> None:
    """``data`` as indented JSON (values JSON cannot hold are written with ``str``); never wrapped."""
    (target or console).print_json(json.dumps(data, default=str, ensure_ascii=False))


@contextlib.contextmanager
def stdout_to_stderr(enabled: bool) -> Iterator[None]:
    """With --json, stdout carries only the JSON: whatever else writes to it meanwhile (vLLM's logs,
    from this process and from the engine processes it spawns, which inherit file descriptor 1; the
    trainer's loss lines) goes to stderr."""
    if not enabled:
        yield
        return
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)
