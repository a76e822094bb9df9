"""Which provider and model a request belongs to.

In order: ``extensions={"provider": ..., "model": ...}`` on the httpx call;
the registry's host map; the host name itself (auto-registered under
``max_providers``, then folded into ``other``). The model, when not given,
is the top-level ``"model"`` of a JSON request body that is already in
memory and at most :data:`MAX_BODY` bytes; a streaming request body is never
read. Model names are capped per provider by ``Provider.model_window``.
"""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING

import httpx2

from resilience._core.provider import Provider
from resilience._core.registry import ProviderRegistry
from resilience._http.inspect import in_memory_body
from resilience._http.stacks import Stack, stack_of

if TYPE_CHECKING:
    from resilience._http.stacks import AnyRequest

MAX_BODY = 1 << 20
"""Largest request body searched for a ``"model"``."""

_MODEL = re.compile(rb'"model"\s*:\s*"((?:[^"\\]|\\.)*)"')
_COMPACT = b'{"model":"'
_COMPACT_LEN = len(_COMPACT)
_MAX_COMPACT_NAME = 512
"""Longest model name read by the compact path; a longer one is found by the regex below."""


class Resolver:
    """Resolves requests against one registry, remembering hosts of explicit registrations.

    Only a host that an explicitly registered provider lists exactly is
    remembered: such a mapping can never change (hosts cannot be taken twice,
    explicit providers are never replaced), and their number is bounded by
    the registrations. Every other host goes through ``registry.resolve``.
    """

    __slots__ = ("known", "registry")

    def __init__(self, registry: ProviderRegistry) -> None:
        self.registry = registry
        self.known: dict[str, Provider] = {}

    def __call__(self, request: httpx2.Request) -> Provider:
        """The provider of ``request``."""
        name = request.extensions.get("provider")
        if name is None:
            host = request.url.host
            provider = self.known.get(host)
            return provider if provider is not None else self._by_host(host)
        if isinstance(name, Provider):
            return name
        if isinstance(name, str) and name:
            return self.registry.resolve(name)
        return self._by_host(request.url.host)

    def _by_host(self, host: str) -> Provider:
        provider = self.registry.resolve(host=host)
        if provider._explicit and host in provider.hosts and len(self.known) < 4096:
            self.known[host] = provider
        return provider


def model_from_body(request: AnyRequest, stack: Stack | None = None) -> str | None:
    """The top-level ``"model"`` string of an in-memory JSON body, else ``None``; never raises."""
    if stack is None:
        stack = stack_of(request)
    stream = request.stream
    if stream.__class__ is not stack.byte_stream and not isinstance(stream, stack.byte_stream):
        return None  # streaming upload: never read it
    return model_in(in_memory_body(stream))  # type: ignore[arg-type]  # a ByteStream


def model_in(body: bytes) -> str | None:
    """:func:`model_from_body` of the body's bytes."""
    if not body or len(body) > MAX_BODY:
        return None
    if body[:_COMPACT_LEN] == _COMPACT:  # ``{"model":"...`` as httpx's json= writes it: read directly
        # slices and partition (one argument, no parsing): the cheapest bytes calls there are
        name, quote, _ = body[_COMPACT_LEN : _COMPACT_LEN + _MAX_COMPACT_NAME].partition(b'"')
        if quote and not name.partition(b"\\")[1]:
            try:
                return name.decode()
            except UnicodeDecodeError:
                return None
    match = _MODEL.search(body)
    return None if match is None else _top_level_model(body, match)


def _top_level_model(body: bytes, match: re.Match[bytes]) -> str | None:
    """The model if the first ``"model": "..."`` pair, ``match``, is a key of the outermost object.

    A body that opens with the pair (``{"model": ...``, as SDKs send it) is
    read directly. Otherwise the whole body is parsed once and its top-level
    ``"model"`` taken: at most one parse on any input (a crafted body with
    many nested pairs cannot make it parse once per pair).
    """
    try:
        if body[: match.start()].strip() == b"{":
            value = match[1]
            if value.find(b"\\") < 0:
                return value.decode()
            model = json.loads(b'"' + value + b'"')
        else:
            data = json.loads(body)
            model = data.get("model") if isinstance(data, dict) else None
    except (ValueError, RecursionError):  # UnicodeDecodeError included; nested too deep to parse
        return None
    return model if isinstance(model, str) else None
