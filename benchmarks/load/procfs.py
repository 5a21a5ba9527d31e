"""What the load benchmark reads from /proc: listening sockets, process groups, RSS, CPU.

Readings only: lab.py uses them to see a server listen and to size its processes,
measure.py to take a point's RSS and CPU figures. Nothing here starts or stops anything.
"""

from __future__ import annotations

import os
import platform
import re
import resource

PAGE = os.sysconf("SC_PAGE_SIZE")
CLK_TCK = os.sysconf("SC_CLK_TCK")


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
