"""File fingerprints: what identifies a set of files, so that a stage or a training run whose inputs are
unchanged is not redone. One hash of file contents (:func:`content_digest`) under the two identities that
runs on disk carry:

- :func:`fingerprint`: a study stage's outputs (and the SFT set in a study's training-job digest), every
  file under some paths by its name relative to the run directory and its content (size and modification
  time when it is large: model weights);
- :func:`dataset_fingerprint`: the SFT data of :func:`flopmatch.training.train`, the content of a saved
  dataset's Arrow files (stored in ``train_result.json`` and the output directory's hash marker).

- :func:`model_files_identity`: a local model directory in :func:`flopmatch.evaluation.evaluate`'s cache key,
  its files' names, sizes and modification times (a retrained model in the same directory is a new model).

All are frozen formats: finished runs carry these values, and a different value makes them run again
(tests/test_fingerprints.py pins them).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

from flopmatch.store import config_hash

#: Files up to this size are fingerprinted by content, bigger ones (model weights) by size and mtime.
CONTENT_HASH_LIMIT = 16 << 20


def content_digest(files: Iterable[Path], *, names: bool = False) -> str:
    """SHA-256 (hex) of the files' bytes, in the order given; ``names``: each file's name goes in first."""
    digest = hashlib.sha256()
    for path in files:
        if names:
            digest.update(path.name.encode())
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def file_identity(path: Path) -> str:
    """One file's identity: its content's hash, or ``size:mtime_ns`` above :data:`CONTENT_HASH_LIMIT`."""
    stat = path.stat()
    if stat.st_size > CONTENT_HASH_LIMIT:
        return f"{stat.st_size}:{stat.st_mtime_ns}"
    return content_digest([path])


def fingerprint(paths: Sequence[Path], root: Path) -> str:
    """Identity of a stage's outputs: every file under ``paths`` by its name relative to ``root`` (so a
    run directory can be moved) and its :func:`file_identity`; hidden files and missing paths are left
    out. Rewriting identical tables does not make later stages rerun; any real change does."""
    entries: list[tuple[str, str]] = []
    for path in paths:
        if path.is_file():
            files = [path]
        elif path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))
        else:
            continue
        for file in files:
            entries.append((os.path.relpath(file, root), file_identity(file)))
    return config_hash(entries)


def dataset_fingerprint(data_dir: Path) -> str:
    """Identity of a saved ``datasets`` dataset for training's resume decisions: the names and content
    of its ``data-*.arrow`` files (not the ``cache-*.arrow`` files ``datasets`` may add beside them); the
    resolved directory when it has none.

    Content, not the ``datasets`` fingerprint or file times: rebuilding identical SFT data (a rerun of
    ``build-sft``) must not look like new data to a finished or half-finished training run.
    """
    files = sorted(data_dir.glob("data-*.arrow"))
    return content_digest(files, names=True) if files else str(data_dir.resolve())


def model_files_identity(path: str | Path | None) -> list[list[object]] | None:
    """Name, size and mtime of each file directly in a local model directory, sorted; None for anything that
    is not a local directory (a hub id, no adapter)."""
    if path is None or not Path(path).is_dir():
        return None
    return sorted([f.name, f.stat().st_size, f.stat().st_mtime_ns] for f in Path(path).iterdir() if f.is_file())


__all__ = [
    "CONTENT_HASH_LIMIT",
    "content_digest",
    "dataset_fingerprint",
    "file_identity",
    "fingerprint",
    "model_files_identity",
]
