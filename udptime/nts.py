"""
Network Time Security for NTPv4 (RFC 8915 section 5), sans I/O.

NTS authenticates NTP client/server exchanges with the session keys of an
NTS-KE session (L{udptime.ntske}), which the client sends back to the server
sealed in a cookie (L{udptime.ntscookie}).  Four NTP extension fields
(RFC 7822: 16-bit type, 16-bit length of at least 16 and a multiple of 4,
body padded with zeros):

  - L{UNIQUE_IDENTIFIER} (0x0104): at least 32 random bytes from the
    client, echoed by the server in the clear; it matches replies to
    requests and defeats replays;
  - L{NTS_COOKIE} (0x0204): one cookie, in the clear in a request; fresh
    cookies travel encrypted inside the reply's authenticator;
  - L{COOKIE_PLACEHOLDER} (0x0304): asks for one more fresh cookie, its body
    as long as the cookie (zeros), so that the reply never grows past the
    request (section 5.5);
  - L{AUTHENTICATOR} (0x0404), the last field: nonce length (16 bits),
    ciphertext length (16 bits), the nonce and the ciphertext, each padded to
    4 bytes, then possibly more zero padding.  The ciphertext is AES-SIV
    (RFC 5297) over the encrypted extension fields, with the packet up to
    the authenticator as associated data and the nonce as the last
    component; the request's is sealed with the C2S key, the reply's with
    the S2C key.

The server side, for the NTP server's decision about each request:

  1. L{checkRequest} with the request bytes and the L{CookieKeys}: L{None}
     when the request has no NTS field (the plain NTP path answers it);
     an L{NTSNak} when its cookie cannot be opened (unknown key id, or the
     seal does not open): L{NTSNak.reply} is the NTS NAK, a Kiss-o'-Death
     C{NTSN} that echoes the unique identifier and has no authenticator;
     an L{NTSRequest} when it is authentic.  It raises
     L{MalformedNTSRequest} (drop: malformed NTS fields, or NTS in anything
     but a version-4 client request) and L{NTSAuthenticationFailed} (drop,
     and count: the cookie opened but the authenticator does not verify).
     RFC 8915 section 5.7 suggests a NAK for the latter too, and chrony
     sends one; udptime drops it instead: the client's cookie is good, so
     a NAK would only make a client whose request was damaged or forged on
     the way throw its cookies away and run a new key exchange.
  2. The caller builds the plain 48-byte reply header as for any request
     (L{udptime.ntp.buildReply}, with its clock), then
     L{NTSRequest.seal}C{(header)} is the reply: the header, the unique
     identifier echoed, and the authenticator holding the fresh cookies
     (one for the cookie used and one per placeholder of the cookie's
     length, at most L{MAX_COOKIES}, and never more than keeps the reply
     within the request's length).

Order of work and the transmit timestamp: the authenticator covers the
header, so the header, transmit timestamp included, must be final before
L{NTSRequest.seal} runs.  Everything that can be done before reading the
transmit time is done in L{checkRequest} (opening the cookie, verifying
the request, sealing the fresh cookies, making the nonce); what remains
after it is one AES-SIV encryption (about 2 microseconds on the machines
udptime is measured on, see C{bench/nts.py}), so a reply leaves that much
after its transmit timestamp, which is part of the reply's processing
time in the client's delay.

The client side: L{buildClientRequest} and L{readReply}, the pure
functions under L{udptime.ntsclient}.

Cost: the server keys' AES-SIV objects are built once (L{CookieKey}); the
session keys' are built per request from the cookie, or taken from a
bounded L{SessionCiphers} cache, keyed by the session keys, which a client
that keeps using the cookies of one key exchange hits on every request.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESSIV

from udptime.ntp import (
    HEADER_SIZE,
    MIN_EXTENSION_FIELD,
    MalformedPacket,
    NotServed,
    buildKissOfDeath,
)
from udptime.ntscookie import CookieKeys, CookieRejected, SessionKeys

UNIQUE_IDENTIFIER: Final = 0x0104
"""Extension field type: NTS Unique Identifier."""

NTS_COOKIE: Final = 0x0204
"""Extension field type: NTS Cookie."""

COOKIE_PLACEHOLDER: Final = 0x0304
"""Extension field type: NTS Cookie Placeholder."""

AUTHENTICATOR: Final = 0x0404
"""Extension field type: NTS Authenticator and Encrypted Extension Fields."""

NTS_FIELDS: Final = frozenset(
    {UNIQUE_IDENTIFIER, NTS_COOKIE, COOKIE_PLACEHOLDER, AUTHENTICATOR}
)
"""The extension field types that make a request an NTS request."""

MIN_UNIQUE_IDENTIFIER: Final = 32
"""The shortest unique identifier body (RFC 8915 section 5.3)."""

NONCE_SIZE: Final = 16
"""Bytes of the nonces udptime makes, and the least room an authenticator
must leave for a nonce (RFC 8915 section 5.6: min(16, N_MAX) for
AES-SIV-CMAC-256, whose nonces may be of any length)."""

TAG_SIZE: Final = 16
"""Bytes of an AES-SIV tag."""

MAX_COOKIES: Final = 8
"""Fresh cookies in one reply, at most: the one used and 7 more."""

NAK_CODE: Final = b"NTSN"
"""The kiss code of an NTS negative acknowledgement."""

_FIELD: Final = struct.Struct("!HH")
_AUTH_HEADER: Final = struct.Struct("!HH")
_CLIENT_MODE_V4: Final = 0x23
"""Version 4, mode 3, in the low six bits of a request's first byte."""


class MalformedNTSRequest(MalformedPacket):
    """
    A request with NTS extension fields that are not a well-formed NTS
    request: dropped.
    """


class NTSAuthenticationFailed(NotServed):
    """
    A request whose cookie opened but whose authenticator does not verify
    with the cookie's C2S key: dropped, and counted.  A well-formed request
    the server does not answer, as L{NotServed} says.
    """


def _padded(length: int) -> int:
    return (length + 3) & ~3


def extensionField(fieldType: int, body: bytes) -> bytes:
    """
    An NTP extension field: the body padded with zeros to a multiple of 4
    bytes, and to at least the 16 bytes of RFC 7822.
    """
    size = max(_padded(len(body)) + _FIELD.size, MIN_EXTENSION_FIELD)
    if size > 0xFFFF:
        raise ValueError(f"an extension field body of {len(body)} bytes is too long")
    return _FIELD.pack(fieldType, size) + body + bytes(size - _FIELD.size - len(body))


def parseFields(data: bytes, start: int = HEADER_SIZE) -> list[tuple[int, int, int]]:
    """
    The extension fields of C{data} from offset C{start} to its end, as
    C{(type, body start, end)} triples.

    @raise ValueError: the bytes are not a sequence of extension fields
        (a length under 16, not a multiple of 4, or past the end).
    """
    fields = []
    size = len(data)
    position = start
    while position < size:
        if size - position < _FIELD.size:
            raise ValueError(f"{size - position} stray bytes after extension fields")
        fieldType, length = _FIELD.unpack_from(data, position)
        if length < MIN_EXTENSION_FIELD or length % 4 or position + length > size:
            raise ValueError(
                f"extension field of type {fieldType:#06x} has bad length {length}"
            )
        fields.append((fieldType, position + _FIELD.size, position + length))
        position += length
    return fields


def _authenticatorBody(body: bytes) -> tuple[bytes, bytes]:
    """
    The nonce and the ciphertext of an authenticator field's body.

    @raise ValueError: the lengths do not fit the body, or leave too little
        room for the nonce (RFC 8915 section 5.6).
    """
    if len(body) < _AUTH_HEADER.size:
        raise ValueError("an authenticator is too short")
    nonceLength, cipherLength = _AUTH_HEADER.unpack_from(body)
    nonceEnd = _AUTH_HEADER.size + _padded(nonceLength)
    if nonceLength < 1 or cipherLength < TAG_SIZE:
        raise ValueError(
            f"an authenticator with a {nonceLength}-byte nonce and"
            f" {cipherLength} bytes of ciphertext"
        )
    if nonceEnd + _padded(cipherLength) > len(body) or _AUTH_HEADER.size + max(
        _padded(nonceLength), NONCE_SIZE
    ) + _padded(cipherLength) > len(body):
        raise ValueError("an authenticator's nonce and ciphertext do not fit it")
    return (
        body[_AUTH_HEADER.size : _AUTH_HEADER.size + nonceLength],
        body[nonceEnd : nonceEnd + cipherLength],
    )


def authenticatorField(
    siv: AESSIV, associated: bytes, plaintext: bytes, nonce: bytes
) -> bytes:
    """
    An authenticator field sealing C{plaintext} (encrypted extension
    fields) with C{siv} for a packet whose bytes before the field are
    C{associated}.
    """
    ciphertext = siv.encrypt(plaintext, [associated, nonce])
    body = (
        _AUTH_HEADER.pack(len(nonce), len(ciphertext))
        + nonce
        + bytes(_padded(len(nonce)) - len(nonce))
        + ciphertext
    )
    return extensionField(AUTHENTICATOR, body)


def _authenticatorSize(plaintextLength: int) -> int:
    """
    Bytes of an authenticator field of a 16-byte nonce over
    C{plaintextLength} bytes (a multiple of 4).
    """
    return max(
        _FIELD.size + _AUTH_HEADER.size + NONCE_SIZE + TAG_SIZE + plaintextLength,
        MIN_EXTENSION_FIELD,
    )


class SessionCiphers:
    """
    A bounded cache of the AES-SIV objects of session keys, so that a
    client that keeps sending the cookies of one key exchange does not cost
    two AES-SIV objects per request.  Only keys from cookies that opened
    enter it; it is emptied when full.

    @ivar size: the most session key pairs held.
    @ivar hits: lookups answered from the cache.
    @ivar misses: lookups that built new objects.
    """

    def __init__(self, size: int = 4096) -> None:
        self.size = size
        self.hits = 0
        self.misses = 0
        self._ciphers: dict[bytes, tuple[AESSIV, AESSIV]] = {}

    def get(self, keys: SessionKeys) -> tuple[AESSIV, AESSIV]:
        """
        The C2S and S2C AES-SIV objects of C{keys}.
        """
        name = keys.c2s + keys.s2c
        ciphers = self._ciphers.get(name)
        if ciphers is not None:
            self.hits += 1
            return ciphers
        self.misses += 1
        if len(self._ciphers) >= self.size:
            self._ciphers.clear()
        ciphers = self._ciphers[name] = (AESSIV(keys.c2s), AESSIV(keys.s2c))
        return ciphers


def sessionCiphers(keys: SessionKeys) -> tuple[AESSIV, AESSIV]:
    """
    New C2S and S2C AES-SIV objects of C{keys} (no cache).
    """
    return AESSIV(keys.c2s), AESSIV(keys.s2c)


@dataclass(frozen=True, slots=True)
class NTSNak:
    """
    A request whose cookie the server cannot open: it is answered with an
    NTS NAK.

    @ivar uniqueIdentifier: the request's unique identifier field, whole.
    @ivar reason: why the cookie was rejected, for logs.
    """

    uniqueIdentifier: bytes
    reason: str

    def reply(self, request: bytes, sourcePort: int | None = None) -> bytes | None:
        """
        The NTS NAK answering C{request}: a Kiss-o'-Death C{NTSN} that
        reveals nothing of the server's clock (L{buildKissOfDeath}), with
        the unique identifier echoed and no authenticator; or L{None} when
        C{request} is not a client request to answer.  It is never longer
        than the request.
        """
        kiss = buildKissOfDeath(request, NAK_CODE, sourcePort=sourcePort)
        if kiss is None:
            return None
        return kiss + self.uniqueIdentifier


@dataclass(frozen=True, slots=True)
class NTSRequest:
    """
    An authentic NTS request, with its reply prepared but for the header.

    @ivar uniqueIdentifier: the request's unique identifier field, whole,
        echoed in the reply.
    @ivar plaintext: the encrypted extension fields of the reply: the fresh
        cookies.
    @ivar cookies: how many fresh cookies the reply carries.
    @ivar nonce: the reply authenticator's nonce.
    @ivar s2c: the AES-SIV object of the request's S2C key.
    @ivar keys: the request's session keys.
    """

    uniqueIdentifier: bytes
    plaintext: bytes
    cookies: int
    nonce: bytes
    s2c: AESSIV
    keys: SessionKeys

    def seal(self, header: bytes) -> bytes:
        """
        The authenticated reply with the 48-byte reply header C{header},
        which must be final (its transmit timestamp written): the
        authenticator covers it.
        """
        associated = header + self.uniqueIdentifier
        return associated + authenticatorField(
            self.s2c, associated, self.plaintext, self.nonce
        )


def _leadingFields(data: bytes) -> list[tuple[int, int, int]]:
    fields = []
    position = HEADER_SIZE
    while len(data) - position >= _FIELD.size:
        fieldType, length = _FIELD.unpack_from(data, position)
        if length < MIN_EXTENSION_FIELD or length % 4 or position + length > len(data):
            break
        fields.append((fieldType, position + _FIELD.size, position + length))
        position += length
    return fields


def checkRequest(
    data: bytes,
    keys: CookieKeys,
    ciphers: SessionCiphers | None = None,
    randomBytes: Callable[[int], bytes] = os.urandom,
) -> NTSRequest | NTSNak | None:
    """
    The NTP server's NTS decision about the request C{data}.

    Call it after L{udptime.ntp.parseRequest} accepted C{data} (it checks the
    header); it is safe with any bytes regardless.

    @param keys: the server keys that open cookies and seal fresh ones.
    @param ciphers: a cache of session AES-SIV objects, or L{None} to build
        them for each request.
    @param randomBytes: the source of the reply's nonce (the fresh cookies'
        nonces come from C{keys}).
    @return: L{None} for a request without NTS extension fields (the plain
        NTP path answers it); an L{NTSNak} for a request whose cookie cannot
        be opened; an L{NTSRequest} for an authentic request.
    @raise MalformedNTSRequest: NTS extension fields that do not make a
        well-formed NTS request, or NTS in anything but a version-4 client
        request: drop.
    @raise NTSAuthenticationFailed: the cookie opened, the authenticator
        does not verify: drop.
    """
    if len(data) <= HEADER_SIZE:
        return None
    try:
        fields = parseFields(data)
    except ValueError as e:
        if not any(t in NTS_FIELDS for t, _, _ in _leadingFields(data)):
            return None
        raise MalformedNTSRequest(str(e)) from None
    uniqueIdentifier: tuple[int, int] | None = None
    cookie: bytes | None = None
    placeholders: list[int] = []
    authenticator: tuple[int, int, int] | None = None
    nts = False
    for fieldType, bodyStart, end in fields:
        if fieldType not in NTS_FIELDS:
            continue
        nts = True
        if authenticator is not None:
            raise MalformedNTSRequest("the NTS authenticator is not the last field")
        if fieldType == UNIQUE_IDENTIFIER:
            if uniqueIdentifier is not None:
                raise MalformedNTSRequest("two NTS unique identifiers")
            uniqueIdentifier = (bodyStart - _FIELD.size, end)
        elif fieldType == NTS_COOKIE:
            if cookie is not None:
                raise MalformedNTSRequest("two NTS cookies")
            cookie = data[bodyStart:end]
        elif fieldType == COOKIE_PLACEHOLDER:
            placeholders.append(end - bodyStart)
        else:
            authenticator = (bodyStart - _FIELD.size, bodyStart, end)
    if not nts:
        return None
    if data[0] & 0x3F != _CLIENT_MODE_V4:
        raise MalformedNTSRequest("NTS is served in version-4 client requests only")
    if uniqueIdentifier is None or cookie is None or authenticator is None:
        raise MalformedNTSRequest(
            "an NTS request needs a unique identifier, a cookie and an authenticator"
        )
    if authenticator[2] != len(data):
        raise MalformedNTSRequest("the NTS authenticator is not the last field")
    uidStart, uidEnd = uniqueIdentifier
    if uidEnd - uidStart - _FIELD.size < MIN_UNIQUE_IDENTIFIER:
        raise MalformedNTSRequest("the NTS unique identifier is too short")
    uidField = data[uidStart:uidEnd]
    try:
        sessionKeys = keys.open(cookie)
    except CookieRejected as e:
        return NTSNak(uidField, str(e))
    c2s, s2c = (ciphers.get if ciphers is not None else sessionCiphers)(sessionKeys)
    authStart, authBody, authEnd = authenticator
    try:
        nonce, ciphertext = _authenticatorBody(data[authBody:authEnd])
    except ValueError as e:
        raise MalformedNTSRequest(str(e)) from None
    try:
        plaintext = c2s.decrypt(ciphertext, [data[:authStart], nonce])
    except InvalidTag:
        raise NTSAuthenticationFailed("the NTS authenticator does not verify") from None
    try:
        encrypted = parseFields(plaintext, 0)
    except ValueError as e:
        raise MalformedNTSRequest(f"encrypted fields: {e}") from None
    cookieLength = len(cookie)
    wanted = 1 + sum(1 for length in placeholders if length == cookieLength)
    wanted += sum(
        1
        for fieldType, bodyStart, end in encrypted
        if fieldType == COOKIE_PLACEHOLDER and end - bodyStart == cookieLength
    )
    count = min(wanted, MAX_COOKIES)
    fresh = [extensionField(NTS_COOKIE, keys.seal(sessionKeys)) for _ in range(count)]
    # The reply must not grow past the request (RFC 8915 section 5.7).
    room = len(data) - HEADER_SIZE - len(uidField)
    while fresh and _authenticatorSize(sum(map(len, fresh))) > room:
        fresh.pop()
    return NTSRequest(
        uniqueIdentifier=uidField,
        plaintext=b"".join(fresh),
        cookies=len(fresh),
        nonce=randomBytes(NONCE_SIZE),
        s2c=s2c,
        keys=sessionKeys,
    )


def buildClientRequest(
    header: bytes,
    cookie: bytes,
    placeholders: int,
    c2s: AESSIV,
    uniqueIdentifier: bytes,
    nonce: bytes,
) -> bytes:
    """
    An NTS request: the 48-byte request header C{header}, the unique
    identifier, the cookie in the clear, C{placeholders} cookie placeholders
    of the cookie's length (in the clear: they cost nothing to
    authenticate), and an authenticator sealed with the C2S key over no
    encrypted fields.
    """
    if len(header) != HEADER_SIZE:
        raise ValueError(f"an NTP header has {HEADER_SIZE} bytes, not {len(header)}")
    associated = (
        header
        + extensionField(UNIQUE_IDENTIFIER, uniqueIdentifier)
        + extensionField(NTS_COOKIE, cookie)
        + extensionField(COOKIE_PLACEHOLDER, bytes(len(cookie))) * placeholders
    )
    return associated + authenticatorField(c2s, associated, b"", nonce)


class NotOurReply(ValueError):
    """
    A datagram that does not echo our request's unique identifier: not the
    reply to it (a client ignores it).
    """


class NTSNakReply(ValueError):
    """
    The server answered our request with an NTS NAK: it cannot open our
    cookie, and a new key exchange is needed.  The NAK is not authenticated
    (nothing can be: the server could not read our keys).
    """


class ReplyNotAuthenticated(ValueError):
    """
    A datagram that echoes our unique identifier but whose authenticator is
    missing or does not verify with the S2C key: forged or damaged, ignored.
    """


def readReply(
    data: bytes, uniqueIdentifier: bytes, s2c: AESSIV
) -> tuple[tuple[bytes, ...], int]:
    """
    Authenticate the reply C{data} to the request with unique identifier
    C{uniqueIdentifier}; its fresh cookies.

    @return: the fresh cookies from the authenticator (those of a length
        that is a positive multiple of 4 and at most 256 bytes), and how
        many cookie fields were left out.
    @raise NotOurReply: C{data} does not echo C{uniqueIdentifier}.
    @raise NTSNakReply: C{data} is an NTS NAK to the request.
    @raise ReplyNotAuthenticated: C{data} echoes the identifier but is not
        authentic.
    """
    if len(data) <= HEADER_SIZE:
        raise NotOurReply("the reply has no extension fields")
    try:
        fields = parseFields(data)
    except ValueError as e:
        raise NotOurReply(f"the reply's extension fields: {e}") from None
    echoed = False
    authenticator: tuple[int, int, int] | None = None
    for fieldType, bodyStart, end in fields:
        if fieldType == UNIQUE_IDENTIFIER:
            body = data[bodyStart:end]
            if body[: len(uniqueIdentifier)] != uniqueIdentifier or any(
                body[len(uniqueIdentifier) :]
            ):
                raise NotOurReply("the reply's unique identifier is not ours")
            echoed = True
        elif fieldType == AUTHENTICATOR:
            authenticator = (bodyStart - _FIELD.size, bodyStart, end)
    if not echoed:
        raise NotOurReply("the reply has no unique identifier")
    if authenticator is None:
        if data[1] == 0 and data[12:16] == NAK_CODE:
            raise NTSNakReply("the server sent an NTS NAK")
        raise ReplyNotAuthenticated("the reply has no NTS authenticator")
    authStart, authBody, authEnd = authenticator
    if authEnd != len(data):
        raise ReplyNotAuthenticated("the NTS authenticator is not the last field")
    try:
        nonce, ciphertext = _authenticatorBody(data[authBody:authEnd])
        plaintext = s2c.decrypt(ciphertext, [data[:authStart], nonce])
    except (ValueError, InvalidTag):
        raise ReplyNotAuthenticated(
            "the reply's NTS authenticator does not verify"
        ) from None
    try:
        encrypted = parseFields(plaintext, 0)
    except ValueError as e:
        raise ReplyNotAuthenticated(f"encrypted fields: {e}") from None
    cookies = []
    ignored = 0
    for fieldType, bodyStart, end in encrypted:
        if fieldType != NTS_COOKIE:
            continue
        cookie = plaintext[bodyStart:end]
        if 0 < len(cookie) <= 256 and len(cookie) % 4 == 0:
            cookies.append(cookie)
        else:
            ignored += 1
    return tuple(cookies), ignored
