"""TLS on the listener: the server SSLContext, its reload on SIGHUP, and the handshake.

accept ─▶ Handshake (this module) ─▶ DownstreamProtocol.  A TLS listener's
connections start with a Handshake protocol, which upgrades the accepted TCP
transport with loop.start_tls and hands the TLS transport to the real protocol
once the handshake is done. It does not speak HTTP, and the admin endpoint never
comes here (it stays plain HTTP).

Why start_tls and not create_server(ssl=...): uvloop's TLS server swallows a failed
handshake. Every failure is an OSError (ssl.SSLError for a plain-HTTP client or a bad
client certificate, ConnectionAbortedError for the timeout, ConnectionResetError for
an EOF) and SSLProtocol._fatal_error logs those only with the loop in debug mode,
never calls the loop's exception handler, and the protocol, which never got
connection_made, gets no connection_lost either (uvloop sslproto.pyx,
handles/streamserver.pyx). start_tls raises the failure to its caller, where it is
counted (fastmirror_downstream_tls_handshake_errors_total, see is_handshake_error)
and logged at debug.

The context is built once per worker and reloaded in place (load_cert_chain on the
same object): an SSL connection copies the certificate when it is created, so
connections already open keep theirs, new handshakes get the new one, and the
context's session-ticket keys survive the reload (clients resume as before).
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, cast

from fastmirror.config import Config, ConfigError

if TYPE_CHECKING:
    from fastmirror.proxy.context import ProxyContext

log = logging.getLogger("fastmirror.tls")

ALPN = ("http/1.1",)  # fastmirror speaks HTTP/1.1 only; an h2-only client gets no ALPN


def server_context(config: Config) -> ssl.SSLContext:
    """The listener's context: TLS 1.2+, ALPN http/1.1, client certificates if tls_client_ca.

    Raises:
        ConfigError: naming the key and the file: the key does not match the
            certificate, or a file that looked like PEM does not load.
    """
    assert config.tls_cert is not None and config.tls_key is not None
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)  # not create_default_context: no system CAs
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.options |= ssl.OP_NO_RENEGOTIATION | ssl.OP_CIPHER_SERVER_PREFERENCE
    ctx.set_alpn_protocols(list(ALPN))
    _load_pair(ctx, config.tls_cert, config.tls_key)
    if config.tls_client_ca is not None:
        try:
            ctx.load_verify_locations(cafile=config.tls_client_ca)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"tls_client_ca: cannot load {config.tls_client_ca}: {_reason(exc)}") from None
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def _load_pair(ctx: ssl.SSLContext, cert: str, key: str) -> None:
    try:
        ctx.load_cert_chain(cert, key)
    except ssl.SSLError as exc:
        if exc.reason == "KEY_VALUES_MISMATCH":
            raise ConfigError(f"tls_key: {key} does not match the certificate in {cert}") from None
        raise ConfigError(f"tls_cert: cannot load {cert} with the key {key}: {_reason(exc)}") from None
    except OSError as exc:
        raise ConfigError(f"tls_cert: cannot load {cert} or {key}: {exc.strerror or exc}") from None


def _reason(exc: BaseException) -> str:
    """An ssl error's short name (HTTP_REQUEST, TLSV1_ALERT_UNKNOWN_CA, ...) or its text."""
    reason = getattr(exc, "reason", None)
    return str(reason) if reason else (str(exc) or type(exc).__name__)


def handshake_problem(exc: BaseException) -> str:
    """Why a handshake failed, as one debug-log phrase."""
    if isinstance(exc, ConnectionAbortedError):
        return "handshake timeout"
    if isinstance(exc, ssl.SSLError):
        return _reason(exc)
    if isinstance(exc, (ConnectionResetError, BrokenPipeError)):
        return "client closed the connection"
    return _reason(exc)


def is_handshake_error(exc: BaseException) -> bool:
    """Whether a failed handshake counts in fastmirror_downstream_tls_handshake_errors_total.

    Not when the client just closed or reset the connection: a load balancer's TCP
    health check connects and closes, and whether its close lands before or after the
    handshake starts is timing. What is counted is what the server refused: not TLS,
    TLS < 1.2, a missing or untrusted client certificate, an alert, the timeout.
    """
    return not isinstance(exc, (ConnectionResetError, BrokenPipeError))


class ListenerTLS:
    """One worker's listener TLS: the context, the handshake timeout, the failed-handshake count.

    Handshakes count toward --max-connections (ProxyContext.begin_handshake)."""

    def __init__(self, config: Config, ctx: ProxyContext) -> None:
        self.context = server_context(config)
        self.client_ca = config.tls_client_ca
        self.timeout = config.tls_handshake_timeout
        self.ctx = ctx
        self.registry = ctx.registry
        self.pending: set[Handshake] = set()

    def wrap(self, factory: Callable[[], asyncio.Protocol]) -> Callable[[], asyncio.Protocol]:
        """A protocol factory whose connections do the TLS handshake first, then are factory's."""
        return lambda: Handshake(self, factory)

    def reload(self, config: Config) -> None:
        """SIGHUP: the new certificate for new handshakes; open connections keep theirs.

        Raises:
            ConfigError: a bad file; nothing changed (the old certificate stays).
        """
        fresh = server_context(config)  # checks the new files before the live context sees them
        self.timeout = config.tls_handshake_timeout
        if config.tls_client_ca != self.client_ca:
            # A CA store only grows (no way to remove the old CA): a new context.
            self.context, self.client_ca = fresh, config.tls_client_ca
            return
        assert config.tls_cert is not None and config.tls_key is not None
        try:
            self.context.load_cert_chain(config.tls_cert, config.tls_key)
        except (OSError, ssl.SSLError):
            # Replaced since `fresh` read it: the live context may hold half of the
            # new pair now, so `fresh`, which holds all of it, takes over.
            self.context = fresh

    def failed(self, exc: BaseException, peer: object) -> None:
        if is_handshake_error(exc):
            self.registry.tls_handshake_errors += 1
        log.debug("TLS handshake with %s failed: %s", peer, handshake_problem(exc))

    def close(self) -> None:
        """Drain: handshakes not done yet are dropped (they have no request in flight)."""
        for handshake in list(self.pending):
            handshake.abort()


class Handshake(asyncio.Protocol):
    """A new TLS connection until its handshake is done; then it belongs to factory()'s protocol.

    Also the TLS transport's protocol during the handshake, where start_tls may call
    connection_lost on it (a failed handshake): that is the awaited start_tls's to report.

    start_tls is driven by hand (_step) rather than by a Task, because its first step
    must run inside connection_made: uvloop starts reading right after connection_made
    returns, and a ClientHello read before start_tls has put its SSLProtocol in place
    would go to this protocol and be lost (the handshake would hang). Run now, start_tls
    swaps the protocol at once, and bytes read before the handshake begins wait in its
    incoming BIO. start_tls awaits one future, so the hand driving is a done-callback.
    """

    def __init__(self, tls: ListenerTLS, factory: Callable[[], asyncio.Protocol]) -> None:
        self.tls = tls
        self.factory = factory
        self.transport: asyncio.Transport | None = None
        self.coro: Coroutine[Any, Any, asyncio.Transport | None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's TCPTransport is not a subclass
        tls = self.tls
        if not tls.ctx.begin_handshake():  # over --max-connections (accepted in one batch)
            self.transport.abort()
            return
        tls.pending.add(self)
        self.coro = asyncio.get_running_loop().start_tls(
            self.transport, self, tls.context, server_side=True, ssl_handshake_timeout=tls.timeout)
        self._step()

    def _step(self, _waiter: object = None) -> None:
        if self.coro is None or self.transport is None:  # aborted (drain) while waiting
            return
        try:
            waiter = self.coro.send(None)
        except StopIteration as done:
            self._hand_over(done.value)
        except Exception as exc:  # ssl.SSLError (an OSError), the timeout's ConnectionAbortedError, ...
            self._finish(handed_over=False)
            self.tls.failed(exc, self.transport.get_extra_info("peername"))
            self.transport.abort()
        else:
            waiter.add_done_callback(self._step)

    def _hand_over(self, secure: asyncio.Transport | None) -> None:
        if secure is None or secure.is_closing():
            # The client closed before its first byte: start_tls returns a closed
            # transport (a TCP health check; see is_handshake_error).
            self._finish(handed_over=False)
            return
        self._finish(handed_over=True)  # and the protocol admits it in the same count
        protocol = self.factory()
        secure.set_protocol(protocol)
        protocol.connection_made(secure)

    def _finish(self, handed_over: bool) -> None:
        if self in self.tls.pending:
            self.tls.pending.discard(self)
            self.tls.ctx.end_handshake(handed_over)

    def abort(self) -> None:
        self._finish(handed_over=False)
        coro, self.coro = self.coro, None
        if coro is not None:
            coro.close()  # start_tls closes its TLS transport
        if self.transport is not None:
            self.transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        pass  # a failed handshake: start_tls raises it to _step
