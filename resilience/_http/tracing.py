"""Optional OpenTelemetry spans: one per transport call, its decisions as events.

Uses ``opentelemetry-api`` only (``pip install "llm-resilience[otel]"``).
Without the package, or while no tracer provider is set, :func:`start`
returns ``None`` after one attribute read and nothing else is done. Whether
a provider is set is checked per call, so one set after ``import resilience``
is used from its next call on.

The span of a call is named ``resilience {name}`` (the route, else the
provider), kind ``INTERNAL``, a child of the span current when the call
starts; it is never made current itself, so nothing leaks across awaits.
The call loop drives it::

    span = tracing.start(name, model=model, route=route_name)
    try:
        ...  # span.retry(...), span.failover(...), ... when they happen
    finally:
        if span is not None:
            span.end(provider=..., attempts=..., cost_usd=..., input_tokens=...,
                     output_tokens=..., error=..., failed=...)
"""

from __future__ import annotations

import logging
import os
from importlib import metadata
from types import ModuleType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from opentelemetry import trace as _trace
    from opentelemetry.trace import Span, Tracer, TracerProvider
else:
    try:
        from opentelemetry import trace as _trace
    except ImportError:  # the otel extra is optional
        _trace = None

log = logging.getLogger("resilience")

TRACER_NAME = "resilience"
SPAN_PREFIX = "resilience "

PROVIDER_NAME = "gen_ai.provider.name"
REQUEST_MODEL = "gen_ai.request.model"
INPUT_TOKENS = "gen_ai.usage.input_tokens"
OUTPUT_TOKENS = "gen_ai.usage.output_tokens"
GEN_AI_ATTRIBUTES = (PROVIDER_NAME, REQUEST_MODEL, INPUT_TOKENS, OUTPUT_TOKENS)
"""The OpenTelemetry GenAI semantic-convention attributes a call span carries."""
ATTEMPTS = "resilience.attempts"
COST_USD = "resilience.cost_usd"
ROUTE = "resilience.route"

REJECTED = "resilience.rejected"
RETRY = "resilience.retry"
FAILOVER = "resilience.failover"
HEDGE = "resilience.hedge"
DEADLINE_EXCEEDED = "resilience.deadline_exceeded"

_ENV_PROVIDER = "OTEL_PYTHON_TRACER_PROVIDER"  # opentelemetry.environment_variables'


class _Untraced:
    """The source without opentelemetry-api: never a provider."""

    _TRACER_PROVIDER = None


class _Public:
    """The source through the public API: ``get_tracer_provider()``, its default proxy meaning none."""

    def __init__(self, api: ModuleType) -> None:
        self.api = api

    @property
    def _TRACER_PROVIDER(self) -> Any:  # named as the API module's global, read the same way
        provider = self.api.get_tracer_provider()
        return None if isinstance(provider, self.api.ProxyTracerProvider) else provider


def _source_of(api: ModuleType | None, environ: Any) -> Any:
    """What :func:`start` reads ``_TRACER_PROVIDER`` from: the global tracer provider set, or ``None``.

    The one place that relies on opentelemetry-api's private ``_TRACER_PROVIDER``
    (``None`` until ``set_tracer_provider``): then the per-call check is one
    attribute read of the API module, the same cost as without the package.
    When the API lacks it, or a provider is to be loaded from the
    environment (``OTEL_PYTHON_TRACER_PROVIDER``), the public API is asked.
    """
    if api is None:
        return _Untraced
    if hasattr(api, "_TRACER_PROVIDER") and _ENV_PROVIDER not in environ:
        return api
    return _Public(api)


_source: Any = _source_of(_trace, os.environ)


def installed_provider() -> TracerProvider | None:
    """The global tracer provider set, or ``None`` (what :func:`start` checks per call)."""
    provider: TracerProvider | None = _source._TRACER_PROVIDER
    return provider

_tracer_cache: tuple[object, Tracer | None] | None = None


def _tracer_of(provider: TracerProvider) -> Tracer | None:
    """The library's tracer from ``provider`` (kept for the latest provider); ``None`` for a no-op one."""
    global _tracer_cache
    cached = _tracer_cache
    if cached is not None and cached[0] is provider:
        return cached[1]
    assert _trace is not None
    tracer: Tracer | None = None
    if not isinstance(provider, _trace.NoOpTracerProvider):
        try:
            version: str | None = metadata.version("llm-resilience")
        except metadata.PackageNotFoundError:  # run from a source tree
            version = None
        tracer = provider.get_tracer(TRACER_NAME, version)
    _tracer_cache = (provider, tracer)  # one store: racing threads each keep a whole pair
    return tracer


def start(
    name: str, *, model: str | None, route: str | None, tracer_provider: TracerProvider | None = None
) -> CallSpan | None:
    """The span of one call, or ``None`` when nothing traces (no package, no provider, sampled out).

    ``name`` is the route's name for a route call, else the provider's;
    ``tracer_provider`` overrides the global one (tests).
    """
    provider = _source._TRACER_PROVIDER if tracer_provider is None else tracer_provider
    if provider is None:
        return None
    try:
        tracer = _tracer_of(provider)
        if tracer is None:
            return None
        attributes: dict[str, str] = {}
        if model is not None:
            attributes[REQUEST_MODEL] = model
        if route is not None:
            attributes[ROUTE] = route
        assert _trace is not None
        span = tracer.start_span(SPAN_PREFIX + name, kind=_trace.SpanKind.INTERNAL, attributes=attributes)
    except Exception:  # instrumentation never breaks a call
        log.exception("resilience tracing: starting a span failed; the call goes on untraced")
        return None
    if not span.is_recording():
        return None
    return CallSpan(span)


class CallSpan:
    """The span of one call; each method adds what the SPEC names, never raising."""

    __slots__ = ("_ended", "_trace_id", "span")

    def __init__(self, span: Span) -> None:
        self.span = span
        self._ended = False
        self._trace_id: str | None = None

    def __repr__(self) -> str:
        return f"<CallSpan trace_id={self.trace_id}>"

    @property
    def trace_id(self) -> str | None:
        """The span's trace id as 32 lower-case hex digits (for exemplars); ``None`` if invalid."""
        trace_id = self._trace_id
        if trace_id is None:
            number = self.span.get_span_context().trace_id
            if number:
                trace_id = self._trace_id = format(number, "032x")
        return trace_id

    def _event(self, name: str, attributes: dict[str, Any] | None = None) -> None:
        try:
            self.span.add_event(name, attributes)
        except Exception:  # instrumentation never breaks a call
            log.exception("resilience tracing: adding event %s failed", name)

    def rejected(self, provider: str, retry_after: float) -> None:
        """A breaker (or an exhausted quota) did not admit the call to ``provider``."""
        self._event(REJECTED, {"provider": provider, "retry_after": float(retry_after)})

    def retry(self, provider: str, attempt: int, reason: str, wait_seconds: float) -> None:
        """Attempt number ``attempt`` (1-based, the one about to be made) follows a wait for ``reason``."""
        attributes = {"provider": provider, "attempt": int(attempt), "reason": reason}
        self._event(RETRY, {**attributes, "wait_seconds": float(wait_seconds)})

    def failover(self, route: str, from_provider: str, to_provider: str, reason: str) -> None:
        """``route`` moved from one target to the next, for ``reason``."""
        self._event(
            FAILOVER,
            {"route": route, "from_provider": from_provider, "to_provider": to_provider, "reason": reason},
        )

    def hedge(self, route: str, provider: str) -> None:
        """``route`` started a hedge against ``provider``."""
        self._event(HEDGE, {"route": route, "provider": provider})

    def deadline_exceeded(self) -> None:
        """The call's deadline passed."""
        self._event(DEADLINE_EXCEEDED)

    def end(
        self,
        *,
        provider: str | None,
        attempts: int,
        cost_usd: float | None,
        input_tokens: int | None,
        output_tokens: int | None,
        error: BaseException | None,
        failed: bool,
    ) -> None:
        """Set the call's attributes and status and end the span (a second call does nothing).

        ``provider`` is the one that answered; usage and cost only when known;
        the status is ``ERROR`` when the call raised ``error`` or ended in a
        ``failed`` response.
        """
        if self._ended:
            return
        self._ended = True
        span = self.span
        try:
            attributes: dict[str, Any] = {ATTEMPTS: int(attempts)}
            if provider is not None:
                attributes[PROVIDER_NAME] = provider
            if cost_usd is not None:
                attributes[COST_USD] = float(cost_usd)
            if input_tokens is not None:
                attributes[INPUT_TOKENS] = int(input_tokens)
            if output_tokens is not None:
                attributes[OUTPUT_TOKENS] = int(output_tokens)
            span.set_attributes(attributes)
            if error is not None or failed:
                assert _trace is not None
                detail = "failure" if error is None else f"{type(error).__name__}: {error}"
                span.set_status(_trace.Status(_trace.StatusCode.ERROR, detail))
        except Exception:  # instrumentation never breaks a call
            log.exception("resilience tracing: setting the span's attributes failed")
        try:
            span.end()
        except Exception:  # instrumentation never breaks a call
            log.exception("resilience tracing: ending the span failed")
