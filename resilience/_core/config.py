"""Policies: frozen, validated dataclasses.

A :class:`Policy` groups the parts a provider is configured by. Every field
left as ``None`` is *not given* and falls back, part by part, to the
registry's ``default_policy`` and then to the documented library defaults
(see :meth:`Policy.merged_over` and :data:`DEFAULT_POLICY`).

Durations accept ``float`` seconds or :class:`datetime.timedelta`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, fields, replace
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Literal, TypeAlias

from resilience._core.errors import ConfigError

if TYPE_CHECKING:
    from resilience._core.cost import CostExtractor

Outcome: TypeAlias = Literal["success", "failure", "throttled", "client_error", "rejected"]
"""What one attempt came to."""

OUTCOMES: tuple[Outcome, ...] = ("success", "failure", "throttled", "client_error", "rejected")

ExceptionClassifier: TypeAlias = "Callable[[BaseException], Outcome | None]"
"""Maps an exception raised inside ``guard()`` to an outcome; ``None`` means failure."""

Duration: TypeAlias = "float | timedelta"


def _seconds(name: str, value: object, *, allow_zero: bool = False) -> float:
    if isinstance(value, timedelta):
        value = value.total_seconds()
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{name} must be a number of seconds or a timedelta, got {value!r}")
    seconds = float(value)
    if math.isnan(seconds) or math.isinf(seconds) or seconds < 0 or (seconds == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ConfigError(f"{name} must be a finite duration {bound}, got {value!r}")
    return seconds


MIN_WINDOW_SECONDS = 0.001
"""Shortest window accepted: a window is cut into buckets, so a tinier one overflows at request time."""


def _window(name: str, value: object) -> float:
    seconds = _seconds(name, value)
    if seconds < MIN_WINDOW_SECONDS:
        raise ConfigError(f"{name} must be at least {MIN_WINDOW_SECONDS:g} seconds, got {value!r}")
    return seconds


def _rate(name: str, value: object, *, allow_zero: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
        raise ConfigError(f"{name} must be a number, got {value!r}")
    low_ok = value >= 0 if allow_zero else value > 0
    if not (low_ok and value <= 1):
        interval = "[0, 1]" if allow_zero else "(0, 1]"
        raise ConfigError(f"{name} must be in {interval}, got {value!r}")
    return float(value)


def _count(name: str, value: object, *, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


def _statuses(name: str, value: object) -> frozenset[int]:
    if isinstance(value, str | bytes) or not isinstance(value, Iterable):
        raise ConfigError(f"{name} must be a collection of HTTP status codes, got {value!r}")
    codes = frozenset(value)
    bad = [c for c in codes if isinstance(c, bool) or not isinstance(c, int) or not 100 <= c <= 599]
    if bad:
        raise ConfigError(f"{name} must hold status codes in 100..599, got {sorted(map(repr, bad))}")
    return codes


def _set(obj: object, name: str, value: object) -> None:
    object.__setattr__(obj, name, value)


@dataclass(frozen=True, kw_only=True, slots=True)
class BreakerPolicy:
    """How a provider's circuit breaker decides.

    Args:
        failure_rate_threshold: trip when the share of failed calls in the
            decision window reaches this, in (0, 1].
        slow_call_rate_threshold: trip when the share of slow calls reaches this.
        slow_call_seconds: an attempt at least this long is *slow*.
        minimum_calls: rates are only judged once the window holds this many calls.
        window_seconds: span of the time-based decision window.
        window_calls: when set, the decision window is the last N calls instead.
        consecutive_failures: when set, this many failures in a row trip at once.
        open_seconds: how long the first trip stays open.
        max_open_seconds: cap on the open time, which doubles
            (``backoff_multiplier``) on every trip that follows a failed trial.
        backoff_multiplier: growth factor of the open time, >= 1.
        half_open_max_calls: concurrent trial calls admitted while half-open.
        success_threshold: successful trials needed to close.
        open_on_retry_after: a 429/503 with ``Retry-After`` opens the breaker for
            (at least) that long, capped at ``max_retry_after_seconds``.
        max_retry_after_seconds: cap on a ``Retry-After`` that opens the breaker.
        listeners: ``pybreaker.CircuitBreakerListener`` objects told of every
            state change (``state_change(breaker, old, new)``).
    """

    failure_rate_threshold: float = 0.5
    slow_call_rate_threshold: float = 1.0
    slow_call_seconds: Duration = 60.0
    minimum_calls: int = 10
    window_seconds: Duration = 60.0
    window_calls: int | None = None
    consecutive_failures: int | None = None
    open_seconds: Duration = 30.0
    max_open_seconds: Duration = 300.0
    backoff_multiplier: float = 2.0
    half_open_max_calls: int = 1
    success_threshold: int = 1
    open_on_retry_after: bool = False
    max_retry_after_seconds: Duration = 3600.0
    listeners: tuple[Any, ...] = ()

    def __post_init__(self) -> None:
        _set(self, "failure_rate_threshold", _rate("failure_rate_threshold", self.failure_rate_threshold))
        _set(self, "slow_call_rate_threshold",
             _rate("slow_call_rate_threshold", self.slow_call_rate_threshold))
        _set(self, "slow_call_seconds", _seconds("slow_call_seconds", self.slow_call_seconds))
        _count("minimum_calls", self.minimum_calls)
        _set(self, "window_seconds", _window("window_seconds", self.window_seconds))
        if self.window_calls is not None:
            _count("window_calls", self.window_calls)
        if self.consecutive_failures is not None:
            _count("consecutive_failures", self.consecutive_failures)
        _set(self, "open_seconds", _seconds("open_seconds", self.open_seconds))
        _set(self, "max_open_seconds", _seconds("max_open_seconds", self.max_open_seconds))
        if self.max_open_seconds < self.open_seconds:  # type: ignore[operator]  # both floats now
            raise ConfigError(
                f"max_open_seconds must be >= open_seconds ({self.open_seconds!r}), "
                f"got {self.max_open_seconds!r}"
            )
        mult = self.backoff_multiplier
        if isinstance(mult, bool) or not isinstance(mult, int | float) or not 1 <= mult < math.inf:
            raise ConfigError(f"backoff_multiplier must be a finite number >= 1, got {mult!r}")
        _count("half_open_max_calls", self.half_open_max_calls)
        _count("success_threshold", self.success_threshold)
        if not isinstance(self.open_on_retry_after, bool):
            raise ConfigError(f"open_on_retry_after must be a bool, got {self.open_on_retry_after!r}")
        _set(self, "max_retry_after_seconds",
             _seconds("max_retry_after_seconds", self.max_retry_after_seconds))
        listeners = tuple(self.listeners)
        for listener in listeners:
            if not callable(getattr(listener, "state_change", None)):
                raise ConfigError(
                    f"listeners must be pybreaker.CircuitBreakerListener objects, got {listener!r}"
                )
        _set(self, "listeners", listeners)


DEFAULT_RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})


@dataclass(frozen=True, kw_only=True, slots=True)
class RetryPolicy:
    """How the transport retries.

    Args:
        attempts: all tries, the first included (1 means no retry).
        retry_statuses: response statuses that are retried.
        retry_methods: methods retried (upper case); ``None`` means every method,
            since LLM APIs are POST.
        retry_transport_errors: retry connection errors and timeouts.
        backoff_seconds: the first backoff; it grows by ``backoff_multiplier``.
        backoff_multiplier: growth of the backoff, >= 1.
        max_backoff_seconds: cap on one backoff.
        jitter: share of each backoff that is randomised, in [0, 1].
        respect_retry_after: wait what a ``Retry-After`` header asks ...
        max_retry_after_seconds: ... up to this; past it the response is
            returned at once, not retried.
        budget_ratio: retries allowed as a share of the calls in the window.
        budget_min_retries: retries always allowed per window, whatever the ratio.
        budget_window_seconds: span of the retry budget's window.
    """

    attempts: int = 3
    retry_statuses: frozenset[int] = DEFAULT_RETRY_STATUSES
    retry_methods: frozenset[str] | None = None
    retry_transport_errors: bool = True
    backoff_seconds: Duration = 0.2
    backoff_multiplier: float = 2.0
    max_backoff_seconds: Duration = 10.0
    jitter: float = 1.0
    respect_retry_after: bool = True
    max_retry_after_seconds: Duration = 30.0
    budget_ratio: float = 0.2
    budget_min_retries: int = 10
    budget_window_seconds: Duration = 60.0

    def __post_init__(self) -> None:
        _count("attempts", self.attempts)
        _set(self, "retry_statuses", _statuses("retry_statuses", self.retry_statuses))
        if self.retry_methods is not None:
            if isinstance(self.retry_methods, str) or not isinstance(self.retry_methods, Iterable):
                raise ConfigError(
                    f"retry_methods must be a collection of methods, got {self.retry_methods!r}"
                )
            methods = frozenset(str(m).upper() for m in self.retry_methods)
            _set(self, "retry_methods", methods)
        _set(self, "backoff_seconds", _seconds("backoff_seconds", self.backoff_seconds, allow_zero=True))
        mult = self.backoff_multiplier
        if isinstance(mult, bool) or not isinstance(mult, int | float) or not 1 <= mult < math.inf:
            raise ConfigError(f"backoff_multiplier must be a finite number >= 1, got {mult!r}")
        _set(self, "max_backoff_seconds",
             _seconds("max_backoff_seconds", self.max_backoff_seconds, allow_zero=True))
        _set(self, "jitter", _rate("jitter", self.jitter, allow_zero=True))
        _set(self, "max_retry_after_seconds",
             _seconds("max_retry_after_seconds", self.max_retry_after_seconds, allow_zero=True))
        _set(self, "budget_ratio", _rate("budget_ratio", self.budget_ratio, allow_zero=True))
        _count("budget_min_retries", self.budget_min_retries, minimum=0)
        _set(self, "budget_window_seconds",
             _window("budget_window_seconds", self.budget_window_seconds))
        for name in ("retry_transport_errors", "respect_retry_after"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{name} must be a bool, got {getattr(self, name)!r}")

    def retries_method(self, method: str) -> bool:
        """Whether requests with this method may be retried."""
        return self.retry_methods is None or method.upper() in self.retry_methods


DEFAULT_FAILURE_STATUSES = frozenset(range(500, 600))
DEFAULT_THROTTLE_STATUSES = frozenset({429})


@dataclass(frozen=True, kw_only=True, slots=True)
class Policy:
    """Everything a provider is configured by; ``None`` fields are inherited.

    Args:
        breaker: the circuit breaker (:class:`BreakerPolicy`).
        retry: the transport's retries (:class:`RetryPolicy`).
        cost: how the USD cost of an attempt is found: a callable
            ``(model, usage, headers) -> float | None``, or one of
            :class:`resilience.PriceTable`, :class:`resilience.HeaderCost`.
            The default reads ``usage.cost`` from the JSON body.
        failure_statuses: statuses that are failures (default 5xx).
        throttle_statuses: statuses that are throttling (default 429).
        throttled_is_failure: throttling counts against the breaker and the
            error rate (default ``True``).
        exception_outcome: classifies exceptions raised inside ``guard()``;
            return ``None`` for the default (a failure).
        latency_slo_seconds: p95 latency above this lowers the health score.
        healthy_score: scores at or above this are ``healthy`` (default 0.8).
        degraded_score: scores at or above this are ``degraded`` (default 0.5).
        stats_window_seconds: span of the stats window behind health,
            dashboard and gauges (default 60).
        first_byte_timeout: seconds a streamed response may take to its first
            body chunk.
        idle_timeout: seconds a streamed response may stay silent between chunks
            (between content events for SSE: keepalives do not count).
        first_token_timeout: seconds from the start of an attempt to its first
            content event (SSE; keepalives do not count); for other streams, to
            the first body bytes.
        deadline_seconds: one deadline over a whole call to this provider: its
            attempts, backoff waits and retries (the earliest deadline wins).
        hold_when_exhausted: while the provider's latest response said 0
            requests (or tokens) remaining and its reset is still ahead, reject
            its calls at once with :class:`resilience.CircuitOpenError`
            (``retry_after``: the time to the reset) without touching the
            network (default ``False``).
    """

    breaker: BreakerPolicy | None = None
    retry: RetryPolicy | None = None
    cost: CostExtractor | None = None
    failure_statuses: frozenset[int] | None = None
    throttle_statuses: frozenset[int] | None = None
    throttled_is_failure: bool | None = None
    exception_outcome: Callable[[BaseException], Outcome | None] | None = None
    latency_slo_seconds: Duration | None = None
    healthy_score: float | None = None
    degraded_score: float | None = None
    stats_window_seconds: Duration | None = None
    first_byte_timeout: Duration | None = None
    idle_timeout: Duration | None = None
    hold_when_exhausted: bool | None = None
    first_token_timeout: Duration | None = None
    deadline_seconds: Duration | None = None

    def __post_init__(self) -> None:
        if self.breaker is not None and not isinstance(self.breaker, BreakerPolicy):
            raise ConfigError(f"breaker must be a BreakerPolicy, got {self.breaker!r}")
        if self.retry is not None and not isinstance(self.retry, RetryPolicy):
            raise ConfigError(f"retry must be a RetryPolicy, got {self.retry!r}")
        if self.cost is not None and not callable(self.cost):
            raise ConfigError(
                f"cost must be a callable (model, usage, headers) -> float | None, got {self.cost!r}"
            )
        for name in ("failure_statuses", "throttle_statuses"):
            value = getattr(self, name)
            if value is not None:
                _set(self, name, _statuses(name, value))
        for name in ("throttled_is_failure", "hold_when_exhausted"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, bool):
                raise ConfigError(f"{name} must be a bool, got {value!r}")
        if self.exception_outcome is not None and not callable(self.exception_outcome):
            raise ConfigError(f"exception_outcome must be callable, got {self.exception_outcome!r}")
        for name in (
            "latency_slo_seconds", "first_byte_timeout", "idle_timeout", "first_token_timeout",
            "deadline_seconds",
        ):
            value = getattr(self, name)
            if value is not None:
                _set(self, name, _seconds(name, value))
        if self.stats_window_seconds is not None:
            _set(self, "stats_window_seconds", _window("stats_window_seconds", self.stats_window_seconds))
        for name in ("healthy_score", "degraded_score"):
            value = getattr(self, name)
            if value is not None:
                _set(self, name, _rate(name, value, allow_zero=True))
        if (
            self.healthy_score is not None
            and self.degraded_score is not None
            and self.degraded_score > self.healthy_score
        ):
            raise ConfigError(
                f"degraded_score must be <= healthy_score ({self.healthy_score!r}), "
                f"got {self.degraded_score!r}"
            )

    def merged_over(self, base: Policy) -> Policy:
        """This policy with every part it leaves out taken from ``base``."""
        return replace(base, **self.given())

    def given(self) -> dict[str, Any]:
        """The parts this policy names (not ``None``)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None}


@dataclass(frozen=True, slots=True)
class ResolvedPolicy:
    """A :class:`Policy` with every part filled in; what a provider runs on."""

    breaker: BreakerPolicy
    retry: RetryPolicy
    cost: CostExtractor | None
    failure_statuses: frozenset[int]
    throttle_statuses: frozenset[int]
    throttled_is_failure: bool
    exception_outcome: Callable[[BaseException], Outcome | None] | None
    latency_slo_seconds: float | None
    healthy_score: float
    degraded_score: float
    stats_window_seconds: float
    first_byte_timeout: float | None
    idle_timeout: float | None
    hold_when_exhausted: bool
    first_token_timeout: float | None
    deadline_seconds: float | None
    source: Policy = field(repr=False, compare=False)

    def outcome_for_status(self, status: int) -> Outcome:
        """The outcome a response status means: throttled, failure, client_error or success."""
        if status in self.throttle_statuses:
            return "throttled"
        if status in self.failure_statuses:
            return "failure"
        if 400 <= status < 500:
            return "client_error"
        return "success"


def resolve_policy(own: Policy | None, default: Policy | None) -> ResolvedPolicy:
    """Merge a provider's own policy over the registry default over the library defaults."""
    merged = Policy()
    if default is not None:
        merged = default.merged_over(merged)
    if own is not None:
        merged = own.merged_over(merged)
    healthy = 0.8 if merged.healthy_score is None else merged.healthy_score
    degraded = 0.5 if merged.degraded_score is None else merged.degraded_score
    if degraded > healthy:
        raise ConfigError(f"degraded_score must be <= healthy_score ({healthy!r}), got {degraded!r}")
    return ResolvedPolicy(
        breaker=merged.breaker or BreakerPolicy(),
        retry=merged.retry or RetryPolicy(),
        cost=merged.cost,
        failure_statuses=(
            DEFAULT_FAILURE_STATUSES if merged.failure_statuses is None else merged.failure_statuses
        ),
        throttle_statuses=(
            DEFAULT_THROTTLE_STATUSES if merged.throttle_statuses is None else merged.throttle_statuses
        ),
        throttled_is_failure=True if merged.throttled_is_failure is None else merged.throttled_is_failure,
        exception_outcome=merged.exception_outcome,
        latency_slo_seconds=merged.latency_slo_seconds,  # type: ignore[arg-type]  # normalised to float
        healthy_score=healthy,
        degraded_score=degraded,
        stats_window_seconds=(
            60.0 if merged.stats_window_seconds is None else merged.stats_window_seconds  # type: ignore[arg-type]
        ),
        first_byte_timeout=merged.first_byte_timeout,  # type: ignore[arg-type]
        idle_timeout=merged.idle_timeout,  # type: ignore[arg-type]
        hold_when_exhausted=bool(merged.hold_when_exhausted),
        first_token_timeout=merged.first_token_timeout,  # type: ignore[arg-type]
        deadline_seconds=merged.deadline_seconds,  # type: ignore[arg-type]
        source=merged,
    )
