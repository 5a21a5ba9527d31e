"""Listening sockets: created here, served by the event loop, with a cap on connections.

The socket is bound before any worker forks, or per worker with SO_REUSEPORT, so
that the kernel spreads connections over the workers (as nginx `reuseport` does).
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable

from fastmirror.config import Address, ConfigError
from fastmirror.ops.metrics import Registry

log = logging.getLogger("fastmirror.listener")


def bind_listener(address: Address, *, reuse_port: bool, backlog: int = 1024,
                  listen: bool = True) -> socket.socket:
    """A non-blocking TCP socket bound to address and listening.

    With ``listen=False`` it is only bound: the supervisor checks the address that way
    before it starts its workers. Not listening matters there, with SO_REUSEPORT: the
    kernel would hand the socket a share of the connections, and nobody accepts on it.

    Raises:
        ConfigError: the address cannot be bound (in use, not local, no permission).
    """
    family = socket.AF_INET6 if ":" in address.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind((address.host, address.port))
        if listen:
            sock.listen(backlog)
    except OSError as exc:
        sock.close()
        raise ConfigError(f"listen: cannot listen on {address}: {exc.strerror or exc}") from None
    sock.setblocking(False)
    return sock


class Acceptor:
    """Accepts client connections on a listening socket, up to a cap (per worker).

    At the cap it stops accepting, as nginx does at worker_connections: new
    connections wait in the kernel's listen backlog instead of being refused, and are
    taken as soon as a connection closes. uvloop's Server cannot pause, so it is given
    a duplicate of the listening socket's fd and closed to pause: the socket itself,
    and the connections queued on it, live on in the original fd.
    """

    def __init__(self, sock: socket.socket, factory: Callable[[], asyncio.Protocol],
                 backlog: int, registry: Registry) -> None:
        self.sock = sock
        self.factory = factory
        self.backlog = backlog
        self.registry = registry
        self.server: asyncio.AbstractServer | None = None
        self.closed = False
        self._resuming = False

    async def start(self) -> None:
        self.server = await self._serve()

    async def _serve(self) -> asyncio.AbstractServer:
        loop = asyncio.get_running_loop()
        return await loop.create_server(self.factory, sock=self.sock.dup(), backlog=self.backlog)

    def fit(self, open_connections: int, limit: int) -> bool:
        """Accept while open_connections < limit, stop at it; False when over it
        (a connection accepted in the same batch as the one that reached the cap)."""
        if open_connections >= limit:
            self.pause()
        else:
            self.resume()
        return open_connections <= limit

    def pause(self) -> None:
        """The cap is reached: stop taking connections from the backlog."""
        if self.server is not None:
            self.server.close()
            self.server = None
            self.registry.accept_paused += 1

    def resume(self) -> None:
        """Below the cap again: take connections from the backlog (soon, not now)."""
        if self.server is None and not self._resuming and not self.closed:
            self._resuming = True
            asyncio.get_running_loop().create_task(self._resume())

    async def _resume(self) -> None:
        try:
            server = await self._serve()
        except OSError as exc:  # fds exhausted, say: the next close tries again
            log.warning("cannot resume accepting: %s", exc)
            return
        finally:
            self._resuming = False
        if self.closed or self.server is not None:
            server.close()
        else:
            self.server = server

    def close(self) -> None:
        """Stop accepting for good (drain); the listening socket closes."""
        self.closed = True
        if self.server is not None:
            self.server.close()
            self.server = None
        self.sock.close()
