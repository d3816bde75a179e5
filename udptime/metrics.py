"""
Metrics for Prometheus: C{/metrics} and C{/healthz} (C{--metrics-port}).

L{UdptimeCollector} turns counter reports (L{udptime.reports.Report}) and the
clock's state into Prometheus metrics, on a registry of its own (never
prometheus_client's global one).  The names follow the conventions of the
field (ntpd-rs's C{ntp_server_*_packets_total} and C{ntp_system_*},
chrony_exporter's C{chrony_tracking_*}): a C{udptime_} prefix, base units
(seconds, bytes), C{_total} on counters.  L{FIELDS} is the one table from the
names in a service's counter snapshot to metrics.

With C{--workers N} every worker counts for itself and sends reports to its
supervisor (L{udptime.reports}); the supervisor's L{ReportAggregator} adds
them up, and keeps counters from going backwards when a worker is started
again: the last report of a worker that ended stays as a base, and the next
process's counts add on top.

L{metricsSite} serves the collector with C{twisted.web}, rendered in the
reactor's thread (a scrape costs a few hundred microseconds):

  - C{GET /metrics}: the text exposition format;
  - C{GET /healthz}: C{200 ok} when the health callable finds nothing wrong,
    C{503} and a one-line reason otherwise;
  - any other path: 404; any other method: 405; a failure while rendering:
    500 with no detail (it is logged), never a traceback.
"""

from __future__ import annotations

import platform
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector
from twisted.internet.interfaces import IAddress
from twisted.logger import Logger
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from twisted.web import http
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

import twisted
from udptime import __version__
from udptime.clock import ClockState
from udptime.ntp import refidText
from udptime.reports import Report, ReportMessage

COUNTER: Final = "counter"
GAUGE: Final = "gauge"


@dataclass(frozen=True)
class Family:
    """
    A metric family.

    @ivar name: its name (for counters, without C{_total}).
    @ivar kind: L{COUNTER} or L{GAUGE}.
    @ivar help: its description.
    @ivar label: the name of its label besides C{service}, if any.
    """

    name: str
    kind: str
    help: str
    label: str | None = None


REQUESTS: Final = Family(
    "udptime_requests",
    COUNTER,
    "Datagrams by service and outcome (kiss_of_death is a part of"
    " rate_limited; malformed requests answered with an error also count as"
    " answered)",
    "outcome",
)
RECEIVED: Final = Family(
    "udptime_received_packets", COUNTER, "Datagrams received, by service"
)
CLIENTS: Final = Family(
    "udptime_rate_limit_clients", GAUGE, "Clients in the rate limit's table"
)
EVICTIONS: Final = Family(
    "udptime_rate_limit_evictions",
    COUNTER,
    "Clients evicted from the full rate limit table",
)


@dataclass(frozen=True)
class Field:
    """
    Where one value of a service's report goes.

    @ivar family: the metric family.
    @ivar label: the value of the family's extra label, if it has one.
    """

    family: Family
    label: str | None = None


FIELDS: Final[Mapping[str, Field]] = {
    # udptime.counters.ServiceCounters.snapshot()
    "received": Field(RECEIVED),
    "answered": Field(REQUESTS, "answered"),
    "limited": Field(REQUESTS, "rate_limited"),
    "kissed": Field(REQUESTS, "kiss_of_death"),
    "denied": Field(REQUESTS, "denied"),
    "malformed": Field(REQUESTS, "malformed"),
    "dropped": Field(REQUESTS, "dropped"),
    "looped": Field(REQUESTS, "loop_guarded"),
    "sendFailed": Field(REQUESTS, "send_error"),
    "internalErrors": Field(REQUESTS, "internal_error"),
    # udptime.policy.Policy.stats()
    "clients": Field(CLIENTS),
    "evicted": Field(EVICTIONS),
}
"""
The one table from the names of a service's report (its counter snapshot
and its policy's figures) to metrics.  A name not in the table is not
exported; a name a service does not report gives no sample (rather than a
false zero).
"""

GAUGE_FIELDS: Final = frozenset(
    name for name, where in FIELDS.items() if where.family.kind == GAUGE
)
"""The names whose values are levels, not totals."""

EXTRA_FAMILIES: Final[Mapping[str, Family]] = {
    "global_limit": Family(
        "udptime_global_limit_requests",
        COUNTER,
        "Requests refused by the reply cap all services share (--global-rate),"
        " by outcome",
        "outcome",
    ),
    "nts_ke_sessions": Family(
        "udptime_nts_ke_sessions", COUNTER, "NTS-KE sessions, by outcome", "outcome"
    ),
    "interleave_transmit_times": Family(
        "udptime_interleave_transmit_times",
        COUNTER,
        "Kernel transmit times of NTP replies kept for interleaved mode, by"
        " outcome (recorded, used in an interleaved reply, evicted from the"
        " full table)",
        "outcome",
    ),
    "nts_requests": Family(
        "udptime_nts_requests",
        COUNTER,
        "NTS-protected NTP requests, by outcome",
        "outcome",
    ),
}
"""
Counter families of a report's C{extra} part, by the name they travel under.
A name not listed is exported as C{udptime_NAME_total} with an C{outcome}
label, when it is a valid metric name.
"""


# Adding up the reports of several processes.


@dataclass
class _Worker:
    """
    What the aggregator knows of one worker number.
    """

    base: dict[tuple[str, str, str], int] = field(default_factory=dict)
    current: dict[tuple[str, str, str], int] = field(default_factory=dict)
    gauges: dict[tuple[str, str, str], int] = field(default_factory=dict)
    incarnation: str | None = None
    retired: deque[str] = field(default_factory=lambda: deque(maxlen=16))
    droppedBase: int = 0
    dropped: int = 0
    starts: int = 0
    up: bool = False

    def fold(self) -> None:
        """
        The current process ended: its totals become part of the base.
        """
        for key, value in self.current.items():
            self.base[key] = self.base.get(key, 0) + value
        self.current = {}
        self.gauges = {}
        self.droppedBase += self.dropped
        self.dropped = 0
        if self.incarnation is not None:
            self.retired.append(self.incarnation)
        self.incarnation = None

    def counters(self) -> dict[tuple[str, str, str], int]:
        totals = dict(self.base)
        for key, value in self.current.items():
            totals[key] = totals.get(key, 0) + value
        return totals


@dataclass(frozen=True)
class WorkerFigures:
    """
    One worker's figures for the metrics.

    @ivar up: whether the worker runs.
    @ivar restarts: how often it was started again.
    @ivar dropped: report lines it had to drop.
    @ivar report: its totals over all its processes (gauges: the running
        one's).
    """

    up: bool
    restarts: int
    dropped: int
    report: Report


def _toReport(counters: Mapping[tuple[str, str, str], int]) -> Report:
    report = Report()
    for (part, group, name), value in counters.items():
        target = report.services if part == "s" else report.extra
        entry = target.setdefault(group, {})
        entry[name] = entry.get(name, 0) + value
    return report


class ReportAggregator:
    """
    The supervisor's sum of its workers' reports.

    Counters never go backwards: a worker's totals are kept per process
    (told apart by the report's incarnation token); when a process ends
    (L{workerEnded}, or a report from a new process of the same worker),
    its last totals become the worker's base, and the new process's counts
    add on top.  Gauges (L{GAUGE_FIELDS}) are the running processes' values
    only.  Within one process a value that goes down (which a report of
    totals never should) is ignored.

    @ivar rejected: reports ignored: from a process that already ended.
    """

    def __init__(self, gauges: Iterable[str] = GAUGE_FIELDS) -> None:
        self.gauges = frozenset(gauges)
        self.rejected = 0
        self._workers: dict[str, _Worker] = {}

    def _worker(self, worker: str) -> _Worker:
        return self._workers.setdefault(worker, _Worker())

    def workerStarted(self, worker: str) -> None:
        """
        The supervisor started a process for C{worker}.
        """
        state = self._worker(worker)
        state.fold()
        state.starts += 1
        state.up = True

    def workerEnded(self, worker: str) -> None:
        """
        The process of C{worker} ended: its totals become the base.
        """
        state = self._worker(worker)
        state.fold()
        state.up = False

    def update(self, message: ReportMessage) -> bool:
        """
        Take in one report.

        @return: whether it was taken (not from a process that ended).
        """
        state = self._worker(message.worker)
        if message.incarnation in state.retired:
            self.rejected += 1
            return False
        if state.incarnation != message.incarnation:
            if state.incarnation is not None:
                state.fold()
            state.incarnation = message.incarnation
        current = state.current
        for group, values in message.report.services.items():
            for name, value in values.items():
                key = ("s", group, name)
                if name in self.gauges:
                    state.gauges[key] = value
                elif value > current.get(key, 0):
                    current[key] = value
        for group, values in message.report.extra.items():
            for name, value in values.items():
                key = ("x", group, name)
                if value > current.get(key, 0):
                    current[key] = value
        state.dropped = max(state.dropped, message.dropped)
        return True

    def _report(self, state: _Worker) -> Report:
        counters = state.counters()
        counters.update(state.gauges)
        return _toReport(counters)

    def totals(self) -> Report:
        """
        The sum over all workers.
        """
        total: dict[tuple[str, str, str], int] = {}
        for state in self._workers.values():
            for key, value in (*state.counters().items(), *state.gauges.items()):
                total[key] = total.get(key, 0) + value
        return _toReport(total)

    def workers(self) -> dict[str, WorkerFigures]:
        """
        Each worker's figures, by number.
        """
        return {
            worker: WorkerFigures(
                up=state.up,
                restarts=max(state.starts - 1, 0),
                dropped=state.droppedBase + state.dropped,
                report=self._report(state),
            )
            for worker, state in sorted(self._workers.items())
        }


# This process's report.


class _Snapshot(Protocol):
    def snapshot(self) -> dict[str, int]: ...


class _Stats(Protocol):
    def stats(self) -> dict[str, int]: ...


def localReport(
    services: Mapping[str, tuple[_Snapshot, _Stats | None]],
    extra: Callable[[], Mapping[str, Mapping[str, int]]] | None = None,
) -> Callable[[], Report]:
    """
    A callable giving this process's report: for each service, its counters'
    snapshot with its policy's figures merged in, and the C{extra}
    families.

    @param services: by name, the service's counters (with C{snapshot()})
        and its policy (with C{stats()}) or L{None}.
    """

    def report() -> Report:
        result = Report()
        for name, (counters, policy) in services.items():
            values = dict(counters.snapshot())
            if policy is not None:
                values.update(policy.stats())
            result.services[name] = values
        if extra is not None:
            result.extra = {k: dict(v) for k, v in extra().items()}
        return result

    return report


# The collector.


class Upstream(Protocol):
    """
    What the metrics show of an upstream clock
    (L{udptime.upstream.UpstreamClock}).
    """

    @property
    def reachable(self) -> bool: ...

    reach: int


def _isMetricName(name: str) -> bool:
    return bool(name) and name.replace("_", "a").isalnum() and name.isascii()


class UdptimeCollector(Collector):
    """
    Prometheus metrics of a udptime process (or of a supervisor and its
    workers).
    """

    def __init__(
        self,
        report: Callable[[], Report],
        *,
        clock: Callable[[], ClockState] | None = None,
        upstream: Upstream | None = None,
        workers: Callable[[], Mapping[str, WorkerFigures]] | None = None,
        version: str = __version__,
    ) -> None:
        """
        @param report: the totals to export (L{localReport}, or a
            L{ReportAggregator}'s C{totals}).
        @param clock: the clock's state now, or L{None} for no clock
            metrics.
        @param upstream: the upstream clock, when C{--upstream} is set.
        @param workers: the workers' figures (a L{ReportAggregator}'s
            C{workers}), when there are workers.
        """
        self.report = report
        self.clock = clock
        self.upstream = upstream
        self.workers = workers
        self.version = version

    def collect(self) -> Iterable[Metric]:
        """
        Every metric, now.
        """
        info = GaugeMetricFamily(
            "udptime_build_info",
            "udptime's version, with Twisted's and Python's",
            labels=["version", "twisted", "python"],
        )
        info.add_metric(
            [self.version, twisted.__version__, platform.python_version()], 1.0
        )
        yield info
        yield from self._services(self.report())
        if self.clock is not None:
            yield from self._clock(self.clock())
        if self.upstream is not None:
            yield from self._upstream(self.upstream)
        if self.workers is not None:
            yield from self._workers(self.workers())

    @staticmethod
    def _family(family: Family) -> Any:
        labels = ["service"]
        if family.label is not None:
            labels.append(family.label)
        kind = CounterMetricFamily if family.kind == COUNTER else GaugeMetricFamily
        return kind(family.name, family.help, labels=labels)

    def _services(self, report: Report) -> Iterable[Metric]:
        families: dict[Family, Any] = {}
        for each in FIELDS.values():
            if each.family not in families:
                families[each.family] = self._family(each.family)
        for service, values in sorted(report.services.items()):
            for name, value in values.items():
                where = FIELDS.get(name)
                if where is None:
                    continue
                labels = [service] if where.label is None else [service, where.label]
                families[where.family].add_metric(labels, value)
        yield from families.values()
        for name, counts in sorted(report.extra.items()):
            family = EXTRA_FAMILIES.get(name)
            if family is None:
                if not _isMetricName(name):
                    continue
                family = Family(
                    f"udptime_{name}", COUNTER, f"udptime {name}, by outcome", "outcome"
                )
            metric = CounterMetricFamily(family.name, family.help, labels=["outcome"])
            for label, value in sorted(counts.items()):
                metric.add_metric([label], value)
            yield metric

    @staticmethod
    def _clock(state: ClockState) -> Iterable[Metric]:
        def gauge(name: str, help: str, value: float) -> GaugeMetricFamily:
            return GaugeMetricFamily(name, help, value=value)

        yield gauge(
            "udptime_clock_synchronised",
            "1 when the server claims a synchronised clock",
            1.0 if state.synchronised else 0.0,
        )
        yield gauge(
            "udptime_clock_stratum",
            "The stratum claimed (16: unsynchronised)",
            state.stratum,
        )
        yield gauge(
            "udptime_clock_leap_indicator",
            "The leap indicator sent (0 none, 1 insert, 2 delete, 3 unsynchronised)",
            state.leap if state.synchronised else 3,
        )
        yield gauge(
            "udptime_clock_root_delay_seconds",
            "Root delay claimed",
            state.rootDelay,
        )
        yield gauge(
            "udptime_clock_root_dispersion_seconds",
            "Root dispersion claimed",
            state.rootDispersion,
        )
        yield gauge(
            "udptime_clock_precision_seconds",
            "Precision of the clock's reading",
            2.0**state.precision,
        )
        if state.referenceTime is not None:
            yield gauge(
                "udptime_clock_reference_timestamp_seconds",
                "When the clock was last set or corrected (Unix time)",
                state.referenceTime,
            )
        reference = GaugeMetricFamily(
            "udptime_clock_reference_info",
            "The reference identifier claimed",
            labels=["refid"],
        )
        reference.add_metric([refidText(state.stratum, state.refid)], 1.0)
        yield reference

    @staticmethod
    def _upstream(upstream: Upstream) -> Iterable[Metric]:
        yield GaugeMetricFamily(
            "udptime_upstream_reachable",
            "1 when the upstream NTP daemon answered the last poll",
            value=1.0 if upstream.reachable else 0.0,
        )
        yield GaugeMetricFamily(
            "udptime_upstream_reach",
            "Reach register of the upstream polls (RFC 5905; 255: all 8 answered)",
            value=upstream.reach,
        )

    def _workers(self, workers: Mapping[str, WorkerFigures]) -> Iterable[Metric]:
        up = GaugeMetricFamily(
            "udptime_worker_up", "1 when the worker runs", labels=["worker"]
        )
        restarts = CounterMetricFamily(
            "udptime_worker_restarts",
            "Times the worker was started again",
            labels=["worker"],
        )
        dropped = CounterMetricFamily(
            "udptime_worker_reports_dropped",
            "Counter reports the worker dropped (its supervisor read too slowly)",
            labels=["worker"],
        )
        received = CounterMetricFamily(
            "udptime_worker_received_packets",
            "Datagrams received, by worker and service",
            labels=["worker", "service"],
        )
        for worker, figures in workers.items():
            up.add_metric([worker], 1.0 if figures.up else 0.0)
            restarts.add_metric([worker], figures.restarts)
            dropped.add_metric([worker], figures.dropped)
            for service, values in sorted(figures.report.services.items()):
                if "received" in values:
                    received.add_metric([worker, service], values["received"])
        yield from (up, restarts, dropped, received)


def metricsRegistry(collector: Collector) -> CollectorRegistry:
    """
    A registry of its own holding C{collector}.
    """
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    return registry


# The web pages.

Health = Callable[[], "str | None"]
"""
Returns L{None} when every configured service listens and every worker runs,
or a one-line reason why not.
"""

DEFAULT_TIMEOUT: Final = 10.0
"""Seconds a metrics connection may stay idle."""

MAX_CONNECTIONS: Final = 16
"""The most metrics connections open at once."""

MAX_BODY: Final = 1024
"""The largest request body accepted (a scrape sends none)."""


class _Page(Resource):
    """
    A leaf page whose failures never show: a failure while rendering is
    logged and answered with a bare 500.
    """

    isLeaf = True
    log = Logger()

    def render(self, request: Request) -> bytes:
        """
        C{GET} and C{HEAD} (whose body the request leaves out); 405 for any
        other method.
        """
        if request.method not in (b"GET", b"HEAD"):
            request.setResponseCode(405)
            request.setHeader(b"allow", b"GET, HEAD")
            request.setHeader(b"content-type", b"text/plain; charset=utf-8")
            return b"method not allowed\n"
        return self.render_GET(request)

    def render_GET(self, request: Request) -> bytes:
        """
        The page, or a bare 500 when making it fails.
        """
        try:
            return self.page(request)
        except Exception:
            self.log.failure("metrics: {path} failed", path=request.path)
            request.setResponseCode(500)
            request.setHeader(b"content-type", b"text/plain; charset=utf-8")
            return b"internal error\n"

    def page(self, request: Request) -> bytes:
        raise NotImplementedError


class MetricsPage(_Page):
    """
    C{GET /metrics}: the registry in Prometheus' text format.
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        super().__init__()
        self.registry = registry

    def page(self, request: Request) -> bytes:
        body = generate_latest(self.registry)
        request.setHeader(b"content-type", CONTENT_TYPE_LATEST.encode("ascii"))
        return body


class HealthPage(_Page):
    """
    C{GET /healthz}: C{ok}, or 503 with the reason.
    """

    def __init__(self, health: Health) -> None:
        super().__init__()
        self.health = health

    def page(self, request: Request) -> bytes:
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        request.setHeader(b"cache-control", b"no-store")
        reason = self.health()
        if reason is None:
            return b"ok\n"
        request.setResponseCode(503)
        line = " ".join(reason.split()) or "unhealthy"
        return line.encode("utf-8", "replace") + b"\n"


class _NotFound(_Page):
    def render(self, request: Request) -> bytes:
        return self.render_GET(request)

    def page(self, request: Request) -> bytes:
        request.setResponseCode(404)
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        return b"not found\n"


class MetricsRoot(Resource):
    """
    The site's root: C{/metrics} and C{/healthz}, 404 for anything else.
    """

    def __init__(self, pages: Mapping[bytes, Resource]) -> None:
        super().__init__()
        self.pages = dict(pages)
        self._notFound = _NotFound()

    def getChild(self, path: bytes, request: Request) -> Resource:
        if request.postpath:
            return self._notFound
        return self.pages.get(path, self._notFound)

    def render(self, request: Request) -> bytes:
        return self._notFound.render(request)


class _BoundedRequest(Request):
    """
    A request that refuses a body larger than L{MAX_BODY}.
    """

    _bodyLength = 0

    def _tooLarge(self) -> None:
        transport = self.channel.transport
        assert transport is not None, "a request arrives on a connection"
        transport.write(
            b"HTTP/1.1 413 Content Too Large\r\nconnection: close\r\n"
            b"content-length: 0\r\n\r\n"
        )
        transport.loseConnection()

    def gotLength(self, length: int | None) -> None:
        if length is not None and length > MAX_BODY:
            self._tooLarge()
            return
        super().gotLength(length)

    def handleContentChunk(self, data: bytes) -> None:
        self._bodyLength += len(data)
        if self._bodyLength > MAX_BODY:
            self._tooLarge()
            return
        super().handleContentChunk(data)


class MetricsSite(Site):
    """
    The metrics site: no access log (a scrape every few seconds would fill
    it), no tracebacks, idle connections closed after C{timeout} seconds.
    """

    displayTracebacks = False
    noisy = False

    def log(self, request: http.Request) -> None:
        """
        Scrapes are not logged.
        """


class LimitedFactory(WrappingFactory):
    """
    Wraps a factory so that at most C{limit} of its connections are open at
    once; a connection past the limit is closed as it is accepted.
    """

    noisy = False

    def __init__(self, wrappedFactory: Any, limit: int) -> None:
        super().__init__(wrappedFactory)
        self.limit = limit

    # Returning None (closing the connection) is what Factory allows, though
    # WrappingFactory's annotation does not say so.
    def buildProtocol(  # type: ignore[override]
        self, addr: IAddress | None
    ) -> ProtocolWrapper | None:
        if len(self.protocols) >= self.limit:
            return None
        return super().buildProtocol(addr)


def metricsSite(
    registry: CollectorRegistry,
    health: Health,
    *,
    timeout: float = DEFAULT_TIMEOUT,
    maxConnections: int = MAX_CONNECTIONS,
    reactor: Any = None,
) -> LimitedFactory:
    """
    The factory to listen with for C{--metrics-port}: C{/metrics} from
    C{registry}, C{/healthz} from C{health}, at most C{maxConnections}
    connections at once (more are closed at once).
    """
    pages = {b"metrics": MetricsPage(registry), b"healthz": HealthPage(health)}
    site = MetricsSite(
        MetricsRoot(pages),
        requestFactory=_BoundedRequest,
        timeout=timeout,
        reactor=reactor,
    )
    return LimitedFactory(site, maxConnections)
