"""One upstream provider: its breaker, stats windows, model windows and counters.

Every attempt is recorded in three places under the provider's one lock: the
breaker's decision window, the provider's stats window (never cleared; behind
health, dashboard and gauges) and the model's stats window. Monotonic
counters (requests, cost, retries, a duration histogram) feed Prometheus.

The fast path: a fast success on a closed breaker takes no lock. Its
duration is appended to one list (atomic in CPython): the model window's
``pending`` when the call has a model, else the provider stats window's.
Whoever next takes the lock — a failure, a snapshot, a bucket change, or a
full batch — folds them all into the windows in a batch (a model's
successes into its own window and the provider's), so counts stay exact
under threads.
"""

from __future__ import annotations

import math
import threading
from collections import deque
from itertools import accumulate
from typing import Any, TypeVar

from resilience._core import context as _context
from resilience._core import health as _health
from resilience._core import quota
from resilience._core.breaker import CLOSED, DISABLED, HALF_OPEN, OPEN, Breaker
from resilience._core.clock import Clock, wall_time
from resilience._core.config import OUTCOMES, ResolvedPolicy
from resilience._core.errors import CircuitOpenError
from resilience._core.histogram import DURATION_BUCKETS, PROMETHEUS_BUCKET, bucket_counts, bucket_of
from resilience._core.pending import Extras
from resilience._core.quota import Limits
from resilience._core.snapshot import ModelSnapshot, ProviderSnapshot
from resilience._core.window import EMPTY, REJECTED, SUCCESS, TimeWindow, outcome_index

T = TypeVar("T")

OTHER = "other"
"""The label that overflowing provider and model names fold into."""

MAX_LABEL_LENGTH = 128
MAX_ATTEMPT_COST_USD = 1_000_000.0
"""Largest cost one attempt may record; more (like a negative or NaN cost) is ``invalid_cost``."""

_LE = (*DURATION_BUCKETS, math.inf)
FOLD_BATCH = 4096


def encodable(name: str) -> str:
    """``name`` with what UTF-8 cannot encode (lone surrogates, e.g. from a JSON ``"\\ud800"``) escaped.

    Label values go out as UTF-8 (Prometheus, the dashboard's JSON): one that
    cannot be encoded would fail every scrape from then on.
    """
    if name.isascii():
        return name
    try:
        name.encode()
    except UnicodeEncodeError:
        return name.encode("utf-8", "backslashreplace").decode()
    return name


class Provider:
    """A provider: create through :meth:`resilience.ProviderRegistry.register`.

    ``state`` is the breaker's state name; :meth:`force_open`, :meth:`disable`
    and :meth:`reset` are manual control.
    """

    def __init__(
        self,
        name: str,
        policy: ResolvedPolicy,
        *,
        clock: Clock,
        max_models: int,
        explicit: bool = True,
        hosts: tuple[str, ...] = (),
    ) -> None:
        self.name = name
        self.policy = policy
        self._explicit = explicit
        self.hosts = hosts
        self.clock = clock
        self._lock = threading.Lock()
        self._breaker = Breaker(
            name, policy.breaker, clock=clock, lock=self._lock,
            throttled_is_failure=policy.throttled_is_failure,
        )
        self._stats = TimeWindow(policy.stats_window_seconds)
        self._headers_window = TimeWindow(policy.stats_window_seconds)
        self._ttft = TimeWindow(policy.stats_window_seconds)
        self._ttft_counts = [0] * len(_LE)  # lifetime, per Prometheus bucket (not cumulative)
        self._ttft_sum = 0.0
        self._max_models = max_models
        self._models: dict[str, TimeWindow] = {}
        self._orphans: deque[int] = deque()
        self._fold_width = min(self._stats.bucket_seconds, _decision_bucket(self._breaker))
        self._fold_at = -math.inf
        self._slow_s = float(policy.breaker.slow_call_seconds)  # type: ignore[arg-type]
        judged = policy.failure_statuses | policy.throttle_statuses | policy.retry.retry_statuses | {503}
        self._plain_below = min(400, *judged)  # 4xx are client errors by default
        """Statuses below this are plain successes: nothing to classify, no ``Retry-After`` to read."""
        self._requests_total = [0] * len(OUTCOMES)
        self._cost_total = 0.0
        self._tokens_total = [0, 0]  # prompt, completion; since start
        self._limits: tuple[Limits, float] | None = None  # the latest announced, and when (clock)
        self._held_until = -math.inf
        """With ``hold_when_exhausted``: calls are rejected until then (clock), an exhausted quota's reset."""
        self.holds = policy.hold_when_exhausted
        """Whether calls pass :meth:`quota_gate` first (``hold_when_exhausted``)."""
        self._requests_left = quota.RequestCount()
        self._retries_total: dict[str, int] = {}
        self._duration_counts = [0] * len(_LE)  # lifetime, per Prometheus bucket (not cumulative)
        self._model_snaps: dict[str, ModelSnapshot] = {}
        self._duration_sum = 0.0
        self._model_overflows = 0
        self._errors: dict[str, int] = {}
        self._deadline_exceeded = 0
        self._exemplars: list[tuple[str, float, float] | None] = [None] * len(_LE)
        """Per Prometheus duration bucket: the latest traced ``(trace_id, duration, wall time)``."""

    def __repr__(self) -> str:
        return f"<Provider {self.name!r} {self._breaker._state}>"

    # -- manual control --------------------------------------------------------

    @property
    def state(self) -> str:
        """The breaker state: closed, open, half_open, forced_open or disabled."""
        return self._breaker.state

    def force_open(self) -> None:
        """Reject every call until :meth:`reset`."""
        self._control(self._breaker.force_open_locked)

    def disable(self) -> None:
        """Admit every call and never trip; outcomes are still recorded."""
        self._control(self._breaker.disable_locked)

    def reset(self) -> None:
        """Back to ``closed``; the stats window is kept."""
        self._control(self._breaker.reset_locked)

    def probe_succeeded(self) -> bool:
        """An active probe got through: an ``open`` breaker goes ``half_open`` now.

        Returns whether the breaker moved; trial calls still decide whether it closes.
        """
        now = self.clock()
        with self._lock:
            moved = self._breaker._state is OPEN
            if moved:
                self._breaker._transition_locked(HALF_OPEN, now)
        self._breaker.notify()
        return moved

    def _control(self, action: object) -> None:
        now = self.clock()
        with self._lock:
            self._fold_locked(now)
            action(now)  # type: ignore[operator]  # a bound *_locked method
        self._breaker.notify()

    # -- labels ----------------------------------------------------------------

    def model_window(self, model: str | None) -> TimeWindow | None:
        """The stats window of a model, created on first use; names past ``max_models`` fold."""
        if model is None:
            return None
        window = self._models.get(model)
        if window is not None:
            return window
        return self._new_model_window(model)

    def _new_model_window(self, model: str) -> TimeWindow:
        key = encodable(model[:MAX_LABEL_LENGTH])[:MAX_LABEL_LENGTH]
        with self._lock:
            window = self._models.get(key)
            if window is None:
                if len(self._models) >= self._max_models and key != OTHER:
                    self._model_overflows += 1
                    key = OTHER
                    window = self._models.get(OTHER)
                    if window is not None:
                        return window
                window = self._models[key] = TimeWindow(self.policy.stats_window_seconds)
        return window

    @property
    def errors(self) -> dict[str, int]:
        """Instrumentation errors counted so far, by kind (a copy; :meth:`count_error` counts one)."""
        with self._lock:
            return dict(self._errors)

    def note_limits(self, limits: Limits, now: float) -> None:
        """Keep the rate limits a response announced at ``now`` (the latest win; one atomic store).

        With ``hold_when_exhausted``, an exhausted quota holds the provider's
        calls until its reset (see :meth:`hold`).
        """
        self._limits = (limits, now)
        if self.holds:
            announced = quota.view(limits, 0.0)
            reset = announced["reset_seconds"]
            with self._lock:
                self._held_until = now + reset if announced["exhausted"] and reset else -math.inf
                self._requests_left.announced(limits, now)

    def quota_gate(self, now: float) -> float | None:
        """With ``hold_when_exhausted``: ``None`` to admit a call now, else the seconds it is held for.

        Held while the latest announcement said 0 requests or tokens left
        with the reset ahead, and while the requests counted locally since
        (:class:`resilience._core.quota.RequestCount`) have used up what it
        allowed: concurrent callers never send more than the quota.
        """
        with self._lock:
            if now < self._held_until:
                return self._held_until - now
            return self._requests_left.take(now)

    def hold(self, now: float, model: TimeWindow | None, retry_after: float) -> CircuitOpenError:
        """A call held back by an exhausted quota: counted as ``rejected``; the error to raise."""
        with self._lock:
            self._stats.record(now, REJECTED)
            if model is not None:
                model.record(now, REJECTED)
            self._requests_total[REJECTED] += 1
        return CircuitOpenError(self.name, retry_after, "exhausted")

    @property
    def ratelimit(self) -> dict[str, Any] | None:
        """The quota the latest response announced, or ``None`` when none did.

        ``{"requests_remaining", "requests_limit", "tokens_remaining",
        "tokens_limit", "reset_seconds", "exhausted"}`` (numbers may be
        ``None``); ``reset_seconds`` is the time left on the registry's clock.
        """
        latest = self._limits
        if latest is None:
            return None
        limits, at = latest
        return quota.view(limits, self.clock() - at)

    def admission_view(self) -> tuple[str, float, bool, float | None]:
        """``(state, health score, admits a call now, retry_after)``, taking no permit.

        What a route chooses its targets by: half-open admits only while a
        trial slot is free; open, forced open and exhausted (its rate limits
        said 0 remaining, reset ahead) do not admit. ``retry_after`` is
        ``None`` when it admits, else the seconds until it may again.
        """
        now = self.clock()
        breaker = self._breaker
        with self._lock:
            while self._orphans:  # abandoned permits hold no trial slot
                breaker.release_locked(self._orphans.popleft())
            breaker._expire_locked(now)
            state = breaker._state
            window = self._stats.snapshot(now)
            admits = state is CLOSED or state is DISABLED
            admits = admits or (state is HALF_OPEN and breaker.trial_free_locked())
            retry_after = None if admits else breaker.retry_after_locked(now)
        breaker.notify()
        latest = self._limits
        if latest is not None:
            limits = quota.view(latest[0], now - latest[1])
            if limits["exhausted"]:
                admits, retry_after = False, max(retry_after or 0.0, limits["reset_seconds"] or 0.0)
        score = _health.health_score(state, window, self.policy.latency_slo_seconds)
        return state, score, admits, retry_after

    def count_error(self, kind: str) -> None:
        """Count an instrumentation error (a bad cost body, a metrics error ...)."""
        with self._lock:
            self._errors[kind] = self._errors.get(kind, 0) + 1

    def count_retry(self, reason: str) -> None:
        """Count a retry the transport is about to make."""
        with self._lock:
            self._retries_total[reason] = self._retries_total.get(reason, 0) + 1

    def count_deadline_exceeded(self) -> None:
        """Count a call (or its attempt) to this provider cut by its deadline."""
        with self._lock:
            self._deadline_exceeded += 1

    def note_exemplar(self, duration: float, trace_id: str) -> None:
        """Keep ``trace_id`` as the exemplar of ``duration``'s Prometheus bucket (lock-free; the latest wins).

        One list store (atomic in CPython) of a fresh tuple: a scrape copies
        the list and sees each bucket's old or new exemplar, never half of one.
        """
        self._exemplars[PROMETHEUS_BUCKET[bucket_of(duration)]] = (trace_id, duration, wall_time())

    # -- permits ---------------------------------------------------------------

    def admit(self, model: TimeWindow | None = None) -> int:
        """A permit for one attempt, or :class:`CircuitOpenError` (recorded as ``rejected``)."""
        breaker = self._breaker
        state = breaker._state
        if state is CLOSED or state is DISABLED:
            return breaker.permit
        if state is HALF_OPEN and _context.holds(self):
            return breaker.permit  # inside a guarded route's own trial: no second slot, no second verdict
        now = self.clock()
        with self._lock:
            orphans = self._orphans
            while orphans:
                breaker.release_locked(orphans.popleft())
            permit = breaker.try_acquire_locked(now)
            if permit is None:
                self._stats.record(now, REJECTED)
                if model is not None:
                    model.record(now, REJECTED)
                self._requests_total[REJECTED] += 1
                retry_after, state = breaker.retry_after_locked(now), breaker._state
        breaker.notify()
        if permit is None:
            raise CircuitOpenError(self.name, retry_after, state)
        return permit

    def orphan(self, permit: int) -> None:
        """Give back, lock-free, the permit of a call abandoned unfinished (from ``__del__``).

        Taken back the next time a permit is asked for: a garbage-collected
        stream must never take a lock (it may be collected while its thread
        holds it), and must never hold a half-open trial slot forever.
        """
        self._orphans.append(permit)

    def release(self, permit: int) -> None:
        """Give back a permit whose call ended without a result (cancelled)."""
        with self._lock:
            self._breaker.release_locked(permit)
        self._breaker.notify()

    # -- recording -------------------------------------------------------------

    def record_plain(self, permit: int, duration: float, now: float, model: TimeWindow | None) -> None:
        """:meth:`record_success` of a success with nothing to say but its duration (most calls)."""
        if permit == self._breaker.closed_permit and duration < self._slow_s:
            pending = self._stats.pending if model is None else model.pending
            pending.append(duration)
            if now >= self._fold_at or len(pending) >= FOLD_BATCH:
                self.fold(now)
            return
        self.record(permit, "success", duration, model=model, now=now)

    def record_success(
        self,
        permit: int,
        duration: float,
        now: float,
        model: TimeWindow | None,
        time_to_headers: float | None = None,
        cost: float | None = None,
        input_tokens: int = 0,
        output_tokens: int = 0,
        ttft: float | None = None,
    ) -> None:
        """A success: lock-free while closed, not slow and its cost valid, else :meth:`record`.

        Its numbers wait in one pending list (:mod:`resilience._core.pending`)
        until the next fold; a streamed response's ``time_to_headers``, a
        ``cost`` and tokens travel with its duration.
        """
        judged = ttft if ttft is not None else duration if time_to_headers is None else time_to_headers
        if (
            permit == self._breaker.closed_permit
            and judged < self._slow_s
            and (cost is None or 0 <= cost <= MAX_ATTEMPT_COST_USD)
        ):
            window = self._stats if model is None else model
            plain = cost is None and time_to_headers is None and ttft is None  # cost first: set on most
            if plain and not (input_tokens or output_tokens):
                pending: list[Any] = window.pending
                pending.append(duration)
            else:
                pending = window.rich
                pending.append((duration, time_to_headers, cost, input_tokens, output_tokens, ttft))
            if now >= self._fold_at or len(pending) >= FOLD_BATCH:
                self.fold(now)
            return
        self.record(
            permit, "success", duration, model=model, cost=cost, input_tokens=input_tokens,
            output_tokens=output_tokens, time_to_headers=time_to_headers, now=now, ttft=ttft,
        )

    def record(
        self,
        permit: int,
        outcome: str,
        duration: float,
        *,
        model: TimeWindow | None = None,
        cost: float | None = None,
        cost_unknown: bool = False,
        input_tokens: int = 0,
        output_tokens: int = 0,
        retry_after: float | None = None,
        time_to_headers: float | None = None,
        now: float | None = None,
        judged: bool = True,
        ttft: float | None = None,
    ) -> None:
        """Record one attempt's outcome everywhere and move the breaker.

        ``duration`` is the whole attempt (to the end of a streamed body);
        ``time_to_headers``, for streamed responses, the time to the response
        headers, kept in a window of its own; a streamed attempt is ``slow``
        by it, never by its whole length. ``retry_after`` is a
        ``Retry-After`` the response carried (seconds), for ``open_on_retry_after``.
        ``judged=False`` records the attempt in the windows and counters but
        gives the breaker no verdict (the permit is released instead).
        ``ttft``, for SSE responses, the time to the first content event: kept
        in the provider's and the model's time-to-first-token windows, and what
        the attempt is judged slow by.
        """
        index = outcome_index(outcome)
        if now is None:
            now = self.clock()
        # a stream's length is what the caller asked for: it is judged slow by its first token (SSE)
        # or its first response (other streams)
        first = ttft if ttft is not None else time_to_headers
        slow = (duration if first is None else first) >= self._slow_s
        if cost is not None and not 0 <= cost <= MAX_ATTEMPT_COST_USD:  # NaN, < 0, inf, absurd
            cost, cost_unknown = None, True
            self.count_error("invalid_cost")
        with self._lock:
            self._fold_locked(now)
            for window in (self._stats, model):
                if window is not None:
                    window.record(
                        now, index, duration, slow=slow, cost=cost, cost_unknown=cost_unknown,
                        input_tokens=input_tokens, output_tokens=output_tokens,
                    )
            self._requests_total[index] += 1
            if index != REJECTED:
                self._duration_counts[PROMETHEUS_BUCKET[bucket_of(duration)]] += 1
                self._duration_sum += duration
            if cost is not None:
                self._cost_total += cost
            if input_tokens or output_tokens:
                tokens = self._tokens_total
                tokens[0] += input_tokens
                tokens[1] += output_tokens
            if time_to_headers is not None:
                self._headers_window.record(now, index, time_to_headers)
            if ttft is not None:
                self._record_ttft_locked(now, index, ttft, model)
            if index == REJECTED:
                pass
            elif judged:
                self._breaker.on_result_locked(permit, index, slow, now, retry_after)
            else:  # no verdict on the provider (a cancelled stream): its trial slot goes back
                self._breaker.release_locked(permit)
        self._breaker.notify()

    def record_lost(
        self, permit: int, cost: float | None, input_tokens: int = 0, output_tokens: int = 0
    ) -> None:
        """A hedged attempt that lost its race: no verdict and no call, but its cost and tokens count."""
        if cost is not None and not 0 <= cost <= MAX_ATTEMPT_COST_USD:
            cost = None
            self.count_error("invalid_cost")
        with self._lock:
            self._breaker.release_locked(permit)
            if cost is not None:
                self._cost_total += cost
            self._tokens_total[0] += input_tokens
            self._tokens_total[1] += output_tokens
        self._breaker.notify()

    def _record_ttft_locked(self, now: float, index: int, ttft: float, model: TimeWindow | None) -> None:
        self._ttft.record(now, index, ttft)
        if model is not None:
            window = model.ttft
            if window is None:
                window = model.ttft = TimeWindow(self.policy.stats_window_seconds)
            window.record(now, index, ttft)
        self._ttft_counts[PROMETHEUS_BUCKET[bucket_of(ttft)]] += 1
        self._ttft_sum += ttft

    def open_for(self, seconds: float) -> None:
        """Open the breaker for at least ``seconds`` (a ``Retry-After``)."""
        now = self.clock()
        with self._lock:
            self._breaker.open_for_locked(seconds, now)
        self._breaker.notify()

    def fold(self, now: float) -> None:
        """Fold the pending fast successes into the windows."""
        with self._lock:
            self._fold_locked(now)

    def _fold_locked(self, now: float) -> None:
        # a fast success waits in exactly one list: its model window's, or the stats window's
        stats = self._stats
        when = now
        fold_at = self._fold_at
        if fold_at <= now and fold_at != -math.inf:
            # everything pending arrived before fold_at: keep it in that bucket
            when = fold_at - self._fold_width * 1e-6
        folded: list[float] | None = None  # every duration folded, of all windows
        folded_sum: float | None = None  # their sum, once one window's is taken
        latency: dict[int, int] = {}  # their histogram buckets, once one window's are counted
        firsts: dict[int, int] = {}  # the buckets of their times to first token, likewise
        extras: Extras | None = None
        for window in (stats, *self._models.values()):
            pending, rich = window.pending, window.rich
            if not pending and not rich:
                continue
            durations = _drain(pending)
            more = None
            if rich:
                more = Extras(_drain(rich))
                durations += more.durations
            window_sum = None
            if window is not stats:
                window_sum = math.fsum(durations)
                latency = bucket_counts(durations, total=window_sum, reorder=True)  # its own list, as below
                window.record_successes(when, len(durations), latency, more)
                if more is not None and more.ttft:
                    ttft_window = window.ttft
                    if ttft_window is None:
                        ttft_window = window.ttft = TimeWindow(self.policy.stats_window_seconds)
                    firsts = bucket_counts(more.ttft)
                    ttft_window.record_successes(when, len(more.ttft), firsts)
            if folded is None:
                folded, folded_sum = durations, window_sum
            else:  # a second window: the buckets and the sum are taken over all of them below
                folded += durations
                latency, firsts, folded_sum = {}, {}, None
            if more is not None:
                if extras is None:
                    extras = more
                else:
                    extras.add(more)
        if folded is not None:
            n = len(folded)
            duration_sum = math.fsum(folded) if folded_sum is None else folded_sum
            if not latency:  # folded is this fold's own list: sorting it in place spares a copy
                latency = bucket_counts(folded, total=duration_sum, reorder=True)
            stats.record_successes(when, n, latency, extras)
            if extras is not None:
                self._cost_total += extras.cost
                tokens = self._tokens_total
                tokens[0] += extras.input_tokens
                tokens[1] += extras.output_tokens
                if extras.headers:
                    headers = bucket_counts(extras.headers)
                    self._headers_window.record_successes(when, len(extras.headers), headers)
                if extras.ttft:
                    if not firsts:
                        firsts = bucket_counts(extras.ttft)
                    self._ttft.record_successes(when, len(extras.ttft), firsts)
                    lifetime_ttft = self._ttft_counts
                    for index, count in firsts.items():
                        lifetime_ttft[PROMETHEUS_BUCKET[index]] += count
                    self._ttft_sum += math.fsum(extras.ttft)
            self._breaker.add_successes_locked(when, n)
            self._requests_total[SUCCESS] += n
            lifetime = self._duration_counts
            for index, count in latency.items():
                lifetime[PROMETHEUS_BUCKET[index]] += count
            self._duration_sum += duration_sum
        if now >= fold_at:
            width = self._fold_width
            self._fold_at = (now // width + 1) * width

    # -- reading ---------------------------------------------------------------

    def _model_snapshots(self, now: float) -> tuple[ModelSnapshot, ...]:
        cache, name = self._model_snaps, self.name
        out = []
        for model, window in self._models.items():
            window_snap = window.snapshot(now)
            ttft = window.ttft
            ttft_snap = EMPTY if ttft is None else ttft.snapshot(now)
            snap = cache.get(model)
            if snap is None or snap.window is not window_snap or snap.ttft is not ttft_snap:
                snap = cache[model] = ModelSnapshot(name, model, window_snap, ttft_snap)
            out.append(snap)
        return tuple(out)

    def snapshot(self) -> ProviderSnapshot:
        """The provider's numbers now (health, stats window, models, counters)."""
        now = self.clock()
        with self._lock:
            self._fold_locked(now)
            self._breaker._expire_locked(now)
            state = self._breaker._state
            window = self._stats.snapshot(now)
            models = self._model_snapshots(now)
            retry_after = self._breaker.retry_after_locked(now)
            requests: dict[str, int] = dict(zip(OUTCOMES, self._requests_total, strict=True))
            cost_total, duration_sum = self._cost_total, self._duration_sum
            tokens_total = (self._tokens_total[0], self._tokens_total[1])
            retries, transitions = dict(self._retries_total), dict(self._breaker.transitions)
            buckets = tuple(zip(_LE, accumulate(self._duration_counts), strict=True))
            history = tuple(self._breaker.history)
            headers = self._headers_window.snapshot(now)
            ttft = self._ttft.snapshot(now)
            ttft_buckets = tuple(zip(_LE, accumulate(self._ttft_counts), strict=True))
            ttft_sum = self._ttft_sum
            deadline_exceeded, exemplars = self._deadline_exceeded, tuple(self._exemplars)
        self._breaker.notify()
        policy = self.policy
        score = _health.health_score(state, window, policy.latency_slo_seconds)
        return ProviderSnapshot(
            name=self.name,
            state=state,
            availability=_health.availability(state),
            error_rate=window.error_rate,
            health_score=score,
            status=_health.status(
                state, score, healthy=policy.healthy_score, degraded=policy.degraded_score
            ),
            retry_after=retry_after,
            window=window,
            window_seconds=policy.stats_window_seconds,
            models=models,
            requests_total=requests,
            cost_total=cost_total,
            retries_total=retries,
            transitions_total=transitions,
            duration_buckets=buckets,
            duration_sum=duration_sum,
            history=history,
            time_to_headers=headers,
            tokens_total=tokens_total,
            ratelimit=None if self._limits is None else quota.view(self._limits[0], now - self._limits[1]),
            ttft=ttft,
            ttft_buckets=ttft_buckets,
            ttft_sum=ttft_sum,
            deadline_exceeded_total=deadline_exceeded,
            duration_exemplars=exemplars,
        )


def _decision_bucket(breaker: Breaker) -> float:
    window = breaker.window
    return window.bucket_seconds if isinstance(window, TimeWindow) else math.inf


def _drain(pending: list[T]) -> list[T]:
    """Take what ``pending`` holds now; appends racing in (at the end) stay for the next fold.

    Each step is one C call, atomic under the GIL, and only the fold (under
    the provider's lock) removes items, from the front.
    """
    n = len(pending)
    durations = pending[:n]
    del pending[:n]
    return durations
