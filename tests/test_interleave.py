"""
Tests for NTP's interleaved basic mode on the server's side
(L{udptime.interleave}, L{udptime.server.NTPServer}, L{udptime.port}): the
state machine against the cases of RFC 9769 (a first request, a follow-up
in interleaved form, a client whose record was forgotten, a restarted
server, a copied origin from another host), then on a real socket with the
kernel's transmit timestamps.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time

from twisted.internet import reactor
from twisted.internet.task import Clock
from twisted.logger import Logger
from twisted.trial.unittest import SynchronousTestCase

from tests.support import TwistdServer, freePort, requirePeer, waitFor
from tests.test_port import serveWithClient
from udptime.ancillary import TRANSMIT_TIMESTAMP_REQUEST
from udptime.clock import ClockSource, ntp64ToUnix, unixToNTP64
from udptime.decision import LateReply
from udptime.interleave import (
    SUMMARY_NAME,
    TableCounters,
    TransmitTimes,
    isInterleavedForm,
)
from udptime.server import NTPServer
from udptime.summary import CounterSummary
from udptime.tap import Options, makeService

NOW = 1_795_000_000.25
CLIENT = ("192.0.2.1", 40000)
OTHER = ("198.51.100.7", 40000)
PRECISION = -20
KEEP = ~((1 << (32 + PRECISION)) - 1) & ((1 << 64) - 1)
"""The bits of a timestamp above the server's precision (below, fuzz)."""
HALF_STEP = 1 << (32 + PRECISION - 1)
"""Half a step of the server's precision, in units of 2^-32 s."""


def clientRequest(origin: bytes, receive: bytes, transmit: bytes) -> bytes:
    """
    A version-4 client request with the given origin, receive and transmit
    timestamps (8 bytes each).
    """
    return bytes([0x23]) + bytes(23) + origin + receive + transmit


def field(reply: bytes | bytearray, name: str) -> int:
    """
    One timestamp of C{reply}, by name.
    """
    at = {"origin": 24, "receive": 32, "transmit": 40}[name]
    return int.from_bytes(reply[at : at + 8], "big")


def ntpServer(interleave: TransmitTimes | None = None) -> NTPServer:
    """
    An NTP server with a fixed clock, its port's table L{interleave} given.
    """
    server = NTPServer(
        clock=lambda: NOW + 0.5,
        clockSource=ClockSource(10, precision=PRECISION),
    )
    server.interleave = interleave
    return server


class InterleavedFormTests(SynchronousTestCase):
    """
    L{isInterleavedForm} tells the requests that may be in interleaved form.
    """

    def test_forms(self) -> None:
        a, b, c = b"\1" * 8, b"\2" * 8, b"\3" * 8
        self.assertTrue(isInterleavedForm(clientRequest(a, b, c)))
        # chronyd's first request, and any basic client's: origin zero.
        self.assertFalse(isInterleavedForm(clientRequest(bytes(8), bytes(8), c)))
        # Receive equal to transmit: a symmetric peer's duplicate, not this.
        self.assertFalse(isInterleavedForm(clientRequest(a, c, c)))
        # Version 3.
        self.assertFalse(isInterleavedForm(bytes([0x1B]) + clientRequest(a, b, c)[1:]))


class StateMachineTests(SynchronousTestCase):
    """
    The server's answers to one client as its requests come, with the kernel
    transmit times its port would report (L{TransmitTimes.transmitted}).
    """

    def exchange(
        self, server: NTPServer, request: bytes, addr: tuple[str, int] = CLIENT
    ) -> tuple[bytes, LateReply]:
        decision = server.decideLate(request, addr, NOW)
        assert isinstance(decision, LateReply)
        return bytes(decision.stamp()), decision

    def test_firstRequest(self) -> None:
        """
        A request with a zero origin (any client's first, and every basic
        client's) gets a basic reply, sent without a request for its
        transmit time, and nothing is kept.
        """
        times = TransmitTimes()
        server = ntpServer(times)
        request = clientRequest(bytes(8), bytes(8), os.urandom(8))
        reply, decision = self.exchange(server, request)
        self.assertEqual(reply[24:32], request[40:48])
        self.assertIsNone(decision.control)
        self.assertEqual((times.records, times.awaiting), ({}, 0))

    def test_interleavedFormUnknown(self) -> None:
        """
        A request in interleaved form whose origin names no reply the server
        keeps gets a basic reply (origin = its transmit timestamp), sent with
        a request for its kernel transmit time, which is then awaited.
        """
        times = TransmitTimes()
        server = ntpServer(times)
        request = clientRequest(os.urandom(8), os.urandom(8), os.urandom(8))
        reply, decision = self.exchange(server, request)
        self.assertEqual(reply[24:32], request[40:48])
        self.assertEqual(decision.control, TRANSMIT_TIMESTAMP_REQUEST)
        self.assertEqual(times.awaiting, 1)
        self.assertEqual(times.records, {reply[32:40]: [CLIENT[0], None]})

    def follow(
        self, server: NTPServer, previous: bytes, addr: tuple[str, int] = CLIENT
    ) -> tuple[bytes, bytes]:
        """
        The client's next request after the reply C{previous}, in
        interleaved form, and the server's reply.
        """
        arrived = unixToNTP64(NOW + 0.75).to_bytes(8, "big")
        request = clientRequest(previous[32:40], arrived, os.urandom(8))
        reply, _ = self.exchange(server, request, addr)
        return request, reply

    def test_followUp(self) -> None:
        """
        The follow-up in interleaved form, once the kernel reported the
        transmit time of the reply its origin names, gets an interleaved
        reply: origin = the request's receive timestamp, receive = this
        request's arrival, transmit = the kernel's time of the previous
        reply (to the server's precision).  The record is used up, and the
        new reply's awaited.
        """
        times = TransmitTimes()
        server = ntpServer(times)
        first = clientRequest(os.urandom(8), os.urandom(8), os.urandom(8))
        firstReply, _ = self.exchange(server, first)
        kernel = unixToNTP64(NOW + 0.5001)
        self.assertTrue(times.transmitted(firstReply[32:40], kernel))
        request, reply = self.follow(server, firstReply)
        self.assertEqual(reply[24:32], request[32:40])
        self.assertEqual(field(reply, "transmit") & KEEP, kernel & KEEP)
        # Spread by random bits over half a step either way.
        spread = field(reply, "receive") - unixToNTP64(NOW)
        self.assertTrue(-HALF_STEP <= spread < HALF_STEP, spread)
        self.assertNotIn(firstReply[32:40], times.records)
        self.assertEqual(list(times.records), [reply[32:40]])
        self.assertEqual(times.interleaved, 1)
        # And so on: the next follow-up is interleaved too.
        self.assertTrue(times.transmitted(reply[32:40], kernel + 1000))
        again, nextReply = self.follow(server, reply)
        self.assertEqual(nextReply[24:32], again[32:40])
        self.assertEqual(times.interleaved, 2)

    def test_notReported(self) -> None:
        """
        While the kernel has not reported the previous reply's transmit
        time, a follow-up gets a basic reply.
        """
        server = ntpServer(TransmitTimes())
        first = clientRequest(os.urandom(8), os.urandom(8), os.urandom(8))
        firstReply, _ = self.exchange(server, first)
        request, reply = self.follow(server, firstReply)
        self.assertEqual(reply[24:32], request[40:48])

    def test_evicted(self) -> None:
        """
        A client whose record was forgotten for room (counted) gets a basic
        reply to its follow-up, and starts over.
        """
        times = TransmitTimes(capacity=2)
        server = ntpServer(times)
        first = clientRequest(os.urandom(8), os.urandom(8), os.urandom(8))
        firstReply, _ = self.exchange(server, first)
        times.transmitted(firstReply[32:40], unixToNTP64(NOW + 0.5))
        for port in (1, 2):
            other = clientRequest(os.urandom(8), os.urandom(8), os.urandom(8))
            self.exchange(server, other, (OTHER[0], port))
        self.assertEqual(times.evicted, 1)
        request, reply = self.follow(server, firstReply)
        self.assertEqual(reply[24:32], request[40:48])
        self.assertEqual(times.interleaved, 0)

    def test_restartedServer(self) -> None:
        """
        A server that restarted knows none of its earlier replies: a
        follow-up gets a basic reply.
        """
        before = ntpServer(TransmitTimes())
        first = clientRequest(os.urandom(8), os.urandom(8), os.urandom(8))
        firstReply, _ = self.exchange(before, first)
        before.interleave.transmitted(  # type: ignore[union-attr]
            firstReply[32:40], unixToNTP64(NOW + 0.5)
        )
        after = ntpServer(TransmitTimes())
        request, reply = self.follow(after, firstReply)
        self.assertEqual(reply[24:32], request[40:48])

    def test_copiedOrigin(self) -> None:
        """
        Another host that sends the origin of a reply to the client gets a
        basic reply, which carries nothing of the kernel's transmit time,
        and the client's record is left for the client.
        """
        times = TransmitTimes()
        server = ntpServer(times)
        first = clientRequest(os.urandom(8), os.urandom(8), os.urandom(8))
        firstReply, _ = self.exchange(server, first)
        kernel = unixToNTP64(NOW + 0.4)
        times.transmitted(firstReply[32:40], kernel)
        request, spoofed = self.follow(server, firstReply, OTHER)
        self.assertEqual(spoofed[24:32], request[40:48])
        self.assertNotEqual(field(spoofed, "transmit") & KEEP, kernel & KEEP)
        self.assertIn(firstReply[32:40], times.records)
        mine, reply = self.follow(server, firstReply)
        self.assertEqual(reply[24:32], mine[32:40])
        self.assertEqual(field(reply, "transmit") & KEEP, kernel & KEEP)

    def test_noTable(self) -> None:
        """
        Without a table (no port reading kernel transmit times, or
        C{--no-interleaved}), a request in interleaved form gets a basic
        reply, as before.
        """
        server = ntpServer(None)
        request = clientRequest(os.urandom(8), os.urandom(8), os.urandom(8))
        reply, decision = self.exchange(server, request)
        self.assertEqual(reply[24:32], request[40:48])
        self.assertIsNone(decision.control)

    def test_capacity(self) -> None:
        """
        A table keeps at least one reply.
        """
        self.assertRaises(ValueError, TransmitTimes, 0)


class KernelTransmitTimesTests(SynchronousTestCase):
    """
    On a real socket, the port reads the kernel's transmit time of a reply
    from the error queue, and the client's follow-up gets it.
    """

    def serve(self, server: NTPServer) -> tuple[object, socket.socket]:
        return serveWithClient(self, server)

    def test_followUp(self) -> None:
        server = NTPServer(clockSource=ClockSource(10))
        port, client = self.serve(server)
        times = server.interleave
        if times is None:
            raise self.skipTest("this system reports no kernel transmit times")
        before = time.time()
        client.send(clientRequest(os.urandom(8), os.urandom(8), os.urandom(8)))
        port.doRead()  # type: ignore[attr-defined]
        first = client.recv(100)
        after = time.time()
        self.assertEqual(times.reported, 1)
        arrived = unixToNTP64(after).to_bytes(8, "big")
        request = clientRequest(first[32:40], arrived, os.urandom(8))
        client.send(request)
        port.doRead()  # type: ignore[attr-defined]
        reply = client.recv(100)
        self.assertEqual(reply[24:32], request[32:40])
        sent = ntp64ToUnix(field(reply, "transmit"), after)
        self.assertTrue(before <= sent <= after, (before, sent, after))
        self.assertEqual((times.interleaved, times.reported), (1, 2))

    def test_quietWhileTimestamped(self) -> None:
        """
        A reply sent with a request for its kernel transmit time goes while
        the reactor does not watch the socket (an epoll set's wake-up on the
        kernel's report would come between the transmit timestamp and the
        reply's arrival); the reactor watches it again once the read is
        done.  A basic reply leaves the reactor watching.
        """
        server = NTPServer(clockSource=ClockSource(10))
        port, client = self.serve(server)
        if server.interleave is None:
            raise self.skipTest("this system reports no kernel transmit times")
        replies = port.replies  # type: ignore[attr-defined]
        sendto, sendmsg = replies.sendto, replies.sendmsg
        watched: list[tuple[str, bool]] = []

        def recordSendto(data: bytes, addr: object) -> object:
            watched.append(("sendto", port in reactor.getReaders()))
            return sendto(data, addr)

        def recordSendmsg(*arguments: object) -> object:
            watched.append(("sendmsg", port in reactor.getReaders()))
            return sendmsg(*arguments)

        replies.sendto, replies.sendmsg = recordSendto, recordSendmsg
        step = replies.sendStep
        if step is not None:
            # The compiled send step sends with sendmsg when there are
            # control messages, with sendto otherwise.
            def recordStep(*arguments: object) -> object:
                kind = "sendto" if arguments[-1] is None else "sendmsg"
                watched.append((kind, port in reactor.getReaders()))
                return step(*arguments)

            replies.sendStep = recordStep
        self.assertIn(port, reactor.getReaders())
        client.send(clientRequest(os.urandom(8), os.urandom(8), os.urandom(8)))
        port.doRead()  # type: ignore[attr-defined]
        client.recv(100)
        self.assertEqual(watched, [("sendmsg", False)])
        self.assertIn(port, reactor.getReaders())
        self.assertFalse(port.quiet)  # type: ignore[attr-defined]
        self.assertEqual(server.interleave.reported, 1)
        client.send(clientRequest(bytes(8), bytes(8), os.urandom(8)))
        port.doRead()  # type: ignore[attr-defined]
        client.recv(100)
        self.assertEqual(watched, [("sendmsg", False), ("sendto", True)])
        self.assertIn(port, reactor.getReaders())

    def test_quietWhileTimestampedInPython(self) -> None:
        """
        The Python send step, too, sends a reply that asks for its kernel
        transmit time while the reactor does not watch the socket.
        """
        server = NTPServer(clockSource=ClockSource(10), compiledSend=False)
        port, client = self.serve(server)
        if server.interleave is None:
            raise self.skipTest("this system reports no kernel transmit times")
        replies = port.replies  # type: ignore[attr-defined]
        self.assertIsNone(replies.sendStep)
        sendmsg = replies.sendmsg
        watched: list[bool] = []

        def recordSendmsg(*arguments: object) -> object:
            watched.append(port in reactor.getReaders())
            return sendmsg(*arguments)

        replies.sendmsg = recordSendmsg
        client.send(clientRequest(os.urandom(8), os.urandom(8), os.urandom(8)))
        port.doRead()  # type: ignore[attr-defined]
        client.recv(100)
        self.assertEqual(watched, [False])
        self.assertEqual(server.interleave.reported, 1)

    def test_watchedAgainAfterFailure(self) -> None:
        """
        A read that fails half-way (a bug) after the port stopped the
        reactor watching the socket leaves it watched again.
        """
        server = NTPServer(clockSource=ClockSource(10))
        port, _ = self.serve(server)
        if server.interleave is None:
            raise self.skipTest("this system reports no kernel transmit times")

        class Failing:
            def read(self) -> None:
                port.quieten()  # type: ignore[attr-defined]
                raise RuntimeError("a bug")

        port.reader = Failing()  # type: ignore[attr-defined]
        self.assertRaises(RuntimeError, port.doRead)  # type: ignore[attr-defined]
        self.assertIn(port, reactor.getReaders())
        self.assertFalse(port.quiet)  # type: ignore[attr-defined]

    def test_offSwitch(self) -> None:
        """
        C{interleaved=False} (C{--no-interleaved}): the port reads no
        transmit times and the protocol has no table.
        """
        server = NTPServer(clockSource=ClockSource(10), interleaved=False)
        port, _ = self.serve(server)
        self.assertIsNone(server.interleave)
        self.assertIsNone(port.transmitTimes)  # type: ignore[attr-defined]


CHRONYD_XLEAVE_CONFIG = """\
server {host} port {port} iburst xleave minpoll -6 maxpoll -6
port 0
cmdport 0
logdir {directory}
log rawmeasurements
pidfile {directory}/chronyd.pid
driftfile {directory}/chronyd.drift
"""


class ChronydInterleavedTests(SynchronousTestCase):
    """
    chronyd, as a client asking for interleaved mode (C{xleave}), against a
    real C{twistd udptime}: its raw measurement log shows replies it used
    as interleaved (mode C{4I}), with kernel timestamps on both sides.
    """

    def measurements(self, directory: str) -> list[list[str]]:
        try:
            with open(os.path.join(directory, "measurements.log")) as f:
                lines = f.read().splitlines()
        except FileNotFoundError:
            return []
        return [line.split() for line in lines if line[:1].isdigit()]

    def chronyd(
        self, port: int, *serverArguments: str, interleaved: bool = True
    ) -> list[list[str]]:
        """
        Run chronyd (never touching the clock) against a server started with
        C{serverArguments} until it logged 8 samples (an interleaved one
        among them, when C{interleaved}), or for a bounded time; its
        samples.
        """
        path = requirePeer("chronyd", "chronyd checks interleaved mode")
        server = TwistdServer(
            [
                *("--port", "0", "--ntp-port", str(port), "-i", "127.0.0.1"),
                *("--local-stratum", "10", "--rate", "0", *serverArguments),
            ]
        )
        self.addCleanup(server.cleanup)
        server.start()
        directory = tempfile.mkdtemp(prefix="udptime-chronyd-xleave-")
        self.addCleanup(shutil.rmtree, directory, True)
        os.chmod(directory, 0o777)
        config = os.path.join(directory, "chrony.conf")
        with open(config, "w") as f:
            f.write(
                CHRONYD_XLEAVE_CONFIG.format(
                    host="127.0.0.1", port=port, directory=directory
                )
            )
        user = ["-u", "root"] if os.geteuid() == 0 else []
        process = subprocess.Popen(
            [path, "-x", "-d", *user, "-f", config],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

        def stop() -> None:
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(10)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()

        self.addCleanup(stop)

        def enough() -> bool:
            samples = self.measurements(directory)
            return process.poll() is not None or (
                len(samples) >= 8
                and (not interleaved or any(s[-3] == "4I" for s in samples))
            )

        # Judged by the caller on what was logged, even if not enough was.
        with contextlib.suppress(AssertionError):
            waitFor(enough, "an interleaved sample from chronyd", timeout=20)
        stop()
        return self.measurements(directory)

    def test_interleaved(self) -> None:
        """
        chronyd's samples of udptime include interleaved ones, with every
        test passing and kernel timestamps on both sides (C{4I K K}).
        """
        samples = self.chronyd(freePort())
        modes = [" ".join(sample[-3:]) for sample in samples]
        self.assertIn("4I K K", modes, samples)
        for sample in samples:
            # RFC 5905's tests 1-3 and 5-7 passed (chrony's A-D judge the
            # delay against the others', which on a busy machine varies).
            self.assertEqual(sample[5:7], ["111", "111"], sample)

    def test_offSwitch(self) -> None:
        """
        With C{--no-interleaved}, chronyd's samples are all basic.
        """
        samples = self.chronyd(freePort(), "--no-interleaved", interleaved=False)
        self.assertTrue(samples)
        self.assertEqual({sample[-3] for sample in samples}, {"4B"}, samples)


class SummaryTests(SynchronousTestCase):
    """
    The log's counter summaries have a line for the NTP services' tables of
    transmit times (recorded, used, evicted), read as they are when the
    summary is made: a port gives its protocol a table only as it listens.
    """

    def test_tableCounters(self) -> None:
        """
        L{TableCounters} sums the tables of its services, those that have
        one when asked.
        """
        first, second = ntpServer(), ntpServer()
        counters = TableCounters([first, second])
        self.assertEqual(counters.snapshot(), {"recorded": 0, "used": 0, "evicted": 0})
        first.interleave = TransmitTimes(1)
        first.interleave.expect(CLIENT[0], b"r" * 8)
        first.interleave.transmitted(b"r" * 8, 5)
        first.interleave.expect(CLIENT[0], b"s" * 8)
        second.interleave = TransmitTimes()
        second.interleave.expect(CLIENT[0], b"t" * 8)
        second.interleave.transmitted(b"t" * 8, 6)
        self.assertEqual(second.interleave.previous(CLIENT[0], b"t" * 8), 6)
        self.assertEqual(counters.snapshot(), {"recorded": 2, "used": 1, "evicted": 1})

    def test_summaryLine(self) -> None:
        """
        A summary logs what the tables counted since the last one.
        """
        clock = Clock()
        events: list[dict[str, object]] = []
        server = ntpServer()
        summary = CounterSummary(clock, {}, 10, {SUMMARY_NAME: TableCounters([server])})
        summary.log = Logger(observer=events.append)
        summary.startService()
        self.addCleanup(summary.stopService)
        server.interleave = TransmitTimes()
        server.interleave.expect(CLIENT[0], b"r" * 8)
        server.interleave.transmitted(b"r" * 8, 5)
        clock.advance(10)
        self.assertEqual([e["service"] for e in events], ["ntp interleave"])
        self.assertEqual(events[0]["changes"], "+1 recorded")
        self.assertEqual(events[0]["totals"], "recorded=1")

    def test_inTheService(self) -> None:
        """
        C{twistd udptime} with summaries has the NTP tables' line among
        them; not with C{--no-interleaved}.
        """
        runs: tuple[tuple[list[str], bool], ...] = (
            ([], True),
            (["--no-interleaved"], False),
        )
        for arguments, expected in runs:
            options = Options()
            ntpPort = str(freePort())
            summarising = ("--summary-interval", "5")
            options.parseOptions(
                ["--port", "0", "--ntp-port", ntpPort, *summarising, *arguments]
            )
            top = makeService(options)
            summaries = [
                child
                for child in top  # type: ignore[attr-defined]
                if isinstance(child, CounterSummary)
            ]
            self.assertEqual(len(summaries), 1)
            self.assertIs(SUMMARY_NAME in summaries[0].others, expected, arguments)
