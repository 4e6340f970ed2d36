"""Command-line inputs shared by several commands: the problem-set options, ``--quiet``, backend
``KEY=VALUE`` options, ``--k`` lists and a run's problems."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from flopmatch.cli._app import fail
from flopmatch.datasets import dataset_names
from flopmatch.progress import set_quiet

#: the declared datasets, for the help of every option that takes a problem source
SOURCES_HELP = " | ".join(dataset_names())

ProblemsOpt = Annotated[
    str | None,
    typer.Option("--problems", help=f"{SOURCES_HELP} | a file; default: the run's"),
]
SplitOpt = Annotated[str | None, typer.Option(help="the problem split (default: test)")]
DataFileOpt = Annotated[Path | None, typer.Option("--data-file", help="a local JSONL/Parquet file or data dir")]


def _apply_quiet(quiet: bool) -> bool:
    if quiet:
        set_quiet(True)  # for this process and the workers, engines and trainers it starts
    return quiet


QuietOption = Annotated[
    bool, typer.Option("--quiet", "-q", callback=_apply_quiet, help="No progress bars (here, in workers and in the "
                       "libraries flopmatch drives).")
]


def parse_ks(text: str) -> list[int]:
    """``--k 1,3,10``: distinct positive integers, ascending."""
    try:
        ks = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise fail(f"--k expects comma-separated integers, got {text!r}") from None
    if not ks or min(ks) < 1:
        raise fail(f"--k values must be >= 1, got {text!r}")
    return sorted(set(ks))


def parse_options(items: list[str] | None) -> dict[str, Any]:
    """``--option KEY=VALUE`` pairs; a VALUE that parses as JSON (numbers, true, lists) is taken as such."""
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise fail(f"--option expects KEY=VALUE, got {item!r}")
        try:
            out[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            out[key.strip()] = value
    return out


def load_problems(run: Path, source: str | None, split: str | None, data_file: Path | None,
                  limit: int | None, seed: int | None) -> list[Any]:
    """``--problems SOURCE`` (with split, data file, limit and seed), or the problems saved in ``run``."""
    from flopmatch import problems as problems_mod
    from flopmatch.store import RunDir, queries

    if source is None:
        run_dir = RunDir(run)
        saved = queries.problems_by_role(run_dir, split) if split else list(queries.load_problems(run_dir).values())
        if not saved:
            where = f"{run}/problems/{split}.parquet" if split else f"{run}/problems/"
            raise fail(f"no --problems given and no problems saved in {where}")
        return problems_mod.select_subset(saved, limit=limit, seed=seed)
    # A bad source, file or row (a ProblemFileError, ProblemSourceError, ProblemFileUnreadable...) is a
    # FlopmatchError, reported by the app (flopmatch.cli._app).
    return problems_mod.load(source, split=split, data_file=data_file, limit=limit, seed=seed)
