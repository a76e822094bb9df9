"""A real uvicorn server on 127.0.0.1 in a thread, for tests that need real sockets.

::

    with serve(app) as base_url:
        httpx.get(base_url + "/path")
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from typing import Any, Literal

import uvicorn

BOOT_SECONDS = 20.0


class ThreadedServer(uvicorn.Server):
    """A uvicorn server that runs in a daemon thread (uvicorn leaves signals alone off the main thread)."""

    @contextlib.contextmanager
    def run_in_thread(self) -> Iterator[str]:
        """Start, yield the base URL, then stop and join."""
        thread = threading.Thread(target=self.run, name="uvicorn-test", daemon=True)
        thread.start()
        try:
            deadline = time.monotonic() + BOOT_SECONDS
            while not self.started:
                if not thread.is_alive() or time.monotonic() > deadline:
                    raise RuntimeError("uvicorn did not start")
                time.sleep(0.01)
            port = self.servers[0].sockets[0].getsockname()[1]
            yield f"http://127.0.0.1:{port}"
        finally:
            self.should_exit = True
            thread.join(BOOT_SECONDS)
            if thread.is_alive():  # pragma: no cover - a stuck server fails the test
                raise RuntimeError("uvicorn did not stop")


@contextlib.contextmanager
def serve(app: Any, *, lifespan: Literal["auto", "on", "off"] = "auto") -> Iterator[str]:
    """Serve ``app`` on a free port of 127.0.0.1; yield its base URL."""
    config = uvicorn.Config(
        app, host="127.0.0.1", port=0, lifespan=lifespan, log_level="warning", ws="none",
        timeout_graceful_shutdown=5,
    )
    with ThreadedServer(config).run_in_thread() as url:
        yield url
