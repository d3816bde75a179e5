"""
udptime's benchmark: udptime and the usual alternatives, side by side, on
the machine it runs on.  From the project's top directory, in the
virtualenv where udptime is installed::

    python bench/run.py                  # everything: medians of 3 rounds
    python bench/run.py --quick          # a short smoke run
    python bench/run.py throughput       # requests/s, CPU, latency
    python bench/run.py accuracy         # offsets chronyd -Q measures
    python bench/run.py report FILE...   # the tables of saved results
    python bench/run.py publish FILE...  # results for the documentation

Each run writes its results as JSON into C{bench/results/}; with
C{--publish} also into C{docs/data/}, which the documentation's
performance and accuracy pages are generated from.

The parts: L{processes} (a process tree and its CPU time, stopping by
PID), L{servers} (the servers and how each starts), L{load} (requests and
the C load generator), L{throughput} and L{accuracy} (the two
benchmarks), L{results} (the results files), L{report} and L{charts}
(tables and charts of results).
"""

from __future__ import annotations

import argparse
import re
import shlex
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import accuracy
import results
import throughput
from load import build, log
from processes import cpus
from report import goals, textReport
from servers import (
    ACCURACY_SERVERS,
    accuracyServers,
    chronydPath,
    describe,
    throughputServers,
)

COMMANDS = ("all", "throughput", "accuracy", "report", "publish")


def commonOptions() -> argparse.ArgumentParser:
    """
    The options of every command that measures.
    """
    parser = argparse.ArgumentParser(add_help=False)
    group = parser.add_argument_group("every measurement")
    group.add_argument(
        "--quick",
        action="store_true",
        help="one short round (a smoke run; numbers are not worth keeping)",
    )
    group.add_argument("--runs", type=int, default=3, help="rounds (default 3)")
    group.add_argument(
        "--only",
        nargs="*",
        help="servers whose 'protocol: label' contains one of these",
    )
    group.add_argument(
        "--publish",
        action="store_true",
        help="also write the results where the documentation reads them "
        f"({results.PUBLISHED.relative_to(results.ROOT)}/KIND.json)",
    )
    group.add_argument(
        "--note",
        help="a sentence on the conditions of the run, kept with the results",
    )
    return parser


def throughputOptions() -> argparse.ArgumentParser:
    """
    The options of the throughput benchmark.
    """
    parser = argparse.ArgumentParser(add_help=False)
    group = parser.add_argument_group("throughput")
    group.add_argument(
        "--duration", type=float, default=3.0, help="seconds per load (default 3)"
    )
    group.add_argument(
        "--warmup", type=float, default=1.0, help="seconds of warm-up (default 1)"
    )
    group.add_argument(
        "--inflight",
        type=int,
        default=64,
        help="requests outstanding in the closed loop (default 64)",
    )
    group.add_argument(
        "--rates",
        type=int,
        nargs="*",
        default=[10000, 50000],
        help="requests/s of the open loops (default 10000 50000)",
    )
    group.add_argument(
        "--workers",
        type=int,
        nargs="*",
        default=[1, 2],
        help="udptime text runs with these numbers of workers (default 1 2)",
    )
    group.add_argument(
        "--no-spin",
        dest="spin",
        action="store_false",
        help="let the pinned load generator sleep between replies",
    )
    return parser


def accuracyOptions() -> argparse.ArgumentParser:
    """
    The options of the accuracy benchmark.
    """
    parser = argparse.ArgumentParser(add_help=False)
    group = parser.add_argument_group("accuracy")
    group.add_argument(
        "--accuracy-samples",
        type=int,
        default=8,
        help="accepted samples per round, server, mode and load (default 8)",
    )
    group.add_argument(
        "--accuracy-minpoll",
        type=int,
        default=-7,
        help="chronyd's polling interval, log2 seconds (default -7, its least)",
    )
    group.add_argument(
        "--accuracy-timeout",
        type=int,
        default=10,
        help="seconds each chronyd -Q may take (default 10)",
    )
    group.add_argument(
        "--accuracy-load",
        type=float,
        default=0.5,
        help="background load as a fraction of udptime's measured capacity "
        "(default 0.5)",
    )
    group.add_argument(
        "--accuracy-rate",
        type=float,
        help="background load in requests/s (instead of --accuracy-load)",
    )
    group.add_argument(
        "--accuracy-inflight",
        type=int,
        default=64,
        help="requests outstanding when measuring the capacity (default 64)",
    )
    return parser


def plain(docstring: str | None) -> str:
    """
    A docstring without its epytext markup, for C{--help}.
    """
    return re.sub(r"[CLI]\{([^}]*)\}", r"\1", docstring or "").strip()


def parser() -> argparse.ArgumentParser:
    """
    The command line.
    """
    top = argparse.ArgumentParser(
        prog="bench/run.py",
        description=plain(__doc__),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Without a command: all.  'bench/run.py COMMAND --help' gives the "
        "options of each.",
    )
    commands = top.add_subparsers(dest="command", metavar="COMMAND")
    common, load, clock = commonOptions(), throughputOptions(), accuracyOptions()
    every = commands.add_parser(
        "all",
        parents=[common, load, clock],
        help="throughput, then accuracy (the default)",
        description="The throughput benchmark, then the accuracy benchmark, "
        "under a load of a share of the throughput udptime's NTP service "
        "reached.",
    )
    every.add_argument("--no-accuracy", action="store_true", help="throughput only")
    every.add_argument(
        "--accuracy-only", action="store_true", help="skip the throughput runs"
    )
    commands.add_parser(
        "throughput",
        parents=[common, load],
        help="requests/s, CPU per request and latency of every server",
        description=plain(throughput.__doc__),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands.add_parser(
        "accuracy",
        parents=[common, clock],
        help="offset and delay chronyd -Q measures against each NTP server",
        description=plain(accuracy.__doc__),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    report = commands.add_parser(
        "report",
        help="print the tables of results files",
        description="Print the conditions and tables of results files, and the "
        "goals when given a throughput and an accuracy file.",
    )
    report.add_argument("files", nargs="+", type=Path, metavar="FILE")
    publish = commands.add_parser(
        "publish",
        help="copy results files to where the documentation reads them",
        description="Check results files and write each as the published "
        "results of its kind.",
    )
    publish.add_argument("files", nargs="+", type=Path, metavar="FILE")
    publish.add_argument(
        "--to",
        type=Path,
        default=results.PUBLISHED,
        help=f"directory (default {results.PUBLISHED.relative_to(results.ROOT)})",
    )
    publish.add_argument(
        "--as",
        dest="name",
        metavar="NAME",
        help="publish as NAME.json instead of KIND.json (for a run of some of "
        "the servers, e.g. --only roughtime: the documentation's roughtime.json)",
    )
    return top


def parse(argv: Sequence[str]) -> argparse.Namespace:
    """
    The command line's arguments, C{all} when it names no command.
    """
    argv = list(argv)
    if not argv or (argv[0] not in COMMANDS and argv[0] not in ("-h", "--help")):
        argv.insert(0, "all")
    args = parser().parse_args(argv)
    for name, valid, what in LIMITS:
        value = getattr(args, name, None)
        if value is not None and not valid(value):
            raise SystemExit(f"bench/run.py: --{name.replace('_', '-')} must be {what}")
    if getattr(args, "quick", False):
        args.runs, args.duration, args.warmup = 1, 0.5, 0.3
    return args


# Each option's valid values: its name, a check, and what it must be.
LIMITS: tuple[tuple[str, Callable[[Any], bool], str], ...] = (
    ("runs", lambda v: v >= 1, "at least 1"),
    ("duration", lambda v: v > 0, "above 0"),
    ("warmup", lambda v: v >= 0, "at least 0"),
    ("inflight", lambda v: 1 <= v <= 65000, "from 1 to 65000"),
    ("rates", lambda v: all(r > 0 for r in v), "above 0"),
    ("workers", lambda v: all(w >= 1 for w in v), "at least 1"),
    ("accuracy_samples", lambda v: v >= 1, "at least 1"),
    ("accuracy_minpoll", lambda v: -7 <= v <= 24, "from -7 to 24"),
    ("accuracy_timeout", lambda v: v >= 1, "at least 1"),
    ("accuracy_load", lambda v: v > 0, "above 0"),
    ("accuracy_rate", lambda v: v > 0, "above 0"),
    ("accuracy_inflight", lambda v: 1 <= v <= 65000, "from 1 to 65000"),
)


def pinning() -> tuple[set[int], set[int]]:
    """
    The CPUs for servers and for the load generator: the last and the
    first this process may use.
    """
    available = cpus()
    if len(available) < 2:
        log("one CPU only: server and load share it")
    return {available[-1]}, {available[0]}


def finish(data: dict[str, Any], args: argparse.Namespace) -> None:
    """
    Write a run's results, print them, and publish them when asked.
    """
    print(textReport(data))
    path = results.write(data)
    print(f"\nresults: {path}")
    if args.publish:
        print(f"published: {results.publish(data)}")


def runThroughput(args: argparse.Namespace, command: str) -> dict[str, Any]:
    """
    The throughput benchmark: its results.
    """
    serverCPUs, loadCPUs = pinning()
    settings = throughput.ThroughputSettings(
        runs=args.runs,
        duration=args.duration,
        warmup=args.warmup,
        inflight=args.inflight,
        rates=tuple(args.rates),
        spin=args.spin,
    )
    servers = throughputServers(args.workers, args.only)
    data = results.newResults(
        "throughput",
        command,
        {
            "runs": settings.runs,
            "duration": settings.duration,
            "warmup": settings.warmup,
            "inflight": settings.inflight,
            "rates": list(settings.rates),
            "spin": settings.spin,
            "server_cpus": sorted(serverCPUs),
            "load_cpus": sorted(loadCPUs),
            "servers": [{"key": s.key, **describe(s)} for s in servers],
        },
        args.note,
    )
    conditions = results.Conditions()
    rounds = throughput.runRounds(servers, settings, serverCPUs, loadCPUs)
    data["conditions"] = conditions.finish()
    data["rows"] = throughput.summarise(rounds, servers, settings.rates)
    data["rounds"] = rounds
    return data


def runAccuracy(
    args: argparse.Namespace, command: str, capacity: float | None
) -> dict[str, Any]:
    """
    The accuracy benchmark: its results.

    @param capacity: the requests per second udptime's NTP service
        answered in the throughput run before, or L{None} to measure it.
    """
    serverCPUs, loadCPUs = pinning()
    settings = accuracy.AccuracySettings(
        runs=args.runs,
        samples=args.accuracy_samples,
        minpoll=args.accuracy_minpoll,
        timeout=args.accuracy_timeout,
        loadFraction=args.accuracy_load,
        loadRate=args.accuracy_rate,
        inflight=args.accuracy_inflight,
        capacitySeconds=0.5 if args.quick else 3.0,
    )
    if chronydPath() is None:
        raise SystemExit(
            "bench/run.py: the accuracy benchmark needs chronyd "
            "(tests/install-peers.sh installs it)"
        )
    servers = accuracyServers(args.only)
    conditions = results.Conditions()
    source = "in the throughput run before"
    if settings.loadRate is None and capacity is None:
        log("accuracy: measuring udptime's capacity")
        capacity = accuracy.capacity(
            ACCURACY_SERVERS[0], settings, serverCPUs, loadCPUs
        )
        source = "measured before the rounds"
    loadRate = (
        settings.loadRate
        if settings.loadRate is not None
        else settings.loadFraction * (capacity or 0.0)
    )
    data = results.newResults(
        "accuracy",
        command,
        {
            "runs": settings.runs,
            "samples": settings.samples,
            "minpoll": settings.minpoll,
            "timeout": settings.timeout,
            "client_command": shlex.join(
                accuracy.clientCommand(settings, "DIR/chrony.conf")
            ),
            "client_configuration": "; ".join(
                accuracy.clientConfiguration(
                    "PORT", "basic", settings.minpoll, "DIR"
                ).splitlines()
            ),
            "servers": [{"key": s.key, **describe(s)} for s in servers],
            "load_rps": loadRate,
            "load_rate_given": settings.loadRate is not None,
            "load_fraction": settings.loadFraction,
            "capacity_rps": capacity,
            "capacity_source": source,
            "server_cpus": sorted(serverCPUs),
            "load_cpus": sorted(loadCPUs),
        },
        args.note,
    )
    samples, loads = accuracy.runRounds(
        servers, settings, serverCPUs, loadCPUs, loadRate
    )
    data["conditions"] = conditions.finish()
    data["rows"] = accuracy.summarise(servers, samples, loads)
    data["samples"] = samples
    data["loads"] = loads
    return data


def measureCommand(args: argparse.Namespace, argv: Sequence[str]) -> None:
    """
    The commands that measure: C{all}, C{throughput}, C{accuracy}.
    """
    command = shlex.join(["bench/run.py", *argv])
    build()
    doThroughput = args.command == "throughput" or (
        args.command == "all" and not args.accuracy_only
    )
    doAccuracy = args.command == "accuracy" or (
        args.command == "all" and not args.no_accuracy
    )
    measured: dict[str, dict[str, Any]] = {}
    if doThroughput:
        measured["throughput"] = runThroughput(args, command)
        finish(measured["throughput"], args)
    if doAccuracy:
        capacity = None
        if "throughput" in measured:
            for row in measured["throughput"]["rows"]:
                if row["key"] == "ntp: udptime ntp":
                    capacity = row["rps"]
        measured["accuracy"] = runAccuracy(args, command, capacity)
        finish(measured["accuracy"], args)
    found = goals(measured.get("throughput"), measured.get("accuracy"))
    if found:
        print("\nGoals:")
        print("\n".join(found))


def reportCommand(args: argparse.Namespace) -> None:
    """
    C{report}: print results files.
    """
    byKind: dict[str, dict[str, Any]] = {}
    for n, path in enumerate(args.files):
        data = readOrExit(path)
        byKind[data["kind"]] = data
        if n:
            print()
        print(f"{path}:")
        print(textReport(data))
    found = goals(byKind.get("throughput"), byKind.get("accuracy"))
    if found:
        print("\nGoals:")
        print("\n".join(found))


def publishCommand(args: argparse.Namespace) -> None:
    """
    C{publish}: copy results files to where the documentation reads them.
    """
    for path in args.files:
        try:
            published = results.publish(readOrExit(path), args.to, args.name)
        except ValueError as e:
            raise SystemExit(f"bench/run.py: {e}") from None
        print(f"published: {published}")


def readOrExit(path: Path) -> dict[str, Any]:
    """
    The results file at C{path}.

    @raise SystemExit: with one line on what is wrong, when it cannot be
        read or is not a results file.
    """
    try:
        return results.read(path)
    except (OSError, ValueError) as e:
        raise SystemExit(f"bench/run.py: {e}") from None


def main(argv: Sequence[str] | None = None) -> None:
    """
    Run the command the command line names.
    """
    given = list(sys.argv[1:] if argv is None else argv)
    args = parse(given)
    if args.command == "report":
        reportCommand(args)
    elif args.command == "publish":
        publishCommand(args)
    else:
        measureCommand(args, given)


if __name__ == "__main__":
    main()
