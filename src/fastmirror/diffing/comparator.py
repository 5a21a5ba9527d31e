"""Response diffing, the I/O side: pair each mirrored request's responses, compare off-loop.

For a mirrored request with diffing on, the primary's response (a bounded copy taken
as it streams to the client), every shadow's and the secondary's are gathered in a
`Pending`. When the last one is in, the set is compared with the pure `diff` module and
the result recorded: small responses (the common case, a few µs each) on the event
loop in batches of at most BATCH_SECONDS after the I/O of an iteration, large ones on
one worker thread, so a 1 MiB JSON body never stalls the loop. (Handing every small
comparison to a thread costs more in GIL hand-offs than the comparison itself.)

Bounded everywhere: responses over `max_body` are not copied (`skipped`), at most
`max_pending` requests wait for their responses or their comparison (beyond that,
new ones are `skipped` as "overload"), and a request whose parts never all arrive is
finished by the sweep with what it has.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import sys
import threading
import time
from collections import deque
from typing import Any

from fastmirror.diffing.diff import MATCH, Comparison, DiffRules, compare, parse_captured
from fastmirror.diffing.diffstore import DiffStore
from fastmirror.diffing.endpoints import EndpointNamer
from fastmirror.proxy.mirror import Capture

log = logging.getLogger("fastmirror.diff")

SECONDARY = "secondary"  # the part name of the secondary's response
# The diff thread holds the GIL while it compares; a short switch interval bounds how
# long the event loop can wait for it (CPython's default is 5 ms).
SWITCH_INTERVAL = 0.0005
IDENTICAL = Comparison(MATCH, [], [], False)
INLINE_LIMIT = 64 * 1024  # both responses at most this big: compared on the event loop
BATCH_SECONDS = 0.002     # the most the loop spends comparing before it serves I/O again


class Pending:
    """The responses to one mirrored request, as they arrive."""

    __slots__ = ("comparator", "request_id", "method", "target", "endpoint", "head_request",
                 "created", "primary", "primary_reason", "parts", "reasons", "outstanding",
                 "finished", "part_names", "shadow_names")

    def __init__(self, comparator: "Comparator", request_id: str, method: str, target: str,
                 endpoint: str, head_request: bool, part_names: list[str]) -> None:
        self.comparator = comparator
        self.request_id = request_id
        self.method = method
        self.target = target
        self.endpoint = endpoint
        self.head_request = head_request
        self.created = time.monotonic()
        self.primary: bytes | None = None
        self.primary_reason = "primary-missing"
        self.parts: dict[str, bytes | None] = {}
        self.reasons: dict[str, str] = {}
        # The parts this request's copies went to: its route's shadows (issue 10) and the
        # secondary; no other shadow is waited for or charged.
        self.part_names = part_names
        self.shadow_names = [n for n in part_names if n != SECONDARY]
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
        for name in self.part_names:
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
        self._inline: deque[Pending] = deque()
        self._inline_scheduled = False
        # To the worker thread: large pairs to compare, and diff-log lines (never written
        # from the event loop: a slow disk must not stall it).
        self._queue: queue.SimpleQueue[Pending | dict[str, Any] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="fastmirror-diff", daemon=True)
        self._thread.start()
        sys.setswitchinterval(SWITCH_INTERVAL)

    # -- event loop side ------------------------------------------------------------

    def expect(self, request_id: str, method: bytes, target: bytes, head_request: bool,
               shadows: list[str] | None = None) -> Pending | None:
        """Start gathering the responses to a mirrored request, or None under overload.

        shadows: the part names of the shadows its copy goes to (its route's), if not
        every shadow."""
        method_text, target_text = method.decode("latin-1"), target.decode("latin-1")
        endpoint = self.namer.name(method_text, target_text)
        names = self.shadow_names if shadows is None else shadows
        backlog = len(self.waiting) + len(self._inline) + self.handed - self.compared
        if backlog >= self.max_pending:
            self.overload += 1
            for upstream in names:
                self.store.record_skipped(upstream, endpoint, "overload")
            return None
        parts = self.part_names if shadows is None else shadows + self.part_names[len(self.shadow_names):]
        pending = Pending(self, request_id, method_text, target_text, endpoint, head_request, parts)
        self.waiting[request_id] = pending
        return pending

    def capture(self) -> Capture:
        return Capture(self.max_body)

    def ready(self, pending: Pending) -> None:
        if pending.finished:
            return
        pending.finished = True
        self.waiting.pop(pending.request_id, None)
        if all(raw is None or len(raw) <= INLINE_LIMIT
               for raw in (pending.primary, *pending.parts.values())):
            self._inline.append(pending)
            if not self._inline_scheduled:
                self._inline_scheduled = True
                asyncio.get_running_loop().call_soon(self._compare_inline)
        else:
            self.handed += 1
            self._queue.put(pending)

    def _compare_inline(self) -> None:
        """Compare small pairs for at most BATCH_SECONDS, then let the loop do I/O."""
        inline = self._inline
        deadline = time.perf_counter() + BATCH_SECONDS
        while inline:
            self._compare_guarded(inline.popleft())
            if time.perf_counter() > deadline:
                break
        if inline:
            asyncio.get_running_loop().call_soon(self._compare_inline)
        else:
            self._inline_scheduled = False

    def sweep(self, now: float) -> None:
        """Finish requests whose parts did not all arrive in time, with what they have."""
        limit = now - self.max_age
        for pending in [p for p in self.waiting.values() if p.created < limit]:
            for name in pending.part_names:
                if name not in pending.parts:
                    pending.parts[name] = None
                    pending.reasons[name] = "timeout"
            self.ready(pending)

    def close(self, wait: bool = True) -> None:
        """Stop the worker thread once its queue is done (waiting up to 5 s if `wait`)."""
        self._queue.put(None)
        if wait:
            self._thread.join(timeout=5)

    # -- worker thread ------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            if isinstance(item, dict):
                self.diff_log.write(item)
                continue
            self._compare_guarded(item)
            self.compared += 1

    def _compare_guarded(self, pending: Pending) -> None:
        try:
            self._compare(pending)
        except Exception:  # a bug here must not kill diffing for good
            log.exception("diff of request %s failed", pending.request_id)

    def _compare(self, p: Pending) -> None:
        endpoint = p.endpoint
        if p.primary is None:
            for upstream in p.shadow_names:
                self.store.record_skipped(upstream, endpoint, p.primary_reason)
            return
        primary = secondary = None  # parsed only when some shadow's bytes differ
        for upstream in p.shadow_names:
            raw = p.parts.get(upstream)
            if raw is None:
                self.store.record_skipped(upstream, endpoint, p.reasons.get(upstream, "missing"))
                continue
            if raw == p.primary:  # byte-identical answers: nothing can differ
                self.store.record(upstream, endpoint, IDENTICAL, p.request_id, p.target)
                continue
            if primary is None:
                primary = parse_captured(p.primary, p.head_request)
                if primary is None:
                    self.store.record_skipped(upstream, endpoint, "unparseable")
                    continue
                raw_secondary = p.parts.get(SECONDARY)
                if raw_secondary is not None:
                    secondary = parse_captured(raw_secondary, p.head_request)
            shadow = parse_captured(raw, p.head_request)
            if shadow is None:
                self.store.record_skipped(upstream, endpoint, "unparseable")
                continue
            comparison = compare(primary, shadow, secondary, self.rules)
            self.store.record(upstream, endpoint, comparison, p.request_id, p.target)
            if comparison.result == "mismatch" and self.diff_log is not None:
                self._queue.put(_log_record(p, upstream, endpoint, comparison, primary, shadow))


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
