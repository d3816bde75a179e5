"""
Tests for L{udptime.echo} (the RFC 862 Echo codec) and L{EchoServer}.
"""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from tests.support import RecordingTransport
from udptime import echo
from udptime.reading import Reading, ReplyMismatch
from udptime.server import EchoServer


class CodecTests(SynchronousTestCase):
    """
    L{echo.buildReply}.
    """

    def test_buildReply(self) -> None:
        """
        A datagram of at most L{echo.MAX_ECHO} bytes is its own reply; a
        longer one gets none.
        """
        cases = [
            (b"", b""),
            (b"x", b"x"),
            (b"\x00\xff" * 10, b"\x00\xff" * 10),
            (b"y" * echo.MAX_ECHO, b"y" * echo.MAX_ECHO),
            (b"z" * (echo.MAX_ECHO + 1), None),
            (b"z" * 65507, None),
        ]
        for data, expected in cases:
            with self.subTest(size=len(data)):
                self.assertEqual(echo.buildReply(data), expected)

    def test_maximum(self) -> None:
        """
        The maximum is the payload of one unfragmented IPv4 datagram on an
        Ethernet link: 1500 - 20 (IP) - 8 (UDP).
        """
        self.assertEqual(echo.MAX_ECHO, 1500 - 20 - 8)

    @given(st.binary(max_size=2 * echo.MAX_ECHO))
    def test_neverLarger(self, data: bytes) -> None:
        """
        A reply is the request itself, never anything larger.
        """
        reply = echo.buildReply(data)
        if len(data) <= echo.MAX_ECHO:
            self.assertEqual(reply, data)
        else:
            self.assertIsNone(reply)


class ClientCodecTests(SynchronousTestCase):
    """
    L{echo.EchoClientCodec}.
    """

    def setUp(self) -> None:
        self.codec = echo.EchoClientCodec(randomBytes=lambda n: bytes(range(n)))

    def test_names(self) -> None:
        """
        The codec is called C{echo} and uses the registered port 7.
        """
        self.assertEqual((self.codec.name, self.codec.defaultPort), ("echo", 7))

    def test_request(self) -> None:
        """
        The request is a prefix and a random hex token; the state to match
        the reply is the request itself.
        """
        payload, state = self.codec.buildRequest(1000.0)
        self.assertEqual(payload, b"udptime echo 0001020304050607")
        self.assertEqual(state, payload)

    def test_requestsDiffer(self) -> None:
        """
        With the default random source, two requests differ.
        """
        codec = echo.EchoClientCodec()
        self.assertNotEqual(codec.buildRequest(1.0)[0], codec.buildRequest(1.0)[0])

    def test_result(self) -> None:
        """
        A matching echo gives no server time or offset, and leaves the
        delay to the round trip the query measures.
        """
        payload, state = self.codec.buildRequest(10.0)
        reading = self.codec.parseReply(payload, state, 10.0, 10.125)
        self.assertEqual(
            reading,
            Reading(
                text=f"{len(payload)}-byte echo",
                serverTime=None,
                offset=None,
                delay=None,
                details={"size": len(payload)},
            ),
        )

    def test_mismatch(self) -> None:
        """
        A reply that differs from the payload, even by a byte, is not ours.
        """
        payload, state = self.codec.buildRequest(10.0)
        for data in (b"", payload[:-1], payload + b"\n", payload.upper()):
            with self.subTest(data=data):
                self.assertRaises(
                    ReplyMismatch,
                    self.codec.parseReply,
                    data,
                    state,
                    10.0,
                    10.1,
                )


class EchoServerTests(SynchronousTestCase):
    """
    L{EchoServer} with a recording transport.
    """

    def setUp(self) -> None:
        self.server = EchoServer(clock=Clock().seconds)
        self.transport = RecordingTransport()
        self.server.makeConnection(self.transport)  # type: ignore[arg-type]

    def test_echo(self) -> None:
        """
        Each datagram, empty ones included, goes back unchanged to its
        source.
        """
        self.server.datagramReceived(b"hello", ("127.0.0.1", 40000))
        self.server.datagramReceived(b"", ("::1", 40001))
        self.assertEqual(
            self.transport.written,
            [(b"hello", ("127.0.0.1", 40000)), (b"", ("::1", 40001))],
        )
        counters = self.server.counters.snapshot()
        self.assertEqual((counters["received"], counters["answered"]), (2, 2))

    def test_oversized(self) -> None:
        """
        A datagram longer than L{echo.MAX_ECHO} is dropped and counted.
        """
        self.server.datagramReceived(b"x" * (echo.MAX_ECHO + 1), ("127.0.0.1", 1))
        self.assertEqual(self.transport.written, [])
        counters = self.server.counters.snapshot()
        self.assertEqual((counters["dropped"], counters["answered"]), (1, 0))

    @given(st.binary(max_size=echo.MAX_ECHO + 200))
    def test_anyBytes(self, data: bytes) -> None:
        """
        No datagram makes the protocol raise; the reply, when there is one,
        equals the request.
        """
        before = len(self.transport.written)
        self.server.datagramReceived(data, ("127.0.0.1", 40000))
        self.assertEqual(self.server.counters.internalErrors, 0)
        if len(data) <= echo.MAX_ECHO:
            self.assertEqual(
                self.transport.written[before:], [(data, ("127.0.0.1", 40000))]
            )
        else:
            self.assertEqual(len(self.transport.written), before)


class EchoPayloadTests(SynchronousTestCase):
    """
    L{echo.EchoClientCodec} with a payload of the user's, as the interactive
    echo client sends each line.
    """

    def test_payloadSentAndShown(self) -> None:
        codec = echo.EchoClientCodec(b"hello there")
        payload, state = codec.buildRequest(100.0)
        self.assertEqual(payload, b"hello there")
        reading = codec.parseReply(payload, state, 100.0, 100.5)
        self.assertEqual(reading.text, "hello there")
        self.assertIsNone(reading.delay)

    def test_otherPayloadRejected(self) -> None:
        codec = echo.EchoClientCodec(b"hello there")
        _payload, state = codec.buildRequest(100.0)
        self.assertRaises(
            ReplyMismatch,
            codec.parseReply,
            b"hello",
            state,
            100.0,
            100.5,
        )

    def test_tooLarge(self) -> None:
        self.assertRaises(ValueError, echo.EchoClientCodec, b"x" * (echo.MAX_ECHO + 1))
