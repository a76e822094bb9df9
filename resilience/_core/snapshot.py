"""Immutable snapshots: the numbers the endpoints and gauges show."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, NamedTuple

from resilience._core.health import Status
from resilience._core.window import EMPTY, WindowSnapshot


class ModelSnapshot(NamedTuple):
    """One model of one provider over the stats window."""

    provider: str
    model: str
    window: WindowSnapshot
    ttft: WindowSnapshot = EMPTY
    """Time to first token of the model's streamed (SSE) attempts: ``p50``/``p95``/``p99`` in seconds."""


class ProviderSnapshot(NamedTuple):
    """One provider: breaker state, health and the stats window.

    A named tuple, like the window snapshots: a scrape builds one per provider.

    ``window`` covers the stats window (latency to the end of the body);
    ``time_to_headers`` the same window's streamed responses, timed to their
    headers. ``history`` lists ``(clock time, state)`` of recent transitions;
    ``requests_total``, ``cost_total``, ``tokens_total``,
    ``retries_total`` and ``transitions_total`` count since start (monotonic).
    """

    name: str
    state: str
    availability: float
    error_rate: float
    health_score: float
    status: Status
    retry_after: float
    window: WindowSnapshot
    window_seconds: float
    models: tuple[ModelSnapshot, ...]
    requests_total: dict[str, int]
    cost_total: float
    retries_total: dict[str, int]
    transitions_total: dict[tuple[str, str], int]
    duration_buckets: tuple[tuple[float, int], ...]
    duration_sum: float
    history: tuple[tuple[float, str], ...]
    time_to_headers: WindowSnapshot
    tokens_total: tuple[int, int] = (0, 0)
    """Prompt and completion tokens the provider's usage reported since start."""
    ratelimit: dict[str, Any] | None = None
    """``Provider.ratelimit`` when the snapshot was taken."""
    ttft: WindowSnapshot = EMPTY
    """Time to first token of streamed (SSE) attempts over the stats window (``p50``... in seconds)."""
    ttft_buckets: tuple[tuple[float, int], ...] = ()
    """Lifetime time-to-first-token histogram, cumulative ``(le, count)`` like ``duration_buckets``."""
    ttft_sum: float = 0.0
    deadline_exceeded_total: int = 0
    """Attempts and calls cut by their deadline since start (``Provider.count_deadline_exceeded``)."""
    duration_exemplars: tuple[tuple[str, float, float] | None, ...] = ()
    """Per Prometheus duration bucket (the ``duration_buckets`` order): the latest traced attempt in it,
    ``(trace_id, duration, wall-clock timestamp)``, or ``None``."""


class TargetView(NamedTuple):
    """One target of a route as its provider stands now: what selection orders and skips."""

    provider: str
    model: str | None
    state: str
    health_score: float
    admits: bool
    """Whether the provider admits a call now (not open, forced open, exhausted, nor half-open and full)."""
    retry_after: float | None
    """``None`` when it admits; else seconds until it may again."""


class RouteSnapshot(NamedTuple):
    """One route: its targets in the order a call would try them, and its counts.

    ``calls`` (route calls, rejections included), ``failovers`` (moves from
    one target to the next) and ``hedges`` (hedges started) cover the stats
    window; the ``*_total`` mappings count since start.
    """

    name: str
    base_url: str
    calls: int
    failovers: int
    hedges: int
    targets: tuple[TargetView, ...]
    """Admitting targets in the route's order (score or declared), then the others."""
    requests_total: dict[str, int]
    """Route calls by outcome: ``success``, ``failure``, ``rejected``."""
    failovers_total: dict[tuple[str, str], int]
    """Failovers by ``(from_provider, to_provider)``."""
    hedges_total: dict[str, int]
    """Hedges by result: ``won``, ``lost``."""


@dataclass(frozen=True, slots=True)
class Summary:
    """Counts across providers."""

    total: int
    healthy: int
    degraded: int
    unhealthy: int
    open_breakers: int


@dataclass(frozen=True, slots=True)
class RegistrySnapshot:
    """Every provider at one instant."""

    timestamp: datetime
    window_seconds: float
    providers: tuple[ProviderSnapshot, ...]
    routes: tuple[RouteSnapshot, ...] = ()

    @property
    def summary(self) -> Summary:
        """How many providers are in each status, and how many breakers are open."""
        statuses = [p.status for p in self.providers]
        return Summary(
            total=len(self.providers),
            healthy=statuses.count("healthy"),
            degraded=statuses.count("degraded"),
            unhealthy=statuses.count("unhealthy"),
            open_breakers=sum(p.state in ("open", "forced_open") for p in self.providers),
        )

    def provider(self, name: str) -> ProviderSnapshot:
        """The snapshot of one provider by name."""
        for snap in self.providers:
            if snap.name == name:
                return snap
        raise KeyError(name)


@dataclass(frozen=True, slots=True)
class ProbeSnapshot:
    """What a probe has seen. ``ok`` is ``None`` before the first check."""

    ok: bool | None
    status: int | None
    error: str | None
    latency: float | None
    consecutive_failures: int
    successes: int
    failures: int
    early_half_opens: int
    checked_at: datetime | None
    interval: float
