"""Our guard and transport beside the Python peers, each group in one run.

Peers (the ``bench`` extra; the library never imports them): pybreaker,
circuitbreaker, aiobreaker, purgatory, httpx-retries. Each is used the way
its documentation shows: ``breaker.call(fn)`` for pybreaker and aiobreaker,
the decorator for circuitbreaker and purgatory.

* guard overhead, sync and async, around a no-op (1,000 calls a round);
* half-open: 10 concurrent callers (threads, and coroutines) arrive once the
  open time is over, and the provider is still down (each call fails after
  20 ms). ``extra_info["reached"]`` counts the calls that reached it,
  ``extra_info["rejected"]`` those the breaker turned away, and
  ``extra_info["rejected_wait_ms"]`` how long the slowest of those waited to be told;
* the transport happy path of httpx-retries, sync and async (ours, the bare
  transport, and 8 threads × 1 ms against pybreaker are in
  ``bench_transport.py``; these join its groups).

``make bench`` runs them and rewrites docs/benchmarks.md (``benchmarks/report.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import threading
import time
from collections.abc import Awaitable, Callable
from datetime import timedelta

import aiobreaker
import circuitbreaker
import httpx
import pybreaker
import pytest
from httpx_retries import RetryTransport
from purgatory import AsyncCircuitBreakerFactory, SyncCircuitBreakerFactory
from pytest_benchmark.fixture import BenchmarkFixture

from resilience import BreakerPolicy, Policy, ProviderRegistry
from resilience.testing import FakeClock

LOOPS = 1000
CALLERS = 10
TRIAL_SECONDS = 0.02
PEER_OPEN_SECONDS = 0.05
REQUESTS = 1000
SYNC, ASYNC = "peers: guard (1000 calls)", "peers: async guard (1000 calls)"
HALF_THREADS, HALF_TASKS = "peers: half-open, 10 threads", "peers: half-open, 10 coroutines"
TRANSPORT_GROUP = "transport happy path (1000 requests)"  # bench_transport.GET_GROUP
ASYNC_TRANSPORT_GROUP = "transport async happy path (1000 requests)"  # bench_transport.ASYNC_GROUP
TRANSPORT_ROUNDS = 25  # bench_transport.ROUNDS: the same rounds as the transports it stands beside
BASE_URL = "http://api.test"
PAYLOAD = {"model": "gpt-4o", "messages": [{"role": "user", "content": "Say hi."}]}


REACHED: contextvars.ContextVar[bool] = contextvars.ContextVar("reached", default=False)


class Boom(Exception):
    """The guarded call failed."""


def _noop() -> None:
    pass


async def _anoop() -> None:
    pass


# -- guard overhead, sync ---------------------------------------------------------------------------


def _sync_peers() -> dict[str, Callable[[], None]]:
    registry = ProviderRegistry()
    registry.register("p")
    guard = registry.guard

    def ours() -> None:
        with guard("p"):
            pass

    pb, ab = pybreaker.CircuitBreaker(), aiobreaker.CircuitBreaker()
    return {
        "resilience": ours,
        "pybreaker": lambda: pb.call(_noop),
        "circuitbreaker": circuitbreaker.CircuitBreaker(name="bench-sync")(_noop),
        "aiobreaker": lambda: ab.call(_noop),
        "purgatory": SyncCircuitBreakerFactory()("bench")(_noop),
        "bare": _noop,
    }


@pytest.mark.parametrize("peer", list(_sync_peers()))
@pytest.mark.benchmark(group=SYNC)
def test_guard_sync(benchmark: BenchmarkFixture, peer: str) -> None:
    """1,000 successful calls of a no-op through each breaker's documented sync API."""
    call = _sync_peers()[peer]
    benchmark.extra_info["peer"] = peer

    def run() -> None:
        for _ in range(LOOPS):
            call()

    benchmark(run)


# -- guard overhead, async --------------------------------------------------------------------------


def _async_peers() -> dict[str, Callable[[], Awaitable[None]]]:
    registry = ProviderRegistry()
    registry.register("p")
    guard = registry.guard

    async def ours() -> None:
        async with guard("p"):
            pass

    pb, ab = pybreaker.CircuitBreaker(), aiobreaker.CircuitBreaker()

    async def with_pybreaker() -> None:  # no asyncio API: its context manager around the await
        with pb.calling():
            await _anoop()

    return {
        "resilience": ours,
        "pybreaker": with_pybreaker,
        "circuitbreaker": circuitbreaker.CircuitBreaker(name="bench-async")(_anoop),
        "aiobreaker": lambda: ab.call_async(_anoop),
        "purgatory": AsyncCircuitBreakerFactory()("bench")(_anoop),
        "bare": _anoop,
    }


@pytest.mark.parametrize("peer", list(_async_peers()))
@pytest.mark.benchmark(group=ASYNC)
def test_guard_async(benchmark: BenchmarkFixture, peer: str) -> None:
    """1,000 successful awaits of a no-op coroutine through each breaker."""
    call = _async_peers()[peer]
    benchmark.extra_info["peer"] = peer
    loop = asyncio.new_event_loop()

    async def calls() -> None:
        for _ in range(LOOPS):
            await call()

    benchmark(lambda: loop.run_until_complete(calls()))
    loop.close()


# -- half-open under 10 concurrent callers ----------------------------------------------------------


class HalfOpen:
    """One breaker, tripped and past its open time before every round; counts what reached the call."""

    def __init__(self, peer: str) -> None:
        self.peer = peer
        self.reached = 0
        self.rejected_waits: list[float] = []
        self._lock = threading.Lock()
        self.clock = FakeClock()
        self.registry = ProviderRegistry(clock=self.clock, default_policy=Policy(breaker=BreakerPolicy(
            consecutive_failures=1, open_seconds=1.0, max_open_seconds=1.0, half_open_max_calls=1)))
        self.registry.register("p")
        self.pybreaker = pybreaker.CircuitBreaker(fail_max=1, reset_timeout=PEER_OPEN_SECONDS)
        self.aiobreaker = aiobreaker.CircuitBreaker(
            fail_max=1, timeout_duration=timedelta(seconds=PEER_OPEN_SECONDS))
        self.cb = circuitbreaker.CircuitBreaker(
            failure_threshold=1, recovery_timeout=PEER_OPEN_SECONDS, expected_exception=Boom,
            name=f"half-open-{peer}")
        self.purgatory = SyncCircuitBreakerFactory(default_threshold=1, default_ttl=PEER_OPEN_SECONDS)
        self.apurgatory = AsyncCircuitBreakerFactory(default_threshold=1, default_ttl=PEER_OPEN_SECONDS)

    def fail(self) -> None:
        """The provider, still down: counts the call, takes a while, fails."""
        with self._lock:
            self.reached += 1
        REACHED.set(True)
        time.sleep(TRIAL_SECONDS)
        raise Boom

    async def afail(self) -> None:
        """:meth:`fail` for coroutines."""
        self.reached += 1
        REACHED.set(True)
        await asyncio.sleep(TRIAL_SECONDS)
        raise Boom

    def sync_call(self) -> Callable[[], None]:
        """One caller's call through this peer's breaker."""
        def ours() -> None:
            with self.registry.guard("p"):
                self.fail()

        calls: dict[str, Callable[[], None]] = {
            "resilience": ours,
            "pybreaker": lambda: self.pybreaker.call(self.fail),
            "circuitbreaker": self.cb(self.fail),
            "aiobreaker": lambda: self.aiobreaker.call(self.fail),
            "purgatory": self.purgatory("p")(self.fail),
        }
        return calls[self.peer]

    def async_call(self) -> Callable[[], Awaitable[None]]:
        """One caller's call through this peer's breaker, as a coroutine."""
        async def ours() -> None:
            async with self.registry.guard("p"):
                await self.afail()

        calls: dict[str, Callable[[], Awaitable[None]]] = {
            "resilience": ours,
            "circuitbreaker": self.cb(self.afail),
            "aiobreaker": lambda: self.aiobreaker.call_async(self.afail),
            "purgatory": self.apurgatory("p")(self.afail),
        }
        return calls[self.peer]

    def setup(self, trip: Callable[[], None]) -> None:
        """Open the breaker (a first failure) and let its open time pass; reset the count."""
        for _ in range(2):
            with contextlib.suppress(Exception):  # the failure, or the breaker's own error
                trip()
        self.clock.advance(10.0)
        time.sleep(PEER_OPEN_SECONDS * 1.5)
        self.reached = 0
        self.rejected_waits = []

    def timed(self, call: Callable[[], None]) -> None:
        """Run one caller's call; note how long it waited if it was turned away."""
        REACHED.set(False)
        start = time.perf_counter()
        with contextlib.suppress(Exception):  # Boom or the breaker's rejection
            call()
        if not REACHED.get():
            self.rejected_waits.append(time.perf_counter() - start)

    async def atimed(self, call: Callable[[], Awaitable[None]]) -> None:
        """:meth:`timed` for coroutines (each caller is its own task, so its own context)."""
        REACHED.set(False)
        start = time.perf_counter()
        with contextlib.suppress(Exception):
            await call()
        if not REACHED.get():
            self.rejected_waits.append(time.perf_counter() - start)


def _record(benchmark: BenchmarkFixture, peer: str, reached: list[int], waits: list[float]) -> None:
    benchmark.extra_info.update(
        peer=peer, callers=CALLERS, reached=max(reached), reached_min=min(reached),
        rejected=CALLERS - max(reached), rejected_wait_ms=round(max(waits, default=0.0) * 1000, 3),
    )


@pytest.mark.parametrize("peer", ["resilience", "pybreaker", "circuitbreaker", "aiobreaker", "purgatory"])
@pytest.mark.benchmark(group=HALF_THREADS)
def test_half_open_threads(benchmark: BenchmarkFixture, peer: str) -> None:
    """10 threads call at once when the open time is over and the provider is still down."""
    half = HalfOpen(peer)
    call = half.sync_call()
    reached: list[int] = []
    waits: list[float] = []

    def callers() -> None:
        barrier = threading.Barrier(CALLERS)

        def one() -> None:
            barrier.wait()
            half.timed(call)

        threads = [threading.Thread(target=one) for _ in range(CALLERS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        reached.append(half.reached)
        waits.extend(half.rejected_waits)

    benchmark.pedantic(  # type: ignore[no-untyped-call]
        callers, setup=lambda: half.setup(call), rounds=5, iterations=1)
    _record(benchmark, peer, reached, waits)


@pytest.mark.parametrize("peer", ["resilience", "circuitbreaker", "aiobreaker", "purgatory"])
@pytest.mark.benchmark(group=HALF_TASKS)
def test_half_open_coroutines(benchmark: BenchmarkFixture, peer: str) -> None:
    """10 coroutines call at once when the open time is over and the provider is still down."""
    half = HalfOpen(peer)
    call = half.async_call()
    loop = asyncio.new_event_loop()
    reached: list[int] = []
    waits: list[float] = []

    async def together() -> None:
        await asyncio.gather(*(half.atimed(call) for _ in range(CALLERS)))

    def callers() -> None:
        loop.run_until_complete(together())
        reached.append(half.reached)
        waits.extend(half.rejected_waits)

    benchmark.pedantic(  # type: ignore[no-untyped-call]
        callers, setup=lambda: half.setup(lambda: loop.run_until_complete(call())), rounds=5, iterations=1)
    loop.close()
    _record(benchmark, peer, reached, waits)


# -- transport happy path: httpx-retries beside ours and bare (bench_transport.py, same groups) ------


def _ok(request: httpx.Request) -> httpx.Response:
    return httpx.Response(200, json={"ok": True})


@pytest.mark.benchmark(group=TRANSPORT_GROUP)
def test_transport_httpx_retries(benchmark: BenchmarkFixture) -> None:
    """Peer: ``httpx_retries.RetryTransport`` over a MockTransport, ``client.get`` × 1,000."""
    client = httpx.Client(transport=RetryTransport(transport=httpx.MockTransport(_ok)), base_url=BASE_URL)
    benchmark.extra_info["peer"] = "httpx-retries"

    def run() -> None:
        for _ in range(REQUESTS):
            client.get("/v1/models")

    benchmark.pedantic(run, rounds=TRANSPORT_ROUNDS, warmup_rounds=2)  # type: ignore[no-untyped-call]
    client.close()


@pytest.mark.benchmark(group=ASYNC_TRANSPORT_GROUP)
def test_transport_httpx_retries_async(benchmark: BenchmarkFixture) -> None:
    """Peer: ``RetryTransport`` under httpx.AsyncClient, ``await client.post(json=...)`` × 1,000."""
    loop = asyncio.new_event_loop()
    transport = RetryTransport(transport=httpx.MockTransport(_ok))
    client = httpx.AsyncClient(transport=transport, base_url=BASE_URL)
    benchmark.extra_info["peer"] = "httpx-retries"

    async def run() -> None:
        for _ in range(REQUESTS):
            await client.post("/v1/chat/completions", json=PAYLOAD)

    benchmark.pedantic(  # type: ignore[no-untyped-call]
        lambda: loop.run_until_complete(run()), rounds=TRANSPORT_ROUNDS, warmup_rounds=2
    )
    loop.run_until_complete(client.aclose())
    loop.close()
