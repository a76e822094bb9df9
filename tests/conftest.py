"""Shared fixtures: async tests run on asyncio through anyio; a fake clock."""

from __future__ import annotations

import pytest

from resilience.testing import FakeClock


@pytest.fixture
def anyio_backend() -> str:
    """Run async tests on asyncio."""
    return "asyncio"


@pytest.fixture
def clock() -> FakeClock:
    """A clock that moves only when the test says so."""
    return FakeClock(1000.0)
