"""The copy of one sampled request on its way to the shadows (the mirror tee).

Built when the router says "sent": the shadow's head (Host `name-shadow`, the request-id
marker), then the body as it streams to the primary, up to --max-mirror-body; handed
whole to every shadow's queue once the request is complete, never before (a shadow must
not see half a request). With diffing on, it also holds the comparator's record of the
request and the bounded copy of the primary's answer. It never waits: queues drop.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fastmirror.proxy.codec import RequestHead
from fastmirror.proxy.mirror import HeadEdit, MirrorJob, shadow_request_head
from fastmirror.proxy.router import BODY_TOO_LARGE, SENT
from fastmirror.proxy.rules import mirror_outcome

if TYPE_CHECKING:
    from fastmirror.diffing.comparator import Pending
    from fastmirror.proxy.context import Settings
    from fastmirror.proxy.mirror import Capture
    from fastmirror.proxy.shadow import ShadowTarget


class MirrorTee:
    """The mirror copy of one request; `reason` is what the access log records."""

    __slots__ = ("settings", "head", "request_id", "body", "skipped", "outcomes",
                 "diff", "capture", "submitted", "shadows")

    def __init__(self, settings: Settings, head: RequestHead, request_id: str,
                 shadows: list[ShadowTarget]) -> None:
        self.settings = settings
        self.head = head
        self.request_id = request_id
        self.shadows = shadows   # the route's (issue 10)
        self.skipped = False   # the body outgrew --max-mirror-body
        self.outcomes: list[str] = []   # what each shadow did with the copy
        self.body: bytearray | None = bytearray() if head.has_body else None
        self.submitted = False
        # With diffing: the comparator's record, and the bounded copy of the primary's answer.
        self.diff: Pending | None = None
        self.capture: Capture | None = None
        comparator = settings.comparator
        if comparator is not None:
            routed = None if shadows is settings.shadows else [t.part_name for t in shadows]
            self.diff = comparator.expect(request_id, head.method, head.target,
                                          head.method == b"HEAD", routed)
            if self.diff is not None:
                self.capture = comparator.capture()

    def add_body(self, chunk: bytes) -> None:
        """Body bytes as they go to the primary; past the cap, this copy is skipped."""
        body = self.body
        if body is None:
            return
        if len(body) + len(chunk) > self.settings.policy.max_body:
            self.body = None
            self.skipped = True
            count_skipped(self.shadows)
            self.end_diff(BODY_TOO_LARGE)
        else:
            body += chunk

    @property
    def reason(self) -> str:
        """The access log's `mirror` field: merged only when a record is written."""
        if self.skipped:
            return BODY_TOO_LARGE
        return mirror_outcome(self.outcomes, SENT) if self.submitted else SENT

    def submit(self) -> None:
        """The whole request went to the primary: hand the copy to every shadow."""
        if self.skipped:
            return
        body = self.body
        self.body = None
        self.submitted = True
        outcomes = self.outcomes
        plain: MirrorJob | None = None
        edited: dict[HeadEdit, MirrorJob] | None = None
        for shadow in self.shadows:   # a loop, not a comprehension: one frame less per copy
            edit = shadow.edit
            if edit is None:
                if plain is None:
                    plain = self._job(None, body)
                outcomes.append(shadow.submit(plain))
            else:   # its own head (issue 10): built once per distinct edit
                if edited is None:
                    edited = {}
                job = edited.get(edit)
                if job is None:
                    job = edited[edit] = self._job(edit, body)
                outcomes.append(shadow.submit(job))
        secondary = self.settings.secondary
        if self.diff is not None and secondary is not None:
            edit = secondary.edit
            job = (plain if edit is None else (edited or {}).get(edit)) or self._job(edit, body)
            secondary.submit(job)

    def _job(self, edit: HeadEdit | None, body: bytearray | None) -> MirrorJob:
        """The copy as a shadow with edit (None: none) receives it."""
        head = self.head
        data = shadow_request_head(head.forward, self.settings.host_suffix, self.request_id, edit)
        if body:
            data += body if edit is None or not head.chunked else edit.strip_trailers(bytes(body))
        return MirrorJob(data, head.method == b"HEAD", self.request_id, self.diff,
                         head.method, head.has_body, head.target)

    def primary_answered(self) -> None:
        """The primary's response is complete: the comparator gets its copy."""
        if self.diff is None:
            return
        if self.submitted and self.capture is not None:
            raw, why = self.capture.result()
            self.diff.primary_done(raw, why)
            self.diff = None
        else:
            self.end_diff("request-incomplete")

    def end_diff(self, reason: str) -> None:
        """This request's responses will not all arrive: tell the comparator why."""
        pending, self.diff = self.diff, None
        if pending is None:
            return
        if self.submitted:
            pending.primary_done(None, reason)
        else:
            pending.abandon(reason)


def count_skipped(shadows: list[ShadowTarget]) -> None:
    """A sampled request whose body is over --max-mirror-body: skipped, per shadow."""
    for shadow in shadows:
        shadow.mirror_stats.skipped += 1
