"""Benchmark: flopmatch's ``grade_many`` vs a plain serial loop of math-verify ``parse`` + ``verify``.

Builds a realistic sampling run from real problems (../shared/data): for each GSM8K test and
MATH500 problem, ~30 responses made of the problem's reference reasoning followed by a final answer
in one of the formats models use (``\\boxed{}``, "The answer is …", ``####``, Minerva's "Final
Answer: …", bold), drawn from a handful of candidates per problem — the gold in equivalent forms,
plausible wrong answers, another problem's answer — so answers repeat as they do when sampling.
Some responses are truncated (no final answer) and a few are pathological (``9^{9^{9^{9}}}``,
``(10^{10})!``, a 5^5^5^5 tower).

Both graders run on the same pairs in this one run:

* flopmatch: ``grade_many(pairs, workers=W)``, worker start-up included in its time;
* baseline: ``verify(parse(gold), parse(response))`` per pair, serially, in one child process
  (math-verify imported and warm before the clock starts). math-verify's own 5 s timeouts apply;
  an item that hangs past ``--baseline-cap`` seconds anyway is killed, counted as "did not finish",
  and charged the time it took.

Prints both throughputs, the ratio, and verdict agreement on the pairs where the baseline finished,
with examples of each kind of disagreement. Run: ``python benchmarks/grading.py [--problems N]``.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import random
import re
import time
from collections import Counter
from fractions import Fraction
from pathlib import Path

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"

PATHOLOGICAL = [
    r"\boxed{9^{9^{9^{9}}}}",
    r"\boxed{(10^{10})!}",
    r"\boxed{\dfrac{5^{\left(5^{\left(5^{\left(5^5\right)}\right)} - 4\right)} - 5}{16}}",
]


# --------------------------------------------------------------------------- the data set


def _load(n_gsm8k: int, n_math: int) -> list[dict]:
    gsm = [json.loads(line) for line in (DATA / "gsm8k" / "test.jsonl").open()][:n_gsm8k]
    m500 = [json.loads(line) for line in (DATA / "math" / "math500_test.jsonl").open()][:n_math]
    out = []
    for row in gsm:
        body, gold = row["answer"].rsplit("####", 1)
        body = re.sub(r"<<[^>]*>>", "", body).strip()  # models do not write calculator annotations
        out.append({"dataset": "gsm8k", "body": body, "gold": gold.strip().replace(",", "")})
    for row in m500:
        body = row["solution"]
        cut = body.rfind("\\boxed")
        body = body[:cut].rstrip(" $\\[(") if cut > 0 else body
        out.append({"dataset": "math500", "body": body, "gold": row["answer"]})
    return out


def _number(text: str) -> Fraction | None:
    if "_" in text:  # "204_5" is a base-5 numeral, not Python's 2045
        return None
    try:
        return Fraction(text)
    except (ValueError, ZeroDivisionError):
        return None


def _candidates(problem: dict, other_gold: str, rng: random.Random) -> tuple[list[str], list[str]]:
    """(right answers in equivalent forms, wrong answers) for one problem."""
    gold = problem["gold"]
    value = _number(gold)
    if value is not None:
        right = [gold, f"{float(value):.2f}" if value.denominator == 1 else gold]
        if problem["dataset"] == "math500" and value.denominator == 1:
            right.append(f"\\frac{{{2 * value.numerator}}}{{2}}")
        wrong = [str(value + 1), str(value * 2), str(value - rng.randint(2, 9)), other_gold]
    else:
        variant = (
            gold.replace("\\frac", "\\dfrac")
            if "\\frac" in gold
            else gold.replace("\\left", "").replace("\\right", "")
        )
        right = [gold, variant]
        digits = [i for i, ch in enumerate(gold) if ch.isdigit()]
        wrong = [other_gold]
        for _ in range(3):
            if digits:
                i = rng.choice(digits)
                wrong.append(gold[:i] + str((int(gold[i]) + rng.randint(1, 8)) % 10) + gold[i + 1 :])
            else:
                wrong.append(gold + "+1")
    # another problem's gold, or a mutation, can equal this gold: such a candidate is not wrong
    wrong = [
        w
        for w in wrong
        if w != gold and w.split("=")[-1].strip() != gold and (value is None or _number(w) != value)
    ]
    return right, wrong or [str(rng.randint(10**6, 10**7))]


def _render(problem: dict, answer: str, rng: random.Random) -> str:
    body = problem["body"]
    if problem["dataset"] == "gsm8k":
        style = rng.choice(
            [
                "The answer is {a}.",
                "Therefore, the final answer is $\\boxed{{{a}}}$.",
                "#### {a}",
                "So the total is **{a}**.",
                "\\boxed{{{a}}}",
            ]
        )
    else:
        style = rng.choice(
            [
                "Final Answer: The final answer is ${a}$. I hope it is correct.",
                "Therefore, the answer is $\\boxed{{{a}}}$.",
                "So the final answer is \\boxed{{{a}}}.",
            ]
        )
    return body + "\n\n" + style.format(a=answer)


def make_pairs(
    n_gsm8k: int, n_math: int, per_problem: int, seed: int = 0
) -> tuple[list[tuple[str, str]], list[str], list[str]]:
    """``(response, gold)`` pairs, their dataset names, and what each response is (``right``,
    ``wrong``, ``truncated``, ``pathological``)."""
    rng = random.Random(seed)
    problems = _load(n_gsm8k, n_math)
    pairs, datasets, kinds = [], [], []
    for k, problem in enumerate(problems):
        same = [p for p in problems if p["dataset"] == problem["dataset"]]
        other = same[(same.index(problem) + 1) % len(same)]["gold"]
        right, wrong = _candidates(problem, other, rng)
        skill = rng.random()  # how often "the model" gets this problem right
        for _ in range(per_problem):
            roll = rng.random()
            if roll < 0.07:
                cut = rng.randint(
                    len(problem["body"]) // 3, max(len(problem["body"]) // 3 + 1, len(problem["body"]) - 1)
                )
                text, kind = problem["body"][:cut], "truncated"  # no final answer
            elif roll < 0.07 + skill * 0.93:
                text, kind = _render(problem, rng.choice(right), rng), "right"
            else:
                text, kind = _render(problem, rng.choice(wrong), rng), "wrong"
            pairs.append((text, problem["gold"]))
            datasets.append(problem["dataset"])
            kinds.append(kind)
        if k % 70 == 0:  # a few pathological answers across the run
            pairs.append(
                (problem["body"] + "\n\nThe answer is " + PATHOLOGICAL[(k // 70) % 3] + ".", problem["gold"])
            )
            datasets.append(problem["dataset"])
            kinds.append("pathological")
    return pairs, datasets, kinds


# --------------------------------------------------------------------------- the baseline


def _baseline_child(conn, pairs: list[tuple[str, str]], start: int) -> None:
    import logging

    from math_verify import parse, verify

    logging.getLogger("math_verify").setLevel(logging.CRITICAL)
    verify(parse("\\boxed{1}"), parse("The answer is 1."))  # warm: imports and parser set-up
    conn.send(("ready",))
    for i in range(start, len(pairs)):
        response, gold = pairs[i]
        ok = verify(parse("\\boxed{" + gold + "}"), parse(response))
        conn.send(("item", i, bool(ok)))
    conn.send(("done",))


def run_baseline(pairs: list[tuple[str, str]], cap: float) -> tuple[list[bool | None], float, int]:
    """Verdicts (``None``: did not finish), seconds on the clock, killed items."""
    ctx = mp.get_context("spawn")
    verdicts: list[bool | None] = [None] * len(pairs)
    start, seconds, killed = 0, 0.0, 0
    while start < len(pairs):
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=_baseline_child, args=(child, pairs, start), daemon=True)
        proc.start()
        child.close()
        assert parent.recv() == ("ready",)
        clock = time.perf_counter()
        nxt = start
        while True:
            if not parent.poll(cap):
                proc.kill()
                proc.join()
                killed += 1
                nxt += 1  # the stuck item did not finish
                break
            message = parent.recv()
            if message[0] == "done":
                proc.join()
                nxt = len(pairs)
                break
            _, i, ok = message
            verdicts[i] = ok
            nxt = i + 1
        seconds += time.perf_counter() - clock
        start = nxt
    return verdicts, seconds, killed


# --------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gsm8k", type=int, default=400, help="GSM8K test problems")
    parser.add_argument("--math", type=int, default=300, help="MATH500 problems")
    parser.add_argument("--per-problem", type=int, default=30)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=5.0)
    parser.add_argument(
        "--baseline-cap", type=float, default=60.0, help="kill a baseline item after this long"
    )
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()

    from flopmatch.grading import grade_many

    pairs, datasets, made = make_pairs(args.gsm8k, args.math, args.per_problem)
    distinct = len({(g, r) for r, g in pairs})
    print(
        f"pairs: {len(pairs)} ({args.gsm8k} GSM8K + {args.math} MATH500 problems x {args.per_problem}, "
        f"+ pathological); distinct responses: {distinct}"
    )

    clock = time.perf_counter()
    grades = grade_many(pairs, dataset=datasets, workers=args.workers, timeout=args.timeout, progress=False)
    ours = time.perf_counter() - clock
    statuses = Counter(g.status for g in grades)
    print(
        f"flopmatch grade_many (workers={args.workers}): {ours:.1f} s, {len(pairs) / ours:.0f} responses/s; "
        f"statuses {dict(statuses)}"
    )

    verdicts, base, killed = run_baseline(pairs, args.baseline_cap)
    finished = [i for i, v in enumerate(verdicts) if v is not None]
    print(
        f"math-verify serial parse+verify: {base:.1f} s, {len(pairs) / base:.0f} responses/s; "
        f"finished {len(finished)}/{len(pairs)} (killed after {args.baseline_cap:g} s: {killed})"
    )
    print(f"speed-up: {base / ours:.1f}x")

    agree = [i for i in finished if (grades[i].status == "correct") == verdicts[i]]
    print(
        f"verdict agreement where math-verify finished: {len(agree)}/{len(finished)} "
        f"({len(agree) / max(1, len(finished)):.2%})"
    )
    complete = [i for i in finished if made[i] in ("right", "wrong")]
    ok_ours = sum((grades[i].status == "correct") == (made[i] == "right") for i in complete)
    ok_mv = sum(verdicts[i] == (made[i] == "right") for i in complete)
    print(
        f"  complete responses (a stated final answer, right or wrong by construction): {len(complete)}; "
        f"verdict as constructed: flopmatch {ok_ours}, math-verify {ok_mv}"
    )
    kinds = Counter()
    examples: dict[str, list[int]] = {}
    for i in finished:
        ours_ok = grades[i].status == "correct"
        if ours_ok != verdicts[i]:
            kind = (
                f"{made[i]} responses: flopmatch {grades[i].status} / "
                f"math-verify {'correct' if verdicts[i] else 'wrong'}"
            )
            kinds[kind] += 1
            examples.setdefault(kind, []).append(i)
    for kind, count in kinds.most_common():
        print(f"  {count:5d}  {kind}")
        for i in examples[kind][:3]:
            tail = pairs[i][0][-90:].replace("\n", " ")
            print(f"         gold {pairs[i][1]!r}  extracted {grades[i].extracted!r}  ...{tail!r}")
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "pairs": len(pairs),
                    "distinct": distinct,
                    "ours_s": ours,
                    "baseline_s": base,
                    "speedup": base / ours,
                    "baseline_finished": len(finished),
                    "baseline_killed": killed,
                    "agreement": len(agree) / max(1, len(finished)),
                    "statuses": dict(statuses),
                    "disagreements": dict(kinds),
                },
                indent=2,
            )
        )


if __name__ == "__main__":
    main()
