"""Build ``resilience._speedups``: the happy path compiled with mypyc (``python -m resilience speedups``).

The pure :mod:`resilience._resolve` and :mod:`resilience._happy` are joined
into one module (one extension, no shared helper library beside it),
stamped with :func:`resilience._hot.source_digest`, and compiled in place,
next to the package's own sources. Needs the ``speedups`` extra (mypy and
setuptools) and a C compiler with the Python headers. The transport picks the
result up at its next import (:func:`resilience._hot.load`).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from resilience._hot import COMPILED, SOURCES, source_digest

__all__ = ["BuildError", "build", "built", "joined_source", "remove"]

PACKAGE = Path(__file__).parent
_MODULE = COMPILED.rpartition(".")[2]
_FUTURE = "from __future__ import annotations\n"
_OWN_IMPORT = "from resilience._resolve import BYTE_STREAM, Resolver, model_from_body\n"
"""The one line of ``_happy.py`` that the joined module answers itself."""


class BuildError(RuntimeError):
    """The compiled happy path could not be built; the pure one keeps running."""


def joined_source(package: Path = PACKAGE) -> str:
    """``_resolve.py`` then ``_happy.py`` as one module, stamped with the digest of both."""
    parts = []
    for name in SOURCES:
        text = (package / name).read_text()
        if text.count(_FUTURE) != 1:
            raise BuildError(f"{name} must have one line {_FUTURE.strip()!r}")
        text = text.replace(_FUTURE, "")
        if name == "_happy.py":
            if text.count(_OWN_IMPORT) != 1:
                raise BuildError(f"_happy.py must import {_OWN_IMPORT.strip()!r} in one line")
            text = text.replace(_OWN_IMPORT, "")
        parts.append(f"# --- {name} ---\n{text}")
    header = f'"""Generated from {" and ".join(SOURCES)} by resilience._speedups_build: do not edit."""\n'
    stamp = f"\nSOURCE_DIGEST = {source_digest(package)!r}\n"
    return header + _FUTURE + "\n".join(parts) + stamp


def built(package: Path = PACKAGE) -> list[Path]:
    """The compiled modules now in ``package`` (any Python version)."""
    return sorted(
        path for stem in (_MODULE, f"{_MODULE}__mypyc") for suffix in ("so", "pyd")
        for path in package.glob(f"{stem}.*.{suffix}")
    )


def remove(package: Path = PACKAGE) -> list[Path]:
    """Delete the compiled modules from ``package``; the paths removed."""
    gone = built(package)
    for path in gone:
        path.unlink()
    return gone


def build(package: Path = PACKAGE, *, quiet: bool = True) -> Path:
    """Compile the joined happy path and put it into ``package``; the path of the extension module.

    The compile runs on a scratch copy of the package (so an installed one in
    ``site-packages`` builds as well as a checkout); only the extension
    modules are copied back.

    Raises:
        BuildError: mypyc or setuptools missing, or the compile failed.
    """
    try:
        from mypyc.build import mypycify
        from setuptools import Distribution
    except ImportError as exc:
        raise BuildError(f"building needs mypy and setuptools ({exc}): pip install 'resilience[speedups]'") \
            from exc
    with tempfile.TemporaryDirectory(prefix="resilience-speedups-") as scratch:
        root = Path(scratch)
        copy = root / package.name
        shutil.copytree(package, copy, ignore=shutil.ignore_patterns("__pycache__", "*.so", "*.pyd"))
        (copy / f"{_MODULE}.py").write_text(joined_source(package))
        chatter: list[str] = []
        try:
            with _chdir(root), _quiet(quiet) as chatter:
                extensions = mypycify(  # optional extras (redis, uvicorn) may be missing: not compiled
                    ["--ignore-missing-imports", f"{package.name}/{_MODULE}.py"],
                    opt_level="3", target_dir=str(root / "build"),
                )
                distribution = Distribution({"name": "resilience-speedups", "ext_modules": extensions})
                command: object = distribution.get_command_obj("build_ext")
                command.inplace = True  # type: ignore[attr-defined]
                command.build_temp = str(root / "build")  # type: ignore[attr-defined]
                distribution.run_command("build_ext")
        except (Exception, SystemExit) as exc:  # distutils exits on a compiler error
            said = "".join(f"\n  {line}" for line in chatter)
            raise BuildError(f"compiling {COMPILED} failed: {exc!r}{said}") from exc
        made = built(copy)
        if not any(path.name == _MODULE + _abi_tag() for path in made):
            raise BuildError(f"the build made no {COMPILED} for this Python")
        remove(package)
        for path in made:
            shutil.copy2(path, package / path.name)
    return package / (_MODULE + _abi_tag())


def _abi_tag() -> str:
    import sysconfig

    suffix = sysconfig.get_config_var("EXT_SUFFIX") or ".so"
    return str(suffix)


@contextlib.contextmanager
def _chdir(path: Path) -> Iterator[None]:
    before = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(before)


@contextlib.contextmanager
def _quiet(quiet: bool) -> Iterator[list[str]]:
    """Keep the compiler's chatter (file descriptors 1 and 2) out of sight when ``quiet``.

    Yields a list that holds the chatter's last lines once the block has ended, for the error.
    """
    tail: list[str] = []
    if not quiet:
        yield tail
        return
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with tempfile.TemporaryFile("w+") as chatter:
        os.dup2(chatter.fileno(), 1)
        os.dup2(chatter.fileno(), 2)
        try:
            yield tail
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])
            chatter.seek(0)
            tail.extend(chatter.read().splitlines()[-20:])
