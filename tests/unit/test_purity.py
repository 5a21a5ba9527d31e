"""The sans-I/O modules stay sans-I/O: they import neither asyncio nor socket.

The idea of uvloop's tests/test_sourcecode.py: the protocol logic in these modules is
tested without sockets only as long as it never grows a dependency on them. The check
reads the modules' own import statements (third-party libraries such as
prometheus-client may use sockets internally; that is theirs), and follows imports
within fastmirror, which must stay inside the pure set.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import fastmirror

PURE = {"codec", "router", "config", "hotpath", "_core_py", "metrics", "mirror", "diff", "diffstore",
        "endpoints", "report"}
FORBIDDEN = {"asyncio", "socket", "uvloop", "selectors", "ssl"}
SRC = Path(fastmirror.__file__).parent


def imported_modules(name: str) -> set[str]:
    tree = ast.parse((SRC / f"{name}.py").read_text())
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level and node.module:  # from .codec import X
                found.add("fastmirror." + node.module)
            elif node.level:  # from . import _core
                found.update("fastmirror." + alias.name for alias in node.names)
            elif node.module:
                found.add(node.module)
    return found


@pytest.mark.parametrize("module", sorted(PURE))
def test_pure_module_imports_no_io(module):
    for imported in imported_modules(module):
        top = imported.split(".")[0]
        assert top not in FORBIDDEN, f"fastmirror.{module} imports {imported}"
        if top == "fastmirror" and imported != "fastmirror":
            inner = imported.split(".")[1]
            assert inner in PURE | {"_core"}, f"fastmirror.{module} imports non-pure {imported}"


def test_core_pyx_imports_no_io():
    source = (SRC / "_core.pyx").read_text()
    for name in FORBIDDEN:
        assert f"import {name}" not in source
