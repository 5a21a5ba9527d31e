"""metrics: bucketing, the exported names and labels, snapshot/merge (quantiles: test_scrape)."""

from __future__ import annotations

import itertools
import json

import pytest
from prometheus_client.parser import text_string_to_metric_families

from fastmirror.ops.metrics import (
    BUCKETS,
    MirrorStats,
    Registry,
    UpstreamStats,
    render_snapshots,
)

P = "127.0.0.1:9000"
S = "127.0.0.1:9001"


def samples(text: bytes) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """{(sample name, labels): value} of a Prometheus text exposition."""
    out = {}
    for fam in text_string_to_metric_families(text.decode()):
        for s in fam.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def types(text: bytes) -> dict[str, str]:
    return {fam.name: fam.type for fam in text_string_to_metric_families(text.decode())}


def L(**kw: str) -> frozenset[tuple[str, str]]:  # noqa: N802
    return frozenset(kw.items())


def response_codes(reg: Registry, role: str, upstream: str) -> dict[str, float]:
    """{code label: count} of fastmirror_responses_total for one (role, upstream), as scraped."""
    return {dict(labels)["code"]: value for (name, labels), value in samples(reg.render()).items()
            if name == "fastmirror_responses_total"
            and dict(labels).items() >= {("role", role), ("upstream", upstream)}}


def cumulative(stats: UpstreamStats) -> list[tuple[float, int]]:
    """[(upper bound, cumulative count), ..., (inf, count)] of stats' raw buckets."""
    return list(zip((*BUCKETS, math.inf), itertools.accumulate(stats.buckets), strict=True))


# -- buckets and observe ---------------------------------------------------------------


def test_buckets_sorted_and_span_sub_ms_to_10s() -> None:
    assert list(BUCKETS) == sorted(set(BUCKETS))
    assert BUCKETS[0] < 0.001 and 0.0005 in BUCKETS and 0.001 in BUCKETS
    assert BUCKETS[-1] == 10.0


@pytest.mark.parametrize(
    ("seconds", "index"),
    [
        (0.0, 0),
        (0.00025, 0),  # le is "<=": a value on a bound belongs to that bucket
        (0.0002501, 1),
        (0.001, BUCKETS.index(0.001)),
        (0.0011, BUCKETS.index(0.002)),
        (10.0, len(BUCKETS) - 1),
        (10.5, len(BUCKETS)),  # +Inf
        (1e9, len(BUCKETS)),
    ],
)
def test_observe_bucket(seconds: float, index: int) -> None:
    s = UpstreamStats("primary", P)
    s.observe(seconds, 200)
    assert s.buckets[index] == 1
    assert s.count == 1
    assert s.sum == seconds


@pytest.mark.parametrize(
    ("status", "code"),
    [(100, "1xx"), (101, "1xx"), (200, "2xx"), (204, "2xx"), (304, "3xx"), (404, "4xx"), (599, "5xx"), (999, "error")],
)
def test_observe_status_class(status: int, code: str) -> None:
    reg = Registry(process=False)
    reg.upstream("shadow", S).observe(0.01, status)
    counts = response_codes(reg, "shadow", S)
    assert counts[code] == 1
    assert sum(counts.values()) == 1


def test_observe_never_raises_on_odd_status() -> None:
    reg = Registry(process=False)
    s = reg.upstream("primary", P)
    for status in (-1, 0, 1000, 12345):
        s.observe(0.001, status)
    assert response_codes(reg, "primary", P)["error"] == 4


def test_error_counts_without_latency() -> None:
    reg = Registry(process=False)
    s = reg.upstream("primary", P)
    s.error()
    s.error()
    assert response_codes(reg, "primary", P)["error"] == 2
    assert s.count == 0 and s.sum == 0.0


def test_role_validated() -> None:
    with pytest.raises(ValueError, match="role"):
        UpstreamStats("tertiary", P)


def test_slots() -> None:
    for obj in (UpstreamStats("primary", P), MirrorStats(S)):
        with pytest.raises(AttributeError):
            obj.typo = 1  # type: ignore[attr-defined]


# -- registry and render ---------------------------------------------------------------


def make_registry() -> Registry:
    reg = Registry(version="1.2.3", core="cython")
    p = reg.upstream("primary", P)
    for v in (0.0004, 0.0004, 0.003, 0.2):
        p.observe(v, 200)
    p.observe(0.05, 503)
    p.error()
    sh = reg.upstream("shadow", S)
    sh.observe(0.001, 404)
    m = reg.mirror(S)
    m.sent, m.dropped, m.failed = 7, 2, 1
    m.depth = 5
    reg.downstream_requests = 9
    reg.downstream_errors[400] += 1
    reg.downstream_error(502)
    reg.downstream_error(503)  # not pre-seeded
    reg.connections_active = 3
    reg.access_log_dropped = 4
    reg.mirror_percent = 12.5
    return reg


def test_get_or_create_returns_same_object() -> None:
    reg = Registry()
    assert reg.upstream("primary", P) is reg.upstream("primary", P)
    assert reg.upstream("primary", P) is not reg.upstream("shadow", P)
    assert reg.mirror(S) is reg.mirror(S)


def test_render_contract_names_types_and_labels() -> None:
    text = make_registry().render()
    t = types(text)
    assert t["fastmirror_request_duration_seconds"] == "histogram"
    assert t["fastmirror_responses"] == "counter"  # exposed as fastmirror_responses_total
    assert t["fastmirror_mirror_requests"] == "counter"
    assert t["fastmirror_mirror_queue_depth"] == "gauge"
    assert b"# TYPE fastmirror_responses_total counter" in text
    assert b"# TYPE fastmirror_mirror_requests_total counter" in text

    s = samples(text)
    h = "fastmirror_request_duration_seconds"
    assert s[(f"{h}_count", L(role="primary", upstream=P))] == 5
    assert s[(f"{h}_sum", L(role="primary", upstream=P))] == pytest.approx(0.2538)
    assert s[(f"{h}_bucket", L(role="primary", upstream=P, le="0.0005"))] == 2
    assert s[(f"{h}_bucket", L(role="primary", upstream=P, le="0.003"))] == 3
    assert s[(f"{h}_bucket", L(role="primary", upstream=P, le="0.1"))] == 4
    assert s[(f"{h}_bucket", L(role="primary", upstream=P, le="+Inf"))] == 5
    assert s[(f"{h}_bucket", L(role="shadow", upstream=S, le="0.001"))] == 1
    buckets = [k for k in s if k[0] == f"{h}_bucket" and ("role", "primary") in k[1]]
    assert len(buckets) == len(BUCKETS) + 1

    r = "fastmirror_responses_total"
    assert s[(r, L(role="primary", upstream=P, code="2xx"))] == 4
    assert s[(r, L(role="primary", upstream=P, code="5xx"))] == 1
    assert s[(r, L(role="primary", upstream=P, code="error"))] == 1
    for code in ("3xx", "4xx"):
        assert s[(r, L(role="primary", upstream=P, code=code))] == 0  # present at 0
    assert s[(r, L(role="shadow", upstream=S, code="4xx"))] == 1
    assert (r, L(role="primary", upstream=P, code="1xx")) not in s  # only once seen

    m = "fastmirror_mirror_requests_total"
    expected = {"sent": 7, "dropped": 2, "skipped": 0, "failed": 1}
    for outcome, n in expected.items():
        assert s[(m, L(upstream=S, outcome=outcome))] == n
    assert s[("fastmirror_mirror_queue_depth", L(upstream=S))] == 5


def test_render_extras() -> None:
    text = make_registry().render()
    s = samples(text)
    assert s[("fastmirror_downstream_requests_total", L())] == 9
    assert s[("fastmirror_downstream_errors_total", L(code="400"))] == 1
    assert s[("fastmirror_downstream_errors_total", L(code="502"))] == 1
    assert s[("fastmirror_downstream_errors_total", L(code="503"))] == 1
    for code in ("413", "431", "501", "504"):
        assert s[("fastmirror_downstream_errors_total", L(code=code))] == 0
    assert s[("fastmirror_downstream_connections_active", L())] == 3
    assert s[("fastmirror_access_log_dropped_total", L())] == 4
    assert s[("fastmirror_mirror_percent", L())] == 12.5
    assert s[("fastmirror_info", L(version="1.2.3", core="cython"))] == 1


def test_render_process_metrics() -> None:
    names = types(Registry().render())
    if "process_resident_memory_bytes" not in names:
        pytest.skip("no /proc on this platform")
    assert "process_cpu_seconds" in names  # exposed as process_cpu_seconds_total


def test_mirror_outcomes_present_at_zero() -> None:
    reg = Registry()
    reg.mirror(S)
    s = samples(reg.render())
    for outcome in ("sent", "dropped", "skipped", "failed"):
        assert s[("fastmirror_mirror_requests_total", L(upstream=S, outcome=outcome))] == 0
    assert s[("fastmirror_mirror_queue_depth", L(upstream=S))] == 0


def test_depth_may_be_callable_and_hooks_run() -> None:
    reg = Registry()
    queue = [1, 2, 3]
    reg.mirror(S).depth = lambda: len(queue)

    class Log:
        dropped = 11

    reg.on_collect.append(lambda r: setattr(r, "access_log_dropped", Log.dropped))
    s = samples(reg.render())
    assert s[("fastmirror_mirror_queue_depth", L(upstream=S))] == 3
    assert s[("fastmirror_access_log_dropped_total", L())] == 11
    assert reg.snapshot()["mirrors"][0]["depth"] == 3


def test_render_is_live() -> None:
    reg = Registry()
    p = reg.upstream("primary", P)
    key = ("fastmirror_request_duration_seconds_count", L(role="primary", upstream=P))
    assert samples(reg.render())[key] == 0
    p.observe(0.01, 200)
    assert samples(reg.render())[key] == 1


def test_empty_registry_renders() -> None:
    t = types(Registry().render())
    assert "fastmirror_request_duration_seconds" in t
    assert "fastmirror_info" in t


def test_label_values_escaped() -> None:
    reg = Registry()
    reg.upstream("primary", '[::1]:80"\\')
    s = samples(reg.render())
    assert ("fastmirror_responses_total", L(role="primary", upstream='[::1]:80"\\', code="2xx")) in s


# -- snapshot and merge ----------------------------------------------------------------


def test_snapshot_is_json_roundtrippable() -> None:
    snap = make_registry().snapshot()
    assert json.loads(json.dumps(snap)) == snap


def test_merge_sums_counters_and_gauges() -> None:
    a = make_registry().snapshot()
    other = Registry(version="1.2.3", core="cython")
    other.upstream("primary", P).observe(0.0004, 200)
    other.upstream("shadow", "10.0.0.1:80").observe(2.0, 500)
    other.mirror(S).depth = 1
    other.mirror(S).skipped = 6
    other.connections_active = 2
    other.mirror_percent = 12.5
    b = json.loads(json.dumps(other.snapshot()))

    merged = Registry.merge([a, b, a])
    s = samples(merged.render())
    h = "fastmirror_request_duration_seconds"
    assert s[(f"{h}_count", L(role="primary", upstream=P))] == 11
    assert s[(f"{h}_bucket", L(role="primary", upstream=P, le="0.0005"))] == 5
    assert s[(f"{h}_sum", L(role="primary", upstream=P))] == pytest.approx(2 * 0.2538 + 0.0004)
    assert s[(f"{h}_count", L(role="shadow", upstream="10.0.0.1:80"))] == 1
    assert s[("fastmirror_responses_total", L(role="primary", upstream=P, code="error"))] == 2
    assert s[("fastmirror_mirror_requests_total", L(upstream=S, outcome="sent"))] == 14
    assert s[("fastmirror_mirror_requests_total", L(upstream=S, outcome="skipped"))] == 6
    assert s[("fastmirror_mirror_queue_depth", L(upstream=S))] == 11  # gauges summed
    assert s[("fastmirror_downstream_connections_active", L())] == 8
    assert s[("fastmirror_downstream_requests_total", L())] == 18
    assert s[("fastmirror_downstream_errors_total", L(code="503"))] == 2
    assert s[("fastmirror_access_log_dropped_total", L())] == 8
    assert s[("fastmirror_mirror_percent", L())] == 12.5  # shared, not summed
    assert s[("fastmirror_info", L(version="1.2.3", core="cython"))] == 1
    assert render_snapshots([a, b, a]).split(b"\nprocess_")[0] == merged.render().split(b"\nprocess_")[0]


def test_merge_of_nothing_and_of_one() -> None:
    assert samples(Registry.merge([]).render())[("fastmirror_downstream_requests_total", L())] == 0
    reg = make_registry()
    assert Registry.merge([reg.snapshot()]).snapshot()["upstreams"] == reg.snapshot()["upstreams"]


def test_merge_rejects_other_buckets() -> None:
    snap = Registry().snapshot()
    snap["buckets"] = [0.1, 1.0]
    with pytest.raises(ValueError, match="buckets"):
        Registry.merge([snap])


# -- fastmirror_diff_total ---------------------------------------------------------------

DIFF_COUNTS = [(S, "GET /users/{id}", "match", 7), (S, "GET /users/{id}", "mismatch", 2),
               (S, "other", "noise", 1)]  # fmt: skip


def test_diff_total_rendered_from_diff_source() -> None:
    reg = Registry(process=False)
    assert b"fastmirror_diff_total" not in reg.render()  # no source, no family
    reg.diff_source = lambda: DIFF_COUNTS
    text = reg.render()
    assert types(text)["fastmirror_diff"] == "counter"
    s = samples(text)
    assert s[("fastmirror_diff_total", L(upstream=S, endpoint="GET /users/{id}", result="match"))] == 7
    assert s[("fastmirror_diff_total", L(upstream=S, endpoint="GET /users/{id}", result="mismatch"))] == 2
    assert s[("fastmirror_diff_total", L(upstream=S, endpoint="other", result="noise"))] == 1


def test_diff_source_read_at_scrape_time() -> None:
    counts = list(DIFF_COUNTS)
    reg = Registry(process=False)
    reg.diff_source = lambda: counts
    counts[0] = (S, "GET /users/{id}", "match", 8)
    assert samples(reg.render())[("fastmirror_diff_total", L(upstream=S, endpoint="GET /users/{id}", result="match"))] == 8


def test_diff_total_in_snapshot_and_merged() -> None:
    reg = Registry(process=False)
    reg.diff_source = lambda: DIFF_COUNTS
    snap = json.loads(json.dumps(reg.snapshot()))
    assert sorted(map(tuple, snap["diffs"])) == sorted(DIFF_COUNTS)
    other = Registry(process=False)
    other.diff_source = lambda: [(S, "GET /users/{id}", "match", 1), ("10.0.0.1:80", "GET /", "mismatch", 4)]
    merged = Registry.merge([snap, other.snapshot(), snap], process=False)
    s = samples(merged.render())
    assert s[("fastmirror_diff_total", L(upstream=S, endpoint="GET /users/{id}", result="match"))] == 15
    assert s[("fastmirror_diff_total", L(upstream=S, endpoint="other", result="noise"))] == 2
    assert s[("fastmirror_diff_total", L(upstream="10.0.0.1:80", endpoint="GET /", result="mismatch"))] == 4
    assert render_snapshots([snap, snap]).count(b"fastmirror_diff_total{") == 3
    # A merged registry re-snapshots its sum (the supervisor keeps dead workers' counts so).
    again = Registry.merge([merged.snapshot()], process=False).snapshot()["diffs"]
    assert [S, "GET /users/{id}", "match", 15] in again


def test_snapshot_without_diffs_merges() -> None:
    snap = Registry(process=False).snapshot()
    del snap["diffs"]  # a worker of an older version
    assert b"fastmirror_diff_total" not in Registry.merge([snap], process=False).render()
