"""Bodies read whole before the response is returned: in-band errors that can still be retried.

A ``200`` JSON body that is an error (:func:`resilience._http.inspect.json_error`)
can be retried, or failed over, only if it is read before the call returns.
The call reads it when that can matter (its policy would retry, or a route
has another target; ``Call.read_sync``): the raw bytes, still
content-encoded, bounded by :data:`resilience._http.inspect.JSON_CAP`
through ``Content-Length``, are handed to :func:`taken`. The response then
carries them as an in-memory stream, so the caller gets exactly the same
bytes and the attempt is recorded from them at once. Without a
content-encoding they are also its content
(:func:`resilience._http.stacks.hold_content`): the client's ``read()`` does
not read them a second time.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from resilience._http.inspect import THROTTLED, whole_body_of
from resilience._http.stacks import hold_content

if TYPE_CHECKING:
    from resilience._http.attempt import Attempt
    from resilience._http.stacks import Stack

IN_BAND = "in_band_error"
"""The retry reason of a body that is an error."""


def taken(attempt: Attempt, stack: Stack, raw: bytes) -> None:
    """The body is in memory: the response carries it; an in-band error asks for a retry."""
    response = attempt.response
    assert response is not None
    if response.stream.__class__ is not stack.byte_stream:
        response.stream = stack.byte_stream(raw)
    attempt.headers_at = None  # not streamed: judged by its whole duration
    attempt.body = found = whole_body_of(attempt.kind, attempt.encoding, raw)
    if attempt.encoding is None and stack.holds_content:  # the client need not read the stream again
        began = attempt.call.began
        hold_content(response, raw, attempt.provider.clock() - (attempt.start if began is None else began))
    in_band = found[2]
    if in_band is not None and attempt.outcome == "success":
        attempt.outcome = in_band
        stands_for = 429 if in_band == THROTTLED else 500
        if stands_for in attempt.provider.policy.retry.retry_statuses:
            attempt.reason = IN_BAND
