"""redis-py instrumentation: ``instrument(client)`` counts and times every command.

::

    import redis, resilience.redis
    cache = resilience.redis.instrument(redis.Redis(), registry=registry, breaker=True)

Every command of a ``redis.Redis`` or ``redis.asyncio.Redis`` client feeds

* ``redis_operations_total{operation,status}``, a counter; ``status`` is
  ``success``, ``error`` (the command raised), ``rejected`` (the ``redis``
  breaker was open; nothing was sent) or ``cancelled``;
* ``redis_operation_duration_seconds{operation}``, a histogram of the commands
  that reached the server (successes and errors).

``operation`` is the command name in lower case (``get``, ``set``, ``hset``
...), one of :data:`OPERATIONS`; any other command is ``other``, so the label
stays bounded. A pipeline's ``execute()`` is one operation named
``pipeline`` (one round trip, one duration, one breaker call), transactions
included; the commands queued in it are not counted one by one. Commands a
pipeline runs at once (``WATCH`` and the reads after it) count as themselves.
Pub/sub connections are not instrumented.

The client is instrumented in place: ``execute_command`` and ``pipeline`` are
wrapped on the instance, never on the class. The two metrics are plain
``prometheus_client`` metrics, created once per Prometheus registry and shared
by every client instrumented into it. redis-py is the ``redis`` extra
(``pip install 'resilience[redis]'``); it is imported when ``instrument`` runs.
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram

from resilience._core.clock import perf_counter
from resilience._core.config import Outcome, Policy
from resilience._core.errors import CircuitOpenError, ConfigError
from resilience._core.registry import ProviderRegistry

if TYPE_CHECKING:
    from resilience._core.guard import Guard

__all__ = ["BUCKETS", "OPERATIONS", "PROVIDER", "classify", "instrument"]

log = logging.getLogger("resilience")

T = TypeVar("T")
ClientT = TypeVar("ClientT")

PROVIDER = "redis"
"""The name of the provider whose breaker guards the commands with ``breaker=True``."""

BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
"""``le`` bounds of ``redis_operation_duration_seconds``, seconds."""

OPERATIONS: frozenset[str] = frozenset(
    (
        "append", "bitcount", "blmove", "blpop", "brpop", "bzpopmax", "bzpopmin", "client", "config",
        "copy", "dbsize", "decr", "decrby", "del", "discard", "echo", "eval", "evalsha", "exec",
        "exists", "expire", "expireat", "flushall", "flushdb", "geoadd", "geosearch", "get", "getbit",
        "getdel", "getex", "getrange", "getset", "hdel", "hexists", "hget", "hgetall", "hincrby",
        "hincrbyfloat", "hkeys", "hlen", "hmget", "hmset", "hscan", "hset", "hsetnx", "hvals", "incr",
        "incrby", "incrbyfloat", "info", "keys", "lindex", "linsert", "llen", "lmove", "lpop", "lpos",
        "lpush", "lrange", "lrem", "lset", "ltrim", "mget", "mset", "msetnx", "multi", "persist",
        "pexpire", "pexpireat", "pfadd", "pfcount", "pfmerge", "ping", "pipeline", "psetex", "pttl",
        "publish", "randomkey", "rename", "rpop", "rpoplpush", "rpush", "sadd", "scan", "scard",
        "script", "sdiff", "select", "set", "setbit", "setex", "setnx", "setrange", "sinter",
        "sismember", "smembers", "smismember", "spop", "srandmember", "srem", "sscan", "strlen",
        "sunion", "time", "ttl", "type", "unlink", "unwatch", "watch", "xack", "xadd", "xdel", "xgroup",
        "xlen", "xrange", "xread", "xreadgroup", "xrevrange", "xtrim", "zadd", "zcard", "zcount",
        "zincrby", "zpopmax", "zpopmin", "zrange", "zrangebyscore", "zrank", "zrem", "zremrangebyrank",
        "zremrangebyscore", "zrevrange", "zrevrangebyscore", "zrevrank", "zscan", "zscore"
    )
)
"""Command names kept as ``operation`` label values; the rest are ``other``."""


class _Metrics:
    """The two redis metrics of one Prometheus registry, with label children cached."""

    def __init__(self, prometheus_registry: CollectorRegistry) -> None:
        self.operations = Counter(
            "redis_operations", "Redis commands by operation and status.", ["operation", "status"],
            registry=prometheus_registry,
        )
        self.duration = Histogram(
            "redis_operation_duration_seconds", "Duration of Redis commands that reached the server.",
            ["operation"], registry=prometheus_registry, buckets=BUCKETS,
        )
        self._children: dict[tuple[str, str], tuple[Any, Any]] = {}

    def observe(self, operation: str, status: str, duration: float | None) -> None:
        children = self._children.get((operation, status))
        if children is None:
            children = (self.operations.labels(operation, status), self.duration.labels(operation))
            self._children[(operation, status)] = children
        children[0].inc()
        if duration is not None:
            children[1].observe(duration)


_METRICS_LOCK = threading.Lock()
_METRICS: weakref.WeakKeyDictionary[CollectorRegistry, _Metrics] = weakref.WeakKeyDictionary()


def _metrics_for(prometheus_registry: CollectorRegistry) -> _Metrics:
    with _METRICS_LOCK:
        metrics = _METRICS.get(prometheus_registry)
        if metrics is None:
            try:
                metrics = _METRICS[prometheus_registry] = _Metrics(prometheus_registry)
            except ValueError as exc:
                raise ConfigError(
                    f"cannot register the redis metrics: {exc} (registered there by something else)"
                ) from exc
        return metrics


def classify(exc: BaseException) -> Outcome | None:
    """The outcome of a redis-py exception for the ``redis`` breaker.

    Connection errors, timeouts and a server that is loading, out of memory,
    read-only or down are ``failure``; other Redis errors (a wrong type, a bad
    script, a watched key that changed) mean the server answered: ``client_error``.
    Give it as ``Policy(exception_outcome=resilience.redis.classify)`` when you
    register the ``redis`` provider yourself.
    """
    from redis import exceptions as rx

    down = (
        rx.ConnectionError, rx.TimeoutError, rx.OutOfMemoryError, rx.ReadOnlyError,
        rx.ClusterDownError, rx.TryAgainError,
    )
    if isinstance(exc, down):
        return "failure"
    if isinstance(exc, rx.RedisError):
        return "client_error"
    return None


class _Recorder:
    """Runs one command through the breaker (if any) and records it."""

    def __init__(self, metrics: _Metrics, registry: ProviderRegistry | None, breaker: bool) -> None:
        self.metrics = metrics
        self.registry = registry
        self.guard: Callable[[], Guard] | None = None
        if breaker and registry is not None:
            _redis_provider(registry)
            self.guard = lambda: registry.guard(PROVIDER)

    def run(self, operation: str, call: Callable[[], T]) -> T:
        start, status = perf_counter(), "cancelled"
        try:
            if self.guard is None:
                result = call()
            else:
                with self.guard():
                    result = call()
            status = "success"
            return result
        except CircuitOpenError:
            status = "rejected"
            raise
        except Exception:
            status = "error"
            raise
        finally:
            self._observe(operation, status, start)

    async def arun(self, operation: str, call: Callable[[], Awaitable[T]]) -> T:
        start, status = perf_counter(), "cancelled"
        try:
            if self.guard is None:
                result = await call()
            else:
                async with self.guard():
                    result = await call()
            status = "success"
            return result
        except CircuitOpenError:
            status = "rejected"
            raise
        except Exception:
            status = "error"
            raise
        finally:
            self._observe(operation, status, start)

    def _observe(self, operation: str, status: str, start: float) -> None:
        duration = perf_counter() - start if status in ("success", "error") else None
        try:
            self.metrics.observe(operation, status, duration)
        except Exception:  # instrumentation never breaks a command
            log.exception("resilience.redis: recording %s/%s failed", operation, status)
            if self.registry is not None and PROVIDER in self.registry:
                self.registry.get(PROVIDER).count_error("redis_metrics")


def _redis_provider(registry: ProviderRegistry) -> None:
    if PROVIDER in registry:
        return
    try:
        registry.register(PROVIDER, policy=Policy(exception_outcome=classify))
    except ConfigError:  # registered meanwhile by another thread
        if PROVIDER not in registry:
            raise


def operation_of(args: tuple[Any, ...]) -> str:
    """The ``operation`` label of a command's arguments: its lower-case name or ``other``."""
    name = args[0] if args else ""
    if isinstance(name, bytes):
        name = name.decode("ascii", "replace")
    operation = str(name).split(" ", 1)[0].lower()
    return operation if operation in OPERATIONS else "other"


def instrument(
    client: ClientT,
    *,
    registry: ProviderRegistry | None = None,
    breaker: bool = False,
    prometheus_registry: CollectorRegistry | None = None,
) -> ClientT:
    """Instrument a ``redis.Redis`` or ``redis.asyncio.Redis`` client in place and return it.

    Args:
        client: the client; its pipelines are instrumented too.
        registry: the :class:`resilience.ProviderRegistry` holding the ``redis``
            provider (registered with :func:`classify` if missing); needed for ``breaker``.
        breaker: run every command through the ``redis`` breaker, so a dead cache
            fails fast with :class:`resilience.CircuitOpenError`.
        prometheus_registry: where the two metrics live (``prometheus_client.REGISTRY``).

    Raises:
        ConfigError: not a redis-py client, already instrumented, ``breaker``
            without ``registry``, or the metric names taken by something else.
    """
    redis_sync, redis_async = _client_classes()
    if not isinstance(client, redis_sync | redis_async) or hasattr(client, "command_stack"):
        raise ConfigError(f"client must be a redis.Redis or redis.asyncio.Redis client, got {client!r}")
    if registry is not None and not isinstance(registry, ProviderRegistry):
        raise ConfigError(f"registry must be a ProviderRegistry, got {registry!r}")
    if not isinstance(breaker, bool) or (breaker and registry is None):
        raise ConfigError(
            f"breaker=True needs registry=, the ProviderRegistry of the breaker, got {breaker!r}"
        )
    if getattr(client, "_resilience_instrumented", False):
        raise ConfigError(f"{client!r} is already instrumented")
    metrics = _metrics_for(REGISTRY if prometheus_registry is None else prometheus_registry)
    recorder = _Recorder(metrics, registry, breaker)
    is_async = isinstance(client, redis_async)
    wrap = _wrap_async if is_async else _wrap_sync
    original_pipeline = client.pipeline

    def pipeline(*args: Any, **kwargs: Any) -> Any:
        pipe = original_pipeline(*args, **kwargs)
        setattr(pipe, "execute", wrap(recorder, pipe.execute, "pipeline"))  # noqa: B010  # an instance method
        setattr(pipe, "immediate_execute_command", wrap(recorder, pipe.immediate_execute_command, None))  # noqa: B010
        return pipe

    setattr(client, "execute_command", wrap(recorder, client.execute_command, None))  # noqa: B010  # instance
    setattr(client, "pipeline", pipeline)  # noqa: B010  # on the instance, never the class
    setattr(client, "_resilience_instrumented", True)  # noqa: B010
    return client


def _client_classes() -> tuple[type[Any], type[Any]]:
    try:
        import redis
        import redis.asyncio
    except ImportError as exc:  # pragma: no cover - the extra is installed in the test environment
        raise ImportError(
            "resilience.redis needs redis-py: pip install 'resilience[redis]'"
        ) from exc
    return redis.Redis, redis.asyncio.Redis


def _wrap_sync(recorder: _Recorder, method: Callable[..., Any], operation: str | None) -> Callable[..., Any]:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        return recorder.run(operation or operation_of(args), lambda: method(*args, **kwargs))

    return wrapper


def _wrap_async(recorder: _Recorder, method: Callable[..., Any], operation: str | None) -> Callable[..., Any]:
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        return await recorder.arun(operation or operation_of(args), lambda: method(*args, **kwargs))

    return wrapper
