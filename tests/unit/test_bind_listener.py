"""bind_listener, the one way to bind: listening, or only bound (the supervisor's check)."""

from __future__ import annotations

import socket

import pytest

from fastmirror.config import Address, ConfigError
from fastmirror.proxy.listener import bind_listener


def test_listening_socket_accepts() -> None:
    sock = bind_listener(Address("127.0.0.1", 0), reuse_port=False)
    try:
        with socket.create_connection(sock.getsockname(), timeout=5):
            pass  # the kernel completes the handshake from the backlog
        assert not sock.getblocking()
    finally:
        sock.close()


def test_bound_only_takes_no_connections() -> None:
    """listen=False: the address is checked, but the kernel hands the socket nothing."""
    sock = bind_listener(Address("127.0.0.1", 0), reuse_port=True, listen=False)
    try:
        assert sock.getsockname()[1] > 0
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT) == 1
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(sock.getsockname(), timeout=5).close()
    finally:
        sock.close()


@pytest.mark.parametrize("listen", [True, False])
def test_address_in_use_is_a_config_error(listen: bool) -> None:
    with socket.socket() as busy:  # no SO_REUSEPORT: nobody may share it
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        with pytest.raises(ConfigError) as info:
            bind_listener(Address("127.0.0.1", port), reuse_port=True, listen=listen)
    assert str(info.value) == f"listen: cannot listen on 127.0.0.1:{port}: Address already in use"
