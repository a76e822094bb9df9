"""The shipped Grafana dashboard: every PromQL expression parses, names only exported metrics, and
the error panels show 0, not "No data", on a healthy system (evaluated by ``promtool test rules``)."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from system_tools import require_binary

import resilience
import resilience.redis as rredis
from resilience._core.quota import Limits
from resilience.testing import FakeClock

DASHBOARD = Path(__file__).resolve().parent.parent / "resilience" / "contrib" / "grafana-dashboard.json"
GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$__range": "6h", "$__interval": "1m", "$provider": ".*"}
KEYWORDS = {"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring", "group_left",
            "group_right", "inf", "nan", "Inf", "NaN"}
PANELS = {"Availability", "Error rate", "Health score", "Breaker state", "Cost by provider (USD/hour)",
          "Request rate by outcome", "Latency quantiles", "Redis operations", "Redis errors and rejections",
          "Redis latency", "Rate-limit quota remaining", "Time to first token quantiles",
          "Route requests by outcome", "Route failovers", "Route hedges"}


def _dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())  # type: ignore[no-any-return]


def _panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for panel in dashboard["panels"]:
        out.append(panel)
        out.extend(panel.get("panels", []))
    return out


def _exprs(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """(where, PromQL) of every panel target and query variable."""
    exprs = [
        (f"panel {panel['id']} {panel['title']!r} {target['refId']}", target["expr"])
        for panel in _panels(dashboard) for target in panel.get("targets", [])
    ]
    for variable in dashboard["templating"]["list"]:
        query = variable.get("definition", "")
        match = re.fullmatch(r"label_values\((.+),\s*\w+\)", query)
        if match:
            exprs.append((f"variable {variable['name']}", match.group(1)))
    return exprs


def _substitute(expr: str) -> str:
    for variable, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(variable, value)
    assert "$" not in expr, f"unknown Grafana variable in {expr!r}"
    return expr


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (not functions, labels or keywords)."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    expr = re.sub(r"\{[^}]*\}", " ", expr)
    expr = re.sub(r"\[[^\]]*\]", " ", expr)
    expr = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", expr)
    names = set()
    for match in re.finditer(r"(?<![\w.])[a-zA-Z_:][a-zA-Z0-9_:]*", expr):
        if expr[match.end():].lstrip().startswith("(") or match.group() in KEYWORDS:
            continue  # a function or an aggregation
        names.add(match.group())
    return names


def _exposition(*, failing: bool, redis: bool = True) -> str:
    """A real scrape of a gateway: healthy (successes, Redis commands that succeed) or with errors too."""
    registry = resilience.ProviderRegistry(clock=FakeClock(1000.0))
    provider = registry.register("openrouter")
    provider.record(provider.admit(), "success", 0.2, cost=0.01)
    prom = CollectorRegistry()
    registry.register_metrics(prom)
    if redis:
        rredis._metrics_for(prom).observe("get", "success", 0.001)
    if failing:
        provider.count_error("invalid_cost")
        rredis._metrics_for(prom).observe("get", "error", 0.002)
    return generate_latest(prom).decode()


def _input_series(exposition: str, steps: int) -> list[dict[str, str]]:
    """promtool input series for a steady system: counters grow by their scraped value each step."""
    series = []
    for family in text_string_to_metric_families(exposition):
        grows = family.type in ("counter", "histogram", "summary")
        for sample in family.samples:
            labels = ",".join(f"{k}={json.dumps(v)}" for k, v in sorted(sample.labels.items()))
            value = repr(float(sample.value))
            grows_by = f"+{value}" if grows and not sample.name.endswith("_created") else "+0"
            series.append({"series": f"{sample.name}{{{labels}}}", "values": f"{value}{grows_by}x{steps}"})
    return series


def _panel_targets(title: str) -> dict[str, str]:
    """refId -> PromQL (Grafana variables substituted) of the panel titled ``title``."""
    panel = next(p for p in _panels(_dashboard()) if p["title"] == title)
    return {target["refId"]: _substitute(target["expr"]) for target in panel["targets"]}


def _promtool_evaluates(tmp_path: Path, exposition: str, cases: list[dict[str, Any]]) -> None:
    """``promtool test rules``: each case's expr gives its exp_samples at 10m over ``exposition``."""
    promtool = require_binary("promtool")
    path = tmp_path / "dashboard_test.yml"
    path.write_text(yaml.safe_dump({"evaluation_interval": "15s", "tests": [{
        "interval": "15s",
        "input_series": _input_series(exposition, steps=60),
        "promql_expr_test": [{"eval_time": "10m", **case} for case in cases],
    }]}))
    result = subprocess.run([promtool, "test", "rules", str(path)], capture_output=True, text=True,
                            timeout=120, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


ERROR_PANELS = ("Redis errors and rejections", "Instrumentation errors")
ZERO = [{"labels": "{}", "value": 0}]
ONE = [{"labels": "{}", "value": 1}]
HEALTHY = {
    ("Redis errors and rejections", "A"): ZERO,
    ("Instrumentation errors", "A"): [],  # no error of any provider and kind ...
    ("Instrumentation errors", "B"): ZERO,  # ... and the total is 0, not "No data"
}
FAILING = {  # `> bool 0`: 1 where the panel shows errors
    ("Redis errors and rejections", "A"): ONE,
    ("Instrumentation errors", "A"): [{"labels": '{kind="invalid_cost",provider="openrouter"}', "value": 1}],
    ("Instrumentation errors", "B"): ONE,
}


@pytest.mark.promtool
@pytest.mark.parametrize("redis", [pytest.param(True, id="with-redis"), pytest.param(False, id="no-redis")])
def test_error_panels_show_zero_on_a_healthy_system(tmp_path: Path, redis: bool) -> None:
    """Over a healthy system's scrape, the Redis error ratio and the instrumentation errors are 0."""
    cases = [{"expr": _panel_targets(title)[ref], "exp_samples": expected}
             for (title, ref), expected in HEALTHY.items()]
    _promtool_evaluates(tmp_path, _exposition(failing=False, redis=redis), cases)


@pytest.mark.promtool
def test_error_panels_still_show_errors(tmp_path: Path) -> None:
    """With a failed Redis command and an instrumentation error, the same panels are above 0."""
    cases = [{"expr": f"({_panel_targets(title)[ref]}) > bool 0", "exp_samples": expected}
             for (title, ref), expected in FAILING.items()]
    _promtool_evaluates(tmp_path, _exposition(failing=True), cases)


def test_error_panel_tables_cover_every_target() -> None:
    """HEALTHY and FAILING name every target of the two error panels, so none goes untested."""
    targets = {(title, ref) for title in ERROR_PANELS for ref in _panel_targets(title)}
    assert set(HEALTHY) == set(FAILING) == targets


def _exported_sample_names() -> set[str]:
    """Every sample name a real scrape of the collector and the redis metrics shows."""
    registry = resilience.ProviderRegistry(clock=FakeClock(1000.0))
    provider = registry.register("openrouter")
    provider.record(provider.admit(), "success", 0.2, cost=0.01)
    provider.count_retry("status_503")
    provider.count_error("invalid_cost")
    provider.record(provider.admit(), "success", 0.2, input_tokens=3, output_tokens=5)
    provider.note_limits(Limits(requests_remaining=9, tokens_remaining=900), 1000.0)
    provider.record(provider.admit(), "success", 1.0, ttft=0.3)
    registry.register("cerebras")
    route = registry.route("llama", [resilience.Target("openrouter", base_url="https://openrouter.ai/api/v1"),
                                     resilience.Target("cerebras", base_url="https://api.cerebras.ai/v1")])
    route.record_failover("cerebras", "openrouter")
    provider.force_open()
    prom = CollectorRegistry()
    registry.register_metrics(prom)
    rredis._metrics_for(prom).observe("get", "success", 0.001)
    text = generate_latest(prom).decode()
    return {sample.name for family in text_string_to_metric_families(text) for sample in family.samples}


def test_metric_name_extraction() -> None:
    """The extractor finds metric names, skipping functions, labels, keywords and durations."""
    expr = ('histogram_quantile(0.95, sum by (provider, le) (rate(a_bucket{x=~"b|c"}[5m])))'
            " / on (provider) group_left b_total offset 1h and c 1e3")
    assert metric_names(expr) == {"a_bucket", "b_total", "c"}


@pytest.mark.promtool
def test_every_expression_parses_with_promtool(tmp_path: Path) -> None:
    """promtool parses every expression (each wrapped as a recording rule)."""
    promtool = require_binary("promtool")
    exprs = _exprs(_dashboard())
    rules = [{"record": f"grafana:check_{i}", "expr": _substitute(expr)} for i, (_, expr) in enumerate(exprs)]
    path = tmp_path / "dashboard-rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True,
                            timeout=120, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rules)} rules found" in result.stdout


def test_every_expression_names_only_exported_metrics() -> None:
    """Each metric a panel queries is one the collector or the redis instrumentation exports."""
    exported = _exported_sample_names()
    used = {name for _, expr in _exprs(_dashboard()) for name in metric_names(_substitute(expr))}
    assert used, "no metric found in the dashboard"
    assert used <= exported, f"not exported: {sorted(used - exported)}"
    assert {"provider_availability", "provider_error_rate", "gatewayz_provider_health_score",
            "gatewayz_circuit_breaker_state", "gatewayz_cost_by_provider_total",
            "gatewayz_provider_requests_total", "gatewayz_provider_request_duration_seconds_bucket",
            "redis_operations_total", "redis_operation_duration_seconds_bucket"} <= used


def test_dashboard_has_the_provider_health_panels() -> None:
    """The dashboard is 'Provider health' with the panels the docs promise and unique ids."""
    dashboard = _dashboard()
    panels = _panels(dashboard)
    assert dashboard["title"] == "Provider health"
    assert {p["title"] for p in panels} >= PANELS
    assert len({p["id"] for p in panels}) == len(panels)
    assert all(t["datasource"]["uid"] == "${datasource}" for p in panels for t in p.get("targets", []))
    timeline = next(p for p in panels if p["title"] == "Breaker state")
    assert timeline["type"] == "state-timeline"
    mapped = timeline["fieldConfig"]["defaults"]["mappings"][0]["options"]
    assert {m["text"] for m in mapped.values()} == set(resilience.STATES)


@pytest.mark.parametrize("quantile", ["0.5", "0.95", "0.99"])
def test_latency_quantiles_come_from_the_histogram(quantile: str) -> None:
    """Latency panels use histogram_quantile over the duration histogram's buckets."""
    exprs = [expr for _, expr in _exprs(_dashboard())]
    assert any(
        expr.startswith(f"histogram_quantile({quantile},")
        and "gatewayz_provider_request_duration_seconds_bucket" in expr
        for expr in exprs
    )


def test_routes_row_shows_the_route_metrics() -> None:
    """A Routes row holds route requests by outcome, failovers by pair and hedges by result."""
    panels = _panels(_dashboard())
    titles = [p["title"] for p in panels]
    row = titles.index("Routes")
    assert panels[row]["type"] == "row"
    expected = {
        "Route requests by outcome": ("gatewayz_route_requests_total", "outcome"),
        "Route failovers": ("gatewayz_route_failovers_total", "from_provider, to_provider"),
        "Route hedges": ("gatewayz_route_hedges_total", "result"),
    }
    for title, (metric, labels) in expected.items():
        assert titles.index(title) > row
        (expr,) = _panel_targets(title).values()
        assert metric in expr and f"by (route, {labels})" in expr


@pytest.mark.parametrize("quantile", ["0.5", "0.95", "0.99"])
def test_ttft_quantiles_come_from_the_ttft_histogram(quantile: str) -> None:
    """The TTFT panel reads the time-to-first-token histogram's buckets with histogram_quantile."""
    exprs = _panel_targets("Time to first token quantiles").values()
    assert any(expr.startswith(f"histogram_quantile({quantile},")
               and "gatewayz_provider_time_to_first_token_seconds_bucket" in expr for expr in exprs)
