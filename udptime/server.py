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

import math
import sys
from datetime import tzinfo
from typing import Any, ClassVar

from twisted.internet.protocol import DatagramProtocol
from twisted.logger import Logger

from udptime import daytime, echo, ntp, rfc868, text
from udptime.address import Address
from udptime.clock import (
    ClockSource,
    TimeKnown,
    WallClock,
    systemClock,
    systemTimeKnown,
)
from udptime.counters import ServiceCounters
from udptime.policy import DENIED, KISS, LIMITED, Policy, RateLimiter

BAD_INPUT_LOG_RATE = 0.2
"""Log lines per second about bad input, sustained, per service."""
BAD_INPUT_LOG_BURST = 10
"""Log lines about bad input a service may write back to back."""

REPLY_BUILDERS = 256
"""
Distinct text requests whose way of answering a text service keeps (a
request is at most 512 bytes); the table is emptied when full.
"""


def exceptionText() -> str:
    """
    The exception being handled, as one line (its C{repr}): logged beside
    the traceback, which a worker's log relayed as JSON keeps without it.
    """
    return repr(sys.exc_info()[1])


class UDPServerProtocol(DatagramProtocol):
    """
    Base of udptime's request/response services.

    @cvar serviceName: short name used in logs and counters.
    @ivar clock: the wall clock, injected for tests.
    @ivar counters: this service's L{ServiceCounters}.
    @ivar verbose: log one line per request.
    @ivar policy: the admission policy asked about every datagram before
        L{respond} (L{None}: answer everything).
    @ivar badInputLog: bounds the log lines about bad input and failures
        (L{logBadInput}): a flood of them costs a few lines a minute.
    """

    serviceName: ClassVar[str] = "udp"
    log = Logger()
    transmitTimestamps: ClassVar[bool] = False
    """
    Whether replies carry the time they are sent, read as they are built:
    a port must then send each at once, never hold it back for a batch.
    """

    def __init__(
        self,
        *,
        clock: WallClock = systemClock,
        verbose: bool = False,
        policy: Policy | None = None,
    ) -> None:
        self.clock = clock
        self.verbose = verbose
        self.counters = ServiceCounters()
        self.policy = policy
        self.badInputLog = RateLimiter(BAD_INPUT_LOG_RATE, BAD_INPUT_LOG_BURST)
        self._badInputLogged = 0

    def startProtocol(self) -> None:
        """
        Tell the policy which port the service listens on (the loop guard
        refuses datagrams from it).
        """
        transport: Any = self.transport
        if self.policy is not None and transport is not None:
            self.policy.guardPort(transport.getHost().port)

    def refused(self, data: bytes, addr: Address, received: float) -> bytes | None:
        """
        The reply to a request refused by the rate limits that the policy
        picked for an answer (an NTP Kiss-o'-Death), or L{None} to send
        nothing, as every protocol but NTP does.  The reply must reveal
        nothing and be no larger than C{data}.
        """
        return None

    def logBadInput(self, received: float, message: str, **fields: object) -> None:
        """
        Log C{message} (a L{Logger} format; C{service} is filled in) about a
        malformed or unexpected datagram received at C{received}, unless
        this service has logged too many such lines lately; the next line
        logged says how many were left out.
        """
        suppressed = self._mayLog(received)
        if suppressed is not None:
            self.log.warn(
                message + " ({suppressed} similar lines left out)",
                service=self.serviceName,
                suppressed=suppressed,
                **fields,
            )

    def _mayLog(self, received: float) -> int | None:
        """
        L{None} when L{badInputLog} refuses a line now; otherwise the number
        of lines it refused since the last one.
        """
        limit = self.badInputLog
        if not limit.admit(received):
            return None
        suppressed = limit.refused - self._badInputLogged
        self._badInputLogged = limit.refused
        return suppressed

    def respond(self, data: bytes, addr: Address, received: float) -> bytes | None:
        """
        The reply to C{data} from C{addr}, or L{None} to send nothing.

        @param received: Unix time at which the datagram was received.
        """
        raise NotImplementedError(type(self).__name__ + ".respond")

    def datagramReceived(self, data: bytes, addr: Address) -> None:
        """
        Answer one datagram, received now.
        """
        self.handleDatagram(data, addr, self.clock())

    def handleDatagram(self, data: bytes, addr: Address, received: float) -> None:
        """
        Answer one datagram that arrived at Unix time C{received} (a port
        that knows the kernel's receive timestamp calls this directly): the
        reply L{answer} gives, if any, is written back to C{addr} and counted
        as answered once the kernel took it (L{sendReply}).
        """
        reply = self.answer(data, addr, received)
        if reply is not None:
            self.sendReply(reply, addr)

    def answer(self, data: bytes, addr: Address, received: float) -> bytes | None:
        """
        The reply to send to C{addr} for the datagram C{data} that arrived
        at Unix time C{received}, or L{None} to send nothing.  The caller
        sends the reply and counts it as answered when it went out (as
        L{handleDatagram} does; a port that sends replies itself calls this
        directly).

        The L{policy} decides first, once per datagram (see
        L{udptime.policy}): a refused datagram is counted as limited, denied
        or looped and dropped, or answered with L{refused} when the policy
        picks it for a Kiss-o'-Death, which is written here, at once.
        Nothing raised here escapes: a failure is a bug, counted and logged
        at a bounded rate, and the service goes on.
        """
        self.counters.received += 1
        policy = self.policy
        memory = None
        if policy is not None:
            verdict = policy.admit(addr, received)
            if verdict:
                self._refuse(verdict, data, addr, received)
                return None
            memory = policy.replyMemory
            if memory is not None and memory.isReturned(addr, data, received):
                self.counters.looped += 1
                return None
        try:
            reply = self.respond(data, addr, received)
        except Exception:
            self._failed(data, addr, received)
            return None
        if reply is not None:
            if memory is not None:
                memory.remember(addr, reply, received)
            if self.verbose:
                self.log.info(
                    "{service}: {size}-byte request from {addr}, {replySize}-byte"
                    " reply",
                    service=self.serviceName,
                    size=len(data),
                    addr=addr,
                    replySize=len(reply),
                )
        return reply

    def _refuse(
        self, verdict: int, data: bytes, addr: Address, received: float
    ) -> None:
        """
        Count a datagram the policy refused, and send the refusal
        (L{refused}) when the verdict is L{KISS}.
        """
        counters = self.counters
        if verdict == LIMITED:
            counters.limited += 1
        elif verdict == KISS:
            counters.limited += 1
            try:
                reply = self.refused(data, addr, received)
            except Exception:
                self._failed(data, addr, received)
                return
            if reply is None:
                return
            # Written at once, by any port: a refusal is never held back.
            if self._write(reply, addr):
                counters.kissed += 1
        elif verdict == DENIED:
            counters.denied += 1
        else:
            counters.looped += 1

    def _failed(self, data: bytes, addr: Address, received: float) -> None:
        """
        Count and log (at a bounded rate) the exception being handled.
        """
        self.counters.internalErrors += 1
        suppressed = self._mayLog(received)
        if suppressed is not None:
            self.log.failure(
                "{service} failed on a {size}-byte datagram from {addr}: {error}"
                " ({suppressed} similar lines left out)",
                service=self.serviceName,
                size=len(data),
                addr=addr,
                error=exceptionText(),
                suppressed=suppressed,
            )

    def sendReply(self, reply: bytes, addr: Address) -> None:
        """
        Write C{reply} to C{addr}; a full socket buffer drops the reply, as a
        congested network would.
        """
        if self._write(reply, addr):
            self.counters.answered += 1

    def _write(self, reply: bytes, addr: Address) -> bool:
        """
        Write C{reply} to C{addr}; whether the kernel took it (a failure is
        counted).
        """
        transport = self.transport
        assert transport is not None, "a reply before the protocol started"
        try:
            transport.write(reply, addr)
        except OSError:
            self.counters.sendFailed += 1
            return False
        return True


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
        policy: Policy | None = None,
    ) -> None:
        super().__init__(clock=clock, verbose=verbose, policy=policy)
        self._defaultZone = defaultZone
        self._defaultFormat = defaultFormat
        self._builders: dict[bytes, text.ReplyBuilder] = {}

    @property
    def defaultZone(self) -> tzinfo | None:
        """
        The zone for requests that name none (L{None}: the host's local zone).
        """
        return self._defaultZone

    @defaultZone.setter
    def defaultZone(self, zone: tzinfo | None) -> None:
        self._defaultZone = zone
        self._builders.clear()

    @property
    def defaultFormat(self) -> text.TimeFormat:
        """
        The format for requests that name none.
        """
        return self._defaultFormat

    @defaultFormat.setter
    def defaultFormat(self, fmt: text.TimeFormat) -> None:
        self._defaultFormat = fmt
        self._builders.clear()

    def respond(self, data: bytes, addr: Address, received: float) -> bytes | None:
        build = self._builders.get(data)
        if build is None:
            try:
                request = text.parseRequest(data)
            except text.RequestTooLarge:
                self.counters.dropped += 1
                return None
            except text.TextRequestError as error:
                self.counters.malformed += 1
                return text.errorReply(error)
            # Clients send the same few requests again and again: how to
            # answer each is kept, in a bounded table.
            build = text.replyBuilder(request, self._defaultFormat, self._defaultZone)
            if len(self._builders) >= REPLY_BUILDERS:
                self._builders.clear()
            self._builders[data] = build
        return build(received)


class TimeOfDayServer(UDPServerProtocol):
    """
    Base of the services that answer any datagram with the time alone
    (RFC 868 Time, RFC 867 Daytime): what a request holds is ignored, and
    while the server cannot determine the time it makes no reply (RFC 868),
    counting the datagram as dropped.

    @ivar timeKnown: asked before each reply whether the time is known; by
        default the system clock is trusted.
    """

    def __init__(
        self,
        *,
        clock: WallClock = systemClock,
        verbose: bool = False,
        policy: Policy | None = None,
        timeKnown: TimeKnown = systemTimeKnown,
    ) -> None:
        super().__init__(clock=clock, verbose=verbose, policy=policy)
        self.timeKnown = timeKnown

    def timeReply(self, now: float) -> bytes | None:
        """
        The reply at Unix time C{now}, or L{None} when the time cannot be
        shown in this protocol's format.
        """
        raise NotImplementedError(type(self).__name__ + ".timeReply")

    def respond(self, data: bytes, addr: Address, received: float) -> bytes | None:
        reply = self.timeReply(received) if self.timeKnown() else None
        if reply is None:
            self.counters.dropped += 1
        return reply


class TimeServer(TimeOfDayServer):
    """
    The Time Protocol, RFC 868 (see L{udptime.rfc868}): any datagram gets 4
    bytes, the seconds since 1900 modulo 2^32.
    """

    serviceName = "time"

    def timeReply(self, now: float) -> bytes | None:
        return rfc868.buildReply(now)


class DaytimeServer(TimeOfDayServer):
    """
    The Daytime Protocol, RFC 867 (see L{udptime.daytime}): any datagram
    gets one line such as C{21 NOV 2026 20:53:39 UTC}.
    """

    serviceName = "daytime"

    def timeReply(self, now: float) -> bytes | None:
        try:
            return daytime.buildReply(now)
        except ValueError:
            return None


class EchoServer(UDPServerProtocol):
    """
    The Echo Protocol, RFC 862 (see L{udptime.echo}): each datagram of at
    most L{echo.MAX_ECHO} bytes is sent back unchanged; longer ones are
    dropped.
    """

    serviceName = "echo"

    def respond(self, data: bytes, addr: Address, received: float) -> bytes | None:
        reply = echo.buildReply(data)
        if reply is None:
            self.counters.dropped += 1
        return reply


class NTPServer(UDPServerProtocol):
    """
    SNTPv4 / NTP server mode (see L{udptime.ntp}): client requests (mode 3)
    get a server reply (mode 4), symmetric active ones (mode 1) a symmetric
    passive reply (mode 2), both 48 bytes.  Everything else is dropped:
    counted as malformed (L{ntp.MalformedPacket}) or dropped (L{ntp.NotServed}:
    other modes, among them control and private queries, and authenticated
    requests), and logged at a bounded rate.

    The receive timestamp is the time the datagram arrived; the transmit
    timestamp is read from the clock last, when the rest of the reply is
    built.  What
    the reply claims about the clock (leap warning, stratum, refid, root
    delay and dispersion, reference time, precision) comes from the
    L{ClockSource}.

    @ivar clockSource: what the server claims about its clock.
    @ivar minPoll: the server's minimum poll exponent (see
        L{ntp.replyPoll}).
    """

    serviceName = "ntp"
    transmitTimestamps = True

    def __init__(
        self,
        *,
        clock: WallClock = systemClock,
        verbose: bool = False,
        policy: Policy | None = None,
        clockSource: ClockSource | None = None,
        minPoll: int = ntp.MIN_POLL,
    ) -> None:
        """
        @param clockSource: L{None} for a L{ClockSource} that follows the
            kernel's synchronisation state and claims nothing more.
        """
        super().__init__(clock=clock, verbose=verbose, policy=policy)
        self.clockSource = ClockSource() if clockSource is None else clockSource
        self.minPoll = minPoll
        self._replyConstants: ntp.ReplyConstants | None = None
        # The receive times for which the reply constants' clock state is
        # fresh (see ClockSource.stateSpan): none yet.
        self._constantsFrom = math.inf
        self._constantsUntil = -math.inf

    def startProtocol(self) -> None:
        """
        Read the clock's state once as the service starts: with a local
        stratum, the first reference time is then the time the server
        started.
        """
        super().startProtocol()
        self.clockSource.state(self.clock())

    def respond(self, data: bytes, addr: Address, received: float) -> bytes | None:
        if len(data) == ntp.HEADER_SIZE and data[0] in ntp.PLAIN_FIRST_BYTES:
            # ntp.isPlainRequest(data), inline: nearly every request.
            constants = self._replyConstants
            if (
                constants is None
                or not self._constantsFrom <= received < self._constantsUntil
            ):
                constants = self._freshConstants(received)
            return ntp.plainReply(data, constants, received, self.clock)
        try:
            request = ntp.parseRequest(data, addr[1])
        except ntp.NTPCodecError as error:
            if isinstance(error, ntp.NotServed):
                self.counters.dropped += 1
            else:
                self.counters.malformed += 1
            self.logBadInput(
                received,
                "{service}: dropped {size} bytes from {addr}: {reason}",
                size=len(data),
                addr=addr,
                reason=str(error),
            )
            return None
        state = self.clockSource.state(received)
        return ntp.buildReply(
            request, state, received, self.clock, minPoll=self.minPoll
        )

    def _freshConstants(self, received: float) -> ntp.ReplyConstants:
        """
        The reply constants for the clock's state at C{received}, kept with
        the span of receive times for which that state is fresh, so that
        a request in the span costs no call to the clock source.
        """
        state, self._constantsFrom, self._constantsUntil = self.clockSource.stateSpan(
            received
        )
        constants = self._replyConstants
        if constants is None or constants.state is not state:
            constants = ntp.ReplyConstants.fromState(state, self.minPoll)
            self._replyConstants = constants
        return constants

    def refused(self, data: bytes, addr: Address, received: float) -> bytes | None:
        """
        A Kiss-o'-Death C{RATE} for a client request the rate limits
        refused (see L{ntp.buildKissOfDeath}: it carries none of the
        server's time), or L{None} when C{data} is not a client request this
        server would answer.
        """
        return ntp.buildKissOfDeath(
            data, b"RATE", sourcePort=addr[1], minPoll=self.minPoll
        )
