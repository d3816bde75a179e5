"""
Tests for L{udptime.rfc868} (the RFC 868 Time codec) and L{TimeServer}.
"""

from __future__ import annotations

import calendar

from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from tests.support import RecordingTransport
from udptime import rfc868
from udptime.reading import Reading, ReplyMismatch
from udptime.server import TimeServer

ERA = 1 << 32
SIXTY_EIGHT_YEARS = (1 << 31) - 1


def utc(*fields: int) -> int:
    """
    The Unix time of a UTC date and time.
    """
    return calendar.timegm((*fields, 0, 0, 0)[:9])


# (Unix time, reply bytes): the 2036 wrap, the epochs, before 1970, after 2036.
REPLY_CASES = [
    (utc(2036, 2, 7, 6, 28, 15), b"\xff\xff\xff\xff"),
    (utc(2036, 2, 7, 6, 28, 16), b"\x00\x00\x00\x00"),
    (utc(2036, 2, 7, 6, 28, 17), b"\x00\x00\x00\x01"),
    (utc(2036, 2, 7, 6, 28, 16) + 0.999, b"\x00\x00\x00\x00"),
    (utc(2026, 11, 21, 20, 53, 39), b"\xee\xac\x83\x53"),
    (utc(2026, 11, 21, 20, 53, 39) + 0.999999, b"\xee\xac\x83\x53"),
    (0, b"\x83\xaa\x7e\x80"),
    (-1, b"\x83\xaa\x7e\x7f"),
    (-0.5, b"\x83\xaa\x7e\x7f"),
    (utc(1900, 1, 1, 0, 0, 0), b"\x00\x00\x00\x00"),
    (utc(2040, 1, 1, 0, 0, 0), b"\x07\x54\xfd\x00"),
    (utc(2106, 2, 7, 6, 28, 16), b"\x83\xaa\x7e\x80"),
]

# (reply bytes, local clock, the Unix time the client reads).
DECODE_CASES = [
    # Small values are after the 2036 wrap for a clock near 2036, or now ...
    (b"\x00\x00\x00\x10", utc(2036, 2, 7, 6, 0, 0), utc(2036, 2, 7, 6, 28, 32)),
    (b"\x00\x00\x00\x10", utc(2036, 2, 8, 0, 0, 0), utc(2036, 2, 7, 6, 28, 32)),
    (b"\x00\x00\x00\x10", utc(2026, 11, 21, 20, 53, 39), utc(2036, 2, 7, 6, 28, 32)),
    # ... and 1900 only for a clock before 1968.
    (b"\x00\x00\x00\x10", utc(1930, 1, 1, 0, 0, 0), utc(1900, 1, 1, 0, 0, 16)),
    (b"\xff\xff\xff\xff", utc(2036, 2, 7, 6, 28, 17), utc(2036, 2, 7, 6, 28, 15)),
    (b"\x00\x00\x00\x00", utc(2036, 2, 7, 6, 28, 15), utc(2036, 2, 7, 6, 28, 16)),
    (b"\x00\x00\x00\x01", utc(2036, 2, 7, 6, 28, 16), utc(2036, 2, 7, 6, 28, 17)),
    (b"\xee\xac\x83\x53", utc(2026, 11, 21, 20, 53, 40), utc(2026, 11, 21, 20, 53, 39)),
    (b"\x83\xaa\x7e\x7f", 0, -1),
    (b"\x83\xaa\x7e\x80", utc(2100, 1, 1, 0, 0, 0), utc(2106, 2, 7, 6, 28, 16)),
    (b"\x07\x54\xfd\x00", utc(2040, 1, 1, 0, 0, 0), utc(2040, 1, 1, 0, 0, 0)),
]


class CodecTests(SynchronousTestCase):
    """
    The reply bytes and their reading, table-driven and as properties.
    """

    def test_buildReply(self) -> None:
        """
        A reply is the 4 big-endian bytes of the seconds since 1900 modulo
        2^32, truncated toward the past.
        """
        for now, expected in REPLY_CASES:
            with self.subTest(now=now):
                self.assertEqual(rfc868.buildReply(now), expected)

    def test_parseReply(self) -> None:
        """
        L{rfc868.parseReply} gives the 32-bit value back.
        """
        for now, data in REPLY_CASES:
            with self.subTest(now=now):
                self.assertEqual(
                    rfc868.parseReply(data), (int(now // 1) + 2_208_988_800) % ERA
                )

    def test_parseWrongSize(self) -> None:
        """
        Any reply that is not exactly 4 bytes is not an RFC 868 reply.
        """
        for data in (b"", b"\x00", b"\x00" * 3, b"\x00" * 5, b"\x00" * 48):
            with self.subTest(size=len(data)):
                self.assertRaises(ReplyMismatch, rfc868.parseReply, data)

    def test_clientDecode(self) -> None:
        """
        The client reads a reply in the era nearest to its own clock.
        """
        codec = rfc868.TimeClientCodec()
        for data, local, expected in DECODE_CASES:
            with self.subTest(data=data, local=local):
                result = codec.parseReply(data, None, local, local)
                self.assertEqual(result.serverTime, expected)

    @given(
        st.floats(min_value=-5e9, max_value=1e10, allow_nan=False),
        st.integers(-SIXTY_EIGHT_YEARS, SIXTY_EIGHT_YEARS),
    )
    def test_roundTrip(self, now: float, skew: int) -> None:
        """
        A client whose clock is within 68 years of the server's reads the
        server's time to the second.
        """
        codec = rfc868.TimeClientCodec()
        local = now // 1 + skew
        result = codec.parseReply(rfc868.buildReply(now), None, local, local)
        self.assertEqual(result.serverTime, now // 1)


class ClientCodecTests(SynchronousTestCase):
    """
    L{rfc868.TimeClientCodec}.
    """

    def setUp(self) -> None:
        self.codec = rfc868.TimeClientCodec()

    def test_names(self) -> None:
        """
        The codec is called C{time} and uses the registered port 37.
        """
        self.assertEqual((self.codec.name, self.codec.defaultPort), ("time", 37))

    def test_request(self) -> None:
        """
        The request is an empty datagram.
        """
        self.assertEqual(self.codec.buildRequest(1000.0), (b"", None))

    def test_result(self) -> None:
        """
        The offset is the server's whole second minus the midpoint of the
        send and receive times; the resolution is in the details.
        """
        server = utc(2026, 11, 21, 20, 53, 39)
        data = rfc868.buildReply(server + 0.7)
        sent, received = server - 1.25, server - 1.0
        reading = self.codec.parseReply(data, None, sent, received)
        self.assertEqual(
            reading,
            Reading(
                text="2026-11-21T20:53:39+00:00",
                serverTime=server,
                # The middle of the reported second against the midpoint.
                offset=1.625,
                # The round trip, as the query measures it.
                delay=None,
                details={
                    "seconds": 0xEEAC8353,
                    "resolution": 1.0,
                    "unauthenticated": True,
                },
            ),
        )

    def test_wrongSize(self) -> None:
        """
        A reply of another length is not ours: L{ReplyMismatch}.
        """
        for data in (b"", b"\x01\x02\x03", b"\x00" * 5):
            with self.subTest(size=len(data)):
                self.assertRaises(
                    ReplyMismatch,
                    self.codec.parseReply,
                    data,
                    None,
                    1.0,
                    2.0,
                )


class TimeServerTests(SynchronousTestCase):
    """
    L{TimeServer} with a recording transport and an injected clock.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(utc(2036, 2, 7, 6, 28, 17) + 0.5)
        self.known = True
        self.server = TimeServer(clock=self.clock.seconds, timeKnown=lambda: self.known)
        self.transport = RecordingTransport()
        self.server.makeConnection(self.transport)  # type: ignore[arg-type]

    def test_emptyDatagram(self) -> None:
        """
        An empty datagram gets the 4-byte time, sent to its source.
        """
        self.server.datagramReceived(b"", ("127.0.0.1", 40000))
        self.assertEqual(
            self.transport.written, [(b"\x00\x00\x00\x01", ("127.0.0.1", 40000))]
        )
        counters = self.server.counters.snapshot()
        self.assertEqual((counters["received"], counters["answered"]), (1, 1))

    def test_anyDatagram(self) -> None:
        """
        What the request holds is ignored: any datagram gets the time, at
        the time it arrives, and an IPv6 source gets the reply.
        """
        self.server.datagramReceived(b"x" * 1000, ("::ffff:127.0.0.1", 5))
        self.clock.advance(1)
        self.server.datagramReceived(b"\x00" * 48, ("::1", 6))
        self.assertEqual(
            self.transport.written,
            [
                (b"\x00\x00\x00\x01", ("::ffff:127.0.0.1", 5)),
                (b"\x00\x00\x00\x02", ("::1", 6)),
            ],
        )

    def test_timeUnknown(self) -> None:
        """
        While the server cannot determine the time it makes no reply, and
        counts the datagram as dropped; it answers again once it can.
        """
        self.known = False
        self.server.datagramReceived(b"", ("127.0.0.1", 40000))
        self.assertEqual(self.transport.written, [])
        counters = self.server.counters.snapshot()
        self.assertEqual(
            (counters["received"], counters["dropped"], counters["answered"]),
            (1, 1, 0),
        )
        self.known = True
        self.server.datagramReceived(b"", ("127.0.0.1", 40000))
        self.assertEqual(len(self.transport.written), 1)

    def test_defaultTrustsSystemClock(self) -> None:
        """
        By default the server trusts the system clock and answers.
        """
        server = TimeServer(clock=self.clock.seconds)
        transport = RecordingTransport()
        server.makeConnection(transport)  # type: ignore[arg-type]
        server.datagramReceived(b"", ("127.0.0.1", 40000))
        self.assertEqual(len(transport.written), 1)

    def test_sendFailed(self) -> None:
        """
        A reply the kernel will not send is counted, not raised.
        """
        server = TimeServer(clock=self.clock.seconds)
        server.makeConnection(RecordingTransport(fail=BlockingIOError()))  # type: ignore[arg-type]
        server.datagramReceived(b"", ("127.0.0.1", 40000))
        counters = server.counters.snapshot()
        self.assertEqual((counters["sendFailed"], counters["answered"]), (1, 0))

    @given(st.binary(max_size=2048))
    def test_anyBytes(self, data: bytes) -> None:
        """
        No datagram makes the protocol raise or fail: each gets 4 bytes.
        """
        before = len(self.transport.written)
        self.server.datagramReceived(data, ("127.0.0.1", 40000))
        self.assertEqual(len(self.transport.written), before + 1)
        self.assertEqual(len(self.transport.written[-1][0]), 4)
        self.assertEqual(self.server.counters.internalErrors, 0)
