"""Admin endpoint: a small h11 HTTP/1.1 server for metrics, health and run-time control.

Endpoints (CONTRACT.md "Admin endpoint"):

=================  ======================  ===================================================
method             path                    answer
=================  ======================  ===================================================
GET, HEAD          /metrics                Prometheus text (``runtime.render_metrics()``)
GET, HEAD          /healthz                200 ``ok`` while the process runs
GET, HEAD          /ready                  200 ``ready``, or 503 ``draining``
GET, HEAD          /config                 the effective configuration as JSON
GET, HEAD          /mirror                 ``{"percent": P}``, with ``"routes": {NAME: {"percent":
                                           P}}`` when there are [[route]]s and ``"remaining_seconds"``
                                           while a mirror_for / ?for= deadline runs
PUT, POST          /mirror?percent=P       set P (0..100, or P%), or a JSON body ``{"percent": P}``;
                   [&route=NAME][&for=D]   one route's percent (404 naming the routes if unknown);
                                           for=D: mirroring turns itself off in D ("off": never);
                                           answers as GET; 400 ``{"error": ...}``
GET, HEAD          /diffs                  the response-diff snapshot as JSON;
                                           ``?format=text`` or ``?format=html`` for people
GET, HEAD          /report?max_p99_ratio=R fastmirror.diffing.report.build_report as JSON (200 for a
                                           fail verdict too); 400 for a bad threshold
=================  ======================  ===================================================

Unknown paths get 404, other methods 405 with ``Allow``; errors are JSON
``{"error": "..."}``. Keep-alive and pipelining work; a request h11 rejects gets its
4xx and the connection is closed. It keeps answering while the proxy drains.

What it reads and sets is an ``AdminRuntime`` (below): ops/worker.Runtime for one
process, ops/supervisor.SupervisorRuntime for ``--workers N``, whose calls return
awaitables (it asks its workers); mypy checks both against it. With
``config.diff.enabled`` false, ``/diffs`` is the empty snapshot ``{"upstreams": {}}``.
This module does not decide anything about the proxy; it only reads and sets.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import math
import socket
import time
from collections.abc import Awaitable
from http import HTTPStatus
from typing import Any, Protocol, TypeAlias, TypeVar, cast
from urllib.parse import parse_qs, urlsplit

import h11
import orjson

from fastmirror.config import Config, ConfigError, parse_duration, percent_number
from fastmirror.proxy.router import MirrorState

__all__ = ["AdminProtocol", "AdminRuntime", "start_admin"]

_log = logging.getLogger("fastmirror.admin")

METRICS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
TEXT = "text/plain; charset=utf-8"
JSON = "application/json"
# Request heads and bodies are tiny here; anything larger is a mistake or an attack.
MAX_HEAD = 16 * 1024
MAX_BODY = 64 * 1024
# A connection must deliver its next complete request within this long of going idle
# (nginx keepalive_timeout defaults to 75 s, Envoy's admin has none; 30 s is plenty
# for scrapers, which reuse connections every 10-60 s or reconnect).
IDLE_TIMEOUT = 30.0

_GET = ("GET", "HEAD")
_ALLOW = {
    "/metrics": _GET,
    "/healthz": _GET,
    "/ready": _GET,
    "/config": _GET,
    "/mirror": ("GET", "HEAD", "PUT", "POST"),
    "/diffs": _GET,
    "/report": _GET,
}
HTML = "text/html; charset=utf-8"
_DIFF_FORMATS = ("json", "text", "html")

Response = tuple[int, str, bytes, list[tuple[str, str]]]
T = TypeVar("T")
# A value, or an awaitable of it: a supervisor answers by asking its workers.
MaybeAwaitable: TypeAlias = "T | Awaitable[T]"
JSONObject: TypeAlias = dict[str, Any]  # a JSON document (config_to_dict, DiffStore.snapshot)


class AdminRuntime(Protocol):
    """What the admin endpoint reads and sets, for one worker or for all of them."""

    @property
    def config(self) -> Config: ...

    @property
    def mirror_percent(self) -> float: ...

    @property
    def mirror(self) -> MirrorState:
        """The run-time mirror state: percents, per-route percents, the deadline."""

    def set_mirror(self, state: MirrorState) -> MaybeAwaitable[None]:
        """PUT /mirror: the new state, in every worker."""

    @property
    def draining(self) -> bool:
        """/ready answers 503 while true."""

    def config_dict(self) -> MaybeAwaitable[JSONObject]:
        """/config: the effective configuration, mirror_percent as it is now."""

    def render_metrics(self) -> MaybeAwaitable[bytes]:
        """/metrics: the Prometheus text exposition."""

    def diffs_snapshot(self) -> MaybeAwaitable[JSONObject]:
        """/diffs and /report: the DiffStore snapshot (asked only with diffing on)."""


class HTTPError(Exception):
    def __init__(self, status: int, message: str, headers: list[tuple[str, str]] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.headers = headers or []


async def _call(value: MaybeAwaitable[T]) -> T:
    if inspect.isawaitable(value):
        return await cast(Awaitable[T], value)
    return value


def _json(obj: Any, status: int = 200) -> Response:
    return status, JSON, orjson.dumps(obj) + b"\n", []


class Handler:
    """Maps (method, target, body) to a response; no I/O of its own."""

    def __init__(self, runtime: AdminRuntime) -> None:
        self.runtime = runtime

    async def handle(self, method: str, target: str, body: bytes) -> Response:
        try:
            return await self._route(method, target, body)
        except HTTPError as exc:
            status, ctype, data, headers = _json({"error": str(exc)}, exc.status)
            return status, ctype, data, exc.headers

    async def _route(self, method: str, target: str, body: bytes) -> Response:
        parts = urlsplit(target)
        path = parts.path
        allow = _ALLOW.get(path)
        if allow is None:
            raise HTTPError(404, f"no such endpoint: {path}")
        if method not in allow:
            raise HTTPError(405, f"method {method} not allowed", [("allow", ", ".join(allow))])
        rt = self.runtime
        if path == "/metrics":
            return 200, METRICS_CONTENT_TYPE, await self._metrics(), []
        if path == "/diffs":
            return await self._diffs(parts.query)
        if path == "/report":
            return await self._report(parts.query)
        if path == "/healthz":
            return 200, TEXT, b"ok", []
        if path == "/ready":
            return (503, TEXT, b"draining", []) if rt.draining else (200, TEXT, b"ready", [])
        if path == "/config":
            return _json(await self._config())
        now = time.time()
        if method in _GET:
            return _json(mirror_view(rt.mirror, rt.config, now))
        state = mirror_put(rt.mirror, rt.config, parts.query, body, now)
        try:
            await _call(rt.set_mirror(state))
        except ValueError as exc:
            raise HTTPError(400, str(exc)) from None
        return _json(mirror_view(rt.mirror, rt.config, now))

    # Both real runtimes are whole AdminRuntimes. The test doubles of
    # tests/e2e/test_admin.py may leave out render_metrics (a .registry renders then),
    # config (diffing counts as on) and diffs_snapshot (the empty snapshot): the two
    # getattr() below keep answering them.

    async def _metrics(self) -> bytes:
        render = getattr(self.runtime, "render_metrics", None) or getattr(self.runtime, "registry").render
        return bytes(await _call(render()))

    async def _diffs_snapshot(self) -> JSONObject:
        rt = self.runtime
        diff_config = getattr(getattr(rt, "config", None), "diff", None)
        snapshot = getattr(rt, "diffs_snapshot", None)
        if snapshot is None or not getattr(diff_config, "enabled", True):
            return {"upstreams": {}}
        return cast(JSONObject, await _call(snapshot()))

    async def _diffs(self, query: str) -> Response:
        fmt = _one(parse_qs(query), "format", "json")
        if fmt not in _DIFF_FORMATS:
            raise HTTPError(400, f"format must be one of {', '.join(_DIFF_FORMATS)}, not {fmt!r}")
        snapshot = await self._diffs_snapshot()
        if fmt == "json":
            return _json(snapshot)
        from fastmirror.diffing.diffstore import render_html, render_text

        if fmt == "html":
            return 200, HTML, render_html(snapshot).encode(), []
        return 200, TEXT, render_text(snapshot).encode(), []

    async def _report(self, query: str) -> Response:
        from fastmirror.diffing.report import ThresholdError, Thresholds, build_report

        args = parse_qs(query, keep_blank_values=True)
        try:
            thresholds = Thresholds.parse({key: _one(args, key, "") for key in args})
        except ThresholdError as exc:
            raise HTTPError(400, str(exc)) from None
        metrics = (await self._metrics()).decode("utf-8", "replace")
        return _json(build_report(metrics, await self._diffs_snapshot(), thresholds))

    async def _config(self) -> JSONObject:
        return await _call(self.runtime.config_dict())


def _one(args: dict[str, list[str]], key: str, default: str) -> str:
    values = args.get(key)
    if not values:
        return default
    if len(values) > 1:
        raise HTTPError(400, f"{key} given more than once")
    return values[0]


def mirror_view(state: MirrorState, config: Config, now: float) -> JSONObject:
    """GET /mirror: the top level's percent, each route's, the time left."""
    view: JSONObject = {"percent": state.percent}
    if config.route:
        view["routes"] = {r.name: {"percent": state.route_percent(r.name, r.mirror_percent)}
                          for r in config.route}
    remaining = state.remaining(now)
    if remaining is not None:
        view["remaining_seconds"] = round(remaining, 3)
    return view


def mirror_put(state: MirrorState, config: Config, query: str, body: bytes, now: float) -> MirrorState:
    """PUT /mirror's new state: ?percent=P (or a JSON body), &route=NAME, &for=D."""
    args = parse_qs(query, keep_blank_values=True)
    unknown = sorted(set(args) - {"percent", "route", "for"})
    if unknown:
        raise HTTPError(400, f"unknown parameter {unknown[0]!r}: use percent, route and for")
    given = _one(args, "route", "\0")
    route: str | None = None if given == "\0" else given
    if route == "":  # `?route=$ROUTE` with ROUTE unset must not change the top level
        raise HTTPError(400, "route is empty: give route=NAME, or leave it out for the top level")
    names = [r.name for r in config.route]
    if route is not None and route not in names:
        known = ", ".join(names) if names else "none (no [[route]] in the config)"
        raise HTTPError(404, f"no route named {route!r}; the routes are: {known}")
    duration = _one(args, "for", "")
    if route is not None and duration and "percent" not in args and not body.strip():
        raise HTTPError(400, "for turns all mirroring off, not one route's: PUT /mirror?for=D alone")
    if "percent" in args or body.strip() or not duration:
        state = state.with_percent(_parse_percent(query, body), route)
    if duration:
        if duration.strip().lower() == "off":
            return state.with_until(None)
        try:
            seconds = parse_duration(duration, "for")
        except ConfigError as exc:
            raise HTTPError(400, str(exc)) from None
        state = state.with_until(now + seconds)
    return state


def _parse_percent(query: str, body: bytes) -> float:
    """The new percentage from ``?percent=P`` or a JSON body ``{"percent": P}``."""
    values = parse_qs(query, keep_blank_values=True).get("percent")
    if values:
        if len(values) > 1:
            raise HTTPError(400, "percent given more than once")
        raw: Any = values[0]
    elif body.strip():
        try:
            doc = orjson.loads(body)
        except orjson.JSONDecodeError:
            raise HTTPError(400, 'body must be JSON: {"percent": P}') from None
        if not isinstance(doc, dict) or set(doc) != {"percent"}:
            raise HTTPError(400, 'body must be JSON: {"percent": P} (route and for go in the query)')
        raw = doc["percent"]
    else:
        raise HTTPError(400, "missing percent: use ?percent=P or a JSON body {\"percent\": P}")
    if isinstance(raw, bool) or not isinstance(raw, (int, float, str)):
        raise HTTPError(400, f"percent must be a number, not {raw!r}")
    try:
        p = percent_number(raw)  # "10" or "10%", as --mirror-percent takes it
    except ValueError:
        raise HTTPError(400, f"percent must be a number, not {raw!r}") from None
    if not math.isfinite(p) or not 0.0 <= p <= 100.0:
        raise HTTPError(400, f"percent must be between 0 and 100, not {raw!r}")
    return p


class AdminProtocol(asyncio.Protocol):
    """One admin connection: bytes -> h11 -> Handler -> h11 -> bytes.

    One request is handled at a time; reading pauses while it is, and h11 holds
    any pipelined bytes until the next cycle.
    """

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD)
        self.transport: asyncio.Transport | None = None
        self.request: h11.Request | None = None
        self.body = bytearray()
        self.task: asyncio.Task[None] | None = None
        self.timer: asyncio.TimerHandle | None = None

    # -- asyncio callbacks -----------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's TCPTransport is not an asyncio.Transport subclass; duck-type it.
        self.transport = cast(asyncio.Transport, transport)
        self._arm_timer()

    def data_received(self, data: bytes) -> None:
        self.conn.receive_data(data)
        self._process()

    def eof_received(self) -> bool | None:
        # Half-close: a request in flight still gets its answer; we close afterwards.
        self.conn.receive_data(b"")
        self._process()
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timer()
        if self.task is not None:
            self.task.cancel()
        self.transport = None

    # -- request cycle ---------------------------------------------------------------

    def _process(self) -> None:
        while self.transport is not None and self.task is None:
            try:
                event = self.conn.next_event()
            except h11.RemoteProtocolError as exc:
                self._fail(exc.error_status_hint, str(exc))
                return
            if event is h11.NEED_DATA or event is h11.PAUSED:
                return
            if isinstance(event, h11.Request):
                # h11 only limits a head that arrives incomplete; one that arrives
                # whole in a single read is checked here.
                if sum(len(k) + len(v) + 4 for k, v in event.headers.raw_items()) > MAX_HEAD:
                    self._fail(431, "request header fields too large")
                    return
                self.request = event
                self.body.clear()
                if self.conn.they_are_waiting_for_100_continue:
                    self._send(h11.InformationalResponse(status_code=100, headers=[]))
            elif isinstance(event, h11.Data):
                self.body += event.data
                if len(self.body) > MAX_BODY:
                    self._fail(413, "request body too large")
                    return
            elif isinstance(event, h11.EndOfMessage):
                assert self.request is not None
                self._cancel_timer()
                self.transport.pause_reading()
                self.task = asyncio.ensure_future(self._respond(self.request, bytes(self.body)))
            elif isinstance(event, h11.ConnectionClosed):
                self._close()
                return

    async def _respond(self, req: h11.Request, body: bytes) -> None:
        method = req.method.decode("ascii", "replace")
        target = req.target.decode("ascii", "replace")
        try:
            status, ctype, data, headers = await self.handler.handle(method, target, body)
        except asyncio.CancelledError:
            raise
        except Exception:
            _log.exception("admin: %s %s failed", method, target)
            status, ctype, data, headers = _json({"error": "internal error"}, 500)
        if self.transport is None:
            return
        self._write_response(status, ctype, data, headers, head=method == "HEAD")
        self.task = None
        if self.conn.our_state is h11.MUST_CLOSE or self.conn.their_state is h11.MUST_CLOSE:
            self._close()
            return
        try:
            self.conn.start_next_cycle()
        except h11.LocalProtocolError:
            self._close()
            return
        self._arm_timer()
        self.transport.resume_reading()
        self._process()  # pipelined requests already buffered in h11

    def _write_response(
        self, status: int, ctype: str, data: bytes, extra: list[tuple[str, str]], *, head: bool, close: bool = False
    ) -> None:
        headers = [("content-type", ctype), ("content-length", str(len(data))), ("cache-control", "no-store")]
        headers += extra
        if close:
            headers.append(("connection", "close"))
        try:
            reason = HTTPStatus(status).phrase.encode()
        except ValueError:
            reason = b""
        self._send(h11.Response(status_code=status, headers=headers, reason=reason))
        if data and not head:
            self._send(h11.Data(data=data))
        self._send(h11.EndOfMessage())

    def _send(self, event: Any) -> None:
        out = self.conn.send(event)
        if out and self.transport is not None:
            self.transport.write(out)

    def _fail(self, status: int, message: str) -> None:
        """Answer a broken request and close (no keep-alive after bad framing)."""
        if self.conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
            status, ctype, data, _ = _json({"error": message}, status)
            try:
                self._write_response(status, ctype, data, [], head=False, close=True)
            except h11.LocalProtocolError:
                pass
        self._close()

    def _close(self) -> None:
        self._cancel_timer()
        if self.transport is not None:
            self.transport.close()
            self.transport = None

    # -- idle timer ------------------------------------------------------------------

    def _arm_timer(self) -> None:
        self._cancel_timer()
        self.timer = asyncio.get_running_loop().call_later(IDLE_TIMEOUT, self._close)

    def _cancel_timer(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None


async def start_admin(
    runtime: AdminRuntime, host: str | None, port: int | None, sock: socket.socket | None = None
) -> asyncio.AbstractServer:
    """Listen for admin requests on (host, port), or on an already bound ``sock``.

    Returns:
        The started asyncio server; ``close()`` it to stop accepting.
    """
    handler = Handler(runtime)
    loop = asyncio.get_running_loop()
    if sock is not None:
        return await loop.create_server(lambda: AdminProtocol(handler), sock=sock)
    return await loop.create_server(lambda: AdminProtocol(handler), host=host, port=port or 0, reuse_address=True)
