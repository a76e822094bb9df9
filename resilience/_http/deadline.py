"""A call's deadline over HTTP: where it is read from, how it caps an attempt, what it raises.

The call loop takes one :class:`~resilience._core.deadline.Deadline` per
call (:func:`call_deadline`), caps each attempt's timeouts by the time left
(:func:`cap_timeouts`) and raises :func:`exceeded` once it has passed.
"""

from __future__ import annotations

import math
from typing import Any

from resilience._core.context import RequestStats
from resilience._core.deadline import Deadline, valid_seconds
from resilience._core.errors import ConfigError
from resilience._http.errors import DeadlineExceededError
from resilience._http.stacks import Stack

TIMEOUT_KEYS = ("connect", "read", "write", "pool")

DEADLINE_SLACK = 0.005
"""A timeout this close to the call's deadline (seconds) fired because of it: the capped timeouts."""
"""The per-request timeouts a stack's transport reads from ``request.extensions["timeout"]``."""


def request_seconds(request: Any) -> float | None:
    """The request's ``extensions["deadline"]`` in seconds, ``None`` when absent.

    Raises:
        ConfigError: it is not a finite number of seconds > 0.
    """
    value = request.extensions.get("deadline")
    if value is None:
        return None
    seconds = valid_seconds(value)
    if seconds is None:
        raise ConfigError(f'extensions["deadline"] must be a finite number of seconds > 0, got {value!r}')
    return seconds


def call_deadline(
    request: Any,
    policy_seconds: float | None,
    route_seconds: float | None,
    now: float,
    stats: RequestStats | None,
) -> Deadline | None:
    """The earliest of the request's, the policy's, the route's and the inbound request's deadlines.

    Lengths are made absolute at ``now`` (the registry's clock); the inbound
    one (``stats.deadline``) is absolute already. ``None`` when none is set.

    Raises:
        ConfigError: a bad ``extensions["deadline"]``.
    """
    best = None if stats is None else stats.deadline
    seconds = request_seconds(request)
    if seconds is not None:
        best = _earlier(best, Deadline(now + seconds, seconds, "request"))
    if policy_seconds is not None:
        best = _earlier(best, Deadline(now + policy_seconds, policy_seconds, "policy"))
    if route_seconds is not None:
        best = _earlier(best, Deadline(now + route_seconds, route_seconds, "route"))
    return best


def _earlier(best: Deadline | None, deadline: Deadline) -> Deadline:
    return deadline if best is None or deadline.at < best.at else best


def cap_timeouts(request: Any, left: float) -> None:
    """Cap the request's connect, read, write and pool timeouts at ``left`` seconds.

    Each becomes the smaller of its value and ``left`` (a missing or ``None``
    one, unlimited, becomes ``left``). The request gets a timeout dict of its
    own: the one it had may be shared with other requests.
    """
    left = max(0.0, left)
    timeouts = request.extensions.get("timeout")
    capped: dict[str, Any] = dict(timeouts) if isinstance(timeouts, dict) else {}
    for key in TIMEOUT_KEYS:
        value = capped.get(key)
        capped[key] = left if value is None or not value <= left else value  # NaN: capped too
    request.extensions["timeout"] = capped


def exceeded(stack: Stack, deadline: Deadline, provider_name: str, request: Any) -> DeadlineExceededError:
    """The ``DeadlineExceededError`` of ``request``'s stack, for ``deadline`` on ``provider_name``."""
    seconds = deadline.seconds
    text = f"{seconds:g}s" if math.isfinite(seconds) else str(seconds)
    message = f"the deadline of {text} ({deadline.source}) passed before the call to {provider_name!r} ended"
    return stack.deadline_exceeded(message, request=request, deadline=seconds, provider=provider_name)
