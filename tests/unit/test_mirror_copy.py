"""The mirror copy's header edits, the per-shadow rate cap and the run-time mirror state
(issue 10): mirror.HeadEdit, mirror.RateLimit, router.MirrorState and start_state."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fastmirror.config import Route, load_config
from fastmirror.proxy.mirror import HeadEdit, RateLimit
from fastmirror.proxy.router import MirrorState, start_state

HEAD = (b"GET / HTTP/1.1\r\nHost: h\r\nCookie: a\r\nAUTHORIZATION: b\r\nx-keep: 1\r\n"
        b"cookie: c\r\nX_Env: d\r\n\r\n")


def test_every_instance_in_any_case_and_underscore_spelling_goes():
    edit = HeadEdit(("cookie", "authorization", "x-env"), ())
    assert edit.strip(HEAD) == b"GET / HTTP/1.1\r\nHost: h\r\nx-keep: 1\r\n\r\n"


def test_set_headers_are_rendered_once_in_order():
    assert HeadEdit((), (("x-env", "shadow"), ("x-b", "2"))).added == b"x-env: shadow\r\nx-b: 2\r\n"


def test_no_removal_returns_the_same_head():
    assert HeadEdit((), (("x", "1"),)).strip(HEAD) is HEAD


names = st.sampled_from(["cookie", "Cookie", "COOKIE", "cookie_", "x-a", "X_A", "authorization"])


@given(st.lists(st.tuples(names, st.text("abc ", max_size=5)), max_size=8))
def test_strip_keeps_exactly_the_other_lines(headers):
    head = b"GET / HTTP/1.1\r\n" + b"".join(f"{n}: {v}\r\n".encode() for n, v in headers) + b"\r\n"
    out = HeadEdit(("cookie", "x-a"), ()).strip(head)
    kept = [(n, v) for n, v in headers if n.lower().replace("_", "-") not in ("cookie", "x-a")]
    assert out == b"GET / HTTP/1.1\r\n" + b"".join(f"{n}: {v}\r\n".encode() for n, v in kept) + b"\r\n"


def test_rate_limit_allows_a_seconds_burst_then_the_rate():
    limit = RateLimit(5.0, now=100.0)
    assert [limit.take(100.0) for _ in range(6)] == [True] * 5 + [False]
    assert limit.take(100.1) is False  # half a token
    assert limit.take(100.2) is True   # a whole one refilled
    assert [limit.take(200.0) for _ in range(6)].count(True) == 5  # capped at one second's worth


def test_rate_limit_below_one_a_second():
    limit = RateLimit(0.5, now=0.0)
    assert limit.take(0.0) is True and limit.take(1.0) is False and limit.take(2.0) is True


def test_route_percent_precedence():
    state = MirrorState(10.0, (("search", 0.0),))
    assert state.route_percent("search", 50.0) == 0.0  # PUT wins
    assert state.route_percent("cart", 50.0) == 50.0   # the route's own
    assert state.route_percent("cart", None) == 10.0   # the top level's
    assert state.with_percent(20.0).route_percent("search", None) == 0.0
    assert state.with_percent(30.0, "cart").routes == (("search", 0.0), ("cart", 30.0))


def test_expiry_and_the_state_a_reload_starts_from():
    config = load_config(None, {"primary": "a:1", "shadow": ["b:2"], "mirror_for": "1h"})
    state = start_state(config, now=1000.0)
    assert state == MirrorState(100.0, (), 4600.0) and not state.due(4599.0) and state.due(4600.0)
    assert state.remaining(4000.0) == 600.0
    ended = state.expired(config)
    assert ended == MirrorState(0.0, (), None, ended=True)
    # Same mirror_for: the deadline goes on, and an ended one stays ended.
    assert start_state(config, 2000.0, state, config).until == 4600.0
    assert start_state(config, 9000.0, ended, config).ended
    # A new mirror_for starts the clock again.
    other = load_config(None, {"primary": "a:1", "shadow": ["b:2"], "mirror_for": "2h"})
    assert start_state(other, 9000.0, ended, config) == MirrorState(100.0, (), 16200.0)


@pytest.mark.parametrize("bad", [{"percent": 101}, {"percent": -1}, {"percent": "nan"}, {"percent": True},
                                 {"percent": 1, "routes": {"a": 200}}, {}])
def test_a_malformed_state_is_refused(bad):
    with pytest.raises((ValueError, TypeError, KeyError)):
        MirrorState.from_dict(bad)


def test_trailer_fields_lose_the_removed_names_too():
    edit = HeadEdit(("authorization", "x-env"), ())
    body = b"3\r\nabc\r\n0\r\nAuthorization: Bearer t\r\nX-Keep: 1\r\nx_env: e\r\n\r\n"
    assert edit.strip_trailers(body) == b"3\r\nabc\r\n0\r\nX-Keep: 1\r\n\r\n"
    plain = b"3;ext=1\r\nabc\r\n0\r\n\r\n"
    assert edit.strip_trailers(plain) is plain


def test_after_expiry_routes_without_a_percent_follow_the_top_level_again():
    config = load_config(None, {"primary": "a:1", "shadow": ["b:2"], "mirror_for": "1s"})
    config = replace(config, route=(Route("own", "/o", mirror_percent=50.0), Route("inherits", "/i")))
    ended = MirrorState(100.0, (), 1.0).expire_if_due(config, 2.0)
    assert ended == MirrorState(0.0, (("own", 0.0),), None, ended=True)
    back = ended.with_percent(60.0)
    assert back.route_percent("inherits", None) == 60.0 and back.route_percent("own", 50.0) == 0.0
    assert MirrorState(100.0, (), 5.0).expire_if_due(config, 2.0) is None
