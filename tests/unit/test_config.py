"""config: TOML load, flags over file, one validator per field, errors that name the key."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

from fastmirror.config import (
    Address,
    Config,
    ConfigError,
    DiffConfig,
    _DIFF_FIELDS,
    _FIELDS,
    config_to_dict,
    load_config,
    parse_address,
    parse_duration,
)

PRIMARY = {"primary": "10.0.0.5:9000"}


@pytest.fixture
def toml(tmp_path: Path):
    def write(text: str) -> str:
        path = tmp_path / "fastmirror.toml"
        path.write_text(text)
        return str(path)

    return write


def error_of(path: str | None, overrides: dict[str, object]) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(path, overrides)
    message = str(info.value)
    assert "\n" not in message
    return message


# --- defaults -------------------------------------------------------------------------


def test_defaults():
    cfg = load_config(None, PRIMARY)
    assert cfg.listen == Address("127.0.0.1", 8080)
    assert cfg.primary == Address("10.0.0.5", 9000)
    assert cfg.shadow == ()
    assert cfg.mirror_percent == 0.0
    assert cfg.mirror_methods == ("GET", "HEAD", "OPTIONS")
    assert cfg.admin == Address("127.0.0.1", 9901)
    assert (cfg.workers, cfg.effective_workers) == (1, 1)
    assert (cfg.queue_size, cfg.shadow_concurrency) == (1024, 64)
    assert (cfg.shadow_timeout, cfg.primary_timeout) == (5.0, 15.0)
    assert cfg.max_mirror_body == 1048576
    assert cfg.shadow_host_suffix is True
    assert cfg.access_log is None
    assert cfg.log_level == "info"
    assert (cfg.connect_timeout, cfg.drain_timeout, cfg.idle_timeout) == (5.0, 30.0, 60.0)
    assert cfg.max_head_size == 65536
    assert cfg.mirror_key is None
    assert cfg.secondary is None
    assert cfg.diff == DiffConfig()
    d = cfg.diff
    assert (d.enabled, d.headers, d.ignore, d.array_as_set, d.templates) == (
        False, ("content-type",), (), (), (),
    )  # fmt: skip
    assert (d.max_body, d.max_endpoints, d.max_pending, d.max_differences) == (1 << 20, 100, 1024, 20)
    assert (d.log, d.log_max_bytes) == (None, 100 << 20)


def test_mirror_percent_defaults_to_100_with_a_shadow():
    assert load_config(None, PRIMARY | {"shadow": ["10.0.0.6:9000"]}).mirror_percent == 100.0


def test_mirror_percent_given_without_shadow_is_kept():
    assert load_config(None, PRIMARY | {"mirror_percent": "25"}).mirror_percent == 25.0


def test_primary_required():
    assert error_of(None, {}) == (
        "primary: required (--primary HOST:PORT or primary = ... in the config file)"
    )


def test_effective_workers_zero_means_one_per_cpu():
    cfg = load_config(None, PRIMARY | {"workers": "0"})
    assert cfg.workers == 0 and cfg.effective_workers >= 1


def test_table_covers_every_field():
    assert set(_FIELDS) == {f.name for f in dataclasses.fields(Config)}
    assert set(_DIFF_FIELDS) == {f.name for f in dataclasses.fields(DiffConfig)}


def test_frozen():
    cfg = load_config(None, PRIMARY)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.mirror_percent = 5.0  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.listen.port = 1  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.diff.enabled = True  # type: ignore[misc]


# --- file and flags -------------------------------------------------------------------


FULL = """
listen = "0.0.0.0:8080"
primary = "10.0.0.5:9000"
shadow = ["10.0.0.6:9000", "[fd00::7]:9000"]
mirror_percent = 10
mirror_methods = ["get", "head"]
admin = "off"
workers = 4
queue_size = 10
shadow_timeout = 2
shadow_concurrency = 8
primary_timeout = 3.5
max_mirror_body = "10MB"
shadow_host_suffix = false
access_log = "-"
log_level = "DEBUG"
connect_timeout = 1
drain_timeout = 0
idle_timeout = 75
header_timeout = 7.5
max_connections = 500
max_head_size = "32KiB"
mirror_key = "X-User-Id"
secondary = "10.0.0.8:9000"

[diff]
enabled = true
headers = ["Content-Type", "ETag"]
ignore = ["$.meta.*", "header:date"]
array_as_set = "$.tags"
templates = ["/users/{user}"]
max_body = "2MiB"
max_endpoints = 50
max_pending = 10
max_differences = 5
log = "/var/log/fastmirror/diff.log"
log_max_bytes = "10MB"
"""


def test_full_file(toml):
    cfg = load_config(toml(FULL), {})
    assert config_to_dict(cfg) == {
        "listen": "0.0.0.0:8080",
        "primary": "10.0.0.5:9000",
        "shadow": ["10.0.0.6:9000", "[fd00::7]:9000"],
        "mirror_percent": 10.0,
        "mirror_methods": ["GET", "HEAD"],
        "admin": None,
        "workers": 4,
        "queue_size": 10,
        "shadow_timeout": 2.0,
        "shadow_concurrency": 8,
        "primary_timeout": 3.5,
        "max_mirror_body": 10_000_000,
        "shadow_host_suffix": False,
        "access_log": "-",
        "log_level": "debug",
        "connect_timeout": 1.0,
        "drain_timeout": 0.0,
        "idle_timeout": 75.0,
        "max_head_size": 32768,
        "header_timeout": 7.5,
        "max_connections": 500,
        "mirror_key": "x-user-id",
        "secondary": "10.0.0.8:9000",
        "diff": {
            "enabled": True,
            "headers": ["content-type", "etag"],
            "ignore": ["$.meta.*", "header:date"],
            "array_as_set": ["$.tags"],
            "templates": ["/users/{user}"],
            "max_body": 2 << 20,
            "max_endpoints": 50,
            "max_pending": 10,
            "max_differences": 5,
            "log": "/var/log/fastmirror/diff.log",
            "log_max_bytes": 10_000_000,
        },
        "upstream_ca": None,
        "upstream_cert": None,
        "upstream_key": None,
        "upstream_insecure": False,
        # issue 9: listener TLS, off
        "tls_cert": None, "tls_key": None, "tls_client_ca": None, "tls_handshake_timeout": 10.0,
        # issue 10: routes and the mirror copy, none
        "route": [], "shadow_set_header": {}, "shadow_remove_header": [], "mirror_max_rps": None,
        "mirror_for": None,
    }
    assert isinstance(cfg.mirror_percent, float) and isinstance(cfg.shadow_timeout, float)


def test_flags_override_file(toml):
    path = toml(FULL)
    cfg = load_config(
        path,
        {"listen": "127.0.0.1:9999", "shadow": ["1.2.3.4:80"], "mirror_percent": "50",
         "workers": "2", "max_mirror_body": "2k", "admin": "127.0.0.1:1", "log_level": "error"},
    )  # fmt: skip
    assert cfg.listen == Address("127.0.0.1", 9999)
    assert [s.address for s in cfg.shadow] == [Address("1.2.3.4", 80)]  # replaced, not appended
    assert (cfg.mirror_percent, cfg.workers, cfg.max_mirror_body) == (50.0, 2, 2048)
    assert cfg.admin == Address("127.0.0.1", 1) and cfg.log_level == "error"
    assert cfg.primary == Address("10.0.0.5", 9000)  # from the file
    assert cfg.mirror_methods == ("GET", "HEAD")


def test_typed_overrides_accepted():
    cfg = load_config(None, PRIMARY | {"mirror_percent": 12.5, "workers": 3, "admin": None,
                                       "shadow_host_suffix": False})  # fmt: skip
    assert (cfg.mirror_percent, cfg.workers, cfg.admin, cfg.shadow_host_suffix) == (
        12.5, 3, None, False,
    )  # fmt: skip


def test_shadow_as_a_string(toml):
    cfg = load_config(toml('primary = "a:1"\nshadow = "b:2"\n'), {})
    assert [s.address for s in cfg.shadow] == [Address("b", 2)] and cfg.mirror_percent == 100.0


def test_mirror_methods_all_and_comma_list():
    assert load_config(None, PRIMARY | {"mirror_methods": "all"}).mirror_methods == ("ALL",)
    cfg = load_config(None, PRIMARY | {"mirror_methods": "get, POST,get,"})
    assert cfg.mirror_methods == ("GET", "POST")


def test_config_to_dict_is_json(toml):
    import orjson

    cfg = load_config(toml('primary = "a:1"\n[diff]\nenabled = true\n'), {})
    data = orjson.loads(orjson.dumps(config_to_dict(cfg)))
    assert data["diff"]["enabled"] is True and data["diff"]["headers"] == ["content-type"]
    assert set(data) == set(_FIELDS)
    assert set(data["diff"]) == set(_DIFF_FIELDS)


# --- [diff] and secondary -------------------------------------------------------------


def test_diff_flags_override_table_keys(toml):
    path = toml('primary = "a:1"\n[diff]\nignore = ["$.id"]\nmax_pending = 7\nheaders = ["etag"]\n')
    cfg = load_config(path, {"diff.enabled": True, "diff.max_pending": "9", "diff.headers": "X-A, x-b"})
    d = cfg.diff
    assert d.enabled and d.max_pending == 9  # flags win
    assert d.ignore == ("$.id",)  # the table's other keys survive a flag
    assert d.headers == ("x-a", "x-b")


def test_diff_repeatable_flags_are_lists():
    cfg = load_config(None, PRIMARY | {"diff.ignore": ["$.a", "header:date", "$.a"],
                                       "diff.array_as_set": ["$.tags"],
                                       "diff.templates": ["/u/{id}", "/o/{o}/x"]})  # fmt: skip
    assert cfg.diff.ignore == ("$.a", "header:date")  # duplicates dropped, order kept
    assert cfg.diff.array_as_set == ("$.tags",)
    assert cfg.diff.templates == ("/u/{id}", "/o/{o}/x")


def test_diff_sizes_accept_suffixes():
    cfg = load_config(None, PRIMARY | {"diff.max_body": "512KiB", "diff.log_max_bytes": "1m"})
    assert (cfg.diff.max_body, cfg.diff.log_max_bytes) == (512 << 10, 1 << 20)


def test_diff_headers_may_be_empty():
    assert load_config(None, PRIMARY | {"diff.headers": ""}).diff.headers == ()


def test_diff_log_off():
    assert load_config(None, PRIMARY | {"diff.log": "off"}).diff.log is None


def test_diff_typed_override_table(toml):
    path = toml('primary = "a:1"\n[diff]\nmax_pending = 7\n')
    cfg = load_config(path, {"diff": {"enabled": True}})
    assert cfg.diff.enabled and cfg.diff.max_pending == 1024  # a table override replaces the table
    assert load_config(None, PRIMARY | {"diff": DiffConfig(max_body=5)}).diff.max_body == 5


def test_unknown_diff_key_with_suggestion(toml):
    path = toml('primary = "a:1"\n[diff]\nignor = ["header:date"]\n')
    assert error_of(path, {}) == f"unknown key 'diff.ignor' in {path} (did you mean 'diff.ignore'?)"
    path = toml('primary = "a:1"\n[diff]\nzzz = 1\n')
    assert error_of(path, {}) == f"unknown key 'diff.zzz' in {path}"
    assert error_of(None, PRIMARY | {"diff.max_pendng": 1}).startswith(
        "unknown key 'diff.max_pendng' in overrides (did you mean 'diff.max_pending'?)"
    )


DIFF_BAD_VALUES = [
    ("enabled", '"yes"'), ("enabled", "1"), ("headers", '["a b"]'), ("headers", "[1]"),
    ("headers", "7"), ("ignore", '[""]'), ("ignore", '["meta.*"]'), ("ignore", '["$.a..b"]'),
    ("ignore", "[1]"), ("array_as_set", '["tags"]'), ("templates", '["users/{id}"]'),
    ("templates", '[" "]'), ("max_body", "0"), ("max_body", '"1 parsec"'), ("max_endpoints", "0"),
    ("max_pending", "0"), ("max_pending", '"5"'), ("max_differences", "0"), ("log", '""'),
    ("log", '"-"'), ("log", "1"), ("log_max_bytes", "0"), ("log_max_bytes", '"big"'),
]  # fmt: skip


@pytest.mark.parametrize(("key", "value"), DIFF_BAD_VALUES)
def test_bad_diff_value_names_key_and_file(toml, key, value):
    path = toml(f'primary = "a:1"\n[diff]\n{key} = {value}\n')
    message = error_of(path, {})
    assert message.startswith(f"diff.{key}: ") and message.endswith(f"(in {path})")
    assert ", got " in message


DIFF_FLAG_BAD_VALUES = [
    ("--diff-headers", "headers", "a:b"), ("--diff-ignore", "ignore", ["x"]),
    ("--diff-array-as-set", "array_as_set", ["tags"]), ("--diff-template", "templates", ["u"]),
    ("--diff-max-body", "max_body", "0"), ("--diff-max-endpoints", "max_endpoints", "many"),
    ("--diff-max-pending", "max_pending", "-1"), ("--diff-log", "log", ""),
    ("--diff-log-max-bytes", "log_max_bytes", "1 parsec"),
]  # fmt: skip


@pytest.mark.parametrize(("flag", "key", "value"), DIFF_FLAG_BAD_VALUES)
def test_bad_diff_flag_value_names_flag(flag, key, value):
    assert error_of(None, PRIMARY | {f"diff.{key}": value}).startswith(f"{flag}: ")


def test_secondary():
    cfg = load_config(None, PRIMARY | {"secondary": "10.0.0.8:9000", "diff.enabled": True})
    assert cfg.secondary == Address("10.0.0.8", 9000)


def test_secondary_needs_diffing(toml):
    assert error_of(None, PRIMARY | {"secondary": "10.0.0.8:9000"}) == (
        "--secondary: needs diffing on (--diff or [diff] enabled = true)"
    )
    path = toml('primary = "a:1"\nsecondary = "b:2"\n')
    assert error_of(path, {}) == f"secondary: needs diffing on (--diff or [diff] enabled = true) (in {path})"
    # --diff on the command line is enough for a file's secondary.
    assert load_config(path, {"diff.enabled": True}).secondary == Address("b", 2)


@pytest.mark.parametrize(
    ("overrides", "start"),
    [({"secondary": "10.0.0.5:9000"}, "--secondary: must not be the primary"),
     ({"secondary": "10.0.0.6:9000", "shadow": ["10.0.0.6:9000"]}, "--secondary: must not be a shadow"),
     ({"secondary": "127.0.0.1:8080"}, "--secondary: must not be the listen address"),
     ({"secondary": "nope"}, "--secondary: must be HOST:PORT")],
)  # fmt: skip
def test_secondary_checks(overrides, start):
    assert error_of(None, PRIMARY | {"diff.enabled": True} | overrides).startswith(start)


# --- sizes and addresses --------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "size"),
    [("0", 0), ("1000", 1000), ("2k", 2048), ("2K", 2048), ("512KiB", 524288), ("1MiB", 1048576),
     ("10MB", 10_000_000), ("1m", 1048576), ("1 GiB", 1 << 30), ("1.5k", 1536), ("3kb", 3000),
     ("7b", 7), (4096, 4096)],
)  # fmt: skip
def test_size_suffixes(text, size):
    assert load_config(None, PRIMARY | {"max_mirror_body": text}).max_mirror_body == size


@pytest.mark.parametrize("text", ["1 parsec", "-1", "k", "1.k", "", "1e3", True, 1.5, [1]])
def test_bad_sizes(text):
    message = error_of(None, PRIMARY | {"max_mirror_body": text})
    assert message.startswith("--max-mirror-body: must be a size in bytes")


@pytest.mark.parametrize(
    ("text", "host", "port", "shown"),
    [("127.0.0.1:80", "127.0.0.1", 80, "127.0.0.1:80"),
     ("localhost:65535", "localhost", 65535, "localhost:65535"),
     ("[::1]:80", "::1", 80, "[::1]:80"),
     ("[fe80::1%eth0]:8080", "fe80::1%eth0", 8080, "[fe80::1%eth0]:8080"),
     (" my-host.example.:1 ", "my-host.example.", 1, "my-host.example.:1")],
)  # fmt: skip
def test_parse_address(text, host, port, shown):
    address = parse_address(text, "listen")
    assert (address.host, address.port, str(address)) == (host, port, shown)


@pytest.mark.parametrize(
    ("text", "problem"),
    [("nope", "must be HOST:PORT"), (":8080", "must name the host"),
     ("h:0", "port from 1 to 65535"), ("h:65536", "port from 1 to 65535"), ("h:", "port"),
     ("h:8o", "port"), ("h:+80", "port"), ("::1:80", "brackets"), ("[::1]", "[IPV6]:PORT"),
     ("[1.2.3.4]:80", "not an IPv6 address"), ("a b:80", "not a host name"),
     ("http://a:80", "not a URL")],
)  # fmt: skip
def test_bad_addresses(text, problem):
    with pytest.raises(ConfigError) as info:
        parse_address(text, "listen")
    assert str(info.value).startswith("listen: ") and problem in str(info.value)


def test_address_is_frozen_and_hashable():
    assert {Address("a", 1), Address("a", 1)} == {Address("a", 1)}


# --- every validator names its key ----------------------------------------------------

BAD_VALUES = [
    ("listen", 8080), ("listen", "nope"), ("primary", "h:99999"), ("shadow", 5),
    ("shadow", ["a:1", "a:1"]), ("shadow", ["a:1", "x"]), ("mirror_percent", 150),
    ("mirror_percent", -1), ("mirror_percent", "10"), ("mirror_percent", True),
    ("mirror_percent", float("nan")), ("mirror_methods", []), ("mirror_methods", ["GET", "ALL"]),
    ("mirror_methods", ["G ET"]), ("mirror_methods", [1]), ("mirror_methods", 7), ("admin", "on"),
    ("admin", False), ("workers", -1), ("workers", 2.0), ("workers", "2"), ("queue_size", 0),
    ("shadow_timeout", 0), ("shadow_timeout", -1.5), ("shadow_concurrency", 0),
    ("primary_timeout", 0), ("max_mirror_body", -1), ("shadow_host_suffix", "no"),
    ("shadow_host_suffix", 0), ("access_log", ""), ("access_log", 1), ("log_level", "verbose"),
    ("log_level", 1), ("connect_timeout", 0), ("drain_timeout", -1), ("idle_timeout", 0),
    ("max_head_size", 100), ("max_head_size", "1000b"), ("mirror_key", "X User"),
    ("mirror_key", ""), ("diff", "yes"), ("secondary", "b"), ("secondary", 5),
]  # fmt: skip


def toml_value(value: object) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float) and value != value:
        return "nan"
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return str(value)


@pytest.mark.parametrize(("key", "value"), BAD_VALUES)
def test_bad_file_value_names_key_and_file(toml, key, value):
    lines = [f"{key} = {toml_value(value)}"] + (["" ] if key == "primary" else ['primary = "a:1"'])
    path = toml("\n".join(lines) + "\n")
    message = error_of(path, {})
    assert message.startswith(f"{key}: ") and message.endswith(f"(in {path})")
    assert ", got " in message


FLAG_BAD_VALUES = [
    ("listen", "nope"), ("primary", "x:0"), ("shadow", ["nope"]), ("mirror_percent", "abc"),
    ("mirror_percent", "150"), ("mirror_percent", "inf"), ("mirror_methods", ","),
    ("admin", "yes"), ("workers", "two"), ("workers", "1.5"), ("queue_size", "0"),
    ("shadow_timeout", "0"), ("shadow_concurrency", "-3"), ("primary_timeout", "soon"),
    ("max_mirror_body", "big"), ("access_log", ""), ("log_level", "loud"),
    ("connect_timeout", "-1"), ("drain_timeout", "x"), ("idle_timeout", "0"),
    ("max_head_size", "12"), ("mirror_key", "a:b"), ("secondary", "x:0"),
]  # fmt: skip


@pytest.mark.parametrize(("key", "value"), FLAG_BAD_VALUES)
def test_bad_flag_value_names_flag(key, value):
    overrides = {"primary": "a:1"} | {key: value}
    message = error_of(None, overrides)
    assert message.startswith("--" + key.replace("_", "-") + ": ")


def test_error_message_format(toml):
    path = toml('primary = "a:1"\nmirror_percent = 150\n')
    assert error_of(path, {}) == f"mirror_percent: must be a number from 0 to 100, got 150 (in {path})"
    assert error_of(None, PRIMARY | {"mirror_percent": "abc"}) == (
        '--mirror-percent: must be a number from 0 to 100, got "abc"'
    )


def test_value_with_newline_stays_one_line():
    assert "\n" not in error_of(None, PRIMARY | {"listen": "a\nb:1"})


@pytest.mark.parametrize(
    ("overrides", "start"),
    [({"primary": "127.0.0.1:8080"}, "--primary: must not be the listen address"),
     (PRIMARY | {"admin": "127.0.0.1:8080"}, "--admin: must not be the listen address"),
     (PRIMARY | {"shadow": ["10.0.0.5:9000"]}, "--shadow: must not include the primary")],
)  # fmt: skip
def test_cross_field_checks(overrides, start):
    assert error_of(None, overrides).startswith(start)


# --- unknown keys, bad files ----------------------------------------------------------


def test_unknown_key_with_suggestion(toml):
    path = toml('primary = "a:1"\nmirror_precent = 5\n')
    assert error_of(path, {}) == (
        f"unknown key 'mirror_precent' in {path} (did you mean 'mirror_percent'?)"
    )


def test_unknown_key_dashed_spelling(toml):
    path = toml('primary = "a:1"\nshadow-timeout = 5\n')
    assert error_of(path, {}).endswith("(did you mean 'shadow_timeout'?)")


def test_unknown_key_without_suggestion(toml):
    path = toml('primary = "a:1"\nzzz = 5\n')
    assert error_of(path, {}) == f"unknown key 'zzz' in {path}"


def test_unknown_section(toml):
    path = toml('primary = "a:1"\n[difff]\na = 1\n')
    assert error_of(path, {}).startswith(f"unknown section 'difff' in {path}")


def test_unknown_override():
    assert error_of(None, {"nope": 1}).startswith("unknown key 'nope'")


def test_bad_toml_names_file_and_line(toml):
    path = toml('primary = "a:1"\nlisten = \n')
    message = error_of(path, {})
    assert message.startswith(f"{path}: invalid TOML: ") and "line 2" in message


def test_missing_file(tmp_path):
    path = str(tmp_path / "absent.toml")
    assert error_of(path, {}) == f"{path}: cannot read config file: No such file or directory"


def test_directory_is_not_a_file(tmp_path):
    assert "cannot read config file" in error_of(str(tmp_path), {})


def test_not_utf8(tmp_path):
    path = tmp_path / "latin1.toml"
    path.write_bytes(b'primary = "a:1"\n# caf\xe9\n')
    assert "not UTF-8" in error_of(str(path), {})


def test_config_imports_no_io():
    code = "import sys, fastmirror.config; print(sorted({'asyncio', 'socket'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# --- client limits (issue 7) -------------------------------------------------------------


def test_client_limit_defaults():
    cfg = load_config(None, PRIMARY)
    assert cfg.header_timeout == 10.0
    assert cfg.max_connections == 10000


@pytest.mark.parametrize(
    ("overrides", "start"),
    [({"header_timeout": 0}, "--header-timeout: must be a number of seconds > 0"),
     ({"header_timeout": "soon"}, "--header-timeout: must be a number of seconds > 0"),
     ({"max_connections": 0}, "--max-connections: must be an integer >= 1"),
     ({"max_connections": 1.5}, "--max-connections: must be an integer >= 1")],
)  # fmt: skip
def test_client_limit_checks(overrides, start):
    assert error_of(None, PRIMARY | overrides).startswith(start)


# --- values as Envoy, Istio and Go users write them (issue 9) ----------------------------

DURATION_KEYS = ["shadow_timeout", "primary_timeout", "connect_timeout", "drain_timeout",
                 "idle_timeout", "header_timeout"]  # fmt: skip

DURATIONS = [
    ("5", 5.0), ("0.5", 0.5), (" 2 ", 2.0), ("500ms", 0.5), ("5s", 5.0), ("2m", 120.0),
    ("1m30s", 90.0), ("1.5h", 5400.0), ("250us", 0.00025), ("250\u00b5s", 0.00025),
    ("250\u03bcs", 0.00025), ("1000000ns", 0.001), ("1h2m3s", 3723.0), (".5s", 0.5),
    (" 10s ", 10.0),
]  # fmt: skip


@pytest.mark.parametrize("key", DURATION_KEYS)
@pytest.mark.parametrize(("text", "seconds"), DURATIONS)
def test_duration_flags(key, text, seconds):
    cfg = load_config(None, PRIMARY | {key: text})
    assert getattr(cfg, key) == pytest.approx(seconds)
    assert config_to_dict(cfg)[key] == pytest.approx(seconds)  # /config keeps seconds as numbers
    assert isinstance(config_to_dict(cfg)[key], float)


@pytest.mark.parametrize(("text", "seconds"), [(t, s) for t, s in DURATIONS if not t.strip()[-1].isdigit()])
def test_duration_strings_in_the_file(toml, text, seconds):
    path = toml(f'primary = "a:1"\nshadow_timeout = "{text}"\ndrain_timeout = "{text}"\n')
    cfg = load_config(path, {})
    assert (cfg.shadow_timeout, cfg.drain_timeout) == (pytest.approx(seconds), pytest.approx(seconds))


def test_duration_numbers_in_the_file(toml):
    cfg = load_config(toml('primary = "a:1"\nshadow_timeout = 0.25\nidle_timeout = 7\n'), {})
    assert (cfg.shadow_timeout, cfg.idle_timeout) == (0.25, 7.0)


def test_drain_timeout_may_be_zero():
    assert load_config(None, PRIMARY | {"drain_timeout": "0s"}).drain_timeout == 0.0
    assert load_config(None, PRIMARY | {"drain_timeout": "0"}).drain_timeout == 0.0


SECONDS_MESSAGE = 'must be a number of seconds > 0 or a duration like "500ms", "5s", "2m", "1m30s"'
BAD_DURATIONS = ["-5", "-5s", "", " ", "5x", "5 s", "s", "5S", "1m30", "nan", "inf", "-inf", "NaN",
                 "0", "0s", "5s-", "1e3s", "+5s", "10 000s", "1" + "0" * 400 + "h"]  # fmt: skip


@pytest.mark.parametrize("text", BAD_DURATIONS)
def test_bad_duration_flags(text):
    assert error_of(None, PRIMARY | {"shadow_timeout": text}) == (
        f"--shadow-timeout: {SECONDS_MESSAGE}, got {json_text(text)}"
    )


@pytest.mark.parametrize("text", ["5", "0.5", "5x", "-1s", "", "nan", "inf"])
def test_bad_duration_strings_in_the_file(toml, text):
    # In the file a number is a number; a string must carry its unit, as Go's ParseDuration.
    path = toml(f'primary = "a:1"\nprimary_timeout = "{text}"\n')
    assert error_of(path, {}) == f"primary_timeout: {SECONDS_MESSAGE}, got {json_text(text)} (in {path})"


def test_bad_drain_timeout_says_zero_is_allowed():
    assert error_of(None, PRIMARY | {"drain_timeout": "-1s"}).startswith(
        '--drain-timeout: must be a number of seconds >= 0 or a duration like "500ms"'
    )


def json_text(text: str) -> str:
    import json

    return json.dumps(text, ensure_ascii=False)


@pytest.mark.parametrize(("text", "percent"), [("10%", 10.0), ("10", 10.0), ("2.5%", 2.5), (" 0% ", 0.0),
                                                ("100%", 100.0), ("0.1%", 0.1)])  # fmt: skip
def test_percent_flags(text, percent):
    assert load_config(None, PRIMARY | {"mirror_percent": text}).mirror_percent == percent


def test_percent_in_the_file(toml):
    assert load_config(toml('primary = "a:1"\nmirror_percent = "10%"\n'), {}).mirror_percent == 10.0


@pytest.mark.parametrize("text", ["150%", "-1%", "%", "10%%", "ten%", "nan%", "inf%", "10 %x", "abc"])
def test_bad_percent_flags(text):
    assert error_of(None, PRIMARY | {"mirror_percent": text}) == (
        f"--mirror-percent: must be a number from 0 to 100, got {json_text(text)}"
    )


@pytest.mark.parametrize("text", ["150%", "%", "10"])
def test_bad_percent_in_the_file(toml, text):
    path = toml(f'primary = "a:1"\nmirror_percent = "{text}"\n')
    assert error_of(path, {}).startswith("mirror_percent: must be a number from 0 to 100, got ")


def test_parse_duration_for_other_flags():
    assert parse_duration("2m", "--duration") == 120.0
    with pytest.raises(ConfigError, match=r'^--duration: must be a number of seconds > 0 .*got "soon"$'):
        parse_duration("soon", "--duration")


# Each malformed address, and what its message tells the user to write instead.
ADDRESS_MESSAGES = [
    ("primary", ":8080", 'must name the host of the upstream, e.g. "127.0.0.1:8080" or '
     '"backend.internal:8080"'),
    ("shadow", ":9001", 'must name the host of the upstream, e.g. "127.0.0.1:9001"'),
    ("secondary", ":9002", 'must name the host of the upstream, e.g. "127.0.0.1:9002"'),
    ("listen", ":8080", 'must name the host, e.g. "0.0.0.0:8080" for every IPv4 address, '
     '"[::]:8080" for every IPv6 one, "127.0.0.1:8080" for this machine only'),
    ("admin", ":9901", 'must name the host, e.g. "0.0.0.0:9901"'),
    ("shadow", "a:1,b:2", "takes one address per flag; repeat the flag for several: "
     "--shadow a:1 --shadow b:2"),
    ("shadow", "a:1, b:2,", "takes one address per flag; repeat the flag for several: "
     "--shadow a:1 --shadow b:2"),
    ("primary", "a:1,b:2", "takes one address, not a list"),
    ("listen", "::1:80", 'needs brackets around an IPv6 address: "[::1]:80"'),
    ("primary", "a:b:80", 'has more than one ":"; an IPv6 address goes in brackets, e.g. "[::1]:8080"'),
    ("primary", "[1.2.3.4]:80", '"1.2.3.4" is not an IPv6 address; brackets are for IPv6 only: "1.2.3.4:80"'),
    ("primary", "[::1]", 'must be [IPV6]:PORT, e.g. "[::1]:8080"'),
    ("primary", "backend", 'must be HOST:PORT, e.g. "backend:8080"'),
    ("primary", "8080", 'must be HOST:PORT, e.g. "127.0.0.1:8080"'),
    ("primary", "h:0", 'must have a port from 1 to 65535, e.g. "h:8080"'),
    ("primary", "a b:80", '"a b" is not a host name or IP address (letters, digits, ".", "-", "_")'),
]  # fmt: skip


@pytest.mark.parametrize(("key", "text", "problem"), ADDRESS_MESSAGES)
def test_address_messages_say_what_to_write(key, text, problem):
    value = [text] if key == "shadow" else text  # --shadow is repeatable: a list of one
    extra = {"diff.enabled": True} if key == "secondary" else {}
    message = error_of(None, PRIMARY | extra | {key: value})
    assert message.startswith(f"--{key}: {problem}"), message
    assert message.endswith(f", got {json_text(text) if key != 'shadow' else '[' + json_text(text) + ']'}")
    if "," in text:  # the message before issue 9 talked about IPv6 brackets here
        assert "IPv6" not in message and "brackets" not in message


def test_shadow_list_in_one_file_string_says_to_write_a_list(toml):
    path = toml('primary = "a:1"\nshadow = "b:2,c:3"\n')
    assert error_of(path, {}) == (
        'shadow: takes one address per string; several go in a list: shadow = ["b:2", "c:3"], '
        f'got "b:2,c:3" (in {path})'
    )


def test_parse_address_words_the_advice_by_key():
    with pytest.raises(ConfigError, match=r'^--admin: must name the host, e.g. "0\.0\.0\.0:9901"'):
        parse_address(":9901", "--admin")
    with pytest.raises(ConfigError, match=r"^--shadow: takes one address per flag; repeat the flag"):
        parse_address("a:1,b:2", "--shadow")
