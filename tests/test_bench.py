"""
The benchmark's in-process measurements, C{bench/hotpath.py},
C{bench/txstamp.py} and C{bench/legs.py}, run to the end on a tiny load and
report every path they measure, so that a change to the udptime internals
they drive cannot leave them broken.  Their numbers are not checked: speed
lives in the benchmark, not in the tests.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from tests.support import missing, requirePeer
from udptime.ancillary import kernelTimestampsAvailable
from udptime.port import batchingAvailable

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def runBench(script: str, *arguments: str) -> subprocess.CompletedProcess[str]:
    """
    Run C{bench/script} with C{arguments}, to its end.
    """
    return subprocess.run(
        [sys.executable, os.path.join(ROOT, "bench", script), *arguments],
        capture_output=True,
        text=True,
        timeout=120,
    )


def runBenchScript(case: SynchronousTestCase, script: str, *arguments: str) -> str:
    """
    Run C{bench/script} with C{arguments}: its standard output, once it
    exited with status 0.
    """
    done = runBench(script, *arguments)
    case.assertEqual(done.returncode, 0, done.stderr)
    return done.stdout


class LogCostTests(SynchronousTestCase):
    """
    C{bench/logcost.py} measures every variant.
    """

    def test_everyVariant(self) -> None:
        output = runBenchScript(self, "logcost.py", "--count", "50", "--rounds", "1")
        self.assertEqual(
            [line.split()[0] for line in output.splitlines()],
            [
                "quiet",
                "verbose",
                "verbose-all",
                "one-zone",
                "every-zone",
                "every-zone-capped",
                "novel-requests",
            ],
        )


class HotPathTests(SynchronousTestCase):
    """
    C{bench/hotpath.py} times every path of both services.
    """

    def test_everyPath(self) -> None:
        output = runBenchScript(self, "hotpath.py", "--count", "20", "--rounds", "1")
        names = [line.split("  ")[0] for line in output.splitlines()]
        expected = []
        for protocol in ("text", "ntp"):
            expected += [
                f"{protocol}: blocking loop",
                f"{protocol}: bare Twisted",
                f"{protocol}: udptime udp.Port",
            ]
            for batched in [False, True] if batchingAvailable() else [False]:
                kind = "ServerPort, batched" if batched else "ServerPort"
                expected.append(f"{protocol}: udptime {kind}, no kernel ts")
                if protocol == "ntp":
                    expected.append(f"{protocol}: udptime {kind}, kernel ts")
        self.assertEqual(names, expected)
        self.assertEqual(output.count("µs/request"), len(expected))

    def test_parts(self) -> None:
        """
        With C{--parts} it adds the pieces of udptime's default path one at
        a time, after the blocking loop with its reply and a constant one,
        then binds it to the wildcard address.
        """
        output = runBenchScript(
            self, "hotpath.py", "--count", "20", "--rounds", "1", "--parts"
        )
        names = [line.split("  ")[0] for line in output.splitlines()]
        kind = "ServerPort, batched" if batchingAvailable() else "ServerPort"
        expected = []
        for protocol, kernel in (("text", "no kernel ts"), ("ntp", "kernel ts")):
            expected += [
                f"{protocol}: blocking loop",
                f"{protocol}: blocking loop, constant reply",
                f"{protocol}: udptime {kind}, constant reply, no kernel ts",
            ]
            if protocol == "ntp":
                expected.append(f"ntp: udptime {kind}, constant reply, kernel ts")
            expected += [
                f"{protocol}: udptime {kind}, no policy, {kernel}",
                f"{protocol}: udptime {kind}, {kernel}",
                f"{protocol}: udptime {kind}, bound to 0.0.0.0, {kernel}",
            ]
        self.assertEqual(names, expected)


class LegsTests(SynchronousTestCase):
    """
    C{bench/legs.py} splits the error of a server's timestamps between the
    outbound and return legs, for basic and interleaved samples.
    """

    def setUp(self) -> None:
        if not (sys.platform == "linux" and kernelTimestampsAvailable()):
            raise self.skipTest("needs kernel transmit and receive timestamps")

    def test_udptime(self) -> None:
        output = runBenchScript(
            self,
            "legs.py",
            *("--exchanges", "6", "--rounds", "1", "--interval", "0"),
            *("--only", "udptime, kernel"),
        )
        lines = output.splitlines()
        self.assertEqual(lines[1], "ntp: udptime, kernel timestamps", output)
        basic, interleaved = lines[2].split(), lines[3].split()
        self.assertEqual((basic[0], interleaved[0]), ("basic", "interleaved"))

        def samples(words: list[str]) -> int:
            return 0 if words[1:3] == ["no", "samples"] else int(words[1][2:])

        # The first reply is basic; each of the others, interleaved unless
        # its request came before the server read the kernel's report.
        self.assertGreaterEqual(samples(basic), 1, output)
        self.assertEqual(samples(basic) + samples(interleaved), 6, output)


class TransmitStampTests(SynchronousTestCase):
    """
    C{bench/txstamp.py} reports each way of sending NTP replies.
    """

    def setUp(self) -> None:
        if not (batchingAvailable() and kernelTimestampsAvailable()):
            raise self.skipTest("needs recvmmsg/sendmmsg and kernel timestamps")

    def test_everyWay(self) -> None:
        output = runBenchScript(
            self, "txstamp.py", "--count", "8", "--rounds", "2", "--groups", "4"
        )
        rows = output.splitlines()[2:]
        self.assertEqual(
            [row[:38].rstrip() for row in rows],
            [
                "udptime: one sendto per reply",
                "udptime, Python send step",
                "groups of 4, stamped at the call",
                "groups of 4, stamps spread",
            ],
        )
        for row in rows:
            # CPU per reply, then five percentiles of the gap.
            self.assertEqual(len(row[38:].split()), 6, row)


def benchModule(name: str) -> Any:
    """
    The benchmark's module C{bench/name.py}, imported as the benchmark's
    scripts import each other (their directory first on the path).
    """
    bench = os.path.join(ROOT, "bench")
    sys.path.insert(0, bench)
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(bench)


MACHINE = {
    "cpu": "Test CPU",
    "cpus": 2,
    "cpus_usable": 2,
    "memory_gib": 4.0,
    "virtual_machine": "kvm",
    "container": "none",
    "kernel": "6.1.0",
    "python": "3.11.7",
    "udptime": "0.1.0",
    "twisted": "26.10.0",
    "uvloop": None,
    "chronyd": "4.3",
    "cc": "cc 12",
}


def resultsOf(kind: str, settings: dict[str, Any], rows: list[Any]) -> dict[str, Any]:
    """
    A tiny results file of C{kind}, as a run would write it.
    """
    return {
        "schema": "udptime-bench/1",
        "kind": kind,
        "date": "2026-01-02T03:04:05Z",
        "git": {"commit": "0123456789abcdef0123", "changed": False},
        "command": f"bench/run.py {kind} --runs 2",
        "machine": MACHINE,
        "settings": settings,
        "note": "A synthetic run.",
        "conditions": {
            "load_average_before": [0.5, 0.25, 0.125],
            "load_average_after": [1.5, 0.75, 0.5],
            "steal": 0.0125,
        },
        "rows": rows,
    }


def throughputRow(key: str, rps: float, baseline: bool = False) -> dict[str, Any]:
    protocol, label = key.split(": ")
    return {
        "key": key,
        "label": label,
        "protocol": protocol,
        "kind": "udptime" if label.startswith("udptime") else "python",
        "baseline": baseline,
        "workers": 0,
        "rounds": 2,
        "rps": rps,
        "rps_rounds": [rps, rps],
        "ratio": (
            {"median": 1.0, "low": 1.0, "high": 1.0}
            if baseline
            else {"median": 1.5, "low": 1.25, "high": 1.75}
        ),
        "cpu_us": 6.25,
        "user_us": 2.5,
        "kernel_us": 3.5,
        "server_cpu": 0.97,
        "loadgen_busy": 0.42,
        "latency": [
            {
                "rate": 1000,
                "p50_us": 51.0,
                "p99_us": 167.0,
                "p999_us": 402.0,
                "loss": 0,
            },
            {"rate": 5000, "p50_us": None, "p99_us": None, "p999_us": None, "loss": 1},
        ],
    }


def throughputResults() -> dict[str, Any]:
    workers = throughputRow("text: udptime text, 2 workers", 150000.0)
    workers.update(workers=2, worker_answers=[[70000, 80000]], worker_imbalance=0.0667)
    return resultsOf(
        "throughput",
        {
            "runs": 2,
            "duration": 3.0,
            "warmup": 1.0,
            "inflight": 64,
            "rates": [1000, 5000],
            "spin": True,
            "server_cpus": [1],
            "load_cpus": [0],
            "servers": [
                {
                    "key": "text: udptime text",
                    "command": "twistd -n udptime --port PORT",
                },
                {"key": "text: asyncio", "command": "python bench/references.py"},
            ],
        },
        [
            throughputRow("text: udptime text", 123456.0, baseline=True),
            throughputRow("text: asyncio", 82304.0),
            workers,
        ],
    )


def accuracyRow(label: str, mode: str, load: str, interleaved: int) -> dict[str, Any]:
    row = {
        "key": f"ntp: {label} | {mode} | {load}",
        "server": f"ntp: {label}",
        "label": label,
        "mode": mode,
        "load": load,
        "samples": 12,
        "accepted": 9,
        "interleaved": interleaved,
        "median_abs_offset_us": 2.75,
        "median_offset_us": -2.75,
        "median_delay_us": 6.5,
        "interleaved_median_abs_offset_us": 0.04 if interleaved else None,
        "interleaved_median_offset_us": 0.04 if interleaved else None,
        "interleaved_median_delay_us": 0.69 if interleaved else None,
        "round_medians_abs_offset_us": [2.5, 3.25],
        "reported_offset_us": [-3.0, -1.0],
        "timestamps": ["K K"],
    }
    if load == "loaded":
        row.update(load_rps=31250.0, load_loss=0.002)
    return row


def accuracyResults() -> dict[str, Any]:
    rows = [
        accuracyRow(
            label, mode, load, 8 if label == "chronyd" and mode == "xleave" else 0
        )
        for label in ("udptime, kernel timestamps", "chronyd")
        for mode in ("basic", "xleave")
        for load in ("idle", "loaded")
    ]
    return resultsOf(
        "accuracy",
        {
            "runs": 2,
            "samples": 8,
            "minpoll": -7,
            "timeout": 10,
            "client_command": "chronyd -Q -t 10 -f DIR/chrony.conf",
            "client_configuration": "server 127.0.0.1 port PORT; log rawmeasurements",
            "load_rps": 31250.0,
            "load_rate_given": False,
            "load_fraction": 0.5,
            "capacity_rps": 62500.0,
            "capacity_source": "measured before the rounds",
            "server_cpus": [1],
            "load_cpus": [0],
            "servers": [
                {
                    "key": "ntp: chronyd",
                    "command": "chronyd -d -x -f DIR/chrony.conf",
                    "configuration": "port PORT; local stratum 1",
                },
            ],
        },
        rows,
    )


def temporaryDirectory(case: SynchronousTestCase) -> str:
    """
    A new directory, removed when C{case} ends.
    """
    directory = tempfile.mkdtemp(prefix="udptime-bench-test-")
    case.addCleanup(shutil.rmtree, directory, ignore_errors=True)
    return directory


def writeResults(directory: str, data: dict[str, Any]) -> str:
    path = os.path.join(directory, f"{data['kind']}.json")
    with open(path, "w") as f:
        json.dump(data, f)
    return path


class ReportCommandTests(SynchronousTestCase):
    """
    C{bench/run.py report} and C{publish} read results files and show or
    copy what they hold.
    """

    def setUp(self) -> None:
        self.directory = temporaryDirectory(self)
        self.throughput = writeResults(self.directory, throughputResults())
        self.accuracy = writeResults(self.directory, accuracyResults())

    def test_report(self) -> None:
        """
        The report gives each file's conditions and tables, then the goals
        measured by both.
        """
        output = runBenchScript(
            self, "run.py", "report", self.throughput, self.accuracy
        )
        for expected in (
            "Date: 2026-01-02 03:04:05 UTC",
            "Commit: 0123456789ab",
            "Machine: Test CPU; 2 CPUs, virtual machine (kvm), 4.0 GiB",
            "Command: bench/run.py throughput --runs 2",
            "load average 0.50 / 0.25 / 0.12",
            "Note: A synthetic run.",
            "123,456",
            "1.50 (1.25-1.75)",
            "51 / 167 / 402",
            "- / - / -",
            "100.00 %",
            "70,000 + 80,000",
            "9 of 12, 8 interleaved",
            "9 of 12, 0 interleaved",
            "2.8 (2.5 to 3.2)",
            "0.04 / 0.69",
            "-3 to -1",
            "31,250/s, 0.2 % lost",
            "chronyd -d -x -f DIR/chrony.conf",
            "text: udptime text ÷ asyncio: 1.50 (>= 3) MISSED",
            "text: udptime text CPU µs/request: 6.25 (<= 6) MISSED",
            "basic mode (2.8 against 2.8 µs): 1.00 (<= 2) met",
        ):
            self.assertIn(expected, output)

    def test_publish(self) -> None:
        """
        C{publish} writes each file as the published results of its kind.
        """
        target = os.path.join(self.directory, "published")
        runBenchScript(
            self, "run.py", "publish", self.throughput, self.accuracy, "--to", target
        )
        for path, kind in (
            (self.throughput, "throughput"),
            (self.accuracy, "accuracy"),
        ):
            with open(path) as given, open(os.path.join(target, f"{kind}.json")) as out:
                self.assertEqual(json.load(out), json.load(given))

    def test_publishAs(self) -> None:
        """
        C{publish --as NAME} writes the file as C{NAME.json}, beside the
        published results of its kind; a name that is not a plain file
        name is refused with one line.
        """
        target = os.path.join(self.directory, "published")
        runBenchScript(
            self, "run.py", "publish", self.throughput, "--to", target, "--as", "rough"
        )
        self.assertEqual(os.listdir(target), ["rough.json"])
        with (
            open(self.throughput) as given,
            open(os.path.join(target, "rough.json")) as out,
        ):
            self.assertEqual(json.load(out), json.load(given))
        done = runBench(
            "run.py", "publish", self.throughput, "--to", target, "--as", "../up"
        )
        self.assertNotEqual(done.returncode, 0)
        self.assertEqual(len(done.stderr.strip().splitlines()), 1, done.stderr)
        self.assertIn("'../up'", done.stderr)
        self.assertEqual(os.listdir(target), ["rough.json"])

    def test_notResults(self) -> None:
        """
        A file that is not a results file is refused with one line.
        """
        path = os.path.join(self.directory, "other.json")
        with open(path, "w") as f:
            json.dump({"schema": "something else"}, f)
        done = runBench("run.py", "report", path)
        self.assertNotEqual(done.returncode, 0)
        self.assertEqual(len(done.stderr.strip().splitlines()), 1, done.stderr)
        self.assertIn("not a results file", done.stderr)

    def test_badOption(self) -> None:
        """
        An option out of its range is refused with one line, before
        anything is measured.
        """
        done = runBench("run.py", "--runs", "0")
        self.assertNotEqual(done.returncode, 0)
        self.assertEqual(done.stderr, "bench/run.py: --runs must be at least 1\n")
        self.assertEqual(done.stdout, "")

    def test_help(self) -> None:
        """
        The help names every command.
        """
        output = runBenchScript(self, "run.py", "--help")
        for command in ("all", "throughput", "accuracy", "report", "publish"):
            self.assertIn(f"    {command}", output)


def measurementLine(leap: str, stratum: int, tests: str, theta: str, mtxrx: str) -> str:
    """
    A line of chronyd's C{measurements.log}, as C{log rawmeasurements}
    writes it.
    """
    return (
        f"2026-12-05 16:14:30 127.0.0.1       {leap} {stratum:2} {tests}  -7 -7 1.00 "
        f"{theta}  2.309e-07  0.000e+00  0.000e+00 7F7F0101 {mtxrx}"
    )


MEASUREMENTS = "\n".join(
    [
        "=" * 72,
        "   Date (UTC) Time     IP Address   L St 123 567 ABCD  LP RP Score    Offset",
        "=" * 72,
        measurementLine("N", 1, "111 111 1111", "-1.214e-06  5.058e-06", "4B K K"),
        measurementLine("N", 1, "111 111 0111", " 3.200e-08  2.610e-07", "4I K K"),
        measurementLine("?", 0, "111 011 1111", " 3.300e-08  2.600e-07", "4B D K"),
        measurementLine("N", 1, "111 111 1111", " 4.400e-08  2.700e-07", "4I K K"),
        "a line that is not a sample",
    ]
)


class AccuracyTests(SynchronousTestCase):
    """
    The accuracy benchmark reads chronyd's raw measurements and sums them
    up per server, mode and load.
    """

    def test_parse(self) -> None:
        """
        Each sample line gives its tests, offset, delay and mode; banners
        and other lines are skipped.
        """
        accuracy = benchModule("accuracy")
        found = accuracy.parseMeasurements(MEASUREMENTS)
        self.assertEqual(
            [
                (m.leap, m.stratum, m.tests, m.mode, m.accepted, m.interleaved)
                for m in found
            ],
            [
                ("N", 1, "111 111 1111", "4B", True, False),
                ("N", 1, "111 111 0111", "4I", False, True),
                ("?", 0, "111 011 1111", "4B", False, False),
                ("N", 1, "111 111 1111", "4I", True, True),
            ],
        )
        self.assertEqual((found[0].offset, found[0].delay), (-1.214e-06, 5.058e-06))
        self.assertEqual(found[2].asData()["mtxrx"], "4B D K")

    def test_enough(self) -> None:
        """
        A round wants its number of accepted samples, and as many
        interleaved ones once the server answered in interleaved mode.
        """
        accuracy = benchModule("accuracy")
        basic, rejected, _, interleaved = accuracy.parseMeasurements(MEASUREMENTS)
        self.assertFalse(accuracy.enough([basic], 2))
        self.assertTrue(accuracy.enough([basic, basic, rejected], 2))
        self.assertFalse(accuracy.enough([basic, basic, interleaved], 2))
        self.assertTrue(accuracy.enough([basic, interleaved, interleaved], 2))

    def test_summarise(self) -> None:
        """
        The medians are of the accepted samples, in µs, with those used as
        interleaved counted and summed up apart.
        """
        accuracy = benchModule("accuracy")
        servers = benchModule("servers")
        chronyd = servers.Server("chronyd", "ntp", "chronyd")
        where = {"server": chronyd.key, "mode": "xleave", "load": "loaded"}
        samples = [
            {**where, "round": n, **m.asData()}
            for n in (0, 1)
            for m in accuracy.parseMeasurements(MEASUREMENTS)
        ]
        samples.append({**where, "round": 0, "reported": -1e-06})
        loads = [
            {
                "server": chronyd.key,
                "round": 0,
                "report": {"rps": 10.0, "lost": 1, "sent": 4},
            }
        ]
        rows = accuracy.summarise([chronyd], samples, loads)
        self.assertEqual(len(rows), 4)
        row = next(r for r in rows if (r["mode"], r["load"]) == ("xleave", "loaded"))
        self.assertEqual(
            (row["samples"], row["accepted"], row["interleaved"]), (8, 4, 2)
        )
        self.assertAlmostEqual(row["median_abs_offset_us"], (0.044 + 1.214) / 2)
        self.assertAlmostEqual(row["interleaved_median_delay_us"], 0.27)
        self.assertEqual(row["reported_offset_us"], [-1.0])
        self.assertEqual((row["load_rps"], row["load_loss"]), (10.0, 0.25))
        idle = next(r for r in rows if (r["mode"], r["load"]) == ("basic", "idle"))
        self.assertEqual((idle["samples"], idle["median_abs_offset_us"]), (0, None))


class ThroughputSummaryTests(SynchronousTestCase):
    """
    The throughput rows are medians over the rounds, and each server's
    ratio is taken within each round.
    """

    def test_ratios(self) -> None:
        throughput = benchModule("throughput")
        servers = benchModule("servers")
        mine = servers.Server("udptime ntp", "ntp", "udptime", baseline=True)
        other = servers.Server("asyncio", "ntp", "python", ("asyncio",))

        def result(server: Any, rps: float) -> dict[str, Any]:
            report = {"rate": 100, "p50_us": rps / 1000, "p99_us": 9.0, "p999_us": 9.0}
            return {
                "key": server.key,
                "label": server.label,
                "protocol": server.protocol,
                "rps": rps,
                "cpu_us": 1.0,
                "user_us": 0.5,
                "kernel_us": 0.5,
                "server_cpu": 1.0,
                "loadgen_busy": 0.5,
                "open": [{**report, "lost": 1, "sent": 10}],
            }

        rounds = [
            [result(mine, 300.0), result(other, 100.0)],
            [result(mine, 200.0), result(other, 200.0)],
            [result(mine, 400.0), result(other, 200.0)],
        ]
        rows = throughput.summarise(rounds, [mine, other], [100])
        self.assertEqual([row["key"] for row in rows], [mine.key, other.key])
        self.assertEqual(rows[0]["rps"], 300.0)
        self.assertEqual(rows[1]["ratio"], {"median": 2.0, "low": 1.0, "high": 3.0})
        self.assertEqual(rows[0]["ratio"]["median"], 1.0)
        self.assertEqual(rows[1]["latency"][0]["loss"], 0.1)
        self.assertEqual(rows[1]["latency"][0]["p50_us"], 0.2)


def writeConfiguration(source: str) -> None:
    """
    Write the C{conf.py} of a documentation source in C{source} that uses
    the benchmark's extension.
    """
    with open(os.path.join(source, "conf.py"), "w") as f:
        f.write(
            "import sys\n"
            f"sys.path.insert(0, {os.path.join(ROOT, 'docs', '_ext')!r})\n"
            "extensions = ['benchreport']\n"
            "exclude_patterns = ['_build']\n"
        )


class DocumentationTests(SynchronousTestCase):
    """
    The documentation's extension, C{docs/_ext/benchreport.py}, turns
    published results into tables and charts.
    """

    def setUp(self) -> None:
        for module in ("sphinx", "matplotlib"):
            if importlib.util.find_spec(module) is None:
                missing(f"{module} is not installed (the test extra)")

    def build(self, source: str, output: str) -> subprocess.CompletedProcess[str]:
        """
        Build the HTML pages of C{source} into C{output}, warnings as
        errors.
        """
        sphinx = [sys.executable, "-m", "sphinx", "-W", "-n", "-q", "-b", "html"]
        return subprocess.run(
            [*sphinx, source, output],
            capture_output=True,
            text=True,
            timeout=300,
        )

    def assertBuilds(self, source: str, output: str) -> None:
        """
        Build the HTML pages of C{source} into C{output}, without a warning.
        """
        done = self.build(source, output)
        self.assertEqual(done.returncode, 0, done.stderr + done.stdout)

    def test_pages(self) -> None:
        """
        A page with every directive builds without a warning, with the
        figures of the data in its tables and every chart drawn as a PNG
        image that holds no date, the same bytes each time.
        """
        source = temporaryDirectory(self)
        os.makedirs(os.path.join(source, "data"))
        writeResults(os.path.join(source, "data"), throughputResults())
        writeResults(os.path.join(source, "data"), accuracyResults())
        writeConfiguration(source)
        charts = ("throughput", "throughput-cpu", "latency", "accuracy")
        tables = (
            "throughput",
            "latency",
            "workers",
            "accuracy",
            "throughput-servers",
            "accuracy-servers",
        )
        with open(os.path.join(source, "index.rst"), "w") as f:
            f.write("Results\n=======\n\n")
            for kind in ("throughput", "accuracy"):
                f.write(f".. bench-conditions:: {kind}\n\n")
            for name in tables:
                f.write(f".. bench-table:: {name}\n\n")
            for name in charts:
                f.write(f".. bench-chart:: {name}\n\n")
        output = os.path.join(temporaryDirectory(self), "html")
        self.assertBuilds(source, output)
        with open(os.path.join(output, "index.html")) as f:
            page = f.read()
        for expected in (
            "123,456",
            "1.50 (1.25-1.75)",
            "70,000 + 80,000",
            "9 of 12, 8 interleaved",
            "0.04 / 0.69",
            '<span class="pre">DIR/chrony.conf</span></code>',
            "Test CPU",
        ):
            self.assertTrue(expected in page, expected)
        self.assertEqual(page.count("<table"), len(tables))
        images = os.path.join(output, "_images")
        drawn = {}
        for name in charts:
            with open(os.path.join(images, f"{name}.png"), "rb") as f:
                drawn[name] = f.read()
            self.assertIn(f'src="_images/{name}.png"', page)
            self.assertTrue(drawn[name].startswith(b"\x89PNG\r\n\x1a\n"))
            self.assertNotIn(b"tIME", drawn[name])
            self.assertNotIn(b"Software", drawn[name])
        again = os.path.join(temporaryDirectory(self), "html")
        shutil.rmtree(os.path.join(source, "_generated"))
        self.assertBuilds(source, again)
        for name in charts:
            with open(os.path.join(again, "_images", f"{name}.png"), "rb") as f:
                self.assertEqual(f.read(), drawn[name], name)

    def test_namedData(self) -> None:
        """
        With C{:data: NAME}, a table, a chart or the conditions read the
        results published as C{NAME.json}: here a Roughtime run's, with its
        chart of both servers drawn.
        """
        source = temporaryDirectory(self)
        os.makedirs(os.path.join(source, "data"))
        rough = throughputResults()
        udptime = throughputRow("roughtime: udptime roughtime", 69188.0, True)
        udptime.update(kind="udptime", mean_batch=54.6, cpu_us=14.4)
        roughly = throughputRow("roughtime: roughly server run", 5974.0)
        roughly.update(kind="roughly", cpu_us=111.9)
        rough["rows"] = [udptime, roughly]
        rough["rounds"] = [
            [
                {"key": udptime["key"], "rps": 70000.0, "cpu_us": 14.0},
                {"key": roughly["key"], "rps": 6000.0, "cpu_us": 110.0},
            ]
        ]
        rough["note"] = "Roughtime only."
        with open(os.path.join(source, "data", "rough.json"), "w") as f:
            json.dump(rough, f)
        writeConfiguration(source)
        with open(os.path.join(source, "index.rst"), "w") as f:
            f.write("Results\n=======\n\n")
            for directive in (
                "bench-conditions:: throughput",
                "bench-table:: roughtime",
                "bench-chart:: roughtime",
            ):
                f.write(f".. {directive}\n   :data: rough\n\n")
        output = os.path.join(temporaryDirectory(self), "html")
        self.assertBuilds(source, output)
        with open(os.path.join(output, "index.html")) as f:
            page = f.read()
        for expected in ("69,188", "5,974", "14.4", "111.9", "54.6", "Roughtime only."):
            self.assertIn(expected, page)
        with open(os.path.join(output, "_images", "roughtime.png"), "rb") as f:
            self.assertTrue(f.read().startswith(b"\x89PNG\r\n\x1a\n"))

    def test_unknownTable(self) -> None:
        """
        A table the benchmark does not make fails the build, naming the
        known ones.
        """
        source = temporaryDirectory(self)
        with open(os.path.join(source, "conf.py"), "w") as f:
            f.write(
                "import sys\n"
                f"sys.path.insert(0, {os.path.join(ROOT, 'docs', '_ext')!r})\n"
                "extensions = ['benchreport']\n"
            )
        with open(os.path.join(source, "index.rst"), "w") as f:
            f.write("Results\n=======\n\n.. bench-table:: speed\n")
        done = self.build(source, os.path.join(source, "_build"))
        self.assertNotEqual(done.returncode, 0)
        self.assertIn("no benchmark table 'speed'", done.stderr)
        self.assertIn("throughput, latency", done.stderr)


class BackgroundLoadTests(SynchronousTestCase):
    """
    The load generator, run in the background, reports when stopped.
    """

    def test_stopReports(self) -> None:
        """
        Stopped once its requests arrive, it still prints its report,
        counting what it sent.
        """
        requirePeer("cc", "the benchmark's load generator is in C")
        load = benchModule("load")
        load.build()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as server:
            server.bind(("127.0.0.1", 0))
            server.settimeout(10)
            background = load.BackgroundLoad(
                server.getsockname()[1], "ntp", 1000.0, None, limit=30.0
            ).start()
            try:
                request = server.recv(2048)
            finally:
                report = background.stop()
        self.assertEqual(len(request), 48)
        self.assertIsNotNone(report)
        self.assertEqual(report["mode"], "open")
        self.assertGreaterEqual(report["sent"], 1)
        self.assertEqual(report["received"], 0)
        self.assertLess(report["seconds"], 30.0)


class RoughtimeBenchTests(SynchronousTestCase):
    """
    The benchmark's Roughtime rows: udptime's service and roughly's server,
    driven by the load generator.
    """

    def test_describeHidesKey(self) -> None:
        """
        The results show C{KEY} where roughly is given its private key.
        """
        servers = benchModule("servers")
        (roughly,) = [s for s in servers.THROUGHPUT_SERVERS if s.kind == "roughly"]
        command = servers.describe(roughly)["command"]
        self.assertIn("--private-key KEY --no-grease", command)
        seed = servers.roughtimeKey().read_text().strip()
        self.assertNotIn(seed, command)

    def test_closedLoop(self) -> None:
        """
        udptime's Roughtime service answers the load generator's requests
        (1036 bytes each), and tells how many responses each signature
        covered.
        """
        requirePeer("cc", "the benchmark's load generator is in C")
        servers, load, throughput = (
            benchModule(name) for name in ("servers", "load", "throughput")
        )
        load.build()
        (udptime,) = [
            s
            for s in servers.THROUGHPUT_SERVERS
            if s.protocol == "roughtime" and s.kind == "udptime"
        ]
        running = servers.Running(udptime, set(os.sched_getaffinity(0))).start()
        self.addCleanup(running.stop)
        report = load.closedLoop(running.port, "roughtime", None, 8, 0.5)
        self.assertGreater(report["received"], 0)
        batch = throughput.meanBatch(running)
        assert batch is not None
        self.assertGreaterEqual(batch, 1.0)


def ntsRow(key: str, rps: float, baseline: bool = False) -> dict[str, Any]:
    """
    A throughput row of an NTS server, as L{throughput.summarise} makes it.
    """
    row = throughputRow(key, rps, baseline)
    row.update(
        kind="udptime" if baseline else "chronyd",
        latency=[],
        request_bytes=228,
        checked_reply_bytes=[228],
        checked_replies=9,
        reply_bytes=[228, 228],
    )
    if baseline:
        row["nts_counters"] = {"authenticated": 123457, "naks": 0}
    else:
        row["ratio"] = {"median": 0.375, "low": 0.25, "high": 0.5}
    return row


class NTSBenchTests(SynchronousTestCase):
    """
    The benchmark's NTS rows: udptime's NTP service with NTS and chronyd
    serving NTS, each replaying one authenticated request made for it.
    """

    def test_describe(self) -> None:
        """
        The results show how each NTS server runs: udptime with its NTS-KE
        port, certificate and key; chronyd with its NTS directives and no
        C{ratelimit}.
        """
        servers = benchModule("servers")
        nts = {s.kind: s for s in servers.THROUGHPUT_SERVERS if s.protocol == "nts"}
        self.assertEqual(sorted(nts), ["chronyd", "udptime"])
        command = servers.describe(nts["udptime"])["command"]
        self.assertIn(
            "--ntp-port PORT --local-stratum 1 --nts-ke-port KEPORT"
            " --nts-certificate DIR/server-chain.pem"
            " --nts-private-key DIR/server-key.pem",
            command,
        )
        configuration = servers.describe(nts["chronyd"])["configuration"]
        for directive in (
            "port PORT",
            "ntsport KEPORT",
            "ntsservercert DIR/server-chain.pem",
            "ntsserverkey DIR/server-key.pem",
            "ntsdumpdir DIR",
        ):
            self.assertIn(directive, configuration.split("; "))
        self.assertNotIn("ratelimit", configuration)
        (plain,) = [
            s
            for s in servers.THROUGHPUT_SERVERS
            if s.protocol == "ntp" and s.kind == "chronyd"
        ]
        self.assertNotIn("nts", servers.describe(plain)["configuration"])

    def test_noRequest(self) -> None:
        """
        When the key exchange fails, no request is made: the error says
        which step failed.
        """
        servers = benchModule("servers")
        if not servers.ntsAvailable():
            missing("udptime's NTS needs the nts extra")
        directory = temporaryDirectory(self)
        caFile = servers.ntsCertificates(directory)
        closed = servers.freePort(socket.SOCK_STREAM)
        with self.assertRaises(RuntimeError) as raised:
            servers.ntsRequest(closed, servers.freePort(), caFile)
        self.assertIn("no NTS request: ntsrequest.py: ", str(raised.exception))
        self.assertIn(f"127.0.0.1:{closed}", str(raised.exception))

    def test_payload(self) -> None:
        """
        The load generator sends a given payload as it is; NTS requests are
        made per server, so there is none without one.
        """
        load = benchModule("load")
        command = load.loadgenCommand(123, "nts", ["--spin"], b"\x23\x01")
        self.assertEqual(command[1:], ["--port", "123", "--hex", "2301", "--spin"])
        self.assertIn("--ntp", load.loadgenCommand(123, "ntp", []))
        self.assertRaises(ValueError, load.loadgenCommand, 123, "nts", [])

    def test_summary(self) -> None:
        """
        An NTS server's row has the request's length, the replies' lengths
        (checked by the client, and received under load) and udptime's NTS
        counters added up over the rounds; the report shows them, and the
        goal is udptime's throughput against chronyd's.
        """
        throughput, servers, report = (
            benchModule(name) for name in ("throughput", "servers", "report")
        )
        mine = servers.Server("udptime nts", "nts", "udptime", baseline=True)
        chronyd = servers.Server("chronyd", "nts", "chronyd")

        def result(server: Any, rps: float, lengths: list[int]) -> dict[str, Any]:
            found = {
                "key": server.key,
                "label": server.label,
                "protocol": server.protocol,
                "rps": rps,
                "cpu_us": 1e6 / rps,
                "user_us": 1.0,
                "kernel_us": 1.0,
                "server_cpu": 1.0,
                "loadgen_busy": 0.5,
                "open": [],
                "reply_bytes": lengths,
                "nts_request": {
                    "request_bytes": 228,
                    "reply_bytes": [228],
                    "checked": 3,
                },
            }
            if server.kind == "udptime":
                found["nts_counters"] = {"authenticated": int(rps), "naks": 1}
            return found

        rounds = [
            [result(mine, 300.0, [228, 228]), result(chronyd, 1000.0, [228, 228])],
            [result(mine, 200.0, [84, 228]), result(chronyd, 400.0, [-1, -1])],
        ]
        rows = throughput.summarise(rounds, [mine, chronyd], [])
        self.assertEqual(rows[0]["nts_counters"], {"authenticated": 500, "naks": 2})
        self.assertEqual(rows[0]["reply_bytes"], [84, 228])
        self.assertEqual(rows[1]["reply_bytes"], [228, 228])
        self.assertEqual(rows[1]["checked_replies"], 6)
        self.assertNotIn("nts_counters", rows[1])
        self.assertEqual(rows[1]["ratio"]["median"], 0.4)
        data = resultsOf("throughput", {}, rows)
        table = report.ntsTable(data)
        self.assertEqual(
            table.rows[0][4:], ("228", "228 (6 checked)", "84 to 228", "500 / 2 / 0")
        )
        self.assertEqual(table.rows[1][2], "0.40 (0.30-0.50)")
        self.assertEqual(table.rows[1][-1], "-")
        found = report.goals(data, None)
        self.assertIn("  nts ÷ chronyd's NTS: 0.40 (>= 0.5) MISSED", found)

    def test_chart(self) -> None:
        """
        The NTS chart draws both servers' throughput and CPU time.
        """
        if importlib.util.find_spec("matplotlib") is None:
            missing("matplotlib is not installed (the test extra)")
        charts = benchModule("charts")
        data = resultsOf(
            "throughput",
            {},
            [ntsRow("nts: udptime nts", 20000.0, True), ntsRow("nts: chronyd", 1e5)],
        )
        figure = charts.CHARTS["nts"][1](data)
        labels = [t.get_text() for t in figure.axes[0].get_yticklabels()]
        self.assertEqual(sorted(labels), ["chronyd", "udptime nts"])
        self.assertIn("NTS", figure._suptitle.get_text())

    def closedLoop(self, kind: str) -> tuple[Any, dict[str, Any]]:
        """
        Start the NTS server of C{kind}, and drive it with a short closed
        loop of its request: the running server and the load generator's
        report.
        """
        requirePeer("cc", "the benchmark's load generator is in C")
        servers, load = (benchModule(name) for name in ("servers", "load"))
        (server,) = [
            s
            for s in servers.THROUGHPUT_SERVERS
            if s.protocol == "nts" and s.kind == kind
        ]
        if not server.available():
            missing(f"{server.label} cannot serve NTS here")
        load.build()
        running = servers.Running(server, set(os.sched_getaffinity(0))).start()
        self.addCleanup(running.stop)
        checked = running.ntsRequest
        self.assertEqual(checked["checked"], 3)
        self.assertEqual(checked["request_bytes"], len(running.payload))
        report = load.closedLoop(
            running.port, "nts", None, 8, 0.5, payload=running.payload
        )
        self.assertGreater(report["received"], 0)
        # Every reply as long as an authenticated one the client checked:
        # an NTS NAK (the header and the unique identifier) is shorter.
        self.assertEqual(
            [report["reply_min"], report["reply_max"]], checked["reply_bytes"] * 2
        )
        return running, report

    def test_udptime(self) -> None:
        """
        udptime's NTP service answers the replayed request as authenticated
        each time, as its NTS counters say when it stops.
        """
        throughput = benchModule("throughput")
        running, report = self.closedLoop("udptime")
        counters = throughput.ntsCounters(running)
        self.assertGreaterEqual(counters["authenticated"], report["received"] + 3)
        self.assertNotIn("naks", counters)
        self.assertNotIn("badAuthenticators", counters)

    def test_chronyd(self) -> None:
        """
        chronyd, serving NTS with a certificate made for the run, answers
        the request udptime's client made for it, each copy.
        """
        requirePeer("chronyd", "chronyd is the reference NTS server")
        self.closedLoop("chronyd")


class InstructionCountTests(SynchronousTestCase):
    """
    C{bench/instructions.py}'s counted children run with fixed string
    hashing, and with another checkout's package when asked.
    """

    def test_environment(self) -> None:
        instructions = benchModule("instructions")
        found = instructions.childEnvironment(
            None, {"PYTHONHASHSEED": "random", "HOME": "/h"}
        )
        self.assertEqual(found, {"PYTHONHASHSEED": "0", "HOME": "/h"})
        other = temporaryDirectory(self)
        found = instructions.childEnvironment(other, {"PYTHONPATH": "/x"})
        self.assertEqual(
            found["PYTHONPATH"], os.pathsep.join([os.path.realpath(other), "/x"])
        )
        self.assertEqual(
            instructions.childEnvironment(other, {})["PYTHONPATH"],
            os.path.realpath(other),
        )

    def test_spread(self) -> None:
        instructions = benchModule("instructions")
        self.assertEqual(instructions.spread([100.0]).strip(), "100")
        self.assertEqual(
            instructions.spread([100.0, 98.0, 101.0]).strip(),
            "100 (98 to 101, range 3.00 %)",
        )
