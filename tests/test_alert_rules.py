"""The shipped Prometheus alert rules: valid, unit-tested with promtool, and in the wheel."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml
from system_tools import in_ci, require_binary

pytestmark = pytest.mark.promtool

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "resilience" / "contrib" / "prometheus-rules.yml"
RULES_TEST = ROOT / "tests" / "promtool" / "rules_test.yml"
ALERTS = {
    "ProviderHealthScoreLow", "ProviderCircuitOpen", "ProviderErrorRateHigh",
    "ProviderCostBurnRateHigh", "RedisErrors", "ResilienceInstrumentationErrors", "ProviderNearQuota",
    "RouteNoTargetAdmitting",
}


def _promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [require_binary("promtool"), *args], capture_output=True, text=True, timeout=120, check=False
    )


def test_promtool_check_rules() -> None:
    """promtool accepts every rule of the shipped file."""
    result = _promtool("check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(ALERTS)} rules found" in result.stdout


def test_promtool_test_rules() -> None:
    """A simulated outage fires each alert; healthy series stay silent (tests/promtool/rules_test.yml)."""
    result = _promtool("test", "rules", str(RULES_TEST))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_every_alert_is_unit_tested() -> None:
    """Each alert of the rules file fires in some promtool unit test and is silent in another."""
    rules = yaml.safe_load(RULES.read_text())
    assert {r["alert"] for group in rules["groups"] for r in group["rules"]} == ALERTS
    tests = yaml.safe_load(RULES_TEST.read_text())["tests"]
    cases = [case for test in tests for case in test["alert_rule_test"]]
    assert {case["alertname"] for case in cases if case["exp_alerts"]} == ALERTS
    assert {case["alertname"] for case in cases if not case["exp_alerts"]} == ALERTS


def test_contrib_files_ship_in_the_wheel(tmp_path: Path) -> None:
    """The built wheel carries the rules and the Grafana dashboard under resilience/contrib/."""
    try:
        import hatchling  # noqa: F401  # only to know whether the offline build can run
    except ImportError:
        if in_ci():
            pytest.fail("hatchling (dev extra) is needed to build the wheel")
        pytest.skip("hatchling is not installed")
    command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
               "-w", str(tmp_path), str(ROOT)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    (wheel,) = tmp_path.glob("llm_resilience-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {"resilience/contrib/prometheus-rules.yml", "resilience/contrib/grafana-dashboard.json"} <= names
