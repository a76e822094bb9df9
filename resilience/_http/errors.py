"""The exceptions the HTTP layer raises itself, each an instance of the request's stack's own."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

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


class DeadlineExceededError(ResilienceError, httpx2.TimeoutException):
    """A call's deadline passed before it could end (``extensions={"deadline": s}``, ``deadline_seconds``,
    the middleware's ``deadline_header``).

    Raised when the deadline passes during an attempt or before the first
    one could start. It is an instance of the request's own stack's
    ``TimeoutException`` (httpx2's; for a request of an ``httpx`` client
    httpx's too), so SDKs map it to their timeout error.

    Attributes:
        deadline: the deadline's length in seconds, as it was set.
        provider: the provider (or route) the call was made to.
    """

    def __init__(self, message: str, *, request: Any = None, deadline: float, provider: str) -> None:
        super().__init__(message, request=request)
        self.deadline = float(deadline)
        self.provider = provider

    def __reduce__(self) -> tuple[Any, ...]:
        kind: Any = type(self)
        if kind is HttpxDeadlineExceededError:
            kind = "httpx"  # its class shares the name of this one: pickled by name it would be this one
        return (_rebuild, (kind, str(self), self.deadline, self.provider))


def _rebuild(kind: Any, message: str, deadline: float, provider: str) -> DeadlineExceededError:
    cls: Any = HttpxDeadlineExceededError if kind == "httpx" else kind
    error: DeadlineExceededError = cls(message, deadline=deadline, provider=provider)
    return error


HttpxDeadlineExceededError: type[DeadlineExceededError] | None = None
""":class:`DeadlineExceededError` of a request made by an ``httpx`` client (``None`` without httpx)."""

if httpx is not None and httpx is not httpx2:

    class _HttpxDeadlineExceededError(  # type: ignore[misc]  # the stacks' HTTPError agree at run time
        DeadlineExceededError, httpx.TimeoutException
    ):
        pass

    _HttpxDeadlineExceededError.__name__ = _HttpxDeadlineExceededError.__qualname__ = "DeadlineExceededError"
    HttpxDeadlineExceededError = _HttpxDeadlineExceededError
