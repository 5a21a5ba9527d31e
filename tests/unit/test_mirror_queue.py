"""Mirror copies and the bounded queue."""

from __future__ import annotations

from fastmirror.ops.metrics import MirrorStats
from fastmirror.proxy.mirror import MirrorJob, MirrorQueue, RequestIds, shadow_request_head


def test_queue_drops_when_full_and_counts():
    stats = MirrorStats("s:1")
    q = MirrorQueue(2, stats)
    jobs = [MirrorJob(b"%d" % i, False, str(i)) for i in range(4)]
    assert [q.offer(j) for j in jobs] == [True, True, False, False]
    assert stats.dropped == 2 and stats.depth == 2
    assert q.take() is jobs[0] and stats.depth == 1
    assert q.take() is jobs[1] and q.take() is None and stats.depth == 0


def test_shadow_head_rewrites_host_and_adds_markers_only():
    head = b"GET /x HTTP/1.1\r\nHost: api.example:8080\r\nAccept: */*\r\n\r\n"
    out = shadow_request_head(head, b"-shadow", "abc")
    assert out == (b"GET /x HTTP/1.1\r\nHost: api.example-shadow:8080\r\nAccept: */*\r\n"
                   b"x-fastmirror-shadow: 1\r\nx-fastmirror-id: abc\r\n\r\n")
    assert shadow_request_head(head, b"", "abc").startswith(head[:-2])


def test_request_ids_unique():
    ids = RequestIds()
    seen = {ids.new() for _ in range(10000)}
    assert len(seen) == 10000
    assert RequestIds().new() != RequestIds().new()
