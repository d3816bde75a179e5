"""
C{udptime --interactive}: requests read line by line from a terminal, a pipe
or a file, each handed on as it comes.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from typing import Any, Final

from twisted.internet.defer import Deferred

QUIT: Final = "quit"
"""The line that ends a session (in any case)."""


class LineReader:
    """
    Lines of text from a file descriptor (a pipe, a terminal or a file),
    read as the reactor finds them ready, one at a time with L{next}.

    The descriptor is read without being made non-blocking: the reactor
    only calls L{doRead} when a read will not block, and a terminal shared
    with the shell is left as it was.
    """

    def __init__(self, reactor: Any, fd: int) -> None:
        """
        @param reactor: an C{IReactorFDSet}, which watches C{fd}.
        @param fd: the descriptor to read.
        """
        self.reactor = reactor
        self.fd = fd
        self.buffer = b""
        self.lines: list[str] = []
        self.waiting: Deferred[str | None] | None = None
        self.ended = False
        self.reading = False

    def start(self) -> None:
        """
        Start reading.

        @raise OSError: the reactor cannot watch the descriptor (a regular
            file, with the epoll reactor).
        """
        self.reactor.addReader(self)
        self.reading = True

    def stop(self) -> None:
        """
        Stop reading; L{next} gives no more lines.
        """
        if self.reading:
            self.reading = False
            self.reactor.removeReader(self)
        self.ended = True
        self.lines.clear()
        self._deliver()

    def next(self) -> Deferred[str | None]:
        """
        The next line, without its line ending, or L{None} at the end.
        """
        d: Deferred[str | None] = Deferred()
        self.waiting = d
        self._deliver()
        return d

    def _deliver(self) -> None:
        d = self.waiting
        if d is None:
            return
        if self.lines:
            self.waiting = None
            d.callback(self.lines.pop(0))
        elif self.ended:
            self.waiting = None
            d.callback(None)

    def fileno(self) -> int:
        """
        The descriptor read.
        """
        return self.fd

    def logPrefix(self) -> str:
        """
        The prefix of log lines about this reader.
        """
        return "stdin"

    def doRead(self) -> None:
        """
        Read what is ready, split it into lines, and hand them on.
        """
        try:
            data = os.read(self.fd, 65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if data:
            self.buffer += data
            *complete, self.buffer = self.buffer.split(b"\n")
            self.lines.extend(
                line.decode("utf-8", "replace").removesuffix("\r") for line in complete
            )
        else:
            if self.reading:
                self.reading = False
                self.reactor.removeReader(self)
            self._end()
        self._deliver()

    def connectionLost(self, reason: object = None) -> None:
        """
        The descriptor closed or failed (the reactor has stopped watching
        it): what was read is still delivered.
        """
        self.reading = False
        self._end()
        self._deliver()

    def _end(self) -> None:
        if self.buffer and not self.ended:
            self.lines.append(self.buffer.decode("utf-8", "replace"))
        self.buffer = b""
        self.ended = True


async def askEachLine(
    lines: LineReader, ask: Callable[[str], Awaitable[object]]
) -> None:
    """
    Hand each request that C{lines} reads to C{ask}, one at a time (the next
    line waits until C{ask} is done with the last), until the end of input
    or a L{QUIT} line.  A request is a line without its surrounding white
    space; empty lines are skipped.  Reading stops when the session ends,
    however it ends.

    @param lines: a started L{LineReader}.
    @param ask: sends one request and reports its outcome.
    """
    try:
        while (line := await lines.next()) is not None:
            request = line.strip()
            if request.lower() == QUIT:
                break
            if request:
                await ask(request)
    finally:
        lines.stop()
