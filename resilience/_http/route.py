"""Route calls: a request under a route's ``base_url``, answered by the first target that commits.

:meth:`resilience.Route.candidates` (the core) chooses the targets in order,
skipping those that do not admit a call; this module runs the attempts over
them. Each attempt is an ordinary one-try :class:`resilience._http.call.Call`
to that target's provider: its own request (the target's URL, its
``"model"``, its headers), its breaker, its record under its (provider,
model), its cost.

The **commit point**: a non-streamed response is read whole before it is
returned; a streamed one (the request says ``"stream": true``, or the
response is ``text/event-stream``) is returned once its first content event
has arrived, with the chunks read so far replayed first. A fault before
commit -- a transport error or timeout, a status in ``failover_statuses``,
an in-band error, a stream cut or stalled before its first content event --
moves the call to the next target; nothing of the failed attempt reaches
the caller. After commit the stream is the target's own: a fault raises in
the caller's iteration. JSON responses are read whole even for a streaming
request (a JSON answer to ``"stream": true`` is an error body).

**Hedging** (async clients, ``hedge_after_seconds``): when the running
attempt has not committed after that long, the next target starts too,
within the route's hedge budget; the first to commit wins, the others are
cancelled and *lost*: their permits go back and they count in neither
calls nor failures (their cost, when known, is still added).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING, Any

import anyio
import httpx2

from resilience._core import context as _context
from resilience._core.deadline import earliest
from resilience._core.errors import CircuitOpenError
from resilience._core.provider import Provider
from resilience._core.route import Route, Target
from resilience._http import tracing
from resilience._http.attempt import Attempt
from resilience._http.call import AsyncSend, Call, SyncSend
from resilience._http.deadline import call_deadline, exceeded
from resilience._http.errors import DeadlineExceededError
from resilience._http.inspect import BodyInspector, in_memory_body, whole_body_of
from resilience._http.observe import CallTrace
from resilience._http.resolve import _MODEL, model_from_body
from resilience._http.stacks import ASYNC_STREAM_BASES, SYNC_STREAM_BASES, Stack
from resilience._http.stream import AsyncRecordingStream, SyncRecordingStream

if TYPE_CHECKING:
    from resilience._http.transport import ResilientTransport

    _SyncBase = httpx2.SyncByteStream
    _AsyncBase = httpx2.AsyncByteStream
else:
    _SyncBase = type("_SyncBase", SYNC_STREAM_BASES, {})
    _AsyncBase = type("_AsyncBase", ASYNC_STREAM_BASES, {})

_STREAM_TRUE = re.compile(rb'"stream"\s*:\s*true')
_DROPPED = frozenset({"host", "content-length", "transfer-encoding"})
"""Request headers each target's request sets for itself."""


# -- per-target requests -------------------------------------------------------------


def rewrite_model(body: bytes, model: str) -> bytes:
    """``body`` with its top-level ``"model"`` value replaced by ``model``.

    The value is replaced in place when the body opens with the pair (as SDKs
    send it): a large body is not re-serialised. Otherwise the body is parsed
    once and written again; a body that is not a JSON object is left as it is.
    """
    match = _MODEL.search(body)
    encoded = json.dumps(model).encode()
    if match is not None and body[: match.start()].strip() == b"{":
        start, end = match.span(1)
        return body[: start - 1] + encoded + body[end + 1 :]
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        return body
    if not isinstance(data, dict):
        return body
    data["model"] = model
    return json.dumps(data).encode()


def target_request(
    request: httpx2.Request, stack: Stack, target: Target, body: bytes | None, model: str | None
) -> httpx2.Request:
    """The request one target is sent: its URL and path, its ``"model"``, its headers."""
    url = request.url
    path = url.raw_path  # path and query, as the caller sent them
    own = {name for name, _ in target.headers}
    headers = [
        (key, value) for key, value in request.headers.multi_items()
        if key.lower() not in _DROPPED and key.lower() not in own
    ]
    headers.extend(target.headers)
    content = body
    if body is not None and target.model is not None and body.find(b'"model"') >= 0:
        content = rewrite_model(body, target.model)
    extensions = dict(request.extensions)
    extensions.pop("deadline", None)  # the route call's deadline, made absolute at its start, rules
    extensions["provider"] = target.provider
    name = target.model if target.model is not None else model
    if name is None:
        extensions.pop("model", None)
    else:
        extensions["model"] = name
    target_url = target.base_url + path.decode("ascii")
    if content is None:  # a streaming upload: sent once, framed as the caller framed it
        framing = [(k, v) for k, v in request.headers.multi_items()
                   if k.lower() in ("content-length", "transfer-encoding") and k.lower() not in own]
        target_request = stack.module.Request(
            request.method, target_url, headers=headers + framing, stream=request.stream,
            extensions=extensions,
        )
        if "host" not in target_request.headers:
            target_request.headers["host"] = target_request.url.netloc.decode("ascii")
        return target_request  # type: ignore[no-any-return]
    return stack.module.Request(  # type: ignore[no-any-return]
        request.method, target_url, headers=headers, content=content, extensions=extensions
    )


# -- what one target's attempt came to -----------------------------------------------


class Step:
    """One target's attempt: committed (``final``), or a fault with what it left behind."""

    __slots__ = ("attempt", "call", "deferred", "error", "final", "pending", "reason", "target")

    def __init__(self, target: Target, call: Call | None, attempt: Attempt | None = None) -> None:
        self.target = target
        self.call = call
        self.attempt = attempt
        self.final: httpx2.Response | None = None
        """The response to return: committed, or returned at once (a 400)."""
        self.error: Exception | None = None
        self.pending: Any = None
        """A failed response kept, unrecorded, in case no later target answers: returned then."""
        self.deferred = False
        """``final`` is not delivered (recorded) yet: a hedge's, until it is known to have won."""
        self.reason = "error"


class PendingResponse:
    """A response that failed before commit, kept in case it is the last one."""

    __slots__ = ("attempt", "buffered", "call", "chunks", "wrapped")

    def __init__(self, call: Call, attempt: Attempt, wrapped: Any = None, chunks: Any = None,
                 buffered: list[bytes] | None = None) -> None:
        self.call, self.attempt = call, attempt
        self.wrapped, self.chunks, self.buffered = wrapped, chunks, buffered


class CommittedSyncStream(_SyncBase):
    """The chunks read before commit, then the rest of the target's (recording) stream."""

    def __init__(self, buffered: list[bytes], chunks: Iterator[bytes], wrapped: SyncRecordingStream) -> None:
        self._buffered, self._chunks, self._wrapped = buffered, chunks, wrapped

    def __iter__(self) -> Iterator[bytes]:
        buffered, self._buffered = self._buffered, []
        yield from buffered
        yield from self._chunks

    def close(self) -> None:
        try:
            self._chunks.close()  # type: ignore[attr-defined]  # a generator
        finally:
            self._wrapped.close()


class CommittedAsyncStream(_AsyncBase):
    """:class:`CommittedSyncStream` for async clients."""

    def __init__(
        self, buffered: list[bytes], chunks: AsyncIterator[bytes], wrapped: AsyncRecordingStream
    ) -> None:
        self._buffered, self._chunks, self._wrapped = buffered, chunks, wrapped

    async def __aiter__(self) -> AsyncIterator[bytes]:
        buffered, self._buffered = self._buffered, []
        for chunk in buffered:
            yield chunk
        async for chunk in self._chunks:
            yield chunk

    async def aclose(self) -> None:
        try:
            await self._chunks.aclose()  # type: ignore[attr-defined]  # an async generator
        finally:
            await self._wrapped.aclose()


def _failed_before_content(attempt: Attempt) -> bool:
    """Whether the stream said it failed (in-band) before its first content event: a fault before commit."""
    inspector = attempt.inspector
    return inspector is not None and inspector.in_band is not None and attempt.ttft is None


def _committed(attempt: Attempt) -> bool:
    """Whether the chunks read so far hold the first content event (SSE), or any bytes (others)."""
    inspector = attempt.inspector
    if inspector is not None and inspector.sse:
        return attempt.ttft is not None
    return True


# -- the route call ----------------------------------------------------------------


class RouteCall:
    """One call to a route; see the module docstring."""

    def __init__(
        self,
        transport: ResilientTransport,
        stack: Stack,
        request: httpx2.Request,
        route: Route,
        traced: bool,
        started: float | None = None,
    ) -> None:
        self.transport, self.stack, self.request, self.route, self.traced = (
            transport, stack, request, route, traced,
        )
        stream = request.stream
        self.body: bytes | None = (
            in_memory_body(stream) if stream.__class__ is stack.byte_stream else None  # type: ignore[arg-type]
        )
        self.model = model_from_body(request, stack) if self.body is not None else None
        self.streamed = self.body is not None and _STREAM_TRUE.search(self.body) is not None
        self.policy = route.policy
        self.attempts = 0
        self.stats = _context._current.get() if _context.opened else None
        now = route._clock() if started is None else started
        seconds: float | None = route.policy.deadline_seconds  # type: ignore[assignment]  # normalised to float
        self.deadline = call_deadline(request, None, seconds, now, self.stats)
        self.trace: CallTrace | None = None
        self.ended = False
        """Whether the route call's outcome is recorded."""

    def start_trace(self) -> None:
        span = tracing.start(self.route.name, model=self.model, route=self.route.name)
        if span is not None:
            self.trace = CallTrace(span)

    def failed(self, exc: BaseException) -> None:
        """The route call raised ``exc``: a failure of the route (unless it was a rejection), on the span.

        A deadline that cut one target's attempt is the route call's: its ``provider`` is the route.
        """
        if isinstance(exc, DeadlineExceededError):
            exc.provider = self.route.name
        if not self.ended and isinstance(exc, Exception):
            self.ended = True
            self.route.record("failure")
        if self.trace is not None:
            self.trace.end(exc, attempts=self.attempts)

    def exceeded(self) -> DeadlineExceededError:
        """The route call's deadline has passed."""
        deadline = self.deadline
        assert deadline is not None
        if self.trace is not None:
            self.trace.span.deadline_exceeded()
        return exceeded(self.stack, deadline, self.route.name, self.request)

    def failover(self, from_step: Step, to: Target) -> None:
        """The call moves from ``from_step``'s target to ``to``."""
        self.route.record_failover(from_step.target.provider, to.provider)
        if self.trace is not None:
            span = self.trace.span
            span.failover(self.route.name, from_step.target.provider, to.provider, from_step.reason)

    # -- choosing and admitting ------------------------------------------------------

    def candidates(self) -> list[tuple[Target, Provider]]:
        """The targets to try, in order; none admitting is a rejection of the route call."""
        chosen, retry_after = self.route.candidates()
        if self.body is None:
            chosen = chosen[:1]  # a streaming upload can be sent once only
        if not chosen:
            raise self.rejected(retry_after)
        return chosen

    def rejected(self, retry_after: float) -> CircuitOpenError:
        self.ended = True
        self.route.record("rejected")
        if self.stats is not None:
            self.stats.add_rejection(self.route.name)
        if self.trace is not None:
            self.trace.span.rejected(self.route.name, retry_after)
        return CircuitOpenError(self.route.name, retry_after, "open")

    def admit(self, target: Target, provider: Provider) -> tuple[Call, Attempt]:
        """A call to ``target`` and its admitted attempt (:class:`CircuitOpenError` if it does not admit)."""
        now = provider.clock()
        deadline = self.deadline
        if deadline is not None and deadline.at <= now:
            raise self.exceeded()  # no target starts past the deadline
        request = target_request(self.request, self.stack, target, self.body, self.model)
        call = Call(self.transport, self.stack, request, self.traced)
        call.deadline = earliest(deadline, call.deadline)
        call.trace, call.routed = self.trace, True
        if call.deadline is not None:
            call.starting(now)
        permit = call.admit()
        if provider.holds and (wait := provider.quota_gate(now)) is not None:
            provider.release(permit)
            if self.trace is not None:
                self.trace.span.rejected(provider.name, wait)
            raise call.held(now, wait)
        self.attempts += 1
        if self.trace is not None:
            self.trace.attempts_made = self.attempts
        return call, Attempt(call, permit, now, 1)

    def fault_of(self, step: Step, call: Call, attempt: Attempt, exc: BaseException) -> Step:
        """The attempt raised: a fault (recorded), or re-raised when cancelled."""
        if not isinstance(exc, Exception):
            attempt.release()
            raise exc
        if isinstance(exc, self.stack.not_sent):
            attempt.release()  # never left: nothing to record
        else:
            call.failed(attempt, exc)
        step.error = exc
        step.reason = "timeout" if isinstance(exc, self.stack.timeout_error) else "transport_error"
        return step

    def classified(self, step: Step, call: Call, attempt: Attempt) -> tuple[bool, bool]:
        """``(is a fault, is streamed)`` of an attempt that got its response headers."""
        response = attempt.response
        assert response is not None
        status = response.status_code
        if status in self.policy.failover_statuses:
            step.reason = f"status_{status}"
            step.pending = PendingResponse(call, attempt)
            return True, False
        kind = attempt.kind
        return False, kind == "sse" or (self.streamed and kind != "json")

    # -- sync ------------------------------------------------------------------------

    def run_sync(self, send: SyncSend) -> httpx2.Response:
        """Try the targets in order until one commits; the last response or error otherwise."""
        self.start_trace()
        try:
            return self.targets_sync(send)
        except BaseException as exc:
            self.failed(exc)
            raise

    def targets_sync(self, send: SyncSend) -> httpx2.Response:
        last: Step | None = None
        for target, provider in self.candidates():
            try:
                call, attempt = self.admit(target, provider)
            except CircuitOpenError:
                continue  # it stopped admitting since it was chosen
            except DeadlineExceededError:
                if last is not None:
                    self.moved(last)  # what the last target left is recorded and closed
                raise
            if last is not None:
                self.moved(last)
                self.failover(last, target)
            step = self.attempt_sync(target, call, attempt, send)
            if step.final is not None:
                return self.served(step)
            last = step
        if last is None:
            raise self.rejected(self.route.candidates()[1])
        return self.last_sync(last)

    def attempt_sync(self, target: Target, call: Call, attempt: Attempt, send: SyncSend) -> Step:
        step = Step(target, call, attempt)
        try:
            response = call.send_sync(send)
        except BaseException as exc:
            return self.fault_of(step, call, attempt, exc)
        attempt = call.responded(attempt, response)
        attempt.reason = None  # one try per target: the next target is the retry
        fault, streamed = self.classified(step, call, attempt)
        if fault:
            return step
        if not 200 <= response.status_code < 300:
            step.final = call.deliver(attempt, SyncRecordingStream)  # the request is wrong, not the provider
            return step
        if streamed:
            return self.commit_stream_sync(step, call, attempt)
        attempt = call.read_sync(attempt)
        if attempt.error is not None:
            step.error, step.reason = attempt.error, "transport_error"
            return step
        if attempt.outcome != "success":
            step.reason, step.pending = "in_band_error", PendingResponse(call, attempt)
            return step
        step.final = call.deliver(attempt, SyncRecordingStream)
        return step

    def commit_stream_sync(self, step: Step, call: Call, attempt: Attempt) -> Step:
        response = attempt.response
        assert response is not None
        attempt.inspector = BodyInspector.of(attempt.kind, attempt.encoding)
        in_memory = response.stream.__class__ is self.stack.byte_stream
        wrapped = SyncRecordingStream(response.stream, attempt)  # type: ignore[arg-type]  # a sync stream
        chunks = iter(wrapped)
        if in_memory:  # the response holds its body already (and reads it from there): all of it, now
            for _ in chunks:
                pass
            return self.in_memory_step(step, call, attempt)
        buffered: list[bytes] = []
        try:
            for chunk in chunks:
                buffered.append(chunk)
                if _failed_before_content(attempt):
                    step.reason = "in_band_error"
                    step.pending = PendingResponse(call, attempt, wrapped, chunks, buffered)
                    return step
                if chunk and _committed(attempt):
                    break
        except DeadlineExceededError:  # let go by the stream: the call's deadline, not a fault
            wrapped.close()
            raise
        except Exception as exc:  # recorded by the stream: a failure before commit
            wrapped.close()
            step.error, step.reason = exc, "stream_error"
            return step
        if _failed_before_content(attempt):
            step.reason = "in_band_error"
            step.pending = PendingResponse(call, attempt, wrapped, chunks, buffered)
            return step
        response.stream = CommittedSyncStream(buffered, chunks, wrapped)
        step.final = response
        return step

    def in_memory_step(self, step: Step, call: Call, attempt: Attempt) -> Step:
        """A streamed answer whose body was in memory, read and recorded: committed unless it failed
        before its first content event."""
        if _failed_before_content(attempt):
            step.reason, step.pending = "in_band_error", PendingResponse(call, attempt)
            return step
        step.final = attempt.response
        return step

    def moved(self, step: Step) -> None:
        """Moving on from a failed target: what it left is recorded and closed."""
        pending = step.pending
        if pending is None:
            return
        step.pending = None
        attempt = pending.attempt
        if pending.wrapped is not None:
            pending.wrapped.close()
        elif attempt.response is not None:
            if attempt.body is None:
                attempt.headers_at = None
                attempt.finish(costed=False)
            else:
                attempt.finish()
            attempt.response.close()

    def last_sync(self, step: Step) -> httpx2.Response:
        """Every target tried failed: the last response, else the last error."""
        self.ended = True
        self.route.record("failure")
        pending = step.pending
        if pending is None:
            assert step.error is not None
            raise step.error
        response = self.pending_response(step)
        if pending.wrapped is None:
            response = pending.call.deliver(pending.attempt, SyncRecordingStream)
        else:
            response.stream = CommittedSyncStream(pending.buffered, pending.chunks, pending.wrapped)
        self.finishing(step, pending.call, pending.attempt)
        return self.labelled(response, step.target)

    # -- async -----------------------------------------------------------------------

    async def run_async(self, send: AsyncSend) -> httpx2.Response:
        """:meth:`run_sync` for async clients, hedging when the policy says so."""
        self.start_trace()
        try:
            if self.policy.hedge_after_seconds is not None:
                return await self.run_hedged(send)
            return await self.targets_async(send)
        except BaseException as exc:
            self.failed(exc)
            raise

    async def targets_async(self, send: AsyncSend) -> httpx2.Response:
        last: Step | None = None
        for target, provider in self.candidates():
            try:
                call, attempt = self.admit(target, provider)
            except CircuitOpenError:
                continue
            except DeadlineExceededError:
                if last is not None:
                    await self.moved_async(last)
                raise
            if last is not None:
                await self.moved_async(last)
                self.failover(last, target)
            step = await self.attempt_async(target, call, attempt, send)
            if step.final is not None:
                return self.served(step)
            last = step
        if last is None:
            raise self.rejected(self.route.candidates()[1])
        return await self.last_async(last)

    async def attempt_async(
        self, target: Target, call: Call, attempt: Attempt, send: AsyncSend, defer: bool = False
    ) -> Step:
        """One target's attempt; with ``defer`` (hedging) a body in memory is not recorded until it wins."""
        step = Step(target, call, attempt)
        try:
            response = await call.send_async(send)
        except BaseException as exc:
            return self.fault_of(step, call, attempt, exc)
        attempt = call.responded(attempt, response)
        attempt.reason = None
        fault, streamed = self.classified(step, call, attempt)
        if fault:
            return step
        if not 200 <= response.status_code < 300:
            return self.final(step, call, attempt, defer)
        if streamed:
            return await self.commit_stream_async(step, call, attempt, defer)
        attempt = await call.read_async(attempt)
        if attempt.error is not None:
            step.error, step.reason = attempt.error, "transport_error"
            return step
        if attempt.outcome != "success":
            step.reason, step.pending = "in_band_error", PendingResponse(call, attempt)
            return step
        return self.final(step, call, attempt, defer)

    @staticmethod
    def final(step: Step, call: Call, attempt: Attempt, defer: bool) -> Step:
        """The answer to return: delivered now, or (``defer``) once it has won its race."""
        if defer:
            step.final, step.deferred = attempt.response, True
        else:
            step.final = call.deliver(attempt, AsyncRecordingStream)
        return step

    async def commit_stream_async(
        self, step: Step, call: Call, attempt: Attempt, defer: bool = False
    ) -> Step:
        response = attempt.response
        assert response is not None
        if defer and response.stream.__class__ is self.stack.byte_stream:
            # in memory: judged from its bytes, recorded only once it wins (or as lost)
            body = in_memory_body(response.stream)  # type: ignore[arg-type]  # a ByteStream
            attempt.body = found = whole_body_of(attempt.kind, attempt.encoding, body)
            if found[2] is not None and not found[3]:
                step.reason, step.pending = "in_band_error", PendingResponse(call, attempt)
                return step
            return self.final(step, call, attempt, True)
        attempt.inspector = BodyInspector.of(attempt.kind, attempt.encoding)
        in_memory = response.stream.__class__ is self.stack.byte_stream
        wrapped = AsyncRecordingStream(response.stream, attempt)  # type: ignore[arg-type]  # an async stream
        chunks = wrapped.__aiter__()
        if in_memory:  # the response holds its body already (and reads it from there): all of it, now
            async for _ in chunks:
                pass
            return self.in_memory_step(step, call, attempt)
        buffered: list[bytes] = []
        try:
            async for chunk in chunks:
                buffered.append(chunk)
                if _failed_before_content(attempt):
                    step.reason = "in_band_error"
                    step.pending = PendingResponse(call, attempt, wrapped, chunks, buffered)
                    return step
                if chunk and _committed(attempt):
                    break
        except DeadlineExceededError:
            with anyio.CancelScope(shield=True):
                await wrapped.aclose()
            raise
        except Exception as exc:
            with anyio.CancelScope(shield=True):
                await wrapped.aclose()
            step.error, step.reason = exc, "stream_error"
            return step
        except BaseException:
            with anyio.CancelScope(shield=True):
                await wrapped.aclose()
            raise
        if _failed_before_content(attempt):
            step.reason = "in_band_error"
            step.pending = PendingResponse(call, attempt, wrapped, chunks, buffered)
            return step
        response.stream = CommittedAsyncStream(buffered, chunks, wrapped)
        step.final = response
        return step

    async def moved_async(self, step: Step) -> None:
        """:meth:`moved` for async clients."""
        pending = step.pending
        if pending is None:
            return
        step.pending = None
        attempt = pending.attempt
        with anyio.CancelScope(shield=True):
            if pending.wrapped is not None:
                await pending.wrapped.aclose()
            elif attempt.response is not None:
                if attempt.body is None:
                    attempt.headers_at = None
                    attempt.finish(costed=False)
                else:
                    attempt.finish()
                await attempt.response.aclose()

    async def last_async(self, step: Step) -> httpx2.Response:
        """:meth:`last_sync` for async clients."""
        self.ended = True
        self.route.record("failure")
        pending = step.pending
        if pending is None:
            assert step.error is not None
            raise step.error
        response = self.pending_response(step)
        if pending.wrapped is None:
            response = pending.call.deliver(pending.attempt, AsyncRecordingStream)
        else:
            response.stream = CommittedAsyncStream(pending.buffered, pending.chunks, pending.wrapped)
        self.finishing(step, pending.call, pending.attempt)
        return self.labelled(response, step.target)

    # -- hedging (async) ---------------------------------------------------------------

    async def run_hedged(self, send: AsyncSend) -> httpx2.Response:
        """Failover as :meth:`run_async`, and after ``hedge_after_seconds`` without a commit, a hedge."""
        route = self.route
        queue = self.candidates()
        hedge_after = float(self.policy.hedge_after_seconds)  # type: ignore[arg-type]  # set: run_async checked
        sender, receiver = anyio.create_memory_object_stream[tuple["_Lane", Step]](len(queue))
        lanes: list[_Lane] = []
        winner: _Lane | None = None
        last: Step | None = None
        hedging = True
        error: Exception | None = None  # raised once the task group is over (never from inside it)

        async def run(lane: _Lane) -> None:
            with lane.scope:
                try:
                    step = await self.attempt_async(lane.target, lane.call, lane.attempt, send, defer=True)
                except DeadlineExceededError as exc:  # let go by its call already
                    step = Step(lane.target, lane.call, lane.attempt)
                    step.error, step.reason = exc, "deadline"
                lane.step = step
                sender.send_nowait((lane, step))

        def launch(group: anyio.abc.TaskGroup, hedge: bool) -> _Lane | None:
            nonlocal error
            while queue:
                target, provider = queue.pop(0)
                try:
                    call, attempt = self.admit(target, provider)
                except CircuitOpenError:
                    continue
                except DeadlineExceededError as exc:  # raised once the task group is over
                    error = exc
                    queue.clear()
                    return None
                if hedge and not route.try_hedge():
                    attempt.release()
                    self.attempts -= 1
                    queue.insert(0, (target, provider))
                    return None
                lane = _Lane(target, call, attempt, hedge)
                lanes.append(lane)
                if hedge and self.trace is not None:
                    self.trace.span.hedge(route.name, target.provider)
                group.start_soon(run, lane)
                return lane
            return None

        try:
            async with anyio.create_task_group() as group:
                if launch(group, False) is None and error is None:
                    error = self.rejected(route.candidates()[1])
                live = 0 if error is not None else 1
                deadline = self.deadline
                while live:
                    wait = hedge_after if hedging and queue else math.inf
                    left = math.inf if deadline is None else deadline.at - route._clock()
                    with anyio.move_on_after(min(wait, max(0.0, left))) as timer:
                        lane, step = await receiver.receive()
                    if timer.cancelled_caught and left <= wait:
                        for other in lanes:
                            if other.step is None:  # cut by the deadline: held against no one, counted
                                other.attempt.lost = True
                                other.call.provider.count_deadline_exceeded()
                                other.scope.cancel()
                        error = self.exceeded()
                        break
                    if timer.cancelled_caught:
                        if launch(group, True) is None:
                            if error is not None:
                                break  # the deadline passed as the hedge was to start
                            hedging = False  # the budget is spent, or no target is left
                        else:
                            live += 1
                        continue
                    live -= 1
                    if step.reason == "deadline":
                        error = step.error
                        break
                    if step.final is not None:
                        winner = lane
                        break
                    if last is not None and last.pending is not None:
                        await self.moved_async(last)
                    last = step
                    if not live:
                        following = launch(group, False)
                        if following is not None:
                            await self.moved_async(last)
                            self.failover(step, following.target)
                            live = 1
                for other in lanes:
                    if other is not winner and other.step is None:
                        other.attempt.lost = True
                        other.scope.cancel()
            # lanes that committed after the winner are lost too
            for other in lanes:
                if other is not winner and other.step is not None and other.step.final is not None:
                    other.attempt.lost = True
                    other.attempt.finish()  # lost: its cost, when known, and nothing else
                    with anyio.CancelScope(shield=True):
                        await other.step.final.aclose()
                elif other is not winner and other.step is not None and other.step is not last:
                    await self.moved_async(other.step)
            if (error is not None or winner is not None) and last is not None:
                await self.moved_async(last)  # a failure another lane outran: recorded and closed
        finally:
            sender.close()
            receiver.close()
        for lane in lanes:
            if lane.hedge and winner is not None:
                route.record_hedge("won" if lane is winner else "lost")
        if error is not None:
            raise error
        if winner is not None:
            assert winner.step is not None
            return self.served(winner.step)
        if last is None:
            raise self.rejected(route.candidates()[1])
        return await self.last_async(last)

    # -- the answer ------------------------------------------------------------------

    def served(self, step: Step) -> httpx2.Response:
        """The committed (or at once returned) response, labelled; the route call is a success."""
        self.ended = True
        self.route.record("success")
        response = step.final
        assert response is not None
        if step.deferred and step.call is not None and step.attempt is not None:
            response = step.final = step.call.deliver(step.attempt, AsyncRecordingStream)
        self.finishing(step, step.call, step.attempt)
        return self.labelled(response, step.target)

    def finishing(self, step: Step, call: Call | None, attempt: Attempt | None) -> None:
        """The span ends with the record of the attempt the caller got (now, if it is recorded)."""
        trace = self.trace
        if trace is None or call is None:
            return
        trace.answered, trace.attempts_made = step.target.provider, self.attempts
        call.final = attempt
        if attempt is None or attempt.done:
            if attempt is not None:
                trace.outcome = "failure" if attempt.error is not None else attempt.outcome  # the answer's
            trace.end(None)

    def pending_response(self, step: Step) -> httpx2.Response:
        response = step.pending.attempt.response
        assert response is not None
        return response  # type: ignore[no-any-return]

    def labelled(self, response: httpx2.Response, target: Target) -> httpx2.Response:
        extensions = response.extensions
        if not isinstance(extensions, dict):  # pragma: no cover - httpx keeps a dict
            response.extensions = extensions = dict(extensions)
        extensions["resilience.provider"] = target.provider
        extensions["resilience.attempts"] = self.attempts
        return response


class _Lane:
    """One attempt of a hedged route call, in its own task and cancel scope."""

    __slots__ = ("attempt", "call", "hedge", "scope", "step", "target")

    def __init__(self, target: Target, call: Call, attempt: Attempt, hedge: bool) -> None:
        self.target, self.call, self.attempt, self.hedge = target, call, attempt, hedge
        self.scope = anyio.CancelScope()
        self.step: Step | None = None
