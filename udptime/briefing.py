"""
What a supervisor tells its workers (C{--workers N}) while they run: lines
on each worker's standard input, a pipe only the supervisor and that worker
hold.

Each line is one JSON object whose C{"format"} names its kind: the NTS
server keys (C{udptime-nts-keys}, see L{udptime.ntskeys}) and the upstream
daemon's last answer (C{udptime-upstream}, see L{udptime.upstream}).  The
supervisor keeps the last line of each kind and writes them all, in the
order the kinds first appeared, to a worker it starts, then each new line
to every running worker (L{udptime.workers.WorkerSupervisor.brief}).  A
worker reads them with one L{BriefingReader}, which hands each line to the
handler of its kind.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any, Final

from twisted.application.service import Service
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IReactorFDSet, IReadDescriptor
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

MAX_LINE: Final = 65536
"""The longest briefing line, in bytes; a longer one is skipped."""

BriefingHandler = Callable[[bytes], None]
"""Takes in one line of its kind; raises L{ValueError} for a bad one."""


def lineFormat(line: bytes) -> str | None:
    """
    The kind of briefing C{line} is (its JSON object's C{"format"}), or
    L{None} when it is not a JSON object with a textual format.
    """
    try:
        document: Any = json.loads(line)
    except (UnicodeDecodeError, ValueError):
        return None
    if not isinstance(document, dict):
        return None
    kind = document.get("format")
    return kind if isinstance(kind, str) else None


@implementer(IReadDescriptor)
class BriefingReader:
    """
    Reads briefing lines from a descriptor (a worker's standard input) and
    hands each to the handler of its kind (L{handle}).  A line of no known
    kind, one its handler refuses, or one longer than L{MAX_LINE} is logged
    and ignored.

    @ivar what: what the lines are, for log messages.
    @ivar updates: lines a handler took in.
    @ivar rejected: lines ignored.
    """

    log = Logger()

    def __init__(
        self, reactor: IReactorFDSet, fd: int, what: str = "supervisor's briefing"
    ) -> None:
        self.reactor = reactor
        self.fd = fd
        self.what = what
        self.updates = 0
        self.rejected = 0
        self._handlers: dict[str, BriefingHandler] = {}
        self._buffer = bytearray()
        self._skipping = False
        os.set_blocking(fd, False)

    def handle(self, kind: str, handler: BriefingHandler) -> None:
        """
        Hand lines of format C{kind} to C{handler}.
        """
        self._handlers[kind] = handler

    def startReading(self) -> None:
        """
        Start reading.
        """
        self.reactor.addReader(self)

    def stopReading(self) -> None:
        """
        Stop reading.
        """
        self.reactor.removeReader(self)

    def fileno(self) -> int:
        """
        The descriptor read.
        """
        return self.fd

    def logPrefix(self) -> str:
        """
        The prefix of the reactor's log lines about this reader.
        """
        return type(self).__name__

    def doRead(self) -> Failure | None:
        """
        Read what is there; hand on the complete lines.
        """
        try:
            data = os.read(self.fd, MAX_LINE)
        except BlockingIOError:
            return None
        except OSError as e:
            return Failure(e)
        if not data:
            return Failure(ConnectionDone(f"the {self.what} closed"))
        buffer = self._buffer
        buffer += data
        while True:
            end = buffer.find(b"\n")
            if end < 0:
                break
            line = bytes(buffer[: end + 1])
            del buffer[: end + 1]
            if self._skipping:
                self._skipping = False
                continue
            self._apply(line)
        if len(buffer) > MAX_LINE:
            buffer.clear()
            self._skipping = True
            self.rejected += 1
            self.log.error("{what} line too long: ignored", what=self.what)
        return None

    def _apply(self, line: bytes) -> None:
        kind = lineFormat(line)
        handler = None if kind is None else self._handlers.get(kind)
        if handler is None:
            self.rejected += 1
            self.log.error(
                "{what} ignored: a line of {kind}",
                what=self.what,
                kind="no known kind" if kind is None else f"kind {kind!r}",
            )
            return
        try:
            handler(line)
        except ValueError as e:
            self.rejected += 1
            self.log.error("{what} ignored: {error}", what=self.what, error=str(e))
            return
        self.updates += 1

    def connectionLost(self, reason: Failure) -> None:
        """
        The descriptor closed (the supervisor is gone): stop reading.
        """
        self.reactor.removeReader(self)
        self.log.info(
            "{what} closed: {reason}", what=self.what, reason=reason.getErrorMessage()
        )


class BriefingService(Service):
    """
    A worker's reader of its supervisor's briefing, for as long as the
    service runs.  It takes in what is already there as it starts (the
    lines the supervisor wrote when it started the worker), before the
    services after it start, and the rest as it comes.

    @ivar reader: the reader.
    """

    def __init__(self, reactor: Any, fd: int = 0) -> None:
        self.reader = BriefingReader(reactor, fd)
        self.name = "briefing"

    def handle(self, kind: str, handler: BriefingHandler) -> None:
        """
        Hand lines of format C{kind} to C{handler} (see
        L{BriefingReader.handle}).
        """
        self.reader.handle(kind, handler)

    def startService(self) -> None:
        Service.startService(self)
        failed = self.reader.doRead()
        if failed is not None:
            self.reader.connectionLost(failed)
            return
        self.reader.startReading()

    def stopService(self) -> Any:
        Service.stopService(self)
        self.reader.stopReading()
        return None
