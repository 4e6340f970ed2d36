"""Evaluation of a (fine-tuned) model: pass@1 greedy, and maj@k / pass@k at temperature 0.7.

The paper reports fine-tuned models by pass@1 and maj@k (k = 1, 4, 8, 16) at temperature 0.7. One
call of :func:`evaluate` generates, per problem, one greedy solution and ``n`` sampled ones, grades
all of them with :mod:`flopmatch.grading`, and computes:

- ``pass@1`` — accuracy of the greedy solution;
- ``pass@k`` (1 < k ≤ n) — the unbiased estimator ``1 - C(n-c, k)/C(n, k)`` averaged over problems
  (:func:`flopmatch.metrics.pass_at_k`); the sampled k = 1 value is ``sample_accuracy`` (= ``maj@1``),
  kept apart from the greedy ``pass@1``;
- ``maj@k`` (k ≤ n) — majority vote over k samples, averaged over the ``n // k`` disjoint groups of
  k samples of each problem (each group is an exchangeable draw of k samples, so the average is an
  unbiased estimate of maj@k with lower variance than using only the first k). Votes go to final
  answers: every *correct* answer votes for the gold class (they are all equivalent to the gold,
  whatever their surface form), a wrong answer votes for its own string (whitespace and case
  removed), a sample with no answer does not vote. A tie between the top classes scores the chance
  of picking the gold class among them (1 / number tied, if it is tied).

Every metric comes with a 95% bootstrap interval over problems. Per-sample rows go to Parquet
(``RunDir.eval_path(name)`` in a run) and the summary to a JSON file beside it; a second call with
the same settings returns the saved result.

LoRA adapters evaluate directly: pass the adapter directory as ``model`` (its base model is read
from ``adapter_config.json``) or ``lora_path=``; the backend applies it (vLLM ``LoRARequest``, or
peft on the hf backend).
"""

from __future__ import annotations

import hashlib
import math
import time
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from flopmatch.errors import FlopmatchError
from flopmatch.fingerprints import model_files_identity
from flopmatch.progress import progress_bar
from flopmatch.store import config_hash, read_json, write_json, write_table
from flopmatch.store.schemas import EVAL_SCHEMA

DEFAULT_KS = (1, 4, 8, 16)


class EvaluationError(FlopmatchError, ValueError):
    """An evaluation that cannot run as asked: settings out of range (EvalConfig's own validation), no
    problems, a problem id twice, nothing to generate, maj@k above the samples."""


class EvalConfig(BaseModel):
    """Evaluation settings: the keyword arguments of :func:`evaluate`. The study's ``evaluation:`` section is
    this class with the study's defaults (``flopmatch.study.config.EvaluationConfig``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    backend: str = Field("hf", description="generation engine: vllm | hf")
    n: int = Field(16, ge=0, description="sampled solutions per problem (0: greedy pass@1 only)")
    ks: tuple[int, ...] = Field(DEFAULT_KS, description="k values for maj@k and pass@k (those <= n are reported)")
    temperature: float = Field(0.7, gt=0, description="sampling temperature for maj@k / pass@k")
    top_p: float = Field(1.0, gt=0, le=1)
    max_tokens: int = Field(1024, ge=1)
    greedy: bool = Field(True, description="also generate the greedy solution (pass@1)")
    seed: int = 0
    backend_options: dict[str, Any] = Field(default_factory=dict)

    @field_validator("ks")
    @classmethod
    def _positive(cls, ks: tuple[int, ...]) -> tuple[int, ...]:
        if any(k < 1 for k in ks):
            raise ValueError(f"every k must be >= 1, got {ks}")
        return tuple(sorted(set(ks)))


@dataclass
class EvalResult:
    """Metrics of one evaluation. ``intervals`` holds 95% bootstrap intervals over problems."""

    model: str
    lora_path: str | None
    problems: int
    n: int
    metrics: dict[str, float]
    intervals: dict[str, tuple[float, float]] = field(default_factory=dict)
    path: Path | None = None
    summary_path: Path | None = None
    seconds: float = 0.0
    completion_tokens: int = 0
    seeding: str = ""
    key: str = ""

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["path"] = str(self.path) if self.path else None
        out["summary_path"] = str(self.summary_path) if self.summary_path else None
        out["intervals"] = {k: list(v) for k, v in self.intervals.items()}
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EvalResult:
        return cls(
            model=data["model"],
            lora_path=data.get("lora_path"),
            problems=int(data["problems"]),
            n=int(data["n"]),
            metrics={k: float(v) for k, v in data["metrics"].items()},
            intervals={k: (float(v[0]), float(v[1])) for k, v in data.get("intervals", {}).items()},
            path=Path(data["path"]) if data.get("path") else None,
            summary_path=Path(data["summary_path"]) if data.get("summary_path") else None,
            seconds=float(data.get("seconds", 0.0)),
            completion_tokens=int(data.get("completion_tokens", 0)),
            seeding=data.get("seeding", ""),
            key=data.get("key", ""),
        )


# --------------------------------------------------------------------------- pure maths


def vote_key(status: str, extracted: str | None) -> str | None:
    """The class a sample votes for: the gold class for correct answers, else its normalised answer."""
    if status == "correct":
        return "\x00gold"
    if extracted is None or not str(extracted).strip():
        return None
    return "".join(str(extracted).split()).lower()


def majority_correct(votes: Sequence[str | None]) -> float:
    """Probability that a majority vote over ``votes`` picks the gold class (ties broken uniformly)."""
    counts = Counter(v for v in votes if v is not None)
    if not counts:
        return 0.0
    top = max(counts.values())
    tied = [v for v, c in counts.items() if c == top]
    return 1.0 / len(tied) if "\x00gold" in tied else 0.0


def maj_at_k(votes: Sequence[str | None], k: int) -> float:
    """maj@k of one problem from n ≥ k samples: mean of :func:`majority_correct` over the ``n // k``
    disjoint groups of k consecutive samples (samples are exchangeable, so each group is a fair draw)."""
    n = len(votes)
    if k < 1 or k > n:
        raise EvaluationError(f"maj@{k} needs 1 <= k <= n = {n}")
    groups = n // k
    return math.fsum(majority_correct(votes[g * k : (g + 1) * k]) for g in range(groups)) / groups


def problem_metrics(
    greedy_status: str | None, samples: Sequence[tuple[str, str | None]], ks: Sequence[int]
) -> dict[str, float]:
    """Per-problem values of every metric (averaged over problems by :func:`summarize`).

    ``samples`` are (status, extracted) of the sampled solutions in ``sample_idx`` order.
    """
    from flopmatch.metrics import pass_at_k

    out: dict[str, float] = {}
    if greedy_status is not None:
        out["pass@1"] = 1.0 if greedy_status == "correct" else 0.0
    n = len(samples)
    if n:
        c = sum(1 for status, _ in samples if status == "correct")
        votes = [vote_key(status, extracted) for status, extracted in samples]
        out["sample_accuracy"] = c / n
        for k in ks:
            if k <= n:
                if k > 1:  # "pass@1" is the greedy score; the sampled k=1 value is sample_accuracy (= maj@1)
                    out[f"pass@{k}"] = pass_at_k(n, c, k)
                out[f"maj@{k}"] = maj_at_k(votes, k)
    return out


def summarize(per_problem: Sequence[dict[str, float]], *, seed: int = 0) -> tuple[dict[str, float], dict[str, tuple[float, float]]]:
    """Means over problems and their 95% bootstrap intervals."""
    from flopmatch.metrics import bootstrap_ci

    names = sorted({name for values in per_problem for name in values})
    metrics: dict[str, float] = {}
    intervals: dict[str, tuple[float, float]] = {}
    for name in names:
        values = [v[name] for v in per_problem if name in v]
        metrics[name] = math.fsum(values) / len(values)
        intervals[name] = bootstrap_ci(values, seed=seed)
    return metrics, intervals


def eval_seed(seed: int, problem_id: str, sample_idx: int) -> int:
    """Seed of one evaluation sample: stable across runs and machines, distinct per (problem, index)."""
    digest = hashlib.sha256(f"eval\x00{seed}\x00{problem_id}\x00{sample_idx}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


# --------------------------------------------------------------------------- evaluate


def _checked_config(problems: Sequence[Any], **settings: Any) -> EvalConfig:
    """The evaluation's settings, and the problems checked: an :class:`EvaluationError` names what cannot run."""
    try:
        config = EvalConfig(**settings)
    except ValidationError as exc:  # pydantic's message, as the CLI printed it before
        raise EvaluationError(str(exc)) from exc
    if not problems:
        raise EvaluationError("no problems to evaluate")
    if not config.greedy and config.n == 0:
        raise EvaluationError("nothing to generate: greedy=False and n=0")
    ids = [p.problem_id for p in problems]
    if len(set(ids)) != len(ids):
        dup = next(i for i, c in Counter(ids).items() if c > 1)
        raise EvaluationError(f"problem_id {dup!r} appears more than once")
    return config


def evaluate(
    model: str | Path,
    problems: Sequence[Any],
    *,
    backend: str = "hf",
    n: int = 16,
    ks: Sequence[int] = DEFAULT_KS,
    temperature: float = 0.7,
    top_p: float = 1.0,
    max_tokens: int = 1024,
    greedy: bool = True,
    prompt: Any = None,
    lora_path: str | Path | None = None,
    seed: int = 0,
    out_path: str | Path | None = None,
    backend_options: dict[str, Any] | None = None,
    progress_desc: str | None = None,
) -> EvalResult:
    """Evaluate ``model`` on ``problems`` (see the module docstring for the metrics).

    ``model`` is an HF model id or directory, an output directory of :func:`flopmatch.training.train`
    (its ``best/``), or a LoRA adapter directory. ``prompt`` is a :class:`flopmatch.prompts.PromptConfig`
    (or its dict, or a mapping dataset -> config); by default a fine-tuned model gets the prompts its
    SFT data was built with (recorded by training), any other model the dataset's few-shot prompt
    (``default_prompt_config``). ``out_path``
    (Parquet) receives one row per generated solution, and ``<out_path>.json`` the summary.
    """
    from flopmatch.trained import model_meta, resolve_trained_model

    config = _checked_config(problems, backend=backend, n=n, ks=tuple(ks), temperature=temperature, top_p=top_p,
                             max_tokens=max_tokens, greedy=greedy, seed=seed,
                             backend_options=dict(backend_options or {}))  # fmt: skip
    ids = [p.problem_id for p in problems]
    base, adapter = resolve_trained_model(model)
    if lora_path is not None:
        adapter = str(lora_path)
    meta = model_meta(model)
    if prompt is None:
        prompt = meta.get("prompt_configs")
    prompt_for, stops = _prompt_function(problems, prompt, trained=bool(meta))

    # What the saved result depends on: the model (and its weight files), settings, problems, prompts.
    key = config_hash(
        {
            "model": str(model),
            "base": base,
            "lora": adapter,
            "weights": [model_files_identity(base), model_files_identity(adapter)],
            "config": config,
            "problems": ids,
            "prompt": _plain(prompt),
            "rendered": [_plain(prompt_for(p)) for p in problems[:3]],  # catches a changed prompt format
            "stop": stops,
        }
    )
    out_path = Path(out_path) if out_path is not None else None
    summary_path = out_path.with_suffix(".json") if out_path is not None else None
    if summary_path is not None and summary_path.exists() and out_path.exists():
        saved = read_json(summary_path)
        if saved.get("key") == key:
            return EvalResult.from_dict(saved)

    started = time.perf_counter()
    rows, seeding = _generate(base, adapter, problems, prompt_for, stops, config, progress_desc)
    _grade_rows(rows, problems)
    seconds = time.perf_counter() - started

    per_problem = _per_problem(rows, problems, config)
    metrics, intervals = summarize(per_problem, seed=config.seed)
    result = EvalResult(
        model=str(model),
        lora_path=adapter,
        problems=len(problems),
        n=config.n,
        metrics=metrics,
        intervals=intervals,
        path=out_path,
        summary_path=summary_path,
        seconds=seconds,
        completion_tokens=sum(int(r["completion_tokens"] or 0) for r in rows),
        seeding=seeding,
        key=key,
    )
    if out_path is not None:
        for row in rows:
            row["model"], row["lora_path"] = str(model), adapter
        write_table(pa.Table.from_pylist(rows, schema=EVAL_SCHEMA), out_path)
        write_json({**result.to_dict(), "config": config.model_dump(mode="json"), "prompt": _plain(prompt)}, summary_path)
    return result


def _prompt_function(problems: Sequence[Any], prompt: Any, *, trained: bool):
    """(problem -> prompt (raw text or chat messages), stop strings of the prompt styles used).

    ``prompt`` is a PromptConfig, a dict of its fields, or a mapping dataset -> config (what training
    records). Datasets without a config get the default: the SFT (zero-shot) prompt for a fine-tuned
    model, the dataset's few-shot prompt for any other model.
    """
    from flopmatch.prompts import PromptConfig, build_prompt, default_prompt_config, stop_sequences
    from flopmatch.sft import sft_prompt_config

    def as_config(value: Any) -> PromptConfig:
        return value if isinstance(value, PromptConfig) else PromptConfig.model_validate(value)

    single = isinstance(prompt, PromptConfig) or (
        isinstance(prompt, dict) and bool(prompt) and set(prompt) <= set(PromptConfig.model_fields)
    )
    given = {} if single else {str(k): as_config(v) for k, v in (prompt or {}).items()}
    default = sft_prompt_config if trained else default_prompt_config
    configs: dict[str, Any] = {}
    for problem in problems:
        if problem.dataset not in configs:
            configs[problem.dataset] = as_config(prompt) if single else (
                given.get(problem.dataset) or default(problem.dataset))
    stops = tuple(sorted({s for c in configs.values() for s in stop_sequences(c)}))
    return (lambda problem: build_prompt(problem, configs[problem.dataset])), stops


def _plain(obj: Any) -> Any:
    if hasattr(obj, "model_dump"):
        return obj.model_dump(mode="json")
    return obj


def _generate(
    base: str,
    adapter: str | None,
    problems: Sequence[Any],
    prompt_for,
    stops: tuple[str, ...],
    config: EvalConfig,
    desc: str | None,
) -> tuple[list[dict[str, Any]], str]:
    """Greedy and sampled generations as eval rows (ungraded)."""
    from flopmatch.backends import create_backend
    from flopmatch.backends.base import Request, SamplingParams

    options = dict(config.backend_options)
    if adapter is not None:
        options["lora_path"] = adapter
    engine = create_backend(config.backend, base, **options)
    by_id = {p.problem_id: p for p in problems}
    rows: list[dict[str, Any]] = []
    total = len(problems) * ((1 if config.greedy else 0) + config.n)
    try:
        with progress_bar(total, desc or f"evaluate {Path(base).name}", unit="sample") as bar:
            passes: list[tuple[str, SamplingParams, tuple[int, ...]]] = []
            if config.greedy:
                greedy = SamplingParams(temperature=0.0, top_p=1.0, max_tokens=config.max_tokens, stop=stops)
                passes.append(("greedy", greedy, (0,)))
            if config.n:
                passes.append(
                    ("sample",
                     SamplingParams(temperature=config.temperature, top_p=config.top_p, max_tokens=config.max_tokens,
                                    stop=stops),
                     tuple(range(config.n)))
                )
            for mode, params, indices in passes:
                requests = [
                    Request(
                        request_id=p.problem_id,
                        prompt=prompt_for(p),
                        sample_indices=indices,
                        seeds=tuple(eval_seed(config.seed, p.problem_id, i) for i in indices),
                    )
                    for p in problems
                ]
                for batch in engine.generate(requests, params):
                    for c in batch:
                        problem = by_id[c.request_id]
                        rows.append(
                            {
                                "model": base,
                                "lora_path": adapter,
                                "problem_id": c.request_id,
                                "dataset": problem.dataset,
                                "mode": mode,
                                "sample_idx": int(c.sample_idx),
                                "seed": int(c.seed),
                                "text": c.text,
                                "extracted": None,
                                "gold": problem.answer,
                                "status": None,
                                "completion_tokens": int(c.completion_tokens),
                                "finish_reason": c.finish_reason,
                            }
                        )
                    bar.update(len(batch))
        seeding = str(getattr(engine, "seeding", ""))
    finally:
        engine.close()
    expected = len(problems) * ((1 if config.greedy else 0) + config.n)
    if len(rows) != expected:
        raise RuntimeError(f"backend {config.backend!r} returned {len(rows)} completions, expected {expected}")
    return rows, seeding


def _grade_rows(rows: list[dict[str, Any]], problems: Sequence[Any]) -> None:
    """Fill ``status`` and ``extracted`` with flopmatch's grader, one batch per dataset."""
    from flopmatch.grading import grade_many

    by_dataset: dict[str, list[int]] = defaultdict(list)
    for i, row in enumerate(rows):
        by_dataset[row["dataset"]].append(i)
    for dataset, indices in by_dataset.items():
        grades = grade_many([(rows[i]["text"], rows[i]["gold"]) for i in indices], dataset=dataset)
        for i, grade in zip(indices, grades, strict=True):
            rows[i]["status"] = grade.status
            rows[i]["extracted"] = grade.extracted


def _per_problem(rows: list[dict[str, Any]], problems: Sequence[Any], config: EvalConfig) -> list[dict[str, float]]:
    greedy: dict[str, str] = {}
    samples: dict[str, list[tuple[int, str, str | None]]] = defaultdict(list)
    for row in rows:
        if row["mode"] == "greedy":
            greedy[row["problem_id"]] = row["status"]
        else:
            samples[row["problem_id"]].append((row["sample_idx"], row["status"], row["extracted"]))
    out = []
    for problem in problems:
        ordered = [(s, e) for _, s, e in sorted(samples.get(problem.problem_id, []))]
        out.append(problem_metrics(greedy.get(problem.problem_id), ordered, config.ks))
    return out
