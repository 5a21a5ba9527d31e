"""metrics.WorkerTotals: what the supervisor sums never decreases (issue 7).

A worker's counters only grow. The supervisor sees them in snapshots that arrive when
the worker answers; it may answer late, die before or after it was last asked, and
be replaced by a fresh worker whose counters start at 0. Whatever the order, every
counter the supervisor exports must be non-decreasing, the gauges of a worker that is
gone must not be in the sum, and once everything was reported the sum must be exact.
"""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from fastmirror.ops.metrics import (
    SNAPSHOT_COUNTERS,
    SNAPSHOT_GAUGES,
    SNAPSHOT_META,
    SNAPSHOT_MIXED,
    Registry,
    WorkerTotals,
    without_gauges,
)

P = "127.0.0.1:9000"
S = "127.0.0.1:9001"


class FakeWorker:
    """A worker's Registry with some traffic on it; its counters only grow."""

    def __init__(self) -> None:
        self.reg = Registry(process=False)
        self.reg.mirror(S).depth = 0

    def serve(self, n: int) -> None:
        reg = self.reg
        for i in range(n):
            reg.downstream_requests += 1
            reg.upstream("primary", P).observe(0.001 * (i % 7), 200 if i % 5 else 502)
            reg.upstream("shadow", S).error()
            reg.mirror(S).sent += 1
            if i % 3 == 0:
                reg.downstream_error(502)
        reg.connections_active = n
        reg.mirror(S).depth = n % 4

    def snapshot(self) -> dict[str, Any]:
        return self.reg.snapshot()


def exported(totals: WorkerTotals) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """The supervisor's /metrics for these totals, as {(sample, labels): value}."""
    text = Registry.merge(totals.snapshots(), process=False).render().decode()
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, frozenset(s.labels.items()), fam.type)] = s.value
    return out


def counters(sample: dict) -> dict:
    return {(name, labels): v for (name, labels, kind), v in sample.items() if kind in ("counter", "histogram")}


def gauge(sample: dict, name: str) -> float:
    return sum(v for (n, _, _), v in sample.items() if n == name)


def assert_not_lower(before: dict, after: dict) -> None:
    for key, value in before.items():
        assert after.get(key, 0) >= value, (key, value, after.get(key))


# -- the classification ------------------------------------------------------------


def test_every_snapshot_key_is_classified() -> None:
    """A new number in snapshot() must say whether a dead worker's value still counts."""
    w = FakeWorker()
    w.serve(3)
    keys = set(w.snapshot())
    known = set(SNAPSHOT_META) | set(SNAPSHOT_COUNTERS) | set(SNAPSHOT_GAUGES) | set(SNAPSHOT_MIXED)
    assert keys == known


def test_without_gauges_keeps_counters_and_zeroes_gauges() -> None:
    w = FakeWorker()
    w.serve(7)
    snap = w.snapshot()
    out = without_gauges(snap)
    assert out["connections_active"] == 0 and out["mirror_percent"] == 0.0
    assert [m["depth"] for m in out["mirrors"]] == [0]
    assert [m["sent"] for m in out["mirrors"]] == [7]
    for key in SNAPSHOT_COUNTERS:
        assert out[key] == snap[key]
    assert snap["connections_active"] == 7  # the input is not changed


# -- the windows found under load ------------------------------------------------------


def test_late_worker_counts_with_its_previous_snapshot() -> None:
    a, b = FakeWorker(), FakeWorker()
    totals = WorkerTotals()
    a.serve(10)
    b.serve(20)
    totals.update("a", a.snapshot())
    totals.update("b", b.snapshot())
    before = exported(totals)
    assert before[("fastmirror_downstream_requests_total", frozenset(), "counter")] == 30
    a.serve(5)
    totals.update("a", a.snapshot())  # b misses this scrape: nothing new from it
    after = exported(totals)
    assert after[("fastmirror_downstream_requests_total", frozenset(), "counter")] == 35
    assert_not_lower(counters(before), counters(after))


def test_dead_worker_between_exit_and_retire_still_counts_without_gauges() -> None:
    a, b = FakeWorker(), FakeWorker()
    totals = WorkerTotals()
    a.serve(10)
    b.serve(20)
    totals.update("a", a.snapshot())
    totals.update("b", b.snapshot())
    before = exported(totals)
    assert gauge(before, "fastmirror_downstream_connections_active") == 30
    totals.exit("b")  # its channel closed; not reaped yet
    mid = exported(totals)
    assert_not_lower(counters(before), counters(mid))
    assert gauge(mid, "fastmirror_downstream_connections_active") == 10
    assert gauge(mid, "fastmirror_mirror_queue_depth") == a.reg.mirror(S).depth
    totals.retire("b")
    after = exported(totals)
    assert counters(after) == counters(mid)
    assert gauge(after, "fastmirror_downstream_connections_active") == 10
    # Its replacement starts from zero and adds on top.
    c = FakeWorker()
    c.serve(4)
    totals.update("c", c.snapshot())
    later = exported(totals)
    assert later[("fastmirror_downstream_requests_total", frozenset(), "counter")] == 34
    assert_not_lower(counters(after), counters(later))


def test_retire_of_a_worker_that_never_reported_is_a_no_op() -> None:
    totals = WorkerTotals()
    totals.exit("x")
    totals.retire("x")
    assert totals.snapshots() == []
    assert totals.retired is None


def test_retired_total_accumulates_over_many_deaths() -> None:
    totals = WorkerTotals()
    for i in range(5):
        w = FakeWorker()
        w.serve(i + 1)
        totals.update(i, w.snapshot())
        totals.exit(i)
        totals.retire(i)
    assert len(totals.snapshots()) == 1
    merged = Registry.merge(totals.snapshots(), process=False)
    assert merged.downstream_requests == 15
    assert merged.connections_active == 0
    assert merged.upstream("primary", P).count == 15


# -- any order of events ---------------------------------------------------------------

EVENTS = st.lists(
    st.tuples(st.sampled_from(["serve", "report", "exit", "retire", "scrape"]),
              st.integers(0, 2), st.integers(1, 9)),
    max_size=60,
)


@settings(max_examples=150, deadline=None)
@given(EVENTS)
def test_exported_counters_never_decrease(events: list[tuple[str, int, int]]) -> None:
    """Three worker slots; each event on one slot, in any order the supervisor may see.

    A slot's worker reports (a snapshot reply), exits (channel EOF), is retired (reaped),
    then a new worker takes the slot. Serving between reports is what a dead worker
    loses; it was never exported, so no counter drops.
    """
    totals = WorkerTotals()
    slots: dict[int, tuple[int, FakeWorker]] = {}  # slot -> (generation, worker)
    state: dict[int, str] = {}  # slot -> "live" | "exited"
    generation = 0
    last_reported: dict[tuple[int, int], int] = {}
    reported_conns: dict[tuple[int, int], int] = {}
    previous = counters(exported(totals))
    for op, slot, n in events:
        if slot not in slots:
            generation += 1
            slots[slot] = (generation, FakeWorker())
            state[slot] = "live"
        gen, worker = slots[slot]
        key = (slot, gen)
        if op == "serve" and state[slot] == "live":
            worker.serve(n)
        elif op == "report" and state[slot] == "live":
            totals.update(key, worker.snapshot())
            last_reported[key] = worker.reg.downstream_requests
            reported_conns[key] = worker.reg.connections_active
        elif op == "exit" and state[slot] == "live":
            totals.exit(key)
            state[slot] = "exited"
        elif op == "retire" and state[slot] == "exited":
            totals.retire(key)
            del slots[slot], state[slot]
        now = exported(totals)
        current = counters(now)
        assert_not_lower(previous, current)
        previous = current
        # The gauge: what the live workers last reported; nothing from exited ones.
        live_conns = sum(reported_conns.get((s, g), 0) for s, (g, _) in slots.items()
                         if state[s] == "live")
        assert gauge(now, "fastmirror_downstream_connections_active") == live_conns
    reported_total = sum(last_reported.values())
    assert previous.get(("fastmirror_downstream_requests_total", frozenset()), 0) == reported_total
