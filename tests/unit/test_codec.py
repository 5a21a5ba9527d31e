"""Codec: request head validation, body framing and response framing, sans-I/O.

Framing is fed three ways (whole, one byte at a time, with trailing bytes), after
h11's own test_io.py.
"""

from __future__ import annotations

import h11
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastmirror.proxy import codec
from fastmirror.proxy.codec import (
    BodyFramer,
    HttpError,
    ResponseError,
    ResponseFramer,
    error_response,
    parse_request_head,
)
from fastmirror.hotpath import parse_request_fast

H = b"Host: example.com\r\n"


def head(text: bytes) -> bytes:
    return text.replace(b"\n", b"\r\n")


# -- request heads -----------------------------------------------------------------


def test_simple_get_forwarded_as_is():
    raw = b"GET /a?b=1 HTTP/1.1\r\nHost: x:80\r\nAccept: */*\r\n\r\n"
    req = parse_request_head(raw)
    assert req.forward is raw
    assert (req.method, req.target, req.http10) == (b"GET", b"/a?b=1", False)
    assert req.keep_alive and not req.has_body and not req.upgrade


def test_hop_by_hop_removed_everything_else_byte_identical():
    raw = (b"GET / HTTP/1.1\r\nHost: x\r\nConnection: keep-alive, X-Trace\r\n"
           b"x-trace: 1\r\nKeep-Alive: timeout=5\r\nTE: trailers\r\nAccept:  odd  spacing \r\n"
           b"Proxy-Connection: close\r\n\r\n")
    req = parse_request_head(raw)
    assert req.forward == b"GET / HTTP/1.1\r\nHost: x\r\nAccept:  odd  spacing \r\n\r\n"


def test_connection_close_and_http10():
    assert not parse_request_head(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").keep_alive
    req = parse_request_head(b"GET / HTTP/1.0\r\n\r\n")
    assert req.http10 and not req.keep_alive


def test_upgrade_keeps_handshake_headers():
    raw = b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
    req = parse_request_head(raw)
    assert req.upgrade and req.forward == raw


def test_framing_fields():
    req = parse_request_head(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 12\r\n\r\n")
    assert req.content_length == 12 and req.has_body
    req = parse_request_head(b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
    assert req.chunked and req.has_body


REFUSED = {
    "cl+te": (400, b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"),
    "two cl": (400, b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n"),
    "same cl twice": (400, b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n"),
    "cl list": (400, b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5, 5\r\n\r\n"),
    "cl plus": (400, b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: +5\r\n\r\n"),
    "te gzip": (501, b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"),
    "te twice": (400, b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n"),
    "obs-fold": (400, b"GET / HTTP/1.1\r\nHost: x\r\nX-A: a\r\n b\r\n\r\n"),
    "space before colon": (400, b"GET / HTTP/1.1\r\nHost : x\r\n\r\n"),
    "bare lf": (400, b"GET / HTTP/1.1\nHost: x\r\n\r\n"),
    "nul": (400, b"GET / HTTP/1.1\r\nHost: x\x00y\r\n\r\n"),
    "bare cr": (400, b"GET / HTTP/1.1\rX\r\nHost: x\r\n\r\n"),
    "no host": (400, b"GET / HTTP/1.1\r\n\r\n"),
    "1.0 chunked": (400, b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n"),
    "bad method": (400, b"G(T / HTTP/1.1\r\nHost: x\r\n\r\n"),
    "http/2 line": (505, b"GET / HTTP/2.0\r\nHost: x\r\n\r\n"),
}


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_ambiguous_heads_refused(name):
    status, raw = REFUSED[name]
    with pytest.raises(HttpError) as info:
        parse_request_head(raw)
    assert info.value.status == status


# -- request bodies ------------------------------------------------------------------


def feed_all(framer, data: bytes, step: int | None) -> int:
    """Feed data whole (step None) or in pieces; return how many bytes were taken."""
    if step is None:
        return framer.feed(data, 0)
    taken = 0
    for i in range(0, len(data), step):
        piece = data[i:i + step]
        n = framer.feed(piece, 0)
        taken += n
        if n < len(piece):
            break
    return taken


@pytest.mark.parametrize("step", [None, 1, 3])
@pytest.mark.parametrize("trailing", [b"", b"GET / HTTP/1.1\r\n\r\n"])
def test_content_length_body(step, trailing):
    req = parse_request_head(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n")
    framer = BodyFramer(req)
    assert feed_all(framer, b"0123456789" + trailing, step) == 10
    assert framer.done


CHUNKED = b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n"


@pytest.mark.parametrize("step", [None, 1, 2, 7])
@pytest.mark.parametrize("trailing", [b"", b"GET / HTTP/1.1\r\n\r\n"])
def test_chunked_body(step, trailing):
    req = parse_request_head(b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
    framer = BodyFramer(req)
    assert feed_all(framer, CHUNKED + trailing, step) == len(CHUNKED)
    assert framer.done


@pytest.mark.parametrize("body", [b"zz\r\n", b"5\nhello\r\n", b"5\r\nhelloXX0\r\n\r\n", b"-1\r\n"])
def test_bad_chunked_body_refused(body):
    req = parse_request_head(b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
    with pytest.raises(HttpError) as info:
        BodyFramer(req).feed(body, 0)
    assert info.value.status == 400


# -- responses ---------------------------------------------------------------------


def frame_response(data: bytes, step: int | None, head_request: bool = False):
    framer = ResponseFramer(head_request)
    out = []
    pieces = [data] if step is None else [data[i:i + step] for i in range(0, len(data), step)]
    for piece in pieces:
        out.append(framer.feed(piece))
        if framer.done:
            break
    return framer, b"".join(out)


RESPONSES = [
    b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    b"HTTP/1.1 204 No Content\r\n\r\n",
    b"HTTP/1.1 304 Not Modified\r\nContent-Length: 99\r\n\r\n",
    b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok",
    b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
]


@pytest.mark.parametrize("step", [None, 1, 4])
@pytest.mark.parametrize("response", RESPONSES)
def test_response_framing(response, step):
    framer, out = frame_response(response, step)
    assert framer.done and out == response and not framer.close


def test_response_to_head_has_no_body():
    framer, out = frame_response(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", None, True)
    assert framer.done and framer.status == 200


def test_response_excess_marks_connection_unusable():
    framer, out = frame_response(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokEXTRA", None)
    assert out.endswith(b"ok") and framer.close  # bytes past the end: never reused


def test_close_delimited_response():
    framer = ResponseFramer(False)
    assert framer.feed(b"HTTP/1.0 200 OK\r\n\r\nsome") == b"HTTP/1.0 200 OK\r\n\r\nsome"
    assert framer.feed(b" more") == b" more"
    assert not framer.done
    framer.eof()
    assert framer.done and framer.close


def test_premature_close_is_an_error():
    framer = ResponseFramer(False)
    framer.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
    with pytest.raises(ResponseError):
        framer.eof()


def test_101_switches_to_tunnel_with_trailing_bytes():
    data = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n\x81\x01a"
    framer = ResponseFramer(False, upgrade=True)
    assert framer.feed(data) == data
    assert framer.upgraded and framer.done


def test_101_without_an_upgrade_request_is_a_bad_response():
    """A tunnel nobody asked for would pass the client's next requests on unchecked."""
    framer = ResponseFramer(False)
    with pytest.raises(ResponseError):
        framer.feed(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n")


@pytest.mark.parametrize("bad", [b"HTTX/1.1 200 OK\r\n\r\n", b"HTTP/1.1 2x0 OK\r\n\r\n",
                                 b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"])
def test_bad_response_head(bad):
    with pytest.raises(ResponseError):
        ResponseFramer(False).feed(bad)


def test_error_response_is_well_formed():
    body = error_response(431, "request head too large")
    framer, out = frame_response(body, None)
    assert framer.done and framer.status == 431 and framer.close


# -- properties --------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_any_head_parses_or_refuses_cleanly(data):
    """Parse, or a clear 4xx/5xx HttpError, never anything else."""
    raw = data + b"\r\n\r\n"
    try:
        parse_request_head(raw)
    except HttpError as exc:
        assert exc.status in (400, 431, 501, 505)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(min_size=0, max_size=40), max_size=8), st.data())
def test_chunked_split_anywhere(chunks, data):
    body = b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks if c) + b"0\r\n\r\n"
    trailing = data.draw(st.binary(max_size=20))
    step = data.draw(st.integers(min_value=1, max_value=len(body) + 5))
    req = parse_request_head(b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
    framer = BodyFramer(req)
    assert feed_all(framer, body + trailing, step) == len(body)
    assert framer.done


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=2000), st.integers(min_value=1, max_value=64))
def test_response_split_anywhere(body, step):
    data = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
    framer, out = frame_response(data, step)
    assert framer.done and out == data


# -- the core's fast path agrees with h11 ------------------------------------------------


REQUEST_LINES = [b"GET / HTTP/1.1", b"POST /a?b=1 HTTP/1.1", b"GET /x HTTP/1.0", b"DELETE /%41 HTTP/1.1",
                 b"OPTIONS * HTTP/1.1", b"GET http://h/x HTTP/1.1", b"M-SEARCH * HTTP/1.1",
                 b"get / HTTP/1.1", b"CONNECT h:443 HTTP/1.1", b"PRI / HTTP/1.1", b"GET x HTTP/1.1"]
HEADER_LINES = [b"Host: a", b"Host: b:80", b"Host:", b"Content-Length: 5", b"content-length:0",
                b"Content-Length: 007", b"Transfer-Encoding: chunked", b"TRANSFER-ENCODING: CHUNKED",
                b"Connection: close", b"Connection: keep-alive, close", b"connection: Keep-Alive",
                b"Keep-Alive: timeout=5", b"TE: trailers", b"Trailer: x", b"Proxy-Connection: close",
                b"X-A: b c", b"X-A:\tb\t", b"X-A: \xff\x80", b"Expect: 100-continue", b"Accept: */*",
                b"X-Weird!#$%&'*+.^_`|~: v", b"Cookie: a=b; c=d", b"Host: a b", b"Host: [::1]:8",
                b"Host: a@b", b"Host: a%41", b"Content_Length: 5", b"transfer_encoding: chunked",
                b"X_A: 1", b"Content-Length: 18446744073709551616"]


@st.composite
def plausible_heads(draw) -> bytes:
    line = draw(st.sampled_from(REQUEST_LINES))
    headers = draw(st.lists(st.sampled_from(HEADER_LINES), max_size=6))
    return b"\r\n".join([line, *headers]) + b"\r\n\r\n"


@settings(max_examples=500, deadline=None)
@given(plausible_heads())
def test_fast_path_reads_heads_exactly_as_h11_does(raw):
    """Whatever the fast path accepts, the h11 path accepts and reads the same way."""
    fast = parse_request_fast(raw)
    if fast is None:
        return
    slow = codec._parse_request_head_slow(raw)
    got = codec.parse_request_head(raw)
    for field in ("forward", "method", "target", "http10", "content_length", "chunked",
                  "keep_alive", "upgrade"):
        assert getattr(got, field) == getattr(slow, field), field


def test_fast_path_takes_the_common_heads():
    for raw in (b"GET /bench?q=1 HTTP/1.1\r\nHost: 127.0.0.1:18040\r\n\r\n",
                b"GET / HTTP/1.1\r\nHost: a\r\nUser-Agent: curl/8\r\nAccept: */*\r\n\r\n",
                b"POST /u HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\n"):
        assert parse_request_fast(raw) is not None
    assert h11  # h11 stays the authority for everything else


@pytest.mark.parametrize("step", [None, 1, 5])
def test_interim_responses_dropped_for_http10_clients(step):
    data = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok"
    framer = ResponseFramer(False, drop_interim=True)
    pieces = [data] if step is None else [data[i:i + step] for i in range(0, len(data), step)]
    out = b"".join(framer.feed(p) for p in pieces)
    assert framer.done and out == b"HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok"


# -- issue 7: the lines drawn at the edge ------------------------------------------------

def _head(line: bytes, *headers: bytes) -> bytes:
    return b"\r\n".join([line, *headers]) + b"\r\n\r\n"


@pytest.mark.parametrize(("raw", "status"), [
    (_head(b"POST / HTTP/1.1", b"Host: a", b"Content-Length: 18446744073709551616"), 400),
    (_head(b"POST / HTTP/1.1", b"Host: a", b"Content-Length: 9223372036854775808"), 400),
    (_head(b"POST / HTTP/1.1", b"Host: a", b"Content-Length: 00000000000000000001"), 400),
    (_head(b"POST / HTTP/1.1", b"Host: a", b"Content-Length: 1", b"Transfer_Encoding: chunked"), 400),
    (_head(b"POST / HTTP/1.1", b"Host: a", b"CONTENT_LENGTH: 1"), 400),
    (_head(b"GET fz/1 HTTP/1.1", b"Host: a"), 400),
    (_head(b"GET * HTTP/1.1", b"Host: a"), 400),
    (_head(b"GET ftp://a/ HTTP/1.1", b"Host: a"), 400),
    (_head(b"GET / HTTP/1.1", b"Host: fm .test"), 400),
    (_head(b"GET / HTTP/1.1", b"Host: a:b:c"), 400),
    (_head(b"GET / HTTP/1.1", b"Host: [::1"), 400),
    (_head(b"CONNECT a:443 HTTP/1.1", b"Host: a:443"), 405),
    (_head(b"PRI * HTTP/1.1", b"Host: a"), 400),
    (_head(b"PRI * HTTP/2.0"), 400),
    (_head(b"get / HTTP/1.1", b"Host: a"), 400),
    (_head(b"Get / HTTP/1.1", b"Host: a"), 400),
    (_head(b"POST / HTTP/1.1", b"Host: a", b"Connection: content-length", b"Content-Length: 1"), 400),
    (_head(b"POST / HTTP/1.1", b"Host: a", b"Connection: close, Transfer-Encoding"), 400),
    (_head(b"GET / HTTP/1.1", b"Host: a", b"Connection: HOST"), 400),
    (_head(b"GET http://b/ HTTP/1.1", b"Host: a"), 400),
    (_head(b"GET http://u@a/ HTTP/1.1", b"Host: a"), 400),
    (_head(b"GET http://a:80/ HTTP/1.1", b"Host: a"), 400),
])
def test_issue7_refusals(raw, status):
    with pytest.raises(HttpError) as err:
        codec.parse_request_head(raw)
    assert err.value.status == status


@pytest.mark.parametrize("raw", [
    _head(b"POST / HTTP/1.1", b"Host: a", b"Content-Length: 9223372036854775807"),
    _head(b"POST / HTTP/1.1", b"Host: a", b"Content-Length: 0000000000000000001"),
    _head(b"OPTIONS * HTTP/1.1", b"Host: a"),
    _head(b"GET http://a/b HTTP/1.1", b"Host: a"),
    _head(b"GET HTTP://A:8080?q HTTP/1.1", b"Host: a:8080"),
    _head(b"GET http://a/b HTTP/1.0"),
    _head(b"GET / HTTP/1.1", b"Host: [::1]:80"),
    _head(b"GET / HTTP/1.1", b"Host: [v1.fe80::a+en1]"),
    _head(b"GET / HTTP/1.1", b"Host: a%2Eb:"),
    _head(b"GET / HTTP/1.1", b"Host:"),
    _head(b"GET / HTTP/1.1", b"Host: a", b"X_Forwarded_For: 1"),
    _head(b"GET / HTTP/1.0"),
])
def test_issue7_valid_edges(raw):
    head = codec.parse_request_head(raw)
    assert head.raw == raw


def test_partial_head_refused_once_the_request_line_is_known_bad():
    for data in (b"GET /path\r\n", b"GET / HTTP/1.1 x\r\nHost", b"\x16\x03\x01\x02\x00\r\n"):
        with pytest.raises(HttpError):
            codec.check_partial_head(data)
    for data in (b"GET /path", b"GET / HTTP/1.1\r\nHost: a", b"GET / HTTP/1.1\r\n"):
        codec.check_partial_head(data)


def test_skip_empty_lines():
    assert codec.skip_empty_lines(b"GET") == 0
    assert codec.skip_empty_lines(b"\r\n\r\nGET") == 4
    assert codec.skip_empty_lines(b"\r\n\r") == 2
    assert codec.skip_empty_lines(b"\n\r\n") == 0


# -- the proxy's own hop-by-hop headers on the client side ---------------------------

NGINX_HEAD = (b"HTTP/1.1 200 OK\r\nServer: nginx\r\nContent-Length: 2\r\n"
              b"Connection: keep-alive\r\nKeep-Alive: timeout=5\r\nX-Hop: 1\r\n")
NGINX_OK = NGINX_HEAD + b"\r\nok"
NGINX_CUT = b"HTTP/1.1 200 OK\r\nServer: nginx\r\nContent-Length: 2\r\nX-Hop: 1\r\n"


def frame_client(data: bytes, step: int | None, close: bool, head_request: bool = False,
                 drop_interim: bool = False, upgrade: bool = False) -> tuple[ResponseFramer, bytes]:
    """Feed data (whole or in steps) to a client-side framer whose owner closes after it
    when `close`."""
    framer = ResponseFramer(head_request, drop_interim, True, upgrade)
    framer.client_closing = close
    pieces = [data] if step is None else [data[i:i + step] for i in range(0, len(data), step)]
    out = b"".join(framer.feed(p) for p in pieces)
    return framer, out


@pytest.mark.parametrize("step", [None, 1, 7])
def test_client_head_loses_the_primarys_hop_by_hop_lines(step):
    framer, out = frame_client(NGINX_OK, step, close=False)
    assert out == NGINX_CUT + b"\r\nok" and framer.done
    assert not framer.close_client


@pytest.mark.parametrize("step", [None, 1, 7])
def test_client_head_says_close_when_the_proxy_closes(step):
    framer, out = frame_client(NGINX_OK, step, close=True)
    assert out == NGINX_CUT + b"connection: close\r\n\r\nok"
    assert framer.close_client


def test_named_header_and_connection_close_from_the_primary():
    data = (b"HTTP/1.1 200 OK\r\nX-Hop: 1\r\nConnection: X-Hop, close\r\n"
            b"Content-Length: 2\r\n\r\nok")
    _framer, out = frame_client(data, None, close=False)
    assert out == b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


def test_body_delimited_by_close_says_close():
    framer, out = frame_client(b"HTTP/1.1 200 OK\r\nConnection: keep-alive\r\n\r\nsome", None,
                                      close=False)
    assert out == b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\nsome"
    assert framer.close_client and framer.until_close


def test_http10_response_on_a_kept_connection_says_keep_alive():
    data = b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\nok"
    _framer, out = frame_client(data, None, close=False)
    assert out == b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\nconnection: keep-alive\r\n\r\nok"


@pytest.mark.parametrize("step", [None, 1, 9])
@pytest.mark.parametrize("drop", [False, True])
def test_interim_heads_pass_untouched_the_final_one_is_rewritten(step, drop):
    interim = b"HTTP/1.1 100 Continue\r\nConnection: keep-alive\r\n\r\n"
    _framer, out = frame_client(interim + NGINX_OK, step, close=True, drop_interim=drop)
    final = NGINX_CUT + b"connection: close\r\n\r\nok"
    assert out == (final if drop else interim + final)


def test_101_passes_untouched():
    data = (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Keep-Alive: 1\r\n\r\n\x81\x01a")
    framer, out = frame_client(data, None, close=True, upgrade=True)
    assert out == data and framer.upgraded


@pytest.mark.parametrize("response,head_request", [
    (b"HTTP/1.1 204 No Content\r\nConnection: keep-alive\r\n\r\n", False),
    (b"HTTP/1.1 200 OK\r\nConnection: keep-alive\r\nContent-Length: 9\r\n\r\n", True),
])
def test_bodiless_responses_are_rewritten_too(response, head_request):
    _framer, out = frame_client(response + b"EXTRA", None, False, head_request)
    assert out == response.replace(b"Connection: keep-alive\r\n", b"")


def test_excess_bytes_stay_out_of_the_rewritten_response():
    framer, out = frame_client(NGINX_OK + b"HTTP/1.1 200 OK\r\n", None, close=False)
    assert out == NGINX_CUT + b"\r\nok" and framer.close


def test_shadow_framer_without_closing_passes_heads_untouched():
    framer = ResponseFramer(False)
    assert framer.feed(NGINX_OK) == NGINX_OK and not framer.close_client


