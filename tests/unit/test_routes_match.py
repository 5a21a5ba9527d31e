"""Route matching (issue 10): RouteTable.match against route_path's normalisation.

The core's match_route scans an already-normal path; everything else goes through
route_path in Python. These check that the split changes no answer: every case is
compared with a plain first-match over route_path, the reference semantics.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastmirror.proxy.router import RouteTable, route_path

PREFIXES = ["/api/v1/users", "/api/v1/orders", "/payments", "/static/", "/a%2Fb", "/"]


def table(prefixes: list[str], methods: list[frozenset[bytes] | None] | None = None) -> RouteTable:
    # As Settings builds it: every prefix goes through the same normalisation as paths.
    return RouteTable([route_path(p.encode()) for p in prefixes],
                      methods if methods is not None else [None] * len(prefixes))


def reference(t: RouteTable, target: bytes, method: bytes) -> int:
    path = route_path(target)
    for i, prefix in enumerate(t.prefixes):
        allowed = t.methods[i]
        if path.startswith(prefix) and (allowed is None or method in allowed):
            return i
    return -1


@pytest.mark.parametrize(("target", "path"), [
    (b"/api/../payments", b"/payments"), (b"/pay%6Dents", b"/payments"),
    (b"//payments", b"/payments"), (b"/./payments/.", b"/payments/"),
    (b"http://example.com/payments?x=1", b"/payments"), (b"http://example.com", b"/"),
    (b"/payments?a=/../x#f", b"/payments"), (b"/payments#/../x", b"/payments"),
    (b"/a/b/../../../payments", b"/payments"), (b"/%2e%2e/payments", b"/payments"),
    (b"/pay%zzments", b"/pay%zzments"), (b"*", b"*")])
def test_route_path_normalises(target: bytes, path: bytes) -> None:
    assert route_path(target) == path


@pytest.mark.parametrize("target", [
    b"/api/../payments", b"/pay%6Dents", b"//payments", b"http://h:8080/payments/x",
    b"/payments?q=1", b"/payments#frag", b"/x/%2E%2E/payments"])
def test_dodges_reach_the_payments_route(target: bytes) -> None:
    t = table(["/api/v1/users", "/payments", "/"])
    assert t.match(target, b"GET") == 1


def test_prefix_normalised_as_paths_are() -> None:
    # "/a%2Fb" is stored as "/a/b", so a request for /a/b/c takes it, raw or encoded.
    t = table(["/x", "/a%2Fb"])
    assert t.prefixes[1] == b"/a/b"
    assert t.match(b"/a/b/c", b"GET") == 1
    assert t.match(b"/a%2fb/c", b"GET") == 1
    assert t.match(b"/a/bc", b"GET") == 1   # a prefix of bytes, as route_path's startswith


def test_query_is_not_matched() -> None:
    t = table(["/search"])
    assert t.match(b"/?p=/search", b"GET") == -1
    assert t.match(b"/search?p=1", b"GET") == 0


def test_methods_skip_to_a_later_route() -> None:
    t = table(["/api", "/api", "/"], [frozenset({b"POST"}), frozenset({b"GET"}), None])
    assert t.match(b"/api/x", b"POST") == 0
    assert t.match(b"/api/x", b"GET") == 1
    assert t.match(b"/api/x", b"PUT") == 2
    assert t.match(b"/api/../api/x", b"GET") == 1   # the normalising path, same answer
    assert table(["/api"], [frozenset({b"POST"})]).match(b"/api", b"GET") == -1


segments = st.lists(st.sampled_from(
    ["api", "v1", "users", "orders", "payments", "static", ".", "..", "", "%2F", "%6D",
     "pay%6Dents", "a%2Fb", "b", "?q", "#f", "%"]), max_size=6)
methods = st.sampled_from([None, frozenset({b"GET"}), frozenset({b"POST", b"PUT"})])


@settings(max_examples=400, deadline=None)
@given(parts=segments, absolute=st.booleans(), method=st.sampled_from([b"GET", b"POST", b"PUT"]),
       allowed=st.lists(methods, min_size=len(PREFIXES), max_size=len(PREFIXES)),
       order=st.permutations(range(len(PREFIXES))))
def test_match_is_first_match_over_route_path(parts: list[str], absolute: bool, method: bytes,
                                              allowed: list[frozenset[bytes] | None],
                                              order: list[int]) -> None:
    target = ("http://host" if absolute else "") + "/" + "/".join(parts)
    t = table([PREFIXES[i] for i in order], allowed)
    assert t.match(target.encode(), method) == reference(t, target.encode(), method)


def test_settings_plan_for_is_table_match() -> None:
    # Settings.plan_for unrolls RouteTable.match for speed: it must pick the same route.
    from fastmirror.config import load_config
    from fastmirror.ops.metrics import Registry
    from fastmirror.proxy.context import Settings

    routes = [{"name": "get", "prefix": "/api", "methods": ["GET"]},
              {"name": "pay", "prefix": "/payments", "shadow": []},
              {"name": "api", "prefix": "/api"}]
    config = load_config(None, {"primary": "127.0.0.1:1", "shadow": ["127.0.0.1:2"],
                                "route": routes})
    s = Settings(config, Registry(), config.mirror_percent)
    assert s.route_table is not None
    for target in (b"/api/x", b"/api/../payments", b"/pay%6Dents", b"/other", b"//api",
                   b"http://h/api", b"/payments?x=1"):
        for method in (b"GET", b"POST"):
            i = s.route_table.match(target, method)
            plan = s.plan_for(target, method)
            assert plan is (s.default if i < 0 else s.routes[i]), (target, method)
    assert s.plan_for(b"/api/x", b"POST").name == "api"
    assert s.plan_for(b"/pay%6Dents", b"GET").shadows == []


header_lines = st.lists(st.sampled_from(
    [b"Cookie: a=1", b"COOKIE: b", b"cookie_: c", b"X-Cookie: d", b"Authorization: e",
     b"Accept: */*", b"User-Agent: cookie", b"X_Y: z", b"Authorization_x: f"]), max_size=6)


@settings(max_examples=300, deadline=None)
@given(lines=header_lines, removed=st.lists(st.sampled_from(
    ["cookie", "authorization", "x-y", "accept"]), max_size=3, unique=True))
def test_head_edit_strip_skip_changes_nothing(lines: list[bytes], removed: list[str]) -> None:
    # HeadEdit.strip skips its line loop when no removed name occurs in the head: the
    # result must be the loop's, with and without names present.
    from fastmirror.proxy.mirror import HeadEdit

    head = b"\r\n".join([b"GET / HTTP/1.1", b"Host: a", *lines]) + b"\r\n\r\n"
    edit = HeadEdit(tuple(removed), ())
    gone = {n.encode() for n in removed}
    kept = [ln for ln in head.split(b"\r\n")[1:]
            if not (ln and ln.partition(b":")[0].lower().replace(b"_", b"-") in gone)]
    assert edit.strip(head) == b"\r\n".join([b"GET / HTTP/1.1", *kept])
