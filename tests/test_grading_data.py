"""The grader on real data (../shared/data): reference solutions and ProcessBench's human labels.

Figures at the time of writing (math-verify 0.9.0):

* GSM8K test: 1,319 / 1,319 reference solutions grade ``correct`` against their own gold.
* MATH500: 500 / 500 reference solutions from MATH test 5000 (matched on problem text) grade
  ``correct`` against MATH500's ``answer``. The one near-exception: problem
  ``test/number_theory/1147`` boxes 44 and then ends "…, so our answer is correct." — a boxed answer
  outranks answer phrases, and a verdict ("correct") is never taken for an answer.
* ProcessBench, final answer of the last step vs ``final_answer_correct``: GSM8K 396 / 400 and MATH
  968 / 1000 agree. Every disagreement is explained in ``PROCESSBENCH_EXCEPTIONS`` below: label noise
  where the grader is mathematically right (411/333 = 137/111, 23/2 = 11.5, ...), last steps that
  state the answer in prose with no marker (strict extraction for MATH by design: only an explicit
  answer is graded), and two generous human readings.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from flopmatch import problems
from flopmatch.grading import grade_many

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
pytestmark = pytest.mark.skipif(not DATA.is_dir(), reason=f"the shared benchmark data is not at {DATA}")


def _key(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


@pytest.fixture(scope="module")
def math5000() -> dict[str, problems.Problem]:
    return {_key(p.question): p for p in problems.load("math", split="test", data_file=DATA)}


@pytest.fixture(scope="module")
def gsm8k_test() -> list[problems.Problem]:
    return problems.load("gsm8k", split="test", data_file=DATA / "gsm8k" / "test.jsonl")


def test_every_gsm8k_reference_solution_grades_correct(gsm8k_test: list[problems.Problem]) -> None:
    assert len(gsm8k_test) == 1319
    grades = grade_many(
        [(p.solution, p.answer) for p in gsm8k_test], dataset="gsm8k", workers=2, progress=False
    )
    wrong = [(p.problem_id, g) for p, g in zip(gsm8k_test, grades, strict=True) if g.status != "correct"]
    assert wrong == []


def test_math500_reference_solutions_grade_correct_against_math500_answers(math5000) -> None:
    math500 = problems.load("math500", split="test", data_file=DATA)
    assert len(math500) == 500
    references = [math5000[_key(p.question)].solution for p in math500]
    grades = grade_many(
        [(ref, p.answer) for ref, p in zip(references, math500, strict=True)],
        dataset="math500",
        workers=2,
        progress=False,
    )
    wrong = [
        (p.problem_id, p.answer, g) for p, g in zip(math500, grades, strict=True) if g.status != "correct"
    ]
    assert wrong == []


# id -> (our status, why we disagree with final_answer_correct)
PROCESSBENCH_EXCEPTIONS: dict[str, tuple[str, str]] = {
    # label noise: the final answer equals the gold, labelled incorrect
    "gsm8k-70": ("correct", "boxes 59, the gold; labelled incorrect"),
    "gsm8k-74": ("correct", "boxes 2, the gold; labelled incorrect"),
    "math-50": ("correct", "boxes 7, the gold, amid a rambling last step; labelled incorrect"),
    "math-123": ("correct", "411/333 = 137/111"),
    "math-221": ("correct", "23/2 = 11.5"),
    "math-247": ("correct", "-58/87 = -2/3"),
    "math-248": ("correct", "10.5 pi = 21/2 pi"),
    "math-278": ("correct", "a:b = 1/2 states the ratio 1:2"),
    "math-392": ("correct", "1/(sin x cos x) - tan x = cot x"),
    # generous human readings
    "gsm8k-319": ("wrong", "boxes '4 blue shoe boxes and 6 red shoe boxes'; the gold is their total, 10"),
    "gsm8k-238": ("wrong", "prose ends '34 hours ... in 4 weeks': the trailing-number fallback takes 4"),
}
# MATH last steps that state their (right) answer in prose, with no \boxed or answer phrase:
# strict extraction reports no_answer for them. Labelled correct by ProcessBench.
PROCESSBENCH_PROSE_ONLY = {
    "math-542", "math-547", "math-553", "math-571", "math-588", "math-601", "math-633", "math-679",
    "math-680", "math-687", "math-729", "math-740", "math-766", "math-783", "math-791", "math-837",
    "math-865", "math-890", "math-895", "math-902", "math-925", "math-926", "math-957", "math-975",
    "math-999",
}  # fmt: skip


def test_the_goldens_math_verify_is_pinned_and_installed():
    """The counts and exception lists here were graded with math-verify 0.9.0; another version may grade
    a borderline answer differently, so pyproject pins it and this is the version that runs."""
    import importlib.metadata
    import tomllib

    pyproject = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())
    assert "math-verify==0.9.0" in pyproject["project"]["dependencies"]
    assert importlib.metadata.version("math-verify") == "0.9.0"


@pytest.mark.parametrize(
    ("name", "dataset", "expected_agree"), [("gsm8k", "gsm8k", 396), ("math", "math", 968)]
)
def test_processbench_final_answers_agree_with_human_labels(
    name: str, dataset: str, expected_agree: int, math5000, gsm8k_test
) -> None:
    items = json.loads((DATA / "processbench" / f"{name}.json").read_text())
    gold_of = {_key(p.question): p.answer for p in (gsm8k_test if name == "gsm8k" else math5000.values())}
    pairs = [(item["steps"][-1], gold_of[_key(item["problem"])]) for item in items]
    grades = grade_many(pairs, dataset=dataset, workers=2, progress=False)
    disagree = {
        item["id"]: g
        for item, g in zip(items, grades, strict=True)
        if (g.status == "correct") != item["final_answer_correct"]
    }
    assert len(items) - len(disagree) == expected_agree
    for item_id, g in disagree.items():
        if item_id in PROCESSBENCH_PROSE_ONLY:
            assert g.status == "no_answer", (item_id, g)
        else:
            assert item_id in PROCESSBENCH_EXCEPTIONS, (item_id, g)
            assert g.status == PROCESSBENCH_EXCEPTIONS[item_id][0], (item_id, g)
