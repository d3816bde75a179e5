"""
Tests for L{udptime.ntp}: the SNTP/NTP codec, server and client sides.
"""

from __future__ import annotations

import contextlib
import struct
from datetime import UTC, datetime

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from udptime import ntp
from udptime.clock import (
    NTP_UNIX_OFFSET,
    ClockState,
    Leap,
    ntp64ToUnix,
    unixToNTP64,
)
from udptime.ntp import (
    MalformedPacket,
    Mode,
    NotServed,
    NTPClientCodec,
    NTPCodecError,
    NTPPacket,
    buildKissOfDeath,
    buildReply,
    parseRequest,
)
from udptime.reading import BadReply, Reading, ReplyMismatch, ServerRefused

TRANSMIT = bytes.fromhex("0123456789abcdef")
"""A request's transmit timestamp: a random cookie, as chronyd sends."""

ERA_1 = datetime(2036, 2, 7, 6, 28, 16, tzinfo=UTC).timestamp()
"""Unix time of the start of NTP era 1."""

SYNCED = ClockState(
    leap=Leap.NONE,
    synchronised=True,
    stratum=2,
    refid=bytes([192, 0, 2, 1]),
    rootDelay=0.25,
    rootDispersion=0.5,
    referenceTime=1_800_000_000.0,
    precision=-20,
)


def header(
    version: int = 4,
    mode: int = 3,
    leap: int = 0,
    poll: int = 6,
    transmit: bytes = TRANSMIT,
    middle: bytes = b"",
) -> bytes:
    """
    A 48-byte NTP header; C{middle} replaces bytes 4 to 40 (zero by default).
    """
    first = bytes([(leap << 6) | (version << 3) | mode, 0, poll & 0xFF, 0])
    return first + middle.ljust(36, b"\0")[:36] + transmit


def extensionField(length: int, fieldType: int = 0x0104) -> bytes:
    """
    An extension field of C{length} bytes (its body zeros).
    """
    return struct.pack("!HH", fieldType, length) + b"\0" * (length - 4)


def assertClose(
    case: SynchronousTestCase, actual: float | None, expected: float
) -> None:
    """
    Fail unless C{actual} is within a microsecond of C{expected}.
    """
    if actual is None or not abs(actual - expected) <= 1e-6:
        case.fail(f"{actual!r} is not within 1e-6 of {expected!r}")


def noFuzz(bits: int) -> int:
    """
    A C{randomBits} that gives the middle of the spread around a step (half
    a step: see L{ntp.fuzzTimestamp}), so that timestamps are predictable:
    the time rounded to the nearest step of the clock's precision.
    """
    return (1 << bits) >> 1


class ParseRequestTests(SynchronousTestCase):
    """
    L{parseRequest} accepts client and symmetric active requests and raises
    L{NTPCodecError} for everything the server drops.
    """

    ACCEPTED = (
        ("v4 client", header(4, 3), 40000),
        ("v3 client", header(3, 3), 40000),
        ("v2 client", header(2, 3), 40000),
        ("v1 client", header(1, 3), 40000),
        ("v4 symmetric active", header(4, 1), 123),
        ("v1 mode 0 from a client port", header(1, 0), 40000),
        ("client from port 123", header(4, 3), 123),
        ("LI 3 as ntpdig sends", header(4, 3, leap=3), 40000),
        ("zero transmit", header(4, 3, transmit=bytes(8)), 40000),
        ("28-byte extension field", header() + extensionField(28), 40000),
        ("16 + 28-byte fields", header() + extensionField(16) + extensionField(28), 1),
        ("large extension field", header() + extensionField(1024), 40000),
    )

    MALFORMED = (
        ("empty", b"", 40000),
        ("47 bytes", header()[:47], 40000),
        ("mode 7 monlist, 8 bytes", bytes([0x17, 0x00, 0x03, 0x2A, 0, 0, 0, 0]), 1),
        ("mode 6 readvar, 12 bytes", bytes([0x16, 0x02, 0, 1]) + bytes(8), 1),
        ("49 bytes", header() + b"\0", 40000),
        ("50 bytes", header() + b"\0\0", 40000),
        ("51 bytes", header() + b"\0\0\0", 40000),
        ("4 bytes that are not a crypto-NAK", header() + b"\0\0\0\1", 40000),
        ("8 stray bytes", header() + bytes(8), 40000),
        ("12 stray bytes", header() + bytes(12), 40000),
        ("last extension field of 16 bytes", header() + extensionField(16), 1),
        (
            "extension field of length 12",
            header() + extensionField(28)[:2] + b"\0\x0c" + bytes(24),
            1,
        ),
        (
            "extension field length not a multiple of 4",
            header() + struct.pack("!HH", 1, 30) + bytes(28),
            1,
        ),
        (
            "extension field longer than the packet",
            header() + struct.pack("!HH", 1, 64) + bytes(28),
            1,
        ),
        ("field then stray bytes", header() + extensionField(28) + bytes(8), 1),
        ("v3 with 28 trailing bytes", header(3) + extensionField(28), 1),
    )

    NOT_SERVED = (
        ("version 0", header(0, 3), 40000),
        ("version 5", header(5, 3), 40000),
        ("version 6", header(6, 3), 40000),
        ("version 7", header(7, 3), 40000),
        ("v4 mode 0", header(4, 0), 40000),
        ("v2 mode 0", header(2, 0), 40000),
        ("v1 mode 0 from port 123", header(1, 0), 123),
        ("v1 mode 0 from an unknown port", header(1, 0), None),
        ("mode 2", header(4, 2), 40000),
        ("mode 4", header(4, 4), 40000),
        ("mode 5", header(4, 5), 40000),
        ("mode 6 padded", header(2, 6), 40000),
        ("mode 7 padded", header(2, 7), 40000),
        ("v4 MD5 MAC", header() + struct.pack("!I", 1) + bytes(16), 40000),
        ("v4 SHA-1 MAC", header() + struct.pack("!I", 1) + bytes(20), 40000),
        ("v3 MD5 MAC", header(3) + struct.pack("!I", 7) + bytes(16), 40000),
        ("v3 SHA-1 MAC", header(3) + struct.pack("!I", 7) + bytes(20), 40000),
        (
            "extension field then MAC",
            header() + extensionField(16) + struct.pack("!I", 1) + bytes(16),
            40000,
        ),
        ("crypto-NAK", header() + bytes(4), 40000),
    )

    def test_accepted(self) -> None:
        """
        Client and symmetric active requests of versions 1 to 4 parse into
        their header, whatever extension fields follow.
        """
        for name, data, port in self.ACCEPTED:
            with self.subTest(name):
                packet = parseRequest(data, port)
                self.assertEqual(packet, NTPPacket.fromBytes(data))
                self.assertEqual(packet.transmitTimestamp, int.from_bytes(data[40:48]))

    def test_malformed(self) -> None:
        """
        What is not a well-formed NTP packet raises L{MalformedPacket}.
        """
        for name, data, port in self.MALFORMED:
            with self.subTest(name):
                self.assertRaises(MalformedPacket, parseRequest, data, port)

    def test_notServed(self) -> None:
        """
        Well-formed packets the server does not answer raise L{NotServed}.
        """
        for name, data, port in self.NOT_SERVED:
            with self.subTest(name):
                self.assertRaises(NotServed, parseRequest, data, port)

    def test_errorsAreCodecErrors(self) -> None:
        """
        Both error types are L{NTPCodecError}s, and L{ValueError}s.
        """
        self.assertTrue(issubclass(MalformedPacket, NTPCodecError))
        self.assertTrue(issubclass(NotServed, NTPCodecError))
        self.assertTrue(issubclass(NTPCodecError, ValueError))

    @given(st.binary(max_size=300), st.one_of(st.none(), st.integers(0, 65535)))
    def test_arbitraryBytes(self, data: bytes, port: int | None) -> None:
        """
        On any bytes, L{parseRequest} returns a request or raises an
        L{NTPCodecError}, nothing else.
        """
        try:
            packet = parseRequest(data, port)
        except NTPCodecError:
            return
        self.assertIn(packet.mode, (0, 1, 3))
        self.assertIn(packet.version, (1, 2, 3, 4))


class PacketTests(SynchronousTestCase):
    """
    L{NTPPacket} encodes and decodes the header exactly.
    """

    @given(st.binary(min_size=48, max_size=48))
    def test_roundTrip(self, data: bytes) -> None:
        """
        Decoding then encoding any 48 bytes gives the same bytes.
        """
        self.assertEqual(NTPPacket.fromBytes(data).toBytes(), data)

    def test_fields(self) -> None:
        """
        Each field is read from its place in the header.
        """
        data = (
            bytes([0b11_100_011, 2, 0xFA, 0xE7])
            + struct.pack("!II", 0x00010000, 0x00008000)
            + b"GPS\0"
            + struct.pack("!QQQQ", 1, 2, 3, 4)
        )
        self.assertEqual(
            NTPPacket.fromBytes(data),
            NTPPacket(
                leap=3,
                version=4,
                mode=3,
                stratum=2,
                poll=-6,
                precision=-25,
                rootDelay=0x10000,
                rootDispersion=0x8000,
                refid=b"GPS\0",
                referenceTimestamp=1,
                originTimestamp=2,
                receiveTimestamp=3,
                transmitTimestamp=4,
            ),
        )

    def test_short(self) -> None:
        """
        Fewer than 48 bytes are no packet.
        """
        self.assertRaises(MalformedPacket, NTPPacket.fromBytes, bytes(47))


def reply(
    request: bytes,
    state: ClockState = SYNCED,
    received: float = 1_800_000_100.25,
    transmit: float = 1_800_000_100.5,
    port: int = 40000,
    minPoll: int = ntp.MIN_POLL,
) -> NTPPacket:
    """
    Parse C{request} and decode the reply L{buildReply} gives, without fuzz.
    """
    data = buildReply(
        parseRequest(request, port),
        state,
        received,
        transmit,
        minPoll=minPoll,
        randomBits=noFuzz,
    )
    assert len(data) == 48
    return NTPPacket.fromBytes(data)


def withState(**changes: object) -> ClockState:
    """
    L{SYNCED} with some fields changed.
    """
    fields = {
        "leap": SYNCED.leap,
        "synchronised": SYNCED.synchronised,
        "stratum": SYNCED.stratum,
        "refid": SYNCED.refid,
        "rootDelay": SYNCED.rootDelay,
        "rootDispersion": SYNCED.rootDispersion,
        "referenceTime": SYNCED.referenceTime,
        "precision": SYNCED.precision,
    }
    fields.update(changes)
    return ClockState(**fields)  # type: ignore[arg-type]


class BuildReplyTests(SynchronousTestCase):
    """
    L{buildReply} fills every field of the reply as RFC 5905 and the real
    servers do.
    """

    def test_fields(self) -> None:
        """
        A synchronised server's reply to a v4 client request, field by
        field.
        """
        self.assertEqual(
            reply(header(4, 3, leap=3, poll=6)),
            NTPPacket(
                leap=0,
                version=4,
                mode=4,
                stratum=2,
                poll=6,
                precision=-20,
                rootDelay=0x4000,
                rootDispersion=0x8000,
                refid=bytes([192, 0, 2, 1]),
                referenceTimestamp=unixToNTP64(1_800_000_000.0),
                originTimestamp=int.from_bytes(TRANSMIT),
                receiveTimestamp=unixToNTP64(1_800_000_100.25),
                transmitTimestamp=unixToNTP64(1_800_000_100.5),
            ),
        )

    def test_modes(self) -> None:
        """
        Mode 3 is answered with mode 4, mode 1 with mode 2, and a version-1
        mode-0 client request with mode 4.
        """
        for requestMode, version, replyMode in ((3, 4, 4), (1, 4, 2), (0, 1, 4)):
            with self.subTest(requestMode=requestMode):
                self.assertEqual(reply(header(version, requestMode)).mode, replyMode)

    def test_version(self) -> None:
        """
        The reply has the request's version.
        """
        for version in (1, 2, 3, 4):
            with self.subTest(version=version):
                self.assertEqual(reply(header(version, 3)).version, version)

    def test_leap(self) -> None:
        """
        LI is the leap warning while synchronised, 3 otherwise, whatever the
        leap warning.
        """
        for leap in Leap.NONE, Leap.INSERT, Leap.DELETE:
            with self.subTest(leap=leap):
                self.assertEqual(reply(header(), withState(leap=leap)).leap, leap)
                unsynchronised = withState(leap=leap, synchronised=False, stratum=16)
                self.assertEqual(reply(header(), unsynchronised).leap, 3)

    def test_unsynchronised(self) -> None:
        """
        An unsynchronised server sends LI 3 and stratum 0 (16 is never put
        on the wire), with its other fields as they are.
        """
        state = withState(
            synchronised=False,
            stratum=16,
            refid=bytes(4),
            rootDispersion=16.0,
            referenceTime=None,
        )
        packet = reply(header(), state)
        self.assertEqual((packet.leap, packet.stratum), (3, 0))
        self.assertEqual(packet.refid, bytes(4))
        self.assertEqual(packet.rootDispersion, 16 << 16)
        self.assertEqual(packet.referenceTimestamp, 0)
        self.assertEqual(packet.originTimestamp, int.from_bytes(TRANSMIT))

    def test_stratum(self) -> None:
        """
        A synchronised server sends its stratum.
        """
        for stratum in 1, 10, 15:
            with self.subTest(stratum=stratum):
                self.assertEqual(
                    reply(header(), withState(stratum=stratum)).stratum, stratum
                )

    def test_poll(self) -> None:
        """
        The poll is the request's, at least the server's minimum and at most
        17.
        """
        for requestPoll, minPoll, expected in [
            (6, 4, 6),
            (0, 4, 4),
            (-6, 4, 4),
            (4, 4, 4),
            (17, 4, 17),
            (30, 4, 17),
            (127, 4, 17),
            (-128, 4, 4),
            (3, 0, 3),
            (-2, 0, 0),
        ]:
            with self.subTest(requestPoll=requestPoll, minPoll=minPoll):
                packet = reply(header(poll=requestPoll), minPoll=minPoll)
                self.assertEqual(packet.poll, expected)

    def test_precision(self) -> None:
        """
        The precision is the clock's, signed.
        """
        for precision in -32, -25, -20, 0:
            with self.subTest(precision=precision):
                packet = reply(header(), withState(precision=precision))
                self.assertEqual(packet.precision, precision)

    def test_rootFields(self) -> None:
        """
        Root delay and dispersion are NTP short format, saturating.
        """
        for seconds, encoded in [
            (0.0, 0),
            (1 / 65536, 1),
            (0.5, 0x8000),
            (1.0, 0x10000),
            (16.0, 0x100000),
            (70000.0, 0xFFFFFFFF),
        ]:
            with self.subTest(seconds=seconds):
                packet = reply(
                    header(), withState(rootDelay=seconds, rootDispersion=seconds)
                )
                self.assertEqual(packet.rootDelay, encoded)
                self.assertEqual(packet.rootDispersion, encoded)

    def test_refid(self) -> None:
        """
        The refid is the clock's, as is.
        """
        self.assertEqual(
            reply(header(), withState(stratum=1, refid=b"GPS\0")).refid, b"GPS\0"
        )

    def test_referenceTimestamp(self) -> None:
        """
        The reference timestamp is the clock's reference time, or 0 when
        unknown.
        """
        self.assertEqual(
            reply(
                header(), withState(referenceTime=1_799_999_000.5)
            ).referenceTimestamp,
            unixToNTP64(1_799_999_000.5),
        )
        self.assertEqual(
            reply(header(), withState(referenceTime=None)).referenceTimestamp, 0
        )

    def test_originCopied(self) -> None:
        """
        The origin timestamp is the request's transmit timestamp, byte for
        byte, zero included.
        """
        for transmit in TRANSMIT, bytes(8), b"\xff" * 8, b"\x80" + bytes(7):
            with self.subTest(transmit=transmit):
                data = buildReply(
                    parseRequest(header(transmit=transmit)), SYNCED, 1.0, 2.0
                )
                self.assertEqual(data[24:32], transmit)

    def test_randomBelowPrecision(self) -> None:
        """
        The bits of the receive and transmit timestamps below the clock's
        precision are random; those above are the time's.
        """
        asked: list[int] = []

        def ones(bits: int) -> int:
            asked.append(bits)
            return (1 << bits) - 1

        received, transmit = 1_800_000_100.25, 1_800_000_100.5
        data = buildReply(
            parseRequest(header()),
            withState(precision=-20),
            received,
            transmit,
            randomBits=ones,
        )
        packet = NTPPacket.fromBytes(data)
        self.assertEqual(asked, [12, 12])
        # Half a step less one unit later than the time, itself a whole step.
        self.assertEqual(packet.receiveTimestamp, unixToNTP64(received) + 0x7FF)
        self.assertEqual(packet.transmitTimestamp, unixToNTP64(transmit) + 0x7FF)

    def test_fuzzKeepsOrder(self) -> None:
        """
        When receive and transmit fall in the same step of the clock, the
        random bits never put the transmit timestamp before the receive
        timestamp.
        """
        values = iter([0xFFF, 0])
        data = buildReply(
            parseRequest(header()),
            withState(precision=-20),
            1_800_000_100.25,
            1_800_000_100.25,
            randomBits=lambda bits: next(values),
        )
        packet = NTPPacket.fromBytes(data)
        self.assertEqual(packet.transmitTimestamp, packet.receiveTimestamp)

    def test_transmitReadLast(self) -> None:
        """
        Given a callable for the transmit time, L{buildReply} calls it once,
        last: after the receive timestamp and the transmit timestamp's own
        random bits are made; the reply is the one the same time given as a
        number builds.
        """
        events: list[str] = []

        def randomBits(bits: int) -> int:
            events.append("bits")
            return 5

        def transmitTime() -> float:
            events.append("transmit")
            return 1_800_000_100.5

        for data in header(), header(mode=1), header() + extensionField(28):
            with self.subTest(data=data):
                del events[:]
                request = parseRequest(data)
                read = buildReply(
                    request,
                    SYNCED,
                    1_800_000_100.25,
                    transmitTime,
                    randomBits=randomBits,
                )
                self.assertEqual(events, ["bits", "bits", "transmit"])
                given = buildReply(
                    request,
                    SYNCED,
                    1_800_000_100.25,
                    1_800_000_100.5,
                    randomBits=lambda bits: 5,
                )
                self.assertEqual(read, given)

    def test_fuzzTimestamp(self) -> None:
        """
        L{ntp.fuzzTimestamp} rounds to the nearest step of the precision
        (32 + precision low bits; none when the precision is -32 or finer,
        all 32 fraction bits at 0) and spreads it by random bits over half
        a step either way: the random bits' middle gives the step itself.
        """
        ones = lambda bits: (1 << bits) - 1  # noqa: E731
        zeros = lambda bits: 0  # noqa: E731
        fuzz = ntp.fuzzTimestamp
        self.assertEqual(fuzz(0x1_0000_0000, -25, ones), 0x1_0000_003F)
        self.assertEqual(fuzz(0x1_0000_0000, -25, zeros), 0x0_FFFF_FFC0)
        self.assertEqual(fuzz(0x1_0000_0000, -25, noFuzz), 0x1_0000_0000)
        self.assertEqual(fuzz(0x1_0000_0000, -32, ones), 0x1_0000_0000)
        self.assertEqual(fuzz(0x1_0000_0000, -40, ones), 0x1_0000_0000)
        self.assertEqual(fuzz(0x1_0000_0000, 0, ones), 0x1_7FFF_FFFF)
        # Rounded to the nearest step: down below half a step, up from it.
        self.assertEqual(fuzz(0x1_0000_003F, -25, noFuzz), 0x1_0000_0000)
        self.assertEqual(fuzz(0x1_0000_0040, -25, noFuzz), 0x1_0000_0080)
        self.assertEqual(fuzz(0x1_FFFF_FFFF, -25, noFuzz), 0x2_0000_0000)
        # Wrapped into the era.
        self.assertEqual(fuzz((1 << 64) - 1, -25, noFuzz), 0)

    def test_replyNeverLonger(self) -> None:
        """
        A request with extension fields gets a plain 48-byte reply.
        """
        data = buildReply(parseRequest(header() + extensionField(28)), SYNCED, 1.0, 2.0)
        self.assertEqual(len(data), 48)

    @settings(max_examples=300)
    @given(
        first=st.integers(0, 255),
        rest=st.binary(min_size=47, max_size=47),
        trailer=st.binary(max_size=120),
        port=st.integers(0, 65535),
        received=st.floats(-2.3e9, 6.4e9),
        elapsed=st.floats(0, 1),
    )
    def test_replyProperties(
        self,
        first: int,
        rest: bytes,
        trailer: bytes,
        port: int,
        received: float,
        elapsed: float,
    ) -> None:
        """
        Whatever the datagram: an answered request's reply is never longer
        than the request, and its origin is the request's transmit bytes.
        """
        data = bytes([first]) + rest + trailer
        try:
            request = parseRequest(data, port)
        except NTPCodecError:
            return
        out = buildReply(request, SYNCED, received, received + elapsed)
        self.assertLessEqual(len(out), len(data))
        self.assertEqual(out[24:32], data[40:48])


class EraTests(SynchronousTestCase):
    """
    Timestamps around the NTP era boundary (2036-02-07 06:28:16 UTC) and
    before 1970 and after 2036.
    """

    def test_boundary(self) -> None:
        """
        At 06:28:15, :16 and :17 the reply's seconds are 2^32 - 1, 0 and 1.
        """
        for second, expected in ((-1, 0xFFFFFFFF), (0, 0), (1, 1)):
            with self.subTest(second=second):
                now = ERA_1 + second
                packet = reply(header(), received=now, transmit=now)
                self.assertEqual(packet.receiveTimestamp >> 32, expected)
                self.assertEqual(packet.transmitTimestamp >> 32, expected)
                self.assertEqual(ntp64ToUnix(packet.transmitTimestamp, now), now)

    def test_before1970(self) -> None:
        """
        Times before the Unix epoch are NTP era 0 values below 2 208 988 800.
        """
        now = datetime(1969, 12, 31, 23, 59, 59, tzinfo=UTC).timestamp()
        packet = reply(header(), received=now, transmit=now)
        self.assertEqual(packet.transmitTimestamp >> 32, NTP_UNIX_OFFSET - 1)
        self.assertEqual(ntp64ToUnix(packet.transmitTimestamp, now), now)

    def test_after2036(self) -> None:
        """
        Times after 2036 are small era-1 values.
        """
        now = datetime(2040, 1, 1, tzinfo=UTC).timestamp()
        packet = reply(header(), received=now, transmit=now)
        self.assertEqual(packet.transmitTimestamp >> 32, int(now) - int(ERA_1))
        self.assertEqual(ntp64ToUnix(packet.transmitTimestamp, now), now)

    def test_clientAcrossBoundary(self) -> None:
        """
        A client whose query spans the boundary gets the right offset and
        delay, whichever side each timestamp falls on.
        """
        for start in (-0.75, -0.5, -0.25, 0.25):
            # (0.1, not 0.125: a timestamp of exactly 0, the first instant of
            # era 1, means "not set" in RFC 5905 and a client rejects it.)
            for serverAhead in (-0.1, 0.0, 0.1):
                with self.subTest(start=start, serverAhead=serverAhead):
                    sentAt = ERA_1 + start
                    receivedAt = sentAt + 0.5
                    result = exchange(
                        sentAt,
                        sentAt + 0.125 + serverAhead,
                        sentAt + 0.375 + serverAhead,
                        receivedAt,
                    )
                    assertClose(self, result.offset, serverAhead)
                    assertClose(self, result.delay, 0.25)
                    assertClose(
                        self,
                        result.serverTime,
                        sentAt + 0.375 + serverAhead,
                    )

    def test_clientBefore1970(self) -> None:
        """
        Offsets are right for a clock set before 1970.
        """
        sentAt = -86400.0 * 365
        result = exchange(sentAt, sentAt + 10.5, sentAt + 10.75, sentAt + 1.0)
        assertClose(self, result.offset, 10.125)
        assertClose(self, result.delay, 0.75)


def exchange(
    sentAt: float,
    serverReceived: float,
    serverTransmit: float,
    receivedAt: float,
    state: ClockState = SYNCED,
) -> Reading:
    """
    One client query answered by L{buildReply}, without fuzz.
    """
    codec = NTPClientCodec(randomBytes=lambda n: TRANSMIT)
    request, cookie = codec.buildRequest(sentAt)
    data = buildReply(
        parseRequest(request, 40000),
        state,
        serverReceived,
        serverTransmit,
        randomBits=noFuzz,
    )
    return codec.parseReply(data, cookie, sentAt, receivedAt)


class KissOfDeathTests(SynchronousTestCase):
    """
    L{buildKissOfDeath} refuses client requests without revealing the
    server's time.
    """

    def test_fields(self) -> None:
        """
        LI 3, the request's version, mode 4, stratum 0, the code as refid,
        and only the request's own values elsewhere.
        """
        request = (
            bytes([0x1B, 5, 2, 0xE7])
            + struct.pack("!II4sQQQ", 3, 4, b"XXXX", 5, 6, 7)
            + TRANSMIT
        )
        kiss = buildKissOfDeath(request, sourcePort=40000)
        assert kiss is not None
        self.assertEqual(
            NTPPacket.fromBytes(kiss),
            NTPPacket(
                leap=3,
                version=3,
                mode=4,
                stratum=0,
                poll=ntp.MIN_POLL,
                precision=-25,
                rootDelay=3,
                rootDispersion=4,
                refid=b"RATE",
                referenceTimestamp=5,
                originTimestamp=int.from_bytes(TRANSMIT),
                receiveTimestamp=int.from_bytes(TRANSMIT),
                transmitTimestamp=int.from_bytes(TRANSMIT),
            ),
        )

    def test_codes(self) -> None:
        """
        The kiss code is the refid; the poll is at least the server's
        minimum.
        """
        for code in b"RATE", b"DENY", b"RSTR":
            with self.subTest(code=code):
                kiss = buildKissOfDeath(header(poll=10), code)
                assert kiss is not None
                packet = NTPPacket.fromBytes(kiss)
                self.assertEqual(packet.refid, code)
                self.assertEqual(packet.poll, 10)

    def test_badCode(self) -> None:
        """
        A kiss code is 4 ASCII letters.
        """
        for code in b"RAT", b"RATES", b"R4TE", "RÄTE".encode():
            with self.subTest(code=code):
                self.assertRaises(ValueError, buildKissOfDeath, header(), code)

    def test_notClientRequest(self) -> None:
        """
        Anything that is not a client request the server would answer gets
        no KoD.
        """
        for name, data, port in [
            *ParseRequestTests.MALFORMED,
            *ParseRequestTests.NOT_SERVED,
            ("symmetric active", header(4, 1), 123),
        ]:
            with self.subTest(name):
                self.assertIsNone(buildKissOfDeath(data, sourcePort=port))

    def test_version1Client(self) -> None:
        """
        A version-1 mode-0 client request is a client request.
        """
        kiss = buildKissOfDeath(header(1, 0), sourcePort=40000)
        assert kiss is not None
        self.assertEqual(NTPPacket.fromBytes(kiss).mode, 4)

    @given(st.binary(max_size=200), st.integers(0, 65535))
    def test_arbitraryBytes(self, data: bytes, port: int) -> None:
        """
        On any bytes: no KoD, or a 48-byte KoD no longer than the request
        whose three timestamps are the request's transmit bytes.
        """
        kiss = buildKissOfDeath(data, sourcePort=port)
        if kiss is None:
            return
        self.assertEqual(len(kiss), 48)
        self.assertLessEqual(len(kiss), len(data))
        self.assertEqual(kiss[24:48], data[40:48] * 3)


class ClientCodecTests(SynchronousTestCase):
    """
    L{NTPClientCodec} sends a cookie and reads replies strictly.
    """

    def codec(self, **kwargs: object) -> NTPClientCodec:
        return NTPClientCodec(randomBytes=lambda n: TRANSMIT, **kwargs)  # type: ignore[arg-type]

    def test_request(self) -> None:
        """
        The request is a 48-byte v4 client packet that holds nothing but
        the random cookie in its transmit timestamp, and no time.
        """
        request, cookie = self.codec().buildRequest(1_800_000_000.0)
        self.assertEqual(request, bytes([0x23]) + bytes(39) + TRANSMIT)
        self.assertEqual(cookie, int.from_bytes(TRANSMIT))

    def test_requestRandom(self) -> None:
        """
        By default each request has a new random cookie.
        """
        codec = NTPClientCodec()
        cookies = {codec.buildRequest(0.0)[1] for _ in range(20)}
        self.assertEqual(len(cookies), 20)

    def test_versionAndMode(self) -> None:
        """
        The version and mode of the request can be chosen.
        """
        request, _ = self.codec(version=3).buildRequest(0.0)
        self.assertEqual(request[0], 0x1B)
        request, _ = self.codec(mode=Mode.SYMMETRIC_ACTIVE).buildRequest(0.0)
        self.assertEqual(request[0], 0x21)
        self.assertRaises(ValueError, NTPClientCodec, version=5)
        self.assertRaises(ValueError, NTPClientCodec, mode=Mode.SERVER)

    def test_offsetAndDelay(self) -> None:
        """
        Offset and delay are RFC 5905's theta and delta from the four
        timestamps.
        """
        t1, t2, t3, t4 = (
            1_800_000_000.0,
            1_800_000_010.5,
            1_800_000_010.75,
            1_800_000_001.0,
        )
        result = exchange(t1, t2, t3, t4)
        assertClose(self, result.offset, ((t2 - t1) + (t3 - t4)) / 2)
        assertClose(self, result.delay, (t4 - t1) - (t3 - t2))
        assertClose(self, result.serverTime, t3)
        self.assertEqual(
            result.text,
            datetime.fromtimestamp(t3, UTC).isoformat(timespec="microseconds"),
        )

    def forged(
        self, received: float, transmit: float, precision: int = -20
    ) -> NTPPacket:
        """
        A server reply to L{codec}'s request with the given receive and
        transmit times, whatever their order.
        """
        return NTPPacket(
            leap=0,
            version=4,
            mode=Mode.SERVER,
            stratum=2,
            precision=precision,
            refid=b"\x7f\0\0\1",
            originTimestamp=int.from_bytes(TRANSMIT),
            receiveTimestamp=unixToNTP64(received),
            transmitTimestamp=unixToNTP64(transmit),
        )

    def parseForged(
        self, packet: NTPPacket, sentAt: float, receivedAt: float
    ) -> Reading:
        codec = self.codec()
        _, cookie = codec.buildRequest(sentAt)
        return codec.parseReply(packet.toBytes(), cookie, sentAt, receivedAt)

    def test_bogusTimestamps(self) -> None:
        """
        A reply whose server, by its own timestamps, transmitted it before
        it received the request, or held the request for more than
        L{ntp.MAX_SERVER_INTERVAL}, fails the query with L{BadReply},
        saying so (the query names the server: see
        L{tests.test_client.ServerNamedTests}).
        """
        t = 1_800_000_000.0
        cases = [
            (self.forged(t - 5.0, t), "claims to have held the request for 5.000 s"),
            (self.forged(t + 2.0, t), "2.000000 s before its receive timestamp"),
        ]
        for packet, message in cases:
            with self.subTest(message=message):
                error = self.assertRaises(
                    BadReply, self.parseForged, packet, t, t + 0.3
                )
                self.assertTrue(error.reason.startswith("sent a bogus reply: "))
                self.assertIn(message, error.reason)
                self.assertEqual(str(error), f"the server {error.reason}")
        self.assertEqual(
            self.parseForged(self.forged(t, t + 4.0), t, t + 4.1).serverTime, t + 4.0
        )

    def test_ourClockMoved(self) -> None:
        """
        A delay that comes out negative says more about our clock (stepped,
        or running at another rate during the exchange) than about the
        server: as chrony does, its size is taken, and the reply stands.
        """
        t = 1_800_000_000.0
        # The server held the request 1 ms, in a round trip of 100 µs by our
        # clock.
        result = self.parseForged(self.forged(t, t + 0.001), t, t + 0.0001)
        assertClose(self, result.delay, 0.0009)

    def test_transmitWithinPrecision(self) -> None:
        """
        A transmit timestamp before the receive timestamp by less than the
        precision the server claims (it may fuzz the bits below it) is
        taken; by more, it is not.
        """
        t = 1_800_000_000.0
        fuzzed = self.forged(t + 0.001, t, precision=-6)  # 2^-6 s: 16 ms
        assertClose(self, self.parseForged(fuzzed, t, t + 0.01).delay, 0.011)
        self.assertRaises(
            BadReply,
            self.parseForged,
            self.forged(t + 0.001, t, precision=-20),
            t,
            t + 0.01,
        )

    def test_details(self) -> None:
        """
        The details give the server's stratum, leap, refid, precision, root
        delay and dispersion, version and reference time.
        """
        result = exchange(1.8e9, 1.8e9, 1.8e9, 1.8e9)
        self.assertEqual(
            {
                k: result.details[k]
                for k in (
                    "stratum",
                    "leap",
                    "leapText",
                    "refid",
                    "precision",
                    "rootDelay",
                    "rootDispersion",
                    "version",
                    "mode",
                    "synchronised",
                    "poll",
                )
            },
            {
                "stratum": 2,
                "leap": 0,
                "leapText": "none",
                "refid": "192.0.2.1",
                "precision": -20,
                "rootDelay": 0.25,
                "rootDispersion": 0.5,
                "version": 4,
                "mode": 4,
                "synchronised": True,
                "poll": ntp.MIN_POLL,
            },
        )
        assertClose(self, result.details["referenceTime"], 1_800_000_000.0)

    def test_refidText(self) -> None:
        """
        At stratum 0 and 1 the refid is text, above it an IPv4 address.
        """
        self.assertEqual(ntp.refidText(1, b"GPS\0"), "GPS")
        self.assertEqual(ntp.refidText(1, b"LOCL"), "LOCL")
        self.assertEqual(ntp.refidText(0, b"INIT"), "INIT")
        self.assertEqual(ntp.refidText(0, bytes(4)), "none")
        self.assertEqual(ntp.refidText(1, b"\x01\x02\x03\x04"), "0x01020304")
        self.assertEqual(ntp.refidText(2, bytes([192, 0, 2, 1])), "192.0.2.1")
        self.assertEqual(ntp.refidText(10, b"LOCL"), "76.79.67.76 (LOCL)")
        self.assertEqual(ntp.refidText(3, b"AB\0\0"), "65.66.0.0 (AB)")
        self.assertEqual(ntp.refidText(3, bytes([65, 66, 67, 49])), "65.66.67.49")

    def test_leapStates(self) -> None:
        """
        A leap warning is reported.
        """
        for leap, text in ((1, "insert"), (2, "delete")):
            with self.subTest(leap=leap):
                result = exchange(
                    1.8e9, 1.8e9, 1.8e9, 1.8e9, withState(leap=Leap(leap))
                )
                self.assertEqual(result.details["leap"], leap)
                self.assertEqual(result.details["leapText"], text)
                self.assertTrue(result.details["synchronised"])

    def test_unsynchronised(self) -> None:
        """
        A reply with LI 3 and stratum 0 is reported unsynchronised, not
        refused.
        """
        state = withState(synchronised=False, stratum=16, refid=bytes(4))
        result = exchange(1.8e9, 1.8e9, 1.8e9, 1.8e9, state)
        self.assertFalse(result.details["synchronised"])
        self.assertEqual(result.details["leapText"], "unsynchronised")
        self.assertEqual(result.details["stratum"], 0)
        self.assertIn("unsynchronised", result.text)

    def refusal(self, code: bytes) -> ntp.KissOfDeath:
        """
        The error a Kiss-o'-Death with C{code} answering our request fails
        the query with.
        """
        codec = self.codec()
        request, cookie = codec.buildRequest(0.0)
        kiss = buildKissOfDeath(request, code, sourcePort=40000)
        assert kiss is not None
        error = self.assertRaises(
            ntp.KissOfDeath, codec.parseReply, kiss, cookie, 0.0, 0.1
        )
        self.assertIsInstance(error, ServerRefused)
        return error

    def test_kissOfDeath(self) -> None:
        """
        A KoD with our origin fails the query with L{ntp.KissOfDeath}, a
        L{ServerRefused} naming the code (and, once the query sets it, the
        server: see L{tests.test_client.ServerNamedTests}).
        """
        for code in b"RATE", b"DENY", b"RSTR":
            with self.subTest(code=code):
                error = self.refusal(code)
                self.assertEqual(error.code, code.decode())
                self.assertEqual(error.meaning, ntp.KISS_CODES[code])
                self.assertEqual(
                    str(error),
                    f"the server sent a Kiss-o'-Death {code.decode()}:"
                    f" {ntp.KISS_CODES[code]}",
                )

    def test_otherKissCodes(self) -> None:
        """
        Every stratum 0 reply whose refid is a kiss code carries no time,
        whatever the code: known or not, it fails the query with
        L{ServerRefused} saying what the code means, if known.
        """
        for code, meaning in [
            (b"INIT", "the server has not synchronised yet"),
            (b"NTSN", "NTS negative acknowledgement"),
            (b"STEP", "stepped its clock"),
            (b"XQZW", "a code this client does not know"),
        ]:
            with self.subTest(code=code):
                error = self.refusal(code)
                self.assertIn(f"Kiss-o'-Death {code.decode()}: ", str(error))
                self.assertIn(meaning, str(error))
        # Not a code: zeros (an unsynchronised server's), or not capitals.
        for refid in bytes(4), b"r4t\x01", b"\x7f\0\0\x01":
            with self.subTest(refid=refid):
                self.assertFalse(ntp.isKissCode(refid))
        self.assertTrue(ntp.isKissCode(b"AB1\0"))

    def test_mismatch(self) -> None:
        """
        Replies that are not ours are L{ReplyMismatch}: wrong origin (a
        forged KoD too), wrong mode, too short, zero timestamps.
        """
        codec = self.codec()
        request, cookie = codec.buildRequest(0.0)
        good = buildReply(parseRequest(request), SYNCED, 1.0, 2.0)
        otherRequest = header(transmit=b"\x99" * 8)
        forgedKiss = buildKissOfDeath(otherRequest)
        assert forgedKiss is not None
        cases = {
            "wrong origin": buildReply(parseRequest(otherRequest), SYNCED, 1.0, 2.0),
            "forged KoD": forgedKiss,
            "mode 3": bytes([0x23]) + good[1:],
            "mode 2": bytes([0x22]) + good[1:],
            "47 bytes": good[:47],
            "zero transmit": good[:40] + bytes(8),
            "zero receive": good[:32] + bytes(8) + good[40:],
            "version 0": bytes([0x04]) + good[1:],
        }
        for name, data in cases.items():
            with self.subTest(name):
                self.assertRaises(
                    ReplyMismatch, codec.parseReply, data, cookie, 0.0, 0.1
                )

    def test_symmetric(self) -> None:
        """
        A symmetric active request expects a symmetric passive reply.
        """
        codec = self.codec(mode=Mode.SYMMETRIC_ACTIVE)
        request, cookie = codec.buildRequest(1.8e9)
        data = buildReply(parseRequest(request, 123), SYNCED, 1.8e9, 1.8e9)
        self.assertEqual(data[0] & 7, 2)
        result = codec.parseReply(data, cookie, 1.8e9, 1.8e9)
        self.assertEqual(result.details["mode"], 2)
        client = self.codec()
        self.assertRaises(ReplyMismatch, client.parseReply, data, cookie, 0.0, 0.0)

    @given(st.binary(max_size=100))
    def test_arbitraryReply(self, data: bytes) -> None:
        """
        Any datagram is a result, L{ReplyMismatch} or L{ServerRefused}.
        """
        codec = self.codec()
        with contextlib.suppress(ReplyMismatch, ServerRefused):
            codec.parseReply(data, int.from_bytes(TRANSMIT), 1.8e9, 1.8e9)
