"""Chaos through ``ResilientTransport``: 200 coroutines and 12 threads against a faulty real upstream.

Each scenario builds a fresh registry and clients, drives a weighted mix of
faults, closes the clients and asserts every invariant of
:mod:`chaos._invariants`.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass

import anyio
import httpx
import pytest
from chaos._drive import (
    HOST,
    LIMITS,
    STREAMING_IDLE,
    Bases,
    Mix,
    Run,
    chaos_policy,
    coroutines,
    join,
    threads,
)
from chaos._invariants import AUTOMATIC, MANUAL, Resources, Tally, check_scenario
from chaos._upstream import Upstream

from resilience import Policy, ProviderRegistry, ResilientTransport

pytestmark = [pytest.mark.chaos, pytest.mark.integration, pytest.mark.anyio]

ASYNC_WORKERS = 200
THREAD_WORKERS = 12


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


SCENARIOS = [
    Scenario("healthy", [("/ok/1", 3), ("/sse/2", 1)], chaos_policy()),
    Scenario("server_errors", [("/ok/1", 2), ("/status/500", 1), ("/status/502", 1), ("/status/503", 1)],
             chaos_policy()),
    Scenario("throttled_retry_after", [("/ok/1", 2), ("/throttle/0.02", 2), ("/throttle/120", 1)],
             chaos_policy()),
    Scenario("hang_past_timeout", [("/ok/1", 3), ("/hang", 1)], chaos_policy()),
    Scenario("connection_reset", [("/reuse/1", 3), ("/reset", 1), ("/ok/2", 1)], chaos_policy()),
    Scenario("stall_mid_stream", [("/ok/1", 3), ("/stall", 1)], chaos_policy(idle_timeout=0.25)),
    Scenario("flapping", [("/flap/1", 1)], chaos_policy(), min_transitions=2, async_each=2, thread_each=40,
             pace=0.04),
    Scenario("refused", [("/ok/1", 3), ("/refused", 1)], chaos_policy()),
]


async def drive(registry: ProviderRegistry, bases: Bases, scenario: Scenario, run: Run, *, mode: str) -> int:
    """Send the mix through fresh async and/or sync clients, close them; returns how many were sent."""
    mix, pace = scenario.mix, scenario.pace
    expected = 0
    async with contextlib.AsyncExitStack() as stack:
        aclient = await stack.enter_async_context(
            httpx.AsyncClient(transport=ResilientTransport(registry, httpx.AsyncHTTPTransport(limits=LIMITS)))
        )
        client = stack.enter_context(
            httpx.Client(transport=ResilientTransport(registry, httpx.HTTPTransport(limits=LIMITS)))
        )
        with anyio.fail_after(120):
            started = []
            if mode in ("threads", "mixed"):
                each = scenario.thread_each
                started = threads(client, bases, mix, run, workers=THREAD_WORKERS, each=each, pace=pace)
                expected += THREAD_WORKERS * each
            if mode in ("async", "mixed"):
                each = scenario.async_each
                await coroutines(aclient, bases, mix, run, workers=ASYNC_WORKERS, each=each, pace=pace)
                expected += ASYNC_WORKERS * each
            await join(started)
    return expected


@pytest.mark.parametrize("mode", ["async", "threads"])
@pytest.mark.parametrize("scenario", [pytest.param(s, id=s.name) for s in SCENARIOS])
async def test_fault_scenario(
    scenario: Scenario, mode: str, upstream: Upstream, bases: Bases, tally: Tally
) -> None:
    """One fault mix under 200 coroutines or 12 threads: every invariant holds afterwards."""
    upstream.reset(flap_period=scenario.flap_period)
    before = Resources.now()
    registry = ProviderRegistry(scenario.policy)
    run = Run()
    started = time.monotonic()
    expected = await drive(registry, bases, scenario, run, mode=mode)
    seconds = time.monotonic() - started
    name = f"{scenario.name}[{mode}]"
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


async def test_storm_all_faults_async_and_threads_together(
    upstream: Upstream, bases: Bases, tally: Tally
) -> None:
    """Every fault at once, coroutines and threads sharing one registry, an operator flipping the breaker."""
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
        expected = await drive(registry, bases, storm, run, mode="mixed")
        stop.set()
    seconds = time.monotonic() - started
    counts = await check_scenario(
        "storm[mixed+operator]", registry, upstream, run, expected, before, tally, seconds,
        allowed=AUTOMATIC | MANUAL,
    )
    assert flips[0] > 0 and counts["transitions"] >= flips[0]
