"""The retry loop of one call, on tenacity.

Built only when a first attempt asks for a retry. tenacity first judges that
replayed result, then runs the remaining attempts. Each attempt passes the
breaker: one it rejects ends the loop with the previous (real) response or
error, never :class:`resilience.CircuitOpenError`. A retried response is
recorded at its headers and closed once the next attempt is admitted (or
when the loop is interrupted); the retry budget is spent only for retries
that will happen. The final attempt goes back to the call for delivery.
"""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING

import anyio

from resilience._core.breaker import FORCED_OPEN, OPEN
from resilience._core.clock import AsyncSleep, Sleep
from resilience._core.errors import CircuitOpenError
from resilience._core.retry import async_retrying, backoff, budget_for, sync_retrying
from resilience._core.window import REJECTED
from resilience._http.attempt import Attempt
from resilience._http.deadline import cap_timeouts

if TYPE_CHECKING:
    from resilience._http.call import AsyncSend, Call, SyncSend


def retry_sync(call: Call, first: Attempt, send: SyncSend, sleep: Sleep) -> Attempt:
    """Retry after ``first`` as the policy allows; the final attempt."""
    last, replayed = first, False

    def attempt() -> Attempt:
        nonlocal last, replayed
        if not replayed:  # tenacity judges the first result before any new attempt
            replayed = True
            return first
        last = next_attempt_sync(call, send, last)
        return last

    retrying = sync_retrying(
        call.retry.attempts, retry=partial(wants_retry, call), wait=partial(wait, call), sleep=sleep
    )
    try:
        final: Attempt = retrying(attempt)
    except BaseException:
        if last.response is not None:
            last.response.close()
        raise
    return final


async def retry_async(call: Call, first: Attempt, send: AsyncSend, sleep: AsyncSleep) -> Attempt:
    """:func:`retry_sync` for async transports."""
    last, replayed = first, False

    async def attempt() -> Attempt:
        nonlocal last, replayed
        if not replayed:
            replayed = True
            return first
        last = await next_attempt_async(call, send, last)
        return last

    retrying = async_retrying(
        call.retry.attempts, retry=partial(wants_retry, call), wait=partial(wait, call), sleep=sleep
    )
    try:
        final: Attempt = await retrying(attempt)
    except BaseException:
        if last.response is not None:
            with anyio.CancelScope(shield=True):
                await last.response.aclose()
        raise
    return final


def next_attempt_sync(call: Call, send: SyncSend, previous: Attempt) -> Attempt:
    """Admit, send and classify a retry; a rejection hands ``previous`` back as final."""
    try:
        permit = admit_retry(call)
    except (CircuitOpenError, _PastDeadline):
        previous.reason = None  # the breaker, the quota or the deadline ended the loop: the last result
        return previous
    attempt = Attempt(call, permit, call.provider.clock(), previous.number + 1)
    try:
        if previous.response is not None:
            previous.response.close()  # discarded
        response = call.send_sync(send)
    except Exception as exc:
        return call.failed(attempt, exc)
    except BaseException:
        attempt.release()
        raise
    attempt = call.responded(attempt, response)
    if attempt.outcome == "success" and call.wants_body(attempt):
        attempt = call.read_sync(attempt)
    return attempt


async def next_attempt_async(call: Call, send: AsyncSend, previous: Attempt) -> Attempt:
    """:func:`next_attempt_sync` for async transports."""
    try:
        permit = admit_retry(call)
    except (CircuitOpenError, _PastDeadline):
        previous.reason = None
        return previous
    attempt = Attempt(call, permit, call.provider.clock(), previous.number + 1)
    try:
        if previous.response is not None:
            await previous.response.aclose()  # discarded
        response = await call.send_async(send)
    except Exception as exc:
        return call.failed(attempt, exc)
    except BaseException:
        attempt.release()
        raise
    attempt = call.responded(attempt, response)
    if attempt.outcome == "success" and call.wants_body(attempt):
        attempt = await call.read_async(attempt)
    return attempt


class _PastDeadline(Exception):
    """The deadline has passed before a retry could start."""


def admit_retry(call: Call) -> int:
    """A permit for a retry: held while the quota is exhausted, then the breaker's.

    Raises:
        CircuitOpenError: held, or the breaker did not admit it.
    """
    provider = call.provider
    now = provider.clock()
    deadline = call.deadline
    if deadline is not None:
        if deadline.at <= now:
            raise _PastDeadline  # no retry starts past the deadline: the last result goes back
        cap_timeouts(call.request, deadline.at - now)
    permit = call.admit()
    if provider.holds and (wait := provider.quota_gate(now)) is not None:
        provider.release(permit)  # the quota holds it: the breaker's permit goes back
        raise call.held(now, wait)
    return permit


def wants_retry(call: Call, attempt: Attempt) -> bool:
    """Whether to retry after ``attempt``; when yes, it is recorded and the retry counted."""
    retry = call.retry
    if attempt.reason is None or attempt.number >= retry.attempts:
        return False
    request = call.request
    if not retry.retries_method(request.method) or not isinstance(request.stream, call.stack.byte_stream):
        return False  # a one-shot body cannot be sent again
    hint = attempt.wait_hint
    if hint is not None and retry.respect_retry_after and hint > retry.max_retry_after_seconds:  # type: ignore[operator]  # float
        return False  # too long to wait: the response goes back at once
    delay = hint if hint is not None and retry.respect_retry_after else backoff(retry, attempt.number)
    deadline = call.deadline
    if deadline is not None and call.provider.clock() + delay >= deadline.at:
        return False  # the wait would cross the deadline: the last result goes back at once
    if attempt.response is not None:
        attempt.headers_at = None
        attempt.finish(costed=False)  # discarded: recorded at its headers
    provider = call.provider
    if provider.state in (OPEN, FORCED_OPEN) or not spend(call):
        return False
    provider.count_retry(attempt.reason)
    attempt.delay = delay
    if call.trace is not None:
        call.trace.span.retry(provider.name, attempt.number + 1, attempt.reason, delay)
    return True


def spend(call: Call) -> bool:
    """Take a retry from the provider's budget (shared by the registry's transports)."""
    provider = call.provider
    now = provider.clock()
    provider.fold(now)  # count the pending fast successes too
    totals = provider._requests_total
    return budget_for(call.budgets, provider).try_spend(now, sum(totals) - totals[REJECTED])


def wait(call: Call, attempt: Attempt, number: int) -> float:
    """Seconds before retry ``number``: ``Retry-After`` when asked, else backoff with jitter.

    :func:`wants_retry` chose it (to hold it against the deadline); this only returns it.
    """
    if attempt.delay is not None:
        return attempt.delay
    hint = attempt.wait_hint
    if hint is not None and call.retry.respect_retry_after:
        return hint
    return backoff(call.retry, number)
