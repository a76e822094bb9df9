"""Sliding windows: eviction, running totals, quantiles, fixed memory."""

from __future__ import annotations

import math
import tracemalloc

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from resilience._core import histogram as _histogram
from resilience._core.window import (
    CLIENT_ERROR,
    FAILURE,
    REJECTED,
    SUCCESS,
    THROTTLED,
    CountWindow,
    TimeWindow,
)


def test_time_window_evicts_after_window_seconds() -> None:
    """A call leaves the window once window_seconds have passed."""
    window = TimeWindow(60.0)
    window.record(0.0, FAILURE, 0.1)
    assert window.snapshot(59.9).failures == 1
    assert window.snapshot(60.0).failures == 0


def test_time_window_counts_each_outcome() -> None:
    """Outcomes, calls and error rate add up as SPEC Health defines them."""
    window = TimeWindow(60.0)
    for outcome in (SUCCESS, SUCCESS, FAILURE, THROTTLED, CLIENT_ERROR, REJECTED):
        window.record(1.0, outcome, 0.05)
    snap = window.snapshot(1.0)
    assert (snap.successes, snap.failures, snap.throttled, snap.client_errors, snap.rejected) == (
        2,
        1,
        1,
        1,
        1,
    )
    assert snap.calls == 5
    assert snap.error_rate == pytest.approx(2 / 5)


def test_empty_window_has_zero_error_rate_and_no_latency() -> None:
    """No calls: error rate 0 and no quantiles."""
    snap = TimeWindow(10.0).snapshot(5.0)
    assert snap.error_rate == 0.0
    assert snap.p50 is None and snap.p99 is None


def test_cost_and_tokens_are_summed_and_evicted() -> None:
    """Cost and tokens are windowed like outcomes; unknown cost is counted."""
    window = TimeWindow(10.0)
    window.record(0.0, SUCCESS, 0.1, cost=0.25, input_tokens=10, output_tokens=5)
    window.record(5.0, SUCCESS, 0.1, cost=0.5, input_tokens=1, output_tokens=2)
    window.record(5.0, SUCCESS, 0.1, cost_unknown=True)
    snap = window.snapshot(6.0)
    assert snap.cost_usd == pytest.approx(0.75)
    assert (snap.input_tokens, snap.output_tokens, snap.unknown_cost, snap.costed) == (11, 7, 1, 2)
    later = window.snapshot(12.0)
    assert later.cost_usd == pytest.approx(0.5)
    assert later.input_tokens == 1


def test_long_clock_jump_clears_everything() -> None:
    """A jump past the whole window evicts every bucket."""
    window = TimeWindow(60.0)
    for t in range(60):
        window.record(float(t), FAILURE, 0.01)
    assert window.snapshot(59.0).failures == 60
    assert window.snapshot(10_000.0).calls == 0


def test_too_old_record_is_ignored_by_the_window() -> None:
    """A reading older than the window (a racing thread) does not corrupt the totals."""
    window = TimeWindow(10.0)
    window.record(100.0, SUCCESS, 0.01)
    window.record(50.0, FAILURE, 0.01)
    assert window.snapshot(100.0).failures == 0


def test_count_window_keeps_last_n_calls() -> None:
    """The count window holds exactly the last N calls."""
    window = CountWindow(3)
    for outcome in (FAILURE, FAILURE, SUCCESS, SUCCESS):
        window.record(0.0, outcome, slow=outcome == SUCCESS)
    counts = window.counts(0.0)
    assert (counts[SUCCESS], counts[FAILURE]) == (2, 1)
    window.record(0.0, REJECTED)
    assert counts[SUCCESS] + counts[FAILURE] == 3


@pytest.mark.parametrize("seconds", [1e-5, 0.003, 0.2, 1.0, 7.5, 42.0, 900.0])
def test_quantile_within_five_percent(seconds: float) -> None:
    """A single latency reads back within 5 % relative error."""
    window = TimeWindow(60.0)
    window.record(0.0, SUCCESS, seconds)
    p50 = window.snapshot(0.0).p50
    assert p50 is not None
    assert abs(p50 - seconds) / seconds <= 0.05


def test_prometheus_bounds_are_exact_bucket_bounds() -> None:
    """Every Prometheus le bound is exactly a histogram bound, so exported counts are exact."""
    for le, index in zip(_histogram.DURATION_BUCKETS, _histogram.PROMETHEUS_INDEX, strict=True):
        assert _histogram.BOUNDS[index] == le
        assert _histogram.bucket_of(le) == index


events = st.lists(
    st.tuples(
        st.floats(min_value=0, max_value=5, allow_nan=False),  # time step
        st.sampled_from([SUCCESS, FAILURE, THROTTLED, CLIENT_ERROR, REJECTED]),
        st.floats(min_value=1e-4, max_value=100, allow_nan=False),
    ),
    max_size=200,
)


@settings(max_examples=150, deadline=None)
@given(events=events, jump=st.floats(min_value=0, max_value=120))
def test_time_window_matches_brute_force_recount(events: list[tuple[float, int, float]], jump: float) -> None:
    """Running totals equal a recount of the events whose bucket is still in the window."""
    window = TimeWindow(30.0, buckets=30)
    now, seen = 0.0, []
    for step, outcome, latency in events:
        now += step
        window.record(now, outcome, latency)
        seen.append((now, outcome, latency))
    now += jump
    snap = window.snapshot(now)
    live = [(t, o, lat) for t, o, lat in seen if math.floor(t) > math.floor(now) - 30]
    assert snap.failures == sum(o == FAILURE for _, o, _ in live)
    assert snap.successes == sum(o == SUCCESS for _, o, _ in live)
    assert snap.rejected == sum(o == REJECTED for _, o, _ in live)
    latencies = sorted(lat for _, o, lat in live if o != REJECTED)
    if latencies:
        true_p95 = latencies[max(1, math.ceil(0.95 * len(latencies))) - 1]
        assert snap.p95 is not None
        assert abs(snap.p95 - true_p95) / true_p95 <= 0.051
    else:
        assert snap.p95 is None


def test_window_memory_is_constant_over_a_million_records() -> None:
    """Memory does not grow with the call volume (tracemalloc)."""
    window = TimeWindow(60.0)
    record = window.record
    t = 0.0
    tracemalloc.start()
    for i in range(100_000):  # warm, traced: a full window of buckets allocated
        t += 0.001
        record(t, i % 3, 0.001 * (1 + i % 500))
    before = tracemalloc.take_snapshot()
    for i in range(1_000_000):
        t += 0.001
        record(t, i % 3, 0.001 * (1 + i % 500))
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    window_files = [tracemalloc.Filter(True, "*resilience*")]
    diff = after.filter_traces(window_files).compare_to(before.filter_traces(window_files), "filename")
    growth = sum(stat.size_diff for stat in diff)
    assert growth < 16 * 1024, f"window grew by {growth} bytes over 1,000,000 records"


_DURATION = st.one_of(
    st.floats(min_value=0.0, max_value=1e5, allow_nan=False),
    st.floats(min_value=1e-7, max_value=3e-6),  # a guard's no-op: thousands in a few buckets
    st.sampled_from(_histogram.BOUNDS),  # exactly on a bound: the bucket below it
    st.floats(),  # negative, infinite, NaN: the first or the last bucket
)


@given(st.lists(_DURATION, max_size=300))
def test_bucket_counts_agree_with_the_python_fallback(durations: list[float]) -> None:
    """One by one (C loop), sorted (many in few buckets) or by the Python fallback: the same counts."""
    fallback: dict[int, int] = {}
    _histogram._count_into(fallback, map(_histogram.bucket_of, durations))
    assert _histogram.bucket_counts(durations) == fallback
    assert sum(fallback.values()) == len(durations)
    # the fold's way: its own list, sorted in place, and the sum it already has
    assert _histogram.bucket_counts(list(durations), total=sum(durations), reorder=True) == fallback


_FEW_BUCKETS = st.one_of(
    st.floats(min_value=1e-7, max_value=3e-6),
    st.sampled_from([bound for bound in _histogram.BOUNDS if bound <= 3e-6]),  # on a bound: the one below
)


@given(st.lists(_FEW_BUCKETS, min_size=128, max_size=400))
def test_many_durations_in_few_buckets_are_counted_sorted(durations: list[float]) -> None:
    """Many durations within a few buckets take the sorted path, and it counts them exactly."""
    lo, hi = _histogram.bucket_of(min(durations)), _histogram.bucket_of(max(durations))
    assert (hi - lo) * 8 <= len(durations)  # the sorted path's condition holds, so it is the one tested
    fallback: dict[int, int] = {}
    _histogram._count_into(fallback, map(_histogram.bucket_of, durations))
    assert _histogram.bucket_counts(durations) == fallback
