"""
Codec for NTS Key Establishment, NTS-KE (RFC 8915 section 4), sans I/O.

NTS-KE runs over TLS 1.3 (ALPN C{ntske/1}, TCP port 4460).  The client sends
one request, the server one response, and the server closes the
connection.  Each message is a sequence of records ending with an End of
Message record; a record is::

    critical bit (1) | record type (15) | body length (16) | body

The server side:

  - L{KERequestParser} reads a request incrementally (bytes may arrive in
    pieces), bounded by a maximum size.  It returns the L{KERequest} once
    the End of Message record arrives, or raises L{KERequestRefused} with
    the error code to answer with: 0 (unrecognised critical record) for a
    critical record of an unknown type, 1 (bad request) for anything else
    wrong (no or two Next Protocol records, bad lengths, records a client
    must not send, a request too large);
  - L{negotiate} picks the next protocol and the AEAD algorithm;
  - L{buildResponse} builds the response: Next Protocol, AEAD Algorithm,
    the cookies, optional NTPv4 Server and Port Negotiation, End of
    Message.  When the server speaks none of the protocols offered the
    response holds an empty Next Protocol record, and when it supports none
    of the AEAD algorithms offered an empty AEAD Algorithm record and no
    cookies (RFC 8915 sections 4.1.2 and 4.1.5);
  - L{buildErrorResponse} answers with an Error record.

The client side: L{buildRequest}, and L{KEResponseParser} that reads the
response into a L{KEResponse} or raises L{NTSKEServerError} (an Error or
Warning record; RFC 8915 section 4.1.4 has unrecognised warnings treated as
errors, and none are defined) or L{NTSKEBadResponse}.

The keys themselves come from the TLS session (RFC 5705 exporter,
L{EXPORTER_LABEL} and L{exporterContext}); the cookies from
L{udptime.ntscookie}.  Nothing here touches a socket or TLS.
"""

from __future__ import annotations

import importlib.util
import ipaddress
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import IntEnum
from typing import Final

NTSKE_PORT: Final = 4460
"""The registered NTS-KE port (TCP)."""

ALPN_PROTOCOL: Final = b"ntske/1"
"""The TLS application-layer protocol name of NTS-KE."""

EXPORTER_LABEL: Final = b"EXPORTER-network-time-security"
"""The RFC 5705 exporter label of the NTS keys."""

CRITICAL: Final = 0x8000
"""The critical bit of a record's type field."""

PROTOCOL_NTPV4: Final = 0
"""The NTS next protocol identifier of NTPv4."""

AEAD_AES_SIV_CMAC_256: Final = 15
"""The IANA AEAD identifier of AES-SIV-CMAC-256 (RFC 5297), the algorithm
every NTS server must support and the only one udptime implements."""

SUPPORTED_AEADS: Final = (AEAD_AES_SIV_CMAC_256,)
"""The AEAD algorithms udptime negotiates, in its order of preference."""

KEY_SIZES: Final = {AEAD_AES_SIV_CMAC_256: 32}
"""Bytes of each C2S and S2C key, by AEAD algorithm."""

COOKIES_PER_RESPONSE: Final = 8
"""New cookies in a response (RFC 8915 section 4.1.6 says 8)."""

MAX_COOKIES: Final = 8
"""Cookies a client keeps, at most."""

MAX_COOKIE_SIZE: Final = 256
"""The longest cookie a client accepts (chrony's limit)."""

DEFAULT_MAX_REQUEST: Final = 1024
"""Bytes a server reads of a request, at most.  A real request is about 16
bytes (Next Protocol, AEAD Algorithm, End of Message), a few hundred with
negotiation records."""

MAX_RESPONSE: Final = 16384
"""Bytes a client reads of a response, at most (chrony's limit; a response
with 8 cookies of 100 bytes is about 880)."""

MAX_SERVER_NAME: Final = 255
"""The longest name an NTPv4 Server Negotiation record may carry."""


NTS_REQUIREMENTS: Final = {
    "cryptography": "cryptography",
    "OpenSSL": "pyOpenSSL",
    "service_identity": "service_identity",
}
"""The modules NTS needs beyond Twisted (the C{nts} extra), and the
distributions that bring them."""


def ntsUnavailable() -> str | None:
    """
    Why NTS cannot run here (a line for the command line or the log), or
    L{None} when the modules of udptime's C{nts} extra are installed.  It
    imports nothing, so that a plain install can ask.
    """
    missing = [
        distribution
        for module, distribution in NTS_REQUIREMENTS.items()
        if importlib.util.find_spec(module) is None
    ]
    if not missing:
        return None
    return (
        f"NTS needs {', '.join(missing)}: install udptime with its nts extra"
        " (pip install 'udptime[nts]')"
    )


class RecordType(IntEnum):
    """
    The NTS-KE record types of RFC 8915 section 4.1.
    """

    END_OF_MESSAGE = 0
    NEXT_PROTOCOL = 1
    ERROR = 2
    WARNING = 3
    AEAD_ALGORITHM = 4
    NEW_COOKIE = 5
    SERVER_NEGOTIATION = 6
    PORT_NEGOTIATION = 7


class ErrorCode(IntEnum):
    """
    The NTS-KE error codes of RFC 8915 section 4.1.3.
    """

    UNRECOGNIZED_CRITICAL_RECORD = 0
    BAD_REQUEST = 1
    INTERNAL_SERVER_ERROR = 2


ERROR_TEXT: Final = {
    ErrorCode.UNRECOGNIZED_CRITICAL_RECORD: "unrecognised critical record",
    ErrorCode.BAD_REQUEST: "bad request",
    ErrorCode.INTERNAL_SERVER_ERROR: "internal server error",
}
"""What each error code means, for people."""

_HEADER: Final = struct.Struct("!HH")
_UINT16: Final = struct.Struct("!H")


@dataclass(frozen=True, slots=True)
class Record:
    """
    One NTS-KE record.

    @ivar type: the record type, 0 to 32767 (see L{RecordType}).
    @ivar body: the record body.
    @ivar critical: whether the critical bit is set.
    """

    type: int
    body: bytes = b""
    critical: bool = False

    def toBytes(self) -> bytes:
        """
        Encode the record.

        @raise ValueError: the type or the body length is out of range.
        """
        if not 0 <= self.type < CRITICAL:
            raise ValueError(f"an NTS-KE record type is 0-32767, not {self.type}")
        if len(self.body) > 0xFFFF:
            raise ValueError("an NTS-KE record body has at most 65535 bytes")
        flags = CRITICAL if self.critical else 0
        return _HEADER.pack(flags | self.type, len(self.body)) + self.body


def _uint16s(values: Sequence[int]) -> bytes:
    return b"".join(_UINT16.pack(value) for value in values)


def _readUint16s(body: bytes) -> tuple[int, ...]:
    return tuple(value for (value,) in _UINT16.iter_unpack(body))


_END: Final = Record(RecordType.END_OF_MESSAGE, critical=True).toBytes()


def exporterContext(aead: int, serverToClient: bool) -> bytes:
    """
    The RFC 5705 exporter context of one NTS key (RFC 8915 section 5.1):
    the next protocol (NTPv4), the AEAD algorithm, and 0 for the
    client-to-server key or 1 for the server-to-client key.
    """
    return _UINT16.pack(PROTOCOL_NTPV4) + _UINT16.pack(aead) + bytes([serverToClient])


class _RecordReader:
    """
    Splits a byte stream into records, bounded by a total size.

    @ivar size: bytes received so far.
    """

    def __init__(self, maxSize: int) -> None:
        self.maxSize = maxSize
        self.size = 0
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[Record]:
        """
        Add C{data}; the records it completes.

        @raise OverflowError: more than C{maxSize} bytes were received, or a
            record announces a body that cannot fit.
        """
        self.size += len(data)
        buffer = self._buffer
        buffer += data
        # Where the buffer starts in the whole stream.
        start = self.size - len(buffer)
        records = []
        position = 0
        while len(buffer) - position >= _HEADER.size:
            kind, length = _HEADER.unpack_from(buffer, position)
            end = position + _HEADER.size + length
            if start + end > self.maxSize:
                raise OverflowError(
                    f"a record of {length} bytes runs past the"
                    f" {self.maxSize}-byte limit of a message"
                )
            if end > len(buffer):
                break
            body = bytes(buffer[position + _HEADER.size : end])
            records.append(Record(kind & ~CRITICAL, body, bool(kind & CRITICAL)))
            position = end
        del buffer[:position]
        if self.size > self.maxSize:
            raise OverflowError(f"the message is longer than {self.maxSize} bytes")
        return records

    @property
    def pending(self) -> int:
        """
        Bytes received that are not part of a complete record yet.
        """
        return len(self._buffer)


class KERequestRefused(ValueError):
    """
    An NTS-KE request the server answers with an Error record.

    @ivar code: the L{ErrorCode} to send.
    """

    def __init__(self, code: ErrorCode, reason: str) -> None:
        super().__init__(reason)
        self.code = code


@dataclass(frozen=True, slots=True)
class KERequest:
    """
    An NTS-KE request.

    @ivar nextProtocols: the protocols the client offers, in its order.
    @ivar aeadAlgorithms: the AEAD algorithms it offers, in its order
        (empty when it sent no AEAD Algorithm record).
    @ivar server: the NTP server it asks for, when it sent an NTPv4 Server
        Negotiation record (a preference the server may ignore, as udptime
        does).
    @ivar port: the NTP port it asks for (NTPv4 Port Negotiation).
    """

    nextProtocols: tuple[int, ...]
    aeadAlgorithms: tuple[int, ...] = ()
    server: str | None = None
    port: int | None = None


class KERequestParser:
    """
    Reads one NTS-KE request, incrementally.

    Feed it what the connection delivers, in any pieces: L{feed} returns
    L{None} until the End of Message record has arrived, then the
    L{KERequest}.  It raises L{KERequestRefused} as soon as the request is
    known to be wrong; the caller answers with
    L{buildErrorResponse}C{(refused.code)} and closes the connection.  After
    either outcome the parser is done: further bytes are refused.

    @ivar maxSize: the most bytes read of a request.
    """

    def __init__(self, maxSize: int = DEFAULT_MAX_REQUEST) -> None:
        self.maxSize = maxSize
        self._reader = _RecordReader(maxSize)
        self._nextProtocols: tuple[int, ...] | None = None
        self._aeads: tuple[int, ...] | None = None
        self._server: str | None = None
        self._port: int | None = None
        self._done = False

    def feed(self, data: bytes) -> KERequest | None:
        """
        Add C{data} (any piece of the request); the request once complete.

        @raise KERequestRefused: the request is wrong, with the code to
            answer with.
        """
        if not data:
            return None
        if self._done:
            raise KERequestRefused(
                ErrorCode.BAD_REQUEST, "bytes after the end of the request"
            )
        try:
            records = self._reader.feed(data)
            for index, record in enumerate(records):
                if record.type == RecordType.END_OF_MESSAGE:
                    request = self._finish(record)
                    if index + 1 < len(records) or self._reader.pending:
                        raise _bad("bytes after the End of Message record")
                    return request
                self._record(record)
        except OverflowError as e:
            self._done = True
            raise KERequestRefused(ErrorCode.BAD_REQUEST, str(e)) from None
        except KERequestRefused:
            self._done = True
            raise
        return None

    def _record(self, record: Record) -> None:
        kind, body = record.type, record.body
        if kind == RecordType.NEXT_PROTOCOL:
            if not record.critical:
                raise _bad("the Next Protocol record is not critical")
            if self._nextProtocols is not None:
                raise _bad("two Next Protocol records")
            self._nextProtocols = _protocolList(body, "Next Protocol")
        elif kind == RecordType.AEAD_ALGORITHM:
            if self._aeads is not None:
                raise _bad("two AEAD Algorithm records")
            self._aeads = _protocolList(body, "AEAD Algorithm")
        elif kind == RecordType.SERVER_NEGOTIATION:
            if self._server is not None:
                raise _bad("two NTPv4 Server Negotiation records")
            self._server = _serverName(body, _bad)
        elif kind == RecordType.PORT_NEGOTIATION:
            if self._port is not None:
                raise _bad("two NTPv4 Port Negotiation records")
            self._port = _portNumber(body, _bad)
        elif kind in _SERVER_ONLY:
            raise _bad(f"a client may not send {RecordType(kind).name} records")
        elif record.critical:
            raise KERequestRefused(
                ErrorCode.UNRECOGNIZED_CRITICAL_RECORD,
                f"unrecognised critical record of type {kind}",
            )

    def _finish(self, end: Record) -> KERequest:
        self._done = True
        if not end.critical or end.body:
            raise _bad("the End of Message record must be critical with no body")
        if self._nextProtocols is None:
            raise _bad("no Next Protocol record")
        if PROTOCOL_NTPV4 in self._nextProtocols and self._aeads is None:
            raise _bad("NTPv4 is offered without an AEAD Algorithm record")
        return KERequest(
            nextProtocols=self._nextProtocols,
            aeadAlgorithms=self._aeads or (),
            server=self._server,
            port=self._port,
        )


_SERVER_ONLY: Final = frozenset(
    {RecordType.ERROR, RecordType.WARNING, RecordType.NEW_COOKIE}
)


def _bad(reason: str) -> KERequestRefused:
    return KERequestRefused(ErrorCode.BAD_REQUEST, reason)


def _protocolList(body: bytes, what: str) -> tuple[int, ...]:
    if not body or len(body) % 2:
        raise _bad(f"the {what} record has a body of {len(body)} bytes")
    return _readUint16s(body)


def _serverName(body: bytes, error: Callable[[str], Exception]) -> str:
    """
    The text of an NTPv4 Server Negotiation record: 1 to
    L{MAX_SERVER_NAME} printable ASCII characters without spaces.
    """
    if not 0 < len(body) <= MAX_SERVER_NAME or not all(33 <= c < 127 for c in body):
        raise error(
            "the NTPv4 Server Negotiation record does not hold a host name"
            " or an address"
        )
    return body.decode("ascii")


def _portNumber(body: bytes, error: Callable[[str], Exception]) -> int:
    if len(body) != 2 or body == b"\0\0":
        raise error("the NTPv4 Port Negotiation record does not hold a port")
    port: int = _UINT16.unpack(body)[0]
    return port


@dataclass(frozen=True, slots=True)
class Negotiation:
    """
    What the server agreed to in its response.

    @ivar nextProtocol: the protocol chosen (L{PROTOCOL_NTPV4}), or L{None}
        when the server speaks none of those offered.
    @ivar aead: the AEAD algorithm chosen, or L{None} when there is none to
        choose.
    """

    nextProtocol: int | None
    aead: int | None

    @property
    def complete(self) -> bool:
        """
        Whether keys are exported and cookies sent: both a protocol and an
        AEAD algorithm were agreed.
        """
        return self.nextProtocol is not None and self.aead is not None


def negotiate(
    request: KERequest, supported: Sequence[int] = SUPPORTED_AEADS
) -> Negotiation:
    """
    The server's choices for C{request}: NTPv4 when offered, and the first
    AEAD algorithm in the client's order that the server supports.
    """
    if PROTOCOL_NTPV4 not in request.nextProtocols:
        return Negotiation(None, None)
    for aead in request.aeadAlgorithms:
        if aead in supported:
            return Negotiation(PROTOCOL_NTPV4, aead)
    return Negotiation(PROTOCOL_NTPV4, None)


def buildResponse(
    negotiation: Negotiation,
    cookies: Sequence[bytes] = (),
    server: str | None = None,
    port: int | None = None,
) -> bytes:
    """
    The server's response.

    @param negotiation: what L{negotiate} chose.
    @param cookies: the new cookies (L{COOKIES_PER_RESPONSE} of them), sent
        only with a complete negotiation.
    @param server: the NTP server to send the client to (an NTPv4 Server
        Negotiation record), or L{None} for the server's own address.
    @param port: the NTP port to send the client to (an NTPv4 Port
        Negotiation record), or L{None} for 123.
    @raise ValueError: cookies with an incomplete negotiation, or none with
        a complete one, or a server name or port out of range.
    """
    if negotiation.nextProtocol is None:
        return Record(RecordType.NEXT_PROTOCOL, critical=True).toBytes() + _END
    records = [
        Record(
            RecordType.NEXT_PROTOCOL, _uint16s([negotiation.nextProtocol]), True
        ).toBytes()
    ]
    if negotiation.aead is None:
        if cookies:
            raise ValueError("cookies are only sent with an agreed AEAD algorithm")
        records.append(Record(RecordType.AEAD_ALGORITHM, critical=True).toBytes())
        return b"".join(records) + _END
    if not cookies:
        raise ValueError("a complete response carries cookies")
    records.append(
        Record(RecordType.AEAD_ALGORITHM, _uint16s([negotiation.aead]), True).toBytes()
    )
    if server is not None:
        checkServerName(server)
        records.append(
            Record(
                RecordType.SERVER_NEGOTIATION, server.encode("ascii"), True
            ).toBytes()
        )
    if port is not None:
        if not 0 < port < 65536:
            raise ValueError(f"port must be from 1 to 65535, not {port}")
        records.append(
            Record(RecordType.PORT_NEGOTIATION, _UINT16.pack(port), True).toBytes()
        )
    records.extend(
        Record(RecordType.NEW_COOKIE, cookie).toBytes() for cookie in cookies
    )
    return b"".join(records) + _END


def checkServerName(server: str) -> None:
    """
    Check that C{server} can be sent in an NTPv4 Server Negotiation record:
    an IPv4 or IPv6 address, or a host name, of at most L{MAX_SERVER_NAME}
    characters.

    @raise ValueError: it cannot.
    """
    if (
        not server.isascii()
        or not _hostOrAddress(server)
        or len(server) > MAX_SERVER_NAME
    ):
        raise ValueError(f"{server!r} is neither a host name nor an address")


def buildErrorResponse(code: ErrorCode) -> bytes:
    """
    A response that refuses the request with error C{code}.
    """
    return Record(RecordType.ERROR, _UINT16.pack(code), True).toBytes() + _END


def buildRequest(
    aeads: Sequence[int] = SUPPORTED_AEADS,
    server: str | None = None,
    port: int | None = None,
) -> bytes:
    """
    A client's request: NTPv4 as next protocol, the AEAD algorithms
    C{aeads} in order of preference (both records critical, as chrony sends
    them), optionally the NTP server and port it would like, End of
    Message.
    """
    if not aeads:
        raise ValueError("a request offers at least one AEAD algorithm")
    records = [
        Record(RecordType.NEXT_PROTOCOL, _uint16s([PROTOCOL_NTPV4]), True),
        Record(RecordType.AEAD_ALGORITHM, _uint16s(aeads), True),
    ]
    if server is not None:
        records.append(Record(RecordType.SERVER_NEGOTIATION, server.encode("ascii")))
    if port is not None:
        records.append(Record(RecordType.PORT_NEGOTIATION, _UINT16.pack(port)))
    return b"".join(record.toBytes() for record in records) + _END


class NTSKEError(Exception):
    """
    Base of the reasons an NTS key exchange fails, for a client.
    """


class NTSKEServerError(NTSKEError):
    """
    The server answered with an Error record, or with a Warning record
    (which, as RFC 8915 section 4.1.4 asks of warnings a client does not
    recognise, and none are defined, fails the exchange too).

    @ivar code: the error or warning code.
    @ivar warning: whether it was a Warning record.
    """

    def __init__(self, code: int, warning: bool = False) -> None:
        self.code = code
        self.warning = warning
        if warning:
            text = f"the NTS-KE server sent warning {code}"
        else:
            meaning = ERROR_TEXT.get(ErrorCode(code)) if code in ERROR_TEXT else None
            text = f"the NTS-KE server sent error {code}" + (
                f" ({meaning})" if meaning else ""
            )
        super().__init__(text)


class NTSKEBadResponse(NTSKEError):
    """
    The server's response is malformed, or does not give what NTS needs
    (NTPv4, an AEAD algorithm the client offered, at least one cookie).
    """


@dataclass(frozen=True, slots=True)
class KEResponse:
    """
    What a server's response gave.

    @ivar aead: the AEAD algorithm the server chose.
    @ivar cookies: the cookies (at most L{MAX_COOKIES}), in order.
    @ivar server: the NTP server to use, when the server named one.
    @ivar port: the NTP port to use, when the server named one.
    @ivar ignoredCookies: cookies left out (too many, or a length that is
        not a multiple of 4 or is over L{MAX_COOKIE_SIZE}).
    """

    aead: int
    cookies: tuple[bytes, ...]
    server: str | None = None
    port: int | None = None
    ignoredCookies: int = 0


class KEResponseParser:
    """
    Reads one NTS-KE response, incrementally: L{feed} returns L{None} until
    the End of Message record has arrived, then the L{KEResponse}.

    @ivar offered: the AEAD algorithms the request offered.
    """

    def __init__(
        self, offered: Sequence[int] = SUPPORTED_AEADS, maxSize: int = MAX_RESPONSE
    ) -> None:
        self.offered = tuple(offered)
        self._reader = _RecordReader(maxSize)
        self._nextProtocol: tuple[int, ...] | None = None
        self._aead: tuple[int, ...] | None = None
        self._cookies: list[bytes] = []
        self._ignored = 0
        self._server: str | None = None
        self._port: int | None = None
        self._done = False

    def feed(self, data: bytes) -> KEResponse | None:
        """
        Add C{data} (any piece of the response); the response once complete.

        @raise NTSKEServerError: the server sent an Error or Warning record.
        @raise NTSKEBadResponse: the response is malformed or unusable.
        """
        if not data:
            return None
        if self._done:
            raise NTSKEBadResponse("bytes after the end of the response")
        try:
            records = self._reader.feed(data)
            for index, record in enumerate(records):
                if record.type == RecordType.END_OF_MESSAGE:
                    self._done = True
                    if index + 1 < len(records) or self._reader.pending:
                        raise NTSKEBadResponse("bytes after the End of Message record")
                    return self._finish(record)
                self._record(record)
        except OverflowError as e:
            self._done = True
            raise NTSKEBadResponse(str(e)) from None
        except NTSKEError:
            self._done = True
            raise
        return None

    def _record(self, record: Record) -> None:
        kind, body = record.type, record.body
        if kind in (RecordType.ERROR, RecordType.WARNING):
            if len(body) != 2:
                raise NTSKEBadResponse(
                    f"an {RecordType(kind).name} record has {len(body)} bytes, not 2"
                )
            raise NTSKEServerError(
                _UINT16.unpack(body)[0], warning=kind == RecordType.WARNING
            )
        if kind == RecordType.NEXT_PROTOCOL:
            if self._nextProtocol is not None:
                raise NTSKEBadResponse("two Next Protocol records")
            if len(body) % 2:
                raise NTSKEBadResponse("a Next Protocol record of odd length")
            self._nextProtocol = _readUint16s(body)
        elif kind == RecordType.AEAD_ALGORITHM:
            if self._aead is not None:
                raise NTSKEBadResponse("two AEAD Algorithm records")
            if len(body) % 2:
                raise NTSKEBadResponse("an AEAD Algorithm record of odd length")
            self._aead = _readUint16s(body)
        elif kind == RecordType.NEW_COOKIE:
            if (
                not body
                or len(body) % 4
                or len(body) > MAX_COOKIE_SIZE
                or len(self._cookies) >= MAX_COOKIES
            ):
                self._ignored += 1
            else:
                self._cookies.append(body)
        elif kind == RecordType.SERVER_NEGOTIATION:
            if self._server is not None:
                raise NTSKEBadResponse("two NTPv4 Server Negotiation records")
            self._server = _serverName(body, NTSKEBadResponse)
        elif kind == RecordType.PORT_NEGOTIATION:
            if self._port is not None:
                raise NTSKEBadResponse("two NTPv4 Port Negotiation records")
            self._port = _portNumber(body, NTSKEBadResponse)
        elif record.critical:
            raise NTSKEBadResponse(f"unrecognised critical record of type {kind}")

    def _finish(self, end: Record) -> KEResponse:
        if not end.critical or end.body:
            raise NTSKEBadResponse(
                "the End of Message record must be critical with no body"
            )
        if self._nextProtocol is None:
            raise NTSKEBadResponse("no Next Protocol record")
        if self._nextProtocol != (PROTOCOL_NTPV4,):
            if not self._nextProtocol:
                raise NTSKEBadResponse("the server does not speak NTPv4 over NTS")
            raise NTSKEBadResponse(
                f"the server chose next protocols {list(self._nextProtocol)},"
                " not NTPv4 alone"
            )
        if self._aead is None:
            raise NTSKEBadResponse("no AEAD Algorithm record")
        if not self._aead:
            raise NTSKEBadResponse(
                "the server supports none of the AEAD algorithms offered"
            )
        if len(self._aead) != 1 or self._aead[0] not in self.offered:
            raise NTSKEBadResponse(
                f"the server chose AEAD algorithms {list(self._aead)},"
                f" not one of {list(self.offered)}"
            )
        if not self._cookies:
            raise NTSKEBadResponse(
                "no usable cookie in the response"
                + (f" ({self._ignored} left out)" if self._ignored else "")
            )
        if self._server is not None and not _hostOrAddress(self._server):
            raise NTSKEBadResponse(
                f"the NTPv4 server {self._server!r} is neither a host name nor"
                " an address"
            )
        return KEResponse(
            aead=self._aead[0],
            cookies=tuple(self._cookies),
            server=self._server,
            port=self._port,
            ignoredCookies=self._ignored,
        )


def _hostOrAddress(name: str) -> bool:
    """
    Whether C{name} is an IPv4 or IPv6 address, or a host name of letters,
    digits, hyphens and dots.
    """
    try:
        ipaddress.ip_address(name)
    except ValueError:
        pass
    else:
        return True
    labels = name.removesuffix(".").split(".")
    return all(
        0 < len(label) <= 63
        and not label.startswith("-")
        and not label.endswith("-")
        and all(c.isascii() and (c.isalnum() or c == "-") for c in label)
        for label in labels
    )
