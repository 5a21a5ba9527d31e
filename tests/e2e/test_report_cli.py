"""`fastmirror report` and `fastmirror diffs` as subprocesses: exit 0 pass, 1 fail, 2 error.

Against a stand-in admin endpoint serving canned /metrics and /diffs (so the figures
are known), and once against a real supervisor with two workers.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import orjson
import pytest
from conftest import free_port

from fastmirror.ops.metrics import Registry

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(90)]

P = "127.0.0.1:9000"
S = "127.0.0.1:9001"


def canned_metrics(shadow_seconds: float = 0.0118) -> bytes:
    """A real Registry's exposition: 200 requests, the shadow slower than the primary."""
    reg = Registry(version="test", core="python", process=False)
    for _ in range(200):
        reg.upstream("primary", P).observe(0.001, 200)
        reg.upstream("shadow", S).observe(shadow_seconds, 200)
    reg.mirror(S).sent = 200
    return reg.render()


DIFFS = {"upstreams": {S: {"endpoints": {
    "GET /api/search": {"compared": 200, "match": 199, "mismatch": 1, "noise": 0, "skipped": {},
                        "fields": [{"path": "$.total", "count": 1,
                                    "example": {"request_id": "r", "target": "/api/search",
                                                "primary": 3, "shadow": 4}}],
                        "noise_fields": []},
}}}}  # fmt: skip


class StandIn:
    """A tiny admin endpoint in a thread: {path with query: (status, content type, body)}."""

    def __init__(self) -> None:
        self.routes: dict[str, tuple[int, str, bytes]] = {
            "/metrics": (200, "text/plain; version=0.0.4; charset=utf-8", canned_metrics()),
            "/diffs": (200, "application/json", orjson.dumps(DIFFS)),
            "/diffs?format=text": (200, "text/plain; charset=utf-8", b"shadow 127.0.0.1:9001: canned text\n"),
            "/diffs?format=html": (200, "text/html; charset=utf-8", b"<!doctype html><p>canned</p>\n"),
        }
        self.requested: list[str] = []
        routes, requested = self.routes, self.requested

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                requested.append(self.path)
                status, ctype, body = routes.get(self.path, (404, "application/json", b'{"error": "no"}'))
                self.send_response(status)
                self.send_header("content-type", ctype)
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.address = f"127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


@pytest.fixture
def admin() -> Iterator[StandIn]:
    stand_in = StandIn()
    yield stand_in
    stand_in.close()


def fastmirror(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "fastmirror", *args],
                          check=False, capture_output=True, text=True, timeout=60)  # fmt: skip


def one_error_line(result: subprocess.CompletedProcess[str], *words: str) -> str:
    assert result.returncode == 2, result
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("fastmirror: error: "), result.stderr
    for word in words:
        assert word in lines[0]
    assert result.stdout == ""
    return lines[0]


# -- report ------------------------------------------------------------------------------


def test_report_pass_exits_0(admin: StandIn) -> None:
    result = fastmirror("report", "--admin", admin.address, "--max-p99-ratio", "20", "--max-mismatch", "1%",
                        "--min-requests", "100")  # fmt: skip
    assert result.returncode == 0, result.stderr
    lines = result.stdout.rstrip("\n").splitlines()
    assert lines[0].startswith(f"shadow {S}: 200 mirrored requests")
    assert any("GET /api/search" in line for line in lines)
    assert lines[-1] == "PASS: 3 checks hold for 1 shadow"
    assert admin.requested == ["/metrics", "/diffs"]


def test_report_fail_exits_1(admin: StandIn) -> None:
    result = fastmirror("report", "--admin", admin.address, "--max-p99-ratio", "1.2", "--max-mismatch", "0.1%")
    assert result.returncode == 1, result.stderr
    lines = result.stdout.rstrip("\n").splitlines()
    assert lines[-2].startswith(f"FAIL: shadow {S} p99 ratio ") and lines[-2].endswith(" > 1.2")
    assert lines[-1] == f"FAIL: shadow {S} mismatch rate 0.5% > 0.1% (worst: GET /api/search 0.5%)"
    assert result.stderr == ""


def test_report_min_requests_fails(admin: StandIn) -> None:
    result = fastmirror("report", "--admin", admin.address, "--min-requests", "201")
    assert result.returncode == 1
    assert result.stdout.rstrip().splitlines()[-1] == f"FAIL: shadow {S} 200 mirrored requests < 201 required"


def test_report_json(admin: StandIn) -> None:
    result = fastmirror("report", "--admin", admin.address, "--format", "json", "--max-p50-ratio", "2")
    assert result.returncode == 1
    report = orjson.loads(result.stdout)
    assert report["verdict"] == "fail" and report["thresholds"]["max_p50_ratio"] == 2.0
    assert report["shadows"][S]["requests"] == 200
    assert report["shadows"][S]["endpoints"]["GET /api/search"]["mismatch"] == 1


def test_report_no_diffing_still_judges_latency(admin: StandIn) -> None:
    admin.routes["/diffs"] = (200, "application/json", b'{"upstreams": {}}')
    admin.routes["/metrics"] = (200, "text/plain", canned_metrics(0.001))
    assert fastmirror("report", "--admin", admin.address, "--max-p99-ratio", "1.2").returncode == 0


@pytest.mark.parametrize(
    ("args", "words"),
    [(["--max-p99-ratio", "abc"], ["--max-p99-ratio", "ratio"]),
     (["--max-mismatch", "5"], ["--max-mismatch", "percentage"]),
     (["--max-error-rate-diff", "-1%"], ["--max-error-rate-diff"]),
     (["--min-requests", "many"], ["--min-requests"]),
     (["--format", "xml"], ["--format", "xml"]),
     (["--admin", "nope"], ["--admin", "HOST:PORT"]),
     (["--bogus"], ["--bogus"])],
)  # fmt: skip
def test_report_bad_flags_exit_2(admin: StandIn, args: list[str], words: list[str]) -> None:
    one_error_line(fastmirror("report", "--admin", admin.address, *args), *words)
    assert admin.requested == []  # refused before asking anything


def test_report_unreachable_exits_2() -> None:
    port = free_port()
    one_error_line(fastmirror("report", "--admin", f"127.0.0.1:{port}"),
                   f"cannot reach the admin endpoint at 127.0.0.1:{port}")  # fmt: skip


def test_report_admin_error_exits_2(admin: StandIn) -> None:
    admin.routes["/metrics"] = (500, "application/json", b'{"error": "internal error"}')
    one_error_line(fastmirror("report", "--admin", admin.address), "/metrics", "500", "internal error")


def test_report_not_json_exits_2(admin: StandIn) -> None:
    admin.routes["/diffs"] = (200, "text/html", b"<html>not the admin</html>")
    one_error_line(fastmirror("report", "--admin", admin.address), "/diffs", "not JSON")


def test_report_timeout_exits_2() -> None:
    """An admin that accepts and never answers: the 5 s timeout, then one line, exit 2."""
    import socket

    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        start = time.monotonic()
        result = fastmirror("report", "--admin", f"127.0.0.1:{listener.getsockname()[1]}")
        assert 4 < time.monotonic() - start < 30
    one_error_line(result, "timed out")


# -- diffs -------------------------------------------------------------------------------


def test_diffs_text_by_default(admin: StandIn) -> None:
    result = fastmirror("diffs", "--admin", admin.address)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "shadow 127.0.0.1:9001: canned text\n"
    assert admin.requested == ["/diffs?format=text"]


def test_diffs_json_and_html(admin: StandIn) -> None:
    result = fastmirror("diffs", "--admin", admin.address, "--format", "json")
    assert result.returncode == 0 and orjson.loads(result.stdout) == DIFFS
    result = fastmirror("diffs", "--admin", admin.address, "--format", "html")
    assert result.returncode == 0 and result.stdout == "<!doctype html><p>canned</p>\n"


def test_diffs_errors_exit_2(admin: StandIn) -> None:
    one_error_line(fastmirror("diffs", "--admin", f"127.0.0.1:{free_port()}"), "cannot reach")
    one_error_line(fastmirror("diffs", "--admin", admin.address, "--format", "pdf"), "--format")
    admin.routes["/diffs?format=text"] = (503, "text/plain", b"draining")
    one_error_line(fastmirror("diffs", "--admin", admin.address), "503")


# -- against a real supervisor -----------------------------------------------------------


def test_report_and_diffs_against_a_supervisor(run_proxy, primary, shadow) -> None:
    proxy = run_proxy("--workers", "2", "--diff")
    with httpx.Client(trust_env=False, timeout=5) as client:
        for i in range(20):
            assert client.get(f"{proxy.url}/items/{i}").status_code == 200
    shadow.wait_for_requests(20)
    admin_address = f"127.0.0.1:{proxy.admin_port}"
    deadline = time.monotonic() + 10
    while True:  # the shadow's responses are counted just after it answered
        result = fastmirror("report", "--admin", admin_address, "--min-requests", "20", "--format", "json")
        if result.returncode != 1 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert result.returncode == 0, (result.stdout, result.stderr)
    report = orjson.loads(result.stdout)
    assert report["shadows"][shadow.address]["requests"] == 20
    result = fastmirror("diffs", "--admin", admin_address, "--format", "json")
    assert result.returncode == 0, result.stderr
    assert "upstreams" in orjson.loads(result.stdout)
    assert fastmirror("diffs", "--admin", admin_address).returncode == 0
