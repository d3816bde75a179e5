"""
Host name lookups for the client that never hold up its exit.

L{udptime.client.query} resolves names through C{reactor.nameResolver}.  The
reactor's own resolver runs C{getaddrinfo} in the reactor's thread pool,
which the reactor waits for as it stops; L{DaemonThreadResolver}, installed
with C{reactor.installNameResolver}, runs each lookup in a daemon thread
instead, so that a command stops at once, whatever its lookups do.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Sequence
from typing import Any

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.interfaces import (
    IAddress,
    IHostnameResolver,
    IHostResolution,
    IResolutionReceiver,
)
from zope.interface import implementer


@implementer(IHostResolution)
class _Resolution:
    """
    One lookup of L{DaemonThreadResolver}'s, which cannot be cancelled.
    """

    def __init__(self, name: str) -> None:
        self.name = name

    def cancel(self) -> None:
        raise NotImplementedError("a lookup cannot be cancelled")


@implementer(IHostnameResolver)
class DaemonThreadResolver:
    """
    Host name lookups with C{getaddrinfo}, each in a daemon thread of its
    own.  The reactor's resolver uses its thread pool, which the reactor
    waits for as it stops: a lookup that hangs (a name server that does not
    answer) would hold the command up after its query gave up, or after
    Ctrl-C.  A daemon thread is left behind instead.
    """

    def __init__(
        self,
        reactor: Any,
        getaddrinfo: Callable[..., list[Any]] = socket.getaddrinfo,
    ) -> None:
        self.reactor = reactor
        self.getaddrinfo = getaddrinfo

    def resolveHostName(
        self,
        resolutionReceiver: IResolutionReceiver,
        hostName: str,
        portNumber: int = 0,
        addressTypes: Sequence[type[IAddress]] | None = None,
        transportSemantics: str = "TCP",
    ) -> IHostResolution:
        """
        Look C{hostName} up in a new daemon thread; give the receiver the
        addresses found of C{addressTypes} (L{None}: IPv4 and IPv6, as
        L{IHostnameResolver} says), or none, in the reactor's thread.
        """
        wanted = (IPv4Address, IPv6Address) if addressTypes is None else addressTypes
        resolution = _Resolution(hostName)
        resolutionReceiver.resolutionBegan(resolution)
        kind = socket.SOCK_DGRAM if transportSemantics == "UDP" else socket.SOCK_STREAM
        transport: Any = "UDP" if kind == socket.SOCK_DGRAM else "TCP"

        def lookUp() -> None:
            try:
                found = self.getaddrinfo(hostName, portNumber, 0, kind)
            except OSError:
                found = []
            self.reactor.callFromThread(deliver, found)

        def deliver(found: list[Any]) -> None:
            for family, _, _, _, sockaddr in found:
                if family == socket.AF_INET and IPv4Address in wanted:
                    address: IAddress = IPv4Address(transport, *sockaddr[:2])
                elif family == socket.AF_INET6 and IPv6Address in wanted:
                    address = IPv6Address(transport, *sockaddr[:2])
                else:
                    continue
                resolutionReceiver.addressResolved(address)
            resolutionReceiver.resolutionComplete()

        threading.Thread(target=lookUp, name="udptime-resolver", daemon=True).start()
        return resolution
