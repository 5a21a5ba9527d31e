"""HTTP/1.1 framing for both sides of the proxy, sans-I/O.

Requests (downstream): h11 is the authority on whether a request head is valid; on
top of it we refuse what two parsers could read differently (bare LF, obs-fold,
duplicate or conflicting framing headers), since bytes are forwarded as received,
not re-serialized. Bodies are framed by counting (Content-Length) or by the strict
chunked scanner of the core; their bytes are never copied or re-encoded here.

Responses (upstream): framed by the core's ResponseFramer (status-line/header parse,
the same chunked scanner, the hop-by-hop rewrite), re-exported here, so a full h11
cycle is never paid on the response side and a response costs one compiled call.

This module does no I/O: bytes in, decisions and byte counts out.
"""

from __future__ import annotations

import re

import h11

from fastmirror.hotpath import (
    HEAD_ERR_MESSAGES,
    REQ_CONN_CLOSE,
    ChunkedError,
    ChunkedScanner,
    ResponseError,
    ResponseFramer,
    check_head,
    find_head_end,
    parse_request_fast,
)

__all__ = [
    "HttpError",
    "RequestHead",
    "BodyFramer",
    "ResponseFramer",
    "ResponseError",
    "parse_request_head",
    "check_partial_head",
    "skip_empty_lines",
    "holds_no_request",
    "error_response",
    "find_head_end",
]

# RFC 9110 §7.6.1 hop-by-hop fields, plus the de-facto Proxy-Connection. Transfer-Encoding
# is hop-by-hop too, but the body is forwarded in its original chunked framing, so the
# header that describes that framing must travel with it.
HOP_BY_HOP = (b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer", b"upgrade")

REASONS = {
    400: b"Bad Request",
    405: b"Method Not Allowed",
    408: b"Request Timeout",
    413: b"Content Too Large",
    431: b"Request Header Fields Too Large",
    501: b"Not Implemented",
    502: b"Bad Gateway",
    503: b"Service Unavailable",
    504: b"Gateway Timeout",
    505: b"HTTP Version Not Supported",
}


_BARE_LF = re.compile(rb"(?<!\r)\n")


# What a request line must look like before h11 reads it: method, target, version.
_REQUEST_LINE_SHAPE = re.compile(rb"[-!#$%&'*+.^_`|~0-9A-Za-z]+ [\x21-\x7e]+ HTTP/[0-9]\.[0-9]\r\n")


def check_partial_head(data: bytes) -> None:
    """Refuse an incomplete head early when it already shows it can never be valid.

    A head that ends lines with LF alone never contains CRLFCRLF, and a complete request
    line without a version (HTTP/0.9's `GET /path`) is never followed by headers: waiting
    for the rest would only hang the client until a timeout.

    Raises:
        HttpError: 400.
    """
    if _BARE_LF.search(data) is not None:
        raise HttpError(400, "bare LF line ending")
    eol = data.find(b"\r\n")
    if eol >= 0 and _REQUEST_LINE_SHAPE.match(data, 0, eol + 2) is None:
        raise HttpError(400, "malformed request line")


def holds_no_request(buf: bytes) -> bool:
    """Buffered bytes after a client's half-close hold neither a complete request head
    (it will be answered) nor a partial one already known bad (answered 400)."""
    if find_head_end(buf, 0) >= 0:
        return False
    try:
        check_partial_head(buf[skip_empty_lines(buf):])
    except HttpError:
        return False
    return True


def skip_empty_lines(data: bytes) -> int:
    """How many bytes of empty lines (CRLF pairs) start data: ignored before a request.

    RFC 9112 section 2.2: a server SHOULD ignore at least one empty line received
    before a request line (old clients send a CRLF after a POST body). Only CRLF pairs;
    a lone CR stays, to be completed by the next read or refused as a bare CR.
    """
    n = 0
    while data.startswith(b"\r\n", n):
        n += 2
    return n


class HttpError(Exception):
    """A request the proxy refuses; `status` is what the client gets before the close."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


def error_response(status: int, detail: str = "") -> bytes:
    """A short plain-text response that closes the connection."""
    reason = REASONS.get(status, b"Error")
    body = b"%d %s" % (status, reason)
    if detail:
        body += b": " + detail.encode("ascii", "replace")
    body += b"\n"
    return (
        b"HTTP/1.1 %d %s\r\ncontent-type: text/plain\r\ncontent-length: %d\r\n"
        b"connection: close\r\n\r\n%s" % (status, reason, len(body), body)
    )


class RequestHead:
    """One validated request head and what the proxy needs to know about it."""

    __slots__ = (
        "raw", "forward", "method", "target", "http10",
        "content_length", "chunked", "keep_alive", "upgrade", "has_body",
    )

    def __init__(self, raw: bytes, forward: bytes, method: bytes, target: bytes,
                 http10: bool, content_length: int, chunked: bool, keep_alive: bool,
                 upgrade: bool) -> None:
        self.raw = raw                    # the head exactly as the client sent it
        self.forward = forward            # what goes upstream: raw minus hop-by-hop lines
        self.method = method
        self.target = target
        self.http10 = http10
        self.content_length = content_length  # -1: none
        self.chunked = chunked
        self.keep_alive = keep_alive      # the client may send another request afterwards
        self.upgrade = upgrade            # Connection: upgrade + Upgrade: (e.g. WebSocket)
        # An attribute, not a property: read twice for every request.
        self.has_body = chunked or content_length > 0

    def header(self, name: bytes) -> bytes | None:
        """The first value of header `name` (lower case), or None.

        A validated head has CRLF line ends, no obs-fold and no space before a colon,
        so "CRLF name:" finds exactly the header lines of that name.
        """
        raw = self.raw
        at = raw.lower().find(b"\r\n" + name + b":")
        if at < 0:
            return None
        start = at + len(name) + 3
        return raw[start:raw.index(b"\r\n", start)].strip(b" \t")


def parse_request_head(raw: bytes) -> RequestHead:
    """Validate one complete request head (ending in CRLFCRLF).

    The strict common case is read by the core in one pass; everything else goes to
    h11 and the checks below, which accept it or refuse it.

    Raises:
        HttpError: 400 for anything malformed or ambiguous, 501 for an unsupported
            transfer-coding, 505 for an HTTP version other than 1.0 and 1.1.
    """
    fast = parse_request_fast(raw)
    if fast is None:
        return _parse_request_head_slow(raw)
    method, target, minor, content_length, chunked, flags, forward = fast
    keep_alive = minor == 1 and not flags & REQ_CONN_CLOSE
    return RequestHead(raw, raw if forward is None else forward, method, target, minor == 0,
                       content_length, chunked, keep_alive, False)


def _parse_request_head_slow(raw: bytes) -> RequestHead:
    lower = raw.lower()
    event = _h11_request(raw, lower)
    http10 = event.http_version == b"1.0"
    content_length, chunked, upgrade_header, conn_tokens, host = _framing_fields(event, lower)
    if chunked:
        if content_length >= 0:
            raise HttpError(400, "Content-Length with Transfer-Encoding")
        if http10:
            raise HttpError(400, "Transfer-Encoding in an HTTP/1.0 request")
    if _NOT_CONNECTION_OPTIONS.intersection(conn_tokens):
        # Cutting the line that frames or routes the request, then framing its body by
        # it, would hand the primary the body as its next request (RFC 9110 7.6.1).
        raise HttpError(400, "Connection names a framing or routing header")
    if host is not None and target_authority(event.target) not in (None, host.lower()):
        raise HttpError(400, "absolute-form target and Host name different hosts")
    upgrade = upgrade_header and b"upgrade" in conn_tokens
    keep_alive = not http10 and b"close" not in conn_tokens
    forward = _strip_hop_by_hop(raw, lower, conn_tokens, upgrade)
    return RequestHead(raw, forward, event.method, event.target, http10,
                       content_length, chunked, keep_alive, upgrade)


def _h11_request(raw: bytes, lower: bytes) -> h11.Request:
    """The head as h11 reads it, after the checks h11 does not make; or HttpError."""
    code = check_head(raw)
    if code:
        raise HttpError(400, HEAD_ERR_MESSAGES[code])
    if lower.count(b"\ntransfer-encoding:") > 1:
        raise HttpError(400, "multiple Transfer-Encoding headers")
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=len(raw) + 1)
    conn.receive_data(raw)
    try:
        event = conn.next_event()
    except h11.RemoteProtocolError as exc:
        raise HttpError(exc.error_status_hint, str(exc)) from None
    if type(event) is not h11.Request:
        raise HttpError(400, "incomplete request head")
    check_request_line(event.method, event.target)
    if event.http_version not in (b"1.1", b"1.0"):
        raise HttpError(505, "HTTP version not supported")
    return event


def _framing_fields(event: h11.Request, lower: bytes
                    ) -> tuple[int, bool, bool, list[bytes], bytes | None]:
    """(content_length, chunked, upgrade header, Connection tokens, Host) of a head."""
    # h11 merges duplicate Content-Length headers and accepts "5, 5"; count the raw
    # lines instead (check_head guarantees "\nname:" is the only way a field starts).
    content_length = -1
    chunked = False
    upgrade_header = False
    conn_tokens: list[bytes] = []
    host: bytes | None = None
    for name, value in event.headers:
        if name == b"host":
            check_host(value)
            host = value
        elif b"_" in name and name.replace(b"_", b"-") in _FRAMING:
            # A CGI/WSGI back end reads Content_Length as Content-Length: refuse, as a
            # second framing header would be (nginx drops all such names instead).
            raise HttpError(400, "underscore in a framing header name")
        if name == b"content-length":
            content_length = _content_length(value, lower)
        elif name == b"transfer-encoding":
            chunked = True
        elif name == b"connection":
            conn_tokens.extend(t.strip() for t in value.lower().split(b","))
        elif name == b"upgrade":
            upgrade_header = True
    return content_length, chunked, upgrade_header, conn_tokens, host


def _content_length(value: bytes, lower: bytes) -> int:
    if lower.count(b"\ncontent-length:") != 1:
        raise HttpError(400, "multiple Content-Length headers")
    # h11 has already folded "5, 5" into "5": check the value as it was sent.
    start = lower.index(b"\ncontent-length:") + 16
    sent = lower[start:lower.index(b"\r\n", start)].strip(b" \t")
    if not sent.isdigit():
        raise HttpError(400, "bad Content-Length")
    # Past 2**63 - 1 a back end may wrap (2**64 + 20 reads as 20) and take the rest of
    # the body for a second request; nginx and Envoy refuse such numbers too.
    if len(sent) > MAX_CONTENT_LENGTH_DIGITS or int(sent) > MAX_CONTENT_LENGTH:
        raise HttpError(400, "Content-Length too large")
    return int(sent)


_FRAMING = (b"content-length", b"transfer-encoding")
_NOT_CONNECTION_OPTIONS = frozenset((b"content-length", b"transfer-encoding", b"host"))
MAX_CONTENT_LENGTH = (1 << 63) - 1
MAX_CONTENT_LENGTH_DIGITS = 19

# RFC 3986 host: an IP literal in brackets, or a reg-name (which covers IPv4), then
# an optional port. Anything else (a space, "@", "/") is read differently by back ends.
_HOST = re.compile(
    rb"(?:\[(?:[0-9A-Fa-f:.]+|[vV][0-9A-Fa-f]+\.[-A-Za-z0-9._~!$&'()*+,;=:]+)\]"
    rb"|(?:[-A-Za-z0-9._~!$&'()*+,;=]|%[0-9A-Fa-f]{2})*)(?::[0-9]*)?"
)
_ABSOLUTE_FORM = re.compile(rb"[hH][tT][tT][pP][sS]?://[^/?#]+(?:[/?#].*)?", re.DOTALL)
_LOWERCASE = re.compile(rb"[a-z]")


def target_authority(target: bytes) -> bytes | None:
    """The authority of an absolute-form target, lower case; None for other forms.

    RFC 9112 section 3.2.2 has a server route by it and ignore Host, while many back
    ends (and the shadow's "-shadow" Host) go by Host: the two must agree. Userinfo
    (`http://u@host/`) is kept in, so it never agrees: it is an error by RFC 9110 4.2.4.
    """
    if target[:1] == b"/" or target == b"*":
        return None
    start = target.index(b"://") + 3
    end = start
    while end < len(target) and target[end] not in b"/?#":
        end += 1
    return target[start:end].lower()


def check_host(value: bytes) -> None:
    """Refuse a Host value that is not `host[:port]` (RFC 9110 section 7.2).

    Raises:
        HttpError: 400.
    """
    if _HOST.fullmatch(value) is None:
        raise HttpError(400, "invalid Host header")


def check_request_line(method: bytes, target: bytes) -> None:
    """Refuse methods and request-target forms a reverse proxy must not pass on.

    The target must be origin-form (`/path`), absolute-form (`http://host/path`) or
    `*` with OPTIONS (RFC 9112 section 3.2). CONNECT is answered 405, as nginx does:
    fastmirror is not a forward proxy. `PRI` is the HTTP/2 preface, not a request.
    Methods with lowercase letters are valid tokens no real client sends; nginx
    refuses them, and a back end that upper-cases them would read another method.

    Raises:
        HttpError: 400, or 405 for CONNECT.
    """
    if method == b"CONNECT":
        raise HttpError(405, "CONNECT is not supported")
    if method == b"PRI":
        raise HttpError(400, "HTTP/2 connection preface")
    if _LOWERCASE.search(method) is not None:
        raise HttpError(400, "method must be upper case")
    if target[:1] == b"/":
        return
    if target == b"*":
        if method == b"OPTIONS":
            return
        raise HttpError(400, "asterisk-form target is only for OPTIONS")
    if _ABSOLUTE_FORM.fullmatch(target) is None:
        raise HttpError(400, "invalid request target")


_LINE_MARKERS = {name: b"\r\n" + name + b":" for name in HOP_BY_HOP}


def _strip_hop_by_hop(raw: bytes, lower: bytes, conn_tokens: list[bytes], upgrade: bool) -> bytes:
    """Drop hop-by-hop header lines, leaving every other byte as received."""
    named = [t for t in conn_tokens if t and t not in _LINE_MARKERS]
    markers = [m for m in _LINE_MARKERS.values() if m in lower]
    if upgrade:  # the upgrade handshake must reach the primary intact
        markers = [m for m in markers if m not in (b"\r\nconnection:", b"\r\nupgrade:")]
    markers.extend(b"\r\n" + t + b":" for t in named)
    if not markers:
        return raw  # the common case: nothing to drop, no copy
    # Cut each dropped line out together with the CRLF before it, by search and slice:
    # a validated head has CRLF line ends and no space before a colon, so
    # "CRLF name:" finds exactly the lines of that name.
    spans = []
    for marker in markers:
        at = lower.find(marker)
        while at >= 0:
            end = lower.find(b"\r\n", at + 2)
            spans.append((at, end))
            at = lower.find(marker, end)
    if len(spans) == 1:
        start, end = spans[0]
        return raw[:start] + raw[end:]
    spans.sort()
    pieces = []
    pos = 0
    for start, end in spans:
        pieces.append(raw[pos:start])
        pos = end
    pieces.append(raw[pos:])
    return b"".join(pieces)


class BodyFramer:
    """Counts how many of the bytes that follow a request head belong to its body."""

    __slots__ = ("remaining", "scanner")

    def __init__(self, head: RequestHead) -> None:
        self.remaining = max(head.content_length, 0)
        self.scanner = ChunkedScanner() if head.chunked else None

    @property
    def done(self) -> bool:
        if self.scanner is not None:
            return self.scanner.done
        return self.remaining == 0

    def feed(self, data: bytes, start: int = 0) -> int:
        """Return how many bytes of data[start:] belong to the body.

        Raises:
            HttpError: 400 on a malformed chunked body.
        """
        if self.scanner is not None:
            try:
                return self.scanner.feed(data, start)
            except ChunkedError as exc:
                raise HttpError(400, f"bad chunked body: {exc}") from None
        n = min(self.remaining, len(data) - start)
        self.remaining -= n
        return n
