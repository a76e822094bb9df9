"""``python -m resilience demo [--port N] [--seconds N] [--rps N]`` and ``python -m resilience speedups``."""

from __future__ import annotations

import argparse
import os
import sys


def main(argv: list[str] | None = None) -> int:
    """Parse the command line and run the chosen command; the exit code."""
    parser = argparse.ArgumentParser(prog="python -m resilience")
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="a live gateway with simulated providers on 127.0.0.1")
    demo.add_argument("--port", type=int, help="gateway port (env DEMO_PORT, default 8000)")
    demo.add_argument("--seconds", type=float, help="stop after this long (env DEMO_SECONDS; else Ctrl-C)")
    demo.add_argument("--rps", type=float, help="requests per second (env DEMO_RPS, default 40)")
    speedups = commands.add_parser(
        "speedups", help="compile the transport's happy path with mypyc (extra 'speedups')"
    )
    action = speedups.add_mutually_exclusive_group()
    action.add_argument("--check", action="store_true", help="say which happy path runs; exit 1 if pure")
    action.add_argument("--remove", action="store_true", help="delete the compiled module")
    args = parser.parse_args(argv)
    if args.command == "speedups":
        return _speedups(check=args.check, remove=args.remove)
    try:
        from resilience.demo import DemoOptions, run
    except ImportError as exc:
        parser.exit(2, f"the demo needs uvicorn ({exc}): pip install 'resilience[demo]'\n")
    try:
        options = DemoOptions.from_env(os.environ, port=args.port, seconds=args.seconds, rps=args.rps)
    except ValueError as exc:
        parser.error(str(exc))
    return run(options)


def _speedups(*, check: bool, remove: bool) -> int:
    from resilience import _hot, _speedups_build

    if check:
        compiled = _hot.load().compiled
        print("compiled" if compiled else "pure")
        return 0 if compiled else 1
    if remove:
        for path in _speedups_build.remove():
            print(f"removed {path}")
        return 0
    try:
        path = _speedups_build.build()
    except _speedups_build.BuildError as exc:
        print(f"python -m resilience speedups: {exc}", file=sys.stderr)
        return 1
    print(f"built {path}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:  # Ctrl-C before the demo took over the signals
        sys.exit(130)
