"""Shared fixtures: real upstream servers, fastmirror as a subprocess, raw-socket helpers.

Everything here talks over real sockets on 127.0.0.1 and every wait is bounded.

Fixtures:
    primary, shadow     RecordingServer instances (function-scoped), named "primary"/"shadow"
    free_port           the free_port() function
    run_proxy           factory: run_proxy(*extra_args, primary=..., shadow=..., ...) -> Proxy

Plain helpers (import them with `from conftest import ...`):
    free_port(), start_proxy(...), Proxy, raw_exchange(), read_response(), Response,
    write_toml(), percentile()
"""

from __future__ import annotations

import importlib.util
import math
import shutil
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import weakref
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

TESTS_DIR = Path(__file__).resolve().parent
REPO_ROOT = TESTS_DIR.parent
if str(TESTS_DIR) not in sys.path:
    sys.path.insert(0, str(TESTS_DIR))

from upstreams import RecordingServer, dead_port, pattern  # noqa: E402

__all__ = [
    "Proxy",
    "Response",
    "RecordingServer",
    "dead_port",
    "free_port",
    "pattern",
    "percentile",
    "raw_exchange",
    "read_response",
    "recv_exactly",
    "take_buffered",
    "wait_closed",
    "start_proxy",
    "write_toml",
]

READY_TIMEOUT = 10.0


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "e2e: end-to-end test: real sockets, fastmirror as a subprocess")


# Every fastmirror process started and not yet closed, so that a failing test's report
# carries the stderr of the proxies it was talking to.
_LIVE_PROXIES: list[Proxy] = []


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    if report.when == "call" and report.failed:
        for proxy in list(_LIVE_PROXIES):
            try:
                report.sections.append((f"fastmirror pid {proxy.pid} (:{proxy.port})", proxy.describe()))
            except OSError:
                pass


# ---------------------------------------------------------------------------------
# ports and upstreams
# ---------------------------------------------------------------------------------


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (the OS picked it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(name="free_port")
def free_port_fixture() -> Any:
    return free_port


@pytest.fixture
def primary() -> Iterator[RecordingServer]:
    with RecordingServer("primary") as server:
        yield server


@pytest.fixture
def shadow() -> Iterator[RecordingServer]:
    with RecordingServer("shadow") as server:
        yield server


# ---------------------------------------------------------------------------------
# fastmirror as a subprocess
# ---------------------------------------------------------------------------------


def _address(target: Any) -> str:
    if isinstance(target, RecordingServer):
        return target.address
    if isinstance(target, int):
        return f"127.0.0.1:{target}"
    return str(target)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, RecordingServer):
        value = value.address
    text = str(value).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{text}"'


def write_toml(path: Path | str, values: dict[str, Any]) -> Path:
    """Write a flat TOML file (top-level keys; str, number, bool, lists of them)."""
    path = Path(path)
    lines = [f"{key} = {_toml_value(val)}" for key, val in values.items()]
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text("\n".join(lines) + "\n")
    os.replace(tmp, path)  # atomic: a SIGHUP never reads half a file
    return path


def _subprocess_env(extra: dict[str, str] | None) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "all_proxy"):
        env.pop(var, None)
    if importlib.util.find_spec("fastmirror") is None:
        # Not installed: run the source tree (the pure-Python core if nothing is built).
        src = str(REPO_ROOT / "src")
        env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "") if env.get("PYTHONPATH") else src
    if extra:
        env.update(extra)
    return env


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


@dataclass
class Proxy:
    """A running fastmirror process."""

    proc: subprocess.Popen[bytes]
    port: int
    admin_port: int | None
    argv: list[str]
    workdir: Path
    config_path: Path | None = None
    _client: httpx.Client | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def admin_url(self) -> str:
        if self.admin_port is None:
            raise RuntimeError("started with the admin endpoint off")
        return f"http://127.0.0.1:{self.admin_port}"

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stderr_text(self) -> str:
        return (self.workdir / "stderr").read_bytes().decode("utf-8", "replace")

    def stdout_text(self) -> str:
        return (self.workdir / "stdout").read_bytes().decode("utf-8", "replace")

    def describe(self) -> str:
        return (
            f"fastmirror pid {self.proc.pid} rc={self.proc.poll()} argv={self.argv}\n"
            f"--- stderr ---\n{self.stderr_text()[-4000:]}\n--- stdout ---\n{self.stdout_text()[-2000:]}"
        )

    def admin(self, method: str, path: str, timeout: float = 3.0) -> httpx.Response:
        """One request to the admin endpoint (fresh connection)."""
        with httpx.Client(trust_env=False, timeout=timeout) as client:
            return client.request(method, self.admin_url + path)

    def metrics(self) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
        """/metrics parsed: {(sample name, frozenset(labels.items())): value}."""
        from prometheus_client.parser import text_string_to_metric_families

        resp = self.admin("GET", "/metrics")
        assert resp.status_code == 200, resp.text
        out: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
        for family in text_string_to_metric_families(resp.text):
            for sample in family.samples:
                out[(sample.name, frozenset(sample.labels.items()))] = sample.value
        return out

    def metric(self, name: str, **labels: str) -> float:
        """Sum of the samples called `name` whose labels include `labels` (0 if none)."""
        want = set(labels.items())
        return sum(v for (n, lab), v in self.metrics().items() if n == name and want <= lab)

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def wait(self, timeout: float) -> int:
        return self.proc.wait(timeout)

    def terminate(self, timeout: float = 5.0) -> int | None:
        """SIGTERM, wait up to `timeout`, then SIGKILL; returns the exit status."""
        if self.proc.poll() is None:
            try:
                self.proc.send_signal(signal.SIGTERM)
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
            except ProcessLookupError:
                pass
        return self.proc.returncode

    def close(self, timeout: float = 5.0) -> int | None:
        """terminate(), then remove the working directory (config, stdout, stderr)."""
        rc = self.terminate(timeout)
        if self in _LIVE_PROXIES:
            _LIVE_PROXIES.remove(self)
        shutil.rmtree(self.workdir, ignore_errors=True)
        return rc


def start_proxy(
    *extra_args: str,
    primary: Any = None,
    shadow: Any = (),
    config: dict[str, Any] | None = None,
    port: int | None = None,
    admin_port: int | None = None,
    admin: bool = True,
    env: dict[str, str] | None = None,
    workdir: Path | None = None,
    ready_timeout: float = READY_TIMEOUT,
    wait_ready: bool = True,
) -> Proxy:
    """Start `python -m fastmirror` and wait until it serves.

    Args:
        extra_args: more command-line arguments, appended last.
        primary: RecordingServer, "host:port" or port; None passes no --primary.
        shadow: one or a list of them; each becomes a --shadow.
        config: when given, these keys (plus listen, admin, and primary/shadow when
            given) are written to a TOML file passed as --config, and listen/admin/
            primary/shadow are not passed as flags (so SIGHUP reloads can change them).
        admin: False passes `--admin off` and skips the /ready check.
        env: extra environment variables.

    Raises AssertionError (with the process's stderr) if it does not come up in
    ready_timeout seconds.
    """
    port = port or free_port()
    admin_port = (admin_port or free_port()) if admin else None
    workdir = Path(workdir or tempfile.mkdtemp(prefix="fastmirror-e2e-"))
    shadows = [] if shadow is None else list(shadow) if isinstance(shadow, (list, tuple)) else [shadow]
    admin_value = f"127.0.0.1:{admin_port}" if admin else "off"
    argv = [sys.executable, "-m", "fastmirror"]
    config_path = None
    if config is not None:
        values: dict[str, Any] = {"listen": f"127.0.0.1:{port}", "admin": admin_value}
        if primary is not None:
            values["primary"] = _address(primary)
        if shadows:
            values["shadow"] = [_address(s) for s in shadows]
        values.update(config)
        config_path = write_toml(workdir / "fastmirror.toml", values)
        argv += ["--config", str(config_path)]
    else:
        argv += ["--listen", f"127.0.0.1:{port}", "--admin", admin_value]
        if primary is not None:
            argv += ["--primary", _address(primary)]
        for s in shadows:
            argv += ["--shadow", _address(s)]
    argv += list(extra_args)
    with open(workdir / "stdout", "wb") as out, open(workdir / "stderr", "wb") as err:
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=out, stderr=err, env=_subprocess_env(env), cwd=workdir
        )
    proxy = Proxy(proc, port, admin_port, argv, workdir, config_path)
    _LIVE_PROXIES.append(proxy)
    if wait_ready:
        _wait_ready(proxy, ready_timeout)
    return proxy


def _wait_ready(proxy: Proxy, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    last = "nothing tried"
    while time.monotonic() < deadline:
        if proxy.proc.poll() is not None:
            message = f"fastmirror exited before it was ready\n{proxy.describe()}"
            proxy.close(1)
            raise AssertionError(message)
        if _port_open(proxy.port):
            if proxy.admin_port is None:
                return
            try:
                resp = proxy.admin("GET", "/ready", timeout=1.0)
                if resp.status_code == 200:
                    return
                last = f"/ready answered {resp.status_code}"
            except httpx.HTTPError as exc:
                last = f"/ready: {exc!r}"
        else:
            last = f"port {proxy.port} not accepting"
        time.sleep(0.05)
    message = f"fastmirror not ready within {timeout} s ({last})\n{proxy.describe()}"
    proxy.close(2)
    raise AssertionError(message)


_DEFAULT: Any = object()


@pytest.fixture
def run_proxy(request: pytest.FixtureRequest) -> Iterator[Any]:
    """Factory: run_proxy(*extra_args, primary=<primary fixture>, shadow=<shadow fixture>, ...).

    `primary` and `shadow` default to the function-scoped fixtures of those names;
    pass shadow=None for no shadow, or a list for several. Other keyword arguments go
    to start_proxy(). Every process is ended by PID at teardown (SIGTERM, 5 s, SIGKILL).
    """
    started: list[Proxy] = []

    def factory(*extra_args: str, primary: Any = _DEFAULT, shadow: Any = _DEFAULT, **kwargs: Any) -> Proxy:
        if primary is _DEFAULT:
            primary = request.getfixturevalue("primary")
        if shadow is _DEFAULT:
            shadow = request.getfixturevalue("shadow")
        proxy = start_proxy(*extra_args, primary=primary, shadow=shadow, **kwargs)
        started.append(proxy)
        return proxy

    yield factory
    for proxy in started:
        proxy.close(5)


# ---------------------------------------------------------------------------------
# raw-socket helpers
# ---------------------------------------------------------------------------------


class Exchange(bytes):
    """The bytes raw_exchange() read; `.closed` is True if the peer closed (or reset)."""

    closed: bool
    reset: bool
    elapsed: float


def raw_exchange(port: int, data: bytes, timeout: float = 5.0, host: str = "127.0.0.1") -> Exchange:
    """Send `data` on a new connection, then read until the peer closes or `timeout`.

    A reset by the peer counts as a close. The result is bytes, with `.closed`,
    `.reset` and `.elapsed` attributes.
    """
    start = time.monotonic()
    deadline = start + timeout
    chunks: list[bytes] = []
    closed = reset = False
    with socket.create_connection((host, port), timeout=timeout) as sock:
        try:
            sock.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server refused early; read whatever it said
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            sock.settimeout(left)
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                break
            except ConnectionResetError:
                closed = reset = True
                break
            if not chunk:
                closed = True
                break
            chunks.append(chunk)
    out = Exchange(b"".join(chunks))
    out.closed, out.reset, out.elapsed = closed, reset, time.monotonic() - start
    return out


@dataclass
class Response:
    """One HTTP response as read off the wire."""

    status: int
    reason: bytes
    version: bytes
    headers: list[tuple[bytes, bytes]]
    body: bytes  # de-chunked
    raw: bytes  # exactly the bytes of this response on the wire
    closed: bool = False  # the peer closed the connection after (or to end) this response

    def header(self, name: str) -> str | None:
        key = name.lower().encode()
        for k, v in self.headers:
            if k.lower() == key:
                return v.decode("latin-1")
        return None


class _Reader:
    """A receive buffer tied to a socket, so pipelined responses are not lost."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = bytearray()
        self.eof = False

    def fill(self, deadline: float) -> bool:
        if self.eof:
            return False
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("read_response: timed out")
        self.sock.settimeout(left)
        try:
            chunk = self.sock.recv(1 << 20)
        except ConnectionResetError:
            chunk = b""
        if not chunk:
            self.eof = True
            return False
        self.buf += chunk
        return True

    def take_until(self, marker: bytes, deadline: float, pos: int = 0) -> int:
        """Index just past `marker` in the buffer at or after pos, reading as needed."""
        while True:
            i = self.buf.find(marker, pos)
            if i >= 0:
                return i + len(marker)
            pos = max(pos, len(self.buf) - len(marker) + 1)
            if not self.fill(deadline):
                raise ConnectionError(f"closed before {marker!r}; got {bytes(self.buf[:200])!r}")

    def need(self, n: int, deadline: float) -> None:
        while len(self.buf) < n:
            if not self.fill(deadline):
                raise ConnectionError(f"closed after {len(self.buf)} of {n} bytes")


_READERS: weakref.WeakKeyDictionary[socket.socket, _Reader] = weakref.WeakKeyDictionary()


def read_response(sock: socket.socket, timeout: float = 5.0, head_request: bool = False) -> Response:
    """Read one full HTTP/1.x response from `sock` (Content-Length, chunked or close-delimited).

    Interim (1xx) responses are returned as responses of their own. Bytes read past
    the end of this response are kept for the next call on the same socket, so
    pipelined responses can be read one after the other.

    Raises TimeoutError after `timeout` seconds, ConnectionError if the peer closes
    before the response is complete.
    """
    reader = _READERS.get(sock)
    if reader is None:
        reader = _READERS[sock] = _Reader(sock)
    deadline = time.monotonic() + timeout
    head_end = reader.take_until(b"\r\n\r\n", deadline)
    head = bytes(reader.buf[:head_end])
    lines = head[:-4].split(b"\r\n")
    version, _, rest = lines[0].partition(b" ")
    status_text, _, reason = rest.partition(b" ")
    status = int(status_text)
    headers = []
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        headers.append((name, value.strip(b" \t")))
    names = {k.lower(): v for k, v in headers}
    pos = head_end
    body = b""
    closed = False
    if head_request or 100 <= status < 200 or status in (204, 304):
        end = pos
    elif b"chunked" in names.get(b"transfer-encoding", b"").lower():
        parts = []
        while True:
            line_end = reader.take_until(b"\r\n", deadline, pos)
            size = int(reader.buf[pos : line_end - 2].split(b";")[0], 16)
            pos = line_end
            if size == 0:
                while True:  # trailers, then the blank line
                    line_end = reader.take_until(b"\r\n", deadline, pos)
                    blank = line_end - pos == 2
                    pos = line_end
                    if blank:
                        break
                break
            reader.need(pos + size + 2, deadline)
            parts.append(bytes(reader.buf[pos : pos + size]))
            if reader.buf[pos + size : pos + size + 2] != b"\r\n":
                raise ConnectionError("bad chunk framing in response")
            pos += size + 2
        end = pos
        body = b"".join(parts)
    elif b"content-length" in names:
        end = pos + int(names[b"content-length"])
        reader.need(end, deadline)
        body = bytes(reader.buf[pos:end])
    else:
        while reader.fill(deadline):
            pass
        end = len(reader.buf)
        body = bytes(reader.buf[pos:end])
        closed = True
    raw = bytes(reader.buf[:end])
    del reader.buf[:end]
    if not closed and not reader.buf and reader.eof:
        closed = True
    return Response(status, reason, version, headers, body, raw, closed)


def take_buffered(sock: socket.socket) -> bytes:
    """Bytes read_response() read past the last response on `sock` (now removed)."""
    reader = _READERS.get(sock)
    if reader is None:
        return b""
    out = bytes(reader.buf)
    del reader.buf[:]
    return out


def recv_exactly(sock: socket.socket, n: int, timeout: float = 5.0) -> bytes:
    """n bytes from `sock` (after any read_response() leftovers), or what came before
    the peer closed or the timeout."""
    out = bytearray(take_buffered(sock))
    deadline = time.monotonic() + timeout
    while len(out) < n:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        sock.settimeout(left)
        try:
            chunk = sock.recv(n - len(out))
        except (TimeoutError, ConnectionResetError):
            break
        if not chunk:
            break
        out += chunk
    if len(out) > n:
        reader = _READERS.setdefault(sock, _Reader(sock))
        reader.buf[:0] = out[n:]
        del out[n:]
    return bytes(out)


def wait_closed(sock: socket.socket, timeout: float = 5.0) -> bool:
    """True if the peer closes `sock` (EOF or reset) within timeout, with no more data."""
    reader = _READERS.get(sock)
    if reader is not None and reader.buf:
        return False
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            return False
        except ConnectionResetError:
            return True
        if not chunk:
            return True
        return False
    return False


def percentile(values: Sequence[float], p: float) -> float:
    """The p-th percentile (0..100) by nearest rank."""
    ordered = sorted(values)
    if not ordered:
        raise ValueError("no values")
    rank = max(0, min(len(ordered) - 1, math.ceil(p / 100 * len(ordered)) - 1))
    return ordered[rank]
