"""The proxy's per-request hot path in plain Python: the twin of `_core.pyx`.

Same names, same results, same exceptions, for every input (tests/unit/test_core.py
checks it with hypothesis). It is the development fallback and the parity oracle; an
installed proxy runs the compiled module. Where the twin scans with `re` or
`bytes.find` instead of a byte loop, it reports exactly what the C loop would.
"""

from __future__ import annotations

import math
import operator
import os
import re

__all__ = (
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

PPM_SCALE = 1_000_000

HEAD_OK = 0
HEAD_ERR_BARE_LF = 1
HEAD_ERR_BARE_CR = 2
HEAD_ERR_CTL = 3
HEAD_ERR_OBS_FOLD = 4
HEAD_ERR_SPACE_BEFORE_COLON = 5
HEAD_ERR_NO_COLON = 6

HEAD_ERR_MESSAGES = {
    HEAD_ERR_BARE_LF: "bare LF line ending",
    HEAD_ERR_BARE_CR: "bare CR in head",
    HEAD_ERR_CTL: "control character in head",
    HEAD_ERR_OBS_FOLD: "obsolete line folding",
    HEAD_ERR_SPACE_BEFORE_COLON: "whitespace before colon in header",
    HEAD_ERR_NO_COLON: "header line without a colon",
}

_U64 = 0xFFFFFFFFFFFFFFFF
_I64_MIN = -(1 << 63)
_I64_MAX = (1 << 63) - 1
_OWS = b" \t"


def _as_bytes(obj: object) -> bytes | bytearray:
    """bytes and bytearray as they are; any other buffer copied, like PyBUF_SIMPLE reads it."""
    if isinstance(obj, (bytes, bytearray)):
        return obj
    return memoryview(obj).tobytes()  # type: ignore[arg-type]  # TypeError if no buffer


def _as_view(obj: object) -> bytes | bytearray | memoryview:
    """Like _as_bytes, without copying: indexing and `re` only (no .find on a memoryview)."""
    if isinstance(obj, (bytes, bytearray)):
        return obj
    return memoryview(obj).cast("B")  # type: ignore[arg-type]


# -- sampling ---------------------------------------------------------------------------

def percent_to_ppm(percent: float) -> int:
    """Percent (0..100, float) to parts per million, rounded half-even, clamped."""
    if isinstance(percent, (str, bytes, bytearray)):
        raise TypeError(f"must be real number, not {type(percent).__name__}")
    x = float(percent) * 10000.0
    if math.isnan(x):
        raise ValueError("percent is NaN")
    if x <= 0.0:
        return 0
    if x >= 1000000.0:
        return 1000000
    return round(x)


def sample(ppm: int, draw: int) -> bool:
    """True for `ppm` draws in a million: draw % 1_000_000 < ppm."""
    if type(ppm) is not int or type(draw) is not int:
        ppm, draw = operator.index(ppm), operator.index(draw)
    if not (0 <= draw <= _U64 and _I64_MIN <= ppm <= _I64_MAX):
        raise OverflowError("draw must fit an unsigned and ppm a signed 64-bit int")
    return draw % 1000000 < ppm


_rng_state = 0


def seed_random(seed: int | None = None) -> None:
    """Set the PRNG state (an int, masked to 64 bits), or reseed from os.urandom."""
    global _rng_state
    if seed is None:
        seed = int.from_bytes(os.urandom(8), "little")
    _rng_state = seed & _U64


def random_u64() -> int:
    """Next splitmix64 output: an unsigned 64-bit int. Not for cryptography."""
    global _rng_state
    z = _rng_state = (_rng_state + 0x9E3779B97F4A7C15) & _U64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _U64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _U64
    return z ^ (z >> 31)


seed_random()
# A forked worker would otherwise replay its parent's sequence, in step with its siblings.
os.register_at_fork(after_in_child=seed_random)


def key_hash(key: bytes) -> int:
    """FNV-1a 64-bit of key: stable across processes, runs and both implementations."""
    h = 0xCBF29CE484222325
    for b in _as_bytes(key):
        h = ((h ^ b) * 0x100000001B3) & _U64
    return h


# -- request heads ----------------------------------------------------------------------

def find_head_end(buf: bytes | bytearray, start: int = 0) -> int:
    """Index just past the first CRLFCRLF at or after start (negative: 0), or -1."""
    data = _as_bytes(buf)
    i = data.find(b"\r\n\r\n", max(0, operator.index(start)))
    return -1 if i < 0 else i + 4


# The byte-level errors, each at the offending byte: a CR not followed by LF, a LF not
# preceded by CR (every CRLF is a pair, so this is the C loop's "LF on its own"), a CTL.
_BYTE_ERROR = re.compile(rb"\r(?!\n)|(?<!\r)\n|[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_BYTE_ERROR_CODE = {0x0D: HEAD_ERR_BARE_CR, 0x0A: HEAD_ERR_BARE_LF}


def _line_error(head: bytes | bytearray, s: int, e: int) -> tuple[int, int]:
    """(position, code) where the C loop stops on header line head[s:e], or (-1, 0)."""
    if head[s] in _OWS:
        return s, HEAD_ERR_OBS_FOLD
    colon = head.find(b":", s, e)
    if colon < 0:
        return e, HEAD_ERR_NO_COLON       # noticed at the CR (or end) of the line
    if colon == s:
        return s, HEAD_ERR_NO_COLON
    if head.find(b" ", s, colon) >= 0 or head.find(b"\t", s, colon) >= 0:
        return colon, HEAD_ERR_SPACE_BEFORE_COLON   # noticed at the colon
    return -1, 0


def check_head(head: bytes) -> int:
    """HEAD_OK, or the HEAD_ERR_* code of the first offending byte of a request head."""
    return _check_head(_as_bytes(head))


def _check_head(head: bytes | bytearray) -> int:
    n = len(head)
    m = _BYTE_ERROR.search(head)
    if m is None:
        limit, byte_code = n + 1, HEAD_OK
    else:
        limit = m.start()
        byte_code = _BYTE_ERROR_CODE.get(head[limit], HEAD_ERR_CTL)
    s = head.find(b"\r\n")
    if s < 0:
        return byte_code   # the request line alone: only byte checks apply
    s += 2
    while s < limit:
        e = head.find(b"\r\n", s)
        if e < 0:
            e = n   # an unterminated last line (the caller broke the contract)
        if e > s:
            pos, code = _line_error(head, s, e)
            if pos >= 0:
                return code if pos < limit else byte_code
        if e == n:
            break
        s = e + 2
    return byte_code


_HOST_LINE = re.compile(rb"\r\nhost:", re.IGNORECASE)   # bytes: ASCII case folding only


def _host_suffix_at(head: bytes | bytearray) -> int:
    """Where host_suffix goes (end of the host name in the first Host value), or -1."""
    m = _HOST_LINE.search(head)
    if m is None:
        return -1
    vs = m.end()
    value = head[vs:head.find(b"\r\n", vs)]
    core = value.strip(_OWS)
    if not core or core[0] == 0x5B:   # empty, or an IPv6 literal "[...]": left alone
        return -1
    colon = core.find(b":")
    if colon == 0:
        return -1
    ls = vs + len(value) - len(value.lstrip(_OWS))
    return ls + (len(core) if colon < 0 else colon)


def shadow_head(head: bytes, host_suffix: bytes, extra: bytes) -> bytes:
    """The head with host_suffix after the first Host's host name and extra before the end.

    Raises:
        ValueError: head does not end with CRLFCRLF.
    """
    data, suffix, more = _as_bytes(head), _as_bytes(host_suffix), _as_bytes(extra)
    if not data.endswith(b"\r\n\r\n"):
        raise ValueError("head must end with CRLF CRLF")
    body_end = len(data) - 2
    at = _host_suffix_at(data) if suffix else -1
    if at < 0:
        return b"".join((data[:body_end], more, b"\r\n"))
    return b"".join((data[:at], suffix, data[at:body_end], more, b"\r\n"))


# -- chunked bodies ---------------------------------------------------------------------

class ChunkedError(ValueError):
    """A chunked body that RFC 9112 section 7.1 does not allow, or over a limit."""


(_S_SIZE, _S_EXT_START, _S_SIZE_LF, _S_DATA, _S_DATA_CR, _S_DATA_LF, _S_TRAILER_START,
 _S_TNAME, _S_TRAILER_LF, _S_FINAL_LF, _S_DONE, _S_EXT_NAME, _S_EXT_VAL, _S_EXT_TOKEN,
 _S_EXT_QUOTED, _S_EXT_QPAIR, _S_EXT_CLOSED, _S_TVALUE) = range(18)
_TNAME_KEEP = 24

# Chunk sizes past this are refused: nginx's off_t bound, and a number no back end
# can wrap around (a 64-bit wrap turns 2**64 + 20 into 20, and the rest into a request).
MAX_CHUNK_SIZE = 0x7FFFFFFFFFFFFFFF
# Trailer fields that would frame, route or control the connection if a back end
# merged them into the head (RFC 9110 section 6.5.1); "_" is read as "-" as CGI does.
FORBIDDEN_TRAILERS = (
    b"content-length", b"transfer-encoding", b"host", b"connection", b"keep-alive",
    b"proxy-connection", b"te", b"trailer", b"upgrade",
)

_HEX = {c: int(chr(c), 16) for c in b"0123456789abcdefABCDEF"}
_TCHAR_SET = frozenset(b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")
_QDTEXT = frozenset([0x09, 0x20, 0x21, *range(0x23, 0x5C), *range(0x5D, 0x7F), *range(0x80, 0x100)])
_QPAIR = frozenset([0x09, *range(0x20, 0x7F), *range(0x80, 0x100)])
_FIELD_BYTE = frozenset([0x09, *range(0x20, 0x7F), *range(0x80, 0x100)])   # VCHAR, obs-text, SP, HT
_TOKEN_RE = rb"[-!#$%&'*+.^_`|~0-9A-Za-z]+"
_QUOTED_RE = rb'"(?:[\t \x21\x23-\x5b\x5d-\x7e\x80-\xff]|\\[\t \x21-\x7e\x80-\xff])*"'
# A whole valid chunk-size line at once; anything it does not match goes byte by byte.
_SIZE_LINE = re.compile(rb"([0-9A-Fa-f]{1,16})((?:;" + _TOKEN_RE + rb"(?:=(?:" + _TOKEN_RE
                        + rb"|" + _QUOTED_RE + rb"))?)*)\r\n")
# A whole valid trailer line (its name checked separately).
_TRAILER_LINE = re.compile(rb"(" + _TOKEN_RE + rb"):[\t \x21-\x7e\x80-\xff]*\r\n")
_TVALUE_STOP = re.compile(rb"[^\t \x21-\x7e\x80-\xff]")


def _norm_name(name: bytes | bytearray) -> bytes:
    return bytes(name).lower().replace(b"_", b"-")


class ChunkedScanner:
    """Strict incremental scanner of one chunked body (RFC 9112 section 7.1).

    feed() reports how many bytes belong to the body, so the caller can forward them
    untouched; it never consumes past the CRLF that ends the trailer section.
    Strict where parsers are known to differ: a chunk size of at most 16 hex digits and
    at most 2**63 - 1, chunk extensions by the grammar with no whitespace, and trailer
    lines checked like header lines, framing and routing fields refused.
    """

    __slots__ = (
        "_digits",
        "_failed",
        "_line_len",
        "_max_line",
        "_max_trailers",
        "_name",
        "_size",
        "_state",
        "_trailer_len",
    )

    def __init__(self, max_line: int = 4096, max_trailers: int = 16384) -> None:
        max_line, max_trailers = operator.index(max_line), operator.index(max_trailers)
        if max_line < 0 or max_trailers < 0:
            raise ValueError("max_line and max_trailers must be >= 0")
        self._max_line = max_line
        self._max_trailers = max_trailers
        self._state = _S_SIZE
        self._digits = 0
        self._failed = False
        self._size = 0
        self._line_len = 0
        self._trailer_len = 0
        self._name = bytearray()

    @property
    def done(self) -> bool:
        """True once the whole body, trailers and final CRLF included, was consumed."""
        return self._state == _S_DONE

    def feed(self, buf: bytes | bytearray | memoryview, start: int = 0) -> int:
        """Consume buf[start:]; return how many of its bytes belong to the body.

        Raises:
            ChunkedError: malformed body or a limit exceeded (and on every later call).
            ValueError: start is outside 0..len(buf).
        """
        if self._failed:
            raise ChunkedError("chunked body already failed")
        view = _as_view(buf)
        start = operator.index(start)
        if start < 0 or start > len(view):
            raise ValueError("start out of range")
        if self._state == _S_DONE:
            return 0
        return self._scan(view, start, len(view)) - start

    def _fail(self, message: str) -> None:
        self._failed = True
        raise ChunkedError(message)

    def _ext_byte(self, c: int) -> None:
        state = self._state
        if state == _S_EXT_START:
            if c not in _TCHAR_SET:
                self._fail("empty or invalid chunk extension")
            self._state = _S_EXT_NAME
        elif state in (_S_EXT_NAME, _S_EXT_TOKEN):
            if c in _TCHAR_SET:
                pass
            elif c == 0x3B:
                self._state = _S_EXT_START
            elif c == 0x3D and state == _S_EXT_NAME:
                self._state = _S_EXT_VAL
            elif c == 0x0D:   # the CR is not part of the line's length
                self._state = _S_SIZE_LF
                return
            else:
                self._fail("invalid byte in chunk extension")
        elif state == _S_EXT_VAL:
            if c in _TCHAR_SET:
                self._state = _S_EXT_TOKEN
            elif c == 0x22:
                self._state = _S_EXT_QUOTED
            else:
                self._fail("chunk extension without a value after =")
        elif state == _S_EXT_QUOTED:
            if c == 0x22:
                self._state = _S_EXT_CLOSED
            elif c == 0x5C:
                self._state = _S_EXT_QPAIR
            elif c not in _QDTEXT:
                self._fail("unterminated or invalid quoted string in chunk extension")
        elif state == _S_EXT_QPAIR:
            if c not in _QPAIR:
                self._fail("invalid quoted pair in chunk extension")
            self._state = _S_EXT_QUOTED
        else:   # _S_EXT_CLOSED
            if c == 0x3B:
                self._state = _S_EXT_START
            elif c == 0x0D:
                self._state = _S_SIZE_LF
                return
            else:
                self._fail("invalid byte after a quoted chunk extension")
        self._line_len += 1
        if self._line_len > self._max_line:
            self._fail("chunk size line too long")

    def _trailer_byte(self, c: int) -> None:
        if self._state == _S_TRAILER_START:
            if c == 0x0D:
                self._state = _S_FINAL_LF
                return
            if c == 0x0A:
                self._fail("bare LF in trailer section")
            if c in _OWS:
                self._fail("obsolete line folding in trailer section")
            if c not in _TCHAR_SET:
                self._fail("invalid trailer field name")
            self._state = _S_TNAME
            self._name.clear()
        if self._state == _S_TNAME:
            if c in _TCHAR_SET:
                self._name.append(c)
            elif c == 0x3A:
                if len(self._name) <= _TNAME_KEEP and _norm_name(self._name) in FORBIDDEN_TRAILERS:
                    self._fail("framing or routing field in trailer section")
                self._state = _S_TVALUE
            elif c in _OWS:
                self._fail("whitespace before colon in trailer")
            elif c in (0x0D, 0x0A):
                self._fail("trailer line without a colon")
            else:
                self._fail("invalid trailer field name")
        else:   # _S_TVALUE
            if c == 0x0D:
                self._state = _S_TRAILER_LF
            elif c == 0x0A:
                self._fail("bare LF in trailer section")
            elif c not in _FIELD_BYTE:
                self._fail("control character in trailer section")
        self._trailer_len += 1
        if self._trailer_len > self._max_trailers:
            self._fail("trailer section too long")

    def _scan(self, p: bytes | bytearray | memoryview, i: int, n: int) -> int:
        while i < n:
            state = self._state
            if state == _S_DATA:   # skipped by arithmetic, whatever its size
                if self._size <= n - i:
                    i += self._size
                    self._size = 0
                    self._state = _S_DATA_CR
                else:
                    self._size -= n - i
                    i = n
                continue
            if state == _S_SIZE and self._digits == 0:
                m = _SIZE_LINE.match(p, i)
                if m is not None and m.end() - 2 - i <= self._max_line:
                    size = int(m.group(1), 16)
                    if size <= MAX_CHUNK_SIZE:
                        i = m.end()
                        self._size = size
                        self._state = _S_DATA if size else _S_TRAILER_START
                        continue
            if state == _S_TRAILER_START:
                m = _TRAILER_LINE.match(p, i)
                if (m is not None and self._trailer_len + m.end() - i <= self._max_trailers
                        and _norm_name(m.group(1)) not in FORBIDDEN_TRAILERS):
                    self._trailer_len += m.end() - i
                    i = m.end()
                    continue
            if state == _S_TVALUE:   # the bulk of a trailer value: run to its end
                m = _TVALUE_STOP.search(p, i)
                stop = n if m is None else m.start()
                self._trailer_len += stop - i
                i = stop
                if self._trailer_len > self._max_trailers:
                    self._fail("trailer section too long")
                if i == n:
                    break
            c = p[i]
            if state == _S_SIZE:
                d = _HEX.get(c)
                if d is not None:
                    self._digits += 1
                    if self._digits > 16:
                        self._fail("chunk size has more than 16 hex digits")
                    self._size = (self._size << 4) | d
                    if self._size > MAX_CHUNK_SIZE:
                        self._fail("chunk size past 2**63 - 1")
                elif self._digits == 0:
                    self._fail("invalid chunk size")
                elif c == 0x3B:   # ";"
                    self._state = _S_EXT_START
                elif c == 0x0D:
                    self._state = _S_SIZE_LF
                    i += 1
                    continue
                else:
                    self._fail("invalid chunk size")
                self._line_len += 1
                if self._line_len > self._max_line:
                    self._fail("chunk size line too long")
                i += 1
            elif state == _S_SIZE_LF:
                if c != 0x0A:
                    self._fail("chunk size line not ended by CRLF")
                i += 1
                self._line_len = 0
                self._digits = 0
                self._state = _S_DATA if self._size else _S_TRAILER_START
            elif state == _S_DATA_CR:
                if c != 0x0D:
                    self._fail("chunk data not followed by CRLF")
                self._state = _S_DATA_LF
                i += 1
            elif state == _S_DATA_LF:
                if c != 0x0A:
                    self._fail("chunk data not followed by CRLF")
                self._state = _S_SIZE
                i += 1
            elif state in (_S_TRAILER_START, _S_TNAME, _S_TVALUE):
                self._trailer_byte(c)
                i += 1
            elif state == _S_TRAILER_LF:
                if c != 0x0A:
                    self._fail("bare CR in trailer section")
                self._trailer_len += 1
                if self._trailer_len > self._max_trailers:
                    self._fail("trailer section too long")
                self._state = _S_TRAILER_START
                i += 1
            elif state == _S_FINAL_LF:
                if c != 0x0A:
                    self._fail("trailer section not ended by CRLF")
                self._state = _S_DONE
                return i + 1
            else:   # a chunk extension
                self._ext_byte(c)
                i += 1
        return i


# -- response heads ---------------------------------------------------------------------

_STATUS_LINE = re.compile(rb"HTTP/1\.([0-9]) ([0-9]{3})(?: .*)?", re.DOTALL)


def _list_elements(value: bytes | bytearray) -> list[bytes | bytearray]:
    """Non-empty, OWS-stripped elements of a comma-separated header value."""
    return [e for e in (part.strip(_OWS) for part in value.split(b",")) if e]


_HOP_NAMES = (b"connection", b"keep-alive", b"proxy-connection", b"upgrade")
# Never cut, even when Connection names them: the body is forwarded in their framing.
_FRAMING_NAMES = (b"content-length", b"transfer-encoding")


def parse_response_head(
        head: bytes) -> tuple[int, int, int, bool, bool, tuple[int, ...]]:
    """(status, minor, content_length, chunked, close, cut) of a response head.

    cut: the hop-by-hop lines of a final (>= 200) head, as flat (start, end) offset
    pairs, ascending, each the line with the CRLF before it; () when there are none.

    Raises:
        ValueError: malformed status line or header line, bare CR/LF, obs-fold,
            conflicting Content-Length, or Content-Length with Transfer-Encoding.
    """
    data = _as_bytes(head)
    if not data.endswith(b"\r\n\r\n"):
        raise ValueError("response head must end with CRLF CRLF")
    lines = data[:-4].split(b"\r\n")
    status_line = lines[0]
    if b"\r" in status_line or b"\n" in status_line:
        raise ValueError("bare CR or LF in response head")
    m = _STATUS_LINE.fullmatch(status_line)
    if m is None or int(m.group(2)) < 100:
        raise ValueError("malformed status line")
    minor, status = int(m.group(1)), int(m.group(2))
    length = -1
    te_present = conn_close = conn_keep_alive = False
    last_coding: bytes | bytearray = b""
    named: set[bytes] = set()    # Connection tokens: the headers they name are cut too
    spans: list[tuple[int, int, bytes]] = []   # (start, end, lower-case name) of each line
    at = len(status_line) + 2
    for line in lines[1:]:
        if b"\r" in line or b"\n" in line:
            raise ValueError("bare CR or LF in response head")
        if not line:
            raise ValueError("header line without a colon")
        if line[0] in _OWS:
            raise ValueError("obsolete line folding in response head")
        colon = line.find(b":")
        if colon <= 0:
            raise ValueError("header line without a colon")
        name = line[:colon]
        if b" " in name or b"\t" in name:
            raise ValueError("whitespace before colon in response header")
        name = name.lower()
        spans.append((at - 2, at + len(line), bytes(name)))
        at += len(line) + 2
        value = line[colon + 1:].strip(_OWS)
        if name == b"content-length":
            if not (1 <= len(value) <= 18 and value.isdigit()):
                raise ValueError("invalid Content-Length")
            if length >= 0 and int(value) != length:
                raise ValueError("conflicting Content-Length headers")
            length = int(value)
        elif name == b"transfer-encoding":
            te_present = True
            codings = _list_elements(value)
            if codings:
                last_coding = codings[-1]
        elif name == b"connection":
            for token in _list_elements(value):
                token = token.lower()
                named.add(bytes(token))
                if token == b"close":
                    conn_close = True
                elif token == b"keep-alive":
                    conn_keep_alive = True
    if te_present and length >= 0:
        raise ValueError("both Transfer-Encoding and Content-Length in response head")
    chunked = last_coding.lower() == b"chunked"
    cut: tuple[int, ...] = ()
    if status >= 200:   # 1xx heads (101 too) pass untouched
        cut = tuple(x for start, end, name in spans
                    if name in _HOP_NAMES or (name in named and name not in _FRAMING_NAMES)
                    for x in (start, end))
    # Not chunked but Transfer-Encoding: the body runs to the close (RFC 9112 6.3).
    return (status, minor, length, chunked,
            conn_close or (minor == 0 and not conn_keep_alive) or (te_present and not chunked),
            cut)


def splice_head(buf: bytes | bytearray | memoryview, start: int, stop: int, head_at: int,
                head_end: int, cut: tuple[int, ...], insert: bytes) -> bytes:
    """buf[start:stop] with the head buf[head_at:head_end] rewritten in one allocation.

    The spans of cut (offset pairs into the head, as parse_response_head gives them)
    are removed and insert is placed right before the head's final CRLF.

    Raises:
        ValueError: positions out of order or outside buf; a bad cut.
    """
    data = _as_view(buf)
    extra = bytes(_as_view(insert))
    start, stop, head_at, head_end = map(operator.index, (start, stop, head_at, head_end))
    if not isinstance(cut, tuple):
        raise TypeError("cut must be a tuple")
    if not (0 <= start <= head_at and head_at + 4 <= head_end <= stop <= len(data)):
        raise ValueError("splice_head: positions out of order")
    if len(cut) % 2:
        raise ValueError("splice_head: cut must hold (start, end) pairs")
    prev = 0
    for i in range(0, len(cut), 2):
        a, b = operator.index(cut[i]), operator.index(cut[i + 1])
        if not (prev <= a <= b <= head_end - head_at - 2):
            raise ValueError("splice_head: cut spans out of order")
        prev = b
    pieces = []
    pos = start
    for i in range(0, len(cut), 2):
        pieces.append(data[pos:head_at + cut[i]])
        pos = head_at + cut[i + 1]
    pieces += [data[pos:head_end - 2], extra, data[head_end - 2:stop]]
    return b"".join(pieces)


# -- request heads: the strict fast path ----------------------------------------------

REQ_CONN_CLOSE = 1
REQ_CONN_KEEP_ALIVE = 2
REQ_CONN_HOP = 4

_TCHARS = rb"-!#$%&'*+.^_`|~0-9A-Za-z"
# Upper-case token methods and origin-form targets only; the rest take the slow path.
_REQUEST_LINE = re.compile(rb"([-!#$%&'*+.^_`|~0-9A-Z]+) (/[\x21-\x7e]*) HTTP/1\.([01])")
_PLAIN_HOST = re.compile(rb"[-A-Za-z0-9._~!$&'()*+,;=]*(?::[0-9]*)?")
_FIELD_LINE = re.compile(rb"([" + _TCHARS + rb"]+):[ \t]*((?:[\x21-\x7e\x80-\xff]|[ \t])*?)[ \t]*")
_OTHER_HOP = (b"keep-alive", b"proxy-connection", b"te", b"trailer")


def _conn_tokens(value: bytes) -> int:
    flags = 0
    for token in value.split(b","):
        token = token.strip(_OWS).lower()
        if not token:
            continue
        if token == b"close":
            flags |= REQ_CONN_CLOSE
        elif token == b"keep-alive":
            flags |= REQ_CONN_KEEP_ALIVE
        else:
            return -1
    return flags


def parse_request_fast(
    head: bytes,
) -> tuple[bytes, bytes, int, int, bool, int, bytes | None] | None:
    """(method, target, minor, content_length, chunked, conn_flags, forward), or None.

    See _core.pyi.
    """
    data = bytes(_as_bytes(head))
    if len(data) < 18 or not data.endswith(b"\r\n\r\n"):
        return None
    lines = data[:-4].split(b"\r\n")
    m = _REQUEST_LINE.fullmatch(lines[0])
    if m is None:
        return None
    method, target, minor = m.group(1), m.group(2), int(m.group(3))
    if method in (b"CONNECT", b"PRI"):
        return None   # refused by the slow path
    hosts = flags = 0
    length = -1
    chunked = False
    kept = [lines[0]]
    for line in lines[1:]:
        f = _FIELD_LINE.fullmatch(line)
        if f is None:
            return None
        name, value = f.group(1).lower(), f.group(2)
        if name == b"host":
            if _PLAIN_HOST.fullmatch(value) is None:
                return None
            hosts += 1
        elif b"_" in name and name.replace(b"_", b"-") in (b"content-length", b"transfer-encoding"):
            return None   # Content_Length, Transfer_Encoding: refused by the slow path
        elif name == b"content-length":
            if length >= 0 or not (1 <= len(value) <= 18 and value.isdigit()):
                return None
            length = int(value)
        elif name == b"transfer-encoding":
            if chunked or value.lower() != b"chunked":
                return None
            chunked = True
        elif name == b"connection":
            tokens = _conn_tokens(value)
            if tokens < 0:
                return None
            flags |= tokens | REQ_CONN_HOP
            continue
        elif name in _OTHER_HOP:
            flags |= REQ_CONN_HOP
            continue
        elif name == b"upgrade":
            return None
        kept.append(line)
    if (chunked and (length >= 0 or minor == 0)) or hosts > 1 or (minor == 1 and hosts == 0):
        return None
    dropped = len(lines) - len(kept)
    if dropped > 16:
        return None
    forward = b"\r\n".join(kept) + b"\r\n\r\n" if dropped else None
    return method, target, minor, length, chunked, flags, forward


# -- response framing ----------------------------------------------------------------------

class ResponseError(Exception):
    """An upstream response that cannot be framed (answered as 502 when nothing was sent)."""


# Response body framing modes.
_NONE, _LENGTH, _CHUNKED, _UNTIL_CLOSE = range(4)
MAX_RESPONSE_HEAD = 65536

# The proxy's own hop-by-hop line in a response it forwards (the primary's are cut).
CLOSE_LINE = b"connection: close\r\n"
# An HTTP/1.0 response persists only when it says so (RFC 9112 9.3): the primary's
# keep-alive was cut, so the proxy says it for the client connection it keeps.
KEEP_ALIVE_LINE = b"connection: keep-alive\r\n"


class ResponseFramer:
    """Frames one upstream response; `feed` returns the bytes to pass on now.

    Interim 1xx responses (100 Continue) are passed on and framing continues with the
    final response, except to an HTTP/1.0 client, which must not get them (RFC 9110
    section 15.2): `drop_interim`. A 101 ends the response: the connection becomes a tunnel,
    when the request asked for one (`upgrade`); otherwise a 101 is a ResponseError.

    With `rewrite` (the client side), the final head's hop-by-hop lines are the proxy's
    own: the primary's are cut, and `connection: close` is added when the proxy closes
    the client connection after this response: when `client_closing` (which the owner
    sets before each feed while the head is pending: a plain attribute, not a callback,
    since this runs for every response) or when the body runs to the primary's close.
    `close_client` then says so. 1xx heads pass as they are. Without `rewrite` (a
    shadow's response, which nobody reads) heads pass untouched.
    """

    __slots__ = ("head_only", "drop_interim", "status", "done", "close", "upgraded",
                 "close_client", "client_closing", "_rewrite", "_head", "_mode", "_remaining",
                 "_scanner", "_minor", "_cut", "_upgrade", "until_close")

    def __init__(self, head_request: bool, drop_interim: bool = False,
                 rewrite: bool = False, upgrade: bool = False) -> None:
        self.head_only = head_request
        self._upgrade = upgrade  # the request asked to switch protocols: a 101 may come
        self.drop_interim = drop_interim
        self.status = 0          # final status, 0 until its head is complete
        self.done = False
        self.close = False       # the upstream connection cannot be reused
        self.upgraded = False
        self.close_client = False  # the forwarded head announced `connection: close`
        self.client_closing = False  # set by the owner: it will close after this response
        self._rewrite = rewrite
        self._head = b""
        self._mode = _NONE
        self._remaining = 0
        self._scanner: ChunkedScanner | None = None
        self._minor = 1
        self._cut: tuple[int, ...] = ()
        # The body is delimited by the upstream's close (no length, not chunked). An
        # attribute, not a property: read for every response.
        self.until_close = False

    def feed(self, data: bytes) -> bytes:
        """Consume upstream bytes; return the prefix that belongs to this response.

        Raises:
            ResponseError: the response is malformed.
        """
        if self.done:
            if data:
                self.close = True
            return b""
        if self.status:
            n = self._feed_body(data, 0)
            return data if n == len(data) else data[:n]
        return self._feed_head(data)

    def _feed_head(self, data: bytes) -> bytes:
        buf = self._head + data if self._head else data
        pos = start = head_at = 0  # start: where the bytes to pass on begin
        while not self.status:
            end = find_head_end(buf, pos)
            if end < 0:
                if len(buf) - pos > MAX_RESPONSE_HEAD:
                    raise ResponseError("response head too large")
                self._head = buf[pos:]
                return buf[start:pos]  # interim responses complete so far
            self._start_body(buf if pos == 0 and end == len(buf) else buf[pos:end])
            head_at, pos = pos, end
            if not self.status and self.drop_interim:
                start = pos
        self._head = b""
        if self.upgraded:
            return buf[start:]  # what follows a 101 is already tunnel data
        head_end = pos
        if not self.done:
            pos += self._feed_body(buf, pos)
        elif pos < len(buf):
            self.close = True
        if self._rewrite:
            self.close_client = close = self.client_closing or self.until_close
            insert = CLOSE_LINE if close else KEEP_ALIVE_LINE if self._minor == 0 else b""
            if self._cut or insert:  # the head changes: one new buffer, head and body
                return splice_head(buf, start, pos, head_at, head_end, self._cut, insert)
        return buf if start == 0 and pos == len(buf) else buf[start:pos]

    def _start_body(self, head: bytes) -> None:
        try:
            status, minor, length, chunked, close, cut = parse_response_head(head)
        except ValueError as exc:
            raise ResponseError(f"bad response head: {exc}") from None
        if 100 <= status < 200 and status != 101:
            return  # interim response: passed on; the final one follows
        self.status = status
        self.close = close
        self._minor = minor
        self._cut = cut
        if status == 101:
            if not self._upgrade:
                # RFC 9110 15.2.2: never without an Upgrade request. Tunnelling anyway
                # would pass the client's next requests on unchecked.
                raise ResponseError("101 Switching Protocols without an Upgrade request")
            self.upgraded = self.close = self.done = True
        elif self.head_only or status in (204, 304):
            self.done = True
            # A 204 that announces a body (or a 304 with a chunked one) may well send
            # it: those bytes would be read as the next response on a reused connection.
            if (status == 204 and (length > 0 or chunked)) or (status == 304 and chunked):
                self.close = True
        elif chunked:
            self._mode = _CHUNKED
            self._scanner = ChunkedScanner()
        elif length >= 0:
            self._mode = _LENGTH
            self._remaining = length
            self.done = length == 0
        else:
            self._mode = _UNTIL_CLOSE
            self.close = self.until_close = True

    def _feed_body(self, data: bytes, start: int) -> int:
        mode = self._mode
        if mode == _LENGTH:
            n = min(self._remaining, len(data) - start)
            self._remaining -= n
            if self._remaining == 0:
                self.done = True
                if start + n < len(data):
                    self.close = True
            return n
        if mode == _CHUNKED:
            assert self._scanner is not None
            try:
                n = self._scanner.feed(data, start)
            except ChunkedError as exc:
                raise ResponseError(f"bad chunked response: {exc}") from None
            if self._scanner.done:
                self.done = True
                if start + n < len(data):
                    self.close = True
            return n
        return len(data) - start  # until close

    def eof(self) -> None:
        """The upstream closed its side.

        Raises:
            ResponseError: the response was not complete.
        """
        if self.done:
            return
        if self.status and self._mode == _UNTIL_CLOSE:
            self.done = True
            return
        raise ResponseError("upstream closed the connection before the response ended")


# -- routes -----------------------------------------------------------------------------

def match_route(target: bytes, prefixes: tuple[bytes, ...], any_case: bool = False) -> int:
    """First index i whose prefixes[i] the target's path starts with, -1 for none, or -2
    when the path needs normalising first (paths.route_path does it), or has a capital
    letter while any_case (a route compares in any case)."""
    if type(target) is not bytes or type(prefixes) is not tuple:   # exactly, as the Cython types
        raise TypeError("match_route takes bytes and a tuple of bytes")
    if target[:1] != b"/":   # not origin-form: absolute-form, "*", empty
        return -2
    query = target.find(b"?")   # the query is not matched
    path = target if query < 0 else target[:query]
    if b"#" in path:   # two readings (paths.py), Python's to weigh
        return -2
    if b"%" in path or b"\\" in path or b";" in path or b"/." in path or b"//" in path:
        return -2
    if any_case and path != path.lower():
        return -2
    for i, prefix in enumerate(prefixes):
        if not isinstance(prefix, bytes):
            raise TypeError(f"route prefix must be bytes, not {type(prefix).__name__}")
        if path.startswith(prefix):
            return i
    return -1
