"""``DEMO_TRACE``: the demo's spans printed to the console, through the OpenTelemetry SDK.

The library makes one span per transport call (``resilience {name}``: the
route, else the provider) whenever a tracer provider is set, with its
retries, failovers, rejections and hedges as events. :func:`tracer_provider`
builds an SDK ``TracerProvider`` whose ``ConsoleSpanExporter`` writes each
span as it ends (``SimpleSpanProcessor``):

* ``summary`` (``DEMO_TRACE=1``): one short line per span, its attributes and
  events, e.g. ``span resilience demo-route  3 ms  OK  trace 4bf92f35…
  gen_ai.provider.name=healthy resilience.attempts=2 | resilience.failover
  from_provider=outage to_provider=healthy reason=…``;
* ``json`` (``DEMO_TRACE=json``): the SDK's own JSON for each span, one per line.

:func:`tracer_provider` only builds it; the demo installs it with
:func:`install` (the global tracer provider can be set once per process)
before traffic starts and shuts it down at the end. Without
``opentelemetry-sdk`` it says so and the demo goes on without traces.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Literal, TextIO

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import ReadableSpan, TracerProvider

TraceMode = Literal["off", "summary", "json"]
TRACE_MODES: dict[str, TraceMode] = {
    "": "off", "0": "off", "false": "off", "no": "off", "off": "off",
    "1": "summary", "true": "summary", "yes": "summary", "on": "summary", "summary": "summary",
    "json": "json",
}
"""``DEMO_TRACE`` values (case-insensitive) and what they ask for."""
SERVICE_NAME = "resilience-demo"
MISSING_SDK = (
    "resilience demo: DEMO_TRACE needs the OpenTelemetry SDK "
    "(pip install 'llm-resilience[demo]', or pip install opentelemetry-sdk); going on without traces."
)


def trace_mode(raw: str) -> TraceMode:
    """The mode a ``DEMO_TRACE`` value asks for.

    Raises:
        ValueError: not one of :data:`TRACE_MODES`; the message names ``DEMO_TRACE``.
    """
    mode = TRACE_MODES.get(raw.strip().lower())
    if mode is None:
        raise ValueError(f"DEMO_TRACE must be 1 (one line per span), json or 0, got {raw!r}")
    return mode


def tracer_provider(mode: TraceMode, out: TextIO, err: TextIO = sys.stderr) -> TracerProvider | None:
    """An SDK tracer provider printing every span to ``out`` as it ends, not installed anywhere;
    ``None`` for ``"off"``, or (with a message on ``err``) when opentelemetry-sdk is missing."""
    if mode == "off":
        return None
    try:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter, SimpleSpanProcessor
    except ImportError:
        print(MISSING_SDK, file=err, flush=True)
        return None
    provider = TracerProvider(resource=Resource.create({"service.name": SERVICE_NAME}))
    formatter = summary if mode == "summary" else _json_line
    provider.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter(out=out, formatter=formatter)))
    return provider


def install(provider: TracerProvider) -> None:
    """Make ``provider`` the process's global tracer provider (once per process: OpenTelemetry
    ignores, with a warning, any later one)."""
    from opentelemetry import trace

    trace.set_tracer_provider(provider)


def summary(span: ReadableSpan) -> str:
    """One line for a span: name, duration, status, trace id, attributes, then its events."""
    ms = ((span.end_time or 0) - (span.start_time or 0)) / 1e6
    status = span.status.status_code.name
    trace_id = f"{span.context.trace_id:032x}"[:8] + "…" if span.context is not None else "-"
    parts = [f"span {span.name}  {ms:.0f} ms  {status}  trace {trace_id}"]
    parts += [f"{key}={_value(value)}" for key, value in (span.attributes or {}).items()]
    line = " ".join(parts)
    for event in span.events:
        details = " ".join(f"{key}={_value(value)}" for key, value in (event.attributes or {}).items())
        line += f" | {event.name}" + (f" {details}" if details else "")
    return line + "\n"


def _value(value: object) -> str:
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def _json_line(span: ReadableSpan) -> str:
    return str(span.to_json(indent=None)) + "\n"
