"""benchmarks/bench_callgrind.py: instructions per request under callgrind, bare and wrapped."""

from __future__ import annotations

import contextlib
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

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


OtelResult = bench_callgrind.OtelResult


def test_otel_table_shows_the_api_ratio_the_span_and_failures() -> None:
    """The OpenTelemetry table: untraced over no-otel as a ratio, traced less untraced as the span's cost."""
    table = bench_callgrind.otel_markdown([
        OtelResult(case="sync_cost", stack="httpx2", n=5, no_otel=1000.0, untraced=1005.0, traced=1300.0),
        OtelResult(case="async_cost", stack="httpx2", n=5, no_otel=900.0, error="wrapped_traced: boom"),
    ])
    assert "| sync_cost | httpx2 | 1,000 | 1,005 | 1.0050× | 1,300 | +295 |" in table
    assert "| async_cost | httpx2 | 900 | failed | — | failed | — |" in table
    assert "- otel async_cost on httpx2: wrapped_traced: boom" in table
    result = OtelResult(case="sync_cost", stack="httpx2", n=5, no_otel=1000.0, untraced=1005.0, traced=1300.0)
    assert result.as_dict()["api_ratio"] == 1.005 and result.as_dict()["span_extra"] == 295.0


def test_otel_comparison_without_the_packages_is_an_error_not_a_run(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without opentelemetry-api/-sdk each comparison says why; nothing is counted (no upstream either)."""
    monkeypatch.setattr(bench_callgrind, "_otel_missing", lambda: "opentelemetry.trace is not installed")
    monkeypatch.setattr(bench_callgrind, "upstream", None)  # would fail if a run were started
    results, otel = bench_callgrind.measure_all([], n=3, otel_cases=["sync_cost", "async_cost"])
    assert results == []
    assert [(r.case, r.stack, r.error) for r in otel] == [
        ("sync_cost", "httpx2", "opentelemetry.trace is not installed"),
        ("async_cost", "httpx2", "opentelemetry.trace is not installed"),
    ]


@pytest.mark.parametrize("reread", ["1", None])
def test_client_rereads_a_body_read_whole_only_when_asked(reread: str | None,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """``RESILIENCE_BENCH_REREAD=1``: the wrapped client hands no body over (its count shows the saving)."""
    import callgrind_client
    import httpx2

    from resilience._http import stacks

    monkeypatch.setattr(stacks, "BY_REQUEST", dict(stacks.BY_REQUEST))  # the client patches it in place
    if reread is None:
        monkeypatch.delenv(callgrind_client.REREAD, raising=False)
    else:
        monkeypatch.setenv(callgrind_client.REREAD, reread)
    callgrind_client._transport(httpx2, "wrapped", sync=True)
    held = stacks.BY_REQUEST[httpx2.Request].holds_content
    assert held is (reread is None)


@pytest.mark.integration
@pytest.mark.parametrize("mode", ["wrapped", "wrapped_no_otel", "wrapped_traced"])
def test_client_otel_modes_run_natively(mode: str) -> None:
    """Each OpenTelemetry mode runs against the upstream and passes its own check (no package; spans)."""
    pytest.importorskip("opentelemetry.sdk.trace")
    with bench_callgrind.upstream() as base_url:
        done = subprocess.run(
            [sys.executable, str(bench_callgrind.CLIENT), "sync_cost", "httpx2", mode, "3", "2", base_url],
            input=bench_callgrind.GO, capture_output=True, text=True, timeout=60, check=False,
        )
    assert done.returncode == 0, done.stderr
    assert done.stdout == bench_callgrind.WARM + bench_callgrind.DONE


def test_otel_comparison_counts_each_run_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """The untraced count is the main table's wrapped run (counted once); each mode lands in its column."""
    counted: list[Any] = []

    def per_request(self: Any, run: Any) -> float:
        counted.append(run)
        return {"bare": 100.0, "wrapped": 110.0, "wrapped_no_otel": 109.0, "wrapped_traced": 150.0}[run.mode]

    monkeypatch.setattr(bench_callgrind, "_otel_missing", lambda: None)
    monkeypatch.setattr(bench_callgrind, "upstream", lambda: contextlib.nullcontext("http://127.0.0.1:1"))
    monkeypatch.setattr(bench_callgrind.Runner, "per_request", per_request)
    results, [otel] = bench_callgrind.measure_all(["sync_cost"], n=3, stacks=["httpx2"],
                                                  otel_cases=["sync_cost"], jobs=1)
    assert sorted(run.mode for run in counted) == ["bare", "wrapped", "wrapped_no_otel", "wrapped_traced"]
    assert results[0].wrapped == otel.untraced == 110.0
    assert (otel.no_otel, otel.traced, otel.span_extra, otel.error) == (109.0, 150.0, 40.0, None)


def test_count_is_the_totals_line_when_instrumentation_was_switched_off(tmp_path: Path) -> None:
    """Switched off before the end, callgrind writes ``summary: 0`` first: the count is in ``totals:``."""
    out = tmp_path / "run.out"
    out.write_text("version: 1\nsummary: 0\nfn=main\n0 5\ntotals: 372343719\n")
    assert bench_callgrind.read_ir(out) == 372343719
    out.write_text("version: 1\nsummary: 1234\n")
    assert bench_callgrind.read_ir(out) == 1234
    out.write_text("version: 1\n")
    with pytest.raises(ValueError, match="no summary"):
        bench_callgrind.read_ir(out)
