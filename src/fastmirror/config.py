"""Configuration stage: the TOML file and the command-line flags, merged into one frozen Config.

cli ─▶ config ─▶ workers.  This module parses and validates only: it opens no
socket, starts no loop and applies nothing.  Every bad key or value raises
ConfigError, whose text is one line naming the key (or flag) and the problem,
so the CLI can print it and exit 2 without a traceback.

Flow of load_config(): read the file (top-level keys are the CONTRACT flag names
with underscores), then lay the flags the user actually gave on top, then run
every given value through its row of the _FIELDS table (convert, range check),
then the few checks that span two fields.  Defaults live on the dataclass.

The `[diff]` table is one level down: its keys are DiffConfig's fields, each with
its row in _DIFF_FIELDS, and each flag (`--diff-ignore`, ...) overrides one key
(override keys `diff.<key>`), so a file's `[diff] ignore = [...]` survives a
`--diff` on the command line.
"""

from __future__ import annotations

import dataclasses
import base64
import binascii
import datetime
import difflib
import ipaddress
import json
import math
import os
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

from fastmirror.paths import route_path


class ConfigError(ValueError):
    """A bad config key or value. str() is one line naming the key or flag and what is wrong."""

    def __init__(self, message: str) -> None:
        # One line is part of the contract (the CLI prints it as is), even when a
        # value carries a newline of its own.
        super().__init__(" ".join(message.splitlines()))


@dataclass(frozen=True, slots=True)
class Address:
    """A TCP endpoint, and for an upstream whether it speaks TLS (`https://`).

    str() is `host:port`, IPv6 literals bracketed (`[::1]:80`), and `https://host:port`
    for TLS: the name metrics and logs use, so a TLS and a plain upstream never share one.
    """

    host: str
    port: int
    tls: bool = False

    def __str__(self) -> str:
        endpoint = f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"
        return "https://" + endpoint if self.tls else endpoint

    @property
    def endpoint(self) -> tuple[str, int]:
        """(host, port): what two addresses must not share, whatever the scheme."""
        return (self.host, self.port)


class _Invalid(Exception):
    """Raised by the converters below; load_config turns it into a ConfigError naming the key."""

    def __init__(self, problem: str | None = None, text: str | None = None) -> None:
        super().__init__(problem)
        self.problem = problem
        self.text = text  # the address as written, when _advice words the problem per key


# Problems of an address whose advice depends on the key (see _advice).
_NO_HOST = "must name the host"
_ONE_ADDRESS = "takes one address"
_LISTENING = frozenset({"listen", "admin"})  # addresses fastmirror listens on, not upstreams


def _advice(e: _Invalid, key: str, from_flag: bool) -> str | None:
    """e's problem in words for `key`: what a listen address, an upstream, the --shadow flag
    or the file's shadow list should say instead."""
    text = e.text
    if text is None:
        return e.problem
    if e.problem == _NO_HOST and key in _LISTENING:
        return (f'{_NO_HOST}, e.g. "0.0.0.0{text}" for every IPv4 address, "[::]{text}" for every '
                f'IPv6 one, "127.0.0.1{text}" for this machine only')  # fmt: skip
    if e.problem == _NO_HOST:
        return f'{_NO_HOST} of the upstream, e.g. "127.0.0.1{text}" or "backend.internal{text}"'
    parts = [_show(p.strip()) for p in text.split(",") if p.strip()]
    if key == "shadow" and from_flag:
        return f"{_ONE_ADDRESS} per flag; repeat the flag for several: " + " ".join(
            f"--shadow {p.strip(chr(34))}" for p in parts
        )
    if key == "shadow":
        return f"{_ONE_ADDRESS} per string; several go in a list: shadow = [{', '.join(parts)}]"
    return f"{_ONE_ADDRESS}, not a list"


def _show(value: object) -> str:
    """A value as the user wrote it, JSON-quoted so empty or odd strings stay visible."""
    return json.dumps(value, default=str, ensure_ascii=False)


# Host names and IPv4 literals; IPv6 literals must come bracketed.
_HOST = re.compile(r"[A-Za-z0-9_]([A-Za-z0-9_.-]*)")


def _address(value: object) -> Address:
    if isinstance(value, Address):
        return value
    if not isinstance(value, str):
        raise _Invalid('must be a "HOST:PORT" string')
    text = value.strip()
    if "," in text:  # `--shadow a:1,b:2`: a list where one address goes
        raise _Invalid(_ONE_ADDRESS, text)
    if "://" in text:
        raise _Invalid("must be HOST:PORT, not a URL")
    if text.startswith("["):
        host, sep, port = text[1:].partition("]:")
        if not sep:
            raise _Invalid('must be [IPV6]:PORT, e.g. "[::1]:8080"')
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            plain = f'; brackets are for IPv6 only: "{host}:{port}"' if _HOST.fullmatch(host) else ""
            raise _Invalid(f"{_show(host)} is not an IPv6 address{plain}") from None
    else:
        host, sep, port = text.rpartition(":")
        if not sep:
            raise _Invalid(f"must be HOST:PORT, e.g. {_show(_example(text))}")
        if not host:
            raise _Invalid(_NO_HOST, text)
        if ":" in host:
            raise _Invalid(_brackets(host, port))
        if not _HOST.fullmatch(host):
            raise _Invalid(f'{_show(host)} is not a host name or IP address (letters, digits, ".", "-", "_")')
    if not (port.isascii() and port.isdigit() and 1 <= int(port) <= 65535):
        raise _Invalid(f"must have a port from 1 to 65535, e.g. {_show(str(Address(host, 8080)))}")
    return Address(host, int(port))


def _example(text: str) -> str:
    """What `text` (no colon at all) was likely meant as: a port alone, or a host alone."""
    if text.isascii() and text.isdigit():
        return f"127.0.0.1:{text}"
    return f"{text}:8080" if _HOST.fullmatch(text) else "127.0.0.1:8080"


def _brackets(host: str, port: str) -> str:
    try:
        ipaddress.IPv6Address(host)
    except ValueError:
        return 'has more than one ":"; an IPv6 address goes in brackets, e.g. "[::1]:8080"'
    return f"needs brackets around an IPv6 address: {_show(f'[{host}]:{port}')}"


# Upstream URLs: scheme, then the authority; nothing after it but an optional "/".
_URL = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*)://(?P<rest>.*)", re.S)
_DEFAULT_PORTS = {"http": 80, "https": 443}


def _upstream(value: object) -> Address:
    """An upstream: `HOST:PORT`, `http://HOST[:PORT]` or `https://HOST[:PORT]` (TLS)."""
    if isinstance(value, Address) or not isinstance(value, str) or "://" not in value:
        return _address(value)
    m = _URL.fullmatch(value.strip())
    scheme = m.group("scheme").lower() if m else ""
    if m is None or scheme not in _DEFAULT_PORTS:
        raise _Invalid("must be HOST:PORT, http://HOST[:PORT] or https://HOST[:PORT]")
    rest = m.group("rest")
    authority, slash, path = rest.partition("/")
    if path or any(c in authority for c in "?#"):
        raise _Invalid("must not have a path or query (each request keeps its own)")
    if "@" in authority:
        raise _Invalid("must not carry credentials in the URL")
    if not authority:
        raise _Invalid("must name the upstream's host")
    bare = authority.rsplit("]", 1)[-1] if authority.startswith("[") else authority
    if ":" not in bare:
        authority += f":{_DEFAULT_PORTS[scheme]}"
    address = _address(authority)
    return Address(address.host, address.port, tls=scheme == "https")


def _upstreams(value: object) -> tuple[Address, ...]:
    items = [value] if isinstance(value, (str, Address)) else value
    if not isinstance(items, (list, tuple)):
        raise _Invalid()
    result: list[Address] = []
    for item in items:
        address = _upstream(item)
        if any(a.endpoint == address.endpoint for a in result):
            raise _Invalid(f"lists {address} twice")
        result.append(address)
    return tuple(result)


def _optional_upstream(value: object) -> Address | None:
    return None if value is None else _upstream(value)


def parse_address(text: str, key: str) -> Address:
    """Parse `host:port` or `[v6]:port`; the host is required and the port is 1..65535.

    Raises:
        ConfigError: naming `key`, e.g. `listen: must have a port from 1 to 65535, got "h:0"`.
    """
    try:
        return _address(text)
    except _Invalid as e:
        problem = _advice(e, key.removeprefix("--").replace("-", "_"), key.startswith("--"))
        raise ConfigError(f"{key}: {problem}, got {_show(text)}") from None


# --- converters: raw TOML (or flag) value -> typed value, or _Invalid ---------------------




def _admin(value: object) -> Address | None:
    if value is None or (isinstance(value, str) and value.strip().lower() == "off"):
        return None
    return _address(value)


def _real(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _Invalid()
    if not math.isfinite(value):
        raise _Invalid()
    return float(value)


def _integer(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _Invalid()
    return value


# Go's time.ParseDuration units (Envoy and Istio take the same strings), in seconds.
_DURATION_UNITS = {
    "ns": Fraction(1, 10**9), "us": Fraction(1, 10**6), "\u00b5s": Fraction(1, 10**6),
    "\u03bcs": Fraction(1, 10**6), "ms": Fraction(1, 1000), "s": Fraction(1), "m": Fraction(60),
    "h": Fraction(3600),
}  # fmt: skip
# One or more NUMBER UNIT terms, as Go allows (`1m30s`, `1.5h`); no sign, since no
# duration here may be negative, and a bare number in a string is not a duration.
_DURATION_TERM = re.compile(r"([0-9]+(?:\.[0-9]*)?|\.[0-9]+)(ns|us|\u00b5s|\u03bcs|ms|s|m|h)")
_DURATION = re.compile(f"(?:{_DURATION_TERM.pattern})+")


def _duration(value: object) -> float:
    """Seconds: a number, or a Go/Envoy duration string such as `500ms`, `5s`, `2m`, `1m30s`."""
    if not isinstance(value, str):
        return _real(value)
    text = value.strip()
    if not _DURATION.fullmatch(text):
        raise _Invalid()
    total = sum(Fraction(n) * _DURATION_UNITS[unit] for n, unit in _DURATION_TERM.findall(text))
    try:
        return float(total)
    except OverflowError:  # "1" followed by 400 zeros and "h": no float holds it
        raise _Invalid() from None


def _number_or_text(text: str) -> object:
    """A flag's text as a number if it is one (`5`, `0.5`), else as is for the converter (`5s`)."""
    try:
        return _number_text(text)
    except _Invalid:
        return text


def percent_number(value: str | float) -> float:
    """`10`, `2.5` or `"10%"` (Envoy's and Istio's spelling) as a float; the range is the caller's.

    Shared with the admin endpoint's PUT /mirror?percent=P.

    Raises:
        ValueError: not a number, with or without one trailing `%`.
    """
    if isinstance(value, str):
        text = value.strip()
        return float(text[:-1] if text.endswith("%") else text)
    return float(value)


def _percent(value: object) -> float:
    # In the file a percentage is a number or a string ending in "%"; "10" in quotes is
    # refused as any quoted number is.  Flag text reaches here through _percent_text.
    if isinstance(value, str):
        if not value.strip().endswith("%"):
            raise _Invalid()
        try:
            value = percent_number(value)
        except ValueError:
            raise _Invalid() from None
    return _real(value)


def _percent_text(text: str) -> object:
    return text if text.strip().endswith("%") else _number_text(text)


def _boolean(value: object) -> bool:
    if not isinstance(value, bool):
        raise _Invalid()
    return value


def _number_text(text: str) -> object:
    """A flag's text as a number; what the number may be is the field's converter's business."""
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        raise _Invalid() from None


# Bare k/m/g are powers of 1024, as in nginx's `client_max_body_size 1m`; the SI
# spellings (kB, MB, GB) are powers of 1000 and the IEC ones (KiB, MiB, GiB) of 1024.
_SIZE_UNITS = {
    "": 1, "b": 1,
    "k": 1 << 10, "kib": 1 << 10, "kb": 10**3,
    "m": 1 << 20, "mib": 1 << 20, "mb": 10**6,
    "g": 1 << 30, "gib": 1 << 30, "gb": 10**9,
}  # fmt: skip
_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*")


def _size(value: object) -> int:
    if isinstance(value, str):
        match = _SIZE.fullmatch(value)
        unit = _SIZE_UNITS.get(match.group(2).lower()) if match else None
        if match is None or unit is None:
            raise _Invalid()
        return int(Fraction(match.group(1)) * unit)
    return _integer(value)


# RFC 9110 5.6.2 token: what a method or a header field name may be made of.
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


def _methods(value: object) -> tuple[str, ...]:
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)) or not all(isinstance(i, str) for i in items):
        raise _Invalid()
    names: list[str] = []
    for item in items:
        name = item.strip().upper()
        if not name and isinstance(value, str):
            continue  # "GET,HEAD," from a shell script
        if not _TOKEN.fullmatch(name):
            raise _Invalid(f"{_show(item)} is not a method name")
        if name not in names:
            names.append(name)
    if not names:
        raise _Invalid("must list at least one method (mirror_percent = 0 turns mirroring off)")
    if "ALL" in names and len(names) > 1:
        raise _Invalid('must be "ALL" alone or a list of methods')
    return tuple(names)


def _access_log(value: object) -> str | None:
    if value is None or value == "off":  # nginx: `access_log off;`
        return None
    if not isinstance(value, str) or not value or "\0" in value:
        raise _Invalid()
    return value


LOG_LEVELS = ("debug", "info", "warning", "error")


def _log_level(value: object) -> str:
    if not isinstance(value, str) or value.strip().lower() not in LOG_LEVELS:
        raise _Invalid()
    return value.strip().lower()


def _header_name(value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not _TOKEN.fullmatch(value.strip()):
        raise _Invalid()
    return value.strip().lower()  # field names are case-insensitive; match lower-cased


def _table(value: object) -> dict[str, Any]:
    if isinstance(value, DiffConfig):  # a typed override: Config(diff=DiffConfig(...)) style
        return {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
    if not isinstance(value, dict):
        raise _Invalid()
    return value




def _strings(value: object) -> list[str]:
    """A list (or tuple) of strings, or one string (TOML `ignore = "$.id"`); stripped."""
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)) or not all(isinstance(i, str) for i in items):
        raise _Invalid()
    return [i.strip() for i in items]


def _unique(items: list[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(items))


def _patterns(value: object) -> tuple[str, ...]:
    items = _strings(value)
    for item in items:
        if not item or "\0" in item:
            raise _Invalid("must not contain an empty pattern" if not item else None)
    return _unique(items)


def _diff_rules(key: str) -> Callable[[object], tuple[str, ...]]:
    """_patterns, then the check of the one parser that reads them (fastmirror.diffing.diff), so a
    pattern it would refuse fails here, exit 2, not in a worker at startup."""

    def convert(value: object) -> tuple[str, ...]:
        patterns = _patterns(value)
        from fastmirror.diffing import diff, endpoints  # pure as well; only when patterns are given

        try:
            if key == "templates":
                endpoints.EndpointNamer(templates=patterns)
            elif key == "ignore":
                diff.DiffRules(ignore=patterns)
            else:
                diff.DiffRules(array_as_set=patterns)
        except ValueError as exc:
            raise _Invalid(str(exc)) from None
        return patterns

    return convert


def _header_names(value: object) -> tuple[str, ...]:
    # A flag's "content-type,etag"; an empty flag value means no header is compared.
    items = [i for i in value.split(",") if i.strip()] if isinstance(value, str) else value
    names = _strings(items)
    for name in names:
        if not _TOKEN.fullmatch(name):
            raise _Invalid(f"{_show(name)} is not a header name")
    return _unique([n.lower() for n in names])


def _diff_log(value: object) -> str | None:
    if value is None or value == "off":
        return None
    if value == "-":
        raise _Invalid("must be a file path (it is rotated, so not stdout)")
    if not isinstance(value, str) or not value or "\0" in value:
        raise _Invalid()
    return value


# --- TLS listener files (issue 9): readable, and PEM of the right kind --------------------
# Only what can be told without a TLS library (this module imports no ssl): whether the
# key matches the certificate is fastmirror.proxy.tls.server_context's check.
_PEM_BLOCK = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----\s+([A-Za-z0-9+/=\s]+?)-----END \1-----")
_KEY_LABELS = (b"PRIVATE KEY", b"RSA PRIVATE KEY", b"EC PRIVATE KEY")


def _pem_labels(value: object) -> list[bytes]:
    """The PEM block labels in the file at value (CERTIFICATE, PRIVATE KEY, ...)."""
    if not isinstance(value, str) or not value or "\0" in value:
        raise _Invalid()
    try:
        with open(value, "rb") as f:
            data = f.read(1 << 20)  # a chain of certificates is a few KiB
    except OSError as e:
        raise _Invalid(f"cannot read the file: {e.strerror or e}") from None
    labels = []
    for match in _PEM_BLOCK.finditer(data):
        try:
            base64.b64decode(b"".join(match.group(2).split()), validate=True)
        except binascii.Error:
            continue  # armour around something that is not base64: not PEM
        labels.append(match.group(1))
    return labels


def _pem_certificates(value: object) -> str | None:
    if value is None:
        return None
    if b"CERTIFICATE" not in _pem_labels(value):
        raise _Invalid("is not a PEM certificate file (no -----BEGIN CERTIFICATE----- block)")
    return str(value)


def _pem_key(value: object) -> str | None:
    if value is None:
        return None
    labels = _pem_labels(value)
    if b"ENCRYPTED PRIVATE KEY" in labels:
        raise _Invalid("is an encrypted key; fastmirror takes no passphrase")
    if not any(label in _KEY_LABELS for label in labels):
        raise _Invalid("is not a PEM private key file (no -----BEGIN PRIVATE KEY----- block)")
    return str(value)


# --- Shadows as tables, the shadow copy's header edits, and routes (issue 10) --------------
# A [[shadow]] table names a shadow and carries what its copies get; [[route]] tables pick,
# per path prefix (and method), the mirror settings and which shadows get copies.

# Header names a shadow copy's edit may not touch: they frame the request or route it
# (an edit would desynchronise the copy on the shadow's connection), or are the markers
# the shadow relies on. Compared lower-cased with "_" read as "-", as CGI back ends do.
_UNEDITABLE = frozenset({
    "content-length", "transfer-encoding", "host", "connection", "keep-alive",
    "proxy-connection", "te", "trailer", "upgrade", "x-fastmirror-shadow", "x-fastmirror-id",
})  # fmt: skip
_FIELD_VALUE = re.compile(r"[\t\x20-\x7e\x80-\U0010ffff]*")  # no CR, LF, NUL, other controls
_ROUTE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")  # goes in ?route=NAME unescaped


def _editable_name(value: object) -> str:
    if not isinstance(value, str) or not _TOKEN.fullmatch(value.strip()):
        raise _Invalid(f"{_show(value)} is not a header name")
    name = value.strip().lower()
    if name.replace("_", "-") in _UNEDITABLE:
        raise _Invalid(f"{name} cannot be edited on the copy (it frames or marks the request)")
    return name


def _set_headers(value: object) -> tuple[tuple[str, str], ...]:
    """{"x-env": "shadow"} (TOML), or ["x-env: shadow", ...] (the repeatable flag)."""
    if isinstance(value, str):
        value = [value]
    if isinstance(value, (list, tuple)):
        pairs: list[tuple[object, object]] = []
        for item in value:
            if not isinstance(item, str) or ":" not in item:
                raise _Invalid(f"{_show(item)} is not NAME: VALUE")
            before, _, after = item.partition(":")
            pairs.append((before, after))
    elif isinstance(value, dict):
        pairs = list(value.items())
    else:
        raise _Invalid()
    result: dict[str, str] = {}
    for raw, text in pairs:
        key = _editable_name(raw)
        if not isinstance(text, str) or not _FIELD_VALUE.fullmatch(text):
            raise _Invalid(f"the value of {key} must be text without CR, LF or other control bytes")
        if key in result:
            raise _Invalid(f"sets {key} twice")
        result[key] = text.strip(" \t")
    return tuple(result.items())


def _remove_headers(value: object) -> tuple[str, ...]:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)):
        raise _Invalid()
    return _unique([_editable_name(i) for i in items])


def _optional_positive(value: object) -> float | None:
    if value is None:
        return None
    number = _real(value)
    if number <= 0:
        raise _Invalid()
    return number


def _optional_duration(value: object) -> float | None:
    if value is None or (isinstance(value, str) and value.strip().lower() == "off"):
        return None
    seconds = _duration(value)
    if seconds <= 0:
        raise _Invalid()
    return seconds


@dataclass(frozen=True, slots=True)
class Shadow:
    """One shadow: where it is, the name routes give it, and what its copies carry."""

    address: Address
    name: str  # routes name it by this; a plain `shadow = "host:port"` is named str(address)
    set_header: tuple[tuple[str, str], ...] = ()  # (lower-case name, value), after shadow_set_header
    remove_header: tuple[str, ...] = ()  # lower-case names, with shadow_remove_header
    max_rps: float | None = None  # copies a second; None: mirror_max_rps

    def __str__(self) -> str:
        return str(self.address)

    @property
    def plain(self) -> bool:
        """Given as a bare address: check-config prints it as one."""
        return self == Shadow(self.address, str(self.address))


@dataclass(frozen=True, slots=True)
class Route:
    """One [[route]] table; None means "the top-level setting" (as it is at run time)."""

    name: str
    prefix: str = "/"  # matched against the request's normalised path
    methods: tuple[str, ...] | None = None  # match only these; None: any method
    mirror_percent: float | None = None
    mirror_methods: tuple[str, ...] | None = None
    shadow: tuple[str, ...] | None = None  # shadow names; None: every shadow; (): no mirroring
    mirror_key: str | None = None


_SHADOW_KEYS = ("name", "target", "set_header", "remove_header", "max_rps")
_ROUTE_KEYS = ("name", "prefix", "methods", "mirror_percent", "mirror_methods", "shadow", "mirror_key")


def _shadow_list(value: object) -> tuple[Address | dict[str, Any], ...]:
    """`shadow`: addresses (as _upstreams) or [[shadow]] tables, kept raw for _shadows."""
    items = [value] if isinstance(value, (str, Address, dict)) else value
    if not isinstance(items, (list, tuple)):
        raise _Invalid()
    if not any(isinstance(i, dict) for i in items):
        return _upstreams(items)
    return tuple(i if isinstance(i, dict) else _upstream(i) for i in items)


def _table_list(value: object) -> tuple[dict[str, Any], ...]:
    items = [value] if isinstance(value, dict) else value
    if not isinstance(items, (list, tuple)) or not all(isinstance(i, dict) for i in items):
        raise _Invalid()
    return tuple(items)


def _in_table(kind: str, index: int, table: dict[str, Any], keys: tuple[str, ...],
              where: str) -> Callable[[str, _Field], Any]:
    """A converter of one key of the index-th [[kind]] table, whose errors say which table."""
    name = table.get("name")
    label = f"{kind} {name!r}" if isinstance(name, str) and name else f"{kind} #{index + 1}"
    for key in table:
        if key not in keys:
            close = difflib.get_close_matches(key, keys, n=1, cutoff=0.6)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ConfigError(f"{label}: unknown key {key!r}{hint}{where}")

    def get(key: str, row: _Field) -> Any:
        return _convert(row, _Given(table[key], f"{label}: {key}", where, from_flag=False))

    return get


def _shadows(items: tuple[Address | dict[str, Any], ...], where: str) -> tuple[Shadow, ...]:
    shadows: list[Shadow] = []
    for index, item in enumerate(items):
        if isinstance(item, Address):
            shadows.append(Shadow(item, str(item)))
            continue
        get = _in_table("shadow", index, item, _SHADOW_KEYS, where)
        if "target" not in item:
            raise ConfigError(f"shadow #{index + 1}: target is required (target = \"http://host:port\"){where}")
        address = get("target", _FIELDS["primary"])
        name = get("name", _ROUTE_FIELDS["name"]) if "name" in item else str(address)
        shadows.append(Shadow(
            address, name,
            set_header=get("set_header", _FIELDS["shadow_set_header"]) if "set_header" in item else (),
            remove_header=get("remove_header", _FIELDS["shadow_remove_header"]) if "remove_header" in item else (),
            max_rps=get("max_rps", _FIELDS["mirror_max_rps"]) if "max_rps" in item else None,
        ))  # fmt: skip
    for i, shadow in enumerate(shadows):
        for other in shadows[:i]:
            if other.address.endpoint == shadow.address.endpoint:
                raise ConfigError(f"shadow: lists {shadow.address} twice{where}")
            if other.name == shadow.name:
                raise ConfigError(f"shadow: two shadows are named {shadow.name!r}{where}")
    return tuple(shadows)


def _route_name(value: object) -> str:
    if not isinstance(value, str) or not _ROUTE_NAME.fullmatch(value):
        raise _Invalid()
    return value


_PREFIX = re.compile(r"/[\x21\x22\x24-\x3e\x40-\x7e]*")  # visible ASCII, no "?" or "#": a path


def _prefix(value: object) -> str:
    if not isinstance(value, str) or not _PREFIX.fullmatch(value):
        raise _Invalid()
    return value


def _shadow_refs(value: object) -> tuple[str, ...]:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)) or not all(isinstance(i, str) and i.strip() for i in items):
        raise _Invalid()
    return _unique([i.strip() for i in items])


def _routes(tables: tuple[dict[str, Any], ...], shadows: tuple[Shadow, ...],
            where: str) -> tuple[Route, ...]:
    routes: list[Route] = []
    for index, table in enumerate(tables):
        get = _in_table("route", index, table, _ROUTE_KEYS, where)
        if "name" not in table:
            raise ConfigError(f"route #{index + 1}: name is required (name = \"search\"){where}")
        name = get("name", _ROUTE_FIELDS["name"])
        if any(r.name == name for r in routes):
            raise ConfigError(f"route {name!r}: two routes have this name{where}")
        methods = get("methods", _ROUTE_FIELDS["methods"]) if "methods" in table else None
        refs = get("shadow", _ROUTE_FIELDS["shadow"]) if "shadow" in table else None
        routes.append(Route(
            name=name,
            prefix=get("prefix", _ROUTE_FIELDS["prefix"]) if "prefix" in table else "/",
            methods=None if methods == ("ALL",) else methods,
            mirror_percent=get("mirror_percent", _FIELDS["mirror_percent"]) if "mirror_percent" in table else None,
            mirror_methods=get("mirror_methods", _FIELDS["mirror_methods"]) if "mirror_methods" in table else None,
            # a name and an address of one shadow are one shadow: it gets one copy
            shadow=None if refs is None else _unique([_shadow_named(name, ref, shadows, where) for ref in refs]),
            mirror_key=get("mirror_key", _FIELDS["mirror_key"]) if "mirror_key" in table else None,
        ))  # fmt: skip
    return tuple(routes)


def _shadow_named(route: str, ref: str, shadows: tuple[Shadow, ...], where: str) -> str:
    """A route's shadow reference (a name, or an address as written) -> the shadow's name."""
    # A name has no ":" (_ROUTE_NAME) and an address always has one: never both.
    for shadow in shadows:
        if ref == shadow.name:
            return shadow.name
    try:
        address: Address | None = _upstream(ref)
    except _Invalid:
        address = None
    for shadow in shadows:
        if address is not None and address == shadow.address:
            return shadow.name
    known = ", ".join(s.name for s in shadows) or "none: give shadow = [...] at the top level"
    raise ConfigError(f"route {route!r}: shadow {ref!r} is not one of the shadows (known: {known}){where}")


def route_warnings(config: Config) -> list[str]:
    """Routes that can never match: an earlier route takes every request they would
    (prefixes compared as the match reads them: paths.route_path)."""
    found = []
    norm = [route_path(r.prefix.encode()) for r in config.route]
    for j, later in enumerate(config.route):
        for i, earlier in enumerate(config.route[:j]):
            covers_methods = earlier.methods is None or (
                later.methods is not None and set(later.methods) <= set(earlier.methods))
            if norm[j].startswith(norm[i]) and covers_methods:
                found.append(f"route {later.name!r} can never match: route {earlier.name!r} "
                             f"(prefix {earlier.prefix}) comes first and takes its requests")
                break
    return found


def shadow_edits(config: Config, shadow: Shadow | None) -> tuple[tuple[str, ...], tuple[tuple[str, str], ...]]:
    """What a shadow's copies lose and gain: (names removed, (name, value) set).

    The top-level edits apply to every shadow, the shadow's own on top (its value wins
    for a name both set); None: the top level's alone (the secondary's). A set header
    replaces every instance of that name, so its name is removed first too.
    """
    sets = dict(config.shadow_set_header)
    sets.update(shadow.set_header if shadow is not None else ())
    own = shadow.remove_header if shadow is not None else ()
    removed = _unique([*config.shadow_remove_header, *own, *sets])
    return removed, tuple(sets.items())


def _at_least(low: float) -> Callable[[Any], bool]:
    return lambda v: v >= low


def _positive(v: float) -> bool:
    return v > 0


@dataclass(frozen=True, slots=True)
class _Field:
    convert: Callable[[Any], Any]  # raw value -> typed value; raises _Invalid
    check: Callable[[Any], bool] | None = None  # range check on the typed value
    what: str = ""  # "must be {what}": the message for a wrong type or range
    from_text: Callable[[str], object] | None = None  # a flag's string -> raw value first


# What a duration may be written as, for the messages (README: "Value forms").
DURATION_FORMS = '"500ms", "5s", "2m", "1m30s"'
_COUNT = _Field(_integer, _at_least(1), "an integer >= 1", _number_text)
_TIMEOUT = _Field(_duration, _positive, f"a number of seconds > 0 or a duration like {DURATION_FORMS}",
                  _number_or_text)  # fmt: skip

# One row per Config field: how a value is converted and what it may be.
_FIELDS: dict[str, _Field] = {
    "listen": _Field(_address, what="HOST:PORT"),
    "primary": _Field(_upstream, what="HOST:PORT or an http(s):// URL"),
    "shadow": _Field(_shadow_list, what="HOST:PORT, an http(s):// URL, a list of them, or [[shadow]] tables"),
    "mirror_percent": _Field(_percent, lambda p: 0 <= p <= 100, "a number from 0 to 100", _percent_text),
    "mirror_methods": _Field(_methods, what='a list of HTTP methods, or "ALL"'),
    "admin": _Field(_admin, what='HOST:PORT or "off"'),
    "workers": _Field(_integer, _at_least(0), "an integer >= 0 (0 = one per CPU)", _number_text),
    "queue_size": _Field(_integer, _at_least(1), "an integer >= 1", _number_text),
    "shadow_timeout": _TIMEOUT,
    "shadow_concurrency": _Field(_integer, _at_least(1), "an integer >= 1", _number_text),
    "primary_timeout": _TIMEOUT,
    "max_mirror_body": _Field(_size, _at_least(0), 'a size in bytes, e.g. 1048576 or "1MiB"'),
    "shadow_host_suffix": _Field(_boolean, what="true or false"),
    "access_log": _Field(_access_log, what='a file path, "-" for stdout, or "off"'),
    "log_level": _Field(_log_level, what="one of " + ", ".join(LOG_LEVELS)),
    "connect_timeout": _TIMEOUT,
    "drain_timeout": _Field(_duration, _at_least(0),
                            f"a number of seconds >= 0 or a duration like {DURATION_FORMS}", _number_or_text),
    "idle_timeout": _TIMEOUT,
    "header_timeout": _TIMEOUT,
    "max_connections": _COUNT,
    "max_head_size": _Field(_size, _at_least(1024), 'a size >= 1024 bytes, e.g. 65536 or "64KiB"'),
    "mirror_key": _Field(_header_name, what="an HTTP header name"),
    "secondary": _Field(_optional_upstream, what="HOST:PORT or an http(s):// URL"),
    "diff": _Field(_table, what="a table ([diff])"),
    # TLS to https:// upstreams.
    "upstream_ca": _Field(_pem_certificates, what="a PEM file of CA certificates"),
    "upstream_cert": _Field(_pem_certificates, what="a PEM certificate file"),
    "upstream_key": _Field(_pem_key, what="a PEM private key file"),
    "upstream_insecure": _Field(_boolean, what="true or false"),
    # TLS on the listener (issue 9)
    "tls_cert": _Field(_pem_certificates, what="a PEM certificate file"),
    "tls_key": _Field(_pem_key, what="a PEM private key file"),
    "tls_client_ca": _Field(_pem_certificates, what="a PEM file of CA certificates"),
    "tls_handshake_timeout": _TIMEOUT,
    # Routes and the mirror copy (issue 10)
    "route": _Field(_table_list, what="[[route]] tables"),
    "shadow_set_header": _Field(_set_headers, what='a table {"x-env" = "shadow"}, or NAME: VALUE'),
    "shadow_remove_header": _Field(_remove_headers, what="a list of header names"),
    "mirror_max_rps": _Field(_optional_positive, what="a number of copies a second > 0",
                             from_text=_number_text),
    "mirror_for": _Field(_optional_duration, what=f"a duration > 0 like {DURATION_FORMS}, or \"off\"",
                         from_text=_number_or_text),
}

# The keys of a [[route]] table that are not top-level keys too.
_ROUTE_FIELDS: dict[str, _Field] = {
    "name": _Field(_route_name, what="a name of letters, digits, '-', '_', '.'"),
    "prefix": _Field(_prefix, what='a path prefix starting with "/" (no query), e.g. "/api/search"'),
    "methods": _Field(_methods, what='a list of HTTP methods, or "ALL"'),
    "shadow": _Field(_shadow_refs, what='a list of shadow names or addresses ([] = not mirrored)'),
}

# One row per DiffConfig field: the keys of the [diff] table.
_DIFF_FIELDS: dict[str, _Field] = {
    "enabled": _Field(_boolean, what="true or false"),
    "headers": _Field(_header_names, what='a list of header names, e.g. ["content-type"]'),
    "ignore": _Field(_diff_rules("ignore"), what='a list of patterns, e.g. ["$.meta.*", "header:date"]'),
    "array_as_set": _Field(_diff_rules("array_as_set"), what='a list of JSON paths, e.g. ["$.tags"]'),
    "templates": _Field(_diff_rules("templates"), what='a list of path templates, e.g. ["/users/{id}"]'),
    "max_body": _Field(_size, _at_least(1), 'a size >= 1 byte, e.g. 1048576 or "1MiB"'),
    "max_endpoints": _COUNT,
    "max_pending": _COUNT,
    "max_differences": _COUNT,
    "log": _Field(_diff_log, what='a file path or "off"'),
    "log_max_bytes": _Field(_size, _at_least(1), 'a size >= 1 byte, e.g. "100MiB"'),
}
# Flags whose name is not `--diff-` + the key with dashes.
_DIFF_FLAG_NAMES = {"enabled": "--diff", "templates": "--diff-template"}


@dataclass(frozen=True, kw_only=True)
class DiffConfig:
    """The `[diff]` table: comparing each shadow response with the primary's (see diff.py)."""

    enabled: bool = False
    # Header names compared (lower case); content-type decides whether bodies are JSON.
    headers: tuple[str, ...] = ("content-type",)
    ignore: tuple[str, ...] = ()  # `$.meta.*`, `header:date`, `status`, `body`, ...
    array_as_set: tuple[str, ...] = ()  # JSON paths whose arrays compare ignoring order
    templates: tuple[str, ...] = ()  # endpoint templates tried before the id collapsing
    # Responses larger than this are counted `skipped`, not copied or compared: the
    # copy is memory held per pending pair (max_pending x 2-3 responses at most).
    max_body: int = 1 << 20
    max_endpoints: int = 100  # label cardinality: later endpoints fold into "other"
    max_pending: int = 1024  # pairs waiting for the comparator; more are dropped, counted
    max_differences: int = 20  # per comparison
    log: str | None = None  # JSON-lines file with the full pair of each mismatch
    # Rotated once to PATH.1 past this, so the log takes at most ~2x on disk.
    log_max_bytes: int = 100 << 20


@dataclass(frozen=True, kw_only=True)
class Config:
    """Every effective setting; one field per CONTRACT flag (underscored), then extensions."""

    listen: Address = Address("127.0.0.1", 8080)
    primary: Address
    shadow: tuple[Shadow, ...] = ()
    # load_config() makes this 0 when there is no shadow, so check-config does not
    # print a percentage of nothing; 100 otherwise, as Envoy's request_mirror_policies.
    mirror_percent: float = 100.0
    # Safe methods only by default: a shadow fed POSTs may write twice to shared state.
    mirror_methods: tuple[str, ...] = ("GET", "HEAD", "OPTIONS")
    admin: Address | None = Address("127.0.0.1", 9901)  # Envoy's admin port
    workers: int = 1
    queue_size: int = 1024
    shadow_timeout: float = 5.0
    shadow_concurrency: int = 64
    primary_timeout: float = 15.0
    max_mirror_body: int = 1 << 20
    shadow_host_suffix: bool = True
    access_log: str | None = None
    log_level: str = "info"
    # Extensions (not in the CONTRACT).
    connect_timeout: float = 5.0
    # How long SIGTERM waits for requests in flight; systemd's TimeoutStopSec defaults to 90 s.
    drain_timeout: float = 30.0
    # Idle client keep-alive: nginx keepalive_timeout is 75 s, Envoy's idle_timeout 1 h.
    idle_timeout: float = 60.0
    # nginx large_client_header_buffers is 4 x 8 KiB; Envoy max_request_headers_kb 60 KiB.
    max_head_size: int = 64 << 10
    # A request head must be complete this long after its first byte (the first one:
    # after the accept), else 408. Shorter than idle_timeout, so a slowloris client that
    # trickles a head cannot hold a connection for the keep-alive time; nginx's
    # client_header_timeout is 60 s, 10 s is ample for any real client's head.
    header_timeout: float = 10.0
    # Client connections per worker. Past it the worker stops accepting and new ones
    # wait in the listen backlog (as nginx at worker_connections). Each client can hold
    # a primary connection too: 2 x 10000 fds fits the unit's LimitNOFILE=65536.
    max_connections: int = 10000
    mirror_key: str | None = None  # header whose value decides sampling; None = random
    # A second instance of the primary's version: what differs between it and the
    # primary is noise (timestamps, ids), not a regression of the shadow.
    secondary: Address | None = None
    diff: DiffConfig = DiffConfig()
    # TLS to https:// upstreams: verified against the system's CAs, or upstream_ca;
    # upstream_cert/key: a client certificate (mTLS); insecure: no verification at all.
    upstream_ca: str | None = None
    upstream_cert: str | None = None
    upstream_key: str | None = None
    upstream_insecure: bool = False

    # TLS on the listener (issue 9): PEM files; both or neither of cert and key.
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_client_ca: str | None = None  # client certificates required, signed by these CAs
    # Extension. A client that has not finished its handshake this long after the
    # accept is closed. Kestrel's HandshakeTimeout and Go's http.Server (its
    # ReadHeaderTimeout covers the handshake) sit at 10 s; nginx has ssl_handshake_timeout
    # only in its stream module (60 s, the asyncio default too), Envoy's
    # transport_socket_connect_timeout is off by default. 10 s is ample for a real
    # client and, like header_timeout, bounds what an idle connect can hold.
    tls_handshake_timeout: float = 10.0

    # Routes and the mirror copy (issue 10). Routes are tried in order; no match: the above.
    route: tuple[Route, ...] = ()
    shadow_set_header: tuple[tuple[str, str], ...] = ()  # every shadow's copy: (name, value)
    shadow_remove_header: tuple[str, ...] = ()  # every shadow's copy loses these headers
    mirror_max_rps: float | None = None  # per shadow, copies a second; over it: "limited"
    mirror_for: float | None = None  # seconds; then mirroring turns itself off

    @property
    def upstreams(self) -> tuple[Address, ...]:
        """Every upstream: the primary, the shadows, the secondary."""
        return (self.primary, *(s.address for s in self.shadow),
                *((self.secondary,) if self.secondary else ()))

    @property
    def effective_workers(self) -> int:
        """`workers`, with 0 resolved to the CPUs this process may run on (cgroups/affinity)."""
        if self.workers:
            return self.workers
        try:
            return len(os.sched_getaffinity(0)) or 1
        except AttributeError:  # not on Linux
            return os.cpu_count() or 1


# Checks that span fields: (key reported, holds?, problem, show the value?).
_CROSS_CHECKS: tuple[tuple[str, Callable[[Config], bool], str, bool], ...] = (
    ("primary", lambda c: c.primary.endpoint != c.listen.endpoint,
     "must not be the listen address (a loop)", True),
    ("admin", lambda c: c.admin != c.listen, "must not be the listen address", True),
    ("shadow", lambda c: c.primary.endpoint not in [s.address.endpoint for s in c.shadow],
     "must not include the primary (it would get every request twice)", True),
    ("shadow", lambda c: c.listen.endpoint not in [s.address.endpoint for s in c.shadow],
     "must not include the listen address (a loop: each copy would come back and be mirrored "
     "again)", True),
    ("secondary", lambda c: c.secondary is None or c.diff.enabled,
     "needs diffing on (--diff or [diff] enabled = true)", False),
    ("secondary", lambda c: c.secondary is None or c.secondary.endpoint != c.primary.endpoint,
     "must not be the primary (it is a second instance of the primary's version)", True),
    ("secondary", lambda c: c.secondary is None
     or c.secondary.endpoint not in [s.address.endpoint for s in c.shadow], "must not be a shadow", True),
    ("secondary", lambda c: c.secondary is None or c.secondary.endpoint != c.listen.endpoint,
     "must not be the listen address (a loop)", True),
    ("upstream_cert", lambda c: (c.upstream_cert is None) == (c.upstream_key is None),
     "and upstream_key go together (a client certificate needs its key)", False),
    ("upstream_insecure", lambda c: not (c.upstream_insecure and c.upstream_ca),
     "turns verification off, so upstream_ca would not be used: give one or the other", False),
)  # fmt: skip

# TLS on the listener (issue 9): which files go together.
_TLS_CHECKS: tuple[tuple[str, Callable[[Config], bool], str, bool], ...] = (
    ("tls_key", lambda c: c.tls_cert is None or c.tls_key is not None,
     "required with tls_cert (--tls-key FILE: the certificate's private key)", False),
    ("tls_cert", lambda c: c.tls_key is None or c.tls_cert is not None,
     "required with tls_key (--tls-cert FILE)", False),
    ("tls_client_ca", lambda c: c.tls_client_ca is None or c.tls_cert is not None,
     "needs a TLS listener (--tls-cert and --tls-key)", False),
)  # fmt: skip

_PRIMARY_REQUIRED = "primary: required (--primary HOST:PORT or primary = ... in the config file)"


@dataclass(frozen=True, slots=True)
class _Given:
    value: object
    label: str  # the key or flag to name in errors
    where: str  # " (in FILE)" or ""
    from_flag: bool


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _convert(row: _Field, given: _Given) -> Any:
    try:
        value = given.value
        if given.from_flag and row.from_text is not None and isinstance(value, str):
            value = row.from_text(value)
        value = row.convert(value)
        if row.check is not None and not row.check(value):
            raise _Invalid()
    except _Invalid as e:
        key = given.label.removeprefix("--").replace("-", "_")
        problem = _advice(e, key, given.from_flag) or f"must be {row.what}"
        raise ConfigError(f"{given.label}: {problem}, got {_show(given.value)}{given.where}") from None
    return value


def parse_duration(text: str, key: str) -> float:
    """A flag's duration (`10`, `0.5`, `500ms`, `2m`, `1m30s`) in seconds, > 0 and finite.

    Raises:
        ConfigError: naming `key`, e.g. `--duration: must be a number of seconds > 0 or ...`.
    """
    return float(_convert(_TIMEOUT, _Given(text, key, "", from_flag=True)))


def _unknown(kind: str, key: str, where: str) -> ConfigError:
    table, dot, sub = key.partition(".")
    prefix, name, known = ("diff.", sub, _DIFF_FIELDS) if table == "diff" and dot else ("", key, _FIELDS)
    close = difflib.get_close_matches(name.replace("-", "_"), known, n=1, cutoff=0.6)
    hint = f" (did you mean '{prefix}{close[0]}'?)" if close else ""
    return ConfigError(f"unknown {kind} {key!r} in {where}{hint}")


def _read_toml(path: str) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise ConfigError(f"{path}: cannot read config file: {e.strerror or e}") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text (byte {e.start})") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: invalid TOML: {e}") from None


def load_config(path: str | None, overrides: Mapping[str, object]) -> Config:
    """Build the effective Config: defaults, then the TOML file at `path`, then `overrides`.

    Args:
        path: TOML file whose top-level keys are Config field names, or None for no file.
        overrides: field name -> value, only for the flags the user gave, and
            `diff.<key>` for the flags of one [diff] key (`--diff` is `diff.enabled`).
            Strings are parsed as flag text (`"10"` for a number); typed values are taken
            as in TOML.

    Raises:
        ConfigError: one line naming the key or flag: unreadable file or bad TOML (with
            its line), unknown key (with the closest known name), bad value, missing primary.
    """
    given: dict[str, _Given] = {}
    diff: dict[str, _Given] = {}  # [diff] keys as given by flags; the table's are added below
    if path is not None:
        for key, value in _read_toml(path).items():
            if key not in _FIELDS:
                kind = "section" if isinstance(value, dict) else "key"
                raise _unknown(kind, key, path)
            given[key] = _Given(value, key, f" (in {path})", from_flag=False)
    for key, value in overrides.items():
        table, dot, sub = key.partition(".")
        if dot and table == "diff" and sub in _DIFF_FIELDS:
            diff[sub] = _Given(value, _DIFF_FLAG_NAMES.get(sub) or _flag(key.replace(".", "_")), "", True)
        elif key in _FIELDS:
            given[key] = _Given(value, _flag(key), "", from_flag=True)
        else:
            raise _unknown("key", key, "overrides")

    values = {name: _convert(_FIELDS[name], g) for name, g in given.items()}
    if "primary" not in values:
        raise ConfigError(_PRIMARY_REQUIRED)
    values.setdefault("mirror_percent", 100.0 if values.get("shadow") else 0.0)
    values["diff"] = _diff_config(values.get("diff", {}), given.get("diff"), diff, path)
    shadow_where = given["shadow"].where if "shadow" in given else ""
    values["shadow"] = _shadows(values.get("shadow", ()), shadow_where)
    if "route" in values:
        values["route"] = _routes(values["route"], values["shadow"], given["route"].where)
    config = Config(**values)

    for key, holds, problem, show in _CROSS_CHECKS + _TLS_CHECKS:
        if not holds(config):
            g = given.get(key)
            label, where = (g.label, g.where) if g else (key, "")
            shown = f", got {_show(_jsonable(getattr(config, key)))}" if show else ""
            raise ConfigError(f"{label}: {problem}{shown}{where}")
    return config


def _diff_config(table: dict[str, Any], where: _Given | None, flags: dict[str, _Given],
                 path: str | None) -> DiffConfig:
    """The [diff] table's keys (given as `where` says), each unless a flag gave it."""
    given = dict(flags)
    for key, value in table.items():
        if key not in _DIFF_FIELDS:
            raise _unknown("key", f"diff.{key}", path if where and where.where and path else "overrides")
        assert where is not None
        given.setdefault(key, _Given(value, f"diff.{key}", where.where, where.from_flag))
    return DiffConfig(**{key: _convert(_DIFF_FIELDS[key], g) for key, g in given.items()})


def _jsonable(value: object) -> object:
    if isinstance(value, Address):
        return str(value)
    if isinstance(value, Shadow):
        if value.plain:
            return str(value)
        return {"name": value.name, "target": str(value.address),
                "set_header": dict(value.set_header), "remove_header": list(value.remove_header),
                "max_rps": value.max_rps}
    if isinstance(value, Route):
        return {f.name: _jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, DiffConfig):
        return {f.name: _jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, (tuple, list)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (datetime.date, datetime.time)):  # a TOML date where none belongs
        return value.isoformat()
    return value


def config_to_dict(cfg: Config) -> dict[str, Any]:
    """Every field's effective value, JSON-able: addresses as `host:port`, None as null,
    `diff` as a nested dict of DiffConfig's fields."""
    d = {f.name: _jsonable(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}
    d["shadow_set_header"] = dict(cfg.shadow_set_header)  # as the TOML table is written
    d["route"] = [route_settings(cfg, r) for r in cfg.route]
    return d


def route_settings(cfg: Config, route: Route) -> dict[str, Any]:
    """A route as it applies: what it matches, and its settings with the top level's
    filled in where it has none (methods None: any method)."""
    return {
        "name": route.name, "prefix": route.prefix,
        "methods": list(route.methods) if route.methods is not None else None,
        "mirror_percent": cfg.mirror_percent if route.mirror_percent is None else route.mirror_percent,
        "mirror_methods": list(route.mirror_methods or cfg.mirror_methods),
        "shadow": [s.name for s in cfg.shadow] if route.shadow is None else list(route.shadow),
        "mirror_key": route.mirror_key or cfg.mirror_key,
    }
