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
from typing import TypeAlias

Rich: TypeAlias = tuple[float, float | None, float | None, int, int, float | None]
"""``(duration, time to headers or None, cost in USD or None, input tokens, output tokens,
time to first token or None)``."""

class Extras:
    """What the rich entries of one batch add beyond their durations."""

    __slots__ = ("cost", "costed", "headers", "input_tokens", "output_tokens", "ttft")

    def __init__(self, rich: list[Rich]) -> None:
        costs = [entry[2] for entry in rich if entry[2] is not None]
        self.cost = math.fsum(costs)
        self.costed = len(costs)
        self.input_tokens = sum(entry[3] for entry in rich)
        self.output_tokens = sum(entry[4] for entry in rich)
        self.headers = [entry[1] for entry in rich if entry[1] is not None]
        self.ttft = [entry[5] for entry in rich if entry[5] is not None]

    def add(self, other: Extras) -> None:
        """Take ``other``'s numbers in too."""
        self.cost = math.fsum((self.cost, other.cost))
        self.costed += other.costed
        self.input_tokens += other.input_tokens
        self.output_tokens += other.output_tokens
        self.headers += other.headers
        self.ttft += other.ttft
