"""Every module of the installed ``tradestate`` package imports, every package directory is
installed, and no two modules import each other (directly or round a loop) at module level.

The package list is read from pyproject.toml's ``[tool.setuptools]``: a directory with Python
modules under an installed package that is not in ``packages`` would be missing from a wheel.
The import graph is built with ``ast`` from module-level ``import tradestate.x`` / ``from .x
import y`` statements (those in class bodies, ``if`` and ``try`` blocks included); imports inside
functions and under ``if TYPE_CHECKING:`` are left out, as they run later or never.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TOP = "tradestate"


def _setuptools() -> dict:
    with open(ROOT / "pyproject.toml", "rb") as f:
        return tomllib.load(f)["tool"]["setuptools"]


def _package_dirs() -> dict[str, Path]:
    """Installed package name -> its source directory, as pyproject.toml maps them."""
    config = _setuptools()
    mapping = config.get("package-dir", {})
    out: dict[str, Path] = {}
    for name in config["packages"]:
        if name in mapping:
            out[name] = ROOT / mapping[name]
        else:  # setuptools' rule: the nearest mapped ancestor, then the rest of the dotted name
            parts = name.split(".")
            for cut in range(len(parts) - 1, 0, -1):
                parent = ".".join(parts[:cut])
                if parent in mapping:
                    out[name] = ROOT / mapping[parent] / Path(*parts[cut:])
                    break
            else:
                out[name] = ROOT / Path(*parts)
    return out


PACKAGES = _package_dirs()


def _modules() -> dict[str, Path]:
    """Module name -> source file, for every ``.py`` file of every listed package."""
    out: dict[str, Path] = {}
    for package, directory in PACKAGES.items():
        for path in sorted(directory.glob("*.py")):
            out[package if path.stem == "__init__" else f"{package}.{path.stem}"] = path
    return out


MODULES = _modules()


def unlisted_packages(packages: dict[str, Path]) -> list[str]:
    """Directories holding Python files under a listed package that are not listed themselves."""
    missing = []
    for package, directory in packages.items():
        for child in sorted(p for p in directory.iterdir() if p.is_dir() and p.name != "__pycache__"):
            if any(child.rglob("*.py")) and f"{package}.{child.name}" not in packages:
                missing.append(f"{package}.{child.name} ({child})")
    return missing


def test_pyproject_lists_every_package_directory():
    assert TOP in PACKAGES
    for package, directory in PACKAGES.items():
        assert (directory / "__init__.py").is_file(), f"{package}: no {directory / '__init__.py'}"
    missing = unlisted_packages(PACKAGES)
    assert not missing, f"Python packages not in pyproject.toml [tool.setuptools] packages: {missing}"


def test_an_unlisted_package_directory_is_found(tmp_path: Path):
    (tmp_path / "pkg" / "sub" / "deeper").mkdir(parents=True)
    (tmp_path / "pkg" / "__init__.py").write_text("")
    (tmp_path / "pkg" / "sub" / "deeper" / "m.py").write_text("")
    (tmp_path / "pkg" / "data").mkdir()
    (tmp_path / "pkg" / "data" / "x.json").write_text("{}")
    assert unlisted_packages({"pkg": tmp_path / "pkg"}) == [f"pkg.sub ({tmp_path / 'pkg' / 'sub'})"]
    assert unlisted_packages({"pkg": tmp_path / "pkg", "pkg.sub": tmp_path / "pkg" / "sub"}) == [
        f"pkg.sub.deeper ({tmp_path / 'pkg' / 'sub' / 'deeper'})"]


@pytest.mark.parametrize("name", sorted(MODULES))
def test_module_imports_from_its_listed_directory(name: str):
    if name.endswith(".__main__"):  # importing it runs the program: only find it
        spec = importlib.util.find_spec(name)
        assert spec is not None and spec.origin is not None, f"{name} is not importable"
        origin = spec.origin
    else:
        origin = importlib.import_module(name).__file__
    assert Path(origin).resolve() == MODULES[name].resolve(), (
        f"{name} is imported from {origin}, not {MODULES[name]}: is this checkout the installed one?")


# ------------------------------------------------------------------------------ import graph


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _module_level_imports(tree: ast.Module) -> list[ast.Import | ast.ImportFrom]:
    """Import statements that run when the module is imported."""
    found: list[ast.Import | ast.ImportFrom] = []

    def visit(body: list[ast.stmt]) -> None:
        for node in body:
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                found.append(node)
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            elif isinstance(node, ast.If) and _is_type_checking(node.test):
                visit(node.orelse)
            else:
                for field in ("body", "orelse", "finalbody", "handlers", "cases"):
                    children = getattr(node, field, None)
                    if isinstance(children, list):
                        for child in children:
                            if isinstance(child, (ast.ExceptHandler, ast.match_case)):
                                visit(child.body)
                        visit([c for c in children if isinstance(c, ast.stmt)])

    visit(tree.body)
    return found


def _targets(name: str, node: ast.Import | ast.ImportFrom) -> set[str]:
    """The ``tradestate`` modules an import statement of module ``name`` loads by name."""
    def known(dotted: str) -> str | None:  # the module itself, or its nearest known ancestor
        parts = dotted.split(".")
        while parts:
            candidate = ".".join(parts)
            if candidate in MODULES:
                return candidate
            parts.pop()
        return None

    out: set[str] = set()
    if isinstance(node, ast.Import):
        for alias in node.names:
            if alias.name == TOP or alias.name.startswith(TOP + "."):
                if (hit := known(alias.name)) is not None:
                    out.add(hit)
        return out
    if node.level:
        package = name if MODULES[name].name == "__init__.py" else name.rpartition(".")[0]
        parts = package.split(".")
        base_parts = parts[: len(parts) - (node.level - 1)]
        base = ".".join(base_parts + ([node.module] if node.module else []))
    else:
        base = node.module or ""
    if not (base == TOP or base.startswith(TOP + ".")):
        return out
    for alias in node.names:
        submodule = f"{base}.{alias.name}"
        if submodule in MODULES:
            out.add(submodule)
        elif (hit := known(base)) is not None:
            out.add(hit)
    return out


def import_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for name, path in MODULES.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        edges: set[str] = set()
        for node in _module_level_imports(tree):
            edges |= _targets(name, node)
        edges.discard(name)
        graph[name] = edges
    return graph


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle (``a -> b -> ... -> a``) per strongly connected group of modules (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def strongconnect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                strongconnect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            strongconnect(v)

    cycles = []
    for group in sorted(groups):
        members = set(group)
        start = group[0]
        # shortest way back to start inside the group (breadth first)
        previous: dict[str, str] = {}
        frontier = [start]
        found = None
        while frontier and found is None:
            next_frontier = []
            for v in frontier:
                for w in sorted(graph[v] & members):
                    if w == start:
                        found = v
                        break
                    if w not in previous:
                        previous[w] = v
                        next_frontier.append(w)
                if found is not None:
                    break
            frontier = next_frontier
        path = [start]
        v = found
        while v is not None and v != start:
            path.insert(1, v)
            v = previous.get(v)
        cycles.append(path + [start] + ([f"(group of {len(group)}: {', '.join(group)})"] if len(group) > len(path) else []))
    return cycles


def test_the_graph_sees_module_level_imports_only():
    tree = ast.parse(
        "from . import a\n"
        "import tradestate.b\n"
        "if TYPE_CHECKING:\n    from .c import X\n"
        "try:\n    from .d import Y\nexcept ImportError:\n    pass\n"
        "def f():\n    from .e import Z\n"
    )
    found = _module_level_imports(tree)
    assert [getattr(n, "module", None) or n.names[0].name for n in found] == ["a", "tradestate.b", "d"]


def test_cycle_finder_reports_a_loop():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert import_cycles(graph) == [["a", "b", "c", "a"]]
    assert import_cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles():
    cycles = import_cycles(import_graph())
    assert not cycles, "module-level import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)
