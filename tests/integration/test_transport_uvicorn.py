"""ResilientTransport over real sockets: a uvicorn upstream on 127.0.0.1, on each HTTP stack.

The ``stack`` fixture runs every test once with httpx2 (pooled by httpcore2)
and once with httpx (httpcore) as the module's ``httpx``.
"""

from __future__ import annotations

import dataclasses
import datetime
import gc
import gzip
import json
import select
import socket
import threading
import time
from collections.abc import Callable, Iterator
from types import ModuleType
from typing import Any

import anyio
import httpcore
import httpcore2
import httpx
import pytest

from resilience import (
    Policy,
    ProviderRegistry,
    ResilientTransport,
    RetryPolicy,
    StreamTimeoutError,
)
from resilience._http import stacks
from resilience.testing import FakeClock

pytestmark = [pytest.mark.integration, pytest.mark.anyio, pytest.mark.usefixtures("stack")]

USAGE = {"prompt_tokens": 5, "completion_tokens": 7, "cost": 0.002}
WHOLE = json.dumps({"model": "gpt-4o", "usage": USAGE}).encode()
WHOLE_GZIP = gzip.compress(WHOLE)


async def upstream(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """The fake provider: one behaviour per path."""
    path = scope["path"]

    async def start(status: int = 200, content_type: bytes = b"application/json") -> None:
        headers = [(b"content-type", content_type)]
        await send({"type": "http.response.start", "status": status, "headers": headers})

    async def body(data: bytes, more: bool = False) -> None:
        await send({"type": "http.response.body", "body": data, "more_body": more})

    if path == "/ok":
        await start()
        await body(json.dumps({"usage": USAGE}).encode())
    elif path in ("/whole", "/whole-gzip"):  # a Content-Length: small enough to be read whole
        data, headers = WHOLE, [(b"content-type", b"application/json")]
        if path == "/whole-gzip":
            data = WHOLE_GZIP
            headers.append((b"content-encoding", b"gzip"))
        headers.append((b"content-length", str(len(data)).encode()))
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await body(data)
    elif path == "/slow":
        if await linger(receive, 5.0):
            await start()
            await body(b"{}")
    elif path == "/sse":
        await start(content_type=b"text/event-stream")
        events = ({"choices": [{"delta": {"content": "hi"}}], "usage": None}, {"choices": [], "usage": USAGE})
        for event in events:
            await body(f"data: {json.dumps(event)}\n\n".encode(), more=True)
            await anyio.sleep(0.01)
        await body(b"data: [DONE]\n\n")
    elif path == "/disconnect":
        await start(content_type=b"text/plain")
        await body(b"partial", more=True)
        raise RuntimeError("upstream died mid-stream")  # uvicorn drops the connection
    elif path == "/first-byte":
        await start(content_type=b"text/plain")
        if await linger(receive, float(scope["query_string"] or b"5")):
            await body(b"late")


async def linger(receive: Any, seconds: float) -> bool:
    """Wait ``seconds``; ``False`` as soon as the client goes away (so servers stop promptly)."""
    with anyio.move_on_after(seconds):
        while (await receive())["type"] != "http.disconnect":
            pass
        return False
    return True


def transport_for(
    policy: Policy | None = None, **options: Any
) -> tuple[ResilientTransport, ProviderRegistry, FakeClock]:
    """A transport over httpx's own (real) transports; retries wait on a fake clock."""
    clock = FakeClock()
    registry = ProviderRegistry(policy)
    transport = ResilientTransport(registry, sleep=clock.sleep, async_sleep=clock.async_sleep, **options)
    return transport, registry, clock


def totals(registry: ProviderRegistry) -> dict[str, int]:
    """Requests by outcome across providers, without zeros."""
    out: dict[str, int] = {}
    for provider in registry.providers():
        for outcome, n in provider.snapshot().requests_total.items():
            if n:
                out[outcome] = out.get(outcome, 0) + n
    return out


@pytest.fixture
def url(uvicorn_server: Callable[..., str]) -> str:
    """The base URL of the fake provider."""
    return uvicorn_server(upstream)


def refused_port() -> int:
    """A port on 127.0.0.1 nothing listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_success_with_cost_over_real_http(url: str) -> None:
    """A real JSON response: success, cost and tokens recorded; provider named by host."""
    transport, registry, _ = transport_for()
    async with httpx.AsyncClient(transport=transport) as client:
        response = await client.post(url + "/ok", json={"model": "gpt-4o"})
    assert response.json() == {"usage": USAGE}
    snap = registry.get("127.0.0.1").snapshot()
    assert (snap.window.successes, snap.window.input_tokens) == (1, 5)
    assert snap.cost_total == pytest.approx(0.002)
    assert snap.models[0].model == "gpt-4o"


@pytest.mark.parametrize("mode", ["sync", "async"])
async def test_connection_refused_is_retried_then_raised(mode: str) -> None:
    """ConnectError: a failure per attempt, retried, then raised (not mistaken for a stale connection)."""
    transport, registry, clock = transport_for(Policy(retry=RetryPolicy(attempts=2, jitter=0.0)))
    target = f"http://127.0.0.1:{refused_port()}/x"
    with pytest.raises(httpx.ConnectError):
        if mode == "sync":
            with httpx.Client(transport=transport) as client:
                await anyio.to_thread.run_sync(client.get, target)
        else:
            async with httpx.AsyncClient(transport=transport) as aclient:
                await aclient.get(target)
    assert totals(registry) == {"failure": 2}
    assert registry.get("127.0.0.1").snapshot().retries_total == {"transport_error": 1}
    assert clock.sleeps == [0.2]


async def test_read_timeout_is_a_failure(url: str) -> None:
    """httpx's own read timeout: a failure, and the ReadTimeout reaches the caller."""
    transport, registry, _ = transport_for(Policy(retry=RetryPolicy(attempts=1)))
    async with httpx.AsyncClient(transport=transport, timeout=httpx.Timeout(5.0, read=0.2)) as client:
        with pytest.raises(httpx.ReadTimeout):
            await client.get(url + "/slow")
    assert totals(registry) == {"failure": 1}


@pytest.mark.parametrize("mode", ["sync", "async"])
async def test_mid_stream_disconnect_is_a_failure(mode: str, url: str) -> None:
    """The upstream dying after the headers: the body read fails and the attempt is a failure."""
    transport, registry, _ = transport_for(Policy(retry=RetryPolicy(attempts=1)))
    with pytest.raises(httpx.RemoteProtocolError):
        if mode == "sync":
            with httpx.Client(transport=transport) as client:
                await anyio.to_thread.run_sync(client.get, url + "/disconnect")
        else:
            async with httpx.AsyncClient(transport=transport) as aclient:
                await aclient.get(url + "/disconnect")
    assert totals(registry) == {"failure": 1}


async def test_slow_first_byte_async(url: str) -> None:
    """Async: headers at once, no body for 5 s; first_byte_timeout cuts it at 0.3 s."""
    transport, registry, _ = transport_for(Policy(first_byte_timeout=0.3))
    started = time.monotonic()
    async with httpx.AsyncClient(transport=transport) as client:
        with pytest.raises(StreamTimeoutError) as caught:
            await client.get(url + "/first-byte")
    assert time.monotonic() - started < 4.0
    assert isinstance(caught.value, httpx.TimeoutException)  # the stack's own, as SDKs catch it
    assert totals(registry) == {"failure": 1}


def test_slow_first_byte_sync(url: str) -> None:
    """Sync: the late first chunk (0.6 s, limit 0.2 s) is a breach once it arrives."""
    transport, registry, _ = transport_for(Policy(first_byte_timeout=0.2))
    with httpx.Client(transport=transport) as client, pytest.raises(StreamTimeoutError) as caught:
        client.get(url + "/first-byte?0.6")
    assert isinstance(caught.value, httpx.TimeoutException)
    assert totals(registry) == {"failure": 1}


@pytest.fixture(params=["held", "read again"])
def held(request: pytest.FixtureRequest, stack: ModuleType, monkeypatch: pytest.MonkeyPatch) -> bool:
    """Each way a body read whole reaches the client: handed over (today's stacks), or read again by it.

    The second is what a stack whose responses fail the probe gets.
    """
    found = stacks.BY_REQUEST[stack.Request]
    assert found.holds_content
    if request.param == "read again":
        monkeypatch.setitem(stacks.BY_REQUEST, stack.Request, dataclasses.replace(found, holds_content=False))
    return bool(request.param == "held")


@pytest.mark.parametrize("path", ["/whole", "/whole-gzip"])
async def test_a_body_read_whole_reaches_the_client_as_its_own_read(path: str, url: str, held: bool) -> None:
    """Read whole by the call (for its in-band error): content, elapsed and bytes as after the client's read.

    Without a content-encoding the client is handed the bytes already read
    (:func:`resilience._http.stacks.hold_content`); gzip goes through the
    client's own decoder.
    """
    transport, registry, _ = transport_for()
    with httpx.Client(transport=transport) as client:
        sync_response = await anyio.to_thread.run_sync(lambda: client.post(url + path, json={"model": "m"}))
    async with httpx.AsyncClient(transport=transport) as aclient:
        async_response = await aclient.post(url + path, json={"model": "m"})
    for response in (sync_response, async_response):
        assert response.content == WHOLE
        assert response.json() == {"model": "gpt-4o", "usage": USAGE}
        assert isinstance(response.elapsed, datetime.timedelta)
        assert response.elapsed.total_seconds() >= 0
        assert response.num_bytes_downloaded == len(WHOLE if path == "/whole" else WHOLE_GZIP)
    snap = registry.get("127.0.0.1").snapshot()
    assert (snap.window.successes, snap.window.input_tokens, snap.window.output_tokens) == (2, 10, 14)
    assert snap.cost_total == pytest.approx(0.004)


@pytest.mark.parametrize("path", ["/whole", "/whole-gzip"])
async def test_a_body_read_whole_keeps_its_raw_bytes_for_a_streaming_caller(
    path: str, url: str, held: bool
) -> None:
    """``client.stream()``: ``iter_raw()`` still yields the bytes as sent (a proxy passes them on)."""
    raw = WHOLE if path == "/whole" else WHOLE_GZIP
    transport, registry, _ = transport_for()

    def sync_raw() -> tuple[bytes, datetime.timedelta]:
        with httpx.Client(transport=transport) as client, client.stream("POST", url + path, json={}) as r:
            return b"".join(r.iter_raw()), r.elapsed

    got, elapsed = await anyio.to_thread.run_sync(sync_raw)
    assert got == raw
    assert elapsed.total_seconds() >= 0
    async with httpx.AsyncClient(transport=transport) as aclient:
        async with aclient.stream("POST", url + path, json={}) as response:
            assert b"".join([part async for part in response.aiter_raw()]) == raw
        async with aclient.stream("POST", url + path, json={}) as response:
            assert await response.aread() == WHOLE
    assert registry.get("127.0.0.1").snapshot().window.successes == 3


async def test_sse_usage_through_a_real_stream(url: str) -> None:
    """SSE from a real server: chunks stream, usage in the final event is the cost."""
    transport, registry, _ = transport_for()
    async with (
        httpx.AsyncClient(transport=transport) as client,
        client.stream("POST", url + "/sse", json={"model": "m"}) as response,
    ):
        lines = [line async for line in response.aiter_lines() if line]
    assert lines[-1] == "data: [DONE]"
    snap = registry.get("127.0.0.1").snapshot()
    assert snap.window.successes == 1
    assert snap.cost_total == pytest.approx(0.002)
    assert (snap.window.input_tokens, snap.window.output_tokens) == (5, 7)
    assert snap.time_to_headers is not None and snap.time_to_headers.successes == 1


OURS_IN_A_CYCLE = {"Call", "Attempt", "BodyInspector", "_Watch"}
"""What a cycle through the call's own objects would leave: the call and its attempt, and what they hold."""


def cyclic_garbage(run: Callable[[], object]) -> set[str]:
    """The types of the objects ``run()`` left in reference cycles (freed only by the cyclic collector)."""
    gc.collect()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        run()
        gc.collect()
        return {type(found).__qualname__ for found in gc.garbage}
    finally:
        gc.set_debug(0)
        gc.garbage.clear()


def streamed_then_read(client: httpx.Client, url: str) -> Callable[[], None]:
    def call() -> None:
        with client.stream("POST", url, json={"model": "m"}) as response:
            response.read()
        client.post(url, json={"model": "m"}).read()

    call()  # the pool's connection, made once
    return call


@pytest.mark.parametrize("path", ["/ok", "/sse"])
def test_a_finished_call_leaves_no_reference_cycle(path: str, url: str) -> None:
    """Call, attempt and stream are freed by reference counting once the body is read.

    A cycle among them would keep every call's request, response and body
    alive until the cyclic collector runs, and make it run more often. The
    wrapped call leaves no more than the bare stack does (httpx 0.28 leaves
    cycles of its own; httpx2 none).
    """
    with httpx.Client() as bare:
        stack_own = cyclic_garbage(streamed_then_read(bare, url + path))
    transport, registry, _ = transport_for()
    with httpx.Client(transport=transport) as client:
        left = cyclic_garbage(streamed_then_read(client, url + path))
    assert not left & OURS_IN_A_CYCLE
    if not stack_own:
        assert left == set()
    assert registry.get("127.0.0.1").snapshot().window.successes == 4


async def test_a_finished_async_call_leaves_no_reference_cycle(url: str) -> None:
    """:func:`test_a_finished_call_leaves_no_reference_cycle` on an async client, JSON then SSE."""
    transport, registry, _ = transport_for()
    async with httpx.AsyncClient(transport=transport) as client:

        async def calls() -> None:
            for path in ("/ok", "/sse"):
                async with client.stream("POST", url + path, json={"model": "m"}) as response:
                    await response.aread()

        await calls()
        gc.collect()
        gc.set_debug(gc.DEBUG_SAVEALL)
        try:
            await calls()
            gc.collect()
            left = {type(found).__qualname__ for found in gc.garbage}
        finally:
            gc.set_debug(0)
            gc.garbage.clear()
    assert not left & OURS_IN_A_CYCLE
    assert registry.get("127.0.0.1").snapshot().window.successes == 4


HANG_UP_SECONDS = 10.0
"""Longest a test waits for uvicorn to close an idle keep-alive connection (it does after 0.2 s)."""

BIG = b"x" * (8 << 20)
"""A request body no socket buffer holds: writing it to a dead connection must fail."""


def hung_up(response: httpx.Response) -> bool:
    """Block until the server closes the idle connection ``response`` came on (its FIN is readable)."""
    sock = response.extensions["network_stream"].get_extra_info("socket")
    return bool(select.select([sock], [], [], HANG_UP_SECONDS)[0])


CORES: dict[str, ModuleType] = {"httpx2": httpcore2, "httpx": httpcore}
"""The connection pool under each stack."""


def reuse_dead_connections(monkeypatch: pytest.MonkeyPatch) -> None:
    """Lose the race the pool's idle check normally wins: hand out a connection the server closed."""
    core = CORES[httpx.__name__]  # the stack under test's pool
    monkeypatch.setattr(core.HTTPConnection, "has_expired", lambda self: False)
    monkeypatch.setattr(core.AsyncHTTPConnection, "has_expired", lambda self: False)


def stale_outcome(registry: ProviderRegistry) -> tuple[dict[str, int], dict[str, int]]:
    """Requests by outcome (without zeros) and retries by reason."""
    return totals(registry), registry.get("127.0.0.1").snapshot().retries_total


def test_idle_connection_the_server_closed_is_replaced_by_the_pool_sync(
    uvicorn_server: Callable[..., str],
) -> None:
    """The server closed the idle keep-alive connection before the request: 200, nothing recorded."""
    url = uvicorn_server(upstream, timeout_keep_alive=0.2)
    inner = httpx.HTTPTransport()
    transport, registry, _ = transport_for(Policy(retry=RetryPolicy(attempts=1)), transport=inner)
    with httpx.Client(transport=transport) as client:
        assert hung_up(client.get(url + "/ok"))
        assert client.post(url + "/ok", json={"model": "m"}).status_code == 200
    assert stale_outcome(registry) == ({"success": 2}, {})


async def test_idle_connection_the_server_closed_is_replaced_by_the_pool_async(
    uvicorn_server: Callable[..., str],
) -> None:
    """The same with the async pool."""
    url = uvicorn_server(upstream, timeout_keep_alive=0.2)
    inner = httpx.AsyncHTTPTransport()
    transport, registry, _ = transport_for(Policy(retry=RetryPolicy(attempts=1)), transport=inner)
    async with httpx.AsyncClient(transport=transport) as client:
        assert await anyio.to_thread.run_sync(hung_up, await client.get(url + "/ok"))
        assert (await client.post(url + "/ok", json={"model": "m"})).status_code == 200
    assert stale_outcome(registry) == ({"success": 2}, {})


def test_request_cut_short_on_a_dead_pooled_connection_is_resent_once(
    uvicorn_server: Callable[..., str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A dead pooled connection failed the write of the body: never whole at the provider, so resent."""
    url = uvicorn_server(upstream, timeout_keep_alive=0.2)
    inner = httpx.HTTPTransport()
    transport, registry, _ = transport_for(Policy(retry=RetryPolicy(attempts=1)), transport=inner)
    with httpx.Client(transport=transport) as client:
        assert hung_up(client.get(url + "/ok"))
        reuse_dead_connections(monkeypatch)
        response = client.post(url + "/ok", content=BIG, headers={"content-type": "application/json"})
        assert response.status_code == 200
    assert stale_outcome(registry) == ({"success": 2}, {"stale_connection": 1})


def dropped() -> tuple[type[Exception], ...]:
    """A dead connection failing the read of the response: EOF, or the reset our request drew."""
    return (httpx.RemoteProtocolError, httpx.ReadError)


def test_request_written_whole_on_a_dead_pooled_connection_is_a_failure_sync(
    uvicorn_server: Callable[..., str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Written whole, then EOF: what a provider that read it and dropped looks like, so not resent."""
    url = uvicorn_server(upstream, timeout_keep_alive=0.2)
    inner = httpx.HTTPTransport()
    transport, registry, _ = transport_for(Policy(retry=RetryPolicy(attempts=1)), transport=inner)
    with httpx.Client(transport=transport) as client:
        assert hung_up(client.get(url + "/ok"))
        reuse_dead_connections(monkeypatch)
        with pytest.raises(dropped()):
            client.get(url + "/ok")
    assert stale_outcome(registry) == ({"success": 1, "failure": 1}, {})


@pytest.mark.parametrize(
    "content",
    [
        pytest.param(None, id="written-whole"),
        pytest.param(b'{"model": "m"}', id="cut-unseen"),  # asyncio buffers the write: only the read fails
    ],
)
async def test_request_not_seen_cut_short_on_a_dead_pooled_connection_is_a_failure_async(
    content: bytes | None, uvicorn_server: Callable[..., str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Async: no failed write seen, then EOF or reset: not resent, a failure."""
    url = uvicorn_server(upstream, timeout_keep_alive=0.2)
    inner = httpx.AsyncHTTPTransport()
    transport, registry, _ = transport_for(Policy(retry=RetryPolicy(attempts=1)), transport=inner)
    async with httpx.AsyncClient(transport=transport) as client:
        assert await anyio.to_thread.run_sync(hung_up, await client.get(url + "/ok"))
        reuse_dead_connections(monkeypatch)
        with pytest.raises(dropped()):
            await client.request("GET" if content is None else "POST", url + "/ok", content=content)
    assert stale_outcome(registry) == ({"success": 1, "failure": 1}, {})


@pytest.fixture
def dropping_server() -> Iterator[str]:
    """A raw server that reads each request and closes the connection without a response."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    listener.settimeout(0.1)
    stop = threading.Event()

    def run() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            with conn:
                conn.recv(65536)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        stop.set()
        thread.join(5)
        listener.close()


def test_a_fresh_connection_dropped_is_a_failure(dropping_server: str) -> None:
    """Disconnected without a response on a NEW connection: the provider's fault, recorded."""
    transport, registry, _ = transport_for(Policy(retry=RetryPolicy(attempts=1)))
    # a close with the request unread may reach the client as a reset instead of an EOF
    with httpx.Client(transport=transport) as client, pytest.raises(dropped()):
        client.post(dropping_server + "/", json={"model": "m"})
    snap = registry.get("127.0.0.1").snapshot()
    assert snap.requests_total["failure"] == 1
    assert snap.retries_total == {}
