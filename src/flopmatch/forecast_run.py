"""The I/O edge of :mod:`flopmatch.forecast`: pilot counts from a graded run, and counts files.

* :func:`forecast_run` fits each model of a run from its first ``pilot_samples`` samples per problem
  (``sample_idx < n``; the sampler's seeded prefix property makes that an honest pilot) and, when the
  run holds more samples, puts the measured unbiased coverage@k / diversity@k beside each forecast.
* :func:`read_counts` reads ``problem_id, n, c`` (+ optional ``model``, ``unique_correct``, ``tokens``)
  from CSV or Parquet; a bad row raises :class:`ForecastInputError` with the file, the line (CSV; the
  header is line 1) or row (Parquet, counted from 1) and the field as ``file``/``row``/``field``.

Bad input (a malformed counts file, a model without grades, a pilot no problem completes, an argument out
of range) raises :class:`ForecastInputError` (a ValueError); a counts file or a run's grades that are not
there, :class:`ForecastInputMissing` (a FileNotFoundError); both are :class:`~flopmatch.errors.FlopmatchError`.

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
from flopmatch.errors import FlopmatchError
from flopmatch.forecast import DEFAULT_KS, ModelForecast, forecast_counts, forecast_pilot
from flopmatch.metrics import expected_unique_at_k, multiplicities, pass_at_k
from flopmatch.store import RunDir, as_run, model_key

COUNT_FIELDS = ("problem_id", "n", "c")
OPTIONAL_FIELDS = ("model", "unique_correct", "tokens")


class ForecastInputError(FlopmatchError, ValueError):
    """The forecast's input is malformed: a counts file's row, field or columns (``file``, ``row`` and
    ``field`` say where; ``unit`` is "line" for CSV, "row" for Parquet), a model with no grades, a pilot
    that no problem completes, or an argument out of range."""


class ForecastInputMissing(FlopmatchError, FileNotFoundError):
    """The forecast's input is not there: no counts file at the path given, or a run with no grades."""


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
        raise ForecastInputError(f"model {model!r} has no grades in this run; graded: {sorted(graded)}")
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
        raise ForecastInputError(f"target must be 'population' or 'pilot', got {target!r}")
    from flopmatch.store.queries import graded_models

    if pilot_samples < 1:
        raise ForecastInputError(f"pilot_samples must be >= 1, got {pilot_samples}")
    run = as_run(run_dir)
    graded = graded_models(run)
    if not graded:
        raise ForecastInputMissing("no grades (run `flopmatch grade` first)", file=run.grades_dir)
    out = []
    for name, path in select_models(graded, model).items():
        data = load_model_samples(run, name, path)
        complete = data.complete(pilot_samples)
        if not complete:
            raise ForecastInputError(f"no problem has all of samples 0..{pilot_samples - 1} graded (the most any "
                                     f"problem has is {data.max_samples})", file=path)
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


def _integer(value: Any, field: str, at: dict[str, Any]) -> int:
    text = str(value).strip() if value is not None else ""
    try:
        number = float(text)
    except ValueError:
        number = math.nan
    if not text or math.isnan(number) or number != math.floor(number) or math.isinf(number):
        raise ForecastInputError(f"must be an integer, got {value!r}", field=field, **at)
    return int(number)


def _validate_row(r: dict[str, Any], at: dict[str, Any], has: set[str]) -> dict[str, Any]:
    """One counts row checked; ``at`` is where it is (file, row, unit) for the error."""
    pid = r["problem_id"]
    if pid is None or str(pid).strip() == "" or (isinstance(pid, float) and math.isnan(pid)):
        raise ForecastInputError("is empty", field="problem_id", **at)
    n, c = _integer(r["n"], "n", at), _integer(r["c"], "c", at)
    if n <= 0:
        raise ForecastInputError(f"must be >= 1, got {n}", field="n", **at)
    if c < 0:
        raise ForecastInputError(f"must be >= 0, got {c}", field="c", **at)
    if c > n:
        raise ForecastInputError(f"{c} is more than n={n}", field="c", **at)
    row = {"model": str(r.get("model") or "") if "model" in has else "", "problem_id": str(pid), "n": n, "c": c}
    if "unique_correct" in has:
        u = _integer(r["unique_correct"], "unique_correct", at)
        if not (0 <= u <= c and (u >= 1 or c == 0)):
            raise ForecastInputError(f"got {u}; it must be between 1 and c={c} (0 when c=0)", field="unique_correct",
                                     **at)
        row["unique_correct"] = u
    if "tokens" in has:
        try:
            tokens = float(r["tokens"])
        except (TypeError, ValueError):
            tokens = math.nan
        if math.isnan(tokens) or tokens < 0:
            raise ForecastInputError(f"must be a number >= 0, got {r['tokens']!r}", field="tokens", **at)
        row["tokens"] = tokens
    return row


def read_counts(path: str | Path) -> dict[str, pd.DataFrame]:
    """Model name ('' when the file has no model column) → validated counts, from CSV or Parquet.

    A bad file raises :class:`ForecastInputError` whose ``file``, ``row`` (the line of a CSV file, the
    header being line 1; the row of a Parquet table, counted from 1) and ``field`` say where; no file at
    ``path`` raises :class:`ForecastInputMissing`.
    """
    path = Path(path)
    if not path.exists():
        raise ForecastInputMissing("no such file", file=path)
    csv = path.suffix.lower() != ".parquet"
    try:
        frame = (pd.read_csv(path, dtype=str, keep_default_na=False) if csv else pd.read_parquet(path))
    except Exception as exc:  # a corrupt file: name it
        raise ForecastInputError(f"cannot read as {'CSV' if csv else 'Parquet'}: {exc}", file=path) from exc
    frame.columns = [str(col).strip() for col in frame.columns]
    missing = [col for col in COUNT_FIELDS if col not in frame.columns]
    if missing:
        need = f"; need {list(COUNT_FIELDS)}, optional {list(OPTIONAL_FIELDS)}"
        if csv:
            raise ForecastInputError(f"the header lacks column(s) {missing}{need}", file=path, row=1, unit="line")
        raise ForecastInputError(f"missing column(s) {missing}{need}", file=path)
    if frame.empty:
        raise ForecastInputError("no rows", file=path)
    has = set(frame.columns)
    rows, seen = [], set()
    for i, r in enumerate(frame.to_dict("records")):
        at = {"file": path, "row": i + 2, "unit": "line"} if csv else {"file": path, "row": i + 1}
        row = _validate_row(r, at, has)
        key = (row["model"], row["problem_id"])
        if key in seen:
            raise ForecastInputError(f"{row['problem_id']!r} appears twice"
                                     + (f" for model {row['model']!r}" if row["model"] else ""),
                                     field="problem_id", **at)
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
            raise ForecastInputError(f"no rows for model {model!r}; models: {sorted(groups)}", file=path)
        groups = {model: groups[model]}
    forecast = forecast_pilot if target == "pilot" else forecast_counts
    return [forecast(g, ks, model=m, n_boot=n_boot, seed=seed, family=family, intervals=intervals)
            for m, g in groups.items()]
