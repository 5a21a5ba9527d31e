"""The mirror decision for one request, sans-I/O.

Given a validated request head and the current policy, say whether a copy goes to
the shadows, and if not, why (the reason is what the access log records). The
random draw comes from the core, or from a hash of a request header when sampling
must be consistent per user (the Envoy `shouldShadow(policy, runtime, stable_random)`
idea, with the key made explicit).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from fastmirror.hotpath import key_hash, percent_to_ppm, random_u64, sample
from fastmirror.paths import route_path
from fastmirror.proxy.codec import RequestHead

if TYPE_CHECKING:
    from fastmirror.config import Config

# Why a request was not mirrored (access log `mirror` field).
SENT = "sent"
OFF = "off"
NOT_SAMPLED = "not-sampled"
METHOD = "method"
UPGRADE = "upgrade"
BODY_TOO_LARGE = "body-too-large"


@dataclass(frozen=True, slots=True)
class MirrorPolicy:
    """What gets mirrored; rebuilt on reload and on `PUT /mirror`, never per request."""

    ppm: int                        # sampled share, parts per million
    methods: frozenset[bytes] | None  # None: every method
    key_header: bytes | None        # sample by a hash of this header's value
    max_body: int                   # larger declared bodies are skipped
    has_shadows: bool

    @classmethod
    def build(cls, percent: float, methods: tuple[str, ...], key_header: str | None,
              max_body: int, has_shadows: bool) -> "MirrorPolicy":
        method_set = None if "ALL" in methods else frozenset(m.encode() for m in methods)
        key = key_header.lower().encode() if key_header else None
        return cls(percent_to_ppm(percent), method_set, key, max_body, has_shadows)


OFF_POLICY = MirrorPolicy(0, None, None, 0, False)


def mirror_decision(policy: MirrorPolicy, head: RequestHead) -> str:
    """Return SENT when the request is to be mirrored, else the reason it is not."""
    if not policy.has_shadows or policy.ppm == 0:
        return OFF
    if head.upgrade:
        return UPGRADE  # a tunnel cannot be replayed
    if policy.methods is not None and head.method not in policy.methods:
        return METHOD
    if policy.ppm < 1_000_000:
        draw = random_u64()
        if policy.key_header is not None:
            value = head.header(policy.key_header)
            if value is not None:
                draw = key_hash(value)
        if not sample(policy.ppm, draw):
            return NOT_SAMPLED
    if head.content_length > policy.max_body:
        return BODY_TOO_LARGE
    return SENT


# -- routes (issue 10) ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MirrorState:
    """The mirror settings that change at run time (PUT /mirror, mirror_for), for every worker.

    percent: the top level's, for requests no route takes and routes without their own.
    routes: (route name, percent) set by PUT /mirror?route=NAME, over the route's own.
    until: time.time() when mirroring turns itself off (mirror_for, ?for=); None: never.
    ended: it did (every percent 0); a reload keeps it off unless mirror_for changes.
    """

    percent: float
    routes: tuple[tuple[str, float], ...] = ()
    until: float | None = None
    ended: bool = False

    def route_percent(self, name: str, configured: float | None) -> float:
        """A route's percent now: PUT's, else the route's own, else the top level's."""
        for route, percent in self.routes:
            if route == name:
                return percent
        return self.percent if configured is None else configured

    def with_percent(self, percent: float, route: str | None = None) -> MirrorState:
        if route is None:
            return MirrorState(percent, self.routes, self.until)
        routes = tuple((r, p) for r, p in self.routes if r != route) + ((route, percent),)
        return MirrorState(self.percent, routes, self.until)

    def with_until(self, until: float | None) -> MirrorState:
        return MirrorState(self.percent, self.routes, until)

    def due(self, now: float) -> bool:
        return self.until is not None and now >= self.until

    def expired(self, config: Config) -> MirrorState:
        """mirror_for is over: every percent 0. The top level's 0 holds for the routes
        without a percent of their own; the others get a 0 of their own (each is turned
        back on by its own PUT)."""
        own = tuple((r.name, 0.0) for r in config.route if r.mirror_percent is not None)
        return MirrorState(0.0, own, None, ended=True)

    def expire_if_due(self, config: Config, now: float) -> MirrorState | None:
        """The state once mirror_for is over, if it is now; None while it runs (or none)."""
        return self.expired(config) if self.due(now) else None

    def remaining(self, now: float) -> float | None:
        return None if self.until is None else max(0.0, self.until - now)

    def to_dict(self) -> dict[str, Any]:
        return {"percent": self.percent, "routes": dict(self.routes), "until": self.until,
                "ended": self.ended}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> MirrorState:
        """Raises ValueError (or KeyError, TypeError) for a malformed state."""
        until = d.get("until")
        state = cls(_percent(d["percent"]),
                    tuple((str(k), _percent(v)) for k, v in (d.get("routes") or {}).items()),
                    None if until is None else float(until), bool(d.get("ended", False)))
        return state


def _percent(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise TypeError(f"not a percent: {value!r}")
    p = float(value)
    if not 0.0 <= p <= 100.0:  # NaN fails too
        raise ValueError(f"mirror percent must be between 0 and 100, not {value!r}")
    return p


# What the worker or the supervisor logs when mirror_for turns mirroring off (once).
EXPIRED = ("mirroring turned itself off: the mirror_for deadline passed (PUT /mirror?percent=P "
           "turns it back on; a route with a percent of its own: PUT /mirror?route=NAME&percent=P)")


def start_state(config: Config, now: float, old: MirrorState | None = None,
                old_config: Config | None = None) -> MirrorState:
    """The run-time state a config load starts from: the file's percents; the mirror_for
    clock starts now, or goes on (a reload that keeps mirror_for keeps its deadline, and
    keeps mirroring off if it has ended)."""
    if old is not None and old_config is not None and old_config.mirror_for == config.mirror_for:
        if old.ended:
            return old.expired(config)
        return MirrorState(config.mirror_percent, (), old.until)
    until = None if config.mirror_for is None else now + config.mirror_for
    return MirrorState(config.mirror_percent, (), until)


class RouteTable:
    """The [[route]] list compiled for the first-match scan of every request.

    Prefixes are compared with paths.route_path's reading of the target. A route that is
    never mirrored (`shadow = []`) compares in any case: a back end that routes without
    case (IIS, ASP.NET Core) must not see `/PAYMENTS` mirrored; matching it too often
    only mirrors less."""

    __slots__ = ("prefixes", "methods", "folded")

    def __init__(self, prefixes: list[bytes], methods: list[frozenset[bytes] | None],
                 fold: list[bool] | None = None) -> None:
        self.prefixes = tuple(route_path(p) for p in prefixes)
        self.methods = tuple(methods)
        fold = fold or [False] * len(prefixes)
        # lower-cased prefix for the routes compared in any case, else None
        self.folded = tuple(p.lower() if f else None for p, f in zip(self.prefixes, fold))

    def match(self, target: bytes, method: bytes) -> int:
        """The index of the first route whose prefix and methods take the request; -1: none."""
        path = route_path(target)
        lower: bytes | None = None
        methods, folded = self.methods, self.folded
        for i, prefix in enumerate(self.prefixes):
            hit = path.startswith(prefix)
            any_case = folded[i]
            if not hit and any_case is not None:
                if lower is None:
                    lower = path.lower()
                hit = lower.startswith(any_case)
            if hit:
                allowed = methods[i]
                if allowed is None or method in allowed:
                    return i
        return -1
