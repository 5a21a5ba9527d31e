"""Logging: the process log (stdlib logging to stderr), the JSON-lines access log and diff log.

The access log must never slow the event loop or make it wait for a disk. ``log()``
only appends the caller's dict to a bounded buffer (~0.1 µs); a daemon thread does
the rest off the loop: it formats ``time``, serialises with orjson and writes
batches with one ``write()`` each. When the buffer already holds ``max_pending``
records the new one is dropped and counted in ``.dropped``, as nginx's
``access_log ... buffer=`` trades completeness for latency under a stalled disk.

Records are the proxy's dicts: ``time`` (float epoch from ``time.time()``; written as
ISO 8601 UTC with milliseconds), ``client``, ``method``, ``path``, ``status``,
``bytes``, ``duration_ms``, ``id``, ``mirror``, ``upstream``; the writer adds ``pid``,
the process that served the request (which worker, with ``--workers N``; nginx's
``$pid``). Once passed to ``log()`` a record belongs to the log (the writer thread edits
it in place).

The diff log (``DiffLog``) holds the full primary/shadow pair of each mismatch. It
is written from the comparator's worker thread, never from the event loop, so it
writes directly under a lock; its size is capped by rotating once to ``PATH.1``.
"""

from __future__ import annotations

import collections
import logging
import os
import sys
import threading
import time
from typing import IO, Any

import orjson

__all__ = ["AccessLog", "DiffLog", "setup_logging"]

_log = logging.getLogger("fastmirror.logs")

# 64Ki records of ~250 bytes is ~16 MB of dicts at most; at 20k req/s that is
# three seconds of a fully stalled disk before records are dropped.
DEFAULT_MAX_PENDING = 65536
# The writer polls instead of being woken by log(): Event.set() takes a lock and
# would cost more than the whole log() call. 50 ms of latency is fine for a log.
_POLL_INTERVAL = 0.05
# One write() per this many records at most, so a huge backlog does not build one
# huge bytes object while holding the GIL.
_BATCH = 256

_handler: logging.Handler | None = None


class _UTCFormatter(logging.Formatter):
    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:  # noqa: N802
        return f"{time.strftime('%Y-%m-%dT%H:%M:%S', time.gmtime(record.created))}.{int(record.msecs):03d}Z"


def setup_logging(level: str) -> None:
    """Send log records at ``level`` and above to stderr, one line each.

    Calling it again replaces the handler it installed before (and the level).

    Raises:
        ValueError: unknown level name.
    """
    global _handler
    name = str(level).upper()
    if name == "WARN":
        name = "WARNING"
    numeric = logging.getLevelName(name)
    if not isinstance(numeric, int):
        raise ValueError(f"unknown log level {level!r}")
    root = logging.getLogger()
    if _handler is not None:
        root.removeHandler(_handler)
    _handler = logging.StreamHandler(sys.stderr)
    _handler.setFormatter(_UTCFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root.addHandler(_handler)
    root.setLevel(numeric)


class _TimeFormatter:
    """Epoch float -> ``2024-05-01T12:34:56.789Z``; strftime once per second."""

    __slots__ = ("_sec", "_prefix")

    def __init__(self) -> None:
        self._sec = -1
        self._prefix = ""

    def __call__(self, t: float) -> str:
        sec = int(t)
        if sec != self._sec:
            self._sec = sec
            self._prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec))
        return f"{self._prefix}.{int((t - sec) * 1000):03d}Z"


def _default(obj: Any) -> Any:
    # Raw request targets may arrive as bytes; keep them readable and lossless.
    if isinstance(obj, (bytes, bytearray, memoryview)):
        return bytes(obj).decode("utf-8", "backslashreplace")
    return str(obj)


class AccessLog:
    """Non-blocking JSON-lines access log written by a daemon thread.

    Args:
        path: file to append to, or ``"-"`` for stdout.
        max_pending: records buffered before new ones are dropped.

    Raises:
        OSError: the file cannot be opened.
    """

    def __init__(self, path: str, *, max_pending: int = DEFAULT_MAX_PENDING) -> None:
        self.path = path
        self.dropped = 0
        self.written = 0
        self.write_errors = 0  # records lost to serialisation or write errors
        self.pid = os.getpid()
        self._buf: collections.deque[dict[str, Any]] = collections.deque()
        self._limit = max_pending
        self._file: IO[bytes] = self._open()
        self._fmt_time = _TimeFormatter()
        self._wake = threading.Event()
        self._cv = threading.Condition()
        self._flush_req = 0
        self._flush_done = 0
        self._reopen = False
        self._stop = False
        self._thread = threading.Thread(target=self._run, name="fastmirror-access-log", daemon=True)
        self._thread.start()

    # -- event-loop side -----------------------------------------------------------

    def log(self, record: dict[str, Any]) -> None:
        """Queue one record; never blocks, never raises. Dropped when full."""
        buf = self._buf
        if len(buf) >= self._limit:
            self.dropped += 1
            return
        buf.append(record)

    def reopen(self) -> None:
        """Reopen the file by name (SIGHUP after logrotate); done by the writer."""
        self._reopen = True
        self._wake.set()

    def flush(self, timeout: float | None = 5.0) -> bool:
        """Wait until records logged before this call are written. True on success."""
        with self._cv:
            self._flush_req += 1
            want = self._flush_req
            self._wake.set()
            self._cv.wait_for(lambda: self._flush_done >= want or not self._thread.is_alive(), timeout)
            return self._flush_done >= want

    def close(self, timeout: float | None = 5.0) -> None:
        """Write what is pending, stop the thread, close the file. Idempotent."""
        self._limit = 0  # later log() calls count as dropped
        self._stop = True
        self._wake.set()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout)
        if not self._thread.is_alive():
            self._close_file()

    @property
    def pending(self) -> int:
        return len(self._buf)

    # -- writer thread ---------------------------------------------------------------

    def _open(self) -> IO[bytes]:
        if self.path == "-":
            return sys.stdout.buffer
        return open(self.path, "ab", buffering=0)  # noqa: SIM115 - lives as long as the log

    def _close_file(self) -> None:
        f = self._file
        if f is not sys.stdout.buffer and not f.closed:
            f.close()

    def _run(self) -> None:
        while True:
            self._wake.wait(_POLL_INTERVAL)
            self._wake.clear()
            stop = self._stop
            if self._reopen:
                self._reopen = False
                self._do_reopen()
            want = self._flush_req
            self._drain(len(self._buf))
            with self._cv:
                self._flush_done = want
                self._cv.notify_all()
            if stop:
                self._drain(len(self._buf))
                self._close_file()
                return

    def _do_reopen(self) -> None:
        try:
            new = self._open()
        except OSError as exc:
            _log.error("access log: cannot reopen %s: %s; still writing to the old file", self.path, exc)
            return
        old, self._file = self._file, new
        if old is not new and old is not sys.stdout.buffer:
            old.close()

    def _drain(self, n: int) -> None:
        buf, dumps, fmt = self._buf, orjson.dumps, self._fmt_time
        opt = orjson.OPT_APPEND_NEWLINE | orjson.OPT_NON_STR_KEYS
        while n > 0:
            chunk = []
            for _ in range(min(n, _BATCH)):
                rec = buf.popleft()
                try:
                    t = rec.get("time")
                    if isinstance(t, (int, float)):
                        rec["time"] = fmt(t)
                    elif t is None:
                        rec = {"time": fmt(time.time()), **rec}
                    rec.setdefault("pid", self.pid)
                    chunk.append(dumps(rec, default=_default, option=opt))
                except Exception as exc:  # noqa: BLE001 - one bad record must not kill the writer
                    self.write_errors += 1
                    _log.warning("access log: record not serialisable: %s", exc)
            n -= _BATCH
            self._write(b"".join(chunk), len(chunk))

    def _write(self, data: bytes, count: int) -> None:
        try:
            f = self._file
            view = memoryview(data)
            while view:  # a raw file may write less than asked
                written = f.write(view)
                view = view[written if written is not None else len(view) :]
            if f is sys.stdout.buffer:
                f.flush()
            self.written += count
        except (OSError, ValueError) as exc:  # disk full, closed stdout, EPIPE
            if not self.write_errors:
                _log.error("access log: write to %s failed: %s", self.path, exc)
            self.write_errors += count


class DiffLog:
    """Size-capped JSON-lines file for mismatches; ``write()`` is called off the event loop.

    One orjson line per record (``time`` added, ISO 8601 UTC, when the record has
    none). When a line would take the file past ``max_bytes``, the file is renamed to
    ``PATH.1`` (replacing an older one) and a new file is started, so the log takes
    at most about twice ``max_bytes`` on disk, as logrotate's ``rotate 1``. A record
    longer than ``max_bytes`` on its own, or one that cannot be written (disk full),
    is dropped and counted in ``dropped``. Thread-safe: one lock around size, rotation
    and write.

    Args:
        path: the file to append to (its current size counts toward the cap).
        max_bytes: the cap on one file, >= 1.

    Raises:
        OSError: the file cannot be opened.
        ValueError: max_bytes < 1.
    """

    def __init__(self, path: str, max_bytes: int) -> None:
        if max_bytes < 1:
            raise ValueError(f"max_bytes must be >= 1, not {max_bytes}")
        self.path = path
        self.max_bytes = max_bytes
        self.written = 0
        self.dropped = 0
        self.rotations = 0
        self._lock = threading.Lock()
        self._file: IO[bytes] | None = open(path, "ab", buffering=0)  # noqa: SIM115 - lives as long as the log
        self._size = self._file.seek(0, os.SEEK_END)
        self._failing = False  # log the first of a run of write errors only

    def write(self, record: dict[str, Any]) -> None:
        """Append one record; never raises (a record that fails is counted in ``dropped``)."""
        try:
            if "time" not in record:
                record = {"time": _iso_now(), **record}
            line = orjson.dumps(record, default=_default, option=orjson.OPT_APPEND_NEWLINE | orjson.OPT_NON_STR_KEYS)
        except Exception as exc:  # noqa: BLE001 - one bad record must not kill the comparator
            _log.warning("diff log: record not serialisable: %s", exc)
            with self._lock:
                self.dropped += 1
            return
        with self._lock:
            if self._file is None or len(line) > self.max_bytes:
                self.dropped += 1
                return
            try:
                if self._size + len(line) > self.max_bytes and self._size > 0:
                    self._rotate()
                self._write(line)
            except (OSError, ValueError) as exc:
                self.dropped += 1
                if not self._failing:
                    self._failing = True
                    _log.error("diff log: write to %s failed: %s", self.path, exc)
                return
            self._failing = False
            self._size += len(line)
            self.written += 1

    def close(self) -> None:
        """Close the file; later writes are dropped. Idempotent."""
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None

    def _rotate(self) -> None:
        assert self._file is not None
        self._file.close()
        self._file = None
        try:
            os.replace(self.path, self.path + ".1")
        finally:  # reopen even when the rename failed, so the log goes on (appending)
            self._file = open(self.path, "ab", buffering=0)
            self._size = self._file.seek(0, os.SEEK_END)
        self.rotations += 1

    def _write(self, data: bytes) -> None:
        assert self._file is not None
        view = memoryview(data)
        while view:  # a raw file may write less than asked
            n = self._file.write(view)
            view = view[n if n is not None else len(view) :]


def _iso_now() -> str:
    t = time.time()
    return f"{time.strftime('%Y-%m-%dT%H:%M:%S', time.gmtime(t))}.{int((t % 1) * 1000):03d}Z"
