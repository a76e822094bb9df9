"""The demo's load generator: chat completions over real HTTP to the gateway, and a progress line.

Requests go out at a steady rate, round-robin over the providers, the
routes and two models, each in its own task (at most :data:`MAX_IN_FLIGHT` at
a time); requests to the streaming providers say ``"stream": true``. The
progress line shows elapsed time, requests, the status mix of the provider
calls, what callers of each route saw, and every provider's breaker state;
on a terminal it is rewritten in place. In the mix, ``503`` is a provider's
own 503 passed on by the gateway, ``rejected`` the gateway's breaker turning
the call away (a 503 whose error type is ``circuit_open``) before it reached
the provider, ``in-band`` a 200 stream that ended with an error event.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import shutil
from collections import Counter
from collections.abc import Callable, Collection, Sequence
from typing import TextIO

import httpx2

from resilience._core import clock as _clock
from resilience._core.registry import ProviderRegistry

MAX_IN_FLIGHT = 200
MODELS = ("demo-small", "demo-large")
STATUS_KEYS = ("2xx", "in-band", "429", "503", "rejected", "5xx", "other", "errors")
ALWAYS_SHOWN = ("2xx", "503", "rejected")
"""Columns of the progress line shown even at 0; the others appear once they count something."""


def status_key(status: int | None, body: bytes = b"", *, sse: bool = False) -> str:
    """The status-mix column a response (``None``: no response) falls in.

    A 503 whose body is the gateway's ``circuit_open`` error is ``rejected``:
    the breaker answered, not the provider. A 2xx SSE stream (``sse``) with an
    error event in it is ``in-band``.
    """
    if status is None:
        return "errors"
    if 200 <= status < 300:
        return "in-band" if sse and sse_error(body) else "2xx"
    if status == 503 and _error_type(body) == "circuit_open":
        return "rejected"
    if status in (429, 503):
        return str(status)
    return "5xx" if status >= 500 else "other"


def sse_error(body: bytes) -> bool:
    """Whether an SSE body holds an in-band error: an ``event: error`` event, or a ``data:`` event
    whose JSON has a top-level ``"error"`` object."""
    for line in body.splitlines():
        if line.startswith(b"event:") and line[6:].strip() == b"error":
            return True
        if line.startswith(b"data:") and b'"error"' in line:
            try:
                event = json.loads(line[5:])
            except ValueError:
                continue
            if isinstance(event, dict) and isinstance(event.get("error"), dict):
                return True
    return False


def _error_type(body: bytes) -> object:
    try:
        error = json.loads(body).get("error")
    except (ValueError, AttributeError):  # not JSON, or not an object
        return None
    return error.get("type") if isinstance(error, dict) else None


class RouteSeen:
    """What callers of one route saw: answers, who served them, failovers."""

    def __init__(self) -> None:
        self.ok = 0
        self.failed = 0
        self.failovers = 0
        self.served_by: Counter[str] = Counter()

    def record(self, status: int | None, provider: str | None, attempts: int) -> None:
        """One route call's answer (``status`` ``None``: none), the provider that served it and
        the attempts it took (each attempt after the first is a failover)."""
        if status is not None and 200 <= status < 300:
            self.ok += 1
            if provider:
                self.served_by[provider] += 1
        else:
            self.failed += 1
        self.failovers += max(0, attempts - 1)

    def line(self, name: str) -> str:
        """``demo-route ok 95 (outage 40 healthy 55)  failed 0  failovers 12``."""
        served = " ".join(f"{p} {n}" for p, n in self.served_by.items())  # in the order first seen
        return (f"{name} ok {self.ok}" + (f" ({served})" if served else "")
                + f"  failed {self.failed}  failovers {self.failovers}")


class LoadGenerator:
    """Sends chat completions to ``url`` at ``rps`` per second until stopped.

    Args:
        url: the gateway's completions endpoint.
        providers: provider names to spread the requests over.
        rps: requests started per second.
        streaming: those of ``providers`` asked to stream (``"stream": true``).
        routes: route names to spread requests over too, as if each were a provider.
    """

    def __init__(
        self, url: str, providers: Sequence[str], rps: float, *,
        streaming: Collection[str] = (), routes: Sequence[str] = (),
    ) -> None:
        self.url = url
        self.providers = tuple(providers)
        self.streaming = frozenset(streaming)
        self.routes = {name: RouteSeen() for name in routes}
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
        names = [*(("provider", p) for p in self.providers), *(("route", r) for r in self.routes)]
        targets = itertools.cycle(itertools.product(MODELS, names))
        interval = 1.0 / self.rps
        next_at = _clock.monotonic()
        while not stop.is_set():
            if len(self._tasks) < MAX_IN_FLIGHT:
                model, (kind, name) = next(targets)
                call = self._one(name, model) if kind == "provider" else self._route(name, model)
                task = asyncio.create_task(call)
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
        body: dict[str, object] = {"provider": provider, "model": model,
                                   "messages": [{"role": "user", "content": "Say hello."}]}
        if provider in self.streaming:
            body["stream"] = True
        try:
            response = await self._client.post(self.url, json=body)
        except httpx2.HTTPError:
            self.mix["errors"] += 1
        else:
            sse = response.headers.get("content-type", "").startswith("text/event-stream")
            self.mix[status_key(response.status_code, response.content, sse=sse)] += 1

    async def _route(self, route: str, model: str) -> None:
        self.sent += 1
        body = {"route": route, "model": model, "messages": [{"role": "user", "content": "Say hello."}]}
        try:
            response = await self._client.post(self.url, json=body)
        except httpx2.HTTPError:
            self.routes[route].record(None, None, 1)
            return
        try:
            attempts = int(response.headers.get("x-resilience-attempts", "1"))
        except ValueError:
            attempts = 1
        served_by = response.headers.get("x-resilience-provider")
        self.routes[route].record(response.status_code, served_by, attempts)


class Progress:
    """The progress line: rewritten in place on a terminal, else one line per call to :meth:`show`.

    Args:
        load: whose counts to show.
        registry: whose breaker states to show.
        out: where to write (``sys.stdout``).
        clock: monotonic seconds; elapsed time counts from construction.
        in_place: rewrite the line in place (default: when ``out`` is a terminal); ``False``
            writes one line a second, e.g. while spans are printed to the same console.
    """

    def __init__(
        self, load: LoadGenerator, registry: ProviderRegistry, out: TextIO,
        clock: Callable[[], float] = _clock.monotonic, *, in_place: bool | None = None,
    ) -> None:
        self.load = load
        self.registry = registry
        self.out = out
        self.clock = clock
        self.started = clock()
        self.tty = out.isatty() if in_place is None else in_place

    def line(self) -> str:
        """The current progress line."""
        mix = "  ".join(f"{key} {self.load.mix[key]}" for key in STATUS_KEYS if self.load.mix[key]
                        or key in ALWAYS_SHOWN)
        states = "  ".join(f"{p.name} {_state(p.state)}" for p in self.registry.providers())
        routes = "".join(f"{seen.line(name)}  |  " for name, seen in self.load.routes.items())
        return f"{self.clock() - self.started:6.1f}s  {self.load.sent:6d} req  {mix}  |  {routes}{states}"

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
