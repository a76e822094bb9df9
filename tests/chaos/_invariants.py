"""The chaos suite's invariants, asserted after every scenario, and the tally of what was checked.

1. **typed endings**: every request ended in a response or a typed exception
   (its own stack's ``HTTPError``, ``CircuitOpenError``); nothing else escaped
   (an exception of the other stack included), none lost.
2. **attempts**: attempts the library recorded (requests by outcome less
   ``rejected``) plus the stale-connection resends (counted as retries, not
   recorded as attempts) equal the requests the upstream received.
3. **cost**: the cost counter, the stats window's cost and the models' costs
   all equal the cost in the bodies the upstream sent whole.
4. **breaker**: every transition counted and every step of the history is an
   allowed edge of the state machine; the history replays to the state.
5. **no leaks**: with the clients closed, no thread, task, socket or file
   descriptor is left that was not there before, and no upstream handler runs.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import threading
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
from chaos._drive import HOST, Run
from chaos._upstream import Upstream

from resilience import ProviderRegistry
from resilience._core.breaker import CLOSED, DISABLED, FORCED_OPEN, HALF_OPEN, OPEN, STATES
from resilience._core.provider import Provider

AUTOMATIC = frozenset({(CLOSED, OPEN), (OPEN, HALF_OPEN), (HALF_OPEN, CLOSED), (HALF_OPEN, OPEN)})
"""Edges the breaker takes by itself."""

MANUAL = frozenset(
    (old, new) for old in STATES for new in (FORCED_OPEN, DISABLED, CLOSED) if old != new
)
"""Edges ``force_open()``, ``disable()`` and ``reset()`` add."""

SETTLE_SECONDS = 15.0
EXTRA_COUNTS = ("transitions", "stale_resends", "refused_attempts")
HISTORY_MAX = 128


@dataclass(frozen=True)
class Resources:
    """Threads, tasks, descriptors and sockets of this process at one moment."""

    threads: frozenset[threading.Thread]
    tasks: frozenset[asyncio.Task[Any]]
    fds: int
    sockets: int

    @classmethod
    def now(cls) -> Resources:
        """What the process holds now (tasks: the running loop's, if any)."""
        try:
            tasks = frozenset(asyncio.all_tasks())
        except RuntimeError:
            tasks = frozenset()
        names = []
        for fd in os.listdir("/proc/self/fd"):
            try:
                names.append(os.readlink(f"/proc/self/fd/{fd}"))
            except OSError:  # the descriptor listdir itself used, now closed
                continue
        sockets = sum(name.startswith("socket:") for name in names)
        return cls(frozenset(threading.enumerate()), tasks, len(names), sockets)

    def left_behind(self, before: Resources) -> dict[str, object]:
        """What is here now and was not ``before`` (empty: nothing leaked)."""
        extra: dict[str, object] = {}
        if self.threads - before.threads:
            extra["threads"] = sorted(t.name for t in self.threads - before.threads)
        if self.tasks - before.tasks:
            extra["tasks"] = [repr(t) for t in self.tasks - before.tasks]
        if self.fds > before.fds:
            extra["fds"] = self.fds - before.fds
        if self.sockets > before.sockets:
            extra["sockets"] = self.sockets - before.sockets
        return extra


async def assert_nothing_left(before: Resources, upstream: Upstream) -> None:
    """Invariant 5: wait (bounded) for server-side sockets to close, then nothing may be extra."""
    with anyio.move_on_after(SETTLE_SECONDS):
        while Resources.now().left_behind(before) or upstream.in_flight:  # noqa: ASYNC110  # polled
            await anyio.sleep(0.02)
    assert Resources.now().left_behind(before) == {}
    assert upstream.in_flight == 0


def assert_typed_endings(run: Run, expected: int) -> None:
    """Invariant 1: ``expected`` requests, each a response or a typed exception."""
    assert run.escaped == []
    assert run.sent == expected
    assert sum(run.outcomes.values()) == expected


def recorded(provider: Provider) -> int:
    """Attempts the provider recorded (rejections are not attempts)."""
    totals = provider.snapshot().requests_total
    return sum(totals.values()) - totals["rejected"]


def assert_attempts(registry: ProviderRegistry, upstream: Upstream, *, down: tuple[str, ...] = ()) -> int:
    """Invariant 2; returns the stale resends. Providers in ``down`` never reach the upstream."""
    providers = [p for p in registry.providers() if p.name not in down]
    stale = sum(p.snapshot().retries_total.get("stale_connection", 0) for p in providers)
    assert sum(map(recorded, providers)) + stale == upstream.total, dict(upstream.received)
    for name in (n for n in down if n in registry):
        snap = registry.get(name).snapshot()
        assert set(k for k, v in snap.requests_total.items() if v) <= {"failure", "rejected"}
    return stale


def assert_rejections(registry: ProviderRegistry, run: Run) -> None:
    """Callers saw at most as many ``CircuitOpenError`` as the breakers rejected (retries end quietly)."""
    rejected = sum(p.snapshot().requests_total["rejected"] for p in registry.providers())
    assert run.circuit_open <= rejected
    if not any(p.snapshot().transitions_total for p in registry.providers()):
        assert rejected == 0


def assert_cost(provider: Provider, upstream: Upstream) -> None:
    """Invariant 3, exact: costs are multiples of 1/64."""
    snap = provider.snapshot()
    assert snap.cost_total == upstream.cost_sent, (snap.cost_total, upstream.cost_sent, snap.requests_total)
    assert snap.window.cost_usd == upstream.cost_sent
    assert sum(model.window.cost_usd for model in snap.models) == upstream.cost_sent


def assert_transitions(provider: Provider, allowed: frozenset[tuple[str, str]] = AUTOMATIC) -> int:
    """Invariant 4; returns the number of transitions."""
    snap = provider.snapshot()
    assert set(snap.transitions_total) <= allowed
    times = [t for t, _ in snap.history]
    states = [s for _, s in snap.history]
    steps = list(itertools.pairwise(states))
    assert all(step in allowed for step in steps), steps
    assert times == sorted(times)
    assert states[-1] == snap.state
    if len(states) < HISTORY_MAX:  # nothing fell off the bounded history
        assert states[0] == CLOSED
        assert Counter(steps) == Counter(snap.transitions_total)
    return sum(snap.transitions_total.values())


@dataclass
class Tally:
    """Counts of faults injected and invariants checked, written for the closing note."""

    faults: Counter[str] = field(default_factory=Counter)
    invariants: Counter[str] = field(default_factory=Counter)
    scenarios: list[dict[str, Any]] = field(default_factory=list)

    def scenario(self, name: str, run: Run, upstream: Upstream, seconds: float, **extra: Any) -> None:
        """Record one scenario: the faults the upstream served and what the callers saw.

        ``name`` ends with how it was driven and on which stack, e.g. ``healthy[async,httpx2]``.
        """
        self.faults.update(upstream.received)
        self.scenarios.append(
            {
                "name": name,
                "seconds": round(seconds, 2),
                "requests": run.sent,
                "upstream_received": dict(upstream.received),
                "caller_saw": dict(run.outcomes),
                "cost_sent_usd": upstream.cost_sent,
                **extra,
            }
        )

    def checked(self, *names: str) -> None:
        """One check of each named invariant passed."""
        self.invariants.update(names)

    def write(self, path: Path) -> None:
        """The tally as JSON."""
        path.parent.mkdir(parents=True, exist_ok=True)
        saw: Counter[str] = Counter()
        totals: Counter[str] = Counter()
        for scenario in self.scenarios:
            saw.update(scenario["caller_saw"])
            totals.update({k: scenario.get(k, 0) for k in EXTRA_COUNTS})
        summary = {
            "faults_injected": dict(sorted(self.faults.items())),
            "invariants_checked": dict(sorted(self.invariants.items())),
            "scenarios_run": len(self.scenarios),
            "requests": sum(s["requests"] for s in self.scenarios),
            "upstream_requests": sum(self.faults.values()) - self.faults["refused"],
            "cost_sent_usd": sum(s["cost_sent_usd"] for s in self.scenarios),
            "caller_saw": dict(sorted(saw.items())),
            **dict(sorted(totals.items())),
            "seconds": round(sum(s["seconds"] for s in self.scenarios), 2),
            "scenarios": self.scenarios,
        }
        path.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")


async def check_scenario(
    name: str,
    registry: ProviderRegistry,
    upstream: Upstream,
    run: Run,
    expected: int,
    before: Resources,
    tally: Tally,
    seconds: float,
    *,
    allowed: frozenset[tuple[str, str]] = AUTOMATIC,
) -> dict[str, int]:
    """Every invariant, each tallied once it held; returns the scenario's breaker and resend counts."""
    assert_typed_endings(run, expected)
    tally.checked("typed_endings")
    stale = assert_attempts(registry, upstream, down=("down",))
    tally.checked("attempts_equal_upstream_requests")
    assert_rejections(registry, run)
    tally.checked("rejections_bounded")
    transitions = sum(assert_transitions(p, allowed) for p in registry.providers())
    tally.checked("breaker_edges_allowed")
    # first: the upstream counts a body's cost once its send returns, which may be after the client
    # has read and recorded it (a handler still finishing would make the cost check race)
    await assert_nothing_left(before, upstream)
    tally.checked("nothing_left_behind")
    provider = registry.get(HOST)
    assert_cost(provider, upstream)
    tally.checked("cost_equals_cost_sent")
    refused = registry.get("down").snapshot().requests_total["failure"] if "down" in registry else 0
    counts = {"transitions": transitions, "stale_resends": stale, "refused_attempts": refused}
    tally.scenario(name, run, upstream, seconds, **counts)
    if refused:
        tally.faults["refused"] += refused
    return counts
