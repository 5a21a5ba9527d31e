"""resolve: a shadow or the secondary that is the primary under another name is refused."""

from __future__ import annotations

import ipaddress
import socket
import threading
import time

import pytest

from fastmirror import resolve
from fastmirror.config import Address, ConfigError, load_config
from fastmirror.resolve import check_aliases, resolve_all


def flag(key: str) -> tuple[str, str]:
    return "--" + key.replace("_", "-"), ""


def table(**names: list[str]):
    """A resolver from name -> IPs, IP literals to themselves; unknown names: nothing."""

    def ips(host: str) -> list[str]:
        try:
            return [str(ipaddress.ip_address(host))]
        except ValueError:
            return names.get(host, [])

    def fake(addresses: list[Address]):
        return {a: frozenset((ipaddress.ip_address(ip), a.port) for ip in ips(a.host)) for a in addresses}

    return fake


FAKE = table(localhost=["127.0.0.1", "::1"], backend=["10.0.0.5"], v2=["10.0.0.6"], alias=["10.0.0.5", "10.0.0.9"])


@pytest.mark.parametrize(
    ("overrides", "message"),
    [({"listen": "127.0.0.1:9999", "primary": "localhost:8080", "shadow": ["127.0.0.1:8080"]},
      "--shadow: 127.0.0.1:8080 is the primary localhost:8080 under another name "
      "(both resolve to 127.0.0.1:8080); it would get every request twice"),
     ({"primary": "backend:80", "shadow": ["v2:80", "alias:80"]},
      "--shadow: alias:80 is the primary backend:80 under another name (both resolve to 10.0.0.5:80)"),
     ({"primary": "[::1]:80", "shadow": ["localhost:80"]},
      "--shadow: localhost:80 is the primary [::1]:80 under another name (both resolve to [::1]:80)"),
     ({"primary": "backend:80", "secondary": "alias:80", "diff.enabled": True},
      "--secondary: alias:80 is the primary backend:80 under another name"),
     ({"primary": "backend:80", "shadow": ["v2:80"], "secondary": "10.0.0.6:80", "diff.enabled": True},
      "--secondary: 10.0.0.6:80 is the shadow v2:80 under another name")],
)  # fmt: skip
def test_aliases_refused(overrides, message):
    config = load_config(None, overrides)
    with pytest.raises(ConfigError) as info:
        check_aliases(config, flag, FAKE)
    assert str(info.value).startswith(message)


@pytest.mark.parametrize(
    "overrides",
    [{"primary": "localhost:9000", "shadow": ["127.0.0.1:9001"]},  # same host, other port
     {"primary": "backend:80", "shadow": ["v2:80"]},
     {"primary": "backend:80", "shadow": ["unresolved:80"]},  # DNS may not be up: not an error
     {"primary": "unresolved:80", "shadow": ["also-unresolved:80"]},
     {"primary": "backend:80"}],
)  # fmt: skip
def test_distinct_or_unresolved_pass(overrides):
    check_aliases(load_config(None, overrides), flag, FAKE)


def test_primary_that_is_the_listen_address_by_another_name():
    config = load_config(None, {"primary": "localhost:8080"})  # listen: 127.0.0.1:8080
    with pytest.raises(ConfigError, match=r"^--primary: localhost:8080 is the listen address 127\.0\.0\.1:8080 "
                       r"under another name \(both resolve to 127\.0\.0\.1:8080\); a loop$"):
        check_aliases(config, flag, FAKE)


def test_file_key_named_with_its_file():
    config = load_config(None, {"listen": "127.0.0.1:9999", "primary": "localhost:8080",
                                "shadow": ["127.0.0.1:8080"]})
    with pytest.raises(ConfigError, match=r"^shadow: .* twice \(in f\.toml\)$"):
        check_aliases(config, lambda key: (key, " (in f.toml)"), FAKE)


def test_real_resolver_localhost_is_loopback():
    localhost, loopback = Address("localhost", 8080), Address("127.0.0.1", 8080)
    found = resolve_all([localhost, loopback])
    assert (ipaddress.ip_address("127.0.0.1"), 8080) in found[loopback]
    if not found[localhost]:
        pytest.skip("localhost does not resolve here")
    config = load_config(None, {"listen": "127.0.0.1:9999", "primary": "localhost:8080",
                                "shadow": ["127.0.0.1:8080"]})
    with pytest.raises(ConfigError, match="under another name"):
        check_aliases(config, flag)


def test_a_hanging_lookup_counts_as_unresolved(monkeypatch):
    release = threading.Event()
    real = socket.getaddrinfo

    def slow(host, port, **kwargs):
        if host == "slow":
            release.wait(10)
            return []
        return real(host, port, **kwargs)

    monkeypatch.setattr(resolve.socket, "getaddrinfo", slow)
    started = time.monotonic()
    try:
        found = resolve_all([Address("slow", 80), Address("127.0.0.1", 80)], timeout=0.3)
    finally:
        release.set()
    assert time.monotonic() - started < 2
    assert found[Address("slow", 80)] == frozenset()
    assert found[Address("127.0.0.1", 80)] == {(ipaddress.ip_address("127.0.0.1"), 80)}


@pytest.mark.parametrize(
    ("overrides", "message"),
    [({"listen": "0.0.0.0:8080", "primary": "127.0.0.1:8080"},
      "--primary: 127.0.0.1:8080 is the listen address 0.0.0.0:8080 under another name "
      "(0.0.0.0:8080 listens on 127.0.0.1:8080 too); a loop"),
     ({"listen": "0.0.0.0:8080", "primary": "localhost:8080"},
      "--primary: localhost:8080 is the listen address 0.0.0.0:8080 under another name"),
     ({"listen": "[::]:8080", "primary": "[::1]:8080"},
      "--primary: [::1]:8080 is the listen address [::]:8080 under another name "
      "([::]:8080 listens on [::1]:8080 too); a loop"),
     ({"listen": "0.0.0.0:8080", "primary": "backend:80", "shadow": ["127.0.0.1:8080"]},
      "--shadow: 127.0.0.1:8080 is the listen address 0.0.0.0:8080 under another name "
      "(0.0.0.0:8080 listens on 127.0.0.1:8080 too); a loop: each copy would come back"),
     ({"listen": "127.0.0.1:8080", "primary": "backend:80", "shadow": ["localhost:8080"]},
      "--shadow: localhost:8080 is the listen address 127.0.0.1:8080 under another name"),
     ({"listen": "0.0.0.0:8080", "primary": "backend:80", "secondary": "127.0.0.1:8080",
       "diff.enabled": True},
      "--secondary: 127.0.0.1:8080 is the listen address 0.0.0.0:8080 under another name")],
)  # fmt: skip
def test_upstream_that_is_the_listen_address(overrides, message):
    """A wildcard listen address is every local address on its port (loopback is local)."""
    if ":" in overrides["listen"] and not socket.has_ipv6:
        pytest.skip("no IPv6")
    with pytest.raises(ConfigError) as info:
        check_aliases(load_config(None, overrides), flag, FAKE)
    assert str(info.value).startswith(message)


@pytest.mark.parametrize(
    "overrides",
    [{"listen": "0.0.0.0:8080", "primary": "127.0.0.1:8081"},  # another port
     {"listen": "0.0.0.0:8080", "primary": "backend:8080"},    # another host (10.0.0.5 is not ours)
     {"listen": "127.0.0.2:8080", "primary": "127.0.0.1:8080"}],  # another local address, not a wildcard
)  # fmt: skip
def test_listen_address_on_another_host_or_port_passes(overrides):
    check_aliases(load_config(None, overrides), flag, FAKE)


def test_shadow_that_is_the_listen_address_as_written():
    with pytest.raises(ConfigError, match=r"^--shadow: must not include the listen address \(a loop"):
        load_config(None, {"listen": "127.0.0.1:8080", "primary": "backend:80",
                           "shadow": ["127.0.0.1:8080"]})
