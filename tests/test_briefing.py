"""
Tests for L{udptime.briefing}: the lines a supervisor writes to its
workers, read and handed to the handler of their kind.
"""

from __future__ import annotations

import json
import os
from typing import Any

from twisted.internet.error import ConnectionDone
from twisted.trial.unittest import SynchronousTestCase

from tests.test_ntskeys import RecordingLog, pipe
from udptime.briefing import MAX_LINE, BriefingReader, BriefingService, lineFormat


class FakeReactor:
    """
    Records the readers added and removed.
    """

    def __init__(self) -> None:
        self.readers: list[Any] = []

    def addReader(self, reader: Any) -> None:
        self.readers.append(reader)

    def removeReader(self, reader: Any) -> None:
        if reader in self.readers:
            self.readers.remove(reader)


def line(kind: str, **fields: Any) -> bytes:
    return json.dumps({"format": kind, **fields}).encode() + b"\n"


class LineFormatTests(SynchronousTestCase):
    def test_kinds(self) -> None:
        self.assertEqual(lineFormat(line("a")), "a")
        self.assertIsNone(lineFormat(b"not json\n"))
        self.assertIsNone(lineFormat(b"[1]\n"))
        self.assertIsNone(lineFormat(b'{"format": 3}\n'))
        self.assertIsNone(lineFormat(b"\xff\n"))


class BriefingReaderTests(SynchronousTestCase):
    """
    L{BriefingReader} hands each whole line to the handler of its kind and
    ignores, counts and logs the others.
    """

    def setUp(self) -> None:
        self.reading, self.writing = pipe(self)
        self.reactor = FakeReactor()
        self.reader = BriefingReader(self.reactor, self.reading)  # type: ignore[arg-type]
        self.recording = RecordingLog()
        self.reader.log = self.recording.log
        self.got: list[tuple[str, bytes]] = []

        def refuse(data: bytes) -> None:
            raise ValueError("bad b line")

        self.reader.handle("a", lambda data: self.got.append(("a", data)))
        self.reader.handle("b", refuse)

    def test_dispatch(self) -> None:
        first, second = line("a", n=1), line("a", n=2)
        os.write(self.writing, first + line("c") + b"junk\n" + line("b") + second[:5])
        self.assertIsNone(self.reader.doRead())
        self.assertEqual(self.got, [("a", first)])
        os.write(self.writing, second[5:])
        self.assertIsNone(self.reader.doRead())
        self.assertEqual(self.got, [("a", first), ("a", second)])
        self.assertEqual((self.reader.updates, self.reader.rejected), (2, 3))
        self.assertEqual(
            self.recording.texts(),
            [
                "supervisor's briefing ignored: a line of kind 'c'",
                "supervisor's briefing ignored: a line of no known kind",
                "supervisor's briefing ignored: bad b line",
            ],
        )

    def test_nothingThere(self) -> None:
        self.assertIsNone(self.reader.doRead())
        self.assertEqual(self.got, [])

    def test_tooLong(self) -> None:
        """
        A line longer than L{MAX_LINE} is skipped whole; the next is read.
        """
        # In pieces the pipe takes without blocking.
        for _ in range(2):
            os.write(self.writing, b"x" * (MAX_LINE // 2 + 1))
            self.reader.doRead()
        os.write(self.writing, b"x" * 100 + b"\n" + line("a"))
        self.reader.doRead()
        self.assertEqual(self.got, [("a", line("a"))])
        self.assertEqual(self.reader.rejected, 1)

    def test_closed(self) -> None:
        os.close(self.writing)
        failure = self.reader.doRead()
        assert failure is not None
        self.assertIsInstance(failure.value, ConnectionDone)
        self.reader.startReading()
        self.reader.connectionLost(failure)
        self.assertEqual(self.reactor.readers, [])


class BriefingServiceTests(SynchronousTestCase):
    """
    L{BriefingService} takes in the lines already written as it starts,
    then reads the rest as they come.
    """

    def test_start(self) -> None:
        reading, writing = pipe(self)
        reactor = FakeReactor()
        service = BriefingService(reactor, reading)
        got: list[bytes] = []
        service.handle("a", got.append)
        os.write(writing, line("a", n=1))
        service.startService()
        self.assertEqual(got, [line("a", n=1)])
        self.assertEqual(reactor.readers, [service.reader])
        service.stopService()
        self.assertEqual(reactor.readers, [])

    def test_startClosed(self) -> None:
        """
        A briefing already closed as the service starts is not read.
        """
        reading, writing = pipe(self)
        os.close(writing)
        reactor = FakeReactor()
        service = BriefingService(reactor, reading)
        service.reader.log = RecordingLog().log
        service.startService()
        self.assertEqual(reactor.readers, [])
