"""TLS to https:// upstreams: the one client SSLContext every upstream pool connects with.

Verification is on by default, as curl and Go do: the system's CAs (or --upstream-ca),
and the certificate must name the URL's host, which is also the SNI (never the Host
header a request carries, so a shadow's `-shadow` Host cannot change it). ALPN offers
only http/1.1. --upstream-cert/--upstream-key present a client certificate (mTLS);
--upstream-insecure turns verification off, with a warning. Built once per config load.
"""

from __future__ import annotations

import logging
import ssl

from fastmirror.config import Config, ConfigError

log = logging.getLogger("fastmirror")


def client_context(config: Config) -> ssl.SSLContext | None:
    """The SSLContext for config's https:// upstreams; None when there are none.

    Raises:
        ConfigError: a CA, certificate or key file that ssl cannot load, naming the key.
    """
    if not any(address.tls for address in config.upstreams):
        return None
    try:
        ctx = ssl.create_default_context(cafile=config.upstream_ca)
    except (ssl.SSLError, OSError) as exc:
        raise ConfigError(f"upstream_ca: cannot load {config.upstream_ca}: {_reason(exc)}") from None
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_alpn_protocols(["http/1.1"])
    if config.upstream_cert is not None:
        try:
            ctx.load_cert_chain(config.upstream_cert, config.upstream_key)
        except (ssl.SSLError, OSError) as exc:
            raise ConfigError(f"upstream_cert: cannot load {config.upstream_cert} with "
                              f"{config.upstream_key}: {_reason(exc)}") from None
    if config.upstream_insecure:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


def warn_if_insecure(config: Config) -> None:
    """The one line --upstream-insecure is promised to print at start."""
    if config.upstream_insecure and any(a.tls for a in config.upstreams):
        log.warning("--upstream-insecure: https upstreams' certificates and names are NOT "
                    "verified; anyone on the path can read and change the traffic")


def _reason(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLError) and exc.reason:
        return exc.reason.lower().replace("_", " ")
    return getattr(exc, "strerror", None) or str(exc)
