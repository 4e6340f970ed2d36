"""The run data layer: the run directory is the contract between pipeline stages, and this package
owns it.

* :mod:`flopmatch.store.io` — atomic writes (a temporary file in the same directory, fsync, then
  ``os.replace``, so a killed process leaves the whole file or nothing), tables, JSON, append-only
  shard tables (``part-*.parquet``, the unit of durable progress), config hashes, model keys;
* :mod:`flopmatch.store.layout` — :class:`RunDir`, where each file lives;
* :mod:`flopmatch.store.state` — ``state.json``: stage state and sub-stage jobs;
* :mod:`flopmatch.store.schemas` — every table's Arrow schema;
* :mod:`flopmatch.store.queries` — typed readers of a run (problems, plan, graded samples at a budget,
  judgments, human labels, roles). Import them from there: they use the budget and problem types,
  which themselves write through this package.
"""

from __future__ import annotations

from flopmatch.store.io import (
    SHARD_GLOB,
    append_shard,
    as_table,
    canonical_json,
    cast_to_schema,
    config_hash,
    done_keys,
    model_key,
    read_json,
    read_shards,
    read_table,
    shard_paths,
    write_json,
    write_table,
    write_text,
)
from flopmatch.store.layout import RunDir, as_run
from flopmatch.store.state import RunState

__all__ = [
    "SHARD_GLOB",
    "RunDir",
    "as_run",
    "RunState",
    "append_shard",
    "as_table",
    "canonical_json",
    "cast_to_schema",
    "config_hash",
    "done_keys",
    "model_key",
    "read_json",
    "read_shards",
    "read_table",
    "shard_paths",
    "write_json",
    "write_table",
    "write_text",
]
