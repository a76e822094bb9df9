"""Rate-limit headers: parsed in every format, kept per provider, shown and exported; never an error."""

from __future__ import annotations

import anyio
import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry
from trio.testing import MockClock

import resilience
from resilience._asgi.dashboard import health_payload
from resilience._http.ratelimit import duration, read, until
from resilience.testing import FakeClock

pytestmark = [pytest.mark.anyio, pytest.mark.usefixtures("stack")]  # httpx2 and httpx

NOW = 1_700_000_000.0


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        pytest.param("1s", 1.0, id="seconds"),
        pytest.param("6m0s", 360.0, id="minutes-seconds"),
        pytest.param("20ms", 0.02, id="milliseconds"),
        pytest.param("1h2m3.5s", 3723.5, id="hours-minutes-fraction"),
        pytest.param("0.5", 0.5, id="bare-number"),
        pytest.param("", None, id="empty"),
        pytest.param("soon", None, id="garbage"),
        pytest.param("-1s", None, id="negative"),
        pytest.param("99999999h", None, id="beyond-a-year"),
    ],
)
def test_openai_style_resets(text: str, seconds: float | None) -> None:
    """Durations as OpenAI writes them; anything else is None."""
    assert duration(text) == (None if seconds is None else pytest.approx(seconds))


def test_rfc3339_resets_are_read_against_the_wall_clock() -> None:
    """Anthropic's reset times: seconds from now, 0 once past, None when unreadable."""
    assert until("2023-11-14T22:13:40Z", NOW) == pytest.approx(20.0)
    assert until("2023-11-14T22:13:40+00:00", NOW) == pytest.approx(20.0)
    assert until("2020-01-01T00:00:00Z", NOW) == 0.0
    assert until("2023-11-14T22:13:40", NOW) is None  # no zone
    assert until("tomorrow", NOW) is None


def triples(headers: dict[str, str]) -> list[tuple[bytes, bytes, bytes]]:
    return [(k.encode(), k.lower().encode(), v.encode()) for k, v in headers.items()]


def test_read_openai_and_anthropic_headers() -> None:
    """Both header families; Anthropic tokens from -tokens-*, else -input-tokens-*; retry-after-ms."""
    openai, bad = read(triples({
        "x-ratelimit-limit-requests": "100", "x-ratelimit-remaining-requests": "99",
        "x-ratelimit-reset-requests": "6m0s", "x-ratelimit-limit-tokens": "1000",
        "x-ratelimit-remaining-tokens": "0", "x-ratelimit-reset-tokens": "20ms", "retry-after-ms": "1500",
    }), lambda: NOW)
    assert bad == 0 and openai is not None
    assert (openai.requests_limit, openai.requests_remaining, openai.requests_reset) == (100, 99, 360.0)
    assert (openai.tokens_limit, openai.tokens_remaining, openai.tokens_reset) == (1000, 0, 0.02)
    assert openai.retry_after == 1.5
    anthropic, bad = read(triples({
        "anthropic-ratelimit-requests-remaining": "4",
        "anthropic-ratelimit-requests-reset": "2023-11-14T22:13:40Z",
        "anthropic-ratelimit-input-tokens-remaining": "70", "anthropic-ratelimit-input-tokens-limit": "80",
    }), lambda: NOW)
    assert bad == 0 and anthropic is not None
    assert anthropic.requests_remaining == 4 and anthropic.requests_reset == pytest.approx(20.0)
    assert (anthropic.tokens_remaining, anthropic.tokens_limit) == (70, 80)
    assert read(triples({"content-type": "application/json"}), lambda: NOW) == (None, 0)


def test_malformed_values_are_ignored_and_counted() -> None:
    """A bad number or reset is left out and counted; the good ones stay."""
    limits, bad = read(triples({
        "x-ratelimit-remaining-requests": "lots", "x-ratelimit-reset-requests": "whenever",
        "x-ratelimit-remaining-tokens": "7", "retry-after-ms": "-5",
    }), lambda: NOW)
    assert bad == 3
    assert limits is not None and limits.tokens_remaining == 7 and limits.requests_remaining is None


@given(st.dictionaries(
    st.sampled_from(["x-ratelimit-remaining-requests", "x-ratelimit-reset-tokens", "retry-after-ms",
                     "anthropic-ratelimit-tokens-reset", "anthropic-ratelimit-requests-limit", "x-other"]),
    st.text(max_size=40).map(lambda s: s.encode("utf-8", "surrogatepass").decode("latin-1")),
))
def test_read_never_raises(headers: dict[str, str]) -> None:
    """Any header values: a result and a count, never an exception."""
    _limits, bad = read(triples(headers), lambda: NOW)
    assert bad >= 0


def wired(headers: dict[str, str], status: int = 200) -> tuple[httpx.Client, resilience.ProviderRegistry,
                                                              FakeClock, CollectorRegistry]:
    """A client whose upstream answers ``status`` with ``headers``; provider ``p``, fake time, metrics."""
    clock = FakeClock(100.0)
    registry = resilience.ProviderRegistry(clock=clock)
    registry.register("p", hosts=["p.test"])
    prom = CollectorRegistry()
    registry.register_metrics(prom)
    upstream = httpx.MockTransport(lambda request: httpx.Response(status, headers=headers, json={}))
    transport = resilience.ResilientTransport(registry, transport=upstream, sleep=clock.sleep)
    return httpx.Client(transport=transport), registry, clock, prom


def test_provider_keeps_the_latest_quota_and_counts_down_its_reset() -> None:
    """Provider.ratelimit, the dashboard's "ratelimit" and the remaining gauge follow the latest response."""
    client, registry, clock, prom = wired({
        "x-ratelimit-limit-requests": "100", "x-ratelimit-remaining-requests": "99",
        "x-ratelimit-reset-requests": "6m0s",
    })
    provider = registry.get("p")
    assert provider.ratelimit is None
    client.post("https://p.test/v1", json={"model": "m"})
    assert provider.ratelimit == {"requests_remaining": 99, "requests_limit": 100, "tokens_remaining": None,
                                  "tokens_limit": None, "reset_seconds": 360.0, "exhausted": False}
    clock.advance(60.0)
    assert provider.ratelimit is not None and provider.ratelimit["reset_seconds"] == pytest.approx(300.0)
    entry = health_payload(registry)["providers"][0]
    assert entry["ratelimit"]["requests_remaining"] == 99
    assert entry["ratelimit"]["reset_seconds"] == pytest.approx(300.0)
    labels = {"provider": "p", "kind": "requests"}
    assert prom.get_sample_value("gatewayz_provider_ratelimit_remaining", labels) == 99


def test_zero_remaining_is_exhausted_until_the_reset() -> None:
    """0 requests left with the reset ahead: exhausted (the breaker's state unchanged), then not."""
    client, registry, clock, _ = wired({
        "x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "10s",
        "x-ratelimit-remaining-tokens": "500", "x-ratelimit-reset-tokens": "1s",
    })
    client.post("https://p.test/v1", json={"model": "m"})
    provider = registry.get("p")
    assert provider.ratelimit is not None
    assert provider.ratelimit["exhausted"] is True
    assert provider.ratelimit["reset_seconds"] == pytest.approx(10.0)  # the exhausted kind's reset
    assert provider.state == "closed"
    clock.advance(10.0)
    assert provider.ratelimit["exhausted"] is False


def test_malformed_headers_are_counted_and_the_call_goes_on() -> None:
    """A malformed rate-limit header never fails a call: counted as ratelimit_header."""
    client, registry, _, prom = wired({"x-ratelimit-remaining-requests": "many"})
    assert client.post("https://p.test/v1", json={"model": "m"}).status_code == 200
    assert registry.get("p").errors == {"ratelimit_header": 1}
    labels = {"provider": "p", "kind": "ratelimit_header"}
    assert prom.get_sample_value("gatewayz_resilience_errors_total", labels) == 1


def test_retry_after_ms_wins_over_retry_after() -> None:
    """A 429 with both: the retry waits retry-after-ms, not Retry-After."""
    client, _, clock, _ = wired({"retry-after": "7", "retry-after-ms": "1500"}, status=429)
    client.post("https://p.test/v1", json={"model": "m"})
    assert clock.sleeps[0] == pytest.approx(1.5)


def held_client(hold: bool) -> tuple[httpx.Client, resilience.ProviderRegistry, FakeClock, list[int]]:
    """An upstream with a quota of 2 requests per 10 s window, announced in its headers; 429 past it."""
    clock = FakeClock(100.0)
    registry = resilience.ProviderRegistry(clock=clock)
    registry.register("p", hosts=["p.test"], policy=resilience.Policy(
        hold_when_exhausted=hold, retry=resilience.RetryPolicy(attempts=1)))
    served: list[int] = []

    def answer(request: httpx.Request) -> httpx.Response:
        window = int(clock() // 10)
        used = sum(1 for w in served if w == window)
        served.append(window)
        left = max(0, 2 - used - 1)
        reset = f"{10 - clock() % 10:.3f}s"
        headers = {"x-ratelimit-limit-requests": "2", "x-ratelimit-remaining-requests": str(left),
                   "x-ratelimit-reset-requests": reset}
        return httpx.Response(429 if used >= 2 else 200, headers=headers, json={})

    upstream = httpx.MockTransport(answer)
    transport = resilience.ResilientTransport(registry, transport=upstream, sleep=clock.sleep)
    return httpx.Client(transport=transport), registry, clock, served


def test_hold_when_exhausted_rejects_at_once_until_the_reset() -> None:
    """Once 0 requests remain, calls raise CircuitOpenError (retry_after = time to reset), counted rejected,
    without reaching the provider; after the reset they go through again."""
    client, registry, clock, served = held_client(hold=True)
    assert client.post("https://p.test/v1", json={}).status_code == 200
    assert client.post("https://p.test/v1", json={}).status_code == 200  # said: 0 remaining, reset ahead
    clock.advance(1.0)
    with pytest.raises(resilience.CircuitOpenError) as held:
        client.post("https://p.test/v1", json={})
    assert held.value.provider == "p" and held.value.retry_after == pytest.approx(9.0)
    assert held.value.state == "exhausted"
    assert len(served) == 2
    snapshot = registry.get("p").snapshot()
    assert snapshot.requests_total["rejected"] == 1 and snapshot.state == "closed"
    clock.advance(9.0)
    assert client.post("https://p.test/v1", json={}).status_code == 200
    assert len(served) == 3


def test_without_hold_every_over_quota_call_reaches_the_provider() -> None:
    """The baseline: no hold, so each call past the quota gets its 429 from the provider."""
    client, _, _, served = held_client(hold=False)
    statuses = [client.post("https://p.test/v1", json={}).status_code for _ in range(5)]
    assert statuses == [200, 200, 429, 429, 429]
    assert len(served) == 5


def test_hold_when_exhausted_must_be_a_bool() -> None:
    """Validated at construction, naming the field."""
    with pytest.raises(resilience.ConfigError, match="hold_when_exhausted"):
        resilience.Policy(hold_when_exhausted="yes")  # type: ignore[arg-type]


QUOTA, WINDOW, LATENCY = 20, 2.0, 0.02


async def fifty_callers(hold: bool) -> dict[int, list[int]]:
    """50 concurrent callers for 10 s against a quota of 20 requests per 2 s window (virtual time).

    The provider counts a request when it arrives (one way ``LATENCY`` after
    it is sent), answers 429 past the quota, and announces what is left and
    the time to its reset in OpenAI's headers. Callers wait what a
    ``CircuitOpenError`` says. Returns, per window, the statuses it answered.
    """
    start = anyio.current_time()

    def clock() -> float:
        return anyio.current_time() - start

    registry = resilience.ProviderRegistry(clock=clock)
    registry.register("p", hosts=["p.test"], policy=resilience.Policy(
        hold_when_exhausted=hold, retry=resilience.RetryPolicy(attempts=1),
        throttled_is_failure=False))  # the quota alone, not the breaker, keeps the callers off
    answered: dict[int, list[int]] = {}

    async def answer(request: httpx.Request) -> httpx.Response:
        await anyio.sleep(LATENCY)
        now = clock()
        window = int(now // WINDOW)
        used = len(answered.setdefault(window, []))
        status = 429 if used >= QUOTA else 200
        answered[window].append(status)
        headers = {"x-ratelimit-limit-requests": str(QUOTA),
                   "x-ratelimit-remaining-requests": str(max(0, QUOTA - used - 1)),
                   "x-ratelimit-reset-requests": f"{(window + 1) * WINDOW - now:.4f}s"}
        await anyio.sleep(LATENCY)
        return httpx.Response(status, headers=headers, json={})

    transport = resilience.ResilientTransport(registry, transport=httpx.MockTransport(answer))
    async with httpx.AsyncClient(transport=transport) as client:

        async def caller() -> None:
            while clock() < 10.0:
                try:
                    response = await client.post("https://p.test/v1", json={})
                except resilience.CircuitOpenError as held:
                    await anyio.sleep(held.retry_after)
                    continue
                await anyio.sleep(0.1 if response.status_code == 429 else 0.0)

        async with anyio.create_task_group() as group:
            for _ in range(50):
                group.start_soon(caller)
    return answered


@pytest.mark.parametrize(
    "anyio_backend", [pytest.param(("trio", {"clock": MockClock(autojump_threshold=0)}), id="virtual-time")]
)
async def test_fifty_callers_get_at_most_one_429_per_window_once_the_quota_is_known() -> None:
    """With hold_when_exhausted the callers stay within the quota: after the first window (sent before any
    answer could announce it), the provider answers at most one 429 per reset window; without, each
    over-quota call reaches it and gets its 429."""
    held = await fifty_callers(hold=True)
    baseline = await fifty_callers(hold=False)
    later = {w: s.count(429) for w, s in held.items() if w > 0}
    assert len(later) >= 4 and max(later.values()) <= 1, later
    assert all(s.count(200) == QUOTA for w, s in held.items() if 0 < w < 4)  # the quota, used in full
    assert min(s.count(429) for w, s in baseline.items() if 0 < w < 4) > 20
