"""Real concurrency: 16 threads and 1,000 asyncio tasks through one breaker."""

from __future__ import annotations

import asyncio
import threading

import pytest

from resilience import BreakerPolicy, CircuitOpenError, Policy, ProviderRegistry
from resilience.testing import FakeClock

THREADS = 16
PER_THREAD = 2_000


def test_sixteen_threads_count_exactly(clock: FakeClock) -> None:
    """Concurrent guarded calls (fast path and locked path) are all counted exactly."""
    registry = ProviderRegistry(Policy(breaker=BreakerPolicy(minimum_calls=10**9)), clock=clock)
    registry.register("p")
    barrier = threading.Barrier(THREADS)

    def work(seed: int) -> None:
        barrier.wait()
        for i in range(PER_THREAD):
            try:
                with registry.guard("p", model=f"m{i % 3}"):
                    if (i + seed) % 10 == 0:
                        raise ValueError
            except ValueError:
                pass
            if i % 500 == 0:
                clock.advance(0.7)  # cross bucket boundaries while others record

    threads = [threading.Thread(target=work, args=(n,)) for n in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    snap = registry.get("p").snapshot()
    total = THREADS * PER_THREAD
    assert snap.requests_total["success"] + snap.requests_total["failure"] == total
    assert snap.requests_total["failure"] == total // 10
    assert snap.window.calls == total  # all within the 60 s window
    assert sum(m.window.calls for m in snap.models) == total
    assert snap.duration_buckets[-1][1] == total


def test_threads_never_get_more_trials_than_allowed(clock: FakeClock) -> None:
    """16 threads racing for 3 half-open slots: exactly 3 admitted while none has ended."""
    registry = ProviderRegistry(
        Policy(
            breaker=BreakerPolicy(
                minimum_calls=1, open_seconds=5, half_open_max_calls=3, success_threshold=10
            )
        ),
        clock=clock,
    )
    provider = registry.register("p")
    provider.record(provider.admit(), "failure", 0.1)
    clock.advance(5)
    barrier = threading.Barrier(THREADS)
    admitted: list[int] = []
    rejected: list[float] = []

    def race() -> None:
        barrier.wait()
        try:
            admitted.append(provider.admit())
        except CircuitOpenError as exc:
            rejected.append(exc.retry_after)

    threads = [threading.Thread(target=race) for _ in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(admitted) == 3
    assert rejected == [1.0] * (THREADS - 3)


def test_threads_recycling_trial_slots_never_exceed_the_limit(clock: FakeClock) -> None:
    """Under churn (acquire, release, acquire) in-flight trials never pass half_open_max_calls."""
    registry = ProviderRegistry(
        Policy(
            breaker=BreakerPolicy(
                minimum_calls=1, open_seconds=5, half_open_max_calls=2, success_threshold=10**9
            )
        ),
        clock=clock,
    )
    provider = registry.register("p")
    provider.record(provider.admit(), "failure", 0.1)
    clock.advance(5)
    lock = threading.Lock()
    in_flight, peak, admitted = [0], [0], [0]

    def churn() -> None:
        for _ in range(500):
            try:
                permit = provider.admit()
            except CircuitOpenError:
                continue
            with lock:
                in_flight[0] += 1
                admitted[0] += 1
                peak[0] = max(peak[0], in_flight[0])
            with lock:
                in_flight[0] -= 1
            provider.record(permit, "success", 0.01)

    threads = [threading.Thread(target=churn) for _ in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert peak[0] <= 2
    assert admitted[0] >= 2
    assert provider.state == "half_open"


@pytest.mark.anyio
async def test_thousand_tasks_get_exact_trial_permits(clock: FakeClock) -> None:
    """1,000 coroutines racing in half-open: exactly half_open_max_calls get through."""
    registry = ProviderRegistry(
        Policy(
            breaker=BreakerPolicy(
                minimum_calls=1, open_seconds=5, half_open_max_calls=4, success_threshold=10**9
            )
        ),
        clock=clock,
    )
    provider = registry.register("p")
    provider.record(provider.admit(), "failure", 0.1)
    clock.advance(5)
    release = asyncio.Event()
    inside = 0

    async def trial() -> bool:
        nonlocal inside
        try:
            async with registry.guard("p"):
                inside += 1
                await release.wait()
        except CircuitOpenError:
            return False
        return True

    tasks = [asyncio.ensure_future(trial()) for _ in range(1000)]
    await asyncio.wait(tasks, timeout=None, return_when=asyncio.FIRST_COMPLETED)
    for _ in range(3):  # let every task run up to its admit() once
        await asyncio.sleep(0)
    assert sum(t.done() for t in tasks) == 996
    assert inside == 4
    release.set()
    results = await asyncio.gather(*tasks)
    assert sum(results) == 4
    snap = provider.snapshot()
    assert snap.window.rejected == 996
    assert snap.window.successes == 4


@pytest.mark.anyio
async def test_thousand_tasks_count_exactly(clock: FakeClock) -> None:
    """1,000 concurrent guarded coroutines on a closed breaker are each recorded once."""
    registry = ProviderRegistry(clock=clock)

    async def call(i: int) -> None:
        async with registry.guard("p"):
            await asyncio.sleep(0)
            if i % 4 == 0:
                clock.advance(0.3)

    await asyncio.gather(*(call(i) for i in range(1000)))
    assert registry.get("p").snapshot().requests_total["success"] == 1000
