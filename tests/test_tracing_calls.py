"""OpenTelemetry spans of calls through ``ResilientTransport``, read back from the SDK's in-memory exporter.

One span per transport call, exactly as the SPEC names it: ``resilience {name}``,
kind ``INTERNAL``, a child of the span current at the call; its attributes
(``gen_ai.provider.name``, ``gen_ai.request.model``, ``gen_ai.usage.*``,
``resilience.attempts``, ``resilience.cost_usd``, ``resilience.route``) and
events (``resilience.rejected``, ``resilience.retry``, ``resilience.failover``,
``resilience.hedge``, ``resilience.deadline_exceeded``); status ``ERROR`` when
the call raised or ended in a failure. A plain call, a retried one, a rejected
one, a route failover, a hedge, a deadline, a stream; the duration histogram's
OpenMetrics exemplars; nothing without a tracer provider. On each HTTP stack
(``stack``), sync and async clients where both apply.
"""

from __future__ import annotations

import gc
import json
import re
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import anyio
import httpx
import pytest
from both_stacks import AsyncStream, SyncStream
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from prometheus_client import CollectorRegistry
from prometheus_client.openmetrics.exposition import generate_latest
from virtual_time import VIRTUAL_TIME, Answer, slow_then

import resilience
from resilience import (
    CircuitOpenError,
    DeadlineExceededError,
    Policy,
    ProviderRegistry,
    ResilientTransport,
    RetryPolicy,
    Target,
)
from resilience.testing import FakeClock

pytestmark = [pytest.mark.anyio, pytest.mark.usefixtures("stack")]  # httpx2 and httpx

MODES = ("sync", "async")
MODEL = "gpt-4o-mini"
"""The model as the caller sends it."""
URL = "https://api.openrouter.test/v1/chat/completions"
BODY = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}
USAGE = {"prompt_tokens": 12, "completion_tokens": 34, "cost": 0.125}
PLAIN = {
    "gen_ai.request.model": MODEL,
    "gen_ai.provider.name": "openrouter",
    "gen_ai.usage.input_tokens": 12,
    "gen_ai.usage.output_tokens": 34,
    "resilience.attempts": 1,
    "resilience.cost_usd": 0.125,
}
"""The attributes of a plain successful call."""


# -- the tracer provider ---------------------------------------------------------------------


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def provider(exporter: InMemorySpanExporter, monkeypatch: pytest.MonkeyPatch) -> Iterator[TracerProvider]:
    """An SDK tracer provider exporting to ``exporter``, the global one for this test only.

    The API sets its global once per process: the test swaps it in and monkeypatch restores it.
    ``resilience`` reads the global per call, so nothing else is needed.
    """
    made = TracerProvider()
    made.add_span_processor(SimpleSpanProcessor(exporter))
    monkeypatch.setattr(trace, "_TRACER_PROVIDER", made)
    yield made
    made.shutdown()


def call_spans(exporter: InMemorySpanExporter) -> list[ReadableSpan]:
    """The library's spans finished so far (the test's own parent spans left out)."""
    return [
        span for span in exporter.get_finished_spans()
        if span.instrumentation_scope is not None and span.instrumentation_scope.name == "resilience"
    ]


def only_call_span(exporter: InMemorySpanExporter) -> ReadableSpan:
    spans = call_spans(exporter)
    assert len(spans) == 1, spans
    return spans[0]


def parent_span(exporter: InMemorySpanExporter) -> ReadableSpan:
    (outer,) = [span for span in exporter.get_finished_spans() if span.name == "gateway"]
    return outer


def events(span: ReadableSpan) -> list[tuple[str, dict[str, Any]]]:
    return [(event.name, dict(event.attributes or {})) for event in span.events]


def attributes(span: ReadableSpan) -> dict[str, Any]:
    return dict(span.attributes or {})


def assert_call_span(
    exporter: InMemorySpanExporter, name: str, *, error: bool = False, description: str | None = None
) -> ReadableSpan:
    """The one call span: its name, kind, parent (the test's ``gateway`` span) and status."""
    span = only_call_span(exporter)
    outer = parent_span(exporter)
    assert span.name == name
    assert span.kind is SpanKind.INTERNAL
    assert span.parent is not None and span.parent.span_id == outer.context.span_id
    assert span.context.trace_id == outer.context.trace_id
    if error:
        assert span.status.status_code is StatusCode.ERROR
        if description is not None:
            assert span.status.description == description
    else:
        assert span.status.status_code is StatusCode.UNSET
    return span


# -- the upstream and the calls --------------------------------------------------------------




def ok(request: httpx.Request) -> httpx.Response:
    return httpx.Response(200, json={"choices": [{"message": {"content": "hi"}}], "usage": USAGE})


def status(code: int) -> Answer:
    return lambda request: httpx.Response(code, json={"error": {"message": "no"}})


class Upstream:
    """Answers requests in turn (the last answer repeats), keeping every request seen."""

    def __init__(self, *answers: Answer) -> None:
        self.answers = list(answers)
        self.seen: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        request.read()
        answer = self.answers[min(len(self.seen), len(self.answers) - 1)]
        self.seen.append(request)
        return answer(request)


def setup(
    *answers: Answer, policy: Policy | None = None, clock: FakeClock | None = None
) -> tuple[ResilientTransport, ProviderRegistry, FakeClock]:
    """A registry with ``openrouter`` (retries with a fixed 0.25 s backoff) over a mock upstream."""
    clock = clock or FakeClock(1000.0)
    retry = RetryPolicy(attempts=3, backoff_seconds=0.25, jitter=0.0)
    registry = ProviderRegistry(policy or Policy(retry=retry), clock=clock)
    registry.register("openrouter", hosts=["api.openrouter.test"])
    transport = ResilientTransport(
        registry, httpx.MockTransport(Upstream(*answers)), sleep=clock.sleep, async_sleep=clock.async_sleep
    )
    return transport, registry, clock


async def post(mode: str, transport: ResilientTransport, url: str = URL, **kwargs: Any) -> httpx.Response:
    """One POST of :data:`BODY` (unless given) through a client of ``mode``, inside a ``gateway`` span."""
    kwargs.setdefault("json", BODY)
    tracer = trace.get_tracer_provider().get_tracer("app")
    with tracer.start_as_current_span("gateway"):
        if mode == "sync":
            return post_sync(transport, url, **kwargs)
        async with httpx.AsyncClient(transport=transport) as client:
            return await client.post(url, **kwargs)


def post_sync(transport: ResilientTransport, url: str = URL, **kwargs: Any) -> httpx.Response:
    """One POST through a sync client (blocking: the upstream is a mock that answers at once)."""
    with httpx.Client(transport=transport) as client:
        return client.post(url, **kwargs)


# -- a plain call ------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
async def test_a_plain_call(mode: str, provider: TracerProvider, exporter: InMemorySpanExporter) -> None:
    """One span, a child of the current one: name, kind, exactly the SPEC's attributes, no events."""
    transport, _, _ = setup(ok)
    response = await post(mode, transport)
    assert response.status_code == 200
    span = assert_call_span(exporter, "resilience openrouter")
    assert attributes(span) == PLAIN
    assert type(attributes(span)["gen_ai.usage.input_tokens"]) is int
    assert events(span) == []


@pytest.mark.parametrize("mode", MODES)
async def test_the_span_is_never_made_current(
    mode: str, provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    """After the call the current span is still the caller's; two calls are two sibling spans."""
    transport, _, _ = setup(ok)
    tracer = provider.get_tracer("app")
    with tracer.start_as_current_span("gateway") as outer:
        for _ in range(2):
            if mode == "sync":
                post_sync(transport, json=BODY)
            else:
                async with httpx.AsyncClient(transport=transport) as client:
                    await client.post(URL, json=BODY)
            assert trace.get_current_span() is outer
    first, second = call_spans(exporter)
    assert first.parent is not None and second.parent is not None
    assert first.parent.span_id == second.parent.span_id == outer.get_span_context().span_id
    assert first.context.span_id != second.context.span_id


# -- a retried call ----------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
async def test_a_retried_call(mode: str, provider: TracerProvider, exporter: InMemorySpanExporter) -> None:
    """503 then 200: one span, one ``resilience.retry`` event (for attempt 2, the one about to be made)."""
    transport, _, _ = setup(status(503), ok)
    response = await post(mode, transport)
    assert response.status_code == 200
    span = assert_call_span(exporter, "resilience openrouter")
    assert events(span) == [
        ("resilience.retry",
         {"provider": "openrouter", "attempt": 2, "reason": "status_503", "wait_seconds": 0.25}),
    ]
    assert attributes(span) == {**PLAIN, "resilience.attempts": 2}


@pytest.mark.parametrize("mode", MODES)
async def test_a_call_that_ends_in_a_failure_is_an_error(
    mode: str, provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    """Three 503s: two retry events (attempts 2 and 3, backoff doubling), the 503 returned, status ERROR."""
    transport, _, _ = setup(status(503))
    response = await post(mode, transport)
    assert response.status_code == 503
    span = assert_call_span(exporter, "resilience openrouter", error=True, description="failure")
    assert events(span) == [
        ("resilience.retry",
         {"provider": "openrouter", "attempt": 2, "reason": "status_503", "wait_seconds": 0.25}),
        ("resilience.retry",
         {"provider": "openrouter", "attempt": 3, "reason": "status_503", "wait_seconds": 0.5}),
    ]
    assert attributes(span) == {
        "gen_ai.request.model": MODEL, "gen_ai.provider.name": "openrouter", "resilience.attempts": 3,
    }


@pytest.mark.parametrize("mode", MODES)
async def test_a_client_error_is_no_error_of_the_span(
    mode: str, provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    """A 400 is the caller's mistake, the provider is up: the span's status stays unset."""
    transport, _, _ = setup(status(400))
    response = await post(mode, transport)
    assert response.status_code == 400
    span = assert_call_span(exporter, "resilience openrouter")
    assert events(span) == []


# -- a rejected call ---------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
async def test_a_rejected_call(mode: str, provider: TracerProvider, exporter: InMemorySpanExporter) -> None:
    """An open breaker: CircuitOpenError, a ``resilience.rejected`` event, status ERROR, no attempt."""
    transport, registry, _ = setup(ok)
    registry.get("openrouter").open_for(30.0)
    with pytest.raises(CircuitOpenError) as caught:
        await post(mode, transport)
    span = assert_call_span(exporter, "resilience openrouter", error=True)
    assert span.status.description is not None
    assert span.status.description.startswith("CircuitOpenError: ")
    assert caught.value.retry_after == 30.0
    assert events(span) == [("resilience.rejected", {"provider": "openrouter", "retry_after": 30.0})]
    assert attributes(span) == {"gen_ai.request.model": MODEL, "resilience.attempts": 0}


# -- routes: failover and hedging --------------------------------------------------------------


def route_setup(
    answers: dict[str, Callable[[httpx.Request], Any]],
    policy: resilience.RoutePolicy | None = None,
    clock: Any = None,
) -> tuple[ResilientTransport, ProviderRegistry, resilience.Route]:
    """One provider per host in ``answers`` (named by its first label), a route ``chat`` over them."""
    registry = ProviderRegistry(Policy(retry=RetryPolicy(attempts=1)), clock=clock or FakeClock(1000.0))
    targets = []
    for host in answers:
        name = host.split(".")[0]
        registry.register(name, hosts=[host])
        targets.append(Target(name, base_url=f"https://{host}/v1", model=f"{name}-model"))
    route = registry.route("chat", targets, policy=policy or resilience.RoutePolicy(order="priority"))

    def handler(request: httpx.Request) -> Any:
        request.read()
        return answers[request.url.host](request)

    return ResilientTransport(registry, httpx.MockTransport(handler)), registry, route


ROUTE_BODY = {"model": "llama-3.3-70b", "messages": [{"role": "user", "content": "hi"}]}


@pytest.mark.parametrize("mode", MODES)
async def test_a_route_failover(mode: str, provider: TracerProvider, exporter: InMemorySpanExporter) -> None:
    """500 from the first target, 200 from the next: one span named after the route, a failover event."""
    transport, _, route = route_setup({"groq.test": status(500), "cerebras.test": ok})
    response = await post(mode, transport, f"{route.base_url}/chat/completions", json=ROUTE_BODY)
    assert response.status_code == 200
    span = assert_call_span(exporter, "resilience chat")
    assert events(span) == [
        ("resilience.failover",
         {"route": "chat", "from_provider": "groq", "to_provider": "cerebras", "reason": "status_500"}),
    ]
    assert attributes(span) == {
        "gen_ai.request.model": "llama-3.3-70b",  # as the caller sent it, not the target's model
        "resilience.route": "chat",
        "gen_ai.provider.name": "cerebras",  # the provider that answered
        "gen_ai.usage.input_tokens": 12,
        "gen_ai.usage.output_tokens": 34,
        "resilience.attempts": 2,
        "resilience.cost_usd": 0.125,
    }


@pytest.mark.parametrize("mode", MODES)
async def test_a_route_whose_targets_all_fail_is_an_error(
    mode: str, provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    """Both targets answer 500: the last 500 comes back, the span is an ERROR with one failover."""
    transport, _, route = route_setup({"groq.test": status(500), "cerebras.test": status(502)})
    response = await post(mode, transport, f"{route.base_url}/chat/completions", json=ROUTE_BODY)
    assert response.status_code == 502
    span = assert_call_span(exporter, "resilience chat", error=True, description="failure")
    assert [name for name, _ in events(span)] == ["resilience.failover"]
    assert attributes(span) == {
        "gen_ai.request.model": "llama-3.3-70b", "resilience.route": "chat",
        "gen_ai.provider.name": "cerebras", "resilience.attempts": 2,
    }


@pytest.mark.parametrize("mode", MODES)
async def test_a_route_that_no_target_admits(
    mode: str, provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    """Every target open: CircuitOpenError for the route, a ``resilience.rejected`` event for it, ERROR."""
    transport, registry, route = route_setup({"groq.test": ok, "cerebras.test": ok})
    registry.get("groq").open_for(10.0)
    registry.get("cerebras").open_for(20.0)
    with pytest.raises(CircuitOpenError):
        await post(mode, transport, f"{route.base_url}/chat/completions", json=ROUTE_BODY)
    span = assert_call_span(exporter, "resilience chat", error=True)
    assert events(span) == [("resilience.rejected", {"provider": "chat", "retry_after": 10.0})]
    assert attributes(span) == {
        "gen_ai.request.model": "llama-3.3-70b", "resilience.route": "chat", "resilience.attempts": 0,
    }






@VIRTUAL_TIME
async def test_a_hedge(provider: TracerProvider, exporter: InMemorySpanExporter) -> None:
    """The first target is slow, the hedge after 0.5 s answers: a ``resilience.hedge`` event, the
    hedge's provider answered, both attempts counted."""
    transport, _, route = route_setup(
        {"groq.test": slow_then(10.0, ok), "cerebras.test": slow_then(0.1, ok)},
        policy=resilience.RoutePolicy(order="priority", hedge_after_seconds=0.5),
        clock=anyio.current_time,
    )
    response = await post("async", transport, f"{route.base_url}/chat/completions", json=ROUTE_BODY)
    assert response.extensions["resilience.provider"] == "cerebras"
    span = assert_call_span(exporter, "resilience chat")
    assert events(span) == [("resilience.hedge", {"route": "chat", "provider": "cerebras"})]
    found = attributes(span)
    attempts = found.pop("resilience.attempts")
    assert found == {
        "gen_ai.request.model": "llama-3.3-70b", "resilience.route": "chat",
        "gen_ai.provider.name": "cerebras", "gen_ai.usage.input_tokens": 12,
        "gen_ai.usage.output_tokens": 34, "resilience.cost_usd": 0.125,
    }
    assert attempts == response.extensions["resilience.attempts"] == 2  # the hedge included


# -- a deadline ------------------------------------------------------------------------------




@VIRTUAL_TIME
async def test_a_deadline_async(provider: TracerProvider, exporter: InMemorySpanExporter) -> None:
    """A provider that takes 10 s, a deadline of 0.5 s: DeadlineExceededError, the event, status ERROR."""
    registry = ProviderRegistry(clock=anyio.current_time)
    registry.register("openrouter", hosts=["api.openrouter.test"])
    transport = ResilientTransport(registry, httpx.MockTransport(slow_then(10.0, ok)))
    with pytest.raises(DeadlineExceededError) as caught:
        await post("async", transport, extensions={"deadline": 0.5})
    span = assert_call_span(exporter, "resilience openrouter", error=True)
    assert span.status.description == f"DeadlineExceededError: {caught.value}"
    assert events(span) == [("resilience.deadline_exceeded", {})]
    found = attributes(span)
    attempts = found.pop("resilience.attempts")
    assert found == {"gen_ai.request.model": MODEL}
    assert attempts == 1  # the attempt was made; the deadline cut it


def test_a_deadline_sync(provider: TracerProvider, exporter: InMemorySpanExporter) -> None:
    """Sync: the read timeout capped at the deadline fires (as httpcore's would): the same span."""
    clock = FakeClock(1000.0)

    def timed_out(request: httpx.Request) -> httpx.Response:
        clock.advance(float(request.extensions["timeout"]["read"]))  # the capped read timeout passes
        raise httpx.ReadTimeout("timed out", request=request)

    transport, _, _ = setup(timed_out, clock=clock)
    tracer = provider.get_tracer("app")
    with (
        tracer.start_as_current_span("gateway"),
        httpx.Client(transport=transport) as client,
        pytest.raises(DeadlineExceededError) as caught,
    ):
        client.post(URL, json=BODY, extensions={"deadline": 0.5})
    assert caught.value.deadline == 0.5
    span = assert_call_span(exporter, "resilience openrouter", error=True)
    assert events(span) == [("resilience.deadline_exceeded", {})]
    found = attributes(span)
    attempts = found.pop("resilience.attempts")
    assert found == {"gen_ai.request.model": MODEL}
    assert attempts == 1  # the attempt was made; the deadline cut it


def test_a_route_deadline(provider: TracerProvider, exporter: InMemorySpanExporter) -> None:
    """A route whose target's read timeout fires at the route's deadline: DeadlineExceededError, the
    event on the route's span, status ERROR, the cut attempt counted."""
    clock = FakeClock(1000.0)

    def timed_out(request: httpx.Request) -> httpx.Response:
        clock.advance(float(request.extensions["timeout"]["read"]))
        raise httpx.ReadTimeout("timed out", request=request)

    transport, registry, route = route_setup(
        {"groq.test": timed_out, "cerebras.test": ok},
        policy=resilience.RoutePolicy(order="priority", deadline_seconds=0.5), clock=clock,
    )
    tracer = provider.get_tracer("app")
    with (
        tracer.start_as_current_span("gateway"),
        httpx.Client(transport=transport) as client,
        pytest.raises(DeadlineExceededError) as caught,
    ):
        client.post(f"{route.base_url}/chat/completions", json=ROUTE_BODY)
    assert caught.value.deadline == 0.5
    span = assert_call_span(exporter, "resilience chat", error=True)
    assert events(span) == [("resilience.deadline_exceeded", {})]
    assert attributes(span) == {
        "gen_ai.request.model": "llama-3.3-70b", "resilience.route": "chat", "resilience.attempts": 1,
    }
    assert registry.get("cerebras").snapshot().window.calls == 0  # no failover past the deadline


@pytest.mark.parametrize("mode", MODES)
async def test_a_deadline_that_ends_the_retries(
    mode: str, provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    """503 with a 0.25 s backoff and 0.1 s left: no retry, the 503 returned (status ERROR), no deadline
    event (the call did not raise: it ended with its last response, as when the budget is spent)."""
    transport, _, _ = setup(status(503))
    response = await post(mode, transport, extensions={"deadline": 0.1})
    assert response.status_code == 503
    span = assert_call_span(exporter, "resilience openrouter", error=True, description="failure")
    assert events(span) == []
    assert attributes(span)["resilience.attempts"] == 1


# -- a streamed call -------------------------------------------------------------------------


SSE_CHUNKS = [
    b'data: {"choices": [{"delta": {"content": "hi"}}]}\n\n',
    b'data: {"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 5, "cost": 0.25}}\n\n',
    b"data: [DONE]\n\n",
]


class Chunks(SyncStream, AsyncStream):
    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks = chunks

    def __iter__(self) -> Iterator[bytes]:
        yield from self.chunks

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for chunk in self.chunks:
            yield chunk


def sse(request: httpx.Request) -> httpx.Response:
    return httpx.Response(200, headers={"content-type": "text/event-stream"}, stream=Chunks(SSE_CHUNKS))


def stream_sync(transport: ResilientTransport, body: dict[str, Any], exporter: InMemorySpanExporter) -> bytes:
    """Stream ``body``'s answer through a sync client; no span has ended at the headers, one at the end."""
    with httpx.Client(transport=transport) as client, client.stream("POST", URL, json=body) as response:
        assert call_spans(exporter) == []  # the headers are here, the body is not
        data = b"".join(response.iter_bytes())
        assert len(call_spans(exporter)) == 1  # ended with the body
    return data


@pytest.mark.parametrize("mode", MODES)
async def test_a_streamed_call_span_ends_with_its_body(
    mode: str, provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    """The span is still open at the headers; it ends when the body does, with the stream's usage."""
    transport, _, _ = setup(sse)
    body = {**BODY, "stream": True}
    tracer = provider.get_tracer("app")
    with tracer.start_as_current_span("gateway"):
        if mode == "sync":
            data = stream_sync(transport, body, exporter)
        else:
            async with (
                httpx.AsyncClient(transport=transport) as client,
                client.stream("POST", URL, json=body) as response,
            ):
                assert call_spans(exporter) == []  # the headers are here, the body is not
                data = b"".join([chunk async for chunk in response.aiter_bytes()])
                assert len(call_spans(exporter)) == 1  # ended with the body
    assert data == b"".join(SSE_CHUNKS)
    span = assert_call_span(exporter, "resilience openrouter")
    assert attributes(span) == {
        "gen_ai.request.model": MODEL, "gen_ai.provider.name": "openrouter",
        "gen_ai.usage.input_tokens": 3, "gen_ai.usage.output_tokens": 5,
        "resilience.attempts": 1, "resilience.cost_usd": 0.25,
    }


@pytest.mark.parametrize("mode", MODES)
async def test_a_stream_dropped_unread_ends_its_span_at_the_next_call(
    mode: str, provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    """A stream never read nor closed, then collected: its span ends with the next traced call, not in GC.

    The collector takes no lock (ending a span may): the span waits, and the
    next traced call (or the transport's close) ends it, with its provider
    and its attempt, no usage and no error.
    """
    transport, _, _ = setup(sse, ok)
    body = {**BODY, "stream": True}
    tracer = provider.get_tracer("app")
    with tracer.start_as_current_span("gateway"):
        if mode == "sync":
            response = send_unread(transport, body)
        else:
            aclient = httpx.AsyncClient(transport=transport)
            response = await aclient.send(aclient.build_request("POST", URL, json=body), stream=True)
        assert response.status_code == 200
        del response
        gc.collect()
        assert call_spans(exporter) == []  # nothing ended while collecting
        await post(mode, transport)
    dropped, answered = sorted(call_spans(exporter), key=lambda span: span.start_time or 0)
    assert attributes(dropped) == {
        "gen_ai.request.model": MODEL, "gen_ai.provider.name": "openrouter", "resilience.attempts": 1,
    }
    assert dropped.status.status_code is StatusCode.UNSET
    assert attributes(answered) == PLAIN


def send_unread(transport: ResilientTransport, body: dict[str, Any]) -> httpx.Response:
    """Send ``body`` through a sync client and return the streamed response, unread and open."""
    client = httpx.Client(transport=transport)
    return client.send(client.build_request("POST", URL, json=body), stream=True)


def test_a_dropped_streams_span_ends_at_the_transports_close(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    """With no later call, closing the transport ends the span of a stream collected unfinished."""
    transport, _, _ = setup(sse)
    response = send_unread(transport, {**BODY, "stream": True})
    del response
    gc.collect()
    assert call_spans(exporter) == []
    transport.close()
    assert [span.name for span in call_spans(exporter)] == ["resilience openrouter"]


# -- exemplars -------------------------------------------------------------------------------


EXEMPLAR = re.compile(
    r'^gatewayz_provider_request_duration_seconds_bucket\{(?P<labels>[^}]*)\} \S+ '
    r'# \{trace_id="(?P<trace_id>[^"]*)"\} (?P<value>\S+)(?: (?P<ts>\S+))?$'
)


def exemplars(registry: ProviderRegistry) -> list[tuple[str, str, float]]:
    """``(labels, trace_id, value)`` of the duration histogram's exemplars, as OpenMetrics exposes them."""
    collector = CollectorRegistry()
    registry.register_metrics(collector)
    text = generate_latest(collector).decode()  # type: ignore[no-untyped-call]  # untyped in prometheus_client
    found = []
    for line in text.splitlines():
        match = EXEMPLAR.match(line)
        if match:
            found.append((match["labels"], match["trace_id"], float(match["value"])))
    return found


@pytest.mark.parametrize("mode", MODES)
async def test_the_duration_histogram_carries_the_spans_trace_id(
    mode: str, provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    """After a traced call, OpenMetrics shows a ``trace_id`` exemplar equal to the span's trace id."""
    transport, registry, _ = setup(ok)
    assert exemplars(registry) == []
    await post(mode, transport)
    span = only_call_span(exporter)
    trace_id = format(span.context.trace_id, "032x")
    found = exemplars(registry)
    assert found, "no exemplar on gatewayz_provider_request_duration_seconds"
    assert {t for _, t, _ in found} == {trace_id}
    assert all(re.fullmatch(r"[0-9a-f]{32}", t) for _, t, _ in found)
    assert all('provider="openrouter"' in labels for labels, _, _ in found)


async def test_each_traced_call_leaves_its_own_trace_id(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    """Two calls in two traces, in the same bucket: the latest call's trace id is the exemplar."""
    transport, registry, _ = setup(ok)
    tracer = provider.get_tracer("app")
    for _ in range(2):
        with tracer.start_as_current_span("gateway"):
            async with httpx.AsyncClient(transport=transport) as client:
                await client.post(URL, json=BODY)
    first, second = call_spans(exporter)
    assert first.context.trace_id != second.context.trace_id
    assert {t for _, t, _ in exemplars(registry)} == {format(second.context.trace_id, "032x")}


# -- without a tracer provider ---------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
async def test_without_a_tracer_provider_no_span_and_the_call_works(
    mode: str, exporter: InMemorySpanExporter, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No global provider set: the call is answered as ever, no span anywhere, no exemplar."""
    monkeypatch.setattr(trace, "_TRACER_PROVIDER", None)
    transport, registry, _ = setup(status(503), ok)
    if mode == "sync":
        response = post_sync(transport, json=BODY)
    else:
        async with httpx.AsyncClient(transport=transport) as client:
            response = await client.post(URL, json=BODY)
    assert response.status_code == 200
    assert json.loads(response.content)["usage"] == USAGE
    assert exporter.get_finished_spans() == ()
    assert exemplars(registry) == []
    snap = registry.get("openrouter").snapshot()
    assert snap.requests_total["success"] == 1 and snap.requests_total["failure"] == 1
