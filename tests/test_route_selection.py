"""Route selection: the pure ordering of targets, what providers admit, the hedge budget, the snapshot."""

from __future__ import annotations

import threading

import pytest
from hypothesis import given
from hypothesis import strategies as st

from resilience import (
    BreakerPolicy,
    CircuitOpenError,
    Policy,
    Provider,
    ProviderRegistry,
    Route,
    RoutePolicy,
    Target,
)
from resilience._core.quota import Limits
from resilience._core.route import TargetView, order_targets, soonest_retry_after
from resilience.testing import FakeClock

STATES = ("closed", "half_open", "open", "forced_open", "disabled")


def view(provider: str, score: float = 1.0, *, admits: bool = True, state: str = "closed",
         retry_after: float | None = None) -> TargetView:
    """A TargetView for the pure functions."""
    return TargetView(provider, None, state, score, admits, retry_after)


# -- order_targets and soonest_retry_after: pure ----------------------------------------------


def test_health_order_is_by_score_with_declared_ties() -> None:
    """order='health': highest score first; equal scores keep the declared order."""
    views = [view("a", 0.5), view("b", 0.9), view("c", 0.5), view("d", 0.9)]
    assert order_targets(views, RoutePolicy()) == [1, 3, 0, 2]


def test_priority_order_is_declared_order() -> None:
    """order='priority': declared order whatever the scores."""
    views = [view("a", 0.1), view("b", 0.9), view("c", 0.5)]
    assert order_targets(views, RoutePolicy(order="priority")) == [0, 1, 2]


def test_targets_that_do_not_admit_are_skipped_and_the_rest_capped() -> None:
    """Non-admitting targets are left out before max_targets caps the list."""
    views = [view("a", 1.0, admits=False), view("b", 0.2), view("c", 0.7), view("d", 0.9)]
    assert order_targets(views, RoutePolicy()) == [3, 2, 1]
    assert order_targets(views, RoutePolicy(max_targets=2)) == [3, 2]
    assert order_targets(views, RoutePolicy(order="priority", max_targets=1)) == [1]
    assert order_targets([view("a", admits=False)], RoutePolicy()) == []
    assert order_targets([], RoutePolicy()) == []


views_strategy = st.lists(
    st.builds(
        TargetView,
        provider=st.sampled_from(["a", "b", "c", "d"]),
        model=st.none() | st.just("m"),
        state=st.sampled_from(STATES),
        health_score=st.floats(0.0, 1.0),
        admits=st.booleans(),
        retry_after=st.none() | st.floats(0.0, 1000.0),
    ),
    max_size=8,
)


@given(views=views_strategy, order=st.sampled_from(["health", "priority"]),
       cap=st.none() | st.integers(1, 10))
def test_order_targets_properties(views: list[TargetView], order: str, cap: int | None) -> None:
    """A subset of the admitting targets, each once, in policy order (ties by declared index), capped."""
    policy = RoutePolicy(order=order, max_targets=cap)  # type: ignore[arg-type]
    chosen = order_targets(views, policy)
    admitting = [i for i, v in enumerate(views) if v.admits]
    assert len(chosen) == len(set(chosen)) == min(len(admitting), cap or len(admitting))
    assert set(chosen) <= set(admitting)
    keys = [(-views[i].health_score, i) if order == "health" else (i,) for i in chosen]
    assert keys == sorted(keys)
    left_out = set(admitting) - set(chosen)
    if left_out:  # only the cap leaves admitting targets out, and only lower-ranked ones
        worst = keys[-1]
        for i in left_out:
            assert ((-views[i].health_score, i) if order == "health" else (i,)) > worst


@given(views=views_strategy)
def test_soonest_retry_after_properties(views: list[TargetView]) -> None:
    """The least retry_after of the non-admitting, not forced-open targets; 1.0 when there is none."""
    waits = [v.retry_after for v in views
             if not v.admits and v.state != "forced_open" and v.retry_after is not None]
    assert soonest_retry_after(views) == (min(waits) if waits else 1.0)


def test_soonest_retry_after_leaves_forced_open_out() -> None:
    """A forced-open target never says when it admits again."""
    assert soonest_retry_after([view("a", admits=False, state="forced_open", retry_after=0.1)]) == 1.0
    views = [view("a", admits=False, state="open", retry_after=12.0),
             view("b", admits=False, state="forced_open", retry_after=3.0),
             view("c", admits=False, state="half_open", retry_after=5.0)]
    assert soonest_retry_after(views) == 5.0


# -- Provider.admission_view ------------------------------------------------------------------


def _provider(clock: FakeClock, **breaker: object) -> tuple[ProviderRegistry, Provider]:
    policy = Policy(breaker=BreakerPolicy(minimum_calls=2, open_seconds=30.0, **breaker))  # type: ignore[arg-type]
    registry = ProviderRegistry(policy, clock=clock)
    return registry, registry.register("p")


def _trip(provider: Provider) -> None:
    while provider.state == "closed":
        provider.record(provider.admit(), "failure", 0.1)


def test_admission_view_of_a_closed_provider(clock: FakeClock) -> None:
    """Closed: admits, health score from the stats window, no retry_after; no permit taken."""
    _registry, provider = _provider(clock)
    assert provider.admission_view() == ("closed", 1.0, True, None)
    provider.record(provider.admit(), "success", 0.1)
    provider.record(provider.admit(), "success", 0.1)
    provider.record(provider.admit(), "failure", 0.1)
    state, score, admits, retry_after = provider.admission_view()
    assert (state, admits, retry_after) == ("closed", True, None)
    assert score == pytest.approx(2 / 3)
    assert provider.snapshot().health_score == score


def test_admission_view_of_open_half_open_and_manual_states(clock: FakeClock) -> None:
    """Open: not admitting until its time is up; half-open admits while a trial slot is free."""
    _registry, provider = _provider(clock, half_open_max_calls=1)
    provider.record(provider.admit(), "success", 0.1)
    _trip(provider)  # 1 success, 1 failure in the stats window
    assert provider.admission_view() == ("open", 0.0, False, 30.0)
    clock.advance(10.0)
    assert provider.admission_view()[2:] == (False, 20.0)
    clock.advance(20.0)
    assert provider.admission_view() == ("half_open", 0.25, True, None)  # state factor 0.5 x (1 - 0.5)
    assert provider.admission_view()[2] is True  # reading takes no slot
    permit = provider.admit()  # the one trial slot
    assert provider.admission_view() == ("half_open", 0.25, False, 1.0)
    provider.release(permit)
    assert provider.admission_view()[2] is True
    provider.force_open()
    assert provider.admission_view()[:3] == ("forced_open", 0.0, False)
    provider.disable()
    assert provider.admission_view()[2:] == (True, None)


def test_an_orphaned_trial_permit_frees_its_slot(clock: FakeClock) -> None:
    """A half-open trial abandoned unfinished (garbage-collected) gives its slot back to the view."""
    _registry, provider = _provider(clock, half_open_max_calls=1)
    _trip(provider)
    clock.advance(30.0)
    provider.orphan(provider.admit())
    assert provider.admission_view()[2] is True


def test_an_exhausted_provider_does_not_admit(clock: FakeClock) -> None:
    """0 requests remaining with the reset ahead: not admitting until the reset; the breaker is unchanged."""
    _registry, provider = _provider(clock)
    provider.note_limits(Limits(requests_remaining=0, requests_reset=12.0), clock())
    assert provider.admission_view() == ("closed", 1.0, False, 12.0)
    clock.advance(12.0)
    assert provider.admission_view() == ("closed", 1.0, True, None)
    provider.note_limits(Limits(requests_remaining=5, requests_reset=12.0), clock())
    assert provider.admission_view()[2] is True


def test_exhausted_and_open_waits_for_both(clock: FakeClock) -> None:
    """Open for 30 s and exhausted for 40 s: admits again in 40 s."""
    _registry, provider = _provider(clock)
    _trip(provider)
    provider.note_limits(Limits(tokens_remaining=0, tokens_reset=40.0), clock())
    assert provider.admission_view()[2:] == (False, 40.0)


# -- Route ------------------------------------------------------------------------------------


def _route(clock: FakeClock, policy: RoutePolicy | None = None) -> tuple[ProviderRegistry, Route]:
    breaker = BreakerPolicy(minimum_calls=2, open_seconds=30.0)
    registry = ProviderRegistry(Policy(breaker=breaker), clock=clock)
    for name in ("cerebras", "groq", "openrouter"):
        registry.register(name)
    route = registry.route("llama", [
        Target("cerebras", base_url="https://api.cerebras.ai/v1", model="llama-3.3-70b"),
        Target("groq", base_url="https://api.groq.com/openai/v1", model="llama-3.3-70b-versatile"),
        Target("openrouter", base_url="https://openrouter.ai/api/v1"),
    ], policy=policy)
    return registry, route


def test_candidates_follow_health_and_skip_open_targets(clock: FakeClock) -> None:
    """candidates(): admitting targets by score with their providers; the soonest retry_after of the rest."""
    registry, route = _route(clock)
    cerebras, groq = registry.get("cerebras"), registry.get("groq")
    groq.record(groq.admit(), "success", 0.1)
    groq.record(groq.admit(), "success", 0.1)
    groq.record(groq.admit(), "failure", 0.1)
    chosen, _ = route.candidates()
    assert [(t.provider, p) for t, p in chosen] == [
        ("cerebras", cerebras), ("openrouter", registry.get("openrouter")), ("groq", groq),
    ]
    _trip(cerebras)
    registry.get("openrouter").force_open()
    chosen, retry_after = route.candidates()
    assert [t.provider for t, _p in chosen] == ["groq"]
    _trip(groq)
    chosen, retry_after = route.candidates()
    assert chosen == []
    assert retry_after == 30.0  # groq and cerebras open 30 s, openrouter forced open: left out
    clock.advance(5.0)
    assert route.candidates()[1] == 25.0


def test_candidates_in_priority_order_capped(clock: FakeClock) -> None:
    """order='priority' keeps declared order; max_targets caps it."""
    registry, route = _route(clock, RoutePolicy(order="priority", max_targets=2))
    registry.get("cerebras").record(registry.get("cerebras").admit(), "failure", 0.1)
    chosen, _ = route.candidates()
    assert [t.provider for t, _p in chosen] == ["cerebras", "groq"]


def test_views_are_in_declared_order(clock: FakeClock) -> None:
    """views() lists each target's provider state now, with its model, in declared order."""
    registry, route = _route(clock)
    registry.get("groq").force_open()
    views = route.views()
    assert [(v.provider, v.model, v.state, v.admits) for v in views] == [
        ("cerebras", "llama-3.3-70b", "closed", True),
        ("groq", "llama-3.3-70b-versatile", "forced_open", False),
        ("openrouter", None, "closed", True),
    ]


def test_snapshot_orders_targets_and_counts_over_the_window(clock: FakeClock) -> None:
    """snapshot(): admitting targets in route order then the others; window counts and lifetime totals."""
    registry, route = _route(clock)
    registry.get("cerebras").force_open()
    openrouter = registry.get("openrouter")
    openrouter.record(openrouter.admit(), "failure", 0.1)
    for outcome in ("success", "success", "failure", "rejected"):
        route.record(outcome)
    route.record_failover("cerebras", "groq")
    route.record_failover("cerebras", "groq")
    assert route.try_hedge()
    route.record_hedge("lost")
    snap = route.snapshot()
    assert (snap.name, snap.base_url) == ("llama", "http://llama.route1.invalid")
    assert [t.provider for t in snap.targets] == ["groq", "openrouter", "cerebras"]
    assert (snap.calls, snap.failovers, snap.hedges) == (4, 2, 1)
    assert snap.requests_total == {"success": 2, "failure": 1, "rejected": 1}
    assert snap.failovers_total == {("cerebras", "groq"): 2}
    assert snap.hedges_total == {"won": 0, "lost": 1}
    assert registry.snapshot().routes == (snap,)
    clock.advance(61.0)
    later = route.snapshot()
    assert (later.calls, later.failovers, later.hedges) == (0, 0, 0)
    assert later.requests_total == snap.requests_total and later.failovers_total == snap.failovers_total


def test_record_refuses_unknown_outcomes(clock: FakeClock) -> None:
    """Only success, failure and rejected are route outcomes; only won and lost hedge results."""
    _registry, route = _route(clock)
    with pytest.raises(ValueError, match="outcome"):
        route.record("throttled")
    with pytest.raises(ValueError, match="result"):
        route.record_hedge("tie")


def test_hedge_budget_is_a_share_of_route_calls(clock: FakeClock) -> None:
    """Hedges started stay <= max(1, ratio x route calls) over the stats window."""
    _registry, route = _route(clock, RoutePolicy(hedge_after_seconds=0.5, hedge_budget_ratio=0.1))
    assert route.try_hedge()  # max(1, ...): one hedge with no calls yet
    assert not route.try_hedge()
    for _ in range(30):
        route.record("success")
    assert route.try_hedge() and route.try_hedge()  # 3 of 30 calls
    assert not route.try_hedge()
    route.record("rejected")  # rejections are route calls too
    assert not route.try_hedge()  # 3.1: still 3
    for _ in range(9):
        route.record("failure")
    assert route.try_hedge()  # 40 calls: 4
    assert not route.try_hedge()
    assert route.snapshot().hedges == 4
    clock.advance(61.0)  # everything left the window: one hedge again
    assert route.try_hedge()
    assert not route.try_hedge()


def test_zero_hedge_ratio_still_allows_one_per_window(clock: FakeClock) -> None:
    """hedge_budget_ratio=0 leaves the floor of one hedge per stats window."""
    _registry, route = _route(clock, RoutePolicy(hedge_budget_ratio=0.0))
    for _ in range(100):
        route.record("success")
    assert route.try_hedge()
    assert not route.try_hedge()


def test_hedge_budget_holds_under_threads(clock: FakeClock) -> None:
    """Threads racing for hedges never take more than the budget."""
    _registry, route = _route(clock, RoutePolicy(hedge_budget_ratio=0.5))
    for _ in range(100):
        route.record("success")
    taken: list[bool] = []
    lock = threading.Lock()

    def race() -> None:
        for _ in range(50):
            got = route.try_hedge()
            with lock:
                taken.append(got)

    threads = [threading.Thread(target=race) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(taken) == 50


def test_a_route_over_providers_rejecting_raises_nothing_itself(clock: FakeClock) -> None:
    """Choosing never takes a permit: a half-open target's one trial slot stays free for the attempt."""
    registry, route = _route(clock)
    cerebras = registry.get("cerebras")
    _trip(cerebras)
    clock.advance(30.0)
    for _ in range(3):
        chosen, _ = route.candidates()
        assert [t.provider for t, _p in chosen][-1] == "cerebras"  # half-open: score 0.5 x (1 - 1) = 0
    permit = cerebras.admit()
    with pytest.raises(CircuitOpenError):
        cerebras.admit()
    assert "cerebras" not in [t.provider for t, _p in route.candidates()[0]]
    cerebras.release(permit)
