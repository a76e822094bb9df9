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
    "sync_chunked": "sync POST, chunked JSON body with `usage.cost` (no Content-Length)",
    "sync_sse": "sync POST, SSE stream of 22 events with final usage",
    "async_cost": "async POST, JSON with `usage.cost`",
}
UNGOALED = frozenset({"sync_chunked"})
"""Counted for what they show, with no goal of their own: the chunked JSON body is the path of providers
that send no ``Content-Length`` (the body streams through the recording stream, not read whole)."""


GUARD = "`registry.guard` vs the peer's call"


def goal_rows(results: Iterable[Mapping[str, Any]]) -> list[str]:
    """One goals-table row per callgrind goal (the table's header is the caller's)."""
    rows = []
    for r in results:
        ratio = r.get("ratio")
        if r["case"] == "guard":
            title, target = f"`registry.guard` vs {r['stack']} (instructions)", GUARD_GOALS.get(r["stack"])
        else:
            target = None if r["case"] in UNGOALED else HTTP_GOAL
            title = f"{CASES.get(r['case'], r['case'])}, {r['stack']} (instructions)"
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


OTEL_API_GOAL = 0.01
"""opentelemetry-api installed and no tracer provider, against not installed: within 1 % (issue 16)."""
OTEL_TITLE = "OpenTelemetry: the span check and a span's cost (callgrind)"
OTEL_INTRO = (
    "The same harness counts `ResilientTransport` three ways on the same stack: with `opentelemetry` made "
    "unimportable in the client (as without the package), with opentelemetry-api installed and no tracer "
    "provider (the per-call check only: the `wrapped` runs of the table above), and with an "
    "opentelemetry-sdk `TracerProvider` set globally before the warm-up, a `SimpleSpanProcessor` over an "
    "exporter that drops the spans (the client checks it got one span per request). The span's cost is "
    "the library's span (start, attributes, end, the trace-id exemplar) plus the SDK's work for it: "
    "ids, timestamps, the processor's `on_start`/`on_end`, the exporter call."
)


def otel_goal_rows(results: Iterable[Mapping[str, Any]]) -> list[str]:
    """One goals-table row per OpenTelemetry comparison: untraced with the API over without it, within 1 %."""
    rows = []
    target = f"within ±{OTEL_API_GOAL * 100:g} %"
    for r in results:
        title = (f"opentelemetry-api, no provider, vs not installed: {CASES.get(r['case'], r['case'])}, "
                 f"{r['stack']} (instructions)")
        ratio = r.get("api_ratio")
        if ratio is None:
            rows.append(f"| {title} | failed | {target} | — |")
            continue
        verdict = "met" if abs(ratio - 1.0) <= OTEL_API_GOAL else "**not met**"
        rows.append(f"| {title} | {ratio:.4f}× | {target} | {verdict} |")
    return rows


def otel_table(results: Iterable[Mapping[str, Any]]) -> list[str]:
    """Without opentelemetry, API and no provider, their ratio, provider set, the span: Ir per request."""
    lines = ["| case | stack | without opentelemetry | opentelemetry-api, no provider | ratio "
             "| SDK provider, spans dropped | span (Ir/request) | span / untraced request |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        counts = (r.get("no_otel"), r.get("untraced"), r.get("traced"))
        no_otel, untraced, traced = (f"{v:,.0f}" if v is not None else "failed" for v in counts)
        ratio = f"**{r['api_ratio']:.4f}×**" if r.get("api_ratio") is not None else "—"
        extra = r.get("span_extra")
        span = f"**{extra:+,.0f}**" if extra is not None else "—"
        share = f"{extra / r['untraced']:+.1%}" if extra is not None and r.get("untraced") else "—"
        lines.append(f"| {CASES.get(r['case'], r['case'])} | {r['stack']} | {no_otel} | {untraced} | {ratio} "
                     f"| {traced} | {span} | {share} |")
    failures = [f"- {r['case']} on {r['stack']}: {r['error']}" for r in results if r.get("error")]
    return lines + (["", *failures] if failures else [])


def run_line(info: Mapping[str, Any]) -> str:
    """When and how the counts were taken (from ``bench_callgrind.py --json``'s document), or ``""``."""
    if not info:
        return ""
    parts = []
    if info.get("datetime"):
        parts.append(f"{str(info['datetime'])[:16].replace('T', ' ')} UTC")
    commit = info.get("commit")
    if commit:
        dirty = commit.endswith("+")
        parts.append(f"at commit `{commit.rstrip('+')}`" + (" (with uncommitted changes)" if dirty else ""))
    tools = [f"CPython {info['python']}" if info.get("python") else "", str(info.get("valgrind") or "")]
    text = "**Counted:** " + " ".join(parts) + (", " if parts else "") + ", ".join(t for t in tools if t)
    if info.get("warmup") is not None:
        text += f"; warm-up {info['warmup']} requests"
    if info.get("seconds") is not None:
        text += f"; {float(info['seconds']) / 60:.0f} min for the whole run"
    return text + "."
