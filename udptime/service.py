"""
Listening sockets as twistd services.

L{UDPListenService} binds its socket in C{privilegedStartService}, before
twistd drops privileges (C{--uid}/C{--gid}), so the standard ports below 1024
work with an unprivileged server.  It creates the socket itself rather than
calling C{listenUDP} so that:

  - the default, all-addresses socket is explicitly dual-stack
    (C{IPV6_V6ONLY} off), whatever the host's C{net.ipv6.bindv6only} says;
  - C{SO_REUSEPORT} can be set for several worker processes on one port.

On the reactors of L{twisted.internet.posixbase} (epoll, poll, select) the
socket is served by L{udptime.port.ServerPort}, a
L{twisted.internet.udp.Port} with a lean path for request/response services
and optional kernel receive timestamps; elsewhere it is handed to the
reactor with C{adoptDatagramPort}.
"""

from __future__ import annotations

import ipaddress
import socket
from typing import Any, cast

from twisted.application.service import Service
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IListeningPort, IReactorFDSet, IReactorSocket
from twisted.internet.posixbase import PosixReactorBase
from twisted.internet.protocol import DatagramProtocol
from twisted.logger import Logger

from udptime.address import formatAddress
from udptime.port import ServerPort
from udptime.server import UDPServerProtocol

ALL_INTERFACES = "::"
"""The default interface: every IPv6 and (dual-stack) IPv4 address."""

MAX_DATAGRAM = 65535
"""Receive buffer size: larger than any UDP payload, so nothing is truncated."""

LISTENING = "udptime {service} service listening on {where} (UDP)"
"""The log line of a service that listens (the format, with its fields
C{service} and C{where}): a worker's supervisor reads it as the sign that
the worker serves that service's socket."""

_log = Logger()


def bindUDPSocket(interface: str, port: int, reusePort: bool = False) -> socket.socket:
    """
    A non-blocking UDP socket bound to C{interface} and C{port}.

    C{interface} C{"::"} gives a dual-stack socket; if the host has no IPv6
    it falls back to C{"0.0.0.0"}.
    """
    family = (
        socket.AF_INET6
        if ipaddress.ip_address(interface).version == 6
        else socket.AF_INET
    )
    if family == socket.AF_INET6 and interface == ALL_INTERFACES and not _hasIPv6():
        family, interface = socket.AF_INET, "0.0.0.0"
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        if family == socket.AF_INET6:
            sock.setsockopt(
                socket.IPPROTO_IPV6,
                socket.IPV6_V6ONLY,
                0 if interface == ALL_INTERFACES else 1,
            )
        if reusePort:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((interface, port))
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


class ServiceCannotListen(CannotListenError):
    """
    A service's socket could not be bound: the L{CannotListenError}
    Twisted's own ports raise, whose message names the service, the address
    and the reason (C{text service cannot listen on [::]:5000 (UDP):
    Address already in use}).

    @ivar service: the service's name.
    """

    def __init__(
        self, service: str, interface: str, port: int, failure: OSError
    ) -> None:
        super().__init__(interface, port, failure)
        self.service = service

    def __str__(self) -> str:
        failure = self.socketError
        reason = getattr(failure, "strerror", None) or failure
        where = formatAddress(self.interface, self.port)
        return f"{self.service} service cannot listen on {where} (UDP): {reason}"


def listeningSocket(
    service: str,
    interface: str,
    port: int,
    reusePort: bool = False,
    mustBeFree: bool = False,
) -> socket.socket:
    """
    L{bindUDPSocket} for the service called C{service}.

    @raise ServiceCannotListen: the socket cannot be bound.

    @param mustBeFree: with C{reusePort}, check first that no other socket
        holds the port: sockets of another process with C{SO_REUSEPORT}
        (another udptime with workers, started twice) would otherwise share
        it without a word, and take part of its datagrams.
    """
    try:
        if mustBeFree and port:
            bindUDPSocket(interface, port).close()
        return bindUDPSocket(interface, port, reusePort)
    except OSError as failure:
        raise ServiceCannotListen(service, interface, port, failure) from failure


def logCannotListen(failure: ServiceCannotListen) -> None:
    """
    Log that a service cannot listen, as the line before the service stops
    the server (see L{ServiceCannotListen}).
    """
    _log.critical("udptime {failure}", failure=str(failure))


def _hasIPv6() -> bool:
    if not socket.has_ipv6:
        return False
    try:
        probe = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    except OSError:
        return False
    probe.close()
    return True


class ListenService(Service):
    """
    Serve one socket for as long as the service runs: bound by L{bind}
    (before twistd drops privileges), or handed over bound already
    (L{boundSocket}: by socket activation, or by a worker's supervisor).  A
    subclass makes the socket (L{newSocket}), serves it (L{adopt}) and says
    that it listens (L{logListening}).

    @ivar port: the listening port once started (L{None} before).
    @ivar boundSocket: a socket bound already, to serve instead of binding
        one: bound by L{bind}, or by another process; L{None} to bind it as
        the service starts.
    """

    log = Logger()

    def __init__(self, reactor: Any) -> None:
        self.reactor = reactor
        self.boundSocket: socket.socket | None = None
        self.port: IListeningPort | None = None

    def newSocket(self) -> socket.socket:
        """
        A new socket for the service, bound (non-blocking).

        @raise ServiceCannotListen: it cannot be bound.
        """
        raise NotImplementedError(type(self).__name__ + ".newSocket")

    def adopt(self, sock: socket.socket) -> IListeningPort:
        """
        Serve C{sock} (the caller then closes its own descriptor).
        """
        raise NotImplementedError(type(self).__name__ + ".adopt")

    def logListening(self, where: str) -> None:
        """
        Log that the service listens on C{where}: the line means "ready".
        """
        raise NotImplementedError(type(self).__name__ + ".logListening")

    def bind(self) -> None:
        """
        Bind the service's socket now, if it has none yet (its port is
        then taken, and served once the service starts).

        @raise ServiceCannotListen: the socket cannot be bound.
        """
        if self.boundSocket is None:
            self.boundSocket = self.newSocket()

    def unbind(self) -> None:
        """
        Close the socket L{bind} bound, if the service has not started.
        """
        sock, self.boundSocket = self.boundSocket, None
        if sock is not None:
            sock.close()

    def privilegedStartService(self) -> None:
        try:
            self.bind()
        except ServiceCannotListen as failure:
            logCannotListen(failure)
            raise
        sock, self.boundSocket = self.boundSocket, None
        assert sock is not None
        try:
            self.port = self.adopt(sock)
        finally:
            # The port holds its own duplicate of the descriptor.
            sock.close()
        Service.privilegedStartService(self)

    def startService(self) -> None:
        if self.port is None:
            self.privilegedStartService()
        Service.startService(self)
        # The line means "ready": logged once the reactor runs (and so has
        # its signal handlers) and privileges are dropped.
        self.reactor.callWhenRunning(self._logListening)

    def _logListening(self) -> None:
        if self.port is not None:
            host: Any = self.port.getHost()
            self.logListening(formatAddress(host.host, host.port))

    def stopService(self) -> Any:
        Service.stopService(self)
        port, self.port = self.port, None
        if port is not None:
            return port.stopListening()
        return None


class UDPListenService(ListenService):
    """
    Serve C{protocol} on a UDP port for as long as the service runs.

    @ivar kernelTimestamps: take receive times from the kernel
        (C{SO_TIMESTAMPNS}; see L{udptime.port}).
    """

    def __init__(
        self,
        reactor: IReactorSocket,
        protocol: DatagramProtocol,
        portNumber: int,
        interface: str = ALL_INTERFACES,
        reusePort: bool = False,
        serviceName: str = "udptime",
        kernelTimestamps: bool = False,
    ) -> None:
        super().__init__(reactor)
        self.protocol = protocol
        self.portNumber = portNumber
        self.interface = interface
        self.reusePort = reusePort
        self.kernelTimestamps = kernelTimestamps
        self.setName(serviceName)

    def newSocket(self) -> socket.socket:
        """
        The service's UDP socket, bound (see L{listeningSocket}).
        """
        return listeningSocket(
            str(self.name), self.interface, self.portNumber, self.reusePort
        )

    def adopt(self, sock: socket.socket) -> IListeningPort:
        """
        Serve C{sock} with udptime's port on a posix reactor, with Twisted's
        C{adoptDatagramPort} elsewhere.
        """
        if isinstance(self.reactor, PosixReactorBase) and isinstance(
            self.protocol, UDPServerProtocol
        ):
            port = ServerPort.adopt(
                cast(IReactorFDSet, self.reactor),
                sock,
                self.protocol,
                MAX_DATAGRAM,
                kernelTimestamps=self.kernelTimestamps,
            )
            return cast(IListeningPort, port)
        if self.kernelTimestamps:
            self.log.warn(
                "{service}: kernel timestamps need a posix reactor; using the "
                "event loop's receive times",
                service=self.name,
            )
        if getattr(self.protocol, "transmitTimestamps", False):
            self.log.info(
                "{service}: transmit timestamps read and replies sent in Python "
                "(Twisted's generic UDP port)",
                service=self.name,
            )
        reactor = cast(IReactorSocket, self.reactor)
        return reactor.adoptDatagramPort(
            sock.fileno(), sock.family, self.protocol, maxPacketSize=MAX_DATAGRAM
        )

    def logListening(self, where: str) -> None:
        """
        C{udptime ntp service listening on [::]:123 (UDP)}.
        """
        self.log.info(
            LISTENING,
            service=self.name,
            where=where,
        )
