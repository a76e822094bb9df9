"""The circuit breaker: a state machine over a decision window.

States: ``closed`` → (trip) → ``open`` → (``open_seconds`` pass) →
``half_open`` → (``success_threshold`` trial successes) → ``closed``, or
(a trial fails) → ``open`` again for longer. ``forced_open`` and
``disabled`` are manual. Every transition starts the decision window afresh.

Permits follow Resilience4j: :meth:`Breaker.try_acquire` returns a permit or
``None``; results come back through :meth:`Breaker.on_result_locked` with
the permit. A permit encodes the breaker generation it was issued in, so a
result from before a transition never counts in the window after it.

The breaker shares its owner's lock (methods ending in ``_locked`` expect it
held) and never holds it across the guarded call. Listeners hear state
changes through :meth:`Breaker.notify`, called after the lock is released;
so do :attr:`Breaker.transition_hooks`, plain callables the library's own
integrations use (:mod:`resilience._export.shared_state` publishes transitions to
other replicas through one, and brings theirs in with
:meth:`Breaker.apply_remote_locked`).
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable
from enum import StrEnum
from typing import Any, Final, TypeAlias

from resilience._core.clock import Clock
from resilience._core.config import BreakerPolicy
from resilience._core.window import (
    CLIENT_ERROR,
    FAILURE,
    SLOW,
    SUCCESS,
    THROTTLED,
    CountWindow,
    TimeWindow,
)

log = logging.getLogger("resilience")



class BreakerState(StrEnum):
    """A breaker's state: still a plain string to JSON, Prometheus labels and ``== "open"``."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"
    FORCED_OPEN = "forced_open"
    """Manual: rejects everything until ``reset()``."""
    DISABLED = "disabled"
    """Manual: admits everything and never trips, still records."""

    __hash__ = str.__hash__  # Enum's is Python-level; a state keys dicts (snapshots, gauges) often


CLOSED: Final = BreakerState.CLOSED
OPEN: Final = BreakerState.OPEN
HALF_OPEN: Final = BreakerState.HALF_OPEN
FORCED_OPEN: Final = BreakerState.FORCED_OPEN
DISABLED: Final = BreakerState.DISABLED
STATES: Final = tuple(BreakerState)
"""Every state, in the order the gauges list them."""

HALF_OPEN_RETRY_AFTER = 1.0
"""``retry_after`` of a call rejected because the half-open trial slots are taken."""


TransitionHook: TypeAlias = Callable[["Breaker", str, str], None]
"""``hook(breaker, old_state, new_state)``, called by :meth:`Breaker.notify` without the lock."""


class StateView:
    """A state as ``pybreaker`` listeners expect it: an object with ``.name``."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __str__(self) -> str:
        return self.name

    def __repr__(self) -> str:
        return f"<state {self.name}>"

    def __eq__(self, other: object) -> bool:
        if isinstance(other, StateView):
            return other.name == self.name
        return other == self.name

    def __hash__(self) -> int:
        return hash(self.name)


class Breaker:
    """One provider's breaker. Create it through :class:`resilience.ProviderRegistry`."""

    def __init__(
        self,
        name: str,
        policy: BreakerPolicy,
        *,
        clock: Clock,
        lock: threading.Lock | None = None,
        throttled_is_failure: bool = True,
    ) -> None:
        self.name = name
        self.policy = policy
        self._clock = clock
        self._lock = lock or threading.Lock()
        self._throttled_is_failure = throttled_is_failure
        self._window: TimeWindow | CountWindow = (
            CountWindow(policy.window_calls)
            if policy.window_calls is not None
            else TimeWindow(float(policy.window_seconds), latency=False)  # type: ignore[arg-type]
        )
        self._open_s = float(policy.open_seconds)  # type: ignore[arg-type]  # normalised to float
        self._max_open_s = float(policy.max_open_seconds)  # type: ignore[arg-type]
        self._max_retry_after_s = float(policy.max_retry_after_seconds)  # type: ignore[arg-type]
        self._state: BreakerState = CLOSED
        self._generation = 0
        self.permit = 0  # the permit of the current generation outside half-open
        self.closed_permit = 0
        """:attr:`permit` while closed, else ``-1``: one comparison tells a fast path both."""
        self._open_until = 0.0
        self._trips = 0
        self._consecutive = 0
        self._trial_in_flight = 0
        self._trial_successes = 0
        self._outbox: deque[tuple[str, str]] = deque()
        self.transitions: dict[tuple[str, str], int] = {}
        self.history: deque[tuple[float, str]] = deque([(clock(), CLOSED)], maxlen=128)
        self.listener_errors = 0
        self.transition_hooks: list[TransitionHook] = []
        self.trial_limit: int | None = None
        """Half-open trial slots in place of ``policy.half_open_max_calls`` (``None``: the policy's)."""

    # -- reading -------------------------------------------------------------

    @property
    def state(self) -> BreakerState:
        """The state (a ``str``); an ``open`` breaker whose time is up reads ``half_open``."""
        if self._state is OPEN and self._clock() >= self._open_until:
            with self._lock:
                self._expire_locked(self._clock())
            self.notify()
        return self._state

    current_state = state  # pybreaker's spelling

    @property
    def generation(self) -> int:
        """How many transitions the breaker has made (same-state resets included)."""
        return self._generation

    @property
    def window(self) -> TimeWindow | CountWindow:
        """The decision window (cleared on every transition)."""
        return self._window

    def retry_after_locked(self, now: float) -> float:
        """Seconds until this breaker admits a call again."""
        if self._state is OPEN:
            return max(0.0, self._open_until - now)
        if self._state is HALF_OPEN:
            return HALF_OPEN_RETRY_AFTER
        if self._state is FORCED_OPEN:
            return self._open_s
        return 0.0

    # -- permits -------------------------------------------------------------

    def try_acquire(self) -> int | None:
        """A permit, or ``None`` when the breaker rejects the call."""
        state = self._state
        if state is CLOSED or state is DISABLED:
            return self.permit
        with self._lock:
            permit = self.try_acquire_locked(self._clock())
        self.notify()
        return permit

    def try_acquire_locked(self, now: float) -> int | None:
        """:meth:`try_acquire` with the lock held (no fast path)."""
        self._expire_locked(now)
        state = self._state
        if state is CLOSED or state is DISABLED:
            return self.permit
        limit = self.policy.half_open_max_calls if self.trial_limit is None else self.trial_limit
        if state is HALF_OPEN and self._trial_in_flight < limit:
            self._trial_in_flight += 1
            return self.permit | 1
        return None

    def trial_free_locked(self) -> bool:
        """Whether a half-open trial slot is free now (read-only: no slot is taken)."""
        limit = self.policy.half_open_max_calls if self.trial_limit is None else self.trial_limit
        return self._trial_in_flight < limit

    def release_locked(self, permit: int) -> None:
        """Give back a permit whose call produced no result (cancelled)."""
        if permit & 1 and permit == (self.permit | 1) and self._state is HALF_OPEN:
            self._trial_in_flight -= 1

    # -- results -------------------------------------------------------------

    def _is_failure(self, outcome: int) -> bool:
        return outcome == FAILURE or (outcome == THROTTLED and self._throttled_is_failure)

    def on_result_locked(
        self, permit: int, outcome: int, slow: bool, now: float, retry_after: float | None = None
    ) -> None:
        """Count one attempt's result and move the state machine."""
        failed = self._is_failure(outcome)
        if retry_after and self.policy.open_on_retry_after:  # a Retry-After of 0 asks for no wait
            self.open_for_locked(retry_after, now)
        if (permit | 1) != (self.permit | 1):
            return  # issued before the last transition
        state = self._state
        if state is CLOSED:
            # throttling that does not count as failure, and client errors, are successes
            self._window.record(now, FAILURE if failed else SUCCESS, slow=slow)
            if not failed:
                self._consecutive = 0
                if slow:
                    self._evaluate_locked(now, retry_after)
                return
            self._consecutive += 1
            self._evaluate_locked(now, retry_after)
        elif state is HALF_OPEN and permit & 1:
            self._trial_in_flight -= 1
            if failed:
                self._trip_locked(now, retry_after)
            else:
                self._trial_successes += 1
                if self._trial_successes >= self.policy.success_threshold:
                    self._trips = 0
                    self._transition_locked(CLOSED, now)

    def add_successes_locked(self, now: float, n: int) -> None:
        """Fold a batch of ``n`` fast successes into the decision window (closed only).

        The fast path leaves :attr:`_consecutive` alone: every failure is judged
        after the pending successes are folded, so resetting it here is exact.
        """
        if self._state is CLOSED:
            self._window.record_successes(now, n, {})
            self._consecutive = 0

    def _evaluate_locked(self, now: float, retry_after: float | None) -> None:
        policy = self.policy
        if policy.consecutive_failures is not None and self._consecutive >= policy.consecutive_failures:
            self._trip_locked(now, retry_after)
            return
        counts = self._window.counts(now)
        calls = counts[SUCCESS] + counts[FAILURE] + counts[THROTTLED] + counts[CLIENT_ERROR]
        if calls < policy.minimum_calls:
            return
        if (
            counts[FAILURE] >= policy.failure_rate_threshold * calls
            or counts[SLOW] >= policy.slow_call_rate_threshold * calls
        ):
            self._trip_locked(now, retry_after)

    # -- transitions ---------------------------------------------------------

    def _trip_locked(self, now: float, retry_after: float | None = None) -> None:
        seconds = self._open_seconds()
        if seconds < self._max_open_s:
            self._trips += 1  # past the cap the open time stops growing: so does the count
        if retry_after and self.policy.open_on_retry_after:
            seconds = max(seconds, min(retry_after, self._max_retry_after_s))
        self._transition_locked(OPEN, now)
        self._open_until = now + seconds

    def _open_seconds(self) -> float:
        """``open_seconds × backoff_multiplier ** trips``, capped at ``max_open_seconds`` for any count."""
        try:
            return min(self._open_s * self.policy.backoff_multiplier**self._trips, self._max_open_s)
        except OverflowError:  # a float power past 1e308 raises instead of giving inf
            return self._max_open_s

    def open_for_locked(self, seconds: float, now: float) -> None:
        """Open (or stay open) for at least ``seconds``, as a ``Retry-After`` asks."""
        if not seconds > 0 or self._state is FORCED_OPEN or self._state is DISABLED:
            return  # a Retry-After of 0 (or a date past) asks for no wait: nothing to open for
        until = now + min(seconds, self._max_retry_after_s)
        if self._state is not OPEN:
            self._transition_locked(OPEN, now)
            self._open_until = until
        else:
            self._open_until = max(self._open_until, until)

    def _expire_locked(self, now: float) -> None:
        if self._state is OPEN and now >= self._open_until:
            self._transition_locked(HALF_OPEN, now)

    def _transition_locked(self, to: BreakerState, now: float) -> None:
        old = self._state
        self._generation += 1
        self.permit = self._generation << 1
        self._state = to
        self.closed_permit = self.permit if to == CLOSED else -1
        self._window.reset()
        self._consecutive = 0
        self._trial_in_flight = 0
        self._trial_successes = 0
        if old != to:
            key = (old, to)
            self.transitions[key] = self.transitions.get(key, 0) + 1
            self.history.append((now, to))
            self._outbox.append(key)

    def force_open_locked(self, now: float) -> None:
        """Reject everything until :meth:`reset_locked`."""
        self._transition_locked(FORCED_OPEN, now)

    def disable_locked(self, now: float) -> None:
        """Admit everything and never trip (results are still recorded)."""
        self._transition_locked(DISABLED, now)

    def reset_locked(self, now: float) -> None:
        """Back to ``closed`` with a fresh decision window and open time."""
        self._trips = 0
        self._transition_locked(CLOSED, now)

    def apply_remote_locked(self, state: str, open_until: float, now: float) -> None:
        """Take a state another replica published, as a transition of this breaker.

        ``open_until`` (on this breaker's clock) matters for ``open`` only; an
        ``open`` breaker taking ``open`` again just takes the new time. A remote
        ``open`` counts as a trip for the open-time back-off, a remote ``closed``
        resets it. Listeners and hooks hear the transition like any other.

        Raises:
            ValueError: ``state`` is not one of :data:`STATES`.
        """
        try:
            member = BreakerState(state)  # the member: states are compared with `is`
        except ValueError:
            raise ValueError(f"state must be one of {[str(s) for s in STATES]}, got {state!r}") from None
        if member is OPEN:
            if self._state is not OPEN:
                self._trips += 1
                self._transition_locked(OPEN, now)
            self._open_until = open_until
            return
        if member is CLOSED:
            self._trips = 0
        if member is not self._state:
            self._transition_locked(member, now)

    # -- listeners -----------------------------------------------------------

    def notify(self) -> None:
        """Tell the listeners of the transitions made since the last call (no lock held)."""
        outbox = self._outbox
        while outbox:
            try:
                old, new = outbox.popleft()
            except IndexError:  # another thread emptied it first
                return
            for listener in self.policy.listeners:
                self._call_listener(listener, old, new)
            for hook in self.transition_hooks:
                self._call_hook(hook, old, new)

    def _call_listener(self, listener: Any, old: str, new: str) -> None:
        try:
            listener.state_change(self, StateView(old), StateView(new))
        except Exception:
            self.listener_errors += 1
            log.exception("breaker listener %r failed on %s -> %s", listener, old, new)

    def _call_hook(self, hook: TransitionHook, old: str, new: str) -> None:
        try:
            hook(self, old, new)
        except Exception:
            self.listener_errors += 1
            log.exception("breaker transition hook %r failed on %s -> %s", hook, old, new)
