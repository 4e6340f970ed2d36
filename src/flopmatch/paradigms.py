"""The paper's three fine-tuning paradigms, each comparing WC data with SE data at one budget.

Every paradigm fine-tunes one student twice — on the WC model's correct solutions and on the SE
model's, both at the same compute-matched budget — and evaluates both on the test problems:

- :func:`knowledge_distillation` — a separate student (the paper: Gemma-7B);
- :func:`self_improvement` — the WC model itself (its own data = self-improvement, SE data =
  distillation from the stronger model);
- :func:`weak_to_strong` — the SE model itself (WC data = weak-to-strong improvement, its own data =
  self-improvement).

Optionally also on the number-matched control (WC data with only as many samples per problem as
SE: the paper's evidence that the gain comes from compute matching) and the student before
fine-tuning. Each is a thin composition of :func:`flopmatch.sft.build_sft`,
:func:`flopmatch.training.train` (with checkpoint selection on the validation problems) and
:func:`flopmatch.evaluation.evaluate`; every step is resumable, so calling a paradigm again after a
crash redoes only what did not finish.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from flopmatch.evaluation import EvalConfig, EvalResult, evaluate
from flopmatch.sft import SFTBuildResult, build_sft
from flopmatch.store import RunDir, model_key
from flopmatch.training import TrainConfig, train

Paradigm = Literal["knowledge_distillation", "self_improvement", "weak_to_strong"]
DATA_KINDS = ("wc", "se", "wc_number_matched", "base")


def relative_gain(wc: float, se: float) -> float:
    """The paper's relative gain of WC data over SE data, in percent: (WC − SE) / SE · 100 (NaN if SE is 0)."""
    if se == 0 or math.isnan(se) or math.isnan(wc):
        return float("nan")
    return (wc - se) / abs(se) * 100.0


@dataclass
class ParadigmResult:
    """One paradigm at one budget: the student's test metrics after training on each data source.

    ``relative_gain`` maps each metric to (WC − SE) / SE in percent. ``intervals`` maps a data kind
    (``wc``, ``se``, ``wc_number_matched``, ``base``) to each metric's 95% bootstrap interval.
    ``artifacts`` names the SFT datasets, model directories and evaluation files used.
    """

    paradigm: str
    budget_se_samples: int
    student: str
    wc_data: dict[str, float]
    se_data: dict[str, float]
    relative_gain: dict[str, float]
    wc_number_matched: dict[str, float] | None = None
    base: dict[str, float] | None = None
    intervals: dict[str, dict[str, tuple[float, float]]] = field(default_factory=dict)
    data: dict[str, dict[str, Any]] = field(default_factory=dict)
    artifacts: dict[str, dict[str, str]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_rows(self) -> list[dict[str, Any]]:
        """Long-format rows (one per data kind × metric) as ``metrics/paradigms.parquet`` holds them:
        paradigm, budget_se_samples, student, data, metric, value, ci_low, ci_high."""
        rows = []
        for kind, metrics in (("wc", self.wc_data), ("se", self.se_data),
                              ("wc_number_matched", self.wc_number_matched), ("base", self.base)):
            if metrics is None:
                continue
            for metric, value in metrics.items():
                low, high = self.intervals.get(kind, {}).get(metric, (float("nan"), float("nan")))
                rows.append(
                    {
                        "paradigm": self.paradigm,
                        "budget_se_samples": self.budget_se_samples,
                        "student": self.student,
                        "data": kind,
                        "metric": metric,
                        "value": float(value),
                        "ci_low": float(low),
                        "ci_high": float(high),
                    }
                )
        return rows


def compare_data_sources(
    paradigm: str,
    run_dir: str | Path | RunDir,
    *,
    student: str,
    wc_model: str,
    se_model: str,
    budget: int,
    test: list[Any],
    validation: list[Any] | None = None,
    train_config: TrainConfig | None = None,
    eval_config: EvalConfig | None = None,
    max_per_problem: int | None = None,
    dedupe: bool = False,
    judge_filter: bool | str = False,
    number_matched: bool = False,
    baseline: bool = False,
    prompt: Any = None,
) -> ParadigmResult:
    """Fine-tune ``student`` on WC data and on SE data of budget ``budget`` (SE samples per problem,
    resolved through the run's plan) and evaluate both on ``test``. The three paradigms call this.

    ``wc_model``/``se_model`` are the model references the samples were drawn with; ``student`` is
    loadable by transformers (an HF id, a directory, or a name of ``flopmatch.models``' registry).
    ``prompt`` is the SFT data's :class:`flopmatch.prompts.PromptConfig` (default: the dataset's
    prompt, zero-shot); evaluation reuses whatever the data was built with.
    """
    from flopmatch.models import resolve_model

    run = run_dir if isinstance(run_dir, RunDir) else RunDir(run_dir)
    train_config = train_config or TrainConfig()
    eval_config = eval_config or EvalConfig()
    base_model = resolve_model(student)
    sft_options: dict[str, Any] = dict(
        max_per_problem=max_per_problem, dedupe=dedupe, judge_filter=judge_filter, prompt=prompt
    )

    datasets: dict[str, SFTBuildResult] = {
        "wc": build_sft(run, source_model=wc_model, budget=budget, **sft_options),
        "se": build_sft(run, source_model=se_model, budget=budget, **sft_options),
    }
    if number_matched:
        datasets["wc_number_matched"] = build_sft(
            run, source_model=wc_model, budget=budget, number_matched_to=se_model, **sft_options
        )

    results: dict[str, EvalResult] = {}
    artifacts: dict[str, dict[str, str]] = {}
    for kind, sft in datasets.items():
        name = f"{paradigm}-{model_key(student)}-on-{sft.path.name}"
        out_dir = run.model_dir(name)
        trained = train(
            sft.path, base_model=base_model, out_dir=out_dir, config=train_config, validation=validation,
            select_backend=eval_config.backend, select_max_tokens=eval_config.max_tokens,
            select_options=eval_config.backend_options,
        )
        results[kind] = _evaluate(str(out_dir), test, eval_config, run.eval_path(f"{name}-test"))
        artifacts[kind] = {"sft": str(sft.path), "model": str(trained.best or out_dir),
                           "eval": str(run.eval_path(f"{name}-test"))}
    if baseline:
        name = f"base-{model_key(student)}"
        # the student before fine-tuning: in the data's prompt format when one was given, else the
        # dataset's few-shot prompt (a model that has not learnt the format needs the exemplars)
        results["base"] = _evaluate(base_model, test, eval_config, run.eval_path(f"{name}-test"), prompt=prompt)
        artifacts["base"] = {"model": base_model, "eval": str(run.eval_path(f"{name}-test"))}

    wc, se = results["wc"].metrics, results["se"].metrics
    return ParadigmResult(
        paradigm=paradigm,
        budget_se_samples=int(budget),
        student=student,
        wc_data=dict(wc),
        se_data=dict(se),
        relative_gain={m: relative_gain(wc[m], se[m]) for m in wc if m in se},
        wc_number_matched=dict(results["wc_number_matched"].metrics) if "wc_number_matched" in results else None,
        base=dict(results["base"].metrics) if "base" in results else None,
        intervals={kind: dict(r.intervals) for kind, r in results.items()},
        data={kind: d.to_dict() for kind, d in datasets.items()},
        artifacts=artifacts,
    )


def _evaluate(model: str, test: list[Any], config: EvalConfig, out_path: Path, prompt: Any = None) -> EvalResult:
    return evaluate(
        model, test, backend=config.backend, n=config.n, ks=config.ks, temperature=config.temperature,
        top_p=config.top_p, max_tokens=config.max_tokens, greedy=config.greedy, seed=config.seed,
        backend_options=config.backend_options, out_path=out_path, prompt=prompt,
    )


def knowledge_distillation(
    run_dir: str | Path | RunDir, *, student: str, wc_model: str, se_model: str, budget: int, test: list[Any],
    **options: Any,
) -> ParadigmResult:
    """Paradigm 1: a separate ``student`` trained on WC data vs on SE data (options: see
    :func:`compare_data_sources`)."""
    return compare_data_sources(
        "knowledge_distillation", run_dir, student=student, wc_model=wc_model, se_model=se_model, budget=budget,
        test=test, **options,
    )


def self_improvement(
    run_dir: str | Path | RunDir, *, wc_model: str, se_model: str, budget: int, test: list[Any], **options: Any
) -> ParadigmResult:
    """Paradigm 2: the WC model trained on its own data (self-improvement) vs on SE data (distillation)."""
    return compare_data_sources(
        "self_improvement", run_dir, student=wc_model, wc_model=wc_model, se_model=se_model, budget=budget,
        test=test, **options,
    )


def weak_to_strong(
    run_dir: str | Path | RunDir, *, wc_model: str, se_model: str, budget: int, test: list[Any], **options: Any
) -> ParadigmResult:
    """Paradigm 3: the SE model trained on WC data (weak-to-strong improvement) vs on its own data."""
    return compare_data_sources(
        "weak_to_strong", run_dir, student=se_model, wc_model=wc_model, se_model=se_model, budget=budget,
        test=test, **options,
    )


PARADIGM_FUNCTIONS = {
    "knowledge_distillation": knowledge_distillation,
    "self_improvement": self_improvement,
    "weak_to_strong": weak_to_strong,
}
