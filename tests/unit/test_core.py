"""The hot-path core: the compiled `_core` against its pure twin `_core_py`.

Every example runs on both implementations (the `core` fixture); hypothesis checks
that they agree on arbitrary and near-valid bytes (same result or same exception);
framing is fed whole, one byte at a time and with trailing bytes (h11's `tr()` idea);
and `test_compiled_core_loaded` fails when the compiled module should be there but
is not.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from types import ModuleType
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fastmirror import _core_py

_core_c: ModuleType | None
try:
    from fastmirror import _core as _core_c
except ImportError:   # not built: test_compiled_core_loaded says whether that is fine
    _core_c = None

NO_EXTENSIONS = os.environ.get("FASTMIRROR_NO_EXTENSIONS", "") not in ("", "0")
needs_c = pytest.mark.skipif(_core_c is None, reason="fastmirror._core is not built")

IMPLS = [pytest.param(_core_c, id="cython", marks=needs_c), pytest.param(_core_py, id="python")]
PAIR: tuple[Any, Any] = (_core_c, _core_py)   # for parity tests, skipped without _core
AVAILABLE = [m for m in PAIR if m is not None]
PUBLIC = sorted(_core_py.__all__)
HOTPATH_NAMES = ["CORE_IMPL", *PUBLIC]

FAST = settings(max_examples=300, deadline=None,
                suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(params=IMPLS)
def core(request: pytest.FixtureRequest) -> ModuleType:
    module: ModuleType = request.param
    return module


def outcome(fn: Callable[..., Any], *args: Any) -> tuple[str, Any]:
    """("ok", result) or ("raise", exception type): what parity compares."""
    try:
        return "ok", fn(*args)
    except Exception as exc:  # noqa: BLE001 - the type is the outcome
        return "raise", type(exc).__name__


def both(name: str, *args: Any) -> None:
    c, py = (outcome(getattr(m, name), *args) for m in PAIR)
    assert c == py, (name, args)


# -- loading ----------------------------------------------------------------------------

def test_compiled_core_loaded() -> None:
    from fastmirror import hotpath

    if NO_EXTENSIONS:
        assert hotpath.CORE_IMPL == "python"
        pytest.skip("FASTMIRROR_NO_EXTENSIONS is set: the pure core is expected")
    assert hotpath.CORE_IMPL == "cython", (
        "fastmirror._core is not loaded; build it: pip install -e . (or "
        "python setup.py build_ext --inplace)")
    assert _core_c is not None and hotpath.check_head is _core_c.check_head


@pytest.mark.parametrize(("value", "expected"), [
    ("1", "python"), ("yes", "python"), ("0", None), ("", None)])
def test_hotpath_honours_no_extensions(value: str, expected: str | None) -> None:
    env = dict(os.environ, FASTMIRROR_NO_EXTENSIONS=value)
    out = subprocess.run(
        [sys.executable, "-c", "import fastmirror.hotpath as h; print(h.CORE_IMPL)"],
        env=env, capture_output=True, text=True, timeout=60, check=True).stdout.strip()
    assert out == (expected or ("python" if _core_c is None else "cython"))


def test_hotpath_exports_every_name() -> None:
    from fastmirror import hotpath

    assert sorted(hotpath.__all__) == sorted(HOTPATH_NAMES)
    for name in PUBLIC:
        assert getattr(hotpath, name) is getattr(hotpath._impl, name)


@needs_c
def test_both_modules_have_the_same_names() -> None:
    compiled: Any = _core_c
    assert sorted(compiled.__all__) == PUBLIC
    for name in PUBLIC:
        assert hasattr(_core_c, name) and hasattr(_core_py, name), name
    for name in PUBLIC:
        if name.isupper():
            assert getattr(_core_c, name) == getattr(_core_py, name), name


def test_constants(core: ModuleType) -> None:
    assert core.PPM_SCALE == 1_000_000
    assert core.HEAD_OK == 0
    codes = [core.HEAD_ERR_BARE_LF, core.HEAD_ERR_BARE_CR, core.HEAD_ERR_CTL,
             core.HEAD_ERR_OBS_FOLD, core.HEAD_ERR_SPACE_BEFORE_COLON, core.HEAD_ERR_NO_COLON]
    assert codes == [1, 2, 3, 4, 5, 6]
    assert sorted(core.HEAD_ERR_MESSAGES) == codes
    assert core.HEAD_ERR_MESSAGES[core.HEAD_ERR_OBS_FOLD] == "obsolete line folding"
    assert issubclass(core.ChunkedError, ValueError)


# -- sampling ---------------------------------------------------------------------------

@pytest.mark.parametrize(("percent", "ppm"), [
    (0, 0), (100, 1_000_000), (12.5, 125_000), (0.0001, 1), (0.00004, 0), (33.33333, 333_333),
    (-1, 0), (150.0, 1_000_000), (float("inf"), 1_000_000), (float("-inf"), 0), (True, 10_000)])
def test_percent_to_ppm(core: ModuleType, percent: float, ppm: int) -> None:
    assert core.percent_to_ppm(percent) == ppm


def test_percent_to_ppm_rejects(core: ModuleType) -> None:
    with pytest.raises(ValueError):
        core.percent_to_ppm(float("nan"))
    with pytest.raises(TypeError):
        core.percent_to_ppm("5")


def test_sample_with_fixed_draws(core: ModuleType) -> None:
    draws = range(0, 1_000_000, 997)
    for ppm in (0, 1, 997, 998, 250_000, 999_999, 1_000_000):
        expected = -(-ppm // 997)   # how many of 0, 997, 1994, ... are below ppm
        for base in (0, 5 * 10**6, 2**64 - 10**6 * 10):
            assert sum(core.sample(ppm, base - base % 10**6 + d) for d in draws) == expected
    assert core.sample(1, 2**64 - 1) is False   # (2**64 - 1) % 10**6 == 551615
    assert core.sample(551_616, 2**64 - 1) is True


def test_sample_rejects_out_of_range_draws(core: ModuleType) -> None:
    for draw in (-1, 2**64):
        with pytest.raises(OverflowError):
            core.sample(10, draw)
    with pytest.raises(TypeError):
        core.sample(10, 1.5)


def test_random_u64(core: ModuleType) -> None:
    values = [core.random_u64() for _ in range(1000)]
    assert all(0 <= v < 2**64 for v in values)
    assert len(set(values)) == 1000
    assert max(values) > 2**63   # uses the top bit
    core.seed_random(1234)
    first = [core.random_u64() for _ in range(5)]
    core.seed_random(1234)
    assert [core.random_u64() for _ in range(5)] == first
    core.seed_random()


def test_random_u64_reseeds_in_forked_children(core: ModuleType) -> None:
    core.seed_random(99)
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        os.write(write_end, str(core.random_u64()).encode())
        os._exit(0)
    os.close(write_end)
    child = int(os.read(read_end, 64))
    os.close(read_end)
    os.waitpid(pid, 0)
    assert child != core.random_u64()
    core.seed_random()


@needs_c
def test_random_u64_same_sequence_in_both() -> None:
    assert _core_c is not None
    for m in PAIR:
        m.seed_random(2**70 + 5)   # masked to 64 bits
    assert [_core_c.random_u64() for _ in range(100)] == [
        _core_py.random_u64() for _ in range(100)]
    for m in PAIR:
        m.seed_random()


@pytest.mark.parametrize(("key", "expected"), [
    (b"", 0xCBF29CE484222325), (b"a", 0xAF63DC4C8601EC8C), (b"foobar", 0x85944171F73967E8)])
def test_key_hash_fnv1a_vectors(core: ModuleType, key: bytes, expected: int) -> None:
    assert core.key_hash(key) == expected
    assert core.key_hash(bytearray(key)) == expected
    assert core.key_hash(memoryview(key)) == expected


def test_key_hash_rejects_str(core: ModuleType) -> None:
    with pytest.raises(TypeError):
        core.key_hash("abc")


# -- request heads ----------------------------------------------------------------------

HEAD = b"GET /a?b=1 HTTP/1.1\r\nHost: example.com:8080\r\nAccept: */*\r\n\r\n"


@pytest.mark.parametrize(("buf", "start", "expected"), [
    (HEAD, 0, len(HEAD)), (HEAD + b"POST", 0, len(HEAD)), (HEAD, len(HEAD) - 4, len(HEAD)),
    (HEAD, len(HEAD) - 3, -1), (HEAD, -100, len(HEAD)), (HEAD, 10**6, -1),
    (b"", 0, -1), (b"\r\n\r", 0, -1), (b"\r\n\r\n", 0, 4), (b"\r\r\n\r\n\r\n\r\n", 0, 5),
    (b"a\r\n\r\nb\r\n\r\n", 3, 10), (b"\n\r\n\r\n", 0, 5)])
def test_find_head_end(core: ModuleType, buf: bytes, start: int, expected: int) -> None:
    assert core.find_head_end(buf, start) == expected
    assert core.find_head_end(bytearray(buf), start) == expected
    assert core.find_head_end(memoryview(buf), start) == expected


CHECKS = [
    (HEAD, 0),
    (b"GET / HTTP/1.1\r\n\r\n", 0),
    (b"GET / HTTP/1.1\r\nX-Empty:\r\nX-Tab:\tv\tw\t\r\nX-Obs: caf\xc3\xa9\r\n\r\n", 0),
    (b"GET / HTTP/1.1\nHost: a\r\n\r\n", 1),
    (b"GET / HTTP/1.1\r\nHost: a\n\r\n", 1),
    (b"GET / HTTP/1.1\r\nHost: a\rb\r\n\r\n", 2),
    (b"GET / HTTP/1.1\r\nHost: a\r\n\r", 2),
    (b"GET / HTTP/1.1\r\nHost: a\x00b\r\n\r\n", 3),
    (b"GET /\x7f HTTP/1.1\r\nHost: a\r\n\r\n", 3),
    (b"GET / HTTP/1.1\r\nX: a\x1bb\r\n\r\n", 3),
    (b"GET / HTTP/1.1\r\nHost: a\r\n b\r\n\r\n", 4),
    (b"GET / HTTP/1.1\r\n\tHost: a\r\n\r\n", 4),
    (b"GET / HTTP/1.1\r\nHost : a\r\n\r\n", 5),
    (b"GET / HTTP/1.1\r\nHost\t: a\r\n\r\n", 5),
    (b"GET / HTTP/1.1\r\nHo st: a\r\n\r\n", 5),
    (b"GET / HTTP/1.1\r\nHost a\r\n\r\n", 6),
    (b"GET / HTTP/1.1\r\n: a\r\n\r\n", 6),
    (b"GET / HTTP/1.1\r\nHost: a\r\nbroken\r\nX:\x00\r\n\r\n", 6),   # the first one wins
    (b"GET / HTTP/1.1\r\nHost: a\r\nX:\x00\r\nbroken\r\n\r\n", 3),
    (b"GET / HTTP/1.1\r\nX : \x00\r\n\r\n", 5),
    (b"GET / HTTP/1.1\r\nX \x00: v\r\n\r\n", 3),
]


@pytest.mark.parametrize(("head", "code"), CHECKS)
def test_check_head(core: ModuleType, head: bytes, code: int) -> None:
    assert core.check_head(head) == code
    assert core.check_head(bytearray(head)) == code


def test_check_head_messages(core: ModuleType) -> None:
    code = core.check_head(b"GET / HTTP/1.1\r\nHost : a\r\n\r\n")
    assert core.HEAD_ERR_MESSAGES[code] == "whitespace before colon in header"
    assert core.HEAD_ERR_MESSAGES[core.HEAD_ERR_BARE_LF] == "bare LF line ending"


SUFFIX, EXTRA = b"-shadow", b"x-fastmirror-shadow: 1\r\nx-fastmirror-id: 7\r\n"


@pytest.mark.parametrize(("host_line", "expected"), [
    (b"Host: example.com:8080", b"Host: example.com-shadow:8080"),
    (b"Host: example.com", b"Host: example.com-shadow"),
    (b"HOST:example.com", b"HOST:example.com-shadow"),
    (b"host: \t10.0.0.1:80 \t", b"host: \t10.0.0.1-shadow:80 \t"),
    (b"Host: [::1]:80", b"Host: [::1]:80"),
    (b"Host: [2001:db8::1]", b"Host: [2001:db8::1]"),
    (b"Host: ", b"Host: "),
    (b"Host: :80", b"Host: :80"),
    (b"Hostname: a", b"Hostname: a"),
    (b"X-Host: a", b"X-Host: a"),
])
def test_shadow_head_host(core: ModuleType, host_line: bytes, expected: bytes) -> None:
    head = b"GET / HTTP/1.1\r\nA: 1\r\n" + host_line + b"\r\nB: 2\r\n\r\n"
    want = b"GET / HTTP/1.1\r\nA: 1\r\n" + expected + b"\r\nB: 2\r\n" + EXTRA + b"\r\n"
    assert core.shadow_head(head, SUFFIX, EXTRA) == want


def test_shadow_head_first_host_only_and_no_host(core: ModuleType) -> None:
    head = b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"
    assert core.shadow_head(head, SUFFIX, b"") == b"GET / HTTP/1.1\r\nHost: a-shadow\r\nHost: b\r\n\r\n"
    bare = b"GET http://a/ HTTP/1.1\r\nX: y\r\n\r\n"
    assert core.shadow_head(bare, SUFFIX, EXTRA) == bare[:-2] + EXTRA + b"\r\n"
    assert core.shadow_head(b"Host: a\r\n\r\n", SUFFIX, b"") == b"Host: a\r\n\r\n"  # request line
    assert core.shadow_head(HEAD, b"", EXTRA) == HEAD[:-2] + EXTRA + b"\r\n"
    assert core.shadow_head(bytearray(HEAD), memoryview(SUFFIX), bytearray()) == (
        HEAD.replace(b"example.com", b"example.com-shadow"))
    assert type(core.shadow_head(HEAD, SUFFIX, EXTRA)) is bytes


def test_shadow_head_rejects_an_unterminated_head(core: ModuleType) -> None:
    for head in (b"", b"GET / HTTP/1.1\r\nHost: a\r\n", b"\r\n\r"):
        with pytest.raises(ValueError):
            core.shadow_head(head, SUFFIX, EXTRA)


# -- chunked bodies ---------------------------------------------------------------------

BODY = b"5\r\nhello\r\n1A;name=value;x\r\n" + b"z" * 26 + b"\r\n0\r\nExpires: never\r\nX: 1\r\n\r\n"


def feed_whole(scanner: Any, data: bytes) -> int:
    n: int = scanner.feed(data)
    return n


def feed_bytewise(scanner: Any, data: bytes) -> int:
    total = 0
    for k in range(len(data)):
        n = scanner.feed(data[k:k + 1])
        assert n in (0, 1)
        assert n == 1 or scanner.done
        total += n
    return total


def feed_with_start(scanner: Any, data: bytes) -> int:
    # the same buffer at growing offsets, as a protocol does with its receive buffer
    total, step = 0, 3
    for k in range(0, len(data), step):
        total += scanner.feed(data[:k + step], k)
    return total


@pytest.mark.parametrize("feed", [feed_whole, feed_bytewise, feed_with_start])
@pytest.mark.parametrize("trailing", [b"", b"GET / HTTP/1.1\r\n", b"\r\n0\r\n\r\n"])
def test_chunked_scanner_three_ways(core: ModuleType, feed: Any, trailing: bytes) -> None:
    scanner = core.ChunkedScanner()
    assert not scanner.done
    assert feed(scanner, BODY + trailing) == len(BODY)
    assert scanner.done
    assert scanner.feed(b"more") == 0
    assert scanner.feed(b"") == 0


def test_chunked_scanner_minimal_and_extensions(core: ModuleType) -> None:
    for body in (b"0\r\n\r\n", b"0;a\r\n\r\n", b"000\r\n\r\n", b"1\r\nx\r\n0\r\n\r\n",
                 b"1;a;b=c\r\nx\r\n0\r\nT: \tv\x80 w\t\r\n\r\n",
                 b'2;q="a;b \\" \\\\";r=1\r\nxy\r\n0;s=""\r\nX_Custom:\r\nT:v\r\n\r\n'):
        scanner = core.ChunkedScanner()
        assert scanner.feed(body + b"tail") == len(body), body
        assert scanner.done


def test_chunked_scanner_skips_big_chunks_by_arithmetic(core: ModuleType) -> None:
    scanner = core.ChunkedScanner()
    head = b"7fffffffffffffff\r\n"   # 2**63 - 1 bytes announced: the largest allowed
    assert scanner.feed(head) == len(head)
    block = bytes(1 << 20)
    for _ in range(64):   # 64 MiB: a byte loop in Python would time out here
        assert scanner.feed(block) == len(block)
    assert not scanner.done
    big = core.ChunkedScanner()
    assert big.feed(b"100000\r\n" + bytes(0x100000) + b"\r\n0\r\n\r\n") == 8 + 0x100000 + 7


def test_chunked_scanner_start_and_buffers(core: ModuleType) -> None:
    scanner = core.ChunkedScanner()
    buf = b"HEAD" + BODY
    assert scanner.feed(buf, 4) == len(BODY)
    for data in (bytearray(BODY), memoryview(BODY)):
        s = core.ChunkedScanner()
        assert s.feed(data) == len(BODY) and s.done
    for start in (-1, len(buf) + 1):
        with pytest.raises(ValueError):
            core.ChunkedScanner().feed(buf, start)
    assert core.ChunkedScanner().feed(buf, len(buf)) == 0


CHUNKED_ERRORS = [
    b"\r\n", b"x\r\n", b" 5\r\nhello\r\n", b"5 \r\nhello\r\n", b"-5\r\n", b"0x5\r\n",
    b"5\nhello\r\n", b"5\r\rhello", b"5;a\nhello", b"5;a\x00\r\n", b"5\r\nhelloX\r\n",
    b"5\r\nhello\r\r\n", b"5\r\nhello\n", b"1" * 17 + b"\r\n", b"0\r\nT: v\n\r\n",
    b"0\r\nT: v\r\r\n", b"0\r\n\n", b"0\r\n\rX", b"0\r\nT: v\r\n\n",
    # issue 7: sizes past 2**63 - 1 (a 64-bit wrap turns 2**64 + 20 into 20)
    b"8000000000000000\r\n", b"ffffffffffffffff\r\n", b"10000000000000014\r\n",
    # issue 7: chunk extensions by the grammar only
    b"2;\r\nxy\r\n", b"2;;a\r\nxy\r\n", b"2;=x\r\nxy\r\n", b"2;a=\r\nxy\r\n",
    b'2;a="x\r\nxy\r\n', b'2;a="x\\\r\nxy\r\n', b"2 ;a\r\nxy\r\n", b"2; a\r\nxy\r\n",
    b"2;a =b\r\nxy\r\n", b"2;a= b\r\nxy\r\n", b'2;a="x"y\r\nxy\r\n', b"2;a,b\r\nxy\r\n",
    b"2;a=b c\r\nxy\r\n", b"2;a\x7f\r\nxy\r\n", b"2;a=\x80\r\nxy\r\n", b'0;x="\r\nGET / HTTP/1.1\r\n"\r\n\r\n',
    # issue 7: trailers checked like header lines
    b"0\r\nNoColon\r\n\r\n", b"0\r\nT: a\x00b\r\n\r\n", b"0\r\nT: a\x01\r\n\r\n",
    b"0\r\nT: a\r\n folded\r\n\r\n", b"0\r\n\tT: a\r\n\r\n", b"0\r\nT : a\r\n\r\n",
    b"0\r\n: a\r\n\r\n", b"0\r\nT(x): a\r\n\r\n", b"0\r\nContent-Length: 5\r\n\r\n",
    b"0\r\ncontent_length: 5\r\n\r\n", b"0\r\nTransfer-Encoding: chunked\r\n\r\n",
    b"0\r\nHOST: x\r\n\r\n", b"0\r\nConnection: close\r\n\r\n", b"0\r\nTrailer: T\r\n\r\n",
    b"0\r\nX: 1\r\nUpgrade: h2c\r\n\r\n", b"0\r\nTE: trailers\r\n\r\n",
]


@pytest.mark.parametrize("body", CHUNKED_ERRORS)
def test_chunked_scanner_errors(core: ModuleType, body: bytes) -> None:
    scanner = core.ChunkedScanner()
    with pytest.raises(core.ChunkedError):
        scanner.feed(body + b"0\r\n\r\n")
    with pytest.raises(core.ChunkedError):   # sticky: a broken body stays broken
        scanner.feed(b"0\r\n\r\n")
    with pytest.raises(core.ChunkedError):
        feed_bytewise(core.ChunkedScanner(), body + b"0\r\n\r\n")


def test_chunked_scanner_limits(core: ModuleType) -> None:
    assert core.ChunkedScanner(max_line=6).feed(b"5;abcd\r\nhello\r\n") == 15
    with pytest.raises(core.ChunkedError):
        core.ChunkedScanner(max_line=6).feed(b"5;abcde\r\n")
    with pytest.raises(core.ChunkedError):
        core.ChunkedScanner(max_line=2).feed(b"005")
    assert core.ChunkedScanner().feed(b"0000000000000005") == 16   # 16 digits are fine
    trailer = b"0\r\nA: 12\r\n\r\n"
    assert core.ChunkedScanner(max_trailers=7).feed(trailer) == len(trailer)
    with pytest.raises(core.ChunkedError):
        core.ChunkedScanner(max_trailers=6).feed(trailer)
    with pytest.raises(core.ChunkedError):
        feed_bytewise(core.ChunkedScanner(max_trailers=6), trailer)
    with pytest.raises(ValueError):
        core.ChunkedScanner(max_line=-1)


@st.composite
def chunked_bodies(draw: st.DrawFn) -> bytes:
    out = []
    for payload in draw(st.lists(st.binary(min_size=1, max_size=80), max_size=6)):
        ext = draw(st.sampled_from([b"", b";a", b";a=b", b';q="x;y"', b';q="\\"";r']))
        out.append(b"%x%s\r\n%s\r\n" % (len(payload), ext, payload))
    out.append(b"0" + draw(st.sampled_from([b"", b";last"])) + b"\r\n")
    values = st.binary(max_size=10).filter(lambda v: all(c >= 0x20 and c != 0x7f or c == 9 for c in v))
    for name, value in draw(st.lists(st.tuples(st.sampled_from([b"T", b"Expires", b"X_Y"]), values),
                                     max_size=3)):
        out.append(name + b": " + value + b"\r\n")
    out.append(b"\r\n")
    return b"".join(out)


@FAST
@given(body=chunked_bodies(), trailing=st.binary(max_size=20), data=st.data())
def test_chunked_scanner_property(body: bytes, trailing: bytes, data: st.DataObject) -> None:
    for m in AVAILABLE:
        assert m.ChunkedScanner().feed(body + trailing) == len(body)
        assert feed_bytewise(m.ChunkedScanner(), body) == len(body)
        cuts = sorted(data.draw(st.lists(st.integers(0, len(body) + len(trailing)), max_size=6)))
        scanner, total, prev = m.ChunkedScanner(), 0, 0
        for cut in [*cuts, len(body) + len(trailing)]:
            total += scanner.feed((body + trailing)[prev:cut])
            prev = cut
        assert total == len(body) and scanner.done


# -- response heads ---------------------------------------------------------------------

@pytest.mark.parametrize(("head", "expected"), [
    (b"HTTP/1.1 200 OK\r\nContent-Length: 12\r\n\r\n", (200, 1, 12, False, False, ())),
    (b"HTTP/1.1 204\r\n\r\n", (204, 1, -1, False, False, ())),
    (b"HTTP/1.1 404 \r\n\r\n", (404, 1, -1, False, False, ())),
    (b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n", (200, 0, 0, False, True, ())),
    (b"HTTP/1.0 200 OK\r\nconnection: Keep-Alive\r\n\r\n", (200, 0, -1, False, False, (15, 39))),
    (b"HTTP/1.1 200 OK\r\nConnection: upgrade, CLOSE \r\n\r\n", (200, 1, -1, False, True, (15, 44))),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding:\tChunked\t\r\n\r\n", (200, 1, -1, True, False, ())),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: chunked,\r\n\r\n",
     (200, 1, -1, True, False, ())),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\n", (200, 1, -1, False, True, ())),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\ncontent-length:5\r\n\r\n", (200, 1, 5, False, False, ())),
    (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
     (101, 1, -1, False, False, ())),
    (b"HTTP/1.1 200 \xc3\xa9\x01 reason\r\nX-Empty:\r\n\r\n", (200, 1, -1, False, False, ())),
])
def test_parse_response_head(core: ModuleType, head: bytes, expected: tuple[Any, ...]) -> None:
    assert core.parse_response_head(head) == expected
    assert core.parse_response_head(bytearray(head)) == expected


@pytest.mark.parametrize("head", [
    b"HTTP/1.1 200 OK\r\n", b"HTTP/1.1 200 OK\r\n\r\nX", b"HTTP/2.0 200 OK\r\n\r\n",
    b"HTTP/1.1 20 OK\r\n\r\n", b"HTTP/1.1 2000\r\n\r\n", b"HTTP/1.1 099 Low\r\n\r\n",
    b"HTTP/1.1  200 OK\r\n\r\n", b"http/1.1 200 OK\r\n\r\n", b"HTTP/1.x 200\r\n\r\n",
    b"HTTP/1.1 200OK\r\n\r\n", b"\r\n\r\n",
    b"HTTP/1.1 200 OK\nContent-Length: 5\r\n\r\n", b"HTTP/1.1 200 OK\r\nA: b\rc\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nNoColon\r\n\r\n", b"HTTP/1.1 200 OK\r\n: v\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nA: b\r\n c\r\n\r\n", b"HTTP/1.1 200 OK\r\nContent-Length : 5\r\n\r\n",
    b"HTTP/1.1 200 OK\r\n\r\nA: b\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 5, 5\r\n\r\n", b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: +1\r\n\r\n", b"HTTP/1.1 200 OK\r\nContent-Length:\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: " + b"9" * 19 + b"\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
])
def test_parse_response_head_rejects(core: ModuleType, head: bytes) -> None:
    with pytest.raises(ValueError):
        core.parse_response_head(head)


def _cut_out(head: bytes, cut: tuple[int, ...]) -> bytes:
    out, pos = [], 0
    for k in range(0, len(cut), 2):
        out.append(head[pos:cut[k]])
        pos = cut[k + 1]
    return b"".join(out) + head[pos:]


_KA = b"HTTP/1.1 200 OK\r\nServer: nginx\r\nContent-Length: 2\r\n"


@pytest.mark.parametrize(("head", "kept"), [
    # nginx as the primary: the common case, one line cut
    (_KA + b"Connection: keep-alive\r\n\r\n", _KA + b"\r\n"),
    (_KA + b"Connection: keep-alive\r\nKeep-Alive: timeout=5\r\nX-A: 1\r\n\r\n", _KA + b"X-A: 1\r\n\r\n"),
    (_KA + b"PROXY-connection: keep-alive\r\nkeep-alive: timeout=5\r\nUpgrade: h2c\r\n\r\n", _KA + b"\r\n"),
    # a named header before and after the Connection line, in any case; close names "Close"
    (b"HTTP/1.1 200 OK\r\nX-Trace: 1\r\nConnection: x-trace, close, X-Other\r\nx-other: 2\r\n"
     b"Close: 3\r\nX-Keep: 4\r\n\r\n", b"HTTP/1.1 200 OK\r\nX-Keep: 4\r\n\r\n"),
    (b"HTTP/1.1 200 OK\r\nConnection: ,, a ,\r\nConnection: b\r\nA: 1\r\nB: 2\r\nC: 3\r\n\r\n",
     b"HTTP/1.1 200 OK\r\nC: 3\r\n\r\n"),
    # framing is never cut, even when named: the body keeps the framing it was sent in
    (b"HTTP/1.1 200 OK\r\nConnection: Content-Length, transfer-encoding\r\nContent-Length: 2\r\n\r\n",
     b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n"),
    # more hop-by-hop lines than the compiled scan keeps: the second pass finds them all
    (b"HTTP/1.1 200 OK\r\n" + b"Keep-Alive: 1\r\nX: y\r\n" * 10 + b"\r\n",
     b"HTTP/1.1 200 OK\r\n" + b"X: y\r\n" * 10 + b"\r\n"),
    # 1xx heads, 101 included, pass untouched
    (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
     b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"),
    (b"HTTP/1.1 100 Continue\r\nConnection: x\r\nX: 1\r\n\r\n",
     b"HTTP/1.1 100 Continue\r\nConnection: x\r\nX: 1\r\n\r\n"),
    (b"HTTP/1.1 204 No Content\r\nConnectionx: 1\r\nX-Keep-Alive: 1\r\n\r\n",
     b"HTTP/1.1 204 No Content\r\nConnectionx: 1\r\nX-Keep-Alive: 1\r\n\r\n"),
])
def test_parse_response_head_cut(core: ModuleType, head: bytes, kept: bytes) -> None:
    cut = core.parse_response_head(head)[5]
    assert _cut_out(head, cut) == kept
    assert core.splice_head(head, 0, len(head), 0, len(head), cut, b"") == kept


def test_splice_head(core: ModuleType) -> None:
    interim = b"HTTP/1.1 100 Continue\r\n\r\n"
    head = _KA + b"Connection: keep-alive\r\n\r\n"
    buf = b"<" + interim + head + b"ok" + b"NEXT"
    at = 1 + len(interim)
    cut = core.parse_response_head(head)[5]
    out = core.splice_head(buf, 1, len(buf) - 4, at, at + len(head), cut, b"connection: close\r\n")
    assert out == interim + _KA + b"connection: close\r\n\r\nok"
    assert core.splice_head(bytearray(buf), at, at + len(head), at, at + len(head), (), b"") == head
    assert core.splice_head(memoryview(head), 0, len(head), 0, len(head), (), b"A: 1\r\n") == (
        head[:-2] + b"A: 1\r\n\r\n")
    for args in [(2, len(buf), 1, len(buf), ()),            # start after the head
                 (0, len(buf) + 1, 0, len(buf), ()),        # past the end
                 (0, 10, 0, 3, ()),                         # a head shorter than CRLFCRLF
                 (0, len(head), 0, len(head), (1,)),        # odd cut
                 (0, len(head), 0, len(head), (5, 4)),      # a span backwards
                 (0, len(head), 0, len(head), (4, 8, 6, 9)),  # overlapping spans
                 (0, len(head), 0, len(head), (0, len(head) - 1))]:  # into the final CRLF
        with pytest.raises(ValueError):
            core.splice_head(head + b"ok", *args, b"")
    with pytest.raises(TypeError):
        core.splice_head(head, 0, len(head), 0, len(head), [0, 1], b"")


_NAMES = [b"Connection", b"connection", b"Keep-Alive", b"Proxy-Connection", b"Upgrade",
          b"Content-Length", b"Transfer-Encoding", b"X-A", b"x-a", b"Close", b"Date", b"A"]
_TOKENS = [b"close", b"keep-alive", b"Keep-Alive", b"x-a", b"X-A", b"upgrade", b"date", b"a",
           b"content-length", b"transfer-encoding", b"", b" ", b"zz"]


@st.composite
def response_heads(draw: st.DrawFn) -> bytes:
    """Valid-looking response heads rich in hop-by-hop lines and Connection tokens."""
    status = draw(st.sampled_from([b"100", b"101", b"103", b"200", b"204", b"304", b"404"]))
    lines = [b"HTTP/1." + draw(st.sampled_from([b"0", b"1"])) + b" " + status + b" R"]
    for name in draw(st.lists(st.sampled_from(_NAMES), max_size=12)):
        if name.lower() == b"connection":
            value = b",".join(draw(st.lists(st.sampled_from(_TOKENS), min_size=1, max_size=4)))
        elif name.lower() == b"content-length":
            value = b"2"
        elif name.lower() == b"transfer-encoding":
            value = b"chunked"
        else:
            value = draw(st.sampled_from([b"1", b"", b"v w"]))
        lines.append(name + b":" + draw(st.sampled_from([b"", b" ", b"\t"])) + value)
    return b"\r\n".join(lines) + b"\r\n\r\n"


@FAST
@given(head=response_heads())
def test_response_cut_property(head: bytes) -> None:
    """The cut removes exactly the hop-by-hop lines, and nothing else, from final heads."""
    lines = head[:-4].split(b"\r\n")
    names = [line.split(b":", 1)[0].lower() for line in lines[1:]]
    tokens = {t.strip(b" \t").lower() for line, name in zip(lines[1:], names)
              if name == b"connection" for t in line.split(b":", 1)[1].split(b",")}
    final = int(lines[0][9:12]) >= 200
    expected = [lines[0]] + [
        line for line, name in zip(lines[1:], names)
        if not final or not (name in (b"connection", b"keep-alive", b"proxy-connection", b"upgrade")
                             or (name in tokens and name not in (b"content-length",
                                                                 b"transfer-encoding")))]
    for m in AVAILABLE:
        try:
            cut = m.parse_response_head(head)[5]
        except ValueError:   # CL with TE: refused whole, nothing to cut
            assert b"content-length" in names and b"transfer-encoding" in names
            continue
        assert _cut_out(head, cut) == b"".join(line + b"\r\n" for line in expected) + b"\r\n"


# -- parity: the twin is the oracle -----------------------------------------------------

HEAD_PIECES = [
    b"GET / HTTP/1.1", b"HTTP/1.1 200 OK", b"HTTP/1.0 404", b"\r\n", b"\r\n\r\n", b"\r", b"\n",
    b"Host", b"hOsT", b":", b": ", b" ", b"\t", b"x", b"-", b"\x00", b"\x01", b"\x7f", b"\xff",
    b"[::1]", b"80", b"example.com", b"Content-Length", b"Transfer-Encoding", b"Connection",
    b"chunked", b"close", b"keep-alive", b",", b"5", b"12",
]
head_like = st.one_of(
    st.binary(max_size=64),
    st.lists(st.sampled_from(HEAD_PIECES), max_size=24).map(b"".join),
    st.lists(st.sampled_from(HEAD_PIECES), max_size=24).map(lambda p: b"".join(p) + b"\r\n\r\n"),
)
CHUNK_PIECES = [b"0", b"5", b"a", b"F", b"10", b"ffffffffffffffff", b"1" * 17, b";", b"ext=1",
                b"\r\n", b"\r", b"\n", b"\x00", b"hello", b"x", b"T: v", b" ",
                b"8000000000000000", b"7fffffffffffffff", b'"', b"\\", b"=", b"\t", b"\x80",
                b"Content_Length: 1", b"Host:", b"X_Y:", b"\x7f"]
chunk_like = st.one_of(
    st.binary(max_size=64),
    st.lists(st.sampled_from(CHUNK_PIECES), max_size=30).map(b"".join),
    chunked_bodies(),
)
parity = pytest.mark.skipif(_core_c is None, reason="fastmirror._core is not built")


@parity
@FAST
@given(key=st.binary(max_size=64), ppm=st.integers(-10, 1_000_010),
       draw=st.integers(-5, 2**64 + 5), percent=st.one_of(st.floats(), st.integers(-10**6, 10**6)))
def test_parity_scalars(key: bytes, ppm: int, draw: int, percent: float) -> None:
    both("key_hash", key)
    both("sample", ppm, draw)
    both("percent_to_ppm", percent)


@parity
@FAST
@given(buf=head_like, start=st.integers(-8, 80))
def test_parity_heads(buf: bytes, start: int) -> None:
    both("find_head_end", buf, start)
    both("find_head_end", bytearray(buf), start)
    both("check_head", buf)
    both("parse_response_head", buf)
    try:
        cut = _core_py.parse_response_head(buf)[5]
    except ValueError:
        cut = ()
    n = len(buf)
    both("splice_head", buf + b"body", 0, n + 4, 0, n, cut, b"connection: close\r\n")
    both("splice_head", buf, max(start, 0), n, start, n, cut, b"")
    for suffix in (b"-shadow", b""):
        both("shadow_head", buf, suffix, b"X: 1\r\n")


@parity
@FAST
@given(body=chunk_like, cuts=st.lists(st.integers(0, 200), max_size=6),
       max_line=st.sampled_from([0, 1, 4, 16, 4096]),
       max_trailers=st.sampled_from([0, 3, 8, 16384]), prefix=st.sampled_from([b"", b"xy"]))
def test_parity_chunked_scanner(body: bytes, cuts: list[int], max_line: int,
                                max_trailers: int, prefix: bytes) -> None:
    scanners = [m.ChunkedScanner(max_line, max_trailers) for m in PAIR]
    bounds = sorted({min(c, len(body)) for c in cuts} | {len(body)})
    prev = 0
    for cut in [*bounds, len(body)]:   # the last feed is after the end (or after a failure)
        results = []
        for s in scanners:
            res = outcome(s.feed, prefix + body[prev:cut], len(prefix))
            results.append((res[0], res[1] if res[0] == "ok" else "error", s.done))
        assert results[0] == results[1], (body, prev, cut)
        prev = cut


@parity
@FAST
@given(head=response_heads(), prefix=st.sampled_from([b"", b"HTTP/1.1 100 Continue\r\n\r\n"]),
       body=st.binary(max_size=16), insert=st.sampled_from([b"", b"connection: close\r\n"]),
       data=st.data())
def test_parity_response_cut_and_splice(head: bytes, prefix: bytes, body: bytes, insert: bytes,
                                        data: st.DataObject) -> None:
    both("parse_response_head", head)
    both("parse_response_head", bytearray(head))
    try:
        cut = _core_py.parse_response_head(head)[5]
    except ValueError:
        cut = data.draw(st.lists(st.integers(-2, len(head) + 2), max_size=4).map(tuple))
    buf = prefix + head + body
    at = len(prefix)
    stop = data.draw(st.integers(at + len(head) - 1, len(buf) + 1))
    both("splice_head", buf, 0, stop, at, at + len(head), cut, insert)
    both("splice_head", memoryview(buf), at, len(buf), at, at + len(head), cut, insert)


RESPONSE_BODIES = [b"", b"ok", b"okEXTRA", b"2\r\nok\r\n0\r\n\r\n", b"2\r\nok\r\n0\r\nT: v\r\n\r\nX",
                   b"zz\r\n", b"HTTP/1.1 200 OK\r\n\r\n", b"\x00" * 5]


@parity
@FAST
@given(head=response_heads(), prefix=st.sampled_from([b"", b"HTTP/1.1 100 Continue\r\n\r\n",
                                                     b"HTTP/1.1 103 Early\r\nLink: x\r\n\r\n"]),
       body=st.sampled_from(RESPONSE_BODIES), flags=st.lists(st.booleans(), min_size=5, max_size=5),
       cuts=st.lists(st.integers(0, 400), max_size=5), eof=st.booleans())
def test_parity_response_framer(head: bytes, prefix: bytes, body: bytes, flags: list[bool],
                                cuts: list[int], eof: bool) -> None:
    """The compiled framer and the twin pass on the same bytes, in the same pieces, and
    end in the same state (or fail at the same feed), however the response is split."""
    head_request, drop_interim, rewrite, upgrade, closing = flags
    data = prefix + head + body
    framers = [m.ResponseFramer(head_request, drop_interim, rewrite, upgrade) for m in PAIR]
    bounds = sorted({min(c, len(data)) for c in cuts} | {len(data)})
    prev = 0
    for cut in [*bounds, len(data)]:   # the last feed is empty, after the end
        seen = []
        for f in framers:
            f.client_closing = closing
            res = outcome(f.feed, data[prev:cut])
            seen.append((res, f.status, f.done, f.close, f.upgraded, f.close_client, f.until_close))
        assert seen[0] == seen[1], (data, prev, cut)
        if seen[0][0][0] == "raise":
            return
        prev = cut
    if eof:
        ends = [(outcome(f.eof), f.done) for f in framers]
        assert ends[0] == ends[1], data


@st.composite
def requests(draw: st.DrawFn) -> tuple[bytes, list[bytes], int | None]:
    """A request head, its header lines, and the index of the first Host line."""
    names = st.sampled_from([b"Host", b"host", b"HOST", b"X-Host", b"Hostx", b"Accept", b"A"])
    hosts = st.one_of(
        st.from_regex(rb"\A[a-z0-9.-]{0,12}(:[0-9]{0,5})?\Z"),
        st.from_regex(rb"\A\[[0-9a-f:]{0,10}\](:[0-9]{1,5})?\Z"),
        st.binary(max_size=8).filter(lambda v: b"\r" not in v and b"\n" not in v),
    )
    ows = st.sampled_from([b"", b" ", b"\t", b" \t "])
    lines = [name + b":" + draw(ows) + draw(hosts) + draw(ows)
             for name in draw(st.lists(names, max_size=5))]
    first = next((k for k, line in enumerate(lines) if line[:5].lower() == b"host:"), None)
    return b"GET / HTTP/1.1\r\n" + b"".join(l + b"\r\n" for l in lines) + b"\r\n", lines, first


@FAST
@given(req=requests(), suffix=st.sampled_from([b"-shadow", b"", b".mirror"]),
       extra=st.sampled_from([b"", b"x-fastmirror-shadow: 1\r\n", b"A: 1\r\nB: 2\r\n"]))
def test_shadow_head_only_changes_host_and_adds_extra(
        req: tuple[bytes, list[bytes], int | None], suffix: bytes, extra: bytes) -> None:
    head, lines, first = req
    want = list(lines)
    if first is not None and suffix:   # an independent model of the Host rewrite
        value = lines[first][5:]
        host = value.strip(b" \t")
        lead = value[:len(value) - len(value.lstrip(b" \t"))]
        name_end = host.find(b":") if b":" in host else len(host)
        if host and not host.startswith(b"[") and name_end > 0:
            rest = value[len(lead) + name_end:]
            want[first] = lines[first][:5] + lead + host[:name_end] + suffix + rest
    expected = b"GET / HTTP/1.1\r\n" + b"".join(l + b"\r\n" for l in want) + extra + b"\r\n"
    for m in AVAILABLE:
        assert m.shadow_head(head, suffix, extra) == expected


@FAST
@given(ppm=st.integers(0, 1_000_000), draw=st.integers(0, 2**64 - 1))
def test_sample_is_draw_mod_scale_below_ppm(ppm: int, draw: int) -> None:
    for m in AVAILABLE:
        assert m.sample(ppm, draw) is (draw % 1_000_000 < ppm)


# -- request heads: the fast path ----------------------------------------------------------

REQUEST_LINES = [b"GET / HTTP/1.1", b"POST /a?b=1 HTTP/1.1", b"GET /x HTTP/1.0", b"G\xe9T / HTTP/1.1",
                 b"GET  / HTTP/1.1", b"GET / HTTP/1.2", b"GET / HTTP/2.0", b"GET /\x7f HTTP/1.1",
                 b"OPTIONS * HTTP/1.1", b"GET / http/1.1", b"GET /", b""]
HEADER_LINES = [b"Host: a", b"host:b:80", b"Host:", b"Content-Length: 5", b"content-length:0",
                b"Content-Length: 5, 5", b"Content-Length: +5", b"Content-Length: 1234567890123456789",
                b"Transfer-Encoding: chunked", b"transfer-encoding: Chunked ", b"Transfer-Encoding: gzip",
                b"Connection: close", b"Connection: keep-alive, close", b"Connection: Upgrade",
                b"Connection: x-foo", b"Connection: ,", b"Keep-Alive: 5", b"TE: trailers", b"Trailer: x",
                b"Proxy-Connection: close", b"Upgrade: websocket", b"X-A: b c", b"X-A:\tb\t",
                b"X-A : b", b" X-A: b", b"X-A: \x01", b"X-A: \xff\x80", b"X(A): b", b":x", b"noColon",
                b"X-A: a\rb", b"X-A: a\nb", b"Expect: 100-continue"]


@st.composite
def request_heads(draw: st.DrawFn) -> bytes:
    line = draw(st.sampled_from(REQUEST_LINES))
    headers = draw(st.lists(st.sampled_from(HEADER_LINES), max_size=6))
    sep = draw(st.sampled_from([b"\r\n", b"\r\n", b"\r\n", b"\n"]))
    return sep.join([line, *headers]) + b"\r\n\r\n"


@parity
@FAST
@given(head=st.one_of(request_heads(), head_like))
def test_parity_parse_request_fast(head: bytes) -> None:
    both("parse_request_fast", head)
    both("parse_request_fast", bytearray(head))


def test_parse_request_fast_common_case(core: ModuleType) -> None:
    head = b"GET /bench?q=1 HTTP/1.1\r\nHost: 127.0.0.1:18040\r\n\r\n"
    assert core.parse_request_fast(head) == (b"GET", b"/bench?q=1", 1, -1, False, 0, None)
    head = b"POST /u HTTP/1.1\r\nHost: a\r\nConnection: keep-alive\r\nContent-Length: 12\r\nTE: x\r\n\r\n"
    assert core.parse_request_fast(head) == (
        b"POST", b"/u", 1, 12, False, core.REQ_CONN_KEEP_ALIVE | core.REQ_CONN_HOP,
        b"POST /u HTTP/1.1\r\nHost: a\r\nContent-Length: 12\r\n\r\n")
    assert core.parse_request_fast(b"GET / HTTP/1.1\r\n\r\n") is None          # no Host: h11 decides
    assert core.parse_request_fast(b"GET / HTTP/1.1\r\nHost: a\r\nUpgrade: h2c\r\n\r\n") is None


# -- routes (issue 10) ------------------------------------------------------------------

ROUTE_PIECES = [b"/", b"/", b"a", b"api", b"v1", b".", b"..", b"%", b"%2f", b"%6D", b"?",
                b"#", b"q=1", b"http://h", b"*", b"x", b"\\", b";", b"A", b"Pay"]
route_like = st.one_of(st.binary(max_size=24),
                       st.lists(st.sampled_from(ROUTE_PIECES), max_size=10).map(b"".join))


@pytest.mark.parametrize(("target", "expected"), [
    (b"/api/v1/users/7?x=1", 1), (b"/api", -1), (b"/api/v1", -1), (b"/other", 2),
    (b"/api/v1/user#frag", -2), (b"/?/api/v1/users", -1), (b"/api/v1/users", 1),
    (b"/api/v1/%75sers", -2), (b"/api/./v1", -2), (b"//api", -2), (b"/api/..", -2),
    (b"http://h/api/v1/users", -2), (b"*", -2), (b"", -2), (b"/o?%2e//", 2),
    # "#": read two ways (paths.py), so Python's
    (b"/o#/./", -2), (b"/o#x", -2), (b"/o\\x", -2), (b"/o;x", -2), (b"/O", -1)])
def test_match_route_first_prefix_or_normalise(core: ModuleType, target: bytes,
                                               expected: int) -> None:
    assert core.match_route(target, (b"/api/v2", b"/api/v1/users", b"/o")) == expected


def test_match_route_any_case_hands_capitals_over(core: ModuleType) -> None:
    assert core.match_route(b"/O", (b"/o",), True) == -2
    assert core.match_route(b"/o/x", (b"/o",), True) == 0
    assert core.match_route(b"/o?Q=1", (b"/o",), True) == 0  # the query does not count


def test_match_route_types(core: ModuleType) -> None:
    assert core.match_route(b"/a", ()) == -1
    for target, prefixes in ((bytearray(b"/a"), (b"/",)), (b"/a", [b"/"]), (b"/a", ("/",)),
                             (None, ())):
        with pytest.raises(TypeError):
            core.match_route(target, prefixes)
    assert core.match_route(b"/a", (b"/a", "never compared")) == 0


@parity
@FAST
@given(target=route_like, prefixes=st.lists(route_like, max_size=6))
def test_parity_match_route(target: bytes, prefixes: list[bytes]) -> None:
    both("match_route", target, tuple(prefixes))
    both("match_route", target, tuple(prefixes), True)
    both("match_route", target, (*prefixes, 7))
