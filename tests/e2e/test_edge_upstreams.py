"""Upstreams and clients at the edges of HTTP/1.1 framing, end to end.

Each case is a sequence a code review found mishandled: a body delimited by the
primary's close, a client that half-closes after pipelining, a 204 that sends the
body it announced, a shadow that drops a copy of a POST, a client that stalls in the
middle of its request body. Raw upstreams on 127.0.0.1, fastmirror as a subprocess.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Awaitable, Callable

import orjson
import pytest
from upstreams import StreamServer

pytestmark = pytest.mark.e2e

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter, "RawUpstream"], Awaitable[None]]


class RawUpstream(StreamServer):
    """A scripted upstream: handler(reader, writer, server) per connection; `requests` it read."""

    def __init__(self, handler: Handler) -> None:
        super().__init__(lambda reader, writer: handler(reader, writer, self))
        self.requests: list[bytes] = []  # heads, as the handlers read them


async def read_head(reader: asyncio.StreamReader, server: RawUpstream) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    server.requests.append(head)
    return head


def exchange(port: int, data: bytes, half_close: bool = False, timeout: float = 5.0) -> tuple[bytes, bool]:
    """Send data, optionally half-close, read until EOF or timeout: (bytes, saw EOF)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        if half_close:
            sock.shutdown(socket.SHUT_WR)
        out = bytearray()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                chunk = sock.recv(65536)
            except socket.timeout:
                return bytes(out), False
            if not chunk:
                return bytes(out), True
            out += chunk
        return bytes(out), False


def test_body_delimited_by_the_primarys_close_is_delimited_by_ours(run_proxy):
    async def until_close(reader, writer, server):
        await read_head(reader, server)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n\r\nbody-until-close")
        await writer.drain()

    with RawUpstream(until_close) as primary:
        proxy = run_proxy(primary=primary.address, shadow=None)
        got, eof = exchange(proxy.port, b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n", timeout=5)
        assert got.endswith(b"\r\n\r\nbody-until-close")
        assert eof, "the client must see the close that ends the body"


def test_half_close_after_pipelining_still_answers_every_request(run_proxy, tmp_path):
    async def keep_alive(reader, writer, server):
        while True:
            head = await read_head(reader, server)
            body = b"resp " + head.split(b" ", 2)[1]
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body))
            await writer.drain()

    log = tmp_path / "access.jsonl"
    with RawUpstream(keep_alive) as primary:
        proxy = run_proxy("--access-log", str(log), primary=primary.address, shadow=None)
        got, eof = exchange(proxy.port, b"GET /p1 HTTP/1.1\r\nHost: x\r\n\r\n"
                                        b"GET /p2 HTTP/1.1\r\nHost: x\r\n\r\n", half_close=True)
        assert got.count(b"HTTP/1.1 200 OK") == 2 and got.endswith(b"resp /p2") and eof
        got, eof = exchange(proxy.port, b"GET /one HTTP/1.0\r\n\r\n")
        assert got.endswith(b"resp /one") and eof
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and len(log.read_bytes().splitlines()) < 3:
            time.sleep(0.05)
        time.sleep(0.2)
        lines = [orjson.loads(line) for line in log.read_bytes().splitlines()]
        assert [(r["path"], r["status"]) for r in lines] == [("/p1", 200), ("/p2", 200), ("/one", 200)]


def test_a_204_that_sends_its_announced_body_does_not_poison_the_next_request(run_proxy):
    async def sloppy(reader, writer, server):
        while True:
            head = await read_head(reader, server)
            if head.startswith(b"GET /nobody"):
                writer.write(b"HTTP/1.1 204 No Content\r\ncontent-length: 5\r\n\r\n")
                await writer.drain()
                await asyncio.sleep(0.05)
                writer.write(b"oops!")  # the body a 204 cannot have
            else:
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
            await writer.drain()

    with RawUpstream(sloppy) as primary:
        proxy = run_proxy(primary=primary.address, shadow=None)
        first, _ = exchange(proxy.port, b"GET /nobody HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert first.startswith(b"HTTP/1.1 204")
        for _ in range(5):
            got, _ = exchange(proxy.port, b"GET /next HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            assert got.startswith(b"HTTP/1.1 200 OK") and got.endswith(b"ok"), got


def test_a_shadow_that_drops_a_posts_copy_does_not_get_it_twice(run_proxy):
    async def primary_ok(reader, writer, server):
        while True:
            head = await read_head(reader, server)
            length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0]) \
                if b"content-length:" in head.lower() else 0
            await reader.readexactly(length)
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
            await writer.drain()

    async def shadow_drops_posts(reader, writer, server):
        while True:
            head = await read_head(reader, server)
            if head.startswith(b"POST"):
                await reader.readexactly(9)
                return  # read the copy, then close without answering
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
            await writer.drain()

    with RawUpstream(primary_ok) as primary, RawUpstream(shadow_drops_posts) as shadow:
        proxy = run_proxy("--mirror-methods", "ALL", primary=primary.address, shadow=shadow.address)
        # A GET first, so the POST's copy goes out on a reused shadow connection.
        exchange(proxy.port, b"GET /warm HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        time.sleep(0.3)
        got, _ = exchange(proxy.port, b"POST /charge HTTP/1.1\r\nHost: x\r\nContent-Length: 9\r\n"
                                      b"Connection: close\r\n\r\namount=10")
        assert got.endswith(b"ok")
        time.sleep(1.0)
        posts = [h for h in shadow.requests if h.startswith(b"POST")]
        assert len(posts) == 1, "a POST copy must never be sent twice"
        assert proxy.metric("fastmirror_mirror_requests_total", outcome="failed") == 1


def test_a_client_stalling_mid_body_gets_408_and_the_primary_is_not_blamed(run_proxy):
    async def reads_forever(reader, writer, server):
        await read_head(reader, server)
        await reader.read()  # waits for a body that never completes

    with RawUpstream(reads_forever) as primary:
        proxy = run_proxy("--idle-timeout", "1", "--primary-timeout", "1",
                          primary=primary.address, shadow=None)
        got, eof = exchange(proxy.port, b"POST /u HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\npart",
                            timeout=8)
        assert got.startswith(b"HTTP/1.1 408 ") and eof, got
        assert proxy.metric("fastmirror_responses_total", role="primary", code="error") == 0


def test_101_without_an_upgrade_request_opens_no_tunnel(run_proxy):
    """A primary that answers 101 to a plain request must not turn the client connection
    into a tunnel: the client's next bytes would reach the primary unchecked (a request
    the proxy refuses, here a lowercase method with an underscored framing header)."""
    async def always_101(reader, writer, server):
        await read_head(reader, server)
        writer.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
        await writer.drain()
        server.requests.append(await reader.read(65536))  # whatever the proxy passes on
        await asyncio.sleep(0.5)

    with RawUpstream(always_101) as primary:
        proxy = run_proxy(primary=primary.address)
        smuggled = b"get /x HTTP/1.1\r\nHost: a\r\nTransfer_Encoding: chunked\r\nContent-Length: 3\r\n\r\nabc"
        out, eof = exchange(proxy.port, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n" + smuggled, timeout=5)
        assert out.startswith(b"HTTP/1.1 502 "), out[:200]
        assert b"101" not in out and eof
        time.sleep(0.3)
        assert not any(b"get /x" in r for r in primary.requests), primary.requests
