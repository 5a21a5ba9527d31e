"""What every client connection of one worker shares: settings and live state.

`Settings` is built once per config load (start-up, each SIGHUP), never per request: a
request keeps the Settings it started with, so a reload never changes one in flight.
`Settings` is also the one place that turns a config into upstream targets. A target
that a reload keeps (same role and address: its pool, queue and stats live on) gets
exactly the settings a new one would have.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Protocol

from fastmirror.config import Address, Config, Route, shadow_edits
from fastmirror.hotpath import match_route
from fastmirror.ops.metrics import Registry
from fastmirror.proxy.mirror import HeadEdit, RequestIds
from fastmirror.proxy.pool import UpstreamPool
from fastmirror.proxy.router import OFF_POLICY, MirrorPolicy, MirrorState, RouteTable, start_state
from fastmirror.proxy.shadow import ShadowTarget
from fastmirror.proxy.upstream_tls import ResumingContext, client_context

if TYPE_CHECKING:
    from fastmirror.diffing.comparator import Comparator
    from fastmirror.ops.logs import AccessLog
    from fastmirror.proxy.listener import Acceptor


class ClientConnection(Protocol):
    """What the worker (timers, drain, rebalancing) sees of a client connection
    (downstream.DownstreamProtocol): declared here so this module needs not import it."""

    closed: bool
    keep_alive: bool             # False: the current response is the last
    close_after_response: bool   # the next response is the last

    @property
    def tunnel(self) -> bool: ...
    @property
    def head(self) -> object | None: ...      # a request is in progress
    @property
    def response_started(self) -> bool: ...
    @property
    def buf(self) -> bytearray: ...           # bytes of the next request, if any
    @property
    def seq(self) -> int: ...                 # requests seen so far

    def sweep(self, now: float) -> None: ...
    def shutdown(self) -> None: ...
    def drop(self) -> None: ...


class RoutePlan:
    """One route as requests use it (a [[route]], or the top level for no match): its
    name for the access log, its mirror policy, and the targets its copies go to."""

    __slots__ = ("name", "route", "policy", "shadows")

    def __init__(self, route: Route | None, shadows: list[ShadowTarget]) -> None:
        self.name = route.name if route is not None else None
        self.route = route
        self.shadows = shadows
        self.policy = OFF_POLICY  # Settings.set_mirror sets the real one


class Settings:
    """What requests read from the config, built once per load, never per request."""

    def __init__(self, config: Config, registry: Registry, mirror: MirrorState | float,
                 previous: Settings | None = None, comparator: Comparator | None = None) -> None:
        self.config = config
        # comparator.Comparator when diffing is on: mirrored requests get compared.
        self.comparator = comparator
        self.primary_timeout = config.primary_timeout
        self.idle_timeout = config.idle_timeout
        self.header_timeout = config.header_timeout
        self.max_connections = config.max_connections
        self.max_head_size = config.max_head_size
        self.host_suffix = b"-shadow" if config.shadow_host_suffix else b""
        # TLS to https:// upstreams, rebuilt with each load (a reload may change the CAs).
        tls = client_context(config)
        self.primary_pool: UpstreamPool = _primary_pool(
            config, previous.primary_pool if previous else None, tls)
        self.primary_stats = registry.upstream("primary", self.primary_pool.address)
        kept = {(t.role, t.address): t for t in previous.targets()} if previous else {}
        capture_limit = config.diff.max_body if comparator is not None else 0

        def target(role: str, addr: Address) -> ShadowTarget:
            return _shadow_target(role, addr, config, registry, capture_limit,
                                  kept.pop((role, str(addr)), None), tls)

        self.shadows = [target("shadow", spec.address) for spec in config.shadow]
        self.secondary: ShadowTarget | None = None
        if comparator is not None and config.secondary is not None:
            self.secondary = target("secondary", config.secondary)
        _edit_copies(config, self.shadows, self.secondary)
        for spec, shadow in zip(config.shadow, self.shadows):
            shadow.limit_rate(_worker_share(spec.max_rps if spec.max_rps is not None
                                            else config.mirror_max_rps, config.effective_workers))
        # Routes (issue 10): the top level is the plan of requests that match none.
        by_name = {spec.name: shadow for spec, shadow in zip(config.shadow, self.shadows)}
        self.default = RoutePlan(None, self.shadows)
        self.routes = [RoutePlan(r, self.shadows if r.shadow is None else [by_name[n] for n in r.shadow])
                       for r in config.route]
        self.route_table = RouteTable(
            [r.prefix.encode() for r in config.route],
            [None if r.methods is None else frozenset(m.encode() for m in r.methods)
             for r in config.route],
            [r.shadow == () for r in config.route]) if config.route else None
        # The exchange's own fast path: the core's scan over route_prefixes, then direct[i],
        # the plan of a route without methods; None there (or the scan's -2): plan_after.
        self.route_prefixes = self.route_table.prefixes if self.route_table is not None else None
        self.route_any_case = self.route_table.folds if self.route_table is not None else False
        self.direct = tuple(None if r.methods is not None else plan
                            for r, plan in zip(config.route, self.routes))
        # Targets the new config no longer has: the worker closes them (their queued
        # copies are counted dropped) and sweeps them until their exchanges end.
        self.retired = list(kept.values())
        self.access_log: AccessLog | None = None  # set with set_access_log
        self.set_mirror(mirror if isinstance(mirror, MirrorState) else MirrorState(mirror))

    def set_access_log(self, access_log: AccessLog | None) -> None:
        """The access log requests write to; the mirror targets write their copies' lines
        there too. A plain attribute, not a property: it is read on every request."""
        self.access_log = access_log
        for target in self.targets():
            target.access_log = access_log

    def targets(self) -> list[ShadowTarget]:
        """Every live mirror target: the shadows, then the secondary if any."""
        return self.shadows + ([self.secondary] if self.secondary is not None else [])

    def set_mirror(self, state: MirrorState) -> None:
        """The run-time percents (PUT /mirror, mirror_for): every route's policy anew."""
        c = self.config
        self.mirror = state
        self.mirror_percent = state.percent
        for plan in [self.default, *self.routes]:
            r = plan.route
            percent = state.percent if r is None else state.route_percent(r.name, r.mirror_percent)
            methods = c.mirror_methods if r is None or r.mirror_methods is None else r.mirror_methods
            key = c.mirror_key if r is None or r.mirror_key is None else r.mirror_key
            plan.policy = MirrorPolicy.build(percent, methods, key, c.max_mirror_body, bool(plan.shadows))
        self.policy = self.default.policy

    def plan_for(self, target: bytes, method: bytes) -> RoutePlan:
        """The first route that takes the request, or the top level's plan."""
        table = self.route_table
        if table is None:
            return self.default
        return self.plan_after(target, method, match_route(target, table.prefixes, table.folds))

    def plan_after(self, target: bytes, method: bytes, i: int) -> RoutePlan:
        """The plan for the core scan's answer i (RouteTable.match, unrolled: its own call
        was a third of the routes' cost per request, benchmarks/issue10). The exchange
        scans itself and comes here only for -2 or a route with methods."""
        if i == -1:
            return self.default
        table = self.route_table
        assert table is not None
        if i == -2 or table.methods[i] is not None:
            i = table.resume(target, method, i)
            if i < 0:
                return self.default
        return self.routes[i]


def _worker_share(max_rps: float | None, workers: int) -> float | None:
    """Each worker's part of a shadow's max_rps: SO_REUSEPORT spreads connections evenly,
    so N workers with rate/N each keep the shadow near its cap (not N times over it)."""
    return None if max_rps is None else max_rps / workers


def _edit_copies(config: Config, shadows: list[ShadowTarget], secondary: ShadowTarget | None) -> None:
    """Each target's header edits (issue 10); targets with the same edits share one
    HeadEdit, so a copy is built once per distinct edit. The secondary (noise
    cancellation) gets the top level's edits: it must see what the shadows see."""
    made: dict[tuple[object, ...], HeadEdit] = {}

    def edit(removed: tuple[str, ...], sets: tuple[tuple[str, str], ...]) -> HeadEdit | None:
        if not removed and not sets:
            return None
        key = (removed, sets)
        if key not in made:
            made[key] = HeadEdit(removed, sets)
        return made[key]

    for spec, shadow in zip(config.shadow, shadows):
        shadow.edit = edit(*shadow_edits(config, spec))
    if secondary is not None:
        secondary.edit = edit(*shadow_edits(config, None))


def _primary_pool(config: Config, old: UpstreamPool | None,
                  tls: ResumingContext | None) -> UpstreamPool:
    """The primary's pool: the old one (its idle connections kept) when the address stays."""
    primary = config.primary
    tls = tls if primary.tls else None
    if old is not None and old.address == str(primary):
        old.connect_timeout = config.connect_timeout
        old.tls = tls
        return old
    return UpstreamPool(primary.host, primary.port, config.connect_timeout, tls=tls,
                        name=str(primary))


def _shadow_target(role: str, addr: Address, config: Config, registry: Registry,
                   capture_limit: int, old: ShadowTarget | None,
                   tls: ResumingContext | None) -> ShadowTarget:
    """A mirror target (a shadow, or the secondary of noise cancellation) for config."""
    if old is None:
        old = ShadowTarget(addr.host, addr.port, role=role, name=str(addr),
                           stats=registry.upstream(role, str(addr)),
                           mirror_stats=registry.mirror(str(addr)))
    old.configure(queue_size=config.queue_size, concurrency=config.shadow_concurrency,
                  timeout=config.shadow_timeout, connect_timeout=config.connect_timeout,
                  capture_limit=capture_limit, tls=tls if addr.tls else None)
    return old


class ProxyContext:
    """Shared by every connection of one worker: the settings and the live state."""

    def __init__(self, config: Config, registry: Registry, comparator: Comparator | None = None) -> None:
        self.registry = registry
        mirror = start_state(config, time.time())
        self.settings = Settings(config, registry, mirror, comparator=comparator)
        self.connections: set[ClientConnection] = set()
        self.handshakes = 0  # TLS connections not handed to a DownstreamProtocol yet (tls.py)
        self.acceptor: Acceptor | None = None  # set once listening; pauses at max_connections
        self.ids = RequestIds()
        self.draining = False
        self.set_mirror(mirror)

    def set_mirror(self, state: MirrorState) -> None:
        """The run-time mirror state (PUT /mirror, mirror_for, a reload), and its gauges."""
        self.settings.set_mirror(state)
        self.registry.mirror_percent = state.percent
        self.registry.mirror_until = state.until

    def admit(self, conn: ClientConnection) -> bool:
        """A connection was accepted: count it; False when it is over --max-connections
        (uvloop accepted it in the batch that reached the cap: the caller closes it).
        At the cap the acceptor pauses, so the next connections wait in the backlog."""
        self.connections.add(conn)
        self.registry.connections_active += 1
        return self._fit()

    def _fit(self) -> bool:
        acceptor = self.acceptor
        if acceptor is not None and not acceptor.fit(len(self.connections) + self.handshakes,
                                                     self.settings.max_connections):
            self.registry.connections_rejected += 1
            return False
        return True

    def begin_handshake(self) -> bool:
        """A TLS connection was accepted: it counts toward --max-connections while it
        handshakes, so clients that never finish cannot hold more than the cap. False
        when over it (the caller closes it; it is not counted any more)."""
        self.handshakes += 1
        if self._fit():
            return True
        self.handshakes -= 1
        return False

    def end_handshake(self, handed_over: bool) -> None:
        """The handshake is over. Handed over, the connection is admitted at once
        (same count, no pause and resume); failed, it frees its place."""
        self.handshakes -= 1
        if not handed_over and self.acceptor is not None:
            self.acceptor.fit(len(self.connections) + self.handshakes, self.settings.max_connections)

    def release(self, conn: ClientConnection) -> None:
        """A connection closed: below the cap again, the acceptor resumes."""
        self.connections.discard(conn)
        self.registry.connections_active -= 1
        if self.acceptor is not None:
            self.acceptor.fit(len(self.connections) + self.handshakes, self.settings.max_connections)

