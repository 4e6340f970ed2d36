"""`flopmatch analyze RUN`: coverage, diversity and FPR of every model's data, at every budget, with
intervals, breakdowns and the compute-matched WC-vs-SE view; tables (Parquet + markdown) and plots.

Inputs (the run directory contract): ``grades/<model>.parquet`` (status per sample),
``samples/<model>/`` (texts, for uniqueness), ``problems/<split>.parquet`` (level / subject),
``plan.json`` (budgets; optional), ``judgments/<model>.parquet`` and ``judgments/human/<model>.parquet``
(FPR; optional), ``pilot/advice.json`` (an advised study's forecasts, measured here; optional). A model's
data at a budget of S samples per problem is its samples with ``sample_idx < S`` (the sampler makes the low
budget a prefix of the high one).

Outputs in ``metrics/``: ``summary.parquet`` / ``summary.md``, ``coverage_curve.parquet``,
``diversity_curve.parquet``, ``compute_matched.parquet`` / ``compute_matched.md``, ``cost.parquet``,
``pilot_vs_measured.parquet`` (an advised run's pilot forecasts against the samples) and ``figures/*.png``.
The report stage reads these names, and no sample.

Choices, stated once:

* A problem counts at budget S only if all S samples are graded (n = S); others are left out and the
  number left out is a warning, so every k ≤ S is estimated on the same problems.
* In the compute-matched view both models are measured on the problems complete for both.
* coverage/diversity intervals: percentile bootstrap over problems (paired across metrics).
  FPR intervals: Wilson, over the judged solutions (they are a random sample of solutions).
* FPR prefers human labels where a subset has any; the judge's number is reported beside it
  (metrics ``fpr_human`` / ``fpr_judge``; ``fpr`` is the preferred one).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from flopmatch.advice_run import forecast_vs_measured, sample_problem_ids
from flopmatch.analysis_cost import write_cost
from flopmatch.analysis_render import compute_matched_markdown, make_figures, summary_markdown
from flopmatch.errors import FlopmatchError
from flopmatch.grading.core import STATUSES
from flopmatch.metrics import (
    bootstrap_mean_cis,
    format_changes,
    multiplicities,
    near_duplicate_groups,
    normalize_solution,
    pass_at_k,
    problem_groups,
    relative_change,
    wilson_interval,
)
from flopmatch.store import RunDir, as_run, model_key, write_table, write_text
from flopmatch.store.queries import (
    graded_models,
    grades_file,
    join_samples,
    load_problems,
    plan_models,
    read_grades,
    read_human_labels,
    read_judgments,
    read_plan,
    read_roles,
)
from flopmatch.store.schemas import CURVE_COLUMNS, MATCHED_COLUMNS, PILOT_VS_MEASURED_SCHEMA, SUMMARY_COLUMNS


class GradesError(FlopmatchError, ValueError):
    """A row of a model's grades table the analysis cannot use; names the file, the row and the field."""


class NothingToAnalyze(FlopmatchError, FileNotFoundError):
    """The run has no grades yet."""

SAMPLE_METRICS = ("coverage", "diversity", "diversity_near_dup")
MAX_CURVE_POINTS = 48


# --------------------------------------------------------------------------- loading


@dataclass
class _ProblemSamples:
    """One problem's graded samples of one model, sorted by sample_idx."""

    idx: np.ndarray
    correct: np.ndarray
    texts: list[str | None]  # the text of correct samples (None for the others)
    norms: list[str | None]


@dataclass
class ModelSamples:
    model: str
    problems: dict[str, _ProblemSamples]

    def complete(self, s: int) -> set[str]:
        """Problems with all of samples 0..S-1 graded."""
        return {pid for pid, p in self.problems.items() if int(np.count_nonzero(p.idx < s)) == s}

    @property
    def max_samples(self) -> int:
        """The most samples any problem has (the model's full budget when nothing is missing)."""
        return max((len(p.idx) for p in self.problems.values()), default=0)


def load_model_samples(run: RunDir, model: str, grades_path: Path | None = None) -> ModelSamples:
    """A model's grades (:func:`~flopmatch.store.queries.read_grades`), checked row by row (bad rows raise
    naming the grades file), then joined with the texts of its samples
    (:func:`~flopmatch.store.queries.join_samples`: the one read of its sample text). ``grades_path``, when
    given, must be the file the run keeps the model's grades in (what
    :func:`~flopmatch.store.queries.graded_models` lists)."""
    found = grades_file(run, model)
    if grades_path is not None and found is not None and Path(grades_path).resolve() != found.resolve():
        raise ValueError(f"{grades_path}: not the grades file of {model!r} in {run.root} ({found})")
    grades = read_grades(run, model, path=found)  # no grades file (found is None) raises here
    table = grades.to_pylist()
    grades_path = found  # not None: read_grades raised above without a grades file
    rows: dict[str, list[tuple[int, bool]]] = {}
    for i, r in enumerate(table, 1):
        if r["status"] not in STATUSES:
            raise GradesError(f"is {r['status']!r}, not one of {sorted(STATUSES)}", file=grades_path, row=i,
                              field="status")  # fmt: skip
        if r["problem_id"] is None:
            raise GradesError("missing", file=grades_path, row=i, field="problem_id")
        if r["sample_idx"] is None or int(r["sample_idx"]) < 0:
            raise GradesError(f"expected an index >= 0, got {r['sample_idx']!r}", file=grades_path, row=i,
                              field="sample_idx")  # fmt: skip
        rows.setdefault(str(r["problem_id"]), []).append((int(r["sample_idx"]), r["status"] == "correct"))
    # a sample graded twice, or a correct one with no sample row, raises (RunDataError, file and row)
    joined = join_samples(run, model, grades, text=True, grades_path=grades_path)
    texts = {(pid, idx): text or "" for pid, idx, text, status in zip(
        *(joined.column(c).to_pylist() for c in ("problem_id", "sample_idx", "text", "status")), strict=True
    ) if status == "correct"}  # fmt: skip
    problems: dict[str, _ProblemSamples] = {}
    for pid, lst in rows.items():
        lst.sort()
        t = [texts.get((pid, idx)) if ok else None for idx, ok in lst]
        problems[pid] = _ProblemSamples(
            idx=np.array([idx for idx, _ in lst], dtype=np.int64),
            correct=np.array([ok for _, ok in lst], dtype=bool),
            texts=t,
            norms=[normalize_solution(x) if x is not None else None for x in t],
        )
    return ModelSamples(model, problems)


def default_ks(s: int) -> list[int]:
    """1, 2, 4, 8, ... below S, and S itself."""
    ks, k = [], 1
    while k < s:
        ks.append(k)
        k *= 2
    return [*ks, s]


def curve_ks(s: int) -> list[int]:
    """Every k up to S when S is small; otherwise about MAX_CURVE_POINTS points spaced geometrically."""
    if s <= MAX_CURVE_POINTS:
        return list(range(1, s + 1))
    grid = np.unique(np.round(np.geomspace(1, s, MAX_CURVE_POINTS)).astype(int))
    return sorted(set(grid.tolist()) | {s})


# --------------------------------------------------------------------------- per-problem values


def per_problem_matrix(data: ModelSamples, pids: Sequence[str], s: int, ks: Sequence[int]) -> np.ndarray:
    """(problems × metrics) values at budget S: for each k, pass@k, diversity@k, near-dup diversity@k.

    With n = S fixed, pass@k(S, m, k) depends only on m, so each of the at most S + 1 rows over ``ks``
    is computed once; diversity@k = Σ_j pass@k(S, m_j, k) (:func:`expected_unique_at_k`) is then a sum
    of cached rows.
    """
    rows: dict[int, np.ndarray] = {}

    def pass_row(m: int) -> np.ndarray:
        if m not in rows:
            rows[m] = np.array([pass_at_k(s, m, k) for k in ks])
        return rows[m]

    out = np.empty((len(pids), 3 * len(ks)))
    for row, pid in enumerate(pids):
        p = data.problems[pid]
        keep = np.flatnonzero((p.idx < s) & p.correct).tolist()
        exact = multiplicities(p.norms[i] for i in keep)
        near = multiplicities(near_duplicate_groups([p.texts[i] for i in keep])) if len(exact) > 1 else exact
        out[row, 0::3] = pass_row(len(keep))
        out[row, 1::3] = sum((pass_row(m) for m in exact), np.zeros(len(ks)))
        out[row, 2::3] = sum((pass_row(m) for m in near), np.zeros(len(ks)))
    return out


# --------------------------------------------------------------------------- FPR


@dataclass
class _Verdicts:
    """(problem_id, sample_idx) → reasoning valid?, from the judge and from people."""

    judge: dict[tuple[str, int], bool] = field(default_factory=dict)
    human: dict[tuple[str, int], bool] = field(default_factory=dict)
    judge_name: str | None = None


def load_verdicts(run: RunDir, model: str, judge: str | None, warnings: list[str]) -> _Verdicts:
    out = _Verdicts()
    table = read_judgments(run, model)
    if table.num_rows:
        rows = table.select(["problem_id", "sample_idx", "status", "judge"]).to_pylist()
        names: dict[str, int] = {}
        for r in rows:
            names[r["judge"]] = names.get(r["judge"], 0) + 1
        if judge is None:
            judge = max(sorted(names), key=lambda n: names[n])
            if len(names) > 1:
                warnings.append(f"{model}: judgments from several judges {sorted(names)}; using {judge!r} (most rows)")
        out.judge_name = judge
        for r in rows:
            if r["judge"] == judge and r["status"] in ("valid", "invalid"):
                out.judge[(str(r["problem_id"]), int(r["sample_idx"]))] = r["status"] == "valid"
    for r in read_human_labels(run, model).to_pylist():
        out.human[(str(r["problem_id"]), int(r["sample_idx"]))] = bool(r["valid"])
    return out


def _fpr_rows(verdicts: dict[tuple[str, int], bool], pids: set[str], s: int) -> tuple[float, float, float, int, int]:
    chosen = [valid for (pid, idx), valid in verdicts.items() if pid in pids and idx < s]
    n = len(chosen)
    if n == 0:
        return math.nan, math.nan, math.nan, 0, 0
    wrong = n - sum(chosen)
    lo, hi = wilson_interval(wrong, n)
    n_problems = len({pid for (pid, idx) in verdicts if pid in pids and idx < s})
    return wrong / n, lo, hi, n, n_problems


# --------------------------------------------------------------------------- the analysis


@dataclass
class AnalysisResult:
    summary: pd.DataFrame
    coverage_curve: pd.DataFrame
    diversity_curve: pd.DataFrame
    compute_matched: pd.DataFrame
    files: dict[str, Path]
    figures: list[Path]
    warnings: list[str]
    headline: list[str]  # one paper-style line per budget: "+11% coverage, +86% diversity, +7 pts FPR"


@dataclass(frozen=True)
class _Setting:
    """One (model, budget) cell of the analysis."""

    model: str
    role: str | None
    budget_se_samples: int | None
    samples: int
    pids: tuple[str, ...]


def analyze(
    run_dir: str | Path | RunDir,
    *,
    ks: Sequence[int] | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    judge: str | None = None,
    plots: bool = True,
) -> AnalysisResult:
    """Compute every metric of every model (and budget, when the run has a plan) and write them.

    ``ks`` limits the k values of the summary (each budget also gets k = S); ``judge`` picks the judge
    whose verdicts give the FPR when several judged the run.
    """
    run = as_run(run_dir)
    warnings: list[str] = []
    graded = graded_models(run)
    if not graded:
        raise NothingToAnalyze("no grades to analyze (run `flopmatch grade` first)", file=run.grades_dir)
    data = {model: load_model_samples(run, model, path) for model, path in graded.items()}
    problems = load_problems(run)
    verdicts = {model: load_verdicts(run, model, judge, warnings) for model in data}
    plan = read_plan(run, required=False)
    settings = _settings(data, plan, warnings)

    summary, cells = _summary(settings, data, problems, verdicts, ks=ks, n_boot=n_boot, seed=seed)
    if any(not (v.judge or v.human) for v in verdicts.values()):
        unjudged = sorted(m for m, v in verdicts.items() if not (v.judge or v.human))
        warnings.append(f"no FPR for {unjudged}: no judgments (run `flopmatch judge`) or human labels")
    coverage_curve, diversity_curve = _curves(settings, data, n_boot=n_boot, seed=seed)
    compute_matched, headline = _compute_matched(plan, cells)

    tables = {"summary": summary, "coverage_curve": coverage_curve, "diversity_curve": diversity_curve,
              "compute_matched": compute_matched}  # fmt: skip
    files = {name: write_table(table, run.metrics_path(name)) for name, table in tables.items()}
    files["summary_md"] = write_text(summary_markdown(summary, warnings), run.metrics_path("summary", ".md"))
    files["compute_matched_md"] = write_text(compute_matched_markdown(compute_matched, headline),
                                             run.metrics_path("compute_matched", ".md"))
    files.update(write_cost(run, plan))  # what each budget cost, for the report
    files.update(write_pilot_vs_measured(run, data, graded))  # an advised run's forecasts against the samples
    # Unequal counts (an allocation policy): coverage and unique correct over all samples, per FLOP.
    from flopmatch.allocation_metrics import journal_of, write_allocation_metrics

    files.update(write_allocation_metrics(run, data, n_boot=n_boot, seed=seed, plots=plots))
    warnings += [f"{m} was sampled by the {j['config']['allocation']!r} policy: per-budget k metrics use only its "
                 "problems with at least S samples; see metrics/allocation.md" for m in data
                 if (j := journal_of(run, m)) and j["config"]["allocation"] != "uniform"]  # fmt: skip
    figures = make_figures(coverage_curve, diversity_curve, summary, run.figures_dir) if plots else []
    return AnalysisResult(summary, coverage_curve, diversity_curve, compute_matched, files, figures, warnings, headline)


def solution_counts(data: ModelSamples, problem_ids: Sequence[str]) -> pd.DataFrame:
    """Per problem (in the given order): ``n`` graded samples, ``c`` correct and the ``multiplicities`` of
    its distinct correct solutions (normalised texts); n = 0 for a problem with no graded sample. What
    :func:`flopmatch.pilot.graded_solutions` reads from the run, from samples already loaded."""
    rows = []
    for pid in dict.fromkeys(problem_ids):
        p = data.problems.get(pid)
        norms = [] if p is None else [p.norms[i] for i in np.flatnonzero(p.correct)]
        rows.append({"problem_id": pid, "n": 0 if p is None else len(p.idx), "c": len(norms),
                     "multiplicities": multiplicities(norms)})  # fmt: skip
    return pd.DataFrame(rows, columns=["problem_id", "n", "c", "multiplicities"])


def write_pilot_vs_measured(
    run: RunDir, data: dict[str, ModelSamples], graded: dict[str, Path]
) -> dict[str, Path]:
    """An advised run (``pilot/advice.json``): each forecast against what WC's and SE's samples measured
    (:func:`flopmatch.advice_run.forecast_vs_measured`, from ``data``, the samples this analysis loaded), as
    ``metrics/pilot_vs_measured.parquet``; an empty table when a role has no grades; a stale table goes when
    the run has no advice. ``graded``: model → grades file, as :func:`graded_models` lists them."""
    path = run.metrics_path("pilot_vs_measured")
    if not run.advice_path.exists():
        path.unlink(missing_ok=True)
        return {}
    roles, by_file = read_roles(run), {found.resolve(): model for model, found in graded.items()}
    ids = sample_problem_ids(run)
    solutions = {}
    for role in ("wc", "se"):
        found = grades_file(run, roles[role]["model"]) if role in roles else None
        if found is not None and found.resolve() in by_file:
            solutions[role] = solution_counts(data[by_file[found.resolve()]], ids)
    frame = forecast_vs_measured(run, solutions=solutions) if len(solutions) == 2 else None
    table = PILOT_VS_MEASURED_SCHEMA.empty_table() if frame is None or frame.empty else pa.Table.from_pandas(
        frame, schema=PILOT_VS_MEASURED_SCHEMA, preserve_index=False)  # fmt: skip
    return {"pilot_vs_measured": write_table(table, path)}


Cells = dict[tuple[str, str | None, int | None], dict[str, tuple[float, float, float, int]]]


def _settings(data: dict[str, ModelSamples], plan: Any, warnings: list[str]) -> list[_Setting]:
    """The (model, budget) cells to measure: each plan budget's WC and SE on the problems both have
    complete, then every other model at all its samples."""
    settings: list[_Setting] = []
    in_plan: set[str | None] = set()
    if plan is not None:
        wc_name, se_name = plan_models(plan)
        by_key = {model_key(m): m for m in data}
        wc, se = by_key.get(model_key(wc_name)), by_key.get(model_key(se_name))
        for missing_name, found in ((wc_name, wc), (se_name, se)):
            if found is None:
                warnings.append(f"plan model {missing_name!r} has no grades; its side of the plan is skipped")
        for b in plan.budgets:
            sides = [(m, role, int(n)) for m, role, n in ((wc, "wc", b.wc_samples), (se, "se", b.se_samples)) if m]
            complete = [data[m].complete(n) for m, _, n in sides]
            common = set.intersection(*complete) if complete else set()
            for (m, role, n), mine in zip(sides, complete, strict=True):
                if len(mine) > len(common):
                    warnings.append(f"budget {b.se_samples}: {m} ({role}) has {len(mine) - len(common)} complete "
                                    "problems the other model lacks; they are left out of both")
                incomplete = len(data[m].problems) - len(mine)
                if incomplete:
                    warnings.append(f"budget {b.se_samples}: {m} ({role}) has {incomplete} problems with fewer than "
                                    f"{n} graded samples; left out")
                if common:
                    settings.append(_Setting(m, role, int(b.se_samples), n, tuple(sorted(common))))
                else:
                    warnings.append(f"budget {b.se_samples}: no problem has all {n} samples of {m}; skipped")
        in_plan = {wc, se}
    for model, d in data.items():
        if model in in_plan:
            continue
        s = d.max_samples
        pids = d.complete(s)
        if len(pids) < len(d.problems):
            warnings.append(f"{model}: {len(d.problems) - len(pids)} problems have fewer than {s} graded samples; "
                            "left out")
        settings.append(_Setting(model, None, None, s, tuple(sorted(pids))))
    return settings


def _summary(settings: list[_Setting], data: dict[str, ModelSamples], problems: dict, verdicts: dict, *,
             ks: Sequence[int] | None, n_boot: int, seed: int) -> tuple[pd.DataFrame, Cells]:
    """Every metric of every setting, per problem group, with bootstrap intervals; and the whole-set
    values at k = S of each setting (``cells``), which the compute-matched comparison reads."""
    summary_rows: list[dict[str, Any]] = []
    cells: Cells = {}
    for st in settings:
        groups = problem_groups(
            (pid, problems[pid].level if pid in problems else None, problems[pid].subject if pid in problems else None)
            for pid in st.pids
        )
        k_list = sorted({k for k in (ks or default_ks(st.samples)) if 1 <= k <= st.samples} | {st.samples})
        matrix = per_problem_matrix(data[st.model], st.pids, st.samples, k_list)
        row_of = {pid: i for i, pid in enumerate(st.pids)}
        cell = cells.setdefault((st.model, st.role, st.budget_se_samples), {})
        for group, gpids in groups.items():
            rows = [row_of[p] for p in gpids]
            sub = matrix[rows]
            means = sub.mean(axis=0)
            lo, hi = bootstrap_mean_cis(sub, n_boot=n_boot, seed=seed)
            for j, k in enumerate(k_list):
                for m, metric in enumerate(SAMPLE_METRICS):
                    col = 3 * j + m
                    summary_rows.append(_row(st, metric, k, means[col], lo[col], hi[col], len(rows), len(rows), group))
                    if group == "all" and k == st.samples:
                        cell[metric] = (float(means[col]), float(lo[col]), float(hi[col]), len(rows))
            v = verdicts[st.model]
            fprs = {"fpr_judge": _fpr_rows(v.judge, set(gpids), st.samples),
                    "fpr_human": _fpr_rows(v.human, set(gpids), st.samples)}
            preferred = "fpr_human" if fprs["fpr_human"][3] else "fpr_judge"
            fprs["fpr"] = fprs[preferred]
            for metric, (value, flo, fhi, n, n_problems) in fprs.items():
                if n:
                    summary_rows.append(_row(st, metric, None, value, flo, fhi, n_problems, n, group))
                    if group == "all":
                        cell[metric] = (value, flo, fhi, n)
    summary = pd.DataFrame(summary_rows, columns=SUMMARY_COLUMNS)
    for col in ("budget_se_samples", "k"):
        summary[col] = summary[col].astype("Int64")
    return summary, cells


def _curves(settings: list[_Setting], data: dict[str, ModelSamples], *, n_boot: int,
            seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Coverage and diversity against k, each model at its largest setting."""
    biggest: dict[str, _Setting] = {}
    for st in settings:
        if st.model not in biggest or st.samples > biggest[st.model].samples:
            biggest[st.model] = st
    cov_rows, div_rows = [], []
    for model, st in biggest.items():
        k_list = curve_ks(st.samples)
        matrix = per_problem_matrix(data[model], st.pids, st.samples, k_list)
        means = matrix.mean(axis=0)
        lo, hi = bootstrap_mean_cis(matrix, n_boot=n_boot, seed=seed)
        for j, k in enumerate(k_list):
            cov_rows.append({"model": model, "k": k, "value": means[3 * j], "ci_low": lo[3 * j],
                             "ci_high": hi[3 * j], "n_problems": len(st.pids)})
            for m, metric in ((1, "diversity"), (2, "diversity_near_dup")):
                div_rows.append({"model": model, "metric": metric, "k": k, "value": means[3 * j + m],
                                 "ci_low": lo[3 * j + m], "ci_high": hi[3 * j + m], "n_problems": len(st.pids)})
    coverage_curve = pd.DataFrame(cov_rows, columns=CURVE_COLUMNS)
    diversity_curve = pd.DataFrame(div_rows, columns=["model", "metric", "k", "value", "ci_low", "ci_high", "n_problems"])
    return coverage_curve, diversity_curve


def _compute_matched(plan: Any, cells: Cells) -> tuple[pd.DataFrame, list[str]]:
    """WC against SE at each plan budget: the relative change of every metric, and one headline line each."""
    matched_rows, headline = [], []
    for b in plan.budgets if plan is not None else ():
        wc_cell = _find_cell(cells, "wc", int(b.se_samples))
        se_cell = _find_cell(cells, "se", int(b.se_samples))
        if not wc_cell or not se_cell:
            continue
        changes = []
        for metric in (*SAMPLE_METRICS, "fpr"):
            if metric not in wc_cell or metric not in se_cell:
                continue
            w, s = wc_cell[metric], se_cell[metric]
            change = relative_change(w[0], s[0], metric)
            changes.append(change)
            matched_rows.append({
                "budget_se_samples": int(b.se_samples), "wc_samples": int(b.wc_samples), "metric": metric,
                "wc_value": w[0], "se_value": s[0], "relative": change.value, "relative_text": change.text,
                "wc_ci_low": w[1], "wc_ci_high": w[2], "se_ci_low": s[1], "se_ci_high": s[2],
                "n_problems": w[3] if metric != "fpr" else None,
            })
        headline.append(f"{b.se_samples} SE vs {b.wc_samples} WC samples per problem: {format_changes(changes)}")
    compute_matched = pd.DataFrame(matched_rows, columns=MATCHED_COLUMNS)
    compute_matched["n_problems"] = compute_matched["n_problems"].astype("Int64")
    return compute_matched, headline


def _row(st: _Setting, metric: str, k: int | None, value: float, lo: float, hi: float, n_problems: int, n: int,
         group: str) -> dict[str, Any]:
    return {
        "model": st.model, "role": st.role, "budget_se_samples": st.budget_se_samples,
        "samples_per_problem": st.samples, "metric": metric, "k": k, "value": float(value),
        "ci_low": float(lo), "ci_high": float(hi), "n_problems": n_problems, "n": n, "group": group,
    }


def _find_cell(cells: dict, role: str, budget: int) -> dict[str, tuple[float, float, float, int]] | None:
    for (_model, r, b), cell in cells.items():
        if r == role and b == budget:
            return cell
    return None


__all__ = [
    "AnalysisResult",
    "ModelSamples",
    "analyze",
    "compute_matched_markdown",
    "curve_ks",
    "default_ks",
    "load_model_samples",
    "make_figures",
    "per_problem_matrix",
    "summary_markdown",
]
