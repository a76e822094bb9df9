"""Successes waiting, lock-free, to be folded into a provider's windows.

A fast success on a closed breaker takes no lock: it is appended to one list
of its window, and whoever next takes the provider's lock folds the lists in
a batch (:meth:`resilience._core.provider.Provider.fold`). A plain one is its
duration, a ``float``, in the window's ``pending``; one with more to say (a
streamed response's time to headers or first token, a cost, tokens) is a :data:`Rich` tuple
in its ``rich``, so folding plain ones never has to sort the two apart.
"""

from __future__ import annotations

import math
from functools import partial
from operator import is_not
from typing import TypeAlias

Rich: TypeAlias = tuple[float, float | None, float | None, int, int, float | None]
"""``(duration, time to headers or None, cost in USD or None, input tokens, output tokens,
time to first token or None)``."""

_NOT_NONE = partial(is_not, None)


class Extras:
    """What the rich entries of one batch add beyond their durations.

    The batch is turned into its columns once (``zip(*rich, strict=True)``, in C); each
    sum and filter is then one C call over a column, with no Python step per entry.
    """

    __slots__ = ("cost", "costed", "durations", "headers", "input_tokens", "output_tokens", "ttft")

    def __init__(self, rich: list[Rich]) -> None:
        durations, headers, costs, inputs, outputs, ttft = zip(*rich, strict=True)
        self.durations: list[float] = list(durations)
        known = list(filter(_NOT_NONE, costs))
        self.cost = math.fsum(known)
        self.costed = len(known)
        self.input_tokens: int = sum(inputs)
        self.output_tokens: int = sum(outputs)
        self.headers: list[float] = list(filter(_NOT_NONE, headers))
        self.ttft: list[float] = list(filter(_NOT_NONE, ttft))

    def add(self, other: Extras) -> None:
        """Take ``other``'s numbers in too."""
        self.cost = math.fsum((self.cost, other.cost))
        self.costed += other.costed
        self.durations += other.durations
        self.input_tokens += other.input_tokens
        self.output_tokens += other.output_tokens
        self.headers += other.headers
        self.ttft += other.ttft
