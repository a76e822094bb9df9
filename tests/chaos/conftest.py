"""Fixtures of the chaos suite: the fake provider's two servers, a refused port, the tally.

The servers live for one test module; their counters are zeroed before each
test. The tally of every fault served and invariant checked is written to
``test-artifacts/chaos-summary.json`` when the session ends.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
import uvicorn
from chaos._drive import Bases
from chaos._invariants import Tally
from chaos._upstream import RawServer, Upstream, make_app
from integration._server import ThreadedServer

SUMMARY = Path(__file__).resolve().parents[2] / "test-artifacts" / "chaos-summary.json"

_TALLY = Tally()


@pytest.fixture(scope="session")
def tally() -> Iterator[Tally]:
    """What the suite injected and checked; written to :data:`SUMMARY` at the end."""
    yield _TALLY
    _TALLY.write(SUMMARY)


@pytest.fixture(scope="module")
def servers() -> Iterator[tuple[Upstream, Bases]]:
    """The fake provider on uvicorn and on a raw socket server, plus a port nothing listens on."""
    upstream = Upstream()
    config = uvicorn.Config(
        make_app(upstream), host="127.0.0.1", port=0, lifespan="off", log_level="critical", ws="none",
        timeout_keep_alive=120, timeout_graceful_shutdown=5, backlog=2048,
    )
    with (
        ThreadedServer(config).run_in_thread() as http,
        RawServer(upstream).running() as raw,
        refused_port() as refused,
    ):
        yield upstream, Bases(http=http, raw=raw, refused=refused)


@pytest.fixture
def upstream(servers: tuple[Upstream, Bases]) -> Upstream:
    """The counters of the fake provider, zeroed."""
    servers[0].reset()
    return servers[0]


@pytest.fixture
def bases(servers: tuple[Upstream, Bases]) -> Bases:
    """Where each kind of path goes."""
    return servers[1]


@contextlib.contextmanager
def refused_port() -> Iterator[str]:
    """A base URL on 127.0.0.1 whose port is bound but never listened on: connections are refused."""
    with socket.socket() as holder:  # kept bound so no other test takes the port meanwhile
        holder.bind(("127.0.0.1", 0))
        yield f"http://127.0.0.1:{holder.getsockname()[1]}"
