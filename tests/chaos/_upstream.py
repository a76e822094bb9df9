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
=====================  =====================================================

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


class Upstream:
    """Counters shared by both servers, and the flap schedule (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.received: Counter[str] = Counter()
        self.cost_units = 0
        self.in_flight = 0
        self.flap_period = 0.15
        self._flap_start = time.monotonic()

    def reset(self, *, flap_period: float = 0.15) -> None:
        """Zero the counters and restart the flap schedule (between scenarios)."""
        with self._lock:
            self.received.clear()
            self.cost_units = 0
            self.flap_period = flap_period
            self._flap_start = time.monotonic()

    def arrived(self, kind: str) -> None:
        """One request of ``kind`` reached the upstream."""
        with self._lock:
            self.received[kind] += 1
            self.in_flight += 1

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


def make_app(upstream: Upstream) -> Any:
    """The uvicorn side of the fake provider."""

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        kind, _, arg = scope["path"].strip("/").partition("/")
        while (await receive()).get("more_body"):  # the whole request body first
            pass
        upstream.arrived(kind)
        try:
            await handle(upstream, kind, arg, receive, send)
        finally:
            upstream.left()

    return app


async def handle(upstream: Upstream, kind: str, arg: str, receive: Any, send: Any) -> None:
    """Answer one request as its ``kind`` says."""

    async def start(status: int, content_type: bytes, *extra: tuple[bytes, bytes]) -> None:
        headers = [(b"content-type", content_type), *extra]
        await send({"type": "http.response.start", "status": status, "headers": headers})

    async def body(data: bytes, more: bool = False) -> None:
        await send({"type": "http.response.body", "body": data, "more_body": more})

    if kind == "flap":
        kind = "ok" if upstream.flap_up() else "down"
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
    else:
        await start(404, b"application/json")
        await body(b'{"error": {"message": "no such fault"}}')


async def linger(receive: Any) -> bool:
    """Wait until the client goes away (``False``) or :data:`LINGER_SECONDS` pass (``True``)."""
    with anyio.move_on_after(LINGER_SECONDS):
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
            kind, _, arg = path.strip("/").partition("/")
            self.upstream.arrived(kind)
            try:
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
