"""Client limits: --header-timeout against slowloris, --max-connections per worker.

Each test runs its own proxy with short limits and drives it with raw sockets, as a
slow or greedy client would.
"""

from __future__ import annotations

import socket
import time

import pytest

from conftest import RecordingServer, read_response, start_proxy, wait_closed

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(60)]

HEAD = b"GET /slow HTTP/1.1\r\nHost: fm.test\r\nX-Padding: " + b"p" * 40 + b"\r\n\r\n"


def connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=5)


def read_all(sock: socket.socket, timeout: float) -> bytes:
    """Everything until the peer closes, or timeout."""
    sock.settimeout(timeout)
    chunks = []
    try:
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    except (TimeoutError, ConnectionResetError):
        pass
    return b"".join(chunks)


def test_slowloris_head_gets_408_at_header_timeout(primary: RecordingServer):
    """A head trickled a byte at a time is cut at --header-timeout, although
    --idle-timeout is long and every byte arrives well within it."""
    proxy = start_proxy("--header-timeout", "1", "--idle-timeout", "30", primary=primary)
    with connect(proxy.port) as sock:
        start = time.monotonic()
        sock.sendall(HEAD[:20])
        out = b""
        sock.settimeout(0.2)
        for byte in HEAD[20:-4]:   # one byte every 0.2 s: never completes in time
            try:
                sock.sendall(bytes([byte]))
                out += sock.recv(65536)
            except TimeoutError:
                continue
            except (BrokenPipeError, ConnectionResetError):
                break
            if out:
                break
        out += read_all(sock, 3)
        elapsed = time.monotonic() - start
    assert out.startswith(b"HTTP/1.1 408 "), out[:200]
    assert b"connection: close" in out.lower()
    assert 0.9 <= elapsed <= 3.0, elapsed
    assert primary.received == b""
    assert proxy.metric("fastmirror_downstream_errors_total", code="408") == 1
    proxy.close()


def test_head_complete_in_time_is_served(primary: RecordingServer):
    proxy = start_proxy("--header-timeout", "2", primary=primary)
    with connect(proxy.port) as sock:
        for k in range(0, len(HEAD), 10):   # the whole head over about half a second
            sock.sendall(HEAD[k:k + 10])
            time.sleep(0.05)
        assert read_response(sock).status == 200
    assert [r.target for r in primary.wait_for_requests(1)] == ["/slow"]
    proxy.close()


def test_silent_new_connection_closed_at_header_timeout(primary: RecordingServer):
    """A connection that never sends a byte is closed after --header-timeout (no reply:
    there is no request to answer), not after --idle-timeout."""
    proxy = start_proxy("--header-timeout", "1", "--idle-timeout", "30", primary=primary)
    with connect(proxy.port) as sock:
        start = time.monotonic()
        assert wait_closed(sock, timeout=4)
        assert time.monotonic() - start < 3.0
    proxy.close()


def test_idle_keep_alive_is_governed_by_idle_timeout(primary: RecordingServer):
    """Between requests the connection is idle, not reading a head: a long idle timeout
    keeps it open past a short header timeout, and the next request is served."""
    proxy = start_proxy("--header-timeout", "1", "--idle-timeout", "30", primary=primary)
    with connect(proxy.port) as sock:
        sock.sendall(HEAD)
        assert read_response(sock).status == 200
        time.sleep(2.0)   # past header_timeout, idle all along
        sock.sendall(HEAD)
        assert read_response(sock).status == 200
    proxy.close()
    short = start_proxy("--header-timeout", "10", "--idle-timeout", "1", primary=primary)
    with connect(short.port) as sock:
        sock.sendall(HEAD)
        assert read_response(sock).status == 200
        start = time.monotonic()
        assert wait_closed(sock, timeout=5)
        assert time.monotonic() - start < 3.0
    short.close()


def test_partial_next_head_gets_its_own_header_timeout(primary: RecordingServer):
    """After a response, the first bytes of the next head start the header clock."""
    proxy = start_proxy("--header-timeout", "1", "--idle-timeout", "30", primary=primary)
    with connect(proxy.port) as sock:
        sock.sendall(HEAD)
        assert read_response(sock).status == 200
        time.sleep(1.5)            # idle: fine
        sock.sendall(HEAD[:15])   # a head begins and stalls
        start = time.monotonic()
        out = read_all(sock, 4)
    assert out.startswith(b"HTTP/1.1 408 "), out[:200]
    assert time.monotonic() - start < 3.0
    proxy.close()


def test_max_connections_new_ones_wait_in_the_backlog(primary: RecordingServer):
    proxy = start_proxy("--max-connections", "2", primary=primary)
    first, second = connect(proxy.port), connect(proxy.port)
    try:
        for sock in (first, second):
            sock.sendall(HEAD)
            assert read_response(sock).status == 200
        assert proxy.metric("fastmirror_downstream_connections_active") == 2
        third = connect(proxy.port)   # the kernel completes the handshake: it waits
        try:
            third.sendall(HEAD)
            third.settimeout(1.0)
            with pytest.raises(TimeoutError):
                third.recv(1)          # not served while two connections are open
            assert proxy.metric("fastmirror_downstream_accept_paused_total") >= 1
            first.close()              # room again: the waiting connection is taken
            resp = read_response(third, timeout=5)
            assert resp.status == 200
            second.sendall(HEAD)       # the others are unaffected
            assert read_response(second).status == 200
        finally:
            third.close()
    finally:
        first.close()
        second.close()
    assert proxy.metric("fastmirror_downstream_connections_rejected_total") == 0
    proxy.close()
