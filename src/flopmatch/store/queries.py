"""Typed readers of a run directory: what the stages after sampling ask of a run, answered one way.

* problems: :func:`problem_splits` (which splits the run has), :func:`problem_counts` (how many problems
  each has, reading none), :func:`load_problems` (every split), :func:`problems_by_role` (one split);
* the plan: :func:`read_plan` (the typed :class:`~flopmatch.budget.BudgetPlan`), :func:`plan_models`,
  and a model's samples per problem at a budget — :func:`samples_at_budget`, the budget named by its SE
  samples per problem (what ``budget`` means everywhere; :func:`budget_samples`, by the plan's budget
  *index*, is deprecated);
* roles: :func:`read_roles` (``roles.json``: which model is WC and SE, its key, label and size);
* grades and samples: :func:`graded_models`, :func:`read_grades` (optionally below a budget's sample
  count), :func:`read_graded` (graded samples: the grades joined with the sample columns asked for, text
  only when asked — what analysis, SFT and the pilot read), :func:`sample_texts` (the texts of given
  samples), :func:`read_samples` (the sample table, text only when asked), :func:`sample_costs` (token
  counts and seconds, no text) and :func:`sample_tokens` (completion tokens per sample);
* verdicts: :func:`read_judgments`, :func:`read_human_labels`;
* the analysis's cost table: :func:`read_cost`.

A model's data at a budget of S samples per problem is its samples with ``sample_idx < S`` (the sampler
makes the low budget a prefix of the high one): :func:`below_budget` applies it to any run table.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from flopmatch.budget import BudgetError, BudgetPlan
from flopmatch.errors import FlopmatchError
from flopmatch.record import Problem, problems_from_table
from flopmatch.store.io import cast_to_schema, model_key, read_json, read_shards, read_table, shard_paths
from flopmatch.store.layout import RunDir, as_run
from flopmatch.store.schemas import COST_SCHEMA, HUMAN_SCHEMA, JUDGMENT_SCHEMA, SAMPLE_SCHEMA

log = logging.getLogger(__name__)


class RunDataError(FlopmatchError, ValueError):
    """A run's files disagree with each other: a sample graded twice, a correct grade without its sample,
    a sample without a grade where every sample must have one."""


#: The columns of a sample table that say what it cost (no text).
COST_COLUMNS = ("problem_id", "sample_idx", "completion_tokens", "prompt_tokens", "seconds")


# --------------------------------------------------------------------------- problems


def problem_splits(run: RunDir) -> list[str]:
    """The splits (roles) the run has problems for: the ``problems/<split>.parquet`` files, by name."""
    return sorted(path.stem for path in run.problems_dir.glob("*.parquet"))


def problem_counts(run: RunDir) -> dict[str, int]:
    """Split → number of problems, for every split of :func:`problem_splits` (from the files' Parquet
    metadata: no problem is read)."""
    return {split: pq.read_metadata(run.problems_path(split)).num_rows for split in problem_splits(run)}


def load_problems(run: RunDir) -> dict[str, Problem]:
    """Every problem of the run, from all ``problems/<split>.parquet`` files."""
    out: dict[str, Problem] = {}
    for split in problem_splits(run):
        for problem in problems_by_role(run, split):
            out[problem.problem_id] = problem
    return out


def problems_by_role(run: RunDir, role: str) -> list[Problem]:
    """The problems of one role (``sample``, ``validation``, ``test``); empty when the run has none."""
    path = run.problems_path(role)
    return problems_from_table(read_table(path)) if path.exists() else []


# --------------------------------------------------------------------------- plan and roles


def read_plan(run: RunDir, *, required: bool = True, path: Path | None = None) -> BudgetPlan | None:
    """The run's budget plan (``plan.json``, or the plan file ``path``); None when there is none and
    ``required`` is false."""
    from pydantic import ValidationError

    path = path or run.plan_path
    if not path.exists():
        if required:
            raise FileNotFoundError(
                f"{path}: no plan in this run (run `flopmatch plan` or the study's plan stage)"
            )
        return None
    try:
        return BudgetPlan.from_json(path.read_text(encoding="utf-8"))
    except ValidationError as exc:
        raise ValueError(f"{path}: not a valid budget plan: {exc}") from exc


def plan_models(plan: Any) -> tuple[str, str]:
    """(WC model, SE model) of a budget plan."""
    wc, se = getattr(plan, "wc", None), getattr(plan, "se", None)
    if wc is None or se is None:
        raise ValueError("the budget plan names no WC/SE models")
    return model_name(wc), model_name(se)


def model_name(obj: Any) -> str:
    """The model name of a plan side (or of a plain string)."""
    if isinstance(obj, str):
        return obj
    for attr in ("name", "model", "id"):
        value = getattr(obj, attr, None)
        if isinstance(value, str):
            return value
    raise ValueError(f"cannot read a model name from {obj!r}")


def side_samples(plan: BudgetPlan, model: str, point: Any) -> int:
    """``model``'s samples per problem at the plan's budget ``point`` (its WC or SE side)."""
    wc, se = plan_models(plan)
    if model_key(model) == model_key(wc):
        return int(point.wc_samples)
    if model_key(model) == model_key(se):
        return int(point.se_samples)
    raise ValueError(f"model {model!r} is neither the plan's WC ({wc!r}) nor its SE ({se!r})")


def budget_at_index(run: RunDir, index: int) -> int:
    """The SE samples per problem (the budget's name) of the plan's ``index``-th budget: what an old
    budget *index* becomes (only for deprecated callers that still pass one)."""
    plan = read_plan(run)
    if not 0 <= index < len(plan.budgets):
        raise ValueError(
            f"budget index {index} out of range: the plan has {len(plan.budgets)} budgets "
            f"(se_samples {', '.join(str(s) for s in plan.se_budgets)})"
        )
    return int(plan.budgets[index].se_samples)


def budget_samples(run: RunDir, model: str, budget: int) -> int:
    """Deprecated: samples per problem of ``model`` at the plan's budget *index* ``budget``. A budget is
    named by its SE samples per problem everywhere else; use :func:`samples_at_budget`."""
    se_samples = budget_at_index(run, budget)
    log.warning(
        "budget_samples(run, model, %d) takes a plan budget index and is deprecated: use "
        "samples_at_budget(run, model, %d) (the budget named by its SE samples per problem)", budget, se_samples
    )
    return samples_at_budget(run, model, se_samples)


def samples_at_budget(run: RunDir, model: str, se_samples: int) -> int:
    """Samples per problem of ``model`` at the plan's budget of ``se_samples`` SE samples per problem."""
    plan = read_plan(run)
    try:
        return side_samples(plan, model, plan.point(se_samples))
    except ValueError as exc:
        raise BudgetError(f"{run.plan_path}: {exc}") from None


def read_roles(run: RunDir) -> dict[str, Any]:
    """``roles.json`` (role → model, key, label, params); empty when the run has none."""
    return read_json(run.roles_path) if run.roles_path.exists() else {}


# --------------------------------------------------------------------------- grades and samples


def graded_models(run: RunDir) -> dict[str, Path]:
    """Model name (from the ``model`` column) → grades file, for every ``grades/*.parquet``."""
    out: dict[str, Path] = {}
    for path in sorted(run.grades_dir.glob("*.parquet")):
        names = read_table(path, columns=["model"]).column("model").unique().to_pylist()
        if len(names) != 1:
            raise ValueError(f"{path}: expected one model in column 'model', found {names}")
        out[str(names[0])] = path
    return out


def grades_file(run: RunDir, model: str) -> Path | None:
    """The grades file of ``model``: ``grades/<model_key>.parquet``, else the file whose ``model`` column
    names it (a model given by a path that has since moved keys differently); None when it has none."""
    path = run.grades_path(model)
    if path.exists():
        return path
    return graded_models(run).get(model) if run.grades_dir.is_dir() else None


def read_grades(
    run: RunDir,
    model: str,
    *,
    samples: int | None = None,
    columns: tuple[str, ...] | None = ("problem_id", "sample_idx", "status"),
    path: Path | None = None,
) -> pa.Table:
    """A model's grades (``columns``; every column when None), only samples ``sample_idx < samples``
    (the budget's prefix, see the module docstring) when given. ``path``: the model's grades file when the
    caller already looked it up (:func:`grades_file`); else looked up here."""
    path = path or grades_file(run, model)
    if path is None:
        raise FileNotFoundError(
            f"{run.grades_path(model)}: no grades for model {model!r}; run `flopmatch grade` first"
        )
    return below_budget(read_table(path, columns=None if columns is None else list(columns)), samples)


def below_budget(table: pa.Table, samples: int | None) -> pa.Table:
    """The rows of ``table`` (samples, grades or verdicts: it has ``sample_idx``) within a budget of
    ``samples`` samples per problem, i.e. ``sample_idx < samples`` (see the module docstring); every row
    when ``samples`` is None."""
    if samples is None or not table.num_rows:
        return table
    return table.filter(pc.less(table.column("sample_idx"), samples))


def read_graded(
    run: RunDir,
    model: str,
    *,
    samples: int | None = None,
    text: bool = False,
    columns: tuple[str, ...] = (),
    path: Path | None = None,
    every_sample_graded: bool = False,
) -> pa.Table:
    """A model's graded samples: its grades (``problem_id``, ``sample_idx``, ``status``, in the grades file's
    order; :func:`read_grades`) with the sample columns asked for (``columns``, and ``text`` only when
    ``text``), only those within a budget of ``samples`` per problem when given (:func:`below_budget`).
    The sample shards are read once (not at all when no sample column is asked for); see
    :func:`join_samples` for what a missing sample or grade does."""
    path = path if path is not None else grades_file(run, model)  # looked up once (None: read_grades raises)
    grades = read_grades(run, model, samples=samples, path=path)
    return join_samples(run, model, grades, samples=samples, text=text, columns=columns,
                        every_sample_graded=every_sample_graded, grades_path=path)  # fmt: skip


def join_samples(
    run: RunDir,
    model: str,
    grades: pa.Table,
    *,
    samples: int | None = None,
    text: bool = False,
    columns: tuple[str, ...] = (),
    every_sample_graded: bool = False,
    grades_path: Path | None = None,
) -> pa.Table:
    """``grades`` (a table of :func:`read_grades`, rows and order kept) with the sample columns asked for
    joined on (problem_id, sample_idx), for a caller that checks the grades before the samples are read.

    A sample stored twice counts once (its first row). A graded sample with no sample row has nulls there,
    except a ``correct`` one, which raises (its text is what the stages read). ``every_sample_graded``: a
    sample (within ``samples`` per problem) with no grade raises too, naming ``grades_path``."""
    wanted = [c for c in (*columns, *(("text",) if text else ())) if c not in ("problem_id", "sample_idx")]
    if not wanted and not every_sample_graded:
        return grades
    keys = _sample_keys(grades)
    where = grades_path or grades_file(run, model)
    seen: set[tuple[str, int]] = set()
    for number, key in enumerate(keys, 1):
        if key in seen:
            raise RunDataError(f"sample {key} is graded twice", file=where, row=number)
        seen.add(key)
    directory = run.samples_dir(model)
    shards = read_samples(run, model, ("problem_id", "sample_idx", *wanted), samples=samples)
    first: dict[tuple[str, int], int] = {}
    for i, key in enumerate(_sample_keys(shards)):
        first.setdefault(key, i)
    rows = [first.get(key) for key in keys]
    statuses = grades.column("status").to_pylist()
    missing = [k for k, row, st in zip(keys, rows, statuses, strict=True) if row is None and st == "correct"]
    if missing:
        raise RunDataError(f"{len(missing)} correct graded samples have no sample row (no text), e.g. {missing[:5]}",
                           file=directory)  # fmt: skip
    if every_sample_graded:
        ungraded = next((key for key in first if key not in seen), None)
        if ungraded is not None:
            raise RunDataError(f"no grade for sample problem_id={ungraded[0]!r} sample_idx={ungraded[1]} "
                               f"(in {directory}); re-run `flopmatch grade`", file=where)  # fmt: skip
    taken = shards.select(wanted).take(pa.array(rows, type=pa.int64()))
    for name in wanted:
        grades = grades.append_column(taken.schema.field(name), taken.column(name))
    return grades


def sample_texts(run: RunDir, model: str, keys: set[tuple[str, int]]) -> dict[tuple[str, int], str | None]:
    """The text of each sample in ``keys`` ((problem_id, sample_idx)) as stored (None for a null text); a
    key with no sample row raises."""
    if not keys:
        return {}
    table = read_samples(run, model, ("problem_id", "sample_idx", "text"))
    out: dict[tuple[str, int], str] = {}
    for key, text in zip(_sample_keys(table), table.column("text").to_pylist(), strict=True):
        if key in keys and key not in out:  # a sample stored twice counts once (its first row)
            out[key] = text
    missing = sorted(keys - set(out))
    if missing:
        raise RunDataError(f"{len(missing)} graded samples have no text, e.g. {missing[:5]}",
                           file=run.samples_dir(model))  # fmt: skip
    return out


def _sample_keys(table: pa.Table) -> list[tuple[str, int]]:
    """(problem_id, sample_idx) of each row."""
    pids, idxs = (table.column(c).to_pylist() for c in ("problem_id", "sample_idx"))
    return list(zip(pids, idxs, strict=True))


def read_samples(
    run: RunDir, model: str, columns: tuple[str, ...] | None, *, samples: int | None = None
) -> pa.Table:
    """A model's sample table (only ``columns``, all when None; ask for ``text`` only where it is needed),
    only samples ``sample_idx < samples`` when given. ``sample_idx`` is int64 whatever the shards store."""
    wanted = list(columns) if columns is not None else None
    return below_budget(read_shards(run.samples_dir(model), columns=wanted, schema=SAMPLE_SCHEMA), samples)


def sample_costs(run: RunDir, model: str) -> pa.Table:
    """A model's samples' token counts and seconds (those of :data:`COST_COLUMNS` each shard has; no
    text); an empty table when the model has no samples."""
    tables = []
    for path in shard_paths(run.samples_dir(model)):
        present = set(pq.read_schema(path).names)
        table = pq.read_table(path, columns=[c for c in COST_COLUMNS if c in present])
        tables.append(cast_to_schema(table, SAMPLE_SCHEMA))
    return pa.concat_tables(tables, promote_options="permissive") if tables else pa.table({})


def sample_tokens(run: RunDir, model: str) -> dict[tuple[str, int], int]:
    """Completion tokens of each sample ((problem_id, sample_idx) → tokens; a null count is 0); empty
    when the samples do not record them (their FLOPs are then unknown). Reads no text."""
    costs = sample_costs(run, model)
    if "completion_tokens" not in costs.column_names:
        return {}
    cols = [costs.column(c).to_pylist() for c in ("problem_id", "sample_idx", "completion_tokens")]
    return {(str(p), int(i)): int(t or 0) for p, i, t in zip(*cols, strict=True)}


# --------------------------------------------------------------------------- verdicts


def read_judgments(run: RunDir, model: str, judge_name: str | None = None) -> pa.Table:
    """A model's judgments (optionally of one judge); an empty table when none."""
    path = run.judgments_path(model)
    if not path.exists():
        return JUDGMENT_SCHEMA.empty_table()
    table = read_table(path)
    if judge_name is not None:
        table = table.filter(pc.equal(table.column("judge"), judge_name))
    return table


def read_human_labels(run: RunDir, model: str) -> pa.Table:
    """People's verdicts on a model's answer-correct samples; an empty table when none."""
    path = run.human_labels_path(model)
    return read_table(path) if path.exists() else HUMAN_SCHEMA.empty_table()


# --------------------------------------------------------------------------- the analysis's tables


def read_cost(run: RunDir) -> pa.Table | None:
    """``metrics/cost.parquet`` (see :data:`~flopmatch.store.schemas.COST_SCHEMA`); None before the analysis
    wrote it."""
    return read_metrics(run, "cost")


# --------------------------------------------------------------------------- metrics tables and indexes


def read_metrics(run: RunDir, name: str) -> pa.Table | None:
    """``metrics/<name>.parquet`` (``name`` one of :data:`~flopmatch.store.layout.METRICS_TABLES`); None
    before the stage that writes it ran."""
    path = run.metrics_path(name)
    return read_table(path) if path.exists() else None


def read_study_text(run: RunDir) -> str | None:
    """The run's frozen ``study.yaml`` as written; None for a run made without a study."""
    return run.study_path.read_text() if run.study_path.exists() else None


def read_study_mapping(run: RunDir) -> dict[str, Any] | None:
    """The run's ``study.yaml`` as a plain mapping (what the report shows); None without one."""
    import yaml

    text = read_study_text(run)
    return yaml.safe_load(text) if text is not None else None


def read_allocated_index(run: RunDir) -> dict[str, Any] | None:
    """``allocated/summary.json`` (the allocation policy and the sets the sample stage drew); None when the
    study allocates nothing."""
    path = run.allocated_index_path
    return read_json(path) if path.exists() else None


__all__ = [
    "COST_COLUMNS",
    "COST_SCHEMA",
    "as_run",
    "below_budget",
    "budget_at_index",
    "budget_samples",
    "graded_models",
    "grades_file",
    "join_samples",
    "load_problems",
    "model_name",
    "plan_models",
    "problem_counts",
    "problem_splits",
    "problems_by_role",
    "RunDataError",
    "read_allocated_index",
    "read_cost",
    "read_graded",
    "read_grades",
    "read_human_labels",
    "read_judgments",
    "read_metrics",
    "read_plan",
    "read_roles",
    "read_samples",
    "read_study_mapping",
    "read_study_text",
    "sample_costs",
    "sample_texts",
    "sample_tokens",
    "samples_at_budget",
    "side_samples",
]
