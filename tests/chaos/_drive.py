"""Load for the chaos suite: many coroutines and threads sending a weighted mix of faults.

Every request ends in one of three ways, tallied in :class:`Run`: a response
(by status), a typed exception of the client's own HTTP stack (by class
name), or anything else escaping (kept whole in ``escaped``: the suite
asserts there is none; an exception of the *other* stack escapes too).

The suite runs on each HTTP stack, httpx2 and httpx (same API, classes of
their own), sometimes both in one scenario. Nothing here is made with a
stack's classes at import: timeouts, limits and the typed exceptions are
built for the stack a client (:func:`stack_of`) or the caller names.
"""

from __future__ import annotations

import random
import sys
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from types import ModuleType

import anyio
import httpx

from resilience import BreakerPolicy, CircuitOpenError, Policy, RetryPolicy

STACK_NAMES = ("httpx2", "httpx")
"""The HTTP stacks the suite runs on, by module name."""

RAW_KINDS = ("reset", "reuse")
"""Paths served by the raw socket server."""

STREAMED = ("sse", "stall")
TIMEOUT_SECONDS = 15.0
"""Per-request timeout: never reached on loopback."""

SHORT_READ_SECONDS = 0.4
"""Read timeout of paths that hang or stall: the read gives up long before the upstream does."""

STREAMING_IDLE = 1.0
"""``idle_timeout`` where SSE answers stream alongside stalls: far above any gap between their chunks,
so only a stall breaches it (a breach of an answer whose cost was already sent would make the cost
invariant depend on load). The ``stall_mid_stream`` scenario, with no multi-chunk answers, uses 0.25 s."""

POOL_SIZE = 400
"""Pool limits of the inner transports: never the bottleneck (a pool timeout never reaches the upstream)."""

HOST = "127.0.0.1"
"""The provider both servers resolve to."""

Mix = Sequence[tuple[str, int]]
"""``(path, weight)`` pairs a worker draws its requests from."""


def stack_of(obj: object) -> ModuleType:
    """The HTTP stack (the ``httpx2`` or ``httpx`` module) whose class ``obj`` is an instance of."""
    for cls in type(obj).__mro__:
        name = cls.__module__.partition(".")[0]
        if name in STACK_NAMES:
            return sys.modules[name]
    raise TypeError(f"{obj!r} belongs to neither HTTP stack")


def typed(stack: ModuleType) -> tuple[type[BaseException], ...]:
    """What may reach a caller of ``stack`` besides a response.

    ``StreamTimeoutError`` raised for a request of ``stack`` is that stack's ``TimeoutException``.
    """
    return (stack.HTTPError, CircuitOpenError)


def timeout(stack: ModuleType, path: str = "") -> httpx.Timeout:
    """``stack``'s per-request timeout for ``path``: a short read where the upstream hangs or stalls."""
    read = SHORT_READ_SECONDS if path.startswith(("/hang", "/stall")) else TIMEOUT_SECONDS
    made: httpx.Timeout = stack.Timeout(TIMEOUT_SECONDS, read=read)
    return made


def limits(stack: ModuleType) -> httpx.Limits:
    """``stack``'s pool limits for the inner transports (:data:`POOL_SIZE`)."""
    made: httpx.Limits = stack.Limits(max_connections=POOL_SIZE, max_keepalive_connections=POOL_SIZE)
    return made


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


def _settle(run: Run, stack: ModuleType, exc: BaseException) -> None:
    if isinstance(exc, typed(stack)):
        run.add(type(exc).__name__, circuit=isinstance(exc, CircuitOpenError))
    else:
        run.add("escaped", escaped=repr(exc))


async def send_async(client: httpx.AsyncClient, bases: Bases, path: str, run: Run, n: int) -> None:
    """One request through the async client, its body read to the end."""
    url, extensions = bases.url(path)
    stack = stack_of(client)
    body = {"model": f"m{n % 3}", "messages": [{"role": "user", "content": "hi"}]}
    try:
        async with client.stream(
            "POST", url, json=body, timeout=timeout(stack, path), extensions=extensions
        ) as response:
            async for _ in response.aiter_bytes():
                pass
    except Exception as exc:
        _settle(run, stack, exc)
    else:
        run.add(f"status_{response.status_code}")


def send_sync(client: httpx.Client, bases: Bases, path: str, run: Run, n: int) -> None:
    """One request through the sync client, its body read to the end."""
    url, extensions = bases.url(path)
    stack = stack_of(client)
    body = {"model": f"m{n % 3}", "messages": [{"role": "user", "content": "hi"}]}
    try:
        with client.stream(
            "POST", url, json=body, timeout=timeout(stack, path), extensions=extensions
        ) as response:
            for _ in response.iter_bytes():
                pass
    except Exception as exc:
        _settle(run, stack, exc)
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
    spread: float = 0.0,
) -> None:
    """``workers`` coroutines sending ``each`` requests drawn from ``mix``, ``pace`` seconds apart.

    With ``spread``, their first requests go out evenly over that many seconds instead of at once.
    """

    async def worker(index: int) -> None:
        rng = random.Random(seed * 100_003 + index)
        if spread:
            await anyio.sleep(spread * index / workers)
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

