"""
The C{udptime} command: ask a time server for the time.

Usage::

    udptime HOST [WORDS...] [--port N] [--timeout S] [--retries N]
            [--count N] [--interval S] [--json] [--interactive]
            [--protocol NAME] [--nts [--nts-ke-port N] [--nts-ca FILE]]
    udptime [-P roughtime --public-key KEY HOST] [--roughtime KEY@HOST[:PORT]]...
            [--roughtime-list FILE] [--roughtime-report FILE]

Each reply is printed on one line (the server, its answer, the round-trip
delay and our clock's offset from the server's), or as one JSON object on
standard output with C{--json}.  A query that fails prints one line on
standard error (with C{--json}, one JSON object with an C{error} key on
standard output instead) and the exit status is 1; a bad command line
prints one line on standard error and exits with 2; Ctrl-C exits with 130.

With several Roughtime servers (C{--roughtime}, C{--roughtime-list}) the
client asks them in a chain, twice over (L{udptime.roughtimeclient.chainQuery}),
and when their answers cannot all be true it says so, writes the chain as a
malfeasance report and exits with 3.

The protocols the client speaks are the services of
L{udptime.services.SERVICES}.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from typing import IO, Any, Final, NoReturn, TypeVar

from twisted.internet import task
from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.interfaces import IReactorPluggableNameResolver
from twisted.python.failure import Failure

from udptime import __version__
from udptime.address import formatAddress
from udptime.client import QueryReactor, query
from udptime.clock import WallClock, systemClock
from udptime.interactive import LineReader, askEachLine
from udptime.ntske import NTSKE_PORT, NTSKEError, ntsUnavailable
from udptime.reading import (
    UNAUTHENTICATED,
    BadReply,
    ClientCodec,
    LookupTimeout,
    QueryError,
    QueryResult,
    QueryTimeout,
    ServerRefused,
    ServerReplyError,
)
from udptime.resolver import DaemonThreadResolver
from udptime.roughtime import ROUGHTIME_PORT, RoughtimeVerificationError
from udptime.roughtimechain import (
    DEFAULT_REPORT,
    ServerEntry,
    ServerListError,
    addressedServer,
    describeViolation,
    parseServer,
    readServerList,
    writeReport,
)
from udptime.roughtimeclient import ChainError, chainQuery
from udptime.roughtimekeys import parsePublicKey
from udptime.services import SERVICES
from udptime.text import TextClientCodec

DEFAULT_PROTOCOL = "text"


EXIT_FAILED = 1
"""Exit status when a query failed."""

EXIT_USAGE = 2
"""Exit status for a bad command line."""

EXIT_MALFEASANCE = 3
"""Exit status when a chain of Roughtime servers' answers cannot all be true."""

EXIT_INTERRUPTED = 130
"""Exit status when interrupted (Ctrl-C) before the queries were done."""


class UsageError(Exception):
    """
    A bad command line; the message says what is wrong.
    """


_Number = TypeVar("_Number", int, float)


class _ArgumentParser(argparse.ArgumentParser):
    """
    An argument parser that raises L{UsageError} instead of printing the
    usage and exiting, so that a bad command line gives exactly one line.
    """

    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


def _checked(
    convert: Callable[[str], _Number],
    kind: str,
    accept: Callable[[_Number], bool],
    rule: str,
) -> Callable[[str], _Number]:
    """
    An argument type: C{convert} the argument, or say it is not a C{kind};
    then keep it if C{accept} does, or say what it C{rule}s.
    """

    def check(value: str) -> _Number:
        try:
            number = convert(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a {kind}: {value!r}") from None
        if not accept(number):
            raise argparse.ArgumentTypeError(f"{rule}: {value!r}")
        return number

    return check


_positive = _checked(
    float, "number", lambda n: 0 < n < float("inf"), "must be a positive number"
)
_notNegative = _checked(
    float, "number", lambda n: 0 <= n < float("inf"), "must be 0 or more seconds"
)
_atLeastOne = _checked(int, "whole number", lambda n: n >= 1, "must be at least 1")
_port = _checked(int, "port number", lambda n: 0 < n < 65536, "must be from 1 to 65535")


DEFAULT_INTERVAL: Final = 1.0
"""Seconds between the queries of C{--count}, unless C{--interval} says."""


def _publicKey(value: str) -> bytes:
    try:
        return parsePublicKey(value)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"{e}: {value!r}") from None


def _roughtimeServer(value: str) -> ServerEntry:
    try:
        return parseServer(value, ROUGHTIME_PORT)
    except ServerListError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def buildParser() -> argparse.ArgumentParser:
    """
    The parser of C{udptime}'s command line.
    """
    protocolNames = ", ".join(sorted(SERVICES))
    ports = ", ".join(
        f"{name} {SERVICES[name].standardPort}" for name in sorted(SERVICES)
    )
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
            "Europe/Paris), month N.  A failed query prints one line on "
            'standard error (with --json, one object with an "error" key '
            "on standard output).  Exit status: 0 when every query was "
            "answered, 1 when one failed, 2 for a bad command line, 3 when a "
            "Roughtime chain's answers cannot all be true, 130 when "
            "interrupted."
        ),
    )
    parser.add_argument(
        "host",
        nargs="?",
        help="the server: a host name, or an IPv4 or IPv6 address ([::1] too);"
        " none when --roughtime or --roughtime-list name the servers",
    )
    parser.add_argument(
        "words",
        nargs="*",
        default=[],
        help=(
            "the request, for the text and echo protocols only: e.g. 'iso UTC' "
            "or 'month 3' for text (default: time), the payload for echo "
            "(default: a random token)"
        ),
    )
    parser.add_argument(
        "-p",
        "--port",
        type=_port,
        metavar="N",
        help=f"the server's port (default: the protocol's: {ports})",
    )
    parser.add_argument(
        "-t",
        "--timeout",
        type=_positive,
        default=1.0,
        metavar="SECONDS",
        help="seconds to wait for the reply to each try (default: 1)",
    )
    parser.add_argument(
        "-r",
        "--retries",
        type=_atLeastOne,
        default=3,
        metavar="N",
        help="how many times to send a request before giving up (default: 3)",
    )
    parser.add_argument(
        "-f",
        "--format",
        metavar="WORDS",
        help="the request words as one argument, instead of WORDS",
    )
    parser.add_argument(
        "-c",
        "--count",
        type=_atLeastOne,
        default=1,
        metavar="N",
        help="how many queries to make, one after the other (default: 1); "
        "a refusal ends them",
    )
    parser.add_argument(
        "--interval",
        type=_notNegative,
        metavar="SECONDS",
        help=f"seconds to wait after each of the --count queries before the "
        f"next (default: {DEFAULT_INTERVAL:g}; 0: none)",
    )
    parser.add_argument(
        "-j",
        "--json",
        action="store_true",
        help="print each reply, and each failure, as one JSON object on "
        "standard output",
    )
    parser.add_argument(
        "-i",
        "--interactive",
        action="store_true",
        help="send each line read from standard input as a request and print "
        "each reply, until the end of input or 'quit'",
    )
    parser.add_argument(
        "--no-token",
        action="store_true",
        help="text protocol: send no request token, and accept a reply that "
        "carries none (for servers that do not repeat tokens); by default "
        "each request carries a random token and only a reply repeating it "
        "counts",
    )
    parser.add_argument(
        "-P",
        "--protocol",
        default=DEFAULT_PROTOCOL,
        metavar="NAME",
        help=f"the protocol to speak: {protocolNames} (default: {DEFAULT_PROTOCOL})",
    )
    parser.add_argument(
        "--public-key",
        type=_publicKey,
        metavar="KEY",
        help="roughtime: the server's long-term public key (base64), with "
        "which its signed answers are checked",
    )
    parser.add_argument(
        "--roughtime",
        action="append",
        default=[],
        metavar="KEY@HOST:PORT",
        type=_roughtimeServer,
        help="a Roughtime server to ask in a chain: its long-term public key "
        "(base64), @, its address, and :PORT unless it is "
        f"{ROUGHTIME_PORT} ([2001:db8::1]:PORT for IPv6).  Repeat it for "
        "more servers.  The servers (HOST first, when given with "
        "-P roughtime and --public-key, then those of --roughtime-list, then "
        "these) are asked in turn, twice over, each request's nonce made "
        "from the response before; answers that cannot all be true are "
        "said, and written as a malfeasance report (exit status 3)",
    )
    parser.add_argument(
        "--roughtime-list",
        metavar="FILE",
        help="a Roughtime server list (RFC 10049's JSON, or an ecosystem.json):"
        " ask its usable servers in the chain, in its order",
    )
    parser.add_argument(
        "--roughtime-report",
        metavar="FILE",
        help="with a chain: where to write the malfeasance report, when there"
        f" is one (default: {DEFAULT_REPORT})",
    )
    parser.add_argument(
        "--nts",
        action="store_true",
        help="Network Time Security (RFC 8915): an NTS key exchange with HOST "
        "over TLS, then NTP queries authenticated with its keys, to the NTP "
        "server it names",
    )
    parser.add_argument(
        "--nts-ke-port",
        type=_port,
        metavar="N",
        help=f"with --nts: the NTS-KE port of HOST (default: {NTSKE_PORT})",
    )
    parser.add_argument(
        "--nts-ca",
        metavar="FILE",
        help="with --nts: trust the CA certificates of this PEM file instead "
        "of the system's (a private CA, a self-signed certificate)",
    )
    parser.add_argument(
        "--version",
        action="version",
        version=__version__,
        help="print the version and exit",
    )
    return parser


def parseArguments(argv: Sequence[str]) -> argparse.Namespace:
    """
    Parse and check C{udptime}'s arguments.

    @raise UsageError: the command line is wrong.
    """
    options = buildParser().parse_intermixed_args(list(argv))
    if _checkChain(options):
        options.request = ""
        options.codec = None
        return options
    if options.host is None:
        raise UsageError("the following arguments are required: host")
    protocol = SERVICES.get(options.protocol)
    if protocol is None:
        raise UsageError(
            f"unknown protocol {options.protocol!r} "
            f"(choose from {', '.join(sorted(SERVICES))})"
        )
    if options.format is not None and options.words:
        raise UsageError("give the request with --format or as words, not both")
    if options.interactive and (options.words or options.format is not None):
        raise UsageError("--interactive reads the requests from standard input")
    if options.interactive and options.count != 1:
        raise UsageError("--count does not go with --interactive")
    if options.interactive and options.interval is not None:
        raise UsageError("--interval does not go with --interactive")
    if options.interactive and not protocol.takesWords:
        raise UsageError(
            f"--interactive sends the lines read, and the {protocol.name}"
            " protocol's request takes no words"
        )
    _checkNTS(options)
    if options.interval is None:
        options.interval = DEFAULT_INTERVAL
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
        options.codec = clientCodec(options, options.request)
    except ValueError as e:
        raise UsageError(str(e)) from None
    return options


def _checkChain(options: argparse.Namespace) -> bool:
    """
    Check the options of a chain of Roughtime servers against the others,
    and gather its servers, in the order they are asked, in
    C{options.chain} (L{None} without a chain), and the reasons the server
    list's other servers were left out in C{options.roughtimeSkipped}.

    @return: whether the command line asks for a chain.
    @raise UsageError: they do not fit, or the server list cannot be used.
    """
    options.chain = None
    options.roughtimeSkipped = []
    if not options.roughtime and options.roughtime_list is None:
        if options.roughtime_report is not None:
            raise UsageError(
                "--roughtime-report goes with a chain of servers"
                " (--roughtime, --roughtime-list)"
            )
        return False
    if options.protocol not in (DEFAULT_PROTOCOL, "roughtime"):
        raise UsageError(
            "--roughtime and --roughtime-list ask Roughtime servers:"
            f" they do not go with --protocol {options.protocol}"
        )
    for given, what in (
        (options.words or options.format is not None, "a request"),
        (options.count != 1, "--count"),
        (options.interval is not None, "--interval"),
        (options.interactive, "--interactive"),
        (options.nts, "--nts"),
    ):
        if given:
            raise UsageError(f"{what} does not go with a chain of Roughtime servers")
    options.protocol = "roughtime"
    servers: list[ServerEntry] = []
    if options.host is not None:
        if options.public_key is None:
            raise UsageError("HOST joins the chain with its --public-key")
        host = options.host
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
        if not host:
            raise UsageError("the host is empty")
        port = ROUGHTIME_PORT if options.port is None else options.port
        servers.append(addressedServer(options.public_key, host, port))
    elif options.public_key is not None or options.port is not None:
        raise UsageError(
            "--public-key and --port are HOST's: give the other servers'"
            " as --roughtime KEY@HOST:PORT"
        )
    if options.roughtime_list is not None:
        try:
            listed, options.roughtimeSkipped = readServerList(options.roughtime_list)
        except ServerListError as e:
            raise UsageError(f"--roughtime-list: {e}") from None
        if not listed:
            raise UsageError(
                f"--roughtime-list: {options.roughtime_list}: no usable server"
            )
        servers.extend(listed)
    servers.extend(options.roughtime)
    options.chain = servers
    return True


def _checkNTS(options: argparse.Namespace) -> None:
    """
    Check the NTS options against the others.

    @raise UsageError: they do not fit.
    """
    if not options.nts:
        for name in ("nts_ke_port", "nts_ca"):
            if getattr(options, name) is not None:
                option = "--" + name.replace("_", "-")
                raise UsageError(f"{option} goes with --nts")
        return
    if options.protocol not in (DEFAULT_PROTOCOL, "ntp"):
        raise UsageError("--nts speaks NTP: it does not go with --protocol")
    if options.port is not None:
        raise UsageError(
            "--nts asks the NTP server and port the key exchange names:"
            " give --nts-ke-port for the key exchange's port"
        )
    if options.interactive:
        raise UsageError("--interactive does not go with --nts")
    options.protocol = "ntp"
    reason = ntsUnavailable()
    if reason is not None:
        raise UsageError(f"--nts: {reason}")


def clientCodec(options: argparse.Namespace, words: str) -> ClientCodec:
    """
    The client codec of the protocol C{options} name, for a request of
    C{words}: without a request token when C{--no-token} says so.

    @raise ValueError: the protocol cannot send C{words}.
    """
    if options.no_token and options.protocol == TextClientCodec.name:
        return TextClientCodec(words, token=False)
    return SERVICES[options.protocol].clientCodec(words, options.public_key)


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
        formatAddress(result.host, result.port),
        result.text,
        f"delay {result.delay * 1000:.3f} ms",
    ]
    if result.offset is not None:
        offset = f"offset {result.offset * 1000:+.3f} ms"
        resolution = result.details.get("resolution")
        if isinstance(resolution, (int, float)) and resolution >= 1:
            offset += f" ({resolution:g} s resolution)"
        parts.append(offset)
    if result.details.get(UNAUTHENTICATED):
        # Nothing ties the reply to the request: say so, every time.
        parts.append("unauthenticated answer")
    if result.protocol in ("ntp", "nts"):
        details = result.details
        parts.append(
            f"stratum {details.get('stratum')}  leap {details.get('leapText')}"
            f"  refid {details.get('refid')}"
        )
    if result.details.get("nts"):
        parts.append("NTS-authenticated")
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


def failureKind(error: BaseException) -> str:
    """
    What went wrong, in a word for programs: C{timeout} (no reply, or no
    answer from the name lookup), C{refused} (an error line, a
    Kiss-o'-Death), C{bad-reply} (a reply that cannot be right), C{failed}
    (no address for the name, or none the request could be sent to),
    C{nts-ke} (the NTS key exchange failed: connection, TLS, certificate,
    an error from the server, a bad response, no answer in time),
    C{bad-request} (words the protocol cannot send) or C{unexpected} (a
    bug).
    """
    if isinstance(error, QueryTimeout):
        return "timeout"
    if isinstance(error, ServerRefused):
        return "refused"
    if isinstance(error, BadReply):
        return "bad-reply"
    if isinstance(error, QueryError):
        return "failed"
    if isinstance(error, NTSKEError):
        return "nts-ke"
    if isinstance(error, ValueError):
        return "bad-request"
    return "unexpected"


def failureJSON(
    kind: str, message: str, protocol: str, server: str, port: int, hint: str | None
) -> str:
    """
    One JSON object for a failed query: C{error} (a L{failureKind}),
    C{message} (the line C{udptime} prints without C{--json}), C{protocol},
    C{server} (the host asked, as given), C{port}, and C{hint} when there is
    one.
    """
    fields: dict[str, object] = {
        "error": kind,
        "message": message,
        "protocol": protocol,
        "server": server,
        "port": port,
    }
    if hint is not None:
        fields["hint"] = hint
    return json.dumps(fields, sort_keys=True)


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
    @ivar answered: queries the server answered so far, with a reply or a
        refusal.
    @ivar refused: whether the server refused a query.
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
        self.protocol = SERVICES[options.protocol]
        self.port: int = (
            self.protocol.standardPort if options.port is None else options.port
        )
        self.failures = 0
        self.answered = 0
        self.refused = False

    def ask(self, codec: ClientCodec, host: str | None = None) -> Deferred[None]:
        """
        Make one query with C{codec} and print its outcome.

        @param host: the server to ask (L{None}: the command line's).
        @return: a L{Deferred} that fires when the outcome is printed, and
            fails only with L{OutputFailed} or, when the query is
            cancelled, C{CancelledError}.
        """
        options = self.options
        d = query(
            self.reactor,
            options.host if host is None else host,
            codec,
            port=self.port,
            timeout=options.timeout,
            retries=options.retries,
            clock=self.clock,
        )
        return d.addCallbacks(self._printResult, self._printFailure)

    def _write(self, line: str) -> None:
        """
        Print one line on standard output.

        @raise OutputFailed: standard output cannot be written.
        """
        try:
            print(line, file=self.stdout, flush=True)
        except OSError as e:
            raise OutputFailed(e) from e

    def _printResult(self, result: QueryResult) -> None:
        """
        Print C{result}.

        @raise OutputFailed: standard output cannot be written.
        """
        self.answered += 1
        if self.options.json:
            line = resultJSON(result)
        elif self.options.interactive:
            line = shown(result.text)
        else:
            line = formatResult(result)
        self._write(line)

    def _printFailure(self, failure: Failure) -> Failure | None:
        """
        Print why a query failed.

        @raise OutputFailed: standard output cannot be written (C{--json}).
        """
        error = failure.value
        if isinstance(error, CancelledError):
            return failure  # interrupted: not a failed query
        assert error is not None
        if isinstance(error, QueryError):
            message = str(error)
        else:
            message = f"unexpected error: {error!r}"
        hint = self._hint(error)
        if isinstance(error, ServerReplyError):
            self.answered += 1
        if isinstance(error, ServerRefused):
            self.refused = True
        self._printError(failureKind(error), message, hint)
        return None

    def _hint(self, error: BaseException) -> str | None:
        """
        A hint at why the query failed, when there is more to say than the
        error does: a server that answered this run's earlier queries and
        now does not may be limiting the rate of requests it answers.
        """
        if (
            not isinstance(error, QueryTimeout)
            or isinstance(error, LookupTimeout)
            or not self.answered
        ):
            return None
        queries = "query" if self.answered == 1 else "queries"
        hint = (
            f"the server answered {self.answered} earlier {queries} of this run,"
            " so it may be limiting the rate of requests it answers"
        )
        if not self.options.interactive:
            hint += " (a longer --interval asks less often)"
        return hint

    def _printError(
        self,
        kind: str,
        message: str,
        hint: str | None = None,
        host: str | None = None,
        port: int | None = None,
    ) -> None:
        """
        Count a failed request and say why it failed: one line on standard
        error, or with C{--json} one object on standard output.

        @param kind: a L{failureKind}.
        @param host: the server asked (L{None}: the command line's).
        @param port: its port (L{None}: the one asked).
        @raise OutputFailed: standard output cannot be written (C{--json}).
        """
        self.failures += 1
        if self.options.json:
            self._write(
                failureJSON(
                    kind,
                    message,
                    self.protocol.name,
                    self.options.host if host is None else host,
                    self.port if port is None else port,
                    hint,
                )
            )
            return
        line = message if hint is None else f"{message}; {hint}"
        print(f"udptime: {shown(line)}", file=self.stderr, flush=True)

    async def run(self, stdin: int = 0) -> int:
        """
        Make the queries: C{--count} of them, C{--interval} seconds apart,
        or one per line of C{stdin} (a file descriptor) with
        C{--interactive}.

        @return: the exit status.
        @raise OutputFailed: standard output cannot be written; the queries
            stop at the first outcome that could not be printed.
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
            await askEachLine(lines, self._askWords)
        elif self.options.chain is not None:
            return await self._askChain()
        elif self.options.nts:
            await self._askWithNTS()
        else:
            await self.ask(self.options.codec)
            for _ in range(self.options.count - 1):
                if self.refused:
                    # Asking again would not help; after a Kiss-o'-Death it
                    # is what the server asked us not to do.
                    break
                await self._pause(self.options.interval)
                await self.ask(clientCodec(self.options, self.options.request))
        return EXIT_FAILED if self.failures else 0

    async def _askWithNTS(self) -> None:
        """
        The queries of C{--nts}: a key exchange with the host, then
        C{--count} queries authenticated with its keys, each with a cookie
        of the exchange or of an earlier reply, to the NTP server and port
        the exchange named.
        """
        from udptime.ntsclient import NTSClientCodec, ntsKeyExchange

        options = self.options
        kePort = NTSKE_PORT if options.nts_ke_port is None else options.nts_ke_port
        self.port = kePort
        try:
            ke = await ntsKeyExchange(
                self.reactor,
                options.host,
                kePort,
                caFile=options.nts_ca,
                timeout=options.timeout * options.retries,
            )
        except NTSKEError as e:
            self._printError(failureKind(e), str(e))
            return
        self.port = ke.port
        codec = NTSClientCodec(ke)
        for index in range(options.count):
            if self.refused:
                break
            if index:
                await self._pause(options.interval)
            await self.ask(codec, ke.server)

    async def _askChain(self) -> int:
        """
        Ask the servers of C{options.chain} in a chain (see
        L{udptime.roughtimeclient.chainQuery}), print each response, then
        whether their times can all be true; when they cannot, write the
        malfeasance report.

        @return: the exit status: 0, L{EXIT_MALFEASANCE}, or L{EXIT_FAILED}
            when a server gave no valid response or the report cannot be
            written.
        """
        options = self.options
        servers: list[ServerEntry] = options.chain
        for reason in options.roughtimeSkipped:
            print(f"udptime: skipped {shown(reason)}", file=self.stderr, flush=True)
        try:
            chain = await chainQuery(
                self.reactor,
                servers,
                timeout=options.timeout,
                tries=options.retries,
                clock=self.clock,
            )
        except ChainError as e:
            reason = e.reason
            kind = (
                "bad-reply"
                if isinstance(reason, RoughtimeVerificationError)
                else failureKind(reason)
            )
            host, port = servers[e.position % len(servers)].addresses[0]
            self._printError(kind, f"no measurement: {e}", host=host, port=port)
            return EXIT_FAILED
        for link, result in zip(chain.links, chain.results, strict=True):
            self.answered += 1
            if options.json:
                self._write(resultJSON(result.queryResult))
                continue
            line = formatResult(result.queryResult)
            if link.name != formatAddress(result.host, result.port):
                line += f"  ({shown(link.name)})"
            self._write(line)
        violations = chain.violations
        report = None
        if violations:
            report = options.roughtime_report or DEFAULT_REPORT
            try:
                writeReport(report, chain.links)
            except OSError as e:
                self._printError(
                    "failed",
                    f"cannot write the malfeasance report {report}: {e.strerror}",
                )
                return EXIT_FAILED
        if options.json:
            self._write(
                json.dumps(
                    {
                        "chain": "inconsistent" if violations else "consistent",
                        "servers": [link.name for link in chain.links],
                        "violations": violations,
                        "report": report,
                    },
                    sort_keys=True,
                )
            )
        elif not violations:
            self._write("The responses are consistent.")
        else:
            for i, j in violations:
                self._write(
                    shown(f"Inconsistent: {describeViolation(chain.links, i, j)}")
                )
            self._write(shown(f"Malfeasance report written to {report}"))
        return EXIT_MALFEASANCE if violations else 0

    async def _askWords(self, words: str) -> None:
        """
        Send the request C{words} (a line of C{--interactive}) and print the
        outcome; words the protocol cannot send are a failed request.
        """
        try:
            codec = clientCodec(self.options, words)
        except ValueError as e:
            self._printError(failureKind(e), str(e))
            return
        await self.ask(codec)

    def _pause(self, seconds: float) -> Deferred[None]:
        """
        A L{Deferred} that fires after C{seconds} (at once for 0);
        cancelling it stops the wait.
        """
        if seconds <= 0:
            return succeed(None)
        waited: Deferred[None] = Deferred(lambda _: timer.cancel())
        timer = self.reactor.callLater(seconds, waited.callback, None)
        return waited


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
