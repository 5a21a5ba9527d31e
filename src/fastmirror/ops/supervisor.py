"""Process model: the proxy in this process, or a supervisor and N worker processes.

``--workers 1`` (the default) runs the proxy right here (ops/worker.serve). With N > 1 this
process becomes a supervisor, like nginx's master: it starts N workers with
``python -m fastmirror.ops.supervisor`` (a fresh interpreter, never a fork of a running event
loop), each binding its own SO_REUSEPORT socket on the listen address so that the
kernel spreads connections over them. The supervisor serves no traffic. It:

- serves the admin endpoint for all workers: ``/metrics`` is the sum of every worker's
  ``Registry.snapshot()``, ``PUT /mirror`` reaches every worker (and restarted ones);
- turns SIGTERM/SIGINT into a drain of every worker, then exits 0; forwards SIGHUP;
- restarts a worker that dies while not draining, with a backoff against crash loops,
  then has the other workers shed keep-alive connections until the load evens out;
- keeps every exported counter monotonic across worker deaths and late answers
  (metrics.WorkerTotals);
- tells systemd ``READY=1`` once every worker listens.

Each worker holds one end of a ``socketpair()``, the control channel; its messages,
both ends and the matching of replies to requests are in ops/control.py. EOF tells
each side that the other is gone: a worker whose supervisor died drains and exits
rather than live on as an orphan.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from typing import Any

from fastmirror import preflight
from fastmirror.config import Config, ConfigError, config_to_dict, load_config, route_warnings
from fastmirror.ops import control
from fastmirror.ops.control import SupervisorEnd, WorkerSpec
from fastmirror.ops.logs import setup_logging
from fastmirror.ops.metrics import WorkerTotals
from fastmirror.ops.rebalance import shed_plan
from fastmirror.proxy.upstream_tls import warn_if_insecure
from fastmirror.proxy.listener import bind_listener
from fastmirror.proxy.router import EXPIRED, MirrorState, start_state

log = logging.getLogger("fastmirror")

# A scrape waits this long for the workers' snapshots; a worker that has not answered
# by then counts with its previous snapshot rather than stall Prometheus (10 s timeout).
SCRAPE_TIMEOUT = 1.0
# After a worker restarts, keep-alive clients would stay on the survivors for as long as
# they keep their connections, and the new worker would get almost nothing. So the
# supervisor evens out the workers' client connections: in up to REBALANCE_ROUNDS
# rounds, each worker over its fair share (by more than REBALANCE_TOLERANCE of it plus
# REBALANCE_SLACK connections) closes its excess, at most half of its connections a
# round, spread evenly over REBALANCE_WINDOW seconds (rebalance.Shedder: each connection
# ends after its next response, with Connection: close, or is closed if it stays
# idle); a reconnecting client lands where SO_REUSEPORT puts it, so later rounds
# finish what the first leaves uneven.
REBALANCE_ROUNDS = 5
REBALANCE_DELAY = 1.0  # a worker that dies this soon after it listens moves nobody
REBALANCE_WINDOW = 2.0
REBALANCE_SETTLE = 0.5  # after a round's window: time for the clients to reconnect
# Restart delay after a worker dies: doubles while workers keep dying young, up to
# the cap; nginx restarts at once, but a crash loop should not eat a CPU.
BACKOFF_MIN = 0.1
BACKOFF_MAX = 5.0
YOUNG = 5.0  # a worker that dies younger than this (s) doubles the next delay
# Liveness, as uvicorn's supervisor pings its workers (here the ping asks for a
# snapshot): a ready worker silent for HEARTBEAT_DEAD seconds (its event loop is
# stuck) is killed and restarted.
HEARTBEAT = 5.0
HEARTBEAT_DEAD = 3 * HEARTBEAT
# On SIGTERM, workers get drain_timeout to finish; this much more before SIGKILL.
KILL_GRACE = 5.0


def run(config: Config, config_path: str | None, overrides: dict[str, object] | None = None) -> int:
    """Run the proxy with config until SIGTERM/SIGINT; return the exit code."""
    setup_logging(config.log_level)
    warn_if_insecure(config)   # once, here: not again from every worker
    for warning in route_warnings(config):
        log.warning("%s", warning)
    n = config.effective_workers
    if n == 1:
        from fastmirror.ops.worker import serve

        try:
            sock = bind_listener(config.listen, reuse_port=False)
        except ConfigError as exc:
            return _fail(str(exc))
        return serve(config, config_path, overrides, listen_sock=sock)
    try:  # a bad address fails here, once, rather than in every worker
        bind_listener(config.listen, reuse_port=True, listen=False).close()
    except ConfigError as exc:
        return _fail(str(exc))
    import uvloop

    supervisor = Supervisor(config, config_path, overrides or {}, n)
    return uvloop.run(supervisor.run())


def _fail(message: str) -> int:
    print(f"fastmirror: error: {message}", file=sys.stderr)
    return 2


# ---------------------------------------------------------------------------------
# supervisor side
# ---------------------------------------------------------------------------------


class Child:
    """One worker process and the supervisor's end of its control channel."""

    def __init__(self, index: int, proc: subprocess.Popen[bytes], channel: SupervisorEnd) -> None:
        self.index = index
        self.proc = proc
        self.channel = channel
        self.started = time.monotonic()
        self.last_heard = self.started
        self.ready = False
        self.reload_pending = False  # SIGHUP arrived before it listened

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def alive(self) -> bool:
        return self.proc.returncode is None

    @classmethod
    async def start(cls, index: int, config_path: str | None, overrides: dict[str, object],
                    mirror: MirrorState | None) -> Child:
        """Start worker index: `python -m fastmirror.ops.supervisor`, its WorkerSpec on stdin.

        Raises:
            OSError: the process could not be started.
        """
        ours, theirs = socket.socketpair()
        spec = WorkerSpec(index, theirs.fileno(), config_path, overrides, mirror)
        env = dict(os.environ)
        env.pop("NOTIFY_SOCKET", None)  # only the supervisor talks to systemd
        try:  # fork+exec takes ~1 ms of the loop, only at start and restart
            proc = subprocess.Popen([sys.executable, "-m", "fastmirror.ops.supervisor"],  # noqa: ASYNC220
                                    stdin=subprocess.PIPE, pass_fds=(theirs.fileno(),), env=env)
        except OSError:
            ours.close()
            raise
        finally:
            theirs.close()
        assert proc.stdin is not None
        try:
            proc.stdin.write(spec.encode())  # a few hundred bytes: fits the pipe buffer
            proc.stdin.close()
        except OSError:  # died at once; Supervisor._watch sees it
            pass
        return cls(index, proc, await SupervisorEnd.open(ours))

    def kill(self, signum: int) -> None:
        if self.proc.poll() is None:
            try:
                os.kill(self.proc.pid, signum)
            except ProcessLookupError:
                pass

    async def reap(self, timeout: float) -> None:
        """Wait for the process to exit, killing it after timeout seconds."""
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None:
            if time.monotonic() > deadline:
                self.kill(signal.SIGKILL)
                deadline = float("inf")
            await asyncio.sleep(0.02)


class SupervisorRuntime:
    """What the admin endpoint reads and sets, for all the workers together (admin.AdminRuntime)."""

    def __init__(self, sup: Supervisor) -> None:
        self.sup = sup

    @property
    def config(self) -> Config:
        return self.sup.config

    def config_dict(self) -> dict[str, Any]:
        d = config_to_dict(self.sup.config)
        d["mirror_percent"] = self.mirror_percent
        return d

    @property
    def mirror_percent(self) -> float:
        return self.sup.mirror.percent

    @property
    def mirror(self) -> MirrorState:
        self.sup.expire_mirror()  # between heartbeats too: /mirror never shows a passed deadline
        return self.sup.mirror

    def set_mirror(self, state: MirrorState) -> None:
        """Every worker, now and after a restart (until SIGHUP reloads the file's values)."""
        self.sup.set_mirror(state)

    @property
    def draining(self) -> bool:
        # /ready is 503 until every worker has listened once, and while draining.
        return self.sup.draining or not self.sup.all_ready

    async def render_metrics(self) -> bytes:
        from fastmirror.ops.metrics import render_snapshots

        return render_snapshots(await self.snapshots())

    async def snapshots(self) -> list[Mapping[str, Any]]:
        """What /metrics sums: every worker's latest snapshot and the retired counters.

        A worker that is late keeps counting with its previous snapshot; a dead one
        with its last snapshot, gauges zeroed (see metrics.WorkerTotals).
        """
        await self.sup.ask("snapshot")  # the replies land in sup.totals (_on_message)
        return self.sup.totals.snapshots()

    async def diffs_snapshot(self) -> dict[str, Any]:
        """Every ready worker's DiffStore snapshot, merged (a late worker is left out)."""
        if not self.sup.config.diff.enabled:
            return {"upstreams": {}}
        from fastmirror.diffing.diffstore import DiffStore

        replies = await self.sup.ask("diffs")
        return DiffStore.merge_snapshots([reply for _, reply in replies])


class Supervisor:
    """Starts, watches, restarts and stops the workers; serves their admin endpoint."""

    def __init__(self, config: Config, config_path: str | None, overrides: dict[str, object],
                 n: int) -> None:
        self.config = config
        self.config_path = config_path
        self.overrides = overrides
        self.n = n
        self.children: dict[int, Child] = {}
        # The run-time mirror state every worker has (PUT /mirror, mirror_for); a SIGHUP
        # starts it again from the file (router.start_state).
        self.mirror = start_state(config, time.time())
        self._reload_lock = asyncio.Lock()
        self._reloads: set[asyncio.Task[None]] = set()
        self.draining = False
        self.all_ready = False
        self.exit_code = 0
        # Every worker's latest snapshot and the dead ones' counters: /metrics sums these,
        # so no exported counter ever goes down (metrics.WorkerTotals).
        self.totals = WorkerTotals()
        self._stopping = asyncio.Event()
        self._rebalancer: asyncio.Task[None] | None = None

    # -- lifetime ------------------------------------------------------------------

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.add_signal_handler(signum, self._dispatch_signal, signum)
        admin_server = None
        if self.config.admin is not None:
            from fastmirror.ops.admin import start_admin

            admin = self.config.admin
            try:
                admin_server = await start_admin(SupervisorRuntime(self), admin.host, admin.port)
            except OSError as exc:
                return _fail(f"admin: cannot listen on {admin}: {exc.strerror or exc}")
        log.info("supervisor pid %d starting %d workers", os.getpid(), self.n)
        slots = [loop.create_task(self._keep_running(i)) for i in range(self.n)]
        heartbeat = loop.create_task(self._heartbeat())
        await self._stopping.wait()
        deadline = self.config.drain_timeout + KILL_GRACE
        _, late = await asyncio.wait(slots, timeout=deadline)
        for child in self.children.values():
            if child.alive:
                log.warning("worker %d (pid %d) still running %.0f s after SIGTERM: killing",
                            child.index, child.pid, deadline)
                child.kill(signal.SIGKILL)
        if late:
            await asyncio.wait(late, timeout=2.0)
        for task in (*late, heartbeat, self._rebalancer):
            if task is not None:
                task.cancel()
        if admin_server is not None:
            admin_server.close()
        log.info("supervisor exiting")
        return self.exit_code

    def _dispatch_signal(self, signum: int) -> None:
        getattr(self, f"handle_{signal.Signals(signum).name.lower()}")()

    def handle_sigterm(self) -> None:
        if self.draining:
            log.info("already draining")
            return
        log.info("draining %d workers", sum(c.alive for c in self.children.values()))
        self._stop()

    handle_sigint = handle_sigterm

    def handle_sighup(self) -> None:
        """Reload here (for /config) and in every worker (each reloads itself).

        The new config is checked here first, in a thread (preflight resolves names):
        one that fails is reported here, once, and the workers are not told. Each
        would read the same files, fail the same way and log the same line again,
        and keep its settings just the same. SIGHUPs in a row are forwarded in order.
        """
        task = asyncio.get_running_loop().create_task(self._reload())
        self._reloads.add(task)
        task.add_done_callback(self._reloads.discard)

    async def _reload(self) -> None:
        async with self._reload_lock:
            try:
                config = await asyncio.get_running_loop().run_in_executor(
                    None, preflight.load_checked, self.config_path, self.overrides)
            except ConfigError as exc:
                log.error("SIGHUP: %s not reloaded: %s",
                          "config" if self.config_path else "certificate", exc)
                return
            if self.config_path is not None:
                for warning in route_warnings(config):
                    log.warning("SIGHUP: %s", warning)
                if config.effective_workers != self.n:
                    log.warning("SIGHUP: changing the number of workers needs a restart; keeping %d",
                                self.n)
                self.mirror = start_state(config, time.time(), self.mirror, self.config)
                self.config = config  # the file's percents win, as with one worker
            for child in self.children.values():
                if child.ready:
                    child.kill(signal.SIGHUP)
                else:
                    child.reload_pending = True

    def _stop(self, exit_code: int = 0) -> None:
        from fastmirror.ops.worker import sd_notify

        self.draining = True
        self.exit_code = self.exit_code or exit_code
        sd_notify("STOPPING=1")
        for child in self.children.values():
            child.kill(signal.SIGTERM)
        self._stopping.set()

    # -- one worker slot: start, watch, restart ------------------------------------

    async def _keep_running(self, index: int) -> None:
        backoff = BACKOFF_MIN
        while not self.draining:
            try:
                child = await self._spawn(index)
            except OSError as exc:
                backoff = min(BACKOFF_MAX, backoff * 2)
                log.error("worker %d: cannot start: %s; retrying in %.1f s", index, exc, backoff)
            else:
                await self._watch(child)
                if self.draining:
                    return
                if not self.all_ready and not child.ready:
                    code = child.proc.returncode
                    log.error("worker %d (pid %d) %s before it listened: stopping",
                              index, child.pid, _describe(code))
                    self._stop(2 if code == 2 else 1)
                    return
                young = time.monotonic() - child.started < YOUNG
                backoff = min(BACKOFF_MAX, backoff * 2) if young else BACKOFF_MIN
                log.warning("worker %d (pid %d) %s; restarting in %.1f s",
                            index, child.pid, _describe(child.proc.returncode), backoff)
            try:
                await asyncio.wait_for(self._stopping.wait(), backoff)
            except TimeoutError:
                pass

    async def _spawn(self, index: int) -> Child:
        child = await Child.start(index, self.config_path, self.overrides, self.mirror)
        self.children[index] = child
        if self.draining:
            child.kill(signal.SIGTERM)
        log.debug("worker %d started, pid %d", index, child.pid)
        return child

    async def _watch(self, child: Child) -> None:
        """Read the child's messages until its channel closes, then reap it."""
        try:
            async for msg in child.channel.messages():
                child.last_heard = time.monotonic()
                self._on_message(child, msg)
        except (OSError, ValueError) as exc:
            log.error("worker %d (pid %d): control channel failed: %s", child.index, child.pid, exc)
            child.kill(signal.SIGKILL)
        self.totals.exit(child)  # its connections and queues are gone; its counters stay
        child.channel.close()
        # EOF comes when the process exits (nothing else holds its end), so this is short;
        # the bound covers a worker that closed the channel and hangs while draining.
        await child.reap(self.config.drain_timeout + KILL_GRACE)
        self.totals.retire(child)

    def _on_message(self, child: Child, msg: object) -> None:
        kind = control.classify(msg)
        if isinstance(kind, control.Reply):
            if kind.op == "snapshot":
                # Kept at once, even when the scrape that asked gave up on it: a later
                # snapshot is never smaller, and the next scrape or retire uses this one.
                self.totals.update(child, kind.payload)
            child.channel.settle(kind)
        elif isinstance(kind, control.Ready):
            self._on_ready(child)

    def _on_ready(self, child: Child) -> None:
        from fastmirror.ops.worker import sd_notify

        child.ready = True
        if child.reload_pending:
            child.kill(signal.SIGHUP)
        if self.all_ready:
            log.info("worker %d restarted, pid %d", child.index, child.pid)
            self._start_rebalance()
        elif len(self.children) == self.n and all(c.ready for c in self.children.values()):
            self.all_ready = True
            log.info("%d workers listening on %s", self.n, self.config.listen)
            sd_notify("READY=1")

    def _start_rebalance(self) -> None:
        """(Re)start the rounds that move keep-alive clients to a restarted worker."""
        if self._rebalancer is not None:
            self._rebalancer.cancel()  # another restart: count again from its state
        self._rebalancer = asyncio.get_running_loop().create_task(self._rebalance())

    async def _rebalance(self) -> None:
        """Ask the workers holding too many client connections to close some, gently."""
        await asyncio.sleep(REBALANCE_DELAY)
        for _ in range(REBALANCE_ROUNDS):
            if self.draining:
                return
            replies = await self.ask("snapshot")
            if len(replies) == self.n:  # a fair share needs everyone's count
                counts = [int(snap.get("connections_active", 0)) for _, snap in replies]
                plan = shed_plan(counts)
                if not any(plan):
                    return
                for (child, _), n_conns, shed in zip(replies, counts, plan):
                    if shed:
                        log.info("rebalancing: worker %d (pid %d) closes %d of its %d client "
                                 "connections over %.1f s", child.index, child.pid, shed,
                                 n_conns, REBALANCE_WINDOW)
                        child.channel.send(control.shed(shed, REBALANCE_WINDOW))
            await asyncio.sleep(REBALANCE_WINDOW + REBALANCE_SETTLE)

    def set_mirror(self, state: MirrorState) -> None:
        self.mirror = state
        for child in self.children.values():
            child.channel.send(control.set_mirror(state))

    def expire_mirror(self) -> None:
        """mirror_for is over: off in every worker (each also turns itself off)."""
        ended = self.mirror.expire_if_due(self.config, time.time())
        if ended is not None:
            self.set_mirror(ended)
            log.warning("%s", EXPIRED)

    async def _heartbeat(self) -> None:
        while True:
            await asyncio.sleep(HEARTBEAT)
            self.expire_mirror()
            now = time.monotonic()
            for child in list(self.children.values()):
                if not child.ready or not child.alive:
                    continue
                if now - child.last_heard > HEARTBEAT_DEAD and not self.draining:
                    log.error("worker %d (pid %d) silent for %.0f s: killing",
                              child.index, child.pid, now - child.last_heard)
                    child.kill(signal.SIGKILL)
                else:
                    # The liveness probe asks for a snapshot (id 0: no scrape waits for
                    # it): its reply lands in self.totals, so a worker killed between
                    # scrapes takes at most HEARTBEAT seconds of counts with it.
                    child.channel.send(control.heartbeat())

    # -- asking the workers ------------------------------------------------------------

    async def ask(self, op: str) -> list[tuple[Child, control.Message]]:
        """Ask every ready worker (control.ASKS); (worker, reply) of those that answer
        within SCRAPE_TIMEOUT (a late one is left out and logged)."""
        asked = [(c, c.channel) for c in self.children.values()
                 if c.ready and c.alive and not c.channel.closing]
        answered, late = await control.ask_all(asked, op, SCRAPE_TIMEOUT)
        for child in late:
            log.warning("worker %d (pid %d): no %s within %.1f s; %s",
                        child.index, child.pid, op, SCRAPE_TIMEOUT,
                        "its previous one counts" if op == "snapshot" else "left out of this answer")
        return answered



def _describe(returncode: int | None) -> str:
    if returncode is None:
        return "is running"
    if returncode < 0:
        try:
            return f"was killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"was killed by signal {-returncode}"
    return f"exited with status {returncode}"


# ---------------------------------------------------------------------------------
# worker side: `python -m fastmirror.ops.supervisor`, spec as JSON on stdin
# ---------------------------------------------------------------------------------


def worker_main() -> int:
    """One worker process: its own SO_REUSEPORT listener, no admin, a control channel."""
    # The supervisor may forward a SIGHUP before Worker.run installs its handler, and
    # SIGHUP's default action is to exit; ignore it until then.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    spec = WorkerSpec.decode(sys.stdin.buffer.read())
    channel = socket.socket(fileno=spec.fd)
    try:
        config = load_config(spec.config_path, spec.overrides)
        setup_logging(config.log_level)
        sock = bind_listener(config.listen, reuse_port=True)
    except ConfigError as exc:
        return _fail(f"worker {spec.index}: {exc}")
    import uvloop

    from fastmirror.ops.worker import Worker

    worker = Worker(config, spec.config_path, spec.overrides, listen_sock=sock, admin=False,
                    notify=False, control=channel)
    if spec.mirror is not None:
        worker.runtime.set_mirror(spec.mirror)
    return uvloop.run(worker.run())


if __name__ == "__main__":
    sys.exit(worker_main())
