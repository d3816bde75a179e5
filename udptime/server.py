"""
udptime's server protocols: thin L{DatagramProtocol} adapters over the codecs.

Each protocol decides what to do with a datagram (L{UDPServerProtocol.decide}:
the shared admission policy first, then the service's codec) and returns its
L{Decision<udptime.decision.Decision>}: the reply's bytes, or a refusal.  It
never writes to the socket nor counts: the port does both (see
L{udptime.port} and L{udptime.replies}).

Any of them can be used from any Twisted program, on Twisted's own port,
whose C{datagramReceived} calls takes the same path::

    from twisted.internet import reactor
    from udptime.server import TextTimeServer

    reactor.listenUDP(5000, TextTimeServer())
    reactor.run()
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Sequence
from datetime import tzinfo
from functools import partial
from typing import TYPE_CHECKING, Any, ClassVar, Final

from twisted.internet.protocol import DatagramProtocol
from twisted.logger import Logger

from udptime import daytime, echo, ntp, rfc868, text
from udptime.address import Address
from udptime.ancillary import TRANSMIT_TIMESTAMP_REQUEST
from udptime.clock import (
    ClockSource,
    ClockStateSource,
    TimeKnown,
    WallClock,
    systemClock,
    systemTimeKnown,
)
from udptime.counters import ServiceCounters
from udptime.decision import (
    DROPPED,
    MALFORMED,
    Decision,
    Refusal,
    errorReply,
    kissOfDeath,
)
from udptime.interleave import TransmitTimes
from udptime.policy import ADMIT, KISS, LIMITED, LOOPED, Policy, RateLimiter
from udptime.replies import ReplyPath
from udptime.zonelimit import REFUSAL_TEXT as ZONE_REFUSAL_TEXT
from udptime.zonelimit import ZoneLimit

if TYPE_CHECKING:
    from udptime.ntsserver import NTSAuthentication

BAD_INPUT_LOG_RATE = 0.2
"""Log lines per second about bad input and failures, sustained, per service."""
BAD_INPUT_LOG_BURST = 10
"""Log lines about bad input and failures a service may write back to back."""
VERBOSE_LOG_RATE = 10.0
"""
Lines per second that C{--verbose} logs per service, sustained, by default:
one line per decision costs about 130 bytes of log, which a flood must not
turn into a disk filled at the rate of the flood.
"""
VERBOSE_LOG_BURST_SECONDS = 10
"""Seconds of C{--verbose}'s sustained rate a service may log back to back."""


def verboseLimit(rate: float) -> RateLimiter | None:
    """
    The bound on the lines C{--verbose} logs per service: C{rate} lines per
    second sustained, L{VERBOSE_LOG_BURST_SECONDS} of them back to back; or
    L{None} for C{rate} 0, every decision logged.
    """
    if not rate:
        return None
    return RateLimiter(rate, max(1, int(rate * VERBOSE_LOG_BURST_SECONDS)))


# Read by the NTP service for every request: taken from the module once.
_NTP_HEADER_SIZE: Final = ntp.HEADER_SIZE
_PLAIN_FIRST_BYTES: Final = ntp.PLAIN_FIRST_BYTES
_LateTransmit: Final = ntp.LateTransmit
_ZERO_TIMESTAMP: Final = bytes(8)

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

    A subclass implements L{respond}, the codec's part of L{decide}; the
    port asks L{decide} about each datagram, then sends and counts.

    @cvar serviceName: short name used in logs and counters.
    @ivar clock: the wall clock, injected for tests.
    @ivar counters: this service's L{ServiceCounters}, which the port
        counts.
    @ivar verbose: have the port log one line per decision.
    @ivar verboseLog: bounds the lines of L{verbose} (see L{verboseLimit};
        L{None}: every decision logged); the port leaves out the lines it
        refuses, and L{verboseLinesLeftOut} counts them.
    @ivar policy: the admission policy asked about every datagram before
        L{respond} (L{None}: answer everything).
    @ivar badInputLog: bounds the log lines about bad input and failures
        (L{logBadInput}, L{logFailure}): a flood of them costs a few lines
        a minute.
    @ivar replies: the reply path of Twisted's generic port, through which
        L{datagramReceived} goes (L{None} before the protocol is connected).
    """

    serviceName: ClassVar[str] = "udp"
    log = Logger()
    transmitTimestamps: ClassVar[bool] = False
    """
    Whether replies carry the time they are sent, read as they are built:
    a port must then send each at once, never hold it back for a batch.
    """
    kernelTransmitTimes = False
    """
    Whether the protocol asks its port for the kernel's transmit times of
    its replies (NTP's interleaved mode): a port that can read them then
    gives the protocol a table for them (L{interleave}).
    """
    interleave: TransmitTimes | None = None
    """
    The kernel transmit times of recent replies, given by a port that reads
    them; L{None} otherwise.
    """
    compiledSend = False
    """
    Whether udptime's port may stamp and send the replies that carry their
    send time with the compiled send step (see L{udptime.sendstep}), where
    it is built.
    """
    receiveTimestamps: ClassVar[bool] = False
    """
    Whether replies carry the time the request arrived: a port then takes
    it from the kernel (C{SO_TIMESTAMPNS}) where it can and is allowed to.
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
        self.verboseLog = verboseLimit(VERBOSE_LOG_RATE)
        self.counters = ServiceCounters()
        self.policy = policy
        self.badInputLog = RateLimiter(BAD_INPUT_LOG_RATE, BAD_INPUT_LOG_BURST)
        self._badInputLogged = 0
        self.replies: ReplyPath | None = None

    @property
    def verboseLinesLeftOut(self) -> int:
        """
        The lines of L{verbose} left out so far, beyond L{verboseLog}'s
        bound.
        """
        limit = self.verboseLog
        return 0 if limit is None else limit.refused

    def makeConnection(self, transport: Any) -> None:
        """
        Connect to C{transport}, whose C{write} sends the replies of
        L{datagramReceived}.
        """
        self.replies = ReplyPath(self, transport.write)
        super().makeConnection(transport)

    def startProtocol(self) -> None:
        """
        Tell the policy which port the service listens on (the loop guard
        refuses datagrams from it).
        """
        transport: Any = self.transport
        if self.policy is not None and transport is not None:
            self.policy.guardPort(transport.getHost().port)

    def datagramReceived(self, data: bytes, addr: Address) -> None:
        """
        Answer one datagram, received now: the way in from Twisted's generic
        port (C{listenUDP}, C{adoptDatagramPort}), an adapter over the same
        reply path as udptime's own port (L{ReplyPath.handle}), sending
        with C{transport.write}.
        """
        replies = self.replies
        assert replies is not None, "a datagram before the protocol started"
        replies.tally(1, replies.handle(data, addr, self.clock()))

    def decide(self, data: bytes, addr: Address, received: float) -> Decision:
        """
        What to do with the datagram C{data} from C{addr}, received at Unix
        time C{received}: the bytes of the reply to send, or a
        L{Refusal<udptime.decision.Refusal>} naming the counter it is
        counted under (with a reply to send all the same, if any).  The
        port asks this once per datagram, then sends and counts.

        The L{policy} decides first (see L{udptime.policy}): a refused
        datagram is refused as the verdict says, or, when the policy picks
        it for a Kiss-o'-Death (L{KISS}), answered with L{refused}'s reply.
        Then, for a service with a reply memory (one that answers any
        datagram), a datagram that is a loop (see
        L{ReplyMemory<udptime.policy.ReplyMemory>}) is refused as such, and
        the reply decided is remembered.  Then L{respond} decides, with the
        service's codec.  A verdict that is neither C{ADMIT} nor a refusal
        (L{None}: a policy that decided nothing) admits nothing: it raises
        L{TypeError}.

        Anything raised here is a bug: the port catches it, counts it as an
        internal error and logs it at a bounded rate (L{logFailure}).
        """
        policy = self.policy
        if policy is None:
            return self.respond(data, addr, received)
        verdict = policy.admit(addr, received)
        if verdict is not ADMIT:
            if verdict is KISS:
                reply = self.refused(data, addr, received)
                return LIMITED if reply is None else kissOfDeath(reply)
            if verdict.__class__ is not Refusal:
                # No verdict (None, a bug in the policy) admits nothing.
                raise TypeError(f"the policy's verdict is {verdict!r}")
            return verdict
        memory = policy.replyMemory
        if memory is None:
            return self.respond(data, addr, received)
        if memory.isLoop(addr, data, received):
            return LOOPED
        decision = self.respond(data, addr, received)
        if isinstance(decision, bytes):
            reply = decision
        else:
            # A late reply (NTP's) is not remembered: it is never an echo.
            reply = decision.reply if isinstance(decision, Refusal) else None
        if reply is not None:
            memory.remember(addr, reply, received)
        return decision

    def decideLate(self, data: bytes, addr: Address, received: float) -> Decision:
        """
        The decision the port carries out, where the protocol's replies carry
        their send time (L{transmitTimestamps}): as L{decide}'s, but such a
        reply may be a L{LateReply<udptime.decision.LateReply>}, which the
        port stamps with the time as it sends it.  By default, L{decide}'s.
        """
        return self.decide(data, addr, received)

    def respond(self, data: bytes, addr: Address, received: float) -> Decision:
        """
        The codec's decision about C{data} from C{addr}, admitted by the
        policy (see L{decide}).

        @param received: Unix time at which the datagram was received.
        """
        raise NotImplementedError(type(self).__name__ + ".respond")

    def decideBatch(
        self, datagrams: Sequence[bytes], received: float
    ) -> list[Decision]:
        """
        The decisions about C{datagrams}, which L{respond} held
        (L{HELD<udptime.decision.HELD>}) until the port had read their
        receive batch, in the same order; C{received} is the latest of
        their receive times.  Only a protocol whose L{respond} holds
        datagrams implements it (Roughtime: one signature per batch).
        """
        raise NotImplementedError(type(self).__name__ + ".decideBatch")

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

    def logFailure(self, data: bytes, addr: Address, received: float) -> None:
        """
        Log the exception being handled, raised while deciding about C{data}
        from C{addr} (a bug), with the same bound as L{logBadInput}.
        """
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


class TextTimeServer(UDPServerProtocol):
    """
    udptime's text time protocol (see L{udptime.text}): any datagram gets one
    line with the current time; a request that ends with a token gets it
    back at the end of its reply.

    @ivar defaultZone: zone for requests that name none (L{None}: the host's
        local zone).
    @ivar defaultFormat: format for requests that name none.
    @ivar zoneLimit: the cap on the distinct zones answered in per second
        (see L{udptime.zonelimit}), which may be shared by several text
        services; L{None}: no cap.
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
        self._zoneLimit: ZoneLimit | None = ZoneLimit()
        self._builders: dict[bytes, Callable[[float], Decision]] = {}

    @property
    def zoneLimit(self) -> ZoneLimit | None:
        """
        The cap on the distinct zones answered in per second (L{None}: no
        cap).
        """
        return self._zoneLimit

    @zoneLimit.setter
    def zoneLimit(self, limit: ZoneLimit | None) -> None:
        self._zoneLimit = limit
        self._builders.clear()

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

    def respond(self, data: bytes, addr: Address, received: float) -> Decision:
        build = self._builders.get(data)
        if build is not None:
            return build(received)
        if b"@" in data and len(data) <= text.MAX_REQUEST:
            # A request with a token (text.splitToken): answered as the
            # request without it, the token repeated at the end of the line.
            request, token = text.splitToken(data)
            if token is not None:
                decision = self._answer(request, received)
                if isinstance(decision, bytes):
                    return text.withToken(decision, token)
                if isinstance(decision, Refusal) and decision.reply is not None:
                    return errorReply(text.withToken(decision.reply, token))
                return decision
        return self._answer(data, received)

    def _answer(self, data: bytes, received: float) -> Decision:
        """
        The decision about the request C{data} (without a token).
        """
        build: Callable[[float], Decision] | None = self._builders.get(data)
        if build is None:
            try:
                request = text.parseRequest(data)
            except text.RequestTooLarge:
                return DROPPED
            except text.TextRequestError as error:
                return errorReply(text.errorReply(error))
            # Clients send the same few requests again and again: how to
            # answer each is kept, in a bounded table.
            build = text.replyBuilder(request, self._defaultFormat, self._defaultZone)
            limit = self._zoneLimit
            if (
                limit is not None
                and isinstance(request, text.TimeRequest)
                and request.zone is not None
            ):
                build = partial(self._inZone, limit, request.zone, build)
            if len(self._builders) >= REPLY_BUILDERS:
                self._builders.clear()
            self._builders[data] = build
        return build(received)

    def _inZone(
        self,
        limit: ZoneLimit,
        zone: tzinfo,
        build: Callable[[float], Decision],
        received: float,
    ) -> Decision:
        """
        C{build}'s reply at C{received}, when C{limit} admits another reply
        in C{zone} now; otherwise the refusal of a request over the cap, an
        error line counted C{limited}, logged at a bounded rate.
        """
        if limit.admit(zone, received):
            return build(received)
        self.logBadInput(
            received,
            "{service}: more than {perSecond} time zones asked for in one second;"
            " a request for {zone} refused ({refused} in all)",
            perSecond=limit.perSecond,
            zone=str(zone),
            refused=limit.refused,
        )
        return _ZONE_REFUSAL


_ZONE_REFUSAL: Final = Refusal(
    LIMITED.counter, text.errorReply(text.TextRequestError(ZONE_REFUSAL_TEXT))
)
"""A text request over the cap on distinct zones: an error line, limited."""


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

    def respond(self, data: bytes, addr: Address, received: float) -> Decision:
        reply = self.timeReply(received) if self.timeKnown() else None
        return DROPPED if reply is None else reply


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
    dropped.  With a policy that keeps a reply memory
    (L{Policy.replyMemory<udptime.policy.Policy.replyMemory>}), a datagram
    that is a reply just sent to its source, coming back, is refused as a
    loop (L{UDPServerProtocol.decide}): two echo services never answer each
    other for long.
    """

    serviceName = "echo"

    def respond(self, data: bytes, addr: Address, received: float) -> Decision:
        reply = echo.buildReply(data)
        return DROPPED if reply is None else reply


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
    built: L{decideLate} leaves it to the port, which writes it as it sends
    the reply (see L{ntp.LateTransmit}); L{decide} writes it at once.  What
    the reply claims about the clock (leap warning, stratum, refid, root
    delay and dispersion, reference time, precision) comes from the
    L{ClockSource}.

    With L{nts} set, NTS requests (RFC 8915: a unique identifier, a cookie
    and an authenticator, see L{udptime.ntsserver}) get the same reply
    sealed with the client's keys, fresh cookies inside; a request whose
    cookie cannot be opened gets an NTS NAK; one whose NTS fields are bad,
    or whose authenticator does not verify, is dropped as any bad request.
    Plain requests take the same path as without it.

    @ivar clockSource: what the server claims about its clock: a
        L{ClockSource}, or with C{--upstream} an
        L{UpstreamClock<udptime.upstream.UpstreamClock>}.
    @ivar late: the reply being built, stamped last.
    @ivar minPoll: the server's minimum poll exponent (see
        L{ntp.replyPoll}).
    @ivar nts: the NTS half of the decision, or L{None}: no NTS (requests
        with NTS fields are then answered as plain NTP requests, their
        fields ignored).
    """

    serviceName = "ntp"
    transmitTimestamps = True
    receiveTimestamps = True

    def __init__(
        self,
        *,
        clock: WallClock = systemClock,
        verbose: bool = False,
        policy: Policy | None = None,
        clockSource: ClockStateSource | None = None,
        minPoll: int = ntp.MIN_POLL,
        interleaved: bool = True,
        nts: NTSAuthentication | None = None,
        compiledSend: bool = True,
    ) -> None:
        """
        @param clockSource: L{None} for a L{ClockSource} that follows the
            kernel's synchronisation state and claims nothing more.
        @param interleaved: answer clients that ask in interleaved form in
            interleaved mode, where the port can read the kernel's transmit
            times (see L{udptime.interleave}).
        @param compiledSend: let udptime's port stamp and send replies with
            the compiled send step, where it is built (see
            L{udptime.sendstep}).
        """
        super().__init__(clock=clock, verbose=verbose, policy=policy)
        self.kernelTransmitTimes = interleaved
        self.compiledSend = compiledSend
        self.timed = ntp.LateTransmit(clock, TRANSMIT_TIMESTAMP_REQUEST)
        self.clockSource: ClockStateSource = (
            ClockSource() if clockSource is None else clockSource
        )
        self.minPoll = minPoll
        self.nts = nts
        self._replyConstants: ntp.ReplyConstants | None = None
        # The receive times for which the reply constants' clock state is
        # fresh (see ClockSource.stateSpan): none yet.
        self._constantsFrom = math.inf
        self._constantsUntil = -math.inf

    @property
    def clock(self) -> WallClock:
        """
        The wall clock, from which the transmit timestamps are read too.
        """
        return self.late.clock

    @clock.setter
    def clock(self, clock: WallClock) -> None:
        late: ntp.LateTransmit | None = self.__dict__.get("late")
        if late is None:
            self.late = ntp.LateTransmit(clock)
        else:
            late.clock = clock
            self.timed.clock = clock

    decideLate = UDPServerProtocol.decide
    """
    The policy's and the codec's decision, an answer left for the port to
    stamp with its transmit time (a L{ntp.LateTransmit}).
    """

    def decide(self, data: bytes, addr: Address, received: float) -> Decision:
        """
        The decision about C{data} (see L{UDPServerProtocol.decide}), an
        answer stamped with its transmit time at once.
        """
        decision = self.decideLate(data, addr, received)
        if decision.__class__ is _LateTransmit:
            return decision.stamp()
        return decision

    def startProtocol(self) -> None:
        """
        Read the clock's state once as the service starts: with a local
        stratum, the first reference time is then the time the server
        started.
        """
        super().startProtocol()
        self.clockSource.state(self.clock())

    def respond(self, data: bytes, addr: Address, received: float) -> Decision:
        if len(data) == _NTP_HEADER_SIZE and data[0] in _PLAIN_FIRST_BYTES:
            # ntp.isPlainRequest(data), inline: nearly every request.
            constants = self._replyConstants
            if (
                constants is None
                or not self._constantsFrom <= received < self._constantsUntil
            ):
                constants = self._freshConstants(received)
            interleave = self.interleave
            if (
                interleave is not None
                and data[24:32] != _ZERO_TIMESTAMP
                and data[0] & 0x38 == 0x20
                and data[32:40] != data[40:48]
            ):
                # interleave.isInterleavedForm(data), inline.
                return self._respondInterleaved(
                    data, addr[0], received, constants, interleave
                )
            return self.late.plain(data, constants, received)
        try:
            request = ntp.parseRequest(data, addr[1])
            nts = self.nts
            sealer = None if nts is None else nts.check(data, addr, received)
        except ntp.NTPCodecError as error:
            self.logBadInput(
                received,
                "{service}: dropped {size} bytes from {addr}: {reason}",
                size=len(data),
                addr=addr,
                reason=str(error),
            )
            return DROPPED if isinstance(error, ntp.NotServed) else MALFORMED
        if isinstance(sealer, Refusal):
            return sealer
        if sealer is None:
            state = self.clockSource.state(received)
            return self.late.general(request, state, received, self.minPoll)
        # An authentic NTS request is a version-4 client request: its reply
        # is a plain request's, built as one is.  It is sealed over its
        # header, the transmit time included: stamped now, not as it is sent.
        constants = self._replyConstants
        if (
            constants is None
            or not self._constantsFrom <= received < self._constantsUntil
        ):
            constants = self._freshConstants(received)
        return sealer.seal(self.late.plain(data, constants, received).stamp())

    def _respondInterleaved(
        self,
        data: bytes,
        host: str,
        received: float,
        constants: ntp.ReplyConstants,
        interleave: TransmitTimes,
    ) -> Decision:
        """
        The reply to the plain request C{data} from C{host} in interleaved
        form: in interleaved mode when the kernel's transmit time of the
        reply its origin names is known (see L{udptime.interleave}), in
        basic mode otherwise; either way sent with a request for its own
        kernel transmit time, which is kept for the next request.
        """
        late = self.timed.plain(data, constants, received)
        previous = interleave.previous(host, data[24:32])
        receive = late.receiveTimestamp()
        interleave.expect(host, receive)
        if previous is None:
            return late
        # The kernel's time, to the nanosecond: exact, so not fuzzed below
        # the precision of the clock the server reads itself.
        reply = ntp.REPLY_FROM_PARTS.pack(
            late.start, data[32:40], int.from_bytes(receive, "big"), previous
        )
        return ntp.StampedReply(reply, late.control)

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
        server would answer.  With L{nts}, a request longer than a header
        is NTS's to refuse (L{NTSAuthentication.refused
        <udptime.ntsserver.NTSAuthentication.refused>}): an authentic NTS
        request gets the KoD authenticated, any other NTS request nothing.
        """
        nts = self.nts
        if nts is not None and len(data) > _NTP_HEADER_SIZE:
            return nts.refused(data, addr, self.minPoll)
        return ntp.buildKissOfDeath(
            data, b"RATE", sourcePort=addr[1], minPoll=self.minPoll
        )
