"""`fastmirror demo`: a fake shop as the primary, a slower and different "new version" as
the shadow, the real proxy in front of them, traffic through it, and a side-by-side report.

The two shop servers and the load generator run in this process on one uvloop event loop;
the proxy runs as `python -m fastmirror`, exactly as a user would start it. The report is
what the proxy's admin /metrics says about each upstream, what the clients measured, and,
per endpoint, how long the demo's own servers took. It does not compare response bodies.
"""

from __future__ import annotations

import asyncio
import math
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any, IO
from urllib.parse import parse_qs, urlsplit

import orjson
import uvloop

from fastmirror.ops.scrape import DURATION, MIRROR, QUEUE_DEPTH, RESPONSES, quantile, read_metrics

HOST = "127.0.0.1"
CONNECTIONS = 16  # client keep-alive connections
# Paced like production traffic, not a flood: the shadow keeps up with the copies
# (about a dozen in flight against the default cap of 64), so none is dropped and the
# comparison covers every request.
RATE = 2000  # requests per second, all connections together
READY_TIMEOUT = 10.0  # seconds for the proxy's admin /ready to answer 200
REQUEST_TIMEOUT = 5.0
SEARCH_DELAY = (0.020, 0.040)  # the shadow's extra time on /api/search, in seconds
SHADOW_500_RATE = 0.02  # share of /api/products/{id} the shadow fails
CODES = ("2xx", "4xx", "5xx", "error")

_NAMES = [f"{a} {n}" for a in ("red", "blue", "steel", "oak", "linen") for n in ("mug", "lamp", "chair", "kettle")]
PRODUCTS = [{"id": i, "name": name, "price": round(4.99 + 3 * i, 2)} for i, name in enumerate(_NAMES, 1)]
QUERIES = ("mug", "lamp", "oak", "steel chair", "sofa")
# (request target, weight); {id} goes one past the catalogue, so ~5% of lookups are 404s.
TRAFFIC = (("/api/products", 20), ("/api/products/{id}", 45), ("/api/search?q={q}", 25), ("/healthz", 10))
REASONS = {200: "OK", 404: "Not Found", 500: "Internal Server Error"}


def _parse_head(head: bytes) -> tuple[list[str], dict[str, str]]:
    """Split a request or response head into its start line's parts and lower-cased headers."""
    start, *lines = head.decode("latin-1").rstrip("\r\n").split("\r\n")
    headers = {}
    for line in lines:
        name, colon, value = line.partition(":")
        if not colon:
            raise ValueError(f"bad header line {line!r}")
        headers[name.strip().lower()] = value.strip()
    if "transfer-encoding" in headers:
        raise ValueError("chunked bodies are not part of the demo")
    return start.split(" ", 2), headers


class ShopServer:
    """The fake shop API on a free loopback port; `new_version=True` makes it the shadow.

    It times its own handling of each request per endpoint, so the report can tell which
    endpoint made the shadow slow without relying on the proxy.
    """

    def __init__(self, new_version: bool) -> None:
        self.new_version = new_version
        self.timings: defaultdict[str, list[float]] = defaultdict(list)
        self.failures: Counter[str] = Counter()
        self._rng = random.Random(7)
        self._server: asyncio.Server | None = None
        self._connections: dict[asyncio.Task[None], asyncio.StreamWriter] = {}

    async def start(self) -> str:
        self._server = await asyncio.start_server(self._serve, HOST, 0)
        return f"{HOST}:{self._server.sockets[0].getsockname()[1]}"

    async def stop(self) -> None:
        """Close the listener and every connection, and let their handlers return.

        Closing, not cancelling: on 3.11 a cancelled stream handler logs a traceback.
        """
        if self._server is not None:
            self._server.close()
        for writer in self._connections.values():
            writer.close()
        if self._connections:
            await asyncio.wait(list(self._connections), timeout=1.0)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections[task] = writer
        try:
            while True:
                (_, target, version), headers = _parse_head(await reader.readuntil(b"\r\n\r\n"))
                await reader.readexactly(int(headers.get("content-length", "0")))
                conn = headers.get("connection", "").lower()
                close = conn == "close" or (version == "HTTP/1.0" and conn != "keep-alive")
                response = await self._respond(target, close)
                if writer.is_closing():  # stop() ran while the shadow was "searching"
                    break
                writer.write(response)
                if close:
                    break
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError, ValueError):
            pass  # client went away or sent something this tiny server does not speak
        finally:
            del self._connections[task]
            writer.close()

    async def _respond(self, target: str, close: bool) -> bytes:
        started = time.perf_counter()
        endpoint, status, body = await self._handle(target)
        self.timings[endpoint].append(time.perf_counter() - started)
        self.failures[endpoint] += status >= 500
        head = f"HTTP/1.1 {status} {REASONS[status]}\r\nContent-Type: application/json\r\n"
        head += f"Content-Length: {len(body)}\r\n" + ("Connection: close\r\n" if close else "") + "\r\n"
        return head.encode() + body

    async def _handle(self, target: str) -> tuple[str, int, bytes]:
        url = urlsplit(target)
        if url.path == "/healthz":
            return url.path, 200, b'{"ok":true}'
        if url.path == "/api/products":
            return url.path, 200, orjson.dumps([self._product(p) for p in PRODUCTS])
        if url.path == "/api/search":
            if self.new_version:  # the new search is slow
                await asyncio.sleep(self._rng.uniform(*SEARCH_DELAY))
            q = parse_qs(url.query).get("q", [""])[0].lower()
            return url.path, 200, orjson.dumps([self._product(p) for p in PRODUCTS if q in str(p["name"])])
        if url.path.startswith("/api/products/"):
            return ("/api/products/{id}", *self._lookup(url.path.rsplit("/", 1)[1]))
        return "other", 404, b'{"error":"not found"}'

    def _lookup(self, product_id: str) -> tuple[int, bytes]:
        if self.new_version and self._rng.random() < SHADOW_500_RATE:
            return 500, b'{"error":"internal"}'
        if not product_id.isdigit() or not 1 <= int(product_id) <= len(PRODUCTS):
            return 404, b'{"error":"no such product"}'
        return 200, orjson.dumps(self._product(PRODUCTS[int(product_id) - 1]))

    def _product(self, product: dict[str, object]) -> dict[str, object]:
        # The new version's schema change: price as a string ("19.99", not 19.99).
        return {**product, "price": f"{product['price']:.2f}"} if self.new_version else product


@dataclass
class ClientStats:
    """What the users saw. Errors are failed requests (no response) and 5xx responses."""

    sent: int = 0
    errors: int = 0
    latencies: list[float] = field(default_factory=list)

    def record(self, seconds: float, status: int) -> None:
        self.latencies.append(seconds)
        self.errors += status >= 500


def _pick_target(rng: random.Random) -> str:
    template = rng.choices([t for t, _ in TRAFFIC], [w for _, w in TRAFFIC])[0]
    return template.format(id=rng.randint(1, len(PRODUCTS) + 1), q=rng.choice(QUERIES).replace(" ", "+"))


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    (_, status, *_), headers = _parse_head(await reader.readuntil(b"\r\n\r\n"))
    length = headers.get("content-length")
    body = await (reader.read() if length is None else reader.readexactly(int(length)))
    return int(status), headers, body


async def _client(port: int, deadline: float, stats: ClientStats, seed: int) -> None:
    """One keep-alive connection sending RATE / CONNECTIONS requests a second until the deadline."""
    rng, conn = random.Random(seed), None
    interval = CONNECTIONS / RATE
    next_send = time.monotonic() + rng.random() * interval  # spread the connections out
    while time.monotonic() < deadline:
        delay = next_send - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        next_send = max(next_send + interval, time.monotonic() - interval)
        close = True
        try:
            if conn is None:
                conn = await asyncio.open_connection(HOST, port)
            started = time.perf_counter()
            stats.sent += 1
            conn[1].write(f"GET {_pick_target(rng)} HTTP/1.1\r\nHost: shop.example\r\n\r\n".encode())
            async with asyncio.timeout(REQUEST_TIMEOUT):
                status, headers, _ = await _read_response(conn[0])
            stats.record(time.perf_counter() - started, status)
            close = headers.get("connection", "").lower() == "close"
        except (OSError, EOFError, asyncio.LimitOverrunError, ValueError):  # TimeoutError is an OSError
            stats.errors += 1
            await asyncio.sleep(0.05)  # do not spin against a proxy that refuses connections
        if close and conn is not None:
            conn[1].close()
            conn = None
    if conn is not None:
        conn[1].close()


def _print_progress(stats: ClientStats, elapsed: float, duration: float, tty: bool, end: str = "") -> None:
    line = (
        f"{min(elapsed, duration):5.1f}s / {duration:g}s  sent {stats.sent:>8,}  "
        f"{stats.sent / max(elapsed, 1e-9):>8,.0f} req/s  errors {stats.errors:,}"
    )
    print(f"\r{line}{end}" if tty else line, end="" if tty else "\n", file=sys.stderr, flush=True)


async def _run_load(port: int, duration: float) -> ClientStats:
    stats, started, tty = ClientStats(), time.monotonic(), sys.stderr.isatty()
    interval = 0.25 if tty else 2.0

    async def tick() -> None:
        while True:
            await asyncio.sleep(interval)
            if time.monotonic() - started < duration - interval / 2:  # the last line comes below
                _print_progress(stats, time.monotonic() - started, duration, tty)

    ticker = asyncio.create_task(tick())
    try:
        await asyncio.gather(*(_client(port, started + duration, stats, i) for i in range(CONNECTIONS)))
    finally:
        ticker.cancel()
    _print_progress(stats, time.monotonic() - started, duration, tty, end="\n")
    return stats


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def _start_proxy(primary: str, shadow: str, port: int, admin_port: int, log: IO[bytes]) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "fastmirror", "--listen", f"{HOST}:{port}", "--primary", primary,
           "--shadow", shadow, "--admin", f"{HOST}:{admin_port}", "--mirror-percent", "100",
           "--diff"]  # fmt: skip
    return subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log)


async def _stop_proxy(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM, up to 5 s to drain, then SIGKILL. Waits on the loop: the proxy may be
    finishing a request to our own servers, which need the loop to answer it."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        for _ in range(100):
            if proc.poll() is not None:
                return
            await asyncio.sleep(0.05)
        proc.kill()
        proc.wait()


async def _http_get(port: int, path: str) -> tuple[int, str]:
    reader, writer = await asyncio.open_connection(HOST, port)
    try:
        writer.write(f"GET {path} HTTP/1.0\r\nHost: {HOST}:{port}\r\nConnection: close\r\n\r\n".encode())
        async with asyncio.timeout(REQUEST_TIMEOUT):
            status, _, body = await _read_response(reader)
    finally:
        writer.close()
    return status, body.decode()


async def _wait_ready(proc: subprocess.Popen[bytes], admin_port: int) -> bool:
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if (await _http_get(admin_port, "/ready"))[0] == 200:
                return True
        except (OSError, EOFError, ValueError):
            pass  # not listening yet
        await asyncio.sleep(0.1)
    return False


@dataclass
class RoleView:
    """One role's upstreams as the proxy's /metrics describes them, summed over upstreams."""

    buckets: dict[float, float] = field(default_factory=dict)  # upper bound -> cumulative count
    codes: Counter[str] = field(default_factory=Counter)

    @property
    def total(self) -> int:
        return sum(self.codes.values())

    def rate(self, code: str) -> float:
        return self.codes[code] / self.total if self.total else math.nan

    def quantile(self, q: float) -> float:
        return float(quantile(self.buckets, q))


def _parse_metrics(text: str) -> tuple[dict[str, RoleView], Counter[str], float]:
    """Per-role views, mirror outcomes, and the summed mirror queue depth."""
    scrape = read_metrics(text)
    roles: defaultdict[str, RoleView] = defaultdict(RoleView)
    for (role,), buckets in scrape.buckets_by(DURATION, "role").items():
        roles[role].buckets.update(buckets)
    for s in scrape.series(RESPONSES):
        roles[s.labels["role"]].codes[s.labels["code"]] += int(s.value)
    mirror: Counter[str] = Counter()
    for s in scrape.series(MIRROR):
        mirror[s.labels["outcome"]] += int(s.value)
    depth = sum((s.value for s in scrape.series(QUEUE_DEPTH)), 0.0)
    return roles, mirror, depth


async def _scrape_settled(admin_port: int) -> tuple[dict[str, RoleView], Counter[str], float]:
    """Scrape /metrics once the mirror queues are empty and the shadow's count stops moving."""
    deadline, last = time.monotonic() + 3.0, -1.0
    while True:
        roles, mirror, depth = _parse_metrics((await _http_get(admin_port, "/metrics"))[1])
        shadow_total = roles["shadow"].total
        if (depth == 0 and shadow_total == last) or time.monotonic() > deadline:
            return roles, mirror, depth
        last = shadow_total
        await asyncio.sleep(0.2)


def _ms(seconds: float) -> str:
    return "-" if math.isnan(seconds) else f"{seconds * 1000:.{3 if seconds < 0.001 else 1}f} ms"


def _pct(share: float) -> str:
    return "-" if math.isnan(share) else f"{share * 100:.1f}%"


def _p(xs: list[float], q: float) -> float:
    return sorted(xs)[min(len(xs) - 1, int(q * len(xs)))] if xs else math.nan


def _print_table(roles: dict[str, RoleView], mirror: Counter[str], client: ClientStats) -> None:
    p, s = roles["primary"], roles["shadow"]
    rows = [("requests", f"{p.total:,.0f}", f"{s.total:,.0f}")]
    rows += [(f"P{q:.0f} latency", _ms(p.quantile(q / 100)), _ms(s.quantile(q / 100))) for q in (50, 99)]
    rows += [(f"{code} rate", _pct(p.rate(code)), _pct(s.rate(code))) for code in CODES]
    print(f"\n{'as the proxy saw it':<22}{'primary':>12}{'shadow':>12}")
    for name, left, right in rows:
        print(f"{name:<22}{left:>12}{right:>12}")
    print("\nmirror copies: " + ", ".join(f"{o} {mirror[o]:,.0f}" for o in ("sent", "dropped", "failed", "skipped")))
    print(
        f"what users saw: {len(client.latencies):,} responses, P50 {_ms(_p(client.latencies, 0.5))}, "
        f"P99 {_ms(_p(client.latencies, 0.99))}, {client.errors:,} errors"
    )


def _print_endpoints(primary: ShopServer, shadow: ShopServer) -> str:
    """Per-endpoint P99 of the servers' own handling time; returns the shadow's worst endpoint."""
    print(f"\n{'time inside the servers':<22}{'primary P99':>12}{'shadow P99':>12}{'shadow 5xx':>12}")
    endpoints = sorted(set(primary.timings) | set(shadow.timings))
    slowdown = {e: _p(shadow.timings[e], 0.99) - _p(primary.timings[e], 0.99) for e in endpoints}
    worst = max(endpoints, key=lambda e: -math.inf if math.isnan(slowdown[e]) else slowdown[e], default="-")
    for e in endpoints:
        fails = _pct(shadow.failures[e] / len(shadow.timings[e]) if shadow.timings[e] else math.nan)
        print(f"{e:<22}{_ms(_p(primary.timings[e], 0.99)):>12}{_ms(_p(shadow.timings[e], 0.99)):>12}{fails:>12}"
              + ("   <- slowest" if e == worst else ""))  # fmt: skip
    return worst


def _verdict(roles: dict[str, RoleView], mirror: Counter[str], client: ClientStats, worst: str) -> str:
    p, s = roles["primary"], roles["shadow"]
    if not s.total:
        return "verdict: no mirrored request reached the shadow; see the mirror counters above."
    p99, s99, client_p99 = p.quantile(0.99), s.quantile(0.99), _p(client.latencies, 0.99)
    times = f"{s99 / p99:.1f}x the primary's" if p99 > 0 else f"{_ms(s99)} vs the primary's {_ms(p99)}"
    seen = "users saw none of it" if client.errors == 0 and client_p99 < s99 else "users saw"
    dropped = mirror["dropped"] / (mirror["sent"] + mirror["dropped"]) if mirror["dropped"] else 0.0
    return (
        f"verdict: shadow P99 is {times} (slowest on {worst}); "
        f"shadow 5xx rate {_pct(s.rate('5xx'))} vs {_pct(p.rate('5xx'))}; "
        + (f"the proxy dropped {_pct(dropped)} of mirror copies rather than wait for the shadow; " if dropped else "")
        + f"{seen}: client P99 {_ms(client_p99)}, {client.errors:,} errors"
    )


async def _startup_failed(proc: subprocess.Popen[bytes], log: IO[bytes], admin_port: int) -> int:
    if proc.poll() is None:
        why = f"did not answer 200 on http://{HOST}:{admin_port}/ready within {READY_TIMEOUT:g} s"
    else:
        why = f"exited with status {proc.returncode} before it was ready"
    await _stop_proxy(proc)
    log.seek(0)
    print(f"error: the proxy ({sys.executable} -m fastmirror) {why}; its stderr:", file=sys.stderr)
    sys.stderr.write(log.read().decode(errors="replace"))
    return 1


async def _demo(duration: float) -> int:
    primary, shadow = ShopServer(new_version=False), ShopServer(new_version=True)
    primary_addr, shadow_addr = await primary.start(), await shadow.start()
    port, admin_port = _free_port(), _free_port()
    with tempfile.TemporaryFile() as log:
        proc = _start_proxy(primary_addr, shadow_addr, port, admin_port, log)
        try:
            if not await _wait_ready(proc, admin_port):
                return await _startup_failed(proc, log, admin_port)
            print(
                f"primary  {primary_addr}  the shop as it runs today\n"
                f"shadow   {shadow_addr}  the new version: slower search, price as a string, some 500s\n"
                f"proxy    {HOST}:{port} (admin {HOST}:{admin_port}), mirroring 100% to the shadow\n"
                f"traffic  {CONNECTIONS} keep-alive clients for {duration:g} s",
                flush=True,
            )
            client = await _run_load(port, duration)
            roles, mirror, _ = await _scrape_settled(admin_port)
            diffs = await _fetch_diffs(admin_port)
        except (OSError, EOFError, ValueError) as exc:
            print(f"error: lost the proxy's admin endpoint on {HOST}:{admin_port}: {exc!r}", file=sys.stderr)
            return 1
        finally:
            await _stop_proxy(proc)
            await primary.stop()
            await shadow.stop()
    _print_table(roles, mirror, client)
    worst = _print_endpoints(primary, shadow)
    changed = _print_diffs(diffs)
    print("\n" + _verdict(roles, mirror, client, worst) + changed)
    return 0


async def _fetch_diffs(admin_port: int) -> dict[str, Any]:
    """The proxy's response diffs (/diffs), once the comparisons have caught up."""
    status, body = await _http_get(admin_port, "/diffs")
    return orjson.loads(body) if status == 200 else {"upstreams": {}}


def _print_diffs(diffs: dict[str, Any]) -> str:
    """Print where the shadow answers differently; return the verdict's clause for it."""
    rows = []
    for upstream in diffs.get("upstreams", {}).values():
        for endpoint, e in upstream.get("endpoints", {}).items():
            if e.get("compared"):
                rows.append((e.get("mismatch", 0) / e["compared"], endpoint, e))
    if not rows:
        return ""
    rows.sort(key=lambda r: (-r[0], r[1]))
    print(f"\n{'answers compared':24}{'compared':>10}{'differ':>9}  top differing field")
    for rate, endpoint, e in rows:
        top = e.get("fields") or []
        field = ""
        if top:
            ex = top[0].get("example", {})
            field = (f"{top[0]['path']}  primary {orjson.dumps(ex.get('primary')).decode()}"
                     f"  shadow {orjson.dumps(ex.get('shadow')).decode()}")
        print(f"{endpoint:24}{e['compared']:>10,}{_pct(rate):>9}  {field}")
    rate, endpoint, e = rows[0]
    if not rate or not e.get("fields"):
        return "; the shadow answered like the primary on every endpoint"
    return f"; answers differ on {endpoint} ({_pct(rate)}): {e['fields'][0]['path']}"


def main(duration: float = 10.0) -> int:
    """Run the demo for `duration` seconds of traffic; 0 when done, 1 if the proxy failed, 130 on Ctrl-C."""
    try:
        return uvloop.run(_demo(duration))
    except KeyboardInterrupt:
        print("\ndemo interrupted; proxy and servers stopped", file=sys.stderr)
        return 130
