"""Start-up check, after config: no shadow (nor the secondary) is the primary under another name.

cli ─▶ config ─▶ resolve ─▶ workers.  config.py compares addresses as written and
stays free of sockets; this module resolves the names (socket.getaddrinfo) and
compares the resolved address sets, so `localhost:8080` and `127.0.0.1:8080` are one
upstream.  A wildcard listen address (`0.0.0.0:8080`, `[::]:8080`) is every local address
on its port: an upstream on that port at an address this host can bind is the proxy itself.  A name that does not resolve, or not within RESOLVE_TIMEOUT, is not an
error here: DNS may not be up when check-config or the proxy starts, and the proxy
resolves again when it connects.  It only reads a Config: it changes nothing.
"""

from __future__ import annotations

import ipaddress
import socket
import threading
import time
from collections.abc import Callable, Iterable

from fastmirror.config import Address, Config, ConfigError

# All names are resolved at once, each in its own thread, and waited for together for at
# most this long: a resolver that is down costs start-up this, not 5 s x attempts per name.
RESOLVE_TIMEOUT = 2.0

Endpoint = tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int]
Resolved = dict[Address, frozenset[Endpoint]]


def _endpoints(address: Address) -> frozenset[Endpoint]:
    """The numeric (ip, port) pairs that `address` names; empty if it does not resolve."""
    try:
        infos = socket.getaddrinfo(address.host, address.port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        return frozenset()
    found: set[Endpoint] = set()
    for _family, _type, _proto, _name, sockaddr in infos:
        try:
            found.add((ipaddress.ip_address(str(sockaddr[0])), int(sockaddr[1])))
        except ValueError:  # not an IP literal (an AF_UNIX oddity): cannot be compared
            continue
    return frozenset(found)


def resolve_all(addresses: Iterable[Address], timeout: float = RESOLVE_TIMEOUT) -> Resolved:
    """Each address's endpoints; those not resolved within `timeout` map to an empty set.

    Daemon threads, not an executor: a lookup that hangs must not hold up the exit.
    """
    results: dict[Address, frozenset[Endpoint]] = {}
    threads = []
    for address in dict.fromkeys(addresses):

        def lookup(a: Address = address) -> None:
            results[a] = _endpoints(a)

        thread = threading.Thread(target=lookup, name=f"resolve {address}", daemon=True)
        thread.start()
        threads.append((address, thread))
    deadline = time.monotonic() + timeout
    for _address, thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    return {a: results.get(a, frozenset()) for a, _thread in threads}


_TWICE = "it would get every request twice"
_LOOP_COPY = "a loop: each copy would come back and be mirrored again"


def _pairs(config: Config) -> list[tuple[str, Address, str, Address, str]]:
    """(key, address, what it must not be, that address, why): the pairs that must differ."""
    shadows = [s.address for s in config.shadow]
    pairs = [("shadow", s, "the primary", config.primary, _TWICE) for s in shadows]
    if config.secondary is not None:
        pairs.append(("secondary", config.secondary, "the primary", config.primary,
                      "the secondary is a second instance of the primary's version"))  # fmt: skip
        pairs += [("secondary", config.secondary, "the shadow", s, _TWICE) for s in shadows]
    # After the shadows, so a shadow named like the primary is reported as that.
    pairs.append(("primary", config.primary, "the listen address", config.listen, "a loop"))
    pairs += [("shadow", s, "the listen address", config.listen, _LOOP_COPY) for s in shadows]
    if config.secondary is not None:
        pairs.append(("secondary", config.secondary, "the listen address", config.listen, "a loop"))
    return [p for p in pairs if p[1] != p[3]]  # equal as written: config.py has said so already


def _is_wildcard(address: Address) -> bool:
    try:
        return ipaddress.ip_address(address.host).is_unspecified
    except ValueError:
        return False


def _is_local(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """Whether this host owns ip: it can bind it (port 0, so nothing is taken)."""
    family = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.bind((str(ip), 0))
    except OSError:
        return False
    return True


def _listening(endpoints: frozenset[Endpoint], listen: Address) -> frozenset[Endpoint]:
    """Of endpoints, those a wildcard listen address takes: its port, a local address."""
    return frozenset(e for e in endpoints if e[1] == listen.port and _is_local(e[0]))


def check_aliases(config: Config, label: Callable[[str], tuple[str, str]],
                  resolve: Callable[[list[Address]], Resolved] = resolve_all) -> None:
    """Refuse a shadow (or the secondary) that resolves to where the primary (or a shadow) is,
    and an upstream that resolves to the listen address (a loop).

    Args:
        label: key -> how to name it in the error and where it was given: ("--shadow", "")
            or ("shadow", " (in FILE)").
        resolve: addresses -> endpoints; a test passes a table.

    Raises:
        ConfigError: one line naming both names and the endpoint they share.
    """
    pairs = _pairs(config)
    if not pairs:
        return  # everything equal as written: config.py has refused it already
    endpoints = resolve([name for pair in pairs for name in (pair[1], pair[3])])
    for key, address, what, other, why in pairs:
        mine = endpoints.get(address, frozenset())
        wildcard = other == config.listen and _is_wildcard(other)
        shared = _listening(mine, other) if wildcard else mine & endpoints.get(other, frozenset())
        if shared:
            ip, port = min(shared, key=lambda e: (e[0].version, e[0], e[1]))
            at = f"[{ip}]:{port}" if ip.version == 6 else f"{ip}:{port}"
            how = f"{other} listens on {at} too" if wildcard else f"both resolve to {at}"
            name, where = label(key)
            raise ConfigError(f"{name}: {address} is {what} {other} under another name ({how}); {why}{where}")
