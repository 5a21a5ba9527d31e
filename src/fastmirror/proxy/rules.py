"""The data plane's decisions about one exchange, as pure functions.

Which requests may be sent again, whether an upstream connection and the client
connection outlive a response, what a passed deadline means, how the outcomes of a
copy's shadows read in the access log. The I/O classes (downstream, exchange, shadow)
only ask; they never decide this themselves. No I/O here, and no state.
"""

from __future__ import annotations

from collections.abc import Sequence

# RFC 9110 §9.2.2: safe to send again when the first try may never have arrived.
IDEMPOTENT = frozenset((b"GET", b"HEAD", b"OPTIONS", b"TRACE", b"PUT", b"DELETE"))


def retry_safe(method: bytes, has_body: bool) -> bool:
    """A request that may be sent a second time: idempotent, and no body to replay."""
    return method in IDEMPOTENT and not has_body


def retry_on_new_connection(reused: bool, answered: bool, safe: bool) -> bool:
    """A pooled connection ended before any answer: the upstream closed it as we reused
    it (its keep-alive timeout raced our request), so the request cannot have been
    processed; send it once more on a new connection (nginx proxy_next_upstream,
    RFC 9112 §9.3.1). Not after a retry: that one ran on a new connection.
    """
    return reused and not answered and safe


def reuse_upstream(response_close: bool, request_incomplete: bool, upgrade: bool) -> bool:
    """The primary's connection may serve the next request: the response did not end
    it, the whole request was sent (an early answer leaves the rest of a body unsent),
    and it was not an Upgrade request (the upstream may have switched protocols)."""
    return not (response_close or request_incomplete or upgrade)


def keep_client(said_close: bool, request_incomplete: bool, keep_alive: bool,
                until_close: bool) -> bool:
    """The client connection reads another request after this response.

    Not when the head said `connection: close` (kept to even if the reason went away),
    when the request body was not all read (an early answer: the rest would be read as
    a request), when this was to be the last request (keep_alive: Connection: close,
    HTTP/1.0, a drain, rebalancing), or when the body ended with the primary's close
    (only our close can delimit it for the client).
    """
    return not (said_close or request_incomplete or until_close) and keep_alive


def closes_after(keep_alive: bool, body_incomplete: bool, client_gone: bool) -> bool:
    """Decided while the response head may still go out: the client connection ends
    after this response, so the head must say `connection: close`. client_gone: the
    client half-closed and no further request is buffered to answer."""
    return not keep_alive or body_incomplete or client_gone


# What a passed deadline means (DownstreamProtocol.sweep).
IDLE = "idle"                  # no request: close quietly (keep-alive timeout)
HEAD_TIMEOUT = "head"          # a head begun, not finished in header_timeout: 408
CLIENT_TIMEOUT = "client"      # the client stopped sending its body or reading: 408
PRIMARY_TIMEOUT = "primary"    # the primary did not answer in primary_timeout: 504


def deadline_passed(exchange: bool, partial_head: bool, writing_paused: bool,
                    body_incomplete: bool) -> str:
    """Whose fault a passed deadline is, and so what the client gets."""
    if not exchange:
        return HEAD_TIMEOUT if partial_head else IDLE
    if writing_paused or body_incomplete:
        return CLIENT_TIMEOUT
    return PRIMARY_TIMEOUT


def mirror_outcome(outcomes: Sequence[str], sent: str) -> str:
    """The access log's `mirror` field for a copy given to every shadow: their common
    outcome ("sent", "dropped", "shadow-down"), or each in shadow order when they differ."""
    if not outcomes:
        return sent
    if outcomes.count(outcomes[0]) != len(outcomes):
        return ",".join(outcomes)
    return outcomes[0]
