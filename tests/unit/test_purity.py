"""The sans-I/O modules stay sans-I/O: they import neither asyncio nor socket.

The idea of uvloop's tests/test_sourcecode.py: the protocol logic in these modules is
tested without sockets only as long as it never grows a dependency on them. The check
reads the modules' own import statements (third-party libraries such as
prometheus-client may use sockets internally; that is theirs), in every form (`import
fastmirror.x`, `from fastmirror.x import y`, `from fastmirror import x`, relative ones),
and follows imports within fastmirror, which must stay inside the pure set. A second
check walks every module of the package for import cycles, TYPE_CHECKING ones included.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import fastmirror

PURE = {"fastmirror." + m for m in (
    "config", "istio", "paths", "hotpath", "_core_py", "proxy.codec", "proxy.router", "proxy.mirror",
    "proxy.rules",
    "ops.metrics", "ops.scrape", "diffing.diff", "diffing.diffstore", "diffing.endpoints",
    "diffing.report")}
FORBIDDEN = {"asyncio", "socket", "uvloop", "selectors", "ssl"}
SRC = Path(fastmirror.__file__).parent


def all_modules() -> set[str]:
    found = set()
    for path in SRC.rglob("*.py"):
        parts = path.relative_to(SRC.parent).with_suffix("").parts
        found.add(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return found | {"fastmirror._core"}


MODULES = all_modules()


def source_of(module: str) -> Path:
    path = SRC.parent / Path(*module.split("."))
    return path / "__init__.py" if path.is_dir() else path.with_suffix(".py")


def imported_modules(module: str) -> set[str]:
    """The fastmirror modules (and top-level others) that module's source imports."""
    tree = ast.parse(source_of(module).read_text())
    package = module if source_of(module).name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([node.module] if node.module else []))
            for alias in node.names:
                # `from fastmirror.proxy import codec` imports a module, not a name
                child = f"{base}.{alias.name}"
                found.add(child if child in MODULES else base)
    return found


def test_every_pure_module_exists():
    assert PURE <= MODULES


@pytest.mark.parametrize("module", sorted(PURE))
def test_pure_module_imports_no_io(module):
    for imported in imported_modules(module):
        top = imported.split(".")[0]
        assert top not in FORBIDDEN, f"{module} imports {imported}"
        if top == "fastmirror" and imported not in ("fastmirror", module):
            assert imported in PURE | {"fastmirror._core", "fastmirror.proxy",
                                       "fastmirror.diffing", "fastmirror.ops"}, \
                f"{module} imports non-pure {imported}"


def test_purity_check_sees_every_import_form():
    """The walker itself: a module-level `from fastmirror.x import module` counts."""
    assert "fastmirror.diffing.diff" in imported_modules("fastmirror.config")
    assert "fastmirror.hotpath" in imported_modules("fastmirror.proxy.codec")


def test_no_import_cycles():
    graph = {m: {i for i in imported_modules(m) if i in MODULES and i != m}
             for m in MODULES if m != "fastmirror._core"}
    # a package's __init__ importing nothing of its own is the rule here
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        path.append(m)
        for n in sorted(graph.get(m, ())):
            if n.startswith(m + ".") or m.startswith(n + "."):
                continue   # a module and its own package
            if state.get(n) == 1:
                raise AssertionError("import cycle: " + " -> ".join(path[path.index(n):] + [n]))
            if n not in state:
                visit(n)
        path.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)


def test_core_pyx_imports_no_io():
    source = (SRC / "_core.pyx").read_text()
    for name in FORBIDDEN:
        assert f"import {name}" not in source
