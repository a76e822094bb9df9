"""A hypothesis state machine drives the whole sync transport against a reference model.

``httpx.Client`` + ``ResilientTransport`` over an ``httpx.MockTransport``
whose next answers (statuses, ``Retry-After``, costs, transport errors,
streamed or not) the machine scripts. Time is a ``FakeClock``; retries sleep
on it. The model below restates SPEC "Outcomes", "Breaker", "Retries" and
"Cost" as plainly as possible: per call it predicts every attempt, wait,
retry reason, budget decision and breaker move, and what the caller gets.
"""

from __future__ import annotations

import json
from collections import Counter, deque
from dataclasses import dataclass, field

import httpx
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, consumes, initialize, invariant, multiple, rule

from resilience import (
    BreakerPolicy,
    CircuitOpenError,
    Policy,
    ProviderRegistry,
    ResilientTransport,
    RetryPolicy,
)
from resilience.testing import FakeClock

WINDOW, MINIMUM, RATE, OPEN_S, MAX_OPEN_S, SUCCESSES = 5, 3, 0.6, 10.0, 40.0, 2
ATTEMPTS, BACKOFF, MAX_RETRY_AFTER = 3, 0.5, 5.0
BUDGET_RETRIES, BUDGET_WINDOW = 4, 20.0
RETRY_STATUSES = {429, 500, 502, 503, 504}
ERRORS: dict[str, type[httpx.TransportError]] = {
    "connect": httpx.ConnectError, "read_timeout": httpx.ReadTimeout, "protocol": httpx.RemoteProtocolError,
}


@dataclass(frozen=True)
class Item:
    """One scripted answer of the upstream: a status (with Retry-After, cost, streamed) or an error."""

    status: int = 200
    retry_after: str | None = None
    cost: float | None = None
    streamed: bool = False
    error: str | None = None

    def response(self, request: httpx.Request) -> httpx.Response:
        """What the mock upstream returns (or raises)."""
        if self.error is not None:
            raise ERRORS[self.error]("scripted", request=request)
        body = json.dumps({"usage": {"cost": self.cost}} if self.cost is not None else {"ok": True}).encode()
        headers = {"content-type": "application/json"}
        if self.retry_after is not None:
            headers["retry-after"] = self.retry_after
        content = iter([body[:5], body[5:]]) if self.streamed else body
        return httpx.Response(self.status, headers=headers, content=content)


def unbilled(item: Item) -> Item:
    """No usage in retried answers: a provider bills for what it answered, not for a 429 or 5xx."""
    return Item(item.status, item.retry_after, None, item.streamed) if item.status in RETRY_STATUSES else item


statuses = st.sampled_from([200, 201, 400, 404, 429, 500, 501, 502, 503, 504])
items = st.one_of(
    st.builds(
        Item,
        status=statuses,
        retry_after=st.sampled_from([None, None, "0", "1", "3", "7", "junk"]),
        cost=st.sampled_from([None, 0.125, 0.25]),
        streamed=st.booleans(),
    ).map(unbilled),
    st.builds(Item, error=st.sampled_from(sorted(ERRORS))),
)


@dataclass
class Attempt:
    """The model's view of one attempt: its permit, outcome and whether it is recorded."""

    permit: tuple[int, bool]
    item: Item
    outcome: str = "failure"
    breaker_retry_after: float | None = None
    done: bool = False


@dataclass
class Model:
    """The reference: breaker, budget, counters and clock, restated plainly."""

    open_on_retry_after: bool
    throttled_is_failure: bool
    now: float
    state: str = "closed"
    generation: int = 0
    window: deque[bool] = field(default_factory=lambda: deque(maxlen=WINDOW))
    open_until: float = 0.0
    trips: int = 0
    in_flight: int = 0
    trial_successes: int = 0
    grants: list[int] = field(default_factory=list)
    counts: Counter[str] = field(default_factory=Counter)
    retries: Counter[str] = field(default_factory=Counter)
    transitions: Counter[tuple[str, str]] = field(default_factory=Counter)
    cost: float = 0.0
    hits: int = 0
    sleeps: list[float] = field(default_factory=list)

    # -- breaker ---------------------------------------------------------------

    def move(self, to: str) -> None:
        if to != self.state:
            self.transitions[(self.state, to)] += 1
        self.state, self.generation = to, self.generation + 1
        self.window.clear()
        self.in_flight = self.trial_successes = 0

    def expire(self) -> None:
        if self.state == "open" and self.now >= self.open_until:
            self.move("half_open")

    def trip(self, retry_after: float | None) -> None:
        seconds = min(OPEN_S * 2**self.trips, MAX_OPEN_S)
        if retry_after is not None and self.open_on_retry_after:
            seconds = max(seconds, retry_after)
        self.trips += 1
        self.move("open")
        self.open_until = self.now + seconds

    def admit(self) -> tuple[int, bool] | None:
        self.expire()
        if self.state in ("closed", "disabled"):
            return (self.generation, False)
        if self.state == "half_open" and self.in_flight < 1:
            self.in_flight += 1
            return (self.generation, True)
        self.counts["rejected"] += 1
        return None

    def record(self, attempt: Attempt, *, costed: bool) -> None:
        """One attempt's result: counters, Retry-After, then the breaker (current generation only)."""
        attempt.done = True
        self.counts[attempt.outcome] += 1
        if costed and attempt.item.cost is not None and attempt.item.error is None:
            self.cost += attempt.item.cost
        retry_after = attempt.breaker_retry_after
        if retry_after and self.open_on_retry_after:  # a Retry-After of 0 asks for no wait: opens nothing
            self.open_for(retry_after)
        generation, trial = attempt.permit
        if generation != self.generation:
            return
        throttled = attempt.outcome == "throttled" and self.throttled_is_failure
        failed = attempt.outcome == "failure" or throttled
        if self.state == "closed":
            self.window.append(failed)
            if failed and len(self.window) >= MINIMUM and sum(self.window) >= RATE * len(self.window):
                self.trip(retry_after)
        elif self.state == "half_open" and trial:
            self.in_flight -= 1
            if failed:
                self.trip(retry_after)
            else:
                self.trial_successes += 1
                if self.trial_successes >= SUCCESSES:
                    self.trips = 0
                    self.move("closed")

    def open_for(self, seconds: float) -> None:
        """A Retry-After opening the breaker (manual states are left alone)."""
        if self.state in ("forced_open", "disabled"):
            return
        if self.state != "open":
            self.move("open")
            self.open_until = self.now + seconds
        else:
            self.open_until = max(self.open_until, self.now + seconds)

    # -- retries ---------------------------------------------------------------

    def spend(self) -> bool:
        bucket = int(self.now // (BUDGET_WINDOW / 10))
        if sum(1 for g in self.grants if g > bucket - 10) >= BUDGET_RETRIES:
            return False
        self.grants.append(bucket)
        return True

    def attempt(self, permit: tuple[int, bool], item: Item) -> tuple[Attempt, str | None, float | None]:
        """Send one attempt: the attempt, its retry reason and its wait hint."""
        self.hits += 1
        attempt = Attempt(permit, item)
        if item.error is not None:
            self.record(attempt, costed=False)
            return attempt, "timeout" if item.error == "read_timeout" else "transport_error", None
        status = item.status
        attempt.outcome = (
            "throttled" if status == 429 else "failure" if status >= 500 else "client_error" if status >= 400
            else "success"
        )
        hint = None
        if status in RETRY_STATUSES:
            hint = float(item.retry_after) if item.retry_after not in (None, "junk") else None
            if status in (429, 503):
                attempt.breaker_retry_after = hint
        return attempt, (f"status_{status}" if status in RETRY_STATUSES else None), hint

    def call(self, script: deque[Item]) -> Attempt | None:
        """One call to its final attempt (``None``: rejected at once); the final one may await recording."""
        permit = self.admit()
        if permit is None:
            return None
        number = 1
        while True:
            attempt, reason, hint = self.attempt(permit, script.popleft() if script else Item())
            if reason is None or number >= ATTEMPTS or (hint is not None and hint > MAX_RETRY_AFTER):
                return attempt
            if not attempt.done:
                self.record(attempt, costed=False)
            self.expire()
            if self.state in ("open", "forced_open") or not self.spend():
                return attempt
            self.retries[reason] += 1
            wait = hint if hint is not None else BACKOFF * 2 ** (number - 1)
            self.sleeps.append(wait)
            self.now += wait
            next_permit = self.admit()
            if next_permit is None:
                return attempt
            permit, number = next_permit, number + 1


def policy(open_on_retry_after: bool, throttled_is_failure: bool) -> Policy:
    """The policy the model restates: a count window, deterministic backoff, a fixed retry budget."""
    return Policy(
        breaker=BreakerPolicy(
            window_calls=WINDOW, minimum_calls=MINIMUM, failure_rate_threshold=RATE, open_seconds=OPEN_S,
            max_open_seconds=MAX_OPEN_S, half_open_max_calls=1, success_threshold=SUCCESSES,
            open_on_retry_after=open_on_retry_after, slow_call_seconds=1e9,
        ),
        retry=RetryPolicy(
            attempts=ATTEMPTS, backoff_seconds=BACKOFF, jitter=0.0, max_retry_after_seconds=MAX_RETRY_AFTER,
            budget_ratio=0.0, budget_min_retries=BUDGET_RETRIES, budget_window_seconds=BUDGET_WINDOW,
        ),
        throttled_is_failure=throttled_is_failure,
    )


class TransportMachine(RuleBasedStateMachine):
    """Scripted answers, calls, held streams, clock jumps and manual control."""

    held = Bundle("held")

    @initialize(open_on_retry_after=st.booleans(), throttled_is_failure=st.booleans())
    def start(self, open_on_retry_after: bool, throttled_is_failure: bool) -> None:
        self.clock = FakeClock(1000.0)
        self.script: deque[Item] = deque()
        self.sent = 0
        self.registry = ProviderRegistry(policy(open_on_retry_after, throttled_is_failure), clock=self.clock)
        self.provider = self.registry.register("p", hosts=["upstream"])
        upstream = httpx.MockTransport(self.answer)
        transport = ResilientTransport(self.registry, upstream, sleep=self.clock.sleep)
        self.client = httpx.Client(transport=transport)
        self.model = Model(open_on_retry_after, throttled_is_failure, self.clock.now)
        self.pending: dict[int, httpx.Response] = {}

    def answer(self, request: httpx.Request) -> httpx.Response:
        self.sent += 1
        return (self.script.popleft() if self.script else Item()).response(request)

    def teardown(self) -> None:
        if hasattr(self, "client"):
            for response in self.pending.values():
                response.close()
            self.client.close()

    def expect(self, final: Attempt | None, result: httpx.Response | Exception) -> None:
        """The caller got what the model predicts: the rejection, the error, or the final status."""
        if final is None:
            assert isinstance(result, CircuitOpenError), result
        elif final.item.error is not None:
            assert type(result) is ERRORS[final.item.error], result
        else:
            assert isinstance(result, httpx.Response), result
            assert result.status_code == final.item.status

    @rule(answers=st.lists(items, min_size=1, max_size=4))
    def script_upstream(self, answers: list[Item]) -> None:
        self.script.extend(answers)

    @rule()
    def call(self) -> None:
        predicted_script = deque(self.script)
        final = self.model.call(predicted_script)
        try:
            result: httpx.Response | Exception = self.client.post("http://upstream/v1", content=b"{}")
        except (httpx.HTTPError, CircuitOpenError) as exc:
            result = exc
        self.expect(final, result)
        if final is not None and not final.done:
            self.model.record(final, costed=True)  # the body was read to its end
        assert self.script == predicted_script

    @rule(target=held)
    def open_stream(self) -> object:
        predicted_script = deque(self.script)
        final = self.model.call(predicted_script)
        request = self.client.build_request("POST", "http://upstream/v1", content=b"{}")
        try:
            result: httpx.Response | Exception = self.client.send(request, stream=True)
        except (httpx.HTTPError, CircuitOpenError) as exc:
            result = exc
        self.expect(final, result)
        assert self.script == predicted_script
        if not isinstance(result, httpx.Response) or final is None:
            return multiple()
        if not final.item.streamed and not final.done:
            self.model.record(final, costed=True)  # a body in memory is recorded on delivery
        self.pending[id(result)] = result
        return (result, final)

    @rule(stream=consumes(held), read=st.booleans())
    def finish_stream(self, stream: tuple[httpx.Response, Attempt], read: bool) -> None:
        response, final = stream
        if read:
            response.read()
        response.close()
        del self.pending[id(response)]
        if not final.done:
            self.model.record(final, costed=read)  # closed early: no usage, so no cost

    @rule(seconds=st.sampled_from([0.5, 1.0, 2.0, 5.0, 10.0, 30.0]))
    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)
        self.model.now += seconds

    @rule(action=st.sampled_from(["force_open", "disable", "reset"]))
    def manual(self, action: str) -> None:
        getattr(self.provider, action)()
        if action == "reset":
            self.model.trips = 0
        self.model.move({"force_open": "forced_open", "disable": "disabled", "reset": "closed"}[action])

    @invariant()
    def same_state(self) -> None:
        if hasattr(self, "model"):
            self.model.expire()
            assert self.provider.state == self.model.state
            assert self.provider._breaker.transitions == dict(self.model.transitions)

    @invariant()
    def same_numbers(self) -> None:
        if hasattr(self, "model"):
            snap = self.provider.snapshot()
            assert {k: v for k, v in snap.requests_total.items() if v} == dict(+self.model.counts)
            assert snap.retries_total == dict(self.model.retries)
            assert snap.cost_total == self.model.cost
            assert self.sent == self.model.hits
            assert (self.clock.now, self.clock.sleeps) == (self.model.now, self.model.sleeps)


TestTransportMachine = TransportMachine.TestCase
TestTransportMachine.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)
