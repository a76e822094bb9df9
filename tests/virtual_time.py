"""Async tests on trio's virtual clock: ``@VIRTUAL_TIME`` on an ``anyio`` test."""

from __future__ import annotations

from collections.abc import Callable, Coroutine

import anyio
import httpx
import pytest
from trio.testing import MockClock

VIRTUAL_TIME = pytest.mark.parametrize(
    "anyio_backend",
    [pytest.param(("trio", {"clock": MockClock(autojump_threshold=0)}), id="trio-virtual-time")],
)
"""Run an async test on trio with a clock that jumps to the next timer whenever every task waits:
timeouts fire at once, at the virtual time they are due, and the test never sleeps."""


Answer = Callable[[httpx.Request], httpx.Response]
"""A ``MockTransport`` handler that answers at once."""
Handler = Callable[[httpx.Request], Coroutine[None, None, httpx.Response]]
"""An async ``MockTransport`` handler."""


def slow_then(seconds: float, answer: Answer) -> Handler:
    """An async handler that waits ``seconds`` (virtual, under ``@VIRTUAL_TIME``), then gives ``answer``."""

    async def handler(request: httpx.Request) -> httpx.Response:
        await anyio.sleep(seconds)
        return answer(request)

    return handler
