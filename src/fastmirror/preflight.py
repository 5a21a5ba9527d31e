"""What config.py cannot check without sockets or ssl, run at start-up and on every SIGHUP.

cli / supervisor / worker ─▶ config.load_config ─▶ preflight.check ─▶ the proxy.
config.py stays free of sockets and ssl; this module adds the checks that need them: no
upstream is the primary or the listen address under another name (resolve), and every
TLS file loads, the listener's key matching its certificate (upstream_tls, tls).  A
config that fails here is reported in one line and never applied: at start-up the exit
is 2; on SIGHUP the old settings stay.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from fastmirror.config import Config, load_config

Label = Callable[[str], tuple[str, str]]


def labeller(path: str | None, flags: Mapping[str, object]) -> Label:
    """key -> how an error names it and where it was given: ("--shadow", "") for a flag,
    ("shadow", " (in FILE)") for a key of the file."""

    def label(key: str) -> tuple[str, str]:
        return ("--" + key.replace("_", "-"), "") if key in flags or path is None else (key, f" (in {path})")

    return label


def check(config: Config, label: Label) -> None:
    """Raises ConfigError (one line) if config must not run. Blocks on DNS for up to
    resolve.RESOLVE_TIMEOUT: an event loop calls it in a thread."""
    from fastmirror.proxy.upstream_tls import client_context
    from fastmirror.resolve import check_aliases

    check_aliases(config, label)
    client_context(config)  # the upstream CA, client certificate and key load
    if config.tls_cert is not None:
        from fastmirror.proxy.tls import server_context

        server_context(config)  # the listener's key matches its certificate


def load_checked(path: str | None, flags: Mapping[str, object]) -> Config:
    """load_config then check: the config a SIGHUP may apply. Raises ConfigError."""
    config = load_config(path, dict(flags))
    check(config, labeller(path, flags))
    return config
