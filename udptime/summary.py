"""
Counter summaries in the log, at a bounded rate.

An attack must never cost one log line per packet.  L{CounterSummary} looks
at every service's L{udptime.counters.ServiceCounters} (and its policy's
table size) every C{interval} seconds and logs one line per service whose
counters changed since the last line, and nothing while nothing changes.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from twisted.application.service import Service
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from udptime.policy import Policy
from udptime.server import UDPServerProtocol

DEFAULT_INTERVAL = 60.0
"""Seconds between two summaries."""


class Counted(Protocol):
    """
    Counters a summary reports on: their counts by name.
    """

    def snapshot(self) -> dict[str, int]:
        """
        A copy of every counter, by name.
        """


class CounterSummary(Service):
    """
    Log, every C{interval} seconds, what each service did since the last
    summary, for services that did anything, and how many lines C{--verbose}
    left out, for services that left any out; and once more on stop.

    @ivar protocols: the services to report on, by name.
    @ivar others: more counters to report on, by name (those of NTS, say),
        any object whose C{snapshot()} gives counts by name.
    @ivar interval: seconds between summaries.
    """

    log = Logger()

    def __init__(
        self,
        reactor: IReactorTime,
        protocols: Mapping[str, UDPServerProtocol],
        interval: float = DEFAULT_INTERVAL,
        others: Mapping[str, Counted] | None = None,
    ) -> None:
        self.reactor = reactor
        self.protocols = dict(protocols)
        self.others = dict(others or {})
        self.interval = interval
        self._last: dict[str, dict[str, int]] = {
            name: protocol.counters.snapshot()
            for name, protocol in self.protocols.items()
        }
        self._last.update(
            (name, counted.snapshot()) for name, counted in self.others.items()
        )
        self._leftOut = {name: 0 for name in self.protocols}
        self._loop: LoopingCall | None = None

    def startService(self) -> None:
        Service.startService(self)
        loop = LoopingCall(self.report)
        loop.clock = self.reactor
        loop.start(self.interval, now=False)
        self._loop = loop

    def stopService(self) -> Any:
        Service.stopService(self)
        loop, self._loop = self._loop, None
        if loop is not None and loop.running:
            loop.stop()
        self.report()
        return None

    def report(self) -> None:
        """
        Log one line for each service whose counters changed since the last
        report.
        """
        counted: list[tuple[str, Counted, Policy | None]] = [
            (name, protocol.counters, protocol.policy)
            for name, protocol in self.protocols.items()
        ]
        counted += [(name, other, None) for name, other in self.others.items()]
        for name, counters, policy in counted:
            now = counters.snapshot()
            last = self._last[name]
            changes = {
                key: now[key] - last[key] for key in now if now[key] != last[key]
            }
            if not changes:
                continue
            self._last[name] = now
            gauges = policy.stats() if policy is not None else {}
            emit = self.log.warn if changes.get("internalErrors") else self.log.info
            emit(
                "udptime {service}: {changes}; totals {totals}{gauges}",
                service=name,
                changes=", ".join(f"+{v} {k}" for k, v in changes.items()),
                totals=" ".join(f"{k}={v}" for k, v in now.items() if v),
                gauges="".join(f"; {k}={v}" for k, v in gauges.items()),
                counters=now,
                policy=gauges,
            )
        for name, protocol in self.protocols.items():
            leftOut = protocol.verboseLinesLeftOut
            if leftOut != self._leftOut[name]:
                self.log.info(
                    "udptime {service}: {count} --verbose lines left out since the"
                    " last summary ({total} in all), beyond --verbose-rate",
                    service=name,
                    count=leftOut - self._leftOut[name],
                    total=leftOut,
                )
                self._leftOut[name] = leftOut
