"""
Tests for L{udptime.operations}: the metrics and health of each role of
C{twistd udptime}, the workers' reports to their supervisor, and real
C{twistd udptime} processes scraped over HTTP and by a real Prometheus.
"""

from __future__ import annotations

import itertools
import os
import signal
import socket
import urllib.error
import urllib.request
from types import SimpleNamespace
from typing import Any

from twisted.internet.task import Clock
from twisted.logger import LogLevel, globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from tests.prometheus import PrometheusServer, freeTCPPort
from tests.support import (
    RecordingTransport,
    TwistdServer,
    deliver,
    freePort,
    udpQuery,
    waitFor,
)
from tests.test_metrics import key, samples, textSamples
from udptime import workers
from udptime.clock import ClockSource
from udptime.interleave import TransmitTimes
from udptime.metrics import UdptimeCollector
from udptime.operations import (
    GLOBAL_LIMIT,
    INTERLEAVE,
    MetricsCannotListen,
    SupervisorReports,
    metricsSocket,
    processHealth,
    processReport,
    supervisorHealth,
)
from udptime.policy import Policy, PolicyProfile, RateLimiter
from udptime.reports import Report, encodeReport
from udptime.server import NTPServer, TextTimeServer

NTP_REQUEST = bytes([0x23]) + bytes(47)
"""An NTP client request (version 4, mode 3), transmit timestamp 0."""

SHORT_NTP = bytes([0x23]) + bytes(46)
"""47 bytes: malformed for NTP."""


def reportLine(worker: str, incarnation: str, services: dict[str, Any]) -> str:
    """
    A worker's report line as the supervisor's relay reads it.
    """
    (line,) = encodeReport(worker, incarnation, 1, 0, Report(services=services))
    return line.decode("utf-8").strip("\x1e\n")


class SupervisorReportsTests(SynchronousTestCase):
    """
    The supervisor takes its workers' report lines out of their log and adds
    them up.
    """

    def test_report(self) -> None:
        reports = SupervisorReports()
        reports.workerStarted(1)
        line = reportLine("1", "a", {"ntp": {"answered": 7}})
        self.assertTrue(reports.workerLine(1, line))
        self.assertEqual(reports.aggregator.totals().services["ntp"]["answered"], 7)
        self.assertEqual(reports.reported, {1})

    def test_logEvent(self) -> None:
        """
        A log event is not a report: it goes on to the log.
        """
        reports = SupervisorReports()
        self.assertFalse(reports.workerLine(1, '{"log_format": "hello"}'))
        self.assertFalse(reports.workerLine(1, "Traceback (most recent call last):"))
        self.assertEqual(reports.aggregator.totals().services, {})

    def test_malformed(self) -> None:
        """
        A report line that cannot be read, or that names another worker, is
        taken out of the log, counted and not added.
        """
        reports = SupervisorReports()
        self.assertTrue(reports.workerLine(1, '{"udptime_report": 1, "worker": 3'))
        line = reportLine("2", "a", {"ntp": {"answered": 7}})
        self.assertTrue(reports.workerLine(1, line))
        self.assertEqual(reports.malformed, 2)
        self.assertEqual(reports.aggregator.totals().services, {})
        self.assertEqual(reports.reported, set())

    def test_restart(self) -> None:
        """
        A worker that ended has not reported until its new process does;
        its totals never go backwards.
        """
        reports = SupervisorReports()
        reports.workerStarted(1)
        reports.workerLine(1, reportLine("1", "a", {"ntp": {"answered": 7}}))
        reports.workerEnded(1)
        self.assertEqual(reports.reported, set())
        reports.workerStarted(1)
        reports.workerLine(1, reportLine("1", "b", {"ntp": {"answered": 2}}))
        self.assertEqual(reports.reported, {1})
        self.assertEqual(reports.aggregator.totals().services["ntp"]["answered"], 9)
        self.assertEqual(reports.aggregator.workers()["1"].restarts, 1)


class WatcherTests(SynchronousTestCase):
    """
    L{workers.WorkerSupervisor} tells its watcher of its workers' lives and
    output.
    """

    def test_relay(self) -> None:
        """
        A report line of a worker goes to the watcher, not to the log.
        """
        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        reports = SupervisorReports()
        supervisor: Any = SimpleNamespace(reactor=Clock(), watcher=reports)
        worker = workers.WorkerProcess(supervisor, 2)
        line = "\x1e" + reportLine("2", "a", {"text": {"received": 3}}) + "\n"
        worker.childDataReceived(1, line.encode())
        worker.childDataReceived(1, b"plain words\n")
        self.assertEqual(reports.aggregator.totals().services["text"]["received"], 3)
        logged = [e for e in events if e.get("log_level") == LogLevel.warn]
        self.assertEqual([e["line"] for e in logged], ["plain words"])

    def test_ended(self) -> None:
        """
        The supervisor tells the watcher when a worker's process ends.
        """
        reports = SupervisorReports()
        supervisor = workers.WorkerSupervisor(
            Clock(), {"text": 0}, "127.0.0.1", 1, [], watcher=reports
        )
        worker = workers.WorkerProcess(supervisor, 1)
        supervisor.workers[1] = worker
        reports.workerStarted(1)
        reports.workerLine(1, reportLine("1", "a", {"text": {"received": 3}}))
        supervisor._stopping = True  # no restart to schedule
        supervisor.workerEnded(worker, Failure(RuntimeError("gone")))
        self.assertEqual(reports.reported, set())
        self.assertFalse(reports.aggregator.workers()["1"].up)


class HealthTests(SynchronousTestCase):
    """
    C{/healthz}'s verdict in each role.
    """

    def test_supervisor(self) -> None:
        """
        A supervisor is healthy while its sockets are bound and every worker
        runs and has reported since it started.
        """
        reports = SupervisorReports()
        supervisor: Any = SimpleNamespace(sockets={}, count=2, workers={})
        health = supervisorHealth(supervisor, reports)
        self.assertEqual(health(), "the sockets are not bound")
        supervisor.sockets = {1: {}, 2: {}}
        self.assertEqual(health(), "worker 1 is not running; worker 2 is not running")
        for index in (1, 2):
            supervisor.workers[index] = object()
            reports.workerStarted(index)
        self.assertEqual(
            health(),
            "worker 1 has not reported since it started; worker 2 has not"
            " reported since it started",
        )
        for index in (1, 2):
            reports.workerLine(index, reportLine(str(index), "a", {}))
        self.assertIsNone(health())
        del supervisor.workers[2]
        reports.workerEnded(2)
        self.assertEqual(health(), "worker 2 is not running")
        supervisor.workers[2] = object()
        reports.workerStarted(2)
        self.assertEqual(health(), "worker 2 has not reported since it started")
        reports.workerLine(2, reportLine("2", "b", {}))
        self.assertIsNone(health())

    def test_process(self) -> None:
        """
        A single process is healthy while every service listens.
        """
        listeners: Any = [
            SimpleNamespace(name="text", port=object()),
            SimpleNamespace(name="ntp", port=None),
        ]
        health = processHealth(listeners)
        self.assertEqual(health(), "not listening: ntp")
        listeners[1].port = object()
        self.assertIsNone(health())


class ProcessReportTests(SynchronousTestCase):
    """
    A process's report: its services' counters and policies' figures, and
    the shared cap's refusals.
    """

    def test_sum(self) -> None:
        """
        Protocols of one service (one per socket) are added up.
        """
        cap = RateLimiter(1.0, 1)
        protocols = []
        for _ in range(2):
            protocol = TextTimeServer(
                policy=Policy.fromProfile(PolicyProfile(), globalLimit=cap)
            )
            protocol.makeConnection(RecordingTransport())
            protocols.append(protocol)
        deliver(protocols[0], b"", ("192.0.2.1", 4000), 1_800_000_000.0)
        deliver(protocols[1], b"", ("192.0.2.2", 4000), 1_800_000_000.0)
        deliver(protocols[1], b"", ("192.0.2.3", 4000), 1_800_000_000.0)
        report = processReport({"text": protocols}, cap)()
        values = report.services["text"]
        self.assertEqual(values["received"], 3)
        self.assertEqual(values["answered"], 1)
        self.assertEqual(values["limited"], 2)
        self.assertEqual(values["clients"], 3)
        self.assertEqual(report.extra, {GLOBAL_LIMIT: {"refused": 2}})

    def test_noCap(self) -> None:
        self.assertEqual(processReport({}, None)().extra, {})

    def test_interleaveTables(self) -> None:
        """
        The NTP services' tables of kernel transmit times are added up:
        recorded, used in interleaved replies, evicted for room.
        """
        protocols = []
        for capacity in (1, 2):
            protocol = NTPServer(clockSource=ClockSource(10, precision=-20))
            table = protocol.interleave = TransmitTimes(capacity)
            for receive in (b"a" * 8, b"b" * 8):
                table.expect("192.0.2.1", receive)
                table.transmitted(receive, 1)
            table.previous("192.0.2.1", b"b" * 8)
            protocols.append(protocol)
        protocols.append(NTPServer(interleaved=False, clockSource=ClockSource(10)))
        report = processReport({"ntp": protocols}, None)()
        self.assertEqual(
            report.extra,
            {INTERLEAVE: {"recorded": 4, "used": 2, "evicted": 1}},
        )
        found = samples(UdptimeCollector(lambda: report))
        self.assertEqual(
            found[key("udptime_interleave_transmit_times_total", outcome="evicted")],
            1,
        )


class MetricsSocketTests(SynchronousTestCase):
    def test_inUse(self) -> None:
        """
        A metrics port in use is one line naming it.
        """
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen(1)
            port = taken.getsockname()[1]
            with self.assertRaises(MetricsCannotListen) as caught:
                metricsSocket("127.0.0.1", port)
        self.assertEqual(
            str(caught.exception),
            f"metrics service cannot listen on 127.0.0.1:{port} (TCP):"
            " Address already in use",
        )


def get(port: int, path: str, timeout: float = 10.0) -> tuple[int, str]:
    """
    C{GET path} from the metrics listener on C{port}: the status and body.
    """
    url = f"http://127.0.0.1:{port}{path}"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def scrape(port: int) -> dict[tuple[str, frozenset[Any]], float]:
    """
    Every sample of C{/metrics}, by name and labels.
    """
    status, text = get(port, "/metrics")
    assert status == 200, (status, text)
    return textSamples(text)


def sendLoad(port: int, sources: list[str], answered: int, malformed: int) -> int:
    """
    From each of C{sources} (loopback addresses), C{answered} NTP requests,
    each waiting for its reply, then C{malformed} short ones: the replies
    received.
    """
    replies = 0
    for source in sources:
        for _ in range(answered):
            reply = udpQuery(NTP_REQUEST, "127.0.0.1", port, 5.0, (source, 0))
            replies += len(reply) == 48
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.bind((source, 0))
            for _ in range(malformed):
                sock.sendto(SHORT_NTP, ("127.0.0.1", port))
    return replies


class ProcessMetricsTests(SynchronousTestCase):
    """
    A real single C{twistd udptime} process serves its metrics and health.
    """

    def test_metrics(self) -> None:
        server, ntpPort, metricsPort = metricsServer(self)
        server.start(1)
        waitFor(
            lambda: "udptime metrics listening on 127.0.0.1:" in server.log(),
            "the metrics listener",
        )
        self.assertEqual(get(metricsPort, "/healthz"), (200, "ok\n"))
        self.assertEqual(sendLoad(ntpPort, ["127.0.0.1"], 20, 3), 20)

        def counted() -> dict[tuple[str, frozenset[Any]], float] | None:
            found = scrape(metricsPort)
            received = key("udptime_received_packets_total", service="ntp")
            return found if found.get(received) == 23 else None

        found = waitFor(counted, "the malformed requests counted")
        self.assertEqual(
            found[key("udptime_requests_total", service="ntp", outcome="answered")],
            20,
        )
        self.assertEqual(
            found[key("udptime_requests_total", service="ntp", outcome="malformed")],
            3,
        )
        self.assertEqual(found[key("udptime_clock_stratum")], 7)
        self.assertEqual(found[key("udptime_clock_synchronised")], 1)
        self.assertEqual(get(metricsPort, "/nothing")[0], 404)
        self.assertEqual(server.stop(), 0)

    def test_metricsPortInUse(self) -> None:
        """
        A metrics port in use is one line on standard error, exit status 1.
        """
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen(1)
            port = taken.getsockname()[1]
            server = TwistdServer([f"--port={freePort()}", f"--metrics-port={port}"])
            self.addCleanup(server.cleanup)
            self.assertRaises(RuntimeError, server.start)
        assert server.process is not None
        self.assertEqual(server.process.returncode, 1)
        self.assertEqual(
            server.stderr(),
            f"twistd udptime: metrics service cannot listen on 127.0.0.1:{port}"
            " (TCP): Address already in use\n",
        )


def metricsServer(
    case: SynchronousTestCase, *more: str, env: dict[str, str] | None = None
) -> tuple[TwistdServer, int, int]:
    """
    A real C{twistd udptime} serving NTP (local stratum 7, no rate limit)
    and metrics on loopback, with the arguments C{more} too, not started
    yet, stopped with C{case}: the server, its NTP port and its metrics
    port.
    """
    ntpPort, metricsPort = freePort(), freeTCPPort()
    server = TwistdServer(
        [
            "--port=0",
            f"--ntp-port={ntpPort}",
            "--local-stratum=7",
            "--rate=0",
            *more,
            f"--metrics-port={metricsPort}",
            "--interface=127.0.0.1",
        ],
        env=env,
    )
    case.addCleanup(server.cleanup)
    return server, ntpPort, metricsPort


def twoWorkers(case: SynchronousTestCase) -> tuple[TwistdServer, int, int]:
    """
    A real C{twistd udptime --workers 2} serving NTP (no rate limit) and
    metrics on loopback, started (the supervisor and both workers listen)
    and stopped with C{case}: the server, its NTP port and its metrics port.
    """
    server, ntpPort, metricsPort = metricsServer(
        case, "--workers=2", env={"PYTHONUNBUFFERED": "1"}
    )
    # The supervisor's line and each worker's.
    server.start(3, timeout=60.0)
    return server, ntpPort, metricsPort


class PrometheusWorkersTests(SynchronousTestCase):
    """
    A real Prometheus scrapes a real C{twistd udptime --workers 2} under a
    known load: its query API gives the totals the server counted, over
    both workers, and a killed worker lowers none of them.
    """

    def test_workers(self) -> None:
        server, ntpPort, metricsPort = twoWorkers(self)
        prometheus = PrometheusServer(metricsPort)
        self.addCleanup(prometheus.stop)
        waitFor(lambda: get(metricsPort, "/healthz")[0] == 200, "healthy", 60.0)

        # Eight clients: the kernel steers each client to one worker.
        sources = [f"127.0.0.{n}" for n in range(1, 9)]
        self.assertEqual(sendLoad(ntpPort, sources, 10, 2), 80)
        answered = 'sum(udptime_requests_total{service="ntp",outcome="answered"})'
        malformed = 'sum(udptime_requests_total{service="ntp",outcome="malformed"})'
        received = 'sum(udptime_received_packets_total{service="ntp"})'
        perWorker = 'sum(udptime_worker_received_packets_total{service="ntp"})'
        prometheus.waitForValue(received, lambda v: v == 96)
        self.assertEqual(prometheus.value(answered), 80)
        self.assertEqual(prometheus.value(malformed), 16)
        prometheus.waitForValue(perWorker, lambda v: v == 96)
        self.assertEqual(prometheus.value("sum(udptime_worker_up)"), 2)

        # Kill a worker that served some of the load: it is started again,
        # health comes back, and no total goes down.
        result = prometheus.query(
            'udptime_worker_received_packets_total{service="ntp"} > 0'
        )
        assert result
        index = result[0]["metric"]["worker"]
        pid = int(
            waitFor(lambda: _workerPid(server.log(), index), f"worker {index}'s pid")
        )
        os.kill(pid, signal.SIGKILL)
        restarts = f'udptime_worker_restarts_total{{worker="{index}"}}'
        prometheus.waitForValue(restarts, lambda v: v == 1)
        waitFor(lambda: get(metricsPort, "/healthz")[0] == 200, "healthy", 60.0)
        self.assertEqual(sendLoad(ntpPort, sources, 1, 0), 8)
        prometheus.waitForValue(answered, lambda v: v == 88)
        # The series never went down, at any scrape.
        self.assertEqual(
            prometheus.value('sum(resets(udptime_requests_total{service="ntp"}[5m]))'),
            0,
        )
        self.assertEqual(server.stop(), 0)


def _workerPid(log: str, index: str) -> str | None:
    """
    The process id of worker C{index} as the supervisor last logged it.
    """
    marker = f"worker {index} started (pid "
    found = None
    for line in log.splitlines():
        if marker in line:
            found = line.split(marker, 1)[1].split(")", 1)[0]
    return found


def childProcesses(pid: int) -> list[int]:
    """
    The process ids of the children of process C{pid}, from C{/proc}.
    """
    children: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except FileNotFoundError:
        return children
    for task in tasks:
        try:
            with open(f"/proc/{pid}/task/{task}/children") as f:
                children += [int(word) for word in f.read().split()]
        except FileNotFoundError:
            continue  # the thread ended meanwhile
    return children


def workerIndexOf(pid: int) -> int | None:
    """
    The worker number in the command line of process C{pid} (its
    C{--worker INDEX:...} option), or L{None} when it is not a worker (or
    has ended).
    """
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            words = f.read().decode("utf-8", "replace").split("\0")
    except (FileNotFoundError, ProcessLookupError):
        return None
    for word, following in itertools.pairwise(words):
        if word == "--worker":
            return int(following.split(":", 1)[0])
    return None


def runningWorkers(supervisor: int) -> dict[int, int]:
    """
    The process id of each worker of C{supervisor} running now, by worker
    number, as C{/proc} shows them.
    """
    found = {}
    for child in childProcesses(supervisor):
        index = workerIndexOf(child)
        if index is not None:
            found[index] = child
    return found


class WorkerHealthTests(SynchronousTestCase):
    """
    A real C{twistd udptime --workers 2}: C{/healthz} says 503, naming the
    worker, once a worker is killed, and 200 again once the supervisor has
    started it again; the restart is counted on C{/metrics}.
    """

    def test_killedWorker(self) -> None:
        server, ntpPort, metricsPort = twoWorkers(self)
        waitFor(lambda: get(metricsPort, "/healthz") == (200, "ok\n"), "healthy", 60.0)
        running = waitFor(
            lambda: (found := runningWorkers(server.pid)) and len(found) == 2 and found,
            "two worker processes",
        )
        restarts = key("udptime_worker_restarts_total", worker="2")
        self.assertEqual(scrape(metricsPort)[restarts], 0)

        victim = running[2]
        os.kill(victim, signal.SIGKILL)
        # The supervisor reaps the worker, starts it again after a short
        # delay, and the new process must start up and report before the
        # worker counts as serving again: until then, 503.
        status, reason = waitFor(
            lambda: (answer := get(metricsPort, "/healthz"))[0] != 200 and answer,
            "/healthz to leave 200",
            60.0,
        )
        self.assertEqual(status, 503)
        self.assertIn(
            reason,
            {
                "worker 2 is not running\n",
                "worker 2 has not reported since it started\n",
            },
        )
        # What the supervisor decided: the worker ended, was started again
        # as a new process, and the restart is counted.
        waitFor(lambda: scrape(metricsPort).get(restarts) == 1, "the restart counted")
        log = server.log()
        self.assertIn(f"worker 2 (pid {victim}) ended: ", log)
        self.assertIn("starting worker 2 again in ", log)
        restarted = waitFor(
            lambda: (
                runningWorkers(server.pid).get(2) not in (None, victim)
                and runningWorkers(server.pid)[2]
            ),
            "a new process for worker 2",
        )
        self.assertEqual(_workerPid(server.log(), "2"), str(restarted))
        waitFor(lambda: get(metricsPort, "/healthz") == (200, "ok\n"), "healthy", 60.0)
        found = scrape(metricsPort)
        self.assertEqual(found[key("udptime_worker_up", worker="2")], 1)
        self.assertEqual(found[restarts], 1)
        self.assertEqual(found[key("udptime_worker_restarts_total", worker="1")], 0)
        # The restarted worker serves.
        self.assertEqual(len(udpQuery(NTP_REQUEST, "127.0.0.1", ntpPort, 5.0)), 48)
        self.assertEqual(server.stop(), 0)
