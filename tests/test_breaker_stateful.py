"""A hypothesis state machine drives a breaker against a small reference model."""

from __future__ import annotations

from dataclasses import dataclass, field

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, consumes, invariant, rule

from resilience import BreakerPolicy, CircuitOpenError, Policy, ProviderRegistry
from resilience.testing import FakeClock

WINDOW, MINIMUM, OPEN_S, MAX_OPEN_S, TRIALS, SUCCESSES = 5, 3, 10.0, 40.0, 2, 2
outcomes = st.sampled_from(["success", "failure", "throttled", "client_error"])


@dataclass
class Model:
    """The reference breaker: SPEC "Breaker" written as plainly as possible."""

    state: str = "closed"
    generation: int = 0
    window: list[bool] = field(default_factory=list)
    open_until: float = 0.0
    trips: int = 0
    in_flight: int = 0
    trial_successes: int = 0

    def move(self, to: str) -> None:
        self.state, self.generation = to, self.generation + 1
        self.window, self.in_flight, self.trial_successes = [], 0, 0

    def expire(self, now: float) -> None:
        if self.state == "open" and now >= self.open_until:
            self.move("half_open")

    def trip(self, now: float) -> None:
        seconds = min(OPEN_S * 2**self.trips, MAX_OPEN_S)
        self.trips += 1
        self.move("open")
        self.open_until = now + seconds

    def admit(self, now: float) -> tuple[int, bool] | None:
        self.expire(now)
        if self.state in ("closed", "disabled"):
            return (self.generation, False)
        if self.state == "half_open" and self.in_flight < TRIALS:
            self.in_flight += 1
            return (self.generation, True)
        return None

    def result(self, permit: tuple[int, bool], outcome: str, now: float) -> None:
        failed = outcome in ("failure", "throttled")
        generation, trial = permit
        if generation != self.generation:
            return
        if self.state == "closed":
            self.window = [*self.window, failed][-WINDOW:]
            if failed and len(self.window) >= MINIMUM and sum(self.window) >= 0.5 * len(self.window):
                self.trip(now)
        elif self.state == "half_open" and trial:
            self.in_flight -= 1
            if failed:
                self.trip(now)
            else:
                self.trial_successes += 1
                if self.trial_successes >= SUCCESSES:
                    self.trips = 0
                    self.move("closed")

    def release(self, permit: tuple[int, bool]) -> None:
        if permit[1] and permit[0] == self.generation and self.state == "half_open":
            self.in_flight -= 1


class BreakerMachine(RuleBasedStateMachine):
    """Random outcomes, clock jumps, held permits and manual control."""

    held = Bundle("held")

    def __init__(self) -> None:
        super().__init__()
        self.clock = FakeClock()
        policy = BreakerPolicy(
            window_calls=WINDOW,
            minimum_calls=MINIMUM,
            open_seconds=OPEN_S,
            max_open_seconds=MAX_OPEN_S,
            half_open_max_calls=TRIALS,
            success_threshold=SUCCESSES,
        )
        self.provider = ProviderRegistry(Policy(breaker=policy), clock=self.clock).register("p")
        self.model = Model()
        self.recorded = 0
        self.rejected = 0

    def _admit(self) -> tuple[int, tuple[int, bool]] | None:
        expected = self.model.admit(self.clock())
        try:
            permit = self.provider.admit()
        except CircuitOpenError:
            assert expected is None, "rejected a call the model admits"
            self.rejected += 1
            return None
        assert expected is not None, f"admitted a call while {self.model.state}"
        return permit, expected

    @rule(outcome=outcomes, seconds=st.floats(0, 2))
    def call(self, outcome: str, seconds: float) -> None:
        admitted = self._admit()
        if admitted is not None:
            self.clock.advance(seconds)
            self.provider.record(admitted[0], outcome, seconds)
            self.model.result(admitted[1], outcome, self.clock())
            self.recorded += 1

    @rule()
    def guarded_success(self) -> None:
        admitted = self._admit()
        if admitted is not None:
            # the lock-free fast path must agree with record()
            self.provider.record_success(admitted[0], 0.001, self.clock(), None)
            self.model.result(admitted[1], "success", self.clock())
            self.recorded += 1

    @rule(target=held)
    def hold(self) -> object:
        return self._admit()

    @rule(permit=consumes(held), outcome=outcomes)
    def finish(self, permit: tuple[int, tuple[int, bool]] | None, outcome: str) -> None:
        if permit is not None:
            self.provider.record(permit[0], outcome, 0.01)
            self.model.result(permit[1], outcome, self.clock())
            self.recorded += 1

    @rule(permit=consumes(held))
    def cancel(self, permit: tuple[int, tuple[int, bool]] | None) -> None:
        if permit is not None:
            self.provider.release(permit[0])
            self.model.release(permit[1])

    @rule(seconds=st.sampled_from([0.5, 5.0, 10.0, 25.0, 100.0]))
    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)

    @rule(action=st.sampled_from(["force_open", "disable", "reset"]))
    def manual(self, action: str) -> None:
        getattr(self.provider, action)()
        if action == "reset":
            self.model.trips = 0
        self.model.move({"force_open": "forced_open", "disable": "disabled", "reset": "closed"}[action])

    @invariant()
    def same_state(self) -> None:
        self.model.expire(self.clock())
        assert self.provider.state == self.model.state

    @invariant()
    def trials_within_limit(self) -> None:
        assert 0 <= self.provider._breaker._trial_in_flight <= TRIALS

    @invariant()
    def open_until_matches(self) -> None:
        # admitting while open is caught in _admit; here the reopen time must agree
        self.model.expire(self.clock())
        if self.model.state == "open":
            assert self.provider._breaker._open_until == self.model.open_until

    @invariant()
    def counts_add_up(self) -> None:
        totals = self.provider.snapshot().requests_total
        assert totals["rejected"] == self.rejected
        assert sum(totals.values()) - totals["rejected"] == self.recorded


TestBreakerMachine = BreakerMachine.TestCase
TestBreakerMachine.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)
