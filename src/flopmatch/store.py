"""The run directory: the contract between pipeline stages.

Layout (see README):

    runs/<name>/
      study.yaml                     resolved config, frozen
      plan.json
      state.json                     per-stage config hash and completion time
      problems/<split>.parquet
      samples/<model>/part-*.parquet one row per sample
      grades/<model>.parquet
      judgments/<model>.parquet
      ledger.parquet
      sft/<name>/                    HF dataset on disk
      models/<name>/                 checkpoints
      evals/<name>.parquet
      report/index.html, report.md, figures/

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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

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
    """Read every shard of a table as one table (empty, with ``schema`` if given, when none)."""
    paths = shard_paths(directory)
    if not paths:
        if schema is not None:
            return schema.empty_table() if columns is None else schema.empty_table().select(columns)
        return pa.table({})
    tables = [pq.read_table(p, columns=columns) for p in paths]
    return pa.concat_tables(tables, promote_options="default")


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


def model_key(model: str) -> str:
    """A filesystem-safe directory name for a model id or path ("Qwen/Qwen2.5-0.5B" -> "Qwen--Qwen2.5-0.5B")."""
    name = str(model).rstrip("/")
    if os.sep in name and Path(name).exists():
        name = Path(name).name
    key = re.sub(r"[^A-Za-z0-9._-]+", "--", name).strip("-.")
    if not key:
        raise ValueError(f"cannot make a directory name from model {model!r}")
    return key


# --------------------------------------------------------------------------- the run directory


@dataclass(frozen=True)
class RunDir:
    """Paths of one run and the per-stage completion state."""

    root: Path

    def __init__(self, root: str | os.PathLike):
        object.__setattr__(self, "root", Path(root))

    def __fspath__(self) -> str:
        # Lets a RunDir go wherever a path does, including RunDir(RunDir(...)) and Path(run).
        return str(self.root)

    def ensure(self) -> RunDir:
        self.root.mkdir(parents=True, exist_ok=True)
        return self

    # files
    @property
    def study_path(self) -> Path:
        return self.root / "study.yaml"

    @property
    def plan_path(self) -> Path:
        return self.root / "plan.json"

    @property
    def state_path(self) -> Path:
        return self.root / "state.json"

    @property
    def ledger_path(self) -> Path:
        return self.root / "ledger.parquet"

    def problems_path(self, split: str) -> Path:
        return self.root / "problems" / f"{split}.parquet"

    def samples_dir(self, model: str) -> Path:
        return self.root / "samples" / model_key(model)

    def grades_path(self, model: str) -> Path:
        return self.root / "grades" / f"{model_key(model)}.parquet"

    def judgments_path(self, model: str) -> Path:
        return self.root / "judgments" / f"{model_key(model)}.parquet"

    def sft_dir(self, name: str) -> Path:
        return self.root / "sft" / name

    def model_dir(self, name: str) -> Path:
        return self.root / "models" / name

    def eval_path(self, name: str) -> Path:
        return self.root / "evals" / f"{name}.parquet"

    @property
    def metrics_dir(self) -> Path:
        return self.root / "metrics"

    @property
    def report_dir(self) -> Path:
        return self.root / "report"

    def sampled_models(self) -> list[str]:
        """Directory names under samples/ that hold at least one shard."""
        base = self.root / "samples"
        if not base.is_dir():
            return []
        return sorted(p.name for p in base.iterdir() if p.is_dir() and shard_paths(p))

    # stage state
    def stage_state(self) -> dict[str, dict[str, Any]]:
        if not self.state_path.exists():
            return {}
        return read_json(self.state_path)

    def is_done(self, stage: str, config_digest: str) -> bool:
        entry = self.stage_state().get(stage)
        return bool(entry and entry.get("hash") == config_digest and entry.get("status") == "done")

    def mark_done(self, stage: str, config_digest: str, **info: Any) -> None:
        self._set_stage(stage, {"hash": config_digest, "status": "done", "finished_at": time.time(), **info})

    def mark_started(self, stage: str, config_digest: str) -> None:
        self._set_stage(stage, {"hash": config_digest, "status": "running", "started_at": time.time()})

    def clear_stage(self, stage: str) -> None:
        state = self.stage_state()
        if state.pop(stage, None) is not None:
            write_json(state, self.state_path)

    def _set_stage(self, stage: str, entry: dict[str, Any]) -> None:
        state = self.stage_state()
        state[stage] = entry
        write_json(state, self.state_path)
