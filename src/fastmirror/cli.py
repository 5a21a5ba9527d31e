"""Command line: the CONTRACT flags and the check-config, import-istio, demo, diffs and report subcommands.

cli ─▶ config ─▶ workers.  Every flag is declared here and nowhere else.  Flags
default to argparse.SUPPRESS, so the namespace holds only what the user typed
and config.load_config() lays exactly that over the file.  Any usage or config
error is one line on stderr and exit status 2, never a traceback.  This module
does not run the proxy itself: it hands the Config to fastmirror.ops.supervisor.run.
`diffs` and `report` only read a running proxy's admin endpoint over HTTP, so
they work the same against one process and a supervisor of N workers.
"""

from __future__ import annotations

import argparse
import dataclasses
import http.client
import importlib.metadata
import platform
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

import orjson

from fastmirror.config import (
    DURATION_FORMS,
    Config,
    ConfigError,
    DiffConfig,
    config_to_dict,
    route_warnings,
    load_config,
    parse_address,
    parse_duration,
)

PROG = "fastmirror"
# What load_config takes as overrides: Config fields, and `diff.<key>` for the [diff] table.
_FIELD_NAMES = frozenset(f.name for f in dataclasses.fields(Config)) | frozenset(
    f"diff.{f.name}" for f in dataclasses.fields(DiffConfig)
)
DEFAULT_ADMIN = "127.0.0.1:9901"
ADMIN_TIMEOUT = 5.0  # seconds per connect or read; a healthy admin answers in milliseconds


class _UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    """argparse whose errors come back as one line instead of usage + message + exit."""

    def error(self, message: str) -> NoReturn:
        raise _UsageError(message)


def _default(name: str) -> str:
    """A Config (or `diff.KEY`: DiffConfig) default as --help shows it, from config.py."""
    _, dot, key = name.partition(".")
    value = (DiffConfig.__dataclass_fields__[key] if dot else Config.__dataclass_fields__[name]).default
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, tuple):
        return ",".join(map(str, value))
    return str(value)


# Appended to each duration flag's help: the forms config._duration takes.
_DURATION = f"seconds, or {DURATION_FORMS}"

# (flag, metavar, help, extra add_argument kwargs). dest is the Config field name.
_CONTRACT_FLAGS: tuple[tuple[str, str | None, str, dict[str, Any]], ...] = (
    ("--listen", "HOST:PORT", f"address clients connect to (default: {_default('listen')})", {}),
    ("--primary", "URL",
     "upstream whose response the client gets: HOST:PORT, http://HOST[:PORT] or "
     "https://HOST[:PORT] (TLS, verified) (required unless in the config file)", {}),
    ("--shadow", "URL",
     "mirror target, as --primary; repeat the flag for several: --shadow a:1 --shadow b:2 "
     "(default: none)",
     {"action": "append"}),
    ("--mirror-percent", "P",
     'percentage of requests mirrored, 0..100, "10" or "10%%" '
     "(default: 100 when a shadow is given, else 0)", {}),
    ("--mirror-methods", "LIST",
     f'comma-separated methods to mirror; "ALL" mirrors every method '
     f"(default: {_default('mirror_methods')})", {}),
    ("--admin", "HOST:PORT",
     f'admin endpoint (/metrics, /healthz, /ready, /config, /mirror); "off" disables '
     f"(default: {_default('admin')})", {}),
    ("--workers", "N",
     f"worker processes sharing the port (SO_REUSEPORT); 0 = one per CPU; a dead worker "
     f"is restarted and keep-alive clients are rebalanced onto it "
     f"(default: {_default('workers')})", {}),
    ("--queue-size", "N",
     f"per shadow, requests waiting; when full the copy is dropped "
     f"(default: {_default('queue_size')})", {}),
    ("--shadow-timeout", "SECONDS",
     f"give up on a shadow's response after this; {_DURATION} "
     f"(default: {_default('shadow_timeout')})", {}),
    ("--shadow-concurrency", "N",
     f"per shadow, requests in flight (default: {_default('shadow_concurrency')})", {}),
    ("--primary-timeout", "SECONDS",
     f"no response from the primary by then: 504; {_DURATION} "
     f"(default: {_default('primary_timeout')})", {}),
    ("--max-mirror-body", "BYTES",
     f'larger bodies are not mirrored; suffixes like "512KiB", "1MiB" accepted '
     f"(default: {_default('max_mirror_body')} = 1 MiB)", {}),
    ("--no-shadow-host-suffix", None, 'do not append "-shadow" to Host in the shadow\'s copy',
     {"action": "store_const", "const": False, "dest": "shadow_host_suffix"}),
    ("--access-log", "PATH|-", 'JSON lines access log; "-" is stdout (default: off)', {}),
    ("--log-level", "LEVEL",
     f"debug, info, warning or error (default: {_default('log_level')})", {}),
    # TLS on the listener (issue 9)
    ("--tls-cert", "FILE",
     "PEM certificate (chain) the listener presents; with --tls-key the listener speaks "
     "TLS 1.2+ (ALPN http/1.1); SIGHUP re-reads it (default: plain HTTP)", {}),
    ("--tls-key", "FILE", "PEM private key of --tls-cert (not encrypted)", {}),
    ("--tls-client-ca", "FILE",
     "require client certificates signed by a CA in this PEM file (mTLS; default: none asked)", {}),
    # Routes and the mirror copy (issue 10); [[route]] and [[shadow]] tables are file-only
    ("--shadow-set-header", "'NAME: VALUE'",
     "set this header on every shadow's copy (never the primary's); repeatable", {"action": "append"}),
    ("--shadow-remove-header", "NAME",
     "remove this header, every instance in any case, from every shadow's copy "
     "(e.g. authorization, cookie); repeatable", {"action": "append"}),
    ("--mirror-max-rps", "N",
     'at most N copies a second per shadow; the rest are counted outcome="limited" '
     "(default: no cap)", {}),
    ("--mirror-for", "DURATION",
     f'mirroring turns itself off after this long ({DURATION_FORMS}); "off": never '
     "(default: off)", {}),
)  # fmt: skip

_EXTENSION_FLAGS: tuple[tuple[str, str | None, str, dict[str, Any]], ...] = (
    ("--connect-timeout", "SECONDS",
     f"upstream connect timeout; {_DURATION} (default: {_default('connect_timeout')})", {}),
    ("--drain-timeout", "SECONDS",
     f"on SIGTERM/SIGINT, time for requests in flight to finish; {_DURATION} "
     f"(default: {_default('drain_timeout')})", {}),
    ("--idle-timeout", "SECONDS",
     f"close idle client keep-alive connections after this; {_DURATION} "
     f"(default: {_default('idle_timeout')})", {}),
    ("--header-timeout", "SECONDS",
     f"a request head not complete this long after its first byte gets 408 and a close "
     f"(nginx client_header_timeout); {_DURATION} (default: {_default('header_timeout')})", {}),
    ("--max-connections", "N",
     f"client connections per worker; past it new connections wait in the listen "
     f"backlog (default: {_default('max_connections')})", {}),
    ("--max-head-size", "BYTES",
     f"larger request heads get 431 (default: {_default('max_head_size')} = 64 KiB)", {}),
    ("--mirror-key", "HEADER",
     "sample by a hash of this request header, so one value is always or never "
     "mirrored (default: random sampling)", {}),
    ("--secondary", "URL",
     "a second instance of the primary's version; sampled requests go there too, and "
     "what differs between it and the primary counts as noise (needs --diff)", {}),
    ("--tls-handshake-timeout", "SECONDS",
     f"close a client whose TLS handshake is not done this long after the accept "
     f"(default: {_default('tls_handshake_timeout')})", {}),
)  # fmt: skip

_UPSTREAM_TLS_FLAGS: tuple[tuple[str, str | None, str, dict[str, Any]], ...] = (
    ("--upstream-ca", "FILE",
     "CA certificates (PEM) that https:// upstreams are verified against "
     "(default: the system's)", {}),
    ("--upstream-cert", "FILE", "client certificate (PEM) for https:// upstreams that want one (mTLS)", {}),
    ("--upstream-key", "FILE", "the private key (PEM) of --upstream-cert", {}),
    ("--upstream-insecure", None,
     "do not verify https:// upstreams' certificates or names (a warning at start)",
     {"action": "store_const", "const": True}),
)  # fmt: skip

# The [diff] table's keys; dest "diff.KEY" is how load_config takes them.
_DIFF_FLAGS: tuple[tuple[str, str | None, str, dict[str, Any]], ...] = (
    ("--diff", None, "compare each shadow response with the primary's (default: off)",
     {"action": "store_const", "const": True, "dest": "diff.enabled"}),
    ("--diff-headers", "LIST",
     f"comma-separated headers compared (default: {_default('diff.headers')})", {}),
    ("--diff-ignore", "PATTERN",
     'ignore what this matches: "$.meta.*", "header:date", "status", "body"; repeatable',
     {"action": "append"}),
    ("--diff-array-as-set", "PATTERN",
     'compare the arrays at this JSON path ignoring order, e.g. "$.tags"; repeatable',
     {"action": "append"}),
    ("--diff-template", "TEMPLATE",
     'endpoint template tried before ids are collapsed, e.g. "/users/{name}"; repeatable',
     {"action": "append", "dest": "diff.templates"}),
    ("--diff-max-body", "BYTES",
     f"larger responses are not compared (skipped) (default: {_default('diff.max_body')} = 1 MiB)",
     {}),
    ("--diff-max-endpoints", "N",
     f'endpoints tracked; later ones fold into "other" (default: {_default("diff.max_endpoints")})',
     {}),
    ("--diff-max-pending", "N",
     f"response pairs waiting to be compared; more are dropped, counted "
     f"(default: {_default('diff.max_pending')})", {}),
    ("--diff-log", "PATH", "JSON-lines log with the full pair of each mismatch (default: off)", {}),
    ("--diff-log-max-bytes", "BYTES",
     f"rotate the diff log to PATH.1 past this size "
     f"(default: {_default('diff.log_max_bytes')} = 100 MiB)", {}),
)  # fmt: skip


def _dest(flag: str, table: object) -> str:
    name = flag[2:].replace("-", "_")
    return f"diff.{name.removeprefix('diff_')}" if table is _DIFF_FLAGS else name


def _config_flags() -> _Parser:
    """The config flags, shared by the proxy (top level) and check-config."""
    flags = _Parser(add_help=False)
    flags.add_argument("--config", metavar="FILE.toml", default=argparse.SUPPRESS,
                       help="TOML file whose keys are these flags' names with underscores; "
                       "flags override it")  # fmt: skip
    for title, table in (("proxy", _CONTRACT_FLAGS), ("extensions", _EXTENSION_FLAGS),
                         ("TLS to upstreams", _UPSTREAM_TLS_FLAGS),
                         ("response diffing", _DIFF_FLAGS)):  # fmt: skip
        group = flags.add_argument_group(title)
        for flag, metavar, text, extra in table:
            kwargs: dict[str, Any] = {"dest": _dest(flag, table), "help": text}
            if metavar is not None:
                kwargs["metavar"] = metavar
            group.add_argument(flag, default=argparse.SUPPRESS, **(kwargs | extra))
    return flags


def build_parser() -> argparse.ArgumentParser:
    flags = _config_flags()
    parser = _Parser(
        prog=PROG,
        parents=[flags],
        description="HTTP/1.1 traffic-mirroring proxy: every request goes to the primary, "
        "a sample is copied to the shadows, the client only ever sees the primary.",
    )
    parser.add_argument("--version", action="store_true", default=argparse.SUPPRESS,
                        help="print the version, the active core and library versions")  # fmt: skip
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    check = commands.add_parser(
        "check-config", parents=[flags],
        help="print the effective config (file and flags, or flags alone) as JSON, or the error",
    )
    # Optional: `check-config --primary a:1 --shadow b:2` checks a command line with no file.
    check.add_argument("file", metavar="FILE.toml", nargs="?", default=None)
    istio = commands.add_parser(
        "import-istio", help="print the fastmirror TOML for an Istio VirtualService's http routes "
        "(mirror, mirrors, mirrorPercentage); one warning line on stderr for each part that "
        "cannot be translated",
        description="Print on stdout the fastmirror TOML that mirrors what an Istio "
        "VirtualService's http routes say (mirror, mirrors, mirrorPercentage; the old "
        "mirror_percent): [[route]] per match (uri prefix, method exact), [[shadow]] per mirror, "
        "the first mirroring route's destination as primary. Each part that cannot be "
        "translated is one warning line on stderr. Exit 0 when TOML was printed, 2 and one "
        "line for a file that is missing, not YAML, or holds no VirtualService with http routes.",
    )
    istio.add_argument("file", metavar="FILE.yaml", help='the YAML file; "-" reads standard input')
    demo = commands.add_parser(
        "demo", help="built-in primary and shadow on loopback, traffic, side-by-side report"
    )
    # Passed on only when given, so fastmirror.demo.main keeps its own default.
    demo.add_argument("--duration", metavar="SECONDS", default=argparse.SUPPRESS,
                      help=f"how long to send traffic; {_DURATION} (default: 10)")  # fmt: skip
    diffs = commands.add_parser(
        "diffs", help="print a running proxy's response diffs per endpoint (from its admin endpoint)"
    )
    _admin_flag(diffs)
    diffs.add_argument("--format", choices=("text", "json", "html"), default="text",
                       help="text (default), json or html")  # fmt: skip
    report = commands.add_parser(
        "report", help="per shadow: latency, errors and diffs vs the primary, with a verdict; "
        "exit 0 pass, 1 fail, 2 error (a deploy gate)",
    )
    _admin_flag(report)
    for flag, metavar, text in _THRESHOLD_FLAGS:
        report.add_argument(flag, metavar=metavar, dest=flag[2:].replace("-", "_"),
                            default=argparse.SUPPRESS, help=text)  # fmt: skip
    report.add_argument("--format", choices=("text", "json"), default="text",
                        help="text (default) or json")  # fmt: skip
    return parser


# Each dest is a fastmirror.diffing.report.Thresholds field; values are parsed there.
_THRESHOLD_FLAGS: tuple[tuple[str, str, str], ...] = (
    ("--max-p99-ratio", "R", "fail when a shadow's P99 is more than R times the primary's"),
    ("--max-p50-ratio", "R", "fail when a shadow's P50 is more than R times the primary's"),
    ("--max-mismatch", "P", 'fail when more than P of compared responses differ: "0.1%%" or 0.001'),
    ("--max-error-rate-diff", "P",
     'fail when a shadow\'s error rate (5xx + no response) exceeds the primary\'s by more than P: '
     '"1%%" or 0.01'),
    ("--min-requests", "N", "fail unless each shadow answered at least N mirrored requests (default: 1)"),
)  # fmt: skip


def _admin_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--admin", metavar="HOST:PORT", dest="admin_address", default=DEFAULT_ADMIN,
                        help=f"the proxy's admin endpoint (default: {DEFAULT_ADMIN})")  # fmt: skip


def version_line() -> str:
    """`fastmirror 0.1.0 (core: cython) python 3.11.7 uvloop 0.21.0 h11 0.16.0`."""
    try:
        from fastmirror.hotpath import CORE_IMPL

        core = CORE_IMPL
    except ImportError:
        core = "unavailable"
    versions = " ".join(f"{name} {_dist_version(name)}" for name in ("uvloop", "h11"))
    return f"{PROG} {_own_version()} (core: {core}) python {platform.python_version()} {versions}"


def _own_version() -> str:
    import fastmirror

    version = getattr(fastmirror, "__version__", None)
    return str(version) if version else _dist_version(PROG, fallback="0.1.0")


def _dist_version(name: str, fallback: str = "unavailable") -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return fallback


def _fail(message: str, status: int = 2) -> int:
    print(f"{PROG}: error: {message}", file=sys.stderr)
    return status


class _AdminError(Exception):
    pass


def _fetch(admin: str, target: str) -> bytes:
    """GET target from the admin endpoint; http.client, so no proxy variable reroutes it.

    Raises:
        ConfigError: a bad HOST:PORT.
        _AdminError: unreachable, timed out, or an answer other than 200.
    """
    address = parse_address(admin, "--admin")
    conn = http.client.HTTPConnection(address.host, address.port, timeout=ADMIN_TIMEOUT)
    try:
        conn.request("GET", target)
        response = conn.getresponse()
        body = response.read()
    except (OSError, http.client.HTTPException) as exc:
        problem = "timed out" if isinstance(exc, TimeoutError) else getattr(exc, "strerror", None) or exc
        raise _AdminError(f"cannot reach the admin endpoint at {address}: {problem}") from None
    finally:
        conn.close()
    if response.status != 200:
        detail = body.decode("utf-8", "replace").strip()[:200]
        raise _AdminError(f"http://{address}{target}: {response.status} {response.reason} {detail}".rstrip())
    return body


def _fetch_json(admin: str, target: str) -> Any:
    body = _fetch(admin, target)
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        raise _AdminError(f"{target} on {admin}: not JSON (is that fastmirror's admin endpoint?)") from None


def _print_json(data: Any) -> None:
    sys.stdout.buffer.write(orjson.dumps(data, option=orjson.OPT_INDENT_2) + b"\n")


def _diffs_command(args: argparse.Namespace) -> int:
    if args.format == "json":
        _print_json(_fetch_json(args.admin_address, "/diffs"))
    else:
        sys.stdout.buffer.write(_fetch(args.admin_address, f"/diffs?format={args.format}"))
    return 0


def _report_command(args: argparse.Namespace) -> int:
    from fastmirror.diffing.report import ThresholdError, Thresholds, build_report, render_report_text

    fields = {f.name for f in dataclasses.fields(Thresholds)}
    try:
        thresholds = Thresholds.parse({k: v for k, v in vars(args).items() if k in fields})
    except ThresholdError as exc:
        return _fail(f"--{exc.key.replace('_', '-')}: {exc.problem}")
    metrics = _fetch(args.admin_address, "/metrics").decode("utf-8", "replace")
    diffs = _fetch_json(args.admin_address, "/diffs")
    try:
        report = build_report(metrics, diffs if isinstance(diffs, dict) else {}, thresholds)
    except (ValueError, KeyError, TypeError) as exc:
        raise _AdminError(f"cannot read the metrics or diffs of {args.admin_address}: {exc}") from None
    if args.format == "json":
        _print_json(report)
    else:
        sys.stdout.write(render_report_text(report))
    return 0 if report["verdict"] == "pass" else 1


_ADMIN_COMMANDS = {"diffs": _diffs_command, "report": _report_command}


def _import_istio(path: str) -> int:
    """`import-istio FILE.yaml`: the TOML on stdout, a warning line each on stderr; exit 0,
    or 2 and one line for a file that is unreadable, not YAML, or holds no VirtualService."""
    from fastmirror.istio import IstioError, load_documents, translate

    source = "<stdin>" if path == "-" else path
    try:
        if path == "-":
            data = sys.stdin.buffer.read()
        else:
            with open(path, "rb") as f:
                data = f.read()
    except OSError as e:
        return _fail(f"{source}: cannot read: {e.strerror or e}")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        return _fail(f"{source}: not UTF-8 text (byte {e.start})")
    try:
        result = translate(load_documents(text, source), source)
    except IstioError as e:
        return _fail(str(e))
    for warning in result.warnings:
        print(f"{PROG} import-istio: warning: {warning}", file=sys.stderr)
    sys.stdout.write(result.toml)
    return 0


_CHECK_WHAT = "check-config: give FILE.toml, or the flags alone (--primary HOST:PORT ...)"


def _load(args: argparse.Namespace) -> tuple[str | None, dict[str, object], Config]:
    """The file and flags as load_config takes them, the Config, and preflight.check
    (names resolved, TLS files loaded), which check-config and start-up both run."""
    path: str | None = getattr(args, "config", None)
    overrides = {k: v for k, v in vars(args).items() if k in _FIELD_NAMES}
    if args.command == "check-config":
        if path is not None and args.file is not None and path != args.file:
            raise ConfigError(f"--config: check-config takes the file once, got {path} and {args.file}")
        path = args.file or path
        if path is None and not overrides:
            raise ConfigError(_CHECK_WHAT)
    config = load_config(path, overrides)
    from fastmirror import preflight  # sockets and ssl: only once the config is valid

    preflight.check(config, preflight.labeller(path, overrides))
    return path, overrides, config


def main(argv: Sequence[str] | None = None) -> int:
    """Console-script entry point; returns the exit status."""
    try:
        args = build_parser().parse_args(argv)
    except _UsageError as e:
        return _fail(f"{e} (see {PROG} --help)")
    except SystemExit as e:  # --help
        return e.code if isinstance(e.code, int) else 0

    if getattr(args, "version", False):
        print(version_line())
        return 0
    if args.command == "demo":
        try:
            demo_args = {k: parse_duration(v, "--duration") for k, v in vars(args).items() if k == "duration"}
        except ConfigError as e:
            return _fail(str(e))
        from fastmirror.demo import main as demo_main

        return demo_main(**demo_args)
    if args.command == "import-istio":
        return _import_istio(args.file)
    if args.command in _ADMIN_COMMANDS:
        try:
            return _ADMIN_COMMANDS[args.command](args)
        except (ConfigError, _AdminError) as e:
            return _fail(str(e))

    try:
        path, overrides, config = _load(args)
    except ConfigError as e:
        return _fail(str(e))
    if args.command == "check-config":
        for warning in route_warnings(config):
            print(f"{PROG}: warning: {warning}", file=sys.stderr)
        sys.stdout.buffer.write(orjson.dumps(config_to_dict(config), option=orjson.OPT_INDENT_2))
        sys.stdout.buffer.write(b"\n")
        return 0

    from fastmirror.ops.supervisor import run

    # The overrides go along so that a SIGHUP reload lays the same flags over the new file.
    return run(config, path, overrides)
