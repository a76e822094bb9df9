"""``python -m resilience demo [--port N] [--seconds N] [--rps N]``."""

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
    args = parser.parse_args(argv)
    try:
        from resilience.demo import DemoOptions, run
    except ImportError as exc:
        parser.exit(2, f"the demo needs uvicorn ({exc}): pip install 'llm-resilience[demo]'\n")
    try:
        options = DemoOptions.from_env(os.environ, port=args.port, seconds=args.seconds, rps=args.rps)
    except ValueError as exc:
        parser.error(str(exc))
    return run(options)


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:  # Ctrl-C before the demo took over the signals
        sys.exit(130)
