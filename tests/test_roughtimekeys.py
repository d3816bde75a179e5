"""
Tests for L{udptime.roughtimekeys}: key files in the formats of udptime,
roughly, Cloudflare, roughenough and OpenSSL; new key files; the online key
and its renewal.
"""

from __future__ import annotations

import base64
import os
import stat
import tempfile

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ec import SECP256R1, generate_private_key
from twisted.trial.unittest import SynchronousTestCase

from tests.roughtimesupport import NOW, publicBytes, seededKey
from udptime import roughtime as rt
from udptime.roughtimekeys import (
    KeyFileError,
    OnlineKey,
    loadLongTermKey,
    parseLongTermKey,
    publicKeyText,
    writeNewKey,
)

KEY = seededKey(5)
SEED = KEY.private_bytes_raw()
PUBLIC = publicBytes(KEY)


class ParseTests(SynchronousTestCase):
    def assertKey(self, data: bytes) -> None:
        self.assertEqual(publicBytes(parseLongTermKey(data)), PUBLIC)

    def test_base64Seed(self) -> None:
        """
        The base64 seed, as C{udptime-roughtime keygen} writes it and as
        C{roughly server run --private-key} takes it.
        """
        self.assertKey(base64.b64encode(SEED) + b"\n")
        self.assertKey(b"  " + base64.b64encode(SEED))

    def test_roughlyEnvironmentFile(self) -> None:
        """
        The C{.env} line C{roughly server keygen} writes.
        """
        self.assertKey(b"ROUGHLY_PRIVATE_KEY=" + base64.b64encode(SEED) + b"\n")
        self.assertKey(b'ROUGHLY_PRIVATE_KEY="' + base64.b64encode(SEED) + b'"')
        self.assertKey(b"KEY=" + base64.b64encode(SEED + PUBLIC))

    def test_goPrivateKey(self) -> None:
        """
        Go's 64-byte private key (seed, then public key), as Cloudflare's
        keygen writes it; a public half that does not match is refused.
        """
        self.assertKey(base64.b64encode(SEED + PUBLIC))
        wrong = base64.b64encode(SEED + publicBytes(seededKey(6)))
        self.assertRaises(KeyFileError, parseLongTermKey, wrong)

    def test_hexSeed(self) -> None:
        self.assertKey(SEED.hex().encode("ascii"))
        self.assertKey(SEED.hex().upper().encode("ascii") + b"\n")

    def test_pem(self) -> None:
        pem = KEY.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        self.assertKey(pem)

    def test_refused(self) -> None:
        ec = generate_private_key(SECP256R1()).private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        encrypted = KEY.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        )
        for data in (
            b"",
            b"not a key!",
            base64.b64encode(SEED[:31]),
            base64.b64encode(SEED) + b"\n" + base64.b64encode(SEED),
            ec,
            encrypted,
            b"-----BEGIN PRIVATE KEY-----\njunk\n-----END PRIVATE KEY-----\n",
        ):
            self.assertRaises(KeyFileError, parseLongTermKey, data)

    def test_publicKeyText(self) -> None:
        self.assertEqual(publicKeyText(KEY), base64.b64encode(PUBLIC).decode())


class FileTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.directory = tempfile.mkdtemp()
        self.path = os.path.join(self.directory, "roughtime.key")

    def tearDown(self) -> None:
        for name in os.listdir(self.directory):
            os.remove(os.path.join(self.directory, name))
        os.rmdir(self.directory)

    def test_writeNewKey(self) -> None:
        """
        A new key file holds the base64 seed, readable by its owner only.
        """
        key = writeNewKey(self.path)
        self.assertEqual(stat.S_IMODE(os.stat(self.path).st_mode), 0o600)
        with open(self.path, "rb") as f:
            self.assertEqual(
                f.read(), base64.b64encode(key.private_bytes_raw()) + b"\n"
            )
        self.assertEqual(publicBytes(loadLongTermKey(self.path)), publicBytes(key))

    def test_neverOverwrites(self) -> None:
        with open(self.path, "wb") as f:
            f.write(b"precious")
        self.assertRaises(FileExistsError, writeNewKey, self.path)
        with open(self.path, "rb") as f:
            self.assertEqual(f.read(), b"precious")

    def test_loadNamesFile(self) -> None:
        with open(self.path, "wb") as f:
            f.write(b"junk")
        error = self.assertRaises(KeyFileError, loadLongTermKey, self.path)
        self.assertIn(self.path, str(error))
        self.assertRaises(OSError, loadLongTermKey, self.path + ".missing")


class OnlineKeyTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.made: list[int] = []

        def generate() -> rt.Ed25519PrivateKey:
            self.made.append(len(self.made))
            return seededKey(100 + len(self.made))

        self.online = OnlineKey(KEY, validity=1000, generate=generate)

    def test_delegation(self) -> None:
        """
        The first delegation starts at the current second, lasts
        C{validity}, and is signed by the long-term key for every context.
        """
        delegation = self.online.current(NOW)
        self.assertEqual(delegation.minTime, int(NOW))
        self.assertEqual(delegation.maxTime, int(NOW) + 1000)
        self.assertEqual(delegation.longTermKey, PUBLIC)
        self.assertEqual(delegation.srv, rt.srvValue(PUBLIC))
        self.assertEqual(
            set(delegation.certificates),
            {
                rt.RFC_DELEGATION_CONTEXT,
                rt.DRAFT_DELEGATION_CONTEXT,
                rt.OLD_DELEGATION_CONTEXT,
            },
        )
        for context, certificate in delegation.certificates.items():
            fields = rt.decodeMessage(certificate)
            KEY.public_key().verify(fields[rt.SIG], context + fields[rt.DELE])

    def test_renewedAtHalfLife(self) -> None:
        first = self.online.current(NOW)
        self.assertIs(self.online.current(NOW + 499), first)
        second = self.online.current(NOW + 500)
        self.assertIsNot(second, first)
        self.assertNotEqual(second.publicKey, first.publicKey)
        self.assertEqual(second.minTime, int(NOW) + 500)
        self.assertEqual(self.online.delegations, 2)

    def test_clockWentBack(self) -> None:
        """
        A time before the delegation's MINT gets a new delegation covering
        it.
        """
        first = self.online.current(NOW)
        earlier = self.online.current(NOW - 3600)
        self.assertIsNot(earlier, first)
        self.assertTrue(earlier.covers(rt.midpointFor(NOW - 3600)))

    def test_alwaysCovers(self) -> None:
        for offset in (0.0, 0.49, 0.5, 0.99, 250.7, 499.5, 499.99, 2000.0):
            delegation = self.online.current(NOW + offset)
            self.assertTrue(delegation.covers(rt.midpointFor(NOW + offset)), offset)

    def test_badSettings(self) -> None:
        self.assertRaises(ValueError, OnlineKey, KEY, validity=10)
        self.assertRaises(ValueError, OnlineKey, KEY, renewal=1.0)
        self.assertRaises(ValueError, OnlineKey, KEY, renewal=0.0)
