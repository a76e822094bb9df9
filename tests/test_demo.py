"""The demo: ``python -m resilience demo`` runs, shows trips and recoveries, and stops cleanly."""

from __future__ import annotations

import io
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest
from prometheus_client.parser import text_string_to_metric_families

import resilience
from resilience.demo import DemoOptions
from resilience.demo.gateway import COMPLETIONS_PATH, build_gateway
from resilience.demo.load import LoadGenerator, Progress, status_key
from resilience.demo.upstreams import Behaviour, Upstream, demo_upstreams
from resilience.testing import FakeClock

ROOT = Path(__file__).resolve().parents[1]
SPEC_GAUGES = (
    "provider_availability",
    "provider_error_rate",
    "gatewayz_provider_health_score",
    "gatewayz_circuit_breaker_state",
)
RUN_SECONDS = 12


def free_port() -> int:
    """A port of 127.0.0.1 nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_demo(tmp_path: Path, **env: str) -> tuple[subprocess.Popen[bytes], Path, Path]:
    """``python -m resilience demo`` in a subprocess; its stdout and stderr go to files."""
    out, err = tmp_path / "stdout.txt", tmp_path / "stderr.txt"
    with out.open("wb") as stdout, err.open("wb") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-m", "resilience", "demo"], cwd=ROOT,
            env={**os.environ, **env}, stdout=stdout, stderr=stderr,
        )
    return process, out, err


def gauges(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """The SPEC gauges' samples in a Prometheus text exposition."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text) if family.name in SPEC_GAUGES
        for s in family.samples
    }


def poll(base: str, process: subprocess.Popen[bytes]) -> Iterator[tuple[dict[str, Any], str]]:
    """Dashboard JSON and /metrics text, every quarter second while the demo runs."""
    with httpx2.Client(base_url=base, timeout=2.0) as client:
        while process.poll() is None:
            try:
                health = client.get("/ops/health/dashboard").json()
                metrics = client.get("/metrics").text
            except httpx2.TransportError:  # not up yet, or shutting down
                pass
            else:
                yield health, metrics
            time.sleep(0.25)


@pytest.mark.integration
def test_demo_trips_a_breaker_moves_the_gauges_and_exits_zero(tmp_path: Path) -> None:
    """DEMO_SECONDS ends the run with 0; meanwhile one provider is open while one is healthy, gauges move."""
    port = free_port()
    process, out, err = start_demo(tmp_path, DEMO_SECONDS=str(RUN_SECONDS), DEMO_PORT=str(port))
    try:
        seen = [(h, gauges(m)) for h, m in poll(f"http://127.0.0.1:{port}", process)]
        assert process.wait(timeout=RUN_SECONDS + 15) == 0, err.read_text()
    finally:
        process.kill()
        process.wait()
    assert "Traceback" not in err.read_text()
    stdout = out.read_text()
    assert f"http://127.0.0.1:{port}/ops/health/dashboard/ui" in stdout
    assert f"http://127.0.0.1:{port}/metrics" in stdout
    assert "share one asyncio loop" in stdout
    assert "stopped after" in stdout
    assert re.search(r" 503 \d+  rejected [1-9]\d*  ", stdout), stdout  # the open breaker's own column
    both = [
        health for health, _ in seen
        if {p["breaker_state"] for p in health["providers"]} >= {"open"}
        and any(p["name"] == "healthy" and p["status"] == "healthy" for p in health["providers"])
    ]
    assert both, [[(p["name"], p["breaker_state"], p["status"]) for p in h["providers"]] for h, _ in seen]
    scrapes = [g for _, g in seen if g]
    assert {name for name, _ in scrapes[0]} == set(SPEC_GAUGES)
    assert scrapes[0] != scrapes[-1]


@pytest.mark.integration
@pytest.mark.parametrize(
    "sig", [pytest.param(signal.SIGINT, id="SIGINT"), pytest.param(signal.SIGTERM, id="SIGTERM")]
)
def test_demo_stops_cleanly_on_a_signal(tmp_path: Path, sig: signal.Signals) -> None:
    """Ctrl-C or SIGTERM shut the servers down and exit 0 without a traceback."""
    process, out, err = start_demo(tmp_path, DEMO_PORT=str(free_port()), DEMO_SECONDS="")
    try:
        deadline = time.monotonic() + 15
        while " req " not in out.read_text() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert process.poll() is None, err.read_text()
        process.send_signal(sig)
        assert process.wait(timeout=10) == 0, err.read_text()
    finally:
        process.kill()
        process.wait()
    assert err.read_text() == ""
    assert "stopped after" in out.read_text()


def test_demo_refuses_a_busy_port(tmp_path: Path) -> None:
    """A taken DEMO_PORT fails at once with a message naming the port and how to choose another."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        process, _, err = start_demo(tmp_path, DEMO_PORT=str(port), DEMO_SECONDS="5")
        assert process.wait(timeout=15) == 2
    message = err.read_text()
    assert f"port {port}" in message and "DEMO_PORT" in message
    assert "Traceback" not in message


@pytest.mark.parametrize(
    ("env", "given", "expected"),
    [
        pytest.param({}, {}, DemoOptions(), id="defaults"),
        pytest.param({"DEMO_PORT": "9001", "DEMO_SECONDS": "20", "DEMO_RPS": "5"}, {},
                     DemoOptions(port=9001, seconds=20.0, rps=5.0), id="env"),
        pytest.param({"DEMO_PORT": "9001", "DEMO_SECONDS": ""}, {"port": 9002, "seconds": None},
                     DemoOptions(port=9002), id="flags-win-empty-is-unset"),
        pytest.param({"DEMO_FLAKY_ERROR_RATE": "0.5"}, {}, DemoOptions(flaky_error_rate=0.5), id="flaky"),
    ],
)
def test_options_from_env(env: dict[str, str], given: dict[str, Any], expected: DemoOptions) -> None:
    """DEMO_* variables set the options; command-line values win; empty means unset."""
    assert DemoOptions.from_env(env, **given) == expected


@pytest.mark.parametrize(
    ("env", "named"),
    [
        pytest.param({"DEMO_RPS": "fast"}, "DEMO_RPS", id="not-a-number"),
        pytest.param({"DEMO_PORT": "70000"}, "port", id="port-range"),
        pytest.param({"DEMO_FLAKY_ERROR_RATE": "1.5"}, "flaky_error_rate", id="rate-range"),
        pytest.param({"DEMO_SECONDS": "0"}, "seconds", id="seconds"),
    ],
)
def test_bad_options_name_the_setting(env: dict[str, str], named: str) -> None:
    """A bad value is a ValueError naming the variable or option."""
    with pytest.raises(ValueError, match=named):
        DemoOptions.from_env(env)


REJECTED = b'{"error": {"type": "circuit_open", "provider": "outage", "retry_after": 3}}'
UPSTREAM_503 = b'{"error": {"message": "service unavailable", "type": "upstream_error"}}'


@pytest.mark.parametrize(
    ("status", "body", "key"),
    [
        pytest.param(200, b"", "2xx", id="200"),
        pytest.param(204, b"", "2xx", id="204"),
        pytest.param(429, b"", "429", id="429"),
        pytest.param(503, UPSTREAM_503, "503", id="503-upstream"),
        pytest.param(503, b"", "503", id="503-empty"),
        pytest.param(503, b"<html>busy</html>", "503", id="503-not-json"),
        pytest.param(503, b'["circuit_open"]', "503", id="503-not-an-object"),
        pytest.param(503, b'{"error": "circuit_open"}', "503", id="503-error-not-an-object"),
        pytest.param(503, REJECTED, "rejected", id="503-breaker"),
        pytest.param(500, REJECTED, "5xx", id="500-is-not-a-rejection"),
        pytest.param(502, b"", "5xx", id="502"),
        pytest.param(404, b"", "other", id="404"),
        pytest.param(None, b"", "errors", id="no-response"),
    ],
)
def test_status_mix_columns(status: int | None, body: bytes, key: str) -> None:
    """Each response lands in its progress-line column; the breaker's 503 in ``rejected``."""
    assert status_key(status, body) == key


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("mix", "shown"),
    [
        pytest.param({"2xx": 5}, "2xx 5  503 0  rejected 0", id="quiet"),
        pytest.param({"2xx": 3, "429": 2, "503": 1, "rejected": 4, "errors": 1},
                     "2xx 3  429 2  503 1  rejected 4  errors 1", id="busy"),
    ],
)
async def test_progress_line_shows_rejections_apart(mix: dict[str, int], shown: str) -> None:
    """The progress line has a ``rejected`` column of its own beside the providers' 503s."""
    registry = resilience.ProviderRegistry(clock=FakeClock())
    registry.register("outage").force_open()
    registry.register("healthy")
    load = LoadGenerator("http://gw" + COMPLETIONS_PATH, ["outage", "healthy"], rps=1.0)
    load.sent = sum(mix.values())
    load.mix.update(mix)
    clock = FakeClock(50.0)
    progress = Progress(load, registry, io.StringIO(), clock=clock)
    clock.advance(2.5)
    line = progress.line()
    await load.aclose()
    assert line == f"   2.5s  {load.sent:6d} req  {shown}  |  outage FORCED_OPEN  healthy closed"


def test_outage_follows_its_schedule() -> None:
    """The outage provider is up, then answers 503 for the down phase, then is up again."""
    clock = FakeClock(100.0)
    outage = Upstream("outage", Behaviour(up_seconds=5.0, down_seconds=10.0), clock=clock)
    statuses = []
    for step in (1.0, 5.0, 9.0, 1.0):  # t = 1, 6, 15, 16
        clock.advance(step)
        statuses.append(outage.answer(b"{}")[0])
    assert statuses == [200, 503, 200, 200]


def test_throttled_announces_its_quota_and_pushes_back() -> None:
    """The throttled provider: its quota (40 per 10 s) in x-ratelimit headers on every answer, 429 past it
    until the window resets, and a share of 429s with Retry-After within it."""
    clock = FakeClock(100.0)
    throttled = next(u for u in demo_upstreams(flaky_error_rate=0.3, flaky_latency=0.1, clock=clock)
                     if u.name == "throttled")
    answers = [throttled.answer(b'{"model": "demo-small"}') for _ in range(60)]
    assert all(dict(headers)[b"x-ratelimit-limit-requests"] == b"40" for _, _, headers in answers)
    remaining = [int(dict(headers)[b"x-ratelimit-remaining-requests"]) for _, _, headers in answers]
    assert remaining[:3] == [39, 38, 37] and remaining[39:] == [0] * 21
    assert all(status == 429 for status, _, _ in answers[40:])  # over the quota
    pushed_back = [headers for status, _, headers in answers[:40] if status == 429]
    assert 0 < len(pushed_back) < 15 and all((b"retry-after", b"2") in h for h in pushed_back)
    ok = next(payload for status, payload, _ in answers if status == 200)
    assert ok["usage"]["cost"] > 0  # type: ignore[index]
    clock.advance(10.0)  # the next window
    assert dict(throttled.answer(b"{}")[2])[b"x-ratelimit-remaining-requests"] == b"39"


def upstream_transport(upstreams: dict[str, Upstream]) -> httpx2.MockTransport:
    """Answers as the simulated providers would, told apart by the request's host."""

    def handler(request: httpx2.Request) -> httpx2.Response:
        status, payload, headers = upstreams[request.url.host].answer(request.content)
        return httpx2.Response(status, json=payload, headers=[(k.decode(), v.decode()) for k, v in headers])

    return httpx2.MockTransport(handler)


@pytest.mark.anyio
async def test_gateway_forwards_and_answers_open_breakers_with_503() -> None:
    """The gateway forwards by provider, counts cost, and an open breaker is a 503 with Retry-After."""
    upstreams = {u.name: u for u in demo_upstreams(flaky_error_rate=0.3, flaky_latency=0.1)}
    gateway = build_gateway({name: f"http://{name}" for name in upstreams}, upstream_transport(upstreams))
    client = httpx2.AsyncClient(transport=httpx2.ASGITransport(app=gateway.app), base_url="http://gw")
    async with client:
        ok = await client.post(COMPLETIONS_PATH, json={"provider": "healthy", "model": "demo-large"})
        gateway.registry.get("outage").force_open()
        shut = await client.post(
            COMPLETIONS_PATH, json={"model": "demo-small"}, headers={"x-provider": "outage"}
        )
        unknown = await client.post(COMPLETIONS_PATH, json={"provider": "nope"})
        health = (await client.get("/ops/health/dashboard")).json()
        metrics = (await client.get("/metrics")).text
    await gateway.aclose()
    assert ok.status_code == 200 and ok.json()["provider"] == "healthy"
    assert shut.status_code == 503 and int(shut.headers["retry-after"]) >= 1
    assert json.loads(shut.content)["error"]["provider"] == "outage"
    assert status_key(shut.status_code, shut.content) == "rejected"
    assert unknown.status_code == 404
    states = {p["name"]: p["breaker_state"] for p in health["providers"]}
    assert states == {"healthy": "closed", "flaky": "closed", "outage": "forced_open", "throttled": "closed"}
    assert 'gatewayz_cost_by_provider_total{provider="healthy"}' in metrics


def runs(states: list[str]) -> list[str]:
    """``states`` with repeats in a row folded: what a watcher sees change."""
    return [state for i, state in enumerate(states) if i == 0 or states[i - 1] != state]


@pytest.mark.anyio
async def test_outage_breaker_trips_half_opens_and_closes_in_every_cycle() -> None:
    """On a fake clock, over 3 outage cycles the demo breaker trips, is half-open a second, closes in each."""
    clock = FakeClock(1000.0)
    upstreams = {u.name: u for u in demo_upstreams(flaky_error_rate=0.3, flaky_latency=0.1, clock=clock)}
    outage = upstreams["outage"].behaviour
    cycle = outage.up_seconds + outage.down_seconds
    gateway = build_gateway({name: f"http://{name}" for name in upstreams}, upstream_transport(upstreams),
                            clock=clock, async_sleep=clock.async_sleep)
    provider = gateway.registry.get("outage")
    seen: list[tuple[float, str, int]] = []  # (seconds since start, state before the request, status)
    client = httpx2.AsyncClient(transport=httpx2.ASGITransport(app=gateway.app), base_url="http://gw")
    async with client:
        while (elapsed := clock() - 1000.0) < outage.up_seconds + 3 * cycle:
            state = str(provider.state)  # as the dashboard reads it: open with its time up is half_open
            response = await client.post(COMPLETIONS_PATH, json={"provider": "outage", "model": "demo-small"})
            seen.append((elapsed, state, response.status_code))
            clock.advance(0.1)  # the demo's 40 requests/s over four providers: 10/s to each
    await gateway.aclose()
    for k in range(3):
        down = outage.up_seconds + k * cycle  # the k-th down phase starts; the next one at down + cycle
        this_cycle = [(t, state, status) for t, state, status in seen if down <= t < down + cycle]
        changes = runs([state for _, state, _ in this_cycle])
        assert changes[:2] == ["closed", "open"] and changes[-1] == "closed", (k, changes)
        assert "half_open" in changes and "closed" not in changes[1:-1], (k, changes)
        up = down + outage.down_seconds
        closed_again = next(t for t, state, _ in this_cycle if t >= up and state == "closed")
        assert closed_again - up < outage.up_seconds / 2, (k, closed_again - up)
        last_open = max(t for t, state, _ in this_cycle if state == "open")
        half_open_at = min(t for t, state, _ in this_cycle if state == "half_open" and t > last_open)
        assert closed_again - half_open_at >= 1.0, k  # so the once-a-second progress line shows it
        assert all(status == 200 for t, _, status in this_cycle if t >= closed_again), k
