"""The client connection and its exchange on mock transports: no sockets, no sleeps.

Flow control in each direction, every timeout (time is what the test passes to the
sweep), every abort path, pipelining, the retry on a stale pooled connection, the
tunnel hand-over. The end-to-end tests (tests/e2e) show the same through real sockets;
these show the protocol's decisions one event at a time.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any, Callable

import pytest

from fastmirror.proxy.downstream import PIPELINE_LIMIT
from fastmirror.proxy.exchange import PENDING_LIMIT
from fastmirror.proxy.tunnel import Tunnel
from harness import MockUpstream, Rig, get, ok


@pytest.fixture
def make_rig() -> Iterator[Callable[..., Rig]]:
    loop = asyncio.new_event_loop()

    def make(**config: Any) -> Rig:
        return Rig(loop, **config)

    yield make
    loop.close()


@pytest.fixture
def rig(make_rig: Callable[..., Rig]) -> Rig:
    return make_rig()


def post(body: bytes, path: str = "/p") -> bytes:
    return (b"POST " + path.encode() + b" HTTP/1.1\r\nHost: fm.test\r\n"
            b"Content-Length: %d\r\n\r\n" % len(body)) + body


def served(rig: Rig) -> MockUpstream:
    """A pooled primary connection for the next request."""
    return rig.pool.add_idle()


# -- one request, keep-alive, pipelining ---------------------------------------------------

def test_request_goes_out_and_response_comes_back(rig: Rig) -> None:
    up = served(rig)
    rig.send(get("/a"))
    assert bytes(up.sent) == get("/a")
    rig.answer(ok(b"hi", b"Connection: keep-alive\r\n"))
    assert rig.transport.take() == ok(b"hi")   # the primary's hop-by-hop line cut
    assert rig.conn.exchange is None and rig.pool.released == [up]
    assert not rig.transport.closing
    [record] = rig.access_log.records
    assert record["status"] == 200 and record["path"] == "/a" and record["bytes"] == len(ok(b"hi"))


def test_pipelined_requests_wait_their_turn(rig: Rig) -> None:
    first, second = served(rig), served(rig)
    rig.send(get("/1") + get("/2"))
    assert bytes(second.sent) == get("/1") and first.sent == b""   # freshest idle first
    assert rig.conn.buf == get("/2")
    rig.answer(ok(b"one"))
    assert bytes(first.sent) == get("/2")   # only once the first response is complete
    rig.answer(ok(b"two"))
    assert rig.transport.take() == ok(b"one") + ok(b"two")


def test_connection_close_request_ends_the_connection(rig: Rig) -> None:
    served(rig)
    rig.send(get("/c", b"Connection: close\r\n"))
    rig.answer(ok())
    assert rig.transport.take() == ok(b"ok", b"connection: close\r\n")
    assert rig.transport.closing


def test_request_on_a_new_connection_when_none_is_idle(rig: Rig) -> None:
    rig.send(post(b"abc"))
    [conn] = rig.pool.connected
    assert bytes(conn.sent) == post(b"abc")


# -- flow control ---------------------------------------------------------------------------

def test_slow_client_pauses_the_primary(rig: Rig) -> None:
    up = served(rig)
    rig.send(get())
    rig.run(rig.conn.pause_writing)
    assert up.paused
    rig.run(rig.conn.resume_writing)
    assert not up.paused


def test_slow_primary_pauses_the_client(rig: Rig) -> None:
    up = served(rig)
    rig.send(b"POST /p HTTP/1.1\r\nHost: fm.test\r\nContent-Length: 10\r\n\r\nab")
    rig.run(up.handler.upstream_pause_writing)
    assert not rig.transport.reading
    rig.run(up.handler.upstream_resume_writing)
    assert rig.transport.reading


def test_body_waiting_for_the_connect_pauses_the_client(rig: Rig) -> None:
    rig.pool.refuse = False
    body = b"x" * (PENDING_LIMIT + 10)

    def send_while_connecting() -> None:   # all in one step: the connect has not run yet
        rig.conn.data_received(b"POST /p HTTP/1.1\r\nHost: fm.test\r\n"
                               b"Content-Length: %d\r\n\r\n" % len(body))
        rig.conn.data_received(body)
        assert not rig.transport.reading
    rig.run(send_while_connecting)
    [conn] = rig.pool.connected   # connected: what waited went out, reading goes on
    assert conn.sent.endswith(body) and rig.transport.reading


def test_a_long_pipeline_pauses_the_client_until_its_turn(rig: Rig) -> None:
    served(rig)
    served(rig)
    rig.send(get("/1"))
    rig.send(b"x" * (PIPELINE_LIMIT + 1))
    assert not rig.transport.reading
    rig.answer(ok())
    assert rig.transport.reading   # the next head is read (and refused: it is junk)


# -- timeouts (time passed to the sweep) ------------------------------------------------------

def test_idle_keep_alive_connection_is_closed_quietly(rig: Rig) -> None:
    served(rig)
    rig.send(get())
    rig.answer(ok())
    rig.transport.take()
    rig.sweep(rig.conn.deadline - 0.01)
    assert not rig.transport.closing
    rig.sweep(rig.conn.deadline)
    assert rig.transport.closing and rig.transport.take() == b""


def test_slow_head_gets_408(rig: Rig) -> None:
    rig.send(b"GET / HTTP/1.1\r\nHo")
    rig.sweep(rig.conn.deadline)
    assert rig.transport.take().startswith(b"HTTP/1.1 408 ")
    assert rig.transport.closing and rig.errors(408) == 1


def test_primary_timeout_is_504_and_closes_the_primary_connection(rig: Rig) -> None:
    up = served(rig)
    rig.send(get())
    rig.sweep(rig.conn.deadline)
    assert rig.transport.take().startswith(b"HTTP/1.1 504 ")
    assert up.closed and rig.errors(504) == 1
    assert rig.ctx.settings.primary_stats.codes[-1] == 1   # counted as a primary error


def test_client_that_stops_sending_its_body_gets_408(rig: Rig) -> None:
    up = served(rig)
    rig.send(b"POST /p HTTP/1.1\r\nHost: fm.test\r\nContent-Length: 10\r\n\r\nab")
    rig.sweep(rig.conn.deadline)
    assert rig.transport.take().startswith(b"HTTP/1.1 408 ")
    assert up.closed and rig.errors(408) == 1
    assert rig.ctx.settings.primary_stats.codes[-1] == 0   # not the primary's fault


def test_client_that_stops_reading_is_cut_off_without_a_second_answer(rig: Rig) -> None:
    served(rig)
    rig.send(get())
    rig.answer(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npart")
    rig.run(rig.conn.pause_writing)
    rig.transport.take()
    rig.sweep(rig.conn.deadline)
    assert rig.transport.take() == b"" and rig.transport.closing
    assert rig.errors(408) == 0                                   # nothing was answered
    assert rig.access_log.records[-1]["status"] == 200            # the response cut short


# -- abort paths ------------------------------------------------------------------------------

def test_bad_request_is_refused_and_never_forwarded(rig: Rig) -> None:
    up = served(rig)
    rig.send(b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n")
    assert rig.transport.take().startswith(b"HTTP/1.1 400 ")
    assert up.sent == b"" and rig.transport.closing and rig.errors(400) == 1
    [record] = rig.access_log.records
    assert record["status"] == 400 and record["bytes"] > 0


def test_bad_chunk_after_the_head_went_out_closes_the_primary_connection(rig: Rig) -> None:
    up = served(rig)
    rig.send(b"POST /p HTTP/1.1\r\nHost: fm.test\r\nTransfer-Encoding: chunked\r\n\r\n")
    assert up.sent   # the head is on its way
    rig.send(b"zz\r\n")
    assert rig.transport.take().startswith(b"HTTP/1.1 400 ")
    assert up.closed and rig.transport.closing


def test_bad_response_is_502(rig: Rig) -> None:
    served(rig)
    rig.send(get())
    rig.answer(b"HTTP/1.1 abc\r\n\r\n")
    assert rig.transport.take().startswith(b"HTTP/1.1 502 ") and rig.errors(502) == 1


def test_primary_unreachable_is_502(rig: Rig) -> None:
    rig.pool.refuse = True
    rig.send(get())
    assert rig.transport.take().startswith(b"HTTP/1.1 502 ") and rig.transport.closing


def test_primary_closing_mid_response_cuts_the_client_off(rig: Rig) -> None:
    served(rig)
    rig.send(get())
    rig.answer(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
    rig.primary_closes()
    assert rig.transport.take().endswith(b"abc") and rig.transport.closing
    assert rig.errors(502) == 0


def test_stale_pooled_connection_is_retried_once_on_a_new_one(rig: Rig) -> None:
    stale = served(rig)
    rig.send(get("/r"))
    rig.primary_closes(stale)   # the primary had closed it as we reused it
    [fresh] = rig.pool.connected
    assert bytes(fresh.sent) == get("/r")
    rig.answer(ok(), fresh)
    assert rig.transport.take() == ok()


def test_a_body_is_never_retried(rig: Rig) -> None:
    stale = served(rig)
    rig.send(post(b"abc"))
    rig.primary_closes(stale)
    assert rig.pool.connected == []
    assert rig.transport.take().startswith(b"HTTP/1.1 502 ")


def test_client_gone_mid_response_closes_the_primary_connection(rig: Rig) -> None:
    up = served(rig)
    rig.send(get())
    rig.run(rig.transport.close)   # as the loop reports a reset
    assert up.closed and rig.conn.exchange is None
    assert rig.access_log.records[-1]["status"] == 499


def test_half_close_after_a_complete_request_still_gets_the_answer(rig: Rig) -> None:
    served(rig)
    rig.send(get())
    assert rig.conn.eof_received() is True
    rig.answer(ok())
    assert rig.transport.take() == ok(b"ok", b"connection: close\r\n")
    assert rig.transport.closing


# -- the tunnel -----------------------------------------------------------------------------

def test_101_hands_the_transport_to_a_tunnel(rig: Rig) -> None:
    up = served(rig)
    rig.send(get("/ws", b"Connection: upgrade\r\nUpgrade: websocket\r\n") + b"early")
    rig.answer(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
               b"Connection: Upgrade\r\n\r\nfrom-primary")
    tunnel = rig.transport.protocol
    assert isinstance(tunnel, Tunnel) and up.handler is tunnel
    assert rig.transport.take().endswith(b"\r\n\r\nfrom-primary")
    assert up.sent.endswith(b"early")   # bytes sent before the 101 went through
    rig.send(b"to-primary")
    assert up.sent.endswith(b"to-primary")
    rig.run(up.answer, b"more")
    assert rig.transport.take() == b"more"
    assert rig.conn in rig.ctx.connections and rig.conn.tunnel
    rig.run(tunnel.pause_writing)   # a slow reader holds the primary back...
    assert up.paused
    rig.run(tunnel.resume_writing)
    assert not up.paused
    rig.sweep(10**9)   # ...and a tunnel has no timeout (it used to get idle_timeout here)
    assert not rig.transport.closing
    rig.run(rig.transport.close)
    assert up.closed and rig.conn not in rig.ctx.connections


def test_shutdown_lets_the_response_in_flight_finish(rig: Rig) -> None:
    served(rig)
    rig.send(get())
    rig.run(rig.conn.shutdown)
    assert not rig.transport.closing
    rig.answer(ok())
    assert rig.transport.take() == ok(b"ok", b"connection: close\r\n")
    assert rig.transport.closing
