"""Policies: validated at construction, defaults documented, parts inherited."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

import pybreaker
import pytest

import resilience
from resilience import BreakerPolicy, ConfigError, Policy, RetryPolicy
from resilience._core.config import resolve_policy


@pytest.mark.parametrize(
    ("factory", "field"),
    [
        pytest.param(
            lambda: BreakerPolicy(failure_rate_threshold=1.5), "failure_rate_threshold", id="rate>1"
        ),
        pytest.param(lambda: BreakerPolicy(failure_rate_threshold=0), "failure_rate_threshold", id="rate=0"),
        pytest.param(lambda: BreakerPolicy(window_seconds=-1), "window_seconds", id="negative-window"),
        pytest.param(lambda: BreakerPolicy(window_seconds=float("nan")), "window_seconds", id="nan-window"),
        pytest.param(lambda: BreakerPolicy(minimum_calls=0), "minimum_calls", id="min-calls"),
        pytest.param(lambda: BreakerPolicy(minimum_calls=True), "minimum_calls", id="bool-count"),
        pytest.param(lambda: BreakerPolicy(open_seconds=0), "open_seconds", id="open-zero"),
        pytest.param(
            lambda: BreakerPolicy(open_seconds=60, max_open_seconds=30), "max_open_seconds", id="max<open"
        ),
        pytest.param(lambda: BreakerPolicy(half_open_max_calls=0), "half_open_max_calls", id="half-open"),
        pytest.param(lambda: BreakerPolicy(consecutive_failures=0), "consecutive_failures", id="consecutive"),
        pytest.param(lambda: BreakerPolicy(listeners=[object()]), "listeners", id="listener"),  # type: ignore[arg-type]  # wrong on purpose
        pytest.param(lambda: RetryPolicy(attempts=0), "attempts", id="attempts"),
        pytest.param(lambda: RetryPolicy(retry_statuses={700}), "retry_statuses", id="status"),  # type: ignore[arg-type]  # wrong on purpose
        pytest.param(lambda: RetryPolicy(jitter=2), "jitter", id="jitter"),
        pytest.param(lambda: RetryPolicy(budget_ratio=-0.1), "budget_ratio", id="budget"),
        pytest.param(lambda: Policy(breaker=RetryPolicy()), "breaker", id="wrong-part"),  # type: ignore[arg-type]  # wrong on purpose
        pytest.param(lambda: Policy(cost=3), "cost", id="cost"),  # type: ignore[arg-type]  # wrong on purpose
        pytest.param(lambda: Policy(healthy_score=0.4, degraded_score=0.6), "degraded_score", id="scores"),
        pytest.param(lambda: Policy(latency_slo_seconds="1"), "latency_slo_seconds", id="slo-str"),  # type: ignore[arg-type]  # wrong on purpose
    ],
)
def test_bad_configuration_fails_at_construction_naming_the_field(factory: object, field: str) -> None:
    """A bad value is a ConfigError (a ValueError) whose message names the field."""
    with pytest.raises(ValueError, match=field) as info:
        factory()  # type: ignore[operator]
    assert isinstance(info.value, ConfigError)
    assert isinstance(info.value, resilience.ResilienceError)


def test_threshold_message_names_the_value() -> None:
    """The message shows the interval and the bad value."""
    with pytest.raises(ConfigError, match=r"failure_rate_threshold must be in \(0, 1\], got 1.5"):
        BreakerPolicy(failure_rate_threshold=1.5)


def test_defaults_are_documented_values() -> None:
    """Fields not given take the documented defaults."""
    breaker, retry = BreakerPolicy(), RetryPolicy()
    assert breaker.failure_rate_threshold == 0.5
    assert breaker.minimum_calls == 10
    assert breaker.window_seconds == 60.0
    assert breaker.open_seconds == 30.0
    assert breaker.consecutive_failures is None
    assert retry.attempts == 3
    assert retry.retry_statuses == {429, 500, 502, 503, 504}
    assert retry.max_retry_after_seconds == 30.0
    assert retry.budget_ratio == 0.2
    assert retry.budget_min_retries == 10


def test_durations_accept_timedelta() -> None:
    """A timedelta is normalised to float seconds."""
    policy = BreakerPolicy(open_seconds=timedelta(minutes=1), max_open_seconds=timedelta(minutes=5))
    assert policy.open_seconds == 60.0
    assert policy.max_open_seconds == 300.0


def test_policies_are_immutable() -> None:
    """Policies are frozen; variants come from dataclasses.replace."""
    policy = BreakerPolicy()
    with pytest.raises(AttributeError):
        policy.minimum_calls = 3  # type: ignore[misc]


def test_provider_policy_overrides_only_the_parts_it_names() -> None:
    """A provider's Policy(retry=...) keeps the default breaker."""
    default = Policy(breaker=BreakerPolicy(minimum_calls=4), retry=RetryPolicy(attempts=3))
    own = Policy(retry=RetryPolicy(attempts=1))
    resolved = resolve_policy(own, default)
    assert resolved.retry.attempts == 1
    assert resolved.breaker.minimum_calls == 4
    assert resolved.failure_statuses == frozenset(range(500, 600))
    assert resolved.throttle_statuses == {429}


def test_listeners_accept_pybreaker_listeners() -> None:
    """pybreaker.CircuitBreakerListener instances are valid listeners, kept as a tuple."""
    listener = pybreaker.CircuitBreakerListener()
    assert BreakerPolicy(listeners=[listener]).listeners == (listener,)  # type: ignore[arg-type]  # a list, normalised


def test_retry_methods_normalised_upper_case() -> None:
    """retry_methods narrows retries; None means every method."""
    assert RetryPolicy().retries_method("POST")
    narrowed = RetryPolicy(retry_methods=["get"])  # type: ignore[arg-type]  # a list, normalised
    assert narrowed.retries_method("GET")
    assert not narrowed.retries_method("POST")


@pytest.mark.parametrize(
    ("make", "field"),
    [
        pytest.param(lambda: BreakerPolicy(window_seconds=1e-320), "window_seconds", id="breaker-window"),
        pytest.param(lambda: RetryPolicy(budget_window_seconds=1e-320), "budget_window_seconds", id="budget"),
        pytest.param(lambda: Policy(stats_window_seconds=1e-320), "stats_window_seconds", id="stats-window"),
    ],
)
def test_windows_too_small_to_cut_into_buckets_are_refused(make: Callable[[], object], field: str) -> None:
    """A window of 1e-320 s is a ConfigError naming the field, never an OverflowError at request time."""
    with pytest.raises(ConfigError, match=field):
        make()
