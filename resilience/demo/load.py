"""The demo's load generator: chat completions over real HTTP to the gateway, and a progress line.

Requests go out at a steady rate, round-robin over the providers and two
models, each in its own task (at most :data:`MAX_IN_FLIGHT` at a time). The
progress line shows elapsed time, requests, the status mix and every
provider's breaker state; on a terminal it is rewritten in place. In the
mix, ``503`` is a provider's own 503 passed on by the gateway, ``rejected``
the gateway's breaker turning the call away (a 503 whose error type is
``circuit_open``) before it reached the provider.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import shutil
from collections import Counter
from collections.abc import Callable, Sequence
from typing import TextIO

import httpx2

from resilience._core import clock as _clock
from resilience._core.registry import ProviderRegistry

MAX_IN_FLIGHT = 200
MODELS = ("demo-small", "demo-large")
STATUS_KEYS = ("2xx", "429", "503", "rejected", "5xx", "other", "errors")
ALWAYS_SHOWN = ("2xx", "503", "rejected")
"""Columns of the progress line shown even at 0; the others appear once they count something."""


def status_key(status: int | None, body: bytes = b"") -> str:
    """The status-mix column a response (``None``: no response) falls in.

    A 503 whose body is the gateway's ``circuit_open`` error is ``rejected``:
    the breaker answered, not the provider.
    """
    if status is None:
        return "errors"
    if 200 <= status < 300:
        return "2xx"
    if status == 503 and _error_type(body) == "circuit_open":
        return "rejected"
    if status in (429, 503):
        return str(status)
    return "5xx" if status >= 500 else "other"


def _error_type(body: bytes) -> object:
    try:
        error = json.loads(body).get("error")
    except (ValueError, AttributeError):  # not JSON, or not an object
        return None
    return error.get("type") if isinstance(error, dict) else None


class LoadGenerator:
    """Sends chat completions to ``url`` at ``rps`` per second until stopped.

    Args:
        url: the gateway's completions endpoint.
        providers: provider names to spread the requests over.
        rps: requests started per second.
    """

    def __init__(self, url: str, providers: Sequence[str], rps: float) -> None:
        self.url = url
        self.providers = tuple(providers)
        self.rps = rps
        self.mix: Counter[str] = Counter()
        self.sent = 0
        self.skipped = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._client = httpx2.AsyncClient(
            timeout=httpx2.Timeout(10.0), limits=httpx2.Limits(max_connections=MAX_IN_FLIGHT)
        )

    async def run(self, stop: asyncio.Event) -> None:
        """Send requests until ``stop`` is set, then wait briefly for the ones in flight."""
        targets = itertools.cycle(itertools.product(MODELS, self.providers))
        interval = 1.0 / self.rps
        next_at = _clock.monotonic()
        while not stop.is_set():
            if len(self._tasks) < MAX_IN_FLIGHT:
                model, provider = next(targets)
                task = asyncio.create_task(self._one(provider, model))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
            else:
                self.skipped += 1
            next_at += interval
            delay = next_at - _clock.monotonic()
            if delay > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), delay)

    async def aclose(self) -> None:
        """Give requests in flight a second, cancel the rest, close the client."""
        if self._tasks:
            _, pending = await asyncio.wait(set(self._tasks), timeout=1.0)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        await self._client.aclose()

    async def _one(self, provider: str, model: str) -> None:
        self.sent += 1
        body = {"provider": provider, "model": model,
                "messages": [{"role": "user", "content": "Say hello."}]}
        try:
            response = await self._client.post(self.url, json=body)
        except httpx2.HTTPError:
            self.mix["errors"] += 1
        else:
            self.mix[status_key(response.status_code, response.content)] += 1


class Progress:
    """The progress line: rewritten in place on a terminal, else one line per call to :meth:`show`.

    Args:
        load: whose counts to show.
        registry: whose breaker states to show.
        out: where to write (``sys.stdout``).
        clock: monotonic seconds; elapsed time counts from construction.
    """

    def __init__(
        self, load: LoadGenerator, registry: ProviderRegistry, out: TextIO,
        clock: Callable[[], float] = _clock.monotonic,
    ) -> None:
        self.load = load
        self.registry = registry
        self.out = out
        self.clock = clock
        self.started = clock()
        self.tty = out.isatty()

    def line(self) -> str:
        """The current progress line."""
        mix = "  ".join(f"{key} {self.load.mix[key]}" for key in STATUS_KEYS if self.load.mix[key]
                        or key in ALWAYS_SHOWN)
        states = "  ".join(f"{p.name} {_state(p.state)}" for p in self.registry.providers())
        return f"{self.clock() - self.started:6.1f}s  {self.load.sent:6d} req  {mix}  |  {states}"

    def show(self) -> None:
        """Write the current line."""
        if self.tty:  # cut to the terminal's width, or the line would wrap and \r not rewrite it
            width = shutil.get_terminal_size().columns - 1
            self.out.write("\r" + self.line()[:width] + "\x1b[K")
        else:
            self.out.write(self.line() + "\n")
        self.out.flush()

    def finish(self) -> None:
        """End the in-place line so what follows starts on its own line."""
        if self.tty:
            self.out.write("\n")
            self.out.flush()

    async def run(self, stop: asyncio.Event) -> None:
        """Show the line until ``stop`` is set (4 times a second on a terminal, else once)."""
        interval = 0.25 if self.tty else 1.0
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval)
            self.show()
        self.finish()


def _state(state: str) -> str:
    return state.upper() if state in ("open", "forced_open") else state
