"""After a 101 Switching Protocols: bytes both ways, untouched, until either side closes.

The client connection hands its transport over (transport.set_protocol, as uvicorn
does on an upgrade) and the primary connection's handler becomes the tunnel, so no
HTTP code runs on these bytes any more. A tunnel is never mirrored (router: UPGRADE),
has no timeout, and leaves the worker's books to its owner: the client connection
object it came from stays in the worker's set until the tunnel closes.
"""

from __future__ import annotations

import asyncio
from typing import Protocol

from fastmirror.proxy.pool import UpstreamConnection


class Owner(Protocol):
    """The client connection the tunnel came from (downstream.DownstreamProtocol)."""

    def connection_lost(self, exc: Exception | None) -> None: ...


class Tunnel(asyncio.Protocol):
    """The client's transport and the primary's connection, joined."""

    def __init__(self, owner: Owner, transport: asyncio.Transport,
                 upstream: UpstreamConnection, early: bytes) -> None:
        self.owner = owner
        self.transport = transport
        self.upstream = upstream
        upstream.handler = self
        transport.set_protocol(self)
        if early:   # bytes the client sent after its Upgrade request, before the 101
            upstream.write(early)

    def close(self) -> None:
        self.upstream.close()
        self.transport.close()

    # -- the client's side (asyncio.Protocol) ---------------------------------------------

    def data_received(self, data: bytes) -> None:
        if not self.upstream.closed:
            self.upstream.write(data)

    def eof_received(self) -> bool:
        upstream = self.upstream.transport
        if upstream is not None and not self.upstream.closed and upstream.can_write_eof():
            upstream.write_eof()   # a half-close passes through
            return True
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.upstream.close()
        self.owner.connection_lost(exc)

    def pause_writing(self) -> None:
        self.upstream.pause_reading()   # the client reads slower than the primary sends

    def resume_writing(self) -> None:
        self.upstream.resume_reading()

    # -- the primary's side (pool.UpstreamHandler) ------------------------------------------

    def upstream_data(self, data: bytes) -> None:
        self.transport.write(data)

    def upstream_eof(self) -> None:
        if self.transport.can_write_eof():
            self.transport.write_eof()

    def upstream_lost(self, exc: Exception | None) -> None:
        self.transport.close()

    def upstream_pause_writing(self) -> None:
        self.transport.pause_reading()

    def upstream_resume_writing(self) -> None:
        self.transport.resume_reading()
