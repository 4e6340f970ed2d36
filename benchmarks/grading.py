"""Benchmark: flopmatch's ``grade_many`` vs math-verify ``parse`` + ``verify``, serial and in a process pool.

Builds a realistic sampling run from real problems (../shared/data): for each GSM8K test and
MATH500 problem, ~30 responses made of the problem's reference reasoning followed by a final answer
in one of the formats models use (``\\boxed{}``, "The answer is …", ``####``, Minerva's "Final
Answer: …", bold), drawn from a handful of candidates per problem — the gold in equivalent forms,
plausible wrong answers, another problem's answer — so answers repeat as they do when sampling.
Some responses are truncated (no final answer) and a few are pathological (``9^{9^{9^{9}}}``,
``(10^{10})!``, a 5^5^5^5 tower).

All graders run on the same pairs in this one run, with the same per-item limit ``--timeout``
(math-verify's own parse/verify timeouts and a hard kill of an item still running after it; for
flopmatch, its per-answer limit), and with their worker processes started and warm before the clock:

* math-verify serial: ``verify(parse(gold), parse(response))`` per pair in one child process;
* math-verify pool: the same call mapped over the pairs by a ``concurrent.futures.ProcessPoolExecutor``
  of ``--workers`` processes, as verl's reward managers do (TRL's math reward calls it serially); a
  worker stuck past the limit is killed and the pool restarted (restart time not charged);
* flopmatch ``grade_many`` on an open pool of ``--workers`` checkers, four ways: as shipped, without
  de-duplication of identical pairs (``dedupe=False``), without the exact fast path for plain numbers
  (``fast_path=False``), and without either; plus once cold (starting its own pool, as users call it).

The speed-up over the serial loop splits into factors that multiply back to it: parallelism (serial →
pool), the per-check work (pool → flopmatch with neither switch: answers extracted in the parent and
math-verify run on the extracted answer only, each gold parsed once per task), the exact fast path,
and duplicate-pair caching (in both orders, since they overlap). Prints the table, the factors and
verdict agreement. Run: ``python benchmarks/grading.py [--gsm8k N] [--math N] [--per-problem K]``.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import os
import random
import re
import signal
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


# --------------------------------------------------------------------------- the math-verify baselines


def math_verify_item(gold: str, response: str, timeout: float) -> bool:
    """The baseline's check of one pair: what TRL's and verl's math-verify rewards call."""
    from math_verify import parse, verify

    seconds = max(1, math.ceil(timeout))  # math-verify's alarms take whole seconds
    gold_parsed = parse("\\boxed{" + gold + "}", parsing_timeout=seconds)
    return bool(verify(gold_parsed, parse(response, parsing_timeout=seconds), timeout_seconds=seconds))


def _warm_math_verify() -> None:
    import logging

    logging.getLogger("math_verify").setLevel(logging.CRITICAL)
    math_verify_item("1", "The answer is \\boxed{1}.", 5.0)  # imports and parser set-up


def _baseline_child(conn, pairs: list[tuple[str, str]], start: int, timeout: float) -> None:
    _warm_math_verify()
    conn.send(("ready",))
    for i in range(start, len(pairs)):
        response, gold = pairs[i]
        conn.send(("item", i, math_verify_item(gold, response, timeout)))
    conn.send(("done",))


def run_baseline(pairs: list[tuple[str, str]], cap: float) -> tuple[list[bool | None], float, int]:
    """Serial math-verify: verdicts (``None``: did not finish), seconds on the clock, killed items."""
    ctx = mp.get_context("spawn")
    verdicts: list[bool | None] = [None] * len(pairs)
    start, seconds, killed = 0, 0.0, 0
    while start < len(pairs):
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=_baseline_child, args=(child, pairs, start, cap), daemon=True)
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


# Each pool worker's slot: the item it is checking and since when (time.monotonic, system-wide on Linux).
_SLOT: list = []


def _pool_worker_init(pids, items, started, slots, ready) -> None:
    with slots.get_lock():
        slot = slots.value
        slots.value += 1
    pids[slot] = os.getpid()
    _SLOT[:] = [slot, items, started]
    _warm_math_verify()
    with ready.get_lock():
        ready.value += 1


def _pool_item(i: int, response: str, gold: str, timeout: float) -> tuple[int, bool]:
    slot, items, started = _SLOT
    items[slot], started[slot] = i, time.monotonic()
    ok = math_verify_item(gold, response, timeout)
    started[slot] = 0.0
    return i, ok


def _noop() -> None:
    return None


def run_pool_baseline(
    pairs: list[tuple[str, str]], workers: int, cap: float
) -> tuple[list[bool | None], float, int]:
    """math-verify mapped over the pairs by a ProcessPoolExecutor: verdicts, seconds, killed items.

    The clock runs once every worker has imported and warmed math-verify. An item running past ``cap``
    gets its worker killed (as verl kills a pool on a timeout); the broken pool is replaced and the
    unfinished items resubmitted, the killed one counted as not finished.
    """
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    ctx = mp.get_context()  # the platform default, as verl and TRL get it
    verdicts: list[bool | None] = [None] * len(pairs)
    todo, seconds, killed = list(range(len(pairs))), 0.0, 0
    while todo:
        pids, items = ctx.Array("q", workers, lock=False), ctx.Array("q", workers, lock=False)
        started, slots, ready = ctx.Array("d", workers, lock=False), ctx.Value("i", 0), ctx.Value("i", 0)
        executor = ProcessPoolExecutor(workers, mp_context=ctx, initializer=_pool_worker_init,
                                       initargs=(pids, items, started, slots, ready))  # fmt: skip
        for f in [executor.submit(_noop) for _ in range(workers)]:
            f.result()
        deadline = time.monotonic() + 300
        while ready.value < workers:  # every worker up and warm before the clock starts
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {ready.value} of {workers} pool workers started")
            time.sleep(0.01)
        clock = time.perf_counter()
        futures = {executor.submit(_pool_item, i, *pairs[i], cap) for i in todo}
        pending, lost = futures, set()
        while pending:
            done, pending = wait(pending, timeout=0.05, return_when=FIRST_COMPLETED)
            now = time.monotonic()
            stuck = [s for s in range(workers) if started[s] and now - started[s] > cap]
            if stuck:
                for s in stuck:
                    os.kill(pids[s], signal.SIGKILL)
                    lost.add(items[s])
                killed += len(stuck)
                break
        seconds += time.perf_counter() - clock
        executor.shutdown(wait=True, cancel_futures=True)
        for f in futures:
            if f.done() and not f.cancelled() and f.exception() is None:
                i, ok = f.result()
                verdicts[i] = ok
        todo = [i for i in todo if verdicts[i] is None and i not in lost]
    return verdicts, seconds, killed


# --------------------------------------------------------------------------- flopmatch, four ways

CONFIGS = {  # name: (dedupe, fast_path)
    "flopmatch": (True, True),
    "flopmatch, no dedupe": (False, True),
    "flopmatch, no fast path": (True, False),
    "flopmatch, neither": (False, False),
}


def run_flopmatch(
    pairs, datasets, workers: int, timeout: float, repeats: int
) -> dict[str, tuple[float, list]]:
    """Seconds (best of ``repeats``) and grades per configuration, on one warm pool; configurations
    interleave so a noisy machine hits all alike."""
    from flopmatch.grading import WatchdogPool, grade_many

    best: dict[str, tuple[float, list]] = {}
    with WatchdogPool(workers=workers, timeout=timeout) as pool:
        for dedupe, fast_path in CONFIGS.values():  # an untimed round: every worker started and warm
            grade_many(pairs, dataset=datasets, progress=False, pool=pool, dedupe=dedupe, fast_path=fast_path)
        for _ in range(repeats):
            for name, (dedupe, fast_path) in CONFIGS.items():
                clock = time.perf_counter()
                grades = grade_many(pairs, dataset=datasets, progress=False, pool=pool, dedupe=dedupe,
                                    fast_path=fast_path)  # fmt: skip
                seconds = time.perf_counter() - clock
                if name not in best or seconds < best[name][0]:
                    best[name] = (seconds, grades)
    return best


# --------------------------------------------------------------------------- main


def _factors(t: dict[str, float]) -> list[tuple[str, float]]:
    """Multiplicative factors from the serial loop to flopmatch (their product is the total speed-up)."""
    return [
        ("parallelism (math-verify serial -> pool)", t["serial"] / t["pool"]),
        ("per-check work (pool -> flopmatch with neither)", t["pool"] / t["flopmatch, neither"]),
        ("exact fast path (neither -> no dedupe)", t["flopmatch, neither"] / t["flopmatch, no dedupe"]),
        ("duplicate-pair caching (no dedupe -> flopmatch)", t["flopmatch, no dedupe"] / t["flopmatch"]),
        (
            "  other order: caching (neither -> no fast path)",
            t["flopmatch, neither"] / t["flopmatch, no fast path"],
        ),
        (
            "  other order: fast path (no fast path -> flopmatch)",
            t["flopmatch, no fast path"] / t["flopmatch"],
        ),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gsm8k", type=int, default=400, help="GSM8K test problems")
    parser.add_argument("--math", type=int, default=300, help="MATH500 problems")
    parser.add_argument("--per-problem", type=int, default=30)
    parser.add_argument(
        "--workers", type=int, default=2, help="processes, for the math-verify pool and flopmatch"
    )
    parser.add_argument(
        "--timeout", type=float, default=5.0, help="per-item limit in seconds, for every grader"
    )
    parser.add_argument(
        "--repeats", type=int, default=1, help="runs of each flopmatch configuration (best kept)"
    )
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()

    from flopmatch.grading import grade_many

    pairs, datasets, made = make_pairs(args.gsm8k, args.math, args.per_problem)
    distinct = len({(g, r) for r, g in pairs})
    print(
        f"pairs: {len(pairs)} ({args.gsm8k} GSM8K + {args.math} MATH500 problems x {args.per_problem}, "
        f"+ pathological); distinct responses: {distinct}; workers {args.workers}; limit {args.timeout:g} s per item"
    )

    clock = time.perf_counter()
    grade_many(pairs, dataset=datasets, workers=args.workers, timeout=args.timeout, progress=False)
    cold = time.perf_counter() - clock
    runs = run_flopmatch(pairs, datasets, args.workers, args.timeout, args.repeats)
    grades = runs["flopmatch"][1]
    for name, (_, other) in runs.items():
        changed = sum(a.status != b.status for a, b in zip(grades, other, strict=True))
        if changed:
            print(f"  note: {name} differs from flopmatch on {changed} pairs (timeouts near the limit)")

    verdicts, serial, killed = run_baseline(pairs, args.timeout)
    pool_verdicts, pooled, pool_killed = run_pool_baseline(pairs, args.workers, args.timeout)
    times = {"serial": serial, "pool": pooled, **{name: t for name, (t, _) in runs.items()}}
    rows = [("math-verify serial", serial, f"items killed at the limit: {killed}"),
            (f"math-verify ProcessPoolExecutor({args.workers})", pooled, f"items killed at the limit: {pool_killed}"),
            *[(name, runs[name][0], "") for name in CONFIGS],
            ("flopmatch, cold (starts its own pool)", cold, "")]  # fmt: skip
    for name, seconds, note in rows:
        print(f"{name:42s} {seconds:8.2f} s {len(pairs) / seconds:8.0f} responses/s  {note}")
    print(f"speed-up of flopmatch (warm) over math-verify serial: {serial / times['flopmatch']:.1f}x, "
          f"over the math-verify pool: {pooled / times['flopmatch']:.1f}x; cold over the pool: {pooled / cold:.1f}x")  # fmt: skip
    factors = _factors(times)
    for label, factor in factors:
        print(f"  {label:55s} {factor:6.2f}x")

    both = [
        i
        for i, (a, b) in enumerate(zip(verdicts, pool_verdicts, strict=True))
        if a is not None and b is not None
    ]
    print(
        f"math-verify serial vs pool verdicts: {sum(verdicts[i] == pool_verdicts[i] for i in both)}/{len(both)} equal"
    )
    finished = [i for i, v in enumerate(verdicts) if v is not None]
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
    kinds = _disagreements(pairs, made, grades, verdicts, finished)
    statuses = Counter(g.status for g in grades)
    if args.json:
        args.json.write_text(json.dumps({
            "pairs": len(pairs), "distinct": distinct, "workers": args.workers, "timeout": args.timeout,
            "seconds": times | {"flopmatch, cold": cold}, "factors": dict(factors),
            "speedup_over_serial": serial / times["flopmatch"], "speedup_over_pool": pooled / times["flopmatch"],
            "baseline_finished": len(finished), "baseline_killed": killed, "pool_killed": pool_killed,
            "agreement": len(agree) / max(1, len(finished)), "statuses": dict(statuses), "disagreements": kinds,
        }, indent=2))  # fmt: skip


def _disagreements(pairs, made, grades, verdicts, finished) -> dict[str, int]:
    kinds: Counter = Counter()
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
    return dict(kinds)


if __name__ == "__main__":
    main()
