"""A small OpenAI-compatible server for tests: chat + completions, usage, seeds, and injected faults.

It answers deterministically from (prompt, seed), so tests can check which sample came back, and it
misbehaves on request through directives written in the prompt, counted per (prompt, seed) so they
hold under any concurrency:

* ``[[fail:429,500]]`` — the first attempts answer with these statuses, in order, then succeed;
* ``[[retry-after:1.5]]`` — 429 answers carry ``Retry-After: 1.5``;
* ``[[hang:5]]`` — the first attempt waits 5 s (or until the server stops) before answering (a client timeout);
* ``[[status:400]]`` — every attempt answers with this status;
* ``[[echo-auth:500]]`` — every attempt answers with this status and echoes the Authorization header
  in the error body (as careless servers do), to test that clients scrub keys.

Tokens are whitespace-separated words. ``ignore_eos`` makes an answer exactly ``max_tokens`` long.
``server.gather = N`` holds every answer until N requests are in flight at once (then lets all go), so
a test sees a client's concurrency without depending on timing.

    with StubServer(api_key="sk-test") as server:
        backend = create_backend("openai", "stub-model", base_url=server.base_url)
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import threading
from collections import Counter
from typing import Any

from aiohttp import web

_DIRECTIVE = re.compile(r"\[\[(fail|retry-after|hang|status|echo-auth):([^\]]*)\]\]")


def _prompt_text(body: dict) -> str:
    if "messages" in body:
        return "\n".join(str(m.get("content", "")) for m in body["messages"])
    return str(body.get("prompt", ""))


def answer_text(prompt: str, seed: Any) -> str:
    """What the stub says for (prompt, seed): names the seed, ends with a boxed number."""
    value = sum(map(ord, prompt)) + (int(seed) if seed is not None else 0)
    return f"Working on it with seed {seed} . so the total is {value % 97} . The answer is \\boxed{{{value % 97}}}"


class StubServer:
    """Runs the app on 127.0.0.1 (a free port) in a background thread with its own event loop."""

    def __init__(self, api_key: str | None = None, latency: float = 0.05, model: str = "stub-model"):
        self.api_key, self.latency, self.model = api_key, latency, model
        self.attempts: Counter = Counter()  # (path, prompt, seed) -> attempts seen
        self.statuses: Counter = Counter()  # status -> responses sent
        self.requests: list[dict] = []  # bodies of every request, in arrival order
        self.auth_headers: set[str] = set()
        self.in_flight = 0
        self.max_in_flight = 0
        self.gather = 0  # hold answers until this many requests are in flight at once (0: never hold)
        self.gather_timeout = 60.0  # a client that never gets there is answered anyway, and the test fails
        self._gathered: asyncio.Event | None = None
        self._stopping: asyncio.Event | None = None
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None
        self.port = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> StubServer:
        ready = threading.Event()
        self._loop = asyncio.new_event_loop()

        async def serve() -> None:
            self._gathered, self._stopping = asyncio.Event(), asyncio.Event()
            app = web.Application()
            app.router.add_post("/v1/chat/completions", self._handle)
            app.router.add_post("/v1/completions", self._handle)
            app.router.add_get("/v1/models", self._models)
            self._runner = web.AppRunner(app)
            await self._runner.setup()
            site = web.TCPSite(self._runner, "127.0.0.1", 0)
            await site.start()
            self.port = site._server.sockets[0].getsockname()[1]
            ready.set()

        def run() -> None:
            asyncio.set_event_loop(self._loop)
            self._loop.run_until_complete(serve())
            self._loop.run_forever()

        self._thread = threading.Thread(target=run, name="openai-stub", daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("stub server did not start")
        return self

    def stop(self) -> None:
        if self._loop is None:
            return
        self._loop.call_soon_threadsafe(self._stopping.set)  # ends hanging answers
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop = None

    def __enter__(self) -> StubServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ handlers

    async def _models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": self.model, "object": "model"}]})

    def _reply(self, status: int, payload: dict, headers: dict | None = None) -> web.Response:
        with self._lock:
            self.statuses[status] += 1
        return web.json_response(payload, status=status, headers=headers)

    async def _handle(self, request: web.Request) -> web.Response:
        with self._lock:
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            gathered = self.gather and self.max_in_flight >= self.gather
        try:
            if gathered:
                self._gathered.set()
            elif self.gather:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._gathered.wait(), self.gather_timeout)
            return await self._respond(request)
        finally:
            with self._lock:
                self.in_flight -= 1

    async def _respond(self, request: web.Request) -> web.Response:
        auth = request.headers.get("Authorization", "")
        body = await request.json()
        prompt = _prompt_text(body)
        seed = body.get("seed")
        with self._lock:
            self.requests.append(body)
            self.auth_headers.add(auth)
            key = (request.path, prompt, seed)
            self.attempts[key] += 1
            attempt = self.attempts[key]
        if self.api_key is not None and auth != f"Bearer {self.api_key}":
            return self._reply(
                401, {"error": {"message": "Incorrect API key provided", "type": "invalid_request_error"}}
            )
        if body.get("model") != self.model:
            return self._reply(404, {"error": {"message": f"model {body.get('model')!r} does not exist"}})
        directives: dict[str, str] = dict(_DIRECTIVE.findall(prompt))
        await asyncio.sleep(self.latency)
        if "echo-auth" in directives:
            return self._reply(
                int(directives["echo-auth"]), {"error": {"message": f"bad request from {auth}"}}
            )
        if "status" in directives:
            return self._reply(int(directives["status"]), {"error": {"message": "rejected by directive"}})
        if "hang" in directives and attempt == 1:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), float(directives["hang"]))
        failures = [int(s) for s in directives.get("fail", "").split(",") if s.strip()]
        if attempt <= len(failures):
            status = failures[attempt - 1]
            headers = (
                {"Retry-After": directives["retry-after"]}
                if status == 429 and "retry-after" in directives
                else None
            )
            return self._reply(status, {"error": {"message": f"injected {status}"}}, headers)

        words = answer_text(prompt, seed).split()
        max_tokens = int(body.get("max_tokens") or 16)
        if body.get("ignore_eos"):
            words = (words * (max_tokens // len(words) + 1))[:max_tokens]
        finish = "length" if len(words) > max_tokens else "stop"
        words = words[:max_tokens]
        text = " ".join(words)
        for stop in body.get("stop") or []:
            if stop in text:
                text, finish = text[: text.index(stop)], "stop"
        usage = {"prompt_tokens": len(prompt.split()), "completion_tokens": len(text.split())}
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        if "messages" in body:
            choice = {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish}
            kind = "chat.completion"
        else:
            choice = {"index": 0, "text": text, "finish_reason": finish}
            kind = "text_completion"
        return self._reply(
            200,
            {
                "id": f"stub-{len(self.requests)}",
                "object": kind,
                "model": self.model,
                "choices": [choice],
                "usage": usage,
            },
        )
