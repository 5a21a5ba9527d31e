"""The fuzzer's reference parser (tests/strict_http.py), checked on hand-written cases.

A wrong reference would make the fuzzer pass a proxy that is wrong in the same way, so
every rule it implements has a case here: accepted requests with their exact forward
form, and refusals with the decision they rest on and, for body errors, exactly how
many bytes may already have been forwarded.
"""

from __future__ import annotations

import pytest

from strict_http import Reading, read_stream, valid_chunk_ext, valid_host

H = b"Host: fm.test\r\n"
GET = b"GET / HTTP/1.1\r\n" + H + b"\r\n"


def chunked(body: bytes) -> bytes:
    return b"POST /c HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n" + body


def accepted(data: bytes) -> Reading:
    r = read_stream(data)
    assert r.refusal is None, r.refusal
    return r


def refused(data: bytes, decision: str, status: int = 400) -> Reading:
    r = read_stream(data)
    assert r.refusal is not None, r
    assert decision in r.refusal.decisions, r.refusal
    assert r.refusal.status == status, r.refusal
    assert not r.requests
    return r


# -- accepted, and what is forwarded ------------------------------------------------


def test_simple_get_forwarded_as_sent() -> None:
    r = accepted(GET)
    assert [q.forward for q in r.requests] == [GET]
    assert not r.incomplete and not r.closed


def test_content_length_body() -> None:
    req = b"POST /e HTTP/1.1\r\n" + H + b"Content-Length: 5\r\n\r\nhello"
    r = accepted(req + GET)
    assert [q.forward for q in r.requests] == [req, GET]


def test_hop_by_hop_lines_are_cut_with_those_named_in_connection() -> None:
    req = (b"GET / HTTP/1.1\r\n" + H + b"Connection: keep-alive, X-Drop\r\nKeep-Alive: 5\r\n"
           b"X-Drop: 1\r\nX-Keep: 2\r\nTE: trailers\r\nTrailer: X\r\nProxy-Connection: x\r\n"
           b"Upgrade: h2c\r\n\r\n")
    r = accepted(req)
    assert r.requests[0].forward == b"GET / HTTP/1.1\r\n" + H + b"X-Keep: 2\r\n\r\n"
    assert r.requests[0].raw == req


def test_upgrade_keeps_connection_and_upgrade() -> None:
    req = (b"GET /ws HTTP/1.1\r\n" + H + b"Connection: Upgrade, X-A\r\nUpgrade: websocket\r\n"
           b"X-A: 1\r\nKeep-Alive: 1\r\n\r\n")
    r = accepted(req)
    assert r.requests[0].forward == (b"GET /ws HTTP/1.1\r\n" + H + b"Connection: Upgrade, X-A\r\n"
                                     b"Upgrade: websocket\r\n\r\n")


def test_connection_close_and_http10_end_the_stream() -> None:
    close = b"GET / HTTP/1.1\r\n" + H + b"Connection: close\r\n\r\n"
    r = accepted(close + b"garbage\r\n\r\n")
    assert len(r.requests) == 1 and r.closed
    assert r.requests[0].forward == b"GET / HTTP/1.1\r\n" + H + b"\r\n"
    r = accepted(b"GET / HTTP/1.0\r\n\r\n" + GET)
    assert len(r.requests) == 1 and r.closed and r.requests[0].version == b"1.0"


def test_chunked_body_forwarded_as_sent() -> None:
    body = b'5;a=b;c="x\\"y"\r\nhello\r\n0000\r\nX-T: v  \r\n\r\n'
    r = accepted(chunked(body) + GET)
    assert r.requests[0].forward == chunked(body)
    assert len(r.requests) == 2


def test_largest_framing_numbers_accepted() -> None:
    req = b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 9223372036854775807\r\n\r\n"
    r = accepted(req + b"abc")
    assert r.incomplete and r.partial_ok == req + b"abc"
    r = accepted(chunked(b"7fffffffffffffff\r\nab"))
    assert r.incomplete
    r = accepted(chunked(b"000000000000000a\r\n0123456789\r\n0\r\n\r\n"))
    assert len(r.requests) == 1


def test_empty_lines_before_requests_are_skipped_d11() -> None:
    r = accepted(b"\r\n\r\n" + GET + b"\r\n" + GET)
    assert [q.forward for q in r.requests] == [GET, GET]
    assert "D11" in r.decisions and r.requests[0].decisions == {"D11"}


def test_underscored_names_other_than_framing_pass() -> None:
    req = b"GET / HTTP/1.1\r\n" + H + b"X_Custom: 1\r\nContent__Length: 2\r\n\r\n"
    assert accepted(req).requests[0].forward == req


@pytest.mark.parametrize("target", [b"/", b"/a?b=c#d", b"http://fm.test/y", b"HTTPS://FM.test", b"//x"])
def test_targets_accepted(target: bytes) -> None:
    accepted(b"GET " + target + b" HTTP/1.1\r\n" + H + b"\r\n")


def test_options_star_and_other_methods() -> None:
    accepted(b"OPTIONS * HTTP/1.1\r\n" + H + b"\r\n")
    accepted(b"PROPFIND / HTTP/1.1\r\n" + H + b"\r\n")
    accepted(b"M-SEARCH / HTTP/1.1\r\n" + H + b"\r\n")


@pytest.mark.parametrize("host", [b"", b"fm.test", b"fm.test:", b"fm.test:8080", b"[::1]", b"[::1]:80",
                                  b"[v1.x:y]", b"a%41b", b"x_y~z!$&'()*+,;=", b"10.0.0.1:1"])
def test_valid_hosts(host: bytes) -> None:
    assert valid_host(host)
    accepted(b"GET / HTTP/1.1\r\nHost: " + host + b"\r\n\r\n")


@pytest.mark.parametrize("ext", [b"", b";a", b";a=b", b';a="b c"', b';a="\\""', b";a;b=c;d"])
def test_valid_chunk_exts(ext: bytes) -> None:
    assert valid_chunk_ext(ext)


def test_unfinished_requests() -> None:
    r = accepted(GET + b"GET / HTTP/1.1\r\nHost: x\r\n")
    assert len(r.requests) == 1 and r.incomplete
    r = accepted(chunked(b"5\r\nhel"))
    assert r.incomplete and r.partial_ok == chunked(b"5\r\nhel")
    assert accepted(GET + b"\r").incomplete


# -- refused --------------------------------------------------------------------------


@pytest.mark.parametrize("value, decision", [
    (b"18446744073709551616", "D1"), (b"99999999999999999999", "D1"),
    (b"18446744073709551636", "D1"), (b"9223372036854775808", "D1"),
    (b"00000000000000000005", "D1"), (b"123456789012345678901", "old"),
    (b"5, 5", "old"), (b"+5", "old"), (b"-1", "old"), (b"0x5", "old"), (b"", "old"), (b"5 5", "old"),
])
def test_bad_content_length(value: bytes, decision: str) -> None:
    r = refused(b"POST / HTTP/1.1\r\n" + H + b"Content-Length: " + value + b"\r\n\r\n", decision)
    assert not r.refusal.in_body


@pytest.mark.parametrize("head, decision, status", [
    (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nx", "old", 400),
    (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n", "old", 400),
    (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", "old", 501),
    (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n", "old", 400),
    (b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", "old", 400),
    (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer_Encoding: chunked\r\n\r\n", "D3", 400),
    (b"POST / HTTP/1.1\r\nHost: a\r\ncontent_LENGTH: 5\r\n\r\n", "D3", 400),
    (b"GET / HTTP/1.1\r\n\r\n", "old", 400),
    (b"GET / HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n", "old", 400),
    (b"GET / HTTP/1.1\r\nHost: fm .test\r\n\r\n", "D7", 400),
    (b"GET / HTTP/1.1\r\nHost: u@fm.test\r\n\r\n", "D7", 400),
    (b"GET / HTTP/1.1\r\nHost: fm.test/x\r\n\r\n", "D7", 400),
    (b"GET / HTTP/1.1\r\nHost: ::1\r\n\r\n", "D7", 400),
    (b"GET / HTTP/1.1\r\nHost: [::1\r\n\r\n", "D7", 400),
    (b"GET / HTTP/1.1\r\nHost: a:b\r\n\r\n", "D7", 400),
    (b"GET / HTTP/1.1\r\nHost: %zz\r\n\r\n", "D7", 400),
    (b"GET / HTTP/1.0\r\nHost: a b\r\n\r\n", "D7", 400),
    (b"GET fz/1 HTTP/1.1\r\nHost: a\r\n\r\n", "D6", 400),
    (b"GET * HTTP/1.1\r\nHost: a\r\n\r\n", "D6", 400),
    (b"GET fm.test:443 HTTP/1.1\r\nHost: a\r\n\r\n", "D6", 400),
    (b"GET http:///x HTTP/1.1\r\nHost: a\r\n\r\n", "D6", 400),
    (b"GET ftp://a/ HTTP/1.1\r\nHost: a\r\n\r\n", "D6", 400),
    (b"CONNECT fm.test:443 HTTP/1.1\r\nHost: fm.test:443\r\n\r\n", "D8", 405),
    (b"PRI * HTTP/1.1\r\nHost: a\r\n\r\n", "D8", 400),
    (b"PRI * HTTP/2.0\r\n\r\n", "D8", 505),
    (b"get / HTTP/1.1\r\nHost: a\r\n\r\n", "D9", 400),
    (b"Get / HTTP/1.1\r\nHost: a\r\n\r\n", "D9", 400),
    (b"GET / HTTP/1.2\r\nHost: a\r\n\r\n", "old", 505),
    (b"GET / HTTP/2.0\r\nHost: a\r\n\r\n", "old", 505),
    (b"GET / http/1.1\r\nHost: a\r\n\r\n", "old", 400),
    (b"GET  / HTTP/1.1\r\nHost: a\r\n\r\n", "old", 400),
    (b"GET /\r\nHost: a\r\n\r\n", "old", 400),
    (b"GET / HTTP/1.1\r\nHost: a\r\nX: a\r\n b\r\n\r\n", "old", 400),
    (b"GET / HTTP/1.1\r\nHost: a\r\nX : b\r\n\r\n", "old", 400),
    (b"GET / HTTP/1.1\r\nHost: a\r\nX: a\x00b\r\n\r\n", "old", 400),
    (b"GET / HTTP/1.1\r\nHost: a\r\nX: a\x7fb\r\n\r\n", "old", 400),
    (b"GET / HTTP/1.1\r\nHost: a\r\nX\r\n\r\n", "old", 400),
    (b"GET / HTTP/1.1\r\nHost: a\r\nX@Y: 1\r\n\r\n", "old", 400),
    (b"GET / HTTP/1.1\r\nHost: a\r\n: 1\r\n\r\n", "old", 400),
    (b"GET / HTTP/1.1\r\nHost: a\nX: 1\r\n\r\n", "old", 400),
    (b"GET / HTTP/1.1\r\nHost: a\rX: 1\r\n\r\n", "old", 400),
    (b"\nGET / HTTP/1.1\r\nHost: a\r\n\r\n", "old", 400),
    (b"POST / HTTP/1.1\r\nHost: a\r\nConnection: content-length\r\nContent-Length: 1\r\n\r\nx", "F1", 400),
    (b"POST / HTTP/1.1\r\nHost: a\r\nConnection: Transfer-Encoding\r\nTransfer-Encoding: chunked\r\n\r\n", "F1", 400),
    (b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close, host\r\n\r\n", "F1", 400),
    (b"GET http://evil.test/ HTTP/1.1\r\nHost: fm.test\r\n\r\n", "F2", 400),
])
def test_bad_heads(head: bytes, decision: str, status: int) -> None:
    r = refused(head, decision, status)
    assert not r.refusal.in_body


def test_oversized_head() -> None:
    big = b"GET / HTTP/1.1\r\n" + H + b"X: " + b"a" * 70000 + b"\r\n\r\n"
    refused(big, "old", 431)
    refused(big[:-4], "old", 431)


@pytest.mark.parametrize("partial, decision", [
    (b"GET /path\r\n", "D10"), (b"garbage\r\nmore", "D10"), (b"GET / HTTP/1.1\nHost", "old"),
])
def test_unfinished_head_refused_early(partial: bytes, decision: str) -> None:
    refused(partial, decision)


def test_unfinished_head_waits() -> None:
    r = accepted(b"GET / HTTP/1.1\r\nHost: a\r\n")
    assert r.incomplete and not r.requests
    assert accepted(b"GET / HT").incomplete


# (body after the head, decision, how many body bytes may have been forwarded)
BODY_CASES = [
    (b"ffffffffffffffff\r\n", "D2", 15),
    (b"8000000000000000\r\n", "D2", 15),
    (b"00000000000000001\r\nx\r\n0\r\n\r\n", "old", 16),
    (b"5 \r\nhello\r\n0\r\n\r\n", "old", 1),
    (b"x\r\n", "old", 0),
    (b"\r\n", "old", 0),
    (b"5\nhello\r\n0\r\n\r\n", "old", 1),
    (b"5\r\nhelloX\r\n0\r\n\r\n", "old", 8),
    (b"5\r\nhello\rX0\r\n\r\n", "old", 9),
    (b"2;\r\nab\r\n0\r\n\r\n", "D4", 2),
    (b"2;=x\r\nab\r\n0\r\n\r\n", "D4", 2),
    (b"2;a=\r\nab\r\n0\r\n\r\n", "D4", 4),
    (b'2;a="b\r\nab\r\n0\r\n\r\n', "D4", 6),
    (b"2; a=b\r\nab\r\n0\r\n\r\n", "D4", 2),
    (b"2;a =b\r\nab\r\n0\r\n\r\n", "D4", 3),
    (b'2;a="x"y\r\nab\r\n0\r\n\r\n', "D4", 7),
    (b"2;a\x00\r\nab\r\n0\r\n\r\n", "old", 3),
    (b"0;x\x01=N\r\n\r\n", "D4", 3),
    (b"0\r\nX-No-Colon\r\n\r\n", "D5", 13),
    (b"0\r\nX: a\x00b\r\n\r\n", "D5", 7),
    (b"0\r\nX: a\r\n b\r\n\r\n", "D5", 9),
    (b"0\r\nX : a\r\n\r\n", "D5", 4),
    (b"0\r\nContent-Length: 5\r\n\r\n", "D5", 17),
    (b"0\r\ntransfer_encoding: chunked\r\n\r\n", "D5", 20),
    (b"0\r\nHost: x\r\n\r\n", "D5", 7),
    (b"0\r\nX: a\nY: b\r\n\r\n", "old", 7),
    (b"0\r\n\r\r\n", "old", 3),
]


@pytest.mark.parametrize("body, decision, ok", BODY_CASES)
def test_bad_chunked_bodies(body: bytes, decision: str, ok: int) -> None:
    head = chunked(b"")
    r = refused(head + body, decision)
    assert r.refusal.in_body
    assert r.refusal.forward_ok == head + body[:ok]


def test_refusal_after_valid_requests() -> None:
    r = read_stream(GET + GET + b"get / HTTP/1.1\r\nHost: a\r\n\r\n" + GET)
    assert len(r.requests) == 2 and r.refusal is not None and r.refusal.decisions == {"D9"}


def test_content_length_shorter_than_body_leaves_the_rest_as_the_next_request() -> None:
    r = read_stream(b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 2\r\n\r\nab GET / HTTP/1.1\r\n" + H + b"\r\n")
    assert len(r.requests) == 1 and r.requests[0].raw.endswith(b"\r\n\r\nab")
    assert r.refusal is not None and "old" in r.refusal.decisions
