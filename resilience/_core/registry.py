"""``ProviderRegistry``: providers by name, the host map, label caps, snapshots.

Which provider a request belongs to, in order: an explicit name; the host
map given to :meth:`ProviderRegistry.register`; else the host name itself,
auto-registered with the default policy while slots remain under
``max_providers`` (explicit registrations always count and never fold),
then folded into ``other``. Label values are never unbounded.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

from resilience._core.clock import Clock, monotonic, steady, wall_now
from resilience._core.config import Policy, ResolvedPolicy, resolve_policy
from resilience._core.errors import ConfigError, UnknownProviderError
from resilience._core.guard import Guard
from resilience._core.ports import Exporter, ExporterFactory, Probe
from resilience._core.provider import MAX_LABEL_LENGTH, OTHER, Provider, encodable
from resilience._core.route import Route, RoutePolicy, Target, route_host
from resilience._core.snapshot import RegistrySnapshot
from resilience._core.window import TimeWindow

if TYPE_CHECKING:
    from prometheus_client.registry import CollectorRegistry

_EXPORTERS: list[ExporterFactory] = []
"""The metrics exporter ``register_metrics`` builds, installed by ``resilience/__init__``."""


def install_exporter(factory: ExporterFactory) -> None:
    """Make ``factory`` what :meth:`ProviderRegistry.register_metrics` builds."""
    _EXPORTERS[:] = [factory]


def _normalise_host(host: str) -> str:
    return host.strip().lower().rstrip(".")


class ProviderRegistry:
    """All providers of a gateway, their policies and the one clock.

    Args:
        default_policy: what every provider runs on, part by part, unless its
            own policy names a part.
        clock: monotonic seconds; the one time source of windows and breakers.
            One that can step back (``time.time``) is read so that it never
            does: a step back shows as no time passing.
        max_providers: cap on providers; hosts seen on the fly fill the slots
            explicit registrations leave, then fold into ``other``.
        max_models: cap on model names per provider; the rest fold into ``other``.
    """

    def __init__(
        self,
        default_policy: Policy | None = None,
        *,
        clock: Clock = monotonic,
        max_providers: int = 64,
        max_models: int = 32,
    ) -> None:
        if default_policy is not None and not isinstance(default_policy, Policy):
            raise ConfigError(f"default_policy must be a Policy, got {default_policy!r}")
        if not callable(clock):
            raise ConfigError(f"clock must be a callable returning seconds, got {clock!r}")
        for name, value in (("max_providers", max_providers), ("max_models", max_models)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be an integer >= 1, got {value!r}")
        self.default_policy = default_policy or Policy()
        self.clock = steady(clock)  # a clock that steps back must not blind the windows
        self.max_providers = max_providers
        self.max_models = max_models
        self._default = resolve_policy(None, self.default_policy)
        self._lock = threading.Lock()
        self._providers: dict[str, Provider] = {}
        self._guards: dict[str, type[Guard]] = {}
        """Each provider's own :class:`Guard` class: ``guard(name)`` runs no Python ``__init__``."""
        self._model_guards: dict[tuple[Provider, TimeWindow], type[Guard]] = {}
        """The same for ``guard(name, model)``, by provider and model window (both capped)."""
        self._hosts: dict[str, str] = {}
        self._wildcards: list[tuple[str, str]] = []
        self._label_overflows = 0
        self._collectors: list[Exporter] = []
        self.extensions: dict[str, Any] = {}
        self._probes: dict[str, Probe] = {}  # active probes by provider name, off by default
        self._routes: dict[str, Route] = {}
        self._route_hosts: dict[str, Route] = {}  # by the host of each route's base_url

    # -- registration ----------------------------------------------------------

    def register(
        self,
        name: str,
        *,
        hosts: Iterable[str] = (),
        policy: Policy | None = None,
        probe: Probe | None = None,
    ) -> Provider:
        """Register a provider; ``hosts`` map request hosts to it (``*.example.com`` too).

        ``probe`` (off by default) actively checks the provider while
        ``resilience.probes(registry)`` runs; see :class:`resilience.HttpProbe`.

        Raises:
            ConfigError: a bad name, host, policy or probe, or a name registered twice.
        """
        if probe is not None and (
            not callable(getattr(probe, "check", None)) or any(p is probe for p in self._probes.values())
        ):
            raise ConfigError(f"probe must be an HttpProbe not given to another provider, got {probe!r}")
        if (
            not isinstance(name, str)
            or not name.strip()
            or len(name) > MAX_LABEL_LENGTH
            or encodable(name) != name
        ):
            raise ConfigError(
                f"name must be a non-empty UTF-8 string of at most {MAX_LABEL_LENGTH} characters, "
                f"got {name!r}"
            )
        if policy is not None and not isinstance(policy, Policy):
            raise ConfigError(f"policy must be a Policy, got {policy!r}")
        if isinstance(hosts, str):
            raise ConfigError(f"hosts must be a list of host names, got the string {hosts!r}")
        host_list = tuple(_normalise_host(h) for h in hosts if isinstance(h, str))
        if len(host_list) != len(tuple(hosts)) or any(not h for h in host_list):
            raise ConfigError(f"hosts must be non-empty host name strings, got {hosts!r}")
        resolved = resolve_policy(policy, self.default_policy)
        with self._lock:
            existing = self._providers.get(name)
            if existing is not None and existing._explicit:
                raise ConfigError(f"provider {name!r} is already registered")
            taken = [h for h in host_list if self._hosts.get(h, name) != name]
            if taken:
                raise ConfigError(f"hosts {taken!r} already belong to another provider")
            provider = self._new_provider(name, resolved, explicit=True, hosts=host_list)
            if probe is not None:
                self._probes[name] = probe
            for host in host_list:
                if host.startswith("*."):
                    self._wildcards.append((host[1:], name))
                else:
                    self._hosts[host] = name
        return provider

    def _new_provider(
        self, name: str, policy: ResolvedPolicy, *, explicit: bool, hosts: tuple[str, ...] = ()
    ) -> Provider:
        provider = Provider(
            name, policy, clock=self.clock, max_models=self.max_models, explicit=explicit, hosts=hosts
        )
        self._providers[name] = provider
        self._guards[name] = Guard.bound(provider)
        return provider

    # -- lookup ----------------------------------------------------------------

    def get(self, name: str) -> Provider:
        """The provider of that name.

        Raises:
            UnknownProviderError: (a ``KeyError``) no such provider.
        """
        try:
            return self._providers[name]
        except KeyError:
            raise UnknownProviderError(f"no provider named {name!r} is registered") from None

    def providers(self) -> list[Provider]:
        """Every provider, in registration order."""
        return list(self._providers.values())

    def __contains__(self, name: object) -> bool:
        return name in self._providers

    def __iter__(self) -> Iterator[Provider]:
        return iter(self.providers())

    def __len__(self) -> int:
        return len(self._providers)

    def resolve(self, name: str | None = None, *, host: str | None = None) -> Provider:
        """The provider for an explicit ``name``, else for a request ``host``.

        Unknown names and hosts are auto-registered with the default policy
        while slots remain under ``max_providers``; past that they fold into
        ``other``.
        """
        if name is not None:
            provider = self._providers.get(name)
            return provider if provider is not None else self._auto(str(name))
        if host:
            host = _normalise_host(host)
            mapped = self._hosts.get(host)
            if mapped is not None:
                return self._providers[mapped]
            for suffix, target in self._wildcards:
                if host.endswith(suffix):
                    return self._providers[target]
            provider = self._providers.get(host)
            return provider if provider is not None else self._auto(host)
        return self._auto(OTHER)

    def _auto(self, name: str) -> Provider:
        if len(name) > MAX_LABEL_LENGTH or not name:
            with self._lock:
                self._label_overflows += 1
            name = OTHER
        name = encodable(name)[:MAX_LABEL_LENGTH]
        with self._lock:
            provider = self._providers.get(name)
            if provider is not None:
                return provider
            if name != OTHER and len(self._providers) >= self.max_providers:
                self._label_overflows += 1
                name = OTHER
                provider = self._providers.get(OTHER)
                if provider is not None:
                    return provider
            return self._new_provider(name, self._default, explicit=False)

    # -- routes ----------------------------------------------------------------

    def route(self, name: str, targets: Iterable[Target], *, policy: RoutePolicy | None = None) -> Route:
        """Register a route: one logical model served by ``targets``, tried as ``policy`` says.

        Requests sent under the route's ``base_url`` (an ``http://….invalid``
        URL, unique in this registry) are answered by the first target that
        admits the call and does not fail before commit; see :class:`resilience.Route`.

        Raises:
            ConfigError: a bad or already registered name, no targets, a
                target that is not a :class:`resilience.Target` or whose
                provider is not registered, a policy that is not a
                :class:`resilience.RoutePolicy`.
        """
        if (
            not isinstance(name, str)
            or not name.strip()
            or len(name) > MAX_LABEL_LENGTH
            or encodable(name) != name
        ):
            raise ConfigError(
                f"name must be a non-empty UTF-8 string of at most {MAX_LABEL_LENGTH} characters, "
                f"got {name!r}"
            )
        if policy is None:
            policy = RoutePolicy()
        elif not isinstance(policy, RoutePolicy):
            raise ConfigError(f"policy must be a RoutePolicy, got {policy!r}")
        if isinstance(targets, str | bytes | Target) or not isinstance(targets, Iterable):
            raise ConfigError(f"targets must be a list of resilience.Target, got {targets!r}")
        chosen = tuple(targets)
        if not chosen:
            raise ConfigError("targets must name at least one resilience.Target, got none")
        for target in chosen:
            if not isinstance(target, Target):
                raise ConfigError(f"targets must hold resilience.Target objects, got {target!r}")
            provider = self._providers.get(target.provider)
            if provider is None or not provider._explicit:
                raise ConfigError(
                    f"targets: provider {target.provider!r} is not registered; "
                    "registry.register() it before the route"
                )
        with self._lock:
            if name in self._routes:
                raise ConfigError(f"route {name!r} is already registered")
            route = Route(
                name, chosen, policy,
                host=route_host(name, len(self._routes) + 1),
                providers=tuple(self._providers[t.provider] for t in chosen),
                clock=self.clock,
                window_seconds=self._default.stats_window_seconds,
            )
            self._routes[name] = route
            self._route_hosts[route.host] = route
        return route

    def routes(self) -> list[Route]:
        """Every route, in registration order."""
        return list(self._routes.values())

    def get_route(self, name: str) -> Route:
        """The route of that name.

        Raises:
            KeyError: no such route.
        """
        try:
            return self._routes[name]
        except KeyError:
            raise KeyError(f"no route named {name!r} is registered") from None

    def route_for_host(self, host: str) -> Route | None:
        """The route whose ``base_url`` has this host (lower case, as httpx gives it), else ``None``."""
        return self._route_hosts.get(host)

    # -- use -------------------------------------------------------------------

    def guard(self, provider: str | Provider, model: str | None = None) -> Guard:
        """A sync and async context manager that runs a call through the breaker and windows."""
        if model is None:  # the fast path: a name
            bound = self._guards.get(provider)  # type: ignore[arg-type]
            if bound is not None:
                return bound()  # a bound subclass: its __init__ is object's
        target = self._providers.get(provider)  # type: ignore[arg-type]
        if target is None:
            target = provider if isinstance(provider, Provider) else self.resolve(provider)
        window = target.model_window(model)
        if window is None:  # a Provider given, not its name
            bound = self._guards.get(target.name)
            if bound is None or bound.provider is not target:
                bound = Guard.bound(target)  # another registry's provider: rare, and dear
            return bound()
        key = (target, window)
        bound = self._model_guards.get(key)
        if bound is None:
            if len(self._model_guards) >= self.max_providers * (self.max_models + 1):
                self._model_guards.clear()  # providers replaced many times over: start again
            bound = self._model_guards[key] = Guard.bound(target, window)
        return bound()

    def snapshot(self) -> RegistrySnapshot:
        """Every provider's numbers now: what the endpoints and gauges show."""
        return RegistrySnapshot(
            timestamp=wall_now(),
            window_seconds=self._default.stats_window_seconds,
            providers=tuple(p.snapshot() for p in self.providers()),
            routes=tuple(r.snapshot() for r in self.routes()),
        )

    def register_metrics(
        self,
        prometheus_registry: CollectorRegistry | None = None,
        *,
        registry: CollectorRegistry | None = None,
        namespace: str = "gatewayz",
        model_metrics: bool = False,
    ) -> Exporter:
        """Export this registry's gauges and counters to Prometheus; the collector made.

        Args:
            prometheus_registry: where to register; ``prometheus_client.REGISTRY`` by default.
            registry: the same, by the keyword every prometheus_client API uses.
            namespace: prefix of the ``gatewayz_`` metric names.
            model_metrics: also export capped per-model series.

        Raises:
            ConfigError: both ``prometheus_registry`` and ``registry`` given, or
                this registry is already exported there.
        """
        if registry is not None:
            if prometheus_registry is not None and prometheus_registry is not registry:
                raise ConfigError("give the Prometheus registry once: prometheus_registry or registry")
            prometheus_registry = registry
        if not _EXPORTERS:
            raise ConfigError("no metrics exporter is installed: import resilience, not resilience._core")
        collector = _EXPORTERS[0](self, namespace=namespace, model_metrics=model_metrics)
        collector.register(prometheus_registry)
        self._collectors.append(collector)
        return collector
