"""Response streams that record their attempt when the body ends.

Chunks pass through as they come (only the bounded cost inspection looks at
them). The attempt is recorded exactly once: when the stream is exhausted
(outcome by status), fails (``failure``), or is closed early (outcome by
status: the caller chose to stop). One cancelled mid-body (a client that
left, ``wait_for``, a cancel scope) is recorded too, by its status and the
usage seen so far, but gives the breaker no verdict: its half-open trial
slot goes back. httpx reads non-streamed bodies through
the same wrapper, so ``client.get(...)`` is covered too.

Streaming timeouts, from the provider's policy, are measured from the moment
the caller asks for the next chunk:

* ``first_byte_timeout``: the wait for the first body chunk;
* ``idle_timeout``: the wait for each later chunk.

A breach is a ``failure`` and raises :class:`resilience.StreamTimeoutError`.
Async streams enforce both with a real timer (anyio) around each read, and
also check the registry clock when a chunk arrives. Sync streams cannot
interrupt a blocking read: they check the registry clock when a chunk
arrives (a late chunk is a breach, but a read that never returns is bounded
only by httpx's own read timeout).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING

import anyio
import httpx2

from resilience._http.attempt import Attempt
from resilience._http.errors import StreamTimeoutError
from resilience._http.stacks import ASYNC_STREAM_BASES, SYNC_STREAM_BASES

if TYPE_CHECKING:
    _SyncBase = httpx2.SyncByteStream
    _AsyncBase = httpx2.AsyncByteStream
else:  # both stacks' stream classes, so either client accepts the response
    _SyncBase = type("_SyncBase", SYNC_STREAM_BASES, {})
    _AsyncBase = type("_AsyncBase", ASYNC_STREAM_BASES, {})


class _Timeouts:
    __slots__ = ("first", "idle")

    def __init__(self, first: float | None, idle: float | None) -> None:
        self.first = first
        self.idle = idle

    @classmethod
    def of(cls, attempt: Attempt) -> _Timeouts | None:
        """The attempt's streaming timeouts, or ``None`` when its policy sets none."""
        policy = attempt.provider.policy
        first, idle = policy.first_byte_timeout, policy.idle_timeout
        return None if first is None and idle is None else cls(first, idle)

    @staticmethod
    def breach(attempt: Attempt, first: bool, limit: float) -> StreamTimeoutError:
        name = attempt.provider.name
        message = (
            f"{name}: first body chunk not received within {limit:g}s"
            if first
            else f"{name}: no body chunk for {limit:g}s"
        )
        call = attempt.call
        return call.stack.stream_timeout(message, request=call.request)


class SyncRecordingStream(_SyncBase):
    """Wraps a sync response stream; see the module docstring."""

    def __init__(self, inner: httpx2.SyncByteStream, attempt: Attempt) -> None:
        self._inner = inner
        self._attempt = attempt
        self._timeouts = _Timeouts.of(attempt)

    def __iter__(self) -> Iterator[bytes]:
        attempt, timeouts = self._attempt, self._timeouts
        inspector = attempt.inspector
        try:
            if timeouts is None:
                for chunk in self._inner:
                    if inspector is not None:
                        inspector.feed(chunk)
                    yield chunk
            else:
                chunks = iter(self._inner)
                limit, first = timeouts.first, True
                while (piece := self._next(chunks, limit, first)) is not None:
                    if inspector is not None:
                        inspector.feed(piece)
                    yield piece
                    limit, first = timeouts.idle, False
        except GeneratorExit:
            raise  # closed by the consumer: close() records
        except Exception:
            attempt.finish(failed=True, complete=False)
            raise
        except BaseException:  # cancelled mid-body: recorded by its status, no verdict on the provider
            attempt.finish(complete=False, judged=False)
            raise
        attempt.finish()

    def _next(self, chunks: Iterator[bytes], limit: float | None, first: bool) -> bytes | None:
        clock = self._attempt.provider.clock
        started = clock()
        chunk = next(chunks, None)
        if chunk is not None and limit is not None and clock() - started > limit:
            raise _Timeouts.breach(self._attempt, first, limit)
        return chunk

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
            self._inner.close()


class AsyncRecordingStream(_AsyncBase):
    """Wraps an async response stream; see the module docstring."""

    def __init__(self, inner: httpx2.AsyncByteStream, attempt: Attempt) -> None:
        self._inner = inner
        self._attempt = attempt
        self._timeouts = _Timeouts.of(attempt)

    async def __aiter__(self) -> AsyncIterator[bytes]:
        attempt, timeouts = self._attempt, self._timeouts
        inspector = attempt.inspector
        try:
            if timeouts is None:
                async for chunk in self._inner:
                    if inspector is not None:
                        inspector.feed(chunk)
                    yield chunk
            else:
                chunks = self._inner.__aiter__()
                limit, first = timeouts.first, True
                while (piece := await self._next(chunks, limit, first)) is not None:
                    if inspector is not None:
                        inspector.feed(piece)
                    yield piece
                    limit, first = timeouts.idle, False
        except GeneratorExit:
            raise  # closed by the consumer: aclose() records
        except Exception:
            attempt.finish(failed=True, complete=False)
            raise
        except BaseException:  # cancelled mid-body: recorded by its status, no verdict on the provider
            attempt.finish(complete=False, judged=False)
            raise
        attempt.finish()

    async def _next(self, chunks: AsyncIterator[bytes], limit: float | None, first: bool) -> bytes | None:
        clock = self._attempt.provider.clock
        started = clock()
        try:
            if limit is None:
                return await chunks.__anext__()
            with anyio.move_on_after(limit) as scope:
                chunk = await chunks.__anext__()
        except StopAsyncIteration:
            return None
        if scope.cancelled_caught or clock() - started > limit:
            raise _Timeouts.breach(self._attempt, first, limit)
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
            await self._inner.aclose()
