"""Real HTTP/1.1 upstream servers for the tests: what the primary and the shadows are.

Each `RecordingServer` listens on 127.0.0.1 with an OS-assigned port and runs in its
own thread with its own asyncio event loop, so a test (or a subprocess proxy) can
talk to it with blocking sockets. It records every byte it receives, per connection,
and every request it parsed, with the exact bytes that made it up; tests assert on
those records ("the primary saw exactly these bytes", "the shadow saw nothing").

It parses with h11 (server role) and answers by path, so one server covers every case:

    /echo              the request body back (Content-Length)
    /bytes?n=N         N bytes of `pattern(N)` with Content-Length
    /chunked?n=N&size=S  N bytes of `pattern(N)`, chunked in chunks of S
    /status/CODE       that status, with a short body (none for 1xx/204/304)
    /slow?ms=M         the default answer, after M milliseconds
    /close             the default answer with `Connection: close`, then a close
    /half?n=N          the head announcing N bytes (default 1000), half of them, then a close
    /hang              never answers (the connection stays open)
    /nobody            204 No Content
    anything else      200, a small fixed body and `x-upstream: NAME`
    Upgrade: websocket 101 Switching Protocols, then every byte received is echoed back

Responses are deterministic (no Date header), so a response fetched directly and the
same one fetched through the proxy can be compared byte for byte.

Misbehaviour, for shadows, by `mode=`: "normal"; "slow" (every response `delay`
seconds late); "blackhole" (accepts, never reads, never answers); "reset" (accepts,
then closes with a RST, right away or, with reset_on="data", at the first byte).

This module must not import fastmirror: it is the independent side of every e2e test.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import hashlib
import http
import socket
import struct
import threading
import time
from typing import Any
from urllib.parse import parse_qs, urlsplit

import h11

__all__ = ["RecordingServer", "Recorded", "dead_port", "pattern"]

# 251 is prime, so the pattern never lines up with power-of-two chunk or buffer sizes:
# a dropped, duplicated or shifted block changes the bytes (and the sha256).
_PERIOD = 251
_UNIT = bytes((i * 7 + 3) % _PERIOD for i in range(_PERIOD))
_BLOCK = _UNIT * 1045  # 262,295 bytes, a whole number of periods
_WRITE_CHUNK = len(_BLOCK) - len(_BLOCK) % _PERIOD

DEFAULT_BODY_TEMPLATE = b"hello from %s\n"
_WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

# Bound sockets that never listen, kept open so that nobody else gets their port.
_DEAD_SOCKETS: list[socket.socket] = []


def _reason(status: int) -> bytes:
    try:
        return http.HTTPStatus(status).phrase.encode()
    except ValueError:
        return b"Unknown"


def pattern(n: int, offset: int = 0) -> bytes:
    """The deterministic body of `/bytes?n=N` and `/chunked?n=N`: bytes offset..offset+n."""
    start = offset % _PERIOD
    reps = (start + n) // len(_UNIT) + 1
    return (_UNIT * reps)[start : start + n]


def dead_port() -> int:
    """A port on 127.0.0.1 where nothing listens: connecting to it is refused.

    The socket stays bound (but not listening) for the life of the test process so the
    port cannot be handed to another listener in the meantime.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    _DEAD_SOCKETS.append(sock)
    return sock.getsockname()[1]


@dataclasses.dataclass(frozen=True)
class Recorded:
    """One request as the upstream received it."""

    conn: int  # index into RecordingServer.connections
    method: str
    target: str
    http_version: str
    headers: list[tuple[bytes, bytes]]  # raw names (case kept) and values, in order
    body: bytes  # de-chunked
    raw: bytes  # every byte of the request as received: head, framing and body
    arrived: float  # time.monotonic() when the head was complete
    completed: float  # time.monotonic() when the body was complete

    @property
    def head(self) -> bytes:
        """The raw head, up to and including the blank line."""
        end = self.raw.find(b"\r\n\r\n")
        return self.raw[: end + 4] if end >= 0 else self.raw

    @property
    def path(self) -> str:
        return urlsplit(self.target).path

    @property
    def query(self) -> dict[str, str]:
        return {k: v[0] for k, v in parse_qs(urlsplit(self.target).query).items()}

    def header(self, name: str) -> str | None:
        """The first value of header `name` (case-insensitive), decoded, or None."""
        key = name.lower().encode()
        for k, v in self.headers:
            if k.lower() == key:
                return v.decode("latin-1")
        return None

    def header_all(self, name: str) -> list[str]:
        key = name.lower().encode()
        return [v.decode("latin-1") for k, v in self.headers if k.lower() == key]


class _Connection(asyncio.Protocol):
    """One accepted connection: bytes in, h11 events, responses out."""

    def __init__(self, server: RecordingServer) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.index = -1
        self.h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=1 << 20)
        self.pending = bytearray()  # received bytes not yet attributed to a request
        self.upgraded = False
        self.closed = False
        self.data_ready = asyncio.Event()
        self.can_write = asyncio.Event()
        self.can_write.set()
        self.task: asyncio.Task[None] | None = None

    # -- asyncio.Protocol ---------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.index = self.server._register(self)
        sslobj = transport.get_extra_info("ssl_object")
        if sslobj is not None:   # TLS: was this handshake a resumption?
            self.server.tls_resumed.append(bool(sslobj.session_reused))
        mode = self.server.mode
        if mode == "blackhole":
            transport.pause_reading()
            return
        if mode == "reset" and self.server.reset_on == "accept":
            self._reset()
            return
        self.task = asyncio.get_running_loop().create_task(self._run())

    def data_received(self, data: bytes) -> None:
        self.server._record_bytes(self.index, data)
        if self.upgraded:
            self._write_now(data)
            return
        if self.server.mode == "reset":
            self._reset()
            return
        self.pending += data
        self.h11.receive_data(data)
        self.data_ready.set()

    def eof_received(self) -> bool:
        if self.upgraded:
            return False
        self.h11.receive_data(b"")
        self.data_ready.set()
        return True  # keep our side open: a half-closed client still gets its answer

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.data_ready.set()
        self.can_write.set()
        if self.task is not None and not self.task.done():
            self.task.cancel()

    def pause_writing(self) -> None:
        self.can_write.clear()

    def resume_writing(self) -> None:
        self.can_write.set()

    # -- helpers ------------------------------------------------------------------

    def _reset(self) -> None:
        assert self.transport is not None
        sock = self.transport.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.transport.abort()

    def _write_now(self, data: bytes) -> None:
        if self.transport is not None and not self.closed:
            self.transport.write(data)

    async def _write(self, data: bytes) -> None:
        self._write_now(data)
        await self.can_write.wait()
        if self.closed:
            raise ConnectionError("client went away")

    async def _send(self, event: Any) -> None:
        data = self.h11.send(event)
        if data:
            await self._write(data)

    async def _next_event(self) -> Any:
        while True:
            event = self.h11.next_event()
            if event is h11.NEED_DATA:
                if self.closed:
                    return h11.ConnectionClosed()
                self.data_ready.clear()
                await self.data_ready.wait()
                continue
            return event

    def _close(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.close()

    # -- the request loop ---------------------------------------------------------

    async def _run(self) -> None:
        try:
            while not await self._one_exchange():
                self.h11.start_next_cycle()
        except h11.RemoteProtocolError as exc:
            self.server._record_error(self.index, f"{exc.error_status_hint} {exc}")
            status = exc.error_status_hint
            self._write_now(
                b"HTTP/1.1 %d Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                % status
            )
            self._close()
        except (ConnectionError, asyncio.CancelledError):
            self._close()
        except Exception as exc:  # a bug in this server: make it visible to the test
            self.server._record_error(self.index, f"internal: {exc!r}")
            self._close()

    async def _one_exchange(self) -> bool:
        """Read one request and answer it. Returns True when the connection is done."""
        event = await self._next_event()
        if isinstance(event, h11.ConnectionClosed):
            self._close()
            return True
        if event is h11.PAUSED:  # cannot happen: we always answer before reading on
            raise RuntimeError("h11 paused")
        assert isinstance(event, h11.Request), event
        arrived = time.monotonic()
        if self.h11.client_is_waiting_for_100_continue:
            await self._send(h11.InformationalResponse(status_code=100, headers=[], reason=b"Continue"))
        body = bytearray()
        while True:
            ev = await self._next_event()
            if isinstance(ev, h11.Data):
                body += ev.data
            elif isinstance(ev, h11.EndOfMessage):
                break
            elif isinstance(ev, h11.ConnectionClosed):
                self._close()
                return True
            else:
                raise RuntimeError(f"unexpected {ev!r}")
        consumed = len(self.pending) - len(self.h11.trailing_data[0])
        raw = bytes(self.pending[:consumed])
        del self.pending[:consumed]
        rec = Recorded(
            conn=self.index,
            method=event.method.decode("latin-1"),
            target=event.target.decode("latin-1"),
            http_version=event.http_version.decode("latin-1"),
            headers=[(bytes(k), bytes(v)) for k, v in event.headers.raw_items()],
            body=bytes(body),
            raw=raw,
            arrived=arrived,
            completed=time.monotonic(),
        )
        self.server._record_request(rec)
        if self.server.mode == "slow" and self.server.delay > 0:
            await asyncio.sleep(self.server.delay)
        return await self._respond(rec)

    async def _respond(self, rec: Recorded) -> bool:
        name = self.server.name.encode()
        base = [(b"x-upstream", name)]
        path, query = rec.path, rec.query
        upgrade = (rec.header("upgrade") or "").lower()
        if upgrade == "websocket":
            return await self._upgrade(rec)
        if path == "/echo":
            return await self._fixed(200, rec.body, base, rec, b"application/octet-stream")
        if path == "/bytes":
            return await self._pattern(rec, int(query.get("n", "0")), base)
        if path == "/chunked":
            n = int(query.get("n", "0"))
            size = max(1, int(query.get("size", "1024")))
            await self._send(h11.Response(status_code=200, headers=base, reason=b"OK"))
            if rec.method != "HEAD":
                for off in range(0, n, size):
                    await self._send(h11.Data(data=pattern(min(size, n - off), off)))
            await self._send(h11.EndOfMessage())
            return self._after_response()
        if path.startswith("/status/"):
            code = int(path.rsplit("/", 1)[1])
            body = b"" if code < 200 or code in (204, 304) else b"status %d\n" % code
            return await self._fixed(code, body, base, rec)
        if path == "/slow":
            await asyncio.sleep(int(query.get("ms", "0")) / 1000)
        if path == "/close":
            base.append((b"connection", b"close"))
        if path == "/half":
            return await self._half(rec, int(query.get("n", "1000")), base)
        if path == "/hang":
            await asyncio.Future()  # cancelled when the connection or the server goes
        if path == "/nobody":
            return await self._fixed(204, b"", base, rec)
        return await self._fixed(200, DEFAULT_BODY_TEMPLATE % name, base, rec)

    async def _fixed(
        self,
        status: int,
        body: bytes,
        base: list[tuple[bytes, bytes]],
        rec: Recorded,
        ctype: bytes = b"text/plain",
    ) -> bool:
        headers = [(b"content-type", ctype)]
        if status >= 200 and status not in (204, 304):
            headers.append((b"content-length", b"%d" % len(body)))
        await self._send(h11.Response(status_code=status, headers=headers + base, reason=_reason(status)))
        if body and rec.method != "HEAD" and status not in (204, 304):
            await self._send(h11.Data(data=body))
        await self._send(h11.EndOfMessage())
        return self._after_response()

    async def _pattern(self, rec: Recorded, n: int, base: list[tuple[bytes, bytes]]) -> bool:
        headers = [(b"content-type", b"application/octet-stream"), (b"content-length", b"%d" % n)]
        await self._send(h11.Response(status_code=200, headers=headers + base, reason=b"OK"))
        if rec.method != "HEAD":
            for off in range(0, n, _WRITE_CHUNK):
                await self._send(h11.Data(data=pattern(min(_WRITE_CHUNK, n - off), off)))
        await self._send(h11.EndOfMessage())
        return self._after_response()

    async def _half(self, rec: Recorded, n: int, base: list[tuple[bytes, bytes]]) -> bool:
        headers = [(b"content-type", b"application/octet-stream"), (b"content-length", b"%d" % n)]
        await self._send(h11.Response(status_code=200, headers=headers + base, reason=b"OK"))
        await self._write(pattern(n // 2))
        await asyncio.sleep(0.05)
        self._close()
        return True

    async def _upgrade(self, rec: Recorded) -> bool:
        headers = [(b"upgrade", b"websocket"), (b"connection", b"Upgrade")]
        key = rec.header("sec-websocket-key")
        if key:
            accept = base64.b64encode(hashlib.sha1(key.encode() + _WS_GUID).digest())
            headers.append((b"sec-websocket-accept", accept))
        await self._send(h11.InformationalResponse(status_code=101, headers=headers, reason=b"Switching Protocols"))
        leftover, _closed = self.h11.trailing_data
        self.upgraded = True
        if leftover:
            self._write_now(leftover)
        return True  # from now on data_received echoes; the request loop is over

    def _after_response(self) -> bool:
        if self.h11.our_state is h11.MUST_CLOSE or self.h11.their_state is h11.MUST_CLOSE:
            self._close()
            return True
        return False


class RecordingServer:
    """An HTTP/1.1 upstream on 127.0.0.1 that records what it receives.

    Args:
        name: sent back as the `x-upstream` header and in the default body.
        mode: "normal", "slow", "blackhole" or "reset" (see the module docstring).
        delay: seconds every response is held back in "slow" mode.
        reset_on: in "reset" mode, "accept" (RST right away) or "data" (at the first byte).
        ssl: a server ssl.SSLContext: the upstream speaks TLS.

    Use as a context manager or call start()/stop(). All accessors are thread-safe
    and return copies.
    """

    MODES = ("normal", "slow", "blackhole", "reset")

    def __init__(
        self,
        name: str = "upstream",
        mode: str = "normal",
        delay: float = 0.0,
        reset_on: str = "accept",
        ssl: Any = None,
    ) -> None:
        if mode not in self.MODES:
            raise ValueError(f"mode must be one of {self.MODES}, not {mode!r}")
        if reset_on not in ("accept", "data"):
            raise ValueError("reset_on must be 'accept' or 'data'")
        self.name = name
        self.mode = mode
        self.delay = delay
        self.reset_on = reset_on
        self.ssl = ssl   # an ssl.SSLContext: the upstream speaks TLS (https://)
        self.tls_resumed: list[bool] = []   # per TLS connection: resumed a session?
        self.port = 0
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._connections: list[bytearray] = []
        self._requests: list[Recorded] = []
        self._errors: list[tuple[int, str]] = []
        self._accepted = 0
        self._protocols: list[_Connection] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.AbstractServer | None = None
        self._thread: threading.Thread | None = None
        self._started = threading.Event()
        self._start_error: BaseException | None = None

    def __repr__(self) -> str:
        return f"<RecordingServer {self.name} {self.mode} {self.address}>"

    # -- lifecycle ----------------------------------------------------------------

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> RecordingServer:
        if self._thread is not None:
            raise RuntimeError("already started")
        self._thread = threading.Thread(target=self._thread_main, name=f"upstream-{self.name}", daemon=True)
        self._thread.start()
        if not self._started.wait(5):
            raise RuntimeError(f"{self!r} did not start within 5 s")
        if self._start_error is not None:
            raise RuntimeError(f"{self!r} failed to start") from self._start_error
        return self

    def stop(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        if loop.is_running():
            fut = asyncio.run_coroutine_threadsafe(self._shutdown(), loop)
            try:
                fut.result(5)
            except Exception:
                pass
            loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        self._thread = None

    def __enter__(self) -> RecordingServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _thread_main(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            self._server = loop.run_until_complete(
                loop.create_server(lambda: _Connection(self), "127.0.0.1", 0, backlog=512,
                                   ssl=self.ssl)
            )
            self.port = self._server.sockets[0].getsockname()[1]
        except BaseException as exc:
            self._start_error = exc
            self._started.set()
            loop.close()
            return
        self._started.set()
        try:
            loop.run_forever()
        finally:
            loop.run_until_complete(asyncio.sleep(0))
            loop.close()

    async def _shutdown(self) -> None:
        assert self._server is not None
        self._server.close()
        for proto in list(self._protocols):
            if proto.transport is not None:
                proto.transport.abort()
            if proto.task is not None:
                proto.task.cancel()
        tasks = [p.task for p in self._protocols if p.task is not None]
        if tasks:
            await asyncio.wait(tasks, timeout=2)

    # -- recording (called on the server thread) ----------------------------------

    def _register(self, proto: _Connection) -> int:
        with self._changed:
            self._protocols.append(proto)
            self._connections.append(bytearray())
            self._accepted += 1
            self._changed.notify_all()
            return len(self._connections) - 1

    def _record_bytes(self, index: int, data: bytes) -> None:
        with self._changed:
            self._connections[index] += data
            self._changed.notify_all()

    def _record_request(self, rec: Recorded) -> None:
        with self._changed:
            self._requests.append(rec)
            self._changed.notify_all()

    def _record_error(self, index: int, message: str) -> None:
        with self._changed:
            self._errors.append((index, message))
            self._changed.notify_all()

    # -- accessors (any thread) ---------------------------------------------------

    @property
    def requests(self) -> list[Recorded]:
        """Every complete request received so far, in completion order."""
        with self._lock:
            return list(self._requests)

    @property
    def connections(self) -> list[bytes]:
        """Per accepted connection, every byte received on it (since the last clear())."""
        with self._lock:
            return [bytes(c) for c in self._connections]

    @property
    def received(self) -> bytes:
        """All bytes received on all connections, concatenated in connection order."""
        with self._lock:
            return b"".join(self._connections)

    @property
    def errors(self) -> list[tuple[int, str]]:
        """(connection index, message) for each request h11 refused, and internal errors."""
        with self._lock:
            return list(self._errors)

    @property
    def accepted(self) -> int:
        """How many connections were accepted (clear() does not reset it)."""
        with self._lock:
            return self._accepted

    def clear(self) -> None:
        """Forget requests, errors and received bytes; open connections keep recording."""
        with self._lock:
            self._requests.clear()
            self._errors.clear()
            for buf in self._connections:
                del buf[:]

    def wait_for_requests(self, n: int, timeout: float = 5.0) -> list[Recorded]:
        """Wait until at least n requests were recorded, or timeout seconds.

        Returns the requests recorded by then (fewer than n on timeout): assert on it.
        """
        deadline = time.monotonic() + timeout
        with self._changed:
            while len(self._requests) < n:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._changed.wait(left)
            return list(self._requests)

    def wait_for_connections(self, n: int, timeout: float = 5.0) -> int:
        """Wait until at least n connections were accepted; returns the count."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while self._accepted < n:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._changed.wait(left)
            return self._accepted

    def wait_quiet(self, quiet: float = 0.3, timeout: float = 5.0) -> list[Recorded]:
        """Wait until no request arrived for `quiet` seconds (bounded by timeout)."""
        deadline = time.monotonic() + timeout
        with self._changed:
            last = len(self._requests)
            since = time.monotonic()
            while time.monotonic() < deadline:
                now = time.monotonic()
                if len(self._requests) != last:
                    last, since = len(self._requests), now
                elif now - since >= quiet:
                    break
                self._changed.wait(min(quiet, max(0.0, deadline - now)))
            return list(self._requests)


class StreamServer:
    """A scripted server on 127.0.0.1 in its own thread: `handler(reader, writer)` per connection.

    For tests whose upstream must do something RecordingServer does not (answer in a
    particular broken way, or play a versioned app). Disconnects end the handler quietly;
    the writer is closed afterwards, and stop cancels what is still running.
    """

    def __init__(self, handler: Any) -> None:
        self.handler = handler
        self.loop = asyncio.new_event_loop()
        self.port = 0
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def __enter__(self) -> "StreamServer":
        self._thread.start()
        assert self._ready.wait(5)
        return self

    def __exit__(self, *exc: object) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        server = self.loop.run_until_complete(asyncio.start_server(self._serve, "127.0.0.1", 0))
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        self.loop.run_forever()
        server.close()
        tasks = asyncio.all_tasks(self.loop)
        for task in tasks:
            task.cancel()
        self.loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
        self.loop.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await self.handler(reader, writer)
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()
