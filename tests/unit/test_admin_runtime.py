"""Both real runtimes through the admin Handler, without processes or sockets.

admin.AdminRuntime is what the admin endpoint needs; mypy checks ops/worker.Runtime and
ops/supervisor.SupervisorRuntime against it. These tests drive each through the
Handler, so that a member the Protocol names but a runtime lacks fails here too.
"""

from __future__ import annotations

import asyncio

import orjson

from fastmirror.config import load_config
from fastmirror.ops.admin import AdminRuntime, Handler
from fastmirror.ops.supervisor import Supervisor, SupervisorRuntime
from fastmirror.ops.worker import Worker

CONFIG = {"primary": "127.0.0.1:1", "shadow": ["127.0.0.1:2"], "mirror_percent": "25"}


def ask(runtime: AdminRuntime, method: str, target: str, body: bytes = b"") -> tuple[int, bytes]:
    status, _, data, _ = asyncio.run(Handler(runtime).handle(method, target, body))
    return status, data


def walk(runtime: AdminRuntime) -> dict[str, tuple[int, bytes]]:
    """Every endpoint that reads the runtime, and a PUT /mirror, in order."""
    return {
        "config": ask(runtime, "GET", "/config"),
        "mirror": ask(runtime, "GET", "/mirror"),
        "put": ask(runtime, "PUT", "/mirror?percent=12.5"),
        "mirror after": ask(runtime, "GET", "/mirror"),
        "ready": ask(runtime, "GET", "/ready"),
        "metrics": ask(runtime, "GET", "/metrics"),
        "diffs": ask(runtime, "GET", "/diffs"),
    }


def test_worker_runtime() -> None:
    worker = Worker(load_config(None, CONFIG), None)
    seen = walk(worker.runtime)
    status, data = seen["config"]
    assert status == 200 and orjson.loads(data)["mirror_percent"] == 25.0
    assert seen["mirror"] == (200, b'{"percent":25.0}\n')
    assert seen["put"] == seen["mirror after"] == (200, b'{"percent":12.5}\n')
    assert worker.ctx.settings.mirror_percent == 12.5
    assert seen["ready"] == (200, b"ready")
    status, data = seen["metrics"]
    assert status == 200 and b"\nfastmirror_mirror_percent 12.5\n" in data
    assert seen["diffs"] == (200, b'{"upstreams":{}}\n')


def test_supervisor_runtime_before_its_workers_listen() -> None:
    sup = Supervisor(load_config(None, CONFIG | {"workers": "2"}), None, {}, 2)
    seen = walk(SupervisorRuntime(sup))
    status, data = seen["config"]
    assert status == 200 and orjson.loads(data)["mirror_percent"] == 25.0
    assert seen["mirror"] == (200, b'{"percent":25.0}\n')
    assert seen["put"] == seen["mirror after"] == (200, b'{"percent":12.5}\n')
    assert sup.mirror.percent == 12.5  # a worker started from now on gets it
    assert seen["ready"] == (503, b"draining")  # not every worker has listened yet
    status, data = seen["metrics"]
    assert status == 200 and b"fastmirror_downstream_requests_total 0.0\n" in data
    assert seen["diffs"] == (200, b'{"upstreams":{}}\n')
