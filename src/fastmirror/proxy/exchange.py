"""One request's exchange with the primary, from its head to the end of the response.

The exchange owns everything that lives for one request: the settings it started with,
the body framer, the primary connection (pooled, or being connected, with the bytes
that wait for it), the response framer, the retry once on a stale pooled connection,
and the mirror tee. The primary's response streams to the client as it arrives; when
it ends the exchange hands the connection back (or closes it) and tells its client
whether the connection goes on. It is the primary connection's handler
(pool.UpstreamHandler). What it needs of the client connection is `Client` below;
its decisions are in rules.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Protocol

from fastmirror.hotpath import match_route
from fastmirror.proxy.flow import PENDING, UPSTREAM_FULL, ReadFlow
from fastmirror.proxy.codec import BodyFramer, RequestHead, ResponseError, ResponseFramer
from fastmirror.proxy.router import BODY_TOO_LARGE, SENT, mirror_decision
from fastmirror.proxy.rules import (
    closes_after,
    keep_client,
    retry_on_new_connection,
    retry_safe,
    reuse_upstream,
)
from fastmirror.proxy.tee import MirrorTee, count_skipped

if TYPE_CHECKING:
    from fastmirror.proxy.context import ProxyContext, Settings
    from fastmirror.proxy.pool import UpstreamConnection

log = logging.getLogger("fastmirror.downstream")

PENDING_LIMIT = 256 * 1024


class Client(Protocol):
    """What an exchange needs of its client connection (downstream.DownstreamProtocol)."""

    transport: asyncio.Transport
    deadline: float          # the connection's one timer, checked by the worker's sweep
    writing_paused: bool     # the client reads slower than we write
    closed: bool
    client_eof: bool         # the client half-closed (see client_gone)
    exchange: PrimaryExchange | None   # the one in progress
    flow: ReadFlow           # why the client is not being read

    def client_gone(self) -> bool: ...
    def exchange_done(self, keep: bool) -> None: ...
    def start_tunnel(self, conn: UpstreamConnection | None) -> None: ...
    def abort(self, status: int, detail: str, why: str) -> None: ...
    def log(self, status: int) -> None: ...


class PrimaryExchange:
    """One request and its response (see the module docstring)."""

    __slots__ = ("client", "head", "settings", "seq", "started", "keep_alive", "body",
                 "framer", "upstream", "pending", "pending_size", "response_started",
                 "bytes_out", "reused", "retried", "mirror_reason", "request_id", "tee", "plan")

    def __init__(self, client: Client, ctx: ProxyContext, head: RequestHead, seq: int,
                 keep_alive: bool) -> None:
        s = ctx.settings
        self.client = client
        self.head = head
        self.settings: Settings = s  # kept for the whole exchange, whatever a reload does
        self.seq = seq
        self.started = time.monotonic()
        client.deadline = self.started + s.primary_timeout
        self.keep_alive = keep_alive   # False: this is the connection's last request
        self.body = BodyFramer(head) if head.has_body else None   # None once complete
        self.framer = ResponseFramer(head.method == b"HEAD", head.http10, True, head.upgrade)
        self.upstream: UpstreamConnection | None = None
        self.pending: list[bytes] | None = None   # request bytes waiting for the connection
        self.pending_size = 0
        self.response_started = False
        self.bytes_out = 0
        self.reused = False
        self.retried = False
        self.tee: MirrorTee | None = None
        # The route (issue 10): with no [[route]], the top level's plan, without a call;
        # else the core's scan, and plan_after only for what it cannot answer alone (a path
        # to normalise, a route with methods): its Python call was 2/3 of the routes' cost.
        prefixes = s.route_prefixes
        if prefixes is None:
            plan = s.default
        else:
            i = match_route(head.target, prefixes, s.route_any_case)
            found = s.default if i == -1 else s.direct[i] if i >= 0 else None
            plan = found if found is not None else s.plan_after(head.target, head.method, i)
        self.plan = plan
        reason = mirror_decision(plan.policy, head)
        self.request_id = ctx.ids.new() if reason == SENT or s.access_log is not None else ""
        self.mirror_reason = reason
        if reason == SENT:
            self.tee = MirrorTee(s, head, self.request_id, plan.shadows)
        elif reason == BODY_TOO_LARGE:
            count_skipped(plan.shadows)

    @property
    def mirror(self) -> str:
        """The access log's `mirror` field: why not mirrored, or what the shadows did."""
        return self.tee.reason if self.tee is not None else self.mirror_reason

    # -- the request --------------------------------------------------------------------

    def start(self) -> None:
        """Send the head on a pooled connection, or connect and send it then."""
        conn = self.settings.primary_pool.acquire_idle(self)
        if conn is not None:
            self.upstream = conn
            self.reused = True
            if self.client.writing_paused:  # the client still has not read the last response
                conn.pause_reading()
            conn.write(self.head.forward)
        else:
            self.pending = [self.head.forward]
            asyncio.get_running_loop().create_task(self._connect())
        if self.body is None:
            self._request_complete()

    def feed_body(self, data: bytes, start: int) -> int:
        """Request body bytes from data[start:]; how many belong to this request.

        Raises:
            HttpError: 400 on a malformed chunked body.
        """
        assert self.body is not None
        n = self.body.feed(data, start)
        if n:  # while the body streams, the client is the one to wait for
            self.client.deadline = time.monotonic() + self.settings.idle_timeout
            chunk = data if n == len(data) else data[start:start + n]
            self._to_upstream(chunk)
            if self.tee is not None:
                self.tee.add_body(chunk)
        if self.body.done:
            self._request_complete()
        return n

    def _to_upstream(self, chunk: bytes) -> None:
        if self.upstream is not None:
            self.upstream.write(chunk)
            return
        assert self.pending is not None
        self.pending.append(chunk)
        self.pending_size += len(chunk)
        if self.pending_size > PENDING_LIMIT:
            self.client.flow.block(PENDING)

    def _request_complete(self) -> None:
        """The whole request is on its way to the primary: hand the copy to the shadows."""
        if self.body is not None:  # the primary's timeout runs from the end of the request
            self.client.deadline = time.monotonic() + self.settings.primary_timeout
        self.body = None
        if self.tee is not None:
            self.tee.submit()

    async def _connect(self) -> None:
        pool = self.settings.primary_pool
        try:
            conn = await pool.connect(self)
        except (OSError, asyncio.TimeoutError) as exc:
            if self.client.exchange is self and not self.client.closed:
                log.warning("primary %s: connect failed: %s", pool.address,
                            exc or type(exc).__name__)
                self.fail(502, "primary unreachable")
            return
        if self.client.exchange is not self or self.client.closed:
            pool.release(conn)  # this exchange is gone; the connection is clean
            return
        self.upstream = conn
        if self.client.writing_paused:
            conn.pause_reading()
        pending, self.pending = self.pending, None
        for chunk in pending or ():
            conn.write(chunk)
        self.pending_size = 0
        self.client.flow.unblock(PENDING)

    # -- the response (pool.UpstreamHandler) ----------------------------------------------

    def upstream_data(self, data: bytes) -> None:
        framer = self.framer
        client = self.client
        if not framer.status:
            # The head may go out with these bytes: will the client connection close after
            # this response? Then the head says so, and the client sends nothing that would
            # be lost. (The framer adds: a body that ends with the primary's close.) A
            # plain attribute, not a call: this runs for every response.
            framer.client_closing = closes_after(self.keep_alive, self.body is not None,
                                                 client.client_eof and client.client_gone())
        try:
            out = framer.feed(data)
        except ResponseError as exc:
            log.warning("primary %s: %s", self.settings.primary_pool.address, exc)
            self.fail(502, "bad response from primary")
            return
        if out:
            self.response_started = True
            client.transport.write(out)
            self.bytes_out += len(out)
            tee = self.tee
            if tee is not None and tee.capture is not None:   # diffing: the primary's copy
                tee.capture.add(out)
        if framer.done:
            self._response_done()
        elif not client.writing_paused:  # the timeout is between reads once the response began
            client.deadline = time.monotonic() + self.settings.primary_timeout

    def upstream_eof(self) -> None:
        try:
            self.framer.eof()
        except ResponseError:
            self._upstream_broken()
            return
        self._response_done()

    def upstream_lost(self, exc: Exception | None) -> None:
        self.upstream = None
        if not self.framer.done:
            self._upstream_broken()

    def upstream_pause_writing(self) -> None:
        self.client.flow.block(UPSTREAM_FULL)

    def upstream_resume_writing(self) -> None:
        self.client.flow.unblock(UPSTREAM_FULL)

    def _response_done(self) -> None:
        framer = self.framer
        self.settings.primary_stats.observe(time.monotonic() - self.started, framer.status)
        if self.settings.access_log is not None:  # here: one call less per request when off
            self.client.log(framer.status)
        tee = self.tee
        if tee is not None and tee.diff is not None:   # diffing: the comparator's copy
            tee.primary_answered()
        conn, self.upstream = self.upstream, None
        if framer.upgraded:
            self.client.start_tunnel(conn)
            return
        request_incomplete = self.body is not None or self.pending is not None
        if conn is not None:
            conn.handler = None
            if reuse_upstream(framer.close, request_incomplete, self.head.upgrade):
                conn.pool.release(conn)
            else:
                conn.close()
        self.client.exchange_done(keep_client(framer.close_client, request_incomplete,
                                              self.keep_alive, framer.until_close))

    def _upstream_broken(self) -> None:
        """The primary closed or reset before the response ended."""
        head = self.head
        if not retry_on_new_connection(self.reused, self.response_started,
                                       retry_safe(head.method, head.has_body)):
            self.fail(502, "primary closed the connection")
            return
        self.retried = True
        self.reused = False
        if self.upstream is not None:
            self.upstream.close()
        self.upstream = None
        self.pending = [head.forward]
        self.framer = ResponseFramer(head.method == b"HEAD", head.http10, True, head.upgrade)
        asyncio.get_running_loop().create_task(self._connect())

    # -- the end ---------------------------------------------------------------------------

    def fail(self, status: int, detail: str) -> None:
        """The primary failed (unreachable, timed out, broken): the client's abort path."""
        self.settings.primary_stats.error()
        self.client.abort(status, detail, "primary-failed")

    def abandon(self, why: str) -> None:
        """The exchange ends early, for why: the primary connection (it may hold part of
        a request, or an unread response) is closed, and the comparator told."""
        if self.tee is not None:
            self.tee.end_diff(why)
        if self.upstream is not None:
            self.upstream.close()
            self.upstream = None
        self.pending = None

    def hold_upstream(self, paused: bool) -> None:
        """Flow control from the client side: stop or go on reading the primary."""
        conn = self.upstream
        if conn is not None:
            if paused:
                conn.pause_reading()
            else:
                conn.resume_reading()
