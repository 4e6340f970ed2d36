"""Calibrating a judge on ProcessBench's human step labels (see :mod:`flopmatch.judge`)."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa

from flopmatch.judge.core import FprEstimate, Judge, JudgeItem, Judgment, fpr_estimate
from flopmatch.judge.run import LabelError
from flopmatch.problems import Problem

# --------------------------------------------------------------------------- ProcessBench calibration


@dataclass(frozen=True)
class ProcessBenchItem:
    id: str
    problem: str
    steps: tuple[str, ...]
    final_answer_correct: bool
    label: int  # 0-based index of the first wrong step; -1 when every step is right
    generator: str = ""

    @property
    def flawed(self) -> bool:
        return self.label != -1

    def to_judge_item(self, split: str = "processbench") -> JudgeItem:
        problem = Problem(problem_id=self.id, dataset="processbench", split=split, question=self.problem, answer="")
        return JudgeItem(problem, "\n\n".join(self.steps), steps=self.steps)


def load_processbench(path: str | Path, *, limit: int | None = None, seed: int = 0) -> list[ProcessBenchItem]:
    """Read a ProcessBench JSON file (an array of items) with every field checked.

    ``limit`` takes a seeded random subset (kept in file order): the files list flawed items first,
    so the first N would all be flawed.
    """
    import random

    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise LabelError(f"{path}: no such file") from None
    except ValueError as exc:
        raise LabelError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(data, list):
        raise LabelError(f"{path}: expected a JSON array of items")
    items = []
    for i, raw in enumerate(data):
        where = f"{path}: item {i}"
        if not isinstance(raw, dict):
            raise LabelError(f"{where}: expected an object")
        for name in ("id", "problem", "steps", "final_answer_correct", "label"):
            if name not in raw:
                raise LabelError(f"{where}: field {name!r} is missing")
        steps = raw["steps"]
        if not isinstance(steps, list) or not steps or not all(isinstance(s, str) for s in steps):
            raise LabelError(f"{where} ({raw['id']}): field 'steps' must be a non-empty list of strings")
        label = raw["label"]
        if isinstance(label, bool) or not isinstance(label, int) or not -1 <= label < len(steps):
            raise LabelError(f"{where} ({raw['id']}): field 'label' must be -1 or a step index < {len(steps)}, got {label!r}")
        if not isinstance(raw["final_answer_correct"], bool):
            raise LabelError(f"{where} ({raw['id']}): field 'final_answer_correct' must be true/false")
        if not isinstance(raw["problem"], str) or not raw["problem"].strip():
            raise LabelError(f"{where} ({raw['id']}): field 'problem' must be non-empty text")
        items.append(
            ProcessBenchItem(str(raw["id"]), raw["problem"], tuple(steps), raw["final_answer_correct"], label,
                             str(raw.get("generator", "")))
        )
    if limit is not None and limit < len(items):
        if limit < 1:
            raise ValueError(f"limit must be >= 1, got {limit}")
        chosen = sorted(random.Random(seed).sample(range(len(items)), limit))
        items = [items[i] for i in chosen]
    return items


@dataclass(frozen=True)
class JudgeEvalResult:
    """Agreement of a judge with human step labels (ProcessBench)."""

    n: int
    n_flawed: int
    unparseable: int
    tp: int
    fp: int
    fn: int
    tn: int
    precision: float
    recall: float
    f1: float
    step_accuracy_flawed: float  # flawed items whose first wrong step the judge found exactly
    accuracy_correct: float  # sound items the judge called valid
    processbench_f1: float  # harmonic mean of the two above (ProcessBench's own score)
    n_answer_correct: int
    human_fpr: FprEstimate  # on answer-correct items: share the humans marked flawed
    judge_fpr: FprEstimate  # on answer-correct items: share the judge marked invalid
    seconds: float
    judge: str = ""

    def as_dict(self) -> dict[str, Any]:
        out = {k: getattr(self, k) for k in self.__dataclass_fields__}
        out["human_fpr"] = self.human_fpr._asdict()
        out["judge_fpr"] = self.judge_fpr._asdict()
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> JudgeEvalResult:
        """Inverse of :meth:`as_dict` (extra keys, such as the CLI's data_file, are ignored)."""
        values = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        values["human_fpr"] = FprEstimate(**data["human_fpr"])
        values["judge_fpr"] = FprEstimate(**data["judge_fpr"])
        return cls(**values)


def _ratio(num: int, den: int) -> float:
    return num / den if den else math.nan


def score_judgments(items: Sequence[ProcessBenchItem], judgments: Sequence[Judgment], *, seconds: float = 0.0,
                    judge: str = "") -> JudgeEvalResult:
    """Precision/recall/F1 of "invalid" as a detector of flawed solutions, and FPR judge vs humans.

    ``unparseable`` counts as not flagged in precision/recall (the judge did not flag it) and is left
    out of the judge's FPR; it is reported on its own.
    """
    if len(items) != len(judgments):
        raise ValueError(f"{len(items)} items but {len(judgments)} judgments")
    tp = fp = fn = tn = exact = sound_ok = 0
    for item, j in zip(items, judgments, strict=True):
        flagged = j.status == "invalid"
        if item.flawed:
            tp += flagged
            fn += not flagged
            exact += flagged and j.first_wrong_step == item.label
        else:
            fp += flagged
            tn += not flagged
            sound_ok += j.status == "valid"
    precision, recall = _ratio(tp, tp + fp), _ratio(tp, tp + fn)
    f1 = 2 * precision * recall / (precision + recall) if tp else (0.0 if (fp or fn) else math.nan)
    n_flawed = sum(i.flawed for i in items)
    step_acc, sound_acc = _ratio(exact, n_flawed), _ratio(sound_ok, len(items) - n_flawed)
    pb_f1 = 2 * step_acc * sound_acc / (step_acc + sound_acc) if step_acc + sound_acc > 0 else 0.0
    answer_correct = [(i, j) for i, j in zip(items, judgments, strict=True) if i.final_answer_correct]
    return JudgeEvalResult(
        n=len(items),
        n_flawed=n_flawed,
        unparseable=sum(j.status == "unparseable" for j in judgments),
        tp=tp, fp=fp, fn=fn, tn=tn,
        precision=precision, recall=recall, f1=f1,
        step_accuracy_flawed=step_acc, accuracy_correct=sound_acc, processbench_f1=pb_f1,
        n_answer_correct=len(answer_correct),
        human_fpr=fpr_estimate(not i.flawed for i, _ in answer_correct),
        judge_fpr=fpr_estimate(j for _, j in answer_correct),
        seconds=seconds,
        judge=judge,
    )


def evaluate_judge(judge: Judge, items: Sequence[ProcessBenchItem], *, split: str = "processbench"
                   ) -> tuple[JudgeEvalResult, list[Judgment]]:
    """Run ``judge`` on ProcessBench items and score it against the human labels (timed)."""
    start = time.perf_counter()
    judgments = judge.judge([item.to_judge_item(split) for item in items])
    seconds = time.perf_counter() - start
    return score_judgments(items, judgments, seconds=seconds, judge=judge.name), judgments


def plot_judge_eval(result: JudgeEvalResult, path: str | Path, title: str = "") -> Path:
    """One figure for a judge-eval: detection scores (left) and FPR judge vs humans with Wilson CIs (right)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.6), gridspec_kw={"width_ratios": [3, 2]})
    names = ["precision", "recall", "F1", "step exact\n(flawed)", "called valid\n(sound)"]
    values = [result.precision, result.recall, result.f1, result.step_accuracy_flawed, result.accuracy_correct]
    values = [0.0 if math.isnan(v) else v for v in values]
    bars = left.bar(names, values, color=["C0", "C0", "C0", "C2", "C2"])
    left.bar_label(bars, labels=[f"{100 * v:.0f}%" for v in values], fontsize=8)
    left.set(ylim=(0, 1.1), ylabel="share",
             title=f"flagging flawed solutions (n={result.n}, {result.n_flawed} flawed)")
    left.tick_params(axis="x", labelsize=8)
    for i, (label, est) in enumerate((("humans", result.human_fpr), ("judge", result.judge_fpr))):
        if est.n:
            right.errorbar([i], [est.fpr], yerr=[[est.fpr - est.lo], [est.hi - est.fpr]], fmt="o", capsize=6,
                           color="C3" if label == "humans" else "C0")
            right.annotate(f"{100 * est.fpr:.1f}%", (i, est.fpr), textcoords="offset points", xytext=(10, 0),
                           fontsize=8)
    right.set_xticks([0, 1], ["humans", "judge"])
    right.set(xlim=(-0.5, 1.5), ylim=(0, 1), ylabel="FPR",
              title=f"FPR on answer-correct (n={result.n_answer_correct})")
    fig.suptitle(title or f"{result.judge}: {result.seconds:.0f} s ({result.seconds / max(result.n, 1):.1f} s/item)",
                 fontsize=9)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    tmp.replace(path)
    return path


def judgments_table(items: Sequence[ProcessBenchItem], judgments: Sequence[Judgment], judge: str) -> pa.Table:
    """Per-item judge-eval results (for --out): the human label beside the judge's verdict."""
    return pa.Table.from_pylist(
        [
            {
                "id": i.id,
                "final_answer_correct": i.final_answer_correct,
                "label": i.label,
                "status": j.status,
                "first_wrong_step": j.first_wrong_step,
                "explanation": j.explanation,
                "raw": j.raw,
                "judge": judge,
            }
            for i, j in zip(items, judgments, strict=True)
        ]
    )
