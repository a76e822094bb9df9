"""What the HTTP layer takes from each stack: the probe of a body handed over already read."""

from __future__ import annotations

import datetime
from types import SimpleNamespace
from typing import Any

import httpx
import httpx2
import pytest

from resilience._http import stacks
from resilience._http.stacks import hold_content


@pytest.mark.parametrize("module", [httpx2, httpx], ids=["httpx2", "httpx"])
def test_todays_stacks_take_a_body_read_already(module: Any) -> None:
    """The probe passes on the versions tested: their clients read no stream the transport has read."""
    assert stacks._holds_content(module) is True
    assert all(stack.holds_content for stack in stacks.STACKS)


@pytest.mark.parametrize("module", [httpx2, httpx], ids=["httpx2", "httpx"])
def test_a_held_body_is_what_the_client_reads(module: Any) -> None:
    """read(), iter_bytes() and json() serve the content; elapsed and the byte count are set; raw stays."""
    response = module.Response(200, stream=module.ByteStream(b'{"a": 1}'))
    hold_content(response, b'{"a": 1}', 1.25)
    assert response.read() == b'{"a": 1}'
    assert response.json() == {"a": 1}
    assert response.elapsed == datetime.timedelta(seconds=1.25)
    assert response.num_bytes_downloaded == 8
    assert b"".join(response.iter_raw()) == b'{"a": 1}'


class _Reads:
    """A stack whose response ignores a preset ``_content``: it always reads its stream."""

    class ByteStream(httpx2.ByteStream):
        pass

    class Response(httpx2.Response):
        def read(self) -> bytes:
            return b"".join(self.iter_raw())


def test_a_stack_that_reads_otherwise_is_not_handed_bodies() -> None:
    """A future version that reads responses its own way: the probe says no, the stream is read."""
    assert stacks._holds_content(_Reads) is False
    assert stacks._holds_content(SimpleNamespace()) is False  # no Response at all: no surprise either
