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

import anyio
import httpx

from resilience._attempt import Attempt
from resilience._errors import StreamTimeoutError


class _Timeouts:
    __slots__ = ("first", "idle", "request")

    def __init__(self, attempt: Attempt, request: httpx.Request) -> None:
        policy = attempt.provider.policy
        self.first = policy.first_byte_timeout
        self.idle = policy.idle_timeout
        self.request = request

    @property
    def active(self) -> bool:
        return self.first is not None or self.idle is not None

    def breach(self, attempt: Attempt, first: bool, limit: float) -> StreamTimeoutError:
        name = attempt.provider.name
        message = (
            f"{name}: first body chunk not received within {limit:g}s"
            if first
            else f"{name}: no body chunk for {limit:g}s"
        )
        return StreamTimeoutError(message, request=self.request)


class SyncRecordingStream(httpx.SyncByteStream):
    """Wraps a sync response stream; see the module docstring."""

    def __init__(self, inner: httpx.SyncByteStream, attempt: Attempt, request: httpx.Request) -> None:
        self._inner = inner
        self._attempt = attempt
        self._timeouts = _Timeouts(attempt, request)

    def __iter__(self) -> Iterator[bytes]:
        attempt, timeouts = self._attempt, self._timeouts
        inspector = attempt.inspector
        try:
            if not timeouts.active:
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
            raise self._timeouts.breach(self._attempt, first, limit)
        return chunk

    def __del__(self) -> None:
        # never closed nor read to the end: give a half-open trial slot back
        self._attempt.abandon()

    def close(self) -> None:
        """Record the attempt if the body did not end, then close the inner stream."""
        try:
            self._attempt.finish(complete=False)
        finally:
            self._inner.close()


class AsyncRecordingStream(httpx.AsyncByteStream):
    """Wraps an async response stream; see the module docstring."""

    def __init__(self, inner: httpx.AsyncByteStream, attempt: Attempt, request: httpx.Request) -> None:
        self._inner = inner
        self._attempt = attempt
        self._timeouts = _Timeouts(attempt, request)

    async def __aiter__(self) -> AsyncIterator[bytes]:
        attempt, timeouts = self._attempt, self._timeouts
        inspector = attempt.inspector
        try:
            if not timeouts.active:
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
            raise self._timeouts.breach(self._attempt, first, limit)
        return chunk

    def __del__(self) -> None:
        # never closed nor read to the end: give a half-open trial slot back
        self._attempt.abandon()

    async def aclose(self) -> None:
        """Record the attempt if the body did not end, then close the inner stream."""
        try:
            self._attempt.finish(complete=False)
        finally:
            await self._inner.aclose()
