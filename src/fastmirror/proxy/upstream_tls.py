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


def client_context(config: Config) -> ResumingContext | None:
    """The SSLContext for config's https:// upstreams; None when there are none.

    Raises:
        ConfigError: a CA, certificate or key file that ssl cannot load, naming the key.
    """
    if not any(address.tls for address in config.upstreams):
        return None
    ctx = ResumingContext(ssl.PROTOCOL_TLS_CLIENT)   # verifies certificate and name
    try:
        if config.upstream_ca is None:
            ctx.load_default_certs()
        else:
            ctx.load_verify_locations(cafile=config.upstream_ca)
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


class ResumingContext(ssl.SSLContext):
    """A client SSLContext that offers, in each new handshake, the last session the server
    gave for that host name (TLS resumption): a reconnect, after the upstream closed a
    pooled connection, then costs no certificate exchange. asyncio and uvloop make every
    TLS connection through wrap_bio, so this is where the session goes in. A session the
    server no longer knows just means a full handshake."""

    def __init__(self, protocol: ssl._SSLMethod) -> None:
        super().__init__()   # the protocol is taken by SSLContext.__new__
        self.sessions: dict[str, ssl.SSLSession] = {}   # host name -> its latest session

    def wrap_bio(self, incoming: ssl.MemoryBIO, outgoing: ssl.MemoryBIO,
                 server_side: bool = False, server_hostname: str | bytes | None = None,
                 session: ssl.SSLSession | None = None) -> ssl.SSLObject:
        if session is None and not server_side and isinstance(server_hostname, str):
            session = self.sessions.get(server_hostname)
        return super().wrap_bio(incoming, outgoing, server_side, server_hostname, session)

    def remember(self, sslobj: ssl.SSLObject | None) -> None:
        """Keep sslobj's session (TLS 1.3 tickets come after the handshake: call this
        once a response was read) for the next connection to its host."""
        if sslobj is None or sslobj.server_hostname is None:
            return
        session = sslobj.session
        if session is not None:
            self.sessions[sslobj.server_hostname] = session


def warn_if_insecure(config: Config) -> None:
    """The one line --upstream-insecure is promised to print at start."""
    if config.upstream_insecure and any(a.tls for a in config.upstreams):
        log.warning("--upstream-insecure: https upstreams' certificates and names are NOT "
                    "verified; anyone on the path can read and change the traffic")


def _reason(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLError) and exc.reason:
        return exc.reason.lower().replace("_", " ")
    return getattr(exc, "strerror", None) or str(exc)
