"""resilience.redis against a real redis-server: exact counts, pipelines, a dying cache, the breaker."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import pytest
import redis
import redis.asyncio
from prometheus_client import REGISTRY, CollectorRegistry, Counter
from redis.backoff import NoBackoff
from redis.retry import Retry
from redis_server import RedisServer, running_redis_server

import resilience
import resilience.redis as rredis
from resilience.testing import FakeClock

pytestmark = [pytest.mark.redis, pytest.mark.integration]

OPS = "redis_operations_total"
DURATION = "redis_operation_duration_seconds"


@pytest.fixture
def server() -> Iterator[RedisServer]:
    """A fresh redis-server on a free port of 127.0.0.1."""
    with running_redis_server() as server:
        yield server


@pytest.fixture
def prom() -> CollectorRegistry:
    """A Prometheus registry of the test's own."""
    return CollectorRegistry()


def _sync(server: RedisServer) -> Any:
    """A client of ``server`` (Any: redis-py types every reply as a union of all replies)."""
    return redis.Redis(port=server.port, retry=Retry(NoBackoff(), 0), socket_timeout=5)


def _async(server: RedisServer) -> Any:
    """:func:`_sync` for asyncio."""
    return redis.asyncio.Redis(port=server.port, retry=redis.asyncio.retry.Retry(NoBackoff(), 0),
                               socket_timeout=5)


def _ops(prom: CollectorRegistry, operation: str, status: str = "success") -> float | None:
    return prom.get_sample_value(OPS, {"operation": operation, "status": status})


def _timed(prom: CollectorRegistry, operation: str) -> float | None:
    return prom.get_sample_value(f"{DURATION}_count", {"operation": operation})


def _registry(clock: FakeClock) -> resilience.ProviderRegistry:
    policy = resilience.Policy(
        breaker=resilience.BreakerPolicy(failure_rate_threshold=0.5, minimum_calls=4, open_seconds=30.0)
    )
    return resilience.ProviderRegistry(policy, clock=clock)


def test_sync_commands_are_counted_exactly(server: RedisServer, prom: CollectorRegistry) -> None:
    """Every command counts once under its lower-case name, with one duration observation."""
    client = rredis.instrument(_sync(server), prometheus_registry=prom)
    assert client.set("k", "1") is True
    assert client.get("k") == b"1"
    assert client.get("missing") is None
    assert client.incr("k") == 2
    client.hset("h", mapping={"a": "1", "b": "2"})
    assert client.hgetall("h") == {b"a": b"1", b"b": b"2"}
    assert client.execute_command("OBJECT", "ENCODING", "k") == b"int"  # not in OPERATIONS
    expected = {"set": 1, "get": 2, "incrby": 1, "hset": 1, "hgetall": 1, "other": 1}  # incr sends INCRBY
    for operation, count in expected.items():
        assert _ops(prom, operation) == count
        assert _timed(prom, operation) == count
    assert _ops(prom, "get", "error") is None


def test_a_command_error_is_counted_as_error(server: RedisServer, prom: CollectorRegistry) -> None:
    """A command the server refuses (WRONGTYPE) is status=error and still timed."""
    client = rredis.instrument(_sync(server), prometheus_registry=prom)
    client.set("s", "text")
    with pytest.raises(redis.ResponseError):
        client.lpush("s", "x")
    assert _ops(prom, "lpush", "error") == 1
    assert _ops(prom, "lpush") is None
    assert _timed(prom, "lpush") == 1


@pytest.mark.anyio
async def test_async_commands_are_counted_exactly(server: RedisServer, prom: CollectorRegistry) -> None:
    """The asyncio client is counted the same way."""
    client = rredis.instrument(_async(server), prometheus_registry=prom)
    try:
        await client.set("k", "v")
        for _ in range(3):
            assert await client.get("k") == b"v"
        assert await client.delete("k") == 1
        with pytest.raises(redis.ResponseError):
            await client.execute_command("NOSUCHCOMMAND")
    finally:
        await client.aclose()
    assert (_ops(prom, "set"), _ops(prom, "get"), _ops(prom, "del")) == (1, 3, 1)
    assert _ops(prom, "other", "error") == 1
    assert _timed(prom, "get") == 3


def test_a_pipeline_is_one_operation(server: RedisServer, prom: CollectorRegistry) -> None:
    """pipeline().execute() counts once as 'pipeline'; its queued commands are not counted."""
    client = rredis.instrument(_sync(server), prometheus_registry=prom)
    with client.pipeline(transaction=False) as pipe:
        pipe.set("a", "1").incr("a").get("a")
        assert pipe.execute() == [True, 2, b"2"]
    with client.pipeline() as pipe:  # MULTI/EXEC
        pipe.set("b", "1").get("b")
        assert pipe.execute() == [True, b"1"]
    assert _ops(prom, "pipeline") == 2
    assert _timed(prom, "pipeline") == 2
    assert _ops(prom, "set") is None and _ops(prom, "get") is None


def test_watched_transaction_counts_the_commands_sent_at_once(
    server: RedisServer, prom: CollectorRegistry
) -> None:
    """client.transaction(): WATCH and the read after it count themselves, EXEC as 'pipeline'."""
    client = rredis.instrument(_sync(server), prometheus_registry=prom)
    client.set("n", "5")

    def double(pipe: Any) -> None:
        value = int(pipe.get("n"))  # immediate: the key is watched
        pipe.multi()
        pipe.set("n", value * 2)

    assert client.transaction(double, "n") == [True]
    assert client.get("n") == b"10"
    assert (_ops(prom, "watch"), _ops(prom, "pipeline"), _ops(prom, "get"), _ops(prom, "set")) == (1, 1, 2, 1)


@pytest.mark.anyio
async def test_async_pipeline_is_one_operation(server: RedisServer, prom: CollectorRegistry) -> None:
    """The asyncio pipeline counts as one 'pipeline' operation too."""
    client = rredis.instrument(_async(server), prometheus_registry=prom)
    try:
        async with client.pipeline() as pipe:
            pipe.set("a", "1").get("a")
            assert await pipe.execute() == [True, b"1"]
    finally:
        await client.aclose()
    assert _ops(prom, "pipeline") == 1
    assert _ops(prom, "set") is None


def test_a_stopped_server_shows_as_errors(server: RedisServer, prom: CollectorRegistry) -> None:
    """Commands after the server dies are counted with status=error."""
    client = rredis.instrument(_sync(server), prometheus_registry=prom)
    assert client.ping() is True
    server.stop()
    for _ in range(3):
        with pytest.raises(redis.ConnectionError):
            client.get("k")
    with pytest.raises(redis.ConnectionError), client.pipeline() as pipe:
        pipe.get("k").execute()
    assert _ops(prom, "ping") == 1
    assert _ops(prom, "get", "error") == 3
    assert _ops(prom, "pipeline", "error") == 1


def test_the_breaker_opens_on_a_dead_cache(
    server: RedisServer, prom: CollectorRegistry, clock: FakeClock
) -> None:
    """With breaker=True a dead server opens the 'redis' breaker and commands fail fast."""
    registry = _registry(clock)
    registry.register_metrics(prom)
    client = rredis.instrument(_sync(server), registry=registry, breaker=True, prometheus_registry=prom)
    client.set("k", "v")
    client.get("k")
    with pytest.raises(redis.ResponseError):  # the server answered: not a failure
        client.lpush("k", "x")
    server.stop()
    for _ in range(3):  # 3 failures of 6 calls: trips at 50 %
        with pytest.raises(redis.ConnectionError):
            client.get("k")
    assert registry.get("redis").state == "open"
    with pytest.raises(resilience.CircuitOpenError) as caught:
        client.get("k")
    assert caught.value.provider == "redis"
    assert _ops(prom, "get", "error") == 3
    assert _ops(prom, "get", "rejected") == 1
    assert _timed(prom, "get") == 4  # rejections are not timed
    state = {"provider": "redis", "state": "open"}
    assert prom.get_sample_value("gatewayz_circuit_breaker_state", state) == 1.0
    assert prom.get_sample_value("provider_availability", {"provider": "redis"}) == 0.0
    outcome = "gatewayz_provider_requests_total"
    assert prom.get_sample_value(outcome, {"provider": "redis", "outcome": "client_error"}) == 1
    assert prom.get_sample_value(outcome, {"provider": "redis", "outcome": "failure"}) == 3


@pytest.mark.anyio
async def test_the_async_breaker_opens_on_a_dead_cache(
    server: RedisServer, prom: CollectorRegistry, clock: FakeClock
) -> None:
    """The asyncio client goes through the same 'redis' breaker."""
    registry = _registry(clock)
    client = rredis.instrument(_async(server), registry=registry, breaker=True, prometheus_registry=prom)
    try:
        await client.set("k", "v")
        server.stop()
        for _ in range(3):
            with pytest.raises(redis.ConnectionError):
                await client.get("k")
        assert registry.get("redis").state == "open"
        with pytest.raises(resilience.CircuitOpenError):
            async with client.pipeline() as pipe:
                await pipe.get("k").execute()
    finally:
        await client.aclose()
    assert _ops(prom, "pipeline", "rejected") == 1
    assert _ops(prom, "get", "error") == 3


def test_an_existing_redis_provider_is_used(
    server: RedisServer, prom: CollectorRegistry, clock: FakeClock
) -> None:
    """A 'redis' provider registered beforehand keeps its own policy."""
    registry = _registry(clock)
    own = registry.register("redis", policy=resilience.Policy(exception_outcome=rredis.classify))
    client = rredis.instrument(_sync(server), registry=registry, breaker=True, prometheus_registry=prom)
    client.ping()
    assert registry.get("redis") is own
    assert own.snapshot().window.successes == 1


def test_clients_share_the_metrics_of_one_prometheus_registry(
    server: RedisServer, prom: CollectorRegistry
) -> None:
    """Two clients instrumented into one Prometheus registry add up, without a clash."""
    first = rredis.instrument(_sync(server), prometheus_registry=prom)
    second = rredis.instrument(_sync(server), prometheus_registry=prom)
    first.ping()
    second.ping()
    assert _ops(prom, "ping") == 2


def test_default_prometheus_registry(server: RedisServer) -> None:
    """Without prometheus_registry= the metrics live in prometheus_client.REGISTRY."""
    before = REGISTRY.get_sample_value(OPS, {"operation": "echo", "status": "success"}) or 0
    rredis.instrument(_sync(server)).echo("hi")
    assert REGISTRY.get_sample_value(OPS, {"operation": "echo", "status": "success"}) == before + 1


def test_a_metrics_failure_never_breaks_a_command(
    server: RedisServer,
    prom: CollectorRegistry,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """If recording fails, the command still returns its result and the error is logged."""
    client = rredis.instrument(_sync(server), prometheus_registry=prom)

    def broken(*args: object) -> None:
        raise RuntimeError("metrics down")

    monkeypatch.setattr(rredis._Metrics, "observe", broken)
    with caplog.at_level(logging.ERROR, logger="resilience"):
        assert client.ping() is True
    assert "metrics down" in caplog.text


def test_bad_arguments_are_config_errors(server: RedisServer, prom: CollectorRegistry) -> None:
    """Not a client, a pipeline, breaker without registry, or twice: ConfigError."""
    with pytest.raises(resilience.ConfigError, match="client"):
        rredis.instrument(object(), prometheus_registry=prom)
    client = _sync(server)
    with pytest.raises(resilience.ConfigError, match="client"):
        rredis.instrument(client.pipeline(), prometheus_registry=prom)
    with pytest.raises(resilience.ConfigError, match="registry"):
        rredis.instrument(client, breaker=True, prometheus_registry=prom)
    rredis.instrument(client, prometheus_registry=prom)
    with pytest.raises(resilience.ConfigError, match="already instrumented"):
        rredis.instrument(client, prometheus_registry=prom)


def test_a_metric_name_taken_by_something_else_is_a_config_error(server: RedisServer) -> None:
    """Another 'redis_operations' metric in the Prometheus registry is reported clearly."""
    prom = CollectorRegistry()
    Counter("redis_operations", "someone else's", registry=prom)
    with pytest.raises(resilience.ConfigError, match="redis metrics"):
        rredis.instrument(_sync(server), prometheus_registry=prom)


@pytest.mark.parametrize(
    ("args", "operation"),
    [
        pytest.param(("GET", "k"), "get", id="upper"),
        pytest.param((b"hset", "h"), "hset", id="bytes"),
        pytest.param(("CLIENT SETNAME", "x"), "client", id="two-words"),
        pytest.param(("FT.SEARCH", "idx"), "other", id="module-command"),
        pytest.param(("evil\"} 1\n",), "other", id="hostile"),
        pytest.param((), "other", id="empty"),
    ],
)
def test_operation_labels_stay_bounded(args: tuple[object, ...], operation: str) -> None:
    """Only known command names become labels; anything else is 'other'."""
    assert rredis.operation_of(args) == operation


@pytest.mark.parametrize(
    ("exc", "outcome"),
    [
        pytest.param(redis.ConnectionError("refused"), "failure", id="connection"),
        pytest.param(redis.TimeoutError("slow"), "failure", id="timeout"),
        pytest.param(redis.exceptions.BusyLoadingError("loading"), "failure", id="loading"),
        pytest.param(redis.exceptions.ReadOnlyError("replica"), "failure", id="read-only"),
        pytest.param(redis.ResponseError("WRONGTYPE"), "client_error", id="wrongtype"),
        pytest.param(redis.WatchError("changed"), "client_error", id="watch"),
        pytest.param(ValueError("bug"), None, id="not-redis"),
    ],
)
def test_classify(exc: BaseException, outcome: str | None) -> None:
    """Server-down errors are failures for the breaker; answers from a live server are not."""
    assert rredis.classify(exc) == outcome
