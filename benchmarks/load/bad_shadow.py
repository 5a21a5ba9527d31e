#!/usr/bin/env python3
"""Misbehaving shadow upstreams for the load benchmark (benchmarks/load/run.py).

    bad_shadow.py slow      --port P --stats-port S [--delay 1.0] [--lifetime SECONDS]
    bad_shadow.py blackhole --port P --stats-port S [--lifetime SECONDS]

slow       An HTTP/1.1 server that answers every request after --delay seconds with a
           100-byte 200. Keep-alive, pipelined requests answered in order, thousands of
           connections (asyncio on uvloop when it is installed).
blackhole  Accepts TCP connections and never reads from them nor answers: whatever a
           proxy sends piles up in the kernel's buffers.

Both serve their counters as JSON on --stats-port (`GET /`), so counting never
disturbs the port under test. Binds 127.0.0.1 only; stops on SIGTERM/SIGINT, or by
itself after --lifetime seconds (default 3600) so that nothing outlives a run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import time
from typing import Any

try:
    import uvloop
except ImportError:  # plain asyncio still works, only slower
    uvloop = None

STATS: dict[str, Any] = {
    "mode": "",
    "conns_accepted": 0,
    "conns_open": 0,
    "conns_open_max": 0,
    "requests": 0,
    "responses": 0,
    "bytes_in": 0,
}

BODY = b"ok slow shadow " + b"." * 84 + b"\n"  # 100 bytes
RESPONSE = (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n"
            % len(BODY)) + BODY
RESPONSE_CLOSE = (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n"
                  b"Connection: close\r\n\r\n" % len(BODY)) + BODY
MAX_HEAD = 65536


def _opened() -> None:
    STATS["conns_accepted"] += 1
    STATS["conns_open"] += 1
    STATS["conns_open_max"] = max(STATS["conns_open"], STATS["conns_open_max"])


def _closed() -> None:
    STATS["conns_open"] -= 1


class Slow(asyncio.Protocol):
    """Frames requests (Content-Length or chunked bodies) and answers each after a delay."""

    delay = 1.0

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.closed = False
        self.stop_reading = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        _opened()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        _closed()

    def data_received(self, data: bytes) -> None:
        STATS["bytes_in"] += len(data)
        if self.stop_reading:
            return
        self.buf += data
        loop = asyncio.get_running_loop()
        while True:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                if len(self.buf) > MAX_HEAD:
                    self.transport.close()  # type: ignore[union-attr]
                return
            lines = bytes(self.buf[:end]).split(b"\r\n")
            close = lines[0].endswith(b"HTTP/1.0")
            length, chunked = 0, False
            for line in lines[1:]:
                name, _, value = line.partition(b":")
                name, value = name.strip().lower(), value.strip().lower()
                if name == b"content-length":
                    length = int(value) if value.isdigit() else 0
                elif name == b"transfer-encoding":
                    chunked = value.endswith(b"chunked")
                elif name == b"connection":
                    close = b"close" in value if b"keep-alive" not in value else False
            start = end + 4
            if chunked:  # enough for a benchmark: wait for the last chunk
                last = self.buf.find(b"\r\n0\r\n\r\n", start - 2)
                if last < 0:
                    return
                stop = last + 7
            else:
                if len(self.buf) < start + length:
                    return
                stop = start + length
            del self.buf[:stop]
            STATS["requests"] += 1
            # Equal delays fire in FIFO order: pipelined requests are answered in order.
            loop.call_later(self.delay, self.answer, close)
            if close:
                self.stop_reading = True
                return

    def answer(self, close: bool) -> None:
        if self.closed or self.transport is None or self.transport.is_closing():
            return
        self.transport.write(RESPONSE_CLOSE if close else RESPONSE)
        STATS["responses"] += 1
        if close:
            self.transport.close()


class Blackhole(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.pause_reading()  # type: ignore[attr-defined]
        _opened()

    def connection_lost(self, exc: Exception | None) -> None:
        _closed()


class Stats(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.buf = b""

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if b"\r\n\r\n" in self.buf:
            body = json.dumps(STATS).encode() + b"\n"
            self.transport.write(  # type: ignore[attr-defined]
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
                b"Connection: close\r\n\r\n%s" % (len(body), body))
            self.transport.close()


def listen(port: int, backlog: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(backlog)
    sock.setblocking(False)
    return sock


async def serve(args: argparse.Namespace) -> None:
    loop = asyncio.get_running_loop()
    stop = loop.create_future()

    def finish() -> None:
        if not stop.done():
            stop.set_result(None)

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, finish)
    loop.call_later(args.lifetime, finish)
    STATS["mode"] = args.mode
    Slow.delay = args.delay
    factory = Slow if args.mode == "slow" else Blackhole
    await loop.create_server(factory, sock=listen(args.port, args.backlog))
    # The stats port opens last: once it listens, the port under test does too.
    await loop.create_server(Stats, sock=listen(args.stats_port, 128))
    print("bad_shadow %s on 127.0.0.1:%d (stats :%d, %s, pid %d)" % (
        args.mode, args.port, args.stats_port, "uvloop" if uvloop else "asyncio", os.getpid()),
        flush=True)
    started = time.monotonic()
    await stop
    print("bad_shadow exiting after %.0f s: %s" % (time.monotonic() - started, json.dumps(STATS)),
          flush=True)
    # Tearing down thousands of paused transports is slow and pointless: just leave.
    os._exit(0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", choices=["slow", "blackhole"])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--stats-port", type=int, required=True)
    parser.add_argument("--delay", type=float, default=1.0, help="slow: seconds before answering")
    parser.add_argument("--lifetime", type=float, default=3600.0, help="exit after this many seconds")
    parser.add_argument("--backlog", type=int, default=4096)
    args = parser.parse_args()
    try:
        import resource
        _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ImportError, ValueError, OSError):
        pass
    if uvloop is not None:
        uvloop.install()
    asyncio.run(serve(args))


if __name__ == "__main__":
    main()
