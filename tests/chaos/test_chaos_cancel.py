"""Chaos: callers cancelled mid-stream, the ways a gateway cancels them.

A client that disconnects (Starlette cancels the handler), ``asyncio.wait_for``,
``asyncio.timeout`` and an anyio cancel scope all cut a streamed read after
its headers. Every cancelled attempt must still be recorded (calls, cost,
latency), no half-open trial slot may stay taken, and nothing may leak. On
each HTTP stack (``stack``).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from types import ModuleType

import anyio
import httpx
import pytest
from chaos._drive import HOST, Bases, Run, chaos_policy, draw, limits
from chaos._invariants import Resources, Tally, check_scenario
from chaos._upstream import Upstream

from resilience import CircuitOpenError, ProviderRegistry, ResilientTransport

pytestmark = [pytest.mark.chaos, pytest.mark.integration, pytest.mark.anyio, pytest.mark.usefixtures("stack")]

WORKERS = 200
CUT_AFTER = 0.05
"""Seconds a cancelled reader reads before it is cut: the stall never sends a second chunk."""

Cut = Callable[[Awaitable[None]], Awaitable[None]]


async def by_wait_for(read: Awaitable[None]) -> None:
    await asyncio.wait_for(read, CUT_AFTER)


async def by_timeout(read: Awaitable[None]) -> None:
    async with asyncio.timeout(CUT_AFTER):
        await read


async def by_cancel_scope(read: Awaitable[None]) -> None:
    with anyio.fail_after(CUT_AFTER):
        await read


async def by_task_cancel(read: Awaitable[None]) -> None:
    """A handler task cancelled from outside, as Starlette does when the client disconnects."""
    task = asyncio.ensure_future(read)
    await asyncio.sleep(CUT_AFTER)
    task.cancel()
    await task


CUTS: list[Cut] = [by_wait_for, by_timeout, by_cancel_scope, by_task_cancel]


async def reader(client: httpx.AsyncClient, bases: Bases, path: str, run: Run, n: int) -> None:
    """Stream ``path``: a stall is cut by one of :data:`CUTS` after its first event, the rest read whole."""
    url, extensions = bases.url(path)

    async def drain(chunks: AsyncIterator[bytes]) -> None:
        async for _ in chunks:
            pass

    try:
        async with client.stream("POST", url, json={"model": f"m{n % 3}"}, extensions=extensions) as response:
            chunks = response.aiter_bytes()
            if path.startswith("/stall"):
                await chunks.__anext__()  # headers and the first event: the attempt is under way
                await CUTS[n % len(CUTS)](drain(chunks))
            else:
                await drain(chunks)
    except (TimeoutError, asyncio.CancelledError):
        run.add("cancelled")
    except (httpx.HTTPError, CircuitOpenError) as exc:
        run.add(type(exc).__name__, circuit=isinstance(exc, CircuitOpenError))
    else:
        run.add(f"status_{response.status_code}")


async def test_streams_cancelled_mid_body_are_all_recorded(
    stack: ModuleType, upstream: Upstream, bases: Bases, tally: Tally
) -> None:
    """200 coroutines, a third cut mid-stream four ways: every attempt recorded, no slot or socket kept."""
    upstream.reset()
    before = Resources.now()
    registry = ProviderRegistry(chaos_policy())
    run, rng = Run(), random.Random(12)
    mix = [("/ok/1", 1), ("/sse/2", 1), ("/stall", 1)]
    started = time.monotonic()
    transport = ResilientTransport(registry, httpx.AsyncHTTPTransport(limits=limits(httpx)))
    async with httpx.AsyncClient(transport=transport, timeout=15.0) as client:
        with anyio.fail_after(60):
            async with anyio.create_task_group() as group:
                for n in range(WORKERS):
                    group.start_soon(reader, client, bases, draw(mix, rng), run, n)
    seconds = time.monotonic() - started
    assert run.outcomes["cancelled"] == upstream.received["stall"] > 0  # each cut after its first event
    name = f"cancelled_mid_stream[async,{stack.__name__}]"
    await check_scenario(name, registry, upstream, run, WORKERS, before, tally, seconds)
    provider = registry.get(HOST)
    assert provider.snapshot().requests_total["success"] == upstream.total  # the cancelled ones too
    if provider.state == "half_open":  # a trial slot is never kept by a cancelled stream
        provider.release(provider.admit())
