"""Dead pooled connections: resend only what provably never reached the provider whole.

An idle keep-alive connection the server closed is the pool's business:
httpcore's pool tests every idle connection before handing it out
(``has_expired()``: the keep-alive expiry, and a socket readable while idle,
which can only be the server's EOF) and opens a fresh one instead. Nothing
of ours is needed, and nothing is recorded.

What is left reaches us as a request that failed, before any response, on a
connection taken from the pool. From the client that looks the same whether
the server hung up an instant before the request arrived or read the request,
worked on it and then dropped the connection (a crash, a deploy, a proxy
timeout): both end in ``Server disconnected without sending a response``. The
second may have been billed. So the rule is what httpcore's ``trace``
extension proves, not what is likely:

* **resent** (once, at once, whatever the retry policy says, not recorded
  against the provider): the connection was reused (no ``connection.connect_*``
  event) and the request was not written whole (no
  ``*.send_request_body.complete`` event: writing the headers or the body
  failed, an error httpcore swallows to read a possible early response). A
  write fails only once the peer's TCP has refused the connection, and then
  the provider never received the request's last byte: no application
  answers, or bills, a request it never received whole.
* **a failure** like any other (recorded, retried only if the retry policy
  allows; with ``attempts=1`` never): everything else, including a request
  written whole on a reused connection and then dropped. A server closing an
  idle connection just as our request went out (its FIN crossing the request)
  is indistinguishable from one that read it and dropped, and is counted so;
  so is a write cut short that only the read reports (asyncio buffers writes,
  so on async transports a dead connection mostly shows up that way).

The tracer is installed only on httpx's own transports (the ones backed by
httpcore) and calls any ``trace`` the caller gave.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import httpx2

from resilience._http.stacks import STACKS, Stack

TRACEABLE = tuple(cls for stack in STACKS for cls in stack.http_transports)
"""The stacks' own transports, backed by httpcore (httpcore2 for httpx2): their ``trace`` shows reuse."""


class Tracer:
    """Watches httpcore's trace events of one request (sync)."""

    __slots__ = ("connected", "user", "written")

    def __init__(self, user: Callable[[str, dict[str, Any]], Any] | None) -> None:
        self.user = user
        self.connected = self.written = False

    def see(self, name: str) -> None:
        """Note one event name."""
        if name.startswith("connection.connect_"):
            self.connected = True
        elif name.endswith(".send_request_body.complete"):  # response headers come only after it
            self.written = True

    def stale(self) -> bool:
        """Whether the failed request went out on a reused connection and was not written whole."""
        return not (self.connected or self.written)

    def again(self) -> None:
        """Forget the failed send: the resend is watched afresh."""
        self.connected = self.written = False

    def __call__(self, name: str, info: dict[str, Any]) -> Any:
        self.see(name)
        if self.user is not None:
            return self.user(name, info)
        return None


class AsyncTracer(Tracer):
    """:class:`Tracer` for async transports: httpcore awaits the callback."""

    __slots__ = ()

    async def __call__(self, name: str, info: dict[str, Any]) -> Any:
        self.see(name)
        if self.user is not None:
            result = self.user(name, info)
            if isinstance(result, Awaitable):
                return await result
        return None


def traceable(transport: object) -> bool:
    """Whether ``transport`` runs on httpcore, so reuse of a connection can be seen."""
    return isinstance(transport, TRACEABLE)


def send_watching_sync(
    send: Callable[[httpx2.Request], httpx2.Response],
    request: httpx2.Request,
    stack: Stack,
    may_resend: Callable[[], bool],
) -> httpx2.Response:
    """Send with a tracer; send again if it provably never reached the provider whole and ``may_resend()``."""
    extensions = request.extensions
    user = extensions.get("trace")
    tracer = extensions["trace"] = Tracer(user)
    try:
        try:
            return send(request)
        except stack.stale_errors:
            if not (tracer.stale() and may_resend()):
                raise
        tracer.again()
        return send(request)
    finally:
        _restore(extensions, user)


async def send_watching_async(
    send: Callable[[httpx2.Request], Awaitable[httpx2.Response]],
    request: httpx2.Request,
    stack: Stack,
    may_resend: Callable[[], bool],
) -> httpx2.Response:
    """:func:`send_watching_sync` for async transports."""
    extensions = request.extensions
    user = extensions.get("trace")
    tracer = extensions["trace"] = AsyncTracer(user)
    try:
        try:
            return await send(request)
        except stack.stale_errors:
            if not (tracer.stale() and may_resend()):
                raise
        tracer.again()
        return await send(request)
    finally:
        _restore(extensions, user)


def _restore(extensions: dict[str, Any], user: object) -> None:
    if user is None:
        extensions.pop("trace", None)
    else:
        extensions["trace"] = user
