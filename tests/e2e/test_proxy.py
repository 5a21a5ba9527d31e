"""The primary path end to end: real clients, fastmirror as a subprocess, a real primary.

What the client gets must be the primary's response byte for byte; what the primary
gets must be the client's bytes minus hop-by-hop headers. Most tests share one proxy
(module scope, no shadow) in front of one recording primary, cleared before each test.
"""

from __future__ import annotations

import hashlib
import signal
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Iterator

import httpx
import pytest

from conftest import (
    Proxy,
    RecordingServer,
    dead_port,
    pattern,
    raw_exchange,
    read_response,
    recv_exactly,
    start_proxy,
)

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(60)]

VOLATILE = {b"date", b"connection", b"keep-alive", b"server", b"via"}


@pytest.fixture(scope="module")
def upstream() -> Iterator[RecordingServer]:
    with RecordingServer("primary") as server:
        yield server


@pytest.fixture(scope="module")
def shared_proxy(upstream: RecordingServer) -> Iterator[Proxy]:
    proxy = start_proxy(primary=upstream, shadow=None)
    yield proxy
    proxy.close()


@pytest.fixture
def env(shared_proxy: Proxy, upstream: RecordingServer) -> tuple[Proxy, RecordingServer]:
    assert shared_proxy.proc.poll() is None, shared_proxy.describe()
    upstream.clear()
    return shared_proxy, upstream


def connect(port: int, timeout: float = 5.0) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=timeout)


def rst_close(sock: socket.socket) -> None:
    """Close with a RST, like a client that crashed."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def normalized(raw: bytes) -> bytes:
    """A raw response without Date-like volatile and hop-by-hop header lines."""
    head, sep, body = raw.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    kept = [lines[0]] + [ln for ln in lines[1:] if ln.split(b":", 1)[0].strip().lower() not in VOLATILE]
    return b"\r\n".join(kept) + sep + body


def request(method: str, target: str, host: str = "fm.test", headers: tuple[str, ...] = (), body: bytes = b"") -> bytes:
    lines = [f"{method} {target} HTTP/1.1", f"Host: {host}", *headers]
    if body or method in ("POST", "PUT"):
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def exchange_both(proxy: Proxy, upstream: RecordingServer, req: bytes, head_request: bool = False) -> tuple[bytes, bytes]:
    """The same request sent directly to the primary and through the proxy: both raw responses."""
    with connect(upstream.port) as direct, connect(proxy.port) as via:
        direct.sendall(req)
        want = read_response(direct, head_request=head_request).raw
        via.sendall(req)
        got = read_response(via, head_request=head_request).raw
    return want, got


# -- byte for byte ------------------------------------------------------------------

RESPONSE_CASES = [
    ("GET", "/"),
    ("GET", "/some/path?a=1&b=%20x"),
    ("GET", "/bytes?n=1000"),
    ("GET", "/bytes?n=0"),
    ("GET", "/chunked?n=5000&size=1000"),
    ("GET", "/chunked?n=0&size=10"),
    ("GET", "/status/404"),
    ("GET", "/status/500"),
    ("GET", "/status/503"),
    ("GET", "/status/302"),
    ("GET", "/nobody"),
    ("HEAD", "/bytes?n=777"),
    ("DELETE", "/status/202"),
]


@pytest.mark.parametrize("method,target", RESPONSE_CASES)
def test_response_byte_for_byte(env, method, target):
    proxy, upstream = env
    want, got = exchange_both(proxy, upstream, request(method, target), head_request=method == "HEAD")
    assert normalized(got) == normalized(want)
    assert b"\r\nx-upstream: primary\r\n" in got


@pytest.mark.parametrize("size", [0, 1, 4096, 100_000])
def test_post_content_length_byte_for_byte(env, size):
    proxy, upstream = env
    body = pattern(size, 3)
    req = request("POST", "/echo", headers=("Content-Type: application/octet-stream",), body=body)
    want, got = exchange_both(proxy, upstream, req)
    assert normalized(got) == normalized(want)
    assert got.endswith(b"\r\n\r\n" + body)
    # Primary side: the client's bytes, exactly (there is no hop-by-hop header to drop).
    recs = upstream.wait_for_requests(2)
    assert len(recs) == 2
    assert recs[1].raw == req


def test_get_with_httpx(env):
    proxy, _ = env
    with httpx.Client(trust_env=False, timeout=5) as client:
        resp = client.get(proxy.url + "/")
        assert resp.status_code == 200
        assert resp.content == b"hello from primary\n"
        assert resp.headers["x-upstream"] == "primary"
        resp = client.post(proxy.url + "/echo", content=b"abc")
        assert resp.content == b"abc"


def test_primary_receives_client_bytes(env):
    proxy, upstream = env
    req = (
        b"GET /exact/path?q=1&q=2 HTTP/1.1\r\nHost: Example.Test:8080\r\nUser-Agent: raw/1.0\r\n"
        b"X-Mixed-Case: Value  with   spaces\r\nx-dup: 1\r\nX-Dup: 2\r\nAccept: */*\r\n\r\n"
    )
    with connect(proxy.port) as sock:
        sock.sendall(req)
        assert read_response(sock).status == 200
    [rec] = upstream.wait_for_requests(1)
    assert rec.raw == req


# -- connection management ----------------------------------------------------------


def test_keep_alive_many_requests_one_connection(env):
    proxy, upstream = env
    with connect(proxy.port) as sock:
        for i in range(50):
            sock.sendall(request("GET", f"/bytes?n={i * 37}"))
            resp = read_response(sock)
            assert resp.status == 200 and resp.body == pattern(i * 37), i
            assert not resp.closed
    assert len(upstream.wait_for_requests(50)) == 50


def test_pipelining_responses_in_order(env):
    proxy, upstream = env
    targets = ["/slow?ms=200", "/bytes?n=10", "/chunked?n=3000&size=700", "/status/404", "/bytes?n=5"]
    with connect(proxy.port) as sock:
        sock.sendall(b"".join(request("GET", t) for t in targets))  # one write
        resps = [read_response(sock) for _ in targets]
    assert [r.status for r in resps] == [200, 200, 200, 404, 200]
    assert resps[0].body == b"hello from primary\n"
    assert resps[1].body == pattern(10)
    assert resps[2].body == pattern(3000)
    assert resps[4].body == pattern(5)
    assert sorted(r.target for r in upstream.wait_for_requests(5)) == sorted(targets)


@pytest.mark.parametrize(
    "chunks",
    [
        b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
        b"5;ext=1\r\nhello\r\nA\r\n0123456789\r\n0\r\nX-Trailer: t\r\n\r\n",
        b"1000\r\n" + pattern(4096) + b"\r\n0\r\n\r\n",
    ],
    ids=["plain", "extension-and-trailer", "4k"],
)
def test_chunked_request_body(env, chunks):
    proxy, upstream = env
    req = b"POST /echo HTTP/1.1\r\nHost: fm.test\r\nTransfer-Encoding: chunked\r\n\r\n" + chunks
    with connect(proxy.port) as sock:
        sock.sendall(req)
        resp = read_response(sock)
    [rec] = upstream.wait_for_requests(1)
    assert resp.status == 200 and resp.body == rec.body
    assert rec.raw == req  # forwarded as received: the chunk framing too


def test_chunked_request_body_in_small_writes(env):
    proxy, upstream = env
    req = b"POST /echo HTTP/1.1\r\nHost: fm.test\r\nTransfer-Encoding: chunked\r\n\r\n" + b"".join(
        b"%x\r\n%s\r\n" % (n, pattern(n, n)) for n in (1, 10, 100, 1000)
    ) + b"0\r\n\r\n"
    with connect(proxy.port) as sock:
        for i in range(0, len(req), 7):
            sock.sendall(req[i : i + 7])
        resp = read_response(sock)
    assert resp.body == b"".join(pattern(n, n) for n in (1, 10, 100, 1000))
    assert upstream.wait_for_requests(1)[0].raw == req


def test_chunked_response_large(env):
    proxy, _ = env
    with httpx.Client(trust_env=False, timeout=10) as client:
        resp = client.get(proxy.url + "/chunked?n=3000000&size=65536")
    assert resp.status_code == 200
    assert resp.headers["transfer-encoding"] == "chunked"
    assert resp.content == pattern(3_000_000)


def test_20mb_request_body(env):
    proxy, upstream = env
    body = pattern(20_000_000, 11)
    with httpx.Client(trust_env=False, timeout=30) as client:
        resp = client.post(proxy.url + "/echo", content=body)
    assert resp.status_code == 200
    assert hashlib.sha256(resp.content).hexdigest() == hashlib.sha256(body).hexdigest()
    [rec] = upstream.wait_for_requests(1)
    assert hashlib.sha256(rec.body).hexdigest() == hashlib.sha256(body).hexdigest()


def test_20mb_response(env):
    proxy, _ = env
    digest = hashlib.sha256()
    with httpx.Client(trust_env=False, timeout=30) as client:
        with client.stream("GET", proxy.url + "/bytes?n=20000000") as resp:
            assert resp.status_code == 200
            for chunk in resp.iter_raw():
                digest.update(chunk)
    assert digest.hexdigest() == hashlib.sha256(pattern(20_000_000)).hexdigest()


def test_expect_100_continue_raw(env):
    proxy, upstream = env
    with connect(proxy.port) as sock:
        sock.sendall(b"POST /echo HTTP/1.1\r\nHost: fm.test\r\nContent-Length: 11\r\nExpect: 100-continue\r\n\r\n")
        interim = read_response(sock, timeout=3)
        assert interim.status == 100
        sock.sendall(b"hello world")
        final = read_response(sock)
    assert final.status == 200 and final.body == b"hello world"
    assert upstream.wait_for_requests(1)[0].body == b"hello world"


def test_expect_100_continue_curl(env, tmp_path):
    proxy, _ = env
    body = pattern(300_000, 5)
    src, out = tmp_path / "body.bin", tmp_path / "out.bin"
    src.write_bytes(body)
    start = time.monotonic()
    # --expect100-timeout 5: without a 100 Continue, curl would wait 5 s before sending.
    done = subprocess.run(
        ["curl", "-sS", "-v", "--noproxy", "*", "--max-time", "10", "--expect100-timeout", "5",
         "-H", "Expect: 100-continue", "--data-binary", f"@{src}", "-o", str(out),
         "-w", "%{http_code}", proxy.url + "/echo"],
        capture_output=True, timeout=15,
    )
    elapsed = time.monotonic() - start
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    assert done.stdout == b"200"
    assert b"< HTTP/1.1 100" in done.stderr, done.stderr
    assert out.read_bytes() == body
    assert elapsed < 3, f"curl took {elapsed:.1f}s: no 100 Continue came"


@pytest.mark.parametrize("req", [b"GET / HTTP/1.0\r\n\r\n", b"GET / HTTP/1.0\r\nHost: fm.test\r\n\r\n"],
                         ids=["no-host", "host"])
def test_http10_client(env, req):
    proxy, _ = env
    out = raw_exchange(proxy.port, req, timeout=5)
    assert out.closed and out.elapsed < 3, f"connection not closed: {bytes(out)!r}"
    assert out.split(b" ", 2)[1] == b"200"
    assert out.endswith(b"\r\n\r\nhello from primary\n")


def test_connection_close_honoured(env):
    proxy, upstream = env
    req = b"GET / HTTP/1.1\r\nHost: fm.test\r\nConnection: close\r\n\r\n"
    out = raw_exchange(proxy.port, req, timeout=5)
    assert out.closed and out.elapsed < 3
    assert out.startswith(b"HTTP/1.1 200 ") and out.endswith(b"hello from primary\n")
    [rec] = upstream.wait_for_requests(1)
    assert rec.raw == b"GET / HTTP/1.1\r\nHost: fm.test\r\n\r\n"


def test_hop_by_hop_headers_not_forwarded(env):
    proxy, upstream = env
    keep = [b"GET /hop?x=1 HTTP/1.1", b"Host: fm.test", b"X-Before: 1", b"Accept: */*", b"X-After: 2"]
    hop = [b"Connection: keep-alive", b"Keep-Alive: timeout=5", b"proxy-connection: keep-alive",
           b"TE: trailers", b"Trailer: X-Foo"]
    lines = [keep[0], keep[1], hop[0], keep[2], hop[1], hop[2], keep[3], hop[3], hop[4], keep[4]]
    req = b"\r\n".join(lines) + b"\r\n\r\n"
    with connect(proxy.port) as sock:
        sock.sendall(req)
        assert read_response(sock).status == 200
    [rec] = upstream.wait_for_requests(1)
    assert rec.raw == b"\r\n".join(keep) + b"\r\n\r\n"


def test_primary_closing_its_connection_does_not_break_the_next_requests(env):
    proxy, upstream = env
    with httpx.Client(trust_env=False, timeout=5) as client:
        resp = client.get(proxy.url + "/close")
        assert resp.status_code == 200 and resp.content == b"hello from primary\n"
        for _ in range(5):  # the pooled connection the primary closed must not be reused
            assert client.get(proxy.url + "/").status_code == 200


# -- primary failures ---------------------------------------------------------------


def test_primary_not_listening_gives_502(run_proxy):
    proxy = run_proxy(primary=dead_port(), shadow=None)
    start = time.monotonic()
    with connect(proxy.port) as sock:
        sock.sendall(request("GET", "/"))
        resp = read_response(sock)
    assert resp.status == 502
    assert 0 < len(resp.body) < 512
    assert time.monotonic() - start < 3


def test_primary_hang_gives_504(run_proxy):
    proxy = run_proxy("--primary-timeout", "1", shadow=None)
    start = time.monotonic()
    with connect(proxy.port, timeout=6) as sock:
        sock.sendall(request("GET", "/hang"))
        resp = read_response(sock, timeout=6)
    elapsed = time.monotonic() - start
    assert resp.status == 504
    assert len(resp.body) < 512
    assert 0.9 <= elapsed < 3, elapsed


def test_primary_closing_mid_body_closes_the_client(env):
    proxy, _ = env
    out = raw_exchange(proxy.port, request("GET", "/half?n=100000"), timeout=5)
    assert out.closed and out.elapsed < 4, "client left hanging"
    head, _, body = bytes(out).partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1]) if head else 0
    # Either an error the proxy made up before any byte went out, or a truncated body:
    # never a complete 200 with the bytes the primary never sent.
    assert not (status == 200 and len(body) >= 100_000)
    if status == 200:
        assert body == pattern(len(body))


def test_client_disconnects_do_not_disturb_others(env):
    proxy, _ = env
    errors: list[str] = []
    done = threading.Event()
    count = [0]

    def steady_client() -> None:
        try:
            with httpx.Client(trust_env=False, timeout=5) as client:
                while not done.is_set() or count[0] < 30:
                    n = 1000 + count[0]
                    resp = client.get(f"{proxy.url}/bytes?n={n}")
                    if resp.status_code != 200 or resp.content != pattern(n):
                        errors.append(f"{resp.status_code} {len(resp.content)}")
                    count[0] += 1
                    if count[0] > 2000:
                        break
        except Exception as exc:
            errors.append(repr(exc))

    worker = threading.Thread(target=steady_client)
    worker.start()
    try:
        for _ in range(3):
            # Mid-request-body: announce 1 MB, send 10 KB, crash.
            sock = connect(proxy.port)
            sock.sendall(b"POST /echo HTTP/1.1\r\nHost: fm.test\r\nContent-Length: 1000000\r\n\r\n" + pattern(10_000))
            time.sleep(0.05)
            rst_close(sock)
            # Mid-response: ask for 20 MB, read 64 KB, crash.
            sock = connect(proxy.port)
            sock.sendall(request("GET", "/bytes?n=20000000"))
            assert len(recv_exactly(sock, 65536)) == 65536
            rst_close(sock)
            # And the polite versions: FIN instead of RST.
            sock = connect(proxy.port)
            sock.sendall(b"POST /echo HTTP/1.1\r\nHost: fm.test\r\nContent-Length: 1000000\r\n\r\nabc")
            sock.close()
            sock = connect(proxy.port)
            sock.sendall(request("GET", "/bytes?n=20000000"))
            recv_exactly(sock, 1000)
            sock.close()
            time.sleep(0.05)
    finally:
        done.set()
        worker.join(20)
    assert not worker.is_alive()
    assert errors == []
    assert count[0] >= 30
    assert proxy.proc.poll() is None
    with httpx.Client(trust_env=False, timeout=5) as client:
        assert client.get(proxy.url + "/").status_code == 200


# -- upgrade ------------------------------------------------------------------------


def test_websocket_upgrade_is_tunnelled_and_not_mirrored(run_proxy, primary, shadow):
    proxy = run_proxy("--mirror-percent", "100")
    with connect(proxy.port) as sock:
        sock.sendall(
            b"GET /ws HTTP/1.1\r\nHost: fm.test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        resp = read_response(sock)
        assert resp.status == 101
        assert resp.header("sec-websocket-accept") == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        # a 101's hop-by-hop headers are the handshake: passed on as the primary sent them
        assert resp.raw.startswith(b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\n"
                                   b"connection: Upgrade\r\n")
        for payload in (b"\x81\x05hello", b"\x00\xff raw bytes \r\n\r\n GET / HTTP/1.1\r\n\r\n", pattern(100_000)):
            sock.sendall(payload)
            assert recv_exactly(sock, len(payload)) == payload
    [rec] = primary.wait_for_requests(1)
    assert rec.header("upgrade") == "websocket"
    # A normal GET after it is mirrored, so the shadow is alive and did get traffic...
    with httpx.Client(trust_env=False, timeout=5) as client:
        assert client.get(proxy.url + "/after").status_code == 200
    shadow.wait_for_requests(1)
    time.sleep(0.3)
    # ...but never the upgrade.
    assert [r.target for r in shadow.requests] == ["/after"]
    assert b"/ws" not in shadow.received


# -- shutdown -----------------------------------------------------------------------


def test_sigterm_lets_in_flight_request_finish(run_proxy, primary):
    proxy = run_proxy(shadow=None)
    result: dict[str, object] = {}

    def slow_request() -> None:
        try:
            with httpx.Client(trust_env=False, timeout=10) as client:
                resp = client.get(proxy.url + "/slow?ms=1500")
                result["status"], result["body"] = resp.status_code, resp.content
        except Exception as exc:
            result["error"] = repr(exc)
        result["at"] = time.monotonic()

    worker = threading.Thread(target=slow_request)
    worker.start()
    assert primary.wait_for_requests(1, timeout=5), "the slow request never reached the primary"
    proxy.signal(signal.SIGTERM)
    sent_at = time.monotonic()
    worker.join(10)
    assert result.get("status") == 200, result
    assert result["body"] == b"hello from primary\n"
    rc = proxy.wait(timeout=8)
    assert rc == 0, proxy.describe()
    assert time.monotonic() - sent_at < 8
    # And it no longer accepts.
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", proxy.port), timeout=1).close()
