"""Sending mirror copies to one shadow, fire-and-forget.

Each shadow has its own queue, pool, cap on requests in flight and timeout. A copy
is written, its response read to the end (and measured), then discarded. Nothing in
here can reach a client: every failure is counted and contained.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

from fastmirror.ops.metrics import MirrorStats, UpstreamStats
from fastmirror.proxy.codec import ResponseError, ResponseFramer
from fastmirror.proxy.mirror import Capture, HeadEdit, MirrorJob, MirrorQueue, RateLimit
from fastmirror.proxy.pool import UpstreamConnection, UpstreamPool
from fastmirror.proxy.rules import retry_on_new_connection, retry_safe
from fastmirror.proxy.upstream_tls import ResumingContext

if TYPE_CHECKING:
    from fastmirror.ops.logs import AccessLog

log = logging.getLogger("fastmirror.shadow")

# After a failed connect the shadow is not tried again for a while, doubling up to
# the cap: a dead shadow must cost the proxy a counter increment per copy, not a
# connect() syscall (Envoy loses half its throughput to a dead shadow for lack of this).
BACKOFF_FIRST = 0.05
BACKOFF_MAX = 2.0


class ShadowTarget:
    """One shadow upstream: queue, pool, in-flight cap, timeout, stats."""

    def __init__(self, host: str, port: int, *, role: str = "shadow",
                 stats: UpstreamStats, mirror_stats: MirrorStats, name: str | None = None,
                 tls: ResumingContext | None = None) -> None:
        self.address = name or f"{host}:{port}"   # str(config.Address)
        self.role = role   # "shadow", or "secondary" (noise cancellation)
        # What the comparator calls this target's response: its address, or "secondary".
        self.part_name = "secondary" if role == "secondary" else self.address
        self.stats = stats
        self.mirror_stats = mirror_stats
        self.active: set[ShadowExchange] = set()
        self._connect_failures = 0
        self._down_until = 0.0
        self.closed = False
        # Tunables: set by configure(), before the first copy and again on each reload.
        self.pool = UpstreamPool(host, port, 0.0, tls=tls, name=self.address)
        self.queue = MirrorQueue(0, mirror_stats)
        self.concurrency = 0
        self.timeout = 0.0
        self.capture_limit = 0
        self.edit: HeadEdit | None = None   # what its copies lose and gain (Settings)
        self.access_log: AccessLog | None = None  # a line per copy sent (Settings.set_access_log)
        self.rate: RateLimit | None = None  # max_rps (Settings.limit_rate)

    def configure(self, *, queue_size: int, concurrency: int, timeout: float,
                  connect_timeout: float, capture_limit: int,
                  tls: ResumingContext | None = None) -> None:
        """Apply a config's settings: at start-up, and to a target a reload keeps."""
        self.pool.tls = tls
        self.queue.maxsize = queue_size
        self.concurrency = concurrency
        self.timeout = timeout
        self.capture_limit = capture_limit
        self.pool.connect_timeout = min(connect_timeout, timeout)
        self.pool.max_idle = concurrency

    def limit_rate(self, max_rps: float | None) -> None:
        """At most max_rps copies a second (None: no cap); a reload keeps the bucket's
        tokens when the rate stays."""
        if max_rps is None:
            self.rate = None
        elif self.rate is None or self.rate.rate != max_rps:
            self.rate = RateLimit(max_rps, time.monotonic())

    def submit(self, job: MirrorJob) -> str:
        """Send now if a slot is free, else queue, else drop; return what happened.

        Returns "sent" (started or queued), "dropped" (queue full), "shadow-down"
        (connects are failing: counted as failed without trying) or "limited" (over
        max_rps: not sent).
        """
        rate = self.rate
        if rate is not None and not rate.take(time.monotonic()):
            self.mirror_stats.limited += 1
            if job.diff is not None:
                job.diff.part_done(self.part_name, None, "limited")
            return "limited"
        if self._down_until and time.monotonic() < self._down_until:
            self._discard(job, "shadow-down")
            return "shadow-down"
        if len(self.active) < self.concurrency and not len(self.queue):
            self._start(job)
            return "sent"
        if self.queue.offer(job):
            return "sent"
        if job.diff is not None:
            job.diff.part_done(self.part_name, None, "dropped")
        return "dropped"

    def _discard(self, job: MirrorJob, reason: str) -> None:
        """A copy not even tried: the shadow is in connect backoff (counted failed)."""
        self.mirror_stats.failed += 1
        self.stats.error()
        if job.diff is not None:
            job.diff.part_done(self.part_name, None, reason)

    def _start(self, job: MirrorJob) -> None:
        exchange = ShadowExchange(self, job)
        self.active.add(exchange)
        conn = self.pool.acquire_idle(exchange)
        if conn is not None:
            exchange.send(conn, reused=True)
        else:
            asyncio.get_running_loop().create_task(self._connect(exchange))

    async def _connect(self, exchange: "ShadowExchange") -> None:
        try:
            conn = await self.pool.connect(exchange)
        except (OSError, asyncio.TimeoutError) as exc:
            self._note_connect_failure(exc)
            exchange.fail()
            return
        self._connect_failures = 0
        self._down_until = 0.0
        if exchange.finished:  # timed out while connecting; keep the connection
            self.pool.release(conn)
            return
        exchange.send(conn, reused=False)

    def _note_connect_failure(self, exc: BaseException) -> None:
        self._connect_failures += 1
        backoff = min(BACKOFF_FIRST * (2 ** (self._connect_failures - 1)), BACKOFF_MAX)
        self._down_until = time.monotonic() + backoff
        if self._connect_failures in (1, 10, 100) or self._connect_failures % 1000 == 0:
            log.warning("shadow %s: connect failed (%s); %d in a row, next try in %.2fs",
                        self.address, exc or type(exc).__name__, self._connect_failures, backoff)

    def finished(self, exchange: "ShadowExchange") -> None:
        """An exchange ended (either way): free its slot and start waiting jobs."""
        self.active.discard(exchange)
        queue = self.queue
        while len(self.active) < self.concurrency and len(queue) and not self.closed:
            job = queue.take()
            assert job is not None
            if self._down_until and time.monotonic() < self._down_until:
                self._discard(job, "shadow-down")
                continue
            self._start(job)

    def sweep(self, now: float) -> None:
        """Time out exchanges past their deadline; retire stale idle connections."""
        for exchange in [e for e in self.active if e.deadline <= now]:
            exchange.fail()
        self.pool.sweep(now)

    def close(self) -> None:
        self.closed = True
        for job in self.queue.clear():
            self.mirror_stats.dropped += 1
            if job.diff is not None:
                job.diff.part_done(self.part_name, None, "dropped")
        for exchange in list(self.active):
            exchange.fail()
        self.pool.close()


class ShadowExchange:
    """One copy on its way to the shadow and its response on the way back."""

    __slots__ = ("target", "job", "conn", "framer", "started", "deadline",
                 "finished", "reused", "got_bytes", "capture")

    def __init__(self, target: ShadowTarget, job: MirrorJob) -> None:
        self.target = target
        self.job = job
        self.conn: UpstreamConnection | None = None
        self.framer = ResponseFramer(job.head_request)
        self.started = time.monotonic()
        self.deadline = self.started + target.timeout
        self.finished = False
        self.reused = False
        self.got_bytes = False
        self.capture = Capture(target.capture_limit) if job.diff is not None else None

    def send(self, conn: UpstreamConnection, reused: bool) -> None:
        self.conn = conn
        self.reused = reused
        conn.write(self.job.data)

    # UpstreamHandler
    def upstream_data(self, data: bytes) -> None:
        self.got_bytes = True
        try:
            out = self.framer.feed(data)
        except ResponseError:
            self.fail()
            return
        if self.capture is not None:
            self.capture.add(out)
        if self.framer.done:
            self._succeed()

    def upstream_eof(self) -> None:
        try:
            self.framer.eof()
        except ResponseError:
            self._lost()
            return
        self._succeed()

    def upstream_lost(self, exc: Exception | None) -> None:
        if not self.finished:
            self._lost()

    def upstream_pause_writing(self) -> None:
        pass  # the copy is already in memory; the in-flight cap bounds the total

    def upstream_resume_writing(self) -> None:
        pass

    def _lost(self) -> None:
        """The connection ended before the response did."""
        job = self.job
        if not self.finished and retry_on_new_connection(
                self.reused, self.got_bytes, retry_safe(job.method, job.has_body)):
            # A pooled connection the shadow had just closed: retry once on a new one.
            self._detach(reuse=False)
            self.reused = False
            asyncio.get_running_loop().create_task(self.target._connect(self))
            return
        self.fail()

    def _succeed(self) -> None:
        if self.finished:
            return
        target = self.target
        target.mirror_stats.sent += 1
        elapsed = time.monotonic() - self.started
        target.stats.observe(elapsed, self.framer.status)
        if target.access_log is not None:
            target.access_log.log(self._record(self.framer.status, elapsed, "sent"))
        self._detach(reuse=not self.framer.close)
        if self.capture is not None:
            raw, reason = self.capture.result()
            self.job.diff.part_done(target.part_name, raw, reason)
        self._end()

    def fail(self) -> None:
        if self.finished:
            return
        self.target.mirror_stats.failed += 1
        self.target.stats.error()
        if self.target.access_log is not None:
            self.target.access_log.log(self._record(0, time.monotonic() - self.started, "failed"))
        self._detach(reuse=False)
        if self.job.diff is not None:
            self.job.diff.part_done(self.target.part_name, None, "shadow-failed")
        self._end()

    def _record(self, status: int, elapsed: float, outcome: str) -> dict[str, object]:
        """The access log's line for this copy (README "Access log"): as Envoy logs its
        shadow cluster, with the request's id to join it to the client's line."""
        job, target = self.job, self.target
        return {"time": time.time(), "role": target.role, "method": job.method.decode("latin-1"),
                "path": job.target.decode("latin-1"), "status": status,
                "duration_ms": round(elapsed * 1000, 3), "id": job.request_id,
                "upstream": target.address, "outcome": outcome}

    def _detach(self, reuse: bool) -> None:
        conn, self.conn = self.conn, None
        if conn is None:
            return
        if reuse:
            self.target.pool.release(conn)
        else:
            conn.close()

    def _end(self) -> None:
        self.finished = True
        self.target.finished(self)
