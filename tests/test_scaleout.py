"""Ray scale-out: replicas give the same samples as one engine, and a killed replica's chunk is redone.

Runs a real local Ray (2 CPUs) with replicas of the ``hf`` backend on the tiny model of
test_sampling (its builder is imported from there).
"""

from __future__ import annotations

import threading
import time

import pytest

from flopmatch import store
from flopmatch.backends.base import BackendConfigError, SamplingParams
from flopmatch.problems import Problem
from flopmatch.sampling import SAMPLE_SCHEMA, build_chunks, missing_samples, sample
from flopmatch.scaleout import ReplicaPool, replica_resources
from flopmatch.store import RunDir

# --------------------------------------------------------------------------- resources (pure)


def test_replica_resources():
    cpu = replica_resources("hf", {}, 2, cluster_cpus=8, cluster_gpus=0)
    assert cpu == {"num_cpus": 4.0}
    assert replica_resources("vllm", {}, 3, cluster_cpus=2, cluster_gpus=0) == {"num_cpus": 2 / 3}
    gpu = replica_resources("vllm", {"tensor_parallel_size": 2}, 4, cluster_cpus=64, cluster_gpus=8)
    assert gpu == {"num_cpus": 1.0, "num_gpus": 2.0}
    assert replica_resources("hf", {"device": "cpu"}, 2, cluster_cpus=8, cluster_gpus=8) == {"num_cpus": 4.0}
    assert replica_resources("openai", {}, 2, cluster_cpus=4, cluster_gpus=8) == {"num_cpus": 2.0}
    assert replica_resources("hf", {}, 2, cluster_cpus=8, cluster_gpus=0, num_cpus=0.5) == {"num_cpus": 0.5}



def test_no_replicas_is_a_backend_config_error_before_ray_starts():
    pytest.importorskip("ray")
    with pytest.raises(BackendConfigError, match="replicas must be >= 1, got 0") as info:
        ReplicaPool("hf", "m", replicas=0)
    assert isinstance(info.value, ValueError)  # what Python callers caught before


# --------------------------------------------------------------------------- a real local Ray

PARAMS = SamplingParams(temperature=1.0, top_p=1.0, max_tokens=10)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    from test_sampling import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "tiny-qwen2")


@pytest.fixture(scope="module")
def local_ray():
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(autouse=True)
def _one_thread():
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _problems(n: int) -> list[Problem]:
    questions = [
        "Tom has 3 apples and buys 5 more. How many apples does he have?",
        "A train travels 60 miles in 2 hours. What is its speed in miles per hour?",
        "Sara reads 12 pages a day for 5 days. How many pages does she read?",
        "A box holds 24 pens. How many pens are in 3 boxes?",
        "Lena had 50 dollars and spent 18. How much is left?",
    ]
    return [
        Problem(problem_id=f"toy-{i}", dataset="custom", split="test", question=q, answer="0")
        for i, q in enumerate(questions[:n])
    ]


def _texts(run, model) -> dict[tuple[str, int], str]:
    table = store.read_shards(RunDir(run).samples_dir(str(model)), schema=SAMPLE_SCHEMA)
    keys = list(
        zip(table.column("problem_id").to_pylist(), table.column("sample_idx").to_pylist(), strict=True)
    )
    assert len(keys) == len(set(keys)), "a sample was stored twice"
    return dict(zip(keys, table.column("text").to_pylist(), strict=True))


@pytest.mark.ray
def test_two_replicas_give_the_samples_of_one(tmp_path, tiny_model, local_ray):
    problems = _problems(4)
    common = dict(model=str(tiny_model), problems=problems, samples_per_problem=2, backend="hf",
                  params=PARAMS, progress=False, chunk_samples=2)  # fmt: skip
    one = sample(tmp_path / "one", **common)
    two = sample(tmp_path / "two", replicas=2, **common)
    assert (one.status, two.status) == ("done", "done")
    assert two.replicas == 2 and two.generated == 8 and two.backend == "hf"
    texts_one, texts_two = _texts(tmp_path / "one", tiny_model), _texts(tmp_path / "two", tiny_model)
    assert set(texts_two) == {(p.problem_id, i) for p in problems for i in range(2)}
    assert two.seeding == one.seeding == "per-request"  # the hf backend seeds every sample by its name
    assert texts_two == texts_one
    assert local_ray.is_initialized()  # a Ray the caller started is left running


@pytest.mark.ray
def test_a_killed_replica_has_its_chunk_redone(tiny_model, local_ray):
    from flopmatch.backends import create_backend

    problems = _problems(5)
    # Chunk 0 is one sample; chunk 1 is sixteen samples of 48 tokens generated one at a time
    # (batch_size=1), so it is far from done when the replica holding it is killed, right after it got it.
    small, _ = build_chunks(str(tiny_model), missing_samples(problems[:1], 1, set()), lambda p: p.question, 1)
    big, _ = build_chunks(str(tiny_model), missing_samples(problems[1:], 4, set()), lambda p: p.question, 16)
    chunks = [small[0], big[0]]
    params = SamplingParams(temperature=1.0, top_p=1.0, max_tokens=48)

    options = {"batch_size": 1, "ignore_eos": True, "dtype": "float32"}
    pool = ReplicaPool("hf", str(tiny_model), options, replicas=2)
    killed: list[int] = []

    def kill_the_big_chunks_replica() -> None:
        # The kill follows the dispatch of chunk 1 (an event), not a guess of which replica ends first.
        while not killed:
            busy = {chunk: slot for slot, chunk in pool.in_flight().items()}
            if 1 in busy:
                local_ray.kill(pool.actors[busy[1]])
                killed.append(busy[1])
            time.sleep(0.001)

    killer = threading.Thread(target=kill_the_big_chunks_replica, daemon=True)
    try:
        seen: list[int] = []
        results = {}
        killer.start()
        for index, completions in pool.run(chunks, params):
            seen.append(index)
            results[index] = completions
        killer.join(timeout=60)
        assert len(killed) == 1
        assert sorted(seen) == [0, 1]  # every chunk exactly once
        # the kill landed before chunk 1 was done (a finished chunk's result would have been kept)
        assert pool.replacements == 1
        keys = [(c.request_id, c.sample_idx) for c in results[1]]
        assert len(keys) == 16 and len(set(keys)) == 16  # the redone chunk is whole, nothing repeated
    finally:
        pool.close()

    reference = create_backend("hf", str(tiny_model), **options)
    try:
        if reference.seeding == "per-request":  # the redone chunk is the very chunk a single engine makes
            expected = [c.text for batch in reference.generate(chunks[1], params) for c in batch]
            assert sorted(c.text for c in results[1]) == sorted(expected)
    finally:
        reference.close()


@pytest.mark.ray
def test_replicas_exhausted_is_a_clear_error(tiny_model, local_ray):
    problems = _problems(3)
    chunks, _ = build_chunks(str(tiny_model), missing_samples(problems, 2, set()), lambda p: p.question, 2)
    pool = ReplicaPool("hf", str(tiny_model), {}, replicas=1, max_replacements=0)
    try:
        local_ray.kill(pool.actors[0])
        with pytest.raises(RuntimeError, match="rerun to resume"):
            list(pool.run(chunks, PARAMS))
    finally:
        pool.close()
