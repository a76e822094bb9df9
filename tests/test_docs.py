"""The documentation: every Python code block runs, and the site builds with zero warnings."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


def _blocks() -> list[Any]:
    params = []
    for page in sorted(DOCS.rglob("*.md")):
        for number, code in enumerate(BLOCK.findall(page.read_text(encoding="utf-8"))):
            name = f"{page.relative_to(DOCS)}#{number}"
            params.append(pytest.param(code, id=name))
    return params


@pytest.mark.parametrize("code", _blocks())
def test_docs_code_block_runs(code: str) -> None:
    """Each ```python block in docs/ runs as written, in a fresh process (own Prometheus registry)."""
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
