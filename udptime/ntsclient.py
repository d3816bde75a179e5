"""
udptime's NTS client: the key exchange over TLS, and authenticated NTP
queries with its keys and cookies::

    from twisted.internet import defer, task
    from udptime.ntsclient import ntsKeyExchange, ntsQuery

    async def main(reactor):
        ke = await ntsKeyExchange(reactor, "time.example.net")
        for result in await ntsQuery(reactor, ke, count=3):
            print(result.text, result.offset)

    task.react(lambda reactor: defer.Deferred.fromCoroutine(main(reactor)))

L{ntsKeyExchange} verifies the server's certificate against the system's
trust store, or the CA certificates of a file, for the name asked (or
C{serverName}), insists on TLS 1.3 and ALPN C{ntske/1}, and fails with a
distinct error for each way it can fail: L{NTSKEConnectionError},
L{NTSKETLSError}, L{NTSKECertificateError}, L{NTSKEServerError} (an Error
or Warning record, with its code), L{NTSKEBadResponse},
L{NTSKETimeout}.

L{ntsQuery} makes C{count} queries to the NTP server the key exchange
named, through L{udptime.client.query} with L{NTSClientCodec}, each with a
fresh cookie, asking for as many new cookies as keep 8 in hand.  A reply
whose authenticator fails is ignored like any datagram that is not the
reply; when no authentic reply comes the query fails with
L{NTSAuthenticationError}, which says how many replies failed
authentication.  An NTS NAK fails it with L{NTSNakReceived}: the server
cannot read the cookies, a new key exchange is needed.

The NTS work itself is in pure functions (L{udptime.nts.buildClientRequest},
L{udptime.nts.readReply}); L{NTSClientCodec} adapts them to the client
codec interface.
"""

from __future__ import annotations

import dataclasses
import os
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final

from cryptography import x509
from cryptography.hazmat.primitives.ciphers.aead import AESSIV
from OpenSSL import SSL
from OpenSSL.crypto import X509
from twisted.internet import error, ssl
from twisted.internet._sslverify import IOpenSSLTrustRoot
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.interfaces import IHandshakeListener, IProtocol
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.python.failure import Failure
from zope.interface import implementer

from udptime.address import formatAddress
from udptime.client import QueryReactor, query
from udptime.clock import WallClock, systemClock
from udptime.ntp import NTP_PORT, NTPClientCodec
from udptime.nts import (
    MAX_COOKIES,
    NotOurReply,
    NTSNakReply,
    ReplyNotAuthenticated,
    buildClientRequest,
    readReply,
)
from udptime.ntske import (
    ALPN_PROTOCOL,
    EXPORTER_LABEL,
    KEY_SIZES,
    NTSKE_PORT,
    SUPPORTED_AEADS,
    KEResponse,
    KEResponseParser,
    NTSKEBadResponse,
    NTSKEError,
    NTSKEServerError,
    buildRequest,
    exporterContext,
)
from udptime.reading import (
    QueryError,
    QueryResult,
    QueryTimeout,
    Reading,
    ReplyMismatch,
    ServerRefused,
)

DEFAULT_KE_TIMEOUT: Final = 10.0
"""Seconds a key exchange may take, connection and TLS included."""

UNIQUE_IDENTIFIER_SIZE: Final = 32
"""Bytes of the unique identifier of each request."""

NONCE_SIZE: Final = 16
"""Bytes of each request's authenticator nonce."""

__all__ = [
    "KEResult",
    "NTSAuthenticationError",
    "NTSClientCodec",
    "NTSKEBadResponse",
    "NTSKECertificateError",
    "NTSKEConnectionError",
    "NTSKEError",
    "NTSKEServerError",
    "NTSKETLSError",
    "NTSKETimeout",
    "NTSNakReceived",
    "NTSNoCookies",
    "ntsKeyExchange",
    "ntsQuery",
    "trustRootFromFile",
]


class NTSKEConnectionError(NTSKEError):
    """
    No TCP connection to the NTS-KE server (refused, unreachable, or a name
    that does not resolve).
    """


class NTSKETLSError(NTSKEError):
    """
    The TLS handshake failed for another reason than the certificate (no
    TLS 1.3, no ALPN C{ntske/1}, not TLS at all), or the connection closed
    during it.
    """


class NTSKECertificateError(NTSKEError):
    """
    The server's certificate is not trusted, or not for the name asked.
    """


class NTSKETimeout(NTSKEError):
    """
    The key exchange did not finish in time.
    """


@dataclass(frozen=True)
class KEResult:
    """
    What a key exchange gives: where to send NTP requests, the session keys
    and the cookies.

    @ivar server: the NTP server: the one the KE server named, or the
        address of the KE server itself.
    @ivar port: the NTP port: the one the KE server named, or 123.
    @ivar aead: the AEAD algorithm agreed.
    @ivar c2s: the client-to-server key.
    @ivar s2c: the server-to-client key.
    @ivar cookies: the cookies.
    @ivar keServer: the KE server, as C{host:port}, for messages.
    """

    server: str
    port: int
    aead: int
    c2s: bytes
    s2c: bytes
    cookies: tuple[bytes, ...]
    keServer: str


def trustRootFromFile(path: str) -> IOpenSSLTrustRoot:
    """
    A trust root of the CA certificates in the PEM file C{path}.

    @raise NTSKECertificateError: the file holds no certificate or cannot be
        read.
    """
    try:
        with open(path, "rb") as f:
            certificates = x509.load_pem_x509_certificates(f.read())
    except (OSError, ValueError) as e:
        raise NTSKECertificateError(f"cannot read CA file {path}: {e}") from None
    trust: IOpenSSLTrustRoot = ssl.trustRootFromCertificates(
        [ssl.Certificate(X509.from_cryptography(c)) for c in certificates]
    )
    return trust


@implementer(IHandshakeListener)
class _KEClientProtocol(Protocol):
    """
    One key exchange, under TLS.
    """

    def __init__(self, exchange: _KeyExchange) -> None:
        self.exchange = exchange
        self.parser = KEResponseParser(exchange.offered)
        self.handshaken = False

    def handshakeCompleted(self) -> None:
        transport: Any = self.transport
        self.handshaken = True
        if transport.negotiatedProtocol != ALPN_PROTOCOL:
            self.exchange.fail(
                NTSKETLSError(
                    f"{self.exchange.where} did not agree to ALPN"
                    f" {ALPN_PROTOCOL.decode()}"
                )
            )
            transport.abortConnection()
            return
        transport.write(buildRequest(self.exchange.offered))

    def dataReceived(self, data: bytes) -> None:
        if self.exchange.finished:
            return
        transport: Any = self.transport
        try:
            response = self.parser.feed(data)
        except NTSKEError as e:
            self.exchange.fail(e)
            transport.abortConnection()
            return
        if response is None:
            return
        try:
            self.exchange.succeed(response, transport)
        finally:
            transport.loseConnection()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self.exchange.finished:
            return
        self.exchange.fail(self._why(reason))

    def _why(self, reason: Failure) -> NTSKEError:
        where = self.exchange.where
        if reason.check(ssl.VerificationError) is not None:
            return NTSKECertificateError(
                f"the certificate of {where} is not for"
                f" {self.exchange.serverName!r}: {reason.getErrorMessage()}"
            )
        if reason.check(SSL.Error) is not None:
            text = reason.getErrorMessage()
            if "certificate verify failed" in text:
                return NTSKECertificateError(
                    f"the certificate of {where} is not trusted: {text}"
                )
            return NTSKETLSError(f"TLS with {where} failed: {text}")
        if self.handshaken:
            return NTSKEBadResponse(
                f"{where} closed the connection before the end of its response"
            )
        return NTSKETLSError(
            f"{where} closed the connection during the TLS handshake"
            f" ({reason.getErrorMessage()})"
        )


class _KeyExchange:
    """
    One key exchange in progress: its deadline and its outcome.
    """

    def __init__(
        self,
        reactor: Any,
        host: str,
        port: int,
        serverName: str,
        offered: Sequence[int],
        timeout: float,
    ) -> None:
        self.host = host
        self.port = port
        self.serverName = serverName
        self.offered = tuple(offered)
        self.where = formatAddress(host, port)
        self.finished = False
        self.deferred: Deferred[KEResult] = Deferred(self._cancel)
        self.connecting: Deferred[IProtocol] | None = None
        self.protocol: _KEClientProtocol | None = None
        self.timer = reactor.callLater(timeout, self._expire, timeout)

    def succeed(self, response: KEResponse, transport: Any) -> None:
        connection: SSL.Connection = transport.getHandle()
        size = KEY_SIZES[response.aead]
        c2s = connection.export_keying_material(
            EXPORTER_LABEL, size, exporterContext(response.aead, False)
        )
        s2c = connection.export_keying_material(
            EXPORTER_LABEL, size, exporterContext(response.aead, True)
        )
        server = response.server
        if server is None:
            peer = transport.getPeer()
            server = getattr(peer, "host", self.host)
        result = KEResult(
            server=server,
            port=NTP_PORT if response.port is None else response.port,
            aead=response.aead,
            c2s=c2s,
            s2c=s2c,
            cookies=response.cookies,
            keServer=self.where,
        )
        self._end()
        self.deferred.callback(result)

    def fail(self, reason: BaseException) -> None:
        if self.finished:
            return
        self._end()
        self.deferred.errback(reason)

    def connectFailed(self, reason: Failure) -> None:
        if self.finished:
            return
        if reason.check(error.DNSLookupError) is not None:
            why = f"cannot resolve {self.host!r}"
        else:
            why = reason.getErrorMessage()
        self.fail(NTSKEConnectionError(f"cannot connect to {self.where}: {why}"))

    def _end(self) -> None:
        self.finished = True
        if self.timer.active():
            self.timer.cancel()

    def _expire(self, timeout: float) -> None:
        if self.finished:
            return
        self.fail(NTSKETimeout(f"no NTS-KE answer from {self.where} in {timeout:g} s"))
        self._abort()

    def _abort(self) -> None:
        if self.connecting is not None and not self.connecting.called:
            self.connecting.cancel()
        if self.protocol is not None and self.protocol.transport is not None:
            transport: Any = self.protocol.transport
            transport.abortConnection()

    def _cancel(self, deferred: Deferred[KEResult]) -> None:
        self.finished = True
        if self.timer.active():
            self.timer.cancel()
        self._abort()


def ntsKeyExchange(
    reactor: Any,
    host: str,
    port: int = NTSKE_PORT,
    *,
    caFile: str | None = None,
    trustRoot: IOpenSSLTrustRoot | None = None,
    serverName: str | None = None,
    timeout: float = DEFAULT_KE_TIMEOUT,
    aeads: Sequence[int] = SUPPORTED_AEADS,
) -> Deferred[KEResult]:
    """
    Make an NTS key exchange with the NTS-KE server at C{host}.

    @param reactor: a reactor with TCP, timers and name resolution.
    @param host: the server's name or address.
    @param port: its NTS-KE port.
    @param caFile: a PEM file of the CA certificates to trust instead of the
        system's (for a private CA, or a self-signed certificate).
    @param trustRoot: a trust root to use instead (for tests).
    @param serverName: the name the certificate must carry (default:
        C{host}; an address is checked against the certificate's IP
        addresses).
    @param timeout: seconds the exchange may take in all.
    @param aeads: the AEAD algorithms to offer.
    @return: a L{Deferred} firing with a L{KEResult}, or failing with an
        L{NTSKEError}: L{NTSKEConnectionError}, L{NTSKETLSError},
        L{NTSKECertificateError}, L{NTSKEServerError}, L{NTSKEBadResponse} or
        L{NTSKETimeout}.
    """
    if caFile is not None and trustRoot is not None:
        raise ValueError("give caFile or trustRoot, not both")
    if caFile is not None:
        trustRoot = trustRootFromFile(caFile)
    name = serverName or host
    options = ssl.optionsForClientTLS(
        name,
        trustRoot=trustRoot,
        acceptableProtocols=[ALPN_PROTOCOL],
        extraCertificateOptions={"raiseMinimumTo": ssl.TLSVersion.TLSv1_3},
    )
    exchange = _KeyExchange(reactor, host, port, name, aeads, timeout)

    def build() -> _KEClientProtocol:
        protocol = exchange.protocol = _KEClientProtocol(exchange)
        return protocol

    endpoint = wrapClientTLS(options, HostnameEndpoint(reactor, host, port, timeout))
    connecting: Deferred[IProtocol] = endpoint.connect(Factory.forProtocol(build))
    exchange.connecting = connecting
    connecting.addErrback(exchange.connectFailed)
    return exchange.deferred


class NTSNakReceived(ServerRefused):
    """
    The server answered with an NTS NAK: it cannot read the cookie (its keys
    changed, or the cookie is too old); a new key exchange is needed.
    """


class NTSAuthenticationError(QueryTimeout):
    """
    No authentic reply came: replies that echoed the request's unique
    identifier failed authentication (forged or damaged on the way).
    """


class NTSNoCookies(QueryError):
    """
    No cookie is left: a new key exchange is needed.
    """


@dataclass(frozen=True, slots=True)
class _Pending:
    """
    What a request's reply is checked against.
    """

    origin: int
    uniqueIdentifier: bytes


class NTSClientCodec:
    """
    The NTS client as a client codec for L{udptime.client.query}: an NTPv4
    request authenticated with a cookie of a key exchange, and the reply
    checked, its fresh cookies kept.

    @ivar cookies: the cookies in hand, oldest first.
    @ivar authenticationFailures: replies that echoed a request's unique
        identifier but failed authentication.
    @ivar naks: NTS NAKs received.
    """

    name = "nts"

    def __init__(
        self,
        ke: KEResult,
        randomBytes: Callable[[int], bytes] = os.urandom,
    ) -> None:
        self.ke = ke
        self.defaultPort = ke.port
        self.randomBytes = randomBytes
        self.cookies: deque[bytes] = deque(ke.cookies[-MAX_COOKIES:])
        self.authenticationFailures = 0
        self.naks = 0
        self._c2s = AESSIV(ke.c2s)
        self._s2c = AESSIV(ke.s2c)
        self._ntp = NTPClientCodec(4, randomBytes=randomBytes)

    def buildRequest(self, sentAt: float) -> tuple[bytes, _Pending]:
        """
        An NTS request with the oldest cookie in hand, and placeholders for
        as many more as keep L{MAX_COOKIES} in hand.

        @raise NTSNoCookies: none is left.
        """
        if not self.cookies:
            where = formatAddress(self.ke.server, self.ke.port)
            raise NTSNoCookies(
                f"no NTS cookie left for {where}: a new key exchange is needed"
            )
        cookie = self.cookies.popleft()
        placeholders = max(MAX_COOKIES - len(self.cookies) - 1, 0)
        header, origin = self._ntp.buildRequest(sentAt)
        uniqueIdentifier = self.randomBytes(UNIQUE_IDENTIFIER_SIZE)
        request = buildClientRequest(
            header,
            cookie,
            placeholders,
            self._c2s,
            uniqueIdentifier,
            self.randomBytes(NONCE_SIZE),
        )
        return request, _Pending(origin, uniqueIdentifier)

    def parseReply(
        self, data: bytes, state: _Pending, sentAt: float, receivedAt: float
    ) -> Reading:
        """
        Authenticate and read a reply; keep its fresh cookies.

        @raise ReplyMismatch: not the reply to this request, or it failed
            authentication (counted in L{authenticationFailures}).
        @raise NTSNakReceived: the server sent an NTS NAK.
        """
        try:
            cookies, _ = readReply(data, state.uniqueIdentifier, self._s2c)
        except NotOurReply as e:
            raise ReplyMismatch(str(e)) from None
        except NTSNakReply:
            self.naks += 1
            raise NTSNakReceived(
                "sent an NTS NAK: it cannot read the cookie;"
                " a new NTS key exchange is needed"
            ) from None
        except ReplyNotAuthenticated as e:
            self.authenticationFailures += 1
            raise ReplyMismatch(f"failed NTS authentication: {e}") from None
        space = MAX_COOKIES - len(self.cookies)
        self.cookies.extend(cookies[:space])
        reading = self._ntp.parseReply(data, state.origin, sentAt, receivedAt)
        details = dict(reading.details, nts=True, cookies=len(self.cookies))
        return dataclasses.replace(reading, details=details)


async def _queries(
    reactor: QueryReactor,
    codec: NTSClientCodec,
    count: int,
    timeout: float,
    retries: int,
    clock: WallClock,
) -> list[QueryResult]:
    ke = codec.ke
    results = []
    for _ in range(count):
        failures = codec.authenticationFailures
        try:
            result = await query(
                reactor,
                ke.server,
                codec,
                port=ke.port,
                timeout=timeout,
                retries=retries,
                clock=clock,
            )
        except QueryTimeout as e:
            failed = codec.authenticationFailures - failures
            if not failed:
                raise
            replies = "reply" if failed == 1 else "replies"
            raise NTSAuthenticationError(
                f"no authentic reply from {formatAddress(ke.server, ke.port)}:"
                f" {failed} {replies} failed authentication"
            ) from e
        results.append(result)
    return results


def ntsQuery(
    reactor: QueryReactor,
    ke: KEResult,
    *,
    count: int = 1,
    timeout: float = 1.0,
    retries: int = 3,
    clock: WallClock = systemClock,
    codec: NTSClientCodec | None = None,
) -> Deferred[list[QueryResult]]:
    """
    Make C{count} authenticated NTP queries, one after the other, to the NTP
    server of the key exchange C{ke}, each with a fresh cookie.

    @param codec: the L{NTSClientCodec} holding the cookies (one of C{ke}
        when not given), to keep using them across calls.
    @return: a L{Deferred} firing with the results, in order, or failing
        with L{NTSAuthenticationError} (no authentic reply, and some replies
        failed authentication), L{NTSNakReceived}, L{NTSNoCookies}, or what
        L{query} fails with (L{QueryTimeout} when nothing came back).
    """
    if count < 1:
        raise ValueError(f"count must be at least 1, not {count}")
    if codec is None:
        codec = NTSClientCodec(ke)
    return Deferred.fromCoroutine(
        _queries(reactor, codec, count, timeout, retries, clock)
    )
