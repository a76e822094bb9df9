"""The demo gateway: a Starlette app wired as the SPEC's "Wiring", forwarding to the providers.

``POST /v1/chat/completions`` takes an OpenAI-style body; the provider is
the body's ``"provider"`` field or the ``x-provider`` header, or the route
(:data:`ROUTE`, over the ``outage`` and ``healthy`` providers) is the body's
``"route"`` field or the ``x-route`` header. The call goes out through one
shared ``httpx2.AsyncClient(transport=ResilientTransport(registry))``: to the
provider's URL, or to ``route.base_url + "/chat/completions"``, where the
transport picks the target and fails over. An open breaker (or a route no
target of which admits the call) raises :class:`resilience.CircuitOpenError`,
which :class:`resilience.ResilienceMiddleware` answers with 503,
``Retry-After`` and the error type ``circuit_open``.

A body with ``"stream": true`` is streamed through as it arrives. Answers
carry ``x-resilience-provider`` (the provider that served it) and
``x-resilience-attempts`` (attempts made, failovers and retries included).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass

import httpx2
from prometheus_client import CollectorRegistry, make_asgi_app
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.types import ASGIApp, Receive, Scope, Send

import resilience
from resilience._core import clock as _clock

DASHBOARD_PATH = "/ops"
COMPLETIONS_PATH = "/v1/chat/completions"
DEMO_BREAKER = resilience.BreakerPolicy(
    failure_rate_threshold=0.5,
    minimum_calls=20,
    window_seconds=10.0,
    consecutive_failures=8,   # a provider that went down hard trips at once
    open_seconds=3.0,         # the first trial comes 3 s after the trip ...
    max_open_seconds=6.0,     # ... the next ones 6 s apart: shorter than outage's up phase
)
DEMO_POLICY = resilience.Policy(
    breaker=DEMO_BREAKER,
    retry=resilience.RetryPolicy(
        attempts=2, backoff_seconds=0.05, max_backoff_seconds=0.2, max_retry_after_seconds=1.0,
    ),
    latency_slo_seconds=1.0,
    stats_window_seconds=20.0,
)
"""Tuned so that trips, rejections and recoveries show within seconds.

Trials come at most ``max_open_seconds`` apart, and the ``outage`` provider
stays up for longer than that (:data:`resilience.demo.upstreams.OUTAGE`), so
one trial always lands in its up phase: it trips, goes half-open and closes
again in every cycle.
"""
PROVIDER_POLICIES = {
    "outage": resilience.Policy(breaker=dataclasses.replace(DEMO_BREAKER, success_threshold=16)),
    "throttled": resilience.Policy(hold_when_exhausted=True),
    "streaming": resilience.Policy(first_token_timeout=2.0, idle_timeout=1.0),
}
"""Per-provider parts over :data:`DEMO_POLICY`. ``outage`` closes after 16 trial successes in a
row: at the demo's 13 requests/s to it (its own and the route's), half-open lasts over a second,
long enough for the once-a-second progress line to show it (one trial that fails still reopens
it at once). ``throttled`` holds its calls while the quota its headers announce is exhausted: one
429 per quota window reaches it, the rest are rejected at once (the progress line's ``rejected``).
``streaming`` bounds the wait for its first content event and between content events
(keepalives end neither wait)."""
ROUTE = "demo-route"
ROUTE_TARGETS = ("outage", "healthy")
"""The route's targets, tried in this order: ``outage`` first while its breaker admits calls, so
its outages fail over to ``healthy`` live (and its trips turn the route to ``healthy`` at once)."""
ROUTE_MODEL = "demo-small"
ROUTE_POLICY = resilience.RoutePolicy(order="priority")
STREAMED_HEADERS = ("content-type", "cache-control", "retry-after")
"""Upstream headers the gateway passes on (besides its own ``x-resilience-*``)."""


@dataclass
class Gateway:
    """The gateway app and what it is wired to."""

    app: Starlette
    registry: resilience.ProviderRegistry
    metrics: CollectorRegistry
    client: httpx2.AsyncClient

    async def aclose(self) -> None:
        """Close the outgoing client and its connections."""
        await self.client.aclose()


class _Asgi:
    """Lets a plain ASGI function sit in a ``Route`` (which would take a function for an endpoint)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.app(scope, receive, send)


def build_gateway(
    upstreams: Mapping[str, str],
    transport: httpx2.AsyncBaseTransport | None = None,
    *,
    clock: _clock.Clock = _clock.monotonic,
    async_sleep: _clock.AsyncSleep | None = None,
) -> Gateway:
    """The gateway, forwarding to ``upstreams`` (provider name -> base URL).

    Args:
        upstreams: provider name -> base URL.
        transport: what the resilient transport sends through (tests); real HTTP by default.
        clock: the registry's clock (tests pass a ``FakeClock``).
        async_sleep: how retries wait (tests pass ``FakeClock.async_sleep``).
    """
    registry = resilience.ProviderRegistry(default_policy=DEMO_POLICY, clock=clock)
    for name in upstreams:
        registry.register(name, policy=PROVIDER_POLICIES.get(name))
    if all(name in upstreams for name in ROUTE_TARGETS):
        registry.route(ROUTE, targets=[
            resilience.Target(name, base_url=upstreams[name] + "/v1", model=ROUTE_MODEL,
                              headers={"authorization": f"Bearer demo-key-for-{name}"})
            for name in ROUTE_TARGETS
        ], policy=ROUTE_POLICY)
    metrics = CollectorRegistry()
    registry.register_metrics(metrics)

    client = httpx2.AsyncClient(
        transport=resilience.ResilientTransport(registry, transport, async_sleep=async_sleep),
        timeout=httpx2.Timeout(5.0),
    )
    forward = _forwarder(client, dict(upstreams), registry)

    app = Starlette(routes=[
        Mount(DASHBOARD_PATH, app=resilience.dashboard_router(registry)),
        Route("/metrics", _Asgi(make_asgi_app(registry=metrics))),
        Route(COMPLETIONS_PATH, forward, methods=["POST"]),
        Route("/", _index),
    ])
    app.add_middleware(resilience.ResilienceMiddleware, registry=registry)
    return Gateway(app=app, registry=registry, metrics=metrics, client=client)


def _forwarder(
    client: httpx2.AsyncClient, upstreams: dict[str, str], registry: resilience.ProviderRegistry
) -> Callable[[Request], Awaitable[Response]]:
    async def chat_completions(request: Request) -> Response:
        """Forward one chat completion to the provider, or the route, it names."""
        try:
            body = json.loads(await request.body() or b"{}")
        except ValueError:
            return JSONResponse({"error": "the body must be JSON"}, status_code=400)
        if not isinstance(body, dict):
            return JSONResponse({"error": "the body must be a JSON object"}, status_code=400)
        route_name = request.headers.get("x-route") or body.get("route")
        if route_name is not None:
            route = next((r for r in registry.routes() if r.name == route_name), None)
            if route is None:
                routes = [r.name for r in registry.routes()]
                return JSONResponse({"error": f"unknown route; one of {routes}"}, status_code=404)
            name, url = route.name, route.base_url + "/chat/completions"
            extensions: dict[str, str] = {}
        else:
            provider = request.headers.get("x-provider") or body.get("provider")
            if not isinstance(provider, str) or provider not in upstreams:
                known = sorted(upstreams)
                return JSONResponse({"error": f"unknown provider; one of {known}"}, status_code=404)
            name, url, extensions = provider, upstreams[provider] + COMPLETIONS_PATH, {"provider": provider}
        outgoing = client.build_request("POST", url, json=body, extensions=extensions)
        try:
            upstream = await client.send(outgoing, stream=True)
        except httpx2.HTTPError as exc:  # CircuitOpenError is left to the middleware: 503
            return JSONResponse({"error": f"{name} unreachable: {type(exc).__name__}"}, status_code=502)
        headers = {k: v for k, v in upstream.headers.items() if k in STREAMED_HEADERS}
        served_by = upstream.extensions.get("resilience.provider")
        if served_by is not None:
            headers["x-resilience-provider"] = str(served_by)
            headers["x-resilience-attempts"] = str(upstream.extensions.get("resilience.attempts", 1))
        sse = upstream.headers.get("content-type", "").startswith("text/event-stream")
        if sse and body.get("stream") is True:
            return StreamingResponse(_relay(upstream, name), upstream.status_code, headers,
                                     background=BackgroundTask(upstream.aclose))
        try:
            content = await upstream.aread()
        except httpx2.HTTPError as exc:
            return JSONResponse({"error": f"{name} broke off: {type(exc).__name__}"}, status_code=502)
        finally:
            await upstream.aclose()
        headers.setdefault("content-type", "application/json")
        return Response(content, upstream.status_code, headers)

    return chat_completions


async def _relay(upstream: httpx2.Response, name: str) -> AsyncIterator[bytes]:
    """The upstream stream's bytes as they come; a fault after they began ends it with an error event,
    never as if complete (as providers report mid-stream trouble in-band)."""
    try:
        async for chunk in upstream.aiter_bytes():  # decoded: content-encoding is not passed on
            yield chunk
    except httpx2.HTTPError as exc:
        error = {"type": "error", "error": {"type": "gateway_stream_error",
                                            "message": f"{name}: {type(exc).__name__}"}}
        yield b"event: error\ndata: " + json.dumps(error).encode() + b"\n\n"
    finally:
        await upstream.aclose()


async def _index(request: Request) -> Response:
    return JSONResponse({
        "dashboard": f"{DASHBOARD_PATH}/health/dashboard/ui",
        "health": f"{DASHBOARD_PATH}/health/dashboard",
        "models": f"{DASHBOARD_PATH}/models/stats",
        "metrics": "/metrics",
        "completions": f"POST {COMPLETIONS_PATH}",
        "route": f'POST {COMPLETIONS_PATH} {{"route": "{ROUTE}", ...}}',
    })
