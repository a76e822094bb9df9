"""Recording response streams: chunks pass through, one record at the end, streaming timeouts."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import inspect
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import anyio
import httpx
import pytest
from both_stacks import AsyncStream, SyncStream
from virtual_time import VIRTUAL_TIME

from resilience import (
    BreakerPolicy,
    CircuitOpenError,
    Policy,
    ProviderRegistry,
    ResilientTransport,
    RetryPolicy,
    StreamTimeoutError,
)
from resilience.testing import FakeClock

pytestmark = [pytest.mark.anyio, pytest.mark.usefixtures("stack")]  # httpx2 and httpx

URL = "https://api.example.com/v1/stream"


class Upstream(SyncStream, AsyncStream):
    """A streamed body whose chunks are produced on demand; ``before`` runs before each chunk."""

    def __init__(self, chunks: list[bytes], before: Callable[[int], Any] | None = None) -> None:
        self.chunks = chunks
        self.before = before
        self.produced: list[bytes] = []
        self.closed = False

    def _next(self, i: int) -> None:
        if self.before is not None:
            self.before(i)

    def __iter__(self) -> Iterator[bytes]:
        for i, chunk in enumerate(self.chunks):
            self._next(i)
            self.produced.append(chunk)
            yield chunk

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for i, chunk in enumerate(self.chunks):
            result = self.before(i) if self.before is not None else None
            if inspect.isawaitable(result):
                await result
            self.produced.append(chunk)
            yield chunk

    def close(self) -> None:
        self.closed = True

    async def aclose(self) -> None:
        self.closed = True


def setup(
    body: Upstream, status: int = 200, policy: Policy | None = None
) -> tuple[Any, ProviderRegistry, FakeClock]:
    """A transport whose upstream answers ``status`` with ``body``; provider ``example``, fake time."""
    clock = FakeClock(1000.0)
    registry = ProviderRegistry(clock=clock)
    registry.register("example", hosts=["api.example.com"], policy=policy)

    def handler(request: httpx.Request) -> httpx.Response:
        clock.advance(0.25)  # time to headers
        return httpx.Response(status, stream=body, headers={"content-type": "text/event-stream"})

    return ResilientTransport(registry, httpx.MockTransport(handler)), registry, clock


def totals(registry: ProviderRegistry) -> dict[str, int]:
    """The provider's lifetime requests by outcome, without zeros."""
    return {k: v for k, v in registry.get("example").snapshot().requests_total.items() if v}


def test_chunks_pass_through_as_they_come() -> None:
    """The caller gets chunk 1 before chunk 2 exists; nothing is recorded until the end."""
    body = Upstream([b"data: 1\n\n", b"data: 2\n\n"])
    transport, registry, _ = setup(body)
    with httpx.Client(transport=transport).stream("GET", URL) as response:
        chunks = response.iter_raw()
        assert next(chunks) == b"data: 1\n\n"
        assert body.produced == [b"data: 1\n\n"]
        assert totals(registry) == {}
        assert list(chunks) == [b"data: 2\n\n"]
        assert totals(registry) == {"success": 1}
    assert totals(registry) == {"success": 1}  # closing after the end does not record again


def test_duration_and_time_to_headers_recorded_at_the_end() -> None:
    """Duration runs to the end of the body; time to headers is kept apart."""
    transport, registry, clock = setup(Upstream([b"a", b"b"], before=lambda i: clock.advance(2.0)))
    with httpx.Client(transport=transport).stream("GET", URL) as response:
        response.read()
    provider = registry.get("example")
    snap = provider.snapshot()
    assert snap.duration_sum == pytest.approx(4.25)
    headers = snap.time_to_headers
    assert headers is not None
    assert headers.successes == 1
    assert headers.p50 == pytest.approx(0.25, rel=0.2)


@pytest.mark.parametrize(("status", "outcome"), [(200, "success"), (503, "failure"), (404, "client_error")])
def test_early_close_records_the_outcome_by_status(status: int, outcome: str) -> None:
    """Closing before the end is the caller's choice: recorded once, by status, inner stream closed."""
    body = Upstream([b"a", b"b", b"c"])
    transport, registry, _ = setup(body, status, Policy(retry=RetryPolicy(attempts=1)))
    client = httpx.Client(transport=transport)
    with client.stream("GET", URL, extensions={"provider": "example"}) as response:
        next(response.iter_raw())
    assert totals(registry) == {outcome: 1}
    assert body.closed


def test_mid_stream_error_is_a_failure() -> None:
    """An error while reading the body is a failure, and it reaches the caller."""

    def explode(i: int) -> None:
        if i == 1:
            raise httpx.ReadError("connection reset")

    transport, registry, _ = setup(Upstream([b"a", b"b"], before=explode))
    with (
        httpx.Client(transport=transport).stream("GET", URL) as response,
        pytest.raises(httpx.ReadError),
    ):
        response.read()
    assert totals(registry) == {"failure": 1}


def test_non_streamed_call_reads_through_the_wrapper() -> None:
    """client.get() reads a streamed upstream body through the same wrapper: recorded once."""
    transport, registry, _ = setup(Upstream([b"x", b"y"]))
    assert httpx.Client(transport=transport).get(URL).content == b"xy"
    assert totals(registry) == {"success": 1}


@pytest.mark.parametrize(
    ("policy", "delays", "message"),
    [
        pytest.param(Policy(first_byte_timeout=1.0), [1.5, 0.0], "first body chunk", id="first-byte"),
        pytest.param(Policy(idle_timeout=1.0), [5.0, 1.5], "no body chunk for", id="idle"),
    ],
)
def test_sync_streaming_timeouts(policy: Policy, delays: list[float], message: str) -> None:
    """Sync: a chunk later than the limit (on the registry clock) is a failure and a StreamTimeoutError."""
    clock_box: list[FakeClock] = []
    body = Upstream([b"a", b"b"], before=lambda i: clock_box[0].advance(delays[i]))
    transport, registry, clock = setup(body, policy=policy)
    clock_box.append(clock)
    with (
        httpx.Client(transport=transport).stream("GET", URL) as response,
        pytest.raises(StreamTimeoutError, match=message) as caught,
    ):
        response.read()
    assert isinstance(caught.value, httpx.TimeoutException)
    assert totals(registry) == {"failure": 1}


def test_sync_timeouts_within_limits_pass() -> None:
    """Chunks that arrive in time are not affected by the timeouts."""
    clock_box: list[FakeClock] = []
    events = [b"data: a\n\n", b"data: b\n\n", b"data: c\n\n"]
    body = Upstream(events, before=lambda i: clock_box[0].advance(0.9))
    transport, registry, clock = setup(body, policy=Policy(first_byte_timeout=1.0, idle_timeout=1.0))
    clock_box.append(clock)
    assert httpx.Client(transport=transport).get(URL).content == b"".join(events)
    assert totals(registry) == {"success": 1}


async def test_async_chunks_and_one_record() -> None:
    """Async: chunks pass through; one record when exhausted."""
    body = Upstream([b"1", b"2"])
    transport, registry, _ = setup(body)
    async with httpx.AsyncClient(transport=transport) as client, client.stream("GET", URL) as response:
        chunks = response.aiter_raw()
        assert await chunks.__anext__() == b"1"
        assert body.produced == [b"1"]
        assert [c async for c in chunks] == [b"2"]
    assert totals(registry) == {"success": 1}


@VIRTUAL_TIME
async def test_async_first_byte_timeout_fires_on_a_silent_upstream() -> None:
    """Async: a first chunk that never comes is cut off by the event loop's timer (virtual time)."""
    body = Upstream([b"never"], before=lambda i: anyio.sleep_forever())
    transport, registry, _ = setup(body, policy=Policy(first_byte_timeout=5.0))
    async with httpx.AsyncClient(transport=transport) as client:
        started = anyio.current_time()
        with anyio.fail_after(60), pytest.raises(StreamTimeoutError, match="first body chunk"):
            await client.get(URL)  # without the timeout, fail_after ends it (at virtual second 60)
        assert anyio.current_time() - started == pytest.approx(5.0)
    assert totals(registry) == {"failure": 1}


async def test_async_idle_timeout_on_the_registry_clock() -> None:
    """Async: a gap measured on the registry clock breaches idle_timeout too."""
    clock_box: list[FakeClock] = []
    body = Upstream([b"a", b"b"], before=lambda i: clock_box[0].advance(3.0 * i))
    transport, registry, clock = setup(body, policy=Policy(idle_timeout=2.0))
    clock_box.append(clock)
    async with httpx.AsyncClient(transport=transport) as client:
        with pytest.raises(StreamTimeoutError, match="no body chunk for"):
            await client.get(URL)
    assert totals(registry) == {"failure": 1}


async def test_async_early_close_records_once() -> None:
    """Async: leaving the stream early records by status and closes the upstream."""
    body = Upstream([b"a", b"b"])
    transport, registry, _ = setup(body)
    async with httpx.AsyncClient(transport=transport) as client, client.stream("GET", URL) as response:
        async for _ in response.aiter_raw():
            break
    assert totals(registry) == {"success": 1}
    assert body.closed


@VIRTUAL_TIME
async def test_cancelled_stream_frees_the_half_open_slot() -> None:
    """A stream cancelled mid-read gives its trial permit back: the next call is admitted."""
    body = Upstream([b"a", b"b"], before=lambda i: anyio.sleep_forever() if i == 1 else None)
    transport, registry, clock = setup(body, policy=Policy(breaker=BreakerPolicy(open_seconds=5.0)))
    provider = registry.get("example")
    provider.open_for(5.0)
    clock.advance(5.0)
    async with httpx.AsyncClient(transport=transport) as client:
        with anyio.move_on_after(1.0):  # virtual time: the upstream never sends its second chunk
            async with client.stream("GET", URL) as response:
                async for _ in response.aiter_raw():
                    pass
        assert provider.state == "half_open"  # recorded, but no verdict: the slot went back
        assert totals(registry) == {"success": 1}  # the cancelled stream, by its status
        body.before = None
        assert (await client.get(URL)).status_code == 200
    assert totals(registry) == {"success": 2}
    assert provider.state == "closed"



class _OneEvent(SyncStream):
    """A streamed body of one SSE event."""

    def __iter__(self) -> Iterator[bytes]:
        yield b"data: 1\n\n"


def test_abandoned_stream_gives_its_half_open_slot_back() -> None:
    """A streamed trial response dropped without close() frees its slot once collected."""
    clock = FakeClock()
    registry = ProviderRegistry(Policy(breaker=BreakerPolicy(minimum_calls=1, open_seconds=5)), clock=clock)
    provider = registry.register("p", hosts=["p.test"])
    provider.record(provider.admit(), "failure", 0.1)
    clock.advance(5)
    upstream = httpx.MockTransport(lambda request: httpx.Response(200, stream=_OneEvent()))
    with httpx.Client(transport=ResilientTransport(registry, transport=upstream)) as client:
        response = client.send(client.build_request("GET", "https://p.test/stream"), stream=True)
        with pytest.raises(CircuitOpenError):
            client.get("https://p.test/other")  # the one trial slot is taken
        del response
        gc.collect()
        assert client.get("https://p.test/again").status_code == 200
    assert provider.state == "closed"


def sse_usage_then_hang() -> Upstream:
    """An SSE body whose first event carries usage (cost 0.25), whose second never comes."""
    first = b'data: {"usage": {"prompt_tokens": 3, "completion_tokens": 4, "cost": 0.25}}\n\n'
    return Upstream([first, b"data: [DONE]\n\n"], before=lambda i: anyio.sleep_forever() if i == 1 else None)


@VIRTUAL_TIME
async def test_stream_cancelled_after_headers_is_recorded_with_its_cost() -> None:
    """A read cut by a cancel scope (wait_for, a client that left) still records the call and its cost."""
    transport, registry, _ = setup(sse_usage_then_hang())
    async with httpx.AsyncClient(transport=transport) as client:
        with anyio.move_on_after(0.3):
            async with client.stream("POST", URL, json={"model": "m"}) as response:
                async for _ in response.aiter_raw():
                    pass
    snapshot = registry.get("example").snapshot()
    assert totals(registry) == {"success": 1}
    assert snapshot.cost_total == pytest.approx(0.25)
    assert snapshot.window.input_tokens == 3 and snapshot.window.output_tokens == 4


async def test_stream_task_cancelled_mid_body_is_recorded_and_frees_the_trial() -> None:
    """asyncio: a task cancelled while reading records its attempt and gives the half-open slot back."""
    policy = Policy(breaker=BreakerPolicy(open_seconds=5.0))
    transport, registry, clock = setup(sse_usage_then_hang(), policy=policy)
    provider = registry.get("example")
    provider.open_for(5.0)
    clock.advance(5.0)
    got_first = anyio.Event()

    async def read(client: httpx.AsyncClient) -> None:
        async with client.stream("POST", URL, json={"model": "m"}) as response:
            async for _ in response.aiter_raw():
                got_first.set()

    async with httpx.AsyncClient(transport=transport) as client:
        task = asyncio.ensure_future(read(client))
        await got_first.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert totals(registry) == {"success": 1}
    assert registry.get("example").snapshot().cost_total == pytest.approx(0.25)
    assert provider.state == "half_open"  # no verdict from a cancelled stream ...
    provider.release(provider.admit())  # ... and its trial slot is free again


def test_long_healthy_streams_are_not_slow() -> None:
    """Twelve concurrent 90-second streams with a fast first token are not slow (judged by it): no trip."""
    transport, registry, clock = setup(Upstream([b"data: 1\n\n", b"data: 2\n\n"]))
    with httpx.Client(transport=transport) as client, contextlib.ExitStack() as streams:
        responses = [streams.enter_context(client.stream("GET", URL)) for _ in range(12)]
        bodies = [response.iter_raw() for response in responses]
        for body in bodies:
            assert next(body) == b"data: 1\n\n"  # the first token, at once
        clock.advance(90.0)  # what the callers asked for: long answers
        for body in bodies:
            assert list(body) == [b"data: 2\n\n"]
    provider = registry.get("example")
    assert provider.snapshot().requests_total["success"] == 12
    assert provider.snapshot().window.slow == 0
    assert provider.state == "closed"
