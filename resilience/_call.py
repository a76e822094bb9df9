"""One call through :class:`resilience.ResilientTransport`: first attempt and delivery.

The first attempt is admitted and, on the happy path (a plain success with
its body in memory), recorded by :mod:`resilience._happy` without a
:class:`Call`; a :class:`Call` is built from that admission for everything
else. Only when the first attempt asks for a retry does
:mod:`resilience._loop` take over. The
final response is recorded when its body ends (:mod:`resilience._stream`),
or at once when the body is already in memory; an error is raised unchanged.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import httpx

from resilience._attempt import Attempt, classify
from resilience._clock import AsyncSleep, Sleep
from resilience._config import RetryPolicy
from resilience._happy import Admission, recorded_plain
from resilience._inspect import BodyInspector, in_memory_body
from resilience._loop import retry_async, retry_sync
from resilience._retry import RetryBudget, parse_retry_after
from resilience._stale import send_watching_async, send_watching_sync
from resilience._stream import AsyncRecordingStream, SyncRecordingStream

NOT_SENT = (httpx.UnsupportedProtocol, httpx.LocalProtocolError, httpx.PoolTimeout)
"""Errors on our side: the request never reached the provider, nothing is recorded.

``PoolTimeout`` is the client's own connection pool being full, not the provider."""

SyncSend = Callable[[httpx.Request], httpx.Response]
AsyncSend = Callable[[httpx.Request], Awaitable[httpx.Response]]


class Call:
    """The state of one call that left the happy path; see the module docstring."""

    __slots__ = (
        "admission", "budgets", "model", "model_name", "permit", "provider", "request", "stale_done", "start",
        "stats",
    )

    def __init__(self, budgets: dict[str, RetryBudget], request: httpx.Request, admission: Admission) -> None:
        """The call of ``request``, whose first attempt :func:`admit_request` admitted."""
        self.request = request
        self.budgets = budgets
        self.provider, self.model_name, self.model, self.stats, self.permit, self.start = admission
        self.admission = admission
        self.stale_done = False

    @property
    def retry(self) -> RetryPolicy:
        """The provider's retry policy."""
        return self.provider.policy.retry

    def attempt(self, permit: int, start: float, number: int) -> Attempt:
        """The bookkeeping of attempt ``number``, admitted with ``permit`` at ``start``."""
        return Attempt(self.provider, permit, self.model, self.model_name, self.stats, number, start)

    def failed(self, attempt: Attempt, exc: Exception) -> Attempt:
        """An attempt that raised: a failure recorded at once (unless the request never left)."""
        if isinstance(exc, NOT_SENT):
            attempt.release()
            raise exc
        attempt.error = exc
        attempt.finish(failed=True)
        if isinstance(exc, httpx.TransportError) and self.retry.retry_transport_errors:
            attempt.reason = "timeout" if isinstance(exc, httpx.TimeoutException) else "transport_error"
        return attempt

    def responded(self, attempt: Attempt, response: httpx.Response) -> Attempt:
        """An attempt that got response headers: classify it, see whether it asks for a retry."""
        attempt.headers_at = self.provider.clock()
        attempt.response = response
        status = response.status_code
        policy = self.provider.policy
        attempt.outcome = outcome = classify(policy, status)
        retryable = status in self.retry.retry_statuses
        if retryable or outcome == "throttled" or status == 503:
            hint = parse_retry_after(response.headers.get("retry-after"))
            attempt.wait_hint = hint
            if outcome == "throttled" or status == 503:
                attempt.retry_after = hint
            if retryable:
                attempt.reason = f"status_{status}"
        return attempt

    # -- sending, with the stale-connection resend -----------------------------

    def send_sync(self, send: SyncSend, traced: bool) -> httpx.Response:
        """Send once; resend once at once if a pooled connection died before the request was written whole."""
        if not traced:
            return send(self.request)  # no pool of ours behind it: nothing to tell
        return send_watching_sync(send, self.request, self.may_resend)

    async def send_async(self, send: AsyncSend, traced: bool) -> httpx.Response:
        """:meth:`send_sync` for async transports."""
        if not traced:
            return await send(self.request)
        return await send_watching_async(send, self.request, self.may_resend)

    def may_resend(self) -> bool:
        """The request provably never reached the provider whole: resend it (once a call, replayable only)?"""
        if self.stale_done or not isinstance(self.request.stream, httpx.ByteStream):
            return False
        self.stale_done = True
        self.provider.count_retry("stale_connection")
        return True

    # -- the whole call --------------------------------------------------------

    def run_sync(self, send: SyncSend, traced: bool, sleep: Sleep) -> httpx.Response:
        """Run the call to its response (or raise its last error)."""
        try:
            response = self.send_sync(send, traced) if traced else send(self.request)
        except BaseException as exc:
            first = self.first_failed(exc)
        else:
            if recorded_plain(self.admission, response):
                return response
            first = self.first_responded(response)
        return self.go_on_sync(first, send, traced, sleep)

    async def run_async(self, send: AsyncSend, traced: bool, sleep: AsyncSleep) -> httpx.Response:
        """:meth:`run_sync` for async transports (the transport inlines this for untraced ones)."""
        try:
            response = await (self.send_async(send, traced) if traced else send(self.request))
        except BaseException as exc:
            first = self.first_failed(exc)
        else:
            if recorded_plain(self.admission, response):
                return response
            first = self.first_responded(response)
        return await self.go_on_async(first, send, traced, sleep)

    def first_failed(self, exc: BaseException) -> Attempt:
        """The first attempt raised: a failed attempt, or (cancelled) the permit back and re-raise."""
        if not isinstance(exc, Exception):
            self.provider.release(self.permit)
            raise exc
        return self.failed(self.attempt(self.permit, self.start, 1), exc)

    def first_responded(self, response: httpx.Response) -> Attempt:
        """The first attempt got a response that is not a plain success."""
        return self.responded(self.attempt(self.permit, self.start, 1), response)

    def go_on_sync(self, first: Attempt, send: SyncSend, traced: bool, sleep: Sleep) -> httpx.Response:
        """After a first attempt that was not a plain success: deliver it, or retry."""
        if first.reason is None or self.retry.attempts == 1:
            return self.deliver(first, SyncRecordingStream)
        return self.deliver(retry_sync(self, first, send, traced, sleep), SyncRecordingStream)

    async def go_on_async(
        self, first: Attempt, send: AsyncSend, traced: bool, sleep: AsyncSleep
    ) -> httpx.Response:
        """After a first attempt that was not a plain success: deliver it, or retry."""
        if first.reason is None or self.retry.attempts == 1:
            return self.deliver(first, AsyncRecordingStream)
        return self.deliver(await retry_async(self, first, send, traced, sleep), AsyncRecordingStream)

    def deliver(
        self, attempt: Attempt, wrap: type[SyncRecordingStream] | type[AsyncRecordingStream]
    ) -> httpx.Response:
        """The final attempt's response, its stream wrapped to record at its end (or its error raised)."""
        if attempt.error is not None:
            raise attempt.error
        response = attempt.response
        assert response is not None
        if attempt.done:
            return response  # recorded already: the breaker ended the retries
        stream = response.stream
        if isinstance(stream, httpx.ByteStream):
            attempt.headers_at = None  # not streamed: the body is already here
            attempt.finish_body(in_memory_body(stream))
        else:
            attempt.inspector = BodyInspector.for_headers(response.headers)
            response.stream = wrap(stream, attempt, self.request)  # type: ignore[arg-type]  # matching side
        return response

