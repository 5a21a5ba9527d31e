"""TLS to the primary and the shadows (`https://` upstreams), with a throwaway CA (trustme).

Real TLS servers on 127.0.0.1 (RecordingServer with an SSLContext), fastmirror as a
subprocess, httpx as the client. A shadow with a bad certificate fails only its copies;
the primary's bad certificate is a 502 with a clear log line.
"""

from __future__ import annotations

import datetime
import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import trustme

from conftest import RecordingServer

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(60)]


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


SNI: list[str | None] = []   # server names the TLS servers were asked for


def server_context(cert: trustme.LeafCert, client_ca: trustme.CA | None = None) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    cert.configure_cert(ctx)
    ctx.set_alpn_protocols(["http/1.1"])
    ctx.sni_callback = lambda sslobj, name, _ctx: SNI.append(name)
    if client_ca is not None:   # mTLS: the proxy must present a certificate from client_ca
        client_ca.configure_trust(ctx)
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


@pytest.fixture
def tls_server(ca: trustme.CA) -> Iterator:
    """tls_server(name, cert=None, client_ca=None): a TLS RecordingServer, stopped after."""
    started: list[RecordingServer] = []

    def make(name: str, cert: trustme.LeafCert | None = None,
             client_ca: trustme.CA | None = None) -> RecordingServer:
        leaf = cert or ca.issue_cert("localhost", "127.0.0.1")
        server = RecordingServer(name, ssl=server_context(leaf, client_ca)).start()
        started.append(server)
        return server

    yield make
    for server in started:
        server.stop()


def url(server: RecordingServer, host: str = "localhost") -> str:
    return f"https://{host}:{server.port}"


def write_ca(ca: trustme.CA, tmp_path: Path) -> str:
    path = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return str(path)


def get(proxy, path: str = "/") -> httpx.Response:
    with httpx.Client(trust_env=False, timeout=10) as client:
        return client.get(proxy.url + path)


def wait_for(predicate, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


def test_https_primary_and_shadow_verified_and_kept_alive(run_proxy, tls_server, ca, tmp_path):
    primary, shadow = tls_server("primary"), tls_server("shadow")
    SNI.clear()
    proxy = run_proxy("--upstream-ca", write_ca(ca, tmp_path),
                      primary=url(primary), shadow=url(shadow))
    for i in range(3):
        resp = get(proxy, f"/t/{i}")
        assert resp.status_code == 200 and resp.headers["x-upstream"] == "primary"
    assert [r.target for r in primary.wait_for_requests(3)] == ["/t/0", "/t/1", "/t/2"]
    copies = shadow.wait_for_requests(3)
    assert [r.target for r in copies] == ["/t/0", "/t/1", "/t/2"]
    # the shadow's Host is the client's plus -shadow; its SNI and name check are the URL's host
    assert copies[0].header("host") == f"127.0.0.1-shadow:{proxy.port}"
    assert SNI == ["localhost", "localhost"]   # never the -shadow Host
    assert primary.accepted == 1 and shadow.accepted == 1   # one pooled TLS connection each
    labels = {dict(k[1]).get("upstream") for k in proxy.metrics()
              if k[0] == "fastmirror_request_duration_seconds_count"}
    assert f"https://localhost:{primary.port}" in labels, labels


def test_a_reconnect_resumes_the_tls_session(run_proxy, tls_server, ca, tmp_path):
    """The primary closes after every answer (/close): each request is a new connection,
    and every one after the first resumes the session instead of a full handshake."""
    primary = tls_server("primary")
    proxy = run_proxy("--upstream-ca", write_ca(ca, tmp_path), primary=url(primary), shadow=None)
    for _ in range(4):
        assert get(proxy, "/close").status_code == 200
    assert wait_for(lambda: len(primary.tls_resumed) == 4)
    assert primary.tls_resumed == [False, True, True, True]


@pytest.mark.parametrize("bad", ["wrong-host", "expired", "untrusted"])
def test_shadow_with_a_bad_certificate_fails_only_its_copies(run_proxy, tls_server, ca, tmp_path,
                                                             primary, bad):
    other = trustme.CA()
    cert = {
        "wrong-host": lambda: ca.issue_cert("not-this-host.test"),
        "expired": lambda: ca.issue_cert(
            "localhost", not_before=datetime.datetime(2020, 1, 1),
            not_after=datetime.datetime(2020, 2, 1)),
        "untrusted": lambda: other.issue_cert("localhost"),
    }[bad]()
    shadow = tls_server("shadow", cert)
    proxy = run_proxy("--upstream-ca", write_ca(ca, tmp_path), primary=primary,
                      shadow=url(shadow))
    for i in range(5):
        assert get(proxy, f"/c/{i}").status_code == 200   # the client never sees it
    assert shadow.requests == []
    assert wait_for(lambda: proxy.metric("fastmirror_mirror_requests_total",
                                         upstream=url(shadow), outcome="failed") == 5)
    lines = [line for line in proxy.stderr_text().splitlines() if "certificate" in line.lower()]
    assert len(lines) == 1, lines   # one line per cause, not one per copy


def test_primary_with_a_bad_certificate_is_a_502_with_a_clear_line(run_proxy, tls_server, ca,
                                                                   tmp_path):
    primary = tls_server("primary", trustme.CA().issue_cert("localhost"))
    proxy = run_proxy("--upstream-ca", write_ca(ca, tmp_path), primary=url(primary), shadow=None)
    assert get(proxy).status_code == 502
    assert primary.requests == []
    assert wait_for(lambda: "certificate verify failed" in proxy.stderr_text()), proxy.describe()


def test_mtls_upstream_gets_the_client_certificate(run_proxy, tls_server, ca, tmp_path):
    client_ca = trustme.CA()
    primary = tls_server("primary", client_ca=client_ca)
    leaf = client_ca.issue_cert("fastmirror.test")
    cert, key = tmp_path / "client.pem", tmp_path / "client.key"
    leaf.cert_chain_pems[0].write_to_path(str(cert))
    leaf.private_key_pem.write_to_path(str(key))
    proxy = run_proxy("--upstream-ca", write_ca(ca, tmp_path), "--upstream-cert", str(cert),
                      "--upstream-key", str(key), primary=url(primary), shadow=None)
    assert get(proxy).status_code == 200
    without = run_proxy("--upstream-ca", write_ca(ca, tmp_path), primary=url(primary),
                        shadow=None)
    assert get(without).status_code == 502   # the upstream refuses the handshake


def test_insecure_skips_verification_and_says_so(run_proxy, tls_server):
    primary = tls_server("primary", trustme.CA().issue_cert("localhost"))
    proxy = run_proxy("--upstream-insecure", primary=url(primary), shadow=None)
    assert get(proxy).status_code == 200
    assert "NOT verified" in proxy.stderr_text()


def test_a_file_that_is_not_a_certificate_is_one_line_exit_2(tmp_path, tls_server):
    import subprocess
    import sys

    bad = tmp_path / "ca.pem"
    bad.write_text("not a certificate\n")
    run = subprocess.run([sys.executable, "-m", "fastmirror", "--primary", "https://localhost:1",
                          "--upstream-ca", str(bad)], capture_output=True, text=True, timeout=30)
    assert run.returncode == 2
    assert run.stderr.count("\n") == 1 and "--upstream-ca" in run.stderr and "PEM" in run.stderr


def test_tls_on_every_side_with_workers(run_proxy, tls_server, ca, tmp_path):
    """The issue's first command: TLS at the listener, https primary and shadow, 2 workers."""
    primary, shadow = tls_server("primary"), tls_server("shadow")
    leaf = ca.issue_cert("127.0.0.1", "localhost")
    cert, key = tmp_path / "listen.pem", tmp_path / "listen.key"
    leaf.private_key_and_cert_chain_pem.write_to_path(str(cert))
    leaf.private_key_pem.write_to_path(str(key))
    ca_file = write_ca(ca, tmp_path)
    proxy = run_proxy("--tls-cert", str(cert), "--tls-key", str(key), "--upstream-ca", ca_file,
                      "--workers", "2", primary=url(primary), shadow=url(shadow))
    with httpx.Client(trust_env=False, timeout=10,
                      verify=ssl.create_default_context(cafile=ca_file)) as client:
        for i in range(6):
            resp = client.get(f"https://127.0.0.1:{proxy.port}/all/{i}")
            assert resp.status_code == 200 and resp.headers["x-upstream"] == "primary"
    assert len(primary.wait_for_requests(6)) == 6
    assert sorted(r.target for r in shadow.wait_for_requests(6)) == [f"/all/{i}" for i in range(6)]
