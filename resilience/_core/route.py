"""Routes: one logical model served by several equivalent providers.

The core half of routes: the validated configuration (:class:`Target`,
:class:`RoutePolicy`), the choice of the targets a call tries, which is a
pure function of each target's :class:`TargetView` (:func:`order_targets`,
:func:`soonest_retry_after`), and the :class:`Route` a registry builds,
which reads its providers at call time and counts route calls, failovers
and hedges. The attempt loop over the targets belongs to the HTTP layer.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal
from urllib.parse import urlsplit

from resilience._core.config import Duration, _rate, _seconds, _statuses
from resilience._core.errors import ConfigError
from resilience._core.snapshot import RouteSnapshot, TargetView
from resilience._core.window import FAILURE, REJECTED, SUCCESS, TimeWindow

if TYPE_CHECKING:
    from resilience._core.provider import Provider

__all__ = [
    "DEFAULT_FAILOVER_STATUSES", "Route", "RoutePolicy", "Target", "TargetView",
    "order_targets", "route_host", "soonest_retry_after",
]

DEFAULT_FAILOVER_STATUSES = frozenset({*range(500, 600), 429, 401, 403, 404, 408})
"""Statuses that move a route call to its next target: 5xx, 429, 401, 403, 404, 408."""

ROUTE_OUTCOMES = ("success", "failure", "rejected")
HEDGE_RESULTS = ("won", "lost")
_OUTCOME_INDEX = {"success": SUCCESS, "failure": FAILURE, "rejected": REJECTED}
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+\Z")  # an HTTP header name (RFC 9110 token)
_BAD_VALUE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")  # header values: no CR, LF or other controls


def _header_pairs(value: object) -> tuple[tuple[str, str], ...]:
    if value is None:
        return ()
    if isinstance(value, Mapping):
        items: Iterable[object] = value.items()
    elif isinstance(value, tuple):  # what ``Target.headers`` holds, e.g. through dataclasses.replace
        items = value
    else:
        raise ConfigError(f"headers must be a mapping of header names to values, got {value!r}")
    pairs: dict[str, str] = {}
    for item in items:
        if not (isinstance(item, tuple) and len(item) == 2):
            raise ConfigError(f"headers must be a mapping of header names to values, got {value!r}")
        name, text = item
        if not isinstance(name, str) or not _TOKEN.match(name):
            raise ConfigError(f"headers must have header names (HTTP tokens) as keys, got {name!r}")
        if not isinstance(text, str) or _BAD_VALUE.search(text):
            raise ConfigError(
                f"headers[{name!r}] must be a string without control characters (CR, LF ...)"
            )
        key = name.lower()
        if key in pairs:
            raise ConfigError(f"headers names {key!r} twice (header names are case-insensitive)")
        pairs[key] = text
    return tuple(pairs.items())


def _base_url(value: object) -> str:
    if not isinstance(value, str):
        raise ConfigError(f"base_url must be an absolute http(s) URL string, got {value!r}")
    try:
        parts = urlsplit(value)
        port_ok = parts.port is None or parts.port > 0
    except ValueError:
        port_ok = False
    if (
        not port_ok
        or parts.scheme not in ("http", "https")
        or not parts.hostname
        or parts.query
        or parts.fragment
        or value != value.strip()
        or any(c.isspace() or ord(c) < 32 for c in value)
    ):
        raise ConfigError(
            f"base_url must be an absolute http(s) URL without query or fragment, got {value!r}"
        )
    return value.rstrip("/")


@dataclass(frozen=True, slots=True, init=False, repr=False)
class Target:
    """One provider serving a route, with what its attempts change in the request.

    Args:
        provider: the name of a registered provider; each attempt passes its
            breaker and is recorded under it.
        base_url: absolute ``http(s)`` URL (no query); an attempt goes to it
            plus the rest of the request's path under the route's
            ``base_url``, query kept. Stored without a trailing slash.
        model: replaces the request body's ``"model"`` for this target
            (``None`` keeps the caller's).
        headers: headers set or replaced (case-insensitive) on this target's
            attempts, e.g. its own ``authorization``. Kept as ``(name, value)``
            pairs, names lower-cased; the repr hides the values.

    Raises:
        ConfigError: a bad field, named in the message.
    """

    provider: str
    base_url: str
    model: str | None
    headers: tuple[tuple[str, str], ...]

    def __init__(
        self,
        provider: str,
        *,
        base_url: str,
        model: str | None = None,
        headers: Mapping[str, str] | tuple[tuple[str, str], ...] | None = None,
    ) -> None:
        if not isinstance(provider, str) or not provider.strip():
            raise ConfigError(f"provider must be a non-empty provider name, got {provider!r}")
        if model is not None and (not isinstance(model, str) or not model):
            raise ConfigError(f"model must be None or a non-empty string, got {model!r}")
        object.__setattr__(self, "provider", provider)
        object.__setattr__(self, "base_url", _base_url(base_url))
        object.__setattr__(self, "model", model)
        object.__setattr__(self, "headers", _header_pairs(headers))

    def __repr__(self) -> str:
        shown = {name: "***" for name, _value in self.headers}  # credentials never reach a log
        extra = f", model={self.model!r}" if self.model is not None else ""
        extra += f", headers={shown!r}" if shown else ""
        return f"Target({self.provider!r}, base_url={self.base_url!r}{extra})"


@dataclass(frozen=True, kw_only=True, slots=True)
class RoutePolicy:
    """How a route chooses and moves between its targets.

    Args:
        order: ``"health"``: by health score, highest first, declared order on
            ties; ``"priority"``: declared order. Either way a target that
            does not admit a call now is skipped.
        max_targets: cap on the targets tried per call (``None``: all).
        failover_statuses: response statuses that move the call to the next
            target (default 5xx, 429, 401, 403, 404, 408); others are returned.
        hedge_after_seconds: async clients: when the current attempt has not
            committed after this long, the next target starts as well.
        hedge_budget_ratio: hedges started stay at most
            ``max(1, ratio x route calls)`` over the stats window, in [0, 1].
        deadline_seconds: one deadline over a whole route call (the earliest
            deadline wins).

    Raises:
        ConfigError: a bad field, named in the message.
    """

    order: Literal["health", "priority"] = "health"
    max_targets: int | None = None
    failover_statuses: frozenset[int] = DEFAULT_FAILOVER_STATUSES
    hedge_after_seconds: Duration | None = None
    hedge_budget_ratio: float = 0.1
    deadline_seconds: Duration | None = None

    def __post_init__(self) -> None:
        if self.order not in ("health", "priority"):
            raise ConfigError(f"order must be 'health' or 'priority', got {self.order!r}")
        cap = self.max_targets
        if cap is not None and (isinstance(cap, bool) or not isinstance(cap, int) or cap < 1):
            raise ConfigError(f"max_targets must be None or an integer >= 1, got {cap!r}")
        object.__setattr__(
            self, "failover_statuses", _statuses("failover_statuses", self.failover_statuses)
        )
        for name in ("hedge_after_seconds", "deadline_seconds"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, _seconds(name, value))
        ratio = _rate("hedge_budget_ratio", self.hedge_budget_ratio, allow_zero=True)
        object.__setattr__(self, "hedge_budget_ratio", ratio)


# -- selection: pure functions of the targets' views ---------------------------


def order_targets(views: Sequence[TargetView], policy: RoutePolicy) -> list[int]:
    """Indexes of the targets a call tries, in order: admitting ones only, capped by ``max_targets``."""
    chosen = _in_order(views, policy.order, admits=True)
    cap = policy.max_targets
    return chosen if cap is None else chosen[:cap]


def _in_order(views: Sequence[TargetView], order: str, *, admits: bool) -> list[int]:
    chosen = [i for i, view in enumerate(views) if bool(view.admits) is admits]
    if order == "health":
        chosen.sort(key=lambda i: -views[i].health_score)  # stable: ties keep the declared order
    return chosen


def soonest_retry_after(views: Sequence[TargetView]) -> float:
    """The soonest any non-admitting target admits again; forced-open ones left out, 1.0 if none is left."""
    waits = [
        view.retry_after for view in views
        if not view.admits and view.state != "forced_open" and view.retry_after is not None
    ]
    return min(waits) if waits else 1.0


def route_host(name: str, index: int) -> str:
    """The host of a route's ``base_url``: a slug of ``name`` and the registry's ``index``, under
    ``.invalid`` (RFC 6761: it never resolves)."""
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")[:63].strip("-") or "route"
    return f"{slug}.route{index}.invalid"


# -- the route -------------------------------------------------------------------


class Route:
    """A route: build with :meth:`resilience.ProviderRegistry.route`.

    ``base_url`` (``http://<slug>.route<N>.invalid``) is where callers send
    requests; ``host`` is its host. Counters are over the registry's stats
    window (``calls``, failovers, hedges started) and since start.
    """

    def __init__(
        self,
        name: str,
        targets: tuple[Target, ...],
        policy: RoutePolicy,
        *,
        host: str,
        providers: tuple[Provider, ...],
        clock: Callable[[], float],
        window_seconds: float,
    ) -> None:
        self.name = name
        self.targets = targets
        self.policy = policy
        self.host = host
        self.base_url = f"http://{host}"
        self._providers = providers
        self._clock = clock
        self._lock = threading.Lock()
        self._calls = TimeWindow(window_seconds, latency=False)
        self._failovers = TimeWindow(window_seconds, latency=False)
        self._hedges = TimeWindow(window_seconds, latency=False)
        self._requests_total = dict.fromkeys(ROUTE_OUTCOMES, 0)
        self._failovers_total: dict[tuple[str, str], int] = {}
        self._hedges_total = dict.fromkeys(HEDGE_RESULTS, 0)

    def __repr__(self) -> str:
        return f"<Route {self.name!r} {[t.provider for t in self.targets]} {self.base_url}>"

    # -- choosing ------------------------------------------------------------------

    def views(self) -> list[TargetView]:
        """Each target as its provider stands now, in declared order."""
        views = []
        for target, provider in zip(self.targets, self._providers, strict=True):
            state, score, admits, retry_after = provider.admission_view()
            views.append(TargetView(target.provider, target.model, state, score, admits, retry_after))
        return views

    def candidates(self) -> tuple[list[tuple[Target, Provider]], float]:
        """The targets to try now, in order, with their providers; and the soonest ``retry_after``
        of the others (what a :class:`resilience.CircuitOpenError` says when the list is empty)."""
        views = self.views()
        targets, providers = self.targets, self._providers
        chosen = [(targets[i], providers[i]) for i in order_targets(views, self.policy)]
        return chosen, soonest_retry_after(views)

    # -- counting ------------------------------------------------------------------

    def record(self, outcome: str) -> None:
        """One route call ended: ``success``, ``failure`` or ``rejected`` (no target admitted it)."""
        index = _OUTCOME_INDEX.get(outcome)
        if index is None:
            raise ValueError(f"outcome must be one of {ROUTE_OUTCOMES}, got {outcome!r}")
        now = self._clock()
        with self._lock:
            self._calls.record(now, index)
            self._requests_total[outcome] += 1

    def record_failover(self, from_provider: str, to_provider: str) -> None:
        """A call moved from one target to the next."""
        now = self._clock()
        key = (from_provider, to_provider)
        with self._lock:
            self._failovers.record(now, SUCCESS)
            self._failovers_total[key] = self._failovers_total.get(key, 0) + 1

    def try_hedge(self) -> bool:
        """Take one hedge from the budget; ``False`` when it is spent.

        Hedges started over the stats window stay at most
        ``max(1, hedge_budget_ratio x route calls over the window)``.
        """
        now = self._clock()
        with self._lock:
            calls = _route_calls(self._calls.counts(now))
            budget = max(1.0, self.policy.hedge_budget_ratio * calls)
            if self._hedges.counts(now)[SUCCESS] + 1 > budget:
                return False
            self._hedges.record(now, SUCCESS)
            return True

    def record_hedge(self, result: str) -> None:
        """How a hedge started ended: ``won`` (it committed first) or ``lost``."""
        if result not in self._hedges_total:
            raise ValueError(f"result must be one of {HEDGE_RESULTS}, got {result!r}")
        with self._lock:
            self._hedges_total[result] += 1

    # -- reading -------------------------------------------------------------------

    def snapshot(self) -> RouteSnapshot:
        """The route now: its targets in the order a call would try them (the others after) and counts."""
        views = self.views()
        now = self._clock()
        with self._lock:
            calls = _route_calls(self._calls.counts(now))
            failovers = self._failovers.counts(now)[SUCCESS]
            hedges = self._hedges.counts(now)[SUCCESS]
            requests, hedges_total = dict(self._requests_total), dict(self._hedges_total)
            failovers_total = dict(self._failovers_total)
        order = self.policy.order
        ranked = (*_in_order(views, order, admits=True), *_in_order(views, order, admits=False))
        return RouteSnapshot(
            name=self.name,
            base_url=self.base_url,
            calls=calls,
            failovers=failovers,
            hedges=hedges,
            targets=tuple(views[i] for i in ranked),
            requests_total=requests,
            failovers_total=failovers_total,
            hedges_total=hedges_total,
        )


def _route_calls(counts: list[int]) -> int:
    return counts[SUCCESS] + counts[FAILURE] + counts[REJECTED]
