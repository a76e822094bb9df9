"""Rate-limit headers: what a provider says of its quota before a 429 comes.

Read from every response, in one pass over its headers:

* OpenAI style: ``x-ratelimit-{limit,remaining,reset}-{requests,tokens}``,
  resets as durations (``1s``, ``6m0s``, ``20ms``, ``1h2m3.5s``);
* Anthropic style: ``anthropic-ratelimit-{requests,tokens,input-tokens,
  output-tokens}-{limit,remaining,reset}``, resets as RFC 3339 times
  (converted with the wall clock when the response arrives); ``tokens`` from
  ``anthropic-ratelimit-tokens-*``, else from ``-input-tokens-*``;
* ``retry-after-ms``: a ``Retry-After`` in milliseconds (it wins over
  ``Retry-After`` wherever that is read).

A malformed value is ignored and counted (``ratelimit_header``), never an
error. Nothing here keeps state: :func:`read` turns headers into a
:class:`Limits` of numbers and seconds-from-now.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from datetime import datetime

from resilience._core.quota import Limits

_NUMBER = r"(\d+(?:\.\d+)?)"
_DURATION = re.compile(rf"(?:{_NUMBER}h)?(?:{_NUMBER}m(?!s))?(?:{_NUMBER}s)?(?:{_NUMBER}ms)?")
PREFIXES = (b"x-ratelimit-", b"anthropic-ratelimit-", b"retry-after-ms")
"""What the (lower-cased) name of a rate-limit header starts with."""
FIRST_BYTES = frozenset(prefix[0] for prefix in PREFIXES)
"""Their first bytes: most headers fail this test, the cheapest."""
_MAX_SECONDS = 366 * 86_400.0
"""Longest reset taken (a year); a longer one is malformed."""


def duration(text: str) -> float | None:
    """Seconds of an OpenAI-style reset (``"1s"``, ``"6m0s"``, ``"20ms"``, ``"1h2m3.5s"``, ``"0.5"``)."""
    text = text.strip()
    if not text:
        return None
    try:
        seconds = float(text)  # a bare number: seconds
    except ValueError:
        found = _DURATION.fullmatch(text)
        if found is None or not any(found.groups()):
            return None
        hours, minutes, secs, millis = (float(part) if part else 0.0 for part in found.groups())
        seconds = hours * 3600 + minutes * 60 + secs + millis / 1000
    return seconds if 0 <= seconds <= _MAX_SECONDS else None


def until(text: str, now: float) -> float | None:
    """Seconds from ``now`` (wall clock, epoch seconds) to an RFC 3339 time; 0 when it is past."""
    text = text.strip()
    if not text or len(text) > 64:
        return None
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        return None
    if when.tzinfo is None:
        return None
    try:
        seconds = when.timestamp() - now
    except (OverflowError, OSError, ValueError):
        return None
    return min(max(0.0, seconds), _MAX_SECONDS) if math.isfinite(seconds) else None


def _count(text: str) -> int | None:
    text = text.strip()
    if not text.isdigit() or len(text) > 18:
        return None
    return int(text)


def read(raw: list[tuple[bytes, bytes, bytes]], wall: Callable[[], float]) -> tuple[Limits | None, int]:
    """The limits in a response's header triples ``(raw, lower-cased key, value)``; how many were malformed.

    ``None`` when the response says nothing of its limits (most responses:
    one pass, no allocation). ``wall`` is read only for an RFC 3339 reset.
    """
    found: dict[bytes, bytes] | None = None
    for _, key, value in raw:
        if key and key[0] in FIRST_BYTES and key.startswith(PREFIXES):  # most headers fail the first test
            if found is None:
                found = {}
            found[key] = value
    if found is None:
        return None, 0
    return parse(found, wall)


def parse(found: dict[bytes, bytes], wall: Callable[[], float]) -> tuple[Limits | None, int]:
    """:func:`read` of the rate-limit headers already picked out: ``{lower-cased key: value}``."""
    bad = 0
    values: dict[str, float | int | None] = {}

    def take(field: str, key: bytes, parse: str) -> None:
        nonlocal bad
        value = found.get(key)
        if value is None or values.get(field) is not None:
            return
        text = value.decode("latin-1")
        if parse == "count":
            number: float | None = _count(text)
        else:
            number = duration(text) if parse == "duration" else until(text, wall())
        if number is None:
            bad += 1
        values[field] = number

    for kind in ("requests", "tokens"):
        take(f"{kind}_limit", b"x-ratelimit-limit-" + kind.encode(), "count")
        take(f"{kind}_remaining", b"x-ratelimit-remaining-" + kind.encode(), "count")
        take(f"{kind}_reset", b"x-ratelimit-reset-" + kind.encode(), "duration")
    for kind, sources in (("requests", (b"requests",)), ("tokens", (b"tokens", b"input-tokens"))):
        for source in sources:
            prefix = b"anthropic-ratelimit-" + source
            take(f"{kind}_limit", prefix + b"-limit", "count")
            take(f"{kind}_remaining", prefix + b"-remaining", "count")
            take(f"{kind}_reset", prefix + b"-reset", "rfc3339")
    milliseconds = found.get(b"retry-after-ms")
    if milliseconds is not None:
        seconds = duration(milliseconds.decode("latin-1") + "ms") if milliseconds.strip().isdigit() else None
        if seconds is None:
            bad += 1
        values["retry_after"] = seconds
    limits = Limits(**values)  # type: ignore[arg-type]  # the fields filled above
    return (None if limits == Limits() else limits), bad
