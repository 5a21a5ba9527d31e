"""import-istio end to end: the TOML it prints passes check-config and, run by fastmirror
against real loopback upstreams, mirrors what the VirtualService says, at its percent.

The generated hosts (search-v1, search-v2 ...) are rewritten to the RecordingServers'
127.0.0.1 ports in the test, after check-config has accepted the TOML as printed.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import httpx
import pytest

from conftest import REPO_ROOT, RecordingServer, start_proxy
from istio_examples import SEED

pytestmark = pytest.mark.e2e


MULTI = """\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: shop
  namespace: prod
spec:
  hosts: [shop]
  http:
  - name: search
    match:
    - uri: {prefix: /api/search}
    route:
    - destination: {host: shop-v1, port: {number: 8080}}
    mirrors:
    - destination: {host: shop-v2, port: {number: 8080}}
      percentage: {value: 30}
  - name: payments
    match:
    - uri: {prefix: /api/payments}
    route:
    - destination: {host: shop-v1, port: {number: 8080}}
  - name: api
    match:
    - uri: {prefix: /api}
      method: {exact: GET}
    route:
    - destination: {host: shop-v1, port: {number: 8080}}
    mirror: {host: shop-v2, port: {number: 8080}}
  - route:
    - destination: {host: shop-v1, port: {number: 8080}}
"""


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k.lower() not in ("http_proxy", "https_proxy", "all_proxy")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT / "src"), env.get("PYTHONPATH")) if p)
    return env


def fastmirror(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "fastmirror", *args], env=_env(), cwd=cwd,
                          capture_output=True, text=True, timeout=60)  # fmt: skip


def imported(yaml_text: str, tmp_path: Path) -> Path:
    """import-istio's TOML, written to a file that check-config (a subprocess) accepts."""
    source = tmp_path / "vs.yaml"
    source.write_text(yaml_text)
    out = fastmirror("import-istio", str(source), cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "Traceback" not in out.stderr
    path = tmp_path / "fastmirror.toml"
    path.write_text(out.stdout)
    check = fastmirror("check-config", str(path), cwd=tmp_path)
    assert check.returncode == 0, check.stderr
    return path


def pointed_at(path: Path, hosts: dict[str, RecordingServer]) -> Path:
    """The same TOML with each generated upstream URL replaced by a loopback server's."""
    text = path.read_text()
    for url, server in hosts.items():
        assert f'"{url}"' in text, text
        text = text.replace(f'"{url}"', f'"http://{server.address}"')
    path.write_text(text)
    return path


def get_all(url: str, targets: list[str], method: str = "GET") -> None:
    with httpx.Client(trust_env=False, timeout=10) as client:
        for target in targets:
            assert client.request(method, url + target).status_code == 200


def assert_binomial(got: int, n: int, p: float) -> None:
    sigma = math.sqrt(n * p * (1 - p))
    assert abs(got - n * p) <= 5 * sigma, f"{got} of {n} mirrored, expected {n * p:.0f} +- {5 * sigma:.0f}"


def test_seed_virtual_service_mirrors_its_prefix_at_its_percent(tmp_path, primary, shadow):
    path = pointed_at(imported(SEED, tmp_path), {"http://search-v1:80": primary, "http://search-v2:80": shadow})
    proxy = start_proxy("--config", str(path))
    try:
        n = 600
        get_all(proxy.url, [f"/api/search?q={i}" for i in range(n)])
        get_all(proxy.url, [f"/other/{i}" for i in range(100)])
        assert len(primary.wait_for_requests(n + 100)) == n + 100
        mirrored = shadow.wait_quiet(quiet=0.5, timeout=10)
    finally:
        proxy.close()
    assert all(r.path == "/api/search" for r in mirrored), {r.path for r in mirrored}
    assert_binomial(len(mirrored), n, 0.10)


def test_multi_route_virtual_service_behaves_as_the_yaml_says(tmp_path, primary, shadow):
    url = "http://{}.prod.svc.cluster.local:8080"
    path = pointed_at(imported(MULTI, tmp_path), {url.format("shop-v1"): primary, url.format("shop-v2"): shadow})
    proxy = start_proxy("--config", str(path))
    try:
        n = 500
        get_all(proxy.url, [f"/api/search/{i}" for i in range(n)])  # 30 %
        get_all(proxy.url, [f"/api/payments/{i}" for i in range(50)])  # never
        get_all(proxy.url, [f"/api/items/{i}" for i in range(50)])  # every GET
        get_all(proxy.url, ["/api/items/posted"] * 5, method="POST")  # the api route takes GET only
        get_all(proxy.url, [f"/static/{i}" for i in range(50)])  # no route: not mirrored
        assert len(primary.wait_for_requests(n + 155)) == n + 155
        mirrored = shadow.wait_quiet(quiet=0.5, timeout=10)
    finally:
        proxy.close()
    by_route = {"search": 0, "items": 0}
    for rec in mirrored:
        assert rec.path.startswith(("/api/search/", "/api/items/")) and rec.method == "GET", rec.target
        by_route["search" if rec.path.startswith("/api/search/") else "items"] += 1
    assert by_route["items"] == 50
    assert_binomial(by_route["search"], n, 0.30)


def test_bad_files_exit_2_with_one_line(tmp_path):
    (tmp_path / "bad.yaml").write_text("kind: [unclosed\n")
    (tmp_path / "svc.yaml").write_text(textwrap.dedent("""\
        kind: Service
        metadata: {name: x}
        """))
    for name, message in (("missing.yaml", "cannot read"), ("bad.yaml", "not YAML"),
                          ("svc.yaml", "no VirtualService with http routes")):  # fmt: skip
        out = fastmirror("import-istio", str(tmp_path / name), cwd=tmp_path)
        assert out.returncode == 2, (name, out.stderr)
        assert out.stdout == ""
        lines = out.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith("fastmirror: error: ") and message in lines[0], lines


def test_warnings_go_to_stderr_one_line_each_and_exit_0(tmp_path):
    text = SEED.replace("    mirror:\n", "    timeout: 2s\n    mirror:\n").replace(
        "        prefix: /api/search\n", "        prefix: /api/search\n      headers:\n        x-beta: {exact: '1'}\n")
    source = tmp_path / "vs.yaml"
    source.write_text(text)
    with open(source) as stdin:
        out = subprocess.run([sys.executable, "-m", "fastmirror", "import-istio", "-"], stdin=stdin,
                             env=_env(), cwd=tmp_path, capture_output=True, text=True, timeout=60)  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert out.stderr.splitlines() == [
        "fastmirror import-istio: warning: route 'api-search': match on headers cannot be translated; "
        "the route matches every request with that prefix",
        "fastmirror import-istio: warning: route 'api-search': timeout cannot be translated; "
        "primary_timeout (default 15 s) applies to every request",
    ]
    assert 'prefix = "/api/search"' in out.stdout


def test_import_istio_is_in_help(tmp_path):
    out = fastmirror("--help", cwd=tmp_path)
    assert out.returncode == 0 and "import-istio" in out.stdout
