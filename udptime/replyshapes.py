"""
What the replies of udptime's services that answer any datagram look like:
how a service tells a reply of another such service (in a ping-pong loop)
from a request.

A text, Time, Daytime or Echo service answers whatever it is sent, so two of
them (or one and a copy elsewhere) can answer each other for ever once a
forged datagram starts them.  Each remembers what it sent to each peer for a
moment (L{udptime.policy.ReplyMemory}); a datagram from a peer it has just
answered that is its own reply coming back, or that has the shape of a
reply (L{looksLikeReply}), is a loop, not a request.  No client of these
protocols sends such a datagram as its request: udptime's client sends a
request word (C{time}, C{unix}, ...), an empty datagram or a random token.
"""

from __future__ import annotations

from typing import Final

from udptime import daytime, rfc868, text
from udptime.clock import ERA_SECONDS, NTP_UNIX_OFFSET

TIME_REPLY_SPAN: Final = 86400.0
"""How far (seconds) from the service's clock the time of a 4-byte datagram
may be for it to count as an RFC 868 reply: a peer's reply carries its
current time."""

_SHORTEST_LINE: Final = 2
_TIME_REPLY_SIZE: Final = rfc868.REPLY_SIZE


class _TimeReplySpan:
    """
    The RFC 868 times (seconds since 1900, modulo 2^32) within
    L{TIME_REPLY_SPAN} of the clock, worked out once a second: telling a
    4-byte request from a reply is then two comparisons.

    @ivar low: the earliest such time.
    @ivar high: the latest (below L{low} when the span wraps round the era).
    @ivar until: the Unix time up to which L{low} and L{high} hold.
    """

    __slots__ = ("high", "low", "until")

    def __init__(self) -> None:
        self.low = self.high = 0
        self.until = -1.0

    def includes(self, data: bytes, now: float) -> bool:
        """
        Whether the 4 bytes C{data} show a time within the span of C{now}.
        """
        if not 0.0 <= self.until - now <= 1.0:
            second = int(now // 1)
            span = int(TIME_REPLY_SPAN)
            self.low = (second - span + NTP_UNIX_OFFSET) % ERA_SECONDS
            self.high = (second + span + NTP_UNIX_OFFSET) % ERA_SECONDS
            self.until = second + 1.0
        seconds = int.from_bytes(data)
        low, high = self.low, self.high
        if low <= high:
            return low <= seconds <= high
        return seconds >= low or seconds <= high


_timeReplySpan = _TimeReplySpan()
_timeReply = _timeReplySpan.includes


def looksLikeReply(data: bytes, now: float) -> bool:
    """
    Whether C{data}, received at Unix time C{now}, has the shape of a reply
    of a service that answers any datagram: an RFC 868 reply (4 bytes whose
    time is within L{TIME_REPLY_SPAN} of C{now}), or one line ending with a
    line feed that is a text protocol reply (a time in one of its formats, a
    month name, an C{error:} line), with or without the token of its
    request, or a Daytime line.
    """
    if len(data) == _TIME_REPLY_SIZE:
        return _timeReply(data, now)
    if len(data) < _SHORTEST_LINE or data[-1] != 0x0A or len(data) > text.MAX_REQUEST:
        return False
    data = text.splitToken(data)[0]
    try:
        line = data.decode("utf-8").strip()
    except UnicodeDecodeError:
        return False
    if not line or "\n" in line:
        return False
    if line.startswith("error:"):
        return True
    if text.readTime(line)[1]["format"] != "unknown":
        return True
    try:
        return daytime.parseLine(line) is not None
    except ValueError:
        # A line in Daytime's format with an impossible date.
        return True
