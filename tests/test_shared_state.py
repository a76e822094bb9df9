"""Shared breaker state: core hooks, two registries on one real redis-server, and two real replicas."""

from __future__ import annotations

import asyncio
import contextlib
import select
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pybreaker
import pytest
import redis.asyncio
from prometheus_client import CollectorRegistry
from redis_server import RedisServer, running_redis_server

import resilience
from resilience import BreakerPolicy, CircuitOpenError, Policy, Provider, ProviderRegistry
from resilience._asgi.dashboard import health_payload
from resilience._export.shared_sync import transition_kind
from resilience.testing import FakeClock

EPOCH = 1_700_000_000.0
NAME = "openrouter"


def policy(**breaker: object) -> Policy:
    """Trip after two calls at 50 %, open 30 s, one trial that closes it, unless overridden."""
    options: dict[str, object] = {
        "failure_rate_threshold": 0.5, "minimum_calls": 2, "open_seconds": 30.0,
        "half_open_max_calls": 1, "success_threshold": 1,
    }
    options.update(breaker)
    return Policy(breaker=BreakerPolicy(**options))  # type: ignore[arg-type]


def replica(clock: FakeClock, **breaker: object) -> Provider:
    """A registry with one provider named NAME on the fake clock."""
    return ProviderRegistry(policy(**breaker), clock=clock).register(NAME)


def trip(provider: Provider) -> None:
    """Two failures: the breaker opens."""
    for _ in range(2):
        provider.record(provider.admit(), "failure", 0.01)
    assert provider.state == "open"


def rejected(provider: Provider) -> CircuitOpenError | None:
    """The rejection of one admission, or None (and the permit given back) when admitted."""
    try:
        permit = provider.admit()
    except CircuitOpenError as exc:
        return exc
    provider.release(permit)
    return None


class Recorder(pybreaker.CircuitBreakerListener):
    """A pybreaker listener that keeps every state change."""

    def __init__(self) -> None:
        self.changes: list[tuple[str, str]] = []

    def state_change(self, cb: object, old: object, new: object) -> None:
        self.changes.append((str(old), str(new)))


# -- core hooks (no Redis) -------------------------------------------------------------------


def test_transition_hooks_hear_each_transition_without_the_lock(clock: FakeClock) -> None:
    """A hook gets (breaker, old, new) for every transition, called after the lock is released."""
    provider = replica(clock)
    heard: list[tuple[str, str, bool]] = []
    provider._breaker.transition_hooks.append(
        lambda breaker, old, new: heard.append((old, new, provider._lock.locked()))
    )
    trip(provider)
    clock.advance(30)
    provider.record(provider.admit(), "success", 0.01)
    provider.force_open()
    assert heard == [
        ("closed", "open", False), ("open", "half_open", False), ("half_open", "closed", False),
        ("closed", "forced_open", False),
    ]


def test_a_failing_hook_is_counted_and_the_call_goes_on(clock: FakeClock) -> None:
    """A hook that raises is logged and counted in listener_errors; the breaker still trips."""
    provider = replica(clock)

    def broken(breaker: object, old: str, new: str) -> None:
        raise RuntimeError("boom")

    provider._breaker.transition_hooks.append(broken)
    trip(provider)
    assert provider._breaker.listener_errors == 1
    assert isinstance(rejected(provider), CircuitOpenError)


def test_apply_remote_open_rejects_until_the_given_time(clock: FakeClock) -> None:
    """A remote open is a transition (listeners, counts, history) and rejects until open_until."""
    listener = Recorder()
    provider = replica(clock, listeners=[listener])
    with provider._lock:
        provider._breaker.apply_remote_locked("open", clock() + 12.0, clock())
    provider._breaker.notify()
    error = rejected(provider)
    assert error is not None and error.retry_after == pytest.approx(12.0)
    assert listener.changes == [("closed", "open")]
    assert provider._breaker.transitions == {("closed", "open"): 1}
    clock.advance(12.0)
    assert provider.state == "half_open"


def test_apply_remote_same_state_only_moves_the_open_time(clock: FakeClock) -> None:
    """Open taking open again keeps its generation and takes the new reopening time."""
    provider = replica(clock)
    trip(provider)
    generation = provider._breaker.generation
    with provider._lock:
        provider._breaker.apply_remote_locked("open", clock() + 5.0, clock())
        provider._breaker.apply_remote_locked("forced_open", 0.0, clock())
        provider._breaker.apply_remote_locked("forced_open", 0.0, clock())
    assert provider._breaker.generation == generation + 1
    assert provider._breaker.transitions[("open", "forced_open")] == 1


def test_apply_remote_refuses_an_unknown_state(clock: FakeClock) -> None:
    """Only the five state names are taken."""
    provider = replica(clock)
    with provider._lock, pytest.raises(ValueError, match="state must be one of"):
        provider._breaker.apply_remote_locked("ajar", 0.0, clock())


@pytest.mark.parametrize(
    ("limit", "admitted"),
    [pytest.param(None, 2, id="policy"), pytest.param(0, 0, id="none"), pytest.param(1, 1, id="one")],
)
def test_trial_limit_overrides_half_open_max_calls(
    clock: FakeClock, limit: int | None, admitted: int
) -> None:
    """trial_limit, when set, is the number of concurrent half-open trials."""
    provider = replica(clock, half_open_max_calls=2)
    trip(provider)
    clock.advance(30)
    provider._breaker.trial_limit = limit
    permits = []
    for _ in range(3):
        with contextlib.suppress(CircuitOpenError):
            permits.append(provider.admit())
    assert len(permits) == admitted


@pytest.mark.parametrize(
    ("old", "new", "kind"),
    [
        pytest.param("closed", "open", "trip", id="trip"),
        pytest.param("half_open", "open", "trip", id="failed-trial"),
        pytest.param("open", "half_open", "half_open", id="expired"),
        pytest.param("half_open", "closed", "recovered", id="recovered"),
        pytest.param("open", "closed", "manual", id="reset"),
        pytest.param("closed", "forced_open", "manual", id="force-open"),
        pytest.param("forced_open", "disabled", "manual", id="disable"),
    ],
)
def test_transition_kind(old: str, new: str, kind: str) -> None:
    """How a local transition competes with other replicas' in Redis."""
    assert transition_kind(old, new) == kind


# -- two registries on one redis-server ------------------------------------------------------

F = TypeVar("F", bound=Callable[..., Any])


def uses_redis(test: F) -> F:
    """Mark a test that runs a real redis-server (skipped without one, failing in CI)."""
    marked: F = pytest.mark.integration(pytest.mark.redis(test))
    return marked


@pytest.fixture(scope="module")
def server() -> Iterator[RedisServer]:
    """One redis-server for the module's tests (each uses its own key prefix)."""
    with running_redis_server() as server:
        yield server


@pytest.fixture
def own_server() -> Iterator[RedisServer]:
    """A redis-server of the test's own, to kill and restart."""
    with running_redis_server() as server:
        yield server


@pytest.fixture
def prefix(request: pytest.FixtureRequest) -> str:
    """A key prefix of the test's own."""
    return f"test:{request.node.name}:"


def shared_state(
    registry: ProviderRegistry, url: str, clock: FakeClock, prefix: str, refresh: float = 0.05
) -> resilience.SharedBreakerState:
    """A SharedBreakerState for ``registry``; its wall time moves with the fake clock."""
    return resilience.SharedBreakerState(
        url, registry=registry, key_prefix=prefix, refresh_seconds=refresh,
        timeout_seconds=2.0, wall_clock=lambda: EPOCH + clock(),
    )


Pair = tuple[Provider, Provider, resilience.SharedBreakerState, resilience.SharedBreakerState]


@contextlib.asynccontextmanager
async def pair(
    server: RedisServer, clock: FakeClock, prefix: str, *, refresh: float = 0.05, **breaker: object
) -> AsyncIterator[Pair]:
    """Two replicas (registries on one fake clock) sharing the provider NAME, not started."""
    registries = [ProviderRegistry(policy(**breaker), clock=clock) for _ in range(2)]
    states = [shared_state(r, server.url, clock, prefix, refresh) for r in registries]
    try:
        yield registries[0].register(NAME), registries[1].register(NAME), states[0], states[1]
    finally:
        for state in states:
            await state.stop()


async def sync(*states: resilience.SharedBreakerState) -> None:
    """One sync of each, in order; each must reach Redis."""
    for state in states:
        assert await state.sync_once()


@uses_redis
@pytest.mark.anyio
async def test_a_trip_in_one_replica_opens_the_other_until_the_same_instant(
    server: RedisServer, clock: FakeClock, prefix: str
) -> None:
    """B adopts A's trip: it rejects without calling, with the reopening time A set, and hears it."""
    async with pair(server, clock, prefix) as (a, b, shared_a, shared_b):
        await sync(shared_a, shared_b)
        trip(a)
        clock.advance(10)
        await sync(shared_a, shared_b)
        error = rejected(b)
        assert error is not None and error.provider == NAME
        assert error.retry_after == pytest.approx(20.0)
        assert b._breaker.transitions == {("closed", "open"): 1}
        assert b.snapshot().requests_total["failure"] == 0  # nothing reached the provider from B
        clock.advance(20)
        assert (a.state, b.state) == ("half_open", "half_open")


@uses_redis
@pytest.mark.anyio
async def test_half_open_trials_are_leased_across_replicas(
    server: RedisServer, clock: FakeClock, prefix: str
) -> None:
    """With one trial slot, only the replica holding the lease runs a trial; its success closes both."""
    async with pair(server, clock, prefix) as (a, b, shared_a, shared_b):
        await sync(shared_a, shared_b)
        trip(a)
        await sync(shared_a, shared_b)
        clock.advance(30)
        await sync(shared_a, shared_b)
        assert rejected(a) is not None and rejected(b) is not None  # no lease yet: the trials wait
        await sync(shared_a, shared_b)  # both asked; A asked first and gets the one slot
        assert (a._breaker.trial_limit, b._breaker.trial_limit) == (1, 0)
        assert rejected(b) is not None
        a.record(a.admit(), "success", 0.01)
        assert a.state == "closed"
        await sync(shared_a, shared_b)
        assert b.state == "closed" and rejected(b) is None


@uses_redis
@pytest.mark.anyio
async def test_never_more_trials_than_half_open_max_calls_in_all(
    server: RedisServer, clock: FakeClock, prefix: str
) -> None:
    """Two slots, two hungry replicas keeping their trials running: never more than two in flight."""
    async with pair(server, clock, prefix, half_open_max_calls=2) as (a, b, shared_a, shared_b):
        trip(a)
        await sync(shared_a, shared_b)
        clock.advance(30)
        trials: list[list[int]] = [[], []]
        for _ in range(4):
            for provider, running in zip((a, b), trials, strict=True):
                for _ in range(3):
                    with contextlib.suppress(CircuitOpenError):
                        running.append(provider.admit())
            assert len(trials[0]) + len(trials[1]) <= 2
            await sync(shared_a, shared_b)
        assert len(trials[0]) + len(trials[1]) == 2


@uses_redis
@pytest.mark.anyio
async def test_an_idle_replica_gives_its_lease_back(
    server: RedisServer, clock: FakeClock, prefix: str
) -> None:
    """A lease unused for a sync is released, so another replica's trials can run."""
    async with pair(server, clock, prefix) as (a, b, shared_a, shared_b):
        trip(a)
        await sync(shared_a, shared_b)
        clock.advance(30)
        rejected(a)
        await sync(shared_a)
        assert a._breaker.trial_limit == 1
        rejected(b)
        await sync(shared_b)
        assert b._breaker.trial_limit == 0
        await sync(shared_a)  # A saw no trial since: it lets go
        assert a._breaker.trial_limit == 0
        await sync(shared_b)
        assert b._breaker.trial_limit == 1


@uses_redis
@pytest.mark.anyio
async def test_the_lease_of_a_replica_that_died_runs_out(
    server: RedisServer, clock: FakeClock, prefix: str
) -> None:
    """A holds the one trial slot and stops syncing: B gets it once the lease has run out (server time)."""
    registries = [ProviderRegistry(policy(), clock=clock) for _ in range(2)]
    a, b = (registry.register(NAME) for registry in registries)
    shared_a, shared_b = (
        resilience.SharedBreakerState(
            server.url, registry=registry, key_prefix=prefix, refresh_seconds=0.05, lease_seconds=0.3,
            wall_clock=lambda: EPOCH + clock(),
        )
        for registry in registries
    )
    try:
        trip(a)
        await sync(shared_a, shared_b)
        clock.advance(30)
        rejected(a)
        await sync(shared_a)
        assert a._breaker.trial_limit == 1
        rejected(b)
        await sync(shared_b)
        assert b._breaker.trial_limit == 0  # A's lease is live
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 5.0
        while b._breaker.trial_limit == 0:
            assert loop.time() < deadline, "the dead replica's lease never ran out"
            await asyncio.sleep(0.01)
            await sync(shared_b)
        assert b._breaker.trial_limit == 1
    finally:
        await shared_a.stop()
        await shared_b.stop()


@uses_redis
@pytest.mark.anyio
async def test_a_failed_trial_reopens_every_replica(
    server: RedisServer, clock: FakeClock, prefix: str
) -> None:
    """The lease holder's trial fails: both replicas are open again and no lease is left."""
    async with pair(server, clock, prefix) as (a, b, shared_a, shared_b):
        trip(a)
        await sync(shared_a, shared_b)
        clock.advance(30)
        rejected(b)
        await sync(shared_a, shared_b)
        b.record(b.admit(), "failure", 0.01)
        await sync(shared_b, shared_a)
        assert (a.state, b.state) == ("open", "open")
        assert (a._breaker.trial_limit, b._breaker.trial_limit) == (0, 0)


@pytest.mark.parametrize(
    ("action", "state"),
    [
        pytest.param(Provider.force_open, "forced_open", id="force_open"),
        pytest.param(Provider.disable, "disabled", id="disable"),
    ],
)
@uses_redis
@pytest.mark.anyio
async def test_manual_control_reaches_every_replica(
    server: RedisServer, clock: FakeClock, prefix: str, action: Callable[[Provider], None], state: str
) -> None:
    """force_open/disable in B, then reset in A: both replicas follow each time."""
    async with pair(server, clock, prefix) as (a, b, shared_a, shared_b):
        await sync(shared_a, shared_b)
        action(b)
        await sync(shared_b, shared_a)
        assert a.state == state
        a.reset()
        await sync(shared_a, shared_b)
        assert b.state == "closed"


@uses_redis
@pytest.mark.anyio
async def test_manual_control_wins_over_a_concurrent_trip(
    server: RedisServer, clock: FakeClock, prefix: str
) -> None:
    """B is disabled by hand while A trips before either synced: both end disabled."""
    async with pair(server, clock, prefix) as (a, b, shared_a, shared_b):
        await sync(shared_a, shared_b)
        b.disable()
        trip(a)
        await sync(shared_b, shared_a, shared_b)
        assert (a.state, b.state) == ("disabled", "disabled")


@pytest.mark.parametrize(
    "a_first", [pytest.param(True, id="earlier-first"), pytest.param(False, id="later-first")]
)
@uses_redis
@pytest.mark.anyio
async def test_two_trips_at_once_keep_the_later_reopening(
    server: RedisServer, clock: FakeClock, prefix: str, a_first: bool
) -> None:
    """A and B trip before syncing: both stay open until the later of their two times."""
    async with pair(server, clock, prefix) as (a, b, shared_a, shared_b):
        await sync(shared_a, shared_b)
        trip(a)
        clock.advance(5)
        trip(b)
        await (sync(shared_a, shared_b, shared_a) if a_first else sync(shared_b, shared_a))
        retry_a, retry_b = rejected(a), rejected(b)
        assert retry_a is not None and retry_b is not None
        assert retry_a.retry_after == pytest.approx(30.0) and retry_b.retry_after == pytest.approx(30.0)


@uses_redis
@pytest.mark.anyio
async def test_a_trip_wins_over_a_concurrent_recovery(
    server: RedisServer, clock: FakeClock, prefix: str
) -> None:
    """In half-open, A's trial closes while B's fails: a failure anywhere keeps everyone open."""
    async with pair(server, clock, prefix, half_open_max_calls=2) as (a, b, shared_a, shared_b):
        trip(a)
        await sync(shared_a, shared_b)
        clock.advance(30)
        rejected(a), rejected(b)
        await sync(shared_a, shared_b)
        permit_a, permit_b = a.admit(), b.admit()
        b.record(permit_b, "failure", 0.01)
        a.record(permit_a, "success", 0.01)
        await sync(shared_a, shared_b, shared_a)
        assert (a.state, b.state) == ("open", "open")


@uses_redis
@pytest.mark.anyio
async def test_a_replica_joining_late_adopts_the_shared_state(
    server: RedisServer, clock: FakeClock, prefix: str
) -> None:
    """A new replica, and a provider a replica registers later, start from the shared state."""
    async with pair(server, clock, prefix) as (a, _b, shared_a, _shared_b):
        a_registry = ProviderRegistry(policy(), clock=clock)
        a_registry.register("late")
        trip(a_registry.get("late"))
        trip(a)
        late = shared_state(a_registry, server.url, clock, prefix)
        try:
            await sync(shared_a, late)
            c_registry = ProviderRegistry(policy(), clock=clock)
            c = c_registry.register(NAME)
            joined = shared_state(c_registry, server.url, clock, prefix)
            try:
                await sync(joined)
                assert c.state == "open"
                c_registry.register("late")
                await sync(joined)
                assert c_registry.get("late").state == "open"
            finally:
                await joined.stop()
        finally:
            await late.stop()


@uses_redis
@pytest.mark.anyio
async def test_redis_down_runs_on_local_state_and_recovers(
    own_server: RedisServer, clock: FakeClock, prefix: str
) -> None:
    """Redis dies: each replica trips and trials on its own, says so, counts it; back, they share again."""
    async with pair(own_server, clock, prefix) as (a, b, shared_a, shared_b):
        await sync(shared_a, shared_b)
        own_server.stop()
        assert not await shared_a.sync_once()
        assert not await shared_b.sync_once()
        assert (shared_a.healthy, shared_a.failures) == (False, 1)
        assert a.errors == {"shared_state_unavailable": 1}
        assert a._breaker.trial_limit is None  # the policy's own half-open trials, locally
        trip(a)
        assert rejected(a) is not None and rejected(b) is None  # nothing shared meanwhile
        payload = health_payload(shared_a.registry)["shared_state"]
        assert payload["healthy"] is False and payload["failures"] == 1
        assert payload["last_error"].startswith("ConnectionError")
        own_server.start()  # same port, empty: the state is published again
        await sync(shared_b, shared_a, shared_b)
        assert shared_a.healthy and shared_b.healthy
        assert b.state == "open"
        b.reset()
        await sync(shared_b, shared_a)
        assert a.state == "closed"


@pytest.mark.parametrize(
    "killed",
    [pytest.param(True, id="killed-trip-during-outage"), pytest.param(False, id="flushed-trip-after")],
)
@uses_redis
@pytest.mark.anyio
async def test_a_trip_published_into_a_fresh_redis_reaches_a_replica_that_saw_its_version(
    own_server: RedisServer, clock: FakeClock, prefix: str, killed: bool
) -> None:
    """Redis loses its data; A's trip re-creates the hash at version 1, which B saw before: B adopts it."""
    async with pair(own_server, clock, prefix) as (a, b, shared_a, shared_b):
        await sync(shared_a, shared_b)  # closed, version 1, seen by both
        if killed:
            own_server.stop()
            assert not await shared_a.sync_once() and not await shared_b.sync_once()
            trip(a)
            own_server.start()  # same port, empty
        else:
            await shared_a._client.flushall()
            trip(a)
        await sync(shared_a, shared_b)  # A first: its trip is version 1 of the new hash
        assert b.state == "open" and rejected(b) is not None
        a.reset()
        await sync(shared_a, shared_b)
        assert b.state == "closed" and rejected(b) is None


@uses_redis
@pytest.mark.anyio
async def test_a_change_made_against_a_lost_redis_follows_the_conflict_rules(
    own_server: RedisServer, clock: FakeClock, prefix: str
) -> None:
    """After a FLUSHALL, B's trip (expecting version 1) does not undo A's force_open, also at version 1."""
    async with pair(own_server, clock, prefix) as (a, b, shared_a, shared_b):
        await sync(shared_a, shared_b)
        await shared_a._client.flushall()
        a.force_open()
        trip(b)
        await sync(shared_a, shared_b, shared_a)
        assert (a.state, b.state) == ("forced_open", "forced_open")


@uses_redis
@pytest.mark.anyio
async def test_a_flushed_script_cache_is_reloaded_without_a_failure(
    server: RedisServer, clock: FakeClock, prefix: str
) -> None:
    """SCRIPT FLUSH (as after a restart with a kept connection): the next sync loads the script again."""
    async with pair(server, clock, prefix) as (a, b, shared_a, shared_b):
        await sync(shared_a)
        await shared_a._client.script_flush()
        trip(a)
        await sync(shared_a, shared_b)
        assert shared_a.failures == 0 and b.state == "open"


@uses_redis
@pytest.mark.anyio
async def test_the_background_sync_publishes_a_trip_at_once(
    server: RedisServer, clock: FakeClock, prefix: str
) -> None:
    """A syncs only every 30 s, but its trip wakes the sync: B (every 0.05 s) rejects soon after."""
    a_registry, b_registry = (ProviderRegistry(policy(), clock=clock) for _ in range(2))
    a, b = a_registry.register(NAME), b_registry.register(NAME)
    async with (
        shared_state(a_registry, server.url, clock, prefix, refresh=30.0),
        shared_state(b_registry, server.url, clock, prefix, refresh=0.05) as shared_b,
    ):
        assert shared_b.running and shared_b.healthy
        trip(a)
        await wait_for(lambda: rejected(b) is not None)
    assert not shared_b.running and b._breaker.transition_hooks == [] and b._breaker.trial_limit is None


async def wait_for(condition: Callable[[], bool], seconds: float = 5.0) -> None:
    """Poll ``condition`` (real time) until true; fail after ``seconds``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while not condition():
        assert loop.time() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


@uses_redis
@pytest.mark.anyio
async def test_calls_never_wait_on_a_hung_redis(
    own_server: RedisServer, clock: FakeClock, prefix: str
) -> None:
    """Redis stops answering mid-sync: calls still trip and reject locally; the sync times out."""
    registry = ProviderRegistry(policy(), clock=clock)
    provider = registry.register(NAME)
    shared = resilience.SharedBreakerState(
        own_server.url, registry=registry, key_prefix=prefix, refresh_seconds=0.05, timeout_seconds=0.5
    )
    async with shared:
        assert own_server.process is not None
        own_server.process.send_signal(signal.SIGSTOP)
        try:
            syncing = asyncio.create_task(shared.sync_once())
            await asyncio.sleep(0)  # the sync is waiting on Redis now
            trip(provider)
            assert rejected(provider) is not None and not syncing.done()
            assert await syncing is False
            assert not shared.healthy
        finally:
            own_server.process.send_signal(signal.SIGCONT)
        await wait_for(lambda: shared.healthy)


class SwallowingRedis(redis.asyncio.Redis):
    """A client whose pipeline fails at once, except once after ``hang`` is set: it waits, eating the cancel.

    As Python 3.11's ``asyncio.wait_for`` (used by redis-py to send) does when the send
    finishes as the cancel comes: the caller sees an error, not the ``CancelledError``.
    """

    def __init__(self) -> None:
        super().__init__()
        self.hang, self.waiting = asyncio.Event(), asyncio.Event()

    async def script_load(self, script: Any) -> str:
        return "sha"

    def pipeline(self, transaction: bool = True, shard_hint: Any = None) -> Any:
        client = self

        class Pipeline:
            def evalsha(self, *args: object) -> None:
                pass

            async def execute(self, raise_on_error: bool = True) -> list[Any]:
                if client.hang.is_set():
                    client.hang.clear()  # once
                    client.waiting.set()
                    with contextlib.suppress(asyncio.CancelledError):
                        await asyncio.sleep(3600)
                raise redis.exceptions.ConnectionError("no reply")

        return Pipeline()


@pytest.mark.anyio
async def test_stop_ends_the_sync_even_when_a_cancel_is_swallowed_under_it(clock: FakeClock) -> None:
    """``stop()`` returns although the library under the sync ate its cancellation."""
    registry = ProviderRegistry(policy(), clock=clock)
    registry.register(NAME)
    client = SwallowingRedis()
    shared = resilience.SharedBreakerState(
        client, registry=registry, refresh_seconds=0.01, timeout_seconds=3600.0
    )
    await shared.start()
    assert not shared.healthy
    client.hang.set()
    await client.waiting.wait()  # the background sync waits on "Redis"
    async with asyncio.timeout(5):
        await shared.stop()
    assert not shared.running


@uses_redis
@pytest.mark.anyio
async def test_metrics_and_dashboard_show_the_shared_state(
    own_server: RedisServer, clock: FakeClock, prefix: str
) -> None:
    """shared_state_up is 1 then 0; failures and the per-provider error counter count the outage."""
    registry = ProviderRegistry(policy(), clock=clock)
    registry.register(NAME)
    prom = CollectorRegistry()
    registry.register_metrics(prom)
    shared = shared_state(registry, own_server.url, clock, prefix)
    shared.register_metrics(prom)
    try:
        await sync(shared)
        assert prom.get_sample_value("gatewayz_resilience_shared_state_up") == 1.0
        status = health_payload(registry)["shared_state"]
        assert status["healthy"] and status["syncs"] == 1 and status["backend"] == "redis"
        own_server.stop()
        await shared.sync_once()
        await shared.sync_once()
        assert prom.get_sample_value("gatewayz_resilience_shared_state_up") == 0.0
        assert prom.get_sample_value("gatewayz_resilience_shared_state_failures_total") == 2.0
        errors = {"provider": NAME, "kind": "shared_state_unavailable"}
        assert prom.get_sample_value("gatewayz_resilience_errors_total", errors) == 2.0
    finally:
        await shared.stop()


def test_a_registry_without_shared_state_keeps_the_dashboard_shape(clock: FakeClock) -> None:
    """No SharedBreakerState: no "shared_state" key in /health/dashboard."""
    registry = ProviderRegistry(policy(), clock=clock)
    assert set(health_payload(registry)) == {"timestamp", "providers", "summary", "routes"}


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        pytest.param({"refresh_seconds": 0}, "refresh_seconds", id="refresh"),
        pytest.param({"timeout_seconds": -1}, "timeout_seconds", id="timeout"),
        pytest.param({"refresh_seconds": 2.0, "lease_seconds": 1.0}, "lease_seconds", id="lease"),
        pytest.param({"key_prefix": 3}, "key_prefix", id="prefix"),
        pytest.param({"registry": "nope"}, "registry", id="registry"),
        pytest.param({"redis": object()}, "redis.asyncio.Redis", id="client"),
    ],
)
def test_bad_arguments_are_config_errors(clock: FakeClock, kwargs: dict[str, object], message: str) -> None:
    """Each bad argument is a ConfigError naming it."""
    options: dict[str, object] = {
        "redis": "redis://127.0.0.1:1/0", "registry": ProviderRegistry(clock=clock), **kwargs
    }
    redis_arg = options.pop("redis")
    with pytest.raises(resilience.ConfigError, match=message):
        resilience.SharedBreakerState(redis_arg, **options)  # type: ignore[arg-type]


def test_one_shared_state_per_registry(clock: FakeClock) -> None:
    """A second SharedBreakerState on the same registry is refused."""
    registry = ProviderRegistry(clock=clock)
    resilience.SharedBreakerState(redis.asyncio.Redis(), registry=registry)
    with pytest.raises(resilience.ConfigError, match="already has"):
        resilience.SharedBreakerState(redis.asyncio.Redis(), registry=registry)


# -- two real gateway processes ----------------------------------------------------------------

REPLICA = Path(__file__).with_name("shared_state_replica.py")
BOOT_SECONDS = 20.0
PROPAGATION_SECONDS = 1.0
"""The promise: a trip in one replica is seen by every other within this long."""


@contextlib.contextmanager
def gateway(redis_url: str, log: Path) -> Iterator[str]:
    """A replica process (tests/shared_state_replica.py) syncing every 0.1 s; yields its base URL."""
    with log.open("wb") as stderr:
        process = subprocess.Popen(
            [sys.executable, str(REPLICA), redis_url, "0.1"], stdout=subprocess.PIPE, stderr=stderr
        )
    try:
        assert process.stdout is not None
        ready, _, _ = select.select([process.stdout], [], [], BOOT_SECONDS)
        line = process.stdout.readline() if ready else b""
        assert line.strip().isdigit(), f"replica did not start: {log.read_text(errors='replace')}"
        yield f"http://127.0.0.1:{int(line)}"
    finally:
        process.terminate()  # uvicorn shuts down, then re-raises SIGTERM
        try:
            process.wait(BOOT_SECONDS)
            assert "replica stopped" in log.read_text(errors="replace"), log.read_text(errors="replace")
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
            if process.stdout is not None:
                process.stdout.close()


def until(condition: Callable[[], bool], seconds: float) -> float:
    """Poll ``condition`` until true and return how long it took; fail after ``seconds``."""
    start = time.monotonic()
    while not condition():
        assert time.monotonic() - start < seconds, f"not within {seconds} s"
        time.sleep(0.01)
    return time.monotonic() - start


@uses_redis
def test_two_gateway_processes_share_one_breaker(own_server: RedisServer, tmp_path: Path) -> None:
    """Trip in A, B rejects within 1 s; Redis killed: both serve on local state; back: shared again."""
    with (
        gateway(own_server.url, tmp_path / "a.log") as a,
        gateway(own_server.url, tmp_path / "b.log") as b,
        httpx.Client(timeout=5) as http,
    ):
        def state(url: str) -> dict[str, Any]:
            body: dict[str, Any] = http.get(url + "/state").json()
            return body

        def status(url: str) -> int:
            return http.post(url + "/call").status_code

        until(lambda: state(a)["healthy"] and state(b)["healthy"], 5.0)
        assert status(a) == status(b) == 200
        # a trip in A: B rejects within a second, without calling its upstream
        http.post(a + "/mode/fail")
        while state(a)["state"] != "open":
            assert status(a) == 200  # the upstream's 500 passes through
        seen = until(lambda: status(b) == 503, PROPAGATION_SECONDS)
        hits = state(b)["hits"]
        rejection = http.post(b + "/call")
        assert rejection.status_code == 503 and rejection.json()["error"]["provider"] == "upstream"
        assert int(rejection.headers["retry-after"]) >= 100 and state(b)["hits"] == hits
        assert http.get(b + "/ops/health/dashboard").json()["shared_state"]["healthy"] is True
        # a reset in A closes B too
        http.post(a + "/reset")
        http.post(a + "/mode/ok")
        until(lambda: state(b)["state"] == "closed", PROPAGATION_SECONDS)
        # Redis dies: both keep serving on local state, and say so
        own_server.stop()
        until(lambda: not state(a)["healthy"] and not state(b)["healthy"], 5.0)
        assert status(a) == status(b) == 200
        http.post(a + "/mode/fail")
        while state(a)["state"] != "open":
            status(a)
        assert status(a) == 503 and status(b) == 200  # A's trip stays local while Redis is away
        for body in (state(a), state(b)):
            assert body["errors"]["shared_state_unavailable"] >= 1 and body["failures"] >= 1
        dashboard = http.get(b + "/ops/health/dashboard").json()
        assert dashboard["shared_state"]["healthy"] is False
        # Redis is back on the same port (empty): A's open is published again, and shared both ways
        own_server.start()
        recovered = until(lambda: state(a)["healthy"] and state(b)["healthy"], 5.0)
        until(lambda: status(b) == 503, PROPAGATION_SECONDS)
        http.post(b + "/reset")
        until(lambda: state(a)["state"] == "closed", PROPAGATION_SECONDS)
    print(f"\ntrip seen by the other replica after {seen * 1000:.0f} ms; sharing again {recovered:.2f} s "
          "after Redis restarted")
