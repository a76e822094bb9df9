"""Response streams that record their attempt when the body ends.

Chunks pass through as they come (only the bounded cost inspection looks at
them). The attempt is recorded exactly once: when the stream is exhausted
(outcome by status), fails (``failure``), or is closed early (outcome by
status: the caller chose to stop). One cancelled mid-body (a client that
left, ``wait_for``, a cancel scope) is recorded too, by its status and the
usage seen so far, but gives the breaker no verdict: its half-open trial
slot goes back. httpx reads non-streamed bodies through
the same wrapper, so ``client.get(...)`` is covered too.

Streaming timeouts, from the provider's policy:

* ``first_byte_timeout``: the wait for the first body chunk of any kind,
  from the moment the caller asks for it;
* ``first_token_timeout``: from the start of the attempt to its first
  content event (SSE: keepalives and error events are not content; other
  streams: any body bytes);
* ``idle_timeout``: each wait for the next content event while the caller
  reads (for other streams, the next chunk). Keepalives end neither wait,
  so a stream that only pings is cut.

A breach is a ``failure`` and raises :class:`resilience.StreamTimeoutError`.
Async streams enforce them with a real timer (anyio) around each read, and
also check the registry clock when a chunk arrives. Sync streams cannot
interrupt a blocking read: they check the registry clock when a chunk
arrives (a late chunk, or a keepalive past the limit, is a breach; a read
that never returns is bounded only by httpx's own read timeout).

For SSE responses the time to the first content event is the attempt's
time to first token (:attr:`Attempt.ttft`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from itertools import filterfalse, islice
from typing import TYPE_CHECKING

import anyio
import httpx2

from resilience._http.attempt import Attempt
from resilience._http.errors import DeadlineExceededError, StreamTimeoutError
from resilience._http.inspect import BATCH
from resilience._http.stacks import ASYNC_STREAM_BASES, SYNC_STREAM_BASES

if TYPE_CHECKING:
    _SyncBase = httpx2.SyncByteStream
    _AsyncBase = httpx2.AsyncByteStream
else:  # both stacks' stream classes, so either client accepts the response
    _SyncBase = type("_SyncBase", SYNC_STREAM_BASES, {})
    _AsyncBase = type("_AsyncBase", ASYNC_STREAM_BASES, {})


class _Watch:
    """The stream timers and the first-token clock of one attempt's body."""

    __slots__ = (
        "attempt", "clock", "content", "deadline", "delivered", "first_byte", "first_token", "got_bytes",
        "idle", "inspector", "paused", "sse", "wait_from", "wait_paused",
    )

    def __init__(self, attempt: Attempt, first_byte: float | None, first_token: float | None,
                 idle: float | None) -> None:
        self.attempt = attempt
        self.clock = attempt.provider.clock
        self.inspector = attempt.inspector
        self.sse = self.inspector is not None and self.inspector.sse
        self.first_byte, self.first_token, self.idle = first_byte, first_token, idle
        self.got_bytes = self.content = False
        self.wait_from: float | None = None  # when the caller began waiting for the next content event
        self.wait_paused = 0.0
        self.paused = 0.0
        """Seconds the caller spent not reading (before its first read, between chunks)."""
        self.delivered: float | None = attempt.headers_at  # when the caller last got something
        deadline = attempt.call.deadline
        self.deadline = None if deadline is None else deadline.at

    @classmethod
    def of(cls, attempt: Attempt) -> _Watch | None:
        """The attempt's streaming timers, or ``None`` when its policy sets none."""
        policy = attempt.provider.policy
        first, token, idle = policy.first_byte_timeout, policy.first_token_timeout, policy.idle_timeout
        if first is None and token is None and idle is None and attempt.call.deadline is None:
            return None
        return cls(attempt, first, token, idle)

    def limit(self, asked: float) -> tuple[float, str] | None:
        """The soonest limit on the read the caller asked for at ``asked``: (clock time, what).

        The provider's limits (first token, idle) leave out the time the caller
        spent not reading: a late reader finds the chunks waiting, not late.
        """
        delivered = self.delivered
        if delivered is not None:
            self.paused += max(0.0, asked - delivered)
            self.delivered = None
        soonest: tuple[float, str] | None = None
        if not self.got_bytes and self.first_byte is not None:
            soonest = (asked + self.first_byte, "first_byte")
        if not self.content and self.first_token is not None:
            at = self.attempt.start + self.paused + self.first_token
            if soonest is None or at < soonest[0]:
                soonest = (at, "first_token")
        if self.got_bytes and self.idle is not None:
            if self.wait_from is None:
                self.wait_from, self.wait_paused = asked, self.paused
            at = self.wait_from + self.idle + self.paused - self.wait_paused
            if soonest is None or at < soonest[0]:
                soonest = (at, "idle")
        deadline = self.deadline
        if deadline is not None and (soonest is None or deadline < soonest[0]):
            soonest = (deadline, "deadline")
        return soonest

    def took(self, chunk: bytes) -> None:
        """A chunk arrived: feed the inspector; a content event resets the idle wait."""
        self.got_bytes = True
        inspector = self.inspector
        content = inspector.feed(chunk) if inspector is not None else bool(chunk)
        now = self.delivered = self.clock()
        if content:
            self.wait_from = None
            if not self.content:
                self.content = True
                if self.sse:
                    self.attempt.ttft = now - self.attempt.start - self.paused

    def breach(self, what: str) -> StreamTimeoutError | DeadlineExceededError:
        attempt = self.attempt
        if what == "deadline":
            return attempt.call.exceeded()
        name = attempt.provider.name
        if what == "first_byte":
            message = f"{name}: first body chunk not received within {self.first_byte:g}s"
        elif what == "first_token":
            message = f"{name}: no first content event within {self.first_token:g}s of the attempt's start"
        else:
            message = f"{name}: no body chunk for {self.idle:g}s" + (
                " with a content event (keepalives do not count)" if self.sse else ""
            )
        call = attempt.call
        return call.stack.stream_timeout(message, request=call.request)


class _Ended:
    """What a closed stream keeps instead of its attempt (recorded): no cycle through its response."""

    done = True

    def finish(self, **_: bool) -> None:
        """Recorded already."""

    def abandon(self) -> None:
        """Recorded already."""


ENDED: Attempt = _Ended()  # type: ignore[assignment]  # stands in for a recorded Attempt


def _cut(attempt: Attempt, exc: DeadlineExceededError) -> None:
    """A stream cut by the call's deadline: let go, counted in neither calls nor failures."""
    attempt.release()
    trace = attempt.call.trace
    if trace is not None:
        trace.attempts += 1  # made, though held against no one
        trace.end(exc)


def _first_token(attempt: Attempt, asked: float) -> None:
    """The first content event is here: the time to it, less the caller's wait before its first read."""
    headers = attempt.headers_at
    before = 0.0 if headers is None else max(0.0, asked - headers)
    attempt.ttft = attempt.provider.clock() - attempt.start - before


class SyncRecordingStream(_SyncBase):
    """Wraps a sync response stream; see the module docstring."""

    def __init__(self, inner: httpx2.SyncByteStream, attempt: Attempt) -> None:
        self._inner = inner
        self._attempt = attempt
        self._watch = _Watch.of(attempt)

    def __iter__(self) -> Iterator[bytes]:
        attempt, watch = self._attempt, self._watch
        inspector = attempt.inspector
        try:
            if watch is None:
                chunks = iter(self._inner)
                if inspector is None:
                    yield from chunks
                else:
                    more = True
                    if inspector.sse:  # chunk by chunk to the first content event: the time to first token
                        asked = attempt.provider.clock()
                        more = False
                        for chunk in chunks:
                            if inspector.feed(chunk):
                                _first_token(attempt, asked)
                                more = True
                                yield chunk
                                break
                            yield chunk
                    taken = inspector.taken
                    while more:  # then BATCH chunks at a time, taken by C code (no Python frame per chunk)
                        yield from filterfalse(taken.append, islice(chunks, BATCH))
                        more = len(taken) == BATCH
                        inspector.look()
            else:
                clock = watch.clock
                chunks = iter(self._inner)
                while True:
                    limit = watch.limit(clock())
                    piece = next(chunks, None)
                    if piece is None:
                        break
                    if limit is not None and clock() > limit[0]:
                        raise watch.breach(limit[1])  # late, on the registry clock
                    watch.took(piece)
                    yield piece
        except GeneratorExit:
            raise  # closed by the consumer: close() records
        except DeadlineExceededError as exc:  # the call's deadline, not the provider's fault
            _cut(attempt, exc)
            raise
        except Exception as exc:
            if attempt.call.timed_out(exc):  # a read timeout capped at the deadline fired: the deadline's
                cut = attempt.call.exceeded()
                _cut(attempt, cut)
                raise cut from exc
            attempt.finish(failed=True, complete=False)
            raise
        except BaseException:  # cancelled mid-body: recorded by its status, no verdict on the provider
            attempt.finish(complete=False, judged=False)
            raise
        attempt.finish()

    def __del__(self) -> None:
        attempt = self._attempt
        if not attempt.done:  # never closed nor read to the end: give a half-open trial slot back
            attempt.abandon()

    def close(self) -> None:
        """Record the attempt if the body did not end, then close the inner stream."""
        attempt = self._attempt
        try:
            if not attempt.done:
                attempt.finish(complete=False)
        finally:
            self._attempt, self._watch = ENDED, None  # the attempt holds the response that holds this
            self._inner.close()


class AsyncRecordingStream(_AsyncBase):
    """Wraps an async response stream; see the module docstring."""

    def __init__(self, inner: httpx2.AsyncByteStream, attempt: Attempt) -> None:
        self._inner = inner
        self._attempt = attempt
        self._watch = _Watch.of(attempt)

    async def __aiter__(self) -> AsyncIterator[bytes]:
        attempt, watch = self._attempt, self._watch
        inspector = attempt.inspector
        try:
            if watch is None:
                first_token = inspector is not None and inspector.sse
                asked = attempt.provider.clock() if first_token else 0.0
                taken = None if inspector is None else inspector.taken
                async for chunk in self._inner:
                    if first_token:  # chunk by chunk to the first content event: the time to first token
                        if inspector.feed(chunk):  # type: ignore[union-attr]  # set when first_token is
                            first_token = False
                            _first_token(attempt, asked)
                    elif taken is not None:  # then looked at BATCH chunks at a time
                        taken.append(chunk)
                        if len(taken) == BATCH:
                            inspector.look()  # type: ignore[union-attr]  # set when taken is
                    yield chunk
            else:
                chunks = self._inner.__aiter__()
                while (piece := await self._next(chunks, watch)) is not None:
                    watch.took(piece)
                    yield piece
        except GeneratorExit:
            raise  # closed by the consumer: aclose() records
        except DeadlineExceededError as exc:  # the call's deadline, not the provider's fault
            _cut(attempt, exc)
            raise
        except Exception as exc:
            if attempt.call.timed_out(exc):  # a read timeout capped at the deadline fired: the deadline's
                cut = attempt.call.exceeded()
                _cut(attempt, cut)
                raise cut from exc
            attempt.finish(failed=True, complete=False)
            raise
        except BaseException:  # cancelled mid-body: recorded by its status, no verdict on the provider
            attempt.finish(complete=False, judged=False)
            raise
        attempt.finish()

    async def _next(self, chunks: AsyncIterator[bytes], watch: _Watch) -> bytes | None:
        clock = watch.clock
        now = clock()
        limit = watch.limit(now)
        try:
            if limit is None:
                return await chunks.__anext__()
            left = limit[0] - now
            if left <= 0:
                raise watch.breach(limit[1])
            with anyio.move_on_after(left) as scope:
                chunk = await chunks.__anext__()
        except StopAsyncIteration:
            return None
        if scope.cancelled_caught or clock() > limit[0]:
            raise watch.breach(limit[1])
        return chunk

    def __del__(self) -> None:
        attempt = self._attempt
        if not attempt.done:  # never closed nor read to the end: give a half-open trial slot back
            attempt.abandon()

    async def aclose(self) -> None:
        """Record the attempt if the body did not end, then close the inner stream."""
        attempt = self._attempt
        try:
            if not attempt.done:
                attempt.finish(complete=False)
        finally:
            self._attempt, self._watch = ENDED, None  # the attempt holds the response that holds this
            await self._inner.aclose()
