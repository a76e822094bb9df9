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
