"""
C{udptime --interactive}'s input: L{LineReader} on a pipe, and
L{askEachLine}.
"""

from __future__ import annotations

import os
from typing import Any

from twisted.internet.defer import Deferred
from twisted.trial.unittest import SynchronousTestCase

from udptime.interactive import LineReader, askEachLine


class FakeReaderReactor:
    """
    Records readers added and removed.
    """

    def __init__(self) -> None:
        self.readers: list[Any] = []

    def addReader(self, reader: Any) -> None:
        self.readers.append(reader)

    def removeReader(self, reader: Any) -> None:
        self.readers.remove(reader)


class PipeReaderTestCase(SynchronousTestCase):
    """
    Tests of a started L{LineReader} on a pipe, whose write end is
    C{writeEnd}.
    """

    def setUp(self) -> None:
        self.readEnd, self.writeEnd = os.pipe()
        self.addCleanup(os.close, self.readEnd)
        self.reactor = FakeReaderReactor()
        self.reader = LineReader(self.reactor, self.readEnd)
        self.reader.start()


class LineReaderTests(PipeReaderTestCase):
    """
    L{LineReader} on a pipe.
    """

    def closeWriteEnd(self) -> None:
        os.close(self.writeEnd)

    def test_lines(self) -> None:
        """
        Lines are split, CRLF or LF, and an unterminated last line is
        delivered at the end; then L{None}.
        """
        os.write(self.writeEnd, b"month 3\r\nHello world\n\npar")
        self.reader.doRead()
        os.write(self.writeEnd, b"tial \xff")
        self.reader.doRead()
        self.closeWriteEnd()
        self.reader.doRead()
        self.assertEqual(self.reactor.readers, [])
        got = [self.successResultOf(self.reader.next()) for _ in range(5)]
        self.assertEqual(got, ["month 3", "Hello world", "", "partial \ufffd", None])

    def test_waiting(self) -> None:
        """
        L{LineReader.next} waits for a line that has not arrived yet.
        """
        d = self.reader.next()
        self.assertNoResult(d)
        os.write(self.writeEnd, b"one\n")
        self.reader.doRead()
        self.assertEqual(self.successResultOf(d), "one")
        self.closeWriteEnd()

    def test_stop(self) -> None:
        """
        After L{LineReader.stop}, no more lines.
        """
        os.write(self.writeEnd, b"one\ntwo\n")
        self.reader.doRead()
        self.reader.stop()
        self.assertEqual(self.reactor.readers, [])
        self.assertIsNone(self.successResultOf(self.reader.next()))
        self.closeWriteEnd()

    def test_connectionLost(self) -> None:
        """
        A descriptor the reactor reports lost ends the lines.
        """
        d = self.reader.next()
        self.reader.connectionLost(None)
        self.assertIsNone(self.successResultOf(d))
        self.closeWriteEnd()


class AskEachLineTests(PipeReaderTestCase):
    """
    L{askEachLine} hands each request line on, one at a time.
    """

    def setUp(self) -> None:
        super().setUp()
        self.asked: list[str] = []
        self.answers: list[Deferred[None]] = []

    def ask(self, request: str) -> Deferred[None]:
        self.asked.append(request)
        answer: Deferred[None] = Deferred()
        self.answers.append(answer)
        return answer

    def session(self, data: bytes) -> Deferred[None]:
        os.write(self.writeEnd, data)
        os.close(self.writeEnd)
        session = Deferred.fromCoroutine(askEachLine(self.reader, self.ask))
        self.reader.doRead()
        return session

    def test_oneAtATime(self) -> None:
        """
        Requests are the lines without surrounding white space, empty lines
        skipped; the next waits until the last is answered; the session
        ends with the input, and reading stops.
        """
        session = self.session(b" month 1 \n\n \t\nunix\r\nHello")
        self.assertEqual(self.asked, ["month 1"])
        self.answers[0].callback(None)
        self.assertEqual(self.asked, ["month 1", "unix"])
        self.answers[1].callback(None)
        self.assertNoResult(session)
        self.reader.doRead()  # the end of input
        self.answers[2].callback(None)
        self.assertIsNone(self.successResultOf(session))
        self.assertEqual(self.asked, ["month 1", "unix", "Hello"])
        self.assertEqual(self.reactor.readers, [])

    def test_quit(self) -> None:
        """
        C{quit}, in any case, ends the session: the lines after it are not
        sent, and reading stops.
        """
        session = self.session(b"month 2\n QUIT \nmonth 3\n")
        self.answers[0].callback(None)
        self.assertIsNone(self.successResultOf(session))
        self.assertEqual(self.asked, ["month 2"])
        self.assertEqual(self.reactor.readers, [])

    def test_askFails(self) -> None:
        """
        A failure of C{ask} ends the session with it, and reading stops.
        """
        session = self.session(b"month 2\nmonth 3\n")
        self.answers[0].errback(OSError(28, "No space left on device"))
        self.failureResultOf(session, OSError)
        self.assertEqual(self.asked, ["month 2"])
        self.assertEqual(self.reactor.readers, [])
