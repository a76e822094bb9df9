"""Registry, guard and health as SPEC "Wiring" and "Health" write them."""

from __future__ import annotations

import asyncio

import pytest

import resilience
from resilience import BreakerPolicy, CircuitOpenError, ConfigError, Policy, ProviderRegistry
from resilience.testing import FakeClock


def test_register_get_and_providers(clock: FakeClock) -> None:
    """register returns the Provider; get finds it; providers lists in order."""
    registry = ProviderRegistry(clock=clock)
    openrouter = registry.register("openrouter", hosts=["openrouter.ai"])
    cerebras = registry.register("cerebras", hosts=["api.cerebras.ai"])
    assert registry.get("openrouter") is openrouter
    assert registry.providers() == [openrouter, cerebras]
    assert openrouter.state == "closed"


def test_get_unknown_raises_key_error(clock: FakeClock) -> None:
    """An unknown name is a KeyError naming it."""
    with pytest.raises(KeyError, match="nope"):
        ProviderRegistry(clock=clock).get("nope")


def test_register_twice_is_an_error(clock: FakeClock) -> None:
    """A name registered twice is a ConfigError."""
    registry = ProviderRegistry(clock=clock)
    registry.register("a")
    with pytest.raises(ConfigError, match="already registered"):
        registry.register("a")


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        pytest.param({"max_providers": 0}, "max_providers", id="max-providers"),
        pytest.param({"max_models": -1}, "max_models", id="max-models"),
        pytest.param({"default_policy": BreakerPolicy()}, "default_policy", id="policy-type"),
    ],
)
def test_bad_registry_configuration(kwargs: dict[str, object], field: str) -> None:
    """Bad registry arguments fail at construction naming the field."""
    with pytest.raises(ConfigError, match=field):
        ProviderRegistry(**kwargs)  # type: ignore[arg-type]


def test_host_map_and_wildcards(clock: FakeClock) -> None:
    """Hosts map to providers, case-insensitively, with *.suffix wildcards."""
    registry = ProviderRegistry(clock=clock)
    registry.register("openai", hosts=["API.openai.com"])
    registry.register("azure", hosts=["*.openai.azure.com"])
    assert registry.resolve(host="api.openai.com").name == "openai"
    assert registry.resolve(host="eu.openai.azure.com").name == "azure"
    assert registry.resolve(host="example.org").name == "example.org"


def test_unknown_hosts_fill_free_slots_then_fold_into_other(clock: FakeClock) -> None:
    """Explicit providers always count; auto ones fill the rest, then fold to 'other'."""
    registry = ProviderRegistry(clock=clock, max_providers=3)
    registry.register("a")
    registry.register("b")
    assert registry.resolve(host="c.example").name == "c.example"
    assert registry.resolve(host="d.example").name == "other"
    assert registry.resolve(host="e.example").name == "other"
    assert registry._label_overflows == 2
    registry.register("late")  # explicit registrations are never folded
    assert registry.get("late").name == "late"


def test_explicit_registration_beyond_cap_is_kept(clock: FakeClock) -> None:
    """Explicit registrations are allowed past max_providers."""
    registry = ProviderRegistry(clock=clock, max_providers=1)
    registry.register("a")
    registry.register("b")
    assert [p.name for p in registry.providers()] == ["a", "b"]


def test_models_fold_into_other_past_the_cap(clock: FakeClock) -> None:
    """Model names beyond max_models per provider fold into 'other' and are counted."""
    registry = ProviderRegistry(clock=clock, max_models=2)
    registry.register("p")
    for model in ("m1", "m2", "m3", "m4"):
        with registry.guard("p", model=model):
            pass
    models = {m.model: m.window.calls for m in registry.get("p").snapshot().models}
    assert models == {"m1": 1, "m2": 1, "other": 2}
    assert registry.get("p")._model_overflows == 2


def test_provider_policy_overrides_only_named_parts(clock: FakeClock) -> None:
    """cerebras' own retry policy keeps the default breaker, as in SPEC Wiring."""
    registry = ProviderRegistry(
        Policy(breaker=BreakerPolicy(minimum_calls=10), retry=resilience.RetryPolicy(attempts=3)), clock=clock
    )
    cerebras = registry.register("cerebras", policy=Policy(retry=resilience.RetryPolicy(attempts=1)))
    assert cerebras.policy.retry.attempts == 1
    assert cerebras.policy.breaker.minimum_calls == 10


def test_guard_records_success_and_failure(clock: FakeClock) -> None:
    """guard() records a success on clean exit and a failure on an exception, which propagates."""
    registry = ProviderRegistry(clock=clock)
    with registry.guard("redis"):
        clock.advance(0.2)
    with pytest.raises(ValueError, match="x"), registry.guard("redis"):
        clock.advance(0.2)
        raise ValueError("x")
    snap = registry.get("redis").snapshot()
    assert (snap.window.successes, snap.window.failures) == (1, 1)
    assert snap.window.p50 == pytest.approx(0.2, rel=0.05)


def test_guards_by_name_are_one_per_call(clock: FakeClock) -> None:
    """Two guards of one provider open at once keep their own start; each is a Guard of that provider."""
    registry = ProviderRegistry(clock=clock)
    registry.register("a", hosts=["a.test"])
    outer = registry.guard("a")
    with outer:
        clock.advance(0.3)
        with registry.guard("a") as inner:
            assert inner is not outer and isinstance(inner, resilience.Guard)
            clock.advance(0.1)
    snap = registry.get("a").snapshot()
    assert snap.window.successes == 2
    assert snap.duration_sum == pytest.approx(0.5)  # 0.1 s and 0.4 s, each from its own start


def test_guard_of_a_model_or_a_provider_object_records_in_its_windows(clock: FakeClock) -> None:
    """guard(name, model) counts in the model's window too; guard(provider) is that provider's guard."""
    registry = ProviderRegistry(clock=clock, max_models=2)
    provider = registry.register("a")
    for model in ("m1", "m1", "m2", "m3", "m4"):  # m3 and m4 fold into "other"
        with registry.guard("a", model=model):
            clock.advance(0.1)
    with registry.guard(provider):
        clock.advance(0.1)
    other = ProviderRegistry(clock=clock).register("a")  # another registry's provider of the same name
    with registry.guard(other):
        clock.advance(0.1)
    assert provider.snapshot().window.successes == 6
    assert other.snapshot().window.successes == 1
    models = {m.model: m.window.successes for m in registry.snapshot().providers[0].models}
    assert models == {"m1": 2, "m2": 1, "other": 2}
    assert len(registry._model_guards) == 3  # one class per model window, not per call or name


def test_a_guard_is_made_by_the_registry_not_by_calling_guard() -> None:
    """Guard() itself is refused with a TypeError that says how to get one."""
    with pytest.raises(TypeError, match=r"registry\.guard"):
        resilience.Guard()


def test_guard_classifies_exceptions_by_policy(clock: FakeClock) -> None:
    """exception_outcome can call an exception a client error (not a breaker failure)."""
    policy = Policy(exception_outcome=lambda exc: "client_error" if isinstance(exc, KeyError) else None)
    registry = ProviderRegistry(policy, clock=clock)
    with pytest.raises(KeyError), registry.guard("cache"):
        raise KeyError("missing")
    assert registry.get("cache").snapshot().window.client_errors == 1


def test_guard_rejects_when_open(clock: FakeClock) -> None:
    """An open breaker rejects at the with statement; the body never runs."""
    registry = ProviderRegistry(Policy(breaker=BreakerPolicy(minimum_calls=1)), clock=clock)
    with pytest.raises(RuntimeError), registry.guard("sdk"):
        raise RuntimeError
    ran = False
    with pytest.raises(CircuitOpenError), registry.guard("sdk"):
        ran = True
    assert not ran


@pytest.mark.anyio
async def test_async_guard_and_cancellation_releases(clock: FakeClock) -> None:
    """async with works; a cancelled trial frees its half-open slot without counting."""
    registry = ProviderRegistry(Policy(breaker=BreakerPolicy(minimum_calls=1, open_seconds=5)), clock=clock)
    with pytest.raises(RuntimeError):
        async with registry.guard("sdk"):
            raise RuntimeError
    clock.advance(5)

    async def trial() -> None:
        async with registry.guard("sdk"):
            await asyncio.sleep(3600)

    task = asyncio.ensure_future(trial())
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert registry.get("sdk").state == "half_open"
    async with registry.guard("sdk"):
        pass
    assert registry.get("sdk").state == "closed"


def test_health_numbers_follow_spec(clock: FakeClock) -> None:
    """error_rate, availability, health_score and status as SPEC Health defines them."""
    registry = ProviderRegistry(
        Policy(breaker=BreakerPolicy(minimum_calls=100), latency_slo_seconds=1.0), clock=clock
    )
    provider = registry.register("p")
    for outcome in ["success"] * 7 + ["failure", "throttled", "client_error"]:
        permit = provider.admit()
        provider.record(permit, outcome, 0.5)
    snap = provider.snapshot()
    assert snap.error_rate == pytest.approx(0.2)
    assert snap.availability == 1.0
    assert snap.health_score == pytest.approx(0.8)
    assert snap.status == "healthy"


def test_latency_factor_lowers_the_score(clock: FakeClock) -> None:
    """p95 at 2.5x the SLO halves the score."""
    registry = ProviderRegistry(Policy(latency_slo_seconds=2.0), clock=clock)
    provider = registry.register("p")
    for _ in range(10):
        provider.record(provider.admit(), "success", 5.0)
    snap = provider.snapshot()
    assert snap.window.p95 is not None
    assert snap.window.p95 == pytest.approx(5.0, rel=0.05)
    assert snap.health_score == pytest.approx(1 - (snap.window.p95 - 2.0) / 6.0)
    assert snap.status == "degraded"


def test_open_and_half_open_health(clock: FakeClock) -> None:
    """Open: availability 0, score 0, unhealthy. Half-open: score halves, degraded."""
    registry = ProviderRegistry(Policy(breaker=BreakerPolicy(minimum_calls=1, open_seconds=5)), clock=clock)
    provider = registry.register("p")
    provider.record(provider.admit(), "failure", 0.1)
    snap = provider.snapshot()
    assert (snap.state, snap.availability, snap.health_score, snap.status) == ("open", 0.0, 0.0, "unhealthy")
    clock.advance(5)
    snap = provider.snapshot()
    assert (snap.state, snap.availability, snap.status) == ("half_open", 1.0, "degraded")
    assert snap.health_score == pytest.approx(0.5 * (1 - 1.0))


def test_no_calls_means_state_factor_alone(clock: FakeClock) -> None:
    """Without calls the score is the state factor: 1 closed, 0.5 half-open."""
    registry = ProviderRegistry(clock=clock)
    snap = registry.register("idle").snapshot()
    assert (snap.health_score, snap.status, snap.error_rate) == (1.0, "healthy", 0.0)


def test_status_thresholds_are_configurable(clock: FakeClock) -> None:
    """healthy_score and degraded_score move the status boundaries."""
    registry = ProviderRegistry(Policy(healthy_score=0.95, degraded_score=0.9), clock=clock)
    provider = registry.register("p")
    for outcome in ["success"] * 9 + ["failure"]:
        provider.record(provider.admit(), outcome, 0.1)
    assert provider.snapshot().status == "degraded"


def test_registry_snapshot_and_summary(clock: FakeClock) -> None:
    """snapshot() carries every provider, a UTC timestamp and the summary counts."""
    registry = ProviderRegistry(Policy(breaker=BreakerPolicy(minimum_calls=1)), clock=clock)
    registry.register("up")
    down = registry.register("down")
    down.record(down.admit(), "failure", 0.1)
    snap = registry.snapshot()
    offset = snap.timestamp.utcoffset()
    assert offset is not None and offset.total_seconds() == 0
    assert [p.name for p in snap.providers] == ["up", "down"]
    summary = snap.summary
    assert (summary.total, summary.healthy, summary.unhealthy, summary.open_breakers) == (2, 1, 1, 1)


def test_stats_window_slides_but_counters_do_not(clock: FakeClock) -> None:
    """The stats window forgets after its span; lifetime counters keep counting."""
    registry = ProviderRegistry(clock=clock)
    with registry.guard("p"):
        pass
    clock.advance(61)
    snap = registry.get("p").snapshot()
    assert snap.window.calls == 0
    assert snap.requests_total["success"] == 1


def test_invalid_cost_is_counted_not_raised(clock: FakeClock) -> None:
    """A NaN or negative cost never fails the call: unknown cost, counted."""
    registry = ProviderRegistry(clock=clock)
    provider = registry.register("p")
    provider.record(provider.admit(), "success", 0.1, cost=float("nan"))
    provider.record(provider.admit(), "success", 0.1, cost=-1.0)
    provider.record(provider.admit(), "success", 0.1, cost=0.002)
    snap = provider.snapshot()
    assert snap.window.unknown_cost == 2
    assert snap.cost_total == pytest.approx(0.002)
    assert provider.errors["invalid_cost"] == 2


def test_overlong_names_fold_into_other_and_are_counted(clock: FakeClock) -> None:
    """A name longer than a label may be folds into 'other' and counts as an overflow."""
    registry = ProviderRegistry(clock=clock)
    assert registry.resolve("x" * 500).name == "other"
    assert registry._label_overflows == 1


def test_a_clock_stepping_back_cannot_blind_the_breaker() -> None:
    """A wall clock stepped back by more than the window (NTP, VM restore): failures still count and trip."""
    now = [10_000.0]
    registry = ProviderRegistry(
        Policy(breaker=BreakerPolicy(minimum_calls=4, failure_rate_threshold=0.5, window_seconds=60.0)),
        clock=lambda: now[0],
    )
    provider = registry.register("p")
    provider.record(provider.admit(), "success", 0.01)
    now[0] -= 3600.0  # one hour back
    for _ in range(3):  # 3 failures in 4 calls: 75 % >= 50 %
        provider.record(provider.admit(), "failure", 0.01)
        now[0] += 0.5
    assert provider.state == "open"
    assert provider.snapshot().window.failures == 3
    now[0] += 29.0  # time runs on from the latest reading: still within open_seconds (30 s)
    with pytest.raises(CircuitOpenError):
        provider.admit()
    now[0] += 1.0
    provider.release(provider.admit())  # the trial after open_seconds on that reading
    assert provider.state == "half_open"
