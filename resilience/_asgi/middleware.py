"""``ResilienceMiddleware``: pure ASGI glue between an inbound request and the providers.

For every ``http`` request it

* opens a :class:`resilience.RequestStats` (``resilience.current_request()``)
  that the transport and ``guard()`` add attempts and cost to;
* turns a :class:`resilience.CircuitOpenError` raised before the response
  started — also one wrapped by a client library, found through
  ``__cause__``/``__context__`` and exception groups — into ``503`` with a
  whole-second ``Retry-After`` and a JSON body naming the provider;
* with ``provider_for``, guards whole routes that stand for one provider:
  rejected at once while its breaker is open, else the outcome is recorded
  from the response status and timed to the last body chunk;
* with ``deadline_header``, reads the inbound request's deadline (seconds)
  into its :class:`resilience.RequestStats`, bounding every provider call
  made while handling it, and turns a :class:`resilience.DeadlineExceededError`
  (also a wrapped one) into ``504``.

It never buffers: every message goes on to the server as the app sends it.
Lifespan and websocket scopes pass through untouched.
"""

from __future__ import annotations

import json
import logging
import math
import re
import threading
from collections.abc import Callable, MutableMapping
from typing import Any, TypeVar

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from resilience._core.context import RequestStats, begin_request, end_request
from resilience._core.deadline import Deadline, header_seconds
from resilience._core.errors import CircuitOpenError, ConfigError
from resilience._core.provider import Provider
from resilience._core.registry import ProviderRegistry
from resilience._core.retry import parse_retry_after
from resilience._http.errors import DeadlineExceededError

log = logging.getLogger("resilience")

ProviderFor = Callable[[Scope], "str | None"]
ATTEMPTS_HEADER = b"x-resilience-attempts"
COST_HEADER = b"x-resilience-cost-usd"
_MAX_CHAIN = 64
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
MAX_RETRY_AFTER = 86_400
"""Largest ``Retry-After`` the middleware answers with (one day)."""


class ResilienceMiddleware:
    """Pure ASGI middleware; add it with ``app.add_middleware(ResilienceMiddleware, registry=registry)``.

    Args:
        app: the ASGI app to wrap.
        registry: the providers' registry.
        provider_for: ``scope -> provider name | None``; a name makes the whole
            route one call to that provider (breaker, windows, metrics).
        expose_headers: add ``x-resilience-attempts`` and ``x-resilience-cost-usd``
            to responses, with the totals known when the response starts.
        deadline_header: the inbound request header carrying its deadline in
            seconds (e.g. ``"x-request-timeout"``), applied to every provider
            call made while handling it; ``None`` (the default) reads none. A
            malformed value is ignored and counted in :attr:`errors`
            (``"deadline_header"``).
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        registry: ProviderRegistry,
        provider_for: ProviderFor | None = None,
        expose_headers: bool = False,
        deadline_header: str | None = None,
    ) -> None:
        if not isinstance(registry, ProviderRegistry):
            raise ConfigError(f"registry must be a ProviderRegistry, got {registry!r}")
        if provider_for is not None and not callable(provider_for):
            raise ConfigError(f"provider_for must be a callable or None, got {provider_for!r}")
        self.app = app
        self.registry = registry
        self.provider_for = provider_for
        self.expose_headers = bool(expose_headers)
        self.deadline_header = deadline_header
        self._deadline_key = None if deadline_header is None else _header_key(deadline_header)
        self._errors: dict[str, int] = {}
        self._errors_lock = threading.Lock()

    @property
    def errors(self) -> dict[str, int]:
        """Problems the middleware met and went on past, by kind (a copy): ``"deadline_header"``."""
        with self._errors_lock:
            return dict(self._errors)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        stats, token = begin_request()
        try:
            provider = self._route_provider(scope)
            if self._deadline_key is not None:
                self._read_deadline(scope, stats, provider)
            exchange = _Exchange(send, receive, stats, expose=self.expose_headers, provider=provider)
            if provider is None:
                await self._run(scope, receive, exchange)
            elif await exchange.admit():
                await self._run(scope, exchange.receive, exchange)
        finally:
            end_request(token)

    def _route_provider(self, scope: Scope) -> Provider | None:
        if self.provider_for is None:
            return None
        try:
            name = self.provider_for(scope)
            return None if name is None else self.registry.resolve(str(name))
        except Exception:
            log.exception("provider_for failed; the request goes on unguarded")
            return None

    def _read_deadline(self, scope: Scope, stats: RequestStats, provider: Provider | None) -> None:
        """Set ``stats.deadline`` from the inbound deadline header; a malformed value is counted."""
        key = self._deadline_key
        for name, value in scope.get("headers", ()):
            if bytes(name).lower() != key:
                continue
            seconds = header_seconds(bytes(value))
            if seconds is not None:
                stats.deadline = Deadline(self.registry.clock() + seconds, seconds, "inbound")
                return
            log.debug("ignoring a malformed %s header: %r", self.deadline_header, value)
            with self._errors_lock:
                self._errors["deadline_header"] = self._errors.get("deadline_header", 0) + 1
            if provider is not None:
                provider.count_error("deadline_header")
            return

    async def _run(self, scope: Scope, receive: Receive, exchange: _Exchange) -> None:
        try:
            await self.app(scope, receive, exchange.send)
        except Exception as exc:
            circuit = find_circuit_open(exc)
            deadline = None if circuit is not None else find_deadline_exceeded(exc)
            exchange.settle_error(circuit is not None or deadline is not None)
            if exchange.started or (circuit is None and deadline is None):
                raise
            if circuit is not None:
                log.debug("circuit of %r open: answering 503", circuit.provider, exc_info=exc)
                await exchange.reject(circuit)
            else:
                assert deadline is not None
                log.debug("deadline of the call to %r passed: answering 504", deadline.provider, exc_info=exc)
                await exchange.timed_out(deadline)
        except BaseException:
            exchange.settle(None)  # cancelled: the call ended without a result
            raise
        else:
            exchange.settle_incomplete()


class _Exchange:
    """One request's response as the middleware sees it (never shared between requests)."""

    __slots__ = (
        "_receive", "_send", "disconnected", "expose", "finished", "permit", "provider",
        "retry_after", "settled", "start_time", "started", "stats", "status",
    )

    def __init__(
        self, send: Send, receive: Receive, stats: RequestStats, *, expose: bool, provider: Provider | None
    ) -> None:
        self._send = send
        self._receive = receive
        self.retry_after: float | None = None
        self.stats = stats
        self.expose = expose
        self.provider = provider
        self.permit = 0
        self.start_time = 0.0
        self.started = self.finished = self.disconnected = self.settled = False
        self.status = 0

    # -- the route guard ---------------------------------------------------------

    async def admit(self) -> bool:
        """Take a permit from the route's provider, or answer 503 and return False."""
        provider = self.provider
        assert provider is not None
        try:
            self.permit = provider.admit(None)
        except CircuitOpenError as exc:
            self.stats.add_rejection(provider.name)
            self.settled = True
            await self.reject(exc)
            return False
        self.start_time = provider.clock()
        self.stats._holding = provider  # the calls the route makes to it ride on this permit
        return True

    async def receive(self) -> Message:
        """The app's ``receive``, noting ``http.disconnect``."""
        message = await self._receive()
        if message["type"] == "http.disconnect" and not self.finished:
            self.disconnected = True
        return message

    def settle(self, outcome: str | None, retry_after: float | None = None) -> None:
        """Record the route's outcome once (``None``: release the permit, no result)."""
        provider = self.provider
        if provider is None or self.settled:
            return
        self.settled = True
        try:
            if outcome is None:
                provider.release(self.permit)
            else:
                duration = max(0.0, provider.clock() - self.start_time)
                provider.record(self.permit, outcome, duration, retry_after=retry_after)
        except Exception:  # instrumentation never breaks a request
            log.exception("recording the route outcome of %r failed", provider.name)
            provider.count_error("middleware")

    def settle_error(self, no_verdict: bool) -> None:
        """The app raised: a failure, unless the client left, a breaker rejected the call or its
        deadline passed (``no_verdict``)."""
        self.settle(None if no_verdict or self.disconnected else "failure")

    def settle_incomplete(self) -> None:
        """The app returned; a response it never completed is a failure unless the client left."""
        self.settle(None if self.disconnected else "failure")

    # -- send --------------------------------------------------------------------

    async def send(self, message: Message) -> None:
        """Pass ``message`` on at once, noting the status and the end of the body."""
        kind = message["type"]
        if kind == "http.response.start":
            self.started = True
            self.status = int(message["status"])
            if self.provider is not None:
                self.retry_after = _retry_after(message.get("headers", ()))
            if self.expose:
                message = _with_headers(message, self.stats)
        elif kind == "http.response.body" and not message.get("more_body", False) and self.started:
            await self._forward(message)
            self.finished = True
            if self.provider is not None:
                outcome = outcome_of(self.provider, self.status)
                self.settle(outcome, self.retry_after if outcome in ("failure", "throttled") else None)
            return
        await self._forward(message)

    async def _forward(self, message: Message) -> None:
        try:
            await self._send(message)
        except OSError:
            self.disconnected = True
            raise

    async def reject(self, exc: CircuitOpenError) -> None:
        """Answer ``503`` for an open circuit."""
        retry_after = retry_after_header(exc.retry_after)
        error = {"type": "circuit_open", "provider": exc.provider, "retry_after": retry_after}
        await self._answer(503, error, [(b"retry-after", str(retry_after).encode())])

    async def timed_out(self, exc: DeadlineExceededError) -> None:
        """Answer ``504`` for a call whose deadline passed."""
        deadline = exc.deadline if math.isfinite(exc.deadline) else None
        await self._answer(504, {"type": "deadline_exceeded", "provider": exc.provider, "deadline": deadline})

    async def _answer(
        self, status: int, error: dict[str, Any], extra: list[tuple[bytes, bytes]] | None = None
    ) -> None:
        body = json.dumps({"error": error}).encode()
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            *(extra or ()),
            (b"cache-control", b"no-store"),
        ]
        start: MutableMapping[str, Any] = {"type": "http.response.start", "status": status}
        start["headers"] = headers
        if self.expose:
            start = _with_headers(start, self.stats)
        self.started = True
        await self._send(start)
        await self._send({"type": "http.response.body", "body": body, "more_body": False})


def _header_key(name: object) -> bytes:
    """``name`` as ASGI gives header names (lower-case bytes), or ``ConfigError``: not a header name."""
    if not isinstance(name, str) or not _TOKEN.fullmatch(name):
        raise ConfigError(f"deadline_header must be a non-empty HTTP header name or None, got {name!r}")
    return name.lower().encode("ascii")


def retry_after_header(seconds: float) -> int:
    """Whole seconds for a ``Retry-After`` header: at least 1, at most :data:`MAX_RETRY_AFTER`.

    A user's ``CircuitOpenError(retry_after=inf)`` (or NaN) gets the cap, never a 500.
    """
    if not seconds < MAX_RETRY_AFTER:  # inf and NaN included
        return MAX_RETRY_AFTER
    return max(1, math.ceil(seconds))


def _with_headers(message: MutableMapping[str, Any], stats: RequestStats) -> Message:
    headers = list(message.get("headers", ()))
    headers.append((ATTEMPTS_HEADER, str(stats.attempts).encode()))
    headers.append((COST_HEADER, f"{stats.cost_usd:.6f}".encode()))
    return {**message, "headers": headers}


def outcome_of(provider: Provider, status: int) -> str:
    """The outcome a response status means under the provider's policy."""
    return provider.policy.outcome_for_status(status)


def _retry_after(headers: Any) -> float | None:
    """A ``Retry-After`` (seconds or HTTP date) of the response, or ``None``."""
    for name, value in headers:
        if bytes(name).lower() == b"retry-after":
            return parse_retry_after(bytes(value).decode("latin-1"))
    return None


def find_circuit_open(exc: BaseException) -> CircuitOpenError | None:
    """The :class:`CircuitOpenError` behind ``exc``: itself, its causes and contexts, group members.

    A context hidden with ``raise ... from None`` is not followed.
    """
    return _find(exc, CircuitOpenError)


def find_deadline_exceeded(exc: BaseException) -> DeadlineExceededError | None:
    """The :class:`DeadlineExceededError` behind ``exc``, found as :func:`find_circuit_open` finds its."""
    return _find(exc, DeadlineExceededError)


E = TypeVar("E", bound=BaseException)


def _find(exc: BaseException, kind: type[E]) -> E | None:
    """The first ``kind`` in ``exc``'s chain, breadth first, at most :data:`_MAX_CHAIN` exceptions deep."""
    queue: list[BaseException] = [exc]
    seen: set[int] = set()
    while queue and len(seen) < _MAX_CHAIN:
        current = queue.pop(0)
        if id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, kind):
            return current
        if isinstance(current, BaseExceptionGroup):
            queue.extend(current.exceptions)
        if current.__cause__ is not None:
            queue.append(current.__cause__)
        if current.__context__ is not None and not current.__suppress_context__:
            queue.append(current.__context__)
    return None
