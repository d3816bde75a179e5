"""
The C{udptime} command, in process: its command line, its output, and its
queries on a fake reactor and on real loopback sockets (the console script
itself runs against real servers in L{tests.test_integration}).
"""

from __future__ import annotations

import io
import json
import os
import socket
import sys
import threading
import time
from collections.abc import Callable
from datetime import UTC
from typing import Any

from twisted.internet import reactor as globalReactor
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorPluggableNameResolver
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface import implementer

from tests.test_client import FakeReactor, SteppingClock
from udptime import cli
from udptime.cli import CODECS, Client, LineReader, UsageError, parseArguments
from udptime.client import TextClientCodec
from udptime.ntp import buildKissOfDeath
from udptime.reading import QueryResult
from udptime.server import TextTimeServer


def result(**changes: Any) -> QueryResult:
    fields: dict[str, Any] = {
        "protocol": "text",
        "host": "127.0.0.1",
        "port": 5000,
        "reply": b"2026-11-21T22:14:03.123456+00:00\n",
        "text": "2026-11-21T22:14:03.123456+00:00",
        "serverTime": 1795299243.123456,
        "delay": 0.000213,
        "offset": -0.0000042,
        "details": {"format": "iso", "resolution": 1e-6},
    }
    fields.update(changes)
    return QueryResult(**fields)


class ArgumentTests(SynchronousTestCase):
    """
    L{parseArguments}.
    """

    def test_defaults(self) -> None:
        """
        One query of the text protocol's default request, on its default
        port, 3 tries of 1 second.
        """
        options = parseArguments(["127.0.0.1"])
        self.assertEqual(options.host, "127.0.0.1")
        self.assertIsNone(options.port)
        self.assertEqual(options.timeout, 1.0)
        self.assertEqual(options.retries, 3)
        self.assertEqual(options.count, 1)
        self.assertEqual(options.protocol, "text")
        self.assertFalse(options.json)
        self.assertFalse(options.interactive)
        self.assertEqual(options.request, "")
        self.assertIsInstance(options.codec, TextClientCodec)
        self.assertEqual(options.codec.buildRequest(0)[0], b"time")

    def test_options(self) -> None:
        """
        Every option, long and short, and words between options.
        """
        options = parseArguments(
            [
                *("::1", "iso", "-p", "5001", "Europe/Paris", "--timeout", "0.5"),
                *("-r", "2", "-c", "4", "--json", "--protocol", "text"),
            ]
        )
        self.assertEqual(
            (options.host, options.port, options.timeout, options.retries),
            ("::1", 5001, 0.5, 2),
        )
        self.assertEqual((options.count, options.json), (4, True))
        self.assertEqual(options.request, "iso Europe/Paris")
        options = parseArguments(["[::1]", "--format", "month 3"])
        self.assertEqual((options.host, options.request), ("::1", "month 3"))
        self.assertTrue(parseArguments(["-i", "localhost"]).interactive)

    def test_errors(self) -> None:
        """
        A bad command line raises L{UsageError} saying what is wrong.
        """
        cases = [
            ([], "the following arguments are required: host"),
            (["h", "--port", "0"], "argument -p/--port: must be from 1 to 65535: '0'"),
            (["h", "--port", "65536"], "must be from 1 to 65535"),
            (["h", "--port", "x"], "not a port number: 'x'"),
            (["h", "--timeout", "0"], "must be a positive number: '0'"),
            (["h", "--timeout", "-1"], "must be a positive number"),
            (["h", "--timeout", "nan"], "must be a positive number"),
            (["h", "--timeout", "inf"], "must be a positive number"),
            (["h", "--timeout", "soon"], "not a number: 'soon'"),
            (["h", "--retries", "0"], "must be at least 1: '0'"),
            (["h", "--retries", "1.5"], "not a whole number"),
            (["h", "--count", "0"], "must be at least 1"),
            (["h", "--protocol", "gopher"], "unknown protocol 'gopher'"),
            (["h", "--format", "iso", "unix"], "not both"),
            (["h", "-i", "month", "3"], "--interactive reads the requests"),
            (["h", "-i", "--count", "2"], "--count does not go with --interactive"),
            (
                ["h", "-i", "-P", "ntp"],
                "--interactive sends the lines read, and the ntp protocol's request"
                " takes no words",
            ),
            (["h", "--bogus"], "unrecognized arguments: --bogus"),
            (["[]"], "the host is empty"),
            (["h", "x" * 513], "servers answer at most 512"),
        ]
        for argv, message in cases:
            with self.subTest(argv=argv):
                error = self.assertRaises(UsageError, parseArguments, argv)
                self.assertIn(message, str(error))

    def test_mainUsageError(self) -> None:
        """
        C{main} prints exactly one line for a bad command line, and exits
        with status 2 before any query.
        """
        stderr = io.StringIO()
        self.patch(sys, "stderr", stderr)
        exc = self.assertRaises(SystemExit, cli.main, ["h", "--retries", "none"])
        self.assertEqual(exc.code, 2)
        self.assertEqual(
            stderr.getvalue(),
            "udptime: error: argument -r/--retries: not a whole number: 'none'\n",
        )

    def test_registry(self) -> None:
        """
        The text protocol is registered; its codec's port is the default.
        """
        self.assertIs(CODECS["text"], TextClientCodec)
        self.assertEqual(CODECS["text"]("").defaultPort, 5000)

    def test_withoutWords(self) -> None:
        """
        L{cli.withoutWords} adapts a codec that takes no request words.
        """
        factory = cli.withoutWords(TextClientCodec)
        self.assertIsInstance(factory(""), TextClientCodec)
        self.assertIsInstance(factory(" \t"), TextClientCodec)
        self.assertRaises(ValueError, factory, "month 3")

    def test_mainStdinClosed(self) -> None:
        """
        C{--interactive} with standard input closed: one line, status 1.
        """
        stderr = io.StringIO()
        self.patch(sys, "stderr", stderr)
        self.patch(sys, "stdin", None)
        exc = self.assertRaises(SystemExit, cli.main, ["h", "-i"])
        self.assertEqual(exc.code, 1)
        self.assertEqual(
            stderr.getvalue(), "udptime: cannot read standard input: it is closed\n"
        )


class OutputTests(SynchronousTestCase):
    """
    How results are printed.
    """

    def test_line(self) -> None:
        """
        Server, answer, delay and signed offset in milliseconds.
        """
        self.assertEqual(
            cli.formatResult(result()),
            "127.0.0.1:5000  2026-11-21T22:14:03.123456+00:00  "
            "delay 0.213 ms  offset -0.004 ms",
        )
        self.assertEqual(
            cli.formatResult(result(host="::1", offset=1.5)).split("  ")[0::3],
            ["[::1]:5000", "offset +1500.000 ms"],
        )

    def test_lineWithoutTime(self) -> None:
        """
        A reply with no time (a month) has no offset.
        """
        line = cli.formatResult(
            result(text="March", serverTime=None, offset=None, details={})
        )
        self.assertEqual(line, "127.0.0.1:5000  March  delay 0.213 ms")

    def test_coarseResolution(self) -> None:
        """
        An offset from a whole-second reply says so.
        """
        line = cli.formatResult(result(offset=-0.25, details={"resolution": 1.0}))
        self.assertTrue(line.endswith("offset -250.000 ms (1 s resolution)"), line)

    def test_shown(self) -> None:
        """
        What a server sent is shown with its unprintable characters
        escaped, so that a reply cannot drive the terminal.
        """
        self.assertEqual(cli.shown("Straße 12:00"), "Straße 12:00")
        self.assertEqual(cli.shown("\x1b[2Ja\x07\tb\x00"), "\\x1b[2Ja\\x07\\tb\\x00")
        line = cli.formatResult(
            result(text="\x1b]0;owned\x07", serverTime=None, offset=None)
        )
        self.assertEqual(line, "127.0.0.1:5000  \\x1b]0;owned\\x07  delay 0.213 ms")

    def test_json(self) -> None:
        """
        One JSON object per result, in seconds.
        """
        decoded = json.loads(cli.resultJSON(result(details={"x": b"\x01"})))
        self.assertEqual(
            decoded,
            {
                "protocol": "text",
                "server": "127.0.0.1",
                "port": 5000,
                "text": "2026-11-21T22:14:03.123456+00:00",
                "serverTime": 1795299243.123456,
                "delay": 0.000213,
                "offset": -0.0000042,
                "details": {"x": "b'\\x01'"},
            },
        )


class ClientTests(SynchronousTestCase):
    """
    L{Client} on a fake reactor.
    """

    def start(self, argv: list[str]) -> tuple[FakeReactor, Deferred[int], Any, Any]:
        reactor = FakeReactor()
        stdout, stderr = io.StringIO(), io.StringIO()
        options = parseArguments(argv)
        client = Client(reactor, options, stdout, stderr, SteppingClock())
        d = Deferred.fromCoroutine(client.run())
        return reactor, d, stdout, stderr

    def test_count(self) -> None:
        """
        C{--count} queries one after the other, each printed.
        """
        reactor, d, stdout, stderr = self.start(["127.0.0.1", "unix", "-c", "2"])
        reactor.ports[0].receive(b"1.000000\n")
        self.assertNoResult(d)
        reactor.ports[1].receive(b"2.000000\n")
        self.assertEqual(self.successResultOf(d), 0)
        lines = stdout.getvalue().splitlines()
        self.assertEqual(
            [line.split("  ")[1] for line in lines], ["1.000000", "2.000000"]
        )
        self.assertEqual(stderr.getvalue(), "")

    def test_timeout(self) -> None:
        """
        Every try lost: one line on standard error, status 1.
        """
        reactor, d, stdout, stderr = self.start(["127.0.0.1", "-t", "0.5", "-r", "2"])
        reactor.advance(0.5)
        reactor.advance(0.5)
        self.assertEqual(self.successResultOf(d), 1)
        self.assertEqual(stdout.getvalue(), "")
        self.assertEqual(
            stderr.getvalue(), "udptime: no reply from 127.0.0.1:5000 after 2 tries\n"
        )

    def test_oneFailureOfMany(self) -> None:
        """
        With C{--count} every query is made; one failure makes the status 1.
        """
        reactor, d, stdout, stderr = self.start(
            ["::1", "-p", "7", "-r", "1", "-c", "2"]
        )
        reactor.advance(1)
        reactor.ports[1].receive(b"March\n", ("::1", 7))
        self.assertEqual(self.successResultOf(d), 1)
        self.assertEqual(stdout.getvalue(), "[::1]:7  March  delay 250.000 ms\n")
        self.assertEqual(
            stderr.getvalue(), "udptime: no reply from [::1]:7 after 1 try\n"
        )

    def test_countStopsWhenRefused(self) -> None:
        """
        A refusal (an NTP Kiss-o'-Death, an error line) ends C{--count}:
        asking again at once would not help, and a server that says
        C{RATE} asks for fewer requests, not more.
        """
        reactor, d, stdout, stderr = self.start(
            ["127.0.0.1", "-P", "ntp", "-p", "123", "-c", "5"]
        )
        request = reactor.ports[0].written[-1][0]
        kiss = buildKissOfDeath(request, b"RATE", sourcePort=40000)
        assert kiss is not None
        reactor.ports[0].receive(kiss, ("127.0.0.1", 123))
        self.assertEqual(self.successResultOf(d), 1)
        self.assertEqual(len(reactor.ports), 1)
        self.assertEqual(stdout.getvalue(), "")
        self.assertIn("sent a Kiss-o'-Death RATE", stderr.getvalue())

    def test_refused(self) -> None:
        """
        The server's error line is shown on standard error.
        """
        reactor, d, _, stderr = self.start(["127.0.0.1", "month", "13"])
        reactor.ports[0].receive(b"error: month must be a number from 1 to 12\n")
        self.assertEqual(self.successResultOf(d), 1)
        self.assertEqual(
            stderr.getvalue(),
            "udptime: error from 127.0.0.1:5000: month must be a number from 1 to 12\n",
        )

    def test_unprintable(self) -> None:
        """
        Unprintable characters of a server's reply or error line are
        escaped, in interactive mode and on standard error too.
        """
        reactor, d, stdout, stderr = self.start(["127.0.0.1", "-c", "2"])
        reactor.ports[0].receive(b"\x1b[2J\n")
        reactor.ports[1].receive(b"error: \x1b[31mred\n")
        self.assertEqual(self.successResultOf(d), 1)
        self.assertEqual(
            stderr.getvalue(), "udptime: error from 127.0.0.1:5000: \\x1b[31mred\n"
        )
        self.assertIn("  \\x1b[2J  ", stdout.getvalue())
        reader = FakeReaderReactor()
        reactor = FakeReactor()
        reactor.addReader = reader.addReader  # type: ignore[attr-defined]
        reactor.removeReader = reader.removeReader  # type: ignore[attr-defined]
        stdout = io.StringIO()
        options = parseArguments(["127.0.0.1", "-i"])
        client = Client(reactor, options, stdout, io.StringIO(), SteppingClock())
        readEnd, writeEnd = os.pipe()
        self.addCleanup(os.close, readEnd)
        os.write(writeEnd, b"time\n")
        os.close(writeEnd)
        done = Deferred.fromCoroutine(client.run(readEnd))
        reader.readers[0].doRead()
        reactor.ports[-1].receive(b"\x07bell\n")
        reader.readers[0].doRead()
        self.assertEqual(self.successResultOf(done), 0)
        self.assertEqual(stdout.getvalue(), "\\x07bell\n")

    def test_stdinUnreadable(self) -> None:
        """
        Standard input the reactor cannot watch: one line, status 1.
        """
        reactor = FakeReactor()

        def refuse(reader: object) -> None:
            raise OSError(22, "Invalid argument")

        reactor.addReader = refuse  # type: ignore[attr-defined]
        stdout, stderr = io.StringIO(), io.StringIO()
        client = Client(reactor, parseArguments(["h", "-i"]), stdout, stderr)
        d = Deferred.fromCoroutine(client.run(0))
        self.assertEqual(self.successResultOf(d), 1)
        self.assertEqual(
            stderr.getvalue(), "udptime: cannot read standard input: Invalid argument\n"
        )
        self.assertEqual(reactor.ports, [])

    def test_outputFails(self) -> None:
        """
        Standard output that cannot be written stops the queries: a closed
        pipe silently, any other failure with one line; status 1 either way.
        """
        for error, message in [
            (BrokenPipeError(32, "Broken pipe"), ""),
            (OSError(28, "No space left on device"),
             "udptime: cannot write the output: No space left on device\n"),
        ]:  # fmt: skip
            with self.subTest(error=error):
                reactor = FakeReactor()
                reactor.addSystemEventTrigger = lambda *a: None
                stderr = io.StringIO()
                self.patch(sys, "stdout", FailingOutput(error))
                self.patch(sys, "stderr", stderr)
                d = cli._react(reactor, parseArguments(["127.0.0.1", "-c", "3"]))
                reactor.ports[0].receive(b"1.000000\n")
                self.assertEqual(self.failureResultOf(d, SystemExit).value.code, 1)
                self.assertEqual(len(reactor.ports), 1)
                self.assertEqual(stderr.getvalue(), message)

    def test_interrupted(self) -> None:
        """
        A run stopped with the reactor (Ctrl-C) closes its socket, prints
        nothing, and exits with status 130.
        """
        reactor = FakeReactor()
        triggers: list[tuple[str, str, Any]] = []
        reactor.addSystemEventTrigger = lambda phase, event, f: triggers.append(
            (phase, event, f)
        )
        stdout, stderr = io.StringIO(), io.StringIO()
        self.patch(sys, "stdout", stdout)
        self.patch(sys, "stderr", stderr)
        d = cli._react(reactor, parseArguments(["127.0.0.1", "-c", "3"]))
        [(phase, event, interrupted)] = triggers
        self.assertEqual((phase, event), ("before", "shutdown"))
        interrupted()
        failure = self.failureResultOf(d, SystemExit)
        self.assertEqual(failure.value.code, 130)
        self.assertTrue(reactor.ports[0].closed)
        self.assertEqual(len(reactor.ports), 1)
        self.assertEqual((stdout.getvalue(), stderr.getvalue()), ("", ""))

    def test_reactExitStatus(self) -> None:
        """
        The status of the queries becomes the exit status.
        """
        reactor = FakeReactor()
        reactor.addSystemEventTrigger = lambda *a: None
        self.patch(sys, "stderr", io.StringIO())
        d = cli._react(reactor, parseArguments(["127.0.0.1", "-r", "1"]))
        reactor.advance(1)
        self.assertEqual(self.failureResultOf(d, SystemExit).value.code, 1)

    def test_reactResolvesInDaemonThreads(self) -> None:
        """
        The command looks host names up with L{cli.DaemonThreadResolver}.
        """

        @implementer(IReactorPluggableNameResolver)
        class PluggableReactor(FakeReactor):
            def installNameResolver(self, resolver: Any) -> Any:
                old, self.nameResolver = self.nameResolver, resolver
                return old

        reactor = PluggableReactor()
        reactor.addSystemEventTrigger = lambda *a: None  # type: ignore[method-assign]
        cli._react(reactor, parseArguments(["127.0.0.1"]))
        self.assertIsInstance(reactor.nameResolver, cli.DaemonThreadResolver)

    def test_json(self) -> None:
        """
        C{--json} prints one object per reply.
        """
        reactor, d, stdout, _ = self.start(["127.0.0.1", "--json", "-c", "2"])
        reactor.ports[0].receive(b"1970-01-01T00:16:40.000000+00:00\n")
        reactor.ports[1].receive(b"1970-01-01T00:16:41.000000+00:00\n")
        self.assertEqual(self.successResultOf(d), 0)
        objects = [json.loads(line) for line in stdout.getvalue().splitlines()]
        self.assertEqual([o["serverTime"] for o in objects], [1000.0, 1001.0])


class FailingOutput(io.StringIO):
    """
    A stream every write to which fails with C{error}.
    """

    def __init__(self, error: OSError) -> None:
        super().__init__()
        self.error = error

    def write(self, text: str) -> int:
        raise self.error


class FakeReaderReactor:
    """
    Records readers added and removed.
    """

    def __init__(self) -> None:
        self.readers: list[Any] = []

    def addReader(self, reader: Any) -> None:
        self.readers.append(reader)

    def removeReader(self, reader: Any) -> None:
        self.readers.remove(reader)


class LineReaderTests(SynchronousTestCase):
    """
    L{LineReader} on a pipe.
    """

    def setUp(self) -> None:
        self.readEnd, self.writeEnd = os.pipe()
        self.addCleanup(os.close, self.readEnd)
        self.reactor = FakeReaderReactor()
        self.reader = LineReader(self.reactor, self.readEnd)
        self.reader.start()

    def closeWriteEnd(self) -> None:
        os.close(self.writeEnd)

    def test_lines(self) -> None:
        """
        Lines are split, CRLF or LF, and an unterminated last line is
        delivered at the end; then L{None}.
        """
        os.write(self.writeEnd, b"month 3\r\nHello world\n\npar")
        self.reader.doRead()
        os.write(self.writeEnd, b"tial \xff")
        self.reader.doRead()
        self.closeWriteEnd()
        self.reader.doRead()
        self.assertEqual(self.reactor.readers, [])
        got = [self.successResultOf(self.reader.next()) for _ in range(5)]
        self.assertEqual(got, ["month 3", "Hello world", "", "partial \ufffd", None])

    def test_waiting(self) -> None:
        """
        L{LineReader.next} waits for a line that has not arrived yet.
        """
        d = self.reader.next()
        self.assertNoResult(d)
        os.write(self.writeEnd, b"one\n")
        self.reader.doRead()
        self.assertEqual(self.successResultOf(d), "one")
        self.closeWriteEnd()

    def test_stop(self) -> None:
        """
        After L{LineReader.stop}, no more lines.
        """
        os.write(self.writeEnd, b"one\ntwo\n")
        self.reader.doRead()
        self.reader.stop()
        self.assertEqual(self.reactor.readers, [])
        self.assertIsNone(self.successResultOf(self.reader.next()))
        self.closeWriteEnd()

    def test_connectionLost(self) -> None:
        """
        A descriptor the reactor reports lost ends the lines.
        """
        d = self.reader.next()
        self.reader.connectionLost(None)
        self.assertIsNone(self.successResultOf(d))
        self.closeWriteEnd()


class InteractiveTests(TestCase):
    """
    C{--interactive} on the real reactor: lines from a pipe, replies from a
    real server.
    """

    async def test_session(self) -> None:
        """
        Each line is sent and its reply printed; empty lines are skipped,
        errors reported, and C{quit} ends the session.
        """
        serverPort = globalReactor.listenUDP(
            0, TextTimeServer(defaultZone=UTC), interface="127.0.0.1"
        )
        self.addCleanup(serverPort.stopListening)
        readEnd, writeEnd = os.pipe()
        self.addCleanup(os.close, readEnd)
        os.write(writeEnd, b"month 1\n\nmonth 13\nMONTH 2\nquit\nmonth 3\n")
        os.close(writeEnd)
        argv = ["127.0.0.1", "-p", str(serverPort.getHost().port), "-i"]
        stdout, stderr = io.StringIO(), io.StringIO()
        client = Client(globalReactor, parseArguments(argv), stdout, stderr)
        status = await client.run(readEnd)
        self.assertEqual(stdout.getvalue(), "January\nFebruary\n")
        self.assertEqual(
            stderr.getvalue(),
            f"udptime: error from 127.0.0.1:{serverPort.getHost().port}: "
            "month must be a number from 1 to 12, not '13'\n",
        )
        self.assertEqual(status, 1)

    async def test_endOfInput(self) -> None:
        """
        At the end of input the session ends; with no failure the status is
        0, and C{--json} prints objects.
        """
        serverPort = globalReactor.listenUDP(
            0, TextTimeServer(defaultZone=UTC), interface="::1"
        )
        self.addCleanup(serverPort.stopListening)
        readEnd, writeEnd = os.pipe()
        self.addCleanup(os.close, readEnd)
        os.write(writeEnd, b"unix\nHello world")
        os.close(writeEnd)
        argv = ["::1", "-p", str(serverPort.getHost().port), "-i", "--json"]
        stdout, stderr = io.StringIO(), io.StringIO()
        client = Client(globalReactor, parseArguments(argv), stdout, stderr)
        self.assertEqual(await client.run(readEnd), 0)
        formats = [
            json.loads(line)["details"]["format"]
            for line in stdout.getvalue().splitlines()
        ]
        self.assertEqual(formats, ["unix", "iso"])
        self.assertEqual(stderr.getvalue(), "")


class DaemonThreadResolverTests(SynchronousTestCase):
    """
    L{cli.DaemonThreadResolver} looks names up in daemon threads.
    """

    def test_resolve(self) -> None:
        """
        The lookup runs in a daemon thread, so that one that hangs cannot
        keep the command from exiting; its IPv4 and IPv6 addresses of the
        types asked for reach the receiver in the reactor's thread.
        """
        looked: list[tuple[Any, ...]] = []
        done = threading.Event()
        calls: list[Callable[[], None]] = []

        def getaddrinfo(*args: Any) -> list[Any]:
            looked.append((*args, threading.current_thread().daemon))
            done.set()
            return [
                (
                    socket.AF_INET6,
                    socket.SOCK_DGRAM,
                    17,
                    "",
                    ("2001:db8::1", 123, 0, 0),
                ),
                (socket.AF_INET, socket.SOCK_DGRAM, 17, "", ("192.0.2.1", 123)),
                (socket.AF_UNIX, socket.SOCK_DGRAM, 0, "", "/x"),
            ]

        class Reactor:
            def callFromThread(self, f: Any, *args: Any) -> None:
                calls.append(lambda: f(*args))

        receiver = RecordingReceiver()
        resolver = cli.DaemonThreadResolver(Reactor(), getaddrinfo)
        resolver.resolveHostName(
            receiver, "time.example", 123, [IPv4Address], transportSemantics="UDP"
        )
        self.assertTrue(done.wait(10))
        self.assertEqual(looked, [("time.example", 123, 0, socket.SOCK_DGRAM, True)])
        deadline = time.monotonic() + 10
        while not calls and time.monotonic() < deadline:
            done.wait(0.01)
        [deliver] = calls
        self.assertEqual(receiver.addresses, [])
        deliver()
        self.assertEqual(receiver.addresses, [IPv4Address("UDP", "192.0.2.1", 123)])
        self.assertTrue(receiver.complete)

    def test_failedLookup(self) -> None:
        """
        A name that cannot be resolved gives no address.
        """
        calls: list[Callable[[], None]] = []

        def getaddrinfo(*args: Any) -> list[Any]:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

        class Reactor:
            def callFromThread(self, f: Any, *args: Any) -> None:
                calls.append(lambda: f(*args))

        receiver = RecordingReceiver()
        cli.DaemonThreadResolver(Reactor(), getaddrinfo).resolveHostName(
            receiver, "nowhere.invalid", 0, [IPv4Address, IPv6Address]
        )
        deadline = time.monotonic() + 10
        while not calls and time.monotonic() < deadline:
            threading.Event().wait(0.01)
        [deliver] = calls
        deliver()
        self.assertEqual((receiver.addresses, receiver.complete), ([], True))


class RecordingReceiver:
    """
    An C{IResolutionReceiver} that records what it is given.
    """

    def __init__(self) -> None:
        self.addresses: list[Any] = []
        self.complete = False

    def resolutionBegan(self, resolution: Any) -> None:
        self.resolution = resolution

    def addressResolved(self, address: Any) -> None:
        self.addresses.append(address)

    def resolutionComplete(self) -> None:
        self.complete = True
