"""TLS on the listener (issue 9): --tls-cert/--tls-key, --tls-client-ca, the handshake
timeout, failed handshakes counted, and the certificate swapped on SIGHUP under traffic.

Certificates come from a throwaway CA made here by trustme; the clients are httpx,
curl and raw ssl sockets, fastmirror runs as a subprocess, the upstreams are plain.
"""

from __future__ import annotations

import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

import httpx
import pytest
import trustme

from conftest import pattern, read_response, recv_exactly

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(60)]

ERRORS = "fastmirror_downstream_tls_handshake_errors_total"


class Certs:
    """A CA, a server leaf for 127.0.0.1/localhost, written to files in tmp."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.ca = trustme.CA()
        self.ca_file = tmp / "ca.pem"
        self.ca.cert_pem.write_to_path(str(self.ca_file))
        self.cert = tmp / "cert.pem"
        self.key = tmp / "key.pem"
        self.leaf = self.write_leaf()

    def write_leaf(self) -> trustme.LeafCert:
        """A new leaf written over cert.pem and key.pem (as a renewal does)."""
        leaf = self.ca.issue_cert("127.0.0.1", "localhost")
        leaf.private_key_pem.write_to_path(str(self.key))
        self.cert.write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
        return leaf

    def flags(self) -> tuple[str, ...]:
        return ("--tls-cert", str(self.cert), "--tls-key", str(self.key))

    def client_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context()
        self.ca.configure_trust(ctx)
        return ctx


@pytest.fixture
def certs(tmp_path: Path) -> Certs:
    return Certs(tmp_path)


def tls_connect(port: int, ctx: ssl.SSLContext, timeout: float = 5.0) -> ssl.SSLSocket:
    raw = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    return ctx.wrap_socket(raw, server_hostname="127.0.0.1")


def get(sock: socket.socket, target: str) -> tuple[int, bytes]:
    sock.sendall(f"GET {target} HTTP/1.1\r\nHost: fm.test\r\n\r\n".encode())
    response = read_response(sock)
    return response.status, response.body


def served_cert(port: int, ctx: ssl.SSLContext) -> bytes:
    with tls_connect(port, ctx) as sock:
        der = sock.getpeercert(binary_form=True)
        assert der is not None
        return der


def leaf_der(leaf: trustme.LeafCert) -> bytes:
    return ssl.PEM_cert_to_DER_cert(leaf.cert_chain_pems[0].bytes().decode())


def wait_metric(proxy, name: str, at_least: float, timeout: float = 5.0) -> float:
    deadline = time.monotonic() + timeout
    value = proxy.metric(name)
    while value < at_least and time.monotonic() < deadline:
        time.sleep(0.05)
        value = proxy.metric(name)
    return value


def test_httpx_and_curl_get_the_primary_over_tls_and_the_shadow_its_copy(run_proxy, primary, shadow, certs):
    proxy = run_proxy(*certs.flags(), "--mirror-percent", "100")
    url = f"https://127.0.0.1:{proxy.port}"
    with httpx.Client(verify=certs.client_context(), trust_env=False, timeout=5) as client:
        for i in range(3):
            resp = client.get(f"{url}/x/{i}")
            assert resp.status_code == 200 and resp.content == b"hello from primary\n"
    assert [r.target for r in shadow.wait_for_requests(3)] == ["/x/0", "/x/1", "/x/2"]

    curl = shutil.which("curl")
    if curl is not None:
        out = subprocess.run([curl, "-sS", "--cacert", str(certs.ca_file), f"{url}/curl"],
                             capture_output=True, timeout=10)
        assert out.returncode == 0 and out.stdout == b"hello from primary\n", out.stderr

    with tls_connect(proxy.port, certs.client_context()) as sock:  # keep-alive, ALPN
        assert sock.selected_alpn_protocol() is None  # the client offered none
    alpn = certs.client_context()
    alpn.set_alpn_protocols(["h2", "http/1.1"])
    with tls_connect(proxy.port, alpn) as sock:
        assert sock.selected_alpn_protocol() == "http/1.1"
        assert sock.version() in ("TLSv1.2", "TLSv1.3")
        # Three requests on one TLS connection: keep-alive.
        assert [get(sock, f"/keep/{i}") for i in range(3)] == [(200, b"hello from primary\n")] * 3
    # TLS 1.1 is refused by the proxy (the client's own security level lowered so that
    # it would speak it): the server ends the handshake and counts it (uvloop aborts
    # the connection without flushing its alert, so the client reads an EOF).
    before = proxy.metric(ERRORS)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        old = certs.client_context()
        old.minimum_version = old.maximum_version = ssl.TLSVersion.TLSv1_1
        old.set_ciphers("DEFAULT:@SECLEVEL=0")
    with pytest.raises(ssl.SSLError, match="PROTOCOL_VERSION|UNEXPECTED_EOF"):
        tls_connect(proxy.port, old).close()
    assert wait_metric(proxy, ERRORS, before + 1) >= before + 1


def test_pipelining_and_a_websocket_tunnel_over_tls(run_proxy, primary, certs):
    proxy = run_proxy(*certs.flags())
    with tls_connect(proxy.port, certs.client_context()) as sock:
        sock.sendall(b"GET /p/1 HTTP/1.1\r\nHost: fm.test\r\n\r\nGET /p/2 HTTP/1.1\r\nHost: fm.test\r\n\r\n")
        assert [read_response(sock).status, read_response(sock).status] == [200, 200]
        sock.sendall(
            b"GET /ws HTTP/1.1\r\nHost: fm.test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
        assert read_response(sock).status == 101
        payload = pattern(100_000)
        sock.sendall(payload)
        assert recv_exactly(sock, len(payload)) == payload
    assert [r.target for r in primary.wait_for_requests(3)] == ["/p/1", "/p/2", "/ws"]


def test_plain_http_on_the_tls_port_is_counted_and_closed(run_proxy, primary, certs):
    proxy = run_proxy(*certs.flags())
    before = proxy.metric(ERRORS)
    socket.create_connection(("127.0.0.1", proxy.port), timeout=5).close()  # a TCP health check
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: fm.test\r\n\r\n")
        try:
            data = sock.recv(4096)
        except ConnectionResetError:
            data = b""
        assert b"HTTP/1.1 200" not in data
    assert wait_metric(proxy, ERRORS, before + 1) >= before + 1
    time.sleep(0.2)
    assert proxy.metric(ERRORS) == before + 1  # the plain request; the health check is none
    with tls_connect(proxy.port, certs.client_context()) as sock:  # still serving
        assert get(sock, "/after") == (200, b"hello from primary\n")
    assert proxy.proc.poll() is None
    assert "Traceback" not in proxy.stderr_text()


def test_a_silent_client_is_closed_after_the_handshake_timeout(run_proxy, primary, certs):
    proxy = run_proxy(*certs.flags(), "--tls-handshake-timeout", "0.5")
    before = proxy.metric(ERRORS)
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as sock:
        start = time.monotonic()
        try:
            assert sock.recv(1) == b""
        except ConnectionResetError:
            pass
        waited = time.monotonic() - start
    assert 0.4 <= waited < 3.0, waited
    assert wait_metric(proxy, ERRORS, before + 1) >= before + 1


def test_sigterm_with_a_handshake_pending_exits_cleanly(run_proxy, primary, certs):
    proxy = run_proxy(*certs.flags(), "--tls-handshake-timeout", "30")
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as sock:
        sock.sendall(b"\x16\x03\x01")  # the first bytes of a ClientHello, and no more
        time.sleep(0.2)
        proxy.signal(signal.SIGTERM)
        assert proxy.wait(10) == 0
        try:
            assert sock.recv(1) == b""  # closed at exit, not left to the 30 s timeout
        except ConnectionResetError:
            pass
    assert "Traceback" not in proxy.stderr_text() and "ERROR" not in proxy.stderr_text()


def test_client_certificates_required_with_tls_client_ca(run_proxy, primary, certs):
    proxy = run_proxy(*certs.flags(), "--tls-client-ca", str(certs.ca_file))
    before = proxy.metric(ERRORS)
    # Without a certificate: refused (in TLS 1.3 the refusal arrives after the client's Finished).
    with pytest.raises((ssl.SSLError, ConnectionError)):
        with tls_connect(proxy.port, certs.client_context()) as sock:
            status, _ = get(sock, "/nocert")
    assert wait_metric(proxy, ERRORS, before + 1) >= before + 1
    # A certificate from another CA: refused too.
    stranger = certs.client_context()
    trustme.CA().issue_cert("client@other.test").configure_cert(stranger)
    with pytest.raises((ssl.SSLError, ConnectionError)):
        with tls_connect(proxy.port, stranger) as sock:
            get(sock, "/stranger")
    assert wait_metric(proxy, ERRORS, before + 2) >= before + 2
    # One from the CA: served.
    ctx = certs.client_context()
    certs.ca.issue_cert("client@fm.test").configure_cert(ctx)
    with tls_connect(proxy.port, ctx) as sock:
        assert get(sock, "/withcert") == (200, b"hello from primary\n")
    assert "Traceback" not in proxy.stderr_text()


def test_sighup_swaps_the_certificate_under_keep_alive_traffic(run_proxy, primary, certs):
    proxy = run_proxy(config={"tls_cert": str(certs.cert), "tls_key": str(certs.key)})
    ctx = certs.client_context()
    first = certs.leaf
    assert served_cert(proxy.port, ctx) == leaf_der(first)

    stop = threading.Event()
    results: dict[str, int] = {"ok": 0, "failed": 0}

    def traffic() -> None:  # one keep-alive connection throughout
        with tls_connect(proxy.port, ctx) as sock:
            while not stop.is_set():
                try:
                    results["ok" if get(sock, "/t")[0] == 200 else "failed"] += 1
                except (OSError, ConnectionError):
                    results["failed"] += 1
                    return

    thread = threading.Thread(target=traffic)
    thread.start()
    try:
        time.sleep(0.3)
        second = certs.write_leaf()
        proxy.signal(signal.SIGHUP)
        deadline = time.monotonic() + 5
        while served_cert(proxy.port, ctx) != leaf_der(second) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert served_cert(proxy.port, ctx) == leaf_der(second)
        during = results["ok"]
        time.sleep(0.3)

        # A bad key on SIGHUP: one error line, the second certificate stays.
        certs.key.write_text("not a key\n")
        proxy.signal(signal.SIGHUP)
        deadline = time.monotonic() + 5
        while "config not reloaded" not in proxy.stderr_text() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert served_cert(proxy.port, ctx) == leaf_der(second)
        time.sleep(0.2)
    finally:
        stop.set()
        thread.join(10)
    assert results["failed"] == 0 and results["ok"] > during > 0, results
    errors = [line for line in proxy.stderr_text().splitlines() if "config not reloaded" in line]
    assert len(errors) == 1 and "tls_key" in errors[0], errors
    assert "Traceback" not in proxy.stderr_text()


def test_tls_with_workers(run_proxy, primary, certs):
    proxy = run_proxy(*certs.flags(), "--workers", "2")
    ctx = certs.client_context()
    for i in range(4):
        with tls_connect(proxy.port, ctx) as sock:
            assert get(sock, f"/w/{i}") == (200, b"hello from primary\n")
    before = proxy.metric(ERRORS)
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as sock:
        sock.sendall(b"GET / HTTP/1.0\r\n\r\n")
        try:
            sock.recv(100)
        except ConnectionResetError:
            pass
    assert wait_metric(proxy, ERRORS, before + 1, timeout=10) >= before + 1  # summed over workers


def test_sighup_reaches_the_certificate_of_every_worker(run_proxy, primary, certs):
    proxy = run_proxy(config={"tls_cert": str(certs.cert), "tls_key": str(certs.key), "workers": 2})
    ctx = certs.client_context()
    second = certs.write_leaf()
    proxy.signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    while served_cert(proxy.port, ctx) != leaf_der(second) and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)  # the other worker's reload
    # New connections spread over both workers (SO_REUSEPORT): every one sees the new one.
    seen = [served_cert(proxy.port, ctx) == leaf_der(second) for _ in range(16)]
    assert all(seen), seen


def check_config(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "fastmirror", "check-config", *args],
                          capture_output=True, text=True, timeout=30)


def test_check_config_names_the_bad_file(tmp_path: Path, certs):
    conf = tmp_path / "fm.toml"
    conf.write_text('primary = "127.0.0.1:9"\n')
    ok = check_config(str(conf), *certs.flags())
    assert ok.returncode == 0, ok.stderr
    missing = tmp_path / "missing.pem"
    junk = tmp_path / "junk.pem"
    junk.write_text("hello\n")
    other = trustme.CA().issue_cert("127.0.0.1")
    other_key = tmp_path / "other-key.pem"
    other.private_key_pem.write_to_path(str(other_key))
    cases = [
        (("--tls-cert", str(missing), "--tls-key", str(certs.key)), "--tls-cert", str(missing)),
        (("--tls-cert", str(certs.cert), "--tls-key", str(junk)), "--tls-key", str(junk)),
        (("--tls-cert", str(certs.key), "--tls-key", str(certs.key)), "--tls-cert", str(certs.key)),
        (("--tls-cert", str(certs.cert), "--tls-key", str(other_key)), "tls_key", str(other_key)),
        (("--tls-cert", str(certs.cert)), "tls_key", "required"),
        ((*certs.flags(), "--tls-client-ca", str(junk)), "--tls-client-ca", str(junk)),
        (("--tls-client-ca", str(certs.ca_file)), "--tls-client-ca", "TLS listener"),
        ((*certs.flags(), "--tls-handshake-timeout", "0"), "--tls-handshake-timeout", "0"),
    ]
    for flags, key, file in cases:
        out = check_config(str(conf), *flags)
        lines = out.stderr.splitlines()
        assert out.returncode == 2 and len(lines) == 1, (flags, out.stderr)
        assert key in lines[0] and file in lines[0], (flags, lines)


def test_handshakes_in_progress_count_toward_max_connections(run_proxy, primary, certs):
    """Clients that never finish the handshake hold at most --max-connections places; the
    next one waits in the backlog (not refused) and is served when one of them goes."""
    proxy = run_proxy(*certs.flags(), "--max-connections", "2", "--tls-handshake-timeout", "30")
    silent = [socket.create_connection(("127.0.0.1", proxy.port), timeout=5) for _ in range(2)]
    try:
        deadline = time.monotonic() + 5
        while proxy.metric("fastmirror_downstream_accept_paused_total") < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert proxy.metric("fastmirror_downstream_accept_paused_total") >= 1
        waiting = socket.create_connection(("127.0.0.1", proxy.port), timeout=5)  # the backlog
        try:
            waiting.settimeout(1.0)
            tls = certs.client_context().wrap_bio(ssl.MemoryBIO(), out := ssl.MemoryBIO(),
                                                  server_hostname="127.0.0.1")
            with pytest.raises(ssl.SSLWantReadError):
                tls.do_handshake()
            waiting.sendall(out.read())  # the ClientHello: no answer while the cap holds
            with pytest.raises(TimeoutError):
                waiting.recv(1)
            silent.pop().close()  # a place: the waiting connection is taken and served
            waiting.close()
            with tls_connect(proxy.port, certs.client_context()) as sock:
                # (a fresh client: the one above gave up; this one gets the freed place)
                assert get(sock, "/served") == (200, b"hello from primary\n")
        finally:
            waiting.close()
    finally:
        for sock in silent:
            sock.close()
    assert proxy.metric("fastmirror_downstream_connections_rejected_total") == 0
    assert "Traceback" not in proxy.stderr_text()


def test_sighup_with_a_mismatched_key_is_logged_once_with_workers(run_proxy, primary, certs, tmp_path):
    """The supervisor checks the new files before any worker sees the SIGHUP: one line,
    not one per worker, and every worker keeps serving the old certificate."""
    proxy = run_proxy(*certs.flags(), "--workers", "2")
    ctx = certs.client_context()
    old = served_cert(proxy.port, ctx)
    other = trustme.CA().issue_cert("127.0.0.1")
    other.private_key_pem.write_to_path(str(certs.key))  # a key of another certificate
    proxy.signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    while "not reloaded" not in proxy.stderr_text() and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)  # time for a worker's line, if any came
    lines = [line for line in proxy.stderr_text().splitlines() if "not reloaded" in line]
    assert len(lines) == 1 and "does not match the certificate" in lines[0], lines
    assert all(served_cert(proxy.port, ctx) == old for _ in range(8))
    assert proxy.proc.poll() is None and "Traceback" not in proxy.stderr_text()
