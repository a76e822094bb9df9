"""One call through :class:`resilience.ResilientTransport`: admission, first attempt, delivery.

A :class:`Call` resolves its request's provider and model and takes the
first permit when it is made (raising :class:`resilience.CircuitOpenError`
when the breaker rejects it). The first attempt is sent; only when it asks
for a retry does :mod:`resilience._http.loop` take over. The final response
is delivered with its stream wrapped to record the attempt when the body
ends (:mod:`resilience._http.stream`), or recorded at once when its body is
already in memory; an error is raised unchanged.

Requests of both stacks take this one path; :class:`Call.stack` names the
request's, whose classes and exceptions everything here is judged by.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import anyio
import httpx2

from resilience._core import clock as _clock
from resilience._core import context as _context
from resilience._core.clock import AsyncSleep, Sleep
from resilience._core.config import RetryPolicy
from resilience._core.context import RequestStats
from resilience._core.deadline import Deadline
from resilience._core.errors import CircuitOpenError
from resilience._core.quota import Limits
from resilience._core.retry import RetryBudget, parse_retry_after
from resilience._core.window import TimeWindow
from resilience._http import ratelimit, tracing
from resilience._http.attempt import Attempt, admit
from resilience._http.deadline import DEADLINE_SLACK, call_deadline, cap_timeouts, exceeded
from resilience._http.errors import DeadlineExceededError
from resilience._http.inspect import BodyInspector, in_memory_body, scan, small
from resilience._http.loop import retry_async, retry_sync
from resilience._http.observe import CallTrace
from resilience._http.resolve import model_from_body, model_in
from resilience._http.stacks import Stack
from resilience._http.stale import send_watching_async, send_watching_sync
from resilience._http.stream import AsyncRecordingStream, SyncRecordingStream
from resilience._http.whole import taken

if TYPE_CHECKING:
    from resilience._http.transport import ResilientTransport


SyncSend = Callable[[httpx2.Request], httpx2.Response]
AsyncSend = Callable[[httpx2.Request], Awaitable[httpx2.Response]]


class Call:
    """The state of one call; see the module docstring."""

    # Class-level defaults, not __slots__ (like Attempt's): a call sets only what it has.
    model: TimeWindow | None = None
    """The model's window, when the call names a model."""
    stats: RequestStats | None = None
    """The inbound request's totals (the middleware's context), when there is one."""
    stale_done = False
    """The one stale-connection resend of the call is spent."""
    trace: CallTrace | None = None
    """The call's span and what its attempts told it, when a tracer provider is set."""
    final: Attempt | None = None
    """The attempt whose response the caller got: its record ends the span."""
    routed = False
    """One target's call of a route: the route call says which attempt is final."""
    deadline: Deadline | None = None
    began: float | None = None
    """When the call's first attempt started (``None``: a route's call, whose attempts say)."""

    def __init__(
        self, transport: ResilientTransport, stack: Stack, request: httpx2.Request, traced: bool,
        started: float | None = None,
    ) -> None:
        """Resolve ``request``'s provider and model (nothing is admitted yet).

        ``started``: when the call began, if before now (its deadline counts from then).
        """
        self.request = request
        self.stack = stack
        self.traced = traced
        self.budgets: dict[str, RetryBudget] = transport._budgets
        extensions = request.extensions
        resolver = transport._resolve
        if "provider" in extensions and extensions["provider"] is not None:
            provider = resolver(request)
        else:
            try:
                host = request.url._uri_reference.host  # url.host without its property call (ASCII hosts)
            except AttributeError:  # pragma: no cover - a future httpx that renames it
                host = request.url.host
            provider = resolver.known.get(host) or resolver(request)  # an IDNA host misses, is resolved
        self.provider = provider
        stream = request.stream
        self.body = body = (
            in_memory_body(stream) if stream.__class__ is stack.byte_stream else None  # type: ignore[arg-type]
        )
        """The request's in-memory body (``None``: a streaming upload, never read)."""
        name = extensions.get("model")
        if name.__class__ is not str:
            name = model_from_body(request, stack) if body is None else model_in(body)
        self.model_name: str | None = name
        if name is not None:
            self.model = provider._models.get(name) or provider.model_window(name)
        stats = None
        if _context.opened:
            stats = self.stats = _context._current.get()
        seconds = provider.policy.deadline_seconds
        if "deadline" in extensions or seconds is not None or (stats is not None and stats.deadline):
            now = provider.clock() if started is None else started
            self.deadline = call_deadline(request, seconds, None, now, stats)

    @property
    def retry(self) -> RetryPolicy:
        """The provider's retry policy."""
        return self.provider.policy.retry

    def held(self, now: float, retry_after: float) -> CircuitOpenError:
        """The call, held back by the provider's exhausted quota (``hold_when_exhausted``)."""
        stats = self.stats
        if stats is not None:
            stats.add_rejection(self.provider.name)
        return self.provider.hold(now, self.model, retry_after)

    def failed(self, attempt: Attempt, exc: Exception) -> Attempt:
        """An attempt that raised: a failure recorded at once (unless the request never left).

        A timeout at the call's deadline is the deadline's, not the
        provider's: the attempt is let go and :class:`DeadlineExceededError` raised.
        """
        stack = self.stack
        if self.deadline is not None and (isinstance(exc, DeadlineExceededError) or self.timed_out(exc)):
            attempt.release()
            if self.trace is not None:
                self.trace.attempts += 1  # made, though held against no one
            raise exc if isinstance(exc, DeadlineExceededError) else self.exceeded() from exc
        if isinstance(exc, stack.not_sent):
            attempt.release()
            raise exc
        attempt.error = exc
        attempt.finish(failed=True)
        if isinstance(exc, stack.transport_errors) and self.retry.retry_transport_errors:
            attempt.reason = "timeout" if isinstance(exc, stack.timeout_error) else "transport_error"
        return attempt

    def responded(self, attempt: Attempt, response: httpx2.Response) -> Attempt:
        """An attempt that got response headers: classify it, see whether it asks for a retry."""
        provider = self.provider
        attempt.headers_at = now = provider.clock()
        attempt.response = response
        status = response.status_code
        attempt.kind, attempt.encoding, attempt.length, announced = scan(response.headers)
        limits = None if announced is None else self.limits_of(announced, now)
        if status < provider._plain_below:
            return attempt  # a plain success: nothing to classify, no Retry-After to read
        policy = provider.policy
        attempt.outcome = outcome = policy.outcome_for_status(status)
        retryable = status in policy.retry.retry_statuses
        if retryable or outcome == "throttled" or status == 503:
            hint = None if limits is None else limits.retry_after
            if hint is None:  # retry-after-ms wins over Retry-After
                hint = parse_retry_after(response.headers.get("retry-after"))
            attempt.wait_hint = hint
            if outcome == "throttled" or status == 503:
                attempt.retry_after = hint
            if retryable:
                attempt.reason = f"status_{status}"
        return attempt

    def limits_of(self, announced: dict[bytes, bytes], now: float) -> Limits | None:
        """The rate limits a response announces (its rate-limit headers), kept on the provider.

        Malformed values are counted.
        """
        provider = self.provider
        try:
            limits, bad = ratelimit.parse(announced, _clock.wall_time)
        except Exception:  # instrumentation never breaks a call
            provider.count_error("ratelimit_header")
            return None
        for _ in range(bad):
            provider.count_error("ratelimit_header")
        if limits is not None:
            provider.note_limits(limits, now)
        return limits

    # -- sending, with the stale-connection resend -----------------------------

    def send_sync(self, send: SyncSend) -> httpx2.Response:
        """Send once; resend once at once if the request provably never reached the provider whole."""
        if not self.traced:
            response = send(self.request)  # no pool of ours behind it: nothing to tell
        else:
            response = send_watching_sync(send, self.request, self.stack, self.may_resend, self.body)
        if self.deadline is not None:
            self.in_time(response)
        return response

    def in_time(self, response: httpx2.Response) -> None:
        """A sync send cannot be cut: a response that came past the deadline is dropped, and it raises."""
        deadline = self.deadline
        if deadline is not None and self.provider.clock() >= deadline.at:
            response.close()
            raise self.exceeded()

    async def send_async(self, send: AsyncSend) -> httpx2.Response:
        """:meth:`send_sync` for async transports; with a deadline, cut by a timer at it."""
        deadline = self.deadline
        if deadline is None:
            if not self.traced:
                return await send(self.request)
            return await send_watching_async(send, self.request, self.stack, self.may_resend, self.body)
        with anyio.move_on_after(deadline.at - self.provider.clock()):
            if not self.traced:
                return await send(self.request)
            return await send_watching_async(send, self.request, self.stack, self.may_resend, self.body)
        raise self.exceeded()  # the timer fired: the attempt is let go by failed()

    def may_resend(self) -> bool:
        """The request provably never reached the provider whole: resend it (once a call)?"""
        if self.stale_done:
            return False
        self.stale_done = True
        self.provider.count_retry("stale_connection")
        return True

    # -- the whole call --------------------------------------------------------

    def run_sync(self, send: SyncSend, sleep: Sleep) -> httpx2.Response:
        """Run the call to its response (or raise its last error)."""
        provider = self.provider
        self.began = now = provider.clock()
        retries = provider.policy.retry.attempts > 1
        span = tracing.start(provider.name, model=self.model_name, route=None)
        if span is not None:
            self.trace = CallTrace(span)
        try:
            if self.deadline is not None:
                self.starting(now)
            permit = provider._breaker.closed_permit  # admission, inlined
            if permit < 0:
                permit = self.admit()
            if provider.holds and (wait := provider.quota_gate(now)) is not None:
                provider.release(permit)  # admitted by the breaker, held by the quota: no network
                raise self.held(now, wait)
            attempt = Attempt(self, permit, now, 1)
            try:  # send_sync, inlined
                if self.traced:
                    response = send_watching_sync(send, self.request, self.stack, self.may_resend, self.body)
                else:
                    response = send(self.request)
                if self.deadline is not None:
                    self.in_time(response)
            except BaseException as exc:
                attempt = self.first_failed(attempt, exc)
            else:
                attempt = self.responded(attempt, response)
                if retries and attempt.outcome == "success" and self.wants_body(attempt):
                    attempt = self.read_sync(attempt)
            if retries and attempt.reason is not None:
                attempt = retry_sync(self, attempt, send, sleep)
            return self.deliver(attempt, SyncRecordingStream)
        except BaseException as exc:
            if self.trace is not None:
                self.trace.end(exc)
            raise

    async def run_async(self, send: AsyncSend, sleep: AsyncSleep) -> httpx2.Response:
        """:meth:`run_sync` for async transports."""
        provider = self.provider
        self.began = now = provider.clock()
        retries = provider.policy.retry.attempts > 1
        span = tracing.start(provider.name, model=self.model_name, route=None)
        if span is not None:
            self.trace = CallTrace(span)
        try:
            if self.deadline is not None:
                self.starting(now)
            permit = provider._breaker.closed_permit  # admission, inlined
            if permit < 0:
                permit = self.admit()
            if provider.holds and (wait := provider.quota_gate(now)) is not None:
                provider.release(permit)  # admitted by the breaker, held by the quota: no network
                raise self.held(now, wait)
            attempt = Attempt(self, permit, now, 1)
            try:  # send_async, inlined
                if self.deadline is not None:
                    response = await self.send_async(send)
                elif self.traced:
                    response = await send_watching_async(
                        send, self.request, self.stack, self.may_resend, self.body
                    )
                else:
                    response = await send(self.request)
            except BaseException as exc:
                attempt = self.first_failed(attempt, exc)
            else:
                attempt = self.responded(attempt, response)
                if retries and attempt.outcome == "success" and self.wants_body(attempt):
                    attempt = await self.read_async(attempt)
            if retries and attempt.reason is not None:
                attempt = await retry_async(self, attempt, send, sleep)
            return self.deliver(attempt, AsyncRecordingStream)
        except BaseException as exc:
            if self.trace is not None:
                self.trace.end(exc)
            raise

    # -- admission and the deadline ------------------------------------------------

    def admit(self) -> int:
        """A permit from the provider's breaker; a rejection is on the span too."""
        try:
            return admit(self.provider, self.model, self.stats)
        except CircuitOpenError as exc:
            if self.trace is not None:
                self.trace.span.rejected(exc.provider, exc.retry_after)
            raise

    def starting(self, now: float) -> None:
        """An attempt starts at ``now``: past the deadline it raises, else its timeouts are capped."""
        deadline = self.deadline
        assert deadline is not None
        left = deadline.at - now
        if left <= 0:
            raise self.exceeded()
        cap_timeouts(self.request, left)

    def timed_out(self, exc: BaseException) -> bool:
        """Whether ``exc`` is a timeout that fired at the call's deadline (the timeouts it capped)."""
        deadline = self.deadline
        return (
            deadline is not None
            and isinstance(exc, self.stack.timeout_error)
            and deadline.at - self.provider.clock() < DEADLINE_SLACK
        )

    def exceeded(self) -> DeadlineExceededError:
        """The call's deadline has passed: counted, on the span, the error to raise."""
        deadline = self.deadline
        assert deadline is not None
        self.provider.count_deadline_exceeded()
        if self.trace is not None:
            self.trace.span.deadline_exceeded()
        return exceeded(self.stack, deadline, self.provider.name, self.request)

    # -- bodies read whole: an in-band error can still be retried ------------------

    def wants_body(self, attempt: Attempt) -> bool:
        """Whether to read a success's body before returning: a small JSON one, and a retry possible.

        Small: already in memory, or of a ``Content-Length`` within
        :data:`~resilience._http.inspect.JSON_CAP`.
        """
        if attempt.kind != "json":
            return False
        request, byte_stream = self.request, self.stack.byte_stream
        within = small(attempt.length)
        if within is None:  # no Content-Length: small if already in memory
            within = attempt.response.stream.__class__ is byte_stream  # type: ignore[union-attr]  # responded
        return (
            within and request.stream.__class__ is byte_stream and self.retry.retries_method(request.method)
        )

    def read_sync(self, attempt: Attempt) -> Attempt:
        """Read the body for :func:`~resilience._http.whole.taken`; a failed read is a failed attempt."""
        stream = attempt.response.stream  # type: ignore[union-attr]  # responded
        try:
            if stream.__class__ is self.stack.byte_stream:
                raw = in_memory_body(stream)  # type: ignore[arg-type]  # a ByteStream
            else:
                try:
                    raw = b"".join(stream)  # type: ignore[arg-type]  # a sync stream
                finally:
                    stream.close()  # type: ignore[union-attr]  # a sync stream
            taken(attempt, self.stack, raw)
        except Exception as exc:
            return self.failed(attempt, exc)
        except BaseException:
            attempt.release()
            raise
        return attempt

    async def read_async(self, attempt: Attempt) -> Attempt:
        """:meth:`read_sync` for async transports."""
        stream = attempt.response.stream  # type: ignore[union-attr]  # responded
        try:
            if stream.__class__ is self.stack.byte_stream:
                raw = in_memory_body(stream)  # type: ignore[arg-type]  # a ByteStream
            else:
                try:
                    raw = b"".join([chunk async for chunk in stream])  # type: ignore[union-attr]  # async
                finally:
                    await stream.aclose()  # type: ignore[union-attr]
            taken(attempt, self.stack, raw)
        except Exception as exc:
            return self.failed(attempt, exc)
        except BaseException:
            attempt.release()
            raise
        return attempt

    def first_failed(self, attempt: Attempt, exc: BaseException) -> Attempt:
        """The first attempt raised: a failed attempt, or (cancelled) the permit back and re-raise."""
        if not isinstance(exc, Exception):
            attempt.release()
            raise exc
        return self.failed(attempt, exc)

    def deliver(
        self, attempt: Attempt, wrap: type[SyncRecordingStream] | type[AsyncRecordingStream]
    ) -> httpx2.Response:
        """The final attempt's response, its stream wrapped to record at its end (or its error raised)."""
        if attempt.error is not None:
            raise attempt.error
        response = attempt.response
        if response is None:  # pragma: no cover - an attempt ends in a response or an error
            raise RuntimeError("an attempt ended with neither a response nor an error")
        if not self.routed:
            if self.trace is not None:  # its record ends the span (set only then: no cycle with the attempt)
                self.final = attempt
            if attempt.done:  # recorded already: the breaker ended the retries
                if self.trace is not None:
                    self.trace.end(None)
                return response
        elif attempt.done:
            return response
        stream = response.stream
        if attempt.body is not None and attempt.headers_at is None:  # read whole (read_sync): judged already
            attempt.finish_whole()
        elif stream.__class__ is self.stack.byte_stream:
            attempt.finish_in_memory(stream)  # type: ignore[arg-type]  # a ByteStream
        else:
            attempt.inspector = BodyInspector.of(attempt.kind, attempt.encoding)
            response.stream = wrap(stream, attempt)  # type: ignore[arg-type]  # the matching side
        return response

