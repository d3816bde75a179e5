"""
Boundary cases of L{udptime.ntscookie}: the limits of a key's id and
length and of a key set's settings, the default rotation, key ids either
side of 2^31 and at 2^32, a key file that changes a key's material under
the same id, and the generation that tells copies of the keys to update.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import FrozenInstanceError

from twisted.trial.unittest import SynchronousTestCase

from udptime.ntscookie import CookieKey, CookieKeys, SessionKeys

NOW = 1_800_000_000.0
WEEK = 7 * 86400.0


def fixedRandom(keyID: int) -> Callable[[int], bytes]:
    """
    A random source whose first 4 bytes are C{keyID} (the first key id
    L{CookieKeys.generate} draws) and whose other bytes count up.
    """
    drawn = [0]

    def randomBytes(count: int) -> bytes:
        drawn[0] += 1
        if drawn[0] == 1:
            return keyID.to_bytes(count, "big")
        return bytes((drawn[0] + i) % 256 for i in range(count))

    return randomBytes


class KeyLimitsTests(SynchronousTestCase):
    """
    A key id is 0 to 2^32 - 1; a key is 32 bytes (AES-SIV-CMAC-256), not
    the 48 or 64 of the larger AES-SIV variants.
    """

    def test_ids(self) -> None:
        """
        Ids at the limits and either side of 2^31 are kept; -1, -2
        and 2^32 are refused.
        """
        for keyID in (0, 1, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF):
            with self.subTest(keyID=keyID):
                self.assertEqual(CookieKey(keyID, bytes(32), NOW, NOW).id, keyID)
        for keyID in (-1, -2, 1 << 32):
            with self.subTest(keyID=keyID):
                self.assertRaises(ValueError, CookieKey, keyID, bytes(32), NOW, NOW)

    def test_lengths(self) -> None:
        """
        Keys of any length but 32 bytes are refused.
        """
        for length in (0, 16, 31, 33, 48, 64):
            with self.subTest(length=length):
                self.assertRaises(ValueError, CookieKey, 1, bytes(length), NOW, NOW)


class SettingsTests(SynchronousTestCase):
    """
    A key set rotates after any positive, finite time; by default after a
    week, as chrony does.
    """

    def test_rotation(self) -> None:
        """
        Rotation times down to a millisecond are kept; zero,
        negative, infinite and NaN ones are refused.
        """
        key = CookieKey(1, bytes(32), NOW, NOW)
        for rotation in (1e-3, 0.5, 1.0, WEEK):
            with self.subTest(rotation=rotation):
                self.assertEqual(
                    CookieKeys([key], NOW, rotation=rotation).rotation, rotation
                )
        for rotation in (0.0, -1.0, float("inf"), float("nan")):
            with self.subTest(rotation=rotation):
                self.assertRaises(ValueError, CookieKeys, [key], NOW, rotation=rotation)

    def test_defaultRotation(self) -> None:
        """
        New keys rotate after 604800 seconds by default.
        """
        keys = CookieKeys.generate(NOW)
        following = keys.next
        assert following is not None
        self.assertEqual(keys.rotation, 604800.0)
        self.assertEqual(following.activates, NOW + 604800.0)


class KeyIDTests(SynchronousTestCase):
    """
    New key ids follow the newest, wrapping from 2^32 - 1 to 0 (and not
    before: ids from 2^31 up are ids like others).
    """

    def test_generate(self) -> None:
        """
        The next key's id is the first's plus one, modulo 2^32.
        """
        for first, following in [
            (0x7FFFFFFF, 0x80000000),
            (0x80000000, 0x80000001),
            (0xFFFFFFFE, 0xFFFFFFFF),
            (0xFFFFFFFF, 0),
        ]:
            with self.subTest(first=first):
                keys = CookieKeys.generate(NOW, randomBytes=fixedRandom(first))
                self.assertEqual([k.id for k in keys.keys], [first, following])

    def test_rotateSkipsIDsInUse(self) -> None:
        """
        Rotating a key set holding id 2^31 makes ids 2^31 + 1 and
        2^31 + 2.
        """
        keys = CookieKeys([CookieKey(0x80000000, bytes(32), NOW, NOW)], NOW)
        keys.rotate(NOW + 1)
        self.assertEqual(
            [k.id for k in keys.keys], [0x80000000, 0x80000001, 0x80000002]
        )


class ReplaceTests(SynchronousTestCase):
    """
    Keys read again (from a key file, or from a supervisor): a key whose
    material changed under the same id is the new key, and the generation
    counts each change of the keys or of the current key by one.
    """

    def test_materialChanged(self) -> None:
        """
        A key of the same id and times but other material replaces
        the one held: it seals from then on.
        """
        old = CookieKey(9, bytes(32), NOW, NOW)
        keys = CookieKeys([old], NOW)
        session = SessionKeys(bytes(range(32)), bytes(range(32, 64)))
        cookie = keys.seal(session)
        generation = keys.generation
        new = CookieKey(9, bytes(range(32)), NOW, NOW)
        keys.replace([new], NOW)
        self.assertIs(keys.current, new)
        self.assertEqual(keys.generation, generation + 1)
        self.assertNotEqual(keys.seal(session)[20:], cookie[20:])

    def test_generation(self) -> None:
        """
        A key added, then the next key made current by time: one
        each; nothing changed: none.
        """
        keys = CookieKeys.generate(NOW, randomBytes=fixedRandom(5))
        generation = keys.generation
        following = keys.next
        assert following is not None
        later = CookieKey(7, bytes(32), NOW, NOW + 2 * WEEK)
        keys.replace([*keys.keys, later], NOW)
        self.assertEqual(keys.generation, generation + 1)
        self.assertIs(keys.refresh(NOW + 1), False)
        self.assertEqual(keys.generation, generation + 1)
        self.assertIs(keys.refresh(NOW + WEEK), True)
        self.assertIs(keys.current, following)
        self.assertEqual(keys.generation, generation + 2)
        self.assertIs(keys.refresh(NOW + WEEK), False)
        self.assertEqual(keys.generation, generation + 2)


class SessionKeysTests(SynchronousTestCase):
    """
    L{SessionKeys} cannot be changed once made.
    """

    def test_frozen(self) -> None:
        """
        Setting a key fails.
        """
        keys = SessionKeys(bytes(32), bytes(32))
        self.assertRaises(FrozenInstanceError, setattr, keys, "c2s", bytes(32))
