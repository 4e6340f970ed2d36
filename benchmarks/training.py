"""Training throughput on CPU: flopmatch.train vs a raw TRL SFTTrainer, and LoRA steps on the offline Qwen 0.5B.

1. Tiny model (the toy world's WC model, trained locally): the same data, model and settings through
   ``flopmatch.training.train`` (checkpoint callbacks, pruning, records) and through a bare
   ``trl.SFTTrainer``; prints steps/s, tokens/s (non-padding tokens) and the ratio flopmatch / raw,
   twice: for the whole call (flopmatch: ``train()`` from entry to return — data checks, trainer set-up,
   training, checkpoints, the result record; raw: building the ``SFTTrainer``, which loads the model and
   tokenizes the data, then ``trainer.train()``) and for the training loop alone (``trainer.train()``).
   Runs alternate (raw, flopmatch, raw, flopmatch, ...) so a noisy shared machine hits both alike;
   the best of ``--repeats`` is reported for each measure.
2. ``--qwen``: a few LoRA steps on Qwen2.5-Coder-0.5B-Instruct (``flopmatch models prepare
   qwen2.5-coder-0.5b-instruct``) on GSM8K train problems with their reference solutions (chat
   format), in a subprocess: seconds per step (first step apart), tokens/s and peak resident memory.

    python benchmarks/training.py [--steps 60] [--repeats 2] [--json OUT] [--qwen] [--qwen-steps 6]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", str(os.cpu_count() or 1))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def tiny_dataset(out: Path, n: int) -> Path:
    """Toy-world problems with their reference solutions, in the SFT prompt/completion format."""
    from datasets import Dataset

    from flopmatch.toyworld import format_prompt, load_problems

    problems = load_problems("train", limit=n)
    rows = [{"prompt": format_prompt(p.question), "completion": p.solution} for p in problems]
    Dataset.from_list(rows).save_to_disk(str(out))
    return out


def run_raw(data: Path, model: str, out: Path, steps: int) -> dict:
    """A bare SFTTrainer with the settings flopmatch's tiny_cpu preset uses."""
    import torch
    from datasets import load_from_disk
    from transformers import AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    entered = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(model)
    args = SFTConfig(
        output_dir=str(out), model_init_kwargs={"dtype": torch.float32}, learning_rate=1e-3,
        lr_scheduler_type="linear", per_device_train_batch_size=16, max_steps=steps, max_length=256, bf16=False,
        gradient_checkpointing=False, use_cpu=True, logging_steps=10, save_strategy="steps", save_steps=steps,
        report_to="none", include_num_input_tokens_seen="non_padding", dataloader_pin_memory=False,
        disable_tqdm=True, seed=0, data_seed=0,
    )
    trainer = SFTTrainer(model=model, args=args, train_dataset=load_from_disk(str(data), keep_in_memory=True),
                         processing_class=tokenizer)
    started = time.perf_counter()
    trainer.train()
    ended = time.perf_counter()
    return {"loop": ended - started, "whole": ended - entered, "steps": trainer.state.global_step,
            "tokens": int(trainer.state.num_input_tokens_seen)}


def run_flopmatch(data: Path, model: str, out: Path, steps: int) -> dict:
    from flopmatch.training import TrainConfig, train

    config = TrainConfig.tiny_cpu(max_steps=steps, max_length=256, n_checkpoints=1, logging_steps=10)
    entered = time.perf_counter()
    result = train(data, base_model=model, out_dir=out, config=config)
    whole = time.perf_counter() - entered
    return {"loop": result.seconds, "whole": whole, "steps": result.global_step, "tokens": result.tokens}


def tiny_benchmark(steps: int, repeats: int) -> dict:
    import torch
    import transformers

    from flopmatch.toyworld import PARAMS, ensure_model

    transformers.logging.set_verbosity_error()
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    model = str(ensure_model("wc"))
    work = Path(tempfile.mkdtemp(prefix="fm-train-bench-"))
    try:
        data = tiny_dataset(work / "data", 600)
        runs: dict[str, list[dict]] = {"raw TRL": [], "flopmatch": []}
        for _ in range(repeats):
            for name, fn in (("raw TRL", run_raw), ("flopmatch", run_flopmatch)):
                shutil.rmtree(work / "out", ignore_errors=True)
                runs[name].append(fn(data, model, work / "out", steps))
        print(f"\n== tiny model: toy-world WC ({PARAMS['wc'] / 1e6:.2f}M parameters), CPU fp32, batch 16, "
              f"{steps} steps, {torch.get_num_threads()} threads, best of {repeats}")
        for measure, label in (("whole", "whole call"), ("loop", "trainer.train() only")):
            best = {name: min(r, key=lambda s: s[measure]) for name, r in runs.items()}
            print(f"-- {label}")
            for name, s in best.items():
                print(f"{name:10s}  {s['steps'] / s[measure]:7.2f} steps/s  {s['tokens'] / s[measure]:9.0f} tokens/s"
                      f"  ({s[measure]:.2f} s, {s['steps']} steps, {s['tokens']} tokens)")
            ratio = (best["flopmatch"]["steps"] / best["flopmatch"][measure]) / (
                best["raw TRL"]["steps"] / best["raw TRL"][measure])
            print(f"ratio flopmatch / raw TRL (steps/s, {label}): {ratio:.3f}")
        outside = {name: min(s["whole"] - s["loop"] for s in r) for name, r in runs.items()}
        print("outside trainer.train() (set-up, tokenizing, records; least over repeats): "
              + ", ".join(f"{name} {seconds:.2f} s" for name, seconds in outside.items()))
        return {"steps": steps, "repeats": repeats, "runs": runs, "outside_loop_s": outside}
    finally:
        shutil.rmtree(work, ignore_errors=True)


# --------------------------------------------------------------------------- Qwen 0.5B LoRA


def qwen_child(steps: int, batch: int, max_length: int, out_json: Path) -> None:
    """Runs in its own process so that the peak RSS is this job's alone."""
    import torch
    import transformers
    from datasets import Dataset

    from flopmatch.models import resolve_model
    from flopmatch.problems import load
    from flopmatch.prompts import build_prompt
    from flopmatch.sft import sft_prompt_config
    from flopmatch.training import LoraSettings, TrainConfig, train

    transformers.logging.set_verbosity_error()
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    model = resolve_model("qwen2.5-coder-0.5b-instruct")
    problems = load("gsm8k", split="train", data_file=DATA / "gsm8k" / "train.jsonl", limit=steps * batch)
    config_prompt = sft_prompt_config("gsm8k")
    rows = [{"prompt": build_prompt(p, config_prompt),
             "completion": [{"role": "assistant", "content": p.solution.split("####")[0].strip()
                             + f"\n\nThe answer is \\boxed{{{p.answer}}}."}]} for p in problems]
    work = Path(tempfile.mkdtemp(prefix="fm-qwen-lora-"))
    try:
        Dataset.from_list(rows).save_to_disk(str(work / "data"))
        config = TrainConfig(
            learning_rate=1e-4, lora=LoraSettings(r=16, alpha=32, dropout=0.05), per_device_batch_size=batch,
            gradient_accumulation_steps=1, max_steps=steps, max_length=max_length, warmup_ratio=0.0, bf16=True,
            gradient_checkpointing=False, use_cpu=True, n_checkpoints=1, logging_steps=1,
        )
        result = train(work / "data", base_model=model, out_dir=work / "out", config=config)
        state = json.loads(next((work / "out").glob("checkpoint-*/trainer_state.json")).read_text())
        runtimes = [e["train_runtime"] for e in state["log_history"] if "train_runtime" in e and "loss" in e]
        per_step = [b - a for a, b in zip([0.0, *runtimes], runtimes, strict=False)]
        out_json.write_text(json.dumps({
            "steps": result.global_step, "seconds": result.seconds, "tokens": result.tokens,
            "per_step": per_step, "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
            "losses": [loss for _, loss in result.loss_history],
        }))
    finally:
        shutil.rmtree(work, ignore_errors=True)


def qwen_benchmark(steps: int, batch: int, max_length: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "qwen.json"
        subprocess.run([sys.executable, __file__, "--qwen-child", str(out), "--qwen-steps", str(steps),
                        "--qwen-batch", str(batch), "--qwen-max-length", str(max_length)], check=True)
        r = json.loads(out.read_text())
    later = r["per_step"][1:] or r["per_step"]
    print(f"\n== Qwen2.5-Coder-0.5B-Instruct LoRA (r=16, all linear layers), CPU bf16, batch {batch}, "
          f"max_length {max_length}, {r['steps']} steps")
    print(f"first step {r['per_step'][0]:.2f} s; later steps {sum(later) / len(later):.2f} s/step "
          f"(min {min(later):.2f}, max {max(later):.2f})")
    print(f"{r['tokens'] / r['seconds']:.0f} tokens/s over the run; peak resident memory {r['peak_rss_gib']:.2f} GiB")
    print(f"loss by step: {', '.join(f'{x:.3f}' for x in r['losses'])}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--qwen", action="store_true", help="also time LoRA steps on the offline Qwen 0.5B")
    parser.add_argument("--qwen-only", action="store_true")
    parser.add_argument("--qwen-steps", type=int, default=6)
    parser.add_argument("--qwen-batch", type=int, default=2)
    parser.add_argument("--qwen-max-length", type=int, default=384)
    parser.add_argument("--json", type=Path, help="also write the tiny-model figures here")
    parser.add_argument("--qwen-child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.qwen_child:
        qwen_child(args.qwen_steps, args.qwen_batch, args.qwen_max_length, args.qwen_child)
        return
    if not args.qwen_only:
        figures = tiny_benchmark(args.steps, args.repeats)
        if args.json:
            args.json.write_text(json.dumps(figures, indent=2))
    if args.qwen or args.qwen_only:
        qwen_benchmark(args.qwen_steps, args.qwen_batch, args.qwen_max_length)


if __name__ == "__main__":
    main()
