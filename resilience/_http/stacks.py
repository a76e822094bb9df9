"""The HTTP stacks a transport serves: httpx2 (always) and httpx (whenever importable).

httpx2 is pydantic's continuation of httpx: the same API in classes of its
own (an ``isinstance`` against one never matches the other's objects). The
official OpenAI and Anthropic SDKs run on it; older code runs on httpx; a
gateway runs both in one process. A request is answered in its own stack's
types: its response, its streams, its exceptions, through that stack's
default transport unless one is given.

Everything the HTTP layer takes from a stack goes through a :class:`Stack`,
found per request by the request's class (:func:`stack_of`, one dict lookup).
"""

from __future__ import annotations

import ssl
import sys
from dataclasses import dataclass
from datetime import timedelta
from types import ModuleType
from typing import TYPE_CHECKING, Any

import anyio
import httpx2

from resilience._http.errors import (
    DeadlineExceededError,
    HttpxDeadlineExceededError,
    HttpxStreamTimeoutError,
    StreamTimeoutError,
)

if TYPE_CHECKING:
    from typing import TypeAlias

    import httpx

    AnyRequest: TypeAlias = httpx2.Request | httpx.Request
    AnyHeaders: TypeAlias = httpx2.Headers | httpx.Headers
    AnyAsyncClient: TypeAlias = httpx2.AsyncClient | httpx.AsyncClient
    AnyAsyncTransport: TypeAlias = httpx2.AsyncBaseTransport | httpx.AsyncBaseTransport
else:
    try:
        import httpx
    except ImportError:  # the legacy stack is optional
        httpx = None


def _bases(*classes: Any) -> tuple[type, ...]:
    """``classes`` without repeats (after ``httpx2.alias_httpx()`` the two stacks are one)."""
    return tuple(dict.fromkeys(c for c in classes if c is not None))


@dataclass(frozen=True, slots=True, eq=False)
class Stack:
    """What the HTTP layer uses of one stack."""

    name: str
    module: ModuleType
    byte_stream: type
    """The in-memory body stream (``ByteStream``), compared by class."""
    not_sent: tuple[type[BaseException], ...]
    """Errors on our side: the request never reached the provider (nothing is recorded)."""
    stale_errors: tuple[type[BaseException], ...]
    """Errors a request cut short on an open connection shows up as (not ``ConnectError``)."""
    transport_errors: tuple[type[BaseException], ...]
    """The stack's ``TransportError``, and what its async transport lets escape unmapped (httpx2 lets
    ``ssl.SSLError`` and ``anyio.EndOfStream`` from a TLS failure through): retried as transport errors."""
    timeout_error: type[Exception]
    stream_timeout: type[StreamTimeoutError]
    deadline_exceeded: type[DeadlineExceededError]
    """Built as ``stack.deadline_exceeded(message, request=..., deadline=..., provider=...)``."""
    http_transports: tuple[type, ...]
    """The stack's own (httpcore-backed) transports, whose connection reuse can be traced."""
    holds_content: bool
    """Its responses take a body read already (:func:`hold_content`): the probe of :func:`_holds_content`."""

    def default_transport(self, *, sync: bool) -> Any:
        """A new default transport of this stack (``HTTPTransport`` / ``AsyncHTTPTransport``)."""
        module = self.module
        return module.HTTPTransport() if sync else module.AsyncHTTPTransport()


def _stack(
    name: str,
    module: Any,
    stream_timeout: type[StreamTimeoutError],
    deadline_exceeded: type[DeadlineExceededError],
) -> Stack:
    return Stack(
        name=name,
        module=module,
        byte_stream=module.ByteStream,
        not_sent=(module.UnsupportedProtocol, module.LocalProtocolError, module.PoolTimeout),
        stale_errors=(module.RemoteProtocolError, module.ReadError, module.WriteError),
        transport_errors=(module.TransportError, ssl.SSLError, anyio.EndOfStream),
        timeout_error=module.TimeoutException,
        stream_timeout=stream_timeout,
        deadline_exceeded=deadline_exceeded,
        http_transports=(module.HTTPTransport, module.AsyncHTTPTransport),
        holds_content=_holds_content(module),
    )


def hold_content(response: Any, content: bytes, seconds: float) -> None:
    """Give ``response`` its body, already read and not content-encoded: the client reads no stream.

    The client's ``read()`` / ``aread()`` returns ``content`` at once, as
    after its own read (``elapsed``, ``num_bytes_downloaded``); the stream
    stays as it is, so ``iter_raw()`` on a response of ``client.stream()``
    still yields the raw bytes. The one place the library writes a
    response's private attributes (``_content``, ``_num_bytes_downloaded``):
    used only when :attr:`Stack.holds_content` found that they mean this.
    """
    response._content = content
    response._num_bytes_downloaded = len(content)
    response.elapsed = timedelta(seconds=seconds)


def _holds_content(module: Any) -> bool:
    """Whether ``module``'s responses serve a body given by :func:`hold_content` and leave the stream be.

    Probed once per stack: a future version that reads them differently gets
    its body through its own read of the in-memory stream, as before.
    """
    try:
        response = module.Response(200, stream=module.ByteStream(b"stream"))
        hold_content(response, b"content", 0.5)
        return (
            response.read() == b"content"
            and b"".join(response.iter_bytes()) == b"content"
            and response.num_bytes_downloaded == len(b"content")
            and response.elapsed == timedelta(seconds=0.5)
            and not response.is_stream_consumed
            and b"".join(response.iter_raw()) == b"stream"
        )
    except Exception:  # any surprise: the stack reads its stream
        return False


HTTPX2 = _stack("httpx2", httpx2, StreamTimeoutError, DeadlineExceededError)
HTTPX: Stack | None = None
if httpx is not None and httpx is not httpx2:
    # defined whenever httpx is a stack of its own
    assert HttpxStreamTimeoutError is not None and HttpxDeadlineExceededError is not None
    HTTPX = _stack("httpx", httpx, HttpxStreamTimeoutError, HttpxDeadlineExceededError)

STACKS: tuple[Stack, ...] = (HTTPX2,) if HTTPX is None else (HTTPX2, HTTPX)
BY_REQUEST: dict[type, Stack] = {s.module.Request: s for s in STACKS}

SYNC_STREAM_BASES = _bases(httpx2.SyncByteStream, httpx and httpx.SyncByteStream)
ASYNC_STREAM_BASES = _bases(httpx2.AsyncByteStream, httpx and httpx.AsyncByteStream)
"""The stream classes a response stream of ours subclasses, so either stack's client accepts it."""


def stack_of(request: Any) -> Stack:
    """The stack ``request`` belongs to.

    Raises:
        TypeError: it is no request of a stack this transport serves.
    """
    stack = BY_REQUEST.get(request.__class__)
    if stack is not None:
        return stack
    for stack in STACKS:  # a subclass of a stack's Request
        if isinstance(request, stack.module.Request):
            return stack
    served = " and ".join(f"{s.name}.Client / {s.name}.AsyncClient" for s in STACKS)
    hint = "" if HTTPX is not None or "httpx" in sys.modules else " (httpx is not installed)"
    raise TypeError(
        f"ResilientTransport serves {served}{hint}; it was given {type(request).__module__}."
        f"{type(request).__qualname__}, not a request of those clients"
    )


def stack_of_transport(transport: object) -> Stack | None:
    """The one stack a transport given as ``transport=`` belongs to, by its base classes.

    ``None`` when it belongs to none (duck-typed) or to both (it serves either).
    """
    found = [s for s in STACKS if isinstance(transport, s.module.BaseTransport | s.module.AsyncBaseTransport)]
    return found[0] if len(found) == 1 else None
