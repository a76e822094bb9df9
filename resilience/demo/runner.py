"""Runs the demo: upstreams, gateway and load in one asyncio loop, until the time is up or a signal."""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TextIO

from resilience.demo import tracing
from resilience.demo.gateway import COMPLETIONS_PATH, DASHBOARD_PATH, ROUTE, ROUTE_TARGETS, build_gateway
from resilience.demo.load import STATUS_KEYS, LoadGenerator, Progress
from resilience.demo.servers import HOST, PortBusyError, Served, bind
from resilience.demo.tracing import TraceMode
from resilience.demo.upstreams import Upstream, demo_upstreams

ENV = {
    "port": "DEMO_PORT", "seconds": "DEMO_SECONDS", "rps": "DEMO_RPS",
    "flaky_error_rate": "DEMO_FLAKY_ERROR_RATE", "flaky_latency_ms": "DEMO_FLAKY_LATENCY_MS",
    "stream_error_rate": "DEMO_STREAM_ERROR_RATE",
}
"""Environment variables that set the numeric options (command-line flags win); ``DEMO_TRACE``
sets :attr:`DemoOptions.trace`."""
TRY_BODY = '{"provider": "flaky", "model": "demo-small"}'


@dataclass(frozen=True, kw_only=True)
class DemoOptions:
    """What the demo runs with.

    Args:
        port: the gateway's port on 127.0.0.1.
        seconds: stop after this long; ``None`` runs until Ctrl-C.
        rps: requests per second of the load generator.
        flaky_error_rate: share of the ``flaky`` provider's answers that are 500.
        flaky_latency_ms: the ``flaky`` provider's typical latency.
        stream_error_rate: share of the ``streaming`` provider's streams that end with an
            in-band error event.
        trace: print every span to the console (``DEMO_TRACE``): ``"summary"``, one line per
            span; ``"json"``, the OpenTelemetry SDK's JSON; ``"off"``.
    """

    port: int = 8000
    seconds: float | None = None
    rps: float = 40.0
    flaky_error_rate: float = 0.3
    flaky_latency_ms: float = 150.0
    stream_error_rate: float = 0.1
    trace: TraceMode = "off"

    def __post_init__(self) -> None:
        if not 0 < self.port < 65536:
            raise ValueError(f"port must be in 1..65535, got {self.port}")
        if self.seconds is not None and self.seconds <= 0:
            raise ValueError(f"seconds must be > 0, got {self.seconds}")
        if not 0 < self.rps <= 10_000:
            raise ValueError(f"rps must be in (0, 10000], got {self.rps}")
        if not 0 <= self.flaky_error_rate <= 1:
            raise ValueError(f"flaky_error_rate must be in [0, 1], got {self.flaky_error_rate}")
        if self.flaky_latency_ms < 0:
            raise ValueError(f"flaky_latency_ms must be >= 0, got {self.flaky_latency_ms}")
        if not 0 <= self.stream_error_rate <= 1:
            raise ValueError(f"stream_error_rate must be in [0, 1], got {self.stream_error_rate}")
        if self.trace not in ("off", "summary", "json"):
            raise ValueError(f"trace must be 'off', 'summary' or 'json', got {self.trace!r}")

    @classmethod
    def from_env(cls, environ: Mapping[str, str], **given: float | None) -> DemoOptions:
        """Options from ``DEMO_*`` variables, overridden by the ``given`` numbers that are not ``None``.

        Raises:
            ValueError: a value is not a number or out of range; the message names the variable.
        """
        values: dict[str, float | str] = {"trace": tracing.trace_mode(environ.get("DEMO_TRACE", ""))}
        for field, var in ENV.items():
            raw = environ.get(var, "").strip()
            if raw:
                try:
                    values[field] = float(raw)
                except ValueError:
                    raise ValueError(f"{var} must be a number, got {raw!r}") from None
        values.update({k: v for k, v in given.items() if v is not None})
        if "port" in values:
            values["port"] = int(values["port"])  # a float, or the int of the given flag
        return cls(**values)  # type: ignore[arg-type]  # floats where ints are meant are checked above


def run(options: DemoOptions, out: TextIO = sys.stdout) -> int:
    """Run the demo until ``options.seconds`` pass or SIGINT/SIGTERM; the exit code."""
    return asyncio.run(_main(options, out))


async def _main(options: DemoOptions, out: TextIO) -> int:
    stop = asyncio.Event()
    served: list[Served] = []
    _on_signals(stop, served)
    try:
        gateway_sock = bind(options.port)
    except PortBusyError:
        print(f"resilience demo: port {options.port} on {HOST} is already in use; "
              "choose another with DEMO_PORT=<port> (or --port).", file=sys.stderr)
        return 2
    upstreams = demo_upstreams(flaky_error_rate=options.flaky_error_rate,
                               flaky_latency=options.flaky_latency_ms / 1000,
                               stream_error_rate=options.stream_error_rate)
    servers = {up.name: Served(up, bind()) for up in upstreams}
    served.extend(servers.values())
    gateway = build_gateway({name: s.url for name, s in servers.items()})
    front = Served(gateway.app, gateway_sock)
    served.append(front)
    streaming = [up.name for up in upstreams if up.behaviour.keepalives]
    routes = [route.name for route in gateway.registry.routes()]
    load = LoadGenerator(front.url + COMPLETIONS_PATH, list(servers), options.rps,
                         streaming=streaming, routes=routes)
    spans = tracing.tracer_provider(options.trace, out)
    if spans is not None:  # before any traffic, so every call has its span
        tracing.install(spans)
    try:
        for server in served:
            await server.start()
        _banner(out, front.url, upstreams, servers, options, traced=spans is not None)
        progress = Progress(load, gateway.registry, out, in_place=False if spans is not None else None)
        if options.seconds is not None:
            asyncio.get_running_loop().call_later(options.seconds, stop.set)
        await asyncio.gather(load.run(stop), progress.run(stop))
    finally:
        await load.aclose()
        await front.stop()
        await gateway.aclose()
        for server in servers.values():
            await server.stop()
        if spans is not None:
            spans.shutdown()
    mix = ", ".join(f"{key} {load.mix[key]}" for key in STATUS_KEYS if load.mix[key])
    seen = "".join(f"; {seen.line(name)}" for name, seen in load.routes.items())
    print(f"resilience demo: stopped after {load.sent} requests ({mix}{seen}).", file=out, flush=True)
    return 0


def _on_signals(stop: asyncio.Event, served: list[Served]) -> None:
    """SIGINT/SIGTERM stop the demo; a second one stops waiting for open connections."""
    loop = asyncio.get_running_loop()

    def handle() -> None:
        if stop.is_set():
            for server in served:
                server.force_stop()
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, handle)


def _banner(
    out: TextIO, url: str, upstreams: list[Upstream], servers: dict[str, Served], options: DemoOptions,
    *, traced: bool = False,
) -> None:
    """The URLs to open, the providers and how to stop."""
    ops = url + DASHBOARD_PATH
    lines = [
        f"resilience demo: gateway on {url}, {options.rps:g} requests/s over real HTTP on loopback",
        f"  dashboard  {ops}/health/dashboard/ui",
        f"  JSON       {ops}/health/dashboard",
        f"  models     {ops}/models/stats",
        f"  metrics    {url}/metrics",
        f"  try        curl -s {url}{COMPLETIONS_PATH} -d '{TRY_BODY}'",
        "  providers  " + ", ".join(f"{u.name} (:{servers[u.name].port}, {_describe(u)})" for u in upstreams),
        f"  route      {ROUTE}: {' then '.join(ROUTE_TARGETS)} by priority; the outage fails over live"
        f" (try: curl -s {url}{COMPLETIONS_PATH} -d '{{\"route\": \"{ROUTE}\"}}' -i)",
        "  note       upstreams, gateway and load generator share one asyncio loop in this process:",
        "             the latencies shown are the demo's, not the library's overhead",
        "  columns    503: a provider's own 503 passed on; rejected: the gateway's open breaker answered;",
        "             in-band: a 200 stream that ended with an error event; "
        f"{ROUTE}: what its callers got, from whom",
        *(["  traces     every call's span printed below as it ends (DEMO_TRACE)"] if traced else []),
        "Stops " + (f"after {options.seconds:g} s or " if options.seconds else "") + "on Ctrl-C.",
    ]
    print("\n".join(lines), file=out, flush=True)


def _describe(up: Upstream) -> str:
    b = up.behaviour
    if b.keepalives:
        return f"SSE with pings, {b.inband_error_rate:.0%} in-band errors"
    if b.down_seconds:
        return f"{b.up_seconds:g} s up / {b.down_seconds:g} s down"
    if b.throttle_rate:
        quota = f"quota {b.quota}/{b.quota_seconds:g} s in headers, " if b.quota else ""
        return f"{quota}{b.throttle_rate:.0%} 429 with Retry-After: {b.retry_after}"
    if b.error_rate:
        return f"{b.error_rate:.0%} 500s, ~{b.latency * 1000:.0f} ms"
    return f"~{b.latency * 1000:.0f} ms"
