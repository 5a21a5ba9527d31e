"""Rebalancing keep-alive clients after a worker restarts: the decisions (issue 7).

workers.shed_plan says how many connections each worker closes; server.shed_times
when; server.shed_connection how one connection is ended; server.Shedder runs the
schedule on the worker's sweep.
"""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fastmirror.ops.rebalance import SHED_IDLE_GRACE, Shedder, shed_connection, shed_idle, shed_plan, shed_times

# -- shed_plan ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("connections", "plan"),
    [
        ([16, 0], [8, 0]),            # a restarted worker has nothing: half moves
        ([0, 16], [0, 8]),
        ([12, 4], [4, 0]),            # a round later
        ([9, 7], [0, 0]),             # within tolerance (10% of 8, plus 1)
        ([10, 10, 0], [4, 4, 0]),     # three workers: each survivor gives its excess, rounded up
        ([30, 0, 0, 0], [15, 0, 0, 0]),  # never more than half of one worker's at once
        ([1, 0], [0, 0]),             # too few to bother
        ([2, 0], [0, 0]),
        ([0, 0], [0, 0]),
        ([5], [0]),                   # one worker: nothing to balance
        ([], []),
    ],
)
def test_shed_plan(connections: list[int], plan: list[int]) -> None:
    assert shed_plan(connections) == plan


@given(st.lists(st.integers(0, 10_000), min_size=2, max_size=16))
def test_shed_plan_only_takes_from_workers_over_their_share(connections: list[int]) -> None:
    plan = shed_plan(connections)
    fair = sum(connections) / len(connections)
    for c, shed in zip(connections, plan):
        assert 0 <= shed <= c // 2
        if shed:
            assert c > fair and c - shed >= fair - 1  # never pushed far below the mean


def test_shed_plan_converges_when_reconnections_spread_evenly() -> None:
    """Clients that reconnect land on any worker (SO_REUSEPORT): a few rounds even out."""
    rng = random.Random(7)
    conns = [40, 0]
    for _ in range(5):
        plan = shed_plan(conns)
        if not any(plan):
            break
        moved = sum(plan)
        conns = [c - p for c, p in zip(conns, plan)]
        for _ in range(moved):
            conns[rng.randrange(len(conns))] += 1
    assert sum(conns) == 40
    assert min(conns) >= 12, conns


# -- shed_times --------------------------------------------------------------------------


def test_shed_times_are_spread_over_the_window() -> None:
    assert shed_times(4, 2.0, 100.0) == [100.5, 101.0, 101.5, 102.0]
    assert shed_times(1, 2.0, 0.0) == [2.0]
    assert shed_times(0, 2.0, 0.0) == []
    assert shed_times(3, 0.0, 5.0) == [5.0, 5.0, 5.0]


# -- shed_connection and Shedder ---------------------------------------------------------


class FakeConn:
    """What the shedding reads and sets on a DownstreamProtocol."""

    def __init__(self, *, busy: bool = False, started: bool = False, buf: bytes = b"",
                 tunnel: bool = False) -> None:
        self.closed = False
        self.tunnel = tunnel
        self.head = object() if busy else None
        self.response_started = started
        self.buf = bytearray(buf)
        self.keep_alive = True
        self.close_after_response = False
        self.seq = 1
        self.shutdowns = 0

    def shutdown(self) -> None:
        self.shutdowns += 1
        self.keep_alive = False
        if self.head is None:
            self.closed = True

    def request(self) -> None:
        """A new request starts (as DownstreamProtocol._start_exchange does)."""
        self.seq += 1
        self.head = object()
        self.response_started = False
        self.keep_alive = not self.close_after_response


def test_busy_connection_ends_after_its_response() -> None:
    conn = FakeConn(busy=True)
    assert shed_connection(conn) is True
    assert conn.keep_alive is False and conn.close_after_response and not conn.closed


def test_response_under_way_ends_after_the_next_one() -> None:
    conn = FakeConn(busy=True, started=True)
    assert shed_connection(conn) is True
    assert conn.keep_alive is True  # its response already said keep-alive
    conn.request()
    assert conn.keep_alive is False


def test_head_arriving_ends_after_its_response() -> None:
    conn = FakeConn(buf=b"GET / HT")
    assert shed_connection(conn) is True
    assert not conn.closed and conn.close_after_response


def test_idle_connection_is_marked_then_closed_if_still_idle() -> None:
    conn = FakeConn()
    assert shed_connection(conn) is False
    assert not conn.closed and conn.close_after_response
    shed_idle(conn, conn.seq)
    assert conn.closed and conn.shutdowns == 1


def test_idle_connection_that_asks_again_is_not_closed_idle() -> None:
    conn = FakeConn()
    assert shed_connection(conn) is False
    seq = conn.seq
    conn.request()  # it asked: that response is its last
    shed_idle(conn, seq)
    assert not conn.closed and conn.keep_alive is False
    conn.head = None  # and even idle again after it, it is not closed by this
    shed_idle(conn, seq)
    assert conn.shutdowns == 0


def test_tunnel_and_closed_connections_are_left_alone() -> None:
    tunnel = FakeConn(tunnel=True)
    assert shed_connection(tunnel) is True and not tunnel.closed and tunnel.keep_alive
    assert not tunnel.close_after_response
    gone = FakeConn()
    gone.closed = True
    assert shed_connection(gone) is True and gone.shutdowns == 0


def test_shedder_marks_the_chosen_ones_one_at_a_time() -> None:
    conns = {FakeConn(busy=True) for _ in range(10)}
    shedder = Shedder(random.Random(1))
    assert shedder.plan(conns, 4, 2.0, now=0.0) == 4

    def marked() -> int:
        return sum(not c.keep_alive for c in conns)
    shedder.sweep(0.4)
    assert marked() == 0
    shedder.sweep(0.5)
    assert marked() == 1
    shedder.sweep(1.6)
    assert marked() == 3
    shedder.sweep(2.0)
    assert marked() == 4
    assert shedder.due == []
    assert not any(c.closed for c in conns)


def test_shedder_closes_idle_ones_after_the_grace() -> None:
    idle, asks = FakeConn(), FakeConn()
    shedder = Shedder()
    assert shedder.plan({idle, asks}, 2, 1.0, now=0.0) == 2
    shedder.sweep(1.0)
    assert not idle.closed and not asks.closed and len(shedder.due) == 2
    asks.request()
    shedder.sweep(1.0 + SHED_IDLE_GRACE)
    assert idle.closed and not asks.closed and asks.keep_alive is False
    assert shedder.due == []


def test_shedder_never_picks_more_than_there_are_nor_one_twice() -> None:
    conns = {FakeConn() for _ in range(3)} | {FakeConn(tunnel=True)}
    shedder = Shedder()
    assert shedder.plan(conns, 10, 1.0, now=0.0) == 3
    assert shedder.plan(conns, 10, 1.0, now=0.0) == 0  # all already scheduled
    assert shedder.plan(conns, -1, 1.0, now=0.0) == 0
    shedder.sweep(1.0)
    assert shedder.plan(conns, 10, 1.0, now=1.0) == 0  # marked: not chosen again
