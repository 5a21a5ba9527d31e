"""scrape: reading fastmirror's own Prometheus text back, and quantiles from its buckets."""

from __future__ import annotations

import itertools
import math
import random

import pytest

from fastmirror.ops.metrics import BUCKETS, Registry, UpstreamStats
from fastmirror.ops.scrape import DURATION, MIRROR, QUEUE_DEPTH, RESPONSES, Scrape, quantile, read_metrics

P = "127.0.0.1:9000"
S = "127.0.0.1:9001"


def make_registry() -> Registry:
    reg = Registry(version="1.2.3", core="cython", process=False)
    p = reg.upstream("primary", P)
    for v in (0.0004, 0.0004, 0.003, 0.2):
        p.observe(v, 200)
    p.observe(0.05, 503)
    p.error()
    reg.upstream("shadow", S).observe(0.001, 404)
    m = reg.mirror(S)
    m.sent, m.dropped, m.failed = 7, 2, 1
    m.depth = 5
    return reg


def cumulative(stats: UpstreamStats) -> list[tuple[float, int]]:
    """[(upper bound, cumulative count), ..., (inf, count)] of stats' raw buckets."""
    return list(zip((*BUCKETS, math.inf), itertools.accumulate(stats.buckets), strict=True))


def parse_histograms(text: str | bytes) -> dict[tuple[str, ...], list[tuple[float, float]]]:
    """The duration histogram per (role, upstream), as report and demo read it."""
    return read_metrics(text).buckets_by(DURATION, "role", "upstream")


# -- read_metrics ------------------------------------------------------------------------


def test_samples_by_name_and_labels_from_a_rendered_registry() -> None:
    scrape = read_metrics(make_registry().render())
    assert scrape.sum_by(RESPONSES, "role", "code") == {
        ("primary", "2xx"): 4.0, ("primary", "3xx"): 0.0, ("primary", "4xx"): 0.0, ("primary", "5xx"): 1.0,
        ("primary", "error"): 1.0, ("shadow", "2xx"): 0.0, ("shadow", "3xx"): 0.0, ("shadow", "4xx"): 1.0,
        ("shadow", "5xx"): 0.0, ("shadow", "error"): 0.0,
    }  # fmt: skip
    assert {s.labels["outcome"]: s.value for s in scrape.series(MIRROR)} == {
        "sent": 7.0, "dropped": 2.0, "skipped": 0.0, "failed": 1.0, "limited": 0.0}
    assert [(dict(s.labels), s.value) for s in scrape.series(QUEUE_DEPTH)] == [({"upstream": S}, 5.0)]
    assert scrape.series("fastmirror_info")[0].labels == {"version": "1.2.3", "core": "cython"}


def test_histogram_is_cumulative_with_inf_last_and_matches_its_count() -> None:
    scrape = read_metrics(make_registry().render())
    (primary,) = [h for h in scrape.histograms[DURATION] if h.labels["role"] == "primary"]
    assert primary.labels == {"role": "primary", "upstream": P}  # no "le"
    bounds = [b for b, _ in primary.buckets]
    assert bounds == [*BUCKETS, math.inf]
    counts = [c for _, c in primary.buckets]
    assert counts == sorted(counts) and counts[-1] == 5.0
    (count,) = [s.value for s in scrape.series(DURATION + "_count") if s.labels["role"] == "primary"]
    assert count == counts[-1]


def test_parse_histograms_roundtrip() -> None:
    reg = make_registry()
    hists = parse_histograms(reg.render())
    assert set(hists) == {("primary", P), ("shadow", S)}
    primary = hists[("primary", P)]
    assert primary == [(float(b), float(c)) for b, c in cumulative(reg.upstream("primary", P))]
    assert primary[-1] == (math.inf, 5.0)
    assert parse_histograms(reg.render().decode()) == hists


def test_buckets_by_adds_series_up_bound_by_bound() -> None:
    reg = Registry(process=False)
    reg.upstream("primary", P).observe(0.001, 200)
    reg.upstream("primary", S).observe(0.001, 200)  # a second primary (after a SIGHUP)
    reg.upstream("primary", S).observe(5.0, 200)
    (buckets,) = read_metrics(reg.render()).buckets_by(DURATION, "role").values()
    assert dict(buckets)[0.001] == 2.0 and dict(buckets)[5.0] == 3.0 and buckets[-1] == (math.inf, 3.0)


def test_empty_text_is_an_empty_scrape() -> None:
    for text in ("", b""):
        scrape = read_metrics(text)
        assert scrape == Scrape({}, {})
        assert scrape.series(RESPONSES) == () and scrape.sum_by(RESPONSES, "role") == {}
        assert scrape.buckets_by(DURATION, "role") == {}


def test_missing_families_read_as_none() -> None:
    reg = Registry(process=False)  # no upstream seen yet: no responses, no mirror series
    scrape = read_metrics(reg.render())
    assert scrape.series(RESPONSES) == () and scrape.series(MIRROR) == ()
    assert scrape.buckets_by(DURATION, "role", "upstream") == {}
    assert scrape.series("fastmirror_downstream_requests_total")[0].value == 0.0


def test_escaped_label_values_are_unescaped() -> None:
    reg = Registry(process=False)
    odd = 'we"ird\\host\nname'
    reg.upstream("shadow", odd).observe(0.002, 200)
    rendered = reg.render().decode()
    assert r'upstream="we\"ird\\host\nname"' in rendered  # the text escapes them
    scrape = read_metrics(rendered)
    assert ("shadow", odd) in parse_histograms(rendered)
    assert scrape.sum_by(RESPONSES, "upstream", "code")[(odd, "2xx")] == 1.0


def test_inf_bucket_holds_what_no_bound_does() -> None:
    text = ('# TYPE h histogram\nh_bucket{le="0.5"} 1\nh_bucket{le="+Inf"} 4\n'
            'h_bucket{le="1.0"} 3\nh_count 4\nh_sum 9\n')  # fmt: skip
    (h,) = read_metrics(text).histograms["h"]
    assert h.labels == {} and h.buckets == ((0.5, 1.0), (1.0, 3.0), (math.inf, 4.0))  # sorted by bound
    assert quantile(h.buckets, 0.99) == 1.0  # a rank in +Inf: the largest finite bound


def test_untyped_bucket_lines_are_samples_not_histograms() -> None:
    scrape = read_metrics('h_bucket{le="+Inf"} 3\n')
    assert scrape.histograms == {} and scrape.series("h_bucket")[0].value == 3.0


def test_sum_by_names_a_missing_label() -> None:
    with pytest.raises(KeyError, match="role"):
        read_metrics('fastmirror_responses_total{code="2xx"} 1\n').sum_by(RESPONSES, "role")


@pytest.mark.parametrize("text", ["[Errno 111] Connection refused", b"\xff\xfe"])
def test_not_prometheus_text_raises_value_error(text: str | bytes) -> None:
    with pytest.raises(ValueError):
        read_metrics(text)


# -- quantile ----------------------------------------------------------------------------


def test_quantile_exact_interpolation() -> None:
    buckets = [(1.0, 10), (2.0, 30), (4.0, 40), (math.inf, 40)]
    assert quantile(buckets, 0.25) == pytest.approx(1.0)  # rank 10: top of the first bucket
    assert quantile(buckets, 0.5) == pytest.approx(1.5)  # rank 20: halfway through (1, 2]
    assert quantile(buckets, 0.125) == pytest.approx(0.5)  # first bucket's lower bound is 0
    assert quantile(buckets, 1.0) == pytest.approx(4.0)
    assert quantile(dict(buckets), 0.5) == pytest.approx(1.5)


def test_quantile_in_inf_bucket_returns_largest_bound() -> None:
    assert quantile([(1.0, 1), (math.inf, 10)], 0.99) == 1.0


def test_quantile_empty_and_invalid() -> None:
    assert math.isnan(quantile([], 0.5))
    assert math.isnan(quantile([(1.0, 0), (math.inf, 0)], 0.5))
    with pytest.raises(ValueError):
        quantile([(1.0, 1)], 1.5)


@pytest.mark.parametrize("q", [0.5, 0.9, 0.99])
@pytest.mark.parametrize(("lo", "hi"), [(0.0001, 0.001), (0.002, 0.2), (0.05, 5.0)])
def test_quantile_against_known_data(q: float, lo: float, hi: float) -> None:
    rng = random.Random(1234)
    values = sorted(rng.uniform(lo, hi) for _ in range(20000))
    reg = Registry(process=False)
    s = reg.upstream("primary", P)
    for v in values:
        s.observe(v, 200)
    est = quantile(parse_histograms(reg.render())[("primary", P)], q)
    true = values[int(q * len(values)) - 1]
    # Uniform data inside a bucket is what linear interpolation assumes; the error
    # comes from the sample noise and the partially covered edge buckets.
    assert est == pytest.approx(true, rel=0.05)


def test_quantile_from_cumulative_matches_scrape() -> None:
    s = UpstreamStats("primary", P)
    for v in (0.0003, 0.004, 0.004, 0.08, 1.2):
        s.observe(v, 200)
    reg = Registry(process=False)
    reg.upstream("primary", P).buckets = list(s.buckets)
    scraped = parse_histograms(reg.render())[("primary", P)]
    for q in (0.1, 0.5, 0.99):
        assert quantile(cumulative(s), q) == pytest.approx(quantile(scraped, q))
