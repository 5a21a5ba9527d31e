"""One client connection: its transport, the pipeline buffer, flow control, the timer.

The protocol is a thin loop over the codec. A complete request head starts a
PrimaryExchange (exchange.py), which owns everything of that request; one runs at a
time, and bytes of pipelined requests wait in a bounded buffer, so responses go back
in request order. A reset between requests is dropping the exchange. Every early end
(a bad request, a timeout, a failed primary) goes through one abort path. After a 101
the transport is handed to a Tunnel (tunnel.py). Flow control is explicit: a slow
side pauses reading on the other.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

from fastmirror.proxy.codec import (
    HttpError,
    RequestHead,
    check_partial_head,
    error_response,
    find_head_end,
    holds_no_request,
    parse_request_head,
    skip_empty_lines,
)
from fastmirror.proxy.exchange import PrimaryExchange
from fastmirror.proxy.flow import PENDING, PIPELINE, UPSTREAM_FULL, ReadFlow
from fastmirror.proxy.rules import CLIENT_TIMEOUT, HEAD_TIMEOUT, IDLE, PRIMARY_TIMEOUT, deadline_passed
from fastmirror.proxy.tunnel import Tunnel

if TYPE_CHECKING:
    from fastmirror.proxy.context import ProxyContext
    from fastmirror.proxy.pool import UpstreamConnection

PIPELINE_LIMIT = 256 * 1024

# The client's deadline passed: (status, detail, why) for the abort path.
_CLIENT_LATE = {
    HEAD_TIMEOUT: (408, "request head timed out", "bad-request"),
    CLIENT_TIMEOUT: (408, "request body timed out", "client-timeout"),
}


class DownstreamProtocol(asyncio.Protocol):
    """asyncio Protocol for one client connection."""

    def __init__(self, ctx: ProxyContext) -> None:
        self.ctx = ctx
        # Set in connection_made, before any other callback can run.
        self.transport: asyncio.Transport = None  # type: ignore[assignment]
        self.flow: ReadFlow = None  # type: ignore[assignment]
        self.exchange: PrimaryExchange | None = None
        self.closed = False
        self.buf = bytearray()
        self.deadline = 0.0       # header, idle, body or primary deadline (the worker's sweep)
        self.writing_paused = False
        self.client_eof = False
        self.tunnel = False
        self.reading_head = False  # a head is arriving: header_timeout runs (not idle)
        # Set when this connection is to end at its next response (rebalance.Shedder,
        # rebalancing keep-alive clients after a worker restart).
        self.close_after_response = False
        self.seq = 0
        self._tunnel: Tunnel | None = None

    # What the worker and the rebalancer read (context.ClientConnection).
    @property
    def head(self) -> RequestHead | None:
        return self.exchange.head if self.exchange is not None else None

    @property
    def response_started(self) -> bool:
        return self.exchange is not None and self.exchange.response_started

    @property
    def keep_alive(self) -> bool:
        return self.exchange is None or self.exchange.keep_alive

    @keep_alive.setter
    def keep_alive(self, value: bool) -> None:
        if self.exchange is not None:
            self.exchange.keep_alive = value

    # -- asyncio.Protocol -------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop (like asyncio) already sets TCP_NODELAY on every TCP transport.
        self.transport = transport  # type: ignore[assignment]
        self.flow = ReadFlow(self.transport)
        # The first head must be complete header_timeout after the accept.
        self.deadline = time.monotonic() + self.ctx.settings.header_timeout
        self.reading_head = True
        if not self.ctx.admit(self):
            self._close()

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        ex = self.exchange
        try:
            if ex is None:
                if self.buf:
                    self.buf += data
                    data = bytes(self.buf)
                    self.buf.clear()
                self._process(data)
            elif ex.body is not None:
                n = ex.feed_body(data, 0)
                if n < len(data):
                    self._buffer_next(data[n:])
            else:
                self._buffer_next(data)
        except HttpError as exc:
            self.abort(exc.status, exc.reason, "bad-request")

    def eof_received(self) -> bool:
        ex = self.exchange
        if ex is None or ex.body is not None:
            self._close()  # nothing in progress, or the request can never complete
            return False
        # The whole request is in: its response, and those of any complete requests
        # pipelined behind it, still go out; the connection closes after the last.
        self.client_eof = True
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.ctx.release(self)
        ex = self.exchange
        if ex is not None:
            self.log(499)  # nginx's code for "client closed the request"
            ex.abandon("client-closed")
            self.exchange = None

    def pause_writing(self) -> None:
        # The client reads slower than the primary sends: hold the primary back. The
        # primary's timeout does not run meanwhile; the client gets idle_timeout to
        # read on (nginx's send_timeout).
        self.writing_paused = True
        self.deadline = time.monotonic() + self.ctx.settings.idle_timeout
        if self.exchange is not None:
            self.exchange.hold_upstream(True)

    def resume_writing(self) -> None:
        self.writing_paused = False
        ex = self.exchange
        if ex is not None:
            self.deadline = time.monotonic() + ex.settings.primary_timeout
            ex.hold_upstream(False)

    # -- requests ---------------------------------------------------------------------

    def _process(self, data: bytes) -> None:
        """Start the exchange for the request head at the start of data, if complete."""
        if data[:1] == b"\r":   # empty lines before a request line are ignored
            skip = skip_empty_lines(data)
            if skip:
                data = data[skip:]
                if not data:
                    return
        max_head = self.ctx.settings.max_head_size
        end = find_head_end(data, 0)
        if end < 0:
            if len(data) > max_head:
                raise HttpError(431, "request head too large")
            check_partial_head(data)
            self.buf += data
            if not self.reading_head:  # the head's first bytes: its own, shorter clock
                self.reading_head = True
                self.deadline = time.monotonic() + self.ctx.settings.header_timeout
            return
        if end > max_head:
            raise HttpError(431, "request head too large")
        ex = self._start_exchange(data if end == len(data) else data[:end])
        pos = end
        if ex.body is not None and pos < len(data):
            pos += ex.feed_body(data, pos)
        if pos < len(data):
            self._buffer_next(data[pos:])

    def _buffer_next(self, data: bytes) -> None:
        """Keep bytes that belong to later requests until this exchange ends."""
        self.buf += data
        if len(self.buf) > PIPELINE_LIMIT:
            self.flow.block(PIPELINE)

    def _start_exchange(self, raw: bytes) -> PrimaryExchange:
        head = parse_request_head(raw)
        self.reading_head = False
        ctx = self.ctx
        self.seq += 1
        keep = head.keep_alive and not ctx.draining and not self.close_after_response
        ex = self.exchange = PrimaryExchange(self, ctx, head, self.seq, keep)
        ctx.registry.downstream_requests += 1
        ex.start()
        return ex

    # -- what the exchange tells (exchange.Client) ----------------------------------------

    def exchange_done(self, keep: bool) -> None:
        """The response is complete: read the next request, or close."""
        self.exchange = None
        if not keep:
            self._close()
            return
        self.deadline = time.monotonic() + self.ctx.settings.idle_timeout
        self.flow.unblock(PIPELINE | UPSTREAM_FULL)
        if self.buf:
            data = bytes(self.buf)
            self.buf.clear()
            try:
                self._process(data)
            except HttpError as exc:
                self.abort(exc.status, exc.reason, "bad-request")
                return
        ex = self.exchange
        if self.client_eof and (ex is None or ex.body is not None):
            # The client is done sending: no complete request is left, or the one just
            # started has a body that can never arrive (as eof_received decides).
            self._close()

    def client_gone(self) -> bool:
        """The client half-closed and no further request is buffered to answer."""
        return self.client_eof and holds_no_request(bytes(self.buf))

    def start_tunnel(self, conn: UpstreamConnection | None) -> None:
        """After a 101, the transport and the primary connection go to a Tunnel."""
        self.exchange = None
        if conn is None:
            self._close()
            return
        self.tunnel = True
        self.deadline = 0.0
        early = bytes(self.buf)
        self.buf.clear()
        self.flow.unblock(PIPELINE | UPSTREAM_FULL | PENDING)
        self._tunnel = Tunnel(self, self.transport, conn, early)

    def abort(self, status: int, detail: str, why: str) -> None:
        """Every early end of an exchange, or of a request before its exchange: a bad
        request (why "bad-request"), a timeout, a failed primary. The client gets the
        error response if nothing of a response went out yet (and it is counted in
        fastmirror_downstream_errors_total), else the connection is cut; then it closes."""
        ex = self.exchange
        if ex is not None:
            ex.abandon(why)
        answered = not self.closed and (ex is None or not ex.response_started)
        if answered:
            body = error_response(status, detail)
            self.transport.write(body)
            self.ctx.registry.downstream_error(status)
            self.log(status, len(body))
        else:   # the response that was cut short
            self.log(ex.framer.status if ex is not None else status)
        self.exchange = None
        self._close()

    def log(self, status: int, sent: int | None = None) -> None:
        """One access-log record for the exchange in progress (or a refused head);
        sent: the bytes of our own error response, when that is what the client got."""
        access_log = self.ctx.settings.access_log
        if access_log is not None:
            peer = self.transport.get_extra_info("peername") if self.transport else None
            access_log.log(access_record(self.exchange, peer, status, sent,
                                         self.ctx.settings.primary_pool.address))

    # -- timeouts, shutdown, flow control ---------------------------------------------

    def sweep(self, now: float) -> None:
        """Called by the worker a few times a second: enforce this connection's deadline."""
        if not self.deadline or now < self.deadline or self.closed:
            return
        ex = self.exchange
        what = deadline_passed(ex is not None, bool(self.buf), self.writing_paused,
                               ex is not None and ex.body is not None)
        if what == IDLE:
            self._close()  # idle keep-alive connection
        elif what == PRIMARY_TIMEOUT and ex is not None:
            ex.fail(504, "primary timed out")
        else:
            self.abort(*_CLIENT_LATE[what])

    def shutdown(self) -> None:
        """Drain: close now when idle, else after the response in flight."""
        if self.exchange is not None:
            self.exchange.keep_alive = False
        elif not self.tunnel:
            self._close()

    def drop(self) -> None:
        """The drain timed out: drop the connection now, whatever is in flight."""
        if self.transport is not None:
            self.transport.abort()

    def _close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.deadline = 0.0
        if self._tunnel is not None:
            self._tunnel.close()
        elif self.transport is not None:
            self.transport.close()  # flushes what was written, then closes


def access_record(ex: PrimaryExchange | None, peer: tuple[str, int] | None, status: int,
                  sent: int | None, primary: str) -> dict[str, object]:
    """The access log's JSON object for one request (README: "Access log")."""
    head = ex.head if ex is not None else None
    return {
        "time": time.time(),
        "role": "primary",  # the client's request; its shadows' copies have lines of their own
        "client": f"{peer[0]}:{peer[1]}" if peer else "",
        "method": head.method.decode("latin-1") if head else "",
        "path": head.target.decode("latin-1") if head else "",
        "status": status,
        "bytes": sent if sent is not None else ex.bytes_out if ex is not None else 0,
        "duration_ms": round((time.monotonic() - ex.started) * 1000, 3) if ex else 0.0,
        "id": ex.request_id if ex is not None else "",
        "mirror": ex.mirror if ex is not None else "none",
        # the primary this request used, whatever a reload changed since
        "upstream": ex.settings.primary_pool.address if ex is not None else primary,
        "route": ex.plan.name if ex is not None else None,  # the [[route]] it took (issue 10)
    }
