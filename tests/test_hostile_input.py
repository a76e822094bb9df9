"""Hostile input: names, bodies and costs a provider or a caller should never be able to weaponise.

Names with markup, quotes, newlines, 10 kB and unicode come out of Prometheus
and the dashboard escaped and capped; a 100 MB body streams through in
constant memory; malformed JSON never fails a call; bad costs are rejected
and counted.
"""

from __future__ import annotations

import json
import re
import tracemalloc
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from starlette.applications import Starlette
from starlette.routing import Mount

from resilience import ConfigError, HeaderCost, Policy, ProviderRegistry, ResilientTransport, dashboard_router
from resilience._core.provider import MAX_LABEL_LENGTH
from resilience._http.inspect import JSON_CAP, LINE_CAP

pytestmark = pytest.mark.anyio

HOSTILE = [
    '<script>alert("x")</script>', "</script><script>alert(2)</script>", "quote\" and \\backslash",
    "new\nline", "carriage\rreturn", "tab\tand\x00nul", "ünïcödé ✓ 中文 \U0001f600", "line\u2028separator",
    'x"} 1\ninjected_metric 1\n#',
]
TEN_KB = "m" * 10_000
MB = 1 << 20


def json_response(payload: object, status: int = 200) -> httpx.Response:
    """A JSON response as a provider sends it."""
    return httpx.Response(status, json=payload)


def client_for(registry: ProviderRegistry, handler: Any) -> httpx.Client:
    """A sync client through the transport over a mock upstream."""
    return httpx.Client(transport=ResilientTransport(registry, httpx.MockTransport(handler)))


def scrape(registry: ProviderRegistry) -> dict[str, list[dict[str, str]]]:
    """Label sets by family, parsed back from the exposition text."""
    prom = CollectorRegistry()
    registry.register_metrics(prom, model_metrics=True)
    text = generate_latest(prom).decode("utf-8")
    return {f.name: [s.labels for s in f.samples] for f in text_string_to_metric_families(text)}


def label_values(families: dict[str, list[dict[str, str]]], label: str) -> set[str]:
    """Every value of ``label`` in the scrape."""
    return {labels[label] for samples in families.values() for labels in samples if label in labels}


# -- names through metrics ---------------------------------------------------------


def test_hostile_provider_names_round_trip_through_the_exposition_format() -> None:
    """Markup, quotes, newlines, NUL and unicode names parse back exactly; nothing is injected."""
    registry = ProviderRegistry()
    with client_for(registry, lambda r: json_response({"ok": True})) as client:
        for name in HOSTILE:
            client.post("http://upstream/v1", json={}, extensions={"provider": name})
        client.post("http://upstream/v1", json={}, extensions={"provider": "p" * 10_000})
    families = scrape(registry)
    assert label_values(families, "provider") == {*HOSTILE, "other"}  # 10 kB: folded into other
    assert not any(name.startswith("injected") for name in families)
    assert registry.get(HOSTILE[0]).snapshot().requests_total["success"] == 1


def test_hostile_model_names_are_capped_and_escaped() -> None:
    """Model names from request bodies come out capped at 128 characters, exactly as sent up to there."""
    registry = ProviderRegistry()
    with client_for(registry, lambda r: json_response({"ok": True})) as client:
        for name in [*HOSTILE, TEN_KB]:
            client.post("http://upstream/v1", json={"model": name, "messages": []})
    models = label_values(scrape(registry), "model")
    assert models == {*HOSTILE, TEN_KB[:MAX_LABEL_LENGTH]}
    assert max(map(len, models)) == MAX_LABEL_LENGTH


def test_model_names_past_the_cap_fold_into_other() -> None:
    """A caller inventing model names cannot grow the label set: 32 models, then other."""
    registry = ProviderRegistry()
    with client_for(registry, lambda r: json_response({"ok": True})) as client:
        for n in range(100):
            client.post("http://upstream/v1", json={"model": f"<m{n}>\n" + "x" * n})
    models = label_values(scrape(registry), "model")
    assert len(models) == 33 and "other" in models
    assert registry.get("upstream")._model_overflows == 68


@pytest.mark.parametrize(
    "extensions, body",
    [
        pytest.param({}, b'{"model": "evil\\ud800", "messages": []}', id="model-in-body"),
        pytest.param({"model": "evil\udc80"}, b"{}", id="model-extension"),
        pytest.param({"provider": "evil\ud83d"}, b"{}", id="provider-extension"),
    ],
)
def test_a_lone_surrogate_name_cannot_break_scrapes(extensions: dict[str, str], body: bytes) -> None:
    """Regression: a name UTF-8 cannot encode was kept raw and failed every later scrape."""
    registry = ProviderRegistry()
    with client_for(registry, lambda r: json_response({"ok": True})) as client:
        client.post("http://upstream/v1", content=body, extensions=extensions)
    names = label_values(scrape(registry), "provider") | label_values(scrape(registry), "model")
    assert any("\\ud" in name or "\\udc80" in name for name in names)
    with pytest.raises(ConfigError, match="UTF-8"):
        registry.register("evil\ud800")


# -- names through the dashboard ---------------------------------------------------


async def test_dashboard_json_and_page_escape_hostile_names() -> None:
    """The JSON gives the names back exactly; the page embeds them only as escaped JSON."""
    registry = ProviderRegistry()
    with client_for(registry, lambda r: json_response({"ok": True})) as client:
        for name in HOSTILE:
            client.post("http://upstream/v1", json={"model": name}, extensions={"provider": name})
    app = Starlette(routes=[Mount("/ops", app=dashboard_router(registry))])
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as http:
        health = (await http.get("/ops/health/dashboard")).json()
        models = (await http.get("/ops/models/stats")).json()
        page = (await http.get("/ops/health/dashboard/ui")).text
    assert [p["name"] for p in health["providers"]] == HOSTILE
    assert {m["model"] for m in models["models"]} == set(HOSTILE)
    seed = re.search(r'<script type="application/json" id="seed">(.*?)</script>', page, re.S)
    assert seed is not None
    assert [p["name"] for p in json.loads(seed.group(1))] == HOSTILE
    assert "<script>alert" not in page and "\u2028" not in page
    assert len(re.findall(r"</script", page, re.I)) == 2  # the page's own two script elements


# -- a 100 MB body in constant memory ----------------------------------------------

CHUNK = 64 * 1024
BODY = 100 * MB
USAGE_EVENT = b'data: {"usage": {"prompt_tokens": 1, "completion_tokens": 2, "cost": 0.25}}\n\n'


def body_chunks(kind: str) -> Iterator[bytes]:
    """100 MB made lazily: JSON filler, SSE events ending in usage, or one endless SSE line."""
    if kind == "sse":
        line = b'data: {"choices": [{"delta": {"content": "' + b"x" * 950 + b'"}}]}\n\n'
        chunk = line * (CHUNK // len(line))
    else:
        chunk = (b"[" if kind == "json" else b"data: ") + b"7" * (CHUNK - 7)
    sent = 0
    while sent + len(chunk) <= BODY - len(USAGE_EVENT):
        yield chunk
        sent += len(chunk)
    pad = BODY - len(USAGE_EVENT) - sent
    yield b"\n" * pad + USAGE_EVENT if kind == "sse" else b"7" * pad + b"]" * len(USAGE_EVENT)


async def async_chunks(kind: str) -> AsyncIterator[bytes]:
    """:func:`body_chunks` for async clients."""
    for chunk in body_chunks(kind):
        yield chunk


CONTENT_TYPES = {"json": "application/json", "sse": "text/event-stream", "line": "text/event-stream"}


def read_sync(registry: ProviderRegistry, kind: str) -> int:
    """Stream the 100 MB body with a sync client; the bytes received."""
    headers = {"content-type": CONTENT_TYPES[kind]}
    upstream = httpx.MockTransport(lambda r: httpx.Response(200, headers=headers, content=body_chunks(kind)))
    with (
        httpx.Client(transport=ResilientTransport(registry, upstream)) as client,
        client.stream("POST", "http://big/v1") as response,
    ):
        return sum(len(chunk) for chunk in response.iter_bytes())


async def read_async(registry: ProviderRegistry, kind: str) -> int:
    """Stream the 100 MB body with an async client; the bytes received."""
    headers = {"content-type": CONTENT_TYPES[kind]}
    upstream = httpx.MockTransport(lambda r: httpx.Response(200, headers=headers, content=async_chunks(kind)))
    async with (
        httpx.AsyncClient(transport=ResilientTransport(registry, upstream)) as client,
        client.stream("POST", "http://big/v1") as response,
    ):
        return sum([len(chunk) async for chunk in response.aiter_bytes()])


@pytest.mark.parametrize("kind", ["json", "sse", "line"])
@pytest.mark.parametrize("side", ["sync", "async"])
async def test_a_100_mb_stream_passes_in_constant_memory(side: str, kind: str) -> None:
    """100 MB through the transport with iter_bytes: peak traced memory stays under 8 MB."""
    registry = ProviderRegistry()
    tracemalloc.start()
    try:
        received = read_sync(registry, kind) if side == "sync" else await read_async(registry, kind)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert received == BODY
    assert peak < 8 * MB, peak
    assert max(JSON_CAP, LINE_CAP) <= 1 * MB
    snap = registry.get("big").snapshot()
    assert snap.requests_total["success"] == 1
    assert snap.cost_total == (0.25 if kind == "sse" else 0.0)  # the usage after 100 MB is still found
    assert snap.window.unknown_cost == (1 if kind == "json" else 0)  # JSON past its 1 MiB cap


# -- malformed JSON --------------------------------------------------------------

DEEP = b"[" * 100_000


@pytest.mark.parametrize(
    "body, model",
    [
        pytest.param(b'{"model": "gpt', None, id="truncated"),
        pytest.param(b'{"model": "\xff\xfe"}', None, id="invalid-utf8"),
        pytest.param(DEEP + b'"model": "x"', None, id="nested-100k-deep"),
        pytest.param(b'{"a": ' + DEEP + b'{"model": "x"', None, id="model-under-100k-brackets"),
        pytest.param(b'{"model": 123}', None, id="model-not-a-string"),
        pytest.param(b'{"messages": [{"model": "inner"}]}', None, id="nested-model-only"),
        pytest.param(b'{"model": "ok", "pad": "' + b"x" * (2 * MB) + b'"}', None, id="over-1-mib-not-read"),
        pytest.param(b'{"x": 1, "model": "a\\"b"}', 'a"b', id="escaped-quote"),
    ],
)
def test_malformed_json_requests_go_through(body: bytes, model: str | None) -> None:
    """Regression included: a body nested 100k deep raised RecursionError out of the transport."""
    registry = ProviderRegistry()
    with client_for(registry, lambda r: json_response({"ok": True})) as client:
        response = client.post("http://upstream/v1", content=body)
    assert response.status_code == 200
    snap = registry.get("upstream").snapshot()
    assert snap.requests_total["success"] == 1
    assert [m.model for m in snap.models] == ([] if model is None else [model])


@pytest.mark.parametrize(
    "content_type, body, errors",
    [
        pytest.param("application/json", b'{"usage": {"cost": 0.1', {"cost_parse": 1}, id="truncated"),
        pytest.param("application/json", b'{"usage": ' + DEEP, {"cost_parse": 1}, id="json-100k-deep"),
        pytest.param("application/json", b'{"usage": "\xff"}', {"cost_parse": 1}, id="invalid-utf8"),
        pytest.param("application/json", b'{"usage": [1, 2]}', {}, id="usage-not-an-object"),
        pytest.param("text/event-stream", b"data: {usage\n\n", {"cost_parse": 1}, id="sse-garbage"),
        pytest.param("text/event-stream", b'data: {"usage":' + DEEP + b"\n\n", {"cost_parse": 1},
                     id="sse-100k-deep"),
        pytest.param("application/json", b'{"usage": {"cost": 0.5}, "usage": 7}', {}, id="duplicate-key"),
    ],
)
@pytest.mark.parametrize("streamed", [False, True])
def test_malformed_json_responses_reach_the_caller(
    content_type: str, body: bytes, errors: dict[str, int], streamed: bool
) -> None:
    """The caller gets the body untouched; the cost is unknown and counted (deep nesting: a regression)."""
    registry = ProviderRegistry()

    def handler(request: httpx.Request) -> httpx.Response:
        content = iter([body[: len(body) // 2], body[len(body) // 2 :]]) if streamed else body
        return httpx.Response(200, headers={"content-type": content_type}, content=content)

    with client_for(registry, handler) as client:
        response = client.post("http://upstream/v1", json={})
    assert response.content == body
    provider = registry.get("upstream")
    assert provider.snapshot().requests_total["success"] == 1
    assert provider.errors == errors
    assert provider.snapshot().cost_total == 0.0


# -- costs -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "cost, kind",
    [
        pytest.param(b"-1", "invalid_cost", id="negative"),
        pytest.param(b"NaN", "invalid_cost", id="nan"),
        pytest.param(b"1e999", "invalid_cost", id="infinite"),
        pytest.param(b"1e300", "invalid_cost", id="huge"),
        pytest.param(b"1" + b"0" * 400, "cost_parse", id="huge-integer"),
        pytest.param(b'"0.5"', "cost_parse", id="string"),
        pytest.param(b"true", "cost_parse", id="bool"),
    ],
)
def test_bad_costs_in_bodies_are_rejected_and_counted(cost: bytes, kind: str) -> None:
    """A bad usage.cost never reaches the counter; the call succeeds; the error is counted by kind."""
    registry = ProviderRegistry()
    body = b'{"usage": {"prompt_tokens": 1, "cost": ' + cost + b"}}"
    headers = {"content-type": "application/json"}
    with client_for(registry, lambda r: httpx.Response(200, headers=headers, content=body)) as client:
        assert client.post("http://upstream/v1", json={}).status_code == 200
    provider = registry.get("upstream")
    snap = provider.snapshot()
    assert provider.errors == {kind: 1}
    assert (snap.cost_total, snap.window.cost_usd, snap.window.unknown_cost) == (0.0, 0.0, 1)
    assert snap.window.input_tokens == 1


@pytest.mark.parametrize(
    "policy, value, kind",
    [
        pytest.param(Policy(cost=HeaderCost()), "-0.5", "cost_parse", id="header-negative"),
        pytest.param(Policy(cost=HeaderCost()), "nan", "cost_parse", id="header-nan"),
        pytest.param(Policy(cost=HeaderCost()), "1e300", "invalid_cost", id="header-huge"),
        pytest.param(Policy(cost=lambda m, u, h: 10**400), "", "invalid_cost", id="extractor-huge-int"),
        pytest.param(Policy(cost=lambda m, u, h: float("nan")), "", "invalid_cost", id="extractor-nan"),
    ],
)
def test_bad_costs_from_headers_and_extractors_are_rejected_and_counted(
    policy: Policy, value: str, kind: str
) -> None:
    """Regression included: an extractor returning an int too large for a float lost the whole record."""
    registry = ProviderRegistry(policy)
    with client_for(registry, lambda r: httpx.Response(200, headers={"x-cost-usd": value})) as client:
        assert client.post("http://upstream/v1", json={}).status_code == 200
    provider = registry.get("upstream")
    assert provider.errors == {kind: 1}
    assert provider.snapshot().requests_total["success"] == 1
    assert provider.snapshot().cost_total == 0.0


def test_model_detection_parses_a_crafted_body_at_most_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """A 1 MiB body with many nested "model" pairs costs at most one JSON parse, whatever its shape."""
    import json

    from resilience._http import resolve as _resolve

    parses: list[int] = []
    real = json.loads

    def counting(data: Any, **kwargs: Any) -> Any:
        parses.append(len(data))
        return real(data, **kwargs)

    monkeypatch.setattr(json, "loads", counting)
    pad = b"x" * 1000
    nested = b"".join(b'{"k%d": {"model": "nested-%d", "pad": "%s"}}, ' % (i, i, pad) for i in range(8))
    body = b'{"messages": [' + nested.rstrip(b", ") + b'], "model": "top"}'
    request = httpx.Request("POST", "https://p.test/v1", content=body + b" " * ((1 << 20) - len(body) - 1))
    assert _resolve.model_from_body(request) == "top"
    assert len(parses) <= 1


def test_endless_distinct_content_types_are_judged_but_not_kept() -> None:
    """A new content-type on every response: each is judged right, and the cache stays capped."""
    from resilience._http import inspect

    cap = inspect._KINDS_CAP
    for i in range(cap * 3):
        kind, encoding, _, _ = inspect.scan(httpx.Headers({
            "content-type": f"application/json; charset=utf-8; x={i}", "content-encoding": " GZIP ",
        }))
        assert (kind, encoding) == ("json", b"gzip")
        assert inspect.scan(httpx.Headers({"content-type": f"text/plain; x={i}"}))[0] is None
    assert len(inspect._KINDS) <= cap
    assert inspect.scan(httpx.Headers({}))[:2] == (None, None)


@pytest.mark.parametrize(("length", "within"), [
    (None, None), (b"", None), (b"-1", None), (b"1_000", None), (b" 12", None), (b"9" * 40, None),
    (b"0", True), (str(JSON_CAP).encode(), True), (str(JSON_CAP + 1).encode(), False), (b"9" * 18, False),
])
def test_a_content_length_is_small_only_when_it_is_digits_within_the_cap(
    length: bytes | None, within: bool | None
) -> None:
    """Whether a JSON body may be read whole: by its Content-Length if it is plain digits, else unknown."""
    from resilience._http.inspect import small

    assert small(length) is within
