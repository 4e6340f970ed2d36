"""The sampling engine's checks (flopmatch.sampling_engine): what a user can get wrong is a FlopmatchError
that keeps the builtin base Python callers caught before; the loop itself is tested in test_sampling."""

from __future__ import annotations

import os

import pytest

from flopmatch.errors import FlopmatchError
from flopmatch.problems import Problem
from flopmatch.sampling_engine import (
    SamplerBusy,
    SamplingInputError,
    check_unique_ids,
    parameter_count,
    sampling_lock,
)


def _problem(problem_id: str) -> Problem:
    return Problem(problem_id=problem_id, dataset="gsm8k", split="test", question="q", answer="1")


def test_a_problem_id_given_twice_names_both_positions():
    check_unique_ids([_problem("a"), _problem("b")])
    with pytest.raises(SamplingInputError, match=r"problem_id 'a' appears twice \(positions 0 and 2\)") as info:
        check_unique_ids([_problem("a"), _problem("b"), _problem("a")])
    assert isinstance(info.value, ValueError) and isinstance(info.value, FlopmatchError)


def test_a_parameter_count_must_be_positive_or_countable():
    assert parameter_count("anything", 5, required=True) == 5
    with pytest.raises(SamplingInputError, match="params_count must be > 0, got 0"):
        parameter_count("anything", 0, required=True)
    with pytest.raises(SamplingInputError, match=r"cannot count the parameters of '.*no-such-model'.*pass params_count"):
        parameter_count("/nonexistent/no-such-model", None, required=True)
    assert parameter_count("/nonexistent/no-such-model", None, required=False) is None


def test_a_second_sampler_of_the_same_model_is_refused(tmp_path):
    with sampling_lock(tmp_path):
        with pytest.raises(SamplerBusy, match=rf"another flopmatch process \(pid {os.getpid()}\) is sampling") as info:
            with sampling_lock(tmp_path):
                pass  # flock is per open file: the same process is refused as another would be
    assert isinstance(info.value, RuntimeError)  # what Python callers caught before
    assert info.value.exit_code == 1  # the CLI's exit code, as when this was a RuntimeError's traceback
    with sampling_lock(tmp_path):  # released
        pass


def test_recorded_settings_are_compared_by_value(tmp_path):
    """A sample set recorded before SamplingParams became pydantic may hold temperature 1 (an int, as given);
    the same settings now read 1.0 and must still resume the set; another value is refused."""
    import json

    import pyarrow as pa

    from flopmatch.backends import SamplingParams
    from flopmatch.sampling_engine import SamplingConfigMismatch, check_config
    from flopmatch.store import append_shard

    append_shard(tmp_path, pa.table({"problem_id": ["q"], "sample_idx": [0]}))
    recorded = {"params": {"temperature": 1, "top_p": 1, "max_tokens": 64, "stop": []}, "prompt": None, "hash": "x"}
    (tmp_path / "config.json").write_text(json.dumps(recorded))
    check_config(tmp_path, params=SamplingParams(temperature=1, top_p=1, max_tokens=64), prompt=None)
    with pytest.raises(SamplingConfigMismatch, match="temperature: on disk 1, now 0.5"):
        check_config(tmp_path, params=SamplingParams(temperature=0.5, top_p=1, max_tokens=64), prompt=None)
