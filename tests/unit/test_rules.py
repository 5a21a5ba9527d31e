"""The data plane's decisions (proxy.rules), each as a table."""

from __future__ import annotations

import pytest

from fastmirror.proxy.rules import (
    CLIENT_TIMEOUT,
    HEAD_TIMEOUT,
    IDLE,
    PRIMARY_TIMEOUT,
    closes_after,
    deadline_passed,
    keep_client,
    mirror_outcome,
    retry_on_new_connection,
    retry_safe,
    reuse_upstream,
)


@pytest.mark.parametrize(("method", "has_body", "safe"), [
    (b"GET", False, True), (b"HEAD", False, True), (b"PUT", False, True),
    (b"DELETE", False, True), (b"OPTIONS", False, True), (b"TRACE", False, True),
    (b"GET", True, False),     # a body cannot be replayed
    (b"POST", False, False), (b"PATCH", False, False), (b"get", False, False),
])
def test_retry_safe(method: bytes, has_body: bool, safe: bool) -> None:
    assert retry_safe(method, has_body) is safe


@pytest.mark.parametrize(("reused", "answered", "safe", "retry"), [
    (True, False, True, True),
    (False, False, True, False),   # a new connection failing is the primary's answer
    (True, True, True, False),     # part of the answer went out: too late
    (True, False, False, False),   # not safe to send twice
])
def test_retry_on_new_connection(reused: bool, answered: bool, safe: bool, retry: bool) -> None:
    assert retry_on_new_connection(reused, answered, safe) is retry


@pytest.mark.parametrize(("close", "incomplete", "upgrade", "reuse"), [
    (False, False, False, True),
    (True, False, False, False), (False, True, False, False), (False, False, True, False),
])
def test_reuse_upstream(close: bool, incomplete: bool, upgrade: bool, reuse: bool) -> None:
    assert reuse_upstream(close, incomplete, upgrade) is reuse


@pytest.mark.parametrize(("said_close", "incomplete", "keep_alive", "until_close", "keep"), [
    (False, False, True, False, True),
    (True, False, True, False, False),
    (False, True, True, False, False),
    (False, False, False, False, False),
    (False, False, True, True, False),
])
def test_keep_client(said_close: bool, incomplete: bool, keep_alive: bool, until_close: bool,
                     keep: bool) -> None:
    assert keep_client(said_close, incomplete, keep_alive, until_close) is keep


@pytest.mark.parametrize(("keep_alive", "body_incomplete", "gone", "closes"), [
    (True, False, False, False),
    (False, False, False, True), (True, True, False, True), (True, False, True, True),
])
def test_closes_after(keep_alive: bool, body_incomplete: bool, gone: bool, closes: bool) -> None:
    assert closes_after(keep_alive, body_incomplete, gone) is closes


@pytest.mark.parametrize(("exchange", "partial", "paused", "body", "what"), [
    (False, False, False, False, IDLE),
    (False, True, False, False, HEAD_TIMEOUT),
    (True, False, True, False, CLIENT_TIMEOUT),    # the client stopped reading
    (True, False, False, True, CLIENT_TIMEOUT),    # the client stopped sending its body
    (True, False, False, False, PRIMARY_TIMEOUT),
    (True, True, False, False, PRIMARY_TIMEOUT),   # the next head is the client's, not late
])
def test_deadline_passed(exchange: bool, partial: bool, paused: bool, body: bool, what: str) -> None:
    assert deadline_passed(exchange, partial, paused, body) == what


@pytest.mark.parametrize(("outcomes", "logged"), [
    ([], "sent"),
    (["sent"], "sent"),
    (["dropped", "dropped"], "dropped"),
    (["sent", "dropped", "sent"], "sent,dropped,sent"),
])
def test_mirror_outcome(outcomes: list[str], logged: str) -> None:
    assert mirror_outcome(outcomes, "sent") == logged
