"""The edges of request framing that are valid, and those RFC 9112 asks us to tolerate.

test_smuggling.py holds what must be refused; this file holds the other side of each
line drawn there (issue 7): the valid forms next to the refused ones reach the primary
byte for byte, empty lines before a request line are ignored, and a request line that
can never become valid is answered at once rather than at a timeout.
"""

from __future__ import annotations

import socket
import time

import pytest

from conftest import raw_exchange, read_response
# The same rig as the refusals: one proxy mirroring everything, to a recording primary and shadow.
from test_smuggling import env, shared_proxy, statuses, upstreams  # noqa: F401

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(60)]

H = b"Host: fm.test\r\n"
CLOSE = b"Connection: close\r\n"


# Each is valid and must reach the primary exactly as sent (no hop-by-hop lines in them).
ACCEPTED = [
    ("options-asterisk", b"OPTIONS * HTTP/1.1\r\n" + H + CLOSE + b"\r\n"),
    ("absolute-form", b"GET http://fm.test/abs?q=1 HTTP/1.1\r\n" + H + CLOSE + b"\r\n"),
    ("absolute-form-https-upper", b"GET HTTPS://FM.test:8443/abs HTTP/1.1\r\nHost: fm.test:8443\r\n" + CLOSE + b"\r\n"),
    ("underscored-other-name", b"GET / HTTP/1.1\r\n" + H + b"X_Custom_Header: 1\r\nContent_Type: x\r\n" + CLOSE + b"\r\n"),
    ("host-port", b"GET / HTTP/1.1\r\nHost: fm.test:8080\r\n" + CLOSE + b"\r\n"),
    ("host-ipv6", b"GET / HTTP/1.1\r\nHost: [::1]:8080\r\n" + CLOSE + b"\r\n"),
    ("host-ipv4-pct", b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX: %41\r\n" + CLOSE + b"\r\n"),
    ("host-empty", b"GET / HTTP/1.1\r\nHost:\r\n" + CLOSE + b"\r\n"),
    ("host-pct-encoded", b"GET / HTTP/1.1\r\nHost: f%6D.test\r\n" + CLOSE + b"\r\n"),
    ("method-extension", b"PROPFIND /dav HTTP/1.1\r\n" + H + CLOSE + b"\r\n"),
    ("method-with-dash", b"M-SEARCH / HTTP/1.1\r\n" + H + CLOSE + b"\r\n"),
    ("cl-19-digits", b"POST /echo HTTP/1.1\r\n" + H + b"Content-Length: 0000000000000000003\r\n" + CLOSE + b"\r\nabc"),
    ("chunk-ext-quoted", b"POST /echo HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n" + CLOSE
     + b'\r\n3;name="a \\"b\\"; c";x=1;flag\r\nabc\r\n0;last=yes\r\nX-Checksum: abc\r\nX_Trailer: 1\r\n\r\n'),
    ("chunk-size-2-pow-63-minus-1-digits", b"POST /echo HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n" + CLOSE
     + b"\r\n0000000000000003\r\nabc\r\n0\r\n\r\n"),
]


@pytest.mark.parametrize("req", [c[1] for c in ACCEPTED], ids=[c[0] for c in ACCEPTED])
def test_valid_edge_forms_reach_the_primary_byte_for_byte(env, req):
    proxy, primary, _ = env
    out = raw_exchange(proxy.port, req, timeout=5)
    assert statuses(out) == [200], bytes(out)[:300]
    recs = primary.wait_for_requests(1)
    # Connection: close is hop-by-hop: the primary gets everything else as sent.
    assert recs[0].raw == req.replace(CLOSE, b"")


def test_empty_lines_before_a_request_are_ignored(env):
    proxy, primary, _ = env
    req = b"GET /after-crlf HTTP/1.1\r\n" + H + CLOSE + b"\r\n"
    out = raw_exchange(proxy.port, b"\r\n\r\n\r\n" + req, timeout=5)
    assert statuses(out) == [200], bytes(out)[:300]
    assert primary.wait_for_requests(1)[0].raw == req.replace(CLOSE, b"")


def test_extra_crlf_after_a_body_does_not_lose_the_next_request(env):
    """Old clients end a POST body with a CRLF it does not count: the next request lives."""
    proxy, primary, _ = env
    first = b"POST /echo HTTP/1.1\r\n" + H + b"Content-Length: 5\r\n\r\nhello"
    second = b"GET /second HTTP/1.1\r\n" + H + CLOSE + b"\r\n"
    out = raw_exchange(proxy.port, first + b"\r\n" + second, timeout=5)
    assert statuses(out) == [200, 200], bytes(out)[:400]
    recs = primary.wait_for_requests(2)
    assert [r.target for r in recs] == ["/echo", "/second"]
    assert recs[0].body == b"hello"
    assert recs[1].raw == second.replace(CLOSE, b"")


def test_empty_line_split_across_reads(env):
    proxy, primary, _ = env
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as sock:
        sock.sendall(b"\r")
        time.sleep(0.1)
        sock.sendall(b"\n\r")
        time.sleep(0.1)
        sock.sendall(b"\nGET /split HTTP/1.1\r\n" + H + b"\r\n")
        resp = read_response(sock)
        assert resp.status == 200
    assert [r.target for r in primary.wait_for_requests(1)] == ["/split"]


@pytest.mark.parametrize("line", [b"GET /path\r\n", b"hello world\r\n", b"GET / HTTP/1.1 extra\r\n",
                                  b"GET  / HTTP/1.1\r\n", b"GET / HTTP/1\r\n"])
def test_a_request_line_that_cannot_be_valid_is_refused_at_once(env, line):
    """HTTP/0.9 (no version) and other broken request lines: 400 as soon as the line is in,
    not after the idle timeout (60 s here) while the proxy waits for headers."""
    proxy, primary, _ = env
    out = raw_exchange(proxy.port, line, timeout=5)
    assert statuses(out) == [400], bytes(out)[:200]
    assert out.closed and out.elapsed < 2.0
    assert primary.received == b""
