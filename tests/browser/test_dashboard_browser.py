"""The dashboard page in headless Chromium against a real uvicorn server."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.routing import Mount

from resilience import BreakerPolicy, Policy, Provider, ProviderRegistry, Target, dashboard_router
from resilience._core.quota import Limits
from resilience.testing import FakeClock

pytestmark = [pytest.mark.browser, pytest.mark.integration]

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
XSS_NAME = "<img src=x onerror=alert(1)>"
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"


def need_browser() -> Any:
    """Playwright's sync API, or skip (locally) / fail (in CI) when the browser is missing."""
    missing = None
    if not (os.path.exists(CHROMIUM) or shutil.which("chromium")):
        missing = f"{CHROMIUM} is not installed"
    try:
        from playwright import sync_api
    except ImportError:  # pragma: no cover - playwright is in the dev extra
        missing = "the playwright package is not installed"
    if missing is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"browser test cannot run in CI: {missing}")
        pytest.skip(missing)
    return sync_api


def attempts(provider: Provider, outcome: str, n: int, *, seconds: float = 0.2, model: str | None = None,
             cost: float | None = None) -> None:
    """Record ``n`` attempts as the transport would."""
    window = provider.model_window(model)
    for _ in range(n):
        provider.record(provider.admit(window), outcome, seconds, model=window, cost=cost)


def until(provider: Provider, state: str, outcome: str, *, seconds: float = 0.2) -> None:
    """Record ``outcome`` attempts until the breaker reaches ``state``."""
    for _ in range(50):
        if provider.state == state:
            return
        attempts(provider, outcome, 1, seconds=seconds)
    raise AssertionError(f"{provider.name} never reached {state}")


@pytest.fixture
def registry() -> ProviderRegistry:
    """Three providers, one named like an XSS payload; openrouter had an outage three minutes ago."""
    clock = FakeClock(10_000.0)
    policy = Policy(breaker=BreakerPolicy(minimum_calls=5, open_seconds=30.0))
    registry = ProviderRegistry(policy, clock=clock)
    openrouter = registry.register("openrouter")
    cerebras = registry.register("cerebras")
    hostile = registry.register(XSS_NAME)
    clock.advance(60.0)
    until(openrouter, "open", "failure", seconds=4.0)
    clock.advance(30.0)
    assert openrouter.state == "half_open"
    clock.advance(10.0)
    until(openrouter, "closed", "success")  # trial calls close it again
    clock.advance(140.0)  # now: the outage is out of the stats window but on the timeline
    attempts(openrouter, "success", 8, seconds=0.35, model="openai/gpt-4o", cost=0.0042)
    attempts(openrouter, "failure", 1, seconds=2.0, model="anthropic/claude-3.5-sonnet")
    attempts(openrouter, "success", 3, seconds=0.9, model="anthropic/claude-3.5-sonnet", cost=0.011)
    attempts(cerebras, "success", 4, seconds=0.08, model="llama-3.3-70b", cost=0.0001)
    attempts(hostile, "success", 2, seconds=0.5, model=XSS_NAME)
    window = openrouter.model_window("openai/gpt-4o")
    openrouter.record(openrouter.admit(window), "success", 1.2, model=window, ttft=0.3)
    cerebras.note_limits(Limits(requests_limit=100, requests_remaining=7, tokens_limit=1000,
                                tokens_remaining=900, requests_reset=30.0), clock())
    route = registry.route("llama-3.3-70b", [
        Target("cerebras", base_url="https://api.cerebras.ai/v1", model="llama-3.3-70b"),
        Target("openrouter", base_url="https://openrouter.ai/api/v1"),
    ])
    route.record("success")
    route.record_failover("cerebras", "openrouter")
    return registry


@pytest.fixture
def page_url(registry: ProviderRegistry) -> Iterator[str]:
    """The page served by uvicorn under /ops, polling twice a second."""
    from integration._server import serve

    app = Starlette(routes=[Mount("/ops", app=dashboard_router(registry))])
    with serve(app) as base:
        yield base + "/ops/health/dashboard/ui?refresh=0.5"


def test_dashboard_in_chromium(registry: ProviderRegistry, page_url: str) -> None:
    """No console errors, a row per provider, an outage shown as open, hostile names as text."""
    sync_api = need_browser()
    errors: list[str] = []
    dialogs: list[str] = []
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1800, "height": 800})
            page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
            page.on("pageerror", lambda exc: errors.append(str(exc)))

            def on_dialog(dialog: Any) -> None:
                dialogs.append(dialog.message)
                dialog.dismiss()

            page.on("dialog", on_dialog)
            page.goto(page_url)
            rows = page.locator("#providers tbody tr[data-provider]")
            sync_api.expect(rows).to_have_count(3)
            assert rows.evaluate_all("rows => rows.map(r => r.dataset.provider)") == [
                "openrouter", "cerebras", XSS_NAME,
            ]
            sync_api.expect(page.locator('tr[data-provider="cerebras"] .state')).to_have_text("closed")

            outage = registry.get("cerebras")
            while outage.state == "closed":  # the scripted outage: failures until the breaker trips
                attempts(outage, "failure", 1, seconds=3.0, model="llama-3.3-70b")
            assert outage.state == "open"  # the fake clock stands still: it stays open
            cerebras = page.locator('#providers tr[data-provider="cerebras"]')
            sync_api.expect(cerebras).to_have_attribute("data-state", "open")
            sync_api.expect(cerebras.locator(".state")).to_have_text("open")
            sync_api.expect(cerebras.locator(".status")).to_have_text("unhealthy")
            sync_api.expect(cerebras.locator(".timeline .t-open")).to_have_count(1)
            sync_api.expect(page.locator("#summary")).to_contain_text("open breakers1")
            past = page.locator('tr[data-provider="openrouter"] .timeline > span')
            assert past.evaluate_all("spans => spans.map(s => s.className)") == [
                "t-closed", "t-open", "t-half_open", "t-closed",
            ]

            route = page.locator('#routes tr[data-route="llama-3.3-70b"]')
            sync_api.expect(route.locator(".failovers")).to_have_text("1")
            targets = route.locator(".target")
            sync_api.expect(targets).to_have_count(2)
            # cerebras is open now: skipped, listed after the admitting openrouter
            assert targets.evaluate_all("ts => ts.map(t => [t.dataset.provider, t.dataset.admits])") == [
                ["openrouter", "true"], ["cerebras", "false"],
            ]
            sync_api.expect(cerebras.locator(".quota")).to_have_text("req 7/100 · tok 900/1000")
            ttft = page.locator('#providers tr[data-provider="openrouter"] .ttft')
            sync_api.expect(ttft).not_to_have_text("—")

            hostile = page.locator("#providers td.name").nth(2)
            sync_api.expect(hostile).to_have_text(XSS_NAME)
            assert hostile.is_visible()
            assert page.locator("img").count() == 0
            sync_api.expect(page.locator("#models tbody tr")).to_have_count(4)

            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=True)
        finally:
            browser.close()
    assert dialogs == []
    assert errors == []
