"""A client connection on mock transports, uvicorn-style (tests/protocols/test_http.py).

`Rig` builds a real ProxyContext from a real Config, with the primary's pool replaced by
`MockPool`, so a DownstreamProtocol runs exactly as in the proxy while the test plays
both the client (`rig.send`) and the primary (`rig.upstream.answer`). Time is whatever
the test passes to `rig.sweep(now)`: no sleeps, no sockets. A running event loop is
there only for the one awaited step, connecting (`rig.settle()` lets it run).
"""

from __future__ import annotations

import asyncio
from typing import Any

from fastmirror.config import load_config
from fastmirror.ops.metrics import Registry
from fastmirror.proxy.context import ProxyContext
from fastmirror.proxy.downstream import DownstreamProtocol


class MockTransport(asyncio.Transport):
    """Records what the protocol does to its transport."""

    def __init__(self, protocol: Any) -> None:
        super().__init__()
        self.protocol = protocol
        self.written = bytearray()
        self.reading = True
        self.closing = False
        self.aborted = False
        self.eof_written = False

    def write(self, data: Any) -> None:
        assert not self.closing, "write after close"
        self.written += data

    def take(self) -> bytes:
        out = bytes(self.written)
        self.written.clear()
        return out

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def is_reading(self) -> bool:
        return self.reading

    def close(self) -> None:
        if not self.closing:
            self.closing = True
            self.protocol.connection_lost(None)

    def abort(self) -> None:
        self.aborted = True
        self.close()

    def is_closing(self) -> bool:
        return self.closing

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        self.eof_written = True

    def set_protocol(self, protocol: Any) -> None:
        self.protocol = protocol

    def get_protocol(self) -> Any:
        return self.protocol

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 40000) if name == "peername" else default


class MockUpstream:
    """An UpstreamConnection to the primary: records writes, plays the primary's side."""

    def __init__(self, pool: MockPool) -> None:
        self.pool = pool
        self.handler: Any = None
        self.sent = bytearray()
        self.closed = False
        self.paused = False
        self.transport = MockTransport(self)

    def write(self, data: bytes) -> None:
        assert not self.closed, "write to a closed upstream"
        self.sent += data

    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        self.paused = False

    def close(self) -> None:
        self.handler = None
        self.closed = True

    def connection_lost(self, exc: Exception | None) -> None:   # MockTransport's callback
        pass

    # the primary's side, as UpstreamConnection forwards it
    def answer(self, data: bytes) -> None:
        self.handler.upstream_data(data)

    def eof(self) -> None:
        self.handler.upstream_eof()

    def lost(self) -> None:
        handler, self.handler = self.handler, None
        self.closed = True
        if handler is not None:
            handler.upstream_lost(None)


class MockPool:
    """The primary's pool: idle connections the test puts in, connects it lets through."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.idle: list[MockUpstream] = []
        self.released: list[MockUpstream] = []
        self.connected: list[MockUpstream] = []
        self.refuse = False   # connect raises ConnectionRefusedError

    def add_idle(self) -> MockUpstream:
        conn = MockUpstream(self)
        self.idle.append(conn)
        return conn

    def acquire_idle(self, handler: Any) -> MockUpstream | None:
        if not self.idle:
            return None
        conn = self.idle.pop()
        conn.handler = handler
        return conn

    async def connect(self, handler: Any) -> MockUpstream:
        if self.refuse:
            raise ConnectionRefusedError("refused")
        conn = MockUpstream(self)
        conn.handler = handler
        self.connected.append(conn)
        return conn

    def release(self, conn: MockUpstream) -> None:
        conn.handler = None
        self.released.append(conn)

    def sweep(self, now: float) -> None:
        pass

    def close(self) -> None:
        pass


class RecordingLog:
    """Stands in for the access log: keeps the records."""

    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []
        self.dropped = 0

    def log(self, record: dict[str, Any]) -> None:
        self.records.append(record)


class Rig:
    """One DownstreamProtocol on a MockTransport, in front of a MockPool."""

    def __init__(self, loop: asyncio.AbstractEventLoop, **config: Any) -> None:
        self.loop = loop
        values = {"primary": "127.0.0.1:1", "admin": None, **config}
        self.registry = Registry()
        self.ctx = ProxyContext(load_config(None, values), self.registry)
        self.pool = MockPool(self.ctx.settings.primary_pool.address)
        self.ctx.settings.primary_pool = self.pool  # type: ignore[assignment]
        self.access_log = RecordingLog()
        self.ctx.settings.access_log = self.access_log  # type: ignore[assignment]
        self.conn = DownstreamProtocol(self.ctx)
        self.transport = MockTransport(self.conn)
        self.conn.connection_made(self.transport)

    @property
    def upstream(self) -> MockUpstream:
        """The primary connection the current exchange holds."""
        ex = self.conn.exchange
        assert ex is not None and ex.upstream is not None
        return ex.upstream  # type: ignore[return-value]

    def run(self, fn: Any, *args: Any) -> None:
        """Call fn inside the running loop (the exchange creates its connect task there),
        then let the tasks it started run."""
        async def call() -> None:
            fn(*args)
            for _ in range(3):
                await asyncio.sleep(0)
        self.loop.run_until_complete(call())

    def send(self, data: bytes) -> None:
        """The client sends data."""
        self.run(lambda: self.transport.protocol.data_received(data))

    def answer(self, data: bytes, conn: MockUpstream | None = None) -> None:
        """The primary sends data on conn (default: the current exchange's)."""
        target = conn or self.upstream
        self.run(target.answer, data)

    def primary_closes(self, conn: MockUpstream | None = None) -> None:
        self.run((conn or self.upstream).lost)

    def sweep(self, now: float) -> None:
        self.run(self.conn.sweep, now)

    def errors(self, code: int) -> int:
        return self.registry.downstream_errors.get(code, 0)


def get(path: str = "/", extra: bytes = b"") -> bytes:
    return b"GET " + path.encode() + b" HTTP/1.1\r\nHost: fm.test\r\n" + extra + b"\r\n"


def ok(body: bytes = b"ok", extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n%s\r\n%s" % (len(body), extra, body)
