"""
Boundary cases of L{udptime.policy}: the rates, bursts and clock-step
limits of the buckets at their edges and at rates other than one per
second; the Kiss-o'-Death table and cap under a flood; IPv4-mapped rules;
the verdicts' types (a refusal is never a falsy value that could pass for
an admission).
"""

from __future__ import annotations

import ipaddress
import math
from dataclasses import FrozenInstanceError

from hypothesis import example, given, settings
from hypothesis import strategies as st
from twisted.logger import Logger
from twisted.trial.unittest import SynchronousTestCase

from tests.support import RecordingTransport, deliver
from udptime import counters, policy
from udptime.decision import Refusal
from udptime.policy import (
    ADMIT,
    DEFAULT_BURST,
    DEFAULT_IPV6_PREFIX,
    DEFAULT_KOD_INTERVAL,
    DEFAULT_KOD_RATE,
    DEFAULT_LOOP_WINDOW,
    DEFAULT_MAX_CLIENTS,
    DEFAULT_RATE,
    DENIED,
    KISS,
    LIMITED,
    LOOPED,
    AccessList,
    AccessRule,
    Admission,
    Policy,
    PolicyProfile,
    RateLimiter,
    ReplyMemory,
    SourceLimiter,
)
from udptime.server import UDPServerProtocol

NOW = 1_800_000_000.0

RATES = [(4.0, 3), (0.25, 2), (1.0, 2), (8.0, 1), (0.5, 1)]
"""C{(rate, burst)} pairs the boundary tables run with."""


def filled(rate: float, burst: int, at: float = 0.0) -> tuple[RateLimiter, float]:
    """
    A limiter whose shared bucket took C{burst} requests at time C{at}, and
    the arrival time it then holds.
    """
    limit = RateLimiter(rate, burst)
    for _ in range(burst):
        assert limit.admit(at)
    return limit, limit._arrivals[policy.EVERYONE]


def justBefore(tat: float, ahead: float) -> float:
    """
    The latest time at which C{tat} is more than C{ahead} seconds away.
    """
    now = tat - ahead
    for _ in range(64):
        now = math.nextafter(now, -math.inf)
        if tat - now > ahead:
            return now
    raise AssertionError(f"no time {ahead} before {tat}")


class DefaultsTests(SynchronousTestCase):
    """
    The documented defaults, as numbers (the manual states them).
    """

    def test_values(self) -> None:
        self.assertEqual(
            (
                DEFAULT_RATE,
                DEFAULT_BURST,
                DEFAULT_MAX_CLIENTS,
                DEFAULT_IPV6_PREFIX,
                DEFAULT_KOD_INTERVAL,
                DEFAULT_KOD_RATE,
            ),
            (1.0, 32, 100_000, 64, 8.0, 10.0),
        )
        self.assertEqual(policy.SERVICE_PORTS, {7, 13, 17, 19, 37, 123})

    def test_defaultLimiter(self) -> None:
        """
        By default one source gets 32 requests back to back, then one a
        second.
        """
        limiter = SourceLimiter()
        verdicts = [limiter.admit("192.0.2.1", NOW) for _ in range(40)]
        self.assertEqual(verdicts, [ADMIT] * 32 + [LIMITED] * 8)
        self.assertIs(limiter.admit("192.0.2.1", NOW + 0.99), LIMITED)
        self.assertIs(limiter.admit("192.0.2.1", NOW + 1.0), ADMIT)
        self.assertEqual(
            (limiter.rate, limiter.burst, limiter.maxClients, limiter.ipv6Prefix),
            (1.0, 32, 100_000, 64),
        )
        self.assertEqual(limiter.kodInterval, 0.0)

    def test_ntpProfileKisses(self) -> None:
        """
        The NTP service's policy kisses a limited client once per 8 s.
        """
        verdicts = policy.Policy.fromProfile(
            PolicyProfile(kissOfDeath=True), rate=1 / 64, burst=1
        )
        addr = ("192.0.2.1", 40000)
        self.assertIs(verdicts.admit(addr, NOW), ADMIT)
        self.assertIs(verdicts.admit(addr, NOW), KISS)
        self.assertIs(verdicts.admit(addr, NOW + 7.5), LIMITED)
        self.assertIs(verdicts.admit(addr, NOW + 8.5), KISS)


class ParameterTests(SynchronousTestCase):
    """
    The smallest and largest accepted parameters work; the next ones out
    are refused.
    """

    def test_smallestTable(self) -> None:
        limiter = SourceLimiter(rate=1.0, burst=1, maxClients=1)
        self.assertIs(limiter.admit("192.0.2.1", NOW), ADMIT)
        self.assertIs(limiter.admit("192.0.2.1", NOW), LIMITED)
        self.assertIs(limiter.admit("192.0.2.2", NOW), ADMIT)
        self.assertEqual((len(limiter), limiter.evictions), (1, 1))
        self.assertIs(limiter.admit("192.0.2.1", NOW), ADMIT)

    def test_prefixLengths(self) -> None:
        """
        A /1 groups half the IPv6 space; a /128 is one address.
        """
        for prefix, first, second, shared in [
            (1, "2001:db8::1", "3fff::1", True),
            (1, "2001:db8::1", "8000::1", False),
            (128, "2001:db8::1", "2001:db8::1%lo", True),
            (128, "2001:db8::1", "2001:db8::2", False),
        ]:
            with self.subTest(prefix=prefix, second=second):
                limiter = SourceLimiter(rate=1.0, burst=1, ipv6Prefix=prefix)
                self.assertIs(limiter.admit(first, NOW), ADMIT)
                self.assertIs(limiter.admit(second, NOW), LIMITED if shared else ADMIT)

    def test_outOfRange(self) -> None:
        for kwargs in [
            {"maxClients": 0},
            {"ipv6Prefix": 0},
            {"ipv6Prefix": 129},
            {"burst": 0},
            {"rate": -0.5},
        ]:
            with self.subTest(**kwargs):
                self.assertRaises(ValueError, RateLimiter, **kwargs)
        RateLimiter(rate=1e-9, burst=1, maxClients=1, ipv6Prefix=1)
        SourceLimiter(kodInterval=0.0)
        self.assertRaises(ValueError, SourceLimiter, kodInterval=-1e-9)


class RateTests(SynchronousTestCase):
    """
    Buckets at rates other than one a second, where an interval and a rate
    are different numbers.
    """

    def test_backToBack(self) -> None:
        """
        C{burst} requests at one instant are admitted, the next one is not,
        at any rate.
        """
        for rate, burst in RATES:
            with self.subTest(rate=rate, burst=burst):
                limit = RateLimiter(rate, burst)
                self.assertEqual(
                    [limit.admit(NOW) for _ in range(burst + 2)],
                    [True] * burst + [False] * 2,
                )
                self.assertEqual(limit.refused, 2)
                self.assertEqual(limit.interval, 1.0 / rate)

    def test_sustained(self) -> None:
        """
        After the burst, one request per interval (1 / rate) is admitted: a
        request a little before the interval is over is not.
        """
        for rate, burst in RATES:
            interval = 1.0 / rate
            with self.subTest(rate=rate, burst=burst):
                limit = RateLimiter(rate, burst)
                for _ in range(burst):
                    limit.admit(NOW)
                for step in range(1, 6):
                    now = NOW + step * interval
                    self.assertFalse(limit.admit(now - 0.01 * interval))
                    self.assertTrue(limit.admit(now))
                    self.assertFalse(limit.admit(now))

    def test_idleRefillsWholeBurst(self) -> None:
        """
        After a long pause the whole burst is available again, and no more.
        """
        for rate, burst in RATES:
            with self.subTest(rate=rate, burst=burst):
                limit = RateLimiter(rate, burst)
                for _ in range(burst + 3):
                    limit.admit(NOW)
                later = NOW + 10 * burst / rate
                self.assertEqual(
                    [limit.admit(later) for _ in range(burst + 1)],
                    [True] * burst + [False],
                )

    @settings(max_examples=100)
    @given(
        rate=st.sampled_from([0.25, 0.5, 2.0, 4.0, 10.0, 1000.0]),
        burst=st.integers(1, 20),
        intervals=st.integers(1, 30),
    )
    @example(rate=4.0, burst=3, intervals=5)
    @example(rate=0.25, burst=2, intervals=20)
    def test_steadyFlood(self, rate: float, burst: int, intervals: int) -> None:
        """
        A source that sends more than its burst at once, then eight
        requests an interval for C{intervals} intervals (1 / rate seconds
        each), gets its burst and one request per interval.
        """
        limit = RateLimiter(rate, burst)
        step = 1.0 / (rate * 8)
        admitted = sum(limit.admit(NOW) for _ in range(burst + 5))
        admitted += sum(
            limit.admit(NOW + i * step) for i in range(1, intervals * 8 + 1)
        )
        self.assertEqual(admitted, burst + intervals)

    def test_burstEdge(self) -> None:
        """
        A request exactly at the burst's edge (its arrival time as far
        ahead as the burst allows) is admitted; one a hair earlier is not.
        """
        for rate, burst in [(4.0, 3), (0.25, 2), (1.0, 2)]:
            with self.subTest(rate=rate, burst=burst):
                limit, tat = filled(rate, burst)
                edge = tat - limit._tolerance
                self.assertEqual(tat - edge, limit._tolerance)
                early, _ = filled(rate, burst)
                self.assertFalse(early.admit(justBefore(tat, limit._tolerance)))
                self.assertTrue(limit.admit(edge))

    def test_horizonEdge(self) -> None:
        """
        A clock stepped back so that a client's arrival time is exactly at
        the horizon leaves the client limited; a step back past it starts
        the client again with a full bucket (less one token).
        """
        for rate, burst in RATES:
            with self.subTest(rate=rate, burst=burst):
                limit, tat = filled(rate, burst)
                edge = tat - limit._horizon
                self.assertEqual(tat - edge, limit._horizon)
                self.assertFalse(limit.admit(edge))
                limit, _ = filled(rate, burst)
                past = justBefore(tat, limit._horizon)
                self.assertTrue(limit.admit(past))
                self.assertEqual(limit._arrivals[policy.EVERYONE], past + 1.0 / rate)

    def test_horizonTable(self) -> None:
        """
        A clock step back: how far ahead a client's arrival time then is
        (in intervals, beyond the burst's tolerance) decides whether it is
        reset (admitted) or still limited.
        """
        for rate, burst in RATES:
            interval = 1.0 / rate
            for beyond, admitted in [
                (0.5, False),
                (1.0, False),
                (1.9, False),
                (2.1, True),
                (3.0, True),
                (1000.0, True),
            ]:
                with self.subTest(rate=rate, burst=burst, beyond=beyond):
                    limit, tat = filled(rate, burst, NOW)
                    now = tat - limit._tolerance - beyond * interval
                    self.assertEqual(limit.admit(now), admitted)

    def test_stepBackResetsOnce(self) -> None:
        """
        After a step back the client starts again from the new time: its
        burst, then its rate; the step is not a licence for more.
        """
        for rate, burst in RATES:
            with self.subTest(rate=rate, burst=burst):
                limit = SourceLimiter(rate, burst)
                for _ in range(burst + 1):
                    limit.admit("192.0.2.1", NOW)
                back = NOW - 3600.0
                verdicts = [limit.admit("192.0.2.1", back) for _ in range(burst + 2)]
                self.assertEqual(verdicts, [ADMIT] * burst + [LIMITED] * 2)


class KissTests(SynchronousTestCase):
    """
    The Kiss-o'-Death verdicts: when, how many, and the memory they take.
    """

    def test_intervalEdges(self) -> None:
        """
        A client kissed at time t is not kissed again before t +
        kodInterval (nor at t again), and is from then on; a clock stepped
        back past the interval does not keep it from one.
        """
        for interval in [8.0, 2.0, 0.5]:
            for offset, verdict in [
                (0.0, LIMITED),
                (0.25, LIMITED),
                (interval - 0.125, LIMITED),
                (interval, KISS),
                (interval + 0.25, KISS),
                (-0.25, KISS),
            ]:
                with self.subTest(interval=interval, offset=offset):
                    limiter = SourceLimiter(
                        rate=1 / 64, burst=1, kodInterval=interval, kodRate=100.0
                    )
                    self.assertIs(limiter.admit("192.0.2.1", 1024.0), ADMIT)
                    self.assertIs(limiter.admit("192.0.2.1", 1024.0), KISS)
                    self.assertIs(limiter.admit("192.0.2.1", 1024.0 + offset), verdict)

    def test_globalCapVerdicts(self) -> None:
        """
        Under a flood from many clients, every verdict is one of the three
        (never anything else, never a false value), the KoDs number the
        cap's burst, then its rate.
        """
        limiter = SourceLimiter(rate=1 / 64, burst=1, kodInterval=8.0, kodRate=4.0)
        verdicts = []
        for i in range(200):
            host = f"198.51.100.{i}"
            verdicts.append(limiter.admit(host, NOW))
            verdicts.append(limiter.admit(host, NOW))
        for verdict in verdicts:
            self.assertIn(verdict, (ADMIT, KISS, LIMITED))
            self.assertTrue(verdict)
        self.assertEqual(verdicts.count(ADMIT), 200)
        self.assertEqual(verdicts.count(KISS), 4)
        self.assertEqual(verdicts.count(LIMITED), 196)
        later = [limiter.admit(f"198.51.100.{i}", NOW + 1.0) for i in range(200)]
        self.assertEqual(later.count(KISS), 4)

    def test_slowCap(self) -> None:
        """
        A cap below one KoD a second allows one, then one per 1 / kodRate
        seconds.
        """
        limiter = SourceLimiter(rate=1 / 64, burst=1, kodInterval=1.0, kodRate=0.5)
        for i in range(4):
            limiter.admit(f"192.0.2.{i}", 0.0)
        self.assertEqual(
            [limiter.admit(f"192.0.2.{i}", 0.0) for i in range(4)],
            [KISS, LIMITED, LIMITED, LIMITED],
        )
        self.assertIs(limiter.admit("192.0.2.1", 1.5), LIMITED)
        self.assertIs(limiter.admit("192.0.2.1", 2.0), KISS)

    def test_chainedCapRefusesWithoutKiss(self) -> None:
        """
        A request the client's bucket admits but a chained cap refuses is
        limited, never kissed: the client is within its rate.
        """
        limiter = SourceLimiter(rate=1.0, burst=4, kodInterval=8.0)
        limiter.buckets.then = RateLimiter(rate=1.0, burst=1)
        self.assertIs(limiter.admit("192.0.2.1", NOW), ADMIT)
        self.assertIs(limiter.admit("192.0.2.2", NOW), LIMITED)
        self.assertIs(limiter.admit("192.0.2.2", NOW), LIMITED)

    def test_floodBoundsTables(self) -> None:
        """
        A flood of limited requests from forged sources, many more than the
        tables hold, leaves the KoD table, the key cache and the clients'
        table within their bounds, and the KoDs still come.
        """
        limiter = SourceLimiter(
            rate=1.0, burst=1, maxClients=5000, kodInterval=8.0, kodRate=1e6
        )
        kodTable = policy._KOD_TABLE_SIZE
        kisses = 0
        for i in range(3 * kodTable):
            host = f"2001:db8:{i >> 16:x}:{i & 0xFFFF:x}::1"
            limiter.admit(host, NOW)
            kisses += limiter.admit(host, NOW) is KISS
            self.assertLessEqual(len(limiter._kodNext), kodTable)
            self.assertLessEqual(len(limiter.buckets._keys), policy.KEY_CACHE_SIZE)
            self.assertLessEqual(len(limiter), 5000)
        self.assertEqual(kisses, 3 * kodTable)
        self.assertGreater(len(limiter._kodNext), 0)


class MappedRuleTests(SynchronousTestCase):
    """
    Rules written as IPv4-mapped IPv6 networks are the IPv4 networks they
    stand for, at every prefix length.
    """

    def test_table(self) -> None:
        for rule, inside, outside in [
            ("::ffff:0.0.0.0/96", ["1.2.3.4", "::ffff:255.0.0.1"], ["2001:db8::1"]),
            (
                "::ffff:10.0.0.0/104",
                ["10.200.0.1", "10.0.0.1"],
                ["11.0.0.1", "9.0.0.1"],
            ),
            ("::ffff:10.128.0.0/105", ["10.200.0.1"], ["10.127.0.1", "11.0.0.1"]),
            ("::ffff:192.0.2.0/120", ["192.0.2.255"], ["192.0.3.0", "192.0.1.255"]),
            ("::ffff:192.0.2.128/121", ["192.0.2.200"], ["192.0.2.127"]),
            ("::ffff:192.0.2.1/128", ["::ffff:192.0.2.1"], ["192.0.2.0", "192.0.2.2"]),
        ]:
            with self.subTest(rule=rule):
                [parsed] = AccessRule.parse(False, rule)
                access = AccessList([(parsed.allow, parsed.network)])
                for host in inside:
                    self.assertFalse(access.allows(host), host)
                for host in outside:
                    self.assertTrue(access.allows(host), host)

    def test_unmapped(self) -> None:
        """
        The IPv4 network a mapped rule stands for; IPv6 networks that are
        not mapped ones (or not entirely) stay as they are.
        """
        for text, expected in [
            ("::ffff:0.0.0.0/96", "0.0.0.0/0"),
            ("::ffff:10.0.0.0/104", "10.0.0.0/8"),
            ("::ffff:192.0.2.0/120", "192.0.2.0/24"),
            ("::ffff:192.0.2.1/128", "192.0.2.1/32"),
            ("::ffff:0.0.0.0/95", "::fffe:0:0/95"),
            ("::/0", "::/0"),
            ("2001:db8::/32", "2001:db8::/32"),
            ("192.0.2.0/24", "192.0.2.0/24"),
        ]:
            with self.subTest(network=text):
                network = ipaddress.ip_network(text, strict=False)
                self.assertEqual(
                    policy._unmapNetwork(network), ipaddress.ip_network(expected)
                )

    def test_decisionsCached(self) -> None:
        """
        A source's decision is worked out once, then found in the cache.
        """
        access = AccessList([(False, ipaddress.ip_network("192.0.2.0/24"))])
        decided: list[str] = []
        decide = access._decide

        def counting(host: str) -> bool:
            decided.append(host)
            return decide(host)

        access._decide = counting  # type: ignore[method-assign]
        for _ in range(3):
            self.assertFalse(access.allows("192.0.2.1"))
            self.assertTrue(access.allows("198.51.100.1"))
        self.assertEqual(decided, ["192.0.2.1", "198.51.100.1"])


class ClientKeyTests(SynchronousTestCase):
    """
    How sources are grouped into clients.
    """

    def test_table(self) -> None:
        limit = RateLimiter(ipv6Prefix=64)
        for host, key in [
            ("192.0.2.1", "192.0.2.1"),
            ("::ffff:192.0.2.1", "192.0.2.1"),
            ("2001:db8::1", 0x20010DB8 << 32),
            ("2001:db8:0:1::1", (0x20010DB8 << 32) | 1),
            ("2001:db8:0:1:2:3:4:5", (0x20010DB8 << 32) | 1),
            # NAT64 addresses hold a dot, but are not mapped: a /64 of them
            # is one client.
            ("64:ff9b::192.0.2.1", 0x0064FF9B << 32),
            ("64:ff9b::198.51.100.1", 0x0064FF9B << 32),
            ("fe80::1%eth0", 0xFE80 << 48),
            ("not an address:", "not an address:"),
        ]:
            with self.subTest(host=host):
                self.assertEqual(limit.clientKey(host), key)
                self.assertEqual(limit.keyOf(host), key)


class VerdictTypeTests(SynchronousTestCase):
    """
    A verdict is L{ADMIT} or a L{Refusal}: nothing falsy, nothing missing,
    passes for an admission.
    """

    def test_admitIsTheOnlyAdmission(self) -> None:
        self.assertIsInstance(ADMIT, Admission)
        self.assertEqual(list(Admission), [ADMIT])
        self.assertTrue(ADMIT)
        for refusal in (DENIED, LOOPED, LIMITED, KISS):
            self.assertIsInstance(refusal, Refusal)
            self.assertIsNot(refusal, ADMIT)
            self.assertTrue(refusal)
        self.assertEqual(
            [r.counter for r in (DENIED, LOOPED, LIMITED, KISS)],
            [counters.DENIED, counters.LOOPED, counters.LIMITED, counters.LIMITED],
        )
        self.assertIsNot(KISS, LIMITED)

    def test_everyVerdictOfAPolicy(self) -> None:
        """
        Every verdict of a policy with every part on, for a flood of
        datagrams from looping ports, denied and limited sources, is one of
        the five constants.
        """
        subject = Policy.fromProfile(
            PolicyProfile(kissOfDeath=True, loopGuard=True),
            burst=2,
            rules=[(False, ipaddress.ip_network("203.0.113.0/24"))],
            globalLimit=RateLimiter(rate=50.0, burst=50),
            serverPorts=[5000],
        )
        seen = set()
        for i in range(400):
            addr = (
                f"{(192, 203)[i % 2]}.0.{113 if i % 3 else 2}.{i % 7}",
                4000 + i % 3,
            )
            for port in (addr[1], 7, 5000):
                verdict = subject.admit((addr[0], port), NOW + i * 0.001)
                self.assertTrue(
                    any(verdict is v for v in (ADMIT, DENIED, LOOPED, LIMITED, KISS)),
                    verdict,
                )
                seen.add(verdict)
        self.assertEqual(seen, {ADMIT, DENIED, LOOPED, LIMITED, KISS})

    def test_missingVerdictIsNotAnAdmission(self) -> None:
        """
        A policy that answers with no verdict (L{None}, a bug) gets no
        reply sent: the port counts an internal error.
        """

        class Answering(UDPServerProtocol):
            serviceName = "test"

            def respond(
                self, data: bytes, addr: tuple[str, int], received: float
            ) -> bytes:
                return b"answer"

        class Broken(Policy):
            def admit(self, addr: tuple[str, int], now: float) -> policy.Verdict:
                return None  # type: ignore[return-value]

        server = Answering(policy=Broken())
        transport = RecordingTransport(port=5000)
        server.makeConnection(transport)  # type: ignore[arg-type]
        events: list[dict[str, object]] = []
        server.log = Logger(observer=events.append)
        deliver(server, b"x", ("192.0.2.1", 4000), NOW)
        self.assertEqual(transport.written, [])
        counts = server.counters.snapshot()
        self.assertEqual((counts["answered"], counts["internalErrors"]), (0, 1))
        self.assertEqual(len(events), 1)


class GlobalCapOnlyTests(SynchronousTestCase):
    """
    A policy with a global cap and no per-source limits: the cap alone
    decides, across every source, and refuses without a kiss.
    """

    def test_capAlone(self) -> None:
        made = policy.Policy(globalLimit=policy.RateLimiter(rate=2.0, burst=2))
        self.assertIsNone(made.limiter)
        verdicts = [made.admit((f"192.0.2.{i}", 40000), 10.0) for i in range(4)]
        self.assertEqual(verdicts, [ADMIT, ADMIT, LIMITED, LIMITED])
        self.assertIs(made.admit(("192.0.2.9", 40000), 10.5), ADMIT)
        self.assertIs(made.admit(("192.0.2.9", 40000), 10.5), LIMITED)
        self.assertIs(made.admit(("192.0.2.9", 0), 20.0), LOOPED)
        self.assertEqual(made.stats(), {"clients": 0, "evicted": 0})


def peersOnly(size: int, window: float = 1.0) -> ReplyMemory:
    """
    A memory of peers alone, to which every datagram has the shape of a
    reply: a datagram is a loop exactly when its peer was answered within
    the window.
    """
    return ReplyMemory(
        window, size, looksLikeReply=lambda data, now: True, contents=False
    )


class ReplyMemoryBoundaryTests(SynchronousTestCase):
    """
    L{ReplyMemory} at its limits: the smallest size, the window's end, the
    two generations of at most half the size each (of peers, and of replies
    to one peer), the default window, a clock stepped back.
    """

    def test_smallest(self) -> None:
        """
        A memory of 2 replies is the smallest: it holds one per generation.
        """
        memory = ReplyMemory(size=2)
        self.assertEqual((memory.size, memory.window), (2, DEFAULT_LOOP_WINDOW))
        memory.remember(("192.0.2.1", 1), b"a", NOW)
        memory.remember(("192.0.2.2", 1), b"b", NOW)
        memory.remember(("192.0.2.3", 1), b"c", NOW)
        self.assertEqual(len(memory), 2)
        self.assertFalse(memory.isLoop(("192.0.2.1", 1), b"a", NOW))
        self.assertTrue(memory.isLoop(("192.0.2.2", 1), b"b", NOW))
        self.assertTrue(memory.isLoop(("192.0.2.3", 1), b"c", NOW))
        for size in (1, 0, -2):
            with self.subTest(size=size):
                self.assertRaises(ValueError, ReplyMemory, size=size)

    def test_windowEdge(self) -> None:
        """
        A reply is remembered for its whole window, its last instant
        included, and not after it.
        """
        for window in (0.5, 1.0, DEFAULT_LOOP_WINDOW):
            memory = ReplyMemory(window=window)
            addr = ("192.0.2.1", 40000)
            memory.remember(addr, b"ping", NOW)
            with self.subTest(window=window):
                self.assertIs(memory.isLoop(addr, b"ping", NOW + window), True)
                self.assertIs(memory.isReturned(addr, b"ping", NOW + window), True)
                later = math.nextafter(NOW + window, math.inf)
                self.assertIs(memory.isLoop(addr, b"ping", later), False)
                self.assertIs(memory.isReturned(addr, b"ping", later), False)

    def test_defaultWindow(self) -> None:
        """
        By default a reply is remembered for 2 seconds.
        """
        memory = ReplyMemory()
        addr = ("192.0.2.1", 40000)
        memory.remember(addr, b"ping", NOW)
        self.assertTrue(memory.isLoop(addr, b"ping", NOW + 2.0))
        self.assertFalse(memory.isLoop(addr, b"ping", NOW + 2.5))

    def test_empty(self) -> None:
        """
        A memory that has remembered nothing knows of no loop, and says so
        with C{False}.
        """
        for contents in (True, False):
            memory = ReplyMemory(contents=contents, looksLikeReply=lambda d, n: True)
            with self.subTest(contents=contents):
                self.assertIs(memory.isReturned(("192.0.2.1", 1), b"x", NOW), False)
                self.assertIs(memory.isLoop(("192.0.2.1", 1), b"x", NOW), False)
                self.assertEqual(len(memory), 0)
        notShaped = ReplyMemory(contents=False, looksLikeReply=lambda d, n: False)
        self.assertIs(notShaped.isLoop(("192.0.2.1", 1), b"x", NOW), False)

    def test_generationsOfPeers(self) -> None:
        """
        Without the replies' bytes, an odd size of 5 keeps generations of 2
        peers: after 5 peers answered at one time, the last 3 are
        remembered, never more than 5 in all.
        """
        memory = peersOnly(5)
        peers = [(f"192.0.2.{n}", 1) for n in range(1, 6)]
        for peer in peers:
            memory.remember(peer, b"x", NOW)
            self.assertLessEqual(len(memory), 4)
        self.assertEqual(len(memory), 3)
        self.assertEqual(
            [memory.isLoop(peer, b"x", NOW) for peer in peers],
            [False, False, True, True, True],
        )
        memory = peersOnly(4)
        for n in range(20):
            memory.remember((f"198.51.100.{n}", 1), b"x", NOW)
            self.assertLessEqual(len(memory), 4)

    def test_repliesToOnePeer(self) -> None:
        """
        Many replies to one peer fill a generation as many peers do: a
        memory of 4 holds at most 4 of them.
        """
        memory = ReplyMemory(size=4)
        addr = ("192.0.2.1", 40000)
        for n in range(20):
            memory.remember(addr, b"reply %d" % n, NOW)
            self.assertLessEqual(len(memory), 4)
        self.assertTrue(memory.isLoop(addr, b"reply 19", NOW))
        self.assertFalse(memory.isLoop(addr, b"reply 0", NOW))

    def test_clockBackForgetsByTimeAgain(self) -> None:
        """
        After a clock stepped back, replies are forgotten a window after
        they were sent on the new time, not a window after the old time.
        """
        for memory in (ReplyMemory(window=1.0), peersOnly(16)):
            memory.remember(("192.0.2.1", 1), b"a", NOW)
            memory.remember(("192.0.2.2", 1), b"b", NOW - 3600)
            memory.remember(("192.0.2.3", 1), b"c", NOW - 3600 + 1.5)
            memory.remember(("192.0.2.4", 1), b"d", NOW - 3600 + 3)
            with self.subTest(contents=memory.contents):
                self.assertEqual(len(memory), 2)
                self.assertFalse(memory.isLoop(("192.0.2.2", 1), b"b", NOW - 3600 + 3))
                self.assertTrue(memory.isLoop(("192.0.2.4", 1), b"d", NOW - 3600 + 3))

    def test_rotationAtWindow(self) -> None:
        """
        A generation ends exactly one window after it began: a reply sent
        then starts the next, and the replies of two windows before are
        forgotten.
        """
        memory = peersOnly(16)
        memory.remember(("192.0.2.1", 1), b"x", NOW)
        memory.remember(("192.0.2.2", 1), b"x", NOW + 1.0)
        memory.remember(("192.0.2.3", 1), b"x", NOW + 1.5)
        memory.remember(("192.0.2.4", 1), b"x", NOW + 2.0)
        self.assertEqual(len(memory), 3)


class AccessDecisionTests(SynchronousTestCase):
    """
    An access list's decision is a C{bool}, for any text a transport could
    report as a host; a rule cannot be changed once parsed.
    """

    def test_notAnAddress(self) -> None:
        """
        A host that is not an address (no transport reports one, but a
        name or garbage must not pass) is refused, with C{False}, every
        time it is asked about.
        """
        access = AccessList([(False, ipaddress.ip_network("192.0.2.0/24"))])
        for host in ("", "localhost", "192.0.2", "%eth0"):
            with self.subTest(host=host):
                self.assertIs(access.allows(host), False)
                self.assertIs(access.allows(host), False)
        self.assertIs(access.allows("198.51.100.1"), True)

    def test_ruleFrozen(self) -> None:
        """
        Setting a field of a parsed rule fails.
        """
        [rule] = AccessRule.parse(True, "192.0.2.0/24")
        self.assertRaises(FrozenInstanceError, setattr, rule, "allow", False)


class ProfileTests(SynchronousTestCase):
    """
    A protocol's declared policy profile cannot be changed once made.
    """

    def test_frozen(self) -> None:
        """
        Setting a field of a profile fails.
        """
        profile = PolicyProfile(kissOfDeath=True)
        self.assertRaises(FrozenInstanceError, setattr, profile, "leak", True)


class OwnPortTests(SynchronousTestCase):
    """
    A policy guards the service's own port only when asked to (as the
    profiles of the services that answer any datagram ask).
    """

    def test_default(self) -> None:
        """
        By default, the service's own port stays open: an NTP peer may send
        from port 123 to port 123.
        """
        made = Policy()
        made.guardPort(123)
        self.assertIs(made.admit(("192.0.2.1", 123), NOW), ADMIT)
        guarded = Policy(guardOwnPort=True)
        guarded.guardPort(37)
        self.assertIs(guarded.admit(("192.0.2.1", 37), NOW), LOOPED)
