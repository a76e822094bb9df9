"""``registry.guard(provider, model=None)``: the breaker and windows around any call.

For calls that are not httpx (an SDK, Redis, gRPC)::

    with registry.guard("openai", model="gpt-4o"):
        sdk.call()

    async with registry.guard("openai"):
        await sdk.acall()

Entering raises :class:`resilience.CircuitOpenError` when the breaker is open.
Leaving records the outcome: ``success`` without an exception; an exception
is a ``failure`` unless the policy's ``exception_outcome`` says otherwise; a
``BaseException`` that is not an ``Exception`` (cancellation, interrupt)
gives the permit back without a result. The exception always propagates.
"""

from __future__ import annotations

from types import TracebackType
from typing import ClassVar

from resilience._core.provider import FOLD_BATCH, Provider
from resilience._core.window import TimeWindow


class Guard:
    """A per-call context manager, sync and async: one of a provider's (or model's) own subclasses.

    ``registry.guard`` returns an instance of the class :meth:`bound` made for
    the provider (and model window): making one runs no Python code, and its
    ``__enter__`` and ``__exit__`` read the provider, its breaker and its
    pending list from their closure, not from attributes. The closed-breaker
    success path is inlined there (no lock, no extra call): it is what every
    guarded call pays.
    """

    __slots__ = ("_permit", "_start")
    _permit: int
    _start: float

    provider: ClassVar[Provider]
    """The provider whose breaker and windows this guard's calls go through."""
    model: ClassVar[TimeWindow | None]
    """The model window the calls are recorded in too, or ``None``."""

    @classmethod
    def bound(cls, provider: Provider, model: TimeWindow | None = None) -> type[Guard]:
        """A subclass whose instances guard ``provider``'s calls (in ``model``'s window too, if given)."""
        breaker = provider._breaker
        pending = provider._stats.pending if model is None else model.pending
        # every value below is read where it is used: a policy's values and the clock may be replaced

        def __enter__(self: Guard) -> Guard:
            permit = breaker.closed_permit
            self._permit = permit if permit >= 0 else provider.admit(model)
            clock = provider.clock  # an attribute load (specialised), not a method lookup
            self._start = clock()
            return self

        def __exit__(
            self: Guard,
            exc_type: type[BaseException] | None,
            exc: BaseException | None,
            tb: TracebackType | None,
        ) -> None:
            clock = provider.clock
            now = clock()
            duration = now - self._start
            if exc is None and self._permit == breaker.closed_permit and duration < provider._slow_s:
                # the fast path of Provider.record_success, inlined
                pending.append(duration)
                if now >= provider._fold_at or len(pending) >= FOLD_BATCH:
                    provider.fold(now)
                return
            _settle(provider, model, self._permit, exc, duration, now)

        namespace = {
            "__slots__": (), "__init__": object.__init__, "__qualname__": cls.__qualname__,
            "__module__": cls.__module__, "__doc__": cls.__doc__, "provider": provider, "model": model,
            "__enter__": __enter__, "__exit__": __exit__,
        }
        return type(cls.__name__, (cls,), namespace)

    def __init__(self) -> None:
        raise TypeError(_MADE_BY)

    def __enter__(self) -> Guard:  # every instance is a bound subclass's, which has its own
        raise TypeError(_MADE_BY)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        raise TypeError(_MADE_BY)

    async def __aenter__(self) -> Guard:
        return self.__enter__()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.__exit__(exc_type, exc, tb)


_MADE_BY = "a Guard is made by registry.guard(provider, model=None), not by calling Guard"


def _settle(
    provider: Provider, model: TimeWindow | None, permit: int, exc: BaseException | None,
    duration: float, now: float,
) -> None:
    """Record what the fast path does not: a slow or half-open success, an exception, a cancellation."""
    if exc is None:
        provider.record(permit, "success", duration, model=model, now=now)
    elif isinstance(exc, Exception):
        provider.record(permit, _classify(provider, exc), duration, model=model, now=now)
    else:
        provider.release(permit)


def _classify(provider: Provider, exc: BaseException) -> str:
    classify = provider.policy.exception_outcome
    if classify is None:
        return "failure"
    try:
        outcome = classify(exc)
    except Exception:
        provider.count_error("exception_outcome")
        return "failure"
    if outcome is None or outcome == "rejected":
        return "failure"
    if outcome not in ("success", "failure", "throttled", "client_error"):
        provider.count_error("exception_outcome")
        return "failure"
    return outcome
