"""Parameter counts read from the model itself, for compute-matched budgets (2·P FLOPs per token).

``count_parameters(ref)`` accepts

- a Hugging Face model directory (its ``config.json``) or a ``config.json`` path,
- a ``.gguf`` file (or a directory holding exactly one),
- a flopmatch registry name (``qwen2.5-coder-0.5b-instruct``: resolved by :mod:`flopmatch.models`,
  which is imported only then),
- a hub id (``Qwen/Qwen2.5-0.5B-Instruct``): only its ``config.json`` is downloaded.

How parameters are counted (the convention the planner's "2·P per generated token" uses):

- **Every parameter once, embeddings included.** P is the number a model card quotes (Gemma2 9B / 27B
  in the paper), so plans made here read like the paper's.
- **A tied output head is not counted twice.** When the head shares the embedding matrix
  (``tie_word_embeddings``, or a GGUF without an ``output.weight`` tensor) it adds nothing to ``total``;
  an untied head (its own matrix) is counted. ``ParamCount.non_embedding`` gives the other common
  convention (Kaplan et al.'s N: no vocabulary matrices at all) for users who prefer it.
- From a config the count is computed from the architecture (embeddings, attention with grouped
  query heads and biases, gated MLP, norms, head) for llama, mistral, qwen2, qwen3, gemma, gemma2,
  gemma3_text and phi3 decoders; the tests check it equals ``sum(p.numel())`` of the model transformers
  builds from the same config. Anything else: pass the count by hand (``--wc-params``/``--se-params``).
- From a GGUF the count is the sum of the tensors' *element* counts from the header (never their byte
  sizes: the weights are quantized). A GGUF without ``output.weight`` is tied. Converters sometimes
  store a tied head as its own ``output.weight`` (the offline Qwen2.5-Coder files do): when its
  dequantized rows equal the embedding's up to quantization noise it is a copy, counted once, so the
  count equals the upstream model's (494,032,768 and 1,543,714,304 for the 0.5B / 1.5B pair).
"""

from __future__ import annotations

import json
import math
import mmap
import struct
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from flopmatch.errors import FlopmatchError


class ModelInfoError(FlopmatchError, ValueError):
    """The parameter count of a model cannot be worked out (unknown architecture, missing field, offline)."""


@dataclass(frozen=True)
class ParamCount:
    """Parameters of one model.

    ``total`` is the P of the plan (see the module docstring). ``embedding`` is the input embedding
    matrix, ``output_head`` the size of the LM head matrix whether or not it is tied (when ``tied`` it
    is the embedding matrix and is not part of ``total`` a second time). ``source`` says where the
    numbers came from (``config:<path>``, ``gguf:<path>``, ``hub:<id>``).
    """

    total: int
    embedding: int
    output_head: int
    tied: bool
    source: str

    @property
    def non_embedding(self) -> int:
        """Parameters without any vocabulary matrix (input embedding and head): Kaplan et al.'s N."""
        return self.total - self.embedding - (0 if self.tied else self.output_head)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# --------------------------------------------------------------------------- configs


@dataclass(frozen=True)
class _Arch:
    norms_per_layer: int  # RMSNorm/LayerNorm weight vectors of size hidden per decoder layer
    qkv_bias: bool = False  # q/k/v projections always carry a bias (qwen2)
    qk_norm: bool = False  # per-head RMSNorm on q and k (qwen3, gemma3)
    tied_default: bool = False  # tie_word_embeddings when the config does not say
    bias_flags: bool = True  # honours attention_bias / mlp_bias config fields
    head_dim_default: int | None = None  # transformers' default when config.json omits head_dim


_ARCHS: dict[str, _Arch] = {
    "llama": _Arch(norms_per_layer=2),
    "mistral": _Arch(norms_per_layer=2, bias_flags=False),
    "qwen2": _Arch(norms_per_layer=2, qkv_bias=True, bias_flags=False),
    "qwen3": _Arch(norms_per_layer=2, qk_norm=True, head_dim_default=128),
    "gemma": _Arch(norms_per_layer=2, tied_default=True, head_dim_default=256),
    "gemma2": _Arch(norms_per_layer=4, tied_default=True, head_dim_default=256),
    "gemma3_text": _Arch(norms_per_layer=4, qk_norm=True, tied_default=True, head_dim_default=256),
    "phi3": _Arch(norms_per_layer=2, bias_flags=False),
}
SUPPORTED_ARCHITECTURES = tuple(_ARCHS)


def _int_field(config: dict[str, Any], name: str, source: str, default: int | None = None) -> int:
    value = config.get(name)
    if value is None:  # absent or null: transformers' default
        value = default
    if value is None:
        raise ModelInfoError(f"{source}: config field {name!r} is missing")
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ModelInfoError(f"{source}: config field {name!r} must be a positive integer, got {value!r}")
    return value


def params_from_config(config: dict[str, Any], source: str = "config") -> ParamCount:
    """Count the parameters of a decoder from its ``config.json`` contents (see the module docstring)."""
    model_type = config.get("model_type")
    arch = _ARCHS.get(str(model_type))
    if arch is None:
        raise ModelInfoError(
            f"{source}: cannot count parameters of model_type {model_type!r} "
            f"(supported: {', '.join(SUPPORTED_ARCHITECTURES)}); pass the count by hand (--wc-params/--se-params)"
        )
    vocab = _int_field(config, "vocab_size", source)
    hidden = _int_field(config, "hidden_size", source)
    layers = _int_field(config, "num_hidden_layers", source)
    inter = _int_field(config, "intermediate_size", source)
    heads = _int_field(config, "num_attention_heads", source)
    kv_heads = _int_field(config, "num_key_value_heads", source, default=heads)
    head_dim = _int_field(config, "head_dim", source, default=arch.head_dim_default or hidden // heads)

    q_out, kv_out = heads * head_dim, kv_heads * head_dim
    attention = hidden * q_out + 2 * hidden * kv_out + q_out * hidden
    if arch.qkv_bias:
        attention += q_out + 2 * kv_out
    if arch.bias_flags and config.get("attention_bias", False):
        attention += q_out + 2 * kv_out + hidden
    if arch.qk_norm:
        attention += 2 * head_dim
    mlp = 3 * hidden * inter
    if arch.bias_flags and config.get("mlp_bias", False):
        mlp += 2 * inter + hidden
    layer = attention + mlp + arch.norms_per_layer * hidden

    embedding = vocab * hidden
    tied = bool(config.get("tie_word_embeddings", arch.tied_default))
    total = embedding + layers * layer + hidden + (0 if tied else vocab * hidden)
    return ParamCount(total=total, embedding=embedding, output_head=vocab * hidden, tied=tied, source=source)


def _read_config(path: Path) -> dict[str, Any]:
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelInfoError(f"{path}: not a readable JSON config ({exc})") from exc
    if not isinstance(config, dict):
        raise ModelInfoError(f"{path}: expected a JSON object")
    return config


# --------------------------------------------------------------------------- gguf

_GGUF_MAGIC = b"GGUF"
_SCALARS = {
    0: "<B",
    1: "<b",
    2: "<H",
    3: "<h",
    4: "<I",
    5: "<i",
    6: "<f",
    7: "<?",
    10: "<Q",
    11: "<q",
    12: "<d",
}
_STRING, _ARRAY = 8, 9


@dataclass(frozen=True)
class GGUFTensor:
    """One tensor of a GGUF header: ``shape`` in GGUF order (``shape[0]`` is the row length)."""

    name: str
    shape: tuple[int, ...]
    ggml_type: int
    offset: int  # absolute byte offset of the data in the file

    @property
    def n_elements(self) -> int:
        return math.prod(self.shape)


def read_gguf_header(path: str | Path) -> tuple[dict[str, Any], dict[str, GGUFTensor]]:
    """The scalar/string metadata and the tensor table of a little-endian GGUF (v2/v3) file.

    Reads the header only, without building the tokenizer arrays (``gguf.GGUFReader`` takes ~15 s on a
    150k-token vocabulary; this takes well under a second). Array-valued metadata is skipped.
    """
    path = Path(path)
    with open(path, "rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        pos = 0

        def take(fmt: str) -> Any:
            nonlocal pos
            (value,) = struct.unpack_from(fmt, buf, pos)
            pos += struct.calcsize(fmt)
            return value

        def take_str() -> str:
            nonlocal pos
            length = take("<Q")
            text = bytes(buf[pos : pos + length]).decode("utf-8", errors="replace")
            pos += length
            return text

        def skip_value(vtype: int) -> Any:
            nonlocal pos
            if vtype in _SCALARS:
                return take(_SCALARS[vtype])
            if vtype == _STRING:
                return take_str()
            if vtype == _ARRAY:
                item_type, count = take("<I"), take("<Q")
                if item_type in _SCALARS:
                    pos += struct.calcsize(_SCALARS[item_type]) * count
                else:
                    for _ in range(count):
                        skip_value(item_type)
                return None
            raise ModelInfoError(f"unknown metadata value type {vtype}")

        if bytes(buf[:4]) != _GGUF_MAGIC:
            raise ModelInfoError("no GGUF magic number")
        pos = 4
        version = take("<I")
        if version not in (2, 3):
            raise ModelInfoError(f"unsupported GGUF version {version} (big-endian or v1 file?)")
        n_tensors, n_kv = take("<Q"), take("<Q")
        metadata: dict[str, Any] = {}
        for _ in range(n_kv):
            key = take_str()
            value = skip_value(take("<I"))
            if value is not None:
                metadata[key] = value
        infos = []
        for _ in range(n_tensors):
            name = take_str()
            dims = tuple(take("<Q") for _ in range(take("<I")))
            infos.append((name, dims, take("<I"), take("<Q")))
        alignment = int(metadata.get("general.alignment", 32))
        data_start = -(-pos // alignment) * alignment
    tensors = {
        name: GGUFTensor(name, dims, gtype, data_start + offset) for name, dims, gtype, offset in infos
    }
    return metadata, tensors


def _rows(path: Path, tensor: GGUFTensor, indices: Any) -> Any:
    """Some rows of a 2-D GGUF tensor, dequantized to float32."""
    import numpy as np
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType
    from gguf.quants import dequantize

    qtype = GGMLQuantizationType(tensor.ggml_type)
    block, block_bytes = GGML_QUANT_SIZES[qtype]
    row_bytes = tensor.shape[0] // block * block_bytes
    data = np.memmap(path, dtype=np.uint8, mode="r", offset=tensor.offset, shape=(tensor.shape[1], row_bytes))
    return dequantize(np.ascontiguousarray(data[indices]), qtype).reshape(len(indices), -1).astype(np.float32)


def head_is_embedding_copy(path: str | Path, embedding: GGUFTensor, head: GGUFTensor, rows: int = 64) -> bool:
    """Whether a GGUF's ``output.weight`` is (a requantized copy of) ``token_embd.weight``.

    Converters write a tied head out as its own tensor when the source checkpoint stored it (AWQ
    exports, some official GGUFs), often in another quantization. We compare ``rows`` evenly spaced
    rows after dequantizing: a copy differs by quantization noise (a few percent relative error; the
    offline Qwen2.5-Coder pair: 4% and 7%), an independent head by more than 100%. Threshold: 25%.
    """
    import numpy as np

    if embedding.shape != head.shape or len(head.shape) != 2:
        return False
    indices = np.unique(np.linspace(0, head.shape[1] - 1, num=min(rows, head.shape[1])).astype(np.int64))
    try:
        a, b = _rows(Path(path), embedding, indices), _rows(Path(path), head, indices)
    except Exception:  # noqa: BLE001 - an exotic quantization: count the head as stored
        return False
    norm = float(np.linalg.norm(a))
    return norm > 0 and float(np.linalg.norm(a - b)) / norm < 0.25


def params_from_gguf(path: str | Path) -> ParamCount:
    """Count parameters from a GGUF header: the sum of every tensor's element count.

    The head is tied when the file has no ``output.weight`` (llama.cpp then reuses ``token_embd``) or
    when ``output.weight`` is a copy of the embedding (:func:`head_is_embedding_copy`); a tied head is
    counted once, like ``tie_word_embeddings`` in a config.
    """
    path = Path(path)
    try:
        metadata, tensors = read_gguf_header(path)
    except (OSError, ValueError, struct.error) as exc:
        raise ModelInfoError(f"{path}: not a readable GGUF file ({exc})") from exc
    embedding = tensors.get("token_embd.weight")
    if embedding is None:
        raise ModelInfoError(f"{path}: no token_embd.weight tensor; is this a language model GGUF?")
    head = tensors.get("output.weight")
    total = sum(t.n_elements for t in tensors.values())
    source = f"gguf:{path}"
    tied = head is None
    if head is not None and head_is_embedding_copy(path, embedding, head):
        tied = True
        total -= head.n_elements
        source += " (output.weight is a copy of token_embd.weight: tied, counted once)"
    return ParamCount(
        total=total,
        embedding=embedding.n_elements,
        output_head=embedding.n_elements if head is None else head.n_elements,
        tied=tied,
        source=source,
    )


# --------------------------------------------------------------------------- references


def _from_local(path: Path) -> ParamCount | None:
    if path.is_file():
        if path.suffix.lower() == ".gguf":
            return params_from_gguf(path)
        if path.suffix.lower() == ".json":
            return params_from_config(_read_config(path), source=f"config:{path}")
        raise ModelInfoError(f"{path}: expected a model directory, a config.json or a .gguf file")
    if path.is_dir():
        converted = _from_converted_gguf(path)
        if converted is not None:
            return converted
        if (path / "config.json").is_file():
            return params_from_config(
                _read_config(path / "config.json"), source=f"config:{path / 'config.json'}"
            )
        ggufs = sorted(path.glob("*.gguf"))
        if len(ggufs) == 1:
            return params_from_gguf(ggufs[0])
        raise ModelInfoError(
            f"{path}: no config.json and {len(ggufs)} .gguf files; point at the config.json or one .gguf file"
        )
    return None


def _from_converted_gguf(path: Path) -> ParamCount | None:
    """A directory ``flopmatch.models.prepare`` converted from a registry GGUF.

    Its config.json says ``tie_word_embeddings: false`` because the GGUF stores a (re-quantized) copy
    of the embedding as the output head, so counting the config would price the same model higher
    (630M instead of 494M for the 0.5B) than its registry name or its GGUF. The marker names the
    GGUF's SHA-256; the count comes from that registry entry, so every way of naming the model agrees.
    """
    marker = path / ".prepared.json"
    if not marker.is_file():
        return None
    try:
        sha = json.loads(marker.read_text(encoding="utf-8")).get("gguf_sha256")
        from flopmatch import models
    except (ValueError, OSError, ImportError):
        return None
    for name, entry in models.registry().items():
        gguf = getattr(entry, "gguf", None)
        if sha and gguf is not None and gguf.sha256 == sha:
            return _from_registry(name)
    return None


def _from_registry(ref: str) -> ParamCount | None:
    """A flopmatch registry name (``flopmatch.models.REGISTRY``): its GGUF if it has one (header only,
    no conversion), else the directory ``resolve_model`` prepares. None when ``ref`` is not registered."""
    try:
        from flopmatch import models
    except ImportError:
        return None
    entry = models.registry().get(ref)
    if entry is None:
        return None
    try:
        path = Path(
            models.gguf_path(ref) if getattr(entry, "gguf", None) is not None else models.resolve_model(ref)
        )
    except Exception as exc:  # noqa: BLE001 - parts not installed, checksum mismatch...
        raise ModelInfoError(
            f"{ref}: the flopmatch model cannot be read ({type(exc).__name__}: {exc})"
        ) from exc
    found = _from_local(path)
    if found is None:
        raise ModelInfoError(f"{ref}: flopmatch.models gave {path}, which does not exist")
    return found


def _from_hub(ref: str) -> ParamCount:
    try:
        from huggingface_hub import hf_hub_download

        path = Path(hf_hub_download(repo_id=ref, filename="config.json"))
    except Exception as exc:  # noqa: BLE001 - offline, gated, missing: all end in the same advice
        first_line = str(exc).splitlines()[0] if str(exc) else ""
        raise ModelInfoError(
            f"{ref}: not a local path or a flopmatch model, and its config.json could not be fetched from the "
            f"Hugging Face hub ({type(exc).__name__}: {first_line}). Offline? Pass a local model directory or "
            ".gguf file, or give the parameter count by hand (--wc-params/--se-params)."
        ) from exc
    count = params_from_config(_read_config(path), source=f"hub:{ref}")
    return count


def is_local_reference(ref: str | Path) -> bool:
    """Whether counting ``ref`` needs no network: an existing path or a flopmatch registry name."""
    if Path(ref).expanduser().exists():
        return True
    try:
        from flopmatch import models
    except ImportError:
        return False
    return str(ref) in models.registry()


def count_parameters(ref: str | Path) -> ParamCount:
    """The parameter count of a model: local path, then flopmatch registry name, then hub id."""
    path = Path(ref).expanduser()
    local = _from_local(path)
    if local is not None:
        return local
    ref = str(ref)
    registered = _from_registry(ref)
    if registered is not None:
        return registered
    return _from_hub(ref)
