"""
Tests for L{udptime.port}: the specialised server port answers exactly
as Twisted's generic UDP port does (same bytes, same policy decisions, same
counters), takes receive times from the kernel when asked, and survives
errors the way the generic port does.
"""

from __future__ import annotations

import ipaddress
import random
import select
import socket
import sys
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from email.utils import format_datetime
from errno import EBADF, ECONNREFUSED, EINTR, ENOBUFS, EPERM
from typing import Any
from unittest import SkipTest
from zoneinfo import ZoneInfo

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet import error, reactor, task
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.protocol import DatagramProtocol
from twisted.internet.testing import MemoryReactor
from twisted.trial.unittest import SynchronousTestCase, TestCase

from tests.support import RecordingTransport
from tests.test_ntp import ERA_1
from udptime import mmsg, ntp, text
from udptime.ancillary import kernelTimestampsAvailable
from udptime.clock import ClockSource, ClockState, Leap, ntp64ToUnix, unixToNTP64
from udptime.decision import HELD, MALFORMED, Decision
from udptime.policy import AccessList, Policy, SourceLimiter
from udptime.port import ServerPort, _osError, batchingAvailable
from udptime.server import EchoServer, NTPServer, TextTimeServer, UDPServerProtocol
from udptime.service import UDPListenService, bindUDPSocket
from udptime.services import SERVICES

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
        self.sources: list[Any] = []

    def datagramReceived(self, data: bytes, addr: Any) -> None:
        self.replies.append(data)
        self.sources.append(addr)


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


BATCHINGS: Sequence[bool] = (False, True) if batchingAvailable() else (False,)
"""Whether L{ServerPort} batches its system calls, each way it can."""

PORTS: Sequence[tuple[bool, bool]] = ((False, False), (True, False)) + (
    ((True, True),) if batchingAvailable() else ()
)
"""
The ports compared, as C{(fast, batched)}: Twisted's generic port,
L{ServerPort} one datagram at a time, and L{ServerPort} batching its system
calls where the system can.
"""


def serve(
    protocol: UDPServerProtocol,
    fast: bool,
    kernelTimestamps: bool = False,
    interface: str = "127.0.0.1",
    batched: bool | None = None,
    replyFromDestination: bool | None = None,
) -> Any:
    """
    Serve C{protocol} on a fresh loopback socket, through L{ServerPort} or
    Twisted's generic port.
    """
    sock = bindUDPSocket(interface, 0)
    try:
        if fast:
            return ServerPort.adopt(
                reactor,
                sock,
                protocol,
                65535,
                kernelTimestamps=kernelTimestamps,
                batched=batched,
                replyFromDestination=replyFromDestination,
            )
        return reactor.adoptDatagramPort(
            sock.fileno(), sock.family, protocol, maxPacketSize=65535
        )
    finally:
        sock.close()


def serveWithClient(
    case: SynchronousTestCase, protocol: UDPServerProtocol
) -> tuple[Any, socket.socket]:
    """
    Serve C{protocol} on udptime's port with kernel timestamps, and give a
    client socket connected to it (a 5 s timeout on its reads); the test
    case C{case} stops the one and closes the other when it ends.
    """
    port = serve(protocol, True, kernelTimestamps=True)
    case.addCleanup(port.stopListening)
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    client.settimeout(5)
    case.addCleanup(client.close)
    client.connect(("127.0.0.1", port.getHost().port))
    return port, client


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
        client: Collector | None = None,
    ) -> Any:
        """
        Send C{datagrams} from one client socket and return the replies,
        once the server has handled every datagram and every reply it sent
        has arrived.
        """
        if client is None:
            client = Collector()
            family = "::1" if ":" in host else "127.0.0.1"
            clientPort = reactor.listenUDP(0, client, interface=family)
            self.addCleanup(clientPort.stopListening)
        assert client.transport is not None
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
        self,
        makeServer: Callable[[], UDPServerProtocol],
        datagrams: Sequence[bytes],
        host: str = "127.0.0.1",
        interface: str = "127.0.0.1",
        ordered: bool = True,
    ) -> Any:
        """
        Send C{datagrams} to a fresh server on each of L{PORTS}; check that
        every port gives the generic port's replies (in the same order,
        unless not C{ordered}) and counters, and return the generic port's.
        """
        results = []
        for fast, batched in PORTS:
            protocol = makeServer()
            port = self.startServer(
                protocol, fast, batched=batched, interface=interface
            )
            if fast:
                self.assertEqual(port.batched, batched)
            random.seed(868)  # the NTP codec fuzzes bits below the precision
            replies = yield self.exchange(protocol, port, datagrams, host=host)
            results.append((replies, protocol.counters.snapshot()))
        for replies, counters in results[1:]:
            if ordered:
                self.assertEqual(replies, results[0][0])
            else:
                self.assertEqual(sorted(replies), sorted(results[0][0]))
            self.assertEqual(counters, results[0][1])
        return results[:2]

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
            lambda: textServer(SERVICES["text"].policy(rate=1, burst=3)),
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
            lambda: ntpServer(SERVICES["ntp"].policy(rate=1, burst=2, leak=0.0)),
            [NTP_REQUEST] * 5,
        )
        self.assertEqual(counters["kissed"], 1)
        self.assertIn(b"RATE", [reply[12:16] for reply in replies])

    @inlineCallbacks
    def test_dualStack(self) -> Any:
        """
        On a dual-stack socket, IPv4 clients (reported as IPv4-mapped IPv6
        addresses) and IPv6 clients are answered, on every port alike, and
        the rate limit sees the same clients.
        """
        for host in ("127.0.0.1", "::1"):
            [(replies, counters), _] = yield self.compare(
                lambda: textServer(SERVICES["text"].policy(rate=1, burst=2)),
                [b"unix"] * 3,
                host=host,
                interface="::",
            )
            self.assertEqual(replies, [b"%.6f\n" % FAKE_NOW] * 2)
            self.assertEqual(counters["limited"], 1)

    @inlineCallbacks
    def test_wildcard(self) -> Any:
        """
        On wildcard sockets, where replies carry the address they leave
        from, every port gives the same replies, also when some requests
        of a batch get none (the later replies then fill earlier send
        slots).
        """
        for interface, host in ("0.0.0.0", "127.0.0.1"), ("::", "::1"):
            yield self.compare(
                textServer, TEXT_REQUESTS, host=host, interface=interface
            )
            yield self.compare(
                lambda: ntpServer(SERVICES["ntp"].policy(rate=1, burst=2, leak=0.0)),
                [NTP_REQUEST] * 4,
                host=host,
                interface=interface,
            )

    @inlineCallbacks
    def test_ipv6(self) -> Any:
        """
        An IPv6-only socket answers the same on every port.
        """
        [(replies, _), _] = yield self.compare(
            textServer, TEXT_REQUESTS, host="::1", interface="::1"
        )
        self.assertEqual(len(replies), len(TEXT_REQUESTS) - 1)

    @inlineCallbacks
    def test_oversized(self) -> Any:
        """
        Datagrams up to the largest UDP payload are read whole on every
        port: echo answers those it echoes and drops the longer ones alike.
        """
        sizes = [0, 1, 1472, 1473, 2048, 9000, 65507, 5]
        [(replies, counters), _] = yield self.compare(
            lambda: EchoServer(clock=fixedClock, policy=SERVICES["echo"].policy()),
            [bytes([size % 251]) * size for size in sizes],
        )
        self.assertEqual([len(reply) for reply in replies], [0, 1, 1472, 5])
        self.assertEqual(counters["dropped"], 4)

    @inlineCallbacks
    def test_loopGuard(self) -> Any:
        """
        A datagram from a port the loop guard refuses is dropped and counted
        as looped on every port.
        """
        client = Collector()
        clientPort = reactor.listenUDP(0, client, interface="127.0.0.1")
        self.addCleanup(clientPort.stopListening)
        number = clientPort.getHost().port
        results = []
        for fast, batched in PORTS:
            protocol = textServer(Policy(loopPorts=[number]))
            port = self.startServer(protocol, fast, batched=batched)
            replies = yield self.exchange(protocol, port, [b"time"] * 3, client=client)
            results.append((list(replies), protocol.counters.snapshot()))
        for replies, counters in results:
            self.assertEqual(replies, [])
            self.assertEqual(counters["looped"], 3)

    @inlineCallbacks
    def test_queuedRepliesAndRefusals(self) -> Any:
        """
        A protocol whose replies may wait for a batch (an NTP server that
        does not claim its transmit times) gets the same replies and
        counters; its Kiss-o'-Death goes out at once, as every refusal does
        (so ahead of the replies queued before it).
        """

        class BatchedNTPServer(NTPServer):
            transmitTimestamps = False

        [(replies, counters), _] = yield self.compare(
            lambda: BatchedNTPServer(
                clock=fixedClock,
                policy=SERVICES["ntp"].policy(rate=1, burst=3, leak=0.0),
                clockSource=ClockSource(10, precision=-20),
            ),
            [NTP_REQUEST, NTP_REQUESTS[1]] + [NTP_REQUEST] * 4,
            ordered=False,
        )
        self.assertEqual(counters["kissed"], 1)
        self.assertEqual(len(replies), counters["answered"] + 1)


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
        for batched in BATCHINGS:
            protocol = textServer()
            port = self.startServer(
                protocol, fast=True, kernelTimestamps=True, batched=batched
            )
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
        for batched in BATCHINGS:
            protocol = textServer()
            port = self.startServer(
                protocol, fast=True, kernelTimestamps=False, batched=batched
            )
            [reply] = yield self.exchange(protocol, port, [b"unix"])
            self.assertEqual(reply, b"%.6f\n" % FAKE_NOW)

    @inlineCallbacks
    def test_ntpReceiveTimestamp(self) -> Any:
        """
        An NTP reply's receive timestamp is the kernel's, its transmit
        timestamp the clock's when the reply was built (here a clock a day
        ahead, so that the transmit time stays after the receive time).
        """
        for batched in BATCHINGS:
            protocol = NTPServer(
                clock=lambda: time.time() + DAY,
                clockSource=ClockSource(10, precision=-20),
            )
            port = self.startServer(
                protocol, fast=True, kernelTimestamps=True, batched=batched
            )
            before = time.time()
            replies = yield self.exchange(protocol, port, [NTP_REQUEST] * 3)
            reply = replies[0]
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
        from udptime.ancillary import SO_TIMESTAMPNS

        assert SO_TIMESTAMPNS is not None
        for wanted in (True, False):
            port = self.startServer(textServer(), fast=True, kernelTimestamps=wanted)
            value = port.socket.getsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS)
            self.assertEqual(bool(value), wanted)


class ReplySourceTests(ServerPortTestCase):
    """
    On a socket bound to a wildcard address, each reply leaves from the
    address its request reached, not from the one the kernel would pick:
    a client that asked 127.0.0.2 hears from 127.0.0.2 (every 127/8
    address is this host's, and the kernel picks 127.0.0.1 to reach one).
    """

    @inlineCallbacks
    def replySources(
        self,
        makeServer: Callable[[], UDPServerProtocol],
        datagrams: Sequence[bytes],
        host: str,
        **kwargs: Any,
    ) -> Any:
        """
        The sources of the replies to C{datagrams} sent to C{host}, from a
        client on the loopback address of C{host}'s family.
        """
        protocol = makeServer()
        port = self.startServer(protocol, True, **kwargs)
        client = Collector()
        clientPort = reactor.listenUDP(
            0, client, interface="::1" if ":" in host else "127.0.0.1"
        )
        self.addCleanup(clientPort.stopListening)
        replies = yield self.exchange(protocol, port, datagrams, host, client)
        self.assertEqual(len(replies), len(datagrams))
        return {source[0] for source in client.sources}

    @inlineCallbacks
    def test_fromTheAddressAsked(self) -> Any:
        """
        Text replies (sent in batches where the port batches), NTP replies
        (each sent at once) and Kiss-o'-Death refusals (written by the
        protocol) leave from the address asked, on IPv4 and dual-stack
        sockets, read one at a time or in batches, with kernel timestamps
        or without.
        """
        cases = [
            (textServer, [b"unix"] * 3),
            (ntpServer, [NTP_REQUEST] * 3),
            (
                lambda: ntpServer(SERVICES["ntp"].policy(rate=1, burst=1, leak=0.0)),
                [NTP_REQUEST] * 2,
            ),
        ]
        for interface in ("0.0.0.0", "::"):
            for batched in BATCHINGS:
                for timestamps in (False, True):
                    for makeServer, datagrams in cases:
                        sources = yield self.replySources(
                            makeServer,
                            datagrams,
                            "127.0.0.2",
                            interface=interface,
                            batched=batched,
                            kernelTimestamps=timestamps,
                        )
                        where = (interface, batched, timestamps, datagrams)
                        self.assertEqual(sources, {"127.0.0.2"}, where)
        sources = yield self.replySources(textServer, [b"unix"], "::1", interface="::")
        self.assertEqual(sources, {"::1"})

    @inlineCallbacks
    def test_kernelsChoiceOtherwise(self) -> Any:
        """
        Without it (or bound to one address) the kernel picks the source, a
        different address here: what the test above would see if the port
        did not send replies from the address asked.
        """
        for batched in BATCHINGS:
            sources = yield self.replySources(
                textServer,
                [b"unix"],
                "127.0.0.2",
                interface="0.0.0.0",
                batched=batched,
                replyFromDestination=False,
            )
            self.assertEqual(sources, {"127.0.0.1"})

    def test_whenWildcard(self) -> None:
        """
        By default a port sends replies from the address asked when it is
        bound to a wildcard address, where the system can, and only then.
        """
        for interface, expected in [
            ("0.0.0.0", True),
            ("::", True),
            ("127.0.0.1", False),
            ("::1", False),
        ]:
            with self.subTest(interface=interface):
                port = self.startServer(textServer(), True, interface=interface)
                self.assertEqual(
                    port.replyFromDestination,
                    expected and sys.platform == "linux",
                )


class ErrorTests(ServerPortTestCase):
    """
    The specialised port contains errors as the generic port does.
    """

    @inlineCallbacks
    def test_handlerFailure(self) -> Any:
        """
        An exception out of the protocol's decision is logged and counted,
        and the port goes on answering.
        """
        protocol = textServer()
        original = protocol.decide
        calls = []

        def failOnce(data: bytes, addr: Any, received: float) -> Decision:
            calls.append(data)
            if len(calls) == 1:
                raise RuntimeError("a bug")
            return original(data, addr, received)

        protocol.decide = failOnce  # type: ignore[method-assign]
        port = self.startServer(protocol, fast=True)
        replies = yield self.exchange(protocol, port, [b"time", b"unix"])
        self.assertEqual(replies, [b"%.6f\n" % FAKE_NOW])
        self.assertEqual(protocol.counters.internalErrors, 1)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_otherAddressesChecked(self) -> None:
        """
        A write of a protocol's own (the port never writes for it) is
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


class Chatty(UDPServerProtocol):
    """
    A protocol that writes more than one reply per datagram: a note to
    another address, then its answer (the datagram, or 3000 bytes for
    C{b"big"}).
    """

    serviceName = "chatty"

    def __init__(self, other: Any) -> None:
        super().__init__(clock=fixedClock)
        self.other = other

    def respond(self, data: bytes, addr: Any, received: float) -> Decision:
        assert self.transport is not None
        self.transport.write(b"note " + data, self.other)
        return b"y" * 3000 if data == b"big" else data


def blockingClient(host: str = "127.0.0.1") -> socket.socket:
    """
    A client socket whose reads wait at most 5 seconds.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    sock.bind((host, 0))
    sock.settimeout(5.0)
    return sock


class BatchTests(SynchronousTestCase):
    """
    L{ServerPort} batching its system calls: replies queued and sent
    together, failures contained and counted.  Each test queues datagrams
    in the server's socket (on loopback a datagram is there when C{sendto}
    returns), then calls C{doRead} itself.
    """

    def setUp(self) -> None:
        if not batchingAvailable():
            raise SkipTest("no recvmmsg/sendmmsg on this system")
        self.client = blockingClient()
        self.addCleanup(self.client.close)

    def startServer(
        self, protocol: UDPServerProtocol, interface: str = "127.0.0.1"
    ) -> Any:
        port = serve(protocol, True, interface=interface, batched=True)
        self.addCleanup(port.stopListening)
        self.assertTrue(port.batched)
        return port

    def send(self, port: Any, datagrams: Sequence[bytes]) -> None:
        target = ("127.0.0.1", port.getHost().port)
        for datagram in datagrams:
            self.client.sendto(datagram, target)

    def receive(self, count: int, sock: socket.socket | None = None) -> list[bytes]:
        sock = self.client if sock is None else sock
        return [sock.recv(65535) for _ in range(count)]

    def assertNothingMore(self, sock: socket.socket | None = None) -> None:
        sock = self.client if sock is None else sock
        sock.setblocking(False)
        self.assertRaises(BlockingIOError, sock.recv, 65535)
        sock.settimeout(5.0)

    def recordSends(self, port: Any) -> list[tuple[int, int]]:
        """
        Record each C{sendmmsg} of C{port}'s batch as the slot it starts
        from and the replies queued, and still make it.
        """
        batch = port.batch
        send = batch.send
        calls: list[tuple[int, int]] = []

        def recordingSend(fd: int, start: int) -> int:
            calls.append((start, batch.queued))
            return send(fd, start)

        batch.send = recordingSend
        return calls

    def test_oneSendPerBatch(self) -> None:
        """
        The replies to one batch go out with one C{sendmmsg} call, in order.
        """
        protocol = textServer()
        port = self.startServer(protocol)
        calls = self.recordSends(port)
        self.send(port, [b"unix", b"time", b"month 13", b"unix"])
        port.doRead()
        replies = self.receive(4)
        self.assertEqual(calls, [(0, 4)])
        self.assertEqual(replies[0], b"%.6f\n" % FAKE_NOW)
        self.assertEqual(replies[3], b"%.6f\n" % FAKE_NOW)
        self.assertTrue(replies[2].startswith(b"error"))
        self.assertEqual(protocol.counters.answered, 4)

    def test_loneDatagram(self) -> None:
        """
        The reply to a datagram read alone goes out at once with C{sendto},
        not queued for C{sendmmsg}; a failed send loses it, counted as a
        failed send; a batch of two is queued again.
        """
        protocol = textServer()
        port = self.startServer(protocol)
        calls = self.recordSends(port)
        failing = FailingSends.onPort(self, port, [EPERM])
        counters = protocol.counters
        self.send(port, [b"unix"])
        port.doRead()
        self.assertEqual(
            (failing.calls, counters.answered, counters.sendFailed), (1, 0, 1)
        )
        self.send(port, [b"unix"])
        port.doRead()
        self.assertEqual(self.receive(1), [b"%.6f\n" % FAKE_NOW])
        self.assertEqual(
            (failing.calls, counters.answered, counters.sendFailed), (2, 1, 1)
        )
        self.assertEqual(calls, [])
        self.send(port, [b"unix", b"time"])
        port.doRead()
        self.assertEqual(self.receive(1), [b"%.6f\n" % FAKE_NOW])
        self.assertTrue(self.receive(1)[0].endswith(b"\n"))
        self.assertEqual((failing.calls, counters.answered), (2, 3))
        self.assertEqual(calls, [(0, 2)])
        self.assertNothingMore()

    def test_sendFailures(self) -> None:
        """
        A partial send goes on from the first reply not sent; an interrupted
        call is repeated; a reply the kernel refuses is lost and counted as
        a failed send, and a full buffer loses the rest of the batch.
        """
        protocol = textServer()
        port = self.startServer(protocol)
        batch = port.batch
        send = batch.send
        results = iter([None, -EINTR, -EPERM, -ENOBUFS])

        def failingSend(fd: int, start: int) -> int:
            result = next(results)
            if result is not None:
                return result
            queued = batch.queued
            batch.queued = start + 1  # send one only
            try:
                return send(fd, start)
            finally:
                batch.queued = queued

        batch.send = failingSend
        self.send(port, [b"unix", b"time", b"time", b"time", b"time"])
        port.doRead()
        self.assertEqual(self.receive(1), [b"%.6f\n" % FAKE_NOW])
        self.assertNothingMore()
        counters = protocol.counters
        self.assertEqual((counters.answered, counters.sendFailed), (1, 4))
        self.assertEqual(batch.queued, 0)
        # The next batch is sent as usual.
        batch.send = send
        self.send(port, [b"unix"])
        port.doRead()
        self.assertEqual(self.receive(1), [b"%.6f\n" % FAKE_NOW])
        self.assertEqual((counters.answered, counters.sendFailed), (2, 4))

    def test_leftoverRefusal(self) -> None:
        """
        C{ECONNREFUSED} (an ICMP error left from an earlier datagram) is
        reported once: the same reply is sent again.
        """
        protocol = textServer()
        port = self.startServer(protocol)
        send = port.batch.send
        results = iter([-ECONNREFUSED])
        port.batch.send = lambda fd, start: next(results, None) or send(fd, start)
        self.send(port, [b"unix"] * 2)
        port.doRead()
        self.assertEqual(self.receive(2), [b"%.6f\n" % FAKE_NOW] * 2)
        self.assertEqual(protocol.counters.answered, 2)
        self.assertEqual(protocol.counters.sendFailed, 0)

    def test_receiveFailures(self) -> None:
        """
        An error the kernel reports for an earlier datagram is skipped and
        the batch goes on; any other error ends the batch, logged.
        """
        protocol = textServer()
        port = self.startServer(protocol)
        receive = port.batch.receive
        results = iter([-ECONNREFUSED, -EINTR, None, -EBADF])

        def failingReceive(fd: int, count: int) -> int:
            result = next(results, None)
            return receive(fd, count) if result is None else result

        port.batch.receive = failingReceive
        port.maxDatagramsPerRead = 2
        self.send(port, [b"unix"] * 3)
        port.doRead()
        self.assertEqual(protocol.counters.received, 2)
        port.batch.receive = receive
        port.doRead()
        self.assertEqual(self.receive(3), [b"%.6f\n" % FAKE_NOW] * 3)
        self.assertEqual(protocol.counters.received, 3)

    def test_unreadableSource(self) -> None:
        """
        A datagram whose source address cannot be converted is dropped and
        logged; the others are answered.
        """
        protocol = textServer()
        port = self.startServer(protocol)
        convert = port.batch.convert
        failures = [OSError("unexpected address family 1")]

        def failingConvert(raw: bytes) -> Any:
            if failures:
                raise failures.pop()
            return convert(raw)

        port.batch.convert = failingConvert
        self.send(port, [b"unix"] * 2)
        port.doRead()
        self.assertEqual(self.receive(1), [b"%.6f\n" % FAKE_NOW])
        self.assertNothingMore()
        self.assertEqual(protocol.counters.received, 1)

    def test_otherWrites(self) -> None:
        """
        A write to another address than the datagram's goes straight out; a
        reply too long for a send slot, or one more than the slots, is sent
        on its own; every reply arrives whole.
        """
        other = blockingClient()
        self.addCleanup(other.close)
        protocol = Chatty(other.getsockname())
        port = self.startServer(protocol)
        port.maxDatagramsPerRead = 300
        datagrams = [b"%d" % i for i in range(200)] + [b"big"]
        self.send(port, datagrams)
        port.doRead()
        replies = self.receive(len(datagrams))
        self.assertEqual(sorted(replies), sorted([*datagrams[:-1], b"y" * 3000]))
        self.assertEqual(
            sorted(self.receive(len(datagrams), other)),
            sorted(b"note " + datagram for datagram in datagrams),
        )
        self.assertEqual(protocol.counters.answered, len(datagrams))

    def test_heldReplies(self) -> None:
        """
        The answers a protocol decides for a whole batch at once (L{HELD},
        then C{decideBatch}) are queued and sent with one C{sendmmsg}, all
        but one too long for a send slot, which goes out on its own; each
        is counted as answered once, refusals as refused.
        """
        long = b"L" * (mmsg.SEND_SLOT_SIZE + 1)

        class Batching(UDPServerProtocol):
            serviceName = "batching"

            def respond(self, data: bytes, addr: Any, received: float) -> Decision:
                return HELD

            def decideBatch(
                self, datagrams: Sequence[bytes], received: float
            ) -> list[Decision]:
                return [
                    long
                    if data == b"long"
                    else (MALFORMED if data == b"bad" else data.upper())
                    for data in datagrams
                ]

        protocol = Batching()
        port = self.startServer(protocol)
        calls = self.recordSends(port)
        self.send(port, [b"one", b"long", b"bad", b"two"])
        port.doRead()
        self.assertEqual(sorted(self.receive(3)), sorted([b"ONE", long, b"TWO"]))
        self.assertNothingMore()
        self.assertEqual(calls, [(0, 2)])
        counters = protocol.counters
        self.assertEqual(
            (counters.received, counters.answered, counters.malformed), (4, 3, 1)
        )

    def test_dualStackSources(self) -> None:
        """
        On a dual-stack socket the sources are IPv4-mapped IPv6 addresses,
        as C{recvfrom} gives them, and the replies reach them.
        """
        seen = []
        protocol = textServer()
        decide = protocol.decide

        def recording(data: bytes, addr: Any, received: float) -> Decision:
            seen.append(addr)
            return decide(data, addr, received)

        protocol.decide = recording  # type: ignore[method-assign]
        port = self.startServer(protocol, interface="::")
        self.send(port, [b"unix"])
        client6 = blockingClient("::1")
        self.addCleanup(client6.close)
        client6.sendto(b"unix", ("::1", port.getHost().port))
        port.doRead()
        self.assertEqual(self.receive(1), [b"%.6f\n" % FAKE_NOW])
        self.assertEqual(self.receive(1, client6), [b"%.6f\n" % FAKE_NOW])
        self.assertEqual(
            seen,
            [
                ("::ffff:127.0.0.1", self.client.getsockname()[1]),
                ("::1", client6.getsockname()[1]),
            ],
        )


class OneReplyPathTests(SynchronousTestCase):
    """
    Every way into the reply path decides, sends and counts alike: the same
    datagrams (valid, malformed, oversized, over the rate, denied, looped;
    from 127.0.0.1 and ::1) through L{ServerPort}, batched and one at a
    time, read all at once and one per wake-up, with and without kernel
    receive timestamps and destination reports, and through the generic
    path (C{datagramReceived} on a recording transport), with a fixed
    clock, get the same replies and the same counters.
    """

    def setUp(self) -> None:
        self.clients = {
            "v4": blockingClient("127.0.0.1"),
            "v6": blockingClient("::1"),
            "denied": blockingClient("127.0.0.3"),
            "looped": blockingClient("127.0.0.1"),
        }
        for sock in self.clients.values():
            self.addCleanup(sock.close)

    def source(self, name: str) -> tuple[str, int]:
        """
        The address a dual-stack server sees client C{name} at.
        """
        host, port = self.clients[name].getsockname()[:2]
        return (host if ":" in host else "::ffff:" + host, port)

    def policy(self, kissOfDeath: bool) -> Policy:
        """
        Three requests per client, and no more for a long while; the
        client at 127.0.0.3 denied, and the C{looped} client's port in the
        loop guard.
        """
        return Policy(
            limiter=SourceLimiter(
                rate=0.001, burst=3, kodInterval=8.0 if kissOfDeath else 0.0
            ),
            access=AccessList([(False, ipaddress.ip_network("127.0.0.3/32"))]),
            loopPorts=[self.source("looped")[1]],
        )

    def textServer(self) -> UDPServerProtocol:
        return TextTimeServer(
            clock=fixedClock, defaultZone=UTC, policy=self.policy(False)
        )

    def ntpServer(self) -> UDPServerProtocol:
        return NTPServer(
            clock=fixedClock,
            policy=self.policy(True),
            clockSource=ClockSource(10, precision=-20),
        )

    TEXT: Sequence[tuple[str, bytes]] = (
        ("v4", b"month 3"),
        ("v6", b"month 6"),
        ("v4", b"month 13"),
        ("denied", b"month 1"),
        ("v6", b"\xff not utf-8"),
        ("v4", b"x" * 600),
        ("looped", b"month 2"),
        ("v6", b"month 7"),
        ("v4", b"month 4"),
        ("v6", b"month 8"),
        ("v4", b"month 5"),
    )
    """Text requests whose replies do not depend on the time, by client."""

    NTP: Sequence[tuple[str, bytes]] = (
        ("v4", NTP_REQUEST),
        ("v6", NTP_REQUEST),
        ("v4", NTP_REQUEST[:47]),
        ("denied", NTP_REQUEST),
        ("v6", bytes([0x27]) + bytes(47)),
        ("looped", NTP_REQUEST),
        ("v4", NTP_REQUEST),
        ("v4", NTP_REQUEST),
        ("v6", NTP_REQUEST),
        ("v6", NTP_REQUEST),
        ("v4", NTP_REQUEST),
    )
    """NTP requests; the rate limit answers one with a Kiss-o'-Death."""

    def generic(
        self, makeServer: Callable[[], UDPServerProtocol], sequence: Sequence[Any]
    ) -> tuple[dict[str, list[bytes]], dict[str, int]]:
        """
        The replies to C{sequence} by client, and the counters, on the
        generic path.
        """
        protocol = makeServer()
        transport = RecordingTransport(port=5000)
        protocol.makeConnection(transport)  # type: ignore[arg-type]
        random.seed(868)
        for name, data in sequence:
            protocol.datagramReceived(data, self.source(name))
        clients = {self.source(name): name for name in self.clients}
        replies: dict[str, list[bytes]] = {name: [] for name in self.clients}
        for data, addr in transport.written:
            replies[clients[addr]].append(data)
        return replies, protocol.counters.snapshot()

    def served(
        self,
        makeServer: Callable[[], UDPServerProtocol],
        sequence: Sequence[Any],
        oneByOne: bool,
        **options: Any,
    ) -> tuple[dict[str, list[bytes]], dict[str, int]]:
        """
        The replies to C{sequence} by client, and the counters, through
        L{ServerPort} on a dual-stack socket with C{options}, read all at
        once or one datagram per wake-up.
        """
        protocol = makeServer()
        port = serve(protocol, True, interface="::", **options)
        self.addCleanup(port.stopListening)
        port.maxDatagramsPerRead = 1000
        target = ("::1", port.getHost().port)
        random.seed(868)
        for name, data in sequence:
            sock = self.clients[name]
            sock.sendto(
                data,
                target if sock.family == socket.AF_INET6 else ("127.0.0.1", target[1]),
            )
            if oneByOne:
                port.doRead()
        port.doRead()
        counters = protocol.counters.snapshot()
        self.assertEqual(counters["received"], len(sequence))
        expected = counters["answered"] + counters["kissed"]
        replies: dict[str, list[bytes]] = {name: [] for name in self.clients}
        got = 0
        while got < expected:
            ready, _, _ = select.select(list(self.clients.values()), [], [], 5.0)
            self.assertTrue(ready, "the replies")
            for sock in ready:
                name = next(n for n, s in self.clients.items() if s is sock)
                replies[name].append(sock.recv(65535))
                got += 1
        return replies, counters

    def check(
        self,
        makeServer: Callable[[], UDPServerProtocol],
        sequence: Sequence[Any],
        kernelTimestamps: Sequence[bool],
    ) -> dict[str, int]:
        """
        Every variant of L{served} gives what L{generic} gives (the replies
        of each client in any order: a Kiss-o'-Death is never queued); the
        counters, which are returned.
        """
        replies, counters = self.generic(makeServer, sequence)
        expected = {name: sorted(each) for name, each in replies.items()}
        for batched in BATCHINGS:
            for timestamps in kernelTimestamps:
                for destinations in (False, True):
                    for oneByOne in (False, True):
                        variant = (batched, timestamps, destinations, oneByOne)
                        got, gotCounters = self.served(
                            makeServer,
                            sequence,
                            oneByOne,
                            batched=batched,
                            kernelTimestamps=timestamps,
                            replyFromDestination=destinations,
                        )
                        self.assertEqual(
                            {name: sorted(each) for name, each in got.items()},
                            expected,
                            variant,
                        )
                        self.assertEqual(gotCounters, counters, variant)
        return counters

    def test_text(self) -> None:
        """
        Text requests: answers, an error line, a dropped datagram, limited,
        denied and looped ones.
        """
        timestamps = [False, True] if kernelTimestampsAvailable() else [False]
        counters = self.check(self.textServer, self.TEXT, timestamps)
        self.assertEqual(
            counters,
            {
                "received": 11,
                "answered": 5,
                "malformed": 2,
                "dropped": 1,
                "limited": 3,
                "denied": 1,
                "looped": 1,
                "kissed": 0,
                "sendFailed": 0,
                "internalErrors": 0,
            },
        )

    def test_ntp(self) -> None:
        """
        NTP requests: answers, a malformed and a dropped one, limited ones
        and a Kiss-o'-Death, denied and looped ones.  (Kernel timestamps
        would put the kernel's receive time in the replies.)
        """
        counters = self.check(self.ntpServer, self.NTP, [False])
        self.assertEqual(
            counters,
            {
                "received": 11,
                "answered": 4,
                "malformed": 1,
                "dropped": 1,
                "limited": 3,
                "denied": 1,
                "looped": 1,
                "kissed": 2,
                "sendFailed": 0,
                "internalErrors": 0,
            },
        )


class FailingSends:
    """
    A socket whose C{sendto} fails with the given errors, one per call,
    before it sends again; everything else is the socket's.
    """

    def __init__(self, sock: socket.socket, errors: Sequence[int]) -> None:
        self._sock = sock
        self.errors = list(errors)
        self.calls = 0

    @classmethod
    def onPort(
        cls, case: SynchronousTestCase, port: Any, errors: Sequence[int]
    ) -> FailingSends:
        """
        Make C{port}'s replies sent at once go through one, for the rest of
        the test C{case}.
        """
        replies = port.replies
        failing = cls(port.socket, errors)
        sendto = replies.sendto
        replies.sendto = failing.sendto
        case.addCleanup(setattr, replies, "sendto", sendto)
        return failing

    def sendto(self, data: bytes, addr: Any) -> int:
        self.calls += 1
        if self.errors:
            raise _osError(self.errors.pop(0))
        return self._sock.sendto(data, addr)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


class AtOnceSendTests(SynchronousTestCase):
    """
    Replies the port sends at once (one datagram per call, or an NTP
    server's, whose replies carry their send time) on every read path: an
    interrupted call is repeated, an ICMP error left from an earlier
    datagram does not lose the reply, and any other failure loses it,
    counted as a failed send rather than an answer.
    """

    def check(self, protocol: UDPServerProtocol, **options: Any) -> None:
        client = blockingClient()
        self.addCleanup(client.close)
        port = serve(protocol, True, **options)
        self.addCleanup(port.stopListening)
        self.assertIs(port.batched, bool(options.get("batched")))
        failing = FailingSends.onPort(self, port, [EINTR, ECONNREFUSED, EPERM])
        request = NTP_REQUEST if isinstance(protocol, NTPServer) else b"unix"
        for _ in range(3):
            client.sendto(request, ("127.0.0.1", port.getHost().port))
        port.doRead()
        # The first reply's call is interrupted, and repeated; that call
        # reports a leftover ICMP error, and is repeated; that one fails:
        # the reply is lost.  The other two go out.
        self.assertEqual(failing.calls, 5)
        counters = protocol.counters
        self.assertEqual((counters.answered, counters.sendFailed), (2, 1))
        expected = protocol.decide(request, ("127.0.0.1", 9), FAKE_NOW)
        assert isinstance(expected, bytes)
        self.assertEqual(
            [len(client.recv(65535)), len(client.recv(65535))], [len(expected)] * 2
        )
        client.setblocking(False)
        self.assertRaises(BlockingIOError, client.recv, 65535)

    def test_oneAtATime(self) -> None:
        """
        Reading one datagram per call.
        """
        self.check(textServer(), batched=False)

    def test_oneAtATimeTimestamped(self) -> None:
        """
        Reading one datagram per call, with its kernel receive timestamp.
        """
        self.check(ntpServer(), batched=False, kernelTimestamps=True)

    def test_batchedNTP(self) -> None:
        """
        Reading batches: an NTP server's replies still go out one by one.
        """
        if not batchingAvailable():
            raise SkipTest("no recvmmsg/sendmmsg on this system")
        self.check(ntpServer(), batched=True, kernelTimestamps=True)


class QueueAllTests(SynchronousTestCase):
    """
    L{mmsg.MessageBatch.queueAll} queues a batch's replies as
    L{mmsg.MessageBatch.queue} does, one after the other.
    """

    def setUp(self) -> None:
        if not batchingAvailable():
            raise SkipTest("no recvmmsg/sendmmsg on this system")

    def test_queued(self) -> None:
        """
        Replies go into the send slots in order; refusals, replies without
        a receive slot, replies too long for a slot and those past the last
        slot are left, by position.
        """
        batch = mmsg.MessageBatch(2, 64, socket.AF_INET, False)
        long = b"L" * (mmsg.SEND_SLOT_SIZE + 1)
        left = batch.queueAll(
            [b"one", MALFORMED, b"none", long, b"two", b"three"],
            [0, 1, None, 1, 1, 0],
        )
        self.assertEqual(left, [1, 2, 3, 5])
        self.assertEqual(batch.queued, 2)
        self.assertEqual(bytes(batch.sendData[:3]), b"one")
        start = mmsg.SEND_SLOT_SIZE
        self.assertEqual(bytes(batch.sendData[start : start + 3]), b"two")
        self.assertEqual(batch.queueAll([b"four"], [0]), [0])

    def test_sameAsQueue(self) -> None:
        """
        The send slots hold what L{mmsg.MessageBatch.queue} puts there for
        the same replies, to the same receive slots.
        """
        replies = [b"a" * 10, b"b" * 20, b"c" * 30]
        indices = [2, 0, 1]
        one = mmsg.MessageBatch(3, 64, socket.AF_INET, False)
        for reply, index in zip(replies, indices, strict=True):
            self.assertTrue(one.queue(reply, index))
        every = mmsg.MessageBatch(3, 64, socket.AF_INET, False)
        self.assertEqual(every.queueAll(replies, indices), [])
        self.assertEqual(every.queued, one.queued)
        self.assertEqual(bytes(every.sendData), bytes(one.sendData))
        self.assertEqual(every._redirected, one._redirected)


class AddressTests(SynchronousTestCase):
    """
    L{mmsg.MessageBatch.convert} turns raw source addresses into the
    tuples C{recvfrom} gives, through a bounded cache.
    """

    def setUp(self) -> None:
        if not batchingAvailable():
            raise SkipTest("no recvmmsg/sendmmsg on this system")

    def test_forms(self) -> None:
        """
        IPv4, IPv6 and IPv4-mapped IPv6 sockaddrs convert as C{recvfrom}
        shows them; anything else raises L{OSError}.
        """
        batch = mmsg.MessageBatch(2, 64, socket.AF_INET6, False)
        v4 = (
            socket.AF_INET.to_bytes(2, sys.byteorder)
            + (4660).to_bytes(2, "big")
            + socket.inet_aton("192.0.2.7")
            + bytes(8)
        )
        self.assertEqual(batch.convert(v4), ("192.0.2.7", 4660))

        def v6(host: str) -> bytes:
            return (
                socket.AF_INET6.to_bytes(2, sys.byteorder)
                + (123).to_bytes(2, "big")
                + bytes(4)
                + socket.inet_pton(socket.AF_INET6, host)
                + bytes(4)
            )

        self.assertEqual(batch.convert(v6("2001:db8::1")), ("2001:db8::1", 123))
        self.assertEqual(
            batch.convert(v6("::ffff:192.0.2.7")), ("::ffff:192.0.2.7", 123)
        )
        self.assertIn(v4, batch.addresses)
        self.assertRaises(OSError, batch.convert, bytes(16))

    def test_bounded(self) -> None:
        """
        The cache holds at most L{mmsg.ADDRESS_CACHE_SIZE} addresses.
        """
        batch = mmsg.MessageBatch(1, 64, socket.AF_INET, False)
        for i in range(mmsg.ADDRESS_CACHE_SIZE + 10):
            raw = (
                socket.AF_INET.to_bytes(2, sys.byteorder)
                + (i & 0xFFFF).to_bytes(2, "big")
                + bytes([10, 0, (i >> 16) & 255, 1])
                + bytes(8)
            )
            batch.convert(raw)
            self.assertLessEqual(len(batch.addresses), mmsg.ADDRESS_CACHE_SIZE)


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

    def test_boundSocket(self) -> None:
        """
        A socket handed down (by a worker's supervisor) is served instead
        of a new one.
        """
        sock = bindUDPSocket("127.0.0.1", 0, reusePort=True)
        service = UDPListenService(reactor, textServer(), 1, "127.0.0.1")
        service.boundSocket = sock
        bound = sock.getsockname()[1]
        service.privilegedStartService()
        self.addCleanup(service.stopService)
        self.assertEqual(service.port.getHost().port, bound)
        self.assertIsNone(service.boundSocket)


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
            lambda: transmit,
            randomBits=random.Random(seed).getrandbits,
        )
        self.assertIn(ntp.prefixKey(data), constants.prefixes)
        again = ntp.plainReply(
            data,
            constants,
            received,
            lambda: transmit,
            randomBits=random.Random(seed).getrandbits,
        )
        self.assertEqual(again, expected)
        self.assertEqual(got, expected)

    def test_eraBoundary(self) -> None:
        """
        Around the start of NTP era 1 (2036), and with a transmit time
        before 1970 after a receive time in era 1, the plain path still
        gives the general path's replies: timestamps wrap modulo 2^64.
        """
        state = ClockSource(10, b"LOCL").state(1_700_000_000.0)
        constants = ntp.ReplyConstants.fromState(state, ntp.MIN_POLL)
        for received, transmit in [
            (ERA_1 - 1e-6, ERA_1 + 1e-6),
            (ERA_1 - 1e-6, ERA_1 - 1e-6),
            (ERA_1, ERA_1),
            (ERA_1 + 1e-6, ERA_1 - 1e-6),
            (ERA_1 + 5.5, -1.0),
            (ERA_1 - 5.5, -1.0),
        ]:
            expected = ntp.buildReply(
                ntp.parseRequest(NTP_REQUESTS[0]),
                state,
                received,
                transmit,
                randomBits=random.Random(7).getrandbits,
            )
            got = ntp.plainReply(
                NTP_REQUESTS[0],
                constants,
                received,
                lambda transmit=transmit: transmit,
                randomBits=random.Random(7).getrandbits,
            )
            self.assertEqual(got, expected, (received, transmit))

    def test_transmitReadLast(self) -> None:
        """
        The transmit time is read once, last: after the receive timestamp
        and the transmit timestamp's own random bits are made.
        """
        events: list[str] = []

        def randomBits(k: int) -> int:
            events.append("bits")
            return 0

        def transmitTime() -> float:
            events.append("transmit")
            return 1_700_000_000.5

        state = ClockSource(10, b"LOCL").state(1_700_000_000.0)
        constants = ntp.ReplyConstants.fromState(state, ntp.MIN_POLL)
        for received in (1_700_000_000.25, -1.0):
            del events[:]
            reply = ntp.plainReply(
                NTP_REQUESTS[0], constants, received, transmitTime, randomBits
            )
            self.assertEqual(events, ["bits", "bits", "transmit"])
            # Zero random bits put the timestamp half a step of the measured
            # precision below the step the clock reading rounds to.
            self.assertEqual(
                int.from_bytes(reply[40:48], "big"),
                ntp.fuzzTimestamp(
                    unixToNTP64(1_700_000_000.5), state.precision, lambda k: 0
                ),
            )

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
