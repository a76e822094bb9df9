"""The transport's success path keeps every number exact, on both stacks."""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator

import httpx
import pytest

from resilience import BreakerPolicy, Policy, ProviderRegistry, ResilientTransport, RetryPolicy
from resilience._core.breaker import CLOSED
from resilience.testing import FakeClock

pytestmark = pytest.mark.usefixtures("stack")  # httpx2 and httpx

NO_RETRY = RetryPolicy(attempts=1)
USAGE = json.dumps({"usage": {"cost": 0.25}}).encode()
JSON = {"content-type": "application/json"}


def client_for(handler: object, policy: Policy | None = None) -> tuple[httpx.Client, ProviderRegistry]:
    """A sync client through ResilientTransport to a mock upstream; provider ``api`` on api.test."""
    registry = ProviderRegistry(policy or Policy(retry=NO_RETRY), clock=FakeClock())
    registry.register("api", hosts=["api.test", "bücher.example"])
    transport = ResilientTransport(registry, httpx.MockTransport(handler))  # type: ignore[arg-type]
    return httpx.Client(transport=transport), registry


def statuses(*codes: int) -> Iterator[int]:
    """The statuses a scripted upstream answers with, in order."""
    yield from codes


def scripted(codes: Iterator[int]) -> object:
    """An upstream answering the next scripted status with a small JSON body."""
    return lambda request: httpx.Response(next(codes), json={"ok": True})


def test_a_fast_success_ends_a_run_of_failures() -> None:
    """consecutive_failures: a success on the lock-free path resets the run, exactly as a locked one."""
    policy = Policy(retry=NO_RETRY, breaker=BreakerPolicy(minimum_calls=100, consecutive_failures=3))
    client, registry = client_for(scripted(statuses(500, 500, 200, 500, 500, 500)), policy)
    provider = registry.get("api")
    for _ in range(5):
        client.get("http://api.test/")
    assert provider.state == "closed"
    client.get("http://api.test/")
    assert provider.state == "open"


def test_fast_successes_count_in_the_provider_and_their_model() -> None:
    """Successes with and without a model land once in the provider and once in the model window."""
    client, registry = client_for(lambda request: httpx.Response(200, json={"ok": True}))
    for _ in range(3):
        client.post("http://api.test/v1/chat", json={"model": "gpt-4o", "messages": []})
    for _ in range(2):
        client.get("http://api.test/v1/models")
    snapshot = registry.get("api").snapshot()
    assert snapshot.requests_total["success"] == 5
    assert snapshot.window.successes == 5
    assert [(m.model, m.window.successes) for m in snapshot.models] == [("gpt-4o", 3)]
    assert snapshot.duration_buckets[-1][1] == 5  # cumulative: the +Inf bucket holds them all


@pytest.mark.parametrize(
    ("policy", "outcome"),
    [
        pytest.param(Policy(retry=NO_RETRY, failure_statuses=frozenset({200, 500})), "failure", id="failure"),
        pytest.param(
            Policy(retry=NO_RETRY, throttle_statuses=frozenset({200, 429})), "throttled", id="throttled"
        ),
    ],
)
def test_a_status_below_400_the_policy_counts_otherwise_is_classified(policy: Policy, outcome: str) -> None:
    """A status below 400 in failure_statuses or throttle_statuses is classified, not taken as plain."""
    client, registry = client_for(lambda request: httpx.Response(200, json={"ok": True}), policy)
    client.get("http://api.test/")
    totals = registry.get("api").snapshot().requests_total
    assert {k: v for k, v in totals.items() if v} == {outcome: 1}


@pytest.mark.parametrize(
    ("body", "headers"),
    [
        pytest.param(USAGE, JSON, id="json-usage"),
        pytest.param(gzip.compress(USAGE), {**JSON, "content-encoding": "gzip"}, id="gzip"),
        pytest.param(b'data: {"usage": {"cost": 0.25}}\n\n', {"content-type": "text/event-stream"}, id="sse"),
    ],
)
def test_a_body_with_a_cost_leaves_the_fast_path(body: bytes, headers: dict[str, str]) -> None:
    """usage in the body, or a body that is not plain JSON, goes on to the cost finder."""
    client, registry = client_for(lambda request: httpx.Response(200, content=body, headers=headers))
    client.get("http://api.test/")
    assert registry.get("api").snapshot().cost_total == pytest.approx(0.25)


@pytest.mark.parametrize(
    "url",
    [
        pytest.param("http://API.Test/v1", id="upper-case"),
        pytest.param("http://bücher.example/v1", id="idna"),
        pytest.param("http://xn--bcher-kva.example/v1", id="punycode"),
    ],
)
def test_hosts_resolve_the_same_on_every_call(url: str) -> None:
    """The happy path's host key gives the registered provider, call after call."""
    client, registry = client_for(lambda request: httpx.Response(200, json={}))
    for _ in range(3):
        client.get(url)
    assert registry.get("api").snapshot().requests_total["success"] == 3
    assert [p.name for p in registry.providers()] == ["api"]


def test_closed_permit_follows_the_state() -> None:
    """Breaker.closed_permit is the permit while closed and -1 in every other state."""
    clock = FakeClock()
    registry = ProviderRegistry(clock=clock)
    provider = registry.register("api", policy=Policy(breaker=BreakerPolicy(open_seconds=5.0)))
    breaker = provider._breaker
    seen: list[tuple[str, object]] = [(breaker.state, breaker.closed_permit == breaker.permit)]
    provider.force_open()
    seen.append((breaker.state, breaker.closed_permit))
    provider.reset()
    seen.append((breaker.state, breaker.closed_permit == breaker.permit))
    provider.disable()
    seen.append((breaker.state, breaker.closed_permit))
    assert seen == [(CLOSED, True), ("forced_open", -1), (CLOSED, True), ("disabled", -1)]


def test_a_success_admitted_before_a_transition_is_not_taken_as_fast() -> None:
    """A call admitted while closed that ends after the breaker moved is judged by record(), not appended."""
    clock = FakeClock()
    registry = ProviderRegistry(clock=clock)
    provider = registry.register("api", hosts=["api.test"])

    def upstream(request: httpx.Request) -> httpx.Response:
        provider.force_open()  # the breaker moves while the call is in flight
        return httpx.Response(200, json={})

    client = httpx.Client(transport=ResilientTransport(registry, httpx.MockTransport(upstream)))
    client.get("http://api.test/")
    assert provider._stats.pending == []
    assert provider.snapshot().requests_total["success"] == 1
