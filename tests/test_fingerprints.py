"""File fingerprints are frozen formats: finished runs carry them, so a changed value would make every
finished stage stale and every finished training run train again.

The values below were computed at commit 6514b73, before the study's ``fingerprint``/``file_identity``
(then in ``flopmatch.study.context``) and training's ``_data_fingerprint`` became
:mod:`flopmatch.fingerprints` (test of ``flopmatch.fingerprints`` and ``flopmatch.training.run_digest``).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from flopmatch.fingerprints import content_digest, dataset_fingerprint, file_identity, fingerprint
from flopmatch.training import LoraSettings, TrainConfig, run_digest

MTIME_NS = 1_700_000_000_123_456_789
DATA = "4008d6fe1fe5ed84583141f99e4cd51af2f4079dd2a9cf515e857676733b0c67"  # the SFT set's dataset_fingerprint


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """A run directory with an SFT set (two data shards, a cache file, metadata, a hidden file, a
    subfolder) and a sparse file just over the content-hash limit with a fixed modification time."""
    data = tmp_path / "sft" / "wc-b1"
    data.mkdir(parents=True)
    (data / "data-00000-of-00002.arrow").write_bytes(b"first shard\n" * 1000)
    (data / "data-00001-of-00002.arrow").write_bytes(b"second shard")
    (data / "cache-abc.arrow").write_bytes(b"ignored by training")
    (data / "dataset_info.json").write_text('{"a": 1}')
    (data / ".hidden").write_text("skipped by study")
    (data / "nested").mkdir()
    (data / "nested" / "x.txt").write_text("x")
    with open(tmp_path / "weights.bin", "wb") as handle:
        handle.truncate((16 << 20) + 1)
    os.utime(tmp_path / "weights.bin", ns=(1_700_000_000_000_000_000, MTIME_NS))
    return tmp_path


def test_a_stages_outputs_fingerprint_as_before(tree: Path):
    data = tree / "sft" / "wc-b1"
    assert fingerprint([data, tree / "weights.bin", tree / "missing"], tree) == "5469b47e5695b216"
    assert fingerprint([data], tree) == "a448358a97a360b9"
    assert file_identity(data / "dataset_info.json") == (
        "f9d86028c6e0d64e225186f96acb69338b2c59764df79162107f5c4bb34d1310"
    )
    assert file_identity(tree / "weights.bin") == f"{(16 << 20) + 1}:{MTIME_NS}"  # large: size and mtime


def test_a_moved_run_keeps_its_fingerprints_and_a_changed_file_does_not(tree: Path, tmp_path_factory):
    moved = tmp_path_factory.mktemp("moved")
    (moved / "sft").mkdir()
    os.rename(tree / "sft" / "wc-b1", moved / "sft" / "wc-b1")
    assert fingerprint([moved / "sft" / "wc-b1"], moved) == "a448358a97a360b9"
    (moved / "sft" / "wc-b1" / "nested" / "x.txt").write_text("y")
    assert fingerprint([moved / "sft" / "wc-b1"], moved) != "a448358a97a360b9"


def test_training_data_and_run_digests_as_before(tree: Path):
    data = tree / "sft" / "wc-b1"
    assert dataset_fingerprint(data) == DATA
    assert run_digest(TrainConfig(), "/models/base", data) == "8bfee98baaed71dc"
    tiny = TrainConfig.tiny_cpu(max_steps=20, lora=LoraSettings(r=4))
    assert run_digest(tiny, "/models/base", data) == "bfc7ce4296e45c94"
    # only the data shards count: a cache file `datasets` adds, or other files, change nothing
    (data / "cache-def.arrow").write_bytes(b"more cache")
    (data / "state.json").write_text("{}")
    assert dataset_fingerprint(data) == DATA


def test_a_dataset_without_shards_is_its_path_and_a_missing_one_hashes_no_data(tmp_path: Path):
    assert dataset_fingerprint(tmp_path) == str(tmp_path.resolve())
    missing = [run_digest(TrainConfig(), "m", tmp_path / name) for name in ("nope", "gone")]
    assert missing[0] == missing[1]  # no data yet: the run is its config and model


def test_the_content_digest_is_one_sha256_of_the_bytes(tmp_path: Path):
    import hashlib

    a, b = tmp_path / "a", tmp_path / "b"
    a.write_bytes(b"x" * (3 << 20))  # several read blocks
    b.write_bytes(b"tail")
    assert content_digest([a, b]) == hashlib.sha256(a.read_bytes() + b.read_bytes()).hexdigest()
    named = hashlib.sha256(b"a" + a.read_bytes() + b"b" + b"tail").hexdigest()
    assert content_digest([a, b], names=True) == named


def test_a_model_directory_is_its_files_names_sizes_and_times(tmp_path: Path):
    """evaluate()'s cache key: the files directly in the directory (not below it), sorted; None off disk."""
    from flopmatch.fingerprints import model_files_identity

    (tmp_path / "b.bin").write_bytes(b"12345")
    (tmp_path / "a.json").write_text("{}")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "c").write_text("x")
    os.utime(tmp_path / "b.bin", ns=(1, 2_000))
    os.utime(tmp_path / "a.json", ns=(1, 1_000))
    assert model_files_identity(tmp_path) == [["a.json", 2, 1_000], ["b.bin", 5, 2_000]]
    assert model_files_identity(str(tmp_path / "missing")) is None and model_files_identity(None) is None
