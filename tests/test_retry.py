"""Retries: Retry-After, backoff, the retry budget, and the retry loop of the transport."""

from __future__ import annotations

import email.utils
import math
import ssl
from collections.abc import AsyncIterator, Iterator
from typing import Any

import anyio
import anyio.lowlevel
import httpx
import pytest
import tenacity
from both_stacks import AsyncStream, AsyncTransport, SyncStream, Transport

from resilience import (
    BreakerPolicy,
    CircuitOpenError,
    Policy,
    ProviderRegistry,
    ResilientTransport,
    RetryPolicy,
)
from resilience._core.context import begin_request, end_request
from resilience._core.retry import RetryBudget, backoff, parse_retry_after
from resilience.testing import FakeClock

pytestmark = [pytest.mark.anyio, pytest.mark.usefixtures("stack")]  # httpx2 and httpx

URL = "https://openrouter.ai/api/v1/chat/completions"
MODES = [pytest.param("sync", id="sync"), pytest.param("async", id="async")]
NOW = 1_700_000_000.0


class Body(SyncStream, AsyncStream):
    """A response body that remembers being closed (sync and async)."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.closed = False

    def __iter__(self) -> Iterator[bytes]:
        yield self.data

    async def __aiter__(self) -> AsyncIterator[bytes]:
        yield self.data

    def close(self) -> None:
        self.closed = True

    async def aclose(self) -> None:
        self.closed = True


class Upstream:
    """A scripted upstream: each request gets the next step (a status, (status, headers) or exception)."""

    def __init__(self, *steps: Any) -> None:
        self.steps = steps
        self.requests: list[httpx.Request] = []
        self.bodies: list[Body] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        step = self.steps[min(len(self.requests), len(self.steps) - 1)]
        self.requests.append(request)
        if isinstance(step, BaseException):
            raise step
        status, headers = step if isinstance(step, tuple) else (step, {})
        body = Body(f"attempt {len(self.requests)}".encode())
        self.bodies.append(body)
        return httpx.Response(status, headers=headers, stream=body)


def setup(
    upstream: Upstream, retry: RetryPolicy | None = None, breaker: BreakerPolicy | None = None
) -> tuple[ResilientTransport, ProviderRegistry, FakeClock]:
    """A transport over ``upstream`` with fake time; backoff 1 s doubling, no jitter by default."""
    clock = FakeClock(1000.0)
    registry = ProviderRegistry(clock=clock)
    retry = retry or RetryPolicy(attempts=3, backoff_seconds=1.0, jitter=0.0)
    registry.register("openrouter", hosts=["openrouter.ai"], policy=Policy(retry=retry, breaker=breaker))
    transport = ResilientTransport(
        registry, httpx.MockTransport(upstream), sleep=clock.sleep, async_sleep=clock.async_sleep
    )
    return transport, registry, clock


async def send(
    mode: str, transport: ResilientTransport, method: str = "POST", **kwargs: Any
) -> httpx.Response:
    """One request through ``transport`` with a sync or an async client."""
    kwargs.setdefault("json", {"model": "m"})
    if mode == "sync":
        return httpx.Client(transport=transport).request(method, URL, **kwargs)
    return await httpx.AsyncClient(transport=transport).request(method, URL, **kwargs)


# -- Retry-After, backoff, budget ----------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        pytest.param("120", 120.0, id="seconds"),
        pytest.param(" 3 ", 3.0, id="spaces"),
        pytest.param("1.5", 1.5, id="fraction"),
        pytest.param("0", 0.0, id="zero"),
        pytest.param(email.utils.formatdate(NOW + 42, usegmt=True), 42.0, id="http-date"),
        pytest.param(email.utils.formatdate(NOW - 600, usegmt=True), 0.0, id="past-date-is-now"),
        pytest.param("Wed, 21 Oct 2015 07:28:00 -0000", 0.0, id="date-without-zone"),
        pytest.param("-1", None, id="negative"),
        pytest.param("9" * 400, math.inf, id="too-large-for-a-float-is-beyond-any-cap"),
        pytest.param("soon", None, id="garbage"),
        pytest.param("", None, id="empty"),
        pytest.param("Wed, 99 Foo 2015", None, id="bad-date"),
        pytest.param(None, None, id="absent"),
    ],
)
def test_parse_retry_after(value: str | None, expected: float | None) -> None:
    """Delta-seconds and HTTP dates; a past date means now; garbage is None, never an error."""
    parsed = parse_retry_after(value, now=lambda: NOW)
    assert parsed == (None if expected is None else pytest.approx(expected))


def test_backoff_grows_and_is_capped() -> None:
    """Without jitter: backoff × multiplier^(n-1), capped."""
    policy = RetryPolicy(backoff_seconds=0.5, backoff_multiplier=2.0, max_backoff_seconds=4.0, jitter=0.0)
    assert [backoff(policy, n) for n in range(1, 7)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    assert backoff(policy, 5000) == 4.0  # no overflow however many retries


@pytest.mark.parametrize(
    ("rand", "expected"),
    [pytest.param(0.0, 0.5, id="low"), pytest.param(1.0, 1.0, id="high"), pytest.param(0.5, 0.75, id="mid")],
)
def test_backoff_jitter_randomises_its_share(rand: float, expected: float) -> None:
    """jitter=0.5 randomises half of the delay: it lies in [delay/2, delay]."""
    policy = RetryPolicy(backoff_seconds=1.0, jitter=0.5)
    assert backoff(policy, 1, rand=lambda: rand) == pytest.approx(expected)


def test_budget_floor_then_ratio() -> None:
    """Retries allowed = max(floor, ratio × first attempts in the window)."""
    budget = RetryBudget(RetryPolicy(budget_min_retries=2, budget_ratio=0.5, budget_window_seconds=10.0))
    assert [budget.try_spend(0.0, 0) for _ in range(3)] == [True, True, False]
    # 12 attempts since: 10 calls and the 2 retries granted; each retry asked after one more attempt
    assert [budget.try_spend(1.0, 12 + i) for i in range(4)] == [True, True, True, False]  # 5 in all


def test_budget_window_slides() -> None:
    """Retries spent leave the budget once the window has passed them."""
    budget = RetryBudget(RetryPolicy(budget_min_retries=1, budget_ratio=0.0, budget_window_seconds=10.0))
    assert budget.try_spend(100.0, 0)
    assert not budget.try_spend(105.0, 0)
    assert budget.try_spend(111.0, 0)


def test_budget_counts_only_calls_inside_the_window() -> None:
    """Calls older than the window no longer raise the allowance."""
    budget = RetryBudget(RetryPolicy(budget_min_retries=0, budget_ratio=0.5, budget_window_seconds=10.0))
    assert not budget.try_spend(0.0, 0)  # first sample: nothing counted yet
    assert budget.try_spend(5.0, 10)  # 10 calls since the sample: 5 allowed
    assert not budget.try_spend(20.0, 11)  # the sample at 0 left the window; the one at 5 too


# -- the retry loop ------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
async def test_retryable_status_then_success(mode: str) -> None:
    """A 503 is retried after the backoff; the discarded response is closed; both attempts recorded."""
    upstream = Upstream(503, 200)
    transport, registry, clock = setup(upstream)
    response = await send(mode, transport)
    assert (response.status_code, response.text) == (200, "attempt 2")
    assert clock.sleeps == [1.0]
    assert upstream.bodies[0].closed
    snap = registry.get("openrouter").snapshot()
    assert snap.requests_total["failure"] == snap.requests_total["success"] == 1
    assert snap.retries_total == {"status_503": 1}


@pytest.mark.parametrize("mode", MODES)
async def test_exhausted_retries_return_the_last_response(mode: str) -> None:
    """When attempts run out the last response comes back, readable and unchanged."""
    upstream = Upstream((503, {"x-attempt": "yes"}))
    transport, registry, clock = setup(upstream)
    response = await send(mode, transport)
    assert (response.status_code, response.text, response.headers["x-attempt"]) == (503, "attempt 3", "yes")
    assert clock.sleeps == [1.0, 2.0]
    assert [b.closed for b in upstream.bodies] == [True, True, True]  # the last closed by the client
    assert registry.get("openrouter").snapshot().requests_total["failure"] == 3


@pytest.mark.parametrize("mode", MODES)
async def test_exhausted_retries_raise_the_last_error_unchanged(mode: str) -> None:
    """Transport errors are retried; the very last exception object reaches the caller."""
    errors = [httpx.ConnectError(f"refused {i}") for i in range(3)]
    upstream = Upstream(*errors)
    transport, registry, clock = setup(upstream)
    with pytest.raises(httpx.ConnectError) as caught:
        await send(mode, transport)
    assert caught.value is errors[2]
    assert clock.sleeps == [1.0, 2.0]
    assert registry.get("openrouter").snapshot().retries_total == {"transport_error": 2}


@pytest.mark.parametrize(
    ("header", "wait"),
    [
        pytest.param("7", 7.0, id="seconds"),
        pytest.param(email.utils.formatdate(NOW + 20, usegmt=True), 20.0, id="http-date"),
    ],
)
@pytest.mark.parametrize("mode", MODES)
async def test_retry_after_sets_the_wait(
    mode: str, header: str, wait: float, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Retry-After within the cap is waited instead of the backoff."""
    monkeypatch.setattr("resilience._core.clock.wall_time", lambda: NOW)
    transport, registry, clock = setup(Upstream((429, {"retry-after": header}), 200))
    assert (await send(mode, transport)).status_code == 200
    assert clock.sleeps == [pytest.approx(wait)]
    assert registry.get("openrouter").snapshot().requests_total["throttled"] == 1


@pytest.mark.parametrize("mode", MODES)
async def test_retry_after_past_the_cap_returns_at_once(mode: str) -> None:
    """A Retry-After longer than max_retry_after_seconds is not waited: the 429 goes back now."""
    upstream = Upstream((429, {"retry-after": "120"}), 200)
    transport, _, clock = setup(upstream, RetryPolicy(attempts=3, max_retry_after_seconds=30.0))
    response = await send(mode, transport)
    assert response.status_code == 429
    assert clock.sleeps == []
    assert len(upstream.requests) == 1


@pytest.mark.parametrize("mode", MODES)
async def test_retry_methods_narrow_retries(mode: str) -> None:
    """With retry_methods={"GET"}, a POST is not retried but a GET is."""
    policy = RetryPolicy(attempts=2, retry_methods=frozenset({"get"}), jitter=0.0)
    upstream = Upstream(503, 200)
    transport, _, _ = setup(upstream, policy)
    assert (await send(mode, transport, "POST")).status_code == 503
    upstream.requests.clear()
    assert (await send(mode, transport, "GET", json=None)).status_code == 200
    assert len(upstream.requests) == 2


@pytest.mark.parametrize("mode", MODES)
async def test_transport_errors_not_retried_when_off(mode: str) -> None:
    """retry_transport_errors=False: the first error is raised, still recorded as a failure."""
    upstream = Upstream(httpx.ReadTimeout("slow"))
    transport, registry, _ = setup(upstream, RetryPolicy(attempts=3, retry_transport_errors=False))
    with pytest.raises(httpx.ReadTimeout):
        await send(mode, transport)
    assert len(upstream.requests) == 1
    assert registry.get("openrouter").snapshot().requests_total["failure"] == 1


class Streamer(Transport, AsyncTransport):
    """Sends the request body as a network transport does: by iterating it, never keeping it."""

    def __init__(self, upstream: Upstream) -> None:
        self.upstream = upstream

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        for _ in request.stream:  # type: ignore[union-attr]  # sync side
            pass
        return self.upstream(request)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        async for _ in request.stream:  # type: ignore[union-attr]  # async side
            pass
        return self.upstream(request)


@pytest.mark.parametrize("mode", MODES)
async def test_streaming_request_body_is_never_retried(mode: str) -> None:
    """A request whose body was a one-shot stream cannot be replayed: the 503 goes back."""
    upstream = Upstream(503, 200)
    clock = FakeClock()
    registry = ProviderRegistry(clock=clock)
    transport = ResilientTransport(
        registry, Streamer(upstream), sleep=clock.sleep, async_sleep=clock.async_sleep
    )

    async def agen() -> AsyncIterator[bytes]:
        yield b'{"model": "m"}'

    content: Any = iter([b'{"model": "m"}']) if mode == "sync" else agen()
    response = await send(mode, transport, json=None, content=content)
    assert response.status_code == 503
    assert len(upstream.requests) == 1
    assert registry.get("openrouter.ai").snapshot().models == ()  # the streamed body was not read for a model


async def test_budget_stops_a_retry_storm() -> None:
    """Past the budget, failures go back without retries: 5 calls × 3 attempts become 5 + 2."""
    upstream = Upstream(503)
    policy = RetryPolicy(attempts=3, jitter=0.0, budget_min_retries=2, budget_ratio=0.0)
    transport, registry, _ = setup(upstream, policy)
    for _ in range(5):
        assert (await send("async", transport)).status_code == 503
    assert len(upstream.requests) == 7
    assert registry.get("openrouter").snapshot().retries_total == {"status_503": 2}


async def test_budget_is_shared_by_the_transports_of_a_registry() -> None:
    """A sync and an async client of one registry draw on one budget per provider."""
    upstream = Upstream(503)
    transport, registry, clock = setup(
        upstream, RetryPolicy(attempts=2, jitter=0.0, budget_min_retries=1, budget_ratio=0.0)
    )
    other = ResilientTransport(registry, httpx.MockTransport(upstream), sleep=clock.sleep)
    await send("async", transport)
    await send("sync", other)
    assert len(upstream.requests) == 3


@pytest.mark.parametrize("mode", MODES)
async def test_breaker_tripping_mid_loop_returns_the_last_response(mode: str) -> None:
    """The retry that trips the breaker ends the loop with the real 503, never CircuitOpenError."""
    upstream = Upstream(503)
    transport, registry, clock = setup(
        upstream,
        RetryPolicy(attempts=5, backoff_seconds=1.0, jitter=0.0),
        BreakerPolicy(consecutive_failures=2),
    )
    response = await send(mode, transport)
    assert (response.status_code, response.text) == (503, "attempt 2")
    assert len(upstream.requests) == 2
    assert clock.sleeps == [1.0]
    assert registry.get("openrouter").state == "open"


@pytest.mark.parametrize("mode", MODES)
async def test_breaker_opened_during_backoff_returns_the_held_response(mode: str) -> None:
    """If the breaker opens while waiting, the next attempt is rejected and the last response returned."""
    upstream = Upstream(503, 200)
    transport, registry, _ = setup(upstream)
    provider = registry.get("openrouter")

    def sleep(seconds: float) -> None:
        provider.force_open()

    async def async_sleep(seconds: float) -> None:
        provider.force_open()

    transport._sleep, transport._async_sleep = sleep, async_sleep
    response = await send(mode, transport)
    assert (response.status_code, response.text) == (503, "attempt 1")
    assert provider.snapshot().requests_total["rejected"] == 1


@pytest.mark.parametrize("mode", MODES)
async def test_open_breaker_rejects_the_first_attempt(mode: str) -> None:
    """An open breaker raises CircuitOpenError before any I/O."""
    upstream = Upstream(200)
    transport, registry, _ = setup(upstream)
    registry.get("openrouter").force_open()
    with pytest.raises(CircuitOpenError) as caught:
        await send(mode, transport)
    assert caught.value.provider == "openrouter"
    assert upstream.requests == []


@pytest.mark.parametrize("mode", MODES)
async def test_happy_path_builds_no_tenacity_object(mode: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A first attempt that succeeds never constructs a tenacity loop."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("tenacity used on the happy path")

    monkeypatch.setattr(tenacity.Retrying, "__init__", refuse)
    monkeypatch.setattr(tenacity.AsyncRetrying, "__init__", refuse)
    transport, _, _ = setup(Upstream(200))
    assert (await send(mode, transport)).status_code == 200
    transport, _, _ = setup(Upstream(503))
    with pytest.raises(AssertionError, match="tenacity"):
        await send(mode, transport)


def test_interrupted_backoff_closes_the_held_response() -> None:
    """An exception while waiting (sync) closes the response being held for a possible return."""

    class Stop(BaseException):
        pass

    upstream = Upstream(503, 200)
    transport, registry, _ = setup(upstream)

    def sleep(seconds: float) -> None:
        raise Stop

    transport._sleep = sleep
    with pytest.raises(Stop):
        httpx.Client(transport=transport).post(URL, json={})
    assert upstream.bodies[0].closed
    assert registry.get("openrouter").snapshot().requests_total["failure"] == 1


async def test_cancelled_backoff_closes_the_held_response() -> None:
    """A cancellation while waiting (async) closes the held response, shielded."""
    upstream = Upstream(503, 200)
    transport, _, _ = setup(upstream)
    with anyio.CancelScope() as scope:

        async def async_sleep(seconds: float) -> None:
            scope.cancel()
            await anyio.lowlevel.checkpoint()

        transport._async_sleep = async_sleep
        await send("async", transport)
    assert scope.cancelled_caught
    assert upstream.bodies[0].closed
    assert len(upstream.requests) == 1


async def test_request_totals_count_attempts_and_retries() -> None:
    """Inside an inbound request, every attempt and retry is added to its totals."""
    transport, _, _ = setup(Upstream(503, 200))
    stats, token = begin_request()
    try:
        await send("async", transport)
    finally:
        end_request(token)
    assert (stats.attempts, stats.retries, stats.providers) == (2, 1, {"openrouter"})


@pytest.mark.parametrize("mode", MODES)
async def test_single_attempt_policy_never_retries(mode: str) -> None:
    """RetryPolicy(attempts=1): a 503 is returned at once and recorded once."""
    upstream = Upstream(503, 200)
    transport, registry, clock = setup(upstream, RetryPolicy(attempts=1))
    assert (await send(mode, transport)).status_code == 503
    assert (len(upstream.requests), clock.sleeps) == (1, [])
    assert registry.get("openrouter").snapshot().retries_total == {}


@pytest.mark.parametrize("mode", MODES)
async def test_retry_after_too_large_for_a_float_returns_at_once(mode: str) -> None:
    """A Retry-After of 400 digits is beyond the cap like any huge one: returned at once, not retried."""
    upstream = Upstream((429, {"retry-after": "9" * 400}), 200)
    transport, _, clock = setup(upstream, RetryPolicy(attempts=3, max_retry_after_seconds=30.0))
    response = await send(mode, transport)
    assert response.status_code == 429
    assert clock.sleeps == []
    assert len(upstream.requests) == 1


@pytest.mark.parametrize("anyio_backend", ["trio"])
async def test_async_retries_wait_under_trio_by_default() -> None:
    """Under trio the default async sleep works: a 503 then 200 is retried (no asyncio loop needed)."""
    upstream = Upstream(503, 200)
    registry = ProviderRegistry()
    registry.register("openrouter", hosts=["openrouter.ai"],
                      policy=Policy(retry=RetryPolicy(attempts=2, backoff_seconds=0.001, jitter=0.0)))
    transport = ResilientTransport(registry, httpx.MockTransport(upstream))
    async with httpx.AsyncClient(transport=transport) as client:
        response = await client.post(URL, json={"model": "m"})
    assert response.status_code == 200
    assert len(upstream.requests) == 2


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(
    "error", [pytest.param(ssl.SSLError("record layer failure"), id="ssl"),
              pytest.param(anyio.EndOfStream(), id="end-of-stream")],
)
async def test_tls_failures_a_stack_leaves_unmapped_are_retried_as_transport_errors(
    mode: str, error: Exception
) -> None:
    """ssl.SSLError and EndOfStream, which httpx2 may let escape from a TLS failure, are retried."""
    upstream = Upstream(error, 200)
    transport, registry, _ = setup(upstream)
    assert (await send(mode, transport)).status_code == 200
    assert registry.get("openrouter").snapshot().retries_total == {"transport_error": 1}
