"""
Codec for udptime's text time protocol (sans I/O).

A request is one datagram of at most L{MAX_REQUEST} bytes of UTF-8 text.  Its
first word, compared case-insensitively, selects the reply:

  - C{time} or C{iso}: ISO 8601 with microseconds and UTC offset (default);
  - C{unix}: seconds since the Unix epoch with microseconds;
  - C{ctime}: as C{Tue Mar 13 12:54:58 2018};
  - C{rfc2822}: as C{Tue, 13 Mar 2018 12:54:58 +0000};

each optionally followed by an IANA time zone name (C{iso Europe/Paris});
C{month N} answers the English name of month N (1-12).  Any other text,
including an empty datagram, gets the time in the default format.  Every
reply is one line ending in C{\\n}; errors start with C{error: }.

A request may end with a token, a last word of C{@} and 1 to 64 letters,
digits, C{-} or C{_} (C{time @6f1e0c2a9b}): the reply, error lines
included, then ends with the same word (L{splitToken}, L{withToken}), so
that a client can tell the reply to its request from a datagram forged
without seeing the request.  A request without one gets a reply without
one, as before.

The client side, L{TextClientCodec}, reads a reply in any of these formats
for L{udptime.client.query} (L{readTime}).

See the README for the full specification.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, tzinfo
from email.utils import format_datetime, parsedate_to_datetime
from enum import Enum
from functools import cache, lru_cache, partial
from typing import Any, Final
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

from udptime.reading import Reading, ReplyMismatch, ServerRefused, estimateOffset

MAX_REQUEST: Final = 512
"""Longest request in bytes; longer datagrams are dropped unanswered."""

DEFAULT_PORT: Final = 5000
"""The text protocol's customary UDP port."""

MONTHS: Final = (
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
)

_QUOTE_LIMIT: Final = 32

_ZONE_NAME = re.compile(r"[A-Za-z0-9_+\-]+(/[A-Za-z0-9_+\-]+)*\Z")

MAX_TOKEN: Final = 64
"""Longest request token, in characters (after its C{@})."""

TOKEN_SIZE: Final = 8
"""Random bytes in the client's token (sent as hex)."""

_TOKEN = re.compile(rb"[A-Za-z0-9_\-]{1,64}\Z")
_SPACE: Final = frozenset(b" \t\r\n\x0b\x0c")
_MAX_ZONE_NAME: Final = 64


class TimeFormat(Enum):
    """
    The formats a text request can ask for.
    """

    ISO = "iso"
    UNIX = "unix"
    CTIME = "ctime"
    RFC2822 = "rfc2822"


FORMAT_WORDS: Final[dict[str, TimeFormat]] = {
    "time": TimeFormat.ISO,
    "iso": TimeFormat.ISO,
    "unix": TimeFormat.UNIX,
    "ctime": TimeFormat.CTIME,
    "rfc2822": TimeFormat.RFC2822,
}


class TextRequestError(ValueError):
    """
    A request the text protocol answers with an error line.  The message is
    what follows C{error: } on the wire.
    """


class RequestTooLarge(ValueError):
    """
    A datagram longer than L{MAX_REQUEST}: dropped, not answered.
    """


@dataclass(frozen=True, slots=True)
class TimeRequest:
    """
    Ask for the current time.

    @ivar format: the reply format, or L{None} for the server's default.
    @ivar zone: the zone to show the time in, or L{None} for the server's.
    """

    format: TimeFormat | None = None
    zone: tzinfo | None = None


@dataclass(frozen=True, slots=True)
class MonthRequest:
    """
    Ask for the name of month C{number} (1-12).
    """

    number: int


TextRequest = TimeRequest | MonthRequest

DEFAULT_REQUEST: Final = TimeRequest()


@lru_cache(maxsize=512)
def lookupZone(name: str) -> tzinfo:
    """
    The time zone called C{name} in the IANA database, matched without
    regard to case (C{europe/paris} is C{Europe/Paris}).

    @raise TextRequestError: the name is malformed or unknown.
    """
    if len(name) > _MAX_ZONE_NAME or not _ZONE_NAME.match(name):
        raise TextRequestError(f"unknown time zone {_quote(name)}")
    if name.upper() == "UTC":
        return UTC
    # Only the database's zones: it also holds files that are not (its
    # rules, copies under posix/ and right/, whose times count leap
    # seconds), which ZoneInfo would open as well.
    candidate = _zoneNamesByFold().get(name.casefold())
    if candidate is not None:
        try:
            return _loadZone(candidate)
        except (ZoneInfoNotFoundError, ValueError, OSError):
            pass  # listed, but unreadable now: as unknown
    raise TextRequestError(f"unknown time zone {_quote(name)}")


@cache
def _loadZone(name: str) -> tzinfo:
    """
    The database's zone called C{name}, as the database spells it: read
    once, and kept, so that a zone is read from disk at most once however
    its name is spelt (its entries are bounded by the database's zones,
    about 600 of some 3 kB each).
    """
    return ZoneInfo(name)


def loadZoneNames() -> None:
    """
    Read the names of the zone database now (it takes tens of
    milliseconds), rather than when the first request names a zone.
    """
    _zoneNamesByFold()


@lru_cache(maxsize=1)
def _zoneNamesByFold() -> dict[str, str]:
    """
    The host's IANA zone names, keyed by their case-folded form (read once);
    not C{localtime}, a host's link to its own zone that some systems list.
    """
    return {
        zone.casefold(): zone for zone in available_timezones() if zone != "localtime"
    }


def _quote(word: str) -> str:
    """
    Quote a word of the request for an error line: ASCII only, with escapes
    for anything else, and cut short (then C{...}) once the escaped text
    reaches L{_QUOTE_LIMIT} characters, so that an error reply stays small
    whatever the request held.
    """
    pieces: list[str] = []
    used = 0
    for character in word:
        piece = "\\'" if character == "'" else ascii(character)[1:-1]
        if used + len(piece) > _QUOTE_LIMIT:
            pieces.append("...")
            break
        pieces.append(piece)
        used += len(piece)
    return "'" + "".join(pieces) + "'"


def splitToken(data: bytes) -> tuple[bytes, bytes | None]:
    """
    A request datagram without its token, and the token (without its
    C{@}), or C{data} itself and L{None} when its last word is not a token.
    """
    end = len(data)
    while end and data[end - 1] in _SPACE:
        end -= 1
    at = data.rfind(b"@", 0, end)
    if at < 0 or (at > 0 and data[at - 1] not in _SPACE):
        return data, None
    token = data[at + 1 : end]
    if _TOKEN.match(token) is None:
        return data, None
    return data[:at], token


def withToken(reply: bytes, token: bytes) -> bytes:
    """
    The reply line C{reply} (ending in C{\\n}) with the request's token as
    its last word.
    """
    return reply[:-1] + b" @" + token + b"\n"


def parseRequest(data: bytes) -> TextRequest:
    """
    Parse one request datagram.

    @raise RequestTooLarge: the datagram is longer than L{MAX_REQUEST}.
    @raise TextRequestError: the request is answered with an error line.
    """
    if len(data) > MAX_REQUEST:
        raise RequestTooLarge(len(data))
    return _parseSmall(data)


@lru_cache(maxsize=256)
def _parseSmall(data: bytes) -> TextRequest:
    """
    L{parseRequest} for a datagram of acceptable size.  Clients send the same
    few requests again and again, so the parsed (immutable) requests are
    cached; errors are not, and cost a parse each time.
    """
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise TextRequestError("request is not UTF-8 text") from None
    words = text.split()
    if not words:
        return DEFAULT_REQUEST
    command = words[0].lower()
    if command == "month":
        return _parseMonth(words[1:])
    fmt = FORMAT_WORDS.get(command)
    if fmt is None:
        # Free text ("Hello world", "Send time"): the classic clients.
        return DEFAULT_REQUEST
    if len(words) == 1:
        return TimeRequest(fmt)
    if len(words) > 2:
        raise TextRequestError(f"{command} takes at most one time zone name")
    return TimeRequest(fmt, lookupZone(words[1]))


def _parseMonth(arguments: list[str]) -> MonthRequest:
    if len(arguments) != 1:
        raise TextRequestError("month takes one number from 1 to 12")
    word = arguments[0]
    if not (word.isascii() and word.isdigit()) or not 1 <= int(word) <= 12:
        raise TextRequestError(
            f"month must be a number from 1 to 12, not {_quote(word)}"
        )
    return MonthRequest(int(word))


def formatTime(now: float, fmt: TimeFormat, zone: tzinfo | None) -> str:
    """
    Render the Unix time C{now} in format C{fmt} and zone C{zone} (L{None}:
    the host's local time zone).
    """
    if fmt is TimeFormat.UNIX:
        return f"{now:.6f}"
    second, microsecond = splitMicroseconds(now)
    if fmt is TimeFormat.ISO:
        head, offset = _isoParts(second, zone)
        return f"{head}.{microsecond:06d}{offset}"
    return _wholeSecondText(second, fmt, zone)


def splitMicroseconds(now: float) -> tuple[int, int]:
    """
    The Unix time C{now} as whole seconds and microseconds, rounded as
    L{datetime.fromtimestamp} rounds it (to the nearest microsecond, half to
    even), so that formatting the parts gives what formatting C{now} would.
    """
    fraction, whole = math.modf(now)
    microsecond = round(fraction * 1e6)
    second = int(whole)
    if microsecond >= 1_000_000:
        return second + 1, microsecond - 1_000_000
    if microsecond < 0:
        return second - 1, microsecond + 1_000_000
    return second, microsecond


# Everything in a reply but the microseconds stays the same for a whole
# second: it is rendered once per second and zone, and the hot path only
# joins strings.  (Zone transitions fall on whole seconds.)


def _moment(second: int, zone: tzinfo | None) -> datetime:
    if zone is None:
        return datetime.fromtimestamp(second).astimezone()
    return datetime.fromtimestamp(second, zone)


@lru_cache(maxsize=64)
def _isoParts(second: int, zone: tzinfo | None) -> tuple[str, str]:
    """
    The ISO 8601 rendering of C{second} cut around where the microseconds
    go: C{("2026-11-21T20:53:39", "+00:00")}.
    """
    text = _moment(second, zone).isoformat(timespec="seconds")
    return text[:19], text[19:]


def _isoLineParts(second: int, zone: tzinfo | None) -> tuple[int, bytes, bytes]:
    """
    L{_isoParts} as the bytes of a reply line, after C{second}:
    C{(second, b"2026-11-21T20:53:39.", b"+00:00\\n")}, kept as the latest
    of C{zone} (see L{isoLine}).
    """
    head, offset = _isoParts(second, zone)
    parts = _latestIsoLines[zone] = (
        second,
        head.encode("ascii") + b".",
        offset.encode("ascii") + b"\n",
    )
    return parts


_latestIsoLines: dict[tzinfo | None, tuple[int, bytes, bytes]] = {}
"""The reply line parts of the latest second rendered, by zone: the second
of a server's replies changes once a second."""


@lru_cache(maxsize=256)
def _wholeSecondText(second: int, fmt: TimeFormat, zone: tzinfo | None) -> str:
    """
    C{second} rendered in a format that shows no fraction of a second.
    """
    moment = _moment(second, zone)
    if fmt is TimeFormat.CTIME:
        return moment.ctime()
    return format_datetime(moment)


ReplyBuilder = Callable[[float], bytes]
"""Builds the reply to one request at a given Unix time."""


def buildReply(
    request: TextRequest,
    now: float,
    defaultFormat: TimeFormat = TimeFormat.ISO,
    defaultZone: tzinfo | None = None,
) -> bytes:
    """
    The reply line for C{request} at Unix time C{now}: what
    L{replyBuilder} gives for it, at C{now}.
    """
    return replyBuilder(request, defaultFormat, defaultZone)(now)


def replyBuilder(
    request: TextRequest,
    defaultFormat: TimeFormat = TimeFormat.ISO,
    defaultZone: tzinfo | None = None,
) -> ReplyBuilder:
    """
    How to answer C{request} with these defaults (the server's format and
    zone for a request that names none), as a function of the time alone,
    to be kept for a request that comes again.
    """
    if isinstance(request, MonthRequest):
        line = MONTHS[request.number - 1].encode("ascii") + b"\n"
        return lambda now: line
    fmt = defaultFormat if request.format is None else request.format
    zone = defaultZone if request.zone is None else request.zone
    if fmt is TimeFormat.ISO:
        # The common reply, built from cached bytes: formatTime's ISO line.
        return partial(isoLine, zone)
    return partial(_formattedLine, fmt, zone)


def isoLine(zone: tzinfo | None, now: float) -> bytes:
    """
    The reply line for an ISO 8601 time request in C{zone} (L{None}: the
    host's local zone) at Unix time C{now}: the common reply, from cached
    bytes.
    """
    # splitMicroseconds, inline, at a third of the cost: truncating is
    # modf's whole part, the difference (exact) its fraction, and the
    # dunder methods are int() and round() without the builtins' generic
    # argument handling.
    second = now.__trunc__()
    microsecond = ((now - second) * 1e6).__round__()
    if not 0 <= microsecond < 1_000_000:
        second, microsecond = splitMicroseconds(now)
    parts = _latestIsoLines.get(zone)
    if parts is None or parts[0] != second:
        parts = _isoLineParts(second, zone)
    return b"%b%06d%b" % (parts[1], microsecond, parts[2])


def _formattedLine(fmt: TimeFormat, zone: tzinfo | None, now: float) -> bytes:
    return formatTime(now, fmt, zone).encode("ascii") + b"\n"


def errorReply(error: TextRequestError) -> bytes:
    """
    The error line for a request that could not be answered.
    """
    return f"error: {error}\n".encode("ascii", "backslashreplace")


class ErrorLine(ServerRefused):
    """
    The server answered with an error line (C{error: ...}); the reason is
    what follows C{error:}.
    """

    template = "error from {server}: {reason}"


class TextClientCodec:
    """
    The client side of the text time protocol (a
    L{ClientCodec<udptime.reading.ClientCodec>}).

    The reply's time is read whatever format the server chose: ISO 8601,
    Unix seconds, C{ctime} or RFC 2822 (L{readTime}).  A C{ctime} reply
    names no zone: its time is known only when the request named the zone.
    Month names and unrecognised lines are readings with no time; an
    C{error:} line is a refusal, L{ErrorLine}.

    By default each request carries a fresh random token (see
    L{splitToken}), and a reply counts only when it carries it back: a
    datagram forged without seeing the request is ignored.  The token ties a
    reply to its request; it does not authenticate the server (anyone who
    sees the request can answer it).

    @ivar request: the request words sent (C{time} when none are given).
    @ivar token: whether requests carry a token, which replies must repeat
        (C{False} for servers that do not repeat tokens).
    @ivar randomBytes: source of the token's random bytes (C{os.urandom}).
    """

    name = "text"
    defaultPort = DEFAULT_PORT

    def __init__(
        self,
        request: str = "",
        token: bool = True,
        randomBytes: Callable[[int], bytes] = os.urandom,
    ) -> None:
        """
        @param request: the request words, e.g. C{"iso Europe/Paris"} or
            C{"month 3"}; empty for the server's current time.
        @param token: send a token with each request and accept only the
            replies that carry it back.
        @raise ValueError: the request is longer than the server accepts.
        """
        self.request = " ".join(request.split()) or "time"
        self.token = token
        self.randomBytes = randomBytes
        self._datagram = self.request.encode("utf-8")
        size = len(self._datagram)
        if size > MAX_REQUEST:
            raise ValueError(
                f"the request is {size} bytes long; servers answer at most "
                f"{MAX_REQUEST}"
            )
        room = MAX_REQUEST - (2 + 2 * TOKEN_SIZE if token else 0)
        if size > room:
            raise ValueError(
                f"the request is {size} bytes long; with its token servers "
                f"answer at most {room} (or use no token)"
            )

    def buildRequest(self, sentAt: float) -> tuple[bytes, bytes | None]:
        """
        The request datagram, with a fresh token unless L{token} is false;
        the state is the token, which the reply must carry back.
        """
        if not self.token:
            return self._datagram, None
        token = self.randomBytes(TOKEN_SIZE).hex().encode("ascii")
        return self._datagram + b" @" + token, token

    def parseReply(
        self, data: bytes, state: bytes | None, sentAt: float, receivedAt: float
    ) -> Reading:
        """
        Read a reply line received at Unix time C{receivedAt}.

        @param state: the request's token, or L{None}.
        @raise ReplyMismatch: C{data} is not one line of UTF-8 text, or does
            not carry the request's token back.
        @raise ErrorLine: the server answered with an C{error:} line.
        """
        if state is not None:
            reply, token = splitToken(data)
            if token != state:
                raise ReplyMismatch(
                    "the reply does not carry the request's token (forged, or "
                    "from a server that does not repeat tokens: try --no-token)"
                )
            data = reply.rstrip(b" \t") + b"\n"
        line = _replyLine(data)
        if line.startswith("error:"):
            raise ErrorLine(line[len("error:") :].strip() or "(no reason given)")
        serverTime, details = readTime(line, self._requestZone())
        resolution = details.get("resolution", 0.0)
        return Reading(
            text=line,
            serverTime=serverTime,
            # Whole-second readings are truncated; finer ones are rounded.
            offset=estimateOffset(
                serverTime, sentAt, receivedAt, resolution if resolution >= 1 else 0.0
            ),
            details=details,
        )

    def _requestZone(self) -> tzinfo | None:
        """
        The zone the request named, when it named one this host knows.
        """
        try:
            request = parseRequest(self._datagram)
        except ValueError:
            return None
        if isinstance(request, TimeRequest):
            return request.zone
        return None


def _replyLine(data: bytes) -> str:
    try:
        line = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ReplyMismatch("the reply is not UTF-8 text") from None
    if not line.endswith("\n"):
        raise ReplyMismatch("the reply does not end with a line feed")
    line = line[:-1].removesuffix("\r")
    if "\n" in line or "\r" in line:
        raise ReplyMismatch("the reply is more than one line")
    return line


_UNIX_TIME: Final = re.compile(r"-?[0-9]+(\.([0-9]+))?\Z")
_CTIME_FORMAT: Final = "%a %b %d %H:%M:%S %Y"
_EARLIEST: Final = datetime(1, 1, 1, tzinfo=UTC).timestamp()
_END: Final = datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC).timestamp() + 1.0


def readTime(
    line: str, zone: tzinfo | None = None
) -> tuple[float | None, dict[str, Any]]:
    """
    The Unix time a reply line gives, and details about it.

    @param line: the reply, without its line ending.
    @param zone: the zone the request named (the zone of a C{ctime} reply),
        or L{None}.
    @return: the time (L{None} when the line has none, or a C{ctime} reply
        to a request that named no zone), and a dict with the reply's
        C{format} (C{"iso"}, C{"unix"}, C{"ctime"}, C{"rfc2822"},
        C{"month"} or C{"unknown"}) and, with a time, its C{resolution} in
        seconds.
    """
    unix = _UNIX_TIME.match(line)
    if unix is not None:
        seconds = float(line)
        if not _EARLIEST <= seconds < _END:
            # No time of years 1 to 9999 (nor a finite number, maybe).
            return None, {"format": "unknown"}
        digits = len(unix.group(2) or "")
        return seconds, {"format": "unix", "resolution": 10.0**-digits}
    if line in MONTHS:
        return None, {"format": "month"}
    moment = _parseISO(line)
    if moment is not None:
        resolution = 1e-6 if moment.microsecond or "." in line else 1.0
        return moment.timestamp(), {"format": "iso", "resolution": resolution}
    try:
        naive = datetime.strptime(line, _CTIME_FORMAT)
    except ValueError:
        pass
    else:
        if zone is None:
            return None, {"format": "ctime"}
        return naive.replace(tzinfo=zone).timestamp(), {
            "format": "ctime",
            "resolution": 1.0,
        }
    try:
        moment = parsedate_to_datetime(line)
    except (TypeError, ValueError, IndexError):
        return None, {"format": "unknown"}
    if moment.tzinfo is None:
        return None, {"format": "rfc2822"}
    return moment.timestamp(), {"format": "rfc2822", "resolution": 1.0}


def _parseISO(line: str) -> datetime | None:
    if "T" not in line:
        return None
    try:
        moment = datetime.fromisoformat(line)
    except ValueError:
        return None
    if moment.tzinfo is None:
        return None
    return moment
