"""
The benchmark's traffic: the requests of each protocol it speaks, and the
load generator in C (C{bench/loadgen.c}), built into C{bench/build/}, run
in the foreground for a measurement or in the background as a load, and
its report parsed.

All traffic goes to loopback, and every run is bounded in time and in
count.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from processes import pinnedTo, stop

from udptime.roughtime import buildRequest

BENCH = Path(__file__).resolve().parent
BUILD = BENCH / "build"
PROGRAMS = ("loadgen", "cserver")

NTP_REQUEST = bytes([0x23]) + bytes(47)  # LI 0, version 4, mode 3
TEXT_REQUEST = "time"
# A Roughtime request that names no server (no SRV): any server answers it.
ROUGHTIME_REQUEST = buildRequest(None).packet

# The load generator's longest run, whatever was asked: a bound on every
# load loop the benchmark starts.
LONGEST_RUN = 600.0


@dataclass(frozen=True)
class Protocol:
    """
    A protocol the benchmark speaks.

    @ivar name: its name in server rows (C{text}, C{ntp}, C{roughtime},
        C{nts}).
    @ivar probe: a request that any server of the protocol answers.
    @ivar loadgenArguments: the load generator's options that make its
        requests; none when each server's requests are made as it starts
        (NTS: a request with a cookie of that server), and given as a
        payload instead.
    """

    name: str
    probe: bytes
    loadgenArguments: tuple[str, ...]


PROTOCOLS = {
    "text": Protocol("text", TEXT_REQUEST.encode(), ("--text", TEXT_REQUEST)),
    "ntp": Protocol("ntp", NTP_REQUEST, ("--ntp",)),
    "roughtime": Protocol(
        "roughtime", ROUGHTIME_REQUEST, ("--hex", ROUGHTIME_REQUEST.hex())
    ),
    # An NTS server answers plain NTP on the same port: the probe.  The load
    # replays one NTS request, made for each server (bench/ntsrequest.py),
    # as it is: the transmit timestamp is under the authenticator.
    "nts": Protocol("nts", NTP_REQUEST, ()),
}

# What the benchmark reads from the load generator's report.
LOADGEN_FIELDS = {
    "mode": str,
    "seconds": float,
    "sent": int,
    "received": int,
    "lost": int,
    "rps": float,
    "p50_us": float,
    "p99_us": float,
    "p999_us": float,
    "cpu": float,
    "busy": float,
}
PERCENTILES = ("p50_us", "p90_us", "p99_us", "p999_us", "max_us")


def log(message: str) -> None:
    """
    Tell the person running the benchmark how it goes, on stderr.
    """
    print(message, file=sys.stderr, flush=True)


def build() -> None:
    """
    Compile the C programs into C{bench/build/} when their sources changed.

    @raise SystemExit: when there is no C compiler.
    """
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        raise SystemExit("bench needs a C compiler (cc): apt-get install gcc")
    BUILD.mkdir(exist_ok=True)
    for name in PROGRAMS:
        source, target = BENCH / f"{name}.c", BUILD / name
        if target.exists() and target.stat().st_mtime >= source.stat().st_mtime:
            continue
        log(f"building {target}")
        subprocess.run([cc, "-O2", "-Wall", "-o", str(target), str(source)], check=True)


def parseLoadgen(output: str) -> dict[str, Any]:
    """
    The report the load generator printed: one JSON object.

    @raise ValueError: when it is not a report with the fields the
        benchmark reads.
    """
    data = json.loads(output)
    if not isinstance(data, dict):
        raise ValueError(f"not a load generator report: {output!r}")
    for name, kind in LOADGEN_FIELDS.items():
        value = data.get(name)
        if kind is float and isinstance(value, int):
            data[name] = value = float(value)
        if not isinstance(value, kind):
            raise ValueError(f"load generator report without {name}: {output!r}")
    for name in PERCENTILES:
        # -1: no reply, so no latency
        if isinstance(data.get(name), (int, float)) and data[name] < 0:
            data[name] = None
    return data


def loadgenCommand(
    port: int, protocol: str, extra: Sequence[str], payload: bytes | None = None
) -> list[str]:
    """
    The command line of the load generator aimed at C{127.0.0.1:port},
    sending C{protocol}'s requests, or C{payload} when given.

    @raise ValueError: the protocol's requests are made per server, and no
        payload is given.
    """
    requests = PROTOCOLS[protocol].loadgenArguments
    if payload is not None:
        requests = ("--hex", payload.hex())
    elif not requests:
        raise ValueError(f"{protocol} requests are made for each server: no payload")
    return [str(BUILD / "loadgen"), "--port", str(port), *requests, *extra]


def runLoadgen(
    port: int,
    protocol: str,
    cpuSet: set[int] | None,
    extra: Sequence[str],
    payload: bytes | None = None,
) -> dict[str, Any]:
    """
    Run the load generator to its end (bounded by its C{--duration}) and
    return its report.

    @param cpuSet: the CPUs to pin it to, or L{None}.
    @param extra: its options beyond the target and the requests.
    @param payload: the request to send, instead of the protocol's.
    @raise RuntimeError: when it fails.
    """
    result = subprocess.run(
        loadgenCommand(port, protocol, extra, payload),
        capture_output=True,
        text=True,
        timeout=LONGEST_RUN,
        preexec_fn=pinnedTo(cpuSet),
    )
    if result.returncode:
        raise RuntimeError(f"loadgen failed: {result.stderr}")
    return parseLoadgen(result.stdout)


def closedLoop(
    port: int,
    protocol: str,
    cpuSet: set[int] | None,
    inflight: int,
    seconds: float,
    spin: bool = False,
    payload: bytes | None = None,
) -> dict[str, Any]:
    """
    Keep C{inflight} requests outstanding for C{seconds} (C{payload}, or
    C{protocol}'s requests): the report.
    """
    extra = ["--closed", str(inflight), "--duration", str(seconds), "--warmup", "0"]
    extra += ["--spin"] if spin else []
    return runLoadgen(port, protocol, cpuSet, extra, payload)


def openLoop(
    port: int,
    protocol: str,
    cpuSet: set[int] | None,
    rate: float,
    seconds: float,
    payload: bytes | None = None,
) -> dict[str, Any]:
    """
    Send C{rate} requests per second, on schedule, for C{seconds} (after
    0.2 s of warm-up; C{payload}, or C{protocol}'s requests): the report.
    """
    extra = ["--rate", str(rate), "--duration", str(seconds), "--warmup", "0.2"]
    return runLoadgen(port, protocol, cpuSet, extra, payload)


class BackgroundLoad:
    """
    An open-loop load at a fixed rate, in the background, from L{start}
    until L{stop} (or C{limit} seconds, whichever comes first).
    """

    def __init__(
        self,
        port: int,
        protocol: str,
        rate: float,
        cpuSet: set[int] | None,
        limit: float = 120.0,
    ) -> None:
        seconds = str(min(limit, LONGEST_RUN))
        self.command = loadgenCommand(
            port,
            protocol,
            ["--rate", str(rate), "--duration", seconds, "--warmup", "0"],
        )
        self.cpuSet = cpuSet
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> BackgroundLoad:
        """
        Start the load generator.
        """
        self.process = subprocess.Popen(
            self.command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            preexec_fn=pinnedTo(self.cpuSet),
        )
        return self

    def stop(self) -> dict[str, Any] | None:
        """
        Stop the load generator (C{SIGTERM}, after which it reports) and
        return its report, or L{None} when it gave none.
        """
        process = self.process
        if process is None:
            return None
        self.process = None
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        try:
            output, errors = process.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            stop(process)
            log("background load: no report")
            return None
        try:
            return parseLoadgen(output.decode())
        except ValueError:
            log(f"background load: no report ({errors.decode().strip()})")
            return None
