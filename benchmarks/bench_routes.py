"""What a route costs the caller in wall-clock time: failover and hedging, against a direct call.

::

    python benchmarks/bench_routes.py            # prints a markdown table
    python benchmarks/bench_routes.py -n 100

A uvicorn upstream on 127.0.0.1 (its own process) answers ``/ok`` at once,
``/down`` with a 503, and ``/slow`` after :data:`SLOW_SECONDS`. A port with
nothing listening refuses connections. In the same run, each row times ``n``
sequential calls on one warm async httpx2 client and reports the median and
the p95:

* **direct**: ``/ok`` sent straight to its provider (the baseline);
* **route, healthy first**: the route's first target answers;
* **failover after 503** / **after connection refused**: the first target
  fails, the second answers;
* **hedge vs slow target**: the first target takes :data:`SLOW_SECONDS`, and
  the hedge after :data:`HEDGE_AFTER` answers first.

These are wall-clock timings on a shared machine: compare rows of one run,
not runs.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import httpx2
import uvicorn

import resilience

SLOW_SECONDS = 1.0
HEDGE_AFTER = 0.05
BODY = b'{"choices": [], "usage": {"cost": 0.001}}'


async def app(scope: dict[str, Any], receive: Callable[[], Awaitable[dict[str, Any]]],
              send: Callable[[dict[str, Any]], Awaitable[None]]) -> None:
    """``/ok``, ``/down`` and ``/slow`` (the first path segment decides; the rest is the route's)."""
    while (await receive()).get("more_body"):
        pass
    kind = scope["path"].strip("/").partition("/")[0]
    if kind == "slow":
        await asyncio.sleep(SLOW_SECONDS)
    status = 503 if kind == "down" else 200
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(BODY)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": BODY})


def serve() -> tuple[str, subprocess.Popen[bytes]]:
    """The upstream in a process of its own (this file, ``serve PORT``); its base URL."""
    port = refused_port()
    server = subprocess.Popen([sys.executable, __file__, "serve", str(port)])
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return f"http://127.0.0.1:{port}", server
        time.sleep(0.05)
    server.kill()
    raise RuntimeError("the upstream did not start")


def refused_port() -> int:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = int(sock.getsockname()[1])
    sock.close()
    return port


def registry_with_routes(base: str) -> tuple[resilience.ProviderRegistry, dict[str, str]]:
    """Providers ``a`` (127.0.0.1) and ``b`` (localhost) on the upstream, ``gone`` on a refused port."""
    port = base.rsplit(":", 1)[1]
    other = f"http://localhost:{port}"
    policy = resilience.Policy(
        retry=resilience.RetryPolicy(attempts=1),
        breaker=resilience.BreakerPolicy(minimum_calls=10**6),  # the failing targets stay tried
    )
    registry = resilience.ProviderRegistry(policy)
    registry.register("a", hosts=["127.0.0.1"])
    registry.register("b", hosts=["localhost"])
    registry.register("gone", hosts=["gone.test"])
    gone = f"http://127.0.0.1:{refused_port()}"

    def route(name: str, first: str, first_provider: str, hedge: bool = False) -> str:
        targets = [resilience.Target(first_provider, base_url=first),
                   resilience.Target("b", base_url=f"{other}/ok")]
        policy = resilience.RoutePolicy(  # a budget of one hedge per call: every call may hedge
            order="priority", hedge_after_seconds=HEDGE_AFTER if hedge else None, hedge_budget_ratio=1.0
        )
        return registry.route(name, targets, policy=policy).base_url

    urls = {
        "direct": f"{base}/ok",
        "route, healthy first": route("healthy", f"{base}/ok", "a") + "/",
        "failover after 503": route("down", f"{base}/down", "a") + "/",
        "failover after connection refused": route("refused", gone, "gone") + "/",
        "hedge vs slow target": route("hedged", f"{base}/slow", "a", hedge=True) + "/",
    }
    return registry, urls


async def time_calls(client: httpx2.AsyncClient, url: str, n: int) -> list[float]:
    times = []
    for _ in range(n):
        started = time.perf_counter()
        response = await client.post(url, json={"model": "m"})
        times.append(time.perf_counter() - started)
        assert response.status_code == 200, (url, response.status_code)
    return times


async def run(n: int) -> list[tuple[str, float, float]]:
    base, server = serve()
    registry, urls = registry_with_routes(base)
    rows = []
    try:
        async with httpx2.AsyncClient(transport=resilience.ResilientTransport(registry)) as client:
            for url in urls.values():  # warm: connections, the default transports
                await time_calls(client, url, 3)
            for name, url in urls.items():
                times = await time_calls(client, url, n if "slow" not in name else max(5, n // 5))
                p95 = statistics.quantiles(times, n=20)[-1] if len(times) >= 2 else times[0]
                rows.append((name, statistics.median(times), p95))
    finally:
        server.terminate()
        server.wait()
    return rows


def markdown(rows: list[tuple[str, float, float]]) -> str:
    base = rows[0][1]
    lines = ["| call | median | p95 | median − direct |", "| --- | ---: | ---: | ---: |"]
    for name, median, p95 in rows:
        extra = (median - base) * 1e3
        lines.append(f"| {name} | {median * 1e3:.2f} ms | {p95 * 1e3:.2f} ms | {extra:+.2f} ms |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["serve"]:
        uvicorn.run(app, host="127.0.0.1", port=int(argv[1]), lifespan="off", log_level="critical",
                    access_log=False)
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=50, help="calls per row (the slow row: n / 5)")
    args = parser.parse_args(argv)
    print(markdown(asyncio.run(run(args.n))))


if __name__ == "__main__":
    main(sys.argv[1:])
