"""Atomic I/O of the run directory: tables, JSON, text, append-only shard tables, config hashes and
model keys.

Every write is atomic (a temporary file in the same directory, fsync, then ``os.replace``), so a
process killed at any instant leaves either the whole file or nothing. Append-only tables are
directories of shards (``part-*.parquet``) read back as one table; a shard is the unit of durable
progress.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
import time
import uuid
from collections.abc import Iterable, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from flopmatch.errors import FlopmatchError

SHARD_GLOB = "part-*.parquet"


# --------------------------------------------------------------------------- atomic writes


@contextmanager
def _atomic_path(path: Path):
    """Yield a temporary path next to ``path``; on success fsync it and rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    # mkstemp creates 0600 files; a run directory is meant to be shared like any other output.
    tmp.chmod(0o666 & ~_umask())
    try:
        yield tmp
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    finally:
        if tmp.exists():
            tmp.unlink()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def as_table(data: pa.Table | Any) -> pa.Table:
    """Accept a pyarrow Table, a pandas DataFrame or a list of row dicts."""
    if isinstance(data, pa.Table):
        return data
    if isinstance(data, list):
        return pa.Table.from_pylist(data)
    try:
        import pandas as pd

        if isinstance(data, pd.DataFrame):
            return pa.Table.from_pandas(data, preserve_index=False)
    except ImportError:  # pragma: no cover - pandas is a dependency
        pass
    raise TypeError(f"cannot write {type(data).__name__} as a table")


def write_table(data: pa.Table | Any, path: str | Path) -> Path:
    """Write a table to Parquet atomically."""
    table = as_table(data)
    path = Path(path)
    with _atomic_path(path) as tmp:
        pq.write_table(table, tmp)
    return path


def read_table(path: str | Path, columns: list[str] | None = None) -> pa.Table:
    return pq.read_table(Path(path), columns=columns)


def write_text(text: str, path: str | Path) -> Path:
    path = Path(path)
    with _atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return path


def write_json(obj: Any, path: str | Path) -> Path:
    return write_text(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n", path)


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8"))


# --------------------------------------------------------------------------- shards


def append_shard(directory: str | Path, data: pa.Table | Any) -> Path | None:
    """Write ``data`` as a new shard of the table at ``directory``. Empty data writes nothing.

    Shard names sort by creation time and carry a random suffix, so several writers (Ray replicas,
    a resumed run) can append to one table without coordination.
    """
    table = as_table(data)
    if table.num_rows == 0:
        return None
    directory = Path(directory)
    name = f"part-{time.time_ns():020d}-{uuid.uuid4().hex[:8]}.parquet"
    return write_table(table, directory / name)


def shard_paths(directory: str | Path) -> list[Path]:
    directory = Path(directory)
    if not directory.is_dir():
        return []
    return sorted(directory.glob(SHARD_GLOB))


def read_shards(
    directory: str | Path, columns: list[str] | None = None, schema: pa.Schema | None = None
) -> pa.Table:
    """Read every shard of a table as one table (empty, with ``schema`` if given, when none).

    Shards written by older versions may store a column with a narrower type (``sample_idx`` was int32
    in sample shards): with ``schema`` every column the schema names is cast to its type; without it,
    numeric columns are widened to a common type.
    """
    paths = shard_paths(directory)
    if not paths:
        if schema is not None:
            return schema.empty_table() if columns is None else schema.empty_table().select(columns)
        return pa.table({})
    tables = [pq.read_table(p, columns=columns) for p in paths]
    if schema is not None:
        tables = [cast_to_schema(t, schema) for t in tables]
    return pa.concat_tables(tables, promote_options="permissive")


def cast_to_schema(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """``table`` with every column that ``schema`` names cast to the schema's type (others untouched)."""
    fields = [
        schema.field(name) if name in schema.names else table.schema.field(name)
        for name in table.column_names
    ]
    target = pa.schema(fields, metadata=table.schema.metadata)
    return table if target.equals(table.schema) else table.cast(target)


def done_keys(directory: str | Path, key_columns: Iterable[str] = ("problem_id", "sample_idx")) -> set[tuple]:
    """The key tuples already present in a sharded table: what a resumed stage must not redo."""
    key_columns = list(key_columns)
    table = read_shards(directory, columns=key_columns)
    if table.num_rows == 0:
        return set()
    return set(zip(*(table.column(c).to_pylist() for c in key_columns), strict=True))


# --------------------------------------------------------------------------- config hashes


def config_hash(config: Any) -> str:
    """A short, stable hash of a JSON-able config (pydantic models and dataclasses included)."""
    return hashlib.sha256(canonical_json(config).encode()).hexdigest()[:16]


def canonical_json(config: Any) -> str:
    return json.dumps(_jsonable(config), sort_keys=True, separators=(",", ":"), default=str)


def _jsonable(obj: Any) -> Any:
    if hasattr(obj, "model_dump"):
        return _jsonable(obj.model_dump(mode="json"))
    if hasattr(obj, "__dataclass_fields__"):
        from dataclasses import asdict

        return _jsonable(asdict(obj))
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    return obj


# --------------------------------------------------------------------------- names


class ModelNameError(FlopmatchError, ValueError):
    """A model name with no character a directory name can keep (``model_key("///")``)."""


def model_key(model: str) -> str:
    """A filesystem-safe directory name for a model id or path ("Qwen/Qwen2.5-0.5B" -> "Qwen--Qwen2.5-0.5B")."""
    name = str(model).rstrip("/")
    if os.sep in name and Path(name).exists():
        name = Path(name).name
    key = re.sub(r"[^A-Za-z0-9._-]+", "--", name).strip("-.")
    if not key:
        raise ModelNameError(f"cannot make a directory name from model {model!r}")
    return key
