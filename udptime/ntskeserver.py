"""
The NTS-KE server: NTS key establishment (RFC 8915 section 4) over TLS 1.3.

A client connects over TCP (port 4460), makes a TLS 1.3 handshake with
ALPN C{ntske/1}, sends its request; the server answers with the negotiated
protocol and algorithm, 8 cookies sealed with the current server key
(L{udptime.ntscookie}), optionally the NTP server and port to use, and
closes the connection.  The cookies hold the two session keys both ends
export from the TLS session (RFC 5705, label C{EXPORTER-network-time-security}).

Bounds, so that the port survives anything sent to it:

  - admission, before any TLS work: at most C{maxConnections} sessions at
    once (the kernel's listen backlog is as long), and a token bucket per
    client (L{udptime.policy.SourceLimiter}: IPv4 address or IPv6 prefix;
    a key exchange is costly and needed rarely, as a client's cookies last
    weeks); a refused connection is closed at once, and counted;
  - a deadline per connection (C{timeout}, 10 s by default) for the
    handshake, the request and the response together;
  - a maximum request size (1 KiB by default);
  - TLS 1.3 only, and a connection whose client did not agree to ALPN
    C{ntske/1} is closed after the handshake;
  - log lines about failures are bounded in rate; counters
    (L{NTSKECounters}) count every outcome.

L{ntsKEService} builds the twistd service from a port, certificate and
private key files, the L{CookieKeys}, and the negotiation settings.  The
certificate file may hold a chain (the server's certificate first); both
files are read again when they change, so a renewed certificate is served
without a restart.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, Final

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from OpenSSL import SSL
from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import Service
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.endpoints import TCP4ServerEndpoint, TCP6ServerEndpoint
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import (
    IAddress,
    IDelayedCall,
    IHandshakeListener,
    IOpenSSLServerConnectionCreator,
)
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.internet.task import LoopingCall
from twisted.logger import Logger, LogLevel
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure
from zope.interface import implementer

from udptime.address import formatAddress
from udptime.counters import CounterSet
from udptime.ntscookie import CookieKeys, SessionKeys
from udptime.ntske import (
    ALPN_PROTOCOL,
    COOKIES_PER_RESPONSE,
    DEFAULT_MAX_REQUEST,
    EXPORTER_LABEL,
    KEY_SIZES,
    ErrorCode,
    KERequestParser,
    KERequestRefused,
    buildErrorResponse,
    buildResponse,
    checkServerName,
    exporterContext,
    negotiate,
)
from udptime.policy import ADMIT, DEFAULT_IPV6_PREFIX, RateLimiter, SourceLimiter
from udptime.service import ServiceCannotListen

DEFAULT_TIMEOUT: Final = 10.0
"""Seconds a connection may last, handshake and exchange together."""

DEFAULT_MAX_CONNECTIONS: Final = 100
"""Sessions at once, at most (chrony's default, C{ntsserverconnections})."""

DEFAULT_RATE: Final = 1 / 64
"""Sustained key exchanges per second for one client: one every 64 s."""

DEFAULT_BURST: Final = 8
"""Key exchanges one client may make back to back."""

DEFAULT_MAX_CLIENTS: Final = 10_000
"""Clients in the rate limiter's table."""

DEFAULT_RELOAD_INTERVAL: Final = 60.0
"""Seconds between two looks at the certificate and key files."""

LOG_RATE: Final = 0.2
"""Log lines per second about failed sessions, sustained."""

LOG_BURST: Final = 10
"""Log lines about failed sessions back to back."""

COUNTER_NAMES: Final = (
    "connections",
    "sessions",
    "unsupported",
    "errorsSent",
    "handshakeFailures",
    "incomplete",
    "timedOut",
    "refusedRate",
    "refusedCapacity",
    "internalErrors",
)


class NTSKECounters(CounterSet):
    """
    What the NTS-KE server did.

    @ivar connections: connections admitted.
    @ivar sessions: key exchanges completed: keys exported, cookies sent.
    @ivar unsupported: requests answered without cookies: the client offered
        no protocol (NTPv4) or no AEAD algorithm the server supports.
    @ivar errorsSent: requests answered with an Error record (bad request,
        unrecognised critical record, internal error).
    @ivar handshakeFailures: connections closed before a TLS 1.3 handshake
        with ALPN C{ntske/1} completed (not TLS, an old TLS version, no
        ALPN, a client that rejected the certificate, or closed early).
    @ivar incomplete: connections closed by the client after the handshake
        and before the end of a request (among them clients that reject the
        certificate's name after the handshake).
    @ivar timedOut: connections closed at the deadline.
    @ivar refusedRate: connections closed at once: the client is over its
        rate.
    @ivar refusedCapacity: connections closed at once: too many sessions.
    @ivar internalErrors: bugs: exceptions caught around a request.
    """

    __slots__ = COUNTER_NAMES

    connections: int
    sessions: int
    unsupported: int
    errorsSent: int
    handshakeFailures: int
    incomplete: int
    timedOut: int
    refusedRate: int
    refusedCapacity: int
    internalErrors: int


class NTSKEConfigurationError(ValueError):
    """
    The certificate or private key cannot be used.
    """


def _selectProtocol(connection: SSL.Connection, offered: list[bytes]) -> Any:
    """
    ALPN: C{ntske/1} when offered; otherwise the handshake goes on without a
    protocol, and the session closes after it.
    """
    if ALPN_PROTOCOL in offered:
        return ALPN_PROTOCOL
    return SSL.NO_OVERLAPPING_PROTOCOLS


@implementer(IOpenSSLServerConnectionCreator)
class ServerTLS:
    """
    The TLS settings of an NTS-KE server: TLS 1.3 only, ALPN C{ntske/1}, a
    certificate (with its chain) and its private key.

    @ivar context: the OpenSSL context every session is made from.
    """

    def __init__(self, context: SSL.Context) -> None:
        self.context = context

    def serverConnectionForTLS(self, tlsProtocol: object) -> SSL.Connection:
        """
        A new server-side TLS connection.
        """
        return SSL.Connection(self.context, None)


def loadServerTLS(certificate: str, privateKey: str) -> ServerTLS:
    """
    The TLS settings of an NTS-KE server with the certificate (and the
    chain after it) from the PEM file C{certificate} and the unencrypted PEM
    private key from C{privateKey}.

    @raise NTSKEConfigurationError: a file cannot be read or used, or the
        key is not the certificate's.
    """
    try:
        with open(certificate, "rb") as f:
            chain = x509.load_pem_x509_certificates(f.read())
    except (OSError, ValueError) as e:
        raise NTSKEConfigurationError(
            f"cannot read certificate file {certificate}: {e}"
        ) from None
    try:
        with open(privateKey, "rb") as f:
            key = serialization.load_pem_private_key(f.read(), password=None)
    except (OSError, ValueError, TypeError) as e:
        raise NTSKEConfigurationError(
            f"cannot read private key file {privateKey}: {e}"
        ) from None
    publicKey = (
        serialization.Encoding.DER,
        serialization.PublicFormat.SubjectPublicKeyInfo,
    )
    if chain[0].public_key().public_bytes(*publicKey) != key.public_key().public_bytes(
        *publicKey
    ):
        raise NTSKEConfigurationError(
            f"the private key in {privateKey} is not the key of the certificate"
            f" in {certificate}"
        )
    try:
        context = SSL.Context(SSL.TLS_METHOD)
        context.set_min_proto_version(SSL.TLS1_3_VERSION)
        context.use_certificate(chain[0])
        for intermediate in chain[1:]:
            context.add_extra_chain_cert(intermediate)
        context.use_privatekey(key)  # type: ignore[arg-type]
        context.check_privatekey()
        context.set_alpn_select_callback(_selectProtocol)
    except (SSL.Error, ValueError, TypeError) as e:
        raise NTSKEConfigurationError(
            f"cannot use {certificate} and {privateKey}: {e}"
        ) from None
    return ServerTLS(context)


def certificateSummary(certificate: str) -> str:
    """
    The names and the expiry of the first certificate in C{certificate},
    for the log.
    """
    with open(certificate, "rb") as f:
        leaf = x509.load_pem_x509_certificates(f.read())[0]
    try:
        extension = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        names = [str(n) for n in extension.value.get_values_for_type(x509.DNSName)]
        names += [str(n) for n in extension.value.get_values_for_type(x509.IPAddress)]
    except x509.ExtensionNotFound:
        names = [leaf.subject.rfc4514_string()]
    return (
        f"{', '.join(names)}, valid until {leaf.not_valid_after_utc:%Y-%m-%d %H:%M} UTC"
    )


class _BoundedLog:
    """
    Log lines about failures at a bounded rate; the next line logged says
    how many were left out.
    """

    def __init__(self, log: Logger, clock: Callable[[], float]) -> None:
        self.log = log
        self.clock = clock
        self.limit = RateLimiter(LOG_RATE, LOG_BURST)
        self._logged = 0

    def __call__(self, message: str, **fields: object) -> None:
        """
        Log C{message} as a warning, unless too many lines were logged
        lately.
        """
        suppressed = self._admit()
        if suppressed is None:
            return
        if suppressed:
            message += " ({suppressed} similar lines left out)"
        self.log.warn(message, suppressed=suppressed, **fields)

    def failure(self, message: str, **fields: object) -> None:
        """
        Log C{message} with the exception being handled, unless too many
        lines were logged lately.
        """
        suppressed = self._admit()
        if suppressed is None:
            return
        if suppressed:
            message += " ({suppressed} similar lines left out)"
        self.log.failure(
            message, None, LogLevel.critical, suppressed=suppressed, **fields
        )

    def _admit(self) -> int | None:
        """
        L{None} when no line may be logged now; otherwise how many were
        left out since the last one.
        """
        limit = self.limit
        if not limit.admit(self.clock()):
            return None
        suppressed = limit.refused - self._logged
        self._logged = limit.refused
        return suppressed


@implementer(IHandshakeListener)
class NTSKEServerProtocol(Protocol):
    """
    One NTS-KE session, under TLS (the transport is a
    L{TLSMemoryBIOProtocol<twisted.protocols.tls.TLSMemoryBIOProtocol>}).
    """

    def __init__(self, factory: NTSKEServerFactory, peer: str) -> None:
        self.factory = factory
        self.peer = peer
        self.parser = KERequestParser(factory.maxRequest)
        self.handshaken = False
        self.finished = False
        self.timedOut = False
        self.deadline: IDelayedCall | None = None

    def connectionMade(self) -> None:
        """
        Count the session and start its deadline.
        """
        factory = self.factory
        factory.active += 1
        factory.counters.connections += 1
        self.deadline = factory.reactor.callLater(factory.timeout, self._expire)

    def handshakeCompleted(self) -> None:
        """
        The TLS handshake is done: go on only with ALPN C{ntske/1}.
        """
        transport: Any = self.transport
        if transport.negotiatedProtocol != ALPN_PROTOCOL:
            self.finished = True
            self.factory.counters.handshakeFailures += 1
            self.factory.logProblem(
                "NTS-KE: {peer} did not agree to ALPN ntske/1", peer=self.peer
            )
            transport.abortConnection()
            return
        self.handshaken = True

    def dataReceived(self, data: bytes) -> None:
        """
        Read the request; answer it once complete, or once known bad.
        """
        if self.finished or not self.handshaken:
            return
        try:
            self._read(data)
        except Exception:
            self.factory.counters.internalErrors += 1
            self.factory.logProblem.failure(
                "NTS-KE: failed to answer {peer}", peer=self.peer
            )
            if not self.finished:
                self._send(buildErrorResponse(ErrorCode.INTERNAL_SERVER_ERROR))

    def _read(self, data: bytes) -> None:
        factory = self.factory
        try:
            request = self.parser.feed(data)
        except KERequestRefused as refused:
            factory.counters.errorsSent += 1
            factory.logProblem(
                "NTS-KE: refused {peer}'s request: {reason}",
                peer=self.peer,
                reason=str(refused),
            )
            self._send(buildErrorResponse(refused.code))
            return
        if request is None:
            return
        negotiation = negotiate(request)
        if negotiation.aead is None or negotiation.nextProtocol is None:
            factory.counters.unsupported += 1
            self._send(buildResponse(negotiation))
            return
        keys = self._exportKeys(negotiation.aead)
        cookies = [factory.keys.seal(keys) for _ in range(COOKIES_PER_RESPONSE)]
        response = buildResponse(
            negotiation, cookies, server=factory.ntpServer, port=factory.ntpPort
        )
        factory.counters.sessions += 1
        self._send(response)

    def _exportKeys(self, aead: int) -> SessionKeys:
        transport: Any = self.transport
        connection: SSL.Connection = transport.getHandle()
        size = KEY_SIZES[aead]
        return SessionKeys(
            connection.export_keying_material(
                EXPORTER_LABEL, size, exporterContext(aead, False)
            ),
            connection.export_keying_material(
                EXPORTER_LABEL, size, exporterContext(aead, True)
            ),
        )

    def _send(self, response: bytes) -> None:
        self.finished = True
        transport: Any = self.transport
        transport.write(response)
        transport.loseConnection()

    def _expire(self) -> None:
        self.deadline = None
        self.timedOut = True
        self.factory.counters.timedOut += 1
        self.factory.logProblem("NTS-KE: session with {peer} timed out", peer=self.peer)
        transport: Any = self.transport
        transport.abortConnection()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        """
        The session is over: count a session that ended before its
        response.
        """
        factory = self.factory
        factory.active -= 1
        deadline, self.deadline = self.deadline, None
        if deadline is not None and deadline.active():
            deadline.cancel()
        if self.timedOut or self.finished:
            return
        if self.handshaken:
            factory.counters.incomplete += 1
            factory.logProblem(
                "NTS-KE: {peer} closed the connection before the end of its"
                " request: {reason}",
                peer=self.peer,
                reason=reason.getErrorMessage(),
            )
        else:
            factory.counters.handshakeFailures += 1
            factory.logProblem(
                "NTS-KE: TLS handshake with {peer} failed: {reason}",
                peer=self.peer,
                reason=reason.getErrorMessage(),
            )


class NTSKEServerFactory(Factory):
    """
    Makes L{NTSKEServerProtocol}s (the protocol under TLS) and holds what
    they share.

    @ivar keys: the server keys that seal the cookies.
    @ivar ntpServer: the NTP server the responses name (NTPv4 Server
        Negotiation), or L{None} for this host.
    @ivar ntpPort: the NTP port the responses name (NTPv4 Port Negotiation),
        or L{None} for 123.
    @ivar timeout: seconds a connection may last.
    @ivar maxRequest: bytes read of a request, at most.
    @ivar active: sessions open now.
    @ivar counters: the L{NTSKECounters}.
    """

    log = Logger()
    noisy = False  # no "Starting factory" line

    def __init__(
        self,
        keys: CookieKeys,
        reactor: Any,
        *,
        ntpServer: str | None = None,
        ntpPort: int | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        maxRequest: int = DEFAULT_MAX_REQUEST,
    ) -> None:
        self.keys = keys
        self.reactor = reactor
        self.ntpServer = ntpServer
        self.ntpPort = ntpPort
        self.timeout = timeout
        self.maxRequest = maxRequest
        self.active = 0
        self.counters = NTSKECounters()
        self.logProblem = _BoundedLog(self.log, reactor.seconds)

    def buildProtocol(self, addr: IAddress | None) -> NTSKEServerProtocol:
        """
        A session with the client at C{addr}.
        """
        return NTSKEServerProtocol(self, _hostOf(addr))


def _hostOf(addr: IAddress | None) -> str:
    if isinstance(addr, (IPv4Address, IPv6Address)):
        return addr.host
    return str(addr)


class NTSKEListenerFactory(Factory):
    """
    The listening port's factory: admits a connection (session cap, rate per
    client) before any TLS work, then wraps the session in TLS.

    @ivar server: the L{NTSKEServerFactory}.
    @ivar maxConnections: sessions at once, at most.
    @ivar limiter: the per-client rate limiter, or L{None}.
    @ivar tls: the TLS wrapper of new sessions.
    """

    noisy = False

    def __init__(
        self,
        server: NTSKEServerFactory,
        options: ServerTLS,
        *,
        maxConnections: int = DEFAULT_MAX_CONNECTIONS,
        limiter: SourceLimiter | None = None,
    ) -> None:
        self.server = server
        self.maxConnections = maxConnections
        self.limiter = limiter
        self.tls = TLSMemoryBIOFactory(options, False, server)

    def setTLS(self, options: ServerTLS) -> None:
        """
        Serve new sessions with the TLS options C{options} (a renewed
        certificate); sessions open now go on with the old ones.
        """
        self.tls = TLSMemoryBIOFactory(options, False, self.server)

    def buildProtocol(self, addr: IAddress | None) -> Protocol | None:
        """
        A TLS-wrapped session with the client at C{addr}, or L{None} (the
        port closes the connection at once) when it is refused.
        """
        server = self.server
        counters = server.counters
        if server.active >= self.maxConnections:
            counters.refusedCapacity += 1
            server.logProblem(
                "NTS-KE: refused {peer}: {count} sessions open",
                peer=_hostOf(addr),
                count=server.active,
            )
            return None
        if self.limiter is not None:
            host = _hostOf(addr)
            if self.limiter.admit(host, server.reactor.seconds()) != ADMIT:
                counters.refusedRate += 1
                server.logProblem("NTS-KE: refused {peer}: over its rate", peer=host)
                return None
        protocol: Protocol = self.tls.buildProtocol(addr)
        return protocol


class KECannotListen(ServiceCannotListen):
    """
    The NTS-KE service cannot listen on its TCP port.
    """

    def __str__(self) -> str:
        failure = self.socketError
        reason = getattr(failure, "strerror", None) or failure
        where = formatAddress(self.interface, self.port)
        return f"{self.service} service cannot listen on {where} (TCP): {reason}"


class NTSKEService(StreamServerEndpointService):
    """
    The NTS-KE server as a twistd service: the listening port, and a timer
    that reads the certificate and key files again when they change.

    @ivar listener: the L{NTSKEListenerFactory}.
    @ivar counters: the server's L{NTSKECounters}.
    """

    log = Logger()

    def __init__(
        self,
        endpoint: Any,
        listener: NTSKEListenerFactory,
        reactor: Any,
        certificate: str,
        privateKey: str,
        reloadInterval: float = DEFAULT_RELOAD_INTERVAL,
    ) -> None:
        StreamServerEndpointService.__init__(self, endpoint, listener)
        self.listener = listener
        self.counters = listener.server.counters
        self.reactor = reactor
        self.certificate = certificate
        self.privateKey = privateKey
        self.reloadInterval = reloadInterval
        self._stamp = self._filesStamp()
        self._reload: LoopingCall | None = None

    def _filesStamp(self) -> tuple[tuple[int, int, int], ...] | None:
        try:
            return tuple(
                (s.st_ino, s.st_size, s.st_mtime_ns)
                for s in (os.stat(self.certificate), os.stat(self.privateKey))
            )
        except OSError:
            return None

    def bind(self) -> None:
        """
        Listen now, if the service does not listen yet (twistd runs this
        before it runs the service, so that a port that cannot be had stops
        it at once).

        @raise KECannotListen: the port cannot be listened on.
        """
        if self._waitingForPort is not None:
            return
        # A TCP endpoint listens at once: a failure is raised here.
        self._raiseSynchronously = True
        try:
            StreamServerEndpointService.privilegedStartService(self)
        except CannotListenError as failure:
            self._waitingForPort = None
            raise KECannotListen(
                self.name or "nts-ke",
                failure.interface or "::",
                failure.port,
                failure.socketError,
            ) from None

    def unbind(self) -> None:
        """
        Stop listening, if L{bind} listened and the service has not started.
        """
        listening, self._waitingForPort = self._waitingForPort, None
        if listening is not None and not self.running:
            listening.addCallback(lambda port: port.stopListening())

    def privilegedStartService(self) -> None:
        """
        Listen (unless L{bind} did).
        """
        if self._waitingForPort is None:
            StreamServerEndpointService.privilegedStartService(self)
        else:
            Service.privilegedStartService(self)

    def startService(self) -> None:
        """
        Listen, and look at the certificate files every C{reloadInterval}.
        """
        StreamServerEndpointService.startService(self)
        self.log.info(
            "NTS-KE certificate: {summary}",
            summary=certificateSummary(self.certificate),
        )
        listening = self._waitingForPort
        if listening is not None:
            listening.addCallback(self._listening)
        loop = LoopingCall(self.reloadIfChanged)
        loop.clock = self.reactor
        loop.start(self.reloadInterval, now=False)
        self._reload = loop

    def _listening(self, port: Any) -> Any:
        """
        Log that the service listens (once the reactor runs: the line means
        "ready", as the UDP services' lines do).
        """
        if port is not None:
            self.reactor.callWhenRunning(self._logListening, port)
        return port

    def _logListening(self, port: Any) -> None:
        host = port.getHost()
        self.log.info(
            "udptime {service} service listening on {where} (TCP)",
            service=self.name or "nts-ke",
            where=formatAddress(host.host, host.port),
        )

    def stopService(self) -> Any:
        """
        Stop listening.
        """
        loop, self._reload = self._reload, None
        if loop is not None and loop.running:
            loop.stop()
        return StreamServerEndpointService.stopService(self)

    def reloadIfChanged(self) -> bool:
        """
        Read the certificate and key files again if they changed; whether
        new ones are served.  Files that cannot be used leave the old ones
        in service, and are logged.
        """
        stamp = self._filesStamp()
        if stamp is None or stamp == self._stamp:
            return False
        try:
            options = loadServerTLS(self.certificate, self.privateKey)
        except NTSKEConfigurationError as e:
            # The files may be half-way through an update: try again later,
            # and log each new state of the files once.
            self._stamp = stamp
            self.log.error("NTS-KE certificate not reloaded: {error}", error=str(e))
            return False
        self._stamp = stamp
        self.listener.setTLS(options)
        self.log.info(
            "NTS-KE certificate reloaded: {summary}",
            summary=certificateSummary(self.certificate),
        )
        return True


def ntsKEService(
    reactor: Any,
    port: int,
    certificate: str,
    privateKey: str,
    keys: CookieKeys,
    *,
    interface: str = "",
    ntpServer: str | None = None,
    ntpPort: int | None = None,
    maxConnections: int = DEFAULT_MAX_CONNECTIONS,
    limiter: SourceLimiter | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    maxRequest: int = DEFAULT_MAX_REQUEST,
    reloadInterval: float = DEFAULT_RELOAD_INTERVAL,
) -> NTSKEService:
    """
    The NTS-KE service for C{twistd udptime --nts-ke-port N
    --nts-certificate FILE --nts-private-key FILE}.

    @param port: the TCP port (L{NTSKE_PORT}, 4460, is the registered one;
        0 picks a free port).
    @param certificate: the PEM certificate file: the server's certificate,
        then its chain.
    @param privateKey: the PEM private key file (unencrypted).
    @param keys: the server keys that seal the cookies.
    @param interface: the address to listen on: empty for every IPv4 and
        IPv6 address (one dual-stack socket), or one address.
    @param ntpServer: the NTP server to send clients to, when it is not this
        host (a host name or address; NTPv4 Server Negotiation).
    @param ntpPort: the NTP port to send clients to, when it is not 123
        (NTPv4 Port Negotiation).
    @param maxConnections: sessions at once, at most.
    @param limiter: the per-client rate limiter; L{None} for the default
        (L{DEFAULT_RATE}, L{DEFAULT_BURST}).
    @param timeout: seconds a connection may last.
    @param maxRequest: bytes read of a request, at most.
    @param reloadInterval: seconds between two looks at the certificate and
        key files.
    @raise NTSKEConfigurationError: the certificate or key cannot be used.
    @raise ValueError: a negotiation setting is out of range.
    """
    if ntpPort is not None and not 0 < ntpPort < 65536:
        raise ValueError(f"the NTP port must be from 1 to 65535, not {ntpPort}")
    if ntpServer is not None:
        checkServerName(ntpServer)
    options = loadServerTLS(certificate, privateKey)
    if limiter is None:
        limiter = SourceLimiter(
            DEFAULT_RATE, DEFAULT_BURST, DEFAULT_MAX_CLIENTS, DEFAULT_IPV6_PREFIX
        )
    server = NTSKEServerFactory(
        keys,
        reactor,
        ntpServer=ntpServer,
        ntpPort=ntpPort,
        timeout=timeout,
        maxRequest=maxRequest,
    )
    listener = NTSKEListenerFactory(
        server, options, maxConnections=maxConnections, limiter=limiter
    )
    endpoint: Any
    if interface and ":" not in interface:
        endpoint = TCP4ServerEndpoint(
            reactor, port, backlog=maxConnections, interface=interface
        )
    else:
        endpoint = TCP6ServerEndpoint(
            reactor, port, backlog=maxConnections, interface=interface or "::"
        )
    return NTSKEService(
        endpoint, listener, reactor, certificate, privateKey, reloadInterval
    )
