"""`flopmatch grade`: grade a run's samples, or an ad-hoc JSONL file of responses and gold answers."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Annotated, Any

import typer

from flopmatch.cli._app import app, fail
from flopmatch.cli.inputs import SOURCES_HELP, QuietOption
from flopmatch.cli.tables import JsonOption, print_json, print_table
from flopmatch.datasets import dataset_names
from flopmatch.grading.core import STATUSES


@app.command("grade")
def grade_command(
    run_dir: Annotated[
        Path | None,
        typer.Argument(help="a run directory: grade every model's samples into grades/MODEL.parquet"),
    ] = None,
    input_file: Annotated[
        Path | None,
        typer.Option(
            "--input", "-i", help="a JSONL file of rows with `response` and `gold` (instead of a run)"
        ),
    ] = None,
    dataset: Annotated[
        str | None,
        typer.Option(
            "--dataset",
            "-d",
            help=f"{SOURCES_HELP}, for --input (a row's `dataset` field wins)",
        ),
    ] = None,
    output: Annotated[
        Path | None,
        typer.Option(
            "--output",
            "-o",
            help="where --input's grades go: .parquet or .jsonl (default: INPUT.grades.parquet)",
        ),
    ] = None,
    workers: Annotated[
        int | None, typer.Option(min=1, help="checker processes (default: all usable CPUs)")
    ] = None,
    timeout: Annotated[
        float, typer.Option(min=0.1, help="hard limit in seconds per distinct answer check")
    ] = 5.0,
    as_json: JsonOption = False,
    quiet: QuietOption = False,
) -> None:
    """Grade final answers: `correct | wrong | no_answer | timeout | error` for every response.

    `flopmatch grade RUN_DIR` grades every sampled model of a run (skipping models already graded
    with the same samples and settings). `flopmatch grade --input FILE.jsonl --dataset D` grades an
    ad-hoc file. Both print a status summary.
    """
    if (run_dir is None) == (input_file is None):
        raise fail("give either a RUN_DIR or --input FILE.jsonl (not both)")
    if run_dir is not None:
        if dataset is not None or output is not None:
            raise fail("--dataset and --output apply to --input files; a run's problems name their datasets")
        _grade_run_dir(run_dir, workers, timeout, as_json)
    else:
        assert input_file is not None
        _grade_file(input_file, dataset, output, workers, timeout, as_json)


def _grade_run_dir(run_dir: Path, workers: int | None, timeout: float, as_json: bool) -> None:
    from flopmatch.grading import grade_run
    from flopmatch.store import read_table

    if not run_dir.is_dir():
        raise fail(f"{run_dir}: no such run directory")
    written = grade_run(run_dir, workers=workers, timeout=timeout)
    if not written:
        raise fail(f"{run_dir}: no samples to grade (samples/<model>/part-*.parquet)")
    rows = []
    for key, path in written.items():
        counts = Counter(read_table(path, columns=["status"]).column("status").to_pylist())
        rows.append((key, path, counts))
    _print_summary(rows, as_json)


def _grade_file(
    path: Path, dataset: str | None, output: Path | None, workers: int | None, timeout: float, as_json: bool
) -> None:
    from flopmatch.grading import grade_many

    known = set(dataset_names())
    if dataset is not None and dataset.lower() not in known:
        raise fail(f"--dataset {dataset!r}: expected one of {', '.join(sorted(known))}")
    rows = read_pairs(path, dataset, known=known)
    out_path = output or path.with_name(path.stem + ".grades.parquet")
    if out_path.suffix not in (".parquet", ".jsonl"):
        raise fail(f"--output {out_path}: use a .parquet or .jsonl file name")
    grades = grade_many(
        [(r["response"], r["gold"]) for r in rows],
        dataset=[r["dataset"] for r in rows],
        workers=workers,
        timeout=timeout,
    )
    records = []
    for row, g in zip(rows, grades, strict=True):
        record: dict[str, Any] = {"line": row["line"]}
        if "id" in row:
            record["id"] = row["id"]
        record.update(
            dataset=row["dataset"], gold=row["gold"], status=g.status, extracted=g.extracted, detail=g.detail
        )
        records.append(record)
    _write_records(records, out_path)
    _print_summary([(path.name, out_path, Counter(g.status for g in grades))], as_json)


def read_pairs(path: Path, dataset: str | None, *, known: frozenset[str] | set[str]) -> list[dict[str, Any]]:
    """The rows of an ad-hoc grading file, validated; a bad row fails naming file, line and field."""
    if not path.is_file():
        raise fail(f"{path}: no such file")
    rows: list[dict[str, Any]] = []
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            where = f"{path}:{number}"
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise fail(f"{where}: not valid JSON ({exc.msg})") from exc
            if not isinstance(obj, dict):
                raise fail(f"{where}: expected a JSON object with `response` and `gold`")
            for field in ("response", "gold"):
                if field not in obj:
                    raise fail(f"{where}: field `{field}` is missing")
            response, gold = obj["response"], obj["gold"]
            if response is not None and not isinstance(response, str):
                raise fail(
                    f"{where}: field `response` must be a string or null, got {type(response).__name__}"
                )
            if isinstance(gold, bool) or not isinstance(gold, (str, int, float)):
                raise fail(f"{where}: field `gold` must be a string or a number, got {type(gold).__name__}")
            name = obj.get("dataset", dataset)
            if name is None:
                raise fail(f"{where}: field `dataset` is missing and no --dataset was given")
            if not isinstance(name, str) or name.lower() not in known:
                raise fail(
                    f"{where}: field `dataset` is {name!r}; expected one of {', '.join(sorted(known))}"
                )
            row = {"line": number, "response": response, "gold": str(gold), "dataset": name.lower()}
            if "id" in obj:
                row["id"] = str(obj["id"])
            rows.append(row)
    if not rows:
        raise fail(f"{path}: no rows to grade")
    return rows


def _write_records(records: list[dict[str, Any]], path: Path) -> None:
    from flopmatch.store import write_table, write_text

    if path.suffix == ".jsonl":
        write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), path)
    else:
        write_table(records, path)


def _print_summary(rows: list[tuple[str, Path, Counter]], as_json: bool) -> None:
    """One row per graded source (a run's model, or the input file) with where its grades went."""
    records = []
    for name, path, counts in rows:
        total = sum(counts.values())
        records.append({"source": name, **{s: counts.get(s, 0) for s in STATUSES}, "total": total,
                        "accuracy": counts.get("correct", 0) / total if total else None, "grades": str(path)})  # fmt: skip
    if as_json:
        print_json(records)
        return
    columns = ("source", *STATUSES, "total", "accuracy", "grades")
    table = []
    for r in records:
        accuracy = "-" if r["accuracy"] is None else f"{r['accuracy']:.1%}"
        table.append((r["source"], *(str(r[s]) for s in STATUSES), str(r["total"]), accuracy, r["grades"]))
    print_table(
        columns, table, keys={"source", "grades"}, right={*STATUSES, "total", "accuracy"}, title="grades"
    )
