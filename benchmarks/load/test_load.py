"""The load benchmark's pure parts, without nginx or wrk: counters read, points picked, report.

Collected by `python -m pytest benchmarks` (the CI's benchmark checks). The runs
themselves are covered by `run.py --smoke`.
"""

from __future__ import annotations

import argparse
import json

import pytest

import measure
import plan
import report
import run
from fastmirror.ops.metrics import Registry


def test_mirror_outcomes_sum_fastmirrors_own_text_over_shadows() -> None:
    reg = Registry(process=False)
    reg.mirror("127.0.0.1:1").sent = 5
    reg.mirror("127.0.0.1:2").sent = 7
    reg.mirror("127.0.0.1:2").dropped = 2
    assert measure.mirror_outcomes(reg.render()) == {"sent": 12.0, "dropped": 2.0, "skipped": 0.0, "failed": 0.0,
                                                     "limited": 0.0}


@pytest.mark.parametrize("text", [b"", b"[Errno 111] Connection refused", Registry(process=False).render()])
def test_mirror_outcomes_of_no_mirror_counters_is_empty(text: bytes) -> None:
    # empty means "no fastmirror_mirror_requests_total in /metrics" to the point's notes
    assert measure.mirror_outcomes(text) == {}


def test_stub_counts_and_envoy_counters() -> None:
    stub = b"Active connections: 1 \nserver accepts handled requests\n 10 10 33 \nReading: 0\n"
    assert measure.stub_counts(stub) == (10, 33)
    assert measure.stub_counts(b"nope") is None
    stats = b"cluster.shadow.upstream_rq_total: 12\ncluster.shadow.x: abc\n"
    assert measure.envoy_counters(stats) == {"cluster.shadow.upstream_rq_total": 12}


def test_wrk_result_reads_the_lua_hooks_line() -> None:
    text = 'Running 1s test\n  50 connections\nWRKJSON {"requests": 9, "p99_us": 1200}\n'
    assert measure.wrk_result(text) == {"requests": 9, "p99_us": 1200}
    assert measure.wrk_result("unable to connect to 127.0.0.1:28040 Connection refused\n") is None


def test_soak_figures_flat_and_growing() -> None:
    flat = measure.soak_figures([(t, 40.0 + 0.01 * t) for t in range(1, 21)])
    assert flat["start_mb"] == 40.01 and flat["flat"] and flat["slope_mb_per_min"] == pytest.approx(0.6)
    growing = measure.soak_figures([(t, 40.0 + 2.0 * t) for t in range(1, 21)])
    assert not growing["flat"] and growing["growth_mb"] == pytest.approx(28.0)  # from a quarter in (t=6 s) to the end
    assert measure.soak_figures([]) == {}


def test_top_error_strips_times_and_request_details() -> None:
    line = ("2026/12/02 00:00:0%d [error] 12#12: *%d connect() failed (111: Connection refused) while "
            "connecting to upstream, client: 127.0.0.1, server: _, request: \"GET / HTTP/1.1\"")
    lines = [line % (i, i) for i in range(3)] + ["2026/12/02 00:00:09 [warn] 12#12: something else"]
    assert measure.top_error(lines) == "[error] connect() failed (111: Connection refused) while connecting to upstream"


def test_select_points() -> None:
    assert plan.select_points(True, False, None) == plan.SMOKE_POINTS
    full = plan.select_points(False, True, None)
    assert full[0] == "direct:none" and "envoy:dead" in full and len(full) == len(set(full)) == 22
    assert not [p for p in plan.select_points(False, False, None) if p.startswith("envoy:")]
    assert plan.select_points(False, True, "fastmirror:h100$") == ["fastmirror:h100"]


def test_parse_args_defaults_by_mode() -> None:
    smoke, quick, full = run.parse_args(["--smoke"]), run.parse_args(["--quick"]), run.parse_args([])
    assert (smoke.repeats, smoke.duration, smoke.quiet_wait) == (1, 1, 0.0)
    assert (quick.repeats, quick.duration, quick.quiet_wait) == (1, 4, 10.0)
    assert (full.repeats, full.duration, full.warmup) == (3, 8, 1)


def _record(contender: str, scenario: str, rps: float, **extra: object) -> dict[str, object]:
    rec = {"rep": 1, "contender": contender, "scenario": scenario, "notes": [], "wrk_timeout": plan.WRK_TIMEOUT,
           "requests": int(rps), "rps": rps, "p50_ms": 1.0, "p99_ms": 2.0, "max_ms": 5.0, "errors": {},
           "cpu": {"cpu0": 90.0, "cpu1": 80.0}, "other_cpu_pct": 3.0, "rss_max_mb": 30.0}
    rec.update(extra)
    return rec


def test_report_sections_follow_the_records() -> None:
    args = run.parse_args(["--smoke"])
    lab = argparse.Namespace(args=args, proxy_cpu="0", load_cpu="1", both_cpus="0,1", soak=None, configs={},
                             commands={"upstreams": ["nginx ..."], "shadows": [], "load": [], "proxies": []},
                             records=[_record("direct", "none", 50000.0),
                                      _record("fastmirror", "h100", 20000.0, fastmirror={"sent": 20000, "dropped": 0},
                                              shadow={"requests": 20000, "new_conns": 0}),
                                      _record("fastmirror", "dead", 30000.0, fastmirror={"failed": 30000}),
                                      {"rep": 1, "contender": "fastmirror-w2", "scenario": "h100", "notes": [],
                                       "wrk_timeout": plan.WRK_TIMEOUT, "failed": "health check: None"}])
    meta = {"cpu_model": "cpu", "ncpu": "2", "kernel": "k", "load_start": "0", "load_end": "0", "busy_before": "-",
            "versions": ["nginx 1"], "date": "today", "invocation": "python benchmarks/load/run.py --smoke",
            "elapsed": "9"}
    text = report.build_report(lab, meta)  # type: ignore[arg-type]
    assert text.startswith("# fastmirror load benchmark — SMOKE")
    heads = [line for line in text.splitlines() if line.startswith("## ")]
    assert heads == ["## Results", "## Does a bad shadow reach the client? (relative to the same contender's "
                     "healthy 100% run)", "## Issue 3 targets, checked on this run", "## Notes from the run",
                     "## Setup", "## Raw points"]
    assert "| healthy shadow, 100% | fastmirror | 20,000 |" in text
    assert "| healthy shadow, 100% | fastmirror-w2 | failed: health check: None |" in text
    assert "| fastmirror | dead shadow (refused), 100% | 1.50× | 1.00× | 0 |" in text
    assert "- fastmirror-w2:h100: FAILED: health check: None" in text
    assert json.dumps({}) in text  # raw points: errors as JSON
