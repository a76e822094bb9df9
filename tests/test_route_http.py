"""Route calls over HTTP: per-target requests, failover before commit, hedging, what the caller sees."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import anyio
import httpx
import pytest
from both_stacks import AsyncStream, Chunks, SyncStream
from virtual_time import VIRTUAL_TIME, Answer, slow_then

import resilience
from resilience import CircuitOpenError, Policy, ProviderRegistry, ResilientTransport, RetryPolicy, Target
from resilience.testing import FakeClock

pytestmark = [pytest.mark.anyio, pytest.mark.usefixtures("stack")]  # httpx2 and httpx

SSE = {"content-type": "text/event-stream"}
DELTA = b'data: {"choices": [{"delta": {"content": "hi"}}]}\n\n'
USAGE = b'data: {"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 5, "cost": 0.125}}\n\n'
ERROR_EVENT = b'event: error\ndata: {"type": "error", "error": {"type": "overloaded_error"}}\n\n'




def ok(cost: float = 0.25) -> Answer:
    return lambda request: httpx.Response(200, json={"choices": [], "usage": {"cost": cost}})


def status(code: int, **headers: str) -> Answer:
    return lambda request: httpx.Response(code, json={"error": {"message": "no"}}, headers=headers)


class Upstreams:
    """One fake provider per host: what each answers, and every request it saw."""

    def __init__(self, answers: dict[str, Answer]) -> None:
        self.answers = answers
        self.seen: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.seen.append(request)
        request.read()
        return self.answers[request.url.host](request)

    def hosts(self) -> list[str]:
        return [r.url.host for r in self.seen]


def setup(
    answers: dict[str, Answer], policy: resilience.RoutePolicy | None = None, clock: Any = None,
    provider_policy: Policy | None = None,
) -> tuple[ResilientTransport, ProviderRegistry, resilience.Route, Upstreams]:
    registry = ProviderRegistry(
        provider_policy or Policy(retry=RetryPolicy(attempts=3)), clock=clock or FakeClock(1000.0)
    )
    targets = []
    for i, host in enumerate(answers):
        name = host.split(".")[0]
        registry.register(name, hosts=[host])
        targets.append(Target(name, base_url=f"https://{host}/v{i}", model=f"{name}-model",
                              headers={"Authorization": f"Bearer {name}"}))
    route = registry.route("chat", targets, policy=policy or resilience.RoutePolicy(order="priority"))
    upstreams = Upstreams(answers)
    sleeps: dict[str, Any] = {}
    if isinstance(registry.clock, FakeClock):
        sleeps = {"sleep": registry.clock.sleep}
    return ResilientTransport(registry, httpx.MockTransport(upstreams), **sleeps), registry, route, upstreams


def totals(registry: ProviderRegistry, name: str) -> dict[str, int]:
    return {k: v for k, v in registry.get(name).snapshot().requests_total.items() if v}


# -- the request each target gets ------------------------------------------------------


def test_each_target_gets_its_url_model_and_headers_and_the_rest_unchanged() -> None:
    transport, registry, route, upstreams = setup({"a.test": status(500), "b.test": ok()})
    body = {"model": "chat", "messages": [{"role": "user", "content": 'say "model": "x"'}], "stream": False}
    with httpx.Client(transport=transport) as client:
        response = client.post(f"{route.base_url}/chat/completions?x=1&y=2", json=body,
                               headers={"authorization": "Bearer caller", "x-trace": "t1"})
    assert response.status_code == 200
    first, second = upstreams.seen
    assert str(first.url) == "https://a.test/v0/chat/completions?x=1&y=2"
    assert str(second.url) == "https://b.test/v1/chat/completions?x=1&y=2"
    for request, name in ((first, "a"), (second, "b")):
        sent = json.loads(request.content)
        assert sent == {**body, "model": f"{name}-model"}  # only the model changed
        assert request.headers.get_list("authorization") == [f"Bearer {name}"]  # replaced, not added
        assert request.headers["x-trace"] == "t1" and request.headers["host"] == f"{name}.test"
        assert int(request.headers["content-length"]) == len(request.content)
    assert response.extensions["resilience.provider"] == "b"
    assert response.extensions["resilience.attempts"] == 2
    assert totals(registry, "a") == {"failure": 1} and totals(registry, "b") == {"success": 1}
    (model,) = registry.get("b").snapshot().models
    assert model.model == "b-model"  # recorded under the target's (provider, model)


def test_a_target_without_a_model_keeps_the_callers_body_byte_for_byte() -> None:
    _transport, _registry, _, upstreams = setup({"a.test": ok()})
    registry2 = ProviderRegistry()
    registry2.register("a", hosts=["a.test"])
    route = registry2.route("plain", [Target("a", base_url="https://a.test/api")])
    body = b'{"model":  "keep-me", "n": 1}'
    with httpx.Client(transport=ResilientTransport(registry2, httpx.MockTransport(upstreams))) as client:
        client.post(f"{route.base_url}/x", content=body, headers={"content-type": "application/json"})
    assert upstreams.seen[-1].content == body


def test_requests_straight_to_a_provider_are_never_rerouted() -> None:
    transport, _registry, _, upstreams = setup({"a.test": status(500), "b.test": ok()})
    with httpx.Client(transport=transport) as client:
        response = client.post("https://a.test/v0/chat", json={"model": "m"})
    assert response.status_code == 500 and set(upstreams.hosts()) == {"a.test"}
    assert "resilience.provider" not in response.extensions


# -- failover ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "first",
    [
        pytest.param(status(503), id="5xx"),
        pytest.param(status(429, **{"retry-after": "30"}), id="429-retry-after"),
        pytest.param(status(401), id="401"),
        pytest.param(lambda r: (_ for _ in ()).throw(httpx.ConnectError("refused", request=r)), id="refused"),
        pytest.param(lambda r: (_ for _ in ()).throw(httpx.ReadTimeout("slow", request=r)), id="timeout"),
        pytest.param(lambda r: httpx.Response(200, json={"error": {"message": "overloaded"}}), id="in-band"),
    ],
)
def test_a_fault_before_commit_moves_to_the_next_target_without_waiting(first: Answer) -> None:
    clock = FakeClock(1000.0)
    transport, _registry, route, upstreams = setup({"a.test": first, "b.test": ok()}, clock=clock)
    with httpx.Client(transport=transport) as client:
        response = client.post(f"{route.base_url}/chat", json={"model": "chat"})
    assert response.status_code == 200 and response.json()["usage"]["cost"] == 0.25
    assert upstreams.hosts() == ["a.test", "b.test"]  # one try per target: no retry of a
    assert clock.sleeps == []  # a Retry-After moves on; it is never waited for
    snap = route.snapshot()
    assert snap.failovers == 1 and snap.failovers_total == {("a", "b"): 1}
    assert snap.requests_total["success"] == 1


@pytest.mark.parametrize("code", [400, 422])
def test_a_request_error_is_returned_at_once(code: int) -> None:
    transport, _, route, upstreams = setup({"a.test": status(code), "b.test": ok()})
    with httpx.Client(transport=transport) as client:
        response = client.post(f"{route.base_url}/chat", json={})
    assert response.status_code == code and upstreams.hosts() == ["a.test"]
    assert response.extensions["resilience.provider"] == "a"


def test_when_every_target_fails_the_caller_gets_the_last_response() -> None:
    transport, _, route, _upstreams = setup({"a.test": status(500), "b.test": status(503)})
    with httpx.Client(transport=transport) as client:
        response = client.post(f"{route.base_url}/chat", json={})
    assert response.status_code == 503 and response.json() == {"error": {"message": "no"}}
    assert response.extensions["resilience.attempts"] == 2
    assert route.snapshot().requests_total["failure"] == 1


def test_when_every_target_raises_the_caller_gets_the_last_error() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError(f"refused by {request.url.host}", request=request)

    transport, _, route, _ = setup({"a.test": refuse, "b.test": refuse})
    with httpx.Client(transport=transport) as client, pytest.raises(httpx.ConnectError, match=r"b\.test"):
        client.post(f"{route.base_url}/chat", json={})


def test_no_target_admitting_raises_circuit_open_for_the_route_with_the_soonest_retry() -> None:
    transport, registry, route, upstreams = setup({"a.test": ok(), "b.test": ok()})
    registry.get("a").open_for(30.0)
    registry.get("b").open_for(5.0)
    with httpx.Client(transport=transport) as client, pytest.raises(CircuitOpenError) as caught:
        client.post(f"{route.base_url}/chat", json={})
    assert caught.value.provider == "chat" and caught.value.retry_after == pytest.approx(5.0)
    assert upstreams.seen == [] and route.snapshot().requests_total["rejected"] == 1


def test_forced_open_targets_are_left_out_of_retry_after() -> None:
    transport, registry, route, _ = setup({"a.test": ok()})
    registry.get("a").force_open()
    with httpx.Client(transport=transport) as client, pytest.raises(CircuitOpenError) as caught:
        client.post(f"{route.base_url}/chat", json={})
    assert caught.value.retry_after == 1.0


def test_an_open_target_is_skipped_without_an_attempt() -> None:
    transport, registry, route, upstreams = setup({"a.test": ok(), "b.test": ok()})
    registry.get("a").open_for(30.0)
    with httpx.Client(transport=transport) as client:
        response = client.post(f"{route.base_url}/chat", json={})
    assert response.extensions["resilience.provider"] == "b" and upstreams.hosts() == ["b.test"]
    assert response.extensions["resilience.attempts"] == 1
    assert route.snapshot().failovers == 0  # skipping is not a failover


def test_order_by_health_tries_the_healthiest_first() -> None:
    transport, _registry, route, upstreams = setup(
        {"a.test": status(500), "b.test": ok()}, policy=resilience.RoutePolicy(order="health")
    )
    with httpx.Client(transport=transport) as client:
        client.post(f"{route.base_url}/chat", json={})  # a fails once: its score drops below b's
        upstreams.seen.clear()
        client.post(f"{route.base_url}/chat", json={})
    assert upstreams.hosts() == ["b.test"]


def test_route_attempts_are_in_the_inbound_requests_totals() -> None:
    from resilience._core import context

    transport, _, route, _ = setup({"a.test": status(500), "b.test": ok(0.5)})
    stats, token = context.begin_request()
    try:
        with httpx.Client(transport=transport) as client:
            client.post(f"{route.base_url}/chat", json={})
    finally:
        context.end_request(token)
    assert stats.attempts == 2 and stats.cost_usd == pytest.approx(0.5) and stats.providers == {"a", "b"}


# -- streams: the commit point ----------------------------------------------------------


def reset() -> None:
    raise httpx.ReadError("connection reset")


def sse(*chunks: bytes, before: Callable[[int], Any] | None = None) -> Answer:
    return lambda request: httpx.Response(200, headers=SSE, stream=Chunks(list(chunks), before))


@pytest.mark.parametrize(
    "first",
    [
        pytest.param(sse(b": ping\n\n", ERROR_EVENT), id="error-event-before-content"),
        pytest.param(sse(b'data: {"error": {"message": "x", "code": 502}}\n\n'), id="error-data-first"),
        pytest.param(sse(b": ping\n\n", b"x", before=lambda i: reset() if i else None), id="reset-first"),
    ],
)
def test_a_stream_fault_before_its_first_content_event_fails_over_and_leaves_no_trace(first: Answer) -> None:
    transport, registry, route, _ = setup({"a.test": first, "b.test": sse(DELTA, USAGE)})
    with httpx.Client(transport=transport) as client, client.stream(
        "POST", f"{route.base_url}/chat", json={"stream": True}
    ) as response:
        body = b"".join(response.iter_raw())
    assert body == DELTA + USAGE  # only the winner's bytes
    assert response.extensions["resilience.provider"] == "b"
    assert totals(registry, "a") in ({"failure": 1}, {"throttled": 1})
    assert totals(registry, "b") == {"success": 1}
    assert registry.get("b").snapshot().cost_total == pytest.approx(0.125)


def test_a_stall_before_the_first_token_fails_over() -> None:
    clock = FakeClock(1000.0)
    stalled = sse(b": ping\n\n", b": ping\n\n", DELTA, before=lambda i: clock.advance(3.0))
    transport, registry, route, _ = setup(
        {"a.test": stalled, "b.test": sse(DELTA)}, clock=clock,
        provider_policy=Policy(first_token_timeout=5.0),
    )
    with httpx.Client(transport=transport) as client:
        response = client.post(f"{route.base_url}/chat", json={"stream": True})
    assert response.content == DELTA and response.extensions["resilience.provider"] == "b"
    assert totals(registry, "a") == {"failure": 1}


def test_after_commit_a_cut_raises_in_the_callers_iteration() -> None:
    def cut(i: int) -> None:
        if i == 2:
            raise httpx.ReadError("connection reset mid-stream")

    answers = {"a.test": sse(DELTA, DELTA, DELTA, before=cut), "b.test": ok()}
    transport, registry, route, upstreams = setup(answers)
    got = []
    with httpx.Client(transport=transport) as client, client.stream(
        "POST", f"{route.base_url}/chat", json={"stream": True}
    ) as response, pytest.raises(httpx.ReadError):
        for chunk in response.iter_raw():
            got.append(chunk)
    assert got == [DELTA, DELTA] and upstreams.hosts() == ["a.test"]  # committed: no failover
    assert totals(registry, "a") == {"failure": 1}


def test_the_first_content_event_commits_keepalives_do_not() -> None:
    transport, _, route, _ = setup({"a.test": sse(b": ping\n\n", b'event: ping\ndata: {}\n\n', DELTA, USAGE)})
    with httpx.Client(transport=transport) as client, client.stream(
        "POST", f"{route.base_url}/chat", json={"stream": True}
    ) as response:
        assert b"".join(response.iter_raw()) == b': ping\n\nevent: ping\ndata: {}\n\n' + DELTA + USAGE


async def test_async_failover_and_commit() -> None:
    transport, _registry, route, _ = setup({"a.test": sse(ERROR_EVENT), "b.test": sse(DELTA, USAGE)})
    async with httpx.AsyncClient(transport=transport) as client:
        async with client.stream("POST", f"{route.base_url}/chat", json={"stream": True}) as response:
            body = b"".join([chunk async for chunk in response.aiter_raw()])
        plain = await client.post(f"{route.base_url}/chat", json={})
    assert body == DELTA + USAGE and plain.status_code == 200
    assert route.snapshot().failovers_total == {("a", "b"): 2}


# -- hedging ----------------------------------------------------------------------------




@VIRTUAL_TIME
async def test_a_hedge_wins_against_a_slow_target_and_the_loser_is_held_against_no_one() -> None:
    answers: dict[str, Any] = {"a.test": slow_then(10.0, ok()), "b.test": slow_then(0.1, ok(0.5))}
    transport, registry, route, _upstreams = setup(
        answers, policy=resilience.RoutePolicy(order="priority", hedge_after_seconds=0.5),
        clock=anyio.current_time,
    )
    async with httpx.AsyncClient(transport=transport) as client:
        started = anyio.current_time()
        response = await client.post(f"{route.base_url}/chat", json={})
        took = anyio.current_time() - started
    assert response.extensions["resilience.provider"] == "b"
    assert response.extensions["resilience.attempts"] == 2
    assert took == pytest.approx(0.6)
    assert totals(registry, "a") == {}  # lost: neither a call nor a failure
    assert totals(registry, "b") == {"success": 1}
    snap = route.snapshot()
    assert snap.hedges == 1 and snap.hedges_total == {"won": 1, "lost": 0}
    assert registry.get("a").state == "closed"


@VIRTUAL_TIME
async def test_a_hedge_that_loses_is_counted_lost() -> None:
    answers: dict[str, Any] = {"a.test": slow_then(0.8, ok()), "b.test": slow_then(5.0, ok())}
    transport, registry, route, _ = setup(
        answers, policy=resilience.RoutePolicy(order="priority", hedge_after_seconds=0.5),
        clock=anyio.current_time,
    )
    async with httpx.AsyncClient(transport=transport) as client:
        response = await client.post(f"{route.base_url}/chat", json={})
    assert response.extensions["resilience.provider"] == "a"
    assert route.snapshot().hedges_total == {"won": 0, "lost": 1}
    assert totals(registry, "b") == {}


@VIRTUAL_TIME
async def test_the_hedge_budget_caps_hedges_per_window() -> None:
    answers: dict[str, Any] = {"a.test": slow_then(1.0, ok()), "b.test": slow_then(1.0, ok())}
    transport, _, route, upstreams = setup(
        answers,
        policy=resilience.RoutePolicy(order="priority", hedge_after_seconds=0.5, hedge_budget_ratio=0.0),
        clock=anyio.current_time,
    )
    async with httpx.AsyncClient(transport=transport) as client:
        for _ in range(4):
            await client.post(f"{route.base_url}/chat", json={})
    assert route.snapshot().hedges == 1  # max(1, 0 x calls): one hedge in the window
    assert len(upstreams.seen) == 5


@VIRTUAL_TIME
async def test_cancelling_the_caller_cancels_every_attempt_and_gives_back_every_permit() -> None:
    answers: dict[str, Any] = {"a.test": slow_then(100.0, ok()), "b.test": slow_then(100.0, ok())}
    transport, registry, route, _ = setup(
        answers, policy=resilience.RoutePolicy(order="priority", hedge_after_seconds=0.5),
        clock=anyio.current_time,
    )
    for name in ("a", "b"):  # half-open: one trial slot each
        registry.get(name).open_for(1.0)
    await anyio.sleep(1.0)
    async with httpx.AsyncClient(transport=transport) as client:
        with anyio.move_on_after(2.0):
            await client.post(f"{route.base_url}/chat", json={})
    for name in ("a", "b"):
        provider = registry.get(name)
        assert provider.state == "half_open"
        provider.release(provider.admit())  # the trial slot is free again
    assert totals(registry, "a") == {} and totals(registry, "b") == {}


def test_sync_clients_fail_over_but_never_hedge() -> None:
    transport, _, route, _upstreams = setup(
        {"a.test": status(500), "b.test": ok()},
        policy=resilience.RoutePolicy(order="priority", hedge_after_seconds=0.01),
    )
    with httpx.Client(transport=transport) as client:
        response = client.post(f"{route.base_url}/chat", json={})
    assert response.status_code == 200 and route.snapshot().hedges == 0


def test_a_streamed_answer_already_in_memory_is_recorded_with_its_first_token() -> None:
    """An in-memory SSE body (the response reads it from memory, not from its stream) is still recorded."""
    body = DELTA + USAGE

    def in_memory(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers=SSE, content=body)

    transport, registry, route, _ = setup({"a.test": sse(ERROR_EVENT), "b.test": in_memory})
    with httpx.Client(transport=transport) as client:
        response = client.post(f"{route.base_url}/chat", json={"stream": True})
    assert response.content == body and response.extensions["resilience.provider"] == "b"
    snap = registry.get("b").snapshot()
    assert totals(registry, "b") == {"success": 1} and snap.tokens_total == (3, 5)
    assert snap.ttft.p50 is not None and snap.cost_total == pytest.approx(0.125)


def test_an_in_memory_stream_that_fails_before_content_fails_over() -> None:
    transport, registry, route, _ = setup({
        "a.test": lambda request: httpx.Response(200, headers=SSE, content=ERROR_EVENT),
        "b.test": sse(DELTA),
    })
    with httpx.Client(transport=transport) as client:
        response = client.post(f"{route.base_url}/chat", json={"stream": True})
    assert response.content == DELTA and totals(registry, "a") == {"failure": 1}


# -- found in review: each a regression test ------------------------------------------


@VIRTUAL_TIME
async def test_a_hedge_and_its_race_answering_at_once_leave_one_call_recorded() -> None:
    async def both_at_once(request: httpx.Request) -> httpx.Response:
        await anyio.sleep(0.2 if request.url.host == "a.test" else 0.1)  # both answer at t = 0.2
        return httpx.Response(200, json={"usage": {"cost": 0.5}})

    answers: dict[str, Any] = {"a.test": both_at_once, "b.test": both_at_once}
    transport, registry, route, _ = setup(
        answers,
        policy=resilience.RoutePolicy(order="priority", hedge_after_seconds=0.1), clock=anyio.current_time,
    )
    async with httpx.AsyncClient(transport=transport) as client:
        response = await client.post(f"{route.base_url}/chat", json={})
    served = response.extensions["resilience.provider"]
    other = "b" if served == "a" else "a"
    assert totals(registry, served) == {"success": 1} and totals(registry, other) == {}
    assert sum(route.snapshot().hedges_total.values()) == 1
    assert registry.get(other).snapshot().cost_total in (0.0, 0.5)  # lost: cancelled, or its cost added


@VIRTUAL_TIME
async def test_a_hedged_route_past_its_deadline_raises_the_deadline_error_itself() -> None:
    answers: dict[str, Any] = {"a.test": slow_then(10.0, ok()), "b.test": slow_then(10.0, ok())}
    transport, registry, route, _ = setup(
        answers,
        policy=resilience.RoutePolicy(order="priority", hedge_after_seconds=0.5, deadline_seconds=1.0),
        clock=anyio.current_time,
    )
    async with httpx.AsyncClient(transport=transport) as client:
        with pytest.raises(resilience.DeadlineExceededError) as caught:
            await client.post(f"{route.base_url}/chat", json={})
    assert isinstance(caught.value, httpx.TimeoutException) and caught.value.provider == "chat"
    assert totals(registry, "a") == {} and totals(registry, "b") == {}


def test_a_deadline_met_while_a_failed_answer_is_read_still_records_that_failure() -> None:
    clock = FakeClock(1000.0)

    class Slow(SyncStream, AsyncStream):
        def __iter__(self) -> Iterator[bytes]:
            yield b'{"error": {"message": "x"'
            clock.advance(2.0)
            yield b"}}"

    answers: dict[str, Answer] = {
        "a.test": lambda r: httpx.Response(200, headers={"content-type": "application/json"}, stream=Slow()),
        "b.test": ok(),
    }
    transport, registry, route, _ = setup(
        answers, policy=resilience.RoutePolicy(order="priority", deadline_seconds=1.0), clock=clock
    )
    with httpx.Client(transport=transport) as client, pytest.raises(resilience.DeadlineExceededError):
        client.post(f"{route.base_url}/chat", json={})
    assert totals(registry, "a") == {"failure": 1}  # recorded, and its permit is back


def test_a_streaming_upload_reaches_a_target_with_its_host_and_framing() -> None:
    transport, _, route, upstreams = setup({"a.test": ok()})

    def body() -> Iterator[bytes]:
        yield b'{"model": "chat"}'

    with httpx.Client(transport=transport) as client:
        assert client.post(f"{route.base_url}/chat", content=body()).status_code == 200
    (sent,) = upstreams.seen
    assert sent.headers["host"] == "a.test" and sent.headers["transfer-encoding"] == "chunked"


def test_calls_the_breaker_rejects_do_not_use_up_the_quota_hold_counts() -> None:
    clock = FakeClock(1000.0)
    registry = ProviderRegistry(Policy(retry=RetryPolicy(attempts=1), hold_when_exhausted=True), clock=clock)
    registry.register("a", hosts=["a.test"])
    quota = {"x-ratelimit-limit-requests": "100", "x-ratelimit-remaining-requests": "10",
             "x-ratelimit-reset-requests": "60s"}
    upstream = httpx.MockTransport(lambda r: httpx.Response(200, headers=quota))
    transport = ResilientTransport(registry, upstream)
    with httpx.Client(transport=transport) as client:
        client.get("https://a.test/x")
        registry.get("a").open_for(5.0)
        for _ in range(20):
            with pytest.raises(CircuitOpenError, match="open"):
                client.get("https://a.test/x")
        clock.advance(6.0)
        assert client.get("https://a.test/x").status_code == 200  # 10 left: not held as exhausted
