"""What the span of one transport call learns from its attempts (:mod:`resilience._http.tracing`).

A call with a span (a tracer provider is set) carries a :class:`CallTrace`.
Each attempt's record adds its cost and tokens and keeps the span's trace id
as the exemplar of its duration; the record of the attempt whose response
the caller got ends the span (for a stream, when its body ends, so usage is
known). A call that raises ends it at once. A stream dropped unfinished and
garbage-collected ends no span where it is collected (a collector must take
no lock, and ending a span may): its trace waits in :data:`ABANDONED` and the
next traced call (its :class:`CallTrace` is made), or the transport's
``close()``, ends it (:func:`end_abandoned`).
"""

from __future__ import annotations

from resilience._core.cost import CostResult
from resilience._core.provider import Provider
from resilience._http.tracing import CallSpan

ABANDONED: list[CallTrace] = []
"""Traces of calls whose stream was collected unfinished, to end outside the collector."""


def end_abandoned() -> None:
    """End the spans of the calls in :data:`ABANDONED` (thread-safe: each is popped once)."""
    while ABANDONED:
        try:
            trace = ABANDONED.pop()
        except IndexError:  # another thread took the last one
            return
        trace.end(None)


class CallTrace:
    """The span of one call and the totals of its attempts."""

    __slots__ = (
        "answered", "attempts", "attempts_made", "cost", "input_tokens", "outcome", "output_tokens",
        "provider", "span",
    )

    def __init__(self, span: CallSpan) -> None:
        if ABANDONED:  # a traced call: spans of streams collected unfinished end now, outside the collector
            end_abandoned()
        self.span = span
        self.attempts = 0
        self.cost: float | None = None
        self.input_tokens: int | None = None
        self.output_tokens: int | None = None
        self.provider: str | None = None
        """The provider that answered: the last attempt recorded, unless :meth:`end` names one."""
        self.outcome: str | None = None
        self.answered: str | None = None
        """Set by a route call: the target that served it."""
        self.attempts_made: int | None = None
        """Set by a route call: the attempts it made, hedges included."""

    def recorded(self, provider: Provider, outcome: str, duration: float, cost: CostResult) -> None:
        """One attempt was recorded: its numbers join the call's, its duration gets the exemplar."""
        self.attempts += 1
        self.provider, self.outcome = provider.name, outcome
        self.spent(cost)
        trace_id = self.span.trace_id
        if trace_id is not None:
            provider.note_exemplar(duration, trace_id)

    def spent(self, cost: CostResult) -> None:
        """Add what one attempt cost (a lost hedge too)."""
        if cost.cost is not None:
            self.cost = (self.cost or 0.0) + cost.cost
        if cost.input_tokens or cost.output_tokens:
            self.input_tokens = (self.input_tokens or 0) + cost.input_tokens
            self.output_tokens = (self.output_tokens or 0) + cost.output_tokens

    def end(
        self, error: BaseException | None, *, provider: str | None = None, attempts: int | None = None
    ) -> None:
        """End the span: the call raised ``error``, or (``None``) its answer was recorded."""
        if attempts is None:
            attempts = self.attempts if self.attempts_made is None else self.attempts_made
        self.span.end(
            provider=provider or self.answered or self.provider,
            attempts=attempts,
            cost_usd=self.cost,
            input_tokens=self.input_tokens,
            output_tokens=self.output_tokens,
            error=error,
            failed=error is None and self.outcome == "failure",
        )
