"""Response diffing end to end: real primary, shadow and secondary, fastmirror as a subprocess.

The primary and the shadow differ in one JSON field on one endpoint, in a header on
another and in status on a third; the secondary differs from the primary only in a
timestamp. The diff report must name exactly those endpoints and fields, count the
timestamp as noise, and the client must still get the primary's bytes unchanged.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time

import httpx
import orjson
import pytest
from upstreams import StreamServer

pytestmark = pytest.mark.e2e


class ShopApp(StreamServer):
    """A tiny JSON service on 127.0.0.1 in its own thread: 'primary', 'shadow' or 'secondary'."""

    def __init__(self, version: str) -> None:
        super().__init__(self._serve_shop)
        self.version = version

    def respond(self, path: str) -> tuple[int, str, bytes]:
        shadow = self.version == "shadow"
        fixed = 1700000000.0
        stamp = time.time() if self.version == "secondary" else fixed
        if path.startswith("/users/"):       # JSON field: price number -> string
            body = {"id": int(path.rsplit("/", 1)[1]), "price": "4.99" if shadow else 4.99,
                    "ts": stamp}
            return 200, "application/json", orjson.dumps(body)
        if path == "/profile":               # a header: content-type
            return 200, "text/json" if shadow else "application/json", b'{"ok": true}'
        if path == "/orders":                # the status
            return (503 if shadow else 200), "application/json", b'{"orders": []}'
        # Same everywhere but for a timestamp that differs from instance to instance,
        # the secondary's included: noise, not a regression.
        stamp = fixed if self.version == "primary" else time.time()
        return 200, "application/json", orjson.dumps({"ok": True, "ts": stamp, "n": 1})

    async def _serve_shop(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            path = head.split(b" ", 2)[1].decode()
            status, ctype, body = self.respond(path)
            writer.write(b"HTTP/1.1 %d X\r\ncontent-type: %s\r\ncontent-length: %d\r\n\r\n%s"
                         % (status, ctype.encode(), len(body), body))
            await writer.drain()


@pytest.fixture
def apps():
    with ShopApp("primary") as p, ShopApp("shadow") as s, ShopApp("secondary") as sec:
        yield p, s, sec


PATHS = ["/users/1", "/users/22", "/users/333", "/profile", "/orders", "/status"]


def wait_compared(proxy, n: int, timeout: float = 10.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        snap = proxy.admin("GET", "/diffs").json()
        total = sum(e["compared"] + sum(e["skipped"].values())
                    for u in snap["upstreams"].values() for e in u["endpoints"].values())
        if total >= n or time.monotonic() > deadline:
            return snap
        time.sleep(0.1)


def test_diff_names_the_differing_fields_and_counts_noise(run_proxy, apps, tmp_path):
    primary, shadow, secondary = apps
    diff_log = tmp_path / "diffs.jsonl"
    proxy = run_proxy("--diff", "--secondary", secondary.address, "--diff-log", str(diff_log),
                      primary=primary.address, shadow=shadow.address)
    rounds = 5
    with httpx.Client(base_url=proxy.url, trust_env=False, timeout=5) as client:
        for _ in range(rounds):
            for path in PATHS:
                got = client.get(path)
                status, ctype, body = primary.respond(path)
                # The client always gets the primary's answer, byte for byte.
                assert got.status_code == status
                assert got.headers["content-type"] == ctype
                if path.startswith("/users/") or path == "/status":
                    assert orjson.loads(got.content)["ts"] == 1700000000.0
                else:
                    assert got.content == body
    snap = wait_compared(proxy, rounds * len(PATHS))
    endpoints = snap["upstreams"][shadow.address]["endpoints"]
    assert set(endpoints) == {"GET /users/{id}", "GET /profile", "GET /orders", "GET /status"}

    users = endpoints["GET /users/{id}"]
    assert users["compared"] == 3 * rounds and users["mismatch"] == 3 * rounds
    assert [f["path"] for f in users["fields"]] == ["$.price"]
    example = users["fields"][0]["example"]
    assert example["primary"] == 4.99 and example["shadow"] == "4.99"

    profile = endpoints["GET /profile"]
    assert profile["mismatch"] == rounds
    assert [f["path"] for f in profile["fields"]] == ["header:content-type"]

    orders = endpoints["GET /orders"]
    assert orders["mismatch"] == rounds
    assert [f["path"] for f in orders["fields"]] == ["status"]

    status = endpoints["GET /status"]
    assert status["mismatch"] == 0 and status["noise"] == rounds
    assert [f["path"] for f in status["noise_fields"]] == ["$.ts"]
    # The secondary is not a shadow under test: no diffs of its own.
    assert secondary.address not in snap["upstreams"]

    # Metrics, with bounded labels.
    assert proxy.metric("fastmirror_diff_total", upstream=shadow.address,
                        endpoint="GET /users/{id}", result="mismatch") == 3 * rounds
    assert proxy.metric("fastmirror_diff_total", upstream=shadow.address,
                        endpoint="GET /status", result="noise") == rounds

    # The diff log has the full pair of every mismatch.
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        lines = diff_log.read_bytes().splitlines() if diff_log.exists() else []
        if len(lines) >= 5 * rounds:
            break
        time.sleep(0.1)
    records = [orjson.loads(line) for line in lines]
    assert len(records) == 5 * rounds  # users x3, profile, orders; never the noise
    rec = next(r for r in records if r["endpoint"] == "GET /orders")
    assert rec["primary"]["status"] == 200 and rec["shadow"]["status"] == 503

    # Readable summaries.
    text = proxy.admin("GET", "/diffs?format=text").text
    assert "$.price" in text and "GET /users/{id}" in text
    html = proxy.admin("GET", "/diffs?format=html")
    assert html.headers["content-type"].startswith("text/html") and "$.price" in html.text


def test_report_gates_a_pipeline(run_proxy, apps):
    primary, shadow, _ = apps
    proxy = run_proxy("--diff", primary=primary.address, shadow=shadow.address)
    with httpx.Client(base_url=proxy.url, trust_env=False, timeout=5) as client:
        for _ in range(4):
            for path in PATHS:
                client.get(path)
    wait_compared(proxy, 4 * len(PATHS))
    admin = f"127.0.0.1:{proxy.admin_port}"

    def report(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "fastmirror", "report", "--admin", admin, *args],
                              capture_output=True, text=True, timeout=30)

    failing = report("--max-mismatch", "0.1%")
    assert failing.returncode == 1, failing.stdout + failing.stderr
    assert "FAIL" in failing.stdout and "mismatch" in failing.stdout
    passing = report("--max-mismatch", "100%", "--max-p99-ratio", "1000")
    assert passing.returncode == 0, passing.stdout + passing.stderr
    summary = subprocess.run([sys.executable, "-m", "fastmirror", "diffs", "--admin", admin],
                             capture_output=True, text=True, timeout=30)
    assert summary.returncode == 0 and "$.price" in summary.stdout


def test_diff_off_by_default_and_never_touches_the_client(run_proxy, apps):
    primary, shadow, _ = apps
    proxy = run_proxy(primary=primary.address, shadow=shadow.address)
    with httpx.Client(base_url=proxy.url, trust_env=False, timeout=5) as client:
        assert client.get("/orders").status_code == 200
    assert proxy.admin("GET", "/diffs").json() == {"upstreams": {}}
