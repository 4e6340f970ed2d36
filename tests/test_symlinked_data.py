"""A data folder reached through a symbolic link (``../shared`` often is one) is the same folder:
paths are compared resolved, never as strings."""

from __future__ import annotations

import shutil
from pathlib import Path

from flopmatch.study import load_study_config

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "gsm8k-qwen-coder.yaml"


def test_the_gsm8k_example_finds_a_symlinked_shared_data_folder(tmp_path, monkeypatch) -> None:
    monkeypatch.delenv("FLOPMATCH_DATA", raising=False)
    real = tmp_path / "disk" / "shared-data-copy"
    (real / "data" / "gsm8k").mkdir(parents=True)
    for split in ("train", "test"):
        (real / "data" / "gsm8k" / f"{split}.jsonl").write_text('{"question": "1+1?", "answer": "#### 2"}\n')
    (tmp_path / "shared").symlink_to(real, target_is_directory=True)  # the checkout's ../shared
    (tmp_path / "main" / "examples").mkdir(parents=True)
    shutil.copy(EXAMPLE, tmp_path / "main" / "examples" / EXAMPLE.name)

    config = load_study_config(tmp_path / "main" / "examples" / EXAMPLE.name)
    through_link = tmp_path / "shared" / "data" / "gsm8k" / "train.jsonl"
    loaded = Path(config.problems.sample.data_file)
    assert loaded.resolve() == through_link.resolve()
    assert loaded.read_text() == through_link.read_text()
    # What the old test compared: the link's spelling against the resolved path. It differs here,
    # which is why comparisons must resolve both sides.
    assert str(loaded) != str(through_link)
