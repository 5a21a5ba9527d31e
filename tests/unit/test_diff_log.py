"""DiffLog: JSON lines from worker threads, one rotation to PATH.1, capped disk use."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import orjson
import pytest

from fastmirror.ops.logs import DiffLog


def lines(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


def rotated(path: Path) -> Path:
    return path.with_name(path.name + ".1")


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "diff.log"


def test_writes_one_json_line_per_record(path: Path) -> None:
    log = DiffLog(str(path), 1 << 20)
    log.write({"time": "t", "upstream": "127.0.0.1:9001", "differences": [{"path": "$.a", "primary": 1}]})
    log.write({"id": "x", "raw": b"\xff\x00bytes"})
    log.close()
    got = lines(path)
    assert got[0] == {"time": "t", "upstream": "127.0.0.1:9001", "differences": [{"path": "$.a", "primary": 1}]}
    assert got[1]["id"] == "x" and got[1]["raw"] == "\\xff\x00bytes"
    assert got[1]["time"].endswith("Z") and "T" in got[1]["time"]  # added when absent
    assert (log.written, log.dropped, log.rotations) == (2, 0, 0)


def test_rotates_once_when_full(path: Path) -> None:
    record = {"pad": "x" * 80}
    size = len(orjson.dumps(record)) + 1 + len(b',"time":"2024-01-01T00:00:00.000Z"')
    log = DiffLog(str(path), 10 * size)
    for i in range(25):
        log.write({"n": i, **record})
    log.close()
    assert log.written == 25 and log.dropped == 0 and log.rotations >= 2
    assert path.stat().st_size <= 10 * size and rotated(path).stat().st_size <= 10 * size
    current, previous = lines(path), lines(rotated(path))
    # The newest records are in PATH, the ones before them in PATH.1, nothing older.
    numbers = [r["n"] for r in previous + current]
    assert numbers == list(range(25 - len(numbers), 25))


def test_existing_file_size_counts(path: Path) -> None:
    path.write_bytes(b"x" * 90 + b"\n")
    log = DiffLog(str(path), 100)
    log.write({"a": 1, "time": "t"})
    log.close()
    assert rotated(path).read_bytes() == b"x" * 90 + b"\n"
    assert lines(path) == [{"a": 1, "time": "t"}]


def test_record_larger_than_the_cap_is_dropped(path: Path) -> None:
    log = DiffLog(str(path), 100)
    log.write({"big": "y" * 200})
    log.write({"small": 1})
    log.close()
    assert (log.written, log.dropped) == (1, 1)
    assert [r.get("small") for r in lines(path)] == [1]


def test_unserialisable_record_dropped_not_raised(path: Path) -> None:
    log = DiffLog(str(path), 1000)
    log.write({"n": 2**70})  # orjson refuses integers over 64 bits
    log.close()
    assert (log.written, log.dropped) == (0, 1)


def test_write_after_close_is_dropped_and_close_idempotent(path: Path) -> None:
    log = DiffLog(str(path), 1000)
    log.close()
    log.close()
    log.write({"a": 1})
    assert (log.written, log.dropped) == (0, 1)


def test_write_error_counted(path: Path, caplog: pytest.LogCaptureFixture) -> None:
    log = DiffLog(str(path), 1000)

    class Broken:
        def write(self, data: Any) -> int:
            raise OSError(28, "No space left on device")

        def close(self) -> None:
            pass

    log._file = Broken()  # type: ignore[assignment]
    log.write({"a": 1})
    log.write({"a": 2})
    assert (log.written, log.dropped) == (0, 2)
    assert sum("No space left" in r.getMessage() for r in caplog.records) == 1  # logged once


def test_bad_arguments(path: Path) -> None:
    with pytest.raises(ValueError):
        DiffLog(str(path), 0)
    with pytest.raises(OSError):
        DiffLog(str(path.parent / "missing" / "diff.log"), 100)


def test_threads_never_interleave_or_exceed_the_cap(path: Path) -> None:
    cap = 4096
    log = DiffLog(str(path), cap)
    threads_n, per_thread = 8, 300
    start = threading.Barrier(threads_n)

    def writer(t: int) -> None:
        start.wait()
        for i in range(per_thread):
            log.write({"time": "t", "thread": t, "i": i, "pad": "z" * (i % 50)})

    threads = [threading.Thread(target=writer, args=(t,)) for t in range(threads_n)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(30)
    log.close()
    assert log.written == threads_n * per_thread and log.dropped == 0
    assert path.stat().st_size <= cap and rotated(path).stat().st_size <= cap
    survivors = lines(rotated(path)) + lines(path)  # every line whole JSON
    assert survivors and all(set(r) == {"time", "thread", "i", "pad"} for r in survivors)
    # Per thread, the surviving records are that thread's latest, in order.
    for t in range(threads_n):
        mine = [r["i"] for r in survivors if r["thread"] == t]
        assert mine == sorted(mine)
