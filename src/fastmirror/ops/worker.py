"""One worker's lifetime: event loop, listener, admin, timers, signals.

`serve()` runs the proxy until SIGTERM/SIGINT, then drains: stop accepting, answer
`/ready` with 503, let requests in flight finish (up to the drain timeout), exit 0.
SIGHUP re-reads the config file and swaps the settings new requests use; requests
in flight keep the settings they started with.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import time
from typing import Any, Callable

import uvloop

from fastmirror import __version__, preflight
from fastmirror.diffing.live import Diffing
from fastmirror.config import Config, ConfigError, config_to_dict, route_warnings
from fastmirror.hotpath import CORE_IMPL
from fastmirror.ops.control import serve_worker_end
from fastmirror.ops.logs import AccessLog
from fastmirror.ops.metrics import Registry
from fastmirror.ops.rebalance import Shedder
from fastmirror.proxy.context import ProxyContext, Settings
from fastmirror.proxy.router import EXPIRED, MirrorState, start_state
from fastmirror.proxy.downstream import DownstreamProtocol
from fastmirror.proxy.listener import Acceptor, bind_listener
from fastmirror.proxy.tls import ListenerTLS

log = logging.getLogger("fastmirror")

SWEEP_INTERVAL = 0.25  # timeouts are enforced to within this


class Runtime:
    """What the admin endpoint reads and sets in this process (admin.AdminRuntime)."""

    def __init__(self, ctx: ProxyContext, diffs: Diffing | None = None):
        self.ctx = ctx
        self._diffs = diffs

    def diffs_snapshot(self) -> dict[str, Any]:
        return self._diffs.snapshot() if self._diffs is not None else {"upstreams": {}}

    @property
    def config(self) -> Config:
        return self.ctx.settings.config

    def config_dict(self) -> dict[str, Any]:
        d = config_to_dict(self.config)
        d["mirror_percent"] = self.mirror_percent
        return d

    @property
    def mirror_percent(self) -> float:
        return self.ctx.settings.mirror_percent

    @property
    def mirror(self) -> MirrorState:
        return self.ctx.settings.mirror

    def set_mirror(self, state: MirrorState) -> None:
        self.ctx.set_mirror(state)

    @property
    def draining(self) -> bool:
        return self.ctx.draining

    def render_metrics(self) -> bytes:
        return self.ctx.registry.render()


class WorkerControl:
    """What the supervisor's requests do in this worker (control.WorkerOps)."""

    def __init__(self, runtime: Runtime, shedder: Shedder) -> None:
        self.runtime = runtime
        self.shedder = shedder

    @property
    def draining(self) -> bool:
        return self.runtime.draining

    def snapshot(self) -> dict[str, Any]:
        return self.runtime.ctx.registry.snapshot()

    def diffs(self) -> dict[str, Any]:
        return self.runtime.diffs_snapshot()

    def set_mirror(self, state: MirrorState) -> None:
        self.runtime.set_mirror(state)

    def shed(self, count: int, window: float) -> None:
        """Rebalancing: close some client connections over a window (rebalance.Shedder)."""
        connections = self.runtime.ctx.connections
        n = self.shedder.plan(connections, count, window, time.monotonic())
        log.debug("rebalancing: closing %d of %d client connections over %.1f s",
                  n, len(connections), window)


def sd_notify(message: str) -> None:
    """Tell systemd (Type=notify) about our state; a no-op outside systemd."""
    path = os.environ.get("NOTIFY_SOCKET")
    if not path:
        return
    if path.startswith("@"):
        path = "\0" + path[1:]  # abstract namespace
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.connect(path)
            sock.sendall(message.encode())
    except OSError as exc:
        log.warning("sd_notify failed: %s", exc)


class Worker:
    """Runs one proxy process; `run()` returns the exit code."""

    def __init__(self, config: Config, config_path: str | None,
                 overrides: dict[str, object] | None = None, *,
                 listen_sock: socket.socket | None = None, admin: bool = True,
                 notify: bool = True, control: socket.socket | None = None) -> None:
        self.config_path = config_path
        self.overrides = overrides or {}
        self.registry = Registry(version=__version__, core=CORE_IMPL)
        self.diffs = Diffing(self.registry)
        self.ctx = ProxyContext(config, self.registry, self.diffs.comparator_for(config))
        self.runtime = Runtime(self.ctx, diffs=self.diffs)
        self.listen_sock = listen_sock
        self.admin_enabled = admin
        self.notify = notify
        self.control = control  # channel to the supervisor (ops/control.py), if any
        self.stop_requested: asyncio.Event | None = None
        self.shedder = Shedder()
        # Records dropped by access logs closed since (a SIGHUP with a new path), so
        # that fastmirror_access_log_dropped_total never goes down.
        self._log_dropped_before = 0
        self.registry.on_collect.append(self._collect_access_log)
        self.tls: ListenerTLS | None = None  # TLS on the listener (issue 9), set by run()
        self._reload_lock = asyncio.Lock()
        self._reloads: set[asyncio.Task[None]] = set()

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        self.stop_requested = asyncio.Event()
        config = self.ctx.settings.config
        self._open_access_log(config)
        factory: Callable[[], asyncio.Protocol] = lambda: DownstreamProtocol(self.ctx)
        # TLS on the listener (issue 9): each worker builds its own context.
        if config.tls_cert is not None:
            try:
                self.tls = ListenerTLS(config, self.ctx)
            except ConfigError as exc:  # a file replaced since the config was checked
                log.error("%s", exc)
                return 2
            factory = self.tls.wrap(factory)
        sock = self.listen_sock or bind_listener(config.listen, reuse_port=False)
        acceptor = Acceptor(sock, factory, sock_backlog(), self.registry)
        await acceptor.start()
        self.ctx.acceptor = acceptor
        admin_server = None
        if self.admin_enabled and config.admin is not None:
            from fastmirror.ops.admin import start_admin
            admin_server = await start_admin(self.runtime, config.admin.host, config.admin.port)
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self.stop_requested.set)
        loop.add_signal_handler(signal.SIGHUP, self.reload)
        sweeper = loop.create_task(self._sweep_forever())
        log.info("fastmirror %s (core: %s) listening on %s, primary %s, shadows %s at %g%%",
                 __version__, CORE_IMPL, config.listen, config.primary,
                 ", ".join(map(str, config.shadow)) or "none", config.mirror_percent)
        if self.notify:
            sd_notify("READY=1")
        control = None
        if self.control is not None:
            control = loop.create_task(self._serve_control(self.control))
        await self.stop_requested.wait()
        if self.notify:
            sd_notify("STOPPING=1")
        await self._drain(acceptor, config.drain_timeout)
        sweeper.cancel()
        if control is not None:
            control.cancel()
        if admin_server is not None:
            admin_server.close()
        self._close_all()
        return 0

    # -- control channel with the supervisor (ops/control.py) ---------------------

    async def _serve_control(self, sock: socket.socket) -> None:
        """Answer the supervisor until it goes away; then drain, so no worker is orphaned."""
        assert self.stop_requested is not None
        await serve_worker_end(sock, WorkerControl(self.runtime, self.shedder))
        if not self.stop_requested.is_set():
            log.warning("supervisor gone (control channel closed): draining")
            self.stop_requested.set()

    async def _drain(self, acceptor: Acceptor, timeout: float) -> None:
        ctx = self.ctx
        ctx.draining = True
        acceptor.close()  # stop accepting; the listening socket closes
        if self.tls is not None:  # issue 9: handshakes in progress
            self.tls.close()
        for conn in list(ctx.connections):
            conn.shutdown()
        deadline = time.monotonic() + timeout
        while ctx.connections and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        if ctx.connections:
            log.warning("drain timeout: closing %d connections", len(ctx.connections))
            for conn in list(ctx.connections):
                conn.drop()
        log.info("drained, exiting")

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_INTERVAL)
            try:
                self._sweep(time.monotonic())
            except Exception:  # a bug here must not switch every timeout off for good
                log.exception("sweep failed")

    def _sweep(self, now: float) -> None:
        """Enforce every timeout: connections, pools, shadows, pending diffs, mirror_for."""
        ctx = self.ctx
        ended = ctx.settings.mirror.expire_if_due(ctx.settings.config, time.time())
        if ended is not None:
            ctx.set_mirror(ended)
            if self.control is None:  # with workers, the supervisor says it, once
                log.warning("%s", EXPIRED)
        for conn in list(ctx.connections):
            conn.sweep(now)
        if self.shedder.due:
            self.shedder.sweep(now)
        s = ctx.settings
        s.primary_pool.sweep(now)
        for target in s.targets() + s.retired:
            target.sweep(now)
        self.diffs.sweep(now)
        s.retired = [t for t in s.retired if t.active or len(t.queue)]

    def reload(self) -> None:
        """SIGHUP: re-read the config file; new requests use it, in-flight ones finish.

        The checks that resolve names (preflight) run in a thread, so a slow resolver
        does not stall the proxy; SIGHUPs in a row are applied in order."""
        if self.config_path is None:
            if self.ctx.settings.access_log is not None:
                self.ctx.settings.access_log.reopen()  # logrotate's SIGHUP
            if self.tls is None:
                log.info("SIGHUP: no config file to reload")
                return
        task = asyncio.get_running_loop().create_task(self._reload())
        self._reloads.add(task)
        task.add_done_callback(self._reloads.discard)

    async def _reload(self) -> None:
        async with self._reload_lock:
            loop = asyncio.get_running_loop()
            try:
                config = await loop.run_in_executor(None, preflight.load_checked,
                                                    self.config_path, self.overrides)
                if self.config_path is None:  # the flags' certificate files, re-read
                    assert self.tls is not None
                    self.tls.reload(config)
                    log.info("SIGHUP: certificate reloaded")
                    return
                self._reload_tls(config)  # a bad certificate file keeps the whole old config
                if self.control is None:  # with workers, the supervisor says it, once
                    for warning in route_warnings(config):
                        log.warning("SIGHUP: %s", warning)
            except ConfigError as exc:
                log.error("SIGHUP: %s not reloaded: %s",
                          "config" if self.config_path else "certificate", exc)
                return
            self._apply(config)

    def _apply(self, config: Config) -> None:
        old = self.ctx.settings
        if config.listen != old.config.listen:
            log.warning("SIGHUP: listen address changes need a restart; keeping %s",
                        old.config.listen)
        mirror = start_state(config, time.time(), old.mirror, old.config)
        try:   # the TLS files are loaded here: a bad one keeps the old settings too
            new = Settings(config, self.registry, mirror, previous=old,
                           comparator=self.diffs.comparator_for(config))
        except ConfigError as exc:
            log.error("SIGHUP: config not reloaded: %s", exc)
            return
        new.set_access_log(old.access_log)
        self.ctx.settings = new
        self.ctx.set_mirror(mirror)
        if self.ctx.acceptor is not None:  # a raised --max-connections takes the waiting ones now
            self.ctx.acceptor.fit(len(self.ctx.connections), new.max_connections)
        self._open_access_log(config, old.config.access_log)
        for shadow in new.retired:
            shadow.close()
        new.retired = []
        if new.primary_pool is not old.primary_pool:
            # Idle connections to the old primary close now; those in use close when
            # their exchange returns them to the closed pool.
            old.primary_pool.close()
        log.info("SIGHUP: config reloaded from %s", self.config_path)

    def _reload_tls(self, config: Config) -> None:
        """TLS on the listener (issue 9): the new certificate for new handshakes.

        Raises:
            ConfigError: a bad file; the old certificate stays.
        """
        if (config.tls_cert is None) != (self.tls is None):
            log.warning("SIGHUP: turning TLS on or off on the listener needs a restart; keeping it %s",
                        "off" if self.tls is None else "on")
        elif self.tls is not None:
            self.tls.reload(config)

    def _open_access_log(self, config: Config, previous: str | None = None) -> None:
        s = self.ctx.settings
        if s.access_log is not None and config.access_log == previous:
            s.access_log.reopen()  # logrotate: same path, new file
            return
        if s.access_log is not None:
            s.access_log.close()
            self._log_dropped_before += s.access_log.dropped
            s.set_access_log(None)
        if config.access_log:
            s.set_access_log(AccessLog(config.access_log))

    def _collect_access_log(self, registry: Registry) -> None:
        current = self.ctx.settings.access_log
        registry.access_log_dropped = self._log_dropped_before + (current.dropped if current else 0)

    def _close_all(self) -> None:
        s = self.ctx.settings
        s.primary_pool.close()
        for target in s.targets():
            target.close()
        self.diffs.close()
        if s.access_log is not None:
            s.access_log.close()


def sock_backlog() -> int:
    """The kernel caps it at net.core.somaxconn anyway; nginx uses 511, Envoy 1024."""
    return 1024


def serve(config: Config, config_path: str | None, overrides: dict[str, object] | None = None,
          **worker_options: Any) -> int:
    """Run one proxy process on uvloop until it is told to stop; return the exit code."""
    worker = Worker(config, config_path, overrides, **worker_options)
    return uvloop.run(worker.run())
