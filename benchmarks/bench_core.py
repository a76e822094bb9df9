"""Core overhead, each beside its baseline in the same run.

Run with ``make bench``; ratios go to docs/benchmarks.md.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pybreaker
import pytest
from pytest_benchmark.fixture import BenchmarkFixture

from resilience import ProviderRegistry
from resilience._core.window import SUCCESS, TimeWindow

LOOPS = 1000


def _noop() -> None:
    pass


def _loop(fn: Callable[[], None]) -> Callable[[], None]:
    def run() -> None:
        for _ in range(LOOPS):
            fn()

    return run


@pytest.mark.benchmark(group="guard (1000 calls)")
def test_guard_sync(benchmark: BenchmarkFixture) -> None:
    """with registry.guard(...) around a no-op, closed breaker."""
    registry = ProviderRegistry()
    registry.register("p")
    guard = registry.guard

    def call() -> None:
        with guard("p"):
            pass

    benchmark(_loop(call))
    assert registry.get("p").snapshot().requests_total["success"] > 0


@pytest.mark.benchmark(group="guard (1000 calls)")
def test_guard_sync_with_model(benchmark: BenchmarkFixture) -> None:
    """with registry.guard(provider, model) around a no-op."""
    registry = ProviderRegistry()
    registry.register("p")
    guard = registry.guard

    def call() -> None:
        with guard("p", "gpt-4o"):
            pass

    benchmark(_loop(call))


@pytest.mark.benchmark(group="guard (1000 calls)")
def test_pybreaker_call(benchmark: BenchmarkFixture) -> None:
    """Baseline: pybreaker.CircuitBreaker.call(noop)."""
    breaker = pybreaker.CircuitBreaker()
    benchmark(_loop(lambda: breaker.call(_noop)))


@pytest.mark.benchmark(group="guard (1000 calls)")
def test_bare_call(benchmark: BenchmarkFixture) -> None:
    """Baseline: the bare call."""
    benchmark(_loop(_noop))


@pytest.mark.benchmark(group="async guard (1000 calls)")
def test_guard_async(benchmark: BenchmarkFixture) -> None:
    """async with registry.guard(...) around a no-op coroutine body."""
    registry = ProviderRegistry()
    registry.register("p")
    guard = registry.guard
    loop = asyncio.new_event_loop()

    async def calls() -> None:
        for _ in range(LOOPS):
            async with guard("p"):
                pass

    benchmark(lambda: loop.run_until_complete(calls()))
    loop.close()


@pytest.mark.benchmark(group="async guard (1000 calls)")
def test_async_bare(benchmark: BenchmarkFixture) -> None:
    """Baseline: the same loop of coroutines without a guard."""
    loop = asyncio.new_event_loop()

    async def body() -> None:
        pass

    async def calls() -> None:
        for _ in range(LOOPS):
            await body()

    benchmark(lambda: loop.run_until_complete(calls()))
    loop.close()


@pytest.mark.benchmark(group="window record (1000 records)")
def test_window_record(benchmark: BenchmarkFixture) -> None:
    """TimeWindow.record with a latency, the locked path's core."""
    window = TimeWindow(60.0)
    t = [0.0]

    def run() -> None:
        now = t[0]
        for _ in range(LOOPS):
            now += 0.001
            window.record(now, SUCCESS, 0.05)
        t[0] = now

    benchmark(run)


def _hundred_by_ten() -> tuple[ProviderRegistry, Callable[[], None]]:
    """100 providers with 10 models each, and a function recording one success per model."""
    registry = ProviderRegistry(max_providers=200, max_models=20)
    providers = [registry.register(f"p{i}") for i in range(100)]
    models = [[p.model_window(f"m{j}") for j in range(10)] for p in providers]

    def touch() -> None:
        for provider, windows in zip(providers, models, strict=True):
            for window in windows:
                provider.record(provider.admit(), "success", 0.05, model=window)

    touch()
    return registry, touch


@pytest.mark.benchmark(group="snapshot 100 providers x 10 models")
def test_snapshot_100x10(benchmark: BenchmarkFixture) -> None:
    """registry.snapshot() of 100 x 10 right after every window changed (the records untimed)."""
    registry, touch = _hundred_by_ten()
    benchmark.pedantic(  # type: ignore[no-untyped-call]  # pytest-benchmark's pedantic is unannotated
        registry.snapshot, setup=touch, rounds=300, iterations=1, warmup_rounds=5
    )
    assert len(registry.snapshot().providers) == 100


@pytest.mark.benchmark(group="snapshot 100 providers x 10 models")
def test_snapshot_touch_only(benchmark: BenchmarkFixture) -> None:
    """The 1,000 record() calls that precede test_snapshot_100x10's snapshots, for scale."""
    _, touch = _hundred_by_ten()
    benchmark(touch)


@pytest.mark.benchmark(group="snapshot 100 providers x 10 models")
def test_snapshot_unchanged(benchmark: BenchmarkFixture) -> None:
    """registry.snapshot() of 100 x 10 when nothing changed since the last one (cached windows)."""
    registry, _ = _hundred_by_ten()
    benchmark(registry.snapshot)
