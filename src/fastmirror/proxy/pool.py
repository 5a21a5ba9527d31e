"""Upstream connections and their keep-alive pools, shared by primary and shadows.

A connection is an asyncio Protocol that forwards every event to the handler that
holds it (one exchange at a time); an idle connection has no handler and any byte
or close it sees retires it. Callbacks, not coroutines, so a pooled request costs
no task. Connecting is the one awaited step.
"""

from __future__ import annotations

import asyncio
import time
from typing import Protocol

from fastmirror.proxy.upstream_tls import ResumingContext


class UpstreamHandler(Protocol):
    """What an exchange implements to receive its upstream connection's events."""

    def upstream_data(self, data: bytes) -> None: ...
    def upstream_eof(self) -> None: ...
    def upstream_lost(self, exc: Exception | None) -> None: ...
    def upstream_pause_writing(self) -> None: ...
    def upstream_resume_writing(self) -> None: ...


class UpstreamConnection(asyncio.Protocol):
    __slots__ = ("pool", "transport", "handler", "idle_since", "closed", "paused",
                 "session_kept")

    def __init__(self, pool: "UpstreamPool") -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.handler: UpstreamHandler | None = None
        self.idle_since = 0.0
        self.closed = False
        self.paused = False
        self.session_kept = False   # TLS: its session was handed to the pool's context

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop (like asyncio) already sets TCP_NODELAY on every TCP transport.
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self.handler is not None:
            self.handler.upstream_data(data)
        else:
            self.close()  # an idle upstream must not speak

    def eof_received(self) -> bool:
        if self.handler is not None:
            self.handler.upstream_eof()
        else:
            self.close()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        handler, self.handler = self.handler, None
        if handler is not None:
            handler.upstream_lost(exc)

    def pause_writing(self) -> None:
        if self.handler is not None:
            self.handler.upstream_pause_writing()

    def resume_writing(self) -> None:
        if self.handler is not None:
            self.handler.upstream_resume_writing()

    def write(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)

    def pause_reading(self) -> None:
        """Hold the upstream back (flow control: the client reads slower)."""
        if self.transport is not None and not self.closed and not self.paused:
            self.paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.paused:
            self.paused = False
            if self.transport is not None and not self.closed:
                self.transport.resume_reading()

    def remember_session(self) -> None:
        """TLS: keep this connection's session for the pool's next handshake (after a
        response was read, so a TLS 1.3 ticket has arrived). Once per connection: reading
        SSLObject.session is costly (OpenSSL serializes it), far more than a request."""
        tls = self.pool.tls
        if tls is not None and self.transport is not None and not self.session_kept:
            self.session_kept = True
            tls.remember(self.transport.get_extra_info("ssl_object"))

    def close(self) -> None:
        """Close now, dropping anything unsent; the handler is not told."""
        self.handler = None
        if not self.closed:
            self.remember_session()
            self.closed = True
            if self.transport is not None:
                self.transport.abort()


class UpstreamPool:
    """Keep-alive connections to one upstream, most recently used first."""

    # nginx's `keepalive` directive keeps 32 idle connections per worker by default in
    # common configs; the shadow side sizes this to its concurrency cap instead.
    def __init__(self, host: str, port: int, connect_timeout: float,
                 max_idle: int = 256, idle_timeout: float = 50.0, *,
                 tls: ResumingContext | None = None, name: str | None = None) -> None:
        self.host = host
        self.port = port
        self.address = name or f"{host}:{port}"   # config.Address's str(): https:// for TLS
        # TLS to this upstream (upstream_tls.client_context), SNI and name check on host.
        # Replaced on a reload: connections made after it use the new context.
        self.tls = tls
        self.connect_timeout = connect_timeout
        self.max_idle = max_idle
        # Below the 60-75 s keep-alive timeouts of nginx and Envoy upstreams, so we
        # retire a connection before the upstream closes it under a request.
        self.idle_timeout = idle_timeout
        self.idle: list[UpstreamConnection] = []
        self.closed = False

    def acquire_idle(self, handler: UpstreamHandler) -> UpstreamConnection | None:
        """Take the freshest idle connection, or None."""
        idle = self.idle
        while idle:
            conn = idle.pop()
            if not conn.closed:
                conn.handler = handler
                return conn
        return None

    async def connect(self, handler: UpstreamHandler) -> UpstreamConnection:
        """Open a new connection for handler.

        Raises:
            OSError: connect failed (ssl.SSLError, a subclass: the TLS handshake or the
                certificate check failed); asyncio.TimeoutError: no connection in time.
        """
        loop = asyncio.get_running_loop()
        conn = UpstreamConnection(self)
        # The timeout covers the TLS handshake too: a stalled handshake is a failed connect.
        async with asyncio.timeout(self.connect_timeout):
            if self.tls is None:
                await loop.create_connection(lambda: conn, self.host, self.port)
            else:
                await loop.create_connection(lambda: conn, self.host, self.port, ssl=self.tls,
                                             server_hostname=self.host)
        conn.handler = handler
        return conn

    def release(self, conn: UpstreamConnection) -> None:
        """Return a connection whose exchange ended cleanly."""
        conn.handler = None
        if conn.closed:
            return
        if self.closed or len(self.idle) >= self.max_idle:
            conn.close()
            return
        if self.tls is not None:   # a response was read: a TLS 1.3 ticket is in by now
            conn.remember_session()
        # Flow control may have paused it for a slow client; idle, it must read (a
        # stray byte or a close has to be seen), and its next exchange starts fresh.
        conn.resume_reading()
        conn.idle_since = time.monotonic()
        self.idle.append(conn)

    def sweep(self, now: float) -> None:
        """Close connections idle for longer than idle_timeout (oldest are first)."""
        idle = self.idle
        limit = now - self.idle_timeout
        stale = 0
        while stale < len(idle) and (idle[stale].closed or idle[stale].idle_since < limit):
            idle[stale].close()
            stale += 1
        if stale:
            del idle[:stale]

    def close(self) -> None:
        self.closed = True
        for conn in self.idle:
            conn.close()
        self.idle.clear()
