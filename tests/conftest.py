"""Shared fixtures: async tests run on asyncio through anyio; a fake clock; each HTTP stack."""

from __future__ import annotations

import importlib
from types import ModuleType

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


STACK_NAMES = ("httpx2", "httpx")


@pytest.fixture(params=STACK_NAMES)
def stack(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """Run the test on each HTTP stack: its module's ``httpx`` is that stack while it runs.

    The suites are written against httpx's API, which httpx2 keeps; swapping the
    module global makes every client, transport, response and exception the
    test builds (helpers of the same module included) come from the stack.
    """
    module = importlib.import_module(request.param)
    monkeypatch.setattr(request.module, "httpx", module, raising=False)
    return module
