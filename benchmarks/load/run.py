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

# The stages, one module each: plan.py (ports, scenarios, contenders, which points run),
# procfs.py (/proc readings), lab.py (tools, processes, upstreams, shadows, proxies),
# measure.py (one point, the soak, wrk's and the servers' counters), summary.py,
# targets.py and report.py (the markdown report). This file is the command line only.

import argparse
import datetime
import json
import os
import resource
import re
import shlex
import signal
import sys
import time
from pathlib import Path
from typing import Any

from lab import HarnessError, Lab, versions
from measure import run_point, run_soak
from plan import DEFAULT_OUT, PORT, select_points
from procfs import cpu_busy, cpu_snapshot, listening_count, machine
from report import build_report
from summary import errors_total, f_ms, f_rps


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


def pin_and_limit(args: argparse.Namespace) -> int | None:
    """CPU pinning, file and core limits, SIGTERM as an interrupt; an exit status if it cannot run."""
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
    return None


def survey(lab: Lab, invocation: str) -> dict[str, Any]:
    """Check the ports are free and the machine is quiet; the report's machine and versions."""
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
    return meta


def print_plan(lab: Lab, meta: dict[str, Any]) -> None:
    args = lab.args
    est = len(lab.points) * args.repeats * (args.warmup + args.duration + 2.5) + args.soak
    print("# fastmirror load benchmark: %d points x %d repeat(s) x %d s (+%d s warm-up)%s, about %d s; "
          "proxy on CPU %s, load on CPU %s; scratch %s" % (
              len(lab.points), args.repeats, args.duration, args.warmup,
              (" + %d s soak" % args.soak) if args.soak else "", est, lab.proxy_cpu, lab.load_cpu, lab.scratch),
          flush=True)
    for v in meta["versions"]:
        print("#   " + v, flush=True)


def run_points(lab: Lab) -> int:
    """Every repeat of every point, one line each; 1 if a point failed."""
    args, status = lab.args, 0
    for rep in range(1, args.repeats + 1):
        order = lab.points if rep % 2 else lab.points[::-1]
        for point in order:
            contender, scenario = point.split(":")
            t0 = time.monotonic()
            print("  [rep %d/%d] %-14s %-10s " % (rep, args.repeats, contender, scenario), end="", flush=True)
            rec = run_point(lab, rep, contender, scenario)
            lab.records.append(rec)
            if rec.get("failed"):
                status = 1
                print("FAILED: %s" % rec["failed"][:300], flush=True)
            else:
                print("%9s req/s  p50 %6s ms  p99 %6s ms  errors %d%s  (%.1f s)" % (
                    f_rps(rec["rps"]), f_ms(rec["p50_ms"]), f_ms(rec["p99_ms"]), errors_total(rec),
                    "".join("  [%s]" % n for n in rec["notes"]), time.monotonic() - t0), flush=True)
    return status


def soak(lab: Lab) -> int:
    """The --soak run and its line; 1 if it failed."""
    print("  [soak] fastmirror -> blackhole shadow, %d s ..." % lab.args.soak, end="", flush=True)
    lab.soak = run_soak(lab, lab.args.soak)
    if lab.soak.get("failed"):
        print(" FAILED: %s" % lab.soak["failed"], flush=True)
        return 1
    print(" RSS max %.1f MB, end %.1f MB (%s)" % (lab.soak.get("max_mb", 0), lab.soak.get("end_mb", 0),
                                                  "flat" if lab.soak.get("flat") else "growing"),
          flush=True)
    return 0


def finish(lab: Lab, meta: dict[str, Any], t_start: float) -> None:
    """Print the report up to its setup part, write it, keep the records if asked."""
    args = lab.args
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


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    invocation = "python benchmarks/load/run.py" + ("" if not (argv or sys.argv[1:]) else " " + shlex.join(
        argv if argv is not None else sys.argv[1:]))
    refused = pin_and_limit(args)
    if refused is not None:
        return refused
    lab = Lab(args)
    t_start = time.monotonic()
    try:
        lab.find_tools(need_envoy=not args.smoke)
        lab.points = select_points(args.smoke, "envoy" in lab.tool, args.only)
        if not lab.points and not args.soak:
            print("no points selected", file=sys.stderr)
            return 2
        meta = survey(lab, invocation)
        print_plan(lab, meta)
        lab.start_upstreams()
        status = run_points(lab)
        if args.soak:
            status = soak(lab) or status
        finish(lab, meta, t_start)
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
