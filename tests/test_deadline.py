"""Deadlines' building blocks: the core value, a call's deadline, capped timeouts, the error."""

from __future__ import annotations

import math
import pickle
from types import ModuleType
from typing import Any

import httpx
import httpx2
import pytest

import resilience
from resilience import ConfigError, DeadlineExceededError, ProviderRegistry, RequestStats
from resilience._core.deadline import Deadline, earliest, header_seconds, valid_seconds
from resilience._http.deadline import call_deadline, cap_timeouts, exceeded, request_seconds
from resilience._http.stacks import stack_of
from resilience.testing import FakeClock

NOW = 1000.0


def request(**extensions: Any) -> httpx.Request:
    """A request of the stack under test, built by a client as SDKs build theirs (timeouts included)."""
    with httpx.Client(timeout=httpx.Timeout(30.0, connect=5.0)) as client:
        return client.build_request("POST", "https://api.example.com/v1/chat", extensions=extensions)


# -- the core value ------------------------------------------------------------------


def test_earliest_picks_the_first_to_pass_and_skips_none() -> None:
    """The earliest absolute time wins; None is no deadline; a tie keeps the first given."""
    a, b, c = Deadline(5.0, 5.0, "request"), Deadline(3.0, 9.0, "inbound"), Deadline(3.0, 3.0, "policy")
    assert earliest() is None
    assert earliest(None, None) is None
    assert earliest(None, a) is a
    assert earliest(a, b, c) is b
    assert earliest(c, b) is c
    assert b.left(1.0) == 2.0
    assert b.left(4.0) == -1.0


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        pytest.param(2, 2.0, id="int"),
        pytest.param(0.25, 0.25, id="float"),
        pytest.param(0, None, id="zero"),
        pytest.param(-1.0, None, id="negative"),
        pytest.param(math.nan, None, id="nan"),
        pytest.param(math.inf, None, id="inf"),
        pytest.param(True, None, id="bool"),
        pytest.param("2", None, id="str"),
        pytest.param(None, None, id="none"),
    ],
)
def test_valid_seconds(value: object, seconds: float | None) -> None:
    """Only a finite real number > 0 (not a bool) is a deadline's length."""
    assert valid_seconds(value) == seconds


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        pytest.param(b"2", 2.0, id="int"),
        pytest.param(b"0.5", 0.5, id="decimal"),
        pytest.param(b" 1.25 ", 1.25, id="padded"),
        pytest.param(b".5", 0.5, id="leading-dot"),
        pytest.param(b"3.", 3.0, id="trailing-dot"),
        pytest.param(b"0", None, id="zero"),
        pytest.param(b"-1", None, id="negative"),
        pytest.param(b"nan", None, id="nan"),
        pytest.param(b"inf", None, id="inf"),
        pytest.param(b"1e3", None, id="exponent"),
        pytest.param(b"1_000", None, id="underscore"),
        pytest.param(b"", None, id="empty"),
        pytest.param(b"2s", None, id="unit"),
        pytest.param(b"9" * 400, None, id="huge"),
        pytest.param("٣".encode(), None, id="non-ascii-digit"),
    ],
)
def test_header_seconds(value: bytes, seconds: float | None) -> None:
    """A deadline header is plain decimal seconds > 0; anything else is malformed."""
    assert header_seconds(value) == seconds


def test_request_stats_carry_no_deadline_by_default() -> None:
    """A fresh RequestStats has no inbound deadline."""
    assert RequestStats().deadline is None


# -- a call's deadline ---------------------------------------------------------------


def test_no_deadline_anywhere_is_none(stack: ModuleType) -> None:
    """Without any deadline set the call has none."""
    assert call_deadline(request(), None, None, NOW, None) is None
    assert call_deadline(request(), None, None, NOW, RequestStats()) is None


@pytest.mark.parametrize(
    ("extension", "policy", "route", "inbound", "expected"),
    [
        pytest.param(2.0, None, None, None, Deadline(NOW + 2, 2.0, "request"), id="request"),
        pytest.param(None, 3.0, None, None, Deadline(NOW + 3, 3.0, "policy"), id="policy"),
        pytest.param(None, None, 4.0, None, Deadline(NOW + 4, 4.0, "route"), id="route"),
        pytest.param(None, None, None, 1.5, Deadline(NOW + 1.5, 9.0, "inbound"), id="inbound"),
        pytest.param(2, 3.0, 4.0, 8.0, Deadline(NOW + 2, 2.0, "request"), id="request-earliest"),
        pytest.param(5.0, 3.0, 4.0, 8.0, Deadline(NOW + 3, 3.0, "policy"), id="policy-earliest"),
        pytest.param(5.0, 6.0, 4.0, 8.0, Deadline(NOW + 4, 4.0, "route"), id="route-earliest"),
        pytest.param(5.0, 6.0, 7.0, 0.5, Deadline(NOW + 0.5, 9.0, "inbound"), id="inbound-earliest"),
    ],
)
def test_the_earliest_deadline_wins(
    stack: ModuleType,
    extension: float | None,
    policy: float | None,
    route: float | None,
    inbound: float | None,
    expected: Deadline,
) -> None:
    """Lengths become absolute at ``now``; the inbound one is absolute already; the earliest wins."""
    stats = RequestStats()
    if inbound is not None:
        stats.deadline = Deadline(NOW + inbound, 9.0, "inbound")
    extensions = {} if extension is None else {"deadline": extension}
    assert call_deadline(request(**extensions), policy, route, NOW, stats) == expected


@pytest.mark.parametrize(
    "value",
    [
        pytest.param(0, id="zero"),
        pytest.param(-2.0, id="negative"),
        pytest.param(math.nan, id="nan"),
        pytest.param(math.inf, id="inf"),
        pytest.param("5", id="str"),
        pytest.param(True, id="bool"),
    ],
)
def test_a_bad_request_deadline_is_a_config_error(stack: ModuleType, value: object) -> None:
    """``extensions["deadline"]`` must be a finite number > 0; the error names it and the value."""
    with pytest.raises(ConfigError, match=r'extensions\["deadline"\] must be a finite number') as caught:
        call_deadline(request(deadline=value), None, None, NOW, None)
    assert repr(value) in str(caught.value)
    assert isinstance(caught.value, ValueError)


def test_request_seconds_reads_the_extension(stack: ModuleType) -> None:
    """The request's own deadline length, or None."""
    assert request_seconds(request(deadline=1.5)) == 1.5
    assert request_seconds(request()) is None


# -- capped timeouts -----------------------------------------------------------------


def test_cap_timeouts_caps_each_timeout_at_the_time_left(stack: ModuleType) -> None:
    """Connect, read, write and pool become the smaller of their value and the time left."""
    sent = request()
    assert sent.extensions["timeout"] == {"connect": 5.0, "read": 30.0, "write": 30.0, "pool": 30.0}
    cap_timeouts(sent, 10.0)
    assert sent.extensions["timeout"] == {"connect": 5.0, "read": 10.0, "write": 10.0, "pool": 10.0}
    cap_timeouts(sent, 2.0)
    assert sent.extensions["timeout"] == {"connect": 2.0, "read": 2.0, "write": 2.0, "pool": 2.0}


def test_cap_timeouts_bounds_unlimited_and_missing_timeouts(stack: ModuleType) -> None:
    """A None timeout (unlimited), a missing key or no timeout dict at all become the time left."""
    unlimited = httpx.Request("GET", "https://x.test", extensions={"timeout": {"connect": None, "read": 4.0}})
    cap_timeouts(unlimited, 3.0)
    assert unlimited.extensions["timeout"] == {"connect": 3.0, "read": 3.0, "write": 3.0, "pool": 3.0}
    bare = httpx.Request("GET", "https://x.test")
    cap_timeouts(bare, 1.5)
    assert bare.extensions["timeout"] == {"connect": 1.5, "read": 1.5, "write": 1.5, "pool": 1.5}


def test_cap_timeouts_never_mutates_a_shared_timeout_dict(stack: ModuleType) -> None:
    """Requests sharing one timeout dict keep it whole: the capped request gets its own."""
    shared = {"connect": 5.0, "read": 60.0, "write": 60.0, "pool": 60.0}
    first = httpx.Request("GET", "https://x.test", extensions={"timeout": shared})
    second = httpx.Request("GET", "https://x.test", extensions={"timeout": shared})
    cap_timeouts(first, 1.0)
    assert shared == {"connect": 5.0, "read": 60.0, "write": 60.0, "pool": 60.0}
    assert second.extensions["timeout"] is shared
    assert first.extensions["timeout"] is not shared


def test_cap_timeouts_past_the_deadline_is_zero(stack: ModuleType) -> None:
    """A negative time left caps at zero, never a negative timeout."""
    sent = request()
    cap_timeouts(sent, -0.5)
    assert set(sent.extensions["timeout"].values()) == {0.0}


def test_a_capped_read_timeout_reaches_the_transport(stack: ModuleType) -> None:
    """The stack's transport sees the capped timeouts (what httpcore enforces per read)."""
    seen: list[dict[str, Any]] = []

    def handler(sent: httpx.Request) -> httpx.Response:
        seen.append(dict(sent.extensions["timeout"]))
        return httpx.Response(200)

    with httpx.Client(transport=httpx.MockTransport(handler), timeout=30.0) as client:
        built = client.build_request("GET", "https://x.test")
        cap_timeouts(built, 0.75)
        client.send(built)
    assert seen == [{"connect": 0.75, "read": 0.75, "write": 0.75, "pool": 0.75}]


# -- the error -----------------------------------------------------------------------


def test_exceeded_is_the_request_stacks_timeout(stack: ModuleType) -> None:
    """The error is a ResilienceError and the request's own stack's TimeoutException, with its fields."""
    sent = request(deadline=2.5)
    error = exceeded(stack_of(sent), Deadline(NOW + 2.5, 2.5, "request"), "openrouter", sent)
    assert isinstance(error, DeadlineExceededError)
    assert isinstance(error, resilience.ResilienceError)
    assert isinstance(error, stack.TimeoutException)
    assert isinstance(error, httpx2.TimeoutException)
    assert type(error).__name__ == "DeadlineExceededError"
    assert error.deadline == 2.5
    assert error.provider == "openrouter"
    assert error.request is sent  # type: ignore[comparison-overlap]  # the stack's own request class
    assert str(error) == "the deadline of 2.5s (request) passed before the call to 'openrouter' ended"


def test_stack_factory_builds_the_stacks_class(stack: ModuleType) -> None:
    """``Stack.deadline_exceeded(...)`` builds that stack's class, as ``stream_timeout`` does."""
    sent = request()
    error = stack_of(sent).deadline_exceeded("late", request=sent, deadline=1, provider="groq")
    assert isinstance(error, stack.TimeoutException)
    assert (error.deadline, error.provider, str(error)) == (1.0, "groq", "late")


def test_deadline_exceeded_error_pickles_as_its_own_class(stack: ModuleType) -> None:
    """A pickled error comes back as the same stack's class with its fields (the request is not kept)."""
    sent = request()
    error = stack_of(sent).deadline_exceeded("late", request=sent, deadline=3.0, provider="groq")
    back = pickle.loads(pickle.dumps(error))
    assert type(back) is type(error)
    assert (back.deadline, back.provider, str(back)) == (3.0, "groq", "late")


def test_deadline_exceeded_error_without_a_request() -> None:
    """Built bare (e.g. by a user's test double) it still carries its fields."""
    error = DeadlineExceededError("late", deadline=0.5, provider="p")
    assert (error.deadline, error.provider) == (0.5, "p")
    with pytest.raises(RuntimeError):
        error.request  # noqa: B018  # httpx2 raises when no request was attached


# -- the counter ---------------------------------------------------------------------


def test_count_deadline_exceeded_reaches_the_snapshot() -> None:
    """Each count adds one to the provider's lifetime total."""
    registry = ProviderRegistry(clock=FakeClock())
    provider = registry.register("openrouter")
    assert provider.snapshot().deadline_exceeded_total == 0
    provider.count_deadline_exceeded()
    provider.count_deadline_exceeded()
    assert provider.snapshot().deadline_exceeded_total == 2
