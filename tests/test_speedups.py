"""The compiled happy path (``python -m resilience speedups``): used only when built from these sources."""

from __future__ import annotations

import ast
import logging
import shutil
import sys
import types
from pathlib import Path

import pytest
from system_tools import in_ci

from resilience import _happy, _hot, _resolve, _speedups_build, transport
from resilience.__main__ import main

PACKAGE = Path(_hot.__file__).parent


def fake_build(digest: str) -> types.ModuleType:
    """A stand-in for the compiled module, stamped with ``digest``."""
    module = types.ModuleType(_hot.COMPILED)
    module.SOURCE_DIGEST = digest  # type: ignore[attr-defined]
    module.admit_request = lambda resolve, request: None  # type: ignore[attr-defined]
    module.recorded_plain = lambda admission, response: False  # type: ignore[attr-defined]
    module.Resolver = type("Resolver", (), {})  # type: ignore[attr-defined]
    return module


@pytest.fixture
def package(tmp_path: Path) -> Path:
    """A copy of the package's sources to edit."""
    copy = tmp_path / "resilience"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__", "*.so"))
    return copy


def test_the_transport_runs_the_compiled_happy_path_once_built() -> None:
    """``make test`` builds it: the transport imported it, and it is the current build."""
    if not transport.HOT_PATH.compiled:
        message = "resilience._speedups is not built: python -m resilience speedups"
        if in_ci():
            pytest.fail(message + " (make test builds it)")
        pytest.skip(message)
    compiled = sys.modules[_hot.COMPILED]
    assert _hot.source_digest() == compiled.SOURCE_DIGEST
    assert transport.admit_request is compiled.admit_request is not _happy.admit_request
    assert type(compiled.admit_request).__name__ == "builtin_function_or_method"  # native code


def test_a_current_build_is_used(monkeypatch: pytest.MonkeyPatch) -> None:
    """A module stamped with the digest of the sources on disk is what load() returns."""
    module = fake_build(_hot.source_digest())
    monkeypatch.setitem(sys.modules, _hot.COMPILED, module)
    monkeypatch.delenv("RESILIENCE_PURE", raising=False)
    path = _hot.load()
    assert path.compiled
    assert (path.admit_request, path.recorded_plain, path.Resolver) == (
        module.admit_request, module.recorded_plain, module.Resolver
    )


def test_a_stale_build_runs_pure_and_says_so(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Sources edited since the build: the pure happy path runs, with a warning naming the fix."""
    monkeypatch.setitem(sys.modules, _hot.COMPILED, fake_build("0" * 64))
    monkeypatch.delenv("RESILIENCE_PURE", raising=False)
    with caplog.at_level(logging.WARNING, logger="resilience"):
        path = _hot.load()
    assert path == _hot.pure() and not path.compiled
    assert "stale" in caplog.text and "python -m resilience speedups" in caplog.text


def test_no_build_runs_pure(monkeypatch: pytest.MonkeyPatch) -> None:
    """Not built (an ImportError): the pure happy path, silently."""
    monkeypatch.setitem(sys.modules, _hot.COMPILED, None)  # import raises ImportError
    path = _hot.load()
    assert path == _hot.pure()
    assert path.admit_request is _happy.admit_request and path.Resolver is _resolve.Resolver


def test_resilience_pure_refuses_a_current_build(monkeypatch: pytest.MonkeyPatch) -> None:
    """RESILIENCE_PURE=1 runs the pure happy path whatever is built."""
    monkeypatch.setitem(sys.modules, _hot.COMPILED, fake_build(_hot.source_digest()))
    monkeypatch.setenv("RESILIENCE_PURE", "1")
    assert _hot.load() == _hot.pure()


def test_the_digest_follows_every_source(package: Path) -> None:
    """Editing either source changes the stamp; editing another module does not."""
    before = _hot.source_digest(package)
    assert before == _hot.source_digest()
    (package / "_registry.py").write_text((package / "_registry.py").read_text() + "\n# edited\n")
    assert _hot.source_digest(package) == before
    for name in _hot.SOURCES:
        source = package / name
        source.write_text(source.read_text() + "\n# edited\n")
        assert _hot.source_digest(package) != before
        before = _hot.source_digest(package)


def test_the_joined_source_is_one_stamped_module_with_both_sources() -> None:
    """One module: one future import, both modules' definitions, the stamp of the sources."""
    text = _speedups_build.joined_source()
    tree = ast.parse(text)
    assert text.count("from __future__ import annotations") == 1
    defined = {node.name for node in tree.body if isinstance(node, ast.FunctionDef | ast.ClassDef)}
    assert {"Resolver", "model_from_body", "admit_request", "recorded_plain"} <= defined
    stamps = [node for node in tree.body if isinstance(node, ast.Assign)
              and any(isinstance(t, ast.Name) and t.id == "SOURCE_DIGEST" for t in node.targets)]
    assert len(stamps) == 1 and ast.literal_eval(stamps[0].value) == _hot.source_digest()
    assert "from resilience._resolve import" not in text  # the joined module answers it itself


def test_joining_refuses_sources_it_does_not_recognise(package: Path) -> None:
    """A refactor that changes the import the join removes fails the build loudly, not wrongly."""
    happy = package / "_happy.py"
    happy.write_text(happy.read_text().replace(
        "from resilience._resolve import BYTE_STREAM, Resolver, model_from_body\n",
        "from resilience._resolve import BYTE_STREAM, Resolver\n"
        "from resilience._resolve import model_from_body\n",
    ))
    with pytest.raises(_speedups_build.BuildError, match=r"_happy\.py must import"):
        _speedups_build.joined_source(package)


def test_remove_deletes_only_the_compiled_modules(package: Path) -> None:
    """``--remove`` takes the extension and its helper library, nothing else."""
    names = ["_speedups.cpython-311-x86_64-linux-gnu.so", "_speedups__mypyc.cpython-311-x86_64-linux-gnu.so"]
    for name in names:
        (package / name).write_bytes(b"")
    assert [path.name for path in _speedups_build.built(package)] == names
    assert [path.name for path in _speedups_build.remove(package)] == names
    assert _speedups_build.built(package) == [] and (package / "_happy.py").exists()


@pytest.mark.parametrize("compiled", [True, False])
def test_check_says_which_happy_path_runs(
    compiled: bool, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """``python -m resilience speedups --check``: prints it; exit 1 when pure."""
    chosen = _hot.pure()._replace(compiled=compiled)
    monkeypatch.setattr(_hot, "load", lambda: chosen)
    assert main(["speedups", "--check"]) == (0 if compiled else 1)
    assert capsys.readouterr().out.strip() == ("compiled" if compiled else "pure")


def test_a_failed_build_is_an_error_not_a_crash(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """No compiler or no mypyc: exit 1 with the reason; the pure happy path keeps running."""
    def fail() -> Path:
        raise _speedups_build.BuildError("building needs mypy and setuptools")

    monkeypatch.setattr(_speedups_build, "build", fail)
    assert main(["speedups"]) == 1
    assert "building needs mypy and setuptools" in capsys.readouterr().err
