"""Active probes: check a provider on a timer, apart from real traffic.

A probe is off by default (probes of paid models cost money). Give one to
:meth:`resilience.ProviderRegistry.register` and run every probe of a
registry while the app runs::

    registry.register("openrouter", hosts=["openrouter.ai"],
                      probe=resilience.HttpProbe("https://openrouter.ai/api/v1/models", interval=30))
    app = Starlette(routes=..., lifespan=resilience.probes(registry))

Probe results are kept in the probe (:meth:`HttpProbe.snapshot`, shown by
the dashboard under ``"probe"``), never in the provider's stats window, so
they cannot hide the error rate of real traffic. A successful probe moves an
``open`` breaker to ``half_open`` early; real trial calls then decide
whether it closes. A failed probe changes nothing.

Each provider has one task that waits ``interval`` seconds after a check has
finished before the next, so checks never overlap; leaving the context
cancels and awaits every task and closes the client.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Container, Mapping
from datetime import datetime
from types import TracebackType
from typing import TYPE_CHECKING, Any, cast

import httpx2

from resilience._core.clock import AsyncSleep, Clock, async_sleep, wall_now
from resilience._core.errors import ConfigError
from resilience._core.provider import Provider
from resilience._core.registry import ProviderRegistry
from resilience._core.snapshot import ProbeSnapshot
from resilience._http.stacks import stack_of_transport

if TYPE_CHECKING:
    from resilience._http.stacks import AnyAsyncClient, AnyAsyncTransport

log = logging.getLogger("resilience")


class HttpProbe:
    """An HTTP check of one provider, run by :func:`probes` every ``interval`` seconds.

    Args:
        url: what to request (a cheap endpoint: a health check or a model list).
        interval: seconds between the end of one check and the start of the next.
        timeout: seconds a check may take in all; longer is a failure.
        method: the HTTP method.
        expect_status: statuses that mean the provider is up.
        headers: request headers (an API key, ...); never shown on the dashboard.
        clock: times the check; the provider's (the registry's) clock by default.
    """

    def __init__(
        self,
        url: str,
        *,
        interval: float = 30.0,
        timeout: float = 5.0,
        method: str = "GET",
        expect_status: Container[int] = range(200, 400),
        headers: Mapping[str, str] | None = None,
        clock: Clock | None = None,
    ) -> None:
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise ConfigError(f"url must be an http:// or https:// URL, got {url!r}")
        for name, value in (("interval", interval), ("timeout", timeout)):
            if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
                raise ConfigError(f"{name} must be a number of seconds > 0, got {value!r}")
        if not isinstance(method, str) or not method.isalpha():
            raise ConfigError(f"method must be an HTTP method name, got {method!r}")
        self.url = url
        self.interval = float(interval)
        self.timeout = float(timeout)
        self.method = method.upper()
        self.expect_status = expect_status
        self.headers = dict(headers or {})
        self.clock = clock
        self._ok: bool | None = None
        self._status: int | None = None
        self._error: str | None = None
        self._latency: float | None = None
        self._checked_at: datetime | None = None
        self.consecutive_failures = self.successes = self.failures = self.early_half_opens = 0

    def __repr__(self) -> str:
        return f"<HttpProbe {self.method} every {self.interval:g}s>"

    async def check(self, provider: Provider, client: AnyAsyncClient) -> bool:
        """Run one check now and note its result; never raises (but lets cancellation through)."""
        clock = self.clock or provider.clock
        start = clock()
        status: int | None = None
        error: str | None = None
        try:
            async with asyncio.timeout(self.timeout):
                either: Any = client  # httpx2's or httpx's: the same calls
                request = either.build_request(
                    self.method, self.url, headers=self.headers, timeout=self.timeout
                )
                response = await either.send(request, stream=True)
                status = response.status_code
                await response.aclose()  # the body is not needed
        except Exception as exc:
            error = type(exc).__name__
        ok = error is None and status in self.expect_status
        self._note(ok, status, error, max(0.0, clock() - start))
        if ok and provider.probe_succeeded():
            self.early_half_opens += 1
            log.info("probe of %r succeeded: breaker half-open early", provider.name)
        return ok

    def _note(self, ok: bool, status: int | None, error: str | None, latency: float) -> None:
        self._ok, self._status, self._error, self._latency = ok, status, error, latency
        self._checked_at = wall_now()
        if ok:
            self.successes += 1
            self.consecutive_failures = 0
        else:
            self.failures += 1
            self.consecutive_failures += 1

    def snapshot(self) -> ProbeSnapshot:
        """The probe's results so far."""
        return ProbeSnapshot(
            ok=self._ok,
            status=self._status,
            error=self._error,
            latency=self._latency,
            consecutive_failures=self.consecutive_failures,
            successes=self.successes,
            failures=self.failures,
            early_half_opens=self.early_half_opens,
            checked_at=self._checked_at,
            interval=self.interval,
        )


class ProbeRunner:
    """Runs every probe of a registry while entered; build it with :func:`probes`."""

    def __init__(
        self,
        registry: ProviderRegistry,
        *,
        transport: AnyAsyncTransport | None = None,
        sleep: AsyncSleep = async_sleep,
    ) -> None:
        self.registry = registry
        self._transport = transport
        self._sleep = sleep
        self._tasks: list[asyncio.Task[None]] | None = None
        self._client: AnyAsyncClient | None = None

    @property
    def running(self) -> bool:
        """Whether the probes are running."""
        return self._tasks is not None

    async def __aenter__(self) -> ProbeRunner:
        if self._tasks is not None:
            raise RuntimeError("these probes are already running")
        stack = stack_of_transport(self._transport) if self._transport is not None else None
        module: Any = httpx2 if stack is None else stack.module  # a client of the transport's own stack
        self._client = client = module.AsyncClient(transport=self._transport)
        tasks: list[asyncio.Task[None]] = []
        self._tasks = tasks
        for name, probe in self.registry._probes.items():
            loop = self._loop(self.registry.get(name), cast(HttpProbe, probe), client, tasks)
            tasks.append(asyncio.create_task(loop, name=f"probe {name}"))
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        tasks, client = self._tasks or [], self._client
        self._tasks, self._client = None, None
        for task in tasks:  # a transport may swallow the cancel: each loop also checks it still runs
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if client is not None:
            await client.aclose()

    def __call__(self, app: Any) -> contextlib.AbstractAsyncContextManager[None]:
        """Starlette's and FastAPI's ``lifespan=``: run the probes while the app runs."""
        return self._lifespan()

    @contextlib.asynccontextmanager
    async def _lifespan(self) -> AsyncIterator[None]:
        async with self:
            yield

    async def _loop(
        self, provider: Provider, probe: HttpProbe, client: AnyAsyncClient, run: list[asyncio.Task[None]]
    ) -> None:
        while True:
            try:
                await probe.check(provider, client)
            except Exception:  # a probe must not die of a bug: log it and try again later
                log.exception("probe of %r failed", provider.name)
            if self._tasks is not run:  # stopped, though the check swallowed the cancel
                return
            await self._sleep(probe.interval)


def probes(
    registry: ProviderRegistry,
    *,
    transport: AnyAsyncTransport | None = None,
    sleep: AsyncSleep = async_sleep,
) -> ProbeRunner:
    """The probes of ``registry``, to enter with ``async with`` or pass as ``lifespan=``.

    Args:
        registry: whose probes to run (those given to ``register(..., probe=...)``).
        transport: the httpx transport the probes use (``httpx2.AsyncHTTPTransport`` by default).
        sleep: waits between checks; tests pass one they control.
    """
    return ProbeRunner(registry, transport=transport, sleep=sleep)
