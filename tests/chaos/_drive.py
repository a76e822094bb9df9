"""Load for the chaos suite: many coroutines and threads sending a weighted mix of faults.

Every request ends in one of three ways, tallied in :class:`Run`: a response
(by status), a typed exception (by class name), or anything else escaping
(kept whole in ``escaped``: the suite asserts there is none).
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import anyio
import httpx

from resilience import BreakerPolicy, CircuitOpenError, Policy, RetryPolicy

TYPED = (httpx.HTTPError, CircuitOpenError)
"""What may reach a caller besides a response (``StreamTimeoutError`` is an ``httpx.TimeoutException``)."""

RAW_KINDS = ("reset", "reuse")
"""Paths served by the raw socket server."""

STREAMED = ("sse", "stall")
SHORT = httpx.Timeout(15.0, read=0.4)
"""Per-request timeout of paths that hang or stall: the read gives up long before the upstream does."""

LONG = httpx.Timeout(15.0)
"""Per-request timeout of every other path: never reached on loopback."""

STREAMING_IDLE = 1.0
"""``idle_timeout`` where SSE answers stream alongside stalls: far above any gap between their chunks,
so only a stall breaches it (a breach of an answer whose cost was already sent would make the cost
invariant depend on load). The ``stall_mid_stream`` scenario, with no multi-chunk answers, uses 0.25 s."""

LIMITS = httpx.Limits(max_connections=400, max_keepalive_connections=400)
"""Pool limits of the inner transports: never the bottleneck (a pool timeout never reaches the upstream)."""

HOST = "127.0.0.1"
"""The provider both servers resolve to."""

Mix = Sequence[tuple[str, int]]
"""``(path, weight)`` pairs a worker draws its requests from."""


@dataclass
class Bases:
    """Where each kind of path is sent."""

    http: str
    raw: str
    refused: str

    def url(self, path: str) -> tuple[str, dict[str, str]]:
        """The URL of ``path`` and its request extensions."""
        kind = path.strip("/").partition("/")[0]
        if kind == "refused":
            return self.refused + "/v1", {"provider": "down"}
        return (self.raw if kind in RAW_KINDS else self.http) + path, {}


@dataclass
class Run:
    """What the callers saw."""

    sent: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)
    circuit_open: int = 0
    escaped: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, outcome: str, *, circuit: bool = False, escaped: str | None = None) -> None:
        """Tally one finished request."""
        with self.lock:
            self.sent += 1
            self.outcomes[outcome] += 1
            self.circuit_open += circuit
            if escaped is not None:
                self.escaped.append(escaped)


def chaos_policy(**extra: object) -> Policy:
    """Short real-time breaker and retry settings, so a scenario sees whole breaker cycles."""
    return Policy(
        breaker=BreakerPolicy(
            minimum_calls=20, window_seconds=2.0, open_seconds=0.2, max_open_seconds=0.8,
            half_open_max_calls=2,
        ),
        retry=RetryPolicy(
            attempts=3, backoff_seconds=0.01, max_backoff_seconds=0.05, max_retry_after_seconds=0.5
        ),
        **extra,  # type: ignore[arg-type]  # Policy fields
    )


def draw(mix: Mix, rng: random.Random) -> str:
    """One path from the weighted mix."""
    paths, weights = zip(*mix, strict=True)
    path: str = rng.choices(paths, weights)[0]
    return path


def _settle(run: Run, exc: BaseException) -> None:
    if isinstance(exc, TYPED):
        run.add(type(exc).__name__, circuit=isinstance(exc, CircuitOpenError))
    else:
        run.add("escaped", escaped=repr(exc))


async def send_async(client: httpx.AsyncClient, bases: Bases, path: str, run: Run, n: int) -> None:
    """One request through the async client, its body read to the end."""
    url, extensions = bases.url(path)
    timeout = SHORT if path.startswith(("/hang", "/stall")) else LONG
    body = {"model": f"m{n % 3}", "messages": [{"role": "user", "content": "hi"}]}
    try:
        async with client.stream("POST", url, json=body, timeout=timeout, extensions=extensions) as response:
            async for _ in response.aiter_bytes():
                pass
    except Exception as exc:
        _settle(run, exc)
    else:
        run.add(f"status_{response.status_code}")


def send_sync(client: httpx.Client, bases: Bases, path: str, run: Run, n: int) -> None:
    """One request through the sync client, its body read to the end."""
    url, extensions = bases.url(path)
    timeout = SHORT if path.startswith(("/hang", "/stall")) else LONG
    body = {"model": f"m{n % 3}", "messages": [{"role": "user", "content": "hi"}]}
    try:
        with client.stream("POST", url, json=body, timeout=timeout, extensions=extensions) as response:
            for _ in response.iter_bytes():
                pass
    except Exception as exc:
        _settle(run, exc)
    else:
        run.add(f"status_{response.status_code}")


async def coroutines(
    client: httpx.AsyncClient,
    bases: Bases,
    mix: Mix,
    run: Run,
    *,
    workers: int,
    each: int,
    seed: int = 0,
    pace: float = 0.0,
) -> None:
    """``workers`` coroutines sending ``each`` requests drawn from ``mix``, ``pace`` seconds apart."""

    async def worker(index: int) -> None:
        rng = random.Random(seed * 100_003 + index)
        for n in range(each):
            await send_async(client, bases, draw(mix, rng), run, n)
            if pace:
                await anyio.sleep(pace)

    async with anyio.create_task_group() as group:
        for index in range(workers):
            group.start_soon(worker, index)


def threads(
    client: httpx.Client,
    bases: Bases,
    mix: Mix,
    run: Run,
    *,
    workers: int,
    each: int,
    seed: int = 1,
    pace: float = 0.0,
) -> list[threading.Thread]:
    """Start ``workers`` threads sending ``each`` requests from ``mix``, ``pace`` s apart; caller joins."""

    def worker(index: int) -> None:
        rng = random.Random(seed * 100_003 + index)
        for n in range(each):
            send_sync(client, bases, draw(mix, rng), run, n)
            if pace:
                time.sleep(pace)

    started = []
    for index in range(workers):
        thread = threading.Thread(target=worker, args=(index,), name=f"chaos-client-{index}")
        thread.start()
        started.append(thread)
    return started


async def join(started: list[threading.Thread], *, seconds: float = 120.0) -> None:
    """Wait for client threads without blocking the event loop (no worker thread of its own)."""
    with anyio.fail_after(seconds):
        while any(thread.is_alive() for thread in started):  # noqa: ASYNC110  # threads set no Event
            await anyio.sleep(0.02)
    for thread in started:
        thread.join()

