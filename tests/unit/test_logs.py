"""logs: the access log's JSON lines, drop counting, flush on close, reopen; setup_logging."""

from __future__ import annotations

import datetime as dt
import logging
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from fastmirror.ops import logs
from fastmirror.ops.logs import AccessLog, setup_logging

FIELDS = ("time", "client", "method", "path", "status", "bytes", "duration_ms", "id", "mirror", "upstream")


def record(i: int = 0, **kw: Any) -> dict[str, Any]:
    rec = {
        "time": 1714566896.789123,
        "client": "127.0.0.1:50000",
        "method": "GET",
        "path": f"/items/{i}?q=a%20b",
        "status": 200,
        "bytes": 1234,
        "duration_ms": 0.42,
        "id": f"id-{i}",
        "mirror": "sent",
        "upstream": "127.0.0.1:9000",
    }
    rec.update(kw)
    return rec


def read_lines(path: Path) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "access.log"


@pytest.fixture
def alog(path: Path) -> Iterator[AccessLog]:
    log = AccessLog(str(path))
    yield log
    log.close()


def test_writes_json_lines_with_all_fields(alog: AccessLog, path: Path) -> None:
    for i in range(3):
        alog.log(record(i))
    assert alog.flush()
    lines = read_lines(path)
    assert len(lines) == 3
    for i, line in enumerate(lines):
        assert list(line) == [*FIELDS, "pid"]  # order kept, time first, then the writer's pid
        assert line["pid"] == os.getpid()
        assert line["time"] == "2024-05-01T12:34:56.789Z"
        assert line["path"] == f"/items/{i}?q=a%20b"
        assert line["status"] == 200 and line["bytes"] == 1234 and line["duration_ms"] == 0.42
        assert line["id"] == f"id-{i}" and line["mirror"] == "sent"
    assert path.read_bytes().endswith(b"\n")
    assert alog.written == 3 and alog.dropped == 0


def test_time_format_is_iso8601_utc_ms(alog: AccessLog, path: Path) -> None:
    now = time.time()
    alog.log(record(time=now))
    alog.log(record(time=0.0))
    alog.log(record(time=1714566896))  # int epoch
    alog.flush()
    a, b, c = (line["time"] for line in read_lines(path))
    parsed = dt.datetime.strptime(a, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=dt.timezone.utc)
    assert abs(parsed.timestamp() - now) < 0.001
    assert b == "1970-01-01T00:00:00.000Z"
    assert c == "2024-05-01T12:34:56.000Z"


def test_missing_time_is_filled_in(alog: AccessLog, path: Path) -> None:
    rec = record()
    del rec["time"]
    alog.log(rec)
    alog.flush()
    (line,) = read_lines(path)
    assert list(line)[0] == "time" and line["time"].endswith("Z")


def test_bytes_values_and_odd_types_are_logged(alog: AccessLog, path: Path) -> None:
    alog.log(record(path=b"/caf\xc3\xa9/\xff", client=("127.0.0.1", 5)))
    alog.flush()
    (line,) = read_lines(path)
    assert line["path"] == "/café/\\xff"
    assert line["client"] == ["127.0.0.1", 5]


def test_bad_record_does_not_kill_the_writer(alog: AccessLog, path: Path) -> None:
    alog.log("not a dict")  # type: ignore[arg-type]
    alog.log(record(1))
    assert alog.flush()
    assert [line["id"] for line in read_lines(path)] == ["id-1"]
    assert alog.write_errors == 1


def test_drops_and_counts_when_writer_stalled(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    gate = threading.Event()
    entered = threading.Event()
    real_write = AccessLog._write

    def stalled_write(self: AccessLog, data: bytes, count: int) -> None:
        entered.set()
        gate.wait(10)
        real_write(self, data, count)

    monkeypatch.setattr(AccessLog, "_write", stalled_write)
    log = AccessLog(str(path), max_pending=10)
    try:
        log.log(record(0))
        log.flush(timeout=0)  # wake the writer now
        assert entered.wait(5)  # the writer holds record 0 and is stuck in write()
        t0 = time.perf_counter()
        for i in range(1, 26):
            log.log(record(i))
        assert time.perf_counter() - t0 < 0.05  # never blocks
        assert log.pending == 10
        assert log.dropped == 15
    finally:
        gate.set()
        log.close()
    ids = [line["id"] for line in read_lines(path)]
    assert ids == [f"id-{i}" for i in range(11)]  # oldest kept, newest dropped


def test_close_flushes_everything(path: Path) -> None:
    log = AccessLog(str(path))
    for i in range(5000):
        log.log(record(i))
    log.close()
    lines = read_lines(path)
    assert len(lines) == 5000
    assert lines[-1]["id"] == "id-4999"


def test_log_after_close_is_dropped_and_close_is_idempotent(path: Path) -> None:
    log = AccessLog(str(path))
    log.close()
    log.log(record())
    assert log.dropped == 1
    log.close()
    assert not log.flush(timeout=0.1)
    assert path.read_bytes() == b""


def test_appends_to_existing_file(path: Path) -> None:
    path.write_bytes(b'{"old":1}\n')
    log = AccessLog(str(path))
    log.log(record())
    log.close()
    assert read_lines(path)[0] == {"old": 1}
    assert len(read_lines(path)) == 2


def test_reopen_after_rename_writes_to_new_file(alog: AccessLog, path: Path) -> None:
    alog.log(record(1))
    alog.flush()
    rotated = path.with_name("access.log.1")
    os.rename(path, rotated)
    alog.log(record(2))  # logrotate's window: still goes to the open (renamed) file
    alog.flush()
    alog.reopen()
    alog.log(record(3))
    alog.flush()
    assert [r["id"] for r in read_lines(rotated)] == ["id-1", "id-2"]
    assert [r["id"] for r in read_lines(path)] == ["id-3"]


def test_reopen_failure_keeps_old_file(alog: AccessLog, path: Path, caplog: pytest.LogCaptureFixture) -> None:
    alog.path = str(path.parent / "missing-dir" / "access.log")
    with caplog.at_level(logging.ERROR, logger="fastmirror.logs"):
        alog.reopen()
        alog.log(record(1))
        assert alog.flush()
    assert "cannot reopen" in caplog.text
    assert [r["id"] for r in read_lines(path)] == ["id-1"]


def test_write_error_counted_not_raised(alog: AccessLog, monkeypatch: pytest.MonkeyPatch) -> None:
    class Full:
        closed = False

        def write(self, data: bytes) -> int:
            raise OSError(28, "No space left on device")

        def close(self) -> None:
            pass

    alog.flush()
    real, alog._file = alog._file, Full()  # type: ignore[assignment]
    real.close()
    alog.log(record(1))
    alog.log(record(2))
    assert alog.flush()
    assert alog.write_errors == 2


def test_stdout(capfdbinary: pytest.CaptureFixture[bytes]) -> None:
    log = AccessLog("-")
    log.log(record(7))
    log.close()
    out = capfdbinary.readouterr().out
    assert orjson.loads(out)["id"] == "id-7"


def test_missing_directory_raises_at_open(tmp_path: Path) -> None:
    with pytest.raises(OSError):
        AccessLog(str(tmp_path / "nope" / "access.log"))


def test_writer_batches(path: Path) -> None:
    log = AccessLog(str(path))
    for i in range(logs._BATCH * 3 + 5):
        log.log(record(i))
    log.close()
    assert len(read_lines(path)) == logs._BATCH * 3 + 5


# -- setup_logging ------------------------------------------------------------------------


@pytest.fixture
def restore_root() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    if logs._handler is not None:
        root.removeHandler(logs._handler)
        logs._handler = None
    root.handlers[:] = handlers
    root.setLevel(level)


def test_setup_logging_one_line_to_stderr(restore_root: None, capsys: pytest.CaptureFixture[str]) -> None:
    setup_logging("info")
    logging.getLogger("fastmirror.test").info("hello %s", "world")
    logging.getLogger("fastmirror.test").debug("hidden")
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    stamp, level, name, msg = err.split(" ", 3)
    dt.datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S.%fZ")
    assert (level, name, msg) == ("INFO", "fastmirror.test:", "hello world\n")


def test_setup_logging_twice_replaces_handler(restore_root: None, capsys: pytest.CaptureFixture[str]) -> None:
    setup_logging("INFO")
    setup_logging("warning")
    log = logging.getLogger("fastmirror.test")
    log.info("hidden")
    log.warning("once")
    assert capsys.readouterr().err.count("once") == 1


def test_setup_logging_bad_level(restore_root: None) -> None:
    with pytest.raises(ValueError, match="loud"):
        setup_logging("loud")
