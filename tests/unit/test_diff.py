"""diff: parsing captured responses, compare() rules, noise, endpoint names, the store.

Pure: no sockets. The hypothesis properties are the issue's invariants: a response
compared with itself never differs, what the secondary also does differently is never a
mismatch, and compare() never raises, whatever the body bytes.
"""

from __future__ import annotations

import gzip
import threading

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastmirror.diffing.diff import (
    ABSENT, MATCH, MISMATCH, NOISE, OTHER, OTHER_FIELDS, Captured, Comparison, Difference,
    DiffRules, compare, parse_captured)
from fastmirror.diffing.diffstore import DiffStore, render_html, render_text
from fastmirror.diffing.endpoints import EndpointNamer

JSON_CT = {"content-type": "application/json"}


def js(value, status=200, headers=None, **dumps):
    """A JSON response."""
    return Captured(status, {**JSON_CT, **(headers or {})}, orjson.dumps(value, **dumps))


def paths(comparison):
    return [d.path for d in comparison.differences]


def one(comparison):
    assert comparison.result == MISMATCH, comparison
    assert len(comparison.differences) == 1, comparison
    d = comparison.differences[0]
    return d.path, d.primary, d.shadow


# -- status and headers ------------------------------------------------------------------

def test_identical_responses_match():
    c = compare(js({"a": 1}), js({"a": 1}))
    assert c == Comparison(MATCH)


def test_status_difference():
    assert one(compare(js({}), js({}, status=500))) == ("status", 200, 500)


def test_header_names_case_insensitive_values_case_sensitive():
    p = Captured(200, [("Content-Type", "application/json")], b"{}")
    same = Captured(200, [("content-TYPE", "application/json")], b"{}")
    assert compare(p, same).result == MATCH
    other = Captured(200, [("content-type", "Application/JSON")], b"{}")
    assert one(compare(p, other)) == ("header:content-type", "application/json",
                                      "Application/JSON")


def test_header_on_one_side_only():
    rules = DiffRules(headers=("ETag", "content-type"))
    assert rules.headers == ("etag", "content-type")
    p = js({}, headers={"etag": '"v1"'})
    path, primary, shadow = one(compare(p, js({}), rules=rules))
    assert (path, primary) == ("header:etag", '"v1"') and shadow is ABSENT
    path, primary, shadow = one(compare(js({}), p, rules=rules))
    assert primary is ABSENT and shadow == '"v1"'


def test_only_chosen_headers_compared():
    assert compare(js({}, headers={"date": "a", "server": "x"}),
                   js({}, headers={"date": "b"})).result == MATCH


def test_repeated_header_fields_joined():
    c = Captured(200, [(b"Vary", b"accept"), (b"vary", b"origin")], b"")
    assert c.headers == (("vary", "accept"), ("vary", "origin"))
    assert c.header("vary") == "accept, origin"


# -- JSON bodies ----------------------------------------------------------------------------

def test_json_field_change_path():
    p = js({"a": {"b": [0, 1, 2, {"c": "x"}]}})
    s = js({"a": {"b": [0, 1, 2, {"c": "y"}]}})
    assert one(compare(p, s)) == ("$.a.b[3].c", "x", "y")


def test_odd_keys_are_bracketed():
    assert one(compare(js({"odd key": 1}), js({"odd key": 2})))[0] == '$["odd key"]'
    assert one(compare(js({'q"k': 1}), js({'q"k': 2})))[0] == '$["q\\"k"]'
    assert one(compare(js({"1x": 1}), js({"1x": 2})))[0] == '$["1x"]'


@pytest.mark.parametrize("a, b", [
    (4.99, "4.99"),   # number vs string
    (1, True),        # Python says 1 == True; JSON does not
    (5, 5.0),         # a typed client decodes these differently
    ({"x": 1}, [1]),  # object vs array
    (None, 0),
])
def test_type_change_is_a_difference(a, b):
    assert one(compare(js({"v": a}), js({"v": b}))) == ("$.v", a, b)


def test_nested_bool_int_confusion_found():
    assert one(compare(js({"v": [{"k": 1}]}), js({"v": [{"k": True}]})))[0] == "$.v[0].k"


def test_missing_and_extra_keys():
    c = compare(js({"a": 1, "gone": 2}), js({"a": 1, "new": {"x": 1}}))
    assert [(d.path, d.primary, d.shadow) for d in c.differences] == [
        ("$.gone", 2, ABSENT), ("$.new", ABSENT, {"x": 1})]
    assert c.differences[0].shadow is ABSENT
    # JSON-able: the marker serialises as the string "<absent>".
    assert orjson.loads(orjson.dumps(c))["differences"][0]["shadow"] == "<absent>"


def test_array_length_difference():
    c = compare(js({"l": [1, 2, 3, 4]}), js({"l": [1, 9]}))
    assert [(d.path, d.primary, d.shadow) for d in c.differences] == [
        ("$.l[1]", 2, 9), ("$.l[2]", 3, ABSENT), ("$.l[3]", 4, ABSENT)]
    c = compare(js([1]), js([1, 2]))
    assert [(d.path, d.primary, d.shadow) for d in c.differences] == [("$[1]", ABSENT, 2)]


def test_key_order_and_whitespace_do_not_differ():
    p = js({"a": 1, "b": {"c": [1, 2], "d": None}})
    s = Captured(200, JSON_CT, b'{ "b": {"d": null, "c": [1,2]},\n  "a": 1 }')
    assert compare(p, s).result == MATCH


def test_plus_json_and_parameters():
    p = Captured(200, {"content-type": "application/problem+json; charset=utf-8"}, b'{"a":1}')
    s = Captured(200, {"content-type": "application/problem+json; charset=utf-8"}, b'{"a":2}')
    assert one(compare(p, s))[0] == "$.a"


def test_json_needs_json_on_both_sides():
    p = Captured(200, JSON_CT, b'{"a":1}')
    s = Captured(200, {"content-type": "text/plain"}, b'{"a": 1}')
    assert paths(compare(p, s)) == ["header:content-type", "body"]
    bad = Captured(200, JSON_CT, b'{"a": 1')  # says JSON, is not
    assert paths(compare(p, bad)) == ["body"]


def test_array_as_set():
    p, s = js({"tags": ["a", "b", {"k": 1, "j": 2}]}), js({"tags": [{"j": 2, "k": 1}, "b", "a"]})
    assert compare(p, s).result == MISMATCH
    assert compare(p, s, rules=DiffRules(array_as_set=("$.tags",))).result == MATCH
    # A multiset: multiplicity counts; the difference is reported once, at the array.
    c = compare(js({"tags": ["a", "a", "b"]}), js({"tags": ["b", "c", "a"]}),
                rules=DiffRules(array_as_set=("$.tags",)))
    assert one(c) == ("$.tags", ["a"], ["c"])


def test_array_as_set_wildcard_matches_exact_array_path():
    rules = DiffRules(array_as_set=("$.items[*].ids",))
    p = js({"items": [{"ids": [1, 2]}, {"ids": [3, 4]}]})
    s = js({"items": [{"ids": [2, 1]}, {"ids": [4, 3]}]})
    assert compare(p, s, rules=rules).result == MATCH
    nested = DiffRules(array_as_set=("$.items",))  # only that array, not those below it
    assert compare(p, s, rules=nested).result == MISMATCH


# -- ignore rules -------------------------------------------------------------------------------

BASE = {"id": 7, "idx": 1, "meta": {"ts": 1, "host": "a", "deep": {"x": 1}},
        "items": [{"ts": 1, "n": 1}, {"ts": 2, "n": 2}]}


def changed(**updates):
    value = orjson.loads(orjson.dumps(BASE))
    for dotted, new in updates.items():
        *parents, last = dotted.split("__")
        node = value
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node[part]
        node[int(last) if isinstance(node, list) else last] = new
    return js(value)


@pytest.mark.parametrize("pattern, updates, left", [
    ("$.meta.*", {"meta__ts": 2, "meta__deep__x": 2}, []),  # covers below the wildcard
    ("$.meta", {"meta__host": "b"}, []),
    ("$.meta.ts", {"meta__ts": 2, "meta__host": "b"}, ["$.meta.host"]),
    ("$.items[*].ts", {"items__0__ts": 9, "items__1__ts": 9, "items__1__n": 9},
     ["$.items[1].n"]),
    ("$.items.*.ts", {"items__1__ts": 9}, []),  # .* and [*] both match one segment
    ("$.items[1]", {"items__1__ts": 9, "items__0__n": 9}, ["$.items[0].n"]),
    ("$.id", {"id": 8, "idx": 2}, ["$.idx"]),  # a prefix of a key is not a parent
    ('$["id"]', {"id": 8}, []),
    ("$", {"id": 8, "meta__ts": 5}, []),
    ("body", {"id": 8}, []),
])
def test_ignore_patterns(pattern, updates, left):
    c = compare(js(BASE), changed(**updates), rules=DiffRules(ignore=(pattern,)))
    assert paths(c) == left
    assert c.result == (MISMATCH if left else MATCH)


def test_ignore_missing_key_below_pattern():
    p, s = js({"meta": {"a": 1}}), js({"meta": {"b": 1}})
    assert compare(p, s, rules=DiffRules(ignore=("$.meta.*",))).result == MATCH
    # `*` is one segment below meta, so meta itself missing still counts.
    assert paths(compare(p, js({}), rules=DiffRules(ignore=("$.meta.*",)))) == ["$.meta"]


def test_ignore_headers_and_status():
    rules = DiffRules(headers=("content-type", "date"), ignore=("header:Date", "status"))
    p = js({}, headers={"date": "Mon"})
    s = js({}, status=503, headers={"date": "Tue"})
    assert compare(p, s, rules=rules).result == MATCH
    assert paths(compare(p, s, rules=DiffRules(headers=("date",)))) == ["status", "header:date"]


def test_ignore_body_for_non_json():
    rules = DiffRules(ignore=("body",))
    assert compare(Captured(200, {}, b"a"), Captured(200, {}, b"b"), rules=rules).result == MATCH


@pytest.mark.parametrize("bad", ["meta.ts", "$.a[", "$..a", "$.a[x]", "headers:date", ""])
def test_bad_patterns_rejected_once_at_construction(bad):
    with pytest.raises(ValueError, match="diff pattern"):
        DiffRules(ignore=(bad,))
    with pytest.raises(ValueError):
        DiffRules(array_as_set=(bad,))


def test_patterns_precompiled():
    rules = DiffRules(ignore=("$.a.*", "$.b"), array_as_set=("$.s",))
    assert rules._ignore is not None and rules._as_set is not None
    assert rules._ignore.match("$.a.x.y") and rules._ignore.match("$.b[0]")
    assert not rules._ignore.match("$.bb") and not rules._ignore.match("$.a")
    assert DiffRules() == DiffRules()  # compiled state does not enter equality


# -- noise -------------------------------------------------------------------------------------

def test_noise_from_secondary_differing_only_in_timestamp():
    p = js({"ts": "2024-01-01T00:00:00Z", "price": 4.99})
    secondary = js({"ts": "2024-01-01T00:00:01Z", "price": 4.99})
    shadow = js({"ts": "2024-01-01T00:00:02Z", "price": 4.99})
    c = compare(p, shadow, secondary)
    assert c.result == NOISE and c.differences == []
    assert [d.path for d in c.noise] == ["$.ts"]
    assert compare(p, shadow).result == MISMATCH  # without a secondary it is a difference


def test_noise_and_real_difference_together():
    p = js({"ts": 1, "price": 4.99})
    c = compare(p, js({"ts": 3, "price": "4.99"}), js({"ts": 2, "price": 4.99}))
    assert c.result == MISMATCH
    assert paths(c) == ["$.price"] and [d.path for d in c.noise] == ["$.ts"]


def test_noise_covers_paths_below_a_differing_ancestor():
    p = js({"meta": {"a": 1, "b": 2}})
    secondary = js({"meta": None})  # the whole object differs primary vs secondary
    c = compare(p, js({"meta": {"a": 5, "b": 2}}), secondary)
    assert c.result == NOISE and [d.path for d in c.noise] == ["$.meta.a"]


def test_noise_below_does_not_excuse_an_ancestor():
    p = js({"meta": {"ts": 1}})
    c = compare(p, js({}), js({"meta": {"ts": 2}}))  # shadow lost all of meta: real
    assert c.result == MISMATCH and paths(c) == ["$.meta"]


def test_noise_for_headers_status_and_bytes():
    rules = DiffRules(headers=("x-req",))
    p = Captured(200, {"x-req": "1"}, b"body 1")
    c = compare(p, Captured(200, {"x-req": "3"}, b"body 3"), Captured(200, {"x-req": "2"},
                b"body 2"), rules)
    assert c.result == NOISE and [d.path for d in c.noise] == ["header:x-req", "body"]


def test_secondary_equal_to_primary_changes_nothing():
    p, s = js({"a": 1}), js({"a": 2})
    assert compare(p, s, js({"a": 1})) == compare(p, s)


# -- non-JSON bodies ---------------------------------------------------------------------

def test_non_json_body_summary_and_excerpt():
    a = b"x" * 1000 + b"<p>old</p>" + b"y" * 1000
    b = b"x" * 1000 + b"<p>new</p>" + b"y" * 500
    path, pa, pb = one(compare(Captured(200, {}, a), Captured(200, {}, b)))
    assert path == "body"
    assert pa["length"] == len(a) and pb["length"] == len(b)
    assert len(pa["sha256"]) == 64 and pa["sha256"] != pb["sha256"]
    assert pa["offset"] == pb["offset"] == 1003
    assert "<p>old</p>" in pa["excerpt"] and "<p>new</p>" in pb["excerpt"]
    assert 30 <= len(pa["excerpt"]) <= 48


def test_body_excerpt_when_one_is_a_prefix_and_bytes_are_not_utf8():
    _, pa, pb = one(compare(Captured(200, {}, b"abc"), Captured(200, {}, b"abc\xff\xfe")))
    assert pa["offset"] == 3 and pa["excerpt"] == "abc" and pb["excerpt"] == "abc\ufffd\ufffd"


def test_equal_non_json_bodies_match():
    assert compare(Captured(200, {}, b"\x00" * 5000), Captured(200, {}, b"\x00" * 5000)).result \
        == MATCH


# -- parse_captured ------------------------------------------------------------------------

def test_parse_content_length():
    c = parse_captured(b"HTTP/1.1 201 Created\r\nContent-Type: application/json\r\n"
                       b"Content-Length: 7\r\n\r\n{\"a\":1}")
    assert c is not None and c.status == 201 and c.body == b'{"a":1}'
    assert c.header("content-type") == "application/json"


def test_parse_chunked_with_trailer():
    raw = (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
           b"4\r\n{\"a\"\r\n3;ext=1\r\n:1}\r\n0\r\nX-Trailer: t\r\n\r\n")
    c = parse_captured(raw)
    assert c is not None and c.body == b'{"a":1}'


def test_parse_to_close_body_and_trailing_bytes():
    c = parse_captured(b"HTTP/1.0 200 OK\r\n\r\nuntil close")
    assert c is not None and c.body == b"until close"
    c = parse_captured(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokEXTRA")
    assert c is not None and c.body == b"ok"


def test_parse_head_response_has_no_body():
    raw = b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\nContent-Type: text/html\r\n\r\n"
    c = parse_captured(raw, head_request=True)
    assert c is not None and c.body == b"" and c.header("content-length") == "1234"
    assert parse_captured(raw) is None  # as a GET, 1234 bytes are missing
    assert compare(c, parse_captured(raw, head_request=True)).result == MATCH


def test_parse_skips_1xx():
    c = parse_captured(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n")
    assert c is not None and c.status == 204


@pytest.mark.parametrize("raw", [
    b"",
    b"garbage\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel",
    b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
    b"HTTP/1.1 200 OK\r\nBad Header\r\n\r\n",
    b"HTTP/1.1 200 OK\r\n",
])
def test_unparseable_capture_is_none(raw):
    assert parse_captured(raw) is None


def test_parse_decodes_gzip():
    body = orjson.dumps({"a": list(range(100))})
    raw = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Encoding: gzip\r\n"
           b"Content-Length: %d\r\n\r\n" % len(gzip.compress(body))) + gzip.compress(body)
    c = parse_captured(raw)
    assert c is not None and c.body == body
    broken = raw.replace(b"gzip\r\n", b"gzip\r\nX: 1\r\n")[:-3] + b"zzz"
    c = parse_captured(broken)
    assert c is not None and c.body.endswith(b"zzz")  # not gzip after all: kept as it came


# -- bounds -------------------------------------------------------------------------------------

def test_bounded_differences():
    p, s = js({f"k{i}": i for i in range(100)}), js({f"k{i}": -i - 1 for i in range(100)})
    c = compare(p, s, rules=DiffRules(max_differences=5))
    assert c.result == MISMATCH and c.truncated and len(c.differences) == 5
    assert not compare(p, s, rules=DiffRules(max_differences=100)).truncated


def test_node_budget_compares_the_rest_by_hash():
    p = js({"a": [[i] for i in range(50)], "b": [[1], [2]], "c": [[1]]})
    s = js({"a": [[-i] for i in range(50)], "b": [[1], [3]], "c": [[1]]})
    c = compare(p, s, rules=DiffRules(max_nodes=10, max_differences=100))
    # The budget is spent entering `a`: its items and `b` are compared whole, by hash.
    assert paths(c) == [f"$.a[{i}]" for i in range(1, 50)] + ["$.b"]
    assert c.differences[-1] == Difference("$.b", [[1], [2]], [[1], [3]])
    full = compare(p, s, rules=DiffRules(max_differences=100))
    assert "$.b[1][0]" in paths(full) and len(full.differences) == 50


def test_long_values_are_cut():
    c = compare(js({"s": "x" * 10_000, "l": list(range(5000))}),
                js({"s": "y" * 10_000, "l": [0]}), rules=DiffRules(max_differences=1))
    d = c.differences[0]
    assert len(d.primary) < 300 and d.primary.endswith("…")
    c = compare(js({"o": {"big": list(range(5000))}}), js({}))
    assert isinstance(c.differences[0].primary, str) and len(c.differences[0].primary) < 1100


@pytest.mark.parametrize("depth", [300, 3000])
def test_deeply_nested_json_does_not_raise(depth):
    a = b"[" * depth + b"1" + b"]" * depth
    b = b"[" * depth + b"2" + b"]" * depth
    c = compare(Captured(200, JSON_CT, a), Captured(200, JSON_CT, b))
    assert c.result == MISMATCH


# -- endpoint names ----------------------------------------------------------------------------

@pytest.mark.parametrize("target, name", [
    ("/users/123/orders?x=1", "GET /users/{id}/orders"),
    ("/items/550e8400-e29b-41d4-a716-446655440000", "GET /items/{id}"),
    ("/blobs/DEADBEEFDEADBEEF00/raw", "GET /blobs/{id}/raw"),
    ("/t/abcdefghij123456", "GET /t/{id}"),
    ("/t/abcdefghijklmnop", "GET /t/abcdefghijklmnop"),  # long word, no digit
    ("/v2/api", "GET /v2/api"),
    ("/", "GET /"),
    ("", "GET /"),
    ("/a/1/", "GET /a/{id}/"),
    ("http://example.com:8080/a/1?q", "GET /a/{id}"),
    ("/search#frag", "GET /search"),
])
def test_endpoint_names(target, name):
    assert EndpointNamer().name("GET", target) == name


def test_endpoint_templates_win():
    n = EndpointNamer(templates=("/users/{user}/orders/{order}", "/files/{name}"))
    assert n.name("GET", "/users/alice/orders/42") == "GET /users/{user}/orders/{order}"
    assert n.name(b"PUT", b"/files/report.pdf?v=2") == "PUT /files/{name}"
    assert n.name("GET", "/users/7/orders") == "GET /users/{id}/orders"  # fewer segments
    with pytest.raises(ValueError):
        EndpointNamer(templates=("users/{id}",))


def test_endpoint_cap_folds_new_names_into_other():
    n = EndpointNamer(max_endpoints=2)
    assert n.name("GET", "/a") == "GET /a" and n.name("GET", "/b/1") == "GET /b/{id}"
    assert n.name("GET", "/c") == OTHER and n.name("POST", "/a") == OTHER
    assert n.name("GET", "/b/2") == "GET /b/{id}"  # existing ones keep working
    assert n.name("GET", "/a?x") == "GET /a"


def test_endpoint_cache_bounded():
    n = EndpointNamer(max_endpoints=5, cache_size=10)
    for i in range(100):
        assert n.name("GET", f"/x/{i}?q={i}") == "GET /x/{id}"
    assert len(n._cache) <= 10


# -- the store -----------------------------------------------------------------------------------

def mismatch(*diffs, noise=()):
    return Comparison(MISMATCH if diffs else NOISE if noise else MATCH,
                      [Difference(*d) for d in diffs], [Difference(*d) for d in noise])


def test_store_aggregates_per_upstream_and_endpoint():
    store = DiffStore()
    store.record("s:1", "GET /a", Comparison(MATCH), "r1", "/a")
    store.record("s:1", "GET /a", mismatch(("$.price", 4.99, "4.99")), "r2", "/a?x=1")
    store.record("s:1", "GET /a", mismatch(("$.price", 5.0, "5"), ("status", 200, 500)), "r3",
                 "/a")
    store.record("s:1", "GET /a", mismatch(noise=[("$.ts", 1, 2)]), "r4", "/a")
    store.record_skipped("s:1", "GET /a", "too-large")
    store.record_skipped("s:1", "GET /a", "too-large")
    store.record("s:2", "GET /b", Comparison(MATCH))
    snap = store.snapshot()
    assert orjson.loads(orjson.dumps(snap)) == snap  # JSON-able
    ep = snap["upstreams"]["s:1"]["endpoints"]["GET /a"]
    assert {k: ep[k] for k in ("compared", "match", "mismatch", "noise", "skipped")} == {
        "compared": 4, "match": 1, "mismatch": 2, "noise": 1, "skipped": {"too-large": 2}}
    assert [(f["path"], f["count"]) for f in ep["fields"]] == [("$.price", 2), ("status", 1)]
    assert ep["fields"][0]["example"] == {  # the first one seen
        "request_id": "r2", "target": "/a?x=1", "primary": 4.99, "shadow": "4.99"}
    assert [(f["path"], f["count"]) for f in ep["noise_fields"]] == [("$.ts", 1)]
    assert sorted(store.counts()) == sorted([
        ("s:1", "GET /a", "match", 1), ("s:1", "GET /a", "mismatch", 2),
        ("s:1", "GET /a", "noise", 1), ("s:2", "GET /b", "match", 1),
        ("s:2", "GET /b", "mismatch", 0), ("s:2", "GET /b", "noise", 0)])


def test_store_examples_capped():
    store = DiffStore(max_examples_bytes=100)
    store.record("s", "e", mismatch(("$.s", "x" * 5000, {"k": "y" * 5000})), "id" * 100, "/t")
    ex = store.snapshot()["upstreams"]["s"]["endpoints"]["e"]["fields"][0]["example"]
    for key in ("primary", "shadow", "request_id"):
        assert len(orjson.dumps(ex[key])) <= 110, key
    assert ex["target"] == "/t"
    assert ex["primary"].endswith("…")


def test_store_folds_fields_past_max_fields():
    store = DiffStore(max_fields=3)
    for i in range(10):
        store.record("s", "e", mismatch((f"$.f{i}", i, -i)))
    fields = store.snapshot()["upstreams"]["s"]["endpoints"]["e"]["fields"]
    assert len(fields) == 4
    other = next(f for f in fields if f["path"] == OTHER_FIELDS)
    assert other["count"] == 7 and other["example"]["path"] == "$.f3"
    assert fields[0]["path"] == OTHER_FIELDS  # sorted by count


def test_store_bytes_request_id_and_long_path():
    store = DiffStore()
    store.record("s", "e", mismatch(("$." + "k" * 2000, 1, 2)), b"rid", b"/t")
    row = store.snapshot()["upstreams"]["s"]["endpoints"]["e"]["fields"][0]
    assert len(row["path"]) < 600 and row["example"]["request_id"] == "rid"


def test_store_caps_endpoints():
    store = DiffStore(max_endpoints=2)
    for name in ("a", "b", "c", "d"):
        store.record("s", name, Comparison(MATCH))
    eps = store.snapshot()["upstreams"]["s"]["endpoints"]
    assert set(eps) == {"a", "b", OTHER} and eps[OTHER]["compared"] == 2


def test_store_thread_safety_smoke():
    store = DiffStore()
    stop = threading.Event()

    def writer():
        for i in range(3000):
            store.record("s", f"e{i % 7}", mismatch((f"$.f{i % 60}", i, -i)))
        stop.set()

    t = threading.Thread(target=writer)
    t.start()
    while not stop.is_set():
        orjson.dumps(store.snapshot())
    t.join()
    eps = store.snapshot()["upstreams"]["s"]["endpoints"]
    assert sum(ep["mismatch"] for ep in eps.values()) == 3000


def test_merge_snapshots():
    a, b = DiffStore(), DiffStore()
    a.record("s", "GET /a", mismatch(("$.x", 1, 2)), "from-a")
    a.record_skipped("s", "GET /a", "overload")
    b.record("s", "GET /a", mismatch(("$.x", 3, 4), ("$.y", 1, 2)), "from-b")
    b.record("s", "GET /a", Comparison(MATCH))
    b.record_skipped("s", "GET /a", "overload")
    b.record("t", "GET /c", mismatch(noise=[("$.ts", 1, 2)]))
    merged = DiffStore.merge_snapshots([a.snapshot(), b.snapshot()])
    ep = merged["upstreams"]["s"]["endpoints"]["GET /a"]
    assert (ep["compared"], ep["match"], ep["mismatch"], ep["noise"]) == (3, 1, 2, 0)
    assert ep["skipped"] == {"overload": 2}
    assert [(f["path"], f["count"]) for f in ep["fields"]] == [("$.x", 2), ("$.y", 1)]
    assert ep["fields"][0]["example"]["request_id"] == "from-a"
    assert merged["upstreams"]["t"]["endpoints"]["GET /c"]["noise_fields"][0]["count"] == 1
    assert DiffStore.merge_snapshots([merged]) == merged
    assert DiffStore.merge_snapshots([]) == {"upstreams": {}}


# -- rendering ---------------------------------------------------------------------------------

def sample_snapshot():
    store = DiffStore()
    for _ in range(3):
        store.record("shadow:9000", "GET /items/{id}", mismatch(("$.price", 4.99, "4.99")), "r1",
                     "/items/1")
    store.record("shadow:9000", "GET /items/{id}", Comparison(MATCH))
    store.record("shadow:9000", "GET /ok", Comparison(MATCH))
    store.record("shadow:9000", "GET /html", mismatch(
        ("body", {"length": 3, "sha256": "ab" * 32, "offset": 0, "excerpt": "<b>"},
         {"length": 4, "sha256": "cd" * 32, "offset": 0, "excerpt": "<i>"}),
        ("header:etag", ABSENT, '"v2"'), noise=[("$.ts", 1, 2)]))
    return store.snapshot()


def test_render_text():
    text = render_text(sample_snapshot())
    lines = text.splitlines()
    assert lines[0].startswith("shadow shadow:9000: 6 compared")
    assert lines[1].startswith("  GET /items/{id}: 4 compared, 1 match, 3 mismatch (75.0%)")
    assert '    $.price  3x  primary: 4.99  shadow: "4.99"' in lines
    assert "    header:etag  1x  primary: <absent>  shadow: \"\\\"v2\\\"\"" in lines
    assert any("noise: $.ts 1x" in line for line in lines)
    assert text.index("GET /items/{id}") < text.index("GET /html") < text.index("GET /ok")
    assert render_text({"upstreams": {}}) == "no responses compared yet\n"


def test_render_html_is_escaped_and_complete():
    page = render_html(sample_snapshot())
    assert page.startswith("<!DOCTYPE html>") and "<style>" in page and "<script" not in page
    assert "$.price" in page and "GET /items/{id}" in page and "75.0%" in page
    assert "&lt;b&gt;" in page and "<b>" not in page  # the body excerpt, escaped
    assert "&quot;4.99&quot;" in page
    assert "No responses compared yet" in render_html({})


# -- properties ---------------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=5)
    | st.dictionaries(st.text(max_size=8), children, max_size=5),
    max_leaves=30)
header_sets = st.lists(st.tuples(
    st.sampled_from(["content-type", "Content-Type", "date", "etag", "x-a"]),
    st.text("abcxyz/;= +", max_size=12)), max_size=5)
statuses = st.integers(100, 599)
any_rules = st.builds(DiffRules, headers=st.sampled_from([("content-type",), ("etag", "date")]),
                      ignore=st.sampled_from([(), ("$.a",), ("$[*]",), ("header:date",)]),
                      array_as_set=st.sampled_from([(), ("$",), ("$.a",)]))


@settings(max_examples=200, deadline=None)
@given(json_values, statuses, header_sets, st.booleans(), any_rules)
def test_property_self_comparison_never_differs(value, status, headers, as_json, rules):
    if as_json:
        headers = [h for h in headers if h[0].lower() != "content-type"]
        headers.append(("content-type", "application/json"))
    body = orjson.dumps(value)
    c = Captured(status, headers, body)
    assert compare(c, c, None, rules).result == MATCH
    assert compare(c, c, c, rules).result == MATCH
    # Re-serialised differently (indent, sorted keys): the same JSON, still no difference.
    again = Captured(status, headers, orjson.dumps(value, option=orjson.OPT_INDENT_2
                                                   | orjson.OPT_SORT_KEYS))
    assert compare(c, again, None, rules).result == (MATCH if as_json or body == again.body
                                                     else MISMATCH)


@settings(max_examples=200, deadline=None)
@given(json_values, json_values, statuses, statuses, st.booleans(), any_rules,
       st.integers(1, 5))
def test_property_secondary_differences_never_mismatch(p, sec, ps, ss, as_json, rules, limit):
    rules = DiffRules(rules.headers, rules.ignore, rules.array_as_set, max_differences=limit)
    ct = [("content-type", "application/json" if as_json else "text/plain")]
    primary = Captured(ps, ct + [("etag", "1")], orjson.dumps(p))
    secondary = Captured(ss, ct + [("etag", "2")], orjson.dumps(sec))
    shadow = Captured(ss, ct + [("etag", "2")], orjson.dumps(sec))  # equal to the secondary
    c = compare(primary, shadow, secondary, rules)
    assert c.result != MISMATCH and c.differences == []
    assert c.result == compare(primary, secondary, secondary, rules).result


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300), st.binary(max_size=300), st.booleans(), st.booleans())
def test_property_compare_never_raises_on_bytes(a, b, a_json, b_json):
    ct_a = {"content-type": "application/json"} if a_json else {}
    ct_b = {"content-type": "application/json"} if b_json else {}
    c = compare(Captured(200, ct_a, a), Captured(200, ct_b, b), Captured(200, ct_a, b[:5]))
    assert c.result in (MATCH, MISMATCH, NOISE)
    assert (c.result == MATCH) == (a == b and a_json == b_json)
    orjson.dumps(c)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200), st.booleans())
def test_property_parse_captured_never_raises(tail, head_request):
    for raw in (tail, b"HTTP/1.1 200 OK\r\n" + tail, b"HTTP/1.1 200 OK\r\n\r\n" + tail):
        c = parse_captured(raw, head_request)
        assert c is None or isinstance(c, Captured)


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.text(max_size=6), st.integers(-1000, 1000), min_size=1, max_size=4))
def test_property_ignoring_a_reported_path_removes_it(value):
    changed = {k: v + 1 for k, v in value.items()}
    c = compare(js(value), js(changed))
    for d in c.differences:
        ignored = compare(js(value), js(changed), rules=DiffRules(ignore=(d.path,)))
        assert d.path not in paths(ignored)
