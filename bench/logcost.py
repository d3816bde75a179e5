"""
What C{--verbose} and requests naming many time zones cost the server, in
process: requests handed to a service's reply path one by one, replies sent
to a sink, the log written to a real file as C{twistd --logfile} writes it.
Every variant takes its turn in each round (so that the load of a shared
machine weighs on all alike); the medians over the rounds are printed.

    python bench/logcost.py [--count 20000] [--rounds 15] [--json FILE]

Variants:

  - C{quiet}, C{verbose}, C{verbose-all}: the text service answering
    L{REQUEST} from 64 clients, without C{--verbose}, with it (at most
    C{--verbose-rate} lines a second, the default), and with
    C{--verbose-rate 0} (a line per answer); CPU per answer and log bytes
    per answer;
  - C{one-zone}, C{every-zone}, C{every-zone-capped}: requests C{iso ZONE},
    for one zone, and cycling through every zone of the database without
    the cap on distinct zones per second and with the default cap (the
    requests' receive times a millisecond apart, as a thousand requests a
    second would be); CPU per request;
  - C{novel-requests}: requests that name no zone, each different from the
    others (C{hello 1}, C{hello 2}, ...), which no cache helps: what any
    client can make a request cost.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

from twisted.logger import Logger, textFileLogObserver

from udptime import text
from udptime.server import TextTimeServer, verboseLimit
from udptime.zonelimit import ZoneLimit

CLIENTS = [(f"::ffff:192.0.2.{n + 1}", 40000 + n) for n in range(64)]
"""Clients as the default dual-stack socket reports IPv4 peers."""

REQUEST = b"time @0123456789abcdef"
"""A request as udptime's client sends it, with its token."""


class Sink:
    """
    A transport that sends nothing (the replies' bytes are counted).
    """

    def __init__(self) -> None:
        self.bytes = 0

    def write(self, data: bytes, addr: Any = None) -> None:
        self.bytes += len(data)

    def getHost(self) -> Any:
        from twisted.internet.address import IPv4Address

        return IPv4Address("UDP", "127.0.0.1", 5000)


def verboseRun(mode: str, count: int, logPath: str) -> tuple[float, float]:
    """
    CPU seconds per answer and log bytes per answer of C{count} requests
    L{REQUEST} in C{mode} (C{quiet}, C{verbose} or C{verbose-all}), received
    at the real time.
    """
    server = TextTimeServer(verbose=mode != "quiet")
    if mode == "verbose-all":
        server.verboseLog = verboseLimit(0)
    with open(logPath, "w", encoding="utf-8") as logFile:
        server.log = Logger(
            namespace=TextTimeServer.log.namespace,
            observer=textFileLogObserver(logFile),
        )
        server.makeConnection(Sink())
        replies = server.replies
        assert replies is not None
        handle, tally, clock = replies.handle, replies.tally, time.time
        start = time.process_time()
        for index in range(count):
            tally(1, handle(REQUEST, CLIENTS[index & 63], clock()))
        logFile.flush()
        elapsed = time.process_time() - start
    answered = server.counters.answered
    assert answered == count, (answered, count)
    return elapsed / count, os.path.getsize(logPath) / count


def zoneRun(mode: str, count: int) -> float:
    """
    CPU seconds per request of C{count} C{iso ZONE} requests in C{mode}
    (C{one-zone}, C{every-zone}, C{every-zone-capped}; or of C{count}
    different requests naming no zone, C{novel-requests}), a millisecond
    apart.
    """
    names = sorted(text._zoneNamesByFold().values())
    if mode == "one-zone":
        names = ["Europe/Paris"]
    requests = [f"iso {name}".encode() for name in names]
    if mode == "novel-requests":
        requests = [f"hello {index}".encode() for index in range(count)]
    for name in names:
        text.lookupZone(name)  # every zone read once, as a server soon has
    server = TextTimeServer()
    server.zoneLimit = ZoneLimit() if mode == "every-zone-capped" else None
    server.makeConnection(Sink())
    replies = server.replies
    assert replies is not None
    handle, tally = replies.handle, replies.tally
    now = time.time()
    start = time.process_time()
    for index in range(count):
        request = requests[index % len(requests)]
        tally(1, handle(request, CLIENTS[index & 63], now + index / 1000))
    return (time.process_time() - start) / count


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--json", help="write the results into this file")
    options = parser.parse_args(argv)
    text.loadZoneNames()
    runs: dict[str, Callable[[str], tuple[float, float]]] = {}
    with tempfile.TemporaryDirectory(prefix="udptime-logcost-") as directory:
        logPath = os.path.join(directory, "twistd.log")
        for mode in ("quiet", "verbose", "verbose-all"):
            runs[mode] = lambda mode: verboseRun(mode, options.count, logPath)
        for mode in ("one-zone", "every-zone", "every-zone-capped", "novel-requests"):
            runs[mode] = lambda mode: (zoneRun(mode, options.count), 0.0)
        samples: dict[str, list[tuple[float, float]]] = {mode: [] for mode in runs}
        for _ in range(options.rounds):
            for mode, run in runs.items():
                samples[mode].append(run(mode))
    result: dict[str, dict[str, float]] = {}
    for mode, values in samples.items():
        cpu = sorted(value[0] * 1e6 for value in values)
        logBytes = statistics.median(value[1] for value in values)
        result[mode] = {
            "cpuMicroseconds": round(statistics.median(cpu), 2),
            "cpuLow": round(cpu[0], 2),
            "cpuHigh": round(cpu[-1], 2),
            "logBytes": round(logBytes, 1),
        }
        line = (
            f"{mode:<18}  {result[mode]['cpuMicroseconds']:7.2f} us/request"
            f" (rounds {cpu[0]:.2f}..{cpu[-1]:.2f})"
        )
        if logBytes:
            line += f"  {logBytes:7.1f} log bytes/request"
        print(line)
    if options.json:
        with open(options.json, "w", encoding="utf-8") as out:
            json.dump(
                {"count": options.count, "rounds": options.rounds, "results": result},
                out,
                indent=2,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
