"""The exception tree.

::

    Exception
     +-- ResilienceError
     |    +-- ConfigError (also ValueError)   bad configuration, raised at construction
     |    +-- UnknownProviderError (also KeyError)
     |    +-- CircuitOpenError (also pybreaker.CircuitBreakerError)
     |    +-- StreamTimeoutError (also the stack's TimeoutException; resilience._http.errors)
     |    +-- DeadlineExceededError (also the stack's TimeoutException; resilience._http.errors)

When retries run out, the last response or exception reaches the caller
unchanged, never wrapped.
"""

from __future__ import annotations

import pybreaker


class ResilienceError(Exception):
    """Root of every exception this library raises."""


class ConfigError(ResilienceError, ValueError):
    """Invalid configuration; the message names the field and the value."""


class UnknownProviderError(ResilienceError, KeyError):
    """No provider of that name is registered."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "unknown provider"


class CircuitOpenError(ResilienceError, pybreaker.CircuitBreakerError):
    """The provider's breaker did not admit the call; nothing touched the network.

    Attributes:
        provider: the provider's name.
        retry_after: seconds until the breaker will admit a trial call.
        state: the breaker state that rejected the call, or ``"exhausted"``
            when ``Policy(hold_when_exhausted=True)`` held it for the quota.
    """

    def __init__(self, provider: str, retry_after: float, state: str = "open") -> None:
        self.provider = provider
        self.retry_after = max(0.0, float(retry_after))
        self.state = state
        super().__init__(
            f"circuit for provider {provider!r} is {state}; retry after {self.retry_after:.3g}s"
        )

    def __reduce__(self) -> tuple[type[CircuitOpenError], tuple[str, float, str]]:
        return (type(self), (self.provider, self.retry_after, self.state))
