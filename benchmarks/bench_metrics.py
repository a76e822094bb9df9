"""Scrape cost: ``ResilienceCollector.collect()`` beside a bare ``Gauge`` in the same run.

Run with ``make bench`` (pytest-benchmark), or on its own for the table that
goes to docs/benchmarks.md::

    .venv/bin/python benchmarks/bench_metrics.py

Goal: ``collect()`` for 100 providers in at most 2 ms.
"""

from __future__ import annotations

import timeit
from collections.abc import Callable, Iterable

import pytest
from prometheus_client import CollectorRegistry, Gauge
from prometheus_client.metrics_core import Metric
from pytest_benchmark.fixture import BenchmarkFixture

from resilience import ProviderRegistry
from resilience._export.metrics import ResilienceCollector

PROVIDERS = 100
MODELS = 10


def _registry(models: int) -> ProviderRegistry:
    """100 providers with traffic in their windows (and ``models`` models each), a retry and a trip."""
    registry = ProviderRegistry(max_providers=PROVIDERS + 1, max_models=max(models, 1))
    for i in range(PROVIDERS):
        provider = registry.register(f"provider-{i:03d}")
        for m in range(max(models, 1)):
            window = provider.model_window(f"model-{m}") if models else None
            for outcome, duration in (("success", 0.05), ("success", 0.4), ("failure", 2.0)):
                provider.record(provider.admit(window), outcome, duration, model=window, cost=0.001)
        provider.count_retry("status_503")
    return registry


def _collector(models: int) -> Callable[[], list[Metric]]:
    collector = ResilienceCollector(_registry(models), model_metrics=bool(models))
    return lambda: list(collector.collect())


def _bare_gauge() -> Callable[[], list[Metric]]:
    gauge = Gauge("bare", "100 label sets", ["provider"], registry=CollectorRegistry())
    for i in range(PROVIDERS):
        gauge.labels(f"provider-{i:03d}").set(i)
    return lambda: list(gauge.collect())


@pytest.mark.benchmark(group="collect (100 providers)")
def test_collect_100_providers(benchmark: BenchmarkFixture) -> None:
    """collect() over 100 providers: about 35 series each."""
    benchmark(_collector(0))


@pytest.mark.benchmark(group="collect (100 providers)")
def test_collect_100_providers_10_models(benchmark: BenchmarkFixture) -> None:
    """collect() with model_metrics over 100 providers x 10 models."""
    benchmark(_collector(MODELS))


@pytest.mark.benchmark(group="collect (100 providers)")
def test_bare_gauge_100_label_sets(benchmark: BenchmarkFixture) -> None:
    """Baseline: a prometheus_client Gauge with 100 label sets."""
    benchmark(_bare_gauge())


def _best_ms(fn: Callable[[], object], number: int = 50, repeat: int = 7) -> float:
    return min(timeit.repeat(fn, number=number, repeat=repeat)) / number * 1e3


def _samples(fn: Callable[[], Iterable[Metric]]) -> int:
    return sum(len(family.samples) for family in fn())


def main() -> None:
    """Print the table for docs/benchmarks.md (best of 7 runs of 50 scrapes each)."""
    cases = [
        ("bare `Gauge`, 100 label sets", _bare_gauge()),
        ("`collect()`, 100 providers", _collector(0)),
        ("`collect()`, 100 providers × 10 models, `model_metrics=True`", _collector(MODELS)),
    ]
    bare = _best_ms(cases[0][1])
    print("| scrape | samples | ms | ratio to the bare Gauge | µs per sample |\n|---|---:|---:|---:|---:|")
    for name, fn in cases:
        ms, samples = _best_ms(fn), _samples(fn)
        print(f"| {name} | {samples} | {ms:.2f} | {ms / bare:.1f}× | {ms * 1e3 / samples:.2f} |")


if __name__ == "__main__":
    main()
