"""The two programs ``bench_callgrind.py`` starts: the upstream, and the client it counts.

::

    python callgrind_client.py serve FD                       # uvicorn on the bound socket FD
    python callgrind_client.py CASE STACK MODE N WARMUP URL   # run under callgrind

The client builds its client (or breaker) once, sends ``WARMUP`` requests,
prints ``warm`` and waits for a line on stdin (the harness switches
callgrind's instrumentation on meanwhile), then sends ``N`` more, prints
``done`` and waits again (the harness switches instrumentation off: teardown
is not counted); only ``N`` differs between the two runs the harness
subtracts. ``STACK`` is ``httpx`` or ``httpx2`` (for ``guard``, the peer:
``pybreaker`` or ``circuitbreaker``);
``MODE`` is ``bare`` or ``wrapped`` (through ``resilience.ResilientTransport``,
or ``registry.guard``), or for the HTTP cases one of the OpenTelemetry
variants of ``wrapped``: ``wrapped_no_otel`` (``opentelemetry`` made
unimportable before ``resilience`` is imported, as if not installed) and
``wrapped_traced`` (an opentelemetry-sdk ``TracerProvider`` set globally
before the warm-up, a ``SimpleSpanProcessor`` over an exporter that drops the
spans; the client checks it got one span per request).

``RESILIENCE_BENCH_REREAD=1`` in the environment (the harness passes it on)
counts the wrapped modes with the client reading a body read whole again
(:data:`REREAD`).
"""

from __future__ import annotations

import asyncio
import gc
import importlib
import json
import os
import socket
import sys
from collections.abc import Awaitable, Callable
from typing import Any

Message = dict[str, Any]
PAYLOAD = {"model": "gpt-4o", "messages": [{"role": "user", "content": "Say hi."}]}
COMPLETION = {
    "id": "chatcmpl-1", "object": "chat.completion", "model": "gpt-4o",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hi."}, "finish_reason": "stop"}],
}
USAGE = {"prompt_tokens": 10, "completion_tokens": 20, "cost": 0.0001}
BODIES = {
    "/json": json.dumps(COMPLETION).encode(),
    "/cost": json.dumps({**COMPLETION, "usage": USAGE}).encode(),
}
DELTAS = 20
SLOW_SECONDS = 0.001


def _event(data: object) -> bytes:
    return b"data: " + json.dumps(data).encode() + b"\n\n"


SSE_EVENTS = [
    *(_event({"id": "chatcmpl-1", "object": "chat.completion.chunk", "model": "gpt-4o",
              "choices": [{"index": 0, "delta": {"content": f"token{i} "}}]}) for i in range(DELTAS)),
    _event({"id": "chatcmpl-1", "object": "chat.completion.chunk", "model": "gpt-4o", "choices": [],
            "usage": USAGE}),
    b"data: [DONE]\n\n",
]
"""22 ``data:`` events: 20 content deltas, the usage with its cost, ``[DONE]``; one chunk each."""


async def upstream(scope: Message, receive: Callable[[], Awaitable[Message]],
                   send: Callable[[Message], Awaitable[None]]) -> None:
    """A raw ASGI app: ``/json`` and ``/cost`` answer a completion, ``/sse`` streams one.

    ``/chunked`` answers what ``/cost`` does in two pieces without a ``Content-Length`` (chunked).

    ``/slow`` answers what ``/json`` does after :data:`SLOW_SECONDS` (the throughput benchmark's upstream).
    """
    while (await receive()).get("more_body"):
        pass
    path = scope["path"]
    if path == "/slow":
        await asyncio.sleep(SLOW_SECONDS)
        path = "/json"
    if path == "/sse":
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/event-stream")]})
        for event in SSE_EVENTS:
            await send({"type": "http.response.body", "body": event, "more_body": True})
        await send({"type": "http.response.body", "body": b""})
        return
    if path == "/chunked":  # the /cost body in two pieces, no Content-Length: chunked, as many providers send
        whole = BODIES["/cost"]
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": whole[:64], "more_body": True})
        await send({"type": "http.response.body", "body": whole[64:]})
        return
    body = BODIES.get(path)
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body or b"")).encode())]
    await send({"type": "http.response.start", "status": 404 if body is None else 200, "headers": headers})
    await send({"type": "http.response.body", "body": body or b""})


def serve(fd: int) -> None:
    """Serve :func:`upstream` with uvicorn on the socket the harness bound (and passed as ``fd``)."""
    import uvicorn

    config = uvicorn.Config(upstream, lifespan="off", ws="none", log_level="critical", access_log=False,
                            timeout_keep_alive=600)
    uvicorn.Server(config).run(sockets=[socket.socket(fileno=fd)])


WRAPPED_MODES = ("wrapped", "wrapped_no_otel", "wrapped_traced")
"""The modes that go through ``ResilientTransport``."""


def _otel(mode: str) -> Callable[[], int] | None:
    """Set up what ``mode`` needs of OpenTelemetry, before ``resilience`` is imported.

    ``wrapped_no_otel``: ``sys.modules["opentelemetry"] = None``, so any
    ``import opentelemetry...`` raises ``ImportError`` (as without the package).
    ``wrapped_traced``: the SDK's provider, set globally, its spans dropped;
    returns how many spans it has dropped so far.
    """
    if mode == "wrapped_no_otel":
        sys.modules["opentelemetry"] = None  # type: ignore[assignment]  # import raises ImportError
        return None
    if mode != "wrapped_traced":
        return None
    from collections.abc import Sequence

    from opentelemetry import trace
    from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult

    dropped = [0]

    class Dropping(SpanExporter):
        """Counts the spans it is given, and drops them."""

        def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
            dropped[0] += len(spans)
            return SpanExportResult.SUCCESS

    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(Dropping()))
    trace.set_tracer_provider(provider)
    return lambda: dropped[0]


def _check_otel(mode: str) -> None:
    """Exit unless the library sees what ``mode`` means: no package, or a provider set (or none)."""
    from resilience._http import tracing

    imported = [name for name, module in sys.modules.items() if name.startswith("opentelemetry") and module]
    if mode == "wrapped_no_otel" and imported:
        sys.exit(f"wrapped_no_otel: {', '.join(imported)} imported all the same")
    if mode == "wrapped_traced" and tracing.installed_provider() is None:
        sys.exit("wrapped_traced: the library sees no tracer provider")
    if mode == "wrapped" and tracing.installed_provider() is not None:
        sys.exit("wrapped: a tracer provider is set")


_REGISTRIES: list[Any] = []
"""Every registry the client made: :func:`_settle` folds their providers."""


def _registry() -> Any:
    import resilience

    registry = resilience.ProviderRegistry()
    registry.register("p", hosts=["127.0.0.1"])
    _REGISTRIES.append(registry)
    return registry


def _settle() -> None:
    """Fold every success still pending (``Provider.fold``), as the next clock bucket or read would.

    Successes are folded into the windows when the clock enters a new
    bucket. Called at the end of the warm-up and again after the last measured
    request, so every measured success is folded inside the count, once:
    whether a bucket happened to turn within the measured stretch no longer
    moves it (for ``guard``, one fold of thousands of calls is ~600 Ir a call).
    """
    for registry in _REGISTRIES:
        for provider in registry.providers():
            provider.fold(provider.clock())


REREAD = "RESILIENCE_BENCH_REREAD"
"""Set to ``1``: a JSON body read whole is not handed to the client (``Stack.holds_content`` off), so the
client reads it again through its own pipeline, as a stack that fails the probe would. What the
hand-over saves is the wrapped count with this set, less the count without."""


def _transport(stack: Any, mode: str, *, sync: bool) -> Any:
    if mode in WRAPPED_MODES:
        import resilience

        _check_otel(mode)
        if os.environ.get(REREAD) == "1":
            import dataclasses

            from resilience._http import stacks

            found = stacks.BY_REQUEST[stack.Request]
            stacks.BY_REQUEST[stack.Request] = dataclasses.replace(found, holds_content=False)
        return resilience.ResilientTransport(_registry())
    return stack.HTTPTransport() if sync else stack.AsyncHTTPTransport()


def _checked(response: Any) -> None:
    if response.status_code != 200:
        sys.exit(f"upstream answered {response.status_code}")


def _sync_request(client: Any, case: str) -> Callable[[], None]:
    """One request of ``case``, its body read to the end."""
    if case == "sync_sse":
        def stream() -> None:
            with client.stream("POST", "/sse", json=PAYLOAD) as response:
                _checked(response)
                for _ in response.iter_bytes():
                    pass

        return stream
    path = {"sync_cost": "/cost", "sync_chunked": "/chunked"}.get(case, "/json")
    return lambda: _checked(client.post(path, json=PAYLOAD))


def _guard_call(peer: str, mode: str) -> Callable[[], None]:
    """One call of a no-op through ``registry.guard`` (wrapped) or the peer's documented API (bare)."""
    if mode == "wrapped":
        guard = _registry().guard

        def ours() -> None:
            with guard("p"):
                pass

        return ours
    module = importlib.import_module(peer)
    if peer == "pybreaker":
        breaker = module.CircuitBreaker()
        return lambda: breaker.call(_noop)
    decorated: Callable[[], None] = module.CircuitBreaker(name="bench")(_noop)
    return decorated


def _noop() -> None:
    pass


def _warm() -> None:
    """Collect and freeze what the warm-up left, say so, and wait for the go (a blocking read).

    ``gc.freeze()`` keeps the collector's later passes to the objects the
    measured requests make: a full collection over the whole heap, landing in
    one run and not the other, would otherwise move a count by tens of
    thousands of instructions per request.
    """
    _settle()
    gc.collect()
    gc.freeze()
    print("warm", flush=True)
    sys.stdin.readline()


def _done() -> None:
    """Fold what they left pending (:func:`_settle`), say the measured requests are done, and wait for
    the harness to switch instrumentation off."""
    _settle()
    print("done", flush=True)
    sys.stdin.readline()


async def _async_requests(stack: Any, mode: str, base_url: str, warmup: int, n: int) -> None:
    async with stack.AsyncClient(transport=_transport(stack, mode, sync=False), base_url=base_url) as client:
        for _ in range(warmup):
            _checked(await client.post("/cost", json=PAYLOAD))
        _warm()
        for _ in range(n):
            _checked(await client.post("/cost", json=PAYLOAD))
        _done()


def run(case: str, stack_name: str, mode: str, n: int, warmup: int, base_url: str) -> None:
    """Build once, then ``warmup`` requests (or guarded calls) of ``case``, then ``n`` once told."""
    if case == "guard":
        _repeat(_guard_call(stack_name, mode), warmup, n)
        return
    spans = _otel(mode)
    stack = importlib.import_module(stack_name)
    if case == "async_cost":
        asyncio.run(_async_requests(stack, mode, base_url, warmup, n))
    else:
        with stack.Client(transport=_transport(stack, mode, sync=True), base_url=base_url) as client:
            _repeat(_sync_request(client, case), warmup, n)
    if spans is not None and spans() != warmup + n:
        sys.exit(f"wrapped_traced: {spans()} spans exported for {warmup + n} requests")


def _repeat(call: Callable[[], None], warmup: int, n: int) -> None:
    for _ in range(warmup):
        call()
    _warm()
    for _ in range(n):
        call()
    _done()


def main(argv: list[str]) -> None:
    """``serve FD``, or ``CASE STACK MODE N WARMUP URL``."""
    if argv[:1] == ["serve"]:
        serve(int(argv[1]))
        return
    case, stack, mode, n, warmup, base_url = argv
    run(case, stack, mode, int(n), int(warmup), base_url)
    sys.stdout.flush()
    os._exit(0)  # no interpreter teardown: the same in both runs, and slow under callgrind


if __name__ == "__main__":
    main(sys.argv[1:])
