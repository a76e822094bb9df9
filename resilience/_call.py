"""One call through :class:`resilience.ResilientTransport`: first attempt and delivery.

The first attempt runs directly and, on the happy path (a plain success
with its body in memory), is recorded at once without building anything.
Only when it asks for a retry does :mod:`resilience._loop` take over. The
final response is recorded when its body ends (:mod:`resilience._stream`),
or at once when the body is already in memory; an error is raised unchanged.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import httpx

from resilience._attempt import Attempt, admit, classify
from resilience._breaker import CLOSED
from resilience._clock import AsyncSleep, Sleep
from resilience._config import RetryPolicy
from resilience._context import _current as _request_stats
from resilience._inspect import BodyInspector
from resilience._loop import retry_async, retry_sync
from resilience._resolve import Resolver, model_from_body
from resilience._retry import RetryBudget, parse_retry_after
from resilience._stale import send_watching_async, send_watching_sync
from resilience._stream import AsyncRecordingStream, SyncRecordingStream

_PLAIN_BODY_START = (b"", b"{", b"[")
"""How a JSON body (or an empty one) starts: one without ``usage`` in it has no cost to find."""

NOT_SENT = (httpx.UnsupportedProtocol, httpx.LocalProtocolError, httpx.PoolTimeout)
"""Errors on our side: the request never reached the provider, nothing is recorded.

``PoolTimeout`` is the client's own connection pool being full, not the provider."""

SyncSend = Callable[[httpx.Request], httpx.Response]
AsyncSend = Callable[[httpx.Request], Awaitable[httpx.Response]]


class Call:
    """The state of one call; see the module docstring. Built by the transport per request.

    The happy path (a known host, a closed breaker, a plain success with its
    body in memory) is inlined in :meth:`__init__` and :meth:`run_sync` /
    :meth:`run_async`: it is what every call pays.
    """

    __slots__ = (
        "budgets", "model", "model_name", "permit", "provider", "request", "stale_done", "start", "stats",
    )

    def __init__(self, resolve: Resolver, budgets: dict[str, RetryBudget], request: httpx.Request) -> None:
        """Resolve the request and admit its first attempt (raises :class:`CircuitOpenError`)."""
        self.request = request
        self.budgets = budgets
        extensions = request.extensions
        provider = None
        if extensions.get("provider") is None:
            provider = resolve.known.get(request.url.host)
        if provider is None:
            provider = resolve(request)
        self.provider = provider
        model_name = extensions.get("model")
        if model_name.__class__ is not str:
            model_name = model_from_body(request)
        self.model_name = model_name
        self.model = model = None if model_name is None else provider.model_window(model_name)
        self.stats = stats = _request_stats.get()
        self.stale_done = False
        breaker = provider.breaker
        self.permit = breaker.permit if breaker._state is CLOSED else admit(provider, model, stats)
        self.start = provider.clock()

    @property
    def retry(self) -> RetryPolicy:
        """The provider's retry policy."""
        return self.provider.policy.retry

    def attempt(self, permit: int, start: float, number: int) -> Attempt:
        """The bookkeeping of attempt ``number``, admitted with ``permit`` at ``start``."""
        return Attempt(self.provider, permit, self.model, self.model_name, self.stats, number, start)

    def recorded_fast(self, response: httpx.Response) -> bool:
        """Record a plain success whose body is in memory and holds no usage; ``False`` otherwise.

        No objects, no header lookups; ``Provider.record_success`` is lock-free
        while the breaker is closed.
        """
        status = response.status_code
        provider = self.provider
        policy = provider.policy
        if (
            status >= 400
            or status in policy.failure_statuses
            or status in policy.throttle_statuses
            or policy.cost is not None
            or response.stream.__class__ is not httpx.ByteStream
        ):
            return False
        body = _in_memory_body(response.stream)
        if b"usage" in body or body[:1] not in _PLAIN_BODY_START:
            return False
        now = provider.clock()
        provider.record_success(self.permit, now - self.start, now, self.model)
        if self.stats is not None:
            self.stats.add_attempt(provider.name)
        return True

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
        """Send once; resend once at once if a stale pooled connection failed it."""
        if not traced:
            return send(self.request)  # no pool of ours behind it: nothing to tell
        return send_watching_sync(send, self.request, self.may_resend)

    async def send_async(self, send: AsyncSend, traced: bool) -> httpx.Response:
        """:meth:`send_sync` for async transports."""
        if not traced:
            return await send(self.request)
        return await send_watching_async(send, self.request, self.may_resend)

    def may_resend(self) -> bool:
        """A stale connection failed the request: resend it (once per call, replayable bodies only)?"""
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
            if self.recorded_fast(response):
                return response
            first = self.responded(self.attempt(self.permit, self.start, 1), response)
        if first.reason is None or self.retry.attempts == 1:
            return self.deliver(first, SyncRecordingStream)
        return self.deliver(retry_sync(self, first, send, traced, sleep), SyncRecordingStream)

    async def run_async(self, send: AsyncSend, traced: bool, sleep: AsyncSleep) -> httpx.Response:
        """:meth:`run_sync` for async transports (the transport inlines this for untraced ones)."""
        try:
            response = await (self.send_async(send, traced) if traced else send(self.request))
        except BaseException as exc:
            first = self.first_failed(exc)
        else:
            if self.recorded_fast(response):
                return response
            first = self.responded(self.attempt(self.permit, self.start, 1), response)
        return await self.go_on_async(first, send, traced, sleep)

    def first_failed(self, exc: BaseException) -> Attempt:
        """The first attempt raised: a failed attempt, or (cancelled) the permit back and re-raise."""
        if not isinstance(exc, Exception):
            self.provider.release(self.permit)
            raise exc
        return self.failed(self.attempt(self.permit, self.start, 1), exc)

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
            attempt.finish_body(_in_memory_body(stream))
        else:
            attempt.inspector = BodyInspector.for_headers(response.headers)
            response.stream = wrap(stream, attempt, self.request)  # type: ignore[arg-type]  # matching side
        return response


def _in_memory_body(stream: httpx.ByteStream) -> bytes:
    """The raw bytes of an in-memory body, still content-encoded as the headers say.

    The cost finder decodes ``gzip``/``deflate`` itself, by the headers; the
    already-decoded ``response.content`` would fail that decoding and lose
    the cost.
    """
    return b"".join(stream)
