"""Issue 3's targets, checked against one run of the load benchmark (only what it measured).

Each check reads the run's medians (summary.py) and says met, not met or n/a; report.py
places the table. Pure: no I/O.
"""

from __future__ import annotations

from typing import Any

from lab import Lab
from plan import BAD, SCENARIO_LABEL
from summary import Summary, errors_total, f_ms, f_rps


Target = tuple[str, str, "bool | None"]  # (target, what this run got, met / not met / n/a)


def targets_section(lab: Lab, S: Summary, meta: dict[str, Any]) -> list[str]:
    """Issue 3's targets, checked against this run (only what the run measured)."""
    targets = [*envoy_h100_targets(S), *reach_targets(S), *ratio_targets(S), *bad_shadow_targets(S),
               *memory_targets(lab, S), *workers_targets(S)]
    if not targets:
        return []
    rows = ["| %s | %s | %s |" % (target, got, "n/a" if ok is None else ("met" if ok else "**not met**"))
            for target, got, ok in targets]
    return ["## Issue 3 targets, checked on this run", "",
            "| target | this run | verdict |", "|---|---|---|"] + rows + [""]


def envoy_h100_targets(S: Summary) -> list[Target]:
    fr, er = S.get("fastmirror", "h100", "rps"), S.get("envoy", "h100", "rps")
    if fr is None or not er:
        return []
    out: list[Target] = [("100% healthy: req/s ≥ 1.5× Envoy", "%s× (%s vs %s)" % (
        "%.2f" % (fr / er), f_rps(fr), f_rps(er)), fr / er >= 1.5)]
    fp, ep = S.get("fastmirror", "h100", "p99_ms"), S.get("envoy", "h100", "p99_ms")
    if fp is not None and ep:
        out.append(("100% healthy: p99 ≤ Envoy's", "%s ms vs %s ms" % (f_ms(fp), f_ms(ep)), fp <= ep))
    return out


def reach_targets(S: Summary) -> list[Target]:
    t = S.typical(("fastmirror", "h100"))
    if not t or t.get("fastmirror") is None:
        return []
    fm = t["fastmirror"]
    lost = fm.get("dropped", 0) + fm.get("failed", 0)
    got = t.get("shadow", {}).get("requests")
    share = got / t["requests"] if got is not None and t["requests"] else None
    return [("100% healthy: every sampled request reaches the shadow",
             "dropped %d, failed %d; shadow got %s of client requests" % (
                 fm.get("dropped", 0), fm.get("failed", 0), "-" if share is None else "%.1f%%" % (100 * share)),
             lost == 0 and share is not None and share >= 0.98)]


def ratio_targets(S: Summary) -> list[Target]:
    out: list[Target] = []
    fr, er, nr = S.get("fastmirror", "h10", "rps"), S.get("envoy", "h10", "rps"), S.get("nginx", "h10", "rps")
    if fr is not None and er:
        out.append(("10% healthy: req/s ≥ 1.5× Envoy", "%.2f× (%s vs %s)" % (fr / er, f_rps(fr), f_rps(er)),
                    fr / er >= 1.5))
    if fr is not None and nr:
        out.append(("10% healthy: nginx's figure (stretch)", "%.2f× (%s vs %s)" % (fr / nr, f_rps(fr), f_rps(nr)),
                    fr >= nr))
    fr, nr = S.get("fastmirror", "none", "rps"), S.get("nginx", "none", "rps")
    if fr is not None and nr:
        out.append(("no mirror: req/s ≥ 0.5× nginx", "%.2f× (%s vs %s)" % (fr / nr, f_rps(fr), f_rps(nr)),
                    fr / nr >= 0.5))
    return out


def bad_shadow_targets(S: Summary) -> list[Target]:
    out: list[Target] = []
    base_r, base_p = S.get("fastmirror", "h100", "rps"), S.get("fastmirror", "h100", "p99_ms")
    for s in BAD:
        r, p = S.get("fastmirror", s, "rps"), S.get("fastmirror", s, "p99_ms")
        if r is None or not base_r or not base_p or p is None:
            continue
        errs = sum(errors_total(x) for x in S.ok(("fastmirror", s)))
        fm = (S.typical(("fastmirror", s)) or {}).get("fastmirror") or {}
        out.append(("%s: req/s ≥ 0.95×, p99 ≤ 1.1× healthy, 0 client errors" % SCENARIO_LABEL[s],
                    "%.2f×, p99 %.2f×, %d errors (copies: %s)" % (
                        r / base_r, p / base_p, errs,
                        ", ".join("%s %s" % (k, f_rps(v)) for k, v in sorted(fm.items()) if v) or "none counted"),
                    r / base_r >= 0.95 and p / base_p <= 1.10 and errs == 0))
    return out


def memory_targets(lab: Lab, S: Summary) -> list[Target]:
    so = lab.soak
    if so is not None and so.get("max_mb") is not None:
        return [("memory: RSS < 150 MB and flat, %d s at 100%% to a blackhole" % so["seconds"],
                 "max %.0f MB, %+.1f MB from %d s to the end" % (
                     so["max_mb"], so["growth_mb"], so["samples"][len(so["samples"]) // 4][0]),
                 so["max_mb"] < 150 and so["flat"])]
    rss: list[float] = [x["rss_max_mb"] for k in S.keys() if k[0] == "fastmirror" for x in S.ok(k)
                        if x.get("rss_max_mb") is not None]
    if not rss:
        return []
    return [("memory: RSS < 150 MB (max over the points; flatness needs `--soak 60`)", "%.0f MB" % max(rss),
             None if max(rss) < 150 else False)]


def workers_targets(S: Summary) -> list[Target]:
    r1, r2 = S.get("fastmirror", "none", "rps"), S.get("fastmirror-w2", "none", "rps")
    if r1 and r2 is not None:
        return [("--workers 2: scaling reported", "%.2f× with no mirror" % (r2 / r1), None)]
    return []
