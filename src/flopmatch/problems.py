"""Problem sets: one record for every source (GSM8K, MATH, MATH500, the toy world, local files).

``load(source, split=..., data_file=..., limit=..., seed=...)`` is the one entry point. A named source
is a dataset declared in :mod:`flopmatch.datasets`, and its declaration alone says where its problems
come from (a generator, or :class:`~flopmatch.datasets.DataFiles`: row format, data-directory files, hub
repo and configs; or :class:`~flopmatch.datasets.DerivedSplits`); the built-in ones:

========================  =====================================================================
source                    where the problems come from
========================  =====================================================================
``gsm8k``                 hub ``openai/gsm8k`` (config ``main``); splits ``train`` / ``test``
``math``                  hub ``EleutherAI/hendrycks_math`` (all 7 subject configs, Hendrycks
                          MATH); splits ``train`` (7,500) / ``test`` (5,000)
``math500``               hub ``HuggingFaceH4/MATH-500``; split ``test``
``math-offline``          local files only: the offline MATH split of the shared data
                          (``train`` = MATH test 5000 minus the MATH500 problems, matched on
                          problem text -> 4,500; ``test`` = MATH500)
``toyworld``              ``flopmatch.toyworld.load_problems`` (generated, CPU-sized; any dataset
                          declared with a ``loader`` loads the same way)
a path / ``file``         a local JSONL/Parquet file; its format is detected from its fields
========================  =====================================================================

Local files (``data_file=``) come in the formats of the shared data folder, detected from the
fields of the first row: GSM8K (``question``, ``answer`` with the gold after ``####``), MATH
(``problem``, ``solution``: gold = content of the last ``\\boxed{}``/``\\fbox{}``, braces nest) and
MATH500 (``problem``, ``answer``, ``unique_id``...): the row formats of :data:`ROW_FORMATS`. ``data_file``
may also be a *data directory* laid out like the shared data, where each dataset's declared files are
found (``gsm8k/<split>.jsonl``, ``math/math_test_5000.jsonl``, ``math/math500_test.jsonl``);
``math-offline`` needs one (``data_file`` or ``$FLOPMATCH_DATA_DIR``).

Problem ids are stable across runs and machines: ``<dataset>/<split>/<source id>`` where the source
id is the row index for GSM8K (hub order = file order), the MATH500 ``unique_id``
(``math500/test/precalculus/807``), and a hash of the problem text for MATH, whose sources carry no
id of their own (so the hub mirror and a local copy give the same ids).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from flopmatch.boxed import last_boxed  # noqa: F401 - part of this module's API (the MATH gold rule)
from flopmatch.datasets import (  # noqa: F401 - MATH_HUB_*: the MATH declaration, re-exported as before
    MATH_HUB_CONFIGS,
    MATH_HUB_REPO,
    DataFiles,
    Dataset,
    DerivedSplits,
    dataset_names,
    get_dataset,
)
from flopmatch.errors import FlopmatchError
from flopmatch.record import (  # noqa: F401 - the record is part of this module's API
    PROBLEM_SCHEMA,
    Problem,
    problems_from_table,
    problems_to_table,
    select_subset,
)

# --------------------------------------------------------------------------- errors

DATA_DIR_ENV = "FLOPMATCH_DATA_DIR"
"""Environment variable naming the offline data directory (laid out like the shared data)."""


class ProblemFileError(FlopmatchError, ValueError):
    """A row of a problem file (or hub table) is malformed. Names the file, the line and the field."""

    def __init__(
        self, path: str | Path, line: int | None, field: str | None, message: str, *, unit: str = "line"
    ):
        super().__init__(message, file=path, row=line, field=field, unit=unit)
        self.path = str(path)
        self.line = line


class ProblemSourceError(FlopmatchError, RuntimeError):
    """A problem source cannot be reached or found (hub offline, no data directory, no toy world), or a
    generated source failed to make its problems."""


class ProblemRequestError(FlopmatchError, ValueError):
    """:func:`load` was asked for something no source gives: an unknown source, a split the source does
    not have, a negative limit, a data file for a generated source."""


class ProblemFileUnreadable(FlopmatchError, OSError):
    """A problem file exists but cannot be read (no permission, an I/O error)."""


class _RowError(FlopmatchError):
    """Raised by the row parsers; the caller adds file and line."""

    def __init__(self, field: str | None, message: str):
        super().__init__(message, field=field)


# --------------------------------------------------------------------------- answers


_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")


def normalize_gsm8k_answer(text: str) -> str:
    """The GSM8K gold as a plain number string: trimmed, thousands separators removed ("1,000" -> "1000")."""
    return _THOUSANDS.sub("", text.strip())


def gsm8k_gold(solution: str) -> str | None:
    """The gold answer of a GSM8K reference solution: the text after the last ``####``."""
    if "####" not in solution:
        return None
    return normalize_gsm8k_answer(solution.rsplit("####", 1)[1]) or None


# --------------------------------------------------------------------------- row parsers


def _text(row: dict[str, Any], field: str, *, required: bool = True) -> str:
    if field not in row or row[field] is None:
        if required:
            raise _RowError(field, "missing")
        return ""
    value = row[field]
    if not isinstance(value, str):
        raise _RowError(field, f"expected a string, got {type(value).__name__} {value!r:.40}")
    if required and not value.strip():
        raise _RowError(field, "empty")
    return value


def _level(row: dict[str, Any]) -> str | None:
    """MATH levels as "Level N" whatever the source wrote (MATH500 writes the int N)."""
    value = row.get("level")
    if value is None or value == "":
        return None
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise _RowError("level", f"expected 'Level N' or an integer, got {value!r:.40}")
    text = str(value).strip()
    return f"Level {text}" if re.fullmatch(r"\d+|\?", text) else text


def content_hash(text: str) -> str:
    """12 hex digits of SHA-256 over the whitespace-normalised text: a source-independent problem id."""
    return hashlib.sha256(_normalize_text(text).encode()).hexdigest()[:12]


def _normalize_text(text: str) -> str:
    return " ".join(text.split())


def _parse_gsm8k(row: dict[str, Any], index: int, split: str, dataset: str) -> Problem:
    question = _text(row, "question")
    solution = _text(row, "answer")
    if "####" not in solution:
        raise _RowError("answer", "no '#### <answer>' line (the GSM8K gold answer)")
    gold = gsm8k_gold(solution)
    if not gold:
        raise _RowError("answer", "empty answer after '####'")
    return Problem(f"{dataset}/{split}/{index}", dataset, split, question, gold, solution)


def _parse_math(row: dict[str, Any], index: int, split: str, dataset: str) -> Problem:
    question = _text(row, "problem")
    solution = _text(row, "solution")
    gold = last_boxed(solution)
    if gold is None or not gold.strip():
        raise _RowError(
            "solution", "no final answer: expected a \\boxed{...} or \\fbox{...} with balanced braces"
        )
    subject = _text(row, "type", required=False) or _text(row, "subject", required=False) or None
    return Problem(
        f"{dataset}/{split}/{content_hash(question)}",
        dataset,
        split,
        question,
        gold.strip(),
        solution,
        _level(row),
        subject,
    )


def _parse_math500(row: dict[str, Any], index: int, split: str, dataset: str) -> Problem:
    question = _text(row, "problem")
    answer = _text(row, "answer")
    solution = _text(row, "solution", required=False)
    unique_id = _text(row, "unique_id", required=False)
    if unique_id:
        parts = unique_id.strip().removesuffix(".json").split("/")
        if parts[0] in {"train", "test"} and len(parts) > 1:
            parts = parts[1:]
        source_id = "/".join(parts)
    else:
        source_id = content_hash(question)
    subject = _text(row, "subject", required=False) or None
    return Problem(
        f"{dataset}/{split}/{source_id}",
        dataset,
        split,
        question,
        answer.strip(),
        solution,
        _level(row),
        subject,
    )


RowParser = Callable[[dict[str, Any], int, str, str], Problem]
"""``(row, index, split, dataset) -> Problem``: one row of a source, its 0-based index in the source,
the split and dataset it is labelled with; raises a row error naming the bad field."""

ROW_FORMATS: dict[str, RowParser] = {"gsm8k": _parse_gsm8k, "math": _parse_math, "math500": _parse_math500}
"""The row formats a declared dataset's rows parse with (:class:`flopmatch.datasets.DataFiles`)."""


def detect_format(row: dict[str, Any]) -> str | None:
    """Which of the shared-data formats a row is in, from its fields: gsm8k, math500, math, or None."""
    keys = set(row)
    if "question" in keys:
        return "gsm8k"
    if "problem" in keys and "answer" in keys:
        return "math500"
    if "problem" in keys:
        return "math"
    return None


# --------------------------------------------------------------------------- local files


def _read_rows(path: Path) -> tuple[str, Iterator[tuple[int, Any]]]:
    """(unit, iterator of (1-based line/row number, row)) for a JSONL, JSON or Parquet file."""
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            rows = pq.read_table(path).to_pylist()
        except Exception as exc:  # noqa: BLE001 - any unreadable Parquet is the same user error
            raise ProblemFileError(path, None, None, f"not a readable Parquet file ({exc})") from exc
        return "row", enumerate(rows, 1)
    if suffix == ".json":
        text = path.read_text(encoding="utf-8")
        if text.lstrip().startswith("["):
            try:
                items = json.loads(text)
            except json.JSONDecodeError as exc:
                raise ProblemFileError(path, exc.lineno, None, f"invalid JSON ({exc.msg})") from exc
            return "item", enumerate(items, 1)
    if suffix not in {".jsonl", ".json", ".ndjson"}:
        raise ProblemFileError(path, None, None, "unknown file type: expected .jsonl, .json or .parquet")
    return "line", _jsonl_rows(path)


def _jsonl_rows(path: Path) -> Iterator[tuple[int, Any]]:
    with open(path, encoding="utf-8") as handle:
        for lineno, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                yield lineno, json.loads(line)
            except json.JSONDecodeError as exc:
                raise ProblemFileError(
                    path, lineno, None, f"invalid JSON ({exc.msg}, column {exc.colno})"
                ) from exc


_SPLIT_NAMES = {"train", "test", "validation", "val", "dev"}


def _split_from_name(path: Path) -> str | None:
    tokens = set(re.split(r"[^a-z0-9]+", path.stem.lower())) & _SPLIT_NAMES
    return tokens.pop() if len(tokens) == 1 else None


def load_file(
    path: str | Path, *, split: str | None = None, expect: str | None = None, dataset: str | None = None
) -> list[Problem]:
    """Problems from one local JSONL/JSON/Parquet file, format detected from the first row's fields.

    ``split`` defaults to the split named in the file name (``test.jsonl``, ``math500_test.jsonl``).
    ``expect`` (a row format: gsm8k, math, math500) refuses a file in another format, so ``load("gsm8k",
    data_file=<a MATH file>)`` fails loudly instead of mislabelling problems. ``dataset`` labels the
    problems (ids ``<dataset>/<split>/...``; default: the row format). Any malformed row raises
    :class:`ProblemFileError` naming the file, the line and the field.
    """
    path = Path(path)
    if not path.is_file():
        raise ProblemSourceError(f"problem file {path} does not exist")
    split = split or _split_from_name(path)
    if split is None:
        raise ProblemSourceError(f"cannot tell the split of {path} from its name: pass split= (CLI: --split)")
    try:
        return _unique_ids(_parse_rows(path, split, expect, dataset))
    except OSError as exc:  # no permission, an I/O error: the OS's own message names the file
        raise ProblemFileUnreadable(str(exc)) from exc
    except UnicodeDecodeError as exc:
        raise ProblemFileError(path, None, None, f"not UTF-8 text ({exc.reason} at byte {exc.start})") from exc


def _parse_rows(path: Path, split: str, expect: str | None, dataset: str | None) -> list[Problem]:
    unit, rows = _read_rows(path)
    problems: list[Problem] = []
    parser: RowParser | None = None
    label = dataset or ""
    for index, (number, row) in enumerate(rows):
        if not isinstance(row, dict):
            raise ProblemFileError(
                path, number, None, f"expected a JSON object, got {type(row).__name__}", unit=unit
            )
        if parser is None:
            fmt = detect_format(row)
            if fmt is None:
                raise ProblemFileError(
                    path,
                    number,
                    "question",
                    "unknown format: expected fields question+answer (GSM8K), problem+solution (MATH) or "
                    f"problem+answer (MATH500); found {sorted(row)}",
                    unit=unit,
                )
            if expect is not None and fmt != expect:
                raise ProblemFileError(
                    path,
                    number,
                    None,
                    f"this file is in {fmt} format (fields {sorted(row)}), not {expect}",
                    unit=unit,
                )
            parser, label = ROW_FORMATS[fmt], dataset or fmt
        try:
            problems.append(parser(row, index, split, label))
        except _RowError as err:
            raise ProblemFileError(path, number, err.field, err.message, unit=unit) from None
    return problems


def _unique_ids(problems: list[Problem]) -> list[Problem]:
    """Keep ids unique when a source repeats a problem text: later copies get ``-2``, ``-3``... (in order)."""
    seen: dict[str, int] = {}
    out = []
    for problem in problems:
        count = seen.get(problem.problem_id, 0) + 1
        seen[problem.problem_id] = count
        if count > 1:
            problem = Problem(**{**problem.to_dict(), "problem_id": f"{problem.problem_id}-{count}"})
        out.append(problem)
    return out


# --------------------------------------------------------------------------- declared sources


def _files_of(declared: Dataset) -> DataFiles:
    """The :class:`DataFiles` a dataset declares, its row format checked."""
    data = declared.data
    if not isinstance(data, DataFiles):
        raise ProblemRequestError(
            f"dataset {declared.name!r} declares no data files (flopmatch.datasets.DataFiles); "
            f"it cannot be read from a data directory or the hub"
        )
    if data.row_format not in ROW_FORMATS:
        raise ProblemRequestError(
            f"dataset {declared.name!r} declares row format {data.row_format!r}: "
            f"expected one of {', '.join(ROW_FORMATS)}"
        )
    return data


def _in_data_dir(directory: Path, declared: Dataset, split: str) -> Path:
    """The file of (dataset, split) in ``directory`` (the data root or the dataset's own folder)."""
    relative = _files_of(declared).files.get(split)
    if relative is None:
        raise ProblemSourceError(
            f"the offline data has no {declared.name} {split!r} split (see INDEX.md of the data directory)"
        )
    for path in (directory / relative, directory / Path(relative).name):
        if path.is_file():
            return path
    raise ProblemSourceError(f"{directory} has no {relative} (is it the data directory?)")


def _local(
    declared: Dataset, split: str, data_file: str | Path, *, label: str | None = None
) -> list[Problem]:
    """(dataset, split) from a local file or data directory, labelled ``label`` (default: ``split``)."""
    path = Path(data_file).expanduser()
    if path.is_dir():
        path = _in_data_dir(path, declared, split)
    fmt = _files_of(declared).row_format
    return load_file(path, split=label or split, expect=fmt, dataset=declared.name)


def _derived(
    declared: Dataset, derived: DerivedSplits, split: str, data_file: str | Path | None
) -> list[Problem]:
    """A split cut from other datasets' local files, as ``derived`` (``declared.data``) says."""
    directory = data_file or os.environ.get(DATA_DIR_ENV)
    if not directory:
        parts = (*derived.splits.values(), *([derived.held_out] if derived.held_out else []))
        needs = dict.fromkeys(_files_of(_part(declared, p)).files.get(p[1], "?") for p in parts)
        raise ProblemSourceError(
            f"{declared.name} reads local files: pass data_file=<data dir> (CLI: --data-file) or set "
            f"${DATA_DIR_ENV} to a directory holding {' and '.join(needs)}"
        )
    directory = Path(directory).expanduser()
    if not directory.is_dir():
        raise ProblemSourceError(f"{declared.name} needs a data directory, and {directory} is not one")
    part = derived.splits[split]
    held_texts: set[str] = set()
    if derived.held_out is not None:
        held_out = _local(_part(declared, derived.held_out), derived.held_out[1], directory, label=split)
        if part == derived.held_out:
            return held_out
        held_texts = {_normalize_text(p.question) for p in held_out}
    pool = _local(_part(declared, part), part[1], directory, label=split)
    return [p for p in pool if _normalize_text(p.question) not in held_texts]


def _part(declared: Dataset, part: tuple[str, str]) -> Dataset:
    """The declaration of the (dataset, split) a derived dataset reads."""
    found = get_dataset(part[0])
    if found is None:
        raise ProblemRequestError(f"dataset {declared.name!r} reads {part[0]!r}, which is not declared")
    return found


def _hub(declared: Dataset, split: str) -> list[Problem]:
    data = _files_of(declared)
    if data.hub is None:
        raise ProblemSourceError(
            f"{declared.name} is not on the hub: pass data_file= (CLI: --data-file) with a local "
            f"JSONL/Parquet copy or a data directory laid out like the shared data"
        )
    parser = ROW_FORMATS[data.row_format]
    problems: list[Problem] = []
    for config in data.hub_configs:
        name = data.hub if config is None else f"{data.hub} ({config})"
        try:
            import datasets

            table = datasets.load_dataset(data.hub, config, split=split)
        except Exception as exc:  # noqa: BLE001 - offline, gated, renamed: all end in the same advice
            raise ProblemSourceError(
                f"could not load {name} split {split!r} from the Hugging Face hub "
                f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}). "
                f"Offline? Pass data_file= (CLI: --data-file) with a local JSONL/Parquet copy or a data directory "
                f"laid out like the shared data (e.g. --data-file ../shared/data)."
            ) from exc
        for number, row in enumerate(table, 1):
            try:
                problems.append(parser(row, len(problems), split, declared.name))
            except _RowError as err:
                raise ProblemFileError(
                    f"hub:{name}/{split}", number, err.field, err.message, unit="row"
                ) from None
    return _unique_ids(problems)


def _generated(declared: Dataset, split: str | None, limit: int | None, seed: int | None) -> list[Problem]:
    """The problems of a dataset that declares a generator (``loader``)."""
    try:
        loader = declared.load_function("loader")
    except ImportError as exc:
        raise ProblemSourceError(str(exc)) from exc
    try:
        return loader(split=split, limit=limit, seed=seed)
    except RuntimeError as exc:  # the generator gave up (toyworld: no problem fits the knobs)
        if isinstance(exc, FlopmatchError):
            raise
        raise ProblemSourceError(str(exc)) from exc


def _read_declared(declared: Dataset, split: str, data_file: str | Path | None) -> list[Problem]:
    """A split of a dataset read from files, as its declaration says: derived, local or hub."""
    if isinstance(declared.data, DerivedSplits):
        return _derived(declared, declared.data, split, data_file)
    if data_file is not None:
        return _local(declared, split, data_file)
    return _hub(declared, split)


# --------------------------------------------------------------------------- the entry point

DEFAULT_SPLIT = "test"


def load(
    source: str,
    *,
    split: str | None = None,
    data_file: str | Path | None = None,
    limit: int | None = None,
    seed: int | None = None,
) -> list[Problem]:
    """Load a problem set (see the module docstring for sources, formats and ids).

    ``source`` is a declared dataset (:mod:`flopmatch.datasets`: generated by its ``loader``, or read as
    its ``data`` says), ``file`` (with ``data_file``) or a path. ``split`` defaults to ``test`` for the
    named sources (for a bare file: the split in its name). ``data_file`` reads a local file or data
    directory instead of the hub. ``limit`` keeps at most that many problems: with ``seed=None`` the
    first ones in source order, otherwise a seeded choice (problems ranked by a hash of (seed,
    problem_id)), returned in source order. The same seed gives the same subset on any machine, and a
    larger limit is a superset of a smaller one.
    """
    if limit is not None and limit < 0:
        raise ProblemRequestError(f"limit must be >= 0, got {limit}")
    declared = get_dataset(source)
    if declared is not None and declared.loader is not None:
        if data_file is not None:
            raise ProblemRequestError(f"{source} is generated; it takes no data_file")
        return _generated(declared, split, limit, seed)
    if declared is not None:
        split = split or DEFAULT_SPLIT
        if split not in declared.splits:
            raise ProblemRequestError(f"{source} has splits {', '.join(declared.splits)}; got {split!r}")
        problems = _read_declared(declared, split, data_file)
    elif source == "file" or Path(source).expanduser().is_file():
        path = data_file if source == "file" else source
        if path is None:
            raise ProblemRequestError("source 'file' needs data_file=")
        problems = load_file(Path(path).expanduser(), split=split)
    else:
        raise ProblemRequestError(
            f"unknown problem source {source!r}: expected one of {', '.join(dataset_names())}, 'file' or a path"
        )
    return select_subset(problems, limit=limit, seed=seed)


# --------------------------------------------------------------------------- run directory


def save_problems(run_dir: Any, problems: Iterable[Problem]) -> dict[str, Path]:
    """Write problems to ``<run>/problems/<split>.parquet``, merged by problem_id with what is there.

    A problem already on disk is replaced in place by the new record with its id; new ids are appended.
    Each split's file is written atomically. Returns the path written per split.
    """
    from flopmatch.store import as_run, read_table, write_table

    run = as_run(run_dir)
    by_split: dict[str, dict[str, Problem]] = {}
    for problem in problems:
        by_split.setdefault(problem.split, {})[problem.problem_id] = problem
    written = {}
    for split, fresh in by_split.items():
        path = run.problems_path(split)
        merged: dict[str, Problem] = {}
        if path.exists():
            merged = {p.problem_id: p for p in problems_from_table(read_table(path))}
        merged.update(fresh)
        written[split] = write_table(problems_to_table(list(merged.values())), path)
    return written
