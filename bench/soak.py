"""
udptime's soak run: a real C{twistd udptime --workers 2} serving text, NTP,
Time, Daytime and Echo on 127.0.0.1, with its metrics page, under a bounded
mixed load for a long time (30 minutes by default), while the memory, the
open file descriptors and the CPU time of every process, the server's
counters and the answer rate seen by polite clients are sampled.  From the
project's top directory, in the virtualenv where udptime is installed::

    python bench/soak.py                         # 30 minutes
    python bench/soak.py --duration 60 --sample 5  # a short run
    python bench/soak.py --publish               # also docs/data/soak.json

The load, every second (all of it to 127.0.0.0/8, bounded in count and
time, see L{Load}):

  - polite clients, each on its own address of 127.2.0.0/16, asking each
    service in turn, well under the rate limit: their answer rate is the
    measure of service;
  - a flood: a pool of sources in 127.3.0.0/16, one of them replaced by a
    new address every second, each sending a burst well over the
    per-client burst to one service;
  - a spread of single requests, each from a new address of 127.4.0.0/14,
    so that the rate limit tables fill up and evict;
  - garbage: random bytes, truncated NTP packets, hostile text lines;
  - forged loops: datagrams whose source is the port of another of the
    server's services (raw sockets, when the process may open them).

A worker is killed (C{SIGKILL}, by its PID) every C{--kill-every} seconds;
the supervisor starts it again.  The server runs at a lower priority
(C{nice}) and the load is kept modest, so that a soak run can share a
machine.  Nothing is asserted: the results file records every sample, and
the documentation (C{docs/security.rst}) shows them as a chart.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import re
import shlex
import signal
import socket
import struct
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import results
from processes import cpuNanoseconds, loopbackTwistd, processTree, stop

SERVICES = ("text", "ntp", "time", "daytime", "echo")
"""The services the soak run's server runs."""

PORT_OPTIONS = {
    "text": "--port",
    "ntp": "--ntp-port",
    "time": "--time-port",
    "daytime": "--daytime-port",
    "echo": "--echo-port",
}

TEXT_REQUESTS = (
    b"",
    b"unix",
    b"iso",
    b"ctime",
    b"rfc2822",
    b"iso Europe/Paris",
    b"unix America/New_York",
    b"month 7",
)

HOSTILE_TEXT = (
    b"month 13",
    b"month " + bytes(range(1, 10)),
    b"iso No/Such_Zone",
    b"\xff\xfe\xfd",
    b"x" * 600,
    b"iso " + b"A" * 200,
)

_METRIC = re.compile(r"^(udptime_[a-z_]+)(\{[^}]*\})? ([0-9.eE+-]+)$")
_KEPT = (
    "udptime_requests_total",
    "udptime_received_packets_total",
    "udptime_rate_limit_clients",
    "udptime_rate_limit_evictions_total",
    "udptime_worker_up",
    "udptime_worker_restarts_total",
    "udptime_worker_reports_dropped_total",
)


def log(message: str) -> None:
    """
    Tell the person running the soak how it goes, on stderr.
    """
    print(time.strftime("%H:%M:%S ") + message, file=sys.stderr, flush=True)


def freePort(kind: int) -> int:
    """
    A port of 127.0.0.1 that is free for sockets of C{kind} right now.
    """
    with socket.socket(socket.AF_INET, kind) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def ntpRequest() -> bytes:
    """
    An NTP client request (version 4, mode 3) with a random transmit
    timestamp.
    """
    return b"\x23" + bytes(39) + os.urandom(8)


def validRequest(service: str) -> bytes:
    """
    A valid request for C{service}.
    """
    if service == "text":
        return random.choice(TEXT_REQUESTS)
    if service == "ntp":
        return ntpRequest()
    if service == "echo":
        return os.urandom(8)
    return b""


def garbage() -> tuple[str, bytes]:
    """
    A malformed datagram and the service it is for.
    """
    service = random.choice(SERVICES)
    kind = random.randrange(3)
    if service == "ntp" and kind == 0:
        return service, ntpRequest()[: random.randrange(48)]
    if service == "ntp" and kind == 1:
        return service, bytes([random.choice((0x24, 0x25, 0x26, 0x27, 0xE3))]) + (
            os.urandom(47)
        )
    if service == "text" and kind == 0:
        return service, random.choice(HOSTILE_TEXT)
    return service, os.urandom(random.randrange(0, 700))


def udpHeader(source: tuple[str, int], target: tuple[str, int], data: bytes) -> bytes:
    """
    An IPv4 header and a UDP header (no checksum) in front of C{data}, from
    C{source} to C{target}, for a raw socket with C{IP_HDRINCL}.
    """
    length = 28 + len(data)
    ip = struct.pack(
        "!BBHHHBBH4s4s",
        0x45,
        0,
        length,
        0,
        0,
        64,
        socket.IPPROTO_UDP,
        0,
        socket.inet_aton(source[0]),
        socket.inet_aton(target[0]),
    )
    udp = struct.pack("!HHHH", source[1], target[1], 8 + len(data), 0)
    return ip + udp + data


class Load:
    """
    The soak run's load generator: non-blocking sockets on many loopback
    addresses, driven in small steps by L{step}.

    @ivar window: what was sent and answered since the last L{take}.
    """

    POLITE = 64
    """Polite clients; each asks every L{POLITE_PERIOD} seconds."""
    POLITE_PERIOD = 2.0
    FLOODERS = 32
    """Flood sources in the pool."""
    FLOOD_BURST = 48
    """Datagrams of one flood source's burst (the server's burst is 32)."""
    SPREAD = 150
    """Requests per second, each from a new address."""
    GARBAGE = 60
    """Malformed datagrams per second."""
    FORGED = 2
    """Forged loop datagrams per second."""

    def __init__(self, ports: dict[str, int]) -> None:
        self.ports = ports
        self.services = {port: name for name, port in ports.items()}
        self.polite: list[socket.socket] = []
        for n in range(self.POLITE):
            sock = self._socket(f"127.2.{n // 250}.{1 + n % 250}")
            self.polite.append(sock)
        self.politeNext = [
            time.monotonic() + n * self.POLITE_PERIOD / self.POLITE
            for n in range(self.POLITE)
        ]
        self.politeTurn = [n % len(SERVICES) for n in range(self.POLITE)]
        self.flooders = [self._socket(self._floodAddress(n)) for n in range(32)]
        self.floodAddresses = self.FLOODERS
        self.spreadAddresses = 0
        self.raw: socket.socket | None = None
        with contextlib.suppress(OSError):
            self.raw = socket.socket(
                socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW
            )
        self.totals = self._empty()
        self.window = self._empty()

    @staticmethod
    def _empty() -> dict[str, Any]:
        return {
            "polite_sent": dict.fromkeys(SERVICES, 0),
            "polite_answered": dict.fromkeys(SERVICES, 0),
            "flood_sent": 0,
            "flood_answered": 0,
            "spread_sent": 0,
            "garbage_sent": 0,
            "forged_sent": 0,
            "send_errors": 0,
        }

    @staticmethod
    def _socket(address: str) -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setblocking(False)
        sock.bind((address, 0))
        return sock

    @staticmethod
    def _floodAddress(n: int) -> str:
        return f"127.3.{(n // 250) % 250}.{1 + n % 250}"

    def _count(self, key: str, service: str | None = None, amount: int = 1) -> None:
        for record in (self.totals, self.window):
            if service is None:
                record[key] += amount
            else:
                record[key][service] += amount

    def _send(self, sock: socket.socket, data: bytes, service: str) -> bool:
        try:
            sock.sendto(data, ("127.0.0.1", self.ports[service]))
        except OSError:
            self._count("send_errors")
            return False
        return True

    def step(self, fraction: float) -> None:
        """
        Send one step's share (C{fraction} of a second) of the load, and
        read what came back.
        """
        now = time.monotonic()
        for n, sock in enumerate(self.polite):
            if self.politeNext[n] > now:
                continue
            self.politeNext[n] = now + self.POLITE_PERIOD
            service = SERVICES[self.politeTurn[n]]
            self.politeTurn[n] = (self.politeTurn[n] + 1) % len(SERVICES)
            if self._send(sock, validRequest(service), service):
                self._count("polite_sent", service)
        if random.random() < fraction:
            self._flood()
        for _ in range(self._share(self.SPREAD, fraction)):
            self._spread()
        for _ in range(self._share(self.GARBAGE, fraction)):
            service, data = garbage()
            sock = random.choice(self.flooders)
            if self._send(sock, data, service):
                self._count("garbage_sent")
        for _ in range(self._share(self.FORGED, fraction)):
            self._forge()
        self._read()

    @staticmethod
    def _share(perSecond: int, fraction: float) -> int:
        expected = perSecond * fraction
        whole = int(expected)
        return whole + (1 if random.random() < expected - whole else 0)

    def _flood(self) -> None:
        victim = random.randrange(len(self.flooders))
        self.flooders[victim].close()
        self.flooders[victim] = self._socket(self._floodAddress(self.floodAddresses))
        self.floodAddresses += 1
        sock = random.choice(self.flooders)
        service = random.choice(SERVICES)
        for _ in range(self.FLOOD_BURST):
            if self._send(sock, validRequest(service), service):
                self._count("flood_sent")

    def _spread(self) -> None:
        n = self.spreadAddresses
        self.spreadAddresses += 1
        address = f"127.{4 + (n >> 16) % 4}.{(n >> 8) % 256}.{1 + n % 254}"
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            try:
                sock.bind((address, 0))
            except OSError:
                self._count("send_errors")
                return
            service = random.choice(SERVICES)
            if self._send(sock, validRequest(service), service):
                self._count("spread_sent")

    def _forge(self) -> None:
        if self.raw is None:
            return
        source, target = random.sample([*SERVICES], 2)
        if source == "ntp":
            source = "echo"
        data = b"2026-01-01T00:00:00.000000+00:00\n" if target != "ntp" else b""
        if target == "ntp":
            data = b"\x24" + bytes(47)
        packet = udpHeader(
            ("127.0.0.1", self.ports[source]), ("127.0.0.1", self.ports[target]), data
        )
        try:
            self.raw.sendto(packet, ("127.0.0.1", 0))
        except OSError:
            self._count("send_errors")
            return
        self._count("forged_sent")

    def _read(self) -> None:
        for sock in self.polite:
            while True:
                try:
                    _, (_, port) = sock.recvfrom(2048)
                except (BlockingIOError, ConnectionRefusedError):
                    break
                service = self.services.get(port)
                if service is not None:
                    self._count("polite_answered", service)
        for sock in self.flooders:
            while True:
                try:
                    sock.recvfrom(2048)
                except (BlockingIOError, ConnectionRefusedError):
                    break
                self._count("flood_answered")

    def take(self) -> dict[str, Any]:
        """
        What was sent and answered since the last call.
        """
        window, self.window = self.window, self._empty()
        return window

    def close(self) -> None:
        """
        Close every socket.
        """
        for sock in [*self.polite, *self.flooders]:
            sock.close()
        if self.raw is not None:
            self.raw.close()


def processStatus(pid: int) -> dict[str, Any] | None:
    """
    The resident memory (kB), open descriptors and CPU time (s) of C{pid},
    or L{None} when it is gone.
    """
    try:
        with open(f"/proc/{pid}/status") as f:
            status = f.read()
        fds = len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None
    found = re.search(r"^VmRSS:\s+(\d+) kB", status, re.MULTILINE)
    return {
        "pid": pid,
        "rss_kb": int(found.group(1)) if found else None,
        "fds": fds,
        "cpu_s": round(cpuNanoseconds(pid) / 1e9, 3),
    }


def scrape(port: int) -> dict[str, float] | None:
    """
    The counters and gauges the soak keeps from the metrics page on
    C{port}, by metric name and labels; L{None} when it does not answer.
    """
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            text = r.read().decode("utf-8", "replace")
    except OSError:
        return None
    values: dict[str, float] = {}
    for line in text.splitlines():
        found = _METRIC.match(line)
        if found and found.group(1) in _KEPT:
            values[found.group(1) + (found.group(2) or "")] = float(found.group(3))
    return values


def logProblems(path: Path) -> dict[str, int]:
    """
    How many lines of the server's log at C{path} report tracebacks,
    unhandled errors or a worker that ended, and its size.
    """
    counts = {"traceback": 0, "unhandled": 0, "worker_ended": 0, "lines": 0}
    try:
        with path.open(errors="replace") as f:
            for line in f:
                counts["lines"] += 1
                if "Traceback" in line:
                    counts["traceback"] += 1
                if "Unhandled" in line:
                    counts["unhandled"] += 1
                if re.search(r"worker \d+ \(pid \d+\) ended", line):
                    counts["worker_ended"] += 1
    except OSError:
        pass
    counts["bytes"] = path.stat().st_size if path.exists() else 0
    return counts


def startServer(
    directory: Path, ports: dict[str, int], metricsPort: int
) -> tuple[subprocess.Popen[bytes], list[str], Path]:
    """
    Start the soak's C{twistd udptime --workers 2} (at this process's
    priority), logging into C{directory}.
    """
    logPath = directory / "soak-server.log"
    command = [
        *loopbackTwistd(logPath),
        "--workers=2",
        f"--metrics-port={metricsPort}",
        "--max-clients=4096",
        "--summary-interval=60",
    ]
    for name, port in ports.items():
        command.append(f"{PORT_OPTIONS[name]}={port}")
    process = subprocess.Popen(
        command,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return process, command, logPath


def waitForWorkers(process: subprocess.Popen[bytes], count: int, limit: float) -> None:
    """
    Wait until C{process} has C{count} children, for at most C{limit}
    seconds.

    @raise SystemExit: it did not.
    """
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"the server exited ({process.returncode})")
        if len(processTree(process.pid)) >= 1 + count:
            return
        time.sleep(0.2)
    raise SystemExit("the server's workers did not start")


def soak(arguments: argparse.Namespace) -> dict[str, Any]:
    """
    Run the soak and return its results.
    """
    directory = results.RESULTS
    directory.mkdir(parents=True, exist_ok=True)
    ports = {name: freePort(socket.SOCK_DGRAM) for name in SERVICES}
    metricsPort = freePort(socket.SOCK_STREAM)
    settings = {
        "duration_s": arguments.duration,
        "sample_s": arguments.sample,
        "kill_every_s": arguments.kill_every,
        "niceness": arguments.nice,
        "polite_clients": Load.POLITE,
        "polite_period_s": Load.POLITE_PERIOD,
        "flood_burst": Load.FLOOD_BURST,
        "spread_per_s": Load.SPREAD,
        "garbage_per_s": Load.GARBAGE,
        "forged_per_s": Load.FORGED,
    }
    data = results.newResults(
        "soak", shlex.join([sys.argv[0], *sys.argv[1:]]), settings, arguments.note
    )
    conditions = results.Conditions()
    process, command, logPath = startServer(directory, ports, metricsPort)
    data["server_command"] = shlex.join(command[1:])
    samples: list[dict[str, Any]] = []
    kills: list[dict[str, Any]] = []
    load = Load(ports)
    try:
        waitForWorkers(process, 2, 60.0)
        log(f"server pid {process.pid}, ports {ports}, metrics {metricsPort}")
        start = time.monotonic()
        nextSample = start
        nextKill = start + arguments.kill_every
        step = 0.05
        while True:
            now = time.monotonic()
            elapsed = now - start
            if now >= nextSample:
                samples.append(sample(process.pid, metricsPort, logPath, load, elapsed))
                last = samples[-1]
                log(
                    f"{elapsed:7.0f} s: rss {[p['rss_kb'] for p in last['processes']]}"
                    f" kB, fds {[p['fds'] for p in last['processes']]},"
                    f" polite answered {last['polite_answer_rate']}"
                )
                nextSample += arguments.sample
            if elapsed >= arguments.duration:
                break
            if arguments.kill_every and now >= nextKill:
                kills.append(killWorker(process.pid, elapsed, len(kills)))
                nextKill += arguments.kill_every
            if process.poll() is not None:
                raise SystemExit(f"the server exited ({process.returncode})")
            load.step(step)
            time.sleep(max(0.0, step - (time.monotonic() - now)))
    finally:
        load.close()
        stop(process)
    data["results"] = {
        "ports": ports,
        "samples": samples,
        "kills": kills,
        "log": logProblems(logPath),
        "load_totals": load.totals,
        "summary": summarise(samples),
        "exit_status": process.returncode,
    }
    data["conditions"] = conditions.finish()
    return data


def killWorker(supervisor: int, elapsed: float, turn: int) -> dict[str, Any]:
    """
    Kill one worker of C{supervisor} (C{SIGKILL}, by PID), taking turns.
    """
    workers = sorted(processTree(supervisor)[1:])
    if not workers:
        return {"t": round(elapsed, 1), "pid": None}
    victim = workers[turn % len(workers)]
    with contextlib.suppress(ProcessLookupError):
        os.kill(victim, signal.SIGKILL)
    log(f"killed worker pid {victim}")
    return {"t": round(elapsed, 1), "pid": victim}


def sample(
    supervisor: int, metricsPort: int, logPath: Path, load: Load, elapsed: float
) -> dict[str, Any]:
    """
    One sample of the processes, the counters, the log and the load.
    """
    processes = [
        status for pid in processTree(supervisor) if (status := processStatus(pid))
    ]
    window = load.take()
    sent = sum(window["polite_sent"].values())
    answered = sum(window["polite_answered"].values())
    return {
        "t": round(elapsed, 1),
        "processes": processes,
        "rss_kb_total": sum(p["rss_kb"] or 0 for p in processes),
        "fds_total": sum(p["fds"] for p in processes),
        "metrics": scrape(metricsPort),
        "log": logProblems(logPath),
        "load": window,
        "polite_answer_rate": round(answered / sent, 4) if sent else None,
    }


def summarise(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """
    The figures the documentation quotes: memory and descriptors after the
    first minutes and at the end, and the polite clients' answer rates.
    """
    if not samples:
        return {}
    settled = [s for s in samples if s["t"] >= 300] or samples
    rates = [s["polite_answer_rate"] for s in samples[1:]]
    present = sorted(r for r in rates if r is not None)

    def supervisorAndWorkers(s: dict[str, Any]) -> list[int]:
        return [p["rss_kb"] or 0 for p in s["processes"]]

    return {
        "rss_kb_total_settled_first": settled[0]["rss_kb_total"],
        "rss_kb_total_last": samples[-1]["rss_kb_total"],
        "rss_kb_total_max": max(s["rss_kb_total"] for s in samples),
        "rss_kb_each_last": supervisorAndWorkers(samples[-1]),
        "fds_total_first": samples[0]["fds_total"],
        "fds_total_last": samples[-1]["fds_total"],
        "fds_total_max": max(s["fds_total"] for s in samples),
        "polite_answer_rate_median": present[len(present) // 2] if present else None,
        "polite_answer_rate_min": present[0] if present else None,
        "samples": len(samples),
    }


def main(argv: list[str] | None = None) -> int:
    """
    The command line.
    """
    parser = argparse.ArgumentParser(
        prog="bench/soak.py",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
    )
    parser.add_argument(
        "--duration", type=float, default=1800.0, help="seconds (default 1800)"
    )
    parser.add_argument(
        "--sample", type=float, default=15.0, help="seconds between samples"
    )
    parser.add_argument(
        "--kill-every",
        type=float,
        default=300.0,
        help="seconds between two worker kills (default 300; 0: none)",
    )
    parser.add_argument(
        "--nice",
        type=int,
        default=10,
        help="the niceness of the soak and its server (default 10)",
    )
    parser.add_argument("--note", help="a sentence on the conditions of the run")
    parser.add_argument(
        "--publish",
        action="store_true",
        help="also write the results to docs/data/soak.json",
    )
    arguments = parser.parse_args(argv)
    if arguments.duration <= 0 or arguments.sample <= 0:
        parser.error("--duration and --sample must be positive")
    os.nice(arguments.nice)
    signal.signal(signal.SIGTERM, stopped)
    data = soak(arguments)
    path = results.write(data)
    log(f"results in {path}")
    if arguments.publish:
        published = results.dump(data, results.publishedPath("soak"))
        log(f"published as {published}")
    summary = data["results"]["summary"]
    log(f"summary: {summary}")
    return 0


def stopped(number: int, frame: object) -> None:
    """
    On C{SIGTERM}, stop the soak as Ctrl-C would: its server is stopped.
    """
    raise KeyboardInterrupt


if __name__ == "__main__":
    sys.exit(main())
