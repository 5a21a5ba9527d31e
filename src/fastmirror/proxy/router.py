"""The mirror decision for one request, sans-I/O.

Given a validated request head and the current policy, say whether a copy goes to
the shadows, and if not, why (the reason is what the access log records). The
random draw comes from the core, or from a hash of a request header when sampling
must be consistent per user (the Envoy `shouldShadow(policy, runtime, stable_random)`
idea, with the key made explicit).
"""

from __future__ import annotations

from dataclasses import dataclass

from fastmirror.hotpath import key_hash, percent_to_ppm, random_u64, sample
from fastmirror.proxy.codec import RequestHead

# Why a request was not mirrored (access log `mirror` field).
SENT = "sent"
OFF = "off"
NOT_SAMPLED = "not-sampled"
METHOD = "method"
UPGRADE = "upgrade"
BODY_TOO_LARGE = "body-too-large"


@dataclass(frozen=True, slots=True)
class MirrorPolicy:
    """What gets mirrored; rebuilt on reload and on `PUT /mirror`, never per request."""

    ppm: int                        # sampled share, parts per million
    methods: frozenset[bytes] | None  # None: every method
    key_header: bytes | None        # sample by a hash of this header's value
    max_body: int                   # larger declared bodies are skipped
    has_shadows: bool

    @classmethod
    def build(cls, percent: float, methods: tuple[str, ...], key_header: str | None,
              max_body: int, has_shadows: bool) -> "MirrorPolicy":
        method_set = None if "ALL" in methods else frozenset(m.encode() for m in methods)
        key = key_header.lower().encode() if key_header else None
        return cls(percent_to_ppm(percent), method_set, key, max_body, has_shadows)


def mirror_decision(policy: MirrorPolicy, head: RequestHead) -> str:
    """Return SENT when the request is to be mirrored, else the reason it is not."""
    if not policy.has_shadows or policy.ppm == 0:
        return OFF
    if head.upgrade:
        return UPGRADE  # a tunnel cannot be replayed
    if policy.methods is not None and head.method not in policy.methods:
        return METHOD
    if policy.ppm < 1_000_000:
        draw = random_u64()
        if policy.key_header is not None:
            value = head.header(policy.key_header)
            if value is not None:
                draw = key_hash(value)
        if not sample(policy.ppm, draw):
            return NOT_SAMPLED
    if head.content_length > policy.max_body:
        return BODY_TOO_LARGE
    return SENT
