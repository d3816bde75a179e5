"""
Tests for L{udptime.daytime} (the RFC 867 Daytime codec) and
L{DaytimeServer}.
"""

from __future__ import annotations

import calendar
import contextlib

from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from tests.support import RecordingTransport
from udptime import daytime
from udptime.reading import Reading, ReplyMismatch
from udptime.server import DaytimeServer

FIRST_SECOND = -62135596800
"""0001-01-01 00:00:00 UTC, the first time the format can show."""

LAST_SECOND = 253402300799
"""9999-12-31 23:59:59 UTC, the last time the format can show."""


def utc(*fields: int) -> int:
    """
    The Unix time of a UTC date and time.
    """
    return calendar.timegm((*fields, 0, 0, 0)[:9])


# (Unix time, the server's reply).
REPLY_CASES = [
    (utc(2026, 11, 21, 20, 53, 39), b"21 NOV 2026 20:53:39 UTC\r\n"),
    (utc(2026, 11, 21, 20, 53, 39) + 0.999, b"21 NOV 2026 20:53:39 UTC\r\n"),
    (utc(2036, 2, 7, 6, 28, 15), b"07 FEB 2036 06:28:15 UTC\r\n"),
    (utc(2036, 2, 7, 6, 28, 16), b"07 FEB 2036 06:28:16 UTC\r\n"),
    (utc(2036, 2, 7, 6, 28, 17), b"07 FEB 2036 06:28:17 UTC\r\n"),
    (0, b"01 JAN 1970 00:00:00 UTC\r\n"),
    (-0.5, b"31 DEC 1969 23:59:59 UTC\r\n"),
    (utc(1900, 1, 1, 0, 0, 0), b"01 JAN 1900 00:00:00 UTC\r\n"),
    (utc(2106, 2, 7, 6, 28, 16), b"07 FEB 2106 06:28:16 UTC\r\n"),
    (utc(2028, 2, 29, 12, 0, 0), b"29 FEB 2028 12:00:00 UTC\r\n"),
    (FIRST_SECOND, b"01 JAN 0001 00:00:00 UTC\r\n"),
    (LAST_SECOND + 0.5, b"31 DEC 9999 23:59:59 UTC\r\n"),
    *(
        (utc(2026, month, 1, 0, 0, 0), f"01 {name} 2026 00:00:00 UTC\r\n".encode())
        for month, name in enumerate(daytime.MONTHS, 1)
    ),
]

# (a daytime line, the Unix time it shows, or None when it shows none).
LINE_CASES = [
    ("21 NOV 2026 20:53:39 UTC", utc(2026, 11, 21, 20, 53, 39)),
    ("21 Nov 2026 20:53:39 GMT", utc(2026, 11, 21, 20, 53, 39)),
    ("1 nov 2026 20:53:39 Z", utc(2026, 11, 1, 20, 53, 39)),
    ("Sat, 21 Nov 2026 20:53:39 +0000", utc(2026, 11, 21, 20, 53, 39)),
    ("Sat, 21 Nov 2026 21:53:39 +0100", utc(2026, 11, 21, 20, 53, 39)),
    ("Sat, 21 Nov 2026 15:23:39 -0530", utc(2026, 11, 21, 20, 53, 39)),
    ("31 DEC 2016 23:59:60 UTC", utc(2017, 1, 1, 0, 0, 0)),
    ("07 FEB 2036 06:28:16 UTC", utc(2036, 2, 7, 6, 28, 16)),
    ("01 JAN 1900 00:00:00 UTC", utc(1900, 1, 1, 0, 0, 0)),
    (
        "61000 26-11-21 20:53:39 00 0 0  50.0 UTC(NIST) *",
        utc(2026, 11, 21, 20, 53, 39),
    ),
    # No zone, a zone abbreviation, or another format: no time to read.
    ("21 NOV 2026 20:53:39", None),
    ("21 NOV 2026 20:53:39 CET", None),
    ("21 NOV 2026 20:53:39 +0199", None),
    ("21 FOO 2026 20:53:39 UTC", None),
    ("Sat Nov 21 20:53:39 2026", None),
    ("Saturday, November 21, 2026 20:53:39-UTC", None),
    ("hello", None),
]

IMPOSSIBLE_LINES = [
    "31 FEB 2026 20:53:39 UTC",
    "29 FEB 2026 20:53:39 UTC",
    "00 JAN 2026 20:53:39 UTC",
    "21 NOV 2026 24:00:00 UTC",
    "21 NOV 2026 20:60:00 UTC",
    "21 NOV 2026 20:53:61 UTC",
    "01 JAN 0000 00:00:00 UTC",
    "61000 26-13-21 20:53:39 00 0 0  50.0 UTC(NIST) *",
]


class CodecTests(SynchronousTestCase):
    """
    The server's line and the client's reading of daytime lines.
    """

    def test_buildReply(self) -> None:
        """
        The reply is the UTC time as C{DD MON YYYY HH:MM:SS UTC} and CR LF,
        truncated to the second, always L{daytime.REPLY_SIZE} bytes.
        """
        for now, expected in REPLY_CASES:
            with self.subTest(now=now):
                reply = daytime.buildReply(now)
                self.assertEqual(reply, expected)
                self.assertEqual(len(reply), daytime.REPLY_SIZE)

    def test_buildReplyOutOfRange(self) -> None:
        """
        A time the format cannot show raises L{ValueError}.
        """
        for now in (
            LAST_SECOND + 1,
            FIRST_SECOND - 1,
            float("inf"),
            float("nan"),
            1e300,
        ):
            with self.subTest(now=now):
                self.assertRaises(ValueError, daytime.buildReply, now)

    def test_parseLine(self) -> None:
        """
        The client reads udptime's and xinetd's format, RFC 2822 style lines
        and NIST's format; other formats and unknown zones show no time.
        """
        for line, expected in LINE_CASES:
            with self.subTest(line=line):
                self.assertEqual(daytime.parseLine(line), expected)

    def test_parseImpossible(self) -> None:
        """
        A line in a known format with an impossible date or time is no
        daytime reply.
        """
        for line in IMPOSSIBLE_LINES:
            with self.subTest(line=line):
                self.assertRaises(ReplyMismatch, daytime.parseLine, line)

    def test_readLine(self) -> None:
        """
        The line is the reply without the white space around it (NIST's
        replies start with a newline).
        """
        self.assertEqual(daytime.readLine(b"21 NOV 2026 UTC\r\n"), "21 NOV 2026 UTC")
        self.assertEqual(daytime.readLine(b"\n61000 26-11-21\n"), "61000 26-11-21")

    def test_readLineRejects(self) -> None:
        """
        An empty reply, non-ASCII bytes, several lines, control characters
        and oversized datagrams are not a daytime line.
        """
        for data in (
            b"",
            b"\r\n",
            b"21 NOV 2026 \xff\r\n",
            b"21 NOV\r\n2026\r\n",
            b"21\x00NOV",
            b"x" * (daytime.MAX_REPLY + 1),
        ):
            with self.subTest(data=data[:30]):
                self.assertRaises(ReplyMismatch, daytime.readLine, data)

    @given(st.floats(min_value=FIRST_SECOND, max_value=LAST_SECOND + 0.999))
    def test_roundTrip(self, now: float) -> None:
        """
        The client reads any time the server writes to the second.
        """
        line = daytime.readLine(daytime.buildReply(now))
        self.assertEqual(daytime.parseLine(line), now // 1)

    @given(
        st.binary(max_size=600)
        | st.text(st.characters(max_codepoint=127), max_size=80).map(str.encode)
        | st.from_regex(daytime._DATE_LINE, fullmatch=True).map(str.encode)
    )
    def test_anyReply(self, data: bytes) -> None:
        """
        The client either reads a datagram or rejects it with
        L{ReplyMismatch}; nothing else is raised.
        """
        codec = daytime.DaytimeClientCodec()
        with contextlib.suppress(ReplyMismatch):
            codec.parseReply(data, None, 1.0, 2.0)


class ClientCodecTests(SynchronousTestCase):
    """
    L{daytime.DaytimeClientCodec}.
    """

    def setUp(self) -> None:
        self.codec = daytime.DaytimeClientCodec()

    def test_names(self) -> None:
        """
        The codec is called C{daytime} and uses the registered port 13.
        """
        self.assertEqual((self.codec.name, self.codec.defaultPort), ("daytime", 13))

    def test_request(self) -> None:
        """
        The request is an empty datagram.
        """
        self.assertEqual(self.codec.buildRequest(1000.0), (b"", None))

    def test_result(self) -> None:
        """
        The reading holds the line, the server's time and the offset from
        the midpoint; the delay is the round trip the query measures.
        """
        server = utc(2026, 11, 21, 20, 53, 39)
        data = b"21 NOV 2026 20:53:39 UTC\r\n"
        reading = self.codec.parseReply(data, None, server + 2.0, server + 2.5)
        self.assertEqual(
            reading,
            Reading(
                text="21 NOV 2026 20:53:39 UTC",
                serverTime=server,
                offset=-1.75,
                delay=None,
                details={"resolution": 1.0, "unauthenticated": True},
            ),
        )

    def test_unknownFormat(self) -> None:
        """
        A line in an unknown format is still an answer, with no time.
        """
        reading = self.codec.parseReply(b"Sat Nov 21 20:53:39 2026\n", None, 1.0, 2.0)
        self.assertEqual(
            reading,
            Reading(
                text="Sat Nov 21 20:53:39 2026",
                details={"resolution": 1.0, "unauthenticated": True},
            ),
        )

    def test_notALine(self) -> None:
        """
        A datagram that is no daytime line is not our reply.
        """
        self.assertRaises(
            ReplyMismatch,
            self.codec.parseReply,
            b"\x00\x00\x00\x01",
            None,
            1.0,
            2.0,
        )


class DaytimeServerTests(SynchronousTestCase):
    """
    L{DaytimeServer} with a recording transport and an injected clock.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(utc(2026, 11, 21, 20, 53, 39) + 0.25)
        self.known = True
        self.server = DaytimeServer(
            clock=self.clock.seconds, timeKnown=lambda: self.known
        )
        self.transport = RecordingTransport()
        self.server.makeConnection(self.transport)  # type: ignore[arg-type]

    def test_anyDatagram(self) -> None:
        """
        Any datagram, empty or not, gets the line, sent to its source.
        """
        self.server.datagramReceived(b"", ("127.0.0.1", 40000))
        self.server.datagramReceived(b"what time is it?", ("::1", 40001))
        line = b"21 NOV 2026 20:53:39 UTC\r\n"
        self.assertEqual(
            self.transport.written,
            [(line, ("127.0.0.1", 40000)), (line, ("::1", 40001))],
        )
        counters = self.server.counters.snapshot()
        self.assertEqual((counters["received"], counters["answered"]), (2, 2))

    def test_timeUnknown(self) -> None:
        """
        While the server cannot determine the time it makes no reply.
        """
        self.known = False
        self.server.datagramReceived(b"", ("127.0.0.1", 40000))
        self.assertEqual(self.transport.written, [])
        self.assertEqual(self.server.counters.dropped, 1)

    def test_clockOutOfRange(self) -> None:
        """
        A clock the format cannot show gets no reply, counted as dropped,
        not as an internal error.
        """
        self.clock.advance(LAST_SECOND)
        self.server.datagramReceived(b"", ("127.0.0.1", 40000))
        self.assertEqual(self.transport.written, [])
        counters = self.server.counters.snapshot()
        self.assertEqual((counters["dropped"], counters["internalErrors"]), (1, 0))

    @given(st.binary(max_size=2048))
    def test_anyBytes(self, data: bytes) -> None:
        """
        No datagram makes the protocol raise or fail.
        """
        before = len(self.transport.written)
        self.server.datagramReceived(data, ("127.0.0.1", 40000))
        self.assertEqual(len(self.transport.written), before + 1)
        self.assertEqual(self.server.counters.internalErrors, 0)
