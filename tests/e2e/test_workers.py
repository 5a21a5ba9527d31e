"""--workers N: a supervisor and N worker processes sharing the port (SO_REUSEPORT).

Real processes on 127.0.0.1. Every wait is bounded; every process is ended by PID
(the run_proxy fixture ends the supervisor, which ends its workers).
"""

from __future__ import annotations

import os
import signal
import socket
import threading
import time

import httpx
import orjson
import pytest
from conftest import read_response, write_toml

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(90)]

WORKERS = ("--workers", "2")


# -- helpers ----------------------------------------------------------------------


def children(pid: int) -> dict[int, str]:
    """{pid: cmdline} of the live (not zombie) processes whose parent is pid."""
    out = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read().replace(b"\0", b" ").decode().strip()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()  # after "(comm)": state, ppid, ...
        if int(fields[1]) == pid and fields[0] != "Z":
            out[int(entry)] = cmdline
    return out


def workers_of(proxy, n: int = 2, timeout: float = 10.0) -> dict[int, str]:
    """The supervisor's n worker processes, waiting (bounded) for them to be there."""
    deadline = time.monotonic() + timeout
    while True:
        found = {p: c for p, c in children(proxy.pid).items() if "fastmirror.ops.supervisor" in c}
        if len(found) == n or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


def alive(pid: int) -> bool:
    """True while any thread of process pid is not a zombie.

    Not only the main thread: a killed worker's main thread can be a zombie while its
    other threads (the access-log writer) still exit, and until the last one has, its
    files, the listening socket among them, are open: the kernel still hands that
    socket new connections, which are reset a moment later.
    """
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return False
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X"):
                    return True
        except OSError:
            continue
    return False


def get_fresh(proxy, path: str, timeout: float = 5.0) -> int:
    """GET path on a new connection (so SO_REUSEPORT may pick any worker); the status."""
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=timeout) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: fm.test\r\n\r\n".encode())
        return read_response(sock, timeout=timeout).status


def upstream_ports(pid: int, remote_port: int) -> set[int]:
    """Local ports of pid's TCP sockets connected to 127.0.0.1:remote_port (from /proc)."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if link.startswith("socket:["):
            inodes.add(int(link[8:-1]))
    ports = set()
    with open("/proc/net/tcp") as f:
        for line in f.readlines()[1:]:
            cols = line.split()
            local, remote, inode = cols[1], cols[2], int(cols[9])
            if inode in inodes and int(remote.split(":")[1], 16) == remote_port:
                ports.add(int(local.split(":")[1], 16))
    return ports


def mirror_percent_gauge(proxy) -> float:
    """fastmirror_mirror_percent as scraped: the largest value any worker uses."""
    return proxy.metric("fastmirror_mirror_percent")


def wait_until(predicate, timeout: float, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


# -- tests ------------------------------------------------------------------------


def test_two_workers_are_children_of_the_supervisor(run_proxy, primary):
    proxy = run_proxy(*WORKERS, shadow=None)
    workers = workers_of(proxy)
    assert len(workers) == 2, (children(proxy.pid), proxy.describe())
    with httpx.Client(trust_env=False, timeout=5) as client:
        for i in range(5):
            resp = client.get(f"{proxy.url}/w/{i}")
            assert resp.status_code == 200 and resp.content == b"hello from primary\n"
    for i in range(20):
        assert get_fresh(proxy, f"/fresh/{i}") == 200
    assert len(primary.wait_for_requests(25)) == 25
    # The supervisor serves the admin endpoint itself.
    assert proxy.admin("GET", "/ready").status_code == 200
    assert orjson.loads(proxy.admin("GET", "/config").content)["workers"] == 2


def test_metrics_sum_all_workers(run_proxy, primary):
    proxy = run_proxy(*WORKERS, shadow=None)
    workers = workers_of(proxy)
    assert len(workers) == 2, proxy.describe()
    for i in range(200):
        assert get_fresh(proxy, f"/m/{i}") == 200
    assert len(primary.wait_for_requests(200)) == 200
    # Both workers served some: each holds its own keep-alive connection to the primary.
    primary_port = int(primary.address.rsplit(":", 1)[1])
    per_worker = {pid: upstream_ports(pid, primary_port) for pid in workers}
    assert all(per_worker.values()), per_worker
    assert proxy.metric("fastmirror_responses_total", role="primary") == 200, proxy.describe()
    assert proxy.metric("fastmirror_downstream_requests_total") == 200
    assert proxy.metric("fastmirror_request_duration_seconds_count", role="primary") == 200


def test_put_mirror_reaches_every_worker(run_proxy, primary, shadow):
    proxy = run_proxy(*WORKERS)
    assert len(workers_of(proxy)) == 2, proxy.describe()
    for i in range(20):
        assert get_fresh(proxy, f"/before/{i}") == 200
    assert len(shadow.wait_for_requests(20)) == 20  # mirroring is on in both workers

    resp = proxy.admin("PUT", "/mirror?percent=0")
    assert resp.status_code == 200 and orjson.loads(resp.content) == {"percent": 0.0}
    assert orjson.loads(proxy.admin("GET", "/mirror").content) == {"percent": 0.0}
    assert orjson.loads(proxy.admin("GET", "/config").content)["mirror_percent"] == 0
    assert wait_until(lambda: mirror_percent_gauge(proxy) == 0, 5), proxy.describe()

    shadow.clear()
    primary.clear()
    for i in range(100):
        assert get_fresh(proxy, f"/after/{i}") == 200
    assert len(primary.wait_for_requests(100)) == 100
    assert shadow.wait_quiet(0.5) == []


def test_sigterm_drains_in_flight_request_and_every_process_exits(run_proxy, primary):
    proxy = run_proxy(*WORKERS, shadow=None)
    workers = workers_of(proxy)
    assert len(workers) == 2, proxy.describe()
    result: dict = {}

    def slow() -> None:
        try:
            with httpx.Client(trust_env=False, timeout=10) as client:
                resp = client.get(proxy.url + "/slow?ms=1500")
                result["status"], result["body"] = resp.status_code, resp.content
        except Exception as exc:  # noqa: BLE001 - reported by the assertion below
            result["error"] = repr(exc)

    thread = threading.Thread(target=slow)
    thread.start()
    assert primary.wait_for_requests(1), "slow request not in flight"
    proxy.signal(signal.SIGTERM)
    assert wait_until(lambda: proxy.admin("GET", "/ready", timeout=1).status_code == 503, 1.0)
    assert proxy.admin("GET", "/healthz", timeout=1).status_code == 200
    thread.join(10)
    assert not thread.is_alive()
    assert result.get("status") == 200 and result["body"] == b"hello from primary\n", result
    assert proxy.wait(timeout=10) == 0, proxy.describe()
    assert wait_until(lambda: not any(alive(pid) for pid in workers), 5), workers
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", proxy.port), timeout=1).close()


def test_killed_worker_is_restarted(run_proxy, primary):
    proxy = run_proxy(*WORKERS, shadow=None)
    workers = workers_of(proxy)
    assert len(workers) == 2, proxy.describe()
    victim = min(workers)
    os.kill(victim, signal.SIGKILL)
    assert wait_until(lambda: not alive(victim), 5)

    def replaced() -> bool:
        now = workers_of(proxy, timeout=0)
        return len(now) == 2 and victim not in now
    assert wait_until(replaced, 10), (children(proxy.pid), proxy.describe())
    survivors = set(workers_of(proxy)) - {victim}
    assert (set(workers) - {victim}) <= survivors
    assert "restarting" in proxy.stderr_text()
    # The new worker takes its share of new connections: all of them are answered.
    assert wait_until(lambda: proxy.admin("GET", "/ready").status_code == 200, 5)
    time.sleep(0.5)  # let the new worker's listener and control channel settle
    for i in range(50):
        assert get_fresh(proxy, f"/after-kill/{i}") == 200
    assert proxy.proc.poll() is None
    assert proxy.metric("fastmirror_responses_total", role="primary", code="2xx") >= 50


def test_sighup_reload_reaches_every_worker(run_proxy, primary, shadow):
    proxy = run_proxy(*WORKERS, config={"mirror_percent": 100})
    assert len(workers_of(proxy)) == 2, proxy.describe()
    for i in range(20):
        assert get_fresh(proxy, f"/before/{i}") == 200
    assert len(shadow.wait_for_requests(20)) == 20

    write_toml(proxy.config_path, {"listen": proxy.address, "admin": f"127.0.0.1:{proxy.admin_port}",
                                   "primary": primary.address, "shadow": [shadow.address],
                                   "mirror_percent": 0})
    proxy.signal(signal.SIGHUP)
    assert wait_until(lambda: orjson.loads(proxy.admin("GET", "/config").content)["mirror_percent"] == 0, 5)
    assert wait_until(lambda: mirror_percent_gauge(proxy) == 0, 5), proxy.describe()

    shadow.clear()
    primary.clear()
    for i in range(100):
        assert get_fresh(proxy, f"/after/{i}") == 200
    assert len(primary.wait_for_requests(100)) == 100
    assert shadow.wait_quiet(0.5) == []
    assert proxy.proc.poll() is None


def test_workers_exit_when_the_supervisor_dies(run_proxy, primary):
    proxy = run_proxy(*WORKERS, shadow=None)
    workers = workers_of(proxy)
    assert len(workers) == 2, proxy.describe()
    proxy.signal(signal.SIGKILL)
    proxy.wait(timeout=5)
    # EOF on the control channel: each worker drains (nothing in flight) and exits.
    assert wait_until(lambda: not any(alive(pid) for pid in workers), 10), workers


def test_unbindable_listen_address_is_one_line_exit_2(run_proxy, primary):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        proxy = run_proxy(*WORKERS, shadow=None, port=port, wait_ready=False)
        assert proxy.wait(timeout=10) == 2
    lines = proxy.stderr_text().strip().splitlines()
    assert len(lines) == 1 and "listen" in lines[0] and str(port) in lines[0], lines
    assert children(proxy.pid) == {}


# -- issue 7: counters never go down; rebalancing after a restart; one SIGHUP error --


def counter_samples(proxy) -> dict:
    """Every counter and histogram sample of one scrape: {(name, labels): value}."""
    return {key: v for key, v in proxy.metrics().items()
            if key[0].endswith(("_total", "_bucket", "_count", "_sum"))}


def assert_monotonic(scrapes: list[dict]) -> None:
    for i, (before, after) in enumerate(zip(scrapes, scrapes[1:])):
        for key, value in before.items():
            assert after.get(key, 0) >= value, (f"scrape {i + 1}: {key[0]}{dict(key[1])} "
                                                f"went from {value} to {after.get(key)}")


def requests_total(scrape: dict) -> float:
    return scrape[("fastmirror_downstream_requests_total", frozenset())]


def test_counters_never_decrease_when_a_worker_is_slow_or_killed(run_proxy, primary, shadow):
    proxy = run_proxy(*WORKERS)
    workers = workers_of(proxy)
    assert len(workers) == 2, proxy.describe()
    for i in range(100):
        assert get_fresh(proxy, f"/one/{i}") == 200
    assert len(primary.wait_for_requests(100)) == 100
    assert len(shadow.wait_for_requests(100)) == 100
    scrapes = [counter_samples(proxy)]
    assert requests_total(scrapes[0]) == 100, proxy.describe()

    # A worker too slow for one scrape (SCRAPE_TIMEOUT) counts with what it said last.
    slow = min(workers)
    os.kill(slow, signal.SIGSTOP)
    try:
        scrapes.append(counter_samples(proxy))
    finally:
        os.kill(slow, signal.SIGCONT)
    assert requests_total(scrapes[-1]) == 100, proxy.describe()

    # Idle keep-alive clients: the killed worker's share must leave the gauge.
    clients = []
    for i in range(6):
        sock = socket.create_connection(("127.0.0.1", proxy.port), timeout=5)
        sock.sendall(f"GET /held/{i} HTTP/1.1\r\nHost: fm.test\r\n\r\n".encode())
        assert read_response(sock).status == 200
        clients.append(sock)
    scrapes.append(counter_samples(proxy))
    assert requests_total(scrapes[-1]) == 106

    # Scrape without pause from before the kill until the new worker is in.
    stop = threading.Event()
    errors: list[str] = []

    def scrape_forever() -> None:
        while not stop.is_set():
            try:
                scrapes.append(counter_samples(proxy))
            except Exception as exc:  # noqa: BLE001 - reported by the assertion below
                errors.append(repr(exc))
            time.sleep(0.005)

    scraper = threading.Thread(target=scrape_forever)
    scraper.start()
    try:
        time.sleep(0.2)
        victim = max(workers)
        os.kill(victim, signal.SIGKILL)
        assert wait_until(lambda: not alive(victim), 5)

        def replaced() -> bool:
            now = workers_of(proxy, timeout=0)
            return len(now) == 2 and victim not in now
        assert wait_until(replaced, 10), proxy.describe()
        assert wait_until(lambda: proxy.admin("GET", "/ready").status_code == 200, 5)
        time.sleep(1.0)
    finally:
        stop.set()
        scraper.join(10)
    assert not errors, errors[:3]
    assert len(scrapes) > 20
    assert_monotonic(scrapes)
    # Nothing was served meanwhile, and nothing served before was lost.
    assert {requests_total(s) for s in scrapes[2:]} == {106}, proxy.describe()

    for sock in clients:
        sock.close()
    assert wait_until(lambda: proxy.metric("fastmirror_downstream_connections_active") == 0, 5), \
        proxy.metrics()
    for i in range(50):
        assert get_fresh(proxy, f"/two/{i}") == 200
    assert len(primary.wait_for_requests(156)) == 156
    last = counter_samples(proxy)
    assert_monotonic([scrapes[-1], last])
    assert requests_total(last) == 156
    assert proxy.metric("fastmirror_responses_total", role="primary", code="2xx") == 156
    assert proxy.metric("fastmirror_request_duration_seconds_count", role="primary") == 156
    assert wait_until(lambda: proxy.metric("fastmirror_mirror_requests_total", outcome="sent") == 156, 5), \
        proxy.metrics()


def test_killed_worker_counts_stay_without_a_scrape_before(run_proxy, primary):
    """The heartbeat brings each worker's numbers every HEARTBEAT (5 s): a worker killed
    with no scrape since its requests still has them counted."""
    proxy = run_proxy(*WORKERS, shadow=None)
    workers = workers_of(proxy)
    assert len(workers) == 2, proxy.describe()
    for i in range(40):
        assert get_fresh(proxy, f"/unscraped/{i}") == 200
    assert len(primary.wait_for_requests(40)) == 40
    time.sleep(6.0)  # one heartbeat (5 s), and no scrape
    for pid in workers:
        os.kill(pid, signal.SIGKILL)
    assert wait_until(lambda: not any(alive(pid) for pid in workers), 5)
    assert wait_until(lambda: len(set(workers_of(proxy, timeout=0)) - set(workers)) == 2, 10), \
        proxy.describe()
    assert proxy.metric("fastmirror_downstream_requests_total") == 40, proxy.describe()
    assert proxy.metric("fastmirror_responses_total", role="primary", code="2xx") == 40


def access_lines(log_path) -> list[dict]:
    try:
        return [orjson.loads(line) for line in log_path.read_bytes().splitlines() if line.strip()]
    except FileNotFoundError:
        return []


def served_by(log_path, pid: int) -> int:
    """Requests the access log says process pid served."""
    return sum(1 for rec in access_lines(log_path) if rec.get("pid") == pid)


class KeepAliveClient:
    """One client on one keep-alive connection, reconnecting as a real client does:
    when the response says ``Connection: close``, or the idle connection was closed."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.sock: socket.socket | None = None
        self.connects = 0
        self.lost = 0  # requests sent that got no response (the client would retry)
        self.connect()

    def connect(self) -> None:
        if self.sock is not None:
            self.sock.close()
        self.sock = socket.create_connection(("127.0.0.1", self.port), timeout=5)
        self.connects += 1

    @property
    def local_port(self) -> int:
        assert self.sock is not None
        return self.sock.getsockname()[1]

    def _peer_closed(self) -> bool:
        assert self.sock is not None
        self.sock.setblocking(False)
        try:
            return self.sock.recv(1, socket.MSG_PEEK) == b""
        except BlockingIOError:
            return False
        except OSError:
            return True
        finally:
            self.sock.settimeout(5)

    def get(self, path: str) -> int:
        if self.sock is None or self._peer_closed():
            self.connect()
        assert self.sock is not None
        try:
            self.sock.sendall(f"GET {path} HTTP/1.1\r\nHost: fm.test\r\n\r\n".encode())
            resp = read_response(self.sock)
        except (ConnectionError, TimeoutError, OSError):
            self.lost += 1
            self.sock.close()
            self.sock = None
            return 0
        if resp.closed or (resp.header("connection") or "").lower() == "close":
            self.sock.close()
            self.sock = None
        return resp.status

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()


def test_restarted_worker_gets_keep_alive_clients_back(run_proxy, primary, tmp_path):
    log_path = tmp_path / "access.log"
    proxy = run_proxy(*WORKERS, "--access-log", str(log_path), shadow=None)
    workers = workers_of(proxy)
    assert len(workers) == 2, proxy.describe()
    victim = max(workers)
    survivor = min(workers)
    os.kill(victim, signal.SIGKILL)
    assert wait_until(lambda: not alive(victim), 5)

    # While the victim is down (its restart takes a few hundred ms), the kernel gives
    # every new connection to the survivor: these keep-alive clients are pinned there
    # (connected at once; their first requests follow).
    n_clients = 10
    clients = [KeepAliveClient(proxy.port) for _ in range(n_clients)]
    for i, client in enumerate(clients):
        assert client.get(f"/pin/{i}") == 200
    ports = {c.local_port for c in clients if c.sock is not None}

    def pinned_pids() -> list:
        by_port = {int(rec["client"].rsplit(":", 1)[1]): rec.get("pid")
                   for rec in access_lines(log_path) if rec["path"].startswith("/pin/")}
        return [by_port.get(port) for port in ports]
    assert wait_until(lambda: pinned_pids() == [survivor] * n_clients, 5), (pinned_pids(), survivor)

    stop = threading.Event()
    statuses: list[int] = []

    def keep_asking(i: int) -> None:
        client, n = clients[i], 0
        while not stop.is_set():
            statuses.append(client.get(f"/c{i}/{n}"))
            n += 1
            time.sleep(0.03)

    threads = [threading.Thread(target=keep_asking, args=(i,)) for i in range(n_clients)]
    for t in threads:
        t.start()
    try:
        def restarted() -> int | None:
            now = set(workers_of(proxy, timeout=0)) - {survivor}
            return next(iter(now)) if len(now) == 1 and victim not in now else None
        assert wait_until(lambda: restarted() is not None, 10), proxy.describe()
        newcomer = restarted()
        assert newcomer is not None

        def shares() -> str:
            return f"survivor {served_by(log_path, survivor)}, newcomer {served_by(log_path, newcomer)}"
        # Rebalancing moves some of the pinned clients over, within a few rounds ...
        assert wait_until(lambda: served_by(log_path, newcomer) > 0, 15), (shares(), proxy.describe())
        first = served_by(log_path, newcomer)
        # ... and they stay there: the newcomer keeps serving them.
        assert wait_until(lambda: served_by(log_path, newcomer) > first + 10, 10), \
            (shares(), proxy.describe())
    finally:
        stop.set()
        for t in threads:
            t.join(10)
        for client in clients:
            client.close()
    assert "rebalancing: worker" in proxy.stderr_text()
    assert served_by(log_path, survivor) > n_clients  # the survivor kept serving too
    # Gentle: the clients were told (or found the connection closed while idle), and
    # lost next to nothing; every answer was the primary's.
    lost = sum(c.lost for c in clients)
    assert lost <= 2, (lost, shares())
    assert set(statuses) <= {200, 0}, set(statuses)
    assert statuses.count(0) == lost


def test_broken_config_on_sighup_is_one_error_line(run_proxy, primary):
    proxy = run_proxy(*WORKERS, shadow=None, config={"mirror_percent": 0})
    assert len(workers_of(proxy)) == 2, proxy.describe()
    proxy.config_path.write_text("primary = [not toml\n")
    proxy.signal(signal.SIGHUP)

    def errors() -> list[str]:
        return [line for line in proxy.stderr_text().splitlines() if "config not reloaded" in line]
    assert wait_until(lambda: errors() != [], 5), proxy.describe()
    time.sleep(1.0)  # workers that would repeat it have had time to
    assert len(errors()) == 1, errors()
    assert proxy.proc.poll() is None
    for i in range(10):
        assert get_fresh(proxy, f"/still/{i}") == 200
    # A good file afterwards reloads every worker as before.
    write_toml(proxy.config_path, {"listen": proxy.address, "admin": f"127.0.0.1:{proxy.admin_port}",
                                   "primary": primary.address, "mirror_percent": 0, "workers": 2})
    proxy.signal(signal.SIGHUP)
    assert wait_until(lambda: proxy.stderr_text().count("SIGHUP: config reloaded") == 2, 5), \
        proxy.describe()
