"""The real OpenAI and Anthropic SDKs (on httpx2) through ``ResilientTransport`` to a loopback upstream.

The upstream imitates ``POST /v1/chat/completions`` and ``POST /v1/messages``
closely enough for the SDKs to parse it: JSON answers with ``usage``, and SSE
streams that end the way each provider ends them (OpenAI: a usage chunk,
then ``data: [DONE]``; Anthropic: ``message_delta`` with usage, then
``message_stop``). What is asserted is what a user relies on: the answer
arrives, the provider counts the call under the model the SDK sent, with
its tokens and cost, and an open breaker reaches the SDK's caller (and the
middleware) as a ``CircuitOpenError`` inside the SDK's own connection error.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import anthropic
import anyio
import httpx2
import openai
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from resilience import (
    CircuitOpenError,
    Policy,
    PriceTable,
    ProviderRegistry,
    ResilienceMiddleware,
    ResilientTransport,
    RetryPolicy,
)
from resilience.testing import FakeClock

pytestmark = [pytest.mark.integration, pytest.mark.anyio]

GPT = "gpt-4o-mini"
CLAUDE = "claude-sonnet-4-5"
UNAVAILABLE = "unavailable"
"""A model the upstream answers with 503."""
STALLED = "stalled"
"""A model the upstream sends headers for, then nothing until the client goes away."""
OVERLOADED = "overloaded"
"""A model whose stream (Anthropic) starts, then says ``event: error`` with ``overloaded_error``: a 200."""
PINGING = "pinging"
"""A model whose stream sends keepalives only (``event: ping``), until the client goes away."""

WORDS = ("Hello", " world")
TEXT = "".join(WORDS)
OPENAI_USAGE = {"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12, "cost": 0.002}
ANTHROPIC_USAGE = {"input_tokens": 11, "output_tokens": 13}
PRICES = PriceTable({CLAUDE: (3.0, 15.0)})
"""USD per million input and output tokens: Anthropic's bodies carry tokens, not cost."""
ANTHROPIC_COST = (11 * 3.0 + 13 * 15.0) / 1_000_000
MESSAGES: list[Any] = [{"role": "user", "content": "hi"}]


# -- the upstream ----------------------------------------------------------------


def openai_answer(model: str) -> dict[str, Any]:
    """A whole chat completion."""
    message = {"role": "assistant", "content": TEXT}
    choice = {"index": 0, "message": message, "finish_reason": "stop", "logprobs": None}
    return {
        "id": "chatcmpl-1", "object": "chat.completion", "created": 1_700_000_000, "model": model,
        "choices": [choice], "usage": OPENAI_USAGE,
    }


def openai_events(model: str) -> Iterator[bytes]:
    """A streamed chat completion with ``include_usage``: deltas (``usage: null``), usage, ``[DONE]``."""

    def chunk(choices: list[dict[str, Any]], usage: dict[str, Any] | None) -> bytes:
        data = {
            "id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1_700_000_000, "model": model,
            "choices": choices, "usage": usage,
        }
        return f"data: {json.dumps(data)}\n\n".encode()

    yield chunk([{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}], None)
    for word in WORDS:
        yield chunk([{"index": 0, "delta": {"content": word}, "finish_reason": None}], None)
    yield chunk([{"index": 0, "delta": {}, "finish_reason": "stop"}], None)
    yield chunk([], OPENAI_USAGE)
    yield b"data: [DONE]\n\n"


def anthropic_answer(model: str) -> dict[str, Any]:
    """A whole message."""
    return {
        "id": "msg_1", "type": "message", "role": "assistant", "model": model,
        "content": [{"type": "text", "text": TEXT}], "stop_reason": "end_turn", "stop_sequence": None,
        "usage": ANTHROPIC_USAGE,
    }


def anthropic_events(model: str) -> Iterator[bytes]:
    """A streamed message: input tokens in ``message_start``, output tokens in ``message_delta``."""

    def event(name: str, data: dict[str, Any]) -> bytes:
        return f"event: {name}\ndata: {json.dumps({'type': name, **data})}\n\n".encode()

    start = {**anthropic_answer(model), "content": [], "stop_reason": None}
    start["usage"] = {"input_tokens": ANTHROPIC_USAGE["input_tokens"], "output_tokens": 1}
    yield event("message_start", {"message": start})
    yield event("content_block_start", {"index": 0, "content_block": {"type": "text", "text": ""}})
    yield event("ping", {})
    for word in WORDS:
        yield event("content_block_delta", {"index": 0, "delta": {"type": "text_delta", "text": word}})
    yield event("content_block_stop", {"index": 0})
    delta = {"stop_reason": "end_turn", "stop_sequence": None}
    usage = {"output_tokens": ANTHROPIC_USAGE["output_tokens"]}
    yield event("message_delta", {"delta": delta, "usage": usage})
    yield event("message_stop", {})


class FakeLLM:
    """The ASGI upstream: OpenAI's and Anthropic's endpoints; counts what arrives, by path."""

    def __init__(self) -> None:
        self.received: Counter[str] = Counter()
        self.retry_counts: list[str] = []
        """The ``x-stainless-retry-count`` of each request, in order."""

    def reset(self) -> None:
        """Forget what arrived (between tests)."""
        self.received.clear()
        self.retry_counts.clear()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        path, request = scope["path"], json.loads(body)
        self.received[path] += 1
        headers = dict(scope["headers"])
        self.retry_counts.append(headers.get(b"x-stainless-retry-count", b"").decode())
        model, stream = request["model"], bool(request.get("stream"))

        async def start(status: int, content_type: bytes, *extra: tuple[bytes, bytes]) -> None:
            all_headers = [(b"content-type", content_type), *extra]
            await send({"type": "http.response.start", "status": status, "headers": all_headers})

        async def chunk(data: bytes, more: bool = False) -> None:
            await send({"type": "http.response.body", "body": data, "more_body": more})

        if model == UNAVAILABLE:  # retry-after-ms: the SDKs' own retries wait 1 ms, not seconds
            await start(503, b"application/json", (b"retry-after-ms", b"1"))
            await chunk(b'{"error": {"type": "overloaded_error", "message": "try later"}}')
        elif model == OVERLOADED and stream:
            await start(200, b"text/event-stream")
            first = next(iter(anthropic_events(CLAUDE)))  # message_start
            error = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
            await chunk(first + b"event: error\ndata: " + json.dumps(error).encode() + b"\n\n")
        elif model == PINGING:
            await start(200, b"text/event-stream")
            with anyio.move_on_after(5.0):  # until the client goes away
                while True:
                    await chunk(b'event: ping\ndata: {"type": "ping"}\n\n', more=True)
                    await anyio.sleep(0.05)
        elif model == STALLED:
            await start(200, b"text/event-stream" if stream else b"application/json")
            with anyio.move_on_after(5.0):  # until the client goes away
                while (await receive())["type"] != "http.disconnect":
                    pass
        elif path == "/v1/chat/completions" and not stream:
            answer = json.dumps(openai_answer(model)).encode()
            sized = (b"content-length", str(len(answer)).encode())  # x-sized: framed, not chunked
            await start(200, b"application/json", *([sized] if headers.get(b"x-sized") else []))
            await chunk(answer)
        elif path == "/v1/messages" and not stream:
            await start(200, b"application/json")
            await chunk(json.dumps(anthropic_answer(model)).encode())
        elif path in ("/v1/chat/completions", "/v1/messages"):
            await start(200, b"text/event-stream")
            events = openai_events if path == "/v1/chat/completions" else anthropic_events
            for data in events(model):
                await chunk(data, more=True)
            await chunk(b"")
        else:
            await start(404, b"application/json")
            await chunk(b'{"error": {"message": "not found"}}')


@pytest.fixture(scope="module")
def served(module_uvicorn_server: Callable[..., str]) -> tuple[FakeLLM, str]:
    """The fake provider on uvicorn for the whole module, and its base URL."""
    upstream = FakeLLM()
    return upstream, module_uvicorn_server(upstream)


@pytest.fixture
def upstream(served: tuple[FakeLLM, str]) -> FakeLLM:
    """The fake provider's counters, zeroed."""
    served[0].reset()
    return served[0]


@pytest.fixture
def url(served: tuple[FakeLLM, str], upstream: FakeLLM) -> str:
    """The fake provider's base URL."""
    return served[1]


# -- helpers ---------------------------------------------------------------------


def registry_for(name: str, policy: Policy | None = None) -> ProviderRegistry:
    """A registry whose provider ``name`` is the loopback host."""
    registry = ProviderRegistry()
    registry.register(name, hosts=["127.0.0.1"], policy=policy)
    return registry


def assert_recorded(
    registry: ProviderRegistry, name: str, model: str, *, cost: float, tokens: tuple[int, int]
) -> None:
    """One successful call of ``model``, with its cost and tokens, in the provider's snapshot."""
    snap = registry.get(name).snapshot()
    assert {k: v for k, v in snap.requests_total.items() if v} == {"success": 1}
    assert [m.model for m in snap.models] == [model]
    assert snap.models[0].window.successes == 1
    assert snap.cost_total == pytest.approx(cost)
    assert snap.window.cost_usd == pytest.approx(cost)
    assert (snap.window.input_tokens, snap.window.output_tokens) == tokens


def circuit_in_chain(exc: BaseException) -> CircuitOpenError | None:
    """The ``CircuitOpenError`` in ``exc``'s ``__cause__``/``__context__`` chain, if any."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, CircuitOpenError):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


SYNC_CLIENTS = [
    pytest.param(httpx2.Client, id="httpx2.Client"),
    pytest.param(openai.DefaultHttpxClient, id="DefaultHttpxClient"),
]
ASYNC_CLIENTS = [
    pytest.param(httpx2.AsyncClient, id="httpx2.AsyncClient"),
    pytest.param(openai.DefaultAsyncHttpxClient, id="DefaultAsyncHttpxClient"),
]
ANTHROPIC_SYNC_CLIENTS = [
    pytest.param(httpx2.Client, id="httpx2.Client"),
    pytest.param(anthropic.DefaultHttpxClient, id="DefaultHttpxClient"),
]
ANTHROPIC_ASYNC_CLIENTS = [
    pytest.param(httpx2.AsyncClient, id="httpx2.AsyncClient"),
    pytest.param(anthropic.DefaultAsyncHttpxClient, id="DefaultAsyncHttpxClient"),
]
STREAM = [pytest.param(False, id="json"), pytest.param(True, id="stream")]


# -- OpenAI ------------------------------------------------------------------------


@pytest.mark.parametrize("stream", STREAM)
@pytest.mark.parametrize("http_client", SYNC_CLIENTS)
def test_openai_sync(url: str, http_client: Callable[..., httpx2.Client], stream: bool) -> None:
    """openai.OpenAI: the answer arrives; the call, its model, tokens and ``usage.cost`` are recorded."""
    registry = registry_for("openai")
    http = http_client(transport=ResilientTransport(registry))
    with openai.OpenAI(base_url=url + "/v1", api_key="x", http_client=http, max_retries=0) as client:
        if stream:
            with client.chat.completions.create(
                model=GPT, messages=MESSAGES, stream=True, stream_options={"include_usage": True}
            ) as chunks:
                parts = [c.choices[0].delta.content or "" if c.choices else "" for c in chunks]
            text = "".join(parts)
        else:
            completion = client.chat.completions.create(model=GPT, messages=MESSAGES)
            text = completion.choices[0].message.content or ""
            assert completion.usage is not None and completion.usage.total_tokens == 12
    assert text == TEXT
    assert_recorded(registry, "openai", GPT, cost=0.002, tokens=(5, 7))


@pytest.mark.parametrize("sized", [pytest.param(True, id="sized"), pytest.param(False, id="chunked")])
def test_openai_raw_response_reads_as_the_clients_own_read(url: str, sized: bool) -> None:
    """``with_raw_response``, a body with a ``Content-Length`` (read whole by the call, for its in-band error)
    or chunked (streamed through): parsed, with ``elapsed`` and the bytes downloaded, as the client's read."""
    registry = registry_for("openai")
    http = httpx2.Client(transport=ResilientTransport(registry))
    extra = {"x-sized": "1"} if sized else {}
    with openai.OpenAI(base_url=url + "/v1", api_key="x", http_client=http, max_retries=0) as client:
        raw = client.chat.completions.with_raw_response.create(
            model=GPT, messages=MESSAGES, extra_headers=extra
        )
        completion = raw.parse()
        assert completion.choices[0].message.content == TEXT
        assert raw.elapsed.total_seconds() >= 0
        assert raw.http_response.num_bytes_downloaded == len(raw.http_response.content)
        assert ("content-length" in raw.headers) is sized
        assert raw.http_response.json()["usage"] == OPENAI_USAGE
    assert_recorded(registry, "openai", GPT, cost=0.002, tokens=(5, 7))


@pytest.mark.parametrize("stream", STREAM)
@pytest.mark.parametrize("http_client", ASYNC_CLIENTS)
async def test_openai_async(url: str, http_client: Callable[..., httpx2.AsyncClient], stream: bool) -> None:
    """openai.AsyncOpenAI: the same, streamed or not."""
    registry = registry_for("openai")
    http = http_client(transport=ResilientTransport(registry))
    sdk = openai.AsyncOpenAI(base_url=url + "/v1", api_key="x", http_client=http, max_retries=0)
    async with sdk as client:
        if stream:
            async with await client.chat.completions.create(
                model=GPT, messages=MESSAGES, stream=True, stream_options={"include_usage": True}
            ) as chunks:
                parts = [c.choices[0].delta.content or "" if c.choices else "" async for c in chunks]
            text = "".join(parts)
        else:
            completion = await client.chat.completions.create(model=GPT, messages=MESSAGES)
            text = completion.choices[0].message.content or ""
    assert text == TEXT
    assert_recorded(registry, "openai", GPT, cost=0.002, tokens=(5, 7))


# -- Anthropic ---------------------------------------------------------------------


@pytest.mark.parametrize("stream", STREAM)
@pytest.mark.parametrize("http_client", ANTHROPIC_SYNC_CLIENTS)
def test_anthropic_sync(url: str, http_client: Callable[..., httpx2.Client], stream: bool) -> None:
    """anthropic.Anthropic: the answer arrives; tokens recorded and priced by a ``PriceTable``."""
    registry = registry_for("anthropic", Policy(cost=PRICES))
    http = http_client(transport=ResilientTransport(registry))
    final: anthropic.types.Message
    with anthropic.Anthropic(base_url=url, api_key="x", http_client=http, max_retries=0) as client:
        if stream:
            with client.messages.stream(model=CLAUDE, max_tokens=64, messages=MESSAGES) as events:
                text = "".join(events.text_stream)
                final = events.get_final_message()
        else:
            final = client.messages.create(model=CLAUDE, max_tokens=64, messages=MESSAGES)
            text = "".join(block.text for block in final.content if block.type == "text")
    assert text == TEXT
    assert (final.usage.input_tokens, final.usage.output_tokens) == (11, 13)
    assert_recorded(registry, "anthropic", CLAUDE, cost=ANTHROPIC_COST, tokens=(11, 13))


@pytest.mark.parametrize("stream", STREAM)
@pytest.mark.parametrize("http_client", ANTHROPIC_ASYNC_CLIENTS)
async def test_anthropic_async(
    url: str, http_client: Callable[..., httpx2.AsyncClient], stream: bool
) -> None:
    """anthropic.AsyncAnthropic: the same, streamed or not."""
    registry = registry_for("anthropic", Policy(cost=PRICES))
    http = http_client(transport=ResilientTransport(registry))
    final: anthropic.types.Message
    async with anthropic.AsyncAnthropic(base_url=url, api_key="x", http_client=http, max_retries=0) as client:
        if stream:
            async with client.messages.stream(model=CLAUDE, max_tokens=64, messages=MESSAGES) as events:
                text = "".join([part async for part in events.text_stream])
                final = await events.get_final_message()
        else:
            final = await client.messages.create(model=CLAUDE, max_tokens=64, messages=MESSAGES)
            text = "".join(block.text for block in final.content if block.type == "text")
    assert text == TEXT
    assert (final.usage.input_tokens, final.usage.output_tokens) == (11, 13)
    assert_recorded(registry, "anthropic", CLAUDE, cost=ANTHROPIC_COST, tokens=(11, 13))


# -- the same call in either SDK, for the tests below --------------------------------

SDKS = ["openai", "anthropic"]


def ask_sync(sdk: str, url: str, registry: ProviderRegistry) -> str:
    """One non-streamed call through ``sdk``'s sync client; the answer's text."""
    http = httpx2.Client(transport=ResilientTransport(registry))
    if sdk == "openai":
        with openai.OpenAI(base_url=url + "/v1", api_key="x", http_client=http, max_retries=0) as oai:
            completion = oai.chat.completions.create(model=GPT, messages=MESSAGES)
            return completion.choices[0].message.content or ""
    with anthropic.Anthropic(base_url=url, api_key="x", http_client=http, max_retries=0) as ant:
        message = ant.messages.create(model=CLAUDE, max_tokens=64, messages=MESSAGES)
        return "".join(block.text for block in message.content if block.type == "text")


async def ask_async(
    sdk: str, url: str, transport: ResilientTransport, *, model: str | None = None, max_retries: int = 0
) -> str:
    """One non-streamed call through ``sdk``'s async client; the answer's text."""
    http = httpx2.AsyncClient(transport=transport)
    if sdk == "openai":
        async with openai.AsyncOpenAI(
            base_url=url + "/v1", api_key="x", http_client=http, max_retries=max_retries
        ) as oai:
            completion = await oai.chat.completions.create(model=model or GPT, messages=MESSAGES)
            return completion.choices[0].message.content or ""
    async with anthropic.AsyncAnthropic(
        base_url=url, api_key="x", http_client=http, max_retries=max_retries
    ) as ant:
        message = await ant.messages.create(model=model or CLAUDE, max_tokens=64, messages=MESSAGES)
        return "".join(block.text for block in message.content if block.type == "text")


REJECTIONS: dict[str, type[Exception]] = {
    "openai": CircuitOpenError,
    "anthropic": anthropic.APIConnectionError,
}
"""What an open breaker raises from each SDK. openai >= 3 wraps only httpx2's ``RequestError`` (and
TLS errors) as ``APIConnectionError``: the ``CircuitOpenError`` comes through as it is. Anthropic
wraps every exception as ``APIConnectionError`` from it (and retries it, see below)."""
TIMEOUT_ERRORS: dict[str, type[Exception]] = {
    "openai": openai.APITimeoutError,
    "anthropic": anthropic.APITimeoutError,
}
STATUS_ERRORS: dict[str, type[Exception]] = {
    "openai": openai.InternalServerError,
    "anthropic": anthropic.InternalServerError,
}


def assert_rejected(
    exc: BaseException, registry: ProviderRegistry, sdk: str, upstream: FakeLLM, *, times: int = 1
) -> None:
    """``exc`` is or wraps the provider's ``CircuitOpenError``; nothing reached the upstream."""
    circuit = circuit_in_chain(exc)
    assert circuit is not None, repr(exc)
    assert circuit.provider == sdk and circuit.retry_after > 0
    assert registry.get(sdk).snapshot().requests_total["rejected"] == times
    assert upstream.received == {}


@pytest.mark.parametrize("sdk", SDKS)
def test_open_breaker_reaches_the_sync_sdks_caller(sdk: str, url: str, upstream: FakeLLM) -> None:
    """Breaker open: the sync SDK raises a ``CircuitOpenError`` or its connection error wrapping one."""
    registry = registry_for(sdk)
    registry.get(sdk).force_open()
    with pytest.raises(REJECTIONS[sdk]) as caught:
        ask_sync(sdk, url, registry)
    assert_rejected(caught.value, registry, sdk, upstream)


@pytest.mark.parametrize("sdk", SDKS)
async def test_open_breaker_reaches_the_async_sdks_caller(sdk: str, url: str, upstream: FakeLLM) -> None:
    """The same through the async SDK."""
    registry = registry_for(sdk)
    registry.get(sdk).force_open()
    with pytest.raises(REJECTIONS[sdk]) as caught:
        await ask_async(sdk, url, ResilientTransport(registry))
    assert_rejected(caught.value, registry, sdk, upstream)


@pytest.mark.parametrize(("sdk", "rejected"), [("openai", 1), ("anthropic", 2)])
async def test_sdk_retries_over_an_open_breaker(sdk: str, rejected: int, url: str, upstream: FakeLLM) -> None:
    """SDK ``max_retries=1``: openai fails fast; Anthropic retries its connection error (after a backoff)."""
    registry = registry_for(sdk)
    registry.get(sdk).force_open()
    with pytest.raises(REJECTIONS[sdk]) as caught:
        await ask_async(sdk, url, ResilientTransport(registry), max_retries=1)
    assert_rejected(caught.value, registry, sdk, upstream, times=rejected)


@pytest.mark.parametrize("sdk", SDKS)
async def test_middleware_answers_503_when_the_sdk_meets_an_open_breaker(sdk: str, url: str) -> None:
    """A route calling the SDK: 200 with the answer; breaker open: 503, Retry-After, the provider named."""
    registry = registry_for(sdk)
    transport = ResilientTransport(registry)

    async def chat(request: Request) -> JSONResponse:
        return JSONResponse({"text": await ask_async(sdk, url, transport)})

    app = Starlette(routes=[Route("/chat", chat, methods=["POST"])])
    app.add_middleware(ResilienceMiddleware, registry=registry)
    inbound = httpx2.ASGITransport(app=app)
    async with httpx2.AsyncClient(transport=inbound, base_url="http://gateway") as client:
        ok = await client.post("/chat")
        registry.get(sdk).force_open()
        rejected = await client.post("/chat")
    assert (ok.status_code, ok.json()) == (200, {"text": TEXT})
    assert rejected.status_code == 503
    assert int(rejected.headers["retry-after"]) >= 1
    assert rejected.json()["error"]["provider"] == sdk
    assert registry.get(sdk).snapshot().requests_total["rejected"] == 1


@pytest.mark.parametrize("sdk", SDKS)
async def test_sdk_retries_multiply_the_transports(sdk: str, url: str, upstream: FakeLLM) -> None:
    """SDK ``max_retries=1`` over ``RetryPolicy(attempts=2)``: 2 × 2 attempts, all recorded; SDK raises."""
    registry = registry_for(sdk, Policy(retry=RetryPolicy(attempts=2, jitter=0.0)))
    clock = FakeClock()
    transport = ResilientTransport(registry, sleep=clock.sleep, async_sleep=clock.async_sleep)
    with pytest.raises(STATUS_ERRORS[sdk]):
        await ask_async(sdk, url, transport, model=UNAVAILABLE, max_retries=1)
    path = "/v1/chat/completions" if sdk == "openai" else "/v1/messages"
    assert upstream.received == {path: 4}
    assert upstream.retry_counts == ["0", "0", "1", "1"]  # the transport resends the SDK's request as is
    snap = registry.get(sdk).snapshot()
    assert {k: v for k, v in snap.requests_total.items() if v} == {"failure": 4}
    assert sum(snap.retries_total.values()) == 2  # one per SDK try; the SDK's own retry is a new call
    assert [m.model for m in snap.models] == [UNAVAILABLE]


@pytest.mark.parametrize("sdk", SDKS)
async def test_stream_timeout_is_the_sdks_timeout_error(sdk: str, url: str) -> None:
    """``first_byte_timeout`` on a stalled body: the SDK raises its timeout error; a failure is recorded."""
    policy = Policy(first_byte_timeout=0.2, retry=RetryPolicy(attempts=1))
    registry = registry_for(sdk, policy)
    with anyio.fail_after(4.0), pytest.raises(TIMEOUT_ERRORS[sdk]):
        await ask_async(sdk, url, ResilientTransport(registry), model=STALLED)
    snap = registry.get(sdk).snapshot()
    assert {k: v for k, v in snap.requests_total.items() if v} == {"failure": 1}


# -- what providers really say; routes; deadlines ---------------------------------------


async def test_anthropic_stream_that_reports_overloaded_in_band_is_a_failure(url: str) -> None:
    """A 200 stream that says ``event: error`` (overloaded_error): the SDK raises; the provider failed."""
    registry = registry_for("anthropic", Policy(retry=RetryPolicy(attempts=1)))
    http = httpx2.AsyncClient(transport=ResilientTransport(registry))
    async with anthropic.AsyncAnthropic(base_url=url, api_key="x", http_client=http, max_retries=0) as ant:
        with pytest.raises(anthropic.APIStatusError, match="Overloaded"):
            async with ant.messages.stream(model=OVERLOADED, max_tokens=64, messages=MESSAGES) as stream:
                async for _ in stream:
                    pass
    snap = registry.get("anthropic").snapshot()
    assert {k: v for k, v in snap.requests_total.items() if v} == {"failure": 1}
    assert snap.error_rate == 1.0


@pytest.mark.parametrize("sdk", SDKS)
async def test_a_stream_of_keepalives_only_is_cut_by_first_token_timeout(sdk: str, url: str) -> None:
    """Pings every 50 ms never end the wait for the first token: a timeout error, a failure.

    The SDKs wrap errors of the request, not of a stream they iterate: mid-stream, the
    ``StreamTimeoutError`` (an httpx2 ``TimeoutException``) reaches the caller as it is.
    """
    registry = registry_for(sdk, Policy(first_token_timeout=0.4, retry=RetryPolicy(attempts=1)))
    http = httpx2.AsyncClient(transport=ResilientTransport(registry))
    with anyio.fail_after(4.0), pytest.raises((TIMEOUT_ERRORS[sdk], httpx2.TimeoutException)):
        if sdk == "openai":
            async with openai.AsyncOpenAI(base_url=url + "/v1", api_key="x", http_client=http,
                                          max_retries=0) as oai:
                chunks = await oai.chat.completions.create(model=PINGING, messages=MESSAGES, stream=True)
                async for _ in chunks:
                    pass
        else:
            ant = anthropic.AsyncAnthropic(base_url=url, api_key="x", http_client=http, max_retries=0)
            async with ant, ant.messages.stream(model=PINGING, max_tokens=64, messages=MESSAGES) as stream:
                async for _ in stream:
                    pass
    snap = registry.get(sdk).snapshot()
    assert {k: v for k, v in snap.requests_total.items() if v} == {"failure": 1}


def route_registry(url: str) -> tuple[ProviderRegistry, Any]:
    """Two providers on the loopback server under two host names; a route: the failing one first."""
    from resilience import RoutePolicy, Target

    registry = ProviderRegistry(Policy(retry=RetryPolicy(attempts=1)))
    registry.register("down", hosts=["127.0.0.1"])
    registry.register("up", hosts=["localhost"])
    port = url.rsplit(":", 1)[1]
    route = registry.route("gpt", [
        Target("down", base_url=f"{url}/v1", model=UNAVAILABLE, headers={"authorization": "Bearer d"}),
        Target("up", base_url=f"http://localhost:{port}/v1", model=GPT,
               headers={"authorization": "Bearer u"}),
    ], policy=RoutePolicy(order="priority"))
    return registry, route


@pytest.mark.parametrize("stream", STREAM)
async def test_openai_sdk_on_a_route_fails_over_to_the_healthy_target(url: str, stream: bool) -> None:
    """The SPEC's wiring: ``base_url=route.base_url`` on httpx2; the 503 target is left for the next."""
    registry, route = route_registry(url)
    http = httpx2.AsyncClient(transport=ResilientTransport(registry))
    async with openai.AsyncOpenAI(base_url=route.base_url, api_key="unused", http_client=http,
                                  max_retries=0) as oai:
        if stream:
            chunks = await oai.chat.completions.create(
                model="gpt", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
            )
            text = "".join([c.choices[0].delta.content or "" async for c in chunks if c.choices])
        else:
            completion = await oai.chat.completions.create(model="gpt", messages=MESSAGES)
            text = completion.choices[0].message.content or ""
    assert text == TEXT
    assert {k: v for k, v in registry.get("down").snapshot().requests_total.items() if v} == {"failure": 1}
    assert_recorded(registry, "up", GPT, cost=OPENAI_USAGE["cost"], tokens=(5, 7))
    assert route.snapshot().failovers_total == {("down", "up"): 1}


def test_openai_sync_sdk_on_a_route(url: str) -> None:
    registry, route = route_registry(url)
    http = httpx2.Client(transport=ResilientTransport(registry))
    with openai.OpenAI(base_url=route.base_url, api_key="unused", http_client=http, max_retries=0) as oai:
        completion = oai.chat.completions.create(model="gpt", messages=MESSAGES)
    assert completion.choices[0].message.content == TEXT and completion.model == GPT


@pytest.mark.parametrize("sdk", SDKS)
async def test_a_deadline_is_the_sdks_timeout_error_and_not_the_providers_fault(sdk: str, url: str) -> None:
    """``Policy(deadline_seconds=...)`` on a stalled body: the SDK's timeout error, not held against it."""
    from resilience import DeadlineExceededError

    registry = registry_for(sdk, Policy(deadline_seconds=0.3, retry=RetryPolicy(attempts=1)))
    with anyio.fail_after(4.0), pytest.raises(TIMEOUT_ERRORS[sdk]) as caught:
        await ask_async(sdk, url, ResilientTransport(registry), model=STALLED)
    chain: BaseException | None = caught.value
    while chain is not None and not isinstance(chain, DeadlineExceededError):
        chain = chain.__cause__ or chain.__context__
    assert isinstance(chain, DeadlineExceededError) and chain.deadline == 0.3
    snap = registry.get(sdk).snapshot()
    assert not any(snap.requests_total.values()) and snap.deadline_exceeded_total == 1
