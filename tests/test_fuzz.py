"""Fuzzing the parsers that read what providers and callers send: never raise, never hang, stay bounded.

``Retry-After`` (transport and middleware), the cost extractors, the JSON and
SSE usage finders and the request-model finder get arbitrary text and bytes
from hypothesis, then crafted worst cases (deep nesting, megabytes without a
newline, a gzip bomb, pathological regex input) checked against their memory
caps and, with a generous watchdog, for termination.
"""

from __future__ import annotations

import email.utils
import json
import math
import threading
import tracemalloc
import zlib
from collections.abc import Callable
from itertools import pairwise
from typing import Any

import httpx
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from resilience import HeaderCost, Policy, PriceTable, ProviderRegistry
from resilience._asgi.middleware import _retry_after
from resilience._core.cost import CostParseError, attempt_cost, usage_cost
from resilience._core.retry import parse_retry_after
from resilience._http.inspect import (
    JSON_CAP,
    LINE_CAP,
    BodyInspector,
    json_error,
    json_usage,
    whole_body_usage,
)
from resilience._http.resolve import MAX_BODY, model_from_body

FUZZ = settings(max_examples=300, deadline=None)
MB = 1 << 20
WATCHDOG_SECONDS = 60.0
"""A hang detector, not a speed test: every worst case here takes well under a second."""

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)
header_text = st.text(st.characters(min_codepoint=0, max_codepoint=255), max_size=60)
"""Header values as httpx hands them over: latin-1 text."""


def finishes(work: Callable[[], object]) -> object:
    """Run ``work`` in a thread; fail if it has not returned within :data:`WATCHDOG_SECONDS`."""
    result: list[object] = []
    thread = threading.Thread(target=lambda: result.append(work()), daemon=True)
    thread.start()
    thread.join(WATCHDOG_SECONDS)
    assert not thread.is_alive(), "did not terminate"
    assert result, "raised"
    return result[0]


# -- Retry-After ------------------------------------------------------------------


@FUZZ
@given(value=st.text() | header_text, now=st.floats(allow_nan=True, allow_infinity=True))
def test_retry_after_never_raises(value: str, now: float) -> None:
    """Any text at any wall time: ``None`` or a finite number of seconds >= 0."""
    seconds = parse_retry_after(value, now=lambda: now)
    assert seconds is None or (math.isfinite(seconds) and seconds >= 0)


@FUZZ
@given(raw=st.binary(max_size=80))
def test_middleware_retry_after_never_raises(raw: bytes) -> None:
    """The middleware's reading of an app's Retry-After header: any bytes, ``None`` or seconds >= 0."""
    seconds = _retry_after([(b"Retry-After", raw)])
    assert seconds is None or (math.isfinite(seconds) and seconds >= 0)


@FUZZ
@given(seconds=st.integers(0, 10**9), pad=st.sampled_from(["", " ", "\t"]))
def test_retry_after_reads_delta_seconds(seconds: int, pad: str) -> None:
    """Whole delta-seconds read back exactly, surrounding whitespace or not."""
    assert parse_retry_after(f"{pad}{seconds}{pad}") == seconds


@FUZZ
@given(ahead=st.integers(-10**6, 10**6), now=st.integers(10**9, 2 * 10**9))
def test_retry_after_reads_http_dates(ahead: int, now: int) -> None:
    """An HTTP date ``ahead`` seconds from now reads as that many seconds (a past one as 0)."""
    value = email.utils.formatdate(now + ahead, usegmt=True)
    assert parse_retry_after(value, now=lambda: float(now)) == max(0, ahead)


# -- cost extractors --------------------------------------------------------------


@FUZZ
@given(usage=st.none() | st.dictionaries(st.text(max_size=8), json_values, max_size=4), cost=json_values)
def test_usage_cost_returns_a_number_or_says_why_not(usage: dict[str, Any] | None, cost: object) -> None:
    """usage.cost: a float, ``None``, or a CostParseError (counted by the caller); nothing else."""
    if usage is not None:
        usage["cost"] = cost
    try:
        result = usage_cost("m", usage, {})
    except CostParseError:
        return
    assert result is None or isinstance(result, float)


@FUZZ
@given(value=header_text)
def test_header_cost_returns_a_cost_or_says_why_not(value: str) -> None:
    """A cost header: a finite cost >= 0, or a CostParseError."""
    try:
        cost = HeaderCost()("m", None, {"x-cost-usd": value})
    except CostParseError:
        return
    assert cost is not None and math.isfinite(cost) and cost >= 0


@FUZZ
@given(
    usage=st.none() | st.dictionaries(st.text(max_size=12), json_values, max_size=5),
    headers=st.dictionaries(st.sampled_from(["x-cost-usd", "content-type", "x"]), header_text, max_size=3),
    extractor=st.sampled_from([None, HeaderCost(), PriceTable({"m": (1.0, 2.0)})]),
)
def test_attempt_cost_never_raises(
    usage: dict[str, Any] | None, headers: dict[str, str], extractor: Any
) -> None:
    """Whatever the usage object and headers, the extractor's verdict comes back as a CostResult."""
    provider = ProviderRegistry(Policy(cost=extractor)).register("p")
    result = attempt_cost(provider, "m", usage, headers)
    assert result.cost is None or isinstance(result.cost, float)
    assert result.input_tokens >= 0 and result.output_tokens >= 0


# -- usage finders ------------------------------------------------------------------


@FUZZ
@given(body=st.binary(max_size=400) | st.builds(lambda v: json.dumps({"usage": v}).encode(), json_values))
def test_json_usage_never_raises(body: bytes) -> None:
    """Any body: a usage dict or nothing, and a problem only when it is there but unreadable."""
    usage, problem = json_usage(body)
    assert usage is None or isinstance(usage, dict)
    assert problem in (None, "malformed")


@FUZZ
@given(
    content_type=st.sampled_from(["application/json", "text/event-stream", "a/x+json", "text/html"]),
    encoding=st.sampled_from([None, "gzip", "deflate", "br", "identity", "GZIP"]),
    body=st.binary(max_size=400),
)
def test_whole_body_usage_never_raises(content_type: str, encoding: str | None, body: bytes) -> None:
    """Any headers and body already in memory: a verdict, never an exception."""
    headers = httpx.Headers({"content-type": content_type})
    if encoding is not None:
        headers["content-encoding"] = encoding
    usage, _problem = whole_body_usage(headers, body)
    assert usage is None or isinstance(usage, dict)


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    """``data`` in pieces at the given offsets."""
    points = sorted({c % (len(data) + 1) for c in cuts})
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]


@FUZZ
@given(
    sse=st.booleans(),
    encoding=st.sampled_from([None, b"gzip", b"deflate"]),
    data=st.binary(max_size=600),
    cuts=st.lists(st.integers(0, 600), max_size=6),
)
def test_inspector_never_raises_and_stays_bounded(
    sse: bool, encoding: bytes | None, data: bytes, cuts: list[int]
) -> None:
    """Arbitrary chunks, raw or claimed compressed: no exception, buffers within their caps."""
    inspector = BodyInspector(sse=sse, encoding=encoding)
    for chunk in split(data, cuts):
        inspector.feed(chunk)
        assert len(inspector._partial) <= LINE_CAP
        assert sum(map(len, inspector._chunks)) <= JSON_CAP
    for complete in (False, True):
        usage, _problem = inspector.result(complete)
        assert usage is None or isinstance(usage, dict)


events = st.lists(
    st.one_of(
        st.builds(lambda v: {"choices": [{"delta": {"content": v}}], "usage": None}, st.text(max_size=10)),
        st.builds(lambda a, b: {"usage": {"prompt_tokens": a, "completion_tokens": b}}, st.integers(0, 99),
                  st.integers(0, 99)),
        st.builds(lambda c: {"message": {"usage": {"input_tokens": c}}}, st.integers(0, 99)),
    ),
    max_size=6,
)


@FUZZ
@given(stream=events, cuts=st.lists(st.integers(0, 2000), max_size=8), crlf=st.booleans())
def test_sse_usage_is_the_same_however_the_stream_is_cut(
    stream: list[dict[str, Any]], cuts: list[int], crlf: bool
) -> None:
    """The usage found in an SSE stream does not depend on where the chunks break."""
    newline = b"\r\n" if crlf else b"\n"
    data = b"".join(b"data: " + json.dumps(e).encode() + newline * 2 for e in stream)
    data += b"data: [DONE]" + newline
    whole = BodyInspector(sse=True)
    whole.feed(data)
    pieces = BodyInspector(sse=True)
    for chunk in split(data, cuts):
        pieces.feed(chunk)
    expected: dict[str, Any] = {}
    for event in stream:
        usage = event.get("usage") or event.get("message", {}).get("usage")
        expected.update(usage or {})
    assert pieces.result(True) == whole.result(True) == ((expected or None), None)


signal_events = st.lists(
    st.one_of(
        st.just(b": ping"),
        st.just(b": OPENROUTER PROCESSING"),
        st.just(b'event: ping\ndata: {"type": "ping"}'),
        st.builds(lambda v: b"data: " + json.dumps({"choices": [{"delta": {"content": v}}]}).encode(),
                  st.text(max_size=10)),
        st.sampled_from([b"overloaded_error", b"rate_limit_error", b"api_error"]).map(
            lambda kind: b'event: error\ndata: {"type": "error", "error": {"type": "' + kind + b'"}}'
        ),
        st.builds(lambda code: b'data: {"error": {"message": "x", "code": ' + str(code).encode() + b"}}",
                  st.sampled_from([429, 500, 502])),
    ),
    max_size=8,
)


def expected_signals(stream: list[bytes]) -> tuple[bool, str | None]:
    """(a content event was seen, the first in-band error) of an SSE stream of ``signal_events``."""
    content, error = False, None
    for event in stream:
        if event.startswith(b"event: error"):
            error = error or ("throttled" if b"rate_limit" in event else "failure")
        elif event.startswith(b'data: {"error"'):
            error = error or ("throttled" if b"429" in event else "failure")
        elif event.startswith(b'data: {"choices"'):
            content = True
    return content, error


@FUZZ
@given(stream=signal_events, cuts=st.lists(st.integers(0, 3000), max_size=8), crlf=st.booleans())
def test_sse_signals_are_the_same_however_the_stream_is_cut(
    stream: list[bytes], cuts: list[int], crlf: bool
) -> None:
    """Content, keepalives and error events are told apart whatever the chunking, CRLF or LF."""
    newline = b"\r\n" if crlf else b"\n"
    data = b"".join(event.replace(b"\n", newline) + newline * 2 for event in stream)
    pieces = BodyInspector(sse=True)
    saw_content = False
    for chunk in split(data, cuts):
        saw_content = pieces.feed(chunk) or saw_content
    assert (saw_content, pieces.in_band) == expected_signals(stream)


@FUZZ
@given(
    lines=st.lists(
        st.one_of(
            st.binary(max_size=80),
            st.sampled_from([
                b"event: error", b"event: ping", b"data: {", b'data: {"error": 1}', b"data: [DONE]",
                b'data: {"error": {"code": "429"}}', b'data: {"error": {"type": null}}', b":", b"",
            ]),
        ),
        max_size=12,
    ),
    cuts=st.lists(st.integers(0, 1000), max_size=6),
)
def test_sse_error_events_never_raise(lines: list[bytes], cuts: list[int]) -> None:
    """Hostile SSE lines: no exception; an in-band verdict is one of the two outcomes, or none."""
    inspector = BodyInspector(sse=True)
    for chunk in split(b"\n".join(lines), cuts):
        assert inspector.feed(chunk) in (True, False)
        assert len(inspector._partial) <= LINE_CAP
    inspector.result(True)
    assert inspector.in_band in (None, "failure", "throttled")


@FUZZ
@given(body=st.one_of(
    st.binary(max_size=300),
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(max_size=8),
        lambda children: st.lists(children, max_size=3) | st.dictionaries(
            st.sampled_from(["error", "type", "code", "status", "message"]), children, max_size=4
        ),
        max_leaves=12,
    ).map(lambda value: json.dumps(value).encode()),
))
def test_json_error_bodies_never_raise(body: bytes) -> None:
    """Any body, any JSON shape around ``error``: a verdict of none, failure or throttled."""
    assert json_error(body) in (None, "failure", "throttled")


# -- the request model -------------------------------------------------------------


@FUZZ
@given(body=st.binary(max_size=300) | st.text(max_size=300).map(str.encode))
def test_model_from_body_never_raises(body: bytes) -> None:
    """Any request body: a model name or ``None``."""
    model = model_from_body(httpx.Request("POST", "http://p/", content=body))
    assert model is None or isinstance(model, str)


@FUZZ
@given(
    model=st.text(max_size=40),
    others=st.dictionaries(st.text(max_size=8).filter(lambda k: k != "model"), json_values, max_size=4),
    first=st.booleans(),
    compact=st.booleans(),
)
def test_model_from_body_finds_the_top_level_model(
    model: str, others: dict[str, Any], first: bool, compact: bool
) -> None:
    """The top-level ``"model"`` of any JSON object, wherever it sits and however it is spaced."""
    payload = {"model": model, **others} if first else {**others, "model": model}
    separators = (",", ":") if compact else (", ", ": ")
    body = json.dumps(payload, separators=separators).encode()
    if "model" in json.dumps(others):
        return  # a nested "model" key may shadow: covered by the regex's own tests
    assert model_from_body(httpx.Request("POST", "http://p/", content=body)) == model


# -- worst cases: termination and memory ------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b'"model"' + b" " * (MAX_BODY - 20) + b":", id="whitespace-before-colon"),
        pytest.param(b'{"model": "' + b"\\\\" * (MAX_BODY // 2 - 10), id="unterminated-escapes"),
        pytest.param(b'"model":"' * (MAX_BODY // 9), id="many-model-keys"),
        pytest.param(b"[" * (MAX_BODY - 20) + b'"model":"x"', id="a-million-brackets"),
    ],
)
def test_model_finder_worst_cases_terminate(body: bytes) -> None:
    """1 MiB crafted against the model regex and parser: an answer, not a hang or a RecursionError."""
    assert finishes(lambda: model_from_body(httpx.Request("POST", "http://p/", content=body))) is None


def fed(inspector: BodyInspector, chunks: Any) -> tuple[BodyInspector, int]:
    """Feed ``chunks``; the inspector and the peak traced memory in bytes."""
    tracemalloc.start()
    try:
        for chunk in chunks:
            inspector.feed(chunk)
            assert len(inspector._partial) <= LINE_CAP
            assert sum(map(len, inspector._chunks)) <= JSON_CAP
        inspector.result(True)
        return inspector, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def zeros_compressed(megabytes: int) -> list[bytes]:
    """``megabytes`` MiB of zeros, gzip-compressed, in pieces (a decompression bomb)."""
    packer = zlib.compressobj(9, zlib.DEFLATED, zlib.MAX_WBITS | 16)
    block = bytes(MB)
    return [packer.compress(block) for _ in range(megabytes)] + [packer.flush()]


@pytest.mark.parametrize(
    "sse, encoding, chunks",
    [
        pytest.param(True, None, lambda: [b"data: " + b"x" * (64 * 1024)] * 160, id="sse-10MB-one-line"),
        pytest.param(True, None, lambda: [b'data: {"usage":' + b"[" * 65_000 + b"\n\n"] * 20,
                     id="sse-lines-nested-65k-deep"),
        pytest.param(False, None, lambda: [b"{" * (64 * 1024)] * 160, id="json-10MB"),
        pytest.param(True, b"gzip", lambda: zeros_compressed(200), id="sse-gzip-bomb-200MB"),
        pytest.param(False, b"gzip", lambda: zeros_compressed(200), id="json-gzip-bomb-200MB"),
    ],
)
def test_inspector_worst_cases_stay_bounded(
    sse: bool, encoding: bytes | None, chunks: Callable[[], list[bytes]]
) -> None:
    """Megabytes without a newline, deep nesting, a gzip bomb: peak memory a few MiB, never the body."""
    pieces = chunks()
    outcome = finishes(lambda: fed(BodyInspector(sse=sse, encoding=encoding), pieces))
    assert isinstance(outcome, tuple)
    inspector, peak = outcome
    assert peak < 6 * MB, peak
    assert inspector.result(True)[0] is None


sse_lines = st.sampled_from([
    b"", b": ping", b": OPENROUTER PROCESSING", b"event: ping", b"event: error", b"event: message_delta",
    b'data: {"type": "ping"}', b'data: {"choices": [{"delta": {"content": "hi"}}]}',
    b'data: {"choices": [{"delta": {"content": "the usage of error"}}]}',
    b'data: {"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 4, "cost": 0.5}}',
    b'data: {"usage": {"completion_tokens": 9}, "choices": []}',
    b'data: {"type": "message_start", "message": {"usage": {"input_tokens": 25}}}',
    b'data: {"type": "message_delta", "usage": {"output_tokens": 15}}',
    b'data: {"error": {"type": "overloaded_error", "message": "Overloaded"}}',
    b'data: {"error": {"code": 429, "message": "rate limited"}}',
    b'data: {"type": "error", "error": {"type": "rate_limit_error"}}',
    b'data: {"message": "upstream went away"}', b'data: {"usage": {broken', b"data: [DONE]",
])


@settings(max_examples=1000, deadline=None)
@example(  # a ping event named in one batch, its data (with usage) in the next: still a keepalive
    lines=[
        b'data: {"choices": [{"delta": {"content": "hi"}}]}', b"", b"event: ping",
        b'data: {"type": "message_delta", "usage": {"output_tokens": 15}}', b"",
    ],
    crlf=False, cuts=[51, 63], batch=1,
)
@given(
    lines=st.lists(sse_lines, max_size=40),
    crlf=st.booleans(),
    cuts=st.lists(st.integers(min_value=0, max_value=4000), max_size=12),
    batch=st.integers(min_value=1, max_value=6),
)
def test_batches_read_an_sse_stream_as_chunk_by_chunk_does(
    lines: list[bytes], crlf: bool, cuts: list[int], batch: int
) -> None:
    """Past the first content event, chunks looked at in batches give the same usage, problem and error.

    The same stream, cut into the same chunks, is fed to one inspector chunk
    by chunk and to another chunk by chunk until its first content event,
    then ``batch`` chunks at a time (``taken`` and ``look()``), as a stream
    without timers hands them over.
    """
    body = b"".join(line + (b"\r\n" if crlf else b"\n") for line in lines)
    points = sorted({cut for cut in cuts if cut < len(body)} | {0, len(body)})
    chunks = [body[a:b] for a, b in pairwise(points)]
    one_by_one, batched = BodyInspector(sse=True), BodyInspector(sse=True)
    for chunk in chunks:
        one_by_one.feed(chunk)
    rest = iter(chunks)
    for chunk in rest:
        if batched.feed(chunk):
            break
    for chunk in rest:
        batched.taken.append(chunk)
        if len(batched.taken) == batch:
            batched.look()
    for complete in (True, False):
        assert batched.result(complete) == one_by_one.result(complete)
    assert batched.in_band == one_by_one.in_band
