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

from resilience._core.provider import FOLD_BATCH, Provider
from resilience._core.window import TimeWindow


class Guard:
    """A per-call context manager, sync and async.

    The closed-breaker success path is inlined here (no lock, no extra call):
    it is what every guarded call pays.
    """

    __slots__ = ("_model", "_pending", "_permit", "_provider", "_start")

    def __init__(self, provider: Provider, model: TimeWindow | None) -> None:
        self._provider = provider
        self._model = model
        self._pending = provider._stats.pending if model is None else model.pending

    @classmethod
    def bound(cls, provider: Provider) -> type[Guard]:
        """A subclass whose instances guard ``provider``'s calls (no model), made by ``bound()``.

        What :meth:`__init__` would set are its class attributes, and its
        ``__init__`` is ``object``'s: making one runs no Python code.
        """
        namespace = {
            "__slots__": (), "__init__": object.__init__, "__qualname__": cls.__qualname__,
            "_provider": provider, "_model": None, "_pending": provider._stats.pending,
        }
        return type(cls.__name__, (cls,), namespace)

    def __enter__(self) -> Guard:
        provider = self._provider
        permit = provider._breaker.closed_permit
        self._permit = permit if permit >= 0 else provider.admit(self._model)
        self._start = provider.clock()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        provider = self._provider
        now = provider.clock()
        duration = now - self._start
        if exc is None:
            if self._permit == provider._breaker.closed_permit and duration < provider._slow_s:
                # the fast path of Provider.record_success, inlined
                pending = self._pending
                pending.append(duration)
                if now >= provider._fold_at or len(pending) >= FOLD_BATCH:
                    provider.fold(now)
                return
            provider.record(self._permit, "success", duration, model=self._model, now=now)
        elif isinstance(exc, Exception):
            provider.record(
                self._permit, _classify(provider, exc), duration, model=self._model, now=now
            )
        else:
            provider.release(self._permit)

    async def __aenter__(self) -> Guard:
        return self.__enter__()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.__exit__(exc_type, exc, tb)


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
