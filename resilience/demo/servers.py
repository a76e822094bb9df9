"""Serving ASGI apps with uvicorn on loopback sockets, several in one asyncio loop.

The demo owns the process's signals: these servers never install handlers
of their own (uvicorn's would re-raise the signal after a clean shutdown).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import socket
from collections.abc import Iterator

import uvicorn
from starlette.types import ASGIApp

from resilience._core import clock as _clock

HOST = "127.0.0.1"


class PortBusyError(OSError):
    """The port asked for is taken by another process."""


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def bind(port: int = 0) -> socket.socket:
    """A listening TCP socket on 127.0.0.1 (``port=0``: a free one).

    Raises:
        PortBusyError: ``port`` is in use.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.bind((HOST, port))
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise PortBusyError(exc.errno, f"port {port} on {HOST} is already in use") from None
        raise
    sock.listen(128)
    sock.setblocking(False)
    return sock


class Served:
    """One app served by uvicorn on one socket, started and stopped in the running loop."""

    def __init__(self, app: ASGIApp, sock: socket.socket) -> None:
        self.sock = sock
        self.port: int = sock.getsockname()[1]
        self.url = f"http://{HOST}:{self.port}"
        config = uvicorn.Config(
            app, lifespan="off", log_level="warning", access_log=False, timeout_graceful_shutdown=2,
        )
        self.server = _Server(config)
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Start serving and wait until the server accepts connections."""
        self._task = asyncio.create_task(self.server.serve(sockets=[self.sock]))
        while not self.server.started:
            if self._task.done():
                await self._task  # raises what failed the startup
                raise RuntimeError(f"server on {self.url} stopped during startup")
            await _clock.async_sleep(0.01)

    async def stop(self) -> None:
        """Ask the server to exit and wait for it (open connections get ~2 s)."""
        self.server.should_exit = True
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self.sock.close()

    def force_stop(self) -> None:
        """Stop waiting for open connections (a second Ctrl-C)."""
        self.server.force_exit = True
        self.server.should_exit = True
