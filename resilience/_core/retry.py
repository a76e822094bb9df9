"""Retry mechanics: ``Retry-After``, backoff, the retry budget, and the tenacity glue.

tenacity stays private: :func:`sync_retrying` and :func:`async_retrying`
build its loop only once an attempt has asked for a retry, so the happy path
never constructs a tenacity object.

The retry budget caps retries per provider at
``max(budget_min_retries, budget_ratio × calls in the budget window)``, so an
outage never multiplies the load on a provider by ``attempts``.
"""

from __future__ import annotations

import email.utils
import math
import random
import threading
from collections import deque
from collections.abc import Callable
from datetime import UTC
from typing import TYPE_CHECKING, Any

import tenacity

from resilience._core import clock as _clock
from resilience._core.clock import AsyncSleep, Sleep
from resilience._core.config import RetryPolicy

if TYPE_CHECKING:
    from resilience._core.provider import Provider

BUDGET_BUCKETS = 10


def parse_retry_after(value: str | None, *, now: Callable[[], float] | None = None) -> float | None:
    """Seconds a ``Retry-After`` value asks to wait, or ``None`` when absent or unreadable.

    Accepts delta-seconds (``"120"``, also ``"1.5"``) and HTTP dates; a date in
    the past means 0. Never raises: anything else (negative, not finite,
    garbage) is ``None``.
    """
    if value is None:
        return None
    try:
        text = value.strip()
        if text[:1].isdigit():
            seconds = float(text)
            if seconds == math.inf and text.isdigit():
                return math.inf  # valid delta-seconds too large for a float: beyond any cap
            return seconds if 0 <= seconds < math.inf else None
        when = email.utils.parsedate_to_datetime(text)
        if when.tzinfo is None:  # "-0000": UTC without a stated zone
            when = when.replace(tzinfo=UTC)
        return max(0.0, when.timestamp() - (now or _clock.wall_time)())
    except (ValueError, TypeError, IndexError, OverflowError):
        return None


def backoff(policy: RetryPolicy, retry: int, rand: Callable[[], float] = random.random) -> float:
    """Seconds to wait before retry number ``retry`` (1 for the first retry), with jitter and cap."""
    base = float(policy.backoff_seconds)  # type: ignore[arg-type]  # normalised to float
    cap = float(policy.max_backoff_seconds)  # type: ignore[arg-type]
    try:
        delay = min(base * policy.backoff_multiplier ** (retry - 1), cap)
    except OverflowError:
        delay = cap
    jitter = policy.jitter
    return delay * (1.0 - jitter) + delay * jitter * rand()


class RetryBudget:
    """Retries allowed for one provider: ``max(floor, ratio × calls in the window)``.

    Nothing is counted on the happy path. Calls are read from the provider's
    own counters (attempts recorded, less the retries this budget granted)
    when a retry is asked for, and sampled then; the calls in the window are
    those since the oldest sample still inside it. Until samples span the
    window this undercounts, so a budget errs strict, never lenient.
    """

    __slots__ = ("_current", "_granted", "_lock", "_retries", "_samples", "_width", "_window", "policy")

    def __init__(self, policy: RetryPolicy) -> None:
        self.policy = policy
        self._window = float(policy.budget_window_seconds)  # type: ignore[arg-type]  # normalised to float
        self._width = self._window / BUDGET_BUCKETS
        self._retries = [0] * BUDGET_BUCKETS
        self._current = -1
        self._granted = 0
        self._samples: deque[tuple[float, int]] = deque()
        self._lock = threading.Lock()

    def try_spend(self, now: float, attempts: int) -> bool:
        """Take one retry; ``attempts`` is the provider's attempt count so far. ``False`` when spent."""
        bucket = int(now // self._width)
        with self._lock:
            self._advance_locked(bucket)
            calls = self._calls_locked(now, attempts - self._granted)
            allowed = max(self.policy.budget_min_retries, self.policy.budget_ratio * calls)
            if sum(self._retries) >= allowed:
                return False
            self._retries[bucket % BUDGET_BUCKETS] += 1
            self._granted += 1
            return True

    def _calls_locked(self, now: float, first_attempts: int) -> int:
        samples = self._samples
        horizon = now - self._window
        while samples and samples[0][0] <= horizon:
            samples.popleft()
        if not samples or now - samples[-1][0] >= self._width:
            samples.append((now, first_attempts))
        return max(0, first_attempts - samples[0][1])

    def _advance_locked(self, bucket: int) -> None:
        current = self._current
        if bucket <= current:
            return
        for b in range(max(current + 1, bucket - BUDGET_BUCKETS + 1), bucket + 1):
            self._retries[b % BUDGET_BUCKETS] = 0
        self._current = bucket


def sync_retrying(
    attempts: int,
    *,
    retry: Callable[[Any], bool],
    wait: Callable[[Any, int], float],
    sleep: Sleep,
) -> tenacity.Retrying:
    """A tenacity loop over attempt results: ``retry(result)`` asks again, ``wait(result, n)`` paces it."""
    return tenacity.Retrying(sleep=sleep, reraise=True, **_strategy(attempts, retry, wait))


def async_retrying(
    attempts: int,
    *,
    retry: Callable[[Any], bool],
    wait: Callable[[Any, int], float],
    sleep: AsyncSleep,
) -> tenacity.AsyncRetrying:
    """:func:`sync_retrying` for coroutines."""
    return tenacity.AsyncRetrying(sleep=sleep, reraise=True, **_strategy(attempts, retry, wait))


def _strategy(
    attempts: int, retry: Callable[[Any], bool], wait: Callable[[Any, int], float]
) -> dict[str, Any]:
    def should_retry(state: tenacity.RetryCallState) -> bool:
        outcome = state.outcome
        return outcome is not None and not outcome.failed and retry(outcome.result())

    def how_long(state: tenacity.RetryCallState) -> float:
        assert state.outcome is not None
        return wait(state.outcome.result(), state.attempt_number)

    return {
        "stop": tenacity.stop_after_attempt(attempts),
        "retry": should_retry,
        "wait": how_long,
        "retry_error_callback": lambda state: state.outcome.result(),
    }


def budget_for(budgets: dict[str, RetryBudget], provider: Provider) -> RetryBudget:
    """The retry budget of ``provider`` in ``budgets`` (one per provider name and retry policy)."""
    policy = provider.policy.retry
    budget = budgets.get(provider.name)
    if budget is None or budget.policy is not policy:
        budget = budgets[provider.name] = RetryBudget(policy)
    return budget
