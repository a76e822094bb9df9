"""Four simulated LLM providers, each a small ASGI app served on its own loopback port.

* ``healthy``: answers 200 in about 20 ms;
* ``flaky``: answers 500 for a share of requests (``DEMO_FLAKY_ERROR_RATE``) and
  takes longer (``DEMO_FLAKY_LATENCY_MS``);
* ``outage``: up 7 s, then down (503) 8 s, on a fixed cycle (:data:`OUTAGE`);
* ``throttled``: answers 429 with ``Retry-After`` for a share of requests.

Every success is an OpenAI-style chat completion whose ``usage`` carries the
tokens and the USD ``cost`` (as openrouter reports it), so the gateway's
cost metrics move too.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
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
    """

    latency: float = 0.02
    error_rate: float = 0.0
    throttle_rate: float = 0.0
    retry_after: int = 2
    up_seconds: float = 5.0
    down_seconds: float = 0.0
    quota: int = 0
    quota_seconds: float = 10.0


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
        if status == 200:
            await _clock.async_sleep(self.behaviour.latency * self.random.uniform(0.5, 1.5))
        data = json.dumps(payload).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode()),
                   *headers]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": data})

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

    def answer(self, body: bytes) -> tuple[int, dict[str, object], list[tuple[bytes, bytes]]]:
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

    def answer_within_quota(self, body: bytes) -> tuple[int, dict[str, object], list[tuple[bytes, bytes]]]:
        """:meth:`answer` once the outage and the quota let the request through."""
        b = self.behaviour
        roll = self.random.random()
        if roll < b.throttle_rate:
            return 429, _error("rate limit exceeded"), [(b"retry-after", str(b.retry_after).encode())]
        if roll < b.throttle_rate + b.error_rate:
            return 500, _error("internal error"), []
        return 200, self.completion(_model_of(body)), []

    def completion(self, model: str) -> dict[str, object]:
        """An OpenAI-style chat completion with usage and cost."""
        prompt = self.random.randint(20, 400)
        completion = self.random.randint(10, 300)
        price = PRICE_PER_TOKEN.get(model, PRICE_PER_TOKEN["demo-small"])
        return {
            "id": f"chatcmpl-{self.name}-{self.served}",
            "object": "chat.completion",
            "model": model,
            "provider": self.name,
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": f"Hello from {self.name}."}}],
            "usage": {"prompt_tokens": prompt, "completion_tokens": completion,
                      "total_tokens": prompt + completion, "cost": round((prompt + completion) * price, 8)},
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
sends it about 10 a second, so it runs out a few seconds into each window), and some 429s besides."""


def demo_upstreams(
    *, flaky_error_rate: float, flaky_latency: float, seed: int = 0,
    clock: Callable[[], float] = _clock.monotonic,
) -> list[Upstream]:
    """The four providers of the demo, in display order (``clock``: their schedules' time)."""
    return [
        Upstream("healthy", Behaviour(latency=0.02), clock=clock, seed=seed),
        Upstream("flaky", Behaviour(latency=flaky_latency, error_rate=flaky_error_rate), clock=clock,
                 seed=seed + 1),
        Upstream("outage", OUTAGE, clock=clock, seed=seed + 2),
        Upstream("throttled", THROTTLED, clock=clock, seed=seed + 3),
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


def _model_of(body: bytes) -> str:
    try:
        model = json.loads(body or b"{}").get("model")
    except (ValueError, AttributeError):
        return "demo-small"
    return model if model in PRICE_PER_TOKEN else "demo-small"


def _error(message: str) -> dict[str, object]:
    return {"error": {"message": message, "type": "upstream_error"}}
