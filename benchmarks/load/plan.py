"""What the load benchmark measures: ports, load settings, scenarios, contenders, points.

A point is `contender:scenario` (`fastmirror:h100`, `envoy:dead`). This module only names
them and picks which to run; lab.py starts what a point needs, measure.py measures it and
report.py writes the numbers up. Pure: no processes, no files, no clock.
"""

from __future__ import annotations

import re
from pathlib import Path

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


def select_points(smoke: bool, have_envoy: bool, only: str | None) -> list[str]:
    """The points of a run, in the order a repeat runs them (scenario by scenario)."""
    if smoke:
        points = list(SMOKE_POINTS)
    else:
        points = ["%s:%s" % (c, s) for s in SCENARIOS for c in CONTENDERS if s in CONTENDER_SCENARIOS[c]]
    if not have_envoy:
        points = [p for p in points if not p.startswith("envoy:")]
    if only:
        points = [p for p in points if re.search(only, p)]
    return points
