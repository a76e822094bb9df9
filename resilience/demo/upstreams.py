"""Five simulated LLM providers, each a small ASGI app served on its own loopback port.

* ``healthy``: answers 200 in about 20 ms;
* ``flaky``: answers 500 for a share of requests (``DEMO_FLAKY_ERROR_RATE``) and
  takes longer (``DEMO_FLAKY_LATENCY_MS``);
* ``outage``: up 7 s, then down (503) 8 s, on a fixed cycle (:data:`OUTAGE`);
* ``throttled``: announces a request quota in ``x-ratelimit-*`` headers (429 past
  it) and answers 429 with ``Retry-After`` for a share of requests;
* ``streaming``: streams SSE with keepalives between its content events, and
  ends a share of its streams (``DEMO_STREAM_ERROR_RATE``) with an in-band
  error event after a few content events (:data:`STREAMING`).

Every success is an OpenAI-style chat completion whose ``usage`` carries the
tokens and the USD ``cost`` (as openrouter reports it), so the gateway's
cost metrics move too. A request whose body says ``"stream": true`` is
answered as an SSE stream of ``chat.completion.chunk`` events, ``usage`` in
the last one, then ``data: [DONE]`` (any provider; only ``streaming`` pings
and fails in-band).
"""

from __future__ import annotations

import dataclasses
import json
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from starlette.types import Receive, Scope, Send

from resilience._core import clock as _clock

PRICE_PER_TOKEN = {"demo-small": 0.15e-6, "demo-large": 2.5e-6}
"""USD per token of the simulated models."""


@dataclass(frozen=True, kw_only=True)
class Behaviour:
    """How one simulated provider answers.

    Args:
        latency: seconds per answer (randomised by ±50 %).
        error_rate: share of requests answered 500.
        throttle_rate: share of requests answered 429 with ``Retry-After``.
        retry_after: the ``Retry-After`` of a 429, whole seconds.
        up_seconds: with ``down_seconds``, the length of each up phase.
        down_seconds: length of each down phase (503), 0 for never down.
        quota: requests allowed per ``quota_seconds`` window, announced in
            ``x-ratelimit-*`` headers on every answer; past it, 429 until the
            window resets (0: no quota).
        quota_seconds: the length of a quota window.
        keepalives: streams send keepalives (``: ping`` comments, Anthropic-style
            ``event: ping``) while they "think" and between content events.
        inband_error_rate: share of streams that end with an in-band error event
            (``event: error`` with ``overloaded_error``, or a ``data:`` JSON with a
            top-level ``"error"`` object) after a few content events, status 200.
        token_interval: seconds between a stream's content events (randomised by ±50 %).
    """

    latency: float = 0.02
    error_rate: float = 0.0
    throttle_rate: float = 0.0
    retry_after: int = 2
    up_seconds: float = 5.0
    down_seconds: float = 0.0
    quota: int = 0
    quota_seconds: float = 10.0
    keepalives: bool = False
    inband_error_rate: float = 0.0
    token_interval: float = 0.02


@dataclass(frozen=True)
class SseStream:
    """A streamed answer: its chunks, each with the seconds to wait before sending it."""

    chunks: tuple[tuple[float, bytes], ...]

    @property
    def body(self) -> bytes:
        """The whole stream at once (tests)."""
        return b"".join(chunk for _, chunk in self.chunks)


Payload = dict[str, object] | SseStream
"""What :meth:`Upstream.answer` answers with: a JSON object, or a stream."""


class Upstream:
    """One simulated provider: an ASGI app answering ``POST /v1/chat/completions``.

    Args:
        name: the provider's name, echoed in the answers.
        behaviour: how it answers.
        clock: monotonic seconds; the outage schedule counts from construction.
        seed: seeds its random choices, so runs are alike.
    """

    def __init__(
        self, name: str, behaviour: Behaviour, *, clock: Callable[[], float] = _clock.monotonic, seed: int = 0
    ) -> None:
        self.name = name
        self.behaviour = behaviour
        self.clock = clock
        self.started = clock()
        self.random = random.Random(seed)
        self.served = 0
        self.window = (-1, 0)  # (quota window index, requests in it)

    def is_down(self) -> bool:
        """Whether the outage schedule has this provider down right now."""
        b = self.behaviour
        if b.down_seconds <= 0:
            return False
        return (self.clock() - self.started) % (b.up_seconds + b.down_seconds) >= b.up_seconds

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        body = await _read_body(receive)
        self.served += 1
        status, payload, headers = self.answer(body)
        if isinstance(payload, SseStream):
            await self._stream(status, payload, headers, send)
            return
        if status == 200:
            await _clock.async_sleep(self.behaviour.latency * self.random.uniform(0.5, 1.5))
        data = json.dumps(payload).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode()),
                   *headers]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": data})

    async def _stream(
        self, status: int, stream: SseStream, headers: list[tuple[bytes, bytes]], send: Send
    ) -> None:
        start = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache"), *headers]
        await send({"type": "http.response.start", "status": status, "headers": start})
        for delay, chunk in stream.chunks:
            if delay > 0:
                await _clock.async_sleep(delay)
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b""})

    def quota_headers(self) -> tuple[bool, list[tuple[bytes, bytes]]]:
        """Count this request in its quota window: whether it is over, and the rate-limit headers."""
        b = self.behaviour
        elapsed = self.clock() - self.started
        index = int(elapsed // b.quota_seconds)
        used = (self.window[1] if self.window[0] == index else 0) + 1
        self.window = (index, used)
        reset = b.quota_seconds - elapsed % b.quota_seconds
        headers = [(b"x-ratelimit-limit-requests", str(b.quota).encode()),
                   (b"x-ratelimit-remaining-requests", str(max(0, b.quota - used)).encode()),
                   (b"x-ratelimit-reset-requests", f"{reset:.3f}s".encode())]
        return used > b.quota, headers

    def answer(self, body: bytes) -> tuple[int, Payload, list[tuple[bytes, bytes]]]:
        """Status, JSON payload and extra headers for one request body."""
        b = self.behaviour
        if self.is_down():
            return 503, _error("service unavailable (scheduled outage)"), []
        if b.quota:
            over, headers = self.quota_headers()
            if over:
                return 429, _error("rate limit exceeded (quota)"), headers
            status, payload, extra = self.answer_within_quota(body)
            return status, payload, extra + headers
        return self.answer_within_quota(body)

    def answer_within_quota(self, body: bytes) -> tuple[int, Payload, list[tuple[bytes, bytes]]]:
        """:meth:`answer` once the outage and the quota let the request through."""
        b = self.behaviour
        roll = self.random.random()
        if roll < b.throttle_rate:
            return 429, _error("rate limit exceeded"), [(b"retry-after", str(b.retry_after).encode())]
        if roll < b.throttle_rate + b.error_rate:
            return 500, _error("internal error"), []
        request = _request_of(body)
        if request.get("stream") is True:
            return 200, self.stream(_model_of(request)), []
        return 200, self.completion(_model_of(request)), []

    def usage(self, model: str) -> dict[str, object]:
        """Random token counts and their USD cost (openrouter's ``usage.cost``)."""
        prompt = self.random.randint(20, 400)
        completion = self.random.randint(10, 300)
        price = PRICE_PER_TOKEN.get(model, PRICE_PER_TOKEN["demo-small"])
        return {"prompt_tokens": prompt, "completion_tokens": completion,
                "total_tokens": prompt + completion, "cost": round((prompt + completion) * price, 8)}

    def stream(self, model: str) -> SseStream:
        """An OpenAI-style stream of ``chat.completion.chunk`` events, ``usage`` in the last one.

        The first content event comes after the provider's latency (its time
        to first token); with :attr:`Behaviour.keepalives` keepalives fill
        that wait and some gaps between content events; a share
        (:attr:`Behaviour.inband_error_rate`) of streams ends with an in-band
        error after two or three content events instead of ``usage``.
        """
        b = self.behaviour
        ident = f"chatcmpl-{self.name}-{self.served}"
        words = f"Hello from {self.name}, streamed one word at a time.".split()
        fails_after = self.random.randint(2, 3) if self.random.random() < b.inband_error_rate else None
        first = b.latency * self.random.uniform(0.5, 1.5)
        chunks: list[tuple[float, bytes]] = []
        if b.keepalives:  # what the provider sends while it "thinks": nothing that is content
            chunks += [(first / 2, b": ping\n\n"), (first / 2, b'event: ping\ndata: {"type": "ping"}\n\n')]
            first = 0.0
        for i, word in enumerate(words):
            if i == fails_after:
                chunks.append((self._gap(), self._inband_error()))
                return SseStream(tuple(chunks))
            delta = {"role": "assistant", "content": word} if i == 0 else {"content": " " + word}
            event = {"id": ident, "object": "chat.completion.chunk", "model": model,
                     "choices": [{"index": 0, "delta": delta, "finish_reason": None}]}
            chunks.append((first if i == 0 else self._gap(), _data(event)))
            if b.keepalives and i % 2 == 1:
                chunks.append((self._gap(), b": ping\n\n"))
        last = {"id": ident, "object": "chat.completion.chunk", "model": model, "provider": self.name,
                "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}], "usage": self.usage(model)}
        chunks += [(self._gap(), _data(last)), (0.0, b"data: [DONE]\n\n")]
        return SseStream(tuple(chunks))

    def _gap(self) -> float:
        return self.behaviour.token_interval * self.random.uniform(0.5, 1.5)

    def _inband_error(self) -> bytes:
        """An in-band error event in one of the two shapes providers send, picked at random."""
        if self.random.random() < 0.5:  # Anthropic
            error = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
            return b"event: error\n" + _data(error)
        return _data({"error": {"message": "upstream overloaded mid-stream", "type": "server_error",
                                "code": 502}})  # OpenAI-compatible, as openrouter sends it mid-stream

    def completion(self, model: str) -> dict[str, object]:
        """An OpenAI-style chat completion with usage and cost."""
        return {
            "id": f"chatcmpl-{self.name}-{self.served}",
            "object": "chat.completion",
            "model": model,
            "provider": self.name,
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": f"Hello from {self.name}."}}],
            "usage": self.usage(model),
        }


OUTAGE = Behaviour(latency=0.03, up_seconds=7.0, down_seconds=8.0)
"""The ``outage`` provider's cycle, against the demo breaker (3 s open, then 6 s between trials).

It trips within a second of going down; its trial 3 s later fails (still
down), the next one 6 s after that lands about a second into the up phase:
half-open for a second or so of trial successes, then closed. The up phase
outlasts the longest open time (6 s), so some trial lands in it whenever the
trip came: trip, half-open and close in every cycle.
"""


THROTTLED = Behaviour(latency=0.03, throttle_rate=0.1, retry_after=2, quota=40, quota_seconds=10.0)
"""The ``throttled`` provider: a quota of 40 requests per 10 s announced in its headers (the demo
sends it about 7 a second, so it runs out a few seconds into each window), and some 429s besides."""

STREAMING = Behaviour(latency=0.15, keepalives=True, inband_error_rate=0.1, token_interval=0.03)
"""The ``streaming`` provider: about 150 ms to its first token, pinging meanwhile, then a content
event every ~30 ms; 10 % of its streams (``DEMO_STREAM_ERROR_RATE``) fail in-band, status 200."""


def demo_upstreams(
    *, flaky_error_rate: float, flaky_latency: float, stream_error_rate: float = STREAMING.inband_error_rate,
    seed: int = 0, clock: Callable[[], float] = _clock.monotonic,
) -> list[Upstream]:
    """The five providers of the demo, in display order (``clock``: their schedules' time)."""
    return [
        Upstream("healthy", Behaviour(latency=0.02), clock=clock, seed=seed),
        Upstream("flaky", Behaviour(latency=flaky_latency, error_rate=flaky_error_rate), clock=clock,
                 seed=seed + 1),
        Upstream("outage", OUTAGE, clock=clock, seed=seed + 2),
        Upstream("throttled", THROTTLED, clock=clock, seed=seed + 3),
        Upstream("streaming", dataclasses.replace(STREAMING, inband_error_rate=stream_error_rate),
                 clock=clock, seed=seed + 4),
    ]


async def _read_body(receive: Receive) -> bytes:
    chunks = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return b""
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


def _request_of(body: bytes) -> dict[str, object]:
    """The request body's JSON object; ``{}`` when it is not one."""
    try:
        request = json.loads(body or b"{}")
    except ValueError:
        return {}
    return request if isinstance(request, dict) else {}


def _model_of(request: dict[str, object]) -> str:
    model = request.get("model")
    return model if isinstance(model, str) and model in PRICE_PER_TOKEN else "demo-small"


def _data(event: Mapping[str, object]) -> bytes:
    """One SSE ``data:`` event."""
    return b"data: " + json.dumps(event).encode() + b"\n\n"


def _error(message: str) -> dict[str, object]:
    return {"error": {"message": message, "type": "upstream_error"}}
