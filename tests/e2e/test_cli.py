"""cli: `python -m fastmirror` as a subprocess; errors are one line and exit 2, never a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

SRC = Path(__file__).resolve().parents[2] / "src"

CONTRACT_FLAGS = [
    "--config", "--listen", "--primary", "--shadow", "--mirror-percent", "--mirror-methods",
    "--admin", "--workers", "--queue-size", "--shadow-timeout", "--shadow-concurrency",
    "--primary-timeout", "--max-mirror-body", "--no-shadow-host-suffix", "--access-log",
    "--log-level", "--version",
]  # fmt: skip
EXTENSION_FLAGS = [
    "--connect-timeout", "--drain-timeout", "--idle-timeout", "--max-head-size", "--mirror-key",
    "--secondary",
]  # fmt: skip
DIFF_FLAGS = [
    "--diff", "--diff-headers", "--diff-ignore", "--diff-array-as-set", "--diff-template",
    "--diff-max-body", "--diff-max-endpoints", "--diff-max-pending", "--diff-log",
    "--diff-log-max-bytes",
]  # fmt: skip
FIELDS = [
    "listen", "primary", "shadow", "mirror_percent", "mirror_methods", "admin", "workers",
    "queue_size", "shadow_timeout", "shadow_concurrency", "primary_timeout", "max_mirror_body",
    "shadow_host_suffix", "access_log", "log_level", "connect_timeout", "drain_timeout",
    "idle_timeout", "max_head_size", "header_timeout", "max_connections", "mirror_key",
    "secondary", "diff", "upstream_ca", "upstream_cert", "upstream_key", "upstream_insecure",
    "tls_cert", "tls_key", "tls_client_ca", "tls_handshake_timeout",
    "route", "shadow_set_header", "shadow_remove_header", "mirror_max_rps", "mirror_for",
]  # fmt: skip
DIFF_FIELDS = [
    "enabled", "headers", "ignore", "array_as_set", "templates", "max_body", "max_endpoints",
    "max_pending", "max_differences", "log", "log_max_bytes",
]  # fmt: skip


@pytest.fixture(scope="module")
def env() -> dict[str, str]:
    """The environment for subprocesses: the installed package if there is one, else src/."""
    base = dict(os.environ)
    paths = [p for p in base.get("PYTHONPATH", "").split(os.pathsep) if p]
    paths = [p for p in paths if Path(p).resolve() != SRC]
    base["PYTHONPATH"] = os.pathsep.join(paths)
    probe = subprocess.run(
        [sys.executable, "-c", "import fastmirror.cli"], env=base, cwd="/", capture_output=True
    )
    if probe.returncode != 0:
        base["PYTHONPATH"] = os.pathsep.join([str(SRC), *paths])
    return base


@pytest.fixture
def fastmirror(env, tmp_path):
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "fastmirror", *args],
            env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60,
        )  # fmt: skip

    return run


@pytest.fixture
def config_file(tmp_path):
    def write(text: str) -> str:
        path = tmp_path / "fastmirror.toml"
        path.write_text(text)
        return str(path)

    return write


GOOD = """
listen = "0.0.0.0:8080"
primary = "10.0.0.5:9000"
shadow = ["10.0.0.6:9000"]
mirror_percent = 10
mirror_methods = ["GET", "HEAD"]
max_mirror_body = "512KiB"

[diff]
ignore = ["header:date"]
"""


def assert_one_line_error(result: subprocess.CompletedProcess[str], *words: str) -> str:
    assert result.returncode == 2, result
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("fastmirror: error: ")
    for word in words:
        assert word in lines[0]
    assert result.stdout == ""
    return lines[0]


def test_check_config_prints_every_field(fastmirror, config_file):
    result = fastmirror("check-config", config_file(GOOD))
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    data = orjson.loads(result.stdout)
    assert list(data) == FIELDS
    assert data["listen"] == "0.0.0.0:8080"
    assert data["shadow"] == ["10.0.0.6:9000"]
    assert data["mirror_percent"] == 10.0
    assert data["max_mirror_body"] == 524288
    assert data["admin"] == "127.0.0.1:9901"
    assert data["access_log"] is None
    assert list(data["diff"]) == DIFF_FIELDS
    assert data["diff"]["ignore"] == ["header:date"] and data["diff"]["enabled"] is False
    assert data["diff"]["max_body"] == 1048576 and data["diff"]["log"] is None
    assert data["secondary"] is None
    assert result.stdout.startswith('{\n  "listen"')  # indented


def test_check_config_flags_override_file(fastmirror, config_file):
    result = fastmirror(
        "check-config", config_file(GOOD), "--mirror-percent", "2.5", "--shadow", "a:1",
        "--shadow", "[::1]:2", "--no-shadow-host-suffix", "--mirror-methods", "ALL",
        "--admin", "off", "--access-log", "-", "--mirror-key", "X-User",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    data = orjson.loads(result.stdout)
    assert data["mirror_percent"] == 2.5
    assert data["shadow"] == ["a:1", "[::1]:2"]
    assert data["shadow_host_suffix"] is False
    assert data["mirror_methods"] == ["ALL"]
    assert data["admin"] is None and data["access_log"] == "-"
    assert data["mirror_key"] == "x-user"
    assert data["primary"] == "10.0.0.5:9000"


def test_check_config_diff_flags_override_table(fastmirror, config_file):
    result = fastmirror(
        "check-config", config_file(GOOD), "--diff", "--secondary", "10.0.0.8:9000",
        "--diff-ignore", "$.meta.*", "--diff-ignore", "status", "--diff-headers", "Content-Type,ETag",
        "--diff-array-as-set", "$.tags", "--diff-template", "/users/{user}", "--diff-max-body", "2MiB",
        "--diff-max-endpoints", "20", "--diff-max-pending", "64", "--diff-log", "/tmp/d.log",
        "--diff-log-max-bytes", "10MiB",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    data = orjson.loads(result.stdout)
    assert data["secondary"] == "10.0.0.8:9000"
    assert data["diff"] == {
        "enabled": True, "headers": ["content-type", "etag"], "ignore": ["$.meta.*", "status"],
        "array_as_set": ["$.tags"], "templates": ["/users/{user}"], "max_body": 2 << 20,
        "max_endpoints": 20, "max_pending": 64, "max_differences": 20, "log": "/tmp/d.log",
        "log_max_bytes": 10 << 20,
    }  # fmt: skip


def test_check_config_defaults(fastmirror, config_file):
    result = fastmirror("check-config", config_file('primary = "127.0.0.1:9000"\n'))
    data = orjson.loads(result.stdout)
    assert data["mirror_percent"] == 0.0 and data["shadow"] == []
    assert data["listen"] == "127.0.0.1:8080" and data["workers"] == 1


@pytest.mark.parametrize(
    ("text", "words"),
    [('primary = "a:1"\nmirror_percent = 150\n', ["mirror_percent", "0 to 100", "150"]),
     ('primary = "a:1"\nmirror_precent = 1\n', ["'mirror_precent'", "did you mean 'mirror_percent'"]),
     ('listen = "0.0.0.0:80"\n', ["primary: required"]),
     ('primary = "a:1"\nworkers = \n', ["invalid TOML", "line 2"]),
     ('primary = "a:1"\n[nginx]\nx = 1\n', ["unknown section 'nginx'"]),
     ('primary = "a:1"\nshadow_host_suffix = "no"\n', ["shadow_host_suffix", "true or false"]),
     ('primary = "a:1"\n[diff]\nignor = []\n', ["'diff.ignor'", "did you mean 'diff.ignore'"]),
     ('primary = "a:1"\n[diff]\nmax_pending = 0\n', ["diff.max_pending", ">= 1"]),
     ('primary = "a:1"\nsecondary = "b:2"\n', ["secondary: needs diffing on"])],
)  # fmt: skip
def test_check_config_bad_file(fastmirror, config_file, text, words):
    assert_one_line_error(fastmirror("check-config", config_file(text)), *words)


def test_check_config_nonexistent_file(fastmirror, tmp_path):
    result = fastmirror("check-config", str(tmp_path / "nope.toml"))
    assert_one_line_error(result, "nope.toml", "No such file")


@pytest.mark.parametrize(
    ("args", "words"),
    [(["--mirror-percent", "abc"], ["--mirror-percent", '"abc"']),
     (["--listen", "nope"], ["--listen", "HOST:PORT"]),
     (["--workers", "-1"], ["--workers"]),
     (["--max-mirror-body", "1 parsec"], ["--max-mirror-body"]),
     (["--log-level", "loud"], ["--log-level", "debug, info, warning, error"]),
     (["--bogus"], ["--bogus"]),
     (["--listen"], ["--listen", "expected one argument"]),
     (["--diff-max-body", "0"], ["--diff-max-body"]),
     (["--diff-ignore", "meta"], ["--diff-ignore", "meta"]),
     (["--diff-headers", "a b"], ["--diff-headers"]),
     (["--diff-template", "users"], ["--diff-template", "must start with /"]),
     (["--diff-log", "-"], ["--diff-log"]),
     (["--secondary", "10.0.0.8:9000"], ["--secondary", "needs diffing on"]),
     (["--diff", "--shadow", "10.0.0.6:9000", "--secondary", "10.0.0.6:9000"],
      ["--secondary", "must not be a shadow"])],
)  # fmt: skip
def test_bad_flag_value(fastmirror, config_file, args, words):
    assert_one_line_error(fastmirror("check-config", config_file(GOOD), *args), *words)
    # The same flags without a subcommand fail before the proxy starts.
    assert_one_line_error(fastmirror("--primary", "a:1", *args), *words)


def test_no_primary_anywhere(fastmirror):
    assert_one_line_error(fastmirror(), "primary: required")


def test_config_flag_error_names_file(fastmirror, config_file):
    path = config_file('primary = "a:1"\nqueue_size = 0\n')
    assert_one_line_error(fastmirror("--config", path), "queue_size", path)


def test_check_config_requires_file(fastmirror):
    assert_one_line_error(fastmirror("check-config"), "FILE.toml")


def test_unknown_command(fastmirror):
    assert_one_line_error(fastmirror("frobnicate"), "frobnicate")


def test_demo_bad_duration(fastmirror):
    assert_one_line_error(fastmirror("demo", "--duration", "soon"), "--duration")
    assert_one_line_error(fastmirror("demo", "--duration", "0"), "--duration")


def test_version_names_the_core(fastmirror):
    result = fastmirror("--version")
    assert result.returncode == 0, result.stderr
    line = result.stdout.strip()
    assert "\n" not in line
    assert line.startswith("fastmirror 0.1.0 (core: ")
    assert any(f"(core: {core})" in line for core in ("cython", "python", "unavailable"))
    assert f"python {sys.version_info.major}.{sys.version_info.minor}" in line
    assert "uvloop " in line and "h11 " in line


def test_help_lists_every_flag_with_defaults(fastmirror):
    result = fastmirror("--help")
    assert result.returncode == 0, result.stderr
    for flag in CONTRACT_FLAGS + EXTENSION_FLAGS + DIFF_FLAGS:
        assert flag in result.stdout, flag
    text = " ".join(result.stdout.split())  # undo argparse's line wrapping
    for default in ("127.0.0.1:8080", "127.0.0.1:9901", "GET,HEAD,OPTIONS", "1024", "(default: 5)",
                    "(default: 64)", "(default: 15)", "1 MiB", "(default: info)"):  # fmt: skip
        assert default in text, default
    for command in ("check-config", "demo", "diffs", "report"):
        assert command in result.stdout, command
    assert "100 MiB" in text  # --diff-log-max-bytes


def test_check_config_help_lists_flags(fastmirror):
    result = fastmirror("check-config", "--help")
    assert result.returncode == 0
    for flag in CONTRACT_FLAGS[:-1] + EXTENSION_FLAGS + DIFF_FLAGS:  # --version is top-level only
        assert flag in result.stdout, flag


# --- issue 9: values as users write them ------------------------------------------------


def test_check_config_with_flags_alone(fastmirror, config_file):
    args = ["--primary", "127.0.0.1:1", "--shadow", "127.0.0.1:2"]
    result = fastmirror("check-config", *args)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    data = orjson.loads(result.stdout)
    assert list(data) == FIELDS
    assert (data["primary"], data["shadow"], data["mirror_percent"]) == ("127.0.0.1:1", ["127.0.0.1:2"], 100.0)
    # What it prints is what it prints for a file saying the same.
    same = fastmirror("check-config", config_file('primary = "127.0.0.1:1"\nshadow = ["127.0.0.1:2"]\n'))
    assert same.returncode == 0 and same.stdout == result.stdout


def test_check_config_flags_alone_bad_flag(fastmirror):
    result = fastmirror("check-config", "--primary", "127.0.0.1:1", "--shadow-timeout", "5x")
    assert_one_line_error(result, "--shadow-timeout", '"500ms"', '"5x"')
    assert_one_line_error(fastmirror("check-config", "--shadow", "127.0.0.1:2"), "primary: required")


def test_check_config_value_forms(fastmirror, config_file):
    path = config_file('primary = "127.0.0.1:1"\nshadow = ["127.0.0.1:2"]\nmirror_percent = "10%"\n'
                       'idle_timeout = "2m"\n')  # fmt: skip
    result = fastmirror("check-config", path, "--shadow-timeout", "500ms", "--drain-timeout", "1m30s")
    assert result.returncode == 0, result.stderr
    data = orjson.loads(result.stdout)
    assert (data["mirror_percent"], data["idle_timeout"]) == (10.0, 120.0)
    assert (data["shadow_timeout"], data["drain_timeout"]) == (0.5, 90.0)
    result = fastmirror("check-config", "--primary", "127.0.0.1:1", "--mirror-percent", "2.5%")
    assert orjson.loads(result.stdout)["mirror_percent"] == 2.5


def test_comma_separated_shadows_say_repeat_the_flag(fastmirror):
    result = fastmirror("check-config", "--primary", "127.0.0.1:1", "--shadow", "a:1,b:2")
    line = assert_one_line_error(result, "--shadow", "repeat the flag", "--shadow a:1 --shadow b:2")
    assert "IPv6" not in line


def test_upstream_without_host_gets_upstream_advice(fastmirror):
    line = assert_one_line_error(fastmirror("check-config", "--primary", ":8080"), "--primary", "127.0.0.1:8080")
    assert "0.0.0.0" not in line


@pytest.mark.parametrize("command", [["check-config"], []])
def test_shadow_that_is_the_primary_by_another_name(fastmirror, command):
    # Start-up refuses it too, before anything listens (the listen port is not even free-checked).
    result = fastmirror(*command, "--primary", "localhost:8090", "--shadow", "127.0.0.1:8090")
    assert_one_line_error(result, "--shadow", "127.0.0.1:8090", "localhost:8090", "under another name")


def test_primary_behind_a_wildcard_listen_address_is_a_loop(fastmirror):
    result = fastmirror("--listen", "0.0.0.0:8091", "--primary", "127.0.0.1:8091")
    assert_one_line_error(result, "--primary", "0.0.0.0:8091 listens on 127.0.0.1:8091 too", "a loop")


def test_shadow_by_another_name_in_the_file(fastmirror, config_file):
    path = config_file('primary = "127.0.0.1:9000"\nshadow = ["localhost:9000"]\n')
    assert_one_line_error(fastmirror("check-config", path), "shadow: localhost:9000", f"(in {path})")


def test_primary_that_is_the_listen_address_by_another_name(fastmirror):
    result = fastmirror("check-config", "--primary", "localhost:8080")  # listen: 127.0.0.1:8080
    assert_one_line_error(result, "--primary: localhost:8080 is the listen address 127.0.0.1:8080", "a loop")


def test_help_names_the_value_forms(fastmirror):
    text = " ".join(fastmirror("--help").stdout.split())
    for flag in ("--shadow-timeout", "--primary-timeout", "--connect-timeout", "--drain-timeout",
                 "--idle-timeout", "--header-timeout"):  # fmt: skip
        assert '"500ms", "5s", "2m"' in text.split(f"{flag} SECONDS", 2)[2][:200], flag
    assert '"10" or "10%"' in text
    assert "--shadow a:1 --shadow b:2" in text
    assert "flags alone" in text  # check-config's line
