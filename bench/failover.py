"""
What a worker's death costs its clients: a real C{twistd udptime --workers
2} on 127.0.0.1, clients on many loopback addresses asking its text service
every few tens of milliseconds (each request with its own token), and one
worker killed (C{SIGKILL}, by its PID) in the middle.  From the project's
top directory, in the virtualenv where udptime is installed::

    python bench/failover.py                 # 3 rounds
    python bench/failover.py --rounds 5 --json failover.json

For each client whose requests were late or lost after the kill (the
killed worker's clients), it reports how long after the kill the first
request answered promptly was sent (the client's outage), the longest wait
for an answer, and how many requests were never answered.  Nothing is
asserted; the numbers go to stdout and, with C{--json}, to a file.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import selectors
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from processes import loopbackTwistd, stop

PROMPT = 0.2
"""An answer within this many seconds is prompt."""

_STARTED = re.compile(r"worker (\d+) started \(pid (\d+)\)")


def freePort() -> int:
    """
    A UDP port of 127.0.0.1 free right now.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def workerPids(logPath: Path) -> dict[int, int]:
    """
    The current PID of each worker, from the supervisor's log.
    """
    pids: dict[int, int] = {}
    for index, pid in _STARTED.findall(logPath.read_text(errors="replace")):
        pids[int(index)] = int(pid)
    return pids


def waitUntil(check: Any, limit: float, what: str) -> Any:
    """
    Poll C{check} until it returns something true, for at most C{limit}
    seconds.

    @raise SystemExit: it did not.
    """
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    raise SystemExit(f"timed out waiting for {what}")


def oneRound(
    clients: int, period: float, before: float, after: float
) -> dict[str, Any]:
    """
    One run: start the server, load it, kill worker 1, keep loading, stop.
    """
    port = freePort()
    directory = Path(tempfile.mkdtemp(prefix="udptime-failover-"))
    logPath = directory / "server.log"
    server = subprocess.Popen(
        [
            *loopbackTwistd(logPath),
            f"--port={port}",
            "--workers=2",
            "--rate=0",
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    selector = selectors.DefaultSelector()
    sockets = []
    try:
        waitUntil(
            lambda: (
                logPath.exists()
                and logPath.read_text(errors="replace").count("service listening on")
                >= 3
            ),
            60,
            "the workers to listen",
        )
        for n in range(clients):
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.setblocking(False)
            sock.bind((f"127.5.{n // 250}.{1 + n % 250}", 0))
            selector.register(sock, selectors.EVENT_READ, n)
            sockets.append(sock)
        sent: dict[tuple[int, int], float] = {}
        answered: dict[tuple[int, int], float] = {}
        start = time.monotonic()
        killedAt: float | None = None
        victim = workerPids(logPath)[1]
        sequence = 0
        nextSend = start
        while time.monotonic() < start + before + after:
            now = time.monotonic()
            if killedAt is None and now >= start + before:
                os.kill(victim, signal.SIGKILL)
                killedAt = time.monotonic()
            if now >= nextSend:
                sequence += 1
                for n, sock in enumerate(sockets):
                    sock.sendto(f"unix @{n}x{sequence}".encode(), ("127.0.0.1", port))
                    sent[n, sequence] = time.monotonic()
                nextSend += period
            for key, _ in selector.select(timeout=max(0.0, nextSend - now)):
                reader = key.fileobj
                assert isinstance(reader, socket.socket)
                while True:
                    try:
                        data = reader.recv(512)
                    except BlockingIOError:
                        break
                    found = re.search(rb"@(\d+)x(\d+)\s*$", data)
                    if found:
                        answered[int(found.group(1)), int(found.group(2))] = (
                            time.monotonic()
                        )
        assert killedAt is not None
        return summariseRound(sent, answered, killedAt, clients, logPath)
    finally:
        for sock in sockets:
            sock.close()
        stop(server)


def summariseRound(
    sent: dict[tuple[int, int], float],
    answered: dict[tuple[int, int], float],
    killedAt: float,
    clients: int,
    logPath: Path,
) -> dict[str, Any]:
    """
    The outage of the clients hurt by the kill.
    """
    outages: list[float] = []
    waits: list[float] = []
    lost = 0
    affected = 0
    for n in range(clients):
        mine = sorted((s, key) for key, s in sent.items() if key[0] == n)
        late = [
            (s, key)
            for s, key in mine
            if s >= killedAt - PROMPT
            and (key not in answered or answered[key] - s > PROMPT)
        ]
        if not late:
            continue
        affected += 1
        lost += sum(1 for _, key in late if key not in answered)
        waits.extend(answered[key] - s for s, key in late if key in answered)
        prompt = [
            s
            for s, key in mine
            if s > late[0][0] and key in answered and answered[key] - s <= PROMPT
        ]
        outages.append((prompt[0] if prompt else mine[-1][0]) - killedAt)
    log = logPath.read_text(errors="replace")
    return {
        "clients": clients,
        "affected_clients": affected,
        "outage_s_max": round(max(outages), 3) if outages else 0.0,
        "outage_s_median": round(statistics.median(outages), 3) if outages else 0.0,
        "longest_wait_s": round(max(waits), 3) if waits else None,
        "late_answers": len(waits),
        "lost": lost,
        "requests": len(sent),
        "resteered": "served by the other workers" in log,
    }


def main(argv: list[str] | None = None) -> int:
    """
    The command line.
    """
    parser = argparse.ArgumentParser(prog="bench/failover.py")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument(
        "--period", type=float, default=0.05, help="seconds between requests"
    )
    parser.add_argument("--json", type=Path, help="write the rounds here")
    arguments = parser.parse_args(argv)
    rounds = []
    for n in range(arguments.rounds):
        result = oneRound(arguments.clients, arguments.period, 3.0, 5.0)
        print(f"round {n + 1}: {json.dumps(result)}", flush=True)
        rounds.append(result)
    if arguments.json is not None:
        arguments.json.write_text(json.dumps(rounds, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
