"""Dead pooled connections: resend only what provably never reached the provider whole.

An idle keep-alive connection the server closed is the pool's business:
httpcore's pool tests every idle connection before handing it out
(``has_expired()``: the keep-alive expiry, and a socket readable while idle,
which can only be the server's EOF) and opens a fresh one instead. Nothing
of ours is needed, and nothing is recorded.

What is left reaches us as a request that failed before any response. From
the client that looks the same whether the server hung up an instant before
the request arrived or read the request, worked on it and then dropped the
connection (a crash, a deploy, a proxy timeout): both end in ``Server
disconnected without sending a response``. The second may have been billed.
So the rule is what the write proves, not what is likely:

* **resent** (once, at once, whatever the retry policy says, not recorded
  against the provider, counted as a ``stale_connection`` retry): the request
  was not written whole. httpcore writes the body by iterating the request's
  stream and swallows a write error to read a possible early response; the
  stream is read through :class:`WatchedBody`, which notes that the body's
  last chunk was written when httpcore asks for the next one. A write fails
  only once the peer's TCP has refused the connection, so the provider never
  received the request's last byte: no application answers, or bills, a
  request it never received whole.
* **a failure** like any other (recorded, retried only if the retry policy
  allows; with ``attempts=1`` never): everything else, including a request
  written whole and then dropped. A server closing an idle connection just
  as our request went out (its FIN crossing the request) is
  indistinguishable from one that read it and dropped, and is counted so;
  so is a write cut short that only the read reports (asyncio buffers
  writes, so on async transports a dead connection mostly shows up that
  way). A connection that could not be opened (``ConnectError``) is the
  provider's failure too.

Only in-memory bodies are watched (a streaming upload cannot be sent again),
and only on the stacks' own transports, which write through httpcore.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import TYPE_CHECKING

import httpx2

from resilience._http.stacks import ASYNC_STREAM_BASES, STACKS, SYNC_STREAM_BASES, Stack

if TYPE_CHECKING:
    _Base = httpx2.ByteStream
else:  # both stacks' stream classes: either transport accepts it as the request's body
    _Base = type("_Base", tuple(dict.fromkeys(SYNC_STREAM_BASES + ASYNC_STREAM_BASES)), {})

TRACEABLE = tuple(cls for stack in STACKS for cls in stack.http_transports)
"""The stacks' own transports, backed by httpcore (httpcore2 for httpx2): their body writes can be watched."""


class WatchedBody(_Base):
    """An in-memory request body that knows whether it was written whole."""

    __slots__ = ("body", "written")

    def __init__(self, body: bytes) -> None:
        self.body = body
        self.written = False

    def __iter__(self) -> Iterator[bytes]:
        yield self.body
        self.written = True  # asked for more: the last chunk's write returned

    async def __aiter__(self) -> AsyncIterator[bytes]:
        yield self.body
        self.written = True


def traceable(transport: object) -> bool:
    """Whether ``transport`` writes through httpcore, so a body written whole can be told."""
    return isinstance(transport, TRACEABLE)


def send_watching_sync(
    send: Callable[[httpx2.Request], httpx2.Response],
    request: httpx2.Request,
    stack: Stack,
    may_resend: Callable[[], bool],
    body: bytes | None,
) -> httpx2.Response:
    """Send; send again at once if the body was not written whole and ``may_resend()``.

    ``body``: the bytes of the request's in-memory body (``None``: a streaming upload, never sent twice).
    """
    stream = request.stream
    if body is None or stream.__class__ is not stack.byte_stream:
        return send(request)
    watched = request.stream = WatchedBody(body)  # read like the ByteStream
    try:
        try:
            return send(request)
        except stack.stale_errors:
            if watched.written or not may_resend():
                raise
        watched.written = False
        return send(request)
    finally:
        request.stream = stream


async def send_watching_async(
    send: Callable[[httpx2.Request], Awaitable[httpx2.Response]],
    request: httpx2.Request,
    stack: Stack,
    may_resend: Callable[[], bool],
    body: bytes | None,
) -> httpx2.Response:
    """:func:`send_watching_sync` for async transports."""
    stream = request.stream
    if body is None or stream.__class__ is not stack.byte_stream:
        return await send(request)
    watched = request.stream = WatchedBody(body)  # read like the ByteStream
    try:
        try:
            return await send(request)
        except stack.stale_errors:
            if watched.written or not may_resend():
                raise
        watched.written = False
        return await send(request)
    finally:
        request.stream = stream
