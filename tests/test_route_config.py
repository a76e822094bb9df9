"""Route configuration: Target, RoutePolicy and registry.route() validate at construction, naming fields."""

from __future__ import annotations

import dataclasses
import pickle
from datetime import timedelta
from typing import Any

import pytest

import resilience
from resilience import ConfigError, ProviderRegistry, RoutePolicy, Target
from resilience._core.route import DEFAULT_FAILOVER_STATUSES, route_host
from resilience.testing import FakeClock

URL = "https://api.cerebras.ai/v1"


def test_target_keeps_what_it_was_given() -> None:
    """A Target stores its fields, the base URL without trailing slash and header names lower-cased."""
    target = Target("cerebras", base_url=URL + "/", model="llama-3.3-70b",
                    headers={"Authorization": "Bearer k", "X-Title": "gw"})
    assert target.provider == "cerebras"
    assert target.base_url == URL
    assert target.model == "llama-3.3-70b"
    assert target.headers == (("authorization", "Bearer k"), ("x-title", "gw"))
    assert Target("p", base_url="http://127.0.0.1:8080").headers == ()
    assert Target("p", base_url="http://127.0.0.1:8080").model is None


def test_target_is_frozen_hashable_and_replaceable() -> None:
    """Targets are immutable values: equal by fields, hashable, pickled, varied with dataclasses.replace."""
    target = Target("cerebras", base_url=URL, headers={"authorization": "Bearer k"})
    with pytest.raises(dataclasses.FrozenInstanceError):
        target.model = "x"  # type: ignore[misc]
    assert target == Target("cerebras", base_url=URL + "/", headers={"Authorization": "Bearer k"})
    assert len({target, Target("cerebras", base_url=URL, headers={"authorization": "Bearer k"})}) == 1
    assert pickle.loads(pickle.dumps(target)) == target
    other = dataclasses.replace(target, model="llama")
    assert (other.model, other.headers) == ("llama", target.headers)
    assert not hasattr(target, "__dict__")


def test_target_repr_is_readable_and_hides_credentials() -> None:
    """The repr shows the provider, URL, model and header names, never header values."""
    target = Target("cerebras", base_url=URL, model="m", headers={"Authorization": "Bearer s3cret"})
    assert repr(target) == (
        "Target('cerebras', base_url='https://api.cerebras.ai/v1', model='m', "
        "headers={'authorization': '***'})"
    )
    assert "s3cret" not in repr(target) and "s3cret" not in str(target)
    assert repr(Target("p", base_url=URL)) == "Target('p', base_url='https://api.cerebras.ai/v1')"


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        pytest.param({"provider": ""}, "provider", id="empty-provider"),
        pytest.param({"provider": "  "}, "provider", id="blank-provider"),
        pytest.param({"provider": 3}, "provider", id="provider-not-str"),
        pytest.param({"base_url": "api.cerebras.ai/v1"}, "base_url", id="relative"),
        pytest.param({"base_url": "/v1"}, "base_url", id="path-only"),
        pytest.param({"base_url": "ftp://host/v1"}, "base_url", id="ftp"),
        pytest.param({"base_url": "https://"}, "base_url", id="no-host"),
        pytest.param({"base_url": "https://host/v1?key=1"}, "base_url", id="query"),
        pytest.param({"base_url": "https://host/v1#x"}, "base_url", id="fragment"),
        pytest.param({"base_url": "https://host:99999/v1"}, "base_url", id="bad-port"),
        pytest.param({"base_url": " https://host/v1"}, "base_url", id="space"),
        pytest.param({"base_url": "https://host/v\n1"}, "base_url", id="newline"),
        pytest.param({"base_url": b"https://host"}, "base_url", id="bytes"),
        pytest.param({"base_url": None}, "base_url", id="none"),
        pytest.param({"model": ""}, "model", id="empty-model"),
        pytest.param({"model": 4}, "model", id="model-not-str"),
        pytest.param({"headers": ["authorization"]}, "headers", id="headers-list"),
        pytest.param({"headers": "authorization: x"}, "headers", id="headers-str"),
        pytest.param({"headers": {"authorization": 1}}, "headers", id="value-not-str"),
        pytest.param({"headers": {1: "x"}}, "headers", id="name-not-str"),
        pytest.param({"headers": {"": "x"}}, "headers", id="empty-name"),
        pytest.param({"headers": {"bad name": "x"}}, "headers", id="name-with-space"),
        pytest.param({"headers": {"x-a": "v\r\nx-evil: 1"}}, "headers", id="crlf-injection"),
        pytest.param({"headers": {"X-A": "1", "x-a": "2"}}, "headers", id="same-name-twice"),
    ],
)
def test_bad_target_fields_are_config_errors(kwargs: dict[str, Any], field: str) -> None:
    """Each bad field fails at construction with a ConfigError (a ValueError) naming it."""
    given = {"provider": "cerebras", "base_url": URL, **kwargs}
    provider = given.pop("provider")
    with pytest.raises(ConfigError, match=field) as caught:
        Target(provider, **given)
    assert isinstance(caught.value, ValueError)


def test_route_policy_defaults() -> None:
    """The defaults: order by health, all targets, the SPEC's failover statuses, no hedging."""
    policy = RoutePolicy()
    assert policy.order == "health"
    assert policy.max_targets is None
    assert policy.failover_statuses == frozenset({*range(500, 600), 429, 401, 403, 404, 408})
    assert policy.failover_statuses is DEFAULT_FAILOVER_STATUSES
    assert 400 not in policy.failover_statuses and 422 not in policy.failover_statuses
    assert policy.hedge_after_seconds is None and policy.deadline_seconds is None
    assert policy.hedge_budget_ratio == 0.1


def test_route_policy_normalises_its_fields() -> None:
    """Durations accept timedelta, statuses any iterable; the result is frozen."""
    policy = RoutePolicy(order="priority", max_targets=2,
                         failover_statuses=[502, 503],  # type: ignore[arg-type]  # any iterable will do
                         hedge_after_seconds=timedelta(milliseconds=250), hedge_budget_ratio=0,
                         deadline_seconds=30)
    assert policy.failover_statuses == frozenset({502, 503})
    assert policy.hedge_after_seconds == 0.25
    assert policy.deadline_seconds == 30.0 and isinstance(policy.deadline_seconds, float)
    assert policy.hedge_budget_ratio == 0.0
    with pytest.raises(dataclasses.FrozenInstanceError):
        policy.order = "health"  # type: ignore[misc]
    assert dataclasses.replace(policy, max_targets=None).max_targets is None


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        pytest.param({"order": "random"}, "order", id="order"),
        pytest.param({"order": None}, "order", id="order-none"),
        pytest.param({"max_targets": 0}, "max_targets", id="max-targets-0"),
        pytest.param({"max_targets": 1.5}, "max_targets", id="max-targets-float"),
        pytest.param({"max_targets": True}, "max_targets", id="max-targets-bool"),
        pytest.param({"failover_statuses": [99]}, "failover_statuses", id="status-99"),
        pytest.param({"failover_statuses": [600]}, "failover_statuses", id="status-600"),
        pytest.param({"failover_statuses": "5xx"}, "failover_statuses", id="statuses-str"),
        pytest.param({"failover_statuses": 503}, "failover_statuses", id="statuses-int"),
        pytest.param({"hedge_after_seconds": 0}, "hedge_after_seconds", id="hedge-0"),
        pytest.param({"hedge_after_seconds": -1}, "hedge_after_seconds", id="hedge-negative"),
        pytest.param({"hedge_after_seconds": float("inf")}, "hedge_after_seconds", id="hedge-inf"),
        pytest.param({"hedge_after_seconds": float("nan")}, "hedge_after_seconds", id="hedge-nan"),
        pytest.param({"hedge_after_seconds": "1s"}, "hedge_after_seconds", id="hedge-str"),
        pytest.param({"hedge_budget_ratio": 1.5}, "hedge_budget_ratio", id="ratio-above-1"),
        pytest.param({"hedge_budget_ratio": -0.1}, "hedge_budget_ratio", id="ratio-negative"),
        pytest.param({"hedge_budget_ratio": float("nan")}, "hedge_budget_ratio", id="ratio-nan"),
        pytest.param({"hedge_budget_ratio": None}, "hedge_budget_ratio", id="ratio-none"),
        pytest.param({"deadline_seconds": 0}, "deadline_seconds", id="deadline-0"),
        pytest.param({"deadline_seconds": float("inf")}, "deadline_seconds", id="deadline-inf"),
    ],
)
def test_bad_route_policy_fields_are_config_errors(kwargs: dict[str, Any], field: str) -> None:
    """Each bad RoutePolicy field fails at construction, naming the field."""
    with pytest.raises(ConfigError, match=field):
        RoutePolicy(**kwargs)


# -- registry.route() -------------------------------------------------------------------------


def _registry(clock: FakeClock | None = None) -> ProviderRegistry:
    registry = ProviderRegistry(clock=clock or FakeClock(1000.0))
    registry.register("cerebras", hosts=["api.cerebras.ai"])
    registry.register("openrouter", hosts=["openrouter.ai"])
    return registry


def _targets() -> list[Target]:
    return [Target("cerebras", base_url=URL), Target("openrouter", base_url="https://openrouter.ai/api/v1")]


def test_registry_route_builds_a_route() -> None:
    """route() returns a Route with the targets, the policy and an http://….invalid base URL."""
    registry = _registry()
    policy = RoutePolicy(order="priority")
    route = registry.route("llama-3.3-70b", _targets(), policy=policy)
    assert isinstance(route, resilience.Route)
    assert route.name == "llama-3.3-70b"
    assert route.targets == tuple(_targets())
    assert route.policy is policy
    assert route.base_url == "http://llama-3-3-70b.route1.invalid"
    assert route.host == "llama-3-3-70b.route1.invalid"
    assert registry.route("other", iter(_targets())).policy == RoutePolicy()
    assert registry.routes() == [route, registry.get_route("other")]
    assert registry.get_route("llama-3.3-70b") is route
    assert registry.route_for_host(route.host) is route
    assert registry.route_for_host("openrouter.ai") is None


def test_base_urls_are_unique_valid_and_never_resolve() -> None:
    """Names that slug alike still get distinct hosts; each label is a valid DNS label; all under .invalid."""
    registry = _registry()
    names = ["llama-3.3-70b", "LLAMA 3.3 70B", "llama_3_3_70b", "x" * 128, "ümlaut/ü", "---", "日本語"]
    routes = [registry.route(name, _targets()) for name in names]
    hosts = [route.host for route in routes]
    assert len(set(hosts)) == len(hosts)
    for route in routes:
        assert route.base_url == f"http://{route.host}"
        assert not route.base_url.endswith("/")
        assert route.host.endswith(".invalid")
        for label in route.host.split("."):
            assert 1 <= len(label) <= 63
            assert label == label.lower()
            assert all(c.isascii() and (c.isalnum() or c == "-") for c in label)
            assert not label.startswith("-") and not label.endswith("-")
        assert registry.route_for_host(route.host) is route
    assert routes[5].host == "route.route6.invalid"


def test_route_host_slugs() -> None:
    """route_host lower-cases, keeps [a-z0-9-], trims to 63 and adds the index."""
    assert route_host("Llama 3.3 70B", 4) == "llama-3-3-70b.route4.invalid"
    assert route_host("a" * 70 + "-b", 1) == "a" * 63 + ".route1.invalid"
    assert route_host("a" * 62 + "-b", 1) == "a" * 62 + ".route1.invalid"


def test_two_registries_are_independent() -> None:
    """Each registry numbers its own routes; a route of one is unknown to the other."""
    first, second = _registry(), _registry()
    one = first.route("r", _targets())
    two = second.route("r", _targets())
    assert one.base_url == two.base_url
    assert first.route_for_host(one.host) is one and second.route_for_host(two.host) is two


@pytest.mark.parametrize(
    ("args", "kwargs", "match"),
    [
        pytest.param(("",), {}, "name", id="empty-name"),
        pytest.param((3,), {}, "name", id="name-not-str"),
        pytest.param(("x" * 129,), {}, "name", id="name-too-long"),
        pytest.param(("\ud800",), {}, "name", id="name-not-utf8"),
        pytest.param(("r", []), {}, "targets", id="no-targets"),
        pytest.param(("r", "cerebras"), {}, "targets", id="targets-str"),
        pytest.param(("r", None), {}, "targets", id="targets-none"),
        pytest.param(("r", Target("cerebras", base_url=URL)), {}, "targets", id="one-target-not-a-list"),
        pytest.param(("r", [{"provider": "cerebras"}]), {}, "targets", id="not-a-target"),
        pytest.param(("r", [Target("groq", base_url=URL)]), {}, "groq", id="unknown-provider"),
        pytest.param(("r", [Target("api.groq.com", base_url=URL)]), {}, "api.groq.com", id="auto-provider"),
        pytest.param(("r", [Target("cerebras", base_url=URL)]), {"policy": {"order": "health"}}, "policy",
                     id="policy-dict"),
        pytest.param(("r", [Target("cerebras", base_url=URL)]), {"policy": resilience.Policy()}, "policy",
                     id="provider-policy"),
    ],
)
def test_bad_route_arguments_are_config_errors(
    args: tuple[Any, ...], kwargs: dict[str, Any], match: str
) -> None:
    """A bad name, empty or foreign targets, an unregistered provider or a bad policy fail at once."""
    registry = _registry()
    registry.resolve(host="api.groq.com")  # seen on the fly: not explicitly registered
    targets = args[1] if len(args) > 1 else _targets()
    with pytest.raises(ConfigError, match=match):
        registry.route(args[0], targets, **kwargs)
    assert registry.routes() == []


def test_a_route_name_is_registered_once() -> None:
    """A second route of the same name is a ConfigError; the first stays."""
    registry = _registry()
    route = registry.route("r", _targets())
    with pytest.raises(ConfigError, match="already registered"):
        registry.route("r", _targets())
    assert registry.routes() == [route]


def test_get_route_of_an_unknown_name_is_a_key_error() -> None:
    """get_route() raises KeyError naming the route."""
    with pytest.raises(KeyError, match="nope"):
        _registry().get_route("nope")


def test_route_names_and_provider_names_do_not_clash() -> None:
    """A route may share its name with a provider: they are different things."""
    registry = _registry()
    route = registry.route("cerebras", _targets())
    assert registry.get("cerebras").name == "cerebras"
    assert registry.get_route("cerebras") is route
