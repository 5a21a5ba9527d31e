"""A strict RFC 9112 reader of a client's request stream: the fuzzer's reference.

Written from the RFC and /work/notes/issue7-decisions.md, independently of fastmirror's
codec (it imports neither fastmirror nor h11). Given every byte a client sent on one
connection, `read_stream` says which requests a strict proxy accepts, exactly which bytes
it must forward for each (the request as sent, minus the hop-by-hop header lines), and
where and why it must refuse.

Every refusal names the decision it rests on, so a test can tell "main does not do this
yet" from a regression: "D1".."D11" are the issue-7 decisions, "old" what was refused
before issue 7, "F1".. findings of the fuzzer beyond the decision list:

    F1  a Connection header that names Content-Length, Transfer-Encoding or Host: the
        proxy cuts the named line but still frames (and forwards) the body by it, so the
        primary reads the body as the next request. Refused here (400).
    F2  an absolute-form target whose authority is not the Host value (case aside):
        RFC 9112 3.2.2 has the origin server use the target's authority and ignore Host,
        many back ends (and the shadow's "-shadow" Host rewrite) use Host; forwarded as
        received, the two readings route differently. Refused here (400).

This module must not import fastmirror: it is the independent side of the fuzz tests.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

__all__ = [
    "HOP_BY_HOP",
    "FORBIDDEN_TRAILERS",
    "Request",
    "Refusal",
    "Reading",
    "read_stream",
    "valid_host",
    "valid_chunk_ext",
]

MAX_HEAD = 64 << 10          # fastmirror's --max-head-size default
I64_MAX = (1 << 63) - 1

# Cut from the head before it goes upstream (plus every field named in Connection).
HOP_BY_HOP = frozenset((b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer", b"upgrade"))
# D5: never in a trailer section (compared lower case, "_" read as "-").
FORBIDDEN_TRAILERS = frozenset((
    b"content-length", b"transfer-encoding", b"host", b"connection", b"keep-alive",
    b"proxy-connection", b"te", b"trailer", b"upgrade",
))
FRAMING = (b"content-length", b"transfer-encoding")
# F1: a Connection option naming one of these would cut what frames or routes the request.
NOT_CONNECTION_OPTIONS = frozenset((b"content-length", b"transfer-encoding", b"host"))

_TCHAR = rb"!#$%&'*+\-.^_`|~0-9A-Za-z"
_TOKEN = re.compile(rb"[" + _TCHAR + rb"]+")
_REQUEST_LINE = re.compile(rb"([" + _TCHAR + rb"]+) ([\x21-\x7e]+) HTTP/([0-9])\.([0-9])")
# RFC 9110 5.5: field-value bytes are VCHAR, obs-text, SP and HTAB.
_FIELD_VALUE = re.compile(rb"[\x21-\x7e\x80-\xff \t]*")
_CTL = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
_DIGITS = re.compile(rb"[0-9]+")
_HEX = re.compile(rb"[0-9A-Fa-f]+")
_ABSOLUTE = re.compile(rb"(?i:https?)://([^/?#]*)")

# D7: uri-host [":" port] (RFC 3986), or empty.
_REG_NAME = rb"(?:[A-Za-z0-9\-._~!$&'()*+,;=]|%[0-9A-Fa-f]{2})*"
_IP_LITERAL = rb"\[(?:[0-9A-Fa-f:.]+|[vV][0-9A-Fa-f]+\.[A-Za-z0-9\-._~!$&'()*+,;=:]+)\]"
_HOST = re.compile(rb"(?:" + _IP_LITERAL + rb"|" + _REG_NAME + rb")(?::[0-9]*)?")

# D4: chunk-ext = *( ";" token [ "=" ( token / quoted-string ) ] ), no whitespace.
_QUOTED = rb'"(?:[\t \x21\x23-\x5b\x5d-\x7e\x80-\xff]|\\[\t \x21-\x7e\x80-\xff])*"'
_CHUNK_EXT = re.compile(rb"(?:;[" + _TCHAR + rb"]+(?:=(?:[" + _TCHAR + rb"]+|" + _QUOTED + rb"))?)*")


def valid_host(value: bytes) -> bool:
    """D7: a Host value (OWS already trimmed) is empty or uri-host [":" port]."""
    return _HOST.fullmatch(value) is not None


def valid_chunk_ext(ext: bytes) -> bool:
    """D4: the bytes between the chunk size and its CRLF (empty: no extension)."""
    return _CHUNK_EXT.fullmatch(ext) is not None


@dataclass(frozen=True)
class Request:
    """One request the reference accepts."""

    raw: bytes            # head and body as the client sent them (no leading empty lines)
    forward: bytes        # what the primary must receive: raw minus hop-by-hop lines
    method: bytes
    target: bytes
    version: bytes        # b"1.0" or b"1.1"
    close: bool           # no further request is read on this connection
    decisions: frozenset[str] = frozenset()  # decisions its acceptance depends on


@dataclass(frozen=True)
class Refusal:
    """Where the reference stops: a status for the client, nothing more forwarded."""

    status: int
    reason: str
    decisions: frozenset[str]      # every rule that refuses it ("old", "D1", ..., "F1")
    # Set when the head was valid and the error is in the body: the proxy may already
    # have forwarded a prefix of `forward_ok` (the head's forward form plus the body bytes
    # before the first offending byte), never more.
    forward_ok: bytes | None = None

    @property
    def in_body(self) -> bool:
        return self.forward_ok is not None


@dataclass
class Reading:
    """What a strict proxy makes of everything a client sent on one connection."""

    requests: list[Request] = field(default_factory=list)
    refusal: Refusal | None = None
    # The stream ends inside a request (no refusal): its head is unfinished, or its
    # body is; for the latter the proxy may have forwarded a prefix of `partial_ok`.
    incomplete: bool = False
    partial_ok: bytes = b""
    closed: bool = False           # a request asked for the close; the rest is never read
    decisions: set[str] = field(default_factory=set)  # everything the reading rests on


class _Refused(Exception):
    def __init__(self, status: int, reason: str, decisions: set[str], at: int = -1) -> None:
        super().__init__(reason)
        self.status, self.reason, self.decisions, self.at = status, reason, decisions, at


# -- the head -----------------------------------------------------------------------


@dataclass
class _Head:
    method: bytes
    target: bytes
    version: bytes
    forward: bytes
    content_length: int   # -1: none
    chunked: bool
    close: bool


def _field_lines(head: bytes) -> tuple[bytes, list[bytes]]:
    lines = head[:-4].split(b"\r\n")
    return lines[0], lines[1:]


def _check_bytes(head: bytes, why: set[str]) -> None:
    """Bare CR, bare LF, NUL and other CTLs (HT aside) anywhere in a head: old."""
    stripped = head.replace(b"\r\n", b"")
    if b"\r" in stripped or b"\n" in stripped:
        why.add("old")
    elif _CTL.search(stripped):
        why.add("old")


def _request_line(line: bytes, why: set[str]) -> tuple[bytes, bytes, bytes, int] | None:
    m = _REQUEST_LINE.fullmatch(line)
    if m is None:
        why.add("old")   # h11 refused it; D10 makes it early for an unfinished head
        return None
    method, target = m.group(1), m.group(2)
    version = m.group(3) + b"." + m.group(4)
    status = 400
    if version not in (b"1.0", b"1.1"):
        why.add("old")
        status = 505
    if method == b"CONNECT" or method == b"PRI":
        why.add("D8")
        if method == b"CONNECT" and status == 400:
            status = 405
    if re.search(rb"[a-z]", method):
        why.add("D9")
    if method != b"CONNECT" and not _target_ok(method, target):
        why.add("D6")
    return method, target, version, status


def _target_ok(method: bytes, target: bytes) -> bool:
    """D6: origin-form, absolute-form (http/https, non-empty authority), or OPTIONS *."""
    if target.startswith(b"/"):
        return True
    if target == b"*":
        return method == b"OPTIONS"
    m = _ABSOLUTE.match(target)
    return m is not None and m.group(1) != b""


def _parse_fields(lines: list[bytes], why: set[str]) -> list[tuple[bytes, bytes]]:
    fields = []
    for line in lines:
        if not line or line[0] in b" \t":
            why.add("old")   # obs-fold (or an empty line, impossible before CRLFCRLF)
            continue
        colon = line.find(b":")
        if colon <= 0:
            why.add("old")
            continue
        name, value = line[:colon], line[colon + 1:]
        if _TOKEN.fullmatch(name) is None or _FIELD_VALUE.fullmatch(value) is None:
            why.add("old")   # whitespace before the colon, a non-token name, a CTL
            continue
        fields.append((name, value.strip(b" \t")))
    return fields


def _elements(value: bytes) -> list[bytes]:
    return [e.strip(b" \t").lower() for e in value.split(b",") if e.strip(b" \t")]


def _parse_head(head: bytes) -> _Head:
    """Validate one complete head (ending in CRLFCRLF). Raises _Refused."""
    why: set[str] = set()
    if len(head) > MAX_HEAD:
        raise _Refused(431, "head too large", {"old"})
    _check_bytes(head, why)
    line, lines = _field_lines(head)
    parsed = _request_line(line, why)
    fields = _parse_fields(lines, why)
    status = 400
    if parsed is None:
        raise _Refused(400, "bad request line", why)
    method, target, version, status = parsed
    names = [n.lower() for n, _ in fields]
    hosts = [v for n, v in fields if n.lower() == b"host"]
    if (version == b"1.1" and not hosts) or len(hosts) > 1:
        why.add("old")
    for value in hosts:
        if not valid_host(value):
            why.add("D7")
    authority = _ABSOLUTE.match(target)
    if authority is not None and hosts and authority.group(1).lower() != hosts[0].lower():
        why.add("F2")
    for name in names:
        if b"_" in name and name.replace(b"_", b"-") in FRAMING:
            why.add("D3")
    content_length = -1
    lengths = [v for n, v in fields if n.lower() == b"content-length"]
    if len(lengths) > 1:
        why.add("old")
    elif lengths:
        value = lengths[0]
        if _DIGITS.fullmatch(value) is None or len(value) > 20:
            why.add("old")
        elif len(value) > 19 or int(value) > I64_MAX:
            why.add("D1")
        else:
            content_length = int(value)
    codings = [v for n, v in fields if n.lower() == b"transfer-encoding"]
    chunked = False
    if len(codings) > 1:
        why.add("old")
    elif codings:
        chunked = True
        if codings[0].lower() != b"chunked":
            why.add("old")
            status = 501 if status == 400 else status
        if lengths or version == b"1.0":
            why.add("old")
    options = [t for n, v in fields if n.lower() == b"connection" for t in _elements(v)]
    if NOT_CONNECTION_OPTIONS.intersection(options):
        why.add("F1")
    if why:
        if status == 501 and why != {"old"}:
            status = 400   # 501 only when an unknown coding is all that is wrong
        raise _Refused(status, "bad head", why)
    upgrade = b"upgrade" in names and b"upgrade" in options
    cut = (HOP_BY_HOP | set(options)) - ({b"connection", b"upgrade"} if upgrade else set())
    kept = [line] + [ln for ln, n in zip(lines, names) if n not in cut]
    forward = b"\r\n".join(kept) + b"\r\n\r\n"
    close = version == b"1.0" or b"close" in options
    return _Head(method, target, version, forward, content_length, chunked, close)


# -- chunked bodies -------------------------------------------------------------------


def _chunked_end(body: bytes) -> int:
    """Length of the chunked body at the start of `body`, or -1 if it is unfinished.

    Raises _Refused with `.at` = offset of the first offending byte.
    """
    pos = 0
    n = len(body)
    while True:
        eol = body.find(b"\r\n", pos)
        line = body[pos:] if eol < 0 else body[pos:eol]
        _check_size_line(line, pos, complete=eol >= 0)
        if eol < 0:
            return -1
        m = _HEX.match(line)
        assert m is not None
        size = int(m.group(0), 16)
        pos = eol + 2
        if size == 0:
            return _trailers_end(body, pos)
        if n < pos + size + 2:
            if n > pos + size and body[pos + size] != 0x0D:
                raise _Refused(400, "chunk data not followed by CRLF", {"old"}, pos + size)
            return -1
        if body[pos + size:pos + size + 2] != b"\r\n":
            bad = pos + size if body[pos + size] != 0x0D else pos + size + 1
            raise _Refused(400, "chunk data not followed by CRLF", {"old"}, bad)
        pos += size + 2


def _check_size_line(line: bytes, start: int, complete: bool) -> None:
    """A chunk-size line without its CRLF (maybe unfinished). Raises _Refused."""
    m = _HEX.match(line)
    digits = len(m.group(0)) if m else 0
    if digits == 0:
        if line or complete:
            raise _Refused(400, "invalid chunk size", {"old"}, start)
        return
    if digits > 16:
        raise _Refused(400, "chunk size over 16 hex digits", {"old"}, start + 16)
    if digits == 16 and int(m.group(0), 16) > I64_MAX:  # type: ignore[union-attr]
        raise _Refused(400, "chunk size over 2^63-1", {"D2"}, start + 15)
    rest = line[digits:]
    if rest and rest[0] != 0x3B:   # only ";" may follow the digits (old scanner too)
        raise _Refused(400, "invalid chunk size", {"old"}, start + digits)
    for i, c in enumerate(rest):   # bytes the scanner of old already refused
        if c in (0x00, 0x0A, 0x0D):
            raise _Refused(400, "bad byte in chunk extension", {"old"}, start + digits + i)
    if not valid_chunk_ext(rest):
        bad = _first_bad_ext_byte(rest, complete)
        if bad >= 0:
            raise _Refused(400, "bad chunk extension", {"D4"}, start + digits + bad)


def _first_bad_ext_byte(ext: bytes, complete: bool) -> int:
    """Offset of the first byte no valid extension can continue with (len: at the CR).

    -1 when an unfinished extension may still become valid.
    """
    for i in range(len(ext) + 1):
        if not _ext_prefix_ok(ext[:i]):
            return i - 1
    return len(ext) if complete else -1


# A valid chunk-ext followed by the start of one more extension.
_EXT_PREFIX = re.compile(
    _CHUNK_EXT.pattern
    + rb"(?:;(?:[" + _TCHAR + rb"]+(?:=(?:[" + _TCHAR + rb"]*|"
    + rb'"(?:[\t \x21\x23-\x5b\x5d-\x7e\x80-\xff]|\\[\t \x21-\x7e\x80-\xff])*\\?))?)?)?'
)


def _ext_prefix_ok(prefix: bytes) -> bool:
    """Can `prefix` still grow into a valid chunk-ext?"""
    return _EXT_PREFIX.fullmatch(prefix) is not None


def _trailers_end(body: bytes, pos: int) -> int:
    """After the last chunk: trailer fields, then CRLF (D5). Raises _Refused."""
    while True:
        eol = body.find(b"\r\n", pos)
        line = body[pos:] if eol < 0 else body[pos:eol]
        _check_trailer_line(line, pos, complete=eol >= 0)
        if eol < 0:
            return -1
        if eol == pos:
            return eol + 2
        pos = eol + 2


def _check_trailer_line(line: bytes, start: int, complete: bool) -> None:
    for i, c in enumerate(line):
        if c in (0x0A, 0x0D):   # a bare CR or LF: refused before issue 7
            raise _Refused(400, "bare CR or LF in trailers", {"old"}, start + i)
    if not line:
        return
    if line[0] in b" \t":
        raise _Refused(400, "folded trailer line", {"D5"}, start)
    colon = line.find(b":")
    name = line if colon < 0 else line[:colon]
    for i, c in enumerate(name):
        if _TOKEN.fullmatch(bytes([c])) is None:
            raise _Refused(400, "bad trailer name", {"D5"}, start + i)
    if colon < 0:
        if complete:
            raise _Refused(400, "trailer line without a colon", {"D5"}, start + len(line))
        return
    if colon == 0:
        raise _Refused(400, "empty trailer name", {"D5"}, start)
    if name.lower().replace(b"_", b"-") in FORBIDDEN_TRAILERS:
        raise _Refused(400, "forbidden trailer field", {"D5"}, start + colon)
    value = line[colon + 1:]
    m = _FIELD_VALUE.match(value)
    assert m is not None
    if m.end() < len(value):
        raise _Refused(400, "bad byte in trailer value", {"D5"}, start + colon + 1 + m.end())


# -- the stream ----------------------------------------------------------------------


def read_stream(data: bytes, max_head: int = MAX_HEAD) -> Reading:
    """Read every request a client sent on one connection, as a strict proxy must."""
    out = Reading()
    pos = 0
    n = len(data)
    while pos < n:
        skipped = False
        while data.startswith(b"\r\n", pos):   # D11: empty lines before a request line
            pos += 2
            skipped = True
        if skipped:
            out.decisions.add("D11")
        if pos >= n:
            break
        if data[pos:pos + 1] == b"\r" and pos + 1 == n:
            out.incomplete = True   # maybe the first half of an empty line
            break
        end = data.find(b"\r\n\r\n", pos)
        if end < 0:
            _unfinished_head(data[pos:], out, max_head)
            break
        end += 4
        try:
            head = _parse_head(data[pos:end])
        except _Refused as exc:
            out.refusal = Refusal(exc.status, exc.reason, frozenset(exc.decisions))
            out.decisions |= exc.decisions
            break
        body_start = end
        if head.chunked:
            try:
                length = _chunked_end(data[body_start:])
            except _Refused as exc:
                ok = head.forward + data[body_start:body_start + exc.at]
                out.refusal = Refusal(exc.status, exc.reason, frozenset(exc.decisions), ok)
                out.decisions |= exc.decisions
                break
        else:
            length = max(head.content_length, 0)
            if body_start + length > n:
                length = -1
        if length < 0:
            out.incomplete = True
            out.partial_ok = head.forward + data[body_start:]
            break
        body = data[body_start:body_start + length]
        decisions = frozenset({"D11"}) if skipped else frozenset()
        out.requests.append(Request(data[pos:body_start] + body, head.forward + body,
                                    head.method, head.target, head.version, head.close,
                                    decisions))
        pos = body_start + length
        if head.close:
            out.closed = True
            break
    return out


def _unfinished_head(part: bytes, out: Reading, max_head: int) -> None:
    """The stream ends inside a head. A bare LF already seen, an oversized head, or
    (D10) a complete request line that is not `method SP target SP HTTP/d.d`: refused."""
    if len(part) > max_head:
        out.refusal = Refusal(431, "head too large", frozenset({"old"}))
    elif re.search(rb"(?<!\r)\n", part):
        out.refusal = Refusal(400, "bare LF", frozenset({"old"}))
    else:
        eol = part.find(b"\r\n")
        if eol >= 0 and _REQUEST_LINE.fullmatch(part[:eol]) is None:
            out.refusal = Refusal(400, "malformed request line", frozenset({"D10"}))
    if out.refusal is not None:
        out.decisions |= out.refusal.decisions
    else:
        out.incomplete = True
