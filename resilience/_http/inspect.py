"""Watch a response body go by, bounded, and find its ``usage`` object.

* JSON bodies (``application/json``, ``*+json``) are kept as they stream up
  to :data:`JSON_CAP`; past it the cost is unknown. They are parsed only if
  ``"usage"`` occurs in them.
* SSE streams (``text/event-stream``) are scanned line by line as they pass:
  only the current, unfinished line is kept (bounded by :data:`LINE_CAP`),
  and a ``data:`` line is parsed only if it mentions ``usage``. Usage is
  cumulative, so later values replace earlier ones field by field (Anthropic
  sends input tokens first, output tokens last); ``[DONE]`` is ignored.
* ``gzip`` and ``deflate`` bodies are decoded on the fly, bounded too; other
  encodings cannot be read (the cost is unknown).

The same bounded look finds what providers say besides usage:

* **in-band errors**: a JSON body whose top level is an error (``"error"``
  an object or a non-empty string, or Anthropic's ``{"type": "error"}``),
  an SSE ``data:`` event whose JSON has a top-level ``"error"`` object, or an
  ``event: error`` event. :attr:`BodyInspector.in_band` is then ``failure``
  or ``throttled`` (:func:`error_outcome`);
* **content vs keepalives** (SSE): comment lines (``: ping``) and
  ``event: ping`` events are keepalives; any other ``data:`` event is
  content. :meth:`BodyInspector.feed` says whether a chunk completed a
  content event, for the stream timers and the time to first token.

Other content types are not inspected at all.
"""

from __future__ import annotations

import json
import re
import zlib
from collections.abc import Callable, Mapping
from operator import itemgetter
from typing import TYPE_CHECKING, Any

import httpx2

from resilience._http.ratelimit import FIRST_BYTES, PREFIXES

if TYPE_CHECKING:
    from resilience._http.stacks import AnyHeaders

JSON_CAP = 1 << 20
"""Bytes of a JSON body kept to find its usage."""

LINE_CAP = 1 << 20
"""Longest SSE line kept; longer lines are skipped."""

BATCH = 32
"""Chunks a stream hands over at once (:attr:`BodyInspector.taken`) once per-chunk answers are not needed."""

MALFORMED = "malformed"
"""A problem worth counting: the body says it holds usage but cannot be parsed."""

INCOMPLETE = "incomplete"
"""The body did not end (closed early, failed, too large, unreadable encoding)."""


def in_memory_body(stream: httpx2.ByteStream) -> bytes:
    """The raw bytes of an in-memory body, still content-encoded as the headers say.

    The cost finder decodes ``gzip``/``deflate`` itself, by the headers; the
    already-decoded ``response.content`` would fail that decoding and lose
    the cost.
    """
    try:
        body = stream._stream  # what ByteStream iterates over, without a generator per call
    except AttributeError:  # pragma: no cover - a future httpx that renames it
        return b"".join(stream)
    return body if body.__class__ is bytes else b"".join(stream)


class BodyInspector:
    """Fed every chunk of one response body; :meth:`result` gives the usage found."""

    __slots__ = (
        "_chunks", "_decoder", "_event", "_malformed", "_partial", "_problem", "_size", "_skip_line", "_sse",
        "_usage", "in_band", "sse", "taken",
    )

    def __init__(self, *, sse: bool, encoding: bytes | None = None) -> None:
        self._sse = self.sse = sse
        self.in_band: str | None = None
        """``failure`` or ``throttled`` once the body said so in-band (the first error wins)."""
        self._event: bytes | None = None  # the SSE event's name, while it is ping or error
        self._chunks: list[bytes] = []
        self._size = 0
        self._partial = b""
        self._skip_line = False
        self._usage: dict[str, Any] | None = None
        self._problem: str | None = None
        self._malformed = False
        self._decoder = None if encoding is None else zlib.decompressobj(zlib.MAX_WBITS | 32)
        self.taken: list[bytes] = []
        """Chunks handed over to be looked at together (:meth:`look`), at most :data:`BATCH` of them."""

    @classmethod
    def for_headers(cls, headers: AnyHeaders) -> BodyInspector | None:
        """An inspector for a response with these headers, or ``None`` if the body holds no usage."""
        kind, encoding = body_kind(headers)
        return cls.of(kind, encoding)

    @classmethod
    def of(cls, kind: str | None, encoding: bytes | None) -> BodyInspector | None:
        """An inspector for a body of this :func:`body_kind`, or ``None`` if it holds no usage."""
        if kind is None:
            return None
        inspector = cls(sse=kind == "sse", encoding=encoding)
        if encoding is not None and encoding not in (b"gzip", b"x-gzip", b"deflate"):
            inspector._problem = INCOMPLETE
        return inspector

    def feed(self, chunk: bytes) -> bool:
        """Look at one chunk of the (encoded) body; never raises.

        Returns whether the chunk completed a content event (SSE) or holds
        any bytes (other bodies): what the stream timers and the time to
        first token count. Keepalives and error events are not content.
        """
        if not chunk:
            return False
        if self._problem is not None:
            return not self._sse or chunk.find(b"data:") >= 0  # not inspected any more: bytes are content
        if self._decoder is not None:
            chunk = self._decode(chunk)
        if self._sse:
            if (
                not self._partial
                and self._event is None
                and chunk[-1:] == b"\n"
                and chunk.find(b"usage") < 0
                and chunk.find(b"error") < 0
                and chunk.find(b"ping") < 0
            ):
                self._skip_line = False
                # whole lines, no usage, no error, no ping (most SSE chunks): content if it holds data
                return chunk.find(b"data:") >= 0
            return self._feed_sse(chunk)
        self._size += len(chunk)
        if self._size > JSON_CAP:
            self._problem = INCOMPLETE
            self._chunks.clear()
        else:
            self._chunks.append(chunk)
        return True

    def look(self) -> None:
        """Look at the chunks in :attr:`taken` together, as :meth:`feed` would one by one; never raises.

        For a stream past the point where each chunk needs an answer (its
        first content event): it appends its chunks to :attr:`taken` (at most
        :data:`BATCH` at a time) and calls this. Usage and in-band errors are
        found as :meth:`feed` finds them; only the lines of the events that
        mention ``usage`` or ``error`` are read one by one.
        """
        taken = self.taken
        if not taken:
            return
        data = taken[0] if len(taken) == 1 else b"".join(taken)
        taken.clear()
        if self._problem is not None or not data:
            return
        if not self._sse:
            self.feed(data)
            return
        if self._decoder is not None:
            data = self._decode(data)
        if self._event is not None or self._skip_line:
            self._feed_sse(data)  # an event (ping, error) or a long line left open: read as feed() reads it
        else:
            self._sse_batch(self._partial + data if self._partial else data)

    def _sse_batch(self, data: bytes) -> None:
        """Whole SSE lines and a partial one: only the events that mention usage or an error are read."""
        cut = data.rfind(b"\n")
        if cut < 0:
            self._keep_partial(data)
            return
        usage = data.find(b"usage", 0, cut)
        error = data.find(b"error", 0, cut)
        first = usage if error < 0 or 0 <= usage < error else error
        if first >= 0:  # from the start of the event that holds it (a blank line ends the one before)
            boundary = data.rfind(b"\n\n", 0, first)
        else:  # nothing to read, but the last event may be named (the data of a ping is not content)
            boundary = data.rfind(b"\n\n", 0, cut + 1)
            if data.find(b"event:", boundary + 1 if boundary >= 0 else 0, cut) < 0:
                self._keep_partial(data[cut + 1 :])
                return
        for line in data[boundary + 1 if boundary >= 0 else 0 : cut].split(b"\n"):
            self._sse_line(line)
        self._keep_partial(data[cut + 1 :])

    def _decode(self, chunk: bytes) -> bytes:
        assert self._decoder is not None
        try:
            out = self._decoder.decompress(chunk, JSON_CAP + 1)
        except zlib.error:
            self._problem = MALFORMED
            return b""
        if self._decoder.unconsumed_tail:  # more than the cap from one chunk: a bomb or a huge body
            self._problem = INCOMPLETE
            return b""
        return out

    def _feed_sse(self, chunk: bytes) -> bool:
        data = self._partial + chunk if self._partial else chunk
        cut = data.rfind(b"\n")
        if cut < 0:
            self._keep_partial(data)
            return False
        complete, rest = data[:cut], data[cut + 1 :]
        if (
            self._event is None
            and complete.find(b"usage") < 0
            and complete.find(b"error") < 0
            and complete.find(b"ping") < 0
        ):  # nothing to read in these lines: only whether one of them is a content event's data
            start = 0
            if self._skip_line:  # the tail of a line too long to keep: neither content nor usage
                first = complete.find(b"\n")
                start = len(complete) if first < 0 else first + 1
            self._skip_line = False
            self._keep_partial(rest)
            return complete.find(b"data:", start) >= 0
        lines = complete.split(b"\n")
        if self._skip_line:
            lines[0] = b""  # the tail of a line too long to keep: neither content nor usage
        content = False
        for line in lines:
            if self._sse_line(line):
                content = True
        self._skip_line = False
        self._keep_partial(rest)
        return content

    def _keep_partial(self, data: bytes) -> None:
        if len(data) > LINE_CAP:
            self._partial, self._skip_line = b"", True
        else:
            self._partial = data

    def _sse_line(self, line: bytes) -> bool:
        """Take one whole SSE line; whether it was a content event's data."""
        line = line.strip()
        if not line:  # the end of an event
            self._event = None
            return False
        if not line.startswith(b"data:"):
            if line.startswith(b"event:"):
                field = line[6:].strip()
                self._event = field if field == b"ping" or field == b"error" else None
            return False  # a comment (``: ping``) or another field
        name = self._event
        if name == b"ping":
            return False  # Anthropic's keepalive event
        if name is None and line.find(b'"error"') < 0:
            at = line.rfind(b'"usage"')
            if at >= 0:
                proven, usage = _usage_at_end(line, at)
                if proven == _PROVEN:  # the usage object alone is decoded (the event's last member)
                    if isinstance(usage, dict):
                        self._add_usage(usage)
                    return True
            elif line.find(b"usage") < 0:
                return True  # content, nothing in it to read
        try:
            event = json.loads(line[5:])
        except (ValueError, RecursionError):  # RecursionError: nested too deep to parse
            if name == b"error":
                self._in_band(FAILURE)
                return False
            if line.find(b"usage") >= 0:
                self._malformed = True
            return True
        if name == b"error":  # ``event: error``: its data says which error
            found = error_outcome(event, strings=True) if isinstance(event, dict) else None
            self._in_band(found or FAILURE)
            return False
        if not isinstance(event, dict):
            return True
        if isinstance(event.get("error"), dict):
            self._in_band(error_outcome(event) or FAILURE)
            return False
        usage = event.get("usage")
        if usage is None and isinstance(event.get("message"), dict):
            usage = event["message"].get("usage")  # Anthropic's message_start
        if isinstance(usage, dict):
            self._add_usage(usage)
        return True

    def _add_usage(self, usage: dict[str, Any]) -> None:
        """Usage is cumulative: later values replace earlier ones, field by field."""
        if self._usage is None:
            self._usage = {}
        self._usage.update(usage)

    def _in_band(self, outcome: str) -> None:
        if self.in_band is None:
            self.in_band = outcome

    def result(self, complete: bool) -> tuple[Mapping[str, Any] | None, str | None]:
        """``(usage or None, problem or None)`` once the body has ended (``complete``) or stopped."""
        if self.taken:
            self.look()
        if self._sse:
            if self._partial and not self._skip_line and self._partial.find(b"usage") >= 0:
                self._sse_line(self._partial)
                self._partial = b""
            if self._usage is not None:
                return self._usage, None
            if self._malformed:
                return None, MALFORMED
            return None, self._problem or (None if complete else INCOMPLETE)
        if self._problem is not None:
            return None, self._problem
        if not complete:
            return None, INCOMPLETE
        body = b"".join(self._chunks)
        self.in_band = json_error(body)
        return json_usage(body)


FAILURE = "failure"
THROTTLED = "throttled"


def error_outcome(data: Mapping[str, Any], *, strings: bool = False) -> str | None:
    """``failure`` or ``throttled`` when ``data``'s top level is an error, else ``None``.

    An error is a top-level ``"error"`` object (with ``strings``, a non-empty
    string too), or Anthropic's ``{"type": "error", ...}``. It is
    ``throttled`` when it says rate limit: its ``type`` or ``code`` contains
    ``rate_limit``, or its numeric ``code`` / ``status`` is 429.
    """
    error = data.get("error")
    if isinstance(error, dict):
        details: Mapping[str, Any] = error
    elif (strings and isinstance(error, str) and error) or data.get("type") == "error":
        details = data
    else:
        return None
    for key in ("type", "code", "status"):
        value = details.get(key)
        if value.__class__ is str and "rate_limit" in value.lower():
            return THROTTLED
        if (value == 429 and value.__class__ is not bool) or value == "429":
            return THROTTLED
    return FAILURE


def json_error(body: bytes) -> str | None:
    """The in-band error of a whole JSON body: ``failure``, ``throttled`` or ``None``.

    Parsed only when ``"error"`` occurs unescaped, i.e. as a key or a value
    (a result's text holds it escaped): a result is never parsed here.
    """
    if body.find(b'"error"') < 0:
        return None
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        return None  # not JSON: no verdict on what it says
    if not isinstance(data, dict):
        return None
    return error_outcome(data, strings=True)


_USAGE_KEY = re.compile(rb'"usage"\s*:\s*')
_SCAN: Callable[[str, int], tuple[Any, int]] = json.JSONDecoder().scan_once  # type: ignore[attr-defined]
"""``raw_decode``'s C scanner: ``(value, end)`` of the JSON text at an index; ``StopIteration`` if none."""


def json_usage(body: bytes) -> tuple[Mapping[str, Any] | None, str | None]:
    """The top-level ``usage`` object of a whole JSON body: ``(usage or None, problem or None)``.

    The usage object alone is decoded when the body proves it top-level
    cheaply: the last ``"usage": {`` of the body, followed by nothing but flat
    members and the body's one closing brace (OpenAI- and Anthropic-style
    bodies put it there, after the content). A ``"usage"`` inside a string is
    escaped (``\\"usage\\"``) and never matches. Any other body is parsed whole.
    """
    at = body.rfind(b'"usage"')
    if at < 0:
        return None, None
    proven, usage = _usage_at_end(body, at)
    if proven == _BAD:
        return None, MALFORMED
    if proven == _PROVEN:
        return (usage, None) if isinstance(usage, dict) else (None, None)
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):  # RecursionError: nested too deep to parse
        return None, MALFORMED
    usage = data.get("usage") if isinstance(data, dict) else None
    return (usage, None) if isinstance(usage, dict) else (None, None)


_UNPROVEN, _PROVEN, _BAD = 0, 1, 2


def _usage_at_end(body: bytes, at: int) -> tuple[int, Any]:
    """The ``"usage"`` key at ``at``, if its object is the last member of the outermost object.

    ``(_PROVEN, value)``: followed by nothing but flat members and the body's
    one closing brace; ``(_BAD, None)``: its object does not parse;
    ``(_UNPROVEN, None)``: anything else (parse the whole body to know).
    """
    found = _USAGE_KEY.match(body, at)
    if found is None:
        return _UNPROVEN, None
    start = found.end()
    if body[start : start + 1] != b"{":
        return _UNPROVEN, None
    try:
        text = body[start:].decode()
        usage, end = _SCAN(text, 0)  # text starts with "{": no whitespace for raw_decode to skip
    except (ValueError, RecursionError, StopIteration):  # UnicodeDecodeError included; nested too deep
        return _BAD, None
    rest = text[end:]
    if rest == "}" or (
        rest.count("}") == 1 and rest.find("{") < 0 and rest.find("[") < 0 and rest.find("]") < 0
    ):
        return _PROVEN, usage
    return _UNPROVEN, None


def header_triples(headers: AnyHeaders) -> list[tuple[bytes, bytes, bytes]]:
    """``(raw key, lower-cased key, value)`` of every header, as httpx2 and httpx keep them.

    The one read of the private ``Headers._list`` (7x faster than two
    ``.get()``); a layout without it is rebuilt from the public ``.raw``.
    """
    items: list[tuple[bytes, bytes, bytes]] | None = getattr(headers, "_list", None)
    if items is None:
        items = [(key, key.lower(), value) for key, value in headers.raw]
    return items


def scan(headers: AnyHeaders) -> tuple[str | None, bytes | None, bytes | None, dict[bytes, bytes] | None]:
    """What a response's headers say, in one pass: ``(kind, encoding, length, rate-limit headers)``.

    ``kind`` and ``encoding`` as :func:`body_kind` gives them; ``length`` the
    ``Content-Length`` as sent (``None``: absent; :func:`small` reads it, only
    when it matters); the rate-limit headers
    (:mod:`resilience._http.ratelimit`) as ``{lower-cased key: value}``, or
    ``None`` when there are none (most responses). The pass is C code
    (``dict``, ``map``); Python looks only at the names that may be rate limits.
    """
    triples = header_triples(headers)
    found = dict(map(_KEY_VALUE, triples))  # the last of a repeated header wins, as a loop would have it
    limits: dict[bytes, bytes] | None = None
    try:
        maybe = not FIRST_BYTES.isdisjoint(map(_FIRST_BYTE, found))  # most names start elsewhere
    except IndexError:  # an empty name: no rate limit in it
        maybe = True
    if maybe:
        limits = {key: value for key, value in found.items() if key.startswith(PREFIXES)} or None
    key = (found.get(b"content-type"), found.get(b"content-encoding"))
    judged = _KINDS.get(key)
    if judged is None:
        judged = _kind(*key)
        if len(_KINDS) < _KINDS_CAP:  # a provider sends a handful; hostile values are judged, not kept
            _KINDS[key] = judged
    return judged[0], judged[1], found.get(b"content-length"), limits


_KEY_VALUE = itemgetter(1, 2)
_FIRST_BYTE = itemgetter(0)
_KINDS: dict[tuple[bytes | None, bytes | None], tuple[str | None, bytes | None]] = {}
"""``(content-type, content-encoding)`` values seen, and what :func:`_kind` made of them."""
_KINDS_CAP = 256


def small(length: bytes | None) -> bool | None:
    """Whether a ``Content-Length`` is within :data:`JSON_CAP`; ``None`` when absent or not digits."""
    if length is None or not length.isdigit() or len(length) > 18:
        return None
    return int(length) <= JSON_CAP


def _kind(content_type: bytes | None, encoding: bytes | None) -> tuple[str | None, bytes | None]:
    if content_type is None:
        return None, None
    mime = content_type.partition(b";")[0].strip().lower()
    if mime == b"application/json" or mime.endswith(b"+json"):
        kind = "json"
    elif mime == b"text/event-stream":
        kind = "sse"
    else:
        return None, None
    if encoding is not None:
        encoding = encoding.strip().lower()
        if encoding == b"identity" or encoding == b"":
            encoding = None
    return kind, encoding


def body_kind(headers: AnyHeaders) -> tuple[str | None, bytes | None]:
    """``("json" | "sse" | None, content-encoding or None)`` of a response: :func:`scan`'s first two."""
    kind, encoding, _, _ = scan(headers)
    return kind, encoding


def whole_body(
    headers: AnyHeaders, body: bytes
) -> tuple[Mapping[str, Any] | None, str | None, str | None, bool]:
    """``(usage, problem, in-band error, holds a content event)`` of a body already in memory.

    See :class:`BodyInspector`; the last is ``True`` only for SSE bodies with a content event.
    """
    kind, encoding = body_kind(headers)
    return whole_body_of(kind, encoding, body)


def whole_body_of(
    kind: str | None, encoding: bytes | None, body: bytes
) -> tuple[Mapping[str, Any] | None, str | None, str | None, bool]:
    """:func:`whole_body` of a body whose :func:`body_kind` is known."""
    if kind is None:
        return None, None, None, False
    if kind == "json" and encoding is None:
        if len(body) > JSON_CAP:
            return None, INCOMPLETE, None, False
        usage, problem = json_usage(body)
        return usage, problem, json_error(body), False
    inspector = BodyInspector(sse=kind == "sse", encoding=encoding)
    if encoding is not None and encoding not in (b"gzip", b"x-gzip", b"deflate"):
        return None, INCOMPLETE, None, False
    content = inspector.feed(body) and kind == "sse"
    usage, problem = inspector.result(True)
    return usage, problem, inspector.in_band, content


def whole_body_usage(headers: AnyHeaders, body: bytes) -> tuple[Mapping[str, Any] | None, str | None]:
    """:meth:`BodyInspector.result` for a body already in memory."""
    usage, problem, _, _ = whole_body(headers, body)
    return usage, problem
