"""Studies that several test modules check, run once per session (conftest makes the fixtures visible).

A study with training takes tens of seconds even shrunk to a few steps; where two modules need the same one
(test_study checks what two training seeds produce, test_workers that two worker processes reproduce it),
it runs once. The tests that use a shared run must leave it as they found it: finished, every stage done.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

#: A few-step toy model: pretrains in seconds, enough to exercise every stage (it solves nothing).
TINY_TOY = {"hidden_size": 32, "num_layers": 1, "num_heads": 1, "intermediate_size": 32, "train_steps": 20,
            "tokenizer_corpus": 300}  # fmt: skip


def toy_study_dict(name: str, **overrides: Any) -> dict[str, Any]:
    """A small study on the real toy-world models (trained on first use and cached, as in the demo); each
    override replaces a whole top-level section."""
    data = {
        "name": name,
        "problems": {
            "sample": {"source": "toyworld", "split": "train", "limit": 12},
            "validation": {"holdout": 4},
            "test": {"source": "toyworld", "split": "test", "limit": 6},
        },
        "models": {
            "wc": {"model": "toyworld-wc", "backend": "hf"},
            "se": {"model": "toyworld-se", "backend": "hf"},
        },
        "budget": {"se_samples": [1, 2]},
        "sampling": {"max_tokens": 96},
        "judge": {"spec": "toyworld-checker", "per_model": 100},
        "analysis": {"n_boot": 50},
        "paradigms": {
            "student": {"model": "tiny-student", "backend": "hf", "toyworld_spec": TINY_TOY},
            "number_matched": ["knowledge_distillation"],
        },
        "training": {"preset": "tiny-cpu", "options": {"max_steps": 2, "n_checkpoints": 1}},
        "evaluation": {"backend": "hf", "n": 2},
    }
    return data | overrides


def seeds_study_dict(name: str = "seeds", workers: int = 1) -> dict[str, Any]:
    """Self-improvement only, SE 1 against its compute-matched WC count, two training seeds: four fine-tuning
    runs (SE and WC data, seeds 0 and 1), each trained and evaluated on the real toy-world models.

    24 sample problems (20 after the validation holdout): SE solves a third of them with one sample, so
    every set has data whatever the CPU draws (on 8, SE's set is empty with a chance of 1 in 25)."""
    base = toy_study_dict("")["problems"]
    return toy_study_dict(
        name,
        problems=base | {"sample": base["sample"] | {"limit": 24}},
        budget={"se_samples": [1]},
        paradigms={"knowledge_distillation": False, "weak_to_strong": False, "number_matched": []},
        training={
            "preset": "tiny-cpu",
            "seeds": [0, 1],
            "options": {"max_steps": 2, "n_checkpoints": 1},
            "workers": workers,
        },
    )


@pytest.fixture(scope="session")
def seeds_study(tmp_path_factory) -> tuple[Any, Path]:
    """(config, run directory) of :func:`seeds_study_dict`'s study, run to the end one after another
    (``training.workers: 1``)."""
    from flopmatch.study import run_study, validate_study_dict

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    config = validate_study_dict(seeds_study_dict())
    run_dir = tmp_path_factory.mktemp("seeds-study") / "run"
    run_study(config, run_dir, log=lambda _: None, progress=False)
    return config, run_dir
