"""
Unit tests for L{udptime.policy}, its use by the base protocol, the counter
summaries and the twistd options that configure them.  Time is injected:
no sockets, no reactor, no clock reads.
"""

from __future__ import annotations

import ipaddress
import struct
import tracemalloc

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.task import Clock
from twisted.logger import Logger, LogLevel, formatEvent
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

from tests.support import RecordingTransport, deliver
from tests.test_security import report
from udptime import ntp, policy
from udptime.clock import NTP_UNIX_OFFSET
from udptime.decision import Decision
from udptime.policy import (
    ADMIT,
    DEFAULT_LOOP_WINDOW,
    DENIED,
    KEY_CACHE_SIZE,
    KISS,
    LIMITED,
    LOOPED,
    AccessList,
    AccessRule,
    Policy,
    PolicyProfile,
    RateLimiter,
    ReplyMemory,
    SourceLimiter,
)
from udptime.server import (
    VERBOSE_LOG_BURST_SECONDS,
    VERBOSE_LOG_RATE,
    DaytimeServer,
    EchoServer,
    NTPServer,
    TextTimeServer,
    TimeServer,
    UDPServerProtocol,
    verboseLimit,
)
from udptime.services import SERVICES
from udptime.summary import CounterSummary
from udptime.tap import Options, makeService

NOW = 1_800_000_000.0


def ntpRequest(transmit: int = 0x0123456789ABCDEF, version: int = 4) -> bytes:
    """
    A 48-byte NTP client request (mode 3) with transmit timestamp
    C{transmit}.
    """
    return ntp.NTPPacket(
        leap=0, version=version, mode=3, poll=6, transmitTimestamp=transmit
    ).toBytes()


class RateLimiterTests(SynchronousTestCase):
    def test_burstThenRate(self) -> None:
        limit = RateLimiter(rate=2.0, burst=3)
        self.assertEqual([limit.admit(NOW) for _ in range(5)], [True] * 3 + [False] * 2)
        self.assertEqual(limit.refused, 2)
        self.assertFalse(limit.admit(NOW + 0.4))
        self.assertTrue(limit.admit(NOW + 0.5))
        self.assertFalse(limit.admit(NOW + 0.5))

    def test_idleRefills(self) -> None:
        limit = RateLimiter(rate=1.0, burst=2)
        self.assertTrue(limit.admit(NOW) and limit.admit(NOW))
        self.assertFalse(limit.admit(NOW))
        self.assertEqual(
            [limit.admit(NOW + 100) for _ in range(3)], [True, True, False]
        )

    def test_clockStepsBack(self) -> None:
        """
        A clock stepped back by an hour does not lock the bucket for an hour.
        """
        limit = RateLimiter(rate=1.0, burst=1)
        self.assertTrue(limit.admit(NOW))
        self.assertFalse(limit.admit(NOW))
        self.assertTrue(limit.admit(NOW - 3600))

    def test_badParameters(self) -> None:
        for rate, burst in [
            (0.0, 1),
            (-1.0, 1),
            (float("inf"), 1),
            (float("nan"), 1),
            (1.0, 0),
        ]:
            self.assertRaises(ValueError, RateLimiter, rate, burst)


class SourceLimiterTests(SynchronousTestCase):
    def test_burstThenRatePerSource(self) -> None:
        limiter = SourceLimiter(rate=1.0, burst=4)
        verdicts = [limiter.admit("192.0.2.1", NOW) for _ in range(10)]
        self.assertEqual(verdicts, [ADMIT] * 4 + [LIMITED] * 6)
        self.assertEqual(limiter.admit("192.0.2.2", NOW), ADMIT)
        self.assertEqual(limiter.admit("192.0.2.1", NOW + 0.9), LIMITED)
        self.assertEqual(limiter.admit("192.0.2.1", NOW + 1.0), ADMIT)
        self.assertEqual(limiter.admit("192.0.2.1", NOW + 1.0), LIMITED)

    def test_iburst(self) -> None:
        """
        A client's iburst (8 requests 2 s apart) and its polls after it are
        never limited by the defaults.
        """
        limiter = SourceLimiter()
        times = [NOW + 2 * i for i in range(8)] + [NOW + 16 + 64 * i for i in range(50)]
        self.assertEqual({limiter.admit("192.0.2.1", t) for t in times}, {ADMIT})

    @settings(max_examples=200, deadline=None)
    @given(
        rate=st.floats(0.1, 50.0),
        burst=st.integers(1, 40),
        gaps=st.lists(st.floats(0.0, 2.0), min_size=1, max_size=300),
    )
    def test_boundInEveryWindow(
        self, rate: float, burst: int, gaps: list[float]
    ) -> None:
        """
        Whatever the arrival times, the requests admitted within any window
        of t seconds number at most burst + rate * t.
        """
        limiter = SourceLimiter(rate=rate, burst=burst)
        admitted = []
        now = NOW
        for gap in gaps:
            now += gap
            if limiter.admit("198.51.100.7", now) == ADMIT:
                admitted.append(now)
        for i, start in enumerate(admitted):
            for j in range(i, len(admitted)):
                window = admitted[j] - start
                self.assertLessEqual(j - i + 1, burst + rate * window + 0.01)

    def test_ipv6GroupedByPrefix(self) -> None:
        limiter = SourceLimiter(rate=1.0, burst=2)
        self.assertEqual(limiter.admit("2001:db8:1:2::1", NOW), ADMIT)
        self.assertEqual(limiter.admit("2001:db8:1:2:ffff::9", NOW), ADMIT)
        self.assertEqual(limiter.admit("2001:db8:1:2:abcd::1", NOW), LIMITED)
        self.assertEqual(limiter.admit("2001:db8:1:3::1", NOW), ADMIT)
        self.assertEqual(len(limiter), 2)

    def test_ipv6PrefixConfigurable(self) -> None:
        limiter = SourceLimiter(rate=1.0, burst=1, ipv6Prefix=48)
        self.assertEqual(limiter.admit("2001:db8:1:2::1", NOW), ADMIT)
        self.assertEqual(limiter.admit("2001:db8:1:3::1", NOW), LIMITED)
        self.assertEqual(limiter.admit("2001:db8:2::1", NOW), ADMIT)
        full = SourceLimiter(rate=1.0, burst=1, ipv6Prefix=128)
        self.assertEqual(full.admit("2001:db8::1", NOW), ADMIT)
        self.assertEqual(full.admit("2001:db8::2", NOW), ADMIT)

    def test_mappedIPv4IsIPv4(self) -> None:
        limiter = SourceLimiter(rate=1.0, burst=2)
        self.assertEqual(limiter.admit("192.0.2.1", NOW), ADMIT)
        self.assertEqual(limiter.admit("::ffff:192.0.2.1", NOW), ADMIT)
        self.assertEqual(limiter.admit("::ffff:192.0.2.1", NOW), LIMITED)
        self.assertEqual(limiter.clientKey("::ffff:192.0.2.1"), "192.0.2.1")
        self.assertEqual(len(limiter), 1)

    def test_keyCacheBounded(self) -> None:
        """
        The keys kept for IPv6 and IPv4-mapped sources are bounded: a flood
        of new sources leaves at most L{KEY_CACHE_SIZE} of them, and every
        source is still keyed by its prefix (or as IPv4).
        """
        limiter = SourceLimiter(rate=1.0, burst=1, maxClients=100_000)
        for i in range(KEY_CACHE_SIZE * 3):
            limiter.admit(f"2001:db8:{i >> 16:x}:{i & 0xFFFF:x}::1", NOW)
            limiter.admit(f"::ffff:10.{i >> 16}.{i >> 8 & 255}.{i & 255}", NOW)
            self.assertLessEqual(len(limiter.buckets._keys), KEY_CACHE_SIZE)
        self.assertEqual(len(limiter), KEY_CACHE_SIZE * 6)
        self.assertEqual(limiter.admit("2001:db8:0:1::2", NOW), LIMITED)
        self.assertEqual(limiter.admit("10.0.0.1", NOW), LIMITED)

    def test_oddHosts(self) -> None:
        """
        Scope ids, garbage and empty strings get a key and never raise.
        """
        limiter = SourceLimiter(rate=1.0, burst=1)
        self.assertEqual(
            limiter.clientKey("fe80::1%eth0"), limiter.clientKey("fe80::1")
        )
        for host in ["", "::", "garbage:", ":::::", "a\0:b", "1.2.3.4.5", "x" * 300]:
            self.assertIn(limiter.admit(host, NOW), (ADMIT, LIMITED))

    def test_tableBound(self) -> None:
        """
        Ten times more sources than the bound leave the table at its bound,
        the newest sources in it; evictions are counted.
        """
        limiter = SourceLimiter(rate=1.0, burst=1, maxClients=1000)
        for i in range(10_000):
            self.assertEqual(limiter.admit(str(ipaddress.IPv4Address(i)), NOW), ADMIT)
            self.assertLessEqual(len(limiter), 1000)
        self.assertEqual(len(limiter), 1000)
        self.assertEqual(limiter.evictions, 9000)
        self.assertEqual(limiter.admit(str(ipaddress.IPv4Address(9999)), NOW), LIMITED)
        self.assertEqual(limiter.admit(str(ipaddress.IPv4Address(0)), NOW), ADMIT)

    def test_floodKeepsOwnEntry(self) -> None:
        """
        A flooding source stays limited while other sources come and go,
        until a table's worth of new sources has pushed it out.
        """
        limiter = SourceLimiter(rate=1.0, burst=2, maxClients=100)
        limiter.admit("192.0.2.1", NOW)
        limiter.admit("192.0.2.1", NOW)
        for i in range(98):
            limiter.admit(f"10.0.0.{i}", NOW)
        self.assertEqual(limiter.admit("192.0.2.1", NOW), LIMITED)

    def test_clockStepsBack(self) -> None:
        limiter = SourceLimiter(rate=1.0, burst=1)
        self.assertEqual(limiter.admit("192.0.2.1", NOW), ADMIT)
        self.assertEqual(limiter.admit("192.0.2.1", NOW), LIMITED)
        self.assertEqual(limiter.admit("192.0.2.1", NOW - 86400), ADMIT)

    def test_kissOncePerInterval(self) -> None:
        limiter = SourceLimiter(rate=1.0, burst=1, kodInterval=8.0)
        self.assertEqual(limiter.admit("192.0.2.1", NOW), ADMIT)
        verdicts = [limiter.admit("192.0.2.1", NOW + i * 0.01) for i in range(1, 50)]
        self.assertEqual(verdicts.count(KISS), 1)
        self.assertEqual(verdicts[0], KISS)
        later = [limiter.admit("192.0.2.1", NOW + 8.0 + i * 0.01) for i in range(1, 50)]
        self.assertEqual(later.count(KISS), 1)

    def test_kissesCappedOverall(self) -> None:
        """
        Many limited clients get at most the global number of KoDs.
        """
        limiter = SourceLimiter(rate=1.0, burst=1, kodInterval=8.0, kodRate=5.0)
        kisses = 0
        for i in range(100):
            host = f"192.0.2.{i}"
            limiter.admit(host, NOW)
            kisses += limiter.admit(host, NOW) == KISS
        self.assertEqual(kisses, 5)

    def test_noKissWithoutInterval(self) -> None:
        limiter = SourceLimiter(rate=1.0, burst=1)
        self.assertEqual(
            {limiter.admit("192.0.2.1", NOW) for _ in range(20)}, {ADMIT, LIMITED}
        )

    def test_badParameters(self) -> None:
        for kwargs in [
            {"rate": 0.0},
            {"burst": 0},
            {"maxClients": 0},
            {"ipv6Prefix": 0},
            {"ipv6Prefix": 129},
            {"kodInterval": -1.0},
        ]:
            self.assertRaises(ValueError, SourceLimiter, **kwargs)

    def test_forgedFloodMemoryBound(self) -> None:
        """
        60 000 forged sources through a 10 000-entry table: the table stays
        at its bound, holding about 110 bytes per entry, and what it holds
        stops growing once it is full (the dictionary's own slack aside).
        """
        limiter = SourceLimiter(maxClients=10_000)
        tracemalloc.start()
        self.addCleanup(tracemalloc.stop)
        empty = tracemalloc.get_traced_memory()[0]
        for i in range(10_000):
            limiter.admit(f"10.0.{i >> 8}.{i & 255}", NOW)
        full = tracemalloc.get_traced_memory()[0]
        peak = full
        for i in range(10_000, 70_000):
            limiter.admit(f"10.{i >> 16}.{i >> 8 & 255}.{i & 255}", NOW + i * 1e-6)
            if i % 1000 == 0:
                peak = max(peak, tracemalloc.get_traced_memory()[0])
        self.assertEqual(len(limiter), 10_000)
        self.assertEqual(limiter.evictions, 60_000)
        self.assertLess(full - empty, 10_000 * 200)
        self.assertLess(peak - full, 10_000 * 50)


class AccessListTests(SynchronousTestCase):
    def rules(self, *specs: str) -> AccessList:
        rules = []
        for spec in specs:
            verb, _, text = spec.partition(" ")
            rules.extend(AccessRule.parse(verb == "allow", text))
        return AccessList((r.allow, r.network) for r in rules)

    def test_denyOnly(self) -> None:
        access = self.rules("deny 192.0.2.0/24")
        self.assertTrue(access.default)
        self.assertFalse(access.allows("192.0.2.9"))
        self.assertTrue(access.allows("198.51.100.1"))
        self.assertTrue(access.allows("2001:db8::1"))

    def test_allowMakesAllowList(self) -> None:
        access = self.rules("allow 10.0.0.0/8")
        self.assertFalse(access.default)
        self.assertTrue(access.allows("10.1.2.3"))
        self.assertFalse(access.allows("11.1.2.3"))
        self.assertFalse(access.allows("2001:db8::1"))

    def test_mostSpecificWins(self) -> None:
        access = self.rules("deny 10.1.2.3", "allow 10.0.0.0/8", "deny 10.1.0.0/16")
        self.assertTrue(access.allows("10.2.0.1"))
        self.assertFalse(access.allows("10.1.0.1"))
        self.assertFalse(access.allows("10.1.2.3"))
        self.assertFalse(access.allows("192.0.2.1"))

    def test_laterRuleForSameNetworkWins(self) -> None:
        self.assertFalse(self.rules("allow all", "deny all").allows("192.0.2.1"))
        self.assertTrue(self.rules("deny all", "allow all").allows("192.0.2.1"))
        self.assertTrue(self.rules("deny all", "allow all").allows("2001:db8::1"))

    def test_ipv6(self) -> None:
        access = self.rules("allow 2001:db8::/32", "deny 2001:db8:bad::/48")
        self.assertTrue(access.allows("2001:db8:1::1"))
        self.assertFalse(access.allows("2001:db8:bad::1"))
        self.assertFalse(access.allows("2001:db9::1"))
        self.assertFalse(access.allows("192.0.2.1"))
        self.assertTrue(access.allows("2001:db8::1%eth0"))

    def test_mappedIPv4(self) -> None:
        """
        IPv4 peers of a dual-stack socket match IPv4 rules; a rule written as
        a mapped network is an IPv4 rule.
        """
        access = self.rules("allow 192.0.2.0/24")
        self.assertTrue(access.allows("::ffff:192.0.2.7"))
        self.assertFalse(access.allows("::ffff:198.51.100.7"))
        mapped = self.rules("deny ::ffff:10.0.0.0/104")
        self.assertFalse(mapped.allows("10.9.9.9"))
        self.assertFalse(mapped.allows("::ffff:10.9.9.9"))
        self.assertTrue(mapped.allows("11.0.0.1"))

    def test_garbageHostDenied(self) -> None:
        access = self.rules("deny 192.0.2.0/24")
        self.assertFalse(access.allows("not an address"))
        self.assertFalse(access.allows(""))

    def test_cacheBounded(self) -> None:
        access = self.rules("deny 10.0.0.0/8")
        for i in range(policy._CACHE_SIZE + 10):
            self.assertFalse(access.allows(str(ipaddress.IPv4Address((10 << 24) + i))))
        self.assertLessEqual(len(access._cache), policy._CACHE_SIZE)

    def test_parse(self) -> None:
        [rule] = AccessRule.parse(True, "NTP=192.0.2.0/24")
        self.assertEqual(
            rule, AccessRule(True, ipaddress.ip_network("192.0.2.0/24"), "ntp")
        )
        [rule] = AccessRule.parse(False, "192.0.2.1/24")
        self.assertEqual(rule.network, ipaddress.ip_network("192.0.2.0/24"))
        self.assertIsNone(rule.service)
        self.assertEqual(len(AccessRule.parse(False, "echo=all")), 2)
        self.assertEqual(AccessRule.parse(True, "2001:db8::/32")[0].network.version, 6)
        for bad in [
            "",
            "banana",
            "ntp=",
            "=10.0.0.0/8",
            "10.0.0.0/33",
        ]:
            self.assertRaises(ValueError, AccessRule.parse, True, bad)


class ReplyMemoryTests(SynchronousTestCase):
    """
    L{ReplyMemory}: what a service sent to each peer lately.
    """

    def test_returnedWithinWindow(self) -> None:
        """
        A reply sent to a peer is a loop when it comes back from that peer
        within the window, as often as it comes back.
        """
        memory = ReplyMemory(window=1.0)
        addr = ("192.0.2.1", 40000)
        memory.remember(addr, b"ping", NOW)
        self.assertFalse(memory.isLoop(addr, b"pong", NOW + 0.1))
        self.assertFalse(memory.isLoop(("192.0.2.1", 40001), b"ping", NOW + 0.1))
        self.assertFalse(memory.isLoop(("192.0.2.2", 40000), b"ping", NOW + 0.1))
        self.assertTrue(memory.isLoop(addr, b"ping", NOW + 0.1))
        self.assertTrue(memory.isLoop(addr, b"ping", NOW + 0.2))
        self.assertTrue(memory.isReturned(addr, b"ping", NOW + 0.2))

    def test_everyPayload(self) -> None:
        """
        Every reply sent to a peer within the window is remembered, not only
        the last: any number of loops injected at once are all caught.
        """
        memory = ReplyMemory(window=1.0)
        addr = ("192.0.2.1", 40000)
        payloads = [b"payload %d" % n for n in range(100)]
        for payload in payloads:
            memory.remember(addr, payload, NOW)
        for payload in payloads:
            self.assertTrue(memory.isLoop(addr, payload, NOW + 0.5))
        self.assertFalse(memory.isLoop(addr, b"another", NOW + 0.5))

    def test_windowEnds(self) -> None:
        memory = ReplyMemory(window=1.0)
        addr = ("192.0.2.1", 40000)
        memory.remember(addr, b"ping", NOW)
        self.assertFalse(memory.isLoop(addr, b"ping", NOW + 1.5))
        self.assertFalse(memory.isLoop(addr, b"ping", NOW - 5))
        memory.remember(("192.0.2.2", 1), b"x", NOW + 1.5)
        memory.remember(("192.0.2.2", 1), b"y", NOW + 3)
        self.assertEqual(len(memory), 2, "the first reply is forgotten")
        self.assertFalse(memory.isLoop(addr, b"ping", NOW + 3))

    def test_replyShaped(self) -> None:
        """
        From a peer answered within the window, a datagram that has the shape
        of a reply is a loop; from any other peer, it is a request.
        """
        shapes: list[bytes] = []

        def looksLikeReply(data: bytes, now: float) -> bool:
            shapes.append(data)
            return data.startswith(b"reply")

        memory = ReplyMemory(window=1.0, looksLikeReply=looksLikeReply)
        addr = ("192.0.2.1", 40000)
        self.assertFalse(memory.isLoop(addr, b"reply 1", NOW))
        self.assertEqual(shapes, [], "not asked about a peer not answered")
        memory.remember(addr, b"reply 0", NOW)
        self.assertTrue(memory.isLoop(addr, b"reply 1", NOW + 0.5))
        self.assertFalse(memory.isLoop(addr, b"time", NOW + 0.5))
        self.assertFalse(memory.isLoop(addr, b"reply 1", NOW + 2))

    def test_peersOnly(self) -> None:
        """
        Without C{contents} (a service whose replies do not repeat its
        requests), the memory keeps the peers alone: from a peer answered
        within the window, a datagram shaped like a reply is a loop and any
        other is not, even the bytes just sent; the shape is asked first.
        """
        shapes: list[bytes] = []

        def looksLikeReply(data: bytes, now: float) -> bool:
            shapes.append(data)
            return data.startswith(b"reply")

        memory = ReplyMemory(window=1.0, looksLikeReply=looksLikeReply, contents=False)
        addr = ("192.0.2.1", 40000)
        memory.remember(addr, b"payload", NOW)
        self.assertEqual(len(memory), 1)
        self.assertEqual(memory._sent, {}, "no reply's bytes kept")
        self.assertFalse(memory.isLoop(addr, b"payload", NOW + 0.5))
        self.assertTrue(memory.isLoop(addr, b"reply 1", NOW + 0.5))
        self.assertFalse(memory.isLoop(("192.0.2.2", 40000), b"reply 1", NOW + 0.5))
        self.assertFalse(memory.isLoop(addr, b"reply 1", NOW + 2))
        self.assertEqual(shapes[0], b"payload")

    def test_profiles(self) -> None:
        """
        Of the services that answer any datagram, only Echo, whose replies
        repeat its requests, remembers the replies' bytes.
        """
        from udptime.services import SERVICES

        for name in ("text", "time", "daytime", "echo"):
            with self.subTest(name=name):
                memory = SERVICES[name].policy().replyMemory
                assert memory is not None
                self.assertEqual(memory.contents, name == "echo")

    def test_bounded(self) -> None:
        memory = ReplyMemory(size=100)
        for port in range(1000):
            memory.remember(("192.0.2.1", port), b"x", NOW)
            self.assertLessEqual(len(memory), 100)
            self.assertLessEqual(len(memory._sent), 100)
            self.assertLessEqual(len(memory._peers), 100)
        self.assertTrue(memory.isLoop(("192.0.2.1", 999), b"x", NOW))
        self.assertFalse(memory.isLoop(("192.0.2.1", 0), b"x", NOW))

    def test_sameReplyAgain(self) -> None:
        """
        A reply sent again to the same peer is remembered from its last
        sending: forgetting the first does not forget it.
        """
        memory = ReplyMemory(window=1.0)
        addr = ("192.0.2.1", 40000)
        memory.remember(addr, b"x", NOW)
        memory.remember(addr, b"x", NOW + 0.9)
        memory.remember(("192.0.2.2", 1), b"y", NOW + 1.2)
        self.assertTrue(memory.isLoop(addr, b"x", NOW + 1.2))

    def test_clockBack(self) -> None:
        """
        A clock stepped back starts the memory afresh: nothing is locked
        out for the size of the step.
        """
        memory = ReplyMemory(window=1.0)
        addr = ("192.0.2.1", 40000)
        memory.remember(addr, b"ping", NOW)
        memory.remember(addr, b"pong", NOW - 3600)
        self.assertFalse(memory.isLoop(addr, b"ping", NOW - 3600))
        self.assertTrue(memory.isLoop(addr, b"pong", NOW - 3600))

    def test_invalid(self) -> None:
        self.assertRaises(ValueError, ReplyMemory, window=0.0)
        self.assertRaises(ValueError, ReplyMemory, size=1)


class PolicyTests(SynchronousTestCase):
    def test_loopGuard(self) -> None:
        for service in ["text", "time", "daytime", "echo"]:
            guard = SERVICES[service].policy()
            for port in [0, 7, 13, 17, 19, 37, 123]:
                self.assertEqual(guard.admit(("192.0.2.1", port), NOW), LOOPED)
            self.assertEqual(guard.admit(("192.0.2.1", 40000), NOW), ADMIT)
            guard.guardPort(5000)
            self.assertEqual(guard.admit(("192.0.2.1", 5000), NOW), LOOPED)

    def test_serverPorts(self) -> None:
        """
        Every service but NTP refuses datagrams from the ports of the
        server's services: its own and the others'.
        """
        for service in ["text", "time", "daytime", "echo"]:
            guard = SERVICES[service].policy(serverPorts=[5000, 5007, 5123])
            for port in [5000, 5007, 5123]:
                self.assertEqual(guard.admit(("192.0.2.1", port), NOW), LOOPED)
            self.assertEqual(guard.admit(("192.0.2.1", 5001), NOW), ADMIT)
        ntp = SERVICES["ntp"].policy(serverPorts=[5000, 5007, 5123])
        self.assertEqual(ntp.admit(("192.0.2.1", 5000), NOW), ADMIT)

    def test_fromProfile(self) -> None:
        """
        A policy comes from the profile its protocol declares, whatever the
        service is called: a profile without the loop guard has none, one
        with a Kiss-o'-Death allowance gets one.
        """
        ntpLike = Policy.fromProfile(PolicyProfile(kissOfDeath=True, loopGuard=False))
        self.assertEqual(ntpLike.admit(("192.0.2.1", 7), NOW), ADMIT)
        assert ntpLike.limiter is not None
        self.assertEqual(ntpLike.limiter.kodInterval, policy.DEFAULT_KOD_INTERVAL)
        guarded = Policy.fromProfile(PolicyProfile())
        self.assertEqual(guarded.admit(("192.0.2.1", 7), NOW), LOOPED)
        self.assertIsNone(guarded.replyMemory)

    def test_ntpServesPort123(self) -> None:
        guard = SERVICES["ntp"].policy()
        self.assertEqual(guard.admit(("192.0.2.1", 123), NOW), ADMIT)
        self.assertEqual(guard.admit(("192.0.2.1", 7), NOW), ADMIT)
        self.assertEqual(guard.admit(("192.0.2.1", 0), NOW), LOOPED)
        guard.guardPort(123)
        self.assertEqual(guard.admit(("192.0.2.2", 123), NOW), ADMIT)

    def test_order(self) -> None:
        """
        The loop guard comes first, then the access list, then the limits.
        """
        rules = [(False, ipaddress.ip_network("192.0.2.0/24"))]
        guard = SERVICES["text"].policy(burst=1, rules=rules)
        self.assertEqual(guard.admit(("192.0.2.1", 7), NOW), LOOPED)
        self.assertEqual(guard.admit(("192.0.2.1", 4000), NOW), DENIED)
        self.assertEqual(guard.admit(("198.51.100.1", 4000), NOW), ADMIT)
        self.assertEqual(guard.admit(("198.51.100.1", 4000), NOW), LIMITED)

    def test_rulesPerService(self) -> None:
        """
        A rule naming a service applies to that service only.
        """
        arguments = ["--ntp-port", "1123", "--echo-port", "1007"]
        arguments += ["--deny", "ntp=192.0.2.0/24", "--allow", "echo=10.0.0.0/8"]
        options = Options()
        options.parseOptions(arguments)
        self.assertIsNone(options.servicePolicy("text", None).access)
        ntpPolicy = options.servicePolicy("ntp", None)
        self.assertEqual(ntpPolicy.admit(("192.0.2.1", 123), NOW), DENIED)
        self.assertEqual(ntpPolicy.admit(("10.0.0.1", 123), NOW), ADMIT)
        echoPolicy = options.servicePolicy("echo", None)
        self.assertEqual(echoPolicy.admit(("192.0.2.1", 4000), NOW), DENIED)
        self.assertEqual(echoPolicy.admit(("10.0.0.1", 4000), NOW), ADMIT)

    def test_globalCapShared(self) -> None:
        cap = RateLimiter(rate=2.0, burst=2)
        first = SERVICES["text"].policy(globalLimit=cap)
        second = SERVICES["time"].policy(globalLimit=cap)
        self.assertEqual(first.admit(("192.0.2.1", 4000), NOW), ADMIT)
        self.assertEqual(second.admit(("192.0.2.2", 4000), NOW), ADMIT)
        self.assertEqual(first.admit(("192.0.2.3", 4000), NOW), LIMITED)
        self.assertEqual(second.admit(("192.0.2.4", 4000), NOW + 0.5), ADMIT)

    def test_rateOff(self) -> None:
        guard = SERVICES["text"].policy(rate=0)
        self.assertIsNone(guard.limiter)
        self.assertEqual(
            {guard.admit(("192.0.2.1", 4000), NOW) for _ in range(1000)}, {ADMIT}
        )
        self.assertEqual(guard.stats(), {"clients": 0, "evicted": 0})

    def test_profiles(self) -> None:
        ntpPolicy = SERVICES["ntp"].policy()
        assert ntpPolicy.limiter is not None
        self.assertEqual(ntpPolicy.limiter.kodInterval, policy.DEFAULT_KOD_INTERVAL)
        self.assertIsNone(ntpPolicy.replyMemory)
        textPolicy = SERVICES["text"].policy()
        assert textPolicy.limiter is not None
        self.assertEqual(textPolicy.limiter.kodInterval, 0.0)
        self.assertIsNotNone(SERVICES["echo"].policy().replyMemory)


class Refusing(UDPServerProtocol):
    """
    A test protocol answering C{b"ok"}, and C{b"no"} to refused requests.
    """

    serviceName = "test"
    failRefusal = False

    def respond(self, data: bytes, addr: tuple[str, int], received: float) -> Decision:
        return b"ok"

    def refused(self, data: bytes, addr: tuple[str, int], received: float) -> bytes:
        if self.failRefusal:
            raise RuntimeError("refusal failed")
        return b"no"


def started(protocol: UDPServerProtocol, port: int = 5000) -> RecordingTransport:
    """
    Start C{protocol} on a recording transport bound to C{port}.
    """
    transport = RecordingTransport(port=port)
    protocol.makeConnection(transport)  # type: ignore[arg-type]
    return transport


class ProtocolPolicyTests(SynchronousTestCase):
    """
    The base protocol asks the policy once per datagram and counts its
    verdicts.
    """

    def test_floodFromOneSource(self) -> None:
        server = TextTimeServer(policy=SERVICES["text"].policy(burst=10))
        transport = started(server)
        for _ in range(1000):
            deliver(server, b"", ("192.0.2.1", 40000), NOW)
        deliver(server, b"", ("192.0.2.2", 40000), NOW)
        self.assertEqual(len(transport.written), 11)
        self.assertEqual(transport.written[-1][1], ("192.0.2.2", 40000))
        counters = server.counters.snapshot()
        self.assertEqual(counters["received"], 1001)
        self.assertEqual(counters["answered"], 11)
        self.assertEqual(counters["limited"], 990)

    def test_loopedAndDenied(self) -> None:
        rules = [(False, ipaddress.ip_network("198.51.100.0/24"))]
        server = DaytimeServer(policy=SERVICES["daytime"].policy(rules=rules))
        transport = started(server, 1313)
        for port in [7, 13, 17, 19, 37, 123, 0, 1313]:
            deliver(server, b"x", ("192.0.2.1", port), NOW)
        deliver(server, b"x", ("198.51.100.1", 4000), NOW)
        deliver(server, b"x", ("192.0.2.1", 4000), NOW)
        self.assertEqual(len(transport.written), 1)
        counters = server.counters.snapshot()
        self.assertEqual((counters["looped"], counters["denied"]), (8, 1))

    def test_kiss(self) -> None:
        server = Refusing(policy=SERVICES["ntp"].policy(burst=2, leak=0.0))
        transport = started(server)
        for _ in range(10):
            deliver(server, b"q", ("192.0.2.1", 123), NOW)
        self.assertEqual([data for data, _ in transport.written], [b"ok", b"ok", b"no"])
        counters = server.counters.snapshot()
        self.assertEqual(
            (counters["answered"], counters["kissed"], counters["limited"]), (2, 1, 8)
        )

    def test_noKissForOtherServices(self) -> None:
        server = Refusing(policy=SERVICES["text"].policy(burst=2))
        transport = started(server)
        for _ in range(10):
            deliver(server, b"q", ("192.0.2.1", 4000), NOW)
        self.assertEqual(len(transport.written), 2)
        self.assertEqual(server.counters.kissed, 0)

    def test_refusalFailsBounded(self) -> None:
        """
        A failing refusal is counted as an internal error and logged at a
        bounded rate.
        """
        events: list[dict[str, object]] = []
        server = Refusing(policy=SERVICES["ntp"].policy(burst=1, leak=0.0))
        server.log = Logger(observer=events.append)
        server.failRefusal = True
        started(server)
        for i in range(200):
            deliver(server, b"q", (f"192.0.2.{i}", 123), NOW)
            deliver(server, b"q", (f"192.0.2.{i}", 123), NOW)
        self.assertEqual(server.counters.internalErrors, policy.DEFAULT_KOD_RATE)
        self.assertLessEqual(len(events), 10)

    def test_badInputLogBounded(self) -> None:
        events: list[dict[str, object]] = []
        server = NTPServer()
        server.log = Logger(observer=events.append)
        started(server, 123)
        for i in range(5000):
            deliver(server, b"\x00" * (i % 60), ("192.0.2.1", 40000), NOW + i * 0.001)
        self.assertEqual(server.counters.received, 5000)
        self.assertLessEqual(len(events), 12)
        deliver(server, b"", ("192.0.2.1", 40000), NOW + 100)
        self.assertRegex(str(events[-1]["log_format"]), "similar lines left out")
        # Every bad datagram is either logged or counted in a later line.
        suppressed = sum(e["suppressed"] for e in events)  # type: ignore[misc]
        self.assertEqual(suppressed + len(events), 5001)
        self.assertEqual(events[-1]["log_level"], LogLevel.warn)

    def test_kissOfDeath(self) -> None:
        """
        A flood of NTP requests from one source gets C{burst} replies and
        one Kiss-o'-Death RATE that reveals no server time.
        """
        server = NTPServer(policy=SERVICES["ntp"].policy(burst=4, leak=0.0))
        transport = started(server, 123)
        transmit = 0xDEADBEEF01234567
        for _ in range(100):
            deliver(server, ntpRequest(transmit), ("192.0.2.1", 40000), NOW)
        self.assertEqual(len(transport.written), 5)
        kod = transport.written[-1][0]
        self.assertEqual(len(kod), 48)
        packet = ntp.NTPPacket.fromBytes(kod)
        self.assertEqual((packet.leap, packet.version, packet.mode), (3, 4, 4))
        self.assertEqual((packet.stratum, packet.refid), (0, b"RATE"))
        self.assertEqual(packet.originTimestamp, transmit)
        self.assertEqual(packet.receiveTimestamp, transmit)
        self.assertEqual(packet.transmitTimestamp, transmit)
        serverSeconds = int(NOW) + NTP_UNIX_OFFSET
        self.assertNotIn(struct.pack("!I", serverSeconds), kod)
        self.assertEqual(server.counters.kissed, 1)
        self.assertEqual(server.counters.limited, 96)

    def test_kissOnlyForClientRequests(self) -> None:
        server = NTPServer(policy=SERVICES["ntp"].policy(burst=1))
        transport = started(server, 123)
        for _ in range(10):
            deliver(server, b"\x17" + bytes(47), ("192.0.2.1", 40000), NOW)
        self.assertEqual(transport.written, [])
        self.assertEqual(server.counters.kissed, 0)

    def runLoop(
        self, firstName: str, secondName: str, payloads: int
    ) -> tuple[int, UDPServerProtocol, UDPServerProtocol]:
        """
        Connect a C{firstName} service and a C{secondName} service (on
        other ports than the standard ones, with no rate limit), inject
        C{payloads} forged datagrams into the first, in the name of the
        second, all at once, and carry every reply to its peer (at most
        10 000 datagrams): how many were carried, and the two services.
        """
        first = SERVICES[firstName].makeServer(Options())
        second = SERVICES[secondName].makeServer(Options())
        first.policy = SERVICES[firstName].policy(rate=0)
        second.policy = SERVICES[secondName].policy(rate=0)
        firstAddr, secondAddr = ("192.0.2.1", 7007), ("192.0.2.2", 7008)
        queue: list[tuple[UDPServerProtocol, bytes, tuple[str, int]]] = []

        class Wire(RecordingTransport):
            def __init__(self, source: tuple[str, int]) -> None:
                super().__init__(port=source[1])
                self.source = source

            def write(self, data: bytes, addr: object = None) -> None:
                super().write(data, addr)
                target = first if addr == firstAddr else second
                queue.append((target, data, self.source))

        for server, addr in [(first, firstAddr), (second, secondAddr)]:
            server.makeConnection(Wire(addr))  # type: ignore[arg-type]
        for n in range(payloads):
            deliver(first, b"forged %d" % n, secondAddr, NOW)
        hops = 0
        while queue and hops < 10_000:
            target, data, source = queue.pop(0)
            deliver(target, data, source, NOW + hops * 0.001)
            hops += 1
        return hops, first, second

    def test_loopsDie(self) -> None:
        """
        Two services that answer any datagram (text, Time, Daytime, Echo),
        on ports the static guard does not know, with no rate limit, started
        by 1, 2, 4 or 16 forged datagrams at once, stop answering each other
        within three datagrams per datagram injected.
        """
        names = ["text", "time", "daytime", "echo"]
        for firstName in names:
            for secondName in names:
                for payloads in [1, 2, 4, 16]:
                    hops, first, second = self.runLoop(firstName, secondName, payloads)
                    where = f"{firstName} <-> {secondName}, {payloads} injected"
                    self.assertLessEqual(hops, 3 * payloads, where)
                    self.assertEqual(
                        first.counters.looped + second.counters.looped,
                        payloads,
                        where,
                    )

    def test_echoNeverAnswersAnEcho(self) -> None:
        """
        Two echo services connected by a forged datagram stop after one
        round trip.
        """
        hops, first, _second = self.runLoop("echo", "echo", 1)
        self.assertLessEqual(hops, 2)
        self.assertEqual(first.counters.looped, 1)

    def test_textNeverAnswersAText(self) -> None:
        """
        Two text services connected by a forged datagram stop after one
        round trip: the second answers the first's reply, but the first does
        not answer a time line from a peer it just answered.
        """
        hops, first, second = self.runLoop("text", "text", 1)
        self.assertEqual(hops, 2)
        self.assertEqual((first.counters.looped, second.counters.looped), (1, 0))

    def test_clientsStillServed(self) -> None:
        """
        A client that asks again and again within the loop window is
        answered every time: its requests look like no reply.  (Only the
        same echo payload sent again within the window is refused, as it is
        the reply just sent coming back.)
        """
        for name, request in [
            ("text", b"time"),
            ("text", b"unix"),
            ("text", b"iso Europe/Paris\n"),
            ("time", b""),
            ("daytime", b""),
            ("daytime", b"x"),
            ("echo", b"udptime echo 0123456789abcdef"),
            ("echo", b"hello\n"),
        ]:
            server = SERVICES[name].makeServer(Options())
            server.policy = SERVICES[name].policy(rate=0)
            transport = started(server, 7007)
            for n in range(10):
                # An echo client's requests differ (a random token).
                datagram = b"%d " % n + request if name == "echo" else request
                deliver(server, datagram, ("192.0.2.9", 4000), NOW + n * 0.1)
            self.assertEqual(len(transport.written), 10, (name, request))
            self.assertEqual(server.counters.looped, 0)

    def test_echoRepeatedLater(self) -> None:
        server = EchoServer(policy=SERVICES["echo"].policy())
        transport = started(server, 7)
        deliver(server, b"ping", ("192.0.2.1", 40000), NOW)
        deliver(server, b"ping", ("192.0.2.1", 40000), NOW + DEFAULT_LOOP_WINDOW + 0.5)
        self.assertEqual(len(transport.written), 2)

    def test_noPolicy(self) -> None:
        server = TimeServer()
        transport = started(server, 37)
        for _ in range(100):
            deliver(server, b"", ("192.0.2.1", 7), NOW)
        self.assertEqual(len(transport.written), 100)


class VerboseTests(SynchronousTestCase):
    """
    In verbose mode the reply path logs every decision, answered or
    refused, from where it counts them.
    """

    def test_everyDecision(self) -> None:
        events: list[dict[str, object]] = []
        server = TextTimeServer(
            verbose=True, policy=SERVICES["text"].policy(burst=3), clock=lambda: NOW
        )
        server.log = Logger(observer=events.append)
        started(server)
        for data, port in [
            (b"month 3", 4000),
            (b"month 13", 4000),
            (b"x" * 600, 4000),
            (b"month 4", 4000),
            (b"month 5", 7),
        ]:
            deliver(server, data, ("192.0.2.1", port), NOW)
        self.assertEqual(
            [formatEvent(event) for event in events],
            [
                "text: 7-byte request from ('192.0.2.1', 4000), 6-byte reply",
                "text: 8-byte request from ('192.0.2.1', 4000), malformed,"
                " 53-byte reply",
                "text: 600-byte request from ('192.0.2.1', 4000), dropped",
                "text: 7-byte request from ('192.0.2.1', 4000), limited",
                "text: 7-byte request from ('192.0.2.1', 7), looped",
            ],
        )

    def test_boundedRate(self) -> None:
        """
        By default a service logs at most L{VERBOSE_LOG_RATE} decisions a
        second, sustained, after a burst of ten seconds' worth; the lines
        left out are counted, and a summary says how many.
        """
        clock = Clock()
        events: list[dict[str, object]] = []
        server = TextTimeServer(verbose=True, clock=clock.seconds)
        server.log = Logger(observer=events.append)
        summary = CounterSummary(clock, {"text": server}, 10)
        summaries: list[dict[str, object]] = []
        summary.log = Logger(observer=summaries.append)
        summary.startService()
        started(server)
        burst = int(VERBOSE_LOG_RATE * VERBOSE_LOG_BURST_SECONDS)
        for _ in range(5000):
            deliver(server, b"month 3", ("192.0.2.1", 4000), NOW)
        self.assertEqual(server.counters.answered, 5000)
        self.assertEqual(len(events), burst)
        self.assertEqual(server.verboseLinesLeftOut, 5000 - burst)
        # Then a flood of one datagram a millisecond for 15 seconds gets a
        # line per tenth of a second.
        for tick in range(15_000):
            deliver(server, b"month 3", ("192.0.2.1", 4000), NOW + tick / 1000)
        self.assertEqual(server.counters.answered, 20_000)
        sustained = int(15 * VERBOSE_LOG_RATE)
        self.assertIn(len(events) - burst, range(sustained - 1, sustained + 1))
        leftOut = 20_000 - len(events)
        self.assertEqual(server.verboseLinesLeftOut, leftOut)
        clock.advance(10)
        [line] = [formatEvent(event) for event in summaries if "left out" in str(event)]
        self.assertEqual(
            line,
            f"udptime text: {leftOut} --verbose lines left out since the last"
            f" summary ({leftOut} in all), beyond --verbose-rate",
        )
        clock.advance(10)
        self.assertEqual(len(summaries), 2)  # one summary of counters, one of lines
        summary.stopService()

    def test_unbounded(self) -> None:
        """
        With C{--verbose-rate 0} every decision is logged, and none is
        left out.
        """
        events: list[dict[str, object]] = []
        options = Options()
        options.parseOptions(["--verbose", "--verbose-rate", "0"])
        self.assertIsNone(verboseLimit(options["verbose-rate"]))
        server = TextTimeServer(verbose=True, clock=lambda: NOW)
        server.verboseLog = verboseLimit(options["verbose-rate"])
        server.log = Logger(observer=events.append)
        started(server)
        for _ in range(3000):
            deliver(server, b"month 3", ("192.0.2.1", 4000), NOW)
        self.assertEqual(len(events), 3000)
        self.assertEqual(server.verboseLinesLeftOut, 0)

    def test_rateOption(self) -> None:
        """
        C{--verbose-rate} sets the sustained rate of the lines, and ten
        seconds' worth back to back; it defaults to L{VERBOSE_LOG_RATE}.
        """
        options = Options()
        options.parseOptions([])
        self.assertEqual(options["verbose-rate"], VERBOSE_LOG_RATE)
        options = Options()
        options.parseOptions(["--verbose-rate", "2.5"])
        limit = verboseLimit(options["verbose-rate"])
        assert limit is not None
        self.assertEqual((limit.rate, limit.burst), (2.5, 25))
        with self.assertRaises(usage.UsageError):
            Options().parseOptions(["--verbose-rate", "-1"])


class CounterSummaryTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.events: list[dict[str, object]] = []
        self.text = TextTimeServer(policy=SERVICES["text"].policy(burst=1))
        self.echo = EchoServer()
        self.summary = CounterSummary(
            self.clock, {"text": self.text, "echo": self.echo}, 10
        )
        self.summary.log = Logger(observer=self.events.append)

    def test_onlyChanges(self) -> None:
        self.summary.startService()
        self.clock.advance(10)
        self.assertEqual(self.events, [])
        started(self.text)
        for _ in range(5000):
            deliver(self.text, b"", ("192.0.2.1", 4000), NOW)
        self.clock.advance(10)
        self.assertEqual(len(self.events), 1)
        event = self.events[0]
        self.assertEqual(event["service"], "text")
        self.assertEqual(event["changes"], "+5000 received, +1 answered, +4999 limited")
        self.assertEqual(event["policy"], {"clients": 1, "evicted": 0})
        self.clock.advance(10)
        self.assertEqual(len(self.events), 1)
        self.summary.stopService()
        self.assertEqual(len(self.events), 1)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_finalReportOnStop(self) -> None:
        self.summary.startService()
        started(self.echo, 7)
        deliver(self.echo, b"x", ("192.0.2.1", 4000), NOW)
        self.summary.stopService()
        self.assertEqual([e["service"] for e in self.events], ["echo"])
        self.assertEqual(self.events[0]["log_level"], LogLevel.info)

    def test_internalErrorsWarn(self) -> None:
        self.summary.startService()
        self.echo.counters.internalErrors += 1
        self.clock.advance(10)
        self.assertEqual(self.events[0]["log_level"], LogLevel.warn)
        self.summary.stopService()


class OptionsTests(SynchronousTestCase):
    def parse(self, *args: str) -> Options:
        options = Options()
        options.parseOptions(list(args))
        return options

    def test_defaults(self) -> None:
        options = self.parse()
        self.assertEqual(options["rate"], policy.DEFAULT_RATE)
        self.assertEqual(options["burst"], policy.DEFAULT_BURST)
        self.assertEqual(options["ipv6-prefix"], 64)
        self.assertEqual(options["max-clients"], 100_000)
        self.assertEqual(options["global-rate"], 0.0)
        self.assertEqual(options["access"], [])
        self.assertIsNone(options.globalLimit())

    def test_values(self) -> None:
        options = self.parse(
            "--rate", "0.5", "--burst", "8", "--ipv6-prefix", "56",
            "--max-clients", "1000", "--global-rate", "100",
            "--echo-port", "7007",
            "--allow", "10.0.0.0/8", "--deny", "echo=10.1.0.0/16",
        )  # fmt: skip
        made = options.servicePolicy("echo", options.globalLimit())
        assert made.limiter is not None
        self.assertEqual(made.limiter.rate, 0.5)
        self.assertEqual(made.limiter.burst, 8)
        self.assertEqual(made.limiter.ipv6Prefix, 56)
        self.assertEqual(made.limiter.maxClients, 1000)
        self.assertIsNotNone(made.globalLimit)
        self.assertEqual(made.admit(("10.2.0.1", 4000), NOW), ADMIT)
        self.assertEqual(made.admit(("10.1.0.1", 4000), NOW), DENIED)
        self.assertEqual(made.admit(("11.0.0.1", 4000), NOW), DENIED)
        text = options.servicePolicy("text", None)
        self.assertEqual(text.admit(("10.1.0.1", 4000), NOW), ADMIT)

    def test_badValues(self) -> None:
        for args in [
            ["--rate", "-1"],
            ["--rate", "fast"],
            ["--rate", "inf"],
            ["--burst", "0"],
            ["--burst", "2.5"],
            ["--ipv6-prefix", "0"],
            ["--ipv6-prefix", "129"],
            ["--max-clients", "0"],
            ["--global-rate", "-5"],
            ["--summary-interval", "-1"],
            ["--allow", "10.0.0.0/33"],
            ["--deny", "banana"],
            ["--allow", "ntp="],
            ["--allow", "ntp=10.0.0.0/8"],
            ["--deny", "nosuch=10.0.0.0/8"],
        ]:
            self.assertRaises(usage.UsageError, self.parse, *args)

    def test_servicesGetPolicies(self) -> None:
        options = self.parse(
            "--port", "0", "--echo-port", "7007", "--time-port", "3737",
            "--global-rate", "50", "--summary-interval", "5",
        )  # fmt: skip
        top = makeService(options)
        children = {service.name: service for service in top}  # type: ignore[attr-defined]
        echo = children["echo"].protocol
        time = children["time"].protocol
        self.assertIsInstance(echo.policy, Policy)
        self.assertIsNotNone(echo.policy.replyMemory)
        self.assertIs(echo.policy.globalLimit, time.policy.globalLimit)
        summaries = [c for c in children.values() if isinstance(c, CounterSummary)]
        self.assertEqual(len(summaries), 1)
        self.assertEqual(summaries[0].interval, 5)


class LeakTests(SynchronousTestCase):
    """
    A fraction of the requests over a client's limit is answered anyway
    (chrony's C{ratelimit leak}), picked by an injected random source.
    """

    def test_leaksWhenRandomIsBelow(self) -> None:
        """
        A limited request is admitted when the random number is below the
        leak, and counted; the others are refused as before.
        """
        numbers = iter([0.1, 0.9, 0.24, 0.25, 0.5])
        limiter = SourceLimiter(
            rate=1.0, burst=1, leak=0.25, random=lambda: next(numbers)
        )
        self.assertIs(limiter.admit("192.0.2.1", NOW), ADMIT)
        verdicts = [limiter.admit("192.0.2.1", NOW) for _ in range(5)]
        self.assertEqual(verdicts, [ADMIT, LIMITED, ADMIT, LIMITED, LIMITED])
        self.assertEqual(limiter.leaked, 2)

    def test_noLeak(self) -> None:
        """
        Without a leak, the random source is never asked.
        """

        def random() -> float:
            raise AssertionError("asked")

        limiter = SourceLimiter(rate=1.0, burst=1, random=random)
        limiter.admit("192.0.2.1", NOW)
        self.assertIs(limiter.admit("192.0.2.1", NOW), LIMITED)
        self.assertEqual(limiter.leaked, 0)

    def test_fraction(self) -> None:
        """
        Over many limited requests, about the fraction asked for leaks.
        """
        import random

        limiter = SourceLimiter(
            rate=1.0, burst=1, leak=0.25, random=random.Random(20).random
        )
        limiter.admit("192.0.2.1", NOW)
        admitted = sum(limiter.admit("192.0.2.1", NOW) is ADMIT for _ in range(10_000))
        self.assertEqual(admitted, limiter.leaked)
        self.assertTrue(2_300 <= admitted <= 2_700, admitted)

    def test_withinGlobalCap(self) -> None:
        """
        A request that leaks still takes a token of the shared cap, and is
        refused when there is none.
        """
        cap = RateLimiter(rate=1.0, burst=2)
        policy = Policy(
            limiter=SourceLimiter(rate=1.0, burst=1, leak=0.5, random=lambda: 0.0),
            globalLimit=cap,
        )
        verdicts = [policy.admit(("192.0.2.1", 40000), NOW) for _ in range(4)]
        self.assertEqual(verdicts, [ADMIT, ADMIT, LIMITED, LIMITED])

    def test_invalid(self) -> None:
        self.assertRaises(ValueError, SourceLimiter, leak=-0.1)
        self.assertRaises(ValueError, SourceLimiter, leak=0.6)

    def test_ntpOnly(self) -> None:
        """
        The plugin's NTP policy leaks a quarter by default; the services
        whose replies may be larger than their requests never leak.
        """
        for name in SERVICES:
            limiter = SERVICES[name].policy(leak=0.5).limiter
            assert limiter is not None
            self.assertEqual(limiter.leak, 0.5 if name == "ntp" else 0.0, name)
        limiter = SERVICES["ntp"].policy().limiter
        assert limiter is not None
        self.assertEqual(limiter.leak, policy.DEFAULT_LEAK)
        self.assertEqual(policy.DEFAULT_LEAK, 0.25)
        stats = SERVICES["ntp"].policy().stats()
        self.assertEqual(stats["leaked"], 0)

    def test_option(self) -> None:
        """
        C{--leak} sets the NTP service's leak; out of range, it is refused.
        """
        options = Options()
        options.parseOptions(["--ntp-port", "1123", "--leak", "0.125"])
        limiter = options.servicePolicy("ntp", None).limiter
        assert limiter is not None
        self.assertEqual(limiter.leak, 0.125)
        options = Options()
        options.parseOptions([])
        self.assertEqual(options["leak"], 0.25)
        for bad in ["0.75", "-1", "x", "nan"]:
            self.assertRaises(usage.UsageError, Options().parseOptions, ["--leak", bad])

    def test_victimNotCutOff(self) -> None:
        """
        Requests forged in a victim's name at 20 a second leave the NTP
        victim, asking every 8 seconds, with about a quarter of its answers
        (none without the leak).
        """
        import random

        for leak, low, high in [(0.25, 5, 16), (0.0, 0, 0)]:
            server = NTPServer(
                policy=SERVICES["ntp"].policy(leak=leak, random=random.Random(7).random)
            )
            transport = started(server, 123)
            victim = ("192.0.2.50", 40123)
            now = NOW
            answered = 0
            for _ in range(40):
                for _ in range(160):  # 8 s of forged requests
                    deliver(server, ntpRequest(), ("192.0.2.50", 1), now)
                    now += 0.05
                # The forger's request just before the victim's takes the
                # token the victim would have had.
                deliver(server, ntpRequest(), ("192.0.2.50", 1), now)
                before = len(transport.written)
                deliver(server, ntpRequest(), victim, now)
                answered += any(
                    addr == victim and data[12:16] != b"RATE"
                    for data, addr in transport.written[before:]
                )
            report("leak victim", leak=leak, answered=answered, of=40)
            self.assertTrue(low <= answered <= high, (leak, answered))
