"""One attempt of a call: its permit, outcome and the single record it ends in.

An :class:`Attempt` is made when the breaker admits it and recorded exactly
once (:meth:`Attempt.finish`): at once for a transport error, a discarded
(retried) response or a body already in memory; at the end of the body for
a streamed response. A cancelled attempt gives its permit back instead
(:meth:`Attempt.release`). Nothing here ever fails the call: a recording
error is logged and counted.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import httpx2

from resilience._core.context import RequestStats
from resilience._core.cost import NO_COST, CostResult, attempt_cost, usage_result
from resilience._core.errors import CircuitOpenError
from resilience._core.provider import Provider
from resilience._core.window import TimeWindow
from resilience._http.inspect import MALFORMED, BodyInspector, in_memory_body, whole_body_of
from resilience._http.observe import ABANDONED

if TYPE_CHECKING:
    from resilience._http.call import Call

log = logging.getLogger("resilience")


class Attempt:
    """One admitted attempt of a :class:`resilience._http.call.Call`; see the module docstring."""

    # Class-level defaults, not __slots__: an attempt sets only what it has (one per request).
    headers_at: float | None = None
    """When a streamed body's headers arrived."""
    response: httpx2.Response | None = None
    error: Exception | None = None
    outcome = "success"
    reason: str | None = None
    """Why this attempt asks for a retry, if it does."""
    retry_after: float | None = None
    """For the breaker (429/503 only)."""
    wait_hint: float | None = None
    """``Retry-After`` seconds, for the backoff."""
    delay: float | None = None
    """The wait chosen before the retry that follows this attempt."""
    kind: str | None = None
    """The response body's :func:`~resilience._http.inspect.body_kind`: ``json``, ``sse`` or ``None``."""
    encoding: bytes | None = None
    """Its content-encoding (``None``: identity)."""
    length: bytes | None = None
    """Its ``Content-Length`` as sent (``None``: none); see :func:`~resilience._http.inspect.small`."""
    inspector: BodyInspector | None = None
    body: tuple[Mapping[str, Any] | None, str | None, str | None, bool] | None = None
    """``(usage, problem, in-band error, content event)`` of a body read whole before it was returned."""
    ttft: float | None = None
    """Seconds from the start to the first content event (SSE responses)."""
    lost = False
    """A hedged attempt that lost its race: its record counts in neither calls nor failures."""
    done = False

    def __init__(self, call: Call, permit: int, start: float, number: int) -> None:
        self.call = call
        self.provider = call.provider
        self.permit = permit
        self.number = number
        self.start = start

    def release(self) -> None:
        """The attempt ended without a result (cancelled): give the permit back."""
        if not self.done:
            self.done = True
            self.provider.release(self.permit)
            if self.lost and self.call.stats is not None:
                self.call.stats.add_attempt(self.provider.name)

    def abandon(self) -> None:
        """The response was dropped unfinished and is being collected: free the permit, lock-free.

        The call's span, if this attempt was the answer, is left to end outside
        the collector (:data:`~resilience._http.observe.ABANDONED`).
        """
        if not self.done:
            self.done = True
            self.provider.orphan(self.permit)
            call = self.call
            trace = call.trace
            if trace is not None and call.final is self:
                call.final = None
                trace.attempts += 1
                trace.provider = self.provider.name
                ABANDONED.append(trace)  # one C call: no lock

    def finish(
        self, *, failed: bool = False, complete: bool = True, costed: bool = True, judged: bool = True
    ) -> None:
        """Record the attempt once: outcome (``failure`` when ``failed``), duration, cost.

        ``judged=False`` (a cancelled stream) records it without a verdict for the breaker.
        """
        if self.done:
            return
        self.done = True
        usage: Mapping[str, Any] | None = None
        problem = in_band = None
        body = self.body
        if body is not None:  # read whole: its cost is known even when it is discarded for a retry
            usage, problem, in_band, _ = body
            costed = True
        else:
            inspector = self.inspector
            if inspector is not None:
                if costed:
                    usage, problem = inspector.result(complete)
                in_band = inspector.in_band
                if in_band is not None and inspector.sse:
                    self.outcome = in_band  # an SSE error event rules, whatever the status
                    in_band = None
        self._record(failed, costed, usage, problem, judged, in_band)

    def finish_in_memory(self, stream: httpx2.ByteStream) -> None:
        """Record a response whose body is in memory (``stream``), judged from it unless it was already."""
        if self.done or self.response is None:
            return
        if self.body is None:
            self.body = whole_body_of(self.kind, self.encoding, in_memory_body(stream))
        if self.body[3] and self.headers_at is not None:  # an SSE body in memory: its first token came
            self.ttft = self.headers_at - self.start  # with the headers
        self.headers_at = None  # not streamed: judged by its whole duration
        self.finish()

    def finish_whole(self) -> None:
        """:meth:`finish` of an attempt whose body was read whole (:attr:`body`): recorded from it at once."""
        if self.done:
            return
        self.done = True
        usage, problem, in_band, _ = self.body  # type: ignore[misc]  # read whole
        self._record(False, True, usage, problem, True, in_band)

    def _record(
        self, failed: bool, costed: bool, usage: Mapping[str, Any] | None, problem: str | None, judged: bool,
        in_band: str | None = None,
    ) -> None:
        provider = self.provider
        if self.lost:
            self._lose(usage, problem)
            return
        try:
            now = provider.clock()
            outcome = "failure" if failed or self.error is not None else self.outcome
            if in_band is not None and outcome == "success":
                outcome = in_band  # a 200 whose body is an error
            cost = NO_COST
            if costed and self.response is not None:
                if usage is not None and problem is None and provider.policy.cost is None:
                    cost = usage_result(usage) or self._cost(usage, problem)  # the default extractor
                elif usage is not None or problem is not None or provider.policy.cost is not None:
                    cost = self._cost(usage, problem)  # there is a cost to find
            duration = now - self.start
            headers_at = self.headers_at  # set for streamed bodies only
            to_headers = None if headers_at is None else headers_at - self.start
            call = self.call
            ttft = self.ttft
            if outcome == "success" and judged and cost is NO_COST and to_headers is None and ttft is None:
                provider.record_plain(self.permit, duration, now, call.model)
            elif outcome == "success" and judged and not cost.unknown:
                provider.record_success(
                    self.permit, duration, now, call.model, to_headers, cost.cost, cost.input_tokens,
                    cost.output_tokens, ttft,
                )
            else:
                provider.record(
                    self.permit, outcome, duration, model=call.model, cost=cost.cost,
                    cost_unknown=cost.unknown, input_tokens=cost.input_tokens,
                    output_tokens=cost.output_tokens, retry_after=self.retry_after,
                    time_to_headers=to_headers, now=now, judged=judged, ttft=ttft,
                )
            stats = call.stats
            if stats is not None:
                stats.add_attempt(provider.name, cost=cost.cost, retry=self.number > 1)
            trace = call.trace
            if trace is not None:
                trace.recorded(provider, outcome, duration, cost)
                if call.final is self:
                    call.final = None  # no cycle left between the call and its attempt
                    trace.end(None)
        except Exception:  # instrumentation never breaks a call
            log.exception("recording an attempt to %s failed", provider.name)
            provider.count_error("record")

    def _lose(self, usage: Mapping[str, Any] | None, problem: str | None) -> None:
        """A lost hedge: the permit back, no verdict and no call counted; its cost, when known, added."""
        provider = self.provider
        try:
            cost = NO_COST
            if self.response is not None and (usage is not None or provider.policy.cost is not None):
                cost = self._cost(usage, problem)
            provider.record_lost(self.permit, cost.cost, cost.input_tokens, cost.output_tokens)
            if self.call.trace is not None:
                self.call.trace.attempts += 1
                self.call.trace.spent(cost)
            stats = self.call.stats
            if stats is not None and cost.cost is not None:
                stats.add_attempt(provider.name, cost=cost.cost)
        except Exception:  # instrumentation never breaks a call
            log.exception("recording a lost attempt to %s failed", provider.name)
            provider.count_error("record")

    def _cost(self, usage: Mapping[str, Any] | None, problem: str | None) -> CostResult:
        provider = self.provider
        if problem == MALFORMED:
            provider.count_error("cost_parse")
        response = self.response
        if response is None:
            return NO_COST
        if usage is not None and provider.policy.cost is None:
            found = usage_result(usage, problem is not None)  # the default extractor, in one step
            if found is not None:
                return found
        return attempt_cost(
            provider, self.call.model_name, usage, response.headers, unknown=problem is not None
        )


def admit(provider: Provider, model: TimeWindow | None, stats: RequestStats | None) -> int:
    """A permit from the breaker; a rejection is counted in the request's totals too.

    Raises:
        CircuitOpenError: the breaker did not admit the attempt.
    """
    try:
        return provider.admit(model)
    except CircuitOpenError:
        if stats is not None:
            stats.add_rejection(provider.name)
        raise
