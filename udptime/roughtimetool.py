"""
The C{udptime-roughtime} command: Roughtime keys, queries, chains and
malfeasance reports.

  - C{udptime-roughtime keygen FILE}: make a long-term key, write its seed
    to the new file FILE (mode 0600), print its public key;
  - C{udptime-roughtime public-key FILE}: print a key file's public key;
  - C{udptime-roughtime query HOST [PORT] --public-key KEY}: ask one server;
  - C{udptime-roughtime chain SERVERLIST}: ask the servers of a server list
    in a chain, twice over, and write a malfeasance report when their
    answers cannot all be true;
  - C{udptime-roughtime verify-report FILE}: check a malfeasance report.
"""

from __future__ import annotations

import argparse
import base64
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

from twisted.internet import task

from udptime.cli import EXIT_MALFEASANCE

# The udptime command's checks of numbers, for the same messages.
from udptime.cli import _atLeastOne as atLeastOne
from udptime.cli import _port as portNumber
from udptime.cli import _positive as positiveNumber
from udptime.reading import QueryError
from udptime.roughtime import (
    DEFAULT_CLIENT_VERSIONS,
    ROUGHTIME_PORT,
    VERSIONS,
    RoughtimeVerificationError,
    versionName,
)
from udptime.roughtimechain import (
    DEFAULT_REPORT,
    ReportError,
    ServerEntry,
    ServerListError,
    describeViolation,
    readServerList,
    verifyReport,
    writeReport,
)
from udptime.roughtimeclient import ChainError, chainQuery, describe, roughtimeQuery
from udptime.roughtimekeys import (
    KeyFileError,
    loadLongTermKey,
    parsePublicKey,
    publicKeyText,
    writeNewKey,
)

EXIT_FAILED = 1
"""Exit status of a command that failed."""
EXIT_NOTHING_PROVEN = 2
"""Exit status of C{verify-report} for a valid report that proves nothing."""


class _Failed(Exception):
    """
    A command failed; the message is the one line said on stderr.
    """


def _publicKey(text: str) -> bytes:
    try:
        return parsePublicKey(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _versions(text: str) -> tuple[int, ...]:
    numbers = []
    for part in text.split(","):
        try:
            number = int(part, 0)
        except ValueError:
            raise argparse.ArgumentTypeError(f"bad version {part!r}") from None
        if number not in VERSIONS:
            known = ", ".join(f"{n:#x} ({versionName(n)})" for n in sorted(VERSIONS))
            raise argparse.ArgumentTypeError(
                f"version {part} is not spoken here; spoken: {known}"
            )
        numbers.append(number)
    return tuple(numbers)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="udptime-roughtime",
        description="Roughtime (RFC 10049) keys, queries and malfeasance reports.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    keygen = commands.add_parser(
        "keygen", help="make a long-term key and print its public key"
    )
    keygen.add_argument("file", help="the new key file (never overwritten)")
    public = commands.add_parser("public-key", help="print a key file's public key")
    public.add_argument("file")

    def timing(command: argparse.ArgumentParser) -> None:
        command.add_argument(
            "--timeout",
            type=positiveNumber,
            default=1.0,
            help="seconds to wait for the first try; later tries wait 1.5 times"
            " longer than the one before (default: 1)",
        )
        command.add_argument(
            "--tries", type=atLeastOne, default=3, help="requests to send (default: 3)"
        )

    query = commands.add_parser("query", help="ask one server")
    query.add_argument("host")
    query.add_argument("port", nargs="?", type=portNumber, default=ROUGHTIME_PORT)
    query.add_argument(
        "--public-key", type=_publicKey, required=True, help="its long-term key"
    )
    query.add_argument(
        "--versions",
        type=_versions,
        default=DEFAULT_CLIENT_VERSIONS,
        help="versions to offer, comma-separated (default: 1,0x8000000c)",
    )
    timing(query)
    chain = commands.add_parser(
        "chain", help="ask a server list's servers in a chain, twice over"
    )
    chain.add_argument("serverList", metavar="SERVERLIST")
    chain.add_argument(
        "--server",
        action="append",
        dest="servers",
        metavar="NAME",
        help="ask this server (repeat, in order; default: every server listed)",
    )
    chain.add_argument("--rounds", type=atLeastOne, default=2, help="default: 2")
    chain.add_argument(
        "--report",
        default=DEFAULT_REPORT,
        help=f"where to write a malfeasance report (default: {DEFAULT_REPORT})",
    )
    timing(chain)
    verify = commands.add_parser("verify-report", help="check a malfeasance report")
    verify.add_argument("file")
    return parser


def main(argv: Sequence[str] | None = None) -> NoReturn:
    """
    Run C{udptime-roughtime} with C{argv} (default: the command line), and
    exit.
    """
    options = _parser().parse_args(argv)
    try:
        code = _run(options)
    except _Failed as e:
        print(f"udptime-roughtime: {e}", file=sys.stderr)
        sys.exit(EXIT_FAILED)
    sys.exit(code)


def _run(options: argparse.Namespace) -> int:
    command: str = options.command
    if command == "keygen":
        try:
            key = writeNewKey(options.file)
        except OSError as e:
            raise _Failed(f"cannot write {options.file}: {e.strerror}") from None
        print(f"Public key (base64): {publicKeyText(key)}")
        return 0
    if command == "public-key":
        try:
            print(publicKeyText(loadLongTermKey(options.file)))
        except OSError as e:
            raise _Failed(f"cannot read {options.file}: {e.strerror}") from None
        except KeyFileError as e:
            raise _Failed(str(e)) from None
        return 0
    if command == "verify-report":
        return _verifyReport(options.file)
    if command == "chain":
        servers = _chainServers(options.serverList, options.servers)
        return _react(_chain, options, servers)
    return _react(_query, options)


def _react(function: Any, *arguments: Any) -> NoReturn:
    """
    Run C{function(reactor, *arguments)} on the reactor and exit with the
    status it returns.
    """

    async def main(reactor: Any) -> None:
        raise SystemExit(await function(reactor, *arguments))

    task.react(main)


async def _query(reactor: Any, options: argparse.Namespace) -> int:
    try:
        result = await roughtimeQuery(
            reactor,
            options.host,
            options.port,
            options.public_key,
            versions=options.versions,
            timeout=options.timeout,
            tries=options.tries,
        )
    except RoughtimeVerificationError as e:
        print(f"udptime-roughtime: rejected: {e.reason}: {e}", file=sys.stderr)
        return EXIT_FAILED
    except QueryError as e:
        print(f"udptime-roughtime: {e}", file=sys.stderr)
        return EXIT_FAILED
    print(
        f"{describe(result.verified)}, delay {result.delay * 1000:.1f} ms,"
        f" offset {result.offset:+.1f} s"
    )
    return 0


def _chainServers(path: str, names: list[str] | None) -> list[ServerEntry]:
    try:
        servers, skipped = readServerList(path)
    except ServerListError as e:
        raise _Failed(str(e)) from None
    for reason in skipped:
        print(f"udptime-roughtime: skipped {reason}", file=sys.stderr)
    if names:
        byName = {server.name: server for server in servers}
        unknown = [name for name in names if name not in byName]
        if unknown:
            raise _Failed(f"{path}: no usable server named {', '.join(unknown)}")
        servers = [byName[name] for name in names]
    if not servers:
        raise _Failed(f"{path}: no usable server")
    return servers


async def _chain(
    reactor: Any, options: argparse.Namespace, servers: list[ServerEntry]
) -> int:
    try:
        chain = await chainQuery(
            reactor,
            servers,
            rounds=options.rounds,
            timeout=options.timeout,
            tries=options.tries,
        )
    except ChainError as e:
        print(f"udptime-roughtime: no measurement: {e}", file=sys.stderr)
        return EXIT_FAILED
    for link, result in zip(chain.links, chain.results, strict=True):
        print(f"{link.name}: {describe(link.verified)}, offset {result.offset:+.1f} s")
    violations = chain.violations
    if not violations:
        print("The responses are consistent.")
        return 0
    for i, j in violations:
        print(f"Inconsistent: {describeViolation(chain.links, i, j)}")
    try:
        writeReport(options.report, chain.links)
    except OSError as e:
        print(
            f"udptime-roughtime: cannot write {options.report}: {e.strerror}",
            file=sys.stderr,
        )
        return EXIT_FAILED
    print(f"Malfeasance report written to {options.report}")
    return EXIT_MALFEASANCE


def _verifyReport(path: str) -> int:
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise _Failed(f"cannot read {path}: {e.strerror}") from None
    try:
        verdict = verifyReport(data)
    except ReportError as e:
        raise _Failed(f"{path}: invalid report: {e}") from None
    for index, link in enumerate(verdict.links):
        key = base64.b64encode(link.publicKey).decode("ascii")
        print(f"{index}: {key}: {describe(link.verified)}")
    if not verdict.provesMalfeasance:
        print("Valid and chained; the times are consistent: no malfeasance shown.")
        return EXIT_NOTHING_PROVEN
    for i, j in verdict.violations:
        earlier, later = verdict.links[i].verified, verdict.links[j].verified
        print(
            f"Proven: response {i} (earliest {earlier.midpoint - earlier.radius})"
            f" came before response {j} (latest {later.midpoint + later.radius}):"
            " at least one of their servers signed a wrong time."
        )
    return 0
