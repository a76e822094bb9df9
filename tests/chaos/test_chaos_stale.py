"""A provider that reads then drops: a request it read is a failure, never resent off the books.

``/drop/<n>`` on the raw server answers the first request of a connection,
then reads each later one in full, works on it and closes the connection
without a response: a crash, a deploy or a proxy timeout at the provider.
The request went out on a pooled keep-alive connection and failed before any
response byte, as a stale connection does; but it was written whole, so the
provider may have billed it and it must not be resent behind the retry
policy's back. On each HTTP stack (``stack``): httpx2 pools through
httpcore2, httpx through httpcore.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from types import ModuleType

import anyio
import httpx
import pytest
from chaos._drive import HOST, Bases, Run, chaos_policy, coroutines, join, limits, threads
from chaos._invariants import Resources, Tally, check_scenario
from chaos._upstream import Upstream

from resilience import Policy, ProviderRegistry, ResilientTransport, RetryPolicy

pytestmark = [pytest.mark.chaos, pytest.mark.integration, pytest.mark.anyio, pytest.mark.usefixtures("stack")]

NO_RETRY = Policy(retry=RetryPolicy(attempts=1))


def dropped() -> tuple[type[Exception], ...]:
    """How a dropped connection reaches a caller (in the stack under test): EOF before a response, or RST."""
    return (httpx.RemoteProtocolError, httpx.ReadError)

ASYNC_WORKERS = 100
THREAD_WORKERS = 12
EACH = 3


def outcomes(registry: ProviderRegistry) -> dict[str, int]:
    """The provider's recorded requests by outcome, without zeros."""
    return {k: v for k, v in registry.get(HOST).snapshot().requests_total.items() if v}


def test_a_request_the_provider_read_then_dropped_is_not_resent_sync(
    upstream: Upstream, bases: Bases
) -> None:
    """Read, worked on, dropped on a pooled connection, ``attempts=1``: sent once, raised, one failure."""
    registry = ProviderRegistry(NO_RETRY)
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    with httpx.Client(transport=ResilientTransport(registry, httpx.HTTPTransport())) as client:
        assert client.post(bases.raw + "/drop/1", json=body).status_code == 200
        with pytest.raises(dropped()):
            client.post(bases.raw + "/drop/1", json=body)
    assert upstream.received == {"drop": 2}
    assert outcomes(registry) == {"success": 1, "failure": 1}
    assert registry.get(HOST).snapshot().retries_total == {}


async def test_a_request_the_provider_read_then_dropped_is_not_resent_async(
    upstream: Upstream, bases: Bases
) -> None:
    """The same through the async pool."""
    registry = ProviderRegistry(NO_RETRY)
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    transport = ResilientTransport(registry, httpx.AsyncHTTPTransport())
    async with httpx.AsyncClient(transport=transport) as client:
        assert (await client.post(bases.raw + "/drop/1", json=body)).status_code == 200
        with pytest.raises(dropped()):
            await client.post(bases.raw + "/drop/1", json=body)
    assert upstream.received == {"drop": 2}
    assert outcomes(registry) == {"success": 1, "failure": 1}
    assert registry.get(HOST).snapshot().retries_total == {}


async def drive(registry: ProviderRegistry, bases: Bases, run: Run, *, mode: str) -> int:
    """Send ``/drop/1`` from fresh async or sync clients, close them; returns how many were sent."""
    raw = dataclasses.replace(bases, http=bases.raw)  # every path of this scenario is the raw server's
    async with contextlib.AsyncExitStack() as exits:
        transport = ResilientTransport(registry, httpx.AsyncHTTPTransport(limits=limits(httpx)))
        aclient = await exits.enter_async_context(httpx.AsyncClient(transport=transport))
        transport = ResilientTransport(registry, httpx.HTTPTransport(limits=limits(httpx)))
        client = exits.enter_context(httpx.Client(transport=transport))
        with anyio.fail_after(120):
            if mode == "threads":
                await join(threads(client, raw, [("/drop/1", 1)], run, workers=THREAD_WORKERS, each=EACH))
                return THREAD_WORKERS * EACH
            await coroutines(aclient, raw, [("/drop/1", 1)], run, workers=ASYNC_WORKERS, each=EACH)
            return ASYNC_WORKERS * EACH


@pytest.mark.parametrize("mode", ["async", "threads"])
@pytest.mark.parametrize(
    ("policy", "attempts"),
    [pytest.param(NO_RETRY, 1, id="attempts=1"), pytest.param(chaos_policy(), 3, id="attempts=3")],
)
async def test_read_then_drop_scenario(
    policy: Policy, attempts: int, mode: str, stack: ModuleType, upstream: Upstream, bases: Bases,
    tally: Tally,
) -> None:
    """Keep-alive requests the provider reads then drops: each drop a recorded failure, none resent."""
    before = Resources.now()
    registry = ProviderRegistry(policy)
    run = Run()
    started = time.monotonic()
    expected = await drive(registry, bases, run, mode=mode)
    seconds = time.monotonic() - started
    name = f"read_then_drop[{mode},attempts={attempts},{stack.__name__}]"
    counts = await check_scenario(name, registry, upstream, run, expected, before, tally, seconds)
    snap = registry.get(HOST).snapshot()
    assert counts["stale_resends"] == 0
    assert snap.requests_total["success"] == upstream.cost_units  # each answer carries one unit
    assert snap.requests_total["failure"] == upstream.received["drop"] - upstream.cost_units  # each drop
    assert upstream.received["drop"] > upstream.cost_units  # keep-alive reuse happened: drops were served
    if attempts == 1:
        assert upstream.received["drop"] == expected - run.circuit_open
    tally.checked("dropped_requests_recorded_not_resent")
