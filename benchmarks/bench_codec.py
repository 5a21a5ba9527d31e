"""Micro-benchmarks of the per-request work above the core: compiled core vs pure twin.

    python -m pytest benchmarks/bench_codec.py --benchmark-only -q
    python -m pytest benchmarks --benchmark-only --benchmark-group-by=group    # with bench_core.py
    python -m pytest benchmarks -q --benchmark-disable                         # CI: run each once

What a proxied request costs in fastmirror's sans-I/O modules: framing and validating
the request head (`codec.parse_request_head`, a typical GET and a POST with headers),
framing the primary's small response (`codec.ResponseFramer.feed`: as a shadow's, untouched,
and as the client's, nginx's `Connection: keep-alive` cut), the shadow's copy of
the head (`mirror.shadow_request_head`: Host rewrite and the two marker headers) and the
sampling decision (`router.mirror_decision`). Each runs with the compiled core and with
its pure-Python twin (the `core` fixture in conftest.py); `h11_reference` is what
h11 alone takes for the same GET head, the cost the fast path avoids.
"""

from __future__ import annotations

from typing import Any

import h11
import pytest

from fastmirror.proxy import codec

from fastmirror.proxy import mirror

from fastmirror.proxy import router

# A typical browser-ish request head: 200 bytes, six header lines.
GET_HEAD = (b"GET /api/v1/items?page=2&sort=name HTTP/1.1\r\n"
            b"Host: api.example.com:8080\r\n"
            b"User-Agent: curl/8.5.0\r\n"
            b"Accept: application/json\r\n"
            b"Accept-Encoding: gzip\r\n"
            b"X-Request-Id: 3f2a9c1e7b\r\n"
            b"Cookie: session=abcdef01\r\n\r\n")
assert len(GET_HEAD) == 200, len(GET_HEAD)

# An API write: JSON body announced by Content-Length, auth and tracing headers.
POST_HEAD = (b"POST /api/v1/orders?dry_run=0 HTTP/1.1\r\n"
             b"Host: api.example.com\r\n"
             b"User-Agent: python-httpx/0.27.0\r\n"
             b"Accept: application/json\r\n"
             b"Accept-Encoding: gzip, deflate\r\n"
             b"Content-Type: application/json; charset=utf-8\r\n"
             b"Content-Length: 734\r\n"
             b"Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiI0MiJ9.c2lnbmF0dXJl\r\n"
             b"X-Request-Id: 9b1d7a4e-23f1-4c55-8a0e-5d6f7e8a9b0c\r\n"
             b"traceparent: 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01\r\n"
             b"Connection: keep-alive\r\n\r\n")

# The primary's answer as the load benchmark's nginx sends it: a 100-byte body.
BODY = b"ok primary " + b"." * 89
RESPONSE = (b"HTTP/1.1 200 OK\r\n"
            b"Server: nginx/1.22.1\r\n"
            b"Date: Thu, 26 Nov 2026 07:45:17 GMT\r\n"
            b"Content-Type: text/plain\r\n"
            b"Content-Length: 100\r\n"
            b"Connection: keep-alive\r\n\r\n") + BODY

REQUEST_ID = "5f1e0c2a00000001"

pytestmark = pytest.mark.usefixtures("core")


@pytest.mark.benchmark(group="parse_request_head GET")
def test_parse_request_head_get(benchmark: Any) -> None:
    head = benchmark(codec.parse_request_head, GET_HEAD)
    assert (head.method, head.target, head.keep_alive, head.has_body) == (
        b"GET", b"/api/v1/items?page=2&sort=name", True, False)
    assert head.forward == GET_HEAD


@pytest.mark.benchmark(group="parse_request_head POST")
def test_parse_request_head_post(benchmark: Any) -> None:
    head = benchmark(codec.parse_request_head, POST_HEAD)
    assert (head.method, head.content_length, head.chunked, head.keep_alive) == (b"POST", 734, False, True)
    assert b"\r\nConnection:" not in head.forward  # hop-by-hop: not forwarded
    assert head.forward.endswith(b"\r\n\r\n")


@pytest.mark.benchmark(group="parse_request_head GET")
def test_h11_reference(benchmark: Any, core: str) -> None:
    if core != "cython":
        pytest.skip("h11 alone does not use the core: measured once")

    def parse() -> Any:
        conn = h11.Connection(h11.SERVER)
        conn.receive_data(GET_HEAD)
        return conn.next_event()

    assert type(benchmark(parse)) is h11.Request


@pytest.mark.benchmark(group="ResponseFramer.feed")
def test_response_framer_small(benchmark: Any) -> None:
    def frame() -> tuple[bytes, bool]:
        framer = codec.ResponseFramer(False)
        return framer.feed(RESPONSE), framer.done

    out, done = benchmark(frame)
    assert out == RESPONSE and done


@pytest.mark.benchmark(group="ResponseFramer.feed")
@pytest.mark.parametrize("closing", [False, True], ids=["client-keep-alive", "client-close"])
def test_response_framer_client(benchmark: Any, closing: bool) -> None:
    """What the client gets: nginx's Connection: keep-alive cut (and connection: close added)."""
    def frame() -> tuple[bytes, bool]:
        framer = codec.ResponseFramer(False, False, True)
        framer.client_closing = closing   # as DownstreamProtocol sets it while the head is pending
        return framer.feed(RESPONSE), framer.done

    out, done = benchmark(frame)
    kept = RESPONSE.replace(b"Connection: keep-alive\r\n", b"")
    if closing:
        kept = kept.replace(b"\r\n\r\n", b"\r\nconnection: close\r\n\r\n")
    assert out == kept and done


@pytest.mark.benchmark(group="shadow_request_head")
def test_shadow_request_head(benchmark: Any) -> None:
    forward = codec.parse_request_head(GET_HEAD).forward
    out = benchmark(mirror.shadow_request_head, forward, b"-shadow", REQUEST_ID)
    assert b"\r\nHost: api.example.com-shadow:8080\r\n" in out
    assert out.endswith(b"x-fastmirror-shadow: 1\r\nx-fastmirror-id: " + REQUEST_ID.encode() + b"\r\n\r\n")


def _policy(percent: float, key: str | None = None) -> router.MirrorPolicy:
    return router.MirrorPolicy.build(percent, ("GET", "HEAD", "OPTIONS"), key, 1 << 20, True)


@pytest.mark.benchmark(group="mirror_decision")
@pytest.mark.parametrize("percent,key", [(100.0, None), (10.0, None), (10.0, "cookie")],
                         ids=["100pct", "10pct-random", "10pct-keyed"])
def test_mirror_decision(benchmark: Any, percent: float, key: str | None) -> None:
    policy = _policy(percent, key)
    head = codec.parse_request_head(GET_HEAD)
    reason = benchmark(router.mirror_decision, policy, head)
    assert reason in (router.SENT, router.NOT_SAMPLED)
    if percent == 100.0:
        assert reason == router.SENT
