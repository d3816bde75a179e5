"""
NTS cookies and the server keys that seal them (sans I/O).

A cookie carries a client's two session keys, sealed under a server key
that only the NTS servers know, so that an NTP server needs no per-client
state: the client sends a cookie with each request, and the server opens
it to find the keys that authenticate the request and its reply
(RFC 8915 section 6).

Cookie format (L{COOKIE_SIZE} = 100 bytes, a multiple of 4 as chrony
requires of cookies; the layout chrony and other servers use)::

    key id (4, big-endian) | nonce (16) | AES-SIV(C2S key | S2C key) (64 + 16)

The sealing is AEAD_AES_SIV_CMAC_256 (RFC 5297) under the server key
named by the key id, with the nonce as the only associated data component
(the RFC 5297 nonce, last in the vector).  The AEAD algorithm of the
session keys is not stored: it is AEAD_AES_SIV_CMAC_256, the only one
udptime negotiates, whose keys are 32 bytes each; a server that adds an
algorithm tells them apart by the plaintext's length, as chrony does.

L{CookieKeys} holds the server keys:

  - the I{current} key seals new cookies;
  - the I{previous} keys (by default 2, as chrony keeps) still open
    cookies sealed before a rotation, so a client's cookies outlive two
    rotations (with weekly rotation, 2 to 3 weeks: a client that asks
    at least that often never needs a new key exchange);
  - the I{next} key is known before it seals anything: it is in the key
    file a whole rotation period before it becomes current, so that every
    server sharing the file can open cookies sealed with it as soon as any
    of them starts using it.

Each key has an id, a creation time and an activation time (when it
becomes current); L{CookieKeys.refresh} makes current the latest key
whose activation time has passed, L{CookieKeys.rotate} makes the next key
current now and adds a new next key, dropping the oldest.  The key file
and the timers that drive this are in L{udptime.ntskeys}.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESSIV

KEY_SIZE: Final = 32
"""Bytes of a server key (AES-SIV-CMAC-256: two AES-128 keys)."""

SESSION_KEY_SIZE: Final = 32
"""Bytes of a C2S or S2C session key (AES-SIV-CMAC-256)."""

NONCE_SIZE: Final = 16
"""Bytes of a cookie's nonce."""

TAG_SIZE: Final = 16
"""Bytes of an AES-SIV tag (the synthetic IV)."""

KEY_ID_SIZE: Final = 4
"""Bytes of a cookie's key id."""

COOKIE_SIZE: Final = KEY_ID_SIZE + NONCE_SIZE + 2 * SESSION_KEY_SIZE + TAG_SIZE
"""Bytes of a cookie: 100."""

DEFAULT_ROTATION: Final = 7 * 86400.0
"""Seconds between key rotations (chrony's default, a week)."""

DEFAULT_PREVIOUS: Final = 2
"""Previous keys kept to open older cookies (chrony keeps 2)."""

_KEY_ID: Final = struct.Struct("!I")


@dataclass(frozen=True, slots=True)
class SessionKeys:
    """
    A client's two session keys, from the TLS exporter of its NTS-KE
    session.

    @ivar c2s: the client-to-server key: it authenticates requests.
    @ivar s2c: the server-to-client key: it authenticates replies and
        encrypts the new cookies in them.
    """

    c2s: bytes
    s2c: bytes


class CookieRejected(ValueError):
    """
    A cookie this server cannot open: the NTP server answers with an NTS
    negative acknowledgement, so that the client makes a new key exchange.
    """


class UnknownCookieKey(CookieRejected):
    """
    The cookie names a key this server does not have (rotated out long ago,
    or never ours).
    """


class InvalidCookie(CookieRejected):
    """
    The cookie has the wrong length, or its seal does not open.
    """


class CookieKey:
    """
    One server key.

    The C{AESSIV} object is built once, with the key (building one costs
    about twice as much as sealing a cookie).

    @ivar id: the key id, 0 to 2^32 - 1, carried in every cookie it seals.
    @ivar material: the L{KEY_SIZE} secret bytes.
    @ivar created: Unix time the key was made.
    @ivar activates: Unix time from which it seals new cookies.
    @ivar prefix: the key id as it starts a cookie (4 bytes).
    @ivar siv: the AES-SIV instance of the key.
    """

    __slots__ = ("activates", "created", "id", "material", "prefix", "siv")

    def __init__(
        self, keyID: int, material: bytes, created: float, activates: float
    ) -> None:
        """
        @raise ValueError: the id or the key length is out of range.
        """
        if not 0 <= keyID < 1 << 32:
            raise ValueError(f"a key id is a 32-bit number, not {keyID}")
        if len(material) != KEY_SIZE:
            raise ValueError(f"a cookie key has {KEY_SIZE} bytes, not {len(material)}")
        self.id = keyID
        self.material = bytes(material)
        self.created = created
        self.activates = activates
        self.prefix = _KEY_ID.pack(keyID)
        self.siv = AESSIV(self.material)

    def __repr__(self) -> str:
        # Never the key material.
        return (
            f"<CookieKey {self.id:08x} created={self.created:.0f}"
            f" activates={self.activates:.0f}>"
        )

    def sameKey(self, other: CookieKey) -> bool:
        """
        Whether C{other} is this key: the same id and material.
        """
        return self.id == other.id and self.material == other.material


class CookieKeys:
    """
    The server keys of a set of NTS servers: seal and open cookies; rotate.

    @ivar current: the key that seals new cookies.
    @ivar previous: how many keys older than the current one are kept by
        L{rotate}.
    @ivar rotation: seconds between rotations: a new next key activates
        this long after it is made.
    @ivar generation: incremented whenever the set of keys or the current
        key changes, for those that copy the keys elsewhere (a key file,
        worker processes).
    """

    def __init__(
        self,
        keys: Iterable[CookieKey],
        now: float,
        *,
        previous: int = DEFAULT_PREVIOUS,
        rotation: float = DEFAULT_ROTATION,
        randomBytes: Callable[[int], bytes] = os.urandom,
    ) -> None:
        """
        @param keys: at least one key, with distinct ids.
        @param now: the current Unix time, which picks the current key.
        @param previous: previous keys kept by L{rotate} (at least 0).
        @param rotation: seconds between rotations (positive).
        @param randomBytes: the source of nonces and new keys.
        @raise ValueError: no keys, two keys with one id, or a parameter out
            of range.
        """
        if previous < 0:
            raise ValueError(f"previous must not be negative, not {previous}")
        if not 0 < rotation < float("inf"):
            raise ValueError(f"rotation must be a positive time, not {rotation}")
        self.previous = previous
        self.rotation = rotation
        self.randomBytes = randomBytes
        self.generation = 0
        self._byID: dict[int, CookieKey] = {}
        self._ordered: tuple[CookieKey, ...] = ()
        self.current: CookieKey
        self.replace(keys, now)

    @classmethod
    def generate(
        cls,
        now: float,
        *,
        previous: int = DEFAULT_PREVIOUS,
        rotation: float = DEFAULT_ROTATION,
        randomBytes: Callable[[int], bytes] = os.urandom,
    ) -> CookieKeys:
        """
        New random keys: a current key, active from C{now}, and the next
        key, active one rotation later.
        """
        first = _KEY_ID.unpack(randomBytes(KEY_ID_SIZE))[0]
        current = CookieKey(first, randomBytes(KEY_SIZE), now, now)
        following = CookieKey(
            (first + 1) % (1 << 32), randomBytes(KEY_SIZE), now, now + rotation
        )
        return cls(
            [current, following],
            now,
            previous=previous,
            rotation=rotation,
            randomBytes=randomBytes,
        )

    @property
    def keys(self) -> tuple[CookieKey, ...]:
        """
        Every key held, by activation time (ties by creation time, then id).
        """
        return self._ordered

    @property
    def next(self) -> CookieKey | None:
        """
        The key that becomes current next (the earliest to activate after
        the current key), or L{None}.
        """
        index = self._ordered.index(self.current)
        if index + 1 < len(self._ordered):
            return self._ordered[index + 1]
        return None

    def replace(self, keys: Iterable[CookieKey], now: float) -> None:
        """
        Hold C{keys} instead of the keys held (after reading a key file, or
        keys handed down by a supervisor), with the current key picked for
        C{now}.  Keys already held, by id and material, keep their objects.

        @raise ValueError: no keys, or two keys with one id.
        """
        byID: dict[int, CookieKey] = {}
        for key in keys:
            if key.id in byID:
                raise ValueError(f"two keys have id {key.id:08x}")
            known = self._byID.get(key.id)
            if (
                known is not None
                and known.sameKey(key)
                and (known.created, known.activates) == (key.created, key.activates)
            ):
                key = known
            byID[key.id] = key
        if not byID:
            raise ValueError("at least one key is needed")
        changed = set(byID.values()) != set(self._byID.values())
        self._byID = byID
        self._ordered = tuple(
            sorted(byID.values(), key=lambda k: (k.activates, k.created, k.id))
        )
        self.current = self._ordered[0]
        if changed:
            self.generation += 1
        self.refresh(now)

    def refresh(self, now: float) -> bool:
        """
        Make current the latest key whose activation time is C{now} or
        earlier (the earliest key when none is active yet, as on a clock
        that is behind); whether the current key changed.
        """
        chosen = self._ordered[0]
        for key in self._ordered:
            if key.activates <= now:
                chosen = key
            else:
                break
        if chosen is self.current:
            return False
        self.current = chosen
        self.generation += 1
        return True

    def rotate(self, now: float) -> None:
        """
        Rotate now: the next key becomes current (a new key when there is
        none), a new next key is made to activate one rotation later, and
        only L{previous} keys older than the new current key are kept.
        """
        following = self.next
        if following is None:
            following = self._newKey(now, now)
        else:
            following = CookieKey(
                following.id, following.material, following.created, now
            )
        current = self.current
        older = [k for k in self._ordered if k.activates <= current.activates]
        kept = older[-self.previous :] if self.previous else []
        taken = {key.id for key in kept} | {following.id}
        upcoming = self._newKey(now, now + self.rotation, taken)
        self.replace([*kept, following, upcoming], now)

    def rotateIfDue(self, now: float) -> bool:
        """
        Rotate when the next key's activation time has come (or there is no
        next key and the current key is one rotation old); whether it did.
        """
        following = self.next
        due = (
            following.activates <= now
            if following is not None
            else self.current.activates + self.rotation <= now
        )
        if due:
            self.rotate(now)
        return due

    def _newKey(
        self, created: float, activates: float, taken: Iterable[int] = ()
    ) -> CookieKey:
        """
        A new random key whose id follows the newest id in use (so that the
        ids in a key file read in order), skipping ids in C{taken}.
        """
        used = set(self._byID) | set(taken)
        newest = max(self._ordered, key=lambda k: (k.activates, k.created, k.id))
        keyID = max([newest.id, *taken]) if taken else newest.id
        while keyID in used:
            keyID = (keyID + 1) % (1 << 32)
        return CookieKey(keyID, self.randomBytes(KEY_SIZE), created, activates)

    def seal(self, keys: SessionKeys) -> bytes:
        """
        A new cookie holding C{keys}, sealed with the current key.
        """
        current = self.current
        nonce = self.randomBytes(NONCE_SIZE)
        return (
            current.prefix + nonce + current.siv.encrypt(keys.c2s + keys.s2c, [nonce])
        )

    def open(self, cookie: bytes) -> SessionKeys:
        """
        The session keys a cookie holds.

        @raise UnknownCookieKey: the cookie names no key held.
        @raise InvalidCookie: the cookie has the wrong length, or does not
            open (forged, or damaged).
        """
        if len(cookie) != COOKIE_SIZE:
            raise InvalidCookie(f"a cookie has {COOKIE_SIZE} bytes, not {len(cookie)}")
        (keyID,) = _KEY_ID.unpack_from(cookie)
        key = self._byID.get(keyID)
        if key is None:
            raise UnknownCookieKey(f"no key {keyID:08x}")
        nonce = cookie[KEY_ID_SIZE : KEY_ID_SIZE + NONCE_SIZE]
        try:
            plain = key.siv.decrypt(cookie[KEY_ID_SIZE + NONCE_SIZE :], [nonce])
        except InvalidTag:
            raise InvalidCookie(
                f"a cookie under key {keyID:08x} does not open"
            ) from None
        return SessionKeys(plain[:SESSION_KEY_SIZE], plain[SESSION_KEY_SIZE:])
