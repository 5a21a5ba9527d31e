"""Process model: one worker in this process, or N forked workers (SO_REUSEPORT).

With one worker (the default) the proxy runs right here. Several workers are a
later step of the roadmap; until then `--workers N` with N > 1 runs N processes that
share the listening socket, the first of which serves the admin endpoint.
"""

from __future__ import annotations

import logging
import os
import signal
import sys

from .config import Config, ConfigError
from .listener import bind_listener
from .logs import setup_logging

log = logging.getLogger("fastmirror")


def run(config: Config, config_path: str | None, overrides: dict[str, object] | None = None) -> int:
    """Run the proxy with config until SIGTERM/SIGINT; return the exit code."""
    from .server import serve

    setup_logging(config.log_level)
    try:
        sock = bind_listener(config.listen, reuse_port=config.effective_workers > 1)
    except ConfigError as exc:
        print(f"fastmirror: error: {exc}", file=sys.stderr)
        return 2
    n = config.effective_workers
    if n == 1:
        return serve(config, config_path, overrides, listen_sock=sock)
    return _run_forked(config, config_path, overrides, sock, n)


def _run_forked(config: Config, config_path: str | None, overrides, sock, n: int) -> int:
    from .server import serve

    children: dict[int, int] = {}
    for index in range(n):
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                code = serve(config, config_path, overrides, listen_sock=sock,
                             admin=index == 0, notify=False)
            finally:
                os._exit(code)
        children[pid] = index
    sock.close()
    from .server import sd_notify
    sd_notify("READY=1")

    def forward(signum, _frame):
        for pid in children:
            try:
                os.kill(pid, signum)
            except ProcessLookupError:
                pass

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, forward)
    status = 0
    while children:
        try:
            pid, code = os.wait()
        except ChildProcessError:
            break
        except InterruptedError:
            continue
        children.pop(pid, None)
        if os.waitstatus_to_exitcode(code) != 0:
            status = 1
    return status
