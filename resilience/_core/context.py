"""Per-inbound-request totals, carried in a context variable.

The middleware opens a :class:`RequestStats` for each inbound request; the
transport and ``guard()`` add every attempt (and its cost) made while
handling it, so the app can read what one of its requests cost upstream::

    stats = resilience.current_request()
    if stats is not None:
        print(stats.attempts, stats.cost_usd)

Tasks spawned while handling the request share the same object (asyncio
copies the context, not the object); additions take a lock so threads add
exactly.
"""

from __future__ import annotations

import threading
from contextvars import ContextVar, Token
from dataclasses import dataclass, field

from resilience._core.deadline import Deadline


@dataclass(slots=True)
class RequestStats:
    """What one inbound request has spent upstream so far."""

    attempts: int = 0
    retries: int = 0
    rejected: int = 0
    cost_usd: float = 0.0
    providers: set[str] = field(default_factory=set)
    deadline: Deadline | None = None
    """The inbound request's deadline (the middleware's ``deadline_header``): bounds every provider call."""
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)
    _holding: object = field(default=None, repr=False, compare=False)
    """The provider whose permit the whole inbound request holds (``provider_for``), if any."""

    def add_attempt(self, provider: str, *, cost: float | None = None, retry: bool = False) -> None:
        """Count one attempt that reached ``provider``."""
        with self._lock:
            self.attempts += 1
            if retry:
                self.retries += 1
            if cost is not None:
                self.cost_usd += cost
            self.providers.add(provider)

    def add_rejection(self, provider: str) -> None:
        """Count one attempt the breaker of ``provider`` rejected."""
        with self._lock:
            self.rejected += 1
            self.providers.add(provider)


_current: ContextVar[RequestStats | None] = ContextVar("resilience_request", default=None)

opened = False
"""Whether any :class:`RequestStats` was ever opened: until then the transport skips the lookup."""


def current_request() -> RequestStats | None:
    """The totals of the inbound request being handled, or ``None`` outside one."""
    return _current.get()


def begin_request() -> tuple[RequestStats, Token[RequestStats | None]]:
    """Open a fresh :class:`RequestStats` in this context (the middleware does this)."""
    global opened
    opened = True
    stats = RequestStats()
    return stats, _current.set(stats)


def end_request(token: Token[RequestStats | None]) -> None:
    """Close what :func:`begin_request` opened."""
    _current.reset(token)


def holds(provider: object) -> bool:
    """Whether the inbound request being handled holds a permit of ``provider`` (its route's guard).

    Its inner calls to that provider then ride on that permit: a half-open
    breaker's one trial slot is the route's, and the calls made inside it
    must not be refused for it.
    """
    if not opened:
        return False
    stats = _current.get()
    return stats is not None and stats._holding is provider

