"""
Codec for the Daytime Protocol, RFC 867, over UDP (sans I/O).

Any datagram, whatever it holds, gets one line of ASCII with the current
date and time.  RFC 867 leaves the syntax free; udptime answers in UTC in
the format of xinetd's built-in daytime service, which a person and a
program can both read without knowing the server's time zone::

    21 NOV 2026 20:53:39 UTC\\r\\n

that is: the day of the month (two digits), the upper-case English month
abbreviation, the four-digit year, the time as C{HH:MM:SS} (truncated to
the second), the zone C{UTC}, and CR LF.  The reply is always
L{REPLY_SIZE} bytes.

The client reads that format, and the same with a weekday in front and a
numeric zone (RFC 2822 style, C{Sat, 21 Nov 2026 20:53:39 +0000}), and
NIST's daytime format (C{61000 26-11-21 20:53:39 00 0 0 50.0 UTC(NIST) *}).
A reply in any other format, or naming a zone abbreviation it cannot map
to a UTC offset, still counts as an answer, with no server time.
"""

from __future__ import annotations

import calendar
import re
from datetime import UTC, datetime
from typing import Final

from udptime.reading import (
    UNAUTHENTICATED,
    EmptyRequest,
    Reading,
    ReplyMismatch,
    estimateOffset,
)

DEFAULT_PORT: Final = 13
"""The Daytime Protocol's registered port."""

RESOLUTION: Final = 1.0
"""Resolution of the time in a reply, in seconds."""

REPLY_SIZE: Final = 26
"""Length of every reply udptime's server sends, in bytes."""

MAX_REPLY: Final = 512
"""Longest reply the client reads as a daytime line."""

MONTHS: Final = (
    "JAN",
    "FEB",
    "MAR",
    "APR",
    "MAY",
    "JUN",
    "JUL",
    "AUG",
    "SEP",
    "OCT",
    "NOV",
    "DEC",
)

_MONTH_NUMBERS: Final = {name: number for number, name in enumerate(MONTHS, 1)}

_UTC_NAMES: Final = frozenset({"UTC", "GMT", "UT", "Z"})

_DATE_LINE = re.compile(
    r"(?:(?:MON|TUE|WED|THU|FRI|SAT|SUN),?\s+)?"
    r"(\d{1,2})\s+([A-Z]{3})\s+(\d{4})\s+(\d\d):(\d\d):(\d\d)"
    r"(?:\s+(\S+))?\Z",
    re.IGNORECASE,
)
_NIST_LINE = re.compile(
    r"\d{5}\s+(\d\d)-(\d\d)-(\d\d)\s+(\d\d):(\d\d):(\d\d)\s.*\sUTC\(NIST\)"
)
_NUMERIC_ZONE = re.compile(r"([+-])(\d\d)(\d\d)\Z")


def buildReply(now: float) -> bytes:
    """
    The reply line at Unix time C{now}, e.g. C{b"21 NOV 2026 20:53:39 UTC\\r\\n"}.

    @raise ValueError: C{now} is outside the years 1 to 9999, which the
        format cannot show.
    """
    try:
        moment = datetime.fromtimestamp(now // 1, UTC)
    except (OverflowError, OSError) as error:
        raise ValueError(f"time {now!r} cannot be shown as a date") from error
    return (
        f"{moment.day:02d} {MONTHS[moment.month - 1]} {moment.year:04d} "
        f"{moment.hour:02d}:{moment.minute:02d}:{moment.second:02d} UTC\r\n"
    ).encode("ascii")


def readLine(data: bytes) -> str:
    """
    The daytime line of a reply datagram, without surrounding white space.

    @raise ReplyMismatch: C{data} is not one line of printable ASCII (or is
        empty, or longer than L{MAX_REPLY}).
    """
    if len(data) > MAX_REPLY:
        raise ReplyMismatch(f"a {len(data)}-byte datagram is no daytime line")
    try:
        line = data.decode("ascii").strip()
    except UnicodeDecodeError:
        raise ReplyMismatch("a daytime reply is ASCII text") from None
    if not line or not line.isprintable():
        raise ReplyMismatch("a daytime reply is one line of printable text")
    return line


def parseLine(line: str) -> float | None:
    """
    The Unix time a daytime line shows, or L{None} when its format or zone
    is not one this module knows.  A leap second (C{23:59:60}) reads as the
    second after it.

    @raise ReplyMismatch: the line has a known format but an impossible date
        or time.
    """
    match = _DATE_LINE.match(line)
    if match is not None:
        day, monthName, year, hour, minute, second, zone = match.groups()
        month = _MONTH_NUMBERS.get(monthName.upper())
        zoneOffset = _zoneOffset(zone)
        if month is None or zoneOffset is None:
            return None
        fields = (int(year), month, int(day), int(hour), int(minute), int(second))
        return _toUnix(*fields) - zoneOffset
    match = _NIST_LINE.match(line)
    if match is not None:
        year, month, day, hour, minute, second = (int(f) for f in match.groups())
        return _toUnix(2000 + year, month, day, hour, minute, second)
    return None


def _zoneOffset(zone: str | None) -> int | None:
    """
    The UTC offset in seconds that C{zone} names, or L{None} when unknown
    (including a missing zone: the server's local time).
    """
    if zone is None:
        return None
    if zone.upper() in _UTC_NAMES:
        return 0
    match = _NUMERIC_ZONE.match(zone)
    if match is None:
        return None
    sign, hours, minutes = match.groups()
    if int(minutes) > 59:
        return None
    offset = int(hours) * 3600 + int(minutes) * 60
    return -offset if sign == "-" else offset


def _toUnix(
    year: int, month: int, day: int, hour: int, minute: int, second: int
) -> int:
    if not (
        year >= 1
        and 1 <= month <= 12
        and 1 <= day <= calendar.monthrange(year, month)[1]
        and hour <= 23
        and minute <= 59
        and second <= 60
    ):
        raise ReplyMismatch(
            f"impossible date {year:04d}-{month:02d}-{day:02d} "
            f"{hour:02d}:{minute:02d}:{second:02d}"
        )
    return calendar.timegm((year, month, day, hour, minute, second, 0, 0, 0))


class DaytimeClientCodec(EmptyRequest):
    """
    The client side of RFC 867 over UDP (a L{udptime.reading.ClientCodec}).

    The request is an empty datagram, as for RFC 868 (the server ignores
    what a request holds).  The offset is the server's time minus the
    midpoint of our send and receive times, taking the middle of the
    second the line names (L{estimateOffset}), with the one second
    resolution of the line (C{details["resolution"]}).
    """

    name = "daytime"
    defaultPort = DEFAULT_PORT

    def parseReply(
        self, data: bytes, state: object, sentAt: float, receivedAt: float
    ) -> Reading:
        """
        Read a daytime line received at Unix time C{receivedAt}.

        @raise ReplyMismatch: the reply is not one line of printable ASCII,
            or shows an impossible date.
        """
        line = readLine(data)
        serverTime = parseLine(line)
        return Reading(
            text=line,
            serverTime=None if serverTime is None else float(serverTime),
            offset=estimateOffset(serverTime, sentAt, receivedAt, RESOLUTION),
            details={"resolution": RESOLUTION, UNAUTHENTICATED: True},
        )
