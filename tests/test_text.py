"""
udptime's text time protocol: the codec (L{udptime.text}), its client side
(L{udptime.text.TextClientCodec}) and the server protocol
(L{udptime.server.TextTimeServer}), driven through C{datagramReceived} with a
recording transport and a fixed clock.
"""

from __future__ import annotations

from datetime import UTC, datetime
from functools import partial
from zoneinfo import ZoneInfo

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from tests.support import RecordingTransport
from udptime import text
from udptime.reading import Reading, ReplyMismatch, ServerRefused
from udptime.server import REPLY_BUILDERS, TextTimeServer
from udptime.text import ErrorLine, TextClientCodec, readTime

# 2018-03-13 12:54:58.123456 UTC, a Tuesday.
NOW = 1520945698.123456
ISO_UTC = b"2018-03-13T12:54:58.123456+00:00\n"
CLIENT = ("127.0.0.1", 40000)

ANSWERS: list[tuple[bytes, bytes]] = [
    # The default: ISO 8601 in the server's zone, for anything that is not
    # a command.
    (b"", ISO_UTC),
    (b"Hello world", ISO_UTC),
    (b"Send time", ISO_UTC),
    (b"what time is it?", ISO_UTC),
    (b"   ", ISO_UTC),
    (b"\n", ISO_UTC),
    # Every command, in any case.
    (b"time", ISO_UTC),
    (b"TIME", ISO_UTC),
    (b"Time", ISO_UTC),
    (b"iso", ISO_UTC),
    (b"ISO", ISO_UTC),
    (b"unix", b"1520945698.123456\n"),
    (b"UNIX", b"1520945698.123456\n"),
    (b"ctime", b"Tue Mar 13 12:54:58 2018\n"),
    (b"CTime", b"Tue Mar 13 12:54:58 2018\n"),
    (b"rfc2822", b"Tue, 13 Mar 2018 12:54:58 +0000\n"),
    (b"RFC2822", b"Tue, 13 Mar 2018 12:54:58 +0000\n"),
    # Zones, in every format.
    (b"iso Europe/Paris", b"2018-03-13T13:54:58.123456+01:00\n"),
    (b"time Europe/Paris", b"2018-03-13T13:54:58.123456+01:00\n"),
    (b"iso europe/paris", b"2018-03-13T13:54:58.123456+01:00\n"),
    (b"iso Etc/GMT+5", b"2018-03-13T07:54:58.123456-05:00\n"),
    (b"iso Asia/Kolkata", b"2018-03-13T18:24:58.123456+05:30\n"),
    (b"iso UTC", ISO_UTC),
    (b"iso utc", ISO_UTC),
    (b"iso Etc/UTC", ISO_UTC),
    (b"ctime Asia/Tokyo", b"Tue Mar 13 21:54:58 2018\n"),
    (b"rfc2822 America/New_York", b"Tue, 13 Mar 2018 08:54:58 -0400\n"),
    (b"rfc2822 Australia/Lord_Howe", b"Tue, 13 Mar 2018 23:54:58 +1100\n"),
    (b"unix Europe/Paris", b"1520945698.123456\n"),
    # Whitespace around and between words, and line endings, are ignored.
    (b"  iso\tEurope/Paris \r\n", b"2018-03-13T13:54:58.123456+01:00\n"),
    (b"unix\n", b"1520945698.123456\n"),
]
ANSWERS += [
    (f"month {n}".encode(), name.encode() + b"\n")
    for n, name in enumerate(text.MONTHS, 1)
]
ANSWERS += [
    (b"MONTH 3", b"March\n"),
    (b"Month 03", b"March\n"),
    (b"month 12\r\n", b"December\n"),
]

ERRORS: list[tuple[bytes, bytes]] = [
    (b"month", b"error: month takes one number from 1 to 12\n"),
    (b"month 1 2", b"error: month takes one number from 1 to 12\n"),
    (b"month 0", b"error: month must be a number from 1 to 12, not '0'\n"),
    (b"month 13", b"error: month must be a number from 1 to 12, not '13'\n"),
    (b"month -1", b"error: month must be a number from 1 to 12, not '-1'\n"),
    (b"month +3", b"error: month must be a number from 1 to 12, not '+3'\n"),
    (b"month 1.5", b"error: month must be a number from 1 to 12, not '1.5'\n"),
    (b"month March", b"error: month must be a number from 1 to 12, not 'March'\n"),
    (
        "month \uff13".encode(),  # a full-width digit three
        b"error: month must be a number from 1 to 12, not '\\uff13'\n",
    ),
    (
        b"month \x1b[31m",
        b"error: month must be a number from 1 to 12, not '\\x1b[31m'\n",
    ),
    (b"iso Mars/Olympus", b"error: unknown time zone 'Mars/Olympus'\n"),
    (b"iso UTC Europe/Paris", b"error: iso takes at most one time zone name\n"),
    (b"unix a b c", b"error: unix takes at most one time zone name\n"),
    (b"\xff\xfe", b"error: request is not UTF-8 text\n"),
    (b"iso \xc3", b"error: request is not UTF-8 text\n"),
    (
        "iso \u00e9t\u00e9".encode(),
        b"error: unknown time zone '\\xe9t\\xe9'\n",
    ),
    (
        b"iso " + b"A" * 100,
        b"error: unknown time zone 'AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA...'\n",
    ),
]

# Zone names that must never reach the file system as paths, or that name
# files of the zone database that are not zones.
MALICIOUS_ZONES = [
    "../../etc/passwd",
    "/etc/passwd",
    "Europe/../../../etc/passwd",
    "Europe/Paris/..",
    "./UTC",
    "..",
    "Europe//Paris",
    "Europe\\Paris",
    "Europe/Paris\x00",
    "~root",
    "$HOME",
    "Europe",
    "zone.tab",
    "tzdata.zi",
    "leapseconds",
    "iso3166.tab",
    # Files of the database that are not among its zones: copies and rules
    # (right/ counts leap seconds, so its times are 27 s off), the host's
    # own link.
    "posixrules",
    "right/UTC",
    "posix/Europe/Paris",
    "localtime",
    "A" * 65,
]


def makeServer(
    zone: object = UTC, fmt: text.TimeFormat = text.TimeFormat.ISO
) -> tuple[TextTimeServer, RecordingTransport]:
    """
    A text server on a recording transport, with its clock stopped at
    L{NOW}.
    """
    server = TextTimeServer(
        clock=lambda: NOW,
        defaultZone=zone,
        defaultFormat=fmt,
    )
    transport = RecordingTransport()
    server.makeConnection(transport)
    return server, transport


class TextServerTests(SynchronousTestCase):
    """
    L{TextTimeServer} answers each request with the exact bytes the
    protocol specifies.
    """

    def ask(
        self, request: bytes, addr: tuple[str, int] = CLIENT, zone: object = UTC
    ) -> list[tuple[bytes, object]]:
        server, transport = makeServer(zone)
        server.datagramReceived(request, addr)
        self.assertEqual(server.counters.internalErrors, 0)
        return transport.written

    def test_answers(self) -> None:
        """
        Every command, format, zone and month gets its exact reply line,
        sent to the address the request came from.
        """
        for request, reply in ANSWERS:
            with self.subTest(request=request):
                self.assertEqual(self.ask(request), [(reply, CLIENT)])

    def test_errors(self) -> None:
        """
        Requests that cannot be answered get one C{error:} line.
        """
        for request, reply in ERRORS:
            with self.subTest(request=request):
                self.assertEqual(self.ask(request), [(reply, CLIENT)])

    def test_maliciousZones(self) -> None:
        """
        Zone names that are paths, or files of the zone database that are
        not zones, are unknown zones.
        """
        for zone in MALICIOUS_ZONES:
            with self.subTest(zone=zone):
                [(reply, _)] = self.ask(b"iso " + zone.encode())
                self.assertTrue(reply.startswith(b"error: unknown time zone "), reply)
                self.assertNotIn(b"root:", reply)
                self.assertLessEqual(len(reply), 80)

    def test_counters(self) -> None:
        """
        Answers and error answers are counted.
        """
        server, _ = makeServer()
        for request in (b"time", b"month 13", b"x" * 513, b"month 2"):
            server.datagramReceived(request, CLIENT)
        self.assertEqual(
            {
                k: v
                for k, v in server.counters.snapshot().items()
                if k in ("received", "answered", "malformed", "dropped")
            },
            {"received": 4, "answered": 3, "malformed": 1, "dropped": 1},
        )

    def test_oversized(self) -> None:
        """
        A datagram of more than 512 bytes is dropped unanswered; one of
        exactly 512 bytes is answered.
        """
        self.assertEqual(self.ask(b"x" * 513), [])
        self.assertEqual(self.ask(b"time" + b" " * 509), [])
        self.assertEqual(self.ask(b"x" * 65507), [])
        self.assertEqual(self.ask(b"x" * 512), [(ISO_UTC, CLIENT)])
        self.assertEqual(
            self.ask(b"unix" + b" " * 508), [(b"1520945698.123456\n", CLIENT)]
        )

    def test_emptyDatagram(self) -> None:
        """
        An empty datagram gets the time in the default format.
        """
        self.assertEqual(self.ask(b""), [(ISO_UTC, CLIENT)])

    def test_replyAddress(self) -> None:
        """
        The reply goes to the exact address the request came from, IPv6 and
        IPv4-mapped addresses included.
        """
        for addr in (
            ("127.0.0.1", 1),
            ("::1", 65535),
            ("::ffff:127.0.0.1", 40000),
            ("192.0.2.7", 5000),
        ):
            with self.subTest(addr=addr):
                self.assertEqual(self.ask(b"month 7", addr), [(b"July\n", addr)])

    def test_defaultZone(self) -> None:
        """
        Requests that name no zone get the server's default zone.
        """
        [(reply, _)] = self.ask(b"iso", zone=ZoneInfo("Asia/Tokyo"))
        self.assertEqual(reply, b"2018-03-13T21:54:58.123456+09:00\n")
        [(reply, _)] = self.ask(b"iso UTC", zone=ZoneInfo("Asia/Tokyo"))
        self.assertEqual(reply, ISO_UTC)

    def test_hostZone(self) -> None:
        """
        With no default zone the server shows its host's local time.
        """
        [(reply, _)] = self.ask(b"iso", zone=None)
        local = datetime.fromtimestamp(NOW).astimezone()
        self.assertEqual(
            reply, local.isoformat(timespec="microseconds").encode() + b"\n"
        )

    def test_defaultFormat(self) -> None:
        """
        Free text gets the server's default format; a command its own.
        """
        server, transport = makeServer(fmt=text.TimeFormat.UNIX)
        server.datagramReceived(b"Hello world", CLIENT)
        server.datagramReceived(b"iso", CLIENT)
        self.assertEqual(
            [data for data, _ in transport.written],
            [b"1520945698.123456\n", ISO_UTC],
        )

    def test_repeatedRequests(self) -> None:
        """
        A request asked again (its way of answering is kept) gets the same
        reply as the first time, at its own time; a changed default zone or
        format applies to requests asked before.
        """
        times = iter([NOW, NOW + 1.5, NOW, NOW])
        server = TextTimeServer(clock=lambda: next(times), defaultZone=UTC)
        transport = RecordingTransport()
        server.makeConnection(transport)
        server.datagramReceived(b"iso", CLIENT)
        server.datagramReceived(b"iso", CLIENT)
        server.defaultZone = ZoneInfo("Asia/Tokyo")
        server.datagramReceived(b"iso", CLIENT)
        server.defaultFormat = text.TimeFormat.UNIX
        server.datagramReceived(b"Hello world", CLIENT)
        self.assertEqual(
            [data for data, _ in transport.written],
            [
                ISO_UTC,
                b"2018-03-13T12:54:59.623456+00:00\n",
                b"2018-03-13T21:54:58.123456+09:00\n",
                b"1520945698.123456\n",
            ],
        )

    def test_requestTableBounded(self) -> None:
        """
        The table of requests asked before holds at most
        L{REPLY_BUILDERS} of them; each is still answered.
        """
        server, transport = makeServer()
        for i in range(REPLY_BUILDERS * 2):
            server.datagramReceived(b"iso UTC %d" % i, CLIENT)
        self.assertLessEqual(len(server._builders), REPLY_BUILDERS)
        self.assertEqual(len(transport.written), REPLY_BUILDERS * 2)
        self.assertEqual(server.counters.answered, REPLY_BUILDERS * 2)

    def test_clockReadPerDatagram(self) -> None:
        """
        Each datagram is timestamped when it is received.
        """
        times = iter([1.5, 2.25])
        server = TextTimeServer(clock=lambda: next(times), defaultZone=UTC)
        transport = RecordingTransport()
        server.makeConnection(transport)
        server.datagramReceived(b"unix", CLIENT)
        server.datagramReceived(b"unix", CLIENT)
        self.assertEqual(
            [data for data, _ in transport.written],
            [b"1.500000\n", b"2.250000\n"],
        )

    def test_sendFailure(self) -> None:
        """
        A reply the kernel refuses to send (a full buffer) is counted, not
        raised.
        """
        server = TextTimeServer(clock=lambda: NOW)
        server.makeConnection(RecordingTransport(fail=BlockingIOError()))
        server.datagramReceived(b"time", CLIENT)
        self.assertEqual(server.counters.sendFailed, 1)
        self.assertEqual(server.counters.answered, 0)

    @settings(max_examples=300, deadline=None)
    @given(st.binary(max_size=600))
    def test_anyBytes(self, request: bytes) -> None:
        """
        Any datagram gets at most one reply: none when it is too long,
        otherwise one short ASCII line.  Nothing is raised.
        """
        written = self.ask(request)
        if len(request) > text.MAX_REQUEST:
            self.assertEqual(written, [])
            return
        [(reply, addr)] = written
        self.assertEqual(addr, CLIENT)
        self.assertTrue(reply.endswith(b"\n"))
        self.assertNotIn(b"\n", reply[:-1])
        self.assertTrue(reply.isascii())
        self.assertLess(len(reply), 100)

    @settings(max_examples=200, deadline=None)
    @given(st.text(max_size=40))
    def test_anyZoneName(self, zone: str) -> None:
        """
        Any zone name gets the time or an C{unknown time zone} error.
        """
        [(reply, _)] = self.ask(b"iso " + zone.encode("utf-8", "surrogatepass"))
        self.assertTrue(
            reply.startswith((b"error: unknown time zone", b"error: iso takes", b"20"))
            or reply.startswith(b"error: request is not UTF-8"),
            reply,
        )


class CodecTests(SynchronousTestCase):
    """
    The codec's functions, without a protocol.
    """

    def test_parseRequest(self) -> None:
        """
        Requests parse to the values they ask for.
        """
        self.assertEqual(text.parseRequest(b""), text.DEFAULT_REQUEST)
        self.assertEqual(text.parseRequest(b"Hello"), text.TimeRequest())
        self.assertEqual(
            text.parseRequest(b"ctime"), text.TimeRequest(text.TimeFormat.CTIME)
        )
        self.assertEqual(
            text.parseRequest(b"rfc2822 UTC"),
            text.TimeRequest(text.TimeFormat.RFC2822, UTC),
        )
        self.assertEqual(text.parseRequest(b"month 5"), text.MonthRequest(5))

    def test_tooLarge(self) -> None:
        """
        Requests over L{text.MAX_REQUEST} bytes raise L{text.RequestTooLarge}.
        """
        self.assertEqual(text.MAX_REQUEST, 512)
        self.assertRaises(text.RequestTooLarge, text.parseRequest, b" " * 513)
        self.assertEqual(text.parseRequest(b" " * 512), text.DEFAULT_REQUEST)

    def test_lookupZone(self) -> None:
        """
        Zones are found by name without regard to case; malformed names are
        rejected before any lookup.
        """
        self.assertIs(text.lookupZone("UTC"), UTC)
        self.assertIs(text.lookupZone("utc"), UTC)
        self.assertEqual(str(text.lookupZone("asia/tokyo")), "Asia/Tokyo")
        for name in MALICIOUS_ZONES:
            with self.subTest(name=name):
                self.assertRaises(text.TextRequestError, text.lookupZone, name)

    def test_buildReply(self) -> None:
        """
        L{text.buildReply} renders each request; the defaults apply to
        requests that name no format or zone.
        """
        tokyo = ZoneInfo("Asia/Tokyo")
        self.assertEqual(text.buildReply(text.MonthRequest(2), NOW), b"February\n")
        self.assertEqual(
            text.buildReply(text.TimeRequest(), NOW, text.TimeFormat.CTIME, tokyo),
            b"Tue Mar 13 21:54:58 2018\n",
        )
        self.assertEqual(
            text.buildReply(
                text.TimeRequest(text.TimeFormat.ISO, UTC),
                NOW,
                text.TimeFormat.CTIME,
                tokyo,
            ),
            ISO_UTC,
        )

    def test_formatTimeEdges(self) -> None:
        """
        The epoch, times before it, and microsecond rounding.
        """
        iso = text.TimeFormat.ISO
        self.assertEqual(
            text.formatTime(0.0, iso, UTC), "1970-01-01T00:00:00.000000+00:00"
        )
        self.assertEqual(text.formatTime(-1.5, text.TimeFormat.UNIX, UTC), "-1.500000")
        self.assertEqual(
            text.formatTime(-1.5, iso, UTC), "1969-12-31T23:59:58.500000+00:00"
        )
        self.assertEqual(
            text.formatTime(0.9999996, iso, UTC), "1970-01-01T00:00:01.000000+00:00"
        )
        for now in (0.9999996, 1e9 + 0.5, -0.0000004, 1520945698.123456):
            with self.subTest(now=now):
                self.assertEqual(
                    text.formatTime(now, iso, UTC),
                    datetime.fromtimestamp(now, UTC).isoformat(timespec="microseconds"),
                )
        self.assertEqual(
            text.formatTime(2085978496.0, text.TimeFormat.CTIME, UTC),
            "Thu Feb  7 06:28:16 2036",
        )

    def test_errorReply(self) -> None:
        """
        Error lines are ASCII whatever the message holds.
        """
        self.assertEqual(
            text.errorReply(text.TextRequestError("bad \u00e9")),
            b"error: bad \\xe9\n",
        )


class TextClientCodecTests(SynchronousTestCase):
    """
    L{TextClientCodec}: the request it sends and how it reads replies.
    """

    def parse(
        self, reply: bytes, request: str = "", sent: float = 100.0, got: float = 100.5
    ) -> Reading:
        codec = TextClientCodec(request, token=False)
        _, state = codec.buildRequest(sent)
        return codec.parseReply(reply, state, sent, got)

    def test_request(self) -> None:
        """
        The request is the words, single-spaced; C{time} when there are
        none.
        """
        plain = partial(TextClientCodec, token=False)
        self.assertEqual(plain().buildRequest(0.0), (b"time", None))
        self.assertEqual(plain("  ").buildRequest(0.0)[0], b"time")
        self.assertEqual(
            plain(" iso\tEurope/Paris ").buildRequest(0.0)[0],
            b"iso Europe/Paris",
        )
        self.assertEqual(TextClientCodec("month 3").request, "month 3")
        self.assertEqual(
            (TextClientCodec.name, TextClientCodec.defaultPort), ("text", 5000)
        )

    def test_requestSize(self) -> None:
        """
        A request longer than the server answers is refused at once.
        """
        plain = partial(TextClientCodec, token=False)
        self.assertEqual(len(plain("x" * 512).buildRequest(0)[0]), 512)
        self.assertRaises(ValueError, plain, "x" * 513)
        self.assertRaises(ValueError, plain, "\u00e9" * 257)
        # The token's room included: " @" and 16 hex digits.
        self.assertEqual(len(TextClientCodec("x" * 494).buildRequest(0)[0]), 512)
        self.assertRaises(ValueError, TextClientCodec, "x" * 495)

    def test_token(self) -> None:
        """
        By default each request ends with a fresh random token, which the
        reply must carry back: then it is read as without one.
        """
        tokens = iter([b"\x01" * 8, b"\x02" * 8])
        codec = TextClientCodec("unix", randomBytes=lambda n: next(tokens))
        first, state = codec.buildRequest(0.0)
        self.assertEqual(first, b"unix @0101010101010101")
        self.assertEqual(state, b"0101010101010101")
        self.assertEqual(codec.buildRequest(0.0)[0], b"unix @0202020202020202")
        reading = codec.parseReply(b"100.500000 @0101010101010101\n", state, 100, 101)
        self.assertEqual((reading.text, reading.serverTime), ("100.500000", 100.5))

    def test_tokenMissing(self) -> None:
        """
        A reply without the request's token, or with another, is not the
        reply (a forgery, or a server that does not repeat tokens).
        """
        codec = TextClientCodec("unix")
        _, state = codec.buildRequest(0.0)
        for forged in [
            b"1999-01-01T00:00:00+00:00\n",
            b"error: go away\n",
            b"100.5 @0000000000000000\n",
            b"100.5 @" + state + b"0\n",
        ]:
            error = self.assertRaises(
                ReplyMismatch, codec.parseReply, forged, state, 0, 1
            )
            self.assertIn("--no-token", str(error))

    def test_tokenError(self) -> None:
        """
        An error line that carries the token back is the server's refusal.
        """
        codec = TextClientCodec("month 13")
        _, state = codec.buildRequest(0.0)
        error = self.assertRaises(
            ErrorLine,
            codec.parseReply,
            b"error: month must be a number from 1 to 12 @" + state + b"\n",
            state,
            0,
            1,
        )
        self.assertIn("from 1 to 12", str(error))

    def test_iso(self) -> None:
        """
        An ISO 8601 reply gives the time to the microsecond; the offset is
        the server's time minus the midpoint of send and receive.
        """
        result = self.parse(b"1970-01-01T01:01:40.750000+01:00\n")
        self.assertEqual(
            result,
            Reading(
                text="1970-01-01T01:01:40.750000+01:00",
                serverTime=100.75,
                offset=0.5,
                # The round trip, as the query measures it.
                delay=None,
                details={"format": "iso", "resolution": 1e-6},
            ),
        )

    def test_unix(self) -> None:
        """
        A Unix-seconds reply, with or without a fraction.
        """
        result = self.parse(b"99.000000\n", "unix")
        self.assertEqual(result.serverTime, 99.0)
        self.assertEqual(result.offset, -1.25)
        self.assertEqual(result.details, {"format": "unix", "resolution": 1e-6})
        self.assertEqual(self.parse(b"100\n").details["resolution"], 1.0)
        self.assertEqual(self.parse(b"-1.5\n").serverTime, -1.5)

    def test_rfc2822(self) -> None:
        """
        An RFC 2822 reply gives the time to the second.
        """
        result = self.parse(b"Tue, 13 Mar 2018 08:54:58 -0400\n", "rfc2822")
        self.assertEqual(result.serverTime, 1520945698.0)
        self.assertEqual(result.details, {"format": "rfc2822", "resolution": 1.0})

    def test_ctime(self) -> None:
        """
        A C{ctime} reply has no zone: its time is known when the request
        named the zone, and unknown otherwise.
        """
        reply = b"Tue Mar 13 21:54:58 2018\n"
        result = self.parse(reply, "ctime Asia/Tokyo")
        self.assertEqual(result.serverTime, 1520945698.0)
        self.assertEqual(result.details, {"format": "ctime", "resolution": 1.0})
        result = self.parse(b"Tue Mar  3 12:54:58 2018\n", "ctime utc")
        self.assertEqual(result.serverTime, 1520081698.0)
        result = self.parse(reply, "ctime")
        self.assertEqual(
            result, Reading(text=reply.decode()[:-1], details={"format": "ctime"})
        )

    def test_month(self) -> None:
        """
        A month name has no time, hence no offset.
        """
        result = self.parse(b"March\n", "month 3")
        self.assertEqual(result, Reading(text="March", details={"format": "month"}))

    def test_unknownLine(self) -> None:
        """
        A line that is no known format is shown, with no time.
        """
        result = self.parse(b"the time is now\r\n")
        self.assertEqual(result.text, "the time is now")
        self.assertIsNone(result.serverTime)
        self.assertEqual(result.details, {"format": "unknown"})
        self.assertEqual(self.parse(b"2026-11-21T20:53:39\n").serverTime, None)
        self.assertEqual(self.parse(b"\n").text, "")

    def test_error(self) -> None:
        """
        An C{error:} line is a refusal, L{text.ErrorLine}, carrying the
        server's message; the query names the server in it (see
        L{tests.test_client.QueryTests.test_refused}).
        """
        exc = self.assertRaises(
            text.ErrorLine, self.parse, b"error: unknown time zone 'Mars'\n"
        )
        self.assertIsInstance(exc, ServerRefused)
        self.assertEqual(exc.reason, "unknown time zone 'Mars'")
        self.assertEqual(str(exc), "error from the server: unknown time zone 'Mars'")
        exc.server = "127.0.0.1:5000"
        self.assertEqual(
            str(exc), "error from 127.0.0.1:5000: unknown time zone 'Mars'"
        )

    def test_errorWithoutMessage(self) -> None:
        """
        An C{error:} line with nothing after it says that it gave no reason.
        """
        exc = self.assertRaises(text.ErrorLine, self.parse, b"error:  \n")
        self.assertEqual(str(exc), "error from the server: (no reason given)")

    def test_mismatch(self) -> None:
        """
        Anything but one line of UTF-8 text is not a reply.
        """
        for data in (
            b"",
            b"\xff\n",
            b"March",
            b"a\nb\n",
            b"a\rb\n",
            b"\x00\x00\x00\x01",
        ):
            with self.subTest(data=data):
                self.assertRaises(ReplyMismatch, self.parse, data)

    def test_readTime(self) -> None:
        """
        L{readTime} recognises each format by its shape.
        """
        self.assertEqual(readTime("12.5")[0], 12.5)
        self.assertEqual(readTime("January"), (None, {"format": "month"}))
        self.assertEqual(readTime("Thu, 01 Jan 1970 00:00:10 +0000")[0], 10.0)
        self.assertEqual(readTime("Thu, 01 Jan 1970 00:00:10 -0000")[0], None)
        self.assertEqual(readTime("Thu Jan  1 00:00:10 1970", UTC)[0], 10.0)
        self.assertEqual(readTime("hello"), (None, {"format": "unknown"}))

    def test_readTimeOutOfRange(self) -> None:
        """
        Unix seconds outside the years 1 to 9999 (so never infinite) are no
        time: a broken server's reply gives no offset, and valid JSON.
        """
        for line in [
            "9" * 400,
            "-" + "9" * 400,
            "253402300800",
            "-62135596801",
        ]:
            with self.subTest(line=line[:20]):
                self.assertEqual(readTime(line), (None, {"format": "unknown"}))
        self.assertEqual(readTime("253402300799")[0], 253402300799.0)
        self.assertEqual(readTime("-62135596800")[0], -62135596800.0)


class TokenTests(SynchronousTestCase):
    """
    A request that ends with a token gets it back at the end of its reply.
    """

    def test_splitToken(self) -> None:
        cases = [
            (b"time @abc", (b"time ", b"abc")),
            (b"@abc", (b"", b"abc")),
            (b"iso UTC @A-b_9\n", (b"iso UTC ", b"A-b_9")),
            (b"time @" + b"a" * 64, (b"time ", b"a" * 64)),
            (b"time @" + b"a" * 65, (b"time @" + b"a" * 65, None)),
            (b"time", (b"time", None)),
            (b"time @", (b"time @", None)),
            (b"mail@example", (b"mail@example", None)),
            (b"time @a!b", (b"time @a!b", None)),
            (b"time @abc def", (b"time @abc def", None)),
        ]
        for data, expected in cases:
            self.assertEqual(text.splitToken(data), expected, data)

    def server(self) -> tuple[TextTimeServer, RecordingTransport]:
        server = TextTimeServer(clock=lambda: 100.25, defaultZone=UTC)
        transport = RecordingTransport()
        server.makeConnection(transport)  # type: ignore[arg-type]
        return server, transport

    def test_replyCarriesToken(self) -> None:
        """
        The reply is the one to the request without its token, the token
        added as its last word; error lines too.
        """
        server, transport = self.server()
        for request, reply in [
            (b"unix @t1", b"100.250000 @t1\n"),
            (b"@t2", b"1970-01-01T00:01:40.250000+00:00 @t2\n"),
            (b"month 3 @t3", b"March @t3\n"),
            (
                b"month 13 @t4",
                b"error: month must be a number from 1 to 12, not '13' @t4\n",
            ),
            (b"unix", b"100.250000\n"),
            (b"unix @t!", b"error: unknown time zone '@t!'\n"),
        ]:
            server.datagramReceived(request, ("192.0.2.1", 4000))
            self.assertEqual(transport.written[-1][0], reply, request)
        self.assertEqual(server.counters.malformed, 2)

    def test_notLarger(self) -> None:
        """
        A token adds as many bytes to the reply as to the request.
        """
        server, transport = self.server()
        server.datagramReceived(b"unix", ("192.0.2.1", 4000))
        server.datagramReceived(b"unix @" + b"x" * 64, ("192.0.2.1", 4000))
        plain, tokened = (data for data, _ in transport.written)
        self.assertEqual(len(tokened) - len(plain), 66)

    def test_tooLarge(self) -> None:
        server, transport = self.server()
        server.datagramReceived(b"x" * 500 + b" @" + b"y" * 20, ("192.0.2.1", 4000))
        self.assertEqual(transport.written, [])
        self.assertEqual(server.counters.dropped, 1)

    def test_clientAndServer(self) -> None:
        """
        The client's request, answered by the server, gives the server's
        time.
        """
        server, transport = self.server()
        codec = TextClientCodec("unix")
        request, state = codec.buildRequest(100.0)
        server.datagramReceived(request, ("192.0.2.1", 4000))
        reading = codec.parseReply(transport.written[-1][0], state, 100.0, 100.5)
        self.assertEqual(reading.serverTime, 100.25)
