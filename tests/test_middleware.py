"""ResilienceMiddleware: passthrough, 503 on open circuits, request totals, route guards, streaming."""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import Message, Receive, Scope, Send

import resilience
from resilience import BreakerPolicy, CircuitOpenError, Policy, ProviderRegistry, ResilienceMiddleware
from resilience._asgi.middleware import MAX_RETRY_AFTER, find_circuit_open
from resilience.testing import FakeClock

pytestmark = pytest.mark.anyio


class SDKConnectionError(Exception):
    """What an SDK such as openai raises around an httpx transport error."""


def client_for(app: Any) -> httpx.AsyncClient:
    """An httpx client talking to ``app`` in process."""
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test")


def wrap(app: Starlette, registry: ProviderRegistry | None = None, **options: Any) -> Starlette:
    """``app`` with the middleware added the documented way (inside Starlette's error middleware)."""
    app.add_middleware(ResilienceMiddleware, registry=registry or ProviderRegistry(), **options)
    return app


def raising(make: Callable[[], BaseException]) -> Starlette:
    """A Starlette app whose one route raises what ``make`` builds."""

    async def endpoint(request: Request) -> Response:
        raise make()

    return Starlette(routes=[Route("/", endpoint), Route("/llm", endpoint)])


def open_error(retry_after: float = 2.3) -> CircuitOpenError:
    """A CircuitOpenError of provider openrouter."""
    return CircuitOpenError("openrouter", retry_after)


def wrapped_from() -> Exception:
    """An SDK error raised ``from`` the circuit error, as openai does."""
    try:
        raise open_error()
    except CircuitOpenError as exc:
        try:
            raise SDKConnectionError("Connection error.") from exc
        except SDKConnectionError as wrapper:
            return wrapper


def wrapped_context() -> Exception:
    """An error raised while handling the circuit error (implicit ``__context__``)."""
    try:
        raise open_error()
    except CircuitOpenError:
        try:
            raise SDKConnectionError("Connection error.")  # implicit __context__, as the test wants
        except SDKConnectionError as wrapper:
            return wrapper


def grouped() -> Exception:
    """An ExceptionGroup (a task group) holding a wrapped circuit error."""
    return ExceptionGroup("task group", [ValueError("other"), wrapped_from()])


def suppressed() -> Exception:
    """An error that hides its context with ``from None``."""
    try:
        raise open_error()
    except CircuitOpenError:
        try:
            raise SDKConnectionError("hidden") from None
        except SDKConnectionError as wrapper:
            return wrapper


# -- passthrough -------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["lifespan", "websocket"])
async def test_non_http_scopes_pass_through_untouched(kind: str) -> None:
    """Lifespan and websocket scopes reach the app with the very same scope, receive and send."""
    seen: list[tuple[Scope, Receive, Send]] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append((scope, receive, send))

    async def receive() -> Message:
        return {"type": f"{kind}.connect"}

    async def send(message: Message) -> None:
        pass

    scope: Scope = {"type": kind, "path": "/ws"}
    await ResilienceMiddleware(app, registry=ProviderRegistry())(scope, receive, send)
    assert seen == [(scope, receive, send)]
    assert seen[0][0] is scope and seen[0][1] is receive and seen[0][2] is send
    assert resilience.current_request() is None


async def test_lifespan_runs_through_a_starlette_app_with_the_middleware() -> None:
    """The app's own lifespan starts and stops behind the middleware."""
    events: list[str] = []

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        events.append("startup")
        yield
        events.append("shutdown")

    app = Starlette(lifespan=lifespan)
    app.add_middleware(ResilienceMiddleware, registry=ProviderRegistry())
    messages = iter([{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}])
    sent: list[str] = []

    async def receive() -> Message:
        return next(messages)

    async def send(message: Message) -> None:
        sent.append(message["type"])

    await app({"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}, receive, send)
    assert events == ["startup", "shutdown"]
    assert sent == ["lifespan.startup.complete", "lifespan.shutdown.complete"]


# -- open circuits become 503 --------------------------------------------------------


@pytest.mark.parametrize(
    ("make", "retry_after"),
    [
        pytest.param(lambda: open_error(2.3), 3, id="direct-ceil"),
        pytest.param(lambda: open_error(0.0), 1, id="at-least-1"),
        pytest.param(lambda: open_error(30.0), 30, id="whole"),
        pytest.param(wrapped_from, 3, id="sdk-wrapped-cause"),
        pytest.param(wrapped_context, 3, id="implicit-context"),
        pytest.param(grouped, 3, id="exception-group"),
    ],
)
async def test_circuit_open_before_start_becomes_503(
    make: Callable[[], BaseException], retry_after: int
) -> None:
    """An open circuit, bare or wrapped, is answered 503 with Retry-After and a JSON body."""
    app = wrap(raising(make))
    async with client_for(app) as client:
        response = await client.get("/")
    assert response.status_code == 503
    assert response.headers["retry-after"] == str(retry_after)
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {
        "error": {"type": "circuit_open", "provider": "openrouter", "retry_after": retry_after}
    }


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda: RuntimeError("boom"), id="unrelated"),
        pytest.param(suppressed, id="context-hidden-with-from-None"),
    ],
)
async def test_other_errors_propagate(make: Callable[[], BaseException]) -> None:
    """Errors without an open circuit behind them are not turned into 503."""
    app = wrap(raising(make))
    async with client_for(app) as client:
        with pytest.raises(type(make())):
            await client.get("/")


async def test_circuit_open_after_start_is_reraised_without_second_start() -> None:
    """Once the response has started the error goes on; no second http.response.start is sent."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"data: 1\n\n", "more_body": True})
        raise SDKConnectionError("mid-stream") from open_error()

    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    with pytest.raises(SDKConnectionError):
        await ResilienceMiddleware(app, registry=ProviderRegistry())({"type": "http"}, receive, send)
    assert [m["type"] for m in sent] == ["http.response.start", "http.response.body"]


def test_find_circuit_open_survives_cycles() -> None:
    """A cause/context cycle ends the search instead of looping."""
    first, second = ValueError("a"), ValueError("b")
    first.__context__, second.__context__ = second, first
    assert find_circuit_open(first) is None
    error = open_error()
    second.__cause__ = error
    assert find_circuit_open(first) is error


# -- request totals ---------------------------------------------------------------------


def spending_app() -> Starlette:
    """An app whose routes add upstream attempts to the request's totals, as the transport does."""

    async def spend(request: Request) -> Response:
        stats = resilience.current_request()
        assert stats is not None
        stats.add_attempt("openrouter", cost=0.25)
        stats.add_attempt("openrouter", cost=0.5, retry=True)
        return JSONResponse({"attempts": stats.attempts, "retries": stats.retries, "cost": stats.cost_usd})

    def spend_sync(request: Request) -> Response:
        stats = resilience.current_request()
        assert stats is not None
        stats.add_attempt("cerebras", cost=0.125)
        return JSONResponse({"attempts": stats.attempts, "cost": stats.cost_usd})

    return Starlette(routes=[Route("/spend", spend), Route("/sync", spend_sync)])


async def test_request_totals_reach_the_app_and_headers() -> None:
    """The app reads its own totals; expose_headers puts them on the response."""
    app = spending_app()
    app.add_middleware(ResilienceMiddleware, registry=ProviderRegistry(), expose_headers=True)
    async with client_for(app) as client:
        response = await client.get("/spend")
        sync = await client.get("/sync")
    assert response.json() == {"attempts": 2, "retries": 1, "cost": 0.75}
    assert response.headers["x-resilience-attempts"] == "2"
    assert response.headers["x-resilience-cost-usd"] == "0.750000"
    assert sync.json() == {"attempts": 1, "cost": 0.125}
    assert sync.headers["x-resilience-attempts"] == "1"
    assert resilience.current_request() is None


async def test_totals_are_per_request_and_headers_off_by_default() -> None:
    """Concurrent requests each get fresh totals; no headers unless asked."""
    app = spending_app()
    app.add_middleware(ResilienceMiddleware, registry=ProviderRegistry())
    async with client_for(app) as client:
        responses = await asyncio.gather(*(client.get("/spend") for _ in range(20)))
    assert all(r.json()["attempts"] == 2 for r in responses)
    assert all("x-resilience-attempts" not in r.headers for r in responses)


# -- route guards ------------------------------------------------------------------------


def status_app(status: int, headers: dict[str, str] | None = None) -> Starlette:
    """An app answering every request with ``status``."""

    async def endpoint(request: Request) -> Response:
        return PlainTextResponse("x", status_code=status, headers=headers)

    return Starlette(routes=[Route("/llm", endpoint), Route("/other", endpoint)])


def guarded(app: Starlette, registry: ProviderRegistry) -> Starlette:
    """``app`` with /llm standing for provider openrouter."""
    return wrap(app, registry, provider_for=lambda scope: "openrouter" if scope["path"] == "/llm" else None)


@pytest.mark.parametrize(
    ("status", "outcome"),
    [
        pytest.param(200, "success", id="200"),
        pytest.param(302, "success", id="302"),
        pytest.param(404, "client_error", id="404"),
        pytest.param(429, "throttled", id="429"),
        pytest.param(502, "failure", id="502"),
    ],
)
async def test_route_outcome_follows_the_status(status: int, outcome: str) -> None:
    """A guarded route's response status is recorded as the provider's outcome."""
    registry = ProviderRegistry()
    provider = registry.register("openrouter")
    async with client_for(guarded(status_app(status), registry)) as client:
        await client.get("/llm")
        await client.get("/other")
    totals = provider.snapshot().requests_total
    assert totals[outcome] == 1
    assert sum(totals.values()) == 1


async def test_route_uses_the_provider_policy_statuses() -> None:
    """failure_statuses of the provider's policy decide what a failure is."""
    registry = ProviderRegistry()
    provider = registry.register("openrouter", policy=Policy(failure_statuses=frozenset({418})))
    async with client_for(guarded(status_app(418), registry)) as client:
        await client.get("/llm")
    assert provider.snapshot().requests_total["failure"] == 1


async def test_route_guard_trips_and_then_rejects_without_calling_the_app() -> None:
    """Failing responses open the breaker; then the route is answered 503 and the app is not called."""
    calls = 0

    async def endpoint(request: Request) -> Response:
        nonlocal calls
        calls += 1
        return PlainTextResponse("down", status_code=503)

    registry = ProviderRegistry(Policy(breaker=BreakerPolicy(minimum_calls=4, open_seconds=12.5)))
    provider = registry.register("openrouter")
    async with client_for(guarded(Starlette(routes=[Route("/llm", endpoint)]), registry)) as client:
        statuses = [(await client.get("/llm")).status_code for _ in range(6)]
        rejected = await client.get("/llm")
    assert provider.state == "open"
    assert calls == 4
    assert statuses == [503] * 6
    assert rejected.json()["error"]["provider"] == "openrouter"
    assert 1 <= int(rejected.headers["retry-after"]) <= 13
    assert provider.snapshot().requests_total["rejected"] == 3


async def test_forced_open_route_is_rejected_at_once() -> None:
    """A forced-open provider's route never reaches the app."""
    registry = ProviderRegistry()
    registry.register("openrouter").force_open()

    async def endpoint(request: Request) -> Response:
        raise AssertionError("the app must not be called")

    async with client_for(guarded(Starlette(routes=[Route("/llm", endpoint)]), registry)) as client:
        response = await client.get("/llm")
    assert response.status_code == 503
    assert response.json()["error"]["type"] == "circuit_open"


async def test_route_duration_covers_the_whole_stream() -> None:
    """The recorded duration runs until the last body chunk, on the registry clock."""
    clock = FakeClock(100.0)
    registry = ProviderRegistry(clock=clock)
    provider = registry.register("openrouter")

    async def chunks() -> Any:
        yield b"data: 1\n\n"
        clock.advance(3.0)
        yield b"data: 2\n\n"
        clock.advance(4.0)

    async def endpoint(request: Request) -> Response:
        clock.advance(0.5)
        return StreamingResponse(chunks(), media_type="text/event-stream")

    async with client_for(guarded(Starlette(routes=[Route("/llm", endpoint)]), registry)) as client:
        response = await client.get("/llm")
    assert response.text == "data: 1\n\ndata: 2\n\n"
    assert provider.snapshot().duration_sum == pytest.approx(7.5)
    assert provider.snapshot().requests_total["success"] == 1


async def test_route_exception_is_a_failure_and_propagates() -> None:
    """An app error on a guarded route is recorded as a failure and raised on."""
    registry = ProviderRegistry()
    provider = registry.register("openrouter")
    async with client_for(guarded(raising(lambda: RuntimeError("boom")), registry)) as client:
        with pytest.raises(RuntimeError):
            await client.get("/llm")
    assert provider.snapshot().requests_total["failure"] == 1


def half_open(registry: ProviderRegistry, clock: FakeClock) -> resilience.Provider:
    """Register openrouter with one half-open trial slot and bring it to half_open."""
    provider = registry.register(
        "openrouter", policy=Policy(breaker=BreakerPolicy(half_open_max_calls=1, open_seconds=5.0))
    )
    provider.open_for(5.0)
    clock.advance(5.0)
    assert provider.state == "half_open"
    return provider


async def test_client_disconnect_releases_the_trial_slot() -> None:
    """A client that leaves mid-stream gives the half-open trial slot back; nothing is recorded."""
    clock = FakeClock()
    registry = ProviderRegistry(clock=clock)
    provider = half_open(registry, clock)
    never = asyncio.Event()

    async def forever() -> Any:
        yield b"data: 1\n\n"
        await never.wait()

    async def endpoint(request: Request) -> Response:
        return StreamingResponse(forever(), media_type="text/event-stream")

    messages = [{"type": "http.request", "body": b"", "more_body": False}]

    async def receive() -> Message:
        if messages:
            return messages.pop()
        await asyncio.sleep(0)  # the client goes away once the stream has begun
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        pass

    scope = {"type": "http", "method": "GET", "path": "/llm", "headers": [], "query_string": b""}
    await guarded(Starlette(routes=[Route("/llm", endpoint)]), registry)(scope, receive, send)
    assert sum(provider.snapshot().requests_total.values()) == 0
    provider.release(provider.admit())  # the slot is free again
    assert provider.state == "half_open"


async def test_wrapped_open_circuit_in_a_route_releases_the_slot() -> None:
    """A route failing on another open breaker gets 503 and does not count against its own provider."""
    clock = FakeClock()
    registry = ProviderRegistry(clock=clock)
    provider = half_open(registry, clock)
    async with client_for(guarded(raising(wrapped_from), registry)) as client:
        response = await client.get("/llm")
    assert response.status_code == 503
    assert sum(provider.snapshot().requests_total.values()) == 0
    provider.release(provider.admit())


async def test_provider_for_errors_leave_the_request_unguarded(caplog: pytest.LogCaptureFixture) -> None:
    """A failing provider_for is logged and the request goes on."""

    def broken(scope: Scope) -> str | None:
        raise KeyError("oops")

    app = wrap(status_app(200), provider_for=broken)
    async with client_for(app) as client:
        response = await client.get("/llm")
    assert response.status_code == 200
    assert "provider_for failed" in caplog.text


def test_bad_configuration_is_refused() -> None:
    """A missing registry or a non-callable provider_for fails at construction."""
    with pytest.raises(resilience.ConfigError, match="registry"):
        ResilienceMiddleware(status_app(200), registry=object())  # type: ignore[arg-type]
    with pytest.raises(resilience.ConfigError, match="provider_for"):
        ResilienceMiddleware(status_app(200), registry=ProviderRegistry(), provider_for="x")  # type: ignore[arg-type]


async def test_fastapi_add_middleware_converts_open_circuits() -> None:
    """In FastAPI, add_middleware(ResilienceMiddleware, registry=...) answers 503 for SDK-wrapped errors."""
    app = FastAPI()

    @app.get("/chat")
    async def chat() -> dict[str, str]:
        raise wrapped_from()

    app.add_middleware(ResilienceMiddleware, registry=ProviderRegistry())
    async with client_for(app) as client:
        response = await client.get("/chat")
    assert response.status_code == 503
    assert response.json()["error"]["provider"] == "openrouter"


# -- a real server ------------------------------------------------------------------------


def sse_app(registry: ProviderRegistry, clock: FakeClock | None = None) -> tuple[Starlette, dict[str, Any]]:
    """An SSE route that sends its second event only when the test sets ``state["gate"]``."""
    state: dict[str, Any] = {"sent": []}

    async def events() -> Any:
        state["sent"].append("one")
        yield b"data: one\n\n"
        await state["gate"].wait()
        state["sent"].append("two")
        yield b"data: two\n\n"

    async def endpoint(request: Request) -> Response:
        state["loop"], state["gate"] = asyncio.get_running_loop(), asyncio.Event()
        return StreamingResponse(events(), media_type="text/event-stream")

    app = Starlette(routes=[Route("/llm", endpoint), Route("/sse", endpoint)])
    return guarded(app, registry), state


@pytest.mark.integration
@pytest.mark.parametrize("path", [pytest.param("/sse", id="plain"), pytest.param("/llm", id="route-guarded")])
def test_sse_streams_through_uvicorn_unbuffered(path: str) -> None:
    """The first event reaches the client before the upstream sends its second."""
    from integration._server import serve

    clock = FakeClock()
    registry = ProviderRegistry(clock=clock)
    provider = registry.register("openrouter")
    app, state = sse_app(registry)
    with serve(app) as url, httpx.stream("GET", url + path, timeout=10.0) as response:
        lines = response.iter_lines()
        first = next(line for line in lines if line)
        assert first == "data: one"
        assert state["sent"] == ["one"]  # the second event does not exist yet
        clock.advance(7.0)
        state["loop"].call_soon_threadsafe(state["gate"].set)
        rest = [line for line in lines if line]
    assert rest == ["data: two"]
    assert state["sent"] == ["one", "two"]
    guarded_route = path == "/llm"
    assert provider.snapshot().requests_total["success"] == int(guarded_route)
    assert provider.snapshot().duration_sum == (7.0 if guarded_route else 0.0)


@pytest.mark.integration
def test_open_circuit_becomes_503_through_uvicorn() -> None:
    """Over real HTTP, an SDK-wrapped open circuit is a 503 with Retry-After and the JSON error."""
    from integration._server import serve

    with serve(wrap(raising(wrapped_from), expose_headers=True)) as url:
        response = httpx.get(url + "/", timeout=10.0)
    assert response.status_code == 503
    assert response.headers["retry-after"] == "3"
    assert response.headers["x-resilience-attempts"] == "0"
    assert response.json()["error"] == {"type": "circuit_open", "provider": "openrouter", "retry_after": 3}


def test_guarded_route_reads_retry_after_dates_too() -> None:
    """A guarded route's Retry-After is read as seconds or as an HTTP date (a past date is 0)."""
    from resilience._asgi.middleware import _retry_after

    assert _retry_after([(b"Retry-After", b"7")]) == 7.0
    assert _retry_after([(b"retry-after", b"Wed, 21 Oct 2015 07:28:00 GMT")]) == 0.0
    assert _retry_after([(b"retry-after", b"soon")]) is None
    assert _retry_after([(b"content-type", b"text/plain")]) is None


async def test_unbounded_retry_after_is_capped_not_a_500() -> None:
    """A user's CircuitOpenError(retry_after=inf) still answers 503 with a capped whole-second Retry-After."""
    async with client_for(wrap(raising(lambda: CircuitOpenError("openrouter", math.inf)))) as client:
        response = await client.get("/")
    assert response.status_code == 503
    assert response.headers["retry-after"] == str(MAX_RETRY_AFTER)
    assert response.json()["error"]["retry_after"] == MAX_RETRY_AFTER


async def test_guarded_route_calling_its_own_provider_in_half_open_closes_it() -> None:
    """provider_for on a route whose handler calls the same provider through the transport: the inner
    call rides on the route's trial slot, is served, and the route's success closes the breaker."""
    clock = FakeClock()
    registry = ProviderRegistry(clock=clock)
    provider = half_open(registry, clock)
    upstream = httpx.MockTransport(lambda request: httpx.Response(200, json={"ok": True}))
    inner = httpx.AsyncClient(transport=resilience.ResilientTransport(registry, transport=upstream))

    async def endpoint(request: Request) -> Response:
        answer = await inner.post("https://openrouter.ai/api/v1/chat", extensions={"provider": "openrouter"})
        return PlainTextResponse(answer.text, status_code=answer.status_code)

    async with client_for(guarded(Starlette(routes=[Route("/llm", endpoint)]), registry)) as client:
        response = await client.get("/llm")
        assert response.status_code == 200
        assert provider.state == "closed"
        assert (await client.get("/llm")).status_code == 200
    await inner.aclose()
    assert provider.snapshot().requests_total["success"] == 4  # two routes, two inner calls
    assert provider.snapshot().requests_total["rejected"] == 0


# -- deadlines ---------------------------------------------------------------------------


def late(deadline: float = 2.5) -> resilience.DeadlineExceededError:
    """A DeadlineExceededError of provider openrouter, as the transport raises it."""
    return resilience.DeadlineExceededError("late", deadline=deadline, provider="openrouter")


def late_wrapped() -> Exception:
    """An SDK timeout error raised ``from`` the deadline error, as openai's APITimeoutError is."""
    try:
        raise late()
    except resilience.DeadlineExceededError as exc:
        try:
            raise SDKConnectionError("Request timed out.") from exc
        except SDKConnectionError as wrapper:
            return wrapper


def late_in_context() -> Exception:
    """An error raised while handling the deadline error (implicit ``__context__``)."""
    try:
        raise late()
    except resilience.DeadlineExceededError:
        try:
            raise SDKConnectionError("Request timed out.")  # implicit __context__, as the test wants
        except SDKConnectionError as wrapper:
            return wrapper


def deadline_app() -> Starlette:
    """An app answering with the inbound deadline its request carries, as the transport would read it."""

    async def endpoint(request: Request) -> Response:
        stats = resilience.current_request()
        assert stats is not None
        deadline = stats.deadline
        return JSONResponse(None if deadline is None else list(deadline))

    return Starlette(routes=[Route("/llm", endpoint)])


async def test_deadline_header_sets_the_inbound_deadline_on_the_registry_clock() -> None:
    """With deadline_header, a request's header becomes Deadline(clock() + seconds, seconds, "inbound")."""
    app = deadline_app()
    registry = ProviderRegistry(clock=FakeClock(500.0))
    app.add_middleware(ResilienceMiddleware, registry=registry, deadline_header="X-Request-Timeout")
    async with client_for(app) as client:
        timed = await client.get("/llm", headers={"x-request-timeout": "2.5"})
        untimed = await client.get("/llm")
    assert timed.json() == [502.5, 2.5, "inbound"]
    assert untimed.json() is None


async def test_deadline_header_is_off_by_default() -> None:
    """Without deadline_header no header is read."""
    async with client_for(wrap(deadline_app())) as client:
        response = await client.get("/llm", headers={"x-request-timeout": "2"})
    assert response.json() is None


@pytest.mark.parametrize("value", ["0", "-1", "nan", "inf", "soon", "1e3", ""])
async def test_malformed_deadline_header_is_ignored_and_counted(value: str) -> None:
    """A malformed or non-positive value sets no deadline; the middleware (and a guarded route's
    provider) count it."""
    registry = ProviderRegistry()
    provider = registry.register("openrouter")
    middleware: list[ResilienceMiddleware] = []

    def build(app: Any) -> ResilienceMiddleware:
        made = ResilienceMiddleware(
            app, registry=registry, deadline_header="x-request-timeout",
            provider_for=lambda scope: "openrouter" if scope["path"] == "/llm" else None,
        )
        middleware.append(made)
        return made

    async with client_for(build(deadline_app())) as client:
        response = await client.get("/llm", headers={"x-request-timeout": value})
    assert response.json() is None
    assert middleware[0].errors == {"deadline_header": 1}
    assert provider.errors == {"deadline_header": 1}


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(late, id="bare"),
        pytest.param(late_wrapped, id="raised-from"),
        pytest.param(late_in_context, id="implicit-context"),
        pytest.param(lambda: ExceptionGroup("task group", [ValueError("x"), late_wrapped()]), id="group"),
    ],
)
async def test_deadline_exceeded_becomes_504(make: Callable[[], BaseException]) -> None:
    """A DeadlineExceededError, bare or wrapped by an SDK, is answered 504 with the 503's body shape."""
    async with client_for(wrap(raising(make))) as client:
        response = await client.get("/")
    assert response.status_code == 504
    assert response.headers["content-type"] == "application/json"
    assert response.headers["cache-control"] == "no-store"
    assert "retry-after" not in response.headers
    body = {"type": "deadline_exceeded", "provider": "openrouter", "deadline": 2.5}
    assert response.json() == {"error": body}


async def test_deadline_exceeded_after_start_is_reraised() -> None:
    """Once the response has started the error goes on; no second start is sent."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        raise late_wrapped()

    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    with pytest.raises(SDKConnectionError):
        await ResilienceMiddleware(app, registry=ProviderRegistry())({"type": "http"}, receive, send)
    assert [m["type"] for m in sent] == ["http.response.start"]


async def test_deadline_exceeded_in_a_guarded_route_is_not_held_against_it() -> None:
    """A route whose call ran out of time answers 504 and records no outcome for its provider."""
    registry = ProviderRegistry()
    provider = registry.register("openrouter")
    async with client_for(guarded(raising(late_wrapped), registry)) as client:
        response = await client.get("/llm")
    assert response.status_code == 504
    assert sum(provider.snapshot().requests_total.values()) == 0


async def test_deadline_504_carries_the_totals_headers_when_exposed() -> None:
    """With expose_headers the 504 carries the attempts and cost headers too."""
    async with client_for(wrap(raising(late), expose_headers=True)) as client:
        response = await client.get("/")
    assert response.status_code == 504
    assert response.headers["x-resilience-attempts"] == "0"


@pytest.mark.parametrize("header", ["", " ", "x request", "tëmps", 3])
def test_bad_deadline_header_is_refused(header: object) -> None:
    """deadline_header must be an HTTP header name; the error names the field."""
    with pytest.raises(resilience.ConfigError, match="deadline_header"):
        ResilienceMiddleware(status_app(200), registry=ProviderRegistry(), deadline_header=header)  # type: ignore[arg-type]
