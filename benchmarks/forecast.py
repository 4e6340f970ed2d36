"""Backtest of `flopmatch forecast`: a small pilot's forecast vs what S samples per problem measured.

For every model of the given graded runs, with S samples per problem on every problem:

* truth: the unbiased coverage@k and diversity@k (unique correct solutions, exact after
  normalisation) over ALL problems of the run from all S samples;
* pilots: n samples per problem (``sample_idx < n``) on a subset of ``--pilot-problems`` problems —
  the first ones (sorted ids), the other disjoint blocks, and ``--random-subsets`` seeded random
  subsets; each pilot is forecast with bootstrap intervals (refitting), and Brown et al.'s power law is
  fitted to the same pilot's unbiased coverage curve (k = 1..n);
* reported per (n, k): the forecast's absolute error (points of coverage / unique solutions), the
  share of pilots whose 95% interval covers the truth, the power law's absolute error, and the paired
  difference |forecast error| - |power-law error| over (model, pilot) with a bootstrap interval and a
  sign-flip test; plus the forecast of the same pilot with each family forced, to judge the choice.

Toy world (the README's numbers; the sampling is cached in the run directories and reused):

    flopmatch sample --run runs/forecast-toy --model toyworld-wc -S 100 --problems toyworld --split test \\
        --limit 300 --backend hf --max-tokens 128 -o batch_size=256
    flopmatch sample --run runs/forecast-toy-se --model toyworld-se -S 100 --problems toyworld --split test \\
        --limit 300 --backend hf --max-tokens 128 -o batch_size=256
    flopmatch grade runs/forecast-toy; flopmatch grade runs/forecast-toy-se
    python benchmarks/forecast.py --run runs/forecast-toy --out runs/forecast_backtest_wc.json \
        --families beta-binomial,zero-inflated-beta,logit-normal,beta-mixture     # and runs/forecast-toy-se

Intervals: ``--intervals families`` (the library's default) is the union over the families the pilot cannot
rule out; each row also keeps the chosen family's own refit interval (``refit_low/high``), and the summary
counts how often each covers the truth. ``--no-pilot-target`` skips the --target pilot forecasts (faster);
``--pilot-only`` does only them. The --target pilot forecast takes the same ``--intervals``; with families
its rows keep the chosen family's own interval too (``pilot_refit_low/high``, exactly what ``--intervals
refit`` gives: every family bootstraps from its own seeded generator), so one run compares both:

    nice -n 19 python benchmarks/forecast.py --run runs/forecast-toy --pilot-only \
        --out docs/results/forecast-backtest-toy/pilot_target_wc.json        # and runs/forecast-toy-se

Unique-correct intervals: ``--unique-intervals profile`` spans the Pitman-Yor discounts the pilot cannot rule
out (and, for --target pilot, draws the distinct solutions still to come); the rows keep the MLE's own interval
beside it (``unique_mle_low/high``, ``pilot_unique_mle_low/high``), the summary both hit rates and widths:

    nice -n 19 python benchmarks/forecast.py --run runs/forecast-toy --no-pilot-target --unique-intervals profile \
        --families logit-normal,skew-logit-normal --out docs/results/forecast-backtest-toy/unique_profile_wc.json

Pilots are 3 disjoint blocks of 100 problems plus 5 random subsets that overlap them, so the 8 pilots of a
cell are not independent: the paired intervals and p-values are optimistic about that.

Real models (a small slice): ``--pilots 4 --ks 4,8,16 --pilot-problems 20 --random-subsets 0``.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

FORCED = ("beta-binomial", "zero-inflated-beta", "logit-normal", "skew-logit-normal", "beta-mixture")


def parse_ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def pilot_subsets(pids: list[str], size: int, random_subsets: int, seed: int) -> list[tuple[str, list[str]]]:
    """Disjoint blocks of ``size`` in id order (the first is 'first'), then seeded random subsets."""
    out = [(f"block{i}" if i else "first", pids[i * size:(i + 1) * size]) for i in range(len(pids) // size)]
    rng = np.random.default_rng(seed)
    for r in range(random_subsets):
        out.append((f"random{r}", [pids[i] for i in sorted(rng.choice(len(pids), size, replace=False))]))
    return out


def backtest_model(name, data, args) -> list[dict]:
    from flopmatch.forecast import fit_success, forecast_counts, forecast_pilot
    from flopmatch.forecast_run import measured_at, problem_counts

    full = data.max_samples
    truth_pids = sorted(data.complete(full))
    truth = {k: measured_at(data, full, truth_pids, k) for k in args.ks if k <= full}
    rows = []
    subsets = pilot_subsets(truth_pids, min(args.pilot_problems, len(truth_pids)), args.random_subsets, args.seed)
    for label, pids in subsets:
        for n in args.pilots:
            started = time.perf_counter()
            counts = problem_counts(data, n, pids)
            fc = None if args.pilot_only else forecast_counts(counts, args.ks, model=name, n_boot=args.n_boot,
                                                              seed=args.seed, intervals=args.intervals,
                                                              unique_intervals=args.unique_intervals)
            forced = {} if fc is None else {f: fit_success(counts["n"], counts["c"], family=f) for f in args.families}
            own = None if args.no_pilot_target else forecast_pilot(
                counts, [k for k in args.ks if k >= n], n_boot=args.n_boot, seed=args.seed, intervals=args.intervals,
                unique_intervals=args.unique_intervals)
            subset_truth = {k: measured_at(data, full, pids, k) for k in truth}
            prefix = {} if own is None else {k: measured_at(data, k, pids, k) for k in truth if k >= n}
            for k in (k for k in args.ks if k in truth):
                rows.append({
                    "model": name, "subset": label, "n": n, "k": k, "problems": len(pids), "S": full,
                    "coverage_true": truth[k][0], "unique_true": truth[k][1],
                    "coverage_true_subset": subset_truth[k][0], "unique_true_subset": subset_truth[k][1],
                    **({"coverage_true_prefix": prefix[k][0], "unique_true_prefix": prefix[k][1]} if k in prefix else {}),
                    **(_population_fields(fc, k, forced) if fc is not None else {}),
                    **_pilot_fields(own, k),
                    "seconds": time.perf_counter() - started,
                })
            if not args.quiet:
                chosen = (fc if fc is not None else own).fit.family
                print(f"  {name} {label} n={n}: {chosen}, {time.perf_counter() - started:.1f} s", flush=True)
    return rows


def _population_fields(fc, k: int, forced: dict) -> dict:
    """The forecast for the population (truth: coverage_true), and each family of ``forced`` on its own."""
    p = next(q for q in fc.points if q.k == k)
    return {
        "family": fc.fit.family, "coverage": p.coverage, "coverage_low": p.coverage_low,
        "coverage_high": p.coverage_high,
        "refit_low": p.refit_coverage_low if p.refit_coverage_low is not None else p.coverage_low,
        "refit_high": p.refit_coverage_high if p.refit_coverage_high is not None else p.coverage_high,
        "interval_families": fc.interval_families, "power_law": p.power_law_coverage,
        **{f"coverage_{f}": float(fit.coverage(k)) for f, fit in forced.items()},
        "unique": p.unique_correct, "unique_low": p.unique_correct_low, "unique_high": p.unique_correct_high,
        **_mle_unique(p, "unique"), "unique_discounts": fc.unique_discounts,
    }


def _mle_unique(p, prefix: str) -> dict:
    """With --unique-intervals profile: the MLE (theta, d)'s own unique@k interval (= --unique-intervals
    bootstrap for the population target); otherwise the interval itself."""
    own = p.mle_unique_correct_low is not None
    return {f"{prefix}_mle_low": p.mle_unique_correct_low if own else p.unique_correct_low,
            f"{prefix}_mle_high": p.mle_unique_correct_high if own else p.unique_correct_high}


def _pilot_fields(own, k: int) -> dict:
    """The empirical-Bayes forecast for the pilot problems themselves (truth: *_true_subset); with
    --intervals families also the chosen family's own interval (pilot_refit_*, = --intervals refit)."""
    q = next((q for q in own.points if q.k == k), None) if own is not None else None
    if q is None:
        return {}
    return {"pilot_family": own.fit.family, "pilot_interval_families": own.interval_families,
            "pilot_coverage": q.coverage, "pilot_coverage_low": q.coverage_low,
            "pilot_coverage_high": q.coverage_high,
            "pilot_refit_low": q.refit_coverage_low if q.refit_coverage_low is not None else q.coverage_low,
            "pilot_refit_high": q.refit_coverage_high if q.refit_coverage_high is not None else q.coverage_high,
            "pilot_unique": q.unique_correct, "pilot_unique_low": q.unique_correct_low,
            "pilot_unique_high": q.unique_correct_high, **_mle_unique(q, "pilot_unique"),
            "pilot_unique_discounts": own.unique_discounts}


def _covered(low, value, high) -> bool:
    return low is not None and low <= value <= high


def summarise(rows: list[dict]) -> list[dict]:
    groups = defaultdict(list)
    for r in rows:
        groups[(r["n"], r["k"])].append(r)
    return [{"n": n, "k": k, "pilots": len(rs), **_population_summary(rs), **_pilot_summary(rs)}
            for (n, k), rs in sorted(groups.items())]


def _population_summary(rs: list[dict]) -> dict:
    """Errors and interval hits of the population forecast (none with --pilot-only)."""
    from flopmatch.paired import paired_bootstrap, sign_flip_test

    if "coverage" not in rs[0]:
        return {}
    err = np.array([r["coverage"] - r["coverage_true"] for r in rs])
    first = [r for r in rs if r["subset"] == "first"]
    pl = np.array([np.nan if r["power_law"] is None else r["power_law"] - r["coverage_true"] for r in rs])
    ok = ~np.isnan(pl)
    diff = np.abs(err[ok]) - np.abs(pl[ok])
    interval = paired_bootstrap(np.abs(err[ok]), np.abs(pl[ok]), n_boot=2000, seed=0) if ok.sum() > 1 else None
    uerr = np.array([r["unique"] - r["unique_true"] for r in rs if r["unique"] is not None])
    return {
        "coverage_mae_pts": 100 * float(np.mean(np.abs(err))),
        "coverage_bias_pts": 100 * float(np.mean(err)),
        "coverage_first_err_pts": [round(100 * (r["coverage"] - r["coverage_true"]), 2) for r in first],
        "coverage_interval_hit": float(np.mean([_covered(r["coverage_low"], r["coverage_true"], r["coverage_high"])
                                               for r in rs])),
        "coverage_interval_width_pts": 100 * float(np.mean([r["coverage_high"] - r["coverage_low"] for r in rs])),
        **_refit_summary(rs),
        "power_law_mae_pts": 100 * float(np.mean(np.abs(pl[ok]))) if ok.any() else None,
        "forecast_minus_power_law_abs_err_pts": (
            [100 * interval.diff, 100 * interval.low, 100 * interval.high] if interval else None),
        "sign_flip_p": sign_flip_test(diff, seed=0) if diff.size else None,
        **{f"mae_pts_{f}": 100 * float(np.mean([abs(r[f"coverage_{f}"] - r["coverage_true"]) for r in rs]))
           for f in FORCED if f"coverage_{f}" in rs[0]},
        "families": {f: sum(r["family"] == f for r in rs) for f in FORCED[:4]},
        "unique_mae": float(np.mean(np.abs(uerr))) if uerr.size else None,
        "unique_bias": float(np.mean(uerr)) if uerr.size else None,
        "unique_interval_hit": float(np.mean([_covered(r["unique_low"], r["unique_true"], r["unique_high"])
                                             for r in rs if r["unique"] is not None])) if uerr.size else None,
        **(_unique_widths(rs, "unique", "unique_true") if uerr.size else {}),
    }


def _unique_widths(rs: list[dict], prefix: str, true: str) -> dict:
    """unique@k interval hits and mean widths, the chosen --unique-intervals and the MLE's own (_mle_)."""
    rs = [r for r in rs if r[prefix] is not None]
    return {f"{prefix}_interval_width": float(np.mean([r[f"{prefix}_high"] - r[f"{prefix}_low"] for r in rs])),
            f"{prefix}_mle_interval_width": float(np.mean([r[f"{prefix}_mle_high"] - r[f"{prefix}_mle_low"]
                                                           for r in rs])),
            f"{prefix}_mle_interval_hit": float(np.mean([_covered(r[f"{prefix}_mle_low"], r[true],
                                                                  r[f"{prefix}_mle_high"]) for r in rs])),
            f"{prefix}_true_mean": float(np.mean([r[true] for r in rs]))}


def _refit_summary(rs: list[dict]) -> dict:
    """With --intervals families: the chosen family's own (refit) interval, for comparison."""
    if "refit_low" not in rs[0]:
        return {}
    return {"refit_interval_hit": float(np.mean([_covered(r["refit_low"], r["coverage_true"], r["refit_high"])
                                                 for r in rs])),
            "refit_interval_width_pts": 100 * float(np.mean([r["refit_high"] - r["refit_low"] for r in rs])),
            "interval_families": {f: sum(f in r["interval_families"] for r in rs) for f in FORCED}}


def _pilot_summary(rs: list[dict]) -> dict:
    """The --target pilot forecast's errors, interval hits and widths, and the chosen family's own (refit)
    interval beside the --intervals one (the same with --intervals refit). Two truths: the unbiased
    coverage@k of the pilot problems from all S samples (``*_subset``: an average over which k samples)
    and what their first k samples, pilot included, did solve (``*_prefix``: the realisation the
    forecast's interval, which includes the randomness of the samples still to draw, is for)."""
    rs = [r for r in rs if "pilot_coverage" in r]
    if not rs:
        return {}
    out = {}
    for truth in ("subset", "prefix"):
        true = f"coverage_true_{truth}"
        err = np.array([r["pilot_coverage"] - r[true] for r in rs])
        tag = "" if truth == "subset" else "_prefix"
        out |= {f"pilot_coverage{tag}_mae_pts": 100 * float(np.mean(np.abs(err))),
                f"pilot_coverage{tag}_bias_pts": 100 * float(err.mean())}
        for kind, (low, high) in {"coverage": ("pilot_coverage_low", "pilot_coverage_high"),
                                  "refit": ("pilot_refit_low", "pilot_refit_high")}.items():
            out[f"pilot_{kind}{tag}_interval_hit"] = float(np.mean([_covered(r[low], r[true], r[high]) for r in rs]))
    for kind, (low, high) in {"coverage": ("pilot_coverage_low", "pilot_coverage_high"),
                              "refit": ("pilot_refit_low", "pilot_refit_high")}.items():
        out[f"pilot_{kind}_interval_width_pts"] = 100 * float(np.mean([r[high] - r[low] for r in rs]))
    out["pilot_interval_families"] = {f: sum(f in r["pilot_interval_families"] for r in rs) for f in FORCED}
    out["pilot_families"] = {f: sum(r["pilot_family"] == f for r in rs) for f in FORCED[:4]}
    if rs[0]["pilot_unique"] is not None:
        uerr = np.array([r["pilot_unique"] - r["unique_true_subset"] for r in rs])
        out |= {"pilot_unique_mae": float(np.mean(np.abs(uerr))), "pilot_unique_bias": float(uerr.mean()),
                "pilot_unique_interval_hit": float(np.mean([_covered(r["pilot_unique_low"], r["unique_true_subset"],
                                                                     r["pilot_unique_high"]) for r in rs])),
                "pilot_unique_prefix_interval_hit": float(np.mean([_covered(
                    r["pilot_unique_low"], r["unique_true_prefix"], r["pilot_unique_high"]) for r in rs])),
                **_unique_widths(rs, "pilot_unique", "unique_true_prefix")}
    return out


def pilot_markdown(summary: list[dict]) -> str:
    """Coverage: error and interval hits against both truths (_pilot_summary), families vs refit widths."""
    lines = ["| n | k | pilots | error vs first k (pts), bias | families covers first k | refit covers first k | "
             "families covers unbiased | refit covers unbiased | families width (pts) | refit width (pts) | "
             "unique covers first k |", "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for s in summary:
        if "pilot_coverage_mae_pts" not in s:
            continue
        u = f"{100 * s['pilot_unique_prefix_interval_hit']:.0f}%" if "pilot_unique_mae" in s else "—"
        lines.append(
            f"| {s['n']} | {s['k']} | {s['pilots']} | {s['pilot_coverage_prefix_mae_pts']:.1f}, "
            f"{s['pilot_coverage_prefix_bias_pts']:+.1f} | {100 * s['pilot_coverage_prefix_interval_hit']:.0f}% | "
            f"{100 * s['pilot_refit_prefix_interval_hit']:.0f}% | {100 * s['pilot_coverage_interval_hit']:.0f}% | "
            f"{100 * s['pilot_refit_interval_hit']:.0f}% | {s['pilot_coverage_interval_width_pts']:.1f} | "
            f"{s['pilot_refit_interval_width_pts']:.1f} | {u} |")
    return "\n".join(lines)


def unique_markdown(summary: list[dict], prefix: str = "unique") -> str:
    """unique@k: truth, error, and interval hits and widths, --unique-intervals vs the MLE's own interval."""
    lines = ["| n | k | pilots | unique truth | interval covers | width | MLE's own interval covers | width |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|"]
    hit = "unique_interval_hit" if prefix == "unique" else "pilot_unique_prefix_interval_hit"
    for s in summary:
        if f"{prefix}_interval_width" not in s:
            continue
        lines.append(f"| {s['n']} | {s['k']} | {s['pilots']} | {s[prefix + '_true_mean']:.2f} | "
                     f"{100 * s[hit]:.0f}% | {s[prefix + '_interval_width']:.2f} | "
                     f"{100 * s[prefix + '_mle_interval_hit']:.0f}% | {s[prefix + '_mle_interval_width']:.2f} |")
    return "\n".join(lines)


def markdown(summary: list[dict]) -> str:
    lines = ["| n | k | pilots | coverage |err| (pts) | bias | 95% interval covers truth | power law |err| | "
             "forecast − power law |err| [95% CI], p | unique |err| | unique bias | unique interval covers |",
             "|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|"]
    for s in summary:
        if "coverage_mae_pts" not in s:
            continue
        d = s["forecast_minus_power_law_abs_err_pts"]
        cmp = f"{d[0]:+.1f} [{d[1]:+.1f}, {d[2]:+.1f}], p={s['sign_flip_p']:.3g}" if d else "—"
        pl = f"{s['power_law_mae_pts']:.1f}" if s["power_law_mae_pts"] is not None else "—"
        ue = f"{s['unique_mae']:.2f}" if s["unique_mae"] is not None else "—"
        ub = f"{s['unique_bias']:+.2f}" if s["unique_bias"] is not None else "—"
        uh = f"{100 * s['unique_interval_hit']:.0f}%" if s["unique_interval_hit"] is not None else "—"
        lines.append(f"| {s['n']} | {s['k']} | {s['pilots']} | {s['coverage_mae_pts']:.1f} | "
                     f"{s['coverage_bias_pts']:+.1f} | {100 * s['coverage_interval_hit']:.0f}% | {pl} | {cmp} | "
                     f"{ue} | {ub} | {uh} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, action="append", required=True, help="a graded run (repeatable)")
    parser.add_argument("--model", action="append", help="only these models (default: every graded model)")
    parser.add_argument("--pilots", type=parse_ints, default=[4, 8, 16], help="pilot samples per problem")
    parser.add_argument("--ks", type=parse_ints, default=[10, 33, 100], help="k to forecast (<= S)")
    parser.add_argument("--pilot-problems", type=int, default=100)
    parser.add_argument("--random-subsets", type=int, default=5)
    parser.add_argument("--n-boot", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--families", type=lambda t: t.split(","),
                        default=["beta-binomial", "zero-inflated-beta", "logit-normal"],
                        help="families also fitted on their own (point forecasts), e.g. add beta-mixture")
    parser.add_argument("--intervals", default="families", help="families | refit (flopmatch.forecast.INTERVALS)")
    parser.add_argument("--unique-intervals", default="bootstrap",
                        help="bootstrap | profile (flopmatch.forecast.UNIQUE_INTERVALS); rows keep the MLE's own "
                             "unique interval too (*_mle_low/high)")
    parser.add_argument("--no-pilot-target", action="store_true", help="skip the --target pilot forecasts")
    parser.add_argument("--pilot-only", action="store_true",
                        help="only the --target pilot forecasts (skip the population forecasts and forced families)")
    parser.add_argument("--out", type=Path, default=Path("forecast_backtest.json"))
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args()
    if args.pilot_only and args.no_pilot_target:
        parser.error("--pilot-only and --no-pilot-target leave nothing to forecast")

    from flopmatch.analysis import load_model_samples
    from flopmatch.judge import graded_models
    from flopmatch.store import RunDir

    rows = []
    for run_dir in args.run:
        run = RunDir(run_dir)
        for name, path in graded_models(run).items():
            if args.model and name not in args.model:
                continue
            data = load_model_samples(run, name, path)
            if not args.quiet:
                print(f"{name}: {len(data.problems)} problems, S = {data.max_samples}", flush=True)
            rows += backtest_model(name, data, args)
    per_model = {m: summarise([r for r in rows if r["model"] == m]) for m in dict.fromkeys(r["model"] for r in rows)}
    result = {"settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
              "summary": summarise(rows), "per_model": per_model, "rows": rows}
    args.out.write_text(json.dumps(result, indent=1, default=str))
    if not args.pilot_only:
        print("\nall models, forecast for the population (truth: all problems, S samples):\n"
              + markdown(result["summary"]))
        for m, s in per_model.items():
            print(f"\n{m}:\n" + markdown(s) + "\n\nunique@k intervals:\n" + unique_markdown(s))
    if not args.no_pilot_target:
        print("\nall models, forecast for the pilot problems themselves (--target pilot; truth: the same problems, "
              "S samples):\n" + pilot_markdown(result["summary"]))
        for m, s in per_model.items():
            print(f"\n{m} (pilot problems):\n" + pilot_markdown(s)
                  + "\n\nunique@k intervals (truth: the first k samples):\n" + unique_markdown(s, "pilot_unique"))
    print(f"\nrows and settings: {args.out}")


if __name__ == "__main__":
    main()
