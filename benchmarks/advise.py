"""Decision-accuracy backtest of `flopmatch advise`: does a small pilot pick what full sampling picks?

Input: graded runs holding S samples per problem (e.g. 100) of each model on the same problems (one run
per model, or one run with both). For each compute-matched budget "SE s vs WC w" (s in --se-samples):

* full measurement: each model's cost per sample (2·P·mean generated tokens over ALL its samples), the
  budget B = s · N · cost_SE (what `--match SE:s` means), each model alone at the samples per problem B
  buys, and the unbiased coverage@k of each over all N problems from all S samples; the *true pick* is
  the better of the two (with a paired bootstrap interval of the true difference, to show which budgets
  are close calls even with all the data);
* pilots: --replicates seeded subsets of --pilot-problems problems, with n in --pilot-samples samples
  per problem (``sample_idx < n``: the prefix a real pilot would have drawn). Each pilot is priced from
  its own samples and run through ``flopmatch.advise.advise_from_pilot`` exactly as `flopmatch advise
  --match SE:s` would; the *advised pick* is its best single model; its recommendation (possibly a
  mixture) is scored on the full data too (regret: true coverage of the best single allocation minus
  that of the recommendation, both measured from all S samples);
* reported per (n, budget): agreement of the advised and true picks, the share of pilots that were
  decided (paired interval excluding 0 in every family scenario, advise's default) and the agreement
  among them, the same for the chosen family's intervals alone (``decided_refit``), the regret, and the
  pilot's cost as a fraction of the budget B and of the full two-model measurement (2·B).

Pilot size: ``--pilot-problems auto`` (the default) sizes each pilot as `flopmatch advise` does without
``--pilot-problems``: MIN_PILOT_PROBLEMS problems, grown (nested, seeded) to the most that keep the pilot
within a tenth of the budget, so it differs per (n, budget); pilots of the same size share one fit.

Toy world (the forecast backtest's runs; see benchmarks/forecast.py for how they were sampled):

    nice -n 15 python benchmarks/advise.py --run runs/forecast-toy --run runs/forecast-toy-se \\
        --wc-samples-on-disk 100 --se-samples-on-disk 100 --se-samples 1,3,10,30 --pilot-samples 4,8,16 \\
        --replicates 20 --n-boot 100 --out docs/results/advise-backtest-toy.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd


def parse_ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def _graded_frame(run: Path, model: str) -> pd.DataFrame | None:
    from flopmatch.store import RunDir, read_shards, read_table

    r = RunDir(run)
    if not r.grades_path(model).exists():
        return None
    grades = read_table(r.grades_path(model), columns=["problem_id", "sample_idx", "status"]).to_pandas()
    samples = read_shards(r.samples_dir(model), columns=["problem_id", "sample_idx", "completion_tokens"])
    samples = samples.to_pandas().drop_duplicates(["problem_id", "sample_idx"])
    return grades.merge(samples, how="left", on=["problem_id", "sample_idx"])


def _ledger_params(run: Path, model: str) -> int:
    from flopmatch.ledger import summarize_ledger
    from flopmatch.store import model_key

    ledger = summarize_ledger(run)
    mine = ledger[ledger["model"].map(model_key) == model_key(model)]
    return int(mine["params"].dropna().iloc[0])


class Graded:
    """One model's graded samples as matrices over (problem, sample_idx): correct and generated tokens."""

    model: str
    samples: int
    ids: list[str]
    correct: np.ndarray
    tokens: np.ndarray
    params: int

    @classmethod
    def load(cls, runs: list[Path], model: str, samples: int | None = None) -> Graded:
        """The model's graded samples from the run (of ``runs``) with the most problems holding at least
        ``samples`` graded samples (default: as many as the most complete problem has); the first
        ``samples`` of each (a prefix, as a smaller run would have drawn them)."""
        best = None
        for run in runs:
            frame = _graded_frame(run, model)
            if frame is None:
                continue
            counts = frame.groupby("problem_id")["sample_idx"].count()
            need = samples or int(counts.max())
            complete = counts[counts >= need].index
            if best is None or len(complete) > len(best[2]):
                best = (run, frame, complete, need)
        if best is None:
            raise SystemExit(
                f"no graded samples of {model} in {', '.join(map(str, runs))} (run flopmatch grade)"
            )
        run, frame, complete, full = best
        frame = frame[frame["problem_id"].isin(set(complete)) & (frame["sample_idx"] < full)]
        self = cls.__new__(cls)
        self.model, self.samples, self.run = model, full, run
        self.ids = sorted(complete)
        index = {pid: i for i, pid in enumerate(self.ids)}
        rows, cols = frame["problem_id"].map(index).to_numpy(), frame["sample_idx"].to_numpy()
        self.correct = np.zeros((len(self.ids), full), dtype=bool)
        self.correct[rows, cols] = (frame["status"] == "correct").to_numpy()
        self.tokens = np.zeros((len(self.ids), full))
        self.tokens[rows, cols] = frame["completion_tokens"].fillna(0).to_numpy()
        self.params = _ledger_params(run, model)
        return self

    def restrict(self, ids: list[str]) -> Graded:
        """The same model on a subset of its problems (in the given order)."""
        index = {pid: i for i, pid in enumerate(self.ids)}
        rows = np.array([index[pid] for pid in ids])
        out = Graded.__new__(Graded)
        out.__dict__.update(self.__dict__)
        out.ids, out.correct, out.tokens = list(ids), self.correct[rows], self.tokens[rows]
        return out

    def cost_per_sample(self, rows: np.ndarray | None = None, n: int | None = None) -> float:
        tokens = self.tokens if rows is None else self.tokens[rows, :n]
        return 2.0 * self.params * float(tokens.mean())


def true_miss(model: Graded, k: int) -> np.ndarray:
    """Per problem: C(n−c, k)/C(n, k) from all S samples (the unbiased chance that k samples all fail)."""
    from flopmatch.metrics import pass_at_k

    if k == 0:
        return np.ones(len(model.ids))
    c = model.correct.sum(axis=1)
    return np.array([1.0 - pass_at_k(model.samples, int(ci), k) for ci in c])


def true_coverage(models: list[Graded], samples: dict[str, int]) -> tuple[float, np.ndarray]:
    """Coverage of an allocation measured from all S samples (models sample independently: misses multiply)."""
    miss = np.ones(len(models[0].ids))
    for m in models:
        miss = miss * true_miss(m, samples.get(m.model, 0))
    covered = 1.0 - miss
    return float(covered.mean()), covered


def pilot_models(models: list[Graded], rows: np.ndarray, n: int) -> list:
    from flopmatch.pilot import ModelCost, PilotModel

    out = []
    for m in models:
        counts = pd.DataFrame({
            "problem_id": [m.ids[i] for i in rows], "n": n, "c": m.correct[rows, :n].sum(axis=1),
            "unique_correct": 0, "tokens": m.tokens[rows, :n].sum(axis=1),
        })  # fmt: skip
        cost = ModelCost(m.model, samples=len(rows) * n, completion_tokens=int(m.tokens[rows, :n].sum()),
                         seconds=0.0, params=m.params)  # fmt: skip
        out.append(PilotModel(m.model, counts, cost))
    return out


def truth_table(models: list[Graded], se_samples: list[int], n_boot: int, seed: int) -> list[dict]:
    """Per budget: each model alone at what the budget buys, measured on all S samples; the true pick."""
    wc, se = models
    rng = np.random.default_rng(seed)
    out = []
    for s in se_samples:
        budget = s * len(se.ids) * se.cost_per_sample()
        k_wc = int(budget / (len(wc.ids) * wc.cost_per_sample()))
        if k_wc > wc.samples or s > se.samples:
            continue
        cov_wc, per_wc = true_coverage(models, {wc.model: k_wc})
        cov_se, per_se = true_coverage(models, {se.model: s})
        diff = per_wc - per_se
        boot = [diff[rng.integers(0, len(diff), len(diff))].mean() for _ in range(n_boot)]
        lo, hi = np.percentile(boot, [2.5, 97.5])
        out.append({
            "se_samples": s, "wc_samples": k_wc, "budget_flops": budget, "coverage_wc": cov_wc,
            "coverage_se": cov_se, "difference": cov_wc - cov_se, "difference_ci": [float(lo), float(hi)],
            "pick": wc.model if cov_wc > cov_se else se.model, "clear": bool(lo > 0 or hi < 0),
        })  # fmt: skip
    return out


def pilot_size(models: list[Graded], ids: list[str], n: int, se_samples: int, args, rep: int) -> int:
    """--pilot-problems, or advise's default: start on MIN_PILOT_PROBLEMS, price a sample from that pilot,
    grow (nested) to the most problems that keep the pilot within TARGET_PILOT_FRACTION of the budget."""
    from flopmatch.advise import MIN_PILOT_PROBLEMS, TARGET_PILOT_FRACTION

    if args.pilot_problems != "auto":
        return int(args.pilot_problems)
    size = min(len(ids), MIN_PILOT_PROBLEMS)
    pilots = pilot_models(models, subset_rows(ids, size, args.seed + rep), n)
    per_sample = [p.cost.per_sample("flops") for p in pilots]
    budget = se_samples * len(ids) * per_sample[1]
    return min(len(ids), max(size, int(TARGET_PILOT_FRACTION * budget / (n * sum(per_sample)))))


def subset_rows(ids: list[str], size: int, seed: int) -> np.ndarray:
    """Row indices of the seeded pilot subset (nested across sizes), as `flopmatch advise` draws it."""
    from flopmatch.pilot import pilot_problems
    from flopmatch.problems import Problem

    problems = [
        Problem(problem_id=pid, question="", answer="", dataset="toyworld", split="test") for pid in ids
    ]
    subset = {p.problem_id for p in pilot_problems(problems, size, seed=seed)}
    return np.array([i for i, pid in enumerate(ids) if pid in subset])


def backtest(models: list[Graded], truths: list[dict], args, on_replicate=None) -> list[dict]:
    """Every (n, replicate) pilot through advise_from_pilot at every budget; one row per (n, rep, budget).
    The pilot is sized per budget (:func:`pilot_size`); pilots of the same size share one forecaster."""
    from flopmatch.advise import advise_from_pilot
    from flopmatch.mixture import Forecaster
    from flopmatch.pilot import Budget

    ids = models[0].ids
    rows = []
    for n in args.pilot_samples:
        for rep in range(args.replicates):
            forecasters: dict[int, tuple[list, Forecaster]] = {}
            for truth in truths:
                size = pilot_size(models, ids, n, truth["se_samples"], args, rep)
                if size not in forecasters:
                    pilots = pilot_models(models, subset_rows(ids, size, args.seed + rep), n)
                    forecasters[size] = (pilots, Forecaster(pilots, n_problems=len(ids), n_boot=args.n_boot,
                                                            seed=args.seed + rep))  # fmt: skip
                pilots, forecaster = forecasters[size]
                se_cost = pilots[1].cost.per_sample("flops")
                budget = Budget(
                    truth["se_samples"] * len(ids) * se_cost, "flops", f"SE {truth['se_samples']}"
                )
                advice = advise_from_pilot(pilots, budget, n_problems=len(ids), forecaster=forecaster,
                                           frontier=False)  # fmt: skip
                # the same pilot with the chosen family's intervals only: is the "decided" flag calibrated?
                # (intervals="refit": scenario 0 of the evaluation just made, not a second bootstrap)
                refit = advise_from_pilot(pilots, budget, n_problems=len(ids),
                                          forecaster=forecaster.chosen_families(), frontier=False)  # fmt: skip
                singles = [c for c in advice.candidates if c.is_single]
                pick = singles[0].models[0]
                rec_true, _ = true_coverage(models, advice.best.samples)
                best_single_true = max(truth["coverage_wc"], truth["coverage_se"])
                rows.append({
                    "n": n, "replicate": rep, "se_samples": truth["se_samples"], "pilot_problems": size, "pick": pick,
                    "true_pick": truth["pick"], "agree": pick == truth["pick"], "decided": advice.decision.decided,
                    "decided_refit": refit.decision.decided, "scenarios": len(forecaster.scenarios),
                    "recommendation": advice.best.label, "mixture": not advice.best.is_single,
                    "regret": best_single_true - rec_true, "pilot_fraction_of_budget": advice.pilot["fraction_of_budget"],
                    "pilot_fraction_of_full": advice.pilot["flops"] / (2 * truth["budget_flops"]),
                    "forecast_wc": next(c.forecast for c in singles if c.models == [models[0].model]),
                    "forecast_se": next(c.forecast for c in singles if c.models == [models[1].model]),
                })  # fmt: skip
            print(f"n={n} replicate {rep + 1}/{args.replicates} done", flush=True)
            if on_replicate is not None:
                on_replicate(rows)
    return rows


def summarize(rows: list[dict]) -> list[dict]:
    frame = pd.DataFrame(rows)
    out = []
    for (n, s), group in frame.groupby(["n", "se_samples"]):
        decided, decided_refit = group[group["decided"]], group[group["decided_refit"]]
        out.append({
            "n": int(n), "se_samples": int(s), "pilots": len(group), "agree": float(group["agree"].mean()),
            "pilot_problems_mean": float(group["pilot_problems"].mean()),
            "decided": float(group["decided"].mean()),
            "agree_when_decided": float(decided["agree"].mean()) if len(decided) else None,
            "wrong_when_decided": int((~decided["agree"]).sum()),
            "decided_refit": float(group["decided_refit"].mean()),
            "wrong_when_decided_refit": int((~decided_refit["agree"]).sum()),
            "mixture_recommended": float(group["mixture"].mean()),
            "regret_mean_points": 100 * float(group["regret"].mean()),
            "regret_max_points": 100 * float(group["regret"].max()),
            "pilot_fraction_of_budget": float(group["pilot_fraction_of_budget"].mean()),
            "pilot_fraction_of_full": float(group["pilot_fraction_of_full"].mean()),
        })  # fmt: skip
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--run", type=Path, action="append", required=True, help="a graded run (repeatable)")
    parser.add_argument("--wc", default="toyworld-wc")
    parser.add_argument("--se", default="toyworld-se")
    parser.add_argument("--se-samples", type=parse_ints, default=parse_ints("1,3,10,30"), help="budgets")
    parser.add_argument(
        "--wc-samples-on-disk", dest="wc_samples", type=int, help="use problems with this many"
    )
    parser.add_argument(
        "--se-samples-on-disk", dest="se_samples_disk", type=int, help="use problems with this many"
    )
    parser.add_argument("--pilot-samples", type=parse_ints, default=parse_ints("4,8"))
    parser.add_argument(
        "--pilot-problems",
        default="auto",
        help="problems per pilot, or auto: advise's default (a tenth of the budget)",
    )
    parser.add_argument("--replicates", type=int, default=20)
    parser.add_argument("--n-boot", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    started = time.perf_counter()
    models = [
        Graded.load(args.run, args.wc, args.wc_samples),
        Graded.load(args.run, args.se, args.se_samples_disk),
    ]
    common = sorted(set(models[0].ids) & set(models[1].ids))
    if not common:
        raise SystemExit("the two models' runs share no problem with enough graded samples")
    models = [m.restrict(common) for m in models]
    truths = truth_table(models, args.se_samples, n_boot=1000, seed=args.seed)

    def result(rows: list[dict]) -> dict:
        return {
            "problems": len(common), "samples_per_problem": {m.model: m.samples for m in models},
            "runs": {m.model: str(m.run) for m in models},
            "cost_per_sample_flops": {m.model: m.cost_per_sample() for m in models}, "truth": truths,
            "summary": summarize(rows) if rows else [], "rows": rows, "seconds": time.perf_counter() - started,
            "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items() if k != "run"},
        }  # fmt: skip

    def save(rows: list[dict]) -> None:  # after every replicate, so an interrupted backtest keeps its rows
        if args.out:
            args.out.write_text(json.dumps(result(rows), indent=1, default=str))

    rows = backtest(models, truths, args, on_replicate=save)
    save(rows)
    final = result(rows)
    print(
        json.dumps({k: final[k] for k in ("problems", "samples_per_problem", "truth", "summary")}, indent=1)
    )


if __name__ == "__main__":
    main()
