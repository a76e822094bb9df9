"""Cost extractors, bounded body inspection, and cost recorded through the transport."""

from __future__ import annotations

import gzip
import json
import logging
from collections.abc import Iterator, Mapping
from typing import Any

import httpx
import pytest

from resilience import ConfigError, HeaderCost, Policy, PriceTable, ProviderRegistry, ResilientTransport
from resilience._core.cost import CostParseError, usage_cost, usage_tokens
from resilience._http.inspect import INCOMPLETE, JSON_CAP, LINE_CAP, MALFORMED, BodyInspector
from resilience.testing import FakeClock

URL = "https://openrouter.ai/api/v1/chat/completions"


def inspector(content_type: str, **headers: str) -> BodyInspector:
    """An inspector for a response with this content type (and extra headers)."""
    found = BodyInspector.for_headers(httpx.Headers({"content-type": content_type, **headers}))
    assert found is not None
    return found


def sse(*events: object) -> bytes:
    """An SSE body: one ``data:`` line per event (strings verbatim, the rest as JSON)."""
    return b"".join(
        f"data: {e if isinstance(e, str) else json.dumps(e)}\n\n".encode() for e in events
    )


def client(policy: Policy | None = None, *, handler: Any) -> tuple[httpx.Client, ProviderRegistry]:
    """A sync client over a mock upstream, provider ``openrouter`` registered with ``policy``."""
    registry = ProviderRegistry(clock=FakeClock())
    registry.register("openrouter", hosts=["openrouter.ai"], policy=policy)
    return httpx.Client(transport=ResilientTransport(registry, httpx.MockTransport(handler))), registry


# -- extractors ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("usage", "expected"),
    [
        pytest.param({"cost": 0.25}, 0.25, id="float"),
        pytest.param({"cost": 2}, 2.0, id="int"),
        pytest.param({"prompt_tokens": 3}, None, id="no-cost"),
        pytest.param(None, None, id="no-usage"),
    ],
)
def test_usage_cost_reads_usage_cost(usage: Mapping[str, Any] | None, expected: float | None) -> None:
    """The default extractor returns usage.cost in USD."""
    assert usage_cost("m", usage, {}) == expected


@pytest.mark.parametrize("bad", [pytest.param("0.1", id="string"), pytest.param(True, id="bool")])
def test_usage_cost_rejects_non_numbers(bad: object) -> None:
    """A usage.cost that is not a number is a parse error, not a cost."""
    with pytest.raises(CostParseError):
        usage_cost("m", {"cost": bad}, {})


@pytest.mark.parametrize(
    ("usage", "expected"),
    [
        pytest.param({"prompt_tokens": 10, "completion_tokens": 5}, (10, 5), id="openai"),
        pytest.param({"input_tokens": 7, "output_tokens": 2}, (7, 2), id="anthropic"),
        pytest.param({"prompt_tokens": -1, "completion_tokens": "5"}, (0, 0), id="garbage"),
        pytest.param(None, (0, 0), id="none"),
    ],
)
def test_usage_tokens(usage: Mapping[str, Any] | None, expected: tuple[int, int]) -> None:
    """Tokens come from OpenAI or Anthropic names; anything else counts 0."""
    assert usage_tokens(usage) == expected


def test_price_table_prices_tokens_per_million() -> None:
    """USD = input × price_in / 1e6 + output × price_out / 1e6, for either naming."""
    table = PriceTable({"gpt-4o": (2.5, 10.0)})
    assert table("gpt-4o", {"prompt_tokens": 1000, "completion_tokens": 100}, {}) == pytest.approx(0.0035)
    assert table("gpt-4o", {"input_tokens": 2_000_000, "output_tokens": 0}, {}) == pytest.approx(5.0)
    assert table("other-model", {"prompt_tokens": 1000}, {}) is None
    assert table("gpt-4o", None, {}) is None
    assert table(None, {"prompt_tokens": 1}, {}) is None


@pytest.mark.parametrize(
    "price",
    [
        pytest.param((1.0,), id="short"),
        pytest.param((-1.0, 1.0), id="negative"),
        pytest.param((float("nan"), 1.0), id="nan"),
        pytest.param("1,2", id="string"),
    ],
)
def test_price_table_rejects_bad_prices(price: object) -> None:
    """A bad price fails at construction with the model named."""
    with pytest.raises(ConfigError, match="gpt-4o"):
        PriceTable({"gpt-4o": price})  # type: ignore[dict-item]  # the point of the test


def test_header_cost_reads_the_header() -> None:
    """HeaderCost reads its header; a missing header is no cost; garbage is a parse error."""
    extractor = HeaderCost("x-cost-usd")
    assert extractor(None, None, httpx.Headers({"X-Cost-USD": "0.003"})) == pytest.approx(0.003)
    assert extractor(None, None, httpx.Headers()) is None
    for bad in ("abc", "-1", "inf", "nan"):
        with pytest.raises(CostParseError):
            extractor(None, None, httpx.Headers({"x-cost-usd": bad}))


# -- body inspection -----------------------------------------------------------


def test_json_body_found_across_chunks() -> None:
    """A JSON body's usage is found however the body is cut."""
    body = json.dumps({"id": "x", "usage": {"cost": 0.5, "prompt_tokens": 1}}).encode()
    found = inspector("application/json; charset=utf-8")
    for i in range(0, len(body), 7):
        found.feed(body[i : i + 7])
    assert found.result(True) == ({"cost": 0.5, "prompt_tokens": 1}, None)


def test_json_body_past_the_cap_is_not_kept() -> None:
    """Past the cap the body is dropped (bounded memory) and the cost is unknown."""
    found = inspector("application/json")
    found.feed(b"{" + b" " * JSON_CAP)
    found.feed(b'"usage": {"cost": 1}}')
    assert found.result(True) == (None, INCOMPLETE)
    assert found._chunks == []


@pytest.mark.parametrize(
    ("body", "complete", "expected"),
    [
        pytest.param(b'{"usage": {"cost": ', True, (None, MALFORMED), id="malformed"),
        pytest.param(b'{"usage": {"cost": 1}}', False, (None, INCOMPLETE), id="cut-short"),
        pytest.param(b'{"id": 1}', True, (None, None), id="no-usage"),
        pytest.param(b'{"usage": null}', True, (None, None), id="null-usage"),
        pytest.param(b'["usage"]', True, (None, None), id="not-an-object"),
    ],
)
def test_json_body_problems(body: bytes, complete: bool, expected: tuple[object, object]) -> None:
    """Malformed, truncated or usage-less bodies give no usage, and say why."""
    found = inspector("application/json")
    found.feed(body)
    assert found.result(complete) == expected


def test_gzip_json_is_decoded() -> None:
    """A gzip-encoded body is decoded on the fly before looking for usage."""
    body = gzip.compress(json.dumps({"usage": {"cost": 0.125}}).encode())
    found = inspector("application/json", **{"content-encoding": "gzip"})
    found.feed(body[:10])
    found.feed(body[10:])
    assert found.result(True) == ({"cost": 0.125}, None)


def test_unreadable_encoding_is_unknown() -> None:
    """An encoding the inspector cannot decode leaves the cost unknown."""
    found = inspector("application/json", **{"content-encoding": "br"})
    found.feed(b"\x8b\x02\x80")
    assert found.result(True) == (None, INCOMPLETE)


def test_other_content_types_are_not_inspected() -> None:
    """HTML, text and bodies without a content type are never inspected."""
    for headers in ({"content-type": "text/html"}, {}):
        assert BodyInspector.for_headers(httpx.Headers(headers)) is None


def test_sse_keeps_the_latest_usage_not_the_sum() -> None:
    """Anthropic-style cumulative usage: input from message_start, output from the last delta."""
    body = sse(
        {"type": "message_start", "message": {"usage": {"input_tokens": 25, "output_tokens": 1}}},
        {"type": "content_block_delta", "delta": {"text": "hi"}},
        {"type": "message_delta", "usage": {"output_tokens": 10}},
        {"type": "message_delta", "usage": {"output_tokens": 15}},
    )
    found = inspector("text/event-stream")
    found.feed(body)
    assert found.result(True) == ({"input_tokens": 25, "output_tokens": 15}, None)


def test_sse_openai_usage_in_the_final_chunk() -> None:
    """OpenAI-style: usage null on every chunk but the last; [DONE] ignored; cut anywhere."""
    body = sse(
        {"choices": [{"delta": {"content": "a"}}], "usage": None},
        {"choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 4, "cost": 0.02}},
        "[DONE]",
    )
    found = inspector("text/event-stream")
    for i in range(0, len(body), 5):
        found.feed(body[i : i + 5])
    assert found.result(True) == ({"prompt_tokens": 9, "completion_tokens": 4, "cost": 0.02}, None)


def test_sse_usage_found_wherever_it_sits_and_decoded_alone_when_last(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A usage object that ends its event is decoded alone; elsewhere, the whole event is parsed.

    Elsewhere: first in the event, or nested in a message (Anthropic's ``message_start``).
    Fed chunk by chunk, and in batches past the first content event (``taken``, ``look``).
    """
    parsed: list[bytes] = []
    loads = json.loads

    def counting(text: bytes) -> Any:
        parsed.append(text)
        return loads(text)

    monkeypatch.setattr(json, "loads", counting)  # what the inspector calls to parse a whole event
    usage = {"prompt_tokens": 9, "completion_tokens": 4, "cost": 0.02}
    shapes = {
        "last": ({"id": "c", "choices": [], "usage": usage}, 0),
        "first": ({"usage": usage, "choices": []}, 1),
        "in a message": ({"type": "message_start", "message": {"id": "m", "usage": usage}}, 1),
    }
    for event, parses in shapes.values():
        for batched in (False, True):
            parsed.clear()
            found = inspector("text/event-stream")
            events = [sse({"choices": [{"delta": {"content": "a"}}]}), sse(event), sse("[DONE]")]
            assert found.feed(events[0])  # the first content event
            if batched:
                found.taken.extend(events[1:])
                found.look()
            else:
                for chunk in events[1:]:
                    found.feed(chunk)
            assert found.result(True) == (usage, None)
            assert len(parsed) == parses


def test_sse_final_line_without_newline() -> None:
    """A last event not followed by a newline is still read when the stream ends."""
    found = inspector("text/event-stream")
    found.feed(b'data: {"usage": {"cost": 0.5}}')
    assert found.result(True) == ({"cost": 0.5}, None)


def test_sse_overlong_lines_are_skipped() -> None:
    """A line longer than the cap is dropped (bounded memory); later events still count."""
    found = inspector("text/event-stream")
    found.feed(b'data: {"usage": {"cost": 9}, "pad": "' + b"x" * LINE_CAP)
    assert len(found._partial) == 0
    found.feed(b'x"}\n\ndata: {"usage": {"cost": 1}}\n\n')
    assert found.result(True) == ({"cost": 1}, None)


def test_sse_malformed_usage_line() -> None:
    """A usage line that does not parse, with no usage after it, is a malformed body."""
    found = inspector("text/event-stream")
    found.feed(b'data: {"usage": {\n\n')
    assert found.result(True) == (None, MALFORMED)


def test_sse_without_usage() -> None:
    """A finished stream without usage has no cost; one cut short has an unknown one."""
    complete, cut = inspector("text/event-stream"), inspector("text/event-stream")
    for found in (complete, cut):
        found.feed(sse({"choices": []}, "[DONE]"))
    assert complete.result(True) == (None, None)
    assert cut.result(False) == (None, INCOMPLETE)


# -- through the transport ------------------------------------------------------


def test_default_cost_and_tokens_recorded() -> None:
    """usage.cost and the tokens of a JSON body land in the provider and model windows."""
    usage = {"cost": 0.01, "prompt_tokens": 12, "completion_tokens": 3}
    http, registry = client(handler=lambda request: httpx.Response(200, json={"usage": usage}))
    http.post(URL, json={"model": "gpt-4o"})
    snap = registry.get("openrouter").snapshot()
    assert snap.cost_total == pytest.approx(0.01)
    assert (snap.window.costed, snap.window.input_tokens, snap.window.output_tokens) == (1, 12, 3)
    assert snap.models[0].model == "gpt-4o"
    assert snap.models[0].window.cost_usd == pytest.approx(0.01)


def test_price_table_policy() -> None:
    """Policy(cost=PriceTable(...)) prices the request's model from the body's tokens."""
    usage = {"input_tokens": 1_000_000, "output_tokens": 100_000}
    http, registry = client(
        Policy(cost=PriceTable({"claude": (3.0, 15.0)})),
        handler=lambda request: httpx.Response(200, json={"usage": usage}),
    )
    http.post(URL, json={"model": "claude"})
    assert registry.get("openrouter").snapshot().cost_total == pytest.approx(4.5)


def test_header_cost_policy_without_a_body() -> None:
    """Policy(cost=HeaderCost(...)) reads the header even from a plain-text response."""
    http, registry = client(
        Policy(cost=HeaderCost("x-cost-usd")),
        handler=lambda request: httpx.Response(200, text="ok", headers={"x-cost-usd": "0.75"}),
    )
    assert http.get(URL).text == "ok"
    assert registry.get("openrouter").snapshot().cost_total == pytest.approx(0.75)


def test_malformed_body_is_unknown_cost_and_counted() -> None:
    """A body that says usage but does not parse: the call succeeds, the cost is unknown."""
    http, registry = client(
        handler=lambda request: httpx.Response(
            200, content=b'{"usage": {"cost": 0.1', headers={"content-type": "application/json"}
        )
    )
    assert http.get(URL).status_code == 200
    provider = registry.get("openrouter")
    snap = provider.snapshot()
    assert (snap.window.successes, snap.window.unknown_cost, snap.cost_total) == (1, 1, 0.0)
    assert provider.errors == {"cost_parse": 1}


def test_malformed_header_is_unknown_cost_and_counted() -> None:
    """A cost header that is not a number never fails the call."""
    http, registry = client(
        Policy(cost=HeaderCost()),
        handler=lambda request: httpx.Response(200, headers={"x-cost-usd": "lots"}),
    )
    assert http.get(URL).status_code == 200
    provider = registry.get("openrouter")
    assert provider.snapshot().window.unknown_cost == 1
    assert provider.errors == {"cost_parse": 1}


def test_raising_user_extractor_is_logged_and_counted(caplog: pytest.LogCaptureFixture) -> None:
    """A user cost callable that raises is logged and counted; the response still arrives."""

    def broken(model: str | None, usage: Mapping[str, Any] | None, headers: Mapping[str, str]) -> float:
        raise RuntimeError("bug in my extractor")

    http, registry = client(Policy(cost=broken), handler=lambda request: httpx.Response(200, json={}))
    with caplog.at_level(logging.ERROR, logger="resilience"):
        assert http.get(URL).json() == {}
    provider = registry.get("openrouter")
    assert provider.errors == {"cost_extractor": 1}
    assert provider.snapshot().window.unknown_cost == 1
    assert "bug in my extractor" in caplog.text


def test_user_extractor_gets_model_usage_and_headers() -> None:
    """The user callable sees the request's model, the parsed usage and the response headers."""
    seen: list[tuple[object, ...]] = []

    def extractor(model: str | None, usage: Mapping[str, Any] | None, headers: Mapping[str, str]) -> float:
        seen.append((model, usage, headers.get("x-request-id")))
        return 0.5

    http, registry = client(
        Policy(cost=extractor),
        handler=lambda request: httpx.Response(
            200, json={"usage": {"total_tokens": 3}}, headers={"x-request-id": "r1"}
        ),
    )
    http.post(URL, json={"model": "m1", "messages": []})
    assert seen == [("m1", {"total_tokens": 3}, "r1")]
    assert registry.get("openrouter").snapshot().cost_total == 0.5


def test_streamed_sse_cost_recorded_when_the_stream_ends() -> None:
    """SSE usage is found as the stream passes and recorded at its end."""
    body = sse({"choices": [{"delta": {"content": "hi"}}]}, {"usage": {"cost": 0.004}}, "[DONE]")

    def chunks() -> Iterator[bytes]:
        yield from (body[i : i + 9] for i in range(0, len(body), 9))

    http, registry = client(
        handler=lambda request: httpx.Response(
            200, content=chunks(), headers={"content-type": "text/event-stream"}
        )
    )
    with http.stream("POST", URL, json={"model": "m"}) as response:
        assert b"".join(response.iter_raw()) == body
        assert registry.get("openrouter").snapshot().cost_total == pytest.approx(0.004)


@pytest.mark.parametrize(
    ("returned", "error"),
    [
        pytest.param("0.1", "cost_extractor", id="string"),
        pytest.param(float("nan"), "invalid_cost", id="nan"),
        pytest.param(-1.0, "invalid_cost", id="negative"),
    ],
)
def test_user_extractor_returning_garbage_is_unknown(returned: object, error: str) -> None:
    """A cost that is not a finite number >= 0 is counted and recorded as unknown, never raised."""
    http, registry = client(
        Policy(cost=lambda model, usage, headers: returned),  # type: ignore[arg-type,return-value]
        handler=lambda request: httpx.Response(200),
    )
    assert http.get(URL).status_code == 200
    provider = registry.get("openrouter")
    assert provider.errors == {error: 1}
    snap = provider.snapshot()
    assert (snap.window.unknown_cost, snap.cost_total) == (1, 0.0)
