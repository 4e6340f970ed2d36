"""Any OpenAI-compatible server (vLLM / SGLang servers, hosted APIs), chat or completions API.

One HTTP request per sample (``n=1``, with the sample's ``seed`` unless ``send_seed=False``), so the
server's token usage is recorded per sample and seeds stay per-request. Requests run concurrently on
an aiohttp event loop in a background thread (at most ``max_concurrency`` in flight) while
``generate`` hands finished completions back in batches, so the caller can persist them as they come.

Failures: 429, 408 and 5xx responses, timeouts and connection errors are retried with exponential
backoff and jitter, waiting at least what a ``Retry-After`` header asks; after ``max_retries`` the
sample comes back with ``finish_reason="error"``. 401/403/404 (bad key, wrong model or URL) stop the
whole call with an error, since every other request would fail the same way; other 4xx (e.g. a prompt
too long) fail just that sample.

The API key is read from the environment variable ``api_key_env`` (default ``OPENAI_API_KEY``) when a
call starts; it is held only by the HTTP session, never stored on the backend, and scrubbed from any
server text put in an error or a log line.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import logging
import os
import queue
import random
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from flopmatch.backends._common import Flusher, normalise_finish
from flopmatch.backends.base import BackendConfigError, Completion, Request, SamplingParams, Seeding
from flopmatch.errors import FlopmatchError

log = logging.getLogger(__name__)

_RETRY_STATUSES = {408, 409, 425, 429}  # plus every 5xx
_FATAL_STATUSES = {401, 403, 404}
_BODY_SNIPPET = 300


class OpenAIBackendError(FlopmatchError, RuntimeError):
    """The server cannot serve this call at all (bad key, unknown model or URL)."""


@dataclass
class _Job:
    request: Request
    position: int  # index into request.sample_indices


@dataclass
class _Outcome:
    """What one HTTP attempt produced; ``retry`` says whether another attempt may succeed."""

    data: dict | None = None
    problem: str = ""
    retry: bool = False
    retry_after: float | None = None
    fatal: bool = False


def parse_retry_after(value: str | None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header: a number of seconds or an HTTP date."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def backoff_delay(
    attempt: int, base: float, cap: float, retry_after: float | None, rng: random.Random
) -> float:
    """Exponential backoff with jitter (half fixed, half random, so waits never collapse to zero),
    and never shorter than the server's ``Retry-After``."""
    ceiling = min(cap, base * 2**attempt)
    delay = ceiling / 2 + rng.uniform(0, ceiling / 2)
    return max(delay, retry_after or 0.0)


class OpenAIBackend:
    """``create_backend("openai", model, base_url=..., api="chat"|"completions", ...)``.

    Options: ``base_url`` (up to ``/v1``), ``api``, ``api_key_env``, ``max_concurrency``,
    ``max_retries``, ``backoff_base`` / ``backoff_max`` (seconds), ``timeout`` (seconds per HTTP
    attempt), ``send_seed`` (False for servers that reject or ignore ``seed``; ``seeding`` is then
    "engine"), ``ignore_eos`` (vLLM/SGLang servers: always generate ``max_tokens``), ``extra_body``
    (more JSON fields, e.g. ``{"top_k": 20}``), ``flush_every`` / ``flush_seconds``.
    """

    name = "openai"

    def __init__(
        self,
        model: str,
        *,
        base_url: str = "https://api.openai.com/v1",
        api: Literal["chat", "completions"] = "chat",
        api_key_env: str = "OPENAI_API_KEY",
        max_concurrency: int = 16,
        max_retries: int = 6,
        backoff_base: float = 1.0,
        backoff_max: float = 60.0,
        timeout: float = 600.0,
        send_seed: bool = True,
        ignore_eos: bool = False,
        extra_body: dict[str, Any] | None = None,
        flush_every: int = 64,
        flush_seconds: float = 30.0,
    ):
        if api not in ("chat", "completions"):
            raise BackendConfigError(f"api must be 'chat' or 'completions', got {api!r}")
        if max_concurrency < 1 or max_retries < 0:
            raise BackendConfigError("max_concurrency must be >= 1 and max_retries >= 0")
        self.model = model
        self.base_url = base_url.rstrip("/")
        self.api = api
        self.api_key_env = api_key_env
        self.max_concurrency, self.max_retries = max_concurrency, max_retries
        self.backoff_base, self.backoff_max, self.timeout = backoff_base, backoff_max, timeout
        self.seeding: Seeding = "per-request" if send_seed else "engine"
        self.ignore_eos = ignore_eos
        self.extra_body = dict(extra_body or {})
        self.flush_every, self.flush_seconds = flush_every, flush_seconds
        self._rng = random.Random()

    def __repr__(self) -> str:
        return f"OpenAIBackend(model={self.model!r}, url={self.url!r}, api_key_env={self.api_key_env!r})"

    @property
    def url(self) -> str:
        return f"{self.base_url}/{'chat/completions' if self.api == 'chat' else 'completions'}"

    # ------------------------------------------------------------------ payloads

    def _payload(self, job: _Job, params: SamplingParams) -> dict[str, Any]:
        prompt = job.request.prompt
        body: dict[str, Any] = {
            "model": self.model,
            "temperature": params.temperature,
            "top_p": params.top_p,
            "max_tokens": params.max_tokens,
            "n": 1,
        }
        if self.api == "chat":
            body["messages"] = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
        else:
            body["prompt"] = prompt
        if params.stop:
            body["stop"] = list(params.stop)
        if self.seeding == "per-request":
            body["seed"] = job.request.seeds[job.position]
        if self.ignore_eos:
            body["ignore_eos"] = True
        return body | self.extra_body

    def _check_prompts(self, requests: Sequence[Request]) -> None:
        if self.api == "completions":
            for r in requests:
                if not isinstance(r.prompt, str):
                    raise BackendConfigError(
                        f"request {r.request_id!r}: the completions API takes text prompts, got chat "
                        "messages; use api='chat' or PromptConfig(style='plain')"
                    )

    # ------------------------------------------------------------------ generation

    def generate(self, requests: Sequence[Request], params: SamplingParams) -> Iterator[list[Completion]]:
        """Send every sample's request concurrently; yield finished completions in batches.

        Closing the iterator early cancels the requests still in flight.
        """
        self._check_prompts(requests)
        jobs = [_Job(r, j) for r in requests for j in range(len(r.sample_indices))]
        key = os.environ.get(self.api_key_env) or None
        if key is None:
            log.info("no API key in $%s; sending requests without one", self.api_key_env)
        results: queue.SimpleQueue = queue.SimpleQueue()
        done = object()
        loop = asyncio.new_event_loop()
        task_box: list[asyncio.Task] = []

        def run() -> None:
            try:
                task_box.append(loop.create_task(self._run_all(jobs, params, key, results.put)))
                loop.run_until_complete(task_box[0])
            except BaseException as exc:  # handed to the consuming thread, re-raised there
                results.put(exc)
            finally:
                results.put(done)
                loop.close()

        thread = threading.Thread(target=run, name="flopmatch-openai", daemon=True)
        thread.start()
        flusher = Flusher(self.flush_every, self.flush_seconds)
        try:
            while True:
                try:
                    item = results.get(timeout=0.2)
                except queue.Empty:
                    item = None
                if item is done:
                    break
                if isinstance(item, BaseException):
                    if isinstance(item, OpenAIBackendError | ValueError):
                        raise item
                    raise OpenAIBackendError(
                        f"{self.url}: {type(item).__name__}: {_scrub(str(item), key)}"
                    ) from None
                if item is not None:
                    flusher.add([item])
                if flusher.due():
                    yield flusher.take()
            if flusher.pending:
                yield flusher.take()
        finally:
            if thread.is_alive():
                for task in task_box:
                    try:
                        loop.call_soon_threadsafe(task.cancel)
                    except RuntimeError:  # the loop closed meanwhile
                        pass
                thread.join()

    async def _run_all(
        self, jobs: list[_Job], params: SamplingParams, key: str | None, emit: Callable[[Completion], None]
    ) -> None:
        import aiohttp

        headers = {"Content-Type": "application/json"}
        if key:
            headers["Authorization"] = f"Bearer {key}"
        limit = asyncio.Semaphore(self.max_concurrency)
        connector = aiohttp.TCPConnector(limit=self.max_concurrency)
        timeout = aiohttp.ClientTimeout(total=self.timeout)
        async with aiohttp.ClientSession(headers=headers, connector=connector, timeout=timeout) as session:

            async def one(job: _Job) -> None:
                async with limit:
                    emit(await self._sample(session, job, params, key))

            try:
                async with asyncio.TaskGroup() as group:  # one fatal error cancels the rest
                    for job in jobs:
                        group.create_task(one(job))
            except* OpenAIBackendError as errors:
                raise errors.exceptions[0] from None

    async def _attempt(self, session: Any, body: dict, key: str | None) -> _Outcome:
        import aiohttp

        try:
            async with session.post(self.url, json=body) as response:
                status = response.status
                text = await response.text()
                retry_after = parse_retry_after(response.headers.get("Retry-After"))
        except (TimeoutError, aiohttp.ClientError) as exc:
            kind = "timeout" if isinstance(exc, TimeoutError) else type(exc).__name__
            return _Outcome(
                problem=f"{kind} after {self.timeout:g}s limit" if kind == "timeout" else kind, retry=True
            )
        if status == 200:
            try:
                return _Outcome(data=json.loads(text))
            except ValueError:
                return _Outcome(
                    problem=f"HTTP 200 with a body that is not JSON: {_scrub(text, key)[:_BODY_SNIPPET]!r}"
                )
        problem = f"HTTP {status}: {_scrub(text, key)[:_BODY_SNIPPET]}"
        if status in _FATAL_STATUSES:
            hint = (
                f"check the key in ${self.api_key_env}"
                if status in (401, 403)
                else f"check base_url and that the server serves model {self.model!r}"
            )
            return _Outcome(problem=f"{self.url}: {problem} ({hint})", fatal=True)
        return _Outcome(
            problem=problem, retry=status in _RETRY_STATUSES or status >= 500, retry_after=retry_after
        )

    async def _sample(self, session: Any, job: _Job, params: SamplingParams, key: str | None) -> Completion:
        body = self._payload(job, params)
        started = time.perf_counter()
        for attempt in range(self.max_retries + 1):
            outcome = await self._attempt(session, body, key)
            if outcome.fatal:
                raise OpenAIBackendError(outcome.problem)
            if outcome.data is not None:
                return self._parse(job, outcome.data, attempt + 1, time.perf_counter() - started)
            if not outcome.retry or attempt == self.max_retries:
                break
            delay = backoff_delay(
                attempt, self.backoff_base, self.backoff_max, outcome.retry_after, self._rng
            )
            log.warning(
                "%s: %s; retry %d/%d in %.1fs",
                self.url,
                outcome.problem,
                attempt + 1,
                self.max_retries,
                delay,
            )
            await asyncio.sleep(delay)
        log.error(
            "%s: request %s sample %d failed after %d attempts: %s",
            self.url,
            job.request.request_id,
            job.request.sample_indices[job.position],
            attempt + 1,
            outcome.problem,
        )
        return self._completion(job, "", 0, 0, "error", {"error": outcome.problem, "attempts": attempt + 1})

    def _parse(self, job: _Job, data: dict, attempts: int, latency: float) -> Completion:
        extra: dict[str, Any] = {"attempts": attempts, "latency_s": latency}
        try:
            choice = data["choices"][0]
            text = (choice["message"]["content"] if self.api == "chat" else choice["text"]) or ""
            reason = normalise_finish(choice.get("finish_reason") or "stop")
        except (KeyError, IndexError, TypeError) as exc:
            return self._completion(
                job, "", 0, 0, "error", extra | {"error": f"malformed response: missing {exc}"}
            )
        usage = data.get("usage") or {}
        if not usage:
            extra["usage_missing"] = True
        return self._completion(
            job,
            text,
            int(usage.get("prompt_tokens") or 0),
            int(usage.get("completion_tokens") or 0),
            reason,
            extra,
        )

    def _completion(
        self,
        job: _Job,
        text: str,
        prompt_tokens: int,
        completion_tokens: int,
        reason: str,
        extra: dict[str, Any],
    ) -> Completion:
        return Completion(
            request_id=job.request.request_id,
            sample_idx=job.request.sample_indices[job.position],
            seed=job.request.seeds[job.position],
            text=text,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            finish_reason=reason,
            extra=extra,
        )

    def close(self) -> None:
        """Nothing to release: each ``generate`` call opens and closes its own HTTP session."""


def _scrub(text: str, key: str | None) -> str:
    """Remove the API key from server text before it reaches a log or an error (some servers echo it)."""
    return text.replace(key, "***") if key else text
