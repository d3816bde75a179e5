"""
Boundary cases of L{udptime.text}: the server's ISO line (its own fast
rounding of microseconds, and the carry into the next second, minute and
day) against L{text.formatTime} and L{datetime}, request parsing at its
edges, and the client's reading of replies at theirs.
"""

from __future__ import annotations

from datetime import UTC, datetime, tzinfo
from zoneinfo import ZoneInfo

from hypothesis import example, given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from udptime import text
from udptime.text import TimeFormat, TimeRequest

TOKYO = ZoneInfo("Asia/Tokyo")


def isoReply(now: float, zone: tzinfo = UTC) -> bytes:
    """
    The server's reply to C{iso} in C{zone} at C{now}.
    """
    return text.buildReply(TimeRequest(TimeFormat.ISO, zone), now)


def expected(now: float, zone: tzinfo = UTC) -> bytes:
    moment = datetime.fromtimestamp(now, zone)
    return moment.isoformat(timespec="microseconds").encode() + b"\n"


class IsoLineTests(SynchronousTestCase):
    """
    The ISO line the server sends, microseconds rounded as L{datetime}
    rounds them.
    """

    def test_table(self) -> None:
        for now, line in [
            (0.0, b"1970-01-01T00:00:00.000000+00:00\n"),
            (0.9999996, b"1970-01-01T00:00:01.000000+00:00\n"),
            (0.9999994, b"1970-01-01T00:00:00.999999+00:00\n"),
            (59.9999996, b"1970-01-01T00:01:00.000000+00:00\n"),
            (86399.9999999, b"1970-01-02T00:00:00.000000+00:00\n"),
            (-0.0000004, b"1970-01-01T00:00:00.000000+00:00\n"),
            (-0.5, b"1969-12-31T23:59:59.500000+00:00\n"),
            (-1.9999996, b"1969-12-31T23:59:58.000000+00:00\n"),
            (1e9 + 0.9999996, b"2001-09-09T01:46:41.000000+00:00\n"),
            (1520945698.123456, b"2018-03-13T12:54:58.123456+00:00\n"),
            (2085978495.9999999, b"2036-02-07T06:28:16.000000+00:00\n"),
        ]:
            with self.subTest(now=now):
                self.assertEqual(isoReply(now), line)
                self.assertEqual(isoReply(now), expected(now))

    def test_zones(self) -> None:
        """
        The carry into the next second also holds in other zones, and the
        cached parts of one zone never leak into another's line.
        """
        for now in (1520945698.9999996, 1520945699.0, 1520945698.5):
            for zone in (TOKYO, UTC, TOKYO):
                with self.subTest(now=now, zone=zone):
                    self.assertEqual(isoReply(now, zone), expected(now, zone))
        local = text.buildReply(TimeRequest(TimeFormat.ISO), 1520945698.9999996)
        moment = datetime.fromtimestamp(1520945698.9999996).astimezone()
        self.assertEqual(
            local, moment.isoformat(timespec="microseconds").encode() + b"\n"
        )

    @settings(max_examples=300)
    @given(now=st.floats(-2e9, 4e9))
    @example(now=0.9999996)
    @example(now=-0.9999996)
    @example(now=1.0000004)
    @example(now=1.4999995)
    @example(now=1520945698.9999995)
    @example(now=-1e-7)
    def test_property(self, now: float) -> None:
        self.assertEqual(isoReply(now), expected(now))
        self.assertEqual(
            isoReply(now), text.formatTime(now, TimeFormat.ISO, UTC).encode() + b"\n"
        )
        self.assertEqual(
            text.splitMicroseconds(now),
            (
                int(datetime.fromtimestamp(now, UTC).timestamp() // 1),
                datetime.fromtimestamp(now, UTC).microsecond,
            ),
        )


class RequestEdgeTests(SynchronousTestCase):
    def test_month(self) -> None:
        for word, answer in [
            (b"month 1", b"January\n"),
            (b"month 12", b"December\n"),
            (b"MONTH 06", b"June\n"),
        ]:
            with self.subTest(word=word):
                request = text.parseRequest(word)
                self.assertEqual(text.buildReply(request, 0.0), answer)
        for word in (
            b"month 0",
            b"month 13",
            b"month",
            b"month 1 2",
            b"month \xd9\xa1",
        ):
            with self.subTest(word=word):
                self.assertRaises(text.TextRequestError, text.parseRequest, word)

    def test_zoneWords(self) -> None:
        self.assertEqual(
            text.parseRequest(b"unix Asia/Tokyo"), TimeRequest(TimeFormat.UNIX, TOKYO)
        )
        self.assertRaises(text.TextRequestError, text.parseRequest, b"iso UTC UTC")
        name = "A" * 64
        error = self.assertRaises(text.TextRequestError, text.lookupZone, name)
        self.assertIn("unknown time zone", str(error))
        self.assertRaises(text.TextRequestError, text.lookupZone, "A" * 65)

    def test_quoteLimit(self) -> None:
        """
        A quoted word stops at 32 characters of escaped text.
        """
        self.assertEqual(text._quote("a" * 32), "'" + "a" * 32 + "'")
        self.assertEqual(text._quote("a" * 33), "'" + "a" * 32 + "...'")
        self.assertEqual(text._quote("it's"), "'it\\'s'")
        self.assertEqual(text._quote("\u00e9" * 9), "'" + "\\xe9" * 8 + "...'")


class ReadTimeEdgeTests(SynchronousTestCase):
    def test_resolution(self) -> None:
        for line, time, resolution, fmt in [
            ("12", 12.0, 1.0, "unix"),
            ("12.5", 12.5, 0.1, "unix"),
            ("12.500000", 12.5, 1e-6, "unix"),
            ("-1.25", -1.25, 0.01, "unix"),
            ("1970-01-01T00:00:10+00:00", 10.0, 1.0, "iso"),
            ("1970-01-01T00:00:10.000000+00:00", 10.0, 1e-6, "iso"),
            ("1970-01-01T00:00:10.5+00:00", 10.5, 1e-6, "iso"),
            ("Thu, 01 Jan 1970 00:00:10 +0000", 10.0, 1.0, "rfc2822"),
        ]:
            with self.subTest(line=line):
                found, details = text.readTime(line)
                self.assertEqual(found, time)
                self.assertEqual(details["format"], fmt)
                self.assertAlmostEqual(details["resolution"], resolution)

    def test_noTime(self) -> None:
        for line, fmt in [
            ("1970-01-01T00:00:10", "unknown"),
            ("Thu Jan  1 00:00:10 1970", "ctime"),
            ("March", "month"),
            ("", "unknown"),
        ]:
            with self.subTest(line=line):
                self.assertEqual(text.readTime(line), (None, {"format": fmt}))


class ZoneLookupTests(SynchronousTestCase):
    """
    L{text.lookupZone}: C{UTC} in any case is UTC itself, not a zone file
    and never the host's local time.
    """

    def test_utc(self) -> None:
        text.lookupZone.cache_clear()
        for name in ("UTC", "utc", "Utc"):
            with self.subTest(name=name):
                self.assertIs(text.lookupZone(name), UTC)

    def test_unknown(self) -> None:
        text.lookupZone.cache_clear()
        for name in ("Nowhere/Atall", "../etc/passwd", "x" * 65, ""):
            with self.subTest(name=name):
                self.assertRaises(text.TextRequestError, text.lookupZone, name)


class TokenEdgeTests(SynchronousTestCase):
    """
    A token is the last word: its C{@} starts the datagram or follows
    white space, wherever the C{@} is.
    """

    def test_table(self) -> None:
        for data, expected in [
            (b"@abc", (b"", b"abc")),
            (b" @abc", (b" ", b"abc")),
            (b"x@abc", (b"x@abc", None)),
            (b"xy@abc", (b"xy@abc", None)),
            (b"\t@abc\r\n", (b"\t", b"abc")),
        ]:
            with self.subTest(data=data):
                self.assertEqual(text.splitToken(data), expected)


class SplitMicrosecondsTests(SynchronousTestCase):
    """
    L{text.splitMicroseconds} carries a rounded-up fraction into the next
    second, and borrows one for a negative fraction, only when it must.
    """

    def test_table(self) -> None:
        for now, expected in [
            (1.0, (1, 0)),
            (1.999999, (1, 999999)),
            (1.9999994, (1, 999999)),
            (1.9999996, (2, 0)),
            (-0.000001, (-1, 999999)),
            (-0.0000004, (0, 0)),
            (-0.9999996, (-1, 0)),
            (-1.000001, (-2, 999999)),
        ]:
            with self.subTest(now=now):
                self.assertEqual(text.splitMicroseconds(now), expected)


class ClientRequestSizeTests(SynchronousTestCase):
    """
    The client refuses a request longer than a server answers.
    """

    def test_limit(self) -> None:
        longest = "a" * text.MAX_REQUEST
        self.assertEqual(text.TextClientCodec(longest, token=False).request, longest)
        error = self.assertRaises(
            ValueError, text.TextClientCodec, longest + "a", token=False
        )
        self.assertIn(f"{text.MAX_REQUEST + 1} bytes long", str(error))

    def test_limitWithToken(self) -> None:
        room = text.MAX_REQUEST - 2 - 2 * text.TOKEN_SIZE
        self.assertEqual(text.TextClientCodec("a" * room).request, "a" * room)
        error = self.assertRaises(ValueError, text.TextClientCodec, "a" * (room + 1))
        self.assertIn(f"at most {room} (or use no token)", str(error))


class ClientOffsetTests(SynchronousTestCase):
    """
    The text client's offset: a whole-second reading (resolution 1 s) was
    truncated, so half a second is added; finer readings were rounded.
    """

    def test_table(self) -> None:
        codec = text.TextClientCodec("unix", token=False)
        for line, offset in [
            (b"112\n", 12.5),
            (b"112.5\n", 12.5),
            (b"112.250000\n", 12.25),
        ]:
            with self.subTest(line=line):
                reading = codec.parseReply(line, None, 99.0, 101.0)
                assert reading.offset is not None
                self.assertAlmostEqual(reading.offset, offset)


class MonthNameTests(SynchronousTestCase):
    """
    Every month number's reply is its English name.
    """

    def test_everyMonth(self) -> None:
        names = "January February March April May June July August September"
        names += " October November December"
        for number, name in enumerate(names.split(), 1):
            with self.subTest(number=number):
                request = text.parseRequest(b"month %d" % number)
                self.assertEqual(text.buildReply(request, 0.0), name.encode() + b"\n")


class UnzonedTimeTests(SynchronousTestCase):
    """
    Readings whose zone is not known give no time, but say their format.
    """

    def test_table(self) -> None:
        self.assertEqual(
            text.readTime("Thu, 01 Jan 1970 00:00:10 -0000"),
            (None, {"format": "rfc2822"}),
        )

    def test_longestToken(self) -> None:
        longest = b"t" * text.MAX_TOKEN
        self.assertEqual(text.splitToken(b"time @" + longest), (b"time ", longest))
        self.assertEqual(text.splitToken(b"time @t" + longest)[1], None)
