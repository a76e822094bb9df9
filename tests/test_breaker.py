"""The breaker state machine as SPEC "Breaker" writes it, on a fake clock."""

from __future__ import annotations

import pybreaker
import pytest

import resilience
from resilience import BreakerPolicy, CircuitOpenError, Policy, ProviderRegistry
from resilience.testing import FakeClock


def make(clock: FakeClock, **breaker: object) -> resilience.Provider:
    """A registry with one provider 'p' running the given breaker policy."""
    registry = ProviderRegistry(Policy(breaker=BreakerPolicy(**breaker)), clock=clock)  # type: ignore[arg-type]
    return registry.register("p")


def call(provider: resilience.Provider, outcome: str = "success", seconds: float = 0.01) -> None:
    """One attempt through the provider's permit API."""
    permit = provider.admit()
    provider.clock.advance(seconds)  # type: ignore[attr-defined]
    provider.record(permit, outcome, seconds)


def test_trips_when_failure_rate_reached_with_minimum_calls(clock: FakeClock) -> None:
    """Closed trips at >= threshold once the window holds minimum_calls."""
    provider = make(clock, failure_rate_threshold=0.5, minimum_calls=10)
    for _ in range(5):
        call(provider, "failure")
    assert provider.state == "closed"  # 5 calls < minimum_calls
    for _ in range(4):
        call(provider, "success")
    assert provider.state == "closed"
    call(provider, "failure")  # 6 failures of 10 calls
    assert provider.state == "open"


def test_stays_closed_below_threshold(clock: FakeClock) -> None:
    """Four failures in ten calls do not trip a 50 % breaker."""
    provider = make(clock, minimum_calls=10)
    for outcome in ["failure"] * 4 + ["success"] * 6:
        call(provider, outcome)
    assert provider.state == "closed"


def test_client_errors_count_as_success_and_throttled_as_failure(clock: FakeClock) -> None:
    """4xx keeps the breaker closed; 429 trips it by default."""
    provider = make(clock, minimum_calls=4)
    for _ in range(4):
        call(provider, "client_error")
    assert provider.state == "closed"
    for _ in range(4):
        call(provider, "throttled")
    assert provider.state == "open"


def test_throttled_can_be_declared_harmless(clock: FakeClock) -> None:
    """With throttled_is_failure=False, 429s never trip the breaker nor count as errors."""
    registry = ProviderRegistry(
        Policy(breaker=BreakerPolicy(minimum_calls=2), throttled_is_failure=False), clock=clock
    )
    provider = registry.register("p")
    for _ in range(5):
        call(provider, "throttled")
    assert provider.state == "closed"


def test_slow_call_rate_trips(clock: FakeClock) -> None:
    """Slow successes trip the breaker at slow_call_rate_threshold."""
    provider = make(clock, minimum_calls=4, slow_call_seconds=1.0, slow_call_rate_threshold=0.5)
    call(provider, "success", 0.1)
    call(provider, "success", 0.1)
    call(provider, "success", 2.0)
    assert provider.state == "closed"
    call(provider, "success", 2.0)
    assert provider.state == "open"


def test_consecutive_failures_trip_before_minimum_calls(clock: FakeClock) -> None:
    """consecutive_failures trips on a run of failures; a success resets the run."""
    provider = make(clock, minimum_calls=100, consecutive_failures=3)
    call(provider, "failure")
    call(provider, "failure")
    call(provider, "success")
    call(provider, "failure")
    call(provider, "failure")
    assert provider.state == "closed"
    call(provider, "failure")
    assert provider.state == "open"


def test_open_rejects_without_calling_and_says_when(clock: FakeClock) -> None:
    """Open raises CircuitOpenError (a pybreaker error) with provider and retry_after."""
    provider = make(clock, minimum_calls=1, open_seconds=30)
    call(provider, "failure")
    clock.advance(10)
    with pytest.raises(CircuitOpenError) as info:
        provider.admit()
    assert isinstance(info.value, pybreaker.CircuitBreakerError)
    assert info.value.provider == "p"
    assert info.value.retry_after == pytest.approx(20)
    assert provider.snapshot().window.rejected == 1
    assert provider.snapshot().window.calls == 1  # rejections are not calls


def test_half_open_after_open_seconds_then_closes_on_success(clock: FakeClock) -> None:
    """After open_seconds a trial is admitted; success_threshold successes close."""
    provider = make(clock, minimum_calls=1, open_seconds=30, success_threshold=2)
    call(provider, "failure")
    clock.advance(30)
    assert provider.state == "half_open"
    call(provider, "success")
    assert provider.state == "half_open"
    call(provider, "success")
    assert provider.state == "closed"


def test_failed_trial_reopens_for_longer_up_to_the_cap(clock: FakeClock) -> None:
    """Each failed trial doubles the open time, capped at max_open_seconds."""
    provider = make(clock, minimum_calls=1, open_seconds=10, max_open_seconds=25)
    call(provider, "failure", 0)
    waits = []
    for _ in range(3):
        with pytest.raises(CircuitOpenError) as info:
            provider.admit()
        waits.append(info.value.retry_after)
        clock.advance(info.value.retry_after)
        call(provider, "failure", 0)
    assert waits == [10, 20, 25]


def test_close_resets_open_time_growth(clock: FakeClock) -> None:
    """After closing, the next trip opens for open_seconds again."""
    provider = make(clock, minimum_calls=1, open_seconds=10)
    call(provider, "failure", 0)
    clock.advance(10)
    call(provider, "failure", 0)  # failed trial: 20 s
    clock.advance(20)
    call(provider, "success", 0)
    assert provider.state == "closed"
    call(provider, "failure", 0)
    with pytest.raises(CircuitOpenError) as info:
        provider.admit()
    assert info.value.retry_after == 10


def test_half_open_admits_only_max_calls_and_frees_slots(clock: FakeClock) -> None:
    """At most half_open_max_calls trials at a time; a rejected one gets retry_after 1."""
    provider = make(clock, minimum_calls=1, open_seconds=5, half_open_max_calls=2, success_threshold=3)
    call(provider, "failure")
    clock.advance(5)
    first, second = provider.admit(), provider.admit()
    with pytest.raises(CircuitOpenError) as info:
        provider.admit()
    assert info.value.retry_after == 1.0
    provider.record(first, "success", 0.01)
    third = provider.admit()  # the slot freed
    provider.record(second, "success", 0.01)
    provider.record(third, "success", 0.01)
    assert provider.state == "closed"


def test_cancelled_trial_releases_its_slot(clock: FakeClock) -> None:
    """release() frees a half-open slot without counting a result."""
    provider = make(clock, minimum_calls=1, open_seconds=5)
    call(provider, "failure")
    clock.advance(5)
    permit = provider.admit()
    provider.release(permit)
    assert provider.state == "half_open"
    provider.admit()


def test_result_from_before_a_transition_does_not_count(clock: FakeClock) -> None:
    """A call admitted while closed that fails after the trip does not re-trip or count."""
    provider = make(clock, minimum_calls=1, open_seconds=5)
    early = provider.admit()
    call(provider, "failure")
    clock.advance(5)
    trial = provider.admit()
    provider.record(early, "failure", 1.0)  # stale: ignored by the breaker
    assert provider.state == "half_open"
    provider.record(trial, "success", 0.01)
    assert provider.state == "closed"


def test_forced_open_rejects_and_disabled_admits_but_records(clock: FakeClock) -> None:
    """Manual control: forced_open rejects everything; disabled never trips but records."""
    provider = make(clock, minimum_calls=1)
    provider.force_open()
    assert provider.state == "forced_open"
    with pytest.raises(CircuitOpenError):
        provider.admit()
    clock.advance(10_000)
    assert provider.state == "forced_open"
    provider.disable()
    for _ in range(20):
        call(provider, "failure")
    assert provider.state == "disabled"
    assert provider.snapshot().window.failures == 20


def test_reset_closes_and_keeps_the_stats_window(clock: FakeClock) -> None:
    """reset() goes back to closed; the stats window behind health is kept."""
    provider = make(clock, minimum_calls=2)
    call(provider, "failure")
    call(provider, "failure")
    assert provider.state == "open"
    provider.reset()
    assert provider.state == "closed"
    assert provider.snapshot().window.failures == 2
    call(provider, "failure")  # the decision window started afresh: 1 call < minimum
    assert provider.state == "closed"


def test_retry_after_opens_for_that_long_when_asked(clock: FakeClock) -> None:
    """open_on_retry_after: a 429 with Retry-After opens the breaker for that long."""
    provider = make(clock, minimum_calls=100, open_on_retry_after=True)
    permit = provider.admit()
    provider.record(permit, "throttled", 0.01, retry_after=45.0)
    assert provider.state == "open"
    with pytest.raises(CircuitOpenError) as info:
        provider.admit()
    assert info.value.retry_after == pytest.approx(45.0)


def test_trip_is_never_shorter_than_retry_after(clock: FakeClock) -> None:
    """A trip with a longer Retry-After stays open for the Retry-After."""
    provider = make(clock, minimum_calls=1, open_seconds=10, open_on_retry_after=True)
    permit = provider.admit()
    provider.record(permit, "failure", 0.01, retry_after=100.0)
    clock.advance(50)
    assert provider.state == "open"


def test_retry_after_ignored_by_default(clock: FakeClock) -> None:
    """Without open_on_retry_after a single 429 does not open the breaker."""
    provider = make(clock, minimum_calls=100)
    permit = provider.admit()
    provider.record(permit, "throttled", 0.01, retry_after=45.0)
    assert provider.state == "closed"


class Recorder(pybreaker.CircuitBreakerListener):
    """Keeps every state change it hears."""

    def __init__(self) -> None:
        self.changes: list[tuple[str, str | None, str]] = []

    def state_change(self, cb: object, old_state: object, new_state: object) -> None:
        self.changes.append((cb.name, getattr(old_state, "name", None), new_state.name))  # type: ignore[attr-defined]


def test_pybreaker_listeners_hear_every_state_change(clock: FakeClock) -> None:
    """BreakerPolicy(listeners=[...]) hears every transition with pybreaker's signature."""
    recorder = Recorder()
    provider = make(clock, minimum_calls=1, open_seconds=5, listeners=[recorder])
    call(provider, "failure")
    clock.advance(5)
    call(provider, "success")
    provider.force_open()
    provider.disable()
    provider.reset()
    assert recorder.changes == [
        ("p", "closed", "open"),
        ("p", "open", "half_open"),
        ("p", "half_open", "closed"),
        ("p", "closed", "forced_open"),
        ("p", "forced_open", "disabled"),
        ("p", "disabled", "closed"),
    ]


def test_failing_listener_never_breaks_the_call(clock: FakeClock) -> None:
    """A listener that raises is logged and counted; the state still changes."""

    class Broken(pybreaker.CircuitBreakerListener):
        def state_change(self, cb: object, old_state: object, new_state: object) -> None:
            raise RuntimeError("boom")

    provider = make(clock, minimum_calls=1, listeners=[Broken()])
    call(provider, "failure")
    assert provider.state == "open"
    assert provider._breaker.listener_errors == 1


def test_transitions_are_counted(clock: FakeClock) -> None:
    """Every transition is counted by (from, to) for the transitions metric."""
    provider = make(clock, minimum_calls=1, open_seconds=1)
    call(provider, "failure")
    clock.advance(1)
    call(provider, "failure")
    snap = provider.snapshot()
    assert snap.transitions_total == {
        ("closed", "open"): 1,
        ("open", "half_open"): 1,
        ("half_open", "open"): 1,
    }


def test_count_based_window(clock: FakeClock) -> None:
    """window_calls judges the last N calls, whatever their age."""
    provider = make(clock, minimum_calls=4, window_calls=4)
    for outcome in ("failure", "failure", "success", "success", "success", "success"):
        call(provider, outcome)
        clock.advance(1000)
    assert provider.state == "closed"
    call(provider, "failure")
    call(provider, "failure")
    assert provider.state == "open"


def test_open_time_stays_capped_after_any_number_of_trips(clock: FakeClock) -> None:
    """2,000 trips in a row (more than a float power of 2 can hold) keep the open time at max_open_seconds."""
    registry = ProviderRegistry(
        Policy(breaker=BreakerPolicy(minimum_calls=1, open_seconds=1.0, max_open_seconds=5.0)), clock=clock
    )
    registry.register("p")
    for trip in range(2000):
        with pytest.raises(ValueError), registry.guard("p"):
            raise ValueError("provider down")
        assert registry.get("p").state == "open"
        with pytest.raises(CircuitOpenError) as rejected:
            registry.get("p").admit()
        # 1, 2, 4, then 5 s for good
        assert rejected.value.retry_after == pytest.approx(min(2.0 ** min(trip, 3), 5.0))
        clock.advance(5.0)


@pytest.mark.parametrize("retry_after", [0.0, -1.0])
def test_retry_after_asking_no_wait_does_not_open(clock: FakeClock, retry_after: float) -> None:
    """open_on_retry_after with a Retry-After of 0 (or a date past) leaves the breaker closed."""
    provider = make(clock, open_on_retry_after=True)
    provider.record(provider.admit(), "throttled", 0.01, retry_after=retry_after)
    assert provider.state == "closed"
    provider.open_for(0.0)
    assert provider.state == "closed"
    call(provider)  # and admits as before
