"""Types and contract of the hot-path core: `_core` (Cython) and its twin `_core_py`.

Every buffer argument is a bytes-like object (bytes, bytearray, C-contiguous memoryview)
read in place. Both implementations give the same results and raise the same exceptions.
"""

from typing import Final

PPM_SCALE: Final[int]          # 1_000_000: percentages travel as parts per million

HEAD_OK: Final[int]            # 0
HEAD_ERR_BARE_LF: Final[int]   # 1: a LF not preceded by CR
HEAD_ERR_BARE_CR: Final[int]   # 2: a CR not followed by LF
HEAD_ERR_CTL: Final[int]       # 3: NUL, another byte < 0x20 except HT, or DEL (0x7f)
HEAD_ERR_OBS_FOLD: Final[int]  # 4: a header line starting with SP or HT
HEAD_ERR_SPACE_BEFORE_COLON: Final[int]  # 5: SP or HT in a field name, before its colon
HEAD_ERR_NO_COLON: Final[int]  # 6: a header line without a colon, or with an empty name
HEAD_ERR_MESSAGES: Final[dict[int, str]]

def percent_to_ppm(percent: float) -> int:
    """round(percent * 10_000) (half to even), clamped to 0..1_000_000.

    Raises:
        ValueError: percent is NaN.
    """

def sample(ppm: int, draw: int) -> bool:
    """draw % 1_000_000 < ppm: true for ppm draws in a million.

    Raises:
        OverflowError: draw is not an unsigned 64-bit int, or ppm not a signed one.
    """

def random_u64() -> int:
    """Next output of a splitmix64 PRNG: 0 <= n < 2**64. Not for cryptography.

    Seeded from os.urandom at import and again in every forked child.
    """

def seed_random(seed: int | None = None) -> None:
    """Set the PRNG state to seed (masked to 64 bits); None reseeds from os.urandom.

    The same seed gives the same sequence in both implementations.
    """

def key_hash(key: bytes | bytearray | memoryview) -> int:
    """FNV-1a 64-bit hash: stable across processes and runs (consistent sampling)."""

def find_head_end(buf: bytes | bytearray | memoryview, start: int = 0) -> int:
    """Index just past the first b"\\r\\n\\r\\n" at or after start, or -1.

    A negative start counts as 0 (not from the end), so `max(seen - 3, 0)` and
    `seen - 3` resume a scan alike.
    """

def check_head(head: bytes | bytearray | memoryview) -> int:
    """Strict checks h11 does not do, on a whole request head ending in CRLFCRLF.

    Returns HEAD_OK, or the HEAD_ERR_* code of the first offending byte in one pass:
    a bare LF, a bare CR, or a control byte anywhere; on header lines (every line after
    the request line) a leading SP/HT (obs-fold), SP/HT before the colon, no colon or
    an empty field name.
    """

def shadow_head(head: bytes | bytearray | memoryview,
                host_suffix: bytes | bytearray | memoryview,
                extra: bytes | bytearray | memoryview) -> bytes:
    """The shadow copy of a request head.

    In the first header named Host (any case), a value `name[:port]` becomes
    `name + host_suffix [+ ":port"]`, the whitespace around it kept; an IPv6 literal
    `[...]`, an empty value or an empty name is left alone, and so is everything when
    host_suffix is empty. `extra` (whole header lines, each ending in CRLF) goes right
    before the final empty line. No other byte changes.

    Raises:
        ValueError: head does not end with CRLFCRLF.
    """

class ChunkedError(ValueError):
    """A chunked body that RFC 9112 section 7.1 does not allow, or over a limit."""

MAX_CHUNK_SIZE: int
"""The largest chunk size accepted: 2**63 - 1 (a signed 64-bit off_t, as nginx)."""
FORBIDDEN_TRAILERS: tuple[bytes, ...]
"""Trailer field names refused: framing, routing and connection control."""

class ChunkedScanner:
    """Strict incremental scanner of one chunked body (RFC 9112 section 7.1).

    chunk-size is 1 to 16 hex digits and at most MAX_CHUNK_SIZE (2**63 - 1), optionally
    followed by extensions by the grammar `*( ";" token [ "=" ( token / quoted-string ) ] )`
    with no whitespace, then CRLF, the size line within max_line bytes (CRLF not
    counted); then exactly that many data bytes and CRLF. After the `0` chunk, trailer
    lines `token ":" value` (value: VCHAR, obs-text, SP, HT; no obs-fold, no space before
    the colon), none named in FORBIDDEN_TRAILERS (case-insensitive, `_` read as `-`),
    max_trailers bytes at most in total (their CRLFs counted), then the empty line.
    Chunk data is skipped by arithmetic.
    """

    def __init__(self, max_line: int = 4096, max_trailers: int = 16384) -> None: ...
    @property
    def done(self) -> bool:
        """True once the final CRLF was consumed; feed() returns 0 from then on."""
    def feed(self, buf: bytes | bytearray | memoryview, start: int = 0) -> int:
        """Consume buf[start:] and return how many of its bytes belong to the body.

        Less than len(buf) - start only when the body ended inside buf. Split the body
        anywhere, even one byte per call: the result is the same.

        Raises:
            ChunkedError: malformed body or limit exceeded; every later call raises too.
            ValueError: start is outside 0..len(buf).
        """

def parse_response_head(
    head: bytes | bytearray | memoryview,
) -> tuple[int, int, int, bool, bool, tuple[int, ...]]:
    """(status, minor, content_length, chunked, close, cut) of a response head ending in CRLFCRLF.

    Status line `HTTP/1.<d> <3 digits>[ <reason>]`, status >= 100. content_length is -1
    when absent. chunked: the last transfer-coding is `chunked`. close: a Connection
    `close` token, HTTP/1.0 without `keep-alive`, or Transfer-Encoding without chunked
    last (the body then runs to the close). Names match in any case; OWS around values
    is ignored.

    cut: the hop-by-hop lines of a final head (status >= 200; a 1xx head, 101 included,
    gives ()): every Connection, Keep-Alive, Proxy-Connection and Upgrade line and every
    line whose name is a Connection token (`close` included), in any case, as flat
    `(start, end)` offset pairs into head, ascending: each span is the line with the CRLF
    before it, so `head[:start] + head[end:]` removes it. () when there is nothing to cut.

    Raises:
        ValueError: a malformed status line; a bare CR or LF; an empty line, obs-fold,
            whitespace before a colon or no colon in a header line; a Content-Length
            that is not 1-18 digits or disagrees with another; Content-Length together
            with Transfer-Encoding (RFC 9112 6.3: an intermediary that forwards bytes
            untouched cannot remove it, so it refuses the message).
    """

def splice_head(buf: bytes | bytearray | memoryview, start: int, stop: int, head_at: int,
                head_end: int, cut: tuple[int, ...],
                insert: bytes | bytearray | memoryview) -> bytes:
    """buf[start:stop], with the head buf[head_at:head_end] rewritten, as one new bytes.

    The spans of cut (pairs of offsets into the head, as parse_response_head returns
    them) are left out and insert goes right before the head's final CRLF; every other
    byte, before the head (interim responses) and after it (body), is copied as is.

    Raises:
        ValueError: not 0 <= start <= head_at, head_at + 4 <= head_end <= stop <= len(buf);
            an odd-length cut, or spans not ascending and disjoint inside the head
            before its final CRLF.
        TypeError: cut is not a tuple, or buf/insert not a buffer.
    """

class ResponseError(Exception):
    """An upstream response that cannot be framed (answered as 502 when nothing was sent)."""

MAX_RESPONSE_HEAD: Final[int]   # 65536: a response head (1xx heads included) past it fails

class ResponseFramer:
    """Frames one upstream response; feed() returns the bytes to pass on now.

    Interim 1xx responses are passed on (dropped with drop_interim, for an HTTP/1.0
    client) and framing continues with the final one. A 101 ends the response and makes
    the connection a tunnel when upgrade (the request asked for one); otherwise it is a
    ResponseError. The body is framed by Content-Length, the strict chunked scanner, or
    the upstream's close; nothing past its end is passed on.

    With rewrite (the client side), the final head's hop-by-hop lines (parse_response_head's
    cut) are removed and `connection: close` is added when client_closing (set by the
    owner before each feed while the head is pending) or when the body runs to the close;
    `connection: keep-alive` is added to an HTTP/1.0 response otherwise. close_client says
    whether `connection: close` was added. Without rewrite heads pass untouched.
    """

    head_only: bool        # the request was HEAD: the response has no body
    drop_interim: bool
    status: int            # the final status, 0 until its head is complete
    done: bool             # the response is complete
    close: bool            # the upstream connection cannot be reused
    upgraded: bool         # a 101: what follows is tunnel data
    close_client: bool     # the forwarded head announced `connection: close`
    client_closing: bool   # set by the owner: it closes the client after this response
    until_close: bool      # the body is delimited by the upstream's close

    def __init__(self, head_request: bool, drop_interim: bool = False,
                 rewrite: bool = False, upgrade: bool = False) -> None: ...
    def feed(self, data: bytes) -> bytes:
        """Consume upstream bytes; return the prefix of them that belongs to this response.

        Bytes past the end are not returned (and make close true). Split the response
        anywhere: the bytes passed on are the same.

        Raises:
            ResponseError: a malformed head or chunked body, or a head past MAX_RESPONSE_HEAD.
        """
    def eof(self) -> None:
        """The upstream closed its side: the end of a close-delimited body.

        Raises:
            ResponseError: the response was not complete.
        """

REQ_CONN_CLOSE: Final[int]       # 1: a Connection header has the token "close"
REQ_CONN_KEEP_ALIVE: Final[int]  # 2: ... the token "keep-alive"
REQ_CONN_HOP: Final[int]         # 4: a hop-by-hop header line is present (to strip)

def parse_request_fast(
    head: bytes | bytearray | memoryview,
) -> tuple[bytes, bytes, int, int, bool, int, bytes | None] | None:
    """(method, target, minor, content_length, chunked, conn_flags, forward) of a head, or None.

    forward: the head without its hop-by-hop lines (Connection, Keep-Alive,
    Proxy-Connection, TE, Trailer; at most 16, else None is returned), or None when
    there are none.

    The strict fast path: accepts only a subset of what h11 accepts, read the same way
    (upper-case token method other than CONNECT and PRI, origin-form visible-ASCII
    target, HTTP/1.0 or 1.1, CRLF line ends, token field names directly followed by ':',
    no name that reads as Content-Length or Transfer-Encoding with '_' as '-', field
    values of VCHAR/obs-text/SP/HT, exactly one Host in HTTP/1.1 and at most one
    elsewhere, its value a reg-name without '%' and an optional ':' with digits, at most
    one all-digit Content-Length of
    up to 18 digits, Transfer-Encoding exactly "chunked" in HTTP/1.1 without
    Content-Length, Connection tokens only close/keep-alive, no Upgrade header).
    content_length is -1 when absent. None means "ask h11", not "invalid".
    """

def match_route(target: bytes, prefixes: tuple[bytes, ...], any_case: bool = False) -> int:
    """The first route prefix the target's path starts with: its index, or -1 for none.

    The path is the target up to its first "?". -2 (no prefix compared) when the path
    must be normalised before it is matched: the target is not origin-form (does not
    start with "/"), or its path holds "#" (read two ways: paths.py), "%", "\\", ";",
    "/." or "//"; and with any_case, when it holds a capital A-Z (a
    route compares in any case by its lower-cased prefix). Matching that path, and any
    method check, is the caller's (proxy/router.py).

    Raises:
        TypeError: target is not exactly bytes, prefixes not exactly a tuple, or a
            prefix compared is not bytes.
    """
