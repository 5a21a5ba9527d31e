"""Measuring the load benchmark: one point, the memory soak, and reading what they report.

A point: wait for quiet CPUs, start the point's bad shadow and contender (lab.py), check
health, warm up with wrk, then one measured wrk window with every counter read before and
after it (the shadow's and the primary's stub_status, the proxy's own counters, /proc CPU
and RSS). The result is a plain record dict that report.py turns into tables. This module
decides nothing about good or bad numbers.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lab import HarnessError, Lab, PointFailed, Proc, http_get
from plan import (CONNS, MB, PORT, REPO, REQ_PATH, SCENARIO_SHADOW, SHORT_WRK_TIMEOUT, WRK_LUA,
                  WRK_TIMEOUT)
from procfs import CLK_TCK, cpu_busy, cpu_snapshot, listening_count, own_cpu

try:
    from fastmirror.ops.scrape import MIRROR, read_metrics
except ImportError:  # a Python without fastmirror installed (FASTMIRROR_BIN names the proxy)
    sys.path.insert(0, str(REPO / "src"))
    from fastmirror.ops.scrape import MIRROR, read_metrics

ENVOY_KEYS = ["upstream_rq_total", "upstream_rq_completed", "upstream_rq_2xx", "upstream_rq_5xx",
              "upstream_rq_pending_overflow", "upstream_cx_connect_fail", "upstream_rq_timeout",
              "upstream_cx_total"]
WRK_ERRORS = ("connect", "read", "write", "timeout", "status")


# ------------------------------------------------------------------------------------------
# parsing what the servers report

def stub_counts(text: bytes) -> tuple[int, int] | None:
    """nginx stub_status -> (accepted connections, requests)."""
    m = re.search(rb"server accepts handled requests\s+(\d+)\s+(\d+)\s+(\d+)", text)
    return (int(m.group(1)), int(m.group(3))) if m else None


def mirror_outcomes(text: bytes) -> dict[str, float]:
    """fastmirror_mirror_requests_total summed by outcome (none if the text is not /metrics)."""
    try:
        scrape = read_metrics(text.decode(errors="replace"))
    except (ValueError, KeyError):  # an http_get error message, not Prometheus text
        return {}
    out: dict[str, float] = {}
    for series in scrape.series(MIRROR):
        key = series.labels.get("outcome", "?")
        out[key] = out.get(key, 0.0) + series.value
    return out


def envoy_counters(text: bytes) -> dict[str, int]:
    out = {}
    for line in text.decode(errors="replace").splitlines():
        name, _, value = line.partition(": ")
        if value.strip().isdigit():
            out[name.strip()] = int(value)
    return out


def wrk_result(text: str) -> dict[str, Any] | None:
    """The WRKJSON line wrk_report.lua prints at the end of a run, or None."""
    m = re.search(r"^WRKJSON (\{.*\})\s*$", text, re.M)
    return json.loads(m.group(1)) if m else None


# ------------------------------------------------------------------------------------------
# load

def wrk_argv(lab: Lab, port: int, seconds: int, timeout: str) -> list[str]:
    return [lab.tool["taskset"], "-c", lab.load_cpu, lab.tool["wrk"], "-t1", "-c%d" % CONNS,
            "--timeout", timeout, "--latency", "-s", str(WRK_LUA), "-d%ds" % seconds,
            "http://127.0.0.1:%d%s" % (port, REQ_PATH)]


def run_wrk(lab: Lab, port: int, seconds: int, timeout: str, out: Path) -> dict[str, Any] | None:
    argv = wrk_argv(lab, port, seconds, timeout)
    lab.note("load", shlex.join(argv).replace(str(port), "<port>").replace(
        "-d%ds" % seconds, "-d<seconds>s"))
    lab.wrk = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               start_new_session=True, cwd=lab.scratch)
    try:
        text, _ = lab.wrk.communicate(timeout=seconds + 30)
    except subprocess.TimeoutExpired:
        os.killpg(lab.wrk.pid, signal.SIGKILL)
        text, _ = lab.wrk.communicate()
    finally:
        lab.wrk = None
    out.write_text(text)
    return wrk_result(text)


def wait_quiet(lab: Lab) -> float:
    """Before a point: wait (up to --quiet-wait seconds) until the benchmark's CPUs are idle.

    Between points nothing of ours runs but the idle upstreams, so a busy CPU means
    another process (a build, a test suite) that would disturb the measurement.
    """
    t0 = time.monotonic()
    cpus = ["cpu" + c for c in {lab.proxy_cpu, lab.load_cpu}]
    while time.monotonic() - t0 < lab.args.quiet_wait:
        before = cpu_snapshot()
        time.sleep(0.3)
        busy = cpu_busy(before, cpu_snapshot())
        if all(busy.get(c, 0.0) < 10.0 for c in cpus):
            break
    return time.monotonic() - t0


class RssSampler(threading.Thread):
    """Max RSS of a process group, sampled every `interval` seconds."""

    def __init__(self, proc: Proc, interval: float) -> None:
        super().__init__(daemon=True)
        self.proc = proc
        self.interval = interval
        self.max = proc.rss()
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.wait(self.interval):
            self.max = max(self.max, self.proc.rss())

    def halt(self) -> None:
        self._stop_event.set()
        self.join()
        self.max = max(self.max, self.proc.rss())


# ------------------------------------------------------------------------------------------
# one point

@dataclass
class Running:
    """What one point started, stopped in its `finally` whatever happened."""

    bad: Proc | None = None
    proxy: Proc | None = None
    sampler: RssSampler | None = None

    def stop(self, rec: dict[str, Any]) -> None:
        if self.sampler is not None:
            self.sampler.halt()
            rec["rss_max_mb"] = self.sampler.max / MB
        if self.proxy is not None:
            self.proxy.stop()
        if self.bad is not None:
            self.bad.stop()


@dataclass
class CpuMark:
    """CPU counters at one edge of the measured window."""

    cpu: dict[str, tuple[int, int]]
    proxy_ticks: int
    at: float
    ours: float  # CPU seconds of the upstreams, the bad shadow, this script and wrk


def _ours(helpers: list[Proc]) -> float:
    return sum(h.ticks() for h in helpers) / CLK_TCK + own_cpu()


def cpu_start(proxy: Proc | None, helpers: list[Proc]) -> CpuMark:
    cpu, ticks, at = cpu_snapshot(), proxy.ticks() if proxy else 0, time.monotonic()
    return CpuMark(cpu, ticks, at, _ours(helpers))


def cpu_end(proxy: Proc | None, helpers: list[Proc]) -> CpuMark:
    at = time.monotonic()
    cpu, ticks = cpu_snapshot(), proxy.ticks() if proxy else 0
    return CpuMark(cpu, ticks, at, _ours(helpers))


def run_point(lab: Lab, rep: int, contender: str, scenario: str) -> dict[str, Any]:
    pdir = lab.scratch / "points" / ("r%d-%s-%s" % (rep, contender, scenario))
    pdir.mkdir(parents=True)
    short = contender == "nginx" and scenario in ("slow", "blackhole")
    rec: dict[str, Any] = {"rep": rep, "contender": contender, "scenario": scenario, "notes": [],
                           "wrk_timeout": SHORT_WRK_TIMEOUT if short else WRK_TIMEOUT}
    running = Running()
    if lab.args.quiet_wait > 0:
        waited = wait_quiet(lab)
        if waited >= lab.args.quiet_wait:
            rec["notes"].append("the machine was still busy after waiting %.0f s for it to be idle" % waited)
    try:
        measure_point(lab, rec, pdir, running)
    except PointFailed as exc:
        rec["failed"] = str(exc)
    finally:
        running.stop(rec)
    point_logs(contender, pdir, rec)
    return rec


def start_point(lab: Lab, rec: dict[str, Any], pdir: Path, running: Running) -> int:
    """Start the point's bad shadow and contender and check it answers; its port."""
    shadow = SCENARIO_SHADOW[rec["scenario"]]
    if shadow in ("slow", "blackhole"):
        running.bad = lab.start_bad_shadow(shadow, pdir)
    if shadow == "dead" and listening_count(PORT["dead"]):
        raise HarnessError("the dead-shadow port %d listens" % PORT["dead"])
    running.proxy, port = lab.start_proxy(rec["contender"], rec["scenario"], pdir)
    status, body = http_get(port, REQ_PATH, 5)
    if status != 200:  # one retry: a worker may be a moment behind its listener
        time.sleep(0.5)
        status, body = http_get(port, REQ_PATH, 5)
    if status != 200 or not body.startswith(b"ok primary"):
        raise PointFailed("health check: %s %r" % (status, body[:100]))
    return port


def measure_point(lab: Lab, rec: dict[str, Any], pdir: Path, running: Running) -> None:
    """Warm up, then the measured window with every counter read on both sides of it."""
    contender, shadow = rec["contender"], SCENARIO_SHADOW[rec["scenario"]]
    port = start_point(lab, rec, pdir, running)
    proxy = running.proxy
    if proxy is not None:
        running.sampler = RssSampler(proxy, 0.5)
        running.sampler.start()
    run_wrk(lab, port, lab.args.warmup, rec["wrk_timeout"], pdir / "warmup.out")
    kind = shadow if shadow in ("shadow", "slow", "blackhole") else None
    before = lab.shadow_stats(kind), http_get(PORT["primary"], "/__stub")[1], lab.proxy_counters(contender)
    helpers = [*lab.upstreams.values(), *([running.bad] if running.bad else [])]
    start = cpu_start(proxy, helpers)
    w = run_wrk(lab, port, lab.args.duration, rec["wrk_timeout"], pdir / "wrk.out")
    end = cpu_end(proxy, helpers)
    after = lab.shadow_stats(kind), http_get(PORT["primary"], "/__stub")[1], lab.proxy_counters(contender)
    if w is None:
        raise PointFailed("no wrk result: %s" % (pdir / "wrk.out").read_text()[-300:])
    record_wrk(rec, w)
    record_cpu(lab, rec, start, end, proxy is not None)
    record_counters(rec, kind, before, after)


def record_wrk(rec: dict[str, Any], w: dict[str, Any]) -> None:
    dur = w["duration_us"] / 1e6 or 1.0
    rec.update(requests=w["requests"], rps=w["requests"] / dur, p50_ms=w["p50_us"] / 1e3,
               p99_ms=w["p99_us"] / 1e3, max_ms=w["max_us"] / 1e3,
               errors={k: w[k] for k in WRK_ERRORS if w[k]})


def record_cpu(lab: Lab, rec: dict[str, Any], start: CpuMark, end: CpuMark, has_proxy: bool) -> None:
    wall = end.at - start.at
    busy = cpu_busy(start.cpu, end.cpu)
    rec["cpu"] = {"cpu%s" % c: busy.get("cpu%s" % c) for c in (lab.proxy_cpu, lab.load_cpu)}
    proxy_ticks = end.proxy_ticks - start.proxy_ticks
    if has_proxy:
        rec["proxy_cpu_pct"] = round(100.0 * proxy_ticks / CLK_TCK / wall, 1)
    if all(v is not None for v in rec["cpu"].values()):
        # CPU that processes other than this benchmark's took on its CPUs, in % of one core
        # (this script, wrk, the upstreams, the shadows and the proxy are "ours")
        ours = 100.0 * ((end.ours - start.ours) + proxy_ticks / CLK_TCK) / wall
        rec["other_cpu_pct"] = round(max(0.0, sum(rec["cpu"].values()) - ours), 1)
        if rec["other_cpu_pct"] >= 20:
            rec["notes"].append("other processes took %.0f%% of a core on the benchmark's CPUs: "
                                "this point is disturbed" % rec["other_cpu_pct"])


def record_counters(rec: dict[str, Any], kind: str | None, before: tuple[bytes, bytes, bytes],
                    after: tuple[bytes, bytes, bytes]) -> None:
    """What the shadow, the primary and the proxy counted in the measured window."""
    (s0, p0, c0), (s1, p1, c1) = before, after
    shadow = shadow_got(kind, s0, s1)
    if shadow is not None:
        rec["shadow"] = shadow
    a, b = stub_counts(p0), stub_counts(p1)
    if a and b:
        rec["primary"] = {"requests": b[1] - a[1] - 1, "new_conns": b[0] - a[0] - 1}
    contender = rec["contender"]
    if contender.startswith("fastmirror"):
        m0, m1 = mirror_outcomes(c0), mirror_outcomes(c1)
        if m1:
            rec["fastmirror"] = {k: int(m1[k] - m0.get(k, 0.0)) for k in m1}
        elif SCENARIO_SHADOW[rec["scenario"]]:
            rec["notes"].append("no fastmirror_mirror_requests_total in /metrics")
    elif contender == "envoy" and SCENARIO_SHADOW[rec["scenario"]]:
        e0, e1 = envoy_counters(c0), envoy_counters(c1)
        rec["envoy"] = {k: e1.get("cluster.shadow." + k, 0) - e0.get("cluster.shadow." + k, 0)
                        for k in ENVOY_KEYS}


def shadow_got(kind: str | None, s0: bytes, s1: bytes) -> dict[str, int] | None:
    """What the shadow received between two readings of its stats."""
    if kind == "shadow":
        a, b = stub_counts(s0), stub_counts(s1)
        if a and b:  # minus the stub_status request itself
            return {"requests": b[1] - a[1] - 1, "new_conns": b[0] - a[0] - 1}
    elif kind in ("slow", "blackhole"):
        try:
            a2, b2 = json.loads(s0), json.loads(s1)
            return {"requests": b2["requests"] - a2["requests"],
                    "conns_accepted": b2["conns_accepted"] - a2["conns_accepted"],
                    "conns_open": b2["conns_open"]}
        except (ValueError, KeyError):
            pass
    return None


def point_logs(contender: str, pdir: Path, rec: dict[str, Any]) -> None:
    """Notes from the contender's logs: a crash on SIGTERM, tracebacks, nginx's error.log."""
    log = pdir / "proxy" / "stdout.log"
    if log.exists():
        text = log.read_text(errors="replace")
        m = re.search(r"Pure virtual[^\n]*|Caught (?:Aborted|Segmentation fault|Bus error)[^\n]*", text)
        if m:
            rec["notes"].append("crashed on SIGTERM (%s)" % m.group(0).strip()[:60])
        if contender.startswith("fastmirror"):
            tb = [ln for ln in text.splitlines() if "Traceback" in ln or "ERROR" in ln]
            if tb:
                rec["notes"].append("%d error/traceback line(s) in its log" % len(tb))
    err = pdir / "proxy" / "error.log"
    if err.exists():
        lines = err.read_text(errors="replace").splitlines()
        if lines:
            rec["error_log"] = {"lines": len(lines), "top": top_error(lines)[:100]}
        err.unlink()  # the dead-shadow point writes one line per request


def top_error(lines: list[str]) -> str:
    """nginx error.log's most frequent message, without its time, pid and request details."""
    kinds: dict[str, int] = {}
    for ln in lines:
        msg = re.sub(r"^[\d/: ]+\[(\w+)\] \d+#\d+: (\*\d+ )?", r"[\1] ", ln)
        msg = re.sub(r",? (client|server|request|subrequest|upstream|host): .*$", "", msg)
        kinds[msg] = kinds.get(msg, 0) + 1
    return max(kinds, key=kinds.__getitem__)


# ------------------------------------------------------------------------------------------
# soak

def run_soak(lab: Lab, seconds: int) -> dict[str, Any]:
    pdir = lab.scratch / "soak"
    pdir.mkdir(parents=True)
    res: dict[str, Any] = {"seconds": seconds}
    if lab.args.quiet_wait > 0:
        wait_quiet(lab)
    bad = lab.start_bad_shadow("blackhole", pdir)
    proxy = None
    try:
        proxy, port = lab.start_proxy("fastmirror", "blackhole", pdir)
        assert proxy is not None
        status, _ = http_get(port, REQ_PATH, 5)
        if status != 200:
            raise PointFailed("health check: %s" % status)
        c0 = mirror_outcomes(lab.proxy_counters("fastmirror"))
        res["rss_idle_mb"] = proxy.rss() / MB
        samples = soak_load(lab, proxy, port, seconds, pdir / "wrk.out")
        c1 = mirror_outcomes(lab.proxy_counters("fastmirror"))
        w = wrk_result((pdir / "wrk.out").read_text())
        if w is not None:
            res.update(rps=w["requests"] / (w["duration_us"] / 1e6 or 1), p99_ms=w["p99_us"] / 1e3,
                       errors=sum(w[k] for k in WRK_ERRORS))
        res["mirror"] = {k: int(c1[k] - c0.get(k, 0.0)) for k in c1}
        res["samples"] = samples
        res.update(soak_figures(samples))
    except PointFailed as exc:
        res["failed"] = str(exc)
    finally:
        if proxy is not None:
            proxy.stop()
        bad.stop()
    return res


def soak_load(lab: Lab, proxy: Proc, port: int, seconds: int, out_path: Path) -> list[tuple[int, float]]:
    """wrk for `seconds` into out_path; the proxy's RSS in MB, sampled every second."""
    argv = wrk_argv(lab, port, seconds, WRK_TIMEOUT)
    lab.note("load", shlex.join(argv).replace(str(port), "<port>") + "   # --soak")
    out = open(out_path, "w")
    lab.wrk = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, text=True,
                               start_new_session=True, cwd=lab.scratch)
    t0 = time.monotonic()
    samples = []
    while lab.wrk.poll() is None and time.monotonic() - t0 < seconds + 30:
        time.sleep(1.0 - ((time.monotonic() - t0) % 1.0))
        if lab.wrk.poll() is None:
            samples.append((round(time.monotonic() - t0), proxy.rss() / MB))
    if lab.wrk.poll() is None:
        os.killpg(lab.wrk.pid, signal.SIGKILL)
    lab.wrk.wait()
    lab.wrk = None
    out.close()
    return samples


def soak_figures(samples: list[tuple[int, float]]) -> dict[str, Any]:
    """Start, max, end and growth of the soak's RSS, whether it is flat, its late slope."""
    if not samples:
        return {}
    rss = [s[1] for s in samples]
    ref = rss[len(rss) // 4]   # after the warm-up quarter
    res: dict[str, Any] = dict(start_mb=rss[0], max_mb=max(rss), end_mb=rss[-1], ref_mb=ref,
                               growth_mb=rss[-1] - ref, flat=(rss[-1] - ref) <= max(5.0, 0.05 * ref))
    half = samples[len(samples) // 2:]
    if len(half) >= 3:
        xs, ys = [s[0] for s in half], [s[1] for s in half]
        mx, my = statistics.fmean(xs), statistics.fmean(ys)
        den = sum((x - mx) ** 2 for x in xs)
        res["slope_mb_per_min"] = 60 * sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / den if den else 0.0
    return res
