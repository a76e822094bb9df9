"""Deadlines: one absolute time bounding a whole call (attempts, waits, failovers, hedges).

A deadline comes from the request (``extensions={"deadline": s}``), the
provider's ``Policy(deadline_seconds=...)``, the route's
``RoutePolicy(deadline_seconds=...)`` or the inbound request (the
middleware's ``deadline_header``); the earliest wins. Times are on the
registry's clock.
"""

from __future__ import annotations

import math
import re
from typing import NamedTuple


class Deadline(NamedTuple):
    """When a call must be over."""

    at: float
    """Absolute time on the registry's clock."""
    seconds: float
    """The deadline's length as it was set (what :class:`resilience.DeadlineExceededError` reports)."""
    source: str
    """Where it came from: ``"request"``, ``"policy"``, ``"route"`` or ``"inbound"``."""

    def left(self, now: float) -> float:
        """Seconds left at ``now`` (negative once it has passed)."""
        return self.at - now


def earliest(*deadlines: Deadline | None) -> Deadline | None:
    """The deadline that passes first, ``None`` when none is set (a tie keeps the first given)."""
    best: Deadline | None = None
    for deadline in deadlines:
        if deadline is not None and (best is None or deadline.at < best.at):
            best = deadline
    return best


def valid_seconds(value: object) -> float | None:
    """``value`` as seconds when it is a finite real number > 0 (not a bool), else ``None``."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    seconds = float(value)
    return seconds if 0 < seconds < math.inf else None


_HEADER_SECONDS = re.compile(rb"[ \t]*([0-9]{1,15}(?:\.[0-9]{0,9})?|\.[0-9]{1,9})[ \t]*\Z")


def header_seconds(value: bytes) -> float | None:
    """The seconds of a deadline header value (``"2"``, ``"0.5"``), or ``None`` when malformed or not > 0."""
    match = _HEADER_SECONDS.match(value)
    if match is None:
        return None
    seconds = float(match.group(1))
    return seconds if seconds > 0 else None
