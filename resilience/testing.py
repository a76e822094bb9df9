"""Helpers for testing code that uses resilience: a clock you drive by hand.

::

    clock = FakeClock()
    registry = ProviderRegistry(clock=clock)
    ...
    clock.advance(30)   # the breaker's open time has passed
"""

from __future__ import annotations

import threading


class FakeClock:
    """A monotonic clock that moves only when told; callable like :func:`time.monotonic`.

    It is thread-safe and refuses to go backwards. ``sleep`` and ``async_sleep``
    advance it instead of waiting, so retry back-offs take no real time.
    """

    monotonic = True
    """It never goes back, so a registry reads it as it is (see ``ProviderRegistry(clock=...)``)."""

    def __init__(self, start: float = 0.0) -> None:
        self._now = float(start)
        self._lock = threading.Lock()
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self._now

    @property
    def now(self) -> float:
        """The current reading."""
        return self._now

    def advance(self, seconds: float) -> float:
        """Move forward by ``seconds`` (>= 0) and return the new reading.

        Raises:
            ValueError: ``seconds`` is negative or not a number.
        """
        if not seconds >= 0:
            raise ValueError(f"a FakeClock cannot go backwards, got advance({seconds!r})")
        with self._lock:
            self._now += seconds
            return self._now

    def set(self, now: float) -> None:
        """Jump to ``now``, which must not be earlier than the current reading."""
        with self._lock:
            if not now >= self._now:
                raise ValueError(f"a FakeClock cannot go backwards: {now!r} < {self._now!r}")
            self._now = float(now)

    def sleep(self, seconds: float) -> None:
        """Record the sleep and advance instead of waiting."""
        self.sleeps.append(seconds)
        self.advance(max(0.0, seconds))

    async def async_sleep(self, seconds: float) -> None:
        """As :meth:`sleep`, for asyncio code."""
        self.sleep(seconds)
