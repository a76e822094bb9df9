"""A provider's rate-limit quota as its latest response announced it.

The HTTP layer parses the headers (:mod:`resilience._http.ratelimit`) into
:class:`Limits`: numbers, and resets in seconds from the response's arrival.
The provider keeps the latest with its arrival time on the registry's clock;
:func:`view` turns them into what ``Provider.ratelimit`` and the dashboard
show, with the time left to each reset.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple


class Limits(NamedTuple):
    """One response's rate-limit numbers (``None``: not said); resets in seconds from its arrival."""

    requests_limit: int | None = None
    requests_remaining: int | None = None
    requests_reset: float | None = None
    tokens_limit: int | None = None
    tokens_remaining: int | None = None
    tokens_reset: float | None = None
    retry_after: float | None = None
    """``retry-after-ms``, in seconds."""


def view(limits: Limits, elapsed: float) -> dict[str, Any]:
    """``Provider.ratelimit``: the numbers, ``reset_seconds`` left and whether the quota is exhausted.

    ``reset_seconds`` is the time left to the soonest reset announced, or to
    the reset of an exhausted kind when one is exhausted (the later, when
    both are). A kind is exhausted while it had 0 remaining and its reset is
    still ahead.
    """
    left = {
        kind: None if reset is None else max(0.0, reset - elapsed)
        for kind, reset in (("requests", limits.requests_reset), ("tokens", limits.tokens_reset))
    }
    remaining = {"requests": limits.requests_remaining, "tokens": limits.tokens_remaining}
    exhausted = [
        seconds for kind, seconds in left.items()
        if remaining[kind] == 0 and seconds is not None and seconds > 0
    ]
    ahead = [seconds for seconds in left.values() if seconds is not None]
    reset = max(exhausted) if exhausted else (min(ahead) if ahead else None)
    return {
        "requests_remaining": limits.requests_remaining,
        "requests_limit": limits.requests_limit,
        "tokens_remaining": limits.tokens_remaining,
        "tokens_limit": limits.tokens_limit,
        "reset_seconds": reset,
        "exhausted": bool(exhausted),
    }


class RequestCount:
    """The requests an announced quota still allows, counted locally between responses.

    What ``hold_when_exhausted`` holds calls by. Each admitted call takes one
    (:meth:`take`); each response's announcement can only lower what is left
    (other calls may be in flight that the provider has counted and we have
    not heard of). When the reset passes, a fresh window starts with the
    announced limit, and its end is learnt from the next responses that
    belong to it: a late answer of the old window (its reset only moments
    away) is not taken for the new one. The owner serialises access.
    """

    __slots__ = ("left", "limit", "reset_at", "started", "window")

    def __init__(self) -> None:
        self.left: int | None = None
        """Requests left before the reset; ``None``: not counting (nothing announced)."""
        self.limit: int | None = None
        self.reset_at = -math.inf
        """When the window resets (clock); ``inf`` while a new window's end is not known yet."""
        self.started = -math.inf
        self.window = 0.0
        """The longest reset announced: about the window's length."""

    def announced(self, limits: Limits, now: float) -> None:
        """A response arriving at ``now`` announced ``limits``."""
        if limits.requests_limit is not None:
            self.limit = limits.requests_limit
        remaining, reset = limits.requests_remaining, limits.requests_reset
        if remaining is None or reset is None or not reset > 0:
            return
        self.window = max(self.window, reset)
        at = now + reset
        if self.left is None:  # the first announcement
            self.left, self.reset_at = remaining, at
        elif self.reset_at == math.inf:  # a new window: only an answer that belongs to it
            if at >= self.started + self.window / 2:
                self.left, self.reset_at = min(self.left, remaining), at
        else:
            self.left = min(self.left, remaining)
            self.reset_at = min(self.reset_at, at)  # arrivals only ever overestimate the reset

    def take(self, now: float) -> float | None:
        """Take one request for a call now: ``None`` when admitted, else seconds to wait (held)."""
        if now >= self.reset_at:  # the window reset: a fresh one, its end still unknown
            self.left = self.limit
            self.reset_at, self.started = math.inf, now
        left = self.left
        if left is None:
            return None
        if left <= 0:
            if self.reset_at == math.inf:
                return max(0.05, self.window - (now - self.started))
            return self.reset_at - now
        self.left = left - 1
        return None
