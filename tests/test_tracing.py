"""OpenTelemetry call spans: none without a tracer provider; name, kind, parent, attributes, events."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF
from opentelemetry.trace import NoOpTracerProvider, SpanKind, StatusCode

from resilience import DeadlineExceededError
from resilience._http import tracing
from resilience._http.tracing import CallSpan, start

# The GenAI attribute names this library sets, as OpenTelemetry's semantic conventions define them.
# Read from open-telemetry/semantic-conventions at v1.41.1 (commit ead83b9b0fa36540c1642fce46e874f002ac23f1),
# model/gen-ai/registry.yaml, the last release holding the GenAI registry there (from v1.42.0 on it moved to
# open-telemetry/semantic-conventions-genai; the names were not changed). id -> type.
SEMCONV_VERSION = "v1.41.1"
SEMCONV_COMMIT = "ead83b9b0fa36540c1642fce46e874f002ac23f1"
GEN_AI_REGISTRY = {
    "gen_ai.provider.name": "string",  # an enum of well-known values (openai, anthropic, ...), open to others
    "gen_ai.request.model": "string",
    "gen_ai.usage.input_tokens": "int",
    "gen_ai.usage.output_tokens": "int",
}
DEPRECATED = {"gen_ai.system", "gen_ai.usage.prompt_tokens", "gen_ai.usage.completion_tokens"}


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    """An in-memory exporter behind a tracer provider of its own."""
    return InMemorySpanExporter()


@pytest.fixture
def provider(exporter: InMemorySpanExporter) -> Iterator[TracerProvider]:
    """An SDK tracer provider exporting to ``exporter`` at each span's end."""
    made = TracerProvider()
    made.add_span_processor(SimpleSpanProcessor(exporter))
    yield made
    made.shutdown()


@pytest.fixture
def global_provider(provider: TracerProvider, monkeypatch: pytest.MonkeyPatch) -> TracerProvider:
    """``provider`` as the global tracer provider for this test only (the API sets it once per process)."""
    monkeypatch.setattr(trace, "_TRACER_PROVIDER", provider)
    return provider


def only_span(exporter: InMemorySpanExporter) -> ReadableSpan:
    """The one span finished so far."""
    spans = exporter.get_finished_spans()
    assert len(spans) == 1, spans
    return spans[0]


def events(span: ReadableSpan) -> list[tuple[str, dict[str, Any]]]:
    """The span's events as (name, attributes)."""
    return [(event.name, dict(event.attributes or {})) for event in span.events]


def end(span: CallSpan, **overrides: Any) -> None:
    """End ``span`` as a plain successful call would, with ``overrides``."""
    fields: dict[str, Any] = {
        "provider": "openrouter", "attempts": 1, "cost_usd": None, "input_tokens": None,
        "output_tokens": None, "error": None, "failed": False,
    }
    span.end(**{**fields, **overrides})


# -- nothing to do ---------------------------------------------------------------------------


def test_no_tracer_provider_means_no_span(monkeypatch: pytest.MonkeyPatch) -> None:
    """With the API's default (no provider set), start returns None."""
    monkeypatch.setattr(trace, "_TRACER_PROVIDER", None)
    assert tracing.installed_provider() is None
    assert start("openrouter", model="gpt-4o", route=None) is None


def test_a_provider_set_after_import_is_used(
    global_provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    """The global provider is read per call: one set after import traces the next call."""
    span = start("openrouter", model=None, route=None)
    assert span is not None
    end(span)
    assert only_span(exporter).name == "resilience openrouter"


def test_without_the_package_nothing_is_traced() -> None:
    """Without opentelemetry-api the source never has a provider."""
    assert tracing._source_of(None, {})._TRACER_PROVIDER is None


def test_the_public_api_fallback(provider: TracerProvider, monkeypatch: pytest.MonkeyPatch) -> None:
    """An API without the private global, or a provider named in the environment, goes through
    ``get_tracer_provider()``: its default proxy means none, a real provider is used."""
    assert tracing._source_of(trace, {}) is trace  # the one-attribute-read path
    stripped = SimpleNamespace(
        get_tracer_provider=trace.get_tracer_provider, ProxyTracerProvider=trace.ProxyTracerProvider
    )
    for source in (
        tracing._source_of(stripped, {}),  # type: ignore[arg-type]
        tracing._source_of(trace, {"OTEL_PYTHON_TRACER_PROVIDER": "sdk_tracer_provider"}),
    ):
        assert isinstance(source, tracing._Public)
        monkeypatch.setattr(trace, "_TRACER_PROVIDER", None)
        monkeypatch.delenv("OTEL_PYTHON_TRACER_PROVIDER", raising=False)
        assert source._TRACER_PROVIDER is None
        monkeypatch.setattr(trace, "_TRACER_PROVIDER", provider)
        assert source._TRACER_PROVIDER is provider


def test_a_no_op_or_sampled_out_provider_means_no_span() -> None:
    """A NoOpTracerProvider, or a sampler that drops the span, leaves nothing to do per call."""
    assert start("openrouter", model=None, route=None, tracer_provider=NoOpTracerProvider()) is None
    dropping = TracerProvider(sampler=ALWAYS_OFF)
    assert start("openrouter", model=None, route=None, tracer_provider=dropping) is None


def test_a_broken_tracer_provider_never_breaks_the_call(caplog: pytest.LogCaptureFixture) -> None:
    """A provider raising from get_tracer is logged; the call goes on untraced."""

    class Broken(TracerProvider):
        def get_tracer(self, *args: Any, **kwargs: Any) -> Any:
            raise RuntimeError("boom")

    with caplog.at_level(logging.ERROR, logger="resilience"):
        assert start("openrouter", model=None, route=None, tracer_provider=Broken()) is None
    assert "starting a span failed" in caplog.text


# -- the span --------------------------------------------------------------------------------


def test_a_plain_call(provider: TracerProvider, exporter: InMemorySpanExporter) -> None:
    """Name, kind INTERNAL, status unset, exactly the SPEC's attributes, no events."""
    span = start("openrouter", model="gpt-4o-mini", route=None, tracer_provider=provider)
    assert span is not None
    end(span, attempts=1, cost_usd=0.0021, input_tokens=12, output_tokens=34)
    finished = only_span(exporter)
    assert finished.name == "resilience openrouter"
    assert finished.kind is SpanKind.INTERNAL
    assert finished.status.status_code is StatusCode.UNSET
    assert dict(finished.attributes or {}) == {
        "gen_ai.request.model": "gpt-4o-mini",
        "gen_ai.provider.name": "openrouter",
        "gen_ai.usage.input_tokens": 12,
        "gen_ai.usage.output_tokens": 34,
        "resilience.attempts": 1,
        "resilience.cost_usd": 0.0021,
    }
    assert events(finished) == []
    assert finished.instrumentation_scope is not None
    assert finished.instrumentation_scope.name == "resilience"


def test_unknown_usage_cost_and_model_are_left_out(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    """Without a model, usage or cost only the attributes known are set."""
    span = start("openrouter", model=None, route=None, tracer_provider=provider)
    assert span is not None
    end(span, attempts=2)
    assert dict(only_span(exporter).attributes or {}) == {
        "gen_ai.provider.name": "openrouter", "resilience.attempts": 2,
    }


def test_the_span_is_a_child_of_the_current_span_and_is_not_made_current(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    """The call span's parent is the span current at the call; the current span stays the parent."""
    tracer = provider.get_tracer("app")
    with tracer.start_as_current_span("POST /v1/chat") as parent:
        span = start("openrouter", model=None, route=None, tracer_provider=provider)
        assert span is not None
        assert trace.get_current_span() is parent
        end(span)
    child, outer = exporter.get_finished_spans()
    assert child.parent is not None
    assert child.parent.span_id == outer.context.span_id
    assert child.context.trace_id == outer.context.trace_id
    assert span.trace_id == format(outer.context.trace_id, "032x")


def test_trace_id_is_32_lower_case_hex_digits(provider: TracerProvider) -> None:
    """The trace id exemplars carry."""
    span = start("openrouter", model=None, route=None, tracer_provider=provider)
    assert span is not None
    assert re.fullmatch(r"[0-9a-f]{32}", span.trace_id or "")
    assert span.trace_id == format(span.span.get_span_context().trace_id, "032x")
    assert span.trace_id in repr(span)
    end(span)


def test_a_retried_call(provider: TracerProvider, exporter: InMemorySpanExporter) -> None:
    """Each retry is one ``resilience.retry`` event with the attempt about to be made (1-based)."""
    span = start("openrouter", model="m", route=None, tracer_provider=provider)
    assert span is not None
    span.retry("openrouter", 2, "status_503", 0.5)
    span.retry("openrouter", 3, "connect_error", 1)
    end(span, attempts=3)
    finished = only_span(exporter)
    assert events(finished) == [
        ("resilience.retry",
         {"provider": "openrouter", "attempt": 2, "reason": "status_503", "wait_seconds": 0.5}),
        ("resilience.retry",
         {"provider": "openrouter", "attempt": 3, "reason": "connect_error", "wait_seconds": 1.0}),
    ]
    assert finished.attributes is not None
    assert finished.attributes["resilience.attempts"] == 3


def test_a_rejected_call(provider: TracerProvider, exporter: InMemorySpanExporter) -> None:
    """A breaker's rejection is a ``resilience.rejected`` event and the span ends in ERROR."""
    span = start("openrouter", model=None, route=None, tracer_provider=provider)
    assert span is not None
    span.rejected("openrouter", 12.5)
    end(span, provider=None, attempts=0, error=RuntimeError("circuit open"))
    finished = only_span(exporter)
    assert events(finished) == [("resilience.rejected", {"provider": "openrouter", "retry_after": 12.5})]
    assert finished.status.status_code is StatusCode.ERROR
    assert finished.status.description == "RuntimeError: circuit open"
    assert dict(finished.attributes or {}) == {"resilience.attempts": 0}


def test_a_failover(provider: TracerProvider, exporter: InMemorySpanExporter) -> None:
    """A route call moving on is a ``resilience.failover`` event; the route is an attribute."""
    span = start("chat", model="llama-3.3-70b", route="chat", tracer_provider=provider)
    assert span is not None
    span.failover("chat", "groq", "cerebras", "status_503")
    end(span, provider="cerebras", attempts=2)
    finished = only_span(exporter)
    assert finished.name == "resilience chat"
    assert events(finished) == [
        ("resilience.failover",
         {"route": "chat", "from_provider": "groq", "to_provider": "cerebras", "reason": "status_503"}),
    ]
    assert dict(finished.attributes or {}) == {
        "gen_ai.request.model": "llama-3.3-70b", "resilience.route": "chat",
        "gen_ai.provider.name": "cerebras", "resilience.attempts": 2,
    }


def test_a_hedge(provider: TracerProvider, exporter: InMemorySpanExporter) -> None:
    """A hedge started is a ``resilience.hedge`` event."""
    span = start("chat", model=None, route="chat", tracer_provider=provider)
    assert span is not None
    span.hedge("chat", "cerebras")
    end(span, provider="cerebras", attempts=2)
    assert events(only_span(exporter)) == [("resilience.hedge", {"route": "chat", "provider": "cerebras"})]


def test_a_deadline(provider: TracerProvider, exporter: InMemorySpanExporter) -> None:
    """A deadline passing is a ``resilience.deadline_exceeded`` event (no attributes), status ERROR."""
    span = start("openrouter", model=None, route=None, tracer_provider=provider)
    assert span is not None
    span.deadline_exceeded()
    error = DeadlineExceededError("the deadline of 2s passed", deadline=2.0, provider="openrouter")
    end(span, attempts=1, error=error)
    finished = only_span(exporter)
    assert events(finished) == [("resilience.deadline_exceeded", {})]
    assert finished.status.status_code is StatusCode.ERROR
    assert finished.status.description == "DeadlineExceededError: the deadline of 2s passed"


def test_a_failed_response_is_an_error_status(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    """A call ending in a failure response (no exception) ends in ERROR too."""
    span = start("openrouter", model=None, route=None, tracer_provider=provider)
    assert span is not None
    end(span, attempts=3, failed=True)
    finished = only_span(exporter)
    assert finished.status.status_code is StatusCode.ERROR
    assert finished.status.description == "failure"


def test_ending_twice_ends_once(
    provider: TracerProvider, exporter: InMemorySpanExporter, caplog: pytest.LogCaptureFixture
) -> None:
    """A second end does nothing (no second export, no SDK warning)."""
    span = start("openrouter", model=None, route=None, tracer_provider=provider)
    assert span is not None
    end(span)
    end(span, attempts=9)
    assert only_span(exporter).attributes == {"gen_ai.provider.name": "openrouter", "resilience.attempts": 1}
    assert "ended span" not in caplog.text  # the SDK warns "Calling end() on an ended span."


def test_the_tracer_is_kept_per_provider(provider: TracerProvider) -> None:
    """The library's tracer is asked of a provider once, not per call."""
    tracing._tracer_of(provider)
    first = tracing._tracer_cache
    tracing._tracer_of(provider)
    assert tracing._tracer_cache is first


# -- the names -------------------------------------------------------------------------------


def test_gen_ai_names_are_the_semantic_conventions() -> None:
    """Every gen_ai.* attribute set is in the GenAI registry pinned above, none of them deprecated."""
    assert SEMCONV_VERSION == "v1.41.1"
    assert re.fullmatch(r"[0-9a-f]{40}", SEMCONV_COMMIT)
    used = set(tracing.GEN_AI_ATTRIBUTES)
    assert used == {tracing.PROVIDER_NAME, tracing.REQUEST_MODEL, tracing.INPUT_TOKENS, tracing.OUTPUT_TOKENS}
    assert used <= set(GEN_AI_REGISTRY)
    assert not used & DEPRECATED


def test_gen_ai_names_match_the_installed_semconv_package() -> None:
    """The names agree with opentelemetry-semantic-conventions (installed with the SDK) where present."""
    attributes = pytest.importorskip("opentelemetry.semconv._incubating.attributes.gen_ai_attributes")
    assert attributes.GEN_AI_PROVIDER_NAME == tracing.PROVIDER_NAME
    assert attributes.GEN_AI_REQUEST_MODEL == tracing.REQUEST_MODEL
    assert attributes.GEN_AI_USAGE_INPUT_TOKENS == tracing.INPUT_TOKENS
    assert attributes.GEN_AI_USAGE_OUTPUT_TOKENS == tracing.OUTPUT_TOKENS


def test_token_attributes_are_ints_as_the_registry_types_them(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    """gen_ai.usage.* are ``int`` in the registry: set as ints."""
    span = start("openrouter", model=None, route=None, tracer_provider=provider)
    assert span is not None
    end(span, input_tokens=3, output_tokens=4)
    attributes = only_span(exporter).attributes or {}
    for name in (tracing.INPUT_TOKENS, tracing.OUTPUT_TOKENS):
        assert GEN_AI_REGISTRY[name] == "int"
        assert type(attributes[name]) is int
