"""The hot-path core the proxy runs: the compiled `_core`, or its pure twin `_core_py`.

The one place that chooses. `FASTMIRROR_NO_EXTENSIONS` set to anything but "" or "0"
forces the twin; otherwise the compiled module is used, and the twin only when that
module is missing (a source checkout never built), or off CPython. A compiled module
that exists but fails to load is an error, not a silent fallback. `CORE_IMPL` names
the choice ("cython" or "python") for `fastmirror --version` and the metrics.
"""

from __future__ import annotations

import importlib
import os
import platform
from types import ModuleType
from typing import TYPE_CHECKING

__all__ = (
    "CORE_IMPL",
    "HEAD_ERR_BARE_CR",
    "HEAD_ERR_BARE_LF",
    "HEAD_ERR_CTL",
    "HEAD_ERR_MESSAGES",
    "HEAD_ERR_NO_COLON",
    "HEAD_ERR_OBS_FOLD",
    "HEAD_ERR_SPACE_BEFORE_COLON",
    "HEAD_OK",
    "PPM_SCALE",
    "REQ_CONN_CLOSE",
    "REQ_CONN_HOP",
    "REQ_CONN_KEEP_ALIVE",
    "FORBIDDEN_TRAILERS",
    "MAX_CHUNK_SIZE",
    "ChunkedError",
    "ChunkedScanner",
    "MAX_RESPONSE_HEAD",
    "ResponseError",
    "ResponseFramer",
    "check_head",
    "find_head_end",
    "key_hash",
    "match_route",
    "parse_request_fast",
    "parse_response_head",
    "percent_to_ppm",
    "random_u64",
    "sample",
    "seed_random",
    "shadow_head",
    "splice_head",
)

NO_EXTENSIONS = os.environ.get("FASTMIRROR_NO_EXTENSIONS", "") not in ("", "0")



def _load() -> tuple[ModuleType, str]:
    if NO_EXTENSIONS or platform.python_implementation() != "CPython":
        return importlib.import_module("fastmirror._core_py"), "python"
    try:
        return importlib.import_module("fastmirror._core"), "cython"
    except ModuleNotFoundError as exc:
        if exc.name != "fastmirror._core":
            raise   # something the compiled module imports is missing: not a fallback case
        return importlib.import_module("fastmirror._core_py"), "python"


if TYPE_CHECKING:
    from . import _core as _impl   # _core.pyi types both implementations

    CORE_IMPL: str
else:
    _impl, CORE_IMPL = _load()

PPM_SCALE = _impl.PPM_SCALE
HEAD_OK = _impl.HEAD_OK
HEAD_ERR_BARE_LF = _impl.HEAD_ERR_BARE_LF
HEAD_ERR_BARE_CR = _impl.HEAD_ERR_BARE_CR
HEAD_ERR_CTL = _impl.HEAD_ERR_CTL
HEAD_ERR_OBS_FOLD = _impl.HEAD_ERR_OBS_FOLD
HEAD_ERR_SPACE_BEFORE_COLON = _impl.HEAD_ERR_SPACE_BEFORE_COLON
HEAD_ERR_NO_COLON = _impl.HEAD_ERR_NO_COLON
HEAD_ERR_MESSAGES = _impl.HEAD_ERR_MESSAGES
percent_to_ppm = _impl.percent_to_ppm
sample = _impl.sample
random_u64 = _impl.random_u64
seed_random = _impl.seed_random
key_hash = _impl.key_hash
match_route = _impl.match_route
find_head_end = _impl.find_head_end
check_head = _impl.check_head
shadow_head = _impl.shadow_head
ChunkedError = _impl.ChunkedError
MAX_CHUNK_SIZE = _impl.MAX_CHUNK_SIZE
FORBIDDEN_TRAILERS = _impl.FORBIDDEN_TRAILERS
ChunkedScanner = _impl.ChunkedScanner
MAX_RESPONSE_HEAD = _impl.MAX_RESPONSE_HEAD
ResponseError = _impl.ResponseError
ResponseFramer = _impl.ResponseFramer
parse_response_head = _impl.parse_response_head
splice_head = _impl.splice_head
parse_request_fast = _impl.parse_request_fast
REQ_CONN_CLOSE = _impl.REQ_CONN_CLOSE
REQ_CONN_KEEP_ALIVE = _impl.REQ_CONN_KEEP_ALIVE
REQ_CONN_HOP = _impl.REQ_CONN_HOP
