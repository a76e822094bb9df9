"""Which happy path the transport runs: the mypyc-compiled one when it is built and current, else pure.

The pure modules :mod:`resilience._resolve` and :mod:`resilience._happy` are
the only source. ``python -m resilience speedups`` compiles a copy of both
into one extension module, ``resilience._speedups``, stamped with the digest
of the sources it was built from. It is used only when that stamp matches
the sources on disk, so an edited source runs pure until it is rebuilt, and
never when the environment sets ``RESILIENCE_PURE`` to a non-empty value.
"""

from __future__ import annotations

import hashlib
import importlib
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import httpx

from resilience import _happy, _resolve
from resilience._happy import Admission

__all__ = ["SOURCES", "HotPath", "load", "pure", "source_digest"]

log = logging.getLogger("resilience")

SOURCES = ("_resolve.py", "_happy.py")
"""The modules compiled into ``resilience._speedups``, in this order."""

COMPILED = "resilience._speedups"
FORMAT = "1"
"""Bumped when the way the compiled module is made from the sources changes."""


class HotPath(NamedTuple):
    """The three names the transport takes from one implementation of the happy path."""

    admit_request: Callable[[Any, httpx.Request], Admission]
    recorded_plain: Callable[[Admission, httpx.Response], bool]
    Resolver: Callable[[Any], Any]
    compiled: bool


def source_digest(package: Path | None = None) -> str:
    """The stamp of the current sources: a sha256 of the build format and each source file."""
    folder = package or Path(__file__).parent
    digest = hashlib.sha256(FORMAT.encode())
    for name in SOURCES:
        digest.update(name.encode() + b"\0" + (folder / name).read_bytes() + b"\0")
    return digest.hexdigest()


def pure() -> HotPath:
    """The pure-Python happy path."""
    return HotPath(_happy.admit_request, _happy.recorded_plain, _resolve.Resolver, compiled=False)


def load() -> HotPath:
    """The compiled happy path if it is built, current and not refused, else :func:`pure`."""
    if os.environ.get("RESILIENCE_PURE"):
        return pure()
    try:
        module: Any = importlib.import_module(COMPILED)
    except ImportError:
        return pure()
    try:
        current = source_digest() == module.SOURCE_DIGEST
    except OSError:  # the sources are not on disk (a zipped install): nothing to compare with
        current = False
    if not current:
        log.warning("resilience: %s is stale (built from other sources); running the pure happy path. "
                    "Rebuild it with: python -m resilience speedups", COMPILED)
        return pure()
    return HotPath(module.admit_request, module.recorded_plain, module.Resolver, compiled=True)
