"""
The operator's side of C{twistd udptime}: the metrics listener
(C{--metrics-port}), what it shows in each of the plugin's roles, and its
health check.

L{udptime.tap.makeService} decides the process's role first; this module
gives each role its metrics:

  - a single process exports its own services' counters
    (L{processReport}), and is healthy while every service listens
    (L{processHealth});
  - a worker (C{--worker}) serves no metrics: it sends its counters to its
    supervisor as report lines on its log channel
    (L{udptime.reports.ReportSender}, L{workerReports});
  - a supervisor (C{--workers N}) adds up its workers' reports
    (L{SupervisorReports}, a L{udptime.metrics.ReportAggregator}) and is
    healthy while every worker runs and has reported since it started
    (L{supervisorHealth}).

Importing this module imports no reactor; prometheus_client's Twisted
module, which does, is not used (L{udptime.metrics} serves the registry with
its own C{twisted.web} resource).
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Final

from twisted.internet.interfaces import IListeningPort
from twisted.logger import Logger

from udptime.clock import ClockState, ClockStateSource, WallClock, systemClock
from udptime.interleave import tableCounts
from udptime.logrelay import LogRelay
from udptime.metrics import (
    Health,
    ReportAggregator,
    UdptimeCollector,
    Upstream,
    localReport,
    metricsRegistry,
    metricsSite,
)
from udptime.policy import RateLimiter
from udptime.reports import (
    RelayedReportWriter,
    Report,
    ReportSender,
    ReportWriter,
    isReport,
    parseReport,
)
from udptime.server import UDPServerProtocol
from udptime.service import ListenService, ServiceCannotListen, UDPListenService
from udptime.summary import Counted

DEFAULT_METRICS_INTERFACE = "127.0.0.1"
"""The metrics listener's default address: loopback only."""

BACKLOG = 16
"""The metrics socket's listen backlog."""

GLOBAL_LIMIT = "global_limit"
"""The report family of the reply cap all services share (C{--global-rate})."""

INTERLEAVE: Final = "interleave_transmit_times"
"""The name under which a process reports its NTP services' tables of
kernel transmit times (L{udptime.interleave.TransmitTimes}): recorded,
used in interleaved replies, and evicted for room."""

_log = Logger()


class MetricsCannotListen(ServiceCannotListen):
    """
    The metrics socket could not be bound (C{metrics service cannot listen
    on 127.0.0.1:9123 (TCP): Address already in use}).
    """

    def __str__(self) -> str:
        return super().__str__().replace(" (UDP)", " (TCP)")


def metricsSocket(interface: str, port: int) -> socket.socket:
    """
    A non-blocking TCP socket bound to C{interface} and C{port}, listening.

    @raise MetricsCannotListen: it cannot be bound.
    """
    family = socket.AF_INET6 if ":" in interface else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(
                socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0 if interface == "::" else 1
            )
        sock.bind((interface, port))
        sock.listen(BACKLOG)
        sock.setblocking(False)
    except OSError as failure:
        sock.close()
        raise MetricsCannotListen("metrics", interface, port, failure) from failure
    return sock


class MetricsListenService(ListenService):
    """
    Serve C{factory} (the metrics site, L{udptime.metrics.metricsSite}) on a
    TCP socket for as long as the service runs: bound by
    L{ListenService.bind<udptime.service.ListenService.bind>} (before
    twistd drops privileges), or passed by socket activation
    (C{boundSocket}).
    """

    def __init__(
        self, reactor: Any, factory: Any, portNumber: int, interface: str
    ) -> None:
        super().__init__(reactor)
        self.factory = factory
        self.portNumber = portNumber
        self.interface = interface
        self.setName("metrics")

    def newSocket(self) -> socket.socket:
        """
        The metrics socket, bound and listening (see L{metricsSocket}).
        """
        return metricsSocket(self.interface, self.portNumber)

    def adopt(self, sock: socket.socket) -> IListeningPort:
        """
        Serve the metrics site on C{sock}.
        """
        port: IListeningPort = self.reactor.adoptStreamPort(
            sock.fileno(), sock.family, self.factory
        )
        return port

    def logListening(self, where: str) -> None:
        """
        C{udptime metrics listening on 127.0.0.1:9123 (HTTP: ...)}.
        """
        self.log.info(
            "udptime metrics listening on {where} (HTTP: /metrics, /healthz)",
            where=where,
        )


def metricsService(
    reactor: Any,
    collector: UdptimeCollector,
    health: Health,
    port: int,
    interface: str = DEFAULT_METRICS_INTERFACE,
) -> MetricsListenService:
    """
    The metrics listener serving C{collector} on C{/metrics} and C{health}
    on C{/healthz}, at C{interface} and C{port}.
    """
    site = metricsSite(metricsRegistry(collector), health, reactor=reactor)
    return MetricsListenService(reactor, site, port, interface)


EXTRA_NAMES: Final[Mapping[str, str]] = {
    "nts": "nts_requests",
    "nts-ke": "nts_ke_sessions",
}
"""The name each of L{processReport}'s other counter sets travels under
(see L{udptime.metrics.EXTRA_FAMILIES})."""


def withOwnCounters(
    totals: Callable[[], Report], counted: Mapping[str, Counted]
) -> Callable[[], Report]:
    """
    The supervisor's report: its workers' C{totals}, and the counters of
    C{counted} it keeps itself (C{"nts-ke"}: the key exchanges it serves),
    as L{processReport} reports them.
    """
    own = {
        EXTRA_NAMES[name]: counters
        for name, counters in counted.items()
        if name in EXTRA_NAMES
    }
    if not own:
        return totals

    def report() -> Report:
        result = totals()
        for name, counters in own.items():
            result.extra[name] = counters.snapshot()
        return result

    return report


def processReport(
    protocols: Mapping[str, Sequence[UDPServerProtocol]],
    globalLimit: RateLimiter | None,
    counted: Mapping[str, Counted] | None = None,
) -> Callable[[], Report]:
    """
    This process's report: for each service, its counters' snapshot with
    its policy's figures merged in, summed over its protocols (one per
    socket), the refusals of the shared reply cap, if any, and the counters
    of C{counted} (C{"nts"}: NTS requests, C{"nts-ke"}: NTS-KE sessions), by
    outcome.
    """
    others = dict(counted or {})

    def extra() -> Mapping[str, Mapping[str, int]]:
        found: dict[str, Mapping[str, int]] = {
            EXTRA_NAMES[name]: counters.snapshot()
            for name, counters in others.items()
            if name in EXTRA_NAMES
        }
        if globalLimit is not None:
            found[GLOBAL_LIMIT] = {"refused": globalLimit.refused}
        tables = [
            protocol.interleave
            for each in protocols.values()
            for protocol in each
            if protocol.interleave is not None
        ]
        if tables:
            found[INTERLEAVE] = tableCounts(tables)
        return found

    def reportOne(name: str, each: Sequence[UDPServerProtocol]) -> dict[str, int]:
        values: dict[str, int] = {}
        for protocol in each:
            one = localReport({name: (protocol.counters, protocol.policy)})()
            for key, value in one.services[name].items():
                values[key] = values.get(key, 0) + value
        return values

    def report() -> Report:
        result = Report()
        for name, each in protocols.items():
            result.services[name] = reportOne(name, each)
        result.extra = {k: dict(v) for k, v in extra().items()}
        return result

    return report


def processHealth(listeners: Iterable[UDPListenService]) -> Health:
    """
    The health of a single process: every one of C{listeners} listens.
    """
    every = list(listeners)

    def health() -> str | None:
        idle = [str(each.name) for each in every if each.port is None]
        if idle:
            return f"not listening: {', '.join(idle)}"
        return None

    return health


class SupervisorReports:
    """
    The supervisor's side of the workers' reports: it watches the workers
    of a L{WorkerSupervisor<udptime.workers.WorkerSupervisor>} (as its
    C{watcher}) and adds their report lines up in L{aggregator}.

    @ivar aggregator: the sum of the workers' reports.
    @ivar reported: the workers whose current process has reported.
    @ivar malformed: report lines that could not be read.
    """

    log = Logger()

    def __init__(self) -> None:
        self.aggregator = ReportAggregator()
        self.reported: set[int] = set()
        self.malformed = 0

    def workerStarted(self, index: int) -> None:
        """
        The supervisor started a process for worker C{index}.
        """
        self.reported.discard(index)
        self.aggregator.workerStarted(str(index))

    def workerEnded(self, index: int) -> None:
        """
        The process of worker C{index} ended.
        """
        self.reported.discard(index)
        self.aggregator.workerEnded(str(index))

    def workerLine(self, index: int, line: str) -> bool:
        """
        Take in a line of worker C{index}'s output if it is a report.

        @return: whether it was a report (and so is not to be logged).
        """
        if not isReport(line):
            return False
        try:
            message = parseReport(line)
        except ValueError as error:
            self.malformed += 1
            if self.malformed == 1 or self.malformed % 1000 == 0:
                self.log.warn(
                    "worker {index}: unreadable report ({error}; {count} so far)",
                    index=index,
                    error=str(error),
                    count=self.malformed,
                )
            return True
        if message.worker != str(index):
            self.malformed += 1
            return True
        if self.aggregator.update(message):
            self.reported.add(index)
        return True


def supervisorHealth(supervisor: Any, reports: SupervisorReports) -> Health:
    """
    The health of a supervisor of C{supervisor.count} workers: its sockets
    are bound, and every worker runs and has reported since it started (so
    it serves its sockets).
    """

    def health() -> str | None:
        if not supervisor.sockets:
            return "the sockets are not bound"
        problems = []
        for index in range(1, supervisor.count + 1):
            if index not in supervisor.workers:
                problems.append(f"worker {index} is not running")
            elif index not in reports.reported:
                problems.append(f"worker {index} has not reported since it started")
        return "; ".join(problems) or None

    return health


def workerReports(
    reactor: Any,
    report: Callable[[], Report],
    index: int,
    relay: LogRelay | None = None,
    channel: int = 1,
    interval: float | None = None,
) -> ReportSender | None:
    """
    The service that sends worker C{index}'s report to its supervisor over
    the worker's log channel: through its log C{relay}, between log lines;
    without one, on descriptor C{channel} (standard output) opened again
    through C{/proc/self/fd} for a non-blocking writer of its own (so made
    before the worker drops privileges).  L{None} when that cannot be
    opened (the log goes on; the supervisor then shows the worker as not
    reporting).
    """
    writer: ReportWriter | RelayedReportWriter
    if relay is not None:
        writer = RelayedReportWriter(relay.writeWhole)
    else:
        try:
            writer = ReportWriter.sharing(channel)
        except OSError as error:
            _log.warn(
                "worker {index}: no counter reports to the supervisor ({error})",
                index=index,
                error=str(error),
            )
            return None
    options: dict[str, Any] = {}
    if interval is not None:
        options["interval"] = interval
    return ReportSender(reactor, report, writer, str(index), **options)


def clockStateNow(
    source: ClockStateSource, clock: WallClock = systemClock
) -> Callable[[], ClockState]:
    """
    The clock's state now, as C{source} says (for the clock metrics).
    """
    return lambda: source.state(clock())


def collector(
    report: Callable[[], Report],
    clockSource: ClockStateSource | None,
    upstream: Upstream | None = None,
    aggregator: ReportAggregator | None = None,
) -> UdptimeCollector:
    """
    The collector of a process: C{report}'s counters, the clock's state
    from C{clockSource}, the upstream's reach, and the workers' figures
    from C{aggregator}.
    """
    return UdptimeCollector(
        report,
        clock=None if clockSource is None else clockStateNow(clockSource),
        upstream=upstream,
        workers=None if aggregator is None else aggregator.workers,
    )
