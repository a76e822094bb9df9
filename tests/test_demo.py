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
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest
from prometheus_client.parser import text_string_to_metric_families

import resilience
from resilience.demo import DemoOptions
from resilience.demo.gateway import COMPLETIONS_PATH, ROUTE, ROUTE_TARGETS, build_gateway
from resilience.demo.load import LoadGenerator, Progress, status_key
from resilience.demo.tracing import TraceMode, tracer_provider
from resilience.demo.upstreams import Behaviour, SseStream, Upstream, demo_upstreams
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
    # the route's callers: served by outage, then (its outage starts at 7 s) by healthy instead
    assert re.search(rf"\|  {ROUTE} ok \d+ \(outage \d+ healthy [1-9]\d*\)  failed 0  ", stdout), stdout
    last = seen[-1][0]
    (route,) = last["routes"]
    assert route["name"] == ROUTE and route["calls"] > 0
    assert sorted(t["provider"] for t in route["targets"]) == ["healthy", "outage"]  # admitting ones first
    ttft = {p["name"]: p["ttft_ms"]["p50"] for p in last["providers"]}
    assert ttft["streaming"] is not None and ttft["healthy"] is None  # only streams have a first token


@pytest.mark.integration
def test_demo_trace_prints_spans_to_the_console(tmp_path: Path) -> None:
    """DEMO_TRACE=1: the banner says so, every call's span is printed as one line, and it exits 0."""
    process, out, err = start_demo(tmp_path, DEMO_TRACE="1", DEMO_SECONDS="3", DEMO_RPS="10",
                                   DEMO_PORT=str(free_port()))
    try:
        assert process.wait(timeout=20) == 0, err.read_text()
    finally:
        process.kill()
        process.wait()
    stdout = out.read_text()
    assert "Traceback" not in err.read_text()
    assert "  traces     " in stdout and "stopped after" in stdout
    spans = [line for line in stdout.splitlines() if line.startswith("span resilience ")]
    assert spans, stdout
    assert any("gen_ai.provider.name=" in line for line in spans)


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
        pytest.param({"DEMO_STREAM_ERROR_RATE": "0.25"}, {}, DemoOptions(stream_error_rate=0.25),
                     id="stream"),
        pytest.param({"DEMO_TRACE": "1"}, {}, DemoOptions(trace="summary"), id="trace"),
        pytest.param({"DEMO_TRACE": " JSON "}, {}, DemoOptions(trace="json"), id="trace-json"),
        pytest.param({"DEMO_TRACE": "0"}, {}, DemoOptions(), id="trace-off"),
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
        pytest.param({"DEMO_STREAM_ERROR_RATE": "-0.1"}, "stream_error_rate", id="stream-rate-range"),
        pytest.param({"DEMO_TRACE": "maybe"}, "DEMO_TRACE", id="trace"),
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


ANTHROPIC_ERROR = b'event: error\ndata: {"type": "error", "error": {"type": "overloaded_error"}}\n\n'


@pytest.mark.parametrize(
    ("body", "key"),
    [
        pytest.param(b'data: {"choices": []}\n\ndata: [DONE]\n\n', "2xx", id="clean"),
        pytest.param(b'data: {"choices": []}\n\n' + ANTHROPIC_ERROR, "in-band", id="event-error"),
        pytest.param(b'data: {"error": {"code": 502}}\n\n', "in-band", id="data-error"),
        pytest.param(b'data: {"error": null}\n\n', "2xx", id="error-null"),
        pytest.param(b': ping\n\nevent: ping\ndata: {"type": "ping"}\n\n', "2xx", id="pings"),
        pytest.param(b'data: {"error": \n\n', "2xx", id="not-json"),
    ],
)
def test_status_mix_counts_in_band_stream_errors(body: bytes, key: str) -> None:
    """A 200 SSE stream with an error event in it is ``in-band``; the same bytes not as SSE are 2xx."""
    assert status_key(200, body, sse=True) == key
    assert status_key(200, body) == "2xx"


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


class ChunkStream(httpx2.AsyncByteStream):
    """A response body that arrives in these chunks."""

    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks = chunks

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for chunk in self.chunks:
            yield chunk


def upstream_transport(
    upstreams: dict[str, Upstream], seen: list[httpx2.Request] | None = None
) -> httpx2.MockTransport:
    """Answers as the simulated providers would, told apart by the request's host (streams at once);
    the requests go to ``seen`` too."""

    def handler(request: httpx2.Request) -> httpx2.Response:
        if seen is not None:
            seen.append(request)
        status, payload, headers = upstreams[request.url.host].answer(request.content)
        extra = [(k.decode(), v.decode()) for k, v in headers]
        if isinstance(payload, SseStream):  # chunk by chunk, as over the network (no waits)
            return httpx2.Response(status, stream=ChunkStream([chunk for _, chunk in payload.chunks]),
                                   headers=[("content-type", "text/event-stream"), *extra])
        return httpx2.Response(status, json=payload, headers=extra)

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
    assert states == {"healthy": "closed", "flaky": "closed", "outage": "forced_open", "throttled": "closed",
                      "streaming": "closed"}
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


def sse_events(body: bytes) -> list[tuple[str, Any]]:
    """A stream's events as ``(kind, data)``: ``comment``, ``ping``, ``error``, ``content``, ``usage``,
    ``done``."""
    events: list[tuple[str, Any]] = []
    for raw in body.split(b"\n\n"):
        if not raw:
            continue
        lines = raw.split(b"\n")
        if lines[0].startswith(b":"):
            events.append(("comment", lines[0]))
            continue
        name = next((line[6:].strip() for line in lines if line.startswith(b"event:")), b"")
        data = b"".join(line[5:].strip() for line in lines if line.startswith(b"data:"))
        if name == b"ping":
            events.append(("ping", data))
        elif data == b"[DONE]":
            events.append(("done", data))
        else:
            event = json.loads(data)
            kind = ("error" if name == b"error" or isinstance(event.get("error"), dict)
                    else "usage" if "usage" in event else "content")
            events.append((kind, event))
    return events


def test_streaming_provider_pings_between_content_and_sometimes_fails_in_band() -> None:
    """The streaming provider: keepalives (``: ping``, ``event: ping``) before its first content event and
    between content events; a share of streams, status 200, end with an in-band error (both shapes) after
    two or three content events; the others end with usage and ``[DONE]``."""
    upstreams = {u.name: u for u in demo_upstreams(flaky_error_rate=0.3, flaky_latency=0.1,
                                                   stream_error_rate=0.25, clock=FakeClock())}
    streaming = upstreams["streaming"]
    answers = [streaming.answer(b'{"model": "demo-large", "stream": true}') for _ in range(200)]
    assert all(status == 200 and isinstance(payload, SseStream) for status, payload, _ in answers)
    streams = [sse_events(payload.body) for _, payload, _ in answers if isinstance(payload, SseStream)]
    failed = [kinds for kinds in streams if kinds[-1][0] == "error"]
    assert 0.15 < len(failed) / len(streams) < 0.35, len(failed)
    for events in streams:
        kinds = [kind for kind, _ in events]
        assert kinds[:2] == ["comment", "ping"], kinds  # pings while it "thinks": no content yet
        contents = [i for i, kind in enumerate(kinds) if kind == "content"]
        assert "comment" in kinds[contents[0]:-1], kinds  # and between content events
        if kinds[-1] == "error":
            assert 2 <= len(contents) <= 3 and "usage" not in kinds and "done" not in kinds, kinds
        else:
            assert kinds[-2:] == ["usage", "done"], kinds
            assert events[-2][1]["usage"]["cost"] > 0
    shapes = {json.dumps(sorted(events[-1][1])) for events in failed}
    assert shapes == {'["error", "type"]', '["error"]'}  # Anthropic's event: error, and openrouter's
    anthropic = next(events[-1][1] for events in failed if "type" in events[-1][1])
    assert anthropic["error"]["type"] == "overloaded_error"
    assert b"event: error\n" in next(p.body for _, p, _ in answers
                                     if isinstance(p, SseStream) and b"overloaded_error" in p.body)
    assert isinstance(streaming.answer(b'{"model": "demo-small"}')[1], dict)  # asked not to stream: JSON
    plain = upstreams["healthy"].answer(b'{"stream": true}')[1]
    assert isinstance(plain, SseStream)
    assert {kind for kind, _ in sse_events(plain.body)} == {"content", "usage", "done"}  # no pings, no errors


@pytest.mark.anyio
async def test_upstream_serves_its_stream_as_event_stream() -> None:
    """Over ASGI the stream goes out as ``text/event-stream``, chunk by chunk, ending with ``[DONE]``."""
    upstream = Upstream("s", Behaviour(latency=0.001, keepalives=True, token_interval=0.001))
    client = httpx2.AsyncClient(transport=httpx2.ASGITransport(app=upstream), base_url="http://s")
    async with client:
        response = await client.post(COMPLETIONS_PATH, json={"stream": True})
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/event-stream"
    kinds = [kind for kind, _ in sse_events(response.content)]
    assert kinds[0] == "comment" and kinds[-1] == "done" and "content" in kinds


@pytest.mark.anyio
async def test_gateway_streams_and_its_dashboard_shows_ttft_and_in_band_failures() -> None:
    """Streams pass through the gateway as they are; each in-band error is a failure of the streaming
    provider, and its time to first token shows on the dashboard (only streams have one)."""
    clock = FakeClock(100.0)
    upstreams = {u.name: u for u in demo_upstreams(flaky_error_rate=0.3, flaky_latency=0.1,
                                                   stream_error_rate=0.25, clock=clock)}
    gateway = build_gateway({name: f"http://{name}" for name in upstreams}, upstream_transport(upstreams),
                            clock=clock, async_sleep=clock.async_sleep)
    keys = []
    client = httpx2.AsyncClient(transport=httpx2.ASGITransport(app=gateway.app), base_url="http://gw")
    async with client:
        for _ in range(40):
            response = await client.post(COMPLETIONS_PATH, json={"provider": "streaming", "stream": True})
            assert response.headers["content-type"].startswith("text/event-stream")
            keys.append(status_key(response.status_code, response.content, sse=True))
            clock.advance(0.1)
        await client.post(COMPLETIONS_PATH, json={"provider": "healthy"})
        health = (await client.get("/ops/health/dashboard")).json()
    await gateway.aclose()
    assert set(keys) == {"2xx", "in-band"}
    providers = {p["name"]: p for p in health["providers"]}
    streaming = providers["streaming"]
    assert streaming["calls"] == 40 and streaming["failures"] == keys.count("in-band")
    assert streaming["ttft_ms"]["p50"] is not None
    assert providers["healthy"]["ttft_ms"] == {"p50": None, "p95": None, "p99": None}


@pytest.mark.anyio
async def test_route_fails_over_to_healthy_while_the_outage_provider_is_down() -> None:
    """The demo route tries ``outage`` first, then ``healthy``: over a whole outage cycle (fake clock) its
    callers get 200 every time, from ``outage`` while it is up and closed, else from ``healthy``; calls
    that met the outage before its breaker tripped failed over (2 attempts), and the dashboard counts them."""
    clock = FakeClock(1000.0)
    upstreams = {u.name: u for u in demo_upstreams(flaky_error_rate=0.3, flaky_latency=0.1, clock=clock)}
    outage = upstreams["outage"].behaviour
    cycle = outage.up_seconds + outage.down_seconds
    sent: list[httpx2.Request] = []
    gateway = build_gateway({name: f"http://{name}" for name in upstreams},
                            upstream_transport(upstreams, sent), clock=clock, async_sleep=clock.async_sleep)
    route = gateway.registry.get_route(ROUTE)
    assert [t.provider for t in route.targets] == list(ROUTE_TARGETS) == ["outage", "healthy"]
    assert route.policy.order == "priority"
    load = LoadGenerator("http://gw" + COMPLETIONS_PATH, [], rps=1.0, routes=[ROUTE])
    seen: list[tuple[float, int, str, int]] = []  # (seconds since start, status, served by, attempts)
    client = httpx2.AsyncClient(transport=httpx2.ASGITransport(app=gateway.app), base_url="http://gw")
    async with client:
        while (elapsed := clock() - 1000.0) < cycle + outage.up_seconds:
            response = await client.post(COMPLETIONS_PATH, json={"route": ROUTE, "model": "demo-large"})
            provider = response.headers["x-resilience-provider"]
            attempts = int(response.headers["x-resilience-attempts"])
            seen.append((elapsed, response.status_code, provider, attempts))
            load.routes[ROUTE].record(response.status_code, provider, attempts)
            clock.advance(0.1)
        health = (await client.get("/ops/health/dashboard")).json()
    await gateway.aclose()
    await load.aclose()
    assert {status for _, status, _, _ in seen} == {200}  # no caller saw the outage
    down, up = outage.up_seconds, cycle
    assert {(p, a) for t, _, p, a in seen if t < down} == {("outage", 1)}
    during = [(p, a) for t, _, p, a in seen if down <= t < up]
    assert {p for p, _ in during} == {"healthy"}
    failed_over = [a for _, a in during if a == 2]
    assert failed_over and during[0] == ("healthy", 2)  # before the trip: outage tried, then healthy
    assert during.count(("healthy", 1)) > len(during) / 2  # once open: skipped without an attempt
    assert ("outage", 1) in [(p, a) for t, _, p, a in seen if t >= up + outage.up_seconds / 2]  # back
    to_healthy = [r for r in sent if r.url.host == "healthy"]
    assert {str(r.url) for r in to_healthy} == {"http://healthy/v1/chat/completions"}
    assert {r.headers["authorization"] for r in to_healthy} == {"Bearer demo-key-for-healthy"}
    assert {json.loads(r.content)["model"] for r in to_healthy} == {"demo-small"}  # the target's model
    (shown,) = health["routes"]
    assert shown["name"] == ROUTE and shown["calls"] > 0 and shown["failovers"] > 0
    assert [t["provider"] for t in shown["targets"]] == ["outage", "healthy"]
    seen_by_callers = load.routes[ROUTE]
    assert seen_by_callers.failed == 0 and seen_by_callers.failovers == len([a for *_, a in seen if a == 2])


@pytest.mark.anyio
async def test_progress_line_shows_what_route_callers_saw() -> None:
    """The route's part of the line: answers and who served them, failures, failovers."""
    registry = resilience.ProviderRegistry(clock=FakeClock())
    registry.register("outage")
    registry.register("healthy")
    load = LoadGenerator("http://gw" + COMPLETIONS_PATH, ["outage", "healthy"], rps=1.0, routes=[ROUTE])
    for status, provider, attempts in [(200, "outage", 1), (200, "healthy", 2), (200, "healthy", 1),
                                       (503, None, 1), (None, None, 1)]:
        load.routes[ROUTE].record(status, provider, attempts)
    load.sent, load.mix["2xx"] = 5, 0
    line = Progress(load, registry, io.StringIO(), clock=FakeClock()).line()
    await load.aclose()
    assert line.endswith(f"rejected 0  |  {ROUTE} ok 3 (outage 1 healthy 2)  failed 2  failovers 1"
                         "  |  outage closed  healthy closed")


def test_trace_off_builds_no_tracer_provider() -> None:
    """Without DEMO_TRACE there is nothing to install."""
    assert tracer_provider("off", io.StringIO()) is None


@pytest.mark.parametrize("mode", ["summary", "json"])
def test_trace_prints_each_span_as_it_ends_without_installing_anything(mode: TraceMode) -> None:
    """DEMO_TRACE's provider is an SDK TracerProvider printing each span to the console as it ends
    (one line each); building it leaves the process's global tracer provider alone."""
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider

    before = trace.get_tracer_provider()
    out = io.StringIO()
    provider = tracer_provider(mode, out)
    assert isinstance(provider, TracerProvider)
    try:
        span = provider.get_tracer("test").start_span(
            "resilience demo-route", attributes={"gen_ai.provider.name": "healthy", "resilience.attempts": 2}
        )
        span.add_event("resilience.failover", {"from_provider": "outage", "to_provider": "healthy"})
        span.end()
    finally:
        provider.shutdown()
    assert trace.get_tracer_provider() is before
    (line,) = out.getvalue().splitlines()
    if mode == "summary":
        assert line.startswith("span resilience demo-route  ") and " UNSET  trace " in line
        assert line.endswith("gen_ai.provider.name=healthy resilience.attempts=2"
                             " | resilience.failover from_provider=outage to_provider=healthy")
    else:
        exported = json.loads(line)
        assert exported["name"] == "resilience demo-route"
        assert exported["resource"]["attributes"]["service.name"] == "resilience-demo"
        assert exported["events"][0]["name"] == "resilience.failover"


def test_trace_without_the_sdk_says_so_and_goes_on(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without opentelemetry-sdk, DEMO_TRACE=1 prints how to get it and the demo runs without traces."""
    monkeypatch.setitem(sys.modules, "opentelemetry.sdk.trace", None)  # import fails: ImportError
    err = io.StringIO()
    assert tracer_provider("summary", io.StringIO(), err) is None
    assert "opentelemetry-sdk" in err.getvalue() and "without traces" in err.getvalue()
