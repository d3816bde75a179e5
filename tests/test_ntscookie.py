"""
Tests for L{udptime.ntscookie}: cookies, server keys and their rotation.
"""

from __future__ import annotations

import os
import random

from twisted.trial.unittest import SynchronousTestCase

from udptime.ntscookie import (
    COOKIE_SIZE,
    DEFAULT_ROTATION,
    CookieKey,
    CookieKeys,
    InvalidCookie,
    SessionKeys,
    UnknownCookieKey,
)

NOW = 1_800_000_000.0
WEEK = DEFAULT_ROTATION


def sessionKeys() -> SessionKeys:
    return SessionKeys(os.urandom(32), os.urandom(32))


def seeded(seed: int = 1) -> CookieKeys:
    generator = random.Random(seed)
    return CookieKeys.generate(NOW, randomBytes=generator.randbytes)


class CookieTests(SynchronousTestCase):
    """
    Sealing and opening cookies.
    """

    def test_roundTrip(self) -> None:
        """
        A cookie opens to the keys sealed in it.
        """
        keys = CookieKeys.generate(NOW)
        session = sessionKeys()
        self.assertEqual(keys.open(keys.seal(session)), session)

    def test_layout(self) -> None:
        """
        A cookie is 100 bytes (a multiple of 4): the current key's id, a
        16-byte nonce, the sealed keys; two cookies of the same keys differ.
        """
        keys = CookieKeys.generate(NOW)
        session = sessionKeys()
        cookie = keys.seal(session)
        self.assertEqual(len(cookie), COOKIE_SIZE)
        self.assertEqual(COOKIE_SIZE, 100)
        self.assertEqual(int.from_bytes(cookie[:4], "big"), keys.current.id)
        self.assertNotEqual(cookie, keys.seal(session))
        self.assertNotIn(session.c2s, cookie)

    def test_tampered(self) -> None:
        """
        A cookie with any byte after the key id changed does not open.
        """
        keys = CookieKeys.generate(NOW)
        cookie = keys.seal(sessionKeys())
        for index in range(4, len(cookie)):
            damaged = bytearray(cookie)
            damaged[index] ^= 0x01
            with self.subTest(index=index):
                self.assertRaises(InvalidCookie, keys.open, bytes(damaged))

    def test_unknownKey(self) -> None:
        """
        A cookie under a key id this server does not have is refused as
        such; another server's cookie does not open.
        """
        keys = CookieKeys.generate(NOW)
        cookie = keys.seal(sessionKeys())
        unknown = (keys.current.id + 100).to_bytes(4, "big") + cookie[4:]
        self.assertRaises(UnknownCookieKey, keys.open, unknown)
        other = CookieKeys([CookieKey(keys.current.id, os.urandom(32), NOW, NOW)], NOW)
        self.assertRaises(InvalidCookie, other.open, cookie)

    def test_length(self) -> None:
        """
        A cookie of another length is refused.
        """
        keys = CookieKeys.generate(NOW)
        cookie = keys.seal(sessionKeys())
        for bad in (b"", cookie[:-4], cookie + b"\0\0\0\0"):
            self.assertRaises(InvalidCookie, keys.open, bad)

    def test_keyChecks(self) -> None:
        """
        A key needs 32 bytes and a 32-bit id; a key set needs keys with
        distinct ids, and sane settings; a key's repr hides its secret.
        """
        self.assertRaises(ValueError, CookieKey, 1, bytes(16), NOW, NOW)
        self.assertRaises(ValueError, CookieKey, 1 << 32, bytes(32), NOW, NOW)
        key = CookieKey(7, bytes(range(32)), NOW, NOW)
        self.assertNotIn(bytes(range(32)).hex(), repr(key))
        self.assertIn("00000007", repr(key))
        self.assertRaises(ValueError, CookieKeys, [], NOW)
        self.assertRaises(ValueError, CookieKeys, [key, key], NOW)
        self.assertRaises(ValueError, CookieKeys, [key], NOW, previous=-1)
        self.assertRaises(ValueError, CookieKeys, [key], NOW, rotation=0)


class RotationTests(SynchronousTestCase):
    """
    Current, next and previous keys; rotation.
    """

    def test_generate(self) -> None:
        """
        New keys: a current key active now, a next key active a rotation
        later, with the following id.
        """
        keys = CookieKeys.generate(NOW)
        following = keys.next
        assert following is not None
        self.assertEqual(keys.current.activates, NOW)
        self.assertEqual(following.activates, NOW + WEEK)
        self.assertEqual(following.id, (keys.current.id + 1) % (1 << 32))
        self.assertEqual(len(keys.keys), 2)

    def test_rotate(self) -> None:
        """
        Rotating makes the next key current and adds a new next key; after
        enough rotations two previous keys are kept, and cookies sealed
        with older keys no longer open.
        """
        keys = CookieKeys.generate(NOW)
        session = sessionKeys()
        cookies = [keys.seal(session)]
        ids = [keys.current.id]
        for week in range(1, 5):
            following = keys.next
            assert following is not None
            keys.rotate(NOW + week * WEEK)
            self.assertEqual(keys.current.id, following.id)
            cookies.append(keys.seal(session))
            ids.append(keys.current.id)
        self.assertEqual(len(keys.keys), 4)
        self.assertEqual([k.id for k in keys.keys[:3]], ids[-3:])
        for cookie in cookies[-3:]:
            self.assertEqual(keys.open(cookie), session)
        for cookie in cookies[:-3]:
            self.assertRaises(UnknownCookieKey, keys.open, cookie)

    def test_rotateIfDue(self) -> None:
        """
        Rotation is due when the next key's activation time comes.
        """
        keys = CookieKeys.generate(NOW)
        generation = keys.generation
        self.assertFalse(keys.rotateIfDue(NOW + WEEK - 1))
        self.assertEqual(keys.generation, generation)
        self.assertTrue(keys.rotateIfDue(NOW + WEEK))
        self.assertGreater(keys.generation, generation)
        following = keys.next
        assert following is not None
        self.assertEqual(following.activates, NOW + 2 * WEEK)

    def test_rotateEarly(self) -> None:
        """
        A rotation before the next key's time (the operator's) makes it
        current now; the following next key comes a rotation after that.
        """
        keys = CookieKeys.generate(NOW)
        keys.rotate(NOW + 60)
        self.assertEqual(keys.current.activates, NOW + 60)
        following = keys.next
        assert following is not None
        self.assertEqual(following.activates, NOW + 60 + WEEK)

    def test_previousSetting(self) -> None:
        """
        The number of previous keys kept is a setting.
        """
        keys = CookieKeys.generate(NOW, previous=0)
        first = keys.seal(sessionKeys())
        keys.rotate(NOW + 1)
        self.assertEqual(len(keys.keys), 2)
        self.assertRaises(UnknownCookieKey, keys.open, first)

    def test_refresh(self) -> None:
        """
        A process that does not rotate picks the current key by time: the
        next key becomes current at its activation time.
        """
        keys = CookieKeys.generate(NOW)
        following = keys.next
        assert following is not None
        self.assertFalse(keys.refresh(NOW + WEEK - 1))
        self.assertTrue(keys.refresh(NOW + WEEK))
        self.assertIs(keys.current, following)
        self.assertIsNone(keys.next)

    def test_clockBehind(self) -> None:
        """
        With no key active yet (a clock behind the file's), the earliest
        key seals.
        """
        first = CookieKey(1, bytes(32), NOW, NOW + 100)
        second = CookieKey(2, bytes(range(32)), NOW, NOW + 200)
        keys = CookieKeys([second, first], NOW)
        self.assertIs(keys.current, first)

    def test_rotateWithoutNext(self) -> None:
        """
        A key set without a next key (as a reader has once the next key is
        current) rotates to a new key.
        """
        keys = CookieKeys([CookieKey(5, bytes(32), NOW, NOW)], NOW)
        self.assertFalse(keys.rotateIfDue(NOW + WEEK - 1))
        self.assertTrue(keys.rotateIfDue(NOW + WEEK))
        self.assertEqual([k.id for k in keys.keys], [5, 6, 7])
        self.assertEqual(keys.current.id, 6)

    def test_idsWrap(self) -> None:
        """
        Key ids wrap at 2^32, skipping ids in use.
        """
        keys = CookieKeys([CookieKey(0xFFFFFFFF, bytes(32), NOW, NOW)], NOW)
        keys.rotate(NOW + 1)
        self.assertEqual([k.id for k in keys.keys], [0xFFFFFFFF, 0, 1])

    def test_replaceKeepsObjects(self) -> None:
        """
        Replacing the keys with the same keys keeps their objects (and
        their AES-SIV instances) and the generation.
        """
        keys = seeded()
        copies = [
            CookieKey(k.id, k.material, k.created, k.activates) for k in keys.keys
        ]
        before = keys.keys
        generation = keys.generation
        keys.replace(copies, NOW)
        self.assertEqual([id(k) for k in keys.keys], [id(k) for k in before])
        self.assertEqual(keys.generation, generation)

    def test_deterministic(self) -> None:
        """
        Keys come from the random source given.
        """
        self.assertEqual(
            [k.material for k in seeded(3).keys], [k.material for k in seeded(3).keys]
        )
