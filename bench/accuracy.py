"""
The accuracy benchmark: the offset and delay that chronyd, the strictest
NTP client at hand, measures against each NTP server on loopback, where
the true offset is 0.

The client is C{chronyd -Q} (it measures and prints the offset, and never
sets the clock) with a configuration of its own in a temporary directory:
one server, polled every 2^C{minpoll} seconds, C{iburst}, in basic mode or
asking for interleaved mode (C{xleave}), and C{log rawmeasurements}, whose
C{measurements.log} gives each sample's tests, offset, delay, and whether
the reply was used as basic or interleaved.  One C{chronyd -Q} stops after
a few samples, so each round runs it until it has at least C{samples}
samples that passed every test, and as many used as interleaved once the
server answered in interleaved mode (bounded in runs and in time).

Rounds alternate between the servers, which run side by side, each pinned
to the same CPU: in each round every server is measured idle and then
under a background load at a fixed rate (by default half of udptime's
measured capacity) from the load generator, aimed at the server under
test, with the clients on the other CPU.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from load import BackgroundLoad, closedLoop, log
from processes import pinnedTo
from results import median
from servers import Running, Server, chronydPath

MODES = ("basic", "xleave")
LOADS = ("idle", "loaded")

# chronyd's user (Debian's); its client must be able to write its log.
CHRONY_USER = "_chrony"

# At most this many chronyd -Q runs per round and mode.
MAX_QUERIES = 20


@dataclass(frozen=True)
class AccuracySettings:
    """
    How the accuracy benchmark runs.

    @ivar runs: rounds over every server.
    @ivar samples: accepted samples each round wants, per server, mode and
        load.
    @ivar minpoll: the client's polling interval, log2 seconds.
    @ivar timeout: seconds each C{chronyd -Q} may take (its C{-t}).
    @ivar loadFraction: the background load, as a fraction of udptime's
        capacity.
    @ivar loadRate: the background load in requests per second, or L{None}
        to take C{loadFraction} of the capacity.
    @ivar inflight: requests outstanding when measuring the capacity.
    @ivar capacitySeconds: seconds of the closed loop measuring it.
    """

    runs: int
    samples: int
    minpoll: int
    timeout: int
    loadFraction: float
    loadRate: float | None
    inflight: int
    capacitySeconds: float


@dataclass(frozen=True)
class Measurement:
    """
    One line of chronyd's C{measurements.log}: one reply from the server.

    @ivar leap: the leap status (C{N}, C{+}, C{-}, C{?}).
    @ivar stratum: the server's stratum.
    @ivar tests: the test bits, C{"111 111 1111"} when all passed.
    @ivar offset: the local clock's error (theta), seconds; positive when
        the local clock is slow of the server.
    @ivar delay: the round-trip delay (delta), seconds.
    @ivar mode: the reply's mode and how it was used: C{4B} (basic) or
        C{4I} (interleaved).
    @ivar transmitSource: where the client's transmit timestamp came from
        (C{D} daemon, C{K} kernel, C{H} hardware).
    @ivar receiveSource: where its receive timestamp came from.
    """

    leap: str
    stratum: int
    tests: str
    offset: float
    delay: float
    mode: str
    transmitSource: str
    receiveSource: str

    @property
    def accepted(self) -> bool:
        """
        Whether the sample passed every test, so chronyd would use it.
        """
        return passed(self.tests)

    @property
    def interleaved(self) -> bool:
        """
        Whether chronyd used the reply as interleaved.
        """
        return self.mode.endswith("I")

    def asData(self) -> dict[str, Any]:
        """
        The sample as a results file keeps it.
        """
        return {
            "leap": self.leap,
            "stratum": self.stratum,
            "tests": self.tests,
            "offset": self.offset,
            "delay": self.delay,
            "mtxrx": f"{self.mode} {self.transmitSource} {self.receiveSource}",
        }


def passed(tests: str) -> bool:
    """
    Whether C{tests}, the test bits of a sample (C{"111 111 1111"}), are
    all passes.
    """
    return set(tests) <= {"1", " "}


_DATE = re.compile(r"\d{4}-\d\d-\d\d$")


def parseMeasurements(text: str) -> list[Measurement]:
    """
    The samples of a C{measurements.log} written with C{log
    rawmeasurements}, skipping its banners and any line not of 20 columns.
    """
    found = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) != 20 or not _DATE.match(fields[0]):
            continue
        try:
            found.append(
                Measurement(
                    leap=fields[3],
                    stratum=int(fields[4]),
                    tests=" ".join(fields[5:8]),
                    offset=float(fields[11]),
                    delay=float(fields[12]),
                    mode=fields[17],
                    transmitSource=fields[18],
                    receiveSource=fields[19],
                )
            )
        except ValueError:
            continue
    return found


def clientConfiguration(port: str, mode: str, minpoll: int, directory: str) -> str:
    """
    The configuration of a C{chronyd -Q} measuring the server on
    C{127.0.0.1:port}: no server port, no command sockets, its pid file
    and log in C{directory}.
    """
    xleave = " xleave" if mode == "xleave" else ""
    return (
        f"server 127.0.0.1 port {port} iburst minpoll {minpoll} maxpoll {minpoll}"
        f" maxsamples 8{xleave}\n"
        "port 0\n"
        "cmdport 0\n"
        "bindcmdaddress /\n"
        f"pidfile {directory}/chronyd.pid\n"
        f"logdir {directory}\n"
        "log rawmeasurements\n"
    )


@dataclass(frozen=True)
class Query:
    """
    What one C{chronyd -Q} run gave.

    @ivar measurements: its samples.
    @ivar reported: the offset it printed ("System clock wrong by"),
        seconds, or L{None}.
    """

    measurements: list[Measurement]
    reported: float | None


def chronyUser() -> pwd.struct_passwd | None:
    """
    The user chronyd drops to, when the benchmark runs as root and that
    user exists; otherwise L{None} (chronyd -Q then keeps its user).
    """
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam(CHRONY_USER)
    except KeyError:
        return None


def clientCommand(settings: AccuracySettings, conf: str) -> list[str]:
    """
    The command line of C{chronyd -Q} with the configuration file C{conf}.
    """
    user = ["-u", CHRONY_USER] if chronyUser() else []
    return ["chronyd", "-Q", "-t", str(settings.timeout), *user, "-f", conf]


def chronydQuery(
    port: int, mode: str, settings: AccuracySettings, cpuSet: set[int] | None
) -> Query:
    """
    Run C{chronyd -Q} once against the server on C{127.0.0.1:port}, in a
    directory of its own that its user may write.
    """
    chronyd = chronydPath()
    assert chronyd is not None
    directory = tempfile.mkdtemp(prefix="udptime-accuracy-")
    try:
        user = chronyUser()
        if user is not None:
            os.chown(directory, user.pw_uid, user.pw_gid)
        elif os.geteuid() == 0:
            # chronyd drops to a user of its own choosing
            os.chmod(directory, 0o777)
        conf = os.path.join(directory, "chrony.conf")
        with open(conf, "w") as f:
            f.write(clientConfiguration(str(port), mode, settings.minpoll, directory))
        command = clientCommand(settings, conf)
        try:
            done = subprocess.run(
                [chronyd, *command[1:]],
                capture_output=True,
                text=True,
                timeout=settings.timeout + 10,
                preexec_fn=pinnedTo(cpuSet),
            )
            printed = done.stdout + done.stderr
        except subprocess.TimeoutExpired:
            printed = ""
        found = re.search(r"System clock wrong by ([-+0-9.e]+) seconds", printed)
        text = ""
        with (
            contextlib.suppress(OSError),
            open(os.path.join(directory, "measurements.log")) as f,
        ):
            text = f.read()
        return Query(parseMeasurements(text), float(found.group(1)) if found else None)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def enough(measurements: Sequence[Measurement], wanted: int) -> bool:
    """
    Whether a round has the samples it wants: C{wanted} accepted ones and,
    once the server answered any request in interleaved mode, C{wanted}
    accepted interleaved ones (each C{chronyd -Q} starts in basic mode).
    """
    accepted = [m for m in measurements if m.accepted]
    interleaved = sum(m.interleaved for m in accepted)
    return len(accepted) >= wanted and (interleaved == 0 or interleaved >= wanted)


def sampleRound(
    port: int, mode: str, settings: AccuracySettings, cpuSet: set[int] | None
) -> tuple[list[Measurement], list[float]]:
    """
    Run C{chronyd -Q} against the server until it gave the samples the
    round wants (L{enough}), at most L{MAX_QUERIES} times and for at most
    ten times its timeout: the samples, and the offsets it printed.
    """
    measurements: list[Measurement] = []
    reported: list[float] = []
    deadline = time.monotonic() + 10 * settings.timeout
    for _ in range(MAX_QUERIES):
        if enough(measurements, settings.samples) or time.monotonic() > deadline:
            break
        query = chronydQuery(port, mode, settings, cpuSet)
        measurements += query.measurements
        if query.reported is not None:
            reported.append(query.reported)
    if not enough(measurements, settings.samples):
        accepted = sum(m.accepted for m in measurements)
        log(f"  {mode}: only {accepted} accepted samples of {len(measurements)}")
    return measurements, reported


def capacity(
    server: Server, settings: AccuracySettings, serverCPUs: set[int], loadCPUs: set[int]
) -> float:
    """
    The requests per second C{server} answers with C{settings.inflight}
    outstanding, pinned as in the throughput benchmark.
    """
    with Running(server, serverCPUs) as running:
        warmup = min(1.0, settings.capacitySeconds)
        closedLoop(running.port, "ntp", loadCPUs, settings.inflight, warmup)
        report = closedLoop(
            running.port,
            "ntp",
            loadCPUs,
            settings.inflight,
            settings.capacitySeconds,
            spin=True,
        )
    rps: float = report["rps"]
    return rps


def runRounds(
    servers: Sequence[Server],
    settings: AccuracySettings,
    serverCPUs: set[int],
    loadCPUs: set[int],
    loadRate: float,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """
    Every round over every server, mode and load: the samples and the
    background loads' reports, as the results file keeps them.
    """
    samples: list[dict[str, Any]] = []
    loads: list[dict[str, Any]] = []
    with contextlib.ExitStack() as stack:
        started = [(s, stack.enter_context(Running(s, serverCPUs))) for s in servers]
        for number in range(settings.runs):
            for server, running in started:
                for load in LOADS:
                    name = f"{server.label}, {load}"
                    log(f"accuracy round {number + 1}/{settings.runs}: {name}")
                    background = None
                    if load == "loaded":
                        background = BackgroundLoad(
                            running.port, "ntp", loadRate, loadCPUs
                        ).start()
                        # the server takes the load before the clients come
                        time.sleep(0.5)
                    try:
                        for mode in MODES:
                            found, reported = sampleRound(
                                running.port, mode, settings, loadCPUs
                            )
                            where = {
                                "server": server.key,
                                "mode": mode,
                                "load": load,
                                "round": number,
                            }
                            samples += [{**where, **m.asData()} for m in found]
                            samples += [
                                {**where, "reported": offset} for offset in reported
                            ]
                    finally:
                        if background is not None:
                            report = background.stop()
                            loads.append(
                                {
                                    "server": server.key,
                                    "round": number,
                                    "report": report,
                                }
                            )
    return samples, loads


def figures(samples: Sequence[dict[str, Any]], prefix: str) -> dict[str, Any]:
    """
    The medians of C{samples}, in µs, named with C{prefix}: |offset|,
    offset and delay.
    """
    return {
        f"{prefix}median_abs_offset_us": median(
            [abs(s["offset"]) * 1e6 for s in samples]
        ),
        f"{prefix}median_offset_us": median([s["offset"] * 1e6 for s in samples]),
        f"{prefix}median_delay_us": median([s["delay"] * 1e6 for s in samples]),
    }


def summarise(
    servers: Sequence[Server],
    samples: Sequence[dict[str, Any]],
    loads: Sequence[dict[str, Any]],
) -> list[dict[str, Any]]:
    """
    One row per server, mode and load: the medians of the accepted
    samples (µs), and of those used as interleaved, the medians of each
    round, what C{chronyd -Q} printed, and the background load's figures.
    """
    rows = []
    for server in servers:
        reports = [
            entry["report"]
            for entry in loads
            if entry["server"] == server.key and entry["report"]
        ]
        for mode in MODES:
            for load in LOADS:
                mine = [
                    s
                    for s in samples
                    if (s["server"], s["mode"], s["load"]) == (server.key, mode, load)
                ]
                measured = [s for s in mine if "offset" in s]
                accepted = [s for s in measured if passed(s["tests"])]
                rounds = sorted({s["round"] for s in accepted})
                roundMedians = [
                    statistics.median(
                        abs(s["offset"]) * 1e6 for s in accepted if s["round"] == n
                    )
                    for n in rounds
                ]
                interleaved = [s for s in accepted if s["mtxrx"][1] == "I"]
                row: dict[str, Any] = {
                    "key": f"{server.key} | {mode} | {load}",
                    "server": server.key,
                    "label": server.label,
                    "mode": mode,
                    "load": load,
                    "samples": len(measured),
                    "accepted": len(accepted),
                    "interleaved": len(interleaved),
                    **figures(accepted, ""),
                    **figures(interleaved, "interleaved_"),
                    "round_medians_abs_offset_us": roundMedians,
                    "reported_offset_us": [
                        s["reported"] * 1e6 for s in mine if "reported" in s
                    ],
                    "timestamps": sorted({s["mtxrx"][3:] for s in accepted}),
                }
                if load == "loaded":
                    row["load_rps"] = median([r["rps"] for r in reports])
                    row["load_loss"] = median(
                        [r["lost"] / max(r["sent"], 1) for r in reports]
                    )
                rows.append(row)
    return rows
