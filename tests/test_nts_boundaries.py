"""
Boundary cases of L{udptime.nts}: the wire values of the four NTS extension
fields, field lengths at their limits, authenticator nonces and ciphertexts
of every length that matters, the fields L{checkRequest} looks at when the
rest do not parse, the reply within the request's length when fresh cookies
are longer than the one used, the bounded cache of session ciphers, and the
cookie lengths a client keeps.
"""

from __future__ import annotations

import struct
from dataclasses import FrozenInstanceError

from twisted.trial.unittest import SynchronousTestCase

from tests.test_nts import NOW, STATE, Exchange, clientHeader, field
from udptime import nts
from udptime.ntp import buildReply, parseRequest
from udptime.nts import (
    AUTHENTICATOR,
    NTS_COOKIE,
    UNIQUE_IDENTIFIER,
    MalformedNTSRequest,
    NTSAuthenticationFailed,
    NTSNak,
    NTSRequest,
    ReplyNotAuthenticated,
    SessionCiphers,
    authenticatorField,
    checkRequest,
    readReply,
)
from udptime.ntscookie import CookieKeys, SessionKeys


def authenticator(
    nonceLength: int, ciphertext: bytes, nonce: bytes = b"", padding: int = 0
) -> bytes:
    """
    An authenticator field as written: lengths, the nonce padded to 4
    bytes, the ciphertext padded to 4 bytes, then C{padding} zero bytes.
    """
    nonce = nonce or bytes(range(1, nonceLength + 1))
    body = (
        struct.pack("!HH", nonceLength, len(ciphertext))
        + nonce
        + bytes(-len(nonce) % 4)
        + ciphertext
        + bytes(-len(ciphertext) % 4)
        + bytes(padding)
    )
    return field(AUTHENTICATOR, body)


def sealedWithNonce(
    exchange: Exchange, nonce: bytes, padding: int, plaintext: bytes = b""
) -> bytes:
    """
    A request with a unique identifier and a cookie, its authenticator
    sealed with the C2S key over C{plaintext} with C{nonce}, whatever its
    length, and C{padding} zero bytes after the ciphertext.
    """
    associated = (
        clientHeader()
        + field(UNIQUE_IDENTIFIER, exchange.uid)
        + field(NTS_COOKIE, exchange.cookie())
    )
    ciphertext = exchange.c2s.encrypt(plaintext, [associated, nonce])
    return associated + authenticator(len(nonce), ciphertext, nonce, padding)


class WireTests(SynchronousTestCase):
    """
    The NTS extension field types on the wire (RFC 8915 section 7.6), as
    other implementations read them.
    """

    def test_fieldTypes(self) -> None:
        """
        A request's fields are typed 0x0104, 0x0204, 0x0304 and 0x0404; a
        reply's 0x0104 and 0x0404.
        """
        exchange = Exchange()
        request = exchange.request(1)
        self.assertEqual(
            [
                request[start - 4 : start - 2].hex()
                for _, start, _ in nts.parseFields(request)
            ],
            ["0104", "0204", "0304", "0404"],
        )
        reply = exchange.reply(request)
        self.assertEqual(
            [
                reply[start - 4 : start - 2].hex()
                for _, start, _ in nts.parseFields(reply)
            ],
            ["0104", "0404"],
        )

    def test_replyNonce(self) -> None:
        """
        The reply's authenticator has a 16-byte nonce (RFC 8915 section
        5.6 asks for at least 16 bytes of AES-SIV-CMAC-256) and a
        ciphertext of a 16-byte tag over the fresh cookies.
        """
        exchange = Exchange()
        reply = exchange.reply(exchange.request())
        [_, (_, start, end)] = nts.parseFields(reply)
        nonceLength, cipherLength = struct.unpack_from("!HH", reply, start)
        self.assertEqual((nonceLength, cipherLength), (16, 16 + 104))
        self.assertEqual(end - start, 4 + 16 + 16 + 104)


class ExtensionFieldLengthTests(SynchronousTestCase):
    """
    L{nts.extensionField} up to the largest field, 65532 bytes (its
    length is 16 bits and a multiple of 4), and L{nts.parseFields}' length
    checks.
    """

    def test_largest(self) -> None:
        """
        A body of 65528 bytes makes the largest field; a longer one is an
        error.
        """
        largest = nts.extensionField(0x2005, bytes(65528))
        self.assertEqual(len(largest), 65532)
        self.assertEqual(largest[:4], bytes.fromhex("2005fffc"))
        for length in (65529, 65531, 65532):
            with self.subTest(length=length):
                self.assertRaises(ValueError, nts.extensionField, 0x2005, bytes(length))

    def test_pastTheEnd(self) -> None:
        """
        A field whose length, a multiple of 4 and at least 16, runs past
        the end of the packet is an error.
        """
        for data in (
            bytes(48) + bytes.fromhex("00010014") + bytes(12),
            bytes(48) + field(2, bytes(12)) + bytes.fromhex("00010040") + bytes(28),
        ):
            with self.subTest(data=data[48:].hex()):
                self.assertRaises(ValueError, nts.parseFields, data)


class AuthenticatorTests(SynchronousTestCase):
    """
    The request's authenticator: a nonce of at least 1 byte with room for
    16, a ciphertext at least as long as the tag.
    """

    def test_nonceLengths(self) -> None:
        """
        A nonce of 1, 4 or 16 bytes, sealed with, is accepted when the
        field leaves room for 16; an empty nonce is malformed, even sealed
        with.
        """
        exchange = Exchange()
        for nonce, padding in [
            (b"\x07", 12),
            (b"\x07" * 4, 12),
            (bytes(range(16)), 0),
            (bytes(range(20)), 0),
        ]:
            with self.subTest(nonce=len(nonce)):
                decision = exchange.check(sealedWithNonce(exchange, nonce, padding))
                self.assertIsInstance(decision, NTSRequest)
        self.assertRaises(
            MalformedNTSRequest, exchange.check, sealedWithNonce(exchange, b"", 16)
        )

    def test_ciphertextShorterThanTag(self) -> None:
        """
        A ciphertext shorter than the 16-byte tag is malformed (not a
        failed authentication: the cookie's keys are not even tried).
        """
        exchange = Exchange()
        for cipherLength in (1, 12, 15):
            data = (
                clientHeader()
                + field(UNIQUE_IDENTIFIER, exchange.uid)
                + field(NTS_COOKIE, exchange.cookie())
                + authenticator(16, bytes(cipherLength))
            )
            with self.subTest(cipherLength=cipherLength):
                self.assertRaises(MalformedNTSRequest, exchange.check, data)
        data = (
            clientHeader()
            + field(UNIQUE_IDENTIFIER, exchange.uid)
            + field(NTS_COOKIE, exchange.cookie())
            + authenticator(16, bytes(16))
        )
        self.assertRaises(NTSAuthenticationFailed, exchange.check, data)

    def test_secondAuthenticator(self) -> None:
        """
        Two authenticators are malformed, even when the last one verifies
        over everything before it, the first included.
        """
        exchange = Exchange()
        associated = (
            clientHeader()
            + field(UNIQUE_IDENTIFIER, exchange.uid)
            + field(NTS_COOKIE, exchange.cookie())
        )
        first = authenticatorField(exchange.c2s, associated, b"", bytes(16))
        second = authenticatorField(
            exchange.c2s, associated + first, b"", bytes(range(16))
        )
        self.assertIsInstance(exchange.check(associated + first), NTSRequest)
        self.assertRaises(
            MalformedNTSRequest, exchange.check, associated + first + second
        )

    def test_uniqueIdentifierLengths(self) -> None:
        """
        A unique identifier of 28 bytes is too short; one of 32 is not.
        """
        exchange = Exchange()
        for length, accepted in [(28, False), (32, True), (36, True)]:
            associated = (
                clientHeader()
                + field(UNIQUE_IDENTIFIER, bytes(range(length)))
                + field(NTS_COOKIE, exchange.cookie())
            )
            data = associated + authenticatorField(
                exchange.c2s, associated, b"", bytes(16)
            )
            with self.subTest(length=length):
                if accepted:
                    self.assertIsInstance(exchange.check(data), NTSRequest)
                else:
                    self.assertRaises(MalformedNTSRequest, exchange.check, data)


class UnparsedFieldsTests(SynchronousTestCase):
    """
    A request whose extension fields do not all parse is malformed NTS when
    an NTS field comes before the damage, and not NTS (the plain path's to
    judge) otherwise.
    """

    def test_table(self) -> None:
        """
        Each trailer after a client header: what L{checkRequest} makes of
        it.
        """
        exchange = Exchange()
        uid = field(UNIQUE_IDENTIFIER, exchange.uid)
        other = field(0x2005, bytes(12))
        cases: list[tuple[str, bytes, bool]] = [
            ("other field, then 3 stray bytes", other + b"\x01\x04\x00", False),
            ("identifier, then 3 stray bytes", uid + b"\x01\x04\x00", True),
            ("identifier, then a field past the end", uid + b"\x01\x04\x00\x40", True),
            (
                "other field, then an identifier, then 2 bytes",
                other + uid + b"\0\0",
                True,
            ),
            (
                "a 16-byte identifier field, then 2 bytes",
                field(UNIQUE_IDENTIFIER, bytes(12)) + b"\0\0",
                True,
            ),
            (
                "an identifier field running past the end",
                bytes.fromhex("01040040") + bytes(20),
                False,
            ),
            (
                "an identifier field of a length not a multiple of 4",
                bytes.fromhex("01040012") + bytes(14),
                False,
            ),
        ]
        for name, trailer, malformed in cases:
            data = clientHeader() + trailer
            with self.subTest(name=name):
                self.assertRaises(ValueError, nts.parseFields, data)
                if malformed:
                    self.assertRaises(MalformedNTSRequest, exchange.check, data)
                else:
                    self.assertIsNone(exchange.check(data))


class LongerCookieKeys(CookieKeys):
    """
    Server keys whose fresh cookies are 8 bytes longer than the cookies
    they open, as after a change of cookie format.
    """

    def seal(self, keys: SessionKeys) -> bytes:
        return super().seal(keys) + bytes(8)


class ReplyLengthTests(SynchronousTestCase):
    """
    The reply never grows past the request (RFC 8915 section 5.7): when
    the fresh cookies are longer than the one the request carried, fewer
    of them go in the reply.
    """

    def test_longerFreshCookies(self) -> None:
        """
        Fresh cookies of 108 bytes for a request's 100: one fewer than asked
        for fits (none for a request without placeholders), and the reply
        is as long as it can be within the request.
        """
        exchange = Exchange()
        keys = LongerCookieKeys(exchange.keys.keys, NOW)
        for placeholders, expected in [(0, 0), (1, 1), (3, 3), (7, 7)]:
            request = exchange.request(placeholders)
            with self.subTest(placeholders=placeholders):
                decision = checkRequest(request, keys, randomBytes=bytes)
                assert isinstance(decision, NTSRequest)
                self.assertEqual(decision.cookies, expected)
                header = buildReply(parseRequest(request), STATE, NOW, NOW)
                reply = decision.seal(header)
                self.assertLessEqual(len(reply), len(request))
                self.assertGreater(len(reply), len(request) - 112)
                cookies, ignored = readReply(reply, exchange.uid, exchange.s2c)
                self.assertEqual((len(cookies), ignored), (expected, 0))
                self.assertTrue(all(len(c) == 108 for c in cookies))


class SessionCiphersTests(SynchronousTestCase):
    """
    L{SessionCiphers} holds at most its size of session key pairs: full, it
    is emptied before a new pair enters.
    """

    def test_bounded(self) -> None:
        """
        A cache of size 2, given a third pair, holds that pair only.
        """
        sessions = [SessionKeys(bytes([n]) * 32, bytes([n + 1]) * 32) for n in range(4)]
        ciphers = SessionCiphers(size=2)
        first = ciphers.get(sessions[0])
        self.assertIs(ciphers.get(sessions[0]), first)
        ciphers.get(sessions[1])
        self.assertEqual((ciphers.hits, ciphers.misses), (1, 2))
        ciphers.get(sessions[2])  # full: emptied, then holds this pair only
        self.assertIsNot(ciphers.get(sessions[0]), first)
        self.assertEqual((ciphers.hits, ciphers.misses), (1, 4))
        ciphers.get(sessions[2])
        self.assertEqual((ciphers.hits, ciphers.misses), (2, 4))


class ReplyCookieTests(SynchronousTestCase):
    """
    L{readReply} keeps encrypted cookies of 12 to 256 bytes (a multiple of
    4, as every field body is), and refuses a reply whose encrypted fields
    do not parse.
    """

    def reply(self, exchange: Exchange, plaintext: bytes) -> bytes:
        associated = clientHeader(0x24) + field(UNIQUE_IDENTIFIER, exchange.uid)
        return associated + authenticatorField(
            exchange.s2c, associated, plaintext, bytes(16)
        )

    def test_lengths(self) -> None:
        """
        Cookies of 12, 100, 104 and 256 bytes are kept; one of 260 is left
        out and counted.
        """
        exchange = Exchange()
        for length, kept in [
            (12, True),
            (100, True),
            (104, True),
            (256, True),
            (260, False),
        ]:
            cookie = (bytes(range(256)) * 2)[:length]
            reply = self.reply(exchange, field(NTS_COOKIE, cookie))
            with self.subTest(length=length):
                self.assertEqual(
                    readReply(reply, exchange.uid, exchange.s2c),
                    ((cookie,), 0) if kept else ((), 1),
                )

    def test_badEncryptedFields(self) -> None:
        """
        Encrypted fields of a bad length, or followed by stray bytes: the
        reply is not authentic.
        """
        exchange = Exchange()
        for plaintext in (
            b"\x02\x04\x00\x05" + bytes(12),
            field(NTS_COOKIE, bytes(100)) + b"\0\0\0\0",
        ):
            reply = self.reply(exchange, plaintext)
            with self.subTest(plaintext=plaintext[:8].hex()):
                self.assertRaises(
                    ReplyNotAuthenticated, readReply, reply, exchange.uid, exchange.s2c
                )


class DecisionTests(SynchronousTestCase):
    """
    The decisions of L{checkRequest} cannot be changed once made.
    """

    def test_frozen(self) -> None:
        """
        Setting a field of an L{NTSRequest} or an L{NTSNak} fails.
        """
        exchange = Exchange()
        decision = exchange.check(exchange.request())
        assert isinstance(decision, NTSRequest)
        self.assertRaises(FrozenInstanceError, setattr, decision, "cookies", 8)
        nak = NTSNak(b"", "no key")
        self.assertRaises(FrozenInstanceError, setattr, nak, "reason", "")
