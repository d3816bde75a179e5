"""
The client's accuracy: the offset and delay udptime's own client measures
against an NTP server on loopback, beside what C{chronyd -Q} measures
against the same server in the same run.  Client and server share one
clock, so the true offset is 0, and a client whose times are exact
measures what chronyd measures::

    python bench/clientaccuracy.py                  # 3 rounds
    python bench/clientaccuracy.py --runs 1 --queries 8
    python bench/clientaccuracy.py --publish        # docs/data/clientaccuracy.json
    python bench/clientaccuracy.py --client 'before=/path/to/venv/bin/udptime'

Two servers run side by side on 127.0.0.1, pinned to the same CPU:
udptime (C{twistd udptime}, its defaults) and chronyd (C{local stratum
1}), as the accuracy benchmark starts them.  Against each, in every round,
each client runs once, at chronyd's shortest polling interval: C{chronyd
-Q} in basic mode with the accuracy benchmark's configuration, until it
has C{queries} samples that passed every test; C{udptime -P ntp --json -c
queries --interval 2^minpoll}, whose offsets and delays are its JSON
output's.  The clients run on the other CPU; the order of the servers and
of the clients alternates from round to round.  C{--client LABEL=PROGRAM}
adds another C{udptime} program (another version's) as a third client.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import accuracy
import results
from load import log
from processes import cpus, pinnedTo
from report import textReport
from run import plain
from servers import ACCURACY_SERVERS, Running, Server, chronydPath, describe

CHRONYD = "chronyd -Q"
UDPTIME = "udptime"


@dataclass(frozen=True)
class Client:
    """
    A client the benchmark measures with.

    @ivar label: its name in the results.
    @ivar program: the C{udptime} program to run, or L{None} for
        C{chronyd -Q}.
    """

    label: str
    program: str | None = None


def udptimeProgram() -> str:
    """
    The C{udptime} program of this virtualenv.
    """
    return os.path.join(os.path.dirname(sys.executable), "udptime")


def udptimeCommand(program: str, port: int, queries: int, minpoll: int) -> list[str]:
    """
    The command line of C{udptime} making C{queries} NTP queries of the
    server on C{127.0.0.1:port}, one every 2^C{minpoll} seconds, each
    printed as JSON.
    """
    return [
        program,
        "-P",
        "ntp",
        "-p",
        str(port),
        "-c",
        str(queries),
        "--interval",
        repr(2.0**minpoll),
        "--json",
        "127.0.0.1",
    ]


def udptimeSamples(
    program: str, port: int, queries: int, minpoll: int, cpuSet: set[int]
) -> tuple[list[dict[str, float]], int]:
    """
    Run C{udptime} against the server on C{127.0.0.1:port}: the offset and
    delay of each reply, and how many queries failed.
    """
    command = udptimeCommand(program, port, queries, minpoll)
    done = subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=30 + queries * (2.0**minpoll + 3),
        preexec_fn=pinnedTo(cpuSet),
    )
    return parseOutput(done.stdout, queries)


def parseOutput(output: str, queries: int) -> tuple[list[dict[str, float]], int]:
    """
    The offset and delay of each reply in C{output}, what C{udptime --json}
    printed for C{queries} queries, and how many of them gave none (a
    failure's object, a line that is not JSON, a query it never printed).
    """
    samples, failed = [], 0
    for line in output.splitlines():
        try:
            reply = json.loads(line)
        except ValueError:
            failed += 1
            continue
        if (
            not isinstance(reply, dict)
            or not isinstance(reply.get("offset"), float)
            or not isinstance(reply.get("delay"), float)
        ):
            failed += 1
            continue
        samples.append({"offset": reply["offset"], "delay": reply["delay"]})
    return samples, failed + max(0, queries - len(samples) - failed)


def chronydSamples(
    port: int, settings: accuracy.AccuracySettings, cpuSet: set[int]
) -> tuple[list[dict[str, float]], int]:
    """
    Run C{chronyd -Q} in basic mode against the server on
    C{127.0.0.1:port} until it has the samples the round wants: the offset
    and delay of each sample that passed every test (chronyd's offset is
    RFC 5905's theta, positive when the server is ahead, as udptime's),
    and how many did not.
    """
    found, _reported = accuracy.sampleRound(port, "basic", settings, cpuSet)
    accepted = [m for m in found if m.accepted]
    samples = [{"offset": m.offset, "delay": m.delay} for m in accepted]
    return samples, len(found) - len(accepted)


def runRounds(
    servers: Sequence[Server],
    clients: Sequence[Client],
    settings: accuracy.AccuracySettings,
    serverCPUs: set[int],
    clientCPUs: set[int],
) -> list[dict[str, Any]]:
    """
    Every round over every server and client, alternating their order:
    the samples, as the results file keeps them.
    """
    samples: list[dict[str, Any]] = []
    started: list[tuple[Server, Running]] = []
    try:
        for server in servers:
            started.append((server, Running(server, serverCPUs).start()))
        for number in range(settings.runs):
            order = started if number % 2 == 0 else started[::-1]
            for server, running in order:
                turn = clients if number % 2 == 0 else clients[::-1]
                for client in turn:
                    log(
                        f"client accuracy round {number + 1}/{settings.runs}: "
                        f"{client.label} against {server.label}"
                    )
                    if client.program is None:
                        found, failed = chronydSamples(
                            running.port, settings, clientCPUs
                        )
                    else:
                        found, failed = udptimeSamples(
                            client.program,
                            running.port,
                            settings.samples,
                            settings.minpoll,
                            clientCPUs,
                        )
                    where = {
                        "server": server.key,
                        "client": client.label,
                        "round": number,
                    }
                    samples += [{**where, **s} for s in found]
                    samples.append({**where, "failed": failed})
    finally:
        for _, running in started:
            running.stop()
    return samples


def summarise(
    servers: Sequence[Server],
    clients: Sequence[Client],
    samples: Sequence[dict[str, Any]],
) -> list[dict[str, Any]]:
    """
    One row per server and client: how many samples, their median
    |offset|, offset and delay (µs), the medians of each round, and the
    client's median |offset| and delay as multiples of C{chronyd -Q}'s
    against the same server.
    """
    rows = []
    for server in servers:
        mine = [s for s in samples if s["server"] == server.key]
        reference: dict[str, Any] | None = None
        for client in clients:
            measured = [s for s in mine if s["client"] == client.label and "delay" in s]
            rounds = sorted({s["round"] for s in measured})
            row: dict[str, Any] = {
                "key": f"{server.key} | {client.label}",
                "server": server.key,
                "label": server.label,
                "client": client.label,
                "samples": len(measured),
                "failed": sum(
                    s["failed"]
                    for s in mine
                    if s["client"] == client.label and "failed" in s
                ),
                **accuracy.figures(measured, ""),
                "round_medians_abs_offset_us": [
                    statistics.median(
                        abs(s["offset"]) * 1e6 for s in measured if s["round"] == n
                    )
                    for n in rounds
                ],
                "round_medians_delay_us": [
                    statistics.median(
                        s["delay"] * 1e6 for s in measured if s["round"] == n
                    )
                    for n in rounds
                ],
            }
            if client.label == CHRONYD:
                reference = row
            for figure in ("median_abs_offset_us", "median_delay_us"):
                theirs = None if reference is None else reference[figure]
                ratio = None
                if theirs and row[figure] is not None:
                    ratio = row[figure] / theirs
                row[f"{figure.removesuffix('_us')}_ratio"] = ratio
            rows.append(row)
    return rows


def parser() -> argparse.ArgumentParser:
    """
    The command line.
    """
    commands = argparse.ArgumentParser(
        prog="bench/clientaccuracy.py",
        description=plain((__doc__ or "").split("\n\n")[0]).rstrip(":"),
    )
    commands.add_argument("--runs", type=int, default=3, help="rounds (default 3)")
    commands.add_argument(
        "--queries",
        type=int,
        default=16,
        help="samples per round, server and client (default 16)",
    )
    commands.add_argument(
        "--minpoll",
        type=int,
        default=-7,
        help="polling interval of both clients, log2 seconds (default -7)",
    )
    commands.add_argument(
        "--timeout",
        type=int,
        default=10,
        help="seconds each chronyd -Q may take (default 10)",
    )
    commands.add_argument(
        "--client",
        action="append",
        default=[],
        metavar="LABEL=PROGRAM",
        help="another udptime program to measure with, e.g. another version's",
    )
    commands.add_argument(
        "--publish",
        action="store_true",
        help="also write docs/data/clientaccuracy.json",
    )
    commands.add_argument(
        "--note", help="a sentence on the conditions of the run, kept with it"
    )
    return commands


def main(argv: Sequence[str] | None = None) -> None:
    """
    Run the benchmark and write its results.
    """
    given = list(sys.argv[1:] if argv is None else argv)
    args = parser().parse_args(given)
    if args.runs < 1 or args.queries < 1 or not -7 <= args.minpoll <= 24:
        raise SystemExit(
            "bench/clientaccuracy.py: --runs and --queries must be at least 1, "
            "--minpoll from -7 to 24"
        )
    if chronydPath() is None:
        raise SystemExit(
            "bench/clientaccuracy.py: chronyd is needed "
            "(tests/install-peers.sh installs it)"
        )
    clients = [Client(CHRONYD), Client(UDPTIME, udptimeProgram())]
    for given_ in args.client:
        label, _, program = given_.partition("=")
        if not label or not program or not os.access(program, os.X_OK):
            raise SystemExit(
                f"bench/clientaccuracy.py: --client wants LABEL=PROGRAM, "
                f"an executable, not {given_!r}"
            )
        clients.append(Client(label, program))
    available = cpus()
    serverCPUs, clientCPUs = {available[-1]}, {available[0]}
    servers = [ACCURACY_SERVERS[0], ACCURACY_SERVERS[-1]]
    settings = accuracy.AccuracySettings(
        runs=args.runs,
        samples=args.queries,
        minpoll=args.minpoll,
        timeout=args.timeout,
        loadFraction=0.0,
        loadRate=None,
        inflight=1,
        capacitySeconds=0.0,
    )
    data = results.newResults(
        "clientaccuracy",
        " ".join(["bench/clientaccuracy.py", *given]),
        {
            "runs": settings.runs,
            "queries": settings.samples,
            "minpoll": settings.minpoll,
            "clients": [
                {
                    "label": CHRONYD,
                    "command": " ".join(accuracy.clientCommand(settings, "DIR/c.conf")),
                    "configuration": "; ".join(
                        accuracy.clientConfiguration(
                            "PORT", "basic", settings.minpoll, "DIR"
                        ).splitlines()
                    ),
                },
                *(
                    {
                        "label": c.label,
                        "command": " ".join(
                            udptimeCommand(
                                "udptime", 0, settings.samples, settings.minpoll
                            )
                        ).replace("-p 0", "-p PORT"),
                    }
                    for c in clients
                    if c.program is not None
                ),
            ],
            "servers": [{"key": s.key, **describe(s)} for s in servers],
            "server_cpus": sorted(serverCPUs),
            "client_cpus": sorted(clientCPUs),
        },
        args.note,
    )
    conditions = results.Conditions()
    started = time.monotonic()
    samples = runRounds(servers, clients, settings, serverCPUs, clientCPUs)
    data["conditions"] = conditions.finish()
    data["seconds"] = round(time.monotonic() - started, 1)
    data["rows"] = summarise(servers, clients, samples)
    data["samples"] = samples
    print(textReport(data))
    path = results.write(data)
    print(f"\nresults: {path}")
    if args.publish:
        print(f"published: {results.publish(data)}")


if __name__ == "__main__":
    main()
