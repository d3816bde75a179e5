"""
Listening sockets as twistd services.

L{UDPListenService} binds its socket in C{privilegedStartService}, before
twistd drops privileges (C{--uid}/C{--gid}), so the standard ports below 1024
work with an unprivileged server.  It creates the socket itself rather than
calling C{listenUDP} so that:

  - the default, all-addresses socket is explicitly dual-stack
    (C{IPV6_V6ONLY} off), whatever the host's C{net.ipv6.bindv6only} says;
  - C{SO_REUSEPORT} can be set for several worker processes on one port.

The socket is handed to the reactor with C{adoptDatagramPort}.
"""

from __future__ import annotations

import ipaddress
import socket
from typing import Any

from twisted.application.service import Service
from twisted.internet.interfaces import IListeningPort, IReactorSocket
from twisted.internet.protocol import DatagramProtocol
from twisted.logger import Logger

ALL_INTERFACES = "::"
"""The default interface: every IPv6 and (dual-stack) IPv4 address."""

MAX_DATAGRAM = 65535
"""Receive buffer size: larger than any UDP payload, so nothing is truncated."""


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


def _hasIPv6() -> bool:
    if not socket.has_ipv6:
        return False
    try:
        probe = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    except OSError:
        return False
    probe.close()
    return True


class UDPListenService(Service):
    """
    Serve C{protocol} on a UDP port for as long as the service runs.

    @ivar port: the listening port once started (L{None} before).
    """

    log = Logger()

    def __init__(
        self,
        reactor: IReactorSocket,
        protocol: DatagramProtocol,
        portNumber: int,
        interface: str = ALL_INTERFACES,
        reusePort: bool = False,
        serviceName: str = "udptime",
    ) -> None:
        self.reactor = reactor
        self.protocol = protocol
        self.portNumber = portNumber
        self.interface = interface
        self.reusePort = reusePort
        self.setName(serviceName)
        self.port: IListeningPort | None = None

    def privilegedStartService(self) -> None:
        sock = bindUDPSocket(self.interface, self.portNumber, self.reusePort)
        try:
            self.port = self.reactor.adoptDatagramPort(
                sock.fileno(), sock.family, self.protocol, maxPacketSize=MAX_DATAGRAM
            )
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
        self.reactor.callWhenRunning(self._logListening)  # type: ignore[attr-defined]

    def _logListening(self) -> None:
        if self.port is not None:
            self.log.info(
                "udptime {service} service listening on {where} (UDP)",
                service=self.name,
                where=_formatAddress(self.port.getHost()),
            )

    def stopService(self) -> Any:
        Service.stopService(self)
        port, self.port = self.port, None
        if port is not None:
            return port.stopListening()
        return None


def _formatAddress(address: Any) -> str:
    host, port = address.host, address.port
    if ":" in host:
        return f"[{host}]:{port}"
    return f"{host}:{port}"
