"""resilience: keep an LLM gateway on httpx2/httpx and Starlette answering when its providers fall over.

The public API; everything else is private. The package's layers, each
importing only those below it: ``_core`` (windows, breakers, health,
policies, providers, registry, routes), ``_http`` (the transport over httpx2 and
httpx), ``_asgi`` (middleware, dashboard) and ``_export`` (Prometheus,
shared state).
"""

from __future__ import annotations

from resilience._asgi.dashboard import dashboard_router
from resilience._asgi.middleware import ResilienceMiddleware
from resilience._core.breaker import STATES, BreakerState
from resilience._core.config import OUTCOMES, BreakerPolicy, Outcome, Policy, RetryPolicy
from resilience._core.context import RequestStats, current_request
from resilience._core.cost import CostExtractor, HeaderCost, PriceTable
from resilience._core.errors import CircuitOpenError, ConfigError, ResilienceError, UnknownProviderError
from resilience._core.guard import Guard
from resilience._core.provider import Provider
from resilience._core.registry import ProviderRegistry, install_exporter
from resilience._core.route import Route, RoutePolicy, Target
from resilience._core.snapshot import (
    ModelSnapshot,
    ProbeSnapshot,
    ProviderSnapshot,
    RegistrySnapshot,
    Summary,
)
from resilience._core.window import WindowSnapshot
from resilience._export.metrics import ResilienceCollector
from resilience._export.shared_state import SharedBreakerState
from resilience._http.errors import DeadlineExceededError, StreamTimeoutError
from resilience._http.probe import HttpProbe, ProbeRunner, probes
from resilience._http.transport import ResilientTransport

install_exporter(ResilienceCollector)  # what ProviderRegistry.register_metrics() builds

__version__ = "0.1.0"

__all__ = [
    "OUTCOMES",
    "STATES",
    "BreakerPolicy",
    "BreakerState",
    "CircuitOpenError",
    "ConfigError",
    "CostExtractor",
    "DeadlineExceededError",
    "Guard",
    "HeaderCost",
    "HttpProbe",
    "ModelSnapshot",
    "Outcome",
    "Policy",
    "PriceTable",
    "ProbeRunner",
    "ProbeSnapshot",
    "Provider",
    "ProviderRegistry",
    "ProviderSnapshot",
    "RegistrySnapshot",
    "RequestStats",
    "ResilienceCollector",
    "ResilienceError",
    "ResilienceMiddleware",
    "ResilientTransport",
    "RetryPolicy",
    "Route",
    "RoutePolicy",
    "SharedBreakerState",
    "StreamTimeoutError",
    "Summary",
    "Target",
    "UnknownProviderError",
    "WindowSnapshot",
    "__version__",
    "current_request",
    "dashboard_router",
    "probes",
]
