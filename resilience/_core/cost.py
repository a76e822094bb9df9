"""Cost extractors: what one attempt cost in USD, and its tokens.

``Policy(cost=...)`` takes any callable ``(model, usage, headers) -> float | None``
(:data:`CostExtractor`); ``usage`` is the parsed ``usage`` object of a JSON
body or of the final SSE events, or ``None``. Built in:

* :func:`usage_cost` (the default): ``usage.cost``, as openrouter returns it;
* :class:`PriceTable`: USD per million input and output tokens, per model;
* :class:`HeaderCost`: a response header such as ``x-cost-usd``.

The body itself is watched by :mod:`resilience._http.inspect` as it streams.
Nothing here fails a call: a malformed body or header is an *unknown* cost,
counted with ``provider.count_error("cost_parse")``; a user callable that
raises is logged and counted as ``cost_extractor``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol, TypeAlias

from resilience._core.errors import ConfigError


class _CostPolicy(Protocol):
    @property
    def cost(self) -> CostExtractor | None: ...


class CostOwner(Protocol):
    """What :func:`attempt_cost` needs of a provider: its name, its cost policy, its error counter."""

    @property
    def name(self) -> str: ...

    @property
    def policy(self) -> _CostPolicy: ...

    def count_error(self, kind: str) -> None:
        """Count one instrumentation error of ``kind``."""

log = logging.getLogger("resilience")

CostExtractor: TypeAlias = Callable[[str | None, Mapping[str, Any] | None, Mapping[str, str]], float | None]
"""``(model, usage, headers) -> USD or None``; ``None`` means no cost known for the attempt."""


_NUMBER = (int, float)


class CostParseError(ValueError):
    """A body or header that should hold a cost is malformed (counted, never raised to callers)."""


def usage_cost(
    model: str | None, usage: Mapping[str, Any] | None, headers: Mapping[str, str]
) -> float | None:
    """The default extractor: ``usage.cost`` of an OpenAI-style body, in USD.

    Raises:
        CostParseError: ``usage.cost`` is there but is not a number.
    """
    if usage is None:
        return None
    cost = usage.get("cost")
    if cost is None:
        return None
    if isinstance(cost, bool) or not isinstance(cost, _NUMBER):
        raise CostParseError(f"usage.cost is not a number: {cost!r}")
    try:
        return float(cost)
    except OverflowError:  # an integer too large for a float
        raise CostParseError(f"usage.cost is out of range: {cost!r}") from None


def usage_tokens(usage: Mapping[str, Any] | None) -> tuple[int, int]:
    """Input and output tokens of a usage object (OpenAI or Anthropic names), 0 when absent."""
    if usage is None:
        return 0, 0
    prompt = usage.get("prompt_tokens")
    if prompt is None:
        prompt = usage.get("input_tokens")
    completion = usage.get("completion_tokens")
    if completion is None:
        completion = usage.get("output_tokens")
    # exactly int (not bool), and not negative
    return (
        prompt if prompt.__class__ is int and prompt >= 0 else 0,
        completion if completion.__class__ is int and completion >= 0 else 0,
    )


class PriceTable:
    """Cost from tokens: ``PriceTable({"gpt-4o": (2.50, 10.00)})``, USD per million tokens.

    The pair is (input, output). Tokens come from ``usage.prompt_tokens`` /
    ``usage.completion_tokens`` or Anthropic's ``input_tokens`` / ``output_tokens``.
    A model not in the table, or a body without usage, has no cost (``None``).

    Raises:
        ConfigError: a price that is not a pair of finite numbers >= 0.
    """

    __slots__ = ("prices",)

    def __init__(self, prices: Mapping[str, tuple[float, float]]) -> None:
        table: dict[str, tuple[float, float]] = {}
        for model, pair in dict(prices).items():
            if not isinstance(pair, tuple | list) or len(pair) != 2 or not all(map(_price_ok, pair)):
                raise ConfigError(
                    f"prices[{model!r}] must be (usd_per_million_input, usd_per_million_output), got {pair!r}"
                )
            table[str(model)] = (float(pair[0]), float(pair[1]))
        self.prices = table

    def __repr__(self) -> str:
        return f"PriceTable({self.prices!r})"

    def __call__(
        self, model: str | None, usage: Mapping[str, Any] | None, headers: Mapping[str, str]
    ) -> float | None:
        """USD for the attempt, or ``None`` for an unknown model or no usage."""
        if model is None or usage is None:
            return None
        price = self.prices.get(model)
        if price is None:
            return None
        input_tokens, output_tokens = usage_tokens(usage)
        return (input_tokens * price[0] + output_tokens * price[1]) / 1_000_000


def _price_ok(value: object) -> bool:
    return (
        not isinstance(value, bool)
        and isinstance(value, int | float)
        and math.isfinite(value)
        and value >= 0
    )


@dataclass(frozen=True, slots=True)
class HeaderCost:
    """Cost from a response header: ``HeaderCost("x-cost-usd")``.

    A missing header is no cost; a value that is not a finite number >= 0 is
    an unknown cost (counted as ``cost_parse``).
    """

    header: str = "x-cost-usd"

    def __call__(
        self, model: str | None, usage: Mapping[str, Any] | None, headers: Mapping[str, str]
    ) -> float | None:
        """USD from the header, or ``None`` when the response has none.

        Raises:
            CostParseError: the header's value is not a finite number >= 0.
        """
        value = headers.get(self.header)
        if value is None:
            return None
        try:
            cost = float(value)
        except ValueError:
            raise CostParseError(f"header {self.header} is not a number: {value!r}") from None
        if not (math.isfinite(cost) and cost >= 0):
            raise CostParseError(f"header {self.header} is not a cost: {value!r}")
        return cost


class CostResult(NamedTuple):
    """What an attempt cost: USD (or ``None``), whether it is unknown, and its tokens."""

    cost: float | None = None
    unknown: bool = False
    input_tokens: int = 0
    output_tokens: int = 0


NO_COST = CostResult()

_new_result = tuple.__new__
"""Builds a :class:`CostResult` from its four fields in C (a named tuple's ``__new__`` is Python)."""


def usage_result(usage: Mapping[str, Any], unknown: bool = False) -> CostResult | None:
    """:func:`attempt_cost` with the default extractor, in one step: ``None`` when ``usage.cost``
    is there but not a number (the slow path counts it)."""
    cost = usage.get("cost")
    tokens_in, tokens_out = usage_tokens(usage)
    if cost is None:
        if unknown or tokens_in or tokens_out:
            return _new_result(CostResult, (None, unknown, tokens_in, tokens_out))
        return NO_COST
    if cost.__class__ is float:
        return _new_result(CostResult, (cost, False, tokens_in, tokens_out))
    return None


def attempt_cost(
    provider: CostOwner,
    model: str | None,
    usage: Mapping[str, Any] | None,
    headers: Mapping[str, str],
    *,
    unknown: bool = False,
) -> CostResult:
    """Run the provider's extractor over one attempt; never raises.

    ``unknown`` says the body could not be read to its usage (malformed,
    truncated, too large); the cost stays unknown unless the extractor finds
    one anyway (a header, say).
    """
    extractor = provider.policy.cost or usage_cost
    tokens = usage_tokens(usage)
    try:
        cost = extractor(model, usage, headers)
    except CostParseError as exc:
        log.debug("cost of an attempt to %s is unknown: %s", provider.name, exc)
        provider.count_error("cost_parse")
        return CostResult(None, True, *tokens)
    except Exception:
        log.exception("cost extractor %r failed for provider %s", extractor, provider.name)
        provider.count_error("cost_extractor")
        return CostResult(None, True, *tokens)
    if cost is None:
        return NO_COST if not (unknown or any(tokens)) else CostResult(None, unknown, *tokens)
    if isinstance(cost, bool) or not isinstance(cost, _NUMBER):
        log.error("cost extractor %r returned %r, not a number", extractor, cost)
        provider.count_error("cost_extractor")
        return CostResult(None, True, *tokens)
    try:
        usd = float(cost)
    except OverflowError:  # an integer too large for a float: rejected as invalid_cost when recorded
        usd = math.inf
    return CostResult(usd, False, *tokens)
