"""
Counter reports: what a process counted, in a form that travels from a
worker process to its supervisor.

With C{--workers N} each worker counts for itself; the supervisor serves the
metrics of them all (see L{udptime.metrics.ReportAggregator}).  Every
C{interval} seconds a worker's L{ReportSender} writes its counters, as
totals since the worker started, to the channel its supervisor reads.

The message
===========

One line of JSON, framed as Twisted's JSON log events are (a record
separator C{\\x1e} before, a newline after), so that it may travel on the
worker's log channel beside its log events, or on a pipe of its own::

    \\x1e{"udptime_report": 1, "worker": "2", "incarnation": "5f0c...",
          "sequence": 17, "dropped": 0,
          "services": {"ntp": {"received": 1200, "answered": 1187, ...}},
          "extra": {"nts_ke_sessions": {"completed": 3}}}\\n

  - C{udptime_report} marks the line (and is the format's version): the
    supervisor consumes it instead of logging it (L{isReport});
  - C{worker} is the worker's number, C{incarnation} a random token drawn
    once per process, so that the supervisor knows a restarted worker from
    the same one (process ids may be reused);
  - C{sequence} counts the sender's reports, C{dropped} the lines its writer
    had to drop (the pipe was full);
  - C{services} has, by service, its counter snapshot with its policy's
    figures merged in; C{extra} has further counter families, each a count
    by label value (NTS, ...).

Every value is a total since the worker started, never a difference: a
report that is lost costs nothing but freshness, as the next one carries
the totals again.  A line is at most L{PIPE_BUF} bytes, which a pipe writes
whole or not at all, so a report never interleaves with another writer's
line; a larger report goes as several lines, each with some of the services
(the supervisor merges them).

Never blocking
==============

A stalled supervisor must not stop a worker.  L{ReportWriter} writes on a
non-blocking file description: when the pipe is full, the line is dropped
and counted, and the worker goes on.  On a pipe of its own, the writer makes
the descriptor non-blocking; on a descriptor shared with blocking writers
(the log on standard output), L{ReportWriter.sharing} opens the pipe again
through C{/proc/self/fd} (Linux), so that only the writer's own file
description is non-blocking.  A worker whose log goes through
L{udptime.logrelay.LogRelay} (as C{twist} runs it) writes its reports
through the relay instead (L{RelayedReportWriter}): never in the middle of a
log line the pipe took only in part.
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from twisted.application.service import Service
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

PIPE_BUF: Final = 4096
"""The largest write a pipe makes whole (POSIX guarantees at least 512;
Linux, 4096)."""

MARKER: Final = "udptime_report"
"""The key that marks a report line, its value the format's version."""

VERSION: Final = 1
"""The report format's version."""

DEFAULT_INTERVAL: Final = 5.0
"""Seconds between two reports of a worker."""

_PREFIX: Final = '{"' + MARKER + '":'
_SEPARATOR: Final = "\x1e"


@dataclass
class Report:
    """
    What one process counted.

    @ivar services: by service, counter and gauge values by name (the
        service's counter snapshot and its policy's figures).
    @ivar extra: further counter families: by family, counts by label
        value.
    """

    services: dict[str, dict[str, int]] = field(default_factory=dict)
    extra: dict[str, dict[str, int]] = field(default_factory=dict)


@dataclass(frozen=True)
class ReportMessage:
    """
    One report line, as the supervisor reads it.

    @ivar worker: the worker's number, as text.
    @ivar incarnation: the token of the worker process that sent it.
    @ivar sequence: the sender's count of reports.
    @ivar dropped: lines the sender's writer dropped so far.
    @ivar report: the counters (some services only, when a report was split
        over several lines).
    """

    worker: str
    incarnation: str
    sequence: int
    dropped: int
    report: Report


def isReport(line: str) -> bool:
    """
    Whether a line of a worker's output is a report (after the record
    separator, if any), not a log event.
    """
    return line.lstrip(_SEPARATOR).startswith(_PREFIX)


def _counts(value: Any, what: str) -> dict[str, int]:
    if not isinstance(value, dict):
        raise ValueError(f"{what} is not an object")
    counts = {}
    for key, count in value.items():
        if type(count) is not int or count < 0:
            raise ValueError(f"{what}.{key} is not a count")
        counts[str(key)] = count
    return counts


def _groups(value: Any, what: str) -> dict[str, dict[str, int]]:
    if not isinstance(value, dict):
        raise ValueError(f"{what} is not an object")
    return {str(k): _counts(v, f"{what}.{k}") for k, v in value.items()}


def parseReport(line: str | bytes) -> ReportMessage:
    """
    Read a report line (with or without its framing).

    @raise ValueError: the line is not a well-formed report of this
        version.
    """
    text = line.decode("utf-8") if isinstance(line, bytes) else line
    data = json.loads(text.strip(_SEPARATOR + "\r\n "))
    if not isinstance(data, dict) or data.get(MARKER) != VERSION:
        raise ValueError("not a report of version 1")
    worker, incarnation = data.get("worker"), data.get("incarnation")
    if not isinstance(worker, str) or not isinstance(incarnation, str):
        raise ValueError("a report names its worker and incarnation")
    numbers = _counts(
        {"sequence": data.get("sequence"), "dropped": data.get("dropped")}, "report"
    )
    return ReportMessage(
        worker=worker,
        incarnation=incarnation,
        sequence=numbers["sequence"],
        dropped=numbers["dropped"],
        report=Report(
            services=_groups(data.get("services", {}), "services"),
            extra=_groups(data.get("extra", {}), "extra"),
        ),
    )


def encodeReport(
    worker: str,
    incarnation: str,
    sequence: int,
    dropped: int,
    report: Report,
    limit: int = PIPE_BUF,
) -> Iterator[bytes]:
    """
    The framed lines that carry C{report}: one when it fits in C{limit}
    bytes, otherwise one per service and one for the extra families.

    @raise ValueError: one service's figures alone do not fit.
    """
    head = {
        MARKER: VERSION,
        "worker": worker,
        "incarnation": incarnation,
        "sequence": sequence,
        "dropped": dropped,
    }

    def frame(services: Mapping[str, Any], extra: Mapping[str, Any]) -> bytes:
        body = json.dumps(
            {**head, "services": services, "extra": extra}, separators=(",", ":")
        )
        return (_SEPARATOR + body + "\n").encode("utf-8")

    whole = frame(report.services, report.extra)
    if len(whole) <= limit:
        yield whole
        return
    parts = [frame({name: counts}, {}) for name, counts in report.services.items()]
    parts += [frame({}, {name: counts}) for name, counts in report.extra.items()]
    for part in parts:
        if len(part) > limit:
            raise ValueError(f"a report part of {len(part)} bytes exceeds {limit}")
    yield from parts


class ReportWriter:
    """
    Writes report lines to a pipe without ever blocking: a line the pipe has
    no room for is dropped and counted.

    @ivar dropped: lines dropped so far.
    @ivar broken: the reader is gone; nothing more is written.
    """

    def __init__(self, fd: int, owned: bool = False) -> None:
        """
        @param fd: a descriptor of the pipe's writing end, used by nothing
            else (it is made non-blocking).
        @param owned: close C{fd} on L{close}.
        """
        os.set_blocking(fd, False)
        self.fd = fd
        self.owned = owned
        self.dropped = 0
        self.broken = False

    @classmethod
    def sharing(cls, fd: int) -> ReportWriter:
        """
        A writer for a pipe whose descriptor C{fd} blocking writers also use
        (the log on standard output): the pipe is opened again, so that only
        the writer's own file description is non-blocking.

        @raise OSError: the pipe cannot be opened again (no C{/proc}).
        """
        own = os.open(f"/proc/self/fd/{fd}", os.O_WRONLY | os.O_CLOEXEC)
        return cls(own, owned=True)

    def write(self, line: bytes) -> bool:
        """
        Write one line (at most L{PIPE_BUF} bytes, so the pipe takes it whole
        or not at all).

        @return: whether it was written.
        """
        if len(line) > PIPE_BUF:
            raise ValueError(f"a line of {len(line)} bytes may be torn")
        if self.broken:
            self.dropped += 1
            return False
        try:
            os.write(self.fd, line)
        except BlockingIOError:
            self.dropped += 1
            return False
        except OSError:
            # The reader is gone (EPIPE): the supervisor died or closed it.
            self.broken = True
            self.dropped += 1
            return False
        return True

    def close(self) -> None:
        """
        Close the descriptor if the writer owns it.
        """
        if self.owned:
            os.close(self.fd)
            self.owned = False


class RelayedReportWriter:
    """
    Writes report lines through the worker's log relay (see
    L{udptime.logrelay.LogRelay.writeWhole}), between its log lines, without
    ever blocking: a line the pipe has no room for is dropped and counted.

    @ivar dropped: lines dropped so far.
    """

    def __init__(self, writeWhole: Callable[[bytes], bool]) -> None:
        """
        @param writeWhole: writes one line whole, or not at all: whether it
            was written.
        """
        self.writeWhole = writeWhole
        self.dropped = 0

    def write(self, line: bytes) -> bool:
        """
        Write one line (at most L{PIPE_BUF} bytes).

        @return: whether it was written.
        """
        if len(line) > PIPE_BUF:
            raise ValueError(f"a line of {len(line)} bytes may be torn")
        if self.writeWhole(line):
            return True
        self.dropped += 1
        return False

    def close(self) -> None:
        """
        Nothing to close: the relay owns the pipe.
        """


class ReportSender(Service):
    """
    Sends this worker's report every C{interval} seconds, and once more as
    it stops.

    @ivar sequence: reports sent (or tried).
    """

    log = Logger()

    def __init__(
        self,
        reactor: Any,
        source: Callable[[], Report],
        writer: ReportWriter | RelayedReportWriter,
        worker: str,
        interval: float = DEFAULT_INTERVAL,
        incarnation: str | None = None,
    ) -> None:
        """
        @param source: the report of this process (see
            L{udptime.metrics.localReport}).
        @param writer: where the lines go.
        @param worker: this worker's number.
        @param incarnation: a token for this process; L{None} draws one.
        """
        self.reactor = reactor
        self.source = source
        self.writer = writer
        self.worker = worker
        self.interval = interval
        self.incarnation = secrets.token_hex(8) if incarnation is None else incarnation
        self.sequence = 0
        self._loop: LoopingCall | None = None

    def startService(self) -> None:
        Service.startService(self)
        loop = LoopingCall(self.send)
        loop.clock = self.reactor
        loop.start(self.interval, now=True)
        self._loop = loop

    def stopService(self) -> None:
        Service.stopService(self)
        loop, self._loop = self._loop, None
        if loop is not None and loop.running:
            loop.stop()
        self.send()

    def send(self) -> None:
        """
        Send the report now.
        """
        self.sequence += 1
        try:
            lines = list(
                encodeReport(
                    self.worker,
                    self.incarnation,
                    self.sequence,
                    self.writer.dropped,
                    self.source(),
                )
            )
        except Exception:
            self.log.failure("worker {worker}: no report", worker=self.worker)
            return
        for line in lines:
            self.writer.write(line)
