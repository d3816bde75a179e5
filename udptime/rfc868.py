"""
Codec for the Time Protocol, RFC 868, over UDP (sans I/O).

A client sends a datagram (RFC 868: an empty one; the server answers any
datagram and ignores what it holds).  The reply is exactly L{REPLY_SIZE}
bytes: the time as an unsigned 32-bit big-endian number of seconds since
1900-01-01 00:00:00 UTC, modulo 2^32.  The count wraps at 2036-02-07
06:28:16 UTC (the start of NTP era 1), so a client reads the value in the
era nearest to its own clock, as RFC 5905 section 6 does for NTP: the
answer is right as long as the two clocks are within 68 years.

A server that cannot determine the time makes no reply (RFC 868); that
decision belongs to the server (see L{udptime.clock.TimeKnown}), not to this
codec.  The resolution is one second: the server truncates toward the past.
"""

from __future__ import annotations

import struct
from datetime import UTC, datetime
from typing import Final

from udptime.clock import ntpSecondsToUnix, unixToNTPSeconds
from udptime.reading import (
    UNAUTHENTICATED,
    EmptyRequest,
    Reading,
    ReplyMismatch,
    estimateOffset,
)

REPLY_SIZE: Final = 4
"""Length of every reply in bytes."""

DEFAULT_PORT: Final = 37
"""The Time Protocol's registered port."""

RESOLUTION: Final = 1.0
"""Resolution of the time in a reply, in seconds."""

_SECONDS = struct.Struct("!I")


def buildReply(now: float) -> bytes:
    """
    The reply datagram at Unix time C{now}: 4 bytes, big-endian seconds since
    1900 modulo 2^32.
    """
    return _SECONDS.pack(unixToNTPSeconds(now))


def parseReply(data: bytes) -> int:
    """
    The 32-bit seconds value of a reply datagram.

    @raise ReplyMismatch: C{data} is not exactly L{REPLY_SIZE} bytes long.
    """
    if len(data) != REPLY_SIZE:
        raise ReplyMismatch(f"an RFC 868 reply is {REPLY_SIZE} bytes, not {len(data)}")
    seconds: int = _SECONDS.unpack(data)[0]
    return seconds


class TimeClientCodec(EmptyRequest):
    """
    The client side of RFC 868 over UDP (a L{udptime.reading.ClientCodec}).

    The request is an empty datagram.  The server truncates its time to the
    second, so the result's offset takes the middle of that second against
    the midpoint of our send and receive times (L{estimateOffset}): it is
    unbiased, and good to half a second plus half the delay
    (C{details["resolution"]}).
    """

    name = "time"
    defaultPort = DEFAULT_PORT

    def parseReply(
        self, data: bytes, state: object, sentAt: float, receivedAt: float
    ) -> Reading:
        """
        Read a 4-byte reply received at Unix time C{receivedAt}.

        @raise ReplyMismatch: the reply is not exactly 4 bytes long.
        """
        seconds = parseReply(data)
        serverTime = ntpSecondsToUnix(seconds, (sentAt + receivedAt) / 2)
        return Reading(
            text=datetime.fromtimestamp(serverTime, UTC).isoformat(),
            serverTime=float(serverTime),
            offset=estimateOffset(serverTime, sentAt, receivedAt, RESOLUTION),
            details={
                "seconds": seconds,
                "resolution": RESOLUTION,
                UNAUTHENTICATED: True,
            },
        )
