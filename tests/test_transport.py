"""ResilientTransport: wiring, provider and model resolution, outcomes, lifecycle, concurrency."""

from __future__ import annotations

import json
import threading
from collections.abc import AsyncIterator
from typing import Any

import anyio
import anyio.lowlevel
import httpx
import pytest
from both_stacks import AsyncStream, AsyncTransport, Transport

import resilience
from resilience import (
    BreakerPolicy,
    ConfigError,
    Policy,
    ProviderRegistry,
    ResilientTransport,
    RetryPolicy,
)
from resilience._core.context import begin_request, end_request
from resilience._http.resolve import MAX_BODY, model_from_body
from resilience.testing import FakeClock

pytestmark = [pytest.mark.anyio, pytest.mark.usefixtures("stack")]  # httpx2 and httpx

MODES = [pytest.param("sync", id="sync"), pytest.param("async", id="async")]
NO_RETRY = Policy(retry=RetryPolicy(attempts=1))


def ok(request: httpx.Request) -> httpx.Response:
    """An upstream that always answers 200 with an empty JSON object."""
    return httpx.Response(200, json={})


def make(
    handler: Any = ok, policy: Policy | None = None, **registry_options: Any
) -> tuple[ResilientTransport, ProviderRegistry]:
    """A transport over a mock upstream; providers openrouter (one host) and cerebras (a wildcard)."""
    registry = ProviderRegistry(policy, clock=FakeClock(), **registry_options)
    registry.register("openrouter", hosts=["openrouter.ai"])
    registry.register("cerebras", hosts=["*.cerebras.ai"])
    return ResilientTransport(registry, httpx.MockTransport(handler)), registry


async def send(mode: str, transport: ResilientTransport, url: str, **kwargs: Any) -> httpx.Response:
    """One POST through ``transport`` with a sync or an async client."""
    if mode == "sync":
        return httpx.Client(transport=transport).post(url, **kwargs)
    return await httpx.AsyncClient(transport=transport).post(url, **kwargs)


def calls(registry: ProviderRegistry) -> dict[str, int]:
    """Attempts recorded per provider (all outcomes), without zeros."""
    counts = {p.name: sum(p.snapshot().requests_total.values()) for p in registry.providers()}
    return {name: n for name, n in counts.items() if n}


# -- the SPEC wiring -----------------------------------------------------------


async def test_spec_wiring_sync_and_async() -> None:
    """The SPEC's wiring: one registry, ResilientTransport on both clients, host-mapped providers."""
    registry = resilience.ProviderRegistry(
        default_policy=resilience.Policy(
            breaker=resilience.BreakerPolicy(
                failure_rate_threshold=0.5, minimum_calls=10, window_seconds=60.0, open_seconds=30.0
            ),
            retry=resilience.RetryPolicy(attempts=3),
        ),
    )
    registry.register("openrouter", hosts=["openrouter.ai"])
    registry.register("cerebras", hosts=["api.cerebras.ai"],
                      policy=resilience.Policy(retry=resilience.RetryPolicy(attempts=1)))
    upstream = httpx.MockTransport(lambda request: httpx.Response(200, json={"usage": {"cost": 0.01}}))
    client = httpx.AsyncClient(transport=resilience.ResilientTransport(registry, transport=upstream))
    sync_client = httpx.Client(transport=resilience.ResilientTransport(registry, transport=upstream))
    r = await client.post("https://openrouter.ai/api/v1/chat/completions", json={"model": "gpt-4o"})
    assert r.status_code == 200
    sync = await anyio.to_thread.run_sync(
        lambda: sync_client.post("https://api.cerebras.ai/v1/chat/completions", json={"model": "llama"})
    )
    assert sync.status_code == 200
    snapshot = {p.name: p for p in registry.snapshot().providers}
    assert snapshot["openrouter"].cost_total == pytest.approx(0.01)
    assert [m.model for m in snapshot["openrouter"].models] == ["gpt-4o"]
    assert [m.model for m in snapshot["cerebras"].models] == ["llama"]
    assert registry.get("openrouter").state == "closed"


# -- which provider ------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "extensions", "provider"),
    [
        pytest.param("https://openrouter.ai/v1", {}, "openrouter", id="host-map"),
        pytest.param("https://OpenRouter.AI/v1", {}, "openrouter", id="host-case"),
        pytest.param("https://api.cerebras.ai/v1", {}, "cerebras", id="wildcard"),
        pytest.param("https://api.groq.com/v1", {}, "api.groq.com", id="host-auto-registered"),
        pytest.param("https://openrouter.ai/v1", {"provider": "cerebras"}, "cerebras", id="extension-wins"),
        pytest.param("https://openrouter.ai/v1", {"provider": "mistral"}, "mistral", id="extension-new-name"),
        pytest.param("https://openrouter.ai/v1", {"provider": 42}, "openrouter", id="extension-not-a-name"),
    ],
)
@pytest.mark.parametrize("mode", MODES)
async def test_provider_resolution(mode: str, url: str, extensions: dict[str, Any], provider: str) -> None:
    """Extensions first, then the host map (exact and *.suffix), then the host name itself."""
    transport, registry = make()
    await send(mode, transport, url, extensions=extensions)
    assert calls(registry) == {provider: 1}


async def test_provider_object_in_extensions() -> None:
    """A Provider object can be passed as the provider extension."""
    transport, registry = make()
    target = registry.get("cerebras")
    await send("async", transport, "https://openrouter.ai/v1", extensions={"provider": target})
    assert calls(registry) == {"cerebras": 1}


async def test_hosts_past_max_providers_fold_into_other() -> None:
    """Hosts seen on the fly fill the free slots, then fold into one provider ``other``."""
    transport, registry = make(max_providers=4)
    for host in ("a.example", "b.example", "c.example", "d.example"):
        await send("async", transport, f"https://{host}/")
    assert calls(registry) == {"a.example": 1, "b.example": 1, "other": 2}
    assert registry._label_overflows == 2


async def test_host_registered_after_first_use_is_honoured() -> None:
    """A host first auto-registered, then claimed by a registration, resolves to the new provider."""
    transport, registry = make()
    await send("async", transport, "https://api.groq.com/v1")
    registry.register("groq", hosts=["api.groq.com"])
    await send("async", transport, "https://api.groq.com/v1")
    assert calls(registry) == {"api.groq.com": 1, "groq": 1}


# -- which model ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "model"),
    [
        pytest.param(b'{"model":"gpt-4o","messages":[]}', "gpt-4o", id="compact-first"),
        pytest.param(b'{ "model" : "gpt-4o" }', "gpt-4o", id="spaced"),
        pytest.param(b'{"messages": [{"role": "user"}], "model": "late"}', "late", id="later-key"),
        pytest.param(b'{"model":"caf\\u00e9"}', "café", id="escaped"),
        pytest.param(b'{"tools": [{"model": "inner"}], "model": "outer"}', "outer", id="nested-skipped"),
        pytest.param(b'{"tools": [{"model": "inner"}]}', None, id="only-nested"),
        pytest.param(b'{"model": 3}', None, id="not-a-string"),
        pytest.param(b'{"model": null, "x": {"model": "n"}}', None, id="null-then-nested"),
        pytest.param(b'["model"]', None, id="not-an-object"),
        pytest.param(b'{"text": "say \\"model\\": \\"x\\""}', None, id="inside-a-string"),
        pytest.param(b'{"model":"\xff"}', None, id="not-utf8"),
        pytest.param(b"", None, id="empty"),
    ],
)
def test_model_from_body(content: bytes, model: str | None) -> None:
    """The top-level "model" string of a JSON body, and nothing else."""
    request = httpx.Request("POST", "https://x.example/", content=content)
    assert model_from_body(request) == model


def test_model_from_a_body_over_the_limit_is_not_read() -> None:
    """Bodies over 1 MiB are not searched."""
    content = b'{"model": "big", "pad": "' + b"x" * MAX_BODY + b'"}'
    assert model_from_body(httpx.Request("POST", "https://x.example/", content=content)) is None


def test_model_from_a_streaming_body_is_never_read() -> None:
    """A streaming request body is left untouched."""
    pulled: list[bytes] = []

    def body() -> Any:
        pulled.append(b"x")
        yield b'{"model": "m"}'

    request = httpx.Request("POST", "https://x.example/", content=body())
    assert model_from_body(request) is None
    assert pulled == []


@pytest.mark.parametrize("mode", MODES)
async def test_model_from_extension_and_body(mode: str) -> None:
    """extensions["model"] wins over the body; a non-string extension falls back to the body."""
    transport, registry = make()
    url = "https://openrouter.ai/v1"
    await send(mode, transport, url, json={"model": "body"}, extensions={"model": "given"})
    await send(mode, transport, url, json={"model": "body"}, extensions={"model": ["not", "a", "name"]})
    models = {m.model: m.window.calls for m in registry.get("openrouter").snapshot().models}
    assert models == {"given": 1, "body": 1}


async def test_models_past_max_models_fold_into_other() -> None:
    """Model names beyond max_models per provider fold into ``other``."""
    transport, registry = make(max_models=2)
    for name in ("a", "b", "c", "d"):
        await send("async", transport, "https://openrouter.ai/v1", json={"model": name})
    models = {m.model: m.window.calls for m in registry.get("openrouter").snapshot().models}
    assert models == {"a": 1, "b": 1, "other": 2}


# -- outcomes ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "outcome"),
    [
        (200, "success"),
        (204, "success"),
        (302, "success"),
        (400, "client_error"),
        (404, "client_error"),
        (429, "throttled"),
        (500, "failure"),
        (503, "failure"),
    ],
)
@pytest.mark.parametrize("mode", MODES)
async def test_status_outcomes(mode: str, status: int, outcome: str) -> None:
    """5xx failure, 429 throttled, other 4xx client_error, the rest success."""
    transport, registry = make(lambda request: httpx.Response(status), NO_RETRY)
    assert (await send(mode, transport, "https://openrouter.ai/v1")).status_code == status
    totals = registry.get("openrouter").snapshot().requests_total
    assert {k: v for k, v in totals.items() if v} == {outcome: 1}


async def test_configurable_status_sets() -> None:
    """failure_statuses and throttle_statuses are the policy's to set."""
    policy = Policy(
        retry=RetryPolicy(attempts=1),
        failure_statuses=frozenset({500, 418}),
        throttle_statuses=frozenset({503}),
    )
    outcomes = {}
    for status in (418, 503, 502):
        transport, registry = make(lambda request, s=status: httpx.Response(s), policy)
        await send("async", transport, "https://openrouter.ai/v1")
        totals = registry.get("openrouter").snapshot().requests_total
        outcomes[status] = next(k for k, v in totals.items() if v)
    assert outcomes == {418: "failure", 503: "throttled", 502: "success"}


async def test_retry_after_opens_the_breaker_when_asked() -> None:
    """With open_on_retry_after, a 429's Retry-After opens the breaker for that long."""
    policy = Policy(retry=RetryPolicy(attempts=1), breaker=BreakerPolicy(open_on_retry_after=True))
    transport, registry = make(lambda request: httpx.Response(429, headers={"retry-after": "40"}), policy)
    await send("async", transport, "https://openrouter.ai/v1")
    provider = registry.get("openrouter")
    assert provider.state == "open"
    assert provider.snapshot().retry_after == pytest.approx(40.0)


@pytest.mark.parametrize("mode", MODES)
async def test_transport_errors_are_failures(mode: str) -> None:
    """A transport error or timeout is a failure, and the exception reaches the caller."""

    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectTimeout("too slow")

    transport, registry = make(refuse, NO_RETRY)
    with pytest.raises(httpx.ConnectTimeout):
        await send(mode, transport, "https://openrouter.ai/v1")
    assert registry.get("openrouter").snapshot().requests_total["failure"] == 1


@pytest.mark.parametrize("mode", MODES)
async def test_a_broken_upstream_handler_is_a_failure(mode: str) -> None:
    """Any exception from the inner transport is a failure, raised unchanged, never retried."""
    error = RuntimeError("bug")
    seen: list[httpx.Request] = []

    def broken(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        raise error

    transport, registry = make(broken)
    with pytest.raises(RuntimeError) as caught:
        await send(mode, transport, "https://openrouter.ai/v1")
    assert caught.value is error
    assert len(seen) == 1
    assert registry.get("openrouter").snapshot().requests_total["failure"] == 1


async def test_a_request_that_never_left_is_not_recorded() -> None:
    """An unsupported URL scheme is the caller's error: raised, nothing recorded, permit returned."""

    def unsupported(request: httpx.Request) -> httpx.Response:
        raise httpx.UnsupportedProtocol("ftp is not http")

    transport, registry = make(unsupported)
    with pytest.raises(httpx.UnsupportedProtocol):
        await send("async", transport, "https://openrouter.ai/v1")
    assert calls(registry) == {}


async def test_request_totals_count_attempts_cost_and_rejections() -> None:
    """Inside an inbound request, attempts, cost and rejections add up in its totals."""
    transport, registry = make(lambda request: httpx.Response(200, json={"usage": {"cost": 0.5}}))
    stats, token = begin_request()
    try:
        await send("async", transport, "https://openrouter.ai/v1")
        await send("sync", transport, "https://api.cerebras.ai/v1", content=b"plain")
        registry.get("cerebras").force_open()
        with pytest.raises(resilience.CircuitOpenError):
            await send("async", transport, "https://api.cerebras.ai/v1")
    finally:
        end_request(token)
    assert (stats.attempts, stats.rejected, stats.cost_usd) == (2, 1, 1.0)
    assert stats.providers == {"openrouter", "cerebras"}


# -- lifecycle -----------------------------------------------------------------


class Inner(Transport, AsyncTransport):
    """An inner transport that remembers being closed."""

    def __init__(self) -> None:
        self.closed: list[str] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        return httpx.Response(200)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        return httpx.Response(200)

    def close(self) -> None:
        self.closed.append("sync")

    async def aclose(self) -> None:
        self.closed.append("async")


async def test_close_and_aclose_reach_the_inner_transport() -> None:
    """Closing the clients closes the one inner transport, on each side."""
    inner = Inner()
    transport = ResilientTransport(ProviderRegistry(), inner)
    with httpx.Client(transport=transport) as client:
        assert (await anyio.to_thread.run_sync(client.get, "https://x.example/")).status_code == 200
    async with httpx.AsyncClient(transport=transport) as aclient:
        assert (await aclient.get("https://x.example/")).status_code == 200
    assert inner.closed == ["sync", "async"]


async def test_default_inner_transports_are_created_lazily(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without a transport, each side creates httpx's own on first use, and closes it."""
    made: list[Inner] = []

    class Default(Inner):
        def __init__(self) -> None:
            super().__init__()
            made.append(self)

    monkeypatch.setattr(httpx, "HTTPTransport", Default)
    monkeypatch.setattr(httpx, "AsyncHTTPTransport", Default)
    transport = ResilientTransport(ProviderRegistry())
    assert made == []
    transport.handle_request(httpx.Request("GET", "https://x.example/"))
    transport.handle_request(httpx.Request("GET", "https://x.example/"))
    assert len(made) == 1
    await transport.handle_async_request(httpx.Request("GET", "https://x.example/"))
    assert len(made) == 2
    transport.close()
    await transport.aclose()
    assert [m.closed for m in made] == [["sync"], ["async"]]


async def test_one_sided_transports_refuse_the_other_side() -> None:
    """An async-only inner transport with a sync client (and the reverse) is a clear TypeError."""
    registry = ProviderRegistry()
    async_only = ResilientTransport(registry, httpx.AsyncHTTPTransport())
    with pytest.raises(TypeError, match="AsyncClient"):
        httpx.Client(transport=async_only).get("https://x.example/")
    sync_only = ResilientTransport(registry, httpx.HTTPTransport())
    with pytest.raises(TypeError, match=r"httpx\.Client"):
        await httpx.AsyncClient(transport=sync_only).get("https://x.example/")
    assert calls(registry) == {}
    await async_only.aclose()
    sync_only.close()


def test_registry_is_validated() -> None:
    """A transport needs a ProviderRegistry."""
    with pytest.raises(ConfigError, match="ProviderRegistry"):
        ResilientTransport({"not": "a registry"})  # type: ignore[arg-type]  # the point of the test


# -- concurrency ---------------------------------------------------------------


async def test_a_thousand_concurrent_requests_count_exactly() -> None:
    """1,000 concurrent coroutines through one transport: every outcome and model counted once."""

    async def upstream(request: httpx.Request) -> httpx.Response:
        n = int(request.url.params["n"])
        await anyio.lowlevel.checkpoint()
        if n % 10 == 0:
            return httpx.Response(500)
        body = json.dumps({"usage": {"cost": 0.001}} if n % 3 == 0 else {}).encode()
        await anyio.lowlevel.checkpoint()
        return httpx.Response(200, content=body, headers={"content-type": "application/json"})

    policy = Policy(retry=RetryPolicy(attempts=1), breaker=BreakerPolicy(minimum_calls=1_000_000))
    transport, registry = make(upstream, policy)
    async with httpx.AsyncClient(transport=transport) as client:

        async def one(n: int) -> None:
            r = await client.post(f"https://openrouter.ai/v1?n={n}", json={"model": f"m{n % 4}"})
            assert r.status_code == (500 if n % 10 == 0 else 200)

        async with anyio.create_task_group() as tg:
            for n in range(1000):
                tg.start_soon(one, n)
    snap = registry.get("openrouter").snapshot()
    costed = sum(1 for n in range(1000) if n % 10 and n % 3 == 0)
    assert (snap.requests_total["success"], snap.requests_total["failure"]) == (900, 100)
    assert (snap.window.successes, snap.window.failures, snap.window.costed) == (900, 100, costed)
    assert snap.cost_total == pytest.approx(costed * 0.001)
    assert {m.model: m.window.calls for m in snap.models} == {f"m{i}": 250 for i in range(4)}


def test_sixteen_threads_count_exactly() -> None:
    """16 threads sharing one httpx.Client: every attempt recorded exactly once."""
    transport, registry = make(
        lambda request: httpx.Response(503 if request.url.params["n"] == "0" else 200),
        Policy(retry=RetryPolicy(attempts=1), breaker=BreakerPolicy(minimum_calls=1_000_000)),
    )
    client = httpx.Client(transport=transport)
    barrier = threading.Barrier(16)
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            barrier.wait()
            for n in range(250):
                client.post(f"https://openrouter.ai/v1?n={n % 5}", json={"model": "m"})
        except BaseException as exc:  # reported below, not lost in the thread
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    snap = registry.get("openrouter").snapshot()
    assert (snap.requests_total["success"], snap.requests_total["failure"]) == (3200, 800)
    assert snap.window.calls == 4000
    assert snap.models[0].window.calls == 4000


async def test_streamed_responses_under_concurrency() -> None:
    """Concurrent streamed responses are each recorded once when read."""

    class Chunks(AsyncStream):
        async def __aiter__(self) -> AsyncIterator[bytes]:
            for part in (b"a", b"b"):
                await anyio.lowlevel.checkpoint()
                yield part

    transport, registry = make(lambda request: httpx.Response(200, stream=Chunks()))
    async with httpx.AsyncClient(transport=transport) as client:

        async def one() -> None:
            assert (await client.get("https://openrouter.ai/v1")).content == b"ab"

        async with anyio.create_task_group() as tg:
            for _ in range(200):
                tg.start_soon(one)
    assert registry.get("openrouter").snapshot().requests_total["success"] == 200


# -- stale pooled connections (the trace events httpcore sends, played by hand) ---------------


WRITTEN, CUT, UNTOUCHED = "written", "cut", "untouched"
"""How far a scripted send got with the request body: written whole, its write failed, never begun."""


def Pooled(*script: tuple[str, Exception | None]) -> Any:  # stands for a class
    """A transport of the stack under test whose sends are scripted: each writes the body as far as
    told (iterating the request stream as httpcore does), then answers 200 or raises (in that stack)."""

    class Pooled(httpx.HTTPTransport):
        def __init__(self) -> None:
            super().__init__()
            self.script = list(script)
            self.sent = 0

        def handle_request(self, request: httpx.Request) -> httpx.Response:
            written, error = self.script[min(self.sent, len(self.script) - 1)]
            self.sent += 1
            chunks = iter(request.stream)  # type: ignore[arg-type]  # a sync body
            if written != UNTOUCHED:
                next(chunks)  # the body's chunk goes out ...
            if written == WRITTEN:
                assert next(chunks, None) is None  # ... and its write returned: httpcore asks for more
            if error is not None:
                raise in_stack(error)
            return httpx.Response(200)

    return Pooled()


def in_stack(error: Exception) -> Exception:
    """``error`` as the same exception class of the stack under test."""
    return getattr(httpx, type(error).__name__)(*error.args)  # type: ignore[no-any-return]


DISCONNECTED = httpx.RemoteProtocolError("Server disconnected without sending a response.")


@pytest.mark.parametrize(
    ("first", "sent", "outcomes", "retries"),
    [
        pytest.param((CUT, DISCONNECTED), 2, {"success": 1}, {"stale_connection": 1}, id="body-cut-resent"),
        pytest.param((UNTOUCHED, httpx.ReadError("reset")), 2, {"success": 1}, {"stale_connection": 1},
                     id="headers-cut-resent"),
        pytest.param((WRITTEN, DISCONNECTED), 1, {"failure": 1}, {}, id="written-whole-is-a-failure"),
        pytest.param((WRITTEN, httpx.ReadError("reset")), 1, {"failure": 1}, {},
                     id="written-then-reset-a-failure"),
        pytest.param((UNTOUCHED, httpx.ConnectError("refused")), 1, {"failure": 1}, {},
                     id="connect-error-is-a-failure"),
    ],
)
def test_stale_connection_resent_once_and_not_recorded(
    first: tuple[str, Exception], sent: int, outcomes: dict[str, int], retries: dict[str, int]
) -> None:
    """Only a request whose body was not written whole is resent: at once, unrecorded, once."""
    pooled = Pooled(first, (WRITTEN, None))
    registry = ProviderRegistry(Policy(retry=RetryPolicy(attempts=1)), clock=FakeClock())
    client = httpx.Client(transport=ResilientTransport(registry, pooled))
    if "failure" in outcomes:
        with pytest.raises(getattr(httpx, type(first[1]).__name__)):
            client.post("https://openrouter.ai/v1", json={"model": "m"})
    else:
        assert client.post("https://openrouter.ai/v1", json={"model": "m"}).status_code == 200
    snap = registry.get("openrouter.ai").snapshot()
    assert pooled.sent == sent
    assert {k: v for k, v in snap.requests_total.items() if v} == outcomes
    assert snap.retries_total == retries


def test_stale_resend_happens_once_and_leaves_the_request_as_it_was() -> None:
    """Two cut-short writes in a row: one resend only, then the failure; the request keeps its own body."""
    pooled = Pooled((CUT, DISCONNECTED))
    registry = ProviderRegistry(Policy(retry=RetryPolicy(attempts=1)), clock=FakeClock())
    client = httpx.Client(transport=ResilientTransport(registry, pooled))
    request = client.build_request("POST", "https://openrouter.ai/v1", json={"model": "m"})
    stream = request.stream
    with pytest.raises(httpx.RemoteProtocolError):
        client.send(request)
    assert pooled.sent == 2
    assert request.stream is stream
    assert registry.get("openrouter.ai").snapshot().requests_total["failure"] == 1


def test_pool_timeout_is_not_held_against_the_provider() -> None:
    """A full client pool (PoolTimeout) never reached the provider: raised, nothing recorded."""
    import resilience

    def full_pool(request: httpx.Request) -> httpx.Response:
        raise httpx.PoolTimeout("no connection available", request=request)

    registry = resilience.ProviderRegistry()
    registry.register("p", hosts=["p.test"])
    transport = resilience.ResilientTransport(registry, transport=httpx.MockTransport(full_pool))
    with httpx.Client(transport=transport) as client, pytest.raises(httpx.PoolTimeout):
        client.get("https://p.test/")
    totals = registry.get("p").snapshot().requests_total
    assert sum(totals.values()) == 0


def test_cost_of_an_in_memory_gzip_body_is_found() -> None:
    """A gzip-encoded JSON body already in memory still yields its usage.cost."""
    import gzip
    import json

    import resilience

    body = gzip.compress(json.dumps({"usage": {"cost": 0.5}}).encode())
    headers = {"content-encoding": "gzip", "content-type": "application/json"}
    upstream = httpx.MockTransport(lambda request: httpx.Response(200, content=body, headers=headers))
    registry = resilience.ProviderRegistry()
    registry.register("p", hosts=["p.test"])
    with httpx.Client(transport=resilience.ResilientTransport(registry, transport=upstream)) as client:
        assert client.get("https://p.test/").json() == {"usage": {"cost": 0.5}}
    provider = registry.get("p")
    assert provider.snapshot().cost_total == 0.5
    assert provider.errors == {}
