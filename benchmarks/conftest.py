"""Shared by the micro-benchmarks in this folder.

- Collects `bench_*.py` files, so that `python -m pytest benchmarks` finds them (pytest
  itself only looks for `test_*.py`); a file named on the command line is collected by
  pytest as usual.
- The `core` fixture runs a benchmark of the pure modules (codec, mirror, router) once
  with the compiled core and once with its pure-Python twin: for the "python" run, every
  name those modules imported from `fastmirror._core` is pointed at its `_core_py`
  counterpart for the duration of the test.
"""

from __future__ import annotations

import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from fastmirror import _core_py, hotpath  # noqa: F401  (loaded before swapping)
from fastmirror.proxy import codec, mirror, router  # noqa: F401

_core_c: ModuleType | None
try:
    from fastmirror import _core as _core_c
except ImportError:
    _core_c = None

HERE = Path(__file__).resolve().parent


def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> pytest.Module | None:
    if (file_path.suffix == ".py" and file_path.name.startswith("bench_")
            and file_path.parent == HERE and not parent.session.isinitpath(file_path)):
        return pytest.Module.from_parent(parent, path=file_path)
    return None


def _use_python_core(monkeypatch: pytest.MonkeyPatch) -> int:
    """Point every fastmirror module's reference to a compiled-core object at the twin's."""
    assert _core_c is not None
    twins: dict[int, tuple[Any, Any]] = {}
    for name, obj in vars(_core_c).items():
        if not name.startswith("__") and callable(obj) and hasattr(_core_py, name):
            twins[id(obj)] = (obj, getattr(_core_py, name))
    swapped = 0
    for modname, mod in list(sys.modules.items()):
        if not modname.startswith("fastmirror.") or modname in ("fastmirror._core", "fastmirror._core_py"):
            continue
        for attr, value in list(vars(mod).items()):
            pair = twins.get(id(value))
            if pair is not None and pair[0] is value:
                monkeypatch.setattr(mod, attr, pair[1])
                swapped += 1
    return swapped


@pytest.fixture(params=["cython", "python"])
def core(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """"cython": the compiled core, as installed. "python": the pure twin, swapped in."""
    if request.param == "cython":
        if hotpath.CORE_IMPL != "cython":
            pytest.skip("fastmirror._core is not built (or FASTMIRROR_NO_EXTENSIONS is set)")
        return "cython"
    if hotpath.CORE_IMPL == "cython":
        assert _use_python_core(monkeypatch) > 0, "nothing imported from fastmirror._core to swap"
        assert hotpath.find_head_end is _core_py.find_head_end
    return "python"
