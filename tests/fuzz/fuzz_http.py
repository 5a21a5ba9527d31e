"""Pieces of the differential fuzzer: a raw recording primary, the client side of one
exchange, the check against the reference (strict_http), and hypothesis strategies.

Like strict_http, this module does not import fastmirror.
"""

from __future__ import annotations

import fcntl
import re
import select
import socket
import termios
import threading
import time
from dataclasses import dataclass, field

from hypothesis import strategies as st

from conftest import Response, read_response, take_buffered
from strict_http import Reading, read_stream

__all__ = ["RawPrimary", "Outcome", "exchange", "check", "pending_in", "streams"]

RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nX-Primary-Seq: %d\r\n\r\n"


# -- the primary ---------------------------------------------------------------------


class RawPrimary:
    """A primary on 127.0.0.1 that logs every byte it receives, in arrival order.

    It answers each complete request (read with the reference parser) with a bodiless
    200 carrying `X-Primary-Seq`, so that the proxy moves on to the next one. What the
    proxy forwarded during one exchange is `since(mark)`: exchanges run one at a time and
    the proxy sends a request only after the previous response, so the arrival order
    across upstream connections is the request order.
    """

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.lock = threading.Condition()
        self.log: list[tuple[int, bytes]] = []
        self.busy: dict[int, bool] = {}   # conn -> bytes received that end no request yet
        self.last = 0.0
        self.seq = 0
        self.conns: list[socket.socket] = []
        self.stopped = False
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _accept(self) -> None:
        # accept() under the lock, once select says a connection waits: settle() holds the
        # lock while it looks, so a connection is always either still in the listen queue
        # (the socket is readable: _unread) or in self.conns, never between the two.
        while not self.stopped:
            try:
                ready = select.select([self.sock], [], [], 0.1)[0]
            except (OSError, ValueError):
                return
            if not ready:
                continue
            with self.lock:
                try:
                    self.sock.setblocking(False)
                    conn, _ = self.sock.accept()
                except BlockingIOError:
                    continue
                except OSError:
                    return
                conn.setblocking(True)
                index = len(self.conns)
                self.conns.append(conn)
                self.busy[index] = False
            threading.Thread(target=self._serve, args=(index, conn), daemon=True).start()

    def _serve(self, index: int, conn: socket.socket) -> None:
        buf = b""
        consumed = 0
        broken = False
        while True:
            try:
                data = conn.recv(65536)
            except OSError:
                data = b""
            with self.lock:
                self.last = time.monotonic()
                if not data:
                    self.busy[index] = False
                    self.lock.notify_all()
                    break
                self.log.append((index, data))
                buf += data
                while not broken:
                    end = lenient_request_end(buf, consumed)
                    if end is None:
                        break
                    if end < 0:
                        broken = True   # not a request stream any more: just record
                        break
                    consumed = end
                    self.seq += 1
                    try:
                        conn.sendall(RESPONSE % self.seq)
                    except OSError:
                        broken = True
                buf, consumed = buf[consumed:], 0
                self.busy[index] = broken or buf.strip(b"\r\n") != b""
                self.lock.notify_all()
        conn.close()

    def mark(self) -> int:
        with self.lock:
            return len(self.log)

    def since(self, mark: int) -> bytes:
        with self.lock:
            return b"".join(data for _, data in self.log[mark:])

    def settle(self, quiet: float = 0.05, timeout: float = 1.0) -> None:
        """Wait until no connection holds an unfinished request and nothing arrived for
        `quiet` seconds (or `timeout`): bytes still in flight count for this exchange."""
        deadline = time.monotonic() + timeout
        with self.lock:
            while True:
                now = time.monotonic()
                if now >= deadline:
                    return
                if (not any(self.busy.values()) and now - self.last >= quiet
                        and not self._unread()):
                    return
                self.lock.wait(min(quiet, deadline - now))

    def _unread(self) -> bool:
        """Bytes in a socket buffer not read yet, or a connection not accepted yet. On
        loopback a write lands in the peer's buffer before the call returns, so what the
        proxy wrote before its answer to the client is here by the time that answer is."""
        if select.select([self.sock], [], [], 0)[0] or self._in_flight():
            return True
        for i, conn in enumerate(self.conns):
            if conn.fileno() < 0:
                continue
            try:
                if fcntl.ioctl(conn.fileno(), termios.FIONREAD, b"\0\0\0\0") != b"\0\0\0\0":
                    return True
            except OSError:
                continue
        return False

    def _in_flight(self) -> bool:
        """A TCP segment to or from this port not delivered yet, or a connect under way.

        A loopback write is usually in the peer's buffer when it returns, but not on a
        loaded machine, where the kernel may defer the delivery: the sender's socket then
        still counts the bytes (tx_queue) in /proc/net/tcp. Not on Linux: never."""
        for table in ("/proc/net/tcp", "/proc/net/tcp6"):
            try:
                with open(table) as f:
                    rows = f.read().splitlines()[1:]
            except OSError:
                continue
            for row in rows:
                cols = row.split()
                if len(cols) < 5:
                    continue
                ports = {int(cols[1].rsplit(":", 1)[1], 16), int(cols[2].rsplit(":", 1)[1], 16)}
                if self.port not in ports or cols[3] == "0A":  # another port; the listener
                    continue
                tx, rx = (int(n, 16) for n in cols[4].split(":"))
                if tx or rx or cols[3] in ("02", "03"):  # queued bytes, SYN_SENT, SYN_RECV
                    return True
        return False

    def close(self) -> None:
        self.stopped = True
        self.sock.close()
        with self.lock:
            conns = list(self.conns)
        for c in conns:
            try:
                c.close()
            except OSError:
                pass


def lenient_request_end(buf: bytes, pos: int) -> int | None:
    """Where the request at buf[pos:] ends as a lenient back end reads it (None: not
    yet complete; -1: unreadable). Lenient on purpose: whatever the proxy forwards gets
    an answer, so a wrong forward shows in the bytes, not as a hang."""
    while buf.startswith(b"\r\n", pos):
        pos += 2
    end = buf.find(b"\r\n\r\n", pos)
    if end < 0:
        return None
    end += 4
    head = buf[pos:end].lower()
    m = re.search(rb"\r\ncontent-length:[ \t]*([0-9]+)", head)
    if re.search(rb"\r\ntransfer-encoding:[^\r]*chunked", head):
        return _lenient_chunked_end(buf, end)
    if m is not None:
        n = end + int(m.group(1))
        return n if n <= len(buf) else None
    return end


def _lenient_chunked_end(buf: bytes, pos: int) -> int | None:
    while True:
        eol = buf.find(b"\r\n", pos)
        if eol < 0:
            return None
        m = re.match(rb"[0-9a-fA-F]+", buf[pos:eol])
        if m is None:
            return -1
        size = int(m.group(0), 16)
        pos = eol + 2
        if size == 0:
            while True:
                eol = buf.find(b"\r\n", pos)
                if eol < 0:
                    return None
                if eol == pos:
                    return eol + 2
                pos = eol + 2
        pos += size + 2
        if pos > len(buf):
            return None


# -- the client ----------------------------------------------------------------------


@dataclass
class Outcome:
    """What the client saw, and what reached the primary."""

    responses: list[Response] = field(default_factory=list)
    closed: bool = False
    leftover: bytes = b""      # bytes after the last whole response
    forwarded: bytes = b""
    end_mark: int = 0          # the primary's log position when it was collected


def exchange(port: int, pieces: list[bytes], primary: RawPrimary, timeout: float = 4.0) -> Outcome:
    """Send `pieces` (a few ms apart) on one connection, half-close, read every response
    until the proxy closes; then collect what the primary received meanwhile."""
    mark = primary.mark()
    out = Outcome()
    deadline = time.monotonic() + timeout
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            for i, piece in enumerate(pieces):
                if i:
                    time.sleep(0.003)
                sock.sendall(piece)
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass   # refused early and closed: read what it said
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            try:
                out.responses.append(read_response(sock, timeout=left))
            except ConnectionError:
                out.closed = True
                break
            except (TimeoutError, OSError):
                break
        out.leftover = take_buffered(sock)
    primary.settle()
    out.forwarded = primary.since(mark)
    out.end_mark = primary.mark()
    return out


# -- the check ---------------------------------------------------------------------


def check(reading: Reading, out: Outcome) -> None:
    """Assert that the proxy did what the reference reading says (AssertionError)."""
    reqs = reading.requests
    want = b"".join(q.forward for q in reqs)
    got = out.forwarded
    statuses = [r.status for r in out.responses]
    n = len(reqs)
    assert got.startswith(want), (
        f"the primary did not get the accepted requests as the reference reads them\n"
        f"  want {want!r}\n  got  {got!r}")
    assert statuses[:n] == [200] * n and all(r.header("x-primary-seq") for r in out.responses[:n]), (
        f"expected {n} answer(s) from the primary, got statuses {statuses}")
    extra = statuses[n:]
    rest = got[len(want):]
    errors_ok = all(400 <= s < 600 for s in extra) and len(extra) <= 1
    if reading.refusal is not None:
        # A 4xx/5xx even for a body error: this primary never answers an unfinished
        # request, so the proxy's response has not started when it finds the error.
        ref = reading.refusal
        assert errors_ok and extra, (
            f"want a 4xx/5xx for {ref.reason} {sorted(ref.decisions)}, got {extra}")
        if ref.in_body:
            assert ref.forward_ok is not None and ref.forward_ok.startswith(rest), (
                f"refused request ({ref.reason}, {sorted(ref.decisions)}) forwarded past its "
                f"first bad byte:\n  may {ref.forward_ok!r}\n  got {rest!r}")
        else:
            assert rest == b"", f"refused head ({ref.reason}, {sorted(ref.decisions)}) reached the primary: {rest!r}"
    elif reading.incomplete:
        assert errors_ok, f"unfinished request: want nothing or a 4xx/5xx, got {extra}"
        assert reading.partial_ok.startswith(rest), (
            f"unfinished request forwarded wrongly:\n  may {reading.partial_ok!r}\n  got {rest!r}")
    else:
        assert extra == [], f"nothing more to answer, got {extra}"
        assert rest == b"", f"the primary got more than the client sent: {rest!r}"
    assert out.leftover == b"", f"bytes after the last response: {out.leftover[:200]!r}"
    assert out.closed, "the proxy did not close the half-closed connection"


def pending_in(reading: Reading, pending: frozenset[str]) -> set[str]:
    """The not-yet-implemented decisions whose outcome this reading depends on."""
    deps: set[str] = set()
    for q in reading.requests:
        deps |= q.decisions
    if "D11" in reading.decisions:
        deps.add("D11")
    ref = reading.refusal
    if ref is not None and ref.decisions <= pending:
        deps |= ref.decisions   # nothing refused before issue 7 backs this refusal
    return deps & pending


# -- strategies ------------------------------------------------------------------------
# Each field has values that are fine and values that are not (for the reference:
# some of "not" are fine too, e.g. leading zeros; the reference decides, not the lists).

METHODS = ([b"GET", b"POST", b"PUT", b"HEAD", b"OPTIONS", b"DELETE", b"PATCH", b"PROPFIND", b"M-SEARCH"],
           [b"get", b"Get", b"post", b"CONNECT", b"PRI", b"G@T", b"", b"GET/", b"\x80GET", b"TRACE"])
TARGETS = ([b"/", b"/a/b?x=1&y=%20", b"/p;q=1", b"//double", b"/a#frag", b"http://fm.test/x",
            b"HTTPS://fm.test:8443", b"http://fm.test"],
           [b"*", b"http://", b"http:///x", b"fz/1", b"fm.test:443", b"?x", b"ftp://fm.test/", b"/\x80",
            b"/a b", b"", b"/%00", b"/\x7f", b"/a\tb"])
VERSIONS = ([b"HTTP/1.1", b"HTTP/1.1", b"HTTP/1.1", b"HTTP/1.0"],
            [b"HTTP/1.2", b"HTTP/2.0", b"HTTP/0.9", b"http/1.1", b"HTTP/1.10", b"HTTP/1", b"HTTP/1.1 ", None])
HOSTS = ([b"fm.test", b"fm.test", b"fm.test:8080", b"127.0.0.1", b"[::1]:80", b"", b"a%41.test", b"x_y.test",
          b"fm.test:", b"[v1.x]"],
         [b"fm .test", b"u@fm.test", b"fm.test/x", b"::1", b"[::1", b"a:b", b"%zz", b"fm.test:80:80",
          b'a"b', b"fm.test\x80", b"fm.test\x00", b"fm.test\t:1"])
CONTENT_LENGTHS = [
    b"18446744073709551616", b"99999999999999999999", b"18446744073709551636",
    b"9223372036854775807", b"9223372036854775808", b"0000000000000000003",
    b"00000000000000000003", b"123456789012345678901", b"5, 5", b"+3", b"-1", b"0x3", b"",
    b"3 3", b" 3 ", b"3\t", b"003", b"3",
]
CODINGS = [b"chunked", b"Chunked", b"CHUNKED", b"chunked, chunked", b"gzip, chunked", b"chunked, gzip",
           b"identity", b"", b" chunked", b"chunked\t", b"xchunked", b",chunked", b"chunked,", b'chunked;q="1"']
FRAMING_NAMES = [b"Content-Length", b"content-length", b"CONTENT-LENGTH", b"Transfer-Encoding",
                 b"transfer-encoding", b"Content_Length", b"Transfer_Encoding", b"transfer_ENCODING",
                 b"Content-Length ", b" Transfer-Encoding", b"Content__Length", b"Content-Length\t"]
HOP_LINES = ([b"Connection: keep-alive", b"Connection: close", b"Connection: Close, x-drop",
              b"Connection: x-drop", b"Connection: Upgrade", b"Connection: upgrade, x-drop", b"Connection: ,",
              b"Keep-Alive: timeout=5", b"TE: trailers", b"Trailer: X-T", b"Upgrade: websocket",
              b"Proxy-Connection: keep-alive", b"X-Drop: 1", b"x-drop: 2", b"Expect: 100-continue"],
             [b"Connection: content-length", b"Connection: transfer-encoding", b"Connection: host"])
NAMES = ([b"X-A", b"x-b", b"ACCEPT", b"User-Agent", b"X_Under", b"!#$%&'*+.^_`|~"],
         [b"X-A ", b"X\tA", b"X@A", b"", b"\x80X", b" X-Fold", b"\tX-Fold", b"X\x00"])
VALUES = ([b"", b"v", b"a b", b"a\tb", b"  padded  ", b"\x80\xff", b"1, 2"],
          [b"a\x00b", b"a\x01b", b"a\x7fb", b"a\rb", b"a\nb", b"a\r\n b", b"a\r\n\tb"])
EXTS = ([b"", b"", b"", b";a", b";a=b", b';a="b c"', b';a="\\""', b";a;b=c"],
        [b";", b";=x", b";a=", b';a="b', b"; a=b", b";a =b", b';a="x"y', b";a\x00", b";x\x01=N", b";a=b ",
         b" ;a", b";a=\x80", b";a\r"])
TRAILERS = ([b"X-T: v", b"X-T:", b"x-t: a\tb ", b"X: \x80"],
            [b"X-No-Colon", b"X: a\x00b", b" folded", b"X : a", b"Content-Length: 5",
             b"transfer_encoding: chunked", b"Host: x", b"Connection: close", b"TE: trailers", b"Trailer: x",
             b"X: a\nY: b", b":x"])
BODIES = ([b"", b"hello", b"\r\n", b"0\r\n\r\n", b"GET /hidden HTTP/1.1\r\nHost: fm.test\r\n\r\n"], [])


class _Picker:
    """Chooses each field from its good or its bad values, by the request's mode:
    "clean" (good only), "one" (a single bad field, at the chosen index), "any" (each
    field bad one time in six)."""

    def __init__(self, draw: st.DrawFn, mode: str, fields: int) -> None:
        self.draw, self.mode, self.n = draw, mode, 0
        self.bad_at = draw(st.integers(0, fields - 1)) if mode == "one" else -1

    def bad(self) -> bool:
        self.n += 1
        if self.mode == "one":
            return self.n - 1 == self.bad_at
        return self.mode == "any" and self.draw(st.integers(0, 5)) == 0

    def __call__(self, choices: tuple[list, list]) -> object:
        good, bad = choices
        use_bad = self.bad() and bool(bad)
        return self.draw(st.sampled_from(bad if use_bad else good))


def _size(draw: st.DrawFn, pick: _Picker, n: int) -> bytes:
    """A chunk size that says n (hex, maybe upper case, maybe with leading zeros)."""
    text = b"%x" % n
    if draw(st.booleans()):
        text = text.upper()
    zeros = draw(st.sampled_from([0, 0, 0, 1, 3, 16 - len(text)]))
    if pick.bad():   # past the limits, or not the data's size
        return draw(st.sampled_from([b"ffffffffffffffff", b"8000000000000000", b"7fffffffffffffff",
                                     b"0" * (17 - len(text)) + text, b"%x" % (n + 1), b"-1", b"x", b""]))
    return b"0" * max(zeros, 0) + text


def _chunked_body(draw: st.DrawFn, pick: _Picker) -> bytes:
    out = []
    for data in draw(st.lists(st.binary(min_size=1, max_size=10), max_size=3)):
        size = _size(draw, pick, len(data))
        sep = draw(st.sampled_from([b"\n", b" \r\n", b"\r"])) if pick.bad() else b"\r\n"
        end = draw(st.sampled_from([b"", b"\n", b"X\r\n"])) if pick.bad() else b"\r\n"
        out.append(size + pick(EXTS) + sep + data + end)
    out.append(draw(st.sampled_from([b"0", b"0", b"000", b"0000000000000000"])) + pick(EXTS) + b"\r\n")
    for _ in range(draw(st.integers(0, 2))):
        out.append(pick(TRAILERS) + b"\r\n")  # type: ignore[operator]
    out.append(b"\r\n")
    return b"".join(out)


@st.composite
def request(draw: st.DrawFn) -> bytes:
    """One request: clean, with one bad field, or with any number of them."""
    pick = _Picker(draw, draw(st.sampled_from(["clean", "clean", "one", "one", "any"])), 12)
    version = pick(VERSIONS)
    sp = draw(st.sampled_from([b"  ", b"\t", b""])) if pick.bad() else b" "
    target: bytes = pick(TARGETS)  # type: ignore[assignment]
    lines = []
    hosts = draw(st.sampled_from([0, 2])) if pick.bad() else 1
    for _ in range(hosts):
        host: bytes = pick(HOSTS)  # type: ignore[assignment]
        lines.append(draw(st.sampled_from([b"Host", b"host", b"HOST"])) + b": " + host)
        m = re.match(rb"(?i)(https?://)[^/?#]*(.*)", target)
        if m and draw(st.booleans()):   # mostly the authority is the Host value
            target = m.group(1) + host + m.group(2)
    line = pick(METHODS) + sp + target + (b"" if version is None else b" " + version)  # type: ignore[operator]
    for _ in range(draw(st.integers(0, 2))):
        ows = draw(st.sampled_from([b"", b" ", b"\t"]))
        lines.append(pick(NAMES) + b":" + ows + pick(VALUES))  # type: ignore[operator]
    for _ in range(draw(st.integers(0, 2))):
        lines.append(pick(HOP_LINES))
    body = b""
    framing = draw(st.sampled_from(["none", "cl", "chunked"]))
    if pick.bad():
        framing = "odd"
    if framing == "cl":
        body = pick(BODIES)  # type: ignore[assignment]
        if draw(st.booleans()):
            body = draw(st.binary(max_size=12))
        off = draw(st.sampled_from([-1, 1, 5])) if pick.bad() else 0
        lines.append(b"Content-Length: %d" % max(len(body) + off, 0))
    elif framing == "chunked":
        lines.append(b"Transfer-Encoding: chunked")
        body = _chunked_body(draw, pick)
    elif framing == "odd":
        for _ in range(draw(st.integers(1, 2))):
            name = draw(st.sampled_from(FRAMING_NAMES))
            codes = CONTENT_LENGTHS if b"length" in name.lower() else CODINGS
            lines.append(name + b": " + draw(st.sampled_from(codes)))
        body = _chunked_body(draw, pick) if draw(st.booleans()) else draw(st.binary(max_size=12))
    if draw(st.booleans()):
        lines = list(draw(st.permutations(lines)))
    eol = draw(st.sampled_from([b"\n", b"\r", b"\r\r\n"])) if pick.bad() else b"\r\n"
    head = eol.join([line] + lines) + b"\r\n\r\n"
    return head + body


@st.composite
def streams(draw: st.DrawFn) -> tuple[bytes, list[bytes]]:
    """What a client sends on one connection, and how it is cut into writes."""
    parts = []
    for _ in range(draw(st.integers(1, 3))):
        parts.append(draw(st.sampled_from([b""] * 12 + [b"\r\n", b"\r\n\r\n", b"\n"])))
        parts.append(draw(request()))
    parts.append(draw(st.sampled_from([b""] * 12 + [b"\r\n", b"GET /x\r\n", b"GET / HTTP/1.1\r\nHo", b"\r\n\r\n"])))
    data = b"".join(parts)
    cuts: list[int] = []
    if len(data) >= 2 and draw(st.booleans()):
        cuts = sorted(set(draw(st.lists(st.integers(1, len(data) - 1), max_size=3))))
    pieces = [data[a:b] for a, b in zip([0] + cuts, cuts + [len(data)])]
    return data, pieces
