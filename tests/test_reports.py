"""
Tests for L{udptime.reports}: the counter reports a worker sends its
supervisor, their framing, the writer that never blocks, and the sender.
"""

from __future__ import annotations

import json
import os

from twisted.internet import task
from twisted.trial.unittest import SynchronousTestCase

from udptime.logrelay import LogRelay
from udptime.reports import (
    PIPE_BUF,
    RelayedReportWriter,
    Report,
    ReportSender,
    ReportWriter,
    encodeReport,
    isReport,
    parseReport,
)

REPORT = Report(
    services={
        "ntp": {"received": 12, "answered": 10, "limited": 2, "clients": 3},
        "time": {"received": 1, "answered": 1},
    },
    extra={"nts_ke_sessions": {"completed": 4, "failed": 1}},
)


def pipe(case: SynchronousTestCase) -> tuple[int, int]:
    read, write = os.pipe()
    for fd in read, write:
        case.addCleanup(closeQuietly, fd)
    return read, write


def closeQuietly(fd: int) -> None:
    try:
        os.close(fd)
    except OSError:
        return


def readLines(fd: int) -> list[bytes]:
    os.set_blocking(fd, False)
    data = b""
    while True:
        try:
            chunk = os.read(fd, 65536)
        except BlockingIOError:
            break
        if not chunk:
            break
        data += chunk
    return data.splitlines(keepends=True)


class MessageTests(SynchronousTestCase):
    """
    L{encodeReport} frames reports as JSON log events are framed, and
    L{parseReport} reads them back.
    """

    def test_roundTrip(self) -> None:
        [line] = encodeReport("2", "abc", 7, 1, REPORT)
        self.assertTrue(line.startswith(b"\x1e{"))
        self.assertTrue(line.endswith(b"\n"))
        self.assertEqual(line.count(b"\n"), 1)
        self.assertTrue(isReport(line.decode()))
        self.assertTrue(isReport(line.decode().lstrip("\x1e")))
        message = parseReport(line)
        self.assertEqual(
            (message.worker, message.incarnation, message.sequence, message.dropped),
            ("2", "abc", 7, 1),
        )
        self.assertEqual(message.report, REPORT)

    def test_logEventIsNotReport(self) -> None:
        """
        A log event, even one that mentions reports, is not a report.
        """
        event = json.dumps({"log_format": "udptime_report", "udptime_report": 1})
        self.assertFalse(isReport("\x1e" + event))
        self.assertFalse(isReport("plain text"))

    def test_split(self) -> None:
        """
        A report too large for one line goes as one line per service and
        per extra family, each within the limit, together the whole report.
        """
        lines = list(encodeReport("1", "abc", 1, 0, REPORT, limit=200))
        self.assertEqual(len(lines), 3)
        merged = Report()
        for line in lines:
            self.assertLessEqual(len(line), 200)
            part = parseReport(line).report
            merged.services.update(part.services)
            merged.extra.update(part.extra)
        self.assertEqual(merged, REPORT)

    def test_partTooLarge(self) -> None:
        self.assertRaises(ValueError, list, encodeReport("1", "a", 1, 0, REPORT, 50))

    def test_malformed(self) -> None:
        good = json.loads(next(encodeReport("1", "a", 1, 0, REPORT)).strip(b"\x1e\n"))
        for change in [
            {"udptime_report": 2},
            {"worker": 1},
            {"incarnation": None},
            {"sequence": -1},
            {"dropped": True},
            {"services": []},
            {"services": {"ntp": {"received": "12"}}},
            {"services": {"ntp": {"received": -3}}},
            {"extra": {"x": {"y": 1.5}}},
        ]:
            line = json.dumps({**good, **change})
            self.assertRaises(ValueError, parseReport, line)
        self.assertRaises(ValueError, parseReport, '{"udptime_report": 1, "wor')
        self.assertRaises(ValueError, parseReport, b"\xff\xfe")


class ReportWriterTests(SynchronousTestCase):
    """
    L{ReportWriter} never blocks: a line the pipe has no room for is dropped
    and counted.
    """

    def test_stalledReader(self) -> None:
        """
        With a reader that does not read, writes go on without blocking
        once the pipe is full, each dropped line counted; once the reader
        drains the pipe, lines get through again, and every line read is
        whole.
        """
        read, write = pipe(self)
        writer = ReportWriter(write)
        self.assertFalse(os.get_blocking(write))
        [line] = encodeReport("1", "a", 1, 0, REPORT)
        written = 0
        for _ in range(100_000):
            if not writer.write(line):
                break
            written += 1
        else:
            self.fail("the pipe never filled")
        for _ in range(10):
            self.assertFalse(writer.write(line))
        self.assertEqual(writer.dropped, 11)
        lines = readLines(read)
        self.assertEqual(len(lines), written)
        for each in lines:
            self.assertEqual(parseReport(each).report, REPORT)
        self.assertTrue(writer.write(line))
        self.assertEqual(readLines(read), [line])

    def test_tooLong(self) -> None:
        _, write = pipe(self)
        writer = ReportWriter(write)
        self.assertRaises(ValueError, writer.write, b"x" * (PIPE_BUF + 1))

    def test_readerGone(self) -> None:
        """
        When the reader is gone, lines are dropped and counted.
        """
        read, write = pipe(self)
        os.close(read)
        writer = ReportWriter(write)
        self.assertFalse(writer.write(b"line\n"))
        self.assertTrue(writer.broken)
        self.assertFalse(writer.write(b"line\n"))
        self.assertEqual(writer.dropped, 2)

    def test_sharing(self) -> None:
        """
        A writer sharing a pipe with blocking writers writes on its own file
        description: the shared descriptor stays blocking, and both writers'
        lines arrive whole.
        """
        read, write = pipe(self)
        writer = ReportWriter.sharing(write)
        self.addCleanup(writer.close)
        self.assertTrue(os.get_blocking(write))
        self.assertFalse(os.get_blocking(writer.fd))
        os.write(write, b"\x1e{}\n")
        self.assertTrue(writer.write(b"\x1e{}\n" * 2))
        self.assertEqual(readLines(read), [b"\x1e{}\n"] * 3)
        writer.close()
        self.assertRaises(OSError, os.fstat, writer.fd)


class RelayedReportWriterTests(SynchronousTestCase):
    """
    L{RelayedReportWriter} writes through a worker's log relay: never inside
    a log line the pipe took in part, never blocking, its dropped lines
    counted apart from the relay's.
    """

    def test_betweenLogLines(self) -> None:
        """
        A log line longer than the pipe's room is taken in part; a report
        written then waits for none of it: it is dropped until the rest of
        the log line is through, and every line read is whole.
        """
        read, write = pipe(self)
        os.set_blocking(read, False)
        relay = LogRelay(write)
        writer = RelayedReportWriter(relay.writeWhole)
        [line] = encodeReport("1", "a", 1, 0, REPORT)
        # Fill the pipe to a little less than a long log line.
        filler = os.fpathconf(write, "PC_PIPE_BUF")
        while relay.writeWhole(b"f" * (filler - 1) + b"\n"):
            pass
        os.read(read, 2 * filler)
        relay({"log_format": "{long}", "long": "x" * (3 * filler), "log_time": 0})
        self.assertFalse(writer.write(line))
        self.assertEqual(writer.dropped, 1)
        self.assertEqual(relay.droppedTotal, 0)
        lines = b""
        while True:
            try:
                lines += os.read(read, 65536)
            except BlockingIOError:
                break
            relay.flush()
        self.assertTrue(writer.write(line))
        lines += os.read(read, 65536)
        *complete, rest = lines.split(b"\n")
        self.assertEqual(rest, b"")
        self.assertEqual(complete[-1] + b"\n", line)
        self.assertTrue(complete[-2].startswith(b"\x1e{"))
        self.assertIn(b'"long": "xxx', complete[-2])
        self.assertTrue(complete[-2].endswith(b"}"))

    def test_tooLong(self) -> None:
        writer = RelayedReportWriter(lambda line: True)
        self.assertRaises(ValueError, writer.write, b"x" * (PIPE_BUF + 1))


class ReportSenderTests(SynchronousTestCase):
    """
    L{ReportSender} sends the process's report at start, every interval and
    as it stops.
    """

    def test_sends(self) -> None:
        reactor = task.Clock()
        read, write = pipe(self)
        counts = {"received": 0}

        def source() -> Report:
            counts["received"] += 1
            return Report(services={"ntp": dict(counts)})

        sender = ReportSender(
            reactor, source, ReportWriter(write), "3", interval=5.0, incarnation="x"
        )
        sender.startService()
        reactor.advance(5.0)
        reactor.advance(5.0)
        sender.stopService()
        reactor.advance(50.0)
        messages = [parseReport(line) for line in readLines(read)]
        self.assertEqual([m.sequence for m in messages], [1, 2, 3, 4])
        self.assertEqual(
            [m.report.services["ntp"]["received"] for m in messages], [1, 2, 3, 4]
        )
        self.assertEqual({(m.worker, m.incarnation) for m in messages}, {("3", "x")})

    def test_incarnations(self) -> None:
        """
        Each sender draws its own incarnation token.
        """
        _, write = pipe(self)
        writer = ReportWriter(write)
        first = ReportSender(task.Clock(), Report, writer, "1")
        second = ReportSender(task.Clock(), Report, writer, "1")
        self.assertNotEqual(first.incarnation, second.incarnation)

    def test_droppedReported(self) -> None:
        """
        The count of dropped lines travels in the next report.
        """
        read, write = pipe(self)
        writer = ReportWriter(write)
        writer.dropped = 5
        sender = ReportSender(task.Clock(), Report, writer, "1")
        sender.send()
        [line] = readLines(read)
        self.assertEqual(parseReport(line).dropped, 5)

    def test_sourceFails(self) -> None:
        """
        A source that raises costs one report, logged; nothing is written
        and the sender goes on.
        """
        read, write = pipe(self)

        def broken() -> Report:
            raise RuntimeError("bug")

        sender = ReportSender(task.Clock(), broken, ReportWriter(write), "1")
        sender.send()
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertEqual(readLines(read), [])
