"""
Tests for L{udptime.roughtimeserver}: the responder's decisions, and the
service's protocol on both ports, with batch signing.
"""

from __future__ import annotations

import socket
from collections import Counter
from collections.abc import Callable
from typing import Any
from unittest import SkipTest

from twisted.internet import reactor
from twisted.logger import Logger
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
from udptime.policy import AccessRule, Policy
from udptime.port import ServerPort, batchingAvailable
from udptime.roughtimekeys import OnlineKey
from udptime.roughtimeserver import RoughtimeResponder, RoughtimeServer
from udptime.service import bindUDPSocket
from udptime.services import SERVICES

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


def server(
    state: Callable[[float], ClockState] = lambda now: synchronised(),
    policy: Policy | None = None,
    verbose: bool = False,
) -> RoughtimeServer:
    responder = RoughtimeResponder(OnlineKey(LONG_TERM), state)
    return RoughtimeServer(responder, clock=lambda: NOW, policy=policy, verbose=verbose)


class ServerTests(SynchronousTestCase):
    """
    The protocol on Twisted's generic port: each datagram a batch of one,
    decided, sent and counted by the reply path.
    """

    def setUp(self) -> None:
        self.server = server()
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
        counters = self.server.counters
        self.assertEqual((counters.received, counters.answered), (1, 1))
        self.assertEqual(self.server.responder.batches, 1)

    def test_drops(self) -> None:
        """
        Short datagrams are dropped before the batch, requests that are not
        Roughtime counted as malformed, others dropped: none answered.
        """
        other = rt.buildRequest(publicBytes(seededKey(3))).packet
        for datagram in (
            b"",
            rt.buildRequest(PUBLIC).packet[:1000],
            b"x" * 2000,
            other,
        ):
            self.server.datagramReceived(datagram, ("192.0.2.1", 40000))
        self.assertEqual(self.transport.written, [])
        counters = self.server.counters
        self.assertEqual(
            (counters.received, counters.dropped, counters.malformed), (4, 3, 1)
        )
        self.assertEqual(
            self.server.responder.dropped,
            Counter(
                {
                    rt.DropReason.SHORT: 2,
                    rt.DropReason.MALFORMED: 1,
                    rt.DropReason.SERVER: 1,
                }
            ),
        )

    def test_unsynchronised(self) -> None:
        """
        While the clock is not synchronised every request is dropped.
        """
        quiet = server(lambda now: unsynchronised())
        transport = RecordingTransport()
        quiet.makeConnection(transport)
        quiet.datagramReceived(rt.buildRequest(PUBLIC).packet, ("192.0.2.1", 1))
        self.assertEqual(transport.written, [])
        self.assertEqual(quiet.counters.dropped, 1)
        self.assertEqual(quiet.responder.unsynchronised, 1)

    def test_policy(self) -> None:
        """
        The admission policy decides before the batch: a denied source is
        counted as denied, a source past its burst as limited.
        """
        policy = SERVICES["roughtime"].policy(
            rate=1.0,
            burst=2,
            rules=[(r.allow, r.network) for r in AccessRule.parse(False, "192.0.2.66")],
        )
        limited = server(policy=policy)
        transport = RecordingTransport()
        limited.makeConnection(transport)
        for source in ("192.0.2.66", "192.0.2.1", "192.0.2.1", "192.0.2.1"):
            limited.datagramReceived(rt.buildRequest(PUBLIC).packet, (source, 1))
        counters = limited.counters
        self.assertEqual(
            (counters.denied, counters.limited, counters.answered), (1, 1, 2)
        )
        self.assertEqual(len(transport.written), 2)

    def test_failureContained(self) -> None:
        """
        A failure while answering is counted as an internal error and
        logged, never raised.
        """

        def broken(now: float) -> ClockState:
            raise ZeroDivisionError()

        self.server.responder.clockState = broken
        self.server.datagramReceived(rt.buildRequest(PUBLIC).packet, ("192.0.2.1", 1))
        self.assertEqual(self.server.counters.internalErrors, 1)
        self.assertEqual(self.transport.written, [])
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)

    def test_verbose(self) -> None:
        """
        In verbose mode a held request is logged once, with its decision.
        """
        events: list[dict[str, Any]] = []
        loud = server(verbose=True)
        loud.log = Logger(observer=events.append)
        loud.makeConnection(RecordingTransport())
        loud.datagramReceived(rt.buildRequest(PUBLIC).packet, ("192.0.2.1", 1))
        (event,) = [e for e in events if "size" in e]
        self.assertEqual(event["size"], 1036)
        self.assertLess(event["replySize"], 1036)


class BatchSigningTests(SynchronousTestCase):
    """
    On udptime's port, the requests read in one receive batch are answered
    with one Merkle tree and one signature, whichever way the port reads.
    Each test queues datagrams in the server's socket (on loopback a
    datagram is there when C{sendto} returns), then calls C{doRead} itself.
    """

    def setUp(self) -> None:
        self.client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.client.bind(("127.0.0.1", 0))
        self.client.settimeout(5.0)
        self.addCleanup(self.client.close)

    def serve(self, protocol: RoughtimeServer, **settings: Any) -> ServerPort:
        sock = bindUDPSocket("127.0.0.1", 0)
        try:
            port = ServerPort.adopt(reactor, sock, protocol, 65535, **settings)
        finally:
            sock.close()
        self.addCleanup(port.stopListening)
        return port

    def exchange(self, port: ServerPort, packets: list[bytes]) -> list[bytes]:
        target = ("127.0.0.1", port.getHost().port)
        for packet in packets:
            self.client.sendto(packet, target)
        port.doRead()
        return [self.client.recv(65535) for _ in packets]

    def assertOneTree(self, **settings: Any) -> None:
        protocol = server()
        port = self.serve(protocol, **settings)
        requests = [rt.buildRequest(PUBLIC) for _ in range(20)]
        responses = self.exchange(port, [r.packet for r in requests])
        byNonce = {r.nonce: r for r in requests}
        roots = set()
        for response in responses:
            nonce = rt.decodeMessage(rt.unframePacket(response))[rt.NONC]
            verified = rt.verifyResponse(byNonce.pop(nonce), response, PUBLIC)
            self.assertEqual(verified.pathLength, 5)
            roots.add(rt.decodeMessage(rt.unframePacket(response))[rt.SIG])
        self.assertEqual(len(roots), 1)
        self.assertEqual(protocol.responder.batches, 1)
        counters = protocol.counters
        self.assertEqual((counters.received, counters.answered), (20, 20))

    def test_batched(self) -> None:
        """
        C{recvmmsg}: the batch read by one call, its responses sent
        together.
        """
        if not batchingAvailable():
            raise SkipTest("no recvmmsg/sendmmsg on this system")
        self.assertOneTree(batched=True)

    def test_oneAtATime(self) -> None:
        """
        C{recvfrom}: the datagrams read in one wake-up.
        """
        self.assertOneTree(batched=False)

    def test_withControl(self) -> None:
        """
        C{recvmsg} with control messages: the datagrams read in one
        wake-up.
        """
        self.assertOneTree(batched=False, replyFromDestination=True)

    def test_mixedBatch(self) -> None:
        """
        In a batch, short datagrams and refused requests are counted and
        left unanswered; the others share one signature.
        """
        if not batchingAvailable():
            raise SkipTest("no recvmmsg/sendmmsg on this system")
        protocol = server()
        port = self.serve(protocol, batched=True)
        good = [rt.buildRequest(PUBLIC) for _ in range(3)]
        target = ("127.0.0.1", port.getHost().port)
        for packet in (good[0].packet, b"short", good[1].packet, b"x" * 1100):
            self.client.sendto(packet, target)
        self.client.sendto(good[2].packet, target)
        port.doRead()
        responses = [self.client.recv(65535) for _ in good]
        for request, response in zip(good, responses, strict=True):
            self.assertEqual(rt.verifyResponse(request, response, PUBLIC).pathLength, 2)
        counters = protocol.counters
        self.assertEqual(
            (
                counters.received,
                counters.answered,
                counters.dropped,
                counters.malformed,
            ),
            (5, 3, 1, 1),
        )
        self.assertEqual(protocol.responder.batches, 1)
