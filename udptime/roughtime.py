"""
Roughtime (RFC 10049): the wire format, both sides, with no I/O.

Roughtime gives signed time: a server answers a client's nonce with a
midpoint (MIDP, Unix seconds) and a radius (RADI, seconds), signed by an
online key that the server's long-term Ed25519 key delegated (CERT).  One
signature covers a whole batch of requests: the server signs the root of a
Merkle tree over the requests, and each response carries its leaf's index
(INDX) and the path of sibling hashes (PATH) up to that root.

This module holds:

  - the message format (a tag count, offsets, ascending tags, values
    aligned to 4 bytes: L{encodeMessage}, L{decodeMessage}) and the packet
    framing (C{ROUGHTIM}, length, message: L{framePacket},
    L{unframePacket});
  - the versions spoken (L{Version}, L{VERSIONS}) and how a server chooses
    one (L{chooseVersion});
  - the server side: L{parseRequest}, L{makeDelegation}, L{respondBatch}
    (one signature per batch) and L{radiusFor} (RADI from the clock state);
  - the client side: L{buildRequest} and L{verifyResponse}, with one error
    class per way a response can fail (L{RoughtimeVerificationError}).

Versions: RFC 10049's version 1; drafts 12 to 19 of the IETF document, which
all used the experimental number C{0x8000000c} and differ from the RFC only
in that number and in the case of the signature context strings
(C{"RoughTime"}, which the RFC Editor changed to C{"Roughtime"}); and drafts
8 to 11 (C{0x80000008} to C{0x8000000b}), which Cloudflare's deployed
servers and clients speak: their Merkle leaves hash the nonce rather than
the whole request, the version is given outside the signed response, and
the delegation context ends in C{"--"}.  Google's original protocol (no
framing, 64-byte nonces, microseconds) and draft 7 and older are not
spoken.
"""

from __future__ import annotations

import hashlib
import math
import os
import struct
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from functools import lru_cache
from itertools import pairwise
from typing import Final, NamedTuple

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from udptime.clock import ClockState, Leap

try:
    # CPython's own SHA-512 (in _sha2 since 3.12, _sha512 before): for the
    # one 128-byte block a Merkle node hashes it is about 40 % faster than
    # hashlib's OpenSSL 3, whose setup per hash costs more than the block.
    from _sha2 import sha512 as _nodeSHA512  # type: ignore[import-not-found,unused-ignore]
except ImportError:
    try:
        from _sha512 import sha512 as _nodeSHA512  # type: ignore[import-not-found,no-redef,unused-ignore]
    except ImportError:
        _nodeSHA512 = hashlib.sha512

ROUGHTIME_PORT: Final = 2002
"""
The port clients ask when none is given: the one the public servers and the
examples of draft-ietf-ntp-roughtime-19 (its Appendix A) use.  The draft
asks IANA for a port from the User Port range (its §12.1) and leaves the
number to be filled in.
"""

MAGIC: Final = b"ROUGHTIM"
"""The first field of every packet: the uint64 0x4d49544847554f52."""

FRAME_SIZE: Final = 12
"""Bytes before the message in a packet: the magic and the length."""

MIN_REQUEST_SIZE: Final = 1024
"""
Requests shorter than this (the whole datagram) are dropped: a response is
then never larger than its request, so the server cannot be used to amplify
traffic.  RFC 10049 asks for a message of at least 1024 bytes; Cloudflare's
and roughly's clients send 1024-byte packets, which are accepted.
"""

REQUEST_SIZE: Final = MIN_REQUEST_SIZE + FRAME_SIZE
"""Packet size of the requests L{buildRequest} makes: a 1024-byte message."""

NONCE_SIZE: Final = 32
HASH_SIZE: Final = 32
SIGNATURE_SIZE: Final = 64
KEY_SIZE: Final = 32

MAX_VERSIONS: Final = 32
"""The most version numbers a VER or VERS list may hold."""

MAX_PATH: Final = 32
"""The most hashes a PATH may hold."""

MAX_TREE_HEIGHT: Final = 10
"""
The height of the largest Merkle tree L{respondBatch} builds (1024 leaves):
its responses carry 320 bytes of PATH, and stay below the smallest request
accepted.  Larger batches are split into several trees.
"""

DEFAULT_RADIUS_FLOOR: Final = 3
"""
The smallest radius sent, in seconds: RFC 10049 asks servers without leap
second information for at least 3, and drafts 8 to 11 require it.
"""

MAX_RADIUS: Final = 0xFFFFFFFF

_U32: Final = struct.Struct("<I")
_U64: Final = struct.Struct("<Q")
_FRAME: Final = struct.Struct("<8sI")


def tag(name: str) -> int:
    """
    The uint32 of a tag named by one to four capital letters, padded with
    zero bytes: C{tag("NONC") == 0x434e4f4e}, C{tag("VER") == 0x00524556}.

    @raise ValueError: C{name} is not one to four letters A-Z.
    """
    if not (1 <= len(name) <= 4 and name.isascii() and name.isalpha()):
        raise ValueError(f"a tag is one to four capital letters, not {name!r}")
    if not name.isupper():
        raise ValueError(f"a tag is one to four capital letters, not {name!r}")
    return int.from_bytes(name.encode("ascii").ljust(4, b"\0"), "little")


def tagName(value: int) -> str:
    """
    A tag's name for messages: its letters (C{"NONC"}, C{"VER"}), or its
    hexadecimal value when it is not letters followed by zero bytes.
    """
    raw = value.to_bytes(4, "little")
    letters = raw.rstrip(b"\0")
    if letters and letters.isalpha() and letters.isupper() and b"\0" not in letters:
        return letters.decode("ascii")
    return f"0x{value:08x}"


SIG: Final = tag("SIG")
VER: Final = tag("VER")
SRV: Final = tag("SRV")
NONC: Final = tag("NONC")
DELE: Final = tag("DELE")
TYPE: Final = tag("TYPE")
PATH: Final = tag("PATH")
RADI: Final = tag("RADI")
PUBK: Final = tag("PUBK")
MIDP: Final = tag("MIDP")
SREP: Final = tag("SREP")
VERS: Final = tag("VERS")
MINT: Final = tag("MINT")
ROOT: Final = tag("ROOT")
CERT: Final = tag("CERT")
MAXT: Final = tag("MAXT")
INDX: Final = tag("INDX")
ZZZZ: Final = tag("ZZZZ")

REGISTERED_TAGS: Final = frozenset(
    map(
        tag,
        [
            "SIG",
            "VER",
            "SRV",
            "NONC",
            "DELE",
            "TYPE",
            "PATH",
            "RADI",
            "PUBK",
            "MIDP",
            "SREP",
            "VERS",
        ],
    )
) | frozenset(map(tag, ["MINT", "ROOT", "CERT", "MAXT", "INDX", "ZZZZ"]))
"""The tags of IANA's "Roughtime Tags" registry."""

TYPE_REQUEST: Final = 0
TYPE_RESPONSE: Final = 1


class MessageFormatError(ValueError):
    """
    Bytes that are not a Roughtime message or packet.
    """


# The message format (RFC 10049 §4).


@lru_cache(maxsize=64)
def _headerStruct(count: int) -> struct.Struct:
    """
    The offsets and tags of a header of C{count} pairs, after the count.
    """
    return struct.Struct(f"<{2 * count - 1}I")


def _fields(data: bytes, start: int, end: int) -> dict[int, tuple[int, int]]:
    """
    The values of the message in C{data[start:end]}, as positions in
    C{data}: C{{tag: (first, past)}}.

    @raise MessageFormatError: the bytes break a rule of the format: no
        pairs, a header past the end, offsets not multiples of 4, going
        back or past the end, tags not strictly ascending, or a length that
        is not a multiple of 4.
    """
    size = end - start
    if size < 4 or size % 4:
        raise MessageFormatError(f"a message of {size} bytes")
    (count,) = _U32.unpack_from(data, start)
    if count == 0:
        raise MessageFormatError("a message with no tags")
    if 8 * count > size:
        raise MessageFormatError(f"{count} tags do not fit in {size} bytes")
    header = _headerStruct(count).unpack_from(data, start + 4)
    valuesStart = start + 8 * count
    valuesSize = end - valuesStart
    tags = header[count - 1 :]
    result: dict[int, tuple[int, int]] = {}
    previousTag = -1
    first = 0
    for i in range(count):
        tagValue = tags[i]
        if tagValue <= previousTag:
            raise MessageFormatError("tags are not in strictly ascending order")
        past = header[i] if i < count - 1 else valuesSize
        if past % 4 or past < first or past > valuesSize:
            raise MessageFormatError(f"bad value offset {past} for {tagName(tagValue)}")
        result[tagValue] = (valuesStart + first, valuesStart + past)
        previousTag = tagValue
        first = past
    return result


def decodeMessage(data: bytes) -> dict[int, bytes]:
    """
    The tags and values of a Roughtime message.

    @raise MessageFormatError: C{data} is not a well-formed message.
    """
    return {t: data[a:b] for t, (a, b) in _fields(data, 0, len(data)).items()}


@lru_cache(maxsize=256)
def _header(tags: tuple[int, ...], lengths: tuple[int, ...]) -> bytes:
    """
    The header of a message whose values, in the order of C{tags}
    (ascending), have C{lengths}; kept for the next message of the same
    layout (a server's responses and SREPs come in a few layouts).
    """
    offsets = []
    position = 0
    for length in lengths[:-1]:
        position += length
        offsets.append(position)
    return _U32.pack(len(tags)) + _headerStruct(len(tags)).pack(*offsets, *tags)


def encodeMessage(pairs: Mapping[int, bytes] | Iterable[tuple[int, bytes]]) -> bytes:
    """
    A Roughtime message of C{(tag, value)} pairs, sorted by tag.

    @raise ValueError: no pairs, a tag twice or out of range, or a value
        whose length is not a multiple of 4.
    """
    items = sorted(pairs.items() if isinstance(pairs, Mapping) else pairs)
    if not items:
        raise ValueError("a message has at least one tag")
    tags = [t for t, _ in items]
    if len(set(tags)) != len(tags):
        raise ValueError("a tag appears twice")
    if tags[0] < 0 or tags[-1] > 0xFFFFFFFF:
        raise ValueError("a tag is a uint32")
    values = [v for _, v in items]
    for t, v in items:
        if len(v) % 4:
            raise ValueError(f"the value of {tagName(t)} is {len(v)} bytes long")
    return b"".join([_header(tuple(tags), tuple(len(v) for v in values)), *values])


def framePacket(message: bytes) -> bytes:
    """
    The packet carrying C{message}: C{ROUGHTIM}, its length, itself.
    """
    return _FRAME.pack(MAGIC, len(message)) + message


def _messageBounds(packet: bytes) -> tuple[int, int]:
    """
    Where the message of C{packet} starts and ends.

    @raise MessageFormatError: no C{ROUGHTIM} magic, or a length field that
        does not match the datagram's length.
    """
    if len(packet) < FRAME_SIZE:
        raise MessageFormatError(f"a packet of {len(packet)} bytes")
    magic, length = _FRAME.unpack_from(packet)
    if magic != MAGIC:
        raise MessageFormatError("no ROUGHTIM magic")
    if length != len(packet) - FRAME_SIZE:
        raise MessageFormatError(
            f"the length field says {length} bytes, the packet holds"
            f" {len(packet) - FRAME_SIZE}"
        )
    return FRAME_SIZE, len(packet)


def unframePacket(packet: bytes) -> bytes:
    """
    The message a packet carries.

    @raise MessageFormatError: not a Roughtime packet.
    """
    start, end = _messageBounds(packet)
    return packet[start:end]


def packVersions(versions: Iterable[int]) -> bytes:
    """
    A VER or VERS value: uint32 version numbers.
    """
    numbers = list(versions)
    return struct.pack(f"<{len(numbers)}I", *numbers)


def unpackVersions(value: bytes) -> tuple[int, ...]:
    """
    The version numbers of a VER or VERS value.

    @raise MessageFormatError: the value is empty, holds more than
        L{MAX_VERSIONS} numbers, or is not a multiple of 4 bytes.
    """
    if not value or len(value) % 4 or len(value) > 4 * MAX_VERSIONS:
        raise MessageFormatError(f"a version list of {len(value)} bytes")
    return struct.unpack(f"<{len(value) // 4}I", value)


def _isAscending(numbers: Sequence[int]) -> bool:
    return all(a < b for a, b in pairwise(numbers))


def truncatedHash(data: bytes) -> bytes:
    """
    RFC 10049's H: the first 32 bytes of SHA-512.
    """
    return hashlib.sha512(data).digest()[:HASH_SIZE]


def srvValue(publicKey: bytes) -> bytes:
    """
    The SRV value naming a long-term public key: H(0xff || key).
    """
    return truncatedHash(b"\xff" + publicKey)


# Versions.


@dataclass(frozen=True, slots=True)
class Version:
    """
    How one Roughtime version puts requests and responses on the wire.

    @ivar number: the number in VER lists.
    @ivar name: the version's name for people.
    @ivar leafFromRequest: a Merkle leaf hashes the whole request packet
        (RFC 10049, drafts 12 to 19), not only its nonce (drafts 8 to 11).
    @ivar responseContext: what the response signature (SIG) signs before
        SREP, with its terminating zero byte.
    @ivar delegationContext: what the delegation signature (CERT's SIG)
        signs before DELE, with its terminating zero byte.
    @ivar typeRequired: requests and responses must carry TYPE (RFC 10049;
        drafts before 14 had none, so TYPE is optional for C{0x8000000c}).
    @ivar signedVersion: the response gives its version in SREP (VER and
        VERS, signed), not as a top-level VER.
    @ivar sortedVersions: a request's VER list must be strictly ascending.
    @ivar legacyContexts: further C{(response, delegation)} context pairs a
        client accepts for this version: servers built from draft 19 answer
        version 1 with the draft's C{"RoughTime"} strings, as the draft's own
        example report shows.
    """

    number: int
    name: str
    leafFromRequest: bool
    responseContext: bytes
    delegationContext: bytes
    typeRequired: bool
    signedVersion: bool
    sortedVersions: bool
    legacyContexts: tuple[tuple[bytes, bytes], ...] = ()

    def leaf(self, packet: bytes, nonce: bytes) -> bytes:
        """
        The Merkle leaf of a request: H(0x00 || packet), or H(0x00 || nonce)
        for drafts 8 to 11.
        """
        return truncatedHash(b"\x00" + (packet if self.leafFromRequest else nonce))


RFC_RESPONSE_CONTEXT: Final = b"Roughtime v1 response signature\x00"
RFC_DELEGATION_CONTEXT: Final = b"Roughtime v1 delegation signature\x00"
DRAFT_RESPONSE_CONTEXT: Final = b"RoughTime v1 response signature\x00"
DRAFT_DELEGATION_CONTEXT: Final = b"RoughTime v1 delegation signature\x00"
OLD_DELEGATION_CONTEXT: Final = b"RoughTime v1 delegation signature--\x00"

VERSION_1: Final = 0x00000001
DRAFT_12: Final = 0x8000000C
"""The experimental number drafts 12 to 19 used."""

RFC_10049: Final = Version(
    number=VERSION_1,
    name="RFC 10049",
    leafFromRequest=True,
    responseContext=RFC_RESPONSE_CONTEXT,
    delegationContext=RFC_DELEGATION_CONTEXT,
    typeRequired=True,
    signedVersion=True,
    sortedVersions=True,
    legacyContexts=((DRAFT_RESPONSE_CONTEXT, DRAFT_DELEGATION_CONTEXT),),
)

DRAFTS_12_TO_19: Final = Version(
    number=DRAFT_12,
    name="drafts 12 to 19",
    leafFromRequest=True,
    responseContext=DRAFT_RESPONSE_CONTEXT,
    delegationContext=DRAFT_DELEGATION_CONTEXT,
    typeRequired=False,
    signedVersion=True,
    sortedVersions=True,
)


def _oldDraft(draft: int) -> Version:
    return Version(
        number=0x80000000 | draft,
        name=f"draft {draft:02d}",
        leafFromRequest=False,
        responseContext=DRAFT_RESPONSE_CONTEXT,
        delegationContext=OLD_DELEGATION_CONTEXT,
        typeRequired=False,
        signedVersion=False,
        sortedVersions=False,
    )


VERSIONS: Final[Mapping[int, Version]] = {
    v.number: v for v in (RFC_10049, DRAFTS_12_TO_19, *map(_oldDraft, range(8, 12)))
}
"""Every version spoken, by number."""

SERVER_VERSIONS: Final = tuple(sorted(VERSIONS))
"""The versions a server answers, ascending, as its VERS tag lists them."""

DEFAULT_CLIENT_VERSIONS: Final = (VERSION_1, DRAFT_12)
"""
What a client offers unless told otherwise: the RFC's version and the
drafts' 0x8000000c, whose requests are bound to the signature (the leaf
hashes the request, VER included), so that an attacker cannot make a server
answer in another version.  Drafts 8 to 11 are offered only when asked for.
"""


def chooseVersion(offered: Sequence[int]) -> Version | None:
    """
    The version a server answers in: RFC 10049's when offered, otherwise
    the most recent draft offered, or L{None} when none is spoken.
    """
    if VERSION_1 in offered:
        return RFC_10049
    best = max((n for n in offered if n in VERSIONS), default=None)
    return None if best is None else VERSIONS[best]


def versionName(number: int) -> str:
    """
    A version number for people: C{"RFC 10049"}, C{"draft 11"},
    C{"0x8000000e"}.
    """
    version = VERSIONS.get(number)
    return version.name if version is not None else f"0x{number:08x}"


# The server side.


class DropReason(StrEnum):
    """
    Why a server drops a datagram without answering.
    """

    SHORT = "short"
    """Smaller than L{MIN_REQUEST_SIZE}: answering could amplify."""
    MALFORMED = "malformed"
    """Not a well-formed Roughtime request."""
    VERSION = "version"
    """Offers no version this server speaks."""
    SERVER = "server"
    """Its SRV names another server's long-term key."""
    OVERSIZE = "oversize"
    """The response would be larger than the request."""


class Request(NamedTuple):
    """
    A request a server will answer, as L{parseRequest} reads it (a server
    answering a batch reads its requests by their shape, without one).

    @ivar packet: the request datagram, unchanged.
    @ivar nonce: its 32-byte nonce.
    @ivar version: the version chosen for the response.
    """

    packet: bytes
    nonce: bytes
    version: Version


_Absent: Final = (0, 0)
"""The bounds L{_RequestPlan} gives a tag a request does not carry."""


class _RequestPlan(NamedTuple):
    """
    Where the values a server reads are in the requests of one layout (one
    frame and message header, one length), as C{(first, past)} positions
    in the packet: VER and NONC, which every request carries, and TYPE and
    SRV, L{_Absent} when not carried (their C{present} flags say which).
    """

    version: tuple[int, int]
    nonce: tuple[int, int]
    type: tuple[int, int]
    typePresent: bool
    srv: tuple[int, int]
    srvPresent: bool


@lru_cache(maxsize=256)
def _requestPlan(header: bytes, size: int) -> _RequestPlan | DropReason:
    """
    The L{_RequestPlan} of a request packet of C{size} bytes whose frame and
    message header are C{header}, or L{DropReason.MALFORMED} when no request
    of that layout is well formed: kept for the next request of the same
    layout (clients of one kind send requests of one layout).
    """
    try:
        magic, length = _FRAME.unpack_from(header)
        if magic != MAGIC or length != size - FRAME_SIZE:
            return DropReason.MALFORMED
        fields = _fields(header, FRAME_SIZE, size)
    except (MessageFormatError, struct.error):
        return DropReason.MALFORMED
    versionBounds = fields.get(VER)
    nonceBounds = fields.get(NONC)
    if versionBounds is None or nonceBounds is None:
        return DropReason.MALFORMED
    if nonceBounds[1] - nonceBounds[0] != NONCE_SIZE:
        return DropReason.MALFORMED
    typeBounds = fields.get(TYPE)
    srvBounds = fields.get(SRV)
    return _RequestPlan(
        versionBounds,
        nonceBounds,
        _Absent if typeBounds is None else typeBounds,
        typeBounds is not None,
        _Absent if srvBounds is None else srvBounds,
        srvBounds is not None,
    )


@lru_cache(maxsize=64)
def _offeredVersion(value: bytes) -> Version | DropReason:
    """
    The version a server answers a request whose VER is C{value} in, or why
    the request is dropped; kept for the next request offering the same.
    """
    try:
        offered = unpackVersions(value)
    except MessageFormatError:
        return DropReason.MALFORMED
    version = chooseVersion(offered)
    if version is None:
        return DropReason.VERSION
    if version.sortedVersions and not _isAscending(offered):
        return DropReason.MALFORMED
    return version


def parseRequest(packet: bytes, srv: bytes) -> Request | DropReason:
    """
    Read a request datagram for a server whose long-term key has SRV value
    C{srv} (see L{srvValue}), or say why it is dropped.

    A request is answered when it is at least L{MIN_REQUEST_SIZE} bytes, is
    a well-formed packet holding VER (at most 32 numbers, ascending where
    the version chosen asks it) and a 32-byte NONC, offers a version spoken
    here, carries TYPE 0 (where the version chosen requires TYPE; a TYPE
    other than 0 is always refused) and either no SRV or this server's.
    Other tags, ZZZZ among them, are ignored.
    """
    shape = _readShape(packet, srv)
    if not isinstance(shape, _Shape):
        return shape
    return Request(packet, packet[shape.nonceFirst : shape.noncePast], shape.version)


class _Shape(NamedTuple):
    """
    What every request of one shape is, for a server with one SRV value:
    requests of C{size} bytes that begin with C{prefix}, everything before
    the nonce's value (the frame, the message header, and the values of
    the tags below NONC: VER, SRV and any unknown tags there), and carry
    C{typeValue} at C{typeAt}.

    L{_readShape} makes one from a request it accepts; any other request
    of the same size, prefix and TYPE has the same header, offers the same
    versions and names the same server (or none): it is accepted too, in
    the same version, and only its nonce (and the tags after NONC that a
    server ignores) can differ.  Clients of one kind send requests of one
    shape, so that a server reads most requests by comparing bytes.

    @ivar prefix: the request's bytes before its nonce.
    @ivar size: the request's size.
    @ivar nonceFirst: where the nonce begins (the length of C{prefix}).
    @ivar noncePast: where it ends.
    @ivar typeValue: TYPE's value, C{0} as a uint32, when the request
        carries TYPE; otherwise C{b""}, which every request has anywhere.
    @ivar typeAt: where TYPE's value begins (0 when there is none).
    @ivar version: the version the requests are answered in.
    """

    prefix: bytes
    size: int
    nonceFirst: int
    noncePast: int
    typeValue: bytes
    typeAt: int
    version: Version


_TYPE_REQUEST_VALUE: Final = _U32.pack(TYPE_REQUEST)

_NO_SHAPE: Final = _Shape(b"", -1, 0, 0, b"", 0, RFC_10049)
"""A shape no request has (its size is negative)."""

MAX_SHAPES: Final = 8
"""The request shapes a L{RequestShapes} keeps."""


class RequestShapes:
    """
    The shapes (see L{_Shape}) of the requests a server accepted lately,
    the most recently met first: a server keeps one from batch to batch
    (see L{answerBatch}), so that the requests of the clients it has met
    are read by comparing bytes.

    @ivar srv: the SRV value of the server the shapes are for (a shape
        that names a server holds its SRV).
    @ivar shapes: the shapes, at most L{MAX_SHAPES}.
    """

    def __init__(self) -> None:
        self.srv: bytes | None = None
        self.shapes: list[_Shape] = []

    def forServer(self, srv: bytes) -> list[_Shape]:
        """
        The shapes kept for the server whose SRV value is C{srv}: none when
        the last batch was another server's.
        """
        if srv != self.srv:
            self.srv = srv
            self.shapes = []
        return self.shapes


def _matchShape(packet: bytes, srv: bytes, shapes: list[_Shape]) -> _Shape | DropReason:
    """
    The shape of C{packet}, a request for the server whose SRV value is
    C{srv}: one of C{shapes} (which becomes the first), or one read from
    the request by L{_readShape} (added first to C{shapes}, which keeps
    L{MAX_SHAPES}); or why the request is dropped.
    """
    size = len(packet)
    for position, shape in enumerate(shapes):
        if (
            shape.size == size
            and packet.startswith(shape.prefix)
            and packet.startswith(shape.typeValue, shape.typeAt)
        ):
            if position:
                del shapes[position]
                shapes.insert(0, shape)
            return shape
    found = _readShape(packet, srv)
    if isinstance(found, _Shape):
        shapes.insert(0, found)
        del shapes[MAX_SHAPES:]
    return found


def _readShape(packet: bytes, srv: bytes) -> _Shape | DropReason:
    """
    Read a request for the server whose SRV value is C{srv}, as
    L{parseRequest} says: the request's L{_Shape}, or why it is dropped.
    """
    size = len(packet)
    if size < MIN_REQUEST_SIZE:
        return DropReason.SHORT
    (count,) = _U32.unpack_from(packet, FRAME_SIZE)
    # The header (frame, count, offsets, tags) is read once per layout.
    plan = _requestPlan(packet[: FRAME_SIZE + (8 * count if count else 4)], size)
    # Told by the class of what is read, not by DropReason: isinstance with
    # an enum class asks its metaclass, at several times the cost.
    if not isinstance(plan, _RequestPlan):
        return plan
    first, past = plan.version
    version = _offeredVersion(packet[first:past])
    if not isinstance(version, Version):
        return version
    typeValue = b""
    typeAt = 0
    if plan.typePresent:
        first, past = plan.type
        if packet[first:past] != _TYPE_REQUEST_VALUE:
            return DropReason.MALFORMED
        typeValue = _TYPE_REQUEST_VALUE
        typeAt = first
    elif version.typeRequired:
        return DropReason.MALFORMED
    if plan.srvPresent:
        first, past = plan.srv
        if packet[first:past] != srv:
            return DropReason.SERVER
    first, past = plan.nonce
    return _Shape(packet[:first], size, first, past, typeValue, typeAt, version)


@dataclass(frozen=True, slots=True)
class Delegation:
    """
    An online key and the certificates by which the long-term key delegates
    it, for the time from C{minTime} to C{maxTime} (Unix seconds).

    @ivar signer: the online private key, which signs responses.
    @ivar publicKey: the online public key (PUBK).
    @ivar minTime: MINT.
    @ivar maxTime: MAXT.
    @ivar certificates: the CERT message, by delegation context string
        (the versions sign DELE under different strings).
    @ivar srv: the SRV value of the long-term key.
    @ivar longTermKey: the long-term public key.
    """

    signer: Ed25519PrivateKey
    publicKey: bytes
    minTime: int
    maxTime: int
    certificates: Mapping[bytes, bytes]
    srv: bytes
    longTermKey: bytes

    def covers(self, midpoint: int) -> bool:
        """
        Whether a response with this MIDP is valid under the delegation.
        """
        return self.minTime <= midpoint <= self.maxTime


def makeDelegation(
    longTermKey: Ed25519PrivateKey,
    onlineKey: Ed25519PrivateKey,
    minTime: int,
    maxTime: int,
) -> Delegation:
    """
    Delegate C{onlineKey} for MIDP from C{minTime} to C{maxTime}: DELE
    (PUBK, MINT, MAXT), signed by C{longTermKey} once per delegation context
    string the versions use.

    @raise ValueError: C{maxTime} is before C{minTime}, or either is not a
        uint64.
    """
    if not 0 <= minTime <= maxTime < 1 << 64:
        raise ValueError(f"bad delegation interval {minTime}..{maxTime}")
    publicKey = onlineKey.public_key().public_bytes_raw()
    dele = encodeMessage(
        {PUBK: publicKey, MINT: _U64.pack(minTime), MAXT: _U64.pack(maxTime)}
    )
    certificates = {
        context: encodeMessage({SIG: longTermKey.sign(context + dele), DELE: dele})
        for context in {v.delegationContext for v in VERSIONS.values()}
    }
    longTermPublic = longTermKey.public_key().public_bytes_raw()
    return Delegation(
        signer=onlineKey,
        publicKey=publicKey,
        minTime=minTime,
        maxTime=maxTime,
        certificates=certificates,
        srv=srvValue(longTermPublic),
        longTermKey=longTermPublic,
    )


def radiusFor(state: ClockState, floor: int = DEFAULT_RADIUS_FLOOR) -> int | None:
    """
    The radius (RADI, whole seconds) a server can promise with its clock in
    C{state}, or L{None} when it cannot promise any and must not answer.

    The true time must lie in C{(MIDP - RADI, MIDP + RADI)}: the bound
    adds the clock's error (root dispersion plus half the root delay, as RFC
    10049 §6 has a Roughtime-fed NTP server count them), half a second for
    rounding the time to MIDP's whole seconds, and a second on a day with a
    leap second announced (a leap second has no Unix timestamp of its own);
    it is never below C{floor}.

    An unsynchronised clock gets no radius.  Its error has no bound (the
    kernel's 16 s maximum error is a cap, not a measurement), and a signed
    answer outside its radius is proof of malfeasance against the
    long-term key, which a client can publish and which gets the key
    distrusted.  RFC 868 has a server that cannot tell the time make no
    reply; Roughtime clients ask several servers, so silence costs them
    little.
    """
    if floor < 1:
        raise ValueError(f"the radius floor must be at least 1 s, not {floor}")
    if not state.synchronised:
        return None
    error = state.rootDispersion + state.rootDelay / 2 + 0.5
    if state.leap in (Leap.INSERT, Leap.DELETE):
        error += 1.0
    return min(max(floor, int(error) + 1), MAX_RADIUS)


def midpointFor(now: float) -> int:
    """
    MIDP for Unix time C{now}: the nearest whole second.
    """
    return math.floor(now + 0.5)


def merkleLevels(leaves: Sequence[bytes]) -> list[list[bytes]]:
    """
    The levels of the Merkle tree over C{leaves} (at least one), from the
    leaves up to the root, each node H(0x01 || left || right).  The leaves
    are padded to a power of two with copies of the last, so that every
    leaf's path is as long as the tree is high.
    """
    level = list(leaves)
    if not level:
        raise ValueError("a Merkle tree has at least one leaf")
    size = 1
    while size < len(level):
        size *= 2
    level.extend([level[-1]] * (size - len(level)))
    levels = [level]
    sha512 = _nodeSHA512
    while len(level) > 1:
        last = level[-1]
        # The padding pairs (the last leaf's copies) hash alike: once a level.
        padded = 0
        while (
            padded + 2 <= len(level)
            and level[-padded - 2] is last
            and level[-padded - 1] is last
        ):
            padded += 2
        level = [
            sha512(b"\x01" + level[i] + level[i + 1]).digest()[:HASH_SIZE]
            for i in range(0, len(level) - padded, 2)
        ]
        if padded:
            node = sha512(b"\x01" + last + last).digest()[:HASH_SIZE]
            level.extend([node] * (padded // 2))
        levels.append(level)
    return levels


def merklePath(levels: Sequence[Sequence[bytes]], index: int) -> bytes:
    """
    The PATH of leaf C{index}: its sibling on each level below the root.
    """
    return b"".join(
        [levels[height][(index >> height) ^ 1] for height in range(len(levels) - 1)]
    )


def merklePaths(levels: Sequence[Sequence[bytes]], count: int) -> list[bytes]:
    """
    The PATH of each of the first C{count} leaves, as L{merklePath} gives
    them, made from the root down: the leaves below one node share the rest
    of their paths, which is joined once for them all.
    """
    paths = [b""]
    for height in range(len(levels) - 2, -1, -1):
        level = levels[height]
        size = count if height == 0 else len(level)
        paths = [level[i ^ 1] + paths[i >> 1] for i in range(size)]
    return paths


def merkleRoot(leaf: bytes, index: int, path: bytes) -> bytes | None:
    """
    The root that PATH and INDX lead to from C{leaf} (RFC 10049 §5.3.1), or
    L{None} when INDX has bits set beyond the path's length.
    """
    h = leaf
    sha512 = _nodeSHA512
    for offset in range(0, len(path), HASH_SIZE):
        node = path[offset : offset + HASH_SIZE]
        if index & 1:
            h = sha512(b"\x01" + node + h).digest()[:HASH_SIZE]
        else:
            h = sha512(b"\x01" + h + node).digest()[:HASH_SIZE]
        index >>= 1
    if index:
        return None
    return h


class _ResponseLayout(NamedTuple):
    """
    The fixed parts of the responses of one version in one batch: a
    response is C{head + NONC + middle + PATH + tail + INDX}, of C{size}
    bytes.
    """

    head: bytes
    middle: bytes
    tail: bytes
    size: int


_TYPE_RESPONSE_VALUE: Final = _U32.pack(TYPE_RESPONSE)


class _LayoutParts(NamedTuple):
    """
    What the responses of one version, with one RADI, MIDP and PATH length,
    share in every batch: C{frame}, the frame and message header;
    C{versionValue}, the top-level VER value (drafts 8 to 11) or C{b""};
    C{middle}, TYPE's value or C{b""}; C{srepHead}, the SREP but for ROOT,
    its last value; C{size}, a response's size.
    """

    frame: bytes
    versionValue: bytes
    middle: bytes
    srepHead: bytes
    size: int


@lru_cache(maxsize=64)
def _layoutParts(
    number: int, radius: int, midpoint: int, pathSize: int, certificateSize: int
) -> _LayoutParts:
    """
    The L{_LayoutParts} of the responses in version C{number} with RADI
    C{radius}, MIDP C{midpoint}, C{pathSize} bytes of PATH and a CERT of
    C{certificateSize} bytes; kept while MIDP stays the same.
    """
    version = VERSIONS[number]
    srep: dict[int, bytes] = {
        RADI: _U32.pack(radius),
        MIDP: _U64.pack(midpoint),
        ROOT: bytes(HASH_SIZE),
    }
    if version.signedVersion:
        srep[VER] = _U32.pack(version.number)
        srep[VERS] = _SERVER_VERSIONS_VALUE
    # ROOT is the largest tag of an SREP: its value comes last.
    srepHead = encodeMessage(srep)[:-HASH_SIZE]
    srepSize = len(srepHead) + HASH_SIZE
    # In ascending tag order: SIG, [VER], NONC, [TYPE], PATH, SREP, CERT, INDX.
    sizes = {
        SIG: SIGNATURE_SIZE,
        VER: 4,
        NONC: NONCE_SIZE,
        TYPE: 4,
        PATH: pathSize,
        SREP: srepSize,
        CERT: certificateSize,
        INDX: 4,
    }
    if version.signedVersion:
        versionValue = b""
        middle = _TYPE_RESPONSE_VALUE
        tags = (SIG, NONC, TYPE, PATH, SREP, CERT, INDX)
    else:
        versionValue = _U32.pack(version.number)
        middle = b""
        tags = (SIG, VER, NONC, PATH, SREP, CERT, INDX)
    lengths = tuple(sizes[tag] for tag in tags)
    header = _header(tags, lengths)
    size = FRAME_SIZE + len(header) + sum(lengths)
    frame = _FRAME.pack(MAGIC, size - FRAME_SIZE) + header
    return _LayoutParts(frame, versionValue, middle, srepHead, size)


def _layout(
    version: Version,
    radius: int,
    midpoint: int,
    root: bytes,
    pathSize: int,
    delegation: Delegation,
) -> _ResponseLayout:
    """
    Sign the SREP of C{version} for this batch and lay out its responses.
    """
    certificate = delegation.certificates[version.delegationContext]
    frame, versionValue, middle, srepHead, size = _layoutParts(
        version.number, radius, midpoint, pathSize, len(certificate)
    )
    srepValue = srepHead + root
    signature = delegation.signer.sign(version.responseContext + srepValue)
    return _ResponseLayout(
        frame + signature + versionValue, middle, srepValue + certificate, size
    )


_SERVER_VERSIONS_VALUE: Final = packVersions(SERVER_VERSIONS)

_INDICES: Final = tuple(_U32.pack(index) for index in range(1 << MAX_TREE_HEIGHT))
"""The INDX value of each leaf of a tree, packed once."""


def respondBatch(
    requests: Sequence[bytes],
    now: float,
    radius: int,
    delegation: Delegation,
    dropped: Counter[DropReason] | None = None,
    memory: RequestShapes | None = None,
) -> list[bytes | None]:
    """
    Answer a batch of request datagrams received together, with one
    signature per version among them (usually one for the whole batch), as
    L{answerBatch} does, counting the datagrams dropped by reason.

    @param dropped: counts the datagrams dropped, by L{DropReason}.
    @param memory: the shapes of the requests accepted in earlier batches
        (see L{answerBatch}).
    @return: the response to each datagram, or L{None} for those dropped.
    @raise ValueError: as L{answerBatch}.
    """
    answers = answerBatch(requests, now, radius, delegation, dropped, memory)
    return [answer if isinstance(answer, bytes) else None for answer in answers]


def answerBatch(
    requests: Sequence[bytes],
    now: float,
    radius: int,
    delegation: Delegation,
    dropped: Counter[DropReason] | None = None,
    memory: RequestShapes | None = None,
) -> list[bytes | DropReason]:
    """
    Answer a batch of request datagrams received together, with one
    signature per version among them (usually one for the whole batch).

    The requests answered become the leaves of one Merkle tree (several for
    more than 2^L{MAX_TREE_HEIGHT} requests), whose root the SREP signs with
    MIDP (C{now} to the nearest second) and RADI C{radius}; each response
    carries its own NONC, INDX and PATH.  A request is dropped as
    L{parseRequest} says, and a response larger than its request is never
    sent.

    Most requests are read by their shape (see L{_Shape}): a request of a
    shape met before is read by comparing bytes, and a batch whose
    requests all have the shape of the last request accepted is answered
    without reading any of them further.

    @param requests: the datagrams, in the order received.
    @param now: the time of processing, Unix seconds.
    @param radius: RADI in seconds (see L{radiusFor}).
    @param delegation: the online key and its certificates, valid for MIDP.
    @param dropped: counts the datagrams dropped, by L{DropReason}.
    @param memory: the shapes of the requests accepted in earlier batches,
        updated with this batch's; by default, none.
    @return: the response to each datagram, or why it is dropped.
    @raise ValueError: C{radius} is not from 1 to 2^32 - 1, or the
        delegation does not cover MIDP.
    """
    if not 1 <= radius <= MAX_RADIUS:
        raise ValueError(f"the radius must be from 1 to {MAX_RADIUS} s, not {radius}")
    midpoint = midpointFor(now)
    if not delegation.covers(midpoint):
        raise ValueError(
            f"MIDP {midpoint} is outside the delegation"
            f" {delegation.minTime}..{delegation.maxTime}"
        )
    srv = delegation.srv
    shapes = (RequestShapes() if memory is None else memory).forServer(srv)
    if not shapes and requests:
        # The first request's shape, which the others are compared with.
        _matchShape(requests[0], srv, shapes)
    prefix, size, nonceFirst, noncePast, typeValue, typeAt, version = (
        shapes[0] if shapes else _NO_SHAPE
    )
    treeSize = 1 << MAX_TREE_HEIGHT
    if (
        requests
        and len(requests) <= treeSize
        and all(
            [
                len(packet) == size
                and packet.startswith(prefix)
                and packet.startswith(typeValue, typeAt)
                for packet in requests
            ]
        )
    ):
        return _answerAlike(requests, shapes[0], midpoint, radius, delegation, dropped)
    answers: list[bytes | DropReason] = []
    accepted: list[_Accepted] = []
    append, accept = answers.append, accepted.append
    for position, packet in enumerate(requests):
        if not (
            len(packet) == size
            and packet.startswith(prefix)
            and packet.startswith(typeValue, typeAt)
        ):
            shape = _matchShape(packet, srv, shapes)
            if not isinstance(shape, _Shape):
                append(shape)
                if dropped is not None:
                    dropped[shape] += 1
                continue
            prefix, size, nonceFirst, noncePast, typeValue, typeAt, version = shape
        append(b"")
        accept((position, packet, packet[nonceFirst:noncePast], version))
    for first in range(0, len(accepted), treeSize):
        _respondTree(
            accepted[first : first + treeSize],
            midpoint,
            radius,
            delegation,
            answers,
            dropped,
        )
    return answers


def _leaves(values: Iterable[bytes]) -> list[bytes]:
    """
    The Merkle leaves of a batch's requests, from each one's hashed value
    (L{Version.leaf}, for a whole batch): H(0x00 || request), or H(0x00 ||
    nonce) for drafts 8 to 11.
    """
    sha512 = hashlib.sha512
    return [sha512(b"\x00" + value).digest()[:HASH_SIZE] for value in values]


def _answerAlike(
    requests: Sequence[bytes],
    shape: _Shape,
    midpoint: int,
    radius: int,
    delegation: Delegation,
    dropped: Counter[DropReason] | None,
) -> list[bytes | DropReason]:
    """
    Answer C{requests}, from one to 2^L{MAX_TREE_HEIGHT} of them, all of
    C{shape}: one Merkle tree, one version, and responses of one size.
    """
    _, size, nonceFirst, noncePast, _, _, version = shape
    nonces = [packet[nonceFirst:noncePast] for packet in requests]
    levels = merkleLevels(_leaves(requests if version.leafFromRequest else nonces))
    head, middle, tail, responseSize = _layout(
        version,
        radius,
        midpoint,
        levels[-1][0],
        (len(levels) - 1) * HASH_SIZE,
        delegation,
    )
    if responseSize > size:
        if dropped is not None:
            dropped[DropReason.OVERSIZE] += len(requests)
        return [DropReason.OVERSIZE] * len(requests)
    join = b"".join
    if len(levels) == 1:
        return [join((head, nonces[0], middle, tail, _INDICES[0]))]
    # Each PATH is the leaf's sibling and the PATH of the node above it,
    # joined into the response rather than into a PATH of its own.
    level = levels[0]
    siblings = level[:]
    siblings[0::2] = level[1::2]
    siblings[1::2] = level[0::2]
    above = merklePaths(levels[1:], len(levels[1]))
    aboves = level[:]
    aboves[0::2] = above
    aboves[1::2] = above
    return [
        join((head, nonce, middle, sibling, path, tail, index))
        for nonce, sibling, path, index in zip(
            nonces, siblings, aboves, _INDICES, strict=False
        )
    ]


_Accepted = tuple[int, bytes, bytes, Version]
"""A request to answer: its position in the batch, the packet, its nonce and
the version of its response."""


def _respondTree(
    accepted: Sequence[_Accepted],
    midpoint: int,
    radius: int,
    delegation: Delegation,
    answers: list[bytes | DropReason],
    dropped: Counter[DropReason] | None,
) -> None:
    """
    Answer the requests of one Merkle tree, writing into C{answers}, and
    counting in C{dropped} (when given) the responses too large to send.
    """
    levels = merkleLevels(
        _leaves(
            [
                packet if version.leafFromRequest else nonce
                for _, packet, nonce, version in accepted
            ]
        )
    )
    root = levels[-1][0]
    pathSize = (len(levels) - 1) * HASH_SIZE
    paths = merklePaths(levels, len(accepted))
    layouts: dict[int, _ResponseLayout] = {}
    join = b"".join
    current: Version | None = None
    head = middle = tail = b""
    responseSize = 0
    for index, (position, packet, nonce, version) in enumerate(accepted):
        if version is not current:
            # A batch's requests mostly share one version: its layout is
            # looked up again only when the version changes.
            layout = layouts.get(version.number)
            if layout is None:
                layout = _layout(version, radius, midpoint, root, pathSize, delegation)
                layouts[version.number] = layout
            head, middle, tail, responseSize = layout
            current = version
        if responseSize > len(packet):
            answers[position] = DropReason.OVERSIZE
            if dropped is not None:
                dropped[DropReason.OVERSIZE] += 1
        else:
            answers[position] = join(
                (head, nonce, middle, paths[index], tail, _INDICES[index])
            )


# The client side.


@dataclass(frozen=True, slots=True)
class ClientRequest:
    """
    A request a client sent, and what it needs to check the response.

    @ivar packet: the request datagram.
    @ivar nonce: its nonce.
    @ivar versions: the versions it offered.
    @ivar blind: the random value the nonce was derived from, for a request
        chained to a previous response (see
        L{udptime.roughtimechain.chainNonce}); L{None} for a random nonce.
    """

    packet: bytes
    nonce: bytes
    versions: tuple[int, ...]
    blind: bytes | None = None


def buildRequest(
    publicKey: bytes | None,
    versions: Sequence[int] = DEFAULT_CLIENT_VERSIONS,
    nonce: bytes | None = None,
    blind: bytes | None = None,
    size: int = REQUEST_SIZE,
) -> ClientRequest:
    """
    A request packet of C{size} bytes: VER, NONC, TYPE 0, SRV (naming
    C{publicKey}, when given) and ZZZZ padding.

    @param versions: the versions offered (each in L{VERSIONS}); they are
        sent in ascending order, as RFC 10049 requires.
    @param nonce: 32 bytes (random when not given).
    @param blind: recorded in the result, for chained requests.
    @param size: the packet size, at least L{MIN_REQUEST_SIZE}: the default
        gives a 1024-byte message.
    @raise ValueError: an unknown or repeated version, a nonce that is not
        32 bytes, or a size too small or not a multiple of 4.
    """
    offered = tuple(sorted(versions))
    if not offered or len(offered) > MAX_VERSIONS or not _isAscending(offered):
        raise ValueError(f"offer 1 to {MAX_VERSIONS} distinct versions, not {versions}")
    unknown = [v for v in offered if v not in VERSIONS]
    if unknown:
        names = ", ".join(map(versionName, unknown))
        raise ValueError(f"versions not spoken here: {names}")
    if nonce is None:
        nonce = os.urandom(NONCE_SIZE)
    if len(nonce) != NONCE_SIZE:
        raise ValueError(f"a nonce is {NONCE_SIZE} bytes, not {len(nonce)}")
    if size < MIN_REQUEST_SIZE or size % 4:
        raise ValueError(f"a request of {size} bytes")
    pairs = {
        VER: packVersions(offered),
        NONC: nonce,
        TYPE: _U32.pack(TYPE_REQUEST),
    }
    if publicKey is not None:
        pairs[SRV] = srvValue(publicKey)
    pairs[ZZZZ] = b""
    padding = size - FRAME_SIZE - len(encodeMessage(pairs))
    pairs[ZZZZ] = bytes(padding)
    return ClientRequest(framePacket(encodeMessage(pairs)), nonce, offered, blind)


def readClientRequest(packet: bytes) -> ClientRequest:
    """
    The nonce and versions of a request packet someone sent (a malfeasance
    report's), to check its response.

    @raise MessageFormatError: not a packet with VER and a 32-byte NONC.
    """
    fields = decodeMessage(unframePacket(packet))
    nonce = fields.get(NONC)
    versions = fields.get(VER)
    if nonce is None or len(nonce) != NONCE_SIZE or versions is None:
        raise MessageFormatError("a request needs VER and a 32-byte NONC")
    return ClientRequest(packet, nonce, unpackVersions(versions))


class RoughtimeVerificationError(Exception):
    """
    A response that must not be believed.  Each subclass is one way it
    fails; L{reason} names it for messages and reports.
    """

    reason: str = "invalid"


class MalformedResponse(RoughtimeVerificationError):
    """
    Not a well-formed response: a bad packet or message, a mandatory tag
    missing or of the wrong size, a wrong TYPE, a zero radius.
    """

    reason = "malformed"


class NonceMismatch(RoughtimeVerificationError):
    """
    The response's NONC is not the request's: it answers another request.
    """

    reason = "nonce mismatch"


class UnofferedVersion(RoughtimeVerificationError):
    """
    The response is in a version the request did not offer, or its VERS
    does not list its own version.
    """

    reason = "version not offered"


class WrongKey(RoughtimeVerificationError):
    """
    The delegation certificate (CERT) is not signed by the long-term key
    the client trusts: another server's key, or an altered certificate.
    """

    reason = "wrong key"


class BadSignature(RoughtimeVerificationError):
    """
    The signed response (SREP) does not verify with the delegated key:
    altered in transit, or deliberately invalid (grease).
    """

    reason = "bad signature"


class BadMerklePath(RoughtimeVerificationError):
    """
    INDX and PATH do not lead from the request to the signed ROOT.
    """

    reason = "bad Merkle path"


class DelegationExpired(RoughtimeVerificationError):
    """
    MIDP is outside the delegation's MINT to MAXT: the online key was not
    trusted to sign that time.
    """

    reason = "delegation expired"


@dataclass(frozen=True, slots=True)
class Verified:
    """
    What a valid response says.

    @ivar midpoint: MIDP, Unix seconds.
    @ivar radius: RADI, seconds: the server promises the true time was in
        C{(midpoint - radius, midpoint + radius)} as it signed.
    @ivar version: the version number of the response.
    @ivar minTime: the delegation's MINT.
    @ivar maxTime: the delegation's MAXT.
    @ivar onlineKey: the delegated public key (PUBK).
    @ivar index: INDX.
    @ivar pathLength: hashes in PATH (the height of the server's tree).
    @ivar versions: the server's VERS, when given.
    @ivar unknownTags: top-level tags outside the registry, which were
        ignored (RFC 10049 §7 grease).
    @ivar legacyContexts: the signatures verified only under draft 19's
        context strings, accepted for version 1 (see
        L{Version.legacyContexts}).
    """

    midpoint: int
    radius: int
    version: int
    minTime: int
    maxTime: int
    onlineKey: bytes
    index: int
    pathLength: int
    versions: tuple[int, ...] = ()
    unknownTags: tuple[str, ...] = ()
    legacyContexts: bool = False


def _required(fields: Mapping[int, bytes], name: int, size: int | None = None) -> bytes:
    value = fields.get(name)
    if value is None:
        raise MalformedResponse(f"no {tagName(name)} tag")
    if size is not None and len(value) != size:
        raise MalformedResponse(f"{tagName(name)} is {len(value)} bytes, not {size}")
    return value


def _submessage(fields: Mapping[int, bytes], name: int) -> dict[int, bytes]:
    try:
        return decodeMessage(_required(fields, name))
    except MessageFormatError as e:
        raise MalformedResponse(f"{tagName(name)}: {e}") from None


def _responseVersion(
    top: Mapping[int, bytes], srep: Mapping[int, bytes], offered: Sequence[int]
) -> Version:
    """
    The version a response is in: SREP's signed VER, or the top-level VER
    of drafts 8 to 11.
    """
    signed = srep.get(VER)
    unsigned = top.get(VER)
    value = unsigned if signed is None else signed
    if value is None:
        raise MalformedResponse("no VER tag")
    if len(value) != 4:
        raise MalformedResponse(f"VER is {len(value)} bytes, not 4")
    if signed is not None and unsigned is not None and signed != unsigned:
        raise MalformedResponse("the top-level VER contradicts the signed one")
    (number,) = _U32.unpack(value)
    if number not in offered:
        raise UnofferedVersion(f"the response is in {versionName(number)}, not offered")
    version = VERSIONS.get(number)
    if version is None:
        raise UnofferedVersion(f"{versionName(number)} is not spoken here")
    if version.signedVersion and signed is None:
        raise MalformedResponse(f"{version.name} puts VER in SREP")
    return version


def _verifies(key: Ed25519PublicKey, signature: bytes, message: bytes) -> bool:
    try:
        key.verify(signature, message)
    except InvalidSignature:
        return False
    return True


def verifyResponse(request: ClientRequest, packet: bytes, publicKey: bytes) -> Verified:
    """
    Check a response as RFC 10049 §5.4 asks, and read it.

    In order: the packet and message format and the mandatory tags; NONC
    against the request's; the version against those offered; the
    delegation signature with the long-term C{publicKey}; the response
    signature with the delegated key; the Merkle path from the request's
    leaf to ROOT; MINT <= MIDP <= MAXT.  Tags outside the registry are
    ignored.

    @raise RoughtimeVerificationError: the response is not valid; the
        subclass says why.
    """
    try:
        top = decodeMessage(unframePacket(packet))
    except MessageFormatError as e:
        raise MalformedResponse(str(e)) from None
    if _required(top, NONC, NONCE_SIZE) != request.nonce:
        raise NonceMismatch("the response's NONC is not the request's")
    srep = _submessage(top, SREP)
    version = _responseVersion(top, srep, request.versions)
    signature = _required(top, SIG, SIGNATURE_SIZE)
    typeValue = top.get(TYPE)
    if typeValue is None:
        if version.typeRequired:
            raise MalformedResponse("no TYPE tag")
    elif typeValue != _TYPE_RESPONSE_VALUE:
        raise MalformedResponse("TYPE is not a response's")
    path = _required(top, PATH)
    if len(path) % HASH_SIZE or len(path) > MAX_PATH * HASH_SIZE:
        raise MalformedResponse(f"PATH is {len(path)} bytes")
    (index,) = _U32.unpack(_required(top, INDX, 4))
    certificate = _submessage(top, CERT)
    delegation = _submessage(certificate, DELE)
    dele = _required(certificate, DELE)
    certificateSignature = _required(certificate, SIG, SIGNATURE_SIZE)
    onlineKey = _required(delegation, PUBK, KEY_SIZE)
    (minTime,) = _U64.unpack(_required(delegation, MINT, 8))
    (maxTime,) = _U64.unpack(_required(delegation, MAXT, 8))
    (radius,) = _U32.unpack(_required(srep, RADI, 4))
    (midpoint,) = _U64.unpack(_required(srep, MIDP, 8))
    root = _required(srep, ROOT, HASH_SIZE)
    servedVersions: tuple[int, ...] = ()
    if VERS in srep:
        try:
            servedVersions = unpackVersions(srep[VERS])
        except MessageFormatError as e:
            raise MalformedResponse(f"VERS: {e}") from None
        if not _isAscending(servedVersions):
            raise MalformedResponse("VERS is not strictly ascending")
        if version.number not in servedVersions:
            raise UnofferedVersion("VERS does not list the response's version")
    elif version.typeRequired:
        raise MalformedResponse("no VERS tag")

    try:
        longTerm = Ed25519PublicKey.from_public_bytes(publicKey)
        delegated = Ed25519PublicKey.from_public_bytes(onlineKey)
    except ValueError as e:
        raise MalformedResponse(f"not an Ed25519 public key: {e}") from None
    contexts = [(version.responseContext, version.delegationContext)]
    contexts.extend(version.legacyContexts)
    trusted = [
        responseContext
        for responseContext, delegationContext in contexts
        if _verifies(longTerm, certificateSignature, delegationContext + dele)
    ]
    if not trusted:
        raise WrongKey("the delegation is not signed by the server's long-term key")
    responseContext = trusted[0]
    legacy = responseContext != version.responseContext
    if not _verifies(delegated, signature, responseContext + top[SREP]):
        raise BadSignature("the signed response does not verify with the delegated key")
    leaf = version.leaf(request.packet, request.nonce)
    if merkleRoot(leaf, index, path) != root:
        raise BadMerklePath("PATH and INDX do not lead from the request to ROOT")
    if not minTime <= midpoint <= maxTime:
        raise DelegationExpired(
            f"MIDP {midpoint} is outside the delegation {minTime}..{maxTime}"
        )
    if radius == 0:
        raise MalformedResponse("RADI is zero")
    return Verified(
        midpoint=midpoint,
        radius=radius,
        version=version.number,
        minTime=minTime,
        maxTime=maxTime,
        onlineKey=onlineKey,
        index=index,
        pathLength=len(path) // HASH_SIZE,
        versions=servedVersions,
        unknownTags=tuple(tagName(t) for t in top if t not in REGISTERED_TAGS),
        legacyContexts=legacy,
    )
