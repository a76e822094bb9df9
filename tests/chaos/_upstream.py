"""The chaos suite's fake provider: a uvicorn app and a raw socket server, both counting.

Behaviour is chosen by the request path (``/<kind>/<arg>``):

=====================  =====================================================
``/ok/<n>``            200 JSON with ``usage.cost`` = n × :data:`COST_UNIT`
``/sse/<n>``           200 SSE, three deltas, then the usage event (cost n units)
``/status/<code>``     that status, a JSON error body, no cost
``/throttle/<secs>``   429 with ``Retry-After: <secs>``
``/hang``              no response until the client goes away
``/stall``             200 SSE headers and one event, then silence until the client goes away
``/flap/<n>``          ``/ok/<n>`` or 503, alternating every :attr:`Upstream.flap_period` s
``/reset``             (raw server) read the request, then reset the connection (RST)
``/reuse/<n>``         (raw server) first request on a connection: ``/ok/<n>``; later ones: RST
``/drop/<n>``          (raw server) first request on a connection: ``/ok/<n>``; later ones: read
                       in full, worked on for :data:`DROP_SECONDS`, then the connection closed
                       (FIN) without a response: a provider that crashed mid-request
``/auto/<n>``          ``/sse/<n>`` when the request body says ``"stream": true``, else ``/ok/<n>``
``/slow/<n>``          ``/auto/<n>``, but only after :data:`SLOW_SECONDS` (nothing if the client
                       goes away first): a provider slow to its first token
``/late/<ms>,<n>``     ``/auto/<n>`` after ``ms`` milliseconds (nothing if the client goes away first)
``/late_status/<ms>,<code>``  that status after ``ms`` milliseconds, as ``/status/<code>``
``/json_cut/<n>``      (raw server) 200 JSON headers with the ``content-length`` of ``/ok/<n>``, half the
                       body, then (after :data:`CUT_DELAY`) a reset: a non-streamed body cut short
``/pings/<n>``         200 SSE headers, ``n`` keepalives (``: ping``) :data:`PING_GAP` s apart, then
                       silence until the client goes away: no content event, ever
``/sse_error``         200 SSE: a keepalive, then Anthropic's ``event: error`` (``overloaded_error``)
                       before any content event, then the end of the stream
``/head_reset``        (raw server) 200 SSE headers and a keepalive, then (after
                       :data:`CUT_DELAY`) a reset: the stream dies before its first content event
``/bad_chunk``         (raw server) 200 SSE headers (chunked), then a chunk whose size line is not
                       hex: the body is malformed from its first chunk
``/cut/<n>``           (raw server) 200 SSE headers and the first content event of ``/sse/<n>``,
                       then (after :data:`CUT_DELAY`) a reset: a stream cut after commit
``/cut_fin/<n>``       (raw server) as ``/cut/<n>``, but the connection closed (FIN) mid-body
=====================  =====================================================

Only the first two segments of a path choose the behaviour: anything after them (the
``/chat/completions`` a route appends to a target's base URL) is ignored. The uvicorn
side also counts, per upstream, the ``authorization`` header and the body's ``"model"``
of each request (:attr:`Upstream.authorizations`, :attr:`Upstream.models`).

Costs are multiples of 1/64 USD, exact in binary floating point and at the
dashboard's six decimals, so sums compare with ``==``. A cost counts as
*sent* once the body that carries it was handed to the socket in full.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import struct
import threading
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import anyio

COST_UNIT = 1 / 64
LINGER_SECONDS = 30.0
"""Longest a hanging or stalled handler waits for its client to go away."""

DROP_SECONDS = 0.3
"""How long ``/drop`` works on a request it then drops: long past any stale-connection failure."""

SLOW_SECONDS = 5.0
"""How long ``/slow`` keeps its first token back: far past any hedge delay, well inside the linger."""

PING_GAP = 0.05
"""Seconds between the keepalives of ``/pings``."""

CUT_DELAY = 0.05
"""How long the raw server waits after the bytes it sent before a reset: on loopback the client has
read them by then (a reset may drop data the client has not read yet)."""

SSE_HEAD = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
)
KEEPALIVE = b": ping\n\n"
OVERLOADED = (
    b"event: error\n"
    b'data: {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}\n\n'
)
"""Anthropic's in-band error event: what an overloaded provider streams instead of content."""


class Upstream:
    """Counters shared by both servers, and the flap schedule (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.received: Counter[str] = Counter()
        self.cost_units = 0
        self.in_flight = 0
        self.flap_period = 0.15
        self._flap_start = time.monotonic()
        self.authorizations: Counter[str] = Counter()
        self.models: Counter[str] = Counter()

    def reset(self, *, flap_period: float = 0.15) -> None:
        """Zero the counters and restart the flap schedule (between scenarios)."""
        with self._lock:
            self.received.clear()
            self.cost_units = 0
            self.authorizations.clear()
            self.models.clear()
            self.flap_period = flap_period
            self._flap_start = time.monotonic()

    def arrived(self, kind: str) -> None:
        """One request of ``kind`` reached the upstream."""
        with self._lock:
            self.received[kind] += 1
            self.in_flight += 1

    def saw(self, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
        """Note the ``authorization`` header and the JSON body's ``"model"`` of one request."""
        authorization = next((v.decode("latin-1") for k, v in headers if k == b"authorization"), "")
        try:
            data = json.loads(body) if body else None
        except ValueError:
            data = None
        model = data.get("model") if isinstance(data, dict) else None
        with self._lock:
            self.authorizations[authorization] += 1
            self.models[str(model)] += 1

    def left(self) -> None:
        """A handler returned."""
        with self._lock:
            self.in_flight -= 1

    def sent_cost(self, units: int) -> None:
        """A body carrying ``units`` of cost went out whole."""
        with self._lock:
            self.cost_units += units

    def flap_up(self) -> bool:
        """Whether the flapping path answers 200 now."""
        return int((time.monotonic() - self._flap_start) / self.flap_period) % 2 == 0

    @property
    def total(self) -> int:
        """Requests received, all kinds."""
        with self._lock:
            return sum(self.received.values())

    @property
    def cost_sent(self) -> float:
        """USD in the bodies sent whole."""
        return self.cost_units * COST_UNIT


def ok_body(units: int) -> bytes:
    """A chat completion carrying ``units`` of cost."""
    usage = {"prompt_tokens": 3, "completion_tokens": 5, "cost": units * COST_UNIT}
    return json.dumps({"choices": [{"message": {"content": "hi"}}], "usage": usage}).encode()


def sse_events(units: int) -> list[bytes]:
    """SSE chunks of a streamed completion; the usage (and cost) in the last data event."""
    deltas = [{"choices": [{"delta": {"content": word}}], "usage": None} for word in ("a", "b", "c")]
    usage = {"prompt_tokens": 3, "completion_tokens": 5, "cost": units * COST_UNIT}
    events = [*deltas, {"choices": [], "usage": usage}]
    return [f"data: {json.dumps(e)}\n\n".encode() for e in events] + [b"data: [DONE]\n\n"]


def split_path(path: str) -> tuple[str, str]:
    """``(kind, arg)`` of a request path: its first two segments (the rest is ignored)."""
    kind, _, rest = path.strip("/").partition("/")
    return kind, rest.partition("/")[0]


def make_app(upstream: Upstream) -> Any:
    """The uvicorn side of the fake provider."""

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        kind, arg = split_path(scope["path"])
        chunks = []
        while True:  # the whole request body first
            message = await receive()
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        body = b"".join(chunks)
        upstream.saw(scope["headers"], body)
        upstream.arrived(kind)
        try:
            await handle(upstream, kind, arg, receive, send, payload=body)
        finally:
            upstream.left()

    return app


async def handle(
    upstream: Upstream, kind: str, arg: str, receive: Any, send: Any, *, payload: bytes = b""
) -> None:
    """Answer one request as its ``kind`` says (``payload``: the request body, read by ``/auto``)."""

    async def start(status: int, content_type: bytes, *extra: tuple[bytes, bytes]) -> None:
        headers = [(b"content-type", content_type), *extra]
        await send({"type": "http.response.start", "status": status, "headers": headers})

    async def body(data: bytes, more: bool = False) -> None:
        await send({"type": "http.response.body", "body": data, "more_body": more})

    if kind == "flap":
        kind = "ok" if upstream.flap_up() else "down"
    if kind in ("slow", "late", "late_status"):
        delay, _, arg = (str(SLOW_SECONDS * 1000), "", arg) if kind == "slow" else arg.partition(",")
        if not await linger(receive, float(delay) / 1000):
            return  # the client went away first
        kind = "status" if kind == "late_status" else "auto"
    if kind == "auto":
        kind = "sse" if b'"stream": true' in payload or b'"stream":true' in payload else "ok"
    if kind == "ok":
        await start(200, b"application/json")
        await body(ok_body(int(arg)))
        upstream.sent_cost(int(arg))
    elif kind == "sse":
        await start(200, b"text/event-stream")
        *events, last = sse_events(int(arg))
        for event in events:
            await body(event, more=True)
        await body(last)
        upstream.sent_cost(int(arg))
    elif kind in ("status", "down"):
        await start(int(arg or 503) if kind == "status" else 503, b"application/json")
        await body(b'{"error": {"message": "upstream trouble"}}')
    elif kind == "throttle":
        await start(429, b"application/json", (b"retry-after", arg.encode()))
        await body(b'{"error": {"message": "slow down"}}')
    elif kind == "hang":
        if await linger(receive):
            await start(200, b"application/json")
            await body(b"{}")
    elif kind == "stall":
        await start(200, b"text/event-stream")
        await body(sse_events(0)[0], more=True)
        if await linger(receive):
            await body(b"")
    elif kind == "pings":
        await start(200, b"text/event-stream")
        for _ in range(int(arg)):
            await body(KEEPALIVE, more=True)
            if not await linger(receive, PING_GAP):
                return
        if await linger(receive):
            await body(b"")
    elif kind == "sse_error":
        await start(200, b"text/event-stream")
        await body(KEEPALIVE, more=True)
        await body(OVERLOADED)
    else:
        await start(404, b"application/json")
        await body(b'{"error": {"message": "no such fault"}}')


async def linger(receive: Any, seconds: float = LINGER_SECONDS) -> bool:
    """Wait until the client goes away (``False``) or ``seconds`` pass (``True``)."""
    with anyio.move_on_after(seconds):
        while (await receive())["type"] != "http.disconnect":
            pass
        return False
    return True


class RawServer:
    """An asyncio server in its own thread for what uvicorn will not do: reset or drop connections."""

    def __init__(self, upstream: Upstream) -> None:
        self.upstream = upstream
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="chaos-raw-server", daemon=True)
        self._connections: set[asyncio.Task[None]] = set()

    @contextlib.contextmanager
    def running(self) -> Iterator[str]:
        """Start, yield the base URL, stop and join."""
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the raw server did not start")
        try:
            yield f"http://127.0.0.1:{self.port}"
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
            if self._thread.is_alive():
                raise RuntimeError("the raw server did not stop")

    def _run(self) -> None:
        loop = self._loop
        asyncio.set_event_loop(loop)
        server = loop.run_until_complete(asyncio.start_server(self._serve, "127.0.0.1", 0, backlog=1024))
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            server.close()
            for task in list(self._connections):
                task.cancel()
            loop.run_until_complete(asyncio.gather(*self._connections, return_exceptions=True))
            loop.run_until_complete(server.wait_closed())
            loop.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        try:
            await self._requests(reader, writer)
        finally:
            self._connections.discard(task)
            writer.transport.abort()

    async def _requests(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        served = 0
        while True:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except (asyncio.IncompleteReadError, ConnectionError):
                return
            path, length = parse_head(head)
            await reader.readexactly(length)
            kind, arg = split_path(path)
            self.upstream.arrived(kind)
            try:
                if kind in STREAM_FAULTS:
                    await stream_fault(kind, arg, reader, writer)
                    return
                if kind in ("reuse", "drop") and served == 0:
                    data = ok_body(int(arg))
                    writer.write(
                        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                        + f"content-length: {len(data)}\r\n\r\n".encode() + data
                    )
                    await writer.drain()
                    self.upstream.sent_cost(int(arg))
                    served += 1
                    continue
                if kind == "drop":
                    await asyncio.sleep(DROP_SECONDS)
                    return  # the caller closes the socket: a FIN, the request having been read
                reset(writer)
                return
            finally:
                self.upstream.left()


STREAM_FAULTS = ("head_reset", "bad_chunk", "cut", "cut_fin", "json_cut")
"""Raw-server paths that answer with headers and then break the body."""


def chunk(data: bytes) -> bytes:
    """``data`` as one HTTP/1.1 chunk."""
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


async def stream_fault(
    kind: str, arg: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    """Headers, then the break ``kind`` names; the connection is not used again."""
    if kind == "json_cut":
        data = ok_body(int(arg))
        head = f"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {len(data)}\r\n\r\n"
        writer.write(head.encode() + data[: len(data) // 2])
    elif kind == "head_reset":
        writer.write(SSE_HEAD + chunk(KEEPALIVE))
    elif kind == "bad_chunk":
        writer.write(SSE_HEAD + b"zz\r\n" + sse_events(0)[0] + b"\r\n")  # a chunk size that is not hex
    else:  # the first content event: the stream commits
        writer.write(SSE_HEAD + chunk(sse_events(int(arg))[0]))
    await writer.drain()
    if kind == "cut_fin":
        writer.close()  # a FIN mid-body: the chunked body never ends
        return
    if kind == "bad_chunk":  # the client gives up on the body: wait for it to close
        with contextlib.suppress(ConnectionError, asyncio.TimeoutError):
            await asyncio.wait_for(reader.read(), LINGER_SECONDS)
        return
    await asyncio.sleep(CUT_DELAY)
    reset(writer)


def parse_head(head: bytes) -> tuple[str, int]:
    """The path and ``content-length`` of a request head."""
    lines = head.decode("latin-1").split("\r\n")
    path = lines[0].split(" ")[1]
    length = 0
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-length":
            length = int(value)
    return path, length


def reset(writer: asyncio.StreamWriter) -> None:
    """Close with a TCP reset (``SO_LINGER`` 0), not a FIN."""
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()
