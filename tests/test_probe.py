"""Active probes: results kept apart from traffic, early half-open, a runner that starts and stops cleanly."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from starlette.applications import Starlette
from starlette.types import Message

import resilience
from resilience import HttpProbe, ProviderRegistry, probes
from resilience._asgi.dashboard import health_payload
from resilience.testing import FakeClock

pytestmark = pytest.mark.anyio

URL = "https://openrouter.ai/api/v1/models"
Handler = Callable[[httpx.Request], Any]


def answering(status: int, clock: FakeClock | None = None, seconds: float = 0.0) -> Handler:
    """A mock upstream answering ``status``, taking ``seconds`` on ``clock``."""

    def handler(request: httpx.Request) -> httpx.Response:
        if clock is not None:
            clock.advance(seconds)
        return httpx.Response(status, json={"data": []})

    return handler


def client(handler: Handler) -> httpx.AsyncClient:
    """An httpx client over a mock transport."""
    return httpx.AsyncClient(transport=httpx.MockTransport(handler))


async def until(condition: Callable[[], bool], rounds: int = 1000) -> None:
    """Let the event loop run until ``condition`` holds (bounded)."""
    for _ in range(rounds):
        if condition():
            return
        await asyncio.sleep(0)
    raise AssertionError("condition never held")


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        pytest.param({"url": "ftp://x"}, "url", id="scheme"),
        pytest.param({"url": URL, "interval": 0}, "interval", id="interval"),
        pytest.param({"url": URL, "timeout": -1}, "timeout", id="timeout"),
        pytest.param({"url": URL, "interval": True}, "interval", id="bool"),
        pytest.param({"url": URL, "method": "GET /x"}, "method", id="method"),
    ],
)
def test_bad_probe_configuration_is_refused(kwargs: dict[str, Any], field: str) -> None:
    """Bad settings fail at construction, naming the field."""
    with pytest.raises(resilience.ConfigError, match=field):
        HttpProbe(**kwargs)


async def test_successful_check_is_noted_apart_from_traffic(clock: FakeClock) -> None:
    """A passing check is counted in the probe, never in the provider's windows or counters."""
    registry = ProviderRegistry(clock=clock)
    probe = HttpProbe(URL, method="head")
    provider = registry.register("openrouter", probe=probe)
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(f"{request.method} {request.url}")
        clock.advance(0.25)
        return httpx.Response(204)

    async with client(handler) as http:
        assert await probe.check(provider, http) is True
    snap = probe.snapshot()
    assert (snap.ok, snap.status, snap.error, snap.latency) == (True, 204, None, 0.25)
    assert (snap.successes, snap.failures, snap.consecutive_failures) == (1, 0, 0)
    assert snap.checked_at is not None
    assert seen == [f"HEAD {URL}"]
    provider_snap = provider.snapshot()
    assert provider_snap.window.calls == 0
    assert sum(provider_snap.requests_total.values()) == 0


@pytest.mark.parametrize(
    ("handler", "status", "error"),
    [
        pytest.param(answering(503), 503, None, id="status"),
        pytest.param(answering(401), 401, None, id="auth"),
        pytest.param(lambda r: (_ for _ in ()).throw(httpx.ConnectError("refused")), None, "ConnectError",
                     id="connect"),
        pytest.param(lambda r: (_ for _ in ()).throw(httpx.ReadTimeout("slow")), None, "ReadTimeout",
                     id="read-timeout"),
    ],
)
async def test_failing_checks_count_in_a_row(clock: FakeClock, handler: Handler, status: int | None,
                                             error: str | None) -> None:
    """Failures are counted and consecutive until a success resets them."""
    registry = ProviderRegistry(clock=clock)
    probe = HttpProbe(URL)
    provider = registry.register("openrouter", probe=probe)
    async with client(handler) as http:
        assert await probe.check(provider, http) is False
        assert await probe.check(provider, http) is False
    snap = probe.snapshot()
    assert (snap.ok, snap.status, snap.error) == (False, status, error)
    assert (snap.failures, snap.consecutive_failures) == (2, 2)
    async with client(answering(200)) as http:
        await probe.check(provider, http)
    assert probe.snapshot().consecutive_failures == 0


async def test_check_times_out_as_a_whole(clock: FakeClock) -> None:
    """A check that takes longer than ``timeout`` fails with TimeoutError."""
    registry = ProviderRegistry(clock=clock)
    probe = HttpProbe(URL, timeout=0.01)
    provider = registry.register("openrouter", probe=probe)

    async def hang(request: httpx.Request) -> httpx.Response:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    async with client(hang) as http:
        assert await probe.check(provider, http) is False
    assert probe.snapshot().error == "TimeoutError"


@pytest.mark.parametrize(
    ("start", "status", "after"),
    [
        pytest.param("open", 200, "half_open", id="success-opens-trials-early"),
        pytest.param("open", 500, "open", id="failure-changes-nothing"),
        pytest.param("forced_open", 200, "forced_open", id="manual-state-kept"),
        pytest.param("closed", 200, "closed", id="closed-stays"),
    ],
)
async def test_probe_and_breaker(clock: FakeClock, start: str, status: int, after: str) -> None:
    """Only a successful probe of an open breaker moves it, to half_open."""
    registry = ProviderRegistry(clock=clock)
    probe = HttpProbe(URL)
    provider = registry.register("openrouter", probe=probe)
    if start == "open":
        provider.open_for(300.0)
    elif start == "forced_open":
        provider.force_open()
    async with client(answering(status)) as http:
        await probe.check(provider, http)
    assert provider.state == after
    assert probe.snapshot().early_half_opens == int(start == "open" and status == 200)


def test_register_validates_probes() -> None:
    """A probe serves one provider; anything else is refused."""
    registry = ProviderRegistry()
    probe = HttpProbe(URL)
    registry.register("openrouter", probe=probe)
    assert registry._probes == {"openrouter": probe}
    with pytest.raises(resilience.ConfigError, match="probe"):
        registry.register("cerebras", probe=probe)
    with pytest.raises(resilience.ConfigError, match="probe"):
        registry.register("anthropic", probe="https://x")  # type: ignore[arg-type]
    registry.register("groq")
    assert list(registry._probes) == ["openrouter"]


class Ticker:
    """A sleep the test releases one round at a time."""

    def __init__(self) -> None:
        self.sleeps: list[float] = []
        self.gate = asyncio.Semaphore(0)

    async def sleep(self, seconds: float) -> None:
        """Record the wait, then wait for the test."""
        self.sleeps.append(seconds)
        await self.gate.acquire()


async def test_runner_never_overlaps_and_stops_cleanly(clock: FakeClock) -> None:
    """One task per probe, the next check only after the wait; leaving cancels every task."""
    registry = ProviderRegistry(clock=clock)
    fast, slow = HttpProbe(URL, interval=10.0), HttpProbe("https://api.cerebras.ai/v1/models", interval=60.0)
    registry.register("openrouter", probe=fast)
    registry.register("cerebras", probe=slow)
    registry.register("unprobed")
    in_flight: dict[str, int] = {}
    most: dict[str, int] = {}

    async def handler(request: httpx.Request) -> httpx.Response:
        host = request.url.host
        in_flight[host] = in_flight.get(host, 0) + 1
        most[host] = max(most.get(host, 0), in_flight[host])
        await asyncio.sleep(0)
        in_flight[host] -= 1
        return httpx.Response(200)

    ticker = Ticker()
    runner = probes(registry, transport=httpx.MockTransport(handler), sleep=ticker.sleep)
    before = asyncio.all_tasks()
    async with runner:
        assert runner.running
        await until(lambda: len(ticker.sleeps) == 2)
        assert sorted(ticker.sleeps) == [10.0, 60.0]
        assert (fast.successes, slow.successes) == (1, 1)
        for _ in range(3):
            ticker.gate.release()
        await until(lambda: len(ticker.sleeps) == 5)
        assert fast.successes + slow.successes == 5
        assert most == {"openrouter.ai": 1, "api.cerebras.ai": 1}  # never two checks of one probe at once
        with pytest.raises(RuntimeError, match="already running"):
            await runner.__aenter__()
    assert not runner.running
    assert asyncio.all_tasks() == before
    async with runner:  # can run again, as a server restarts its lifespan
        await until(lambda: len(ticker.sleeps) == 7)


async def test_no_probes_means_no_tasks() -> None:
    """Probes are off by default: entering the runner starts nothing."""
    before = asyncio.all_tasks()
    async with probes(ProviderRegistry()) as runner:
        assert asyncio.all_tasks() == before
        assert runner.running


@pytest.mark.parametrize("framework", ["starlette", "fastapi"])
async def test_probes_run_under_the_app_lifespan(clock: FakeClock, framework: str) -> None:
    """lifespan=resilience.probes(registry) checks while the app runs and stops on shutdown."""
    registry = ProviderRegistry(clock=clock)
    probe = HttpProbe(URL, interval=3600.0)
    registry.register("openrouter", probe=probe)
    lifespan = probes(registry, transport=httpx.MockTransport(answering(200)))
    app: Any = Starlette(lifespan=lifespan) if framework == "starlette" else FastAPI(lifespan=lifespan)
    shutdown = asyncio.Event()
    startup_sent = False
    sent: list[str] = []

    async def receive() -> Message:
        nonlocal startup_sent
        if not startup_sent:
            startup_sent = True
            return {"type": "lifespan.startup"}
        await shutdown.wait()
        return {"type": "lifespan.shutdown"}

    async def send(message: Message) -> None:
        sent.append(message["type"])

    scope = {"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}
    task = asyncio.create_task(app(scope, receive, send))
    await until(lambda: probe.successes == 1)
    assert lifespan.running
    assert health_payload(registry)["providers"][0]["probe"]["ok"] is True
    shutdown.set()
    await task
    assert sent == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
    assert not lifespan.running


async def test_dashboard_shows_probe_results_only_when_configured(clock: FakeClock) -> None:
    """A probed provider gains a "probe" object; others keep exactly the SPEC keys."""
    registry = ProviderRegistry(clock=clock)
    probe = HttpProbe(URL, headers={"Authorization": "Bearer sk-secret"})
    provider = registry.register("openrouter", probe=probe)
    registry.register("cerebras")
    pending = health_payload(registry)["providers"][0]["probe"]
    assert pending["ok"] is None and pending["checked_at"] is None
    async with client(answering(503, clock, 0.5)) as http:
        await probe.check(provider, http)
    probed, plain = health_payload(registry)["providers"]
    assert "probe" not in plain
    assert probed["probe"] | {"checked_at": None} == {
        "ok": False, "status": 503, "error": None, "latency_ms": 500.0, "consecutive_failures": 1,
        "successes": 0, "failures": 1, "checked_at": None, "interval_seconds": 30.0,
    }
    assert probed["probe"]["checked_at"].endswith("Z")
    assert "sk-secret" not in str(probed) and URL not in str(probed)


async def test_leaving_ends_a_check_whose_transport_swallows_the_cancel(clock: FakeClock) -> None:
    """A transport that eats the cancellation (returns an answer instead) still lets the runner stop."""
    registry = ProviderRegistry(clock=clock)
    probe = HttpProbe(URL, interval=10.0)
    registry.register("openrouter", probe=probe)
    waiting = asyncio.Event()

    async def handler(request: httpx.Request) -> httpx.Response:
        waiting.set()
        # as 3.11's asyncio.wait_for does when its inner call finishes as the cancel comes
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.sleep(3600)
        return httpx.Response(200)

    runner = probes(registry, transport=httpx.MockTransport(handler), sleep=asyncio.sleep)
    before = asyncio.all_tasks()
    await runner.__aenter__()
    await waiting.wait()
    async with asyncio.timeout(5):
        await runner.__aexit__(None, None, None)
    assert asyncio.all_tasks() == before and probe.successes == 1
