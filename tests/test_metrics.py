"""
Tests for L{udptime.metrics}: the report aggregator, the collector, the
C{/metrics} and C{/healthz} site over real HTTP, and a real Prometheus
scraping it.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Callable
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import task
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectError
from twisted.internet.protocol import Protocol, connectionDone
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.client import Agent, ResponseDone
from twisted.web.iweb import IResponse

from tests.prometheus import PrometheusServer
from tests.roughtimesupport import unsynchronised
from udptime import __version__
from udptime.clock import ClockState, Leap
from udptime.counters import ServiceCounters
from udptime.metrics import (
    FIELDS,
    GAUGE_FIELDS,
    MAX_BODY,
    ReportAggregator,
    UdptimeCollector,
    WorkerFigures,
    localReport,
    metricsRegistry,
    metricsSite,
)
from udptime.reports import Report, ReportMessage

SYNCED = ClockState(
    leap=Leap.INSERT,
    synchronised=True,
    stratum=3,
    refid=bytes([192, 0, 2, 1]),
    rootDelay=0.002,
    rootDispersion=0.004,
    referenceTime=1_800_000_000.0,
    precision=-20,
)


class BodyCollector(Protocol):
    """
    Collects an HTTP response's body, given to it by
    L{IResponse.deliverBody}: C{finished} fires with the body when the
    response is complete, or fails with why it is not.

    (C{twisted.web.client.readBody} would do, but it warns, as deprecated,
    that the transport an C{Agent} gives a response's body, its producer
    proxy, has no C{abortConnection}.)
    """

    def __init__(self) -> None:
        self.finished: Deferred[bytes] = Deferred()
        self.parts: list[bytes] = []

    def dataReceived(self, data: bytes) -> None:
        self.parts.append(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if reason.check(ResponseDone):
            self.finished.callback(b"".join(self.parts))
        else:
            self.finished.errback(reason)


def responseBody(response: IResponse) -> Deferred[bytes]:
    """
    The body of C{response}, whole.
    """
    collector = BodyCollector()
    response.deliverBody(collector)
    return collector.finished


def message(
    worker: str, incarnation: str, services: dict[str, dict[str, int]], dropped: int = 0
) -> ReportMessage:
    return ReportMessage(worker, incarnation, 1, dropped, Report(services=services))


def samples(collector: UdptimeCollector) -> dict[tuple[str, frozenset[Any]], float]:
    """
    Every sample the collector exposes, by name and labels, as Prometheus
    would read them from the text format.
    """
    from prometheus_client import generate_latest

    return textSamples(generate_latest(metricsRegistry(collector)).decode())


def textSamples(text: str) -> dict[tuple[str, frozenset[Any]], float]:
    """
    Every sample of a page in Prometheus' text format, by name and labels,
    as Prometheus reads them.
    """
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return found


def key(name: str, **labels: str) -> tuple[str, frozenset[Any]]:
    return (name, frozenset(labels.items()))


class AggregatorTests(SynchronousTestCase):
    """
    L{ReportAggregator} adds up the workers' reports, and its counters never
    go backwards when a worker is started again.
    """

    def test_sum(self) -> None:
        aggregator = ReportAggregator()
        aggregator.update(message("1", "a", {"ntp": {"answered": 10, "clients": 4}}))
        aggregator.update(message("2", "b", {"ntp": {"answered": 5, "clients": 1}}))
        aggregator.update(message("2", "b", {"time": {"answered": 2}}))
        self.assertEqual(
            aggregator.totals().services,
            {"ntp": {"answered": 15, "clients": 5}, "time": {"answered": 2}},
        )

    def test_restart(self) -> None:
        """
        A worker's next process adds to what its last one counted; the
        gauges are the running process's only.
        """
        aggregator = ReportAggregator()
        aggregator.workerStarted("1")
        aggregator.update(message("1", "a", {"ntp": {"answered": 100, "clients": 9}}))
        aggregator.workerEnded("1")
        self.assertEqual(aggregator.totals().services, {"ntp": {"answered": 100}})
        self.assertFalse(aggregator.workers()["1"].up)
        aggregator.workerStarted("1")
        aggregator.update(message("1", "b", {"ntp": {"answered": 3, "clients": 1}}))
        self.assertEqual(
            aggregator.totals().services, {"ntp": {"answered": 103, "clients": 1}}
        )
        figures = aggregator.workers()["1"]
        self.assertEqual((figures.up, figures.restarts), (True, 1))

    def test_newIncarnationWithoutEnd(self) -> None:
        """
        A report from a new process of a worker folds the old process's
        totals into the base even when its end was not reported.
        """
        aggregator = ReportAggregator()
        aggregator.update(message("1", "a", {"ntp": {"answered": 50}}, dropped=2))
        aggregator.update(message("1", "b", {"ntp": {"answered": 1}}, dropped=1))
        self.assertEqual(aggregator.totals().services, {"ntp": {"answered": 51}})
        self.assertEqual(aggregator.workers()["1"].dropped, 3)

    def test_lateReport(self) -> None:
        """
        A report from a process that ended is ignored and counted.
        """
        aggregator = ReportAggregator()
        aggregator.update(message("1", "a", {"ntp": {"answered": 50}}))
        aggregator.update(message("1", "b", {"ntp": {"answered": 1}}))
        self.assertFalse(
            aggregator.update(message("1", "a", {"ntp": {"answered": 60}}))
        )
        self.assertEqual(aggregator.rejected, 1)
        self.assertEqual(aggregator.totals().services, {"ntp": {"answered": 51}})

    def test_neverBackwards(self) -> None:
        """
        Within one process, a counter that goes down is ignored.
        """
        aggregator = ReportAggregator()
        aggregator.update(message("1", "a", {"ntp": {"answered": 50}}))
        aggregator.update(message("1", "a", {"ntp": {"answered": 40}}))
        self.assertEqual(aggregator.totals().services, {"ntp": {"answered": 50}})

    def test_gaugeFields(self) -> None:
        self.assertEqual(GAUGE_FIELDS, {"clients"})

    @settings(max_examples=200, deadline=None)
    @given(
        st.lists(
            st.tuples(
                st.sampled_from(["1", "2", "3"]),
                st.sampled_from(["report", "restart", "end"]),
                st.integers(0, 1000),
            ),
            max_size=60,
        )
    )
    def test_totalsProperty(self, events: list[tuple[str, str, int]]) -> None:
        """
        Whatever the order of reports, ends and restarts, the total never
        goes down and equals everything the processes counted (by their
        last reports).
        """
        aggregator = ReportAggregator()
        counted = {}  # worker -> (incarnation number, count), per process
        done = 0  # what ended processes counted
        previous = 0
        for worker, event, increment in events:
            generation, count = counted.get(worker, (0, 0))
            if event == "report":
                count += increment
                aggregator.update(
                    message(
                        worker, f"{worker}-{generation}", {"ntp": {"received": count}}
                    )
                )
            elif event == "end":
                aggregator.workerEnded(worker)
                done += count
                generation, count = generation + 1, 0
            else:
                aggregator.workerStarted(worker)
                done += count
                generation, count = generation + 1, 0
            counted[worker] = (generation, count)
            total = aggregator.totals().services.get("ntp", {}).get("received", 0)
            self.assertGreaterEqual(total, previous)
            self.assertEqual(total, done + sum(c for _, c in counted.values()))
            previous = total


class FakePolicy:
    def stats(self) -> dict[str, int]:
        return {"clients": 7, "evicted": 2}


class FakeUpstream:
    reachable = True
    reach = 0b1011


class CollectorTests(SynchronousTestCase):
    """
    L{UdptimeCollector} exports the reports and the clock's state under the
    names of L{FIELDS}.
    """

    def test_localReport(self) -> None:
        """
        L{localReport} merges each service's counters with its policy's
        figures, and adds the extra families.
        """
        counters = ServiceCounters()
        counters.received = 3
        counters.answered = 2
        report = localReport(
            {"ntp": (counters, FakePolicy()), "echo": (ServiceCounters(), None)},
            lambda: {"nts_ke_sessions": {"completed": 1}},
        )()
        self.assertEqual(report.services["ntp"]["received"], 3)
        self.assertEqual(report.services["ntp"]["clients"], 7)
        self.assertNotIn("clients", report.services["echo"])
        self.assertEqual(report.extra, {"nts_ke_sessions": {"completed": 1}})

    def test_everyCounterMapped(self) -> None:
        """
        Every counter a service keeps and every policy figure has its row
        in the table.
        """
        names = set(ServiceCounters().snapshot()) | set(FakePolicy().stats())
        self.assertEqual(names - set(FIELDS), set())

    def test_services(self) -> None:
        counters = ServiceCounters()
        for offset, name in enumerate(counters.snapshot()):
            setattr(counters, name, 100 + offset)
        report = localReport({"ntp": (counters, FakePolicy())})()
        report.services["ntp"]["unknownCounter"] = 5
        found = samples(UdptimeCollector(lambda: report))
        outcomes = {
            "answered": 101,
            "malformed": 102,
            "dropped": 103,
            "rate_limited": 104,
            "denied": 105,
            "loop_guarded": 106,
            "kiss_of_death": 107,
            "send_error": 108,
            "internal_error": 109,
        }
        for outcome, value in outcomes.items():
            self.assertEqual(
                found[key("udptime_requests_total", service="ntp", outcome=outcome)],
                value,
            )
        self.assertEqual(
            found[key("udptime_received_packets_total", service="ntp")], 100
        )
        self.assertEqual(found[key("udptime_rate_limit_clients", service="ntp")], 7)
        self.assertEqual(
            found[key("udptime_rate_limit_evictions_total", service="ntp")], 2
        )
        self.assertFalse([k for k in found if "unknown" in k[0]])
        import platform

        import twisted

        self.assertEqual(
            found[
                key(
                    "udptime_build_info",
                    version=__version__,
                    twisted=twisted.__version__,
                    python=platform.python_version(),
                )
            ],
            1,
        )

    def test_extra(self) -> None:
        """
        Extra families are counters by outcome; known ones keep their
        names, others get C{udptime_NAME_total} when NAME is a valid name.
        """
        report = Report(
            extra={
                "nts_ke_sessions": {"completed": 3, "failed": 1},
                "nts_requests": {"authenticated": 9},
                "roughtime_requests": {"answered": 2},
                "bad name!": {"x": 1},
            }
        )
        found = samples(UdptimeCollector(lambda: report))
        self.assertEqual(
            found[key("udptime_nts_ke_sessions_total", outcome="completed")], 3
        )
        self.assertEqual(
            found[key("udptime_nts_ke_sessions_total", outcome="failed")], 1
        )
        self.assertEqual(
            found[key("udptime_nts_requests_total", outcome="authenticated")], 9
        )
        self.assertEqual(
            found[key("udptime_roughtime_requests_total", outcome="answered")], 2
        )
        self.assertFalse([k for k in found if "bad" in k[0]])

    def test_clock(self) -> None:
        found = samples(
            UdptimeCollector(Report, clock=lambda: SYNCED, upstream=FakeUpstream())
        )
        self.assertEqual(found[key("udptime_clock_synchronised")], 1)
        self.assertEqual(found[key("udptime_clock_stratum")], 3)
        self.assertEqual(found[key("udptime_clock_leap_indicator")], 1)
        self.assertEqual(found[key("udptime_clock_root_delay_seconds")], 0.002)
        self.assertEqual(found[key("udptime_clock_root_dispersion_seconds")], 0.004)
        self.assertEqual(found[key("udptime_clock_precision_seconds")], 2.0**-20)
        self.assertEqual(
            found[key("udptime_clock_reference_timestamp_seconds")], 1_800_000_000.0
        )
        self.assertEqual(
            found[key("udptime_clock_reference_info", refid="192.0.2.1")], 1
        )
        self.assertEqual(found[key("udptime_upstream_reachable")], 1)
        self.assertEqual(found[key("udptime_upstream_reach")], 11)

    def test_clockUnsynchronised(self) -> None:
        state = unsynchronised()
        found = samples(UdptimeCollector(Report, clock=lambda: state))
        self.assertEqual(found[key("udptime_clock_synchronised")], 0)
        self.assertEqual(found[key("udptime_clock_leap_indicator")], 3)
        self.assertNotIn(key("udptime_clock_reference_timestamp_seconds"), found)
        self.assertNotIn(key("udptime_upstream_reachable"), found)

    def test_workers(self) -> None:
        figures = {
            "1": WorkerFigures(True, 2, 5, Report(services={"ntp": {"received": 9}})),
            "2": WorkerFigures(False, 0, 0, Report()),
        }
        found = samples(UdptimeCollector(Report, workers=lambda: figures))
        self.assertEqual(found[key("udptime_worker_up", worker="1")], 1)
        self.assertEqual(found[key("udptime_worker_up", worker="2")], 0)
        self.assertEqual(found[key("udptime_worker_restarts_total", worker="1")], 2)
        self.assertEqual(
            found[key("udptime_worker_reports_dropped_total", worker="1")], 5
        )
        self.assertEqual(
            found[
                key("udptime_worker_received_packets_total", worker="1", service="ntp")
            ],
            9,
        )


class MetricsSiteTests(TestCase):
    """
    L{metricsSite} over real HTTP on 127.0.0.1.
    """

    def setUp(self) -> None:
        from twisted.internet import reactor

        self.reactor: Any = reactor
        self.report = Report(services={"ntp": {"answered": 42}})
        self.reason: str | None = None
        self.failing = False
        collector = UdptimeCollector(self.source, clock=lambda: SYNCED)
        self.factory = metricsSite(
            metricsRegistry(collector), self.health, maxConnections=3
        )
        self.port = reactor.listenTCP(0, self.factory, interface="127.0.0.1")
        self.addCleanup(self.port.stopListening)
        self.base = f"http://127.0.0.1:{self.port.getHost().port}"

    def source(self) -> Report:
        if self.failing:
            raise RuntimeError("secret detail")
        return self.report

    def health(self) -> str | None:
        if self.failing:
            raise RuntimeError("secret detail")
        return self.reason

    async def get(
        self, path: str, method: bytes = b"GET", body: bytes | None = None
    ) -> tuple[int, dict[bytes, list[bytes]], bytes]:
        from io import BytesIO

        from twisted.web.client import FileBodyProducer

        agent = Agent(self.reactor)
        producer = None if body is None else FileBodyProducer(BytesIO(body))
        response = await agent.request(
            method, (self.base + path).encode(), None, producer
        )
        content = await responseBody(response)
        headers = dict(response.headers.getAllRawHeaders())
        return response.code, headers, content

    async def test_metrics(self) -> None:
        code, headers, body = await self.get("/metrics")
        self.assertEqual(code, 200)
        self.assertTrue(headers[b"Content-Type"][0].startswith(b"text/plain"))
        self.assertIn(
            b'udptime_requests_total{outcome="answered",service="ntp"} 42.0', body
        )
        self.assertIn(b"udptime_clock_stratum 3.0", body)

    async def test_health(self) -> None:
        self.assertEqual((await self.get("/healthz"))[::2], (200, b"ok\n"))
        self.reason = "ntp is not listening\non 127.0.0.1:123"
        self.assertEqual(
            (await self.get("/healthz"))[::2],
            (503, b"ntp is not listening on 127.0.0.1:123\n"),
        )

    async def test_notFound(self) -> None:
        for path in "/", "/metric", "/metrics/x", "/healthz/", "/..", "/favicon.ico":
            code, _, body = await self.get(path)
            self.assertEqual(code, 404, path)
            self.assertEqual(body, b"not found\n")

    async def test_method(self) -> None:
        for method in b"POST", b"PUT", b"DELETE":
            code, headers, body = await self.get("/metrics", method)
            self.assertEqual(code, 405, method)
            self.assertEqual(headers[b"Allow"], [b"GET, HEAD"])
            self.assertEqual(body, b"method not allowed\n")
        code, _, body = await self.get("/metrics", b"HEAD")
        self.assertEqual((code, body), (200, b""))

    async def test_failureHidden(self) -> None:
        """
        A failure while rendering is a bare 500: no traceback, no detail
        reaches the client; it is logged.
        """
        self.failing = True
        for path in "/metrics", "/healthz":
            code, _, body = await self.get(path)
            self.assertEqual((code, body), (500, b"internal error\n"), path)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 2)

    async def test_bodyTooLarge(self) -> None:
        """
        A request with a body over L{MAX_BODY} is refused with 413.
        """
        code, _, _ = await self.get("/metrics", b"GET", b"x" * (MAX_BODY + 1))
        self.assertEqual(code, 413)
        code, _, _ = await self.get("/metrics", b"GET", b"x" * 10)
        self.assertEqual(code, 200)

    async def test_connectionLimit(self) -> None:
        """
        Past C{maxConnections} open connections, a new one is closed at
        once; the limit frees as connections close.
        """
        held = []
        for _ in range(3):
            sock = socket.create_connection(("127.0.0.1", self.port.getHost().port))
            self.addCleanup(sock.close)
            held.append(sock)
        await self.waitFor(lambda: len(self.factory.protocols) == 3)
        extra = socket.create_connection(("127.0.0.1", self.port.getHost().port))
        self.addCleanup(extra.close)
        extra.setblocking(False)

        def closed() -> bool:
            try:
                return extra.recv(1) == b""
            except BlockingIOError:
                return False
            except ConnectionResetError:
                return True

        await self.waitFor(closed)
        for sock in held:
            sock.close()
        await self.waitFor(lambda: len(self.factory.protocols) == 0)
        code, _, _ = await self.get("/healthz")
        self.assertEqual(code, 200)

    def test_idleTimeout(self) -> None:
        self.assertEqual(self.factory.wrappedFactory.timeOut, 10.0)

    async def waitFor(self, check: Callable[[], bool], timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while not check():
            if time.monotonic() > deadline:
                self.fail("timed out")
            await task.deferLater(self.reactor, 0.02)  # polling, bounded


class PrometheusTests(TestCase):
    """
    A real Prometheus scrapes the metrics site and gets the supervisor's
    totals, restarts included.
    """

    timeout = 120

    def setUp(self) -> None:
        from twisted.internet import reactor

        self.reactor: Any = reactor
        self.aggregator = ReportAggregator()
        collector = UdptimeCollector(
            self.aggregator.totals, workers=self.aggregator.workers
        )
        site = metricsSite(metricsRegistry(collector), lambda: None)
        port = reactor.listenTCP(0, site, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        self.prometheus = PrometheusServer(port.getHost().port)
        self.addCleanup(self.prometheus.stop)

    async def query(self, expression: str) -> list[dict[str, Any]]:
        """
        The result of an instant query through Prometheus' HTTP API.
        """
        agent = Agent(self.reactor)
        url = self.prometheus.queryURL(expression)
        response = await agent.request(b"GET", url.encode())
        body = json.loads(await responseBody(response))
        self.assertEqual(body["status"], "success", body)
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    async def value(self, expression: str) -> float | None:
        try:
            result = await self.query(expression)
        except ConnectError:
            return None  # not listening yet
        if len(result) != 1:
            return None
        return float(result[0]["value"][1])

    async def waitForValue(
        self, expression: str, check: Callable[[float], bool], timeout: float = 60.0
    ) -> float:
        """
        Query until the value satisfies C{check}, for at most C{timeout}
        seconds; return it.
        """
        deadline = time.monotonic() + timeout
        last = None
        while True:
            self.prometheus.checkRunning()
            last = await self.value(expression)
            if last is not None and check(last):
                return last
            if time.monotonic() > deadline:
                self.fail(f"{expression} is {last}, still, after {timeout} s")
            await task.deferLater(self.reactor, 0.2)  # polling, bounded

    async def test_totals(self) -> None:
        """
        Prometheus gets the sum over the workers, which a worker's restart
        does not lower, and sees the known increase in C{increase()} and
        C{rate()}.
        """
        ntp = "ntp"
        self.aggregator.workerStarted("1")
        self.aggregator.workerStarted("2")
        self.aggregator.update(message("1", "a", {ntp: {"answered": 100}}))
        self.aggregator.update(message("2", "b", {ntp: {"answered": 50}}))
        self.aggregator.workerEnded("1")
        self.aggregator.workerStarted("1")
        self.aggregator.update(message("1", "c", {ntp: {"answered": 5}}))
        total = 'sum(udptime_requests_total{service="ntp",outcome="answered"})'
        await self.waitForValue(total, lambda v: v == 155.0)
        restarts = 'udptime_worker_restarts_total{worker="1"}'
        self.assertEqual(await self.value(restarts), 1.0)
        # Several scrapes of the first total, then a known increase of 100.
        samples = f"count_over_time({total[4:-1]}[5m])"
        await self.waitForValue(samples, lambda v: v >= 5)
        self.aggregator.update(message("2", "b", {ntp: {"answered": 150}}))
        await self.waitForValue(total, lambda v: v == 255.0)
        series = total[4:-1]
        increase = await self.value(f"sum(increase({series}[5m]))")
        assert increase is not None
        # Prometheus extrapolates an increase to the window's edges, by at
        # most about 1.6 scrape intervals over the sampled span here.
        self.assertGreaterEqual(increase, 100.0)
        self.assertLessEqual(increase, 200.0)
        rate = await self.value(f"sum(rate({series}[5m]))")
        assert rate is not None
        # rate() is the same extrapolated increase per second of the window.
        self.assertGreaterEqual(rate * 300, 100.0)
        self.assertLessEqual(rate * 300, 200.0)


class DocumentedNamesTests(SynchronousTestCase):
    """
    Every metric the operations page and the Grafana dashboard name is one
    the collector exports.
    """

    def exported(self) -> set[str]:
        report = Report(
            services={"ntp": {name: 1 for name in FIELDS}},
            extra={
                "nts_ke_sessions": {"completed": 1},
                "nts_requests": {"nak": 1},
                "global_limit": {"refused": 1},
                "interleave_transmit_times": {"evicted": 1},
            },
        )
        figures = {"1": WorkerFigures(True, 0, 0, report)}
        collector = UdptimeCollector(
            lambda: report,
            clock=lambda: SYNCED,
            upstream=FakeUpstream(),
            workers=lambda: figures,
        )
        return {name for name, _ in samples(collector)}

    def named(self, path: str) -> set[str]:
        import re

        root = os.path.dirname(os.path.dirname(__file__))
        with open(os.path.join(root, path)) as f:
            return set(re.findall(r"udptime_[a-z_]+[a-z]", f.read()))

    def test_documented(self) -> None:
        exported = self.exported()
        for path in "docs/operations-metrics.rst", "contrib/grafana/udptime.json":
            named = self.named(path)
            self.assertTrue(named, path)
            self.assertEqual(named - exported, set(), path)
