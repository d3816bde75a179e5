"""
Tests for L{udptime.roughtimeclient}: the query's tries, back-off and
verification errors on a fake reactor; then real servers on 127.0.0.1 and
::1: queries, a chain over two servers whose clocks disagree, and the
C{udptime-roughtime} command's C{chain} and C{verify-report}.
"""

from __future__ import annotations

import base64
import json
import os
import sys
import tempfile
from typing import Any

from twisted.internet import defer, reactor
from twisted.internet.address import IPv4Address
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import SynchronousTestCase, TestCase

from tests.roughtimesupport import (
    NOW,
    delegationAround,
    flipped,
    publicBytes,
    seededKey,
    synchronised,
)
from tests.test_client import SERVER, FakeReactor
from udptime import roughtime as rt
from udptime.reading import QueryError, QueryTimeout
from udptime.roughtimechain import ServerEntry, chainNonce, reportFor, verifyReport
from udptime.roughtimeclient import (
    Chain,
    ChainError,
    RoughtimeClientCodec,
    RoughtimeResult,
    chainQuery,
    roughtimeQuery,
)
from udptime.roughtimekeys import OnlineKey
from udptime.roughtimeserver import RoughtimeResponder, RoughtimeServer

LONG_TERM = seededKey(1)
PUBLIC = publicBytes(LONG_TERM)


def respond(packet: bytes, now: float = NOW) -> bytes:
    (response,) = rt.respondBatch([packet], now, 3, delegationAround(NOW))
    assert response is not None
    return response


class QueryTests(SynchronousTestCase):
    """
    L{roughtimeQuery} on the fake reactor of L{udptime.client.query}'s
    tests.
    """

    def setUp(self) -> None:
        self.reactor = FakeReactor()
        self.reactor.advance(NOW)

    def query(self, **options: Any) -> defer.Deferred[RoughtimeResult]:
        host = options.pop("host", SERVER[0])
        return roughtimeQuery(
            self.reactor,  # type: ignore[arg-type]
            host,
            SERVER[1],
            PUBLIC,
            clock=self.reactor.seconds,
            **options,
        )

    def lastRequest(self) -> bytes:
        ((datagram, addr),) = self.reactor.ports[-1].written
        self.assertEqual(addr, SERVER)
        return datagram

    def answer(self, response: bytes, source: tuple[str, int] = SERVER) -> None:
        self.reactor.ports[-1].receive(response, source)

    def test_answered(self) -> None:
        d = self.query()
        request = self.lastRequest()
        self.reactor.advance(0.25)
        self.answer(respond(request))
        result = self.successResultOf(d)
        self.assertEqual(result.request.packet, request)
        self.assertEqual(
            rt.verifyResponse(result.request, result.response, PUBLIC), result.verified
        )
        self.assertEqual(result.verified.midpoint, round(NOW))
        self.assertEqual(result.delay, 0.25)
        self.assertEqual(result.offset, round(NOW) - (NOW + 0.125))
        self.assertEqual(
            (result.host, result.port, result.publicKey), (*SERVER, PUBLIC)
        )
        self.assertTrue(self.reactor.ports[0].closed)

    def test_backOff(self) -> None:
        """
        Unanswered tries wait 1, 1.5 and 2.25 times the timeout, each with a
        new socket and a new nonce, then the query times out.
        """
        d = self.query(timeout=2.0, tries=3)
        for wait in (2.0, 3.0):
            self.reactor.advance(wait - 0.001)
            self.assertNoResult(d)
            self.reactor.advance(0.001)
        self.reactor.advance(4.499)
        self.assertNoResult(d)
        self.reactor.advance(0.001)
        failure = self.failureResultOf(d, QueryTimeout)
        self.assertEqual(
            str(failure.value), "no response from 127.0.0.1:5000 after 3 tries"
        )
        nonces = {
            rt.readClientRequest(p.written[0][0]).nonce for p in self.reactor.ports
        }
        self.assertEqual(len(nonces), 3)
        self.assertTrue(all(p.closed for p in self.reactor.ports))
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_rejectedThenValid(self) -> None:
        """
        A response that fails verification ends its try at once: the next
        request goes out without waiting for the timeout.
        """
        d = self.query()
        self.answer(flipped(respond(self.lastRequest()), (rt.SIG,)))
        self.assertEqual(len(self.reactor.ports), 2)
        self.answer(respond(self.lastRequest()))
        self.successResultOf(d)

    def test_everyResponseRejected(self) -> None:
        """
        When every try's response fails verification, the query fails with
        the last verification error, not with a timeout.
        """
        d = self.query(tries=2)
        self.answer(flipped(respond(self.lastRequest()), (rt.SREP, rt.ROOT)))
        self.answer(flipped(respond(self.lastRequest()), (rt.SIG,)))
        self.failureResultOf(d, rt.BadSignature)

    def test_rejectedThenSilent(self) -> None:
        d = self.query(tries=2)
        self.answer(b"ROUGHTIM junk")
        self.reactor.advance(1.5)
        self.failureResultOf(d, rt.MalformedResponse)

    def test_otherServerKey(self) -> None:
        d = self.query(tries=1)
        request = self.lastRequest()
        other = rt.makeDelegation(
            seededKey(9), seededKey(2), int(NOW) - 9, int(NOW) + 9
        )
        fields = rt.decodeMessage(rt.unframePacket(request))
        # As a server that ignores SRV and answers anyway would.
        fields[rt.SRV] = other.srv
        (response,) = rt.respondBatch(
            [rt.framePacket(rt.encodeMessage(fields))], NOW, 3, other
        )
        assert response is not None
        self.answer(response)
        self.failureResultOf(d, rt.WrongKey)

    def test_ignored(self) -> None:
        """
        Datagrams from another address, and responses to another nonce, are
        ignored: the try goes on.
        """
        d = self.query()
        request = self.lastRequest()
        self.answer(respond(request), ("127.0.0.2", SERVER[1]))
        self.answer(respond(request), (SERVER[0], SERVER[1] + 1))
        self.answer(respond(rt.buildRequest(PUBLIC).packet))
        self.assertNoResult(d)
        self.assertEqual(len(self.reactor.ports), 1)
        self.answer(respond(request), ("::ffff:127.0.0.1", SERVER[1]))
        self.successResultOf(d)

    def test_chained(self) -> None:
        """
        With a previous response, each try's nonce is H(previous || rand)
        for a new C{rand}, which the result keeps.
        """
        previous = respond(rt.buildRequest(PUBLIC).packet)
        d = self.query(previous=previous)
        self.reactor.advance(1.0)
        request = rt.readClientRequest(self.lastRequest())
        self.answer(respond(request.packet))
        result = self.successResultOf(d)
        blind = result.request.blind
        assert blind is not None
        self.assertEqual(result.request.nonce, chainNonce(previous, blind))
        first = rt.readClientRequest(self.reactor.ports[0].written[0][0])
        self.assertNotEqual(first.nonce, request.nonce)

    def test_versions(self) -> None:
        d = self.query(versions=(0x8000000B,))
        request = rt.readClientRequest(self.lastRequest())
        self.assertEqual(request.versions, (0x8000000B,))
        self.answer(respond(request.packet))
        self.assertEqual(self.successResultOf(d).verified.version, 0x8000000B)

    def test_hostName(self) -> None:
        d = self.query(host="time.example")
        self.reactor.nameResolver.answer(IPv4Address("UDP", SERVER[0], 0))
        self.answer(respond(self.lastRequest()))
        self.successResultOf(d)

    def test_cancel(self) -> None:
        d = self.query()
        d.cancel()
        self.failureResultOf(d, defer.CancelledError)
        self.assertTrue(self.reactor.ports[0].closed)
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_cannotSend(self) -> None:
        self.reactor.sendError = OSError("no route")
        self.failureResultOf(self.query(), QueryError)

    def test_badArguments(self) -> None:
        for options in ({"timeout": 0}, {"tries": 0}, {"versions": (7,)}):
            self.assertRaises(ValueError, self.query, **options)
        self.assertRaises(
            ValueError, roughtimeQuery, self.reactor, "192.0.2.1", 0, PUBLIC
        )


class CodecTests(SynchronousTestCase):
    def test_result(self) -> None:
        """
        The codec's reading, for L{udptime.client.query}: the time read
        (the round trip is the query's), and what the response says in
        C{details}; the codec keeps the request and the verified response.
        """
        codec = RoughtimeClientCodec(PUBLIC)
        self.assertEqual((codec.name, codec.defaultPort), ("roughtime", 2002))
        packet, state = codec.buildRequest(NOW)
        result = codec.parseReply(respond(packet), state, NOW - 1, NOW + 1)
        self.assertEqual(result.serverTime, round(NOW))
        self.assertIsNone(result.delay)
        self.assertEqual(result.offset, round(NOW) - NOW)
        self.assertEqual(result.details["radius"], 3)
        self.assertEqual(result.details["version"], "RFC 10049")
        self.assertEqual(result.details["pathLength"], 0)
        assert codec.accepted is not None
        self.assertEqual(codec.accepted[0], state)
        self.assertEqual(codec.accepted[1].radius, 3)
        self.assertIn("UTC ± 3 s", result.text)
        self.assertIn("RFC 10049", result.text)

    def test_otherNonceIsNotOurs(self) -> None:
        from udptime.reading import ReplyMismatch

        codec = RoughtimeClientCodec(PUBLIC)
        _, state = codec.buildRequest(NOW)
        other = respond(rt.buildRequest(PUBLIC).packet)
        self.assertRaises(ReplyMismatch, codec.parseReply, other, state, NOW, NOW)

    def test_refusesUnknownVersion(self) -> None:
        self.assertRaises(ValueError, RoughtimeClientCodec, PUBLIC, (7,))


def startServer(
    test: TestCase,
    key: Any,
    offset: float = 0.0,
    interface: str = "127.0.0.1",
) -> tuple[RoughtimeServer, int]:
    """
    A Roughtime server on a free port of C{interface}, its clock C{offset}
    seconds off; stopped when the test ends.
    """
    import time

    responder = RoughtimeResponder(OnlineKey(key), lambda now: synchronised())
    server = RoughtimeServer(responder, clock=lambda: time.time() + offset)
    port = reactor.listenUDP(0, server, interface=interface)
    test.addCleanup(port.stopListening)
    return server, port.getHost().port


def entry(name: str, key: Any, port: int) -> ServerEntry:
    return ServerEntry(name, publicBytes(key), (1,), (("127.0.0.1", port),))


class NetworkTests(TestCase):
    """
    Real servers on loopback, the global reactor.
    """

    timeout = 60

    @defer.inlineCallbacks
    def test_query(self) -> Any:
        server, port = startServer(self, LONG_TERM)
        result = yield roughtimeQuery(reactor, "127.0.0.1", port, PUBLIC)
        self.assertLessEqual(abs(result.offset), result.verified.radius)
        self.assertEqual(server.responder.answered, 1)

    @defer.inlineCallbacks
    def test_queryIPv6(self) -> Any:
        _, port = startServer(self, LONG_TERM, interface="::1")
        result = yield roughtimeQuery(
            reactor, "::1", port, PUBLIC, versions=(0x8000000C,)
        )
        self.assertEqual(result.verified.version, 0x8000000C)

    @defer.inlineCallbacks
    def test_otherKeyTimesOut(self) -> Any:
        """
        A server with another long-term key drops requests naming ours
        (SRV): the query times out.
        """
        server, port = startServer(self, seededKey(8))
        d = roughtimeQuery(reactor, "127.0.0.1", port, PUBLIC, timeout=0.2, tries=2)
        yield self.assertFailure(d, QueryTimeout)
        self.assertEqual(server.responder.dropped[rt.DropReason.SERVER], 2)

    @defer.inlineCallbacks
    def test_chainProvesMalfeasance(self) -> Any:
        """
        Two servers, the second 1000 s ahead, asked in a chain twice over:
        the second round shows it, and the report proves it.
        """
        honest, ahead = seededKey(11), seededKey(12)
        _, honestPort = startServer(self, honest)
        _, aheadPort = startServer(self, ahead, offset=1000.0)
        servers = [
            entry("honest", honest, honestPort),
            entry("ahead", ahead, aheadPort),
        ]
        chain: Chain = yield chainQuery(reactor, servers)
        self.assertEqual([link.name for link in chain.links], ["honest", "ahead"] * 2)
        self.assertEqual(chain.violations, [(1, 2)])
        verdict = verifyReport(json.dumps(reportFor(chain.links)))
        self.assertEqual(verdict.violations, ((1, 2),))

    @defer.inlineCallbacks
    def test_chainFails(self) -> Any:
        _, port = startServer(self, seededKey(11))
        servers = [
            entry("good", seededKey(11), port),
            entry("silent", seededKey(13), port),
        ]
        d = chainQuery(reactor, servers, timeout=0.2, tries=1)
        error = yield self.assertFailure(d, ChainError)
        self.assertEqual((error.server, error.position), ("silent", 1))
        self.assertIsInstance(error.reason, QueryTimeout)

    def test_chainArguments(self) -> None:
        self.assertRaises(ValueError, chainQuery, reactor, [])
        self.assertRaises(
            ValueError, chainQuery, reactor, [entry("x", LONG_TERM, 1)], rounds=0
        )


def tool(*arguments: str) -> defer.Deferred[tuple[bytes, bytes, int]]:
    """
    Run C{udptime-roughtime} with C{arguments}, without blocking the
    reactor.
    """
    return getProcessOutputAndValue(
        sys.executable,
        ["-c", "from udptime.roughtimetool import main; main()", *arguments],
        env=dict(os.environ),
        reactor=reactor,
    )


class ToolTests(TestCase):
    """
    The C{udptime-roughtime} command, against servers on loopback.
    """

    timeout = 120

    def setUp(self) -> None:
        self.directory = tempfile.mkdtemp(prefix="udptime-roughtime-")

    def tearDown(self) -> None:
        for name in os.listdir(self.directory):
            os.remove(os.path.join(self.directory, name))
        os.rmdir(self.directory)

    def path(self, name: str) -> str:
        return os.path.join(self.directory, name)

    @defer.inlineCallbacks
    def test_chainAndVerifyReport(self) -> Any:
        """
        C{chain} over a server list whose second server is 1000 s ahead
        writes a malfeasance report and exits 3; C{verify-report} confirms
        it (exit 0) and refuses it once altered (exit 1).
        """
        honest, ahead = seededKey(21), seededKey(22)
        _, honestPort = startServer(self, honest)
        _, aheadPort = startServer(self, ahead, offset=1000.0)
        servers = [
            {
                "name": name,
                "version": 1,
                "publicKeyType": "ed25519",
                "publicKey": base64.b64encode(publicBytes(key)).decode(),
                "addresses": [{"protocol": "udp", "address": f"127.0.0.1:{port}"}],
            }
            for name, key, port in (
                ("honest", honest, honestPort),
                ("ahead", ahead, aheadPort),
            )
        ]
        with open(self.path("servers.json"), "w") as f:
            json.dump({"servers": servers}, f)
        report = self.path("report.json")
        out, err, code = yield tool(
            "chain", self.path("servers.json"), "--report", report
        )
        self.assertEqual(code, 3, (out, err))
        self.assertIn(b"Inconsistent: ahead (response 1)", out)
        self.assertIn(f"Malfeasance report written to {report}".encode(), out)
        out, err, code = yield tool("verify-report", report)
        self.assertEqual(code, 0, (out, err))
        self.assertIn(b"Proven: response 1", out)
        with open(report) as f:
            data = json.load(f)
        data["responses"][1]["publicKey"] = data["responses"][0]["publicKey"]
        with open(report, "w") as f:
            json.dump(data, f)
        out, err, code = yield tool("verify-report", report)
        self.assertEqual(code, 1)
        self.assertIn(b"invalid report: response 1: wrong key", err)

    @defer.inlineCallbacks
    def test_consistentChain(self) -> Any:
        key = seededKey(23)
        _, port = startServer(self, key)
        with open(self.path("servers.json"), "w") as f:
            json.dump(
                {
                    "servers": [
                        {
                            "name": "only",
                            "version": "IETF-Roughtime",
                            "publicKeyType": "ed25519",
                            "publicKey": base64.b64encode(publicBytes(key)).decode(),
                            "addresses": [
                                {"protocol": "udp", "address": f"127.0.0.1:{port}"}
                            ],
                        }
                    ]
                },
                f,
            )
        out, err, code = yield tool("chain", self.path("servers.json"))
        self.assertEqual(code, 0, (out, err))
        self.assertIn(b"The responses are consistent.", out)
        self.assertFalse(os.path.exists(self.path("roughtime-malfeasance.json")))

    @defer.inlineCallbacks
    def test_query(self) -> Any:
        _, port = startServer(self, LONG_TERM)
        key = base64.b64encode(PUBLIC).decode()
        out, err, code = yield tool(
            "query", "127.0.0.1", str(port), "--public-key", key
        )
        self.assertEqual(code, 0, err)
        self.assertIn(b"RFC 10049", out)
        other = base64.b64encode(publicBytes(seededKey(4))).decode()
        out, err, code = yield tool(
            "query", "127.0.0.1", str(port), "--public-key", other, "--timeout", "0.2"
        )
        self.assertEqual(code, 1)
        self.assertIn(b"no response from 127.0.0.1", err)

    @defer.inlineCallbacks
    def test_keys(self) -> Any:
        key = self.path("roughtime.key")
        out, err, code = yield tool("keygen", key)
        self.assertEqual(code, 0, err)
        self.assertTrue(out.startswith(b"Public key (base64): "))
        public = out.split(b": ", 1)[1].strip()
        out, err, code = yield tool("public-key", key)
        self.assertEqual((code, out.strip()), (0, public))
        out, err, code = yield tool("keygen", key)
        self.assertEqual(code, 1)
        self.assertIn(b"File exists", err)

    @defer.inlineCallbacks
    def test_usageErrors(self) -> Any:
        """
        A bad command line: one line on stderr, a non-zero exit.
        """
        for arguments in (
            ("query", "127.0.0.1", "--public-key", "short"),
            (
                "query",
                "127.0.0.1",
                "70000",
                "--public-key",
                base64.b64encode(PUBLIC).decode(),
            ),
            ("public-key", self.path("missing")),
            ("verify-report", self.path("missing")),
            ("chain", self.path("missing")),
        ):
            out, err, code = yield tool(*arguments)
            self.assertNotEqual(code, 0, arguments)
            self.assertEqual(out, b"")
            self.assertTrue(err.strip(), arguments)
            self.assertNotIn(b"Traceback", err)
