"""
The clock layer: the one place in udptime that reads the wall clock.

Everything else receives time as a value (a float of seconds since the Unix
epoch) or through an injected L{WallClock} callable, so that tests control it.

This module also converts between Unix time and the two time scales of the
standard protocols: NTP's 64-bit timestamps (RFC 5905 section 6) and RFC 868's
32-bit seconds, both counted from 1900-01-01 and wrapping every 2^32 seconds
(the first wrap, the start of NTP era 1, is 2036-02-07 06:28:16 UTC).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Final

WallClock = Callable[[], float]
"""A callable returning the current time in seconds since the Unix epoch."""

systemClock: Final[WallClock] = time.time
"""The system's real-time clock."""

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
