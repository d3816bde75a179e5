"""
Tests for L{udptime.upstream}: the clock's state as the NTP daemon that
disciplines it says, with a fake daemon on a L{task.Clock}, and with a real
chronyd on loopback.
"""

from __future__ import annotations

import json
import time

from twisted.internet import task
from twisted.internet.defer import Deferred
from twisted.trial.unittest import SynchronousTestCase, TestCase

from tests.prometheus import freeTCPPort
from tests.support import TwistdServer, freePort, udpQuery, waitFor
from tests.test_ntp_interop import ReferenceServer
from tests.test_operations import NTP_REQUEST, key, scrape
from udptime.clock import (
    MAX_DISPERSION,
    MAX_STRATUM,
    ClockSource,
    Leap,
    toNTPShort,
    unixToNTP64,
)
from udptime.ntp import NTPPacket
from udptime.reading import QueryResult, QueryTimeout
from udptime.upstream import (
    DEFAULT_CACHE_INTERVAL,
    MISSED_POLLS,
    PHI,
    UpstreamClock,
    UpstreamReading,
    parseUpstream,
    readingFromLine,
    readingFromResult,
    readingLine,
    upstreamClock,
)

START = 1_800_000_000.0
CHRONY_LOCAL_REFID = bytes([127, 127, 1, 1])


def reading(
    readAt: float,
    leap: int = 0,
    stratum: int = 2,
    refid: bytes = b"\xc0\x00\x02\x01",
    rootDelay: float = 0.010,
    rootDispersion: float = 0.020,
) -> UpstreamReading:
    return UpstreamReading(
        leap=leap,
        stratum=stratum,
        refid=refid,
        referenceTime=readAt - 10.0,
        rootDelay=rootDelay,
        rootDispersion=rootDispersion,
        readAt=readAt,
        delay=0.0001,
    )


class FakeDaemon:
    """
    An L{UpstreamAsk} whose answers the test gives: each question is a
    L{Deferred} kept in C{questions}.
    """

    def __init__(self) -> None:
        self.questions: list[Deferred[UpstreamReading]] = []

    def __call__(self) -> Deferred[UpstreamReading]:
        question: Deferred[UpstreamReading] = Deferred()
        self.questions.append(question)
        return question

    def answer(self, value: UpstreamReading) -> None:
        self.questions[-1].callback(value)

    def fail(self) -> None:
        self.questions[-1].errback(QueryTimeout("no answer"))


class ParseUpstreamTests(SynchronousTestCase):
    """
    L{parseUpstream} reads C{ADDRESS[:PORT]}.
    """

    def test_valid(self) -> None:
        cases = {
            "127.0.0.1": ("127.0.0.1", 123),
            "127.0.0.1:11123": ("127.0.0.1", 11123),
            "::1": ("::1", 123),
            "[::1]": ("::1", 123),
            "[::1]:4123": ("::1", 4123),
            " 192.0.2.1:1 ": ("192.0.2.1", 1),
        }
        for text, expected in cases.items():
            self.assertEqual(parseUpstream(text), expected, text)

    def test_invalid(self) -> None:
        for text in (
            "",
            "localhost",
            "127.0.0.1:0",
            "127.0.0.1:65536",
            "127.0.0.1:x",
            "[::1",
            "[::1]x",
            "[::1]:",
            "300.0.0.1",
        ):
            self.assertRaises(ValueError, parseUpstream, text)


class ReadingTests(SynchronousTestCase):
    """
    L{readingFromResult} takes the daemon's fields from its reply.
    """

    def test_fields(self) -> None:
        packet = NTPPacket(
            leap=1,
            version=4,
            mode=4,
            stratum=3,
            rootDelay=toNTPShort(0.5),
            rootDispersion=toNTPShort(0.25),
            refid=b"\x0a\x00\x00\x01",
            referenceTimestamp=unixToNTP64(START - 64),
        )
        result = QueryResult(
            "ntp", "127.0.0.1", 123, packet.toBytes(), "", START, 0.002, 0.0
        )
        value = readingFromResult(result, START + 1)
        self.assertEqual(
            value,
            UpstreamReading(
                leap=1,
                stratum=3,
                refid=b"\x0a\x00\x00\x01",
                referenceTime=START - 64,
                rootDelay=0.5,
                rootDispersion=0.25,
                readAt=START + 1,
                delay=0.002,
            ),
        )
        self.assertTrue(value.synchronised)

    def test_noReferenceTime(self) -> None:
        packet = NTPPacket(leap=3, version=4, mode=4)
        result = QueryResult("ntp", "::1", 123, packet.toBytes(), "", START, 0.0, 0.0)
        value = readingFromResult(result, START)
        self.assertIsNone(value.referenceTime)
        self.assertFalse(value.synchronised)

    def test_synchronised(self) -> None:
        """
        Only LI 0-2 with a stratum from 1 to 15 is synchronised.
        """
        for leap, stratum, expected in [
            (0, 1, True),
            (2, 15, True),
            (3, 2, False),
            (0, 0, False),
            (0, 16, False),
            (0, 255, False),
        ]:
            value = reading(START, leap=leap, stratum=stratum)
            self.assertEqual(value.synchronised, expected, (leap, stratum))


class UpstreamClockTests(SynchronousTestCase):
    """
    L{UpstreamClock} polls the daemon on the reactor's clock and claims what
    it says, for as long as it may.
    """

    def setUp(self) -> None:
        self.reactor = task.Clock()
        self.reactor.advance(START)
        self.daemon = FakeDaemon()
        self.clock = UpstreamClock(
            self.reactor, self.daemon, interval=16.0, precision=-20, where="test"
        )
        self.clock.startService()
        self.addCleanup(self.clock.stopService)

    def now(self) -> float:
        return self.reactor.seconds()

    def test_unsynchronisedBeforeAnswer(self) -> None:
        """
        Until the daemon answers, the state is unsynchronised.
        """
        self.assertEqual(len(self.daemon.questions), 1)  # asked at start
        state = self.clock.state(self.now())
        self.assertFalse(state.synchronised)
        self.assertEqual(state.stratum, MAX_STRATUM)
        self.assertEqual(state.rootDispersion, MAX_DISPERSION)
        self.assertEqual(state.precision, -20)

    def test_claimsDaemonState(self) -> None:
        """
        The daemon's stratum (not one more), refid, reference time, root
        delay and leap are claimed as they are; the root dispersion grows at
        PHI from the answer to the end of the span the state is kept for.
        """
        self.daemon.answer(reading(self.now(), leap=1))
        self.reactor.advance(5.0)
        state, start, end = self.clock.stateSpan(self.now())
        self.assertTrue(state.synchronised)
        self.assertEqual(state.stratum, 2)
        self.assertEqual(state.refid, b"\xc0\x00\x02\x01")
        self.assertEqual(state.leap, Leap.INSERT)
        self.assertEqual(state.rootDelay, 0.010)
        self.assertEqual(state.referenceTime, START - 10.0)
        self.assertEqual(start, START + 5.0)
        self.assertEqual(end, START + 6.0)
        self.assertAlmostEqual(state.rootDispersion, 0.020 + PHI * 6.0, places=12)

    def test_spanKeepsOneObject(self) -> None:
        """
        Within its span the same state object comes back (so a server may
        keep what it built from it); past the span, a new one.
        """
        self.daemon.answer(reading(self.now()))
        first, start, end = self.clock.stateSpan(self.now())
        self.assertIs(self.clock.state(start + 0.5), first)
        later = self.clock.state(end)
        self.assertIsNot(later, first)
        self.assertGreater(later.rootDispersion, first.rootDispersion)

    def test_newAnswerReplacesSpan(self) -> None:
        """
        A new answer is served from the next question on, even within a
        span.
        """
        self.daemon.answer(reading(self.now(), stratum=2))
        self.clock.state(self.now())
        self.reactor.advance(16.0)
        self.daemon.answer(reading(self.now(), stratum=4))
        self.assertEqual(self.clock.state(self.now()).stratum, 4)

    def test_daemonSaysUnsynchronised(self) -> None:
        """
        From an answer with LI 3, or a stratum of 0 or 16, the state is
        unsynchronised at once.
        """
        self.daemon.answer(reading(self.now()))
        self.assertTrue(self.clock.state(self.now()).synchronised)
        for leap, stratum in (3, 2), (0, 0), (0, 16):
            self.reactor.advance(16.0)
            self.daemon.answer(reading(self.now(), leap=leap, stratum=stratum))
            state = self.clock.state(self.now())
            self.assertFalse(state.synchronised, (leap, stratum))
            self.assertEqual(state.leap, Leap.NONE)
            self.reactor.advance(16.0)
            self.daemon.answer(reading(self.now()))
            self.assertTrue(self.clock.state(self.now()).synchronised)

    def test_missedPolls(self) -> None:
        """
        When the daemon stops answering, its last word holds for
        L{MISSED_POLLS} poll intervals after it was said, and not a moment
        longer; spans never reach past it.
        """
        said = self.now()
        self.daemon.answer(reading(said))
        self.assertEqual(self.clock.maxAge, MISSED_POLLS * 16.0)
        deadline = said + self.clock.maxAge
        for _ in range(MISSED_POLLS - 1):
            self.reactor.advance(16.0)
            self.daemon.fail()
            self.assertFalse(self.clock.reachable)
        # Just before the deadline: still synchronised, and the span ends
        # at the deadline.
        self.reactor.advance(deadline - 0.5 - self.now())
        state, _, end = self.clock.stateSpan(self.now())
        self.assertTrue(state.synchronised)
        self.assertEqual(end, deadline)
        self.reactor.advance(0.5)
        self.daemon.fail()
        self.assertFalse(self.clock.state(deadline).synchronised)
        self.assertFalse(self.clock.state(deadline + 100).synchronised)
        self.assertEqual(self.clock.polls, MISSED_POLLS + 1)
        self.assertEqual(self.clock.answers, 1)

    def test_reach(self) -> None:
        """
        The reach register has one bit per poll, the newest lowest.
        """
        self.daemon.answer(reading(self.now()))
        self.reactor.advance(16.0)
        self.daemon.fail()
        self.reactor.advance(16.0)
        self.daemon.answer(reading(self.now()))
        self.assertEqual(self.clock.reach, 0b101)
        self.assertTrue(self.clock.reachable)

    def test_steppedClock(self) -> None:
        """
        A time far from the answer's, either way (the clock was stepped),
        is not served from that answer.
        """
        self.daemon.answer(reading(self.now()))
        self.assertFalse(self.clock.state(self.now() - 1000.0).synchronised)
        self.assertTrue(self.clock.state(self.now() - 1.0).synchronised)

    def test_rootDistance(self) -> None:
        """
        A root distance past RFC 5905's MAXDIST (1.5 s) is unsynchronised.
        """
        self.daemon.answer(reading(self.now(), rootDelay=1.0, rootDispersion=1.1))
        self.assertFalse(self.clock.state(self.now()).synchronised)
        self.reactor.advance(16.0)
        self.daemon.answer(reading(self.now(), rootDelay=1.0, rootDispersion=1.1))
        self.clock.maxDistance = 2.0
        self.assertTrue(self.clock.state(self.now()).synchronised)

    def test_oneQuestionAtATime(self) -> None:
        """
        A poll while the last question is unanswered asks nothing.
        """
        self.clock.poll()
        self.assertEqual(len(self.daemon.questions), 1)
        self.daemon.answer(reading(self.now()))
        self.clock.poll()
        self.assertEqual(len(self.daemon.questions), 2)

    def test_stopCancels(self) -> None:
        """
        Stopping the service cancels the question under way and the polls.
        """
        question = self.daemon.questions[0]
        self.clock.stopService()
        self.assertTrue(question.called)
        self.assertEqual(self.clock.answers, 0)
        self.reactor.advance(100.0)
        self.assertEqual(len(self.daemon.questions), 1)

    def test_askRaises(self) -> None:
        """
        An asker that raises counts as a missed poll, and polls go on.
        """

        def broken() -> Deferred[UpstreamReading]:
            raise OSError("no route")

        clock = UpstreamClock(self.reactor, broken, interval=16.0, precision=-20)
        clock.startService()
        self.addCleanup(clock.stopService)
        self.reactor.advance(16.0)
        self.assertEqual((clock.polls, clock.answers), (2, 0))
        self.assertFalse(clock.state(self.now()).synchronised)

    def test_fallback(self) -> None:
        """
        While the daemon's state is unsynchronised, the fallback's state
        (C{--local-stratum}) is served; the daemon's once it is back.
        """
        local = ClockSource(9, kernel=lambda: None, precision=-20)
        clock = UpstreamClock(
            self.reactor, self.daemon, interval=16.0, precision=-20, fallback=local
        )
        clock.startService()
        self.addCleanup(clock.stopService)
        state = clock.state(self.now())
        self.assertTrue(state.synchronised)
        self.assertEqual((state.stratum, state.refid), (9, b"LOCL"))
        self.daemon.answer(reading(self.now(), stratum=3))
        self.assertEqual(clock.state(self.now()).stratum, 3)

    def test_badInterval(self) -> None:
        for interval in 0.0, -1.0, float("inf"), float("nan"):
            self.assertRaises(
                ValueError, UpstreamClock, self.reactor, self.daemon, interval=interval
            )


class ChronydTests(TestCase):
    """
    L{UpstreamClock} against a real chronyd serving C{local stratum 7} on a
    loopback port, with short intervals.
    """

    timeout = 60

    async def waitFor(self, check: object, what: str, timeout: float = 20.0) -> None:
        """
        Let the reactor run until C{check()} is true, for at most C{timeout}
        seconds.
        """
        from twisted.internet import reactor

        assert callable(check)
        deadline = time.monotonic() + timeout
        while not check():
            if time.monotonic() > deadline:
                self.fail(f"timed out waiting for {what}")
            await task.deferLater(reactor, 0.05)  # polling, bounded by the deadline

    async def test_chronyd(self) -> None:
        """
        The state carries chronyd's stratum (7, not 8) and refid
        (127.127.1.1, its local reference); once chronyd is stopped, it
        turns unsynchronised, because the last answer grew too old.
        """
        from twisted.internet import reactor

        chronyd = ReferenceServer(stratum=7)
        self.addCleanup(chronyd.cleanup)
        chronyd.start()
        clock = upstreamClock(
            reactor,
            ("127.0.0.1", chronyd.port),
            timeout=0.2,
            tries=1,
            interval=0.5,
            maxAge=1.5,
            precision=-20,
        )
        clock.startService()
        self.addCleanup(clock.stopService)

        await self.waitFor(lambda: clock.reading is not None, "chronyd's answer")
        state = clock.state(time.time())
        self.assertTrue(state.synchronised)
        self.assertEqual(state.stratum, 7)
        self.assertEqual(state.refid, CHRONY_LOCAL_REFID)
        self.assertEqual(state.leap, Leap.NONE)
        self.assertGreaterEqual(state.rootDispersion, 0.0)
        self.assertLess(state.rootDispersion, 0.01)
        assert state.referenceTime is not None
        self.assertLess(abs(state.referenceTime - time.time()), 3600.0)

        assert chronyd.process is not None
        chronyd.process.terminate()
        chronyd.process.wait(10)
        await self.waitFor(
            lambda: not clock.state(time.time()).synchronised, "unsynchronised"
        )
        # It was the age of the last answer, which said synchronised.
        assert clock.reading is not None
        self.assertTrue(clock.reading.synchronised)
        self.assertFalse(clock.reachable)
        self.assertGreaterEqual(time.time(), clock.reading.readAt + clock.maxAge)


class TwistdUpstreamTests(SynchronousTestCase):
    """
    A real C{twistd udptime --upstream} in front of a real chronyd serving
    C{local stratum 6} on a loopback port.
    """

    interval = 1.0
    """C{--upstream-interval}: short, for the test."""

    workers = 0
    """C{--workers}."""

    sources = ["127.0.0.1"]
    """The addresses the test asks from."""

    def test_upstream(self) -> None:
        """
        udptime's NTP replies carry chronyd's leap indicator, stratum,
        refid and root delay, and its metrics say so; once chronyd is
        stopped, within the documented time (its last answer is believed
        for three intervals, and a state is kept for at most one second
        more), they say LI 3 and stratum 0.
        """
        chronyd = ReferenceServer(stratum=6)
        self.addCleanup(chronyd.cleanup)
        chronyd.start()
        daemon = NTPPacket.fromBytes(udpQuery(NTP_REQUEST, "127.0.0.1", chronyd.port))
        self.assertEqual((daemon.leap, daemon.stratum), (0, 6))

        ntpPort, metricsPort = freePort(), freeTCPPort()
        server = TwistdServer(
            [
                "--port=0",
                f"--ntp-port={ntpPort}",
                "--interface=127.0.0.1",
                f"--upstream=127.0.0.1:{chronyd.port}",
                f"--upstream-interval={self.interval:g}",
                f"--metrics-port={metricsPort}",
                # The test asks often: no Kiss-o'-Death.
                "--rate=0",
                f"--workers={self.workers}",
            ],
            env={"PYTHONUNBUFFERED": "1"},
        )
        self.addCleanup(server.cleanup)
        server.start(1 + self.workers, timeout=60.0)

        def replies() -> list[NTPPacket]:
            return [
                NTPPacket.fromBytes(
                    udpQuery(NTP_REQUEST, "127.0.0.1", ntpPort, 2.0, (source, 0))
                )
                for source in self.sources
            ]

        def reply(synchronised: bool) -> NTPPacket | None:
            # The reply, once every source (every worker) gets the same
            # state, synchronised or not as asked (a worker may keep its
            # state for up to a second after another changed).
            packets = replies()
            states = {(p.leap, p.stratum, p.refid) for p in packets}
            packet = packets[0]
            if len(states) != 1 or (packet.leap != Leap.UNSYNCHRONISED) != synchronised:
                return None
            return packet

        synchronised = waitFor(lambda: reply(True), "a synchronised reply")
        self.assertEqual(synchronised.stratum, daemon.stratum)
        self.assertEqual(synchronised.refid, daemon.refid)
        self.assertEqual(synchronised.refid, CHRONY_LOCAL_REFID)
        self.assertEqual(synchronised.rootDelay, daemon.rootDelay)
        self.assertGreaterEqual(synchronised.rootDispersion, daemon.rootDispersion)
        found = scrape(metricsPort)
        self.assertEqual(found[key("udptime_clock_stratum")], 6)
        self.assertEqual(found[key("udptime_upstream_reachable")], 1)
        self.checkServed(metricsPort)

        assert chronyd.process is not None
        chronyd.process.terminate()
        chronyd.process.wait(10)
        documented = MISSED_POLLS * self.interval + DEFAULT_CACHE_INTERVAL
        unsynchronised = waitFor(
            lambda: reply(False),
            "an unsynchronised reply",
            # The documented time, and room for a slow machine.
            timeout=documented + 10.0,
        )
        self.assertEqual(unsynchronised.stratum, 0)
        self.assertEqual(unsynchronised.refid, bytes(4))
        found = scrape(metricsPort)
        self.assertEqual(found[key("udptime_clock_synchronised")], 0)
        self.assertEqual(found[key("udptime_upstream_reachable")], 0)
        self.assertEqual(server.stop(), 0)
        self.assertIn("did not answer", server.log())

    def checkServed(self, metricsPort: int) -> None:
        """
        Check how the replies were served (in one process: nothing more).
        """


class TwistdUpstreamWorkersTests(TwistdUpstreamTests):
    """
    The same with C{--workers 2}: the supervisor alone asks chronyd, and
    both workers serve its word.
    """

    workers = 2
    sources = [f"127.0.0.{n}" for n in range(1, 9)]

    def checkServed(self, metricsPort: int) -> None:
        """
        Both workers answered some of the synchronised replies.
        """

        def served() -> bool:
            found = scrape(metricsPort)
            return all(
                found.get(
                    key(
                        "udptime_worker_received_packets_total",
                        worker=str(index),
                        service="ntp",
                    ),
                    0,
                )
                > 0
                for index in (1, 2)
            )

        waitFor(served, "both workers' reports")


class ReadingLineTests(SynchronousTestCase):
    """
    L{readingLine} and L{readingFromLine}: the daemon's answer as the
    supervisor hands it to its workers.
    """

    def test_roundTrip(self) -> None:
        answer = reading(START, leap=1, stratum=4)
        line = readingLine(answer)
        self.assertTrue(line.endswith(b"\n"))
        self.assertEqual(line.count(b"\n"), 1)
        self.assertEqual(readingFromLine(line), answer)
        noReference = UpstreamReading(3, 0, bytes(4), None, 0.0, 0.0, START)
        self.assertEqual(readingFromLine(readingLine(noReference)), noReference)

    def test_bad(self) -> None:
        good = json.loads(readingLine(reading(START)))
        for change in [
            {"format": "udptime-nts-keys"},
            {"version": 2},
            {"leap": 4},
            {"stratum": 1.5},
            {"refid": "c00002"},
            {"refid": "zzzzzzzz"},
            {"rootDelay": -1},
            {"readAt": "now"},
            {"delay": True},
        ]:
            line = json.dumps({**good, **change}).encode()
            self.assertRaises(ValueError, readingFromLine, line)
        self.assertRaises(ValueError, readingFromLine, b"not json\n")
        self.assertRaises(ValueError, readingFromLine, b"NaN\n")


class BriefedClockTests(SynchronousTestCase):
    """
    A worker's L{UpstreamClock} asks nothing and serves the answers it is
    given; a supervisor's hands every answer on.
    """

    def test_noAsk(self) -> None:
        reactor = task.Clock()
        reactor.advance(START)
        clock = UpstreamClock(reactor, None, interval=16.0, precision=-20)
        clock.startService()
        self.addCleanup(clock.stopService)
        reactor.advance(100)
        self.assertEqual(clock.polls, 0)
        self.assertFalse(clock.state(reactor.seconds()).synchronised)
        clock.take(reading(reactor.seconds(), stratum=5))
        state = clock.state(reactor.seconds())
        self.assertEqual((state.synchronised, state.stratum), (True, 5))
        reactor.advance(MISSED_POLLS * 16.0 + 1)
        self.assertFalse(clock.state(reactor.seconds()).synchronised)

    def test_onReading(self) -> None:
        reactor = task.Clock()
        daemon = FakeDaemon()
        clock = UpstreamClock(reactor, daemon, interval=16.0, precision=-20)
        handed: list[UpstreamReading] = []
        clock.onReading = handed.append
        clock.startService()
        self.addCleanup(clock.stopService)
        answer = reading(START)
        daemon.answer(answer)
        self.assertEqual(handed, [answer])
        reactor.advance(16.0)
        daemon.fail()
        self.assertEqual(handed, [answer])
