"""A real ``redis-server`` on 127.0.0.1 for tests; a plain helper other test modules import.

::

    from redis_server import running_redis_server

    @pytest.fixture
    def server() -> Iterator[RedisServer]:
        with running_redis_server() as server:
            yield server

    def test_x(server: RedisServer) -> None:
        client = redis.Redis(port=server.port)
        ...
        server.stop()   # the cache dies mid-test

Without the ``redis-server`` binary the test is skipped, or fails when the
``CI`` environment variable is ``true`` (CI installs the Debian package).
Nothing is persisted: ``--save ''``, ``--appendonly no``, a temporary ``--dir``.
"""

from __future__ import annotations

import contextlib
import os
import select
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator

from system_tools import require_binary

BOOT_SECONDS = 10.0


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RedisServer:
    """One ``redis-server`` process; :meth:`stop` kills it, :meth:`start` brings it back on the same port."""

    def __init__(self, binary: str, directory: str) -> None:
        self.binary = binary
        self.directory = directory
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:<port>/0``."""
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        """Start the server and return once it accepts connections."""
        command = [
            self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
            "--appendonly", "no", "--dir", self.directory, "--loglevel", "notice",
        ]
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        self._wait_ready(self.process)

    def stop(self) -> None:
        """Kill the server (as a crash would) and wait for it to exit."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(BOOT_SECONDS)
        if self.process is not None and self.process.stdout is not None:
            self.process.stdout.close()
        self.process = None

    def _wait_ready(self, process: subprocess.Popen[bytes]) -> None:
        assert process.stdout is not None
        # raw reads of the descriptor: a buffered readline() can swallow the "Ready" line into
        # Python's buffer, where select() never sees it (a start then waited the whole deadline)
        fd = process.stdout.fileno()
        deadline, seen = time.monotonic() + BOOT_SECONDS, b""
        while time.monotonic() < deadline:
            ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
            chunk = os.read(fd, 65536) if ready else b""
            seen += chunk
            if b"Ready to accept connections" in seen:
                return
            if not chunk and process.poll() is not None:
                break
        self.stop()
        raise RuntimeError(f"redis-server did not start on port {self.port}: {seen.decode(errors='replace')}")


@contextlib.contextmanager
def running_redis_server() -> Iterator[RedisServer]:
    """A started server, stopped (if still running) on exit."""
    binary = require_binary("redis-server")
    with tempfile.TemporaryDirectory(prefix="resilience-redis-") as directory:
        server = RedisServer(binary, directory)
        for attempt in range(3):  # the free port may be taken between the check and the bind
            try:
                server.start()
                break
            except RuntimeError:
                if attempt == 2:
                    raise
                server.port = free_port()
        try:
            yield server
        finally:
            server.stop()
