"""The response's hop-by-hop headers are the proxy's own (issue 7, decision 12), end to end.

The primary here is nginx-like: every response says `Connection: keep-alive, X-Hop`,
`Keep-Alive: timeout=5` and carries the Connection-named `X-Hop`. None of that may reach
the client; instead, every response after which the proxy closes the client connection
says `connection: close`, so a keep-alive client never sends a request that is lost.
Raw sockets on 127.0.0.1, fastmirror as a subprocess.
"""

from __future__ import annotations

import asyncio
import signal
import socket
import time
from collections.abc import Iterator

import pytest
from upstreams import StreamServer, dead_port

from conftest import Response, raw_exchange, read_response, wait_closed

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(60)]

HOP_LINES = b"Connection: keep-alive, X-Hop\r\nKeep-Alive: timeout=5\r\nX-Hop: secret\r\n"
HOP_NAMES = ("keep-alive", "x-hop", "proxy-connection", "upgrade")


class HopPrimary(StreamServer):
    """Answers every request with the hop-by-hop lines above; `requests`: the heads it read.

    /slow?ms=M  answers after M ms       /close-delimited  no length: the body ends at the close
    /early      413 before reading the request body, then closes (nginx does this)
    anything else: 200 with `resp <target>` and Content-Length
    """

    def __init__(self) -> None:
        super().__init__(self._serve_one)
        self.requests: list[bytes] = []

    async def _serve_one(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            self.requests.append(head)
            target = head.split(b" ", 2)[1]
            if target == b"/early":
                writer.write(b"HTTP/1.1 413 Content Too Large\r\nContent-Length: 4\r\n"
                             + HOP_LINES + b"\r\nbig!")
                await writer.drain()
                return
            length = 0
            for line in head.lower().split(b"\r\n"):
                if line.startswith(b"content-length:"):
                    length = int(line[15:])
            await reader.readexactly(length)
            if target.startswith(b"/slow?ms="):
                await asyncio.sleep(int(target[9:]) / 1000)
            body = b"resp " + target
            if target == b"/close-delimited":
                writer.write(b"HTTP/1.1 200 OK\r\n" + HOP_LINES + b"\r\n" + body)
                await writer.drain()
                return
            writer.write(b"HTTP/1.1 200 OK\r\nX-Other: kept\r\nContent-Length: %d\r\n%s\r\n%s"
                         % (len(body), HOP_LINES, body))
            await writer.drain()


@pytest.fixture
def hop_primary() -> Iterator[HopPrimary]:
    with HopPrimary() as server:
        yield server


@pytest.fixture
def proxy(run_proxy, hop_primary):
    return run_proxy(primary=hop_primary.address, shadow=None)


def connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=5)


def assert_proxys_own(resp: Response, close: bool) -> None:
    """No hop-by-hop line of the primary's; `connection: close` exactly when closing."""
    names = [name.decode().lower() for name, _ in resp.headers]
    assert not set(names) & set(HOP_NAMES), resp.raw
    if close:
        assert [v for n, v in resp.headers if n.lower() == b"connection"] == [b"close"], resp.raw
    else:
        assert "connection" not in names, resp.raw


def get(target: bytes, extra: bytes = b"", version: bytes = b"1.1") -> bytes:
    return b"GET %s HTTP/%s\r\nHost: fm.test\r\n%s\r\n" % (target, version, extra)


def test_keep_alive_responses_carry_no_hop_by_hop_header_of_the_primary(proxy):
    with connect(proxy.port) as sock:
        for n in range(3):
            sock.sendall(get(b"/k%d" % n))
            resp = read_response(sock)
            assert resp.status == 200 and resp.body == b"resp /k%d" % n
            assert_proxys_own(resp, close=False)
            assert resp.header("x-other") == "kept"  # end-to-end headers are untouched
            # byte for byte the primary's answer, minus the three lines
            assert resp.raw == (b"HTTP/1.1 200 OK\r\nX-Other: kept\r\nContent-Length: 8\r\n\r\n"
                                b"resp /k%d" % n)


@pytest.mark.parametrize("request_bytes", [
    get(b"/c", b"Connection: close\r\n"),
    get(b"/c", b"connection: Keep-Alive, CLOSE\r\n"),
    get(b"/c", version=b"1.0"),
    get(b"/c", b"Connection: keep-alive\r\n", version=b"1.0"),  # 1.0: the proxy closes anyway
], ids=["close", "close-token", "http10", "http10-keep-alive"])
def test_response_before_the_proxy_closes_says_close(proxy, request_bytes):
    with connect(proxy.port) as sock:
        sock.sendall(request_bytes)
        resp = read_response(sock)
        assert resp.body == b"resp /c"
        assert_proxys_own(resp, close=True)
        assert wait_closed(sock)


def test_body_delimited_by_the_primarys_close_says_close(proxy):
    got = raw_exchange(proxy.port, get(b"/close-delimited"))
    assert got.closed
    assert got == (b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\nresp /close-delimited")


def test_early_response_while_the_request_body_is_incomplete_says_close(proxy):
    with connect(proxy.port) as sock:
        sock.sendall(b"POST /early HTTP/1.1\r\nHost: fm.test\r\nContent-Length: 100000\r\n\r\n"
                     + b"x" * 1000)
        resp = read_response(sock)
        assert resp.status == 413 and resp.body == b"big!"
        assert_proxys_own(resp, close=True)
        assert wait_closed(sock)


def test_last_pipelined_response_after_a_half_close_says_close(proxy):
    with connect(proxy.port) as sock:
        # /p3 is slow so that the half-close surely reaches the proxy before its answer
        # (a client descheduled between sendall and shutdown would otherwise race it)
        sock.sendall(get(b"/p1") + get(b"/p2") + get(b"/slow?ms=300"))
        sock.shutdown(socket.SHUT_WR)
        responses = [read_response(sock) for _ in range(3)]
        assert [r.body for r in responses] == [b"resp /p1", b"resp /p2", b"resp /slow?ms=300"]
        # /p1 may have gone out before the half-close arrived; /p2 is after a complete
        # /p3 that is still to be answered, so it must not say close
        assert_proxys_own(responses[1], close=False)
        assert_proxys_own(responses[2], close=True)
        assert wait_closed(sock)


def test_in_flight_response_during_a_drain_says_close(run_proxy, hop_primary):
    proxy = run_proxy("--drain-timeout", "10", primary=hop_primary.address, shadow=None)
    with connect(proxy.port) as sock:
        sock.sendall(get(b"/warm"))
        assert_proxys_own(read_response(sock), close=False)
        sock.sendall(get(b"/slow?ms=1500"))
        deadline = time.monotonic() + 5
        while len(hop_primary.requests) < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert len(hop_primary.requests) == 2, "the slow request never reached the primary"
        proxy.signal(signal.SIGTERM)
        resp = read_response(sock, timeout=10)
        assert resp.status == 200 and resp.body == b"resp /slow?ms=1500"
        assert_proxys_own(resp, close=True)
        assert wait_closed(sock)
    assert proxy.wait(timeout=10) == 0, proxy.describe()


def test_proxys_own_error_responses_say_close(run_proxy, hop_primary):
    proxy = run_proxy(primary=hop_primary.address, shadow=None)
    got = raw_exchange(proxy.port, b"GET / HTTP/1.1\r\nHost: fm.test\r\nContent-Length: 5\r\n"
                                   b"Transfer-Encoding: chunked\r\n\r\n")
    assert got.startswith(b"HTTP/1.1 400 ") and b"\r\nconnection: close\r\n" in got and got.closed
    down = run_proxy(primary=f"127.0.0.1:{dead_port()}", shadow=None)
    got = raw_exchange(down.port, get(b"/"))
    assert got.startswith(b"HTTP/1.1 502 ") and b"\r\nconnection: close\r\n" in got and got.closed
