"""Mirror copies and the per-shadow bounded queue that drops instead of waiting.

A copy is built once per mirrored request (the primary's head with Host rewritten
and the two marker headers added, then the body as received) and shared by every
shadow. The queue never blocks its producer: when it is full the copy is dropped
and counted, which is the whole promise that a shadow cannot slow the client.
"""

from __future__ import annotations

import os
from collections import deque
from typing import Any

from fastmirror.hotpath import shadow_head
from fastmirror.ops.metrics import MirrorStats

SHADOW_MARKER = b"x-fastmirror-shadow: 1\r\nx-fastmirror-id: "


class RequestIds:
    """Process-unique request ids: a random per-process prefix and a counter.

    Cheaper than uuid4 per request, and still unique across workers and restarts.
    """

    __slots__ = ("_prefix", "_next")

    def __init__(self) -> None:
        self._prefix = os.urandom(4).hex()
        self._next = 0

    def new(self) -> str:
        self._next += 1
        return "%s%08x" % (self._prefix, self._next & 0xFFFFFFFF)


class MirrorJob:
    """One request as the shadows will receive it."""

    __slots__ = ("data", "head_request", "request_id", "diff", "method", "has_body", "target")

    def __init__(self, data: bytes, head_request: bool, request_id: str,
                 diff: Any = None, method: bytes = b"", has_body: bool = False,
                 target: bytes = b"") -> None:
        self.data = data
        self.target = target  # the request target, for the shadow's access-log line
        self.head_request = head_request
        self.request_id = request_id
        # For rules.retry_safe, asked only when a pooled connection fails under the copy.
        self.method = method
        self.has_body = has_body
        self.diff = diff  # comparator.Pending when the responses are to be compared


def shadow_request_head(forward_head: bytes, host_suffix: bytes, request_id: str,
                        edit: HeadEdit | None = None) -> bytes:
    """The primary's head with Host `name-shadow[:port]` and the marker headers;
    with edit, its headers removed first and its headers set before the markers."""
    extra = SHADOW_MARKER + request_id.encode() + b"\r\n"
    if edit is not None:
        forward_head = edit.strip(forward_head)
        extra = edit.added + extra
    return shadow_head(forward_head, host_suffix, extra)


class HeadEdit:
    """What one shadow's copies lose and gain (shadow_set_header, shadow_remove_header).

    Removal takes every line of a name, in any case and with "_" read as "-" (as CGI
    back ends read it): for `x-env`, `X-Env`, `X-ENV` and `x_env` all go. Set headers go
    in after removal, before the markers; config.py refuses names that frame the request.
    A chunked body's trailer fields lose the removed names too (Go and Node hand
    trailers to the application).
    """

    __slots__ = ("removed", "added")

    def __init__(self, removed: tuple[str, ...], added: tuple[tuple[str, str], ...]) -> None:
        self.removed = frozenset(n.lower().replace("_", "-").encode() for n in removed)
        self.added = b"".join(f"{n}: {v}\r\n".encode() for n, v in added)

    def strip(self, head: bytes) -> bytes:
        """head (a validated request head, CRLF lines) without the removed headers."""
        if not self.removed:
            return head
        # Most heads carry none of the removed names: one scan for them as substrings
        # (a false hit only costs the line loop) skips it, which was 7x a plain copy's head.
        folded = head.lower().replace(b"_", b"-")
        for name in self.removed:   # a loop, not any(): no generator frame per copy
            if name in folded:
                break
        else:
            return head
        lines = head.split(b"\r\n")
        kept = [lines[0]]
        removed = self.removed
        for line in lines[1:]:
            name = line.partition(b":")[0]
            if line and name.lower().replace(b"_", b"-") in removed:
                continue
            kept.append(line)
        return b"\r\n".join(kept)

    def strip_trailers(self, body: bytes) -> bytes:
        """A complete, validated chunked body without the removed trailer fields."""
        if not self.removed:
            return body
        pos = 0
        while True:  # the chunks: size line, data, CRLF; up to the last chunk (size 0)
            eol = body.index(b"\r\n", pos)
            size = int(body[pos:eol].split(b";", 1)[0], 16)
            pos = eol + 2
            if size == 0:
                break
            pos += size + 2
        if body[pos:] == b"\r\n":
            return body  # no trailer fields
        lines = body[pos:].split(b"\r\n")[:-2]  # the fields, without the final blank line
        removed = self.removed
        kept = [ln for ln in lines if ln.partition(b":")[0].lower().replace(b"_", b"-") not in removed]
        return body[:pos] + b"".join(ln + b"\r\n" for ln in kept) + b"\r\n"


class RateLimit:
    """A token bucket: at most `rate` copies a second, bursts up to one second's worth."""

    __slots__ = ("rate", "tokens", "stamp")

    def __init__(self, rate: float, now: float) -> None:
        self.rate = rate
        self.tokens = max(rate, 1.0)
        self.stamp = now

    def take(self, now: float) -> bool:
        tokens = min(max(self.rate, 1.0), self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if tokens < 1.0:
            self.tokens = tokens
            return False
        self.tokens = tokens - 1.0
        return True


class Capture:
    """A bounded copy of one response as it streams; `data` is None once over the cap."""

    __slots__ = ("data", "limit")

    def __init__(self, limit: int) -> None:
        self.data: bytearray | None = bytearray()
        self.limit = limit

    def add(self, chunk: bytes) -> None:
        data = self.data
        if data is not None:
            if len(data) + len(chunk) > self.limit:
                self.data = None
            else:
                data += chunk

    def result(self) -> tuple[bytes | None, str]:
        return (None, "too-large") if self.data is None else (bytes(self.data), "")


class MirrorQueue:
    """Jobs waiting for a free slot of one shadow; full means drop."""

    __slots__ = ("_jobs", "maxsize", "stats")

    def __init__(self, maxsize: int, stats: MirrorStats) -> None:
        self._jobs: deque[MirrorJob] = deque()
        self.maxsize = maxsize
        self.stats = stats

    def __len__(self) -> int:
        return len(self._jobs)

    def offer(self, job: MirrorJob) -> bool:
        """Queue job, or drop it (counted) when the queue is full."""
        if len(self._jobs) >= self.maxsize:
            self.stats.dropped += 1
            return False
        self._jobs.append(job)
        self.stats.depth = len(self._jobs)
        return True

    def take(self) -> MirrorJob | None:
        if not self._jobs:
            return None
        job = self._jobs.popleft()
        self.stats.depth = len(self._jobs)
        return job

    def clear(self) -> list[MirrorJob]:
        """Take every waiting job out (shutdown)."""
        jobs = list(self._jobs)
        self._jobs.clear()
        self.stats.depth = 0
        return jobs
