"""
A worker's log, relayed to its supervisor without ever blocking the worker.

A worker process (see L{udptime.workers}) writes its log events, one JSON
line each, into a pipe that only its supervisor reads.  Were that write
blocking, a supervisor that stops reading (stopped with SIGSTOP, hung,
swapped out) would fill the pipe and then stop every worker in the middle of
a log call, on the serving path.  L{LogRelay} writes instead with the pipe
in non-blocking mode: a line the pipe has no room for is dropped and
counted, and once the pipe takes lines again the next line written is a
warning that says how many were dropped.

Lines of at most C{PIPE_BUF} bytes (4096 on Linux) go into a pipe whole or
not at all; a longer line may be taken in part, and its rest is written
before anything else (L{LogRelay.flush}), so that the supervisor never reads
half a line followed by another.

A log call may come while the relay is in the middle of another, in the
same thread: a signal handler runs between two bytecodes of whatever the
thread was doing, and Twisted's handler of C{SIGTERM} logs (C{Received
SIGTERM, shutting down.}) before it stops the reactor.  A worker whose
supervisor dies gets that signal (C{PR_SET_PDEATHSIG}) at any moment, as
often during a log call as not.  Such a nested call is dropped and counted
like a line the pipe has no room for: waiting for the call it interrupted
would wait for ever, and writing in its middle could split its line.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any, Final

from twisted.application.internet import TimerService
from twisted.logger import LogEvent, LogLevel, eventAsJSON

FLUSH_INTERVAL: Final = 1.0
"""Seconds between attempts to write what is held back (the rest of a line
taken in part, the report of dropped lines) when no new event comes."""

NAMESPACE: Final = "udptime.logrelay"
"""The log namespace of the report of dropped lines."""

_RECORD_SEPARATOR: Final = "\x1e"
"""What starts each line, as C{jsonFileLogObserver} writes it."""


class LogRelay:
    """
    A log observer that writes each event as one JSON line (the format of
    C{jsonFileLogObserver}, which the supervisor reads) to a pipe, never
    waiting for room in it: lines the pipe cannot take now are dropped and
    counted in L{dropped}, and reported by the next line that goes through.

    @ivar fd: the descriptor written, in non-blocking mode.
    @ivar dropped: lines dropped since the last report of dropped lines.
    @ivar droppedTotal: lines dropped since the relay was made.
    @ivar failed: why the last write failed other than for lack of room
        (the pipe closed), or L{None}.
    @ivar nested: log calls dropped because they came in the middle of
        another in the same thread (from a signal handler); counted in
        L{dropped} and L{droppedTotal} too.
    """

    def __init__(self, fd: int, clock: Any = time.time) -> None:
        """
        @param fd: the pipe's descriptor; set to non-blocking mode here.
        @param clock: gives the time of the report of dropped lines.
        """
        os.set_blocking(fd, False)
        self.fd = fd
        self.clock = clock
        self.dropped = 0
        self.droppedTotal = 0
        self.failed: OSError | None = None
        self.nested = 0
        self._rest = b""
        # Reentrant, so that a nested call in the same thread (a signal
        # handler's) gets in, sees _busy and drops its line; other threads
        # wait for the call in progress, which never blocks.
        self._lock = threading.RLock()
        self._busy = False

    def __call__(self, event: LogEvent) -> None:
        """
        Write C{event} as one line, or drop and count it.
        """
        line = (_RECORD_SEPARATOR + eventAsJSON(event) + "\n").encode("utf-8")
        with self._lock:
            if self._busy:
                self.nested += 1
                self._drop()
                return
            self._busy = True
            try:
                if not self._clear() or not self._write(line):
                    self._drop()
            finally:
                self._busy = False

    def flush(self) -> None:
        """
        Write what is held back, if the pipe takes it now: the rest of a line
        taken in part, then the report of lines dropped.  Nothing, when it
        comes in the middle of a log call (from a signal handler).
        """
        with self._lock:
            if self._busy:
                return
            self._busy = True
            try:
                self._clear()
            finally:
                self._busy = False

    def writeWhole(self, line: bytes) -> bool:
        """
        Write C{line}, one line of another writer of the same pipe (the
        counter reports of L{udptime.reports}), between two log lines,
        never waiting: whether the pipe took it.  It must be at most
        C{PIPE_BUF} bytes, so that the pipe takes it whole or not at all.  A
        line not taken is the caller's to count: it is not a dropped log
        line.
        """
        with self._lock:
            if self._busy:
                return False
            self._busy = True
            try:
                return self._clear() and self._write(line)
            finally:
                self._busy = False

    def _drop(self) -> None:
        self.dropped += 1
        self.droppedTotal += 1

    def _clear(self) -> bool:
        """
        Write the rest of a line taken in part and the report of dropped
        lines: whether both went through (a new line may follow).
        """
        if self._rest and not self._write(self._rest):
            return False
        if self.dropped:
            reported = self.dropped
            if not self._write(self._report()):
                return False
            # Less what was reported, not to 0: a nested call (see the
            # module's docstring) may have dropped one more meanwhile.
            self.dropped -= reported
        return True

    def _write(self, data: bytes) -> bool:
        """
        Write C{data}, which begins a line or is the rest of one: whether
        the pipe took any of it (then the rest, if any, is held back as
        C{_rest} and written before anything else).
        """
        try:
            written = os.write(self.fd, data)
        except BlockingIOError:
            return False
        except InterruptedError:
            return False
        except OSError as failure:
            # A closed pipe (the supervisor is gone): nothing more can be
            # told to anyone; the kernel ends this worker with it.
            self.failed = failure
            return False
        self._rest = data[written:]
        return True

    def _report(self) -> bytes:
        """
        The line saying how many lines were dropped.
        """
        event = {
            "log_format": (
                "{dropped} log lines dropped: the supervisor did not read them "
                "in time ({total} since the worker started)"
            ),
            "log_level": LogLevel.warn,
            "log_namespace": NAMESPACE,
            "log_source": None,
            "log_time": self.clock(),
            "dropped": self.dropped,
            "total": self.droppedTotal,
        }
        return (_RECORD_SEPARATOR + eventAsJSON(event) + "\n").encode("utf-8")


def relayToSupervisor(twistOptions: Any) -> LogRelay | None:
    """
    Make a worker started by C{twist} (whose command-line options are
    C{twistOptions}) log through a L{LogRelay} on its log file, the pipe to
    its supervisor, rather than through a blocking file observer.  Call it
    before C{twist} starts logging (in C{makeService}).

    @return: the relay, or L{None} when C{twistOptions} are not C{twist}'s
        (then logging is left as it is).
    """
    if twistOptions is None or "fileLogObserverFactory" not in twistOptions:
        return None
    logFile = twistOptions.get("logFile")
    try:
        fd = logFile.fileno()
    except (AttributeError, OSError, ValueError):
        return None
    logFile.flush()
    relay = LogRelay(fd)
    twistOptions["fileLogObserverFactory"] = lambda outFile: relay
    return relay


def flushingService(relay: LogRelay) -> TimerService:
    """
    A service that calls C{relay}'s L{LogRelay.flush} every
    L{FLUSH_INTERVAL} seconds, so that what is held back goes out once the
    pipe has room again, even when nothing more is logged.
    """
    service = TimerService(FLUSH_INTERVAL, relay.flush)
    service.setName("log relay")
    return service
