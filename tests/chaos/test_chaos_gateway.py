"""Chaos through ``ResilienceMiddleware``: a gateway app relaying to the faulty upstream via the transport.

Inbound traffic comes from 200 coroutines through ``httpx.ASGITransport`` or
from 12 threads through a second real uvicorn. Besides the invariants of
:mod:`chaos._invariants`, every inbound request gets a response (the
gateway maps upstream errors to 502/504, the middleware an open circuit to
503 with ``Retry-After``), and the per-request ``x-resilience-attempts`` and
``x-resilience-cost-usd`` headers add up to the provider counters. On each
HTTP stack (``stack``): inbound and upstream clients are both of it.
"""

from __future__ import annotations

import contextlib
import random
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import anyio
import httpx
import pytest
import uvicorn
from chaos._drive import STREAMING_IDLE, Bases, Mix, Run, chaos_policy, draw, join, limits, timeout
from chaos._invariants import Resources, Tally, check_scenario, recorded
from chaos._upstream import Upstream
from integration._server import ThreadedServer
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from resilience import ProviderRegistry, ResilienceMiddleware, ResilientTransport

pytestmark = [pytest.mark.chaos, pytest.mark.integration, pytest.mark.anyio, pytest.mark.usefixtures("stack")]

MIX: Mix = [
    ("/ok/1", 4), ("/sse/2", 2), ("/status/500", 1), ("/status/503", 1), ("/throttle/0.02", 1),
    ("/hang", 1), ("/reset", 1), ("/reuse/3", 2), ("/stall", 1), ("/flap/1", 2), ("/refused", 1),
]
GATEWAY_STATUSES = {200, 429, 500, 502, 503, 504}


def gateway(registry: ProviderRegistry, bases: Bases) -> Starlette:
    """A relay: ``POST /v1/<fault path>`` goes upstream through ``ResilientTransport``."""

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        transport = ResilientTransport(registry, httpx.AsyncHTTPTransport(limits=limits(httpx)))
        async with httpx.AsyncClient(transport=transport) as client:
            app.state.client = client
            yield

    async def relay(request: Request) -> Response:
        path = "/" + request.path_params["path"]
        url, extensions = bases.url(path)
        client: httpx.AsyncClient = request.app.state.client
        try:
            upstream = await client.post(
                url, content=await request.body(), headers={"content-type": "application/json"},
                timeout=timeout(httpx, path), extensions=extensions,
            )
        except httpx.TimeoutException:
            return JSONResponse({"error": "upstream timed out"}, status_code=504)
        except httpx.HTTPError as exc:
            return JSONResponse({"error": type(exc).__name__}, status_code=502)
        # a CircuitOpenError goes on to the middleware, which answers 503
        media = upstream.headers.get("content-type")
        return Response(upstream.content, status_code=upstream.status_code, media_type=media)

    app = Starlette(routes=[Route("/v1/{path:path}", relay, methods=["POST"])], lifespan=lifespan)
    app.add_middleware(ResilienceMiddleware, registry=registry, expose_headers=True)
    return app


@dataclass
class Inbound:
    """What the gateway's callers saw, beyond the statuses in ``run``."""

    run: Run = field(default_factory=Run)
    attempts: int = 0
    cost_usd: float = 0.0
    circuit_open: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, response: httpx.Response) -> None:
        """Tally one gateway response and check its shape."""
        status = response.status_code
        assert status in GATEWAY_STATUSES, status
        attempts = int(response.headers["x-resilience-attempts"])
        cost = float(response.headers["x-resilience-cost-usd"])
        circuit = status == 503 and response.json().get("error", {}).get("type") == "circuit_open"
        if circuit:
            assert int(response.headers["retry-after"]) >= 1
        with self.lock:
            self.attempts += attempts
            self.cost_usd += cost
            self.circuit_open += circuit
        self.run.add(f"status_{status}")


def body(n: int) -> dict[str, Any]:
    """An inbound chat request."""
    return {"model": f"m{n % 3}", "messages": [{"role": "user", "content": "hi"}]}


async def inbound_async(app: Starlette, inbound: Inbound, *, workers: int = 200, each: int = 1) -> int:
    """``workers`` coroutines calling the gateway in process (ASGITransport)."""
    transport = httpx.ASGITransport(app=app)
    base = "http://gateway"
    async with httpx.AsyncClient(transport=transport, base_url=base, timeout=timeout(httpx)) as client:

        async def worker(index: int) -> None:
            rng = random.Random(index)
            for n in range(each):
                inbound.add(await client.post("/v1" + draw(MIX, rng), json=body(n)))

        async with anyio.create_task_group() as group:
            for index in range(workers):
                group.start_soon(worker, index)
    return workers * each


def inbound_threads(
    base: str, inbound: Inbound, *, workers: int = 12, each: int = 12
) -> list[threading.Thread]:
    """Start ``workers`` threads calling the gateway over real HTTP, and one that closes their client."""
    client = httpx.Client(base_url=base, timeout=timeout(httpx))

    def worker(index: int) -> None:
        rng = random.Random(1000 + index)
        try:
            for n in range(each):
                inbound.add(client.post("/v1" + draw(MIX, rng), json=body(n)))
        except Exception as exc:  # anything at all: the invariant counts it
            inbound.run.add("escaped", escaped=repr(exc))

    callers = [threading.Thread(target=worker, args=(i,), name=f"chaos-inbound-{i}") for i in range(workers)]

    def close() -> None:
        for thread in callers:
            thread.join()
        client.close()

    started = [*callers, threading.Thread(target=close, name="chaos-inbound-closer")]
    for thread in started:
        thread.start()
    return started


def assert_headers_add_up(registry: ProviderRegistry, inbound: Inbound, tally: Tally) -> None:
    """Per-request attempts and cost headers sum to the providers' counters."""
    assert inbound.attempts == sum(map(recorded, registry.providers()))
    assert inbound.cost_usd == sum(p.snapshot().cost_total for p in registry.providers())
    rejected = sum(p.snapshot().requests_total["rejected"] for p in registry.providers())
    assert inbound.circuit_open <= rejected
    tally.checked("gateway_headers_add_up")


async def scenario(
    name: str, bases: Bases, upstream: Upstream, tally: Tally, drive: Callable[..., Any]
) -> None:
    """Run one gateway scenario and check everything."""
    before = Resources.now()
    registry = ProviderRegistry(chaos_policy(idle_timeout=STREAMING_IDLE))
    app, inbound = gateway(registry, bases), Inbound()
    started = time.monotonic()
    with anyio.fail_after(120):
        expected = await drive(app, inbound)
    seconds = time.monotonic() - started
    await check_scenario(name, registry, upstream, inbound.run, expected, before, tally, seconds)
    assert set(inbound.run.outcomes) <= {f"status_{s}" for s in GATEWAY_STATUSES}
    tally.checked("gateway_always_answers")
    assert_headers_add_up(registry, inbound, tally)


async def test_gateway_in_process_200_coroutines(
    stack: ModuleType, upstream: Upstream, bases: Bases, tally: Tally
) -> None:
    """200 coroutines via ASGITransport into the middleware-wrapped gateway: all answered, numbers exact."""

    async def drive(app: Starlette, inbound: Inbound) -> int:
        async with app.router.lifespan_context(app):
            return await inbound_async(app, inbound)

    await scenario(f"gateway[asgi,{stack.__name__}]", bases, upstream, tally, drive)


async def test_gateway_on_uvicorn_12_threads(
    stack: ModuleType, upstream: Upstream, bases: Bases, tally: Tally
) -> None:
    """12 threads over real HTTP into the gateway on its own uvicorn: all answered, numbers exact."""

    async def drive(app: Starlette, inbound: Inbound) -> int:
        config = uvicorn.Config(
            app, host="127.0.0.1", port=0, lifespan="on", log_level="critical", ws="none",
            timeout_graceful_shutdown=5,
        )
        with ThreadedServer(config).run_in_thread() as base:
            await join(inbound_threads(base, inbound))
        return 12 * 12

    await scenario(f"gateway[uvicorn,{stack.__name__}]", bases, upstream, tally, drive)
