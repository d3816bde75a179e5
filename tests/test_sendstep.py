"""
Tests for the compiled send step of NTP replies (L{udptime.sendstep}, the C
extension C{udptime._sendstep}): its stamp is byte for byte the Python
step's (L{udptime.ntp.LateTransmit.stamp}) for the same clock reading, it
sends what the Python step would send on real sockets, with and without
control messages, udptime's port uses it where it may and falls back to
the Python step where it may not or where it is not built, and
C{--no-compiled-send} turns it off.
"""

from __future__ import annotations

import dataclasses
import errno
import os
import random
import select
import socket
import struct
import sys
import time
from typing import Any

from hypothesis import example, given, settings
from hypothesis import strategies as st
from twisted.internet.testing import MemoryReactor
from twisted.logger import LogEvent, formatEvent, globalLogPublisher
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

from tests.support import TwistdServer, freePort, udpQuery
from tests.test_ntp import header
from tests.test_port import serve, serveWithClient
from udptime import counters, ntp, sendstep
from udptime.ancillary import (
    MSG_ERRQUEUE,
    SCM_TIMESTAMPING,
    TRANSMIT_TIMESTAMP_REQUEST,
    enableTransmitTimestamps,
)
from udptime.clock import ClockSource, ntp64ToUnix, systemClock
from udptime.replies import ReplyPath
from udptime.server import NTPServer, TextTimeServer
from udptime.service import UDPListenService
from udptime.tap import Options, makeService

try:
    from udptime import _sendstep
except ImportError:
    _sendstep = None  # type: ignore[assignment]

# 2036-02-07T06:28:16Z, where NTP era 1 begins, in Unix seconds.
ERA_1 = 2_085_978_496.0

NOT_BUILT = "udptime._sendstep is not built here"


def constantsFor(precision: int, now: float) -> ntp.ReplyConstants:
    """
    Reply constants of a synchronised stratum-2 clock of C{precision}.
    """
    state = dataclasses.replace(ClockSource(2).state(now), precision=precision)
    return ntp.ReplyConstants.fromState(state)


def filled(
    clock: Any,
    constants: ntp.ReplyConstants,
    received: float,
    seed: int,
    request: bytes | None = None,
    control: Any = None,
) -> ntp.LateTransmit:
    """
    A L{ntp.LateTransmit} filled in for C{request} (a random plain request
    by default), received at C{received}, with random bits from C{seed}.
    """
    rng = random.Random(seed)
    if request is None:
        request = header(
            version=rng.randint(1, 4),
            poll=rng.randint(-10, 20),
            transmit=rng.randbytes(8),
        )
    late = ntp.LateTransmit(clock, control)
    return late.plain(request, constants, received, rng.getrandbits)


def parts(late: ntp.LateTransmit) -> tuple[Any, ...]:
    """
    What the compiled step is given of C{late}.
    """
    constants = late.constants
    assert constants is not None
    return (
        late.start,
        late.origin,
        late.receive,
        late.fuzz,
        constants.fuzzBits,
        constants.halfStepsPerSecond,
        constants.offsetUnits,
    )


class StampTests(SynchronousTestCase):
    """
    C{_sendstep.stamp}, the compiled step's arithmetic given the transmit
    time, against L{ntp.LateTransmit.stamp}.
    """

    def setUp(self) -> None:
        if _sendstep is None:
            raise self.skipTest(NOT_BUILT)

    def compare(
        self, precision: int, received: float, transmit: float, seed: int
    ) -> bytes:
        constants = constantsFor(precision, max(received, 0.0))
        late = filled(lambda: transmit, constants, received, seed)
        self.assertIsNotNone(late.constants)
        expected = late.stamp()
        self.assertEqual(_sendstep.stamp(*parts(late), transmit), expected)
        return expected

    @settings(max_examples=500)
    @given(
        st.integers(-31, -1),
        st.one_of(
            st.floats(0.0, 2.0**33),
            st.floats(ERA_1 - 10.0, ERA_1 + 10.0),
            st.floats(1.7e9, 1.9e9),
        ),
        st.one_of(
            st.floats(-1e-3, 1e-3),
            st.floats(-2.0, 2.0),
            st.floats(-1e10, 1e10),
        ),
        st.integers(0, 2**32),
    )
    @example(-22, ERA_1 - 1e-6, 2e-6, 1)
    @example(-22, ERA_1 - 1e-7, 0.0, 2)
    @example(-22, 1.8e9, -1e-7, 3)
    @example(-1, 1.8e9, 0.0, 4)
    @example(-31, ERA_1 + 5.0, 1e-9, 5)
    @example(-22, 0.0, -1.0, 6)
    def test_sameAsPython(
        self, precision: int, received: float, delta: float, seed: int
    ) -> None:
        """
        For any reply parts (random requests, clock precisions, random
        bits), receive times (era 0 and era 1, across the era boundary) and
        transmit times (after the receive time, or before it, when the
        transmit timestamp is clamped to the receive timestamp; before 1970
        too), the compiled stamp gives the bytes the Python one does.
        """
        self.compare(precision, received, received + delta, seed)

    def test_clamped(self) -> None:
        """
        A transmit time before the receive time gives a transmit timestamp
        equal to the receive timestamp.
        """
        reply = self.compare(-22, 1.8e9, 1.8e9 - 1.0, 7)
        self.assertEqual(reply[40:48], reply[32:40])

    def test_era1(self) -> None:
        """
        Across the start of NTP era 1 both timestamps are wrapped: a reply
        received just before it and sent just after it carries a receive
        timestamp near 2^64 and a transmit timestamp near 0.
        """
        reply = self.compare(-22, ERA_1 - 1e-3, ERA_1 + 1e-3, 8)
        self.assertGreater(int.from_bytes(reply[32:40], "big"), 0xFFFF_FF00 << 32)
        self.assertLess(int.from_bytes(reply[40:48], "big"), 1 << 32)

    @given(st.integers(-(2**127), 2**127 - 1))
    @example(2**64 + 5)
    @example(2**63)
    @example(-(2**63) - 1)
    def test_wide(self, value: int) -> None:
        """
        The step's integers hold 128 bits: receive timestamps of era 1
        (above 2^64) reach it whole.
        """
        self.assertEqual(_sendstep.wide(value), value)

    @given(st.integers(0, 2**33), st.integers(0, 999_999_999))
    @example(1_800_000_000, 0)
    @example(1_800_000_000, 999_999_999)
    def test_seconds(self, seconds: int, nanoseconds: int) -> None:
        """
        A clock reading converts to the float C{time.time()} gives for it:
        the whole seconds exactly, else the nanoseconds over 10^9.
        """
        total = seconds * 1_000_000_000 + nanoseconds
        expected = float(seconds) if nanoseconds == 0 else total / 1e9
        self.assertEqual(_sendstep.seconds(seconds, nanoseconds), expected)

    def test_badParts(self) -> None:
        """
        Parts of the wrong size or type are refused, never sent.
        """
        late = filled(systemClock, constantsFor(-22, 1.8e9), 1.8e9, 9)
        good = parts(late)
        self.assertRaises(ValueError, _sendstep.stamp, b"x" * 23, *good[1:], 1.8e9)
        self.assertRaises(ValueError, _sendstep.stamp, good[0], b"x", *good[2:], 1.8e9)
        self.assertRaises(TypeError, _sendstep.stamp, *good[:2], 1.5, *good[3:], 1.8e9)
        self.assertRaises(ValueError, _sendstep.stamp, *good[:4], 33, *good[5:], 1.8e9)
        self.assertRaises(TypeError, _sendstep.stamp, *good)


class LoopbackTests(SynchronousTestCase):
    """
    The compiled step on real loopback sockets.
    """

    def setUp(self) -> None:
        if _sendstep is None:
            raise self.skipTest(NOT_BUILT)

    def sockets(
        self, family: int = socket.AF_INET, server: str = "127.0.0.1"
    ) -> tuple[socket.socket, socket.socket]:
        client = socket.socket(family, socket.SOCK_DGRAM)
        self.addCleanup(client.close)
        client.bind((server if family == socket.AF_INET else "::1", 0))
        client.settimeout(5)
        sock = socket.socket(family, socket.SOCK_DGRAM)
        self.addCleanup(sock.close)
        sock.bind((server, 0))
        return sock, client

    def sendAndCheck(
        self,
        sock: socket.socket,
        client: socket.socket,
        address: tuple[Any, ...],
        ancillary: Any = None,
    ) -> tuple[bytes, Any]:
        """
        Send a reply with the compiled step to C{address}; check it is the
        Python step's reply but for its transmit timestamp, which lies
        between the Python step's for clock readings taken before and
        after the send.
        """
        now = time.time()
        late = filled(systemClock, constantsFor(-22, now), now, 10)
        step = sendstep.compiledStep(sock)
        assert step is not None
        before = time.time()
        sent = step(*parts(late), address, ancillary)
        after = time.time()
        self.assertEqual(sent, ntp.HEADER_SIZE)
        reply, source = client.recvfrom(100)
        late.clock = lambda: before
        early = late.stamp()
        late.clock = lambda: after
        last = late.stamp()
        self.assertEqual(reply[:40], early[:40])
        self.assertLessEqual(early[40:48], reply[40:48])
        self.assertLessEqual(reply[40:48], last[40:48])
        return reply, source

    def test_sendto(self) -> None:
        """
        Without control messages the reply goes with C{sendto}, to the
        address given, from the socket.
        """
        sock, client = self.sockets()
        _, source = self.sendAndCheck(sock, client, client.getsockname())
        self.assertEqual(source, sock.getsockname())

    def test_ipv6(self) -> None:
        """
        An IPv6 socket sends to an IPv6 address tuple, of two or four items.
        """
        try:
            sock, client = self.sockets(socket.AF_INET6, "::1")
        except OSError as failure:
            raise self.skipTest(f"no IPv6 loopback: {failure}") from None
        host, port = client.getsockname()[:2]
        self.sendAndCheck(sock, client, (host, port))
        self.sendAndCheck(sock, client, (host, port, 0, 0))

    def test_fromDestination(self) -> None:
        """
        With an C{IP_PKTINFO} message (the report of the address a request
        reached, sent back with its reply) the reply goes with C{sendmsg},
        and leaves from the address it names.
        """
        if sys.platform != "linux":
            raise self.skipTest("IP_PKTINFO is Linux's")
        sock, client = self.sockets(server="0.0.0.0")
        pktinfo = struct.pack(
            "@i4s4s", 0, socket.inet_aton("127.0.0.2"), socket.inet_aton("0.0.0.0")
        )
        ancillary = ((socket.IPPROTO_IP, getattr(socket, "IP_PKTINFO", 8), pktinfo),)
        _, source = self.sendAndCheck(
            sock, client, ("127.0.0.1", client.getsockname()[1]), ancillary
        )
        self.assertEqual(source, ("127.0.0.2", sock.getsockname()[1]))

    def test_transmitTimestampRequest(self) -> None:
        """
        With the request for a kernel transmit timestamp (interleaved mode)
        the kernel reports the reply's transmit time on the error queue,
        with the reply, between the clock readings around the send.
        """
        sock, client = self.sockets()
        try:
            enableTransmitTimestamps(sock)
        except OSError as failure:
            raise self.skipTest(f"no kernel transmit timestamps: {failure}") from None
        reply, _ = self.sendAndCheck(
            sock, client, client.getsockname(), TRANSMIT_TIMESTAMP_REQUEST
        )
        # The error queue's report sets POLLERR, which poll always watches.
        waiting = select.poll()
        waiting.register(sock, 0)
        self.assertTrue(waiting.poll(5000), "no report on the error queue")
        data, ancillary, _, _ = sock.recvmsg(2048, 512, MSG_ERRQUEUE)
        self.assertTrue(data.endswith(reply), data)
        stamps = [payload for _, kind, payload in ancillary if kind == SCM_TIMESTAMPING]
        self.assertEqual(len(stamps), 1)
        seconds, nanoseconds = struct.unpack_from("@ll", stamps[0])
        kernel = seconds + nanoseconds * 1e-9
        stamped = ntp64ToUnix(int.from_bytes(reply[40:48], "big"), time.time())
        # Stamped before the kernel sent it (within the clock's precision).
        self.assertLessEqual(stamped, kernel + 2.0**-20)

    def test_failedSend(self) -> None:
        """
        A send the kernel refuses gives its C{errno}, negated.
        """
        sock, _ = self.sockets()
        now = time.time()
        late = filled(systemClock, constantsFor(-22, now), now, 11)
        step = sendstep.compiledStep(sock)
        assert step is not None
        # Port 0 is no destination: EINVAL.
        sent = step(*parts(late), ("127.0.0.1", 0), None)
        self.assertEqual(sent, -errno.EINVAL)

    def test_badAddress(self) -> None:
        """
        An address that is not numeric, or not of the socket's family, gets
        L{None}, nothing sent (the Python step sends to it); the address
        sent to before is sent to right after.  What is no address at all
        is refused with an exception.
        """
        sock, client = self.sockets()
        now = time.time()
        late = filled(systemClock, constantsFor(-22, now), now, 12)
        step = sendstep.compiledStep(sock)
        assert step is not None
        address = client.getsockname()
        self.assertEqual(step(*parts(late), address, None), ntp.HEADER_SIZE)
        self.assertIsNone(step(*parts(late), ("127.0.0.x", 123), None))
        self.assertEqual(step(*parts(late), address, None), ntp.HEADER_SIZE)
        self.assertEqual(len(client.recv(100)), ntp.HEADER_SIZE)
        self.assertEqual(len(client.recv(100)), ntp.HEADER_SIZE)
        self.assertIsNone(step(*parts(late), ("localhost", 123), None))
        self.assertIsNone(step(*parts(late), ("::1", 123), None))
        self.assertRaises(TypeError, step, *parts(late), "127.0.0.1", None)
        self.assertRaises(OverflowError, step, *parts(late), ("127.0.0.1", 70000), None)


def request() -> bytes:
    return header(transmit=os.urandom(8))


class PortTests(SynchronousTestCase):
    """
    udptime's port and the compiled step: used where it may, and the
    Python step elsewhere.
    """

    def serve(self, server: NTPServer) -> tuple[Any, socket.socket]:
        return serveWithClient(self, server)

    def logged(self) -> list[str]:
        lines: list[str] = []

        def observer(event: LogEvent) -> None:
            text = formatEvent(event)
            if "transmit timestamps" in text:
                lines.append(text)

        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)
        return lines

    def exchange(self, port: Any, client: socket.socket) -> tuple[bytes, float, float]:
        sent = request()
        before = time.time()
        client.send(sent)
        port.doRead()
        reply = client.recv(100)
        after = time.time()
        self.assertEqual(reply[24:32], sent[40:48])
        return reply, before, after

    def test_used(self) -> None:
        """
        Where the module is built, the port of an NTP server sends its
        replies with the compiled step, says so once in the log, and the
        reply carries a transmit time read between the request and the
        reply's arrival.
        """
        if _sendstep is None:
            raise self.skipTest(NOT_BUILT)
        lines = self.logged()
        server = NTPServer(clockSource=ClockSource(10))
        port, client = self.serve(server)
        self.assertIsNotNone(port.replies.sendStep)
        self.assertEqual(len(lines), 1)
        self.assertIn("compiled send step", lines[0])
        calls: list[object] = []
        step = port.replies.sendStep

        def counted(*arguments: object) -> int:
            calls.append(arguments[-2])
            result: int = step(*arguments)
            return result

        port.replies.sendStep = counted
        reply, before, after = self.exchange(port, client)
        self.assertEqual(len(calls), 1)
        transmit = ntp64ToUnix(int.from_bytes(reply[40:48], "big"), time.time())
        step_ = 2.0**server._replyConstants.state.precision  # type: ignore[union-attr]
        self.assertLessEqual(before - step_, transmit)
        self.assertLessEqual(transmit, after + step_)
        self.assertEqual(server.counters.counts[counters.ANSWERED], 1)

    def test_injectedClock(self) -> None:
        """
        A server reading another clock than the system's stamps its replies
        in Python, from that clock, though the port has the compiled step.
        """
        if _sendstep is None:
            raise self.skipTest(NOT_BUILT)
        later = time.time() + 86400 * 3

        server = NTPServer(clockSource=ClockSource(10), clock=lambda: later)
        port, client = self.serve(server)
        self.assertIsNotNone(port.replies.sendStep)
        reply, _, _ = self.exchange(port, client)
        transmit = ntp64ToUnix(int.from_bytes(reply[40:48], "big"), time.time())
        self.assertAlmostEqual(transmit, later, delta=1e-3)

    def test_turnedOff(self) -> None:
        """
        C{compiledSend=False} (C{--no-compiled-send}): the port has no
        compiled step, logs that replies are sent in Python, and answers.
        """
        lines = self.logged()
        server = NTPServer(clockSource=ClockSource(10), compiledSend=False)
        port, client = self.serve(server)
        self.assertIsNone(port.replies.sendStep)
        self.assertEqual(len(lines), 1)
        self.assertIn("sent in Python (the compiled one is turned off)", lines[0])
        self.exchange(port, client)

    def test_notBuilt(self) -> None:
        """
        Where the module is not built (its import fails), there is no
        compiled step: the port logs why and sends in Python.
        """
        saved = sys.modules.get("udptime._sendstep")
        sys.modules["udptime._sendstep"] = None  # type: ignore[assignment]
        if saved is None:
            self.addCleanup(sys.modules.pop, "udptime._sendstep", None)
        else:
            self.addCleanup(sys.modules.__setitem__, "udptime._sendstep", saved)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            self.assertIsNone(sendstep.compiledStep(sock))
        self.assertIsNone(sendstep.compiledStamp())
        self.assertIn("udptime._sendstep is not built", sendstep.unavailable() or "")
        lines = self.logged()
        server = NTPServer(clockSource=ClockSource(10))
        port, client = self.serve(server)
        self.assertIsNone(port.replies.sendStep)
        self.assertEqual(len(lines), 1)
        self.assertIn("sent in Python (udptime._sendstep is not built", lines[0])
        self.exchange(port, client)

    def test_otherProtocols(self) -> None:
        """
        A reply path is made without a compiled step unless given one; the
        port of a protocol whose replies do not carry their send time gives
        it none.
        """
        self.assertIsNone(ReplyPath(NTPServer(), lambda data, addr: None).sendStep)
        port = serve(TextTimeServer(), True)
        self.addCleanup(port.stopListening)
        self.assertIsNone(port.replies.sendStep)

    def test_genericPort(self) -> None:
        """
        On a reactor that is not posix the NTP service is served by
        Twisted's generic port, which sends in Python, as its log says.
        """
        lines = self.logged()
        memory = MemoryReactor()
        service = UDPListenService(memory, NTPServer(), 0, "127.0.0.1", "ntp")
        service.privilegedStartService()
        self.assertEqual(len(memory.adoptedPorts), 1)
        self.assertEqual(len(lines), 1)
        self.assertIn("sent in Python (Twisted's generic UDP port)", lines[0])

    def test_unconvertedAddress(self) -> None:
        """
        A reply to an address the compiled step does not convert (here, a
        host name) is sent by the Python step, and counted once.
        """
        if _sendstep is None:
            raise self.skipTest(NOT_BUILT)
        server = NTPServer(clockSource=ClockSource(10))
        port, client = self.serve(server)
        results: list[object] = []
        step = port.replies.sendStep

        def recorded(*arguments: object) -> object:
            result = step(*arguments)
            results.append(result)
            return result

        port.replies.sendStep = recorded
        sent = request()
        now = time.time()
        answered = port.replies.handle(
            sent, ("localhost", client.getsockname()[1]), now
        )
        self.assertEqual((answered, results), (1, [None]))
        reply = client.recv(100)
        self.assertEqual(reply[24:32], sent[40:48])

    def test_failedSendCounted(self) -> None:
        """
        A reply the compiled step could not send is tried again in Python
        as a failed Python send is (an interrupted call), and counted as
        answered once it went.
        """
        if _sendstep is None:
            raise self.skipTest(NOT_BUILT)
        server = NTPServer(clockSource=ClockSource(10))
        port, client = self.serve(server)
        step = port.replies.sendStep
        failures = [errno.EINTR]

        def failing(*arguments: object) -> int:
            if failures:
                return -failures.pop()
            result: int = step(*arguments)
            return result

        port.replies.sendStep = failing
        self.exchange(port, client)
        self.assertEqual(failures, [])
        counts = server.counters.counts
        self.assertEqual(counts[counters.ANSWERED], 1)
        self.assertEqual(counts[counters.SEND_FAILED], 0)

    def test_failedSendLost(self) -> None:
        """
        A reply the compiled step could not send for good (a full buffer)
        is counted as a failed send.
        """
        if _sendstep is None:
            raise self.skipTest(NOT_BUILT)
        server = NTPServer(clockSource=ClockSource(10))
        port, client = self.serve(server)
        port.replies.sendStep = lambda *arguments: -errno.EAGAIN
        client.send(request())
        port.doRead()
        self.assertEqual(server.counters.counts[counters.SEND_FAILED], 1)
        self.assertEqual(server.counters.counts[counters.ANSWERED], 0)


class OptionTests(SynchronousTestCase):
    """
    C{--no-compiled-send}.
    """

    def parse(self, *arguments: str) -> Options:
        options = Options()
        options.parseOptions(list(arguments))
        return options

    def ntpProtocol(self, *arguments: str) -> NTPServer:
        top = makeService(self.parse("--ntp-port", "1123", *arguments))
        protocol = top.getServiceNamed("ntp").protocol
        assert isinstance(protocol, NTPServer)
        return protocol

    def test_default(self) -> None:
        """
        By default the NTP server may use the compiled step.
        """
        self.assertTrue(self.ntpProtocol().compiledSend)

    def test_off(self) -> None:
        """
        C{--no-compiled-send} turns it off, and is listed by C{--help}.
        """
        self.assertFalse(self.ntpProtocol("--no-compiled-send").compiledSend)
        self.assertIn("--no-compiled-send", Options().getUsage())

    def test_withoutNTP(self) -> None:
        """
        Without the NTP service, C{--no-compiled-send} is a usage error.
        """
        error = self.assertRaises(usage.UsageError, self.parse, "--no-compiled-send")
        self.assertIn("--no-compiled-send is for NTP", str(error))


class TwistdTests(SynchronousTestCase):
    """
    C{twistd udptime}: the NTP service's log says which send step it uses,
    and C{--no-compiled-send} is honoured.
    """

    def serve(self, *arguments: str) -> str:
        """
        Start C{twistd udptime} with an NTP port and C{arguments}, ask it
        once, stop it, and return its log.
        """
        port = freePort()
        server = TwistdServer(
            [
                *("--port", "0", "--ntp-port", str(port), "-i", "127.0.0.1"),
                *("--local-stratum", "10", *arguments),
            ]
        )
        self.addCleanup(server.cleanup)
        server.start()
        sent = request()
        reply = udpQuery(sent, "127.0.0.1", port, timeout=10.0)
        self.assertEqual(reply[24:32], sent[40:48])
        self.assertEqual(server.stop(), 0)
        with open(server.logPath) as f:
            return f.read()

    def test_default(self) -> None:
        """
        By default, where the module is built, the log says the NTP
        service's replies are sent by the compiled send step.
        """
        if _sendstep is None:
            raise self.skipTest(NOT_BUILT)
        log = self.serve()
        self.assertEqual(log.count("transmit timestamps read and replies sent"), 1)
        self.assertIn(
            "ntp: transmit timestamps read and replies sent by the compiled", log
        )

    def test_noCompiledSend(self) -> None:
        """
        With C{--no-compiled-send} the log says they are sent in Python.
        """
        log = self.serve("--no-compiled-send")
        self.assertEqual(log.count("transmit timestamps read and replies sent"), 1)
        self.assertIn(
            "ntp: transmit timestamps read and replies sent in Python (the "
            "compiled one is turned off)",
            log,
        )
