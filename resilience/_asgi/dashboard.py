"""``dashboard_router()``: the health dashboard as a Starlette ``Router`` to mount anywhere.

Relative to where it is mounted:

* ``GET /health/dashboard`` — every provider's state, health and stats window,
  and every route's targets in the order a call tries them;
* ``GET /models/stats`` — every model's stats window (``?provider=`` filters);
* ``GET /health/dashboard/ui`` — one self-contained HTML page polling the two.

Timestamps are ISO-8601 in UTC with a ``Z`` suffix and milliseconds
(``2025-01-31T12:00:00.000Z``). Rates and scores are rounded to 4 decimal
places, latencies (milliseconds) to 2, USD to 6. ``calls`` counts attempts
that reached the provider (rejections are not calls); ``failures`` those that
failed or were throttled; a model's ``successes`` is ``calls - failures``
(client errors included: the provider answered). Latencies are ``null`` with
no data. A provider with an active probe also has a ``"probe"`` object; a
registry whose breakers are shared across replicas
(:class:`resilience.SharedBreakerState`) adds a top-level ``"shared_state"`` object.
"""

from __future__ import annotations

import functools
import inspect
import json
import logging
import math
import secrets
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from http import HTTPStatus
from importlib import resources
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route, Router

from resilience._core.errors import ConfigError
from resilience._core.registry import ProviderRegistry
from resilience._core.snapshot import ProbeSnapshot, ProviderSnapshot, RouteSnapshot
from resilience._core.window import WindowSnapshot

log = logging.getLogger("resilience")

Auth = Callable[[Request], "bool | Awaitable[bool]"]
NO_STORE = {"Cache-Control": "no-store"}
HISTORY_SECONDS = 15 * 60.0
"""How far back the page's breaker timeline is seeded from the breaker's history."""


def dashboard_router(registry: ProviderRegistry, *, auth: Auth | None = None) -> Router:
    """The dashboard's routes; mount with ``Mount("/ops", app=dashboard_router(registry))``.

    Args:
        registry: whose providers to show.
        auth: ``request -> bool`` (or an awaitable of it), asked on every
            request; anything but ``True`` answers ``401``, a Starlette
            ``HTTPException`` its own status (e.g. ``403``), another exception
            ``500`` (logged), all with nothing but a short JSON error.
    """
    if not isinstance(registry, ProviderRegistry):
        raise ConfigError(f"registry must be a ProviderRegistry, got {registry!r}")
    if auth is not None and not callable(auth):
        raise ConfigError(f"auth must be a callable or None, got {auth!r}")

    def guarded(handler: Callable[[Request], Response]) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            denied = await _deny(auth, request)
            return denied if denied is not None else handler(request)

        return endpoint

    return Router(
        routes=[
            Route("/health/dashboard", guarded(lambda r: _json(health_payload(registry))), methods=["GET"]),
            Route(
                "/models/stats",
                guarded(lambda r: _json(models_payload(registry, r.query_params.get("provider")))),
                methods=["GET"],
            ),
            Route("/health/dashboard/ui", guarded(lambda r: _page(registry)), methods=["GET"]),
        ]
    )


async def _deny(auth: Auth | None, request: Request) -> Response | None:
    if auth is None:
        return None
    try:
        allowed = auth(request)
        if inspect.isawaitable(allowed):
            allowed = await allowed
    except HTTPException as exc:  # Starlette's way to deny: its status (and headers) are honoured
        return _denied(exc)
    except Exception:
        log.exception("dashboard auth raised")
        return JSONResponse({"error": "internal error"}, status_code=500, headers=NO_STORE)
    if allowed is True:
        return None
    return JSONResponse({"error": "unauthorized"}, status_code=401, headers=NO_STORE)


def _denied(exc: HTTPException) -> Response:
    """The answer to an ``HTTPException`` raised by ``auth``: its status, a short phrase, no detail."""
    status = exc.status_code
    try:
        phrase = HTTPStatus(status).phrase.lower()
    except ValueError:
        phrase = "error"
    headers = {**(exc.headers or {}), **NO_STORE}
    return JSONResponse({"error": phrase}, status_code=status, headers=headers)


def _json(payload: dict[str, Any]) -> Response:
    return JSONResponse(payload, headers=NO_STORE)


# -- JSON ----------------------------------------------------------------------


def timestamp(moment: datetime) -> str:
    """``moment`` as ISO-8601 UTC with milliseconds and a ``Z``."""
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _num(value: float, places: int) -> float:
    return round(value, places) if math.isfinite(value) else 0.0


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None or not math.isfinite(seconds) else round(seconds * 1000.0, 2)


def latency_ms(window: WindowSnapshot) -> dict[str, float | None]:
    """p50/p95/p99 of a window in milliseconds, ``None`` with no data."""
    return {"p50": _ms(window.p50), "p95": _ms(window.p95), "p99": _ms(window.p99)}


def health_payload(registry: ProviderRegistry) -> dict[str, Any]:
    """The body of ``GET /health/dashboard``."""
    snapshot = registry.snapshot()
    summary = snapshot.summary
    payload: dict[str, Any] = {
        "timestamp": timestamp(snapshot.timestamp),
        "providers": [_provider(p, registry) for p in snapshot.providers],
        "routes": [_route(r) for r in snapshot.routes],
        "summary": {
            "total": summary.total,
            "healthy": summary.healthy,
            "degraded": summary.degraded,
            "unhealthy": summary.unhealthy,
            "open_breakers": summary.open_breakers,
        },
    }
    shared = registry.extensions.get("shared_state")  # a resilience.SharedBreakerState, if any
    if shared is not None:
        payload["shared_state"] = shared.status()
    return payload


def _provider(snap: ProviderSnapshot, registry: ProviderRegistry) -> dict[str, Any]:
    window = snap.window
    entry: dict[str, Any] = {
        "name": snap.name,
        "status": snap.status,
        "availability": _num(snap.availability, 4),
        "error_rate": _num(snap.error_rate, 4),
        "health_score": _num(snap.health_score, 4),
        "breaker_state": snap.state,
        "calls": window.calls,
        "failures": window.failures + window.throttled,
        "latency_ms": latency_ms(window),
        "ttft_ms": latency_ms(snap.ttft),
        "cost_usd": _num(window.cost_usd, 6),
        "ratelimit": _ratelimit(snap.ratelimit),
    }
    probe = registry._probes.get(snap.name)
    if probe is not None:
        entry["probe"] = probe_payload(probe.snapshot())
    return entry


def _route(snap: RouteSnapshot) -> dict[str, Any]:
    """A route as the dashboard shows it: counts over the stats window, targets in the order tried."""
    return {
        "name": snap.name,
        "calls": snap.calls,
        "failovers": snap.failovers,
        "hedges": snap.hedges,
        "targets": [
            {
                "provider": target.provider,
                "model": target.model,
                "state": target.state,
                "health_score": _num(target.health_score, 4),
                "admits": target.admits,
            }
            for target in snap.targets
        ],
    }


def _ratelimit(limits: dict[str, Any] | None) -> dict[str, Any] | None:
    """``Provider.ratelimit`` as the dashboard shows it (seconds rounded to milliseconds)."""
    if limits is None:
        return None
    reset = limits["reset_seconds"]
    return {**limits, "reset_seconds": None if reset is None else round(reset, 3)}


def probe_payload(probe: ProbeSnapshot) -> dict[str, Any]:
    """A probe's results as the dashboard shows them (never its URL or headers)."""
    return {
        "ok": probe.ok,
        "status": probe.status,
        "error": probe.error,
        "latency_ms": _ms(probe.latency),
        "consecutive_failures": probe.consecutive_failures,
        "successes": probe.successes,
        "failures": probe.failures,
        "checked_at": None if probe.checked_at is None else timestamp(probe.checked_at),
        "interval_seconds": probe.interval,
    }


def models_payload(registry: ProviderRegistry, provider: str | None = None) -> dict[str, Any]:
    """The body of ``GET /models/stats``; ``provider`` keeps one provider's models (none if unknown)."""
    snapshot = registry.snapshot()
    models = []
    for snap in snapshot.providers:
        if provider is not None and snap.name != provider:
            continue
        for model in snap.models:
            window = model.window
            failures = window.failures + window.throttled
            models.append(
                {
                    "provider": model.provider,
                    "model": model.model,
                    "calls": window.calls,
                    "successes": window.calls - failures,
                    "failures": failures,
                    "error_rate": _num(window.error_rate, 4),
                    "latency_ms": latency_ms(window),
                    "ttft_ms": latency_ms(model.ttft),
                    "cost_usd": _num(window.cost_usd, 6),
                }
            )
    return {
        "timestamp": timestamp(snapshot.timestamp),
        "window_seconds": snapshot.window_seconds,
        "models": models,
    }


# -- the page ------------------------------------------------------------------


@functools.cache
def _template() -> str:
    return resources.files("resilience._asgi").joinpath("static", "dashboard.html").read_text("utf-8")


def _script_json(value: object) -> str:
    """JSON safe inside a ``<script>`` element (no ``</script>``, no HTML specials)."""
    text = json.dumps(value, separators=(",", ":"))
    for char, escape in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"),
                         ("\u2028", "\\u2028"), ("\u2029", "\\u2029")):
        text = text.replace(char, escape)
    return text


def breaker_history(registry: ProviderRegistry) -> list[dict[str, Any]]:
    """Each provider's recent transitions as ``[seconds ago, state]``, oldest first."""
    snapshot = registry.snapshot()
    now = registry.clock()
    seeds = []
    for provider in snapshot.providers:
        recent = [(t, s) for t, s in provider.history if now - t <= HISTORY_SECONDS]
        older = [s for t, s in provider.history if now - t > HISTORY_SECONDS]
        if older:  # the state the timeline starts in
            recent.insert(0, (now - HISTORY_SECONDS, older[-1]))
        seeds.append({"name": provider.name, "history": [[round(now - t, 3), s] for t, s in recent]})
    return seeds


def _page(registry: ProviderRegistry) -> Response:
    nonce = secrets.token_urlsafe(18)
    seed = _script_json(breaker_history(registry))
    html = _template().replace("__NONCE__", nonce).replace("__SEED__", seed)
    csp = (
        f"default-src 'none'; script-src 'nonce-{nonce}'; style-src 'nonce-{nonce}'; "
        "connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; "
        "frame-ancestors 'none'"
    )
    headers = {
        **NO_STORE,
        "Content-Security-Policy": csp,
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
    }
    return HTMLResponse(html, headers=headers)
