"""
udptime's benchmark: udptime and the usual alternatives, side by side.

One command, from the project's top directory, in the virtualenv where
udptime is installed::

    python bench/run.py            # the full run: medians of 3 runs
    python bench/run.py --quick    # a short smoke run (about two minutes)

It builds a small load generator in C (C{bench/build/}, with C{cc}), then,
for each server in turn, in the same run:

  - starts it on a free loopback port, pinned to one core (the load
    generator gets another);
  - drives it closed-loop with C{--inflight} requests outstanding (64) for
    C{--duration} seconds (throughput, and server CPU per request read from
    C{/proc/PID/task/*/schedstat}, split between user space and the kernel
    by C{/proc/PID/stat}); on its own core the load generator
    polls for replies rather than sleeping (C{--no-spin}: it sleeps);
  - drives it open-loop at each of C{--rates} requests per second (latency
    percentiles from send to the kernel's receive timestamp of the reply,
    and loss).

The servers: udptime's text and NTP services (one process, every policy on:
per-client rate limits set above the offered load so that every request is
checked and none refused, the global cap, counters), udptime with
C{--workers}, a bare Twisted L{DatagramProtocol}, asyncio (and uvloop when
installed), the classic blocking C{recvfrom}/C{sendto} loop, chronyd for NTP
when installed, and a C server batching with C{recvmmsg} as the ceiling.
Runs are interleaved (every server once, then again) and the table shows
medians.  Then, unless C{--no-accuracy}, it measures the time offset that
an NTP client sees against udptime (with and without kernel receive
timestamps) and against chronyd while each is under heavy load.

Results go to stdout and, as JSON, to C{bench/results/}.
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import json
import os
import re
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
BUILD = BENCH / "build"
RESULTS = BENCH / "results"
PROGRAMS = ("loadgen", "cserver")

TEXT_REQUEST = "time"
NTP_REQUEST = bytes([0x23]) + bytes(47)  # LI 0, version 4, mode 3

# Every udptime measurement keeps the whole admission policy on: per-client
# limits far above what one load generator address sends (so every request
# is checked and none is refused), a global cap above any rate reached.
UDPTIME_POLICY = ["--rate", "1000000", "--burst", "100000", "--global-rate", "1e8"]


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# --- building -------------------------------------------------------------


def build() -> None:
    """
    Compile the C programs into bench/build/ when their sources changed.
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


# --- processes and CPU ------------------------------------------------------


def cpus() -> list[int]:
    return sorted(os.sched_getaffinity(0))


def statFields(path: str) -> list[str] | None:
    """
    The fields of the C{/proc/PID/stat} file at C{path} from the third
    (the state) on, or L{None} when the process is gone.
    """
    try:
        with open(path) as f:
            return f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None


def processTree(pid: int) -> list[int]:
    """
    C{pid} and its descendants.
    """
    parents: dict[int, list[int]] = {}
    for stat in glob.glob("/proc/[0-9]*/stat"):
        fields = statFields(stat)
        if fields is None:
            continue
        child = int(stat.split("/")[2])
        parents.setdefault(int(fields[1]), []).append(child)
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo.extend(parents.get(current, []))
    return tree


def cpuNanoseconds(pid: int) -> int:
    """
    CPU time used so far by the threads of C{pid}, in nanoseconds.
    """
    total = 0
    for path in glob.glob(f"/proc/{pid}/task/*/schedstat"):
        try:
            with open(path) as f:
                total += int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            continue
    return total


def treeCPU(pid: int) -> int:
    return sum(cpuNanoseconds(p) for p in processTree(pid))


def userAndKernel(pid: int) -> tuple[float, float]:
    """
    The user and kernel CPU time (seconds) used so far by C{pid} and its
    descendants, from the C{utime} and C{stime} of C{/proc/PID/stat}
    (counted in clock ticks, so coarser than L{treeCPU}).
    """
    tick = os.sysconf("SC_CLK_TCK")
    user = kernel = 0
    for each in processTree(pid):
        fields = statFields(f"/proc/{each}/stat")
        if fields is None:
            continue
        user += int(fields[11])
        kernel += int(fields[12])
    return user / tick, kernel / tick


def freePort() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def probe(port: int, protocol: str, timeout: float) -> bool:
    """
    Whether the server on C{port} answers a request within C{timeout}.
    """
    payload = NTP_REQUEST if protocol == "ntp" else TEXT_REQUEST.encode()
    deadline = time.monotonic() + timeout
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        while time.monotonic() < deadline:
            sock.sendto(payload, ("127.0.0.1", port))
            sock.settimeout(0.1)
            try:
                sock.recvfrom(2048)
            except TimeoutError:
                continue
            return True
    return False


# --- servers ----------------------------------------------------------------


@dataclass
class Server:
    """
    A server to benchmark.

    @ivar label: its name in the table.
    @ivar protocol: C{text} or C{ntp}.
    @ivar kind: C{udptime}, C{python} (bench/references.py), C{c} or
        C{chronyd}.
    @ivar arguments: extra arguments (udptime options, or the reference's
        kind).
    @ivar workers: udptime worker processes (0: serve in one process).
    """

    label: str
    protocol: str
    kind: str
    arguments: list[str] = field(default_factory=list)
    workers: int = 0

    @property
    def pinned(self) -> bool:
        return self.workers == 0


class Running:
    """
    A started server: its process, port and directory.
    """

    def __init__(self, server: Server, serverCPUs: set[int]) -> None:
        self.server = server
        self.port = freePort()
        self.directory = tempfile.mkdtemp(prefix="udptime-bench-")
        self.logPath = os.path.join(self.directory, "server.log")
        self.serverCPUs = serverCPUs
        self.process: subprocess.Popen[bytes] | None = None

    def command(self) -> list[str]:
        server, port = self.server, str(self.port)
        if server.kind == "udptime":
            twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
            portArgs = (
                ["--port", port]
                if server.protocol == "text"
                else ["--port", "0", "--ntp-port", port, "--local-stratum", "10"]
            )
            workers = ["--workers", str(server.workers)] if server.workers else []
            return [
                twistd,
                "-n",
                "--pidfile=",
                f"--logfile={self.logPath}",
                "udptime",
                *portArgs,
                "--interface",
                "127.0.0.1",
                "--timezone",
                "UTC",
                *UDPTIME_POLICY,
                *workers,
                *server.arguments,
            ]
        if server.kind == "python":
            script = str(BENCH / "references.py")
            return [sys.executable, script, *server.arguments, server.protocol, port]
        if server.kind == "c":
            return [str(BUILD / "cserver"), server.protocol, port]
        if server.kind == "chronyd":
            conf = os.path.join(self.directory, "chrony.conf")
            os.chmod(self.directory, 0o755)
            with open(conf, "w") as f:
                f.write(
                    f"port {port}\n"
                    "bindaddress 127.0.0.1\n"
                    "allow 127.0.0.0/8\n"
                    "local stratum 10\n"
                    "cmdport 0\n"
                    f"pidfile {self.directory}/chronyd.pid\n"
                )
            return [chronydPath() or "chronyd", "-d", "-x", "-f", conf]
        raise ValueError(server.kind)

    def start(self) -> Running:
        cpusToUse = self.serverCPUs

        def pin() -> None:
            os.sched_setaffinity(0, cpusToUse)

        with open(os.path.join(self.directory, "stdout"), "wb") as output:
            self.process = subprocess.Popen(
                self.command(),
                cwd=self.directory,
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                preexec_fn=pin,
            )
        if not probe(self.port, self.server.protocol, 20.0):
            printed = self.output()
            self.stop()
            raise RuntimeError(f"{self.server.label} did not answer:\n{printed}")
        if self.server.workers:
            self.waitForLog("service listening on", 1 + self.server.workers, 20.0)
        return self

    def waitForLog(self, text: str, count: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.log().count(text) >= count:
                return
            time.sleep(0.05)
        raise RuntimeError(f"{self.server.label}: no {count} x {text!r}:\n{self.log()}")

    def log(self) -> str:
        with contextlib.suppress(OSError), open(self.logPath, errors="replace") as f:
            return f.read()
        return ""

    def output(self) -> str:
        path = os.path.join(self.directory, "stdout")
        with contextlib.suppress(OSError), open(path, errors="replace") as f:
            return f.read() + self.log()
        return self.log()

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def stop(self) -> None:
        process = self.process
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                for pid in reversed(processTree(process.pid)):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                process.wait()
        shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> Running:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def chronydPath() -> str | None:
    for candidate in ("chronyd", "/usr/sbin/chronyd", "/sbin/chronyd"):
        found = shutil.which(candidate)
        if found:
            return found
    return None


def hasUvloop() -> bool:
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return False
    return True


def servers(args: argparse.Namespace) -> list[Server]:
    """
    Every server of the run, udptime first for each protocol.
    """
    pythonKinds = [("twisted", "Twisted DatagramProtocol"), ("asyncio", "asyncio")]
    if hasUvloop():
        pythonKinds.append(("uvloop", "uvloop"))
    pythonKinds.append(("blocking", "blocking recvfrom loop"))
    chosen: list[Server] = []
    for protocol in ("text", "ntp"):
        chosen.append(Server(f"udptime {protocol}", protocol, "udptime"))
        if protocol == "ntp":
            chosen.append(
                Server(
                    "udptime ntp, no kernel ts",
                    protocol,
                    "udptime",
                    ["--no-kernel-timestamps"],
                )
            )
            chosen.append(
                Server(
                    "udptime ntp, kernel ts",
                    protocol,
                    "udptime",
                    ["--kernel-timestamps"],
                )
            )
        for kind, label in pythonKinds:
            chosen.append(Server(label, protocol, "python", [kind]))
        if protocol == "ntp" and chronydPath():
            chosen.append(Server("chronyd", protocol, "chronyd"))
        chosen.append(Server("C recvmmsg server", protocol, "c"))
    for workers in args.workers:
        chosen.append(
            Server(f"udptime text, {workers} workers", "text", "udptime", [], workers)
        )
    if args.only:
        chosen = [
            s for s in chosen if any(o in f"{s.protocol}: {s.label}" for o in args.only)
        ]
    return chosen


# --- load -------------------------------------------------------------------


def loadgen(
    port: int,
    protocol: str,
    cpu: set[int] | None,
    extra: Sequence[str],
) -> dict[str, Any]:
    payload = ["--ntp"] if protocol == "ntp" else ["--text", TEXT_REQUEST]
    command = [str(BUILD / "loadgen"), "--port", str(port), *payload, *extra]
    result = subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=600,
        preexec_fn=(lambda: os.sched_setaffinity(0, cpu)) if cpu else None,
    )
    if result.returncode:
        raise RuntimeError(f"loadgen failed: {result.stderr}")
    data: dict[str, Any] = json.loads(result.stdout)
    return data


def measure(
    server: Server, args: argparse.Namespace, serverCPUs: set[int], loadCPUs: set[int]
) -> dict[str, Any]:
    """
    One server's throughput, CPU and latency numbers.
    """
    pinServer = serverCPUs if server.pinned else set(cpus())
    pinLoad = loadCPUs if server.pinned else None
    # A load generator on a core of its own polls for replies instead of
    # sleeping (see bench/loadgen.c); one sharing cores with workers sleeps.
    spin = ["--spin"] if server.pinned and args.spin else []
    result: dict[str, Any] = {"label": server.label, "protocol": server.protocol}
    with Running(server, pinServer) as running:

        def closedLoop(seconds: float, *extra: str) -> dict[str, Any]:
            return loadgen(
                running.port,
                server.protocol,
                pinLoad,
                [
                    "--closed",
                    str(args.inflight),
                    "--duration",
                    str(seconds),
                    "--warmup",
                    "0",
                    *extra,
                ],
            )

        # warm up (caches, the interpreter's specialisation, the CPU clock)
        closedLoop(args.warmup)
        beforeCPU = treeCPU(running.pid)
        beforeUser, beforeKernel = userAndKernel(running.pid)
        closed = closedLoop(args.duration, *spin)
        usedCPU = treeCPU(running.pid) - beforeCPU
        afterUser, afterKernel = userAndKernel(running.pid)
        answered = max(closed["received"], 1)
        result["closed"] = closed
        result["rps"] = closed["rps"]
        result["cpu_us"] = usedCPU / 1000 / answered
        result["user_us"] = (afterUser - beforeUser) * 1e6 / answered
        result["kernel_us"] = (afterKernel - beforeKernel) * 1e6 / answered
        result["server_cpu"] = usedCPU / 1e9 / closed["seconds"]
        result["loadgen_cpu"] = closed["busy"]
        for rate in args.rates:
            result[f"open_{rate}"] = loadgen(
                running.port,
                server.protocol,
                pinLoad,
                [
                    "--rate",
                    str(rate),
                    "--duration",
                    str(args.duration),
                    "--warmup",
                    "0.2",
                ],
            )
        if server.workers:
            result["worker_answers"] = workerAnswers(running)
    return result


def workerAnswers(running: Running) -> list[int]:
    """
    Stop the server and return the requests each worker answered in the
    whole run, from the counter summaries that workers log as they stop.
    """
    process = running.process
    assert process is not None
    process.send_signal(signal.SIGTERM)
    process.wait(15)
    answered: dict[str, int] = {}
    for line in running.log().splitlines():
        found = re.search(r"worker (\d+).*totals received=\d+ answered=(\d+)", line)
        if found:
            answered[found.group(1)] = int(found.group(2))
    return [answered[k] for k in sorted(answered)]


# --- accuracy -----------------------------------------------------------------

SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)
_NTP_TIMES = struct.Struct("!II")
NTP_UNIX_OFFSET = 2_208_988_800


def ntpTime(data: bytes, offset: int) -> float:
    seconds: int
    fraction: int
    seconds, fraction = _NTP_TIMES.unpack_from(data, offset)
    return seconds - NTP_UNIX_OFFSET + fraction / 4294967296.0


def sampleOffsets(port: int, count: int, interval: float) -> list[tuple[float, float]]:
    """
    C{count} NTP exchanges with the server: (offset, delay) pairs as RFC
    5905 computes them, the client's receive time from the kernel.
    """
    samples = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        sock.settimeout(1.0)
        for _ in range(count):
            cookie = os.urandom(8)
            request = NTP_REQUEST[:40] + cookie
            t1 = time.time()
            sock.sendto(request, ("127.0.0.1", port))
            deadline = time.monotonic() + 1.0
            while time.monotonic() < deadline:
                try:
                    data, ancillary, _flags, _addr = sock.recvmsg(2048, 64)
                except TimeoutError:
                    break
                if len(data) < 48 or data[24:32] != cookie:
                    continue
                seconds, nanoseconds = struct.unpack("@ll", ancillary[0][2])
                t4 = seconds + nanoseconds * 1e-9
                t2, t3 = ntpTime(data, 32), ntpTime(data, 40)
                samples.append((((t2 - t1) + (t3 - t4)) / 2, (t4 - t1) - (t3 - t2)))
                break
            time.sleep(interval)
    return samples


def chronydOffset(port: int) -> float | None:
    """
    The offset C{chronyd -Q} measures against the server, in seconds.
    """
    path = chronydPath()
    if path is None:
        return None
    result = subprocess.run(
        [
            path,
            "-Q",
            "-t",
            "20",
            f"server 127.0.0.1 port {port} iburst minpoll -6 maxpoll -6 maxsamples 8",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    found = re.search(
        r"System clock wrong by ([-+0-9.e]+) seconds", result.stderr + result.stdout
    )
    return float(found.group(1)) if found else None


def accuracyRow(
    server: Server, args: argparse.Namespace, serverCPUs: set[int], loadCPUs: set[int]
) -> dict[str, Any]:
    """
    Offsets measured against one NTP server, idle and under heavy load (a
    closed loop of C{--accuracy-inflight} requests in the background).
    """
    row: dict[str, Any] = {"label": server.label}
    with Running(server, serverCPUs) as running:
        for state in ("idle", "loaded"):
            background = None
            if state == "loaded":
                command = [str(BUILD / "loadgen"), "--port", str(running.port)]
                command += ["--ntp", "--closed", str(args.accuracy_inflight)]
                command += ["--duration", "60", "--warmup", "0"]
                background = subprocess.Popen(
                    command,
                    stdout=subprocess.DEVNULL,
                    preexec_fn=lambda: os.sched_setaffinity(0, loadCPUs),
                )
                time.sleep(0.3)
            # The clients run on the load generator's core, as the load does.
            everywhere = os.sched_getaffinity(0)
            os.sched_setaffinity(0, loadCPUs)
            try:
                samples = sampleOffsets(running.port, args.accuracy_samples, 0.01)
                chrony = chronydOffset(running.port)
            finally:
                os.sched_setaffinity(0, everywhere)
                if background is not None:
                    background.terminate()
                    background.wait()
            offsets = sorted(abs(o) for o, _ in samples)
            row[state] = {
                "samples": len(samples),
                "median_abs_offset_us": median(offsets, 1e6),
                "p95_abs_offset_us": offsets[int(0.95 * (len(offsets) - 1))] * 1e6
                if offsets
                else None,
                "median_offset_us": median([o for o, _ in samples], 1e6),
                "median_delay_us": median([d for _, d in samples], 1e6),
                "chronyd_q_offset_us": None if chrony is None else chrony * 1e6,
            }
    return row


def accuracyServers(args: argparse.Namespace) -> list[Server]:
    chosen = [
        Server("udptime ntp, kernel ts", "ntp", "udptime", ["--kernel-timestamps"]),
        Server(
            "udptime ntp, no kernel ts", "ntp", "udptime", ["--no-kernel-timestamps"]
        ),
    ]
    if chronydPath():
        chosen.append(Server("chronyd", "ntp", "chronyd"))
    return [s for s in chosen if not args.only or any(o in s.label for o in args.only)]


def summariseAccuracy(runs: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """
    One row per server: the medians over the runs of each figure.
    """
    byLabel: dict[str, list[dict[str, Any]]] = {}
    for run in runs:
        for row in run:
            byLabel.setdefault(row["label"], []).append(row)
    summary = []
    for label, rows in byLabel.items():
        merged: dict[str, Any] = {"label": label, "runs": len(rows)}
        for state in ("idle", "loaded"):
            merged[state] = {
                key: median([row[state][key] for row in rows])
                for key in rows[0][state]
                if key != "samples"
            }
        summary.append(merged)
    return summary


# --- report -----------------------------------------------------------------


def median(values: Sequence[float | None], scale: float = 1.0) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) * scale if present else None


def summarise(
    runs: list[list[dict[str, Any]]], rates: Sequence[int]
) -> list[dict[str, Any]]:
    """
    One row per server: medians over the runs.
    """
    byLabel: dict[str, list[dict[str, Any]]] = {}
    for run in runs:
        for result in run:
            key = f"{result['protocol']}: {result['label']}"
            byLabel.setdefault(key, []).append(result)
    rows = []
    for results in byLabel.values():
        row: dict[str, Any] = {
            "label": results[0]["label"],
            "protocol": results[0]["protocol"],
            "runs": len(results),
            "rps": median([r["rps"] for r in results]),
            "rps_all": [round(r["rps"]) for r in results],
            "cpu_us": median([r["cpu_us"] for r in results]),
            "user_us": median([r["user_us"] for r in results]),
            "kernel_us": median([r["kernel_us"] for r in results]),
            "server_cpu": median([r["server_cpu"] for r in results]),
            "loadgen_cpu": median([r["loadgen_cpu"] for r in results]),
        }
        for rate in rates:
            key = f"open_{rate}"
            for p in ("p50_us", "p99_us", "p999_us"):
                row[f"{p}@{rate}"] = median([r[key][p] for r in results])
            row[f"loss@{rate}"] = median(
                [r[key]["lost"] / max(r[key]["sent"], 1) for r in results]
            )
        answers = [r["worker_answers"] for r in results if r.get("worker_answers")]
        if answers:
            row["worker_answers"] = answers
            row["worker_imbalance"] = median([imbalance(a) for a in answers])
        rows.append(row)
    return rows


def imbalance(answers: Sequence[int]) -> float:
    """
    How far the busiest or idlest worker is from an even share, as a
    fraction of that share (0: perfectly even).
    """
    even = sum(answers) / len(answers)
    return max(abs(a - even) for a in answers) / even if even else 0.0


def formatTable(rows: list[dict[str, Any]], rates: Sequence[int]) -> str:
    reference = {
        r["protocol"]: r["rps"]
        for r in rows
        if r["label"] == f"udptime {r['protocol']}"
    }
    header = [
        "server",
        "req/s",
        "udptime ÷ it",
        "CPU µs/req",
        "user/kernel",
        "load CPU",
    ]
    for rate in rates:
        header += [f"p50/p99/p99.9 µs @{rate}/s", f"loss @{rate}/s"]
    lines = [header]
    for row in rows:
        base = reference.get(row["protocol"])
        ratio = f"{base / row['rps']:.2f}" if base and row["rps"] else "-"
        cells = [
            f"{row['protocol']}: {row['label']}",
            f"{row['rps']:,.0f}",
            ratio,
            f"{row['cpu_us']:.2f}",
            f"{_fmt(row['user_us'])}/{_fmt(row['kernel_us'])}",
            f"{row['loadgen_cpu']:.0%}",
        ]
        for rate in rates:
            cells.append(
                "/".join(
                    _fmt(row[f"{p}@{rate}"], "{:.0f}")
                    for p in ("p50_us", "p99_us", "p999_us")
                )
            )
            cells.append(f"{row[f'loss@{rate}'] * 100:.2f}%")
        lines.append(cells)
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    out = []
    for n, line in enumerate(lines):
        out.append(
            "  ".join(
                cell.ljust(w) if i == 0 else cell.rjust(w)
                for i, (cell, w) in enumerate(zip(line, widths, strict=True))
            )
        )
        if n == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)


def formatRST(rows: list[dict[str, Any]], rates: Sequence[int]) -> str:
    """
    The table for the README: each server's throughput as a ratio to
    udptime's, with CPU per request and latency at the lowest offered rate.
    """
    reference = {
        r["protocol"]: r["rps"]
        for r in rows
        if r["label"] == f"udptime {r['protocol']}"
    }
    rate = min(rates) if rates else None
    header = ["server", "udptime's req/s ÷ its", "CPU µs/request"]
    if rate:
        header.append(f"p99 µs at {rate}/s")
    lines = [header]
    for row in rows:
        base = reference.get(row["protocol"])
        cells = [
            f"{row['protocol']}: {row['label']}",
            f"{base / row['rps']:.2f}" if base and row["rps"] else "-",
            f"{row['cpu_us']:.1f}",
        ]
        if rate:
            cells.append(_fmt(row[f"p99_us@{rate}"], "{:.0f}"))
        lines.append(cells)
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    rule = "  ".join("=" * w for w in widths)
    out = [rule]
    for n, line in enumerate(lines):
        out.append("  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)))
        if n == 0:
            out.append(rule)
    out.append(rule)
    return "\n".join(out)


def formatAccuracy(rows: list[dict[str, Any]]) -> str:
    out = [
        "Offset measured against each NTP server, medians (µs; the true offset "
        "is 0 on loopback):"
    ]
    for row in rows:
        for state in ("idle", "loaded"):
            data = row[state]
            out.append(
                f"  {row['label']:<26} {state:<6}  |offset| median "
                f"{_fmt(data['median_abs_offset_us'])}, p95 "
                f"{_fmt(data['p95_abs_offset_us'])}; delay "
                f"{_fmt(data['median_delay_us'])}; chronyd -Q "
                f"{_fmt(data['chronyd_q_offset_us'])}"
            )
    return "\n".join(out)


def targets(
    rows: list[dict[str, Any]], accuracyRows: list[dict[str, Any]], rates: Sequence[int]
) -> list[str]:
    """
    The issue's targets, each with the measured figure and whether it is met.
    """
    byLabel = {f"{r['protocol']}: {r['label']}": r for r in rows}
    found: list[str] = []

    def check(name: str, value: float | None, goal: float, atLeast: bool) -> None:
        if value is None:
            return
        met = value >= goal if atLeast else value <= goal
        sign = ">=" if atLeast else "<="
        verdict = "met" if met else "MISSED"
        found.append(f"  {name}: {value:.2f} ({sign} {goal:g}) {verdict}")

    def ratio(mine: str, other: str) -> float | None:
        a, b = byLabel.get(mine), byLabel.get(other)
        return a["rps"] / b["rps"] if a and b and b["rps"] else None

    for protocol in ("text", "ntp"):
        me = f"{protocol}: udptime {protocol}"
        if me not in byLabel:
            continue
        check(
            f"{me} / Twisted",
            ratio(me, f"{protocol}: Twisted DatagramProtocol"),
            1.3,
            True,
        )
        check(f"{me} / asyncio", ratio(me, f"{protocol}: asyncio"), 3.0, True)
        check(
            f"{me} / blocking loop",
            ratio(me, f"{protocol}: blocking recvfrom loop"),
            1.0,
            True,
        )
        check(f"{me} CPU µs/request", byLabel[me]["cpu_us"], 6.0, False)
        if 10000 in rates:
            check(f"{me} p99 µs at 10000/s", byLabel[me]["p99_us@10000"], 100.0, False)
    one = byLabel.get("text: udptime text, 1 workers")
    two = byLabel.get("text: udptime text, 2 workers")
    if one and two:
        check("2 workers / 1 worker", two["rps"] / one["rps"], 1.0, True)
        check("2 workers imbalance", two.get("worker_imbalance"), 0.2, False)
    accuracy = {row["label"]: row["loaded"] for row in accuracyRows}
    chrony = accuracy.get("chronyd")
    for label in ("udptime ntp, kernel ts", "udptime ntp, no kernel ts"):
        mine = accuracy.get(label)
        if not (mine and chrony):
            continue
        for key, what in (
            ("median_abs_offset_us", "sampled"),
            ("chronyd_q_offset_us", "chronyd -Q"),
        ):
            a, b = mine[key], chrony[key]
            if a is not None and b is not None:
                check(
                    f"{label}: loaded |offset| ÷ chronyd's ({what}, "
                    f"{abs(a):.1f} vs {abs(b):.1f} µs)",
                    abs(a) / max(abs(b), 1.0),
                    2.0,
                    False,
                )
    return found


def machine() -> str:
    model = "unknown CPU"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return (
        f"{model}, {os.cpu_count()} cores, Linux {os.uname().release}, "
        f"Python {sys.version.split()[0]}"
    )


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description="udptime and the alternatives, side by side (see bench/run.py)."
    )
    parser.add_argument("--quick", action="store_true", help="one short run")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--duration", type=float, default=3.0, help="seconds per load")
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--inflight", type=int, default=64)
    parser.add_argument("--rates", type=int, nargs="*", default=[10000, 50000])
    parser.add_argument("--workers", type=int, nargs="*", default=[1, 2])
    parser.add_argument(
        "--no-spin",
        dest="spin",
        action="store_false",
        help="let the pinned load generator sleep between replies",
    )
    parser.add_argument(
        "--only",
        nargs="*",
        help="servers whose 'protocol: label' contains one of these",
    )
    parser.add_argument("--no-accuracy", action="store_true")
    parser.add_argument(
        "--accuracy-only", action="store_true", help="skip the throughput runs"
    )
    parser.add_argument("--accuracy-inflight", type=int, default=64)
    parser.add_argument("--accuracy-samples", type=int, default=300)
    args = parser.parse_args(argv)
    if args.quick:
        args.runs, args.duration, args.warmup = 1, 0.5, 0.3
        args.accuracy_samples = 50

    build()
    available = cpus()
    serverCPUs, loadCPUs = {available[-1]}, {available[0]}
    if len(available) < 2:
        log("one CPU only: server and load share it")
    chosen = [] if args.accuracy_only else servers(args)
    started = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    log(f"{started}: {machine()}")
    log(f"server on CPU {sorted(serverCPUs)}, load on CPU {sorted(loadCPUs)}")
    runs: list[list[dict[str, Any]]] = []
    for run in range(args.runs if chosen else 0):
        results = []
        for server in chosen:
            log(f"run {run + 1}/{args.runs}: {server.label}")
            result = measure(server, args, serverCPUs, loadCPUs)
            log(
                f"  {result['rps']:,.0f} req/s, {result['cpu_us']:.2f} µs CPU/req, "
                f"server CPU {result['server_cpu']:.0%}, "
                f"load CPU {result['loadgen_cpu']:.0%}"
            )
            if result["loadgen_cpu"] > 0.9:
                log("  warning: the load generator was near 100% CPU: the limit?")
            results.append(result)
        runs.append(results)
    rows = summarise(runs, args.rates)
    accuracyRuns: list[list[dict[str, Any]]] = []
    if not args.no_accuracy:
        for run in range(args.runs):
            accuracyRuns.append([])
            for server in accuracyServers(args):
                log(f"accuracy run {run + 1}/{args.runs}: {server.label}")
                accuracyRuns[-1].append(accuracyRow(server, args, serverCPUs, loadCPUs))
    accuracyRows = summariseAccuracy(accuracyRuns)
    print(f"\nudptime benchmark, {started}\n{machine()}")
    if rows:
        print(
            f"closed loop: {args.inflight} in flight for {args.duration:g} s; "
            f"medians of {args.runs} run(s); server pinned to CPU "
            f"{sorted(serverCPUs)} and load to CPU {sorted(loadCPUs)}, except "
            "for the worker runs\n"
        )
        print(formatTable(rows, args.rates))
        for row in rows:
            if "worker_answers" in row:
                print(
                    f"{row['label']}: requests answered by each worker "
                    f"{row['worker_answers']}"
                )
        print("\nAs a reStructuredText table:\n")
        print(formatRST(rows, args.rates))
    if accuracyRows:
        print()
        print(formatAccuracy(accuracyRows))
    print("\nTargets:")
    print("\n".join(targets(rows, accuracyRows, args.rates)))
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / time.strftime("bench-%Y%m%d-%H%M%S.json")
    report = {
        "date": started,
        "machine": machine(),
        "arguments": vars(args),
        "rows": rows,
        "runs": runs,
        "accuracy": accuracyRows,
        "accuracyRuns": accuracyRuns,
    }
    path.write_text(json.dumps(report, indent=1))
    print(f"\nresults: {path}")


def _fmt(value: float | None, form: str = "{:.1f}") -> str:
    return "-" if value is None else form.format(value)


if __name__ == "__main__":
    main()
