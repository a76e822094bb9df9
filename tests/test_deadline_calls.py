"""Deadlines through the transport on the registry's (fake) clock: what a call does when time runs out."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

import resilience
from resilience import DeadlineExceededError, Policy, ProviderRegistry, ResilientTransport, RetryPolicy
from resilience.testing import FakeClock

pytestmark = pytest.mark.usefixtures("stack")  # httpx2 and httpx


def setup(handler: Any, policy: Policy | None = None) -> tuple[httpx.Client, ProviderRegistry, FakeClock]:
    clock = FakeClock(100.0)
    registry = ProviderRegistry(policy or Policy(retry=RetryPolicy(attempts=3)), clock=clock)
    registry.register("p", hosts=["p.test"])
    registry.register("q", hosts=["q.test"])

    def answer(request: httpx.Request) -> httpx.Response:
        response: httpx.Response = handler(request, clock)
        return response

    transport = ResilientTransport(registry, httpx.MockTransport(answer), sleep=clock.sleep)
    return httpx.Client(transport=transport), registry, clock


def test_a_sync_answer_that_comes_past_the_deadline_raises_and_is_held_against_no_one() -> None:
    def slow(request: httpx.Request, clock: FakeClock) -> httpx.Response:
        clock.advance(0.3)
        return httpx.Response(200, json={})

    client, registry, _ = setup(slow)
    with pytest.raises(DeadlineExceededError) as caught:
        client.post("https://p.test/v1", json={}, extensions={"deadline": 0.1})
    assert isinstance(caught.value, httpx.TimeoutException)
    assert caught.value.deadline == 0.1 and caught.value.provider == "p"
    snap = registry.get("p").snapshot()
    assert not any(snap.requests_total.values()) and snap.deadline_exceeded_total == 1


def test_each_attempt_gets_its_timeouts_capped_by_the_time_left() -> None:
    seen: list[dict[str, float]] = []

    def record(request: httpx.Request, clock: FakeClock) -> httpx.Response:
        seen.append(dict(request.extensions["timeout"]))
        clock.advance(0.5)
        return httpx.Response(503 if len(seen) == 1 else 200, json={})

    client, _, _ = setup(record, Policy(deadline_seconds=2.0, retry=RetryPolicy(attempts=3, jitter=0.0,
                                                                             backoff_seconds=0.1)))
    assert client.post("https://p.test/v1", json={}).status_code == 200
    first, second = seen
    assert first == {"connect": 2.0, "read": 2.0, "write": 2.0, "pool": 2.0}  # the client's 5 s, capped
    assert all(value == pytest.approx(1.4) for value in second.values())  # 2 - 0.5 - 0.1 backoff


def test_a_retry_after_that_would_cross_the_deadline_returns_the_last_response_at_once() -> None:
    def throttled(request: httpx.Request, clock: FakeClock) -> httpx.Response:
        return httpx.Response(429, headers={"retry-after": "20"}, json={})

    client, _, clock = setup(throttled)
    response = client.post("https://p.test/v1", json={}, extensions={"deadline": 5.0})
    assert response.status_code == 429 and clock.sleeps == []


def test_no_call_starts_past_an_inbound_deadline() -> None:
    from resilience._core import context
    from resilience._core.deadline import Deadline

    client, registry, clock = setup(lambda request, clock: httpx.Response(200, json={}))
    stats, token = context.begin_request()
    stats.deadline = Deadline(clock() - 0.01, 2.0, "inbound")
    try:
        with pytest.raises(DeadlineExceededError) as caught:
            client.post("https://p.test/v1", json={})
    finally:
        context.end_request(token)
    assert caught.value.deadline == 2.0 and registry.get("p").snapshot().deadline_exceeded_total == 1


def test_a_route_stops_failing_over_once_its_deadline_has_passed() -> None:
    hosts: list[str] = []

    def down(request: httpx.Request, clock: FakeClock) -> httpx.Response:
        hosts.append(request.url.host)
        clock.advance(1.5)
        return httpx.Response(503, json={})

    client, registry, _ = setup(down)
    route = registry.route("r", [resilience.Target("p", base_url="https://p.test"),
                                 resilience.Target("q", base_url="https://q.test")],
                           policy=resilience.RoutePolicy(order="priority", deadline_seconds=1.0))
    with pytest.raises(DeadlineExceededError) as caught:
        client.post(f"{route.base_url}/v1", json={})
    assert caught.value.provider == "r" and hosts == ["p.test"]
    assert route.snapshot().requests_total["failure"] == 1


def test_a_bad_deadline_extension_is_a_config_error_naming_it() -> None:
    client, _, _ = setup(lambda request, clock: httpx.Response(200, json={}))
    with pytest.raises(resilience.ConfigError, match=r'extensions\["deadline"\]'):
        client.post("https://p.test/v1", json={}, extensions={"deadline": -1})
