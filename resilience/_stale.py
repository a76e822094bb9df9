"""Stale pooled connections: the pool's fault, not the provider's.

A keep-alive connection the server closed while it sat idle in the pool
fails the next request sent on it before any response byte arrives
(typically ``RemoteProtocolError: Server disconnected without sending a
response``). Such a request never reached the application, so it is resent
once at once on a fresh connection, whatever the retry policy says, and is
not recorded against the provider.

Telling a reused connection from a fresh one needs httpcore's ``trace``
extension: a request that opened no connection went out on a pooled one.
The tracer is installed only on httpx's own transports (the ones backed by
httpcore) and calls any ``trace`` the caller gave.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import httpx

STALE_ERRORS = (httpx.RemoteProtocolError, httpx.ConnectError, httpx.ReadError, httpx.WriteError)
"""Errors a stale connection shows up as."""


class Tracer:
    """Watches httpcore's trace events of one request (sync)."""

    __slots__ = ("connected", "responded", "user")

    def __init__(self, user: Callable[[str, dict[str, Any]], Any] | None) -> None:
        self.user = user
        self.connected = False
        self.responded = False

    def see(self, name: str) -> None:
        """Note one event name."""
        if name.startswith("connection.connect_"):
            self.connected = True
        elif name.endswith("receive_response_headers.complete"):
            self.responded = True

    def stale(self, exc: Exception) -> bool:
        """Whether ``exc`` came from a reused connection before any response."""
        return isinstance(exc, STALE_ERRORS) and not self.connected and not self.responded

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
    return isinstance(transport, httpx.HTTPTransport | httpx.AsyncHTTPTransport)


def send_watching_sync(
    send: Callable[[httpx.Request], httpx.Response],
    request: httpx.Request,
    may_resend: Callable[[], bool],
) -> httpx.Response:
    """Send with a tracer; if a stale pooled connection failed it and ``may_resend()``, send again."""
    extensions = request.extensions
    user = extensions.get("trace")
    tracer = extensions["trace"] = Tracer(user)
    try:
        try:
            return send(request)
        except STALE_ERRORS as exc:
            if not (tracer.stale(exc) and may_resend()):
                raise
        tracer.connected = tracer.responded = False
        return send(request)
    finally:
        _restore(extensions, user)


async def send_watching_async(
    send: Callable[[httpx.Request], Awaitable[httpx.Response]],
    request: httpx.Request,
    may_resend: Callable[[], bool],
) -> httpx.Response:
    """:func:`send_watching_sync` for async transports."""
    extensions = request.extensions
    user = extensions.get("trace")
    tracer = extensions["trace"] = AsyncTracer(user)
    try:
        try:
            return await send(request)
        except STALE_ERRORS as exc:
            if not (tracer.stale(exc) and may_resend()):
                raise
        tracer.connected = tracer.responded = False
        return await send(request)
    finally:
        _restore(extensions, user)


def _restore(extensions: dict[str, Any], user: object) -> None:
    if user is None:
        extensions.pop("trace", None)
    else:
        extensions["trace"] = user
