"""What providers say besides the status: in-band errors, keepalives, time to first token."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import anyio
import httpx
import pytest
from both_stacks import Chunks
from virtual_time import VIRTUAL_TIME

from resilience import (
    BreakerPolicy,
    Policy,
    ProviderRegistry,
    ResilientTransport,
    RetryPolicy,
    StreamTimeoutError,
)
from resilience.testing import FakeClock

pytestmark = [pytest.mark.anyio, pytest.mark.usefixtures("stack")]  # httpx2 and httpx

URL = "https://api.example.com/v1/chat/completions"

SSE = {"content-type": "text/event-stream"}
JSON = {"content-type": "application/json"}
MESSAGE_START = (
    b'event: message_start\ndata: {"type": "message_start", "message": {"usage": {"input_tokens": 7}}}\n\n'
)
DELTA = b'event: content_block_delta\ndata: {"type": "content_block_delta", "delta": {"text": "hi"}}\n\n'
PING = b'event: ping\ndata: {"type": "ping"}\n\n'


def anthropic_error(kind: str) -> bytes:
    data = {"type": "error", "error": {"type": kind, "message": "try later"}}
    return b"event: error\ndata: " + json.dumps(data).encode() + b"\n\n"


def setup(
    answers: list[tuple[int, dict[str, str], bytes | Chunks]],
    policy: Policy | None = None,
    clock: Any = None,
) -> tuple[ResilientTransport, ProviderRegistry, list[int]]:
    """A transport over an upstream giving ``answers`` in turn (the last one repeats)."""
    clock = clock or FakeClock(1000.0)
    registry = ProviderRegistry(clock=clock)
    registry.register("example", hosts=["api.example.com"], policy=policy)
    seen: list[int] = []

    def handler(request: httpx.Request) -> httpx.Response:
        status, headers, body = answers[min(len(seen), len(answers) - 1)]
        seen.append(status)
        if isinstance(body, Chunks):
            return httpx.Response(status, headers=headers, stream=body)
        return httpx.Response(status, headers=headers, content=body)

    sleeps: dict[str, Any] = {}
    if isinstance(clock, FakeClock):  # backoff waits pass on the fake clock
        sleeps = {"sleep": clock.sleep, "async_sleep": clock.async_sleep}
    return ResilientTransport(registry, httpx.MockTransport(handler), **sleeps), registry, seen


def totals(registry: ProviderRegistry) -> dict[str, int]:
    return {k: v for k, v in registry.get("example").snapshot().requests_total.items() if v}


ONE_TRY = Policy(retry=RetryPolicy(attempts=1))


# -- in-band errors, JSON -------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "outcome"),
    [
        pytest.param({"error": {"message": "overloaded", "code": 502}}, "failure", id="openai-object"),
        pytest.param({"error": {"message": "slow down", "code": 429}}, "throttled", id="numeric-429"),
        pytest.param({"error": {"type": "rate_limit_exceeded"}}, "throttled", id="rate-limit-type"),
        pytest.param({"error": "Internal Server Error"}, "failure", id="string"),
        pytest.param({"type": "error", "error": {"type": "overloaded_error"}}, "failure", id="anthropic"),
        pytest.param({"type": "error", "error": {"type": "rate_limit_error"}}, "throttled", id="anth-rl"),
        pytest.param({"error": None, "choices": []}, "success", id="null-is-no-error"),
        pytest.param({"error": "", "choices": []}, "success", id="empty-string-is-no-error"),
        pytest.param({"choices": [{"message": {"content": '"error": {}'}}]}, "success", id="in-content"),
    ],
)
@pytest.mark.parametrize("streamed", [False, True], ids=["in-memory", "streamed"])
def test_a_200_json_body_that_is_an_error_is_judged_by_it(
    body: dict[str, Any], outcome: str, streamed: bool
) -> None:
    raw = json.dumps(body).encode()
    transport, registry, _ = setup([(200, JSON, Chunks([raw[:9], raw[9:]]) if streamed else raw)], ONE_TRY)
    response = httpx.Client(transport=transport).post(URL, json={"model": "m"})
    assert response.status_code == 200 and response.content == raw  # the caller's bytes, untouched
    assert totals(registry) == {outcome: 1}


def test_a_non_streamed_in_band_error_is_retried_like_its_status() -> None:
    """A 200 JSON error is read before the call returns, so it is retried: the caller gets the answer."""
    error = json.dumps({"error": {"message": "overloaded", "code": 503}}).encode()
    good = json.dumps({"choices": [], "usage": {"cost": 0.25}}).encode()
    transport, registry, seen = setup(
        [(200, JSON, error), (200, JSON, good)], Policy(retry=RetryPolicy(attempts=2))
    )
    response = httpx.Client(transport=transport).post(URL, json={"model": "m"})
    assert response.content == good
    assert seen == [200, 200]
    snap = registry.get("example").snapshot()
    assert totals(registry) == {"failure": 1, "success": 1}
    assert snap.retries_total == {"in_band_error": 1}
    assert snap.cost_total == pytest.approx(0.25)


async def test_a_non_streamed_in_band_throttle_is_retried_async() -> None:
    error = json.dumps({"error": {"type": "rate_limit_error"}, "type": "error"}).encode()
    good = json.dumps({"choices": []}).encode()
    transport, registry, seen = setup(
        [(200, JSON, error), (200, JSON, good)], Policy(retry=RetryPolicy(attempts=3))
    )
    async with httpx.AsyncClient(transport=transport) as client:
        response = await client.post(URL, json={"model": "m"})
    assert response.content == good and len(seen) == 2
    assert totals(registry) == {"throttled": 1, "success": 1}


def test_an_in_band_error_that_is_not_retried_reaches_the_caller_unchanged() -> None:
    """A throttle the policy does not retry (429 not in retry_statuses) goes back as it came."""
    error = json.dumps({"error": {"code": 429}}).encode()
    policy = Policy(retry=RetryPolicy(attempts=3, retry_statuses=frozenset({503})))
    transport, registry, seen = setup([(200, JSON, error)], policy)
    response = httpx.Client(transport=transport).post(URL, json={"model": "m"})
    assert response.content == error and seen == [200]
    assert totals(registry) == {"throttled": 1}


# -- in-band errors, SSE --------------------------------------------------------------


@pytest.mark.parametrize(
    ("events", "outcome"),
    [
        pytest.param([MESSAGE_START, anthropic_error("overloaded_error")], "failure", id="overloaded"),
        pytest.param([MESSAGE_START, DELTA, anthropic_error("rate_limit_error")], "throttled", id="rl"),
        pytest.param(
            [b'data: {"choices": [{"delta": {"content": "a"}}]}\n\n',
             b'data: {"error": {"message": "provider disconnected", "code": 502}}\n\n'],
            "failure", id="openrouter-mid-stream",
        ),
        pytest.param([MESSAGE_START, DELTA, PING, b"data: [DONE]\n\n"], "success", id="clean"),
    ],
)
def test_an_sse_error_event_ends_the_attempt_as_that_error(events: list[bytes], outcome: str) -> None:
    transport, registry, _ = setup([(200, SSE, Chunks(events))], ONE_TRY)
    with httpx.Client(transport=transport) as client, client.stream("POST", URL, json={"stream": True}) as r:
        assert b"".join(r.iter_raw()) == b"".join(events)  # every byte reaches the caller
    assert totals(registry) == {outcome: 1}


def test_an_sse_error_split_across_chunks_is_found() -> None:
    body = MESSAGE_START + anthropic_error("overloaded_error")
    pieces = [body[i : i + 5] for i in range(0, len(body), 5)]
    transport, registry, _ = setup([(200, SSE, Chunks(pieces))], ONE_TRY)
    assert httpx.Client(transport=transport).post(URL, json={}).content == body
    assert totals(registry) == {"failure": 1}


def test_repeated_in_band_stream_errors_trip_the_breaker() -> None:
    """The bug this fixes: a provider failing every stream in-band used to look perfectly healthy."""
    policy = Policy(
        retry=RetryPolicy(attempts=1), breaker=BreakerPolicy(minimum_calls=5, failure_rate_threshold=0.5)
    )
    failing = Chunks([MESSAGE_START, anthropic_error("overloaded_error")])
    transport, registry, _ = setup([(200, SSE, failing)], policy)
    with httpx.Client(transport=transport) as client:
        for _ in range(5):
            client.post(URL, json={})
    assert registry.get("example").state == "open"


# -- keepalives and the stream timers ---------------------------------------------------


def ticking(clock: FakeClock, seconds: float) -> Callable[[int], Any]:
    return lambda i: clock.advance(seconds)


def test_sync_a_stream_that_only_pings_is_cut_by_first_token_timeout() -> None:
    clock = FakeClock(1000.0)
    pings = Chunks([b": ping\n\n", PING, b": OPENROUTER PROCESSING\n\n"] * 10, before=ticking(clock, 1.0))
    transport, registry, _ = setup([(200, SSE, pings)], Policy(first_token_timeout=5.0), clock)
    with httpx.Client(transport=transport) as client, client.stream("POST", URL, json={}) as response:
        got = []
        with pytest.raises(StreamTimeoutError, match="first content event") as caught:
            for chunk in response.iter_raw():
                got.append(chunk)
        assert isinstance(caught.value, httpx.TimeoutException)
    assert len(got) == 5  # the keepalives that came in time reached the caller
    assert totals(registry) == {"failure": 1}


def test_sync_keepalives_do_not_reset_idle_timeout() -> None:
    clock = FakeClock(1000.0)
    events = [DELTA, PING, PING, PING, DELTA]
    transport, registry, _ = setup([(200, SSE, Chunks(events, before=ticking(clock, 1.0)))],
                                   Policy(idle_timeout=2.5), clock)
    with pytest.raises(StreamTimeoutError, match="keepalives do not count"):
        httpx.Client(transport=transport).post(URL, json={})
    assert totals(registry) == {"failure": 1}


def test_sync_content_events_in_time_pass_with_keepalives_between() -> None:
    clock = FakeClock(1000.0)
    events = [PING, DELTA, PING, DELTA, PING, DELTA]
    transport, registry, _ = setup([(200, SSE, Chunks(events, before=ticking(clock, 1.0)))],
                                   Policy(idle_timeout=2.5, first_token_timeout=2.5), clock)
    assert httpx.Client(transport=transport).post(URL, json={}).content == b"".join(events)
    assert totals(registry) == {"success": 1}


def test_first_token_timeout_is_a_first_byte_timeout_for_other_streams() -> None:
    clock = FakeClock(1000.0)
    body = Chunks([b"late", b"more"], before=lambda i: clock.advance(3.0 if i == 0 else 0.0))
    transport, registry, _ = setup([(200, {"content-type": "text/plain"}, body)],
                                   Policy(first_token_timeout=2.0), clock)
    with pytest.raises(StreamTimeoutError):
        httpx.Client(transport=transport).get(URL)
    assert totals(registry) == {"failure": 1}


@VIRTUAL_TIME
async def test_async_a_stream_that_only_pings_is_cut_by_a_real_timer() -> None:
    """Async: keepalives every second never end the wait for the first token (trio virtual time)."""
    pings = Chunks([b": ping\n\n"] * 1000, before=lambda i: anyio.sleep(1.0))
    transport, registry, _ = setup([(200, SSE, pings)], Policy(first_token_timeout=5.5), anyio.current_time)
    async with httpx.AsyncClient(transport=transport) as client:
        started = anyio.current_time()
        with anyio.fail_after(60), pytest.raises(StreamTimeoutError, match="first content event"):
            await client.post(URL, json={})
        assert anyio.current_time() - started == pytest.approx(5.5)
    assert totals(registry) == {"failure": 1}


@VIRTUAL_TIME
async def test_async_idle_timeout_counts_from_the_last_content_event() -> None:
    events = [DELTA] + [PING] * 1000
    body = Chunks(events, before=lambda i: anyio.sleep(0.5))
    transport, registry, _ = setup([(200, SSE, body)], Policy(idle_timeout=3.0), anyio.current_time)
    async with httpx.AsyncClient(transport=transport) as client:
        started = anyio.current_time()
        with anyio.fail_after(60), pytest.raises(StreamTimeoutError):
            await client.post(URL, json={})
        assert anyio.current_time() - started == pytest.approx(3.5)  # first event at 0.5, then 3 s of pings
    assert totals(registry) == {"failure": 1}


# -- time to first token --------------------------------------------------------------


def test_time_to_first_token_is_recorded_for_sse_per_provider_and_model() -> None:
    clock = FakeClock(1000.0)
    delays = {0: 0.2, 1: 0.3, 2: 4.0}  # headers .. ping 0.2 .. first content 0.5 .. long answer
    body = Chunks([PING, DELTA, DELTA], before=lambda i: clock.advance(delays[i]))
    transport, registry, _ = setup([(200, SSE, body)], ONE_TRY, clock)
    httpx.Client(transport=transport).post(URL, json={"model": "claude", "stream": True})
    snap = registry.get("example").snapshot()
    assert snap.ttft.p50 == pytest.approx(0.5, rel=0.1)
    assert snap.window.p50 == pytest.approx(4.5, rel=0.1)
    (model,) = snap.models
    assert model.model == "claude" and model.ttft.p50 == pytest.approx(0.5, rel=0.1)
    assert snap.ttft_buckets[-1][1] == 1 and snap.ttft_sum == pytest.approx(0.5)


def test_json_bodies_have_no_time_to_first_token() -> None:
    transport, registry, _ = setup([(200, JSON, b'{"choices": []}')], ONE_TRY)
    httpx.Client(transport=transport).post(URL, json={})
    snap = registry.get("example").snapshot()
    assert snap.ttft.p50 is None and snap.ttft_buckets[-1][1] == 0


def test_a_streamed_attempt_is_slow_by_its_first_token_not_its_length() -> None:
    clock = FakeClock(1000.0)
    slow_first = Chunks([PING, DELTA, DELTA], before=lambda i: clock.advance({0: 1.0, 1: 2.5, 2: 60.0}[i]))
    policy = Policy(retry=RetryPolicy(attempts=1), breaker=BreakerPolicy(slow_call_seconds=3.0))
    transport, registry, _ = setup([(200, SSE, slow_first)], policy, clock)
    httpx.Client(transport=transport).post(URL, json={})
    assert registry.get("example").snapshot().window.slow == 1  # first token at 3.5 s
    fast_first = Chunks([DELTA, DELTA], before=lambda i: clock.advance({0: 0.1, 1: 60.0}[i]))
    transport, registry, _ = setup([(200, SSE, fast_first)], policy, clock)
    httpx.Client(transport=transport).post(URL, json={})
    assert registry.get("example").snapshot().window.slow == 0  # a 60 s answer with a fast first token


def test_an_sse_body_already_in_memory_has_its_first_token_with_its_headers() -> None:
    """MockTransport-style in-memory SSE: the time to first token is the time to the headers."""
    from resilience._asgi.dashboard import health_payload

    clock = FakeClock(1000.0)

    def answer(request: httpx.Request) -> httpx.Response:
        clock.advance(0.4)
        return httpx.Response(200, headers=SSE, content=DELTA + b"data: [DONE]\n\n")

    registry = ProviderRegistry(clock=clock)
    registry.register("example", hosts=["api.example.com"])
    transport = ResilientTransport(registry, httpx.MockTransport(answer))
    httpx.Client(transport=transport).post(URL, json={"model": "m", "stream": True})
    (provider,) = health_payload(registry)["providers"]
    assert provider["ttft_ms"]["p50"] == pytest.approx(400, rel=0.06)
    no_content = ProviderRegistry(clock=clock)
    no_content.register("example", hosts=["api.example.com"])
    pings = httpx.MockTransport(lambda r: httpx.Response(200, headers=SSE, content=b": ping\n\n"))
    silent = ResilientTransport(no_content, pings)
    httpx.Client(transport=silent).post(URL, json={})
    assert health_payload(no_content)["providers"][0]["ttft_ms"]["p50"] is None
