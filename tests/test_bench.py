"""
The benchmark's in-process measurements, C{bench/hotpath.py} and
C{bench/txstamp.py}, run to the end on a tiny load and report every path
they measure, so that a change to the udptime internals they drive cannot
leave them broken.  Their numbers are not checked: speed lives in the
benchmark, not in the tests.
"""

from __future__ import annotations

import os
import subprocess
import sys

from twisted.trial.unittest import SynchronousTestCase

from udptime.ancillary import kernelTimestampsAvailable
from udptime.port import batchingAvailable

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def runBenchScript(case: SynchronousTestCase, script: str, *arguments: str) -> str:
    """
    Run C{bench/script} with C{arguments}: its standard output, once it
    exited with status 0.
    """
    done = subprocess.run(
        [sys.executable, os.path.join(ROOT, "bench", script), *arguments],
        capture_output=True,
        text=True,
        timeout=120,
    )
    case.assertEqual(done.returncode, 0, done.stderr)
    return done.stdout


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
                "groups of 4, stamped at the call",
                "groups of 4, stamps spread",
            ],
        )
        for row in rows:
            # CPU per reply, then five percentiles of the gap.
            self.assertEqual(len(row[38:].split()), 6, row)
