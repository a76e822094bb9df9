"""The lock-free success path folds to exactly what recording each success under the lock gives."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from resilience import ProviderRegistry
from resilience._core.snapshot import ProviderSnapshot
from resilience.testing import FakeClock

# binary fractions: sums are exact in any order, so the two paths must agree to the last bit
_SECONDS = st.integers(min_value=1, max_value=512).map(lambda k: k / 1024)
_MAYBE_SECONDS = st.none() | _SECONDS
_COST = st.none() | st.integers(min_value=0, max_value=4096).map(lambda k: k / 1024)
_TOKENS = st.integers(min_value=0, max_value=500)
_MODEL = st.sampled_from([None, "gpt-4o", "claude"])

Success = tuple[str | None, float, float | None, float | None, int, int, float | None]
_SUCCESS = st.tuples(_MODEL, _SECONDS, _MAYBE_SECONDS, _COST, _TOKENS, _TOKENS, _MAYBE_SECONDS)


def _folded(snapshot: ProviderSnapshot) -> tuple[object, ...]:
    models = tuple((m.model, m.window, m.ttft) for m in sorted(snapshot.models, key=lambda m: m.model))
    return (
        snapshot.window, models, snapshot.requests_total, snapshot.cost_total, snapshot.duration_buckets,
        snapshot.duration_sum, snapshot.time_to_headers, snapshot.tokens_total, snapshot.ttft,
        snapshot.ttft_buckets, snapshot.ttft_sum,
    )


@settings(max_examples=60, deadline=None)
@given(st.lists(_SUCCESS, max_size=40), st.integers(min_value=0, max_value=40))
def test_fast_successes_fold_to_what_recording_each_gives(successes: list[Success], plain: int) -> None:
    """Plain and rich successes, over several models, folded in one batch == each recorded under the lock."""
    clock = FakeClock()
    registry = ProviderRegistry(clock=clock)
    fast = registry.register("fast", hosts=["fast.test"])
    slow = registry.register("slow", hosts=["slow.test"])
    now = clock()
    for provider in (fast, slow):
        provider.model_window("gpt-4o")  # the same models exist on both, in the same order
        provider.model_window("claude")
    for i in range(plain):
        model = ("gpt-4o", None)[i % 2]
        fast.record_plain(fast.admit(), 0.25, now, fast.model_window(model))
        slow.record(slow.admit(), "success", 0.25, model=slow.model_window(model), now=now)
    for model, duration, headers, cost, tokens_in, tokens_out, ttft in successes:
        fast.record_success(fast.admit(), duration, now, fast.model_window(model), headers, cost,
                            tokens_in, tokens_out, ttft)
        slow.record(slow.admit(), "success", duration, model=slow.model_window(model), cost=cost,
                    input_tokens=tokens_in, output_tokens=tokens_out, time_to_headers=headers, now=now,
                    ttft=ttft)
    assert _folded(fast.snapshot()) == _folded(slow.snapshot())
    assert fast.snapshot().requests_total["success"] == plain + len(successes)
