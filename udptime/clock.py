"""
The clock layer: the one place in udptime that reads the wall clock.

Everything else receives time as a value (a float of seconds since the Unix
epoch) or through an injected L{WallClock} callable, so that tests control it.

This module also converts between Unix time and the two time scales of the
standard protocols: NTP's 64-bit timestamps (RFC 5905 section 6) and RFC 868's
32-bit seconds, both counted from 1900-01-01 and wrapping every 2^32 seconds
(the first wrap, the start of NTP era 1, is 2036-02-07 06:28:16 UTC).

Finally it reads the kernel's synchronisation state (L{readKernelClock}) and
measures the clock's precision (L{measurePrecision}), from which
L{ClockSource} decides what an NTP server claims about its clock
(L{ClockState}).
"""

from __future__ import annotations

import ctypes
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum
from typing import Final, Protocol

WallClock = Callable[[], float]
"""A callable returning the current time in seconds since the Unix epoch."""

systemClock: Final[WallClock] = time.time
"""The system's real-time clock."""

TimeKnown = Callable[[], bool]
"""
A callable telling whether the server knows the time well enough to serve it.
RFC 868 requires a server that cannot determine the time to make no reply;
the time services ask this before every answer, so it can follow a changing
clock state (for example NTP synchronisation).
"""


def systemTimeKnown() -> bool:
    """
    The default L{TimeKnown}: the system clock is trusted.
    """
    return True


NTP_UNIX_OFFSET: Final = 2_208_988_800
"""Seconds from 1900-01-01 (NTP and RFC 868 epoch) to 1970-01-01 (Unix)."""

ERA_SECONDS: Final = 1 << 32
"""Length of one NTP era in seconds (about 136 years)."""

_HALF_ERA: Final = 1 << 31
_FRACTION: Final = float(1 << 32)


def unixToNTPSeconds(unixTime: float) -> int:
    """
    The 32-bit NTP/RFC 868 seconds field for a Unix time (truncated toward
    the past, modulo 2^32).
    """
    return (int(unixTime // 1) + NTP_UNIX_OFFSET) % ERA_SECONDS


def unixToNTP64(unixTime: float) -> int:
    """
    The 64-bit NTP timestamp (32.32 fixed point, modulo one era) for a Unix
    time.
    """
    whole = unixTime // 1
    fraction = int((unixTime - whole) * _FRACTION)
    if fraction >= 1 << 32:  # rounding at the very top of a second
        fraction = (1 << 32) - 1
    return (((int(whole) + NTP_UNIX_OFFSET) % ERA_SECONDS) << 32) | fraction


class KernelTime(float):
    """
    A Unix time in seconds, a float as every time in udptime, that also
    keeps the exact time the kernel gave: a float of this century's Unix
    time resolves 0.24 µs, a kernel timestamp 1 ns.  Arithmetic on it gives
    plain floats; L{exactNTP64} converts it exactly.

    @ivar nanoseconds: the time in whole nanoseconds since the Unix epoch.
    """

    __slots__ = ("nanoseconds",)

    nanoseconds: int

    def __new__(cls, seconds: int, nanoseconds: int) -> KernelTime:
        """
        The time C{seconds} plus C{nanoseconds} (a C{struct timespec}).
        """
        total = seconds * 1_000_000_000 + nanoseconds
        value = super().__new__(cls, total / 1_000_000_000)
        value.nanoseconds = total
        return value


def exactNTP64(unixTime: float) -> int:
    """
    L{unixToNTP64}, exact to the NTP timestamp's resolution (2^-32 s) for a
    L{KernelTime}, whose nanoseconds it converts rather than its float.
    """
    if not isinstance(unixTime, KernelTime):
        return unixToNTP64(unixTime)
    seconds, nanoseconds = divmod(unixTime.nanoseconds, 1_000_000_000)
    fraction = (nanoseconds << 32) // 1_000_000_000
    return (((seconds + NTP_UNIX_OFFSET) % ERA_SECONDS) << 32) | fraction


def ntpSecondsToUnix(seconds: int, pivot: float) -> int:
    """
    Map a 32-bit NTP/RFC 868 seconds value to the Unix time in the era that
    puts it nearest to C{pivot} (a Unix time the caller trusts to within 68
    years, usually its own clock), as RFC 5905 section 6 prescribes.
    """
    pivotNTP = int(pivot // 1) + NTP_UNIX_OFFSET
    delta = (seconds - pivotNTP) % ERA_SECONDS
    if delta >= _HALF_ERA:
        delta -= ERA_SECONDS
    return pivotNTP + delta - NTP_UNIX_OFFSET


def ntp64ToUnix(timestamp: int, pivot: float) -> float:
    """
    Map a 64-bit NTP timestamp to Unix time, choosing the era nearest to
    C{pivot} (see L{ntpSecondsToUnix}).
    """
    seconds = ntpSecondsToUnix(timestamp >> 32, pivot)
    return seconds + (timestamp & 0xFFFFFFFF) / _FRACTION


def toNTPShort(seconds: float) -> int:
    """
    Encode a non-negative duration in NTP short format (16.16 fixed point),
    saturating at the largest value the format holds.
    """
    if seconds <= 0:
        return 0
    return min(int(seconds * 65536.0), 0xFFFFFFFF)


def fromNTPShort(value: int) -> float:
    """
    Decode an NTP short-format (16.16) duration in seconds.
    """
    return value / 65536.0


# The kernel's synchronisation state, and what an NTP server claims from it.


class Leap(IntEnum):
    """
    Leap second warnings, as the leap indicator (LI) of RFC 5905 encodes
    them.
    """

    NONE = 0
    """No leap second announced."""

    INSERT = 1
    """The last minute of the current UTC day has 61 seconds."""

    DELETE = 2
    """The last minute of the current UTC day has 59 seconds."""

    UNSYNCHRONISED = 3
    """Alarm: the clock is not synchronised (on the wire only)."""


MAX_STRATUM: Final = 16
"""The stratum of an unsynchronised clock (RFC 5905 MAXSTRAT)."""

MAX_DISPERSION: Final = 16.0
"""The largest dispersion in seconds (RFC 5905 MAXDISP), and the most the
Linux kernel ever reports as its maximum error."""

LOCAL_REFID: Final = b"LOCL"
"""Default reference identifier of a clock that serves as its own reference."""

LOCAL_REFERENCE_INTERVAL: Final = 64.0
"""
Seconds after which a local reference (C{localStratum}) gives the time as
its reference time again, as chronyd's local reference does: the clock is
its own reference, never long out of date.
"""

DEFAULT_KERNEL_STRATUM: Final = 3
"""Stratum claimed when an NTP daemon keeps the kernel's clock synchronised
and no local stratum is configured (the daemon's own stratum is not known)."""

DEFAULT_CACHE_INTERVAL: Final = 1.0
"""Seconds for which one reading of the kernel's state is reused."""

# <sys/timex.h>: ntp_adjtime results and status bits.
TIME_INS: Final = 1
TIME_DEL: Final = 2
TIME_OOP: Final = 3
TIME_WAIT: Final = 4
TIME_ERROR: Final = 5
STA_INS: Final = 0x0010
STA_DEL: Final = 0x0020
STA_UNSYNC: Final = 0x0040
STA_CLOCKERR: Final = 0x1000


@dataclass(frozen=True, slots=True)
class KernelClock:
    """
    What the kernel says about its clock (C{ntp_adjtime} with no changes).

    @ivar synchronised: an NTP daemon keeps the clock synchronised
        (C{STA_UNSYNC} clear and no clock error).
    @ivar leap: the leap second the kernel will apply at the end of the day.
    @ivar maxError: the kernel's maximum error of the clock, in seconds (set
        by the daemon, growing by 500 ppm between updates, at most 16 s).
    @ivar estError: the daemon's estimated error of the clock, in seconds.
    """

    synchronised: bool
    leap: Leap
    maxError: float
    estError: float


KernelReader = Callable[[], "KernelClock | None"]
"""
A callable reading the kernel's clock state, or returning L{None} where the
state cannot be read (another system, a sandbox that forbids the call).
"""


def kernelClockFromTimex(
    result: int, status: int, maxError: int, estError: int
) -> KernelClock:
    """
    Interpret what C{ntp_adjtime} returned: its C{result} (C{TIME_OK} ...
    C{TIME_ERROR}) and the C{status}, C{maxerror} and C{esterror} fields of
    its C{struct timex} (errors in microseconds).
    """
    synchronised = result != TIME_ERROR and not status & (STA_UNSYNC | STA_CLOCKERR)
    if result == TIME_WAIT:
        # The leap second has passed; the kernel waits for the daemon to
        # clear STA_INS or STA_DEL, which announce no further leap.
        leap = Leap.NONE
    elif status & STA_DEL or result == TIME_DEL:
        leap = Leap.DELETE
    elif status & STA_INS or result in (TIME_INS, TIME_OOP):
        leap = Leap.INSERT
    else:
        leap = Leap.NONE
    return KernelClock(
        synchronised=synchronised,
        leap=leap,
        maxError=min(max(maxError, 0) / 1e6, MAX_DISPERSION),
        estError=min(max(estError, 0) / 1e6, MAX_DISPERSION),
    )


class _Timeval(ctypes.Structure):
    _fields_ = (("tv_sec", ctypes.c_long), ("tv_usec", ctypes.c_long))


class _Timex(ctypes.Structure):
    """
    Linux's C{struct timex} (the same layout with every C library).
    """

    _fields_ = (
        ("modes", ctypes.c_uint),
        ("offset", ctypes.c_long),
        ("freq", ctypes.c_long),
        ("maxerror", ctypes.c_long),
        ("esterror", ctypes.c_long),
        ("status", ctypes.c_int),
        ("constant", ctypes.c_long),
        ("precision", ctypes.c_long),
        ("tolerance", ctypes.c_long),
        ("time", _Timeval),
        ("tick", ctypes.c_long),
        ("ppsfreq", ctypes.c_long),
        ("jitter", ctypes.c_long),
        ("shift", ctypes.c_int),
        ("stabil", ctypes.c_long),
        ("jitcnt", ctypes.c_long),
        ("calcnt", ctypes.c_long),
        ("errcnt", ctypes.c_long),
        ("stbcnt", ctypes.c_long),
        ("tai", ctypes.c_int),
        ("reserved", ctypes.c_int * 11),
    )


_ntpAdjtime: Callable[[ctypes._Pointer[_Timex]], int] | None = None
_ntpAdjtimeMissing = False


def _loadNTPAdjtime() -> Callable[[ctypes._Pointer[_Timex]], int] | None:
    global _ntpAdjtime, _ntpAdjtimeMissing
    if _ntpAdjtime is None and not _ntpAdjtimeMissing:
        try:
            function = ctypes.CDLL(None, use_errno=True).ntp_adjtime
        except (OSError, AttributeError):
            _ntpAdjtimeMissing = True
            return None
        function.argtypes = (ctypes.POINTER(_Timex),)
        function.restype = ctypes.c_int
        _ntpAdjtime = function
    return _ntpAdjtime


def readKernelClock() -> KernelClock | None:
    """
    Read the kernel's clock state with C{ntp_adjtime} and C{modes = 0},
    which changes nothing and needs no privilege.

    @return: the state, or L{None} on systems other than Linux, or when the
        call fails (a seccomp filter may forbid it in a container).
    """
    if not sys.platform.startswith("linux"):
        return None
    function = _loadNTPAdjtime()
    if function is None:
        return None
    timex = _Timex()
    result = function(ctypes.pointer(timex))
    if result < 0:
        return None
    return kernelClockFromTimex(result, timex.status, timex.maxerror, timex.esterror)


def measurePrecision(
    clock: WallClock = systemClock, samples: int = 100, maxReads: int = 100_000
) -> int:
    """
    The precision of C{clock} as RFC 5905 defines it: log2 of the smallest
    step seen between consecutive readings, in seconds, rounded to the
    nearest integer (as chrony measures it).  The step includes both the
    clock's resolution and the cost of reading it: for C{time.time}'s
    float, whose resolution today is 2^-22 s (238 ns), this gives about -22.

    @param samples: how many positive steps to observe.
    @param maxReads: the most readings to take; a clock that has not moved
        by then is given a precision of 0 (one second).
    """
    best = math.inf
    seen = 0
    previous = clock()
    for _ in range(maxReads):
        now = clock()
        step = now - previous
        previous = now
        if step > 0:
            best = min(best, step)
            seen += 1
            if seen >= samples:
                break
    if best == math.inf:
        return 0
    return max(-32, min(0, math.floor(math.log2(best) + 0.5)))


@dataclass(frozen=True, slots=True)
class ClockState:
    """
    What a time server claims about its clock, in the terms of RFC 5905.

    @ivar leap: the announced leap second (never L{Leap.UNSYNCHRONISED}:
        see C{synchronised}).
    @ivar synchronised: whether the server claims its clock is
        synchronised; an NTP reply then carries LI 3 and stratum 0.
    @ivar stratum: 1 to 15, or L{MAX_STRATUM} when not synchronised.
    @ivar refid: the 4-byte reference identifier.
    @ivar rootDelay: round-trip delay to the primary reference, in seconds.
    @ivar rootDispersion: the clock's error bound relative to the primary
        reference, in seconds.
    @ivar referenceTime: Unix time the clock was last set or corrected, or
        L{None} when unknown.
    @ivar precision: log2 of the clock's precision in seconds.
    """

    leap: Leap
    synchronised: bool
    stratum: int
    refid: bytes
    rootDelay: float
    rootDispersion: float
    referenceTime: float | None
    precision: int


class ClockSource:
    """
    Decides what the server claims about its clock (a L{ClockState}), from
    the kernel's synchronisation state and the operator's configuration:

      - the kernel says an NTP daemon keeps the clock synchronised: the
        kernel's leap warning, its maximum error as root dispersion, the
        time the state was seen to change as reference time; stratum
        C{localStratum} with refid C{refid} when configured, otherwise
        C{kernelStratum} with refid 0.0.0.0 (the daemon's source is not
        known);
      - otherwise, with C{localStratum} set, the clock serves as its own
        reference, as chrony's C{local stratum N}: synchronised at that
        stratum with refid C{refid}, root delay and dispersion 0, and the
        time the local reference took over as reference time;
      - otherwise it is not synchronised: replies say so (LI 3, stratum 0),
        and strict clients ignore them.

    The kernel is read at most once per C{cacheInterval} seconds of the
    times passed to L{state}, so answering a request costs no system call.

    @ivar localStratum: the stratum claimed without kernel synchronisation,
        or L{None} to claim nothing.
    @ivar refid: reference identifier sent with C{localStratum}.
    @ivar precision: log2 of the clock's precision in seconds.
    """

    def __init__(
        self,
        localStratum: int | None = None,
        refid: bytes = LOCAL_REFID,
        *,
        kernel: KernelReader = readKernelClock,
        precision: int | None = None,
        cacheInterval: float = DEFAULT_CACHE_INTERVAL,
        kernelStratum: int = DEFAULT_KERNEL_STRATUM,
    ) -> None:
        """
        @param localStratum: as chrony's C{local stratum N}, 1 to 15.
        @param refid: 1 to 4 ASCII bytes, padded with NULs to 4.
        @param kernel: reads the kernel's state (injected in tests).
        @param precision: the clock's precision; L{None} to measure the
            system clock's with L{measurePrecision}.
        @param cacheInterval: seconds for which a kernel reading is reused.
        @param kernelStratum: stratum claimed when the kernel is
            synchronised and no C{localStratum} is configured.
        """
        for name, value in (("local", localStratum), ("kernel", kernelStratum)):
            if value is not None and not 1 <= value < MAX_STRATUM:
                raise ValueError(f"{name} stratum must be from 1 to 15, not {value}")
        if not 1 <= len(refid) <= 4 or not refid.isascii():
            raise ValueError(f"refid must be 1 to 4 ASCII bytes, not {refid!r}")
        self.localStratum = localStratum
        self.refid = refid.ljust(4, b"\0")
        self.kernelStratum = kernelStratum
        self.precision = measurePrecision() if precision is None else precision
        self._kernel = kernel
        self._cacheInterval = cacheInterval
        self._readAt: float | None = None
        self._last: KernelClock | None = None
        self._referenceTime: float | None = None
        self._state: ClockState | None = None

    def state(self, now: float) -> ClockState:
        """
        The clock's state at Unix time C{now}, from a kernel reading at most
        C{cacheInterval} seconds old (re-read when the clock went back).
        """
        readAt = self._readAt
        state = self._state
        if (
            state is None
            or readAt is None
            or not 0 <= now - readAt < self._cacheInterval
        ):
            state = self._refresh(now)
        return state

    def stateSpan(self, now: float) -> tuple[ClockState, float, float]:
        """
        L{state}C{(now)}, with the span of times C{start <= t < end} over
        which the kernel reading it comes from stays fresh: a caller may
        keep the state for any time in the span and ask again outside it,
        as L{state} itself would read the kernel again only there.

        @return: C{(state, start, end)}.
        """
        state = self.state(now)
        readAt = self._readAt
        assert readAt is not None, "state() always leaves a reading"
        return state, readAt, readAt + self._cacheInterval

    def _refresh(self, now: float) -> ClockState:
        kernel = self._kernel()
        previous = self._last
        self._readAt = now
        self._last = kernel
        if kernel is not None and kernel.synchronised:
            if (
                previous is None
                or not previous.synchronised
                or kernel.maxError < previous.maxError
                or kernel.estError != previous.estError
                or self._referenceTime is None
                or self._referenceTime > now
            ):
                # The daemon updated the kernel (only it lowers the maximum
                # error): the clock was corrected at about this time.
                self._referenceTime = now
            local = self.localStratum
            state = ClockState(
                leap=kernel.leap,
                synchronised=True,
                stratum=self.kernelStratum if local is None else local,
                refid=b"\0\0\0\0" if local is None else self.refid,
                rootDelay=0.0,
                rootDispersion=kernel.maxError,
                referenceTime=self._referenceTime,
                precision=self.precision,
            )
        elif self.localStratum is not None:
            if (
                (previous is not None and previous.synchronised)
                or self._referenceTime is None
                or self._referenceTime > now
                or now - self._referenceTime > LOCAL_REFERENCE_INTERVAL
            ):
                # The local reference takes over now, or is kept recent, as
                # chronyd keeps its local reference time.
                self._referenceTime = now
            state = ClockState(
                leap=Leap.NONE if kernel is None else kernel.leap,
                synchronised=True,
                stratum=self.localStratum,
                refid=self.refid,
                rootDelay=0.0,
                rootDispersion=0.0,
                referenceTime=self._referenceTime,
                precision=self.precision,
            )
        else:
            self._referenceTime = None
            state = ClockState(
                leap=Leap.NONE if kernel is None else kernel.leap,
                synchronised=False,
                stratum=MAX_STRATUM,
                refid=b"\0\0\0\0",
                rootDelay=0.0,
                rootDispersion=MAX_DISPERSION if kernel is None else kernel.maxError,
                referenceTime=None,
                precision=self.precision,
            )
        self._state = state
        return state


class ClockStateSource(Protocol):
    """
    What a time server asks about its clock: L{ClockSource} (the kernel's
    word and the operator's configuration) and
    L{UpstreamClock<udptime.upstream.UpstreamClock>} (an NTP daemon's word)
    both provide it.
    """

    def state(self, now: float) -> ClockState:
        """
        The clock's state at Unix time C{now}.
        """

    def stateSpan(self, now: float) -> tuple[ClockState, float, float]:
        """
        L{state}C{(now)} and the span of times C{start <= t < end} for which
        a caller may keep it.
        """
