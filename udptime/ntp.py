"""
Codec for SNTPv4 / NTP server and client modes (sans I/O).

The server side follows RFC 5905 and RFC 4330 section 6 as chrony, ntpsec
and OpenNTPD answer clients:

  - L{parseRequest} accepts client (mode 3) and symmetric active (mode 1)
    requests of versions 1 to 4 (and the version-1 packets with mode 0 that
    old clients send from a port other than 123), and raises
    L{NTPCodecError} for everything it drops: L{MalformedPacket} for what is
    not a well-formed NTP packet, L{NotServed} for well-formed packets this
    server does not answer (other modes, among them the control and private
    modes 6 and 7 of the CVE-2013-5211 amplification attacks, and requests
    authenticated with a key, as no keys are configured);
  - L{buildReply} answers with a 48-byte packet (never longer than the
    request) built from the request and a L{ClockState<udptime.clock.ClockState>};
  - L{buildKissOfDeath} refuses a client request with a Kiss-o'-Death that
    reveals nothing of the server's clock.

The client side, L{NTPClientCodec}, is udptime's SNTP client for
L{udptime.client.query}; a Kiss-o'-Death fails a query with L{KissOfDeath}.

Every function takes the time as values; nothing here reads a clock or
touches a socket.
"""

from __future__ import annotations

import ipaddress
import os
import random
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import IntEnum
from typing import Final

from udptime.clock import (
    MAX_STRATUM,
    NTP_UNIX_OFFSET,
    ClockState,
    Leap,
    exactNTP64,
    fromNTPShort,
    ntp64ToUnix,
    toNTPShort,
    unixToNTP64,
)
from udptime.decision import Ancillary, LateReply
from udptime.reading import BadReply, Reading, ReplyMismatch, ServerRefused

NTP_PORT: Final = 123
"""The registered NTP port."""

MAX_SERVER_INTERVAL: Final = 4.0
"""Seconds a server may take to answer a request, at most, by its own
timestamps (chrony's limit): a reply that claims more is bogus."""

HEADER_SIZE: Final = 48
"""Length of the NTP header, and of every reply this codec builds."""

MIN_POLL: Final = 4
"""The server's minimum poll exponent (16 s, RFC 5905's MINPOLL; RFC 4330
forbids SNTP clients to poll more often than every 15 s)."""

MAX_POLL: Final = 17
"""The largest poll exponent of RFC 5905 (36 hours)."""

MIN_EXTENSION_FIELD: Final = 16
"""Shortest extension field (RFC 7822)."""

MIN_LAST_EXTENSION_FIELD: Final = 28
"""Shortest last extension field of a packet without a MAC (RFC 7822), so
that it cannot be taken for a 20- or 24-byte MAC."""

MAC_SIZES: Final = frozenset({20, 24})
"""Lengths of a key identifier plus an MD5 (16-byte) or SHA-1 (20-byte)
digest."""

REFUSAL_CODES: Final = {
    b"RATE": "rate limit exceeded: poll less often",
    b"DENY": "access denied",
    b"RSTR": "access restricted",
}
"""The Kiss-o'-Death codes with which a server refuses a client (RFC 5905
section 7.4), and what they mean."""

KISS_CODES: Final = {
    **REFUSAL_CODES,
    b"ACST": "the association belongs to a unicast server",
    b"AUTH": "server authentication failed",
    b"AUTO": "Autokey sequence failed",
    b"BCST": "the association belongs to a broadcast server",
    b"CRYP": "cryptographic authentication or identification failed",
    b"DROP": "lost peer in symmetric mode",
    b"INIT": "the server has not synchronised yet",
    b"MCST": "the association belongs to a manycast server",
    b"NKEY": "no key found",
    b"NTSN": "NTS negative acknowledgement",
    b"RMOT": "association altered by a remote host",
    b"STEP": "the server stepped its clock and has not synchronised since",
}
"""Every Kiss-o'-Death code in RFC 5905 section 7.4 and RFC 8915, and what
it means.  A reply at stratum 0 whose reference identifier is a code (these
or another of capital letters and digits) carries no time."""


class Mode(IntEnum):
    """
    The association modes of RFC 5905.
    """

    RESERVED = 0
    SYMMETRIC_ACTIVE = 1
    SYMMETRIC_PASSIVE = 2
    CLIENT = 3
    SERVER = 4
    BROADCAST = 5
    CONTROL = 6
    PRIVATE = 7


class NTPCodecError(ValueError):
    """
    A datagram the NTP server drops without reply.
    """


class MalformedPacket(NTPCodecError):
    """
    The datagram is not a well-formed NTP packet (too short, a length that
    is not a multiple of 4, bad extension fields).
    """


class NotServed(NTPCodecError):
    """
    A well-formed NTP packet this server does not answer: a version it does
    not speak, a mode other than client or symmetric active, or a request
    authenticated with a key (no keys are configured).
    """


_HEADER = struct.Struct("!BBbbII4sQQQQ")
_EXTENSION_FIELD = struct.Struct("!HH")


@dataclass(frozen=True, slots=True)
class NTPPacket:
    """
    The 48-byte NTP header (RFC 5905 figure 8), field by field.

    Durations and timestamps keep their wire encoding: C{rootDelay} and
    C{rootDispersion} are NTP short format (16.16 fixed point), the
    timestamps are 64-bit NTP timestamps (32.32, modulo one era), so that a
    packet decoded and encoded again is the same bytes.

    @ivar leap: leap indicator, 0-3 (see L{Leap<udptime.clock.Leap>}).
    @ivar version: version number, 0-7.
    @ivar mode: association mode, 0-7 (see L{Mode}).
    @ivar stratum: 0-255.
    @ivar poll: log2 of the poll interval in seconds, signed.
    @ivar precision: log2 of the clock's precision in seconds, signed.
    @ivar rootDelay: NTP short format.
    @ivar rootDispersion: NTP short format.
    @ivar refid: the 4-byte reference identifier.
    @ivar referenceTimestamp: when the clock was last set or corrected.
    @ivar originTimestamp: the request's transmit timestamp, in replies.
    @ivar receiveTimestamp: when the request arrived, in replies.
    @ivar transmitTimestamp: when the packet left.
    """

    leap: int
    version: int
    mode: int
    stratum: int = 0
    poll: int = 0
    precision: int = 0
    rootDelay: int = 0
    rootDispersion: int = 0
    refid: bytes = b"\0\0\0\0"
    referenceTimestamp: int = 0
    originTimestamp: int = 0
    receiveTimestamp: int = 0
    transmitTimestamp: int = 0

    @classmethod
    def fromBytes(cls, data: bytes) -> NTPPacket:
        """
        Decode the header at the start of C{data}, whatever follows it.

        @raise MalformedPacket: C{data} is shorter than L{HEADER_SIZE}.
        """
        if len(data) < HEADER_SIZE:
            raise MalformedPacket(
                f"an NTP packet has at least {HEADER_SIZE} bytes, not {len(data)}"
            )
        (
            flags,
            stratum,
            poll,
            precision,
            rootDelay,
            rootDispersion,
            refid,
            reference,
            origin,
            receive,
            transmit,
        ) = _HEADER.unpack_from(data)
        return cls(
            leap=flags >> 6,
            version=(flags >> 3) & 7,
            mode=flags & 7,
            stratum=stratum,
            poll=poll,
            precision=precision,
            rootDelay=rootDelay,
            rootDispersion=rootDispersion,
            refid=refid,
            referenceTimestamp=reference,
            originTimestamp=origin,
            receiveTimestamp=receive,
            transmitTimestamp=transmit,
        )

    def toBytes(self) -> bytes:
        """
        Encode the header: 48 bytes.

        @raise struct.error: a field is out of its range.
        """
        return _HEADER.pack(
            (self.leap << 6) | (self.version << 3) | self.mode,
            self.stratum,
            self.poll,
            self.precision,
            self.rootDelay,
            self.rootDispersion,
            self.refid,
            self.referenceTimestamp,
            self.originTimestamp,
            self.receiveTimestamp,
            self.transmitTimestamp,
        )


def parseRequest(data: bytes, sourcePort: int | None = None) -> NTPPacket:
    """
    Parse a datagram sent to the NTP server into the request's header.

    Only the header's version and mode matter to the server; the request's
    other fields are odd in real clients (ntpdig sends LI 3, chronyd a
    precision of 32, chronyd and rdate a random transmit timestamp) and are
    neither checked nor used, except the transmit timestamp that the reply
    copies.  What follows the header is checked: version-4 extension fields
    (RFC 7822) are validated and ignored; a MAC or a crypto-NAK means an
    authenticated request, which this server, having no keys, drops.

    @param sourcePort: the request's source port, needed to recognise the
        version-1 client requests that have mode 0 (L{None}: unknown, such
        a packet is dropped).

    @raise MalformedPacket: the datagram is not a well-formed NTP packet.
    @raise NotServed: the server does not answer this packet.
    """
    packet = NTPPacket.fromBytes(data)
    if len(data) % 4:
        raise MalformedPacket(f"NTP packet length {len(data)} is not a multiple of 4")
    version, mode = packet.version, packet.mode
    if not 1 <= version <= 4:
        raise NotServed(f"NTP version {version} is not served")
    if mode == Mode.RESERVED:
        if version != 1 or sourcePort is None or sourcePort == NTP_PORT:
            raise NotServed("mode 0 is only served for version-1 clients")
    elif mode not in (Mode.CLIENT, Mode.SYMMETRIC_ACTIVE):
        raise NotServed(f"NTP mode {mode} ({Mode(mode).name.lower()}) is not served")
    _checkTrailer(data, version)
    return packet


def _checkTrailer(data: bytes, version: int) -> None:
    """
    Check what follows the header: nothing, RFC 7822 extension fields
    (version 4), a MAC or a crypto-NAK.

    @raise MalformedPacket: the trailer cannot be parsed.
    @raise NotServed: the request carries a MAC or a crypto-NAK.
    """
    size = len(data)
    if size == HEADER_SIZE:
        return
    if size - HEADER_SIZE == 4:
        if data[HEADER_SIZE:] == b"\0\0\0\0":
            raise NotServed("crypto-NAK in a request")
        raise MalformedPacket("4 bytes after the NTP header are not a crypto-NAK")
    position = HEADER_SIZE
    lastField = 0
    while True:
        remainder = size - position
        if remainder == 0:
            if lastField < MIN_LAST_EXTENSION_FIELD:
                raise MalformedPacket(
                    f"last extension field has {lastField} bytes and no MAC "
                    f"follows: at least {MIN_LAST_EXTENSION_FIELD} are needed"
                )
            return
        if remainder in MAC_SIZES:
            (keyID,) = struct.unpack_from("!I", data, position)
            raise NotServed(f"MAC with key {keyID}: no keys are configured")
        if version < 4:
            raise MalformedPacket(
                f"{remainder} bytes after a version-{version} header are not a MAC"
            )
        if remainder < MIN_EXTENSION_FIELD:
            raise MalformedPacket(f"{remainder} stray bytes after the extension fields")
        fieldType, length = _EXTENSION_FIELD.unpack_from(data, position)
        if length < MIN_EXTENSION_FIELD or length % 4 or length > remainder:
            raise MalformedPacket(
                f"extension field of type {fieldType:#06x} has bad length {length}"
            )
        position += length
        lastField = length


def replyMode(request: NTPPacket) -> Mode:
    """
    The mode of the reply to a request L{parseRequest} accepted: symmetric
    passive for symmetric active, server for anything else.
    """
    if request.mode == Mode.SYMMETRIC_ACTIVE:
        return Mode.SYMMETRIC_PASSIVE
    return Mode.SERVER


def replyPoll(request: NTPPacket, minPoll: int = MIN_POLL) -> int:
    """
    The reply's poll exponent: the request's, raised to the server's
    minimum C{minPoll} and capped at L{MAX_POLL}.
    """
    return min(max(request.poll, minPoll), MAX_POLL)


def replyStart(state: ClockState, version: int, mode: int, poll: int) -> bytes:
    """
    The first 24 bytes of a reply (up to the origin timestamp): what it says
    about the server's clock in C{state}, with the given version, mode and
    poll exponent.  When the clock is not synchronised the reply carries
    LI 3 and stratum 0.  L{buildReply} and the cached starts of
    L{ReplyConstants} are both built here.
    """
    if state.synchronised:
        leap, stratum = int(state.leap), state.stratum
    else:
        leap, stratum = int(Leap.UNSYNCHRONISED), 0
    return _REPLY_START.pack(
        (leap << 6) | (version << 3) | mode,
        stratum,
        poll,
        state.precision,
        toNTPShort(state.rootDelay),
        toNTPShort(state.rootDispersion),
        state.refid,
        _ntpTimestamp(state.referenceTime),
    )


def fuzzTimestamp(
    timestamp: int, precision: int, randomBits: Callable[[int], int]
) -> int:
    """
    Replace the bits of an NTP timestamp that lie below the clock's
    precision (2^C{precision} seconds) with random bits, as RFC 5905
    section 6 asks, so that they carry no artefact of the clock's encoding:
    the timestamp is rounded to the nearest whole step of the precision,
    and moved by a random time within half a step either way.

    Spread around the nearest step, not over the step below, as the
    readings are rounded to the nearest (a float of the time is: its step,
    2^-22 s from 2004 to 2038, is the precision measured): random bits in
    place of the bits below would make every timestamp half a step (119 ns)
    late on average.
    """
    bits = min(max(32 + precision, 0), 32)
    if not bits:
        return timestamp
    half = 1 << (bits - 1)
    nearest = (timestamp + half) >> bits << bits
    return (nearest - half + (randomBits(bits) & ((1 << bits) - 1))) & _MASK_64


def _ntpTimestamp(unixTime: float | None) -> int:
    return 0 if unixTime is None else unixToNTP64(unixTime)


def buildReply(
    request: NTPPacket,
    state: ClockState,
    received: float,
    transmit: float | Callable[[], float],
    *,
    minPoll: int = MIN_POLL,
    randomBits: Callable[[int], int] = random.getrandbits,
) -> bytes:
    """
    The 48-byte reply to C{request}.

    @param request: a request L{parseRequest} accepted.
    @param state: what the server claims about its clock; when it is not
        synchronised the reply carries LI 3 and stratum 0.
    @param received: Unix time the request arrived.
    @param transmit: Unix time the reply leaves, or a callable giving it:
        a callable is called once, last, when everything but the transmit
        timestamp is ready, its random bits included (see L{LateTransmit}).
    @param minPoll: the server's minimum poll exponent.
    @param randomBits: C{getrandbits}-like source of the random bits below
        the clock's precision in the receive and transmit timestamps.
    """
    clock = transmit if callable(transmit) else lambda: transmit
    late = LateTransmit(clock)
    return late.general(request, state, received, minPoll, randomBits).stamp()


# The start of a reply (see replyStart), and the whole reply from its start
# and its origin, receive and transmit timestamps (as a number, or as the
# request's 8 bytes).
_REPLY_START: Final = struct.Struct("!BBbbII4sQ")
_REPLY_FROM_PARTS: Final = struct.Struct("!24s8sQQ")
_NTP64: Final = struct.Struct("!Q")
TRANSMIT_AT: Final = 40
"""Where a reply's transmit timestamp starts."""
REPLY_FROM_PARTS: Final = _REPLY_FROM_PARTS
"""A reply from its first 24 bytes, its origin timestamp (8 bytes) and its
receive and transmit timestamps (numbers)."""
_MASK_64: Final = (1 << 64) - 1


@dataclass(frozen=True, slots=True)
class ReplyConstants:
    """
    What every reply sent while the clock is in one
    L{ClockState<udptime.clock.ClockState>} says about the clock, for
    L{plainReply}: the reply's first 24 bytes for each request version and
    poll, built once and kept.

    @ivar state: the state they come from.
    @ivar minPoll: the server's minimum poll exponent.
    @ivar fuzzBits: how many low bits of a timestamp are below the clock's
        precision, and replaced by random bits.
    @ivar halfStepsPerSecond: C{2 ** (33 - fuzzBits)}: a Unix time scaled by
        it and floored is the time in half steps of the clock's precision
        (plus one, halved, in whole steps, rounded to the nearest).
    @ivar halfStep: half a step, in units of 2^-32 s: the random bits below
        the precision, less this, spread a timestamp around its step (see
        L{fuzzTimestamp}).
    @ivar offsetUnits: the steps from the NTP epoch (1900) to the Unix one
        (1970): added to a Unix time's steps, and shifted left by
        C{fuzzBits}, they make its NTP timestamp (before era wrapping).
    @ivar prefixes: the start of the reply to a request, by the request's
        version bits and poll byte (see L{prefixKey}).
    """

    state: ClockState
    minPoll: int
    fuzzBits: int
    halfStepsPerSecond: float
    halfStep: int
    offsetUnits: int
    prefixes: dict[int, bytes] = field(default_factory=dict, compare=False)

    @classmethod
    def fromState(cls, state: ClockState, minPoll: int = MIN_POLL) -> ReplyConstants:
        """
        The constants of the replies sent in C{state} by a server whose
        minimum poll exponent is C{minPoll}.
        """
        bits = min(max(32 + state.precision, 0), 32)
        return cls(
            state,
            minPoll,
            bits,
            float(1 << (33 - bits)),
            (1 << bits) >> 1,
            NTP_UNIX_OFFSET << (32 - bits),
        )

    def addPrefix(self, data: bytes) -> bytes:
        """
        Build and keep the first 24 bytes (up to the origin timestamp) of
        the reply to the plain request C{data}.
        """
        poll = data[2] - 256 if data[2] > 127 else data[2]
        prefix = self.prefixes[prefixKey(data)] = replyStart(
            self.state,
            (data[0] >> 3) & 7,
            Mode.SERVER,
            min(max(poll, self.minPoll), MAX_POLL),
        )
        return prefix


def prefixKey(data: bytes) -> int:
    """
    What the start of the reply to the plain request C{data} depends on:
    its version bits and its poll byte.
    """
    return (data[0] & 0x38) | data[2] << 8


PLAIN_FIRST_BYTES: Final = frozenset(
    flags
    for flags in range(256)
    if flags & 7 == Mode.CLIENT and 1 <= (flags >> 3) & 7 <= 4
)
"""The first bytes of plain client requests: mode 3, version 1 to 4."""


def isPlainRequest(data: bytes) -> bool:
    """
    Whether C{data} is a plain client request, as nearly every request is:
    48 bytes, mode 3, version 1 to 4 (L{parseRequest} accepts it as it is).
    """
    return len(data) == HEADER_SIZE and data[0] in PLAIN_FIRST_BYTES


def plainReply(
    data: bytes,
    constants: ReplyConstants,
    received: float,
    transmitTime: Callable[[], float],
    randomBits: Callable[[int], int] = random.getrandbits,
) -> bytes:
    """
    The reply to the plain client request C{data} (see L{isPlainRequest}):
    byte for byte what L{buildReply} gives for L{parseRequest}C{(data)} with
    the state and minimum poll of C{constants}, the transmit time
    C{transmitTime()} and the same random bits, but built from the cached
    start of the reply, the request's transmit timestamp and the two new
    timestamps.

    @param transmitTime: gives the transmit time (Unix seconds); it is
        called once, when everything else of the reply is ready, so that
        the transmit timestamp is read as close to the send as this function
        can (a client's offset is off by half the time from that reading to
        the send).
    @param randomBits: gives C{k} random bits for C{randomBits(k)}, as
        L{random.getrandbits} does.
    """
    late = LateTransmit(transmitTime)
    return late.plain(data, constants, received, randomBits).stamp()


class LateTransmit(LateReply):
    """
    An NTP reply built but for its transmit timestamp, which L{stamp} reads
    from the clock last, as the port sends the reply: a client's offset is
    off by half the time from that reading to the send, so that nothing
    else comes between them but packing the reply's 48 bytes from the parts
    made before (the random bits below the clock's precision included).  A
    server keeps one and fills it again for each reply (L{plain},
    L{general}).

    @ivar clock: gives the transmit time (Unix seconds).
    @ivar control: see L{LateReply.control}.
    @ivar start: the reply's first 24 bytes (see L{replyStart}).
    @ivar origin: its origin timestamp (8 bytes).
    @ivar receive: its receive timestamp, before it is wrapped into its NTP
        era (after 2036): the transmit timestamp is never before it.
    @ivar fuzz: the random bits below the clock's precision, less half a
        step (see L{fuzzTimestamp}), for the transmit timestamp.
    @ivar constants: the reply constants whose scale made the receive
        timestamp (a time after 1970, a precision finer than a second), as
        it then makes the transmit timestamp when it can; L{None} when the
        general conversion did.
    @ivar bits: how many low bits of a timestamp are below the precision,
        for the general conversion.
    """

    __slots__ = (
        "bits",
        "clock",
        "constants",
        "control",
        "fuzz",
        "origin",
        "receive",
        "start",
    )

    def __init__(
        self, clock: Callable[[], float], control: Ancillary | None = None
    ) -> None:
        """
        @param control: the control messages every reply it fills is sent
            with.
        """
        self.clock = clock
        self.control = control
        self.start = bytes(24)
        self.origin = bytes(8)
        self.receive = self.fuzz = self.bits = 0
        self.constants: ReplyConstants | None = None

    def __len__(self) -> int:
        return HEADER_SIZE

    def plain(
        self,
        data: bytes,
        constants: ReplyConstants,
        received: float,
        randomBits: Callable[[int], int] = random.getrandbits,
    ) -> LateTransmit:
        """
        Fill in the reply to the plain client request C{data} (see
        L{isPlainRequest}) but for its transmit timestamp: byte for byte,
        once stamped, what L{buildReply} gives for L{parseRequest}C{(data)}
        with the state and minimum poll of C{constants} and the same random
        bits, but built from the cached start of the reply.

        @param randomBits: gives C{k} random bits for C{randomBits(k)}, as
            L{random.getrandbits} does: called for the receive timestamp,
            then for the transmit timestamp.
        @return: this reply, to L{stamp}.
        """
        start = constants.prefixes.get((data[0] & 0x38) | data[2] << 8)
        if start is None:
            start = constants.addPrefix(data)
        self.start = start
        self.origin = data[40:48]
        bits = constants.fuzzBits
        if received >= 0.0 and bits:
            # unixToNTP64 and fuzzTimestamp, inline, for the times after 1970
            # that they nearly always get: a time scaled by a power of two is
            # exact, and truncating it (float.__trunc__, which is int() without
            # int's generic argument handling, at half the cost) floors it to
            # half steps of the clock's precision, which plus one and halved
            # round it to the nearest whole step, around which the random
            # bits below it spread it.
            half = constants.halfStep
            steps = ((received * constants.halfStepsPerSecond).__trunc__() + 1) >> 1
            self.receive = (
                ((steps + constants.offsetUnits) << bits) + randomBits(bits) - half
            )
            self.constants = constants
            self.fuzz = randomBits(bits) - half
            return self
        self.receive = fuzzTimestamp(
            unixToNTP64(received), constants.state.precision, randomBits
        )
        self.constants = None
        self.bits = bits
        self.fuzz = randomBits(bits) - (1 << bits >> 1) if bits else 0
        return self

    def general(
        self,
        request: NTPPacket,
        state: ClockState,
        received: float,
        minPoll: int = MIN_POLL,
        randomBits: Callable[[int], int] = random.getrandbits,
    ) -> LateTransmit:
        """
        Fill in the reply to C{request} but for its transmit timestamp (see
        L{buildReply}, which stamps it at once).

        @return: this reply, to L{stamp}.
        """
        precision = state.precision
        self.start = replyStart(
            state, request.version, replyMode(request), replyPoll(request, minPoll)
        )
        self.origin = _NTP64.pack(request.transmitTimestamp)
        self.receive = fuzzTimestamp(unixToNTP64(received), precision, randomBits)
        bits = self.bits = min(max(32 + precision, 0), 32)
        self.fuzz = randomBits(bits) - (1 << bits >> 1) if bits else 0
        self.constants = None
        return self

    def receiveTimestamp(self) -> bytes:
        """
        The reply's receive timestamp, as it is sent (8 bytes).
        """
        return _NTP64.pack(self.receive & _MASK_64)

    def stamp(self) -> bytes:
        """
        Read the transmit time and return the reply with its timestamp
        (never before the receive timestamp: both may fall in one step of
        the clock, whose random bits must not reverse them).
        """
        transmit = self.clock()
        constants = self.constants
        if constants is not None and transmit >= 0.0:
            send = (
                (((transmit * constants.halfStepsPerSecond).__trunc__() + 1) >> 1)
                + constants.offsetUnits
            ) << constants.fuzzBits
            send += self.fuzz
            receive = self.receive
            if send < receive:
                send = receive
            if send > _MASK_64:
                # From 2036 on, in NTP era 1 (send >= receive: one test
                # covers both).
                send &= _MASK_64
                receive &= _MASK_64
        else:
            bits = self.bits if constants is None else constants.fuzzBits
            half = 1 << bits >> 1
            send = (
                (unixToNTP64(transmit) + half) >> bits << bits
            ) + self.fuzz & _MASK_64
            receive = self.receive & _MASK_64
            if _signedDifference(send, receive) < 0:
                send = receive
        return _REPLY_FROM_PARTS.pack(self.start, self.origin, receive, send)


class StampedReply(LateReply):
    """
    A reply whose transmit timestamp is written already (an interleaved
    reply carries a transmit time the kernel reported earlier).

    @ivar reply: the reply.
    """

    __slots__ = ("control", "reply")

    def __init__(self, reply: bytes, control: Ancillary | None = None) -> None:
        self.reply = reply
        self.control = control

    def __len__(self) -> int:
        return len(self.reply)

    def stamp(self) -> bytes:
        """
        The reply, as it is.
        """
        return self.reply


def buildKissOfDeath(
    request: bytes,
    code: bytes = b"RATE",
    *,
    sourcePort: int | None = None,
    minPoll: int = MIN_POLL,
) -> bytes | None:
    """
    A Kiss-o'-Death refusing the client request C{request} (RFC 5905
    section 7.4), or L{None} when C{request} is not a client request this
    server would answer (a KoD is never sent where no reply would be).

    The KoD has LI 3, the request's version, mode 4, stratum 0 and the kiss
    code as refid.  Like ntpsec's, it reveals nothing of the server's clock:
    the origin, receive and transmit timestamps are all the request's
    transmit timestamp, and the precision, root delay, root dispersion and
    reference timestamp are the request's.

    @param code: C{RATE}, C{DENY} or C{RSTR} (any 4 ASCII letters).
    @param sourcePort: the request's source port (see L{parseRequest}).
    @param minPoll: the poll exponent the client should at least use.
    """
    if len(code) != 4 or not code.isascii() or not code.isalpha():
        raise ValueError(f"a kiss code is 4 ASCII letters, not {code!r}")
    try:
        packet = parseRequest(request, sourcePort)
    except NTPCodecError:
        return None
    if replyMode(packet) != Mode.SERVER:
        return None
    transmit = packet.transmitTimestamp
    return NTPPacket(
        leap=int(Leap.UNSYNCHRONISED),
        version=packet.version,
        mode=Mode.SERVER,
        stratum=0,
        poll=replyPoll(packet, minPoll),
        precision=packet.precision,
        rootDelay=packet.rootDelay,
        rootDispersion=packet.rootDispersion,
        refid=code,
        referenceTimestamp=packet.referenceTimestamp,
        originTimestamp=transmit,
        receiveTimestamp=transmit,
        transmitTimestamp=transmit,
    ).toBytes()


def _signedDifference(a: int, b: int) -> int:
    """
    C{a - b} for two 64-bit NTP timestamps, modulo 2^64 as a signed number:
    right across an era boundary when the two are within 68 years (RFC 5905
    section 6).
    """
    difference = (a - b) & 0xFFFFFFFFFFFFFFFF
    if difference >= 1 << 63:
        difference -= 1 << 64
    return difference


def timestampDifference(a: int, b: int) -> float:
    """
    C{a - b} in seconds for two 64-bit NTP timestamps in nearby eras.
    """
    return _signedDifference(a, b) / 4294967296.0


def isKissCode(refid: bytes) -> bool:
    """
    Whether the reference identifier C{refid} of a stratum 0 reply is a
    Kiss-o'-Death code: capital ASCII letters and digits, padded with NULs
    (an unsynchronised server that sends no code sends zeros).
    """
    code = refid.rstrip(b"\0")
    return bool(code) and all(c in _KISS_CODE_BYTES for c in code)


_KISS_CODE_BYTES: Final = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789")


def refidText(stratum: int, refid: bytes) -> str:
    """
    A reference identifier for people: the kiss code or reference clock
    name at stratum 0 and 1 (C{LOCL}, C{GPS}, C{RATE}), the upstream
    server's IPv4 address (or the hash of its IPv6 address) above; an
    address whose four bytes are letters is also shown as text, since a
    server with a local reference clock at a higher stratum (chrony's or
    udptime's C{local stratum}) sends a name there
    (C{76.79.67.76 (LOCL)}).
    """
    name = refid.rstrip(b"\0")
    if stratum <= 1:
        if not name:
            return "none"
        if name.isascii() and name.decode("ascii").isprintable():
            return name.decode("ascii")
        return "0x" + refid.hex()
    address = str(ipaddress.IPv4Address(refid))
    if name and name.isascii() and name.decode("ascii").isalpha():
        return f"{address} ({name.decode('ascii')})"
    return address


class KissOfDeath(ServerRefused):
    """
    The server answered with a Kiss-o'-Death (RFC 5905 section 7.4).

    @ivar code: the kiss code, e.g. C{"RATE"}.
    @ivar meaning: what the code means (L{KISS_CODES}), or that it is
        unknown.
    """

    def __init__(self, code: str, meaning: str, server: str = "the server") -> None:
        super().__init__(f"sent a Kiss-o'-Death {code}: {meaning}", server)
        self.args = (code, meaning)  # as made, for copies and pickles
        self.code = code
        self.meaning = meaning


class NTPClientCodec:
    """
    udptime's SNTP client (a L{udptime.reading.ClientCodec}).

    As chrony does, the request carries no time at all: its transmit
    timestamp is 64 random bits, a cookie that the reply's origin timestamp
    must repeat; the send time stays with the client.  A reply is accepted
    only in the mode that answers the request's, with the right origin and
    non-zero receive and transmit timestamps; anything else is
    L{ReplyMismatch} and is ignored.  A Kiss-o'-Death (C{RATE}, C{DENY},
    C{RSTR}) fails the query with L{KissOfDeath}, and a reply whose
    timestamps are impossible with L{BadReply}.  A reply from an
    unsynchronised server (LI 3, or stratum 0 or 16 and up) is a result,
    reported as such in C{details["synchronised"]}.

    Offset and delay are RFC 5905's theta and delta from the four
    timestamps, computed modulo 2^64 so that they stay right across NTP era
    boundaries.

    @ivar version: the NTP version of the request.
    @ivar mode: the request's mode, L{Mode.CLIENT} or
        L{Mode.SYMMETRIC_ACTIVE}.
    """

    name = "ntp"
    defaultPort = NTP_PORT

    def __init__(
        self,
        version: int = 4,
        mode: Mode = Mode.CLIENT,
        randomBytes: Callable[[int], bytes] = os.urandom,
    ) -> None:
        """
        @param version: 1 to 4.
        @param mode: L{Mode.CLIENT}, or L{Mode.SYMMETRIC_ACTIVE}.
        @param randomBytes: source of the cookie (C{os.urandom}).
        """
        if not 1 <= version <= 4:
            raise ValueError(f"NTP version must be from 1 to 4, not {version}")
        if mode not in (Mode.CLIENT, Mode.SYMMETRIC_ACTIVE):
            raise ValueError(f"a request has mode 3 or 1, not {mode}")
        self.version = version
        self.mode = mode
        self.randomBytes = randomBytes

    def buildRequest(self, sentAt: float) -> tuple[bytes, int]:
        """
        A request with a random transmit timestamp, and that timestamp.
        """
        cookie = int.from_bytes(self.randomBytes(8), "big")
        request = NTPPacket(
            leap=int(Leap.NONE),
            version=self.version,
            mode=self.mode,
            transmitTimestamp=cookie,
        )
        return request.toBytes(), cookie

    def parseReply(
        self, data: bytes, state: int, sentAt: float, receivedAt: float
    ) -> Reading:
        """
        Read the reply to the request whose cookie is C{state}.

        @raise ReplyMismatch: C{data} is not the reply to the request.
        @raise KissOfDeath: the server sent a Kiss-o'-Death.
        @raise BadReply: the server's timestamps are impossible: it sent
            the reply before it received the request, or held the request
            for more than L{MAX_SERVER_INTERVAL}.
        """
        try:
            reply = NTPPacket.fromBytes(data)
        except MalformedPacket as e:
            raise ReplyMismatch(str(e)) from None
        expected = Mode.SERVER if self.mode == Mode.CLIENT else Mode.SYMMETRIC_PASSIVE
        if reply.mode != expected:
            raise ReplyMismatch(f"reply has mode {reply.mode}, not {int(expected)}")
        if reply.originTimestamp != state:
            raise ReplyMismatch("reply's origin timestamp is not our request's")
        if reply.stratum == 0 and isKissCode(reply.refid):
            code = reply.refid.rstrip(b"\0")
            meaning = KISS_CODES.get(code, "a code this client does not know")
            raise KissOfDeath(code.decode("ascii"), meaning)
        if not reply.receiveTimestamp or not reply.transmitTimestamp:
            raise ReplyMismatch("reply has a zero receive or transmit timestamp")
        if reply.version == 0:
            raise ReplyMismatch("reply has version 0")

        # Exact where the times are the kernel's (KernelTime).
        t1 = exactNTP64(sentAt)
        t2 = reply.receiveTimestamp
        t3 = reply.transmitTimestamp
        t4 = exactNTP64(receivedAt)
        offset = (timestampDifference(t2, t1) + timestampDifference(t3, t4)) / 2
        held = timestampDifference(t3, t2)
        # The server's own timestamps must be in order, to within the
        # precision it claims (it may fuzz the bits below it), and it may
        # not have held the request for longer than chrony allows
        # (MAX_SERVER_INTERVAL).  The delay also depends on our clock,
        # which may have been stepped or run at another rate during the
        # exchange: as chrony does, its size is taken.
        if held < -(2.0 ** min(reply.precision, 0)):
            raise BadReply(
                "sent a bogus reply: its transmit timestamp is"
                f" {-held:.6f} s before its receive timestamp"
            )
        if held > MAX_SERVER_INTERVAL:
            raise BadReply(
                "sent a bogus reply: it claims to have held the request"
                f" for {held:.3f} s"
            )
        delay = abs(timestampDifference(t4, t1) - held)
        serverTime = ntp64ToUnix(t3, receivedAt)

        synchronised = reply.leap != Leap.UNSYNCHRONISED and (
            0 < reply.stratum < MAX_STRATUM
        )
        details: dict[str, object] = {
            "version": reply.version,
            "mode": reply.mode,
            "leap": reply.leap,
            "leapText": _LEAP_TEXT[reply.leap],
            "synchronised": synchronised,
            "stratum": reply.stratum,
            "refid": refidText(reply.stratum, reply.refid),
            "poll": reply.poll,
            "precision": reply.precision,
            "rootDelay": fromNTPShort(reply.rootDelay),
            "rootDispersion": fromNTPShort(reply.rootDispersion),
            "referenceTime": (
                ntp64ToUnix(reply.referenceTimestamp, receivedAt)
                if reply.referenceTimestamp
                else None
            ),
        }
        text = datetime.fromtimestamp(serverTime, UTC).isoformat(
            timespec="microseconds"
        )
        if not synchronised:
            text += " (server unsynchronised)"
        return Reading(
            text=text,
            serverTime=serverTime,
            offset=offset,
            delay=delay,
            details=details,
        )


_LEAP_TEXT: Final = {
    int(Leap.NONE): "none",
    int(Leap.INSERT): "insert",
    int(Leap.DELETE): "delete",
    int(Leap.UNSYNCHRONISED): "unsynchronised",
}
