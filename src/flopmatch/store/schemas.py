"""Every table of a run directory, with its Arrow schema, in one place.

``sample_idx`` is int64 in every table (sample shards written before this used int32; readers cast them
with :func:`flopmatch.store.read_shards` and ``schema=SAMPLE_SCHEMA``).
"""

from __future__ import annotations

import pyarrow as pa

from flopmatch.record import PROBLEM_SCHEMA

#: ``samples/<model>/part-*.parquet``: one row per sample.
SAMPLE_SCHEMA = pa.schema(
    [
        ("model", pa.string()),
        ("problem_id", pa.string()),
        ("sample_idx", pa.int64()),
        ("seed", pa.int64()),
        ("text", pa.string()),
        ("prompt_tokens", pa.int32()),  # prefilled for this sample: a vLLM request charges its first sample
        ("completion_tokens", pa.int32()),
        ("finish_reason", pa.string()),
        ("backend", pa.string()),
        ("seeding", pa.string()),  # "per-request": seed made this sample; "engine": engine-level seed
        ("seconds", pa.float64()),  # wall seconds attributed to this sample (batch time / batch size)
        ("session_id", pa.string()),  # the ledger session that generated it
    ]
)

#: ``grades/<model>.parquet``: one row per graded sample.
GRADE_SCHEMA = pa.schema(
    [
        ("model", pa.string()),
        ("problem_id", pa.string()),
        ("sample_idx", pa.int64()),
        ("status", pa.string()),
        ("extracted", pa.string()),
        ("gold", pa.string()),
        ("detail", pa.string()),
    ]
)

#: ``judgments/<model>.parquet``: one row per (sample, judge).
JUDGMENT_SCHEMA = pa.schema(
    [
        ("model", pa.string()),
        ("problem_id", pa.string()),
        ("sample_idx", pa.int64()),
        ("status", pa.string()),
        ("first_wrong_step", pa.int64()),
        ("explanation", pa.string()),
        ("judge", pa.string()),
        ("raw", pa.string()),
    ]
)

#: ``judgments/human/<model>.parquet``: people's verdicts on answer-correct samples.
HUMAN_SCHEMA = pa.schema(
    [
        ("model", pa.string()),
        ("problem_id", pa.string()),
        ("sample_idx", pa.int64()),
        ("valid", pa.bool_()),
        ("source", pa.string()),
    ]
)

#: ``ledger.parquet``: one row per sampling session.
LEDGER_SCHEMA = pa.schema(
    [
        ("session_id", pa.string()),
        ("model", pa.string()),
        ("model_key", pa.string()),
        ("backend", pa.string()),
        ("seeding", pa.string()),  # "per-request" | "engine"
        ("replicas", pa.int32()),
        ("status", pa.string()),  # one of flopmatch.ledger.STATUSES
        ("samples", pa.int64()),
        ("errors", pa.int64()),
        ("prompt_tokens", pa.int64()),
        ("completion_tokens", pa.int64()),
        ("truncated", pa.int64()),
        ("seconds", pa.float64()),
        ("startup_seconds", pa.float64()),
        ("params", pa.int64()),
        ("nominal_flops", pa.float64()),
        ("prompt_flops", pa.float64()),
        ("started_at", pa.timestamp("ms", tz="UTC")),
        ("updated_at", pa.timestamp("ms", tz="UTC")),
    ]
)

#: ``evals/<name>.parquet``: one row per evaluation answer.
EVAL_SCHEMA = pa.schema(
    [
        ("model", pa.string()),
        ("lora_path", pa.string()),
        ("problem_id", pa.string()),
        ("dataset", pa.string()),
        ("mode", pa.string()),  # "greedy" | "sample"
        ("sample_idx", pa.int64()),
        ("seed", pa.int64()),
        ("text", pa.string()),
        ("extracted", pa.string()),
        ("gold", pa.string()),
        ("status", pa.string()),
        ("completion_tokens", pa.int64()),
        ("finish_reason", pa.string()),
    ]
)

#: ``metrics/cost.parquet``: what each plan budget cost per role, from the sample tables (the analysis
#: writes it; the report reads it instead of the samples). For WC the first ``wc_samples`` samples of
#: each problem, for SE the first ``se_samples``; nominal FLOPs are 2·P·(generated tokens).
COST_SCHEMA = pa.schema(
    [
        ("budget_se_samples", pa.int64()),
        ("role", pa.string()),
        ("samples_per_problem", pa.int64()),
        ("samples", pa.int64()),
        ("completion_tokens", pa.float64()),
        ("mean_tokens", pa.float64()),
        ("nominal_flops", pa.float64()),
        ("planned_flops", pa.float64()),
        ("seconds", pa.float64()),
    ]
)

#: ``metrics/pilot_vs_measured.parquet`` (a ``budget.mode: advised`` run): each budget's advised and single-model
#: forecasts of ``pilot/advice.json`` next to what the whole sample split measured (the analysis writes it from
#: the samples it reads anyway; the report's "Pilot forecast vs measured" reads it, not the samples).
PILOT_VS_MEASURED_SCHEMA = pa.schema(
    [
        ("budget_se_samples", pa.int64()),
        ("budget_wc_samples", pa.int64()),
        ("role", pa.string()),  # "advised" or "alone" (a single model's allocation)
        ("allocation", pa.string()),
        ("forecast", pa.float64()),
        ("forecast_low", pa.float64()),
        ("forecast_high", pa.float64()),
        ("measured", pa.float64()),
        ("measured_low", pa.float64()),
        ("measured_high", pa.float64()),
        ("problems", pa.int64()),
        ("objective", pa.string()),
        ("decided", pa.bool_()),
    ]
)

#: Columns of the analysis's tables in ``metrics/`` (written from pandas, so listed as columns).
SUMMARY_COLUMNS = [
    "model", "role", "budget_se_samples", "samples_per_problem", "metric", "k", "value", "ci_low", "ci_high",
    "n_problems", "n", "group",
]  # fmt: skip
#: ``metrics/coverage_curve.parquet``: coverage against k samples per problem.
CURVE_COLUMNS = ["model", "k", "value", "ci_low", "ci_high", "n_problems"]
MATCHED_COLUMNS = [
    "budget_se_samples", "wc_samples", "metric", "wc_value", "se_value", "relative", "relative_text",
    "wc_ci_low", "wc_ci_high", "se_ci_low", "se_ci_high", "n_problems",
]  # fmt: skip
#: ``metrics/allocation.parquet`` (flopmatch.allocation_metrics): per model and policy, its samples per problem
#: and what all of them hold at the FLOPs spent.
ALLOCATION_COLUMNS = [
    "model", "allocation", "objective", "rounds", "problems", "samples", "samples_min", "samples_q25",
    "samples_median", "samples_q75", "samples_max", "coverage", "coverage_low", "coverage_high",
    "unique_per_problem", "unique_low", "unique_high", "flops", "coverage_per_pflop", "unique_per_pflop",
]  # fmt: skip
#: ``metrics/allocation_curve.parquet``: coverage and unique correct against FLOPs spent (not
#: :data:`CURVE_COLUMNS`, which is coverage against k).
ALLOCATION_CURVE_COLUMNS = ["model", "allocation", "point", "flops", "samples", "coverage", "unique_per_problem"]
#: ``metrics/allocation_counts.parquet``: samples and correct samples of each problem.
ALLOCATION_COUNT_COLUMNS = ["model", "allocation", "problem_id", "samples", "correct", "unique_correct"]
#: ``metrics/comparisons.parquet`` (flopmatch.comparisons): one row per paradigm × budget × metric × comparison.
COMPARISON_COLUMNS = [
    "paradigm", "budget_se_samples", "wc_samples", "student", "metric", "comparison", "treatment", "baseline",
    "se", "wc", "diff", "ci_low", "ci_high", "test", "p_value", "p_adjusted", "seeds", "test_problems",
    "discordance", "mde", "mde_relative", "seed_discordance", "seed_sd", "verdict",
]  # fmt: skip

__all__ = [
    "ALLOCATION_COLUMNS",
    "ALLOCATION_COUNT_COLUMNS",
    "ALLOCATION_CURVE_COLUMNS",
    "COMPARISON_COLUMNS",
    "COST_SCHEMA",
    "CURVE_COLUMNS",
    "EVAL_SCHEMA",
    "GRADE_SCHEMA",
    "HUMAN_SCHEMA",
    "JUDGMENT_SCHEMA",
    "LEDGER_SCHEMA",
    "MATCHED_COLUMNS",
    "PILOT_VS_MEASURED_SCHEMA",
    "PROBLEM_SCHEMA",
    "SAMPLE_SCHEMA",
    "SUMMARY_COLUMNS",
]
