"""Shared breaker state on Redis: several gateway replicas see one breaker per provider.

::

    shared = resilience.SharedBreakerState("redis://cache:6379/0", registry=registry)
    app = Starlette(routes=..., lifespan=shared)        # or: async with shared: ...

Each replica keeps deciding every call on its own breaker: the hot path
(admit, record) never waits on Redis. A background task syncs every
``refresh_seconds``, and at once when a local breaker changes state: it
publishes local transitions atomically (a Lua script, compare-and-set on a
per-provider ``version``), adopts newer transitions of other replicas (an
``open`` until the same wall-clock instant, translated to the local clock),
and leases the half-open trial slots so that all replicas together run at
most ``half_open_max_calls`` trials. When Redis is unreachable every replica
runs on its local state alone, counts it and says so (:attr:`healthy`,
``shared_state_unavailable`` in each provider's errors, the dashboard JSON,
:meth:`SharedBreakerState.register_metrics`); when Redis returns it publishes
its local state again. See the "Shared state" guide for the trade-offs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
from collections.abc import AsyncIterator, Iterator
from datetime import datetime
from types import TracebackType
from typing import TYPE_CHECKING, Any

from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import REGISTRY, Collector, CollectorRegistry

from resilience._core.clock import Clock, perf_counter, wall_now, wall_time
from resilience._core.errors import ConfigError
from resilience._core.registry import ProviderRegistry
from resilience._export.shared_sync import SYNC_SCRIPT, Plan, ProviderSync

if TYPE_CHECKING:
    import redis.asyncio

__all__ = ["EXTENSION", "SharedBreakerState"]

log = logging.getLogger("resilience")

EXTENSION = "shared_state"
"""The key of the running :class:`SharedBreakerState` in ``registry.extensions``."""


def _seconds(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise ConfigError(f"{name} must be a number of seconds > 0, got {value!r}")
    return float(value)


class SharedBreakerState:
    """Share the breakers of ``registry`` with every replica using the same Redis and ``key_prefix``.

    Args:
        redis: a ``redis.asyncio.Redis`` client, or a ``redis://`` URL (a client
            is made, with ``timeout_seconds`` socket timeouts, and closed on stop).
        registry: whose providers to share; one shared state per registry.
        key_prefix: prefix of the Redis keys (``<prefix>breaker:{<provider>}``
            and ``<prefix>trials:{<provider>}``).
        refresh_seconds: how often every replica syncs; a trip elsewhere is
            seen within about this long (local transitions are sent at once).
        timeout_seconds: a sync taking longer counts as Redis unreachable.
        lease_seconds: how long a half-open trial lease outlives its last
            renewal (a replica that dies frees its slots this long after);
            ``max(1, 5 × refresh_seconds)`` by default.
        replica_id: this replica's name in Redis (host, pid and a random tag by default).
        wall_clock: epoch seconds, to translate open times between replicas.

    Raises:
        ConfigError: a bad argument, or a registry that already has one.
    """

    def __init__(
        self,
        redis: redis.asyncio.Redis | str,
        *,
        registry: ProviderRegistry,
        key_prefix: str = "resilience:",
        refresh_seconds: float = 0.25,
        timeout_seconds: float = 1.0,
        lease_seconds: float | None = None,
        replica_id: str | None = None,
        wall_clock: Clock = wall_time,
    ) -> None:
        if not isinstance(registry, ProviderRegistry):
            raise ConfigError(f"registry must be a ProviderRegistry, got {registry!r}")
        if registry.extensions.get(EXTENSION) is not None:
            raise ConfigError("this ProviderRegistry already has a SharedBreakerState")
        if not isinstance(key_prefix, str):
            raise ConfigError(f"key_prefix must be a string, got {key_prefix!r}")
        self.refresh_seconds = _seconds("refresh_seconds", refresh_seconds)
        self.timeout_seconds = _seconds("timeout_seconds", timeout_seconds)
        lease = max(1.0, 5 * self.refresh_seconds) if lease_seconds is None else lease_seconds
        self.lease_seconds = _seconds("lease_seconds", lease)
        if self.lease_seconds <= self.refresh_seconds:
            raise ConfigError(f"lease_seconds must exceed refresh_seconds, got {lease_seconds!r}")
        default_id = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        self.replica_id = (replica_id or default_id).replace("|", "/")
        self._client, self._owns_client = _client(redis, self.timeout_seconds)
        registry.extensions[EXTENSION] = self
        self.registry = registry
        self.key_prefix = key_prefix
        self.wall_clock = wall_clock
        self.healthy = False
        """Whether the last sync reached Redis (``False`` before the first)."""
        self.syncs = self.failures = 0
        self.last_error: str | None = None
        self.last_sync: datetime | None = None
        self.last_sync_seconds: float | None = None
        self._syncs: dict[str, ProviderSync] = {}
        self._sha: str | None = None
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._cycle_lock = asyncio.Lock()

    def __repr__(self) -> str:
        return f"<SharedBreakerState {self.replica_id!r} healthy={self.healthy}>"

    @property
    def running(self) -> bool:
        """Whether the background sync runs."""
        return self._task is not None

    # -- lifecycle ---------------------------------------------------------------

    async def start(self) -> None:
        """Sync once (never raises: an unreachable Redis means local state), then keep syncing."""
        if self._task is not None:
            raise RuntimeError("this SharedBreakerState is already running")
        self._loop, self._wake = asyncio.get_running_loop(), asyncio.Event()
        self._cycle_lock = asyncio.Lock()  # of this event loop
        await self.sync_once()
        self._task = asyncio.create_task(self._run(), name="resilience shared breaker state")

    async def stop(self) -> None:
        """Stop syncing; every breaker goes back to its own trial limit. The client is closed if owned."""
        task, self._task = self._task, None
        if task is not None:
            # A cancellation can be swallowed under the sync (3.11's ``asyncio.wait_for``, which
            # redis-py uses, returns its result when it finishes as the cancel comes): the loop
            # also ends at its next turn, seeing that it is no longer the running sync.
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        for sync in self._syncs.values():
            sync.detach()
        self._syncs.clear()
        self.healthy, self._loop = False, None
        if self._owns_client:
            close = getattr(self._client, "aclose", None) or self._client.close  # aclose: redis-py >= 5.0.1
            await close()

    async def __aenter__(self) -> SharedBreakerState:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    def __call__(self, app: Any) -> contextlib.AbstractAsyncContextManager[None]:
        """Starlette's and FastAPI's ``lifespan=``: share the breakers while the app runs."""
        return self._lifespan()

    @contextlib.asynccontextmanager
    async def _lifespan(self) -> AsyncIterator[None]:
        async with self:
            yield

    async def _run(self) -> None:
        wake, me = self._wake, asyncio.current_task()
        assert wake is not None
        while self._task is me:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.refresh_seconds):
                    await wake.wait()
            wake.clear()
            await self.sync_once()

    def _wake_up(self) -> None:
        loop, wake = self._loop, self._wake
        if loop is not None and wake is not None:
            with contextlib.suppress(RuntimeError):  # the loop has closed
                loop.call_soon_threadsafe(wake.set)

    # -- syncing -----------------------------------------------------------------

    async def sync_once(self) -> bool:
        """Sync every provider with Redis now; return whether Redis answered."""
        async with self._cycle_lock:
            start = perf_counter()
            try:
                async with asyncio.timeout(self.timeout_seconds):
                    await self._sync()
            except Exception as exc:  # unreachable, timed out, or a reply we cannot read
                self._unavailable(exc)
                return False
            self.last_sync_seconds = perf_counter() - start
            self._available()
            return True

    def _provider_syncs(self) -> Iterator[ProviderSync]:
        for provider in self.registry.providers():
            sync = self._syncs.get(provider.name)
            if sync is None or sync.provider is not provider:
                sync = self._syncs[provider.name] = ProviderSync(provider, self._wake_up)
            yield sync

    async def _sync(self) -> None:
        clock, wall = self.registry.clock, self.wall_clock
        now, wall_now = clock(), wall()
        plans = [sync.plan(now, wall_now) for sync in self._provider_syncs()]
        replies = await self._send(plans, wall_now, secrets.token_hex(8))
        for plan, reply in zip(plans, replies, strict=True):
            plan.sync.settle(plan, reply, clock, wall)

    async def _send(self, plans: list[Plan], wall_now: float, epoch: str) -> list[Any]:
        """Run the script for every plan in one round trip; ``epoch`` is for the hashes it creates."""
        from redis.exceptions import NoScriptError

        for _attempt in range(2):
            if self._sha is None:
                self._sha = _text(await self._client.script_load(SYNC_SCRIPT))
            pipe = self._client.pipeline(transaction=False)
            for plan in plans:
                keys, args = self._keys(plan.sync.provider.name), self._args(plan, wall_now)
                pipe.evalsha(self._sha, 2, *keys, *args, epoch)
            replies: list[Any] = await pipe.execute(raise_on_error=False)
            if not any(isinstance(reply, NoScriptError) for reply in replies):
                break
            self._sha = None  # Redis restarted and forgot the script: load it again
        for reply in replies:
            if isinstance(reply, Exception):
                raise reply
        return replies

    def _keys(self, name: str) -> tuple[str, str]:
        return f"{self.key_prefix}breaker:{{{name}}}", f"{self.key_prefix}trials:{{{name}}}"

    def _args(self, plan: Plan, wall_now: float) -> tuple[object, ...]:
        sync = plan.sync
        return (
            plan.kind, sync.seen_version, plan.state, repr(plan.open_until), self.replica_id,
            repr(wall_now), plan.want, sync.provider.policy.breaker.half_open_max_calls,
            repr(self.lease_seconds), sync.seen_epoch,
        )

    def _unavailable(self, exc: Exception) -> None:
        if self.healthy or self.failures == 0:
            log.warning("shared breaker state: Redis unreachable (%s: %s); running on local state",
                        type(exc).__name__, exc)
        self.healthy = False
        self.failures += 1
        self.last_error = f"{type(exc).__name__}: {exc}"[:200]
        for sync in self._syncs.values():
            sync.fall_back()

    def _available(self) -> None:
        if not self.healthy and self.failures:
            log.warning("shared breaker state: Redis reachable again; sharing resumed")
        self.healthy = True
        self.syncs += 1
        self.last_sync = wall_now()

    # -- reporting ---------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """What the dashboard shows under ``"shared_state"`` (JSON-ready)."""
        last = self.last_sync
        return {
            "backend": "redis",
            "healthy": self.healthy,
            "running": self.running,
            "replica": self.replica_id,
            "syncs": self.syncs,
            "failures": self.failures,
            "last_error": self.last_error,
            "last_sync": None if last is None else last.isoformat(timespec="milliseconds")[:23] + "Z",
            "refresh_seconds": self.refresh_seconds,
        }

    def register_metrics(
        self, prometheus_registry: CollectorRegistry | None = None, *, namespace: str = "gatewayz"
    ) -> Collector:
        """Export ``<namespace>_resilience_shared_state_up`` and ``..._failures_total``."""
        collector = _SharedStateCollector(self, namespace)
        (REGISTRY if prometheus_registry is None else prometheus_registry).register(collector)
        return collector


class _SharedStateCollector(Collector):
    def __init__(self, shared: SharedBreakerState, namespace: str) -> None:
        self.shared = shared
        self.prefix = f"{namespace}_" if namespace else ""

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily(
            f"{self.prefix}resilience_shared_state_up",
            "1 when the last sync of the shared breaker state reached Redis, else 0 (local state).",
            value=1.0 if self.shared.healthy else 0.0,
        )
        failures = CounterMetricFamily(
            f"{self.prefix}resilience_shared_state_failures",
            "Syncs of the shared breaker state that failed (Redis unreachable or too slow).",
            value=self.shared.failures,
        )
        return iter((up, failures))


def _client(target: object, timeout: float) -> tuple[Any, bool]:
    try:
        import redis.asyncio as aioredis
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff
    except ImportError as exc:  # pragma: no cover - the extra is installed in the test environment
        raise ImportError("SharedBreakerState needs redis-py: pip install 'resilience[redis]'") from exc
    if isinstance(target, str):
        client = aioredis.Redis.from_url(
            target, socket_timeout=timeout, socket_connect_timeout=timeout, retry=Retry(NoBackoff(), 0)
        )
        return client, True
    if not isinstance(target, aioredis.Redis):
        raise ConfigError(f"redis must be a redis.asyncio.Redis client or a redis:// URL, got {target!r}")
    return target, False


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
