"""The test upstreams on their own: every path and misbehaviour mode, driven directly.

If these fail, an e2e failure says nothing about fastmirror.
"""

from __future__ import annotations

import hashlib
import socket
import threading
import time

import httpx
import pytest

from conftest import RecordingServer, dead_port, percentile, raw_exchange, read_response, recv_exactly
from upstreams import pattern

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def server():
    with RecordingServer("primary") as srv:
        yield srv


@pytest.fixture
def client():
    with httpx.Client(trust_env=False, timeout=5) as c:
        yield c


def url(srv: RecordingServer, path: str) -> str:
    return f"http://{srv.address}{path}"


def connect(srv: RecordingServer) -> socket.socket:
    return socket.create_connection(("127.0.0.1", srv.port), timeout=5)


def test_pattern_is_deterministic_and_offsettable():
    assert pattern(1000) == pattern(1000)
    assert pattern(600) + pattern(400, 600) == pattern(1000)
    assert len(pattern(20_000_000)) == 20_000_000
    assert len(set(pattern(251))) == 251  # a full period has no repeated byte


def test_default_response_and_record(server, client):
    resp = client.get(url(server, "/anything?x=1"), headers={"X-Mixed-Case": "Value"})
    assert resp.status_code == 200
    assert resp.content == b"hello from primary\n"
    assert resp.headers["x-upstream"] == "primary"
    assert "date" not in resp.headers
    [rec] = server.wait_for_requests(1)
    assert rec.method == "GET" and rec.target == "/anything?x=1"
    assert rec.path == "/anything" and rec.query == {"x": "1"}
    assert (b"X-Mixed-Case", b"Value") in rec.headers
    assert rec.header("x-mixed-case") == "Value"
    assert rec.raw.startswith(b"GET /anything?x=1 HTTP/1.1\r\n")
    assert rec.raw.endswith(b"\r\n\r\n") and rec.head == rec.raw
    assert server.received == rec.raw


def test_responses_are_byte_identical_across_connections(server):
    req = b"GET /bytes?n=100 HTTP/1.1\r\nHost: x\r\n\r\n"
    with connect(server) as a, connect(server) as b:
        a.sendall(req)
        b.sendall(req)
        assert read_response(a).raw == read_response(b).raw


def test_echo(server, client):
    body = bytes(range(256)) * 10
    resp = client.post(url(server, "/echo"), content=body)
    assert resp.content == body
    assert server.wait_for_requests(1)[0].body == body


def test_bytes_and_large(server, client):
    assert client.get(url(server, "/bytes?n=12345")).content == pattern(12345)
    resp = client.get(url(server, "/bytes?n=20000000"))
    assert hashlib.sha256(resp.content).digest() == hashlib.sha256(pattern(20_000_000)).digest()


def test_large_echo(server, client):
    body = pattern(20_000_000, 7)
    resp = client.post(url(server, "/echo"), content=body)
    assert hashlib.sha256(resp.content).hexdigest() == hashlib.sha256(body).hexdigest()
    assert len(server.wait_for_requests(1)[0].raw) > 20_000_000


def test_chunked_response(server):
    with connect(server) as sock:
        sock.sendall(b"GET /chunked?n=2500&size=1000 HTTP/1.1\r\nHost: x\r\n\r\n")
        resp = read_response(sock)
    assert resp.header("transfer-encoding") == "chunked"
    assert resp.body == pattern(2500)
    assert resp.raw.count(b"\r\n3e8\r\n") == 2  # two chunks of 1000, then one of 500


def test_chunked_request_raw_is_recorded_as_sent(server):
    req = (
        b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n"
    )
    with connect(server) as sock:
        sock.sendall(req)
        assert read_response(sock).body == b"hello world"
    [rec] = server.wait_for_requests(1)
    assert rec.raw == req and rec.body == b"hello world"


@pytest.mark.parametrize("code", [200, 201, 302, 404, 500, 503])
def test_status(server, client, code):
    resp = client.get(url(server, f"/status/{code}"), follow_redirects=False)
    assert resp.status_code == code
    assert resp.content == b"status %d\n" % code


def test_nobody(server, client):
    resp = client.get(url(server, "/nobody"))
    assert resp.status_code == 204 and resp.content == b""


def test_slow(server, client):
    start = time.monotonic()
    assert client.get(url(server, "/slow?ms=300")).status_code == 200
    assert 0.28 <= time.monotonic() - start < 2


def test_close(server):
    with connect(server) as sock:
        sock.sendall(b"GET /close HTTP/1.1\r\nHost: x\r\n\r\n")
        resp = read_response(sock)
        assert resp.header("connection") == "close"
        assert sock.recv(10) == b""


def test_half(server):
    out = raw_exchange(server.port, b"GET /half?n=1000 HTTP/1.1\r\nHost: x\r\n\r\n", timeout=3)
    assert out.closed and out.elapsed < 2
    head, _, body = out.partition(b"\r\n\r\n")
    assert b"content-length: 1000" in head.lower()
    assert body == pattern(500)


def test_hang(server):
    out = raw_exchange(server.port, b"GET /hang HTTP/1.1\r\nHost: x\r\n\r\n", timeout=0.5)
    assert out == b"" and not out.closed
    assert len(server.requests) == 1


def test_keepalive_and_pipelining(server):
    reqs = b"".join(b"GET /bytes?n=%d HTTP/1.1\r\nHost: x\r\n\r\n" % n for n in (10, 2000, 5, 0, 70000))
    with connect(server) as sock:
        sock.sendall(b"GET /slow?ms=100 HTTP/1.1\r\nHost: x\r\n\r\n" + reqs)
        assert read_response(sock).body == b"hello from primary\n"
        for n in (10, 2000, 5, 0, 70000):
            assert read_response(sock).body == pattern(n)
    recs = server.wait_for_requests(6)
    assert [r.target for r in recs][1:] == [f"/bytes?n={n}" for n in (10, 2000, 5, 0, 70000)]
    assert {r.conn for r in recs} == {0}
    assert b"".join(r.raw for r in recs) == server.connections[0]


def test_expect_100_continue(server):
    with connect(server) as sock:
        sock.sendall(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
        interim = read_response(sock)
        assert interim.status == 100
        sock.sendall(b"hello")
        final = read_response(sock)
        assert final.status == 200 and final.body == b"hello"


def test_http10(server):
    out = raw_exchange(server.port, b"GET / HTTP/1.0\r\n\r\n", timeout=3)
    assert out.closed and out.elapsed < 2
    assert out.startswith(b"HTTP/1.1 200 ")
    assert out.endswith(b"hello from primary\n")


def test_head(server):
    with connect(server) as sock:
        sock.sendall(b"HEAD /bytes?n=100 HTTP/1.1\r\nHost: x\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n")
        head = read_response(sock, head_request=True)
        assert head.header("content-length") == "100" and head.body == b""
        assert read_response(sock).body == b"hello from primary\n"


def test_upgrade_websocket_echo(server):
    with connect(server) as sock:
        sock.sendall(
            b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\nearly"
        )
        resp = read_response(sock)
        assert resp.status == 101
        assert resp.header("sec-websocket-accept") == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        assert recv_exactly(sock, 5) == b"early"
        sock.sendall(b"\x00\xffraw bytes")
        assert recv_exactly(sock, 11) == b"\x00\xffraw bytes"


def test_bad_request_is_recorded_as_error(server):
    out = raw_exchange(server.port, b"GET / HTTP/1.1\r\n\r\n", timeout=3)
    assert out.startswith(b"HTTP/1.1 400 ") and out.closed
    assert server.requests == []
    assert server.errors and server.received == b"GET / HTTP/1.1\r\n\r\n"


def test_clear(server, client):
    client.get(url(server, "/"))
    server.wait_for_requests(1)
    server.clear()
    assert server.requests == [] and server.received == b""
    client.get(url(server, "/x"))
    assert [r.target for r in server.wait_for_requests(1)] == ["/x"]
    assert server.accepted == 1


def test_slow_mode():
    with RecordingServer("shadow", mode="slow", delay=0.4) as srv, httpx.Client(trust_env=False) as c:
        start = time.monotonic()
        assert c.get(url(srv, "/")).status_code == 200
        assert 0.38 <= time.monotonic() - start < 2
        assert srv.wait_for_requests(1)[0].arrived - start < 0.2  # recorded on arrival


def test_blackhole_mode():
    with RecordingServer("shadow", mode="blackhole") as srv:
        out = raw_exchange(srv.port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", timeout=0.5)
        assert out == b"" and not out.closed
        assert srv.accepted == 1
        assert srv.requests == [] and srv.received == b""


def test_blackhole_does_not_read_so_writes_eventually_block():
    with RecordingServer("shadow", mode="blackhole") as srv, connect(srv) as sock:
        sock.settimeout(0.5)
        sent = 0
        with pytest.raises(TimeoutError):
            while sent < 200_000_000:
                sent += sock.send(b"x" * 65536)
        assert sent < 200_000_000


@pytest.mark.parametrize("reset_on", ["accept", "data"])
def test_reset_mode(reset_on):
    with RecordingServer("shadow", mode="reset", reset_on=reset_on) as srv:
        try:  # the RST can beat connect() returning, the send, or the recv
            with connect(srv) as sock:
                if reset_on == "accept":
                    time.sleep(0.1)
                sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                time.sleep(0.1)
                sock.recv(100)
            pytest.fail("no reset")
        except (ConnectionResetError, BrokenPipeError):
            pass
        assert srv.accepted == 1 and srv.requests == []


def test_reset_mode_httpx_error():
    with RecordingServer("shadow", mode="reset") as srv, httpx.Client(trust_env=False, timeout=2) as c:
        with pytest.raises(httpx.TransportError):
            c.get(url(srv, "/"))


def test_dead_port():
    port = dead_port()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=2)


def test_wait_for_requests_times_out_with_what_it_has(server):
    start = time.monotonic()
    assert server.wait_for_requests(1, timeout=0.2) == []
    assert time.monotonic() - start < 1


def test_concurrent_clients(server):
    errors = []

    def worker(i: int) -> None:
        try:
            with httpx.Client(trust_env=False, timeout=5) as c:
                for _ in range(20):
                    assert c.get(url(server, f"/bytes?n={i * 100}")).content == pattern(i * 100)
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert not errors
    assert len(server.wait_for_requests(160)) == 160


def test_stop_is_prompt_with_hanging_connections():
    srv = RecordingServer("primary").start()
    sock = connect(srv)
    sock.sendall(b"GET /hang HTTP/1.1\r\nHost: x\r\n\r\n")
    srv.wait_for_requests(1)
    start = time.monotonic()
    srv.stop()
    assert time.monotonic() - start < 3
    sock.settimeout(2)
    try:
        assert sock.recv(10) == b""
    except ConnectionResetError:
        pass
    sock.close()


def test_percentile():
    assert percentile([3, 1, 2], 50) == 2
    assert percentile(list(range(1, 101)), 99) == 99
