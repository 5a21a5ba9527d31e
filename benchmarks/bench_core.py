"""Micro-benchmarks of the hot-path core: compiled `_core` against the pure twin.

    python -m pytest benchmarks/bench_core.py --benchmark-only -q
    python -m pytest benchmarks/bench_core.py --benchmark-only --benchmark-group-by=group

Each function runs on both implementations with per-request sized inputs: a 200-byte
request head, the sampling decision, the shadow Host rewrite, and a 64 KiB chunked body.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

import pytest

from fastmirror import _core_py

_core_c: ModuleType | None
try:
    from fastmirror import _core as _core_c
except ImportError:
    _core_c = None

IMPLS = [
    pytest.param(_core_c, id="cython",
                 marks=pytest.mark.skipif(_core_c is None, reason="fastmirror._core is not built")),
    pytest.param(_core_py, id="python"),
]

# A typical browser-ish request head: 200 bytes, six header lines.
HEAD = (b"GET /api/v1/items?page=2&sort=name HTTP/1.1\r\n"
        b"Host: api.example.com:8080\r\n"
        b"User-Agent: curl/8.5.0\r\n"
        b"Accept: application/json\r\n"
        b"Accept-Encoding: gzip\r\n"
        b"X-Request-Id: 3f2a9c1e7b\r\n"
        b"Cookie: session=abcdef01\r\n\r\n")
assert len(HEAD) == 200, len(HEAD)
BUF = HEAD + b"GET /next HTTP/1.1\r\n"          # a pipelined request follows
EXTRA = b"x-fastmirror-shadow: 1\r\nx-fastmirror-id: 5f1e0c2a00000001\r\n"
RESPONSE = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 1234\r\n"
            b"Connection: keep-alive\r\nDate: Mon, 01 Jan 2024 00:00:00 GMT\r\n\r\n")
# 64 KiB of data in 16 chunks of 4 KiB, with an extension and a trailer.
CHUNKED = b"".join(b"1000;n=%d\r\n" % k + bytes(4096) + b"\r\n" for k in range(16)) + (
    b"0\r\nX-Checksum: 1\r\n\r\n")
# The same 64 KiB body cut as a socket would deliver it: 16 KiB reads.
READS = [CHUNKED[k:k + 16384] for k in range(0, len(CHUNKED), 16384)]

pytestmark = pytest.mark.parametrize("core", IMPLS)


@pytest.mark.benchmark(group="find_head_end")
def test_find_head_end(benchmark: Any, core: ModuleType) -> None:
    assert benchmark(core.find_head_end, BUF, 0) == len(HEAD)


@pytest.mark.benchmark(group="check_head")
def test_check_head(benchmark: Any, core: ModuleType) -> None:
    assert benchmark(core.check_head, HEAD) == core.HEAD_OK


@pytest.mark.benchmark(group="sample")
def test_sample_random(benchmark: Any, core: ModuleType) -> None:
    sample, random_u64 = core.sample, core.random_u64

    def decide() -> bool:
        return bool(sample(100_000, random_u64()))

    benchmark(decide)


@pytest.mark.benchmark(group="key_hash")
def test_key_hash(benchmark: Any, core: ModuleType) -> None:
    benchmark(core.key_hash, b"session=abcdef01")


@pytest.mark.benchmark(group="percent_to_ppm")
def test_percent_to_ppm(benchmark: Any, core: ModuleType) -> None:
    assert benchmark(core.percent_to_ppm, 12.5) == 125_000


@pytest.mark.benchmark(group="shadow_head")
def test_shadow_head(benchmark: Any, core: ModuleType) -> None:
    out = benchmark(core.shadow_head, HEAD, b"-shadow", EXTRA)
    assert b"Host: api.example.com-shadow:8080\r\n" in out


@pytest.mark.benchmark(group="parse_response_head")
def test_parse_response_head(benchmark: Any, core: ModuleType) -> None:
    # nginx-like: Connection: keep-alive is the one hop-by-hop line to cut
    assert benchmark(core.parse_response_head, RESPONSE) == (200, 1, 1234, False, False, (69, 93))


@pytest.mark.benchmark(group="parse_response_head")
def test_parse_response_head_no_hop(benchmark: Any, core: ModuleType) -> None:
    head = RESPONSE.replace(b"Connection: keep-alive\r\n", b"")
    assert benchmark(core.parse_response_head, head) == (200, 1, 1234, False, False, ())


@pytest.mark.benchmark(group="splice_head")
def test_splice_head_cut_keep_alive(benchmark: Any, core: ModuleType) -> None:
    """The client's copy of the primary's head plus a 1234-byte body, one allocation."""
    buf = RESPONSE + bytes(1234)
    cut = core.parse_response_head(RESPONSE)[5]
    out = benchmark(core.splice_head, buf, 0, len(buf), 0, len(RESPONSE), cut, b"")
    assert len(out) == len(buf) - 24


@pytest.mark.benchmark(group="chunked_64k")
def test_chunked_scanner_64k(benchmark: Any, core: ModuleType) -> None:
    scanner_cls = core.ChunkedScanner

    def scan() -> int:
        scanner = scanner_cls()
        total = 0
        for data in READS:
            total += scanner.feed(data)
        return total

    assert benchmark(scan) == len(CHUNKED)


@pytest.mark.benchmark(group="chunked_small")
def test_chunked_scanner_small_chunks(benchmark: Any, core: ModuleType) -> None:
    # The worst case for a state machine: 1 KiB made of 64 chunks of 8 bytes.
    body = b"8\r\nabcdefgh\r\n" * 64 + b"0\r\n\r\n"
    assert benchmark(lambda: core.ChunkedScanner().feed(body)) == len(body)
