"""Prometheus export: :class:`ResilienceCollector` builds fresh metric families at scrape time.

Nothing is written when a provider is called: ``collect()`` reads every
provider's snapshot and turns it into these families (``gatewayz_`` is the
``namespace``; the two ``provider_`` gauges keep their names)::

    provider_availability{provider}                        gauge, 1 admits calls / 0 open
    provider_error_rate{provider}                          gauge, over the stats window
    gatewayz_provider_health_score{provider}               gauge, 0..1
    gatewayz_circuit_breaker_state{provider,state}         gauge, one-hot over the five states
    gatewayz_cost_by_provider_total{provider}              counter, USD
    gatewayz_provider_requests_total{provider,outcome}     counter
    gatewayz_provider_request_duration_seconds{provider}   histogram
    gatewayz_provider_retries_total{provider,reason}       counter
    gatewayz_circuit_breaker_transitions_total{provider,from_state,to_state}  counter
    gatewayz_resilience_label_overflows_total{label,provider}  counter (names folded into other)
    gatewayz_resilience_errors_total{provider,kind}        counter (instrumentation errors)
    gatewayz_provider_deadline_exceeded_total{provider}    counter (calls cut by their deadline)
    gatewayz_provider_time_to_first_token_seconds{provider}  histogram (streamed SSE attempts)
    gatewayz_route_requests_total{route,outcome}           counter (success, failure, rejected)
    gatewayz_route_failovers_total{route,from_provider,to_provider}  counter
    gatewayz_route_hedges_total{route,result}              counter (won, lost)

With the OpenMetrics exposition the duration histogram's buckets carry
exemplars labelled ``trace_id``: the latest traced attempt in each bucket.

Counters come from the providers' lifetime totals, so they never go down when
the window slides. With ``model_metrics=True`` a capped set of per-model
gauges over the stats window is added (see :class:`ResilienceCollector`)::

    gatewayz_model_calls{provider,model}, gatewayz_model_error_rate{provider,model},
    gatewayz_model_cost_usd{provider,model}, gatewayz_model_latency_seconds{provider,model,quantile},
    gatewayz_resilience_model_series_dropped

A failure while collecting one provider is logged, counted as
``gatewayz_resilience_errors_total{kind="collect"}`` and leaves the others whole.
"""

from __future__ import annotations

import logging
import re
import threading
import weakref
from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client.metrics_core import Metric
from prometheus_client.registry import REGISTRY, Collector, CollectorRegistry
from prometheus_client.samples import Sample

from resilience._core.errors import ConfigError
from resilience._export.series import (
    DURATION,
    ERRORS,
    MODEL_DROPPED,
    OVERFLOWS,
    PROVIDER_FAMILIES,
    RATELIMIT,
    RETRIES,
    ROUTE_FAILOVERS,
    ROUTE_HEDGES,
    ROUTE_REQUESTS,
    SPECS,
    TRANSITIONS,
    Append,
    ModelLabels,
    Series,
    add_exemplars,
    fixed_series,
    fixed_values,
    full_name,
    model_series,
)

if TYPE_CHECKING:
    from resilience._core.provider import Provider
    from resilience._core.registry import ProviderRegistry
    from resilience._core.snapshot import ProviderSnapshot

__all__ = ["DEFAULT_MAX_MODEL_SERIES", "ResilienceCollector"]

log = logging.getLogger("resilience")

DEFAULT_MAX_MODEL_SERIES = 1000
"""How many (provider, model) pairs ``model_metrics`` exports at most per scrape."""

_PREFIX = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*\Z")


_HOMES_LOCK = threading.Lock()
_HOMES: weakref.WeakKeyDictionary[ProviderRegistry, weakref.WeakSet[CollectorRegistry]] = (
    weakref.WeakKeyDictionary()
)


class ResilienceCollector(Collector):
    """A ``prometheus_client`` collector over a :class:`resilience.ProviderRegistry`.

    Usually made by :meth:`resilience.ProviderRegistry.register_metrics`.

    Args:
        registry: the providers to export.
        namespace: prefix replacing ``gatewayz`` (``""`` for none); a valid
            metric name prefix.
        model_metrics: also export per-model gauges (calls, error rate, cost,
            latency quantiles over the stats window).
        max_model_series: cap on the (provider, model) pairs exported per
            scrape; pairs past it are left out and counted in
            ``<namespace>_resilience_model_series_dropped``.

    Raises:
        ConfigError: a bad namespace or cap.
    """

    def __init__(
        self,
        registry: ProviderRegistry,
        *,
        namespace: str = "gatewayz",
        model_metrics: bool = False,
        max_model_series: int = DEFAULT_MAX_MODEL_SERIES,
    ) -> None:
        if not isinstance(namespace, str) or (namespace and not _PREFIX.match(namespace)):
            raise ConfigError(
                f"namespace must be a metric name prefix matching [a-zA-Z_:][a-zA-Z0-9_:]*, got {namespace!r}"
            )
        if not isinstance(model_metrics, bool):
            raise ConfigError(f"model_metrics must be a bool, got {model_metrics!r}")
        cap = max_model_series
        if isinstance(cap, bool) or not isinstance(cap, int) or cap < 0:
            raise ConfigError(f"max_model_series must be an integer >= 0, got {max_model_series!r}")
        self.registry = registry
        self.namespace = namespace
        self.model_metrics = model_metrics
        self.max_model_series = max_model_series
        count = len(SPECS) if model_metrics else PROVIDER_FAMILIES
        self._specs = tuple((full_name(name, namespace), kind, doc) for name, kind, doc in SPECS[:count])
        self._names = tuple(name for name, _kind, _doc in self._specs)
        # the fixed series of each provider, built once per name; label dicts are shared by the
        # samples of every scrape and never mutated (providers are capped, so is this cache)
        self._rows: dict[str, tuple[tuple[tuple[float, ...], tuple[float, ...]], Series]] = {}
        self._model_labels: ModelLabels = {}
        self.collect_errors: dict[str, int] = {}
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"<ResilienceCollector namespace={self.namespace!r} providers={len(self.registry)}>"

    # -- registration ------------------------------------------------------------

    def register(self, prometheus_registry: CollectorRegistry | None = None) -> ResilienceCollector:
        """Register into ``prometheus_registry`` (``prometheus_client.REGISTRY`` by default).

        Raises:
            ConfigError: this provider registry is already exported there, or
                another collector there owns one of these metric names.
        """
        target = REGISTRY if prometheus_registry is None else prometheus_registry
        with _HOMES_LOCK:
            homes = _HOMES.setdefault(self.registry, weakref.WeakSet())
            if target in homes:
                raise ConfigError(
                    "this ProviderRegistry is already registered in that Prometheus registry; "
                    "register_metrics() once per Prometheus registry"
                )
            try:
                target.register(self)
            except ValueError as exc:
                clash = sorted(getattr(exc, "duplicates", ())) or str(exc)
                raise ConfigError(
                    f"cannot register the resilience metrics: {clash} already exist in that Prometheus "
                    "registry. A Prometheus registry exports "
                    "one ProviderRegistry; use one ProviderRegistry per process or a separate "
                    "CollectorRegistry"
                ) from exc
            homes.add(target)
        return self

    def unregister(self, prometheus_registry: CollectorRegistry | None = None) -> None:
        """Remove this collector from ``prometheus_registry`` (``REGISTRY`` by default)."""
        target = REGISTRY if prometheus_registry is None else prometheus_registry
        with _HOMES_LOCK:
            target.unregister(self)
            homes = _HOMES.get(self.registry)
            if homes is not None:
                homes.discard(target)

    # -- collection --------------------------------------------------------------

    def describe(self) -> list[Metric]:
        """Empty families naming every metric, so Prometheus registries detect clashes."""
        return self._families()

    def collect(self) -> Iterator[Metric]:
        """Fresh metric families from the providers' state now; never writes it."""
        families = self._families()
        appends = [family.samples.append for family in families]
        extends = [family.samples.extend for family in families]
        providers = self.registry.providers()
        budget = [self.max_model_series, 0]  # model pairs left, pairs dropped
        durations = families[DURATION].samples
        for provider in providers:
            try:
                snap = provider.snapshot()
                series, values = self._provider_series(snap, budget)
            except Exception:
                self._count_collect_error(provider.name)
                continue
            start = len(durations)
            series.emit(values, extends)
            if any(snap.duration_exemplars):
                add_exemplars(durations, start, snap.duration_exemplars)
        self._add_self_monitoring(appends, providers)
        self._add_routes(appends)
        if self.model_metrics:
            appends[MODEL_DROPPED](Sample(self._names[MODEL_DROPPED], {}, budget[1]))
        return iter(families)

    def _families(self) -> list[Metric]:
        return [Metric(name, doc, kind) for name, kind, doc in self._specs]

    def _provider_series(self, snap: ProviderSnapshot, budget: list[int]) -> tuple[Series, list[float]]:
        """Every series of one provider and its value, computed before anything is appended."""
        les = tuple(le for le, _count in snap.duration_buckets)
        ttft_les = tuple(le for le, _count in snap.ttft_buckets) or les  # none yet: the same bounds
        cached = self._rows.get(snap.name)
        if cached is None or cached[0] != (les, ttft_les):
            series = fixed_series(self._names, snap.name, les, ttft_les)
            cached = self._rows[snap.name] = ((les, ttft_les), series)
        values = fixed_values(snap)
        if len(cached[1].names) != len(values):
            raise ValueError(f"{len(values)} values for {len(cached[1].names)} series")
        if not (snap.retries_total or snap.transitions_total or snap.ratelimit or self.model_metrics):
            return cached[1], values
        series, names, name = cached[1].copy(), self._names, snap.name
        limits = snap.ratelimit or {}
        for kind in ("requests", "tokens"):
            remaining = limits.get(f"{kind}_remaining")
            if remaining is not None:
                series.add(RATELIMIT, names[RATELIMIT], {"provider": name, "kind": kind})
                values.append(remaining)
        for reason, count in sorted(snap.retries_total.items()):
            series.add(RETRIES, names[RETRIES] + "_total", {"provider": name, "reason": reason})
            values.append(count)
        for (old, new), count in sorted(snap.transitions_total.items()):
            labels = {"provider": name, "from_state": old, "to_state": new}
            series.add(TRANSITIONS, names[TRANSITIONS] + "_total", labels)
            values.append(count)
        if self.model_metrics:
            model_series(names, snap, budget, series, values, self._model_labels)
        return series, values

    def _add_routes(self, appends: list[Append]) -> None:
        """Each route's lifetime counters: calls by outcome, failovers by pair, hedges by result."""
        names = self._names
        requests, failovers, hedges = appends[ROUTE_REQUESTS], appends[ROUTE_FAILOVERS], appends[ROUTE_HEDGES]
        for route in self.registry.routes():
            try:
                snap = route.snapshot()
            except Exception:
                log.warning("resilience metrics: collecting route %r failed", route.name, exc_info=True)
                continue
            name = snap.name
            for outcome, count in snap.requests_total.items():
                requests(Sample(names[ROUTE_REQUESTS] + "_total", {"route": name, "outcome": outcome}, count))
            for (old, new), count in sorted(snap.failovers_total.items()):
                labels = {"route": name, "from_provider": old, "to_provider": new}
                failovers(Sample(names[ROUTE_FAILOVERS] + "_total", labels, count))
            for result, count in snap.hedges_total.items():
                hedges(Sample(names[ROUTE_HEDGES] + "_total", {"route": name, "result": result}, count))

    def _count_collect_error(self, name: str) -> None:
        with self._lock:
            self.collect_errors[name] = self.collect_errors.get(name, 0) + 1
        log.warning("resilience metrics: collecting provider %r failed", name, exc_info=True)

    def _add_self_monitoring(self, appends: list[Append], providers: list[Provider]) -> None:
        overflow_name, errors_name = self._names[OVERFLOWS] + "_total", self._names[ERRORS] + "_total"
        overflows, errors = appends[OVERFLOWS], appends[ERRORS]
        folded = self.registry._label_overflows
        overflows(Sample(overflow_name, {"label": "provider", "provider": "other"}, folded))
        collect_errors = dict(self.collect_errors)
        for provider in providers:
            name = provider.name
            overflows(Sample(overflow_name, {"label": "model", "provider": name}, provider._model_overflows))
            kinds = provider.errors  # a copy
            if name in collect_errors:
                kinds["collect"] = kinds.get("collect", 0) + collect_errors[name]
            for kind in sorted(kinds):
                errors(Sample(errors_name, {"provider": name, "kind": kind}, kinds[kind]))
