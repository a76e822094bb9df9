"""Log-bucketed latency histogram arithmetic, shared by windows and metrics.

Bucket ``i`` holds durations in ``(BOUNDS[i-1], BOUNDS[i]]``. Per decade the
bounds are the 24 steps of ``10 ** (k / 24)`` (a ratio of ~1.10) plus 2.5
and 5, from 1 µs to 10,000 s; each bound is the float of its short decimal
(``0.005`` is exactly ``5e-3``), so Prometheus' ``le`` bounds
(:data:`DURATION_BUCKETS`) are bucket bounds and the exported histogram is
exact. A quantile read back as its bucket's geometric middle is within ~5 %
of the true value. The bucket of a duration is one C-level ``bisect``; a
batch of many in few buckets is counted sorted (:func:`bucket_counts`).
"""

from __future__ import annotations

import math
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Iterable, Sequence
from functools import partial
from itertools import accumulate
from operator import itemgetter, sub


def _bounds() -> tuple[float, ...]:
    mantissas = sorted({float(f"{10 ** (k / 24):.4g}") for k in range(24)} | {2.5, 5.0})
    return (*(float(f"{m!r}e{e}") for e in range(-6, 4) for m in mantissas), 1e4)


BOUNDS: tuple[float, ...] = _bounds()
"""Upper bounds of the buckets; a last bucket catches everything above."""

SIZE = len(BOUNDS) + 1

DURATION_BUCKETS: tuple[float, ...] = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 25.0, 50.0, 100.0,
)
"""The ``le`` bounds of the exported Prometheus duration histogram (all in :data:`BOUNDS`)."""

PROMETHEUS_INDEX: tuple[int, ...] = tuple(BOUNDS.index(le) for le in DURATION_BUCKETS)
PROMETHEUS_BUCKET: tuple[int, ...] = tuple(
    bisect_left(PROMETHEUS_INDEX, index) for index in range(len(BOUNDS) + 1)
)
"""For each histogram bucket, the Prometheus bucket it falls in (exact: bounds are shared)."""

_MIDDLES: tuple[float, ...] = (
    BOUNDS[0],
    *(math.sqrt(BOUNDS[i - 1] * BOUNDS[i]) for i in range(1, len(BOUNDS))),
    BOUNDS[-1],
)

bucket_of: Callable[[float], int] = partial(bisect_left, BOUNDS)
"""Index of the bucket a duration falls in (negative and NaN fall in the first)."""


def _count_into(counts: dict[int, int], indexes: Iterable[int]) -> None:
    """What :func:`collections._count_elements` does, in Python: the fallback."""
    get = counts.get
    for index in indexes:
        counts[index] = get(index, 0) + 1


try:  # the C loop behind Counter.update, without Counter's Python frames and ABC check
    from collections import _count_elements  # type: ignore[attr-defined]
except ImportError:  # pragma: no cover - an interpreter without it
    _count_elements = _count_into


SORTED_FROM = 16
"""From this many durations on, :func:`bucket_counts` may count them sorted."""


def bucket_counts(
    durations: Sequence[float], *, total: float | None = None, reorder: bool = False
) -> dict[int, int]:
    """``{bucket index: how many}`` of ``durations`` (the one read of ``collections._count_elements``).

    One ``bisect`` per duration costs ~1,400 instructions (nine comparisons
    through the generic path). Many durations in few buckets (a fold of a
    busy second, thousands of guarded calls) are counted sorted instead: one
    sort (floats compare in C) and one bisect per bucket bound they span,
    ~4x cheaper for thousands. NaN (which has no order) is counted one by one.

    Args:
        durations: what to count.
        total: their sum, if the caller has it (a NaN among them makes it NaN).
        reorder: ``durations`` is a list the caller lets be sorted in place (no copy).
    """
    n = len(durations)
    if n >= SORTED_FROM:
        if reorder and isinstance(durations, list):
            durations.sort()
            ordered = durations
        else:
            ordered = sorted(durations)
        if total is None:
            total = sum(ordered)  # NaN in, NaN out (so is inf - inf: counted one by one, still right)
        lo, hi = bucket_of(ordered[0]), bucket_of(ordered[-1])
        if total == total and (hi - lo) * 8 <= n:
            # how many are at or below each bound from the lowest one's bucket to below the highest's
            below = list(map(partial(bisect_right, ordered), BOUNDS[lo:hi]))
            below.append(n)
            return dict(filter(_COUNTED, zip(range(lo, hi + 1), map(sub, below, [0, *below]), strict=True)))
    counts: dict[int, int] = {}
    _count_elements(counts, map(bucket_of, durations))
    return counts


_COUNTED = itemgetter(1)


def quantiles(
    counts: Sequence[int], lo: int, hi: int, qs: Sequence[float]
) -> tuple[float | None, ...]:
    """Nearest-rank quantiles of a histogram whose non-zero buckets lie in [lo, hi]."""
    if hi < lo:
        return tuple(None for _ in qs)
    if hi == lo:  # one bucket: every quantile is its middle
        return tuple(_MIDDLES[lo] for _ in qs) if counts[lo] > 0 else tuple(None for _ in qs)
    cumulative = list(accumulate(counts[lo : hi + 1]))
    total = cumulative[-1] if cumulative else 0
    if total <= 0:
        return tuple(None for _ in qs)
    out: list[float | None] = []
    for q in qs:
        rank = max(1, math.ceil(q * total))
        out.append(_MIDDLES[lo + bisect_left(cumulative, rank)])
    return tuple(out)

