"""One gateway replica for the shared-state test: ``python tests/shared_state_replica.py REDIS_URL REFRESH``.

The SPEC wiring (``ResilientTransport``, ``ResilienceMiddleware``, ``dashboard_router``) in
front of one provider, ``upstream``, whose server is an ``httpx.MockTransport`` inside this
process; the breakers are shared through Redis by a ``SharedBreakerState`` under the app's
lifespan. Prints its port on stdout once serving; stops on SIGTERM.

* ``POST /call`` — one call to the upstream: ``200 {"status": <upstream status>}``, or ``503``
  from the middleware while the breaker is open;
* ``POST /mode/ok`` / ``POST /mode/fail`` — the upstream answers 200 / 500 from now on;
* ``POST /reset`` — ``provider.reset()``;
* ``GET /state`` — breaker state, shared-state health, upstream hits, provider errors;
* ``/ops/health/dashboard`` — the dashboard JSON.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import AsyncIterator
from typing import Any

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Mount, Route

import resilience

PROVIDER = "upstream"


def build(redis_url: str, refresh: float) -> Starlette:
    """The replica's app."""
    registry = resilience.ProviderRegistry(
        resilience.Policy(
            breaker=resilience.BreakerPolicy(
                failure_rate_threshold=0.5, minimum_calls=4, open_seconds=120.0
            ),
            retry=resilience.RetryPolicy(attempts=1),
        )
    )
    provider = registry.register(PROVIDER, hosts=["upstream.test"])
    shared = resilience.SharedBreakerState(
        redis_url, registry=registry, refresh_seconds=refresh, timeout_seconds=0.5
    )
    upstream: dict[str, Any] = {"mode": "ok", "hits": 0}

    def answer(request: httpx.Request) -> httpx.Response:
        upstream["hits"] += 1
        return httpx.Response(200 if upstream["mode"] == "ok" else 500, json={"ok": True})

    client = httpx.AsyncClient(
        transport=resilience.ResilientTransport(registry, transport=httpx.MockTransport(answer))
    )

    async def call(request: Request) -> JSONResponse:
        response = await client.post("https://upstream.test/v1/chat/completions", json={"model": "m"})
        return JSONResponse({"status": response.status_code})

    async def mode(request: Request) -> JSONResponse:
        upstream["mode"] = request.path_params["mode"]
        return JSONResponse(upstream)

    async def reset(request: Request) -> JSONResponse:
        provider.reset()
        return JSONResponse({"state": provider.state})

    async def state(request: Request) -> JSONResponse:
        return JSONResponse({
            "state": provider.state, "healthy": shared.healthy, "failures": shared.failures,
            "hits": upstream["hits"], "errors": dict(provider.errors),
        })

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with shared, client:
            yield
        print("replica stopped", file=sys.stderr, flush=True)

    app = Starlette(
        routes=[
            Route("/call", call, methods=["POST"]),
            Route("/mode/{mode}", mode, methods=["POST"]),
            Route("/reset", reset, methods=["POST"]),
            Route("/state", state),
            Mount("/ops", app=resilience.dashboard_router(registry)),
        ],
        lifespan=lifespan,
    )
    app.add_middleware(resilience.ResilienceMiddleware, registry=registry)
    return app


async def main(redis_url: str, refresh: float) -> None:
    """Serve on a free port of 127.0.0.1 and print it."""
    config = uvicorn.Config(
        build(redis_url, refresh), host="127.0.0.1", port=0, log_level="warning", lifespan="on"
    )
    server = uvicorn.Server(config)
    serving = asyncio.create_task(server.serve())
    while not server.started:
        if serving.done():
            await serving
            return
        await asyncio.sleep(0.01)
    print(server.servers[0].sockets[0].getsockname()[1], flush=True)
    await serving


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], float(sys.argv[2])))
