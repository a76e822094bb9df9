"""The exceptions the HTTP layer raises itself, each an instance of the request's stack's own."""

from __future__ import annotations

from typing import TYPE_CHECKING

import httpx2

from resilience._core.errors import ResilienceError

if TYPE_CHECKING:
    import httpx
else:
    try:
        import httpx
    except ImportError:  # the legacy stack is optional
        httpx = None


class StreamTimeoutError(ResilienceError, httpx2.TimeoutException):
    """A streamed response breached a streaming timeout (``first_byte_timeout``, ``idle_timeout``).

    A ``failure`` of the provider. It is an instance of the request's own
    stack's ``TimeoutException`` (httpx2's; for a request of an ``httpx``
    client httpx's too), so SDKs map it to their timeout error.
    """


HttpxStreamTimeoutError: type[StreamTimeoutError] | None = None
""":class:`StreamTimeoutError` of a request made by an ``httpx`` client (``None`` without httpx)."""

if httpx is not None and httpx is not httpx2:

    class _HttpxStreamTimeoutError(  # type: ignore[misc]  # the stacks' HTTPError agree at run time
        StreamTimeoutError, httpx.TimeoutException
    ):
        pass

    _HttpxStreamTimeoutError.__name__ = _HttpxStreamTimeoutError.__qualname__ = "StreamTimeoutError"
    HttpxStreamTimeoutError = _HttpxStreamTimeoutError
