"""resilience: keep an httpx/Starlette gateway standing when its providers fall over.

The public API; everything else is private.
"""

from __future__ import annotations

from resilience._breaker import STATES
from resilience._config import OUTCOMES, BreakerPolicy, Outcome, Policy, RetryPolicy
from resilience._context import RequestStats, current_request
from resilience._cost import CostExtractor, HeaderCost, PriceTable
from resilience._errors import (
    CircuitOpenError,
    ConfigError,
    ResilienceError,
    StreamTimeoutError,
    UnknownProviderError,
)
from resilience._guard import Guard
from resilience._provider import Provider
from resilience._registry import ProviderRegistry
from resilience._snapshot import ModelSnapshot, ProviderSnapshot, RegistrySnapshot, Summary
from resilience._window import WindowSnapshot
from resilience.dashboard import dashboard_router
from resilience.metrics import ResilienceCollector
from resilience.middleware import ResilienceMiddleware
from resilience.probe import HttpProbe, ProbeRunner, ProbeSnapshot, probes
from resilience.shared_state import SharedBreakerState
from resilience.transport import ResilientTransport

__version__ = "0.1.0"

__all__ = [
    "OUTCOMES",
    "STATES",
    "BreakerPolicy",
    "CircuitOpenError",
    "ConfigError",
    "CostExtractor",
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
    "SharedBreakerState",
    "StreamTimeoutError",
    "Summary",
    "UnknownProviderError",
    "WindowSnapshot",
    "__version__",
    "current_request",
    "dashboard_router",
    "probes",
]
