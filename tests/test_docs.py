"""The documentation: every Python code block runs, the site builds strict, the reference names the API."""

from __future__ import annotations

import importlib
import importlib.metadata
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import resilience

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)
DIRECTIVE = re.compile(r"^::: (resilience(?:\.\w+)+)[ \t]*$", re.M)
DISTRIBUTION = "llm-resilience"


def _blocks() -> list[Any]:
    params = []
    pages = [(page, str(page.relative_to(DOCS))) for page in sorted(DOCS.rglob("*.md"))]
    for page, label in [*pages, (ROOT / "README.md", "README.md")]:
        for number, code in enumerate(BLOCK.findall(page.read_text(encoding="utf-8"))):
            params.append(pytest.param(code, id=f"{label}#{number}"))
    return params


def _documented() -> list[str]:
    """The dotted names of docs/reference.md's ``::: resilience...`` directives, in page order."""
    return DIRECTIVE.findall((DOCS / "reference.md").read_text(encoding="utf-8"))


@pytest.mark.parametrize("code", _blocks())
def test_docs_code_block_runs(code: str) -> None:
    """Each ```python block in docs/ and README.md runs as written, in a fresh process (own registry)."""
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr[-3000:]


def test_mkdocs_builds_strict(tmp_path: Path) -> None:
    """mkdocs build --strict succeeds: no broken links, no missing pages, no warnings."""
    mkdocs = Path(sys.executable).parent / "mkdocs"
    result = subprocess.run(
        [str(mkdocs), "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-5000:]
    assert (tmp_path / "site" / "index.html").exists()


def _is_public(dotted: str) -> bool:
    """``resilience.X`` with X in ``__all__``, or ``resilience.<module>.X`` public in that public module."""
    parts = dotted.split(".")
    if len(parts) == 2:
        return parts[1] in resilience.__all__
    if len(parts) != 3 or parts[1].startswith("_") or parts[2].startswith("_"):
        return False
    module = importlib.import_module(".".join(parts[:2]))  # resilience.redis, resilience.testing
    exported = getattr(module, "__all__", None)
    return hasattr(module, parts[2]) and (exported is None or parts[2] in exported)


def test_reference_documents_all_of_the_public_api() -> None:
    """Every name in ``resilience.__all__`` but ``__version__`` has a ``::: resilience.NAME`` directive."""
    documented = set(_documented())
    public = sorted(set(resilience.__all__) - {"__version__"})
    missing = [name for name in public if f"resilience.{name}" not in documented]
    assert not missing, f"add `::: resilience.NAME` to docs/reference.md for: {missing}"


def test_reference_documents_only_the_public_api() -> None:
    """Each ``::: resilience...`` in reference.md names a public name, once."""
    names = _documented()
    twice = sorted({name for name in names if names.count(name) > 1})
    assert not twice, f"docs/reference.md documents these twice: {twice}"
    strays = [name for name in names if not _is_public(name)]
    assert not strays, f"docs/reference.md documents names that are not in __all__: {strays}"


def test_version_is_the_installed_distributions() -> None:
    """``resilience.__version__`` is the version of the installed ``llm-resilience`` distribution."""
    installed = importlib.metadata.version(DISTRIBUTION)
    assert resilience.__version__ == installed, (
        f"resilience.__version__ is {resilience.__version__!r}, installed {DISTRIBUTION} is {installed!r}"
        " (reinstall with pip install -e . after changing it)"
    )
