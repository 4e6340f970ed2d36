"""`flopmatch build-sft`, `flopmatch train`, `flopmatch eval`: SFT data, fine-tuning, evaluation."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from flopmatch.cli._app import app, console, fail
from flopmatch.cli.inputs import SOURCES_HELP, QuietOption, load_problems, parse_ks, parse_options
from flopmatch.cli.tables import JsonOption, print_json, print_table, stdout_to_stderr


def _load_problems(source: str, split: str | None, data_file: Path | None, limit: int | None, seed: int | None):
    found = load_problems(Path(), source, split, data_file, limit, seed)  # a source given: no run is read
    if not found:
        raise fail(f"no problems from {source!r} (split {split!r}, limit {limit})")
    return found


# --------------------------------------------------------------------------- build-sft


@app.command("build-sft")
def build_sft_command(
    run: Annotated[Path, typer.Argument(help="the run directory")],
    source: Annotated[str, typer.Option("--source", "-m", help="the model whose correct solutions to use")],
    budget: Annotated[
        int | None, typer.Option("--budget", "-b", min=1, help="the plan's budget, named by its SE samples per problem (one of "
                         "`plan --se-samples`; the plan gives this model's S); a model sampled by --allocation takes every "
                         "correct solution without it")
    ] = None,
    samples_per_problem: Annotated[
        int | None, typer.Option("--samples-per-problem", "-S", min=1, help="use this S directly (no plan needed)")
    ] = None,
    max_per_problem: Annotated[
        int | None, typer.Option("--max-per-problem", "-k", min=1, help="keep at most K correct solutions per problem")
    ] = None,
    dedupe: Annotated[bool, typer.Option("--dedupe", help="drop duplicate solutions of a problem")] = False,
    judge_filter: Annotated[bool, typer.Option("--judge-filter", help="drop solutions the judge called invalid")] = False,
    judge: Annotated[str | None, typer.Option("--judge", help="which judge's verdicts (when several)")] = None,
    number_matched_to: Annotated[
        str | None,
        typer.Option("--number-matched-to", help="the other model (use its samples per problem), a count, or an SFT set"),
    ] = None,
    name: Annotated[str | None, typer.Option(help="dataset name under RUN/sft/ (default: MODEL-bBUDGET plus option suffixes)")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the result as JSON")] = False,
    quiet: QuietOption = False,
) -> None:
    """Answer-correct solutions of one model → an HF dataset (`messages` + prompt/completion + lineage)."""
    from flopmatch.sft import build_sft

    if budget is None and samples_per_problem is None and not _allocated(run, source):
        raise fail("give --budget B (SE samples per problem, via plan.json) or --samples-per-problem S (a model "
                   "sampled by an allocation policy needs neither: its set is every correct solution it found)")
    result = build_sft(
        run, source_model=source, budget=budget, samples_per_problem=samples_per_problem,
        max_per_problem=max_per_problem, dedupe=dedupe, judge_filter=(judge or True) if judge_filter else False,
        number_matched_to=number_matched_to, name=name,
    )
    if as_json:
        console.print_json(json.dumps(result.to_dict()))
        return
    console.print(f"[bold]{result.path}[/]")
    console.print(f"  problems covered   {result.problems_covered} of {result.problems_total}")
    console.print(f"  examples           {result.examples}")
    console.print(f"  mean per problem   {result.mean_per_problem:.2f}  (S = {result.samples_per_problem})")


def _allocated(run: Path, source: str) -> bool:
    """Was ``source`` sampled by a non-uniform allocation policy (``flopmatch sample --allocation``)?"""
    from flopmatch.allocation_metrics import journal_of
    from flopmatch.store import RunDir

    journal = journal_of(RunDir(run), source)
    return journal is not None and journal["config"]["allocation"] != "uniform"


# --------------------------------------------------------------------------- train


@app.command("train")
def train_command(
    out: Annotated[Path, typer.Option("--out", "-o", help="output directory (checkpoints, best/)")],
    data: Annotated[Path | None, typer.Option("--data", help="an SFT dataset directory (from build-sft)")] = None,
    model: Annotated[str | None, typer.Option("--model", "-m", help="base model: HF id, directory or registry name")] = None,
    preset: Annotated[str, typer.Option(help="starting hyperparameters: default (the paper's) | tiny-cpu (TrainConfig presets)")] = "default",
    config_file: Annotated[
        Path | None, typer.Option("--config", help="a JSON/YAML file of TrainConfig fields (over the preset)")
    ] = None,
    lr: Annotated[float | None, typer.Option("--lr", help="peak learning rate")] = None,
    batch_size: Annotated[int | None, typer.Option("--batch-size", min=1, help="per-device batch")] = None,
    grad_accum: Annotated[int | None, typer.Option("--grad-accum", min=1, help="gradient accumulation steps")] = None,
    epochs: Annotated[float | None, typer.Option("--epochs", help="epochs (ignored with --max-steps)")] = None,
    max_steps: Annotated[int | None, typer.Option("--max-steps", min=1, help="optimizer steps")] = None,
    max_length: Annotated[int | None, typer.Option("--max-length", min=8, help="tokens per example")] = None,
    warmup_ratio: Annotated[
        float | None, typer.Option("--warmup-ratio", help="fraction of the optimizer steps with linear warmup (rounded up)")
    ] = None,
    scheduler: Annotated[str | None, typer.Option("--scheduler", help="cosine | linear | constant_with_warmup ...")] = None,
    seed: Annotated[
        list[int] | None,
        typer.Option(help="training seed (data order, new parameters); repeat it to train once per seed, each "
                     "into OUT-s<seed>"),
    ] = None,
    bf16: Annotated[bool | None, typer.Option("--bf16/--no-bf16", help="bf16 mixed precision")] = None,
    gradient_checkpointing: Annotated[bool | None, typer.Option("--gradient-checkpointing/--no-gradient-checkpointing")] = None,
    cpu: Annotated[bool | None, typer.Option("--cpu/--no-cpu", help="train on CPU")] = None,
    checkpoints: Annotated[int | None, typer.Option("--checkpoints", min=1, help="evenly spaced checkpoints")] = None,
    lora: Annotated[bool, typer.Option("--lora", help="train a LoRA adapter (peft)")] = False,
    lora_r: Annotated[int, typer.Option("--lora-r", min=1)] = 16,
    lora_alpha: Annotated[int, typer.Option("--lora-alpha", min=1)] = 32,
    lora_dropout: Annotated[float, typer.Option("--lora-dropout")] = 0.05,
    lora_targets: Annotated[str, typer.Option("--lora-targets", help="comma-separated module names or all-linear")] = "all-linear",
    val_problems: Annotated[
        str | None, typer.Option("--val-problems", help="validation source for checkpoint selection (held out!)")
    ] = None,
    val_split: Annotated[str | None, typer.Option("--val-split")] = None,
    val_data_file: Annotated[Path | None, typer.Option("--val-data-file")] = None,
    val_limit: Annotated[int | None, typer.Option("--val-limit", min=1)] = None,
    val_seed: Annotated[int | None, typer.Option("--val-seed")] = None,
    select_backend: Annotated[str, typer.Option("--select-backend", help="engine for validation: hf | vllm")] = "hf",
    select_max_tokens: Annotated[int, typer.Option("--select-max-tokens", min=1)] = 512,
    option: Annotated[list[str] | None, typer.Option("--option", help="selection backend option KEY=VALUE")] = None,
    select_only: Annotated[
        bool, typer.Option("--select-only", help="only (re)select the best checkpoint of --out on the validation set")
    ] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="replace a different run in --out")] = False,
    as_json: JsonOption = False,
    quiet: QuietOption = False,
) -> None:
    """Fine-tune with TRL (completion-only loss), save N checkpoints, keep the best on validation.

    Multi-GPU: `accelerate launch --config_file examples/accelerate/deepspeed_zero3.yaml -m flopmatch train
    --data ... --model ... --out ...` (same options), then `flopmatch train --out DIR --select-only --val-problems ...`.
    """
    from flopmatch.training import LoraSettings, TrainConfig, select_checkpoint

    validation = (
        _load_problems(val_problems, val_split, val_data_file, val_limit, val_seed) if val_problems else None
    )
    if select_only:
        if validation is None:
            raise fail("--select-only needs --val-problems")
        with stdout_to_stderr(as_json):
            selection = select_checkpoint(out, validation, backend=select_backend, max_tokens=select_max_tokens,
                                          backend_options=parse_options(option))  # fmt: skip
        if as_json:
            print_json({"best": str(selection.best), "best_step": selection.best_step, "metric": selection.metric,
                        "validation_scores": selection.scores})  # fmt: skip
            return
        _print_scores(selection.scores, selection.best_step)
        console.print(f"best: [bold]{selection.best}[/]")
        return
    if data is None or model is None:
        raise fail("--data and --model are required (unless --select-only)")

    values: dict[str, Any] = {}
    if config_file is not None:
        values.update(_read_config_file(config_file))
    overrides = {
        "learning_rate": lr, "per_device_batch_size": batch_size, "gradient_accumulation_steps": grad_accum,
        "num_train_epochs": epochs, "max_steps": max_steps, "max_length": max_length, "warmup_ratio": warmup_ratio,
        "lr_scheduler_type": scheduler, "bf16": bf16, "gradient_checkpointing": gradient_checkpointing,
        "use_cpu": cpu, "n_checkpoints": checkpoints,
    }
    values.update({k: v for k, v in overrides.items() if v is not None})
    if lora:
        targets: list[str] | str = lora_targets if lora_targets == "all-linear" else [
            t.strip() for t in lora_targets.split(",") if t.strip()]
        values["lora"] = LoraSettings(r=lora_r, alpha=lora_alpha, dropout=lora_dropout, target_modules=targets)
    seeds = list(dict.fromkeys(seed or []))
    if len(seeds) == 1:
        values["seed"] = seeds[0]
    config = TrainConfig.from_preset(preset, **values)  # the app reports an unknown preset or a bad value
    # several seeds: one run per seed, OUT-s<seed> each (as a study names its extra seeds)
    runs = [(out, config)] if len(seeds) < 2 else [
        (out.with_name(f"{out.name}-s{s}"), config.model_copy(update={"seed": s})) for s in seeds]
    results = []
    for out_dir, run_config in runs:
        if len(runs) > 1 and not as_json:
            console.print(f"[bold]seed {run_config.seed}[/] → {out_dir}")
        with stdout_to_stderr(as_json):
            result = _train_and_report(data, model, out_dir, run_config, validation, select_backend,
                                       select_max_tokens, option, overwrite, report=not as_json)  # fmt: skip
        results.append(result)
    if as_json and all(r is not None for r in results):  # None: not rank 0 of a multi-process launch
        print_json([r.to_dict() for r in results])


def _train_and_report(data: Path, model: str, out: Path, config: Any, validation: Any, select_backend: str,
                      select_max_tokens: int, option: list[str] | None, overwrite: bool, *, report: bool) -> Any:  # fmt: skip
    """One training run and (``report``) its console summary; the TrainResult, None off rank 0."""
    from flopmatch.models import resolve_model
    from flopmatch.training import best_checkpoint, is_main_process, train

    result = train(
        data, base_model=resolve_model(model), out_dir=out, config=config, validation=validation,
        select_backend=select_backend, select_max_tokens=select_max_tokens,
        select_options=parse_options(option), overwrite=overwrite,
    )
    if not is_main_process():
        return None  # in a multi-process launch, rank 0 reports
    if not report:
        return result
    console.print(f"[bold]{result.out_dir}[/]: {result.global_step} steps, {len(result.checkpoints)} checkpoints, "
                  f"{result.seconds:.1f} s ({result.steps_per_second:.2f} steps/s, {result.tokens_per_second:.0f} tokens/s)")
    if result.loss_history:
        first, last = result.loss_history[0], result.loss_history[-1]
        console.print(f"loss {first[1]:.4f} (step {first[0]}) → {last[1]:.4f} (step {last[0]})")
    if result.validation_scores:
        _print_scores(result.validation_scores, best_checkpoint(result.validation_scores))
    console.print(f"best: [bold]{result.best}[/]")
    return result


def _print_scores(scores: dict[int, float], best_step: int) -> None:
    rows = [(f"checkpoint-{step}", f"{scores[step]:.3f}" + (" ◀ best" if step == best_step else ""))
            for step in sorted(scores)]  # fmt: skip
    print_table(("checkpoint", "validation pass@1"), rows, keys={"checkpoint"})


def _read_config_file(path: Path) -> dict[str, Any]:
    if not path.exists():
        raise fail(f"{path}: no such config file")
    import yaml

    text = path.read_text()
    try:
        data = yaml.safe_load(text) if path.suffix in (".yaml", ".yml") else json.loads(text)
    except (ValueError, yaml.YAMLError) as exc:  # a file that does not parse (json's errors are ValueErrors)
        raise fail(f"{path}: cannot parse: {exc}") from exc
    if not isinstance(data, dict):
        raise fail(f"{path}: expected a mapping of TrainConfig fields")
    return data


# --------------------------------------------------------------------------- eval


@app.command("eval")
def eval_command(
    model: Annotated[str, typer.Option("--model", "-m", help="a train output dir, a model dir, HF id or registry name")],
    problems: Annotated[str, typer.Option("--problems", help=f"{SOURCES_HELP} | a file")],
    split: Annotated[str | None, typer.Option(help="problem split (default: test)")] = None,
    data_file: Annotated[Path | None, typer.Option("--data-file", help="a local JSONL/Parquet file or data dir")] = None,
    limit: Annotated[int | None, typer.Option(min=1, help="at most this many problems")] = None,
    problem_seed: Annotated[int | None, typer.Option("--problem-seed", help="choose --limit problems with this seed")] = None,
    backend: Annotated[str, typer.Option(help="vllm | hf")] = "vllm",
    n: Annotated[int, typer.Option("--n", min=0, help="samples per problem at temperature (0: greedy only)")] = 16,
    ks: Annotated[str, typer.Option("--k", help="comma-separated k for maj@k / pass@k")] = "1,4,8,16",
    temperature: Annotated[float, typer.Option(min=0.0)] = 0.7,
    top_p: Annotated[float, typer.Option("--top-p")] = 1.0,
    max_tokens: Annotated[int, typer.Option("--max-tokens", min=1)] = 1024,
    greedy: Annotated[bool, typer.Option("--greedy/--no-greedy", help="greedy pass@1")] = True,
    lora: Annotated[Path | None, typer.Option("--lora", help="a LoRA adapter to apply to --model")] = None,
    seed: Annotated[int, typer.Option(help="sampling seed")] = 0,
    option: Annotated[list[str] | None, typer.Option("--option", "-o", help="backend option KEY=VALUE")] = None,
    run: Annotated[Path | None, typer.Option("--run", help="write RUN/evals/NAME.parquet")] = None,
    name: Annotated[str | None, typer.Option(help="evaluation name (with --run)")] = None,
    out: Annotated[Path | None, typer.Option("--out", help="per-sample Parquet (summary in .json beside it)")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the summary as JSON")] = False,
    quiet: QuietOption = False,
) -> None:
    """pass@1 (greedy) and maj@k / pass@k at temperature, graded by flopmatch's grader."""
    from flopmatch.evaluation import evaluate
    from flopmatch.models import resolve_model
    from flopmatch.store import RunDir, model_key

    k_values = tuple(parse_ks(ks))
    found = _load_problems(problems, split, data_file, limit, problem_seed)
    if out is None and run is not None:
        out = RunDir(run).eval_path(name or f"{model_key(model)}-{problems.replace('/', '_')}")
    model_ref = model if Path(model).expanduser().exists() else resolve_model(model)
    with stdout_to_stderr(as_json):
        result = evaluate(
            model_ref, found, backend=backend, n=n, ks=k_values, temperature=temperature, top_p=top_p,
            max_tokens=max_tokens, greedy=greedy, lora_path=lora, seed=seed, out_path=out,
            backend_options=parse_options(option),
        )
    if as_json:
        print_json(result.to_dict())
        return
    rows = []
    for metric in sorted(result.metrics, key=_metric_order):
        low, high = result.intervals.get(metric, (float("nan"), float("nan")))
        rows.append((metric, f"{result.metrics[metric]:.3f}", f"\\[{low:.3f}, {high:.3f}]"))
    title = f"{model} on {len(found)} {problems} problems"
    print_table(("metric", "value", "95% CI"), rows, keys={"metric"}, right={"value"}, title=title)
    if result.path:
        console.print(f"rows: {result.path}\nsummary: {result.summary_path}")


def _metric_order(metric: str) -> tuple[int, int]:
    kind, _, k = metric.partition("@")
    order = {"pass": 1, "maj": 2}.get(kind, 0)
    return (0, 0) if metric == "pass@1" else (order, int(k) if k.isdigit() else 0)
