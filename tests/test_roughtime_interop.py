"""
Roughtime against a real peer, roughly (PyPI C{roughly[cli]}): its client
against udptime's server (RFC 10049's version 1 from its command line, the
drafts through its library), udptime's client against its server, with and
without grease; and negative controls both clients must refuse: a proxy that
flips a byte of the signature, of the Merkle path or of MIDP, and a server
answering with another long-term key.
"""

from __future__ import annotations

import base64
import dataclasses
import time
from collections import Counter
from typing import Any

from twisted.internet import defer, reactor
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import SynchronousTestCase, TestCase

from tests.roughlypeer import (
    LIBRARY_QUERY,
    RoughlyServer,
    blockingQuery,
    roughlyPath,
    roughlyPython,
)
from tests.roughtimesupport import (
    TamperingProxy,
    flipped,
    publicBytes,
    seededKey,
    synchronised,
)
from tests.test_roughtimeclient import startServer
from udptime import roughtime as rt
from udptime.reading import QueryTimeout
from udptime.roughtimeclient import roughtimeQuery
from udptime.roughtimekeys import OnlineKey
from udptime.roughtimeserver import RoughtimeResponder, RoughtimeServer

KEY = seededKey(31)
PUBLIC = publicBytes(KEY)
ACCEPTED = b"Current time: "
REJECTED = b"Response received but rejected during verification"


def roughlyQuery(
    port: int, publicKey: bytes
) -> defer.Deferred[tuple[bytes, bytes, int]]:
    """
    C{roughly query --timeout 2 127.0.0.1 PORT KEY}, without blocking the
    reactor.  roughly exits 0 even when it rejects a response: read its
    output.
    """
    return getProcessOutputAndValue(
        roughlyPath(),
        [
            "query",
            "--timeout",
            "2",
            "127.0.0.1",
            str(port),
            base64.b64encode(publicKey).decode(),
        ],
        reactor=reactor,
    )


class PairingServer(RoughtimeServer):
    """
    A server that answers each datagram in a batch with one request of its
    own, so that every response carries a one-hash PATH.
    """

    def datagramReceived(self, datagram: bytes, addr: Any) -> None:
        longTerm = self.responder.onlineKey.longTermKey
        filler = rt.buildRequest(longTerm.public_key().public_bytes_raw())
        response, _ = self.responder.respond([datagram, filler.packet], self.clock())
        if response is not None:
            assert self.transport is not None
            self.transport.write(response, addr)


class ImpostorServer(RoughtimeServer):
    """
    A server that answers whatever key a request names, signing with its
    own: as a server impersonating another would.
    """

    def datagramReceived(self, datagram: bytes, addr: Any) -> None:
        fields = rt.decodeMessage(rt.unframePacket(datagram))
        now = self.clock()
        delegation = dataclasses.replace(
            self.responder.onlineKey.current(now), srv=fields[rt.SRV]
        )
        (response,) = rt.respondBatch([datagram], now, 3, delegation)
        assert response is not None and self.transport is not None
        self.transport.write(response, addr)


def listen(test: TestCase, protocol: Any) -> int:
    port = reactor.listenUDP(0, protocol, interface="127.0.0.1")
    test.addCleanup(port.stopListening)
    return int(port.getHost().port)


def responder(key: Any = KEY) -> RoughtimeResponder:
    return RoughtimeResponder(OnlineKey(key), lambda now: synchronised())


TAMPERED_FIELDS = {
    "signature": (rt.SIG,),
    "PATH": (rt.PATH,),
    "MIDP": (rt.SREP, rt.MIDP),
}


class RoughlyClientTests(TestCase):
    """
    roughly's client against udptime's server.
    """

    timeout = 120

    def setUp(self) -> None:
        roughlyPath()

    @defer.inlineCallbacks
    def test_accepts(self) -> Any:
        """
        roughly offers version 1 and drafts 7 to 15: udptime's server
        answers in RFC 10049's version 1, and roughly accepts the time.
        """
        server, port = startServer(self, KEY)
        out, err, code = yield roughlyQuery(port, PUBLIC)
        self.assertEqual(code, 0)
        self.assertIn(ACCEPTED, out, err)
        seconds = int(out.split(ACCEPTED, 1)[1].split()[0])
        self.assertLessEqual(abs(seconds - time.time()), 5)
        self.assertEqual(server.responder.answered, 1)

    @defer.inlineCallbacks
    def test_acceptsDrafts(self) -> Any:
        """
        roughly's library, offering one draft version at a time, accepts
        the answers in drafts 12 to 19's 0x8000000c and in drafts 8 to 11.
        """
        _, port = startServer(self, KEY)
        key = base64.b64encode(PUBLIC).decode()
        for version in ("0x8000000c", "0x8000000b", "0x8000000a", "0x80000008", "1"):
            out, err, code = yield getProcessOutputAndValue(
                roughlyPython(),
                ["-c", LIBRARY_QUERY, "127.0.0.1", str(port), key, version],
                reactor=reactor,
            )
            self.assertEqual(code, 0, (version, out, err))
            words = out.split()
            self.assertEqual(words[0], b"verified")
            self.assertEqual(int(words[2]), int(version, 0))

    @defer.inlineCallbacks
    def test_pathAccepted(self) -> Any:
        pairing = listen(self, PairingServer(responder()))
        out, err, code = yield roughlyQuery(pairing, PUBLIC)
        self.assertEqual(code, 0)
        self.assertIn(ACCEPTED, out, err)

    @defer.inlineCallbacks
    def test_refusesTampered(self) -> Any:
        """
        A proxy flipping one bit of the signature, of PATH or of MIDP makes
        roughly reject the response.
        """
        server = listen(self, PairingServer(responder()))
        for name, path in TAMPERED_FIELDS.items():
            proxy = TamperingProxy(
                ("127.0.0.1", server), lambda r, p=path: flipped(r, p)
            )
            proxyPort = listen(self, proxy)
            out, err, code = yield roughlyQuery(proxyPort, PUBLIC)
            self.assertEqual(code, 0, "roughly exits 0 when it rejects")
            self.assertEqual(proxy.forwarded, 1, name)
            self.assertNotIn(ACCEPTED, out, name)
            self.assertIn(REJECTED, err, name)

    @defer.inlineCallbacks
    def test_refusesImpostor(self) -> Any:
        """
        A server answering with another long-term key is refused: its
        delegation does not verify with the key roughly expects.
        """
        port = listen(self, ImpostorServer(responder(seededKey(32))))
        out, err, code = yield roughlyQuery(port, PUBLIC)
        self.assertEqual(code, 0)
        self.assertNotIn(ACCEPTED, out)
        self.assertIn(REJECTED, err)
        self.assertIn(b"signature-certificate", err)

    @defer.inlineCallbacks
    def test_otherKeyUnanswered(self) -> Any:
        """
        udptime's server drops a request naming another key (SRV): roughly
        times out.
        """
        server, port = startServer(self, seededKey(33))
        out, err, code = yield roughlyQuery(port, PUBLIC)
        self.assertEqual(code, 0)
        self.assertNotIn(ACCEPTED, out)
        self.assertIn(b"Request timed out", err)
        self.assertEqual(server.responder.dropped[rt.DropReason.SERVER], 1)


class OurClientTests(TestCase):
    """
    udptime's client against roughly's server.
    """

    timeout = 120

    def startRoughly(self, grease: float | None = None) -> RoughlyServer:
        server = RoughlyServer(grease)
        self.addCleanup(server.stop)
        return server.start()

    @defer.inlineCallbacks
    def test_versions(self) -> Any:
        """
        roughly's server (without grease) answers version 1, 0x8000000c and
        drafts 10 and 11; udptime's client verifies each.
        """
        server = self.startRoughly()
        for version in (1, 0x8000000C, 0x8000000B, 0x8000000A):
            result = yield roughtimeQuery(
                reactor, "127.0.0.1", server.port, server.publicKey, versions=(version,)
            )
            self.assertEqual(result.verified.version, version)
            self.assertFalse(result.verified.legacyContexts)
            self.assertLessEqual(abs(result.offset), result.verified.radius + 1)

    @defer.inlineCallbacks
    def test_refusesTampered(self) -> Any:
        """
        The proxy flipping a bit of the signature or of MIDP makes udptime's
        client refuse roughly's response, with a bad signature.
        """
        server = self.startRoughly()
        for path in (TAMPERED_FIELDS["signature"], TAMPERED_FIELDS["MIDP"]):
            proxy = TamperingProxy(
                ("127.0.0.1", server.port), lambda r, p=path: flipped(r, p)
            )
            d = roughtimeQuery(
                reactor, "127.0.0.1", listen(self, proxy), server.publicKey, tries=2
            )
            yield self.assertFailure(d, rt.BadSignature)
            self.assertEqual(proxy.forwarded, 2)

    @defer.inlineCallbacks
    def test_refusesTamperedPath(self) -> Any:
        """
        udptime's client refuses a PATH with a flipped bit (from udptime's
        pairing server: roughly's batches of one have no PATH to flip).
        """
        server = listen(self, PairingServer(responder()))
        proxy = TamperingProxy(("127.0.0.1", server), lambda r: flipped(r, (rt.PATH,)))
        d = roughtimeQuery(reactor, "127.0.0.1", listen(self, proxy), PUBLIC, tries=1)
        yield self.assertFailure(d, rt.BadMerklePath)

    @defer.inlineCallbacks
    def test_refusesImpostor(self) -> Any:
        port = listen(self, ImpostorServer(responder(seededKey(34))))
        d = roughtimeQuery(reactor, "127.0.0.1", port, PUBLIC, tries=1)
        yield self.assertFailure(d, rt.WrongKey)

    @defer.inlineCallbacks
    def test_otherKeyUnanswered(self) -> Any:
        """
        roughly's server drops a request naming another key: a timeout.
        """
        server = self.startRoughly()
        d = roughtimeQuery(
            reactor, "127.0.0.1", server.port, PUBLIC, timeout=0.3, tries=2
        )
        yield self.assertFailure(d, QueryTimeout)

    @defer.inlineCallbacks
    def test_defaultGrease(self) -> Any:
        """
        With roughly's default grease (0.1 % of responses), every query
        either gets a valid, right time or fails with a verification error:
        never a wrong time, never a timeout.
        """
        server = self.startRoughly(grease=0.001)
        for _ in range(10):
            try:
                result = yield roughtimeQuery(
                    reactor, "127.0.0.1", server.port, server.publicKey
                )
            except rt.RoughtimeVerificationError:
                continue
            self.assertLessEqual(abs(result.offset), result.verified.radius + 1)


class GreaseTests(SynchronousTestCase):
    """
    udptime's client against roughly's server greasing every response (RFC
    10049 §7): undefined tags must be tolerated; missing tags, versions not
    offered and invalid signatures with wrong times rejected.
    """

    QUERIES = 200

    def test_everyResponseGreased(self) -> None:
        server = RoughlyServer(grease=1.0)
        self.addCleanup(server.stop)
        server.start()
        outcomes: Counter[str] = Counter()
        for _ in range(self.QUERIES):
            request, response = blockingQuery(server.port, server.publicKey, (1,))
            try:
                verified = rt.verifyResponse(request, response, server.publicKey)
            except rt.RoughtimeVerificationError as e:
                outcomes[type(e).__name__] += 1
                continue
            # Grease that only adds undefined tags (or adds one and takes it
            # away again) leaves a valid response, with the right time.
            outcomes["accepted"] += 1
            if verified.unknownTags:
                outcomes["accepted with undefined tags"] += 1
            self.assertLessEqual(
                abs(verified.midpoint - time.time()), verified.radius + 1
            )
        accepted = outcomes["accepted with undefined tags"]
        self.assertEqual(sum(outcomes.values()) - accepted, self.QUERIES)
        self.assertGreater(accepted, 0, outcomes)
        self.assertGreater(outcomes["BadSignature"], 0, outcomes)
        self.assertGreater(outcomes["UnofferedVersion"], 0, outcomes)
        self.assertGreater(outcomes["MalformedResponse"], 0, outcomes)
        self.assertLessEqual(
            set(outcomes),
            {
                "accepted",
                "accepted with undefined tags",
                "BadSignature",
                "UnofferedVersion",
                "MalformedResponse",
            },
            outcomes,
        )
