"""
The C{udptime} command, in process: its command line, its output, and its
queries on a fake reactor and on real loopback sockets (the console script
itself runs against real servers in L{tests.test_integration}).
"""

from __future__ import annotations

import io
import json
import os
import sys
from datetime import UTC
from typing import Any

from twisted.internet import reactor as globalReactor
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorPluggableNameResolver
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface import implementer

from tests.test_client import FakeReactor, SteppingClock
from tests.test_interactive import FakeReaderReactor
from udptime import cli
from udptime.cli import Client, UsageError, parseArguments
from udptime.ntp import buildKissOfDeath
from udptime.reading import (
    UNAUTHENTICATED,
    BadReply,
    LookupTimeout,
    QueryError,
    QueryResult,
    QueryTimeout,
    ServerRefused,
)
from udptime.resolver import DaemonThreadResolver
from udptime.server import TextTimeServer
from udptime.services import SERVICES
from udptime.text import TextClientCodec

KEY = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="
"""A Roughtime public key for C{--public-key} (the bytes 0 to 31)."""


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
        request, token = options.codec.buildRequest(0)
        self.assertEqual(request, b"time @" + token)

    def test_noToken(self) -> None:
        """
        C{--no-token} makes the text protocol's requests carry no token.
        """
        options = parseArguments(["127.0.0.1", "--no-token", "unix"])
        self.assertEqual(options.codec.buildRequest(0), (b"unix", None))
        options = parseArguments(["127.0.0.1", "--no-token", "-P", "echo", "x"])
        self.assertEqual(options.codec.buildRequest(0)[0], b"x")

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

    def test_protocols(self) -> None:
        """
        C{--protocol} speaks every service of the table, asking its standard
        port; the text protocol is the default, on port 5000; Roughtime's is
        2002, the port of the public servers and of the draft's examples.
        """
        self.assertEqual(
            set(SERVICES), {"text", "ntp", "time", "daytime", "echo", "roughtime"}
        )
        for name, service in SERVICES.items():
            with self.subTest(name=name):
                key = [] if service.makeKeyedCodec is None else ["--public-key", KEY]
                options = parseArguments(["h", "--protocol", name, *key])
                self.assertEqual(options.codec.name, name)
                client = Client(None, options, io.StringIO(), io.StringIO())  # type: ignore[arg-type]
                self.assertEqual(client.port, service.standardPort)
        self.assertEqual(SERVICES[cli.DEFAULT_PROTOCOL].standardPort, 5000)
        self.assertEqual(SERVICES["roughtime"].standardPort, 2002)

    def test_publicKey(self) -> None:
        """
        C{--public-key} gives the Roughtime codec the server's key; the
        protocol needs it, the others refuse it, and a key that is not 32
        bytes of base64 is a usage error.
        """
        options = parseArguments(["h", "-P", "roughtime", "--public-key", KEY])
        self.assertEqual(options.codec.publicKey, bytes(range(32)))
        cases = [
            (["h", "-P", "roughtime"], "needs the server's public key"),
            (["h", "-P", "ntp", "--public-key", KEY], "takes no public key"),
            (["h", "-P", "roughtime", "--public-key", "AAAA"], "is 32 bytes"),
            (["h", "-P", "roughtime", "--public-key", "!"], "is not base64"),
            (
                ["h", "-P", "roughtime", "--public-key", KEY, "x"],
                "request takes no words",
            ),
        ]
        for argv, message in cases:
            with self.subTest(argv=argv):
                error = self.assertRaises(UsageError, parseArguments, argv)
                self.assertIn(message, str(error))

    def test_requestWords(self) -> None:
        """
        The request words become the request of a protocol that takes words,
        and are refused, as a usage error, by one that takes none.
        """
        options = parseArguments(["h", "month", "3"])
        self.assertTrue(options.codec.buildRequest(0.0)[0].startswith(b"month 3 @"))
        options = parseArguments(["h", "--protocol", "echo", "hello"])
        self.assertEqual(options.codec.buildRequest(0.0)[0], b"hello")
        error = self.assertRaises(
            UsageError, parseArguments, ["h", "--protocol", "ntp", "x"]
        )
        self.assertIn("the ntp protocol's request takes no words", str(error))

    def test_intervalErrors(self) -> None:
        """
        C{--interval} takes 0 or more seconds, and only with queries made
        by the command line.
        """
        cases = [
            (["h", "--interval", "-1"], "must be 0 or more seconds: '-1'"),
            (["h", "--interval", "nan"], "must be 0 or more seconds"),
            (["h", "--interval", "inf"], "must be 0 or more seconds"),
            (["h", "--interval", "soon"], "not a number: 'soon'"),
            (["h", "-i", "--interval", "1"], "--interval does not go with"),
        ]
        for argv, message in cases:
            with self.subTest(argv=argv):
                error = self.assertRaises(UsageError, parseArguments, argv)
                self.assertIn(message, str(error))
        self.assertEqual(parseArguments(["h"]).interval, 1.0)
        self.assertEqual(parseArguments(["h", "--interval", "0"]).interval, 0.0)
        self.assertEqual(parseArguments(["h", "--interval", "2.5"]).interval, 2.5)

    def test_help(self) -> None:
        """
        C{--help} describes every argument and names every protocol with
        its port.
        """
        parser = cli.buildParser()
        for action in parser._actions:
            with self.subTest(action=action.dest):
                self.assertTrue(action.help, action.dest)
        text = parser.format_help()
        for name, service in SERVICES.items():
            self.assertIn(f"{name} {service.standardPort}", " ".join(text.split()))
        for option in ("--interval", "--json", "--count", "--interactive"):
            self.assertIn(option, text)

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


def startClient(
    argv: list[str],
) -> tuple[FakeReactor, Deferred[int], io.StringIO, io.StringIO]:
    """
    Start a L{Client} run of the command line C{argv} on a L{FakeReactor}:
    the reactor, the run's L{Deferred}, standard output and standard error.
    """
    reactor = FakeReactor()
    stdout, stderr = io.StringIO(), io.StringIO()
    # The fake server's replies carry no request token.
    options = parseArguments([*argv, "--no-token"])
    client = Client(reactor, options, stdout, stderr, SteppingClock())
    d = Deferred.fromCoroutine(client.run())
    return reactor, d, stdout, stderr


def startInteractive(
    testCase: SynchronousTestCase, argv: list[str], lines: bytes
) -> tuple[FakeReactor, FakeReaderReactor, Deferred[int], io.StringIO, io.StringIO]:
    """
    Start a L{Client} run of the interactive command line C{argv} on a
    L{FakeReactor}, reading C{lines} from a pipe, and read them once: the
    reactor, the reader's reactor, the run's L{Deferred}, standard output
    and standard error.  Call C{doRead} of the reader's reactor's reader to
    read on (to the end of input).
    """
    reader = FakeReaderReactor()
    reactor = FakeReactor()
    reactor.addReader = reader.addReader  # type: ignore[attr-defined]
    reactor.removeReader = reader.removeReader  # type: ignore[attr-defined]
    stdout, stderr = io.StringIO(), io.StringIO()
    client = Client(
        reactor, parseArguments([*argv, "--no-token"]), stdout, stderr, SteppingClock()
    )
    readEnd, writeEnd = os.pipe()
    testCase.addCleanup(os.close, readEnd)
    os.write(writeEnd, lines)
    os.close(writeEnd)
    done = Deferred.fromCoroutine(client.run(readEnd))
    reader.readers[0].doRead()
    return reactor, reader, done, stdout, stderr


class ClientTests(SynchronousTestCase):
    """
    L{Client} on a fake reactor.
    """

    def start(self, argv: list[str]) -> tuple[FakeReactor, Deferred[int], Any, Any]:
        return startClient(argv)

    def test_count(self) -> None:
        """
        C{--count} queries one after the other, a second apart (from one's
        end to the next one's start), each printed.
        """
        reactor, d, stdout, stderr = self.start(["127.0.0.1", "unix", "-c", "2"])
        reactor.ports[0].receive(b"1.000000\n")
        self.assertNoResult(d)
        reactor.advance(0.999)
        self.assertEqual(len(reactor.ports), 1)
        reactor.advance(0.001)
        self.assertEqual(len(reactor.ports), 2)
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
        reactor.advance(1)  # the first query's only try
        reactor.advance(1)  # the interval
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
        reactor, d, stdout, stderr = self.start(
            ["127.0.0.1", "-c", "2", "--interval", "0"]
        )
        reactor.ports[0].receive(b"\x1b[2J\n")
        reactor.ports[1].receive(b"error: \x1b[31mred\n")
        self.assertEqual(self.successResultOf(d), 1)
        self.assertEqual(
            stderr.getvalue(), "udptime: error from 127.0.0.1:5000: \\x1b[31mred\n"
        )
        self.assertIn("  \\x1b[2J  ", stdout.getvalue())
        reactor, reader, done, stdout, _ = startInteractive(
            self, ["127.0.0.1", "-i"], b"time\n"
        )
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
        client = Client(
            reactor, parseArguments(["h", "-i", "--no-token"]), stdout, stderr
        )
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
                d = cli._react(
                    reactor, parseArguments(["127.0.0.1", "-c", "3", "--no-token"])
                )
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
        d = cli._react(reactor, parseArguments(["127.0.0.1", "-c", "3", "--no-token"]))
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
        d = cli._react(reactor, parseArguments(["127.0.0.1", "-r", "1", "--no-token"]))
        reactor.advance(1)
        self.assertEqual(self.failureResultOf(d, SystemExit).value.code, 1)

    def test_reactResolvesInDaemonThreads(self) -> None:
        """
        The command looks host names up with L{DaemonThreadResolver}.
        """

        @implementer(IReactorPluggableNameResolver)
        class PluggableReactor(FakeReactor):
            def installNameResolver(self, resolver: Any) -> Any:
                old, self.nameResolver = self.nameResolver, resolver
                return old

        reactor = PluggableReactor()
        reactor.addSystemEventTrigger = lambda *a: None  # type: ignore[method-assign]
        cli._react(reactor, parseArguments(["127.0.0.1", "--no-token"]))
        self.assertIsInstance(reactor.nameResolver, DaemonThreadResolver)

    def test_json(self) -> None:
        """
        C{--json} prints one object per reply.
        """
        reactor, d, stdout, _ = self.start(["127.0.0.1", "--json", "-c", "2"])
        reactor.ports[0].receive(b"1970-01-01T00:16:40.000000+00:00\n")
        reactor.advance(1)
        reactor.ports[1].receive(b"1970-01-01T00:16:41.000000+00:00\n")
        self.assertEqual(self.successResultOf(d), 0)
        objects = [json.loads(line) for line in stdout.getvalue().splitlines()]
        self.assertEqual([o["serverTime"] for o in objects], [1000.0, 1001.0])


class IntervalTests(SynchronousTestCase):
    """
    C{--interval}: the wait between the queries of C{--count}.
    """

    def test_interval(self) -> None:
        """
        The next query starts C{--interval} seconds after the last one
        ended, answered or not.
        """
        reactor, d, _, _ = startClient(
            ["127.0.0.1", "-c", "3", "-r", "1", "--interval", "2.5"]
        )
        reactor.advance(1)  # the first query times out
        reactor.advance(2.499)
        self.assertEqual(len(reactor.ports), 1)
        reactor.advance(0.001)
        self.assertEqual(len(reactor.ports), 2)
        reactor.ports[1].receive(b"March\n")
        reactor.advance(2.499)
        self.assertEqual(len(reactor.ports), 2)
        reactor.advance(0.001)
        reactor.ports[2].receive(b"April\n")
        self.assertEqual(self.successResultOf(d), 1)
        self.assertEqual(reactor.getDelayedCalls(), [])

    def test_noInterval(self) -> None:
        """
        With C{--interval 0} the next query starts as the last one ends.
        """
        reactor, d, _, _ = startClient(["127.0.0.1", "-c", "2", "--interval", "0"])
        reactor.ports[0].receive(b"March\n")
        self.assertEqual(len(reactor.ports), 2)
        reactor.ports[1].receive(b"April\n")
        self.assertEqual(self.successResultOf(d), 0)

    def test_notAfterTheLast(self) -> None:
        """
        The run ends with its last query: no wait follows it.
        """
        reactor, d, _, _ = startClient(["127.0.0.1", "-c", "1"])
        reactor.ports[0].receive(b"March\n")
        self.assertEqual(self.successResultOf(d), 0)
        self.assertEqual(reactor.getDelayedCalls(), [])

    def test_interruptedWhileWaiting(self) -> None:
        """
        Ctrl-C between two queries stops the wait: status 130, no timer
        left, no further query.
        """
        reactor = FakeReactor()
        triggers: list[Any] = []
        reactor.addSystemEventTrigger = lambda phase, event, f: triggers.append(f)
        self.patch(sys, "stdout", io.StringIO())
        self.patch(sys, "stderr", io.StringIO())
        d = cli._react(reactor, parseArguments(["127.0.0.1", "-c", "3", "--no-token"]))
        reactor.ports[0].receive(b"March\n")
        self.assertEqual(len(reactor.getDelayedCalls()), 1)
        [interrupted] = triggers
        interrupted()
        self.assertEqual(self.failureResultOf(d, SystemExit).value.code, 130)
        self.assertEqual(reactor.getDelayedCalls(), [])
        reactor.advance(10)
        self.assertEqual(len(reactor.ports), 1)


class RateLimitHintTests(SynchronousTestCase):
    """
    A server that answered earlier queries of the run and then stops
    answering may be limiting the rate of requests: the failure says so, as
    a possibility.
    """

    def test_hint(self) -> None:
        """
        After answered queries, a query that gets no reply says how many the
        server answered, and that it may be limiting the rate.
        """
        reactor, d, stdout, stderr = startClient(
            ["127.0.0.1", "-c", "4", "-r", "2", "--interval", "0"]
        )
        reactor.ports[0].receive(b"March\n")
        reactor.ports[1].receive(b"April\n")
        reactor.advance(1)
        reactor.advance(1)
        reactor.ports[4].receive(b"May\n")
        self.assertEqual(self.successResultOf(d), 1)
        self.assertEqual(
            stderr.getvalue(),
            "udptime: no reply from 127.0.0.1:5000 after 2 tries; the server"
            " answered 2 earlier queries of this run, so it may be limiting the"
            " rate of requests it answers (a longer --interval asks less often)\n",
        )
        self.assertEqual(len(stdout.getvalue().splitlines()), 3)

    def test_oneEarlier(self) -> None:
        """
        One earlier answer is counted in the singular.
        """
        reactor, d, _, stderr = startClient(
            ["127.0.0.1", "-r", "1", "-c", "2", "--interval", "0"]
        )
        reactor.ports[0].receive(b"March\n")
        reactor.advance(1)
        self.assertEqual(self.successResultOf(d), 1)
        self.assertIn(
            "; the server answered 1 earlier query of this run,", stderr.getvalue()
        )

    def test_noHintWithoutEarlierAnswers(self) -> None:
        """
        A server that answered nothing in this run gets no hint: the
        failure is only what it is.
        """
        reactor, d, _, stderr = startClient(
            ["127.0.0.1", "-r", "1", "-c", "2", "--interval", "0"]
        )
        reactor.advance(1)
        reactor.advance(1)
        self.assertEqual(self.successResultOf(d), 1)
        self.assertEqual(
            stderr.getvalue(),
            "udptime: no reply from 127.0.0.1:5000 after 1 try\n" * 2,
        )

    def test_noHintForLookups(self) -> None:
        """
        A name lookup that does not finish says nothing about the server's
        rate limits.
        """
        reactor, d, _, stderr = startClient(
            ["time.example", "-r", "1", "-c", "2", "--interval", "0"]
        )
        reactor.nameResolver.answer(IPv4Address("UDP", "127.0.0.1", 5000))
        reactor.ports[0].receive(b"March\n")
        reactor.advance(1)
        self.assertEqual(self.successResultOf(d), 1)
        self.assertEqual(
            stderr.getvalue(),
            "udptime: cannot resolve host 'time.example': no answer in 1 s\n",
        )

    def test_interactive(self) -> None:
        """
        In interactive mode the hint does not suggest C{--interval}.  A
        refusal (an error line) counts as an answer.
        """
        reactor, reader, done, _, stderr = startInteractive(
            self, ["127.0.0.1", "-i", "-r", "1"], b"month 13\nmonth 4\n"
        )
        reactor.ports[0].receive(b"error: month must be a number from 1 to 12\n")
        reactor.advance(1)
        reader.readers[0].doRead()
        self.assertEqual(self.successResultOf(done), 1)
        self.assertEqual(
            stderr.getvalue(),
            "udptime: error from 127.0.0.1:5000: month must be a number from 1"
            " to 12\nudptime: no reply from 127.0.0.1:5000 after 1 try; the server"
            " answered 1 earlier query of this run, so it may be limiting the"
            " rate of requests it answers\n",
        )


class JSONFailureTests(SynchronousTestCase):
    """
    With C{--json}, a failed query is a JSON object on standard output, as
    a reply is, and nothing is written on standard error.
    """

    def objects(self, stdout: io.StringIO) -> list[dict[str, Any]]:
        return [json.loads(line) for line in stdout.getvalue().splitlines()]

    def test_timeout(self) -> None:
        """
        No reply: an object whose C{error} is C{timeout}; status 1.
        """
        reactor, d, stdout, stderr = startClient(
            ["::1", "-p", "5001", "--json", "-r", "1"]
        )
        reactor.advance(1)
        self.assertEqual(self.successResultOf(d), 1)
        self.assertEqual(stderr.getvalue(), "")
        self.assertEqual(
            self.objects(stdout),
            [
                {
                    "error": "timeout",
                    "message": "no reply from [::1]:5001 after 1 try",
                    "protocol": "text",
                    "server": "::1",
                    "port": 5001,
                }
            ],
        )

    def test_refused(self) -> None:
        """
        A refusal is C{refused}, with the server's message; replies and
        failures come in the order of the queries, one object per line.
        """
        reactor, d, stdout, stderr = startClient(
            ["127.0.0.1", "--json", "-c", "2", "--interval", "0"]
        )
        reactor.ports[0].receive(b"March\n")
        reactor.ports[1].receive(b"error: no\n")
        self.assertEqual(self.successResultOf(d), 1)
        self.assertEqual(stderr.getvalue(), "")
        reply, failure = self.objects(stdout)
        self.assertEqual(reply["text"], "March")
        self.assertEqual(
            failure,
            {
                "error": "refused",
                "message": "error from 127.0.0.1:5000: no",
                "protocol": "text",
                "server": "127.0.0.1",
                "port": 5000,
            },
        )

    def test_hint(self) -> None:
        """
        A hint is a field of its own.
        """
        reactor, d, stdout, _ = startClient(
            ["localhost", "-P", "time", "-c", "2", "-r", "1", "--interval", "0", "-j"],
        )
        reactor.nameResolver.answer(IPv4Address("UDP", "127.0.0.1", 37))
        reactor.ports[0].receive(b"\0\0\0\1", ("127.0.0.1", 37))
        reactor.nameResolver.answer(IPv4Address("UDP", "127.0.0.1", 37))
        reactor.advance(1)
        self.assertEqual(self.successResultOf(d), 1)
        _, failure = self.objects(stdout)
        self.assertEqual(
            failure,
            {
                "error": "timeout",
                "message": "no reply from 127.0.0.1:37 after 1 try",
                "hint": "the server answered 1 earlier query of this run, so it"
                " may be limiting the rate of requests it answers (a longer"
                " --interval asks less often)",
                "protocol": "time",
                "server": "localhost",
                "port": 37,
            },
        )

    def test_kinds(self) -> None:
        """
        Each kind of failure has its word.
        """
        for error, kind in [
            (QueryTimeout("x"), "timeout"),
            (LookupTimeout("x"), "timeout"),
            (ServerRefused("x"), "refused"),
            (BadReply("x"), "bad-reply"),
            (QueryError("x"), "failed"),
            (ValueError("x"), "bad-request"),
            (ZeroDivisionError(), "unexpected"),
        ]:
            with self.subTest(error=error):
                self.assertEqual(cli.failureKind(error), kind)

    def test_badRequestLine(self) -> None:
        """
        An interactive line the protocol cannot send is a C{bad-request}
        object, and the session goes on.
        """
        reactor, reader, done, stdout, stderr = startInteractive(
            self, ["127.0.0.1", "-i", "--json"], b"x" * 600 + b"\nmonth 3\n"
        )
        reactor.ports[0].receive(b"March\n")
        reader.readers[0].doRead()
        self.assertEqual(self.successResultOf(done), 1)
        self.assertEqual(stderr.getvalue(), "")
        failure, reply = self.objects(stdout)
        self.assertEqual(failure["error"], "bad-request")
        self.assertEqual(
            failure["message"],
            "the request is 600 bytes long; servers answer at most 512",
        )
        self.assertEqual(reply["text"], "March")

    def test_outputFails(self) -> None:
        """
        A failure that cannot be written ends the run as a reply that
        cannot be written does.
        """
        reactor = FakeReactor()
        reactor.addSystemEventTrigger = lambda *a: None
        stderr = io.StringIO()
        self.patch(sys, "stdout", FailingOutput(OSError(28, "No space left")))
        self.patch(sys, "stderr", stderr)
        d = cli._react(
            reactor,
            parseArguments(["127.0.0.1", "-j", "-r", "1", "-c", "3", "--no-token"]),
        )
        reactor.advance(1)
        self.assertEqual(self.failureResultOf(d, SystemExit).value.code, 1)
        self.assertEqual(len(reactor.ports), 1)
        self.assertEqual(
            stderr.getvalue(), "udptime: cannot write the output: No space left\n"
        )


class FailingOutput(io.StringIO):
    """
    A stream every write to which fails with C{error}.
    """

    def __init__(self, error: OSError) -> None:
        super().__init__()
        self.error = error

    def write(self, text: str) -> int:
        raise self.error


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


class UnauthenticatedTests(SynchronousTestCase):
    """
    An answer of a protocol that cannot tie it to the request (RFC 868,
    Daytime) says so on its line.
    """

    def result(self, protocol: str, details: dict[str, Any]) -> QueryResult:
        return QueryResult(
            protocol=protocol,
            host="127.0.0.1",
            port=37,
            reply=b"",
            text="2026-12-05T19:00:00+00:00",
            serverTime=None,
            delay=0.001,
            offset=None,
            details=details,
        )

    def test_said(self) -> None:
        line = cli.formatResult(self.result("time", {UNAUTHENTICATED: True}))
        self.assertTrue(line.endswith("  unauthenticated answer"), line)

    def test_notSaid(self) -> None:
        line = cli.formatResult(self.result("text", {}))
        self.assertNotIn("unauthenticated", line)
