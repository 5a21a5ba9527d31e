"""Listening sockets: created here, served by the event loop in server.py.

The socket is bound before any worker forks, or per worker with SO_REUSEPORT, so
that the kernel spreads connections over the workers (as nginx `reuseport` does).
"""

from __future__ import annotations

import socket

from .config import Address, ConfigError


def bind_listener(address: Address, *, reuse_port: bool, backlog: int = 1024) -> socket.socket:
    """A non-blocking TCP socket bound to address and listening.

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
        sock.listen(backlog)
    except OSError as exc:
        sock.close()
        raise ConfigError(f"listen: cannot listen on {address}: {exc.strerror or exc}") from None
    sock.setblocking(False)
    return sock
