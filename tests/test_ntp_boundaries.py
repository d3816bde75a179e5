"""
Boundary cases of L{udptime.ntp}: what the client calls synchronised and
bogus, every kiss code's meaning, the request's cookie, timestamp
differences across 34 to 68 years (2^62 to 2^63 NTP units), poll bytes
either side of 127/128, and the fast path (L{ntp.plainReply}) against
L{ntp.buildReply} over every version, poll byte and awkward time.
"""

from __future__ import annotations

import random
import struct
from datetime import UTC, datetime

from hypothesis import example, given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from udptime import ntp
from udptime.clock import ClockState, Leap, unixToNTP64
from udptime.ntp import Mode, NTPClientCodec, NTPPacket
from udptime.reading import BadReply, ReplyMismatch

COOKIE = bytes.fromhex("0102030405060708")
T = 1_800_000_000.0
ERA_1 = datetime(2036, 2, 7, 6, 28, 16, tzinfo=UTC).timestamp()
SECOND = 1 << 32
"""One second in NTP timestamp units."""

KISS_MEANINGS = {
    b"ACST": "the association belongs to a unicast server",
    b"AUTH": "server authentication failed",
    b"AUTO": "Autokey sequence failed",
    b"BCST": "the association belongs to a broadcast server",
    b"CRYP": "cryptographic authentication or identification failed",
    b"DENY": "access denied",
    b"DROP": "lost peer in symmetric mode",
    b"RSTR": "access restricted",
    b"INIT": "the server has not synchronised yet",
    b"MCST": "the association belongs to a manycast server",
    b"NKEY": "no key found",
    b"NTSN": "NTS negative acknowledgement",
    b"RATE": "rate limit exceeded: poll less often",
    b"RMOT": "association altered by a remote host",
    b"STEP": "the server stepped its clock and has not synchronised since",
}
"""RFC 5905 section 7.4's kiss codes and RFC 8915's NTSN, as the client
explains them."""


def codec() -> NTPClientCodec:
    return NTPClientCodec(randomBytes=lambda n: COOKIE[:n])


def serverReply(
    leap: int = 0,
    stratum: int = 2,
    refid: bytes = b"\xc0\x00\x02\x01",
    precision: int = -20,
    received: int | None = None,
    transmit: int | None = None,
    version: int = 4,
) -> bytes:
    """
    A server's reply to L{codec}'s request (sent at L{T}), received and
    transmitted 0.25 s later unless told otherwise (in NTP units).
    """
    receive = unixToNTP64(T + 0.25) if received is None else received
    return NTPPacket(
        leap=leap,
        version=version,
        mode=Mode.SERVER,
        stratum=stratum,
        precision=precision,
        refid=refid,
        originTimestamp=int.from_bytes(COOKIE),
        receiveTimestamp=receive,
        transmitTimestamp=receive if transmit is None else transmit,
    ).toBytes()


def parse(data: bytes, receivedAt: float = T + 0.5) -> ntp.Reading:
    client = codec()
    _, cookie = client.buildRequest(T)
    return client.parseReply(data, cookie, T, receivedAt)


class ConstantsTests(SynchronousTestCase):
    def test_values(self) -> None:
        self.assertEqual(
            (
                ntp.NTP_PORT,
                ntp.HEADER_SIZE,
                ntp.MIN_POLL,
                ntp.MAX_POLL,
                ntp.MAX_SERVER_INTERVAL,
                ntp.MIN_EXTENSION_FIELD,
                ntp.MIN_LAST_EXTENSION_FIELD,
            ),
            (123, 48, 4, 17, 4.0, 16, 28),
        )
        self.assertEqual(ntp.MAC_SIZES, {20, 24})


class SynchronisedTests(SynchronousTestCase):
    """
    A reply is from a synchronised server when its LI is not 3 and its
    stratum is 1 to 15.
    """

    def test_table(self) -> None:
        for leap, stratum, synchronised in [
            (0, 1, True),
            (0, 2, True),
            (0, 15, True),
            (0, 16, False),
            (0, 255, False),
            (1, 3, True),
            (2, 3, True),
            (3, 1, False),
            (3, 15, False),
            (3, 16, False),
            (0, 0, False),
            (3, 0, False),
        ]:
            with self.subTest(leap=leap, stratum=stratum):
                refid = bytes(4) if stratum == 0 else b"\x7f\0\0\1"
                reading = parse(serverReply(leap, stratum, refid))
                self.assertIs(reading.details["synchronised"], synchronised)
                self.assertEqual(
                    reading.text.endswith(" (server unsynchronised)"),
                    not synchronised,
                )
                self.assertEqual(
                    reading.details["leapText"],
                    ["none", "insert", "delete", "unsynchronised"][leap],
                )


class BogusReplyTests(SynchronousTestCase):
    """
    The server's own timestamps: transmit may precede receive by at most
    its claimed precision (never more than a second), and it may hold a
    request for at most L{ntp.MAX_SERVER_INTERVAL}.
    """

    def test_table(self) -> None:
        base = unixToNTP64(T + 0.25)
        for precision, held, bogus in [
            (-20, -(SECOND >> 20), False),
            (-20, -(SECOND >> 20) - 1, True),
            (-6, -(SECOND >> 6), False),
            (-6, -(SECOND >> 6) - 1, True),
            (-1, -(SECOND >> 1), False),
            (-1, -(SECOND >> 1) - 1, True),
            (0, -SECOND, False),
            (0, -SECOND - 1, True),
            (3, -SECOND, False),
            (3, -SECOND - 1, True),
            (-20, 0, False),
            (-20, 4 * SECOND, False),
            (-20, 4 * SECOND + 1, True),
            (3, 4 * SECOND + 1, True),
        ]:
            with self.subTest(precision=precision, held=held):
                data = serverReply(
                    precision=precision, received=base, transmit=base + held
                )
                if bogus:
                    error = self.assertRaises(BadReply, parse, data, T + 5.0)
                    self.assertIn("bogus reply", str(error))
                else:
                    reading = parse(data, T + 5.0)
                    self.assertIsNotNone(reading.serverTime)

    def test_zeroTimestamps(self) -> None:
        base = unixToNTP64(T + 0.25)
        for received, transmit in [(0, base), (base, 0), (0, 0)]:
            with self.subTest(received=received, transmit=transmit):
                data = serverReply(received=received, transmit=transmit)
                self.assertRaises(ReplyMismatch, parse, data)
        self.assertRaises(ReplyMismatch, parse, serverReply(version=0))
        self.assertEqual(parse(serverReply(version=1)).details["version"], 1)


class CookieTests(SynchronousTestCase):
    def test_eightRandomBytes(self) -> None:
        """
        The cookie is 8 random bytes, all of them in the request's transmit
        timestamp and none anywhere else.
        """
        asked: list[int] = []

        def randomBytes(n: int) -> bytes:
            asked.append(n)
            return bytes(range(0xF1, 0xF1 + n))

        client = NTPClientCodec(randomBytes=randomBytes)
        request, cookie = client.buildRequest(T)
        self.assertEqual(asked, [8])
        self.assertEqual(cookie, 0xF1F2F3F4F5F6F7F8)
        self.assertEqual(request, b"\x23" + bytes(39) + bytes(range(0xF1, 0xF9)))


class KissCodeTests(SynchronousTestCase):
    def test_everyCode(self) -> None:
        """
        Every known code is explained as RFC 5905 (and RFC 8915) explain
        it, and a KoD with it fails a query with that explanation.
        """
        self.assertEqual(ntp.KISS_CODES, KISS_MEANINGS)
        self.assertEqual(
            ntp.REFUSAL_CODES,
            {code: KISS_MEANINGS[code] for code in (b"RATE", b"DENY", b"RSTR")},
        )
        for code, meaning in KISS_MEANINGS.items():
            with self.subTest(code=code):
                error = self.assertRaises(
                    ntp.KissOfDeath, parse, serverReply(3, 0, code)
                )
                self.assertEqual((error.code, error.meaning), (code.decode(), meaning))
                self.assertEqual(error.args, (code.decode(), meaning))

    def test_isKissCode(self) -> None:
        for refid, isCode in [
            (b"RATE", True),
            (b"GPS\0", True),
            (b"X\0\0\0", True),
            (b"AB12", True),
            (b"09AZ", True),
            (b"\0\0\0\0", False),
            (b"rate", False),
            (b"RA E", False),
            (b"R\0TE", False),
            (b"RAT@", False),
            (b"RAT[", False),
            (b"RAT/", False),
            (b"RAT:", False),
            (b"\x7f\0\0\x01", False),
        ]:
            with self.subTest(refid=refid):
                self.assertIs(ntp.isKissCode(refid), isCode)

    def test_unknownCode(self) -> None:
        error = self.assertRaises(ntp.KissOfDeath, parse, serverReply(3, 0, b"ZZ9\0"))
        self.assertEqual(
            (error.code, error.meaning), ("ZZ9", "a code this client does not know")
        )

    def test_kissFields(self) -> None:
        """
        A KoD: LI 3, the request's version, mode 4, stratum 0, the code,
        the poll raised to the minimum, and the request's own timestamps.
        """
        request = NTPPacket(
            leap=0,
            version=3,
            mode=Mode.CLIENT,
            poll=2,
            precision=-7,
            rootDelay=5,
            rootDispersion=6,
            referenceTimestamp=7,
            transmitTimestamp=0x1122334455667788,
        ).toBytes()
        for code in (b"RATE", b"DENY", b"RSTR"):
            kiss = ntp.buildKissOfDeath(request, code, sourcePort=40000, minPoll=6)
            assert kiss is not None
            self.assertEqual(
                NTPPacket.fromBytes(kiss),
                NTPPacket(
                    leap=3,
                    version=3,
                    mode=Mode.SERVER,
                    stratum=0,
                    poll=6,
                    precision=-7,
                    rootDelay=5,
                    rootDispersion=6,
                    refid=code,
                    referenceTimestamp=7,
                    originTimestamp=0x1122334455667788,
                    receiveTimestamp=0x1122334455667788,
                    transmitTimestamp=0x1122334455667788,
                ),
            )
        for code in (b"RAT", b"RATES", b"RAT1", "RATÉ".encode(), b"RA\0E"):
            with self.subTest(code=code):
                self.assertRaises(ValueError, ntp.buildKissOfDeath, request, code)


_SIGNED = st.integers(-(1 << 63) + 1, (1 << 63) - 1)
_STAMP = st.integers(0, (1 << 64) - 1)


class EraDifferenceTests(SynchronousTestCase):
    """
    C{a - b} of two NTP timestamps is right for any two times less than
    68 years apart, across era boundaries: 2^62 to 2^63 units are 34 to 68
    years.
    """

    @settings(max_examples=200)
    @given(difference=_SIGNED, b=_STAMP)
    @example(difference=1 << 62, b=0)
    @example(difference=(1 << 62) + 1, b=(1 << 64) - 1)
    @example(difference=(1 << 63) - 1, b=1 << 63)
    @example(difference=-(1 << 62), b=5)
    @example(difference=-(1 << 63) + 1, b=(1 << 64) - 1)
    @example(difference=3 << 61, b=unixToNTP64(T))
    @example(difference=-(3 << 61), b=unixToNTP64(ERA_1 + 1.0))
    def test_difference(self, difference: int, b: int) -> None:
        a = (b + difference) % (1 << 64)
        self.assertEqual(ntp.timestampDifference(a, b), difference / SECOND)
        self.assertEqual(ntp._signedDifference(a, b), difference)

    def test_halfWay(self) -> None:
        """
        Exactly half the timestamp space apart is taken as a's being
        behind.
        """
        self.assertEqual(ntp._signedDifference(0, 1 << 63), -(1 << 63))
        self.assertEqual(ntp._signedDifference(1 << 63, 0), -(1 << 63))
        self.assertEqual(ntp.timestampDifference((1 << 63) - 1, 0), 2**31 - 2**-32)

    def test_serverFiftyYearsAhead(self) -> None:
        """
        A server 50 years ahead of a client in 2030 (so in era 1), or 50
        years behind one in 2070, gives an offset of 50 years either way.
        """
        fifty = 50 * 365.25 * 86400
        for sentAt, ahead in [
            (datetime(2030, 1, 1, tzinfo=UTC).timestamp(), fifty),
            (datetime(2070, 1, 1, tzinfo=UTC).timestamp(), -fifty),
        ]:
            with self.subTest(sentAt=sentAt, ahead=ahead):
                client = codec()
                _, cookie = client.buildRequest(sentAt)
                data = NTPPacket(
                    leap=0,
                    version=4,
                    mode=Mode.SERVER,
                    stratum=2,
                    precision=-20,
                    originTimestamp=cookie,
                    receiveTimestamp=unixToNTP64(sentAt + ahead + 0.25),
                    transmitTimestamp=unixToNTP64(sentAt + ahead + 0.25),
                ).toBytes()
                reading = client.parseReply(data, cookie, sentAt, sentAt + 0.5)
                assert reading.offset is not None and reading.delay is not None
                self.assertAlmostEqual(reading.offset, ahead, delta=1e-6)
                self.assertAlmostEqual(reading.delay, 0.5, delta=1e-6)


def request(version: int, poll: int, transmit: bytes = COOKIE) -> bytes:
    return bytes([(version << 3) | Mode.CLIENT, 0, poll, 0]) + bytes(36) + transmit


def state(precision: int = -20, synchronised: bool = True) -> ClockState:
    return ClockState(
        leap=Leap.NONE,
        synchronised=synchronised,
        stratum=2,
        refid=b"\xc0\x00\x02\x01",
        rootDelay=0.015625,
        rootDispersion=0.5,
        referenceTime=T - 64.0,
        precision=precision,
    )


class PollTests(SynchronousTestCase):
    """
    The reply's poll: the request's poll byte read as a signed number,
    raised to the server's minimum and capped at L{ntp.MAX_POLL}.
    """

    def test_table(self) -> None:
        constants = ntp.ReplyConstants.fromState(state())
        for byte, expected in [
            (0, 4),
            (3, 4),
            (4, 4),
            (5, 5),
            (16, 16),
            (17, 17),
            (18, 17),
            (126, 17),
            (127, 17),
            (128, 4),
            (129, 4),
            (250, 4),
            (255, 4),
        ]:
            with self.subTest(byte=byte):
                data = request(4, byte)
                slow = ntp.buildReply(
                    ntp.parseRequest(data, 40000), state(), T, T, randomBits=lambda k: 0
                )
                fast = ntp.plainReply(data, constants, T, lambda: T, lambda k: 0)
                self.assertEqual(slow[2], expected)
                self.assertEqual(fast, slow)
                self.assertEqual(ntp.replyPoll(ntp.parseRequest(data, 1)), expected)

    def test_minimumAndMaximum(self) -> None:
        for minPoll, byte, expected in [(6, 5, 6), (6, 7, 7), (0, 255, 0), (0, 128, 0)]:
            with self.subTest(minPoll=minPoll, byte=byte):
                constants = ntp.ReplyConstants.fromState(state(), minPoll)
                reply = ntp.plainReply(request(4, byte), constants, T, lambda: T)
                self.assertEqual(reply[2], expected)

    def test_negativeMinimum(self) -> None:
        """
        Under a minimum poll below zero (chrony allows down to -6), a
        negative poll in the request is kept as it is, not raised: the fast
        path reads it from the poll byte, not from the stratum or precision
        bytes beside it (set here to other negative numbers), and gives what
        L{ntp.buildReply} gives.
        """
        for minPoll, byte, expected in [
            (-6, 255, -1),
            (-6, 254, -2),
            (-6, 250, -6),
            (-6, 249, -6),
            (-6, 128, -6),
            (-128, 128, -128),
            (-128, 129, -127),
            (-6, 127, 17),
        ]:
            data = bytearray(request(4, byte))
            data[1], data[3] = 0xAB, 0xCD
            with self.subTest(minPoll=minPoll, byte=byte):
                constants = ntp.ReplyConstants.fromState(state(), minPoll)
                fast = ntp.plainReply(bytes(data), constants, T, lambda: T, lambda k: 0)
                slow = ntp.buildReply(
                    ntp.parseRequest(bytes(data), 40000),
                    state(),
                    T,
                    T,
                    minPoll=minPoll,
                    randomBits=lambda k: 0,
                )
                self.assertEqual(struct.unpack_from("!b", fast, 2)[0], expected)
                self.assertEqual(fast, slow)

    def test_prefixKey(self) -> None:
        """
        The fast path keeps one reply start per version and poll byte.
        """
        keys = {
            ntp.prefixKey(request(version, poll))
            for version in range(1, 5)
            for poll in range(256)
        }
        self.assertEqual(len(keys), 4 * 256)
        constants = ntp.ReplyConstants.fromState(state())
        ntp.plainReply(request(2, 9), constants, T, lambda: T)
        self.assertEqual(list(constants.prefixes), [ntp.prefixKey(request(2, 9))])


class FastPathTests(SynchronousTestCase):
    """
    L{ntp.plainReply} gives, byte for byte, what L{ntp.buildReply} gives,
    for every plain request and for times where the fast path's arithmetic
    could go wrong.
    """

    TIMES = [
        (T, T + 0.000123),
        (T + 0.5, T + 0.5),
        (T + 0.75, T + 0.25),
        (0.0, 0.0),
        (0.0, 1e-9),
        (ERA_1 - 0.5, ERA_1 + 0.5),
        (ERA_1 - 1e-7, ERA_1 - 1e-8),
        (ERA_1, ERA_1),
        (ERA_1 + 86400 * 400, ERA_1 + 86400 * 400 + 0.001),
        (-86400.0, -86399.5),
        (-0.25, 0.25),
        (1.0, -1.0),
        (-1.0, -2.0),
    ]

    def compare(
        self, precision: int, received: float, transmit: float, seed: int
    ) -> None:
        clock = state(precision)
        constants = ntp.ReplyConstants.fromState(clock)
        for version in range(1, 5):
            data = request(version, 6, bytes(range(seed % 248, seed % 248 + 8)))
            self.assertTrue(ntp.isPlainRequest(data))
            slow = ntp.buildReply(
                ntp.parseRequest(data, 40000),
                clock,
                received,
                transmit,
                randomBits=random.Random(seed).getrandbits,
            )
            fast = ntp.plainReply(
                data,
                constants,
                received,
                lambda: transmit,
                random.Random(seed).getrandbits,
            )
            self.assertEqual(fast, slow, (version, precision, received, transmit))

    def test_table(self) -> None:
        for precision in (-20, -25, -6, -1, 0, 3, -32, -33, -40):
            for received, transmit in self.TIMES:
                for seed in range(2):
                    with self.subTest(
                        precision=precision, received=received, transmit=transmit
                    ):
                        self.compare(precision, received, transmit, seed)

    @settings(max_examples=200)
    @given(
        precision=st.integers(-40, 4),
        received=st.floats(-3e9, 4e9),
        spent=st.floats(-1.0, 1.0),
        seed=st.integers(0, 1000),
    )
    @example(precision=-20, received=ERA_1 - 1e-6, spent=2e-6, seed=1)
    @example(precision=-3, received=T, spent=0.0, seed=2)
    @example(precision=0, received=-0.5, spent=1.0, seed=3)
    def test_property(
        self, precision: int, received: float, spent: float, seed: int
    ) -> None:
        self.compare(precision, received, received + spent, seed)

    def test_fuzzKeepsOrder(self) -> None:
        """
        Within one step of the clock, random bits that would put transmit
        before receive leave transmit equal to receive, on both paths.
        """
        clock = state(-10)
        constants = ntp.ReplyConstants.fromState(clock)
        bits = iter([1000, 5, 1000, 5])
        data = request(4, 6)
        fast = NTPPacket.fromBytes(
            ntp.plainReply(data, constants, T, lambda: T, lambda k: next(bits))
        )
        slow = NTPPacket.fromBytes(
            ntp.buildReply(
                ntp.parseRequest(data, 40000),
                clock,
                T,
                T,
                randomBits=lambda k: next(bits),
            )
        )
        for packet in fast, slow:
            self.assertEqual(packet.transmitTimestamp, packet.receiveTimestamp)
            # The random bits spread it over half a step (2^21) either way.
            self.assertEqual(
                packet.receiveTimestamp & 0x3FFFFF, (1000 - (1 << 21)) & 0x3FFFFF
            )

    def test_nearestStep(self) -> None:
        """
        On both paths a time is rounded to the nearest step of the clock's
        precision (not down to the step below: a reading rounded to the
        nearest, as a float of the time is, would then be half a step late
        on average) and spread over half a step either way.
        """
        clock = state(-20)
        step = 2.0**-20
        constants = ntp.ReplyConstants.fromState(clock)
        data = request(4, 6)
        # In quarter steps: the float's own step at this time (2^-22 s).
        for offset, steps in ((0.25, 0), (0.5, 1), (0.75, 1), (1.25, 1), (1.75, 2)):
            received = transmit = T + offset * step
            expected = unixToNTP64(T) + (steps << 12)
            for spread, shift in ((0, -(1 << 11)), (1 << 11, 0), (4095, 2047)):
                fast = NTPPacket.fromBytes(
                    ntp.plainReply(
                        data,
                        constants,
                        received,
                        lambda t=transmit: t,
                        lambda k, s=spread: s,
                    )
                )
                slow = NTPPacket.fromBytes(
                    ntp.buildReply(
                        ntp.parseRequest(data, 40000),
                        clock,
                        received,
                        transmit,
                        randomBits=lambda k, s=spread: s,
                    )
                )
                for packet in fast, slow:
                    with self.subTest(offset=offset, spread=spread):
                        self.assertEqual(packet.receiveTimestamp, expected + shift)
                        self.assertEqual(packet.transmitTimestamp, expected + shift)

    def test_plainRequests(self) -> None:
        """
        Plain requests are 48 bytes, mode 3, versions 1 to 4: nothing else.
        """
        for first in range(256):
            plain = first & 7 == 3 and 1 <= (first >> 3) & 7 <= 4
            data = bytes([first]) + bytes(47)
            with self.subTest(first=first):
                self.assertIs(ntp.isPlainRequest(data), plain)
        self.assertFalse(ntp.isPlainRequest(request(4, 6) + bytes(4)))
        self.assertFalse(ntp.isPlainRequest(request(4, 6)[:44]))


class PrefixCacheTests(SynchronousTestCase):
    """
    The reply starts L{ntp.plainReply} keeps in one L{ntp.ReplyConstants}
    are told apart by version and poll byte only, and reused.
    """

    def test_versionsAndPollsThroughOneConstants(self) -> None:
        """
        Requests of every version and of several polls, whose bytes 1 and 3
        (stratum and precision, which a server ignores) are not zero, all
        answered through one L{ntp.ReplyConstants}: each reply is the one
        L{ntp.buildReply} gives.
        """
        constants = ntp.ReplyConstants.fromState(state())
        for version, poll in [(2, 6), (3, 6), (1, 6), (4, 6), (3, 9), (2, 255)]:
            data = bytearray(request(version, poll))
            data[1], data[3] = 0xAB, 0xCD
            with self.subTest(version=version, poll=poll):
                slow = ntp.buildReply(
                    ntp.parseRequest(bytes(data), 40000),
                    state(),
                    T,
                    T,
                    randomBits=lambda k: 0,
                )
                fast = ntp.plainReply(bytes(data), constants, T, lambda: T, lambda k: 0)
                self.assertEqual(fast, slow)
                self.assertEqual((fast[0] >> 3) & 7, version)

    def test_keptStartReused(self) -> None:
        """
        A reply start kept for a request's version and poll is what the
        reply to the next such request starts with: it is not built again.
        """
        constants = ntp.ReplyConstants.fromState(state())
        data = request(3, 7)
        kept = bytes(range(24))
        constants.prefixes[ntp.prefixKey(data)] = kept
        reply = ntp.plainReply(data, constants, T, lambda: T, lambda k: 0)
        self.assertEqual(reply[:24], kept)
        self.assertEqual(reply[24:32], COOKIE)


class ClientVersionTests(SynchronousTestCase):
    """
    The client sends versions 1 to 4 (RFC 5905 section 7.3, RFC 4330
    section 4); version 0 and 5 to 7 are not NTP versions it can ask with.
    """

    def test_accepted(self) -> None:
        for version in range(1, 5):
            with self.subTest(version=version):
                data, _ = NTPClientCodec(
                    version=version, randomBytes=lambda n: COOKIE[:n]
                ).buildRequest(T)
                self.assertEqual(NTPPacket.fromBytes(data).version, version)

    def test_refused(self) -> None:
        for version in (0, 5, 7, -1):
            with self.subTest(version=version):
                error = self.assertRaises(ValueError, NTPClientCodec, version=version)
                self.assertEqual(
                    str(error), f"NTP version must be from 1 to 4, not {version}"
                )

    def test_nameAndPort(self) -> None:
        self.assertEqual(
            (NTPClientCodec.name, NTPClientCodec.defaultPort), ("ntp", 123)
        )


class LateReplyTests(SynchronousTestCase):
    """
    What the port asks of an NTP reply before it sends it: its length, its
    receive timestamp, its bytes.
    """

    def test_lateTransmit(self) -> None:
        constants = ntp.ReplyConstants.fromState(state())
        late = ntp.LateTransmit(lambda: T + 0.5)
        # The random bits' middle: the time itself, rounded to its step.
        late.plain(request(4, 6), constants, T, lambda k: 1 << k >> 1)
        self.assertEqual(len(late), ntp.HEADER_SIZE)
        received = late.receiveTimestamp()
        reply = late.stamp()
        self.assertEqual(received, reply[32:40])
        self.assertEqual(NTPPacket.fromBytes(reply).receiveTimestamp, unixToNTP64(T))
        self.assertEqual(ntp.TRANSMIT_AT, 40)

    def test_stampedReply(self) -> None:
        control = [(1, 2, b"x")]
        stamped = ntp.StampedReply(b"0123456789", control)
        self.assertEqual((len(stamped), stamped.stamp()), (10, b"0123456789"))
        self.assertIs(stamped.control, control)
