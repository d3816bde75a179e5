"""
The C{udptime} command: ask a time server for the time.

Usage::

    udptime HOST [WORDS...] [--port N] [--timeout S] [--retries N]
            [--count N] [--json] [--interactive] [--protocol NAME]

Each reply is printed on one line (the server, its answer, the round-trip
delay and our clock's offset from the server's), or as one JSON object with
C{--json}.  A query that gets no reply prints one line on standard error and
the exit status is 1; a bad command line prints one line and exits with 2;
Ctrl-C exits with 130.

The protocols the client speaks are the entries of L{CODECS}.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import threading
from collections.abc import Callable, Sequence
from typing import IO, Any, NoReturn

from twisted.internet import task
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import (
    IAddress,
    IHostnameResolver,
    IHostResolution,
    IReactorPluggableNameResolver,
    IResolutionReceiver,
)
from twisted.python.failure import Failure
from zope.interface import implementer

from udptime import __version__
from udptime.client import QueryReactor, TextClientCodec, query
from udptime.clock import WallClock, systemClock
from udptime.daytime import DaytimeClientCodec
from udptime.echo import EchoClientCodec
from udptime.ntp import NTPClientCodec
from udptime.query import (
    ClientCodec,
    QueryError,
    QueryResult,
    ServerRefused,
    formatHostPort,
)
from udptime.rfc868 import TimeClientCodec

CodecFactory = Callable[[str], ClientCodec]
"""
Makes a protocol's client codec from the request words (C{""} when the user
gave none); raises L{ValueError} for words the protocol cannot send.
"""


_WORDLESS: set[CodecFactory] = set()
"""The codec factories of protocols whose request carries no words."""


def withoutWords(factory: Callable[[], ClientCodec]) -> CodecFactory:
    """
    A L{CodecFactory} for a protocol whose request carries no words.
    """

    def make(words: str) -> ClientCodec:
        if words.strip():
            raise ValueError("this protocol's request takes no words")
        return factory()

    _WORDLESS.add(make)
    return make


CODECS: dict[str, CodecFactory] = {
    "text": TextClientCodec,
    "time": withoutWords(TimeClientCodec),
    "daytime": withoutWords(DaytimeClientCodec),
    "echo": lambda words: EchoClientCodec(words.encode("utf-8") if words else None),
    "ntp": withoutWords(NTPClientCodec),
}
"""
The protocols C{udptime --protocol} speaks, by name: one entry per protocol,
its codec factory.  The default port of a protocol is its codec's
C{defaultPort}.
"""

DEFAULT_PROTOCOL = "text"

EXIT_FAILED = 1
"""Exit status when a query failed."""

EXIT_USAGE = 2
"""Exit status for a bad command line."""

EXIT_INTERRUPTED = 130
"""Exit status when interrupted (Ctrl-C) before the queries were done."""


class UsageError(Exception):
    """
    A bad command line; the message says what is wrong.
    """


class _ArgumentParser(argparse.ArgumentParser):
    """
    An argument parser that raises L{UsageError} instead of printing the
    usage and exiting, so that a bad command line gives exactly one line.
    """

    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


def _positive(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {value!r}") from None
    if not number > 0 or number == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number: {value!r}")
    return number


def _atLeastOne(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {value!r}") from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1: {value!r}")
    return number


def _port(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {value!r}") from None
    if not 0 < number < 65536:
        raise argparse.ArgumentTypeError(f"must be from 1 to 65535: {value!r}")
    return number


def buildParser() -> argparse.ArgumentParser:
    """
    The parser of C{udptime}'s command line.
    """
    parser = _ArgumentParser(
        prog="udptime",
        description=(
            "Ask a UDP time server for the time: print its answer, the "
            "round-trip delay and the offset of its clock from ours "
            "(positive when the server is ahead)."
        ),
        epilog=(
            "Request words of the text protocol: time or iso, unix, ctime, "
            "rfc2822 (each optionally followed by a time zone such as "
            "Europe/Paris), month N.  Exit status: 0 when every query was "
            "answered, 1 when one failed, 2 for a bad command line, 130 when "
            "interrupted."
        ),
    )
    parser.add_argument("host", help="server name or IPv4/IPv6 address")
    parser.add_argument(
        "words",
        nargs="*",
        default=[],
        help="the request, e.g. 'iso UTC' or 'month 3' (default: time)",
    )
    parser.add_argument(
        "-p",
        "--port",
        type=_port,
        help="server port (default: the protocol's port, 5000 for text)",
    )
    parser.add_argument(
        "-t",
        "--timeout",
        type=_positive,
        default=1.0,
        help="seconds to wait for each reply (default: 1)",
    )
    parser.add_argument(
        "-r",
        "--retries",
        type=_atLeastOne,
        default=3,
        help="how many times to send a request before giving up (default: 3)",
    )
    parser.add_argument(
        "-f",
        "--format",
        metavar="WORDS",
        help="the request words, as one argument (instead of WORDS)",
    )
    parser.add_argument(
        "-c",
        "--count",
        type=_atLeastOne,
        default=1,
        help="queries to make, one after the other (default: 1)",
    )
    parser.add_argument(
        "-j", "--json", action="store_true", help="print each reply as JSON"
    )
    parser.add_argument(
        "-i",
        "--interactive",
        action="store_true",
        help="send each line read from standard input as a request and print "
        "each reply, until end of input or 'quit'",
    )
    parser.add_argument(
        "-P",
        "--protocol",
        default=DEFAULT_PROTOCOL,
        help="protocol to speak: " + ", ".join(sorted(CODECS)) + " (default: text)",
    )
    parser.add_argument("--version", action="version", version=__version__)
    return parser


def parseArguments(argv: Sequence[str]) -> argparse.Namespace:
    """
    Parse and check C{udptime}'s arguments.

    @raise UsageError: the command line is wrong.
    """
    options = buildParser().parse_intermixed_args(list(argv))
    if options.protocol not in CODECS:
        raise UsageError(
            f"unknown protocol {options.protocol!r} "
            f"(choose from {', '.join(sorted(CODECS))})"
        )
    if options.format is not None and options.words:
        raise UsageError("give the request with --format or as words, not both")
    if options.interactive and (options.words or options.format is not None):
        raise UsageError("--interactive reads the requests from standard input")
    if options.interactive and options.count != 1:
        raise UsageError("--count does not go with --interactive")
    if options.interactive and CODECS[options.protocol] in _WORDLESS:
        raise UsageError(
            f"--interactive sends the lines read, and the {options.protocol}"
            " protocol's request takes no words"
        )
    host = options.host
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not host:
        raise UsageError("the host is empty")
    options.host = host
    options.request = (
        options.format if options.format is not None else " ".join(options.words)
    )
    # Build one codec now, so that words the protocol cannot send are a
    # usage error before anything is sent.
    try:
        options.codec = CODECS[options.protocol](options.request)
    except ValueError as e:
        raise UsageError(str(e)) from None
    return options


def shown(text: str) -> str:
    """
    C{text} fit to write to a terminal: what a server sent is shown, but
    characters that are not printable (control characters, terminal
    escapes) are written as Python escapes, C{\\x1b} for ESC.
    """
    if text.isprintable():
        return text
    return "".join(
        c if c.isprintable() else c.encode("unicode_escape").decode("ascii")
        for c in text
    )


def formatResult(result: QueryResult) -> str:
    """
    One line for people: server, answer, delay and offset in milliseconds,
    with what the server sent L{shown} safely.
    """
    parts = [
        formatHostPort(result.host, result.port),
        result.text,
        f"delay {result.delay * 1000:.3f} ms",
    ]
    if result.offset is not None:
        offset = f"offset {result.offset * 1000:+.3f} ms"
        resolution = result.details.get("resolution")
        if isinstance(resolution, (int, float)) and resolution >= 1:
            offset += f" ({resolution:g} s resolution)"
        parts.append(offset)
    if result.protocol == "ntp":
        details = result.details
        parts.append(
            f"stratum {details.get('stratum')}  leap {details.get('leapText')}"
            f"  refid {details.get('refid')}"
        )
    return shown("  ".join(parts))


def resultJSON(result: QueryResult) -> str:
    """
    One JSON object for a result; times, delay and offset in seconds.
    """
    return json.dumps(
        {
            "protocol": result.protocol,
            "server": result.host,
            "port": result.port,
            "text": result.text,
            "serverTime": result.serverTime,
            "delay": result.delay,
            "offset": result.offset,
            "details": result.details,
        },
        default=str,
        sort_keys=True,
    )


class OutputFailed(Exception):
    """
    Standard output could not be written: whoever read it went away (a
    closed pipe), or its disk is full.

    @ivar error: the L{OSError} the write raised.
    """

    def __init__(self, error: OSError) -> None:
        super().__init__(error)
        self.error = error


class Client:
    """
    Runs the queries a command line asks for and prints their outcome.

    @ivar clock: the wall clock that times the queries.
    @ivar failures: queries that failed so far.
    """

    def __init__(
        self,
        reactor: QueryReactor,
        options: argparse.Namespace,
        stdout: IO[str],
        stderr: IO[str],
        clock: WallClock = systemClock,
    ) -> None:
        self.reactor = reactor
        self.clock = clock
        self.options = options
        self.stdout = stdout
        self.stderr = stderr
        self.failures = 0
        self.refused = False

    def ask(self, codec: ClientCodec) -> Deferred[None]:
        """
        Make one query with C{codec} and print its outcome; never fails.
        """
        options = self.options
        d = query(
            self.reactor,
            options.host,
            codec,
            port=options.port,
            timeout=options.timeout,
            retries=options.retries,
            clock=self.clock,
        )
        return d.addCallbacks(self._printResult, self._printFailure)

    def _printResult(self, result: QueryResult) -> None:
        """
        Print C{result}.

        @raise OutputFailed: standard output cannot be written.
        """
        if self.options.json:
            line = resultJSON(result)
        elif self.options.interactive:
            line = shown(result.text)
        else:
            line = formatResult(result)
        try:
            print(line, file=self.stdout, flush=True)
        except OSError as e:
            raise OutputFailed(e) from e

    def _printFailure(self, failure: Failure) -> Failure | None:
        if isinstance(failure.value, CancelledError):
            return failure  # interrupted: not a failed query
        self.failures += 1
        if isinstance(failure.value, ServerRefused):
            self.refused = True
        if isinstance(failure.value, QueryError):
            message = str(failure.value)
        else:
            message = f"unexpected error: {failure.value!r}"
        print(f"udptime: {shown(message)}", file=self.stderr, flush=True)
        return None

    async def run(self, stdin: int = 0) -> int:
        """
        Make the queries: C{--count} of them, or one per line of C{stdin}
        (a file descriptor) with C{--interactive}.

        @return: the exit status.
        @raise OutputFailed: standard output cannot be written; the queries
            stop at the first reply that could not be printed.
        """
        if self.options.interactive:
            lines = LineReader(self.reactor, stdin)
            try:
                lines.start()
            except OSError as e:
                print(
                    f"udptime: cannot read standard input: {e.strerror or e}",
                    file=self.stderr,
                    flush=True,
                )
                return EXIT_FAILED
            while (line := await lines.next()) is not None:
                request = line.strip()
                if request.lower() == "quit":
                    lines.stop()
                    break
                if not request:
                    continue
                try:
                    codec = CODECS[self.options.protocol](request)
                except ValueError as e:
                    self.failures += 1
                    print(f"udptime: {e}", file=self.stderr, flush=True)
                    continue
                await self.ask(codec)
        else:
            await self.ask(self.options.codec)
            for _ in range(self.options.count - 1):
                if self.refused:
                    # Asking again at once would not help; after a
                    # Kiss-o'-Death it is what the server asked us not to do.
                    break
                await self.ask(CODECS[self.options.protocol](self.options.request))
        return EXIT_FAILED if self.failures else 0


class LineReader:
    """
    Lines of text from a file descriptor (a pipe, a terminal or a file),
    read as the reactor finds them ready, one at a time with L{next}.

    The descriptor is read without being made non-blocking: the reactor
    only calls L{doRead} when a read will not block, and a terminal shared
    with the shell is left as it was.
    """

    def __init__(self, reactor: Any, fd: int) -> None:
        self.reactor = reactor
        self.fd = fd
        self.buffer = b""
        self.lines: list[str] = []
        self.waiting: Deferred[str | None] | None = None
        self.ended = False
        self.reading = False

    def start(self) -> None:
        """
        Start reading.
        """
        self.reading = True
        self.reactor.addReader(self)

    def stop(self) -> None:
        """
        Stop reading; L{next} gives no more lines.
        """
        if self.reading:
            self.reading = False
            self.reactor.removeReader(self)
        self.ended = True
        self.lines.clear()
        self._deliver()

    def next(self) -> Deferred[str | None]:
        """
        The next line, without its line ending, or L{None} at the end.
        """
        d: Deferred[str | None] = Deferred()
        self.waiting = d
        self._deliver()
        return d

    def _deliver(self) -> None:
        d = self.waiting
        if d is None:
            return
        if self.lines:
            self.waiting = None
            d.callback(self.lines.pop(0))
        elif self.ended:
            self.waiting = None
            d.callback(None)

    def fileno(self) -> int:
        """
        The descriptor read.
        """
        return self.fd

    def logPrefix(self) -> str:
        """
        The prefix of log lines about this reader.
        """
        return "stdin"

    def doRead(self) -> None:
        """
        Read what is ready, split it into lines, and hand them on.
        """
        try:
            data = os.read(self.fd, 65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if data:
            self.buffer += data
            *complete, self.buffer = self.buffer.split(b"\n")
            self.lines.extend(
                line.decode("utf-8", "replace").removesuffix("\r") for line in complete
            )
        else:
            if self.reading:
                self.reading = False
                self.reactor.removeReader(self)
            self._end()
        self._deliver()

    def connectionLost(self, reason: object = None) -> None:
        """
        The descriptor closed or failed (the reactor has stopped watching
        it): what was read is still delivered.
        """
        self.reading = False
        self._end()
        self._deliver()

    def _end(self) -> None:
        if self.buffer and not self.ended:
            self.lines.append(self.buffer.decode("utf-8", "replace"))
        self.buffer = b""
        self.ended = True


@implementer(IHostResolution)
class _Resolution:
    """
    One lookup of L{DaemonThreadResolver}'s, which cannot be cancelled.
    """

    def __init__(self, name: str) -> None:
        self.name = name

    def cancel(self) -> None:
        raise NotImplementedError("a lookup cannot be cancelled")


@implementer(IHostnameResolver)
class DaemonThreadResolver:
    """
    Host name lookups with C{getaddrinfo}, each in a daemon thread of its
    own.  The reactor's resolver uses its thread pool, which the reactor
    waits for as it stops: a lookup that hangs (a name server that does not
    answer) would hold the command up after its query gave up, or after
    Ctrl-C.  A daemon thread is left behind instead.
    """

    def __init__(
        self,
        reactor: Any,
        getaddrinfo: Callable[..., list[Any]] = socket.getaddrinfo,
    ) -> None:
        self.reactor = reactor
        self.getaddrinfo = getaddrinfo

    def resolveHostName(
        self,
        resolutionReceiver: IResolutionReceiver,
        hostName: str,
        portNumber: int = 0,
        addressTypes: Sequence[type[IAddress]] | None = None,
        transportSemantics: str = "TCP",
    ) -> IHostResolution:
        """
        Look C{hostName} up in a new daemon thread; give the receiver the
        IPv4 and IPv6 addresses found, or none, in the reactor's thread.
        """
        resolution = _Resolution(hostName)
        resolutionReceiver.resolutionBegan(resolution)
        kind = socket.SOCK_DGRAM if transportSemantics == "UDP" else socket.SOCK_STREAM
        transport: Any = "UDP" if kind == socket.SOCK_DGRAM else "TCP"

        def lookUp() -> None:
            try:
                found = self.getaddrinfo(hostName, portNumber, 0, kind)
            except OSError:
                found = []
            self.reactor.callFromThread(deliver, found)

        def deliver(found: list[Any]) -> None:
            for family, _, _, _, sockaddr in found:
                if family == socket.AF_INET and IPv4Address in (addressTypes or ()):
                    address: IAddress = IPv4Address(transport, *sockaddr[:2])
                elif family == socket.AF_INET6 and IPv6Address in (addressTypes or ()):
                    address = IPv6Address(transport, *sockaddr[:2])
                else:
                    continue
                resolutionReceiver.addressResolved(address)
            resolutionReceiver.resolutionComplete()

        threading.Thread(target=lookUp, name="udptime-resolver", daemon=True).start()
        return resolution


def _react(reactor: Any, options: argparse.Namespace) -> Deferred[None]:
    """
    Run the queries; exit with their status, or L{EXIT_INTERRUPTED} when
    the reactor stops first (Ctrl-C).
    """
    if IReactorPluggableNameResolver.providedBy(reactor):
        reactor.installNameResolver(DaemonThreadResolver(reactor))
    running = Deferred.fromCoroutine(
        Client(reactor, options, sys.stdout, sys.stderr).run()
    )

    def interrupted() -> None:
        if not running.called:
            running.cancel()

    def finished(status: int | Failure) -> None:
        if isinstance(status, Failure):
            if isinstance(status.value, CancelledError):
                raise SystemExit(EXIT_INTERRUPTED)
            if isinstance(status.value, OutputFailed):
                error = status.value.error
                if not isinstance(error, BrokenPipeError):
                    # A closed pipe needs no word: its reader chose to stop.
                    print(
                        f"udptime: cannot write the output: {error.strerror or error}",
                        file=sys.stderr,
                    )
                _discardOutput(sys.stdout)
                raise SystemExit(EXIT_FAILED)
            status.raiseException()
        if status:
            raise SystemExit(status)

    reactor.addSystemEventTrigger("before", "shutdown", interrupted)
    return running.addBoth(finished)


def _discardOutput(stream: IO[str]) -> None:
    """
    Point C{stream}'s file descriptor at C{/dev/null}, so that the output it
    still holds, which could not be written, does not fail again when the
    interpreter flushes it on exit (see "Note on SIGPIPE" in the Python
    documentation of L{signal}).
    """
    try:
        fd = stream.fileno()
    except (AttributeError, OSError, ValueError):
        return  # not a stream over a descriptor: the interpreter ignores it
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, fd)
    finally:
        os.close(devnull)


def main(argv: Sequence[str] | None = None) -> NoReturn:
    """
    The C{udptime} console script.
    """
    try:
        options = parseArguments(sys.argv[1:] if argv is None else argv)
    except UsageError as e:
        print(f"udptime: error: {e}", file=sys.stderr)
        sys.exit(EXIT_USAGE)
    if options.interactive and sys.stdin is None:
        # Python found no descriptor 0 at start-up: it was closed.
        print("udptime: cannot read standard input: it is closed", file=sys.stderr)
        sys.exit(EXIT_FAILED)
    task.react(_react, (options,))
