"""Health: pure functions of a breaker state and a window snapshot.

* ``availability`` = 1 when the breaker admits calls (``closed``,
  ``half_open``, ``disabled``), 0 when ``open`` or ``forced_open``.
* ``health_score`` = state factor × (1 − error_rate) × latency factor; the
  state factor is 1 closed (and disabled), 0.5 half-open, 0 open; the latency
  factor is 1 while p95 ≤ the SLO, falling linearly to 0 at 4 × the SLO (1
  when no SLO is set). With no calls in the window: the state factor alone.
* ``status`` = ``healthy`` (score ≥ 0.8), ``degraded`` (≥ 0.5 or half-open),
  ``unhealthy`` (otherwise, or open).
"""

from __future__ import annotations

from typing import Final, Literal, TypeAlias

from resilience._core.breaker import CLOSED, DISABLED, FORCED_OPEN, HALF_OPEN, OPEN
from resilience._core.window import WindowSnapshot

Status: TypeAlias = Literal["healthy", "degraded", "unhealthy"]

STATE_FACTOR: Final[dict[str, float]] = {
    CLOSED: 1.0,
    DISABLED: 1.0,
    HALF_OPEN: 0.5,
    OPEN: 0.0,
    FORCED_OPEN: 0.0,
}


def availability(state: str) -> float:
    """1.0 when the breaker admits calls, else 0.0."""
    return 0.0 if state in (OPEN, FORCED_OPEN) else 1.0


def latency_factor(p95: float | None, slo: float | None) -> float:
    """1 while ``p95 <= slo``, linearly down to 0 at ``4 * slo``; 1 without SLO or data."""
    if slo is None or p95 is None or p95 <= slo:
        return 1.0
    return max(0.0, 1.0 - (p95 - slo) / (3.0 * slo))


def health_score(state: str, window: WindowSnapshot, latency_slo: float | None = None) -> float:
    """The health score in [0, 1] (see the module docstring)."""
    factor = STATE_FACTOR.get(state, 0.0)
    if window.calls == 0:
        return factor
    return factor * (1.0 - window.error_rate) * latency_factor(window.p95, latency_slo)


def status(state: str, score: float, *, healthy: float = 0.8, degraded: float = 0.5) -> Status:
    """``healthy``, ``degraded`` or ``unhealthy``."""
    if state in (OPEN, FORCED_OPEN):
        return "unhealthy"
    if state == HALF_OPEN:
        return "degraded"
    if score >= healthy:
        return "healthy"
    if score >= degraded:
        return "degraded"
    return "unhealthy"
