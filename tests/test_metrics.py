"""The Prometheus collector: SPEC names, exact values through an outage, registration rules."""

from __future__ import annotations

import logging

import httpx
import pytest
from fastapi import FastAPI
from prometheus_client import REGISTRY, CollectorRegistry, generate_latest, make_asgi_app
from prometheus_client.parser import text_string_to_metric_families

import resilience
from resilience._export.metrics import ResilienceCollector
from resilience.testing import FakeClock

STATES = ("closed", "open", "half_open", "forced_open", "disabled")


def _registry(clock: FakeClock, **kwargs: object) -> resilience.ProviderRegistry:
    policy = resilience.Policy(
        breaker=resilience.BreakerPolicy(failure_rate_threshold=0.5, minimum_calls=10, open_seconds=30.0)
    )
    return resilience.ProviderRegistry(policy, clock=clock, **kwargs)  # type: ignore[arg-type]


def _call(provider: resilience.Provider, outcome: str, duration: float = 0.1, **kwargs: object) -> None:
    provider.record(provider.admit(), outcome, duration, **kwargs)  # type: ignore[arg-type]


def _value(prom: CollectorRegistry, name: str, **labels: str) -> float | None:
    return prom.get_sample_value(name, labels)


def _one_hot(prom: CollectorRegistry, provider: str, ns: str = "gatewayz") -> dict[str, float | None]:
    return {
        s: _value(prom, f"{ns}_circuit_breaker_state", provider=provider, state=s) for s in STATES
    }


def test_new_provider_shows_closed_from_first_scrape(clock: FakeClock) -> None:
    """A provider with no calls yet is exported as closed, available, score 1."""
    registry = _registry(clock)
    registry.register("openrouter")
    prom = CollectorRegistry()
    registry.register_metrics(prom)
    assert _one_hot(prom, "openrouter") == {"closed": 1, "open": 0, "half_open": 0, "forced_open": 0,
                                            "disabled": 0}
    assert _value(prom, "provider_availability", provider="openrouter") == 1.0
    assert _value(prom, "provider_error_rate", provider="openrouter") == 0.0
    assert _value(prom, "gatewayz_provider_health_score", provider="openrouter") == 1.0
    for outcome in resilience.OUTCOMES:
        assert _value(prom, "gatewayz_provider_requests_total", provider="openrouter", outcome=outcome) == 0


def test_scripted_outage_and_recovery_show_exact_values(clock: FakeClock) -> None:
    """An outage trips the breaker: availability 0, error rate 0.5, score 0, open; recovery closes."""
    registry = _registry(clock)
    provider = registry.register("openrouter")
    prom = CollectorRegistry()
    registry.register_metrics(prom)
    for outcome in ["success"] * 6 + ["failure"] * 6:  # 6/12 failures: trips at the 12th call
        _call(provider, outcome)
    with pytest.raises(resilience.CircuitOpenError):
        _call(provider, "success")
    assert _value(prom, "provider_availability", provider="openrouter") == 0.0
    assert _value(prom, "provider_error_rate", provider="openrouter") == 0.5
    assert _value(prom, "gatewayz_provider_health_score", provider="openrouter") == 0.0
    assert _one_hot(prom, "openrouter") == {"closed": 0, "open": 1, "half_open": 0, "forced_open": 0,
                                            "disabled": 0}
    assert _value(prom, "gatewayz_provider_requests_total", provider="openrouter", outcome="rejected") == 1
    clock.advance(30.0)
    assert _one_hot(prom, "openrouter")["half_open"] == 1
    assert _value(prom, "provider_availability", provider="openrouter") == 1.0
    _call(provider, "success")  # the trial closes it
    clock.advance(61.0)  # and the outage leaves the stats window
    assert _one_hot(prom, "openrouter") == {"closed": 1, "open": 0, "half_open": 0, "forced_open": 0,
                                            "disabled": 0}
    assert _value(prom, "provider_availability", provider="openrouter") == 1.0
    assert _value(prom, "provider_error_rate", provider="openrouter") == 0.0
    assert _value(prom, "gatewayz_provider_health_score", provider="openrouter") == 1.0
    transitions = "gatewayz_circuit_breaker_transitions_total"
    for old, new in (("closed", "open"), ("open", "half_open"), ("half_open", "closed")):
        assert _value(prom, transitions, provider="openrouter", from_state=old, to_state=new) == 1


def test_counters_stay_monotonic_when_the_window_slides(clock: FakeClock) -> None:
    """Lifetime counters keep their totals after the stats window has emptied."""
    registry = _registry(clock)
    provider = registry.register("openrouter")
    prom = CollectorRegistry()
    registry.register_metrics(prom)
    _call(provider, "success", cost=0.25)
    _call(provider, "failure")
    _call(provider, "throttled")
    _call(provider, "client_error", cost=0.5)
    provider.count_retry("status_503")
    before = generate_latest(prom).decode()
    clock.advance(600.0)
    assert _value(prom, "provider_error_rate", provider="openrouter") == 0.0  # the window is empty
    requests = "gatewayz_provider_requests_total"
    for outcome in ("success", "failure", "throttled", "client_error"):
        assert _value(prom, requests, provider="openrouter", outcome=outcome) == 1
    assert _value(prom, "gatewayz_cost_by_provider_total", provider="openrouter") == 0.75
    assert _value(prom, "gatewayz_provider_retries_total", provider="openrouter", reason="status_503") == 1
    assert _value(prom, "gatewayz_provider_request_duration_seconds_count", provider="openrouter") == 4
    counters = [line for line in before.splitlines() if "_total{" in line or "_count{" in line]
    after = generate_latest(prom).decode().splitlines()
    assert counters and all(line in after for line in counters)


def test_duration_histogram_is_exact(clock: FakeClock) -> None:
    """Buckets are cumulative, the count is the +Inf bucket, the sum is the durations' sum."""
    registry = _registry(clock)
    provider = registry.register("p")
    prom = CollectorRegistry()
    registry.register_metrics(prom)
    for duration in (0.003, 0.2, 7.0, 500.0):
        _call(provider, "success", duration)
    _call(provider, "client_error", 0.2)
    name = "gatewayz_provider_request_duration_seconds"
    expected = {"0.005": 1, "0.25": 3, "5.0": 3, "10.0": 4, "100.0": 4, "+Inf": 5}
    for le, count in expected.items():
        assert _value(prom, f"{name}_bucket", provider="p", le=le) == count
    assert _value(prom, f"{name}_count", provider="p") == 5
    assert _value(prom, f"{name}_sum", provider="p") == pytest.approx(507.403)


def test_rejections_are_not_timed(clock: FakeClock) -> None:
    """A call rejected by an open breaker is counted as rejected, not in the histogram."""
    registry = _registry(clock)
    provider = registry.register("p")
    provider.force_open()
    prom = CollectorRegistry()
    registry.register_metrics(prom)
    with pytest.raises(resilience.CircuitOpenError):
        provider.admit()
    assert _value(prom, "gatewayz_provider_requests_total", provider="p", outcome="rejected") == 1
    assert _value(prom, "gatewayz_provider_request_duration_seconds_count", provider="p") == 0
    assert _one_hot(prom, "p")["forced_open"] == 1
    assert _value(prom, "provider_availability", provider="p") == 0.0


def test_namespace_renames_only_the_gatewayz_names(clock: FakeClock) -> None:
    """namespace='acme' renames gatewayz_* but keeps provider_availability and provider_error_rate."""
    registry = _registry(clock)
    registry.register("p")
    prom = CollectorRegistry()
    registry.register_metrics(prom, namespace="acme")
    text = generate_latest(prom).decode()
    assert "gatewayz" not in text
    assert _value(prom, "acme_provider_health_score", provider="p") == 1.0
    assert _one_hot(prom, "p", ns="acme")["closed"] == 1
    assert _value(prom, "acme_resilience_label_overflows_total", label="provider", provider="other") == 0
    assert _value(prom, "provider_availability", provider="p") == 1.0
    assert _value(prom, "provider_error_rate", provider="p") == 0.0


@pytest.mark.parametrize(
    "namespace",
    [
        pytest.param("9lives", id="leading-digit"),
        pytest.param("my-gateway", id="dash"),
        pytest.param("a b", id="space"),
        pytest.param("ns\n", id="newline"),
        pytest.param(5, id="not-a-string"),
    ],
)
def test_bad_namespace_is_a_config_error(clock: FakeClock, namespace: object) -> None:
    """A namespace that is not a metric name prefix fails at construction, naming the field."""
    with pytest.raises(resilience.ConfigError, match="namespace"):
        ResilienceCollector(_registry(clock), namespace=namespace)  # type: ignore[arg-type]


def test_bad_max_model_series_is_a_config_error(clock: FakeClock) -> None:
    """max_model_series must be a non-negative integer."""
    with pytest.raises(resilience.ConfigError, match="max_model_series"):
        ResilienceCollector(_registry(clock), max_model_series=-1)


def test_registering_twice_is_a_clear_error(clock: FakeClock) -> None:
    """The same registry twice into one Prometheus registry raises and leaves one series each."""
    registry = _registry(clock)
    registry.register("p")
    prom = CollectorRegistry()
    collector = registry.register_metrics(prom)
    with pytest.raises(resilience.ConfigError, match="already registered"):
        registry.register_metrics(prom)
    with pytest.raises(resilience.ConfigError, match="already registered"):
        registry.register_metrics(prom, namespace="other")
    with pytest.raises(resilience.ConfigError):
        collector.register(prom)
    lines = generate_latest(prom).decode().splitlines()
    assert sum(line.startswith("provider_availability{") for line in lines) == 1
    assert registry._collectors == [collector]


def test_two_registries_into_one_prometheus_registry_raise(clock: FakeClock) -> None:
    """A second ProviderRegistry clashes on the metric names, whatever its namespace."""
    prom = CollectorRegistry()
    _registry(clock).register_metrics(prom)
    for namespace in ("gatewayz", "second"):
        with pytest.raises(resilience.ConfigError, match="provider_availability"):
            _registry(clock).register_metrics(prom, namespace=namespace)


def test_one_registry_into_two_prometheus_registries(clock: FakeClock) -> None:
    """Separate Prometheus registries may export the same providers."""
    registry = _registry(clock)
    registry.register("p")
    first, second = CollectorRegistry(), CollectorRegistry()
    registry.register_metrics(first)
    registry.register_metrics(second)
    assert _value(first, "provider_availability", provider="p") == 1.0
    assert _value(second, "provider_availability", provider="p") == 1.0


def test_default_prometheus_registry_and_unregister(clock: FakeClock) -> None:
    """register_metrics() without arguments uses prometheus_client.REGISTRY; unregister frees it."""
    registry = _registry(clock)
    registry.register("default-reg-test")
    collector = registry.register_metrics()
    try:
        assert _value(REGISTRY, "provider_availability", provider="default-reg-test") == 1.0
    finally:
        collector.unregister()
    assert REGISTRY.get_sample_value("provider_availability", {"provider": "default-reg-test"}) is None
    collector.register()  # allowed again once unregistered
    collector.unregister()


@pytest.mark.parametrize(
    "name",
    [
        pytest.param('evil"} 1\nfake_metric{x="', id="quote-newline-injection"),
        pytest.param("back\\slash\\", id="backslashes"),
        pytest.param("ünïcödé 模型", id="unicode"),
    ],
)
def test_hostile_provider_names_are_escaped(clock: FakeClock, name: str) -> None:
    """A provider name with quotes, newlines or backslashes round-trips and injects no series."""
    registry = _registry(clock)
    registry.register(name)
    prom = CollectorRegistry()
    registry.register_metrics(prom)
    text = generate_latest(prom).decode()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert "fake_metric" not in families
    values = {s.labels["provider"] for s in families["provider_availability"].samples}
    assert values == {name}
    assert _value(prom, "provider_availability", provider=name) == 1.0


def test_a_failing_provider_does_not_hide_the_others(
    clock: FakeClock, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A snapshot failure of one provider is logged and counted; the others are exported."""
    registry = _registry(clock)
    registry.register("good")
    bad = registry.register("bad")
    registry.register("also-good")

    def broken() -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(bad, "snapshot", broken)
    prom = CollectorRegistry()
    registry.register_metrics(prom)
    with caplog.at_level(logging.WARNING, logger="resilience"):
        text = generate_latest(prom).decode()
    samples = [s for f in text_string_to_metric_families(text) for s in f.samples]
    exported = {s.labels.get("provider") for s in samples if s.name == "provider_availability"}
    assert exported == {"good", "also-good"}
    assert [s.value for s in samples if s.labels.get("kind") == "collect"] == [1]  # scrape 1
    for name in ("good", "also-good"):
        assert _value(prom, "gatewayz_circuit_breaker_state", provider=name, state="closed") == 1.0
    assert _value(prom, "gatewayz_resilience_errors_total", provider="bad", kind="collect") == 4  # scrape 4
    assert "bad" in caplog.text and "boom" in caplog.text


def test_label_overflows_and_instrumentation_errors_are_exported(clock: FakeClock) -> None:
    """Folded provider and model names and bad cost values are counted."""
    registry = _registry(clock, max_providers=2, max_models=1)
    provider = registry.register("p")
    registry.resolve(host="a.example")  # fills the last slot
    registry.resolve(host="b.example")  # folds into other
    registry.resolve(host="c.example")
    provider.model_window("m1")
    provider.model_window("m2")  # folds into other
    _call(provider, "success", cost=float("nan"))
    prom = CollectorRegistry()
    registry.register_metrics(prom)
    overflows = "gatewayz_resilience_label_overflows_total"
    assert _value(prom, overflows, label="provider", provider="other") == 2
    assert _value(prom, overflows, label="model", provider="p") == 1
    assert _value(prom, "gatewayz_resilience_errors_total", provider="p", kind="invalid_cost") == 1
    assert {p.name for p in registry.providers()} == {"p", "a.example", "other"}
    assert _value(prom, "provider_availability", provider="b.example") is None


def test_model_metrics_are_opt_in_and_capped(clock: FakeClock) -> None:
    """Per-model gauges appear only with model_metrics=True, at most max_model_series pairs."""
    registry = _registry(clock)
    provider = registry.register("p")
    for model in ("a", "b", "c"):
        provider.record(provider.admit(), "failure" if model == "a" else "success", 0.2,
                        model=provider.model_window(model), cost=0.1)
    off = CollectorRegistry()
    registry.register_metrics(off)
    assert not [f for f in off.collect() if "_model_" in f.name]
    on = CollectorRegistry()
    registry.register_metrics(on, model_metrics=True)
    assert _value(on, "gatewayz_model_calls", provider="p", model="a") == 1
    assert _value(on, "gatewayz_model_error_rate", provider="p", model="a") == 1.0
    assert _value(on, "gatewayz_model_cost_usd", provider="p", model="b") == pytest.approx(0.1)
    p95 = _value(on, "gatewayz_model_latency_seconds", provider="p", model="c", quantile="0.95")
    assert p95 == pytest.approx(0.2, rel=0.06)
    assert _value(on, "gatewayz_resilience_model_series_dropped") == 0
    capped = CollectorRegistry()
    ResilienceCollector(registry, namespace="capped", model_metrics=True, max_model_series=2).register(capped)
    calls = [f for f in capped.collect() if f.name == "capped_model_calls"]
    models = {s.labels["model"] for f in calls for s in f.samples}
    assert models == {"a", "b"}
    assert _value(capped, "capped_resilience_model_series_dropped") == 1


def test_scrapes_do_not_change_the_numbers(clock: FakeClock) -> None:
    """Collecting reads state only: repeated scrapes at one instant are identical."""
    registry = _registry(clock)
    provider = registry.register("p")
    _call(provider, "failure", cost=0.3)
    prom = CollectorRegistry()
    registry.register_metrics(prom, model_metrics=True)
    first = generate_latest(prom)
    assert all(generate_latest(prom) == first for _ in range(3))
    assert provider.snapshot().requests_total["failure"] == 1


def test_describe_names_every_family_collect_yields(clock: FakeClock) -> None:
    """describe() lists the same families collect() yields, so clashes are found at registration."""
    registry = _registry(clock)
    provider = registry.register("p")
    provider.count_retry("status_429")
    collector = ResilienceCollector(registry, model_metrics=True)
    assert [m.name for m in collector.describe()] == [m.name for m in collector.collect()]
    assert all(not m.samples for m in collector.describe())


@pytest.mark.anyio
async def test_fastapi_serves_the_metrics_through_make_asgi_app(clock: FakeClock) -> None:
    """A FastAPI app mounting make_asgi_app(registry=...) serves the collector's families."""
    registry = _registry(clock)
    _call(registry.register("openrouter"), "success", cost=0.01)
    prom = CollectorRegistry()
    registry.register_metrics(prom)
    app = FastAPI()
    app.mount("/metrics", make_asgi_app(registry=prom))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
        response = await client.get("/metrics/")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(response.text)}
    assert families["gatewayz_cost_by_provider"].samples[0].value == 0.01
    assert families["gatewayz_circuit_breaker_state"].type == "gauge"
    assert families["gatewayz_provider_request_duration_seconds"].type == "histogram"


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        pytest.param("application/json",
                     b'{"usage": {"prompt_tokens": 3, "completion_tokens": 5, "cost": 0.5}}',
                     id="openai-json"),
        pytest.param("text/event-stream",
                     b'event: message_start\ndata: {"type": "message_start", "message": {"usage": '
                     b'{"input_tokens": 3, "output_tokens": 1}}}\n\n'
                     b'event: message_delta\n'
                     b'data: {"type": "message_delta", "usage": {"output_tokens": 5}}\n\n',
                     id="anthropic-sse"),
    ],
)
def test_tokens_counter_adds_prompt_and_completion_tokens(content_type: str, body: bytes) -> None:
    """gatewayz_provider_tokens_total{provider, kind} counts usage tokens (OpenAI and Anthropic names)."""
    registry = resilience.ProviderRegistry()
    registry.register("p", hosts=["p.test"])
    prom = CollectorRegistry()
    registry.register_metrics(prom)
    upstream = httpx.MockTransport(lambda request: httpx.Response(
        200, headers={"content-type": content_type}, stream=httpx.ByteStream(body)))
    with httpx.Client(transport=resilience.ResilientTransport(registry, transport=upstream)) as client:
        for _ in range(2):
            with client.stream("POST", "https://p.test/v1", json={"model": "m"}) as response:
                response.read()
    assert _value(prom, "gatewayz_provider_tokens_total", provider="p", kind="prompt") == 6
    assert _value(prom, "gatewayz_provider_tokens_total", provider="p", kind="completion") == 10
    assert registry.get("p").snapshot().tokens_total == (6, 10)


# -- routes and time to first token (SPEC part two) ------------------------------------------


def _routed(clock: FakeClock) -> tuple[resilience.ProviderRegistry, resilience.Route]:
    registry = _registry(clock)
    registry.register("cerebras")
    registry.register("openrouter")
    route = registry.route("llama-3.3-70b", [
        resilience.Target("cerebras", base_url="https://api.cerebras.ai/v1"),
        resilience.Target("openrouter", base_url="https://openrouter.ai/api/v1"),
    ])
    return registry, route


def test_route_families_start_at_zero(clock: FakeClock) -> None:
    """Once a route exists, every outcome and hedge result is exported at 0; failovers have no series yet."""
    registry, _route = _routed(clock)
    prom = CollectorRegistry()
    registry.register_metrics(prom)
    for outcome in ("success", "failure", "rejected"):
        assert _value(prom, "gatewayz_route_requests_total", route="llama-3.3-70b", outcome=outcome) == 0
    for result in ("won", "lost"):
        assert _value(prom, "gatewayz_route_hedges_total", route="llama-3.3-70b", result=result) == 0
    text = generate_latest(prom).decode()
    assert "# TYPE gatewayz_route_failovers_total counter" in text
    assert "gatewayz_route_failovers_total{" not in text


def test_route_counters_count_since_start(clock: FakeClock) -> None:
    """Route calls, failovers and hedges are lifetime counters: they outlive the stats window."""
    registry, route = _routed(clock)
    prom = CollectorRegistry()
    registry.register_metrics(prom, namespace="acme")
    route.record("success")
    route.record("failure")
    route.record("rejected")
    route.record("success")
    route.record_failover("cerebras", "openrouter")
    route.record_failover("cerebras", "openrouter")
    route.record_failover("openrouter", "cerebras")
    route.record_hedge("won")
    route.record_hedge("lost")
    route.record_hedge("lost")
    clock.advance(600.0)
    requests, failovers = "acme_route_requests_total", "acme_route_failovers_total"
    assert _value(prom, requests, route="llama-3.3-70b", outcome="success") == 2
    assert _value(prom, requests, route="llama-3.3-70b", outcome="failure") == 1
    assert _value(prom, requests, route="llama-3.3-70b", outcome="rejected") == 1
    route_name = "llama-3.3-70b"
    assert _value(prom, failovers, route=route_name, from_provider="cerebras", to_provider="openrouter") == 2
    assert _value(prom, failovers, route=route_name, from_provider="openrouter", to_provider="cerebras") == 1
    assert _value(prom, "acme_route_hedges_total", route="llama-3.3-70b", result="won") == 1
    assert _value(prom, "acme_route_hedges_total", route="llama-3.3-70b", result="lost") == 2
    assert _value(prom, "gatewayz_route_requests_total", route="llama-3.3-70b", outcome="success") is None


def test_ttft_histogram_is_present_with_no_data(clock: FakeClock) -> None:
    """With no streamed attempt the TTFT histogram has the duration histogram's buckets, all 0."""
    registry = _registry(clock)
    registry.register("p")
    prom = CollectorRegistry()
    registry.register_metrics(prom)
    families = {f.name: f for f in text_string_to_metric_families(generate_latest(prom).decode())}
    ttft = families["gatewayz_provider_time_to_first_token_seconds"]
    duration = families["gatewayz_provider_request_duration_seconds"]
    assert ttft.type == "histogram"
    les = [s.labels["le"] for s in ttft.samples if s.name.endswith("_bucket")]
    assert les == [s.labels["le"] for s in duration.samples if s.name.endswith("_bucket")]
    assert all(s.value == 0 for s in ttft.samples)


def test_ttft_histogram_is_exact(clock: FakeClock) -> None:
    """TTFT buckets are cumulative, the count is the +Inf bucket, the sum the TTFTs' sum."""
    registry = _registry(clock)
    provider = registry.register("p")
    prom = CollectorRegistry()
    registry.register_metrics(prom, namespace="acme")
    for ttft in (0.003, 0.2, 7.0):
        provider.record(provider.admit(), "success", 10.0, ttft=ttft)
    name = "acme_provider_time_to_first_token_seconds"
    assert _value(prom, name + "_bucket", provider="p", le="0.005") == 1
    assert _value(prom, name + "_bucket", provider="p", le="0.25") == 2
    assert _value(prom, name + "_bucket", provider="p", le="10.0") == 3
    assert _value(prom, name + "_count", provider="p") == 3
    assert _value(prom, name + "_sum", provider="p") == pytest.approx(7.203)


def test_deadline_exceeded_counter_starts_at_zero_and_counts(clock: FakeClock) -> None:
    """gatewayz_provider_deadline_exceeded_total{provider} is 0 from the first scrape and counts each cut."""
    registry = _registry(clock)
    provider = registry.register("openrouter")
    prom = CollectorRegistry()
    registry.register_metrics(prom, namespace="gw")
    name = "gw_provider_deadline_exceeded_total"
    assert _value(prom, name, provider="openrouter") == 0
    provider.count_deadline_exceeded()
    provider.count_deadline_exceeded()
    assert _value(prom, name, provider="openrouter") == 2


TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"


def test_duration_histogram_carries_trace_id_exemplars_in_openmetrics(clock: FakeClock) -> None:
    """Each duration bucket shows its latest traced attempt as a trace_id exemplar (OpenMetrics only)."""
    from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics
    from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics

    registry = _registry(clock)
    provider = registry.register("openrouter")
    prom = CollectorRegistry()
    registry.register_metrics(prom)
    _call(provider, "success", 0.2)
    provider.note_exemplar(0.2, "0" * 31 + "1")
    provider.note_exemplar(0.2, TRACE)  # the latest in a bucket wins
    _call(provider, "failure", 3.0)
    provider.note_exemplar(3.0, "f" * 32)
    text = generate_openmetrics(prom).decode()  # type: ignore[no-untyped-call]  # untyped in prometheus_client
    exemplars = {}
    for family in parse_openmetrics(text):  # type: ignore[no-untyped-call]  # untyped in prometheus_client
        if family.name == "gatewayz_provider_request_duration_seconds":
            exemplars = {s.labels["le"]: s.exemplar for s in family.samples if s.exemplar is not None}
    assert set(exemplars) == {"0.25", "5.0"}
    assert exemplars["0.25"].labels == {"trace_id": TRACE}
    assert exemplars["0.25"].value == 0.2
    assert exemplars["5.0"].labels == {"trace_id": "f" * 32}
    assert exemplars["0.25"].timestamp is not None
    plain = generate_latest(prom).decode()  # the classic text format has no exemplars
    assert TRACE not in plain
    bucket = "gatewayz_provider_request_duration_seconds_bucket"
    assert _value(prom, bucket, provider="openrouter", le="0.25") == 1


def test_exemplars_keep_each_providers_buckets_apart(clock: FakeClock) -> None:
    """Two providers' exemplars land on their own buckets, untraced providers carry none."""
    from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics

    registry = _registry(clock)
    traced, untraced = registry.register("openrouter"), registry.register("groq")
    prom = CollectorRegistry()
    registry.register_metrics(prom, model_metrics=True)
    _call(traced, "success", 0.004)
    _call(untraced, "success", 0.004)
    traced.note_exemplar(0.004, TRACE)
    text = generate_openmetrics(prom).decode()  # type: ignore[no-untyped-call]  # untyped in prometheus_client
    lines = [line for line in text.splitlines() if "trace_id" in line]
    assert lines == [
        'gatewayz_provider_request_duration_seconds_bucket{le="0.005",provider="openrouter"} 1.0 '
        f'# {{trace_id="{TRACE}"}} 0.004 {traced.snapshot().duration_exemplars[0][2]}'  # type: ignore[index]
    ]
