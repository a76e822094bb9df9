"""``ResilientTransport``: every provider call through breaker, retries, windows and cost.

::

    client = httpx.AsyncClient(transport=resilience.ResilientTransport(registry))
    sync_client = httpx.Client(transport=resilience.ResilientTransport(registry))

The transport is thin: which provider and model a request belongs to lives
in :mod:`resilience._resolve`, the fused happy path in
:mod:`resilience._happy` (compiled when built, see :mod:`resilience._hot`), the attempts and retries in
:mod:`resilience._call`, the recording response streams in
:mod:`resilience._stream`.
"""

from __future__ import annotations

import threading
from types import TracebackType
from typing import Any

import httpx

from resilience import _clock
from resilience._call import AsyncSend, Call, SyncSend
from resilience._clock import AsyncSleep, Sleep
from resilience._errors import ConfigError
from resilience._hot import load
from resilience._registry import ProviderRegistry
from resilience._retry import RetryBudget
from resilience._stale import traceable

HOT_PATH = load()
"""The happy path in use: compiled by ``python -m resilience speedups`` when built and current, else pure."""
admit_request, recorded_plain, Resolver = HOT_PATH.admit_request, HOT_PATH.recorded_plain, HOT_PATH.Resolver

BUDGETS = "resilience.retry_budgets"
"""Key of the per-provider retry budgets in ``registry.extensions`` (shared by its transports)."""


class ResilientTransport(httpx.BaseTransport, httpx.AsyncBaseTransport):
    """An httpx transport that runs every request through its provider's breaker and policy.

    Serves both ``httpx.Client`` and ``httpx.AsyncClient``.

    Args:
        registry: the providers, their policies and the clock.
        transport: the transport that does the I/O, used for both sides; by
            default an ``httpx.HTTPTransport()`` / ``httpx.AsyncHTTPTransport()``,
            created when that side is first used.
        sleep: how sync retries wait (``time.sleep``); tests pass ``FakeClock.sleep``.
        async_sleep: how async retries wait (``asyncio.sleep``).

    Raises:
        ConfigError: ``registry`` is not a :class:`resilience.ProviderRegistry`.
    """

    def __init__(
        self,
        registry: ProviderRegistry,
        transport: httpx.BaseTransport | httpx.AsyncBaseTransport | None = None,
        *,
        sleep: Sleep | None = None,
        async_sleep: AsyncSleep | None = None,
    ) -> None:
        if not isinstance(registry, ProviderRegistry):
            raise ConfigError(f"registry must be a ProviderRegistry, got {registry!r}")
        self.registry = registry
        self._given = transport
        self._sync: Any = transport
        self._async: Any = transport
        self._sync_send: SyncSend | None = getattr(transport, "handle_request", None)
        self._async_send: AsyncSend | None = getattr(transport, "handle_async_request", None)
        self._sync_traced = self._async_traced = traceable(transport)
        self._sleep = sleep or _clock.sleep
        self._async_sleep = async_sleep or _clock.async_sleep
        self._budgets: dict[str, RetryBudget] = registry.extensions.setdefault(BUDGETS, {})
        self._resolve = Resolver(registry)
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"<ResilientTransport over {self._given or 'httpx.HTTPTransport'!r}>"

    # -- sync ------------------------------------------------------------------

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        """Send ``request`` through its provider's breaker, retries and windows."""
        send = self._sync_send or self._make_sync()
        admission = admit_request(self._resolve, request)
        if self._sync_traced:
            return Call(self._budgets, request, admission).run_sync(send, True, self._sleep)
        # Call.run_sync inlined for the happy path: no Call unless it is left
        try:
            response = send(request)
        except BaseException as exc:
            call = Call(self._budgets, request, admission)
            first = call.first_failed(exc)
        else:
            if recorded_plain(admission, response):
                return response
            call = Call(self._budgets, request, admission)
            first = call.first_responded(response)
        return call.go_on_sync(first, send, False, self._sleep)

    def _make_sync(self) -> SyncSend:
        with self._lock:
            if self._sync_send is None:
                if self._sync is not None:
                    raise TypeError(f"{self._sync!r} is an async transport; use it with httpx.AsyncClient")
                self._sync = httpx.HTTPTransport()
                self._sync_traced = True
                self._sync_send = self._sync.handle_request
            return self._sync_send

    def close(self) -> None:
        """Close the inner transport (the sync default, or the one given)."""
        inner = self._sync
        if inner is not None and hasattr(inner, "close"):
            inner.close()

    # -- async -----------------------------------------------------------------

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """:meth:`handle_request` for ``httpx.AsyncClient``."""
        send = self._async_send or self._make_async()
        admission = admit_request(self._resolve, request)
        if self._async_traced:
            return await Call(self._budgets, request, admission).run_async(send, True, self._async_sleep)
        # Call.run_async inlined for the happy path: no Call and one coroutine less
        try:
            response = await send(request)
        except BaseException as exc:
            call = Call(self._budgets, request, admission)
            first = call.first_failed(exc)
        else:
            if recorded_plain(admission, response):
                return response
            call = Call(self._budgets, request, admission)
            first = call.first_responded(response)
        return await call.go_on_async(first, send, False, self._async_sleep)

    def _make_async(self) -> AsyncSend:
        with self._lock:
            if self._async_send is None:
                if self._async is not None:
                    raise TypeError(f"{self._async!r} is a sync transport; use it with httpx.Client")
                self._async = httpx.AsyncHTTPTransport()
                self._async_traced = True
                self._async_send = self._async.handle_async_request
            return self._async_send

    async def aclose(self) -> None:
        """Close the inner transport (the async default, or the one given)."""
        inner = self._async
        if inner is not None and hasattr(inner, "aclose"):
            await inner.aclose()

    # -- context managers (both bases define them; be explicit) ---------------

    def __enter__(self) -> ResilientTransport:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None = None,
        exc_value: BaseException | None = None,
        traceback: TracebackType | None = None,
    ) -> None:
        self.close()

    async def __aenter__(self) -> ResilientTransport:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None = None,
        exc_value: BaseException | None = None,
        traceback: TracebackType | None = None,
    ) -> None:
        await self.aclose()
