"""resilience: keep an httpx/Starlette gateway standing when its providers fall over.

The public API; everything else is private.
"""

from __future__ import annotations

from resilience._breaker import STATES
from resilience._config import OUTCOMES, BreakerPolicy, Outcome, Policy, RetryPolicy
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

__version__ = "0.1.0"

__all__ = [
    "OUTCOMES",
    "STATES",
    "BreakerPolicy",
    "CircuitOpenError",
    "ConfigError",
    "Guard",
    "ModelSnapshot",
    "Outcome",
    "Policy",
    "Provider",
    "ProviderRegistry",
    "ProviderSnapshot",
    "RegistrySnapshot",
    "ResilienceError",
    "RetryPolicy",
    "StreamTimeoutError",
    "Summary",
    "UnknownProviderError",
    "WindowSnapshot",
    "__version__",
]
