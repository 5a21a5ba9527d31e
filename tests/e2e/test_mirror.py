"""Mirroring end to end: what the shadows get, how much of it, and that they never matter.

The shadow's copy must be the client's bytes with exactly two changes: Host becomes
`name-shadow[:port]` (unless --no-shadow-host-suffix) and the two marker header lines
are added. A shadow that is slow, never answers, resets or is not there changes nothing
the client sees, which is measured against a healthy-shadow run in the same test.
"""

from __future__ import annotations

import math
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterable

import httpx
import orjson
import pytest

from conftest import Proxy, RecordingServer, dead_port, pattern, percentile, read_response
from upstreams import Recorded

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(90)]

MIRROR = "fastmirror_mirror_requests_total"
DEPTH = "fastmirror_mirror_queue_depth"
QUIET = 0.3


def connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=5)


def send_raw(proxy: Proxy, req: bytes) -> bytes:
    with connect(proxy.port) as sock:
        sock.sendall(req)
        resp = read_response(sock)
    assert resp.status == 200, resp.raw[:300]
    return resp.body


def fire(proxy: Proxy, targets: Iterable[str], headers: dict[str, str] | None = None, threads: int = 4) -> list[int]:
    """GET every target over keep-alive connections from a few threads; the statuses."""
    targets = list(targets)
    statuses: list[int] = [0] * len(targets)
    errors: list[str] = []

    def worker(idx: list[int]) -> None:
        try:
            with httpx.Client(trust_env=False, timeout=10) as client:
                for i in idx:
                    statuses[i] = client.get(proxy.url + targets[i], headers=headers).status_code
        except Exception as exc:
            errors.append(repr(exc))

    parts = [list(range(k, len(targets), threads)) for k in range(threads)]
    pool = [threading.Thread(target=worker, args=(p,)) for p in parts]
    for t in pool:
        t.start()
    for t in pool:
        t.join(60)
    assert not errors, errors[:3]
    return statuses


def shadow_variants(primary_raw: bytes, shadow_id: str, host_from: bytes | None, host_to: bytes | None) -> set[bytes]:
    """The shadow copy the contract allows for a request the primary got as primary_raw."""
    head_end = primary_raw.index(b"\r\n\r\n") + 2
    head, rest = primary_raw[:head_end], primary_raw[head_end:]
    if host_from is not None:
        old, new = b"\r\nHost: " + host_from + b"\r\n", b"\r\nHost: " + host_to + b"\r\n"
        assert head.count(old) == 1
        head = head.replace(old, new)
    marks = [b"x-fastmirror-shadow: 1\r\n", b"x-fastmirror-id: " + shadow_id.encode() + b"\r\n"]
    return {head + marks[0] + marks[1] + rest, head + marks[1] + marks[0] + rest}


def the_shadow_copy(primary_rec: Recorded, shadow: RecordingServer) -> Recorded:
    recs = [r for r in shadow.wait_for_requests(1) if r.target == primary_rec.target]
    assert len(recs) == 1, [r.target for r in shadow.requests]
    return recs[0]


def wait_metric(proxy: Proxy, name: str, pred, timeout: float = 5.0, **labels: str) -> float:
    deadline = time.monotonic() + timeout
    value = proxy.metric(name, **labels)
    while not pred(value) and time.monotonic() < deadline:
        time.sleep(0.1)
        value = proxy.metric(name, **labels)
    return value


# -- what the shadow receives -------------------------------------------------------


@pytest.mark.parametrize("host", [b"mirror.test:8080", b"mirror.test", b"127.0.0.1:9999"])
def test_shadow_copy_is_client_bytes_plus_host_and_markers(run_proxy, primary, shadow, host):
    proxy = run_proxy("--mirror-percent", "100")
    req = (
        b"GET /copy/path?q=1&r=%20two HTTP/1.1\r\nHost: " + host + b"\r\nUser-Agent: raw/1.0\r\n"
        b"X-Mixed-Case: Value  with   spaces\r\nx-dup: 1\r\nX-Dup: 2\r\nAccept: */*\r\n\r\n"
    )
    send_raw(proxy, req)
    [prec] = primary.wait_for_requests(1)
    assert prec.raw == req
    srec = the_shadow_copy(prec, shadow)
    sid = srec.header("x-fastmirror-id")
    assert sid and len(srec.header_all("x-fastmirror-id")) == 1
    name, sep, port = host.partition(b":")
    assert srec.raw in shadow_variants(prec.raw, sid, host, name + b"-shadow" + sep + port)


def test_no_shadow_host_suffix(run_proxy, primary, shadow):
    proxy = run_proxy("--mirror-percent", "100", "--no-shadow-host-suffix")
    req = b"GET /nosuffix HTTP/1.1\r\nHost: mirror.test:8080\r\nAccept: */*\r\n\r\n"
    send_raw(proxy, req)
    [prec] = primary.wait_for_requests(1)
    srec = the_shadow_copy(prec, shadow)
    assert srec.raw in shadow_variants(prec.raw, srec.header("x-fastmirror-id") or "", None, None)


def test_post_is_not_mirrored_by_default(run_proxy, primary, shadow):
    proxy = run_proxy("--mirror-percent", "100")
    with httpx.Client(trust_env=False, timeout=5) as client:
        assert client.post(proxy.url + "/echo", content=b"write!").content == b"write!"
        assert client.put(proxy.url + "/echo", content=b"write!").status_code == 200
        assert client.head(proxy.url + "/head").status_code == 200
        assert client.options(proxy.url + "/options").status_code == 200
        assert client.get(proxy.url + "/marker").status_code == 200
    shadow.wait_for_requests(3)
    time.sleep(QUIET)
    assert sorted(r.method for r in shadow.requests) == ["GET", "HEAD", "OPTIONS"]
    assert len(primary.requests) == 5


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_all_methods_mirrors_post_with_identical_body(run_proxy, primary, shadow, chunked):
    proxy = run_proxy("--mirror-percent", "100", "--mirror-methods", "ALL")
    body = pattern(3000, 17)
    if chunked:
        framed = b"".join(b"%x\r\n%s\r\n" % (len(body[i : i + 1000]), body[i : i + 1000]) for i in range(0, 3000, 1000))
        req = b"POST /echo HTTP/1.1\r\nHost: fm.test\r\nTransfer-Encoding: chunked\r\n\r\n" + framed + b"0\r\n\r\n"
    else:
        req = b"POST /echo HTTP/1.1\r\nHost: fm.test\r\nContent-Length: 3000\r\n\r\n" + body
    assert send_raw(proxy, req) == body
    [prec] = primary.wait_for_requests(1)
    srec = the_shadow_copy(prec, shadow)
    assert srec.method == "POST" and srec.body == body
    assert srec.raw in shadow_variants(prec.raw, srec.header("x-fastmirror-id") or "", b"fm.test", b"fm.test-shadow")


def test_max_mirror_body_skips_large_bodies(run_proxy, primary, shadow):
    proxy = run_proxy("--mirror-percent", "100", "--mirror-methods", "ALL", "--max-mirror-body", "1000")
    big, small = pattern(5000, 1), pattern(500, 2)
    with httpx.Client(trust_env=False, timeout=5) as client:
        assert client.post(proxy.url + "/echo?big", content=big).content == big
        # A chunked body of unknown size: teed while it streams, abandoned past the limit.
        assert client.post(proxy.url + "/echo?bigchunked", content=iter([big[:800], big[800:]])).content == big
        assert client.post(proxy.url + "/echo?small", content=small).content == small
        assert client.get(proxy.url + "/marker").status_code == 200
    shadow.wait_for_requests(2)
    time.sleep(QUIET)
    assert sorted(r.target for r in shadow.requests) == ["/echo?small", "/marker"]
    assert [r.body for r in shadow.requests if r.target == "/echo?small"] == [small]
    skipped = wait_metric(proxy, MIRROR, lambda v: v >= 2, upstream=shadow.address, outcome="skipped")
    assert skipped == 2


def test_sampling_fraction_within_binomial_bounds(run_proxy, primary, shadow):
    n, p = 1000, 0.3
    proxy = run_proxy("--mirror-percent", "30")
    assert set(fire(proxy, [f"/s/{i}" for i in range(n)])) == {200}
    assert len(primary.wait_for_requests(n)) == n
    got = len(shadow.wait_quiet(quiet=0.5, timeout=10))
    sigma = math.sqrt(n * p * (1 - p))
    assert abs(got - n * p) <= 5 * sigma, f"{got} of {n} mirrored, expected {n * p} +- {5 * sigma:.0f}"
    assert wait_metric(proxy, MIRROR, lambda v: v >= got, upstream=shadow.address, outcome="sent") == got


def test_consistent_sampling_by_header_key(run_proxy, primary, shadow):
    proxy = run_proxy("--mirror-percent", "50", "--mirror-key", "x-user")
    users, per_user = [f"user-{i}" for i in range(24)], 5
    with httpx.Client(trust_env=False, timeout=5) as client:
        for k in range(per_user):
            for user in users:
                assert client.get(f"{proxy.url}/u/{k}", headers={"x-user": user}).status_code == 200
    recs = shadow.wait_quiet(quiet=0.5, timeout=10)
    counts = Counter(r.header("x-user") for r in recs)
    assert set(counts.values()) <= {per_user}, counts  # each user: all mirrored or none
    assert 0 < len(counts) < len(users), counts  # and the 50 % split is not all-or-nothing


def test_every_shadow_gets_every_copy(run_proxy, primary, shadow):
    with RecordingServer("shadow2") as shadow2:
        proxy = run_proxy("--mirror-percent", "100", shadow=[shadow, shadow2])
        assert set(fire(proxy, [f"/two/{i}" for i in range(20)])) == {200}
        one, two = shadow.wait_for_requests(20), shadow2.wait_for_requests(20)
        assert sorted(r.target for r in one) == sorted(r.target for r in two) == sorted(f"/two/{i}" for i in range(20))
        ids_one = {r.target: r.header("x-fastmirror-id") for r in one}
        ids_two = {r.target: r.header("x-fastmirror-id") for r in two}
        assert ids_one == ids_two
        assert len(set(ids_one.values())) == 20  # one id per client request


# -- back-pressure and isolation ----------------------------------------------------


def test_full_queue_drops_and_counts(run_proxy, primary):
    n, concurrency = 200, 1
    with RecordingServer("blackhole", mode="blackhole") as hole:
        proxy = run_proxy(
            "--mirror-percent", "100", "--queue-size", "5", "--shadow-concurrency", str(concurrency),
            "--drain-timeout", "1", shadow=hole,
        )
        start = time.monotonic()
        assert fire(proxy, [f"/d/{i}" for i in range(n)], threads=2) == [200] * n
        assert time.monotonic() - start < 10
        metrics = proxy.metrics()

        def get(outcome: str) -> float:
            return sum(v for (name, labels), v in metrics.items()
                       if name == MIRROR and ("outcome", outcome) in labels and ("upstream", hole.address) in labels)

        depth = sum(v for (name, labels), v in metrics.items() if name == DEPTH and ("upstream", hole.address) in labels)
        sent, dropped, failed = get("sent"), get("dropped"), get("failed")
        assert dropped > 0
        assert depth <= 5
        total = sent + dropped + failed + depth
        assert n - concurrency <= total <= n, dict(sent=sent, dropped=dropped, failed=failed, depth=depth)


def _bad_shadow(kind: str) -> tuple[RecordingServer | None, str]:
    if kind == "dead":
        return None, f"127.0.0.1:{dead_port()}"
    server = {
        "slow": lambda: RecordingServer("shadow", mode="slow", delay=2.0),
        "blackhole": lambda: RecordingServer("shadow", mode="blackhole"),
        "reset": lambda: RecordingServer("shadow", mode="reset"),
    }[kind]().start()
    return server, server.address


ISOLATION_TARGETS = ["/", "/bytes?n=2000", "/chunked?n=3000&size=1000", "/status/404", "/bytes?n=20"]


@pytest.mark.parametrize("kind", ["slow", "blackhole", "reset", "dead"])
def test_bad_shadow_changes_nothing_the_client_sees(run_proxy, primary, shadow, kind):
    bad_server, bad_address = _bad_shadow(kind)
    try:
        args = ("--mirror-percent", "100", "--shadow-timeout", "1", "--drain-timeout", "1")
        healthy = run_proxy(*args, shadow=shadow)
        bad = run_proxy(*args, shadow=bad_address)
        results: dict[str, list[tuple[int, list, bytes]]] = {"healthy": [], "bad": []}
        latency: dict[str, list[float]] = {"healthy": [], "bad": []}
        errors: list[str] = []
        with connect(healthy.port) as hs, connect(bad.port) as bs:
            socks = {"healthy": hs, "bad": bs}
            for i in range(200):
                target = ISOLATION_TARGETS[i % len(ISOLATION_TARGETS)]
                order = ("healthy", "bad") if i % 2 == 0 else ("bad", "healthy")
                for which in order:
                    req = b"GET %s HTTP/1.1\r\nHost: fm.test\r\n\r\n" % target.encode()
                    start = time.perf_counter()
                    try:
                        socks[which].sendall(req)
                        resp = read_response(socks[which], timeout=5)
                    except Exception as exc:
                        errors.append(f"{which} {i}: {exc!r}")
                        continue
                    latency[which].append(time.perf_counter() - start)
                    results[which].append((resp.status, resp.headers, resp.body))
        assert errors == []
        assert results["bad"] == results["healthy"]
        h50, b50 = percentile(latency["healthy"], 50), percentile(latency["bad"], 50)
        h99, b99 = percentile(latency["healthy"], 99), percentile(latency["bad"], 99)
        report = f"p50 {b50 * 1e3:.2f} vs {h50 * 1e3:.2f} ms, p99 {b99 * 1e3:.2f} vs {h99 * 1e3:.2f} ms"
        assert b50 < h50 * 3 + 0.005, report
        assert b99 < h99 * 5 + 0.05, report
        # The healthy shadow got its copies; the bad one's are counted as failures.
        assert len(shadow.wait_for_requests(200, timeout=10)) == 200
        assert wait_metric(bad, MIRROR, lambda v: v > 0, timeout=6, upstream=bad_address, outcome="failed") > 0
        assert healthy.metric(MIRROR, upstream=shadow.address, outcome="failed") == 0
    finally:
        if bad_server is not None:
            bad_server.stop()


# -- control and accounting ---------------------------------------------------------


def test_mirror_percent_changed_at_run_time(run_proxy, primary, shadow):
    proxy = run_proxy("--mirror-percent", "100")
    got = proxy.admin("GET", "/mirror")
    assert got.status_code == 200 and float(orjson.loads(got.content)["percent"]) == 100
    assert set(fire(proxy, [f"/before/{i}" for i in range(5)], threads=1)) == {200}
    assert len(shadow.wait_for_requests(5)) == 5
    put = proxy.admin("PUT", "/mirror?percent=0")
    assert put.status_code == 200 and float(orjson.loads(put.content)["percent"]) == 0
    assert float(orjson.loads(proxy.admin("GET", "/mirror").content)["percent"]) == 0
    assert set(fire(proxy, [f"/after/{i}" for i in range(20)], threads=2)) == {200}
    time.sleep(QUIET)
    assert len(shadow.requests) == 5
    assert len(primary.requests) == 25


def test_access_log_lines_and_ids(run_proxy, primary, shadow, tmp_path):
    log = tmp_path / "access.log"
    proxy = run_proxy("--mirror-percent", "100", "--access-log", str(log))
    with httpx.Client(trust_env=False, timeout=5) as client:
        for i in range(5):
            assert client.get(f"{proxy.url}/log/{i}?q={i}").status_code == 200
        assert client.post(proxy.url + "/echo?post", content=b"12345").status_code == 200
    shadow_ids = {r.target: r.header("x-fastmirror-id") for r in shadow.wait_for_requests(5)}
    deadline = time.monotonic() + 5
    lines: list[bytes] = []
    while time.monotonic() < deadline:
        lines = log.read_bytes().splitlines() if log.exists() else []
        if len(lines) >= 11:
            break
        time.sleep(0.05)
    assert len(lines) == 11, lines  # 6 client requests, and a line per copy the shadow answered
    everything = [orjson.loads(line) for line in lines]
    entries = [e for e in everything if e["role"] == "primary"]
    copies = [e for e in everything if e["role"] == "shadow"]
    assert len(entries) == 6 and len(copies) == 5
    for copy in copies:  # as Envoy logs its shadow cluster; the id joins it to the client's line
        assert copy["upstream"] == shadow.address and copy["status"] == 200 and copy["outcome"] == "sent"
        assert copy["id"] == shadow_ids[copy["path"]] and copy["method"] == "GET" and copy["duration_ms"] >= 0
    for entry in entries:
        assert {"time", "client", "method", "path", "status", "bytes", "duration_ms", "id", "mirror"} <= entry.keys()
        assert entry["status"] == 200
        assert entry["client"].startswith("127.0.0.1")
    by_path = {e["path"]: e for e in entries}
    for i in range(5):
        entry = by_path[f"/log/{i}?q={i}"]
        assert entry["method"] == "GET"
        assert entry["id"] == shadow_ids[f"/log/{i}?q={i}"]
        assert entry["bytes"] > 0 and entry["duration_ms"] >= 0
    post = by_path["/echo?post"]
    assert post["method"] == "POST" and post["mirror"] != by_path["/log/0?q=0"]["mirror"]
    assert len({e["id"] for e in entries}) == 6
