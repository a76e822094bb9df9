"""Chaos with shared breaker state: a Redis restart during an outage, two replicas in one process.

Two registries (the replicas) share their breakers through a real redis-server
by ``SharedBreakerState``, each with its own ``ResilientTransport`` client to
the fake provider. Redis is killed, the provider fails and trips on replica A
alone, Redis restarts empty on the same port, and one replica syncs before the
other: A, whose trip re-creates the hash at version 1 (the version B saw
before the crash), or B, whose closed state re-creates it. Afterwards B is
open within a few of its syncs, no replica sends the provider anything while
it is open, the recovery closes both, and the suite's invariants hold across
the two replicas.

The breakers run on a fake clock (the open time ends when the test says so);
only the background syncs take real time, polled with bounded deadlines.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from types import ModuleType

import anyio
import httpx
import pytest
import redis.asyncio
from chaos._drive import HOST, Bases, Run, limits, send_async
from chaos._invariants import (
    Resources,
    Tally,
    assert_nothing_left,
    assert_transitions,
    assert_typed_endings,
    recorded,
)
from chaos._upstream import Upstream
from redis_server import RedisServer, running_redis_server

from resilience import (
    BreakerPolicy,
    Policy,
    ProviderRegistry,
    ResilientTransport,
    RetryPolicy,
    SharedBreakerState,
)
from resilience._core.provider import Provider
from resilience.testing import FakeClock

pytestmark = [
    pytest.mark.chaos, pytest.mark.integration, pytest.mark.redis, pytest.mark.anyio,
    pytest.mark.usefixtures("stack"),
]

REFRESH = 0.05
"""Each replica's sync interval, seconds of real time."""

SYNC_BOUND = 3
"""A change in Redis reaches the other replica within this many of its syncs."""

DEADLINE = 10.0
"""Longest any poll for real-time sync waits."""

BURST = 25
OPEN_SECONDS = 30.0
WALL_EPOCH = 1_700_000_000.0
POLICY = Policy(
    breaker=BreakerPolicy(
        consecutive_failures=4, window_seconds=600.0, open_seconds=OPEN_SECONDS, half_open_max_calls=1,
        success_threshold=1,
    ),
    retry=RetryPolicy(attempts=1),
)


@dataclass
class Replica:
    """One gateway replica: its registry, its shared state and its client to the provider."""

    name: str
    registry: ProviderRegistry
    shared: SharedBreakerState
    client: httpx.AsyncClient

    @property
    def provider(self) -> Provider:
        """The fake provider as this replica sees it."""
        return self.registry.get(HOST)


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    """A redis-server of the test's own, to kill and restart."""
    with running_redis_server() as server:
        yield server


@contextlib.asynccontextmanager
async def replicas(url: str, clock: FakeClock, prefix: str) -> AsyncIterator[tuple[Replica, Replica]]:
    """Replicas A and B, syncing in the background; stopped and closed on exit."""
    async with contextlib.AsyncExitStack() as stack:
        pair: list[Replica] = []
        for name in "ab":
            registry = ProviderRegistry(POLICY, clock=clock)
            registry.register(HOST)
            shared = SharedBreakerState(
                url, registry=registry, key_prefix=prefix, refresh_seconds=REFRESH, timeout_seconds=1.0,
                replica_id=name, wall_clock=lambda: WALL_EPOCH + clock(),
            )
            transport = ResilientTransport(registry, httpx.AsyncHTTPTransport(limits=limits(httpx)))
            client = await stack.enter_async_context(httpx.AsyncClient(transport=transport))
            pair.append(Replica(name, registry, await stack.enter_async_context(shared), client))
        yield pair[0], pair[1]


async def eventually(condition: Callable[[], bool], what: str) -> None:
    """Poll ``condition`` in real time until it holds; fail after :data:`DEADLINE`."""
    with anyio.move_on_after(DEADLINE):
        while not condition():  # noqa: ASYNC110  # the sync loop sets no event to wait on
            await anyio.sleep(0.01)
    assert condition(), f"not within {DEADLINE} s: {what}"


async def within_syncs(replica: Replica, condition: Callable[[], bool], what: str) -> int:
    """``condition`` holds within :data:`SYNC_BOUND` of the replica's syncs; returns how many it took."""
    start = replica.shared.syncs
    await eventually(condition, what)
    taken = replica.shared.syncs - start
    assert taken <= SYNC_BOUND, f"{what}: after {taken} syncs of {replica.name}"
    return taken


async def burst(replica: Replica, bases: Bases, run: Run, path: str = "/ok/1", n: int = BURST) -> int:
    """Send ``n`` requests through the replica; returns ``n``."""
    for i in range(n):
        await send_async(replica.client, bases, path, run, i)
    return n


async def shared_state_in_redis(url: str, prefix: str) -> str | None:
    """The provider's state as Redis has it."""
    client = redis.asyncio.Redis.from_url(url, decode_responses=True)
    try:
        state = await client.hget(f"{prefix}breaker:{{{HOST}}}", "state")
    finally:
        await client.aclose()
    return None if state is None else str(state)


async def restart_redis(server: RedisServer, first: Replica, held: Replica) -> None:
    """Start the killed server again (empty); ``first`` syncs with it while ``held``'s sync waits."""
    async with held.shared._cycle_lock:  # held's next sync waits until first has synced
        server.start()
        await eventually(lambda: first.shared.healthy, f"{first.name} syncs with the new Redis")


@pytest.mark.parametrize(
    "a_first", [pytest.param(True, id="trip-first"), pytest.param(False, id="closed-first")]
)
async def test_a_redis_restart_during_an_outage(
    redis_server: RedisServer, upstream: Upstream, bases: Bases, tally: Tally, a_first: bool,
    stack: ModuleType, request: pytest.FixtureRequest,
) -> None:
    """Redis dies, A trips alone, Redis comes back empty: B adopts the open, then both close again."""
    prefix, clock, run, sent = f"chaos:{request.node.name}:", FakeClock(1000.0), Run(), 0
    before, started = Resources.now(), time.monotonic()
    async with replicas(redis_server.url, clock, prefix) as (a, b):
        await eventually(lambda: a.shared.healthy and b.shared.healthy, "both replicas reach Redis")
        sent += await burst(a, bases, run) + await burst(b, bases, run)
        redis_server.stop()  # the cache dies
        await eventually(lambda: not (a.shared.healthy or b.shared.healthy), "both run on local state")
        while a.provider.state != "open":  # the provider fails: A trips on its own
            sent += await burst(a, bases, run, "/status/500", 1)
            assert sent <= 2 * BURST + 4, "four failures in a row did not trip A"
        sent += await burst(b, bases, run)
        assert b.provider.state == "closed"  # nothing is shared while Redis is away
        first, held = (a, b) if a_first else (b, a)
        await restart_redis(redis_server, first, held)
        adopted = await within_syncs(b, lambda: b.provider.state == "open", "B adopts A's trip")
        assert a.shared.healthy and b.shared.healthy
        assert await shared_state_in_redis(redis_server.url, prefix) == "open"
        # neither replica sends the open provider anything
        hits = upstream.total
        sent += await burst(a, bases, run) + await burst(b, bases, run)
        assert upstream.total == hits and run.outcomes["CircuitOpenError"] >= 2 * BURST
        # the open time ends; A's trial closes the breaker, and B follows
        clock.advance(OPEN_SECONDS)
        with anyio.fail_after(DEADLINE):  # the first trial is turned away and asks for the lease
            while a.provider.state != "closed":
                sent += await burst(a, bases, run, n=1)
                await anyio.sleep(REFRESH / 5)  # real time for the lease: the sync runs on Redis
        closed = await within_syncs(b, lambda: b.provider.state == "closed", "B adopts the recovery")
        sent += await burst(a, bases, run) + await burst(b, bases, run)
        assert upstream.total == hits + 1 + 2 * BURST
        assert await shared_state_in_redis(redis_server.url, prefix) == "closed"
    seconds = time.monotonic() - started
    name = f"redis_restart_during_outage[{'a' if a_first else 'b'}_first,{stack.__name__}]"
    await check(name, (a, b), upstream, run, sent, before, tally, seconds,
                adopted_after_syncs=adopted, closed_after_syncs=closed)


async def check(
    name: str,
    pair: tuple[Replica, Replica],
    upstream: Upstream,
    run: Run,
    expected: int,
    before: Resources,
    tally: Tally,
    seconds: float,
    **extra: int,
) -> None:
    """The suite's invariants over both replicas together, each tallied once it held."""
    providers = [replica.provider for replica in pair]
    assert_typed_endings(run, expected)
    tally.checked("typed_endings")
    stale = sum(p.snapshot().retries_total.get("stale_connection", 0) for p in providers)
    assert sum(map(recorded, providers)) + stale == upstream.total, dict(upstream.received)
    tally.checked("attempts_equal_upstream_requests")
    assert run.circuit_open <= sum(p.snapshot().requests_total["rejected"] for p in providers)
    tally.checked("rejections_bounded")
    assert sum(p.snapshot().cost_total for p in providers) == upstream.cost_sent
    tally.checked("cost_equals_cost_sent")
    transitions = sum(assert_transitions(p) for p in providers)
    assert [p.snapshot().transitions_total for p in providers] == [
        {("closed", "open"): 1, ("open", "half_open"): 1, ("half_open", "closed"): 1}
    ] * 2
    tally.checked("breaker_edges_allowed")
    await assert_nothing_left(before, upstream)
    tally.checked("nothing_left_behind")
    tally.scenario(name, run, upstream, seconds, transitions=transitions, stale_resends=stale,
                   redis_restarts=1, **extra)
