# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""The proxy's per-request hot path, compiled: sampling, head scans, Host rewrite, body framing.

Pure functions over bytes-like buffers (read through the buffer protocol, never sliced)
plus one small state machine (ChunkedScanner). No I/O, no asyncio; the only state is
the PRNG's. `_core_py.py` is the line-for-line behavioural twin and the oracle of the
parity tests (tests/unit/test_core.py); change both or neither.
"""

import os
from operator import index as _index

from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize
from cpython.long cimport PyLong_Check
from libc.math cimport isnan, nearbyint
from libc.stdint cimport int64_t, uint64_t
from libc.string cimport memchr, memcmp, memcpy

cdef extern from *:
    """
    /* splitmix64 (Steele, Lea, Flood 2014) and FNV-1a 64-bit constants. */
    #define FM_SM64_GAMMA 0x9E3779B97F4A7C15ULL
    #define FM_SM64_MUL1  0xBF58476D1CE4E5B9ULL
    #define FM_SM64_MUL2  0x94D049BB133111EBULL
    #define FM_FNV_OFFSET 0xcbf29ce484222325ULL
    #define FM_FNV_PRIME  0x100000001b3ULL
    """
    const uint64_t FM_SM64_GAMMA
    const uint64_t FM_SM64_MUL1
    const uint64_t FM_SM64_MUL2
    const uint64_t FM_FNV_OFFSET
    const uint64_t FM_FNV_PRIME

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

cdef enum:
    E_OK = 0
    E_BARE_LF = 1
    E_BARE_CR = 2
    E_CTL = 3
    E_OBS_FOLD = 4
    E_SPACE_BEFORE_COLON = 5
    E_NO_COLON = 6

HEAD_OK = E_OK
HEAD_ERR_BARE_LF = E_BARE_LF
HEAD_ERR_BARE_CR = E_BARE_CR
HEAD_ERR_CTL = E_CTL
HEAD_ERR_OBS_FOLD = E_OBS_FOLD
HEAD_ERR_SPACE_BEFORE_COLON = E_SPACE_BEFORE_COLON
HEAD_ERR_NO_COLON = E_NO_COLON

HEAD_ERR_MESSAGES = {
    HEAD_ERR_BARE_LF: "bare LF line ending",
    HEAD_ERR_BARE_CR: "bare CR in head",
    HEAD_ERR_CTL: "control character in head",
    HEAD_ERR_OBS_FOLD: "obsolete line folding",
    HEAD_ERR_SPACE_BEFORE_COLON: "whitespace before colon in header",
    HEAD_ERR_NO_COLON: "header line without a colon",
}

# Byte classes for check_head; 0 is "nothing to look at", so the scan skips runs of it.
cdef enum:
    K_PLAIN = 0
    K_CR = 1
    K_LF = 2
    K_CTL = 3
    K_COLON = 4
    K_WS = 5

cdef unsigned char _HEAD_CLASS[256]
cdef unsigned char _HEX[256]       # value of a hex digit, 255 for anything else
cdef unsigned char _LOWER[256]     # ASCII-only lowercasing, as bytes.lower()
cdef unsigned char _TCHAR[256]     # RFC 9110 token characters
cdef unsigned char _FVCHAR[256]    # field-value bytes other than SP/HT: VCHAR and obs-text
cdef unsigned char _HOSTCHAR[256]  # RFC 3986 unreserved and sub-delims: a plain reg-name


cdef void _init_tables() noexcept:
    cdef int c
    for c in range(256):
        _HEAD_CLASS[c] = K_CTL if (c < 0x20 or c == 0x7f) else K_PLAIN
        _HEX[c] = 255
        _LOWER[c] = c + 32 if 0x41 <= c <= 0x5a else c
    _HEAD_CLASS[0x0d] = K_CR
    _HEAD_CLASS[0x0a] = K_LF
    _HEAD_CLASS[0x09] = K_WS
    _HEAD_CLASS[0x20] = K_WS
    _HEAD_CLASS[0x3a] = K_COLON
    for c in range(10):
        _HEX[0x30 + c] = c
    for c in range(6):
        _HEX[0x41 + c] = 10 + c
        _HEX[0x61 + c] = 10 + c

cdef void _init_request_tables() noexcept:
    cdef int c
    cdef const char* extra = b"!#$%&'*+-.^_`|~"
    for c in range(256):
        _TCHAR[c] = (0x30 <= c <= 0x39) or (0x41 <= c <= 0x5a) or (0x61 <= c <= 0x7a)
        _FVCHAR[c] = (0x21 <= c <= 0x7e) or c >= 0x80
    cdef const char* host_extra = b"-._~!$&'()*+,;="
    for c in range(15):
        _TCHAR[<unsigned char>extra[c]] = 1
    for c in range(256):
        _HOSTCHAR[c] = (0x30 <= c <= 0x39) or (0x41 <= c <= 0x5a) or (0x61 <= c <= 0x7a)
    for c in range(15):
        _HOSTCHAR[<unsigned char>host_extra[c]] = 1

_init_request_tables()

_init_tables()


cdef inline bint _is_ows(unsigned char c) noexcept:
    return c == 0x20 or c == 0x09


cdef inline bint _eq_lower(const unsigned char* p, Py_ssize_t n,
                           const char* lit, Py_ssize_t lit_n) noexcept:
    """p[:n].lower() == lit, where lit is lowercase ASCII."""
    cdef Py_ssize_t k
    if n != lit_n:
        return False
    for k in range(n):
        if _LOWER[p[k]] != <unsigned char>lit[k]:
            return False
    return True


cdef inline Py_ssize_t _list_element(const unsigned char* p, Py_ssize_t vs, Py_ssize_t ve,
                                     Py_ssize_t* ts, Py_ssize_t* te) noexcept:
    """The first element of the comma list p[vs:ve], OWS-trimmed, as [*ts, *te).

    Returns where the next element starts (past ve when this was the last).
    """
    cdef Py_ssize_t a = vs, b = vs
    while b < ve and p[b] != c',':
        b += 1
    cdef Py_ssize_t following = b + 1
    while a < b and _is_ows(p[a]):
        a += 1
    while b > a and _is_ows(p[b - 1]):
        b -= 1
    ts[0] = a
    te[0] = b
    return following


# -- sampling ---------------------------------------------------------------------------

def percent_to_ppm(double percent):
    """Percent (0..100, float) to parts per million, rounded half-even, clamped."""
    cdef double x
    if isnan(percent):
        raise ValueError("percent is NaN")
    x = percent * 10000.0
    if x <= 0.0:
        return 0
    if x >= 1000000.0:
        return 1000000
    return <long long>nearbyint(x)


def sample(ppm, draw):
    """True for `ppm` draws in a million: draw % 1_000_000 < ppm."""
    cdef uint64_t d
    cdef long long limit
    if not (PyLong_Check(ppm) and PyLong_Check(draw)):
        ppm, draw = _index(ppm), _index(draw)   # as C conversion would truncate a float
    d = draw
    limit = ppm
    return <long long>(d % 1000000) < limit


cdef uint64_t _rng_state = 0


def seed_random(seed=None):
    """Set the PRNG state (an int, masked to 64 bits), or reseed from os.urandom."""
    global _rng_state
    if seed is None:
        seed = int.from_bytes(os.urandom(8), "little")
    _rng_state = <uint64_t>(seed & 0xFFFFFFFFFFFFFFFF)


def random_u64():
    """Next splitmix64 output: an unsigned 64-bit int. Not for cryptography."""
    global _rng_state
    cdef uint64_t z
    _rng_state += FM_SM64_GAMMA
    z = _rng_state
    z = (z ^ (z >> 30)) * FM_SM64_MUL1
    z = (z ^ (z >> 27)) * FM_SM64_MUL2
    return z ^ (z >> 31)


seed_random()
# A forked worker would otherwise replay its parent's sequence, in step with its siblings.
os.register_at_fork(after_in_child=seed_random)


def key_hash(key):
    """FNV-1a 64-bit of key: stable across processes, runs and both implementations."""
    cdef Py_buffer v
    cdef const unsigned char* p
    cdef Py_ssize_t i
    cdef uint64_t h = FM_FNV_OFFSET
    PyObject_GetBuffer(key, &v, PyBUF_SIMPLE)
    try:
        p = <const unsigned char*>v.buf
        for i in range(v.len):
            h = (h ^ p[i]) * FM_FNV_PRIME
    finally:
        PyBuffer_Release(&v)
    return h


# -- request heads ----------------------------------------------------------------------

cdef Py_ssize_t _find_crlfcrlf(const unsigned char* base, Py_ssize_t start,
                               Py_ssize_t n) noexcept:
    """Index of the first CRLFCRLF at or after start, or -1."""
    cdef const unsigned char* p = base + start
    cdef const unsigned char* last = base + n - 3   # a match must start before this
    cdef const unsigned char* q
    while p < last:
        q = <const unsigned char*>memchr(p, 0x0d, last - p)
        if q == NULL:
            return -1
        if q[1] == 0x0a and q[2] == 0x0d and q[3] == 0x0a:
            return q - base
        p = q + 1
    return -1


def find_head_end(buf, Py_ssize_t start=0):
    """Index just past the first CRLFCRLF at or after start (negative: 0), or -1."""
    cdef Py_buffer v
    cdef Py_ssize_t i
    PyObject_GetBuffer(buf, &v, PyBUF_SIMPLE)
    try:
        if start < 0:
            start = 0
        if v.len - start < 4:
            return -1
        i = _find_crlfcrlf(<const unsigned char*>v.buf, start, v.len)
        return -1 if i < 0 else i + 4
    finally:
        PyBuffer_Release(&v)


cdef int _check_head(const unsigned char* p, Py_ssize_t n) noexcept:
    # One pass in byte order; the first offending byte decides. `in_name` holds from
    # the start of a header line (any line after the request line) to its colon.
    cdef Py_ssize_t i = 0
    cdef Py_ssize_t line_start = 0
    cdef bint in_name = False
    cdef bint ws = False
    cdef unsigned char k
    while i < n:
        k = _HEAD_CLASS[p[i]]
        if k == K_PLAIN:
            i += 1
            continue
        if k == K_CR:
            if i + 1 >= n or p[i + 1] != 0x0a:
                return E_BARE_CR
            if in_name and i > line_start:
                return E_NO_COLON
            i += 2
            line_start = i
            in_name = True
            ws = False
            continue
        if k == K_LF:
            return E_BARE_LF   # a LF after a CR was consumed with it above
        if k == K_CTL:
            return E_CTL
        if in_name:
            if k == K_WS:
                if i == line_start:
                    return E_OBS_FOLD
                ws = True
            elif k == K_COLON:
                if i == line_start:
                    return E_NO_COLON
                if ws:
                    return E_SPACE_BEFORE_COLON
                in_name = False
        i += 1
    if in_name and n > line_start:
        return E_NO_COLON   # an unterminated last line (the caller broke the contract)
    return E_OK


def check_head(head):
    """HEAD_OK, or the HEAD_ERR_* code of the first offending byte of a request head."""
    cdef Py_buffer v
    PyObject_GetBuffer(head, &v, PyBUF_SIMPLE)
    try:
        return _check_head(<const unsigned char*>v.buf, v.len)
    finally:
        PyBuffer_Release(&v)


cdef Py_ssize_t _host_suffix_at(const unsigned char* p, Py_ssize_t n) noexcept:
    """Where host_suffix goes (end of the host name in the first Host value), or -1."""
    cdef Py_ssize_t i = 0, j, vs, e, ls, rs, c
    cdef const unsigned char* q
    vs = -1
    while i < n:
        q = <const unsigned char*>memchr(p + i, 0x0d, n - i)
        if q == NULL:
            return -1
        j = q - p
        if j + 7 > n:
            return -1
        if (q[1] == 0x0a and _LOWER[q[2]] == c'h' and _LOWER[q[3]] == c'o'
                and _LOWER[q[4]] == c's' and _LOWER[q[5]] == c't' and q[6] == c':'):
            vs = j + 7
            break
        i = j + 1
    if vs < 0:
        return -1
    e = vs
    while not (p[e] == 0x0d and p[e + 1] == 0x0a):   # the head ends in CRLFCRLF
        e += 1
    ls = vs
    while ls < e and _is_ows(p[ls]):
        ls += 1
    rs = e
    while rs > ls and _is_ows(p[rs - 1]):
        rs -= 1
    if ls == rs or p[ls] == c'[':
        return -1   # empty, or an IPv6 literal: left alone
    c = ls
    while c < rs and p[c] != c':':
        c += 1
    return -1 if c == ls else c


def shadow_head(head, host_suffix, extra):
    """The head with host_suffix after the first Host's host name and extra before the end.

    Raises:
        ValueError: head does not end with CRLFCRLF.
    """
    cdef Py_buffer hv, sv, ev
    cdef const unsigned char* p
    cdef char* out
    cdef Py_ssize_t n, at, body_end, suffix_n
    PyObject_GetBuffer(head, &hv, PyBUF_SIMPLE)
    try:
        PyObject_GetBuffer(host_suffix, &sv, PyBUF_SIMPLE)
        try:
            PyObject_GetBuffer(extra, &ev, PyBUF_SIMPLE)
            try:
                p = <const unsigned char*>hv.buf
                n = hv.len
                if n < 4 or memcmp(p + n - 4, b"\r\n\r\n", 4) != 0:
                    raise ValueError("head must end with CRLF CRLF")
                body_end = n - 2
                at = _host_suffix_at(p, n) if sv.len > 0 else -1
                suffix_n = sv.len if at >= 0 else 0
                result = PyBytes_FromStringAndSize(NULL, n + suffix_n + ev.len)
                out = PyBytes_AS_STRING(result)
                if at >= 0:
                    memcpy(out, p, at)
                    memcpy(out + at, sv.buf, suffix_n)
                    memcpy(out + at + suffix_n, p + at, body_end - at)
                else:
                    memcpy(out, p, body_end)
                out += body_end + suffix_n
                memcpy(out, ev.buf, ev.len)
                memcpy(out + ev.len, b"\r\n", 2)
                return result
            finally:
                PyBuffer_Release(&ev)
        finally:
            PyBuffer_Release(&sv)
    finally:
        PyBuffer_Release(&hv)


# -- chunked bodies ---------------------------------------------------------------------

cdef enum:
    S_SIZE = 0          # chunk-size digits, then ";" or CR
    S_EXT_START = 1     # after ";": an extension name must follow
    S_SIZE_LF = 2
    S_DATA = 3
    S_DATA_CR = 4
    S_DATA_LF = 5
    S_TRAILER_START = 6  # a trailer line, or the CR of the final empty line
    S_TNAME = 7          # a trailer field name, up to its colon
    S_TRAILER_LF = 8
    S_FINAL_LF = 9
    S_DONE = 10
    S_EXT_NAME = 11     # ext-name token
    S_EXT_VAL = 12      # after "=": a token or a quoted string must follow
    S_EXT_TOKEN = 13    # ext-val token
    S_EXT_QUOTED = 14   # inside a quoted string
    S_EXT_QPAIR = 15    # after a backslash in a quoted string
    S_EXT_CLOSED = 16   # after the closing quote: ";" or CR
    S_TVALUE = 17       # a trailer field value, up to its CR

cdef enum:
    TNAME_KEEP = 24     # longer names cannot be one of the forbidden ones

# Chunk sizes past this are refused: nginx's off_t bound, and a number no back end
# can wrap around (a 64-bit wrap turns 2**64 + 20 into 20, and the rest into a request).
MAX_CHUNK_SIZE = 0x7FFFFFFFFFFFFFFF
# Trailer fields that would frame, route or control the connection if a back end
# merged them into the head (RFC 9110 section 6.5.1); "_" is read as "-" as CGI does.
FORBIDDEN_TRAILERS = (
    b"content-length", b"transfer-encoding", b"host", b"connection", b"keep-alive",
    b"proxy-connection", b"te", b"trailer", b"upgrade",
)


cdef inline bint _qdtext(unsigned char c) noexcept:
    """RFC 9110 qdtext: HTAB, SP, 0x21, 0x23-0x5B, 0x5D-0x7E, obs-text."""
    return c == 0x09 or c == 0x20 or c == 0x21 or (0x23 <= c <= 0x5b) or (0x5d <= c <= 0x7e) or c >= 0x80


cdef inline bint _qpair_char(unsigned char c) noexcept:
    """What may follow a backslash in a quoted string: HTAB, SP, VCHAR, obs-text."""
    return c == 0x09 or c == 0x20 or (0x21 <= c <= 0x7e) or c >= 0x80


cdef bint _forbidden_trailer(const unsigned char* name, Py_ssize_t n):
    """name (lowercased, "_" as "-") is one of FORBIDDEN_TRAILERS."""
    cdef bytes b = PyBytes_FromStringAndSize(<const char*>name, n)
    return b in FORBIDDEN_TRAILERS


class ChunkedError(ValueError):
    """A chunked body that RFC 9112 section 7.1 does not allow, or over a limit."""


cdef class ChunkedScanner:
    """Strict incremental scanner of one chunked body (RFC 9112 section 7.1).

    feed() reports how many bytes belong to the body, so the caller can forward them
    untouched; it never consumes past the CRLF that ends the trailer section.
    Strict where parsers are known to differ: a chunk size of at most 16 hex digits and
    at most 2**63 - 1, chunk extensions by the grammar with no whitespace, and trailer
    lines checked like header lines, framing and routing fields refused.
    """

    cdef int _state
    cdef int _digits
    cdef bint _failed
    cdef uint64_t _size
    cdef Py_ssize_t _line_len
    cdef Py_ssize_t _trailer_len
    cdef Py_ssize_t _max_line
    cdef Py_ssize_t _max_trailers
    cdef Py_ssize_t _name_len
    cdef unsigned char _name[TNAME_KEEP]

    def __init__(self, Py_ssize_t max_line=4096, Py_ssize_t max_trailers=16384):
        if max_line < 0 or max_trailers < 0:
            raise ValueError("max_line and max_trailers must be >= 0")
        self._max_line = max_line
        self._max_trailers = max_trailers
        self._state = S_SIZE
        self._digits = 0
        self._failed = False
        self._size = 0
        self._line_len = 0
        self._trailer_len = 0
        self._name_len = 0

    @property
    def done(self):
        """True once the whole body, trailers and final CRLF included, was consumed."""
        return self._state == S_DONE

    def feed(self, buf, Py_ssize_t start=0):
        """Consume buf[start:]; return how many of its bytes belong to the body.

        Raises:
            ChunkedError: malformed body or a limit exceeded (and on every later call).
            ValueError: start is outside 0..len(buf).
        """
        cdef Py_buffer v
        PyObject_GetBuffer(buf, &v, PyBUF_SIMPLE)
        try:
            if start < 0 or start > v.len:
                raise ValueError("start out of range")
            return self._feed(<const unsigned char*>v.buf, start, v.len)
        finally:
            PyBuffer_Release(&v)

    cdef Py_ssize_t _feed(self, const unsigned char* p, Py_ssize_t start,
                          Py_ssize_t n) except -1:
        """feed() on a pointer, for ResponseFramer: bytes of p[start:n] in the body."""
        if self._failed:
            raise ChunkedError("chunked body already failed")
        if self._state == S_DONE:
            return 0
        return self._scan(p, start, n) - start

    cdef int _fail(self, str message) except -1:
        self._failed = True
        raise ChunkedError(message)

    cdef int _ext_byte(self, unsigned char c) except -1:
        """One byte of a chunk extension (after the first ";"); CR ends the line."""
        cdef int state = self._state
        if state == S_EXT_START:
            if not _TCHAR[c]:
                self._fail("empty or invalid chunk extension")
            self._state = S_EXT_NAME
        elif state == S_EXT_NAME or state == S_EXT_TOKEN:
            if _TCHAR[c]:
                pass
            elif c == c';':
                self._state = S_EXT_START
            elif c == c'=' and state == S_EXT_NAME:
                self._state = S_EXT_VAL
            elif c == 0x0d:   # the CR is not part of the line's length
                self._state = S_SIZE_LF
                return 0
            else:
                self._fail("invalid byte in chunk extension")
        elif state == S_EXT_VAL:
            if _TCHAR[c]:
                self._state = S_EXT_TOKEN
            elif c == c'"':
                self._state = S_EXT_QUOTED
            else:
                self._fail("chunk extension without a value after =")
        elif state == S_EXT_QUOTED:
            if c == c'"':
                self._state = S_EXT_CLOSED
            elif c == c'\\':
                self._state = S_EXT_QPAIR
            elif not _qdtext(c):
                self._fail("unterminated or invalid quoted string in chunk extension")
        elif state == S_EXT_QPAIR:
            if not _qpair_char(c):
                self._fail("invalid quoted pair in chunk extension")
            self._state = S_EXT_QUOTED
        else:   # S_EXT_CLOSED
            if c == c';':
                self._state = S_EXT_START
            elif c == 0x0d:
                self._state = S_SIZE_LF
                return 0
            else:
                self._fail("invalid byte after a quoted chunk extension")
        self._line_len += 1
        if self._line_len > self._max_line:
            self._fail("chunk size line too long")
        return 0

    cdef int _trailer_byte(self, unsigned char c) except -1:
        """One byte of a trailer line, from its first byte to its CR."""
        cdef int state = self._state
        if state == S_TRAILER_START:
            if c == 0x0d:
                self._state = S_FINAL_LF
                return 0
            if c == 0x0a:
                self._fail("bare LF in trailer section")
            if c == 0x20 or c == 0x09:
                self._fail("obsolete line folding in trailer section")
            if not _TCHAR[c]:
                self._fail("invalid trailer field name")
            self._state = S_TNAME
            self._name_len = 0
        if self._state == S_TNAME:
            if _TCHAR[c]:
                if self._name_len < TNAME_KEEP:
                    self._name[self._name_len] = c'-' if c == c'_' else _LOWER[c]
                self._name_len += 1
            elif c == c':':
                if (self._name_len <= TNAME_KEEP
                        and _forbidden_trailer(self._name, self._name_len)):
                    self._fail("framing or routing field in trailer section")
                self._state = S_TVALUE
            elif c == 0x20 or c == 0x09:
                self._fail("whitespace before colon in trailer")
            elif c == 0x0d or c == 0x0a:
                self._fail("trailer line without a colon")
            else:
                self._fail("invalid trailer field name")
        else:   # S_TVALUE
            if c == 0x0d:
                self._state = S_TRAILER_LF
            elif c == 0x0a:
                self._fail("bare LF in trailer section")
            elif not _FVCHAR[c] and c != 0x20 and c != 0x09:
                self._fail("control character in trailer section")
        self._trailer_len += 1
        if self._trailer_len > self._max_trailers:
            self._fail("trailer section too long")
        return 0

    cdef Py_ssize_t _scan(self, const unsigned char* p, Py_ssize_t i,
                          Py_ssize_t n) except -1:
        cdef unsigned char c, d
        cdef uint64_t avail
        cdef int state
        while i < n:
            state = self._state
            if state == S_DATA:   # skipped by arithmetic, whatever its size
                avail = <uint64_t>(n - i)
                if self._size <= avail:
                    i += <Py_ssize_t>self._size
                    self._size = 0
                    self._state = S_DATA_CR
                else:
                    self._size -= avail
                    i = n
                continue
            c = p[i]
            if state == S_TVALUE:   # the bulk of a trailer section: run to the CR
                while _FVCHAR[c] or c == 0x20 or c == 0x09:
                    i += 1
                    self._trailer_len += 1
                    if i == n:
                        break
                    c = p[i]
                if self._trailer_len > self._max_trailers:
                    self._fail("trailer section too long")
                if i == n:
                    break
            if state == S_SIZE:
                d = _HEX[c]
                if d != 255:
                    self._digits += 1
                    if self._digits > 16:
                        self._fail("chunk size has more than 16 hex digits")
                    self._size = (self._size << 4) | d
                    if self._size >> 63:   # past MAX_CHUNK_SIZE
                        self._fail("chunk size past 2**63 - 1")
                elif self._digits == 0:
                    self._fail("invalid chunk size")
                elif c == c';':
                    self._state = S_EXT_START
                elif c == 0x0d:
                    self._state = S_SIZE_LF
                    i += 1
                    continue
                else:
                    self._fail("invalid chunk size")
                self._line_len += 1
                if self._line_len > self._max_line:
                    self._fail("chunk size line too long")
                i += 1
            elif state == S_SIZE_LF:
                if c != 0x0a:
                    self._fail("chunk size line not ended by CRLF")
                i += 1
                self._line_len = 0
                self._digits = 0
                self._state = S_DATA if self._size else S_TRAILER_START
            elif state == S_DATA_CR:
                if c != 0x0d:
                    self._fail("chunk data not followed by CRLF")
                self._state = S_DATA_LF
                i += 1
            elif state == S_DATA_LF:
                if c != 0x0a:
                    self._fail("chunk data not followed by CRLF")
                self._state = S_SIZE
                i += 1
            elif state == S_TRAILER_START or state == S_TNAME or state == S_TVALUE:
                self._trailer_byte(c)
                i += 1
            elif state == S_TRAILER_LF:
                if c != 0x0a:
                    self._fail("bare CR in trailer section")
                self._trailer_len += 1
                if self._trailer_len > self._max_trailers:
                    self._fail("trailer section too long")
                self._state = S_TRAILER_START
                i += 1
            elif state == S_FINAL_LF:
                if c != 0x0a:
                    self._fail("trailer section not ended by CRLF")
                self._state = S_DONE
                return i + 1
            else:   # a chunk extension
                self._ext_byte(c)
                i += 1
        return i


# -- response heads ---------------------------------------------------------------------

cdef inline bint _all_digits(const unsigned char* p, Py_ssize_t n) noexcept:
    cdef Py_ssize_t k
    for k in range(n):
        if p[k] < c'0' or p[k] > c'9':
            return False
    return True


cdef enum:
    MAX_FAST_CUTS = 8   # hop-by-hop lines cut in the scan; more go to _hop_cuts_slow


cdef inline bint _is_hop_name(const unsigned char* p, Py_ssize_t n) noexcept:
    """A response header that is the proxy's own: Connection, Keep-Alive, Proxy-Connection,
    Upgrade (the only caller skips 1xx heads, so a 101's Upgrade is never cut)."""
    return ((n == 10 and (_eq_lower(p, 10, b"connection", 10) or _eq_lower(p, 10, b"keep-alive", 10)))
            or (n == 16 and _eq_lower(p, 16, b"proxy-connection", 16))
            or (n == 7 and _eq_lower(p, 7, b"upgrade", 7)))


cdef inline bint _is_framing_name(const unsigned char* p, Py_ssize_t n) noexcept:
    """Content-Length or Transfer-Encoding: never cut, even when Connection names them,
    since the body is forwarded in the framing they describe."""
    return _eq_lower(p, n, b"content-length", 14) or _eq_lower(p, n, b"transfer-encoding", 17)


cdef bint _named_in(const unsigned char* p, Py_ssize_t s, Py_ssize_t colon, list values):
    """p[s:colon] equals (in any case) a token of one of the Connection values."""
    cdef Py_ssize_t i, vs, ve, ts, te
    for i in range(0, len(values), 2):
        vs = values[i]
        ve = values[i + 1]
        while vs < ve:
            vs = _list_element(p, vs, ve, &ts, &te)
            if te - ts == colon - s:
                for k in range(te - ts):
                    if _LOWER[p[ts + k]] != _LOWER[p[s + k]]:
                        break
                else:
                    return True
    return False


cdef tuple _hop_cuts_slow(const unsigned char* p, Py_ssize_t n):
    """The cut spans of a validated final head whose Connection names other headers
    (or with more than MAX_FAST_CUTS hop-by-hop lines): two passes, no limit."""
    cdef Py_ssize_t s, r, colon, vs, ve
    cdef const unsigned char* q
    values = []
    cuts = []
    cdef int pass_
    for pass_ in range(2):
        s = <const unsigned char*>memchr(p, 0x0d, n) - p + 2   # past the status line
        while s < n - 2:
            r = <const unsigned char*>memchr(p + s, 0x0d, n - s) - p
            colon = <const unsigned char*>memchr(p + s, c':', r - s) - p
            if pass_ == 0:
                if _eq_lower(p + s, colon - s, b"connection", 10):
                    vs = colon + 1
                    ve = r
                    values.append(vs)
                    values.append(ve)
            elif _is_hop_name(p + s, colon - s) or (
                    _named_in(p, s, colon, values) and not _is_framing_name(p + s, colon - s)):
                cuts.append(s - 2)
                cuts.append(r)
            s = r + 2
    return tuple(cuts)


cdef tuple _parse_response(const unsigned char* p, Py_ssize_t n):
    cdef Py_ssize_t s, r, colon, k, vs, ve, ts, te, ms
    cdef const unsigned char* q
    cdef const unsigned char* last_coding = NULL
    cdef Py_ssize_t last_coding_n = 0
    cdef int status = 0, minor = 0, ncut = 0
    cdef Py_ssize_t cut_at[2 * MAX_FAST_CUTS]
    cdef int64_t length = -1, value
    cdef bint te_present = False, conn_close = False, conn_keep_alive = False, chunked
    cdef bint final = False, hop, slow_cuts = False, close_line = False
    if n < 4 or memcmp(p + n - 4, b"\r\n\r\n", 4) != 0:
        raise ValueError("response head must end with CRLF CRLF")
    s = 0
    while True:
        q = <const unsigned char*>memchr(p + s, 0x0d, n - s)   # found: p ends in CRLF
        r = q - p
        if p[r + 1] != 0x0a or memchr(p + s, 0x0a, r - s) != NULL:
            raise ValueError("bare CR or LF in response head")
        if s == 0:
            if not (r >= 12 and memcmp(p, b"HTTP/1.", 7) == 0 and _HEX[p[7]] < 10
                    and p[8] == c' ' and _all_digits(p + 9, 3)
                    and (r == 12 or p[12] == c' ')):
                raise ValueError("malformed status line")
            minor = p[7] - c'0'
            status = (p[9] - c'0') * 100 + (p[10] - c'0') * 10 + (p[11] - c'0')
            if status < 100:
                raise ValueError("malformed status line")
            final = status >= 200   # 1xx heads (101 too) pass untouched: nothing to cut
            s = r + 2
            continue
        if r == s:
            if r == n - 2:
                break
            raise ValueError("header line without a colon")
        if _is_ows(p[s]):
            raise ValueError("obsolete line folding in response head")
        q = <const unsigned char*>memchr(p + s, c':', r - s)
        if q == NULL or q == p + s:
            raise ValueError("header line without a colon")
        colon = q - p
        for k in range(s, colon):
            if _is_ows(p[k]):
                raise ValueError("whitespace before colon in response header")
        vs = colon + 1
        ve = r
        while vs < ve and _is_ows(p[vs]):
            vs += 1
        while ve > vs and _is_ows(p[ve - 1]):
            ve -= 1
        ms = colon - s
        hop = False
        if _eq_lower(p + s, ms, b"content-length", 14):
            if not (1 <= ve - vs <= 18 and _all_digits(p + vs, ve - vs)):
                raise ValueError("invalid Content-Length")
            value = 0
            for k in range(vs, ve):
                value = value * 10 + (p[k] - c'0')
            if length >= 0 and value != length:
                raise ValueError("conflicting Content-Length headers")
            length = value
        elif _eq_lower(p + s, ms, b"transfer-encoding", 17):
            te_present = True
            while vs < ve:   # keep the last non-empty list element
                vs = _list_element(p, vs, ve, &ts, &te)
                if te > ts:
                    last_coding = p + ts
                    last_coding_n = te - ts
        elif _eq_lower(p + s, ms, b"connection", 10):
            hop = True
            while vs < ve:
                vs = _list_element(p, vs, ve, &ts, &te)
                if _eq_lower(p + ts, te - ts, b"keep-alive", 10):
                    conn_keep_alive = True   # names Keep-Alive, which is cut anyway
                elif _eq_lower(p + ts, te - ts, b"close", 5):
                    conn_close = True        # names Close: see close_line
                elif te > ts:
                    # Any other token names a header to cut too (RFC 9110 7.6.1), which
                    # may come before this line: a second pass finds those.
                    slow_cuts = True
        elif _is_hop_name(p + s, ms):
            hop = True
        elif ms == 5 and _eq_lower(p + s, 5, b"close", 5):
            close_line = True
        if hop and final:
            if ncut == MAX_FAST_CUTS:
                slow_cuts = True
            else:
                cut_at[2 * ncut] = s - 2   # the line with the CRLF before it
                cut_at[2 * ncut + 1] = r
                ncut += 1
        s = r + 2
    if te_present and length >= 0:
        raise ValueError("both Transfer-Encoding and Content-Length in response head")
    chunked = last_coding != NULL and _eq_lower(last_coding, last_coding_n, b"chunked", 7)
    if conn_close and close_line:   # a header named Close, and Connection names it
        slow_cuts = True
    if not final or ncut == 0:
        cut = ()
    elif slow_cuts:
        cut = _hop_cuts_slow(p, n)
    elif ncut == 1:
        cut = (cut_at[0], cut_at[1])
    else:
        cut = tuple([cut_at[k] for k in range(2 * ncut)])
    # Not chunked but Transfer-Encoding: the body runs to the close (RFC 9112 6.3).
    return (status, minor, length, chunked,
            conn_close or (minor == 0 and not conn_keep_alive) or (te_present and not chunked),
            cut)


def parse_response_head(head):
    """(status, minor, content_length, chunked, close, cut) of a response head.

    cut: the hop-by-hop lines of a final (>= 200) head, as flat (start, end) offset
    pairs, ascending, each the line with the CRLF before it; () when there are none.

    Raises:
        ValueError: malformed status line or header line, bare CR/LF, obs-fold,
            conflicting Content-Length, or Content-Length with Transfer-Encoding.
    """
    cdef Py_buffer v
    PyObject_GetBuffer(head, &v, PyBUF_SIMPLE)
    try:
        return _parse_response(<const unsigned char*>v.buf, v.len)
    finally:
        PyBuffer_Release(&v)


def splice_head(buf, Py_ssize_t start, Py_ssize_t stop, Py_ssize_t head_at,
                Py_ssize_t head_end, tuple cut not None, insert):
    """buf[start:stop] with the head buf[head_at:head_end] rewritten in one allocation.

    The spans of cut (offset pairs into the head, as parse_response_head gives them)
    are removed and insert is placed right before the head's final CRLF.

    Raises:
        ValueError: positions out of order or outside buf; a bad cut.
    """
    cdef Py_buffer v, iv
    PyObject_GetBuffer(buf, &v, PyBUF_SIMPLE)
    try:
        PyObject_GetBuffer(insert, &iv, PyBUF_SIMPLE)
        try:
            if not (0 <= start <= head_at and head_at + 4 <= head_end <= stop <= v.len):
                raise ValueError("splice_head: positions out of order")
            return _splice(<const char*>v.buf, start, stop, head_at, head_end, cut,
                           <const char*>iv.buf, iv.len)
        finally:
            PyBuffer_Release(&iv)
    finally:
        PyBuffer_Release(&v)


cdef bytes _splice(const char* p, Py_ssize_t start, Py_ssize_t stop, Py_ssize_t head_at,
                   Py_ssize_t head_end, tuple cut, const char* ins, Py_ssize_t ins_n):
    """splice_head on a pointer, its positions already checked."""
    cdef Py_ssize_t i, a, b, prev = 0, size, at = 0, pos, head_n = head_end - head_at
    cdef Py_ssize_t nc = len(cut)
    cdef char* dst
    if nc % 2:
        raise ValueError("splice_head: cut must hold (start, end) pairs")
    size = stop - start + ins_n
    for i in range(0, nc, 2):
        a = cut[i]
        b = cut[i + 1]
        if not (prev <= a <= b <= head_n - 2):
            raise ValueError("splice_head: cut spans out of order")
        size -= b - a
        prev = b
    out = PyBytes_FromStringAndSize(NULL, size)
    dst = PyBytes_AS_STRING(out)
    pos = start
    for i in range(0, nc, 2):
        a = head_at + <Py_ssize_t>cut[i]
        memcpy(dst + at, p + pos, a - pos)
        at += a - pos
        pos = head_at + <Py_ssize_t>cut[i + 1]
    a = head_end - 2
    memcpy(dst + at, p + pos, a - pos)
    at += a - pos
    memcpy(dst + at, ins, ins_n)
    at += ins_n
    memcpy(dst + at, p + a, stop - a)
    return out


# -- response framing -------------------------------------------------------------------

class ResponseError(Exception):
    """An upstream response that cannot be framed (answered as 502 when nothing was sent)."""


MAX_RESPONSE_HEAD = 65536

cdef enum:
    F_NONE = 0
    F_LENGTH = 1
    F_CHUNKED = 2
    F_UNTIL_CLOSE = 3

# The proxy's own hop-by-hop line in a response it forwards (the primary's are cut).
cdef bytes CLOSE_LINE = b"connection: close\r\n"
# An HTTP/1.0 response persists only when it says so (RFC 9112 9.3): the primary's
# keep-alive was cut, so the proxy says it for the client connection it keeps.
cdef bytes KEEP_ALIVE_LINE = b"connection: keep-alive\r\n"


cdef class ResponseFramer:
    """Frames one upstream response; `feed` returns the bytes to pass on now.

    The twin's docstring (_core_py.ResponseFramer) says what it does; this is the same
    state machine on pointers, one compiled call per upstream read.
    """

    cdef public bint head_only, drop_interim, done, close, upgraded
    cdef public bint close_client, client_closing, until_close
    cdef public int status
    cdef bint _rewrite, _upgrade
    cdef bytes _head
    cdef int _mode, _minor
    cdef int64_t _remaining
    cdef ChunkedScanner _scanner
    cdef tuple _cut

    def __init__(self, bint head_request, bint drop_interim=False, bint rewrite=False,
                 bint upgrade=False):
        self.head_only = head_request
        self._upgrade = upgrade
        self.drop_interim = drop_interim
        self.status = 0
        self.done = False
        self.close = False
        self.upgraded = False
        self.close_client = False
        self.client_closing = False
        self.until_close = False
        self._rewrite = rewrite
        self._head = b""
        self._mode = F_NONE
        self._remaining = 0
        self._scanner = None
        self._minor = 1
        self._cut = ()

    def feed(self, bytes data not None):
        """Consume upstream bytes; return the prefix that belongs to this response.

        Raises:
            ResponseError: the response is malformed.
        """
        cdef Py_ssize_t n
        if self.done:
            if len(data):
                self.close = True
            return b""
        if self.status:
            n = self._feed_body(<const unsigned char*>PyBytes_AS_STRING(data), 0, len(data))
            return data if n == len(data) else data[:n]
        return self._feed_head(data)

    cdef bytes _feed_head(self, bytes data):
        cdef bytes buf = self._head + data if len(self._head) else data
        cdef const unsigned char* p = <const unsigned char*>PyBytes_AS_STRING(buf)
        cdef Py_ssize_t n = len(buf), pos = 0, start = 0, head_at = 0, end, head_end
        cdef bytes insert
        cdef bint close
        while not self.status:
            end = _find_crlfcrlf(p, pos, n) if n - pos >= 4 else -1
            if end < 0:
                if n - pos > MAX_RESPONSE_HEAD:
                    raise ResponseError("response head too large")
                self._head = buf[pos:]
                return buf[start:pos]   # interim responses complete so far
            end += 4
            self._start_body(p + pos, end - pos)
            head_at = pos
            pos = end
            if not self.status and self.drop_interim:
                start = pos
        self._head = b""
        if self.upgraded:
            return buf[start:]   # what follows a 101 is already tunnel data
        head_end = pos
        if not self.done:
            pos += self._feed_body(p, pos, n)
        elif pos < n:
            self.close = True
        if self._rewrite:
            self.close_client = close = self.client_closing or self.until_close
            insert = CLOSE_LINE if close else KEEP_ALIVE_LINE if self._minor == 0 else b""
            if len(self._cut) or len(insert):   # the head changes: one new buffer
                return _splice(<const char*>p, start, pos, head_at, head_end, self._cut,
                               PyBytes_AS_STRING(insert), len(insert))
        return buf if start == 0 and pos == n else buf[start:pos]

    cdef int _start_body(self, const unsigned char* head, Py_ssize_t n) except -1:
        try:
            status, minor, length, chunked, close, cut = _parse_response(head, n)
        except ValueError as exc:
            raise ResponseError(f"bad response head: {exc}") from None
        if 100 <= status < 200 and status != 101:
            return 0   # interim response: passed on; the final one follows
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
        elif self.head_only or status == 204 or status == 304:
            self.done = True
            # A 204 that announces a body (or a 304 with a chunked one) may well send
            # it: those bytes would be read as the next response on a reused connection.
            if (status == 204 and (length > 0 or chunked)) or (status == 304 and chunked):
                self.close = True
        elif chunked:
            self._mode = F_CHUNKED
            self._scanner = ChunkedScanner()
        elif length >= 0:
            self._mode = F_LENGTH
            self._remaining = length
            self.done = length == 0
        else:
            self._mode = F_UNTIL_CLOSE
            self.close = self.until_close = True
        return 0

    cdef Py_ssize_t _feed_body(self, const unsigned char* p, Py_ssize_t start,
                               Py_ssize_t n) except -1:
        cdef Py_ssize_t k
        if self._mode == F_LENGTH:
            k = n - start
            if self._remaining < k:
                k = <Py_ssize_t>self._remaining
            self._remaining -= k
            if self._remaining == 0:
                self.done = True
                if start + k < n:
                    self.close = True
            return k
        if self._mode == F_CHUNKED:
            try:
                k = self._scanner._feed(p, start, n)
            except ChunkedError as exc:
                raise ResponseError(f"bad chunked response: {exc}") from None
            if self._scanner._state == S_DONE:
                self.done = True
                if start + k < n:
                    self.close = True
            return k
        return n - start   # until close

    def eof(self):
        """The upstream closed its side.

        Raises:
            ResponseError: the response was not complete.
        """
        if self.done:
            return
        if self.status and self._mode == F_UNTIL_CLOSE:
            self.done = True
            return
        raise ResponseError("upstream closed the connection before the response ended")


# -- request heads: the strict fast path ----------------------------------------------------
#
# h11 is the authority on what a valid request is, but a full h11 parse of a head costs
# 11-17 us, more than the rest of a proxied request. parse_request_fast accepts only a
# strict subset of what h11 accepts and interprets it the same way (the parity property
# in tests/unit/test_codec.py checks exactly that); anything else returns None and goes
# to h11 and the slow checks, which accept or refuse it.

cdef enum:
    CONN_CLOSE = 1        # Connection: close
    CONN_KEEP_ALIVE = 2   # Connection: keep-alive
    CONN_HOP = 4          # a hop-by-hop header line is present (to be stripped)

REQ_CONN_CLOSE = CONN_CLOSE
REQ_CONN_KEEP_ALIVE = CONN_KEEP_ALIVE
REQ_CONN_HOP = CONN_HOP





cdef int _conn_tokens(const unsigned char* p, Py_ssize_t vs, Py_ssize_t ve) noexcept:
    """CONN_CLOSE/CONN_KEEP_ALIVE bits of a Connection value, or -1 for any other token."""
    cdef Py_ssize_t ts, te
    cdef int flags = 0
    while vs < ve:
        vs = _list_element(p, vs, ve, &ts, &te)
        if te == ts:
            continue
        if _eq_lower(p + ts, te - ts, b"close", 5):
            flags |= CONN_CLOSE
        elif _eq_lower(p + ts, te - ts, b"keep-alive", 10):
            flags |= CONN_KEEP_ALIVE
        else:
            return -1
    return flags


cdef enum:
    MAX_DROPPED_LINES = 16


cdef object _without_lines(const unsigned char* p, Py_ssize_t n, Py_ssize_t* starts,
                           Py_ssize_t* ends, int count):
    """p[:n] with the spans [starts[i], ends[i]) cut out (ascending, disjoint)."""
    cdef Py_ssize_t size = n, pos = 0, at = 0
    cdef int i
    for i in range(count):
        size -= ends[i] - starts[i]
    out = PyBytes_FromStringAndSize(NULL, size)
    cdef char* dst = PyBytes_AS_STRING(out)
    for i in range(count):
        memcpy(dst + at, p + pos, starts[i] - pos)
        at += starts[i] - pos
        pos = ends[i]
    memcpy(dst + at, p + pos, n - pos)
    return out


cdef inline bint _plain_host(const unsigned char* p, Py_ssize_t vs, Py_ssize_t ve) noexcept:
    """p[vs:ve] is a reg-name without pct-encoding, then an optional ":" and digits."""
    cdef Py_ssize_t k = vs
    while k < ve and _HOSTCHAR[p[k]]:
        k += 1
    if k < ve and p[k] == c':':
        k += 1
        while k < ve and 0x30 <= p[k] <= 0x39:
            k += 1
    return k == ve


cdef inline bint _underscored_framing(const unsigned char* p, Py_ssize_t n) noexcept:
    """A name with "_" that reads as content-length or transfer-encoding with "_" as "-"."""
    cdef const char* lit = b"content-length" if n == 14 else b"transfer-encoding"
    cdef Py_ssize_t k
    cdef bint underscore = False
    cdef unsigned char c
    for k in range(n):
        c = p[k]
        if c == c'_':
            underscore = True
            c = c'-'
        if _LOWER[c] != <unsigned char>lit[k]:
            return False
    return underscore


cdef object _parse_request_fast(const unsigned char* p, Py_ssize_t n):
    cdef Py_ssize_t s, r, k, colon, vs, ve, ms, me, ts, te
    cdef int minor, hosts = 0, flags = 0, tokens, dropped = 0
    cdef Py_ssize_t drop_start[MAX_DROPPED_LINES]
    cdef Py_ssize_t drop_end[MAX_DROPPED_LINES]
    cdef bint hop
    cdef int64_t length = -1
    cdef bint chunked = False, te_seen = False
    cdef const unsigned char* q
    if n < 18 or memcmp(p + n - 4, b"\r\n\r\n", 4) != 0:
        return None
    # Request line: METHOD SP TARGET SP HTTP/1.x CRLF
    q = <const unsigned char*>memchr(p, 0x0d, n)
    r = q - p
    if p[r + 1] != 0x0a:
        return None
    k = 0
    while k < r and _TCHAR[p[k]] and not (0x61 <= p[k] <= 0x7a):   # upper-case tokens
        k += 1
    if k == 0 or k >= r or p[k] != c' ':
        return None
    me = k
    if (me == 7 and memcmp(p, b"CONNECT", 7) == 0) or (me == 3 and memcmp(p, b"PRI", 3) == 0):
        return None   # refused by the slow path
    ts = k + 1
    if p[ts] != c'/':   # origin-form only; the other forms take the slow path
        return None
    k = ts
    while k < r and 0x21 <= p[k] <= 0x7e:
        k += 1
    if k == ts or r - k != 9 or memcmp(p + k, b" HTTP/1.", 8) != 0:
        return None
    te = k
    if p[r - 1] == c'1':
        minor = 1
    elif p[r - 1] == c'0':
        minor = 0
    else:
        return None
    s = r + 2
    while True:
        q = <const unsigned char*>memchr(p + s, 0x0d, n - s)
        r = q - p
        if p[r + 1] != 0x0a:
            return None
        if r == s:
            if r != n - 2:
                return None
            break
        # field-name ":" OWS field-value OWS
        k = s
        while k < r and _TCHAR[p[k]]:
            k += 1
        if k == s or k >= r or p[k] != c':':
            return None
        colon = k
        vs = colon + 1
        ve = r
        while vs < ve and _is_ows(p[vs]):
            vs += 1
        while ve > vs and _is_ows(p[ve - 1]):
            ve -= 1
        for k in range(vs, ve):
            if not _FVCHAR[p[k]] and not _is_ows(p[k]):
                return None
        ms = colon - s
        hop = False
        if ms == 4 and _eq_lower(p + s, 4, b"host", 4):
            if not _plain_host(p, vs, ve):
                return None
            hosts += 1
        elif ms == 14 and _eq_lower(p + s, 14, b"content-length", 14):
            if length >= 0 or not (1 <= ve - vs <= 18 and _all_digits(p + vs, ve - vs)):
                return None
            length = 0
            for k in range(vs, ve):
                length = length * 10 + (p[k] - c'0')
        elif ms == 17 and _eq_lower(p + s, 17, b"transfer-encoding", 17):
            if te_seen or not _eq_lower(p + vs, ve - vs, b"chunked", 7):
                return None
            te_seen = chunked = True
        elif (ms == 14 or ms == 17) and _underscored_framing(p + s, ms):
            return None   # Content_Length, Transfer_Encoding: refused by the slow path
        elif ms == 10 and _eq_lower(p + s, 10, b"connection", 10):
            tokens = _conn_tokens(p, vs, ve)
            if tokens < 0:
                return None
            flags |= tokens | CONN_HOP
            hop = True
        elif ((ms == 10 and _eq_lower(p + s, 10, b"keep-alive", 10))
              or (ms == 16 and _eq_lower(p + s, 16, b"proxy-connection", 16))
              or (ms == 2 and _eq_lower(p + s, 2, b"te", 2))
              or (ms == 7 and _eq_lower(p + s, 7, b"trailer", 7))):
            flags |= CONN_HOP
            hop = True
        elif ms == 7 and _eq_lower(p + s, 7, b"upgrade", 7):
            return None   # protocol switches take the slow path
        if hop:   # cut the line with the CRLF before it
            if dropped == MAX_DROPPED_LINES:
                return None
            drop_start[dropped] = s - 2
            drop_end[dropped] = r
            dropped += 1
        s = r + 2
    if (chunked and (length >= 0 or minor == 0)) or hosts > 1 or (minor == 1 and hosts == 0):
        return None
    forward = _without_lines(p, n, drop_start, drop_end, dropped) if dropped else None
    return (PyBytes_FromStringAndSize(<const char*>p, me),
            PyBytes_FromStringAndSize(<const char*>p + ts, te - ts),
            minor, length, chunked, flags, forward)


def parse_request_fast(head):
    """(method, target, minor, content_length, chunked, conn_flags, forward), or None.

    forward is the head without its hop-by-hop lines (Connection, Keep-Alive,
    Proxy-Connection, TE, Trailer), or None when it has none (forward the head as is).

    Accepts only the strict common case of a request head (upper-case token method other
    than CONNECT and PRI, origin-form visible-ASCII target, HTTP/1.0 or 1.1, CRLF only,
    token field names, no whitespace before a colon, no control bytes, no name that reads
    as Content-Length or Transfer-Encoding with "_" as "-", one Host (required in 1.1)
    whose value is a plain reg-name with an optional numeric port, at most one plain
    Content-Length, Transfer-Encoding exactly "chunked" (1.1 only, not with
    Content-Length), Connection tokens only close/keep-alive, no Upgrade). Anything
    else, valid or not, gives None: the caller then asks h11.
    """
    cdef Py_buffer v
    PyObject_GetBuffer(head, &v, PyBUF_SIMPLE)
    try:
        return _parse_request_fast(<const unsigned char*>v.buf, v.len)
    finally:
        PyBuffer_Release(&v)


# -- routes -----------------------------------------------------------------------------

def match_route(bytes target not None, tuple prefixes not None, bint any_case=False):
    """First index i whose prefixes[i] the target's path starts with, -1 for none, or -2
    when the path needs normalising first (paths.route_path does it, in Python), or has
    a capital letter while any_case (a route compares in any case)."""
    cdef const unsigned char* p = <const unsigned char*>PyBytes_AS_STRING(target)
    cdef Py_ssize_t n = len(target)
    cdef Py_ssize_t end = n
    cdef Py_ssize_t i
    cdef unsigned char c
    cdef unsigned char prev = 0
    cdef object prefix
    cdef const unsigned char* q
    cdef Py_ssize_t m
    if n == 0 or p[0] != 0x2f:   # not origin-form: absolute-form, "*", empty
        return -2
    for i in range(n):
        c = p[i]
        if c == 0x3f:   # "?": the query is not matched
            end = i
            break
        if c == 0x23:   # "#": two readings (paths.py), Python's to weigh
            return -2
        # %XX, "\", ";params", a "." or ".." segment, a run of "/": the path reads as another
        if c == 0x25 or c == 0x5c or c == 0x3b or (prev == 0x2f and (c == 0x2e or c == 0x2f)):
            return -2
        if any_case and 0x41 <= c <= 0x5a:
            return -2
        prev = c
    for i in range(len(prefixes)):
        prefix = prefixes[i]
        if not isinstance(prefix, bytes):
            raise TypeError(f"route prefix must be bytes, not {type(prefix).__name__}")
        q = <const unsigned char*>PyBytes_AS_STRING(<bytes>prefix)
        m = len(<bytes>prefix)
        # Prefixes all start with "/": the byte after it rejects most without a call.
        if m <= end and (m < 2 or q[1] == p[1]) and memcmp(p, q, m) == 0:
            return i
    return -1
