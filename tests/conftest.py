"""Shared fixtures: async tests run on asyncio through anyio; a fake clock; each happy path."""

from __future__ import annotations

import pytest
from system_tools import in_ci

from resilience import _hot, transport
from resilience._hot import HotPath
from resilience.testing import FakeClock


@pytest.fixture
def anyio_backend() -> str:
    """Run async tests on asyncio."""
    return "asyncio"


@pytest.fixture
def clock() -> FakeClock:
    """A clock that moves only when the test says so."""
    return FakeClock(1000.0)


@pytest.fixture(params=["pure", "compiled"])
def hot_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> HotPath:
    """Run the test on each implementation of the transport's happy path.

    ``compiled`` is the module ``python -m resilience speedups`` builds (``make test``
    builds it): skipped when it is missing or stale, failing in CI.
    """
    path = _hot.pure() if request.param == "pure" else _hot.load()
    if request.param == "compiled" and not path.compiled:
        message = "resilience._speedups is not built or is stale: python -m resilience speedups"
        if in_ci():
            pytest.fail(message + " (make test builds it)")
        pytest.skip(message)
    monkeypatch.setattr(transport, "admit_request", path.admit_request)
    monkeypatch.setattr(transport, "recorded_plain", path.recorded_plain)
    monkeypatch.setattr(transport, "Resolver", path.Resolver)
    return path
