"""The I/O edge of :mod:`flopmatch.forecast`: pilot counts from a graded run, and counts files.

* :func:`forecast_run` fits each model of a run from its first ``pilot_samples`` samples per problem
  (``sample_idx < n``; the sampler's seeded prefix property makes that an honest pilot) and, when the
  run holds more samples, puts the measured unbiased coverage@k / diversity@k beside each forecast.
* :func:`read_counts` reads ``problem_id, n, c`` (+ optional ``model``, ``unique_correct``, ``tokens``)
  from CSV or Parquet; a bad row fails naming the file, the line (CSV; the header is line 1) or row
  (Parquet) and the field.

Uniqueness is exact uniqueness after :func:`flopmatch.metrics.normalize_solution`, as in ``analyze``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from flopmatch.analysis import ModelSamples, load_model_samples
from flopmatch.forecast import DEFAULT_KS, ModelForecast, forecast_counts, forecast_pilot
from flopmatch.metrics import expected_unique_at_k, multiplicities, pass_at_k
from flopmatch.store import RunDir, as_run, model_key

COUNT_FIELDS = ("problem_id", "n", "c")
OPTIONAL_FIELDS = ("model", "unique_correct", "tokens")


# --------------------------------------------------------------------------- runs


def problem_counts(data: ModelSamples, samples: int, problem_ids: Sequence[str]) -> pd.DataFrame:
    """Per problem, from samples ``sample_idx < samples``: n, correct c, distinct correct solutions."""
    rows = []
    for pid in problem_ids:
        p = data.problems[pid]
        keep = np.flatnonzero((p.idx < samples) & p.correct).tolist()
        rows.append({"problem_id": pid, "n": samples, "c": len(keep),
                     "unique_correct": len(multiplicities(p.norms[i] for i in keep))})
    return pd.DataFrame(rows, columns=["problem_id", "n", "c", "unique_correct"])


def measured_at(data: ModelSamples, samples: int, problem_ids: Sequence[str], k: int) -> tuple[float, float]:
    """Unbiased coverage@k and diversity@k (mean over problems) from the first ``samples`` samples."""
    cov, div = [], []
    for pid in problem_ids:
        p = data.problems[pid]
        keep = np.flatnonzero((p.idx < samples) & p.correct).tolist()
        cov.append(pass_at_k(samples, len(keep), k))
        div.append(expected_unique_at_k(samples, multiplicities(p.norms[i] for i in keep), k))
    return math.fsum(cov) / len(cov), math.fsum(div) / len(div)


def pick_problems(complete: set[str], pilot_problems: int | None, seed: int) -> list[str]:
    """All complete problems (sorted), or a seeded random subset of ``pilot_problems`` of them."""
    ordered = sorted(complete)
    if pilot_problems is None or pilot_problems >= len(ordered):
        return ordered
    chosen = np.random.default_rng(seed).choice(len(ordered), size=pilot_problems, replace=False)
    return [ordered[i] for i in sorted(chosen)]


def select_models(graded: dict[str, Path], model: str | None) -> dict[str, Path]:
    if model is None:
        return graded
    found = {m: p for m, p in graded.items() if m == model or model_key(m) == model_key(model)}
    if not found:
        raise ValueError(f"model {model!r} has no grades in this run; graded: {sorted(graded)}")
    return found


def forecast_run(run_dir: str | Path | RunDir, model: str | None = None, pilot_samples: int = 8,
                 ks: Sequence[int] = DEFAULT_KS, *, pilot_problems: int | None = None, n_boot: int = 200,
                 seed: int = 0, family: str = "auto", target: str = "population",
                 intervals: str = "families") -> list[ModelForecast]:
    """Forecast each graded model (or ``model``) from a pilot of its first ``pilot_samples`` samples.

    The pilot is every problem with samples 0..n-1 graded, or a seeded subset of ``pilot_problems`` of
    them. When the model has S > n samples per problem, each k <= S also gets the measured unbiased
    coverage@k and diversity@k over all problems with S samples (``measured_coverage`` /
    ``measured_unique_correct``): the truth the forecast is for. ``target="pilot"`` forecasts the pilot
    problems themselves (:func:`flopmatch.forecast.forecast_pilot`) and measures on them. ``intervals``:
    "families" (the default) or "refit" (:data:`flopmatch.forecast.INTERVALS`).
    """
    if target not in ("population", "pilot"):
        raise ValueError(f"target must be 'population' or 'pilot', got {target!r}")
    from flopmatch.store.queries import graded_models

    if pilot_samples < 1:
        raise ValueError(f"pilot_samples must be >= 1, got {pilot_samples}")
    run = as_run(run_dir)
    graded = graded_models(run)
    if not graded:
        raise FileNotFoundError(f"{run.grades_dir}: no grades (run `flopmatch grade` first)")
    out = []
    for name, path in select_models(graded, model).items():
        data = load_model_samples(run, name, path)
        complete = data.complete(pilot_samples)
        if not complete:
            raise ValueError(f"{path}: no problem has all of samples 0..{pilot_samples - 1} graded "
                             f"(the most any problem has is {data.max_samples})")
        pids = pick_problems(complete, pilot_problems, seed)
        forecast = forecast_pilot if target == "pilot" else forecast_counts
        fc = forecast(problem_counts(data, pilot_samples, pids), ks, model=name, n_boot=n_boot, seed=seed,
                      family=family, intervals=intervals)
        out.append(with_measured(fc, data, pilot_samples, pids if target == "pilot" else None))
    return out


def with_measured(fc: ModelForecast, data: ModelSamples, pilot_samples: int,
                  problem_ids: Sequence[str] | None = None) -> ModelForecast:
    """Attach the measured values at k <= S when the model has S > n samples (on ``problem_ids``, or all)."""
    full = data.max_samples
    truth = sorted(data.complete(full)) if full > pilot_samples else []
    if problem_ids is not None:
        truth = [pid for pid in truth if pid in set(problem_ids)]
    if not truth:
        return fc
    points = []
    for p in fc.points:
        if p.k <= full:
            cov, div = measured_at(data, full, truth, p.k)
            p = dataclasses.replace(p, measured_coverage=cov, measured_unique_correct=div)
        points.append(p)
    return dataclasses.replace(fc, points=points, measured_samples=full, measured_problems=len(truth))


# --------------------------------------------------------------------------- counts files


def _where(path: Path, row: int, csv: bool) -> str:
    return f"{path}: line {row + 2}" if csv else f"{path}: row {row}"


def _integer(value: Any, where: str, field: str) -> int:
    text = str(value).strip() if value is not None else ""
    try:
        number = float(text)
    except ValueError:
        number = math.nan
    if not text or math.isnan(number) or number != math.floor(number) or math.isinf(number):
        raise ValueError(f"{where}: field '{field}' must be an integer, got {value!r}")
    return int(number)


def _validate_row(r: dict[str, Any], where: str, has: set[str]) -> dict[str, Any]:
    pid = r["problem_id"]
    if pid is None or str(pid).strip() == "" or (isinstance(pid, float) and math.isnan(pid)):
        raise ValueError(f"{where}: field 'problem_id' is empty")
    n, c = _integer(r["n"], where, "n"), _integer(r["c"], where, "c")
    if n <= 0:
        raise ValueError(f"{where}: field 'n' must be >= 1, got {n}")
    if c < 0:
        raise ValueError(f"{where}: field 'c' must be >= 0, got {c}")
    if c > n:
        raise ValueError(f"{where}: field 'c' is {c}, more than n={n}")
    row = {"model": str(r.get("model") or "") if "model" in has else "", "problem_id": str(pid), "n": n, "c": c}
    if "unique_correct" in has:
        u = _integer(r["unique_correct"], where, "unique_correct")
        if not (0 <= u <= c and (u >= 1 or c == 0)):
            raise ValueError(f"{where}: field 'unique_correct' is {u}; it must be between 1 and c={c} (0 when c=0)")
        row["unique_correct"] = u
    if "tokens" in has:
        try:
            tokens = float(r["tokens"])
        except (TypeError, ValueError):
            tokens = math.nan
        if math.isnan(tokens) or tokens < 0:
            raise ValueError(f"{where}: field 'tokens' must be a number >= 0, got {r['tokens']!r}")
        row["tokens"] = tokens
    return row


def read_counts(path: str | Path) -> dict[str, pd.DataFrame]:
    """Model name ('' when the file has no model column) → validated counts, from CSV or Parquet."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    csv = path.suffix.lower() != ".parquet"
    try:
        frame = (pd.read_csv(path, dtype=str, keep_default_na=False) if csv else pd.read_parquet(path))
    except Exception as exc:  # a corrupt file: name it
        raise ValueError(f"{path}: cannot read as {'CSV' if csv else 'Parquet'}: {exc}") from exc
    frame.columns = [str(col).strip() for col in frame.columns]
    missing = [col for col in COUNT_FIELDS if col not in frame.columns]
    if missing:
        where = f"{path}: line 1 (header)" if csv else f"{path}"
        raise ValueError(f"{where}: missing column(s) {missing}; need {list(COUNT_FIELDS)}, "
                         f"optional {list(OPTIONAL_FIELDS)}")
    if frame.empty:
        raise ValueError(f"{path}: no rows")
    has = set(frame.columns)
    rows, seen = [], set()
    for i, r in enumerate(frame.to_dict("records")):
        row = _validate_row(r, _where(path, i, csv), has)
        key = (row["model"], row["problem_id"])
        if key in seen:
            raise ValueError(f"{_where(path, i, csv)}: field 'problem_id': {row['problem_id']!r} appears twice"
                             + (f" for model {row['model']!r}" if row["model"] else ""))
        seen.add(key)
        rows.append(row)
    table = pd.DataFrame(rows)
    return {str(m): g.drop(columns="model").reset_index(drop=True) for m, g in table.groupby("model", sort=False)}


def forecast_counts_file(path: str | Path, ks: Sequence[int] = DEFAULT_KS, *, model: str | None = None,
                         n_boot: int = 200, seed: int = 0, family: str = "auto",
                         target: str = "population", intervals: str = "families") -> list[ModelForecast]:
    """:func:`forecast_counts` (or :func:`forecast_pilot` for ``target="pilot"``) for every model of a counts file."""
    groups = read_counts(path)
    if model is not None:
        if model not in groups:
            raise ValueError(f"{path}: no rows for model {model!r}; models: {sorted(groups)}")
        groups = {model: groups[model]}
    forecast = forecast_pilot if target == "pilot" else forecast_counts
    return [forecast(g, ks, model=m, n_boot=n_boot, seed=seed, family=family, intervals=intervals)
            for m, g in groups.items()]
