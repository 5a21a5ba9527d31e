"""Signals and service integration: SIGHUP reload, draining on SIGTERM, systemd notify."""

from __future__ import annotations

import os
import signal
import socket
import tempfile
import threading
import time

import httpx
import orjson
import pytest

from conftest import RecordingServer, read_response, write_toml

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(60)]


def slow_request_in_thread(url: str, result: dict) -> threading.Thread:
    def run() -> None:
        try:
            with httpx.Client(trust_env=False, timeout=10) as client:
                resp = client.get(url)
                result["status"], result["body"] = resp.status_code, resp.content
        except Exception as exc:
            result["error"] = repr(exc)

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def mirror_percent(proxy) -> float:
    return float(orjson.loads(proxy.admin("GET", "/mirror").content)["percent"])


def test_sighup_reloads_config_without_dropping_in_flight(run_proxy, primary, shadow):
    proxy = run_proxy(config={"mirror_percent": 100})
    assert proxy.config_path is not None
    assert mirror_percent(proxy) == 100
    keep = socket.create_connection(("127.0.0.1", proxy.port), timeout=5)  # an idle keep-alive connection
    keep.sendall(b"GET /keep/1 HTTP/1.1\r\nHost: fm.test\r\n\r\n")
    assert read_response(keep).status == 200

    result: dict = {}
    worker = slow_request_in_thread(proxy.url + "/slow?ms=1000", result)
    assert [r for r in primary.wait_for_requests(2) if r.target.startswith("/slow")], "slow request not in flight"
    text = proxy.config_path.read_text().replace("mirror_percent = 100", "mirror_percent = 0")
    assert "mirror_percent = 0" in text
    proxy.config_path.write_text(text)
    proxy.signal(signal.SIGHUP)

    deadline = time.monotonic() + 5
    while mirror_percent(proxy) != 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert mirror_percent(proxy) == 0, proxy.describe()
    worker.join(10)
    assert result.get("status") == 200 and result["body"] == b"hello from primary\n", result
    assert proxy.proc.poll() is None

    mirrored_before = len(shadow.wait_for_requests(2))  # /keep/1 and /slow were mirrored
    keep.sendall(b"GET /keep/2 HTTP/1.1\r\nHost: fm.test\r\n\r\n")  # same connection, after the reload
    assert read_response(keep).status == 200
    keep.close()
    with httpx.Client(trust_env=False, timeout=5) as client:
        for i in range(10):
            assert client.get(f"{proxy.url}/after/{i}").status_code == 200
    time.sleep(0.3)
    assert len(shadow.requests) == mirrored_before == 2
    assert len(primary.requests) == 13


def test_sighup_with_bad_config_keeps_running(run_proxy, primary, shadow):
    proxy = run_proxy(config={"mirror_percent": 100})
    write_toml(proxy.config_path, {"listen": proxy.address, "primary": primary.address,
                                   "mirror_percent": 250})  # invalid
    proxy.signal(signal.SIGHUP)
    time.sleep(0.5)
    assert proxy.proc.poll() is None, proxy.describe()
    assert mirror_percent(proxy) == 100
    with httpx.Client(trust_env=False, timeout=5) as client:
        assert client.get(proxy.url + "/").status_code == 200


@pytest.mark.parametrize("workers", [1, 2])
def test_sighup_refuses_a_shadow_that_is_the_primary_under_another_name(run_proxy, primary, shadow, workers):
    """The start-up check that resolves names runs on SIGHUP too: one line, old settings kept."""
    proxy = run_proxy(config={"mirror_percent": 100, "workers": workers})
    alias = primary.address.replace("127.0.0.1", "localhost")
    write_toml(proxy.config_path, {"listen": proxy.address, "primary": primary.address,
                                   "shadow": [alias], "mirror_percent": 50, "workers": workers})
    proxy.signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    while "not reloaded" not in proxy.stderr_text() and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.3 * workers)  # a worker's line, if one came
    lines = [line for line in proxy.stderr_text().splitlines() if "not reloaded" in line]
    if not lines and socket.getaddrinfo("localhost", None) == []:
        pytest.skip("localhost does not resolve here")
    assert len(lines) == 1, lines
    assert f"shadow: {alias} is the primary {primary.address} under another name" in lines[0]
    assert mirror_percent(proxy) == 100
    with httpx.Client(trust_env=False, timeout=5) as client:
        assert client.get(proxy.url + "/").status_code == 200
    assert [r.target for r in shadow.wait_for_requests(1)] == ["/"]


def test_ready_is_503_while_draining_and_health_still_answers(run_proxy, primary):
    proxy = run_proxy(shadow=None)
    assert proxy.admin("GET", "/ready").status_code == 200
    result: dict = {}
    worker = slow_request_in_thread(proxy.url + "/slow?ms=2000", result)
    assert primary.wait_for_requests(1), "slow request not in flight"
    proxy.signal(signal.SIGTERM)
    deadline = time.monotonic() + 1.5
    ready = None
    while time.monotonic() < deadline:
        ready = proxy.admin("GET", "/ready", timeout=1).status_code
        if ready == 503:
            break
        time.sleep(0.05)
    assert ready == 503, proxy.describe()
    assert proxy.admin("GET", "/healthz", timeout=1).status_code == 200
    assert proxy.admin("GET", "/metrics", timeout=1).status_code == 200
    worker.join(10)
    assert result.get("status") == 200, result
    assert proxy.wait(timeout=8) == 0, proxy.describe()


def test_sd_notify_ready(run_proxy, primary):
    tmpdir = tempfile.mkdtemp(prefix="fm-notify-", dir="/tmp")  # short: AF_UNIX paths max 107 bytes
    path = os.path.join(tmpdir, "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        sock.bind(path)
        proxy = run_proxy(shadow=None, env={"NOTIFY_SOCKET": path})
        sock.settimeout(5)
        messages = []
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not any(b"READY=1" in m for m in messages):
            messages.append(sock.recv(4096))
        assert any(b"READY=1" in m.split(b"\n") for m in messages), messages
        # READY=1 is sent once listening: by now the port answers.
        with httpx.Client(trust_env=False, timeout=5) as client:
            assert client.get(proxy.url + "/").status_code == 200
    finally:
        sock.close()
        os.unlink(path)
        os.rmdir(tmpdir)


def test_sighup_moves_traffic_to_a_new_primary(run_proxy, primary, shadow):
    """A reload that names another primary: new requests go there, the old pool is let go."""
    proxy = run_proxy(config={"mirror_percent": 0})
    with httpx.Client(trust_env=False, timeout=5) as client:
        assert client.get(proxy.url + "/before").status_code == 200
    assert [r.target for r in primary.wait_for_requests(1)] == ["/before"]
    with RecordingServer("primary2") as primary2:
        text = proxy.config_path.read_text().replace(primary.address, primary2.address)
        assert primary2.address in text
        proxy.config_path.write_text(text)
        proxy.signal(signal.SIGHUP)
        deadline = time.monotonic() + 5
        while proxy.admin("GET", "/config").json()["primary"] != primary2.address:
            assert time.monotonic() < deadline, proxy.describe()
            time.sleep(0.05)
        with httpx.Client(trust_env=False, timeout=5) as client:
            for i in range(3):
                got = client.get(f"{proxy.url}/after/{i}")
                assert got.status_code == 200 and got.headers["x-upstream"] == "primary2"
        assert len(primary2.wait_for_requests(3)) == 3
        assert len(primary.requests) == 1


def test_in_flight_request_is_logged_with_the_primary_it_used(run_proxy, primary, shadow, tmp_path):
    """Reload bug: after a SIGHUP that names a new primary, a request that started before
    it was logged with the new primary's address; it went to the old one."""
    log_path = tmp_path / "access.log"
    proxy = run_proxy(config={"mirror_percent": 0, "access_log": str(log_path)})
    with RecordingServer("primary2") as primary2:
        result: dict = {}
        worker = slow_request_in_thread(proxy.url + "/slow?ms=1000", result)
        assert primary.wait_for_requests(1), "slow request not in flight"
        proxy.config_path.write_text(
            proxy.config_path.read_text().replace(primary.address, primary2.address))
        proxy.signal(signal.SIGHUP)
        deadline = time.monotonic() + 5
        while proxy.admin("GET", "/config").json()["primary"] != primary2.address:
            assert time.monotonic() < deadline, proxy.describe()
            time.sleep(0.05)
        with httpx.Client(trust_env=False, timeout=5) as client:
            assert client.get(proxy.url + "/after").headers["x-upstream"] == "primary2"
        worker.join(10)
        assert result.get("status") == 200, result
        deadline = time.monotonic() + 5
        records: list = []
        while len(records) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
            if log_path.exists():
                records = [orjson.loads(line) for line in log_path.read_bytes().splitlines()]
        used = {r["path"]: r["upstream"] for r in records}
        assert used == {"/slow?ms=1000": primary.address, "/after": primary2.address}, records
