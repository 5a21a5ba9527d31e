"""The control channel (ops/control.py) without processes: messages, ops, matching by id.

The pure parts (framing, what each op does, what a worker's message is) are tested as
functions; both ends are tested together over a socketpair in one event loop.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from typing import Any

import orjson
import pytest

from fastmirror.ops import control
from fastmirror.ops.control import Ready, Reply, SupervisorEnd, WorkerSpec
from fastmirror.proxy.router import MirrorState


class FakeOps:
    """A worker's side, recording what the supervisor made it do."""

    def __init__(self, *, draining: bool = False) -> None:
        self.draining = draining
        self.states: list[MirrorState] = []
        self.sheds: list[tuple[int, float]] = []

    def snapshot(self) -> dict[str, Any]:
        return {"connections_active": 3}

    def diffs(self) -> dict[str, Any]:
        return {"upstreams": {"s": {}}}

    def set_mirror(self, state: MirrorState) -> None:
        self.states.append(state)

    def shed(self, count: int, window: float) -> None:
        self.sheds.append((count, window))


# -- framing and messages ---------------------------------------------------------------


def test_a_message_is_one_line() -> None:
    msg = {"id": 7, "snapshot": {"text": "a\nb", "n": [1, 2.5, None]}}
    line = control.encode(msg)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert control.decode(line) == msg


def test_decode_rejects_what_is_not_json() -> None:
    with pytest.raises(ValueError):
        control.decode(b"{not json\n")


def test_message_shapes() -> None:
    assert control.ask("diffs", 4) == {"op": "diffs", "id": 4}
    assert control.heartbeat() == {"op": "snapshot", "id": control.HEARTBEAT_ID} == {"op": "snapshot", "id": 0}
    assert control.set_mirror(MirrorState(12.5, (("search", 0.0),), 1e9)) == {
        "op": "mirror", "state": {"percent": 12.5, "routes": {"search": 0.0}, "until": 1e9, "ended": False}}
    assert control.shed(3, 2.0) == {"op": "shed", "count": 3, "window": 2.0}
    assert control.ready(42) == {"op": "ready", "pid": 42}


@pytest.mark.parametrize("mirror", [None, MirrorState(25.0), MirrorState(5.0, (("a", 1.0),), 123.5, True)])
def test_worker_spec_round_trip(mirror: MirrorState | None) -> None:
    spec = WorkerSpec(2, 9, "/etc/fastmirror.toml", {"shadow": ["a:1"], "workers": "2"}, mirror)
    data = spec.encode()
    assert orjson.loads(data) == {"index": 2, "fd": 9, "config_path": "/etc/fastmirror.toml",
                                  "overrides": {"shadow": ["a:1"], "workers": "2"},
                                  "mirror": mirror.to_dict() if mirror else None}
    assert WorkerSpec.decode(data) == spec


def test_worker_spec_percent_given_as_an_int() -> None:
    data = orjson.dumps({"index": 0, "fd": 3, "config_path": None, "overrides": {},
                         "mirror": {"percent": 5, "routes": {"r": 1}}})
    spec = WorkerSpec.decode(data)
    assert spec.mirror == MirrorState(5.0, (("r", 1.0),))
    assert isinstance(spec.mirror.percent, float)


# -- what each op does in a worker ---------------------------------------------------------


def test_asks_echo_their_id() -> None:
    ops = FakeOps()
    assert control.answer({"op": "snapshot", "id": 5}, ops) == {"id": 5, "snapshot": {"connections_active": 3}}
    assert control.answer({"op": "diffs", "id": 6}, ops) == {"id": 6, "diffs": {"upstreams": {"s": {}}}}
    assert control.answer({"op": "snapshot"}, ops) == {"id": None, "snapshot": {"connections_active": 3}}


def test_ping_pong() -> None:
    assert control.answer({"op": "ping"}, FakeOps()) == {"op": "pong"}


def test_mirror_state_is_set_and_not_answered() -> None:
    ops = FakeOps()
    assert control.answer({"op": "mirror", "state": {"percent": "12.5"}}, ops) is None
    assert control.answer({"op": "mirror", "state": {"percent": 7, "routes": {"s": 0}, "until": 5}}, ops) is None
    assert ops.states == [MirrorState(12.5), MirrorState(7.0, (("s", 0.0),), 5.0)]


@pytest.mark.parametrize("msg", [{"op": "mirror"}, {"op": "mirror", "state": None},
                                 {"op": "mirror", "state": {"percent": "x"}},
                                 {"op": "mirror", "state": {"percent": 101}},
                                 {"op": "mirror", "state": {"percent": 1, "routes": {"r": -1}}}])
def test_bad_mirror_state_is_logged(msg: dict[str, Any], caplog: pytest.LogCaptureFixture) -> None:
    ops = FakeOps()
    with caplog.at_level(logging.ERROR, "fastmirror"):
        assert control.answer(msg, ops) is None
    assert ops.states == []
    prefix = f"control: bad mirror state {msg.get('state')!r}: "
    assert [r.getMessage().startswith(prefix) for r in caplog.records] == [True]


def test_shed() -> None:
    ops = FakeOps()
    assert control.answer({"op": "shed", "count": "3", "window": 2}, ops) is None
    assert ops.sheds == [(3, 2.0)]


def test_shed_while_draining_does_nothing(caplog: pytest.LogCaptureFixture) -> None:
    ops = FakeOps(draining=True)
    with caplog.at_level(logging.DEBUG, "fastmirror"):
        assert control.answer({"op": "shed", "count": 3, "window": 2.0}, ops) is None
        assert control.answer({"op": "shed"}, ops) is None  # not even checked: it closes anyway
    assert ops.sheds == [] and caplog.records == []


@pytest.mark.parametrize("msg", [{"op": "shed"}, {"op": "shed", "count": 1},
                                 {"op": "shed", "count": "x", "window": 1}])
def test_bad_shed_is_logged(msg: dict[str, Any], caplog: pytest.LogCaptureFixture) -> None:
    ops = FakeOps()
    with caplog.at_level(logging.ERROR, "fastmirror"):
        assert control.answer(msg, ops) is None
    assert ops.sheds == []
    assert [r.getMessage().startswith("control: bad shed message ") for r in caplog.records] == [True]


@pytest.mark.parametrize("msg", [{"op": "reboot"}, {}, [1, 2], "snapshot", None, {"op": ["snapshot"]}])
def test_unknown_message_is_logged(msg: object, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, "fastmirror"):
        assert control.answer(msg, FakeOps()) is None
    assert [r.getMessage() for r in caplog.records] == [f"control: unknown message {msg!r}"]


# -- what a worker's message is, to the supervisor ------------------------------------------


@pytest.mark.parametrize(("msg", "kind"), [
    ({"id": 3, "snapshot": {"a": 1}}, Reply("snapshot", 3, {"a": 1})),
    ({"id": 4, "diffs": {"upstreams": {}}}, Reply("diffs", 4, {"upstreams": {}})),
    ({"snapshot": {}}, Reply("snapshot", control.HEARTBEAT_ID, {})),  # no id: nobody waits
    ({"op": "ready", "pid": 12}, Ready()),
    ({"op": "pong"}, None),
    ({"op": "what"}, None),
    ([1], None),
    ("ready", None),
])
def test_classify(msg: object, kind: Reply | Ready | None) -> None:
    assert control.classify(msg) == kind


# -- both ends over a socketpair ---------------------------------------------------------


async def _pair(ops: FakeOps) -> tuple[SupervisorEnd, asyncio.Task[None]]:
    ours, theirs = socket.socketpair()
    worker = asyncio.get_running_loop().create_task(control.serve_worker_end(theirs, ops))
    return await SupervisorEnd.open(ours), worker


async def _settle_all(end: SupervisorEnd, until: asyncio.Future[Any]) -> list[object]:
    """Read end's messages, settling replies, until `until` is done; the messages read."""
    seen: list[object] = []
    async for msg in end.messages():
        seen.append(msg)
        kind = control.classify(msg)
        if isinstance(kind, Reply):
            end.settle(kind)
        if until.done():
            break
    return seen


def test_ready_first_then_replies_matched_by_id() -> None:
    async def main() -> tuple[list[object], Any, Any]:
        ops = FakeOps()
        end, worker = await _pair(ops)
        end.send(control.heartbeat())  # answered, but no request waits for it
        first = end.request("snapshot")
        second = end.request("diffs")
        seen = await asyncio.wait_for(_settle_all(end, second), 5)
        end.close()
        await asyncio.wait_for(worker, 5)  # EOF ends the worker's end
        return seen, first.result(), second.result()

    seen, snapshot, diffs = asyncio.run(main())
    assert seen[0] == {"op": "ready", "pid": os.getpid()}
    assert seen[1:] == [{"id": 0, "snapshot": {"connections_active": 3}},
                        {"id": 1, "snapshot": {"connections_active": 3}},
                        {"id": 2, "diffs": {"upstreams": {"s": {}}}}]
    assert snapshot == {"connections_active": 3} and diffs == {"upstreams": {"s": {}}}


def test_a_reply_settles_only_its_own_request() -> None:
    async def main() -> None:
        ours, theirs = socket.socketpair()
        end = await SupervisorEnd.open(ours)
        a, b = end.request("snapshot"), end.request("snapshot")
        end.settle(Reply("snapshot", 2, {"n": 2}))
        end.settle(Reply("snapshot", 2, {"n": 3}))  # a repeat finds no request
        end.settle(Reply("snapshot", "1", {"n": 1}))  # not our id
        assert b.result() == {"n": 2} and not a.done()
        end.close()
        assert a.cancelled()  # the worker is gone: nobody waits any longer
        theirs.close()

    asyncio.run(main())


def test_ask_all_leaves_the_late_out() -> None:
    async def main() -> tuple[list[tuple[str, Any]], list[str], bool]:
        ops = FakeOps()
        fast, worker = await _pair(ops)
        silent_sock, silent_peer = socket.socketpair()  # a worker whose loop is stuck
        silent = await SupervisorEnd.open(silent_sock)
        reader = asyncio.get_running_loop().create_task(
            _settle_all(fast, asyncio.get_running_loop().create_future()))
        answered, late = await control.ask_all([("fast", fast), ("silent", silent)], "snapshot", 0.5)
        silent_request_cancelled = all(f.cancelled() for f in silent._pending.values())
        for end in (fast, silent):
            end.close()
        silent_peer.close()
        await asyncio.wait_for(worker, 5)
        await asyncio.wait_for(reader, 5)
        return answered, late, silent_request_cancelled

    answered, late, cancelled = asyncio.run(main())
    assert answered == [("fast", {"connections_active": 3})]
    assert late == ["silent"] and cancelled


def test_ask_all_of_nobody() -> None:
    assert asyncio.run(control.ask_all([], "snapshot", 5.0)) == ([], [])


def test_worker_end_logs_a_line_that_is_not_json(caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        ours, theirs = socket.socketpair()
        worker = asyncio.get_running_loop().create_task(control.serve_worker_end(theirs, FakeOps()))
        reader, writer = await asyncio.open_unix_connection(sock=ours)
        assert orjson.loads(await reader.readline()) == {"op": "ready", "pid": os.getpid()}
        writer.write(b"{oops\n")
        await asyncio.wait_for(worker, 5)  # the worker's end gives up on the channel
        writer.close()

    with caplog.at_level(logging.ERROR, "fastmirror"):
        asyncio.run(main())
    assert [r.getMessage().startswith("control channel failed: ") for r in caplog.records] == [True]
