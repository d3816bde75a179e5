"""
Tests for L{udptime.nts}: NTS extension fields for NTPv4, the server's
decision and reply, the client's request and check of the reply;
table-driven cases and Hypothesis properties (mutations of valid packets:
no single-bit change is ever accepted).

C{UDPTIME_FUZZ_EXAMPLES} sets the examples per property (L{tests.fuzzing}).
"""

from __future__ import annotations

import os
import random
import struct

from cryptography.hazmat.primitives.ciphers.aead import AESSIV
from hypothesis import assume, given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from tests.fuzzing import FUZZ
from tests.ntsresponder import clockState
from udptime import nts
from udptime.ntp import NTPCodecError, NTPPacket, buildReply, parseRequest
from udptime.nts import (
    AUTHENTICATOR,
    COOKIE_PLACEHOLDER,
    NTS_COOKIE,
    UNIQUE_IDENTIFIER,
    MalformedNTSRequest,
    NotOurReply,
    NTSAuthenticationFailed,
    NTSNak,
    NTSNakReply,
    NTSRequest,
    ReplyNotAuthenticated,
    SessionCiphers,
    authenticatorField,
    buildClientRequest,
    checkRequest,
    extensionField,
    readReply,
)
from udptime.ntscookie import CookieKeys, SessionKeys

NOW = 1_800_000_000.5
STATE = clockState()
TRANSMIT = 0x0123456789ABCDEF


class Exchange:
    """
    A client's session with a server: the server keys, the session keys,
    a request's unique identifier.
    """

    def __init__(self, seed: int = 1) -> None:
        generator = random.Random(seed)
        self.randomBytes = generator.randbytes
        self.keys = CookieKeys.generate(NOW, randomBytes=self.randomBytes)
        self.session = SessionKeys(self.randomBytes(32), self.randomBytes(32))
        self.c2s = AESSIV(self.session.c2s)
        self.s2c = AESSIV(self.session.s2c)
        self.uid = self.randomBytes(32)

    def cookie(self) -> bytes:
        return self.keys.seal(self.session)

    def request(
        self, placeholders: int = 0, cookie: bytes | None = None, header: bytes = b""
    ) -> bytes:
        return buildClientRequest(
            header or clientHeader(),
            self.cookie() if cookie is None else cookie,
            placeholders,
            self.c2s,
            self.uid,
            self.randomBytes(16),
        )

    def check(self, data: bytes) -> NTSRequest | NTSNak | None:
        return checkRequest(data, self.keys, randomBytes=self.randomBytes)

    def reply(self, request: bytes) -> bytes:
        decision = self.check(request)
        assert isinstance(decision, NTSRequest)
        header = buildReply(
            parseRequest(request), STATE, NOW, NOW + 1e-5, randomBits=lambda k: 0
        )
        return decision.seal(header)


def clientHeader(first: int = 0x23) -> bytes:
    return NTPPacket(
        leap=first >> 6,
        version=first >> 3 & 7,
        mode=first & 7,
        transmitTimestamp=TRANSMIT,
    ).toBytes()


def field(fieldType: int, body: bytes) -> bytes:
    return extensionField(fieldType, body)


def assemble(exchange: Exchange, *fields: bytes, plaintext: bytes = b"") -> bytes:
    """
    A request of C{fields} after a client header, sealed with an
    authenticator over C{plaintext}.
    """
    associated = clientHeader() + b"".join(fields)
    return associated + authenticatorField(
        exchange.c2s, associated, plaintext, os.urandom(16)
    )


class ExtensionFieldTests(SynchronousTestCase):
    """
    Extension fields.
    """

    def test_padding(self) -> None:
        """
        A body is padded with zeros to a multiple of 4, and the field to at
        least 16 bytes.
        """
        body = b"thirteen byte"
        self.assertEqual(
            field(0x0104, body), bytes.fromhex("01040014") + body + bytes(3)
        )
        self.assertEqual(
            field(0x0104, b"abc"), bytes.fromhex("01040010") + b"abc" + bytes(9)
        )
        self.assertEqual(len(field(0x0104, bytes(32))), 36)

    def test_parse(self) -> None:
        """
        Fields are read as (type, body start, end); a bad length is an
        error.
        """
        data = bytes(48) + field(1, bytes(12)) + field(2, bytes(28))
        self.assertEqual(nts.parseFields(data), [(1, 52, 64), (2, 68, 96)])
        for bad in (b"\0\1\0\x0c" + bytes(8), b"\0\1\0\x12" + bytes(14), b"\0\1"):
            self.assertRaises(ValueError, nts.parseFields, bytes(48) + bad)


class ServerTests(SynchronousTestCase):
    """
    L{checkRequest} and L{NTSRequest.seal}.
    """

    def test_roundTrip(self) -> None:
        """
        An authentic request gets an authentic reply: the header given, the
        unique identifier echoed, fresh cookies that open to the client's
        keys; the reply is as long as the request.
        """
        exchange = Exchange()
        request = exchange.request()
        decision = exchange.check(request)
        assert isinstance(decision, NTSRequest)
        self.assertEqual(decision.keys, exchange.session)
        self.assertEqual(decision.cookies, 1)
        reply = exchange.reply(request)
        self.assertEqual(len(reply), len(request))
        self.assertEqual(reply[48:84], field(UNIQUE_IDENTIFIER, exchange.uid))
        packet = NTPPacket.fromBytes(reply)
        self.assertEqual((packet.mode, packet.stratum), (4, 1))
        self.assertEqual(packet.originTimestamp, TRANSMIT)
        cookies, ignored = readReply(reply, exchange.uid, exchange.s2c)
        self.assertEqual((len(cookies), ignored), (1, 0))
        self.assertEqual(exchange.keys.open(cookies[0]), exchange.session)

    def test_cookieCounts(self) -> None:
        """
        One fresh cookie for the cookie used and one per placeholder, at most
        8; the reply never grows past the request.
        """
        exchange = Exchange()
        for placeholders, expected in [(0, 1), (1, 2), (3, 4), (7, 8), (10, 8)]:
            with self.subTest(placeholders=placeholders):
                request = exchange.request(placeholders)
                decision = exchange.check(request)
                assert isinstance(decision, NTSRequest)
                self.assertEqual(decision.cookies, expected)
                reply = exchange.reply(request)
                self.assertLessEqual(len(reply), len(request))
                cookies, _ = readReply(reply, exchange.uid, exchange.s2c)
                self.assertEqual(len(cookies), expected)

    def test_placeholderLength(self) -> None:
        """
        Only placeholders of the cookie's length count, in the clear or
        encrypted.
        """
        exchange = Exchange()
        cookie = exchange.cookie()
        request = assemble(
            exchange,
            field(UNIQUE_IDENTIFIER, exchange.uid),
            field(NTS_COOKIE, cookie),
            field(COOKIE_PLACEHOLDER, bytes(100)),
            field(COOKIE_PLACEHOLDER, bytes(96)),
            plaintext=field(COOKIE_PLACEHOLDER, bytes(100)) * 2
            + field(COOKIE_PLACEHOLDER, bytes(200)),
        )
        decision = exchange.check(request)
        assert isinstance(decision, NTSRequest)
        self.assertEqual(decision.cookies, 4)

    def test_roomLimitsCookies(self) -> None:
        """
        Encrypted placeholders make a request no longer than their
        ciphertext: the cookies are cut to what fits.
        """
        exchange = Exchange()
        request = assemble(
            exchange,
            field(UNIQUE_IDENTIFIER, exchange.uid),
            field(NTS_COOKIE, exchange.cookie()),
            plaintext=field(COOKIE_PLACEHOLDER, bytes(100)) * 3,
        )
        decision = exchange.check(request)
        assert isinstance(decision, NTSRequest)
        self.assertEqual(decision.cookies, 4)
        header = buildReply(parseRequest(request), STATE, NOW, NOW)
        self.assertLessEqual(len(decision.seal(header)), len(request))

    def test_notNTS(self) -> None:
        """
        Requests without NTS fields are not NTS: plain, with other extension
        fields, with a MAC, or with garbage after the header.
        """
        exchange = Exchange()
        for data in (
            clientHeader(),
            clientHeader() + field(0x2005, bytes(24)),
            clientHeader() + bytes(20),
            clientHeader() + b"\x01\x04\x00",
        ):
            with self.subTest(data=data.hex()):
                self.assertIsNone(exchange.check(data))

    def test_nak(self) -> None:
        """
        A cookie under an unknown key, or one that does not open, gets an
        NTS NAK: a Kiss-o'-Death NTSN with the unique identifier echoed and
        nothing of the server's clock, no longer than the request.
        """
        exchange = Exchange()
        cookie = exchange.cookie()
        unknown = (int.from_bytes(cookie[:4], "big") ^ 0xFF).to_bytes(4, "big")
        forged = bytearray(cookie)
        forged[50] ^= 1
        for bad in (unknown + cookie[4:], bytes(forged), cookie[:96]):
            with self.subTest(cookie=bad.hex()):
                request = exchange.request(cookie=bad)
                decision = exchange.check(request)
                assert isinstance(decision, NTSNak)
                nak = decision.reply(request)
                assert nak is not None
                self.assertLessEqual(len(nak), len(request))
                self.assertEqual(nak[48:], field(UNIQUE_IDENTIFIER, exchange.uid))
                packet = NTPPacket.fromBytes(nak)
                self.assertEqual(
                    (packet.leap, packet.mode, packet.stratum, packet.refid),
                    (3, 4, 0, b"NTSN"),
                )
                self.assertEqual(packet.transmitTimestamp, TRANSMIT)
                self.assertRaises(
                    NTSNakReply, readReply, nak, exchange.uid, exchange.s2c
                )

    def test_authenticationFails(self) -> None:
        """
        A request whose cookie opens but whose authenticator does not verify
        is dropped as such: a changed header, a changed placeholder, a
        changed ciphertext, another client's key.
        """
        exchange = Exchange()
        request = exchange.request(1)
        for index in (2, 47, 200, len(request) - 1):
            changed = bytearray(request)
            changed[index] ^= 0x10
            with self.subTest(index=index):
                self.assertRaises(
                    NTSAuthenticationFailed, exchange.check, bytes(changed)
                )
        other = Exchange(2)
        stolen = other.request(cookie=exchange.cookie())
        self.assertRaises(NTSAuthenticationFailed, exchange.check, stolen)

    def test_malformed(self) -> None:
        """
        NTS fields that do not make an NTS request are dropped as
        malformed.
        """
        exchange = Exchange()
        uid = field(UNIQUE_IDENTIFIER, exchange.uid)
        cookie = field(NTS_COOKIE, exchange.cookie())
        auth = authenticatorField(exchange.c2s, b"", b"", bytes(16))
        cases = {
            "two identifiers": assemble(exchange, uid, uid, cookie),
            "two cookies": assemble(exchange, uid, cookie, cookie),
            "no identifier": assemble(exchange, cookie),
            "no cookie": assemble(exchange, uid),
            "no authenticator": clientHeader()
            + uid
            + cookie
            + field(0x2005, bytes(24)),
            "authenticator not last": assemble(exchange, uid, cookie)
            + field(0x2005, bytes(24)),
            "NTS field after authenticator": assemble(exchange, uid, cookie) + uid,
            "short identifier": assemble(
                exchange, field(UNIQUE_IDENTIFIER, bytes(16)), cookie
            ),
            "bad field length": clientHeader() + uid + cookie + b"\x12\x34\x00\x05",
            "mode 1": clientHeader(0x21) + uid + cookie + auth,
            "version 3": clientHeader(0x1B) + uid + cookie + auth,
            "authenticator lengths": clientHeader()
            + uid
            + cookie
            + field(AUTHENTICATOR, struct.pack("!HH", 16, 200) + bytes(32)),
            "nonce too short": clientHeader()
            + uid
            + cookie
            + field(AUTHENTICATOR, struct.pack("!HH", 4, 16) + bytes(20)),
            "no ciphertext": clientHeader()
            + uid
            + cookie
            + field(AUTHENTICATOR, struct.pack("!HH", 16, 0) + bytes(16)),
            "bad encrypted fields": assemble(
                exchange, uid, cookie, plaintext=b"\x00\x01\x00\x05" + bytes(12)
            ),
        }
        for name, data in cases.items():
            with self.subTest(name=name):
                self.assertRaises(MalformedNTSRequest, exchange.check, data)

    def test_dropsAreCodecErrors(self) -> None:
        """
        The drops are L{NTPCodecError}s, as the plain NTP path's are;
        malformed ones are L{MalformedPacket<udptime.ntp.MalformedPacket>}.
        """
        self.assertTrue(issubclass(MalformedNTSRequest, NTPCodecError))
        self.assertTrue(issubclass(NTSAuthenticationFailed, NTPCodecError))

    def test_sessionCiphers(self) -> None:
        """
        A cache of session ciphers is used when given: the second request
        of a session hits it.
        """
        exchange = Exchange()
        ciphers = SessionCiphers(size=2)
        for _ in range(3):
            decision = checkRequest(exchange.request(), exchange.keys, ciphers)
            self.assertIsInstance(decision, NTSRequest)
        self.assertEqual((ciphers.misses, ciphers.hits), (1, 2))
        for seed in (5, 6, 7):
            other = Exchange(seed)
            checkRequest(other.request(), other.keys, ciphers)
        self.assertEqual(ciphers.misses, 4)

    def test_plainPathStillParses(self) -> None:
        """
        An NTS request passes L{parseRequest} (its fields are well-formed
        RFC 7822 fields), so the server parses it as any request.
        """
        exchange = Exchange()
        for placeholders in (0, 7):
            parseRequest(exchange.request(placeholders))


class ClientTests(SynchronousTestCase):
    """
    L{buildClientRequest} and L{readReply}.
    """

    def test_request(self) -> None:
        """
        A request is the header, the unique identifier, the cookie, the
        placeholders of the cookie's length, the authenticator (nonce 16,
        16 bytes of ciphertext: the tag over nothing).
        """
        exchange = Exchange()
        cookie = exchange.cookie()
        request = exchange.request(2, cookie=cookie)
        fields = nts.parseFields(request)
        self.assertEqual(
            [(t, end - start) for t, start, end in fields],
            [
                (UNIQUE_IDENTIFIER, 32),
                (NTS_COOKIE, 100),
                (COOKIE_PLACEHOLDER, 100),
                (COOKIE_PLACEHOLDER, 100),
                (AUTHENTICATOR, 36),
            ],
        )
        self.assertEqual(request[88:188], cookie)
        self.assertEqual(request[-36:-32], struct.pack("!HH", 16, 16))
        self.assertRaises(
            ValueError,
            buildClientRequest,
            bytes(40),
            cookie,
            0,
            exchange.c2s,
            exchange.uid,
            bytes(16),
        )

    def test_notOurs(self) -> None:
        """
        A reply without our unique identifier is not ours.
        """
        exchange = Exchange()
        reply = exchange.reply(exchange.request())
        self.assertRaises(NotOurReply, readReply, reply, os.urandom(32), exchange.s2c)
        self.assertRaises(
            NotOurReply, readReply, reply[:48], exchange.uid, exchange.s2c
        )
        self.assertRaises(
            NotOurReply, readReply, reply[:48] + reply[84:], exchange.uid, exchange.s2c
        )
        self.assertRaises(
            NotOurReply, readReply, reply + b"\0", exchange.uid, exchange.s2c
        )

    def test_notAuthentic(self) -> None:
        """
        A reply with our identifier is authentic only with a valid
        authenticator, last, under the S2C key; an unauthenticated
        Kiss-o'-Death other than a NAK is not authentic.
        """
        exchange = Exchange()
        reply = exchange.reply(exchange.request())
        rate = bytearray(reply[:84])
        rate[1] = 0
        rate[12:16] = b"RATE"
        for data, key in [
            (reply[:84], exchange.s2c),
            (bytes(rate), exchange.s2c),
            (reply, exchange.c2s),
            (reply + field(0x2005, bytes(24)), exchange.s2c),
        ]:
            self.assertRaises(ReplyNotAuthenticated, readReply, data, exchange.uid, key)

    def test_paddingAccepted(self) -> None:
        """
        An authenticator with extra padding after its ciphertext (chrony
        pads its reply to the request's length) is accepted, and unencrypted
        cookies are ignored.
        """
        exchange = Exchange()
        cookie = exchange.cookie()
        associated = (
            clientHeader(0x24)
            + field(UNIQUE_IDENTIFIER, exchange.uid)
            + field(NTS_COOKIE, bytes(100))
        )
        nonce = bytes(range(16))
        ciphertext = exchange.s2c.encrypt(
            field(NTS_COOKIE, cookie), [associated, nonce]
        )
        body = struct.pack("!HH", 16, len(ciphertext)) + nonce + ciphertext + bytes(24)
        reply = associated + field(AUTHENTICATOR, body)
        self.assertEqual(readReply(reply, exchange.uid, exchange.s2c), ((cookie,), 0))

    def test_oddCookiesIgnored(self) -> None:
        """
        Encrypted cookies of lengths that are not multiples of 4, or over
        256 bytes, are left out and counted.
        """
        exchange = Exchange()
        associated = clientHeader(0x24) + field(UNIQUE_IDENTIFIER, exchange.uid)
        plaintext = (
            field(NTS_COOKIE, bytes(100))
            + field(NTS_COOKIE, bytes(300))
            + field(0x2005, bytes(12))
        )
        reply = associated + authenticatorField(
            exchange.s2c, associated, plaintext, bytes(16)
        )
        self.assertEqual(
            readReply(reply, exchange.uid, exchange.s2c), ((bytes(100),), 1)
        )


def flip(data: bytes, bit: int) -> bytes:
    changed = bytearray(data)
    changed[bit // 8] ^= 1 << (bit % 8)
    return bytes(changed)


def mutate(data: bytes, operations: list[tuple[int, int, int]]) -> bytes:
    """
    Apply chrony-style mutations: byte changes, cuts and extensions at
    4-byte boundaries, so that the field walk goes deep.
    """
    out = bytearray(data)
    for kind, position, value in operations:
        if not out:
            break
        position %= len(out)
        if kind == 0:
            out[position] = value & 0xFF
        elif kind == 1:
            del out[position & ~3 :]
        else:
            out[position & ~3 : position & ~3] = bytes([value & 0xFF]) * 4
    return bytes(out)


_operations = st.lists(
    st.tuples(st.integers(0, 2), st.integers(0, 4000), st.integers(0, 255)),
    min_size=1,
    max_size=4,
)
_ntsField = st.builds(
    field,
    st.sampled_from(
        [UNIQUE_IDENTIFIER, NTS_COOKIE, COOKIE_PLACEHOLDER, AUTHENTICATOR, 0x2005]
    ),
    st.binary(max_size=120),
)


class FuzzTests(SynchronousTestCase):
    """
    Properties over damaged and random NTS packets.
    """

    exchange = Exchange(9)
    request = exchange.request(3)
    reply = exchange.reply(request)

    def _decide(self, data: bytes) -> object:
        try:
            return self.exchange.check(data)
        except NTPCodecError as e:
            return e

    @FUZZ
    @given(st.integers(0, 8 * 600))
    def test_requestBitFlips(self, bit: int) -> None:
        """
        No single-bit change to an authentic request is accepted: it is
        dropped, NAKed, or not NTS at all.
        """
        request = self.request
        assume(bit < 8 * len(request))
        self.assertNotIsInstance(self._decide(flip(request, bit)), NTSRequest)

    @FUZZ
    @given(_operations)
    def test_requestMutations(self, operations: list[tuple[int, int, int]]) -> None:
        """
        Mutated requests: only the decisions L{checkRequest} documents, and
        a reply to an accepted one never longer than the request.
        """
        data = mutate(self.request, operations)
        decision = self._decide(data)
        self.assertIsInstance(decision, (NTSRequest, NTSNak, NTPCodecError, type(None)))
        if isinstance(decision, NTSRequest):
            header = buildReply(parseRequest(data), STATE, NOW, NOW)
            self.assertLessEqual(len(decision.seal(header)), len(data))
        if isinstance(decision, NTSNak):
            nak = decision.reply(data)
            self.assertLessEqual(len(nak or b""), len(data))

    @FUZZ
    @given(st.lists(_ntsField, max_size=8), st.integers(0x00, 0xFF))
    def test_randomFields(self, fields: list[bytes], first: int) -> None:
        """
        Random sequences of NTS (and other) fields after any first byte:
        only documented decisions.
        """
        data = clientHeader(first) + b"".join(fields)
        decision = self._decide(data)
        self.assertIsInstance(decision, (NTSRequest, NTSNak, NTPCodecError, type(None)))

    @FUZZ
    @given(st.binary(max_size=700))
    def test_garbage(self, trailer: bytes) -> None:
        """
        Any bytes after a client header: only documented decisions.
        """
        decision = self._decide(clientHeader() + trailer)
        self.assertIsInstance(decision, (NTSRequest, NTSNak, NTPCodecError, type(None)))

    @FUZZ
    @given(st.integers(0, 8 * 600))
    def test_replyBitFlips(self, bit: int) -> None:
        """
        No single-bit change to an authentic reply is accepted.
        """
        reply = self.reply
        assume(bit < 8 * len(reply))
        self.assertRaises(
            (NotOurReply, NTSNakReply, ReplyNotAuthenticated),
            readReply,
            flip(reply, bit),
            self.exchange.uid,
            self.exchange.s2c,
        )

    @FUZZ
    @given(_operations)
    def test_replyMutations(self, operations: list[tuple[int, int, int]]) -> None:
        """
        Mutated replies: cookies, or one of the three documented errors.
        """
        data = mutate(self.reply, operations)
        try:
            cookies, _ = readReply(data, self.exchange.uid, self.exchange.s2c)
        except (NotOurReply, NTSNakReply, ReplyNotAuthenticated):
            return
        self.assertEqual(data, self.reply)
        self.assertEqual(len(cookies), 4)
