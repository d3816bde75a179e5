"""
Tests for L{udptime.fastport}: the specialised server port answers exactly
as Twisted's generic UDP port does (same bytes, same policy decisions, same
counters), takes receive times from the kernel when asked, and survives
errors the way the generic port does.
"""

from __future__ import annotations

import random
import socket
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import Any
from zoneinfo import ZoneInfo

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet import error, reactor, task
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.protocol import DatagramProtocol
from twisted.internet.testing import MemoryReactor
from twisted.trial.unittest import SynchronousTestCase, TestCase

from udptime import ntp, text
from udptime.clock import ClockSource, ClockState, Leap, ntp64ToUnix
from udptime.fastport import ServerPort, kernelTimestampsAvailable
from udptime.policy import Policy
from udptime.server import NTPServer, TextTimeServer, UDPServerProtocol
from udptime.service import UDPListenService, bindUDPSocket

FAKE_NOW = 1_795_000_000.654321
"""An injected clock reading far from the real time (2026-11-18)."""

DAY = 86400.0

NTP_REQUEST = bytes([0x23]) + bytes(39) + b"\x12\x34\x56\x78\x9a\xbc\xde\xf0"

TEXT_REQUESTS: Sequence[bytes] = (
    b"time",
    b"",
    b"Hello world",
    b"iso UTC",
    b"ISO Europe/Paris",
    b"unix",
    b"ctime America/St_Johns",
    b"rfc2822 Asia/Kolkata",
    b"month 3",
    b"month 13",
    b"iso No/Such_Zone",
    b"\xff\xfe not utf-8",
    b"iso UTC extra words",
    b"x" * 600,
    b"time",
    b"time",
)

NTP_REQUESTS: Sequence[bytes] = (
    NTP_REQUEST,
    bytes([0x1B]) + bytes(47),  # version 3, mode 3, zero transmit timestamp
    bytes([0x21]) + bytes(47),  # mode 1: symmetric active
    bytes([0x24]) + bytes(47),  # mode 4: a server reply, dropped
    bytes([0x26]) + bytes(47),  # mode 6: control, dropped
    bytes([0x27]) + bytes(47),  # mode 7: private, dropped
    NTP_REQUEST[:47],  # too short
    NTP_REQUEST + bytes(20),  # a MAC with an unknown key
    NTP_REQUEST,
    NTP_REQUEST,
)


def fixedClock() -> float:
    return FAKE_NOW


class Collector(DatagramProtocol):
    """
    A client that records the replies it gets.
    """

    def __init__(self) -> None:
        self.replies: list[bytes] = []

    def datagramReceived(self, data: bytes, addr: Any) -> None:
        self.replies.append(data)


def waitUntil(
    condition: Callable[[], bool], what: str, timeout: float = 5.0
) -> Deferred[None]:
    """
    Fire once C{condition()} holds, polling the reactor; fail after
    C{timeout} seconds.
    """
    deadline = time.monotonic() + timeout

    @inlineCallbacks
    def poll() -> Any:
        while not condition():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}")
            yield task.deferLater(reactor, 0.005, lambda: None)

    return poll()


def serve(
    protocol: UDPServerProtocol,
    fast: bool,
    kernelTimestamps: bool = False,
    interface: str = "127.0.0.1",
) -> Any:
    """
    Serve C{protocol} on a fresh loopback socket, through L{ServerPort} or
    Twisted's generic port.
    """
    sock = bindUDPSocket(interface, 0)
    try:
        if fast:
            return ServerPort.adopt(
                reactor, sock, protocol, 65535, kernelTimestamps=kernelTimestamps
            )
        return reactor.adoptDatagramPort(
            sock.fileno(), sock.family, protocol, maxPacketSize=65535
        )
    finally:
        sock.close()


class ServerPortTestCase(TestCase):
    """
    Helpers to run a server on a real loopback socket and talk to it.
    """

    def startServer(
        self, protocol: UDPServerProtocol, fast: bool, **kwargs: Any
    ) -> Any:
        port = serve(protocol, fast, **kwargs)
        self.addCleanup(port.stopListening)
        return port

    @inlineCallbacks
    def exchange(
        self,
        protocol: UDPServerProtocol,
        port: Any,
        datagrams: Sequence[bytes],
        host: str = "127.0.0.1",
    ) -> Any:
        """
        Send C{datagrams} from one client socket and return the replies,
        once the server has handled every datagram and every reply it sent
        has arrived.
        """
        client = Collector()
        family = "::1" if ":" in host else "127.0.0.1"
        clientPort = reactor.listenUDP(0, client, interface=family)
        self.addCleanup(clientPort.stopListening)
        start = protocol.counters.received
        for datagram in datagrams:
            client.transport.write(datagram, (host, port.getHost().port))
        yield waitUntil(
            lambda: protocol.counters.received - start == len(datagrams),
            "the server to handle every datagram",
        )
        counters = protocol.counters
        expected = counters.answered + counters.kissed
        yield waitUntil(lambda: len(client.replies) >= expected, "the replies")
        return client.replies


def textServer(policy: Policy | None = None) -> TextTimeServer:
    return TextTimeServer(clock=fixedClock, defaultZone=UTC, policy=policy)


def ntpServer(policy: Policy | None = None) -> NTPServer:
    return NTPServer(
        clock=fixedClock,
        policy=policy,
        clockSource=ClockSource(10, precision=-20),
    )


class SameAnswersTests(ServerPortTestCase):
    """
    The specialised port and the generic one give the same replies, byte for
    byte, and the same counters, for the same datagrams.
    """

    @inlineCallbacks
    def compare(
        self, makeServer: Callable[[], UDPServerProtocol], datagrams: Sequence[bytes]
    ) -> Any:
        results = []
        for fast in (False, True):
            protocol = makeServer()
            port = self.startServer(protocol, fast)
            random.seed(868)  # the NTP codec fuzzes bits below the precision
            replies = yield self.exchange(protocol, port, datagrams)
            results.append((replies, protocol.counters.snapshot()))
        (genericReplies, genericCounters), (fastReplies, fastCounters) = results
        self.assertEqual(fastReplies, genericReplies)
        self.assertEqual(fastCounters, genericCounters)
        return results

    @inlineCallbacks
    def test_text(self) -> Any:
        """
        Every kind of text request, well formed or not, gets the same reply.
        """
        [(replies, counters), _] = yield self.compare(textServer, TEXT_REQUESTS)
        self.assertIn(
            text.formatTime(FAKE_NOW, text.TimeFormat.ISO, UTC).encode() + b"\n",
            replies,
        )
        self.assertEqual(counters["received"], len(TEXT_REQUESTS))
        self.assertEqual(counters["dropped"], 1)
        self.assertGreater(counters["malformed"], 0)

    @inlineCallbacks
    def test_ntp(self) -> Any:
        """
        NTP requests get the same replies, and the same ones are dropped.
        """
        [(replies, counters), _] = yield self.compare(ntpServer, NTP_REQUESTS)
        self.assertEqual(len(replies), counters["answered"])
        self.assertGreater(counters["dropped"] + counters["malformed"], 0)
        self.assertEqual(replies[0][24:32], NTP_REQUEST[40:48])

    @inlineCallbacks
    def test_textRateLimits(self) -> Any:
        """
        The per-client limits refuse the same requests on both ports.
        """
        [(replies, counters), _] = yield self.compare(
            lambda: textServer(Policy.forService("text", rate=1, burst=3)),
            [b"time"] * 8,
        )
        self.assertEqual(len(replies), 3)
        self.assertEqual(counters["limited"], 5)

    @inlineCallbacks
    def test_ntpKissOfDeath(self) -> Any:
        """
        The NTP rate limit answers the same Kiss-o'-Death on both ports.
        """
        [(replies, counters), _] = yield self.compare(
            lambda: ntpServer(Policy.forService("ntp", rate=1, burst=2)),
            [NTP_REQUEST] * 5,
        )
        self.assertEqual(counters["kissed"], 1)
        self.assertIn(b"RATE", [reply[12:16] for reply in replies])

    @inlineCallbacks
    def test_dualStack(self) -> Any:
        """
        On a dual-stack socket, IPv4 clients (reported as IPv4-mapped IPv6
        addresses) and IPv6 clients are answered, on both ports alike.
        """
        for host in ("127.0.0.1", "::1"):
            got = []
            for fast in (False, True):
                protocol = textServer()
                port = self.startServer(protocol, fast, interface="::")
                replies = yield self.exchange(protocol, port, [b"unix"], host=host)
                got.append(replies)
            self.assertEqual(got[0], got[1])
            self.assertEqual(got[1], [b"%.6f\n" % FAKE_NOW])


class KernelTimestampTests(ServerPortTestCase):
    """
    With kernel timestamps on, the receive time comes from the kernel, not
    from the protocol's clock.
    """

    def setUp(self) -> None:
        if not kernelTimestampsAvailable():
            self.skipTest("no SO_TIMESTAMPNS on this system")

    @inlineCallbacks
    def test_textUsesKernelTime(self) -> Any:
        """
        A text reply shows the kernel's receive time (today), not the
        injected clock's.
        """
        protocol = textServer()
        port = self.startServer(protocol, fast=True, kernelTimestamps=True)
        before = time.time()
        [reply] = yield self.exchange(protocol, port, [b"unix"])
        after = time.time()
        self.assertLessEqual(before - 1e-6, float(reply))
        self.assertLessEqual(float(reply), after)

    @inlineCallbacks
    def test_textWithoutKernelTime(self) -> Any:
        """
        With kernel timestamps off, the injected clock gives the time.
        """
        protocol = textServer()
        port = self.startServer(protocol, fast=True, kernelTimestamps=False)
        [reply] = yield self.exchange(protocol, port, [b"unix"])
        self.assertEqual(reply, b"%.6f\n" % FAKE_NOW)

    @inlineCallbacks
    def test_ntpReceiveTimestamp(self) -> Any:
        """
        An NTP reply's receive timestamp is the kernel's, its transmit
        timestamp the clock's when the reply was built (here a clock a day
        ahead, so that the transmit time stays after the receive time).
        """
        protocol = NTPServer(
            clock=lambda: time.time() + DAY,
            clockSource=ClockSource(10, precision=-20),
        )
        port = self.startServer(protocol, fast=True, kernelTimestamps=True)
        before = time.time()
        [reply] = yield self.exchange(protocol, port, [NTP_REQUEST])
        after = time.time()
        receive = ntp64ToUnix(int.from_bytes(reply[32:40], "big"), before)
        transmit = ntp64ToUnix(int.from_bytes(reply[40:48], "big"), before)
        self.assertLessEqual(before - 1e-5, receive)
        self.assertLessEqual(receive, after + 1e-5)
        self.assertLessEqual(before + DAY - 1e-5, transmit)
        self.assertLessEqual(transmit, after + DAY + 1e-5)

    def test_optionSet(self) -> None:
        """
        The port sets C{SO_TIMESTAMPNS} on its socket exactly when asked.
        """
        from udptime.fastport import SO_TIMESTAMPNS

        assert SO_TIMESTAMPNS is not None
        for wanted in (True, False):
            port = self.startServer(textServer(), fast=True, kernelTimestamps=wanted)
            value = port.socket.getsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS)
            self.assertEqual(bool(value), wanted)


class ErrorTests(ServerPortTestCase):
    """
    The specialised port contains errors as the generic port does.
    """

    @inlineCallbacks
    def test_handlerFailure(self) -> Any:
        """
        An exception out of the protocol is logged and counted, and the port
        goes on answering.
        """
        protocol = textServer()
        port = self.startServer(protocol, fast=True)
        original = protocol.handleDatagram
        calls = []

        def failOnce(data: bytes, addr: Any, received: float) -> None:
            calls.append(data)
            if len(calls) == 1:
                protocol.counters.received += 1
                raise RuntimeError("a bug")
            original(data, addr, received)

        protocol.handleDatagram = failOnce  # type: ignore[method-assign]
        replies = yield self.exchange(protocol, port, [b"time", b"unix"])
        self.assertEqual(replies, [b"%.6f\n" % FAKE_NOW])
        self.assertEqual(protocol.counters.internalErrors, 1)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_otherAddressesChecked(self) -> None:
        """
        A write to an address other than the datagram being answered is
        checked as on the generic port: no host names.
        """
        port = self.startServer(textServer(), fast=True)
        self.assertRaises(error.InvalidAddressError, port.write, b"x", ("localhost", 9))

    @inlineCallbacks
    def test_manyWaiting(self) -> Any:
        """
        More datagrams than one wake-up reads are all answered, over several
        wake-ups.
        """
        protocol = textServer()
        port = self.startServer(protocol, fast=True)
        port.maxDatagramsPerRead = 3
        replies = yield self.exchange(protocol, port, [b"unix"] * 20)
        self.assertEqual(len(replies), 20)


class ServiceTests(TestCase):
    """
    L{UDPListenService} picks the port.
    """

    def test_posixReactor(self) -> None:
        """
        On a posix reactor the service serves through L{ServerPort}, with
        the kernel timestamp setting it was given.
        """
        for wanted in (False, True):
            service = UDPListenService(
                reactor, textServer(), 0, "127.0.0.1", kernelTimestamps=wanted
            )
            service.privilegedStartService()
            self.addCleanup(service.stopService)
            self.assertIsInstance(service.port, ServerPort)
            self.assertEqual(service.port.kernelTimestamps, wanted)

    def test_otherReactor(self) -> None:
        """
        Elsewhere it hands the socket to C{adoptDatagramPort}.
        """
        memory = MemoryReactor()
        service = UDPListenService(memory, textServer(), 0, "127.0.0.1")
        service.privilegedStartService()
        self.assertEqual(len(memory.adoptedPorts), 1)

    def test_inheritedSocket(self) -> None:
        """
        A socket handed down (by a worker's supervisor) is served instead
        of a new one.
        """
        sock = bindUDPSocket("127.0.0.1", 0, reusePort=True)
        service = UDPListenService(reactor, textServer(), 1, "127.0.0.1")
        service.inheritedSocket = sock
        bound = sock.getsockname()[1]
        service.privilegedStartService()
        self.addCleanup(service.stopService)
        self.assertEqual(service.port.getHost().port, bound)
        self.assertIsNone(service.inheritedSocket)


def renderedDirectly(now: float, fmt: text.TimeFormat, zone: Any) -> str:
    """
    The time as C{datetime} renders it, without any caching.
    """
    moment = (
        datetime.fromtimestamp(now).astimezone()
        if zone is None
        else datetime.fromtimestamp(now, zone)
    )
    if fmt is text.TimeFormat.ISO:
        return moment.isoformat(timespec="microseconds")
    if fmt is text.TimeFormat.CTIME:
        return moment.ctime()
    return format_datetime(moment)


ZONES = [None, UTC, ZoneInfo("Europe/Paris"), ZoneInfo("America/St_Johns")]
FORMATS = [text.TimeFormat.ISO, text.TimeFormat.CTIME, text.TimeFormat.RFC2822]


class CachedRenderingTests(SynchronousTestCase):
    """
    The text codec renders each second once and caches it; the replies are
    the ones C{datetime} gives.
    """

    @given(
        now=st.floats(min_value=-2.2e9, max_value=4.2e9),
        zone=st.sampled_from(ZONES),
        fmt=st.sampled_from(FORMATS),
    )
    @settings(max_examples=500)
    def test_anyTime(self, now: float, zone: Any, fmt: text.TimeFormat) -> None:
        """
        Any time, in any zone and format, as text and as a reply line.
        """
        rendered = renderedDirectly(now, fmt, zone)
        self.assertEqual(text.formatTime(now, fmt, zone), rendered)
        self.assertEqual(
            text.buildReply(text.TimeRequest(fmt, zone), now),
            rendered.encode("ascii") + b"\n",
        )

    def test_roundingEdges(self) -> None:
        """
        Times that round to the next second, or sit half-way between two
        microseconds, render as C{datetime} rounds them; so do DST
        transitions and times before 1970.
        """
        edges = [-1.5, -0.0000005, -0.9999995, 0.0, 1.0000005, 2**31 - 0.5]
        for second in (1_795_000_000, 1_711_846_799, 1_711_846_800, -86_400):
            for fraction in (0.9999995, 0.99999949999, 0.9999996, 0.0000005, 0.5):
                edges.append(second + fraction)
        for now in edges:
            for zone in ZONES:
                for fmt in FORMATS:
                    rendered = renderedDirectly(now, fmt, zone)
                    self.assertEqual(
                        text.formatTime(now, fmt, zone), rendered, (now, zone, fmt)
                    )
                    self.assertEqual(
                        text.buildReply(text.TimeRequest(fmt, zone), now),
                        rendered.encode("ascii") + b"\n",
                    )

    def test_parseCacheKeepsErrors(self) -> None:
        """
        Parsed requests come from the cache; errors are raised every time.
        """
        self.assertIs(text.parseRequest(b"iso UTC"), text.parseRequest(b"iso UTC"))
        for _ in range(2):
            self.assertRaises(text.TextRequestError, text.parseRequest, b"month 13")
            self.assertRaises(text.RequestTooLarge, text.parseRequest, b"x" * 600)


plainRequests = st.builds(
    lambda version, rest: bytes([(version << 3) | 3]) + rest,
    st.integers(1, 4),
    st.binary(min_size=47, max_size=47),
)

clockStates = st.builds(
    ClockState,
    leap=st.sampled_from([Leap.NONE, Leap.INSERT, Leap.DELETE]),
    synchronised=st.booleans(),
    stratum=st.integers(1, 16),
    refid=st.binary(min_size=4, max_size=4),
    rootDelay=st.floats(0, 100),
    rootDispersion=st.floats(0, 100),
    referenceTime=st.none() | st.floats(0, 4e9),
    precision=st.integers(-40, 2),
)

times = st.floats(min_value=-2e9, max_value=6e9)


class PlainReplyTests(SynchronousTestCase):
    """
    The NTP codec's path for plain client requests gives the general path's
    replies, byte for byte.
    """

    @given(
        data=plainRequests,
        state=clockStates,
        received=times,
        delay=st.floats(-1e-3, 1),
        minPoll=st.integers(0, 17),
        seed=st.integers(0, 2**32),
    )
    @settings(max_examples=500)
    def test_sameReply(
        self,
        data: bytes,
        state: ClockState,
        received: float,
        delay: float,
        minPoll: int,
        seed: int,
    ) -> None:
        self.assertTrue(ntp.isPlainRequest(data))
        transmit = received + delay
        expected = ntp.buildReply(
            ntp.parseRequest(data),
            state,
            received,
            transmit,
            minPoll=minPoll,
            randomBits=random.Random(seed).getrandbits,
        )
        constants = ntp.ReplyConstants.fromState(state, minPoll)
        got = ntp.plainReply(
            data,
            constants,
            received,
            transmit,
            randomBits=random.Random(seed).getrandbits,
        )
        self.assertIn(ntp.prefixKey(data), constants.prefixes)
        again = ntp.plainReply(
            data,
            constants,
            received,
            transmit,
            randomBits=random.Random(seed).getrandbits,
        )
        self.assertEqual(again, expected)
        self.assertEqual(got, expected)

    def test_notPlain(self) -> None:
        """
        Anything but a 48-byte mode-3 request of version 1 to 4 takes the
        general path.
        """
        for data in NTP_REQUESTS[2:8]:
            self.assertFalse(ntp.isPlainRequest(data), data)
        for version in (0, 5, 6, 7):
            self.assertFalse(
                ntp.isPlainRequest(bytes([(version << 3) | 3]) + bytes(47))
            )
