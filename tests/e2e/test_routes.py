"""Routes and the mirror copy (issue 10), end to end: [[route]] and [[shadow]] tables,
header edits on the copy only, per-route run-time control, the rate cap, mirror_for.

fastmirror runs as a subprocess with a TOML file written here; the primary and the
shadows are RecordingServers on loopback; the clients are httpx and raw sockets.
"""

from __future__ import annotations

import json
import math
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import orjson
import pytest

from conftest import RecordingServer, read_response
from test_mirror import fire, wait_metric

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(90)]

MIRROR = "fastmirror_mirror_requests_total"


@pytest.fixture
def fastmirror():
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "fastmirror", *args],
                              capture_output=True, text=True, timeout=60)  # fmt: skip

    return run


def toml(text: str, tmp_path: Path, name: str = "routes.toml") -> Path:
    path = tmp_path / name
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    tmp.replace(path)  # atomic, for SIGHUP
    return path


def shadow_table(name: str, server: RecordingServer, extra: str = "") -> str:
    return f'[[shadow]]\nname = "{name}"\ntarget = "http://{server.address}"\n{extra}\n'


def within_binomial(got: int, n: int, p: float) -> bool:
    return abs(got - n * p) <= 5 * math.sqrt(n * p * (1 - p)) + 1


def test_each_route_mirrors_its_share_to_its_shadows(run_proxy, primary, shadow, tmp_path):
    with RecordingServer("v3") as v3:
        path = toml(
            "mirror_percent = 100\n" + shadow_table("v2", shadow) + shadow_table("v3", v3)
            + '[[route]]\nname = "search"\nprefix = "/api/search"\nmirror_percent = 30\nshadow = ["v2"]\n'
            + '[[route]]\nname = "payments"\nprefix = "/payments"\nshadow = []\n'
            + f'[[route]]\nname = "items"\nprefix = "/api/items"\nmethods = ["GET"]\nshadow = ["v3", "http://{v3.address}"]\n',
            tmp_path)  # fmt: skip
        proxy = run_proxy("--config", str(path), "--access-log", "-", shadow=None)
        n = 600
        targets = ([f"/api/search?q={i}" for i in range(n)] + [f"/payments/{i}" for i in range(50)]
                   + ["/api/../payments/x", "/pay%6Dents/y", "//payments/z"]
                   + [f"/api/items/{i}" for i in range(40)] + [f"/other/{i}" for i in range(30)])
        assert set(fire(proxy, targets)) == {200}
        assert len(primary.wait_for_requests(len(targets), timeout=20)) == len(targets)
        to_v2 = [r.target for r in shadow.wait_quiet(quiet=0.5, timeout=15)]
        to_v3 = [r.target for r in v3.wait_quiet(quiet=0.5, timeout=15)]
        # search: 30% to v2 only; items: every GET to v3 only; payments (however spelled):
        # never; the rest (no route): the top level, 100% to both.
        searched = [t for t in to_v2 if t.startswith("/api/search")]
        assert within_binomial(len(searched), n, 0.3), len(searched)
        assert not [t for t in to_v3 if t.startswith("/api/search")]
        assert sorted(t for t in to_v3 if t.startswith("/api/items")) == sorted(f"/api/items/{i}" for i in range(40))
        assert not [t for t in to_v2 if t.startswith("/api/items")]
        assert not [t for t in to_v2 + to_v3 if "pay" in t], "a payments request was mirrored"
        others = sorted(f"/other/{i}" for i in range(30))
        assert sorted(t for t in to_v2 if t.startswith("/other")) == others
        assert sorted(t for t in to_v3 if t.startswith("/other")) == others
        lines = [json.loads(line) for line in proxy.stdout_text().splitlines() if line.startswith("{")]
        routes = Counter(e["route"] for e in lines if e["role"] == "primary")
        assert routes == {"search": n, "payments": 53, "items": 40, None: 30}, routes


def test_the_copy_has_exactly_the_edits_and_the_primary_copy_none(run_proxy, primary, shadow, tmp_path):
    with RecordingServer("v3") as v3:
        path = toml(
            'shadow_set_header = { "x-env" = "shadow" }\nshadow_remove_header = ["cookie"]\n'
            + shadow_table("v2", shadow, 'remove_header = ["authorization"]\nset_header = { "x-env" = "v2", "x-build" = "42" }')
            + shadow_table("v3", v3), tmp_path)  # fmt: skip
        proxy = run_proxy("--config", str(path), "--mirror-percent", "100", shadow=None)
        head = (b"GET /edit HTTP/1.1\r\nHost: shop.test\r\nAuthorization: Bearer prod-secret\r\n"
                b"Cookie: a=1\r\nX-Env: client\r\nCOOKIE: b=2\r\nX-Keep: yes\r\nx_env: cgi\r\n\r\n")
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as sock:
            sock.sendall(head)
            assert read_response(sock).status == 200
        assert primary.wait_for_requests(1)[0].head == head  # byte for byte
        v2_head = shadow.wait_for_requests(1)[0].head
        v3_head = v3.wait_for_requests(1)[0].head
        marker = b"x-fastmirror-shadow: 1\r\nx-fastmirror-id: "
        assert v2_head.startswith(b"GET /edit HTTP/1.1\r\nHost: shop.test-shadow\r\nX-Keep: yes\r\n"
                                  b"x-env: v2\r\nx-build: 42\r\n" + marker), v2_head
        assert v3_head.startswith(b"GET /edit HTTP/1.1\r\nHost: shop.test-shadow\r\n"
                                  b"Authorization: Bearer prod-secret\r\nX-Keep: yes\r\nx-env: shadow\r\n"
                                  + marker), v3_head
        # set means replaced: every x-env goes, x_env too (a CGI back end reads it as x-env)
        assert b"cookie" not in v2_head.lower() and b"cookie" not in v3_head.lower()
        assert b"client" not in v2_head + v3_head and b"cgi" not in v2_head + v3_head


def test_flags_edit_every_shadow_and_a_framing_name_is_refused(run_proxy, primary, shadow, fastmirror):
    proxy = run_proxy("--mirror-percent", "100", "--shadow-remove-header", "Authorization",
                      "--shadow-set-header", "x-env: shadow")
    with httpx.Client(trust_env=False, timeout=5) as client:
        assert client.get(proxy.url + "/f", headers={"authorization": "x", "x-env": "prod"}).status_code == 200
    got = shadow.wait_for_requests(1)[0]
    assert got.header("authorization") is None and got.header("x-env") == "shadow"
    assert primary.wait_for_requests(1)[0].header("x-env") == "prod"
    bad = fastmirror("check-config", "--primary", "127.0.0.1:9", "--shadow-set-header", "content-length: 5")
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1
    assert "--shadow-set-header: content-length cannot be edited on the copy" in bad.stderr


def test_put_one_route_reaches_every_worker_and_nope_is_404(run_proxy, primary, shadow, tmp_path):
    path = toml("mirror_percent = 100\nworkers = 2\n" + shadow_table("v2", shadow)
                + '[[route]]\nname = "search"\nprefix = "/search"\n'
                + '[[route]]\nname = "cart"\nprefix = "/cart"\nmirror_percent = 50\n', tmp_path)
    proxy = run_proxy("--config", str(path), shadow=None)
    view = proxy.admin("GET", "/mirror").json()
    assert view == {"percent": 100.0, "routes": {"search": {"percent": 100.0}, "cart": {"percent": 50.0}}}
    put = proxy.admin("PUT", "/mirror?route=search&percent=0")
    assert put.status_code == 200 and put.json()["routes"]["search"] == {"percent": 0.0}
    nope = proxy.admin("PUT", "/mirror?route=NOPE&percent=0")
    assert nope.status_code == 404 and nope.json() == {"error": "no route named 'NOPE'; the routes are: search, cart"}
    time.sleep(0.3)  # the supervisor's message reaches both workers
    statuses = []
    for i in range(40):  # new connections, spread over both workers (SO_REUSEPORT)
        with httpx.Client(trust_env=False, timeout=5) as client:
            statuses.append(client.get(f"{proxy.url}/search/{i}").status_code)
            statuses.append(client.get(f"{proxy.url}/x/{i}").status_code)
    assert set(statuses) == {200}
    got = Counter(r.target.split("/")[1] for r in shadow.wait_quiet(quiet=0.5, timeout=10))
    assert got == {"x": 40}, got
    assert proxy.admin("GET", "/config").json()["route"][1]["mirror_percent"] == 50.0


def test_sighup_changes_routes_under_traffic_with_no_failed_request(run_proxy, primary, shadow, tmp_path):
    body = "mirror_percent = 0\n" + shadow_table("v2", shadow)
    path = toml(body + '[[route]]\nname = "a"\nprefix = "/a"\nmirror_percent = 100\n', tmp_path)
    proxy = run_proxy("--config", str(path), shadow=None)
    stop, failures, count = threading.Event(), [], [0]

    def traffic() -> None:
        with httpx.Client(trust_env=False, timeout=5) as client:
            while not stop.is_set():
                for p in ("/a/1", "/b/1"):
                    try:
                        if client.get(proxy.url + p).status_code != 200:
                            failures.append(p)
                    except httpx.HTTPError as exc:
                        failures.append(repr(exc))
                    count[0] += 1

    thread = threading.Thread(target=traffic)
    thread.start()
    try:
        time.sleep(0.5)
        toml(body + '[[route]]\nname = "b"\nprefix = "/b"\nmirror_percent = 100\n', tmp_path)
        proxy.signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while "b" not in proxy.admin("GET", "/mirror").json().get("routes", {}):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        shadow.clear()
        time.sleep(0.5)
    finally:
        stop.set()
        thread.join(10)
    assert failures == [] and count[0] > 20
    after = {r.target for r in shadow.wait_quiet(quiet=0.3, timeout=5)}
    assert after == {"/b/1"}, after


def test_mirror_max_rps_limits_copies_never_the_primary(run_proxy, primary, shadow):
    proxy = run_proxy("--mirror-percent", "100", "--mirror-max-rps", "5")
    start = time.monotonic()
    assert set(fire(proxy, [f"/r/{i}" for i in range(200)])) == {200}
    elapsed = time.monotonic() - start
    assert len(primary.wait_for_requests(200)) == 200
    sent = len(shadow.wait_quiet(quiet=0.5, timeout=10))
    assert 1 <= sent <= 5 + 5 * elapsed + 1, (sent, elapsed)  # a second's burst, then 5/s
    limited = wait_metric(proxy, MIRROR, lambda v: v >= 200 - sent, upstream=shadow.address, outcome="limited")
    assert limited == 200 - sent


def test_mirror_for_turns_mirroring_off_and_put_for_restarts_it(run_proxy, primary, shadow):
    proxy = run_proxy("--mirror-percent", "100", "--mirror-for", "1500ms")
    view = proxy.admin("GET", "/mirror").json()
    assert view["percent"] == 100.0 and 0 < view["remaining_seconds"] <= 1.5
    assert 0 < proxy.metric("fastmirror_mirror_remaining_seconds") <= 1.5
    with httpx.Client(trust_env=False, timeout=5) as client:
        assert client.get(proxy.url + "/before").status_code == 200
        assert [r.target for r in shadow.wait_for_requests(1)] == ["/before"]
        time.sleep(2.7)  # past the deadline and one sweep
        assert client.get(proxy.url + "/after").status_code == 200
        assert proxy.admin("GET", "/mirror").json() == {"percent": 0.0}
        assert "mirroring turned itself off" in proxy.stderr_text()
        put = proxy.admin("PUT", "/mirror?percent=100&for=1h")
        assert put.status_code == 200 and 3590 < put.json()["remaining_seconds"] <= 3600
        assert client.get(proxy.url + "/again").status_code == 200
    assert [r.target for r in shadow.wait_quiet(quiet=0.5)] == ["/before", "/again"]
    assert "fastmirror_mirror_remaining_seconds" in proxy.admin("GET", "/metrics").text
    bad = proxy.admin("PUT", "/mirror?for=soon")
    assert bad.status_code == 400 and "for:" in bad.json()["error"]


def test_a_route_that_never_matches_is_found_through_spellings(fastmirror, tmp_path):
    path = toml('primary = "127.0.0.1:9000"\nshadow = ["127.0.0.1:9001"]\n'
                '[[route]]\nname = "pay"\nprefix = "/pay%6Dents"\nshadow = []\n'
                '[[route]]\nname = "sub"\nprefix = "/payments/x"\n', tmp_path)
    result = fastmirror("check-config", str(path))
    assert result.returncode == 0 and "route 'sub' can never match: route 'pay'" in result.stderr


def test_check_config_prints_routes_and_warns_of_one_that_never_matches(fastmirror, tmp_path):
    path = toml('primary = "127.0.0.1:9000"\nshadow = ["127.0.0.1:9001"]\nmirror_percent = 5\n'
                '[[route]]\nname = "api"\nprefix = "/api"\n'
                '[[route]]\nname = "search"\nprefix = "/api/search"\nmirror_percent = 10\n', tmp_path)
    result = fastmirror("check-config", str(path))
    assert result.returncode == 0, result.stderr
    assert result.stderr == ("fastmirror: warning: route 'search' can never match: route 'api' "
                             "(prefix /api) comes first and takes its requests\n")
    routes = orjson.loads(result.stdout)["route"]
    assert routes[0] == {"name": "api", "prefix": "/api", "methods": None, "mirror_percent": 5.0,
                         "mirror_methods": ["GET", "HEAD", "OPTIONS"], "shadow": ["127.0.0.1:9001"],
                         "mirror_key": None}
    assert routes[1]["mirror_percent"] == 10.0


@pytest.mark.parametrize(("text", "message"), [
    ('[[route]]\nprefix = "/a"\n', "route #1: name is required"),
    ('[[route]]\nname = "a"\n[[route]]\nname = "a"\n', "route 'a': two routes have this name"),
    ('[[route]]\nname = "a"\nprefx = "/a"\n', "route 'a': unknown key 'prefx' (did you mean 'prefix'?)"),
    ('[[route]]\nname = "a"\nshadow = ["v9"]\n', "route 'a': shadow 'v9' is not one of the shadows (known: 127.0.0.1:9001)"),
    ('[[route]]\nname = "a"\nmirror_percent = 101\n', "route 'a': mirror_percent: must be a number from 0 to 100, got 101"),
    ('[[route]]\nname = "a"\nprefix = "api"\n', "route 'a': prefix: must be a path prefix starting with \"/\""),
    ('[[route]]\nname = "a b"\n', "route 'a b': name: must be a name of letters"),
    ('[[shadow]]\nname = "v2"\n', "shadow #1: target is required"),
    ('[[shadow]]\ntarget = "127.0.0.1:9001"\nset_header = { "x" = "a\\r\\nb" }\n',
     "shadow #1: set_header: the value of x must be text without CR, LF"),
    ('[[shadow]]\ntarget = "127.0.0.1:9001"\nremove_header = ["Transfer_Encoding"]\n',
     "shadow #1: remove_header: transfer_encoding cannot be edited on the copy"),
    ('[[shadow]]\ntarget = "127.0.0.1:9001"\nmax_rps = 0\n', "shadow #1: max_rps: must be a number of copies a second > 0"),
    ('[[shadow]]\nname = "v2:80"\ntarget = "127.0.0.1:9001"\n', "shadow 'v2:80': name: must be a name of letters"),
    ('[[route]]\nname = "a"\nprefix = "/a\tb"\n', "route 'a': prefix: must be a path prefix"),
])  # fmt: skip
def test_bad_routes_and_shadows_are_one_line_exit_2(fastmirror, tmp_path, text, message):
    shadows = "" if "[[shadow]]" in text else 'shadow = ["127.0.0.1:9001"]\n'
    path = toml(f'primary = "127.0.0.1:9000"\n{shadows}{text}', tmp_path)
    result = fastmirror("check-config", str(path))
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert result.stderr.startswith(f"fastmirror: error: {message}"), result.stderr
    assert str(path) in result.stderr


def test_a_route_to_one_of_two_shadows_is_compared_at_once_and_charges_no_other(run_proxy, primary, shadow, tmp_path):
    """Diffing waits only for the shadows a request's copy went to (review finding 1)."""
    with RecordingServer("v3") as v3:
        path = toml("mirror_percent = 100\n" + shadow_table("v2", shadow) + shadow_table("v3", v3)
                    + '[[route]]\nname = "r"\nprefix = "/r"\nshadow = ["v2"]\n', tmp_path)
        proxy = run_proxy("--config", str(path), "--diff", shadow=None)
        assert set(fire(proxy, [f"/r/{i}" for i in range(10)])) == {200}
        deadline = time.monotonic() + 10
        while True:
            snap = proxy.admin("GET", "/diffs").json()["upstreams"]
            done = sum(e.get("compared", 0) for e in snap.get(shadow.address, {}).get("endpoints", {}).values())
            if done >= 10 or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert done == 10, snap  # at once, not after the 60 s wait for v3
        assert v3.address not in snap or not any(
            e.get("skipped") for e in snap[v3.address].get("endpoints", {}).values()), snap


def test_the_copy_loses_removed_names_from_chunked_trailers(run_proxy, primary, shadow, tmp_path):
    proxy = run_proxy("--mirror-percent", "100", "--mirror-methods", "ALL",
                      "--shadow-remove-header", "authorization")
    req = (b"POST /t HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n"
           b"0\r\nAuthorization: Bearer trailer-secret\r\nX-Keep: 1\r\n\r\n")
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as sock:
        sock.sendall(req)
        assert read_response(sock).status == 200
    assert b"trailer-secret" in primary.wait_for_requests(1)[0].raw  # the primary's copy is whole
    raw = shadow.wait_for_requests(1)[0].raw
    assert b"trailer-secret" not in raw and raw.endswith(b"0\r\nX-Keep: 1\r\n\r\n"), raw


def test_mirror_max_rps_is_per_shadow_across_workers(run_proxy, primary, shadow):
    proxy = run_proxy("--mirror-percent", "100", "--mirror-max-rps", "10", "--workers", "2")
    start = time.monotonic()
    statuses = []
    for i in range(40):  # new connections: both workers take some
        with httpx.Client(trust_env=False, timeout=5) as client:
            statuses.append(client.get(f"{proxy.url}/w/{i}").status_code)
    elapsed = time.monotonic() - start
    assert set(statuses) == {200}
    sent = len(shadow.wait_quiet(quiet=0.5, timeout=10))
    assert 1 <= sent <= 10 + 10 * elapsed + 2, (sent, elapsed)  # not 2x the cap


@pytest.mark.parametrize(("query", "body", "status", "error"), [
    ("route=&percent=0", b"", 400, "route is empty"),
    ("route=search&for=10m", b"", 400, "for turns all mirroring off"),
    ("route=search", b'{"percent": 5, "route": "search"}', 400, "route and for go in the query"),
])  # fmt: skip
def test_put_mirror_refuses_what_would_change_the_top_level_unasked(run_proxy, primary, shadow, tmp_path,
                                                                     query, body, status, error):
    path = toml(shadow_table("v2", shadow) + '[[route]]\nname = "search"\nprefix = "/s"\n', tmp_path)
    proxy = run_proxy("--config", str(path), shadow=None)
    with httpx.Client(trust_env=False, timeout=5) as client:
        got = client.put(f"{proxy.admin_url}/mirror?{query}", content=body)
    assert got.status_code == status and error in got.json()["error"], got.text
    assert proxy.admin("GET", "/mirror").json()["percent"] == 100.0
