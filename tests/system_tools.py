"""System tools the tests need (redis-server, promtool): skip without them, fail in CI."""

from __future__ import annotations

import os
import shutil

import pytest


def in_ci() -> bool:
    """Whether the ``CI`` environment variable says ``true``."""
    return os.environ.get("CI", "").lower() == "true"


def require_binary(name: str) -> str:
    """The path of a system tool; skip without it, or fail when ``CI=true`` (CI installs it)."""
    path = shutil.which(name)
    if path is None:
        message = f"{name} is not installed (its Debian package is installed by .ci/run)"
        if in_ci():
            pytest.fail(message + "; CI must install it")
        pytest.skip(message)
    return path
