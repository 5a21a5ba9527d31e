"""The control channel between the supervisor and its workers: both ends, in one module.

A worker process is started with a ``WorkerSpec`` on its stdin (one JSON object) and
the fd of its end of a ``socketpair()``; the supervisor keeps the other end. On the
socket go JSON objects, one per line (orjson never writes a raw newline). Supervisor
-> worker, and the worker's answer:

- ``{"op": "snapshot", "id": N}`` -> ``{"id": N, "snapshot": S}``, S its Registry.snapshot();
  id 0 is the heartbeat, whose reply is kept but awaited by no request;
- ``{"op": "diffs", "id": N}`` -> ``{"id": N, "diffs": D}``, D its DiffStore snapshot;
- ``{"op": "mirror", "state": M}``: set the run-time mirror state, M a
  router.MirrorState.to_dict() (percents, per-route percents, deadline; no reply);
- ``{"op": "shed", "count": K, "window": W}``: close K client connections over W seconds,
  to even out the workers after a restart (no reply; see rebalance.py);
- ``{"op": "ping"}`` -> ``{"op": "pong"}``.

The worker's first line is ``{"op": "ready", "pid": PID}``, once it listens. A reply
carries the id of its request and ``SupervisorEnd`` matches the two. EOF tells each
side that the other is gone.

This module holds the format, the framing, what each op does in a worker (through
``WorkerOps``) and the matching of replies to requests. It does not decide when to
ask or whom to shed (supervisor.py, rebalance.py), and it starts no process.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import orjson

from fastmirror.proxy.router import MirrorState

log = logging.getLogger("fastmirror")

# The supervisor reads one snapshot per line; they are a few KiB per upstream.
CHANNEL_LIMIT = 64 * 1024 * 1024
HEARTBEAT_ID = 0  # the id of the heartbeat's snapshot request: never a waiting request's
ASKS = ("snapshot", "diffs")  # the ops a worker answers with {"id": N, op: payload}

# One decoded line: a JSON object, whose values are whatever JSON holds.
Message = dict[str, Any]
K = TypeVar("K")


# -- framing --------------------------------------------------------------------------


def encode(msg: Mapping[str, object]) -> bytes:
    """One message as one line."""
    return orjson.dumps(msg) + b"\n"


def decode(line: bytes) -> object:
    """The JSON value of one line (a message is an object; anything else is ignored).

    Raises:
        ValueError: the line is not JSON.
    """
    return orjson.loads(line)


# -- messages -------------------------------------------------------------------------


def ask(op: str, request_id: int) -> Message:
    """A request the worker answers (one of ASKS)."""
    return {"op": op, "id": request_id}


def heartbeat() -> Message:
    """The liveness probe: a snapshot request nobody waits for (its reply is kept)."""
    return ask("snapshot", HEARTBEAT_ID)


def set_mirror(state: MirrorState) -> Message:
    return {"op": "mirror", "state": state.to_dict()}


def shed(count: int, window: float) -> Message:
    return {"op": "shed", "count": count, "window": window}


def ready(pid: int) -> Message:
    return {"op": "ready", "pid": pid}


@dataclass(frozen=True)
class WorkerSpec:
    """What a new worker reads on its stdin before anything else (a few hundred bytes)."""

    index: int
    fd: int  # its end of the socketpair, passed with pass_fds
    config_path: str | None
    overrides: dict[str, object] = field(default_factory=dict)
    mirror: MirrorState | None = None  # the supervisor's (PUT /mirror, mirror_for), to outlive a restart

    def encode(self) -> bytes:
        return orjson.dumps({"index": self.index, "fd": self.fd, "config_path": self.config_path,
                             "overrides": self.overrides,
                             "mirror": self.mirror.to_dict() if self.mirror is not None else None})

    @classmethod
    def decode(cls, data: bytes) -> WorkerSpec:
        d = orjson.loads(data)
        mirror = d.get("mirror")
        return cls(d["index"], d["fd"], d["config_path"], d["overrides"],
                   MirrorState.from_dict(mirror) if mirror is not None else None)


# -- the worker's end -----------------------------------------------------------------


class WorkerOps(Protocol):
    """What a worker does for the supervisor (ops/worker.py's WorkerControl)."""

    @property
    def draining(self) -> bool: ...

    def snapshot(self) -> Message: ...

    def diffs(self) -> Message: ...

    def set_mirror(self, state: MirrorState) -> None: ...

    def shed(self, count: int, window: float) -> None: ...


def _answer_snapshot(msg: Message, ops: WorkerOps) -> Message | None:
    return {"id": msg.get("id"), "snapshot": ops.snapshot()}


def _answer_diffs(msg: Message, ops: WorkerOps) -> Message | None:
    return {"id": msg.get("id"), "diffs": ops.diffs()}


def _answer_mirror(msg: Message, ops: WorkerOps) -> Message | None:
    try:
        ops.set_mirror(MirrorState.from_dict(msg["state"]))
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        log.error("control: bad mirror state %r: %s", msg.get("state"), exc)
    return None


def _answer_ping(msg: Message, ops: WorkerOps) -> Message | None:
    return {"op": "pong"}


def _answer_shed(msg: Message, ops: WorkerOps) -> Message | None:
    if ops.draining:
        return None  # every connection is closing anyway
    try:
        count, window = int(msg["count"]), float(msg["window"])
    except (KeyError, TypeError, ValueError) as exc:
        log.error("control: bad shed message %r: %s", msg, exc)
        return None
    ops.shed(count, window)
    return None


_WORKER_OPS: dict[str, Callable[[Message, WorkerOps], Message | None]] = {
    "snapshot": _answer_snapshot,
    "diffs": _answer_diffs,
    "mirror": _answer_mirror,
    "ping": _answer_ping,
    "shed": _answer_shed,
}


def answer(msg: object, ops: WorkerOps) -> Message | None:
    """Do what msg asks of the worker; the reply to send back, if the op has one."""
    op = msg.get("op") if isinstance(msg, dict) else None
    handle = _WORKER_OPS.get(op) if isinstance(op, str) else None
    if handle is None:
        log.warning("control: unknown message %r", msg)
        return None
    assert isinstance(msg, dict)
    return handle(msg, ops)


async def serve_worker_end(sock: socket.socket, ops: WorkerOps) -> None:
    """Say ready, then answer the supervisor until the channel closes or fails."""
    try:
        reader, writer = await asyncio.open_unix_connection(sock=sock)
        writer.write(encode(ready(os.getpid())))
        while line := await reader.readline():
            reply = answer(decode(line), ops)
            if reply is not None:
                writer.write(encode(reply))
    except (OSError, ValueError) as exc:  # ValueError: bad JSON or an overlong line
        log.error("control channel failed: %s", exc)


# -- the supervisor's end -------------------------------------------------------------


@dataclass(frozen=True)
class Reply:
    """A worker's answer to a request (op is one of ASKS)."""

    op: str
    id: object  # as the worker echoed it
    payload: Message  # the snapshot or diffs document


@dataclass(frozen=True)
class Ready:
    """The worker listens."""


def classify(msg: object) -> Reply | Ready | None:
    """What a worker's message is; None for one that needs nothing (pong, unknown)."""
    if not isinstance(msg, dict):
        return None
    op = next((key for key in ASKS if key in msg), None)
    if op is not None:
        return Reply(op, msg.get("id", HEARTBEAT_ID), msg[op])
    if msg.get("op") == "ready":
        return Ready()
    return None


class SupervisorEnd:
    """The supervisor's end of one worker's channel: send, read, match replies by id."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self._pending: dict[int, asyncio.Future[Message]] = {}  # request id -> its reply's payload
        self._seq = HEARTBEAT_ID  # ids of this channel's requests count up from here

    @classmethod
    async def open(cls, sock: socket.socket) -> SupervisorEnd:
        reader, writer = await asyncio.open_unix_connection(sock=sock, limit=CHANNEL_LIMIT)
        return cls(reader, writer)

    @property
    def closing(self) -> bool:
        return self.writer.is_closing()

    def send(self, msg: Mapping[str, object]) -> None:
        if not self.writer.is_closing():
            self.writer.write(encode(msg))

    def request(self, op: str) -> asyncio.Future[Message]:
        """Send ``{"op": op, "id": N}``; the future gets the reply's payload."""
        self._seq += 1
        fut: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
        self._pending[self._seq] = fut
        self.send(ask(op, self._seq))
        return fut

    async def messages(self) -> AsyncIterator[object]:
        """The worker's messages, decoded, until EOF.

        Raises:
            OSError: the channel failed.
            ValueError: a line is not JSON, or longer than CHANNEL_LIMIT.
        """
        while line := await self.reader.readline():
            yield decode(line)

    def settle(self, reply: Reply) -> None:
        """Hand reply to the request waiting for it, if one still does."""
        fut = self._pending.pop(reply.id, None) if isinstance(reply.id, int) else None
        if fut is not None and not fut.done():
            fut.set_result(reply.payload)

    def close(self) -> None:
        """The worker is gone: close our end, and no request waits any longer."""
        self.writer.close()
        for fut in self._pending.values():
            fut.cancel()


async def ask_all(ends: Iterable[tuple[K, SupervisorEnd]], op: str,
                  timeout: float) -> tuple[list[tuple[K, Message]], list[K]]:
    """Ask every end at once: (key, payload) of those that answer within timeout, in
    the order given, and the keys of those that do not (their requests are cancelled)."""
    asked = {end.request(op): key for key, end in ends}
    if asked:
        await asyncio.wait(asked, timeout=timeout)
    answered: list[tuple[K, Message]] = []
    late: list[K] = []
    for fut, key in asked.items():
        if fut.done() and not fut.cancelled():
            answered.append((key, fut.result()))
        else:
            fut.cancel()
            late.append(key)
    return answered, late
