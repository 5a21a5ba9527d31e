"""Evening out client connections over workers after a restart, both halves.

The supervisor's half is shed_plan (how many connections each worker closes); the
worker's half is Shedder (which ones, and when: each ends after its next response,
which says `connection: close`, or is closed if it stays idle). Keep-alive clients
would otherwise stay on the survivors, and a restarted worker would get almost nothing.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence

from fastmirror.proxy.context import ClientConnection

# A worker over its fair share (the mean) by more than this fraction of it plus SLACK
# connections sheds its excess.
REBALANCE_TOLERANCE = 0.1
REBALANCE_SLACK = 1


def shed_plan(connections: Sequence[int], tolerance: float = REBALANCE_TOLERANCE,
              slack: int = REBALANCE_SLACK) -> list[int]:
    """How many client connections each worker should close so that they even out.

    ``connections[i]`` is worker i's open client connections. A worker holding more
    than its fair share (the mean) by more than ``tolerance * fair + slack`` closes
    the excess, but never more than half of its connections at once; the others
    close none. Equal or nearly equal workers get all zeros.
    """
    n = len(connections)
    if n < 2:
        return [0] * n
    fair = sum(connections) / n
    plan = []
    for c in connections:
        excess = c - fair
        plan.append(min(math.ceil(excess), c // 2) if excess > fair * tolerance + slack else 0)
    return plan


def shed_times(count: int, window: float, now: float) -> list[float]:
    """When to close each of ``count`` connections: evenly over ``window`` from ``now``.

    The first goes one step in, not at once, and the last at the window's end, so a
    burst of reconnecting clients never comes from one moment.
    """
    if count <= 0:
        return []
    step = max(window, 0.0) / count
    return [now + step * (i + 1) for i in range(count)]


# A connection marked to close after its next response that sends no request for this
# long is closed idle (a client that paused is as likely to be between requests as a
# keep-alive timeout would find it; one that keeps asking gets its Connection: close).
SHED_IDLE_GRACE = 1.0


def shed_connection(conn: ClientConnection) -> bool:
    """Mark conn to end after its next response; False when it is idle now.

    A request whose response has not started gets ``keep_alive = False`` now: that
    response is the last (and says so). Otherwise ``close_after_response`` makes the
    next request's response the last, so the client is told rather than cut off
    between requests. An idle connection (no request, no part of one: False) is
    closed if it is still idle SHED_IDLE_GRACE later (``shed_idle``).
    """
    if conn.closed or conn.tunnel:
        return True  # gone, or a 101 tunnel that is not HTTP any more
    conn.close_after_response = True
    if conn.head is not None:
        if not conn.response_started:
            conn.keep_alive = False
        return True
    return bool(conn.buf)  # a request head is arriving: its response will be the last


def shed_idle(conn: ClientConnection, seq: int) -> None:
    """Close conn if it has stayed idle since it was marked (its request count is seq)."""
    if not conn.closed and conn.seq == seq and conn.head is None and not conn.buf:
        conn.shutdown()


class Shedder:
    """Ends chosen client connections one at a time over a window (rebalancing).

    The supervisor sends ``{"op": "shed", "count": K, "window": S}`` after a worker
    restarts; the connections are picked at random, so no client is favoured, and
    the server's sweep marks each at its time (see shed_connection) and closes those
    that then stay idle for SHED_IDLE_GRACE.
    """

    def __init__(self, rng: random.Random | None = None) -> None:
        # (time, connection, None) to mark it; (time, connection, seq) to close it if
        # still idle with that many requests. Ascending times.
        self.due: list[tuple[float, ClientConnection, int | None]] = []
        self._rng = rng or random.Random()

    def plan(self, connections: set[ClientConnection], count: int, window: float,
             now: float) -> int:
        """Schedule up to count of connections (not already chosen); how many were."""
        chosen_before = {conn for _, conn, _ in self.due}
        eligible = [c for c in connections if c not in chosen_before and not c.closed
                    and not c.tunnel and not c.close_after_response]
        chosen = self._rng.sample(eligible, min(max(count, 0), len(eligible)))
        times = shed_times(len(chosen), window, now)
        self._add([(t, conn, None) for t, conn in zip(times, chosen)])
        return len(chosen)

    def sweep(self, now: float) -> None:
        """Mark, or close if still idle, every connection whose time has come."""
        keep, later = [], []
        for item in self.due:
            due, conn, seq = item
            if due > now:
                keep.append(item)
            elif seq is not None:
                shed_idle(conn, seq)
            elif not shed_connection(conn):
                later.append((now + SHED_IDLE_GRACE, conn, conn.seq))
        self.due = keep
        self._add(later)

    def _add(self, items: Sequence[tuple[float, ClientConnection, int | None]]) -> None:
        if items:
            self.due = sorted([*self.due, *items], key=lambda item: item[0])
