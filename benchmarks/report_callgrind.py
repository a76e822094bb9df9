"""The callgrind part of docs/benchmarks.md: per-request instructions and the goals they meet.

Rendered from :func:`bench_callgrind.measure`'s results (as ``Result.as_dict()``
gives them), so ``report.py`` can also render a saved run.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

HTTP_GOAL = 1.03
"""Wrapped over bare, instructions per request, for each HTTP case on each stack (issue 13)."""
GUARD_GOALS = {"pybreaker": 0.5, "circuitbreaker": 1.0}
"""``registry.guard`` over each peer breaker's call, in instructions."""
CASES = {
    "sync_json": "sync POST, JSON body without usage",
    "sync_cost": "sync POST, JSON body with `usage.cost`",
    "sync_sse": "sync POST, SSE stream of 22 events with final usage",
    "async_cost": "async POST, JSON with `usage.cost`",
}


GUARD = "`registry.guard` vs the peer's call"


def goal_rows(results: Iterable[Mapping[str, Any]]) -> list[str]:
    """One goals-table row per callgrind goal (the table's header is the caller's)."""
    rows = []
    for r in results:
        ratio = r.get("ratio")
        if r["case"] == "guard":
            title, target = f"`registry.guard` vs {r['stack']} (instructions)", GUARD_GOALS.get(r["stack"])
        else:
            title, target = f"{CASES.get(r['case'], r['case'])}, {r['stack']} (instructions)", HTTP_GOAL
        if target is None:
            continue
        if ratio is None:
            rows.append(f"| {title} | failed | ≤ {target:.2f}× | — |")
            continue
        verdict = "met" if ratio <= target else "**not met**"
        rows.append(f"| {title} | {ratio:.3f}× | ≤ {target:.2f}× | {verdict} |")
    return rows


def table(results: Iterable[Mapping[str, Any]]) -> list[str]:
    """| case | stack | bare | wrapped | ratio | extra |, instructions per request."""
    lines = ["| case | stack | bare (Ir/request) | resilience (Ir/request) | ratio | extra |",
             "|---|---|---:|---:|---:|---:|"]
    for r in results:
        case = GUARD if r["case"] == "guard" else CASES.get(r["case"], r["case"])
        counts = (r.get("bare"), r.get("wrapped"))
        bare, wrapped = (f"{v:,.0f}" if v is not None else "failed" for v in counts)
        ratio = f"**{r['ratio']:.3f}×**" if r.get("ratio") is not None else "—"
        extra = f"{r['extra']:+,.0f}" if r.get("extra") is not None else "—"
        lines.append(f"| {case} | {r['stack']} | {bare} | {wrapped} | {ratio} | {extra} |")
    return lines
