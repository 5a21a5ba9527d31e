"""report: thresholds, figures from a real Registry's exposition, the verdict, the text."""

from __future__ import annotations

import math

import orjson
import pytest

from fastmirror.ops.metrics import Registry
from fastmirror.diffing.report import (
    ThresholdError,
    Thresholds,
    build_report,
    parse_fraction,
    render_report_text,
)

P = "127.0.0.1:9000"
S = "127.0.0.1:9001"
S2 = "127.0.0.1:9002"


def scrape(
    *,
    primary: tuple[float, int] = (0.001, 1000),
    shadows: dict[str, tuple[float, int]] | None = None,
    shadow_5xx: int = 0,
    shadow_errors: int = 0,
    primary_5xx: int = 0,
) -> str:
    """The /metrics text of a Registry that saw `n` responses of `seconds` per side."""
    reg = Registry(version="test", core="python", process=False)
    seconds, n = primary
    p = reg.upstream("primary", P)
    for i in range(n):
        p.observe(seconds, 500 if i < primary_5xx else 200)
    for upstream, (seconds, n) in (shadows if shadows is not None else {S: (0.001, 1000)}).items():
        s = reg.upstream("shadow", upstream)
        for i in range(n):
            s.observe(seconds, 500 if i < shadow_5xx else 200)
        for _ in range(shadow_errors):
            s.error()
        m = reg.mirror(upstream)
        m.sent, m.dropped, m.failed = n, 3, shadow_errors
    return reg.render().decode()


def endpoint(compared: int, mismatch: int = 0, noise: int = 0, fields: list | None = None) -> dict:
    return {
        "compared": compared, "match": compared - mismatch - noise, "mismatch": mismatch,
        "noise": noise, "skipped": {"too_large": 1}, "fields": fields or [], "noise_fields": [],
    }  # fmt: skip


FIELD = {"path": "$.results[0].price", "count": 40,
         "example": {"request_id": "abc", "target": "/api/search?q=x", "primary": 10, "shadow": 12}}  # fmt: skip
DIFFS = {"upstreams": {S: {"endpoints": {
    "GET /api/search": endpoint(400, mismatch=40, noise=10, fields=[
        {"path": "header:content-type", "count": 2, "example": {"primary": "a", "shadow": "b"}}, FIELD]),
    "GET /users/{id}": endpoint(600),
}}}}  # fmt: skip
EMPTY = {"upstreams": {}}


# -- parse_fraction and Thresholds -----------------------------------------------------


@pytest.mark.parametrize(
    ("text", "value"),
    [("0.1%", 0.001), ("0.02", 0.02), (0.02, 0.02), ("1%", 0.01), (" 5 % ", 0.05), ("100%", 1.0),
     ("0", 0.0), ("0%", 0.0), (1, 1.0), ("1e-3", 0.001)],
)  # fmt: skip
def test_parse_fraction(text, value):
    assert parse_fraction(text) == pytest.approx(value, abs=0, rel=1e-12)


def test_parse_fraction_percent_is_exact():
    assert parse_fraction("0.1%") == 0.001  # via Decimal: not 0.1 / 100 = 0.0010000000000000002


@pytest.mark.parametrize("text", ["5", "150%", "-1%", "-0.1", "abc", "", "%", "nan", "inf", True, math.nan])
def test_parse_fraction_refuses(text):
    with pytest.raises(ValueError, match="fraction from 0 to 1 or a percentage"):
        parse_fraction(text)


def test_thresholds_defaults():
    t = Thresholds()
    assert (t.max_p99_ratio, t.max_p50_ratio, t.max_mismatch, t.max_error_rate_diff, t.min_requests) == (
        None, None, None, None, 1,
    )  # fmt: skip


def test_thresholds_parse():
    t = Thresholds.parse({"max_p99_ratio": "1.2", "max_p50_ratio": "2x", "max_mismatch": "0.1%",
                          "max_error_rate_diff": "0.01", "min_requests": "100"})  # fmt: skip
    assert t == Thresholds(max_p99_ratio=1.2, max_p50_ratio=2.0, max_mismatch=0.001,
                           max_error_rate_diff=0.01, min_requests=100)  # fmt: skip
    assert Thresholds.parse({}) == Thresholds()
    assert Thresholds.parse({"min_requests": "0"}).min_requests == 0


@pytest.mark.parametrize(
    ("key", "text"),
    [("max_p99_ratio", "abc"), ("max_p99_ratio", "0"), ("max_p99_ratio", "-1"), ("max_p50_ratio", "inf"),
     ("max_mismatch", "5"), ("max_error_rate_diff", "x%"), ("min_requests", "-1"),
     ("min_requests", "1.5"), ("min_requests", "many"), ("max_p99", "1.2")],
)  # fmt: skip
def test_thresholds_parse_errors_name_the_key(key, text):
    with pytest.raises(ThresholdError) as info:
        Thresholds.parse({key: text})
    assert info.value.key == key
    assert str(info.value).startswith(f"{key}: ") and "\n" not in str(info.value)


# -- figures -----------------------------------------------------------------------------


def test_latency_ratios_from_a_real_registry():
    text = scrape(primary=(0.001, 1000), shadows={S: (0.0118, 1000)})
    report = build_report(text, EMPTY, Thresholds())
    s = report["shadows"][S]
    assert s["requests"] == 1000
    # Each side's observations sit in one bucket, interpolated linearly within it
    # (histogram_quantile): primary (0.5, 1] ms, shadow (10, 15] ms.
    assert s["primary"]["p50_ms"] == pytest.approx(0.75) and s["primary"]["p99_ms"] == pytest.approx(0.995)
    assert s["shadow"]["p50_ms"] == pytest.approx(12.5) and s["shadow"]["p99_ms"] == pytest.approx(14.95)
    assert s["p50_ratio"] == pytest.approx(12.5 / 0.75, rel=1e-3)
    assert s["p99_ratio"] == pytest.approx(14.95 / 0.995, rel=1e-3)
    assert s["mirror"] == {"sent": 1000, "dropped": 3, "skipped": 0, "failed": 0}


def test_same_latency_ratio_one():
    report = build_report(scrape(), EMPTY, Thresholds(max_p99_ratio=1.0, max_p50_ratio=1.0))
    s = report["shadows"][S]
    assert s["p50_ratio"] == 1.0 and s["p99_ratio"] == 1.0
    assert report["verdict"] == "pass"


def test_error_rates_and_difference():
    text = scrape(primary_5xx=10, shadow_5xx=30, shadow_errors=20)
    s = build_report(text, EMPTY, Thresholds())["shadows"][S]
    assert s["requests"] == 1020  # 1000 answered + 20 without a response
    assert s["primary"]["error_rate"] == pytest.approx(0.01)
    assert s["shadow"]["error_rate"] == pytest.approx(50 / 1020, abs=1e-6)
    assert s["error_rate_diff"] == pytest.approx(50 / 1020 - 0.01, abs=1e-6)
    assert s["mirror"]["failed"] == 20


def test_endpoints_from_the_diff_snapshot():
    report = build_report(scrape(), DIFFS, Thresholds())
    s = report["shadows"][S]
    assert s["diff"] == {"compared": 1000, "match": 950, "mismatch": 40, "noise": 10, "skipped": 2,
                         "mismatch_rate": 0.04}  # fmt: skip
    assert list(s["endpoints"]) == ["GET /api/search", "GET /users/{id}"]  # worst first
    search = s["endpoints"]["GET /api/search"]
    assert search["mismatch_rate"] == 0.1 and search["skipped"] == 1
    assert [f["path"] for f in search["fields"]] == ["$.results[0].price", "header:content-type"]
    assert search["fields"][0]["example"]["shadow"] == 12
    assert s["endpoints"]["GET /users/{id}"]["mismatch_rate"] == 0.0


def test_top_fields_are_capped():
    fields = [{"path": f"$.f{i}", "count": i, "example": {}} for i in range(12)]
    diffs = {"upstreams": {S: {"endpoints": {"GET /": endpoint(100, 12, fields=fields)}}}}
    s = build_report(scrape(), diffs, Thresholds())["shadows"][S]
    assert [f["path"] for f in s["endpoints"]["GET /"]["fields"]] == ["$.f11", "$.f10", "$.f9", "$.f8", "$.f7"]


def test_every_shadow_gets_its_block():
    text = scrape(shadows={S: (0.001, 10), S2: (0.002, 20)})
    report = build_report(text, {"upstreams": {S2: {"endpoints": {"GET /": endpoint(20, 1)}}}}, Thresholds())
    assert list(report["shadows"]) == [S, S2]
    assert report["shadows"][S]["diff"]["compared"] == 0
    assert report["shadows"][S]["diff"]["mismatch_rate"] is None
    assert report["shadows"][S2]["diff"]["mismatch"] == 1


def test_report_is_json():
    report = build_report(scrape(), DIFFS, Thresholds(max_p99_ratio=1.2, max_mismatch=0.001))
    assert orjson.loads(orjson.dumps(report)) == report


def test_bytes_input_accepted():
    text = scrape()
    assert build_report(text.encode(), EMPTY, Thresholds()) == build_report(text, EMPTY, Thresholds())


# -- checks and verdict ------------------------------------------------------------------


def test_p99_ratio_fails():
    report = build_report(scrape(shadows={S: (0.0118, 1000)}), EMPTY, Thresholds(max_p99_ratio=1.2))
    assert report["verdict"] == "fail"
    check = next(c for c in report["checks"] if c["name"] == "p99_ratio")
    assert check["ok"] is False and check["limit"] == 1.2 and check["op"] == "<=" and check["upstream"] == S
    assert report["reasons"] == [f"shadow {S} p99 ratio {check['value']:.3g} > 1.2"]


def test_mismatch_fails_and_names_the_worst_endpoint():
    report = build_report(scrape(), DIFFS, Thresholds(max_mismatch=parse_fraction("0.1%")))
    assert report["verdict"] == "fail"
    assert report["reasons"] == [f"shadow {S} mismatch rate 4% > 0.1% (worst: GET /api/search 10%)"]


def test_mismatch_passes_under_the_limit():
    report = build_report(scrape(), DIFFS, Thresholds(max_mismatch=0.05))
    assert report["verdict"] == "pass" and report["reasons"] == []


def test_mismatch_without_diff_data_fails():
    report = build_report(scrape(), EMPTY, Thresholds(max_mismatch=0.5))
    assert report["verdict"] == "fail"
    assert report["reasons"] == [f"shadow {S} mismatch rate unknown (no responses compared; is --diff on?)"]


def test_error_rate_diff_check():
    text = scrape(shadow_5xx=50)
    assert build_report(text, EMPTY, Thresholds(max_error_rate_diff=0.1))["verdict"] == "pass"
    report = build_report(text, EMPTY, Thresholds(max_error_rate_diff=0.01))
    assert report["reasons"] == [f"shadow {S} error rate diff +5% > 1%"]


def test_min_requests():
    text = scrape(shadows={S: (0.001, 5)})
    assert build_report(text, EMPTY, Thresholds(min_requests=5))["verdict"] == "pass"
    report = build_report(text, EMPTY, Thresholds(min_requests=6))
    assert report["verdict"] == "fail"
    assert report["reasons"] == [f"shadow {S} 5 mirrored requests < 6 required"]


def test_shadow_that_never_answered_fails_the_default_minimum():
    reg = Registry(process=False)
    reg.upstream("primary", P).observe(0.001, 200)
    reg.mirror(S).dropped = 10
    report = build_report(reg.render().decode(), EMPTY, Thresholds(max_p99_ratio=2))
    assert report["verdict"] == "fail"
    assert report["shadows"][S]["requests"] == 0
    assert report["reasons"] == [f"shadow {S} 0 mirrored requests < 1 required",
                                 f"shadow {S} p99 ratio unknown (no latency data)"]  # fmt: skip


def test_no_shadow_at_all_fails():
    reg = Registry(process=False)
    reg.upstream("primary", P).observe(0.001, 200)
    report = build_report(reg.render().decode(), EMPTY, Thresholds(min_requests=0))
    assert report["verdict"] == "fail" and report["shadows"] == {}
    assert "no shadow" in report["reasons"][0]


def test_every_check_listed_with_its_outcome():
    t = Thresholds(max_p99_ratio=100, max_p50_ratio=100, max_mismatch=0.5, max_error_rate_diff=0.5)
    report = build_report(scrape(), DIFFS, t)
    assert [c["name"] for c in report["checks"]] == [
        "requests", "p50_ratio", "p99_ratio", "mismatch_rate", "error_rate_diff",
    ]  # fmt: skip
    assert all(c["ok"] for c in report["checks"]) and report["verdict"] == "pass"
    assert report["thresholds"]["max_mismatch"] == 0.5


def test_one_failing_shadow_fails_the_verdict():
    text = scrape(shadows={S: (0.001, 100), S2: (0.05, 100)})
    report = build_report(text, EMPTY, Thresholds(max_p99_ratio=1.5))
    assert report["verdict"] == "fail"
    assert [c["ok"] for c in report["checks"] if c["name"] == "p99_ratio"] == [True, False]
    assert len(report["reasons"]) == 1 and S2 in report["reasons"][0]


def test_primary_series_are_summed():
    """After a SIGHUP changed the primary, both primaries' series count."""
    reg = Registry(process=False)
    for _ in range(100):
        reg.upstream("primary", P).observe(0.001, 200)
        reg.upstream("primary", "10.0.0.9:80").observe(0.001, 500)
        reg.upstream("shadow", S).observe(0.001, 200)
    s = build_report(reg.render().decode(), EMPTY, Thresholds())["shadows"][S]
    assert s["primary"]["error_rate"] == 0.5


# -- text --------------------------------------------------------------------------------


def test_text_fail_verdict_last():
    t = Thresholds(max_p99_ratio=1.2, max_mismatch=0.001)
    text = render_report_text(build_report(scrape(shadows={S: (0.0118, 1000)}), DIFFS, t))
    lines = text.rstrip("\n").splitlines()
    assert lines[0].startswith(f"shadow {S}: 1000 mirrored requests (sent 1000, dropped 3")
    assert any(line.split()[:1] == ["P99"] and line.rstrip().endswith("x") for line in lines)
    assert any("GET /api/search: 400 compared, 40 mismatch (10%)" in line for line in lines)
    assert any("$.results[0].price x40  primary 10  shadow 12" in line for line in lines)
    assert any(line.strip().startswith("FAIL  p99 ratio") and "> 1.2" in line for line in lines)
    assert lines[-2].startswith(f"FAIL: shadow {S} p99 ratio ") and lines[-2].endswith(" > 1.2")
    assert lines[-1].startswith(f"FAIL: shadow {S} mismatch rate 4% > 0.1%")


def test_text_pass_verdict_last():
    text = render_report_text(build_report(scrape(), DIFFS, Thresholds(max_p99_ratio=1.2)))
    last = text.rstrip("\n").splitlines()[-1]
    assert last == "PASS: 2 checks hold for 1 shadow"
    assert "ok    p99 ratio 1 <= 1.2" in text


def test_text_without_diffs_or_data():
    text = render_report_text(build_report("", EMPTY, Thresholds()))
    assert text.startswith("FAIL: no shadow")
    reg = Registry(process=False)
    reg.mirror(S).dropped = 1
    text = render_report_text(build_report(reg.render().decode(), EMPTY, Thresholds(max_mismatch=0.1)))
    assert "diffs: none compared" in text
    assert "FAIL  mismatch rate unknown" in text


def test_text_cuts_long_examples():
    field = {"path": "body", "count": 1, "example": {"primary": "a" * 500, "shadow": "b" * 500}}
    diffs = {"upstreams": {S: {"endpoints": {"GET /": endpoint(1, 1, fields=[field])}}}}
    text = render_report_text(build_report(scrape(), diffs, Thresholds()))
    line = next(line for line in text.splitlines() if line.strip().startswith("body x1"))
    assert len(line) < 200 and "..." in line
