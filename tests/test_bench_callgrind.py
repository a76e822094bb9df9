"""benchmarks/bench_callgrind.py: instructions per request under callgrind, bare and wrapped."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
from system_tools import require_binary

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import bench_callgrind  # benchmarks/ is no package: importable once on sys.path, just above

Result = bench_callgrind.Result


@pytest.mark.integration
def test_counts_instructions_per_request_bare_and_wrapped() -> None:
    """A tiny run against the uvicorn upstream counts positive Ir per request both ways, a finite ratio."""
    valgrind = require_binary("valgrind")
    [result] = bench_callgrind.measure(["sync_json"], n=5, stacks=["httpx"], warmup=2, valgrind=valgrind)
    assert result.error is None
    assert result.bare is not None and result.bare > 0
    assert result.wrapped is not None and result.wrapped > 0
    assert result.ratio is not None and math.isfinite(result.ratio)


def test_table_shows_ratios_and_failures() -> None:
    """The markdown table has a row per result; a failed run says so and gives its error below."""
    table = bench_callgrind.markdown([
        Result(case="sync_json", stack="httpx", n=5, bare=1000.0, wrapped=1500.0),
        Result(case="sync_json", stack="httpx2", n=5, bare=900.0, error="wrapped: AssertionError"),
    ])
    assert "| sync_json | httpx | 1,000 | 1,500 | 1.50× | +500 |" in table
    assert "| sync_json | httpx2 | 900 | failed | — | — |" in table
    assert "- sync_json on httpx2: wrapped: AssertionError" in table
