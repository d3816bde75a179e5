"""
Tests for L{udptime.zonelimit} and the text service's cap on the distinct
time zones it answers in per second.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, tzinfo

from twisted.internet.task import Clock
from twisted.logger import Logger, formatEvent
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

from tests.support import deliver
from tests.test_policy import started
from tests.test_tap import parse
from udptime import text
from udptime.server import TextTimeServer
from udptime.tap import makeService
from udptime.zonelimit import DEFAULT_ZONES_PER_SECOND, REFUSAL_TEXT, ZoneLimit

REFUSED = f"error: {REFUSAL_TEXT}\n".encode()
START = 1_800_000_000.0
CLIENT = ("192.0.2.1", 40000)


def zoneNames() -> list[str]:
    """
    Every zone of the host's database, as it spells them.
    """
    return sorted(text._zoneNamesByFold().values())


class ZoneLimitTests(SynchronousTestCase):
    """
    L{ZoneLimit} admits the first C{perSecond} distinct zones of each
    second, as often as they come.
    """

    def test_perSecond(self) -> None:
        zones = [text.lookupZone(name) for name in zoneNames()[:5]]
        limit = ZoneLimit(3)
        admitted = [limit.admit(zone, START + 0.5) for zone in zones]
        self.assertEqual(admitted, [True, True, True, False, False])
        self.assertEqual(limit.refused, 2)
        # The zones of this second, again: still admitted.
        self.assertTrue(all(limit.admit(zone, START + 0.9) for zone in zones[:3]))
        # The next second starts afresh.
        self.assertEqual(
            [limit.admit(zone, START + 1.0) for zone in reversed(zones)],
            [True, True, True, False, False],
        )
        self.assertEqual(limit.refused, 4)

    def test_atLeastOne(self) -> None:
        self.assertRaises(ValueError, ZoneLimit, 0)


class TextZoneCapTests(SynchronousTestCase):
    """
    A text service answers in at most C{zoneLimit.perSecond} distinct named
    zones per second; requests for others get an error line, counted
    C{limited}; requests naming no zone are never refused.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(START)
        self.events: list[dict[str, object]] = []
        self.server = TextTimeServer(clock=self.clock.seconds, defaultZone=UTC)
        self.server.log = Logger(observer=self.events.append)
        self.transport = started(self.server)

    def ask(self, request: bytes) -> bytes:
        """
        The reply to C{request}, received now.
        """
        before = len(self.transport.written)
        deliver(self.server, request, CLIENT, self.clock.seconds())
        self.assertEqual(len(self.transport.written), before + 1)
        return self.transport.written[-1][0]

    def countRenders(self) -> list[tzinfo | None]:
        """
        Record the zones whose ISO reply text is made for a new second (the
        work the caches save), from now on.
        """
        made: list[tzinfo | None] = []
        render: Callable[[int, tzinfo | None], tuple[int, bytes, bytes]]
        render = text._isoLineParts

        def counting(second: int, zone: tzinfo | None) -> tuple[int, bytes, bytes]:
            made.append(zone)
            return render(second, zone)

        self.patch(text, "_isoLineParts", counting)
        return made

    def test_defaultCap(self) -> None:
        limit = self.server.zoneLimit
        assert limit is not None
        self.assertEqual(limit.perSecond, DEFAULT_ZONES_PER_SECOND)

    def test_cyclingThroughZones(self) -> None:
        """
        A client asking for each zone of the database in turn, a hundred a
        second (many clients, say, under any per-client limit), is answered
        in 64 zones a second: the replies' text is made for at most 64 zones
        a second, and the rest are refused with an error line.
        """
        names = zoneNames()
        self.assertGreater(len(names), 300)
        made = self.countRenders()
        answered = refused = 0
        for index in range(1000):
            reply = self.ask(f"iso {names[index % len(names)]}".encode())
            if reply == REFUSED:
                refused += 1
            else:
                self.assertRegex(reply, rb"^\d{4}-\d\d-\d\dT")
                answered += 1
            self.clock.advance(0.01)
        self.assertEqual(answered, 10 * DEFAULT_ZONES_PER_SECOND)
        self.assertEqual(refused, 1000 - answered)
        self.assertLessEqual(len(made), 10 * DEFAULT_ZONES_PER_SECOND)
        counters = self.server.counters
        self.assertEqual(
            (counters.answered, counters.limited, counters.malformed),
            (1000, refused, 0),
        )
        self.assertEqual(self.server.zoneLimit.refused, refused)
        # Logged at a bounded rate: the first ten, then one per 5 seconds.
        lines = [formatEvent(event) for event in self.events]
        self.assertLessEqual(len(lines), 10 + 2)
        self.assertIn("more than 64 time zones asked for in one second", lines[0])

    def test_admittedZonesStillAnswered(self) -> None:
        """
        Over the cap, the zones already answered in this second are still
        answered, as are requests naming no zone, and requests with a token
        get the token back on the refusal.
        """
        names = zoneNames()
        self.server.zoneLimit = ZoneLimit(2)
        self.assertNotEqual(self.ask(b"iso " + names[0].encode()), REFUSED)
        self.assertNotEqual(self.ask(b"ctime " + names[1].encode()), REFUSED)
        self.assertEqual(self.ask(b"iso " + names[2].encode()), REFUSED)
        self.assertEqual(
            self.ask(b"rfc2822 " + names[2].encode() + b" @t0k3n"),
            REFUSED[:-1] + b" @t0k3n\n",
        )
        self.assertNotEqual(self.ask(b"unix " + names[0].encode()), REFUSED)
        self.assertNotEqual(self.ask(b"iso " + names[1].encode()), REFUSED)
        for request in (b"", b"iso", b"unix", b"month 3", b"hello"):
            self.assertNotEqual(self.ask(request), REFUSED)
        self.clock.advance(1)
        self.assertNotEqual(self.ask(b"iso " + names[2].encode()), REFUSED)

    def test_noCap(self) -> None:
        """
        Without a cap every zone is answered.
        """
        self.server.zoneLimit = None
        for name in zoneNames()[:200]:
            self.assertNotEqual(self.ask(f"iso {name}".encode()), REFUSED)
        self.assertEqual(self.server.counters.limited, 0)

    def test_zoneReadOnce(self) -> None:
        """
        However its name is spelt, a zone is read from the database once.
        """
        text.lookupZone.cache_clear()
        text._loadZone.cache_clear()
        spellings = ["Europe/Paris", "europe/paris", "EUROPE/PARIS", "eUROPE/pARIS"]
        zones = {text.lookupZone(name) for name in spellings}
        self.assertEqual(len(zones), 1)
        self.assertEqual(text._loadZone.cache_info().misses, 1)


class ZoneOptionTests(SynchronousTestCase):
    """
    C{--zones-per-second} sets the cap the text services share.
    """

    def textProtocols(self, *arguments: str) -> list[TextTimeServer]:
        top = makeService(parse(*arguments))
        found = []
        for service in top:  # type: ignore[attr-defined]
            protocol = getattr(service, "protocol", None)
            if isinstance(protocol, TextTimeServer):
                found.append(protocol)
        return found

    def test_shared(self) -> None:
        protocols = self.textProtocols(
            "--port", "5002", "--interface", "127.0.0.1", "--zones-per-second", "7"
        )
        self.assertTrue(protocols)
        limit = protocols[0].zoneLimit
        assert limit is not None
        self.assertEqual(limit.perSecond, 7)
        self.assertTrue(all(p.zoneLimit is limit for p in protocols))

    def test_default(self) -> None:
        [protocol] = self.textProtocols("--port", "5002", "--interface", "127.0.0.1")
        limit = protocol.zoneLimit
        assert limit is not None
        self.assertEqual(limit.perSecond, DEFAULT_ZONES_PER_SECOND)

    def test_off(self) -> None:
        [protocol] = self.textProtocols(
            "--port", "5002", "--interface", "127.0.0.1", "--zones-per-second", "0"
        )
        self.assertIsNone(protocol.zoneLimit)

    def test_bad(self) -> None:
        self.assertRaises(usage.UsageError, parse, "--zones-per-second", "-1")
