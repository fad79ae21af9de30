"""What ``pip install .`` gives a user: the installed package needs none of the test extra.

The test extra (pytest, pytest-timeout, hypothesis, httpx) is not installed by a plain install, so
no module of the package may import it, at the top or inside a function (the demo's HTTP act did).
CI also runs the demo from a plain, non-editable install in a fresh venv (``.ci/run``)."""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _package_dirs() -> list[Path]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    return sorted({ROOT / d for d in config["tool"]["setuptools"]["package-dir"].values()})


def _test_extra_modules() -> set[str]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    names = set()
    for requirement in config["project"]["optional-dependencies"]["test"]:
        name = requirement.split(";")[0].split("[")[0]
        for sep in "<>=!~ ":
            name = name.split(sep)[0]
        names.add(name.strip().lower().replace("-", "_"))
    return names


def imports_of(source: str) -> set[str]:
    """Top-level module names imported anywhere in ``source`` (absolute imports only)."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found


def test_the_installed_package_imports_nothing_from_the_test_extra():
    extra = _test_extra_modules()
    assert {"pytest", "hypothesis", "httpx"} <= extra  # the names really are read from pyproject
    offenders = {}
    for folder in _package_dirs():
        for path in sorted(folder.glob("*.py")):  # each package dir is one package, not its subfolders
            bad = imports_of(path.read_text(encoding="utf-8")) & extra
            if bad:
                offenders[str(path.relative_to(ROOT))] = sorted(bad)
    assert offenders == {}


def test_the_scan_finds_an_import_inside_a_function():
    assert "httpx" in imports_of("def f():\n    import httpx\n") & _test_extra_modules()
    assert "httpx" in imports_of("def f():\n    from httpx import Client\n")
