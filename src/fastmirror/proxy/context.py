"""What every client connection of one worker shares: settings and live state.

`Settings` is built once per config load (start-up, each SIGHUP), never per request: a
request keeps the Settings it started with, so a reload never changes one in flight.
`Settings` is also the one place that turns a config into upstream targets. A target
that a reload keeps (same role and address: its pool, queue and stats live on) gets
exactly the settings a new one would have.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from fastmirror.config import Address, Config
from fastmirror.ops.metrics import Registry
from fastmirror.proxy.mirror import RequestIds
from fastmirror.proxy.pool import UpstreamPool
from fastmirror.proxy.router import MirrorPolicy
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


class Settings:
    """What requests read from the config, built once per load, never per request."""

    def __init__(self, config: Config, registry: Registry, mirror_percent: float,
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

        self.shadows = [target("shadow", addr) for addr in config.shadow]
        self.secondary: ShadowTarget | None = None
        if comparator is not None and config.secondary is not None:
            self.secondary = target("secondary", config.secondary)
        # Targets the new config no longer has: the worker closes them (their queued
        # copies are counted dropped) and sweeps them until their exchanges end.
        self.retired = list(kept.values())
        self.access_log: AccessLog | None = None
        self.set_mirror_percent(mirror_percent)

    def targets(self) -> list[ShadowTarget]:
        """Every live mirror target: the shadows, then the secondary if any."""
        return self.shadows + ([self.secondary] if self.secondary is not None else [])

    def set_mirror_percent(self, percent: float) -> None:
        c = self.config
        self.mirror_percent = percent
        self.policy = MirrorPolicy.build(percent, c.mirror_methods, c.mirror_key,
                                         c.max_mirror_body, bool(self.shadows))


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
        self.settings = Settings(config, registry, config.mirror_percent, comparator=comparator)
        self.connections: set[ClientConnection] = set()
        self.handshakes = 0  # TLS connections not handed to a DownstreamProtocol yet (tls.py)
        self.acceptor: Acceptor | None = None  # set once listening; pauses at max_connections
        self.ids = RequestIds()
        self.draining = False
        registry.mirror_percent = config.mirror_percent

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

