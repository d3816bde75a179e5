"""
Tests that L{udptime.client.query} takes a reply's receive time from the
kernel (C{SIOCGSTAMPNS}) and its request's transmit time too
(C{SO_TIMESTAMPING}, L{udptime.clientport}) where the system gives them, on
real sockets; and of the order in which L{ClientPort} reads the clock and
sends.
"""

from __future__ import annotations

import errno
import socket
import sys
import time
from collections.abc import Callable
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.protocol import DatagramProtocol
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase

from udptime.ancillary import (
    MSG_ERRQUEUE,
    SCM_TIMESTAMPING,
    SO_TIMESTAMPING,
    TIMESPEC,
    lastReceiveTime,
)
from udptime.client import query
from udptime.clientport import REQUEST_TIMESTAMPING, ClientPort, listenForReplies
from udptime.clock import NTP_UNIX_OFFSET, KernelTime, exactNTP64, unixToNTP64
from udptime.ntp import Mode, NTPClientCodec, NTPPacket
from udptime.server import TextTimeServer
from udptime.text import TextClientCodec


class KernelReceiveTimeTests(TestCase):
    """
    The client's receive and transmit times are the kernel's.
    """

    @inlineCallbacks
    def stuckClockQuery(self) -> Any:
        """
        Query a text server on 127.0.0.1 with a wall clock stuck at Unix
        time 1000: the real time before the query, its result, and the
        real time after it.
        """
        if sys.platform != "linux":
            raise self.skipTest("kernel times are read on Linux only")
        port = reactor.listenUDP(0, TextTimeServer(), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        before = time.time()
        result = yield query(
            reactor,  # type: ignore[arg-type]
            "127.0.0.1",
            TextClientCodec("unix"),
            port=port.getHost().port,
            timeout=5.0,
            clock=lambda: 1000.0,
        )
        return before, result, time.time()

    @inlineCallbacks
    def test_kernelReceiveTime(self) -> Any:
        """
        With a wall clock stuck at Unix time 1000, the delay (receive time
        minus send time) shows that the receive time came from the kernel,
        and is the real time of the reply's arrival (the send time is the
        clock's: no kernel transmit times here).
        """
        self.patch(ClientPort, "transmitTimes", False)
        before, result, after = yield self.stuckClockQuery()
        received = 1000.0 + result.delay
        self.assertTrue(before <= received <= after, (before, received, after))

    @inlineCallbacks
    def test_kernelTransmitTime(self) -> Any:
        """
        With a wall clock stuck at Unix time 1000, the delay (receive time
        minus send time) is that of two real times of the exchange: the
        request's send time came from the kernel too.
        """
        before, result, after = yield self.stuckClockQuery()
        self.assertTrue(0 <= result.delay <= after - before, (result.delay,))


class _RecordingSocket:
    """
    A socket that records the calls a L{ClientPort} makes, and whose error
    queue holds the messages the test gives.
    """

    def __init__(self, events: list[object], queued: list[Any]) -> None:
        self.events = events
        self.queued = queued
        self.refuse = False

    def setsockopt(self, level: int, option: int, value: int) -> None:
        if self.refuse:
            raise OSError(errno.ENOPROTOOPT, "Protocol not available")
        self.events.append(("setsockopt", option, value))

    def sendto(self, data: bytes, addr: tuple[str, int]) -> int:
        self.events.append(("sendto", data, addr))
        return len(data)

    def recvmsg(self, size: int, control: int, flags: int) -> Any:
        self.events.append(("recvmsg", flags & MSG_ERRQUEUE))
        if not self.queued:
            raise BlockingIOError(errno.EAGAIN, "Resource temporarily unavailable")
        return self.queued.pop(0)


class ClientPortTests(SynchronousTestCase):
    """
    L{ClientPort.sendTimed} reads the clock last before the send, and takes
    the kernel's transmit time where it is.
    """

    def port(self, queued: list[Any]) -> tuple[ClientPort, list[object]]:
        events: list[object] = []
        port = ClientPort(0, DatagramProtocol(), "127.0.0.1", 65535, Clock())
        port.socket = _RecordingSocket(events, queued)  # type: ignore[assignment]
        return port, events

    def clock(self, events: list[object]) -> Callable[[], float]:
        def reading() -> float:
            events.append("clock")
            return 1000.0

        return reading

    def test_kernelTime(self) -> None:
        """
        The timestamps are reported while the request is sent: the clock is
        read after they are turned on, right before the send; then the
        error queue is read, and they are turned off again.  The kernel's
        time is the send time.
        """
        stamp = TIMESPEC.pack(1234, 500_000_000) + bytes(2 * TIMESPEC.size)
        message = (b"", [(socket.SOL_SOCKET, SCM_TIMESTAMPING, stamp)], 0, None)
        port, events = self.port([message])
        sentAt = port.sendTimed(b"request", ("127.0.0.1", 123), self.clock(events))
        self.assertEqual(sentAt, 1234.5)
        self.assertEqual(
            events,
            [
                ("setsockopt", SO_TIMESTAMPING, REQUEST_TIMESTAMPING),
                "clock",
                ("sendto", b"request", ("127.0.0.1", 123)),
                ("recvmsg", MSG_ERRQUEUE),
                ("recvmsg", MSG_ERRQUEUE),
                ("setsockopt", SO_TIMESTAMPING, 0),
            ],
        )

    def test_noKernelTime(self) -> None:
        """
        With nothing on the error queue, the send time is the clock's
        reading right before the send.
        """
        port, events = self.port([])
        sentAt = port.sendTimed(b"request", ("127.0.0.1", 123), self.clock(events))
        self.assertEqual(sentAt, 1000.0)
        self.assertEqual(
            events[1:3], ["clock", ("sendto", b"request", ("127.0.0.1", 123))]
        )
        self.assertEqual(events[-1], ("setsockopt", SO_TIMESTAMPING, 0))

    def test_refused(self) -> None:
        """
        A system that refuses the timestamps is not asked again: the send
        time is the clock's, read right before the send.
        """
        port, events = self.port([])
        port.socket.refuse = True  # type: ignore[attr-defined]
        clock = self.clock(events)
        for _ in range(2):
            sentAt = port.sendTimed(b"request", ("127.0.0.1", 123), clock)
            self.assertEqual(sentAt, 1000.0)
        self.assertFalse(port.transmitTimes)
        request = ("sendto", b"request", ("127.0.0.1", 123))
        self.assertEqual(events, ["clock", request, "clock", request])


class LateTransmitTimestampTests(TestCase):
    """
    A transmit timestamp left on the error queue (one the kernel reported
    after the send returned) does not end a L{ClientPort}: the reactor's
    report of the error condition reads it, and the reply is still read.
    """

    @inlineCallbacks
    def test_replyAfterErrorQueue(self) -> Any:
        if sys.platform != "linux":
            raise self.skipTest("kernel transmit times are read on Linux only")

        class Echo(DatagramProtocol):
            def datagramReceived(self, datagram: bytes, addr: Any) -> None:
                self.transport.write(datagram, addr)

        class Receiver(DatagramProtocol):
            def __init__(self) -> None:
                self.received: Deferred[bytes] = Deferred()

            def datagramReceived(self, datagram: bytes, addr: Any) -> None:
                self.received.callback(datagram)

        server = reactor.listenUDP(0, Echo(), interface="127.0.0.1")
        self.addCleanup(server.stopListening)
        receiver = Receiver()
        client = listenForReplies(reactor, receiver, "127.0.0.1", 65535)
        self.addCleanup(client.stopListening)
        self.assertIsInstance(client, ClientPort)
        # Timestamps on, and left on the error queue.
        client.socket.setsockopt(
            socket.SOL_SOCKET, SO_TIMESTAMPING, REQUEST_TIMESTAMPING
        )
        client.write(b"ping", ("127.0.0.1", server.getHost().port))
        received = yield receiver.received.addTimeout(10, reactor)
        self.assertEqual(received, b"ping")
        self.assertTrue(client.connected)


class ExactTimesTests(SynchronousTestCase):
    """
    The kernel's times keep their nanoseconds (L{KernelTime}), and the NTP
    client converts them exactly: a float of today's Unix time resolves
    only 0.24 µs.
    """

    SECONDS = 1_796_524_246
    NANOSECONDS = 123_456_789

    def test_kernelTime(self) -> None:
        """
        A L{KernelTime} is the float nearest to its time, and keeps the
        time in whole nanoseconds.
        """
        value = KernelTime(self.SECONDS, self.NANOSECONDS)
        self.assertEqual(value, self.SECONDS + 0.123456789)
        self.assertEqual(value.nanoseconds, self.SECONDS * 10**9 + self.NANOSECONDS)
        self.assertEqual(type(value + 1), float)

    def test_exactNTP64(self) -> None:
        """
        L{exactNTP64} converts a kernel time's nanoseconds, where the
        float's conversion is off by tens of nanoseconds; other times as
        L{unixToNTP64} does.
        """
        value = KernelTime(self.SECONDS, self.NANOSECONDS)
        exact = exactNTP64(value)
        self.assertEqual(exact >> 32, self.SECONDS + NTP_UNIX_OFFSET)
        self.assertEqual(exact & 0xFFFFFFFF, (self.NANOSECONDS << 32) // 10**9)
        self.assertNotEqual(unixToNTP64(float(value)), exact)
        self.assertEqual(exactNTP64(1000.5), unixToNTP64(1000.5))

    def test_exactOffset(self) -> None:
        """
        Against a server whose timestamps are exactly 1 µs after the
        request's kernel transmit time and 1 µs before the reply's kernel
        receive time, the offset is 0 to the NTP timestamp's resolution,
        and the delay the exact round trip less the server's time.
        """
        codec = NTPClientCodec(randomBytes=lambda n: bytes(range(1, 9)))
        _request, cookie = codec.buildRequest(0.0)
        sent = KernelTime(self.SECONDS, self.NANOSECONDS)
        received = KernelTime(self.SECONDS, self.NANOSECONDS + 17_777)
        server = NTPPacket(
            leap=0,
            version=4,
            mode=Mode.SERVER,
            stratum=1,
            refid=b"LOCL",
            originTimestamp=cookie,
            receiveTimestamp=exactNTP64(
                KernelTime(self.SECONDS, self.NANOSECONDS + 1000)
            ),
            transmitTimestamp=exactNTP64(
                KernelTime(self.SECONDS, self.NANOSECONDS + 16_777)
            ),
        )
        reading = codec.parseReply(server.toBytes(), cookie, sent, received)
        assert reading.offset is not None and reading.delay is not None
        self.assertLess(abs(reading.offset), 1e-9)
        self.assertLess(abs(reading.delay - 2e-6), 1e-9)

    def test_lastReceiveTime(self) -> None:
        """
        L{lastReceiveTime} gives the kernel's time with its nanoseconds.
        """
        if sys.platform != "linux":
            raise self.skipTest("kernel receive times are read on Linux only")
        with (
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as receiver,
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender,
        ):
            receiver.bind(("127.0.0.1", 0))
            lastReceiveTime(receiver.fileno())  # turns the timestamps on
            before = time.time_ns()
            sender.sendto(b"x", receiver.getsockname())
            receiver.settimeout(10)
            receiver.recv(16)
            after = time.time_ns()
            value = lastReceiveTime(receiver.fileno())
        assert value is not None
        self.assertIsInstance(value, KernelTime)
        self.assertTrue(before <= value.nanoseconds <= after)
