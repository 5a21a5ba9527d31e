"""Micro-benchmarks of response diffing (pure, on the diff thread; no core variants).

    python -m pytest benchmarks/bench_diff.py --benchmark-only -q

compare() on a ~300-byte JSON answer (identical bytes; one field changed; the same with
a secondary that differs in a timestamp), on a 100 KiB JSON with one field changed and
on a 100 KiB non-JSON body that differs in the middle; parse_captured() on a small
Content-Length response and on a chunked one.
"""

from __future__ import annotations

import orjson
import pytest

from fastmirror.diffing.diff import MATCH, MISMATCH, NOISE, Captured, DiffRules, compare, parse_captured

CT = [("content-type", "application/json")]
RULES = DiffRules(ignore=("header:date",))

SMALL = {
    "id": 1234, "name": "Blue mug, 350 ml", "sku": "MUG-350-BLU", "price": 4.99,
    "currency": "EUR", "stock": {"warehouse": "FRA-2", "count": 118, "reserved": 3},
    "tags": ["kitchen", "ceramic", "blue"], "rating": {"avg": 4.6, "n": 212},
    "updated": "2024-05-01T10:00:00Z", "links": {"self": "/items/1234", "img": "/i/1234.jpg"},
    "dimensions": {"h": 9.5, "d": 8.2, "unit": "cm"},
}


def _with(value: dict, **changes) -> dict:
    out = orjson.loads(orjson.dumps(value))
    out.update(changes)
    return out


SMALL_BYTES = orjson.dumps(SMALL)
assert 280 <= len(SMALL_BYTES) <= 360, len(SMALL_BYTES)
SMALL_P = Captured(200, CT, SMALL_BYTES)
SMALL_S = Captured(200, CT, orjson.dumps(_with(SMALL, price="4.99", updated="2024-05-01T10:00:02Z")))
SMALL_SEC = Captured(200, CT, orjson.dumps(_with(SMALL, updated="2024-05-01T10:00:01Z")))

# ~100 KiB: a page of 300 items like SMALL; the shadow changes one price in the middle.
BIG = {"items": [_with(SMALL, id=i) for i in range(300)], "page": 1, "total": 9000}
BIG_BYTES = orjson.dumps(BIG)
BIG_CHANGED = orjson.loads(BIG_BYTES)
BIG_CHANGED["items"][150]["price"] = 5.49
BIG_P = Captured(200, CT, BIG_BYTES)
BIG_S = Captured(200, CT, orjson.dumps(BIG_CHANGED))
assert 90_000 <= len(BIG_BYTES) <= 115_000, len(BIG_BYTES)

TEXT = bytes(range(32, 127)) * 1100  # ~100 KiB of text/html-ish bytes
TEXT_P = Captured(200, [("content-type", "text/html")], TEXT[:102_400])
TEXT_S = Captured(200, [("content-type", "text/html")],
                  TEXT[:51_200] + b"CHANGED" + TEXT[51_207:102_400])

RAW_SMALL = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
             b"Date: Mon, 01 Jan 2024 00:00:00 GMT\r\nServer: shop/1.0\r\n\r\n"
             % len(SMALL_BYTES)) + SMALL_BYTES
RAW_CHUNKED = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked"
               b"\r\n\r\n" + b"".join(b"%x\r\n%s\r\n" % (len(SMALL_BYTES[k:k + 100]),
                                                        SMALL_BYTES[k:k + 100])
                                      for k in range(0, len(SMALL_BYTES), 100)) + b"0\r\n\r\n")


@pytest.mark.benchmark(group="compare-small-json")
def test_compare_small_json_identical(benchmark):
    assert benchmark(compare, SMALL_P, Captured(200, CT, SMALL_BYTES), None, RULES).result == MATCH


@pytest.mark.benchmark(group="compare-small-json")
def test_compare_small_json_one_field(benchmark):
    c = benchmark(compare, SMALL_P, SMALL_S, None, RULES)
    assert c.result == MISMATCH and [d.path for d in c.differences] == ["$.price", "$.updated"]


@pytest.mark.benchmark(group="compare-small-json")
def test_compare_small_json_with_secondary(benchmark):
    c = benchmark(compare, SMALL_P, SMALL_S, SMALL_SEC, RULES)
    assert c.result == MISMATCH and [d.path for d in c.noise] == ["$.updated"]


@pytest.mark.benchmark(group="compare-small-json")
def test_compare_small_json_noise_only(benchmark):
    shadow = Captured(200, CT, orjson.dumps(_with(SMALL, updated="2024-05-01T10:00:02Z")))
    assert benchmark(compare, SMALL_P, shadow, SMALL_SEC, RULES).result == NOISE


@pytest.mark.benchmark(group="compare-100k")
def test_compare_100k_json_one_field(benchmark):
    c = benchmark(compare, BIG_P, BIG_S, None, RULES)
    assert [d.path for d in c.differences] == ["$.items[150].price"]


@pytest.mark.benchmark(group="compare-100k")
def test_compare_100k_non_json(benchmark):
    c = benchmark(compare, TEXT_P, TEXT_S, None, RULES)
    assert [d.path for d in c.differences] == ["body"]
    assert c.differences[0].primary["offset"] == 51_200


@pytest.mark.benchmark(group="parse")
def test_parse_captured_small(benchmark):
    c = benchmark(parse_captured, RAW_SMALL, False)
    assert c is not None and c.body == SMALL_BYTES


@pytest.mark.benchmark(group="parse")
def test_parse_captured_small_chunked(benchmark):
    c = benchmark(parse_captured, RAW_CHUNKED, False)
    assert c is not None and c.body == SMALL_BYTES
