"""Fixtures for tests against real servers on 127.0.0.1.

``uvicorn_server`` starts any ASGI app on a free port in a thread and returns
its base URL; every server it started is stopped (and its thread joined) at
teardown::

    def test_something(uvicorn_server):
        url = uvicorn_server(app, timeout_keep_alive=1)
        httpx.get(url + "/path")

``module_uvicorn_server`` is the same for servers that live for the whole
test module (each stop costs a tenth of a second of uvicorn's shutdown).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import uvicorn
from integration._server import ThreadedServer


@contextlib.contextmanager
def _starter() -> Iterator[Callable[..., str]]:
    """A function that starts ASGI apps on 127.0.0.1; each server is stopped on exit."""
    with contextlib.ExitStack() as stack:

        def start(app: Any, **config: Any) -> str:
            options: dict[str, Any] = {
                "host": "127.0.0.1",
                "port": 0,
                "lifespan": "off",
                "log_level": "warning",
                "ws": "none",
                "timeout_graceful_shutdown": 5,
                **config,
            }
            server = ThreadedServer(uvicorn.Config(app, **options))
            url: str = stack.enter_context(server.run_in_thread())
            return url

        yield start


@pytest.fixture
def uvicorn_server() -> Iterator[Callable[..., str]]:
    """Start ASGI apps on 127.0.0.1 (extra keywords go to ``uvicorn.Config``); yield a starter."""
    with _starter() as start:
        yield start


@pytest.fixture(scope="module")
def module_uvicorn_server() -> Iterator[Callable[..., str]]:
    """:func:`uvicorn_server` whose servers are stopped at the end of the test module."""
    with _starter() as start:
        yield start
