"""
The clock's state as the NTP daemon that disciplines it says: C{--upstream}.

On most time servers the system clock is disciplined by an NTP daemon
(chronyd, ntpd, ntpd-rs) on the same host.  L{UpstreamClock} asks that daemon
over NTP, at start and then every C{interval} seconds, and claims what the
daemon claims: its leap indicator, stratum, reference identifier, reference
time, root delay and root dispersion.  The daemon's word decides, not the
kernel's C{STA_UNSYNC} flag: in containers and virtual machines the kernel
often reports an unsynchronised clock while the host's daemon keeps time.

Why the daemon's own stratum, not one more
==========================================

RFC 5905 (section 3) counts strata along the synchronisation path: a client
that disciplines its clock from a stratum M{n} server runs at stratum
M{n + 1}, and its root delay and dispersion add the path to that server and
the error of its own clock (section 11.2).  chronyd follows it: the stratum
it serves is its source's plus one, its root delay its source's plus the
measured round trip, and the root dispersion it sends grows with the time
since its clock was last updated.

udptime disciplines no clock.  It reads the very clock the daemon disciplines
(the kernel's C{CLOCK_REALTIME}) and serves it, as a second listener of the
daemon would: there is no further hop in the synchronisation path, no
further clock whose error could add to the daemon's.  So udptime claims the
daemon's stratum, reference identifier, reference time and root delay
unchanged; adding one stratum, or half the round trip to the daemon over
loopback, would describe a path that does not exist (and would make clients
rank udptime below the daemon serving the same clock).

What does grow is the age of what the daemon said.  Its root dispersion was
right when it answered; the clock may drift from then on, so udptime adds
RFC 5905's C{PHI} (15 ppm, the tolerance of a disciplined clock) times the
time since the answer, as every NTP server does between updates.  Between
polls (every 32 s by default) that adds at most about half a millisecond.

When it says the clock is not synchronised
==========================================

The state is unsynchronised (an NTP reply then says LI 3, stratum 0) when:

  - the daemon's last answer says so (LI 3, or a stratum outside 1-15): from
    that answer on;
  - the daemon's last synchronised answer is older than C{maxAge} seconds
    (by default L{MISSED_POLLS} poll intervals: the daemon missed about three
    polls in a row, each tried L{DEFAULT_TRIES} times), or the clock has
    been stepped that far from the time of the answer;
  - the root distance (root delay / 2 + root dispersion, grown since the
    answer) passes RFC 5905's C{MAXDIST} (1.5 s): clients would refuse such
    a server anyway;
  - before the first answer.

A caller may keep a state for the span L{UpstreamClock.stateSpan} gives (at
most C{cacheInterval}, 1 s); its root dispersion is the one due at the end of
the span, so a kept state never claims less than the truth.  A change the
daemon reports is therefore served within C{cacheInterval} of its answer.

With a C{fallback} (for C{--local-stratum}: a L{ClockSource} that trusts the
local clock), the fallback's state is served while the daemon's is
unsynchronised, as chronyd's C{local stratum} takes over once its sources
are lost.

With workers
============

With C{--workers N} only the supervisor asks the daemon.  It hands every
answer (L{readingLine}) to its workers on their standard input (see
L{udptime.briefing}), and to a worker it starts the last one at once; each
worker's L{UpstreamClock}, which asks nothing itself (no C{ask}), takes the
answers in (L{UpstreamClock.take}) and applies the same rules to them.  So
the daemon sees one client whatever the number of workers, and every worker
serves the same answer, aged by the same rules; a worker is unsynchronised
for a moment only while it starts, until it has read the last answer
(normally before it serves its first request).
"""

from __future__ import annotations

import ipaddress
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from udptime.address import formatAddress
from udptime.clock import (
    MAX_DISPERSION,
    MAX_STRATUM,
    ClockState,
    ClockStateSource,
    Leap,
    WallClock,
    fromNTPShort,
    measurePrecision,
    ntp64ToUnix,
    systemClock,
)
from udptime.ntp import NTP_PORT, NTPPacket, refidText
from udptime.reading import QueryResult

PHI: Final = 15e-6
"""RFC 5905's frequency tolerance: dispersion grows by 15 µs per second."""

MAX_DISTANCE: Final = 1.5
"""RFC 5905's MAXDIST: a server with a larger root distance is unfit."""

DEFAULT_POLL_INTERVAL: Final = 32.0
"""Seconds between two questions to the daemon."""

MISSED_POLLS: Final = 3
"""Polls the daemon may miss in a row before its word is too old."""

DEFAULT_TIMEOUT: Final = 1.0
"""Seconds to wait for each try of a poll."""

DEFAULT_TRIES: Final = 3
"""Tries of each poll."""

DEFAULT_CACHE_INTERVAL: Final = 1.0
"""Seconds for which a caller may keep one state (see L{stateSpan})."""


@dataclass(frozen=True, slots=True)
class UpstreamReading:
    """
    What the daemon said in one answer.

    @ivar leap: its leap indicator, 0 to 3.
    @ivar stratum: its stratum, 0 to 255 as sent.
    @ivar refid: its 4-byte reference identifier.
    @ivar referenceTime: its reference time as Unix time, or L{None}.
    @ivar rootDelay: its root delay in seconds.
    @ivar rootDispersion: its root dispersion in seconds, when it answered.
    @ivar readAt: the Unix time the answer arrived, by the wall clock the
        server serves.
    @ivar delay: the round trip to the daemon in seconds (reported only: it
        is no part of the path the clock is synchronised over).
    """

    leap: int
    stratum: int
    refid: bytes
    referenceTime: float | None
    rootDelay: float
    rootDispersion: float
    readAt: float
    delay: float = 0.0

    @property
    def synchronised(self) -> bool:
        """
        Whether the daemon says its clock is synchronised (LI not 3 and a
        stratum from 1 to 15).
        """
        return self.leap != Leap.UNSYNCHRONISED and 0 < self.stratum < MAX_STRATUM


UpstreamAsk = Callable[[], "Deferred[UpstreamReading]"]
"""Asks the daemon once (with its own timeout and tries)."""


def readingFromResult(result: QueryResult, readAt: float) -> UpstreamReading:
    """
    The L{UpstreamReading} of an NTP query's result, whose reply arrived at
    Unix time C{readAt}.
    """
    packet = NTPPacket.fromBytes(result.reply)
    return UpstreamReading(
        leap=packet.leap,
        stratum=packet.stratum,
        refid=packet.refid,
        referenceTime=(
            ntp64ToUnix(packet.referenceTimestamp, readAt)
            if packet.referenceTimestamp
            else None
        ),
        rootDelay=fromNTPShort(packet.rootDelay),
        rootDispersion=fromNTPShort(packet.rootDispersion),
        readAt=readAt,
        delay=result.delay,
    )


def ntpAsker(
    reactor: Any,
    host: str,
    port: int = NTP_PORT,
    timeout: float = DEFAULT_TIMEOUT,
    tries: int = DEFAULT_TRIES,
    clock: WallClock = systemClock,
) -> UpstreamAsk:
    """
    An L{UpstreamAsk} that queries the NTP server at C{host}, C{port} with
    udptime's client (L{udptime.client.query} and
    L{udptime.ntp.NTPClientCodec}): the one place this module depends on it.
    """
    from udptime.client import query
    from udptime.ntp import NTPClientCodec

    codec = NTPClientCodec()

    def ask() -> Deferred[UpstreamReading]:
        asked = query(
            reactor, host, codec, port=port, timeout=timeout, retries=tries, clock=clock
        )
        return asked.addCallback(lambda result: readingFromResult(result, clock()))

    return ask


def parseUpstream(value: str) -> tuple[str, int]:
    """
    The C{--upstream} option: C{ADDRESS[:PORT]}, an IPv4 or IPv6 address
    (C{[ADDRESS]:PORT} for IPv6 with a port), port 123 by default.

    @raise ValueError: not an address, or a port out of range.
    """
    text = value.strip()
    host, port = text, str(NTP_PORT)
    if text.startswith("["):
        host, bracket, rest = text[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            raise ValueError(f"{value!r} is not ADDRESS[:PORT]")
        port = rest[1:] if rest else port
    elif text.count(":") == 1:
        host, port = text.split(":")
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"{value!r} is not an IP address and port") from None
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{value!r} has no port from 1 to 65535")
    return str(address), int(port)


parseUpstream.coerceDoc = (  # type: ignore[attr-defined]
    "ADDRESS[:PORT] of the NTP daemon disciplining this clock."
)


_NO_REFID: Final = b"\0\0\0\0"


UPSTREAM_FORMAT: Final = "udptime-upstream"
"""The format of a supervisor's briefing line about the daemon's answer."""

UPSTREAM_VERSION: Final = 1
"""The version of that line."""


def readingLine(reading: UpstreamReading) -> bytes:
    """
    The line a supervisor writes to its workers to hand them the daemon's
    answer C{reading}: a JSON object on one line (see
    L{udptime.briefing}).
    """
    document = {
        "format": UPSTREAM_FORMAT,
        "version": UPSTREAM_VERSION,
        "leap": reading.leap,
        "stratum": reading.stratum,
        "refid": reading.refid.hex(),
        "referenceTime": reading.referenceTime,
        "rootDelay": reading.rootDelay,
        "rootDispersion": reading.rootDispersion,
        "readAt": reading.readAt,
        "delay": reading.delay,
    }
    return json.dumps(document, separators=(",", ":")).encode("ascii") + b"\n"


def readingFromLine(line: bytes) -> UpstreamReading:
    """
    Read a line of L{readingLine}.

    @raise ValueError: C{line} is not one.
    """
    try:
        document = json.loads(line)
    except (UnicodeDecodeError, ValueError):
        raise ValueError("an upstream answer that is not JSON") from None
    if not isinstance(document, dict) or document.get("format") != UPSTREAM_FORMAT:
        raise ValueError("not an upstream answer")
    if document.get("version") != UPSTREAM_VERSION:
        raise ValueError(f"upstream answer version {document.get('version')!r}")

    def number(name: str, low: float, high: float) -> float:
        value = document.get(name)
        if (
            not isinstance(value, (int, float))
            or isinstance(value, bool)
            or not math.isfinite(value)
            or not low <= value <= high
        ):
            raise ValueError(f"upstream answer with a bad {name} {value!r}")
        return float(value)

    def integer(name: str, high: int) -> int:
        value = number(name, 0, high)
        if value != int(value):
            raise ValueError(f"upstream answer with a bad {name} {value!r}")
        return int(value)

    refid = document.get("refid")
    try:
        refidBytes = bytes.fromhex(refid) if isinstance(refid, str) else b""
    except ValueError:
        refidBytes = b""
    if len(refidBytes) != 4:
        raise ValueError(f"upstream answer with a bad refid {refid!r}")
    referenceTime = None
    if document.get("referenceTime") is not None:
        referenceTime = number("referenceTime", -math.inf, math.inf)
    return UpstreamReading(
        leap=integer("leap", 3),
        stratum=integer("stratum", 255),
        refid=refidBytes,
        referenceTime=referenceTime,
        rootDelay=number("rootDelay", 0.0, math.inf),
        rootDispersion=number("rootDispersion", 0.0, math.inf),
        readAt=number("readAt", -math.inf, math.inf),
        delay=number("delay", -math.inf, math.inf),
    )


class UpstreamClock(Service):
    """
    A clock state source (see L{ClockStateSource}) that claims what the NTP
    daemon disciplining this host's clock says; see the module's description
    for the rules.  As a service, it asks the daemon at start and then every
    C{interval} seconds; without an C{ask} (in a worker), it asks nothing
    and serves the answers it is given (L{take}).

    @ivar where: the daemon's address, for messages.
    @ivar reading: the daemon's last answer, or L{None}.
    @ivar reach: RFC 5905's reach register: one bit per poll, the newest
        lowest, set when the daemon answered.
    @ivar polls: polls started.
    @ivar answers: polls the daemon answered.
    @ivar onReading: called with each answer the daemon gives (a supervisor
        hands it to its workers), or L{None}.
    """

    log = Logger()

    def __init__(
        self,
        reactor: Any,
        ask: UpstreamAsk | None,
        *,
        where: str = "upstream",
        interval: float = DEFAULT_POLL_INTERVAL,
        maxAge: float | None = None,
        maxDistance: float = MAX_DISTANCE,
        precision: int | None = None,
        cacheInterval: float = DEFAULT_CACHE_INTERVAL,
        fallback: ClockStateSource | None = None,
    ) -> None:
        """
        @param reactor: provides C{callLater} and C{seconds} for the polls.
        @param ask: asks the daemon once (see L{ntpAsker}); L{None} to ask
            nothing, and serve the answers L{take} is given.
        @param interval: seconds between polls.
        @param maxAge: seconds a synchronised answer is believed; L{None}
            for L{MISSED_POLLS} times C{interval}.
        @param maxDistance: the largest root distance served as
            synchronised.
        @param precision: log2 of udptime's own clock reading precision;
            L{None} to measure it.
        @param cacheInterval: the longest span a caller may keep a state.
        @param fallback: the state served while the daemon's is not
            synchronised (C{--local-stratum}), or L{None}.
        """
        if not 0 < interval < math.inf:
            raise ValueError(f"poll interval must be positive, not {interval}")
        self.reactor = reactor
        self.ask = ask
        self.where = where
        self.interval = interval
        self.maxAge = MISSED_POLLS * interval if maxAge is None else maxAge
        self.maxDistance = maxDistance
        self.precision = measurePrecision() if precision is None else precision
        self.cacheInterval = cacheInterval
        self.fallback = fallback
        self.reading: UpstreamReading | None = None
        self.reach = 0
        self.polls = 0
        self.answers = 0
        self.onReading: Callable[[UpstreamReading], object] | None = None
        self._loop: LoopingCall | None = None
        self._pending: Deferred[UpstreamReading] | None = None
        self._span: tuple[ClockState, float, float, UpstreamReading | None] | None = (
            None
        )
        self._unsynchronised = ClockState(
            leap=Leap.NONE,
            synchronised=False,
            stratum=MAX_STRATUM,
            refid=_NO_REFID,
            rootDelay=0.0,
            rootDispersion=MAX_DISPERSION,
            referenceTime=None,
            precision=self.precision,
        )
        self._answering: bool | None = None
        self._said: tuple[bool, int, bytes] | None = None

    @property
    def reachable(self) -> bool:
        """
        Whether the daemon answered the last poll.
        """
        return bool(self.reach & 1)

    def startService(self) -> None:
        """
        Ask the daemon now, and then every C{interval} seconds (unless this
        clock has no C{ask}).
        """
        Service.startService(self)
        if self.ask is None:
            return
        loop = LoopingCall(self.poll)
        loop.clock = self.reactor
        loop.start(self.interval, now=True)
        self._loop = loop

    def stopService(self) -> Deferred[None] | None:
        """
        Stop polling; a poll under way is cancelled.
        """
        Service.stopService(self)
        loop, self._loop = self._loop, None
        if loop is not None and loop.running:
            loop.stop()
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.cancel()
        return None

    def poll(self) -> None:
        """
        Ask the daemon once, unless the last question is still unanswered.
        """
        if self._pending is not None or self.ask is None:
            return
        self.polls += 1
        self.reach = (self.reach << 1) & 0xFF
        try:
            asked = self.ask()
        except Exception:
            self._failed(Failure())
            return
        self._pending = asked
        asked.addCallbacks(self._answered, self._failed)
        asked.addErrback(self._bug)

    def take(self, reading: UpstreamReading) -> None:
        """
        Serve from C{reading}, an answer of the daemon the supervisor asked
        (see L{readingFromLine}), from now on.
        """
        self.reading = reading

    def _answered(self, reading: UpstreamReading) -> None:
        self._pending = None
        self.answers += 1
        self.reach |= 1
        self.reading = reading
        if self.onReading is not None:
            self.onReading(reading)
        if self._answering is False:
            self.log.info("upstream {where} answers again", where=self.where)
        self._answering = True
        said = (reading.synchronised, reading.stratum, reading.refid)
        if said != self._said:
            self._said = said
            self._logReading(reading)

    def _logReading(self, reading: UpstreamReading) -> None:
        if reading.synchronised:
            self.log.info(
                "upstream {where} is synchronised: stratum {stratum}, refid"
                " {refid}, root distance {distance:.6f} s",
                where=self.where,
                stratum=reading.stratum,
                refid=refidText(reading.stratum, reading.refid),
                distance=reading.rootDelay / 2 + reading.rootDispersion,
            )
        else:
            self.log.warn(
                "upstream {where} says its clock is not synchronised (LI"
                " {leap}, stratum {stratum}): serving unsynchronised",
                where=self.where,
                leap=reading.leap,
                stratum=reading.stratum,
            )

    def _failed(self, failure: Failure) -> None:
        self._pending = None
        if self._answering is not False:
            self.log.warn(
                "upstream {where} did not answer ({why}); its last word is"
                " believed for {maxAge:.0f} s after it was said",
                where=self.where,
                why=failure.getErrorMessage(),
                maxAge=self.maxAge,
            )
        self._answering = False

    def _bug(self, failure: Failure) -> None:
        self._pending = None
        self.log.failure("upstream {where}: poll failed", failure, where=self.where)

    def state(self, now: float) -> ClockState:
        """
        The clock's state at Unix time C{now}.
        """
        return self.stateSpan(now)[0]

    def stateSpan(self, now: float) -> tuple[ClockState, float, float]:
        """
        L{state}C{(now)}, with the span of times C{start <= t < end} for
        which it holds: at most C{cacheInterval} long, ending before the
        daemon's answer becomes too old.  Within it the same object is
        returned, its root dispersion the one due at C{end}.

        @return: C{(state, start, end)}.
        """
        span = self._span
        reading = self.reading
        if span is not None and span[3] is reading and span[1] <= now < span[2]:
            return span[0], span[1], span[2]
        state, start, end = self._compute(reading, now)
        self._span = (state, start, end, reading)
        return state, start, end

    def _compute(
        self, reading: UpstreamReading | None, now: float
    ) -> tuple[ClockState, float, float]:
        end = now + self.cacheInterval
        if reading is not None and reading.synchronised:
            age = now - reading.readAt
            if abs(age) < self.maxAge:
                if age >= 0:
                    end = min(end, reading.readAt + self.maxAge)
                grown = reading.rootDispersion + PHI * max(end - reading.readAt, 0.0)
                if reading.rootDelay / 2 + grown <= self.maxDistance:
                    return (
                        ClockState(
                            leap=Leap(reading.leap),
                            synchronised=True,
                            stratum=reading.stratum,
                            refid=reading.refid,
                            rootDelay=reading.rootDelay,
                            rootDispersion=grown,
                            referenceTime=reading.referenceTime,
                            precision=self.precision,
                        ),
                        now,
                        end,
                    )
        fallback = self.fallback
        if fallback is not None:
            state, start, fallbackEnd = fallback.stateSpan(now)
            return state, max(start, now), min(end, fallbackEnd)
        return self._unsynchronised, now, end


def upstreamClock(
    reactor: Any,
    upstream: tuple[str, int],
    *,
    timeout: float = DEFAULT_TIMEOUT,
    tries: int = DEFAULT_TRIES,
    clock: WallClock = systemClock,
    **options: Any,
) -> UpstreamClock:
    """
    An L{UpstreamClock} asking the NTP daemon at C{upstream} (a host and
    port, as L{parseUpstream} gives) with udptime's NTP client.

    @param options: passed on to L{UpstreamClock}.
    """
    host, port = upstream
    return UpstreamClock(
        reactor,
        ntpAsker(reactor, host, port, timeout, tries, clock),
        where=formatAddress(host, port),
        **options,
    )
