"""Base classes for test doubles that serve both HTTP stacks (httpx2 and httpx) at once.

A test parametrized with the ``stack`` fixture swaps its module's ``httpx`` for
the stack under test, but classes are made at import: a fake stream or
transport subclasses these instead, so either stack's client accepts it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from typing import TYPE_CHECKING, Any

import httpx
import httpx2

if TYPE_CHECKING:
    SyncStream = httpx.SyncByteStream
    AsyncStream = httpx.AsyncByteStream
    Transport = httpx.BaseTransport
    AsyncTransport = httpx.AsyncBaseTransport
else:
    SyncStream = type("SyncStream", (httpx2.SyncByteStream, httpx.SyncByteStream), {})
    AsyncStream = type("AsyncStream", (httpx2.AsyncByteStream, httpx.AsyncByteStream), {})
    Transport = type("Transport", (httpx2.BaseTransport, httpx.BaseTransport), {})
    AsyncTransport = type("AsyncTransport", (httpx2.AsyncBaseTransport, httpx.AsyncBaseTransport), {})


class Chunks(SyncStream, AsyncStream):
    """A streamed body of either stack; ``before(i)`` runs before chunk ``i`` (advance a clock, sleep).

    An awaitable that ``before`` returns is awaited on the async side.
    """

    def __init__(self, chunks: list[bytes], before: Callable[[int], Any] | None = None) -> None:
        self.chunks = chunks
        self.before = before

    def __iter__(self) -> Iterator[bytes]:
        for i, chunk in enumerate(self.chunks):
            if self.before is not None:
                self.before(i)
            yield chunk

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for i, chunk in enumerate(self.chunks):
            if self.before is not None:
                result = self.before(i)
                if result is not None:
                    await result
            yield chunk
