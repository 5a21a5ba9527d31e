"""Request smuggling: anything two HTTP parsers could read differently is refused.

Each malformed request gets a 4xx, the connection is closed, and the primary (and the
shadow) never see the request: for a malformed head, not a single byte; for a malformed
chunked body, no complete request and never the malformed bytes. Where a valid request
comes first on the connection, it is answered and it is all the primary ever sees.

The bytes are sent with raw sockets, because no well-behaved client would send them.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from conftest import Proxy, RecordingServer, raw_exchange, start_proxy

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(60)]

QUIET = 0.3  # seconds to wait for bytes that must not arrive at the upstreams


@pytest.fixture(scope="module")
def upstreams() -> Iterator[tuple[RecordingServer, RecordingServer]]:
    with RecordingServer("primary") as primary, RecordingServer("shadow") as shadow:
        yield primary, shadow


@pytest.fixture(scope="module")
def shared_proxy(upstreams: tuple[RecordingServer, RecordingServer]) -> Iterator[Proxy]:
    primary, shadow = upstreams
    # Mirror everything, so that a request leaking to the shadow would be seen too.
    proxy = start_proxy("--mirror-percent", "100", "--mirror-methods", "ALL", primary=primary, shadow=shadow)
    yield proxy
    proxy.close()


@pytest.fixture
def env(shared_proxy: Proxy, upstreams: tuple[RecordingServer, RecordingServer]):
    assert shared_proxy.proc.poll() is None, shared_proxy.describe()
    primary, shadow = upstreams
    primary.clear()
    shadow.clear()
    return shared_proxy, primary, shadow


def statuses(data: bytes) -> list[int]:
    """Status codes of the responses in `data`, in order (heads only, crude but enough)."""
    out = []
    for part in data.split(b"HTTP/1.")[1:]:
        code = part[2:5]
        if code.isdigit():
            out.append(int(code))
    return out


H = b"Host: fm.test\r\n"

# (id, raw request, acceptable statuses)
HEAD_CASES = [
    ("cl-and-te", b"POST /echo HTTP/1.1\r\n" + H + b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", {400}),
    ("te-and-cl", b"POST /echo HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n", {400}),
    ("two-differing-cl", b"POST /echo HTTP/1.1\r\n" + H + b"Content-Length: 5\r\nContent-Length: 6\r\n\r\nhello!", {400}),
    ("two-identical-cl", b"POST /echo HTTP/1.1\r\n" + H + b"Content-Length: 5\r\nContent-Length: 5\r\n\r\nhello", {400}),
    ("cl-list", b"POST /echo HTTP/1.1\r\n" + H + b"Content-Length: 5, 5\r\n\r\nhello", {400}),
    ("cl-plus", b"POST /echo HTTP/1.1\r\n" + H + b"Content-Length: +5\r\n\r\nhello", {400}),
    ("cl-negative", b"POST /echo HTTP/1.1\r\n" + H + b"Content-Length: -1\r\n\r\n", {400}),
    ("cl-hex", b"POST /echo HTTP/1.1\r\n" + H + b"Content-Length: 0x5\r\n\r\nhello", {400}),
    ("te-gzip-chunked", b"POST /echo HTTP/1.1\r\n" + H + b"Transfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n", {501}),
    ("te-chunked-twice", b"POST /echo HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", {400, 501}),
    ("te-identity", b"POST /echo HTTP/1.1\r\n" + H + b"Transfer-Encoding: identity\r\n\r\n", {400, 501}),
    ("obs-fold", b"GET / HTTP/1.1\r\n" + H + b"X-Folded: a\r\n b\r\n\r\n", {400}),
    ("obs-fold-tab", b"GET / HTTP/1.1\r\n" + H + b"X-Folded: a\r\n\tb\r\n\r\n", {400}),
    ("space-before-colon", b"GET / HTTP/1.1\r\n" + H + b"X-Spaced : b\r\n\r\n", {400}),
    ("space-before-colon-te", b"POST /echo HTTP/1.1\r\n" + H + b"Transfer-Encoding : chunked\r\nContent-Length: 3\r\n\r\nabc", {400}),
    ("tab-before-colon", b"GET / HTTP/1.1\r\n" + H + b"X-Tabbed\t: b\r\n\r\n", {400}),
    ("bare-lf-everywhere", b"GET / HTTP/1.1\nHost: fm.test\n\n", {400}),
    ("bare-lf-one-line", b"GET / HTTP/1.1\r\nHost: fm.test\nX-A: b\r\n\r\n", {400}),
    ("nul-in-value", b"GET / HTTP/1.1\r\n" + H + b"X-Nul: a\x00b\r\n\r\n", {400}),
    ("ctl-in-value", b"GET / HTTP/1.1\r\n" + H + b"X-Ctl: a\x01b\r\n\r\n", {400}),
    ("bare-cr-request-line", b"GET /a\rb HTTP/1.1\r\n" + H + b"\r\n", {400}),
    ("bare-cr-header", b"GET / HTTP/1.1\r\n" + H + b"X-Cr: a\rb\r\n\r\n", {400}),
    ("no-host", b"GET / HTTP/1.1\r\n\r\n", {400}),
    ("two-hosts", b"GET / HTTP/1.1\r\nHost: a.test\r\nHost: b.test\r\n\r\n", {400}),
    ("no-colon", b"GET / HTTP/1.1\r\n" + H + b"X-No-Colon\r\n\r\n", {400}),
    ("http10-te", b"POST /echo HTTP/1.0\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n", {400, 501}),
    ("big-head-431", b"GET / HTTP/1.1\r\n" + H + b"X-Big: " + b"a" * (70 * 1024) + b"\r\n\r\n", {431}),
    # issue 7: framing numbers past 64 bits (2**64, 20 nines, 2**64 + 20 with a hidden request)
    ("cl-2-pow-64", b"POST /echo HTTP/1.1\r\n" + H + b"Content-Length: 18446744073709551616\r\n\r\nabc", {400}),
    ("cl-20-nines", b"POST /echo HTTP/1.1\r\n" + H + b"Content-Length: 99999999999999999999\r\n\r\nabc", {400}),
    ("cl-2-pow-64-plus-20", b"POST /echo HTTP/1.1\r\n" + H + b"Content-Length: 18446744073709551636\r\n\r\n"
     + b"GET /hidden HTTP/1.1\r\n" + H + b"\r\n", {400}),
    ("cl-2-pow-63", b"POST /echo HTTP/1.1\r\n" + H + b"Content-Length: 9223372036854775808\r\n\r\nabc", {400}),
    ("cl-20-digits-leading-zeros", b"POST /echo HTTP/1.1\r\n" + H + b"Content-Length: 00000000000000000003\r\n\r\nabc", {400}),
    # issue 7: names a CGI/WSGI back end reads as framing headers
    ("te-underscore-beside-cl", b"POST /echo HTTP/1.1\r\n" + H + b"Content-Length: 5\r\nTransfer_Encoding: chunked\r\n\r\n0\r\n\r\n", {400}),
    ("cl-underscore-beside-cl", b"POST /echo HTTP/1.1\r\n" + H + b"Content-Length: 3\r\ncontent_length: 30\r\n\r\nabc", {400}),
    ("cl-underscore-beside-te", b"POST /echo HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\nContent_Length: 3\r\n\r\n0\r\n\r\n", {400}),
    ("te-underscore-alone", b"POST /echo HTTP/1.1\r\n" + H + b"TRANSFER_ENCODING: chunked\r\n\r\n0\r\n\r\n", {400}),
    # issue 7: request targets, hosts, methods
    ("target-relative", b"GET fz/1 HTTP/1.1\r\n" + H + b"\r\n", {400}),
    ("target-asterisk-get", b"GET * HTTP/1.1\r\n" + H + b"\r\n", {400}),
    ("target-authority-get", b"GET fm.test:80 HTTP/1.1\r\n" + H + b"\r\n", {400}),
    ("target-scheme-only", b"GET http:// HTTP/1.1\r\n" + H + b"\r\n", {400}),
    ("host-with-space", b"GET / HTTP/1.1\r\nHost: fm .test\r\n\r\n", {400}),
    ("host-with-userinfo", b"GET / HTTP/1.1\r\nHost: user@fm.test\r\n\r\n", {400}),
    ("host-with-path", b"GET / HTTP/1.1\r\nHost: fm.test/x\r\n\r\n", {400}),
    ("host-bad-port", b"GET / HTTP/1.1\r\nHost: fm.test:80x\r\n\r\n", {400}),
    ("connect", b"CONNECT fm.test:443 HTTP/1.1\r\nHost: fm.test:443\r\n\r\n", {405}),
    ("connect-with-body", b"CONNECT fm.test:443 HTTP/1.1\r\nHost: fm.test:443\r\nContent-Length: 5\r\n\r\nhello", {405}),
    ("pri-http11", b"PRI * HTTP/1.1\r\n" + H + b"\r\n", {400}),
    ("pri-h2-preface", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", {400}),
    ("method-lowercase", b"get / HTTP/1.1\r\n" + H + b"\r\n", {400}),
    ("method-mixed-case", b"Get / HTTP/1.1\r\n" + H + b"\r\n", {400}),
    ("http09", b"GET /path\r\n\r\n", {400}),
    # issue 7, found by the differential fuzzer: Connection must not cut framing or routing
    ("connection-names-content-length", b"POST /echo HTTP/1.1\r\n" + H + b"Connection: content-length\r\nContent-Length: 34\r\n\r\n"
     + b"GET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n", {400}),
    ("connection-names-transfer-encoding", b"POST /echo HTTP/1.1\r\n" + H + b"Connection: Transfer-Encoding\r\nTransfer-Encoding: chunked\r\n\r\n"
     + b"0\r\n\r\n", {400}),
    ("connection-names-host", b"GET / HTTP/1.1\r\n" + H + b"Connection: keep-alive, host\r\n\r\n", {400}),
    # ... and an absolute-form target must name the host that Host names
    ("absolute-form-other-host", b"GET http://evil.test/admin HTTP/1.1\r\n" + H + b"\r\n", {400}),
    ("absolute-form-userinfo", b"GET http://u@fm.test/ HTTP/1.1\r\n" + H + b"\r\n", {400}),
    ("many-headers-431", b"GET / HTTP/1.1\r\n" + H + b"".join(b"X-H%d: %s\r\n" % (i, b"v" * 60) for i in range(1200)) + b"\r\n", {431}),
]

# Malformed chunked bodies: the head is fine, so it may have gone out already; the
# malformed bytes (the `marker`) must not, and no complete request may reach the primary.
CHUNKED = b"POST /echo HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n"
BODY_CASES = [
    ("bad-chunk-size", CHUNKED + b"zz\r\nhello\r\n0\r\n\r\n", b"zz\r\n"),
    ("chunk-size-bare-lf", CHUNKED + b"5\nhello\r\n0\r\n\r\n", b"5\nhello"),
    ("missing-crlf-after-data", CHUNKED + b"5\r\nhelloXX0\r\n\r\n", b"helloXX"),
    ("chunk-size-overflow", CHUNKED + b"10000000000000000\r\nhello\r\n0\r\n\r\n", b"10000000000000000"),
    ("chunk-size-negative", CHUNKED + b"-5\r\nhello\r\n0\r\n\r\n", b"-5\r\n"),
    # issue 7: sizes past 2**63 - 1, extensions off the grammar, malformed trailers
    ("chunk-size-2-pow-64-minus-1", CHUNKED + b"ffffffffffffffff\r\nhello\r\n0\r\n\r\n", b"ffffffffffffffff"),
    ("chunk-size-2-pow-63", CHUNKED + b"8000000000000000\r\nhello\r\n0\r\n\r\n", b"8000000000000000"),
    ("chunk-ext-empty", CHUNKED + b"2;\r\nxy\r\n0\r\n\r\n", b"2;\r\n"),
    ("chunk-ext-unclosed-quote", CHUNKED + b'2;a="xy\r\nxy\r\n0\r\n\r\n', b'2;a="'),
    ("chunk-ext-space", CHUNKED + b"2; a=b\r\nxy\r\n0\r\n\r\n", b"2; a"),
    ("last-chunk-ext-hides-request", CHUNKED + b'0;x="\r\nGET /hidden HTTP/1.1\r\n' + H + b'"\r\n\r\n', b"0;x="),
    ("trailer-no-colon", CHUNKED + b"0\r\nNoColon\r\n\r\n", b"NoColon"),
    ("trailer-nul", CHUNKED + b"0\r\nX-T: a\x00b\r\n\r\n", b"X-T: a\x00"),
    ("trailer-folded", CHUNKED + b"0\r\nX-T: a\r\n b\r\n\r\n", b"\r\n b"),
    ("trailer-content-length", CHUNKED + b"0\r\nContent-Length: 30\r\n\r\n", b"Content-Length: 30"),
    ("trailer-transfer-encoding", CHUNKED + b"0\r\nTransfer_Encoding: chunked\r\n\r\n", b"Transfer_Encoding"),
    ("trailer-host", CHUNKED + b"0\r\nHost: evil.test\r\n\r\n", b"evil.test"),
]


def assert_refused(out: bytes, allowed: set[int]) -> None:
    codes = statuses(out)
    assert codes, f"no response at all: {bytes(out)[:200]!r}"
    assert codes[0] in allowed, f"got {codes[0]}, want one of {sorted(allowed)}: {bytes(out)[:300]!r}"
    assert out.closed, "connection left open after a refused request"


@pytest.mark.parametrize("req,allowed", [(c[1], c[2]) for c in HEAD_CASES], ids=[c[0] for c in HEAD_CASES])
def test_malformed_head_is_refused_and_never_forwarded(env, req, allowed):
    proxy, primary, shadow = env
    out = raw_exchange(proxy.port, req, timeout=5)
    assert_refused(out, allowed)
    assert len(statuses(out)) == 1
    time.sleep(QUIET)
    assert primary.received == b"", f"primary got {primary.received[:200]!r}"
    assert primary.requests == []
    assert shadow.received == b""


@pytest.mark.parametrize("req,marker", [(c[1], c[2]) for c in BODY_CASES], ids=[c[0] for c in BODY_CASES])
def test_malformed_chunked_body_is_refused(env, req, marker):
    proxy, primary, shadow = env
    out = raw_exchange(proxy.port, req, timeout=5)
    assert_refused(out, {400})
    time.sleep(QUIET)
    assert primary.requests == []
    assert marker not in primary.received
    assert shadow.requests == [] and marker not in shadow.received


VALID = b"GET /first HTTP/1.1\r\n" + H + b"\r\n"
PIPELINED = [
    ("cl-and-te", b"POST /echo HTTP/1.1\r\n" + H + b"Content-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nG", {400}),
    ("two-cl", b"POST /echo HTTP/1.1\r\n" + H + b"Content-Length: 3\r\nContent-Length: 30\r\n\r\nabc", {400}),
    ("obs-fold", b"GET /second HTTP/1.1\r\n" + H + b"X-Folded: a\r\n b\r\n\r\n", {400}),
    ("bare-lf", b"GET /second HTTP/1.1\n" + H + b"\r\n", {400}),
    ("no-host", b"GET /second HTTP/1.1\r\n\r\n", {400}),
    ("te-gzip", b"POST /echo HTTP/1.1\r\n" + H + b"Transfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n", {501}),
    ("bad-chunk", CHUNKED + b"zz\r\nGET /smuggled HTTP/1.1\r\n" + H + b"\r\n", {400}),
    ("cl-wraps-to-zero", b"POST /echo HTTP/1.1\r\n" + H + b"Content-Length: 18446744073709551616\r\n\r\n"
     + b"GET /smuggled HTTP/1.1\r\n" + H + b"\r\n", {400}),
    ("te-underscore", b"POST /echo HTTP/1.1\r\n" + H + b"Content-Length: 5\r\nTransfer_Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\n" + H + b"\r\n", {400}),
    ("http09", b"GET /smuggled\r\n\r\n", {400}),
]


@pytest.mark.parametrize("bad,allowed", [(c[1], c[2]) for c in PIPELINED], ids=[c[0] for c in PIPELINED])
def test_valid_then_smuggled_in_one_write(env, bad, allowed):
    proxy, primary, shadow = env
    out = raw_exchange(proxy.port, VALID + bad, timeout=5)
    codes = statuses(out)
    assert codes[:1] == [200], f"the valid first request was not answered: {bytes(out)[:300]!r}"
    assert len(codes) == 2 and codes[1] in allowed, bytes(out)[:400]
    assert out.closed
    recs = primary.wait_for_requests(1)
    time.sleep(QUIET)
    assert [r.target for r in primary.requests] == ["/first"]
    assert b"/first" in recs[0].raw
    # For a bad head nothing of the second request may arrive; for a bad body, maybe its head.
    if bad.startswith(CHUNKED):
        assert b"zz" not in primary.received and b"/smuggled" not in primary.received
    else:
        assert primary.received == recs[0].raw, primary.received


def test_body_smuggling_a_request_is_just_a_body(env):
    """A request hidden in a Content-Length body is body bytes, not a second request."""
    proxy, primary, shadow = env
    hidden = b"GET /hidden HTTP/1.1\r\n" + H + b"\r\n"
    req = b"POST /echo HTTP/1.1\r\n" + H + b"Content-Length: %d\r\n\r\n" % len(hidden) + hidden
    out = raw_exchange(proxy.port, req + b"GET /last HTTP/1.1\r\n" + H + b"Connection: close\r\n\r\n", timeout=5)
    assert statuses(out) == [200, 200]
    recs = primary.wait_for_requests(2)
    assert [r.target for r in recs] == ["/echo", "/last"]
    assert recs[0].body == hidden


def test_refusal_does_not_affect_the_next_connection(env):
    proxy, primary, _ = env
    raw_exchange(proxy.port, HEAD_CASES[0][1], timeout=5)
    out = raw_exchange(proxy.port, b"GET /ok HTTP/1.1\r\n" + H + b"Connection: close\r\n\r\n", timeout=5)
    assert statuses(out) == [200]
    assert [r.target for r in primary.wait_for_requests(1)] == ["/ok"]
