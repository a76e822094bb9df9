"""Sliding windows of attempt outcomes: ``record()`` and ``snapshot()``, pure.

Two kinds, as in Resilience4j:

* :class:`TimeWindow` — ``buckets`` buckets over ``window_seconds``. Buckets
  advance lazily from the ``now`` the caller passes; running totals are
  subtracted when a bucket is evicted, so a decision is O(1) and memory is
  fixed whatever the call volume.
* :class:`CountWindow` — the last ``size`` calls in a ring.

A window is not thread-safe by itself: its owner (a provider) serialises
access. Windows never read the clock; the owner passes ``now``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import NamedTuple

from resilience._core import histogram as _histogram
from resilience._core.config import Outcome
from resilience._core.pending import Extras, Rich

SUCCESS, FAILURE, THROTTLED, CLIENT_ERROR, REJECTED = range(5)
SLOW, COSTED, UNKNOWN_COST, INPUT_TOKENS, OUTPUT_TOKENS = range(5, 10)
_FIELDS = 10
OUTCOME_INDEX: dict[str, int] = {
    "success": SUCCESS,
    "failure": FAILURE,
    "throttled": THROTTLED,
    "client_error": CLIENT_ERROR,
    "rejected": REJECTED,
}
_QUANTILES = (0.5, 0.95, 0.99)


class WindowSnapshot(NamedTuple):
    """What a window holds at one instant. Latencies are in seconds, ``None`` with no data.

    A named tuple: immutable and cheap to build, since a scrape builds one per
    provider and model.
    """

    successes: int = 0
    failures: int = 0
    throttled: int = 0
    client_errors: int = 0
    rejected: int = 0
    slow: int = 0
    p50: float | None = None
    p95: float | None = None
    p99: float | None = None
    cost_usd: float = 0.0
    costed: int = 0
    unknown_cost: int = 0
    input_tokens: int = 0
    output_tokens: int = 0

    @property
    def calls(self) -> int:
        """Attempts that reached the provider (rejections are not calls)."""
        return self.successes + self.failures + self.throttled + self.client_errors

    @property
    def error_rate(self) -> float:
        """(failure + throttled) / calls, 0 with no calls."""
        calls = self.calls
        return (self.failures + self.throttled) / calls if calls else 0.0


EMPTY = WindowSnapshot()


class _Bucket:
    __slots__ = ("cost", "counts", "hist", "id")

    def __init__(self, bucket_id: int) -> None:
        self.id = bucket_id
        self.counts = [0] * _FIELDS
        self.cost = 0.0
        self.hist: dict[int, int] = {}


class TimeWindow:
    """Buckets over a span of time; see the module docstring."""

    __slots__ = (
        "_buckets", "_cache", "_cache_version", "_cur", "_hi", "_hist", "_lo",
        "_n", "_totals", "_version", "_width", "latency", "pending", "rich", "ttft", "window_seconds",
    )

    def __init__(self, window_seconds: float, *, buckets: int = 60, latency: bool = True) -> None:
        if not window_seconds > 0 or buckets < 1:
            raise ValueError(f"window_seconds must be > 0, got {window_seconds!r}")
        self.window_seconds = float(window_seconds)
        self.latency = latency
        self._n = buckets
        self._width = self.window_seconds / buckets
        self._buckets: list[_Bucket | None] = [None] * buckets
        self._cur = -(2**62)
        self._totals = [0] * _FIELDS
        self._hist = [0] * _histogram.SIZE if latency else []
        self._lo = _histogram.SIZE
        self._hi = -1
        self._version = 0
        self._cache_version = -1
        self._cache: WindowSnapshot = EMPTY
        self.pending: list[float] = []
        """Durations of fast successes waiting to be folded (lock-free appends)."""
        self.ttft: TimeWindow | None = None
        """A model's time to first token (streamed SSE attempts), made by its owner on first use."""
        self.rich: list[Rich] = []
        """Fast successes with a time to headers, a cost or tokens, waiting likewise."""
        """Durations of fast successes appended lock-free by the owner, who folds them in
        (:meth:`record_successes`) under its lock; see :class:`resilience._core.provider.Provider`."""

    # -- writing -----------------------------------------------------------

    def _bucket(self, now: float) -> _Bucket | None:
        """The bucket for time ``now``; ``None`` when ``now`` has already left the window."""
        bucket_id = int(now // self._width)
        if bucket_id > self._cur:
            self._advance(bucket_id)
        elif bucket_id <= self._cur - self._n:
            return None
        slot = bucket_id % self._n
        bucket = self._buckets[slot]
        if bucket is None or bucket.id != bucket_id:
            bucket = self._buckets[slot] = _Bucket(bucket_id)
        return bucket

    def _advance(self, bucket_id: int) -> None:
        """Make ``bucket_id`` the newest: evict the buckets that leave the window (only those).

        The ids that leave are the ``bucket_id - cur`` oldest live ones, one
        slot each: a step of one bucket looks at one slot, not all of them.
        """
        n, buckets, cur = self._n, self._buckets, self._cur
        if bucket_id - cur >= n:  # the whole window leaves
            for bucket in buckets:
                if bucket is not None:
                    self._evict(bucket)
        else:
            for leaving in range(cur - n + 1, bucket_id - n + 1):
                bucket = buckets[leaving % n]
                if bucket is not None and bucket.id == leaving:
                    self._evict(bucket)
        self._cur = bucket_id

    def _evict(self, bucket: _Bucket) -> None:
        self._buckets[bucket.id % self._n] = None
        totals = self._totals
        for i, value in enumerate(bucket.counts):
            totals[i] -= value
        hist = self._hist
        for index, count in bucket.hist.items():
            hist[index] -= count
        if totals[SUCCESS] + totals[FAILURE] + totals[THROTTLED] + totals[CLIENT_ERROR] == 0:
            self._lo, self._hi = _histogram.SIZE, -1
        self._version += 1

    def record(
        self,
        now: float,
        outcome: int,
        duration: float | None = None,
        *,
        slow: bool = False,
        cost: float | None = None,
        cost_unknown: bool = False,
        input_tokens: int = 0,
        output_tokens: int = 0,
    ) -> None:
        """Record one attempt (``outcome`` is an index such as :data:`SUCCESS`)."""
        bucket = self._bucket(now)
        if bucket is None:
            return
        counts, totals = bucket.counts, self._totals
        counts[outcome] += 1
        totals[outcome] += 1
        if slow:
            counts[SLOW] += 1
            totals[SLOW] += 1
        if cost is not None:
            bucket.cost += cost
            counts[COSTED] += 1
            totals[COSTED] += 1
        if cost_unknown:
            counts[UNKNOWN_COST] += 1
            totals[UNKNOWN_COST] += 1
        if input_tokens or output_tokens:
            counts[INPUT_TOKENS] += input_tokens
            totals[INPUT_TOKENS] += input_tokens
            counts[OUTPUT_TOKENS] += output_tokens
            totals[OUTPUT_TOKENS] += output_tokens
        if duration is not None and self.latency and outcome != REJECTED:
            self._add_latency(bucket, {_histogram.bucket_of(duration): 1})
        self._version += 1

    def record_successes(
        self, now: float, n: int, latency: Mapping[int, int], extras: Extras | None = None
    ) -> None:
        """Record ``n`` fast successes (none slow) at once, all at time ``now``.

        ``latency`` maps histogram bucket indexes to counts; ``extras``, the
        cost and tokens some of them carried.
        """
        bucket = self._bucket(now)
        if bucket is None:
            return
        counts, totals = bucket.counts, self._totals
        counts[SUCCESS] += n
        totals[SUCCESS] += n
        if extras is not None:
            bucket.cost += extras.cost
            costed, tokens_in, tokens_out = extras.costed, extras.input_tokens, extras.output_tokens
            counts[COSTED] += costed
            totals[COSTED] += costed
            counts[INPUT_TOKENS] += tokens_in
            totals[INPUT_TOKENS] += tokens_in
            counts[OUTPUT_TOKENS] += tokens_out
            totals[OUTPUT_TOKENS] += tokens_out
        if self.latency:
            self._add_latency(bucket, latency)
        self._version += 1

    def _add_latency(self, bucket: _Bucket, counts: Mapping[int, int]) -> None:
        if not counts:
            return
        hist, bucket_hist = self._hist, bucket.hist
        get = bucket_hist.get
        for index, count in counts.items():
            hist[index] += count
            bucket_hist[index] = get(index, 0) + count
        lo, hi = min(counts), max(counts)  # the range of the indexes, in C
        if lo < self._lo:
            self._lo = lo
        if hi > self._hi:
            self._hi = hi

    def reset(self) -> None:
        """Forget everything."""
        self._buckets = [None] * self._n
        self._totals = [0] * _FIELDS
        if self.latency:
            self._hist = [0] * _histogram.SIZE
        self._lo, self._hi = _histogram.SIZE, -1
        self._version += 1

    @property
    def bucket_seconds(self) -> float:
        """The span of one bucket."""
        return self._width

    # -- reading -----------------------------------------------------------

    def counts(self, now: float) -> list[int]:
        """The running totals (index with :data:`SUCCESS` ...); do not mutate."""
        bucket_id = int(now // self._width)
        if bucket_id > self._cur:
            self._advance(bucket_id)
        return self._totals

    def snapshot(self, now: float) -> WindowSnapshot:
        """The window's contents at ``now``; cached while nothing changes."""
        totals = self.counts(now)
        if self._cache_version == self._version:
            return self._cache
        p50 = p95 = p99 = None
        if self.latency:
            p50, p95, p99 = _histogram.quantiles(self._hist, self._lo, self._hi, _QUANTILES)
        cost = math.fsum(b.cost for b in self._buckets if b is not None) if totals[COSTED] else 0.0
        # positional: a scrape builds one per provider and model
        ok, failed, throttled, client, rejected, slow, costed, unknown, tokens_in, tokens_out = totals
        snap = WindowSnapshot(
            ok, failed, throttled, client, rejected, slow, p50, p95, p99,
            cost, costed, unknown, tokens_in, tokens_out,
        )
        self._cache, self._cache_version = snap, self._version
        return snap


class CountWindow:
    """The last ``size`` calls, for breaker decisions (outcome and slowness only)."""

    __slots__ = ("_next", "_ring", "_size", "_totals")

    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError(f"size must be >= 1, got {size!r}")
        self._size = size
        self._ring: list[int] = []
        self._next = 0
        self._totals = [0] * _FIELDS

    def _push(self, code: int) -> None:
        # code = outcome index + 8 * slow
        if len(self._ring) < self._size:
            self._ring.append(code)
        else:
            old = self._ring[self._next]
            self._totals[old & 7] -= 1
            if old & 8:
                self._totals[SLOW] -= 1
            self._ring[self._next] = code
            self._next = (self._next + 1) % self._size
        self._totals[code & 7] += 1
        if code & 8:
            self._totals[SLOW] += 1

    def record(self, now: float, outcome: int, duration: float | None = None, *, slow: bool = False) -> None:
        """Record one call; rejections are not calls and are ignored."""
        if outcome != REJECTED:
            self._push(outcome | (8 if slow else 0))

    def record_successes(
        self, now: float, n: int, latency: Mapping[int, int], extras: Extras | None = None
    ) -> None:
        """Record ``n`` fast successes."""
        for _ in range(min(n, self._size)):
            self._push(SUCCESS)

    def counts(self, now: float) -> list[int]:
        """The running totals; do not mutate."""
        return self._totals

    def reset(self) -> None:
        """Forget everything."""
        self._ring.clear()
        self._next = 0
        self._totals = [0] * _FIELDS


def outcome_index(outcome: Outcome | str) -> int:
    """The window index of an outcome name."""
    try:
        return OUTCOME_INDEX[outcome]
    except KeyError:
        raise ValueError(f"unknown outcome {outcome!r}") from None
