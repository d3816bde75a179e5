"""
Tests for the kernel clock state, precision and L{ClockSource} in
L{udptime.clock}.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator

from twisted.trial.unittest import SynchronousTestCase

from udptime import clock
from udptime.clock import (
    MAX_DISPERSION,
    MAX_STRATUM,
    ClockSource,
    ClockState,
    KernelClock,
    Leap,
    kernelClockFromTimex,
    measurePrecision,
    readKernelClock,
)

SYNCED = KernelClock(synchronised=True, leap=Leap.NONE, maxError=0.05, estError=0.001)
UNSYNCED = KernelClock(synchronised=False, leap=Leap.NONE, maxError=16.0, estError=16.0)


class FakeKernel:
    """
    A kernel reader that gives the states it is told, counting its reads.
    """

    def __init__(self, state: KernelClock | None) -> None:
        self.state = state
        self.reads = 0

    def __call__(self) -> KernelClock | None:
        self.reads += 1
        return self.state


class KernelClockTests(SynchronousTestCase):
    """
    L{kernelClockFromTimex} interprets C{ntp_adjtime}'s answer.
    """

    def test_table(self) -> None:
        """
        Synchronisation comes from C{STA_UNSYNC}, C{STA_CLOCKERR} and
        C{TIME_ERROR}; the leap warning from C{STA_INS}/C{STA_DEL} and
        C{TIME_INS}/C{TIME_DEL}/C{TIME_OOP}, and none once the leap has
        passed (C{TIME_WAIT}), even before the daemon clears the flags.
        """
        cases = [
            # result, status, synchronised, leap
            ("TIME_OK", 0, 0x0001, True, Leap.NONE),
            ("TIME_INS", 1, 0x0011, True, Leap.INSERT),
            ("TIME_DEL", 2, 0x0021, True, Leap.DELETE),
            ("TIME_OOP", 3, 0x0011, True, Leap.INSERT),
            ("TIME_WAIT", 4, 0x0001, True, Leap.NONE),
            ("TIME_WAIT, STA_INS not cleared yet", 4, 0x0011, True, Leap.NONE),
            ("TIME_WAIT, STA_DEL not cleared yet", 4, 0x0021, True, Leap.NONE),
            ("TIME_ERROR unsync", 5, 0x0040, False, Leap.NONE),
            ("TIME_ERROR unsync with STA_INS", 5, 0x0050, False, Leap.INSERT),
            ("TIME_ERROR unsync with STA_DEL", 5, 0x0060, False, Leap.DELETE),
            ("TIME_OK but STA_UNSYNC", 0, 0x0040, False, Leap.NONE),
            ("clock error", 0, 0x1001, False, Leap.NONE),
            ("TIME_ERROR from PPS", 5, 0x0001, False, Leap.NONE),
        ]
        for name, result, status, synchronised, leap in cases:
            with self.subTest(name):
                state = kernelClockFromTimex(result, status, 5000, 100)
                self.assertEqual(state.synchronised, synchronised)
                self.assertEqual(state.leap, leap)

    def test_errors(self) -> None:
        """
        C{maxerror} and C{esterror} are microseconds, kept within 0 to 16 s.
        """
        state = kernelClockFromTimex(0, 0, 250_000, 1_500)
        self.assertEqual((state.maxError, state.estError), (0.25, 0.0015))
        state = kernelClockFromTimex(5, 0x40, 16_000_000, 16_000_000)
        self.assertEqual((state.maxError, state.estError), (16.0, 16.0))
        state = kernelClockFromTimex(5, 0x40, 99_000_000, -1)
        self.assertEqual((state.maxError, state.estError), (16.0, 0.0))

    def test_readKernel(self) -> None:
        """
        On Linux the kernel's state is read without privilege or change;
        elsewhere it is unknown.
        """
        state = readKernelClock()
        if not sys.platform.startswith("linux"):
            self.assertIsNone(state)
            return
        if state is None:
            raise self.skipTest("ntp_adjtime is refused here (seccomp?)")
        self.assertIsInstance(state, KernelClock)
        self.assertTrue(0 <= state.maxError <= MAX_DISPERSION)
        self.assertIn(state.leap, (Leap.NONE, Leap.INSERT, Leap.DELETE))

    def test_notLinux(self) -> None:
        """
        On other systems the state is unknown: L{None}.
        """
        self.patch(clock.sys, "platform", "darwin")
        self.assertIsNone(readKernelClock())


def steppingClock(steps: list[float], start: float = 1000.0) -> Iterator[float]:
    """
    Readings that advance by C{steps} in turn, repeated.
    """
    now = start
    while True:
        for step in steps:
            now += step
            yield now


class PrecisionTests(SynchronousTestCase):
    """
    L{measurePrecision} is log2 of the smallest positive step, rounded.
    """

    def test_steps(self) -> None:
        """
        The smallest positive step between readings decides; repeated
        readings (zero steps) are skipped.
        """
        for steps, expected in [
            ([0.0, 0.0, 2**-22], -22),
            ([2**-20, 2**-25, 2**-21], -25),
            ([1e-9], -30),
            ([1e-6], -20),
            ([0.25], -2),
            ([2.0], 0),
            ([2**-40], -32),
        ]:
            with self.subTest(steps=steps):
                readings = steppingClock(steps).__next__
                self.assertEqual(measurePrecision(readings), expected)

    def test_rounding(self) -> None:
        """
        log2 is rounded to the nearest integer, as chrony does: 0.7 us is
        2^-20.4, so -20; 0.6 us is 2^-20.7, so -21.
        """
        for step, expected in [(0.7e-6, -20), (0.6e-6, -21)]:
            readings = steppingClock([step]).__next__
            self.assertEqual(measurePrecision(readings), expected)

    def test_stoppedClock(self) -> None:
        """
        A clock that never moves gets precision 0 after a bounded number
        of readings.
        """
        reads = []

        def stopped() -> float:
            reads.append(1)
            return 5.0

        self.assertEqual(measurePrecision(stopped, maxReads=1000), 0)
        self.assertEqual(len(reads), 1001)

    def test_systemClock(self) -> None:
        """
        The system clock (a float of Unix time) has a precision of at
        least its float resolution, 2^-22 s today, and better than 1 ms.
        """
        precision = measurePrecision()
        self.assertTrue(-23 <= precision <= -10, precision)


def source(
    kernel: KernelClock | None,
    localStratum: int | None = None,
    refid: bytes = b"LOCL",
    cacheInterval: float = 1.0,
) -> tuple[ClockSource, FakeKernel]:
    reader = FakeKernel(kernel)
    return (
        ClockSource(
            localStratum,
            refid,
            kernel=reader,
            precision=-22,
            cacheInterval=cacheInterval,
        ),
        reader,
    )


class ClockSourceTests(SynchronousTestCase):
    """
    L{ClockSource} claims what the kernel and the configuration allow.
    """

    def test_unsynchronised(self) -> None:
        """
        An unsynchronised kernel and no local stratum: not synchronised,
        stratum 16, refid 0, the kernel's maximum error as dispersion, no
        reference time.
        """
        clockSource, _ = source(UNSYNCED)
        self.assertEqual(
            clockSource.state(1000.0),
            ClockState(
                leap=Leap.NONE,
                synchronised=False,
                stratum=MAX_STRATUM,
                refid=bytes(4),
                rootDelay=0.0,
                rootDispersion=16.0,
                referenceTime=None,
                precision=-22,
            ),
        )

    def test_unknownKernel(self) -> None:
        """
        Where the kernel's state cannot be read (not Linux), the clock is
        not synchronised, with the largest dispersion.
        """
        clockSource, _ = source(None)
        state = clockSource.state(1000.0)
        self.assertFalse(state.synchronised)
        self.assertEqual(state.rootDispersion, MAX_DISPERSION)

    def test_local(self) -> None:
        """
        With a local stratum an unsynchronised (or unknown) kernel is
        overridden: synchronised at that stratum, refid LOCL, no root delay
        or dispersion, and the time the local reference took over as
        reference time, kept within a minute of the time as chronyd's is.
        """
        for kernel in UNSYNCED, None:
            with self.subTest(kernel=kernel):
                clockSource, _ = source(kernel, localStratum=10)
                self.assertEqual(
                    clockSource.state(1000.0),
                    ClockState(
                        leap=Leap.NONE,
                        synchronised=True,
                        stratum=10,
                        refid=b"LOCL",
                        rootDelay=0.0,
                        rootDispersion=0.0,
                        referenceTime=1000.0,
                        precision=-22,
                    ),
                )
                self.assertEqual(clockSource.state(1064.0).referenceTime, 1000.0)
                self.assertEqual(clockSource.state(1065.0).referenceTime, 1065.0)
                self.assertEqual(clockSource.state(5000.0).referenceTime, 5000.0)

    def test_localRefid(self) -> None:
        """
        The refid is configurable and padded with NULs to 4 bytes.
        """
        clockSource, _ = source(UNSYNCED, localStratum=1, refid=b"GPS")
        self.assertEqual(clockSource.state(0.0).refid, b"GPS\0")

    def test_badConfiguration(self) -> None:
        """
        Strata are 1 to 15; refids 1 to 4 ASCII bytes.
        """
        for stratum in 0, 16, -1:
            self.assertRaises(ValueError, ClockSource, stratum, precision=-20)
        for refid in b"", b"TOOLONG", "É".encode():
            self.assertRaises(ValueError, ClockSource, 10, refid, precision=-20)
        self.assertRaises(ValueError, ClockSource, kernelStratum=16, precision=-20)

    def test_kernelSynchronised(self) -> None:
        """
        A synchronised kernel: its leap warning, its maximum error as root
        dispersion, the default stratum and refid 0.0.0.0 (the daemon's
        source is not known), the time it was first seen synchronised as
        reference time.
        """
        clockSource, _ = source(SYNCED)
        self.assertEqual(
            clockSource.state(1000.0),
            ClockState(
                leap=Leap.NONE,
                synchronised=True,
                stratum=clock.DEFAULT_KERNEL_STRATUM,
                refid=bytes(4),
                rootDelay=0.0,
                rootDispersion=0.05,
                referenceTime=1000.0,
                precision=-22,
            ),
        )

    def test_kernelSynchronisedWithLocal(self) -> None:
        """
        With a local stratum, a synchronised kernel keeps its dispersion but
        the configured stratum and refid are claimed.
        """
        clockSource, _ = source(SYNCED, localStratum=5, refid=b"PPS")
        state = clockSource.state(1000.0)
        self.assertEqual((state.stratum, state.refid), (5, b"PPS\0"))
        self.assertEqual(state.rootDispersion, 0.05)

    def test_leapStates(self) -> None:
        """
        The kernel's leap warning is announced, synchronised or local.
        """
        for leap in Leap.NONE, Leap.INSERT, Leap.DELETE:
            for kernel, local in ((SYNCED, None), (UNSYNCED, 10)):
                with self.subTest(leap=leap, synchronised=kernel.synchronised):
                    state = KernelClock(
                        kernel.synchronised, leap, kernel.maxError, kernel.estError
                    )
                    clockSource, _ = source(state, localStratum=local)
                    self.assertEqual(clockSource.state(0.0).leap, leap)

    def test_cache(self) -> None:
        """
        The kernel is read at most once per cache interval of the times
        given, and again when the time goes back.
        """
        clockSource, reader = source(SYNCED, cacheInterval=1.0)
        for now in 1000.0, 1000.2, 1000.999:
            clockSource.state(now)
        self.assertEqual(reader.reads, 1)
        clockSource.state(1001.0)
        self.assertEqual(reader.reads, 2)
        clockSource.state(1001.5)
        self.assertEqual(reader.reads, 2)
        clockSource.state(990.0)
        self.assertEqual(reader.reads, 3)

    def test_stateSpan(self) -> None:
        """
        L{ClockSource.stateSpan} gives the state with the span of times for
        which the kernel reading behind it is kept: the same state object
        anywhere in it, a new reading at its end.
        """
        clockSource, reader = source(SYNCED, cacheInterval=1.0)
        state, start, end = clockSource.stateSpan(1000.25)
        self.assertEqual((start, end), (1000.25, 1001.25))
        self.assertIs(clockSource.stateSpan(1001.0)[0], state)
        self.assertIs(clockSource.state(1001.2), state)
        self.assertEqual(reader.reads, 1)
        later, start, end = clockSource.stateSpan(1001.25)
        self.assertIsNot(later, state)
        self.assertEqual((start, end, reader.reads), (1001.25, 1002.25, 2))

    def test_followsKernel(self) -> None:
        """
        Once the cached reading expires, a change of the kernel's state is
        seen.
        """
        clockSource, reader = source(UNSYNCED)
        self.assertFalse(clockSource.state(1000.0).synchronised)
        reader.state = SYNCED
        self.assertFalse(clockSource.state(1000.5).synchronised)
        self.assertTrue(clockSource.state(1001.0).synchronised)
        reader.state = UNSYNCED
        self.assertFalse(clockSource.state(1002.0).synchronised)

    def test_referenceTimeTracksCorrections(self) -> None:
        """
        With a synchronised kernel the reference time is when a correction
        was seen: the maximum error went down or the estimated error
        changed.  The kernel growing the maximum error on its own is no
        correction.
        """
        clockSource, reader = source(SYNCED)
        self.assertEqual(clockSource.state(1000.0).referenceTime, 1000.0)
        reader.state = KernelClock(True, Leap.NONE, 0.051, 0.001)
        self.assertEqual(clockSource.state(1002.0).referenceTime, 1000.0)
        reader.state = KernelClock(True, Leap.NONE, 0.01, 0.001)
        self.assertEqual(clockSource.state(1004.0).referenceTime, 1004.0)
        reader.state = KernelClock(True, Leap.NONE, 0.011, 0.002)
        self.assertEqual(clockSource.state(1006.0).referenceTime, 1006.0)

    def test_localTakesOver(self) -> None:
        """
        When the kernel loses synchronisation, the local reference takes
        over then; when the clock is stepped back before the reference
        time, the reference time follows.
        """
        clockSource, reader = source(SYNCED, localStratum=10)
        self.assertEqual(clockSource.state(1000.0).referenceTime, 1000.0)
        reader.state = UNSYNCED
        state = clockSource.state(2000.0)
        self.assertEqual((state.referenceTime, state.rootDispersion), (2000.0, 0.0))
        self.assertEqual(clockSource.state(2030.0).referenceTime, 2000.0)
        self.assertEqual(clockSource.state(1500.0).referenceTime, 1500.0)

    def test_measuredPrecision(self) -> None:
        """
        Without a given precision, the system clock's is measured.
        """
        clockSource = ClockSource(kernel=FakeKernel(None))
        self.assertTrue(-32 <= clockSource.precision <= 0)
        self.assertEqual(clockSource.state(0.0).precision, clockSource.precision)
