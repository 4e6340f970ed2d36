"""The pilot: a few seeded samples per problem from each candidate model, graded, counted and priced.

``flopmatch advise`` and the study's ``pilot`` stage decide from it. Everything here goes through the
ordinary sampling and grading code (``flopmatch.sampling.sample``, ``flopmatch.grading.grade_run``),
so a pilot of n samples is exactly the first n samples (``sample_idx < n``) of any later, larger run of
the same model in the same run directory: the pilot's compute is never thrown away, and rerunning a
pilot generates nothing new.

What a pilot yields per model (:class:`PilotModel`):

- ``counts``: one row per pilot problem — ``problem_id``, ``n`` (graded samples with
  ``sample_idx < n``), ``c`` (of them correct), ``unique_correct`` (distinct correct solutions after
  ``flopmatch.metrics.normalize_solution``), ``tokens`` (generated tokens);
- ``cost``: what one sample cost, measured on the pilot's own samples (:class:`ModelCost`);
- ``fpr``: a false-positive rate when one is known (given, or from the run's judgments).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from flopmatch.errors import FlopmatchError
from flopmatch.problems import Problem, select_subset
from flopmatch.store import RunDir, model_key, shard_paths
from flopmatch.store.queries import below_budget, grades_file, read_graded, read_samples

UNITS = ("flops", "dollars", "seconds")


class PilotError(FlopmatchError, ValueError):
    """The pilot's samples or grades are missing or inconsistent (the message names the file)."""


@dataclass(frozen=True)
class ModelCost:
    """One model's measured cost per sample, from the pilot's own samples.

    ``flops`` is the paper's nominal 2·P·W (W: mean generated tokens); ``seconds`` is the generation
    wall time the sampler attributed to each sample (batch time / batch size, the same seconds the
    ledger sums); ``dollars`` needs a price per million generated tokens.
    """

    model: str
    samples: int
    completion_tokens: int
    seconds: float
    params: int | None
    price_per_million: float | None = None

    @property
    def tokens_per_sample(self) -> float:
        return self.completion_tokens / self.samples if self.samples else 0.0

    def per_sample(self, unit: str) -> float:
        """The cost of one sample in ``unit`` (flops | dollars | seconds); raises when it is unknown."""
        if self.samples <= 0:
            raise PilotError(f"{self.model}: the pilot has no samples to measure a cost from")
        if unit == "flops":
            if not self.params:
                raise PilotError(f"{self.model}: parameter count unknown; nominal FLOPs need it (--params)")
            return 2.0 * float(self.params) * self.tokens_per_sample
        if unit == "dollars":
            if self.price_per_million is None:
                raise PilotError(
                    f"no price for {self.model}: give --price {self.model}=USD_PER_MILLION_TOKENS"
                )
            return self.price_per_million * self.tokens_per_sample / 1e6
        if unit == "seconds":
            if self.seconds <= 0:
                raise PilotError(f"{self.model}: the pilot recorded no generation seconds")
            return self.seconds / self.samples
        raise PilotError(f"unknown cost unit {unit!r}; expected one of {', '.join(UNITS)}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "samples": self.samples,
            "completion_tokens": self.completion_tokens,
            "tokens_per_sample": self.tokens_per_sample,
            "seconds": self.seconds,
            "params": self.params,
            "price_per_million_tokens": self.price_per_million,
        }


@dataclass(frozen=True)
class PilotModel:
    """What the pilot measured for one model (see the module docstring)."""

    model: str
    counts: pd.DataFrame
    cost: ModelCost
    fpr: float | None = None
    fpr_source: str = ""
    label: str = field(default="")

    @property
    def name(self) -> str:
        return self.label or self.model


@dataclass(frozen=True)
class PilotModelSpec:
    """How to sample one pilot model (``flopmatch.study.ModelSpec`` has the same first fields)."""

    model: str
    backend: str = "vllm"
    backend_options: dict[str, Any] = field(default_factory=dict)
    params: float | None = None
    label: str = ""


def pilot_problems(problems: Sequence[Problem], n_problems: int | None, seed: int) -> list[Problem]:
    """The seeded pilot subset: nested (a larger pilot holds a smaller one), in source order."""
    return select_subset(list(problems), limit=n_problems, seed=seed)


def sample_pilot(
    run_dir: str | Path,
    specs: Sequence[PilotModelSpec],
    problems: Sequence[Problem],
    *,
    samples: int,
    sampling_params: Any = None,
    prompt: Any = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Make sure ``samples`` samples of each problem are on disk for every model (resumable)."""
    from flopmatch.sampling import sample

    out = {}
    for spec in specs:
        summary = sample(
            run_dir,
            model=spec.model,
            problems=list(problems),
            samples_per_problem=samples,
            backend=spec.backend,
            backend_options=dict(spec.backend_options),
            params=sampling_params,
            prompt=prompt,
            params_count=int(spec.params) if spec.params else None,
            progress=progress,
        )
        if summary.status != "done":
            raise PilotError(
                f"pilot sampling of {spec.model} ended with status {summary.status!r}: {summary.message}"
            )
        out[spec.model] = summary
    return out


def pilot_counts(run_dir: str | Path, model: str, problem_ids: Sequence[str], samples: int) -> pd.DataFrame:
    """Per pilot problem: n, c, unique_correct and tokens of ``model``'s samples with sample_idx < samples.

    Reads ``grades/<model>.parquet`` (run ``grade_run`` first) and the sample texts of correct samples.
    A pilot problem with fewer than ``samples`` graded samples is an error naming the file.
    """
    table = graded_solutions(run_dir, model, problem_ids, samples)
    short = table[table["n"] < samples]
    if len(short):
        raise PilotError(
            f"{RunDir(run_dir).grades_path(model)}: problem {short['problem_id'].iloc[0]!r} has "
            f"{int(short['n'].iloc[0])} graded samples with sample_idx < {samples} ({len(short)} pilot problems "
            "are short); sample and grade the pilot first"
        )
    table["unique_correct"] = table["multiplicities"].map(len).astype(int)
    return table[["problem_id", "n", "c", "unique_correct", "tokens"]]


def graded_solutions(
    run_dir: str | Path, model: str, problem_ids: Sequence[str], samples: int | None = None
) -> pd.DataFrame:
    """Per problem (in the given order): n graded samples (sample_idx < ``samples`` if given), c correct,
    the multiplicities of the distinct correct solutions (normalised texts) and the generated tokens.
    A problem with no graded sample has n = 0."""
    from flopmatch.metrics import multiplicities, normalize_solution

    run = RunDir(run_dir)
    path = grades_file(run, model)
    if path is None:
        raise PilotError(f"{run.grades_path(model)}: no grades for {model}; grade the samples first")
    if not shard_paths(run.samples_dir(model)):
        raise PilotError(f"{run.samples_dir(model)}: no samples of {model}")
    merged = read_graded(run, model, samples=samples, text=True, columns=("completion_tokens",), path=path)
    merged = merged.to_pandas()
    merged = merged[merged["problem_id"].isin(set(problem_ids))].copy()
    correct = merged["status"] == "correct"
    merged["norm"] = [
        normalize_solution(t or "") if ok else None for t, ok in zip(merged["text"], correct, strict=True)
    ]
    merged["correct"] = correct
    grouped = merged.groupby("problem_id", sort=False)
    table = grouped.agg(n=("sample_idx", "count"), c=("correct", "sum"), tokens=("completion_tokens", "sum"))
    table = table.reindex(list(dict.fromkeys(problem_ids))).fillna({"n": 0, "c": 0, "tokens": 0})
    groups = {pid: multiplicities(norms.dropna()) for pid, norms in grouped["norm"]}
    table["multiplicities"] = [groups.get(pid, []) for pid in table.index]
    return table.reset_index().astype({"n": int, "c": int, "tokens": "int64"})


def _sample_rows(run: RunDir, model: str, wanted: set[str], samples: int | None) -> pd.DataFrame:
    """The samples of ``wanted`` problems below ``samples`` (all when None): their tokens and seconds (no
    text: the cost needs none)."""
    columns = ("problem_id", "sample_idx", "completion_tokens", "seconds")
    frame = read_samples(run, model, columns, samples=samples).to_pandas()
    if frame.empty:
        raise PilotError(f"{run.samples_dir(model)}: no samples of {model}")
    frame = frame[frame["problem_id"].isin(wanted)]
    return frame.drop_duplicates(["problem_id", "sample_idx"])


def pilot_cost(
    run_dir: str | Path,
    model: str,
    problem_ids: Sequence[str],
    samples: int,
    *,
    params: float | None = None,
    price_per_million: float | None = None,
) -> ModelCost:
    """The measured cost of the pilot's samples of ``model`` (see :class:`ModelCost`).

    The parameter count is ``params`` if given, else the one the sampling ledger recorded for the
    model, else :func:`flopmatch.modelinfo.count_parameters`.
    """
    run = RunDir(run_dir)
    rows = _sample_rows(run, model, set(problem_ids), samples)
    count = params or _ledger_params(run, model)
    if count is None:
        try:
            from flopmatch.modelinfo import count_parameters

            count = count_parameters(model).total
        except Exception:  # noqa: BLE001 - an unknown count only matters for FLOPs, which then says so
            count = None
    return ModelCost(
        model=model,
        samples=len(rows),
        completion_tokens=int(rows["completion_tokens"].sum()),
        seconds=float(rows["seconds"].fillna(0).sum()),
        params=int(count) if count else None,
        price_per_million=price_per_million,
    )


def _ledger_params(run: RunDir, model: str) -> int | None:
    from flopmatch.ledger import summarize_ledger

    summary = summarize_ledger(run.root)
    mine = summary[summary["model"].map(model_key) == model_key(model)] if len(summary) else summary
    if len(mine) and pd.notna(mine["params"].iloc[0]):
        return int(mine["params"].iloc[0])
    return None


def judged_fpr(
    run_dir: str | Path, model: str, problem_ids: Sequence[str], samples: int
) -> tuple[float | None, str]:
    """The judge's false-positive rate on the pilot's answer-correct samples, when the run has judgments."""
    from flopmatch.store.queries import read_judgments

    run = RunDir(run_dir)
    table = read_judgments(run, model)
    if not table.num_rows:
        return None, ""
    frame = below_budget(table.select(["problem_id", "sample_idx", "status", "judge"]), samples).to_pandas()
    frame = frame[frame["problem_id"].isin(set(problem_ids))]
    frame = frame[frame["status"].isin(["valid", "invalid"])]
    if frame.empty:
        return None, ""
    invalid = int((frame["status"] == "invalid").sum())
    judges = ", ".join(sorted(set(frame["judge"])))
    return invalid / len(frame), f"judgments in {run.judgments_path(model)} ({judges}, {len(frame)} judged)"


def load_pilot(
    run_dir: str | Path,
    specs: Sequence[PilotModelSpec],
    problem_ids: Sequence[str],
    samples: int,
    *,
    prices: dict[str, float] | None = None,
    fprs: dict[str, float] | None = None,
) -> list[PilotModel]:
    """Counts, cost and FPR of every model's pilot, read from a sampled and graded run directory."""
    prices, fprs = prices or {}, fprs or {}
    out = []
    for spec in specs:
        counts = pilot_counts(run_dir, spec.model, problem_ids, samples)
        cost = pilot_cost(
            run_dir, spec.model, problem_ids, samples, params=spec.params,
            price_per_million=lookup(prices, spec),
        )  # fmt: skip
        fpr, source = lookup(fprs, spec), "given"
        if fpr is None:
            fpr, source = judged_fpr(run_dir, spec.model, problem_ids, samples)
        out.append(PilotModel(spec.model, counts, cost, fpr, source if fpr is not None else "", spec.label))
    return out


def model_names(spec: PilotModelSpec | PilotModel) -> list[str]:
    """The names a model may be given by on the command line: reference, label, run-directory key."""
    return [name for name in dict.fromkeys((spec.model, spec.label, model_key(spec.model))) if name]


def lookup(table: dict[str, float], spec: PilotModelSpec | PilotModel) -> float | None:
    """A per-model setting given by reference, label or run-directory key."""
    for name in model_names(spec):
        if name in table:
            return table[name]
    return None


# --------------------------------------------------------------------------- parsing options (pure)


def parse_model_values(
    items: Sequence[str] | None, option: str, *, upper: float | None = None
) -> dict[str, float]:
    """``MODEL=VALUE`` pairs (``--price``, ``--fpr``) as a dict; a bad pair names the option and the item."""
    out: dict[str, float] = {}
    for item in items or []:
        name, sep, text = item.rpartition("=")
        if not sep or not name.strip():
            raise PilotError(f"{option} expects MODEL=NUMBER, got {item!r}")
        try:
            value = float(text)
        except ValueError:
            raise PilotError(f"{option} {item!r}: {text!r} is not a number") from None
        if not math.isfinite(value) or value < 0 or (upper is not None and value > upper):
            bound = f"between 0 and {upper:g}" if upper is not None else "a finite number >= 0"
            raise PilotError(f"{option} {item!r}: the value must be {bound}")
        out[name.strip()] = value
    return out


def parse_match(text: str) -> tuple[str, int]:
    """``MODEL:S`` (the budget that S samples per problem of MODEL cost)."""
    name, sep, count = text.rpartition(":")
    if not sep or not name.strip():
        raise PilotError(f"--match expects MODEL:SAMPLES_PER_PROBLEM, e.g. toyworld-se:10, got {text!r}")
    try:
        samples = int(count)
    except ValueError:
        raise PilotError(
            f"--match {text!r}: {count!r} is not a whole number of samples per problem"
        ) from None
    if samples < 1:
        raise PilotError(f"--match {text!r}: samples per problem must be >= 1")
    return name.strip(), samples


# --------------------------------------------------------------------------- the budget


@dataclass(frozen=True)
class Budget:
    """A total budget for the whole problem set, in flops | dollars | seconds."""

    amount: float
    unit: str
    source: str

    def __post_init__(self) -> None:
        if self.unit not in UNITS:
            raise PilotError(f"unknown budget unit {self.unit!r}; expected one of {', '.join(UNITS)}")
        if not (self.amount > 0 and math.isfinite(self.amount)):
            raise PilotError(f"the budget must be a positive number, got {self.amount} ({self.source})")


def budget_unit(
    *, flops: float | None, dollars: float | None, seconds: float | None, match: str | None, priced: bool
) -> str:
    """Which unit the options ask for; exactly one budget option must be given."""
    given = [
        name
        for name, v in (
            ("--budget-flops", flops),
            ("--budget-dollars", dollars),
            ("--budget-seconds", seconds),
            ("--match", match),
        )
        if v is not None
    ]
    if len(given) != 1:
        raise PilotError(
            "give exactly one budget: --budget-flops F, --budget-dollars D (with --price), --budget-seconds T "
            f"or --match MODEL:S (got {', '.join(given) or 'none'})"
        )
    if dollars is not None and not priced:
        raise PilotError("--budget-dollars needs a --price MODEL=USD_PER_MILLION_TOKENS for every model")
    if match is not None:
        return "dollars" if priced else "flops"
    return "flops" if flops is not None else "dollars" if dollars is not None else "seconds"


def resolve_budget(
    *,
    flops: float | None,
    dollars: float | None,
    seconds: float | None,
    match: str | None,
    pilots: Sequence[PilotModel],
    n_problems: int,
) -> Budget:
    """The budget in its unit; ``--match MODEL:S`` is priced with MODEL's measured cost per sample."""
    priced = all(p.cost.price_per_million is not None for p in pilots)
    unit = budget_unit(flops=flops, dollars=dollars, seconds=seconds, match=match, priced=priced)
    if match is None:
        amount = flops if flops is not None else dollars if dollars is not None else seconds
        return Budget(float(amount), unit, f"--budget-{unit}")
    name, samples = parse_match(match)
    found = [p for p in pilots if name in model_names(p)]
    if not found:
        raise PilotError(
            f"--match {match!r}: {name!r} is not one of the models ({', '.join(p.name for p in pilots)})"
        )
    amount = samples * n_problems * found[0].cost.per_sample(unit)
    return Budget(amount, unit, f"{samples} samples per problem of {found[0].name} ({unit})")
