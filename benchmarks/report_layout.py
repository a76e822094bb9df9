"""What docs/benchmarks.md shows: sections, readable names, baselines and the goals of issues 2, 3, 4, 6.

Kept apart from :mod:`report` (which renders) so a new benchmark needs a
line here and nothing else; a group no section names still appears, under
"Other benchmarks".
"""

from __future__ import annotations

from dataclasses import dataclass

PEERS = ("pybreaker", "circuitbreaker", "aiobreaker", "purgatory", "httpx-retries")
"""Peer libraries whose versions the page notes."""

GUARD, AGUARD = "peers: guard (1000 calls)", "peers: async guard (1000 calls)"
HALF_THREADS, HALF_TASKS = "peers: half-open, 10 threads", "peers: half-open, 10 coroutines"
GET, POST = "transport happy path (1000 requests)", "transport happy path, POST with a model (1000 requests)"
ASYNC_GET, THREADS = "transport async happy path (1000 requests)", "transport: 8 threads x 1 ms upstream"
INTERLEAVED = "transport happy path, interleaved with bare (1000 requests)"
CORE = ("guard (1000 calls)", "async guard (1000 calls)", "window record (1000 records)",
        "snapshot 100 providers x 10 models")
COLLECT = "collect (100 providers)"
BASELINES = ("pybreaker", "test_pybreaker_call", "bare", "test_bare_call", "test_async_bare",
             "test_bare_gauge_100_label_sets")
"""Baseline of a group: the first of these it has (none: no ratio column)."""
BARE = ("bare", "test_bare_call", "test_async_bare")
SHORT = {"test_pybreaker_call": "pybreaker", "test_bare_call": "bare", "test_async_bare": "bare",
         "test_bare_gauge_100_label_sets": "bare Gauge"}


@dataclass(frozen=True)
class Section:
    """A heading of the page, the groups under it, and how their tables read."""

    key: str
    title: str
    groups: tuple[str, ...]
    kind: str = "time"  # time | throughput | half-open | interleaved
    intro: str = ""


@dataclass(frozen=True)
class Goal:
    """A number an issue asked for: ``ours`` against ``other`` in ``group``, or ``ours`` alone (seconds)."""

    title: str
    group: str
    ours: str
    other: str | None
    target: float
    at_most: bool = True
    unit: str = "x"  # x: a ratio of minimums; s: a minimum (less other's), in seconds;
    # interleaved: ours' minimum over the bare minimum of the same rounds (extra_info["bare_min"])
    throughput: bool = False  # the inverse ratio (other / ours, or bare / ours): higher is better

    @property
    def target_text(self) -> str:
        """The target as the page shows it."""
        bound = "≤" if self.at_most else "≥"
        value = f"{self.target * 1000:g} ms" if self.unit == "s" else f"{self.target:g}×"
        return f"{bound} {value}"


SECTIONS = (
    Section("guard", "Guard overhead beside the peers", (GUARD, AGUARD), intro=(
        "A no-op call through each library's documented API, closed breaker, success path (1,000 calls "
        "a round; times per call). pybreaker has no asyncio API of its own (its `call_async` needs "
        "Tornado): its `calling()` context manager around the `await` stands in.")),
    Section("half-open", "Half-open: 10 concurrent callers", (HALF_THREADS, HALF_TASKS), "half-open", (
        "The breaker tripped and its open time is over, but the provider is still down: each call "
        "fails after 20 ms. Ten callers arrive at once (threads on a barrier, or coroutines in one "
        "`gather`). How many reach the failing provider, and how long do the others wait to be told? "
        "Ours admits `half_open_max_calls` (1 here) trial at a time. pybreaker also lets one through, "
        "but by holding its lock for the whole call: the nine others queue behind the trial before "
        "they are rejected. (No pybreaker row for coroutines: it has no asyncio API.)")),
    Section("transport", "Transport happy path", (GET, POST, ASYNC_GET), intro=(
        "1,000 requests a round through `httpx.Client` / `httpx.AsyncClient` over a `MockTransport` "
        "that answers 200 at once: the cost of the wrapper itself, with nothing to retry.")),
    Section("interleaved", "Transport happy path, interleaved with bare", (INTERLEAVED,), "interleaved", (
        "The same three cases, measured so that drift cannot tilt them: each round through "
        "`ResilientTransport` (timed by pytest-benchmark) runs right after a round through the bare "
        "`MockTransport` (timed alike, in the benchmark's setup), 25 rounds of each. The two benchmarks "
        "above run seconds apart, and on a shared machine their ratio moves by a few percent from run "
        "to run; here both minimums come from the same stretch of time. The goals use these ratios.")),
    Section("threads", "Throughput: 8 threads × 1 ms upstream", (THREADS,), "throughput", (
        "8 threads × 25 requests through one `httpx.Client` to a uvicorn upstream on 127.0.0.1 (its "
        "own process) that answers after 1 ms; times are per round of 200 requests. Each "
        "`ResilientTransport` round runs right after a bare round, timed alike: the goal is the ratio "
        "of the two minimums.")),
    Section("core", "Core", CORE, intro="The engine under everything (issue 2); times per operation."),
    Section("metrics", "Metrics: a scrape", (COLLECT,), intro=(
        "`ResilienceCollector.collect()` (one Prometheus scrape, before text encoding) beside a bare "
        "`prometheus_client.Gauge` with 100 label sets; times per scrape.")),
)

LABELS = {
    ("*", "resilience"): "**resilience**",
    (GUARD, "resilience"): '**resilience** `with registry.guard("p")`',
    (GUARD, "pybreaker"): "pybreaker `breaker.call(fn)`",
    (GUARD, "circuitbreaker"): "circuitbreaker `@breaker`",
    (GUARD, "aiobreaker"): "aiobreaker `breaker.call(fn)`",
    (GUARD, "purgatory"): 'purgatory `@factory("p")`',
    (AGUARD, "resilience"): '**resilience** `async with registry.guard("p")`',
    (AGUARD, "pybreaker"): "pybreaker `with breaker.calling(): await`",
    (AGUARD, "circuitbreaker"): "circuitbreaker `@breaker` on a coroutine",
    (AGUARD, "aiobreaker"): "aiobreaker `await breaker.call_async(fn)`",
    (AGUARD, "purgatory"): 'purgatory `@factory("p")` (async factory)',
    ("*", "bare"): "bare (no wrapper)",
    ("*", "pybreaker"): "pybreaker",
    ("*", "circuitbreaker"): "circuitbreaker",
    ("*", "aiobreaker"): "aiobreaker",
    ("*", "purgatory"): "purgatory",
    ("*", "httpx-retries"): "httpx-retries `RetryTransport`",
    (THREADS, "pybreaker"): "pybreaker `breaker.call` around each request",
    (GET, "resilience"): "**resilience** `ResilientTransport`",
    (POST, "resilience"): "**resilience** `ResilientTransport`",
    (ASYNC_GET, "resilience"): "**resilience** `ResilientTransport`",
    (THREADS, "resilience"): "**resilience** `ResilientTransport`",
    ("*", "test_guard_sync"): '**resilience** `with registry.guard("p")`',
    ("*", "test_guard_sync_with_model"): '**resilience** `with registry.guard("p", "gpt-4o")`',
    ("*", "test_pybreaker_call"): "`pybreaker.CircuitBreaker.call(noop)`",
    ("*", "test_bare_call"): "bare call",
    ("*", "test_guard_async"): '**resilience** `async with registry.guard("p")`',
    ("*", "test_async_bare"): "bare `await` of a no-op coroutine",
    ("*", "test_window_record"): "`TimeWindow.record(...)`",
    ("*", "test_snapshot_100x10"):
        "`registry.snapshot()` right after 1,000 `record()` calls (all windows changed; records untimed)",
    ("*", "test_snapshot_touch_only"): "the 1,000 `record()` calls alone",
    ("*", "test_snapshot_unchanged"): "`registry.snapshot()`, nothing changed since the last",
    ("*", "test_collect_100_providers"): "`collect()`, 100 providers",
    ("*", "test_collect_100_providers_10_models"):
        "`collect()`, 100 providers × 10 models, `model_metrics=True`",
    ("*", "test_bare_gauge_100_label_sets"): "bare `Gauge`, 100 label sets",
    (INTERLEAVED, "get"): "`client.get`, in-memory body",
    (INTERLEAVED, "post"): "`client.post(json=...)`, model read from the body, in-memory body",
    (INTERLEAVED, "async"): "`AsyncClient.post(json=...)`, in-memory body",
}
INTERLEAVED_ORDER = ("get", "post", "async")

GOALS = (
    Goal("guard vs pybreaker `breaker.call(noop)` (sync)", GUARD, "resilience", "pybreaker", 0.3),
    Goal("guard vs circuitbreaker `@breaker` (sync)", GUARD, "resilience", "circuitbreaker", 0.7),
    Goal("transport vs bare, `client.get` (interleaved, in memory)", INTERLEAVED, "get", None, 1.03,
         unit="interleaved"),
    Goal("transport vs bare, `client.post(json=...)`, model read from the body (interleaved, in memory)",
         INTERLEAVED, "post", None, 1.03, unit="interleaved"),
    Goal("transport vs bare, `AsyncClient` (interleaved, in memory)", INTERLEAVED, "async", None, 1.03,
         unit="interleaved"),
    Goal("8 threads × 1 ms (real upstream): throughput vs bare (interleaved)", THREADS, "resilience", None,
         0.97, at_most=False, unit="interleaved", throughput=True),
    Goal("`collect()`, 100 providers", COLLECT, "test_collect_100_providers", None, 0.002, unit="s"),
    Goal("`snapshot()`, 100 × 10, all windows changed", CORE[3],
         "test_snapshot_100x10", None, 0.002, unit="s"),
)
