"""Per-request overhead counted with callgrind: instructions, not time.

::

    python benchmarks/bench_callgrind.py                     # every case; prints a markdown table
    python benchmarks/bench_callgrind.py --json run.json     # and writes the results as JSON
    python benchmarks/bench_callgrind.py sync_json guard -n 50
    python benchmarks/bench_callgrind.py otel                # the OpenTelemetry comparison only

Each (case, stack, mode) runs twice, in fresh processes under ``valgrind
--tool=callgrind`` (the client process only), with the same argv, environment
and warm-up, and N = 0 then N = n measured requests: per request is
(Ir(N) − Ir(0)) / N, which does not move with the load of a noisy machine.
Instrumentation starts once the client is warm (``callgrind_control -i on``
while it waits): imports and set-up would cost both runs the same, only
five times slower uninstrumented than at callgrind's usual 50×. The
HTTP cases go to a real uvicorn upstream on 127.0.0.1 in its own process
(``callgrind_client.py``), bare (``stack.HTTPTransport()``) and wrapped
(``resilience.ResilientTransport``) on the same stack, httpx and httpx2. The
``guard`` case makes no request: ``registry.guard`` beside a peer breaker.

The ``otel`` comparison counts ``ResilientTransport`` three ways on the same
stack (``OTEL_CASES`` on ``OTEL_STACKS``): without opentelemetry (made
unimportable in the client), with opentelemetry-api and no tracer provider
(the ``wrapped`` run of the main table, counted once), and with an
opentelemetry-sdk provider whose spans are dropped: the first two should
match within 1 %, the third less the second is what a span costs.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import importlib.util
import json
import math
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from subprocess import PIPE
from typing import Any, NamedTuple

import httpx

CLIENT = Path(__file__).resolve().with_name("callgrind_client.py")
VALGRIND = "/usr/bin/valgrind"
CASES = ("sync_json", "sync_cost", "sync_chunked", "sync_sse", "async_cost", "guard")
STACKS = ("httpx", "httpx2")
GUARD_PEERS = ("pybreaker", "circuitbreaker")
OTEL = "otel"
"""The pseudo-case that asks for the OpenTelemetry comparison."""
OTEL_CASES = ("sync_cost", "async_cost")
OTEL_STACKS = ("httpx2",)
OTEL_MODES = ("wrapped_no_otel", "wrapped", "wrapped_traced")
"""Without opentelemetry; opentelemetry-api, no provider; an SDK provider set (spans dropped)."""
HTTP_N, GUARD_N = 400, 4000
WARMUP = 30
N_DIGITS = 7
"""N is passed zero-padded, so the argv of the two runs has the same length."""
BOOT_SECONDS = 20.0
WARM, GO = "warm\n", "go\n"
"""The client says it is warm and waits; it goes on once told (after instrumentation is on)."""
DONE, END = "done\n", "end\n"
"""The client says its measured requests are done and waits; it exits once told (instrumentation off).

Nothing after the last measured request is counted: the client's teardown
(its pool, its transport, an SSL context freed or not depending on what the
collector saw) moved a count by up to 1.7 M instructions, ~8 k per request at N = 200."""


@dataclass(frozen=True, kw_only=True, slots=True)
class Result:
    """Instructions per request of one case on one stack (for ``guard``: beside one peer)."""

    case: str
    stack: str
    n: int
    bare: float | None = None
    wrapped: float | None = None
    error: str | None = None

    @property
    def ratio(self) -> float | None:
        """wrapped / bare."""
        return self.wrapped / self.bare if self.wrapped is not None and self.bare else None

    @property
    def extra(self) -> float | None:
        """The instructions wrapping adds to each request."""
        return self.wrapped - self.bare if self.wrapped is not None and self.bare is not None else None

    def as_dict(self) -> dict[str, Any]:
        """The fields, the ratio and the extra, as JSON holds them."""
        return {**asdict(self), "ratio": self.ratio, "extra": self.extra}


@dataclass(frozen=True, kw_only=True, slots=True)
class OtelResult:
    """Instructions per request through ``ResilientTransport``, without opentelemetry, untraced, traced."""

    case: str
    stack: str
    n: int
    no_otel: float | None = None
    untraced: float | None = None
    traced: float | None = None
    error: str | None = None

    @property
    def api_ratio(self) -> float | None:
        """opentelemetry-api installed and no provider, over not installed."""
        return self.untraced / self.no_otel if self.untraced is not None and self.no_otel else None

    @property
    def span_extra(self) -> float | None:
        """The instructions a span adds to each request (a provider set, over none)."""
        return self.traced - self.untraced if self.traced is not None and self.untraced is not None else None

    def as_dict(self) -> dict[str, Any]:
        """The fields, the ratio and the span's cost, as JSON holds them."""
        return {**asdict(self), "api_ratio": self.api_ratio, "span_extra": self.span_extra}


class Run(NamedTuple):
    """One client configuration: counted twice, with 0 and ``n`` measured requests."""

    case: str
    stack: str
    mode: str
    n: int


class ClientFailed(Exception):
    """A client run exited non-zero; the message is the end of what it printed."""


class Runner:
    """Runs the client, natively once and then under callgrind, and counts its instructions."""

    def __init__(self, valgrind: str, out_dir: Path, base_url: str, warmup: int) -> None:
        self.valgrind, self.out_dir, self.base_url, self.warmup = valgrind, out_dir, base_url, warmup
        self.env = {**os.environ, "PYTHONHASHSEED": "0"}

    def per_request(self, run: Run) -> float | ClientFailed:
        """(Ir(n) − Ir(0)) / n, each count from a fresh process, or how the client failed."""
        try:
            self._native(run)
            counts = [self._count(run, n) for n in (0, run.n)]
        except ClientFailed as failure:
            return failure
        return (counts[1] - counts[0]) / run.n

    def _native(self, run: Run) -> None:
        """Run the client once without valgrind: it fails fast, and writes the .pyc files both runs read."""
        done = subprocess.run(self._argv(run, 0), env=self.env, input=GO, capture_output=True, text=True,
                              check=False)
        if done.returncode != 0:
            raise ClientFailed(_tail(done.stderr) or f"exit {done.returncode}")

    def _count(self, run: Run, n: int) -> int:
        """Ir of one run, instrumented from the end of its warm-up to its last request.

        ``callgrind_control -i on`` when the client says ``warm``, ``-i off`` when it says ``done``.
        """
        out = self.out_dir / f"{run.case}-{run.stack}-{run.mode}-{n:0{N_DIGITS}d}.out"
        callgrind = [self.valgrind, "--tool=callgrind", "--trace-children=no", "--instr-atstart=no",
                     f"--callgrind-out-file={out}"]
        env = {**self.env, "PYTHONDONTWRITEBYTECODE": "1"}
        with out.with_suffix(".err").open("w+") as stderr, subprocess.Popen(
            [*callgrind, *self._argv(run, n)], env=env, stdin=PIPE, stdout=PIPE, stderr=stderr, text=True,
        ) as client:
            assert client.stdin is not None and client.stdout is not None
            control = Path(self.valgrind).with_name("callgrind_control")
            if client.stdout.readline() == WARM:
                subprocess.run([control, "-i", "on", str(client.pid)], check=True, capture_output=True)
                client.stdin.write(GO)
                client.stdin.flush()
                if client.stdout.readline() == DONE:
                    subprocess.run([control, "-i", "off", str(client.pid)], check=True, capture_output=True)
                    client.stdin.write(END)
            client.stdin.close()
            if client.wait() != 0:
                stderr.seek(0)
                raise ClientFailed(_tail(stderr.read()) or f"exit {client.returncode}")
        return read_ir(out)

    def _argv(self, run: Run, n: int) -> list[str]:
        return [sys.executable, str(CLIENT), run.case, run.stack, run.mode, f"{n:0{N_DIGITS}d}",
                str(self.warmup), self.base_url]


def read_ir(path: Path) -> int:
    """The instructions a callgrind output file counts: its ``totals:`` line, else its ``summary:`` line.

    With instrumentation switched off before the end, callgrind writes
    ``summary: 0`` at the top and the count in ``totals:``.
    """
    found: dict[str, int] = {}
    for line in path.read_text().splitlines():
        if line.startswith(("summary:", "totals:")):
            key, value = line.split()[:2]
            found.setdefault(key, int(value))
    for key in ("totals:", "summary:"):
        if key in found:
            return found[key]
    raise ValueError(f"{path} has no summary: or totals: line")


def _tail(stderr: str) -> str:
    """The last two lines of a traceback (the source line and the error), without valgrind's own."""
    lines = [s.strip() for s in stderr.splitlines() if not s.startswith("==") and set(s) - set("^~ ")]
    return " — ".join(lines[-2:])


@contextlib.contextmanager
def upstream() -> Iterator[str]:
    """The uvicorn upstream in its own process on a free port of 127.0.0.1; yields its base URL."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        base_url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        server = subprocess.Popen([sys.executable, str(CLIENT), "serve", str(sock.fileno())],
                                  pass_fds=[sock.fileno()])
    try:
        _wait_ready(base_url, server)
        yield base_url
    finally:
        server.terminate()
        server.wait(BOOT_SECONDS)


def _wait_ready(base_url: str, server: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + BOOT_SECONDS
    while server.poll() is None and time.monotonic() < deadline:
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(base_url + "/json", timeout=1.0).status_code == 200:
                return
        time.sleep(0.05)
    server.kill()
    raise RuntimeError(f"the upstream did not answer on {base_url} (exit {server.poll()})")


def measure(cases: Iterable[str] = CASES, n: int | None = None, *, stacks: Sequence[str] = STACKS,
            warmup: int = WARMUP, valgrind: str = VALGRIND, jobs: int = 2) -> list[Result]:
    """Count every case on every stack; ``n`` measured requests each (default 400, 4,000 for ``guard``).

    ``jobs`` clients run under callgrind at once (counts do not depend on it).
    A run that fails (say, a stack the transport does not serve yet) is a
    :class:`Result` with its ``error``, not an exception.
    """
    results, _ = measure_all(cases, n, stacks=stacks, otel_cases=(), warmup=warmup, valgrind=valgrind,
                             jobs=jobs)
    return results


def measure_all(cases: Iterable[str] = CASES, n: int | None = None, *, stacks: Sequence[str] = STACKS,
                otel_cases: Iterable[str] = OTEL_CASES, otel_stacks: Sequence[str] = OTEL_STACKS,
                warmup: int = WARMUP, valgrind: str = VALGRIND,
                jobs: int = 2) -> tuple[list[Result], list[OtelResult]]:
    """:func:`measure`, and the OpenTelemetry comparison of ``otel_cases`` on ``otel_stacks``.

    Both share one upstream and count a run they have in common once. Without
    opentelemetry-api and -sdk installed, the comparison's results carry an error.
    """
    pairs: list[tuple[Run, Run]] = []
    for case in cases:
        count = n if n is not None else GUARD_N if case == "guard" else HTTP_N
        if case == "guard":
            peers = [p for p in GUARD_PEERS if importlib.util.find_spec(p) is not None]
            pairs += [(Run(case, p, "bare", count), Run(case, "-", "wrapped", count)) for p in peers]
        else:
            pairs += [(Run(case, s, "bare", count), Run(case, s, "wrapped", count)) for s in stacks]
    missing = _otel_missing()
    triples = [tuple(Run(case, s, mode, HTTP_N if n is None else n) for mode in OTEL_MODES)
               for case in otel_cases for s in otel_stacks]
    counting = [] if missing else triples
    runs = list(dict.fromkeys([*(run for pair in pairs for run in pair),
                               *(run for triple in counting for run in triple)]))
    counted: dict[Run, float | ClientFailed] = {}
    if runs:
        with tempfile.TemporaryDirectory(prefix="callgrind-") as out_dir, upstream() as base_url:
            runner = Runner(valgrind, Path(out_dir), base_url, warmup)
            with ThreadPoolExecutor(jobs) as pool:
                counted = dict(zip(runs, pool.map(runner.per_request, runs), strict=True))
    results = [_result(bare, counted[bare], counted[wrapped]) for bare, wrapped in pairs]
    if missing:
        return results, [OtelResult(case=t[0].case, stack=t[0].stack, n=t[0].n, error=missing)
                         for t in triples]
    return results, [_otel_result(triple, counted) for triple in triples]


def _otel_missing() -> str | None:
    """Why the OpenTelemetry comparison cannot run here, or ``None``."""
    for module in ("opentelemetry.trace", "opentelemetry.sdk.trace"):
        try:
            found = importlib.util.find_spec(module) is not None
        except ModuleNotFoundError:
            found = False
        if not found:
            return f"{module} is not installed (pip install opentelemetry-api opentelemetry-sdk)"
    return None


def _otel_result(triple: Sequence[Run], counted: Mapping[Run, float | ClientFailed]) -> OtelResult:
    counts = [counted[run] for run in triple]
    failed = [f"{run.mode}: {c}" for run, c in zip(triple, counts, strict=True)
              if isinstance(c, ClientFailed)]
    no_otel, untraced, traced = (_count_of(c) for c in counts)
    return OtelResult(case=triple[0].case, stack=triple[0].stack, n=triple[0].n, no_otel=no_otel,
                      untraced=untraced, traced=traced, error="; ".join(failed) or None)


def _result(run: Run, bare: float | ClientFailed, wrapped: float | ClientFailed) -> Result:
    modes = (("bare", bare), ("wrapped", wrapped))
    failed = [f"{mode}: {counted}" for mode, counted in modes if isinstance(counted, ClientFailed)]
    return Result(case=run.case, stack=run.stack, n=run.n, bare=_count_of(bare), wrapped=_count_of(wrapped),
                  error="; ".join(failed) or None)


def _count_of(counted: float | ClientFailed) -> float | None:
    return None if isinstance(counted, ClientFailed) else counted


def markdown(results: Iterable[Result]) -> str:
    """| case | stack | bare | wrapped | ratio | extra |, in instructions per request."""
    rows = ["| case | stack | bare | wrapped | ratio | extra |", "| --- | --- | ---: | ---: | ---: | ---: |"]
    for r in results:
        bare, wrapped = ("failed" if v is None else f"{v:,.0f}" for v in (r.bare, r.wrapped))
        ratio, extra = _number(r.ratio, "{:.2f}×"), _number(r.extra, "{:+,.0f}")
        rows.append(f"| {r.case} | {r.stack} | {bare} | {wrapped} | {ratio} | {extra} |")
    failures = [f"- {r.case} on {r.stack}: {r.error}" for r in results if r.error]
    return "\n".join(rows + (["", *failures] if failures else []))


def _number(value: float | None, spec: str) -> str:
    return "—" if value is None or not math.isfinite(value) else spec.format(value)


def otel_markdown(results: Iterable[OtelResult]) -> str:
    """| case | stack | no otel | otel, no provider | ratio | provider set | span |, Ir per request."""
    rows = ["| case | stack | no otel | otel-api, no provider | ratio | provider set | span |",
            "| --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    for r in results:
        counts = ("failed" if v is None else f"{v:,.0f}" for v in (r.no_otel, r.untraced, r.traced))
        no_otel, untraced, traced = counts
        ratio, span = _number(r.api_ratio, "{:.4f}×"), _number(r.span_extra, "{:+,.0f}")
        rows.append(f"| {r.case} | {r.stack} | {no_otel} | {untraced} | {ratio} | {traced} | {span} |")
    failures = [f"- otel {r.case} on {r.stack}: {r.error}" for r in results if r.error]
    return "\n".join(rows + (["", *failures] if failures else []))


def main(argv: list[str] | None = None) -> None:
    """Measure, print the tables, and write the JSON if asked."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0] if __doc__ else None)
    parser.add_argument("cases", nargs="*", metavar="CASE",
                        help=f"any of {', '.join((*CASES, OTEL))} (default all)")
    parser.add_argument("-n", type=int, help=f"measured requests (default {HTTP_N}, {GUARD_N} for guard)")
    parser.add_argument("--warmup", type=int, default=WARMUP, help="requests before the measured ones")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the results here")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.cases) - {*CASES, OTEL})
    if unknown:
        parser.error(f"unknown cases {unknown}; the cases are {', '.join((*CASES, OTEL))}")
    if not Path(VALGRIND).exists():
        sys.exit(f"{VALGRIND} is missing: apt-get install -y valgrind")
    cases = [c for c in args.cases if c != OTEL] if args.cases else list(CASES)
    otel_cases = OTEL_CASES if not args.cases or OTEL in args.cases else ()
    started, when, commit = time.monotonic(), datetime.datetime.now(datetime.UTC), _commit()
    results, otel = measure_all(cases, args.n, otel_cases=otel_cases, warmup=args.warmup)
    seconds = time.monotonic() - started
    if results:
        print(markdown(results))
    if otel:
        print(("\n" if results else "") + otel_markdown(otel))
    print(f"\nInstructions (Ir) per request, callgrind; warm-up {args.warmup}; {seconds:.0f} s.")
    if args.json:
        document = {"unit": "Ir per request", "warmup": args.warmup, "seconds": round(seconds, 1),
                    "datetime": when.isoformat(timespec="seconds"), "commit": commit,
                    "python": sys.version.split()[0], "valgrind": _valgrind_version(),
                    "results": [r.as_dict() for r in results], "otel": [r.as_dict() for r in otel]}
        args.json.write_text(json.dumps(document, indent=2) + "\n")


def _commit() -> str | None:
    """The checked-out commit, with ``+`` when the tree has changes, or ``None`` outside git."""
    root = CLIENT.parents[1]
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True,
                              text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=root, capture_output=True, text=True,
                               check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return head + ("+" if dirty else "")


def _valgrind_version() -> str | None:
    try:
        return subprocess.run([VALGRIND, "--version"], capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


if __name__ == "__main__":
    main()
