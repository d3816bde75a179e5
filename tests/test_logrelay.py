"""
Tests for L{udptime.logrelay}: a worker's log never blocks it, even when its
supervisor stops reading.
"""

from __future__ import annotations

import fcntl
import json
import os
import select
import signal
import socket
import time

from twisted.logger import LogLevel, eventFromJSON
from twisted.trial.unittest import SynchronousTestCase

from tests.support import startOnFreePorts, waitFor
from tests.test_workers import workerPids
from udptime import ntp
from udptime.logrelay import LogRelay, flushingService, relayToSupervisor

_F_GETPIPE_SZ = 1032


def pipeCapacity(fd: int) -> int:
    """
    The capacity of the pipe C{fd} is an end of, in bytes.
    """
    return fcntl.fcntl(fd, _F_GETPIPE_SZ)


def readAll(fd: int) -> bytes:
    """
    Everything waiting in the pipe C{fd} (its read end, non-blocking).
    """
    os.set_blocking(fd, False)
    chunks = []
    while True:
        try:
            chunk = os.read(fd, 65536)
        except BlockingIOError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)


def event(text: str, **fields: object) -> dict[str, object]:
    """
    A log event as a L{Logger} would emit it.
    """
    return {
        "log_format": text,
        "log_level": LogLevel.info,
        "log_namespace": "test",
        "log_source": None,
        "log_time": 1.0,
        **fields,
    }


class LogRelayTests(SynchronousTestCase):
    """
    L{LogRelay} on a real pipe.
    """

    def setUp(self) -> None:
        self.readEnd, self.writeEnd = os.pipe()
        self.addCleanup(os.close, self.readEnd)
        self.addCleanup(os.close, self.writeEnd)
        self.relay = LogRelay(self.writeEnd, clock=lambda: 2.0)

    def lines(self) -> list[dict[str, object]]:
        data = readAll(self.readEnd).decode("utf-8")
        self.assertTrue(data == "" or data.endswith("\n"), "every line is whole")
        # Not splitlines(): it splits at the record separator too.
        return [eventFromJSON(line.lstrip("\x1e")) for line in data.split("\n")[:-1]]

    def fill(self) -> int:
        """
        Log until the pipe is full; the number of events logged.
        """
        count = 0
        while self.relay.dropped == 0:
            self.relay(event("line {n}", n=count, padding="x" * 200))
            count += 1
            self.assertLess(count, 100_000, "the pipe never filled")
        return count

    def test_writesJSONLines(self) -> None:
        """
        Each event is one JSON line, as C{jsonFileLogObserver} writes it.
        """
        self.relay(event("hello {who}", who="world"))
        [line] = self.lines()
        self.assertEqual(line["who"], "world")
        self.assertEqual(line["log_format"], "hello {who}")

    def test_nestedCallFromSignalHandler(self) -> None:
        """
        A log call from a signal handler that interrupted another log call
        (as Twisted's C{SIGTERM} handler logs) is dropped and counted, and
        neither call waits for the other; the next line reports it.
        """
        relay = self.relay
        write = relay._write
        signalled: list[bool] = []

        def handler(signum: int, frame: object) -> None:
            relay(event("from the handler"))

        def interruptedWrite(data: bytes) -> bool:
            # The handler runs between two bytecodes of this call, while
            # the relay is in the middle of the outer line.
            if not signalled:
                signalled.append(True)
                os.kill(os.getpid(), signal.SIGUSR1)
            return write(data)

        previous = signal.signal(signal.SIGUSR1, handler)
        self.addCleanup(signal.signal, signal.SIGUSR1, previous)
        relay._write = interruptedWrite  # type: ignore[method-assign]

        # A deadlock would wait for ever in the lock: the alarm's handler
        # interrupts that wait and fails the test instead.
        def deadlocked(signum: int, frame: object) -> None:
            raise AssertionError("the nested log call waited for the outer one")

        previousAlarm = signal.signal(signal.SIGALRM, deadlocked)
        self.addCleanup(signal.signal, signal.SIGALRM, previousAlarm)
        signal.setitimer(signal.ITIMER_REAL, 10.0)
        try:
            relay(event("outer {n}", n=1))
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
        relay(event("after"))
        self.assertEqual(signalled, [True])
        self.assertEqual((relay.nested, relay.droppedTotal, relay.dropped), (1, 1, 0))
        lines = self.lines()
        self.assertEqual(
            [(line["log_format"], line.get("dropped")) for line in lines[::2]],
            [("outer {n}", None), ("after", None)],
        )
        self.assertEqual(lines[1].get("dropped"), 1)

    def test_neverBlocks(self) -> None:
        """
        With nobody reading, the relay drops lines once the pipe is full
        instead of waiting: logging returns, and the lines are counted.
        """
        self.assertFalse(os.get_blocking(self.writeEnd))
        logged = self.fill()
        for n in range(1000):
            self.relay(event("more {n}", n=n))
        self.assertEqual(self.relay.dropped, 1001)
        self.assertEqual(self.relay.droppedTotal, 1001)
        written = self.lines()
        self.assertEqual(len(written), logged - 1)
        self.assertEqual([line["n"] for line in written], list(range(logged - 1)))

    def test_reportsDroppedLines(self) -> None:
        """
        Once the pipe takes lines again, the next line written is a warning
        that says how many were dropped, then the line itself.
        """
        self.fill()
        self.relay(event("dropped too"))
        readAll(self.readEnd)
        self.relay(event("after"))
        report, after = self.lines()
        self.assertEqual(report["log_level"], LogLevel.warn)
        self.assertEqual(report["dropped"], 2)
        self.assertEqual(report["log_namespace"], "udptime.logrelay")
        self.assertEqual(after["log_format"], "after")
        self.assertEqual(self.relay.dropped, 0)
        self.assertEqual(self.relay.droppedTotal, 2)

    def test_flushReports(self) -> None:
        """
        L{LogRelay.flush} writes the report even when nothing more is
        logged.
        """
        self.fill()
        readAll(self.readEnd)
        self.relay.flush()
        [report] = self.lines()
        self.assertEqual(report["dropped"], 1)
        self.relay.flush()
        self.assertEqual(self.lines(), [])

    def test_longLineFinishedFirst(self) -> None:
        """
        A line longer than the room left in the pipe may be taken in part;
        its rest goes out before any other line, and lines logged while it
        cannot are dropped, so the reader never sees two lines mixed.
        """
        capacity = pipeCapacity(self.writeEnd)
        # One page left: a longer line is taken in part.
        os.write(self.writeEnd, b"\n" * (capacity - 4096))
        self.relay(event("long", padding="y" * 6000))
        self.relay(event("while the rest waits"))
        self.assertEqual(self.relay.dropped, 1)
        self.assertEqual(readAll(self.readEnd).strip(b"\n")[:1], b"\x1e")
        self.relay(event("after"))
        data = readAll(self.readEnd).decode("utf-8")
        lines = data.split("\n")[:-1]
        self.assertEqual(len(lines), 3)
        self.assertNotIn("\x1e", lines[0])
        self.assertTrue(lines[0].endswith("}"))
        report = json.loads(lines[1].lstrip("\x1e"))
        self.assertEqual(report["dropped"], 1)
        self.assertEqual(json.loads(lines[2].lstrip("\x1e"))["log_format"], "after")

    def test_closedPipe(self) -> None:
        """
        With the reading end closed, lines are dropped and counted, and why
        is kept.
        """
        previous = signal.signal(signal.SIGPIPE, signal.SIG_IGN)
        self.addCleanup(signal.signal, signal.SIGPIPE, previous)
        readEnd, writeEnd = os.pipe()
        os.close(readEnd)
        self.addCleanup(os.close, writeEnd)
        relay = LogRelay(writeEnd)
        relay(event("nobody reads"))
        self.assertEqual(relay.dropped, 1)
        self.assertIsInstance(relay.failed, BrokenPipeError)


class RelayToSupervisorTests(SynchronousTestCase):
    """
    L{relayToSupervisor} replaces twist's log observer.
    """

    def test_replacesObserverFactory(self) -> None:
        readEnd, writeEnd = os.pipe()
        self.addCleanup(os.close, readEnd)
        with os.fdopen(writeEnd, "w") as logFile:
            options = {"logFile": logFile, "fileLogObserverFactory": None}
            relay = relayToSupervisor(options)
            assert relay is not None
            factory = options["fileLogObserverFactory"]
            assert callable(factory)
            self.assertIs(factory(logFile), relay)
            self.assertEqual(relay.fd, writeEnd)

    def test_notTwist(self) -> None:
        """
        Options that are not C{twist}'s (none, or twistd's) are left alone.
        """
        self.assertIsNone(relayToSupervisor(None))
        self.assertIsNone(relayToSupervisor({"logfile": "twistd.log"}))

    def test_flushingService(self) -> None:
        readEnd, writeEnd = os.pipe()
        self.addCleanup(os.close, readEnd)
        self.addCleanup(os.close, writeEnd)
        relay = LogRelay(writeEnd)
        service = flushingService(relay)
        self.assertEqual(service.call[0], relay.flush)


class SupervisorStoppedTests(SynchronousTestCase):
    """
    A real C{twistd udptime --workers 2} whose supervisor is stopped
    (SIGSTOP) under load: the workers go on answering.
    """

    def test_workersAnswerWhileSupervisorStopped(self) -> None:
        """
        With the supervisor stopped and every answer logged (C{--verbose})
        plus malformed NTP requests, far more log lines than its pipes hold,
        both workers still answer at least 99% of the requests; once the
        supervisor goes on, the workers report the lines they dropped.
        """
        server, (port, ntpPort) = startOnFreePorts(
            2,
            lambda ports: [
                "--port",
                str(ports[0]),
                "--ntp-port",
                str(ports[1]),
                "--workers",
                "2",
                "--verbose",
                "--verbose-rate",
                "0",
                "--rate",
                "0",
                "--interface",
                "127.0.0.1",
            ],
        )
        self.addCleanup(server.cleanup)
        waitFor(lambda: len(workerPids(server)) == 2, "the workers to start")
        waitFor(
            lambda: server.log().count("service listening on") >= 2 + 4,
            "the workers to listen",
        )
        sources = [f"127.0.{20 + n // 100}.{1 + n % 100}" for n in range(16)]
        sockets = []
        for source in sources:
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            self.addCleanup(sock.close)
            sock.bind((source, 0))
            sock.setblocking(False)
            sockets.append(sock)
        os.kill(server.pid, signal.SIGSTOP)
        stopped = True

        def resume() -> None:
            if stopped:
                os.kill(server.pid, signal.SIGCONT)

        self.addCleanup(resume)
        sent = answered = 0
        rounds = 125  # 2000 requests, each logged: far beyond 2 x 64 KiB
        # A round waits for its answers as long as a loaded machine may take
        # (a blocked worker never answers); three rounds in a row not fully
        # answered in that time end the run, which then fails.
        roundWait = 10.0
        done = incompleteRounds = 0
        malformed = ntp.HEADER_SIZE * b"\x00"  # version 0: dropped, logged
        while done < rounds and incompleteRounds < 3:
            for sock in sockets:
                sock.sendto(b"unix", ("127.0.0.1", port))
                sock.sendto(malformed, ("127.0.0.1", ntpPort))
            sent += len(sockets)
            done += 1
            roundEnd = time.monotonic() + roundWait
            while answered < sent and time.monotonic() < roundEnd:
                ready, _, _ = select.select(sockets, [], [], 0.1)
                for sock in ready:
                    try:
                        data, addr = sock.recvfrom(2048)
                    except BlockingIOError:
                        continue
                    if addr[1] == port and data.endswith(b"\n"):
                        answered += 1
            incompleteRounds = incompleteRounds + 1 if answered < sent else 0
        self.assertEqual(
            server.process.poll() if server.process else None,
            None,
            "the supervisor is still there",
        )
        self.assertNotIn("log lines dropped", server.log())
        os.kill(server.pid, signal.SIGCONT)
        stopped = False
        self.assertEqual(done, rounds, f"{answered} of {sent} answered")
        self.assertGreaterEqual(answered, 0.99 * sent, f"{answered} of {sent} answered")
        waitFor(
            lambda: (
                "log lines dropped: the supervisor did not read them" in server.log()
            ),
            "a worker to report the log lines it dropped",
        )
