"""Chaos through ``ResilientTransport``: 200 coroutines and 12 threads against a faulty real upstream.

Each scenario builds a fresh registry and clients, drives a weighted mix of
faults, closes the clients and asserts every invariant of
:mod:`chaos._invariants`. Each fault scenario runs on each HTTP stack
(``stack``), except where :attr:`Scenario.async_stacks` says otherwise; the
storm runs both stacks at once on one registry, as a gateway with SDKs on
httpx2 and older code on httpx does: coroutines and threads of each stack.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from types import ModuleType

import anyio
import httpx
import httpx2
import pytest
from chaos._drive import (
    HOST,
    STACK_NAMES,
    STREAMING_IDLE,
    Bases,
    Mix,
    Run,
    chaos_policy,
    coroutines,
    join,
    limits,
    threads,
)
from chaos._invariants import AUTOMATIC, MANUAL, Resources, Tally, check_scenario
from chaos._upstream import Upstream

from resilience import Policy, ProviderRegistry, ResilientTransport

pytestmark = [pytest.mark.chaos, pytest.mark.integration, pytest.mark.anyio]

ASYNC_WORKERS = 200
THREAD_WORKERS = 12
BOTH_STACKS = (httpx2, httpx)


@dataclass
class Scenario:
    """One fault mix and how it is driven."""

    name: str
    mix: Mix
    policy: Policy
    min_transitions: int = 0
    flap_period: float = 0.15
    async_each: int = 1
    thread_each: int = 12
    pace: float = 0.0
    spread: float = 0.0
    """Seconds over which the coroutines' first requests are spread (threads pace themselves)."""
    async_stacks: tuple[str, ...] = STACK_NAMES
    """Stacks the 200-coroutine run is repeated on (the 12 threads run on both). httpx2 alone where the
    faults are plain responses and only breaker and retry logic is under test: that logic is the same
    on both stacks (the unit tests run it on each), and httpx's async pool is slow under 200 coroutines."""


SCENARIOS = [
    Scenario("healthy", [("/ok/1", 3), ("/sse/2", 1)], chaos_policy()),
    Scenario("server_errors", [("/ok/1", 2), ("/status/500", 1), ("/status/502", 1), ("/status/503", 1)],
             chaos_policy(), async_stacks=("httpx2",)),
    Scenario("throttled_retry_after", [("/ok/1", 2), ("/throttle/0.02", 2), ("/throttle/120", 1)],
             chaos_policy(), async_stacks=("httpx2",)),
    Scenario("hang_past_timeout", [("/ok/1", 3), ("/hang", 1)], chaos_policy()),
    Scenario("connection_reset", [("/reuse/1", 3), ("/reset", 1), ("/ok/2", 1)], chaos_policy()),
    Scenario("stall_mid_stream", [("/ok/1", 3), ("/stall", 1)], chaos_policy(idle_timeout=0.25)),
    # what providers say in-band: a 200 stream that reports overloaded, a stream of keepalives only
    Scenario("in_band_stream_error", [("/sse/1", 3), ("/sse_error", 1)], chaos_policy(),
             async_stacks=("httpx2",)),
    Scenario("keepalives_only", [("/sse/1", 3), ("/pings/100", 1)], chaos_policy(first_token_timeout=1.5),
             async_stacks=("httpx2",)),
    # spread over four flap periods: on a fast stack 200 coroutines at once fit in one period, up or down
    Scenario("flapping", [("/flap/1", 1)], chaos_policy(), min_transitions=2, async_each=2, thread_each=40,
             pace=0.04, spread=0.6, async_stacks=("httpx2",)),
    Scenario("refused", [("/ok/1", 3), ("/refused", 1)], chaos_policy()),
]
CASES = [
    pytest.param(scenario, mode, stack, id=f"{scenario.name}-{mode}-{stack}")
    for scenario in SCENARIOS
    for mode in ("async", "threads")
    for stack in (scenario.async_stacks if mode == "async" else STACK_NAMES)
]
"""``(scenario, mode, stack name)``: ``stack`` is the conftest fixture, parametrized indirectly."""


async def drive(
    registry: ProviderRegistry,
    bases: Bases,
    scenario: Scenario,
    run: Run,
    *,
    mode: str,
    stacks: Sequence[ModuleType],
    shared: bool = False,
) -> int:
    """Send the mix through fresh async and/or sync clients, close them; returns how many were sent.

    The workers are shared out evenly between ``stacks``, each with an async and a sync client over
    a ``ResilientTransport`` of its own stack's pool, all on ``registry``; with ``shared``, every
    client is given one and the same ``ResilientTransport`` over each stack's default transports.
    """
    mix, pace, share = scenario.mix, scenario.pace, len(stacks)

    async def swarm(aclient: httpx.AsyncClient, seed: int) -> None:
        workers, each = ASYNC_WORKERS // share, scenario.async_each
        await coroutines(
            aclient, bases, mix, run, workers=workers, each=each, pace=pace, seed=seed, spread=scenario.spread
        )

    expected = 0
    async with contextlib.AsyncExitStack() as exits:
        aclients: list[httpx.AsyncClient] = []
        clients: list[httpx.Client] = []
        one = ResilientTransport(registry)  # every client's if shared; its inner transports come on first use
        for stack in stacks:
            if shared:
                atransport = transport = one
            else:
                atransport = ResilientTransport(registry, stack.AsyncHTTPTransport(limits=limits(stack)))
                transport = ResilientTransport(registry, stack.HTTPTransport(limits=limits(stack)))
            aclients.append(await exits.enter_async_context(stack.AsyncClient(transport=atransport)))
            clients.append(exits.enter_context(stack.Client(transport=transport)))
        with anyio.fail_after(120):
            started: list[threading.Thread] = []
            if mode in ("threads", "mixed"):
                each, workers = scenario.thread_each, THREAD_WORKERS // share
                for i, client in enumerate(clients):  # odd seeds, even ones for coroutines: no two draw alike
                    started += threads(
                        client, bases, mix, run, workers=workers, each=each, pace=pace, seed=2 * i + 1
                    )
                expected += workers * share * each
            if mode in ("async", "mixed"):
                async with anyio.create_task_group() as group:
                    for i, aclient in enumerate(aclients):
                        group.start_soon(swarm, aclient, 2 * i)
                expected += ASYNC_WORKERS // share * share * scenario.async_each
            await join(started)
    return expected


@pytest.mark.parametrize(("scenario", "mode", "stack"), CASES, indirect=["stack"])
async def test_fault_scenario(
    scenario: Scenario, mode: str, stack: ModuleType, upstream: Upstream, bases: Bases, tally: Tally
) -> None:
    """One fault mix under 200 coroutines or 12 threads of one stack: every invariant holds afterwards."""
    upstream.reset(flap_period=scenario.flap_period)
    before = Resources.now()
    registry = ProviderRegistry(scenario.policy)
    run = Run()
    started = time.monotonic()
    expected = await drive(registry, bases, scenario, run, mode=mode, stacks=[stack])
    seconds = time.monotonic() - started
    name = f"{scenario.name}[{mode},{stack.__name__}]"
    counts = await check_scenario(name, registry, upstream, run, expected, before, tally, seconds)
    assert counts["transitions"] >= scenario.min_transitions


async def operator(registry: ProviderRegistry, stop: anyio.Event) -> int:
    """An operator flipping the breaker by hand while traffic flows; returns the flips made."""
    flips = 0
    while not stop.is_set():
        await anyio.sleep(0.05)
        provider = registry.resolve(host=HOST)
        (provider.force_open, provider.reset, provider.disable, provider.reset)[flips % 4]()
        flips += 1
    return flips


async def test_storm_all_faults_both_stacks_async_and_threads_together(
    upstream: Upstream, bases: Bases, tally: Tally
) -> None:
    """Every fault at once, coroutines and threads of both stacks through ONE transport; an operator flips it.

    The shared ``ResilientTransport`` makes each stack's default transports on first use, from threads
    and coroutines at once (at most 100 coroutines per stack: the default pools never run out).
    """
    mix: Mix = [
        ("/ok/1", 4), ("/sse/2", 2), ("/status/500", 1), ("/status/503", 1), ("/throttle/0.02", 1),
        ("/hang", 1), ("/reset", 1), ("/reuse/3", 2), ("/stall", 1), ("/flap/1", 2), ("/refused", 1),
    ]
    storm = Scenario("storm", mix, chaos_policy(idle_timeout=STREAMING_IDLE), async_each=2, thread_each=12)
    before = Resources.now()
    registry = ProviderRegistry(storm.policy)
    run, stop, flips = Run(), anyio.Event(), [0]
    started = time.monotonic()

    async def flip() -> None:
        flips[0] = await operator(registry, stop)

    async with anyio.create_task_group() as group:
        group.start_soon(flip)
        expected = await drive(registry, bases, storm, run, mode="mixed", stacks=BOTH_STACKS, shared=True)
        stop.set()
    seconds = time.monotonic() - started
    counts = await check_scenario(
        "storm[mixed+operator,httpx2+httpx]", registry, upstream, run, expected, before, tally, seconds,
        allowed=AUTOMATIC | MANUAL,
    )
    assert flips[0] > 0 and counts["transitions"] >= flips[0]
