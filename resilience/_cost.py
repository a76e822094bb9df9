"""Cost extractors (filled in by the transport work)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, TypeAlias

CostExtractor: TypeAlias = Callable[[str | None, Mapping[str, Any] | None, Mapping[str, str]], float | None]
