"""
Tests for the order in which an NTP reply is finished: the reply is built
first, the transmit time is read last, written into the reply's transmit
timestamp and the reply is sent at once, on every way a port sends
(L{udptime.ntp.LateTransmit}, L{udptime.replies.ReplyPath}).
"""

from __future__ import annotations

import errno
import os
import time
from collections.abc import Sequence
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from tests.test_ntp import extensionField, header
from tests.test_port import DAY, FAKE_NOW, NTP_REQUEST, blockingClient, serve
from udptime import ntp
from udptime.ancillary import kernelTimestampsAvailable
from udptime.clock import ClockSource, ntp64ToUnix
from udptime.interleave import TransmitTimes
from udptime.port import batchingAvailable
from udptime.replies import ReplyPath
from udptime.server import NTPServer

SYMMETRIC_REQUEST = header(mode=1)
EXTENDED_REQUEST = header() + extensionField(28)


class Events:
    """
    What happened on a reply path, in order: a decision made (C{"decided"}),
    a clock reading (C{("clock", time)}), a reply sent (C{("send", bytes)}).

    @ivar readings: the clock readings so far.
    """

    def __init__(self) -> None:
        self.events: list[Any] = []
        self.readings = 0
        # A day ahead of the kernel's receive timestamps, so that no
        # transmit time is before a receive time.
        self.start = time.time() + DAY

    def clock(self) -> float:
        """
        A clock that moves 1 ms for each reading, recorded.
        """
        self.readings += 1
        now = self.start + self.readings * 1e-3
        self.events.append(("clock", now))
        return now

    def wrap(self, case: SynchronousTestCase, replies: Any) -> None:
        """
        Record the decisions and sends of the reply path C{replies}.
        """
        decide, sendto, sendmsg = replies.decide, replies.sendto, replies.sendmsg

        def recordDecide(data: bytes, addr: Any, received: float) -> Any:
            decision = decide(data, addr, received)
            self.events.append("decided")
            return decision

        def recordSendto(data: bytes, addr: Any) -> Any:
            self.events.append(("send", bytes(data)))
            return sendto(data, addr)

        def recordSendmsg(
            buffers: Sequence[bytes], ancillary: Any, flags: int, addr: Any
        ) -> Any:
            self.events.append(("send", b"".join(buffers)))
            assert sendmsg is not None
            return sendmsg(buffers, ancillary, flags, addr)

        replies.decide, replies.sendto = recordDecide, recordSendto
        if sendmsg is not None:
            replies.sendmsg = recordSendmsg
        case.addCleanup(
            lambda: [
                setattr(replies, "decide", decide),
                setattr(replies, "sendto", sendto),
                setattr(replies, "sendmsg", sendmsg),
            ]
        )

    def assertStampedLast(self, case: SynchronousTestCase, sends: int) -> None:
        """
        Each of the C{sends} replies sent follows its decision and one clock
        reading, in that order and with nothing between them, and carries
        that reading as its transmit timestamp.
        """
        events = self.events
        positions = [i for i, event in enumerate(events) if event[0] == "send"]
        case.assertEqual(len(positions), sends, events)
        for position in positions:
            case.assertGreaterEqual(position, 2, events)
            case.assertEqual(events[position - 2], "decided", events)
            kind, reading = events[position - 1]
            case.assertEqual(kind, "clock", events)
            reply = events[position][1]
            transmit = ntp64ToUnix(
                int.from_bytes(reply[ntp.TRANSMIT_AT : ntp.TRANSMIT_AT + 8], "big"),
                self.start,
            )
            # Fuzzed below the server's precision (2**-20 s).
            case.assertLessEqual(abs(transmit - reading), 2e-6, (transmit, reading))


class LateTransmitTests(SynchronousTestCase):
    """
    On every path a port sends an NTP reply by, its transmit time is read
    after the reply is decided and built, and the reply is sent right after.
    """

    requests = (NTP_REQUEST, SYMMETRIC_REQUEST, EXTENDED_REQUEST)

    def check(self, fast: bool, **options: Any) -> None:
        events = Events()
        protocol = NTPServer(
            clock=events.clock, clockSource=ClockSource(10, precision=-20)
        )
        port = serve(protocol, fast, **options)
        self.addCleanup(port.stopListening)
        replies = port.replies if fast else protocol.replies
        events.wrap(self, replies)
        client = blockingClient()
        self.addCleanup(client.close)
        for request in self.requests:
            client.sendto(request, ("127.0.0.1", port.getHost().port))
            port.doRead()
        events.assertStampedLast(self, len(self.requests))
        self.assertEqual(protocol.counters.answered, len(self.requests))
        for _ in self.requests:
            self.assertEqual(len(client.recv(65535)), ntp.HEADER_SIZE)

    def test_oneAtATime(self) -> None:
        """
        Read with C{recvfrom}, sent with C{sendto}.
        """
        self.check(True, batched=False, replyFromDestination=False)

    def test_kernelTimestamps(self) -> None:
        """
        Read with C{recvmsg} for kernel receive timestamps.
        """
        if not kernelTimestampsAvailable():
            raise self.skipTest("no kernel timestamps here")
        self.check(
            True, batched=False, kernelTimestamps=True, replyFromDestination=False
        )

    def test_fromDestination(self) -> None:
        """
        Sent with C{sendmsg} and the report of the address asked.
        """
        self.check(True, batched=False, replyFromDestination=True)

    def test_batched(self) -> None:
        """
        Read with C{recvmmsg}, each reply sent at once.
        """
        if not batchingAvailable():
            raise self.skipTest("no batched system calls here")
        self.check(True, batched=True, kernelTimestamps=kernelTimestampsAvailable())

    def test_batchedFromDestination(self) -> None:
        """
        Read with C{recvmmsg}, each reply sent at once with C{sendmsg} and
        the report of the address asked.
        """
        if not batchingAvailable():
            raise self.skipTest("no batched system calls here")
        self.check(True, batched=True, replyFromDestination=True)

    def test_genericPort(self) -> None:
        """
        Twisted's own port, sending with C{transport.write}.
        """
        self.check(False)

    def test_decideStampsAtOnce(self) -> None:
        """
        L{NTPServer.decide} returns a finished reply, whose transmit time is
        the clock's last reading; L{NTPServer.decideLate} leaves the reading
        to whoever sends it.
        """
        events = Events()
        protocol = NTPServer(
            clock=events.clock, clockSource=ClockSource(10, precision=-20)
        )
        reply = protocol.decide(NTP_REQUEST, ("127.0.0.1", 9), FAKE_NOW)
        assert isinstance(reply, bytes)
        self.assertEqual(events.readings, 1)
        late = protocol.decideLate(NTP_REQUEST, ("127.0.0.1", 9), FAKE_NOW)
        self.assertIsInstance(late, ntp.LateTransmit)
        self.assertEqual(events.readings, 1)
        self.assertEqual(len(late), ntp.HEADER_SIZE)


class TimestampingTests(SynchronousTestCase):
    """
    A reply sent with a request for its kernel transmit time: the reply
    path's C{timestamping} hook runs before the transmit time is read, so
    that whatever it does stays out of the time between the reading and the
    send; a basic reply does not run it.
    """

    def path(self) -> tuple[Events, ReplyPath]:
        events = Events()
        protocol = NTPServer(
            clock=events.clock, clockSource=ClockSource(10, precision=-20)
        )
        protocol.interleave = TransmitTimes()

        def sendto(data: bytes, addr: Any) -> None:
            events.events.append(("send", bytes(data)))

        def sendmsg(
            buffers: Sequence[bytes], ancillary: Any, flags: int, addr: Any
        ) -> None:
            events.events.append(("send", b"".join(buffers)))

        replies = ReplyPath(protocol, sendto, sendmsg)
        replies.timestamping = lambda: events.events.append("timestamping")
        return events, replies

    def test_beforeTheReading(self) -> None:
        """
        A request in interleaved form: the hook, the clock, the send.
        """
        events, replies = self.path()
        request = bytes([0x23]) + bytes(23) + os.urandom(24)
        self.assertEqual(replies.handle(request, ("127.0.0.1", 9), FAKE_NOW), 1)
        self.assertEqual(
            [e if isinstance(e, str) else e[0] for e in events.events],
            ["timestamping", "clock", "send"],
        )

    def test_basicReply(self) -> None:
        """
        A basic request: no hook, the clock, the send.
        """
        events, replies = self.path()
        self.assertEqual(replies.handle(NTP_REQUEST, ("127.0.0.1", 9), FAKE_NOW), 1)
        self.assertEqual(
            [e if isinstance(e, str) else e[0] for e in events.events],
            ["clock", "send"],
        )


class RetryTests(SynchronousTestCase):
    """
    A reply whose send is interrupted is stamped again for the new try: its
    transmit time is the clock's reading just before that send.
    """

    def test_stampedAgain(self) -> None:
        events = Events()
        protocol = NTPServer(
            clock=events.clock, clockSource=ClockSource(10, precision=-20)
        )
        sent: list[bytes] = []

        def sendto(data: bytes, addr: Any) -> None:
            events.events.append(("send", bytes(data)))
            if len(sent) == 0:
                sent.append(b"")
                raise InterruptedError(errno.EINTR, "interrupted")
            sent.append(bytes(data))

        replies = ReplyPath(protocol, sendto)
        self.assertEqual(replies.handle(NTP_REQUEST, ("127.0.0.1", 9), FAKE_NOW), 1)
        kinds = [event[0] for event in events.events]
        self.assertEqual(kinds, ["clock", "send", "clock", "send"])
        second = events.events[2][1]
        transmit = ntp64ToUnix(
            int.from_bytes(sent[1][ntp.TRANSMIT_AT : ntp.TRANSMIT_AT + 8], "big"),
            events.start,
        )
        self.assertLessEqual(abs(transmit - second), 2e-6)
