"""Quick self-contained measurements of the toy models (used by tests and benchmarks/toyworld_models.py).

flopmatch's own sampling, grading and metrics stages are the product; these helpers exist so that the
toy world can show, on its own, that its models land where a study is interesting: a greedy pass@1,
coverage@k at compute-matched budgets and the exact false-positive rate.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from math import comb
from pathlib import Path

from flopmatch.progress import progress_bar
from flopmatch.record import Problem
from flopmatch.toyworld.checker import StepCheck, check_solution
from flopmatch.toyworld.models import format_prompt


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from ``n`` samples of which ``c`` are correct: 1 - C(n-c, k) / C(n, k)."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"need 0 <= c <= n and 1 <= k <= n, got n={n} c={c} k={k}")
    if n - c < k:
        return 1.0
    return 1.0 - comb(n - c, k) / comb(n, k)


def hf_generate(
    model_dir: str | Path,
    problems: Sequence[Problem],
    *,
    n: int = 1,
    temperature: float = 0.0,
    top_p: float = 1.0,
    max_new_tokens: int = 96,
    batch_size: int = 128,
    seed: int = 0,
    progress: bool = False,
) -> list[list[str]]:
    """``n`` completions per problem with transformers ``generate`` (greedy when temperature is 0)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    tok.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(str(model_dir))
    model.eval()
    torch.manual_seed(seed)
    prompts = [format_prompt(p.question) for p in problems for _ in range(n)]
    texts: list[str] = []
    for start in progress_bar(desc="generate", enabled=progress, iterable=range(0, len(prompts), batch_size)):
        chunk = prompts[start : start + batch_size]
        enc = tok(chunk, return_tensors="pt", padding=True, add_special_tokens=False)
        with torch.no_grad():
            out = model.generate(
                **enc,
                max_new_tokens=max_new_tokens,
                do_sample=temperature > 0,
                temperature=temperature if temperature > 0 else None,
                top_p=top_p if temperature > 0 else None,
                top_k=0 if temperature > 0 else None,
                eos_token_id=tok.eos_token_id,
                pad_token_id=tok.pad_token_id,
            )
        texts += tok.batch_decode(out[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
    return [texts[i * n : (i + 1) * n] for i in range(len(problems))]


@dataclass(frozen=True)
class SampleStats:
    """Per-model figures from ``n`` samples per problem."""

    n_problems: int
    n_samples: int
    accuracy: float  # share of samples with the right answer
    coverage: dict[int, float]  # k -> mean unbiased pass@k
    fpr: float  # answer-correct samples with an invalid step / answer-correct samples
    n_correct: int
    n_false_positive: int


def sample_stats(problems: Sequence[Problem], samples: Sequence[Sequence[str]], ks: Sequence[int]) -> SampleStats:
    checks: list[list[StepCheck]] = [
        [check_solution(p, text) for text in texts] for p, texts in zip(problems, samples, strict=True)
    ]
    n = len(samples[0])
    coverage = {k: sum(pass_at_k(n, sum(c.answer_correct for c in row), k) for row in checks) / len(checks)
                for k in ks}
    correct = [c for row in checks for c in row if c.answer_correct]
    fp = sum(c.false_positive for c in correct)
    return SampleStats(
        n_problems=len(problems),
        n_samples=n,
        accuracy=len(correct) / (n * len(problems)),
        coverage=coverage,
        fpr=fp / len(correct) if correct else 0.0,
        n_correct=len(correct),
        n_false_positive=fp,
    )


def teacher_forced_accuracy(model, tok, problems: Sequence[Problem]) -> tuple[float, float]:
    """(token accuracy, exact-match rate) of the model's argmax on the reference solutions.

    One forward pass, no decoding: exact match means greedy decoding would write the reference
    solution verbatim, a cheap lower bound on greedy pass@1 used to follow training.
    """
    import torch

    rows, spans = [], []
    for p in problems:
        p_ids = tok(format_prompt(p.question), add_special_tokens=False)["input_ids"]
        s_ids = tok(p.solution, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        rows.append(p_ids + s_ids)
        spans.append((len(p_ids), len(p_ids) + len(s_ids)))
    width = max(len(r) for r in rows)
    ids = torch.tensor([r + [tok.pad_token_id] * (width - len(r)) for r in rows])
    with torch.no_grad():
        pred = model(input_ids=ids).logits.argmax(-1)
    right = total = exact = 0
    for i, (a, b) in enumerate(spans):
        ok = pred[i, a - 1 : b - 1] == ids[i, a:b]
        right += int(ok.sum())
        total += b - a
        exact += bool(ok.all())
    return right / total, exact / len(problems)
