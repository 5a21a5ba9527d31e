"""Admin endpoint over real sockets on 127.0.0.1: every endpoint, errors, keep-alive."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest
import uvloop

from fastmirror.ops import admin
from fastmirror.ops.admin import start_admin
from fastmirror.config import load_config
from fastmirror.ops.metrics import Registry
from fastmirror.proxy.router import MirrorState


class FakeRuntime:
    # diffing on, as the test doubles below answer /diffs
    config = load_config(None, {"primary": "127.0.0.1:9000", "shadow": ["127.0.0.1:9001"],
                                "diff.enabled": True})

    def __init__(self) -> None:
        self.mirror_percent = 100.0
        self.draining = False
        self.registry = Registry(version="test", core="python")
        self.registry.mirror("127.0.0.1:9001").sent = 3

    def config_dict(self) -> dict[str, Any]:
        return {"listen": "127.0.0.1:8080", "primary": "127.0.0.1:9000", "shadow": ["127.0.0.1:9001"]}

    def set_mirror_percent(self, p: float) -> None:
        self.mirror_percent = p

    @property
    def mirror(self) -> MirrorState:
        return MirrorState(self.mirror_percent)

    def set_mirror(self, state: MirrorState) -> Any:
        return self.set_mirror_percent(state.percent)

    def render_metrics(self) -> bytes:
        self.registry.mirror_percent = self.mirror_percent
        return self.registry.render()


class AsyncRuntime(FakeRuntime):
    """A parent-process runtime whose calls are coroutines."""

    async def render_metrics(self) -> bytes:  # type: ignore[override]
        await asyncio.sleep(0.01)
        return b"# async\n"

    async def set_mirror_percent(self, p: float) -> None:  # type: ignore[override]
        await asyncio.sleep(0.01)
        if p == 42:
            raise ValueError("42 is not allowed here")
        self.mirror_percent = p


class AdminServer:
    """The admin server on its own event loop in a thread."""

    def __init__(self, runtime: Any, loop_kind: str = "asyncio") -> None:
        self.runtime = runtime
        self.loop = uvloop.new_event_loop() if loop_kind == "uvloop" else asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.server = asyncio.run_coroutine_threadsafe(start_admin(runtime, "127.0.0.1", 0), self.loop).result(5)
        self.port = self.server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        async def _close() -> None:
            self.server.close()
            await self.server.wait_closed()

        asyncio.run_coroutine_threadsafe(_close(), self.loop).result(5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


@pytest.fixture
def runtime() -> FakeRuntime:
    return FakeRuntime()


@pytest.fixture(params=["asyncio", "uvloop"])
def server(request: pytest.FixtureRequest, runtime: FakeRuntime) -> Iterator[AdminServer]:
    srv = AdminServer(runtime, request.param)
    yield srv
    srv.stop()


@pytest.fixture
def client(server: AdminServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=5) as c:
        yield c


def raw(port: int, data: bytes, timeout: float = 5.0) -> bytes:
    """Send raw bytes, half-close, read until the server closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def test_metrics(client: httpx.Client) -> None:
    r = client.get("/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    assert 'fastmirror_mirror_requests_total{outcome="sent",upstream="127.0.0.1:9001"} 3.0' in r.text
    assert "fastmirror_mirror_percent 100.0" in r.text


def test_healthz(client: httpx.Client) -> None:
    r = client.get("/healthz")
    assert (r.status_code, r.text) == (200, "ok")
    assert r.headers["content-type"].startswith("text/plain")


def test_ready_and_draining(client: httpx.Client, runtime: FakeRuntime) -> None:
    r = client.get("/ready")
    assert (r.status_code, r.text) == (200, "ready")
    runtime.draining = True
    r = client.get("/ready")
    assert (r.status_code, r.text) == (503, "draining")
    # Everything else keeps answering while draining.
    assert client.get("/healthz").status_code == 200
    assert client.get("/metrics").status_code == 200


def test_config(client: httpx.Client, runtime: FakeRuntime) -> None:
    r = client.get("/config")
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/json"
    assert r.json() == runtime.config_dict()


def test_get_mirror(client: httpx.Client) -> None:
    r = client.get("/mirror")
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/json"
    assert r.json() == {"percent": 100.0}


@pytest.mark.parametrize(
    ("method", "kwargs", "expected"),
    [
        ("PUT", {"params": {"percent": "12.5"}}, 12.5),
        ("PUT", {"params": {"percent": "0"}}, 0.0),
        ("POST", {"params": {"percent": "100"}}, 100.0),
        ("PUT", {"content": orjson.dumps({"percent": 7})}, 7.0),
        ("POST", {"content": orjson.dumps({"percent": 0.5})}, 0.5),
        # "10%" as --mirror-percent takes it (config.percent_number); httpx sends ?percent=10%25
        ("PUT", {"params": {"percent": "10%"}}, 10.0),
        ("PUT", {"content": orjson.dumps({"percent": "2.5%"})}, 2.5),
    ],
)
def test_set_mirror(
    client: httpx.Client, runtime: FakeRuntime, method: str, kwargs: dict[str, Any], expected: float
) -> None:
    r = client.request(method, "/mirror", **kwargs)
    assert r.status_code == 200, r.text
    assert r.json() == {"percent": expected}
    assert runtime.mirror_percent == expected
    assert client.get("/mirror").json() == {"percent": expected}
    assert f"fastmirror_mirror_percent {expected}" in client.get("/metrics").text


def test_set_mirror_unencoded_percent_sign(client: httpx.Client, runtime: FakeRuntime) -> None:
    """curl -X PUT 'host:9901/mirror?percent=10%' sends the % as is, not as %25."""
    host, port = client.base_url.host, client.base_url.port
    with socket.create_connection((host, port), timeout=5) as sock:
        sock.sendall(b"PUT /mirror?percent=10% HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n"
                     b"Connection: close\r\n\r\n")  # fmt: skip
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 200 "), answer
    assert answer.endswith(b'{"percent":10.0}\n'), answer
    assert runtime.mirror_percent == 10.0


@pytest.mark.parametrize(
    "kwargs",
    [
        {"params": {"percent": "101"}},
        {"params": {"percent": "-1"}},
        {"params": {"percent": "abc"}},
        {"params": {"percent": "nan"}},
        {"params": {"percent": "inf"}},
        {"params": {"percent": ""}},
        {"params": {"percent": "150%"}},
        {"params": {"percent": "10%%"}},
        {"params": {"percent": "%"}},
        {"params": [("percent", "1"), ("percent", "2")]},
        {},
        {"content": b"not json"},
        {"content": b'{"pct": 5}'},
        {"content": b'{"percent": true}'},
        {"content": b'{"percent": null}'},
        {"content": b"[5]"},
    ],
)
def test_set_mirror_bad(client: httpx.Client, runtime: FakeRuntime, kwargs: dict[str, Any]) -> None:
    r = client.put("/mirror", **kwargs)
    assert r.status_code == 400
    assert r.headers["content-type"] == "application/json"
    assert isinstance(r.json()["error"], str) and r.json()["error"]
    assert runtime.mirror_percent == 100.0


def test_not_found(client: httpx.Client) -> None:
    r = client.get("/nope")
    assert r.status_code == 404
    assert "error" in r.json()
    assert client.get("/metrics/").status_code == 404


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("POST", "/metrics", "GET, HEAD"),
        ("DELETE", "/healthz", "GET, HEAD"),
        ("PUT", "/ready", "GET, HEAD"),
        ("PUT", "/config", "GET, HEAD"),
        ("DELETE", "/mirror", "GET, HEAD, PUT, POST"),
    ],
)
def test_method_not_allowed(client: httpx.Client, method: str, path: str, allow: str) -> None:
    r = client.request(method, path)
    assert r.status_code == 405
    assert r.headers["allow"] == allow


@pytest.mark.parametrize("path", ["/metrics", "/healthz", "/ready", "/config", "/mirror"])
def test_head(client: httpx.Client, path: str) -> None:
    get = client.get(path)
    head = client.head(path)
    assert head.status_code == get.status_code == 200
    assert head.content == b""
    if path == "/metrics":  # process CPU/RSS values change between the two scrapes
        assert int(head.headers["content-length"]) > 0
    else:
        assert head.headers["content-length"] == str(len(get.content))
    assert head.headers["content-type"] == get.headers["content-type"]


def test_query_ignored_on_get(client: httpx.Client) -> None:
    assert client.get("/healthz?x=1").text == "ok"


def test_keep_alive_two_requests_one_connection(server: AdminServer) -> None:
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as s:
        f = s.makefile("rb")
        for path, body in ((b"/healthz", b"ok"), (b"/ready", b"ready")):
            s.sendall(b"GET " + path + b" HTTP/1.1\r\nHost: x\r\n\r\n")
            assert f.readline() == b"HTTP/1.1 200 OK\r\n"
            headers = {}
            while (line := f.readline()) != b"\r\n":
                k, _, v = line.decode().partition(":")
                headers[k.lower()] = v.strip()
            assert f.read(int(headers["content-length"])) == body
            assert "close" not in headers.get("connection", "")


def test_keep_alive_httpx_reuses_connection(client: httpx.Client) -> None:
    ports = set()
    for _ in range(3):
        r = client.get("/healthz", extensions={})
        assert r.status_code == 200
        stream = r.extensions["network_stream"]
        ports.add(stream.get_extra_info("client_addr")[1])
    assert len(ports) == 1


def test_pipelined_requests(server: AdminServer) -> None:
    out = raw(server.port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n" * 3 + b"GET /ready HTTP/1.1\r\nHost: x\r\n\r\n")
    assert out.count(b"HTTP/1.1 200 OK\r\n") == 4
    assert out.endswith(b"ready")


def test_connection_close_honoured(server: AdminServer) -> None:
    out = raw(server.port, b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 200 OK\r\n")
    assert out.endswith(b"\r\n\r\nok")


@pytest.mark.parametrize(
    ("request_bytes", "status_line"),
    [
        (b"GARBAGE\r\n\r\n", b"HTTP/1.1 400 Bad Request"),
        (b"GET /healthz HTTP/1.1\r\n\r\n", b"HTTP/1.1 400 Bad Request"),  # no Host
        (b"GET /healthz HTTP/1.1\r\nHost: x\r\nbad header\r\n\r\n", b"HTTP/1.1 400 Bad Request"),
        (
            b"GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            b"HTTP/1.1 400 Bad Request",
        ),
        (b"GET /healthz HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n", b"HTTP/1.1 501 Not Implemented"),
    ],
)
def test_malformed_request_rejected_and_closed(server: AdminServer, request_bytes: bytes, status_line: bytes) -> None:
    out = raw(server.port, request_bytes)
    assert out.startswith(status_line + b"\r\n")
    assert b"connection: close" in out.lower()
    assert b'"error"' in out


def test_malformed_after_good_request(server: AdminServer) -> None:
    out = raw(server.port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\nNOT HTTP\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"HTTP/1.1 400 Bad Request\r\n" in out


def test_head_too_large_is_rejected(server: AdminServer) -> None:
    big = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * (admin.MAX_HEAD + 10) + b"\r\n\r\n"
    out = raw(server.port, big)
    assert out.startswith(b"HTTP/1.1 431 Request Header Fields Too Large\r\n")
    # Trickled in, h11's own limit catches it before the head is complete.
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as s:
        s.sendall(big[: admin.MAX_HEAD // 2])
        s.sendall(big[admin.MAX_HEAD // 2 : -4])
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    assert data.startswith(b"HTTP/1.1 431 ")


def test_body_too_large_413(server: AdminServer) -> None:
    n = admin.MAX_BODY + 1
    out = raw(server.port, b"PUT /mirror HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % n + b"x" * n)
    assert out.startswith(b"HTTP/1.1 413 ")


def test_half_closed_client_still_gets_answer(server: AdminServer) -> None:
    out = raw(server.port, b"GET /ready HTTP/1.1\r\nHost: x\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 200 OK\r\n") and out.endswith(b"ready")


def test_idle_connection_closed(server: AdminServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(admin, "IDLE_TIMEOUT", 0.2)
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as s:
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # never finished
        assert s.recv(100) == b""


def test_async_runtime() -> None:
    rt = AsyncRuntime()
    srv = AdminServer(rt)
    try:
        with httpx.Client(base_url=srv.url, timeout=5) as c:
            assert c.get("/metrics").content == b"# async\n"
            assert c.put("/mirror", params={"percent": 5}).json() == {"percent": 5.0}
            r = c.put("/mirror", params={"percent": 42})
            assert r.status_code == 400 and "42" in r.json()["error"]
            assert rt.mirror_percent == 5.0
    finally:
        srv.stop()


def test_handler_exception_is_500(server: AdminServer, runtime: FakeRuntime, client: httpx.Client) -> None:
    def boom() -> bytes:
        raise RuntimeError("boom")

    runtime.render_metrics = boom  # type: ignore[method-assign]
    r = client.get("/metrics")
    assert r.status_code == 500
    assert r.json() == {"error": "internal error"}
    assert client.get("/healthz").status_code == 200  # the connection survives


def test_runtime_with_registry_only() -> None:
    class RegistryRuntime:
        mirror_percent = 1.0
        draining = False
        registry = Registry(version="v", core="python")

        def config_dict(self) -> dict[str, Any]:
            return {}

    srv = AdminServer(RegistryRuntime())
    try:
        r = httpx.get(srv.url + "/metrics", timeout=5)
        assert r.status_code == 200 and 'fastmirror_info{core="python",version="v"} 1.0' in r.text
    finally:
        srv.stop()


def test_start_admin_on_socket(runtime: FakeRuntime) -> None:
    async def main() -> tuple[int, bytes]:
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        server = await start_admin(runtime, None, None, sock=sock)
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            data = await reader.read()
            writer.close()
            return port, data
        finally:
            server.close()
            await server.wait_closed()

    _, data = asyncio.run(main())
    assert data.startswith(b"HTTP/1.1 200 OK\r\n") and data.endswith(b"ok")


# -- /diffs and /report ------------------------------------------------------------------

SNAPSHOT = {"upstreams": {"127.0.0.1:9001": {"endpoints": {"GET /api/items/{id}": {
    "compared": 10, "match": 7, "mismatch": 3, "noise": 0, "skipped": {"too_large": 1},
    "fields": [{"path": "$.price", "count": 3, "example": {
        "request_id": "r1", "target": "/api/items/7", "primary": 4.99, "shadow": "4.99"}}],
    "noise_fields": [],
}}}}}  # fmt: skip


class DiffRuntime(FakeRuntime):
    """A runtime whose shadow answered 10 requests, 3 of them differently."""

    def __init__(self) -> None:
        super().__init__()
        primary = self.registry.upstream("primary", "127.0.0.1:9000")
        shadow = self.registry.upstream("shadow", "127.0.0.1:9001")
        for _ in range(10):
            primary.observe(0.001, 200)
            shadow.observe(0.02, 200)
        self.snapshots_taken = 0

    def diffs_snapshot(self) -> dict[str, Any]:
        self.snapshots_taken += 1
        return SNAPSHOT


@pytest.fixture
def diff_client(request: pytest.FixtureRequest) -> Iterator[tuple[httpx.Client, DiffRuntime]]:
    rt = DiffRuntime()
    srv = AdminServer(rt)
    try:
        with httpx.Client(base_url=srv.url, timeout=5) as c:
            yield c, rt
    finally:
        srv.stop()


def test_diffs_json(diff_client: tuple[httpx.Client, DiffRuntime]) -> None:
    client, _ = diff_client
    r = client.get("/diffs")
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    assert r.json() == SNAPSHOT
    assert client.get("/diffs", params={"format": "json"}).json() == SNAPSHOT


def test_diffs_text_and_html(diff_client: tuple[httpx.Client, DiffRuntime]) -> None:
    client, _ = diff_client
    r = client.get("/diffs", params={"format": "text"})
    assert r.status_code == 200 and r.headers["content-type"] == "text/plain; charset=utf-8"
    assert "GET /api/items/{id}" in r.text and "$.price" in r.text
    r = client.get("/diffs", params={"format": "html"})
    assert r.status_code == 200 and r.headers["content-type"] == "text/html; charset=utf-8"
    assert "<html" in r.text.lower() and "GET /api/items/{id}" in r.text and "$.price" in r.text


@pytest.mark.parametrize("query", [{"format": "xml"}, [("format", "text"), ("format", "html")]])
def test_diffs_bad_format_400(diff_client: tuple[httpx.Client, DiffRuntime], query: Any) -> None:
    client, _ = diff_client
    r = client.get("/diffs", params=query)
    assert r.status_code == 400 and "format" in r.json()["error"]


def test_diffs_head_and_methods(diff_client: tuple[httpx.Client, DiffRuntime]) -> None:
    client, _ = diff_client
    r = client.head("/diffs")
    assert r.status_code == 200 and r.content == b""
    for path in ("/diffs", "/report"):
        r = client.put(path)
        assert r.status_code == 405 and r.headers["allow"] == "GET, HEAD"


def test_diffs_empty_without_diffing(client: httpx.Client) -> None:
    """FakeRuntime has no diffs_snapshot: the empty snapshot, in every format."""
    assert client.get("/diffs").json() == {"upstreams": {}}
    assert client.get("/diffs", params={"format": "text"}).status_code == 200
    assert client.get("/diffs", params={"format": "html"}).status_code == 200


def test_diffs_empty_when_diffing_is_off() -> None:
    from fastmirror.config import load_config

    rt = DiffRuntime()
    rt.config = load_config(None, {"primary": "127.0.0.1:9000"})  # type: ignore[attr-defined]
    srv = AdminServer(rt)
    try:
        assert httpx.get(srv.url + "/diffs", timeout=5).json() == {"upstreams": {}}
        assert rt.snapshots_taken == 0
        rt.config = load_config(None, {"primary": "127.0.0.1:9000", "diff.enabled": True})  # type: ignore[attr-defined]
        assert httpx.get(srv.url + "/diffs", timeout=5).json() == SNAPSHOT
    finally:
        srv.stop()


def test_diffs_async_snapshot() -> None:
    class Async(DiffRuntime):
        async def diffs_snapshot(self) -> dict[str, Any]:  # type: ignore[override]
            await asyncio.sleep(0.01)
            return SNAPSHOT

    srv = AdminServer(Async(), "uvloop")
    try:
        assert httpx.get(srv.url + "/diffs", timeout=5).json() == SNAPSHOT
        report = httpx.get(srv.url + "/report", timeout=5).json()
        assert report["shadows"]["127.0.0.1:9001"]["diff"]["mismatch"] == 3
    finally:
        srv.stop()


def test_report_json(diff_client: tuple[httpx.Client, DiffRuntime]) -> None:
    client, _ = diff_client
    r = client.get("/report")
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    report = r.json()
    assert report["verdict"] == "pass"  # only min_requests=1 by default
    shadow = report["shadows"]["127.0.0.1:9001"]
    assert shadow["requests"] == 10 and shadow["p99_ratio"] > 10
    assert shadow["diff"]["mismatch_rate"] == 0.3
    assert shadow["endpoints"]["GET /api/items/{id}"]["fields"][0]["path"] == "$.price"


def test_report_thresholds_from_the_query(diff_client: tuple[httpx.Client, DiffRuntime]) -> None:
    client, _ = diff_client
    r = client.get("/report", params={"max_p99_ratio": "1.2", "max_mismatch": "0.1%", "min_requests": "5"})
    assert r.status_code == 200  # a failed verdict is an answer, not an error
    report = r.json()
    assert report["verdict"] == "fail"
    assert report["thresholds"]["max_p99_ratio"] == 1.2 and report["thresholds"]["max_mismatch"] == 0.001
    assert [c["name"] for c in report["checks"] if not c["ok"]] == ["p99_ratio", "mismatch_rate"]
    assert client.get("/report", params={"max_p99_ratio": "100", "max_mismatch": "50%"}).json()["verdict"] == "pass"


@pytest.mark.parametrize(
    ("query", "word"),
    [({"max_p99_ratio": "abc"}, "max_p99_ratio"), ({"max_mismatch": "5"}, "max_mismatch"),
     ({"min_requests": "-1"}, "min_requests"), ({"max_p99": "1"}, "max_p99"),
     ({"max_error_rate_diff": ""}, "max_error_rate_diff"),
     ([("max_p50_ratio", "1"), ("max_p50_ratio", "2")], "more than once")],
)  # fmt: skip
def test_report_bad_threshold_400(diff_client: tuple[httpx.Client, DiffRuntime], query: Any, word: str) -> None:
    client, _ = diff_client
    r = client.get("/report", params=query)
    assert r.status_code == 400 and r.headers["content-type"] == "application/json"
    assert word in r.json()["error"]
