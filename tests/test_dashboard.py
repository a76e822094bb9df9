"""dashboard_router: exact JSON shapes, filters, auth, the self-contained CSP-safe page, mounting."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from prometheus_client import CollectorRegistry
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.routing import Mount

import resilience
from resilience import ProviderRegistry, dashboard_router
from resilience.testing import FakeClock

pytestmark = pytest.mark.anyio

PROVIDER_KEYS = {
    "name", "status", "availability", "error_rate", "health_score", "breaker_state",
    "calls", "failures", "latency_ms", "cost_usd",
    "ratelimit",  # SPEC part two: null, or the quota the latest response announced
    "ttft_ms",  # SPEC part two: time to first token of streamed attempts
}
MODEL_KEYS = {"provider", "model", "calls", "successes", "failures", "error_rate", "latency_ms", "cost_usd",
              "ttft_ms"}
ROUTE_KEYS = {"name", "calls", "failovers", "hedges", "targets"}
ROUTE_TARGET_KEYS = {"provider", "model", "state", "health_score", "admits"}
SUMMARY_KEYS = {"total", "healthy", "degraded", "unhealthy", "open_breakers"}
XSS_NAME = "<img src=x onerror=alert(1)>"


def attempt(provider: resilience.Provider, outcome: str, seconds: float, model: str | None = None,
            cost: float | None = None) -> None:
    """Record one attempt the way the transport does."""
    window = provider.model_window(model)
    provider.record(provider.admit(window), outcome, seconds, model=window, cost=cost)


def busy_registry(clock: FakeClock) -> ProviderRegistry:
    """openrouter with traffic on two models, cerebras idle, anthropic open."""
    registry = ProviderRegistry(clock=clock)
    openrouter = registry.register("openrouter")
    registry.register("cerebras")
    anthropic = registry.register("anthropic")
    attempt(openrouter, "success", 0.120, "gpt-4o", cost=0.1234567891)
    attempt(openrouter, "success", 0.250, "gpt-4o", cost=0.0000004)
    attempt(openrouter, "failure", 1.5, "gpt-4o")
    attempt(openrouter, "throttled", 0.05, "llama")
    attempt(openrouter, "client_error", 0.08, "llama")
    anthropic.force_open()
    with pytest.raises(resilience.CircuitOpenError):
        anthropic.admit()
    return registry


async def get(app: Any, path: str, **kwargs: Any) -> httpx.Response:
    """GET ``path`` from ``app`` in process."""
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        return await client.get(path, **kwargs)


def mounted(registry: ProviderRegistry, prefix: str = "/ops", **options: Any) -> Starlette:
    """A Starlette app with the dashboard under ``prefix``."""
    return Starlette(routes=[Mount(prefix, app=dashboard_router(registry, **options))])


def assert_timestamp(value: str) -> None:
    """ISO-8601 in UTC with a Z."""
    assert value.endswith("Z")
    assert datetime.fromisoformat(value).utcoffset() == UTC.utcoffset(None)


def assert_latency(value: dict[str, Any]) -> None:
    """p50/p95/p99 in ms: numbers or all null."""
    assert set(value) == {"p50", "p95", "p99"}
    assert all(v is None or isinstance(v, float) for v in value.values())


async def test_health_dashboard_has_exactly_the_spec_shape(clock: FakeClock) -> None:
    """Keys and types of /health/dashboard are the SPEC's, no more, no less."""
    response = await get(mounted(busy_registry(clock)), "/ops/health/dashboard")
    assert response.status_code == 200
    assert response.headers["cache-control"] == "no-store"
    body = response.json()
    assert set(body) == {"timestamp", "providers", "summary", "routes"}
    assert body["routes"] == []
    assert_timestamp(body["timestamp"])
    assert [p["name"] for p in body["providers"]] == ["openrouter", "cerebras", "anthropic"]
    for entry in body["providers"]:
        assert set(entry) == PROVIDER_KEYS
        assert entry["status"] in ("healthy", "degraded", "unhealthy")
        assert entry["breaker_state"] in resilience.STATES
        for key in ("availability", "error_rate", "health_score", "cost_usd"):
            assert isinstance(entry[key], float), key
        assert isinstance(entry["calls"], int) and isinstance(entry["failures"], int)
        assert_latency(entry["latency_ms"])
        assert_latency(entry["ttft_ms"])
    assert body["summary"] == {"total": 3, "healthy": 1, "degraded": 1, "unhealthy": 1, "open_breakers": 1}
    assert set(body["summary"]) == SUMMARY_KEYS


async def test_health_dashboard_numbers(clock: FakeClock) -> None:
    """calls exclude rejections, failures include throttling, rounding is 4/2/6 places."""
    body = (await get(mounted(busy_registry(clock)), "/ops/health/dashboard")).json()
    openrouter, cerebras, anthropic = body["providers"]
    assert openrouter["calls"] == 5
    assert openrouter["failures"] == 2
    assert openrouter["error_rate"] == 0.4
    assert openrouter["cost_usd"] == 0.123457
    assert openrouter["breaker_state"] == "closed"
    assert all(v is not None and v == round(v, 2) for v in openrouter["latency_ms"].values())
    assert 100.0 <= openrouter["latency_ms"]["p50"] <= 260.0
    assert cerebras["latency_ms"] == {"p50": None, "p95": None, "p99": None}
    assert (cerebras["calls"], cerebras["failures"], cerebras["status"]) == (0, 0, "healthy")
    assert anthropic["breaker_state"] == "forced_open"
    assert (anthropic["calls"], anthropic["availability"], anthropic["status"]) == (0, 0.0, "unhealthy")


async def test_models_stats_shape_and_values(clock: FakeClock) -> None:
    """/models/stats lists every model with exactly the SPEC keys."""
    response = await get(mounted(busy_registry(clock)), "/ops/models/stats")
    assert response.headers["cache-control"] == "no-store"
    body = response.json()
    assert set(body) == {"timestamp", "window_seconds", "models"}
    assert_timestamp(body["timestamp"])
    assert body["window_seconds"] == 60.0
    for entry in body["models"]:
        assert set(entry) == MODEL_KEYS
        assert_latency(entry["latency_ms"])
        assert_latency(entry["ttft_ms"])
    by_model = {m["model"]: m for m in body["models"]}
    assert by_model["gpt-4o"] | {"latency_ms": None} == {
        "provider": "openrouter", "model": "gpt-4o", "calls": 3, "successes": 2, "failures": 1,
        "error_rate": 0.3333, "latency_ms": None, "cost_usd": 0.123457,
        "ttft_ms": {"p50": None, "p95": None, "p99": None},  # no streamed attempt
    }
    llama = by_model["llama"]
    assert (llama["calls"], llama["successes"], llama["failures"]) == (2, 1, 1)


@pytest.mark.parametrize(
    ("query", "models"),
    [
        pytest.param("?provider=openrouter", {"gpt-4o", "llama"}, id="known"),
        pytest.param("?provider=cerebras", set(), id="no-models"),
        pytest.param("?provider=nobody", set(), id="unknown"),
        pytest.param("?provider=" + XSS_NAME, set(), id="hostile"),
    ],
)
async def test_models_stats_filter(clock: FakeClock, query: str, models: set[str]) -> None:
    """?provider= keeps one provider's models; an unknown one gives an empty list, not an error."""
    response = await get(mounted(busy_registry(clock)), "/ops/models/stats" + query)
    assert response.status_code == 200
    assert {m["model"] for m in response.json()["models"]} == models


async def test_stats_window_expires(clock: FakeClock) -> None:
    """After the stats window has passed, calls drop to zero and latencies to null."""
    registry = busy_registry(clock)
    clock.advance(61.0)
    body = (await get(mounted(registry), "/ops/health/dashboard")).json()
    assert body["providers"][0]["calls"] == 0
    assert body["providers"][0]["latency_ms"]["p95"] is None


# -- auth --------------------------------------------------------------------------------


async def deny(request: Request) -> bool:
    """An async auth that denies."""
    return False


@pytest.mark.parametrize("path", ["/ops/health/dashboard", "/ops/models/stats", "/ops/health/dashboard/ui"])
@pytest.mark.parametrize("auth", [pytest.param(lambda r: False, id="sync"), pytest.param(deny, id="async")])
async def test_auth_denial_is_401_and_leaks_nothing(clock: FakeClock, path: str, auth: Any) -> None:
    """A denying auth answers 401 with a bare JSON error on every endpoint."""
    response = await get(mounted(busy_registry(clock), auth=auth), path)
    assert response.status_code == 401
    assert response.json() == {"error": "unauthorized"}
    assert "openrouter" not in response.text


async def test_auth_sees_the_request_and_can_allow(clock: FakeClock) -> None:
    """auth gets the Starlette request; True lets it through."""
    seen: list[str] = []

    async def token_auth(request: Request) -> bool:
        seen.append(request.url.path)
        return request.headers.get("authorization") == "Bearer s3cret"

    app = mounted(busy_registry(clock), auth=token_auth)
    assert (await get(app, "/ops/health/dashboard")).status_code == 401
    ok = await get(app, "/ops/health/dashboard", headers={"Authorization": "Bearer s3cret"})
    assert ok.status_code == 200
    assert seen == ["/ops/health/dashboard", "/ops/health/dashboard"]


async def test_auth_error_is_500_without_details(clock: FakeClock, caplog: pytest.LogCaptureFixture) -> None:
    """An exception in auth answers 500 with no detail, and is logged."""

    def broken(request: Request) -> bool:
        raise RuntimeError("database password is hunter2")

    response = await get(mounted(busy_registry(clock), auth=broken), "/ops/health/dashboard")
    assert response.status_code == 500
    assert response.json() == {"error": "internal error"}
    assert "hunter2" not in response.text
    assert "dashboard auth raised" in caplog.text


def test_bad_arguments_are_refused() -> None:
    """A non-registry or a non-callable auth fails at construction."""
    with pytest.raises(resilience.ConfigError, match="registry"):
        dashboard_router(object())  # type: ignore[arg-type]
    with pytest.raises(resilience.ConfigError, match="auth"):
        dashboard_router(ProviderRegistry(), auth="yes")  # type: ignore[arg-type]


# -- the page ------------------------------------------------------------------------------


def nonce_of(response: httpx.Response) -> str:
    """The nonce the CSP header allows."""
    match = re.search(r"script-src 'nonce-([A-Za-z0-9_-]+)'", response.headers["content-security-policy"])
    assert match is not None
    return match.group(1)


async def test_page_is_self_contained_under_a_strict_csp(clock: FakeClock) -> None:
    """The page loads nothing from elsewhere; its one script and style carry the CSP nonce."""
    app = mounted(busy_registry(clock))
    response = await get(app, "/ops/health/dashboard/ui")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert response.headers["cache-control"] == "no-store"
    csp = response.headers["content-security-policy"]
    for directive in ("default-src 'none'", "connect-src 'self'", "img-src 'self' data:"):
        assert directive in csp
    nonce = nonce_of(response)
    assert f"style-src 'nonce-{nonce}'" in csp
    html = response.text
    for external in ("http://", "https://", "src=", "@import", "url(", "//cdn"):
        assert external not in html, external
    assert re.findall(r"<script(?![^>]*application/json)[^>]*>", html) == [f'<script nonce="{nonce}">']
    assert re.findall(r"<style[^>]*>", html) == [f'<style nonce="{nonce}">']
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("):
        assert sink not in html, sink
    assert nonce_of(await get(app, "/ops/health/dashboard/ui")) != nonce


async def test_page_seed_escapes_hostile_names(clock: FakeClock) -> None:
    """A provider name full of markup stays data inside the page."""
    registry = ProviderRegistry(clock=clock)
    registry.register(XSS_NAME)
    registry.register("</script><script>alert(2)</script>")
    html = (await get(mounted(registry), "/ops/health/dashboard/ui")).text
    assert "<img" not in html
    assert "</script><script>" not in html
    seed = re.search(r'<script type="application/json" id="seed">(.*?)</script>', html, re.S)
    assert seed is not None
    names = [p["name"] for p in json.loads(seed.group(1))]
    assert names == [XSS_NAME, "</script><script>alert(2)</script>"]


async def test_page_seed_holds_recent_breaker_history(clock: FakeClock) -> None:
    """The timeline starts from the breaker's transitions: seconds ago and state."""
    registry = ProviderRegistry(clock=clock)
    provider = registry.register("openrouter")
    clock.advance(100.0)
    provider.force_open()
    clock.advance(20.0)
    html = (await get(mounted(registry), "/ops/health/dashboard/ui")).text
    seed = re.search(r'id="seed">(.*?)</script>', html, re.S)
    assert seed is not None
    history = [[120.0, "closed"], [20.0, "forced_open"]]
    assert json.loads(seed.group(1)) == [{"name": "openrouter", "history": history}]


# -- mounting ------------------------------------------------------------------------------


@pytest.mark.parametrize("prefix", ["/ops", "/deep/er/prefix"])
@pytest.mark.parametrize("framework", ["starlette", "fastapi"])
async def test_mounts_under_any_prefix(clock: FakeClock, prefix: str, framework: str) -> None:
    """All three endpoints answer under the mount prefix in Starlette and FastAPI."""
    registry = busy_registry(clock)
    app: Any
    if framework == "starlette":
        app = mounted(registry, prefix)
    else:
        app = FastAPI()
        app.mount(prefix, dashboard_router(registry))
    for path in ("/health/dashboard", "/models/stats", "/health/dashboard/ui"):
        assert (await get(app, prefix + path)).status_code == 200, path
    assert (await get(app, "/health/dashboard")).status_code == 404


@pytest.mark.parametrize("framework", ["starlette", "fastapi"])
async def test_spec_wiring_as_written(framework: str) -> None:
    """The SPEC's wiring code works in Starlette and FastAPI, endpoints answering through the middleware."""
    if not hasattr(resilience, "ResilientTransport"):
        pytest.fail("resilience.ResilientTransport is missing")
    registry = resilience.ProviderRegistry(
        default_policy=resilience.Policy(
            breaker=resilience.BreakerPolicy(
                failure_rate_threshold=0.5, minimum_calls=10, window_seconds=60.0, open_seconds=30.0,
            ),
            retry=resilience.RetryPolicy(attempts=3),
        ),
    )
    registry.register("openrouter", hosts=["openrouter.ai"])
    registry.register("cerebras", hosts=["api.cerebras.ai"],
                      policy=resilience.Policy(retry=resilience.RetryPolicy(attempts=1)))
    registry.register_metrics(CollectorRegistry())  # a fresh one: the global registry is shared by tests
    upstream = httpx.MockTransport(lambda request: httpx.Response(200, json={"usage": {"cost": 0.01}}))
    client = httpx.AsyncClient(transport=resilience.ResilientTransport(registry, transport=upstream))
    app: Any
    if framework == "starlette":
        app = Starlette(routes=[Mount("/ops", app=resilience.dashboard_router(registry))])
    else:
        app = FastAPI()
        app.mount("/ops", resilience.dashboard_router(registry))
    app.add_middleware(resilience.ResilienceMiddleware, registry=registry)
    async with client:
        await client.post("https://openrouter.ai/api/v1/chat/completions", json={"model": "gpt-4o"})
    body = (await get(app, "/ops/health/dashboard")).json()
    assert [p["name"] for p in body["providers"]] == ["openrouter", "cerebras"]
    assert body["providers"][0]["calls"] == 1
    models = (await get(app, "/ops/models/stats?provider=openrouter")).json()["models"]
    assert [(m["model"], m["cost_usd"]) for m in models] == [("gpt-4o", 0.01)]
    assert (await get(app, "/ops/health/dashboard/ui")).status_code == 200


@pytest.mark.parametrize("status", [401, 403])
async def test_auth_raising_http_exception_gets_its_status(clock: FakeClock, status: int) -> None:
    """An auth that raises Starlette's HTTPException(403) answers 403 (with its headers), not 500."""

    def forbid(request: Request) -> bool:
        raise HTTPException(status, detail="secret detail", headers={"WWW-Authenticate": "Bearer"})

    response = await get(mounted(busy_registry(clock), auth=forbid), "/ops/health/dashboard")
    assert response.status_code == status
    assert response.headers["www-authenticate"] == "Bearer"
    assert "secret detail" not in response.text
    assert "openrouter" not in response.text


# -- routes and time to first token (SPEC part two) ------------------------------------------


def routed_registry(clock: FakeClock) -> ProviderRegistry:
    """cerebras failing (its score down), openrouter healthy, anthropic open; one route over all three."""
    registry = ProviderRegistry(clock=clock)
    cerebras = registry.register("cerebras")
    openrouter = registry.register("openrouter")
    anthropic = registry.register("anthropic")
    attempt(cerebras, "success", 0.1)
    attempt(cerebras, "failure", 0.1)
    attempt(openrouter, "success", 0.1)
    anthropic.force_open()
    route = registry.route("llama-3.3-70b", [
        resilience.Target("cerebras", base_url="https://api.cerebras.ai/v1", model="llama-3.3-70b"),
        resilience.Target("anthropic", base_url="https://api.anthropic.com/v1"),
        resilience.Target("openrouter", base_url="https://openrouter.ai/api/v1",
                          model="meta-llama/llama-3.3-70b-instruct"),
    ])
    route.record("success")
    route.record("rejected")
    route.record_failover("cerebras", "openrouter")
    assert route.try_hedge()
    return registry


async def test_health_dashboard_routes_entry(clock: FakeClock) -> None:
    """Each route: its counts over the window and its targets in the order a call tries them."""
    body = (await get(mounted(routed_registry(clock)), "/ops/health/dashboard")).json()
    (route,) = body["routes"]
    assert set(route) == ROUTE_KEYS
    assert (route["name"], route["calls"], route["failovers"], route["hedges"]) == ("llama-3.3-70b", 2, 1, 1)
    for target in route["targets"]:
        assert set(target) == ROUTE_TARGET_KEYS
        assert isinstance(target["health_score"], float)
    assert [(t["provider"], t["state"], t["health_score"], t["admits"]) for t in route["targets"]] == [
        ("openrouter", "closed", 1.0, True),
        ("cerebras", "closed", 0.5, True),
        ("anthropic", "forced_open", 0.0, False),
    ]
    assert route["targets"][0]["model"] == "meta-llama/llama-3.3-70b-instruct"
    assert route["targets"][2]["model"] is None


async def test_route_counts_leave_the_window(clock: FakeClock) -> None:
    """calls, failovers and hedges cover the stats window only."""
    registry = routed_registry(clock)
    clock.advance(61.0)
    (route,) = (await get(mounted(registry), "/ops/health/dashboard")).json()["routes"]
    assert (route["calls"], route["failovers"], route["hedges"]) == (0, 0, 0)


async def test_ttft_ms_of_providers_and_models(clock: FakeClock) -> None:
    """ttft_ms is p50/p95/p99 of streamed attempts' time to first token in ms, null without any."""
    registry = ProviderRegistry(clock=clock)
    provider = registry.register("openrouter")
    registry.register("cerebras")
    window = provider.model_window("gpt-4o")
    for ttft in (0.2, 0.2, 0.2):
        provider.record(provider.admit(window), "success", 1.0, model=window, ttft=ttft)
    app = mounted(registry)
    openrouter, cerebras = (await get(app, "/ops/health/dashboard")).json()["providers"]
    assert all(190.0 <= v <= 210.0 for v in openrouter["ttft_ms"].values())
    assert cerebras["ttft_ms"] == {"p50": None, "p95": None, "p99": None}
    (model,) = (await get(app, "/ops/models/stats")).json()["models"]
    assert set(model) == MODEL_KEYS
    assert all(190.0 <= v <= 210.0 for v in model["ttft_ms"].values())


async def test_page_has_routes_ttft_and_quota(clock: FakeClock) -> None:
    """The page renders a routes table, a TTFT p95 column and a quota column (filled by its script)."""
    html = (await get(mounted(routed_registry(clock)), "/ops/health/dashboard/ui")).text
    assert 'id="routes"' in html
    assert "TTFT p95" in html and "Quota" in html
    assert "renderRoutes(health)" in html
    assert "requests_remaining" in html and "exhausted" in html
