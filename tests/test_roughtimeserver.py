"""
Tests for L{udptime.roughtimeserver}: the responder's decisions and the
standalone datagram protocol.
"""

from __future__ import annotations

from collections import Counter

from twisted.trial.unittest import SynchronousTestCase

from tests.roughtimesupport import (
    NOW,
    publicBytes,
    seededKey,
    synchronised,
    unsynchronised,
)
from tests.support import RecordingTransport
from udptime import roughtime as rt
from udptime.clock import ClockState
from udptime.roughtimekeys import OnlineKey
from udptime.roughtimeserver import RoughtimeResponder, RoughtimeServer

LONG_TERM = seededKey(1)
PUBLIC = publicBytes(LONG_TERM)


class ResponderTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.state = synchronised()
        self.responder = RoughtimeResponder(OnlineKey(LONG_TERM), self.clockState)

    def clockState(self, now: float) -> ClockState:
        return self.state

    def test_batch(self) -> None:
        """
        A batch is answered with one tree; each response verifies.
        """
        requests = [rt.buildRequest(PUBLIC) for _ in range(5)]
        responses = self.responder.respond([r.packet for r in requests], NOW)
        for request, response in zip(requests, responses, strict=True):
            assert response is not None
            verified = rt.verifyResponse(request, response, PUBLIC)
            self.assertEqual(verified.pathLength, 3)
            self.assertEqual(verified.radius, 3)
        self.assertEqual((self.responder.answered, self.responder.batches), (5, 1))

    def test_radiusFromClock(self) -> None:
        self.state = synchronised(dispersion=9.8)
        request = rt.buildRequest(PUBLIC)
        (response,) = self.responder.respond([request.packet], NOW)
        assert response is not None
        self.assertEqual(rt.verifyResponse(request, response, PUBLIC).radius, 11)

    def test_unsynchronised(self) -> None:
        """
        With the clock unsynchronised nothing is answered, and each datagram
        is counted.
        """
        self.state = unsynchronised()
        packets = [rt.buildRequest(PUBLIC).packet] * 3
        self.assertEqual(self.responder.respond(packets, NOW), [None] * 3)
        self.assertEqual(self.responder.unsynchronised, 3)
        self.assertEqual(self.responder.answered, 0)

    def test_dropsCounted(self) -> None:
        packets = [b"tiny", rt.buildRequest(publicBytes(seededKey(3))).packet]
        self.assertEqual(self.responder.respond(packets, NOW), [None, None])
        self.assertEqual(
            self.responder.dropped,
            Counter({rt.DropReason.SHORT: 1, rt.DropReason.SERVER: 1}),
        )

    def test_renewsOnlineKey(self) -> None:
        request = rt.buildRequest(PUBLIC)
        keys = set()
        for now in (NOW, NOW + 43199, NOW + 43200, NOW + 86400):
            (response,) = self.responder.respond([request.packet], now)
            assert response is not None
            keys.add(rt.verifyResponse(request, response, PUBLIC).onlineKey)
        self.assertEqual(len(keys), 3)

    def test_badFloor(self) -> None:
        self.assertRaises(
            ValueError, RoughtimeResponder, OnlineKey(LONG_TERM), self.clockState, 0
        )


class ServerTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.responder = RoughtimeResponder(
            OnlineKey(LONG_TERM), lambda now: synchronised()
        )
        self.server = RoughtimeServer(self.responder, clock=lambda: NOW)
        self.transport = RecordingTransport()
        self.server.makeConnection(self.transport)

    def test_answers(self) -> None:
        request = rt.buildRequest(PUBLIC)
        self.server.datagramReceived(request.packet, ("192.0.2.1", 40000))
        ((response, addr),) = self.transport.written
        self.assertEqual(addr, ("192.0.2.1", 40000))
        self.assertEqual(
            rt.verifyResponse(request, response, PUBLIC).midpoint, round(NOW)
        )

    def test_drops(self) -> None:
        for datagram in (b"", b"x" * 2000, rt.buildRequest(PUBLIC).packet[:1000]):
            self.server.datagramReceived(datagram, ("192.0.2.1", 40000))
        self.assertEqual(self.transport.written, [])
        self.assertEqual(sum(self.responder.dropped.values()), 3)

    def test_failureContained(self) -> None:
        """
        A failure while answering is counted and logged, never raised.
        """

        def broken(now: float) -> ClockState:
            raise ZeroDivisionError()

        self.responder.clockState = broken
        self.server.datagramReceived(rt.buildRequest(PUBLIC).packet, ("192.0.2.1", 1))
        self.assertEqual(self.server.failures, 1)
        self.assertEqual(self.transport.written, [])
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)
