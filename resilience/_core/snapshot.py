"""Immutable snapshots: the numbers the endpoints and gauges show."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, NamedTuple

from resilience._core.health import Status
from resilience._core.window import WindowSnapshot


class ModelSnapshot(NamedTuple):
    """One model of one provider over the stats window."""

    provider: str
    model: str
    window: WindowSnapshot


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
