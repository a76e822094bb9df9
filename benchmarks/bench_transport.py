"""ResilientTransport beside the bare transport it wraps, each group in one run.

* happy path: ``httpx.Client`` / ``httpx.AsyncClient`` over a ``MockTransport``
  that answers 200 at once, with and without ``ResilientTransport`` (1,000
  requests a round). GET without a body, and POST with a JSON ``model`` as
  LLM SDKs send it (the model is read from the body). httpx-retries joins
  the GET group from ``bench_peers.py``.
* interleaved: the same three, each round through ``ResilientTransport``
  right after a round through the bare transport, timed alike; the ratio of
  the two minimums is what the goals use (drift between two benchmarks
  cannot tilt it).
* throughput: 8 threads through one ``httpx.Client`` to a real uvicorn
  upstream on 127.0.0.1 that answers after 1 ms (``bench_callgrind``'s, in
  its own process), bare (``httpx.HTTPTransport``), through
  ``ResilientTransport``, and through a transport that wraps each request in
  ``pybreaker.CircuitBreaker.call``. Each ``ResilientTransport`` round runs
  right after a bare round (timed alike, in its setup), as in the interleaved
  group: the goal is the ratio of the two.

``make bench`` runs them and writes the ratios to docs/benchmarks.md.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pybreaker
import pytest
from pytest_benchmark.fixture import BenchmarkFixture

from resilience import ProviderRegistry, ResilientTransport

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the upstream lives beside this file
import bench_callgrind  # benchmarks/ is no package
from callgrind_client import SLOW_SECONDS

REQUESTS = 1000
ROUNDS = 25
"""Rounds per happy-path benchmark: the ratios are of minimums, and a shared 2-core machine needs
this many for the minimum to settle (pytest-benchmark's default of about 1 s gives 11-13)."""
INTERLEAVED_ROUNDS = 40
"""Rounds of each side in the interleaved benchmark: its ratios are the goals, so more than ROUNDS."""
THREADS = 8
REQUESTS_PER_THREAD = 25
UPSTREAM_SECONDS = SLOW_SECONDS
GET_GROUP = "transport happy path (1000 requests)"
POST_GROUP = "transport happy path, POST with a model (1000 requests)"
ASYNC_GROUP = "transport async happy path (1000 requests)"
THREADS_GROUP = "transport: 8 threads x 1 ms upstream"
BASE_URL = "http://api.test"
PAYLOAD = {"model": "gpt-4o", "messages": [{"role": "user", "content": "Say hi."}]}


def _ok(request: httpx.Request) -> httpx.Response:
    return httpx.Response(200, json={"ok": True})


def _registry() -> ProviderRegistry:
    registry = ProviderRegistry()
    registry.register("api", hosts=["api.test"])
    return registry


def _transport(kind: str, handler: Callable[[httpx.Request], httpx.Response] = _ok) -> httpx.MockTransport:
    """The bare mock, or the same mock inside ResilientTransport (typed loosely: both are transports)."""
    mock = httpx.MockTransport(handler)
    return mock if kind == "bare" else ResilientTransport(_registry(), mock)  # type: ignore[return-value]


def _sync_round(client: httpx.Client, case: str) -> Callable[[], None]:
    def run() -> None:
        if case == "get":
            for _ in range(REQUESTS):
                client.get("/v1/models")
        else:
            for _ in range(REQUESTS):
                client.post("/v1/chat/completions", json=PAYLOAD)

    return run


def _async_round(client: httpx.AsyncClient, loop: asyncio.AbstractEventLoop) -> Callable[[], None]:
    async def many() -> None:
        for _ in range(REQUESTS):
            await client.post("/v1/chat/completions", json=PAYLOAD)

    return lambda: loop.run_until_complete(many())


KINDS = [pytest.param("bare", id="bare"), pytest.param("resilience", id="resilience")]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.benchmark(group=GET_GROUP)
def test_transport_get(benchmark: BenchmarkFixture, kind: str) -> None:
    """``client.get`` × 1,000 through httpx.Client."""
    client = httpx.Client(transport=_transport(kind), base_url=BASE_URL)
    benchmark.extra_info["peer"] = kind
    benchmark.pedantic(_sync_round(client, "get"), rounds=ROUNDS, warmup_rounds=2)  # type: ignore[no-untyped-call]
    client.close()


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.benchmark(group=POST_GROUP)
def test_transport_post_model(benchmark: BenchmarkFixture, kind: str) -> None:
    """``client.post(json={"model": ...})`` × 1,000: the model is read from the body."""
    client = httpx.Client(transport=_transport(kind), base_url=BASE_URL)
    benchmark.extra_info["peer"] = kind
    benchmark.pedantic(_sync_round(client, "post"), rounds=ROUNDS, warmup_rounds=2)  # type: ignore[no-untyped-call]
    client.close()


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.benchmark(group=ASYNC_GROUP)
def test_transport_async(benchmark: BenchmarkFixture, kind: str) -> None:
    """``await client.post(json={"model": ...})`` × 1,000 through httpx.AsyncClient."""
    loop = asyncio.new_event_loop()
    client = httpx.AsyncClient(transport=_transport(kind), base_url=BASE_URL)
    benchmark.extra_info["peer"] = kind
    benchmark.pedantic(_async_round(client, loop), rounds=ROUNDS, warmup_rounds=2)  # type: ignore[no-untyped-call]
    loop.run_until_complete(client.aclose())
    loop.close()


# -- 8 threads, 1 ms upstream -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def upstream() -> Iterator[str]:
    """The base URL of a uvicorn upstream on 127.0.0.1 (its own process); ``/slow`` answers after 1 ms."""
    with bench_callgrind.upstream() as base_url:
        yield base_url


class PybreakerTransport(httpx.BaseTransport):
    """What a naive wrapper does: every request through ``pybreaker.CircuitBreaker.call``."""

    def __init__(self, inner: httpx.BaseTransport) -> None:
        self.inner = inner
        self.breaker = pybreaker.CircuitBreaker()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response: httpx.Response = self.breaker.call(self.inner.handle_request, request)
        return response

    def close(self) -> None:
        self.inner.close()


def _threaded(kind: str) -> httpx.BaseTransport:
    """A transport to the real upstream: bare, in ResilientTransport, or in pybreaker's ``call``."""
    inner = httpx.HTTPTransport(limits=httpx.Limits(max_connections=2 * THREADS))
    if kind == "pybreaker":
        return PybreakerTransport(inner)
    if kind == "bare":
        return inner
    registry = ProviderRegistry()
    registry.register("api", hosts=["127.0.0.1"])
    return ResilientTransport(registry, inner)


def _threads_round(client: httpx.Client, pool: ThreadPoolExecutor) -> Callable[[], None]:
    def work() -> None:
        for _ in range(REQUESTS_PER_THREAD):
            client.post("/slow", json=PAYLOAD).raise_for_status()

    def run() -> None:
        for future in [pool.submit(work) for _ in range(THREADS)]:
            future.result()

    return run


@pytest.mark.parametrize("kind", [*KINDS, pytest.param("pybreaker", id="pybreaker")])
@pytest.mark.benchmark(group=THREADS_GROUP)
def test_transport_threads(benchmark: BenchmarkFixture, kind: str, upstream: str) -> None:
    """8 threads × 25 requests through one httpx.Client to a real 1 ms upstream (200 a round).

    The ResilientTransport rounds each follow a bare round (in the setup,
    timed alike): ``bare_min`` beside its minimum is the goal's ratio.
    """
    interleaved = kind == "resilience"
    kinds = ("bare", kind) if interleaved else (kind,)
    clients = [httpx.Client(transport=_threaded(k), base_url=upstream) for k in kinds]
    benchmark.extra_info.update(peer=kind, requests=THREADS * REQUESTS_PER_THREAD)
    with ThreadPoolExecutor(THREADS) as pool:
        rounds = [_threads_round(c, pool) for c in clients]
        if interleaved:
            _interleaved(benchmark, *rounds)
        else:
            benchmark.pedantic(rounds[0], rounds=ROUNDS, warmup_rounds=2)  # type: ignore[no-untyped-call]
    for client in clients:
        client.close()


def _interleaved(benchmark: BenchmarkFixture, bare: Callable[[], None], ours: Callable[[], None]) -> None:
    """Time ``ours`` in rounds, each right after a round of ``bare`` (its setup, timed alike).

    The bare rounds' minimum and median go to ``extra_info`` (``bare_min``,
    ``bare_median``): both minimums come from the same stretch of time.
    """
    bare_times: list[float] = []

    def timed_bare() -> None:
        start = time.perf_counter()
        bare()
        bare_times.append(time.perf_counter() - start)

    benchmark.pedantic(  # type: ignore[no-untyped-call]
        ours, setup=timed_bare, rounds=INTERLEAVED_ROUNDS, warmup_rounds=2
    )
    measured = bare_times[-INTERLEAVED_ROUNDS:]  # the warmup rounds run their setup too
    benchmark.extra_info.update(bare_min=min(measured), bare_median=sorted(measured)[len(measured) // 2])


# -- happy path, interleaved with bare ------------------------------------------------------------

INTERLEAVED_GROUP = "transport happy path, interleaved with bare (1000 requests)"


@pytest.mark.parametrize("case", ["get", "post", "async"])
@pytest.mark.benchmark(group=INTERLEAVED_GROUP)
def test_transport_interleaved(benchmark: BenchmarkFixture, case: str) -> None:
    """Rounds through ResilientTransport, each right after a round through the bare transport.

    pytest-benchmark times the ResilientTransport rounds; the setup before
    each runs one bare round and times it the same way (``perf_counter``),
    so both minimums come from the same stretch of time and a machine that
    speeds up or slows down between two benchmarks cannot tilt the ratio.
    An in-memory body is not the path provider traffic takes: the per-request
    goals come from ``bench_callgrind.py`` over a real upstream.
    """
    loop = asyncio.new_event_loop()
    if case == "async":
        clients: list[Any] = [
            httpx.AsyncClient(transport=_transport(k), base_url=BASE_URL) for k in ("bare", "resilience")
        ]
        bare, ours = (_async_round(c, loop) for c in clients)
    else:
        clients = [httpx.Client(transport=_transport(k), base_url=BASE_URL) for k in ("bare", "resilience")]
        bare, ours = (_sync_round(c, case) for c in clients)
    benchmark.extra_info["peer"] = case
    _interleaved(benchmark, bare, ours)
    for client in clients:
        if isinstance(client, httpx.AsyncClient):
            loop.run_until_complete(client.aclose())
        else:
            client.close()
    loop.close()
