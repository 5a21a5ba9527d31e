"""Response diffing, the I/O side: pair each mirrored request's responses, compare off-loop.

For a mirrored request with diffing on, the primary's response (a bounded copy taken
as it streams to the client), every shadow's and the secondary's are gathered in a
`Pending`. When the last one is in, the set goes to one worker thread that parses and
compares them with the pure `diff` module and records the result. The event loop only
appends bytes and counts; it never parses or compares.

Bounded everywhere: responses over `max_body` are not copied (`skipped`), at most
`max_pending` requests wait for their responses or their comparison (beyond that,
new ones are `skipped` as "overload"), and a request whose parts never all arrive is
finished by the sweep with what it has.
"""

from __future__ import annotations

import logging
import queue
import sys
import threading
import time
from typing import Any

from .diff import DiffRules, DiffStore, EndpointNamer, compare, parse_captured
from .mirror import Capture

log = logging.getLogger("fastmirror.diff")

SECONDARY = "secondary"  # the part name of the secondary's response
# The diff thread holds the GIL while it compares; a short switch interval bounds how
# long the event loop can wait for it (CPython's default is 5 ms).
SWITCH_INTERVAL = 0.0005


class Pending:
    """The responses to one mirrored request, as they arrive."""

    __slots__ = ("comparator", "request_id", "method", "target", "head_request", "created",
                 "primary", "primary_reason", "parts", "reasons", "outstanding", "finished")

    def __init__(self, comparator: "Comparator", request_id: str, method: str, target: str,
                 head_request: bool, part_names: list[str]) -> None:
        self.comparator = comparator
        self.request_id = request_id
        self.method = method
        self.target = target
        self.head_request = head_request
        self.created = time.monotonic()
        self.primary: bytes | None = None
        self.primary_reason = "primary-missing"
        self.parts: dict[str, bytes | None] = {}
        self.reasons: dict[str, str] = {}
        self.outstanding = 1 + len(part_names)  # the primary and each part
        self.finished = False

    def primary_done(self, raw: bytes | None, reason: str = "") -> None:
        """The primary's whole response (None: not captured, for `reason`)."""
        self.primary = raw
        if raw is None:
            self.primary_reason = reason or "primary-failed"
        self._one_done()

    def part_done(self, name: str, raw: bytes | None, reason: str = "") -> None:
        """A shadow's (or the secondary's) response; None when it failed or was dropped."""
        if self.finished or name in self.parts:
            return
        self.parts[name] = raw
        if raw is None:
            self.reasons[name] = reason or "shadow-failed"
        self._one_done()

    def abandon(self, reason: str) -> None:
        """No copy went out after all (or the client left): finish with nothing to compare."""
        if self.finished:
            return
        if self.primary is None:
            self.primary_reason = reason
        for name in self.comparator.part_names:
            if name not in self.parts:
                self.parts[name] = None
                self.reasons[name] = reason
        self.comparator.ready(self)

    def _one_done(self) -> None:
        self.outstanding -= 1
        if self.outstanding == 0:
            self.comparator.ready(self)


class Comparator:
    """Pairs responses on the event loop; compares them on one worker thread."""

    def __init__(self, diff_config: Any, shadow_names: list[str], has_secondary: bool,
                 store: DiffStore, diff_log: Any = None, max_age: float = 60.0) -> None:
        self.rules = DiffRules(
            headers=tuple(diff_config.headers), ignore=tuple(diff_config.ignore),
            array_as_set=tuple(diff_config.array_as_set),
            max_differences=diff_config.max_differences)
        self.namer = EndpointNamer(tuple(diff_config.templates), diff_config.max_endpoints)
        self.max_body = diff_config.max_body
        self.max_pending = diff_config.max_pending
        self.part_names = list(shadow_names) + ([SECONDARY] if has_secondary else [])
        self.shadow_names = list(shadow_names)
        self.store = store
        self.diff_log = diff_log
        self.max_age = max_age
        self.waiting: dict[str, Pending] = {}
        # Handed to the thread and compared: each counter is written by one thread only.
        self.handed = 0
        self.compared = 0
        self.overload = 0
        self._queue: queue.SimpleQueue[Pending | _Skip | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="fastmirror-diff", daemon=True)
        self._thread.start()
        sys.setswitchinterval(SWITCH_INTERVAL)

    # -- event loop side ------------------------------------------------------------

    def expect(self, request_id: str, method: bytes, target: bytes,
               head_request: bool) -> Pending | None:
        """Start gathering the responses to a mirrored request, or None under overload."""
        if len(self.waiting) + self.handed - self.compared >= self.max_pending:
            self.overload += 1
            self._queue.put(_Skip(self.shadow_names, method, target, "overload"))
            return None
        pending = Pending(self, request_id, method.decode("latin-1"),
                          target.decode("latin-1"), head_request, self.part_names)
        self.waiting[request_id] = pending
        return pending

    def capture(self) -> Capture:
        return Capture(self.max_body)

    def ready(self, pending: Pending) -> None:
        if pending.finished:
            return
        pending.finished = True
        self.waiting.pop(pending.request_id, None)
        self.handed += 1
        self._queue.put(pending)

    def sweep(self, now: float) -> None:
        """Finish requests whose parts did not all arrive in time, with what they have."""
        limit = now - self.max_age
        for pending in [p for p in self.waiting.values() if p.created < limit]:
            for name in self.part_names:
                if name not in pending.parts:
                    pending.parts[name] = None
                    pending.reasons[name] = "timeout"
            self.ready(pending)

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=5)

    # -- worker thread ------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            try:
                if isinstance(item, _Skip):
                    self._skip(item)
                else:
                    self._compare(item)
            except Exception:  # a bug here must not kill diffing for good
                log.exception("diff of request %s failed", getattr(item, "request_id", "?"))
            finally:
                if not isinstance(item, _Skip):
                    self.compared += 1

    def _skip(self, item: "_Skip") -> None:
        endpoint = self.namer.name(item.method.decode("latin-1"), item.target.decode("latin-1"))
        for upstream in item.upstreams:
            self.store.record_skipped(upstream, endpoint, item.reason)

    def _compare(self, p: Pending) -> None:
        endpoint = self.namer.name(p.method, p.target)
        primary = parse_captured(p.primary, p.head_request) if p.primary is not None else None
        if primary is None:
            reason = p.primary_reason if p.primary is None else "unparseable"
            for upstream in self.shadow_names:
                self.store.record_skipped(upstream, endpoint, reason)
            return
        secondary = None
        raw_secondary = p.parts.get(SECONDARY)
        if raw_secondary is not None:
            secondary = parse_captured(raw_secondary, p.head_request)
        for upstream in self.shadow_names:
            raw = p.parts.get(upstream)
            if raw is None:
                self.store.record_skipped(upstream, endpoint, p.reasons.get(upstream, "missing"))
                continue
            shadow = parse_captured(raw, p.head_request)
            if shadow is None:
                self.store.record_skipped(upstream, endpoint, "unparseable")
                continue
            comparison = compare(primary, shadow, secondary, self.rules)
            self.store.record(upstream, endpoint, comparison, p.request_id, p.target)
            if comparison.result == "mismatch" and self.diff_log is not None:
                self.diff_log.write(_log_record(p, upstream, endpoint, comparison, primary, shadow))


class _Skip:
    """A mirrored request that is not compared (overload), recorded by the thread."""

    __slots__ = ("upstreams", "method", "target", "reason")

    def __init__(self, upstreams: list[str], method: bytes, target: bytes, reason: str) -> None:
        self.upstreams = upstreams
        self.method = method
        self.target = target
        self.reason = reason


LOG_BODY_LIMIT = 64 * 1024  # per side, in the diff log


def _side(captured: Any) -> dict[str, Any]:
    body = captured.body[:LOG_BODY_LIMIT]
    return {
        "status": captured.status,
        "headers": [[k, v] for k, v in captured.headers],
        "body": body.decode("utf-8", "replace"),
        "body_truncated": len(captured.body) > LOG_BODY_LIMIT,
    }


def _log_record(p: Pending, upstream: str, endpoint: str, comparison: Any, primary: Any,
                shadow: Any) -> dict[str, Any]:
    return {
        "time": time.time(),
        "id": p.request_id,
        "upstream": upstream,
        "endpoint": endpoint,
        "method": p.method,
        "target": p.target,
        "differences": [{"path": d.path, "primary": d.primary, "shadow": d.shadow}
                        for d in comparison.differences],
        "noise": list(comparison.noise),
        "primary": _side(primary),
        "shadow": _side(shadow),
    }
