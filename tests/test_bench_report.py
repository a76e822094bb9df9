"""benchmarks/report.py: the goals and tables docs/benchmarks.md is rewritten from."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
report = pytest.importorskip("report")
layout = pytest.importorskip("report_layout")


def entry(group: str, name: str, minimum: float, **extra: Any) -> dict[str, Any]:
    """One pytest-benchmark entry as its JSON holds it."""
    stats = {"min": minimum, "median": minimum * 1.01}
    return {"group": group, "name": name, "stats": stats, "extra_info": extra}


def run(*entries: dict[str, Any]) -> dict[str, Any]:
    """A pytest-benchmark JSON document holding ``entries``."""
    return {
        "benchmarks": list(entries), "datetime": "2026-11-27T20:00:00", "version": "5.3.1",
        "commit_info": {"id": "abcdef0", "dirty": False},
        "machine_info": {"cpu": {"count": 2, "brand_raw": "Test CPU"}, "python_implementation": "CPython",
                         "python_version": "3.11.7", "system": "Linux", "release": "6"},
    }


def test_interleaved_goals_use_the_bare_rounds_of_the_same_benchmark() -> None:
    """The transport goals divide ours by the bare minimum of the interleaved rounds, and say met or not."""
    page = report.render(run(
        entry(layout.INTERLEAVED, "x[get]", 0.1025, peer="get", bare_min=0.1),
        entry(layout.INTERLEAVED, "x[post]", 0.104, peer="post", bare_min=0.1),
    ), {})
    goal = "| transport vs bare, `{}` (interleaved, in memory) | {} | ≤ 1.03× | {} |"
    assert goal.format("client.get", "1.025×", "met") in page
    assert "(interleaved, in memory) | 1.040× | ≤ 1.03× | **not met** |" in page
    assert goal.format("AsyncClient", "not in this run", "—") in page
    assert "| `client.get`, in-memory body | 102 µs | 100 µs | **1.025×** | +2.5 µs |" in page
    rows = ["`client.get`, in-memory body |", "from the body, in-memory body |"]
    assert [page.index(row) for row in rows] == sorted(page.index(row) for row in rows)  # declared order


def test_the_throughput_goal_is_bare_over_ours_in_the_same_rounds() -> None:
    """Threads: the bare minimum of the interleaved rounds over ours; higher is better, 0.97× the bar."""
    def page_for(ours: float) -> str:
        page: str = report.render(run(
            entry(layout.THREADS, "test_transport_threads[bare]", 0.090, peer="bare"),
            entry(layout.THREADS, "test_transport_threads[resilience]", ours, peer="resilience",
                  bare_min=0.100),
        ), {})
        return page

    goal = "| 8 threads × 1 ms (real upstream): throughput vs bare (interleaved) | {} | ≥ 0.97× | {} |"
    assert goal.format("0.980×", "met") in page_for(0.102)  # 0.100 / 0.102, not 0.090 / 0.102
    assert goal.format("0.952×", "**not met**") in page_for(0.105)


def test_ratios_are_of_minimums_against_the_group_baseline() -> None:
    """A plain group's × column is each entry's minimum over its baseline's."""
    page = report.render(run(
        entry(layout.GET, "test_transport_get[bare]", 0.080, peer="bare"),
        entry(layout.GET, "test_transport_get[resilience]", 0.084, peer="resilience"),
    ), {})
    assert "| **resilience** `ResilientTransport` | 84 µs | 84.8 µs | **1.05×** |" in page


def test_prose_between_markers_survives_a_rewrite(tmp_path: Path) -> None:
    """Hand-written text between prose markers is put back after its section."""
    prose = {"transport": "Hand-written.\n"}
    page = report.render(run(entry(layout.GET, "x", 0.08, peer="bare")), prose)
    assert "<!-- prose transport -->\nHand-written.\n<!-- /prose -->" in page


def test_callgrind_goals_and_table_come_from_the_counted_results() -> None:
    """Each counted case becomes a goal row (met or not against its target) and a table row."""
    import report_callgrind

    results = [
        {"case": "sync_cost", "stack": "httpx2", "bare": 1_000_000.0, "wrapped": 1_020_000.0,
         "ratio": 1.02, "extra": 20_000.0},
        {"case": "async_cost", "stack": "httpx", "bare": 1_000_000.0, "wrapped": 1_050_000.0,
         "ratio": 1.05, "extra": 50_000.0},
        {"case": "guard", "stack": "pybreaker", "bare": 15_000.0, "wrapped": 8_000.0, "ratio": 8 / 15,
         "extra": -7_000.0},
        {"case": "sync_sse", "stack": "httpx", "bare": None, "wrapped": None, "ratio": None, "extra": None},
        {"case": "sync_chunked", "stack": "httpx2", "bare": 1_000_000.0, "wrapped": 1_060_000.0,
         "ratio": 1.06, "extra": 60_000.0},
    ]
    page = report.render(run(), {}, callgrind=results)
    assert "chunked JSON body with `usage.cost` (no Content-Length) | httpx2 | 1,000,000 | 1,060,000" in page
    assert "(no Content-Length), httpx2 (instructions)" not in page  # no goal of its own
    assert "JSON body with `usage.cost`, httpx2 (instructions) | 1.020× | ≤ 1.03× | met |" in page
    assert "JSON with `usage.cost`, httpx (instructions) | 1.050× | ≤ 1.03× | **not met** |" in page
    assert "| `registry.guard` vs pybreaker (instructions) | 0.533× | ≤ 0.50× | **not met** |" in page
    assert "SSE stream of 22 events with final usage, httpx (instructions) | failed |" in page
    assert "| 1,000,000 | 1,020,000 | **1.020×** | +20,000 |" in page
    assert report_callgrind.HTTP_GOAL == 1.03


OTEL = [
    {"case": "sync_cost", "stack": "httpx2", "n": 400, "no_otel": 1_000_000.0, "untraced": 1_004_000.0,
     "traced": 1_254_000.0, "api_ratio": 1.004, "span_extra": 250_000.0, "error": None},
    {"case": "async_cost", "stack": "httpx2", "n": 400, "no_otel": 1_000_000.0, "untraced": 1_020_000.0,
     "traced": None, "api_ratio": 1.02, "span_extra": None, "error": "wrapped_traced: boom"},
]
COUNTED = [{"case": "sync_cost", "stack": "httpx2", "bare": 900_000.0, "wrapped": 1_004_000.0,
            "ratio": 1_004_000 / 900_000, "extra": 104_000.0}]
INFO = {"datetime": "2026-12-02T00:30:00+00:00", "commit": "abcdef0+", "python": "3.11.7", "warmup": 30}


def test_otel_goals_and_table_come_from_the_comparison() -> None:
    """The API-without-provider ratio is a goal within 1 %; the span's cost is a table column."""
    page = report.render(run(), {}, callgrind=COUNTED, otel=OTEL, callgrind_info=INFO)
    goal = ("| opentelemetry-api, no provider, vs not installed: {}, httpx2 (instructions) | {} "
            "| within ±1 % | {} |")
    assert goal.format("sync POST, JSON body with `usage.cost`", "1.0040×", "met") in page
    assert goal.format("async POST, JSON with `usage.cost`", "1.0200×", "**not met**") in page
    assert "| 1,000,000 | 1,004,000 | **1.0040×** | 1,254,000 | **+250,000** | +24.9% |" in page
    assert "| 1,000,000 | 1,020,000 | **1.0200×** | failed | — | — |" in page
    assert "- async_cost on httpx2: wrapped_traced: boom" in page
    assert "**Counted:** 2026-12-02 00:30 UTC at commit `abcdef0` (with uncommitted changes)" in page
    assert page.index("## Goals") < page.index("## Per-request instructions") < page.index("## OpenTelemetry")


def test_callgrind_only_rewrites_its_rows_and_sections_and_keeps_the_rest() -> None:
    """A splice replaces the callgrind goal rows and sections; wall-clock rows, sections and prose stay."""
    old_counted = [{**COUNTED[0], "wrapped": 1_100_000.0, "ratio": 1.1, "extra": 200_000.0}]
    prose = {"callgrind": "Counting notes.\n", "otel": "Span notes.\n", "core": "Core notes.\n"}
    old = report.render(run(entry(layout.GET, "x", 0.08, peer="bare")), prose, callgrind=old_counted)
    assert "1.100×" in old and "## OpenTelemetry" not in old
    new = report.splice_callgrind(old, COUNTED, OTEL, INFO)
    assert "1.100×" not in new and "| 900,000 | 1,004,000 | **1.116×** | +104,000 |" in new
    assert new.count("(instructions) |") == 3  # one HTTP goal, two OpenTelemetry goals
    assert "| 8 threads × 1 ms (real upstream): throughput vs bare (interleaved) | not in this run |" in new
    for key, body in prose.items():
        assert new.count(f"<!-- prose {key} -->\n{body}<!-- /prose -->") == 1
    assert new.index("## Goals") < new.index("## Per-request") < new.index("## OpenTelemetry")
    assert report.splice_callgrind(new, COUNTED, OTEL, INFO) == new  # idempotent
