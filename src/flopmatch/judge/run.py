"""Judging a run: a seeded sample of answer-correct solutions per model into ``judgments/<model>.parquet``
(resumable), and human labels beside them (see :mod:`flopmatch.judge`).

Bad input raises a :class:`~flopmatch.errors.FlopmatchError` carrying where it is as ``file``/``row``/
``field``: :class:`JudgeInputError` (a ValueError: an argument out of range, a model without grades, a
sample whose problem has no record), :class:`JudgeInputMissing` (a FileNotFoundError: a run with no
grades) and :class:`LabelError` (a ValueError: a bad human-label file, with its line and field)."""

from __future__ import annotations

import csv
import hashlib
import json
import logging
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa

from flopmatch.budget import BudgetError
from flopmatch.errors import FlopmatchError
from flopmatch.judge.core import FprEstimate, Judge, JudgeItem, fpr_estimate
from flopmatch.progress import progress_bar
from flopmatch.store import RunDir, as_run, write_table
from flopmatch.store.queries import (  # noqa: F401 - the run queries were defined here; flopmatch.judge exports them
    budget_at_index,
    budget_samples,
    graded_models,
    grades_file,
    load_problems,
    plan_models,
    read_grades,
    read_human_labels,
    read_judgments,
    read_plan,
    sample_texts,
    samples_at_budget,
)
from flopmatch.store.schemas import HUMAN_SCHEMA, JUDGMENT_SCHEMA

log = logging.getLogger(__name__)


class JudgeInputError(FlopmatchError, ValueError):
    """:func:`judge_run` was given something it cannot judge: an argument out of range, a model with no
    grades, or solutions whose problem has no record in the run (``file`` names the run's directory)."""


class JudgeInputMissing(FlopmatchError, FileNotFoundError):
    """The run has no grades to judge (``file`` is its grades directory)."""


# --------------------------------------------------------------------------- judging a run


def human_labels_path(run: RunDir, model: str) -> Path:
    """Where imported human verdicts of a model live (beside, not inside, the judge's table)."""
    return run.human_labels_path(model)


def selection_key(seed: int, model: str, problem_id: str, sample_idx: int) -> bytes:
    """A seeded pseudo-random rank: a sample's place in the judging order, independent of verdicts.

    Taking the m smallest keys is a uniform random sample; the keys of a sub-budget's solutions are a
    subset of the full budget's, so samples drawn at different budgets overlap and judgments are reused.
    """
    return hashlib.blake2b(f"{seed}\x00{model}\x00{problem_id}\x00{sample_idx}".encode(), digest_size=16).digest()


@dataclass(frozen=True)
class JudgeRunStats:
    model: str
    candidates: int  # answer-correct solutions eligible
    selected: int
    judged_now: int
    reused: int
    fpr: FprEstimate
    samples_per_problem: int | None = None  # the model's samples per problem at ``budget`` (None: all)


def judge_run(
    run_dir: str | Path | RunDir,
    judge: Judge,
    *,
    per_model: int = 500,
    seed: int = 0,
    budget: int | None = None,
    models: Sequence[str] | None = None,
    chunk: int = 32,
    budget_index: int | None = None,
) -> dict[str, JudgeRunStats]:
    """Judge a seeded random sample of ``per_model`` answer-correct solutions of every graded model.

    Candidates are the samples graded ``correct``; with ``budget`` (the plan's budget named by its SE
    samples per problem, as in ``flopmatch plan --se-samples`` and ``build-sft --budget``) only each
    model's samples at that budget (sample_idx below its samples per problem there). ``budget_index``
    (an index into plan.json's budgets, what ``budget`` meant before) is deprecated. Judgments are
    written to ``judgments/<model>.parquet`` after every ``chunk`` solutions, keyed by (problem_id,
    sample_idx, judge): a rerun, or a run killed half-way, only judges what is missing.
    """
    run = as_run(run_dir)
    if per_model < 1:
        raise JudgeInputError(f"per_model must be >= 1, got {per_model}")
    budget = _budget_of(run, budget, budget_index)
    available = graded_models(run)
    if not available:
        raise JudgeInputMissing("no grades to judge (run `flopmatch grade` first)", file=run.grades_dir)
    wanted = list(models) if models is not None else list(available)
    problems = load_problems(run)
    stats: dict[str, JudgeRunStats] = {}
    for model in wanted:
        if model not in available:
            raise JudgeInputError(f"model {model!r} has no grades (have {sorted(available)})", file=run.grades_dir)
        limit = samples_at_budget(run, model, budget) if budget is not None else None
        grades = read_grades(run, model, samples=limit, path=available[model]).to_pylist()
        candidates = [(str(g["problem_id"]), int(g["sample_idx"])) for g in grades if g["status"] == "correct"]
        candidates.sort(key=lambda key: selection_key(seed, model, *key))
        selected = candidates[:per_model]
        path = run.judgments_path(model)
        existing = read_judgments(run, model).to_pylist()
        done = {(r["problem_id"], r["sample_idx"]) for r in existing if r["judge"] == judge.name}
        todo = [key for key in selected if key not in done]
        texts = sample_texts(run, model, set(todo))
        missing_problems = sorted({pid for pid, _ in todo if pid not in problems})
        if missing_problems:
            raise JudgeInputError(f"no problem record for {missing_problems[:5]} (model {model})",
                                  file=run.problems_dir)
        bar = progress_bar(len(todo), f"judge {model}", unit="sol")
        for start in range(0, len(todo), chunk):
            keys = todo[start : start + chunk]
            items = [JudgeItem(problems[pid], texts[(pid, idx)]) for pid, idx in keys]
            verdicts = judge.judge(items)
            if len(verdicts) != len(items):
                raise RuntimeError(f"judge {judge.name} returned {len(verdicts)} verdicts for {len(items)} items")
            existing += [
                {
                    "model": model,
                    "problem_id": pid,
                    "sample_idx": idx,
                    "status": v.status,
                    "first_wrong_step": v.first_wrong_step,
                    "explanation": v.explanation,
                    "judge": judge.name,
                    "raw": v.raw,
                }
                for (pid, idx), v in zip(keys, verdicts, strict=True)
            ]
            write_table(pa.Table.from_pylist(existing, schema=JUDGMENT_SCHEMA), path)
            bar.update(len(keys))
        bar.close()
        chosen = set(selected)
        mine = [r["status"] for r in existing if r["judge"] == judge.name and (r["problem_id"], r["sample_idx"]) in chosen]
        stats[model] = JudgeRunStats(model, len(candidates), len(selected), len(todo), len(selected) - len(todo),
                                     fpr_estimate(mine), limit)
    return stats


def _budget_of(run: RunDir, budget: int | None, budget_index: int | None) -> int | None:
    """The budget (SE samples per problem) to judge within, checked against the plan. An old budget
    index is translated, with a deprecation warning; a count the plan lacks fails listing its budgets
    (and, when it is a valid old-style index, what that index is called now)."""
    if budget_index is not None:
        if budget is not None:
            raise JudgeInputError("give budget= (SE samples per problem) or the deprecated budget_index=, not both")
        budget = budget_at_index(run, budget_index)
        log.warning("judge_run(budget_index=%d) is deprecated: the plan's budget %d is judge_run(budget=%d) "
                    "(a budget is named by its SE samples per problem)", budget_index, budget, budget)
        return budget
    if budget is None:
        return None
    plan = read_plan(run)
    try:
        plan.point(budget)
    except BudgetError as exc:
        hint = ""
        if 0 <= budget < len(plan.budgets):
            hint = (f"; a budget is named by its SE samples per problem, no longer by its index into plan.json's "
                    f"budgets: index {budget} is budget {plan.se_budgets[budget]}")
        raise type(exc)(f"{exc.message}{hint}", file=run.plan_path) from None  # UnknownBudgetError stays one
    return budget


# --------------------------------------------------------------------------- human labels

_TRUE = {"true", "1", "yes", "y", "valid", "t"}
_FALSE = {"false", "0", "no", "n", "invalid", "f"}


class LabelError(FlopmatchError, ValueError):
    """A bad human-label file or row: ``file``, ``row`` (a line of the file) and ``field`` say where."""


def _parse_label_rows(path: Path) -> Iterator[tuple[int, Mapping[str, Any]]]:
    suffix = path.suffix.lower()
    if suffix == ".csv":
        with open(path, newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            missing = {"problem_id", "sample_idx", "valid"} - set(reader.fieldnames or [])
            if missing:
                raise LabelError(f"header lacks column(s) {sorted(missing)}", file=path, row=1, unit="line")
            for row in reader:
                yield reader.line_num, row
    elif suffix in (".jsonl", ".ndjson"):
        with open(path, encoding="utf-8") as handle:
            for line_no, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except ValueError as exc:
                    raise LabelError(f"not valid JSON ({exc})", file=path, row=line_no, unit="line") from None
                if not isinstance(row, dict):
                    raise LabelError("expected a JSON object", file=path, row=line_no, unit="line")
                yield line_no, row
    else:
        raise LabelError(f"unknown label format {suffix!r} (use .csv or .jsonl)", file=path)


def _label_value(value: Any, at: dict[str, Any]) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    text = str(value).strip().lower() if value is not None else ""
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise LabelError(f"must be true/false (or 1/0, yes/no), got {value!r}", field="valid", **at)


def import_human_labels(run_dir: str | Path | RunDir, path: str | Path, model: str) -> Path:
    """Import people's verdicts on a model's answer-correct solutions; they become that model's FPR.

    The file is CSV (header ``problem_id,sample_idx,valid``) or JSONL (objects with those keys).
    ``valid`` says the reasoning is sound. Every row must name a sample graded ``correct`` for the
    model; a bad row raises :class:`LabelError` with file, line and field. Labels merge with earlier
    imports; the same sample labelled differently is an error, never a silent overwrite.
    """
    run = as_run(run_dir)
    path = Path(path)
    if not path.is_file():
        raise LabelError("no such file", file=path)
    grades = grades_file(run, model)
    if grades is None:
        raise LabelError(f"model {model!r} has no grades; labels must refer to graded samples",
                         file=run.grades_path(model))
    status = {
        (str(r["problem_id"]), int(r["sample_idx"])): r["status"]
        for r in read_grades(run, model, path=grades).to_pylist()
    }
    out_path = human_labels_path(run, model)
    labels: dict[tuple[str, int], dict[str, Any]] = {}
    for r in read_human_labels(run, model).to_pylist():
        labels[(r["problem_id"], r["sample_idx"])] = r
    seen: set[tuple[str, int]] = set()
    for line_no, row in _parse_label_rows(path):
        at = {"file": path, "row": line_no, "unit": "line"}
        pid = row.get("problem_id")
        if pid is None or str(pid).strip() == "":
            raise LabelError("is missing or empty", field="problem_id", **at)
        pid = str(pid).strip()
        raw_idx = row.get("sample_idx")
        try:
            idx = int(str(raw_idx).strip())
            if str(raw_idx).strip() != str(idx) or idx < 0:
                raise ValueError
        except (TypeError, ValueError):
            raise LabelError(f"must be a non-negative integer, got {raw_idx!r}", field="sample_idx", **at) from None
        if "valid" not in row:
            raise LabelError("is missing", field="valid", **at)
        valid = _label_value(row["valid"], at)
        key = (pid, idx)
        if key in seen:
            raise LabelError(f"sample ({pid!r}, {idx}) is labelled twice in this file", **at)
        seen.add(key)
        if key not in status:
            raise LabelError(f"sample ({pid!r}, {idx}) is not a graded sample of {model!r}", **at)
        if status[key] != "correct":
            raise LabelError(
                f"sample ({pid!r}, {idx}) was graded {status[key]!r}; FPR labels are for answer-correct samples", **at
            )
        if key in labels and labels[key]["valid"] != valid:
            raise LabelError(
                f"sample ({pid!r}, {idx}) was labelled valid={labels[key]['valid']} by {labels[key]['source']}; "
                "refusing to overwrite", **at
            )
        labels[key] = {"model": model, "problem_id": pid, "sample_idx": idx, "valid": valid, "source": str(path)}
    if not seen:
        raise LabelError("no labels", file=path)
    rows = sorted(labels.values(), key=lambda r: (r["problem_id"], r["sample_idx"]))
    return write_table(pa.Table.from_pylist(rows, schema=HUMAN_SCHEMA), out_path)
