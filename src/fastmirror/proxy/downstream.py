"""One client connection: bytes in, requests to the primary, copies to the mirror.

The protocol is a thin loop over the codec. One exchange runs at a time; bytes of
pipelined requests wait in a bounded buffer, so responses go back in request order.
Request bodies stream to the primary as they arrive (and, when sampled, are copied
up to the mirror body cap); the primary's response streams back byte for byte, but
for its head's hop-by-hop lines, which are the proxy's own (codec.ResponseFramer).
Flow control is explicit: a slow side pauses reading on the other.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

from fastmirror.proxy.codec import (
    BodyFramer,
    HttpError,
    RequestHead,
    ResponseError,
    ResponseFramer,
    check_partial_head,
    error_response,
    find_head_end,
    parse_request_head,
    skip_empty_lines,
)
from fastmirror.proxy.mirror import MirrorJob, shadow_request_head
from fastmirror.proxy.pool import UpstreamConnection
from fastmirror.proxy.router import BODY_TOO_LARGE, SENT, mirror_decision

if TYPE_CHECKING:
    from fastmirror.diffing.comparator import Pending
    from fastmirror.proxy.context import ProxyContext, Settings
    from fastmirror.proxy.mirror import Capture

log = logging.getLogger("fastmirror.downstream")

# Reasons to stop reading from the client, as bits.
_BLOCK_UPSTREAM_FULL = 1   # the primary is not taking the request body fast enough
_BLOCK_PENDING = 2         # still connecting, and enough of the body is waiting
_BLOCK_PIPELINE = 4        # the next requests are buffered while this one runs

PENDING_LIMIT = 256 * 1024
PIPELINE_LIMIT = 256 * 1024
# RFC 9110 §9.2.2: safe to send again when the first try may never have arrived.
IDEMPOTENT = frozenset((b"GET", b"HEAD", b"OPTIONS", b"TRACE", b"PUT", b"DELETE"))


class DownstreamProtocol(asyncio.Protocol):
    """asyncio Protocol for one client connection."""

    def __init__(self, ctx: "ProxyContext") -> None:
        self.ctx = ctx
        # Set in connection_made, before any other callback can run.
        self.transport: asyncio.Transport = None  # type: ignore[assignment]
        self.settings: Settings = ctx.settings
        self.closed = False
        self.buf = bytearray()
        self.deadline = 0.0       # idle or primary deadline, checked by the server's sweep
        self.blocked = 0
        self.writing_paused = False
        self.client_eof = False
        self.tunnel = False
        self.reading_head = False  # a head is arriving: header_timeout runs (not idle)
        # Set when this connection is to end at its next response (rebalance.Shedder,
        # rebalancing keep-alive clients after a worker restart).
        self.close_after_response = False
        self.seq = 0
        self._reset_exchange()

    def _reset_exchange(self) -> None:
        self.head: RequestHead | None = None
        self.body: BodyFramer | None = None     # None once the request body is complete
        self.upstream: UpstreamConnection | None = None
        self.pending: list[bytes] | None = None  # request bytes waiting for the connection
        self.pending_size = 0
        self.framer: ResponseFramer | None = None
        self.response_started = False
        self.bytes_out = 0
        self.mirror_head = b""
        self.mirror_body: bytearray | None = None
        self.mirror_reason = ""
        self.request_id = ""
        self.retried = False
        self.reused = False
        # Set when this exchange's responses get compared (comparator.Pending, and the
        # bounded copy of the primary's response).
        self.diff_pending: Pending | None = None
        self.diff_capture: Capture | None = None
        self.diff_submitted = False

    # -- asyncio.Protocol -------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop (like asyncio) already sets TCP_NODELAY on every TCP transport.
        self.transport = transport  # type: ignore[assignment]
        ctx = self.ctx
        ctx.connections.add(self)
        ctx.registry.connections_active += 1
        # The first head must be complete header_timeout after the accept.
        self.deadline = time.monotonic() + ctx.settings.header_timeout
        self.reading_head = True
        acceptor = ctx.acceptor  # at the cap, the next connections wait in the backlog
        if acceptor is not None and not acceptor.fit(len(ctx.connections), ctx.settings.max_connections):
            ctx.registry.connections_rejected += 1
            self._close()

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        if self.tunnel:
            if self.upstream is not None:
                self.upstream.write(data)
            return
        try:
            if self.head is None:
                if self.buf:
                    self.buf += data
                    data = bytes(self.buf)
                    self.buf.clear()
                self._process(data)
            elif self.body is not None:
                n = self._feed_body(data, 0)
                if n < len(data):
                    self._buffer_next(data[n:])
            else:
                self._buffer_next(data)
        except HttpError as exc:
            self._refuse(exc)

    def eof_received(self) -> bool:
        if self.tunnel and self.upstream is not None and self.upstream.transport is not None:
            if self.upstream.transport.can_write_eof():
                self.upstream.transport.write_eof()
                return True
        if self.head is None or self.body is not None:
            self._close()  # nothing in progress, or the request can never complete
            return False
        # The whole request is in: its response, and those of any complete requests
        # pipelined behind it, still go out; the connection closes after the last.
        self.client_eof = True
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed:
            self.closed = True
        ctx = self.ctx
        ctx.connections.discard(self)
        ctx.registry.connections_active -= 1
        if ctx.acceptor is not None:
            ctx.acceptor.fit(len(ctx.connections), ctx.settings.max_connections)
        if self.head is not None and not self.tunnel:
            self._log(499)  # nginx's code for "client closed the request"
            self._end_diff("client-closed")
        if self.upstream is not None:
            self.upstream.close()
        if self.pending is not None:
            self.pending = None
        self.head = None

    def pause_writing(self) -> None:
        # The client reads slower than the primary sends: hold the primary back. The
        # primary's timeout does not run meanwhile; the client gets idle_timeout to
        # read on (nginx's send_timeout).
        self.writing_paused = True
        self.deadline = time.monotonic() + self.ctx.settings.idle_timeout
        if self.upstream is not None:
            self.upstream.pause_reading()

    def resume_writing(self) -> None:
        self.writing_paused = False
        if self.head is not None:
            self.deadline = time.monotonic() + self.settings.primary_timeout
        if self.upstream is not None:
            self.upstream.resume_reading()

    # -- requests ---------------------------------------------------------------------

    def _process(self, data: bytes) -> None:
        """Start the exchange for the request head at the start of data, if complete."""
        if data[:1] == b"\r":   # empty lines before a request line are ignored
            skip = skip_empty_lines(data)
            if skip:
                data = data[skip:]
                if not data:
                    return
        end = find_head_end(data, 0)
        if end < 0:
            if len(data) > self.ctx.settings.max_head_size:
                raise HttpError(431, "request head too large")
            check_partial_head(data)
            self.buf += data
            if not self.reading_head:  # the head's first bytes: its own, shorter clock
                self.reading_head = True
                self.deadline = time.monotonic() + self.settings.header_timeout
            return
        if end > self.ctx.settings.max_head_size:
            raise HttpError(431, "request head too large")
        self._start_exchange(data if end == len(data) else data[:end])
        pos = end
        if self.body is not None and pos < len(data):
            pos += self._feed_body(data, pos)
        if pos < len(data):
            self._buffer_next(data[pos:])

    def _buffer_next(self, data: bytes) -> None:
        """Keep bytes that belong to later requests until this exchange ends."""
        self.buf += data
        if len(self.buf) > PIPELINE_LIMIT:
            self._block(_BLOCK_PIPELINE)

    def _start_exchange(self, raw: bytes) -> None:
        head = parse_request_head(raw)
        self.reading_head = False
        ctx = self.ctx
        s = ctx.settings
        self.settings = s
        self.seq += 1
        self.head = head
        self.started = time.monotonic()
        self.deadline = self.started + s.primary_timeout
        self.framer = ResponseFramer(head.method == b"HEAD", head.http10, True,
                                     head.upgrade)
        self.keep_alive = head.keep_alive and not ctx.draining and not self.close_after_response
        ctx.registry.downstream_requests += 1
        if head.has_body:
            self.body = BodyFramer(head)

        reason = mirror_decision(s.policy, head)
        self.mirror_reason = reason
        if reason == SENT or s.access_log is not None:
            self.request_id = ctx.ids.new()
        if reason == SENT:
            self.mirror_head = shadow_request_head(head.forward, s.host_suffix, self.request_id)
            if self.body is not None:
                self.mirror_body = bytearray()
            if s.comparator is not None:
                self.diff_pending = s.comparator.expect(
                    self.request_id, head.method, head.target, head.method == b"HEAD")
                if self.diff_pending is not None:
                    self.diff_capture = s.comparator.capture()
        elif reason == BODY_TOO_LARGE:
            for shadow in s.shadows:
                shadow.mirror_stats.skipped += 1

        conn = s.primary_pool.acquire_idle(self)
        if conn is not None:
            self.upstream = conn
            self.reused = True
            if self.writing_paused:  # the client still has not read the last response
                conn.pause_reading()
            conn.write(head.forward)
        else:
            self.pending = [head.forward]
            asyncio.get_running_loop().create_task(self._connect_primary(self.seq))
        if self.body is None:
            self._request_complete()

    def _feed_body(self, data: bytes, start: int) -> int:
        assert self.body is not None
        n = self.body.feed(data, start)
        if n:  # while the body streams, the client is the one to wait for
            self.deadline = time.monotonic() + self.settings.idle_timeout
            chunk = data if n == len(data) else data[start:start + n]
            self._to_upstream(chunk)
            mirror_body = self.mirror_body
            if mirror_body is not None:
                if len(mirror_body) + n > self.settings.policy.max_body:
                    self._abandon_mirror()
                else:
                    mirror_body += chunk
        if self.body.done:
            self._request_complete()
        return n

    def _abandon_mirror(self) -> None:
        """A streamed body outgrew --max-mirror-body: this copy is skipped."""
        self.mirror_body = None
        self.mirror_reason = BODY_TOO_LARGE
        for shadow in self.settings.shadows:
            shadow.mirror_stats.skipped += 1
        self._end_diff(BODY_TOO_LARGE)

    def _to_upstream(self, chunk: bytes) -> None:
        if self.upstream is not None:
            self.upstream.write(chunk)
            return
        assert self.pending is not None
        self.pending.append(chunk)
        self.pending_size += len(chunk)
        if self.pending_size > PENDING_LIMIT:
            self._block(_BLOCK_PENDING)

    def _request_complete(self) -> None:
        """The whole request is on its way to the primary: hand the copy to the shadows."""
        if self.body is not None:  # the primary's timeout runs from the end of the request
            self.deadline = time.monotonic() + self.settings.primary_timeout
        self.body = None
        if self.mirror_reason != SENT:
            return
        data = self.mirror_head
        if self.mirror_body:
            data += self.mirror_body
        self.mirror_body = None
        assert self.head is not None
        head = self.head
        job = MirrorJob(data, head.method == b"HEAD", self.request_id, self.diff_pending,
                        head.method in IDEMPOTENT and not head.has_body)
        self.diff_submitted = True
        outcomes = [shadow.submit(job) for shadow in self.settings.shadows]
        if job.diff is not None and self.settings.secondary is not None:
            self.settings.secondary.submit(job)
        if outcomes and outcomes.count(outcomes[0]) != len(outcomes):
            self.mirror_reason = ",".join(outcomes)
        else:
            self.mirror_reason = outcomes[0] if outcomes else SENT

    async def _connect_primary(self, seq: int) -> None:
        pool = self.settings.primary_pool
        try:
            conn = await pool.connect(self)
        except (OSError, asyncio.TimeoutError) as exc:
            if seq == self.seq and self.head is not None and not self.closed:
                log.warning("primary %s: connect failed: %s", pool.address,
                            exc or type(exc).__name__)
                self._primary_failed(502, "primary unreachable")
            return
        if seq != self.seq or self.head is None or self.closed:
            pool.release(conn)  # this exchange is gone; the connection is clean
            return
        self.upstream = conn
        if self.writing_paused:
            conn.pause_reading()
        pending, self.pending = self.pending, None
        for chunk in pending or ():
            conn.write(chunk)
        self.pending_size = 0
        self._unblock(_BLOCK_PENDING)

    # -- the primary's response (UpstreamHandler) ------------------------------------

    def upstream_data(self, data: bytes) -> None:
        if self.tunnel:
            self.transport.write(data)
            return
        framer = self.framer
        assert framer is not None  # upstream callbacks only come during an exchange
        if not framer.status:
            # The head may go out with these bytes: will the client connection close after
            # this response? Then the head says so, and the client sends nothing that would
            # be lost. Not when the proxy will read no further request (not keep_alive:
            # Connection: close, HTTP/1.0, a drain, a recycled connection), when the request
            # body is not all read (an early answer), or when the client half-closed and no
            # complete request is buffered. (The framer adds: a body that ends with the
            # primary's close.) A plain attribute, not a call: this runs for every response.
            framer.client_closing = (not self.keep_alive or self.body is not None
                                     or (self.client_eof and self._nothing_left_to_answer()))
        try:
            out = framer.feed(data)
        except ResponseError as exc:
            log.warning("primary %s: %s", self.settings.primary_pool.address, exc)
            self._primary_failed(502, "bad response from primary")
            return
        if out:
            self.response_started = True
            self.transport.write(out)
            self.bytes_out += len(out)
            if self.diff_capture is not None:
                self.diff_capture.add(out)
        if framer.done:
            self._response_done()
        elif not self.writing_paused:  # the timeout is between reads once the response began
            self.deadline = time.monotonic() + self.settings.primary_timeout

    def _nothing_left_to_answer(self) -> bool:
        """After the client's half-close: the buffered bytes hold neither a complete
        request (answered next) nor a partial one already known bad (answered 400)."""
        buf = bytes(self.buf)
        if find_head_end(buf, 0) >= 0:
            return False
        try:
            check_partial_head(buf[skip_empty_lines(buf):])
        except HttpError:
            return False
        return True

    def upstream_eof(self) -> None:
        if self.tunnel:
            if self.transport.can_write_eof():
                self.transport.write_eof()
            return
        assert self.framer is not None
        try:
            self.framer.eof()
        except ResponseError:
            self._upstream_broken()
            return
        self._response_done()

    def upstream_lost(self, exc: Exception | None) -> None:
        self.upstream = None
        if self.tunnel:
            self._close()
        elif self.head is not None and self.framer is not None and not self.framer.done:
            self._upstream_broken()

    def upstream_pause_writing(self) -> None:
        self._block(_BLOCK_UPSTREAM_FULL)

    def upstream_resume_writing(self) -> None:
        self._unblock(_BLOCK_UPSTREAM_FULL)

    def _response_done(self) -> None:
        framer = self.framer
        head = self.head
        assert framer is not None and head is not None
        s = self.settings
        s.primary_stats.observe(time.monotonic() - self.started, framer.status)
        if self.ctx.settings.access_log is not None:  # here: one call less per request when off
            self._log(framer.status)
        if self.diff_pending is not None:
            if self.diff_submitted and self.diff_capture is not None:
                raw, why = self.diff_capture.result()
                self.diff_pending.primary_done(raw, why)
                self.diff_pending = None
            else:
                self._end_diff("request-incomplete")
        conn, self.upstream = self.upstream, None
        if framer.upgraded:
            self._start_tunnel(conn)
            return
        request_incomplete = self.body is not None or self.pending is not None
        if conn is not None:
            conn.handler = None
            if framer.close or request_incomplete or head.upgrade:
                conn.close()
            else:
                conn.pool.release(conn)
        # An early answer leaves the rest of the body unread; a body delimited by the
        # primary's close can only be delimited for the client by ours. A head that said
        # `connection: close` is kept to even if the reason went away (the body ended).
        if (framer.close_client or request_incomplete or not self.keep_alive
                or framer.until_close):
            self.head = None  # logged above; connection_lost must not log it again
            self._close()
            return
        self._reset_exchange()
        self.deadline = time.monotonic() + s.idle_timeout
        self._unblock(_BLOCK_PIPELINE | _BLOCK_UPSTREAM_FULL)
        if self.buf:
            data = bytes(self.buf)
            self.buf.clear()
            try:
                self._process(data)
            except HttpError as exc:
                self._refuse(exc)
                return
        if self.client_eof and self.head is None:
            self._close()  # the client is done sending and no complete request is left

    def _start_tunnel(self, conn: UpstreamConnection | None) -> None:
        """After a 101, bytes flow both ways untouched until either side closes."""
        if conn is None:
            self._close()
            return
        self.tunnel = True
        self.upstream = conn
        self.deadline = 0.0
        self._unblock(_BLOCK_PIPELINE | _BLOCK_UPSTREAM_FULL | _BLOCK_PENDING)
        if self.buf:
            conn.write(bytes(self.buf))
            self.buf.clear()

    def _upstream_broken(self) -> None:
        """The primary closed or reset before the response ended."""
        head = self.head
        if (self.reused and not self.retried and not self.response_started
                and head is not None and not head.has_body and head.method in IDEMPOTENT):
            # The pooled connection was closed by the primary as we reused it: the
            # request cannot have been processed, so send it once more on a new one.
            self.retried = True
            self.reused = False
            if self.upstream is not None:
                self.upstream.close()
            self.upstream = None
            self.pending = [head.forward]
            self.framer = ResponseFramer(head.method == b"HEAD", head.http10, True,
                                     head.upgrade)
            asyncio.get_running_loop().create_task(self._connect_primary(self.seq))
            return
        self._primary_failed(502, "primary closed the connection")

    def _primary_failed(self, status: int, detail: str) -> None:
        """Answer status if nothing was sent yet, else cut the client off."""
        s = self.settings
        s.primary_stats.error()
        self._end_diff("primary-failed")
        if self.upstream is not None:
            self.upstream.close()
            self.upstream = None
        self.pending = None
        if not self.response_started and self.transport is not None and not self.closed:
            self.ctx.registry.downstream_error(status)
            body = error_response(status, detail)
            self.transport.write(body)
            self.bytes_out = len(body)
            self._log(status)
        else:
            self._log(self.framer.status if self.framer else 502)
        self.head = None
        self._close()

    # -- errors, timeouts, shutdown -------------------------------------------------------

    def _refuse(self, exc: HttpError) -> None:
        """Bad input from the client: a clear 4xx, then close (never forwarded)."""
        self._end_diff("bad-request")
        if self.upstream is not None:  # part of a bad request may have gone upstream
            self.upstream.close()
            self.upstream = None
        self.pending = None
        self.ctx.registry.downstream_error(exc.status)
        if not self.response_started and self.transport is not None and not self.closed:
            self.transport.write(error_response(exc.status, exc.reason))
        if self.ctx.settings.access_log is not None:
            self.bytes_out = 0
            if self.head is None:
                self.started = time.monotonic()
            self._log(exc.status)
        self.head = None
        self._close()

    def sweep(self, now: float) -> None:
        """Called by the server a few times a second: enforce idle and primary timeouts."""
        if not self.deadline or now < self.deadline or self.closed:
            return
        if self.head is None:
            if self.buf:  # a head begun and not finished in header_timeout
                self._refuse(HttpError(408, "request head timed out"))
            else:
                self._close()  # idle keep-alive connection
        elif self.writing_paused or self.body is not None:
            self._client_timed_out()
        else:
            self._primary_failed(504, "primary timed out")

    def _client_timed_out(self) -> None:
        """The client stopped sending its request body, or reading its response."""
        self._end_diff("client-timeout")
        if self.upstream is not None:
            self.upstream.close()
            self.upstream = None
        self.pending = None
        status = self.framer.status if self.framer and self.response_started else 408
        if not self.response_started and self.transport is not None:
            self.ctx.registry.downstream_error(408)
            self.transport.write(error_response(408, "request body timed out"))
        self._log(status)
        self.head = None
        self._close()

    def shutdown(self) -> None:
        """Drain: close now when idle, else after the response in flight."""
        self.keep_alive = False
        if self.head is None and not self.tunnel:
            self._close()

    def abort(self) -> None:
        """The drain timed out: drop the connection now, whatever is in flight."""
        if self.transport is not None:
            self.transport.abort()

    def _close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.deadline = 0.0
        if self.tunnel and self.upstream is not None:
            self.upstream.close()
        if self.transport is not None:
            self.transport.close()  # flushes what was written, then closes

    def _end_diff(self, reason: str) -> None:
        """This exchange's responses will not all arrive: let the comparator know why."""
        pending, self.diff_pending = self.diff_pending, None
        if pending is None:
            return
        if self.diff_submitted:
            pending.primary_done(None, reason)
        else:
            pending.abandon(reason)

    def _block(self, reason: int) -> None:
        if not self.blocked and self.transport is not None and not self.closed:
            self.transport.pause_reading()
        self.blocked |= reason

    def _unblock(self, reasons: int) -> None:
        if self.blocked and not (self.blocked & ~reasons):
            self.blocked = 0
            if self.transport is not None and not self.closed:
                self.transport.resume_reading()
        else:
            self.blocked &= ~reasons

    def _log(self, status: int) -> None:
        access_log = self.ctx.settings.access_log
        if access_log is None:
            return
        head = self.head
        peer = self.transport.get_extra_info("peername") if self.transport else None
        access_log.log({
            "time": time.time(),
            "client": f"{peer[0]}:{peer[1]}" if peer else "",
            "method": head.method.decode("latin-1") if head else "",
            "path": head.target.decode("latin-1") if head else "",
            "status": status,
            "bytes": self.bytes_out,
            "duration_ms": round((time.monotonic() - self.started) * 1000, 3),
            "id": self.request_id,
            "mirror": self.mirror_reason or "none",
            "upstream": self.settings.primary_pool.address,   # the one this request used
        })
