"""Why does fine-tuning the toy models on their own correct samples hurt? Recipe ablations, paired.

Takes a demo run (``flopmatch demo --run RUN`` finished at least its ``sft`` stage), judges every
answer-correct sample with the exact toy-world checker (so the SFT data can be built without its false
positives), then trains the toy students under a list of recipes and evaluates each one's greedy pass@1
on the first ``--test`` toy test problems. Every fine-tuned student is compared with its own base on the
same problems: the paired difference, a 95% bootstrap interval over problems and McNemar's exact test.

    nice -n 10 .venv/bin/python experiments/finetune_diagnosis.py --run runs/demo --test 1000 \\
        --out docs/results/finetune-diagnosis

Results are cached per experiment under ``--work`` (default ``runs/finetune-diagnosis``; rerunning skips
what is done), and the table goes to ``OUT/diagnosis.md`` and ``OUT/diagnosis.json`` (``--sampled N``:
T=0.7 sample accuracy too, ``OUT/sampled.md``). ``--only NAME`` (repeatable) runs a subset.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


def paired_row(base: list[int], other: list[int]) -> dict[str, float]:
    """The fine-tuned student against its base on the same problems (flopmatch.paired)."""
    from flopmatch.paired import compare_paired, discordant_counts

    cmp = compare_paired(other, base)
    gained, lost = discordant_counts(other, base)
    return {"base": cmp.baseline, "value": cmp.treatment, "diff": cmp.diff, "ci_low": cmp.ci_low,
            "ci_high": cmp.ci_high, "p_mcnemar": cmp.p_value, "gained": gained, "lost": lost,
            "discordance": cmp.discordance, "mde": cmp.mde}


# --------------------------------------------------------------------------- experiments


@dataclass(frozen=True)
class Experiment:
    name: str
    student: str  # "wc" | "se": whose base model is fine-tuned
    data: str  # SFT set name under the run (built by the demo, or by this script: "*-exact")
    options: dict[str, Any] = field(default_factory=dict)  # TrainConfig fields over the demo's
    select: bool = True  # checkpoint selection on the run's validation problems (as the study does)
    note: str = ""


def experiments() -> list[Experiment]:
    # The demo's recipe: tiny-cpu preset, lr 5e-4, no warmup, 120 steps at the high budget, 2 checkpoints.
    demo = {"learning_rate": 5e-4, "max_steps": 120, "n_checkpoints": 2}
    new = {**demo, "learning_rate": 1e-4, "warmup_ratio": 0.1}
    # In order of what they tell: the recipe as it was, then one change at a time.
    out = [
        Experiment("wc/wc-b10 demo recipe", "wc", "wc-b10", demo, note="the demo as it was"),
        Experiment("wc/wc-b10 lr 1e-4", "wc", "wc-b10", {**demo, "learning_rate": 1e-4}),
        Experiment("wc/wc-b10-exact (no FP)", "wc", "wc-b10-exact", demo, note="exact checker removes false positives"),
        Experiment("wc/wc-b10-k4 (<= 4 per problem)", "wc", "wc-b10-k4", demo,
                   note="at most 4 correct solutions per problem"),
        Experiment("wc/wc-b10-gold (reference solutions)", "wc", "wc-b10-gold", demo,
                   note="same problems and count, every completion the problem's reference solution"),
        Experiment("wc/wc-b10 warmup 0.1", "wc", "wc-b10", {**demo, "warmup_ratio": 0.1}),
        Experiment("se/se-b10 demo recipe", "se", "se-b10", demo),
        Experiment("se/se-b10 lr 1e-4", "se", "se-b10", {**demo, "learning_rate": 1e-4}),
        Experiment("wc/wc-b10 demo recipe, seed 1", "wc", "wc-b10", {**demo, "seed": 1}),
        Experiment("wc/wc-b10 lr 1e-4, seed 1", "wc", "wc-b10", {**demo, "learning_rate": 1e-4, "seed": 1}),
        Experiment("wc/wc-b10 lr 2e-4", "wc", "wc-b10", {**demo, "learning_rate": 2e-4}),
        Experiment("wc/wc-b10 lr 5e-5", "wc", "wc-b10", {**demo, "learning_rate": 5e-5}),
        Experiment("wc/wc-b10 demo, last ckpt", "wc", "wc-b10", demo, select=False),
        Experiment("wc/wc-b10 360 steps", "wc", "wc-b10", {**demo, "max_steps": 360}),
        Experiment("wc/wc-b10-sizematch", "wc", "wc-b10-sizematch", demo,
                   note="random subset of wc-b10 as large as wc-b10-exact (separates size from FP removal)"),
        Experiment("se/se-b10-exact (no FP)", "se", "se-b10-exact", demo),
        Experiment("se/wc-b10 demo recipe", "se", "wc-b10", demo),
        # the recipe the demo now uses
        Experiment("wc/wc-b10 new recipe (lr 1e-4, warmup 0.1)", "wc", "wc-b10", new),
        Experiment("se/wc-b10 new recipe (lr 1e-4, warmup 0.1)", "se", "wc-b10", new),
        Experiment("wc/wc-b10 new recipe, 360 steps", "wc", "wc-b10", {**new, "max_steps": 360}),
    ]
    return out


# --------------------------------------------------------------------------- side effects


def judge_everything(run: Path, models: list[str]) -> None:
    """Judge every answer-correct sample of ``models`` with the exact checker (cheap and exact)."""
    from flopmatch.judge import ToyworldCheckerJudge, judge_run

    judge_run(run, ToyworldCheckerJudge(), per_model=10**9, models=models)


def build_extra_sets(run: Path, roles: dict[str, str], sampled: list[str]) -> None:
    """Variants of each sampled model's high-budget set: without false positives (exact checker), at most
    4 correct solutions per problem, and (WC) a random subset as large as the set without false positives."""
    from flopmatch.sft import build_sft
    from flopmatch.store import RunDir

    rd = RunDir(run)

    def build(name: str, **kwargs: Any) -> None:
        if not (rd.sft_dir(name) / "dataset_info.json").exists():
            build_sft(run, budget=10, name=name, **kwargs)

    for role in sampled:
        build(f"{role}-b10", source_model=roles[role])
        build(f"{role}-b10-exact", source_model=roles[role], judge_filter=True)
        build(f"{role}-b10-k4", source_model=roles[role], max_per_problem=4)
    if "wc" in sampled:
        build("wc-b10-sizematch", source_model=roles["wc"], number_matched_to="wc-b10-exact")
        build_gold_set(run)


def build_gold_set(run: Path, source: str = "wc-b10", name: str = "wc-b10-gold") -> None:
    """``source`` with every completion replaced by its problem's reference solution: the same problems
    and example count, with clean, canonical derivations (an upper bound on what data quality can do)."""
    import shutil

    from datasets import load_from_disk

    from flopmatch.problems import problems_from_table
    from flopmatch.store import RunDir, read_table

    rd = RunDir(run)
    if (rd.sft_dir(name) / "dataset_info.json").exists() or not (rd.sft_dir(source) / "dataset_info.json").exists():
        return
    gold = {p.problem_id: p.solution for p in problems_from_table(read_table(run / "problems" / "sample.parquet"))}

    def swap(row: dict[str, Any]) -> dict[str, Any]:
        messages = [dict(m) for m in row["messages"]]
        messages[-1]["content"] = gold[row["problem_id"]]
        return {"completion": gold[row["problem_id"]], "messages": messages}

    dataset = load_from_disk(str(rd.sft_dir(source))).map(swap)
    dataset.save_to_disk(str(rd.sft_dir(name)))
    shutil.copy(rd.sft_dir(source) / "flopmatch_sft.json", rd.sft_dir(name) / "flopmatch_sft.json")


def correctness(eval_parquet: Path) -> dict[str, int]:
    import pyarrow.parquet as pq

    table = pq.read_table(eval_parquet, columns=["problem_id", "mode", "status"]).to_pylist()
    return {r["problem_id"]: int(r["status"] == "correct") for r in table if r["mode"] == "greedy"}


def evaluate_greedy(model: str, test: list[Any], out: Path) -> dict[str, int]:
    from flopmatch.evaluation import evaluate

    evaluate(model, test, backend="hf", n=0, max_tokens=128, out_path=out,
             backend_options={"batch_size": 256}, progress_desc=f"eval {out.stem}")
    return correctness(out)


def run_experiment(exp: Experiment, *, run: Path, work: Path, roles_path: dict[str, str], test: list[Any],
                   validation: list[Any]) -> dict[str, Any]:
    from flopmatch.store import RunDir
    from flopmatch.training import TrainConfig, train

    slug = "".join(ch if ch.isalnum() else "-" for ch in exp.name)
    record = work / f"{slug}.json"
    if record.exists():
        return json.loads(record.read_text())
    config = TrainConfig.tiny_cpu(**exp.options)
    started, cpu = time.perf_counter(), time.process_time()
    result = train(RunDir(run).sft_dir(exp.data), base_model=roles_path[exp.student], out_dir=work / "models" / slug,
                   config=config, validation=validation if exp.select else None, select_backend="hf",
                   select_max_tokens=128, select_options={"batch_size": 256}, overwrite=True)
    scores = evaluate_greedy(str(work / "models" / slug), test, work / "evals" / f"{slug}.parquet")
    out = {"name": exp.name, "student": exp.student, "data": exp.data, "options": exp.options,
           "select": exp.select, "note": exp.note, "best": str(result.best), "loss": result.train_loss,
           "validation_scores": result.validation_scores, "seconds": time.perf_counter() - started,
           "cpu_seconds": time.process_time() - cpu, "scores": scores}
    record.write_text(json.dumps(out, indent=1, default=str))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", type=Path, required=True, help="a demo run directory (sft stage done)")
    parser.add_argument("--test", type=int, default=1000, help="toy test problems (the first N of the split)")
    parser.add_argument("--out", type=Path, default=Path("docs/results/finetune-diagnosis"))
    parser.add_argument("--work", type=Path, default=Path("runs/finetune-diagnosis"),
                        help="trained models, evaluations and per-experiment records (cached; not for git)")
    parser.add_argument("--sampled", type=int, default=0,
                        help="also compare T=0.7 sample accuracy (4 per problem) on this many test problems")
    parser.add_argument("--only", action="append", default=[], help="run only experiments whose name contains this")
    args = parser.parse_args(argv)

    from flopmatch.problems import problems_from_table
    from flopmatch.store import RunDir, read_json, read_table
    from flopmatch.toyworld import load_problems

    run = args.run.resolve()
    work = args.work or args.out / "work"
    work.mkdir(parents=True, exist_ok=True)
    args.out.mkdir(parents=True, exist_ok=True)
    roles = read_json(run / "roles.json")
    role_models = {r: roles[r]["model"] for r in ("wc", "se")}
    role_paths = {r: roles[r]["path"] for r in ("wc", "se")}
    test = load_problems("test", limit=args.test)
    validation = problems_from_table(read_table(RunDir(run).root / "problems" / "validation.parquet"))

    from flopmatch.store import RunDir as _RunDir

    sampled = [r for r in ("wc", "se") if _RunDir(run).grades_path(role_models[r]).exists()]
    judge_everything(run, [role_models[r] for r in sampled])
    build_extra_sets(run, role_models, sampled)

    base = {r: evaluate_greedy(role_paths[r], test, work / "evals" / f"base-{r}.parquet") for r in ("wc", "se")}
    rows = []
    for exp in experiments():
        if args.only and not any(s in exp.name for s in args.only):
            continue
        if not (RunDir(run).sft_dir(exp.data) / "dataset_info.json").exists():
            print(f"== {exp.name}: no SFT set {exp.data} in the run, skipped", file=sys.stderr)
            continue
        print(f"== {exp.name}", file=sys.stderr, flush=True)
        done = run_experiment(exp, run=run, work=work, roles_path=role_paths, test=test, validation=validation)
        ids = sorted(base[exp.student])
        stats = paired_row([base[exp.student][i] for i in ids], [done["scores"][i] for i in ids])
        rows.append({k: v for k, v in done.items() if k != "scores"} | stats)
        write_tables(rows, args.out, args.test, work)
    if args.sampled:
        sampled_check(rows, base_paths=role_paths, test=test[: args.sampled], work=work, out=args.out)
    return 0


# the WC students whose T=0.7 samples are also compared (each costs 4 samples x the problems)
SAMPLED = ("wc/wc-b10 demo recipe", "wc/wc-b10 lr 1e-4", "wc/wc-b10-exact (no FP)",
           "wc/wc-b10-gold (reference solutions)", "wc/wc-b10 new recipe (lr 1e-4, warmup 0.1)")


def sampled_check(rows: list[dict[str, Any]], *, base_paths: dict[str, str], test: list[Any], work: Path,
                  out: Path) -> None:
    """Accuracy of samples at T=0.7 (4 per problem) for each WC base and fine-tuned model, paired against
    the base per problem: does fine-tuning sharpen the sampled distribution even where greedy is flat?"""
    import pyarrow.parquet as pq

    from flopmatch.evaluation import evaluate
    from flopmatch.paired import compare_paired

    def per_problem(model: str, name: str) -> list[float]:
        path = work / "evals" / f"sampled-{name}.parquet"
        evaluate(model, test, backend="hf", n=4, temperature=0.7, max_tokens=128, out_path=path,
                 backend_options={"batch_size": 256}, greedy=False, progress_desc=f"sampled {name}")
        by_id: dict[str, list[int]] = {}
        for r in pq.read_table(path, columns=["problem_id", "mode", "status"]).to_pylist():
            if r["mode"] == "sample":
                by_id.setdefault(r["problem_id"], []).append(int(r["status"] == "correct"))
        return [sum(by_id[p.problem_id]) / len(by_id[p.problem_id]) for p in test]

    base = per_problem(base_paths["wc"], "base-wc")
    lines = ["| model | sample accuracy at T=0.7 | vs base [95% paired CI] | sign-flip p |", "|---|---:|---:|---:|",
             f"| WC base | {100 * sum(base) / len(base):.1f} | | |"]
    for row in rows:
        if row["name"] not in SAMPLED:
            continue
        slug = "".join(ch if ch.isalnum() else "-" for ch in row["name"])
        scores = per_problem(str(work / "models" / slug), slug)
        cmp = compare_paired(scores, base, binary=False)
        lines.append(f"| {row['name']} | {100 * cmp.treatment:.1f} | {100 * cmp.diff:+.1f} "
                     f"[{100 * cmp.ci_low:+.1f}, {100 * cmp.ci_high:+.1f}] | {cmp.p_value:.3g} |")
        (out / "sampled.md").write_text(
            f"Accuracy of 4 samples per problem at T=0.7 on the first {len(test)} toy test problems.\n\n"
            + "\n".join(lines) + "\n")


def seed_pairs(work: Path) -> list[str]:
    """Two training seeds of one recipe against each other: how much of the churn is the seed."""
    from flopmatch.paired import compare_paired

    lines = []
    for first, second in (("wc/wc-b10 demo recipe", "wc/wc-b10 demo recipe, seed 1"),
                          ("wc/wc-b10 lr 1e-4", "wc/wc-b10 lr 1e-4, seed 1")):
        records = [work / ("".join(ch if ch.isalnum() else "-" for ch in n) + ".json") for n in (first, second)]
        if not all(r.exists() for r in records):
            continue
        a, b = (json.loads(r.read_text())["scores"] for r in records)
        ids = sorted(a)
        cmp = compare_paired([b[i] for i in ids], [a[i] for i in ids])
        lines.append(f"| {first} | seed 0 {100 * cmp.baseline:.1f} / seed 1 {100 * cmp.treatment:.1f} | "
                     f"{100 * cmp.diff:+.1f} [{100 * cmp.ci_low:+.1f}, {100 * cmp.ci_high:+.1f}] | "
                     f"{100 * cmp.discordance:.1f}% |")
    return lines


def write_tables(rows: list[dict[str, Any]], out: Path, n_test: int, work: Path) -> None:
    (out / "diagnosis.json").write_text(json.dumps(rows, indent=1, default=str))
    lines = [
        "| experiment (student / data, recipe) | base | fine-tuned | diff [95% paired CI] | McNemar p | gained / lost |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['name']} | {100 * r['base']:.1f} | {100 * r['value']:.1f} | {100 * r['diff']:+.1f} "
            f"[{100 * r['ci_low']:+.1f}, {100 * r['ci_high']:+.1f}] | {r['p_mcnemar']:.3g} | {r['gained']} / {r['lost']} |"
        )
    seeds = seed_pairs(work)
    if seeds:
        lines += ["", "Seed to seed (the same recipe, training seeds 0 and 1):", "",
                  "| recipe | pass@1 | seed 1 − seed 0 [95% CI] | problems that flip |", "|---|---:|---:|---:|", *seeds]
    (out / "diagnosis.md").write_text(
        f"Greedy pass@1 (%) on the first {n_test} toy test problems; each fine-tuned student against its own base.\n\n"
        + "\n".join(lines) + "\n"
    )


if __name__ == "__main__":
    raise SystemExit(main())
