"""
udptime's server protocols: thin L{DatagramProtocol} adapters over the codecs.

Each protocol takes a datagram, reads the clock, asks its codec for a reply and
writes it back to the exact address the request came from.  Shared work
(counting, admission policy, error containment) lives in L{UDPServerProtocol};
a subclass implements only L{UDPServerProtocol.respond}.

Any of them can be used from any Twisted program::

    from twisted.internet import reactor
    from udptime.server import TextTimeServer

    reactor.listenUDP(5000, TextTimeServer())
    reactor.run()
"""

from __future__ import annotations

from datetime import tzinfo
from typing import ClassVar

from twisted.internet.protocol import DatagramProtocol
from twisted.logger import Logger

from udptime import text
from udptime.clock import WallClock, systemClock
from udptime.counters import ServiceCounters

Address = tuple[str, int]
"""A datagram's source address as Twisted gives it: (host, port)."""


class UDPServerProtocol(DatagramProtocol):
    """
    Base of udptime's request/response services.

    @cvar serviceName: short name used in logs and counters.
    @ivar clock: the wall clock, injected for tests.
    @ivar counters: this service's L{ServiceCounters}.
    @ivar verbose: log one line per request.
    """

    serviceName: ClassVar[str] = "udp"
    log = Logger()

    def __init__(
        self,
        *,
        clock: WallClock = systemClock,
        verbose: bool = False,
    ) -> None:
        self.clock = clock
        self.verbose = verbose
        self.counters = ServiceCounters()

    def respond(self, data: bytes, addr: Address, received: float) -> bytes | None:
        """
        The reply to C{data} from C{addr}, or L{None} to send nothing.

        @param received: Unix time at which the datagram was received.
        """
        raise NotImplementedError(type(self).__name__ + ".respond")

    def datagramReceived(self, data: bytes, addr: Address) -> None:  # type: ignore[override]
        """
        Answer one datagram, received now.
        """
        self.handleDatagram(data, addr, self.clock())

    def handleDatagram(self, data: bytes, addr: Address, received: float) -> None:
        """
        Answer one datagram that arrived at Unix time C{received} (a port
        that knows the kernel's receive timestamp calls this directly).
        Nothing raised here escapes: a failure is a bug, counted and logged,
        and the service goes on.
        """
        counters = self.counters
        counters.received += 1
        try:
            reply = self.respond(data, addr, received)
        except Exception:
            counters.internalErrors += 1
            self.log.failure(
                "{service} failed on a {size}-byte datagram from {addr}",
                service=self.serviceName,
                size=len(data),
                addr=addr,
            )
            return
        if reply is None:
            return
        self.sendReply(reply, addr)
        if self.verbose:
            self.log.info(
                "{service}: {size}-byte request from {addr}, {replySize}-byte reply",
                service=self.serviceName,
                size=len(data),
                addr=addr,
                replySize=len(reply),
            )

    def sendReply(self, reply: bytes, addr: Address) -> None:
        """
        Write C{reply} to C{addr}; a full socket buffer drops the reply, as a
        congested network would.
        """
        try:
            self.transport.write(reply, addr)
        except OSError:
            self.counters.sendFailed += 1
        else:
            self.counters.answered += 1


class TextTimeServer(UDPServerProtocol):
    """
    udptime's text time protocol (see L{udptime.text}): any datagram gets one
    line with the current time.

    @ivar defaultZone: zone for requests that name none (L{None}: the host's
        local zone).
    @ivar defaultFormat: format for requests that name none.
    """

    serviceName = "text"

    def __init__(
        self,
        *,
        clock: WallClock = systemClock,
        verbose: bool = False,
        defaultZone: tzinfo | None = None,
        defaultFormat: text.TimeFormat = text.TimeFormat.ISO,
    ) -> None:
        super().__init__(clock=clock, verbose=verbose)
        self.defaultZone = defaultZone
        self.defaultFormat = defaultFormat

    def respond(self, data: bytes, addr: Address, received: float) -> bytes | None:
        try:
            request = text.parseRequest(data)
        except text.RequestTooLarge:
            self.counters.dropped += 1
            return None
        except text.TextRequestError as error:
            self.counters.malformed += 1
            return text.errorReply(error)
        return text.buildReply(
            request, received, self.defaultFormat, self.defaultZone
        )
