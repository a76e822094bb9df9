"""``ResilientTransport``: every provider call through breaker, retries, windows and cost.

::

    client = httpx2.AsyncClient(transport=resilience.ResilientTransport(registry))
    sync_client = httpx.Client(transport=resilience.ResilientTransport(registry))

One object serves ``httpx2.Client``, ``httpx2.AsyncClient``, ``httpx.Client``
and ``httpx.AsyncClient``: each request is answered in its own stack's types
(:mod:`resilience._http.stacks`). The transport is thin: which provider and
model a request belongs to lives in :mod:`resilience._http.resolve`, the
attempts and retries in :mod:`resilience._http.call` and
:mod:`resilience._http.loop`, the recording response streams in
:mod:`resilience._http.stream`.
"""

from __future__ import annotations

import threading
from collections.abc import Coroutine
from types import TracebackType
from typing import TYPE_CHECKING, Any, overload

import httpx2

from resilience._core import clock as _clock
from resilience._core.clock import AsyncSleep, Sleep
from resilience._core.errors import ConfigError
from resilience._core.registry import ProviderRegistry
from resilience._core.retry import RetryBudget
from resilience._http.call import Call
from resilience._http.observe import end_abandoned
from resilience._http.resolve import Resolver
from resilience._http.route import RouteCall
from resilience._http.stacks import BY_REQUEST, STACKS, Stack, stack_of, stack_of_transport
from resilience._http.stale import traceable

if TYPE_CHECKING:
    import httpx

    class _Base(  # type: ignore[misc]  # the stacks' bases disagree on types; the overloads below serve both
        httpx2.BaseTransport, httpx2.AsyncBaseTransport, httpx.BaseTransport, httpx.AsyncBaseTransport
    ):
        pass

else:
    # httpx2's bases only: the Anthropic SDK refuses any object with an httpx class in its MRO,
    # and httpx's clients do not check the transport's class.
    class _Base(httpx2.BaseTransport, httpx2.AsyncBaseTransport):
        pass


BUDGETS = "resilience.retry_budgets"
"""Key of the per-provider retry budgets in ``registry.extensions`` (shared by its transports)."""


class ResilientTransport(_Base):
    """A transport that runs every request through its provider's breaker and policy.

    Serves ``httpx2.Client``, ``httpx2.AsyncClient``, ``httpx.Client`` and
    ``httpx.AsyncClient``, the same object for all: each request goes
    through its own stack's transport and gets its own stack's response,
    streams and exceptions.

    Args:
        registry: the providers, their policies and the clock.
        transport: the transport that does the I/O (of either stack), used for
            that stack's requests, sync and async; by default each stack's
            ``HTTPTransport()`` / ``AsyncHTTPTransport()``, created when that
            side is first used.
        sleep: how sync retries wait (``time.sleep``); tests pass ``FakeClock.sleep``.
        async_sleep: how async retries wait (``anyio.sleep``: asyncio and trio).

    Raises:
        ConfigError: ``registry`` is not a :class:`resilience.ProviderRegistry`,
            or ``transport`` is not a transport.
    """

    def __init__(
        self,
        registry: ProviderRegistry,
        transport: Any = None,
        *,
        sleep: Sleep | None = None,
        async_sleep: AsyncSleep | None = None,
    ) -> None:
        if not isinstance(registry, ProviderRegistry):
            raise ConfigError(f"registry must be a ProviderRegistry, got {registry!r}")
        given_stack = None
        if transport is not None:
            given_stack = stack_of_transport(transport)
            if given_stack is None and not (
                callable(getattr(transport, "handle_request", None))
                or callable(getattr(transport, "handle_async_request", None))
            ):
                raise ConfigError(f"transport must be an httpx2 or httpx transport, got {transport!r}")
        self.registry = registry
        self._given = transport
        self._given_stack = given_stack
        self._inner: dict[tuple[Stack, bool], Any] = {}
        self._sync_senders: dict[Stack, tuple[Any, bool]] = {}
        self._async_senders: dict[Stack, tuple[Any, bool]] = {}
        self._sleep = sleep or _clock.sleep
        self._async_sleep = async_sleep or _clock.async_sleep
        self._budgets: dict[str, RetryBudget] = registry.extensions.setdefault(BUDGETS, {})
        self._resolve = Resolver(registry)
        self._route_hosts = registry._route_hosts  # requests under a route's base_url: a RouteCall
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"<ResilientTransport over {self._given or 'each stack default transport'!r}>"

    # -- sync ------------------------------------------------------------------

    @overload
    def handle_request(self, request: httpx2.Request) -> httpx2.Response: ...
    @overload
    def handle_request(self, request: httpx.Request) -> httpx.Response: ...
    def handle_request(self, request: Any) -> Any:
        """Send ``request`` through its provider's breaker, retries and windows."""
        stack = BY_REQUEST.get(request.__class__) or stack_of(request)
        found = self._sync_senders.get(stack)
        started = None
        if found is None:  # the first request of this side: its inner transport is made now
            started = self.registry.clock()  # ... within the call's deadline, which starts here
            found = self._sender(stack, True)
        send, traced = found
        if self._route_hosts and (route := self._route_hosts.get(request.url.host)) is not None:
            return RouteCall(self, stack, request, route, traced, started).run_sync(send)
        return Call(self, stack, request, traced, started).run_sync(send, self._sleep)

    def close(self) -> None:
        """Close the sync inner transports (the defaults made, or the one given).

        The spans of calls whose stream was dropped unfinished end here too, if no later call ended them.
        """
        end_abandoned()
        for (_, sync), inner in list(self._inner.items()):
            if sync and hasattr(inner, "close"):
                inner.close()
        if self._given is not None and not self._inner and hasattr(self._given, "close"):
            self._given.close()

    # -- async -----------------------------------------------------------------

    @overload
    def handle_async_request(self, request: httpx2.Request) -> Coroutine[Any, Any, httpx2.Response]: ...
    @overload
    def handle_async_request(self, request: httpx.Request) -> Coroutine[Any, Any, httpx.Response]: ...
    def handle_async_request(self, request: Any) -> Coroutine[Any, Any, Any]:
        """:meth:`handle_request` for async clients: the call's coroutine, to await.

        A plain method returning the coroutine of the call (not a coroutine
        wrapping it): one frame less on every async request.
        """
        stack = BY_REQUEST.get(request.__class__) or stack_of(request)
        found = self._async_senders.get(stack)
        started = None
        if found is None:  # the first request of this side: its inner transport is made now
            started = self.registry.clock()  # ... within the call's deadline, which starts here
            found = self._sender(stack, False)
        send, traced = found
        if self._route_hosts and (route := self._route_hosts.get(request.url.host)) is not None:
            return RouteCall(self, stack, request, route, traced, started).run_async(send)
        return Call(self, stack, request, traced, started).run_async(send, self._async_sleep)

    async def aclose(self) -> None:
        """Close the async inner transports (the defaults made, or the one given); see :meth:`close`."""
        end_abandoned()
        for (_, sync), inner in list(self._inner.items()):
            if not sync and hasattr(inner, "aclose"):
                await inner.aclose()
        if self._given is not None and not self._inner and hasattr(self._given, "aclose"):
            await self._given.aclose()

    # -- the inner transports ----------------------------------------------------

    def _sender(self, stack: Stack, sync: bool) -> tuple[Any, bool]:
        """The send function for ``stack``'s requests on one side, and whether its reuse is traced."""
        senders = self._sync_senders if sync else self._async_senders
        with self._lock:
            found = senders.get(stack)
            if found is not None:
                return found
            inner = self._inner_for(stack, sync)
            method = "handle_request" if sync else "handle_async_request"
            send = getattr(inner, method, None)
            if not callable(send):
                other = "httpx2.AsyncClient / httpx.AsyncClient" if sync else "httpx2.Client / httpx.Client"
                raise TypeError(f"{inner!r} cannot serve this client: use it with {other}")
            found = senders[stack] = (send, traceable(inner))
            return found

    def _inner_for(self, stack: Stack, sync: bool) -> Any:
        given = self._given
        if given is None:
            inner = self._inner.get((stack, sync))
            if inner is None:
                inner = self._inner[(stack, sync)] = stack.default_transport(sync=sync)
            return inner
        given_stack = self._given_stack
        if given_stack is not None and given_stack is not stack:
            raise TypeError(
                f"ResilientTransport(transport={given!r}) serves {given_stack.name} clients, but this "
                f"request came from a {stack.name} client: give it a {stack.name} transport "
                f"(one ResilientTransport per stack), or none for each stack's default"
            )
        return given

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


__all__ = ["BUDGETS", "STACKS", "ResilientTransport"]
