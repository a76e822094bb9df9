"""A provider's rate-limit quota as its latest response announced it.

The HTTP layer parses the headers (:mod:`resilience._http.ratelimit`) into
:class:`Limits`: numbers, and resets in seconds from the response's arrival.
The provider keeps the latest with its arrival time on the registry's clock;
:func:`view` turns them into what ``Provider.ratelimit`` and the dashboard
show, with the time left to each reset.
"""

from __future__ import annotations

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
