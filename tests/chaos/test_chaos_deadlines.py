"""Chaos: every call with a deadline ends within deadline + 100 ms, whatever the upstream does.

Real loopback upstreams (uvicorn and a raw socket server, :mod:`chaos._upstream`):
a provider that hangs, one that fails with a 5xx and then hangs on the retry,
one that answers ``429`` with ``Retry-After: 30``, a route whose targets hang
or answer 503 (failover, and hedging on async clients), and streams that
stall mid-body. The deadline is set each way a caller can set it: per request
(``extensions={"deadline": s}``), per provider (``Policy(deadline_seconds=...)``),
per route (``RoutePolicy(deadline_seconds=...)``) and per inbound request
(``ResilienceMiddleware(deadline_header=...)``). Sync and async clients, on each
HTTP stack (``stack``).

Checked for each: the wall-clock time of the whole call (body included) is at
most the deadline + :data:`SLACK`; the call raises ``DeadlineExceededError``,
an instance of the request's stack's ``TimeoutException``, with the
``.deadline`` as set and the ``.provider`` cut; the attempt cut by the
deadline counts in neither the calls nor the failures of its provider, and
is counted in ``gatewayz_provider_deadline_exceeded_total`` and
``snapshot().deadline_exceeded_total``. A ``Retry-After`` wait that would cross
the deadline is not waited: the 429 comes back at once.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import anyio
import httpx
import pytest
from both_stacks import AsyncTransport, Transport
from chaos._drive import Bases
from chaos._upstream import Upstream
from prometheus_client import CollectorRegistry
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route as StarletteRoute

from resilience import (
    DeadlineExceededError,
    Policy,
    ProviderRegistry,
    ResilienceMiddleware,
    ResilientTransport,
    RetryPolicy,
    RoutePolicy,
    Target,
)

pytestmark = [pytest.mark.chaos, pytest.mark.integration, pytest.mark.anyio, pytest.mark.usefixtures("stack")]

SLACK = 0.1
"""How far past its deadline a call may end (wall clock, loopback)."""

DEADLINE = 0.3
"""The deadline of most calls: short, so the module runs in seconds."""

EARLY = 0.01
"""How much before its deadline a call cut by it may end (clock granularity)."""

PROVIDER = "llm"
MODES = ("sync", "async")
SOURCES = ("extension", "policy")
STALL_MODES = ["sync", "async"]
"""Modes of the stalled-stream tests."""
BODY = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
STREAM_BODY = {**BODY, "stream": True}


# -- driving one call ------------------------------------------------------------------------


@dataclass
class Ended:
    """How one call ended: its response (body read whole) or its exception, and how long it took."""

    took: float
    response: httpx.Response | None = None
    error: BaseException | None = None
    chunks: int = 0

    def raised(self) -> DeadlineExceededError:
        """The ``DeadlineExceededError`` it raised (else fail, showing what happened instead)."""
        assert isinstance(self.error, DeadlineExceededError), (self.error, self.response)
        return self.error

    def answered(self) -> httpx.Response:
        """The response it got (else fail, showing the error)."""
        assert self.error is None and self.response is not None, self.error
        return self.response


def send_sync(client: httpx.Client, url: str, *, body: dict[str, Any], stream: bool,
              extensions: dict[str, Any]) -> Ended:
    """One POST through ``client``, its body read to the end (chunk by chunk when ``stream``)."""
    chunks = 0
    started = time.monotonic()
    try:
        if stream:
            with client.stream("POST", url, json=body, extensions=extensions) as response:
                for _ in response.iter_bytes():
                    chunks += 1
        else:
            response = client.post(url, json=body, extensions=extensions)
    except Exception as exc:
        return Ended(time.monotonic() - started, error=exc, chunks=chunks)
    return Ended(time.monotonic() - started, response=response, chunks=chunks)


async def send_async(client: httpx.AsyncClient, url: str, *, body: dict[str, Any], stream: bool,
                     extensions: dict[str, Any]) -> Ended:
    """:func:`send_sync` through an async client."""
    chunks = 0
    started = time.monotonic()
    try:
        if stream:
            async with client.stream("POST", url, json=body, extensions=extensions) as response:
                async for _ in response.aiter_bytes():
                    chunks += 1
        else:
            response = await client.post(url, json=body, extensions=extensions)
    except Exception as exc:
        return Ended(time.monotonic() - started, error=exc, chunks=chunks)
    return Ended(time.monotonic() - started, response=response, chunks=chunks)


async def call(
    mode: str,
    transport: ResilientTransport,
    url: str,
    *,
    body: dict[str, Any] = BODY,
    stream: bool = False,
    deadline: float | None = None,
) -> Ended:
    """One call through a fresh client of ``mode`` (sync clients in a worker thread)."""
    extensions = {} if deadline is None else {"deadline": deadline}
    if mode == "sync":

        def run() -> Ended:
            with httpx.Client(transport=transport, timeout=10.0) as client:
                return send_sync(client, url, body=body, stream=stream, extensions=extensions)

        return await anyio.to_thread.run_sync(run)
    async with httpx.AsyncClient(transport=transport, timeout=10.0) as client:
        return await send_async(client, url, body=body, stream=stream, extensions=extensions)


# -- what is checked ---------------------------------------------------------------------------


def metrics_of(registry: ProviderRegistry) -> CollectorRegistry:
    """A Prometheus registry of its own holding ``registry``'s metrics."""
    collector = CollectorRegistry()
    registry.register_metrics(collector)
    return collector


def within(ended: Ended, deadline: float) -> None:
    """The call ended within ``deadline`` + :data:`SLACK`."""
    assert ended.took <= deadline + SLACK, f"took {ended.took:.3f}s with a deadline of {deadline}s"


def cut(ended: Ended, deadline: float, provider: str | set[str]) -> DeadlineExceededError:
    """The call was cut by its deadline, at it: the stack's timeout, with the deadline and provider."""
    within(ended, deadline)
    assert ended.took >= deadline - EARLY, f"cut after {ended.took:.3f}s, before its deadline of {deadline}s"
    error = ended.raised()
    assert isinstance(error, httpx.TimeoutException)  # the request's own stack's
    assert error.deadline == deadline
    assert error.provider in ({provider} if isinstance(provider, str) else provider)
    return error


def held_against_no_one(registry: ProviderRegistry, name: str, *, counted: int = 1,
                        metrics: CollectorRegistry | None = None, **totals: int) -> None:
    """``name`` recorded only ``totals`` (the cut attempt in none), and ``counted`` deadlines exceeded."""
    snap = registry.get(name).snapshot()
    assert {k: v for k, v in snap.requests_total.items() if v} == totals
    assert snap.window.calls == sum(n for k, n in totals.items() if k != "rejected")
    assert snap.window.failures == totals.get("failure", 0)
    assert snap.deadline_exceeded_total == counted
    if metrics is not None:
        sample = metrics.get_sample_value("gatewayz_provider_deadline_exceeded_total", {"provider": name})
        assert sample == counted
    assert registry.get(name).state == "closed"


def provider_registry(source: str, *, retry: RetryPolicy | None = None,
                      deadline: float = DEADLINE) -> tuple[ProviderRegistry, float | None]:
    """A registry with :data:`PROVIDER` on 127.0.0.1; the deadline to pass per request (or ``None``)."""
    policy = Policy(
        retry=retry or RetryPolicy(attempts=1),
        deadline_seconds=deadline if source == "policy" else None,
    )
    registry = ProviderRegistry()
    registry.register(PROVIDER, hosts=["127.0.0.1"], policy=policy)
    return registry, deadline if source == "extension" else None


def resilient(registry: ProviderRegistry, mode: str) -> ResilientTransport:
    """``ResilientTransport`` over the stack's real transport for ``mode``, built before the call.

    Building a transport makes its SSL context (40-400 ms): done here, as a client's constructor
    does, not inside the timed call (see ``test_the_first_call_of_a_default_transport_...``).
    """
    inner = httpx.HTTPTransport() if mode == "sync" else httpx.AsyncHTTPTransport()
    return ResilientTransport(registry, inner)


# -- a provider that hangs ---------------------------------------------------------------------


@pytest.mark.parametrize("source", SOURCES)
@pytest.mark.parametrize("mode", MODES)
async def test_a_hanging_provider_is_cut_at_the_deadline(
    mode: str, source: str, upstream: Upstream, bases: Bases
) -> None:
    """No response ever comes: the call raises DeadlineExceededError at its deadline, not 10 s later."""
    registry, per_request = provider_registry(source, retry=RetryPolicy(attempts=3, backoff_seconds=0.01))
    metrics = metrics_of(registry)
    ended = await call(mode, resilient(registry, mode), f"{bases.http}/hang", deadline=per_request)
    error = cut(ended, DEADLINE, PROVIDER)
    assert str(error).startswith(f"the deadline of {DEADLINE:g}s ({'request' if per_request else 'policy'})")
    assert upstream.received["hang"] == 1  # no retry after the deadline
    held_against_no_one(registry, PROVIDER, metrics=metrics)


async def test_the_earliest_deadline_wins(upstream: Upstream, bases: Bases) -> None:
    """A policy deadline of 5 s and a request deadline of 0.3 s: cut at 0.3 s (and the other way round)."""
    registry, _ = provider_registry("policy", deadline=5.0)
    ended = await call("async", resilient(registry, "async"), f"{bases.http}/hang", deadline=DEADLINE)
    cut(ended, DEADLINE, PROVIDER)
    registry, _ = provider_registry("policy", deadline=DEADLINE)
    ended = await call("sync", resilient(registry, "sync"), f"{bases.http}/hang", deadline=5.0)
    cut(ended, DEADLINE, PROVIDER)


# -- a 5xx, then a retry that hangs ------------------------------------------------------------


class _Paths:
    """The paths successive requests go to (the last one repeats): one fault per attempt."""

    def __init__(self, paths: list[str]) -> None:
        self.paths, self.sent = paths, 0

    def next(self, request: Any) -> None:
        request.url = request.url.copy_with(path=self.paths[min(self.sent, len(self.paths) - 1)])
        self.sent += 1


class SyncSequence(Transport):
    """The stack's real sync transport, each request sent to the next of ``paths``."""

    def __init__(self, paths: list[str]) -> None:
        self.paths, self.inner = _Paths(paths), httpx.HTTPTransport()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.paths.next(request)
        return self.inner.handle_request(request)

    def close(self) -> None:
        self.inner.close()


class AsyncSequence(AsyncTransport):
    """:class:`SyncSequence` for async clients."""

    def __init__(self, paths: list[str]) -> None:
        self.paths, self.inner = _Paths(paths), httpx.AsyncHTTPTransport()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.paths.next(request)
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()


def sequence(mode: str, paths: list[str]) -> SyncSequence | AsyncSequence:
    return SyncSequence(paths) if mode == "sync" else AsyncSequence(paths)


@pytest.mark.parametrize("source", SOURCES)
@pytest.mark.parametrize("mode", MODES)
async def test_a_retry_that_hangs_is_cut_at_the_deadline(
    mode: str, source: str, upstream: Upstream, bases: Bases
) -> None:
    """503, a short backoff, then a retry that hangs: the deadline bounds the whole call, retry included.

    The 503 is the provider's failure; the retry cut by the deadline is no one's.
    """
    retry = RetryPolicy(attempts=3, backoff_seconds=0.02, max_backoff_seconds=0.02, jitter=0.0)
    registry, per_request = provider_registry(source, retry=retry)
    metrics = metrics_of(registry)
    transport = ResilientTransport(registry, sequence(mode, ["/status/503", "/hang"]))
    ended = await call(mode, transport, f"{bases.http}/first", deadline=per_request)
    cut(ended, DEADLINE, PROVIDER)
    assert (upstream.received["status"], upstream.received["hang"]) == (1, 1)
    held_against_no_one(registry, PROVIDER, metrics=metrics, failure=1)
    assert registry.get(PROVIDER).snapshot().retries_total == {"status_503": 1}


@pytest.mark.parametrize("mode", MODES)
async def test_a_backoff_that_would_cross_the_deadline_returns_the_last_response(
    mode: str, upstream: Upstream, bases: Bases
) -> None:
    """A 503 with a backoff of 1 s and a deadline of 0.3 s: the 503 comes back at once, no retry."""
    retry = RetryPolicy(attempts=3, backoff_seconds=1.0, jitter=0.0)
    registry, per_request = provider_registry("extension", retry=retry)
    ended = await call(mode, resilient(registry, mode), f"{bases.http}/status/503", deadline=per_request)
    assert ended.answered().status_code == 503
    assert ended.took < DEADLINE
    assert upstream.received["status"] == 1
    held_against_no_one(registry, PROVIDER, counted=0, failure=1)


# -- Retry-After: 30 with 2 s left -------------------------------------------------------------


@pytest.mark.parametrize("source", SOURCES)
@pytest.mark.parametrize("mode", MODES)
async def test_retry_after_past_the_deadline_returns_the_429_at_once(
    mode: str, source: str, upstream: Upstream, bases: Bases
) -> None:
    """``Retry-After: 30`` is within max_retry_after_seconds (30) but past a 2 s deadline: no wait at all."""
    registry, per_request = provider_registry(source, retry=RetryPolicy(attempts=3), deadline=2.0)
    assert registry.get(PROVIDER).policy.retry.max_retry_after_seconds == 30.0  # without a deadline: waited
    ended = await call(mode, resilient(registry, mode), f"{bases.http}/throttle/30", deadline=per_request)
    response = ended.answered()
    assert response.status_code == 429 and response.headers["retry-after"] == "30"
    assert ended.took < 0.25, f"took {ended.took:.3f}s: it waited"
    assert upstream.received["throttle"] == 1
    held_against_no_one(registry, PROVIDER, counted=0, throttled=1)
    assert registry.get(PROVIDER).snapshot().retries_total == {}


# -- streams that stall mid-body ----------------------------------------------------------------


@pytest.mark.parametrize("source", SOURCES)
@pytest.mark.parametrize("mode", STALL_MODES)
async def test_a_stream_that_stalls_mid_body_is_cut_at_the_deadline(
    mode: str, source: str, upstream: Upstream, bases: Bases
) -> None:
    """200 SSE headers and one event, then silence: the caller's iteration raises at the deadline."""
    registry, per_request = provider_registry(source)
    metrics = metrics_of(registry)
    ended = await call(
        mode, resilient(registry, mode), f"{bases.http}/stall", body=STREAM_BODY, stream=True,
        deadline=per_request,
    )
    cut(ended, DEADLINE, PROVIDER)
    assert ended.chunks >= 1  # the first event reached the caller: cut mid-body
    assert upstream.received["stall"] == 1
    held_against_no_one(registry, PROVIDER, metrics=metrics)


# -- a failing route -----------------------------------------------------------------------------


ROUTE = "chat"


def route_registry(
    bases: Bases, paths: dict[str, str], policy: RoutePolicy
) -> tuple[ProviderRegistry, str]:
    """Providers named after ``paths`` (each a target at that upstream path), one route over them.

    The providers' own policies never retry: the route moves on instead.
    """
    registry = ProviderRegistry(Policy(retry=RetryPolicy(attempts=1)))
    targets = []
    for name, path in paths.items():
        registry.register(name)
        targets.append(Target(name, base_url=f"{bases.http}{path}", model=f"{name}-model"))
    route = registry.route(ROUTE, targets, policy=policy)
    return registry, route.base_url


@pytest.mark.parametrize("source", ["route", "extension"])
@pytest.mark.parametrize("mode", MODES)
async def test_a_route_that_fails_over_to_a_hanging_target_is_cut_at_the_deadline(
    mode: str, source: str, upstream: Upstream, bases: Bases
) -> None:
    """503 from the first target, failover to one that hangs: the route call ends at its deadline.

    The 503 is its provider's failure; the hanging attempt is held against no one.
    """
    policy = RoutePolicy(order="priority", deadline_seconds=DEADLINE if source == "route" else None)
    registry, base = route_registry(bases, {"broken": "/status/503", "hanging": "/hang"}, policy)
    metrics = metrics_of(registry)
    ended = await call(
        mode, resilient(registry, mode), f"{base}/chat/completions",
        deadline=DEADLINE if source == "extension" else None,
    )
    cut(ended, DEADLINE, {"hanging", ROUTE})
    assert (upstream.received["status"], upstream.received["hang"]) == (1, 1)
    held_against_no_one(registry, "broken", counted=0, metrics=metrics, failure=1)
    held_against_no_one(registry, "hanging", metrics=metrics)
    snap = registry.get_route(ROUTE).snapshot()
    assert snap.failovers == 1


@pytest.mark.parametrize("mode", MODES)
async def test_a_route_whose_first_target_hangs_never_reaches_the_next_past_the_deadline(
    mode: str, upstream: Upstream, bases: Bases
) -> None:
    """The hanging target first: the deadline passes during its attempt, no failover starts after."""
    policy = RoutePolicy(order="priority", deadline_seconds=DEADLINE)
    registry, base = route_registry(bases, {"hanging": "/hang", "broken": "/status/503"}, policy)
    ended = await call(mode, resilient(registry, mode), f"{base}/chat/completions")
    cut(ended, DEADLINE, {"hanging", ROUTE})
    assert upstream.received["hang"] == 1 and upstream.received["status"] == 0
    held_against_no_one(registry, "hanging")
    held_against_no_one(registry, "broken", counted=0)


async def test_a_hedged_route_whose_targets_all_hang_is_cut_at_the_deadline(
    upstream: Upstream, bases: Bases
) -> None:
    """Async hedging: the first target hangs, the hedge after 0.1 s hangs too; both are cut at 0.3 s.

    Neither attempt is held against its provider; the deadline is counted.
    """
    policy = RoutePolicy(order="priority", deadline_seconds=DEADLINE, hedge_after_seconds=0.1)
    registry, base = route_registry(bases, {"hanging": "/hang", "stuck": "/hang/x"}, policy)
    ended = await call("async", resilient(registry, "async"), f"{base}/chat/completions")
    raised = ended.error
    if isinstance(raised, BaseExceptionGroup) and len(raised.exceptions) == 1:  # the bug: unwrapped here,
        ended.error = raised.exceptions[0]  # so that everything else is checked before it fails the test
    cut(ended, DEADLINE, {"hanging", "stuck", ROUTE})
    assert upstream.received["hang"] == 2  # the first and the hedge
    assert registry.get_route(ROUTE).snapshot().hedges == 1
    for name in ("hanging", "stuck"):
        snap = registry.get(name).snapshot()
        assert {k: v for k, v in snap.requests_total.items() if v} == {}, name
        assert snap.window.calls == 0
    exceeded = sum(registry.get(name).snapshot().deadline_exceeded_total for name in ("hanging", "stuck"))
    assert exceeded >= 1  # the call cut by its deadline is counted under a provider it was cut on
    assert raised is ended.error, f"raised {raised!r}, not the DeadlineExceededError itself"


@pytest.mark.parametrize("mode", STALL_MODES)
async def test_a_committed_route_stream_that_stalls_is_cut_at_the_deadline(
    mode: str, upstream: Upstream, bases: Bases
) -> None:
    """A route stream commits on its first content event, then stalls: cut in the caller's iteration."""
    policy = RoutePolicy(order="priority", deadline_seconds=DEADLINE)
    registry, base = route_registry(bases, {"stalling": "/stall"}, policy)
    ended = await call(
        mode, resilient(registry, mode), f"{base}/chat/completions", body=STREAM_BODY, stream=True
    )
    cut(ended, DEADLINE, {"stalling", ROUTE})
    assert ended.chunks >= 1
    held_against_no_one(registry, "stalling")


# -- the inbound request's deadline (ResilienceMiddleware) --------------------------------------


HEADER = "x-request-timeout"


def gateway(
    registry: ProviderRegistry, url: str, mode: str, *, wrap: bool,
    transport: ResilientTransport | None = None,
) -> Starlette:
    """An app relaying ``POST /v1/chat`` to ``url`` through ``ResilientTransport`` (no deadline of its own).

    With ``wrap``, the upstream error is raised wrapped, as an SDK wraps the timeout in its own error.
    """
    if transport is None:
        transport = resilient(registry, mode)

    def wrapped(exc: Exception) -> Exception:
        if not wrap:
            return exc
        error = RuntimeError("the SDK's timeout error")
        error.__cause__ = exc
        return error

    async def relay_async(request: Request) -> JSONResponse:
        async with httpx.AsyncClient(transport=transport, timeout=10.0) as client:
            try:
                upstream = await client.post(url, json=await request.json())
            except DeadlineExceededError as exc:
                raise wrapped(exc) from exc
        return JSONResponse(upstream.json(), status_code=upstream.status_code)

    def relay_sync(request: Request) -> JSONResponse:  # Starlette runs it in a worker thread
        with httpx.Client(transport=transport, timeout=10.0) as client:
            try:
                upstream = client.post(url, json=BODY)
            except DeadlineExceededError as exc:
                raise wrapped(exc) from exc
        return JSONResponse(upstream.json(), status_code=upstream.status_code)

    relay: Callable[[Request], Any] = relay_sync if mode == "sync" else relay_async
    app = Starlette(routes=[StarletteRoute("/v1/chat", relay, methods=["POST"])])
    app.add_middleware(ResilienceMiddleware, registry=registry, deadline_header=HEADER)
    return app


async def inbound(app: Starlette, seconds: float) -> tuple[httpx.Response, float]:
    """One inbound request to ``app`` with ``seconds`` in the deadline header; its response and duration."""
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gateway") as client:
        started = time.monotonic()
        response = await client.post("/v1/chat", json=BODY, headers={HEADER: f"{seconds:g}"})
        return response, time.monotonic() - started


@pytest.mark.parametrize("wrap", [False, True], ids=["raised", "wrapped"])
@pytest.mark.parametrize("mode", MODES)
async def test_the_inbound_deadline_bounds_the_provider_call_and_answers_504(
    mode: str, wrap: bool, upstream: Upstream, bases: Bases
) -> None:
    """``x-request-timeout: 0.3`` on the inbound request cuts the provider call made while handling it.

    The provider's own policy deadline (5 s) is later: the inbound one wins. The middleware answers
    504 with the deadline error's shape, also when the handler raised it wrapped.
    """
    registry, _ = provider_registry("policy", deadline=5.0)
    metrics = metrics_of(registry)
    response, took = await inbound(gateway(registry, f"{bases.http}/hang", mode, wrap=wrap), DEADLINE)
    assert took <= DEADLINE + SLACK, f"took {took:.3f}s with a deadline of {DEADLINE}s"
    assert response.status_code == 504
    assert response.headers["content-type"].startswith("application/json")
    assert json.loads(response.content) == {
        "error": {"type": "deadline_exceeded", "provider": PROVIDER, "deadline": DEADLINE}
    }
    assert upstream.received["hang"] == 1
    held_against_no_one(registry, PROVIDER, metrics=metrics)


@pytest.mark.parametrize("mode", MODES)
async def test_the_inbound_deadline_spans_a_retry_too(mode: str, upstream: Upstream, bases: Bases) -> None:
    """Inbound deadline: a 503, a retry that hangs, 504 at the inbound request's deadline."""
    retry = RetryPolicy(attempts=3, backoff_seconds=0.02, max_backoff_seconds=0.02, jitter=0.0)
    registry, _ = provider_registry("header", retry=retry)
    transport = ResilientTransport(registry, sequence(mode, ["/status/503", "/hang"]))
    app = gateway(registry, f"{bases.http}/first", mode, wrap=False, transport=transport)
    response, took = await inbound(app, DEADLINE)
    assert took <= DEADLINE + SLACK, f"took {took:.3f}s with a deadline of {DEADLINE}s"
    assert response.status_code == 504
    assert (upstream.received["status"], upstream.received["hang"]) == (1, 1)
    held_against_no_one(registry, PROVIDER, failure=1)
