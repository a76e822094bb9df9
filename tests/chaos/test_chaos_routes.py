"""Chaos through routes: a faulty target first, a healthy one after, real loopback upstreams.

Each provider of a route has an upstream of its own (a uvicorn app and a raw
socket server sharing one :class:`~chaos._upstream.Upstream`, so each
provider's requests are counted apart), plus a port that refuses
connections. For every fault a target can show before the route commits --
5xx, 429 with ``Retry-After``, connection refused, reset before headers,
reset after headers before the first content event, keepalives past
``first_token_timeout``, an in-band ``event: error``, a malformed first
chunk -- a few sequential calls (streamed and not) through a sync or async
client of each stack must all succeed, with only the healthy target's bytes
in the caller's body. After commit, a cut (reset, FIN mid-body, idle stall)
must raise in the caller's iteration. An async hedging scenario races a slow
first target against a hedge.

After each scenario: every call ended in a response or a typed exception;
attempts recorded per provider equal the requests its upstream saw (a
hedge's lost attempt is recorded nowhere); each provider's cost equals the
cost its upstream sent; the breakers took only allowed edges; the route's
and the metrics' counts are exact; and nothing is left behind (threads,
tasks, sockets). Permits: the healthy target runs the scenario half-open
with a single trial slot, so a permit kept by any call would turn the next
one away; it must still be half-open with its slot free at the end.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from types import ModuleType

import anyio
import httpx
import pytest
import uvicorn
from chaos._drive import Run, join, stack_of, typed
from chaos._invariants import (
    AUTOMATIC,
    Resources,
    Tally,
    assert_cost,
    assert_nothing_left,
    assert_transitions,
    assert_typed_endings,
    recorded,
)
from chaos._upstream import OVERLOADED, RawServer, Upstream, make_app, ok_body, sse_events
from integration._server import ThreadedServer
from prometheus_client import CollectorRegistry

from resilience import (
    BreakerPolicy,
    Policy,
    ProviderRegistry,
    ResilientTransport,
    RetryPolicy,
    Route,
    RoutePolicy,
    Target,
)

pytestmark = [pytest.mark.chaos, pytest.mark.integration, pytest.mark.anyio]

CALLS = (True, False, True)
"""One scenario's sequential calls: ``"stream": true`` or not."""

UNITS = 2
"""Cost units of each healthy answer (see :data:`chaos._upstream.COST_UNIT`)."""

CUT_UNITS = 3
"""Cost units the cut streams would have carried in their (never sent) usage event."""

LOGICAL_MODEL = "llama-3.3-70b"
FIRST_TOKEN_SECONDS = 0.25
"""``first_token_timeout`` of the faulty targets: ``/pings`` keeps pinging far past it."""

IDLE_SECONDS = 0.3
"""``idle_timeout`` of the faulty targets: the post-commit ``/stall`` breaches it (async clients)."""

READ_SECONDS = 0.5
"""The clients' read timeout: what ends a sync caller's read of ``/stall`` (a sync stream cannot
interrupt a blocking read). Far above any gap between the chunks of an answer or of keepalives."""

RACE_FIRST_TOKEN_SECONDS = 2.0
"""``first_token_timeout`` in the hedged races: far above their delays (the hedge decides, not it)."""

OPEN_SECONDS = 60.0
HEDGE_AFTER = 0.05
SCENARIO_SECONDS = 5.0
"""No scenario may take longer: a ``Retry-After`` of 30 s must not be waited out."""


# -- the upstreams -------------------------------------------------------------------


@dataclass
class Pair:
    """One provider's upstream: its counters, its uvicorn base URL and its raw-server base URL."""

    upstream: Upstream
    http: str
    raw: str

    def base(self, path: str) -> str:
        """The target base URL serving ``path``'s behaviour (raw-server kinds on the raw server)."""
        kind = path.strip("/").partition("/")[0]
        raw = kind in ("reset", "head_reset", "bad_chunk", "cut", "cut_fin", "json_cut")
        return (self.raw if raw else self.http) + path


@dataclass
class Fleet:
    """Three upstreams (``a``, ``b``, ``c``) and a base URL whose port refuses connections."""

    pairs: dict[str, Pair]
    refused: str

    def base(self, name: str, path: str) -> str:
        """Where target ``name`` with behaviour ``path`` is sent (``refused``: the closed port)."""
        return self.refused + "/v1" if path == "refused" else self.pairs[name].base(path)


@contextlib.contextmanager
def upstream_pair() -> Iterator[Pair]:
    """A uvicorn app and a raw socket server counting into one :class:`Upstream`."""
    upstream = Upstream()
    config = uvicorn.Config(
        make_app(upstream), host="127.0.0.1", port=0, lifespan="off", log_level="critical", ws="none",
        timeout_keep_alive=120, timeout_graceful_shutdown=5,
    )
    with ThreadedServer(config).run_in_thread() as http, RawServer(upstream).running() as raw:
        yield Pair(upstream, http, raw)


@pytest.fixture(scope="module")
def fleet_servers() -> Iterator[Fleet]:
    """The module's upstreams: one per provider name, and the refused port."""
    with contextlib.ExitStack() as stack:
        pairs = {name: stack.enter_context(upstream_pair()) for name in "abc"}
        holder = stack.enter_context(socket.socket())  # bound, never listening: connections refused
        holder.bind(("127.0.0.1", 0))
        yield Fleet(pairs, f"http://127.0.0.1:{holder.getsockname()[1]}")


@pytest.fixture
def fleet(fleet_servers: Fleet) -> Fleet:
    """The upstreams, their counters zeroed."""
    for pair in fleet_servers.pairs.values():
        pair.upstream.reset()
    return fleet_servers


# -- the registry and its route ------------------------------------------------------


class SkewClock:
    """Real monotonic time plus a skew the test sets: a breaker's open time passes at once."""

    def __init__(self) -> None:
        self.skew = 0.0

    def __call__(self) -> float:
        return time.monotonic() + self.skew


def faulty_policy(first_token: float = FIRST_TOKEN_SECONDS) -> Policy:
    """The faulty targets: streaming timeouts, a breaker that never trips in a scenario, no retry."""
    return Policy(
        breaker=BreakerPolicy(minimum_calls=1000),
        retry=RetryPolicy(attempts=1),
        first_token_timeout=first_token,
        idle_timeout=IDLE_SECONDS,
    )


def trial_policy() -> Policy:
    """A target run half-open: one failure trips it; one trial slot; it never closes in a scenario."""
    return Policy(
        breaker=BreakerPolicy(
            consecutive_failures=1, open_seconds=OPEN_SECONDS, half_open_max_calls=1, success_threshold=1000
        ),
        retry=RetryPolicy(attempts=1),
        first_token_timeout=2.0,
    )


@dataclass
class Setup:
    """A scenario's registry, route, metrics and clock."""

    registry: ProviderRegistry
    route: Route
    metrics: CollectorRegistry
    clock: SkewClock
    names: list[str]


def build(
    fleet: Fleet,
    paths: list[str],
    *,
    trial: str | None,
    route_policy: RoutePolicy | None = None,
    first_token: float = FIRST_TOKEN_SECONDS,
) -> Setup:
    """A route over providers ``a``, ``b``, ... in that priority order, target ``i`` behaving as
    ``paths[i]``, each with its own credentials and model name; ``trial`` is run half-open."""
    clock = SkewClock()
    registry = ProviderRegistry(clock=clock)
    names = ["abc"[i] for i in range(len(paths))]
    targets = []
    for name, path in zip(names, paths, strict=True):
        registry.register(name, policy=trial_policy() if name == trial else faulty_policy(first_token))
        targets.append(
            Target(name, base_url=fleet.base(name, path), model=f"model-{name}",
                   headers={"Authorization": f"Bearer key-{name}"})
        )
    policy = route_policy or RoutePolicy(order="priority")
    route = registry.route(LOGICAL_MODEL, targets, policy=policy)
    metrics = CollectorRegistry()
    registry.register_metrics(metrics)
    return Setup(registry, route, metrics, clock, names)


async def half_open(setup: Setup, fleet: Fleet, name: str, stack: ModuleType) -> None:
    """Trip ``name`` with one 503 sent straight to its upstream, then let its open time pass."""
    transport = ResilientTransport(setup.registry, stack.AsyncHTTPTransport())
    async with stack.AsyncClient(transport=transport) as client:
        response = await client.post(fleet.pairs[name].http + "/status/503", extensions={"provider": name})
    assert response.status_code == 503
    provider = setup.registry.get(name)
    assert provider.state == "open"
    setup.clock.skew += OPEN_SECONDS
    assert provider.state == "half_open"


# -- the callers ---------------------------------------------------------------------


@dataclass
class Answer:
    """What one caller saw: the response's status and labels, every body byte, the exception."""

    status: int | None = None
    provider: object = None
    attempts: object = None
    body: bytes = b""
    error: BaseException | None = None

    def headers(self, response: httpx.Response) -> None:
        self.status = response.status_code
        self.provider = response.extensions.get("resilience.provider")
        self.attempts = response.extensions.get("resilience.attempts")


def payload(streamed: bool) -> dict[str, object]:
    """A chat request, its ``"model"`` first (as SDKs send it)."""
    return {"model": LOGICAL_MODEL, "messages": [{"role": "user", "content": "hi"}], "stream": streamed}


def settle(run: Run, answer: Answer, stack: ModuleType, exc: Exception) -> None:
    answer.error = exc
    if isinstance(exc, typed(stack)):
        run.add(type(exc).__name__)
    else:
        run.add("escaped", escaped=repr(exc))


async def call_async(client: httpx.AsyncClient, url: str, streamed: bool, run: Run) -> Answer:
    """One call through the async client, its body read to the end (or to its exception)."""
    answer, stack = Answer(), stack_of(client)
    try:
        async with client.stream("POST", url, json=payload(streamed)) as response:
            answer.headers(response)
            async for chunk in response.aiter_bytes():
                answer.body += chunk
    except Exception as exc:
        settle(run, answer, stack, exc)
    else:
        run.add(f"status_{response.status_code}")
    return answer


def call_sync(client: httpx.Client, url: str, streamed: bool, run: Run) -> Answer:
    """:func:`call_async` for the sync client."""
    answer, stack = Answer(), stack_of(client)
    try:
        with client.stream("POST", url, json=payload(streamed)) as response:
            answer.headers(response)
            for chunk in response.iter_bytes():
                answer.body += chunk
    except Exception as exc:
        settle(run, answer, stack, exc)
    else:
        run.add(f"status_{response.status_code}")
    return answer


async def drive(
    setup: Setup, stack: ModuleType, mode: str, calls: tuple[bool, ...], run: Run
) -> list[Answer]:
    """The calls, one after another, through a fresh client of ``stack`` (``mode``: async or sync)."""
    url = setup.route.base_url + "/chat/completions"
    timeout = stack.Timeout(5.0, read=READ_SECONDS)
    answers: list[Answer] = []
    with anyio.fail_after(60):
        if mode == "async":
            transport = ResilientTransport(setup.registry, stack.AsyncHTTPTransport())
            async with stack.AsyncClient(transport=transport, timeout=timeout) as aclient:
                for streamed in calls:
                    answers.append(await call_async(aclient, url, streamed, run))
        else:

            def sequence() -> None:
                transport = ResilientTransport(setup.registry, stack.HTTPTransport())
                with stack.Client(transport=transport, timeout=timeout) as client:
                    for streamed in calls:
                        answers.append(call_sync(client, url, streamed, run))

            thread = threading.Thread(target=sequence, name="chaos-route-caller")
            thread.start()
            await join([thread])
    return answers


def healthy_bytes(streamed: bool, units: int = UNITS) -> bytes:
    """Every byte of a healthy answer (``/auto/<units>``)."""
    return b"".join(sse_events(units)) if streamed else ok_body(units)


# -- the invariants ------------------------------------------------------------------


def merged(upstreams: list[Upstream]) -> Upstream:
    """One upstream's counters holding several's, for the tally."""
    total = Upstream()
    for upstream in upstreams:
        total.received.update(upstream.received)
        total.cost_units += upstream.cost_units
    return total


def assert_attempts_per_provider(setup: Setup, fleet: Fleet, paths: list[str], lost: Counter[str]) -> None:
    """Attempts recorded under each provider (plus its stale resends and its hedges' lost attempts,
    recorded nowhere) equal the requests its own upstream saw; a refused target's are all failures."""
    for name, path in zip(setup.names, paths, strict=True):
        snap = setup.registry.get(name).snapshot()
        seen = fleet.pairs[name].upstream.total
        if path == "refused":
            assert seen == 0
            assert {k for k, v in snap.requests_total.items() if v} <= {"failure"}
            continue
        stale = snap.retries_total.get("stale_connection", 0)
        assert recorded(setup.registry.get(name)) + stale + lost[name] == seen, (name, snap.requests_total)


async def check(
    name: str,
    setup: Setup,
    fleet: Fleet,
    paths: list[str],
    run: Run,
    before: Resources,
    tally: Tally,
    seconds: float,
    *,
    lost: Counter[str] | None = None,
) -> None:
    """Every invariant of the module docstring, each tallied once it held.

    Nothing left behind is checked first: it waits (bounded) for the upstreams' handlers to return,
    and a handler counts the cost it sent only once its last body chunk is out.
    """
    upstreams = [fleet.pairs[n].upstream for n in setup.names]
    for upstream in upstreams:
        await assert_nothing_left(before, upstream)
    tally.checked("nothing_left_behind")
    assert_typed_endings(run, run.sent)
    tally.checked("typed_endings")
    assert_attempts_per_provider(setup, fleet, paths, lost or Counter())
    tally.checked("route_attempts_equal_each_upstream_requests")
    for provider_name in setup.names:
        assert_cost(setup.registry.get(provider_name), fleet.pairs[provider_name].upstream)
    tally.checked("route_cost_equals_each_upstream_cost_sent")
    for provider_name in setup.names:
        assert_transitions(setup.registry.get(provider_name), AUTOMATIC)
    tally.checked("breaker_edges_allowed")
    tally.scenario(name, run, merged(upstreams), seconds)


def assert_trial_slot_free(setup: Setup, name: str) -> None:
    """``name`` is still half-open (no verdict changed it) and its one trial slot is free."""
    provider = setup.registry.get(name)
    assert provider.state == "half_open"
    assert provider.admission_view()[2] is True
    provider.release(provider.admit())


def metric(setup: Setup, sample: str, **labels: str) -> float | None:
    return setup.metrics.get_sample_value(sample, {"route": LOGICAL_MODEL, **labels})


# -- faults before commit ------------------------------------------------------------


@dataclass(frozen=True)
class Fault:
    """A faulty target's behaviour, and the calls sent against it."""

    name: str
    path: str
    calls: tuple[bool, ...] = CALLS
    kinds: tuple[str, ...] = field(default=())
    """What the faulty upstream must have served (its ``received`` keys)."""


PRE_COMMIT = [
    Fault("server_error_503", "/status/503", kinds=("status",)),
    Fault("throttled_429_retry_after_30s", "/throttle/30", kinds=("throttle",)),
    Fault("connection_refused", "refused"),
    Fault("reset_before_headers", "/reset", kinds=("reset",)),
    Fault("reset_after_headers_before_first_content", "/head_reset", kinds=("head_reset",)),
    Fault("keepalives_past_first_token_timeout", "/pings/100", kinds=("pings",)),
    Fault("in_band_error_event_overloaded", "/sse_error", kinds=("sse_error",)),
    Fault("malformed_first_chunk", "/bad_chunk", kinds=("bad_chunk",)),
    Fault("json_body_cut_midway", f"/json_cut/{CUT_UNITS}", kinds=("json_cut",)),  # read whole: fails over
]
MODES = ("async", "sync")


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("fault", PRE_COMMIT, ids=[f.name for f in PRE_COMMIT])
async def test_pre_commit_fault_fails_over_to_the_healthy_target(
    fault: Fault, mode: str, stack: ModuleType, fleet: Fleet, tally: Tally
) -> None:
    """``a`` shows the fault, ``b`` (half-open, one trial slot) is healthy: every call answered by
    ``b`` with ``b``'s bytes only, one failover each, and every invariant holds."""
    before = Resources.now()
    paths = [fault.path, f"/auto/{UNITS}"]
    setup = build(fleet, paths, trial="b")
    await half_open(setup, fleet, "b", stack)
    run = Run()
    started = time.monotonic()
    answers = await drive(setup, stack, mode, fault.calls, run)
    seconds = time.monotonic() - started

    n = len(fault.calls)
    assert run.outcomes == Counter({"status_200": n}), [a.error for a in answers]  # 0 client-visible failures
    for answer, streamed in zip(answers, fault.calls, strict=True):
        assert (answer.provider, answer.attempts) == ("b", 2)
        assert answer.body == healthy_bytes(streamed)  # the winner's bytes, nothing of the failed attempt
    assert seconds < SCENARIO_SECONDS
    a, b = fleet.pairs["a"].upstream, fleet.pairs["b"].upstream
    assert dict(a.received) == {kind: n for kind in fault.kinds}
    assert b.received == Counter({"status": 1, "auto": n})  # the trip, then every call
    assert b.authorizations["Bearer key-b"] == n and b.models["model-b"] == n  # b's credentials and model
    if a.authorizations:  # counted on the uvicorn side only
        assert a.authorizations == Counter({"Bearer key-a": n}) and a.models == Counter({"model-a": n})
    snap = setup.route.snapshot()
    assert snap.requests_total == {"success": n, "failure": 0, "rejected": 0}
    assert snap.failovers_total == {("a", "b"): n}
    assert metric(setup, "gatewayz_route_failovers_total", from_provider="a", to_provider="b") == n
    assert setup.registry.get("a").snapshot().requests_total["success"] == 0
    assert setup.registry.get("b").snapshot().requests_total["success"] == n
    assert_trial_slot_free(setup, "b")  # no call kept b's only trial slot
    tally.checked("route_permits_returned")
    name = f"route_{fault.name}[{mode},{stack.__name__}]"
    await check(name, setup, fleet, paths, run, before, tally, seconds)


@pytest.mark.parametrize("mode", MODES)
async def test_cascade_over_three_targets(mode: str, stack: ModuleType, fleet: Fleet, tally: Tally) -> None:
    """``a`` refuses connections, ``b`` answers 502, ``c`` is healthy: all ``c``'s, in 3 attempts."""
    before = Resources.now()
    paths = ["refused", "/status/502", f"/auto/{UNITS}"]
    setup = build(fleet, paths, trial="c")
    await half_open(setup, fleet, "c", stack)
    run = Run()
    started = time.monotonic()
    answers = await drive(setup, stack, mode, CALLS, run)
    seconds = time.monotonic() - started

    n = len(CALLS)
    assert run.outcomes == Counter({"status_200": n}), [a.error for a in answers]
    for answer, streamed in zip(answers, CALLS, strict=True):
        assert (answer.provider, answer.attempts, answer.body) == ("c", 3, healthy_bytes(streamed))
    assert setup.registry.get("a").snapshot().requests_total["failure"] == n
    assert fleet.pairs["b"].upstream.received == Counter({"status": n})
    assert setup.route.snapshot().failovers_total == {("a", "b"): n, ("b", "c"): n}
    assert_trial_slot_free(setup, "c")
    tally.checked("route_permits_returned")
    name = f"route_cascade_3_targets[{mode},{stack.__name__}]"
    await check(name, setup, fleet, paths, run, before, tally, seconds)


# -- faults after commit -------------------------------------------------------------


POST_COMMIT = [
    Fault("reset_after_first_content", f"/cut/{CUT_UNITS}", calls=(True, True), kinds=("cut",)),
    Fault("fin_mid_body_after_first_content", f"/cut_fin/{CUT_UNITS}", calls=(True, True),
          kinds=("cut_fin",)),
    Fault("stall_after_first_content", "/stall", calls=(True, True), kinds=("stall",)),
]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("fault", POST_COMMIT, ids=[f.name for f in POST_COMMIT])
async def test_fault_after_commit_raises_in_iteration(
    fault: Fault, mode: str, stack: ModuleType, fleet: Fleet, tally: Tally
) -> None:
    """``a`` commits (its first content event) and then breaks: the caller's iteration raises the
    stack's typed error after the bytes ``a`` sent (never a clean end); ``b`` is never tried."""
    before = Resources.now()
    paths = [fault.path, f"/auto/{UNITS}"]
    setup = build(fleet, paths, trial=None)
    run = Run()
    started = time.monotonic()
    answers = await drive(setup, stack, mode, fault.calls, run)
    seconds = time.monotonic() - started

    n = len(fault.calls)
    first_event = sse_events(0 if fault.path == "/stall" else CUT_UNITS)[0]
    for answer in answers:
        assert answer.status == 200  # committed: the response came back ...
        assert (answer.provider, answer.attempts) == ("a", 1)
        assert isinstance(answer.error, stack.HTTPError), answer.error  # ... and its iteration raised
        assert answer.body == first_event  # what a sent, and nothing after it
    assert sum(run.outcomes.values()) == n and not run.outcomes["status_200"]
    assert fleet.pairs["a"].upstream.received == Counter({kind: n for kind in fault.kinds})
    assert fleet.pairs["b"].upstream.total == 0
    assert setup.registry.get("a").snapshot().requests_total["failure"] == n
    snap = setup.route.snapshot()
    assert snap.requests_total["success"] == n and snap.failovers_total == {}
    name = f"route_{fault.name}[{mode},{stack.__name__}]"
    await check(name, setup, fleet, paths, run, before, tally, seconds)


# -- hedging -------------------------------------------------------------------------


@pytest.mark.parametrize("streamed", [True, False], ids=["stream", "json"])
async def test_hedge_wins_over_a_slow_first_target(
    streamed: bool, stack: ModuleType, fleet: Fleet, tally: Tally
) -> None:
    """``a`` (half-open, one trial slot) keeps its first token back; after ``hedge_after_seconds`` the
    hedge to ``b`` commits and wins. ``a``'s lost attempt counts in neither its calls nor its
    failures, gives its trial slot back, and its upstream sees the client go away."""
    before = Resources.now()
    paths = [f"/slow/{UNITS}", f"/auto/{UNITS}"]
    policy = RoutePolicy(order="priority", hedge_after_seconds=HEDGE_AFTER)
    setup = build(fleet, paths, trial="a", route_policy=policy)
    await half_open(setup, fleet, "a", stack)
    a = setup.registry.get("a")
    a_before = a.snapshot()
    run = Run()
    started = time.monotonic()
    answers = await drive(setup, stack, "async", (streamed,), run)
    seconds = time.monotonic() - started

    (answer,) = answers
    assert run.outcomes == Counter({"status_200": 1}), answer.error
    assert (answer.provider, answer.attempts, answer.body) == ("b", 2, healthy_bytes(streamed))
    assert seconds < 2.0  # nowhere near the slow target's first token
    a_after = a.snapshot()
    assert a_after.requests_total == a_before.requests_total  # the lost attempt: neither call nor failure
    assert a_after.window.calls == a_before.window.calls
    assert a_after.cost_total == 0.0
    assert fleet.pairs["a"].upstream.received == Counter({"status": 1, "slow": 1})
    assert fleet.pairs["b"].upstream.received == Counter({"auto": 1})
    snap = setup.route.snapshot()
    assert snap.hedges_total == {"won": 1, "lost": 0} and snap.hedges == 1
    assert snap.requests_total == {"success": 1, "failure": 0, "rejected": 0}
    assert metric(setup, "gatewayz_route_hedges_total", result="won") == 1
    assert metric(setup, "gatewayz_route_hedges_total", result="lost") == 0
    assert_trial_slot_free(setup, "a")  # the cancelled attempt gave its trial slot back
    tally.checked("route_permits_returned")
    name = f"route_hedge_wins_{'stream' if streamed else 'json'}[async,{stack.__name__}]"
    await check(name, setup, fleet, paths, run, before, tally, seconds, lost=Counter({"a": 1}))


# -- every target failing --------------------------------------------------------------


@dataclass(frozen=True)
class AllFail:
    """Two faulty targets; what the caller gets is the last one's answer (or exception), whole."""

    name: str
    paths: tuple[str, str]
    status: int | None
    """The last target's status; ``None``: its exception reaches the caller."""
    body: bytes = b""


ALL_FAIL = [
    AllFail("refused_then_in_band_error", ("refused", "/sse_error"), 200, b": ping\n\n" + OVERLOADED),
    AllFail("in_band_error_then_503", ("/sse_error", "/status/503"), 503,
            b'{"error": {"message": "upstream trouble"}}'),
    AllFail("503_then_refused", ("/status/503", "refused"), None),
]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("case", ALL_FAIL, ids=[c.name for c in ALL_FAIL])
async def test_every_target_failing_gives_the_last_answer(
    case: AllFail, mode: str, stack: ModuleType, fleet: Fleet, tally: Tally
) -> None:
    """No healthy target: the caller gets the last target's response whole (nothing of the first
    attempt) or its exception; the route call is a failure; every attempt recorded once."""
    before = Resources.now()
    paths = list(case.paths)
    setup = build(fleet, paths, trial=None)
    run = Run()
    started = time.monotonic()
    answers = await drive(setup, stack, mode, CALLS, run)
    seconds = time.monotonic() - started

    n = len(CALLS)
    for answer in answers:
        if case.status is None:
            assert isinstance(answer.error, stack.ConnectError), answer.error
        else:
            assert answer.error is None, answer.error
            assert (answer.status, answer.provider, answer.attempts) == (case.status, "b", 2)
            assert answer.body == case.body
    snap = setup.route.snapshot()
    assert snap.requests_total == {"success": 0, "failure": n, "rejected": 0}
    assert snap.failovers_total == {("a", "b"): n}
    for name in setup.names:
        requests = setup.registry.get(name).snapshot().requests_total
        assert requests["success"] == 0 and sum(requests.values()) == n, (name, requests)
    name = f"route_all_fail_{case.name}[{mode},{stack.__name__}]"
    await check(name, setup, fleet, paths, run, before, tally, seconds)


# -- hedging: the races ----------------------------------------------------------------


@dataclass(frozen=True)
class Race:
    """A hedged call: ``a`` first, ``b`` the hedge (or the failover); who serves it, hedges by result."""

    name: str
    paths: tuple[str, str]
    winner: str
    hedges: dict[str, int]
    failures: dict[str, int]
    """Failures recorded per provider: an attempt that failed is recorded, a lost one is not."""
    lost: dict[str, int] = field(default_factory=dict)


RACES = [
    pytest.param(
        Race("primary_fails_while_hedge_runs", ("/late_status/100,503", f"/late/250,{UNITS}"), "b",
             {"won": 1, "lost": 0}, {"a": 1, "b": 0}),
        id="primary_fails_while_hedge_runs",
    ),
    pytest.param(
        Race("hedge_fails_primary_wins", (f"/late/200,{UNITS}", "/status/503"), "a",
             {"won": 0, "lost": 1}, {"a": 0, "b": 1}),
        id="hedge_fails_primary_wins",
    ),
    pytest.param(
        Race("primary_fails_before_hedge_time", ("/status/503", f"/auto/{UNITS}"), "b",
             {"won": 0, "lost": 0}, {"a": 1, "b": 0}),
        id="primary_fails_before_hedge_time",
    ),
    pytest.param(
        Race("primary_only_pings", ("/pings/100", f"/late/100,{UNITS}"), "b",
             {"won": 1, "lost": 0}, {"a": 0, "b": 0}, lost={"a": 1}),
        id="primary_only_pings",
    ),
]


@pytest.mark.parametrize("race", RACES)
async def test_hedged_race(race: Race, stack: ModuleType, fleet: Fleet, tally: Tally) -> None:
    """Hedged calls whose attempts fail, late or early: the answer is the winner's bytes only, every
    attempt that failed is recorded (and closed), a lost one counts nowhere, hedges counted by result."""
    before = Resources.now()
    paths = list(race.paths)
    policy = RoutePolicy(order="priority", hedge_after_seconds=HEDGE_AFTER)
    setup = build(fleet, paths, trial=None, route_policy=policy, first_token=RACE_FIRST_TOKEN_SECONDS)
    run = Run()
    started = time.monotonic()
    answers = await drive(setup, stack, "async", (True,), run)
    seconds = time.monotonic() - started

    (answer,) = answers
    assert run.outcomes == Counter({"status_200": 1}), answer.error
    assert (answer.provider, answer.attempts, answer.body) == (race.winner, 2, healthy_bytes(True))
    snap = setup.route.snapshot()
    assert snap.hedges_total == race.hedges
    assert snap.requests_total == {"success": 1, "failure": 0, "rejected": 0}
    for name, failures in race.failures.items():
        requests = setup.registry.get(name).snapshot().requests_total
        assert requests["failure"] == failures, (name, requests)
        assert requests["success"] == (name == race.winner), (name, requests)
    name = f"route_hedge_{race.name}[async,{stack.__name__}]"
    await check(name, setup, fleet, paths, run, before, tally, seconds, lost=Counter(race.lost))
