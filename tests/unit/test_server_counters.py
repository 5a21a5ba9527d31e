"""A worker's own counters never go down either: the access log's drops across SIGHUP."""

from __future__ import annotations

from pathlib import Path

from fastmirror.config import load_config
from fastmirror.ops.worker import Worker


def test_access_log_dropped_survives_a_new_access_log_path(tmp_path: Path) -> None:
    first = load_config(None, {"primary": "127.0.0.1:1", "access_log": str(tmp_path / "a.log")})
    worker = Worker(first, None)
    try:
        worker._open_access_log(first)
        worker.ctx.settings.access_log.dropped = 5  # a stalled disk dropped five records
        assert worker.registry.snapshot()["access_log_dropped"] == 5
        # SIGHUP with another path: the old log closes; its drops stay counted.
        second = load_config(None, {"primary": "127.0.0.1:1", "access_log": str(tmp_path / "b.log")})
        worker._open_access_log(second, first.access_log)
        assert worker.registry.snapshot()["access_log_dropped"] == 5
        worker.ctx.settings.access_log.dropped = 2
        assert worker.registry.snapshot()["access_log_dropped"] == 7
        # ... and with the access log turned off.
        off = load_config(None, {"primary": "127.0.0.1:1"})
        worker._open_access_log(off, second.access_log)
        assert worker.ctx.settings.access_log is None
        assert worker.registry.snapshot()["access_log_dropped"] == 7
    finally:
        if worker.ctx.settings.access_log is not None:
            worker.ctx.settings.access_log.close()
