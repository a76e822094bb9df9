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
