"""Metrics: plain counters on the hot path, exported by a prometheus-client collector.

prometheus-client's own ``Counter``/``Histogram`` take a lock and cost several µs per
observation; at >20k req/s on one core that is a visible share of the budget. So the
request path only bumps plain Python ints and floats held in ``__slots__`` objects
(``UpstreamStats.observe`` is a bisect and four in-place adds), and a custom collector
turns them into metric families when ``/metrics`` is scraped. Everything here runs on
the event-loop thread; nothing is locked. This module does no I/O and imports neither
asyncio nor socket.

A worker can ``snapshot()`` its numbers as a plain JSON-able dict; a parent process
``Registry.merge(snapshots)`` adds them up (gauges included) and renders the sum.
``WorkerTotals`` is what that parent keeps between scrapes so that the sums it exports
never go down while workers die, restart or answer late (``without_gauges`` says which
numbers of a snapshot are gauges). Reading the rendered text back is ``ops.scrape``'s.

Metrics (the first four are the user contract, CONTRACT.md):

=========================================== ========= =============================== =====================================
name                                        type      labels                          meaning
=========================================== ========= =============================== =====================================
fastmirror_request_duration_seconds         histogram role, upstream                  time to the full upstream response
fastmirror_responses_total                  counter   role, upstream, code            responses by class: 1xx (only once
                                                                                      seen), 2xx, 3xx, 4xx, 5xx; ``error``
                                                                                      = no response (connect/timeout/reset)
fastmirror_mirror_requests_total            counter   upstream, outcome               mirror copies by outcome: sent,
                                                                                      dropped (queue full), skipped (not
                                                                                      mirrorable), failed (shadow error),
                                                                                      limited (over max_rps)
fastmirror_mirror_queue_depth               gauge     upstream                        requests waiting in the shadow queue
fastmirror_downstream_requests_total        counter                                   client requests received
fastmirror_downstream_errors_total          counter   code                            error responses the proxy itself sent
                                                                                      (400, 413, 431, 501, 502, 504, ...)
fastmirror_downstream_connections_active    gauge                                     open client connections
fastmirror_downstream_connections_rejected_total counter                              client connections closed at once:
                                                                                      over --max-connections
fastmirror_downstream_accept_paused_total   counter                                   times accepting stopped at
                                                                                      --max-connections (new ones wait)
fastmirror_downstream_tls_handshake_errors_total counter                              TLS handshakes the listener refused:
                                                                                      not TLS, bad client certificate,
                                                                                      handshake timeout (not a client's
                                                                                      own close: proxy.tls)
fastmirror_access_log_dropped_total         counter                                   access-log records dropped (buffer
                                                                                      full)
fastmirror_mirror_percent                   gauge                                     current mirror percentage (0..100)
fastmirror_mirror_remaining_seconds         gauge                                     seconds until mirror_for turns
                                                                                      mirroring off (only while one runs)
fastmirror_diff_total                       counter   upstream, endpoint, result      compared response pairs by result:
                                                                                      match, mismatch, noise (from
                                                                                      ``Registry.diff_source``; endpoints
                                                                                      are capped, the rest is ``other``)
fastmirror_info                             gauge     version, core                   always 1; core = cython or python
process_*                                   various                                   RSS, CPU, fds (ProcessCollector)
=========================================== ========= =============================== =====================================
"""

from __future__ import annotations

import itertools
import time
from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

__all__ = [
    "BUCKETS",
    "CONTENT_TYPE",
    "MirrorStats",
    "Registry",
    "UpstreamStats",
    "WorkerTotals",
    "render_snapshots",
    "without_gauges",
]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# Upper bounds in seconds. Loopback upstreams answer in well under 1 ms, hence the two
# sub-ms buckets; above that a 1-2-3-5(-7.5) progression keeps linear interpolation
# within ~25% of the true P50/P99 from 1 ms to 10 s (Envoy's defaults stop at 0.5 ms
# resolution and go up to 1 h; nobody mirrors requests that take minutes).
BUCKETS: tuple[float, ...] = (
    0.00025, 0.0005,
    0.001, 0.002, 0.003, 0.005, 0.0075,
    0.01, 0.015, 0.02, 0.03, 0.05, 0.075,
    0.1, 0.15, 0.2, 0.3, 0.5, 0.75,
    1.0, 1.5, 2.0, 3.0, 5.0, 7.5, 10.0,
)  # fmt: skip
# repr() of these floats is what prometheus_client's floatToGoString gives ("0.00025", "1.0").
_LE = tuple(repr(b) for b in BUCKETS) + ("+Inf",)

ROLES = ("primary", "shadow", "secondary")  # secondary: the noise-cancelling twin (diffing)
# Index of UpstreamStats.codes -> label. Index 0 (and 6..9: RFC 9110 §15 defines only
# 100..599) is where observe() files a status outside 1xx..5xx; error() uses index 10.
_CODE_LABELS = ("error", "1xx", "2xx", "3xx", "4xx", "5xx", "error", "error", "error", "error", "error")
_ERROR = 10
# Emitted at 0 so that rate() has a series to work on before the first occurrence.
_ALWAYS_CODES = ("2xx", "3xx", "4xx", "5xx", "error")
OUTCOMES = ("sent", "dropped", "skipped", "failed", "limited")
# The statuses the proxy itself produces (CONTRACT.md "What goes where").
DOWNSTREAM_ERROR_CODES = (400, 413, 431, 501, 502, 504)


class UpstreamStats:
    """Latency histogram and response classes of one (role, upstream) pair."""

    __slots__ = ("role", "upstream", "buckets", "sum", "codes")

    def __init__(self, role: str, upstream: str) -> None:
        if role not in ROLES:
            raise ValueError(f"role must be one of {ROLES}, not {role!r}")
        self.role = role
        self.upstream = upstream
        # Non-cumulative counts; the last slot is +Inf. The count is sum(buckets),
        # computed at scrape time rather than paid for on every observe().
        self.buckets = [0] * (len(BUCKETS) + 1)
        self.sum = 0.0
        self.codes = [0] * (_ERROR + 1)

    def observe(self, seconds: float, status: int) -> None:
        """Record one full response: its latency and its status class."""
        # bisect_left: a value equal to a bound belongs to that bucket (le = "<=").
        self.buckets[bisect_left(BUCKETS, seconds)] += 1
        self.sum += seconds
        # A status from h11 or parse_response_head has three digits; the guard keeps
        # a caller's bug from raising IndexError on the request path.
        self.codes[status // 100 if 0 <= status < 1000 else 0] += 1

    def error(self) -> None:
        """Record a request that got no response (connect error, timeout, reset)."""
        self.codes[_ERROR] += 1

    @property
    def count(self) -> int:
        return sum(self.buckets)


class MirrorStats:
    """Outcome counters and queue depth of one shadow upstream.

    ``depth`` is an int the queue owner keeps current, or a zero-argument callable
    returning it (read at scrape time only).
    """

    __slots__ = ("upstream", "sent", "dropped", "skipped", "failed", "limited", "depth")

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.sent = 0
        self.dropped = 0
        self.skipped = 0
        self.failed = 0
        self.limited = 0  # over the shadow's max_rps (mirror_max_rps): not sent
        self.depth: int | Callable[[], int] = 0

    def current_depth(self) -> int:
        d = self.depth
        return int(d() if callable(d) else d)


class Registry:
    """Owns every stats object of one process and renders them.

    Plain attributes the proxy bumps directly: ``downstream_requests``,
    ``downstream_errors`` (dict status -> count; use ``downstream_error(code)`` for a
    status not pre-seeded), ``connections_active``, ``access_log_dropped``,
    ``mirror_percent``. ``on_collect`` holds callbacks ``fn(registry)`` run before each
    snapshot/render, to pull values owned elsewhere (e.g. ``AccessLog.dropped``).
    ``diff_source``, when set, returns ``[(upstream, endpoint, result, n), ...]`` (the
    DiffStore's running counts), read at scrape time only and exported as
    ``fastmirror_diff_total``.
    """

    def __init__(self, *, version: str | None = None, core: str | None = None, process: bool = True) -> None:
        self._upstreams: dict[tuple[str, str], UpstreamStats] = {}
        self._mirrors: dict[str, MirrorStats] = {}
        self.downstream_requests = 0
        self.downstream_errors: dict[int, int] = dict.fromkeys(DOWNSTREAM_ERROR_CODES, 0)
        self.connections_active = 0
        self.connections_rejected = 0
        self.accept_paused = 0
        self.tls_handshake_errors = 0
        self.access_log_dropped = 0
        self.mirror_percent = 0.0
        self.mirror_until: float | None = None  # time.time() when mirror_for ends it
        self.version = version
        self.core = core
        self.on_collect: list[Callable[[Registry], None]] = []
        self.diff_source: Callable[[], Iterable[tuple[str, str, str, int]]] | None = None
        # Counts added by merge() (workers', dead workers'); diff_source's are added on top.
        self._diff_counts: dict[tuple[str, str, str], int] = {}
        self._prom = CollectorRegistry(auto_describe=False)
        self._prom.register(_StatsCollector(self))
        if process:
            ProcessCollector(registry=self._prom)

    # -- owners ------------------------------------------------------------------

    def upstream(self, role: str, upstream: str) -> UpstreamStats:
        """The stats of (role, upstream), created on first use."""
        stats = self._upstreams.get((role, upstream))
        if stats is None:
            stats = self._upstreams[(role, upstream)] = UpstreamStats(role, upstream)
        return stats

    def mirror(self, upstream: str) -> MirrorStats:
        """The mirror stats of one shadow, created on first use."""
        stats = self._mirrors.get(upstream)
        if stats is None:
            stats = self._mirrors[upstream] = MirrorStats(upstream)
        return stats

    def downstream_error(self, code: int) -> None:
        self.downstream_errors[code] = self.downstream_errors.get(code, 0) + 1

    # -- export ------------------------------------------------------------------

    def render(self) -> bytes:
        """Prometheus text exposition (format 0.0.4, see ``CONTENT_TYPE``)."""
        return generate_latest(self._prom)

    def snapshot(self) -> dict[str, Any]:
        """Every number as a plain JSON-able dict (see ``merge``)."""
        self._run_hooks()
        return {
            "version": self._version(),
            "core": self._core(),
            "buckets": list(BUCKETS),
            "mirror_percent": float(self.mirror_percent),
            "mirror_remaining": self._remaining(),
            "downstream_requests": self.downstream_requests,
            "downstream_errors": {str(k): v for k, v in self.downstream_errors.items()},
            "connections_active": self.connections_active,
            "connections_rejected": self.connections_rejected,
            "accept_paused": self.accept_paused,
            "tls_handshake_errors": self.tls_handshake_errors,
            "access_log_dropped": self.access_log_dropped,
            "upstreams": [
                {"role": s.role, "upstream": s.upstream, "buckets": list(s.buckets), "sum": s.sum, "codes": list(s.codes)}
                for s in self._upstreams.values()
            ],
            "mirrors": [
                {"upstream": m.upstream, **{o: getattr(m, o) for o in OUTCOMES}, "depth": m.current_depth()}
                for m in self._mirrors.values()
            ],
            "diffs": [[*key, n] for key, n in sorted(self._diff_totals().items())],
        }

    def _diff_totals(self) -> dict[tuple[str, str, str], int]:
        counts = dict(self._diff_counts)
        if self.diff_source is not None:
            for upstream, endpoint, result, n in self.diff_source():
                key = (upstream, endpoint, result)
                counts[key] = counts.get(key, 0) + n
        return counts

    def _remaining(self) -> float | None:
        until = self.mirror_until
        return None if until is None else max(0.0, until - time.time())

    @classmethod
    def merge(cls, snapshots: Iterable[Mapping[str, Any]], *, process: bool = True) -> Registry:
        """A new Registry holding the sum of ``snapshots`` (workers' ``snapshot()``).

        Counters and gauges (queue depth, active connections) are summed;
        ``mirror_percent`` is shared by all workers, so the largest value is kept.
        Process metrics, if ``process``, are those of the calling process.

        Raises:
            ValueError: a snapshot was taken with other histogram buckets.
        """
        reg = cls(process=process)
        for snap in snapshots:
            reg._add(snap)
        return reg

    def _add(self, snap: Mapping[str, Any]) -> None:
        if tuple(snap.get("buckets", BUCKETS)) != BUCKETS:
            raise ValueError("snapshot has different histogram buckets")
        if self.version is None:
            self.version = snap.get("version")
            self.core = snap.get("core")
        self.mirror_percent = max(self.mirror_percent, float(snap.get("mirror_percent", 0.0)))
        remaining = snap.get("mirror_remaining")
        if remaining is not None:  # one deadline for every worker: the latest view of it
            mine = self._remaining()
            self.mirror_until = time.time() + max(float(remaining), mine or 0.0)
        self.downstream_requests += snap.get("downstream_requests", 0)
        for code, n in snap.get("downstream_errors", {}).items():
            self.downstream_errors[int(code)] = self.downstream_errors.get(int(code), 0) + n
        self.connections_active += snap.get("connections_active", 0)
        self.connections_rejected += snap.get("connections_rejected", 0)
        self.accept_paused += snap.get("accept_paused", 0)
        self.tls_handshake_errors += snap.get("tls_handshake_errors", 0)
        self.access_log_dropped += snap.get("access_log_dropped", 0)
        for u in snap.get("upstreams", ()):
            s = self.upstream(u["role"], u["upstream"])
            s.buckets = [a + b for a, b in zip(s.buckets, u["buckets"], strict=True)]
            s.sum += u["sum"]
            s.codes = [a + b for a, b in zip(s.codes, u["codes"], strict=True)]
        for m in snap.get("mirrors", ()):
            ms = self.mirror(m["upstream"])
            for o in OUTCOMES:
                setattr(ms, o, getattr(ms, o) + m.get(o, 0))
            ms.depth = ms.current_depth() + m.get("depth", 0)
        for upstream, endpoint, result, n in snap.get("diffs", ()):
            key = (upstream, endpoint, result)
            self._diff_counts[key] = self._diff_counts.get(key, 0) + n

    def _run_hooks(self) -> None:
        for fn in self.on_collect:
            fn(self)

    def _version(self) -> str:
        if self.version is None:
            try:
                from fastmirror import __version__ as v
            except ImportError:
                v = "unknown"
            self.version = str(v)
        return self.version

    def _core(self) -> str:
        if self.core is None:
            try:
                from fastmirror.hotpath import CORE_IMPL as c
            except ImportError:
                c = "unknown"
            self.core = str(c)
        return self.core


# Keys of Registry.snapshot() by kind. Every key must be in one of these (a unit test
# checks), so whoever adds a number decides whether a dead worker's value still counts.
SNAPSHOT_META = ("version", "core", "buckets")
SNAPSHOT_COUNTERS = ("downstream_requests", "downstream_errors", "access_log_dropped",
                     "upstreams", "diffs", "connections_rejected", "accept_paused",
                     "tls_handshake_errors")
SNAPSHOT_GAUGES = ("connections_active", "mirror_percent", "mirror_remaining")
SNAPSHOT_MIXED = ("mirrors",)  # outcome counters, and the gauge "depth"


def without_gauges(snap: Mapping[str, Any]) -> dict[str, Any]:
    """``snap`` with every gauge at 0: what a worker that is gone still contributes.

    Its requests were served and stay counted; its open connections and queued
    copies are gone with it.
    """
    return dict(snap, connections_active=0, mirror_percent=0.0, mirror_remaining=None,
                mirrors=[dict(m, depth=0) for m in snap.get("mirrors", ())])


class WorkerTotals:
    """A supervisor's memory of its workers' snapshots, so exported counters never drop.

    Prometheus reads any decrease of a counter as a reset (``rate()`` spikes), and a
    sum over workers decreases whenever a worker's share goes missing from it: a
    worker that is late for one scrape, or one that died before its numbers were
    kept. So each worker's latest snapshot is kept until a newer one replaces it (a
    late worker counts with the numbers it last reported), and when a worker is gone
    its last snapshot moves, gauges zeroed, into ``retired``, a running total that is
    part of every later sum. A worker's own counters only grow, so every exported
    sum only grows; a worker's numbers that it never reported are lost, but were
    never exported either.

    Workers are named by any hashable key (the supervisor uses the pid). Pure: no
    I/O, no clock.
    """

    def __init__(self) -> None:
        self.latest: dict[Any, Mapping[str, Any]] = {}
        self.exited: set[Any] = set()
        self.retired: dict[str, Any] | None = None

    def update(self, key: Any, snap: Mapping[str, Any]) -> None:
        """A newer snapshot from worker key (replies arrive in the order they were made)."""
        self.latest[key] = snap

    def exit(self, key: Any) -> None:
        """Worker key is gone (its channel closed): its gauges stop counting now."""
        if key in self.latest:
            self.exited.add(key)

    def retire(self, key: Any) -> None:
        """Worker key is reaped: fold its last counters into ``retired`` and forget it."""
        snap = self.latest.pop(key, None)
        self.exited.discard(key)
        if snap is None:
            return
        parts = [without_gauges(snap)] if self.retired is None else [self.retired, without_gauges(snap)]
        self.retired = Registry.merge(parts, process=False).snapshot()

    def snapshots(self) -> list[Mapping[str, Any]]:
        """What to sum for one scrape: every worker's latest, then the retired total."""
        out: list[Mapping[str, Any]] = [
            without_gauges(snap) if key in self.exited else snap for key, snap in self.latest.items()
        ]
        if self.retired is not None:
            out.append(self.retired)
        return out


def render_snapshots(snapshots: Iterable[Mapping[str, Any]]) -> bytes:
    """Prometheus text of the sum of workers' snapshots."""
    return Registry.merge(snapshots).render()


class _StatsCollector(Collector):
    """Builds metric families from a Registry's plain numbers at scrape time."""

    def __init__(self, reg: Registry) -> None:
        self._reg = reg

    def collect(self) -> Iterator[Metric]:
        snap = self._reg.snapshot()  # runs the on_collect hooks once
        yield from _families(snap)


def _families(snap: Mapping[str, Any]) -> Iterator[Metric]:
    """Every metric family of one snapshot, in the order they are exported."""
    yield from _upstream_families(snap["upstreams"])
    yield from _mirror_families(snap["mirrors"])
    yield from _downstream_families(snap)
    yield from _process_families(snap)


def _upstream_families(upstreams: Iterable[Mapping[str, Any]]) -> Iterator[Metric]:
    hist = HistogramMetricFamily(
        "fastmirror_request_duration_seconds",
        "Time from sending the request to the full upstream response.",
        labels=("role", "upstream"),
    )
    resp = CounterMetricFamily(
        "fastmirror_responses_total",
        "Upstream responses by status class; error = no response.",
        labels=("role", "upstream", "code"),
    )
    for u in upstreams:
        labels = (u["role"], u["upstream"])
        hist.add_metric(labels, list(zip(_LE, itertools.accumulate(u["buckets"]))), u["sum"])
        for code, n in sorted(_by_code(u["codes"]).items()):
            resp.add_metric((*labels, code), n)
    yield hist
    yield resp


def _by_code(codes: Sequence[int]) -> dict[str, int]:
    """UpstreamStats.codes by ``code`` label; the always-present classes included at 0."""
    out = dict.fromkeys(_ALWAYS_CODES, 0)
    for i, n in enumerate(codes):
        if n:
            out[_CODE_LABELS[i]] = out.get(_CODE_LABELS[i], 0) + n
    return out


def _mirror_families(mirrors: Iterable[Mapping[str, Any]]) -> Iterator[Metric]:
    mirror = CounterMetricFamily(
        "fastmirror_mirror_requests_total",
        "Mirror copies per shadow by outcome.",
        labels=("upstream", "outcome"),
    )
    depth = GaugeMetricFamily(
        "fastmirror_mirror_queue_depth", "Mirror copies waiting in the shadow queue.", labels=("upstream",)
    )
    for m in mirrors:
        for outcome in OUTCOMES:
            mirror.add_metric((m["upstream"], outcome), m[outcome])
        depth.add_metric((m["upstream"],), m["depth"])
    yield mirror
    yield depth


def _downstream_families(snap: Mapping[str, Any]) -> Iterator[Metric]:
    yield CounterMetricFamily(
        "fastmirror_downstream_requests_total", "Client requests received.", value=snap["downstream_requests"]
    )
    errors = CounterMetricFamily(
        "fastmirror_downstream_errors_total", "Error responses sent by the proxy itself.", labels=("code",)
    )
    for code, n in sorted(snap["downstream_errors"].items(), key=lambda kv: int(kv[0])):
        errors.add_metric((str(code),), n)
    yield errors
    yield GaugeMetricFamily(
        "fastmirror_downstream_connections_active", "Open client connections.", value=snap["connections_active"]
    )
    yield CounterMetricFamily(
        "fastmirror_downstream_connections_rejected_total",
        "Client connections closed at once because --max-connections was reached.",
        value=snap.get("connections_rejected", 0),
    )
    yield CounterMetricFamily(
        "fastmirror_downstream_accept_paused_total",
        "Times the listener stopped accepting at --max-connections (new connections wait in the backlog).",
        value=snap.get("accept_paused", 0),
    )
    yield CounterMetricFamily(
        "fastmirror_downstream_tls_handshake_errors_total",
        "TLS handshakes with clients that failed (not TLS, bad client certificate, timeout).",
        value=snap.get("tls_handshake_errors", 0),
    )


def _process_families(snap: Mapping[str, Any]) -> Iterator[Metric]:
    yield CounterMetricFamily(
        "fastmirror_access_log_dropped_total",
        "Access-log records dropped because the write buffer was full.",
        value=snap["access_log_dropped"],
    )
    yield GaugeMetricFamily("fastmirror_mirror_percent", "Current mirror percentage.", value=snap["mirror_percent"])
    if snap.get("mirror_remaining") is not None:  # only while a mirror_for deadline runs
        yield GaugeMetricFamily("fastmirror_mirror_remaining_seconds",
                                "Seconds until mirroring turns itself off (mirror_for).",
                                value=snap["mirror_remaining"])
    if snap.get("diffs"):
        diffs = CounterMetricFamily(
            "fastmirror_diff_total",
            "Shadow responses compared with the primary's, by endpoint and result.",
            labels=("upstream", "endpoint", "result"),
        )
        for upstream, endpoint, result, n in snap["diffs"]:
            diffs.add_metric((upstream, endpoint, result), n)
        yield diffs
    info = GaugeMetricFamily("fastmirror_info", "fastmirror version and active core.", labels=("version", "core"))
    info.add_metric((snap["version"] or "unknown", snap["core"] or "unknown"), 1)
    yield info

