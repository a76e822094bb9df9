"""The one place that reads time.

Everything in the library takes a ``clock`` (a zero-argument callable that
returns monotonic seconds as a float) and, where it waits, a ``sleep``.
Tests pass :class:`resilience.testing.FakeClock` and never sleep.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import TypeAlias

Clock: TypeAlias = Callable[[], float]
"""Monotonic seconds, as :func:`time.monotonic` returns them."""

Sleep: TypeAlias = Callable[[float], None]
AsyncSleep: TypeAlias = Callable[[float], Awaitable[None]]

monotonic: Clock = time.monotonic
perf_counter: Clock = time.perf_counter
sleep: Sleep = time.sleep
async_sleep: AsyncSleep = asyncio.sleep


def wall_now() -> datetime:
    """The current wall-clock time, timezone-aware in UTC."""
    return datetime.now(UTC)


def wall_time() -> float:
    """Seconds since the epoch (for HTTP dates such as ``Retry-After``)."""
    return time.time()
