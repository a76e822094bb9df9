"""Base classes for test doubles that serve both HTTP stacks (httpx2 and httpx) at once.

A test parametrized with the ``stack`` fixture swaps its module's ``httpx`` for
the stack under test, but classes are made at import: a fake stream or
transport subclasses these instead, so either stack's client accepts it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

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
