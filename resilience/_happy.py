"""The happy path of a transport call, fused: what every request pays.

A request to a known host, through a closed breaker, answered by a plain
success whose body is already in memory, is resolved, admitted and recorded
here in two flat functions, without a :class:`resilience._call.Call` or an
:class:`resilience._attempt.Attempt`. Everything else (an open breaker, an
error, a status to classify, a cost to find, a stream to wrap) goes on in
:mod:`resilience._call` from the :data:`Admission` made here, so nothing is
resolved twice.

Measured, not guessed (``benchmarks/bench_transport.py``, and instruction
counts under callgrind): each Python call, object and failed lookup on this
path shows up in the ratio against a bare transport.
"""

from __future__ import annotations

import re
from typing import TypeAlias

import httpx

from resilience import _context
from resilience._attempt import admit
from resilience._context import RequestStats
from resilience._context import _current as _request_stats
from resilience._inspect import in_memory_body
from resilience._provider import FOLD_BATCH, Provider
from resilience._resolve import BYTE_STREAM, Resolver, model_from_body
from resilience._window import TimeWindow

Admission: TypeAlias = tuple[Provider, str | None, TimeWindow | None, RequestStats | None, int, float]
"""A resolved and admitted first attempt: provider, model name, model window, the inbound
request's totals, the breaker permit and the start time."""

_USAGE = re.compile(b"usage").search
_JSON_START = frozenset(b"{[")
"""First bytes of a JSON body: one without ``usage`` in it (or an empty one) has no cost to find."""


def admit_request(resolve: Resolver, request: httpx.Request) -> Admission:
    """Resolve ``request`` and admit its first attempt (raises :class:`CircuitOpenError` when open)."""
    extensions = request.extensions
    if "provider" in extensions and extensions["provider"] is not None:
        provider = resolve(request)
    else:
        url = request.url
        try:
            host = url._uri_reference.host  # url.host without its property call: equal for ASCII hosts
        except AttributeError:  # pragma: no cover - a future httpx that renames it
            host = url.host
        provider = resolve.known.get(host) or resolve(request)  # an IDNA host misses, is resolved
    model_name = extensions.get("model")
    if model_name.__class__ is not str:
        model_name = model_from_body(request)
    model = None
    if model_name is not None:
        model = provider._models.get(model_name) or provider.model_window(model_name)
    stats = _request_stats.get() if _context.opened else None  # no middleware yet: no lookup
    permit = provider.breaker.closed_permit
    if permit < 0:
        permit = admit(provider, model, stats)
    return provider, model_name, model, stats, permit, provider.clock()


def recorded_plain(admission: Admission, response: httpx.Response) -> bool:
    """Record ``response`` if it is a plain success with its body in memory; ``False`` otherwise.

    Plain: a status below 400 that the policy does not count as a failure or
    a throttle, no cost extractor, and a body that is empty or JSON without
    ``usage`` in it (so there is no cost to find). While the breaker stays
    closed (in the generation that admitted the call) and the call was fast,
    the record is a lock-free append that :meth:`Provider.fold` folds in batches.
    """
    provider, _, model, stats, permit, start = admission
    if response.status_code >= provider.plain_below:
        return False
    stream = response.stream
    if stream.__class__ is not BYTE_STREAM:
        return False
    try:
        body = stream._stream  # in_memory_body, inlined
    except AttributeError:  # pragma: no cover - a future httpx that renames it
        body = in_memory_body(stream)
    # a regex search, not ``b"usage" in body`` (which first tries the operand as an int)
    if body and (body[0] not in _JSON_START or _USAGE(body) is not None):
        return False
    now = provider.clock()
    duration = now - start
    breaker = provider.breaker
    if permit == breaker.closed_permit and duration < provider._slow_s:
        pending = provider.stats.pending if model is None else model.pending
        pending.append(duration)
        if now >= provider._fold_at or len(pending) >= FOLD_BATCH:
            provider.fold(now)
    else:
        provider.record(permit, "success", duration, model=model, now=now)
    if stats is not None:
        stats.add_attempt(provider.name)
    return True
