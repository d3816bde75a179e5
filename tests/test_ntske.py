"""
Tests for L{udptime.ntske}: the NTS-KE record codec, server and client
sides, table-driven and with Hypothesis (garbage, and the same bytes in
any pieces).

C{UDPTIME_FUZZ_EXAMPLES} sets the examples per property (L{tests.fuzzing}).
"""

from __future__ import annotations

import itertools
import os
import struct

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from tests.fuzzing import FUZZ
from udptime import ntske
from udptime.ntske import (
    AEAD_AES_SIV_CMAC_256,
    ErrorCode,
    KERequest,
    KERequestParser,
    KERequestRefused,
    KEResponse,
    KEResponseParser,
    Negotiation,
    NTSKEBadResponse,
    NTSKEServerError,
    Record,
    RecordType,
    buildErrorResponse,
    buildRequest,
    buildResponse,
    negotiate,
)

CHRONY_REQUEST = bytes.fromhex("80010002000080040002000f80000000")
"""The request chronyd 4.3 sends: Next Protocol [NTPv4], AEAD [15], both
critical, End of Message."""

COOKIE = bytes(range(100))


def record(kind: int, body: bytes = b"", critical: bool = True) -> bytes:
    return Record(kind, body, critical).toBytes()


def u16(*values: int) -> bytes:
    return b"".join(struct.pack("!H", v) for v in values)


NEXT = record(RecordType.NEXT_PROTOCOL, u16(0))
AEAD = record(RecordType.AEAD_ALGORITHM, u16(15))
END = record(RecordType.END_OF_MESSAGE)


def parseRequest(data: bytes, pieces: int = 1) -> KERequest | None:
    parser = KERequestParser()
    size = max(1, len(data) // pieces)
    result = None
    for start in range(0, len(data), size):
        # After the request, any piece is refused.
        result = parser.feed(data[start : start + size]) or result
    return result


class RecordTests(SynchronousTestCase):
    """
    Records and constants.
    """

    def test_encode(self) -> None:
        """
        A record is the type with the critical bit, the body length, the
        body.
        """
        self.assertEqual(
            Record(RecordType.AEAD_ALGORITHM, u16(15), True).toBytes(),
            bytes.fromhex("80040002000f"),
        )
        self.assertEqual(
            Record(RecordType.NEW_COOKIE, b"abcd").toBytes(),
            bytes.fromhex("00050004") + b"abcd",
        )

    def test_outOfRange(self) -> None:
        """
        A type over 15 bits, or a body over 65535 bytes, cannot be encoded.
        """
        self.assertRaises(ValueError, Record(0x8000).toBytes)
        self.assertRaises(ValueError, Record(5, bytes(65536)).toBytes)

    def test_exporterContext(self) -> None:
        """
        The exporter context is protocol 0, the AEAD id, and 0 (C2S) or 1
        (S2C).
        """
        self.assertEqual(ntske.exporterContext(15, False), bytes.fromhex("0000000f00"))
        self.assertEqual(ntske.exporterContext(15, True), bytes.fromhex("0000000f01"))

    def test_ntsUnavailable(self) -> None:
        """
        With the nts extra installed, NTS is available; without one of its
        modules, the message names it and the extra.
        """
        self.assertIsNone(ntske.ntsUnavailable())
        self.patch(
            ntske,
            "NTS_REQUIREMENTS",
            {**ntske.NTS_REQUIREMENTS, "udptime_no_such_module": "nothere"},
        )
        message = ntske.ntsUnavailable()
        assert message is not None
        self.assertIn("nothere", message)
        self.assertIn("pip install 'udptime[nts]'", message)

    def test_chronyRequest(self) -> None:
        """
        udptime's request is chronyd's, byte for byte.
        """
        self.assertEqual(buildRequest(), CHRONY_REQUEST)


REFUSED_REQUESTS: list[tuple[str, bytes, ErrorCode]] = [
    ("no Next Protocol", AEAD + END, ErrorCode.BAD_REQUEST),
    ("two Next Protocol", NEXT + NEXT + AEAD + END, ErrorCode.BAD_REQUEST),
    (
        "Next Protocol not critical",
        record(1, u16(0), False) + AEAD + END,
        ErrorCode.BAD_REQUEST,
    ),
    ("empty Next Protocol", record(1) + AEAD + END, ErrorCode.BAD_REQUEST),
    ("odd Next Protocol", record(1, b"\0\0\0") + AEAD + END, ErrorCode.BAD_REQUEST),
    ("NTPv4 without AEAD", NEXT + END, ErrorCode.BAD_REQUEST),
    ("two AEAD", NEXT + AEAD + AEAD + END, ErrorCode.BAD_REQUEST),
    ("empty AEAD", NEXT + record(4) + END, ErrorCode.BAD_REQUEST),
    ("odd AEAD", NEXT + record(4, b"\0\x0f\0") + END, ErrorCode.BAD_REQUEST),
    (
        "Error from a client",
        NEXT + AEAD + record(2, u16(1)) + END,
        ErrorCode.BAD_REQUEST,
    ),
    (
        "Warning from a client",
        NEXT + AEAD + record(3, u16(1)) + END,
        ErrorCode.BAD_REQUEST,
    ),
    (
        "cookie from a client",
        NEXT + AEAD + record(5, COOKIE) + END,
        ErrorCode.BAD_REQUEST,
    ),
    (
        "unknown critical record",
        NEXT + AEAD + record(0x1234, b"x") + END,
        ErrorCode.UNRECOGNIZED_CRITICAL_RECORD,
    ),
    (
        "End of Message with a body",
        NEXT + AEAD + record(0, b"\0\0"),
        ErrorCode.BAD_REQUEST,
    ),
    (
        "End of Message not critical",
        NEXT + AEAD + record(0, critical=False),
        ErrorCode.BAD_REQUEST,
    ),
    ("bytes after End of Message", CHRONY_REQUEST + b"\0", ErrorCode.BAD_REQUEST),
    ("record after End of Message", CHRONY_REQUEST + END, ErrorCode.BAD_REQUEST),
    ("bad port", NEXT + AEAD + record(7, b"\0") + END, ErrorCode.BAD_REQUEST),
    ("port 0", NEXT + AEAD + record(7, u16(0)) + END, ErrorCode.BAD_REQUEST),
    ("two ports", NEXT + AEAD + record(7, u16(1)) * 2 + END, ErrorCode.BAD_REQUEST),
    ("bad server", NEXT + AEAD + record(6, b"a b") + END, ErrorCode.BAD_REQUEST),
    ("empty server", NEXT + AEAD + record(6) + END, ErrorCode.BAD_REQUEST),
    (
        "two servers",
        NEXT + AEAD + record(6, b"a") + record(6, b"b") + END,
        ErrorCode.BAD_REQUEST,
    ),
    (
        "too large",
        NEXT + AEAD + record(0x4000, bytes(1100), False) + END,
        ErrorCode.BAD_REQUEST,
    ),
]


class RequestTests(SynchronousTestCase):
    """
    L{KERequestParser}: what it accepts, what it refuses, and with which
    error code.
    """

    def test_chrony(self) -> None:
        """
        chronyd's request is NTPv4 with AES-SIV-CMAC-256.
        """
        self.assertEqual(parseRequest(CHRONY_REQUEST), KERequest((0,), (15,)))

    def test_pieces(self) -> None:
        """
        The request may arrive a byte at a time: nothing until the End of
        Message record, then the request.
        """
        parser = KERequestParser()
        for byte in CHRONY_REQUEST[:-1]:
            self.assertIsNone(parser.feed(bytes([byte])))
        self.assertEqual(parser.feed(CHRONY_REQUEST[-1:]), KERequest((0,), (15,)))

    def test_negotiationRecords(self) -> None:
        """
        A client's NTPv4 Server and Port Negotiation records are read, and
        unknown non-critical records are ignored.
        """
        data = (
            record(0x4001, b"x", critical=False)
            + NEXT
            + record(4, u16(30, 15))
            + record(6, b"ntp.example.net", False)
            + record(7, u16(1234), False)
            + END
        )
        self.assertEqual(
            parseRequest(data),
            KERequest((0,), (30, 15), server="ntp.example.net", port=1234),
        )

    def test_otherProtocolWithoutAEAD(self) -> None:
        """
        A request that offers only another protocol needs no AEAD record.
        """
        request = parseRequest(record(1, u16(0x8001)) + END)
        self.assertEqual(request, KERequest((0x8001,), ()))

    def test_refused(self) -> None:
        """
        Each bad request is refused with its error code, whole or in
        pieces.
        """
        for name, data, code in REFUSED_REQUESTS:
            for pieces in (1, 3, len(data)):
                with self.subTest(name=name, pieces=pieces):
                    with self.assertRaises(KERequestRefused) as caught:
                        parseRequest(data, pieces)
                    self.assertEqual(caught.exception.code, code)

    def test_refusedEarly(self) -> None:
        """
        An unknown critical record is refused as soon as it arrives, and a
        record too large for the limit as soon as its header does.
        """
        parser = KERequestParser()
        with self.assertRaises(KERequestRefused) as caught:
            parser.feed(NEXT + record(0x1234, b"x"))
        self.assertEqual(caught.exception.code, ErrorCode.UNRECOGNIZED_CRITICAL_RECORD)
        parser = KERequestParser(maxSize=100)
        self.assertRaises(KERequestRefused, parser.feed, NEXT + u16(0x4001, 200))

    def test_doneAfterOutcome(self) -> None:
        """
        After a request, or a refusal, more bytes are refused.
        """
        parser = KERequestParser()
        parser.feed(CHRONY_REQUEST)
        self.assertRaises(KERequestRefused, parser.feed, b"x")
        parser = KERequestParser()
        self.assertRaises(KERequestRefused, parser.feed, AEAD + END)
        self.assertRaises(KERequestRefused, parser.feed, CHRONY_REQUEST)


class ResponseTests(SynchronousTestCase):
    """
    L{negotiate}, L{buildResponse}, L{buildErrorResponse}.
    """

    def test_negotiate(self) -> None:
        """
        NTPv4 and the first supported AEAD algorithm in the client's order;
        none when not offered.
        """
        cases = [
            (KERequest((0,), (15,)), Negotiation(0, 15)),
            (KERequest((0x8001, 0), (30, 15, 17)), Negotiation(0, 15)),
            (KERequest((0,), (30,)), Negotiation(0, None)),
            (KERequest((0x8001,), ()), Negotiation(None, None)),
        ]
        for request, expected in cases:
            with self.subTest(request=request):
                self.assertEqual(negotiate(request), expected)
        self.assertTrue(Negotiation(0, 15).complete)
        self.assertFalse(Negotiation(0, None).complete)

    def test_full(self) -> None:
        """
        A complete response: Next Protocol, AEAD, Server and Port
        Negotiation, the cookies, End of Message.
        """
        response = buildResponse(
            Negotiation(0, 15),
            [COOKIE, COOKIE[:96]],
            server="ntp.example.net",
            port=1234,
        )
        self.assertEqual(
            response,
            record(1, u16(0))
            + record(4, u16(15))
            + record(6, b"ntp.example.net")
            + record(7, u16(1234))
            + record(5, COOKIE, False)
            + record(5, COOKIE[:96], False)
            + END,
        )

    def test_noCommonAEAD(self) -> None:
        """
        Without a common AEAD algorithm: NTPv4, an empty AEAD record, no
        cookies (RFC 8915 section 4.1.5).
        """
        self.assertEqual(
            buildResponse(Negotiation(0, None)), record(1, u16(0)) + record(4) + END
        )
        self.assertRaises(ValueError, buildResponse, Negotiation(0, None), [COOKIE])

    def test_noCommonProtocol(self) -> None:
        """
        Without a common protocol: an empty Next Protocol record.
        """
        self.assertEqual(buildResponse(Negotiation(None, None)), record(1) + END)

    def test_badSettings(self) -> None:
        """
        A server name that is no name or address, or a port out of range,
        cannot be sent; a complete response needs cookies.
        """
        full = Negotiation(0, 15)
        self.assertRaises(ValueError, buildResponse, full, [])
        for server in ("a b", "", "x" * 300, "é.example", "-bad.example"):
            with self.subTest(server=server):
                self.assertRaises(ValueError, buildResponse, full, [COOKIE], server)
        for port in (0, 65536):
            self.assertRaises(ValueError, buildResponse, full, [COOKIE], None, port)

    def test_error(self) -> None:
        """
        An error response is an Error record with the code, then End of
        Message.
        """
        self.assertEqual(
            buildErrorResponse(ErrorCode.BAD_REQUEST), record(2, u16(1)) + END
        )


def response(*records: bytes) -> bytes:
    return b"".join(records) + END


GOOD = [record(1, u16(0)), record(4, u16(15)), record(5, COOKIE, False)]


BAD_RESPONSES: list[tuple[str, bytes, type[Exception], str]] = [
    ("error", response(record(2, u16(1))), NTSKEServerError, "error 1 (bad request)"),
    ("unknown error", response(record(2, u16(77))), NTSKEServerError, "error 77"),
    ("warning", response(*GOOD, record(3, u16(5))), NTSKEServerError, "warning 5"),
    ("short error", response(record(2, b"\1")), NTSKEBadResponse, "1 bytes, not 2"),
    ("no Next Protocol", response(*GOOD[1:]), NTSKEBadResponse, "no Next Protocol"),
    ("no NTPv4", response(record(1), *GOOD[1:]), NTSKEBadResponse, "not speak NTPv4"),
    (
        "other protocol",
        response(record(1, u16(1)), *GOOD[1:]),
        NTSKEBadResponse,
        "not NTPv4",
    ),
    ("no AEAD", response(GOOD[0], GOOD[2]), NTSKEBadResponse, "no AEAD"),
    (
        "empty AEAD",
        response(GOOD[0], record(4), GOOD[2]),
        NTSKEBadResponse,
        "none of the AEAD",
    ),
    (
        "AEAD not offered",
        response(GOOD[0], record(4, u16(30)), GOOD[2]),
        NTSKEBadResponse,
        "not one of [15]",
    ),
    ("no cookie", response(*GOOD[:2]), NTSKEBadResponse, "no usable cookie"),
    (
        "cookie of 99 bytes",
        response(*GOOD[:2], record(5, COOKIE[:99], False)),
        NTSKEBadResponse,
        "(1 left out)",
    ),
    (
        "unknown critical",
        response(*GOOD, record(0x4000, b"")),
        NTSKEBadResponse,
        "unrecognised critical",
    ),
    ("two Next Protocol", response(GOOD[0], *GOOD), NTSKEBadResponse, "two Next"),
    ("bad port", response(*GOOD, record(7, b"\0")), NTSKEBadResponse, "Port"),
    ("bad server", response(*GOOD, record(6, b"a\0b")), NTSKEBadResponse, "Server"),
    (
        "server not a name",
        response(*GOOD, record(6, b"a_b!")),
        NTSKEBadResponse,
        "neither a host name",
    ),
    ("after the end", response(*GOOD) + b"\0", NTSKEBadResponse, "after the End"),
    (
        "end with a body",
        b"".join(GOOD) + record(0, b"\0\0"),
        NTSKEBadResponse,
        "End of Message",
    ),
]


class ClientResponseTests(SynchronousTestCase):
    """
    L{KEResponseParser}.
    """

    def test_roundTrip(self) -> None:
        """
        The server's response reads back as what it was built from.
        """
        cookies = [os.urandom(100) for _ in range(8)]
        data = buildResponse(Negotiation(0, 15), cookies, "192.0.2.1", 4123)
        parser = KEResponseParser()
        self.assertEqual(
            parser.feed(data),
            KEResponse(15, tuple(cookies), "192.0.2.1", 4123),
        )

    def test_pieces(self) -> None:
        """
        The response may arrive a byte at a time.
        """
        data = buildResponse(Negotiation(0, 15), [COOKIE])
        parser = KEResponseParser()
        for byte in data[:-1]:
            self.assertIsNone(parser.feed(bytes([byte])))
        self.assertEqual(parser.feed(data[-1:]), KEResponse(15, (COOKIE,)))

    def test_cookiesKept(self) -> None:
        """
        At most 8 cookies are kept, of lengths that are multiples of 4 up to
        256; the others are counted.
        """
        data = response(
            *GOOD[:2],
            *[record(5, COOKIE, False)] * 9,
            record(5, COOKIE[:98], False),
            record(5, bytes(260), False),
        )
        result = KEResponseParser().feed(data)
        assert result is not None
        self.assertEqual(result.cookies, (COOKIE,) * 8)
        self.assertEqual(result.ignoredCookies, 3)

    def test_unknownNonCritical(self) -> None:
        """
        Unknown records without the critical bit are ignored.
        """
        result = KEResponseParser().feed(response(record(0x4000, b"x", False), *GOOD))
        self.assertEqual(result, KEResponse(15, (COOKIE,)))

    def test_bad(self) -> None:
        """
        Each bad response fails with its error and a message that says
        why; an Error record carries its code.
        """
        for name, data, exception, text in BAD_RESPONSES:
            with self.subTest(name=name):
                with self.assertRaises(exception) as caught:
                    KEResponseParser().feed(data)
                self.assertIn(text, str(caught.exception))
        with self.assertRaises(NTSKEServerError) as caught:
            KEResponseParser().feed(response(record(2, u16(2))))
        self.assertEqual(caught.exception.code, ErrorCode.INTERNAL_SERVER_ERROR)
        self.assertFalse(caught.exception.warning)

    def test_tooLarge(self) -> None:
        """
        A response over the limit fails as soon as it is known.
        """
        parser = KEResponseParser(maxSize=1000)
        self.assertRaises(NTSKEBadResponse, parser.feed, record(5, bytes(2000), False))


_records = st.builds(
    Record,
    st.one_of(st.integers(0, 8), st.integers(0, 0x7FFF)),
    st.binary(max_size=40),
    st.booleans(),
).map(Record.toBytes)


def _pieces(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    bounds = [0, *points, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


def _outcome(parser: KERequestParser | KEResponseParser, pieces: list[bytes]) -> object:
    """
    What C{parser} makes of C{pieces}: a result, L{None}, or its error
    (as a comparable value).
    """
    result = None
    try:
        for piece in pieces:
            result = parser.feed(piece) or result
    except KERequestRefused as e:
        return ("refused", e.code)
    except NTSKEServerError as e:
        return ("error", e.code, e.warning)
    except NTSKEBadResponse:
        return "bad"
    return result


def _serverOutcome(pieces: list[bytes]) -> object:
    return _outcome(KERequestParser(), pieces)


def _clientOutcome(pieces: list[bytes]) -> object:
    return _outcome(KEResponseParser(), pieces)


class GarbageTests(SynchronousTestCase):
    """
    Garbage and odd record sequences, in any pieces: the parsers answer
    only with their outcomes (a value, L{None}, or their own errors), and
    the pieces do not change the outcome.
    """

    @FUZZ
    @given(st.binary(max_size=2000), st.lists(st.integers(0, 2000), max_size=6))
    def test_serverBytes(self, data: bytes, cuts: list[int]) -> None:
        """
        Any bytes: the same outcome whole or in pieces, and never another
        exception.
        """
        self.assertEqual(_serverOutcome([data]), _serverOutcome(_pieces(data, cuts)))

    @FUZZ
    @given(st.lists(_records, max_size=12), st.lists(st.integers(0, 500), max_size=6))
    def test_serverRecords(self, records: list[bytes], cuts: list[int]) -> None:
        """
        Record sequences (mostly of known types): the same outcome whole or
        in pieces; a complete request always has a Next Protocol.
        """
        data = b"".join(records)
        outcome = _serverOutcome([data])
        self.assertEqual(outcome, _serverOutcome(_pieces(data, cuts)))
        if isinstance(outcome, KERequest):
            self.assertTrue(outcome.nextProtocols)

    @FUZZ
    @given(st.binary(max_size=2000), st.lists(st.integers(0, 2000), max_size=6))
    def test_clientBytes(self, data: bytes, cuts: list[int]) -> None:
        """
        Any bytes as a response: the same outcome whole or in pieces.
        """
        self.assertEqual(_clientOutcome([data]), _clientOutcome(_pieces(data, cuts)))

    @FUZZ
    @given(st.lists(_records, max_size=12))
    def test_clientRecords(self, records: list[bytes]) -> None:
        """
        Record sequences as a response: a result always has a cookie and
        the AEAD algorithm offered.
        """
        outcome = _clientOutcome([b"".join(records) + END])
        if isinstance(outcome, KEResponse):
            self.assertTrue(outcome.cookies)
            self.assertEqual(outcome.aead, AEAD_AES_SIV_CMAC_256)

    @FUZZ
    @given(
        st.lists(
            st.binary(min_size=4, max_size=256).filter(lambda c: len(c) % 4 == 0),
            min_size=1,
            max_size=8,
        ),
        st.one_of(
            st.none(), st.sampled_from(["ntp.example.net", "192.0.2.7", "2001:db8::1"])
        ),
        st.one_of(st.none(), st.integers(1, 65535)),
    )
    def test_roundTrip(
        self, cookies: list[bytes], server: str | None, port: int | None
    ) -> None:
        """
        Any response the server builds reads back as what it was built
        from.
        """
        data = buildResponse(Negotiation(0, 15), cookies, server, port)
        self.assertEqual(
            KEResponseParser().feed(data), KEResponse(15, tuple(cookies), server, port)
        )
