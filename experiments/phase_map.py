"""A map of when weak-cheap data wins: the toy world swept along the WC/SE capability gap and the
false-positive propensity of its noise model, at both budgets, with several training seeds.

Each cell of the grid is a toy world of its own: WC, SE and the knowledge-distillation student are
pretrained (and cached) with that cell's noise model, WC with that cell's pretraining steps (fewer
steps, a wider gap to SE). The study machinery samples, grades, judges and builds the SFT sets of the
cell (``flopmatch study`` stages problems .. sft, the demo's settings otherwise); then every student is
fine-tuned once per training seed on WC data and on SE data, and its greedy pass@1 on the test problems
is compared paired (the same problems; intervals resample problems and seeds, ``flopmatch.paired``).
p-values are Holm-adjusted across every comparison of the map.

    nice -n 10 .venv/bin/python experiments/phase_map.py            # the committed map (~1 h, 2 cores)
    .venv/bin/python experiments/phase_map.py --gaps 3000 --fp 1 --seeds 0 --test 100 --sample 60  # a smoke run

Writes ``OUT/phase_map.md``, ``OUT/phase_map.json`` and ``OUT/phase_map.png`` (default
``docs/results/phase-map``); run directories go under ``--runs`` (resumable: a rerun skips what is done).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
DEMO_CONFIG = ROOT / "examples" / "toyworld.yaml"

WC_SHAPE = {"hidden_size": 64, "num_layers": 2, "num_heads": 2, "intermediate_size": 192}
SE_SHAPE = {"hidden_size": 96, "num_layers": 3, "num_heads": 3, "intermediate_size": 384}
DEFAULT_STEPS = 3000  # ToyModelSpec.train_steps of the registry's toyworld-wc / toyworld-se
PARADIGMS = {"self_improvement": "wc", "knowledge_distillation": "student"}  # paradigm -> student role


@dataclass(frozen=True)
class Cell:
    wc_steps: int  # WC pretraining steps (SE always 3000): the capability-gap axis
    fp_scale: float  # false-positive propensity of the noise model (1 = the default toy world)

    @property
    def name(self) -> str:
        return f"wc{self.wc_steps}-fp{self.fp_scale:g}"


# --------------------------------------------------------------------------- configs (pure)


def cell_config(demo: dict[str, Any], cell: Cell, *, sample: int, test: int, run_dir: Path,
                paradigms: tuple[str, ...] = tuple(PARADIGMS), steps_per_budget: dict[int, int] | None = None,
                ) -> dict[str, Any]:
    """The demo's study config, moved into ``cell``'s toy world: its noise model for all three models,
    its WC pretraining, self-improvement and knowledge distillation only, training left to this script."""
    noise = {"false_positive_scale": cell.fp_scale}
    default_noise = cell.fp_scale == 1.0  # the demo's toy world: reuse its cached models (same names)
    config = json.loads(json.dumps(demo))  # a deep copy
    config["name"] = f"phase-{cell.name}"
    config["run_dir"] = str(run_dir)
    config["problems"]["sample"]["limit"] = sample
    config["problems"]["test"]["limit"] = test
    if steps_per_budget:
        config["budget"]["se_samples"] = sorted(steps_per_budget)
        config["training"]["steps_per_budget"] = dict(steps_per_budget)
    config["training"].pop("seeds", None)  # this script runs the seeds itself
    models = config["models"]
    if not (default_noise and cell.wc_steps == DEFAULT_STEPS):
        models["wc"] = {**models["wc"], "model": f"toyworld-wc-{cell.name}",
                        "toyworld_spec": {**WC_SHAPE, "train_steps": cell.wc_steps, "noise": noise}}
    if not default_noise:
        models["se"] = {**models["se"], "model": f"toyworld-se-fp{cell.fp_scale:g}",
                        "toyworld_spec": {**SE_SHAPE, "noise": noise}}
    student = config["paradigms"]["student"]
    if not default_noise:
        student = {**student, "model": f"toyworld-student-fp{cell.fp_scale:g}",
                   "toyworld_spec": {**student["toyworld_spec"], "noise": noise}}
    config["paradigms"] = {"weak_to_strong": False, "number_matched": [],
                           "self_improvement": "self_improvement" in paradigms,
                           "knowledge_distillation": "knowledge_distillation" in paradigms}
    if "knowledge_distillation" in paradigms:
        config["paradigms"]["student"] = student
    return config


def holm(p_values: list[float]) -> list[float]:
    from flopmatch.paired import holm as _holm

    return [float(x) for x in _holm(p_values)] if p_values else []


# --------------------------------------------------------------------------- side effects


def prepare_cell(config_dict: dict[str, Any], *, progress: bool) -> Path:
    """Run the study stages up to the SFT sets (sampling, grading, exact judging, analysis)."""
    from flopmatch.study import StudyConfig, run_study

    config = StudyConfig.model_validate(config_dict)
    stages = ("problems", "plan", "sample", "grade", "judge", "analyze", "sft")
    result = run_study(config, config.run_dir, only=stages, log=(print if progress else (lambda *_: None)),
                       progress=progress)
    return Path(result.run_dir)


def greedy_scores(model: str, test: list[Any], out: Path, *, quiet: bool) -> list[int]:
    import pyarrow.parquet as pq

    from flopmatch.evaluation import evaluate

    evaluate(model, test, backend="hf", n=0, max_tokens=128, out_path=out, backend_options={"batch_size": 256},
             progress_desc=None if quiet else f"eval {out.stem}")
    rows = pq.read_table(out, columns=["problem_id", "mode", "status"]).to_pylist()
    by_id = {r["problem_id"]: int(r["status"] == "correct") for r in rows if r["mode"] == "greedy"}
    return [by_id[p.problem_id] for p in test]


def train_and_score(run: Path, *, data: str, base: str, seed: int, steps: int, options: dict[str, Any],
                    validation: list[Any], test: list[Any], quiet: bool) -> list[int]:
    """Fine-tune ``base`` on the run's SFT set ``data`` with training seed ``seed``; greedy pass@1 per
    test problem. Cached in the run directory (a finished model and its evaluation are reused)."""
    from flopmatch.store import RunDir
    from flopmatch.training import TrainConfig, train

    rd = RunDir(run)
    name = f"{data}-{Path(base).name}-s{seed}"
    scores_path = rd.root / "phase_map" / f"{name}.json"
    if scores_path.exists():
        return json.loads(scores_path.read_text())
    config = TrainConfig.tiny_cpu(**{**options, "max_steps": steps, "seed": seed})
    out_dir = rd.root / "phase_map" / "models" / name
    train(rd.sft_dir(data), base_model=base, out_dir=out_dir, config=config, validation=validation,
          select_backend="hf", select_max_tokens=128, select_options={"batch_size": 256}, overwrite=True)
    scores = greedy_scores(str(out_dir), test, rd.root / "phase_map" / "evals" / f"{name}.parquet", quiet=quiet)
    scores_path.write_text(json.dumps(scores))
    return scores


def run_cell(cell: Cell, demo: dict[str, Any], args: argparse.Namespace) -> list[dict[str, Any]]:
    """The cell's comparisons, with the wall and CPU time spent on the cell, summed over every invocation
    that worked on it (a resumed or split run counts each part once; a cached cell adds nothing)."""
    ledger = args.runs / cell.name / "phase_map" / "time.json"
    spent = json.loads(ledger.read_text()) if ledger.exists() else {"wall_seconds": 0.0, "cpu_seconds": 0.0}
    started, cpu = time.perf_counter(), cpu_seconds()
    rows = compare_cell(cell, demo, args)
    spent = {"wall_seconds": spent["wall_seconds"] + time.perf_counter() - started,
             "cpu_seconds": spent["cpu_seconds"] + cpu_seconds() - cpu}
    ledger.parent.mkdir(parents=True, exist_ok=True)
    ledger.write_text(json.dumps(spent))
    return [{**row, "cell_wall_seconds": spent["wall_seconds"], "cell_cpu_seconds": spent["cpu_seconds"]} for row in rows]


def compare_cell(cell: Cell, demo: dict[str, Any], args: argparse.Namespace) -> list[dict[str, Any]]:
    from flopmatch.paired import compare_paired
    from flopmatch.problems import problems_from_table
    from flopmatch.store import read_table

    config = cell_config(demo, cell, sample=args.sample, test=args.test, run_dir=args.runs / cell.name,
                         paradigms=tuple(args.paradigms.split(",")), steps_per_budget=args.steps_per_budget)
    run = prepare_cell(config, progress=not args.quiet)
    problems = {r: problems_from_table(read_table(run / "problems" / f"{r}.parquet")) for r in ("validation", "test")}
    paths = _role_paths(run)
    steps_per_budget = config["training"]["steps_per_budget"]
    options = dict(config["training"].get("options") or {})
    options.pop("seed", None)
    rows = []
    roles = {"wc", "se"} | {PARADIGMS[p] for p in args.paradigms.split(",")}
    base_scores = {role: greedy_scores(paths[role], problems["test"], run / "phase_map" / "evals" / f"base-{role}.parquet",
                                       quiet=args.quiet) for role in sorted(roles)}
    fpr = _exact_fpr(run)
    pretrain = {role: _pretrain_cpu(paths[role]) for role in sorted(roles)}
    for paradigm in args.paradigms.split(","):
        role = PARADIGMS[paradigm]
        for budget in sorted(int(b) for b in steps_per_budget):
            per_data = {}
            for kind in ("se", "wc"):
                per_data[kind] = [
                    train_and_score(run, data=f"{kind}-b{budget}", base=paths[role], seed=seed,
                                    steps=int(steps_per_budget[budget]), options=options,
                                    validation=problems["validation"], test=problems["test"], quiet=args.quiet)
                    for seed in args.seeds
                ]
            cmp = compare_paired(per_data["wc"], per_data["se"])
            base = base_scores[role]
            rows.append({
                "cell": cell.name, "wc_pretrain_steps": cell.wc_steps, "fp_scale": cell.fp_scale,
                "paradigm": paradigm, "budget_se_samples": budget, "student_base": sum(base) / len(base),
                "se_data": cmp.baseline, "wc_data": cmp.treatment, "diff": cmp.diff, "ci_low": cmp.ci_low,
                "ci_high": cmp.ci_high, "p_value": cmp.p_value, "test": cmp.test, "seeds": cmp.seeds,
                "test_problems": cmp.problems, "mde": cmp.mde,
                "wc_base": sum(base_scores["wc"]) / len(base_scores["wc"]),
                "se_base": sum(base_scores["se"]) / len(base_scores["se"]),
                "wc_fpr": fpr.get("wc"), "se_fpr": fpr.get("se"), "pretrain_cpu_seconds": pretrain,
            })
    return rows


def _role_paths(run: Path) -> dict[str, str]:
    from flopmatch.store import read_json

    roles = read_json(run / "roles.json")
    return {role: roles[role]["path"] for role in ("wc", "se", "student") if role in roles}


def _pretrain_cpu(model_dir: str) -> list:
    """(model directory name, CPU seconds its pretraining took), from the toy model's toyworld.json."""
    meta = json.loads((Path(model_dir) / "toyworld.json").read_text())
    return [Path(model_dir).name, float(meta.get("train_cpu_seconds") or 0.0)]


def _exact_fpr(run: Path) -> dict[str, float]:
    """False-positive rate of each model's answer-correct samples, from the exact checker's judgments."""
    from flopmatch.store import RunDir, read_json

    roles = read_json(run / "roles.json")
    out = {}
    for role in ("wc", "se"):
        path = RunDir(run).judgments_path(roles[role]["model"])
        if path.exists():
            import pyarrow.parquet as pq

            statuses = pq.read_table(path, columns=["status"]).column("status").to_pylist()
            judged = [s for s in statuses if s in ("valid", "invalid")]
            out[role] = sum(s == "invalid" for s in judged) / len(judged) if judged else float("nan")
    return out


# --------------------------------------------------------------------------- outputs


def significance(rows: list[dict[str, Any]]) -> None:
    """Holm-adjust every comparison of the map and attach the verdict (flopmatch.paired.verdict)."""
    from flopmatch.paired import verdict

    adjusted = holm([r["p_value"] for r in rows])
    for row, p in zip(rows, adjusted, strict=True):
        row["p_adjusted"] = p
        row["verdict"] = verdict(row["diff"], row["ci_low"], row["ci_high"], p, row["seeds"], row["mde"])
        row["significant"] = row["verdict"] in ("WC data better", "SE data better")


def write_outputs(rows: list[dict[str, Any]], out: Path, meta: dict[str, Any]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "phase_map.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")
    lines = [
        "| WC pretraining steps | FP scale | WC / SE base pass@1 | WC / SE exact FPR | paradigm | budget | SE data | WC data "
        "| WC − SE [95% CI] | p (Holm) | MDE | verdict |",
        "|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['wc_pretrain_steps']} | {r['fp_scale']:g} | {100 * r['wc_base']:.1f} / {100 * r['se_base']:.1f} "
            f"| {_pct(r['wc_fpr'])} / {_pct(r['se_fpr'])} | {r['paradigm'].replace('_', ' ')} | {r['budget_se_samples']} "
            f"| {100 * r['se_data']:.1f} | {100 * r['wc_data']:.1f} | {100 * r['diff']:+.1f} "
            f"[{100 * r['ci_low']:+.1f}, {100 * r['ci_high']:+.1f}] | {r['p_adjusted']:.3g} | {100 * r['mde']:.1f} "
            f"| {r['verdict']} |"
        )
    header = (
        "# When does weak-cheap data win? The toy world's phase map\n\n"
        f"Greedy pass@1 (%) of fine-tuned students on {meta['test_problems']} toy test problems, "
        f"{len(meta['seeds'])} training seeds per side ({', '.join(map(str, meta['seeds']))}); WC − SE is the paired "
        "difference of the seed means (95% interval resampling problems and seeds), p from a sign-flip "
        "permutation test (McNemar with one seed), Holm-adjusted across the whole map. A verdict needs the "
        "adjusted p < 0.05, an interval that excludes 0 and at least two seeds.\n\n"
        f"Axes: WC pretraining steps (SE: 3000; fewer WC steps, a wider capability gap) and the noise model's "
        f"false-positive propensity (`toyworld_spec.noise.false_positive_scale`; 1 = the demo's toy world).\n\n"
        f"Command: `{meta['command']}`. Time, summed over the invocations that computed each cell (sampling, "
        f"grading, judging, SFT sets, fine-tuning, evaluation): {meta['cells_wall_seconds'] / 60:.1f} min wall, "
        f"{meta['cells_cpu_seconds'] / 60:.1f} min CPU (all threads and grading workers), plus "
        f"{meta['pretrain_cpu_seconds'] / 60:.1f} min CPU pretraining the {meta['pretrained_models']} toy models "
        f"(one thread each; the demo's own models included), on a {meta['cores']}-core machine shared with other "
        f"jobs (load average at the end {meta['load_average']}).\n\n![heat map](phase_map.png)\n\n"
    )
    (out / "phase_map.md").write_text(header + "\n".join(lines) + "\n")
    heat_map(rows, out / "phase_map.png")


def _pct(x: float | None) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.0f}%"


def heat_map(rows: list[dict[str, Any]], path: Path) -> None:
    """One panel per paradigm × budget: WC − SE (points) per cell, * where significant."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    panels = sorted({(r["paradigm"], r["budget_se_samples"]) for r in rows})
    gaps = sorted({r["wc_pretrain_steps"] for r in rows}, reverse=True)
    fps = sorted({r["fp_scale"] for r in rows})
    # a fixed ±5-point scale at least, so that differences well inside the noise do not look saturated
    limit = max(5.0, max(abs(100 * r["diff"]) for r in rows))
    fig, axes = plt.subplots(1, len(panels), figsize=(3.8 * len(panels), 0.9 * len(gaps) + 1.8), squeeze=False)
    fig.subplots_adjust(wspace=0.3)
    for ax, (paradigm, budget) in zip(axes[0], panels, strict=True):
        grid = np.full((len(gaps), len(fps)), np.nan)
        for r in rows:
            if (r["paradigm"], r["budget_se_samples"]) == (paradigm, budget):
                i, j = gaps.index(r["wc_pretrain_steps"]), fps.index(r["fp_scale"])
                grid[i, j] = 100 * r["diff"]
                mark = "*" if r["significant"] else ""
                ax.text(j, i, f"{100 * r['diff']:+.1f}{mark}\n±{100 * (r['ci_high'] - r['ci_low']) / 2:.1f}",
                        ha="center", va="center", fontsize=8)
        image = ax.imshow(grid, cmap="RdBu", vmin=-limit, vmax=limit, aspect="auto")
        ax.set_xticks(range(len(fps)), [f"{f:g}" for f in fps])
        ax.set_yticks(range(len(gaps)), [str(g) for g in gaps])
        ax.set_xlabel("false-positive scale")
        if ax is axes[0][0]:
            ax.set_ylabel("WC pretraining steps")
        ax.set_title(f"{paradigm.replace('_', ' ')}\nbudget {budget} SE sample(s)", fontsize=9)
    fig.colorbar(image, ax=axes[0].tolist(), label="WC − SE data, pass@1 points (blue: WC wins)")
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


def cpu_seconds() -> float:
    """User + system CPU time of this process (all threads) and its finished children (grading workers)."""
    import resource

    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--gaps", default="3000,1000", help="WC pretraining steps, comma-separated (SE: 3000)")
    parser.add_argument("--fp", default="0,1,2.5", help="false-positive scales, comma-separated")
    parser.add_argument("--paradigms", default="self_improvement,knowledge_distillation",
                        help=f"comma-separated, of {', '.join(PARADIGMS)}")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="training seeds")
    parser.add_argument("--sample", type=int, default=100, help="problems sampled per cell")
    parser.add_argument("--budgets", default="1:10,4:30",
                        help="SE samples per problem : fine-tuning steps, comma-separated (the demo: 1:30,10:120 "
                        "for 300 problems)")
    parser.add_argument("--test", type=int, default=400, help="test problems per cell")
    parser.add_argument("--runs", type=Path, default=ROOT / "runs" / "phase-map", help="run directories")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "results" / "phase-map")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    args.runs = args.runs.resolve()
    args.steps_per_budget = {int(b): int(n) for b, n in (item.split(":") for item in args.budgets.split(","))}
    unknown = set(args.paradigms.split(",")) - set(PARADIGMS)
    if unknown:
        parser.error(f"unknown paradigm(s) {sorted(unknown)}; expected some of {sorted(PARADIGMS)}")
    cells = [Cell(int(g), float(f)) for g in args.gaps.split(",") for f in args.fp.split(",")]
    demo = yaml.safe_load(DEMO_CONFIG.read_text())
    started, cpu = time.perf_counter(), cpu_seconds()
    rows: list[dict[str, Any]] = []
    for number, cell in enumerate(cells, 1):
        print(f"[{number}/{len(cells)}] cell {cell.name}", file=sys.stderr, flush=True)
        rows += run_cell(cell, demo, args)
    significance(rows)
    import os

    meta = {
        "command": "python experiments/phase_map.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "cells": [c.name for c in cells], "seeds": args.seeds, "sample_problems": args.sample,
        "test_problems": args.test, "wall_seconds": time.perf_counter() - started,
        "cpu_seconds": cpu_seconds() - cpu, "cores": os.cpu_count(),
        "load_average": " ".join(f"{x:.2f}" for x in os.getloadavg()),
    }
    cells_time = {r["cell"]: (r["cell_wall_seconds"], r["cell_cpu_seconds"]) for r in rows}
    models = {name: cpu for r in rows for name, cpu in r["pretrain_cpu_seconds"].values()}
    meta |= {"cells_wall_seconds": sum(w for w, _ in cells_time.values()),
             "cells_cpu_seconds": sum(c for _, c in cells_time.values()),
             "pretrain_cpu_seconds": sum(models.values()), "pretrained_models": len(models)}
    write_outputs(rows, args.out, meta)
    print(f"wrote {args.out / 'phase_map.md'} ({meta['wall_seconds'] / 60:.1f} min)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
