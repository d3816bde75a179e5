"""
The client accuracy benchmark, C{bench/clientaccuracy.py}: what it reads
from C{udptime --json}, how it sums up each client against each server
beside C{chronyd -Q}, and its table and chart.  Its numbers are the
benchmark's, never checked here.
"""

from __future__ import annotations

import importlib.util
import json
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from tests.support import missing
from tests.test_bench import benchModule


def sample(server: str, client: str, n: int, offset: float, delay: float) -> Any:
    """
    One sample as the benchmark keeps it, in round C{n}.
    """
    return {
        "server": server,
        "client": client,
        "round": n,
        "offset": offset,
        "delay": delay,
    }


class ParseOutputTests(SynchronousTestCase):
    """
    C{parseOutput} takes each reply's offset and delay from what C{udptime
    --json} printed, and counts the queries that gave none.
    """

    def test_replies(self) -> None:
        clientaccuracy = benchModule("clientaccuracy")
        output = "\n".join(
            [
                json.dumps({"offset": -2e-06, "delay": 1.5e-05, "text": "x"}),
                json.dumps({"error": "timeout", "message": "no reply"}),
                "not JSON",
                json.dumps({"offset": None, "delay": 1e-05}),
                json.dumps({"offset": 3e-06, "delay": 2e-05}),
            ]
        )
        samples, failed = clientaccuracy.parseOutput(output, 6)
        self.assertEqual(
            samples,
            [{"offset": -2e-06, "delay": 1.5e-05}, {"offset": 3e-06, "delay": 2e-05}],
        )
        # Three lines without a reading, and one query never printed.
        self.assertEqual(failed, 4)

    def test_command(self) -> None:
        """
        The client asks over NTP, as often as chronyd polls, printing JSON.
        """
        clientaccuracy = benchModule("clientaccuracy")
        self.assertEqual(
            clientaccuracy.udptimeCommand("udptime", 1234, 8, -7),
            [
                "udptime",
                "-P",
                "ntp",
                "-p",
                "1234",
                "-c",
                "8",
                "--interval",
                "0.0078125",
                "--json",
                "127.0.0.1",
            ],
        )


class SummaryTests(SynchronousTestCase):
    """
    One row per server and client: medians in µs over the rounds, and each
    client's median |offset| and delay as multiples of chronyd -Q's against
    the same server.
    """

    def rows(self) -> list[dict[str, Any]]:
        clientaccuracy = benchModule("clientaccuracy")
        servers = benchModule("servers")
        udptime = servers.Server("udptime", "ntp", "udptime")
        chronyd = servers.Server("chronyd", "ntp", "chronyd")
        clients = [
            clientaccuracy.Client("chronyd -Q"),
            clientaccuracy.Client("udptime", "udptime"),
        ]
        samples = [
            sample(udptime.key, "chronyd -Q", 0, -4e-06, 1e-05),
            sample(udptime.key, "chronyd -Q", 1, -6e-06, 1.2e-05),
            sample(udptime.key, "udptime", 0, -5e-06, 1.5e-05),
            sample(udptime.key, "udptime", 1, 5e-06, 1.5e-05),
            {"server": udptime.key, "client": "udptime", "round": 1, "failed": 2},
            sample(chronyd.key, "udptime", 0, 1e-06, 4e-06),
        ]
        rows: list[dict[str, Any]] = clientaccuracy.summarise(
            [udptime, chronyd], clients, samples
        )
        return rows

    def test_rows(self) -> None:
        rows = self.rows()
        self.assertEqual(
            [(r["label"], r["client"], r["samples"]) for r in rows],
            [
                ("udptime", "chronyd -Q", 2),
                ("udptime", "udptime", 2),
                ("chronyd", "chronyd -Q", 0),
                ("chronyd", "udptime", 1),
            ],
        )
        chrony, mine = rows[0], rows[1]
        self.assertAlmostEqual(chrony["median_abs_offset_us"], 5.0)
        self.assertAlmostEqual(chrony["median_offset_us"], -5.0)
        self.assertAlmostEqual(chrony["median_delay_us"], 11.0)
        self.assertEqual(chrony["round_medians_abs_offset_us"], [4.0, 6.0])
        self.assertEqual(mine["failed"], 2)
        self.assertAlmostEqual(mine["median_offset_us"], 0.0)
        self.assertAlmostEqual(mine["median_abs_offset_ratio"], 1.0)
        self.assertAlmostEqual(mine["median_delay_ratio"], 15 / 11)
        # No chronyd -Q samples against chronyd: no ratio.
        self.assertIsNone(rows[3]["median_delay_ratio"])

    def test_tableAndChart(self) -> None:
        """
        The table shows every row, with the ratios for the clients that are
        not chronyd -Q; the chart draws every client against every server.
        """
        if importlib.util.find_spec("matplotlib") is None:
            missing("matplotlib is not installed (the test extra)")
        report = benchModule("report")
        charts = benchModule("charts")
        data = {"rows": self.rows()}
        table = report.clientAccuracyTable(data)
        self.assertEqual(len(table.rows), 4)
        self.assertEqual(table.rows[0][-1], "-")
        self.assertEqual(table.rows[1][-1], "1.00 / 1.36")
        self.assertEqual(table.rows[1][2], "2 (2 not used)")
        figure = charts.clientAccuracyChart(data)
        offsets, delays = figure.axes[:2]
        self.assertEqual(len(offsets.patches), 4)
        self.assertEqual(len(delays.patches), 4)
