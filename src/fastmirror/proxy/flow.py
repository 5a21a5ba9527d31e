"""Flow control of a client connection's reading (uvicorn's flow_control.py idea).

Several things can each want the client not read for now: the primary not taking the
request body fast enough, body bytes waiting for the primary's connection, a pipeline
of later requests past its limit. Reading stops at the first and resumes only when
none is left, so one reason going away never lets the others' bytes in.
"""

from __future__ import annotations

import asyncio

# Reasons, as bits.
UPSTREAM_FULL = 1   # the primary is not taking the request body fast enough
PENDING = 2         # still connecting, and enough of the body is waiting
PIPELINE = 4        # the next requests are buffered while this one runs


class ReadFlow:
    """The reasons a transport is not being read; the transport reads when there are none."""

    __slots__ = ("transport", "blocked")

    def __init__(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        self.blocked = 0

    def block(self, reason: int) -> None:
        if not self.blocked and not self.transport.is_closing():
            self.transport.pause_reading()
        self.blocked |= reason

    def unblock(self, reasons: int) -> None:
        if self.blocked and not self.blocked & ~reasons:
            self.blocked = 0
            if not self.transport.is_closing():
                self.transport.resume_reading()
        else:
            self.blocked &= ~reasons
