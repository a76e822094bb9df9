"""How a provider snapshot becomes Prometheus samples: the families, their names and the series.

Used by :mod:`resilience._export.metrics`. Families are addressed by index; one
provider's fixed series (gauges, one-hot state, cost, requests by outcome, the
duration histogram) are laid out once per provider name as columns of sample
names and labels (:class:`Series`), and every scrape zips them with fresh values.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from functools import partial
from itertools import islice, repeat

from prometheus_client.samples import Exemplar, Sample
from prometheus_client.utils import floatToGoString

from resilience._core.breaker import STATES
from resilience._core.config import OUTCOMES
from resilience._core.histogram import DURATION_BUCKETS
from resilience._core.snapshot import ProviderSnapshot


def _le_text(le: float) -> str:
    return str(floatToGoString(le))  # type: ignore[no-untyped-call]  # untyped in prometheus_client


_LE: dict[float, str] = {le: _le_text(le) for le in (*DURATION_BUCKETS, float("inf"))}
_QUANTILES = (("0.5", "p50"), ("0.95", "p95"), ("0.99", "p99"))

# Family indexes, in exposition order.
(AVAILABILITY, ERROR_RATE, HEALTH, STATE, COST, REQUESTS, TOKENS, RATELIMIT, DURATION, TTFT, RETRIES,
 TRANSITIONS, OVERFLOWS, ERRORS, DEADLINES, ROUTE_REQUESTS, ROUTE_FAILOVERS, ROUTE_HEDGES,
 MODEL_CALLS, MODEL_ERROR_RATE, MODEL_COST, MODEL_LATENCY, MODEL_DROPPED) = range(23)

# (name; "=" marks the two names the namespace leaves alone, type, help) by family index
SPECS: tuple[tuple[str, str, str], ...] = (
    ("=provider_availability", "gauge",
     "1 when the provider's breaker admits calls, 0 when open or forced open."),
    ("=provider_error_rate", "gauge",
     "Share of attempts that failed or were throttled over the stats window."),
    ("provider_health_score", "gauge",
     "Health score in [0, 1]: state factor x (1 - error rate) x latency factor."),
    ("circuit_breaker_state", "gauge", "Breaker state, one-hot: 1 for the current state."),
    ("cost_by_provider", "counter", "USD spent on the provider since start."),
    ("provider_requests", "counter",
     "Attempts by outcome since start (rejected: not attempted, breaker open)."),
    ("provider_tokens", "counter",
     "Tokens the provider's usage reported since start, by kind (prompt, completion)."),
    ("provider_ratelimit_remaining", "gauge",
     "Requests or tokens left in the provider's quota, as its latest response's rate-limit headers said."),
    ("provider_request_duration_seconds", "histogram",
     "Duration of attempts that reached the provider, seconds."),
    ("provider_time_to_first_token_seconds", "histogram",
     "Time from the start of a streamed (SSE) attempt to its first content event, seconds."),
    ("provider_retries", "counter", "Retries by reason since start."),
    ("circuit_breaker_transitions", "counter", "Breaker state transitions since start."),
    ("resilience_label_overflows", "counter",
     "Provider or model names folded into 'other' because a cap was reached."),
    ("resilience_errors", "counter", "Instrumentation errors by kind (the calls went on)."),
    ("provider_deadline_exceeded", "counter", "Calls to the provider cut by their deadline since start."),
    ("route_requests", "counter",
     "Route calls by outcome since start (rejected: no target admitted the call)."),
    ("route_failovers", "counter",
     "Moves of a route call from one target's provider to the next since start."),
    ("route_hedges", "counter",
     "Hedges a route started since start, by result (won: the hedge committed first)."),
    ("model_calls", "gauge", "Attempts that reached the provider for this model over the stats window."),
    ("model_error_rate", "gauge", "Error rate of the model over the stats window."),
    ("model_cost_usd", "gauge", "USD spent on the model over the stats window."),
    ("model_latency_seconds", "gauge", "Latency quantiles of the model over the stats window, seconds."),
    ("resilience_model_series_dropped", "gauge",
     "(provider, model) pairs left out of this scrape by max_model_series."),
)
PROVIDER_FAMILIES = MODEL_CALLS
TOKEN_KINDS = ("prompt", "completion")
"""The ``kind`` labels of the tokens counter, in the order of ``ProviderSnapshot.tokens_total``."""

Append = Callable[[Sample], None]
# a Sample built in C: tuple.__new__(Sample, (name, labels, value, None, ...)), no Python frame
_new_sample: Callable[[tuple[object, ...]], Sample] = partial(tuple.__new__, Sample)
_TAILS = (repeat(None),) * (len(Sample._fields) - 3)


class Series:
    """Series in columns: runs of (family index, count), sample names and labels; values go alongside."""

    __slots__ = ("labels", "names", "runs")

    def __init__(self) -> None:
        self.runs: list[list[int]] = []
        self.names: list[str] = []
        self.labels: list[dict[str, str]] = []

    def add(self, index: int, name: str, labels: dict[str, str]) -> None:
        runs = self.runs
        if runs and runs[-1][0] == index:
            runs[-1][1] += 1
        else:
            runs.append([index, 1])
        self.names.append(name)
        self.labels.append(labels)

    def add_run(self, index: int, name: str, labels: list[dict[str, str]]) -> None:
        """Series of one family with one sample name, many label sets."""
        if labels:
            self.runs.append([index, len(labels)])
            self.names += [name] * len(labels)
            self.labels += labels

    def copy(self) -> Series:
        other = Series()
        other.runs = [list(run) for run in self.runs]
        other.names, other.labels = list(self.names), list(self.labels)
        return other

    def emit(self, values: list[float], extends: list[Callable[[Iterable[Sample]], None]]) -> None:
        """Append one sample per series to its family, built without a Python call per sample."""
        columns = zip(self.names, self.labels, values, *_TAILS, strict=False)  # the tails are endless
        samples = map(_new_sample, columns)
        for index, count in self.runs:
            extends[index](islice(samples, count))


def full_name(name: str, namespace: str) -> str:
    if name.startswith("="):
        return name[1:]
    return f"{namespace}_{name}" if namespace else name


def fixed_series(
    names: tuple[str, ...], provider: str, les: tuple[float, ...], ttft_les: tuple[float, ...] | None = None
) -> Series:
    """The series every provider has, in the order of :func:`fixed_values`.

    ``ttft_les`` are the time-to-first-token bounds (``les`` when ``None``).
    """
    one = {"provider": provider}
    series = Series()
    for index in (AVAILABILITY, ERROR_RATE, HEALTH):
        series.add(index, names[index], one)
    for state in STATES:
        series.add(STATE, names[STATE], {"provider": provider, "state": state})
    series.add(COST, names[COST] + "_total", one)
    for outcome in OUTCOMES:
        series.add(REQUESTS, names[REQUESTS] + "_total", {"provider": provider, "outcome": outcome})
    for kind in TOKEN_KINDS:
        series.add(TOKENS, names[TOKENS] + "_total", {"provider": provider, "kind": kind})
    duration = names[DURATION]
    for le in les:
        series.add(DURATION, duration + "_bucket", {"provider": provider, "le": _LE.get(le) or _le_text(le)})
    series.add(DURATION, duration + "_count", one)
    series.add(DURATION, duration + "_sum", one)
    ttft = names[TTFT]
    for le in les if ttft_les is None else ttft_les:
        series.add(TTFT, ttft + "_bucket", {"provider": provider, "le": _LE.get(le) or _le_text(le)})
    series.add(TTFT, ttft + "_count", one)
    series.add(TTFT, ttft + "_sum", one)
    series.add(DEADLINES, names[DEADLINES] + "_total", one)
    return series


def fixed_values(snap: ProviderSnapshot) -> list[float]:
    """The values of :func:`fixed_series`; the histogram's count is its ``+Inf`` bucket."""
    state, requests = snap.state, snap.requests_total
    buckets = [count for _le, count in snap.duration_buckets]
    # no time to first token recorded yet: the duration histogram's bounds, all zero
    ttft = [count for _le, count in snap.ttft_buckets] or [0] * len(buckets)
    return [
        snap.availability, snap.error_rate, snap.health_score,
        *[1.0 if s == state else 0.0 for s in STATES],
        snap.cost_total,
        *[requests.get(o, 0) for o in OUTCOMES],
        *snap.tokens_total,
        *buckets, buckets[-1], snap.duration_sum,
        *ttft, ttft[-1], snap.ttft_sum,
        snap.deadline_exceeded_total,
    ]


def add_exemplars(
    samples: list[Sample], start: int, exemplars: tuple[tuple[str, float, float] | None, ...]
) -> None:
    """Give the ``_bucket`` samples appended to ``samples`` from ``start`` on their ``trace_id`` exemplars.

    ``exemplars`` is ``ProviderSnapshot.duration_exemplars``, in bucket order.
    Only the OpenMetrics exposition shows them.
    """
    found = iter(exemplars)
    for index in range(start, len(samples)):
        sample = samples[index]
        if not sample.name.endswith("_bucket"):
            continue
        exemplar = next(found, None)
        if exemplar is not None:
            trace_id, value, timestamp = exemplar
            samples[index] = sample._replace(exemplar=Exemplar({"trace_id": trace_id}, value, timestamp))


ModelLabels = dict[tuple[str, str], tuple[dict[str, str], ...]]
"""Label sets of a (provider, model) pair: the pair, then with each quantile."""


def model_series(
    names: tuple[str, ...],
    snap: ProviderSnapshot,
    budget: list[int],
    series: Series,
    values: list[float],
    cache: ModelLabels,
) -> None:
    """Per-model gauges while ``budget[0]`` pairs remain; the rest counted in ``budget[1]``."""
    models = snap.models
    kept = max(0, min(len(models), budget[0]))
    budget[0] -= kept
    budget[1] += len(models) - kept
    labels = []
    for model in models[:kept]:
        pair = cache.get((snap.name, model.model))
        if pair is None:
            one = {"provider": snap.name, "model": model.model}
            pair = cache[(snap.name, model.model)] = (one, *({**one, "quantile": q} for q, _ in _QUANTILES))
        labels.append(pair)
    windows = [model.window for model in models[:kept]]
    pairs = [pair[0] for pair in labels]
    series.add_run(MODEL_CALLS, names[MODEL_CALLS], pairs)
    series.add_run(MODEL_ERROR_RATE, names[MODEL_ERROR_RATE], pairs)
    series.add_run(MODEL_COST, names[MODEL_COST], pairs)
    values += [w.calls for w in windows]
    values += [w.error_rate for w in windows]
    values += [w.cost_usd for w in windows]
    quantile_labels = []
    for pair, window in zip(labels, windows, strict=True):
        for label_set, value in zip(pair[1:], (window.p50, window.p95, window.p99), strict=True):
            if value is not None:
                quantile_labels.append(label_set)
                values.append(value)
    series.add_run(MODEL_LATENCY, names[MODEL_LATENCY], quantile_labels)
