"""`flopmatch problems`: load a problem set and show what is in it."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Annotated

import typer
from rich.panel import Panel
from rich.text import Text

from flopmatch.cli._app import app, console, fail
from flopmatch.cli.inputs import SOURCES_HELP, QuietOption
from flopmatch.cli.tables import JsonOption, print_json, print_table
from flopmatch.datasets import dataset_names, get_dataset

# The declared datasets (flopmatch.datasets), so one registered before the CLI is built shows up here too.
_SOURCE_LINES = "; ".join(f"`{name}`: {get_dataset(name).description}" for name in dataset_names())

_HELP = f"""Load a problem set and print its size, counts by level and subject, and example problems.

Every source gives the same record (`problem_id, dataset, split, question, answer, solution, level,
subject`) with stable ids: `gsm8k/test/12` (row index), `math500/test/precalculus/807` (MATH500's
unique_id), `math/test/<hash of the problem text>` (MATH has no ids of its own).

**Sources.** {_SOURCE_LINES}; or a file path.

**Offline** (no hub): pass `--data-file` with the file or the data directory. A malformed row fails
with the file, line number and field.

Examples:

    flopmatch problems gsm8k --split train --data-file ../shared/data
    flopmatch problems math-offline --split train --data-file ../shared/data --limit 500 --seed 0
    flopmatch problems ../shared/data/math/math500_test.jsonl
"""


@app.command("problems", help=_HELP)
def problems_command(
    source: Annotated[
        str,
        typer.Argument(
            help=f"{SOURCES_HELP}, or a local .jsonl/.json/.parquet file.",
            show_default=False,
        ),
    ],
    split: Annotated[
        str | None,
        typer.Option(
            "--split", help="train or test (default: test; for a bare file, the split in its name)."
        ),
    ] = None,
    data_file: Annotated[
        Path | None,
        typer.Option(
            "--data-file",
            help="Read a local JSONL/Parquet file, or a data directory laid out like the shared data "
            "(`gsm8k/<split>.jsonl`, `math/math_test_5000.jsonl`, `math/math500_test.jsonl`), instead of the hub. "
            "math-offline needs one (or $FLOPMATCH_DATA_DIR).",
        ),
    ] = None,
    limit: Annotated[
        int | None, typer.Option("--limit", min=0, help="Keep at most this many problems.")
    ] = None,
    seed: Annotated[
        int | None,
        typer.Option(
            "--seed", help="With --limit: a seeded subset (same seed, same subset) instead of the first N."
        ),
    ] = None,
    show: Annotated[int, typer.Option("--show", min=0, help="How many example problems to print.")] = 1,
    run: Annotated[
        Path | None,
        typer.Option(
            "--run",
            help="Also save the problems into this run directory (`problems/<split>.parquet`, merged by id).",
        ),
    ] = None,
    as_json: JsonOption = False,
    quiet: QuietOption = False,
) -> None:
    """Load a problem set and print what is in it (the command's help is ``_HELP``: it lists the declared
    datasets)."""
    from flopmatch.problems import load, save_problems

    problems = load(source, split=split, data_file=data_file, limit=limit, seed=seed)
    if not problems:
        raise fail(f"{source}: no problems")

    splits = sorted({p.split for p in problems})
    datasets = sorted({p.dataset for p in problems})
    counts = {key: Counter(getattr(p, key) for p in problems) for key in ("level", "subject")}
    counts = {key: c for key, c in counts.items() if set(c) != {None}}
    written = save_problems(run, problems) if run is not None else {}
    if as_json:
        print_json({
            "source": source, "problems": len(problems), "datasets": datasets, "splits": splits,
            **{f"by_{key}": {str(v): n for v, n in _sorted(c)} for key, c in counts.items()},
            "examples": [p.to_dict() for p in problems[:show]],
            "saved": {name: str(path) for name, path in written.items()},
        })  # fmt: skip
        return
    console.print(
        f"[bold]{len(problems):,}[/] problems from [bold]{source}[/] "
        f"(dataset {', '.join(datasets)}; split {', '.join(splits)})"
    )
    for key, c in counts.items():
        rows = [("–" if v is None else str(v), f"{n:,}", f"{n / len(problems):.1%}") for v, n in _sorted(c)]
        print_table(
            (key, "problems", "share"), rows, keys={key}, right={"problems", "share"}, title=f"by {key}"
        )
    for problem in problems[:show]:
        body = Text(_clip(problem.question, 800))
        body.append("\n\nanswer: ", style="bold")
        body.append(problem.answer)
        console.print(Panel(body, title=problem.problem_id, title_align="left"))
    for split_name, path in written.items():
        console.print(f"saved {split_name} → {path}")


def _sorted(counts: Counter) -> list:
    return sorted(counts.items(), key=lambda kv: (kv[0] is None, str(kv[0])))


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit] + " …"
