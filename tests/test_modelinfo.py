"""Parameter counts: configs checked against the models transformers builds, GGUF headers against GGUFReader."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from flopmatch.modelinfo import (
    ModelInfoError,
    ParamCount,
    count_parameters,
    params_from_config,
    params_from_gguf,
    read_gguf_header,
)
from offline_models import needs_offline_pair

TINY = dict(vocab_size=211, hidden_size=32, num_hidden_layers=2, intermediate_size=48, num_attention_heads=4,
            num_key_value_heads=2, pad_token_id=0, bos_token_id=1, eos_token_id=2)  # fmt: skip

CASES = [
    ("llama", {}),
    ("llama", {"tie_word_embeddings": True, "attention_bias": True, "mlp_bias": True}),
    ("mistral", {}),
    ("qwen2", {}),
    ("qwen2", {"tie_word_embeddings": True}),
    ("qwen3", {"head_dim": 16}),
    ("gemma", {"head_dim": 16}),
    ("gemma2", {"head_dim": 16}),
    ("gemma2", {"head_dim": 16, "tie_word_embeddings": False}),
    ("gemma3_text", {"head_dim": 16}),
    ("phi3", {}),
]


@pytest.mark.parametrize(("model_type", "extra"), CASES, ids=[f"{m}-{i}" for i, (m, _) in enumerate(CASES)])
def test_config_count_equals_the_model_transformers_builds(tmp_path, model_type, extra):
    import torch
    import transformers

    torch.set_num_threads(1)
    config = transformers.AutoConfig.for_model(model_type, **TINY, **extra)
    model = transformers.AutoModelForCausalLM.from_config(config)
    expected = sum(p.numel() for p in model.parameters())  # shared (tied) tensors are listed once
    model.save_pretrained(tmp_path)  # the real config.json a user would have
    count = count_parameters(str(tmp_path))
    assert count.total == expected
    assert count.embedding == TINY["vocab_size"] * TINY["hidden_size"] == count.output_head
    tied = model.get_output_embeddings().weight is model.get_input_embeddings().weight
    assert count.tied is tied
    assert count.source == f"config:{tmp_path / 'config.json'}"
    assert count.non_embedding == expected - count.embedding * (1 if tied else 2)


def test_llama_head_counts_once_when_tied():
    untied = params_from_config({"model_type": "llama", **TINY, "tie_word_embeddings": False})
    tied = params_from_config({"model_type": "llama", **TINY, "tie_word_embeddings": True})
    assert untied.total - tied.total == TINY["vocab_size"] * TINY["hidden_size"]
    assert untied.non_embedding == tied.non_embedding


def test_unsupported_or_broken_configs_say_what_to_do(tmp_path):
    with pytest.raises(ModelInfoError, match="model_type 'mixtral'.*--wc-params"):
        params_from_config({"model_type": "mixtral", **TINY})
    with pytest.raises(ModelInfoError, match="'hidden_size' is missing"):
        params_from_config({"model_type": "llama", **{k: v for k, v in TINY.items() if k != "hidden_size"}})
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"model_type": "llama", **TINY, "num_hidden_layers": "2"}))
    with pytest.raises(ModelInfoError, match="num_hidden_layers.*positive integer"):
        count_parameters(path)
    with pytest.raises(ModelInfoError, match="no config.json"):
        count_parameters(tmp_path.parent)  # a directory without config.json or exactly one .gguf


# --------------------------------------------------------------------------- gguf


def _write_gguf(path, *, head: str) -> dict[str, int]:
    """A tiny llama-shaped GGUF: F32 embedding, quantized (Q8_0) blocks; head = none | copy | own."""
    import gguf
    from gguf.quants import quantize

    rng = np.random.default_rng(0)
    vocab, hidden = 96, 64
    embedding = rng.standard_normal((vocab, hidden)).astype(np.float32)
    q8 = gguf.GGMLQuantizationType.Q8_0
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(1)
    writer.add_token_list([f"t{i}" for i in range(vocab)])  # an array field the header reader must skip
    writer.add_tensor("token_embd.weight", embedding)
    counts = {"token_embd.weight": vocab * hidden}
    for name, shape in (("blk.0.attn_q.weight", (hidden, hidden)), ("blk.0.ffn_up.weight", (128, hidden))):
        weight = rng.standard_normal(shape).astype(np.float32)
        writer.add_tensor(name, quantize(weight, q8), raw_dtype=q8)
        counts[name] = shape[0] * shape[1]
    writer.add_tensor("blk.0.attn_norm.weight", np.ones(hidden, dtype=np.float32))
    writer.add_tensor("output_norm.weight", np.ones(hidden, dtype=np.float32))
    counts |= {"blk.0.attn_norm.weight": hidden, "output_norm.weight": hidden}
    if head != "none":
        matrix = embedding if head == "copy" else rng.standard_normal((vocab, hidden)).astype(np.float32)
        writer.add_tensor("output.weight", quantize(matrix, q8), raw_dtype=q8)
        counts["output.weight"] = vocab * hidden
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return counts


@pytest.mark.parametrize("head", ["none", "copy", "own"])
def test_gguf_counts_elements_not_bytes(tmp_path, head):
    import gguf

    path = tmp_path / "tiny.gguf"
    counts = _write_gguf(path, head=head)
    # our header reader agrees with gguf's own reader, tensor by tensor
    reader = gguf.GGUFReader(str(path))
    _, tensors = read_gguf_header(path)
    assert (
        {t.name: int(t.n_elements) for t in reader.tensors}
        == {n: t.n_elements for n, t in tensors.items()}
        == counts
    )
    assert {t.name: int(t.data_offset) for t in reader.tensors} == {n: t.offset for n, t in tensors.items()}
    count = params_from_gguf(path)
    head_size = counts.get("output.weight", 0)
    quantized_bytes = sum(int(t.n_bytes) for t in reader.tensors)
    assert quantized_bytes != sum(counts.values()) * 4  # a byte-size count would be wrong
    assert count.embedding == counts["token_embd.weight"] and count.output_head == 96 * 64
    if head == "own":
        assert (count.total, count.tied) == (sum(counts.values()), False)
    else:  # no head tensor, or a (requantized) copy of the embedding: tied, counted once
        assert (count.total, count.tied) == (sum(counts.values()) - head_size, True)
        assert ("copy" in count.source) is (head == "copy")
    assert count_parameters(str(path)) == count
    assert count_parameters(str(tmp_path)) == count  # a directory holding one .gguf


def test_local_references(tmp_path):
    from flopmatch.modelinfo import is_local_reference

    assert is_local_reference(tmp_path) and not is_local_reference("some-org/some-model")


def test_not_a_gguf(tmp_path):
    path = tmp_path / "model.gguf"
    path.write_bytes(b"not a gguf at all")
    with pytest.raises(ModelInfoError, match="not a readable GGUF"):
        count_parameters(path)
    with pytest.raises(ModelInfoError, match="no GGUF magic number"):  # the public header reader too
        read_gguf_header(path)


def test_hub_id_offline_fails_with_advice(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    code = (
        "from flopmatch.modelinfo import count_parameters, ModelInfoError\n"
        "try:\n    count_parameters('some-org/some-model')\nexcept ModelInfoError as e:\n    print('ERR', e)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    assert "ERR some-org/some-model: " in result.stdout and "--wc-params/--se-params" in result.stdout


# --------------------------------------------------------------------------- the offline Qwen pair


@pytest.mark.slow
@needs_offline_pair
def test_offline_qwen_pair_ratio_is_about_three():
    small = count_parameters("qwen2.5-coder-0.5b-instruct")
    large = count_parameters("qwen2.5-coder-1.5b-instruct")
    assert isinstance(small, ParamCount) and small.source.startswith("gguf:")
    # the GGUFs store a requantized copy of the tied head: counted once, the upstream models' counts
    assert (small.total, large.total) == (494_032_768, 1_543_714_304)
    assert small.tied and large.tied
    assert 2.9 < large.total / small.total < 3.3


@pytest.mark.slow
@needs_offline_pair
def test_converted_qwen_directory_counts_like_its_registry_name():
    """The prepared safetensors folder says its head is untied (it holds the GGUF's copy), yet it is
    the same model: naming it by path must not price it higher than naming it by registry name."""
    from flopmatch import models

    directory = models.prepare("qwen2.5-coder-0.5b-instruct")
    assert count_parameters(directory).total == count_parameters("qwen2.5-coder-0.5b-instruct").total
