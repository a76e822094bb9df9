"""Async tests on trio's virtual clock: ``@VIRTUAL_TIME`` on an ``anyio`` test."""

from __future__ import annotations

import pytest
from trio.testing import MockClock

VIRTUAL_TIME = pytest.mark.parametrize(
    "anyio_backend",
    [pytest.param(("trio", {"clock": MockClock(autojump_threshold=0)}), id="trio-virtual-time")],
)
"""Run an async test on trio with a clock that jumps to the next timer whenever every task waits:
timeouts fire at once, at the virtual time they are due, and the test never sleeps."""
