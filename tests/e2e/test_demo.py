"""demo: `python -m fastmirror demo` runs its own primary, shadow and proxy, and reports."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src"
MS = r"\d[\d,.]* ms"


def _env() -> dict[str, str]:
    """The installed package if there is one, else src/ (the demo starts the proxy the same way)."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "all_proxy"):
        env.pop(var, None)
    probe = subprocess.run(
        [sys.executable, "-c", "import fastmirror.demo"], env=env, cwd="/", capture_output=True, check=False
    )
    if probe.returncode != 0:
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(SRC), env.get("PYTHONPATH")) if p)
    return env


def test_demo_reports_primary_vs_shadow(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "fastmirror", "demo", "--duration", "2"],
        env=_env(), cwd=tmp_path, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    out = proc.stdout
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout:\n{out}\nstderr:\n{proc.stderr}"
    assert "Traceback" not in proc.stderr, proc.stderr

    # The side-by-side table: a primary and a shadow column, and a P99 figure in each.
    assert re.search(r"^.*\bprimary\s+shadow\s*$", out, re.MULTILINE), out
    assert re.search(r"^requests\s+[\d,]+\s+[\d,]+\s*$", out, re.MULTILINE), out
    assert re.search(rf"^P50 latency\s+{MS}\s+{MS}\s*$", out, re.MULTILINE), out
    p99 = re.search(rf"^P99 latency\s+({MS})\s+({MS})\s*$", out, re.MULTILINE)
    assert p99, out
    assert re.search(r"^5xx rate\s+[\d.]+%\s+[\d.]+%\s*$", out, re.MULTILINE), out
    assert re.search(r"^mirror copies: sent [\d,]+, dropped [\d,]+, failed [\d,]+", out, re.MULTILINE), out

    # The story: the shadow is the slow one, /api/search is why, and the clients never saw it.
    primary_p99, shadow_p99 = (float(x.split()[0].replace(",", "")) for x in p99.groups())
    assert shadow_p99 > 3 * primary_p99, out
    assert re.search(r"^/api/search\b.*<- slowest$", out, re.MULTILINE), out
    assert "slowest on /api/search" in out, out
    assert "users saw none of it" in out, out
