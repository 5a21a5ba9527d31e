"""Router: the mirror decision as a pure function of the head and the policy."""

from __future__ import annotations

import pytest

from fastmirror.proxy.codec import parse_request_head
from fastmirror.proxy.router import (
    BODY_TOO_LARGE, METHOD, NOT_SAMPLED, OFF, SENT, UPGRADE, MirrorPolicy, mirror_decision,
)


def policy(percent=100.0, methods=("GET", "HEAD", "OPTIONS"), key=None, max_body=1 << 20,
           shadows=True):
    return MirrorPolicy.build(percent, methods, key, max_body, shadows)


def req(raw: bytes):
    return parse_request_head(raw)


GET = req(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
POST = req(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 2000\r\n\r\n")


def test_defaults_mirror_safe_methods_only():
    assert mirror_decision(policy(), GET) == SENT
    assert mirror_decision(policy(), POST) == METHOD
    assert mirror_decision(policy(methods=("ALL",)), POST) == SENT


def test_off_without_shadows_or_at_zero():
    assert mirror_decision(policy(shadows=False), GET) == OFF
    assert mirror_decision(policy(percent=0), GET) == OFF


def test_upgrade_never_mirrored():
    ws = req(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n")
    assert mirror_decision(policy(), ws) == UPGRADE


def test_declared_body_over_cap_skipped():
    assert mirror_decision(policy(methods=("ALL",), max_body=1000), POST) == BODY_TOO_LARGE


def test_sampling_fraction():
    p = policy(percent=25)
    n = 20000
    hits = sum(mirror_decision(p, GET) == SENT for _ in range(n))
    # binomial: sd = sqrt(n p (1-p)) ~ 61; 6 sd is far beyond chance
    assert abs(hits - n * 0.25) < 6 * 61


@pytest.mark.parametrize("user", [b"alice", b"bob", b"carol", b"dave", b"erin"])
def test_consistent_sampling_by_key(user):
    p = policy(percent=50, key="X-User")
    r = req(b"GET / HTTP/1.1\r\nHost: x\r\nX-User: " + user + b"\r\n\r\n")
    decisions = {mirror_decision(p, r) for _ in range(50)}
    assert len(decisions) == 1 and decisions <= {SENT, NOT_SAMPLED}


def test_consistent_sampling_splits_users():
    p = policy(percent=50, key="x-user")
    sent = sum(
        mirror_decision(p, req(b"GET / HTTP/1.1\r\nHost: x\r\nx-user: u%d\r\n\r\n" % i)) == SENT
        for i in range(2000))
    assert 800 < sent < 1200
