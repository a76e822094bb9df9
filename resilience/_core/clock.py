"""The one place that reads time.

Everything in the library takes a ``clock`` (a zero-argument callable that
returns monotonic seconds as a float) and, where it waits, a ``sleep``.
Tests pass :class:`resilience.testing.FakeClock` and never sleep.
"""

from __future__ import annotations

import math
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import TypeAlias

import anyio

Clock: TypeAlias = Callable[[], float]
"""Monotonic seconds, as :func:`time.monotonic` returns them."""

Sleep: TypeAlias = Callable[[float], None]
AsyncSleep: TypeAlias = Callable[[float], Awaitable[None]]

monotonic: Clock = time.monotonic
perf_counter: Clock = time.perf_counter
sleep: Sleep = time.sleep
async_sleep: AsyncSleep = anyio.sleep
"""anyio's, so async retries wait under asyncio and trio alike."""


def wall_now() -> datetime:
    """The current wall-clock time, timezone-aware in UTC."""
    return datetime.now(UTC)


def wall_time() -> float:
    """Seconds since the epoch (for HTTP dates such as ``Retry-After``)."""
    return time.time()


class Steady:
    """A clock that never goes back: ``clock()`` plus whatever it has stepped back by so far.

    A wall clock (``time.time``) steps back after an NTP correction or a VM
    restore; a window keyed by it would drop every record until it caught up,
    so the breaker could not trip. Read through this, a step back shows as no
    time passing, and time runs on from the latest reading. Threads may race
    on the two floats: a reading is then off by the race's tiny width, never
    back by a step.
    """

    __slots__ = ("clock", "latest", "offset")

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.latest = -math.inf
        self.offset = 0.0

    def __call__(self) -> float:
        now = self.clock() + self.offset
        latest = self.latest
        if now < latest:
            self.offset += latest - now
            return latest
        self.latest = now
        return now


def steady(clock: Clock) -> Clock:
    """``clock`` itself when it cannot go back (``time.monotonic``, ``time.perf_counter``, or one
    whose ``monotonic`` attribute is true, like :class:`resilience.testing.FakeClock`), else a
    :class:`Steady` over it."""
    if clock is time.monotonic or clock is time.perf_counter or getattr(clock, "monotonic", False) is True:
        return clock
    return Steady(clock)

